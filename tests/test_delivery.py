"""Delivery (``agent/uploader/delivery.py``) against the real portal stand-in: every reply
and fault of docs/portal-api.md ("Replies and what the agent does", "Backoff", "Transport and
TLS"), the stable Idempotency-Key, the deadline, stopping, the snapshot after an outage, and
the token kept out of logs, results and the outbox. Then the contract's pure functions:
``classify``, ``retry_after_seconds`` and ``backoff_delay`` (a hypothesis property)."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.log import configure
from agent.model import Room
from agent.store import DB_NAME, Store
from agent.uploader.delivery import (
    Delivery,
    Outcome,
    PortalError,
    PortalSettings,
    RunResult,
    backoff_delay,
    classify,
    retry_after_seconds,
)
from agent.uploader.outbox import Outbox
from agent.uploader.protocol import InventoryMessage
from agent.uploader.snapshot import SnapshotContext, build_snapshot
from tests.usb_units import unit
from tools.portal_standin import CertAuthority, PortalStandIn, RecordedRequest, TlsFiles, self_signed_tls

TOKEN = f"tok-{secrets.token_hex(16)}"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
EVENTS, INVENTORY = "/v1/events", "/v1/inventory"
CONTEXT = SnapshotContext(load_catalog(), (Room("oslo-4-12", "Fjord"),))


class VirtualTime:
    """A clock that moves only when Delivery sleeps: backoff without waiting, recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        await asyncio.sleep(0)


@dataclass
class Agent:
    """A store holding two change events and a snapshot, its outbox and a token file."""

    store: Store
    outbox: Outbox
    token_file: Path
    snapshots: list[datetime] = field(default_factory=list)

    def build(self, sequence: int, at: datetime, dropped: int) -> InventoryMessage:
        return build_snapshot(self.store, CONTEXT, self.outbox.agent, sequence, at, dropped)

    def queue_fresh_snapshot(self) -> bool:
        """The snapshot callback: what ``roomsync push`` gives Delivery."""
        self.snapshots.append(datetime.now(UTC))
        return self.outbox.queue_snapshot(self.build, datetime.now(UTC), force=True)

    def delivery(
        self,
        url: str,
        *,
        vt: VirtualTime | None = None,
        rng: Callable[[], float] = lambda: 0.5,
        snapshot: bool = False,
        **settings: Any,
    ) -> Delivery:
        options: dict[str, Any] = {"timeout": 3.0, "backoff_cap": 0.2, **settings}
        timing: dict[str, Any] = {"clock": vt.clock, "sleep": vt.sleep} if vt is not None else {}
        return Delivery(
            self.outbox,
            PortalSettings(url, self.token_file, **options),
            user_agent="roomsync/test",
            rng=rng,
            snapshot=self.queue_fresh_snapshot if snapshot else None,
            **timing,
        )

    def keys(self) -> list[str]:
        return [m.key for m in self.outbox.messages()]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    token = tmp_path / "portal.token"
    token.write_text(TOKEN + "\n")
    with Store.open(tmp_path / "state", busy_timeout=0.2) as store:
        outbox = Outbox(store, agent_id="site-oslo-pi-01", version="0.1.0", hostname="oslo-pi-01")
        store.record_scan([unit(1, T0), unit(2, T0)], [], T0, sources_run={"usb"})
        made = Agent(store, outbox, token)
        assert outbox.queue_snapshot(made.build, T0)
        assert [m.kind for m in outbox.messages()] == ["events", "inventory"]
        yield made


