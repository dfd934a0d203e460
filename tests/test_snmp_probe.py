"""The sweep's own SNMPv2c liveness probe (agent/collectors/snmp/probe.py) against real
sockets on 127.0.0.1: pacing at ``max_pps``, per-probe deadlines, retries, answers that are
not ours, and the read-only gate on every datagram. Sweeps of snmpsim / snmpd are in
tests/test_snmp_source.py. Nothing is sent beyond 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto.api import v2c

from agent.catalog import load_catalog
from agent.collectors.snmp.client import V2cCredentials
from agent.collectors.snmp.gate import SYSTEM_OIDS, StampedMessageGate, check_snmp_request
from agent.collectors.snmp.probe import Pacer, V2cProber
from agent.discovery import ScanContext
from agent.discovery.snmp import SnmpSource
from agent.readonly import ReadOnlyViolation
from tests.snmp_rogue import RogueAgent, no_table

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def run(source: SnmpSource):
    return asyncio.run(source.run(ScanContext(load_catalog(), NOW)))


class Sinks:
    """UDP sockets on 127.0.0.1 that answer nothing and log every datagram's arrival."""

    def __init__(self, count: int) -> None:
        self.socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.arrivals: list[tuple[float, int, bytes]] = []

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in self.socks]

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        for s in self.socks:
            loop.add_reader(s.fileno(), self._read, s)

    def _read(self, s: socket.socket) -> None:
        while True:
            try:
                data, _ = s.recvfrom(65535)
            except BlockingIOError:
                return
            self.arrivals.append((time.monotonic(), s.getsockname()[1], data))

    def close(self) -> None:
        for s in self.socks:
            s.close()


async def _sweep_sinks(sinks: Sinks, **kw: Any):
    sinks.attach(asyncio.get_running_loop())
    source = SnmpSource(sinks.targets, V2cCredentials("public"), **kw)
    result = await source.run(ScanContext(load_catalog(), NOW))
    await asyncio.sleep(0.05)  # the last datagrams' arrival
    return source, result


