"""CollabOS source: Rally Bars, Rally Bar Minis and RoomMates read through their own Device
Management API ("Local Network Access", HTTPS), the way an appliance-mode room is seen.

Only the hosts the operator listed (``[sources.collabos] hosts``, ``--collabos``) are
contacted: the password goes to nothing the agent discovered, not even the Tap IP a bar
reports. For each host, at most ``concurrency`` at once, each within ``host_deadline``:

1. **Trust, before any secret.** With ``ca_file``, TLS verifies the chain and the host name.
   Without it the device's certificate is pinned (:mod:`agent.pins`): a TLS handshake alone
   (nothing is sent) shows the certificate; its public key must match the pin in the store,
   and the HTTPS session is then bound to exactly that certificate (aiohttp's
   ``Fingerprint``), so nothing is sent to another. At first contact the key is pinned once a
   request without credentials (``GET /api/v1/device``) has shown the host answers as the API
   does; a host that does not (any other web server) is refused, no password sent.
2. **Sign-in** (``POST /api/v1/signin``) once per token lifetime (15 minutes, or the JWT's
   own), kept in memory only. A token the device refuses is replaced once per run; a refused
   sign-in is not tried again for 5 minutes, doubling to an hour, unless the password file
   changes (the devices allow 5 sign-ins a minute; a lockout helps no one).
3. **Four reads**: ``/api/v1/device``, ``/api/v1/peripherals``, ``/api/v1/insights/device``
   and ``/api/v1/insights/room`` (CollabOS 1.13+; the room's can take 15 s; a device without
   them is read without them). Calls are kept within 10 a minute per device; an HTTP 429 is
   waited out within the run when short, else the device is left alone until its
   ``Retry-After`` has passed.

Every request leaves through :meth:`DeviceSession.request`, which passes it through the
read-only gate (:func:`agent.collectors.collabos_api.check_collabos_request`) first. Replies
are parsed by :mod:`agent.collectors.collabos_api`. A host that fails is one
:class:`~agent.model.ScanError` naming it (never the password); the others go on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp

from agent.collectors.collabos_api import (
    MAX_REPLY_BYTES,
    SIGNIN,
    CollabosError,
    check_collabos_request,
    observe,
    parse_reply,
)
from agent.discovery import ScanContext, SourceResult
from agent.log import get_logger
from agent.model import Observation, ScanError

log = get_logger("agent.discovery.collabos")

SOURCE_NAME = "collabos"
DEFAULT_PORT = 443
DEFAULT_USER = "admin"
DEVICE, PERIPHERALS = "/api/v1/device", "/api/v1/peripherals"
INSIGHTS = {"device": "/api/v1/insights/device", "room": "/api/v1/insights/room"}
#: The documented token lifetime (seconds); a JWT's own ``exp`` shortens it, never lengthens.
TOKEN_LIFETIME = 900.0
#: A token is renewed this long before it expires, so that none expires mid-read.
TOKEN_MARGIN = 60.0
#: The devices' documented rate limits, per device and minute.
SIGNINS_PER_MINUTE = 5
CALLS_PER_MINUTE = 10
#: An HTTP 429 is waited out within the run only when it asks for this long or less.
MAX_WAIT_IN_RUN = 30.0
#: Without a usable ``Retry-After``, a device that answered 429 is left alone this long.
DEFAULT_RETRY_AFTER = 60.0
#: A refused sign-in is not tried again for this long, doubling up to AUTH_BACKOFF_MAX.
AUTH_BACKOFF_FIRST = 300.0
AUTH_BACKOFF_MAX = 3600.0
MAX_TOKEN_CHARS = 8192
#: A run ends this long before its budget, so that its results are kept.
RUN_MARGIN = 2.0
#: A device is not started with less time than this left in the run.
MIN_HOST_TIME = 5.0


class CollabosHostError(Exception):
    """A failure of one device, already worded for the operator (one line)."""


class DeviceBusy(CollabosHostError):
    """The device's rate limit is reached (HTTP 429, or the documented limit would be)."""


class SignInRefused(CollabosHostError):
    """The device refused the credentials (or they were refused recently)."""


