"""The outgoing gate: the one check every byte passes before it is written to a device.

roomsync is read-only (design.md: a collector never changes a device's state). On the Sync
interface the host sends exactly four kinds of frame in a GetDeviceInfo exchange (recorded
Rally Bar session, events 36–43):

* ``BufferWrite`` carrying the GetDeviceInfo request,
* ``UninitBuffer`` with an empty payload (closes the BufferWrite),
* ``Ack`` of the device's ``BufferRead`` (payload u32le 0xCC06),
* ``Ack`` of the device's ``UninitBuffer`` (payload u32le 0xCC08).

:func:`check_outgoing` lets exactly those through and raises :class:`ReadOnlyViolation` for
anything else, however it was built. A BufferWrite passes only when its payload is, byte for
byte, the canonical encoding of a GetDeviceInfo request — so a hand-crafted request with an
extra field (TransitionToDeviceMode = 5, SetDeviceTime = 10, or any unknown one), a
response, an event or trailing garbage is refused. Both transports call this gate in their
``write`` and :class:`~agent.collectors.sync.client.SyncClient` calls it before handing a
frame to any transport, so the check holds even for a transport written later.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.unknown_fields import UnknownFieldSet

from agent.collectors.sync import proto
from agent.collectors.sync.errors import FrameError, ProtoError, ReadOnlyViolation
from agent.collectors.sync.frames import (
    HEADER_SIZE,
    Command,
    Frame,
    command_label,
    decode_frame,
    host_ack_payload,
)

#: The host acknowledges only these two device commands (recorded events 25/27, 33/35, 41/43).
_ACKABLE = {host_ack_payload(Command.BUFFER_READ), host_ack_payload(Command.UNINIT_BUFFER)}
#: Header strings of a request are metadata (the recorded host sends timestamp "0"); keep
#: them short so the header cannot smuggle a payload.
MAX_HEADER_TEXT = 64


def check_outgoing(data: bytes) -> Frame:
    """Return the decoded frame if ``data`` may be sent; raise :class:`ReadOnlyViolation`."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise ReadOnlyViolation(f"refused to send {len(data)} bytes: not a complete frame")
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        raise ReadOnlyViolation(f"refused to send a malformed frame: {exc}") from exc
    if frame.command is Command.BUFFER_WRITE:
        _check_request(frame.payload)
    elif frame.command is Command.UNINIT_BUFFER:
        if frame.payload:
            raise ReadOnlyViolation(
                f"refused to send an UninitBuffer with a {len(frame.payload)}-byte payload"
            )
    elif frame.command is Command.ACK:
        if frame.payload not in _ACKABLE:
            raise ReadOnlyViolation(
                f"refused to send an Ack with payload {frame.payload[:16]!r}: the host only "
                f"acknowledges BufferRead and UninitBuffer"
            )
    else:
        raise ReadOnlyViolation(f"refused to send {command_label(frame.command)}: only the device sends it")
    return frame


def _check_request(payload: bytes) -> None:
    try:
        msg = proto.parse_usb_msg(payload)
    except ProtoError as exc:
        raise ReadOnlyViolation(f"refused to send a BufferWrite that is not a UsbMsg: {exc}") from exc
    if msg.HasField("header") and (
        len(msg.header.id) > MAX_HEADER_TEXT or len(msg.header.timestamp) > MAX_HEADER_TEXT
    ):
        raise ReadOnlyViolation("refused to send a request with an oversized header")
    canonical = proto.UsbMsg()
    if msg.HasField("header"):
        canonical.header.SetInParent()
        canonical.header.id = msg.header.id
        canonical.header.timestamp = msg.header.timestamp
    canonical.request.get_device_info.SetInParent()
    if canonical.SerializeToString(deterministic=True) != payload:
        raise ReadOnlyViolation(
            f"refused to send {_what(payload)}: roomsync only ever sends GetDeviceInfo (it is read-only)"
        )


def _what(payload: bytes) -> str:
    """Name what a refused BufferWrite asks for, as precisely as it can be read."""
    try:
        name = proto.request_name(payload)
    except ProtoError as exc:
        return f"a BufferWrite that is not one request ({exc})"
    if name == "GetDeviceInfo":
        extras = _extras(proto.parse_usb_msg(payload))
        return "a GetDeviceInfo request with extra or reordered fields" + (
            f" ({', '.join(extras)})" if extras else ""
        )
    return f"a {name} request"


def _extras(msg: Any) -> list[str]:
    """What a GetDeviceInfo-looking message carries besides it, for the refusal message."""
    found = [f"a {body} body" for body in proto.BODIES if body != "request" and msg.HasField(body)]
    for where, part in (
        ("UsbMsg", msg),
        ("header", msg.header),
        ("request", msg.request),
        ("GetDeviceInfo", msg.request.get_device_info),
    ):
        for unknown in UnknownFieldSet(part):
            number = int(unknown.field_number)
            name = proto.REQUEST_NAMES.get(number) if where == "request" else None
            found.append(f"{where} field {number}" + (f" = {name}" if name else ""))
    return found
