"""A USB device simulated from a recorded session (fwupd emulation JSON).

``roomsync scan --replay CAPTURE.json``: support engineers reproduce a site's scan from a
capture. The device's descriptors and strings come from the recording; its Sync-interface
answers come from the recorded transfers, matched to the request the agent sends
(:class:`~agent.collectors.sync.replay.ReplayTransport`). Everything downstream — catalog,
grouping, the descriptor collector, the Sync collector — is the same code a live scan runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from agent.collectors.sync.client import SyncTransport
from agent.collectors.sync.errors import SyncError, TransportError
from agent.collectors.sync.replay import Recording, ReplayTransport, load_recording
from agent.collectors.sync.usb_unit import TransportOpener
from agent.discovery import ScanContext, SourceResult
from agent.discovery.usb import UsbSource
from agent.model import ScanError
from agent.usbtree import UsbDiscovery, UsbDiscoveryError, UsbRecord

if TYPE_CHECKING:
    from agent.collectors.usbfw.collectors import HidNode, UvcNode
    from agent.collectors.usbfw.replay import UdevRecording
    from agent.collectors.usbfw.tablehub import BulkLink


class ReplayUsbSource(UsbSource):
    """One recorded USB device, served as if it were on this host's bus: a USB device with
    its Sync interface (the Rally Bar's recordings), or a video4linux node with its UVC
    extension-unit queries (the Scribe's)."""

    name = "replay"

    def __init__(self, capture: str | os.PathLike[str], *, sync_deadline: float = 10.0) -> None:
        super().__init__(all_usb=True, libusb_strings=False, sync_deadline=sync_deadline)
        self.capture = Path(capture)
        self.sysfs_root = self.capture  # what an unreadable recording's error names
        self.live = False  # nothing on this host's USB is touched
        self.devices_reachable = True  # answered by the recording
        self._recording: Recording | None = None
        self._video: UdevRecording | None = None

    def _load(self) -> None:
        import json

        from agent.collectors.sync.replay import MAX_RECORDING_BYTES
        from agent.collectors.usbfw.replay import UdevRecordingError, is_udev_recording, parse_udev_recording

        try:
            if self.capture.stat().st_size > MAX_RECORDING_BYTES:
                raise UsbDiscoveryError(f"{self.capture}: too large for a device recording")
            doc = json.loads(self.capture.read_bytes())
            if is_udev_recording(doc):
                self._video = parse_udev_recording(doc, source=str(self.capture))
            else:
                self._recording = load_recording(self.capture)
        except (SyncError, OSError, UdevRecordingError) as exc:
            raise UsbDiscoveryError(f"{self.capture}: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise UsbDiscoveryError(f"{self.capture}: not JSON: {exc}") from exc

    def recording(self) -> Recording:
        if self._recording is None:
            self._load()
        if self._recording is None:
            raise TransportError(f"{self.capture} records a video4linux node, not a Sync interface")
        return self._recording

    def discover(self) -> UsbDiscovery:
        if self._recording is None and self._video is None:
            self._load()
        if self._video is not None:
            return self._discover_video(self._video)
        device = self.recording().device
        record = UsbRecord(
            name=device.platform_id or "replay-1",
            path=self.capture,
            vendor_id=device.vendor_id,
            product_id=device.product_id,
            bcd_device=device.bcd_device,
            busnum=device.busnum,
            devnum=device.devnum,
            string_indexes=dict(device.string_indexes),
        )
        for name, value in device.strings.items():
            record.set_string(name, value, "recording")
        for name, problems in device.string_problems.items():
            record.string_problems[name] = (*record.string_problems.get(name, ()), *problems)
        return UsbDiscovery(
            self.capture,
            True,
            [record],
            message=f"replaying {self.capture.name} (recorded device, not live USB)",
        )

    def _discover_video(self, video: UdevRecording) -> UsbDiscovery:
        record = UsbRecord(
            name=video.platform_id or "replay-1",
            path=self.capture,
            vendor_id=video.vendor_id,
            product_id=video.product_id,
            bcd_device=video.bcd_device,
            busnum=video.busnum,
            devnum=video.devnum,
        )
        if video.name:
            record.set_string("product", video.name, "recording")
        return UsbDiscovery(
            self.capture,
            True,
            [record],
            message=f"replaying {self.capture.name} (recorded video4linux device, not live USB)",
        )

    def video_node(self, record: UsbRecord) -> Callable[[], AbstractContextManager[UvcNode]]:
        from agent.collectors.usbfw.nodes import NodeUnavailable
        from agent.collectors.usbfw.replay import ReplayVideoNode

        if self._video is None:
            raise NodeUnavailable("the recording holds no video4linux node")
        return functools.partial(ReplayVideoNode, self._video)

    def hidraw_nodes(self, record: UsbRecord) -> list[Callable[[], AbstractContextManager[HidNode]]]:
        return []  # a recording of one node holds no other

    def bulk_link(self, record: UsbRecord) -> Callable[[], AbstractContextManager[BulkLink]]:
        from agent.collectors.usbfw.nodes import NodeUnavailable

        raise NodeUnavailable("the recording holds no bulk interface")

    def sync_transport(self, record: UsbRecord) -> TransportOpener:
        @contextlib.contextmanager
        def open_replay() -> Iterator[SyncTransport]:
            yield ReplayTransport(self.recording())  # TransportError for a video4linux recording

        return open_replay


class ReplaySources:
    """Several recorded devices as one source named ``replay``: what ``roomsync run
    --replay CAPTURE`` (repeatable) schedules, so that the daemon's store sees one source
    whose units stand on this host's USB (:data:`agent.inventory.LOCAL_USB_SOURCES`)."""

    name = ReplayUsbSource.name

    def __init__(self, captures: list[str | os.PathLike[str]], *, sync_deadline: float = 10.0) -> None:
        self.sources = [ReplayUsbSource(c, sync_deadline=sync_deadline) for c in captures]

    async def run(self, ctx: ScanContext) -> SourceResult:
        merged = SourceResult()
        for source in self.sources:
            try:
                result = await source.run(ctx)
            except Exception as exc:  # one recording's fault must not lose the others
                merged.errors.append(
                    ScanError(self.name, str(source.capture), f"{type(exc).__name__}: {exc}")
                )
                continue
            merged.observations.extend(result.observations)
            merged.errors.extend(result.errors)
            merged.messages.extend(result.messages)
            merged.complete = merged.complete and result.complete
        return merged
