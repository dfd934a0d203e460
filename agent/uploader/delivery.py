"""Delivery: an output's queue to its destination, one message at a time, in queue order.

:class:`Delivery` is the loop every output shares — backoff, park, pause, deadline, stop,
the outage snapshot; a :class:`Transport` sends one message and says what the reply means
(:class:`PortalTransport` here, GLPI's and MQTT's in :mod:`agent.uploader.outputs`). The
portal's contract follows; the other outputs map their replies onto the same outcomes
(docs/glpi.md, docs/mqtt.md).

What a reply means and how long to wait are the contract of ``docs/portal-api.md``
("Replies and what the agent does", "Backoff"); :func:`classify` and :func:`backoff_delay`
are that contract as code, and :class:`Delivery` applies it:

* 2xx: delivered, removed from the outbox, the portal is ``ok``.
* 408, 429, 5xx, an unknown status, a network or TLS failure, a time-out: the head is retried
  after ``min(cap, max(Retry-After, uniform(0, min(cap, 1 s × 2^(n−1)))))``, the portal is
  ``retrying``.
* 401, 403, any 3xx (never followed): delivery pauses — :meth:`Delivery.run` returns — and
  the portal is ``unhealthy``. Nothing is dropped; the next run re-reads the token.
* Any other 4xx: the message is parked (kept, visible, retried only after ``unpark``) and the
  queue goes on.

After the queue drains following a failure (an outage), a fresh snapshot is queued through
the ``snapshot`` callback and delivered too.

Secrets: the token is read from its file (or systemd credential) at the start of every run,
sent only in the ``Authorization`` header, and never logged or put in an error; logs carry the
portal's host, the status, the ``Idempotency-Key`` and the sequence.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import aiohttp

from agent.log import get_logger
from agent.sanitize import MASK, printable
from agent.secretfile import SecretFileError, read_secret
from agent.store import StoreError
from agent.uploader.outbox import Outbox, QueuedMessage
from agent.uploader.protocol import ENDPOINTS

__all__ = [
    "BACKOFF_BASE_S",
    "DEFAULT_BACKOFF_CAP_S",
    "Attempt",
    "Delivery",
    "HttpTransport",
    "Outcome",
    "OutputError",
    "PortalError",
    "PortalSettings",
    "PortalTransport",
    "RunResult",
    "Transport",
    "backoff_delay",
    "classify",
    "retry_after_seconds",
    "ssl_context",
]

BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_CAP_S = 900.0
#: The most of a reply body kept with a failed or parked message.
MAX_DETAIL_CHARS = 300
#: The most of a reply body read at all.
MAX_REPLY_BYTES = 64 * 1024
#: A longer ``Retry-After`` is read as this (any wait is capped by ``backoff_cap`` anyway).
MAX_RETRY_AFTER_S = 1e9

log = get_logger("roomsync.uploader")


class OutputError(Exception):
    """An output's settings cannot be used (no URL, secret file unreadable, bad CA or client
    certificate): its delivery cannot start. The message never holds a secret."""


class PortalError(OutputError):
    """The portal settings cannot be used."""


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PAUSE = "pause"
    PARK = "park"


def classify(status: int) -> Outcome:
    """What a reply status means for the message (docs/portal-api.md)."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (401, 403) or 300 <= status < 400:
        return Outcome.PAUSE
    if status in (408, 429) or 500 <= status < 600:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.PARK
    return Outcome.RETRY  # 1xx, >= 600: not a verdict on the message


def retry_after_seconds(
    value: str | None, reply_date: str | None = None, now: datetime | None = None
) -> float:
    """``Retry-After`` in seconds: delta-seconds, or an HTTP-date taken relative to the
    reply's ``Date`` (else ``now``); 0 when absent, unreadable or in the past."""
    if not value:
        return 0.0
    text = value.strip()
    if text.isascii() and text.isdigit():  # delta-seconds: ASCII digits, any number of them
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
        base = parsedate_to_datetime(reply_date) if reply_date else (now or datetime.now(UTC))
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    if when.tzinfo is None or base.tzinfo is None:
        return 0.0
    return max(0.0, (when - base).total_seconds())


