"""The GLPI stand-in (``tools/glpi_standin.py``) keeps GLPI's side of the native inventory
transport: a document from GLPI's own examples (``../shared/fixtures/glpi``, read in place) sent
zlib, gzip, raw deflate or plain to ``/front/inventory.php`` or ``/Inventory`` is accepted,
answered ``{"expiration":24,"status":"ok"}`` compressed as it was sent, and recorded; a missing
or malformed ``GLPI-Agent-ID``, a content type GLPI does not take, a corrupt or oversized body,
bad JSON, a schema violation, an action GLPI does not support, a method other than POST, wrong
or missing basic credentials and a disabled inventory each get GLPI's answer and record nothing;
every injectable fault (a status, an HTML page, ``status: error``, a cut reply, a reset)
happens once; HTTPS verifies with the test CA and mTLS asks for a client certificate; ``python
-m tools.glpi_standin`` serves and reports by hand. Clients are aiohttp and urllib, on loopback.
"""

from __future__ import annotations

import base64
import copy
import functools
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.shared import not_applicable, shared_file
from tools import glpi_standin
from tools.glpi_standin import GlpiStandIn
from tools.portal_standin import CertAuthority, client_context

AGENT_ID = "3a609a2e-947f-4e6a-9af9-32c024ac3944"
LEGACY, ROUTE = "/front/inventory.php", "/Inventory"
OK = {"expiration": 24, "status": "ok"}
USER, PASSWORD = "glpi-agent", "pa55:word-9c1e"
ZLIB, GZIP, DEFLATE, JSON = (
    "application/x-compress-zlib",
    "application/x-compress-gzip",
    "application/x-compress-deflate",
    "application/json",
)


# --------------------------------------------------------------------------- documents and clients


def fixture(name: str) -> Path:
    return shared_file("fixtures", "glpi", name)


@functools.cache
def _example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture(name).read_text())
    return data


def switch(deviceid: str = "switch-pa3-b", serial: str = "SSI1912014B") -> dict[str, Any]:
    """GLPI's NetworkEquipment example, with its own deviceid and serial."""
    doc = copy.deepcopy(_example("networkequipment_1.json"))
    doc["deviceid"] = deviceid
    doc["content"]["network_device"]["serial"] = serial
    return doc


def computer() -> dict[str, Any]:
    return copy.deepcopy(_example("computer_1.json"))


def pack(data: bytes, content_type: str) -> bytes:
    """``data`` compressed as ``content_type`` says (plain otherwise)."""
    wbits = {ZLIB: zlib.MAX_WBITS, GZIP: 16 + zlib.MAX_WBITS, DEFLATE: -zlib.MAX_WBITS}.get(content_type)
    if wbits is None:
        return data
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


def unpack(data: bytes, content_type: str | None) -> bytes:
    """A reply's body as GLPI's client reads it: decompressed per its ``Content-Type``."""
    wbits = {ZLIB: zlib.MAX_WBITS, GZIP: 16 + zlib.MAX_WBITS, DEFLATE: -zlib.MAX_WBITS}.get(
        content_type or ""
    )
    return data if wbits is None else zlib.decompress(data, wbits)


def headers(content_type: str | None = ZLIB, agent_id: str | None = AGENT_ID, **extra: str) -> dict[str, str]:
    out = dict(extra)
    if content_type is not None:
        out["Content-Type"] = content_type
    if agent_id is not None:
        out["GLPI-Agent-ID"] = agent_id
    return out


