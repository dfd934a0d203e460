"""The portal stand-in (``tools/portal_standin.py``) keeps the portal's side of
``docs/portal-api.md``: bearer token, gzip JSON, validation with the models, de-duplication by
``Idempotency-Key`` and event id, every injectable fault, and TLS that verifies only with the
test CA. Clients here are aiohttp (async tests) and urllib (sync tests, a subprocess)."""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.catalog import load_catalog
from agent.inventory import summarize_rooms
from agent.model import Device, Room, Transport
from agent.uploader.protocol import (
    AgentInfo,
    EventsMessage,
    EventType,
    InventoryMessage,
    event_out,
    events_message,
    gzip_body,
    inventory_message,
    serialize,
)
from tools import portal_standin
from tools.portal_standin import CertAuthority, PortalStandIn, TlsFiles, client_context, self_signed_tls

TOKEN = "s3cret-token-4f1d"
NOW = datetime(2025, 3, 4, 9, 30, tzinfo=UTC)
AGENT = AgentInfo(id="site-oslo-pi-01", version="0.1.0", hostname="oslo-pi-01")
INVENTORY, EVENTS = "/v1/inventory", "/v1/events"
BAR = Device(
    product="Rally Bar",
    transport=Transport.USB,
    address="2-1.1",
    first_seen=NOW,
    last_seen=NOW,
    serial="2313FD1N08Z2",
    serial_label_grade=True,
    room="oslo-4-12",
)


def inventory(sequence: int = 1) -> InventoryMessage:
    report = summarize_rooms([BAR], load_catalog(), [Room("oslo-4-12", name="Fjord")])
    return inventory_message(AGENT, sequence, NOW, report)


def events(*ids: int, sequence: int = 2) -> EventsMessage:
    return events_message(
        AGENT,
        sequence,
        NOW,
        [
            event_out(
                EventType.FIRMWARE_CHANGED,
                NOW,
                BAR,
                before={"firmware": "1.8"},
                after={"firmware": "1.9"},
                event_id=uuid.UUID(int=i),
            )
            for i in ids
        ],
    )


