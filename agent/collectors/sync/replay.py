"""ReplayTransport: a recorded device session (fwupd emulation JSON) acting as the device.

A recording (``fwupdtool emulation-save``; the Rally Bar one is
``fixtures/usb-captures/logi-rally-bar-setup.json``) holds, per USB device, the descriptors
(``IdVendor``, ``IdProduct``, ``Device`` = bcdDevice, string indexes, ``UsbInterfaces``) and
``UsbEvents``: every call the recording host made, in call order, as ``{Id, Data}`` (base64
for transfers) or ``{Id, Error}`` (a libusb error code; -7 = timeout).

An event ``Id`` is the call's key — e.g. ``BulkTransfer:Endpoint=0x02,Data=<base64>,
Length=0x9`` — or, in older recordings, ``#`` + the first 8 hex digits of the SHA-1 of that
key. So the roles of the events are computed, not guessed: a host write is an event whose
Id is the key of its own data on the OUT endpoint; a read is an event whose Id is the key of
a read of N zero bytes on the IN endpoint (N = 8192 on the Rally Bar); string descriptors
are ``GetStringDescriptor:DescIndex=0x02``. Everything else (udev facts, open/claim) is
not part of the conversation.

The host writes are split into *exchanges*, one per recorded BufferWrite, each named by the
request it carries (``TransitionToDeviceMode``, ``SetDeviceTime``, ``GetDeviceInfo``). When
the client sends a BufferWrite, the replay picks the first unused exchange for the same
request — so answers are paired with the request that got them, and a request the recording
never answered is a :class:`ReplayError` naming it. Inside an exchange every further client
frame must match the recorded host frame (command and payload; sequence ids are mapped, and
must go up by one per frame as the recorded host's did); the device's frames are served in
recorded order, including the recorded timeouts, with the device's Acks renumbered to the
client's sequence ids. When the device has nothing more to say, reads time out, as a real
device's would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from agent.collectors.sync import proto
from agent.collectors.sync.errors import (
    FrameError,
    ProtoError,
    ReplayError,
    TransportError,
    TransportTimeout,
)
from agent.collectors.sync.frames import HEADER, HEADER_SIZE, Command, decode_frame
from agent.collectors.sync.guard import check_outgoing
from agent.collectors.sync.interfaces import (
    EndpointInfo,
    InterfaceInfo,
    SyncEndpoints,
    select_sync_interface,
)
from agent.sanitize import clean_serial, clean_text

LIBUSB_ERROR_TIMEOUT = -7
#: Device frames whose sequence id is the one of the host frame they answer.
_ECHOING = frozenset({Command.ACK, Command.NACK, Command.TIMEOUT})
#: Recordings are test and support material; refuse anything absurd before parsing it.
MAX_RECORDING_BYTES = 64 << 20
#: Read-buffer sizes tried when event ids are hashed (the Rally Bar's host used 8192).
_READ_SIZES = tuple(1 << k for k in range(6, 17))
_STRING_FIELDS = {"manufacturer": "Manufacturer", "product": "Product", "serial": "SerialNumber"}
_CLEAR_READ = re.compile(
    r"^BulkTransfer:Endpoint=0x(?P<ep>[0-9a-f]{2}),Data=[A-Za-z0-9+/=]*,"
    r"Length=0x(?P<len>[0-9a-f]+)$"
)


# --------------------------------------------------------------------------- event ids


def fwupd_event_id(key: str) -> str:
    """The hashed form of an event key: ``#`` + 8 hex digits of its SHA-1 (a short tag,
    not a security measure)."""
    return "#" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]


def id_matches(event_id: str, key: str) -> bool:
    """True when an event's Id is ``key`` itself or its hashed form."""
    return event_id == key or (event_id.startswith("#") and event_id == fwupd_event_id(key))


def bulk_write_key(endpoint: int, data: bytes) -> str:
    """Key of a host → device bulk transfer of ``data``."""
    return (
        f"BulkTransfer:Endpoint=0x{endpoint:02x},"
        f"Data={base64.b64encode(data).decode('ascii')},Length=0x{len(data):x}"
    )


def bulk_read_key(endpoint: int, size: int) -> str:
    """Key of a device → host bulk transfer into a zeroed buffer of ``size`` bytes."""
    return bulk_write_key(endpoint, bytes(size))