class OutOfTime(CollabosHostError):
    """The run's budget was used up before the device's turn came."""


class Unreachable(CollabosHostError):
    """Nothing answers at the device's address (refused, unreachable, no TLS handshake in
    time): as far as the agent can tell it is not on the network."""


class CertificateChanged(CollabosHostError):
    """The device presents another public key than the one pinned for it."""

    def __init__(self, host: CollabosHost, pinned: str, presented: str) -> None:
        from agent.pins import shown

        super().__init__(
            f"the certificate changed: pinned {shown(pinned)}, presented {shown(presented)}; "
            "nothing was sent. If the device was reset or given a new certificate, check the "
            f"new key and accept it with: roomsync trust collabos {host.address} --accept-new"
        )
        self.pinned = pinned
        self.presented = presented


# --------------------------------------------------------------------------- hosts


@dataclass(frozen=True, slots=True)
class CollabosHost:
    """One device to read: what ``[sources.collabos] hosts`` and ``--collabos`` give."""

    host: str
    port: int = DEFAULT_PORT
    #: The room the device stands in; its Tap IP goes there too.
    room: str | None = None

    @classmethod
    def of(cls, value: Any) -> CollabosHost:
        """From itself, ``"HOST[:PORT]"``, a ``{host, port, room}`` mapping or anything with
        those attributes (``agent.config.CollabosHostConfig``). Raises :class:`ValueError`."""
        if isinstance(value, CollabosHost):
            return value
        if isinstance(value, str):
            from agent.discovery.targets import parse_host_port

            host, port = parse_host_port(value, DEFAULT_PORT)
            return cls(host, port)
        if isinstance(value, Mapping):
            from pydantic import ValidationError

            from agent.config import CollabosHostConfig

            try:
                value = CollabosHostConfig.model_validate(dict(value))
            except ValidationError as exc:
                raise ValueError(f"not a CollabOS host: {exc.errors()[0]['msg']}") from None
        return cls(value.host, getattr(value, "port", DEFAULT_PORT), getattr(value, "room", None))

    @property
    def _shown(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> str:
        """``host`` on port 443, ``host:port`` otherwise: how the inventory, the errors and
        the certificate pins name the device."""
        return self._shown if self.port == DEFAULT_PORT else f"{self._shown}:{self.port}"

    def url(self, path: str) -> str:
        return f"https://{self._shown}:{self.port}{path}"


# --------------------------------------------------------------------------- per-device state


class RateWindow:
    """At most ``limit`` requests in any ``period`` seconds (a sliding window)."""

    def __init__(self, limit: int, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        self.sent: deque[float] = deque()

    def wait_needed(self) -> float:
        """Seconds until one more request may go (0: now)."""
        now = self.clock()
        while self.sent and now - self.sent[0] >= self.period:
            self.sent.popleft()
        return 0.0 if len(self.sent) < self.limit else self.sent[0] + self.period - now

    async def acquire(self, deadline: float, what: str) -> None:
        """Take a place, waiting for one when that ends before ``deadline`` (monotonic);
        else :class:`CollabosHostError`."""
        while (wait := self.wait_needed()) > 0:
            if self.clock() + wait > deadline:
                raise DeviceBusy(
                    f"the device allows {self.limit} {what} a minute and that many were sent in the "
                    f"last minute; it is read again in {wait:.0f} s"
                )
            await asyncio.sleep(wait)
        self.sent.append(self.clock())


@dataclass(slots=True)
class DeviceState:
    """What the source keeps of one device between runs, in memory only."""

    signins: RateWindow = field(default_factory=lambda: RateWindow(SIGNINS_PER_MINUTE))
    calls: RateWindow = field(default_factory=lambda: RateWindow(CALLS_PER_MINUTE))
    token: str | None = None
    token_expires: float = 0.0
    #: The key (pin, or ``"ca"``) the device's certificate had when the token was obtained.
    token_key: str | None = None
    #: The device asked (HTTP 429) to be left alone until then (monotonic).
    not_before: float = 0.0
    #: A refused sign-in: the password's digest, until when not to try it again, how often.
    refused_digest: str | None = None
    refused_until: float = 0.0
    refusals: int = 0
    #: With ``ca_file``: the device answered as the API before its first sign-in.
    confirmed: bool = False

    def __repr__(self) -> str:  # never the token
        return f"DeviceState(token={'set' if self.token else 'none'}, refusals={self.refusals})"

    def valid_token(self, now: float) -> str | None:
        return self.token if self.token is not None and now < self.token_expires else None

    def drop_token(self) -> None:
        self.token, self.token_expires, self.token_key = None, 0.0, None


def token_lifetime(token: str) -> float:
    """Seconds ``token`` lives: the JWT's ``exp - iat`` when it says so and that is shorter
    than the documented 15 minutes (the device's clock is not compared with ours)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        return TOKEN_LIFETIME
    return min(lifetime, TOKEN_LIFETIME) if lifetime > 0 else TOKEN_LIFETIME


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), within
    [1, 3600]; :data:`DEFAULT_RETRY_AFTER` when there is none or it cannot be read."""
    if not value:
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 6:
        seconds = float(text)
    else:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 1.0), 3600.0)


