"""Reading a USB unit's Sync Agent interface and combining it with its descriptor facts.

:class:`SyncInterfaceCollector` (registered as ``sync-interface``) runs for every unit whose
catalog product names it (``collectors = ["sync-interface"]``): the USB source calls it after
the descriptors identified the unit. The Sync observation is the richer one (label serial, CollabOS version,
peripherals); the descriptor observation keeps what only USB knows (ids, port, functions,
``usb_release``). When the interface cannot be used the descriptor facts stand, with a
health note saying why:

* ``sync-interface-unavailable`` (info): the interface is busy (Logitech Sync or another
  program holds it), absent, or not ours to open — a normal state on many hosts;
* ``sync-interface-failed`` (warning): the device was reached but the exchange failed
  (timeout, garbage, deadline). This is also returned as an error for that device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from agent.catalog import UNKNOWN_LOGITECH, Catalog
from agent.collectors.sync import read_device_info
from agent.collectors.sync.client import SyncTransport
from agent.collectors.sync.errors import SyncError, TransportError
from agent.collectors.sync.guard import check_outgoing
from agent.model import Observation, Severity
from agent.readonly import Gate

if TYPE_CHECKING:
    from agent.collectors import UsbReadContext
    from agent.usbtree import UsbUnit

#: Opens the unit's Sync transport; raises TransportError when it cannot.
TransportOpener = Callable[[], AbstractContextManager[SyncTransport]]


def read_unit(
    descriptor: Observation,
    open_transport: TransportOpener,
    *,
    catalog: Catalog,
    now: datetime,
    **client_options: Any,
) -> tuple[Observation, str | None]:
    """The unit's observation and, when the exchange failed, the error message for it."""
    with contextlib.ExitStack() as stack:
        try:
            transport = stack.enter_context(open_transport())
        except TransportError as exc:  # busy, absent, no permission: descriptor facts stand
            descriptor.note(
                "sync-interface-unavailable",
                f"Sync interface not read ({exc}); identity from USB descriptors only",
                Severity.INFO,
            )
            return descriptor, None
        try:
            sync = read_device_info(
                transport,
                address=descriptor.address,
                now=now,
                catalog=catalog,
                source=descriptor.source,
                **client_options,
            )
        except SyncError as exc:
            return _fallback(descriptor, exc)
    return combine(descriptor, sync), None


class SyncInterfaceCollector:
    """CollabOS bars on USB: label serial, CollabOS and component firmware, peripherals."""

    name: ClassVar[str] = "sync-interface"
    writes: ClassVar[str | None] = (
        "the GetDeviceInfo exchange on the Sync interface's bulk endpoint (request, its close, two acks)"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_outgoing)

    def collect(
        self, observation: Observation, unit: UsbUnit, ctx: UsbReadContext
    ) -> tuple[Observation, str | None]:
        return read_unit(
            observation,
            ctx.devices.sync_transport(unit.main),
            catalog=ctx.catalog,
            now=ctx.now,
            deadline=ctx.deadline,
        )


def _fallback(descriptor: Observation, exc: SyncError) -> tuple[Observation, str]:
    message = f"Sync interface exchange failed: {exc}"
    descriptor.note(
        "sync-interface-failed", message + "; identity from USB descriptors only", Severity.WARNING
    )
    return descriptor, message


def combine(descriptor: Observation, sync: Observation) -> Observation:
    """The Sync observation, completed with what only the USB descriptors know."""
    sync.address = descriptor.address
    sync.source = descriptor.source
    sync.transport = descriptor.transport
    sync.vendor_id, sync.product_id = descriptor.vendor_id, descriptor.product_id
    sync.vendor = sync.vendor or descriptor.vendor
    if sync.product in (None, UNKNOWN_LOGITECH) and descriptor.product:
        sync.product = descriptor.product
    sync.model = sync.model or descriptor.model
    sync.attributes = {**descriptor.attributes, **sync.attributes}
    if descriptor.serial and sync.serial and descriptor.serial != sync.serial:
        sync.note(
            "serial-mismatch",
            f"USB iSerialNumber {descriptor.serial!r} differs from the serial the device "
            f"reports over Sync {sync.serial!r}",
            Severity.WARNING,
        )
    kept = [i for i in descriptor.health if not (i.code == "serial-missing" and sync.serial)]
    sync.health = [*kept, *(i for i in sync.health if i not in kept)]
    return sync


@contextlib.contextmanager
def pyusb_transport(
    busnum: int | None, devnum: int | None, vendor_id: int, product_id: int
) -> Iterator[SyncTransport]:
    """The Sync transport of the USB device at bus/devnum, through libusb."""
    if busnum is None or devnum is None:
        raise TransportError("bus or device number unknown (captured sysfs tree?)")
    try:
        import usb.core
    except ImportError as exc:  # pragma: no cover - pyusb is a dependency
        raise TransportError("pyusb is not installed") from exc
    from agent.collectors.sync.pyusb_transport import PyUsbTransport

    try:
        device = usb.core.find(bus=busnum, address=devnum)
    except usb.core.NoBackendError as exc:
        raise TransportError("libusb is not installed") from exc
    except usb.core.USBError as exc:
        raise TransportError(f"libusb: {exc}") from exc
    if device is None or (device.idVendor, device.idProduct) != (vendor_id, product_id):
        raise TransportError(f"libusb does not see bus {busnum} device {devnum}")
    with PyUsbTransport(device) as transport:
        yield transport
