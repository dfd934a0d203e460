"""A stand-in for CollabOS devices (Rally Bar, Rally Bar Mini, RoomMate) serving their
"Local Network Access" HTTPS API (the Device Management API v1.0), for tests of the agent's
CollabOS client and of the whole agent.

Every simulated device listens on its own loopback address and port (``127.0.0.2``,
``127.0.0.3``…: all of 127.0.0.0/8 is loopback on Linux) with its own self-signed
certificate, all served from one background thread with its own event loop, so a synchronous
test, an async test and an agent in a subprocess can all talk to them::

    bar = rally_bar_mini("127.0.0.2", tmp_path)             # a CollabosDevice
    with CollabosStandIn(bar) as devices:                    # or start() / stop()
        ...  # POST https://{bar.address}/api/v1/signin, then GETs with the bearer token,
        ...  # pinning the certificate: ssl=bar.fingerprint (aiohttp.Fingerprint)
        assert bar.wait_for(lambda d: d.signins == 1)

In an async test, wait with ``await asyncio.to_thread(bar.wait_for, condition)``: the
blocking ``wait_for`` would otherwise stall the test's own client. ``stop()`` then
``start()`` again serves on the same ports with the same records.

The API as documented (written here again on purpose: the stand-in checks the agent's
:mod:`agent.collectors.collabos_api` against the documented facts and does not reuse them):

* ``POST /api/v1/signin`` with ``{"username", "password"}`` answers ``{"code": 200,
  "message": "", "result": {"auth_token": <JWT>}}``; wrong credentials ``{"code": 401,
  "message": "Invalid Credentials", "result": null}`` with HTTP 401 (HTTP 200 when the device
  has ``auth_http_status=200``, as some firmware does); a body that is not a JSON object 400.
* ``GET /api/v1/device``, ``/api/v1/peripherals``, ``/api/v1/insights/device`` and
  ``/api/v1/insights/room`` need ``Authorization: Bearer <token>``: only a token this device
  signed (HS256 with a key of its own) and not expired; otherwise 401 ``"Unauthorized"`` (same
  ``auth_http_status`` rule). Tokens live ``token_lifetime`` seconds (900). No logout.
* The insights answer 404 (envelope code 404) below CollabOS 1.13 (``collabos_version``).
* Rate limits in a sliding window of ``rate_window`` seconds (60): ``signin_per_minute``
  sign-ins (5) and ``calls_per_minute`` other calls (10); ``None`` disables one. Over the
  limit: HTTP 429, ``Retry-After`` (whole seconds until the oldest counted call leaves the
  window) and ``{"code": 429, "message": "Too Many Requests", "result": null}``. Refused
  calls do not count; a sign-in counts whether or not its credentials are right.
* ``api_enabled=False``: every request answers 404 with an HTML page, like a plain web
  server; so does any path or method besides the five above (recorded all the same).
* ``loose_types=True`` sends numbers and booleans as strings (``"true"``) and ``vid``/``pid``
  as decimal strings (``"1133"``), as some firmware does.
* ``latency`` seconds are added to every reply and ``path_latency[path]`` to that path's
  (a real ``/api/v1/insights/room`` can take 15 s: ``path_latency={INSIGHTS_ROOM: 15.0}``).

Order for each request: an injected fault; ``api_enabled``; the path and method (404 HTML);
the rate limit (429); the bearer token (401); the reply. A fault answers instead of the device,
whatever the request (no token needed).

Faults (:meth:`CollabosDevice.inject`, ``count`` times, to ``path`` only when given; consumed
one per matching request, first injected first):

* ``"429"`` (``retry_after``: seconds, 1 by default; ``None`` leaves the header out);
* ``"expire-token"``: every token issued so far expires, then the request is handled normally
  (a read answers 401);
* ``"body-401"`` / ``"body-500"``: HTTP 200 with envelope code 401 ``"Unauthorized"`` / 500
  ``"Internal Error"``; ``"http-500"``: HTTP 500 (envelope code 500);
* ``"slow"`` (``seconds``, 1 by default): wait, then handled normally;
* ``"hang"``: never answered; at ``stop()`` the connection is closed (stop is not delayed);
* ``"garbage"``: HTTP 200 whose body is not JSON; ``"huge"``: HTTP 200, a valid envelope of
  more than 2 MiB (``size`` bytes of padding in ``result``); ``"deep"``: HTTP 200, JSON nested
  ``levels`` (10,000) deep;
* ``"reset"``: the connection is reset (RST) without a reply.

Records (copies, safe from any thread): ``device.requests`` (:class:`RecordedRequest`, in the
order answered; a hang is recorded when it arrives), ``signins`` (POSTs to the sign-in path),
``passwords_received`` (requests that carried a password), ``tokens_issued``,
``pending_faults``; ``CollabosStandIn.all_requests()`` over every device;
``wait_for(condition, timeout)`` on a device or the stand-in; ``device.clear()``. Neither
records nor any ``repr()`` hold a password or a token: ``Authorization`` is kept as
``"Bearer <redacted>"``, and the password or anything shaped like a JWT is cut out of the
path, query and headers.

TLS: each device makes a self-signed EC certificate (SAN: its IP address and its
``systemName``) in the directory it is given; ``cert_sha256`` (DER certificate) and
``spki_sha256`` (DER SubjectPublicKeyInfo) are hex SHA-256 for pinning, ``fingerprint`` is
the ``aiohttp.Fingerprint``. :meth:`CollabosDevice.rotate_certificate` makes a new key and
certificate, served to new connections at once (open keep-alive connections keep the old
one); :meth:`CollabosDevice.use_tls` serves a certificate from a :class:`CertAuthority`
(``ca.server_tls(hosts=(bar.host, bar.system_name))``) for clients that verify with
``bar.ca_file``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import ipaddress
import itertools
import json
import math
import re
import secrets
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.faults import FaultQueue
from tools.portal_standin import CertAuthority, TlsFiles

__all__ = [
    "DEVICE",
    "FAULTS",
    "INSIGHTS_DEVICE",
    "INSIGHTS_ROOM",
    "PERIPHERALS",
    "READS",
    "SIGNIN",
    "CertAuthority",
    "CollabosDevice",
    "CollabosStandIn",
    "RecordedRequest",
    "TlsFiles",
    "rally_bar",
    "rally_bar_mini",
    "roommate",
]

SIGNIN = "/api/v1/signin"
DEVICE = "/api/v1/device"
PERIPHERALS = "/api/v1/peripherals"
INSIGHTS_DEVICE = "/api/v1/insights/device"
INSIGHTS_ROOM = "/api/v1/insights/room"
#: The four documented reads (GET), in the order of the documentation.
READS = (DEVICE, PERIPHERALS, INSIGHTS_DEVICE, INSIGHTS_ROOM)
#: The first CollabOS version with the insights, and the first with environmental data.
INSIGHTS_SINCE = (1, 13)
ENVIRONMENT_SINCE = (1, 15)
#: The injectable faults and the parameters each takes (with their defaults).
FAULTS = (
    "429",
    "expire-token",
    "body-401",
    "body-500",
    "http-500",
    "slow",
    "hang",
    "garbage",
    "huge",
    "deep",
    "reset",
)
HUGE_BYTES = 2 * 1024 * 1024 + 1
DEEP_LEVELS = 10_000
_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "429": {"retry_after": 1},
    "slow": {"seconds": 1.0},
    "huge": {"size": HUGE_BYTES},
    "deep": {"levels": DEEP_LEVELS},
}
#: The largest request body read (aiohttp answers 413 past it).
MAX_REQUEST_BYTES = 1024 * 1024
_REDACTED = "<redacted>"
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_NOT_FOUND_HTML = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n"
    b"<body>\r\n<center><h1>404 Not Found</h1></center>\r\n</body>\r\n</html>\r\n"
)
_GARBAGE = b'{"code": 200, "message": "", "result": {\x00\xff<html><body>upstream error'
_files = itertools.count(1)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as a device saw it. ``query`` is the raw query string (``""`` without
    one); ``headers`` keep ``Authorization`` as its scheme and ``<redacted>``; the password
    and anything shaped like a JWT are cut out of ``path``, ``query`` and ``headers``.
    ``had_password``: the body was a JSON object with a ``password`` key, or the device's
    password appeared anywhere in the request. ``status`` is ``None`` when the connection was
    reset or hung instead of answered. ``at`` is ``time.monotonic()`` on arrival; ``device``
    is the ``host:port`` that received it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    had_password: bool
    fault: str | None
    status: int | None
    at: float
    device: str


@dataclass(frozen=True, slots=True)
class _Fault:
    name: str
    path: str | None
    params: Mapping[str, Any]


# --------------------------------------------------------------------------- TLS


def _self_signed(directory: Path, host: str, system_name: str | None) -> TlsFiles:
    """A device's self-signed certificate (EC P-256) for its IP address and host name; the
    certificate is its own ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, system_name or host)])
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
    if system_name:
        names.append(x509.DNSName(system_name))
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    stem = directory / f"collabos-{host}-{next(_files)}"
    cert_path = Path(f"{stem}-cert.pem")
    key_path = Path(f"{stem}-key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return TlsFiles(cert_path, key_path, cert_path)


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    return context


# --------------------------------------------------------------------------- replies


def _envelope(
    http_status: int, code: int, message: str, result: Any = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps({"code": code, "message": message, "result": result}).encode()
    return web.Response(status=http_status, body=body, content_type="application/json", headers=headers)


def _not_found() -> web.Response:
    return web.Response(status=404, body=_NOT_FOUND_HTML, content_type="text/html")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _version(text: Any) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return (int(match[1]), int(match[2])) if match else None


def _loosen(value: Any, key: str | None = None) -> Any:
    """``value`` as loose firmware sends it: numbers and booleans as strings, USB ids as
    decimal strings."""
    if isinstance(value, dict):
        return {k: _loosen(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_loosen(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if key in ("vid", "pid"):
        if isinstance(value, str) and value.strip().lower().startswith("0x"):
            return str(int(value.strip(), 16))
        return str(value) if isinstance(value, int) else value
    if isinstance(value, int | float):
        return str(value)
    return value


def _reset(request: web.Request) -> None:
    """Reset the connection (RST, not FIN)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --------------------------------------------------------------------------- one device


class CollabosDevice:
    """One simulated CollabOS device: its configuration (plain attributes, change them at
    any time), its TLS material, its tokens, rate windows, faults and records.

    ``directory`` is where its certificates go (a test's ``tmp_path``); with ``tls`` it
    serves that certificate instead. ``port=0`` takes a free port at ``start()``. The
    ``device``, ``peripherals``, ``insights_device`` and ``insights_room`` dicts are the
    ``result`` of the four reads, sent as they are (deep-copied; ``loose_types`` loosens them).
    """

    def __init__(
        self,
        host: str,
        directory: Path | None = None,
        *,
        password: str,
        username: str = "admin",
        port: int = 0,
        device: dict[str, Any] | None = None,
        peripherals: dict[str, Any] | None = None,
        insights_device: dict[str, Any] | None = None,
        insights_room: dict[str, Any] | None = None,
        latency: float = 0.0,
        path_latency: dict[str, float] | None = None,
        signin_per_minute: int | None = 5,
        calls_per_minute: int | None = 10,
        rate_window: float = 60.0,
        token_lifetime: float = 900.0,
        api_enabled: bool = True,
        auth_http_status: int = 401,
        loose_types: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        ipaddress.ip_address(host)  # a literal address: each device listens on its own
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.device: dict[str, Any] = device if device is not None else {}
        self.peripherals: dict[str, Any] = (
            peripherals
            if peripherals is not None
            else {
                k: []
                for k in ("remotes", "sights", "displays", "ipControllers", "usbControllers", "usbDevices")
            }
        )
        self.insights_device: dict[str, Any] = insights_device if insights_device is not None else {}
        self.insights_room: dict[str, Any] = insights_room if insights_room is not None else {}
        self.latency = latency
        self.path_latency: dict[str, float] = path_latency if path_latency is not None else {}
        self.signin_per_minute = signin_per_minute
        self.calls_per_minute = calls_per_minute
        self.rate_window = rate_window
        self.token_lifetime = token_lifetime
        self.api_enabled = api_enabled
        self.auth_http_status = auth_http_status
        self.loose_types = loose_types
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._key = secrets.token_bytes(32)
        self._tokens: dict[str, float] = {}  # token id -> expiry (time.time()); never a token
        self._signin_times: deque[float] = deque()
        self._call_times: deque[float] = deque()
        self._faults: FaultQueue[_Fault] = FaultQueue(self._lock)
        self._requests: list[RecordedRequest] = []
        self._signins = 0
        self._passwords = 0
        self._front: ssl.SSLContext | None = None
        if tls is None and directory is None:
            raise ValueError("a CollabosDevice needs a directory for its certificate, or tls=")
        self._directory = directory
        self._tls = tls if tls is not None else _self_signed(directory or Path(), host, self.system_name)
        self._cert = x509.load_pem_x509_certificate(self._tls.cert.read_bytes())
        self._context = _server_context(self._tls)

    def __repr__(self) -> str:  # never the password
        where = f"{self.host}:{self.port}" if self.port else self.host
        return (
            f"CollabosDevice({self.device.get('modelName')!r}, serial={self.device.get('serialNumber')!r}, "
            f"at={where!r})"
        )

    # ------------------------------------------------------------------ identity

    @property
    def address(self) -> str:
        """``host:port`` (once the port is known)."""
        if not self.port:
            raise RuntimeError(f"{self!r} has no port yet: start the stand-in first")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``https://host:port`` (the API is under ``/api/v1/``)."""
        return f"https://{self.address}"

    @property
    def collabos_version(self) -> str | None:
        """``device["collabOSVersion"]``; below 1.13 the insights answer 404."""
        value = self.device.get("collabOSVersion")
        return str(value) if value is not None else None

    @collabos_version.setter
    def collabos_version(self, value: str) -> None:
        self.device["collabOSVersion"] = value

    @property
    def system_name(self) -> str | None:
        value = self.device.get("systemName")
        return str(value) if value else None

    @property
    def has_insights(self) -> bool:
        """CollabOS 1.13 or later (or a version that does not parse)."""
        version = _version(self.collabos_version)
        return version is None or version >= INSIGHTS_SINCE

    # ------------------------------------------------------------------ TLS

    @property
    def tls(self) -> TlsFiles:
        """The certificate and key served now; ``ca`` verifies it (the certificate itself
        when self-signed)."""
        with self._lock:
            return self._tls

    @property
    def ca_file(self) -> Path:
        return self.tls.ca

    @property
    def certificate(self) -> x509.Certificate:
        with self._lock:
            return self._cert

    @property
    def cert_sha256(self) -> str:
        """Hex SHA-256 of the DER certificate served now."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def spki_sha256(self) -> str:
        """Hex SHA-256 of the DER SubjectPublicKeyInfo of the certificate served now."""
        spki = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    @property
    def fingerprint(self) -> aiohttp.Fingerprint:
        """Pins the certificate served now (``ssl=`` of an aiohttp request)."""
        return aiohttp.Fingerprint(bytes.fromhex(self.cert_sha256))

    def use_tls(self, files: TlsFiles) -> None:
        """Serve ``files`` (e.g. ``CertAuthority.server_tls(hosts=(host, system_name))``) to
        new connections from now on."""
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        context = _server_context(files)
        with self._lock:
            self._tls, self._cert, self._context = files, cert, context

    def rotate_certificate(self) -> None:
        """A new key and self-signed certificate (both hashes change), served to new
        connections from now on; no restart needed."""
        directory = self._directory or self.tls.cert.parent
        self.use_tls(_self_signed(directory, self.host, self.system_name))

    def _front_context(self) -> ssl.SSLContext:
        """The context the listening socket keeps: at each handshake it hands over to the
        context of the certificate served now (the SNI callback runs with or without SNI)."""
        with self._lock:
            if self._front is None:
                self._front = _server_context(self._tls)
                self._front.sni_callback = self._pick_context
            return self._front

    def _pick_context(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        with self._lock:
            current = self._context
        connection.context = current

    # ------------------------------------------------------------------ tokens

    def _issue(self) -> str:
        now = time.time()
        token_id = secrets.token_hex(8)
        expires = now + self.token_lifetime
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        payload = _b64(
            json.dumps(
                {"sub": self.username, "iat": int(now), "exp": int(expires), "jti": token_id},
                separators=(",", ":"),
            ).encode()
        )
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        with self._lock:
            self._tokens[token_id] = expires
        return f"{header}.{payload}.{_b64(signature)}"

    def _token_ok(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").strip().partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3:
            return False
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(parts[2]), expected):
                return False
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            return False
        token_id = payload.get("jti") if isinstance(payload, dict) else None
        with self._lock:
            expires = self._tokens.get(token_id) if isinstance(token_id, str) else None
        return expires is not None and time.time() < expires

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (what the ``"expire-token"`` fault does)."""
        with self._lock:
            for token_id in self._tokens:
                self._tokens[token_id] = -math.inf

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._tokens)

    # ------------------------------------------------------------------ faults

    def inject(self, fault: str | int, *, path: str | None = None, count: int = 1, **params: Any) -> None:
        """Answer the next ``count`` requests (to ``path`` only, when given) with ``fault``,
        one of :data:`FAULTS` (``429`` may be an int); ``retry_after`` for ``"429"``,
        ``seconds`` for ``"slow"``, ``size`` for ``"huge"``, ``levels`` for ``"deep"``."""
        fault = str(fault)
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
        allowed = _PARAMS.get(fault, {})
        unknown = set(params) - set(allowed)
        if unknown:
            raise TypeError(
                f"fault {fault!r} takes {sorted(allowed) or 'no parameters'}, not {sorted(unknown)}"
            )
        if count < 1:
            raise ValueError("count must be 1 or more")
        entry = _Fault(fault, path, {**allowed, **params})
        with self._lock:
            self._faults.extend(entry for _ in range(count))

    @property
    def pending_faults(self) -> list[str]:
        """Faults injected and not yet used, in order."""
        return self._faults.pending

    def _take_fault(self, path: str) -> _Fault | None:
        return self._faults.take(path)

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered, reset or hung, in that order (nothing secret kept)."""
        with self._lock:
            return list(self._requests)

    @property
    def signins(self) -> int:
        """POST requests to the sign-in path received, whatever became of them."""
        with self._lock:
            return self._signins

    @property
    def passwords_received(self) -> int:
        """Requests that carried a password (see :attr:`RecordedRequest.had_password`)."""
        with self._lock:
            return self._passwords

    def clear(self) -> None:
        """Forget the records and pending faults (tokens and rate windows stay)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._signins = self._passwords = 0

    def reset_rate_limits(self) -> None:
        """Empty both rate windows."""
        with self._lock:
            self._signin_times.clear()
            self._call_times.clear()

    def wait_for(self, condition: Callable[[CollabosDevice], bool], timeout: float = 5.0) -> bool:
        """Block until ``condition(self)`` holds (checked after each request); ``False`` when
        ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)

    def _arrived(self, method: str, path: str, had_password: bool) -> None:
        with self._lock:
            if method == "POST" and path == SIGNIN:
                self._signins += 1
            if had_password:
                self._passwords += 1

    def _record(self, entry: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(entry)
            self._changed.notify_all()

    def _scrub(self, text: str) -> str:
        text = _JWT_SHAPE.sub(_REDACTED, text)
        return text.replace(self.password, _REDACTED) if self.password else text

    def _redact(self, headers: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for name, value in headers.items():
            if name.lower() == "authorization":
                scheme = value.split(None, 1)[0] if value.strip() else ""
                value = f"{scheme} {_REDACTED}".strip()
            out[name] = self._scrub(value)
        return out

    def _carries_password(self, request: web.Request, body: bytes) -> bool:
        try:
            doc = json.loads(body) if body else None
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and "password" in doc:
            return True
        secret = self.password
        if not secret:
            return False
        texts = [request.raw_path, request.path, request.query_string, *request.headers.values()]
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError, binascii.Error):
                texts.append(base64.b64decode(value.strip(), validate=True).decode("utf-8", "replace"))
        return secret.encode() in body or any(secret in t for t in texts)

    # ------------------------------------------------------------------ answers

    def _result(self, path: str) -> dict[str, Any]:
        data = {
            DEVICE: self.device,
            PERIPHERALS: self.peripherals,
            INSIGHTS_DEVICE: self.insights_device,
            INSIGHTS_ROOM: self.insights_room,
        }.get(path, {})
        result = copy.deepcopy(data)
        return _loosen(result) if self.loose_types else result

    def _refused(self, message: str) -> web.Response:
        return _envelope(self.auth_http_status, 401, message)

    def _limited(self, times: deque[float], limit: int | None) -> web.Response | None:
        """429 when ``limit`` calls are already in the window; else count this one."""
        if limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            while times and times[0] <= now - self.rate_window:
                times.popleft()
            if len(times) < limit:
                times.append(now)
                return None
            wait = max(1, math.ceil(times[0] + self.rate_window - now))
        return _envelope(429, 429, "Too Many Requests", headers={"Retry-After": str(wait)})

    def _answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> web.Response:
        """What the device answers a request that met no fault."""
        if not self.api_enabled:
            return _not_found()
        if method == "POST" and path == SIGNIN:
            return self._limited(self._signin_times, self.signin_per_minute) or self._signin(body)
        if method != "GET" or path not in READS:
            return _not_found()
        limited = self._limited(self._call_times, self.calls_per_minute)
        if limited is not None:
            return limited
        if not self._token_ok(headers.get("Authorization")):
            return self._refused("Unauthorized")
        if path in (INSIGHTS_DEVICE, INSIGHTS_ROOM) and not self.has_insights:
            return _envelope(404, 404, "Not Found")
        return _envelope(200, 200, "", self._result(path))

    def _signin(self, body: bytes) -> web.Response:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            return _envelope(400, 400, "Bad Request")
        user, password = doc.get("username"), doc.get("password")
        if not (isinstance(user, str) and isinstance(password, str)):
            return self._refused("Invalid Credentials")
        right_user = hmac.compare_digest(user.encode(), self.username.encode())
        right_password = hmac.compare_digest(password.encode(), self.password.encode())
        if not (right_user and right_password):
            return self._refused("Invalid Credentials")
        return _envelope(200, 200, "", {"auth_token": self._issue()})

    def _fault_reply(self, fault: _Fault, path: str) -> web.Response | None:
        """The reply a fault gives instead of the device's; ``None`` for the faults after
        which the request is handled normally."""
        name = fault.name
        if name == "429":
            after = fault.params["retry_after"]
            headers = (
                {} if after is None else {"Retry-After": after if isinstance(after, str) else f"{after:g}"}
            )
            return _envelope(429, 429, "Too Many Requests", headers=headers)
        if name == "body-401":
            return _envelope(200, 401, "Unauthorized")
        if name == "body-500":
            return _envelope(200, 500, "Internal Error")
        if name == "http-500":
            return _envelope(500, 500, "Internal Server Error")
        if name == "garbage":
            return web.Response(status=200, body=_GARBAGE, content_type="application/json")
        if name == "huge":
            result = {**self._result(path), "padding": "x" * int(fault.params["size"])}
            return _envelope(200, 200, "", result)
        if name == "deep":
            levels = int(fault.params["levels"])
            body = '{"code": 200, "message": "", "result": ' + '{"a": ' * levels + "0" + "}" * levels + "}"
            return web.Response(status=200, body=body.encode(), content_type="application/json")
        return None


# --------------------------------------------------------------------------- factories

# Every value below is illustrative: shaped like the documented fields, not read off a unit.
_SIGHT_FIRMWARE = "1.0.56"
_TAP_IP_FIRMWARE = "1.6.20"
_MIC_POD_PID = "0x08c8"  # illustrative: not a verified Rally Mic Pod product id


def _mac(serial: str, salt: str) -> str:
    digest = hashlib.sha256(f"{serial}/{salt}".encode()).digest()
    return ":".join(f"{b:02X}" for b in (0x44, 0x73, 0xD6, *digest[:3]))


def _collabos_device(
    model: str,
    prefix: str,
    host: str,
    directory: Path,
    *,
    serial: str,
    password: str,
    collabos_version: str,
    tap_ip: str | None,
    tap_serial: str,
    sight: bool,
    mic_pod: bool,
    tap_usb: bool,
    camera: bool,
    remote: bool,
    device_name: str | None,
    service_provider: str,
    options: dict[str, Any],
) -> CollabosDevice:
    system_name = f"{prefix}-{serial[-4:]}"
    device = {
        "collabOSVersion": collabos_version,
        "hwVersion": "2",
        "serialNumber": serial,
        "modelName": model,
        "systemName": system_name,
        "deviceName": device_name if device_name is not None else system_name,
        "ethernetMAC": _mac(serial, "eth"),
        "wifiMAC": _mac(serial, "wifi"),
        "deviceConfiguration": "DEVICE",
        "serviceProvider": service_provider,
    }
    peripherals: dict[str, Any] = {
        "remotes": [{"macAddress": _mac(serial, "remote"), "name": "Logitech Remote"}] if remote else [],
        "sights": (
            [
                {
                    "id": 1,
                    "cameraConnected": True,
                    "microphoneConnected": True,
                    "firmwareVersion": _SIGHT_FIRMWARE,
                }
            ]
            if sight
            else []
        ),
        "displays": [],
        "ipControllers": (
            [
                {
                    "name": "Tap IP",
                    "manufacturer": "Logitech",
                    "firmwareVersion": _TAP_IP_FIRMWARE,
                    "serialNumber": tap_serial,
                    "ipAddress": tap_ip,
                    "deviceName": f"TapIP-{tap_serial[-4:]}",
                }
            ]
            if tap_ip is not None
            else []
        ),
        "usbControllers": (
            [
                {
                    "firmwareVersion": "1.4.90",
                    "swMcuVersion": "1.1.3",
                    "hwMcuVersion": "2",
                    "hdmiVersion": "1.0.8",
                }
            ]
            if tap_usb
            else []
        ),
        "usbDevices": (
            [
                {
                    "id": 1,
                    "name": "Rally Mic Pod",
                    "vid": "0x046d",
                    "pid": _MIC_POD_PID,
                    "audioFirmwareVersion": "2.1.3",
                    "videoFirmwareVersion": "",
                    "isAudioDevice": True,
                    "isVideoDevice": False,
                }
            ]
            if mic_pod
            else []
        ),
    }
    version = _version(collabos_version)
    room: dict[str, Any] = {}
    if camera or sight:
        room["occupancyCount"] = 0
        if version is None or version >= ENVIRONMENT_SINCE:
            room.update({"temperature": 21.5, "humidity": 41, "co2": 612})
    return CollabosDevice(
        host,
        directory,
        password=password,
        device=device,
        peripherals=peripherals,
        insights_device={"deviceState": "IDLE", "micMuted": False, "speakerVolume": 60},
        insights_room=room,
        **options,
    )


def rally_bar_mini(
    host: str,
    directory: Path,
    *,
    serial: str = "2232LZ51E7A8",
    password: str = "s3cret",
    collabos_version: str = "1.15.2",
    tap_ip: str | None = "127.0.0.99",
    tap_serial: str = "2246FDA0B4C8",
    sight: bool = True,
    mic_pod: bool = True,
    tap_usb: bool = False,
    remote: bool = False,
    device_name: str | None = None,
    service_provider: str = "MTR",
    **options: Any,
) -> CollabosDevice:
    """A Rally Bar Mini (VR0020, ``RallyBarMini-<last 4 of serial>``) in appliance mode, with
    a Tap IP at ``tap_ip`` (``None``: none), a Sight, a Rally Mic Pod and, on request, a Tap
    USB and a remote. ``options`` go to :class:`CollabosDevice` (``port``, ``latency``…)."""
    return _collabos_device(
        "VR0020",
        "RallyBarMini",
        host,
        directory,
        serial=serial,
        password=password,
        collabos_version=collabos_version,
        tap_ip=tap_ip,
        tap_serial=tap_serial,
        sight=sight,
        mic_pod=mic_pod,
        tap_usb=tap_usb,
        camera=True,
        remote=remote,
        device_name=device_name,
        service_provider=service_provider,
        options=options,
    )


def rally_bar(
    host: str,
    directory: Path,
    *,
    serial: str = "2219FDX3K7Q2",
    password: str = "s3cret",
    collabos_version: str = "1.15.2",
    tap_ip: str | None = "127.0.0.98",
    tap_serial: str = "2240FDB1C9D3",
    sight: bool = False,
    mic_pod: bool = True,
    tap_usb: bool = False,
    remote: bool = True,
    device_name: str | None = None,
    service_provider: str = "MTR",
    **options: Any,
) -> CollabosDevice:
    """A Rally Bar (VR0019, ``RallyBar-<last 4 of serial>``) with a Tap IP, a Rally Mic Pod
    and its remote; a Sight on request."""
    return _collabos_device(
        "VR0019",
        "RallyBar",
        host,
        directory,
        serial=serial,
        password=password,
        collabos_version=collabos_version,
        tap_ip=tap_ip,
        tap_serial=tap_serial,
        sight=sight,
        mic_pod=mic_pod,
        tap_usb=tap_usb,
        camera=True,
        remote=remote,
        device_name=device_name,
        service_provider=service_provider,
        options=options,
    )


def roommate(
    host: str,
    directory: Path,
    *,
    serial: str = "2305RM0F2A61",
    password: str = "s3cret",
    collabos_version: str = "1.15.2",
    tap_ip: str | None = None,
    tap_serial: str = "2251FDC4E5F6",
    camera: bool = False,
    sight: bool = False,
    mic_pod: bool = False,
    tap_usb: bool = True,
    device_name: str | None = None,
    service_provider: str = "MTR",
    **options: Any,
) -> CollabosDevice:
    """A RoomMate (VR0030, ``RoomMate-<last 4 of serial>``) with a Tap USB; without a
    ``camera`` (or Sight) its room insights are an empty result."""
    return _collabos_device(
        "VR0030",
        "RoomMate",
        host,
        directory,
        serial=serial,
        password=password,
        collabos_version=collabos_version,
        tap_ip=tap_ip,
        tap_serial=tap_serial,
        sight=sight,
        mic_pod=mic_pod,
        tap_usb=tap_usb,
        camera=camera,
        remote=False,
        device_name=device_name,
        service_provider=service_provider,
        options=options,
    )


# --------------------------------------------------------------------------- the stand-in


class CollabosStandIn:
    """Serves every device on its own ``(host, port)`` with its own TLS, from one background
    thread and event loop."""

    def __init__(self, *devices: CollabosDevice) -> None:
        self._devices: list[CollabosDevice] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runners: list[web.AppRunner] = []
        self._halt: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._loop_errors: list[str] = []
        for device in devices:
            self._check_new(device)
            self._devices.append(device)

    def __repr__(self) -> str:
        return f"CollabosStandIn({', '.join(repr(d) for d in self.devices)})"

    @property
    def devices(self) -> list[CollabosDevice]:
        with self._lock:
            return list(self._devices)

    def url(self, device: CollabosDevice) -> str:
        """``https://host:port`` of ``device``."""
        return device.url

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> CollabosStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_new(self, device: CollabosDevice) -> None:
        for other in self._devices:
            if other is device:
                raise ValueError(f"{device!r} is served already")
            if device.port and (other.host, other.port) == (device.host, device.port):
                raise ValueError(f"{device!r} and {other!r} share an address")

    @staticmethod
    def _bind(device: CollabosDevice) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(device.host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((device.host, device.port))
        except OSError:
            sock.close()
            raise
        device.port = sock.getsockname()[1]
        return sock

    def start(self) -> CollabosStandIn:
        """Listen for every device (on a free port where ``port`` is 0; after :meth:`stop`, on
        the same ports again); returns once they accept connections."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        socks: list[tuple[CollabosDevice, socket.socket]] = []
        try:
            for device in self.devices:
                socks.append((device, self._bind(device)))
        except OSError:
            for _, sock in socks:
                sock.close()
            raise
        self._error = None
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(self._loop, socks, ready), name="collabos-standin", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._error is not None or not ready.is_set():
            self.stop()
            raise RuntimeError(f"the CollabOS stand-in did not start: {self._error!r}")
        return self

    def add(self, device: CollabosDevice) -> CollabosDevice:
        """Serve one more device, at once when running."""
        with self._lock:
            self._check_new(device)
            loop = self._loop if self._thread is not None else None
            if loop is None:
                self._devices.append(device)
                return device
            sock = self._bind(device)
            self._devices.append(device)
        asyncio.run_coroutine_threadsafe(self._serve_device(device, sock), loop).result(10)
        return device

    def stop(self) -> None:
        """Stop serving: hanging requests are closed unanswered, slow ones cut off. Records
        stay readable."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        socks: list[tuple[CollabosDevice, socket.socket]],
        ready: threading.Event,
    ) -> None:
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_error)
        try:
            loop.run_until_complete(self._setup(socks))
        except BaseException as exc:  # reported by start()
            self._error = exc
            for _, sock in socks:
                sock.close()
            loop.run_until_complete(self._teardown())
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._teardown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self, socks: list[tuple[CollabosDevice, socket.socket]]) -> None:
        self._halt = asyncio.Event()
        self._runners = []
        for device, sock in socks:
            await self._serve_device(device, sock)

    async def _serve_device(self, device: CollabosDevice, sock: socket.socket) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(device, request)

        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        self._runners.append(runner)
        await web.SockSite(runner, sock, ssl_context=device._front_context()).start()

    async def _teardown(self) -> None:
        if self._halt is not None:
            self._halt.set()
        await asyncio.sleep(0)  # the hanging handlers close their connections
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Failed handshakes (a client refusing a pinned certificate…): kept, not printed."""
        with self._lock:
            self._loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    @property
    def loop_errors(self) -> list[str]:
        with self._lock:
            return list(self._loop_errors)

    # ------------------------------------------------------------------ records

    def all_requests(self) -> list[RecordedRequest]:
        """Every device's requests, by arrival time."""
        return sorted((r for d in self.devices for r in d.requests), key=lambda r: r.at)

    def wait_for(self, condition: Callable[[CollabosStandIn], bool], timeout: float = 5.0) -> bool:
        """Block until ``condition(self)`` holds (checked after each request to any device);
        ``False`` when ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)

    def _log(
        self,
        device: CollabosDevice,
        request: web.Request,
        *,
        had_password: bool,
        fault: _Fault | None,
        status: int | None,
        at: float,
    ) -> None:
        device._record(
            RecordedRequest(
                method=request.method,
                path=device._scrub(request.path),
                query=device._scrub(request.query_string),
                headers=device._redact(request.headers),
                had_password=had_password,
                fault=fault.name if fault else None,
                status=status,
                at=at,
                device=f"{device.host}:{device.port}",
            )
        )
        with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ requests

    async def _handle(self, device: CollabosDevice, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            self._log(device, request, had_password=False, fault=None, status=exc.status, at=at)
            raise
        had_password = device._carries_password(request, body)
        path = request.path
        device._arrived(request.method, path, had_password)
        fault = device._take_fault(path)

        def log(status: int | None) -> None:
            self._log(device, request, had_password=had_password, fault=fault, status=status, at=at)

        name = fault.name if fault is not None else None
        if name in ("reset", "hang"):
            log(None)
            if name == "hang" and self._halt is not None:
                await self._halt.wait()
            _reset(request)
            return web.Response(status=204)  # never sent: the transport is gone
        if fault is not None and name == "slow":
            await asyncio.sleep(float(fault.params["seconds"]))
        if name == "expire-token":
            device.expire_tokens()
        reply = device._fault_reply(fault, path) if fault is not None else None
        if reply is None:
            reply = device._answer(request.method, path, request.headers, body)
        delay = device.latency + device.path_latency.get(path, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        log(reply.status)
        return reply
