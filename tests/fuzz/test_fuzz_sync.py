"""Fuzz: the Sync Agent interface — frames, the UsbMsg envelope, the outgoing gate, the
client's decode paths (a live device and a recorded session) and the device-info JSON.

Valid inputs are built at test time with the modules' own encoders; the recorded Rally Bar
session (``../shared/fixtures/usb-captures/logi-rally-bar-setup.json``) is read in place,
decoded and mutated in memory (tests needing it skip with the reason when it is absent).

Documented exceptions: frames → :class:`FrameError`; UsbMsg → :class:`ProtoError`; the gate →
:class:`ReadOnlyViolation`; recordings → :class:`ReplayError`; the client and
``read_device_info`` → :class:`SyncError` (any subclass); device JSON → :class:`DeviceInfoError`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import string
from collections import deque
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.sync import proto, read_device_info
from agent.collectors.sync.client import DeviceInfoReply, SyncClient
from agent.collectors.sync.device_info import (
    MAX_ATTRIBUTE_TEXT,
    MAX_DEVICES,
    MAX_JSON_CHARS,
    MAX_PERIPHERALS_PER_GROUP,
    load_document,
    parse_device_info,
)
from agent.collectors.sync.errors import (
    DeviceInfoError,
    FrameError,
    ProtoError,
    ReadOnlyViolation,
    ReplayError,
    SyncError,
    TransportTimeout,
)
from agent.collectors.sync.frames import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    SHORT_UNINIT_SIZE,
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
from agent.collectors.sync.guard import MAX_HEADER_TEXT, check_outgoing
from agent.collectors.sync.replay import ReplayTransport, load_recording, parse_recording
from agent.sanitize import MASK, is_secret_key
from tests.fuzz import (
    HOSTILE_JSON_TEXT,
    JSON_TREES,
    check_observation,
    fuzz,
    mutated,
    mutated_tree,
    nesting_bomb,
    strings_in,
)
from tests.shared import SHARED, missing, shared_file
from tests.sync_captures import FakeClock

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
U32 = st.integers(0, 0xFFFF_FFFF)
CAPTURE = ("fixtures", "usb-captures", "logi-rally-bar-setup.json")


# --------------------------------------------------------------------------- inputs


def _synthetic_document() -> dict[str, Any]:
    """A GetDeviceInfo document in the recorded shape (protocols.md), with catalog model
    codes: a bar, an attached camera device, peripherals with counts, status codes."""
    codes = sorted(c for p in load_catalog().products.values() for c in p.collabos_models)
    bar_code, cam_code = codes[0], codes[-1]
    return {
        "id": "6f1c",
        "ts": "2026-11-21T12:00:00Z",
        "type": 2,
        "payload": {
            "devices": [
                {
                    "model": bar_code,
                    "name": "Bar",
                    "serial": "2401AB12CD34",
                    "sw": "1.9.556",
                    "manifest": "1.9.556",
                    "osv": "12",
                    "av": "3.1",
                    "status": 1,
                    "updateStatus": 1,
                    "vid": "0x046d",
                    "pid": "0x089b",
                    "settings": {"wifiPassword": "hunter2"},
                    "peripherals": {
                        "micPod": {
                            "count": {"expected": 2, "actual": 1},
                            "data": [
                                {
                                    "name": "Rally Mic Pod",
                                    "uid": "2402MP000001",
                                    "sw": "2.1.3",
                                    "isOnline": True,
                                    "vid": "0x046d",
                                }
                            ],
                        },
                        "camera": {
                            "count": {"expected": 1, "actual": 1},
                            "data": [{"uid": "2403CAM00001", "name": "Sight", "status": 3}],
                        },
                        "tableHub": {"count": {"expected": 1, "actual": 0}, "data": []},
                    },
                },
                {
                    "model": cam_code,
                    "name": "Sight",
                    "serial": "2403CAM00001",
                    "sw": "1.2",
                    "status": 2,
                    "updateStatus": 8,
                },
            ]
        },
    }


SYNTHETIC = _synthetic_document()
ANSWER_JSON = json.dumps(SYNTHETIC)


@cache
def _recording_text() -> str:
    return shared_file(*CAPTURE).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def recording_doc() -> dict[str, Any]:
    """The recorded session as decoded JSON (skips when ../shared is absent)."""
    return json.loads(_recording_text())


@pytest.fixture(scope="module")
def recorded_transfers(recording_doc: dict[str, Any]) -> list[bytes]:
    """Every bulk transfer of the recording, host and device, as recorded."""
    recording = parse_recording(copy.deepcopy(recording_doc))
    ops = [*recording.preamble]
    for exchange in recording.exchanges:
        ops += [exchange.request_frame, *exchange.ops]
    return [op.data for op in ops if op.kind in ("read", "write") and op.data]


@pytest.fixture(scope="module")
def recorded_answer(recorded_transfers: list[bytes]) -> dict[str, Any]:
    """The recorded GetDeviceInfo document, decoded."""
    for data in recorded_transfers:
        try:
            message = proto.decode_usb_msg(decode_frame(data).payload)
        except SyncError:
            continue
        if message.is_device_info_response and message.json_payload:
            return dict(json.loads(message.json_payload))
    missing(
        f"the recording {SHARED.joinpath(*CAPTURE)} holds no GetDeviceInfo answer: a wrong shared fixture"
    )


def _payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.sampled_from([device_ack_payload(c) for c in Command]),
        st.sampled_from([host_ack_payload(c) for c in Command]),
        st.just(proto.encode_get_device_info_request()),
        st.text(max_size=64).map(lambda t: proto.encode_device_message(kong_event_json=t)),
        st.just(proto.encode_device_message(header_id="h", timestamp="1", device_info_json=ANSWER_JSON)),
        st.booleans().map(lambda b: proto.encode_device_message(ack_success=b)),
        st.binary(max_size=48),
    )


#: Frames built with the module's own encoder.
VALID_FRAMES = st.one_of(
    st.builds(encode_frame, st.sampled_from(list(Command)), U32, _payloads()),
    st.just(encode_short_uninit()),
)
FRAME_BYTES = st.one_of(st.binary(max_size=64), VALID_FRAMES, VALID_FRAMES.flatmap(lambda f: mutated(f)))


# --------------------------------------------------------------------------- frames


@fuzz(280)
@given(FRAME_BYTES)
@example(b"")
@example(encode_short_uninit())
@example(encode_frame(Command.ACK, 1, b"x")[:-1])
@example(b"\x06\xcc\x00\x00\x01\x00\x10\x00" + bytes(4))  # declares 1 MiB + 1
def test_decode_frame_gives_a_frame_or_a_frame_error(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        assert str(exc)
        return
    assert isinstance(frame.command, Command)
    assert len(frame.payload) <= MAX_PAYLOAD
    assert 0 <= frame.sequence_id <= 0xFFFF_FFFF
    if len(data) == SHORT_UNINIT_SIZE:
        assert frame == Frame(Command.UNINIT_BUFFER, 0)
    else:
        assert frame.encode() == data  # decoding loses nothing
    assert frame.describe()


@fuzz(210)
@given(FRAME_BYTES, st.integers(0, MAX_PAYLOAD + 10))
def test_declared_size_is_bounded_or_a_frame_error(data: bytes, cap: int) -> None:
    try:
        size = declared_size(data, max_payload=cap)
    except FrameError:
        return
    assert size == SHORT_UNINIT_SIZE or HEADER_SIZE <= size <= HEADER_SIZE + cap


@fuzz(210)
@given(
    st.one_of(
        st.binary(max_size=16),
        st.sampled_from([device_ack_payload(c) for c in Command]),
        U32.map(lambda n: str(n).encode()),
        st.integers(0, 10**12).map(lambda n: str(n).encode()),
        st.text(string.digits + "\x00 +-", max_size=14).map(str.encode),
    )
)
@example("٣".encode())  # a non-ASCII digit
@example(b"4294967296")
def test_acks_parse_to_a_u32_or_a_frame_error(payload: bytes) -> None:
    for parse in (parse_device_ack, parse_host_ack):
        try:
            value = parse(payload)
        except FrameError:
            continue
        assert 0 <= value <= 0xFFFF_FFFF


@fuzz(140)
@given(
    st.integers(-5, 0x1_0000_0000),
    st.integers(-5, 0x1_0000_0001),
    st.binary(max_size=80),
    st.integers(0, 100),
)
def test_encode_frame_refuses_what_a_header_cannot_carry(
    command: int, seq: int, payload: bytes, cap: int
) -> None:
    try:
        data = encode_frame(command, seq, payload, max_payload=cap)
    except FrameError:
        return
    assert decode_frame(data, max_payload=cap) == Frame(Command(command), seq, payload)


# --------------------------------------------------------------------------- UsbMsg


def _valid_messages() -> st.SearchStrategy[bytes]:
    text = st.text(max_size=40)
    return st.one_of(
        st.just(proto.encode_get_device_info_request()),
        st.builds(
            lambda i, t, j: proto.encode_device_message(header_id=i, timestamp=t, device_info_json=j),
            text,
            text,
            text,
        ),
        st.builds(lambda j: proto.encode_device_message(kong_event_json=j), text),
        st.builds(lambda b: proto.encode_device_message(ack_success=b), st.booleans()),
    )


#: Protobuf nesting bombs: unknown groups / length-delimited fields nested very deep.
PROTO_BOMBS = st.one_of(
    st.integers(1, 20_000).map(lambda n: b"\x0b" * n + b"\x0c" * n),  # field 1 start/end group
    st.integers(1, 20_000).map(lambda n: b"\x33" * n),  # field 6 start group, unclosed
    st.integers(1, 3_000).map(lambda n: _nested_ld(n)),
)


def _nested_ld(depth: int) -> bytes:
    """``depth`` levels of ``request`` (field 3, length-delimited) inside each other."""
    data = b""
    for _ in range(depth):
        data = b"\x1a" + _varint(len(data)) + data
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


USBMSG_BYTES = st.one_of(
    st.binary(max_size=200), _valid_messages(), _valid_messages().flatmap(lambda m: mutated(m)), PROTO_BOMBS
)


@fuzz(280)
@given(USBMSG_BYTES)
@example(b"\x0a\x02\x12\xff")  # header.timestamp with invalid UTF-8
@example(b"\x1a\x02\x12\x00\x22\x00")  # a request and a response at once
@example(_nested_ld(200))
def test_usb_msg_decodes_or_raises_proto_error(data: bytes) -> None:
    try:
        message = proto.decode_usb_msg(data)
    except ProtoError as exc:
        assert str(exc)
    else:
        assert message.body in proto.BODIES
        assert message.name
        assert message.json_payload is None or isinstance(message.json_payload, str)
    try:
        name = proto.request_name(data)
    except ProtoError:
        return
    assert isinstance(name, str) and name


@fuzz(100)
@given(st.text(max_size=200), st.text(max_size=40), st.text(max_size=40))
def test_device_messages_round_trip(json_text: str, header_id: str, timestamp: str) -> None:
    message = proto.decode_usb_msg(
        proto.encode_device_message(header_id=header_id, timestamp=timestamp, device_info_json=json_text)
    )
    assert message.is_device_info_response
    assert (message.json_payload, message.header_id, message.header_timestamp) == (
        json_text,
        header_id,
        timestamp,
    )


# --------------------------------------------------------------------------- the gate


def _host_frames() -> st.SearchStrategy[bytes]:
    """What the client legitimately sends, plus requests and answers it must never send."""
    return st.one_of(
        st.builds(
            encode_frame, st.just(Command.BUFFER_WRITE), U32, st.just(proto.encode_get_device_info_request())
        ),
        st.builds(encode_frame, st.just(Command.UNINIT_BUFFER), U32),
        st.builds(
            encode_frame,
            st.just(Command.ACK),
            U32,
            st.sampled_from([host_ack_payload(Command.BUFFER_READ), host_ack_payload(Command.UNINIT_BUFFER)]),
        ),
        st.builds(encode_frame, st.sampled_from(list(Command)), U32, USBMSG_BYTES),
    )


@fuzz(280)
@given(st.one_of(st.binary(max_size=64), _host_frames(), _host_frames().flatmap(lambda f: mutated(f))))
def test_gate_lets_through_only_the_read_only_exchange(data: bytes) -> None:
    try:
        frame = check_outgoing(data)
    except ReadOnlyViolation as exc:
        assert str(exc)
        return
    # What passed is one of the four frames of a GetDeviceInfo exchange, nothing else.
    if frame.command is Command.BUFFER_WRITE:
        assert proto.request_name(frame.payload) == "GetDeviceInfo"
        msg = proto.parse_usb_msg(frame.payload)
        assert len(msg.header.id) <= MAX_HEADER_TEXT and len(msg.header.timestamp) <= MAX_HEADER_TEXT
        assert not any(msg.HasField(b) for b in proto.BODIES if b != "request")
    elif frame.command is Command.UNINIT_BUFFER:
        assert frame.payload == b""
    else:
        assert frame.command is Command.ACK
        assert parse_host_ack(frame.payload) in (Command.BUFFER_READ, Command.UNINIT_BUFFER)


# --------------------------------------------------------------------------- the client


_ACTIONS = ["deliver"] * 8 + ["mutate", "drop", "timeout", "junk", "inject", "repeat", "swap"]
#: Anything but delivering the next transfer at once: the exchange may then fail (a slow
#: device runs out the deadline), and must fail only with a SyncError.
_TAMPERING = frozenset(_ACTIONS) - {"deliver"}


class FuzzDevice:
    """A device that answers GetDeviceInfo as the protocol says (recorded order: Ack, then
    Ack + BufferRead, then its UninitBuffer), and whose every transfer hypothesis may
    corrupt, drop, repeat, reorder, or precede with junk, unsolicited events, Nacks and
    Timeouts. Transfers longer than the host's buffer arrive in pieces, as USB delivers them.
    Every byte the client writes must pass the read-only gate."""

    #: Reads after which the device behaves (no more draws): keeps each example bounded.
    FUZZED_READS = 60
    MAX_READS = 2_000

    def __init__(self, data: st.DataObject, answer: bytes, clock: FakeClock) -> None:
        self.data = data
        self.answer = answer
        self.clock = clock
        self.queue: deque[bytes] = deque()
        self.leftover = b""
        self.reads = 0
        self.writes = 0
        self.last_seq = 0
        self.tampered = False

    def write(self, data: bytes, timeout: float) -> None:
        frame = check_outgoing(data)  # raises ReadOnlyViolation: a failure of the test
        self.writes += 1
        self.last_seq = frame.sequence_id
        if frame.command is Command.BUFFER_WRITE:
            self.queue.append(
                encode_frame(Command.ACK, frame.sequence_id, device_ack_payload(Command.BUFFER_WRITE))
            )
        elif frame.command is Command.UNINIT_BUFFER:
            self.queue.append(
                encode_frame(Command.ACK, frame.sequence_id, device_ack_payload(Command.UNINIT_BUFFER))
            )
            self.queue.append(encode_frame(Command.BUFFER_READ, 0, self.answer))
        elif frame.payload == host_ack_payload(Command.BUFFER_READ):
            self.queue.append(encode_short_uninit())

    def read(self, size: int, timeout: float) -> bytes:
        self.reads += 1
        if self.leftover:
            chunk, self.leftover = self.leftover[:size], self.leftover[size:]
            return chunk
        action = "deliver"
        if self.reads <= self.FUZZED_READS:
            action = self.data.draw(st.sampled_from(_ACTIONS), label="action")
        if action in _TAMPERING:
            self.tampered = True
        if (
            self.reads > self.MAX_READS
            or action == "timeout"
            or (action in ("deliver", "mutate", "drop", "repeat", "swap") and not self.queue)
        ):
            self.clock.advance(timeout)
            raise TransportTimeout("fuzz: nothing to send")
        if action == "drop":
            self.queue.popleft()
            self.clock.advance(timeout)
            raise TransportTimeout("fuzz: dropped")
        if action == "swap" and len(self.queue) > 1:
            self.queue[0], self.queue[1] = self.queue[1], self.queue[0]
        if action == "junk":
            data = self.data.draw(
                st.binary(max_size=40) | VALID_FRAMES.flatmap(lambda f: mutated(f)), label="junk"
            )
        elif action == "inject":
            data = self.data.draw(self._unsolicited(), label="inject")
        elif action == "repeat":
            data = self.queue[0]
        else:
            data = self.queue.popleft()
            if action == "mutate":
                data = self.data.draw(mutated(data), label="mutated")
        chunk, self.leftover = data[:size], data[size:]
        return chunk

    def _unsolicited(self) -> st.SearchStrategy[bytes]:
        seqs = st.sampled_from([0, self.last_seq, self.last_seq + 1, 0xFFFF_FFFF])
        return st.one_of(
            st.builds(
                lambda s: encode_frame(
                    Command.BUFFER_READ,
                    s,
                    proto.encode_device_message(header_id="evt", kong_event_json='{"type":3}'),
                ),
                seqs,
            ),
            st.builds(
                lambda c, s: encode_frame(c, s), st.sampled_from([Command.NACK, Command.TIMEOUT]), seqs
            ),
            st.builds(
                lambda s, p: encode_frame(Command.ACK, s, p),
                seqs,
                st.sampled_from([device_ack_payload(c) for c in Command]),
            ),
            st.just(encode_short_uninit()),
            st.builds(
                lambda s: encode_frame(Command.BUFFER_WRITE, s, proto.encode_get_device_info_request()), seqs
            ),
            st.builds(lambda p: encode_frame(Command.BUFFER_READ, 0, p), USBMSG_BYTES),
        )


@fuzz(180, deadline=timedelta(seconds=5))
@given(st.data(), st.sampled_from([64, 200, 1024, 8192]))
def test_client_ends_in_a_reply_or_a_sync_error(data: st.DataObject, read_size: int) -> None:
    clock = FakeClock()
    answer = proto.encode_device_message(header_id="h", timestamp="t", device_info_json=ANSWER_JSON)
    device = FuzzDevice(data, answer, clock)
    client = SyncClient(device, clock=clock, read_size=read_size, deadline=10.0)
    try:
        reply = client.get_device_info()
    except SyncError as exc:
        assert str(exc)
        assert device.tampered, f"a well-behaved device was not read: {exc}"
    else:
        assert isinstance(reply, DeviceInfoReply)
        assert 1 <= reply.attempts <= client.attempts
        assert reply.seconds <= client.deadline + client.read_timeout
        if not device.tampered:
            assert reply.json_text == ANSWER_JSON
    assert clock.now - 1000.0 <= client.deadline + client.read_timeout


@fuzz(70, deadline=timedelta(seconds=5))
@given(st.data())
def test_read_device_info_gives_an_observation_or_a_sync_error(data: st.DataObject) -> None:
    """The whole path a bar's answer takes: frames, UsbMsg, JSON, observations — with the
    answer's JSON itself fuzzed too."""
    document = data.draw(
        st.one_of(
            st.just(ANSWER_JSON),
            mutated_tree(SYNTHETIC).map(json.dumps),
            JSON_TREES.map(json.dumps),
            st.text(max_size=100),
        ),
        label="json",
    )
    clock = FakeClock()
    device = FuzzDevice(data, proto.encode_device_message(device_info_json=document), clock)
    try:
        obs = read_device_info(device, address="2-1.1", now=NOW, clock=clock)
    except SyncError:
        return
    check_observation(obs)
    assert obs.attributes["sync_exchange"]["attempts"] >= 1


