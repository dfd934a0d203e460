"""A video4linux device recorded by fwupd (``fwupdtool emulation-save``) acting as the device.

The Scribe's recording (``fixtures/usb-captures/logi-scribe-setup.json``) is one
``FuUdevDevice`` of subsystem ``video4linux`` whose ``Events`` hold, in call order:

* udev facts — ``ReadAttr:Attr=name`` (the node's name), ``GetBackendParent`` (the USB
  device's sysfs path and its ``PhysicalId``, e.g. ``1-2``), ``ReadAttr:Attr=uevent`` of the USB
  device (``PRODUCT=46d/8e2/100``: ids and bcdDevice; ``BUSNUM``, ``DEVNUM``),
  ``LoadDescriptor:basename=descriptors`` (its raw USB descriptors, base64);
* ioctls — ``Ioctl:Request=0x80685600,Data=…`` (``VIDIOC_QUERYCAP``) and
  ``Ioctl:Request=0xc0107521,Unit=0x08,Selector=0x01,Query=0x85,Data=AAA=,Length=0x2``
  (``UVCIOC_CTRL_QUERY``), each with ``DataOut`` (base64): what the driver handed back.

:class:`ReplayVideoNode` answers the collector's queries from those events: each query,
after the gate, takes the first unused recorded ioctl with the same unit, selector, query,
length and outgoing data; a query the recording never answered is :class:`NodeFailed`
naming it. Nothing here opens a device.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from agent.collectors.usbfw.nodes import NodeFailed
from agent.collectors.usbfw.requests import (
    UVC_SET_CUR,
    UVCIOC_CTRL_QUERY,
    VIDIOC_QUERYCAP,
    UvcRequest,
    check_uvc_request,
)
from agent.sanitize import clean_text

_IOCTL = re.compile(r"^Ioctl:Request=0x(?P<request>[0-9a-fA-F]+)(?P<rest>(,[A-Za-z]+=[^,]*)*)$")
_UEVENT_PRODUCT = re.compile(
    r"^PRODUCT=(?P<vid>[0-9a-f]{1,4})/(?P<pid>[0-9a-f]{1,4})/(?P<bcd>[0-9a-f]{1,4})$"
)


class UdevRecordingError(ValueError):
    """The document is not a usable fwupd recording of a video4linux device."""


@dataclass(frozen=True, slots=True)
class RecordedIoctl:
    request: int
    fields: dict[str, str]
    data_in: bytes
    data_out: bytes | None
    error: int | None


@dataclass(slots=True)
class UdevRecording:
    """One recorded video4linux node and its USB device."""

    source: str
    vendor_id: int
    product_id: int
    bcd_device: int | None = None
    platform_id: str | None = None
    busnum: int | None = None
    devnum: int | None = None
    name: str | None = None
    descriptors: bytes | None = None
    ioctls: list[RecordedIoctl] = field(default_factory=list)


def is_udev_recording(doc: Any) -> bool:
    """Whether an fwupd emulation document records a video4linux node (not a USB device)."""
    devices = doc.get("UsbDevices") if isinstance(doc, dict) else None
    return isinstance(devices, list) and any(
        isinstance(d, dict) and d.get("Subsystem") == "video4linux" for d in devices
    )


def _b64(text: Any, where: str) -> bytes:
    if text is None:
        return b""
    if not isinstance(text, str):
        raise UdevRecordingError(f"{where}: not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UdevRecordingError(f"{where}: not base64") from None


def parse_udev_recording(doc: Any, *, source: str = "<recording>") -> UdevRecording:
    """The first video4linux device of an fwupd emulation document. Raises
    :class:`UdevRecordingError` naming what is wrong."""
    devices = doc.get("UsbDevices") if isinstance(doc, dict) else None
    if not isinstance(devices, list):
        raise UdevRecordingError(f"{source}: no UsbDevices list")
    for i, raw in enumerate(devices):
        if isinstance(raw, dict) and raw.get("Subsystem") == "video4linux":
            return _parse_device(raw, f"{source} UsbDevices[{i}]")
    raise UdevRecordingError(f"{source}: no video4linux device in the recording")


def _parse_device(raw: dict[str, Any], where: str) -> UdevRecording:
    vendor, model = raw.get("Vendor"), raw.get("Model")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in (vendor, model)):
        raise UdevRecordingError(f"{where}: Vendor and Model are not USB ids")
    assert isinstance(vendor, int) and isinstance(model, int)
    found = UdevRecording(where, vendor, model)
    events = raw.get("Events")
    if not isinstance(events, list):
        raise UdevRecordingError(f"{where}: no Events list")
    for n, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("Id"), str):
            continue
        _event(found, ev, f"{where} Events[{n}]")
    return found


def _event(found: UdevRecording, ev: dict[str, Any], where: str) -> None:
    eid, data = ev["Id"], ev.get("Data")
    if eid == "ReadAttr:Attr=name" and isinstance(data, str):
        found.name = clean_text(data, max_len=128).value
    elif eid.startswith("GetBackendParent:") and isinstance(ev.get("PhysicalId"), str):
        found.platform_id = clean_text(ev["PhysicalId"], max_len=64).value
    elif eid == "ReadAttr:Attr=uevent" and isinstance(data, str):
        for line in data.splitlines():
            m = _UEVENT_PRODUCT.match(line.strip())
            if m:
                found.bcd_device = int(m["bcd"], 16)
            key, _, value = line.partition("=")
            if key in ("BUSNUM", "DEVNUM") and value.isdigit():
                setattr(found, key.lower(), int(value))
    elif eid == "LoadDescriptor:basename=descriptors":
        found.descriptors = _b64(data, where)[:65536]
    else:
        m = _IOCTL.match(eid)
        if m is None:
            return
        fields = dict(part.split("=", 1) for part in m["rest"].split(",") if part)
        error = ev.get("Error") if isinstance(ev.get("Error"), int) else None
        out = ev.get("DataOut")
        found.ioctls.append(
            RecordedIoctl(
                int(m["request"], 16),
                {k: v for k, v in fields.items() if k != "Data"},
                _b64(fields.get("Data"), where),
                _b64(out, where) if out is not None else None,
                error,
            )
        )


def _number(text: str | None) -> int | None:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


class ReplayVideoNode:
    """A recorded video4linux node: the collector's UVC queries answered from the recording
    (:class:`agent.collectors.usbfw.collectors.UvcNode`)."""

    def __init__(self, recording: UdevRecording) -> None:
        self.recording = recording
        self.descriptors = recording.descriptors
        self._used: set[int] = set()

    def __enter__(self) -> ReplayVideoNode:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def capabilities(self) -> int:
        for i, ioctl in enumerate(self.recording.ioctls):
            if ioctl.request == VIDIOC_QUERYCAP and ioctl.data_out and len(ioctl.data_out) >= 92:
                out = ioctl.data_out
                caps, device_caps = int.from_bytes(out[84:88], "little"), int.from_bytes(out[88:92], "little")
                self._used.add(i)
                return device_caps if caps & 0x80000000 else caps
        raise NodeFailed("the recording has no VIDIOC_QUERYCAP answer")

    def query(self, request: UvcRequest) -> bytes:
        check_uvc_request(request)
        sent = request.data if request.data is not None else bytes(request.size)
        for i, ioctl in enumerate(self.recording.ioctls):
            if i in self._used or ioctl.request != UVCIOC_CTRL_QUERY:
                continue
            f = ioctl.fields
            if (
                _number(f.get("Unit")) == request.unit
                and _number(f.get("Selector")) == request.selector
                and _number(f.get("Query")) == request.query
                and _number(f.get("Length")) == request.size
                and ioctl.data_in == sent
            ):
                self._used.add(i)
                if ioctl.error is not None:
                    raise NodeFailed(
                        f"the recorded device failed UVC query 0x{request.query:02x} ({ioctl.error})"
                    )
                if request.query == UVC_SET_CUR:
                    return b""
                return (ioctl.data_out or b"")[: request.size]
        raise NodeFailed(
            f"the recording has no answer to UVC query 0x{request.query:02x} of unit {request.unit} "
            f"selector {request.selector} ({request.size} bytes)"
        )
