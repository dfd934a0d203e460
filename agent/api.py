"""The local API of the daemon (aiohttp): health for systemd and monitoring, the inventory
for scripts, Prometheus metrics.

=====================  =====================================================================
``GET /healthz``       alive (200 while the event loop answers)
``GET /readyz``        200 once the first run of every source is stored and the store is
                       writable; else 503 with ``problems``
``GET /v1/status``     per source: last run, duration, success, last error; outbox depth;
                       portal state; version; uptime; ``problems``
``GET /v1/inventory``  the stored inventory (as ``roomsync inventory --json``); with
                       ``?limit=N`` (1-10000, default 1000 once ``after`` is given) and
                       ``?after=IDENTITY``: one page of units in identity order, with
                       ``total`` and ``next`` (the ``after`` of the next page; null at the end)
``GET /v1/rooms``      room summaries: primary unit, ticket serial, flags
``GET /v1/coverage``   coverage verdicts of every unit with a serial, each with ``support``
                       (whom to call when it fails: agent/support.py), then of every
                       entitlement serial no scan found (``support`` null), in the file's
                       order (``[coverage]``; as ``roomsync coverage``), with ``total``; sent
                       as the records' verdicts are worked out (chunked; to HTTP/1.0, ended
                       by the close);
                       ``?limit=N&after=SERIAL`` pages it as ``/v1/inventory`` (``next``:
                       the last serial of a page)
``GET /v1/events``     change events, ``?since=`` (RFC 3339 or a date) and ``?limit=``
``GET /metrics``       Prometheus text format
=====================  =====================================================================

Listening: ``HOST:PORT`` (default ``127.0.0.1:8765``) or ``unix:/path``. On an address that is
not loopback every request needs ``Authorization: Bearer <token>`` (``[api] token_file``) and
the daemon refuses to start without one; a configured token is required on loopback too.
Requests carry no body (at most 1 KiB is read); anything else is 404/405 with a JSON error.

Under load: answers that read the inventory are built in the API's own thread, once per
stored scan, never on the event loop (see :class:`ApiServer`) — but the entitlement records of
``/v1/coverage``, worked out there for each page and each whole answer as it is sent (at most
:data:`STREAMS_MAX` whole answers at once, pages as ``/v1/events``); at most ``[api]
max_connections`` connections are held, idle ones are closed after ``[api] header_timeout``
seconds, and one more takes the place of the longest idle or is told ``503`` at once
(:mod:`agent.apilimits`).
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import HttpVersion11, web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from agent.apilimits import ConnectionGate
from agent.gcpause import paused_gc
from agent.log import get_logger
from agent.model import utc_today
from agent.sanitize import normalize_serial
from agent.secretfile import SecretFileError, read_secret
from agent.store import StoreError
from agent.storethread import StoreThread
from agent.uploader import PORTAL

if TYPE_CHECKING:
    from agent.catalog import Catalog
    from agent.coverage import Verdict
    from agent.model import Room
    from agent.store import Store
    from agent.support import Support
    from agent.uploader.delivery import PortalSettings
    from agent.uploader.outbox import Outbox
    from agent.uploader.snapshot import CoverageList, SnapshotContext

__all__ = ["ApiServer", "ApiStartError", "DaemonCollector", "DaemonView", "is_loopback_listen"]


# What the API reads of the daemon, and nothing more. The daemon (agent.daemon) satisfies
# these protocols structurally; the API never imports it, so arrows point down
# (daemon -> api) and a test can serve the API from any object of this shape.


class SourceView(Protocol):
    """One scheduled source, as the status API and the metrics read it."""

    @property
    def runs(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def last_run(self) -> datetime | None: ...
    @property
    def last_duration(self) -> float | None: ...
    @property
    def last_success(self) -> bool | None: ...
    def to_dict(self) -> dict[str, Any]: ...


class SettingsView(Protocol):
    """The parts of the daemon's settings the API serves."""

    @property
    def state_dir(self) -> Path: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def rooms(self) -> list[Room]: ...
    @property
    def snapshot(self) -> SnapshotContext | None: ...
    @property
    def portal(self) -> PortalSettings | None: ...


