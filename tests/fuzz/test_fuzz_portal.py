"""Fuzz: what the portal sends back (agent/uploader/delivery.py) and the portal protocol's
reader (agent/uploader/protocol.py ``parse_message``).

Replies: any status, reason phrase, ``Retry-After``, ``Date``, ``Location``, ``Content-Type``
charset (base64, rot13 and idna are codecs Python knows but cannot decode text with) and body
(problem JSON, an error page echoing the token, bytes, nesting bombs) — from the pure functions
up to :meth:`PortalTransport._send` against a real HTTP server on loopback. Documented behaviour:
``classify`` maps any status; ``retry_after_seconds`` returns seconds (≥ 0, finite), "0 when
absent, unreadable or in the past"; a reply becomes an :class:`Attempt` — a network failure
too — and its detail is capped and never holds the token.

``parse_message``: "Raises :class:`pydantic.ValidationError` or :class:`ValueError`".
"""

from __future__ import annotations

import asyncio
import json
import math
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.model import Device, Transport
from agent.sanitize import MASK
from agent.uploader.delivery import (
    MAX_DETAIL_CHARS,
    Attempt,
    Outcome,
    PortalSettings,
    PortalTransport,
    _problem_detail,
    classify,
    retry_after_seconds,
)
from agent.uploader.protocol import (
    SCHEMA_EVENTS,
    SCHEMA_INVENTORY,
    AgentInfo,
    InventoryMessage,
    change_event_out,
    device_out,
    events_message,
    parse_message,
    serialize,
)
from tests.fuzz import HOSTILE_JSON_TEXT, JSON_TREES, fuzz, mutated, mutated_tree

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
#: Bearer tokens as RFC 6750 writes them (b64token): what a token file holds.
TOKENS = st.text(string.ascii_letters + string.digits + "-._~+/", min_size=16, max_size=64)
DETAIL_MAX = 2 * MAX_DETAIL_CHARS + 64  # "HTTP nnn <reason>: <detail>", both shortened


# --------------------------------------------------------------------------- pure functions


@fuzz(140)
@given(st.integers(-(2**70), 2**70) | st.integers(0, 1000))
def test_classify_maps_every_status(status: int) -> None:
    assert classify(status) in set(Outcome)


