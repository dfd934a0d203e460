"""SyncClient against the recorded Rally Bar and against variants derived from it.

Every test replays the real recording through ReplayTransport; variants are the recording
decoded, changed and re-encoded at test time (tests/sync_captures.py). Time is simulated: a
replayed timeout advances a fake clock by the read's full timeout, so deadline tests are
exact and instant.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.sync import proto
from agent.collectors.sync.client import SyncClient
from agent.collectors.sync.errors import (
    FrameError,
    ReplayError,
    SyncError,
    SyncProtocolError,
    SyncTimeout,
    TransportTimeout,
)
from agent.collectors.sync.frames import (
    Command,
    decode_frame,
    device_ack_payload,
    encode_frame,
    encode_short_uninit,
)
from agent.collectors.sync.guard import check_outgoing
from agent.collectors.sync.replay import ReplayTransport
from tests.sync_captures import (
    GDI_ACK,
    GDI_RESPONSE,
    GDI_UNINIT_ACK,
    GDI_WRITE,
    Capture,
    FakeClock,
    device_ack,
    kong_event_block,
    read_event,
    timeout_event,
    unanswered_gdi,
)


def run(capture: Capture, **options: object):
    clock = FakeClock()
    transport = ReplayTransport(capture.recording(), on_timeout=clock.advance)
    client = SyncClient(transport, clock=clock, **options)  # type: ignore[arg-type]
    return client, transport, clock


def frames(transport: ReplayTransport) -> list[tuple[str, str, int, bytes]]:
    out = []
    for direction, data in transport.log:
        if direction == "timeout":
            out.append(("timeout", "", 0, b""))
        else:
            f = decode_frame(data)
            out.append((direction, f.command.label, f.sequence_id, f.payload))
    return out


# --------------------------------------------------------------------------- the recording


def test_recorded_rally_bar_answers_get_device_info() -> None:
    client, transport, _ = run(Capture())
    reply = client.get_device_info()
    document = json.loads(reply.json_text)
    bar, sight = document["payload"]["devices"]
    assert (bar["serial"], bar["model"], bar["sw"]) == ("2313FD1N08Z2", "VR0019", "1.9.556")
    assert (sight["serial"], sight["model"]) == ("2325LZ51XY58", "VU0067")
    assert bar["peripherals"]["micPod"]["data"][0]["sw"] == "2.1.3"
    assert reply.header_id == "d23a7a46-b6ea-49c2-8e10-de9518b8ceef"  # the GDI answer's
    assert (reply.attempts, reply.read_timeouts, reply.unsolicited, reply.closed) == (1, 0, 0, True)
    assert transport.finished


def test_client_reproduces_the_recorded_exchange_frame_for_frame() -> None:
    """Same frames, same order, same payloads as the recorded host (events 36–43); sequence
    ids consecutive from our first one, as the recorded host's were (11, 12, 13, 14)."""
    capture = Capture()
    recorded = []
    for i in range(36, 44):
        f = decode_frame(capture.data(i))
        host = i in (36, 38, 41, 43)
        recorded.append(
            (
                "host" if host else "device",
                f.command.label,
                f.sequence_id - 10 if (host or f.command is Command.ACK) else 0,
                f.payload,
            )
        )
    client, transport, _ = run(capture)
    client.get_device_info()
    assert frames(transport) == recorded


def test_response_before_the_uninit_ack_is_acknowledged_after_it() -> None:
    # The recorded TransitionToDeviceMode answer (events 23/24) came before Ack("52232");
    # the host still acked the BufferRead only after that Ack. Same order for GetDeviceInfo.
    capture = Capture()
    e = capture.events
    e[GDI_UNINIT_ACK], e[GDI_RESPONSE] = e[GDI_RESPONSE], e[GDI_UNINIT_ACK]
    client, transport, _ = run(capture)
    assert client.get_device_info().closed
    labels = [(d, c) for d, c, _, _ in frames(transport)]
    assert labels[3:6] == [("device", "BufferRead"), ("device", "Ack"), ("host", "Ack")]


def test_other_serials_come_through() -> None:
    capture = Capture()
    document = capture.device_info()
    document["payload"]["devices"][0]["serial"] = "2402AB1C23D4"
    capture.set_device_info(document)
    client, _, _ = run(capture)
    assert json.loads(client.get_device_info().json_text)["payload"]["devices"][0]["serial"] == "2402AB1C23D4"