def string_key(index: int) -> str:
    return f"GetStringDescriptor:DescIndex=0x{index:02x}"


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class RecordedDevice:
    """What a recording says about the USB device itself (to build a simulated one)."""

    vendor_id: int
    product_id: int
    bcd_device: int
    bcd_usb: int | None
    device_class: int
    device_subclass: int
    device_protocol: int
    #: Descriptor string indexes (0 = the device has no such string).
    string_indexes: dict[str, int]
    #: Strings the recording holds, cleaned (``agent.sanitize``): product, serial…
    strings: dict[str, str]
    string_problems: dict[str, tuple[str, ...]]
    interfaces: tuple[InterfaceInfo, ...]
    platform_id: str | None = None
    busnum: int | None = None
    devnum: int | None = None


@dataclass(frozen=True, slots=True)
class BulkOp:
    """One recorded bulk transfer: a host write, a device read, or a failed read."""

    kind: str  # "write" | "read" | "error"
    data: bytes = b""
    error: int | None = None
    event: int = -1  # index in UsbEvents, for messages


@dataclass(frozen=True, slots=True)
class RecordedExchange:
    """One recorded BufferWrite and everything up to the next one."""

    request: str
    request_frame: BulkOp
    ops: tuple[BulkOp, ...]


@dataclass(frozen=True, slots=True)
class Recording:
    source: str
    device: RecordedDevice
    sync: SyncEndpoints
    #: The recording host's read buffer size, when the event ids reveal it.
    read_size: int | None
    preamble: tuple[BulkOp, ...]
    exchanges: tuple[RecordedExchange, ...]

    @property
    def requests(self) -> list[str]:
        return [x.request for x in self.exchanges]