def backoff_delay(
    failures: int,
    cap: float,
    retry_after: float = 0.0,
    rng: Callable[[], float] = random.random,
    base: float = BACKOFF_BASE_S,
) -> float:
    """The wait before retry ``failures`` (1 for the first retry): exponential backoff with
    full jitter, never sooner than ``retry_after``, never longer than ``cap``."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 60))
    return min(cap, max(retry_after, rng() * ceiling))


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """Where and how to deliver (the ``[portal]`` section, or ``roomsync push`` flags)."""

    url: str
    token_file: Path
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    timeout: float = 30.0
    backoff_cap: float = DEFAULT_BACKOFF_CAP_S

    @classmethod
    def from_config(cls, portal: Any) -> PortalSettings:
        if not portal.url:
            raise PortalError("no portal URL: set [portal] url or pass --portal-url")
        if portal.token_file is None:
            raise PortalError("no portal token: set [portal] token_file or pass --token-file")
        return cls(
            portal.url,
            portal.token_file,
            portal.ca_file,
            portal.client_cert,
            portal.client_key,
            portal.timeout,
            portal.backoff_cap,
        )

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


class TlsSettings(Protocol):
    """What :func:`ssl_context` reads (the portal's and GLPI's settings)."""

    @property
    def url(self) -> str: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def client_cert(self) -> Path | None: ...
    @property
    def client_key(self) -> Path | None: ...


def ssl_context(settings: TlsSettings, what: str = "portal") -> ssl.SSLContext | None:
    """The TLS context for an ``https://`` URL (``None`` for loopback ``http://``): the
    system's trust store or ``ca_file``, host name checked, the client certificate when set.
    Verification is never turned off."""
    if urlsplit(settings.url).scheme != "https":
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise (PortalError if what == "portal" else OutputError)(
            f"{what} CA file {settings.ca_file}: {_reason(exc)}"
        ) from None
    if settings.client_cert is not None:
        try:
            context.load_cert_chain(
                str(settings.client_cert), str(settings.client_key) if settings.client_key else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise (PortalError if what == "portal" else OutputError)(
                f"client certificate {settings.client_cert}: {_reason(exc)}"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        # Why it did not verify: expired, host name mismatch, self-signed, unknown issuer.
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _token(settings: PortalSettings) -> str:
    try:
        token = read_secret(settings.token_file, "portal token")
    except SecretFileError as exc:
        raise PortalError(str(exc)) from None
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise PortalError(
            f"portal token file {settings.token_file} holds characters a bearer token "
            "cannot carry (spaces, control or non-ASCII characters)"
        )
    return token


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of sending one message once."""

    outcome: Outcome
    status: int | None
    detail: str
    retry_after: float = 0.0
    seconds: float = 0.0


@dataclass(slots=True)
class RunResult:
    """What one :meth:`Delivery.run` did and why it stopped: ``empty`` (nothing left to
    send), ``paused`` (401/403/3xx), ``deadline``, ``stopped`` (asked to), or ``error``
    (the store failed)."""

    stopped_because: str = "empty"
    delivered: int = 0
    events_delivered: int = 0
    parked: int = 0
    retries: int = 0
    last_problem: str | None = None
    attempts: list[Attempt] = field(default_factory=list)


@runtime_checkable
class Transport(Protocol):
    """Sends one queued message of one output and says what the reply means.

    :meth:`open` is called at the start of each :meth:`Delivery.run` (it reads the secret
    then, so a changed token or password file is picked up) and raises :class:`OutputError`
    when the settings cannot be used; :meth:`close` at its end, whatever happened."""

    #: The output's name (``portal``, ``glpi``, ``mqtt``) and where it delivers (host[:port]),
    #: for logs and errors; never a secret.
    output: str
    where: str
    #: Seconds one attempt may take, and the longest wait between retries.
    timeout: float
    backoff_cap: float

    async def open(self) -> None: ...

    async def send(self, message: QueuedMessage, left: float | None) -> Attempt:
        """Send ``message`` once, within ``left`` seconds when given (else ``timeout``)."""
        ...

    async def close(self) -> None: ...