_DAYS = st.sampled_from(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Xyz", ""])
_MONTHS = st.sampled_from(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo", ""]
)


@st.composite
def http_dates(draw: st.DrawFn) -> str:
    """HTTP-dates and near misses: any day, year, time and zone."""
    day, month = draw(_DAYS), draw(_MONTHS)
    dom = draw(st.integers(-1, 40))
    year = draw(st.integers(-10, 100_000) | st.integers(1900, 2100))
    hh, mm, ss = draw(st.integers(-1, 99)), draw(st.integers(-1, 99)), draw(st.integers(-1, 99))
    zone = draw(
        st.sampled_from(
            ["GMT", "UTC", "+0000", "-9999", "+2400", "EST", "", "Z", "+99999", "+99999999999999999999"]
        )
    )
    return f"{day}, {dom:02d} {month} {year} {hh:02d}:{mm:02d}:{ss:02d} {zone}".strip()


RETRY_AFTER = st.one_of(
    st.none(),
    st.text(max_size=40),
    http_dates(),
    st.integers(0, 10**6).map(str),
    st.integers(300, 6000).map(lambda n: "9" * n),
    st.sampled_from(["²", "٣", "１２", " 120 ", "-1", "1.5", "0x10", "1e3", "\u00a0 7"]),
)


@fuzz(280)
@given(
    RETRY_AFTER,
    st.none() | http_dates() | st.text(max_size=30),
    st.datetimes(timezones=st.just(UTC)) | st.none(),
)
@example("²", None, None)  # a digit int() refuses: was a ValueError
@example("1" * 400, None, None)  # was an OverflowError (int too large for a float)
@example("9" * 5000, None, None)  # was a ValueError (integer string conversion limit)
@example("Mon, 01 Jan 99999 00:00:00 GMT", None, NOW)
@example("Mon, 01 Jan 2020 00:00:00 +99999999999999999999", None, NOW)  # was an OverflowError
def test_retry_after_is_finite_seconds_or_zero(
    value: str | None, reply_date: str | None, now: datetime | None
) -> None:
    seconds = retry_after_seconds(value, reply_date, now or NOW)
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0.0


BODIES = st.one_of(
    st.text(max_size=400),
    st.binary(max_size=400).map(lambda b: b.decode("utf-8", "replace")),
    JSON_TREES.map(json.dumps),
    st.builds(
        lambda k, v: json.dumps({k: v}),
        st.sampled_from(["detail", "title", "error", "message"]),
        st.text(max_size=600) | JSON_TREES,
    ),
    HOSTILE_JSON_TEXT,
)


def _echoing(token: str, body: str, where: int) -> str:
    """``body`` with the token put in at ``where`` (an error page echoing the request)."""
    where = min(where, len(body))
    return body[:where] + token + body[where:]


@fuzz(210)
@given(BODIES, TOKENS, st.integers(0, 500), st.booleans())
@example("[" * 3000, "t" * 20, 0, False)  # was a RecursionError out of json
@example(json.dumps({"detail": "x" * 298 + "TOKEN"}), "TOKEN" * 4, 298, True)
def test_problem_detail_is_short_and_masks_the_token(body: str, token: str, where: int, echo: bool) -> None:
    if echo:
        body = _echoing(token, body, where)
    detail = _problem_detail(body, token)
    assert len(detail) <= MAX_DETAIL_CHARS
    assert token not in detail


@fuzz(210)
@given(
    st.integers(100, 999),
    st.none() | st.text(max_size=80),
    BODIES,
    st.none() | st.text(max_size=400),
    TOKENS,
    st.sampled_from(["reason", "body", "location", "none"]),
    st.integers(0, 400),
)
@example(500, "Internal error for token TOKENTOKENTOKENTOKEN", "", None, "TOKENTOKENTOKENTOKEN", "none", 0)
def test_reply_detail_never_echoes_the_token(
    status: int, reason: str | None, body: str, location: str | None, token: str, echo: str, where: int
) -> None:
    if echo == "reason":
        reason = _echoing(token, reason or "", where)
    elif echo == "body":
        body = _echoing(token, body, where)
    elif echo == "location":
        location = _echoing(token, location or "https://p/", where)
    detail = PortalTransport._detail(status, reason, body, location, token)
    assert token not in detail
    assert len(detail) <= DETAIL_MAX
    assert detail.startswith(f"HTTP {status}")


# --------------------------------------------------------------------------- replies over HTTP

_CHARSETS = st.sampled_from(
    [
        "utf-8",
        "latin-1",
        "utf-16",
        "base64",
        "rot13",
        "idna",
        "hex",
        "zlib",
        "punycode",
        "bogus",
        "",
        "utf-8; q=1",
        '"utf-8"',
    ]
)


@st.composite
def replies(draw: st.DrawFn, token: str) -> dict[str, Any]:
    status = draw(
        st.integers(200, 599)
        | st.sampled_from([200, 202, 301, 308, 401, 403, 404, 409, 413, 422, 429, 500, 503, 600, 999])
    )
    headers = {
        "Content-Type": f"{draw(st.sampled_from(['text/plain', 'application/json', 'text/html', '']))}"
        f"; charset={draw(_CHARSETS)}"
    }
    for name, values in (
        ("Retry-After", RETRY_AFTER.filter(bool)),
        ("Date", http_dates()),
        ("Location", st.text(string.printable.strip(), max_size=60)),
    ):
        if draw(st.booleans()):
            value = draw(values)
            headers[name] = (
                value.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")
            )
    body = draw(BODIES)
    if draw(st.booleans()):
        body = _echoing(token, body, draw(st.integers(0, 300)))
    raw = body.encode("utf-8") if draw(st.booleans()) else draw(st.binary(max_size=300))
    reason = draw(st.none() | st.text(string.ascii_letters + " ", max_size=40) | st.just(f"Bad {token}"))
    return {
        "status": status,
        "headers": headers,
        "body": raw,
        "reason": reason,
        "drop": draw(st.integers(0, 9)) == 0,
    }


def _transport(port: int) -> PortalTransport:
    settings = PortalSettings(f"http://127.0.0.1:{port}", Path("/nonexistent/token"), timeout=5.0)
    return PortalTransport(settings, now=lambda: NOW)


async def _send_once(reply: dict[str, Any], token: str) -> Attempt:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if reply["drop"]:
            assert request.transport is not None
            request.transport.close()  # the portal hangs up mid-request
        return web.Response(
            body=reply["body"], status=reply["status"], reason=reply["reason"], headers=reply["headers"]
        )

    app = web.Application()
    app.router.add_post("/v1/events", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        transport = _transport(runner.addresses[0][1])
        message = SimpleNamespace(schema=SCHEMA_EVENTS, body=b"\x1f\x8b", key="k-1")
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5.0), auto_decompress=True, trust_env=False
        ) as session:
            return await transport._send(session, token, message)  # type: ignore[arg-type]
    finally:
        await runner.cleanup()


