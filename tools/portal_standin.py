"""A stand-in for the licensing portal: a real aiohttp server on 127.0.0.1 that keeps the
portal's side of ``docs/portal-api.md``, for tests of delivery and of the whole agent.

It runs in a background thread with its own event loop, so a synchronous test, an async
test and an agent in a subprocess can all talk to it::

    with PortalStandIn("s3cret") as portal:          # or portal.start() / portal.stop()
        post_to(portal.url + "/v1/inventory", ...)
        assert portal.wait_for(lambda p: len(p.inventory) == 1)

``stop()`` then ``start()`` again serves on the same port with the same records (the portal
was down and is back).

What it checks, in this order (the first failure answers): an injected fault; the bearer
token (401); ``Content-Type: application/json`` and ``Content-Encoding: gzip`` (415); an
``Idempotency-Key`` (400); the gzip body (400, 413 past :data:`MAX_JSON_BYTES`); the JSON
against the pydantic models of :mod:`agent.uploader.protocol` (400). A new message is
recorded and answered 202; a repeated ``Idempotency-Key`` with the same body 200 and not
recorded again; with another body 422. Events are kept once per event id.

Faults (:meth:`PortalStandIn.inject`, consumed one per request, first injected first):

* an HTTP status ``400``–``599`` (``"500"``, ``"503"``, ``"429"``, ``"401"``, ``"400"``…):
  answered with that status and nothing recorded; ``503`` and ``429`` carry ``Retry-After``
  (``retry_after`` seconds, 1 by default; ``None`` leaves it out, any string is sent as is);
* ``"slow"``: the request is handled normally (a valid message *is* recorded), then the reply
  is trickled one byte every ``interval`` seconds: a client whose read timeout is shorter
  gives up although the portal holds the message — its retry must come back 200;
* ``"reset"``: the connection is reset (RST) without a reply; nothing recorded;
* ``"reset-after-accept"``: handled normally, then reset instead of replying (the lost
  acknowledgement).

Records (copies, safe to read from any thread): ``inventory`` and ``messages`` (accepted, in
order), ``latest_inventory`` (highest sequence), ``events`` (once per id), ``requests`` (every
request with its fault and status, ``Authorization`` redacted), ``pending_faults``;
``wait_for(condition, timeout)`` blocks until a condition on the stand-in holds; ``clear()``.

Run by hand (``python -m tools.portal_standin --port 8080 --token-file T``: :func:`main`), it is
a reference portal for someone evaluating ``roomsync push``: it prints each request and what each
accepted message holds.

Several agents of one site (``docs/portal-api.md``, "One unit seen by several agents"):
``latest_by_agent`` is each agent's snapshot with its highest sequence (a snapshot supersedes
only its own agent's), and ``site_units()`` merges their units into :class:`SiteUnit` s by the
rules of ``docs/identity.md``, written here again on purpose: the stand-in checks the documented
rules and does not reuse the agent's :mod:`agent.identity`.

TLS: :class:`CertAuthority` makes a test CA and certificates at test time; ``PortalStandIn(
token, tls=ca.server_tls())`` serves HTTPS that verifies with ``ca.path``;
:func:`self_signed_tls`, ``ca.server_tls(hosts=("portal.invalid",))`` and
``ca.server_tls(expired=True)`` serve certificates that do not verify. ``client_ca=`` makes the
server require a client certificate (mTLS).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import itertools
import json
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from agent.gcpause import paused_gc
from agent.uploader.protocol import (
    ENDPOINTS,
    SCHEMA_EVENTS,
    SCHEMA_INVENTORY,
    DeviceOut,
    EventOut,
    EventsMessage,
    InventoryMessage,
    Message,
    SeenByOut,
)
from tools.standin_server import (
    GZIP_WBITS,
    InflateError,
    StandInServer,
    fault_name,
    follow,
    inflate,
    request_fields,
    reset_connection,
)
from tools.standin_server import media_type as _media_type
from tools.standin_server import reason as _reason

__all__ = [
    "DEFAULT_HOSTS",
    "FAULTS",
    "MAX_JSON_BYTES",
    "Accepted",
    "CertAuthority",
    "PortalStandIn",
    "RecordedRequest",
    "SiteUnit",
    "TlsFiles",
    "client_context",
    "self_signed_tls",
]

#: The names a server certificate is made for by default: what the stand-in listens on.
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
#: Largest body accepted, compressed (aiohttp's limit) and decompressed (a gzip bomb stops here).
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024
#: The fault names besides HTTP status codes.
SLOW, RESET, RESET_AFTER_ACCEPT = "slow", "reset", "reset-after-accept"
FAULTS = (SLOW, RESET, RESET_AFTER_ACCEPT)
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A server's certificate and key (PEM files), the CA certificate a client trusts to
    verify it, and — for mTLS — the CA whose client certificates the server requires."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.client_ca)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _leaf(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    hosts: Sequence[str],
    client: bool,
    expired: bool,
) -> x509.Certificate:
    """An end-entity certificate for ``hosts`` (server) or a client, signed by ``signer``."""
    now = datetime.now(UTC)
    start, end = (
        (now - timedelta(days=30), now - timedelta(days=1))
        if expired
        else (now - timedelta(minutes=5), now + timedelta(days=2))
    )
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(signer, hashes.SHA256())


class CertAuthority:
    """A certificate authority made at test time (EC P-256: milliseconds), writing its
    certificate to ``path`` and what it issues beside it in ``directory``."""

    _serial = itertools.count(1)

    def __init__(self, directory: Path, name: str = "roomsync test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.name = _name(name)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.path = _write_cert(self._file("ca.pem"), self.cert)

    def _file(self, suffix: str) -> Path:
        return self.directory / f"ca{id(self):x}-{next(self._serial)}-{suffix}"

    def issue(
        self, common_name: str, *, hosts: Sequence[str] = (), client: bool = False, expired: bool = False
    ) -> tuple[Path, Path]:
        """A certificate (and its key) for a server named ``hosts`` or, with ``client``, a
        client; ``expired`` makes one whose validity ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(
            _name(common_name), key, self.name, self._key, hosts=hosts, client=client, expired=expired
        )
        return _write_cert(self._file("cert.pem"), cert), _write_key(self._file("key.pem"), key)

    def server_tls(
        self,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        expired: bool = False,
        client_ca: CertAuthority | None = None,
    ) -> TlsFiles:
        """Server files for the stand-in; with ``client_ca`` the server demands a client
        certificate issued by it."""
        cert, key = self.issue(hosts[0] if hosts else "portal", hosts=hosts, expired=expired)
        return TlsFiles(cert, key, self.path, client_ca.path if client_ca is not None else None)

    def client_cert(self, common_name: str = "roomsync-agent") -> tuple[Path, Path]:
        """A client certificate and key for mTLS."""
        return self.issue(common_name, client=True)


