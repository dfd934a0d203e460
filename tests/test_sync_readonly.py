"""The read-only guarantee: nothing but the GetDeviceInfo exchange can leave the process.

The proof has three parts: the schema cannot express another request; the gate refuses
every other frame, including the state-changing requests recorded from a real session
(TransitionToDeviceMode, SetDeviceTime) replayed byte for byte and hand-crafted variants;
and every write path (SyncClient, PyUsbTransport, ReplayTransport) goes through the gate
before its transport or libusb sees a byte.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.sync import proto
from agent.collectors.sync.client import SyncClient
from agent.collectors.sync.errors import ReadOnlyViolation
from agent.collectors.sync.frames import (
    Command,
    decode_frame,
    encode_frame,
    host_ack_payload,
)
from agent.collectors.sync.guard import check_outgoing
from agent.collectors.sync.pyusb_transport import PyUsbTransport
from agent.collectors.sync.replay import ReplayTransport
from tests.sync_captures import Capture

FUZZ = settings(max_examples=200, deadline=None)
GDI = proto.encode_get_device_info_request()


def buffer_write(payload: bytes, seq: int = 1) -> bytes:
    return encode_frame(Command.BUFFER_WRITE, seq, payload)


def test_the_request_schema_knows_only_get_device_info() -> None:
    assert [f.number for f in proto.Request.DESCRIPTOR.fields] == [proto.GET_DEVICE_INFO]
    request = proto.Request()
    for name in ("transition_to_device_mode", "set_device_time", "reboot"):
        with pytest.raises(AttributeError):
            getattr(request, name).SetInParent()


def test_the_frames_our_client_sends_pass_the_gate() -> None:
    for data in (
        buffer_write(GDI),
        encode_frame(Command.UNINIT_BUFFER, 2),
        encode_frame(Command.ACK, 3, host_ack_payload(Command.BUFFER_READ)),
        encode_frame(Command.ACK, 4, host_ack_payload(Command.UNINIT_BUFFER)),
    ):
        assert check_outgoing(data) == decode_frame(data)


@pytest.mark.parametrize(
    ("event", "name"), [(15, "TransitionToDeviceMode"), (20, "TransitionToDeviceMode"), (28, "SetDeviceTime")]
)
def test_recorded_state_changing_requests_are_refused_byte_for_byte(event: int, name: str) -> None:
    data = Capture().data(event)
    with pytest.raises(ReadOnlyViolation, match=f"refused to send a {name} request"):
        check_outgoing(data)


def _msg(**parts: bytes) -> bytes:
    """A UsbMsg assembled by hand from raw field bytes (no schema involved)."""
    return b"".join(parts.values())


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        # GetDeviceInfo plus a smuggled TransitionToDeviceMode (field 5) in the same request
        (
            _msg(h=bytes.fromhex("0a03120130"), r=bytes.fromhex("1a04 1200 2a00")),
            "request field 5 = TransitionToDeviceMode",
        ),
        # SetDeviceTime alone, as hand-crafted bytes (request field 10)
        (_msg(h=bytes.fromhex("0a03120130"), r=bytes.fromhex("1a04 5202 1000")), "SetDeviceTime"),
        # an unknown request number
        (bytes.fromhex("1a02 3a00"), "request field 7"),
        # GetDeviceInfo with an unknown field inside it
        (bytes.fromhex("1a04 1202 0801"), r"extra or reordered fields \(GetDeviceInfo field 1\)"),
        # GetDeviceInfo plus an unknown top-level field
        (bytes.fromhex("1a02 1200 3000"), r"extra or reordered fields \(UsbMsg field 6\)"),
        # GetDeviceInfo plus a response body
        (bytes.fromhex("1a02 1200 2200"), "several bodies at once: request, response"),
        # answers and events are the device's to send
        (proto.encode_device_message(device_info_json="{}"), "carries GetDeviceInfo response"),
        (proto.encode_device_message(kong_event_json="{}"), "carries KongEvent event"),
        (proto.encode_device_message(ack_success=True), "carries acknowledge"),
        (b"\xff\xff", "not a UsbMsg"),
        (GDI + b"\x00", "not a UsbMsg"),
        (b"", "carries no acknowledge, request"),
    ],
)
def test_hand_crafted_buffer_writes_are_refused(payload: bytes, why: str) -> None:
    with pytest.raises(ReadOnlyViolation, match=why):
        check_outgoing(buffer_write(payload))


@pytest.mark.parametrize(
    "data",
    [
        encode_frame(Command.BUFFER_READ, 0, GDI),
        encode_frame(Command.NACK, 1),
        encode_frame(Command.TIMEOUT, 1),
        encode_frame(Command.UNINIT_BUFFER, 1, b"\x00"),
        encode_frame(Command.ACK, 1, b"52231"),
        encode_frame(Command.ACK, 1, host_ack_payload(Command.BUFFER_WRITE)),
        encode_frame(Command.ACK, 1, b""),
        struct.pack("<II", Command.UNINIT_BUFFER, 0),  # the device's 8-byte form
        buffer_write(GDI)[:-1],
        buffer_write(GDI) + b"\x00",
        struct.pack("<III", 0xCC05, 0, 1),  # firmware-update Uninit
    ],
)
def test_other_frames_are_refused(data: bytes) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_outgoing(data)


def test_oversized_header_text_is_refused() -> None:
    msg = proto.UsbMsg()
    msg.header.id = "x" * 65
    msg.request.get_device_info.SetInParent()
    with pytest.raises(ReadOnlyViolation, match="oversized header"):
        check_outgoing(buffer_write(msg.SerializeToString()))


# --------------------------------------------------------------------------- every write path


class SpyTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes, timeout: float) -> None:
        self.written.append(data)

    def read(self, size: int, timeout: float) -> bytes:
        raise AssertionError("not reached")


def test_sync_client_refuses_before_the_transport_sees_anything() -> None:
    spy = SpyTransport()
    client = SyncClient(spy)
    set_time = decode_frame(Capture().data(28)).payload
    with pytest.raises(ReadOnlyViolation, match="SetDeviceTime"):
        client._send(Command.BUFFER_WRITE, set_time, deadline_at=float("inf"))
    with pytest.raises(ReadOnlyViolation):
        client._send(Command.BUFFER_READ, GDI, deadline_at=float("inf"))
    assert spy.written == []


class FakeUsbDevice:
    """Just enough of a pyusb device for PyUsbTransport: one Sync interface; records writes."""

    class _Ep:
        def __init__(self, address: int) -> None:
            self.bEndpointAddress, self.bmAttributes = address, 0x02

    class _Intf(list):
        bInterfaceNumber, bAlternateSetting = 3, 0
        bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol = 0xFF, 118, 1

    def __init__(self) -> None:
        self.written: list[tuple[int, bytes]] = []
        self.calls: list[str] = []

    def get_active_configuration(self) -> list[Any]:
        return [self._Intf([self._Ep(0x02), self._Ep(0x84)])]

    def write(self, endpoint: int, data: bytes, timeout: int) -> int:
        self.written.append((endpoint, bytes(data)))
        return len(data)


def test_pyusb_transport_refuses_before_libusb_sees_anything() -> None:
    device = FakeUsbDevice()
    transport = PyUsbTransport(device)
    transport._claimed = True  # as if open(): the gate must hold on an open transport
    for event in (15, 28):
        with pytest.raises(ReadOnlyViolation):
            transport.write(Capture().data(event), 1.0)
    assert device.written == []
    transport.write(buffer_write(GDI), 1.0)
    assert device.written == [(0x02, buffer_write(GDI))]


def test_replay_transport_refuses_even_what_its_recording_could_answer() -> None:
    capture = Capture()
    replay = ReplayTransport(capture.recording())
    assert "SetDeviceTime" in replay.recording.requests
    with pytest.raises(ReadOnlyViolation, match="SetDeviceTime"):
        replay.write(capture.data(28), 1.0)
    assert replay.log == []


@FUZZ
@given(st.binary(max_size=40), st.integers(0, 5))
def test_fuzz_whatever_passes_the_gate_is_part_of_the_read_only_exchange(blob: bytes, shape: int) -> None:
    # Half raw bytes, half frames around fuzzed payloads, so the BufferWrite branch is hit.
    data = (
        blob
        if shape == 0
        else encode_frame(
            [Command.BUFFER_WRITE, Command.ACK, Command.UNINIT_BUFFER, Command.BUFFER_READ, Command.NACK][
                shape - 1
            ],
            7,
            blob,
        )
    )
    try:
        frame = check_outgoing(data)
    except ReadOnlyViolation:
        return
    assert frame.command in (Command.BUFFER_WRITE, Command.ACK, Command.UNINIT_BUFFER)
    if frame.command is Command.BUFFER_WRITE:
        message = proto.decode_usb_msg(frame.payload)
        assert message.body == "request" and message.field == proto.GET_DEVICE_INFO
        assert proto.parse_usb_msg(frame.payload).request.ListFields()[0][0].number == 2
    elif frame.command is Command.ACK:
        assert frame.payload in (
            host_ack_payload(Command.BUFFER_READ),
            host_ack_payload(Command.UNINIT_BUFFER),
        )
    else:
        assert frame.payload == b""


@FUZZ
@given(st.integers(1, 536_870_911).filter(lambda n: n != 2), st.binary(max_size=8))
def test_fuzz_any_other_request_field_is_refused(number: int, body: bytes) -> None:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    inner = varint(number << 3 | 2) + varint(len(body)) + body
    payload = b"\x1a" + varint(len(inner)) + inner
    with pytest.raises(ReadOnlyViolation):
        check_outgoing(buffer_write(payload))