@pytest.fixture
def portal() -> Iterator[PortalStandIn]:
    with PortalStandIn(TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


def to(portal: PortalStandIn, path: str) -> list[RecordedRequest]:
    return [r for r in portal.requests if r.path == path]


def assert_delivered_once(portal: PortalStandIn, agent: Agent, keys: list[str]) -> None:
    """Both messages at the portal exactly once, in queue order; the outbox empty."""
    assert [m.idempotency_key for m in portal.messages] == keys
    assert sorted(e.serial or "" for e in portal.events) == ["S00001", "S00002"]
    assert agent.outbox.stats().empty


# --------------------------------------------------------------------------- 2xx


async def test_delivers_the_queue_in_order_with_the_contract_headers(portal: PortalStandIn, agent: Agent):
    queued = agent.outbox.messages(with_body=True)
    result = await agent.delivery(portal.url, snapshot=True).run()
    assert (
        result.stopped_because,
        result.delivered,
        result.events_delivered,
        result.retries,
        result.parked,
    ) == ("empty", 2, 2, 0, 0)
    assert [a.outcome for a in result.attempts] == [Outcome.DELIVERED] * 2
    assert [(r.path, r.status) for r in portal.requests] == [(EVENTS, 202), (INVENTORY, 202)]
    assert [r.idempotency_key for r in portal.requests] == [m.key for m in queued]
    for request, message in zip(portal.requests, queued, strict=True):
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers["authorization"] == "Bearer <redacted>"  # the stand-in checked it
        assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/json"
        assert headers["accept"] == "application/json" and headers["user-agent"] == "roomsync/test"
        assert message.body[:2] == b"\x1f\x8b" and request.body_bytes == len(message.body)  # the stored bytes
    assert [m.message.sequence for m in portal.messages] == [m.sequence for m in queued]
    assert [str(e.id) for e in portal.events] == [e.id for e in agent.store.events()]
    latest = portal.latest_inventory
    assert latest is not None and sorted(d.serial or "" for p in latest.places for d in p.devices) == [
        "S00001",
        "S00002",
    ]
    assert agent.outbox.stats().empty
    state = agent.outbox.portal_state()
    assert state.state == "ok" and state.last_success is not None
    assert agent.snapshots == []  # no outage: no extra snapshot


async def test_an_empty_outbox_sends_nothing(portal: PortalStandIn, agent: Agent):
    await agent.delivery(portal.url).run()
    result = await agent.delivery(portal.url, snapshot=True).run()
    assert (result.stopped_because, result.delivered, result.attempts) == ("empty", 0, [])
    assert len(portal.requests) == 2 and agent.snapshots == []


# --------------------------------------------------------------------------- retried replies


@pytest.mark.parametrize(
    ("status", "retry_after", "cap", "delays"),
    [
        (500, None, 100.0, [0.5, 1.0]),  # full jitter: rng() × min(cap, 1 s × 2^(n−1))
        (502, None, 100.0, [0.5, 1.0]),
        (503, 7, 100.0, [7.0, 7.0]),  # never sooner than Retry-After
        (503, 7, 2.0, [2.0, 2.0]),  # …and never longer than the cap
        (503, None, 100.0, [0.5, 1.0]),
        (429, 3, 100.0, [3.0, 3.0]),
        (429, "soon", 100.0, [0.5, 1.0]),  # unreadable Retry-After: 0
        (408, None, 100.0, [0.5, 1.0]),
        (599, None, 1.0, [0.5, 0.5]),  # the cap bounds the ceiling too
    ],
)
async def test_a_retried_status_holds_the_queue_and_keeps_the_key(
    portal: PortalStandIn, agent: Agent, status: int, retry_after: Any, cap: float, delays: list[float]
):
    keys = agent.keys()
    portal.inject(status, times=2, retry_after=retry_after, path=EVENTS)
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt, backoff_cap=cap).run(deadline=vt.now + 60)
    assert vt.delays == delays
    assert (result.stopped_because, result.delivered, result.retries, result.parked) == ("empty", 2, 2, 0)
    assert [a.outcome for a in result.attempts] == [
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.DELIVERED,
        Outcome.DELIVERED,
    ]
    assert [a.status for a in result.attempts[:2]] == [status, status]
    assert f"HTTP {status}" in result.attempts[0].detail
    events = to(portal, EVENTS)
    assert [r.status for r in events] == [status, status, 202]
    assert {r.idempotency_key for r in events} == {keys[0]}  # one key for every attempt
    assert [r.path for r in portal.requests] == [EVENTS, EVENTS, EVENTS, INVENTORY]  # in order
    assert_delivered_once(portal, agent, keys)


async def test_retry_after_as_an_http_date_counts_from_the_reply_date(portal: PortalStandIn, agent: Agent):
    portal.inject(503, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt, backoff_cap=100, rng=lambda: 0.0).run()
    assert result.delivered == 2
    [delay] = vt.delays
    assert 28 <= delay <= 31