def self_signed_tls(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """A self-signed server certificate for ``hosts``: right names, no CA a client trusts
    (``ca`` is the certificate itself)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("self-signed portal")
    cert = _leaf(name, key, name, key, hosts=hosts, client=False, expired=False)
    stem = f"self-signed-{id(key):x}"
    cert_path = _write_cert(directory / f"{stem}-cert.pem", cert)
    return TlsFiles(cert_path, _write_key(directory / f"{stem}-key.pem", key), cert_path)


def client_context(
    ca: Path | None = None, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A verifying client context: trusting ``ca`` (else the system's CAs), with a client
    certificate when given."""
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the stand-in saw it. ``headers`` never hold a credential: the
    ``Authorization`` value is replaced by its scheme and ``<redacted>``. ``status`` is
    ``None`` when the connection was reset instead of answered."""

    method: str
    path: str
    headers: Mapping[str, str]
    idempotency_key: str | None
    body_bytes: int
    fault: str | None
    status: int | None
    client_cert: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the stand-in recorded (once per ``Idempotency-Key``)."""

    idempotency_key: str
    message: Message

    @property
    def schema(self) -> str:
        return self.message.schema_


@dataclass(frozen=True, slots=True)
class _Fault:
    name: str
    retry_after: str | None
    interval: float
    path: str | None


@dataclass(slots=True)
class _Records:
    accepted: list[Accepted] = field(default_factory=list)
    events: dict[str, EventOut] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> body digest


def _problem(
    status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """An RFC 9457 problem reply."""
    body = {"type": "about:blank", "title": _reason(status), "status": status, "detail": detail, **extra}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers=headers,
        content_type="application/problem+json",
    )


def _ok(http_status: int, /, **body: Any) -> web.Response:
    return web.Response(status=http_status, body=json.dumps(body).encode(), content_type="application/json")


class _BodyError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _gunzip(body: bytes, limit: int) -> bytes:
    """One gzip member, at most ``limit`` bytes once decompressed."""
    try:
        return inflate(body, limit, GZIP_WBITS)
    except InflateError as exc:
        detail = {
            "corrupt": f"the body is not gzip: {exc.detail}",
            "too-big": f"the body decompresses to more than {limit} bytes",
            "truncated": "the gzip body is truncated",
            "trailing": "data after the gzip member",
        }[exc.kind]
        raise _BodyError(413 if exc.kind == "too-big" else 400, detail) from None


# --------------------------------------------------------------------------- one site, several agents

#: The trust order of docs/identity.md, "the most trustworthy channel wins" (lower wins).
COLLECTOR_RANK: Mapping[str, int] = {
    "sync-interface": 0,
    "collabos-api": 0,
    "ssh-dmi": 1,
    "snmp-entity": 1,
    "config": 1,
    "mdns-txt": 2,
    "usb-descriptor": 3,
}
_UNRANKED = len(set(COLLECTOR_RANK.values()))


@dataclass(frozen=True, slots=True)
class SiteUnit:
    """One physical unit of a site, merged from the latest snapshot of every agent.

    ``devices`` and ``seen_by`` pair each entry with the id of the agent that sent it;
    ``serial`` is the label-grade serial (normalised), ``None`` without one; ``product`` and
    ``firmware`` come from the most trustworthy channel that reports them."""

    devices: tuple[tuple[str, DeviceOut], ...]
    seen_by: tuple[tuple[str, SeenByOut], ...]
    serial: str | None
    category: str
    product: str
    firmware: str | None
    agents: tuple[str, ...]


def _serial_key(device: DeviceOut) -> tuple[str, str] | None:
    """Rule 1: (family, serial without whitespace, upper-case) for a label-grade serial; a
    product the catalog does not know (``other``) is its own family."""
    if not (device.serial and device.serial_label_grade):
        return None
    family = device.category if device.category != "other" else f"other:{device.product}"
    return family, "".join(device.serial.split()).upper()


def _host_key(device: DeviceOut) -> str | None:
    """Rule 3: the host name without case, a trailing dot or ``.local``."""
    name = (device.host_name or "").strip().rstrip(".").lower().removesuffix(".local")
    return name or None


def _lan_address(address: str) -> str | None:
    """Rule 4: ``address`` when it is an IP address, kept whole with its port
    (``127.0.0.1:1161`` is an endpoint of its own); ``None`` for a USB port, a host name…"""
    host = address
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:
        host = address.partition(":")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return address


def _lan_addresses(device: DeviceOut) -> set[str]:
    places = [(device.transport, device.address)] + [(s.transport, s.address) for s in device.seen_by]
    return {a for t, address in places if t != "usb" and (a := _lan_address(address)) is not None}


def _trust(device: DeviceOut) -> tuple[int, bool, float]:
    """Sort key of a device by its best channel: the collector's rank, then seen in its
    latest run before missed, then the newer report."""
    return min(
        (
            (COLLECTOR_RANK.get(s.collector, _UNRANKED), s.missed > 0, -s.last_seen.timestamp())
            for s in device.seen_by
        ),
        default=(_UNRANKED + 1, True, 0.0),
    )


class _Groups:
    """Union-find over the devices that refuses a join of two different label-grade serials
    and of two units one agent lists apart (that agent had a reason: docs/identity.md)."""

    def __init__(self, entries: Sequence[tuple[str, DeviceOut]]) -> None:
        self._parent = list(range(len(entries)))
        self._serials = [{k} if (k := _serial_key(d)) else set() for _, d in entries]
        self._agents = [{agent} for agent, _ in entries]

    def find(self, i: int) -> int:
        while self._parent[i] != i:
            i = self._parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a == b or self._agents[a] & self._agents[b]:
            return
        if self._serials[a] and self._serials[b] and self._serials[a] != self._serials[b]:
            return
        self._parent[b] = a
        self._serials[a] |= self._serials[b]
        self._agents[a] |= self._agents[b]


def merge_site(latest: Mapping[str, InventoryMessage]) -> list[SiteUnit]:
    """The units of ``latest`` (agent id → snapshot), children included, merged by rules 1
    (label-grade serial within a family), 3 (host name) and 4 (LAN address, when unambiguous)
    of docs/identity.md. Rule 2 (MAC) cannot apply: the snapshot carries no MAC address."""
    entries = [
        (agent, device)
        for agent in sorted(latest)
        for device in [*(d for p in latest[agent].places for d in p.devices), *latest[agent].unassigned]
    ]
    groups = _Groups(entries)
    for key_of in (_serial_key, _host_key):
        first: dict[object, int] = {}
        for i, (_, device) in enumerate(entries):
            if (key := key_of(device)) is not None:
                groups.join(first.setdefault(key, i), i)
    named: dict[str, set[int]] = {}  # address -> devices there with a serial or a host name
    bare: dict[str, list[int]] = {}  # address -> devices with nothing but the address
    for i, (_, device) in enumerate(entries):
        has_name = _serial_key(device) is not None or _host_key(device) is not None
        for address in _lan_addresses(device):
            if has_name:
                named.setdefault(address, set()).add(i)
            else:
                bare.setdefault(address, []).append(i)
    for address, alone in bare.items():
        standing = {groups.find(i) for i in named.get(address, ())}
        if len(standing) > 1:
            continue  # two named units at one address: ambiguous, nothing joins
        anchor = standing.pop() if standing else alone[0]
        for i in alone:
            groups.join(anchor, i)
    members: dict[int, list[int]] = {}
    for i in range(len(entries)):
        members.setdefault(groups.find(i), []).append(i)
    return [_site_unit([entries[i] for i in indices]) for indices in members.values()]


def _site_unit(pairs: list[tuple[str, DeviceOut]]) -> SiteUnit:
    ranked = sorted(pairs, key=lambda pair: _trust(pair[1]))
    serial = next((k[1] for _, d in ranked if (k := _serial_key(d))), None)
    return SiteUnit(
        devices=tuple(pairs),
        seen_by=tuple((agent, s) for agent, d in ranked for s in d.seen_by),
        serial=serial,
        category=ranked[0][1].category,
        product=ranked[0][1].product,
        firmware=next((d.firmware for _, d in ranked if d.firmware), None),
        agents=tuple(sorted({agent for agent, _ in pairs})),
    )


# --------------------------------------------------------------------------- the stand-in


class PortalStandIn(StandInServer[RecordedRequest, _Fault]):
    """The portal's side of ``docs/portal-api.md`` on 127.0.0.1, a free port, in a thread."""

    _label = "portal stand-in"
    _thread_name = "portal-standin"

    def __init__(
        self, token: str, *, tls: TlsFiles | None = None, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        if not token:
            raise ValueError("the stand-in needs a token")
        super().__init__(tls=tls, host=host, port=port)
        self._token = token.encode()
        self._records = _Records()

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for schema, path in ENDPOINTS.items():
            app.router.add_post(path, self._handler(schema))
        return app

    # ------------------------------------------------------------------ faults

    def inject(
        self,
        fault: str | int,
        times: int = 1,
        *,
        retry_after: int | float | str | None = 1,
        interval: float = 0.25,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (to ``path`` only, when given) with ``fault``:
        an HTTP status 400–599, ``"slow"``, ``"reset"`` or ``"reset-after-accept"``.
        ``retry_after`` is sent with 503 and 429; ``interval`` is the slow reply's pace."""
        name = fault_name(fault, times, FAULTS)
        after = (
            None
            if retry_after is None
            else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        )
        with self._lock:
            self._faults.extend(_Fault(name, after, interval, path) for _ in range(times))

    def _take_fault(self, path: str) -> _Fault | None:
        return self._faults.take(path)

    # ------------------------------------------------------------------ records

    @property
    def messages(self) -> list[Accepted]:
        """Every message recorded, in the order accepted."""
        with self._lock:
            return list(self._records.accepted)

    @property
    def inventory(self) -> list[InventoryMessage]:
        """The inventory messages recorded, in the order accepted."""
        return [a.message for a in self.messages if isinstance(a.message, InventoryMessage)]

    @property
    def latest_inventory(self) -> InventoryMessage | None:
        """The snapshot a portal shows: the recorded one with the highest sequence."""
        return max(self.inventory, key=lambda m: m.sequence, default=None)

    @property
    def latest_by_agent(self) -> dict[str, InventoryMessage]:
        """Each agent's snapshot (by ``agent.id``) with its highest sequence: a higher one
        supersedes that agent's view only, never another agent's."""
        latest: dict[str, InventoryMessage] = {}
        for message in self.inventory:
            held = latest.get(message.agent.id)
            if held is None or message.sequence > held.sequence:
                latest[message.agent.id] = message
        return latest

    def site_units(self) -> list[SiteUnit]:
        """The site's units: the devices of every agent's latest snapshot merged by
        ``docs/identity.md`` (see :func:`merge_site`)."""
        return merge_site(self.latest_by_agent)

    @property
    def events(self) -> list[EventOut]:
        """Every event recorded, once per event id, in the order first accepted."""
        with self._lock:
            return list(self._records.events.values())

    def _forget(self) -> None:
        self._records = _Records()  # messages, events and Idempotency-Keys

    def _log(self, request: web.Request, fault: _Fault | None, status: int | None, size: int) -> None:
        entry = RecordedRequest(
            **request_fields(request, size),
            idempotency_key=request.headers.get("Idempotency-Key"),
            fault=fault.name if fault else None,
            status=status,
        )
        self._add_request(entry)

    # ------------------------------------------------------------------ requests

    def _handler(self, schema: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, schema)

        return handle

    async def _handle(self, request: web.Request, schema: str) -> web.StreamResponse:
        body = await request.read()
        fault = self._take_fault(request.path)
        if fault is not None and fault.name == RESET:
            return self._reset(request, fault, len(body))
        reply = self._fault_reply(fault) or self._process(request.headers, body, schema)
        if fault is not None and fault.name == RESET_AFTER_ACCEPT:
            return self._reset(request, fault, len(body))
        if fault is not None and fault.name == SLOW:
            self._log(request, fault, reply.status, len(body))
            return await _trickle(request, reply, fault.interval)
        self._log(request, fault, reply.status, len(body))
        return reply

    def _reset(self, request: web.Request, fault: _Fault, size: int) -> web.StreamResponse:
        """Reset the connection (RST, not FIN) and answer nothing."""
        self._log(request, fault, None, size)
        return reset_connection(request)

    @staticmethod
    def _fault_reply(fault: _Fault | None) -> web.Response | None:
        if fault is None or not fault.name.isdigit():
            return None
        status = int(fault.name)
        headers = {}
        if status in _RETRY_AFTER_STATUSES and fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="roomsync-portal", error="invalid_token"'
        return _problem(status, f"injected fault {status}", headers)

    def _authorized(self, value: str | None) -> bool:
        scheme, _, credentials = (value or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    def _process(self, headers: Mapping[str, str], body: bytes, schema: str) -> web.Response:
        """What the portal answers a request that met no fault; records a new message."""
        if not self._authorized(headers.get("Authorization")):
            return _problem(
                401,
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="roomsync-portal", error="invalid_token"'},
            )
        if _media_type(headers.get("Content-Type")) != "application/json":
            return _problem(415, "Content-Type must be application/json")
        if (headers.get("Content-Encoding") or "").strip().lower() != "gzip":
            return _problem(415, "Content-Encoding must be gzip")
        key = headers.get("Idempotency-Key")
        if not key or len(key) > 255 or not set(key) <= _KEY_CHARS:
            return _problem(400, "Idempotency-Key must be 1 to 255 visible ASCII characters")
        try:
            data = _gunzip(body, MAX_JSON_BYTES)
            message = _parse(data, schema)
        except _BodyError as exc:
            return _problem(exc.status, str(exc))
        except ValidationError as exc:
            return _problem(
                400,
                f"the message does not match {schema}",
                errors=exc.errors(include_url=False, include_input=False, include_context=False),
            )
        return self._record(key, hashlib.sha256(data).hexdigest(), message)

    def _record(self, key: str, digest: str, message: Message) -> web.Response:
        with self._changed:
            known = self._records.keys.get(key)
            if known is not None:
                if known != digest:
                    return _problem(422, "Idempotency-Key reused with another body")
                return _ok(200, status="duplicate", idempotency_key=key)
            self._records.keys[key] = digest
            self._records.accepted.append(Accepted(key, message))
            new = 0
            if isinstance(message, EventsMessage):
                for event in message.events:
                    if str(event.id) not in self._records.events:
                        self._records.events[str(event.id)] = event
                        new += 1
            self._changed.notify_all()
        extra = {"events": new} if isinstance(message, EventsMessage) else {}
        return _ok(202, status="accepted", idempotency_key=key, **extra)


def _parse(data: bytes, schema: str) -> Message:
    """The message ``data`` holds, validated by the model of ``schema`` (strict, no extras)."""
    model = InventoryMessage if schema == SCHEMA_INVENTORY else EventsMessage
    assert schema in (SCHEMA_INVENTORY, SCHEMA_EVENTS)
    try:
        with paused_gc():  # a big snapshot is a burst of acyclic objects (see paused_gc)
            return model.model_validate_json(data)  # one parse: pydantic-core reads the JSON
    except ValidationError as exc:
        invalid = [e for e in exc.errors(include_url=False) if e["type"] == "json_invalid"]
        if invalid:
            raise _BodyError(400, f"the body is not JSON: {invalid[0]['msg']}") from None
        raise


async def _trickle(request: web.Request, reply: web.Response, interval: float) -> web.StreamResponse:
    """Send ``reply``'s status and headers at once, then its body one byte per ``interval``."""
    body = bytes(reply.body) if isinstance(reply.body, bytes | bytearray) else b""
    stream = web.StreamResponse(
        status=reply.status, headers={k: v for k, v in reply.headers.items() if k.lower() != "content-length"}
    )
    stream.content_length = len(body)
    await stream.prepare(request)
    try:
        for i in range(len(body)):
            await asyncio.sleep(interval)
            await stream.write(body[i : i + 1])
        await stream.write_eof()
    except ConnectionError:  # the client gave up: what the fault is for
        pass
    return stream


# ---------------------------------------------------------------------- run by hand


def _summary(accepted: Accepted) -> str:
    """One line of what an accepted message holds."""
    message = accepted.message
    head = f"accepted {accepted.schema} from agent {message.agent.id}, sequence {message.sequence}"
    if isinstance(message, InventoryMessage):
        units = sum(len(p.devices) for p in message.places) + len(message.unassigned)
        return f"{head}: {len(message.places)} rooms, {units} units"
    kinds = sorted({str(e.type) for e in message.events})
    return f"{head}: {len(message.events)} events ({', '.join(kinds)})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.portal_standin``: the reference portal, in the foreground."""
    import argparse
    import sys

    from agent.secretfile import SecretFileError, read_secret

    ap = argparse.ArgumentParser(
        prog="python -m tools.portal_standin",
        description="The portal's side of docs/portal-api.md, for trying roomsync push: checks the "
        "bearer token, the gzip body and each message against the schema, answers as a portal does, "
        "and prints each request and what each accepted message holds. Ctrl-C stops it.",
    )
    ap.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument(
        "--token-file", type=Path, required=True, help="file holding the bearer token agents send"
    )
    ap.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM) …")
    ap.add_argument("--tls-key", type=Path, help="… and this key (PEM)")
    ap.add_argument("--json", action="store_true", help="print each accepted message as one JSON line")
    args = ap.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    if not 0 < args.port < 65536:
        ap.error(f"--port {args.port}: expected 1-65535")
    try:
        token = read_secret(args.token_file, "portal token")
    except SecretFileError as exc:
        ap.error(str(exc))
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_cert) if args.tls_cert and args.tls_key else None
    portal = PortalStandIn(token, tls=tls, host=args.host, port=args.port)
    try:
        portal.start()
    except (OSError, RuntimeError) as exc:
        print(f"portal stand-in: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f'portal stand-in listening on {portal.url} (agents: [portal] url = "{portal.url}")', flush=True)

    def request_line(r: RecordedRequest) -> str:
        status = r.status if r.status is not None else "reset"
        return f"{r.method} {r.path} -> {status} ({r.body_bytes} bytes gzip)"

    def message_line(a: Accepted) -> str:
        if args.json:
            return json.dumps(a.message.model_dump(mode="json", by_alias=True))
        return "  " + _summary(a)

    return follow(
        portal,
        [(lambda: portal.requests, request_line), (lambda: portal.messages, message_line)],
        lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    raise SystemExit(main())
