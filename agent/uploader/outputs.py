"""The outputs besides the portal: GLPI's native inventory and an MQTT broker.

Each output is a frozen settings object made from its configuration section, which knows
three things (:class:`Output`):

* how its queue in the durable outbox fills (:meth:`Output.queue`): the portal and MQTT get
  the ``roomsync.inventory.v1`` snapshot and the events (:func:`agent.uploader.snapshot.
  queue_snapshot`); GLPI gets one document per unit, queued only when it changed
  (:meth:`agent.uploader.outbox.Outbox.queue_documents`);
* how one queued message is sent (:meth:`Output.transport`, a
  :class:`~agent.uploader.delivery.Transport`), which :class:`~agent.uploader.delivery.Delivery`
  drives with the backoff, park and pause every output shares;
* which secret file to watch while delivery is paused (``watch``).

Replies and what they mean:

* **GLPI** (docs/glpi.md, "Delivery"): 2xx with a JSON body whose ``status`` is not
  ``error``: delivered. 2xx with ``status: error``: parked (GLPI refused this document).
  2xx that is not GLPI's JSON (an HTML login page of a proxy, a reply cut short): retried.
  401 (the basic-auth password), 403 (inventory disabled, or not allowed) and any 3xx:
  paused. 408, 429, 5xx, network and TLS failures: retried. Other 4xx (400: the document
  failed GLPI's checks, 413): parked.
* **MQTT** (docs/mqtt.md): ``PUBACK``: delivered. The broker refusing the connection (bad
  user or password, not authorised): paused. Anything else (refused TCP connection, dropped
  after ``CONNACK``, no ``PUBACK`` in time): retried over a new connection.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gzip
import json
import re
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

import aiohttp

from agent.inventory import merge_rooms
from agent.log import get_logger
from agent.model import utc_today
from agent.sanitize import MASK
from agent.secretfile import SecretFileError, read_secret
from agent.uploader.delivery import (
    MAX_REPLY_BYTES,
    Attempt,
    HttpTransport,
    Outcome,
    OutputError,
    PortalSettings,
    PortalTransport,
    Transport,
    _read_capped,
    _reason,
    _short,
    _text,
    classify,
    retry_after_seconds,
)
from agent.uploader.outbox import GLPI, MQTT, PORTAL, Outbox, QueuedMessage

if TYPE_CHECKING:
    from agent.config import AgentConfig, GlpiOutputConfig, MqttOutputConfig
    from agent.store import Store
    from agent.uploader.mqtt import MqttPublisher
    from agent.uploader.protocol import AgentInfo
    from agent.uploader.snapshot import SnapshotContext

__all__ = [
    "GlpiOutput",
    "GlpiTransport",
    "MqttOutput",
    "MqttTransport",
    "Output",
    "PortalOutput",
    "configured_outputs",
    "glpi_agent_uuid",
    "make_outbox",
    "mqtt_defaults",
]

log = get_logger("roomsync.uploader")

#: Content types of a GLPI body by ``compression`` (GLPI reads the compression from it).
GLPI_CONTENT_TYPES = {
    "zlib": "application/x-compress-zlib",
    "gzip": "application/x-compress-gzip",
    "none": "application/json",
}
_TOPIC_UNSAFE = re.compile(r"[#+/\x00-\x1f\x7f]")


class Output(Protocol):
    """One configured output."""

    name: ClassVar[str]

    @property
    def where(self) -> str:
        """Where it delivers (host[:port]), for logs; never a secret."""
        ...

    @property
    def watch(self) -> Path | None:
        """The secret file whose change resumes a paused delivery."""
        ...

    @property
    def max_bytes(self) -> int:
        """The bound of its queue."""
        ...

    @property
    def resend_interval(self) -> timedelta:
        """Everything is queued again at least this often."""
        ...

    @property
    def backoff_cap(self) -> float: ...

    def transport(self, agent: AgentInfo, *, user_agent: str, persistent: bool = False) -> Transport:
        """A transport for one or more delivery runs; :class:`OutputError` when the settings
        cannot be used (a bad CA, client certificate)."""
        ...

    def queue(
        self, outbox: Outbox, store: Store, context: SnapshotContext, now: datetime, *, force: bool = False
    ) -> bool:
        """Queue what the store holds now in this output's ``outbox``; whether anything was."""
        ...