def test_a_response_split_over_several_transfers_is_reassembled() -> None:
    # 3,029 bytes read 1,024 at a time: three transfers, the first two full.
    client, transport, _ = run(Capture(), read_size=1024)
    reply = client.get_device_info()
    assert len(reply.json_text) == 2942
    sizes = [len(data) for d, data in transport.log if d == "device"]
    assert sizes[2:5] == [1024, 1024, 981]


# --------------------------------------------------------------------------- unsolicited traffic


def test_kong_event_before_the_write_ack_is_acknowledged_once_the_exchange_allows() -> None:
    capture = Capture()
    block = kong_event_block()
    # The event arrives before Ack("52231"); its acks fall due after Ack("52232").
    capture.insert(GDI_ACK, [block[0]])
    capture.insert(GDI_UNINIT_ACK + 2, block[1:])
    client, transport, _ = run(capture)
    reply = client.get_device_info()
    assert (reply.unsolicited, reply.closed) == (1, True)
    assert json.loads(reply.json_text)["payload"]["devices"][0]["serial"] == "2313FD1N08Z2"
    hosts = [(c, p) for d, c, _, p in frames(transport) if d == "host"]
    assert [c for c, _ in hosts] == ["BufferWrite", "UninitBuffer", "Ack", "Ack", "Ack", "Ack"]
    assert transport.finished


def test_kong_event_after_the_response_is_closed_too() -> None:
    capture = Capture()
    block = kong_event_block('{"type":3,"payload":{"devices":[]}}')
    # device: BufferRead(answer), BufferRead(event); host acks both; device closes both.
    capture.insert(GDI_RESPONSE + 1, [block[0]])
    capture.insert(GDI_RESPONSE + 3, [block[1]])  # host Ack 0xCC06 for the event
    capture.insert(GDI_RESPONSE + 5, block[2:])  # its UninitBuffer and the host's ack
    client, transport, _ = run(capture)
    reply = client.get_device_info()
    assert (reply.unsolicited, reply.closed) == (1, True)
    assert transport.finished  # the event was closed as well, not left half-acknowledged


def test_acks_for_other_sequence_ids_and_stray_frames_are_skipped() -> None:
    capture = Capture()
    capture.insert(
        GDI_ACK,
        [
            device_ack(999, Command.BUFFER_WRITE),
            read_event(encode_frame(Command.NACK, 998)),
            read_event(encode_frame(Command.TIMEOUT, 997)),
        ],
    )
    client, _, _ = run(capture)
    assert client.get_device_info().unsolicited == 3


def test_undecodable_buffer_read_is_acknowledged_and_skipped() -> None:
    capture = Capture()
    block = kong_event_block()
    block[0] = read_event(encode_frame(Command.BUFFER_READ, 0, b"\xff\xfe garbage"))
    capture.insert(GDI_UNINIT_ACK + 1, block)
    client, _, _ = run(capture)
    reply = client.get_device_info()
    assert reply.unsolicited == 1 and reply.closed


def test_a_flood_of_events_ends_in_a_clear_error() -> None:
    capture = Capture()
    flood = [e for n in range(40) for e in kong_event_block(seq=2000 + 2 * n)]
    capture.insert(GDI_UNINIT_ACK + 1, flood)
    client, _, _ = run(capture, max_unsolicited=25)
    with pytest.raises(SyncProtocolError, match="more than 25 messages that were not the answer"):
        client.get_device_info()


def test_a_flood_is_also_bounded_by_the_deadline() -> None:
    capture = Capture()
    flood = [e for n in range(60) for e in kong_event_block(seq=2000 + 2 * n)]
    capture.insert(GDI_UNINIT_ACK + 1, flood)
    clock = FakeClock()
    replay = ReplayTransport(capture.recording(), on_timeout=clock.advance)

    class Slow:  # every transfer takes 0.25 s of simulated time
        def write(self, data: bytes, timeout: float) -> None:
            clock.advance(0.25)
            replay.write(data, timeout)

        def read(self, size: int, timeout: float) -> bytes:
            clock.advance(0.25)
            return replay.read(size, timeout)

    client = SyncClient(Slow(), clock=clock, deadline=10.0, max_unsolicited=10_000)
    start = clock.now
    with pytest.raises(SyncTimeout, match="deadline of 10 s passed"):
        client.get_device_info()
    assert clock.now - start <= 10.0 + 0.25