# --------------------------------------------------------------------------- recordings


def _base64(text: Any) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except ValueError:
        return None


def _replay(recording: Any) -> None:
    """Play a recording to the client: a reply or a SyncError, in bounded simulated time."""
    clock = FakeClock()
    client = SyncClient(ReplayTransport(recording, on_timeout=clock.advance), clock=clock)
    try:
        reply = client.get_device_info()
    except SyncError:
        pass
    else:
        with contextlib.suppress(DeviceInfoError):
            check_observation(parse_device_info(reply.json_text, address="r", now=NOW))
    assert clock.now - 1000.0 <= client.deadline + client.read_timeout


@fuzz(60, deadline=timedelta(seconds=5))
@given(st.data())
def test_mutated_recording_parses_or_raises_replay_error(
    recording_doc: dict[str, Any], data: st.DataObject
) -> None:
    doc = data.draw(st.one_of(mutated_tree(recording_doc, max_steps=6), JSON_TREES), label="doc")
    try:
        recording = parse_recording(doc, source="fuzzed")
    except ReplayError as exc:
        assert str(exc)
        return
    _replay(recording)


@fuzz(100, deadline=timedelta(seconds=5))
@given(st.data())
def test_recorded_transfers_mutated_in_place_replay_to_a_reply_or_a_sync_error(
    recording_doc: dict[str, Any], data: st.DataObject
) -> None:
    doc = copy.deepcopy(recording_doc)
    events = doc["UsbDevices"][0]["UsbEvents"]
    with_data = [i for i, ev in enumerate(events) if _base64(ev.get("Data")) is not None]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        i = data.draw(st.sampled_from(with_data), label="event")
        raw = _base64(events[i]["Data"]) or b""
        events[i]["Data"] = base64.b64encode(data.draw(mutated(raw), label="bytes")).decode()
    try:
        recording = parse_recording(doc, source="fuzzed")
    except ReplayError:
        return
    _replay(recording)