def test_the_rate_cap_spaces_every_send_and_retries_are_sent_and_paced():
    sinks = Sinks(40)
    try:
        source, result = asyncio.run(_sweep_sinks(sinks, timeout=0.3, retries=1, max_pps=100))
    finally:
        sinks.close()
    times = sorted(t for t, _, _ in sinks.arrivals)
    # Every silent address got its probe and one retry; each datagram is a documented read.
    per_port: dict[int, int] = {}
    for _, port, data in sinks.arrivals:
        per_port[port] = per_port.get(port, 0) + 1
        check_snmp_request(data)
        message, _ = decoder.decode(data, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(message)
        assert [tuple(o) for o, _ in v2c.apiPDU.get_varbinds(pdu)] == list(SYSTEM_OIDS)
    assert sorted(per_port.values()) == [2] * 40
    assert len(result.errors) == 40 and all("no answer" in e.message for e in result.errors)
    assert source.last_stats is not None and source.last_stats.retransmitted == 40
    # 80 datagrams at 100 per second. While there is always one to send (the first 70: the
    # last retries wait for their probes' deadlines), the achieved rate is the cap, as a
    # ratio; and no 100 ms window holds more than its share plus the pacer's small catch-up.
    busy = times[:70]
    rate = (len(busy) - 1) / (busy[-1] - busy[0])
    assert 0.85 <= rate / 100 <= 1.05, rate
    worst = max(sum(1 for u in times if t <= u < t + 0.1) for t in times)
    assert worst <= 10 + 2, worst


def test_silent_addresses_end_one_timeout_after_the_last_probe():
    # 127.0.3.0/24 holds nothing: 254 probes at 4,000 per second, every one a timeout.
    source = SnmpSource(["127.0.3.0/24:1161"], V2cCredentials("public"), timeout=0.5, max_pps=4000)
    result = run(source)
    stats = source.last_stats
    assert stats is not None and result.errors == [] and stats.silent == 254
    assert stats.first_send is not None and stats.last_send is not None
    tail = stats.seconds - stats.last_send
    assert 0.5 - 0.01 <= tail <= 0.5 + 0.3, tail
    # Paced, not in rounds: the sends took about 254 / 4,000 s.
    assert 0.8 <= (stats.last_send - stats.first_send) / (253 / 4000) <= 1.5


def test_the_uncapped_sweep_still_has_per_probe_deadlines():
    source = SnmpSource(["127.0.3.0/26:1161"], V2cCredentials("public"), timeout=0.3, max_pps=0)
    run(source)
    stats = source.last_stats
    assert stats is not None and stats.last_send is not None
    assert 0.29 <= stats.seconds - stats.last_send <= 0.6


class Lossy(RogueAgent):
    """Drops the first ``drop`` requests it gets (a lost datagram), answers the rest."""

    def __init__(self, drop: int, **kw: Any) -> None:
        super().__init__(responder=no_table, **kw)
        self.drop = drop
        self.seen = 0

    def _answer(self, data: bytes) -> bytes | None:
        self.seen += 1
        if self.seen <= self.drop:
            return None
        return super()._answer(data)


def test_retries_recover_a_lost_probe():
    with Lossy(drop=1) as agent:
        lost = run(SnmpSource([f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=0.3))
    assert lost.observations == [] and "no answer" in lost.errors[0].message
    with Lossy(drop=1) as agent:
        source = SnmpSource(
            [f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=0.3, retries=1, walk_entities=False
        )
        found = run(source)
    assert [o.attributes["sys_name"] for o in found.observations] == ["rogue"] and found.errors == []
    assert source.last_stats is not None and source.last_stats.retransmitted == 1


class Impostor(RogueAgent):
    """Before (or instead of) the real answer: garbage, a response with another request-id,
    a response with another community, and the real response from another port."""

    def __init__(self, *, then_answer: bool, **kw: Any) -> None:
        super().__init__(responder=no_table, **kw)
        self.then_answer = then_answer
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.other.close()

    def _send(self, reply: bytes, peer: Any) -> None:
        message, _ = decoder.decode(reply, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(message)
        rid = int(v2c.apiPDU.get_request_id(pdu))
        v2c.apiPDU.set_request_id(pdu, rid + 1)
        wrong_rid = bytes(encoder.encode(message))
        v2c.apiPDU.set_request_id(pdu, rid)
        v2c.apiMessage.set_community(message, b"other")
        wrong_community = bytes(encoder.encode(message))
        for junk in (b"\x30\x03\x02\x01", b"", b"\xff" * 40, wrong_rid, wrong_community):
            self.sock.sendto(junk, peer)
        self.other.sendto(reply, peer)  # right answer, wrong port
        if self.then_answer:
            time.sleep(0.02)
            self.sock.sendto(reply, peer)


@pytest.mark.parametrize("then_answer", [True, False])
def test_answers_that_are_not_ours_are_ignored(then_answer: bool):
    with Impostor(then_answer=then_answer) as agent:
        source = SnmpSource(
            [f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=0.5, walk_entities=False
        )
        result = run(source)
    assert source.last_stats is not None and source.last_stats.ignored == 6
    if then_answer:
        assert [o.attributes["sys_name"] for o in result.observations] == ["rogue"]
        assert result.errors == []
    else:
        assert result.observations == [] and "no answer" in result.errors[0].message


def test_the_probe_refuses_to_send_what_the_gate_refuses():
    with pytest.raises(ReadOnlyViolation, match="not an object the agent documents"):
        V2cProber("public", oids=((1, 3, 6, 1, 2, 1, 1, 3, 0),))
    prober = V2cProber("public")
    gate = prober.gate
    stamped = prober._head + (0x1234_5678).to_bytes(4, "big") + prober._tail
    gate(stamped)  # the template with another request-id
    # Anything else that differs from the checked template is decoded and checked in full.
    message, _ = decoder.decode(stamped, asn1Spec=v2c.Message())
    set_pdu = v2c.SetRequestPDU()
    v2c.apiPDU.set_defaults(set_pdu)
    v2c.apiPDU.set_varbinds(set_pdu, [(v2c.ObjectIdentifier(SYSTEM_OIDS[2]), v2c.OctetString(b"x"))])
    v2c.apiMessage.set_pdu(message, set_pdu)
    with pytest.raises(ReadOnlyViolation):
        gate(bytes(encoder.encode(message)))
    with pytest.raises(ReadOnlyViolation):
        gate(stamped[:-1] + b"\x01")  # the last varbind's NULL turned into something else
    # A window that is not the request-id is refused when the gate is made.
    with pytest.raises((ValueError, ReadOnlyViolation)):
        StampedMessageGate(stamped, (len(stamped) - 6, len(stamped) - 2))


def test_a_gate_violation_stops_the_sweep_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch):
    sinks = Sinks(3)

    def refuse(self: Any, message: bytes) -> None:
        raise ReadOnlyViolation("refused")

    monkeypatch.setattr(StampedMessageGate, "__call__", refuse)
    try:
        with pytest.raises(ReadOnlyViolation):
            asyncio.run(_sweep_sinks(sinks, timeout=0.2))
    finally:
        sinks.close()
    assert sinks.arrivals == []


def test_pacer_spaces_waits():
    async def go() -> list[float]:
        pacer = Pacer(500)
        stamps = []
        for _ in range(101):
            await pacer.wait()
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(go())
    assert 0.85 <= (100 / 500) / (stamps[-1] - stamps[0]) <= 1.1
