"""Collectors: ways of reading a device's identity from an endpoint a source found.

One module per way of reading (standard USB descriptors, the Sync interface of CollabOS
bars, SNMP, mDNS TXT records, SSH room-PC facts), each registered by name in
:mod:`agent.collectors.registry`. A collector never changes a device's state: it sends
identity and status reads only, each through the read-only gate it declares
(:mod:`agent.readonly`).

Every collector class carries:

* ``name`` — its registry name, also what observations cite (``serial_source``);
* ``writes`` — what it sends a device, in words, or ``None`` when it sends nothing;
* ``gate`` — the function every outgoing request passes (``None`` only with ``writes = None``).

Product collectors on USB (scope ``product``, named by catalog products) implement
:class:`UsbUnitCollector`. ``docs/adding-a-device.md`` walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol

from agent.collectors.registry import (
    COLLECTORS,
    PRODUCT_COLLECTORS,
    CollectorEntry,
    CollectorRegistryError,
    collector_class,
)

if TYPE_CHECKING:
    from agent.catalog import Catalog
    from agent.collectors.sync.client import SyncTransport
    from agent.collectors.usbfw.collectors import HidNode, UvcNode
    from agent.collectors.usbfw.tablehub import BulkLink
    from agent.model import Observation
    from agent.readonly import Gate
    from agent.usbtree import UsbRecord, UsbUnit

__all__ = [
    "COLLECTORS",
    "PRODUCT_COLLECTORS",
    "Collector",
    "CollectorEntry",
    "CollectorRegistryError",
    "UsbDeviceAccess",
    "UsbReadContext",
    "UsbUnitCollector",
    "collector_class",
]


class Collector(Protocol):
    """What every collector declares."""

    name: ClassVar[str]
    writes: ClassVar[str | None]
    gate: ClassVar[Gate | None]


class UsbDeviceAccess(Protocol):
    """How a USB collector reaches a unit's device: this host's USB through libusb, or a
    recorded session (the replay source). Injected, never looked up, so every collector runs
    against a recording in the tests exactly as against a live device."""

    def sync_transport(self, record: UsbRecord) -> Callable[[], AbstractContextManager[SyncTransport]]:
        """Opens the unit's Sync transport; raises ``TransportError`` when it cannot."""
        ...

    def video_node(self, record: UsbRecord) -> Callable[[], AbstractContextManager[UvcNode]]:
        """Opens the function's video4linux capture node (``uvc-xu``); raises
        ``NodeUnavailable`` when there is none to open."""
        ...

    def hidraw_nodes(self, record: UsbRecord) -> list[Callable[[], AbstractContextManager[HidNode]]]:
        """Open each of the function's hidraw nodes (``hid-feature``)."""
        ...

    def bulk_link(self, record: UsbRecord) -> Callable[[], AbstractContextManager[BulkLink]]:
        """Opens the function's vendor bulk interface (``usb-bulk``)."""
        ...


@dataclass(frozen=True, slots=True)
class UsbReadContext:
    catalog: Catalog
    now: datetime
    devices: UsbDeviceAccess
    #: Seconds one unit's exchange may take in all.
    deadline: float


class UsbUnitCollector(Collector, Protocol):
    """A product collector on USB: reads more of one unit the descriptors identified."""

    def collect(
        self, observation: Observation, unit: UsbUnit, ctx: UsbReadContext
    ) -> tuple[Observation, str | None]:
        """The unit's observation, completed (or replaced by a richer one), and an error
        message when the device was reached but the exchange failed."""
        ...