@fuzz(100)
@given(
    st.one_of(
        st.binary(max_size=300),
        HOSTILE_JSON_TEXT.map(str.encode),
        JSON_TREES.map(lambda t: json.dumps(t).encode()),
        JSON_TREES.map(lambda t: json.dumps({"UsbDevices": [t]}).encode()),
    )
)
@example(b'{"UsbDevices": [{"UsbInterfaces": 5}]}')  # was a TypeError
@example(b'{"UsbDevices": [{"UsbInterfaces": [{"UsbEndpoints": 7}]}]}')  # was a TypeError
@example(b'{"UsbDevices": [{"UsbInterfaces": "abc"}]}')
def test_recording_files_load_or_raise_replay_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "fuzzed-recording.json"
    path.write_bytes(content)
    try:
        load_recording(path)
    except ReplayError as exc:
        assert str(exc)


def test_recorded_transfers_are_there(recorded_transfers: list[bytes]) -> None:
    """The seeds of the mutation tests decode as they should (guards the fixture)."""
    assert len(recorded_transfers) > 20
    assert all(decode_frame(t) for t in recorded_transfers)


@fuzz(140)
@given(st.data())
def test_recorded_transfers_mutated(recorded_transfers: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(recorded_transfers), label="seed")
    transfer = data.draw(mutated(seed, max_steps=6), label="transfer")
    try:
        frame = decode_frame(transfer)
    except FrameError:
        return
    with contextlib.suppress(ReadOnlyViolation):
        check_outgoing(transfer)
    with contextlib.suppress(ProtoError):
        proto.decode_usb_msg(frame.payload)


