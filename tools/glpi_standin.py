"""A stand-in for a GLPI server: a real aiohttp server on loopback that keeps GLPI's side of
the native inventory transport (the JSON protocol of glpi-agent), for tests of a GLPI output
and of the whole agent. It runs like :class:`tools.portal_standin.PortalStandIn` (the
scaffolding is :class:`tools.standin_server.StandInServer`)::

    with GlpiStandIn(schema=path) as glpi:         # or glpi.start() / glpi.stop()
        post_to(glpi.url + "/front/inventory.php", ...)
        assert glpi.wait_for(lambda g: len(g.documents) == 1)

What it does is what GLPI 11 does (``src/Glpi/Controller/InventoryController.php`` and
``src/Agent/Communication/AbstractRequest.php`` of glpi-project/glpi, checked against its
functional ``RequestTest``), in this order, the first refusal answering:

1. an injected fault (below);
2. inventory disabled (:attr:`GlpiStandIn.enabled`): 403 ``Inventory is disabled``;
3. a method other than ``POST``: 405 with an empty body (``GET ?action=getConfig``: 400
   ``Protocol not supported``); the routes are ``/front/inventory.php`` and ``/Inventory``;
4. ``Content-Type`` (compared whole, as GLPI does): ``application/x-compress-zlib`` (or
   ``application/x-zlib``) a zlib stream, ``application/x-compress-gzip`` (``application/x-gzip``)
   gzip, ``application/x-compress-deflate`` (``application/x-deflate``) raw deflate,
   ``application/json`` and ``application/xml`` plain; brotli 415; any other type is plain and
   the body's first byte tells JSON (``{``) from XML — zlib bytes sent as
   ``application/octet-stream`` are thus "XML not well formed!";
5. basic authentication, when ``username`` and ``password`` are set: 401 with
   ``WWW-Authenticate: Basic realm="basic"``;
6. ``GLPI-Agent-ID``: a UUID, or 400. GLPI itself never refuses a request without it (it
   answers ``{"RESPONSE":"SEND"}``, the legacy reply, instead of ``status: ok``); glpi-agent
   always sends it, and so must roomsync: ``require_agent_id=False`` behaves as GLPI does;
7. decompression, at most :data:`MAX_JSON_BYTES` (413 beyond; a corrupt stream is GLPI 11's
   500 ``gzuncompress(): data error``);
8. JSON (400 ``JSON not well formed!``); an XML body is not taken (400 when not well formed,
   501 otherwise: the stand-in speaks the JSON protocol only);
9. the ``action`` (``inventory`` when absent): ``inventory``, ``netinventory``,
   ``netdiscovery`` are documents; ``contact``, ``prolog`` and ``get_params`` are answered
   ``status: ok`` and not recorded; any other is 501 ``Query '…' is not supported.``;
10. GLPI's JSON Schema (draft-07, string formats checked), read from ``schema`` when the
    stand-in is made, never copied: 500 ``JSON does not validate. Violations:…`` as GLPI does;
11. accepted: 200 ``{"expiration":24,"status":"ok"}`` and recorded.

Replies: what GLPI's request handling writes (steps 5 to 11) is JSON (``XML`` for step 8's XML)
compressed the way the request was, with that ``Content-Type`` (``application/json`` when
plain), ``Cache-Control: no-cache,no-store``, ``Pragma: no-cache``, the connection closed, and
the request's ``GLPI-Agent-ID`` / ``GLPI-Request-ID`` / ``GLPI-Proxy-ID`` echoed. An error is
``{"status":"error","message":"…","expiration":24}``, the message cut at 250 characters.
Steps 2 to 4 answer plain JSON (``application/json``; 405 with no body at all).

Faults (:meth:`GlpiStandIn.inject`, used one per request to an inventory route, first injected
first; nothing is recorded as accepted):

* an HTTP status ``400``–``599``: that status and a GLPI-style JSON error, plain (``401`` with
  ``WWW-Authenticate``);
* ``"html"``: 200 with a ``text/html`` page (a login page or a proxy between agent and GLPI);
* ``"status-error"``: 200 with ``{"status":"error",…}``, encoded like a GLPI reply;
* ``"cut"``: 200 with a ``Content-Length`` longer than what is written, then the connection is
  closed (a reply cut short);
* ``"reset"``: the connection is reset (RST) without a reply.

Records (copies, safe to read from any thread): ``accepted`` (:class:`AcceptedDocument`) and
``documents`` (their JSON), in order; ``latest_by_deviceid``; ``by_serial()``; ``agent_ids``;
``requests`` (every request: method, path, headers with ``Authorization`` redacted, content
type, agent id, status, fault, the error message answered); ``pending_faults``;
``wait_for(condition, timeout)``; ``clear()``.

TLS: ``tls=ca.server_tls()`` (:class:`tools.portal_standin.CertAuthority`) serves HTTPS,
``client_ca=`` requires a client certificate from that CA. It binds loopback only.

Run by hand: ``python -m tools.glpi_standin --port 8081`` (:func:`main`) prints each request and
a line per accepted document.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import os
import re
import xml.etree.ElementTree as ElementTree
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from tools.portal_standin import CertAuthority, TlsFiles
from tools.standin_server import (
    GZIP_WBITS,
    RAW_DEFLATE_WBITS,
    ZLIB_WBITS,
    InflateError,
    StandInServer,
    fault_name,
    follow,
    inflate,
    reason,
    request_fields,
    reset_connection,
)

__all__ = [
    "DEFAULT_FREQUENCY",
    "FAULTS",
    "INVENTORY_PATHS",
    "MAX_JSON_BYTES",
    "SHARED_SCHEMA",
    "AcceptedDocument",
    "GlpiStandIn",
    "RecordedRequest",
    "main",
]

#: The routes of GLPI's inventory endpoint (GLPI 11 routes both; GLPI 10 has the first).
INVENTORY_PATHS: Final = ("/front/inventory.php", "/Inventory")
#: Largest body taken, as sent and once decompressed (413 beyond).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: GLPI's ``AbstractRequest::DEFAULT_FREQUENCY``: the ``expiration`` (hours) of its replies.
DEFAULT_FREQUENCY: Final = 24
#: Where GLPI's schema is read from by default: ``../shared`` beside the checkout, or
#: ``$RS_SHARED_DIR`` (as ``tests/shared.py`` finds it).
SHARED_SCHEMA = (
    Path(os.environ.get("RS_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
    / "fixtures"
    / "glpi"
    / "inventory.schema.json"
)
HTML, STATUS_ERROR, CUT, RESET = "html", "status-error", "cut", "reset"
FAULTS: Final = (HTML, STATUS_ERROR, CUT, RESET)

_REALM = 'Basic realm="basic"'
_MAX_MESSAGE = 250
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_ECHOED = ("GLPI-Agent-ID", "GLPI-Request-ID", "GLPI-Proxy-ID")
_DOCUMENT_ACTIONS = frozenset({"inventory", "netinventory", "netdiscovery", "snmp", "snmpquery"})
_CONTACT_ACTIONS = frozenset({"contact", "prolog", "get_params"})
_BROTLI = frozenset({"application/x-br", "application/x-compress-br"})
_LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>GLPI - Authentication</title></head>"
    b"<body><form method='post' action='/front/login.php'><input name='login_name'>"
    b"<input type='password' name='login_password'></form></body></html>\n"
)


@dataclass(frozen=True, slots=True)
class _Codec:
    """A compression GLPI takes: what it answers with, zlib's ``wbits``, the PHP function
    whose failure GLPI 11 reports."""

    reply_type: str
    wbits: int
    php: str

    def compress(self, data: bytes) -> bytes:
        packer = zlib.compressobj(wbits=self.wbits)
        return bytes(packer.compress(data) + packer.flush())


_ZLIB = _Codec("application/x-compress-zlib", ZLIB_WBITS, "gzuncompress")
_GZIP = _Codec("application/x-compress-gzip", GZIP_WBITS, "gzdecode")
_DEFLATE = _Codec("application/x-compress-deflate", RAW_DEFLATE_WBITS, "gzinflate")
_CODECS: Mapping[str, _Codec] = {
    "application/x-zlib": _ZLIB,
    "application/x-compress-zlib": _ZLIB,
    "application/x-gzip": _GZIP,
    "application/x-compress-gzip": _GZIP,
    "application/x-deflate": _DEFLATE,
    "application/x-compress-deflate": _DEFLATE,
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the stand-in saw it. ``headers`` never hold a credential (the
    ``Authorization`` value is its scheme and ``<redacted>``); ``status`` is ``None`` when the
    connection was reset; ``message`` is the error message answered, if any."""

    method: str
    path: str
    headers: Mapping[str, str]
    content_type: str | None
    agent_id: str | None
    body_bytes: int
    status: int | None
    fault: str | None
    message: str | None
    client_cert: str | None