async def test_retry_after_is_honoured_in_real_time(portal: PortalStandIn, agent: Agent):
    portal.inject(503, retry_after=1)
    started = time.monotonic()
    result = await agent.delivery(portal.url, backoff_cap=5, rng=lambda: 0.0).run(deadline=started + 10)
    elapsed = time.monotonic() - started
    assert result.delivered == 2 and result.retries == 1
    assert 0.95 <= elapsed < 3.0
    assert result.attempts[0].retry_after == 1.0


async def test_the_portal_state_says_retrying_while_it_fails(portal: PortalStandIn, agent: Agent):
    portal.inject(503, times=100, retry_after=1)
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt, backoff_cap=1).run(deadline=vt.now + 3)
    assert result.stopped_because == "deadline" and result.delivered == 0
    assert sum(vt.delays) <= 3
    state = agent.outbox.portal_state()
    assert state.state == "retrying" and state.reason is not None and "HTTP 503" in state.reason
    head = agent.outbox.head()
    assert head is not None and head.kind == "events" and head.attempts == len(portal.requests)
    assert (head.last_status, head.state) == (503, "pending")
    assert agent.outbox.stats().parked == 0


async def test_backoff_counts_the_failures_of_the_head_message_only(portal: PortalStandIn, agent: Agent):
    portal.inject(503, times=3, retry_after=None, path=EVENTS)
    portal.inject(400, path=EVENTS)  # …then parked: the snapshot is the new head
    portal.inject(503, times=2, retry_after=None, path=INVENTORY)
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt, backoff_cap=100).run()
    assert (result.delivered, result.parked, result.retries) == (1, 1, 5)
    assert vt.delays == [0.5, 1.0, 2.0, 0.5, 1.0]


# --------------------------------------------------------------------------- 401, 403, 3xx: paused


async def test_a_refused_token_pauses_delivery_until_the_token_is_fixed(portal: PortalStandIn, agent: Agent):
    keys = agent.keys()
    agent.token_file.write_text("tok-an-old-one\n")
    result = await agent.delivery(portal.url, snapshot=True).run()
    assert (result.stopped_because, result.delivered, result.parked, result.retries) == ("paused", 0, 0, 0)
    assert [(r.path, r.status) for r in portal.requests] == [(EVENTS, 401)]  # nothing else tried
    assert result.last_problem is not None and "token" in result.last_problem
    state = agent.outbox.portal_state()
    assert state.state == "unhealthy" and state.reason is not None and "token" in state.reason
    stats = agent.outbox.stats()
    assert (stats.pending, stats.parked, stats.dropped_events, stats.dropped_messages) == (2, 0, 0, 0)
    head = agent.outbox.head()
    assert head is not None and (head.key, head.attempts, head.last_status) == (keys[0], 1, 401)

    again = await agent.delivery(portal.url, snapshot=True).run()  # still the old token
    assert again.stopped_because == "paused" and len(portal.requests) == 2

    agent.token_file.write_text(TOKEN + "\n")
    fixed = await agent.delivery(portal.url, snapshot=True).run()
    assert (fixed.stopped_because, fixed.delivered) == ("empty", 3)  # and a fresh snapshot
    assert len(agent.snapshots) == 1
    assert [m.idempotency_key for m in portal.messages][:2] == keys
    assert agent.outbox.portal_state().state == "ok" and agent.outbox.stats().empty


async def test_403_pauses_and_the_next_run_delivers(portal: PortalStandIn, agent: Agent):
    keys = agent.keys()
    portal.inject(403)
    result = await agent.delivery(portal.url).run()
    assert (result.stopped_because, result.delivered, result.parked) == ("paused", 0, 0)
    assert agent.outbox.portal_state().state == "unhealthy"
    assert agent.keys() == keys and agent.outbox.stats().parked == 0
    result = await agent.delivery(portal.url).run()
    assert (result.stopped_because, result.delivered) == ("empty", 2)
    assert_delivered_once(portal, agent, keys)