# --------------------------------------------------------------------------- timeouts


def test_read_timeouts_are_retried() -> None:
    capture = Capture()
    capture.insert(GDI_RESPONSE, [timeout_event()])
    capture.insert(GDI_ACK, [timeout_event()])
    client, _, clock = run(capture, read_timeout=2.5)
    start = clock.now
    reply = client.get_device_info()
    assert (reply.read_timeouts, reply.attempts) == (2, 1)
    assert clock.now - start == pytest.approx(5.0)


def test_a_dropped_request_is_sent_again_like_the_recorded_host_did() -> None:
    # Recorded events 15–20: no answer to the first TransitionToDeviceMode, one read
    # timeout, and the host sent the request again. Same pattern for GetDeviceInfo here.
    capture = Capture()
    capture.insert(GDI_WRITE, [*unanswered_gdi(capture), timeout_event(), timeout_event()])
    client, transport, _ = run(capture, timeouts_before_resend=2)
    reply = client.get_device_info()
    assert (reply.attempts, reply.read_timeouts, reply.closed) == (2, 2, True)
    sent = [(c, s) for d, c, s, _ in frames(transport) if d == "host"]
    assert sent == [
        ("BufferWrite", 1),
        ("UninitBuffer", 2),
        ("BufferWrite", 3),
        ("UninitBuffer", 4),
        ("Ack", 5),
        ("Ack", 6),
    ]


def test_a_device_that_never_answers_fails_after_the_retries() -> None:
    capture = Capture().remove(GDI_RESPONSE, GDI_RESPONSE + 4)  # acks, but no answer
    client, _, clock = run(capture, attempts=1, timeouts_before_resend=3, read_timeout=1.0)
    start = clock.now
    with pytest.raises(SyncTimeout, match="3 read timeouts in a row after 1 attempt"):
        client.get_device_info()
    assert clock.now - start == pytest.approx(3.0)


def test_a_device_that_never_answers_fails_within_the_deadline() -> None:
    capture = Capture()
    silent = unanswered_gdi(capture)
    capture.remove(GDI_WRITE, GDI_WRITE + 8)
    for _ in range(10):
        capture.events.extend(silent)
    client, _, clock = run(capture, deadline=10.0, read_timeout=2.5, attempts=10, timeouts_before_resend=3)
    start = clock.now
    with pytest.raises(SyncTimeout, match="deadline of 10 s passed") as err:
        client.get_device_info()
    assert clock.now - start == pytest.approx(10.0)  # never later than the deadline
    assert "waiting for the GetDeviceInfo response" in str(err.value)


def test_a_device_that_never_acknowledges_fails_within_the_deadline() -> None:
    capture = Capture().remove(GDI_ACK, GDI_ACK + 7)  # the BufferWrite goes unanswered
    client, _, clock = run(capture, deadline=4.0, read_timeout=1.5, attempts=1, timeouts_before_resend=10)
    start = clock.now
    with pytest.raises(SyncTimeout, match="waiting for the Ack of BufferWrite"):
        client.get_device_info()
    assert clock.now - start == pytest.approx(4.0)


def test_a_missing_close_keeps_the_answer() -> None:
    capture = Capture().remove(GDI_RESPONSE + 2, GDI_RESPONSE + 4)  # no device UninitBuffer
    client, _, _ = run(capture, timeouts_before_resend=2)
    reply = client.get_device_info()
    assert reply.closed is False
    assert json.loads(reply.json_text)["payload"]["devices"][0]["model"] == "VR0019"


# --------------------------------------------------------------------------- protocol errors


def test_nack_of_our_request_is_a_protocol_error() -> None:
    capture = Capture()
    capture.events[GDI_ACK] = read_event(encode_frame(Command.NACK, 11))
    client, _, _ = run(capture)
    with pytest.raises(SyncProtocolError, match=r"refused \(Nack\) seq 1"):
        client.get_device_info()