def body(doc: Mapping[str, Any] | None = None, content_type: str = ZLIB) -> bytes:
    return pack(json.dumps(doc if doc is not None else switch()).encode(), content_type)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def post(
    url: str,
    data: bytes | None = None,
    hdrs: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with aiohttp: status, headers, and the body decompressed per its type."""
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), auto_decompress=False) as session,
        session.request(
            method,
            url,
            data=body() if data is None else data,
            headers=headers() if hdrs is None else hdrs,
            ssl=verify,
        ) as reply,
    ):
        return (
            reply.status,
            dict(reply.headers),
            unpack(await reply.read(), reply.headers.get("Content-Type")),
        )


async def post_json(url: str, data: bytes | None = None, hdrs: Mapping[str, str] | None = None) -> Any:
    status, _, raw = await post(url, data, hdrs)
    return status, json.loads(raw)


def post_sync(url: str, data: bytes, hdrs: Mapping[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=dict(hdrs), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, unpack(reply.read(), reply.headers.get("Content-Type"))
    except urllib.error.HTTPError as error:
        return error.code, unpack(error.read(), error.headers.get("Content-Type"))


def error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message, "expiration": 24}


@pytest.fixture(scope="module")
def schema() -> Path:
    return fixture("inventory.schema.json")


@pytest.fixture
def glpi(schema: Path) -> Iterator[GlpiStandIn]:
    with GlpiStandIn(schema=schema) as running:
        yield running


@pytest.fixture
def guarded(schema: Path) -> Iterator[GlpiStandIn]:
    with GlpiStandIn(schema=schema, username=USER, password=PASSWORD) as running:
        yield running


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


def assert_nothing_recorded(glpi: GlpiStandIn, status: int | None) -> None:
    assert glpi.documents == [] and glpi.accepted == []
    assert [r.status for r in glpi.requests] == [status]


# --------------------------------------------------------------------------- life cycle


def test_starts_on_loopback_restarts_on_its_port_and_stops(schema: Path) -> None:
    started = time.perf_counter()
    with GlpiStandIn(schema=schema, username=USER, password=PASSWORD) as one:
        assert time.perf_counter() - started < 0.5
        assert one.url.startswith("http://127.0.0.1:")
        assert PASSWORD not in repr(one) and one.schema_path == schema
        url = one.url
        assert post_sync(url + LEGACY, body(), headers(Authorization=basic(USER, PASSWORD)))[0] == 200
        one.stop()
        with pytest.raises(urllib.error.URLError, match="refused"):
            post_sync(url + LEGACY, body(), headers())
        one.start()  # GLPI is back, on the same port, with its records
        assert one.url == url and len(one.documents) == 1
    one.stop()  # twice is harmless
    with pytest.raises(RuntimeError, match="not started"):
        _ = GlpiStandIn(schema=schema).url


def test_ipv6_loopback(schema: Path) -> None:
    try:
        with GlpiStandIn(schema=schema, host="::1") as six:
            assert six.url.startswith("http://[::1]:")
            assert post_sync(six.url + LEGACY, body(), headers())[0] == 200
    except OSError as exc:
        not_applicable(f"this host has no IPv6 loopback: {exc}")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": "0.0.0.0"}, "loopback only"),
        ({"host": "192.0.2.1"}, "loopback only"),
        ({"username": USER}, "both a username and a password"),
        ({"password": PASSWORD}, "both a username and a password"),
        ({"username": "", "password": PASSWORD}, "neither empty"),
        ({"client_ca": Path("ca.pem")}, "needs tls="),
    ],
)
def test_refuses_a_setup_it_cannot_serve(schema: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GlpiStandIn(schema=schema, **kwargs)


def test_the_schema_is_read_when_made(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="schema is not at"):
        GlpiStandIn(schema=tmp_path / "nowhere.json")
    assert glpi_standin.SHARED_SCHEMA.name == "inventory.schema.json"


# --------------------------------------------------------------------------- accepting


@pytest.mark.parametrize("content_type", [ZLIB, GZIP, DEFLATE, JSON])
async def test_accepts_and_records_a_document(glpi: GlpiStandIn, content_type: str) -> None:
    doc = switch()
    sent = body(doc, content_type)
    status, hdrs, raw = await post(glpi.url + LEGACY, sent, headers(content_type))
    assert (status, json.loads(raw)) == (200, OK)
    assert raw == b'{"expiration":24,"status":"ok"}'  # as PHP's json_encode writes it
    assert hdrs["Content-Type"] == content_type  # GLPI answers compressed the way it was asked
    assert hdrs["Connection"] == "close" and hdrs["Cache-Control"] == "no-cache,no-store"
    assert hdrs["GLPI-Agent-ID"] == AGENT_ID
    assert glpi.documents == [doc]
    (accepted,) = glpi.accepted
    assert (accepted.deviceid, accepted.itemtype, accepted.action) == (
        "switch-pa3-b",
        "NetworkEquipment",
        "netinventory",
    )
    assert (accepted.agent_id, accepted.content_type, accepted.path) == (AGENT_ID, content_type, LEGACY)
    (request,) = glpi.requests
    assert (request.method, request.path, request.status, request.fault, request.message) == (
        "POST",
        LEGACY,
        200,
        None,
        None,
    )
    assert (request.content_type, request.agent_id, request.body_bytes) == (content_type, AGENT_ID, len(sent))
    assert glpi.agent_ids == [AGENT_ID]


async def test_the_inventory_route_of_glpi_11(glpi: GlpiStandIn) -> None:
    assert (await post_json(glpi.url + ROUTE)) == (200, OK)
    assert [a.path for a in glpi.accepted] == [ROUTE]
    status, _, _ = await post(glpi.url + "/front/other.php")
    assert status == 404 and glpi.requests[-1].path == ROUTE  # not an inventory route


async def test_records_serials_device_ids_and_agent_ids(glpi: GlpiStandIn) -> None:
    other = "c0ffee00-947f-4e6a-9af9-32c024ac3944"
    await post(glpi.url + LEGACY, body(switch("a", "SERIAL-A")))
    await post(glpi.url + LEGACY, body(switch("b", "SERIAL-B")), headers(agent_id=other))
    renamed = switch("a", "SERIAL-A")
    renamed["content"]["network_device"]["name"] = "renamed"
    await post(glpi.url + LEGACY, body(renamed))
    await post(glpi.url + LEGACY, body(computer(), JSON), headers(JSON))
    assert [d["deviceid"] for d in glpi.documents] == ["a", "b", "a", "glpixps-2018-07-09-09-07-13"]
    latest = glpi.latest_by_deviceid
    assert set(latest) == {"a", "b", "glpixps-2018-07-09-09-07-13"}
    assert latest["a"]["content"]["network_device"]["name"] == "renamed"
    by_serial = glpi.by_serial()
    assert set(by_serial) == {"SERIAL-A", "SERIAL-B", "640HP72"}  # a computer's serial is its BIOS ssn
    assert by_serial["SERIAL-A"] == renamed
    assert glpi.accepted[-1].itemtype == "Computer" and glpi.accepted[-1].action == "inventory"
    assert glpi.agent_ids == [AGENT_ID, other]
    glpi.documents[0]["deviceid"] = "changed"  # a copy
    assert glpi.documents[0]["deviceid"] == "a"


def test_usable_from_a_synchronous_test_and_cleared(glpi: GlpiStandIn) -> None:
    assert post_sync(glpi.url + LEGACY, body(), headers()) == (200, b'{"expiration":24,"status":"ok"}')
    assert glpi.wait_for(lambda g: len(g.documents) == 1, timeout=1)
    assert not glpi.wait_for(lambda g: len(g.documents) == 2, timeout=0.05)
    glpi.inject(500)
    glpi.clear()
    assert (glpi.documents, glpi.requests, glpi.agent_ids, glpi.pending_faults) == ([], [], [], [])


async def test_text_plain_json_is_taken_as_glpi_does(glpi: GlpiStandIn) -> None:
    """GLPI reads any type it does not know as uncompressed, JSON when it starts with ``{``."""
    status, hdrs, raw = await post(glpi.url + LEGACY, body(content_type=JSON), headers("text/plain"))
    assert (status, json.loads(raw), hdrs["Content-Type"]) == (200, OK, JSON)
    assert len(glpi.documents) == 1


async def test_a_contact_is_answered_and_not_a_document(glpi: GlpiStandIn) -> None:
    contact = {"action": "contact", "deviceid": "x", "name": "roomsync", "installed-tasks": ["inventory"]}
    assert (await post_json(glpi.url + LEGACY, body(contact))) == (200, OK)
    assert glpi.documents == [] and [r.status for r in glpi.requests] == [200]


async def test_without_an_agent_id_a_lenient_stand_in_answers_like_glpi(schema: Path) -> None:
    with GlpiStandIn(schema=schema, require_agent_id=False) as lenient:
        status, reply = await post_json(lenient.url + LEGACY, body(), headers(agent_id=None))
        assert (status, reply) == (200, {"RESPONSE": "SEND"})  # GLPI's legacy reply
        assert len(lenient.documents) == 1 and lenient.agent_ids == []


# --------------------------------------------------------------------------- refusing


def _schema_violation() -> bytes:
    doc = switch()
    del doc["deviceid"]
    return body(doc)


def _bad_ip() -> bytes:
    doc = switch()
    doc["content"]["network_device"]["ips"] = ["10.2.5"]  # format: ipv4
    return body(doc)


def _truncated_gzip() -> bytes:
    return body(content_type=GZIP)[:-8]


@pytest.mark.parametrize(
    ("data", "hdrs", "status", "message"),
    [
        (None, headers(agent_id=None), 400, "GLPI-Agent-ID HTTP header is mandatory!"),
        (None, headers(agent_id="not-a-uuid"), 400, "GLPI-Agent-ID HTTP header must be a UUID"),
        (b"x\x9c not zlib", headers(), 500, "gzuncompress(): data error"),
        (_truncated_gzip(), headers(GZIP), 500, "gzdecode(): data error"),
        (b"{ bad content", headers(JSON), 400, "JSON not well formed!"),
        (b"[1, 2]", headers(JSON), 400, "JSON not well formed!"),
        (pack(b"{ bad content", ZLIB), headers(), 400, "JSON not well formed!"),
        (_schema_violation(), headers(), 500, "JSON does not validate. Violations:\n"),
        (_bad_ip(), headers(), 500, "JSON does not validate. Violations:\n"),
        (body({**switch(), "action": "register"}), headers(), 501, "Query 'register' is not supported."),
    ],
    ids=[
        "no-agent-id",
        "agent-id-not-uuid",
        "corrupt-zlib",
        "truncated-gzip",
        "bad-json",
        "json-not-an-object",
        "bad-json-zlib",
        "schema-required",
        "schema-format",
        "unsupported-action",
    ],
)
async def test_a_refused_document_gets_glpis_json_error(
    glpi: GlpiStandIn, data: bytes | None, hdrs: dict[str, str], status: int, message: str
) -> None:
    got, reply_headers, raw = await post(glpi.url + LEGACY, data, hdrs)
    reply = json.loads(raw)
    assert got == status and reply_headers["Content-Type"] == hdrs["Content-Type"]  # compressed as sent
    assert reply == {**error(reply["message"])} and reply["message"].startswith(message)
    assert len(reply["message"]) <= 250
    assert_nothing_recorded(glpi, status)
    assert glpi.requests[0].message == reply["message"]


async def test_a_schema_violation_names_what_and_where(glpi: GlpiStandIn) -> None:
    _, reply = await post_json(glpi.url + LEGACY, _bad_ip())
    assert "'10.2.5' is not valid" in reply["message"]  # ips: anyOf ipv4, ipv6
    assert reply["message"].endswith(" at /content/network_device/ips/0\n")


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        (body(), "application/octet-stream", 400, "XML not well formed!"),  # zlib bytes, unknown type
        (body(), "application/x-compress-zlib; charset=utf-8", 400, "XML not well formed!"),  # compared whole
        (b"", "application/xml", 400, "XML not well formed!"),
        (b"<REQUEST><QUERY>PROLOG</QUERY></REQUEST>", "application/xml", 501, "JSON protocol only"),
    ],
)
async def test_what_glpi_takes_for_xml_is_refused_in_xml(
    glpi: GlpiStandIn, data: bytes, content_type: str, status: int, message: str
) -> None:
    got, hdrs, raw = await post(glpi.url + LEGACY, data, headers(content_type))
    assert (got, hdrs["Content-Type"]) == (status, "application/xml")
    assert raw.startswith(b'<?xml version="1.0"?>\n<REPLY><ERROR><![CDATA[') and message.encode() in raw
    assert_nothing_recorded(glpi, status)


@pytest.mark.parametrize("content_type", ["application/x-compress-br", "application/x-br"])
async def test_brotli_is_unsupported(glpi: GlpiStandIn, content_type: str) -> None:
    got, hdrs, raw = await post(glpi.url + LEGACY, b"\x0b\x02\x80{}\x03", headers(content_type))
    assert (got, hdrs["Content-Type"], json.loads(raw)) == (415, JSON, error("Unsupported compression"))
    assert_nothing_recorded(glpi, 415)


async def test_a_bomb_stops_at_the_limit(
    glpi: GlpiStandIn, schema: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(glpi_standin, "MAX_JSON_BYTES", 10_000)
    big = b"{" + b" " * 20_000 + b"}"
    status, reply = await post_json(glpi.url + LEGACY, pack(big, ZLIB))
    assert status == 413 and "decompresses to more than 10000 bytes" in reply["message"]
    assert (await post_json(glpi.url + LEGACY, big, headers(JSON)))[0] == 413
    with GlpiStandIn(schema=schema) as small:  # made with the limit: aiohttp stops reading at it
        assert (await post_json(small.url + LEGACY, pack(big, JSON) * 2, headers(JSON)))[0] == 413
        assert [(r.status, r.body_bytes) for r in small.requests] == [(413, 2 * len(big))]
    assert glpi.documents == [] and small.documents == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405_without_a_body(glpi: GlpiStandIn, method: str) -> None:
    status, hdrs, raw = await post(glpi.url + ROUTE, b"", headers(), method=method)
    assert (status, raw) == (405, b"") and "Content-Type" not in hdrs
    assert_nothing_recorded(glpi, 405)


async def test_the_fusion_get_config_is_not_supported(glpi: GlpiStandIn) -> None:
    status, _, raw = await post(glpi.url + LEGACY + "?action=getConfig", b"", {}, method="GET")
    assert (status, json.loads(raw)) == (400, error("Protocol not supported"))


async def test_a_disabled_inventory_is_403_until_enabled(schema: Path) -> None:
    with GlpiStandIn(schema=schema, enabled=False) as glpi:
        status, hdrs, raw = await post(glpi.url + LEGACY)
        assert (status, hdrs["Content-Type"], json.loads(raw)) == (403, JSON, error("Inventory is disabled"))
        assert (await post(glpi.url + ROUTE, b"", {}, method="GET"))[0] == 403  # before the method
        assert glpi.documents == [] and not glpi.enabled
        glpi.enabled = True
        assert (await post_json(glpi.url + LEGACY)) == (200, OK)
        glpi.enabled = False
        assert (await post(glpi.url + LEGACY))[0] == 403 and len(glpi.documents) == 1


# --------------------------------------------------------------------------- basic authentication


async def test_basic_authentication_lets_the_right_credentials_in(guarded: GlpiStandIn) -> None:
    credentials = basic(USER, PASSWORD)
    assert (await post_json(guarded.url + LEGACY, body(), headers(Authorization=credentials))) == (200, OK)
    lower_case = headers(Authorization="basic " + credentials.removeprefix("Basic "))  # GLPI: /^Basic/i
    assert (await post_json(guarded.url + LEGACY, body(), lower_case)) == (200, OK)
    assert len(guarded.documents) == 2
    assert [r.headers["Authorization"] for r in guarded.requests] == ["Basic <redacted>", "basic <redacted>"]
    assert credentials.removeprefix("Basic ") not in repr(guarded.requests)


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Authorization header required to send an inventory"),
        (basic(USER, "wrong"), "Access denied. Wrong login or password for basic authentication."),
        (basic("someone", PASSWORD), "Access denied. Wrong login or password for basic authentication."),
        (basic(USER, ""), "Access denied. Wrong login or password for basic authentication."),
        (basic(USER, PASSWORD)[6:], "Access denied. Wrong login or password for basic authentication."),
        ("Bearer " + PASSWORD, "Access denied. Wrong login or password for basic authentication."),
        ("Basic !!not-base64!!", "Access denied. Wrong login or password for basic authentication."),
        ("", "Access denied. Wrong login or password for basic authentication."),
    ],
    ids=[
        "missing",
        "wrong-password",
        "wrong-user",
        "empty-password",
        "no-scheme",
        "bearer",
        "garbage",
        "empty",
    ],
)
async def test_missing_or_wrong_credentials_are_401(
    guarded: GlpiStandIn, authorization: str | None, message: str
) -> None:
    hdrs = headers() if authorization is None else headers(Authorization=authorization)
    status, reply_headers, raw = await post(guarded.url + LEGACY, body(), hdrs)
    assert (status, json.loads(raw)) == (401, error(message))
    assert reply_headers["WWW-Authenticate"] == 'Basic realm="basic"'
    assert reply_headers["Content-Type"] == ZLIB  # GLPI's reply, compressed as the request was
    assert_nothing_recorded(guarded, 401)


async def test_credentials_are_checked_before_the_body(guarded: GlpiStandIn) -> None:
    assert (await post(guarded.url + LEGACY, b"garbage", headers(agent_id=None)))[0] == 401


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", [400, "401", 404, 500, "502", 503])
async def test_a_status_fault_answers_once_and_records_nothing(glpi: GlpiStandIn, fault: int | str) -> None:
    glpi.inject(fault)
    status, hdrs, raw = await post(glpi.url + LEGACY)
    reply = json.loads(raw)
    assert status == int(fault) and hdrs["Content-Type"] == JSON
    assert reply["status"] == "error" and str(fault) in reply["message"] and reply["expiration"] == 24
    assert ("WWW-Authenticate" in hdrs) == (int(fault) == 401)
    assert glpi.documents == [] and glpi.pending_faults == []
    assert (await post_json(glpi.url + LEGACY)) == (200, OK)  # once
    assert [(r.status, r.fault) for r in glpi.requests] == [(int(fault), str(fault)), (200, None)]


async def test_an_html_page_is_200_but_not_glpis_answer(glpi: GlpiStandIn) -> None:
    glpi.inject("html")
    status, hdrs, raw = await post(glpi.url + LEGACY)
    assert status == 200 and hdrs["Content-Type"].startswith("text/html")
    assert raw.startswith(b"<!DOCTYPE html>")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert glpi.documents == [] and [(r.status, r.fault) for r in glpi.requests] == [(200, "html")]


@pytest.mark.parametrize("content_type", [ZLIB, JSON])
async def test_status_error_with_200(glpi: GlpiStandIn, content_type: str) -> None:
    glpi.inject("status-error")
    status, hdrs, raw = await post(glpi.url + LEGACY, body(content_type=content_type), headers(content_type))
    reply = json.loads(raw)
    assert (status, hdrs["Content-Type"], reply["status"]) == (200, content_type, "error")
    assert reply == error(reply["message"]) and glpi.documents == []


async def test_a_cut_reply_promises_more_than_it_sends(glpi: GlpiStandIn) -> None:
    glpi.inject("cut")
    with pytest.raises(aiohttp.ClientPayloadError, match="content length"):
        await post(glpi.url + LEGACY)
    assert glpi.documents == [] and [(r.status, r.fault) for r in glpi.requests] == [(200, "cut")]
    assert (await post_json(glpi.url + LEGACY)) == (200, OK)


def test_a_cut_reply_seen_by_urllib(glpi: GlpiStandIn) -> None:
    glpi.inject("cut")
    with pytest.raises(http.client.IncompleteRead):
        post_sync(glpi.url + LEGACY, body(), headers())
    assert glpi.documents == []


async def test_reset_closes_the_connection_without_a_reply(glpi: GlpiStandIn) -> None:
    glpi.inject("reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(glpi.url + LEGACY)
    assert glpi.documents == [] and [(r.status, r.fault) for r in glpi.requests] == [(None, "reset")]
    assert (await post_json(glpi.url + LEGACY)) == (200, OK)


def test_reset_seen_by_urllib(glpi: GlpiStandIn) -> None:
    glpi.inject("reset")
    with pytest.raises((ConnectionResetError, urllib.error.URLError, http.client.RemoteDisconnected)):
        post_sync(glpi.url + LEGACY, body(), headers())


async def test_faults_come_in_order_and_can_target_one_route(glpi: GlpiStandIn) -> None:
    glpi.inject(503, times=2)
    glpi.inject("html", path=ROUTE)
    assert glpi.pending_faults == ["503", "503", "html"]
    assert (await post(glpi.url + ROUTE))[0] == 503
    assert (await post(glpi.url + LEGACY))[0] == 503
    assert (await post_json(glpi.url + LEGACY)) == (200, OK)  # the html fault waits for /Inventory
    _, hdrs, _ = await post(glpi.url + ROUTE)
    assert hdrs["Content-Type"].startswith("text/html") and glpi.pending_faults == []


@pytest.mark.parametrize(("fault", "times"), [(200, 1), (600, 1), ("slow", 1), ("teapot", 1), (500, 0)])
def test_unknown_faults_are_refused(glpi: GlpiStandIn, fault: Any, times: int) -> None:
    with pytest.raises(ValueError):
        glpi.inject(fault, times)
    assert glpi.pending_faults == []


# --------------------------------------------------------------------------- TLS


async def test_https_verifies_with_the_test_ca(schema: Path, ca: CertAuthority) -> None:
    with GlpiStandIn(schema=schema, tls=ca.server_tls()) as glpi:
        assert glpi.url.startswith("https://127.0.0.1:")
        status, _, raw = await post(glpi.url + LEGACY, ssl_context=client_context(ca.path))
        assert (status, json.loads(raw)) == (200, OK)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(glpi.url + LEGACY, ssl_context=client_context(None))  # the system's CAs
        assert len(glpi.documents) == 1 and glpi.requests[0].client_cert is None


async def test_mtls_requires_a_client_certificate(schema: Path, ca: CertAuthority, tmp_path: Path) -> None:
    clients = CertAuthority(tmp_path / "clients", "client CA")
    with GlpiStandIn(schema=schema, tls=ca.server_tls(), client_ca=clients) as glpi:
        with pytest.raises(aiohttp.ClientError):
            await post(glpi.url + LEGACY, ssl_context=client_context(ca.path))
        cert, key = clients.client_cert("glpi-agent-7")
        status, _, _ = await post(glpi.url + LEGACY, ssl_context=client_context(ca.path, cert=cert, key=key))
        assert status == 200 and [r.client_cert for r in glpi.requests] == ["glpi-agent-7"]
        assert len(glpi.documents) == 1


# --------------------------------------------------------------------------- by hand


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_run_by_hand_prints_requests_and_documents(schema: Path, tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    port = _free_port()
    command = [sys.executable, "-m", "tools.glpi_standin", "--port", str(port), "--schema", str(schema)]
    command += ["--username", USER, "--password-file", str(tmp_path / "password")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        try:
            assert run.stdout is not None
            first = run.stdout.readline()
            assert f"http://127.0.0.1:{port}/front/inventory.php" in first, first
            url = f"http://127.0.0.1:{port}{LEGACY}"
            assert post_sync(url, body(), headers(Authorization=basic(USER, PASSWORD)))[0] == 200
            assert post_sync(url, body(), headers())[0] == 401
            lines = [run.stdout.readline() for _ in range(3)]
        finally:
            run.send_signal(signal.SIGINT)
            out, err = run.communicate(timeout=10)
    assert run.returncode == 0, err
    assert lines[0].startswith(f"POST {LEGACY} -> 200 ({ZLIB}, ") and AGENT_ID in lines[0]
    assert (
        lines[1].strip()
        == "accepted NetworkEquipment (netinventory) deviceid=switch-pa3-b serial=SSI1912014B firmwares=1"
    )
    assert lines[2].startswith(f"POST {LEGACY} -> 401") and "Authorization header required" in lines[2]
    assert PASSWORD not in "".join(lines) + out + err


def test_run_by_hand_refuses_a_half_configuration(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        glpi_standin.main(["--username", USER])
    with pytest.raises(SystemExit):
        glpi_standin.main(["--username", USER, "--password-file", str(tmp_path / "missing")])