class Delivery:
    """Delivers an :class:`Outbox` through a :class:`Transport` (a :class:`PortalSettings`
    is the portal's). ``snapshot`` queues a fresh snapshot (it is called after an outage
    drains). ``rng``, ``clock``, ``sleep`` and ``now`` are for tests."""

    def __init__(
        self,
        outbox: Outbox,
        target: PortalSettings | Transport,
        *,
        user_agent: str = "roomsync",
        snapshot: Callable[[], Any] | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.outbox = outbox
        # A bad CA or client certificate fails here, early.
        self.transport: Transport = (
            PortalTransport(target, user_agent=user_agent, clock=clock, now=now)
            if isinstance(target, PortalSettings)
            else target
        )
        self.snapshot = snapshot
        self.rng = rng
        self.clock = clock
        self.sleep = sleep
        self.now = now

    async def run(self, *, deadline: float | None = None, stop: asyncio.Event | None = None) -> RunResult:
        """Send the queue until it is empty, delivery pauses, ``deadline`` (a ``clock()``
        value) would pass before the next retry, or ``stop`` is set. The deadline bounds the
        request in flight too: a request gets the output's ``timeout`` or what is left of the
        deadline, whichever is shorter (the run's first request is always made, with the
        ``timeout``, even when the deadline is already past)."""
        await self.transport.open()
        try:
            return await self._run(deadline, stop)
        finally:
            await self.transport.close()

    async def _run(self, deadline: float | None, stop: asyncio.Event | None) -> RunResult:
        result = RunResult()
        failures = 0
        while True:
            if stop is not None and stop.is_set():
                result.stopped_because = "stopped"
                return result
            try:
                self.outbox.take_events(self.now())
                head = self.outbox.head()
                if head is None:
                    if self.snapshot is not None and self.outbox.outage_noted():
                        self.snapshot()  # the note is cleared only once it is queued
                        self.outbox.take_outage()
                        continue
                    return result
                left = None if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    if result.attempts:  # no time left even to send it
                        result.stopped_because = "deadline"
                        return result
                    left = None  # a deadline already past allows one attempt (push --deadline 0)
                if not self.outbox.begin_attempt(head, self.now()):
                    continue
            except StoreError as exc:
                result.stopped_because, result.last_problem = "error", str(exc)
                return result
            attempt = await self.transport.send(head, left)
            result.attempts.append(attempt)
            try:
                stop_now = self._settle(head, attempt, result)
            except StoreError as exc:
                result.stopped_because, result.last_problem = "error", str(exc)
                return result
            if stop_now:
                return result
            if attempt.outcome is Outcome.RETRY:
                failures += 1
                result.retries += 1
                delay = backoff_delay(failures, self.transport.backoff_cap, attempt.retry_after, self.rng)
                if deadline is not None and self.clock() + delay > deadline:
                    result.stopped_because = "deadline"
                    return result
                if await self._wait(delay, stop):
                    result.stopped_because = "stopped"
                    return result
            else:  # delivered or parked: the next head's retries count from 1 again
                failures = 0

    async def _wait(self, delay: float, stop: asyncio.Event | None) -> bool:
        """Sleep ``delay`` seconds; True when ``stop`` was set meanwhile."""
        if stop is None:
            await self.sleep(delay)
            return False
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    def _settle(self, head: QueuedMessage, attempt: Attempt, result: RunResult) -> bool:
        """Record the attempt's outcome in the outbox; True when the run must stop (paused)."""
        output = self.transport.output
        fields = {
            "output": output,
            output: self.transport.where,  # "portal": host, as the portal's log lines always said
            "key": head.key,
            "sequence": head.sequence,
            "kind": head.kind,
            "status": attempt.status,
            "attempt": head.attempts + 1,
        }
        now = self.now()
        if attempt.outcome is Outcome.DELIVERED:
            self.outbox.delivered(head, now, attempt.status or attempt.detail or 200)
            result.delivered += 1
            result.events_delivered += head.events
            log.debug(f"{output} accepted message", **fields)
            return False
        result.last_problem = attempt.detail
        if attempt.outcome is Outcome.PARK:
            self.outbox.park(head, attempt.status or 0, attempt.detail)
            result.parked += 1
            log.warning(f"{output} refused message; parked", detail=attempt.detail, **fields)
            return False
        self.outbox.failed(head, attempt.status, attempt.detail)
        self.outbox.note_outage()
        if attempt.outcome is Outcome.PAUSE:
            self.outbox.set_state("unhealthy", attempt.detail, now)
            log.error(f"{output} delivery paused", detail=attempt.detail, **fields)
            result.stopped_because = "paused"
            return True
        self.outbox.set_state("retrying", attempt.detail, now)
        log.warning(f"{output} delivery failed; will retry", detail=attempt.detail, **fields)
        return False


class HttpTransport:
    """What the HTTP outputs' transports share (the portal's, GLPI's): their settings'
    ``timeout``, ``backoff_cap`` and TLS (verified, a bad CA or client certificate failing at
    construction), one aiohttp session per delivery run (:meth:`_start`), and a secret read
    at each :meth:`open` and forgotten at :meth:`close` (``_secret``)."""

    output = ""

    def __init__(
        self,
        settings: Any,
        *,
        where: str,
        what: str,
        user_agent: str = "roomsync",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.where = where
        self.timeout: float = settings.timeout
        self.backoff_cap: float = settings.backoff_cap
        self.user_agent = user_agent
        self.clock = clock
        self.now = now
        self._ssl = ssl_context(settings, what)  # a bad CA or client certificate fails here, early
        self._session: aiohttp.ClientSession | None = None
        self._secret = ""

    def _start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=1)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=connector,
            auto_decompress=True,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._secret = ""


class PortalTransport(HttpTransport):
    """The portal's side of :class:`Transport`: ``POST`` of the stored gzip body with the
    bearer token and the message's ``Idempotency-Key`` (docs/portal-api.md)."""

    output = "portal"

    def __init__(
        self,
        settings: PortalSettings,
        *,
        user_agent: str = "roomsync",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(
            settings, where=settings.host, what="portal", user_agent=user_agent, clock=clock, now=now
        )

    async def open(self) -> None:
        self._secret = _token(self.settings)
        self._start()

    async def send(self, message: QueuedMessage, left: float | None) -> Attempt:
        assert self._session is not None, "open() first"
        return await self._send(self._session, self._secret, message, left)

    async def _send(
        self, session: aiohttp.ClientSession, token: str, message: QueuedMessage, left: float | None = None
    ) -> Attempt:
        url = self.settings.url + ENDPOINTS[message.schema]
        headers = {
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": message.key,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "User-Agent": self.user_agent,
        }
        started = self.clock()
        try:
            # Within the deadline, the request in flight included.
            limit = (
                session.timeout
                if left is None
                else aiohttp.ClientTimeout(total=min(self.settings.timeout, left))
            )
            async with session.post(
                url, data=message.body, headers=headers, allow_redirects=False, compress=None, timeout=limit
            ) as reply:
                body = _text(await _read_capped(reply, MAX_REPLY_BYTES), reply)
                status = reply.status
                outcome = classify(status)
                detail = self._detail(status, reply.reason, body, reply.headers.get("Location"), token)
                after = (
                    retry_after_seconds(
                        reply.headers.get("Retry-After"), reply.headers.get("Date"), self.now()
                    )
                    if outcome is Outcome.RETRY
                    else 0.0
                )
                return Attempt(outcome, status, detail, after, self.clock() - started)
        except aiohttp.ClientSSLError as exc:
            detail = f"TLS to {self.where} failed: {_reason(getattr(exc, 'os_error', exc))}"
        except TimeoutError:  # before OSError, which it is a kind of
            detail = f"{self.where} did not answer within {self.settings.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            detail = f"cannot reach {self.where}: {type(exc).__name__}: {_short(str(exc))}"
        return Attempt(Outcome.RETRY, None, detail, 0.0, self.clock() - started)

    @staticmethod
    def _detail(status: int, reason: str | None, body: str, location: str | None, secret: str) -> str:
        """What the reply said, for the log and the outbox; the token masked should the
        portal repeat it (an error page echoing the request's headers)."""
        shown = _short(reason.replace(secret, MASK) if secret else reason) if reason else ""
        text = f"HTTP {status} {shown}".rstrip()
        if 300 <= status < 400:
            where = f" to {_short(location.replace(secret, MASK))}" if location else ""
            return f"{text}: the portal URL redirects{where}; fix the configuration"
        if status in (401, 403):
            return f"{text}: the portal refused the token; check token_file"
        problem = _problem_detail(body, secret)
        return f"{text}: {problem}" if problem else text


def _problem_detail(body: str, secret: str = "") -> str:
    """The ``detail`` (else ``title``) of an RFC 9457 problem body, else the body's start;
    ``secret`` masked (before shortening, which could leave a part of it)."""
    import json

    def short(text: str) -> str:
        return _short(text.replace(secret, MASK) if secret else text)

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return short(body)
    if isinstance(doc, dict):
        for key in ("detail", "title", "error", "message"):
            if isinstance(doc.get(key), str):
                return short(doc[key])
    return short(body)


async def _read_capped(reply: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the reply body: only its start is ever shown, and a portal
    (or something posing as one) must not make the agent hold a huge body."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await reply.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _text(body: bytes, reply: aiohttp.ClientResponse) -> str:
    """The reply body as text in the charset it names, else UTF-8; undecodable bytes
    replaced. A charset Python cannot decode text with (``base64``, ``rot13``, ``idna``…)
    is not an error: the body is only shown."""
    try:
        return body.decode(reply.get_encoding(), errors="replace")
    except (LookupError, ValueError, RuntimeError):
        return body.decode("utf-8", errors="replace")


def _short(text: str) -> str:
    flat = printable(text)  # a portal's words, stored and printed: no escape sequences
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[: MAX_DETAIL_CHARS - 1] + "…"