def test_ack_of_the_wrong_command_is_a_protocol_error() -> None:
    capture = Capture()
    capture.events[GDI_ACK] = read_event(
        encode_frame(Command.ACK, 11, device_ack_payload(Command.UNINIT_BUFFER))
    )
    client, _, _ = run(capture)
    with pytest.raises(SyncProtocolError, match="acknowledged UninitBuffer for seq 1, expected BufferWrite"):
        client.get_device_info()


def test_a_truncated_transfer_is_a_frame_error() -> None:
    capture = Capture()
    data = capture.data(GDI_RESPONSE)
    capture.events[GDI_RESPONSE] = read_event(data[:500])
    client, _, _ = run(capture)
    with pytest.raises(FrameError, match="header declares 3029 bytes, the transfer ended after 500"):
        client.get_device_info()


def test_a_device_sending_buffer_write_is_a_protocol_error() -> None:
    capture = Capture()
    capture.insert(GDI_ACK, [read_event(struct.pack("<III", 0xCC07, 0, 5))])
    client, _, _ = run(capture)
    with pytest.raises(SyncProtocolError, match="only a host sends"):
        client.get_device_info()


def test_a_recording_without_a_get_device_info_answer_names_the_request() -> None:
    capture = Capture().remove(GDI_WRITE, GDI_WRITE + 8)
    client, _, _ = run(capture)
    with pytest.raises(
        ReplayError,
        match=r"cannot answer a GetDeviceInfo request.*"
        r"SetDeviceTime, TransitionToDeviceMode",
    ):
        client.get_device_info()


def test_client_options_are_checked() -> None:
    with pytest.raises(ValueError):
        SyncClient(ReplayTransport(Capture().recording()), deadline=0)
    with pytest.raises(ValueError):
        SyncClient(ReplayTransport(Capture().recording()), attempts=0)


# --------------------------------------------------------------------------- fuzz


def _device_frame() -> st.SearchStrategy[bytes]:
    answer = proto.encode_device_message(header_id="h", device_info_json='{"payload":{}}')
    event = proto.encode_device_message(kong_event_json="{}")
    payloads = st.sampled_from([b"", b"52231", b"52232", answer, event, b"\xff\x00"]) | st.binary(max_size=24)
    frames = st.builds(encode_frame, st.sampled_from(list(Command)), st.integers(0, 6), payloads)
    return frames | st.just(encode_short_uninit()) | st.binary(max_size=20)


class ScriptedDevice:
    """Answers reads from a list of transfers, then times out; accepts every write."""

    def __init__(self, transfers: list[bytes | None], clock: FakeClock) -> None:
        self.transfers, self.clock = list(transfers), clock

    def write(self, data: bytes, timeout: float) -> None:
        check_outgoing(data)  # whatever the client sends must pass the gate

    def read(self, size: int, timeout: float) -> bytes:
        item = self.transfers.pop(0) if self.transfers else None
        if item is None:
            self.clock.advance(timeout)
            raise TransportTimeout("scripted timeout")
        return item[:size]


ANSWER = '{"payload":{}}'
#: What a well-behaved device sends to our first request (client sequence ids 1 and 2).
WELL_BEHAVED = [
    encode_frame(Command.ACK, 1, b"52231"),
    encode_frame(Command.ACK, 2, b"52232"),
    encode_frame(Command.BUFFER_READ, 0, proto.encode_device_message(header_id="h", device_info_json=ANSWER)),
    encode_short_uninit(),
]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_any_device_behaviour_ends_in_a_reply_or_a_sync_error(data: st.DataObject) -> None:
    # The well-behaved answer with random frames, timeouts (None) and garbage inserted,
    # and some of its own transfers dropped.
    transfers: list[bytes | None] = [
        t for t in WELL_BEHAVED if data.draw(st.integers(0, 9), label="drop") != 0
    ]
    for _ in range(data.draw(st.integers(0, 12), label="noise")):
        transfers.insert(data.draw(st.integers(0, len(transfers))), data.draw(_device_frame() | st.none()))
    clock = FakeClock()
    client = SyncClient(ScriptedDevice(transfers, clock), clock=clock, deadline=10.0, max_unsolicited=20)
    start = clock.now
    try:
        reply = client.get_device_info()
    except SyncError:
        pass
    else:
        assert reply.json_text == ANSWER
    assert clock.now - start <= 10.0