@pytest.fixture
async def redirecting() -> Any:
    """A server that answers every POST with a redirect: ``start(status, location)``."""
    runners: list[web.AppRunner] = []
    seen: list[str] = []

    async def start(status: int, location: str) -> str:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            seen.append(request.path)
            return web.Response(status=status, headers={"Location": location + request.path})

        app = web.Application()
        app.router.add_post(EVENTS, handle)
        app.router.add_post(INVENTORY, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    start.seen = seen  # type: ignore[attr-defined]
    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_pauses(
    portal: PortalStandIn, agent: Agent, redirecting: Any, status: int
):
    url = await redirecting(status, portal.url)  # the target would accept the message
    result = await agent.delivery(url).run()
    assert (result.stopped_because, result.delivered) == ("paused", 0)
    assert redirecting.seen == [EVENTS]
    assert portal.requests == []  # the token never went to the Location
    assert result.attempts[0].status == status and "redirects" in result.attempts[0].detail
    assert portal.url in result.attempts[0].detail  # where it wanted the agent to go
    state = agent.outbox.portal_state()
    assert state.state == "unhealthy" and state.reason is not None and "redirects" in state.reason
    assert agent.outbox.stats().pending == 2


# --------------------------------------------------------------------------- other 4xx: parked


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
async def test_a_refused_message_is_parked_and_the_queue_goes_on(
    portal: PortalStandIn, agent: Agent, status: int
):
    events_key, snapshot_key = agent.keys()
    portal.inject(status, path=EVENTS)
    result = await agent.delivery(portal.url, snapshot=True).run()
    assert (result.stopped_because, result.delivered, result.parked, result.retries) == ("empty", 1, 1, 0)
    assert [m.idempotency_key for m in portal.messages] == [snapshot_key]  # not blocked by it
    [parked] = agent.outbox.messages()
    assert (parked.key, parked.state, parked.last_status) == (events_key, "parked", status)
    assert parked.last_error is not None and f"injected fault {status}" in parked.last_error
    assert agent.outbox.stats().parked == 1 and agent.outbox.head() is None
    assert agent.outbox.portal_state().state == "ok"  # the portal is fine; the message is not
    assert agent.snapshots == []  # not an outage

    again = await agent.delivery(portal.url).run()
    assert (again.stopped_because, again.attempts) == ("empty", [])  # parked: not retried unasked
    assert len(portal.requests) == 2

    assert agent.outbox.unpark() == 1
    result = await agent.delivery(portal.url).run()
    assert (result.stopped_because, result.delivered, result.events_delivered) == ("empty", 1, 2)
    assert [r.idempotency_key for r in to(portal, EVENTS)] == [events_key, events_key]
    assert sorted(e.serial or "" for e in portal.events) == ["S00001", "S00002"]
    assert agent.outbox.stats().empty


# --------------------------------------------------------------------------- network faults


async def test_a_slow_reply_times_out_and_the_retry_is_answered_for_the_same_key(
    portal: PortalStandIn, agent: Agent
):
    keys = agent.keys()
    portal.inject("slow", interval=0.3, path=EVENTS)
    vt = VirtualTime()
    started = time.monotonic()
    result = await agent.delivery(portal.url, vt=vt, timeout=0.5).run()
    assert time.monotonic() - started < 3
    assert (result.stopped_because, result.delivered, result.retries) == ("empty", 2, 1)
    first = result.attempts[0]
    assert (first.outcome, first.status) == (Outcome.RETRY, None)
    assert first.detail == f"{portal.url.removeprefix('http://')} did not answer within 0.5 s"
    assert [(r.idempotency_key, r.status, r.fault) for r in to(portal, EVENTS)] == [
        (keys[0], 202, "slow"),
        (keys[0], 200, None),
    ]  # the portal held it; the repeat is a 2xx
    assert_delivered_once(portal, agent, keys)


@pytest.mark.parametrize(("fault", "second"), [("reset", 202), ("reset-after-accept", 200)])
async def test_a_reset_connection_is_retried_and_the_message_arrives_once(
    portal: PortalStandIn, agent: Agent, fault: str, second: int
):
    keys = agent.keys()
    portal.inject(fault, path=EVENTS)
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt).run()
    assert (result.stopped_because, result.delivered, result.retries) == ("empty", 2, 1)
    assert result.attempts[0].outcome is Outcome.RETRY and result.attempts[0].status is None
    assert "cannot reach" in result.attempts[0].detail
    assert [(r.idempotency_key, r.status) for r in to(portal, EVENTS)] == [(keys[0], None), (keys[0], second)]
    assert_delivered_once(portal, agent, keys)