# --------------------------------------------------------------------------- one session


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


class DeviceSession:
    """One device's HTTPS session for one run: the only thing that sends the device anything.
    Every request passes the read-only gate before it is built."""

    def __init__(
        self,
        host: CollabosHost,
        tls: ssl.SSLContext | aiohttp.Fingerprint,
        state: DeviceState,
        *,
        timeout: float,
        deadline: float,
        key: str = "ca",
    ) -> None:
        self.host = host
        self.state = state
        self.timeout = timeout
        self.deadline = deadline
        #: The key the session's TLS was checked against (a pin, or ``"ca"``): a token is used
        #: only with the key it was obtained under.
        self.key = key
        #: The password and tokens this run sent: cut out of anything the device says back.
        self.secrets: list[str] = []
        #: A refused token was replaced in this run already.
        self.renewed = False
        connector = aiohttp.TCPConnector(ssl=tls, limit=2, ttl_dns_cache=None, enable_cleanup_closed=True)
        # No proxy from the environment, no cookies kept, no redirects followed: a request
        # goes to the listed device, as the gate let it, or not at all.
        self.session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"Accept": "application/json", "User-Agent": "roomsync"},
        )
        # aiohttp resends an idempotent request once when the connection drops; every request
        # here counts against the device's rate limit, so the source decides on retries
        # itself (aiohttp's own test client turns this off the same way).
        self.session._retry_connection = False

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request and read its reply (at most :data:`MAX_REPLY_BYTES`). An HTTP 429
        is waited out once when it asks for little, else :class:`CollabosHostError`."""
        check_collabos_request((method, path, body))
        window, what = (self.state.signins, "sign-ins") if path == SIGNIN else (self.state.calls, "calls")
        for attempt in (1, 2):
            await window.acquire(self.deadline, what)
            reply, wait = await self._send(method, path, body, token, timeout or self.timeout)
            if reply is not None:
                return reply
            self.state.not_before = time.monotonic() + wait
            if attempt == 2 or wait > MAX_WAIT_IN_RUN or time.monotonic() + wait > self.deadline:
                raise DeviceBusy(
                    f"{method} {path}: the device asked to wait {wait:.0f} s (HTTP 429); "
                    "it is read again after that"
                )
            log.info("collabos.wait", host=self.host.address, seconds=wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, path: str, body: dict[str, str] | None, token: str | None, timeout: float
    ) -> tuple[Reply | None, float]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.request(
            method,
            self.host.url(path),
            json=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if response.status == 429:
                return None, retry_after(response.headers.get("Retry-After"))
            declared = response.content_length
            if declared is not None and declared > MAX_REPLY_BYTES:
                raise CollabosError(
                    f"{method} {path}: reply of {declared} bytes, more than {MAX_REPLY_BYTES}; not read"
                )
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise CollabosError(
                        f"{method} {path}: reply of more than {MAX_REPLY_BYTES} bytes; not read"
                    )
                chunks.append(chunk)
            return Reply(response.status, b"".join(chunks)), 0.0


# --------------------------------------------------------------------------- the source


Pins = Any  # agent.pins.PinStore, opened per run (imported lazily)


class CollabosSource:
    """CollabOS devices over their Device Management API. ``hosts`` are
    :class:`CollabosHost`, ``"HOST[:PORT]"`` or ``CollabosHostConfig`` items."""

    name = SOURCE_NAME

    def __init__(
        self,
        hosts: Iterable[Any],
        *,
        user: str = DEFAULT_USER,
        password_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        timeout: float = 10.0,
        insights_timeout: float = 20.0,
        insights: bool = True,
        host_deadline: float = 60.0,
        concurrency: int = 32,
        state_dir: str | Path | None = None,
        signins_per_minute: int = SIGNINS_PER_MINUTE,
        calls_per_minute: int = CALLS_PER_MINUTE,
    ) -> None:
        if min(timeout, insights_timeout, host_deadline) <= 0 or concurrency < 1:
            raise ValueError("timeouts and host_deadline must be > 0, concurrency >= 1")
        self.hosts: list[CollabosHost] = []
        #: Hosts that cannot be used as given, as ``(target, message)``: reported on every run.
        self.invalid: list[tuple[str, str]] = []
        for item in hosts:
            try:
                self.hosts.append(CollabosHost.of(item))
            except (ValueError, TypeError, AttributeError) as exc:
                self.invalid.append((str(getattr(item, "host", item)), str(exc)))
        self.user = user
        self.password_file = Path(password_file) if password_file is not None else None
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.timeout = timeout
        self.insights_timeout = insights_timeout
        self.insights = insights
        self.host_deadline = host_deadline
        self.concurrency = concurrency
        #: Seconds one run may take in all (the daemon's timeout for the source, the scan's
        #: ``--timeout``); ``None``: no bound but each device's ``host_deadline``.
        self.run_budget: float | None = None
        #: Where the store keeps the certificate pins (:meth:`bind_state`).
        self.state_dir = Path(state_dir) if state_dir is not None else None
        #: The devices' documented rate limits, which the source keeps itself.
        self.signins_per_minute = signins_per_minute
        self.calls_per_minute = calls_per_minute
        self.devices: dict[str, DeviceState] = {}

    def __repr__(self) -> str:
        return f"CollabosSource(hosts={[h.address for h in self.hosts]}, user={self.user!r})"

    @classmethod
    def from_config(cls, settings: Any) -> CollabosSource:
        """From ``[sources.collabos]`` (``agent.config.CollabosSourceConfig``)."""
        return cls(
            settings.hosts,
            user=settings.user,
            password_file=settings.password_file,
            ca_file=settings.ca_file,
            timeout=settings.timeout,
            insights_timeout=settings.insights_timeout,
            insights=settings.insights,
            host_deadline=settings.host_deadline,
            concurrency=settings.concurrency,
        )

    def bind_state(self, state_dir: str | Path) -> None:
        """The state directory whose store keeps the certificate pins."""
        self.state_dir = Path(state_dir)

    def adopt(self, previous: object) -> None:
        """Carry over what ``previous`` (the source before a configuration reload) knew of
        the devices still listed: their rate windows, their ``Retry-After`` and sign-in
        backoffs, and their tokens when the user is the same. A reload must not cost every
        device a sign-in, nor forget that a device asked to be left alone."""
        if not isinstance(previous, CollabosSource):
            return
        listed = {h.address for h in self.hosts}
        for address, state in previous.devices.items():
            if address not in listed:
                continue
            if previous.user != self.user:
                state.drop_token()
            self.devices[address] = state

    # ------------------------------------------------------------------ a run

    async def run(self, ctx: ScanContext) -> SourceResult:
        result = SourceResult(errors=[ScanError(self.name, t, m) for t, m in self.invalid])
        if not self.hosts:
            if not self.invalid:
                result.messages.append("no CollabOS devices are configured ([sources.collabos] hosts)")
            return result
        prepared = self._prepare()
        if isinstance(prepared, str):  # no device could be read: none is taken to be gone
            result.errors.extend(ScanError(self.name, h.address, prepared) for h in self.hosts)
            result.complete = False
            return result
        tls, pins = prepared
        slots = asyncio.Semaphore(self.concurrency)
        # A run must end within its budget (the daemon's timeout for the source, or the scan's):
        # a device started near its end gets only what is left, and one that would get too
        # little is not started at all (an error; it is read next run).
        ends = None if self.run_budget is None else time.monotonic() + self.run_budget - RUN_MARGIN
        try:
            outcomes = await asyncio.gather(
                *(self.collect(h, ctx, slots, tls, pins, ends) for h in self.hosts)
            )
        finally:
            if pins is not None:
                pins.store.close()
        for outcome in outcomes:
            result.observations.extend(outcome.observations)
            result.errors.extend(outcome.errors)
            result.messages.extend(outcome.messages)
            result.unreached.extend(outcome.unreached)
        return result

    def _prepare(self) -> tuple[ssl.SSLContext | None, Pins | None] | str:
        """What every device's read needs: the CA's TLS context (``ca_file``) or the pins;
        else why no device can be read."""
        if self.password_file is None:
            return (
                "no password file is configured ([sources.collabos] password_file or "
                "--collabos-password-file); the API needs the device's admin password"
            )
        if self.ca_file is not None:
            context = self._ca_context()
            return context if isinstance(context, str) else (context, None)
        pins = self._open_pins()
        return pins if isinstance(pins, str) else (None, pins)

    def _ca_context(self) -> ssl.SSLContext | str:
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            return f"ca_file {self.ca_file} cannot be used: {getattr(exc, 'strerror', None) or exc}"

    def _open_pins(self) -> Pins | str:
        if self.state_dir is None:
            return "no state directory to keep the certificate pins in (a bug: bind_state was not called)"
        from agent.pins import PinStore
        from agent.store import Store, StoreError

        try:
            return PinStore(Store.open(self.state_dir), SOURCE_NAME)
        except StoreError as exc:
            return f"the certificate pins cannot be read: {exc}"

    async def collect(
        self,
        host: CollabosHost,
        ctx: ScanContext,
        slots: asyncio.Semaphore,
        tls: ssl.SSLContext | None,
        pins: Pins | None,
        ends: float | None = None,
    ) -> SourceResult:
        """Read one device; every failure becomes one error naming it. Its ``host_deadline``
        starts when it gets a place (waiting for one is not its fault); ``ends`` (monotonic)
        is when the whole run must be over."""
        result = SourceResult()
        state = self.devices.get(host.address)
        if state is None:
            state = self.devices[host.address] = DeviceState(
                RateWindow(self.signins_per_minute), RateWindow(self.calls_per_minute)
            )
        started = time.monotonic()
        try:
            observations, messages = await self._read(host, ctx, slots, tls, pins, state, ends)
        except Exception as exc:  # one device's failure, whatever it is, must not end the scan
            message = self.describe(exc)
            if not isinstance(exc, _EXPECTED):
                log.exception("collabos.host.bug", host=host.address)
            log.warning("collabos.host.failed", host=host.address, error=message)
            result.errors.append(ScanError(self.name, host.address, message))
            if not absent(exc):  # it is there but could not be read: its units are not gone
                result.unreached.append(host.address)
            return result
        result.observations = observations
        result.messages = [f"{host.address}: {m}" for m in messages]
        log.info(
            "collabos.host.done",
            host=host.address,
            seconds=round(time.monotonic() - started, 3),
            observations=len(observations),
        )
        return result

    async def _read(
        self,
        host: CollabosHost,
        ctx: ScanContext,
        slots: asyncio.Semaphore,
        tls: ssl.SSLContext | None,
        pins: Pins | None,
        state: DeviceState,
        ends: float | None,
    ) -> tuple[list[Observation], list[str]]:
        if time.monotonic() < state.not_before:
            left = state.not_before - time.monotonic()
            raise DeviceBusy(f"the device asked to be left alone (HTTP 429) for {left:.0f} s more")
        messages: list[str] = []
        async with slots:
            deadline = time.monotonic() + self.host_deadline
            if ends is not None and ends < deadline:
                if ends - time.monotonic() < MIN_HOST_TIME:
                    raise OutOfTime(
                        "not read this run: the run's time was used up by the devices before it "
                        "(fewer devices per source, a higher concurrency or a longer interval help)"
                    )
                deadline = ends
            loop = asyncio.get_running_loop()
            ends_at = loop.time() + (deadline - time.monotonic())
            async with asyncio.timeout_at(ends_at):
                session, device = await self._open(host, ctx, tls, pins, state, deadline)
                try:
                    peripherals = await self._get(session, PERIPHERALS)
                    insights: dict[str, Mapping[str, Any]] = {}
                    if self.insights:
                        insights["device"] = await self._insight(session, "device", self.timeout, messages)
                except BaseException:
                    await session.close()
                    raise
        # The room's insights can take 15 s: a device waiting for them does not hold a place
        # (it costs an idle connection), so a sweep is not held up by its slowest rooms. What
        # was read is kept whatever becomes of them.
        try:
            if self.insights:
                wait = min(self.insights_timeout, deadline - time.monotonic())
                try:
                    async with asyncio.timeout_at(ends_at):
                        insights["room"] = await self._insight(session, "room", max(wait, 0.001), messages)
                except TimeoutError:
                    messages.append(
                        f"no room insights: the device's deadline ({self.host_deadline:g} s) passed"
                    )
        finally:
            await session.close()
        observations = observe(
            host.address,
            device,
            peripherals,
            ctx.catalog,
            ctx.now,
            insights={k: v for k, v in insights.items() if v},
            source=self.name,
        )
        for obs in observations:
            obs.room = host.room
        return observations, messages

    async def _open(
        self,
        host: CollabosHost,
        ctx: ScanContext,
        tls: ssl.SSLContext | None,
        pins: Pins | None,
        state: DeviceState,
        deadline: float,
    ) -> tuple[DeviceSession, dict[str, Any]]:
        """A session the device's certificate was checked for, and its first read
        (``/api/v1/device``). Bound to the certificate last seen with the pinned key: one TLS
        handshake. When the device presents another one (aiohttp refuses it before sending a
        byte), its key is compared with the pin: the same key (a renewed certificate) goes on,
        another is :class:`CertificateChanged`."""
        for attempt in (1, 2):
            binding, first, key = await self._trust(host, tls, pins, known_certificate=attempt == 1)
            if state.token is not None and state.token_key != key:
                state.drop_token()  # a token goes only to the key it was obtained under
            session = DeviceSession(host, binding, state, timeout=self.timeout, deadline=deadline, key=key)
            try:
                if first is not None or (tls is not None and not state.confirmed):
                    self._refused_lately(state)
                    await self._looks_like_the_api(session)
                    state.confirmed = True
                if first is not None:
                    self._pin(host, pins, first, ctx.now)
                return session, await self._get(session, DEVICE)
            except aiohttp.ServerFingerprintMismatch:
                await session.close()
                if attempt == 2 or tls is not None:
                    raise
            except BaseException:
                await session.close()
                raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ trust

    async def _trust(
        self, host: CollabosHost, tls: ssl.SSLContext | None, pins: Pins | None, *, known_certificate: bool
    ) -> tuple[ssl.SSLContext | aiohttp.Fingerprint, tuple[str, str] | None, str]:
        """What the session's TLS is bound to; at first contact, the key and the certificate
        to pin once the host has shown it is the API (``None``: already pinned, or a CA
        verifies it); and the key the session stands for (``"ca"`` with a CA).
        ``known_certificate``: bind to the certificate last seen with the pin, without a
        handshake of its own."""
        if tls is not None:
            return tls, None, "ca"
        from agent.pins import PinError, certificate_sha256, spki_sha256

        assert pins is not None  # without a CA, the run opened the pins
        pin = pins.get(host.address)
        if pin is not None and pin.cert_sha256 and known_certificate:
            return aiohttp.Fingerprint(bytes.fromhex(pin.cert_sha256)), None, pin.spki_sha256
        der = await presented_certificate(host, self.timeout)
        try:
            presented, certificate = spki_sha256(der), certificate_sha256(der)
        except PinError as exc:
            raise CollabosHostError(str(exc)) from None
        if pin is not None and pin.spki_sha256 != presented:
            raise CertificateChanged(host, pin.spki_sha256, presented)
        binding = aiohttp.Fingerprint(bytes.fromhex(certificate))
        if pin is None:
            return binding, (presented, certificate), presented
        if pin.cert_sha256 != certificate:
            pins.renewed(host.address, presented, certificate)
            log.info("collabos.certificate.renewed", host=host.address, spki_sha256=presented)
        return binding, None, presented

    def _pin(self, host: CollabosHost, pins: Pins, first: tuple[str, str], now: datetime) -> None:
        presented, certificate = first
        pin = pins.pin_first(host.address, presented, certificate, now)
        if pin.spki_sha256 != presented:  # pinned meanwhile by another process, to another key
            raise CertificateChanged(host, pin.spki_sha256, presented)
        log.info("collabos.pinned", host=host.address, spki_sha256=presented)

    async def _looks_like_the_api(self, session: DeviceSession) -> None:
        """Before the first password goes to a host: a read without credentials must be
        answered as the API answers (its JSON envelope, or 401/403), not by some other web
        server."""
        reply = await session.request("GET", DEVICE)
        if reply.status in (401, 403):
            return
        try:
            doc = json.loads(reply.body)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and "code" in doc:
            return
        raise CollabosHostError(
            f"does not answer as the CollabOS Device Management API (GET {DEVICE} without "
            f"credentials: HTTP {reply.status}, not the API's reply); no password was sent. Is "
            "it a CollabOS device, with Local Network Access on (off by default since CollabOS 1.12)?"
        )

    # ------------------------------------------------------------------ sign-in and reads

    def _password(self) -> str:
        from agent.secretfile import SecretFileError, read_secret

        assert self.password_file is not None
        try:
            return read_secret(self.password_file, "CollabOS password")
        except SecretFileError as exc:
            raise CollabosHostError(str(exc)) from None

    def _digest(self, password: str) -> str:
        """What a refusal is remembered by: the user and the password (never kept as such)."""
        return hashlib.sha256(f"{self.user}\0{password}".encode()).hexdigest()

    def _refused_lately(self, state: DeviceState) -> str:
        """The password, unless the device refused it for this user lately (then
        :class:`SignInRefused`: nothing is sent until the backoff has passed, or the user or
        the password file changes)."""
        password = self._password()
        now = time.monotonic()
        if state.refused_digest == self._digest(password) and now < state.refused_until:
            raise SignInRefused(
                f"the device refused the sign-in as {self.user}; not tried again for "
                f"{state.refused_until - now:.0f} s, or until the password file changes"
            )
        return password

    async def _sign_in(self, session: DeviceSession) -> str:
        state = session.state
        password = self._refused_lately(state)
        session.secrets.append(password)
        reply = await session.request("POST", SIGNIN, body={"username": self.user, "password": password})
        try:
            result = parse_reply(reply.status, reply.body, what=f"POST {SIGNIN}", redact=session.secrets)
        except CollabosError as exc:
            if not exc.auth:
                raise CollabosHostError(str(exc)) from None
            state.refusals += 1
            backoff = min(AUTH_BACKOFF_FIRST * 2 ** min(state.refusals - 1, 8), AUTH_BACKOFF_MAX)
            state.refused_digest, state.refused_until = self._digest(password), time.monotonic() + backoff
            raise SignInRefused(
                f"sign-in as {self.user} {str(exc).split(': ', 1)[-1]}: check the password "
                f"in {self.password_file} and that the user may use the API; not tried again "
                f"for {backoff:.0f} s, or until the password file changes"
            ) from None
        token = result.get("auth_token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isprintable():
            raise CollabosHostError(f"POST {SIGNIN}: the reply holds no usable auth_token")
        session.secrets.append(token)
        state.refusals, state.refused_digest = 0, None
        lifetime = token_lifetime(token)
        state.token, state.token_key = token, session.key
        state.token_expires = time.monotonic() + lifetime - min(TOKEN_MARGIN, lifetime / 4)
        return token

    async def _get(self, session: DeviceSession, path: str, timeout: float | None = None) -> dict[str, Any]:
        """One documented read with the token. A token the device refuses is replaced once
        per run (a second refusal in the run is an error, not another sign-in)."""
        while True:
            token = session.state.valid_token(time.monotonic()) or await self._sign_in(session)
            if token not in session.secrets:
                session.secrets.append(token)
            reply = await session.request("GET", path, token=token, timeout=timeout)
            try:
                return parse_reply(reply.status, reply.body, what=f"GET {path}", redact=session.secrets)
            except CollabosError as exc:
                if not exc.auth or session.renewed:
                    raise CollabosHostError(
                        f"{exc}{'; again with a new token' if exc.auth else ''}"
                    ) from None
                session.renewed = True
                session.state.drop_token()

    async def _insight(
        self, session: DeviceSession, which: str, timeout: float, messages: list[str]
    ) -> dict[str, Any]:
        """One of the insights, or ``{}`` with a message when the device has none (before
        CollabOS 1.13), refuses them or does not give them in time: the device is read all
        the same."""
        path = INSIGHTS[which]
        try:
            return await self._get(session, path, timeout)
        except CollabosHostError as exc:
            messages.append(f"no {which} insights: {exc}")
        except TimeoutError:
            messages.append(f"no {which} insights: no reply within {timeout:g} s")
        return {}

    # ------------------------------------------------------------------ errors

    def describe(self, exc: BaseException) -> str:
        """One line for the operator: what failed on this device, and what to do."""
        if isinstance(exc, CollabosHostError | CollabosError):
            return str(exc)
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return "the certificate changed while the device was being read; nothing was sent to it"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return (
                f"the certificate does not verify with ca_file {self.ca_file}: "
                f"{exc.certificate_error}; nothing was sent"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"cannot connect: {exc.strerror or exc.os_error}"
        if isinstance(exc, TimeoutError):
            return f"no answer in time (timeout {self.timeout:g} s, host_deadline {self.host_deadline:g} s)"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "the device closed the connection without a reply"
        if isinstance(exc, aiohttp.ClientOSError):
            return f"the connection broke before the reply: {exc.strerror or exc}"
        if isinstance(exc, aiohttp.ClientError):
            return f"HTTPS error: {type(exc).__name__}: {exc}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS handshake failed ({exc.reason or exc}): is it an HTTPS server?"
        if isinstance(exc, OSError):
            return f"cannot connect: {exc.strerror or exc}"
        return f"{type(exc).__name__}: {exc}"


def absent(exc: BaseException) -> bool:
    """Whether a device's failure says it is not on the network (nothing accepts a
    connection at its address), rather than that it is there but could not be read (it
    refused the agent, hung, or answered badly): its units then count as missed, as any
    unit no longer seen; otherwise they are held (:attr:`SourceResult.unreached`)."""
    if isinstance(exc, Unreachable):
        return True
    if isinstance(exc, aiohttp.ClientSSLError):
        return False
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


_EXPECTED = (CollabosHostError, CollabosError, aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError)


async def presented_certificate(host: CollabosHost, timeout: float) -> bytes:
    """The DER certificate ``host`` presents, from a TLS handshake alone: not one byte of
    HTTP is sent, so nothing reaches a device before its key was compared with its pin. The
    handshake cannot verify a self-signed certificate against a CA: the pin is the check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin is compared next, before anything is sent
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host.host, host.port, ssl=context)
    except ssl.SSLError:
        raise
    except TimeoutError:
        raise Unreachable(f"no TLS handshake within {timeout:g} s on port {host.port}") from None
    except OSError as exc:
        raise Unreachable(f"cannot connect: {exc.strerror or exc}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
    if not der:
        raise CollabosHostError("the device presented no certificate")
    return bytes(der)