class DaemonView(Protocol):
    """Everything :class:`ApiServer` and :class:`DaemonCollector` read of the daemon."""

    @property
    def settings(self) -> SettingsView: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def sources(self) -> Mapping[str, SourceView]: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def store_error(self) -> str | None: ...
    @property
    def outbox(self) -> Outbox | None: ...
    @property
    def outboxes(self) -> Mapping[str, Outbox]:
        """Every output's queue by output name (the portal's too)."""
        ...

    @property
    def push_failures(self) -> int: ...
    @property
    def delivery_problem(self) -> str | None: ...
    def output_problems(self) -> Mapping[str, str | None]:
        """What stopped each configured output's last delivery run (``None``: it emptied
        its queue)."""
        ...

    def output_failures(self) -> Mapping[str, int]: ...
    def uptime(self) -> float: ...
    def ready_problems(self) -> list[str]: ...
    def problems(self) -> list[str]: ...


log = get_logger("roomsync.api")

MAX_REQUEST_BYTES = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
#: The API serves a handful of local clients (``roomsync health``, a monitoring probe, a
#: script); a connection beyond these takes the place of the longest idle one, or is turned
#: away when none is idle (agent.apilimits). ``[api] max_connections``, ``[api] header_timeout``.
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_HEADER_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 128
#: Answers bigger than this are written in pieces of this size.
CHUNK = 256 * 1024
#: Uncached reads (``/v1/events``) waiting for the API's reader at once; more are told 503.
UNCACHED_MAX = 4
#: Whole ``/v1/coverage`` answers being sent at once (each a pass over every entitlement
#: record in the reader); more are told 503.
STREAMS_MAX = 2
#: ``/v1/inventory?limit=``: the default and the most units a page holds.
PAGE_DEFAULT = 1000
PAGE_MAX = 10_000
#: ``/v1/coverage``: verdicts of entitlement records worked out in the reader at a time.
COVERAGE_BATCH = 2_000


class ApiStartError(Exception):
    """The API cannot listen; ``usage`` when the configuration is the cause (exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def is_loopback_listen(listen: str) -> bool:
    """Whether ``listen`` (``HOST:PORT`` or ``unix:/path``) is reachable from this host only
    (:func:`agent.config.is_loopback_listen`)."""
    from agent.config import is_loopback_listen as loopback

    return loopback(listen)


def _json_text(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str, indent=1) + "\n"


def _json_bytes(data: Any) -> bytes:
    return _json_text(data).encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=_json_text(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class _Busy(Exception):
    """The API's reader has as much uncached work waiting as it takes (503, retry)."""