async def test_a_portal_that_is_down_then_back(agent: Agent, tmp_path: Path):
    portal = PortalStandIn(TOKEN).start()
    url = portal.url
    portal.stop()
    try:
        vt = VirtualTime()
        result = await agent.delivery(url, vt=vt).run(deadline=vt.now + 1)
        assert result.stopped_because == "deadline" and result.delivered == 0
        assert all("cannot reach" in a.detail for a in result.attempts)
        assert agent.outbox.portal_state().state == "retrying"
        portal.start()
        result = await agent.delivery(url, snapshot=True).run()
        assert (result.stopped_because, result.delivered) == ("empty", 3)
    finally:
        portal.stop()


# --------------------------------------------------------------------------- TLS


async def test_tls_verified_with_a_custom_ca(agent: Agent, ca: CertAuthority):
    keys = agent.keys()
    with PortalStandIn(TOKEN, tls=ca.server_tls()) as portal:
        assert portal.url.startswith("https://")
        result = await agent.delivery(portal.url, ca_file=ca.path).run()
        assert (result.stopped_because, result.delivered) == ("empty", 2)
        assert_delivered_once(portal, agent, keys)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda ca, tmp: self_signed_tls(tmp / "self"), "self-signed"),
        (lambda ca, tmp: ca.server_tls(hosts=("portal.invalid",)), "mismatch"),
        (lambda ca, tmp: ca.server_tls(expired=True), "expired"),
        (lambda ca, tmp: CertAuthority(tmp / "other").server_tls(), "issuer"),  # a CA nobody trusts
    ],
    ids=["self-signed", "wrong-host", "expired", "unknown-ca"],
)
async def test_a_certificate_that_does_not_verify_is_retried_never_sent(
    agent: Agent, ca: CertAuthority, tmp_path: Path, make: Any, why: str
):
    tls: TlsFiles = make(ca, tmp_path)
    with PortalStandIn(TOKEN, tls=tls) as portal:
        vt = VirtualTime()
        result = await agent.delivery(portal.url, vt=vt, ca_file=ca.path).run(deadline=vt.now + 1)
        assert result.stopped_because == "deadline" and result.delivered == 0
        assert len(result.attempts) >= 2
        for attempt in result.attempts:
            assert attempt.outcome is Outcome.RETRY and attempt.status is None
            assert attempt.detail.startswith("TLS to 127.0.0.1:") and why in attempt.detail
        assert portal.requests == [] and portal.messages == []  # not one byte of the message
    state = agent.outbox.portal_state()
    assert state.state == "retrying" and state.reason is not None and "TLS" in state.reason
    head = agent.outbox.head()
    assert head is not None and head.last_error is not None and "TLS" in head.last_error
    assert agent.outbox.stats().pending == 2


async def test_the_system_trust_store_does_not_trust_a_test_ca(agent: Agent, ca: CertAuthority):
    with PortalStandIn(TOKEN, tls=ca.server_tls()) as portal:
        vt = VirtualTime()
        result = await agent.delivery(portal.url, vt=vt).run(deadline=vt.now + 0.3)
        assert result.delivered == 0 and "TLS" in result.attempts[0].detail
        assert portal.messages == []


async def test_mtls_needs_the_client_certificate(agent: Agent, ca: CertAuthority, tmp_path: Path):
    clients = CertAuthority(tmp_path / "clients", "roomsync client CA")
    cert, key = clients.client_cert("oslo-pi-01")
    with PortalStandIn(TOKEN, tls=ca.server_tls(client_ca=clients)) as portal:
        vt = VirtualTime()
        refused = await agent.delivery(portal.url, vt=vt, ca_file=ca.path).run(deadline=vt.now + 0.5)
        assert refused.stopped_because == "deadline" and refused.delivered == 0
        assert {a.outcome for a in refused.attempts} == {Outcome.RETRY}
        assert portal.messages == []
        result = await agent.delivery(portal.url, ca_file=ca.path, client_cert=cert, client_key=key).run()
        assert (result.stopped_because, result.delivered) == ("empty", 2)
        assert [r.client_cert for r in portal.requests] == ["oslo-pi-01", "oslo-pi-01"]


