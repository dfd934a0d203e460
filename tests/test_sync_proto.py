"""The UsbMsg envelope: schema built in code, verified against the recorded bytes."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf import descriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.sync import proto
from agent.collectors.sync.errors import ProtoError
from agent.collectors.sync.frames import decode_frame
from tests.sync_captures import Capture

FUZZ = settings(max_examples=200, deadline=None)
FD = descriptor.FieldDescriptor


def fields(message_class) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message_class.DESCRIPTOR.fields}


def test_schema_field_numbers_and_types() -> None:
    msg = FD.TYPE_MESSAGE
    assert fields(proto.UsbMsg) == {
        "header": (1, msg),
        "ack": (2, msg),
        "request": (3, msg),
        "response": (4, msg),
        "event": (5, msg),
    }
    assert fields(proto.Header) == {"id": (1, FD.TYPE_STRING), "timestamp": (2, FD.TYPE_STRING)}
    assert fields(proto.Acknowledge) == {"msg_id": (1, FD.TYPE_STRING), "success": (2, FD.TYPE_BOOL)}
    assert fields(proto.Request) == {"get_device_info": (2, msg)}  # and nothing else
    assert fields(proto.GetDeviceInfoRequest) == {}
    assert fields(proto.Response) == {"get_device_info": (2, msg)}
    assert fields(proto.GetDeviceInfoResponse) == {"payload": (1, FD.TYPE_STRING)}
    assert fields(proto.Event) == {"kong_event": (1, msg)}
    assert fields(proto.KongEvent) == {"payload": (1, FD.TYPE_STRING)}


def test_our_request_is_the_recorded_request_byte_for_byte() -> None:
    recorded = decode_frame(Capture().data(36)).payload
    assert recorded == bytes.fromhex("0a03120130 1a021200")
    assert proto.encode_get_device_info_request() == recorded


def test_recorded_messages_decode_to_what_they_are() -> None:
    capture = Capture()
    decoded = {
        i: proto.decode_usb_msg(decode_frame(capture.data(i)).payload) for i in (15, 23, 28, 31, 36, 40)
    }
    assert {i: m.name for i, m in decoded.items()} == {
        15: "TransitionToDeviceMode request",
        23: "TransitionToDeviceMode response",
        28: "SetDeviceTime request",
        31: "acknowledge",
        36: "GetDeviceInfo request",
        40: "GetDeviceInfo response",
    }
    assert decoded[36].header_timestamp == "0" and decoded[36].header_id == ""
    answer = decoded[40]
    assert answer.is_device_info_response
    assert answer.header_id == "d23a7a46-b6ea-49c2-8e10-de9518b8ceef"
    assert answer.header_timestamp == "2024-11-13T10:32:05.281Z"
    assert answer.json_payload is not None and answer.json_payload.startswith('{"id":"0ad0685d')
    assert len(answer.json_payload) == 2942
    assert decoded[31].ack_success is True
    assert not decoded[23].is_device_info_response  # field 5: another request's answer
    assert proto.request_name(decode_frame(capture.data(28)).payload) == "SetDeviceTime"


def test_device_messages_round_trip() -> None:
    for kwargs, name in [
        ({"device_info_json": "{}"}, "GetDeviceInfo response"),
        ({"kong_event_json": ""}, "KongEvent event"),
        ({"ack_success": False}, "acknowledge"),
    ]:
        decoded = proto.decode_usb_msg(proto.encode_device_message(header_id="h", **kwargs))
        assert (decoded.name, decoded.header_id) == (name, "h")
    with pytest.raises(ProtoError, match="exactly one"):
        proto.encode_device_message(device_info_json="{}", ack_success=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xff\xff", "not a UsbMsg"),
        (b"\x0a\x05\x0a\x03", "not a UsbMsg"),  # length past the end
        (bytes.fromhex("22 05 12 03 0a 01 ff"), "not a UsbMsg"),  # JSON string that is not UTF-8
        (b"", "carries no"),
        (bytes.fromhex("0a 03 12 01 30"), "carries no"),  # a header alone
        (bytes.fromhex("12 00 1a 02 12 00"), "several bodies"),
    ],
)
def test_garbage_gives_a_clear_proto_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtoError, match=message):
        proto.decode_usb_msg(data)


def test_unknown_request_is_named_by_its_field_number() -> None:
    assert proto.decode_usb_msg(bytes.fromhex("1a 02 3a 00")).name == "request field 7"
    assert proto.decode_usb_msg(bytes.fromhex("1a 00")).name == "empty request"
    with pytest.raises(ProtoError, match="must carry a request"):
        proto.request_name(proto.encode_device_message(ack_success=True))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_decoder_raises_only_proto_error(data: bytes) -> None:
    try:
        message = proto.decode_usb_msg(data)
    except ProtoError:
        return
    assert message.body in proto.BODIES


@FUZZ
@given(st.data())
def test_fuzz_mutated_recorded_answer_raises_only_proto_error(data: st.DataObject) -> None:
    payload = bytearray(decode_frame(Capture().data(40)).payload)
    for _ in range(data.draw(st.integers(1, 8))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    with contextlib.suppress(ProtoError):
        proto.decode_usb_msg(bytes(payload[:cut]))