def make_outbox(store: Store, output: Output, *, agent_id: str | None, version: str, hostname: str) -> Outbox:
    """The queue of ``output`` in ``store``."""
    return Outbox(
        store,
        agent_id=agent_id,
        version=version,
        hostname=hostname,
        max_bytes=output.max_bytes,
        snapshot_interval=output.resend_interval,
        output=output.name,
    )


def _megabytes(value: float) -> int:
    return int(value * 1024 * 1024)


def _settings_of(cls: type, section: Any) -> dict[str, Any]:
    """An output's settings from its configuration section: every setting of the same name,
    the resend interval and the queue's bound in the units the outbox takes."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if hasattr(section, f.name)}
    values["resend_interval"] = timedelta(hours=section.resend_hours)
    values["max_bytes"] = _megabytes(section.outbox_max_mb)
    return values


# --------------------------------------------------------------------------- portal


@dataclass(frozen=True, slots=True)
class PortalOutput:
    """The licensing portal (docs/portal-api.md) as an output."""

    name: ClassVar[str] = PORTAL
    settings: PortalSettings
    max_bytes: int = 64 * 1024 * 1024
    resend_interval: timedelta = timedelta(hours=24)

    @property
    def where(self) -> str:
        return self.settings.host

    @property
    def watch(self) -> Path | None:
        return self.settings.token_file

    @property
    def backoff_cap(self) -> float:
        return self.settings.backoff_cap

    def transport(self, agent: AgentInfo, *, user_agent: str, persistent: bool = False) -> Transport:
        return PortalTransport(self.settings, user_agent=user_agent)

    def queue(
        self, outbox: Outbox, store: Store, context: SnapshotContext, now: datetime, *, force: bool = False
    ) -> bool:
        from agent.uploader.snapshot import queue_snapshot

        return queue_snapshot(outbox, store, context, now, force=force)


# --------------------------------------------------------------------------- GLPI


def glpi_agent_uuid(agent_id: str) -> str:
    """The ``GLPI-Agent-ID`` header: the agent id when it is a UUID (the default one is),
    else a UUID made of it (version 5), the same on every run."""
    try:
        return str(uuid.UUID(agent_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"roomsync:agent:{agent_id}"))


@functools.cache
def _local_host() -> Any:
    from agent.uploader.glpi import GlpiHost

    return GlpiHost.local()


@dataclass(frozen=True, slots=True)
class GlpiOutput:
    """``[outputs.glpi]``: GLPI's native inventory (docs/glpi.md)."""

    name: ClassVar[str] = GLPI
    url: str
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    compression: str = "zlib"
    timeout: float = 30.0
    backoff_cap: float = 900.0
    resend_interval: timedelta = timedelta(hours=24)
    max_bytes: int = 64 * 1024 * 1024
    #: This host as the Computer document says it (the machine's own facts by default).
    host: Any = None

    @classmethod
    def from_config(cls, section: GlpiOutputConfig) -> GlpiOutput:
        return cls(**_settings_of(cls, section))

    @property
    def where(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def watch(self) -> Path | None:
        return self.password_file

    def transport(self, agent: AgentInfo, *, user_agent: str, persistent: bool = False) -> Transport:
        return GlpiTransport(self, agent_uuid=glpi_agent_uuid(agent.id), user_agent=user_agent)

    def queue(
        self, outbox: Outbox, store: Store, context: SnapshotContext, now: datetime, *, force: bool = False
    ) -> bool:
        """Queue the documents that changed since they were last queued (every one when the
        resend interval has passed, or ``force``)."""
        from agent.uploader.glpi import glpi_documents
        from agent.uploader.snapshot import verdicts_for

        devices = store.devices()
        rooms = merge_rooms(store.rooms(), context.rooms)
        verdicts = verdicts_for(devices, context, context.today or utc_today(now))
        docs = glpi_documents(
            devices,
            rooms,
            verdicts if context.entitlements is not None else None,
            agent_id=outbox.agent.id,
            host=self.host or _local_host(),
            version=outbox.agent.version,
        )
        # Stored compressed as zlib (what is sent by default); another compression is made
        # from it when sent.
        # Keyed by the unit's identity: every document carries the agent's deviceid.
        items = ((doc.identity, doc.digest, zlib.compress(doc.body, 6)) for doc in docs)
        return outbox.queue_documents(items, now, force=force) > 0


class GlpiTransport(HttpTransport):
    """``POST`` of one document to GLPI's inventory endpoint (see the module's docstring
    for what each reply means); the basic-auth password is the transport's secret."""

    output = GLPI

    def __init__(
        self,
        settings: GlpiOutput,
        *,
        agent_uuid: str,
        user_agent: str = "roomsync",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(
            settings, where=settings.where, what="GLPI", user_agent=user_agent, clock=clock, now=now
        )
        self.agent_uuid = agent_uuid

    async def open(self) -> None:
        self._secret = ""
        if self.settings.username is not None and self.settings.password_file is not None:
            try:
                self._secret = read_secret(self.settings.password_file, "GLPI password")
            except SecretFileError as exc:
                raise OutputError(str(exc)) from None
        self._start()

    def _headers(self) -> dict[str, str]:
        headers = {
            "GLPI-Agent-ID": self.agent_uuid,
            "Content-Type": GLPI_CONTENT_TYPES[self.settings.compression],
            "Accept": "application/json",
            "User-Agent": self.user_agent,
        }
        if self.settings.username is not None:
            pair = f"{self.settings.username}:{self._secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def _body(self, stored: bytes) -> bytes:
        if self.settings.compression == "zlib":
            return stored
        plain = zlib.decompress(stored)
        return gzip.compress(plain, 6) if self.settings.compression == "gzip" else plain

    async def send(self, message: QueuedMessage, left: float | None) -> Attempt:
        assert self._session is not None, "open() first"
        started = self.clock()
        limit = aiohttp.ClientTimeout(total=self.timeout if left is None else min(self.timeout, left))
        try:
            async with self._session.post(
                self.settings.url,
                data=self._body(message.body),
                headers=self._headers(),
                allow_redirects=False,
                compress=None,
                timeout=limit,
            ) as reply:
                raw = await _read_capped(reply, MAX_REPLY_BYTES)
                content_type = reply.content_type
                if content_type in _INFLATE:  # GLPI's JSON, compressed as the request was
                    inflated = _inflated(raw, content_type)
                    body = inflated.decode("utf-8", errors="replace") if inflated is not None else ""
                    content_type = "application/json"
                else:
                    body = _text(raw, reply)
                outcome, detail = self._verdict(reply.status, reply.reason, content_type, body)
                after = (
                    retry_after_seconds(
                        reply.headers.get("Retry-After"), reply.headers.get("Date"), self.now()
                    )
                    if outcome is Outcome.RETRY
                    else 0.0
                )
                return Attempt(outcome, reply.status, detail, after, self.clock() - started)
        except aiohttp.ClientSSLError as exc:
            detail = f"TLS to {self.where} failed: {_reason(getattr(exc, 'os_error', exc))}"
        except TimeoutError:
            detail = f"{self.where} did not answer within {self.timeout:g} s"
        except aiohttp.ClientPayloadError:
            detail = f"{self.where}: the reply was cut short"
        except (aiohttp.ClientError, OSError) as exc:
            detail = f"cannot reach {self.where}: {type(exc).__name__}: {_short(str(exc))}"
        except zlib.error as exc:  # a stored body that is not zlib: never sendable
            return Attempt(
                Outcome.PARK, None, f"stored document unreadable: {exc}", 0.0, self.clock() - started
            )
        return Attempt(Outcome.RETRY, None, detail, 0.0, self.clock() - started)

    def _mask(self, text: str) -> str:
        """``text`` without the password, alone or as the basic-auth credentials (an error
        page may echo the request's headers)."""
        if not self._secret:
            return text
        pair = f"{self.settings.username}:{self._secret}".encode()
        for secret in (base64.b64encode(pair).decode("ascii"), self._secret):
            text = text.replace(secret, MASK)
        return text

    def _verdict(self, status: int, reason: str | None, content_type: str, body: str) -> tuple[Outcome, str]:
        body = self._mask(body)  # before anything is cut from it: no part of a secret is left
        text = f"HTTP {status} {_short(self._mask(reason or ''))}".rstrip()
        said = _glpi_message(body, content_type)
        if 300 <= status < 400:
            return Outcome.PAUSE, f"{text}: the GLPI URL redirects; fix [outputs.glpi] url"
        if status == 401:
            return (
                Outcome.PAUSE,
                f"{text}: GLPI refused the user or password; check username and password_file",
            )
        if status == 403:
            return (
                Outcome.PAUSE,
                f"{text}: GLPI refused the inventory (disabled, or this agent is not allowed)"
                + (f": {said[1]}" if said else ""),
            )
        outcome = classify(status)
        if said is not None and said[0] == "error" and _NOT_VALID in said[1]:
            # GLPI's schema check answers 500: the document is refused, retrying cannot help.
            return Outcome.PARK, f"{text}: GLPI refused the document: {said[1]}"
        if outcome is Outcome.DELIVERED:
            if said is None:
                return Outcome.RETRY, f"{text}: not a GLPI inventory reply (a proxy's or login page?)"
            if said[0] == "error":
                return Outcome.PARK, f"{text}: GLPI refused the document: {said[1] or 'no reason given'}"
            return Outcome.DELIVERED, text
        if said is not None and said[1]:
            return outcome, f"{text}: {said[1]}"
        return outcome, f"{text}: {_short(body)}".rstrip(": ")


#: GLPI compresses its reply as the request was (errors too): the window bits by type.
_INFLATE: dict[str, int] = {
    "application/x-compress-zlib": zlib.MAX_WBITS,
    "application/x-zlib": zlib.MAX_WBITS,
    "application/x-compress-gzip": 16 + zlib.MAX_WBITS,
    "application/x-gzip": 16 + zlib.MAX_WBITS,
    "application/x-compress-deflate": -zlib.MAX_WBITS,
    "application/x-deflate": -zlib.MAX_WBITS,
}
#: What GLPI's message starts with when the document failed its JSON Schema.
_NOT_VALID = "does not validate"


def _inflated(body: bytes, content_type: str) -> bytes | None:
    """The reply body decompressed as its ``Content-Type`` says (at most
    :data:`MAX_REPLY_BYTES` of it); ``None`` when it does not decompress."""
    try:
        return zlib.decompressobj(_INFLATE[content_type]).decompress(body, MAX_REPLY_BYTES)
    except zlib.error:
        return None


def _glpi_message(body: str, content_type: str) -> tuple[str, str] | None:
    """(``status``, ``message``) of GLPI's JSON reply; ``None`` when the body is not one."""
    if "json" not in content_type and not body.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        return None
    message = doc.get("message")
    text = message if isinstance(message, str) else ""
    return doc["status"], _short(text)


# --------------------------------------------------------------------------- MQTT


def mqtt_defaults(agent_id: str) -> tuple[str, str]:
    """(client id, topic prefix) for ``agent_id``: ``roomsync-<id>`` and ``roomsync/<id>``,
    with the characters a topic level may not hold (``#``, ``+``, ``/``) made ``_``."""
    safe = _TOPIC_UNSAFE.sub("_", agent_id)
    return f"roomsync-{safe}"[:128], f"roomsync/{safe}"


@dataclass(frozen=True, slots=True)
class MqttOutput:
    """``[outputs.mqtt]``: an MQTT broker (docs/mqtt.md)."""

    name: ClassVar[str] = MQTT
    url: str
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    topic_prefix: str | None = None
    keepalive: int = 60
    timeout: float = 10.0
    backoff_cap: float = 900.0
    resend_interval: timedelta = timedelta(hours=24)
    max_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_config(cls, section: MqttOutputConfig) -> MqttOutput:
        return cls(**_settings_of(cls, section))

    @property
    def where(self) -> str:
        from agent.uploader.mqtt import MqttTarget

        return MqttTarget.of(self.url, "-").where

    @property
    def watch(self) -> Path | None:
        return self.password_file

    def prefix(self, agent_id: str) -> str:
        return self.topic_prefix or mqtt_defaults(agent_id)[1]

    def transport(self, agent: AgentInfo, *, user_agent: str, persistent: bool = False) -> Transport:
        return MqttTransport(self, agent, persistent=persistent)

    def queue(
        self, outbox: Outbox, store: Store, context: SnapshotContext, now: datetime, *, force: bool = False
    ) -> bool:
        from agent.uploader.snapshot import queue_snapshot

        return queue_snapshot(outbox, store, context, now, force=force)


#: The topic (below the prefix) and whether it is retained, by message kind.
MQTT_TOPICS = {"inventory": ("inventory", True), "events": ("events", False)}


class MqttTransport:
    """Publishes the queue to the broker, one message at a time, each with QoS 1 (delivered
    once a ``PUBACK`` that does not refuse it came back). paho's calls block: they run in a
    thread, one at a time.

    The daemon's transport (``persistent``) keeps its connection between runs, as
    ``<client_id>``, and says the agent's status retained on ``<prefix>/status``: ``online``
    when it connects, ``offline`` (``reason`` ``stopped``) when the daemon stops, and the
    broker says the Last Will (``offline``, ``connection lost``) when the connection ends
    otherwise. A one-shot push (not ``persistent``) connects as ``<client_id>-push`` — never
    taking the daemon's connection over — and leaves the status alone: it is the daemon's."""

    output = MQTT

    def __init__(
        self,
        settings: MqttOutput,
        agent: AgentInfo,
        *,
        persistent: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from agent.uploader.mqtt import MqttTarget

        self.settings = settings
        self.agent = agent
        self.persistent = persistent
        self.clock = clock
        self.where = settings.where
        self.timeout = settings.timeout
        self.backoff_cap = settings.backoff_cap
        self.prefix = settings.prefix(agent.id)
        self._password: str | None = None
        self._publisher: MqttPublisher | None = None
        self._lock = asyncio.Lock()
        client_id = settings.client_id or mqtt_defaults(agent.id)[0]
        if not persistent:
            client_id = f"{client_id}-push"
        try:
            self._target = MqttTarget.of(
                settings.url, client_id, username=settings.username, ca_file=settings.ca_file
            )
        except ValueError as exc:
            raise OutputError(f"[outputs.mqtt] url: {exc}") from None
        if self._target.tls:  # a bad CA file fails here, early, as the portal's does
            import ssl

            try:
                ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise OutputError(f"MQTT CA file {settings.ca_file}: {_reason(exc)}") from None

    @property
    def connected(self) -> bool:
        return self._publisher is not None and self._publisher.connected

    def status(self, state: str, **extra: Any) -> bytes:
        """The ``<prefix>/status`` payload (``at``: when it was made — for the Last Will,
        when the connection was)."""
        doc = {
            "state": state,
            "agent_id": self.agent.id,
            "hostname": self.agent.hostname,
            "version": self.agent.version,
            "at": datetime.now(UTC).isoformat(),
            **extra,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    async def open(self) -> None:
        if self.settings.username is not None and self.settings.password_file is not None:
            try:
                self._password = read_secret(self.settings.password_file, "MQTT password")
            except SecretFileError as exc:
                raise OutputError(str(exc)) from None

    async def close(self) -> None:
        if not self.persistent:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Leave: the daemon's transport says ``offline`` first (the daemon stopping, its
        output removed or changed by a reload)."""
        from agent.uploader.mqtt import MqttError

        async with self._lock:
            publisher, self._publisher = self._publisher, None
            if publisher is None:
                return

            def goodbye() -> None:
                try:
                    if self.persistent:
                        publisher.publish(
                            f"{self.prefix}/status", self.status("offline", reason="stopped"), retain=True
                        )
                except MqttError:  # the connection is gone already: the broker says the will
                    pass
                finally:
                    publisher.close()

            await asyncio.to_thread(goodbye)

    def _connect(self, timeout: float | None) -> MqttPublisher:
        from agent.uploader.mqtt import MqttPublisher

        will = (f"{self.prefix}/status", self.status("offline", reason="connection lost"))
        publisher = MqttPublisher(
            self._target,
            password=self._password,
            timeout=self.timeout,
            keepalive=self.settings.keepalive,
            will=will if self.persistent else None,
        )
        publisher.connect(timeout)
        if self.persistent:
            try:
                publisher.publish(
                    f"{self.prefix}/status", self.status("online"), retain=True, timeout=timeout
                )
            except Exception:
                publisher.close()
                raise
        return publisher

    async def _ensure(self, left: float | None) -> MqttPublisher:
        """The connection, made again when there is none or it was lost (under the lock)."""
        if self._publisher is None or not self._publisher.connected:
            if self._publisher is not None:
                await asyncio.to_thread(self._publisher.close)
                self._publisher = None
            self._publisher = await asyncio.to_thread(self._connect, left)
        return self._publisher

    async def ensure_connected(self) -> str | None:
        """The daemon, between runs: connect again if the connection was lost (so that the
        status says ``online`` again without waiting for something to publish); what went
        wrong, or ``None``."""
        from agent.uploader.mqtt import MqttError

        if not self.persistent:
            return None
        async with self._lock:
            try:
                await self._ensure(None)
            except (MqttError, OSError, ValueError) as exc:
                await self._drop()
                return _masked(str(exc), self._password)
        return None

    async def send(self, message: QueuedMessage, left: float | None) -> Attempt:
        from agent.uploader.mqtt import MqttError, MqttRefused, MqttRejected

        started = self.clock()

        def attempt(outcome: Outcome, detail: str) -> Attempt:
            return Attempt(outcome, None, _masked(detail, self._password), 0.0, self.clock() - started)

        topic, retain = MQTT_TOPICS.get(message.kind, (message.kind, False))
        try:
            payload = gzip.decompress(message.body)
        except (OSError, EOFError, zlib.error) as exc:
            return attempt(Outcome.PARK, f"stored message unreadable: {exc}")
        async with self._lock:
            try:
                publisher = await self._ensure(left)
                wait = None if left is None else max(left - (self.clock() - started), 0.1)
                await asyncio.to_thread(
                    publisher.publish, f"{self.prefix}/{topic}", payload, retain=retain, timeout=wait
                )
            except MqttRefused as exc:
                await self._drop()
                return attempt(Outcome.PAUSE, f"{exc}; check username and password_file")
            except MqttRejected as exc:
                if exc.settings:
                    return attempt(Outcome.PAUSE, f"{exc}; check the broker's ACL for {self.prefix}/#")
                return attempt(Outcome.PARK if exc.message_refused else Outcome.RETRY, str(exc))
            except MqttError as exc:
                await self._drop()
                return attempt(Outcome.RETRY, str(exc))
            except (OSError, ValueError) as exc:  # a CA file gone since the start, a socket error
                await self._drop()
                return attempt(Outcome.RETRY, f"{self.where}: cannot connect: {type(exc).__name__}: {exc}")
        return attempt(Outcome.DELIVERED, "PUBACK")

    async def _drop(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await asyncio.to_thread(publisher.close)


def _masked(text: str, secret: str | None) -> str:
    return _short(text.replace(secret, MASK) if secret else text)


# --------------------------------------------------------------------------- configuration


def configured_outputs(cfg: AgentConfig, portal: PortalSettings | None) -> list[Output]:
    """The outputs ``cfg`` configures, in :data:`~agent.uploader.outbox.OUTPUTS` order:
    the portal when ``portal`` is given, then ``[outputs.glpi]`` and ``[outputs.mqtt]``."""
    found: list[Output] = []
    if portal is not None:
        found.append(
            PortalOutput(
                portal,
                max_bytes=_megabytes(cfg.portal.outbox_max_mb),
                resend_interval=timedelta(hours=cfg.portal.snapshot_interval_hours),
            )
        )
    if cfg.outputs.glpi is not None:
        found.append(GlpiOutput.from_config(cfg.outputs.glpi))
    if cfg.outputs.mqtt is not None:
        found.append(MqttOutput.from_config(cfg.outputs.mqtt))
    return found