@fuzz(50, deadline=timedelta(seconds=10))
@given(st.data(), TOKENS)
def test_any_reply_becomes_an_attempt_without_the_token(data: st.DataObject, token: str) -> None:
    reply = data.draw(replies(token), label="reply")
    attempt = asyncio.run(_send_once(reply, token))
    assert isinstance(attempt, Attempt)
    assert token not in attempt.detail
    assert len(attempt.detail) <= DETAIL_MAX
    assert math.isfinite(attempt.retry_after) and attempt.retry_after >= 0
    if attempt.status is not None:
        assert attempt.outcome is classify(attempt.status)
    else:
        assert attempt.outcome is Outcome.RETRY


def test_a_reply_in_a_charset_python_cannot_decode_text_with() -> None:
    """Regression: ``Content-Type: text/plain; charset=base64`` made ``reply.text()`` raise
    LookupError out of ``_send`` (and so out of ``Delivery.run``)."""
    for charset in ("base64", "rot13", "idna"):
        reply = {
            "status": 500,
            "headers": {"Content-Type": f"text/plain; charset={charset}"},
            "body": b"oops \xff",
            "reason": None,
            "drop": False,
        }
        attempt = asyncio.run(_send_once(reply, "t" * 20))
        assert (attempt.outcome, attempt.status) == (Outcome.RETRY, 500)
        assert attempt.detail.startswith("HTTP 500")


# --------------------------------------------------------------------------- parse_message

AGENT = AgentInfo(id="agent-1", version="1.0", hostname="room-pc-12")


def _valid_messages() -> list[bytes]:
    """One message of each schema, built with the protocol's own builders."""
    device = Device(
        product="Rally Bar",
        transport=Transport.USB,
        address="2-1.1",
        first_seen=NOW,
        last_seen=NOW,
        serial="2313FD1N08Z2",
        serial_label_grade=True,
        attributes={"peripheral_counts": {"micPod": {"expected": 2, "actual": 1}}},
    )
    inventory = InventoryMessage(
        schema=SCHEMA_INVENTORY,
        agent=AGENT,
        sequence=7,
        generated_at=NOW,
        places=[],
        unassigned=[device_out(device)],
    )
    event = change_event_out(
        id=UUID(int=1),
        type="device.added",
        time=NOW,
        identity=device.identity,
        product=device.product,
        serial=device.serial,
        room=None,
        before=None,
        after={"room": "oslo"},
    )
    return [serialize(inventory), serialize(events_message(AGENT, 8, NOW, [event]))]


VALID = _valid_messages()
MESSAGES = st.one_of(
    st.sampled_from(VALID),
    st.sampled_from(VALID)
    .flatmap(lambda m: mutated_tree(json.loads(m), max_steps=3))
    .map(lambda t: json.dumps(t).encode()),
    st.sampled_from(VALID).flatmap(lambda m: mutated(m, max_steps=3)),
    JSON_TREES.map(json.dumps),
    JSON_TREES.map(lambda t: json.dumps({"schema": SCHEMA_EVENTS, "x": t})),
    HOSTILE_JSON_TEXT,
    st.binary(max_size=200),
    st.text(max_size=200),
)


@fuzz(210)
@given(MESSAGES)
@example("[" * 3000)  # was a RecursionError
@example('{"schema": "roomsync.events.v1"' + ',"a":[' * 3000)
@example(b"\xff\xfe{}")
def test_parse_message_gives_a_message_or_its_documented_errors(data: str | bytes) -> None:
    try:
        message = parse_message(data)
    except (ValidationError, ValueError) as exc:
        assert str(exc)
        return
    assert message.schema_ in (SCHEMA_INVENTORY, SCHEMA_EVENTS)
    assert parse_message(serialize(message)) == message  # what was read writes back the same


def test_valid_messages_parse() -> None:
    assert [parse_message(m).schema_ for m in VALID] == [SCHEMA_INVENTORY, SCHEMA_EVENTS]
    assert MASK not in VALID[0].decode()