def test_bad_tls_files_fail_before_anything_is_sent(agent: Agent, ca: CertAuthority, tmp_path: Path):
    url = "https://127.0.0.1:9"
    with pytest.raises(PortalError, match=r"portal CA file .*missing\.pem"):
        agent.delivery(url, ca_file=tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(PortalError, match="portal CA file"):
        agent.delivery(url, ca_file=garbage)
    with pytest.raises(PortalError, match="client certificate"):
        agent.delivery(
            url, ca_file=ca.path, client_cert=tmp_path / "nope.pem", client_key=tmp_path / "nope.key"
        )
    cert, _ = ca.client_cert()
    _, other_key = ca.client_cert("someone-else")
    with pytest.raises(PortalError, match="client certificate"):
        agent.delivery(url, ca_file=ca.path, client_cert=cert, client_key=other_key)


# --------------------------------------------------------------------------- the token


async def test_token_file_problems_stop_the_run_before_any_request(
    portal: PortalStandIn, agent: Agent, tmp_path: Path
):
    missing = tmp_path / "no-such.token"
    with pytest.raises(PortalError, match=r"portal token file .*no-such\.token does not exist"):
        await Delivery(agent.outbox, PortalSettings(portal.url, missing)).run()
    agent.token_file.write_text("two words\n")
    with pytest.raises(PortalError, match="characters a bearer token cannot carry") as caught:
        await agent.delivery(portal.url).run()
    assert "two words" not in str(caught.value)
    assert portal.requests == [] and agent.outbox.stats().pending == 2


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure("debug", "json", stream)
    yield stream
    structlog.reset_defaults()


def assert_no_token(result: RunResult, agent: Agent, log: str, *more: str) -> None:
    """Neither the token nor a piece of it (a shortened detail could cut it)."""
    texts = [
        log,
        repr(result),
        *more,
        repr(agent.outbox.stats().to_dict()),
        *(m.last_error or "" for m in agent.outbox.messages()),
    ]
    for text in texts:
        assert TOKEN not in text and TOKEN[4:14] not in text


async def test_the_token_never_reaches_the_log_the_result_or_the_outbox(
    portal: PortalStandIn, agent: Agent, log_stream: io.StringIO, capsys: pytest.CaptureFixture[str]
):
    for fault in (503, "reset", 500):
        portal.inject(fault, path=EVENTS)
    portal.inject(400, path=INVENTORY)
    portal.inject(401)
    vt = VirtualTime()
    first = await agent.delivery(portal.url, vt=vt, snapshot=True).run()
    assert first.stopped_because == "paused"
    second = await agent.delivery(portal.url, vt=vt, snapshot=True).run()
    assert second.stopped_because == "empty"
    log = log_stream.getvalue()
    lines = [json.loads(line) for line in log.splitlines()]
    assert {line["event"] for line in lines} >= {
        "portal delivery failed; will retry",
        "portal refused message; parked",
        "portal delivery paused",
        "portal accepted message",
    }
    assert all("key" in line and "portal" in line for line in lines)  # what logs may carry
    captured = capsys.readouterr()
    assert_no_token(first, agent, log, captured.out, captured.err)
    assert_no_token(second, agent, log)


async def test_a_portal_that_echoes_the_token_does_not_get_it_logged_or_stored(
    agent: Agent, log_stream: io.StringIO
):
    """A portal's error page may repeat the request's headers; the agent keeps the reply's
    detail with the message and in the log, never the token in it."""
    replies = iter([(503, "try later"), (500, None), (422, "rejected")])
    runner: web.AppRunner | None = None

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        status, word = next(replies)
        sent = request.headers.get("Authorization")
        if word is None:  # a plain error page, the token where shortening would cut it
            return web.Response(
                status=status, text="x" * 248 + f" headers: Authorization: {sent}", content_type="text/html"
            )
        detail = f"{word}; you sent Authorization: {sent}"
        return web.json_response({"title": "Nope", "status": status, "detail": detail}, status=status)

    try:
        app = web.Application()
        app.router.add_post(EVENTS, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        vt = VirtualTime()
        result = await agent.delivery(url, vt=vt).run(deadline=vt.now + 10)
    finally:
        if runner is not None:
            await runner.cleanup()
    assert [a.status for a in result.attempts] == [503, 500, 422, 404]  # no route for the snapshot
    assert "rejected" in result.attempts[2].detail and "Bearer ********" in result.attempts[2].detail
    assert result.attempts[1].detail.endswith("Authorization: Bearer ********")  # masked, then cut
    parked = agent.outbox.messages()[0]
    assert parked.state == "parked" and parked.last_error is not None and "rejected" in parked.last_error
    assert_no_token(result, agent, log_stream.getvalue(), agent.outbox.portal_state().reason or "")


# --------------------------------------------------------------------------- deadline, stop


async def test_the_deadline_ends_a_run_against_a_failing_portal(portal: PortalStandIn, agent: Agent):
    portal.inject(503, times=1000, retry_after=1)
    started = time.monotonic()
    result = await agent.delivery(portal.url, backoff_cap=900).run(deadline=started + 2)
    elapsed = time.monotonic() - started
    assert result.stopped_because == "deadline"
    assert elapsed <= 3.0
    assert 1 <= len(portal.requests) == len(result.attempts)
    assert result.last_problem is not None and "HTTP 503" in result.last_problem
    assert agent.outbox.stats().pending == 2


async def test_stop_ends_a_run_waiting_on_backoff(portal: PortalStandIn, agent: Agent):
    portal.inject(503, times=1000, retry_after=60)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.delivery(portal.url, backoff_cap=900).run(stop=stop))
    for _ in range(500):
        if portal.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not task.done()  # waiting out Retry-After: 60
    stopped_at = time.monotonic()
    stop.set()
    result = await asyncio.wait_for(task, 2)
    assert time.monotonic() - stopped_at < 1.0
    assert (result.stopped_because, result.delivered, len(portal.requests)) == ("stopped", 0, 1)
    assert agent.outbox.stats().pending == 2
    again = await agent.delivery(portal.url).run(stop=stop)  # already set: nothing sent
    assert again.stopped_because == "stopped" and len(portal.requests) == 1


# --------------------------------------------------------------------------- after an outage


async def test_a_fresh_snapshot_once_the_queue_drains_after_an_outage(portal: PortalStandIn, agent: Agent):
    keys = agent.keys()
    portal.inject(503, times=2, retry_after=None, path=EVENTS)
    vt = VirtualTime()
    result = await agent.delivery(portal.url, vt=vt, snapshot=True).run()
    assert (result.stopped_because, result.delivered) == ("empty", 3)
    assert len(agent.snapshots) == 1
    assert [m.schema for m in portal.messages] == [
        "roomsync.events.v1",
        "roomsync.inventory.v1",
        "roomsync.inventory.v1",
    ]
    assert [m.idempotency_key for m in portal.messages][:2] == keys
    latest = portal.latest_inventory
    assert latest is not None and latest.sequence == max(m.message.sequence for m in portal.messages)
    assert portal.messages[-1].message is latest
    assert agent.outbox.stats().empty and not agent.outbox.take_outage()
    again = await agent.delivery(portal.url, snapshot=True).run()
    assert again.delivered == 0 and len(agent.snapshots) == 1  # once per outage


# --------------------------------------------------------------------------- the store fails


async def test_a_locked_store_ends_the_run_with_an_error_and_nothing_sent(
    portal: PortalStandIn, agent: Agent
):
    holder = sqlite3.connect(agent.store.path.parent / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = await agent.delivery(portal.url).run()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.stopped_because == "error" and result.last_problem is not None
    assert "is locked" in result.last_problem
    assert portal.requests == []
    result = await agent.delivery(portal.url).run()
    assert (result.stopped_because, result.delivered) == ("empty", 2)


# --------------------------------------------------------------------------- the contract as functions


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (301, Outcome.PAUSE),
        (302, Outcome.PAUSE),
        (307, Outcome.PAUSE),
        (308, Outcome.PAUSE),
        (401, Outcome.PAUSE),
        (403, Outcome.PAUSE),
        (400, Outcome.PARK),
        (404, Outcome.PARK),
        (405, Outcome.PARK),
        (409, Outcome.PARK),
        (413, Outcome.PARK),
        (415, Outcome.PARK),
        (422, Outcome.PARK),
        (499, Outcome.PARK),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
        (599, Outcome.RETRY),
        (100, Outcome.RETRY),
        (199, Outcome.RETRY),
        (600, Outcome.RETRY),
        (999, Outcome.RETRY),
    ],
)
def test_classify(status: int, outcome: Outcome):
    assert classify(status) is outcome


NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "date", "seconds"),
    [
        ("120", None, 120.0),
        (" 5 ", None, 5.0),
        ("0", None, 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:29:00 GMT", "Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # the reply's Date…
        ("Wed, 21 Oct 2015 07:28:45 GMT", None, 45.0),  # …else now
        ("Wed, 21 Oct 2015 07:27:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # past
        ("Wed, 21 Oct 2015 07:27:00 GMT", None, 0.0),
        ("soon", None, 0.0),
        ("-5", None, 0.0),
        ("1.5", None, 0.0),
        ("", None, 0.0),
        (None, None, 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", "garbage", 0.0),
    ],
)
def test_retry_after_seconds(value: str | None, date: str | None, seconds: float):
    assert retry_after_seconds(value, date, NOW) == seconds


@given(
    failures=st.integers(1, 200),
    cap=st.floats(0, 1e6),
    retry_after=st.floats(0, 1e7),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_backoff_delay_properties(failures: int, cap: float, retry_after: float, draw: float):
    delay = backoff_delay(failures, cap, retry_after, lambda: draw)
    assert 0 <= delay <= cap
    assert delay >= min(cap, retry_after)  # never sooner than the portal asked, unless capped
    plain = backoff_delay(failures, cap, 0.0, lambda: draw)
    assert plain <= min(cap, 2.0 ** (failures - 1))
    assert plain == pytest.approx(draw * min(cap, 2.0 ** min(failures - 1, 60)))  # full jitter


def test_backoff_delay_counts_from_one():
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, 10)
    assert backoff_delay(1, 900, rng=lambda: 0.999) < 1.0
    assert backoff_delay(10, 900, rng=lambda: 0.999) == pytest.approx(0.999 * 512)
    assert backoff_delay(40, 900, rng=lambda: 0.999) == pytest.approx(0.999 * 900)
    assert backoff_delay(40, 900, 5000, rng=lambda: 0.0) == 900


async def test_a_portals_escape_sequences_never_reach_the_outbox_or_the_terminal(
    agent: Agent, capsys: pytest.CaptureFixture[str]
):
    """A portal (or what stands between) answering with ANSI escapes and control characters:
    the detail kept in the outbox and shown by ``roomsync outbox`` has none of them."""
    hostile = "\x1b[31mDISK FULL\x1b[0m\x07\r\x1b[2Kall good\x00"

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        problem = {"title": "oops", "detail": hostile}
        return web.json_response(problem, status=400)

    app = web.Application()
    app.router.add_post(EVENTS, handle)
    app.router.add_post(INVENTORY, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        result = await agent.delivery(url).run()
    finally:
        await runner.cleanup()
    assert result.parked == 2
    details = [m.last_error or "" for m in agent.outbox.messages()] + [a.detail for a in result.attempts]
    assert details and all("DISK FULL" in d and "all good" in d for d in details)
    assert not any(ch in d for d in details for ch in "\x1b\x07\r\x00")

    from agent.cli.common import table
    from agent.cli.push import print_outbox_summary

    print(table(["LAST ERROR"], [[hostile]]))
    print_outbox_summary(agent.outbox.stats(), "paused", hostile)
    shown = capsys.readouterr().out
    assert "DISK FULL" in shown and not any(ch in shown for ch in "\x1b\x07\r\x00")
