"""Sync frames: the 12-byte header, checked against every transfer of the recording."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.sync.errors import FrameError
from agent.collectors.sync.frames import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Command,
    Frame,
    declared_size,
    decode_frame,
    device_ack_payload,
    encode_frame,
    encode_short_uninit,
    host_ack_payload,
    parse_device_ack,
    parse_host_ack,
)
from tests.sync_captures import Capture

FUZZ = settings(max_examples=200, deadline=None)


def test_command_values_are_the_protocol_s() -> None:
    assert {c.label: int(c) for c in Command} == {
        "BufferRead": 0xCC06,
        "BufferWrite": 0xCC07,
        "UninitBuffer": 0xCC08,
        "Ack": 0xFF01,
        "Timeout": 0xFF02,
        "Nack": 0xFF03,
    }


def test_every_recorded_transfer_decodes_and_re_encodes_byte_for_byte() -> None:
    capture = Capture()
    recorded = {i: capture.data(i) for i in range(15, 44) if "Data" in capture.events[i]}
    assert len(recorded) == 28  # events 15–43 minus the read timeout at 19
    for i, data in recorded.items():
        frame = decode_frame(data)
        if len(data) == 8:
            assert frame == Frame(Command.UNINIT_BUFFER, 0), i
            assert encode_short_uninit() == data
        else:
            assert frame.encode() == data, i


def test_recorded_get_device_info_exchange_frames() -> None:
    capture = Capture()
    frames = [decode_frame(capture.data(i)) for i in range(36, 44)]
    assert [(f.command, f.sequence_id) for f in frames] == [
        (Command.BUFFER_WRITE, 11),
        (Command.ACK, 11),
        (Command.UNINIT_BUFFER, 12),
        (Command.ACK, 12),
        (Command.BUFFER_READ, 0),
        (Command.ACK, 13),
        (Command.UNINIT_BUFFER, 0),
        (Command.ACK, 14),
    ]
    assert len(frames[4].payload) == 3017
    # Acks differ by direction: ASCII decimal from the device, u32le from the host.
    assert frames[1].payload == b"52231" == device_ack_payload(Command.BUFFER_WRITE)
    assert frames[3].payload == b"52232" == device_ack_payload(Command.UNINIT_BUFFER)
    assert frames[5].payload == b"\x06\xcc\x00\x00" == host_ack_payload(Command.BUFFER_READ)
    assert frames[7].payload == b"\x08\xcc\x00\x00" == host_ack_payload(Command.UNINIT_BUFFER)
    assert parse_device_ack(frames[1].payload) == Command.BUFFER_WRITE
    assert parse_host_ack(frames[7].payload) == Command.UNINIT_BUFFER


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated frame: 0 bytes"),
        (b"\x07\xcc\x00\x00\x09\x00", "truncated frame: 6 bytes"),
        (struct.pack("<III", 0xCC07, 9, 1) + b"\x0a\x03", "header declares 9 payload bytes, 2 arrived"),
        (struct.pack("<III", 0xCC07, 0, 1) + b"xx", "2 bytes after its declared 0-byte payload"),
        (struct.pack("<III", 0x1234, 0, 1), "unknown command 0x1234"),
        (struct.pack("<III", 0xCC06, MAX_PAYLOAD + 1, 0), "over the cap"),
        (struct.pack("<II", 0xCC06, 0), "truncated frame: 8 bytes"),  # only UninitBuffer may be short
        (struct.pack("<II", 0xCC08, 4), "truncated frame: 8 bytes"),
    ],
)
def test_malformed_frames_raise_frame_error(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message.replace("(", r"\(")):
        decode_frame(data)


def test_declared_size_for_reassembly() -> None:
    head = struct.pack("<III", 0xCC06, 3017, 0)
    assert declared_size(head) == HEADER_SIZE + 3017
    assert declared_size(encode_short_uninit()) == 8
    with pytest.raises(FrameError):
        declared_size(head[:11])


def test_encode_refuses_what_the_header_cannot_carry() -> None:
    with pytest.raises(FrameError, match="unknown command"):
        encode_frame(0x1234, 1)
    with pytest.raises(FrameError, match="u32"):
        encode_frame(Command.ACK, 1 << 32)
    with pytest.raises(FrameError, match="cap"):
        encode_frame(Command.BUFFER_WRITE, 1, bytes(17), max_payload=16)


@pytest.mark.parametrize("payload", [b"", b"5223x", b"12345678901", b"99999999999", b"-1"])
def test_bad_device_ack_payloads(payload: bytes) -> None:
    with pytest.raises(FrameError):
        parse_device_ack(payload)


def test_device_ack_tolerates_nul_padding_but_host_ack_must_be_four_bytes() -> None:
    assert parse_device_ack(b"52232\x00") == 0xCC08
    with pytest.raises(FrameError, match="4-byte"):
        parse_host_ack(b"\x06\xcc\x00")


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_decode_raises_only_frame_error(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except FrameError:
        return
    assert frame.command in set(Command)
    assert len(data) in (8, HEADER_SIZE + len(frame.payload))


@FUZZ
@given(
    st.sampled_from(list(Command)), st.integers(0, 0xFFFF_FFFF), st.binary(max_size=300), st.integers(1, 40)
)
def test_fuzz_round_trip_and_every_truncation_is_an_error(
    command: Command, seq: int, payload: bytes, cut: int
) -> None:
    data = encode_frame(command, seq, payload)
    assert decode_frame(data) == Frame(command, seq, payload)
    short = data[: -min(cut, len(data))]
    if len(short) == 8 and command is Command.UNINIT_BUFFER and not payload:
        return  # the recorded 8-byte form of the device's UninitBuffer
    with pytest.raises(FrameError):
        decode_frame(short)
    with pytest.raises(FrameError):
        decode_frame(data + b"\x00")


@FUZZ
@given(st.binary(max_size=16))
def test_fuzz_device_ack_parser_raises_only_frame_error(payload: bytes) -> None:
    try:
        value = parse_device_ack(payload)
    except FrameError:
        return
    assert 0 <= value <= 0xFFFF_FFFF