@dataclass(frozen=True, slots=True)
class AcceptedDocument:
    """A document the stand-in accepted: ``body`` is its JSON as decompressed; ``document``
    parses it afresh (a copy the caller may change)."""

    path: str
    agent_id: str | None
    content_type: str | None
    body: bytes
    deviceid: str
    itemtype: str
    action: str
    serial: str | None

    @property
    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass(slots=True)
class _Records:
    accepted: list[AcceptedDocument] = field(default_factory=list)
    agent_ids: dict[str, None] = field(default_factory=dict)  # first seen first


@dataclass(frozen=True, slots=True)
class _Fault:
    name: str
    path: str | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    response: web.StreamResponse
    message: str | None = None
    accepted: AcceptedDocument | None = None


class _Refused(Exception):
    """A GLPI error reply: ``status`` and ``message`` (``xml``: in an XML ``REPLY``)."""

    def __init__(self, status: int, message: str, *, xml: bool = False, realm: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message[:_MAX_MESSAGE]
        self.xml = xml
        self.realm = realm


def _php_json(value: Mapping[str, Any]) -> bytes:
    """``value`` as PHP's ``json_encode`` writes it: compact, ``/`` escaped, ASCII only."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/").encode()


def _error_body(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message, "expiration": DEFAULT_FREQUENCY}


def _plain(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Outcome:
    """A reply made outside GLPI's request handling: plain JSON."""
    response = web.Response(
        status=status, body=_php_json(_error_body(message)), headers=headers, content_type="application/json"
    )
    return _Outcome(response, message)


def _serial(document: Mapping[str, Any]) -> str | None:
    """The item's own serial: ``network_device.serial``, else the BIOS's ``ssn``."""
    content = document.get("content")
    if not isinstance(content, Mapping):
        return None
    for part, key in (("network_device", "serial"), ("bios", "ssn")):
        holder = content.get(part)
        if isinstance(holder, Mapping) and isinstance(holder.get(key), str) and holder[key]:
            return str(holder[key])
    return None


def _firmwares(document: Mapping[str, Any]) -> int:
    content = document.get("content")
    firmwares = content.get("firmwares") if isinstance(content, Mapping) else None
    return len(firmwares) if isinstance(firmwares, list) else 0


def _loopback(host: str) -> str:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the GLPI stand-in binds loopback only (127.0.0.1 or ::1), not {host!r}")


# --------------------------------------------------------------------------- the stand-in


class GlpiStandIn(StandInServer[RecordedRequest, _Fault]):
    """GLPI's inventory endpoint on loopback, a free port, in a thread."""

    _label = "GLPI stand-in"
    _thread_name = "glpi-standin"

    def __init__(
        self,
        *,
        schema: Path | None = None,
        enabled: bool = True,
        username: str | None = None,
        password: str | None = None,
        require_agent_id: bool = True,
        expiration: int = DEFAULT_FREQUENCY,
        tls: TlsFiles | None = None,
        client_ca: Path | CertAuthority | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if (username is None) != (password is None) or username == "" or password == "":
            raise ValueError("basic authentication needs both a username and a password, neither empty")
        if client_ca is not None:
            if tls is None:
                raise ValueError("client_ca= needs tls=: a client certificate is asked for over TLS")
            ca_path = client_ca.path if isinstance(client_ca, CertAuthority) else client_ca
            tls = dataclasses.replace(tls, client_ca=ca_path)
        super().__init__(tls=tls, host=_loopback(host), port=port)
        self.schema_path = schema if schema is not None else SHARED_SCHEMA
        self._validator = _validator(self.schema_path)
        self._enabled = enabled
        self._credentials = (
            (username.encode(), password.encode()) if username is not None and password is not None else None
        )
        self._require_agent_id = require_agent_id
        self._expiration = expiration
        self._records = _Records()

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_JSON_BYTES)
        for path in INVENTORY_PATHS:
            app.router.add_route("*", path, self._handle)
        return app

    @property
    def enabled(self) -> bool:
        """Whether GLPI's inventory is enabled (403 to every request when not)."""
        with self._lock:
            return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        with self._lock:
            self._enabled = value

    # ------------------------------------------------------------------ faults

    def inject(self, fault: str | int, times: int = 1, *, path: str | None = None) -> None:
        """Answer the next ``times`` requests (to ``path`` only, when given) with ``fault``:
        an HTTP status 400–599, ``"html"``, ``"status-error"``, ``"cut"`` or ``"reset"``."""
        name = fault_name(fault, times, FAULTS)
        self._faults.extend(_Fault(name, path) for _ in range(times))

    # ------------------------------------------------------------------ records

    @property
    def accepted(self) -> list[AcceptedDocument]:
        """Every document accepted, in order."""
        with self._lock:
            return list(self._records.accepted)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The JSON of every document accepted, in order (fresh copies)."""
        return [a.document for a in self.accepted]

    @property
    def latest_by_deviceid(self) -> dict[str, dict[str, Any]]:
        """The last document accepted for each ``deviceid``."""
        return {a.deviceid: a.document for a in self.accepted}

    def by_serial(self) -> dict[str, dict[str, Any]]:
        """The last document accepted for each item serial (``network_device.serial``, or a
        computer's BIOS ``ssn``); documents without one are left out."""
        return {a.serial: a.document for a in self.accepted if a.serial is not None}

    @property
    def agent_ids(self) -> list[str]:
        """Every ``GLPI-Agent-ID`` a request carried, once each, first seen first."""
        with self._lock:
            return list(self._records.agent_ids)

    def _forget(self) -> None:
        self._records = _Records()

    def _record(self, request: web.Request, size: int, fault: str | None, outcome: _Outcome | None) -> None:
        agent_id = request.headers.get("GLPI-Agent-ID")
        entry = RecordedRequest(
            **request_fields(request, size),
            content_type=request.headers.get("Content-Type"),
            agent_id=agent_id,
            status=outcome.response.status if outcome is not None else None,
            fault=fault,
            message=outcome.message if outcome is not None else None,
        )

        def also() -> None:
            if outcome is not None and outcome.accepted is not None:
                self._records.accepted.append(outcome.accepted)
            if agent_id is not None:
                self._records.agent_ids.setdefault(agent_id)

        self._add_request(entry, also)

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        size = len(body) if body is not None else request.content_length or 0
        fault = self._faults.take(request.path)
        if fault is not None and fault.name == RESET:
            self._record(request, size, RESET, None)
            return reset_connection(request)
        if fault is not None and fault.name == CUT:
            return await self._cut(request, size)
        outcome = self._fault_reply(request, fault.name) if fault is not None else self._answer(request, body)
        outcome.response.force_close()  # GLPI answers "Connection: close"
        self._record(request, size, fault.name if fault is not None else None, outcome)
        return outcome.response

    def _fault_reply(self, request: web.Request, name: str) -> _Outcome:
        if name == HTML:
            return _Outcome(
                web.Response(status=200, body=_LOGIN_PAGE, content_type="text/html", charset="utf-8")
            )
        if name == STATUS_ERROR:
            message = "injected fault: an error GLPI answers with status 200"
            return _Outcome(self._reply(request, 200, _php_json(_error_body(message))), message)
        status = int(name)
        headers = {"WWW-Authenticate": _REALM} if status == 401 else None
        return _plain(status, f"injected fault: {status} {reason(status)}", headers)

    async def _cut(self, request: web.Request, size: int) -> web.StreamResponse:
        """Promise GLPI's whole reply, write half of it, close the connection."""
        model = self._reply(request, 200, self._ok())
        body = model.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(status=200, headers=model.headers)
        stream.content_length = len(body)
        self._record(request, size, CUT, _Outcome(stream))
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        return stream

    def _reply(self, request: web.Request, status: int, data: bytes, *, xml: bool = False) -> web.Response:
        """A reply of GLPI's request handling: compressed as the request was, GLPI's headers."""
        codec = _CODECS.get((request.headers.get("Content-Type") or "").strip().lower())
        headers = {"Cache-Control": "no-cache,no-store", "Pragma": "no-cache"}
        headers.update({name: request.headers[name] for name in _ECHOED if name in request.headers})
        if codec is not None:
            data, headers["Content-Type"] = codec.compress(data), codec.reply_type
        else:
            headers["Content-Type"] = "application/xml" if xml else "application/json"
        return web.Response(status=status, body=data, headers=headers)

    def _answer(self, request: web.Request, body: bytes | None) -> _Outcome:
        """What GLPI answers a request that met no fault; an accepted document comes with it."""
        if not self.enabled:
            return _plain(403, "Inventory is disabled")
        if request.method != "POST":
            if request.method == "GET" and request.query.get("action") == "getConfig":
                return _plain(400, "Protocol not supported")
            return _Outcome(web.Response(status=405))
        if (request.headers.get("Content-Type") or "").strip().lower() in _BROTLI:
            return _plain(415, "Unsupported compression")
        try:
            return self._inventory(request, body)
        except _Refused as refused:
            if refused.xml:
                xml = f'<?xml version="1.0"?>\n<REPLY><ERROR><![CDATA[{refused.message}]]></ERROR></REPLY>'
                response = self._reply(request, refused.status, xml.encode(), xml=True)
            else:
                response = self._reply(request, refused.status, _php_json(_error_body(refused.message)))
            if refused.realm:
                response.headers["WWW-Authenticate"] = _REALM
            return _Outcome(response, refused.message)

    def _inventory(self, request: web.Request, body: bytes | None) -> _Outcome:
        """GLPI's ``handleRequest``: raises :class:`_Refused` for an error reply."""
        headers = request.headers
        self._authenticate(headers.get("Authorization"))
        agent_id = headers.get("GLPI-Agent-ID")
        if self._require_agent_id and agent_id is None:
            raise _Refused(400, "GLPI-Agent-ID HTTP header is mandatory!")
        if self._require_agent_id and not _UUID.fullmatch(agent_id or ""):
            raise _Refused(400, "GLPI-Agent-ID HTTP header must be a UUID")
        data = self._decompress(headers.get("Content-Type"), body)
        content_type = (headers.get("Content-Type") or "").strip().lower()
        if content_type == "application/xml" or (content_type != "application/json" and data[:1] != b"{"):
            raise _xml_refusal(data)
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            document = None
        if not isinstance(document, dict):
            raise _Refused(400, "JSON not well formed!")
        action = document.get("action", document.get("query", "inventory"))
        if action in _CONTACT_ACTIONS:
            return _Outcome(self._reply(request, 200, self._ok()))
        if action not in _DOCUMENT_ACTIONS:
            raise _Refused(501, f"Query '{action}' is not supported.")
        error = best_match(self._validator.iter_errors(document))
        if error is not None:
            where = "/" + "/".join(str(p) for p in error.absolute_path)
            raise _Refused(500, f"JSON does not validate. Violations:\n{error.message} at {where}\n")
        accepted = AcceptedDocument(
            path=request.path,
            agent_id=agent_id,
            content_type=headers.get("Content-Type"),
            body=data,
            deviceid=str(document["deviceid"]),
            itemtype=str(document.get("itemtype", "Computer")),
            action=str(action),
            serial=_serial(document),
        )
        reply = self._ok() if agent_id is not None else _php_json({"RESPONSE": "SEND"})
        return _Outcome(self._reply(request, 200, reply), accepted=accepted)

    def _ok(self) -> bytes:
        return _php_json({"expiration": self._expiration, "status": "ok"})

    def _authenticate(self, authorization: str | None) -> None:
        """GLPI 11's basic authentication of the inventory (``auth_required: basic_auth``)."""
        if self._credentials is None:
            return
        if authorization is None:
            raise _Refused(401, "Authorization header required to send an inventory", realm=True)
        scheme, _, encoded = authorization.strip().partition(" ")
        login, password = b"", b""
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):  # binascii.Error: not base64
                login, _, password = base64.b64decode(encoded.strip()).partition(b":")
        expected_login, expected_password = self._credentials
        if not (
            login
            and password
            and hmac.compare_digest(login, expected_login)
            and hmac.compare_digest(password, expected_password)
        ):
            raise _Refused(
                401, "Access denied. Wrong login or password for basic authentication.", realm=True
            )

    @staticmethod
    def _decompress(content_type: str | None, body: bytes | None) -> bytes:
        if body is None:
            raise _Refused(413, f"the body is larger than {MAX_JSON_BYTES} bytes")
        codec = _CODECS.get((content_type or "").strip().lower())
        if codec is None:
            if len(body) > MAX_JSON_BYTES:
                raise _Refused(413, f"the body is larger than {MAX_JSON_BYTES} bytes")
            return body
        try:
            return inflate(body, MAX_JSON_BYTES, codec.wbits)
        except InflateError as exc:
            if exc.kind == "too-big":
                raise _Refused(413, f"the body decompresses to more than {MAX_JSON_BYTES} bytes") from None
            raise _Refused(500, f"{codec.php}(): data error") from None


def _xml_refusal(data: bytes) -> _Refused:
    """GLPI's answer to an XML body: not well formed, or (well formed) not taken here."""
    try:
        ElementTree.fromstring(data)
    except (ElementTree.ParseError, ValueError, LookupError):  # LookupError: an unknown encoding
        return _Refused(400, "XML not well formed!", xml=True)
    return _Refused(501, "The GLPI stand-in takes the JSON protocol only.", xml=True)


def _validator(path: Path) -> Any:
    """GLPI's schema (draft-07) with string formats checked, read from ``path``."""
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"GLPI's inventory schema is not at {path}: the shared fixtures are expected in ../shared "
            "beside the checkout (or $RS_SHARED_DIR); or pass schema="
        ) from None
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


