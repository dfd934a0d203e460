"""SyncClient: the GetDeviceInfo exchange of the Sync Agent interface, over any transport.

The client speaks to one small :class:`SyncTransport` (``write`` / ``read`` of whole bulk
transfers), as httpx's client speaks to a transport: production uses
:class:`~agent.collectors.sync.pyusb_transport.PyUsbTransport`, tests and ``--replay`` use
:class:`~agent.collectors.sync.replay.ReplayTransport`.

The exchange, as recorded from a real Rally Bar (``logi-rally-bar-setup.json`` events
36–43; protocols.md):

1. host ``BufferWrite(seq n, UsbMsg{GetDeviceInfo})`` → device ``Ack(seq n, "52231")``;
2. host ``UninitBuffer(seq n+1)`` → device ``Ack(seq n+1, "52232")`` and a ``BufferRead``
   carrying the response, in either order (events 23/24 and 39/40 show both);
3. host ``Ack(seq n+2, u32le 0xCC06)`` for the BufferRead → device ``UninitBuffer``
   (8 bytes, no sequence id);
4. host ``Ack(seq n+3, u32le 0xCC08)``.

The host numbers every frame it writes, acks included, with one counter that goes up by one
(recorded 1, 2, … 14), and it writes nothing while it waits for the device to acknowledge
one of its commands: acknowledgements that fall due meanwhile are sent once that ack is in,
which also puts the response's ack after ``Ack("52232")`` as recorded.

While waiting the device may send other things: Kong events and other BufferReads (each is
acknowledged like the response, then skipped), acks for other sequence ids (skipped). Read
timeouts (libusb -7, recorded events 14 and 19) are retried; after a few in a row the
request is sent again, as the recorded host did (events 15–20). All of it runs against ONE
deadline per device, and a cap on unsolicited messages stops a device that floods.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from agent.collectors.sync import proto
from agent.collectors.sync.errors import (
    FrameError,
    ProtoError,
    SyncProtocolError,
    SyncTimeout,
    TransportTimeout,
)
from agent.collectors.sync.frames import (
    MAX_PAYLOAD,
    Command,
    Frame,
    command_label,
    declared_size,
    decode_frame,
    encode_frame,
    host_ack_payload,
    parse_device_ack,
)
from agent.collectors.sync.guard import check_outgoing
from agent.log import get_logger

log = get_logger("agent.collectors.sync")


class SyncTransport(Protocol):
    """Whole bulk transfers to and from the Sync interface.

    ``timeout`` is in seconds. ``read`` returns the bytes of one transfer (at most
    ``size``) and raises :class:`~agent.collectors.sync.errors.TransportTimeout` when
    nothing arrived in time; any other failure is a
    :class:`~agent.collectors.sync.errors.TransportError`.
    """

    def write(self, data: bytes, timeout: float) -> None: ...

    def read(self, size: int, timeout: float) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DeviceInfoReply:
    """The answer to one GetDeviceInfo exchange and how it went."""

    #: The JSON document of the GetDeviceInfoResponse (parse with ``parse_device_info``).
    json_text: str
    header_id: str
    header_timestamp: str
    #: How many times the request was sent (1 unless the device dropped it).
    attempts: int
    read_timeouts: int
    #: Frames that were not part of the exchange: events, other BufferReads, stray acks.
    unsolicited: int
    #: False when the device never sent the UninitBuffer closing the response (the answer
    #: was complete and acknowledged; only the device's clean-up was missing).
    closed: bool
    seconds: float


class _Phase(Enum):
    AWAIT_WRITE_ACK = "waiting for the Ack of BufferWrite"
    AWAIT_UNINIT_ACK = "waiting for the Ack of UninitBuffer"
    AWAIT_RESPONSE = "waiting for the GetDeviceInfo response"
    AWAIT_CLOSE = "waiting for the device's UninitBuffer after the response"


#: Defaults. 2.5 s per read is the recorded host's bulk timeout; 8192 bytes is its read
#: buffer (both follow from the recorded transfer ids).
DEFAULT_DEADLINE = 10.0
DEFAULT_READ_TIMEOUT = 2.5
DEFAULT_READ_SIZE = 8192


class SyncClient:
    """Reads GetDeviceInfo from one CollabOS device. Not thread-safe; one per device.

    Every write goes through :func:`~agent.collectors.sync.guard.check_outgoing` before it
    reaches the transport, and the only request this class can build is GetDeviceInfo.
    """

    def __init__(
        self,
        transport: SyncTransport,
        *,
        deadline: float = DEFAULT_DEADLINE,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = 2.5,
        read_size: int = DEFAULT_READ_SIZE,
        timeouts_before_resend: int = 2,
        attempts: int = 3,
        max_unsolicited: int = 256,
        first_sequence_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if deadline <= 0 or read_timeout <= 0 or write_timeout <= 0:
            raise ValueError("deadline and timeouts must be positive")
        if read_size < 64 or attempts < 1 or timeouts_before_resend < 1 or max_unsolicited < 0:
            raise ValueError("read_size ≥ 64, attempts ≥ 1, timeouts_before_resend ≥ 1")
        self.transport = transport
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.read_size = read_size
        self.timeouts_before_resend = timeouts_before_resend
        self.attempts = attempts
        self.max_unsolicited = max_unsolicited
        self.clock = clock
        self._next_seq = first_sequence_id

    def get_device_info(self) -> DeviceInfoReply:
        """Run one GetDeviceInfo exchange.

        Raises :class:`SyncTimeout` when no answer completes within the deadline or the
        retries, :class:`SyncProtocolError` when the device breaks the protocol (Nack, a
        wrong ack, a flood), :class:`FrameError` for an undecodable transfer and
        :class:`TransportError` when the transport fails.
        """
        return _Exchange(self).run()

    # -- the only two ways bytes leave the client

    def _send(self, command: Command, payload: bytes, deadline_at: float) -> int:
        seq = self._next_seq
        data = encode_frame(command, seq, payload)
        check_outgoing(data)  # the read-only gate, before any transport sees the bytes
        remaining = deadline_at - self.clock()
        if remaining <= 0:
            raise SyncTimeout(f"deadline of {self.deadline:g} s passed before sending {command.label}")
        self.transport.write(data, min(self.write_timeout, remaining))
        self._next_seq = (seq + 1) & 0xFFFF_FFFF
        return seq

    def _send_request(self, deadline_at: float) -> int:
        return self._send(Command.BUFFER_WRITE, proto.encode_get_device_info_request(), deadline_at)


class _Exchange:
    """The state of one GetDeviceInfo exchange (one call of ``get_device_info``)."""

    def __init__(self, client: SyncClient) -> None:
        self.c = client
        self.started = client.clock()
        self.deadline_at = self.started + client.deadline
        self.phase = _Phase.AWAIT_WRITE_ACK
        self.attempt = 0
        self.write_seq = -1
        self.uninit_seq = -1
        self.response: proto.SyncMessage | None = None
        self.response_acked = False
        #: Host acks that fell due while a command ack was outstanding: (command, ours).
        self.pending: list[tuple[Command, bool]] = []
        #: Acknowledged BufferReads awaiting the device's UninitBuffer; True = the response.
        self.open_reads: deque[bool] = deque()
        self.read_timeouts = 0
        self.in_a_row = 0
        self.unsolicited = 0
        self.undecodable: str | None = None
        #: The device closed the response with its UninitBuffer and we acknowledged it.
        self.closed = False
        #: Stop reading: everything closed, or the answer is in and time is up.
        self.finished = False

    # -- driver

    def run(self) -> DeviceInfoReply:
        self._start_attempt()
        while not self.finished:
            frame = self._read_frame()
            if frame is None:
                if not self.finished:
                    self._on_timeout()
                continue
            self.in_a_row = 0
            self._handle(frame)
        assert self.response is not None and self.response.json_payload is not None
        seconds = self.c.clock() - self.started
        log.debug(
            "sync.exchange.done",
            attempts=self.attempt,
            read_timeouts=self.read_timeouts,
            unsolicited=self.unsolicited,
            closed=self.closed,
            seconds=round(seconds, 4),
        )
        return DeviceInfoReply(
            self.response.json_payload,
            self.response.header_id,
            self.response.header_timestamp,
            self.attempt,
            self.read_timeouts,
            self.unsolicited,
            self.closed,
            seconds,
        )

    def _start_attempt(self) -> None:
        # Acks owed for BufferReads of a failed attempt are still owed: send them first.
        pending, self.pending = self.pending, []
        for command, ours in pending:
            self._write_ack(command, ours)
        self.attempt += 1
        self.phase = _Phase.AWAIT_WRITE_ACK
        self.write_seq = self.c._send_request(self.deadline_at)

    def _on_timeout(self) -> None:
        """Count a read timeout; after a few in a row, send the request again or give up."""
        self.read_timeouts += 1
        self.in_a_row += 1
        if self.in_a_row < self.c.timeouts_before_resend:
            return
        if self.phase is _Phase.AWAIT_CLOSE:
            self.finished = True  # the answer is in and acknowledged; the device did not close
            return
        if self.response is not None:
            # The answer came but the Ack of our UninitBuffer did not: the answer is what
            # we asked for, so acknowledge it now instead of asking again.
            self.in_a_row = 0
            self.phase = _Phase.AWAIT_RESPONSE
            pending, self.pending = self.pending, []
            for command, ours in pending:
                self._write_ack(command, ours)
            return
        self._resend_or_fail(f"{self.in_a_row} read timeouts in a row")

    def _resend_or_fail(self, why: str) -> None:
        if self.attempt >= self.c.attempts:
            raise SyncTimeout(self._stuck(f"{why} after {self.attempt} attempt(s)"))
        log.debug("sync.exchange.resend", attempt=self.attempt + 1, phase=self.phase.name, why=why)
        self.in_a_row = 0
        self._start_attempt()

    def _stuck(self, why: str) -> str:
        text = (
            f"no GetDeviceInfo answer: {why}, {self.phase.value}; "
            f"{self.read_timeouts} read timeouts, {self.unsolicited} unsolicited messages, "
            f"{self.c.clock() - self.started:.2f} s"
        )
        if self.undecodable:
            text += f"; skipped undecodable BufferRead: {self.undecodable}"
        return text

    # -- reading

    def _remaining(self) -> float:
        remaining = self.deadline_at - self.c.clock()
        if remaining > 0:
            return remaining
        if self.response is not None:
            self.finished = True  # the answer is in: keep it, skip the device's clean-up
            return 0.0
        raise SyncTimeout(self._stuck(f"deadline of {self.c.deadline:g} s passed"))

    def _read(self) -> bytes | None:
        remaining = self._remaining()
        if remaining <= 0:
            return None
        try:
            return bytes(self.c.transport.read(self.c.read_size, min(self.c.read_timeout, remaining)))
        except TransportTimeout:
            return None

    def _read_frame(self) -> Frame | None:
        """One frame, reassembled when it fills whole transfers; None on a read timeout."""
        data = self._read()
        if data is None:
            return None
        if not data:
            return None  # a zero-length packet carries nothing
        size = declared_size(data, max_payload=MAX_PAYLOAD)
        chunk = len(data)
        while len(data) < size:
            # USB ends a transfer with a short packet: only a transfer that filled the
            # whole buffer can have more of the same frame behind it.
            if chunk < self.c.read_size:
                raise FrameError(
                    f"truncated frame: header declares {size} bytes, the transfer ended after {len(data)}"
                )
            more = self._read()
            if more is None and self.finished:
                return None  # deadline with the answer already in: stop here
            if more is None:
                raise FrameError(
                    f"frame incomplete: {len(data)} of {size} bytes arrived before the read timed out"
                )
            chunk = len(more)
            data += more
        return decode_frame(data)

    # -- handling

    def _handle(self, frame: Frame) -> None:
        if frame.command is Command.ACK:
            self._on_ack(frame)
        elif frame.command is Command.BUFFER_READ:
            self._on_buffer_read(frame)
        elif frame.command is Command.UNINIT_BUFFER:
            self._on_device_uninit()
        elif frame.command is Command.NACK:
            if frame.sequence_id in (self.write_seq, self.uninit_seq):
                raise SyncProtocolError(
                    f"device refused (Nack) seq {frame.sequence_id} while {self.phase.value}"
                )
            self._unsolicited(frame)
        elif frame.command is Command.TIMEOUT:
            # The device gave up on the command we wait for: the request is lost, send again.
            want = {_Phase.AWAIT_WRITE_ACK: self.write_seq, _Phase.AWAIT_UNINIT_ACK: self.uninit_seq}.get(
                self.phase
            )
            if frame.sequence_id == want:
                self._resend_or_fail(f"device reported Timeout for seq {frame.sequence_id}")
            else:
                self._unsolicited(frame)
        else:  # a BufferWrite from the device: never seen, never valid
            raise SyncProtocolError(f"device sent {frame.describe()}, which only a host sends")

    def _on_ack(self, frame: Frame) -> None:
        seq = frame.sequence_id
        expecting = {
            _Phase.AWAIT_WRITE_ACK: (self.write_seq, Command.BUFFER_WRITE),
            _Phase.AWAIT_UNINIT_ACK: (self.uninit_seq, Command.UNINIT_BUFFER),
        }
        want = expecting.get(self.phase)
        if want is None or seq != want[0]:
            self._unsolicited(frame)  # an ack for another (earlier) frame
            return
        try:
            acked = parse_device_ack(frame.payload)
        except FrameError as exc:
            raise SyncProtocolError(f"Ack for seq {seq}: {exc}") from exc
        if acked != want[1]:
            raise SyncProtocolError(
                f"device acknowledged {command_label(acked)} for seq {seq}, expected {want[1].label}"
            )
        if self.phase is _Phase.AWAIT_WRITE_ACK:
            self.phase = _Phase.AWAIT_UNINIT_ACK
            self.uninit_seq = self.c._send(Command.UNINIT_BUFFER, b"", self.deadline_at)
        else:
            self.phase = _Phase.AWAIT_RESPONSE
            pending, self.pending = self.pending, []
            for command, ours in pending:
                self._write_ack(command, ours)

    def _on_buffer_read(self, frame: Frame) -> None:
        try:
            message: proto.SyncMessage | None = proto.decode_usb_msg(frame.payload)
        except ProtoError as exc:
            message = None
            self.undecodable = str(exc)
        # The response comes after our UninitBuffer; anything else is unsolicited.
        ours = (
            message is not None
            and message.is_device_info_response
            and self.response is None
            and self.phase in (_Phase.AWAIT_UNINIT_ACK, _Phase.AWAIT_RESPONSE)
        )
        if ours:
            self.response = message
        else:
            self._unsolicited(frame, message)
        self._ack(Command.BUFFER_READ, ours)

    def _on_device_uninit(self) -> None:
        # The device's UninitBuffer has no sequence id: it closes the oldest acknowledged
        # BufferRead. One with nothing open is stray; it is acknowledged all the same.
        ours = self.open_reads.popleft() if self.open_reads else False
        self._ack(Command.UNINIT_BUFFER, ours)

    def _ack(self, command: Command, ours: bool) -> None:
        if self.phase in (_Phase.AWAIT_WRITE_ACK, _Phase.AWAIT_UNINIT_ACK):
            self.pending.append((command, ours))  # never write while a command ack is due
            return
        self._write_ack(command, ours)

    def _write_ack(self, command: Command, ours: bool) -> None:
        if ours and command is Command.UNINIT_BUFFER and self.deadline_at <= self.c.clock():
            self.finished = True  # answer complete; no time left for the clean-up ack
            return
        self.c._send(Command.ACK, host_ack_payload(command), self.deadline_at)
        if command is Command.BUFFER_READ:
            self.open_reads.append(ours)
            if ours:
                self.response_acked = True
                self.phase = _Phase.AWAIT_CLOSE
            return
        self.closed = self.closed or ours
        # Done when our answer is closed and no acknowledged event still awaits its close.
        if self.closed and not self.open_reads:
            self.finished = True

    def _unsolicited(self, frame: Frame, message: proto.SyncMessage | None = None) -> None:
        self.unsolicited += 1
        log.debug(
            "sync.exchange.unsolicited",
            frame=frame.describe(),
            message=message.name if message else None,
            phase=self.phase.name,
        )
        if self.unsolicited > self.c.max_unsolicited:
            raise SyncProtocolError(
                self._stuck(
                    f"device sent more than {self.c.max_unsolicited} messages that were not the "
                    f"answer (flood)"
                )
            )
