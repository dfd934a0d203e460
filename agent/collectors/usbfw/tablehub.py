"""The Rally table hub's version over its vendor bulk interface, through pyusb/libusb.

The hub's vendor interface (class 0xFF with one bulk IN and one bulk OUT endpoint) is claimed
(a kernel driver bound to that one interface is detached and re-attached after), the INIT
frame is sent until the hub answers it (at most 5 tries), then the version request; every
write passes :func:`~agent.collectors.usbfw.requests.check_tablehub_write` first. The
interface is always released. Nothing else is sent: never 0xCC03 (firmware download).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from agent.collectors.usbfw.nodes import NodeFailed, NodeUnavailable
from agent.collectors.usbfw.requests import (
    TABLEHUB_GET_VERSION,
    TABLEHUB_INIT,
    TABLEHUB_INIT_REPLY,
    TABLEHUB_INIT_TRIES,
    TABLEHUB_VERSION_LENGTH,
    check_tablehub_write,
)

#: Milliseconds one bulk transfer may take: five INIT tries and the version request stay
#: within a device's default 10 s deadline.
TRANSFER_TIMEOUT_MS = 500


class BulkLink(Protocol):
    """The hub's bulk endpoints: what :func:`read_version` needs (a recording can serve it)."""

    def write(self, frame: bytes) -> None: ...

    def read(self, size: int) -> bytes: ...


def read_version(link: BulkLink) -> bytes:
    """INIT (until answered, at most 5 tries), then the version request: the 20 bytes the hub
    answers. Raises :class:`NodeFailed`."""
    for _ in range(TABLEHUB_INIT_TRIES):
        link.write(TABLEHUB_INIT)
        if link.read(len(TABLEHUB_INIT_REPLY)) == TABLEHUB_INIT_REPLY:
            break
    else:
        raise NodeFailed(f"the table hub did not answer INIT in {TABLEHUB_INIT_TRIES} tries")
    link.write(TABLEHUB_GET_VERSION)
    return link.read(TABLEHUB_VERSION_LENGTH)


class PyUsbBulkLink:
    """The table hub's vendor bulk interface through pyusb, claimed for the ``with`` block."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.interface: int | None = None
        self.ep_in: Any = None
        self.ep_out: Any = None
        self._reattach = False

    def __enter__(self) -> PyUsbBulkLink:
        import usb.core
        import usb.util

        try:
            configuration = self.device.get_active_configuration()
        except usb.core.USBError as exc:
            raise NodeUnavailable(f"libusb: {exc}") from None
        for intf in configuration:
            if intf.bInterfaceClass != 0xFF or intf.bAlternateSetting != 0:
                continue
            bulk = [
                ep for ep in intf if usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
            ]
            ins = [
                ep for ep in bulk if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
            ]
            outs = [
                ep for ep in bulk if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_OUT
            ]
            if ins and outs:
                self.interface, self.ep_in, self.ep_out = intf.bInterfaceNumber, ins[0], outs[0]
                break
        if self.interface is None:
            raise NodeUnavailable("no vendor bulk interface on the table hub")
        from agent.collectors.sync.pyusb_transport import kernel_driver_active

        try:
            if kernel_driver_active(self.device, self.interface):
                self.device.detach_kernel_driver(self.interface)
                self._reattach = True
            usb.util.claim_interface(self.device, self.interface)
        except (usb.core.USBError, NotImplementedError) as exc:
            self._release()
            raise NodeUnavailable(
                f"the table hub's interface {self.interface} cannot be claimed: {exc}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        import usb.core
        import usb.util

        if self.interface is None:
            return
        with contextlib.suppress(usb.core.USBError, NotImplementedError):
            usb.util.release_interface(self.device, self.interface)
        if self._reattach:
            with contextlib.suppress(usb.core.USBError, NotImplementedError):
                self.device.attach_kernel_driver(self.interface)
        usb.util.dispose_resources(self.device)

    def write(self, frame: bytes) -> None:
        import usb.core

        check_tablehub_write(frame)
        try:
            self.ep_out.write(frame, TRANSFER_TIMEOUT_MS)
        except usb.core.USBError as exc:
            raise NodeFailed(f"table hub: bulk write failed: {exc}") from None

    def read(self, size: int) -> bytes:
        import usb.core

        try:
            return bytes(self.ep_in.read(max(size, self.ep_in.wMaxPacketSize), TRANSFER_TIMEOUT_MS))[:size]
        except usb.core.USBTimeoutError:
            return b""
        except usb.core.USBError as exc:
            raise NodeFailed(f"table hub: bulk read failed: {exc}") from None


@contextlib.contextmanager
def pyusb_bulk_link(
    busnum: int | None, devnum: int | None, vendor_id: int, product_id: int
) -> Iterator[BulkLink]:
    """The table hub at bus/devnum, through libusb. Raises :class:`NodeUnavailable`."""
    if busnum is None or devnum is None:
        raise NodeUnavailable("bus or device number unknown")
    try:
        import usb.core

        device = usb.core.find(bus=busnum, address=devnum)
    except Exception as exc:  # no backend, libusb errors: the hub is not reachable here
        raise NodeUnavailable(f"libusb: {exc}") from None
    if device is None or (device.idVendor, device.idProduct) != (vendor_id, product_id):
        raise NodeUnavailable(f"libusb does not see bus {busnum} device {devnum}")
    with PyUsbBulkLink(device) as link:
        yield link