def load_recording(path: str | Path, *, device_index: int | None = None) -> Recording:
    """Read an fwupd emulation file. Raises :class:`ReplayError` naming what is wrong."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_RECORDING_BYTES:
            raise ReplayError(f"{p}: {size} bytes is too large for a device recording")
        doc = json.loads(p.read_bytes())
    except OSError as exc:
        raise ReplayError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise ReplayError(f"{p}: not JSON: {exc}") from exc
    return parse_recording(doc, source=str(p), device_index=device_index)


def parse_recording(doc: Any, *, source: str = "<recording>", device_index: int | None = None) -> Recording:
    """A recording from the decoded JSON; the first device with a Sync interface unless
    ``device_index`` says which."""
    devices = doc.get("UsbDevices") if isinstance(doc, dict) else None
    if not isinstance(devices, list) or not devices:
        raise ReplayError(f"{source}: no UsbDevices list (not an fwupd USB emulation file)")
    indexes = [device_index] if device_index is not None else range(len(devices))
    problems = []
    for i in indexes:
        if not 0 <= i < len(devices) or not isinstance(devices[i], dict):
            problems.append(f"UsbDevices[{i}] is not a device")
            continue
        try:
            return _parse_device(devices[i], f"{source} UsbDevices[{i}]")
        except (TransportError, ReplayError) as exc:
            problems.append(str(exc))
    raise ReplayError(f"{source}: no device with a usable Sync Agent interface: " + "; ".join(problems))


def _int(raw: dict[str, Any], key: str, where: str, default: int = 0) -> int:
    value = raw.get(key, default)  # fwupd leaves out fields that are zero
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReplayError(f"{where}: {key} is not a whole number")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """A JSON list that may be left out (``None`` or absent is empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReplayError(f"{what} is not a list")
    return value


def _interfaces(raw: dict[str, Any], where: str) -> tuple[InterfaceInfo, ...]:
    found = []
    for n, intf in enumerate(_list(raw.get("UsbInterfaces"), f"{where}: UsbInterfaces")):
        w = f"{where} UsbInterfaces[{n}]"
        if not isinstance(intf, dict):
            raise ReplayError(f"{w}: not an object")
        endpoints = tuple(
            EndpointInfo(
                _int(ep, "EndpointAddress", w),
                ep["Attributes"] if isinstance(ep.get("Attributes"), int) else None,
            )
            for ep in _list(intf.get("UsbEndpoints"), f"{w}: UsbEndpoints")
            if isinstance(ep, dict)
        )
        found.append(
            InterfaceInfo(
                _int(intf, "InterfaceNumber", w),
                _int(intf, "AlternateSetting", w),
                _int(intf, "InterfaceClass", w),
                _int(intf, "InterfaceSubClass", w),
                _int(intf, "InterfaceProtocol", w),
                endpoints,
            )
        )
    return tuple(found)


def _parse_device(raw: dict[str, Any], where: str) -> Recording:
    interfaces = _interfaces(raw, where)
    sync = select_sync_interface(interfaces)
    events = raw.get("UsbEvents")
    if not isinstance(events, list):
        raise ReplayError(f"{where}: no UsbEvents list")
    string_indexes = {name: _int(raw, key, where) for name, key in _STRING_FIELDS.items()}
    strings: dict[str, str] = {}
    string_problems: dict[str, tuple[str, ...]] = {}
    busnum = devnum = None
    read_ids = _read_ids(sync.in_address)
    read_size: int | None = None
    ops: list[tuple[BulkOp, str]] = []
    unclaimed: list[tuple[int, dict[str, Any]]] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("Id"), str):
            continue
        eid, data_text = ev["Id"], ev.get("Data")
        name = next(
            (n for n, idx in string_indexes.items() if idx and id_matches(eid, string_key(idx))), None
        )
        if name is not None and isinstance(data_text, str):
            cleaned = (clean_serial if name == "serial" else clean_text)(_b64(data_text, where, i))
            if cleaned.value is not None:
                strings[name] = cleaned.value
            if cleaned.problems:
                string_problems[name] = cleaned.problems
            continue
        if isinstance(data_text, str) and "BUSNUM=" in data_text:
            busnum, devnum = _uevent_number(data_text, "BUSNUM"), _uevent_number(data_text, "DEVNUM")
        size = read_ids.get(eid)
        if size is None and (m := _CLEAR_READ.match(eid)) and int(m["ep"], 16) == sync.in_address:
            size = int(m["len"], 16)
        if size is not None:
            read_size = size
            ops.append((_read_op(ev, where, i), eid))
            continue
        if isinstance(data_text, str) and _is_write(eid, data_text, sync.out_address):
            ops.append((BulkOp("write", _b64(data_text, where, i), event=i), eid))
            continue
        if "Error" in ev or isinstance(data_text, str):
            unclaimed.append((i, ev))
    if read_size is None:
        # Unknown id scheme for reads: the reads are the one call repeated most often.
        ops = _fallback_reads(ops, unclaimed, where)
    return _build(
        raw,
        where,
        sync,
        interfaces,
        string_indexes,
        strings,
        string_problems,
        busnum,
        devnum,
        read_size,
        [op for op, _ in ops],
    )


@cache
def _read_ids(in_address: int) -> dict[str, int]:
    """Event ids (both forms) of reads of every candidate size on one IN endpoint."""
    keys = {bulk_read_key(in_address, n): n for n in _READ_SIZES}
    return {fwupd_event_id(k): n for k, n in keys.items()} | keys


def _fallback_reads(
    ops: list[tuple[BulkOp, str]], unclaimed: list[tuple[int, dict[str, Any]]], where: str
) -> list[tuple[BulkOp, str]]:
    counts = Counter(ev["Id"] for _, ev in unclaimed)
    if not counts:
        return ops
    read_id, n = counts.most_common(1)[0]
    if n < 2:
        return ops
    reads = [(_read_op(ev, where, i), read_id) for i, ev in unclaimed if ev["Id"] == read_id]
    return sorted(ops + reads, key=lambda pair: pair[0].event)


def _read_op(ev: dict[str, Any], where: str, i: int) -> BulkOp:
    if "Error" in ev:
        code = ev["Error"]
        if not isinstance(code, int):
            raise ReplayError(f"{where} UsbEvents[{i}]: Error is not a number")
        return BulkOp("error", error=code, event=i)
    data_text = ev.get("Data", "")
    if not isinstance(data_text, str):
        raise ReplayError(f"{where} UsbEvents[{i}]: Data is not a string")
    return BulkOp("read", _b64(data_text, where, i), event=i)


