"""The sweep's liveness probe for SNMPv2c: one GET of sysDescr, sysObjectID and sysName to
every address from one UDP socket, paced, each probe with its own deadline.

Why not the pysnmp engine for this: the engine keeps a few kilobytes of state per request,
encodes each message with pyasn1 (~0.3 ms) and expires requests on 0.1 s timer ticks, so a
sweep overshot its timeout by up to a tick per round and a /16 would cost minutes of CPU.
Here the message is encoded once by pysnmp's message API with a fixed-width request-id; each
probe copies it and writes its own request-id into those four octets. Every datagram passes
the SNMP read-only gate (:class:`~agent.collectors.snmp.gate.StampedMessageGate`) before it is
sent.

* **Pacing**: :class:`Pacer` spaces sends at ``max_pps`` (retransmissions included), with at
  most a few milliseconds of catch-up after the loop was busy.
* **Deadlines**: a probe's deadline is its send time plus ``timeout`` on the monotonic clock;
  deadlines come in send order, so one timer (``loop.call_at``) on the oldest is enough.
* **Matching**: an answer counts only when it comes from the probed address *and* port,
  decodes as an SNMPv2c Response with our community and carries the probe's request-id.
  Anything else (garbage, another request-id, another port, a stranger) is ignored and
  counted; the probe stays pending until its deadline.
* **Memory**: state is kept for pending probes only (about 200 bytes each).

SNMPv3 needs engine discovery and USM; v3 sweeps go through the pysnmp engine
(:class:`~agent.collectors.snmp.client.SnmpClient`), paced by the same :class:`Pacer` and with
the same per-request deadlines.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from pysnmp.proto.api import v2c

from agent.collectors.snmp.gate import SYSTEM_OIDS, Oid, StampedMessageGate

#: Request-ids whose BER content is exactly four octets (first octet 0x01-0x7F): stamping one
#: into the template never changes the message's length or structure.
_RID_MIN = 0x0100_0000
_RID_SPAN = 0x7FFF_FFFF - _RID_MIN
#: Without a rate cap, yield to the event loop after this many sends so answers are read.
_UNCAPPED_BATCH = 64


class Pacer:
    """At most ``rate`` sends per second (0: no cap). Each :meth:`wait` takes the next slot;
    slots missed while the event loop was busy are made up for at most ``catch_up`` seconds
    back, so a stall never turns into a burst."""

    def __init__(self, rate: float, *, catch_up: float = 0.004, clock: Callable[[], float] = time.monotonic):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.catch_up = max(catch_up, self.interval)
        self._clock = clock
        self._next: float | None = None
        self._count = 0

    async def wait(self) -> None:
        if not self.interval:
            self._count += 1
            if self._count % _UNCAPPED_BATCH == 0:
                await asyncio.sleep(0)
            return
        now = self._clock()
        slot = now if self._next is None else max(self._next, now - self.catch_up)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(slots=True)
class ProbeAnswer:
    """What a responder answered: the varbinds, or an error-status (it answered, but not
    usefully)."""

    values: list[tuple[Oid, Any]]
    error_status: int = 0
    error_index: int = 0


class _Probe:
    __slots__ = ("address", "attempts_left", "key", "packet", "rid", "tag")

    def __init__(self, address: tuple[str, int], rid: int, packet: bytes, attempts: int, tag: Any) -> None:
        self.address = address
        self.rid = rid
        self.packet = packet
        self.attempts_left = attempts
        self.tag = tag
        self.key = address


@dataclass(slots=True)
class ProbeStats:
    sent: int = 0
    retransmitted: int = 0
    answered: int = 0
    timed_out: int = 0
    #: Datagrams that were not a matching answer (garbage, strangers, wrong request-id…).
    ignored: int = 0
    send_errors: int = 0
    first_send: float | None = None
    last_send: float | None = None
    max_pending: int = 0


Answered = Callable[[Any, ProbeAnswer], None]
TimedOut = Callable[[Any], None]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, prober: V2cProber) -> None:
        self.prober = prober

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.prober._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected socket, or a send that failed (no route, a full
        # neighbour table): the probe concerned just times out.
        self.prober.stats.send_errors += 1


class V2cProber:
    """Sends the liveness probe to addresses and reports each one as answered or timed out.
    Use inside the running loop: ``async with V2cProber(...) as prober: await prober.sweep(…)``.
    """

    def __init__(
        self,
        community: str,
        *,
        timeout: float = 1.0,
        retries: int = 0,
        max_pps: float = 0,
        oids: tuple[Oid, ...] = SYSTEM_OIDS,
    ) -> None:
        self.community = community.encode()
        self.timeout = timeout
        self.retries = retries
        self.pacer = Pacer(max_pps)
        self.stats = ProbeStats()
        template, window = _template(self.community, oids)
        self.gate = StampedMessageGate(template, window)
        self._head, self._tail = template[: window[0]], template[window[1] :]
        self._rid = secrets.randbelow(_RID_SPAN)
        self._pending: dict[tuple[str, int], _Probe] = {}
        self._deadlines: collections.deque[tuple[float, _Probe, int]] = collections.deque()
        self._retry: collections.deque[_Probe] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._wake = asyncio.Event()
        #: Called as each probe ends (set before the first probe).
        self.on_answer: Answered | None = None
        self.on_timeout: TimedOut | None = None

    async def __aenter__(self) -> V2cProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self._transports.values():
            transport.abort()  # nothing worth flushing: an unsent probe is a silent address
        self._transports.clear()
        self._pending.clear()
        self._deadlines.clear()
        self._retry.clear()

    # ------------------------------------------------------------------ the sweep

    async def sweep(
        self, addresses: Iterable[tuple[tuple[str, int], Any]], on_answer: Answered, on_timeout: TimedOut
    ) -> ProbeStats:
        """Probe every ``(address, tag)``: ``on_answer(tag, answer)`` for each responder as
        it answers, ``on_timeout(tag)`` for each address still silent after its last
        attempt's deadline. Returns when every probe has one or the other."""
        self.on_answer, self.on_timeout = on_answer, on_timeout
        for address, tag in addresses:
            await self.probe(address, tag)
        await self.drain()
        return self.stats

    async def probe(self, address: tuple[str, int], tag: Any) -> None:
        """Send the probe to ``address`` (an IP address and port) at the next free slot of
        the pacer, retransmissions that are due going first. ``tag`` comes back in the
        callback. An address already pending is not probed twice."""
        await self._send_retries()
        if address in self._pending:
            return
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        if family not in self._transports:
            await self._open(family)
        self._rid = (self._rid + 1) % _RID_SPAN
        rid = _RID_MIN + self._rid
        probe = _Probe(address, rid, self._head + rid.to_bytes(4, "big") + self._tail, self.retries + 1, tag)
        await self.pacer.wait()
        self._pending[address] = probe
        if len(self._pending) > self.stats.max_pending:
            self.stats.max_pending = len(self._pending)
        self._send(probe)

    async def drain(self) -> None:
        """Wait until every probe sent has been answered or has timed out, sending the
        retransmissions that fall due meanwhile."""
        while self._pending or self._retry:
            await self._send_retries()
            if self._pending and not self._retry:
                self._wake.clear()
                await self._wake.wait()

    async def _send_retries(self) -> None:
        while self._retry:
            await self.pacer.wait()
            if not self._retry:
                return
            probe = self._retry.popleft()
            if self._pending.get(probe.key) is probe:
                self.stats.retransmitted += 1
                self._send(probe)

    def _send(self, probe: _Probe) -> None:
        self.gate(probe.packet)  # the read-only gate, for every datagram
        probe.attempts_left -= 1
        now = time.monotonic()
        try:
            self._transports[socket.AF_INET6 if ":" in probe.address[0] else socket.AF_INET].sendto(
                probe.packet, probe.address
            )
        except OSError:
            self.stats.send_errors += 1
        self.stats.sent += 1
        if self.stats.first_send is None:
            self.stats.first_send = now
        self.stats.last_send = now
        deadline = now + self.timeout
        self._deadlines.append((deadline, probe, probe.attempts_left))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    async def _open(self, family: int) -> None:
        """One socket per address family, opened at its first probe."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Room for the answers of a fast sweep while the loop is busy decoding.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Endpoint(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._transports[family] = transport

    # ------------------------------------------------------------------ deadlines

    def _expire(self) -> None:
        self._timer = None
        loop_time = time.monotonic()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= loop_time:
            _, probe, attempts_left = deadlines.popleft()
            if self._pending.get(probe.key) is not probe or probe.attempts_left != attempts_left:
                continue  # answered, or sent again since
            if attempts_left > 0:
                self._retry.append(probe)
            else:
                del self._pending[probe.key]
                self.stats.timed_out += 1
                if self.on_timeout is not None:
                    self.on_timeout(probe.tag)
        if deadlines:
            self._timer = asyncio.get_running_loop().call_at(deadlines[0][0], self._expire)
        self._wake.set()

    # ------------------------------------------------------------------ answers

    def _received(self, data: bytes, addr: Any) -> None:
        probe = self._pending.get((addr[0], addr[1]))
        if probe is None:
            self.stats.ignored += 1
            return
        answer = self._match(data, probe)
        if answer is None:
            self.stats.ignored += 1
            return
        del self._pending[probe.key]
        self.stats.answered += 1
        if self.on_answer is not None:
            self.on_answer(probe.tag, answer)
        if not self._pending:
            self._wake.set()

    def _match(self, data: bytes, probe: _Probe) -> ProbeAnswer | None:
        """The answer in ``data`` when it is the response to ``probe``; else ``None``."""
        try:
            if int(api.decodeMessageVersion(data)) != api.SNMP_VERSION_2C:
                return None
            message, rest = decoder.decode(data, asn1Spec=v2c.Message())
            if rest or bytes(v2c.apiMessage.get_community(message)) != self.community:
                return None
            pdu = v2c.apiMessage.get_pdu(message)
            if not isinstance(pdu, v2c.ResponsePDU) or int(v2c.apiPDU.get_request_id(pdu)) != probe.rid:
                return None
            values = [(tuple(name), value) for name, value in v2c.apiPDU.get_varbinds(pdu)]
            return ProbeAnswer(
                values, int(v2c.apiPDU.get_error_status(pdu)), int(v2c.apiPDU.get_error_index(pdu))
            )
        except Exception:  # whatever the bytes were, they were not our answer
            return None


def _template(community: bytes, oids: tuple[Oid, ...]) -> tuple[bytes, tuple[int, int]]:
    """The probe message encoded by pysnmp's v2c message API, and where its request-id's four
    content octets are: two encodings that differ only in the request-id are compared."""
    encoded = []
    for rid in (_RID_MIN + 0x123456, _RID_MIN + 0x654321):
        message = v2c.Message()
        v2c.apiMessage.set_defaults(message)
        v2c.apiMessage.set_community(message, community)
        pdu = v2c.GetRequestPDU()
        v2c.apiPDU.set_defaults(pdu)
        v2c.apiPDU.set_request_id(pdu, rid)
        v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(o), v2c.null) for o in oids])
        v2c.apiMessage.set_pdu(message, pdu)
        encoded.append(bytes(encoder.encode(message)))
    first, second = encoded
    if len(first) != len(second):
        raise RuntimeError("cannot locate the request-id in the encoded probe")
    differ = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    end = differ[-1] + 1
    start = end - 4
    if differ[0] < start:
        raise RuntimeError("cannot locate the request-id in the encoded probe")
    return first, (start, end)
