"""The USB source: the units on this host's USB buses (or on a captured sysfs tree).

Finding the records and grouping them into units is :mod:`agent.usbtree`'s job; every unit is
identified by the ``usb-descriptor`` collector, then read further by the product collectors
its catalog product names (``collectors = ["sync-interface"]`` for CollabOS bars), looked up
in the collector registry (:mod:`agent.collectors.registry`). This module holds no device
knowledge of its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.collectors import UsbReadContext, UsbUnitCollector, collector_class
from agent.collectors.usb_descriptor import UsbDescriptorCollector
from agent.discovery import ScanContext, SourceResult
from agent.model import ScanError, Severity
from agent.usbtree import (
    UsbDiscovery,
    UsbDiscoveryError,
    UsbRecord,
    enrich_with_libusb,
    group_units,
    read_sysfs,
)

if TYPE_CHECKING:
    from agent.catalog import Product
    from agent.collectors.sync.client import SyncTransport
    from agent.collectors.usbfw.collectors import HidNode, UvcNode
    from agent.collectors.usbfw.tablehub import BulkLink

LIVE_SYSFS = Path("/sys")


class UsbSource:
    """The devices on this host's USB buses (or on a captured sysfs tree).

    For units whose catalog product names product collectors (the Sync Agent interface of
    CollabOS bars), those read the device too, each within one overall deadline per device;
    when a device is busy or absent the descriptor facts stand, with a health note. Product
    collectors open devices only on this host's live USB, or on a recording (the replay
    source), never on a captured tree's bus and device numbers.
    """

    name = "usb"

    def __init__(
        self,
        sysfs_root: str | os.PathLike[str] = "/sys",
        *,
        all_usb: bool = False,
        libusb_strings: bool = True,
        sync_interface: bool = True,
        sync_deadline: float = 10.0,
        firmware: bool = True,
    ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.all_usb = all_usb
        # A captured tree (--sysfs-root) describes another host's devices: the bus and
        # device numbers in it must never be opened on this host's live USB.
        self.live = self.sysfs_root == LIVE_SYSFS
        self.libusb_strings = libusb_strings and self.live
        #: Whether product collectors may open the devices (live USB; a replay's recording).
        self.devices_reachable = self.live
        #: Product collectors switched off by configuration (``sync_interface = false``).
        self.disabled: frozenset[str] = frozenset(
            ({"sync-interface"} if not sync_interface else set())
            | ({"uvc-xu", "hid-feature", "usb-bulk"} if not firmware else set())
        )
        self.sync_deadline = sync_deadline

    @classmethod
    def from_config(cls, settings: Any) -> UsbSource:
        return cls(
            settings.sysfs_root,
            all_usb=settings.all_usb,
            libusb_strings=settings.libusb_strings,
            sync_interface=settings.sync_interface,
            sync_deadline=settings.sync_deadline,
            firmware=settings.firmware,
        )

    async def run(self, ctx: ScanContext) -> SourceResult:
        # sysfs reads are fast local file reads; libusb reads may block on a slow device
        # (bounded by their timeouts and the Sync deadline), so the pass runs in a thread.
        return await asyncio.to_thread(self.scan, ctx)

    def discover(self) -> UsbDiscovery:
        """The USB records to look at. Raises :class:`UsbDiscoveryError`."""
        found = read_sysfs(self.sysfs_root)
        if self.libusb_strings:
            enrich_with_libusb(found.records)
        return found

    def sync_transport(self, record: UsbRecord) -> Callable[[], AbstractContextManager[SyncTransport]]:
        """How to open the Sync transport of ``record``'s device (:class:`UsbDeviceAccess`)."""
        from agent.collectors.sync.usb_unit import pyusb_transport

        return functools.partial(
            pyusb_transport, record.busnum, record.devnum, record.vendor_id, record.product_id
        )

    def video_node(self, record: UsbRecord) -> Callable[[], AbstractContextManager[UvcNode]]:
        """The function's video4linux capture node (``uvc-xu``), with its USB descriptors."""
        from agent.collectors.usbfw.nodes import DEV, NodeUnavailable, VideoNode, video_capture_node

        name = video_capture_node(record.path)
        if name is None:
            raise NodeUnavailable("no video4linux capture node under the device (is uvcvideo loaded?)")
        try:
            descriptors: bytes | None = (record.path / "descriptors").read_bytes()[:65536]
        except OSError:
            descriptors = None
        return functools.partial(VideoNode, DEV / name, descriptors)

    def hidraw_nodes(self, record: UsbRecord) -> list[Callable[[], AbstractContextManager[HidNode]]]:
        """The function's hidraw nodes (``hid-feature``)."""
        from agent.collectors.usbfw.nodes import DEV, HidrawNode, hidraw_nodes

        return [functools.partial(HidrawNode, DEV / name) for name in hidraw_nodes(record.path)]

    def bulk_link(self, record: UsbRecord) -> Callable[[], AbstractContextManager[BulkLink]]:
        """The function's vendor bulk interface through libusb (``usb-bulk``)."""
        from agent.collectors.usbfw.tablehub import pyusb_bulk_link

        return functools.partial(
            pyusb_bulk_link, record.busnum, record.devnum, record.vendor_id, record.product_id
        )

    def product_collectors(self, product: Product) -> list[UsbUnitCollector]:
        """The product collectors to run on a unit of ``product``, as the catalog names them."""
        if not self.devices_reachable:
            return []
        return [collector_class(name)() for name in product.collectors if name not in self.disabled]

    def scan(self, ctx: ScanContext) -> SourceResult:
        result = SourceResult()
        try:
            found = self.discover()
        except UsbDiscoveryError as exc:
            result.errors.append(ScanError(self.name, str(self.sysfs_root), str(exc)))
            result.complete = False
            return result
        if found.message:
            result.messages.append(found.message)
        for entry, message in found.errors:
            result.errors.append(ScanError(self.name, entry, message))
        read_ctx = UsbReadContext(ctx.catalog, ctx.now, self, self.sync_deadline)
        for unit in group_units(found.records, ctx.catalog):
            if not (self.all_usb or unit.is_logitech):
                continue
            obs = UsbDescriptorCollector.collect(unit, ctx.catalog, ctx.now, source=self.name)
            # Product collectors read the unit's main function: a further function seen on
            # its own (its main function is not visible) is not the device they speak to.
            wanted = [c for c in unit.product.collectors if c not in self.disabled] if unit.product else []
            if wanted and not self.devices_reachable:
                obs.note(
                    "firmware-not-read",
                    f"firmware is read over the unit's own interface ({', '.join(wanted)}) only on "
                    "this host's live USB, not from a captured sysfs tree",
                    Severity.INFO,
                )
            if unit.product is not None and unit.match is not None and unit.match.is_main:
                for collector in self.product_collectors(unit.product):
                    obs, error = collector.collect(obs, unit, read_ctx)
                    if error is not None:
                        result.errors.append(ScanError(self.name, obs.address, error))
            result.observations.append(obs)
        return result