def _is_write(eid: str, data_text: str, out_address: int) -> bool:
    try:
        data = base64.b64decode(data_text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return id_matches(eid, bulk_write_key(out_address, data))


def _b64(text: str, where: str, i: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReplayError(f"{where} UsbEvents[{i}]: Data is not base64: {exc}") from exc


def _uevent_number(text: str, key: str) -> int | None:
    m = re.search(rf"^{key}=(\d{{1,3}})$", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _build(
    raw: dict[str, Any],
    where: str,
    sync: SyncEndpoints,
    interfaces: tuple[InterfaceInfo, ...],
    string_indexes: dict[str, int],
    strings: dict[str, str],
    string_problems: dict[str, tuple[str, ...]],
    busnum: int | None,
    devnum: int | None,
    read_size: int | None,
    ops: list[BulkOp],
) -> Recording:
    device = RecordedDevice(
        vendor_id=_int(raw, "IdVendor", where),
        product_id=_int(raw, "IdProduct", where),
        bcd_device=_int(raw, "Device", where),
        bcd_usb=_int(raw, "USB", where) if "USB" in raw else None,
        device_class=_int(raw, "DeviceClass", where),
        device_subclass=_int(raw, "DeviceSubClass", where),
        device_protocol=_int(raw, "DeviceProtocol", where),
        string_indexes=string_indexes,
        strings=strings,
        string_problems=string_problems,
        interfaces=interfaces,
        platform_id=raw["PlatformId"] if isinstance(raw.get("PlatformId"), str) else None,
        busnum=busnum,
        devnum=devnum,
    )
    preamble: list[BulkOp] = []
    exchanges: list[tuple[str, BulkOp, list[BulkOp]]] = []
    for op in ops:
        request = _request_of(op) if op.kind == "write" else None
        if request is not None:
            exchanges.append((request, op, []))
        elif exchanges:
            exchanges[-1][2].append(op)
        else:
            preamble.append(op)
    if not exchanges:
        raise ReplayError(f"{where}: the recording holds no BufferWrite on the Sync interface")
    return Recording(
        where,
        device,
        sync,
        read_size,
        tuple(preamble),
        tuple(RecordedExchange(r, w, tuple(o)) for r, w, o in exchanges),
    )


def _request_of(op: BulkOp) -> str | None:
    """The request a recorded host write carries, or None if it is not a BufferWrite."""
    try:
        frame = decode_frame(op.data)
    except FrameError:
        return None
    if frame.command is not Command.BUFFER_WRITE:
        return None
    try:
        return proto.request_name(frame.payload)
    except ProtoError:
        return "undecodable request"


# --------------------------------------------------------------------------- transport


@dataclass(slots=True)
class _Playing:
    exchange: RecordedExchange
    pos: int = 0
    #: recorded host sequence id → the client's
    seq_map: dict[int, int] = field(default_factory=dict)


class ReplayTransport:
    """A :class:`~agent.collectors.sync.client.SyncTransport` that plays a recording.

    ``on_timeout`` is called with the read's timeout whenever the replay answers a read
    with a timeout, so a test's fake clock can advance as time would on a real device.
    ``log`` lists every transfer as ``("host" | "device" | "timeout", bytes)``.
    """

    def __init__(self, recording: Recording, *, on_timeout: Callable[[float], None] | None = None) -> None:
        self.recording = recording
        self.on_timeout = on_timeout
        self.log: list[tuple[str, bytes]] = []
        self._used: set[int] = set()
        self._playing: _Playing | None = None
        self._preamble = deque(recording.preamble)
        self._queue: deque[BulkOp] = deque()  # device frames passed over by a client write
        self._leftover = b""
        self._last_seq: int | None = None

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ReplayTransport:
        return cls(load_recording(path), **kwargs)

    @property
    def finished(self) -> bool:
        """True when the exchange being played has no recorded transfer left."""
        p = self._playing
        return p is not None and p.pos >= len(p.exchange.ops) and not self._queue and not self._leftover

    # -- host → device

    def write(self, data: bytes, timeout: float) -> None:
        frame = check_outgoing(data)  # the replay answers only what the client may send
        self._check_sequence(frame.sequence_id)
        self.log.append(("host", bytes(data)))
        if frame.command is Command.BUFFER_WRITE:
            self._start(frame.sequence_id, proto.request_name(frame.payload))
            return
        p = self._playing
        if p is None:
            raise ReplayError(f"client sent {frame.describe()} before any request")
        while p.pos < len(p.exchange.ops) and p.exchange.ops[p.pos].kind != "write":
            op = p.exchange.ops[p.pos]
            if op.kind == "read":
                self._queue.append(op)  # the device sent it; it waits in the IN queue
            p.pos += 1  # a recorded timeout the client did not wait for is simply skipped
        if p.pos >= len(p.exchange.ops):
            raise ReplayError(
                f"client sent {frame.describe()}, but the recorded "
                f"{p.exchange.request} exchange has no further host frame"
            )
        op = p.exchange.ops[p.pos]
        recorded = decode_frame(op.data)
        if (recorded.command, recorded.payload) != (frame.command, frame.payload):
            raise ReplayError(
                f"client sent {frame.describe()} where the recording has "
                f"{recorded.describe()} (UsbEvents[{op.event}])"
            )
        p.seq_map[recorded.sequence_id] = frame.sequence_id
        p.pos += 1

    def _check_sequence(self, seq: int) -> None:
        if self._last_seq is not None and seq != (self._last_seq + 1) & 0xFFFF_FFFF:
            raise ReplayError(
                f"client sequence id went from {self._last_seq} to {seq}; the "
                f"recorded host numbers every frame it sends one up"
            )
        self._last_seq = seq

    def _start(self, client_seq: int, request: str) -> None:
        for n, exchange in enumerate(self.recording.exchanges):
            if n not in self._used and exchange.request == request:
                self._used.add(n)
                recorded_seq = decode_frame(exchange.request_frame.data).sequence_id
                self._playing = _Playing(exchange, 0, {recorded_seq: client_seq})
                self._queue.clear()
                self._leftover = b""
                return
        answered = sorted(set(self.recording.requests))
        if request in answered:
            count = self.recording.requests.count(request)
            raise ReplayError(
                f"the recording cannot answer another {request} request: its "
                f"{count} recorded {request} exchange(s) are used up"
            )
        raise ReplayError(
            f"the recording cannot answer a {request} request (it holds {', '.join(answered)} exchanges only)"
        )

    # -- device → host

    def read(self, size: int, timeout: float) -> bytes:
        if self._leftover:
            return self._serve(self._leftover, size)
        op = self._next_device_op()
        if op is None:
            return self._timeout(timeout, "the device has nothing to send")
        if op.kind == "error":
            if op.error == LIBUSB_ERROR_TIMEOUT:
                return self._timeout(timeout, f"recorded timeout, UsbEvents[{op.event}]")
            raise TransportError(f"recorded libusb error {op.error} (UsbEvents[{op.event}])")
        return self._serve(self._renumber(op.data), size)

    def _next_device_op(self) -> BulkOp | None:
        if self._queue:
            return self._queue.popleft()
        p = self._playing
        if p is None:
            return self._preamble.popleft() if self._preamble and self._preamble[0].kind != "write" else None
        if p.pos < len(p.exchange.ops) and p.exchange.ops[p.pos].kind != "write":
            p.pos += 1
            return p.exchange.ops[p.pos - 1]
        return None  # the device waits for the host

    def _renumber(self, data: bytes) -> bytes:
        """A device Ack (Nack, Timeout) echoes the host's sequence id: give it the client's."""
        p = self._playing
        if p is None or len(data) < HEADER_SIZE:
            return data
        command, length, seq = HEADER.unpack_from(data)
        if command not in _ECHOING or seq not in p.seq_map:
            return data
        return HEADER.pack(command, length, p.seq_map[seq]) + data[HEADER_SIZE:]

    def _serve(self, data: bytes, size: int) -> bytes:
        # A transfer longer than the host's buffer arrives in pieces, as USB delivers it.
        chunk, self._leftover = data[:size], data[size:]
        self.log.append(("device", chunk))
        return chunk

    def _timeout(self, timeout: float, why: str) -> bytes:
        self.log.append(("timeout", b""))
        if self.on_timeout is not None:
            self.on_timeout(timeout)
        raise TransportTimeout(f"replay: {why}")