def _small_number(text: str) -> bool:
    """ASCII digits, at most seven (``str.isdigit`` takes ``²`` and a thousand digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 7


class _GatedSite(web.BaseSite):
    """A TCP or unix listening socket whose connections pass :class:`ConnectionGate` before
    aiohttp's protocol sees them (aiohttp's own sites take ``runner.server`` as it is)."""

    def __init__(self, runner: web.BaseRunner, gate: ConnectionGate, listen: str) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self.gate = gate
        self.listen = listen

    @property
    def name(self) -> str:
        return self.listen

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        factory = self.gate.protocol_factory(self._runner.server)
        if self.listen.startswith("unix:"):
            self._server = await loop.create_unix_server(
                factory, self.listen[len("unix:") :], backlog=self._backlog
            )
        else:
            host, _, port = self.listen.rpartition(":")
            self._server = await loop.create_server(
                factory, host.strip("[]"), int(port), backlog=self._backlog, reuse_address=True
            )


class ApiServer:
    """The API of one daemon (anything of the :class:`DaemonView` shape).

    Nothing slow runs on the event loop: every answer that reads the inventory (inventory,
    rooms, coverage, events, the store's metrics) is built in a thread of its own
    (:class:`~agent.storethread.StoreThread`, the API's reader, with its own connection),
    once per stored scan, settings and day, however many clients ask meanwhile; big answers
    are written in pieces, each when the client has taken the last. What stays on the loop
    is a lookup and a copy."""

    def __init__(
        self,
        daemon: DaemonView,
        listen: str,
        token_file: Path | None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    ) -> None:
        self.daemon = daemon
        self.listen = listen
        self.token_file = token_file
        self._token: bytes | None = None
        self._runner: web.AppRunner | None = None
        self.where = listen
        self.gate = ConnectionGate(max_connections, header_timeout)
        self._reader: StoreThread | None = None
        #: Uncached calls waiting for the reader (``_in_reader``).
        self._uncached = 0
        #: Whole ``/v1/coverage`` answers being sent (``STREAMS_MAX``).
        self._streams = 0
        #: What was built, by key: (the scan it is as of, the settings and the day it was
        #: built with, it).
        #: Room summaries of 5,000 units are not rebuilt for every request: they change only
        #: with a stored scan or a reload (and coverage with the day, which is in its key).
        self._answers: dict[str, tuple[int, object, date | None, Any]] = {}
        #: Builds under way, by key: the settings and day they were started with, their future,
        #: and the newest stored scan when they were (a newer scan starts another build).
        self._building: dict[str, tuple[object, date | None, asyncio.Future[tuple[int, Any]], int]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = DaemonCollector(daemon)
        self.collector.gate = self.gate
        self.registry.register(self.collector)
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds… (Linux /proc).
        ProcessCollector(registry=self.registry)

    async def start(self) -> None:
        if self.token_file is not None:
            try:
                self._token = read_secret(self.token_file, "API token").encode()
            except SecretFileError as exc:
                raise ApiStartError(str(exc), usage=True) from None
        else:
            from agent.config import api_exposure_problem

            problem = api_exposure_problem(self.listen, None)
            if problem is not None:
                raise ApiStartError(problem, usage=True)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._guard])
        routes = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/v1/status": self.status,
            "/v1/inventory": self.inventory,
            "/v1/rooms": self.rooms,
            "/v1/coverage": self.coverage,
            "/v1/events": self.events,
            "/metrics": self.metrics,
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            # aiohttp's own idle limits, as the gate's: a keep-alive connection between
            # requests, and the unread rest of a request's body after its answer.
            keepalive_timeout=self.gate.header_timeout,
            lingering_time=min(self.gate.header_timeout, 2.0),
        )
        await self._runner.setup()
        site = _GatedSite(self._runner, self.gate, self.listen)
        try:
            await site.start()
            if self.listen.startswith("unix:"):
                # The service's UMask (0077) would leave the socket to its user alone; its
                # group (roomsync) may ask for health too.
                os.chmod(self.listen[len("unix:") :], 0o660)
        except (OSError, ValueError) as exc:
            await self._runner.cleanup()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ApiStartError(f"cannot listen on {self.listen}: {reason}") from None
        self.where = self._bound(site)
        self._reader = StoreThread(self.daemon.settings.state_dir, name="roomsync-api", read_only=True)

    def reload_token(self, token_file: Path | None) -> bool:
        """Take a new ``[api] token_file`` (on SIGHUP). False, keeping the old token, when it
        cannot be read or when dropping it would leave a non-loopback API open."""
        if token_file is None:
            if not is_loopback_listen(self.listen):
                log.error("api.token.kept", reason="listening beyond loopback needs a token")
                return False
            self._token, self.token_file = None, None
            return True
        try:
            self._token = read_secret(token_file, "API token").encode()
        except SecretFileError as exc:
            log.error("api.token.kept", reason=str(exc))
            return False
        self.token_file = token_file
        return True

    def adopt(self, inventory: dict[str, Any], scan_id: int) -> None:
        """The inventory the daemon's writer decoded as it stored scan ``scan_id``: the reader
        takes it as its cache (``Store.adopt``) instead of decoding it again."""
        if self._reader is not None:
            self._reader.submit(lambda store: store.adopt(inventory, scan_id))

    @staticmethod
    def _bound(site: _GatedSite) -> str:
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        for sock in sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = f"[{name[0]}]" if ":" in name[0] else name[0]
                return f"{host}:{name[1]}"
            return f"unix:{name}"
        return site.name

    async def stop(self) -> None:
        if self._runner is not None:  # the listener first, then the answers under way (1 s)
            await self._runner.cleanup()
            self._runner = None
        self.gate.close_all()  # whatever is left
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)  # waits for a build under way

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self.gate.busy(request.transport):
            if self._token is not None:
                given = request.headers.get("Authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
                    response = _error(401, "a bearer token is required ([api] token_file)")
                    response.headers["WWW-Authenticate"] = 'Bearer realm="roomsync"'
                    return response
            try:
                return await handler(request)
            except web.HTTPException as exc:
                return _error(exc.status, exc.reason)
            except StoreError as exc:
                return _error(503, str(exc))
            except _Busy:
                response = _error(503, "the API is busy answering other requests: retry")
                response.headers["Retry-After"] = "1"
                return response

    # ------------------------------------------------------------------ building answers

    def _generation(self) -> int:
        """The newest stored scan, by the loop's connection (one indexed statement)."""
        if self.daemon.store is None:
            raise StoreError(f"the store is not available: {self.daemon.store_error}")
        return self.daemon.store.scan_generation()

    async def _built(self, key: str, build: Callable[[Store, Any], Any], *, day: date | None = None) -> Any:
        """``build(store, settings)``, run in the reader thread, as of the newest stored scan,
        the current settings and ``day`` (for what depends on the date): cached under them —
        one answer per ``key``, the newest — and built once however many requests ask for it
        while it is being built."""
        generation, settings = self._generation(), self.daemon.settings
        found = self._answers.get(key)
        if found is not None and found[0] == generation and found[1] is settings and found[2] == day:
            return found[3]
        pending = self._building.get(key)
        if pending is None or pending[0] is not settings or pending[1] != day or pending[3] < generation:
            reader = self._reader
            if reader is None:
                raise StoreError("the API is not running")

            def work(store: Store) -> tuple[int, Any]:
                # The scan first: an answer newer than its key is only rebuilt once more.
                generation = store.scan_generation()
                with paused_gc():  # see agent/gcpause.py: the objects an answer is made of die young
                    return generation, build(store, settings)

            future = asyncio.ensure_future(reader.call(work))
            self._building[key] = pending = (settings, day, future, generation)

            def done(f: asyncio.Future[tuple[int, Any]]) -> None:
                if key in self._building and self._building[key][2] is f:
                    del self._building[key]
                if not f.cancelled() and f.exception() is None:
                    self._answers[key] = (f.result()[0], settings, day, f.result()[1])

            future.add_done_callback(done)
        # A client that goes away does not cancel the build the others wait for.
        return (await asyncio.shield(pending[2]))[1]

    async def _in_reader(self, work: Callable[[Store], T]) -> T:
        """``work(store)`` in the reader thread, uncached; at most :data:`UNCACHED_MAX` such
        calls wait at once (a client that asks and leaves must not queue work without end):
        beyond them, :class:`_Busy` (503)."""
        self._generation()  # the store's own error when it is not available
        if self._reader is None:
            raise StoreError("the API is not running")
        if self._uncached >= UNCACHED_MAX:
            raise _Busy()
        self._uncached += 1
        try:
            return await self._reader.call(work)
        finally:
            self._uncached -= 1

    async def _send(self, request: web.Request, body: bytes, status: int = 200) -> web.StreamResponse:
        """``body`` (JSON). A big one goes in pieces of :data:`CHUNK`, each written when the
        client has taken most of the last (aiohttp drains), so that a slow reader holds a piece
        of ours, not the whole answer; a piece the client has not taken within
        ``header_timeout`` ends the connection (a client that never reads holds nothing). A
        client that goes away mid-answer is no error. ``HEAD`` gets the headers only."""
        if len(body) <= CHUNK or request.method == "HEAD":
            return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")
        response = web.StreamResponse(status=status)
        response.content_type, response.charset = "application/json", "utf-8"
        response.content_length = len(body)
        view = memoryview(body)
        try:
            await response.prepare(request)
            for start in range(0, len(body), CHUNK):
                await asyncio.wait_for(response.write(view[start : start + CHUNK]), self.gate.header_timeout)
            await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away; aiohttp finishes the connection quietly
        return response

    async def _stream(self, request: web.Request, pieces: AsyncIterator[bytes]) -> web.StreamResponse:
        """An answer (JSON) of a length not known beforehand, sent as ``pieces`` come (chunked):
        each written when the client has taken most of the last, as :meth:`_send` does, and
        with its limits: a piece the client has not taken within ``header_timeout`` ends the
        connection; a client that goes away mid-answer is no error. ``HEAD`` gets the headers
        only."""
        response = web.StreamResponse()
        response.content_type, response.charset = "application/json", "utf-8"
        if request.method == "HEAD":
            await response.prepare(request)
            await response.write_eof()
            return response
        if request.version >= HttpVersion11:
            response.enable_chunked_encoding()
        else:  # HTTP/1.0 (a proxy's default upstream) knows no chunks: the end is the close
            response.force_close()
        try:
            await response.prepare(request)
            async for piece in pieces:
                view = memoryview(piece)
                for start in range(0, len(piece), CHUNK):
                    await asyncio.wait_for(
                        response.write(view[start : start + CHUNK]), self.gate.header_timeout
                    )
            await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away (or the API stops); aiohttp finishes the connection
        return response

    # ------------------------------------------------------------------ handlers

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive", "version": __version__, "uptime": round(self.daemon.uptime(), 3)})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = self.daemon.ready_problems()
        return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)

    async def status(self, request: web.Request) -> web.Response:
        d = self.daemon
        outbox = None
        if d.outbox is not None:
            try:
                outbox = d.outbox.stats().to_dict()
            except StoreError as exc:
                outbox = {"error": str(exc)}
        return _json(
            {
                "version": __version__,
                "started_at": d.started_at.isoformat(),
                "uptime": round(d.uptime(), 3),
                "ready": not d.ready_problems(),
                "problems": d.problems(),
                "state_dir": str(d.settings.state_dir),
                "sources": [s.to_dict() for s in d.sources.values()],
                "outbox": outbox,
                "portal": {
                    "configured": d.settings.portal is not None,
                    "host": d.settings.portal.host if d.settings.portal else None,
                    "state": (outbox or {}).get("portal", {}).get("state", "unknown"),
                    "problem": d.delivery_problem,
                    "push_failures": d.push_failures,
                },
                "outputs": self._outputs_status(),
                # The API's own connections: open now; accepted, refused, evicted and timed
                # out since the start (agent.apilimits).
                "connections": {"open": self.gate.open, **asdict(self.gate.stats)},
            }
        )

    def _outputs_status(self) -> dict[str, Any]:
        """Per output: configured or not (a queue may outlive its section), its queue's stats
        and state, what stopped its last run, its failed attempts since the start."""
        d = self.daemon
        problems, failures = d.output_problems(), d.output_failures()
        shown: dict[str, Any] = {}
        for name, outbox in d.outboxes.items():
            if name not in problems and name != PORTAL:
                continue  # an output no longer configured: roomsync outbox shows its queue
            try:
                stats: dict[str, Any] = outbox.stats().to_dict()
            except StoreError as exc:
                stats = {"error": str(exc)}
            shown[name] = {
                "configured": name in problems,
                "problem": problems.get(name),
                "failures": failures.get(name, 0),
                "outbox": stats,
            }
        return shown

    async def inventory(self, request: web.Request) -> web.StreamResponse:
        if "limit" in request.query or "after" in request.query:
            return await self._inventory_page(request)
        return await self._send(request, await self._built("/v1/inventory", _inventory_answer))

    async def _inventory_page(self, request: web.Request) -> web.StreamResponse:
        text = request.query.get("limit", str(PAGE_DEFAULT))
        if not _small_number(text) or not 1 <= int(text) <= PAGE_MAX:
            return _error(400, f"limit={text!r}: expected 1 to {PAGE_MAX}")
        limit, after = int(text), request.query.get("after", "")
        page: _Pages = await self._built("inventory pages", _inventory_pages)
        start = bisect.bisect_right(page.identities, after) if after else 0
        end = min(start + limit, len(page.identities))
        head = {"last_scan": page.last_scan, "total": len(page.identities)}
        body = b"".join(
            [
                json.dumps(head)[:-1].encode(),
                b', "next": ',
                json.dumps(page.identities[end - 1] if end < len(page.identities) else None).encode(),
                b', "devices": [\n',
                b",\n".join(page.texts[start:end]),
                b"\n]}\n",
            ]
        )
        return await self._send(request, body)

    async def rooms(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, await self._built("/v1/rooms", _rooms_answer))

    async def coverage(self, request: web.Request) -> web.StreamResponse:
        context = self.daemon.settings.snapshot
        if context is None or context.entitlements is None:
            return _json(
                {"evaluated": False, "reason": "no [coverage] entitlements file configured", "verdicts": []}
            )
        today = context.today or utc_today(datetime.now(UTC))
        paged = "limit" in request.query or "after" in request.query
        text = request.query.get("limit", str(PAGE_DEFAULT))
        if paged and (not _small_number(text) or not 1 <= int(text) <= PAGE_MAX):
            return _error(400, f"limit={text!r}: expected 1 to {PAGE_MAX}")
        answer: _Coverage = await self._built("/v1/coverage", _coverage_answer(today), day=today)
        if paged:
            after = request.query.get("after", "")
            try:
                body = await self._in_reader(lambda store: answer.page(after, int(text)))
            except LookupError:
                return _error(400, f"after={after!r}: no unit with this serial is listed")
            return await self._send(request, body)
        if self._streams >= STREAMS_MAX:
            raise _Busy()
        self._streams += 1
        try:
            return await self._stream(request, self._coverage_pieces(answer))
        finally:
            self._streams -= 1

    async def _coverage_pieces(self, answer: _Coverage) -> AsyncIterator[bytes]:
        """The whole of ``/v1/coverage``: the inventory's units' verdicts, then the records
        no scan found, worked out in the reader a batch at a time as the client takes them
        (a file of millions of records is never held as one answer)."""
        yield answer.head(next=None)
        yield b",\n".join(answer.seen)
        unseen = map(_unsupported, answer.listed.rows.texts(skip=answer.listed.keys, seen=answer.listed.seen))
        first = not answer.seen
        count = COVERAGE_BATCH
        while count == COVERAGE_BATCH:
            reader = self._reader
            if reader is None:
                raise ConnectionResetError("the API is stopping")
            texts = await reader.call(lambda _: list(islice(unseen, COVERAGE_BATCH)))
            count = len(texts)
            if texts:
                yield b",\n".join(texts) if first else b",\n" + b",\n".join(texts)
                first = False
        yield b"\n]}\n"

    async def events(self, request: web.Request) -> web.StreamResponse:
        since = None
        text = request.query.get("since")
        if text:
            try:
                since = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
            except ValueError:
                return _error(400, f"since={text!r}: expected YYYY-MM-DD or an RFC 3339 time")
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
        limit_text = request.query.get("limit", "1000")
        if not _small_number(limit_text) or int(limit_text) > 100_000:
            return _error(400, f"limit={limit_text!r}: expected 0 to 100000 (0 = all)")
        limit = int(limit_text) or None
        body = await self._in_reader(
            lambda store: _json_bytes([e.to_dict() for e in store.events(since, limit=limit)])
        )
        return await self._send(request, body)

    async def metrics(self, request: web.Request) -> web.Response:
        families: list[Any] = []
        if self.daemon.store is not None:
            try:
                today = utc_today(datetime.now(UTC))
                families = await self._built("metrics", _store_families(today), day=today)
            except StoreError:
                families = []
        # The rest is read from the daemon on the loop (counters, the outbox's few rows).
        self.collector.store_families = families
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# ---------------------------------------------------------------------- built in the reader


def _summary(store: Store, settings: Any) -> tuple[list[Any], Any]:
    from agent.inventory import merge_rooms, summarize_rooms

    devices = store.devices()
    rooms = merge_rooms(store.rooms(), settings.rooms)
    return devices, summarize_rooms(devices, settings.catalog, rooms)


def _inventory_answer(store: Store, settings: Any) -> bytes:
    devices, summary = _summary(store, settings)
    last = store.last_scan()
    return _json_bytes(
        {
            "last_scan": last.isoformat() if last else None,
            "devices": [d.to_dict() for d in devices],
            "rooms": [r.to_dict() for r in summary.rooms],
            "unassigned": [d.identity for d in summary.unassigned],
        }
    )


def _rooms_answer(store: Store, settings: Any) -> bytes:
    return _json_bytes([r.to_dict() for r in _summary(store, settings)[1].rooms])


@dataclass(frozen=True, slots=True)
class _Pages:
    """The inventory for ``/v1/inventory?limit=&after=``: every unit's JSON, by identity."""

    last_scan: str | None
    identities: list[str]
    texts: list[bytes]


def _inventory_pages(store: Store, settings: Any) -> _Pages:
    last = store.last_scan()
    devices = sorted(store.devices(), key=lambda d: d.identity)
    return _Pages(
        last.isoformat() if last else None,
        [d.identity for d in devices],
        [json.dumps(d.to_dict(), ensure_ascii=False, default=str).encode() for d in devices],
    )


@dataclass(frozen=True, slots=True)
class _Coverage:
    """``/v1/coverage`` as of one stored scan, settings and day: the verdicts of the
    inventory's units as JSON, and the records no scan found, whose verdicts are worked out
    as they are sent (``listed.rows``)."""

    listed: CoverageList
    today: str
    seen: list[bytes]
    #: Each listed inventory unit's position in ``seen``, by normalised serial (``after=``).
    at: dict[str, int]
    total: int

    def head(self, **more: Any) -> bytes:
        """The answer's opening, up to its first verdict."""
        head = {"evaluated": True, "today": self.today, "total": self.total, **more}
        return json.dumps(head)[:-1].encode() + b', "verdicts": [\n'

    def page(self, after: str, limit: int) -> bytes:
        """``?limit=&after=``: ``limit`` verdicts from the unit after ``after`` (a serial
        listed, as ``next`` gave it); ``LookupError`` when no unit has that serial."""
        seen_from, rows_from = 0, 0
        if after:
            key = normalize_serial(after)
            at = self.at.get(key)
            if at is not None:
                seen_from = at + 1
            else:
                position = self.listed.rows.records.index_of(key)
                if position is None:
                    raise LookupError(after)
                seen_from, rows_from = len(self.seen), position + 1
        texts = self.seen[seen_from : seen_from + limit]
        serials = [unit.serial for unit in self.listed.units[seen_from : seen_from + len(texts)]]
        more = seen_from + len(texts) < len(self.seen)
        if not more:  # the records no scan found, and one more: is there a next page?
            room = limit - len(texts)
            rows = list(
                islice(
                    self.listed.rows.shared(rows_from, skip=self.listed.keys, seen=self.listed.seen), room + 1
                )
            )
            more, rows = len(rows) > room, rows[:room]
            texts += [_verdict_json(replace(verdict, serial=serial), None) for serial, verdict in rows]
            serials += [serial for serial, _ in rows]
        last = serials[-1] if more and serials else None
        return self.head(next=last) + b",\n".join(texts) + b"\n]}\n"


def _verdict_json(verdict: Verdict, support: Support | None) -> bytes:
    """A verdict as ``/v1/coverage`` lists it, with ``support`` (null for a record no scan found)."""
    fields = {**verdict.to_dict(), "support": support.to_dict() if support is not None else None}
    return json.dumps(fields, ensure_ascii=False, default=str).encode()


def _unsupported(text: bytes) -> bytes:
    """A record's verdict as :meth:`agent.coverage.RowVerdicts.texts` encodes it (one JSON
    object) with ``"support": null`` put in last, as :func:`_verdict_json` puts it."""
    return text[:-1] + b', "support": null}'


def _coverage_answer(today: date) -> Callable[[Store, Any], _Coverage]:
    def build(store: Store, settings: Any) -> _Coverage:
        from agent.support import site_support
        from agent.uploader.snapshot import coverage_list, seen_by_latest_runs

        context = settings.snapshot
        devices, report = _summary(store, settings)
        listed = coverage_list(devices, context, today, store.devices(removed=True))  # as roomsync coverage
        if listed is None:  # the settings changed under the request: as answered then
            raise StoreError("coverage is no longer evaluated (the settings were reloaded): ask again")
        runs = store.latest_runs()
        supports = site_support(
            report,
            devices,
            {normalize_serial(u.serial): v for u, v in zip(listed.units, listed.verdicts, strict=True)},
            context.entitlements,
            catalog=context.catalog,
            today=today,
            seen=lambda device: seen_by_latest_runs(device, runs),
            settings=context.support,
        )

        def support(serial: str | None) -> Support | None:
            found = supports.get(normalize_serial(serial)) if serial else None
            return found[1] if found is not None else None

        return _Coverage(
            listed,
            today.isoformat(),
            [_verdict_json(v, support(u.serial)) for u, v in zip(listed.units, listed.verdicts, strict=True)],
            {normalize_serial(unit.serial): at for at, unit in enumerate(listed.units)},
            listed.total,
        )

    return build


def _store_families(today: date) -> Callable[[Store, Any], list[Any]]:
    """The metrics read from the inventory: units by product and status, by coverage."""
    return lambda store, settings: _families(store, settings, today)


def _families(store: Store, settings: Any, today: date) -> list[Any]:
    from agent.uploader.protocol import status_out
    from agent.uploader.snapshot import coverage_counts, seen_by_latest_runs

    devices = store.devices()
    runs = store.latest_runs()
    counts: dict[tuple[str, str], int] = {}
    for device in devices:
        key = (device.product, status_out(device, seen_by_latest_runs(device, runs)))
        counts[key] = counts.get(key, 0) + 1
    family = GaugeMetricFamily("roomsync_devices", "Units in the inventory", labels=["product", "status"])
    for (product, status), count in sorted(counts.items()):
        family.add_metric([product, status], count)
    coverage = GaugeMetricFamily("roomsync_coverage_units", "Units per coverage status", labels=["status"])
    context = settings.snapshot
    if context is not None and context.entitlements is not None:
        for status, count in sorted(coverage_counts(devices, context, today).items()):
            coverage.add_metric([status], count)
    return [family, coverage]


class DaemonCollector(Collector):
    """Prometheus metrics read from the daemon at scrape time."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        #: The families read from the inventory (units by status, by coverage), built off the
        #: loop by the API for each scrape (``_store_families``).
        self.store_families: list[Any] = []
        #: The API's connection gate, once the API has one.
        self.gate: ConnectionGate | None = None

    def collect(self) -> Iterator[Any]:
        d = self.daemon
        yield InfoMetricFamily("roomsync_build", "roomsync's version", value={"version": __version__})
        duration = GaugeMetricFamily(
            "roomsync_source_duration_seconds", "Duration of the last run", labels=["source"]
        )
        success = GaugeMetricFamily(
            "roomsync_source_success", "1 when the last run succeeded", labels=["source"]
        )
        last = GaugeMetricFamily(
            "roomsync_source_last_run_timestamp_seconds", "When the last run started", labels=["source"]
        )
        errors = GaugeMetricFamily(
            "roomsync_source_errors",
            "Errors of the last run (targets that failed: an SSH host, a silent SNMP address…)",
            labels=["source"],
        )
        runs = CounterMetricFamily("roomsync_source_runs", "Runs of each source", labels=["source"])
        failures = CounterMetricFamily(
            "roomsync_source_failures", "Failed runs of each source", labels=["source"]
        )
        for name, s in sorted(d.sources.items()):
            if s.last_duration is not None:
                duration.add_metric([name], s.last_duration)
            if s.last_success is not None:
                success.add_metric([name], 1.0 if s.last_success else 0.0)
            if s.last_run is not None:
                last.add_metric([name], s.last_run.timestamp())
            if s.last_run is not None:
                errors.add_metric([name], s.errors)
            runs.add_metric([name], s.runs)
            failures.add_metric([name], s.failures)
        yield from (duration, success, last, errors, runs, failures)
        yield GaugeMetricFamily("roomsync_up", "1 while the daemon runs", value=1.0)
        yield GaugeMetricFamily("roomsync_ready", "1 when ready", value=0.0 if d.ready_problems() else 1.0)
        yield from self._store_metrics()
        yield CounterMetricFamily("roomsync_push_failures", "Failed delivery attempts", value=d.push_failures)
        by_output = CounterMetricFamily(
            "roomsync_output_failures", "Failed delivery attempts of each output", labels=["output"]
        )
        for name, count in d.output_failures().items():
            by_output.add_metric([name], count)
        yield by_output
        if self.gate is not None:
            yield GaugeMetricFamily(
                "roomsync_api_connections", "Connections the local API holds", value=self.gate.open
            )
            turned = CounterMetricFamily(
                "roomsync_api_connections_closed",
                "API connections the daemon closed to protect itself",
                labels=["reason"],
            )
            stats = self.gate.stats
            for reason, count in (
                ("refused", stats.refused),
                ("evicted", stats.evicted),
                ("timed_out", stats.timed_out),
            ):
                turned.add_metric([reason], count)
            yield turned

    def _store_metrics(self) -> Iterator[Any]:
        d = self.daemon
        yield from self.store_families  # built off the loop; none without a store
        if d.store is None or not d.outboxes:
            return
        every = {}
        for name, outbox in d.outboxes.items():
            try:
                every[name] = outbox.stats()
            except StoreError:
                return
        depth = GaugeMetricFamily(
            "roomsync_outbox_messages", "Messages in an output's queue", labels=["output", "state"]
        )
        size = GaugeMetricFamily("roomsync_outbox_bytes", "Bytes queued for an output", labels=["output"])
        waiting = GaugeMetricFamily(
            "roomsync_outbox_events_waiting", "Events not yet taken into a message", labels=["output"]
        )
        dropped = CounterMetricFamily(
            "roomsync_outbox_dropped_events", "Events the outbox bound dropped", labels=["output"]
        )
        dropped_messages = CounterMetricFamily(
            "roomsync_outbox_dropped_messages", "Messages the outbox bound dropped", labels=["output"]
        )
        states = GaugeMetricFamily(
            "roomsync_output_state", "1 for each output's current state", labels=["output", "state"]
        )
        for name, stats in every.items():
            depth.add_metric([name, "pending"], stats.pending)
            depth.add_metric([name, "parked"], stats.parked)
            size.add_metric([name], stats.bytes)
            waiting.add_metric([name], stats.events_waiting)
            dropped.add_metric([name], stats.dropped_events)
            dropped_messages.add_metric([name], stats.dropped_messages)
            for state in ("unknown", "ok", "retrying", "unhealthy"):
                states.add_metric([name, state], 1.0 if stats.state.state == state else 0.0)
        yield from (depth, size, waiting, dropped, dropped_messages, states)
        if PORTAL in every:
            portal = GaugeMetricFamily(
                "roomsync_portal_state", "1 for the portal's current state", labels=["state"]
            )
            for state in ("unknown", "ok", "retrying", "unhealthy"):
                portal.add_metric([state], 1.0 if every[PORTAL].state.state == state else 0.0)
            yield portal