def headers(key: str | None = "key-1", token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    out = {"Content-Type": "application/json", "Content-Encoding": "gzip", **extra}
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    if key is not None:
        out["Idempotency-Key"] = key
    return out


def body(message: InventoryMessage | EventsMessage | None = None) -> bytes:
    return gzip_body(serialize(message if message is not None else inventory()))


async def post(
    url: str,
    data: bytes | None = None,
    hdrs: dict[str, str] | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One POST with aiohttp: status, headers and the JSON reply."""
    data = body() if data is None else data
    hdrs = headers() if hdrs is None else hdrs
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    async with (
        aiohttp.ClientSession(timeout=timeout or aiohttp.ClientTimeout(total=5)) as session,
        session.post(url, data=data, headers=hdrs, ssl=verify) as reply,
    ):
        return reply.status, dict(reply.headers), json.loads(await reply.read())


def post_sync(url: str, data: bytes, hdrs: dict[str, str], timeout: float = 5) -> tuple[int, dict[str, Any]]:
    """One POST with urllib, from a plain synchronous test."""
    request = urllib.request.Request(url, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def portal() -> Iterator[PortalStandIn]:
    with PortalStandIn(TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- life cycle


def test_starts_in_milliseconds_on_loopback_and_stops() -> None:
    started = time.perf_counter()
    with PortalStandIn(TOKEN) as one, PortalStandIn(TOKEN) as two:
        assert time.perf_counter() - started < 0.5
        assert one.url.startswith("http://127.0.0.1:") and one.port != two.port
        assert TOKEN not in repr(one)
        port = one.port
    one.stop()  # twice is harmless
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(RuntimeError, match="not started"):
        _ = PortalStandIn(TOKEN).url
    with pytest.raises(ValueError, match="token"):
        PortalStandIn("")


def test_restarted_on_the_same_port_with_its_records(portal: PortalStandIn) -> None:
    url = portal.url
    assert post_sync(url + INVENTORY, body(), headers())[0] == 202
    portal.stop()
    with pytest.raises(urllib.error.URLError, match="refused"):
        post_sync(url + INVENTORY, body(), headers())
    portal.start()  # the portal is back
    assert portal.url == url
    assert post_sync(url + INVENTORY, body(), headers()) == (
        200,
        {"status": "duplicate", "idempotency_key": "key-1"},
    )
    assert len(portal.inventory) == 1


def test_a_running_stand_in_cannot_be_started_twice(portal: PortalStandIn) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        portal.start()


def test_usable_from_a_synchronous_test(portal: PortalStandIn) -> None:
    assert post_sync(portal.url + INVENTORY, body(), headers()) == (
        202,
        {"status": "accepted", "idempotency_key": "key-1"},
    )
    assert portal.wait_for(lambda p: len(p.inventory) == 1, timeout=1)
    assert not portal.wait_for(lambda p: len(p.inventory) == 2, timeout=0.05)


def test_usable_by_an_agent_in_another_process(portal: PortalStandIn, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "body.gz").write_bytes(body())
    script = (
        "import sys, urllib.request, pathlib\n"
        "d = pathlib.Path(sys.argv[2])\n"
        "token = (d / 'token').read_text().strip()\n"
        "data = (d / 'body.gz').read_bytes()\n"
        "r = urllib.request.Request(sys.argv[1], data=data, method='POST', headers={\n"
        "    'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json',\n"
        "    'Content-Encoding': 'gzip', 'Idempotency-Key': 'from-a-subprocess'})\n"
        "print(urllib.request.urlopen(r, timeout=5).status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, portal.url + INVENTORY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "202", done.stderr
    assert [a.idempotency_key for a in portal.messages] == ["from-a-subprocess"]


# --------------------------------------------------------------------------- accepting


async def test_accepts_and_records_an_inventory(portal: PortalStandIn) -> None:
    message = inventory(sequence=5)
    status, _, reply = await post(portal.url + INVENTORY, body(message))
    assert (status, reply) == (202, {"status": "accepted", "idempotency_key": "key-1"})
    assert portal.inventory == [message]
    (request,) = portal.requests
    assert (request.method, request.path, request.status, request.fault) == ("POST", INVENTORY, 202, None)
    assert request.idempotency_key == "key-1" and request.body_bytes == len(body(message))
    assert request.headers["Authorization"] == "Bearer <redacted>"
    assert request.headers["Content-Encoding"] == "gzip"
    assert TOKEN not in repr(portal.requests) and TOKEN not in repr(portal.messages)


async def test_a_repeated_idempotency_key_is_answered_200_not_recorded_twice(portal: PortalStandIn) -> None:
    assert (await post(portal.url + INVENTORY))[0] == 202
    status, _, reply = await post(portal.url + INVENTORY)
    assert (status, reply["status"]) == (200, "duplicate")
    assert len(portal.inventory) == 1 and [r.status for r in portal.requests] == [202, 200]
    # the same key with another body is a client bug
    status, hdrs, reply = await post(portal.url + INVENTORY, body(inventory(sequence=2)))
    assert status == 422 and hdrs["Content-Type"] == "application/problem+json"
    assert "another body" in reply["detail"] and len(portal.inventory) == 1


async def test_events_are_kept_once_per_event_id(portal: PortalStandIn) -> None:
    assert (await post(portal.url + EVENTS, body(events(1, 2)), headers("a")))[2]["events"] == 2
    status, _, reply = await post(portal.url + EVENTS, body(events(2, 3, sequence=3)), headers("b"))
    assert (status, reply["events"]) == (202, 1)
    assert [e.id.int for e in portal.events] == [1, 2, 3]
    assert [a.schema for a in portal.messages] == ["roomsync.events.v1"] * 2


async def test_the_latest_inventory_is_the_highest_sequence(portal: PortalStandIn) -> None:
    await post(portal.url + INVENTORY, body(inventory(sequence=9)), headers("late-9"))
    await post(portal.url + INVENTORY, body(inventory(sequence=4)), headers("late-4"))
    assert [m.sequence for m in portal.inventory] == [9, 4]
    latest = portal.latest_inventory
    assert latest is not None and latest.sequence == 9
    portal.clear()
    assert (portal.inventory, portal.requests, portal.latest_inventory) == ([], [], None)
    assert (await post(portal.url + INVENTORY, body(inventory(sequence=9)), headers("late-9")))[0] == 202


# --------------------------------------------------------------------------- refusing


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", ""])
async def test_a_missing_or_wrong_token_is_401(portal: PortalStandIn, auth: str | None) -> None:
    hdrs = headers(token=None)
    if auth is not None:
        hdrs["Authorization"] = auth
    status, reply_headers, reply = await post(portal.url + INVENTORY, body(), hdrs)
    assert status == 401 and reply_headers["WWW-Authenticate"].startswith("Bearer ")
    assert reply["status"] == 401 and portal.inventory == []


async def test_the_bearer_scheme_is_case_insensitive(portal: PortalStandIn) -> None:
    hdrs = headers(token=None, Authorization=f"bearer {TOKEN}")
    assert (await post(portal.url + INVENTORY, body(), hdrs))[0] == 202


def _truncated() -> bytes:
    return body()[:-6]


@pytest.mark.parametrize(
    ("data", "hdrs", "status", "detail"),
    [
        (serialize(inventory()), headers(), 400, "not gzip"),
        (
            serialize(inventory()),
            {k: v for k, v in headers().items() if k != "Content-Encoding"},
            415,
            "gzip",
        ),
        (body(), headers(**{"Content-Encoding": "br"}), 415, "gzip"),
        (body(), headers(**{"Content-Type": "text/plain"}), 415, "application/json"),
        (_truncated(), headers(), 400, "truncated"),
        (body() + b"junk", headers(), 400, "after the gzip member"),
        (gzip.compress(b"{not json"), headers(), 400, "not JSON"),
        (gzip.compress(b"[]"), headers(), 400, "does not match"),
        (body(), headers(key=None), 400, "Idempotency-Key"),
        (body(), headers(key="x" * 256), 400, "Idempotency-Key"),
        (body(), headers(key="two words"), 400, "Idempotency-Key"),
        (body(events(1)), headers(), 400, "does not match roomsync.inventory.v1"),
    ],
)
async def test_malformed_requests_are_refused_and_not_recorded(
    portal: PortalStandIn, data: bytes, hdrs: dict[str, str], status: int, detail: str
) -> None:
    got, _, reply = await post(portal.url + INVENTORY, data, hdrs)
    assert (got, detail in reply["detail"]) == (status, True), reply
    assert portal.messages == [] and portal.requests[0].status == status


async def test_a_charset_parameter_is_fine(portal: PortalStandIn) -> None:
    hdrs = headers(**{"Content-Type": "application/json; charset=utf-8"})
    assert (await post(portal.url + INVENTORY, body(), hdrs))[0] == 202


async def test_a_schema_violation_lists_the_errors(portal: PortalStandIn) -> None:
    doc = json.loads(serialize(inventory()))
    doc["places"][0]["devices"][0]["warranty"] = "yes"
    doc["sequence"] = "1"
    status, _, reply = await post(portal.url + INVENTORY, gzip.compress(json.dumps(doc).encode()))
    assert status == 400
    assert {(tuple(e["loc"]), e["type"]) for e in reply["errors"]} == {
        (("places", 0, "devices", 0, "warranty"), "extra_forbidden"),
        (("sequence",), "int_type"),
    }


async def test_a_gzip_bomb_stops_at_the_limit(portal: PortalStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portal_standin, "MAX_JSON_BYTES", 1000)
    status, _, reply = await post(portal.url + INVENTORY, gzip.compress(b" " * 5000 + b"{}"))
    assert status == 413 and "1000" in reply["detail"]


async def test_other_paths_and_methods(portal: PortalStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(portal.url + INVENTORY) as reply:
            assert reply.status == 405
        async with session.post(portal.url + "/v2/inventory", data=body(), headers=headers()) as reply:
            assert reply.status == 404
    assert portal.messages == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", [500, "500", 401, 400, 403, 408, 502])
async def test_a_status_fault_answers_once_and_records_nothing(
    portal: PortalStandIn, fault: int | str
) -> None:
    portal.inject(fault)
    assert portal.pending_faults == [str(fault)]
    status, hdrs, reply = await post(portal.url + INVENTORY)
    assert (status, reply["detail"]) == (int(fault), f"injected fault {fault}")
    assert "Retry-After" not in hdrs and portal.messages == []
    assert portal.requests[0].fault == str(fault) and portal.pending_faults == []
    assert (await post(portal.url + INVENTORY))[0] == 202  # the fault is used up


@pytest.mark.parametrize(
    ("fault", "retry_after", "header"),
    [
        (503, 1, "1"),
        (503, 0, "0"),
        (429, 7, "7"),
        (429, 2.5, "2.5"),
        (503, "Wed, 21 Oct 2037 07:28:00 GMT", "Wed, 21 Oct 2037 07:28:00 GMT"),
        (503, None, None),
    ],
)
async def test_503_and_429_carry_retry_after(
    portal: PortalStandIn, fault: int, retry_after: Any, header: str | None
) -> None:
    portal.inject(fault, retry_after=retry_after)
    status, hdrs, _ = await post(portal.url + INVENTORY)
    assert (status, hdrs.get("Retry-After")) == (fault, header)


async def test_faults_are_used_in_order_and_can_target_one_path(portal: PortalStandIn) -> None:
    portal.inject(503, times=2)
    portal.inject(429, path=EVENTS)
    portal.inject(500)
    assert portal.pending_faults == ["503", "503", "429", "500"]
    got = [(await post(portal.url + INVENTORY, body(inventory(i)), headers(f"k{i}")))[0] for i in range(1, 5)]
    assert got == [503, 503, 500, 202] and portal.pending_faults == ["429"]
    assert (await post(portal.url + EVENTS, body(events(1)), headers("e")))[0] == 429


@pytest.mark.parametrize(
    ("fault", "kw"), [("timeout", {}), (200, {}), (302, {}), (600, {}), (500, {"times": 0})]
)
def test_unknown_faults_are_refused(portal: PortalStandIn, fault: Any, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        portal.inject(fault, **kw)
    assert portal.pending_faults == []


async def test_slow_reply_times_the_client_out_but_the_message_is_held(portal: PortalStandIn) -> None:
    portal.inject("slow", interval=0.3)
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one
        await post(portal.url + INVENTORY, timeout=aiohttp.ClientTimeout(total=5, sock_read=0.1))
    assert time.perf_counter() - started < 1
    # the portal accepted it before the reply stalled: the retry is a duplicate, answered 200
    assert len(portal.inventory) == 1 and portal.requests[0].fault == "slow"
    status, _, reply = await post(portal.url + INVENTORY)
    assert (status, reply["status"], len(portal.inventory)) == (200, "duplicate", 1)


async def test_a_patient_client_gets_the_whole_slow_reply(portal: PortalStandIn) -> None:
    portal.inject("slow", interval=0.002)
    started = time.perf_counter()
    status, _, reply = await post(portal.url + INVENTORY)
    assert (status, reply["status"]) == (202, "accepted")
    assert time.perf_counter() - started > 0.002 * len(json.dumps(reply))


async def test_a_slow_error_reply_is_slow_too(portal: PortalStandIn) -> None:
    portal.inject("slow", interval=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await post(
            portal.url + INVENTORY,
            body(),
            headers(token="wrong"),
            timeout=aiohttp.ClientTimeout(total=5, sock_read=0.1),
        )
    assert portal.messages == [] and portal.requests[0].status == 401


async def test_reset_closes_the_connection_without_a_reply(portal: PortalStandIn) -> None:
    portal.inject("reset")
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await post(portal.url + INVENTORY)
    assert caught.value.errno == errno.ECONNRESET  # a reset (RST), not an orderly close
    assert portal.messages == []
    (request,) = portal.requests
    assert (request.fault, request.status) == ("reset", None)
    assert (await post(portal.url + INVENTORY))[0] == 202


def test_reset_seen_by_urllib_is_a_connection_error(portal: PortalStandIn) -> None:
    portal.inject("reset")
    with pytest.raises(ConnectionResetError):
        post_sync(portal.url + INVENTORY, body(), headers())


async def test_reset_after_accept_loses_the_reply_not_the_message(portal: PortalStandIn) -> None:
    portal.inject("reset-after-accept")
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await post(portal.url + INVENTORY)
    assert caught.value.errno == errno.ECONNRESET
    assert len(portal.inventory) == 1
    status, _, reply = await post(portal.url + INVENTORY)
    assert (status, reply["status"], len(portal.inventory)) == (200, "duplicate", 1)


# --------------------------------------------------------------------------- TLS


async def test_tls_verifies_with_the_test_ca(ca: CertAuthority) -> None:
    with PortalStandIn(TOKEN, tls=ca.server_tls()) as portal:
        assert portal.url.startswith("https://127.0.0.1:")
        status, _, _ = await post(portal.url + INVENTORY, ssl_context=client_context(ca.path))
        assert status == 202 and len(portal.inventory) == 1
        # without the test CA (the system's trust store only) the same server does not verify
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(portal.url + INVENTORY, ssl_context=client_context())
        assert len(portal.requests) == 1


def test_tls_from_urllib(ca: CertAuthority) -> None:
    with PortalStandIn(TOKEN, tls=ca.server_tls()) as portal:
        request = urllib.request.Request(
            portal.url + INVENTORY, data=body(), headers=headers(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5, context=client_context(ca.path)) as reply:
            assert reply.status == 202


def _self_signed(ca: CertAuthority) -> TlsFiles:
    return self_signed_tls(ca.directory)


def _other_host(ca: CertAuthority) -> TlsFiles:
    return ca.server_tls(hosts=("portal.invalid",))


def _expired(ca: CertAuthority) -> TlsFiles:
    return ca.server_tls(expired=True)


def _other_ca(ca: CertAuthority) -> TlsFiles:
    return CertAuthority(ca.directory / "other", "another CA").server_tls()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_self_signed, "self-signed certificate"),
        (_other_host, "IP address mismatch"),
        (_expired, "certificate has expired"),
        (_other_ca, "unable to get local issuer certificate"),
    ],
)
async def test_a_certificate_that_does_not_verify_is_refused(ca: CertAuthority, make: Any, why: str) -> None:
    with PortalStandIn(TOKEN, tls=make(ca)) as portal:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await post(portal.url + INVENTORY, ssl_context=client_context(ca.path))
        assert why in str(caught.value)
        assert portal.requests == [] and portal.messages == []


async def test_a_wrong_host_certificate_is_fine_for_its_own_name(ca: CertAuthority) -> None:
    # the certificate of _other_host is valid, only for another name: the refusal above is the name's
    context = client_context(ca.path)
    context.check_hostname = False
    with PortalStandIn(TOKEN, tls=_other_host(ca)) as portal:
        assert (await post(portal.url + INVENTORY, ssl_context=context))[0] == 202


async def test_mtls_requires_a_client_certificate_from_the_client_ca(ca: CertAuthority) -> None:
    clients = CertAuthority(ca.directory / "clients", "client CA")
    strangers = CertAuthority(ca.directory / "strangers", "stranger CA")
    with PortalStandIn(TOKEN, tls=ca.server_tls(client_ca=clients)) as portal:
        cert, key = clients.client_cert("oslo-pi-01")
        good = client_context(ca.path, cert=cert, key=key)
        assert (await post(portal.url + INVENTORY, ssl_context=good))[0] == 202
        assert portal.requests[0].client_cert == "oslo-pi-01"
        other_cert, other_key = strangers.client_cert()
        for refused in (client_context(ca.path), client_context(ca.path, cert=other_cert, key=other_key)):
            with pytest.raises(aiohttp.ClientError):
                await post(portal.url + INVENTORY, ssl_context=refused)
        assert len(portal.requests) == 1 and len(portal.inventory) == 1
