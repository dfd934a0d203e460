"""The ``UsbMsg`` protobuf envelope, declared in code and built at import time.

No ``.proto`` file, no protoc, no generated ``_pb2`` module: the few messages this collector
needs are written below as a :class:`~google.protobuf.descriptor_pb2.FileDescriptorProto`
and loaded into a private descriptor pool (so they can never clash with another library's
messages in the default pool).

Field numbers and types are the ones protocols.md gives, checked byte for byte against the
recorded Rally Bar session (``logi-rally-bar-setup.json``):

* host request, events 15/20/28/36: ``0a 03 12 01 30`` = header{timestamp: "0"}, then
  ``1a 02 12 00`` = request{2: GetDeviceInfo{}} (or ``1a 02 2a 00`` = request{5: …},
  ``1a 11 52 0f …`` = request{10: {2: "Europe/London"}});
* device answer, event 40: ``0a 40`` header{1 id: uuid, 2 timestamp: ISO string}, then
  ``22 84 17 12 81 17 0a fe 16 {json…}`` = response{2: GetDeviceInfoResponse{1: JSON}};
* event 31: ``12 02 10 01`` = acknowledge{2 success: true}; event 23:
  ``22 04 2a 02 08 01`` = response{5: {1: true}}.

**Read-only by construction.** The ``Request`` message knows exactly one field,
``get_device_info`` (2). Other requests (TransitionToDeviceMode = 5, SetDeviceTime = 10,
which change device state) are not declared: this module cannot build them, and when a
recording contains them they parse as unknown fields, reported by number only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.message import Error as ProtobufError
from google.protobuf.unknown_fields import UnknownFieldSet

from agent.collectors.sync.errors import ProtoError

_PACKAGE = "roomsync.sync"
_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_MESSAGE

#: Field numbers of the request/response payloads, for naming what a recording holds.
#: Only ``GET_DEVICE_INFO`` is declared in the schema; the others are names for messages.
GET_DEVICE_INFO = 2
REQUEST_NAMES = {GET_DEVICE_INFO: "GetDeviceInfo", 5: "TransitionToDeviceMode", 10: "SetDeviceTime"}
KONG_EVENT = 1
EVENT_NAMES = {KONG_EVENT: "KongEvent"}

# (message name, [(field name, number, type, message type name or None)])
_SCHEMA: list[tuple[str, list[tuple[str, int, int, str | None]]]] = [
    ("Header", [("id", 1, _STRING, None), ("timestamp", 2, _STRING, None)]),
    ("Acknowledge", [("msg_id", 1, _STRING, None), ("success", 2, _BOOL, None)]),
    ("GetDeviceInfoRequest", []),
    ("Request", [("get_device_info", GET_DEVICE_INFO, _MESSAGE, "GetDeviceInfoRequest")]),
    ("GetDeviceInfoResponse", [("payload", 1, _STRING, None)]),
    ("Response", [("get_device_info", GET_DEVICE_INFO, _MESSAGE, "GetDeviceInfoResponse")]),
    ("KongEvent", [("payload", 1, _STRING, None)]),
    ("Event", [("kong_event", KONG_EVENT, _MESSAGE, "KongEvent")]),
    (
        "UsbMsg",
        [
            ("header", 1, _MESSAGE, "Header"),
            ("ack", 2, _MESSAGE, "Acknowledge"),
            ("request", 3, _MESSAGE, "Request"),
            ("response", 4, _MESSAGE, "Response"),
            ("event", 5, _MESSAGE, "Event"),
        ],
    ),
]
#: The four bodies a UsbMsg can carry; exactly one is set in every recorded message.
BODIES = ("ack", "request", "response", "event")


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="roomsync/sync_usb_msg.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _SCHEMA:
        msg = fd.message_type.add(name=name)
        for field_name, number, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
            if type_name is not None:
                field.type_name = f".{_PACKAGE}.{type_name}"
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _cls(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


UsbMsg = _cls("UsbMsg")
Header = _cls("Header")
Acknowledge = _cls("Acknowledge")
Request = _cls("Request")
GetDeviceInfoRequest = _cls("GetDeviceInfoRequest")
Response = _cls("Response")
GetDeviceInfoResponse = _cls("GetDeviceInfoResponse")
Event = _cls("Event")
KongEvent = _cls("KongEvent")


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class SyncMessage:
    """A decoded ``UsbMsg``: which body it carries and the facts this collector uses."""

    #: ``ack``, ``request``, ``response`` or ``event``.
    body: str
    #: Field number inside the request/response/event (2 = GetDeviceInfo, 1 = Kong event);
    #: ``None`` for an acknowledge or an empty body.
    field: int | None
    header_id: str = ""
    header_timestamp: str = ""
    #: The JSON text of a GetDeviceInfo response or a Kong event.
    json_payload: str | None = None
    ack_msg_id: str | None = None
    ack_success: bool | None = None

    @property
    def name(self) -> str:
        """``GetDeviceInfo response``, ``KongEvent event``, ``request field 7``…"""
        if self.body == "ack":
            return "acknowledge"
        if self.field is None:
            return f"empty {self.body}"
        names = EVENT_NAMES if self.body == "event" else REQUEST_NAMES
        known = names.get(self.field)
        return f"{known} {self.body}" if known else f"{self.body} field {self.field}"

    @property
    def is_device_info_response(self) -> bool:
        return self.body == "response" and self.field == GET_DEVICE_INFO

    @property
    def is_kong_event(self) -> bool:
        return self.body == "event" and self.field == KONG_EVENT


def parse_usb_msg(data: bytes) -> Any:
    """Parse bytes into a ``UsbMsg`` message object. Raises :class:`ProtoError`."""
    msg = UsbMsg()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, ProtobufError, ValueError, RuntimeError) as exc:
        # upb reports corrupt wire data, bad UTF-8 in a string field and runaway
        # nesting as DecodeError; the others are belts and braces.
        raise ProtoError(f"not a UsbMsg ({len(data)} bytes): {exc}") from exc
    return msg


def decode_usb_msg(data: bytes) -> SyncMessage:
    """Decode one ``UsbMsg``. Raises :class:`ProtoError` for garbage, for a message that
    carries no body, and for one that carries several (never seen from a device)."""
    msg = parse_usb_msg(data)
    present = [b for b in BODIES if msg.HasField(b)]
    if not present:
        raise ProtoError(f"UsbMsg of {len(data)} bytes carries no acknowledge, request, response or event")
    if len(present) > 1:
        raise ProtoError(f"UsbMsg carries several bodies at once: {', '.join(present)}")
    body = present[0]
    header_id, header_ts = msg.header.id, msg.header.timestamp
    if body == "ack":
        return SyncMessage(
            "ack", None, header_id, header_ts, ack_msg_id=msg.ack.msg_id, ack_success=msg.ack.success
        )
    inner = getattr(msg, body)
    json_payload: str | None = None
    if body == "request":
        known = "get_device_info"
    elif body == "response":
        known = "get_device_info"
        if inner.HasField(known):
            json_payload = inner.get_device_info.payload
    else:
        known = "kong_event"
        if inner.HasField(known):
            json_payload = inner.kong_event.payload
    field: int | None = GET_DEVICE_INFO if body != "event" else KONG_EVENT
    if not inner.HasField(known):
        field = _first_unknown_field(inner)
    return SyncMessage(body, field, header_id, header_ts, json_payload=json_payload)


def _first_unknown_field(message: Any) -> int | None:
    """Number of the first field this schema does not declare (``None`` if there is none)."""
    for unknown in UnknownFieldSet(message):
        return int(unknown.field_number)
    return None


def request_name(payload: bytes) -> str:
    """What a BufferWrite payload asks for (``GetDeviceInfo``, ``SetDeviceTime``…).

    For naming recorded requests and refused ones in errors. Raises :class:`ProtoError`
    when the payload is not a UsbMsg request.
    """
    message = decode_usb_msg(payload)
    if message.body != "request":
        raise ProtoError(f"a BufferWrite must carry a request, this one carries {message.name}")
    if message.field is None:
        return "empty request"
    return REQUEST_NAMES.get(message.field, f"request field {message.field}")


# --------------------------------------------------------------------------- encoding


def encode_get_device_info_request() -> bytes:
    """The only request this collector can build: GetDeviceInfo, exactly as the recorded
    host sent it (header{timestamp: "0"}, request{get_device_info{}}): 9 bytes,
    ``0a 03 12 01 30 1a 02 12 00``."""
    msg = UsbMsg()
    msg.header.timestamp = "0"
    msg.request.get_device_info.SetInParent()
    return bytes(msg.SerializeToString(deterministic=True))


def encode_device_message(
    *,
    header_id: str = "",
    timestamp: str = "",
    device_info_json: str | None = None,
    kong_event_json: str | None = None,
    ack_success: bool | None = None,
) -> bytes:
    """A device → host ``UsbMsg`` (GetDeviceInfo response, Kong event or acknowledge).

    For replays and tests that derive device sessions from a recording. These are answers,
    not requests: the outgoing gate (:mod:`agent.collectors.sync.guard`) refuses to send
    any of them.
    """
    chosen = [x is not None for x in (device_info_json, kong_event_json, ack_success)]
    if sum(chosen) != 1:
        raise ProtoError("give exactly one of device_info_json, kong_event_json, ack_success")
    msg = UsbMsg()
    msg.header.id = header_id
    msg.header.timestamp = timestamp
    # SetInParent marks a sub-message present even when all its fields are defaults
    # (proto3 would otherwise drop an empty payload or ``success: false`` entirely).
    if device_info_json is not None:
        msg.response.get_device_info.SetInParent()
        msg.response.get_device_info.payload = device_info_json
    elif kong_event_json is not None:
        msg.event.kong_event.SetInParent()
        msg.event.kong_event.payload = kong_event_json
    else:
        msg.ack.SetInParent()
        msg.ack.success = bool(ack_success)
    return bytes(msg.SerializeToString(deterministic=True))