# --------------------------------------------------------------------------- device-info JSON


def _check_device_info(obs: Any) -> None:
    check_observation(obs)
    assert len(obs.children) <= (MAX_DEVICES - 1) + MAX_DEVICES * 8 * MAX_PERIPHERALS_PER_GROUP
    for unit in (obs, *obs.children):
        for value in (unit.serial, unit.model, unit.firmware, *unit.components.values()):
            assert value is None or len(value) <= 128
        for text in strings_in(unit.attributes):
            assert len(text) <= max(MAX_ATTRIBUTE_TEXT, len(MASK)), text[:40]
        _check_secrets(unit.attributes)


def _check_secrets(tree: Any) -> None:
    """A value under a key that names a secret is masked, whatever the device sent."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if is_secret_key(key):
                assert value in (MASK, None, ""), (key, value)
            else:
                _check_secrets(value)
    elif isinstance(tree, list):
        for value in tree:
            _check_secrets(value)


def _documents() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        mutated_tree(SYNTHETIC, max_steps=5).map(json.dumps),
        JSON_TREES.map(json.dumps),
        JSON_TREES.map(lambda t: json.dumps({"payload": {"devices": [t]}})),
        JSON_TREES.map(lambda t: json.dumps({"payload": {"devices": [{"model": "x", "peripherals": t}]}})),
        HOSTILE_JSON_TEXT,
        st.text(max_size=200),
        st.binary(max_size=200),
        mutated(ANSWER_JSON.encode()),
        # Wide instead of deep: many devices, many peripherals, long strings.
        st.integers(0, 5_000).map(
            lambda n: json.dumps(
                {"payload": {"devices": [{"serial": f"S{i:08d}", "model": "x"} for i in range(n)]}}
            )
        ),
        st.integers(0, MAX_JSON_CHARS).map(
            lambda n: json.dumps(
                {
                    "payload": {
                        "devices": [
                            {"serial": "1" * n, "name": "\x00" * (n // 2), "attr": "\u202e" * (n // 4)}
                        ]
                    }
                }
            )
        ),
        nesting_bomb(st.integers(25, 40)).map(lambda bomb: '{"payload": {"devices": [{"x": ' + bomb + "}]}}"),
    )


@fuzz(180, deadline=timedelta(seconds=5))
@given(_documents())
@example('{"payload": {"devices": [{}]}}')
@example(
    '{"payload": {"devices": [{"serial": 5, "peripherals": '
    '{"a": {"count": {"expected": true, "actual": -1}}}}]}}'
)
@example('{"payload": {"devices": [{"status": 1e999, "x": NaN}]}}')
@example("[" * 3_000)
@example("1" * 5_000)
def test_device_info_parses_or_raises_device_info_error(document: str | bytes) -> None:
    try:
        obs = parse_device_info(document, address="2-1.1", now=NOW)
    except DeviceInfoError as exc:
        assert str(exc)
        return
    _check_device_info(obs)


@fuzz(70, deadline=timedelta(seconds=5))
@given(st.data())
def test_recorded_answer_mutated_parses_or_raises_device_info_error(
    recorded_answer: dict[str, Any], data: st.DataObject
) -> None:
    doc = data.draw(mutated_tree(recorded_answer, max_steps=6), label="doc")
    try:
        obs = parse_device_info(json.dumps(doc), address="2-1.1", now=NOW)
    except DeviceInfoError:
        return
    _check_device_info(obs)


@fuzz(70)
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.lists(st.integers()),
        st.binary(max_size=20),
        st.text(max_size=20),
    )
)
def test_load_document_refuses_wrong_types_with_device_info_error(value: Any) -> None:
    try:
        doc = load_document(value)
    except DeviceInfoError:
        return
    assert isinstance(doc, dict)