# ---------------------------------------------------------------------- run by hand


def summary(accepted: AcceptedDocument) -> str:
    """One line of what an accepted document holds."""
    return (
        f"accepted {accepted.itemtype} ({accepted.action}) deviceid={accepted.deviceid} "
        f"serial={accepted.serial or '-'} firmwares={_firmwares(accepted.document)}"
    )


def _request_line(r: RecordedRequest) -> str:
    status = r.status if r.status is not None else "reset"
    line = f"{r.method} {r.path} -> {status} ({r.content_type or 'no Content-Type'}, {r.body_bytes} bytes"
    line += f", agent {r.agent_id})" if r.agent_id else ", no GLPI-Agent-ID)"
    if r.fault:
        line += f" [fault {r.fault}]"
    if r.message:
        line += ": " + r.message.replace("\n", " ").strip()
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.glpi_standin``: GLPI's inventory endpoint, in the foreground."""
    import argparse
    import sys

    from agent.secretfile import SecretFileError, read_secret

    ap = argparse.ArgumentParser(
        prog="python -m tools.glpi_standin",
        description="GLPI's side of the native inventory transport on loopback, for trying a GLPI "
        "output: takes zlib, gzip or plain JSON at /front/inventory.php and /Inventory, checks each "
        "document against GLPI's schema, answers as GLPI does and prints each request and each "
        "accepted document. Ctrl-C stops it.",
    )
    ap.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    ap.add_argument("--username", help="require basic authentication with this login …")
    ap.add_argument("--password-file", type=Path, help="… and the password in this file")
    ap.add_argument(
        "--tls-dir", type=Path, help="serve HTTPS: a test CA and a certificate are made in this directory"
    )
    ap.add_argument("--schema", type=Path, help=f"GLPI's inventory.schema.json (default {SHARED_SCHEMA})")
    args = ap.parse_args(argv)
    if (args.username is None) != (args.password_file is None):
        ap.error("--username and --password-file go together")
    if not 0 < args.port < 65536:
        ap.error(f"--port {args.port}: expected 1-65535")
    password = None
    if args.password_file is not None:
        try:
            password = read_secret(args.password_file, "GLPI password")
        except SecretFileError as exc:
            ap.error(str(exc))
    tls = None
    if args.tls_dir is not None:
        ca = CertAuthority(args.tls_dir, "GLPI stand-in test CA")
        tls = ca.server_tls()
    try:
        glpi = GlpiStandIn(
            schema=args.schema,
            username=args.username,
            password=password,
            tls=tls,
            host=args.host,
            port=args.port,
        )
        glpi.start()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"GLPI stand-in: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"GLPI stand-in listening on {glpi.url}{INVENTORY_PATHS[0]}", flush=True)
    if tls is not None:
        print(f"  clients trust the CA {tls.ca}", flush=True)
    return follow(
        glpi,
        [(lambda: glpi.requests, _request_line), (lambda: glpi.accepted, lambda a: "  " + summary(a))],
        lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    raise SystemExit(main())
