"""The local API of the daemon (aiohttp): health for systemd and monitoring, the inventory
for scripts, Prometheus metrics.

=====================  =====================================================================
``GET /healthz``       alive (200 while the event loop answers)
``GET /readyz``        200 once the first run of every source is stored and the store is
                       writable; else 503 with ``problems``
``GET /v1/status``     per source: last run, duration, success, last error; outbox depth;
                       portal state; version; uptime; ``problems``
``GET /v1/inventory``  the stored inventory (as ``roomsync inventory --json``)
``GET /v1/rooms``      room summaries: primary unit, ticket serial, flags
``GET /v1/coverage``   coverage verdicts of every unit with a serial and every entitlement
                       serial no scan found (``[coverage]``; as ``roomsync coverage``)
``GET /v1/events``     change events, ``?since=`` (RFC 3339 or a date) and ``?limit=``
``GET /metrics``       Prometheus text format
=====================  =====================================================================

Listening: ``HOST:PORT`` (default ``127.0.0.1:8765``) or ``unix:/path``. On an address that is
not loopback every request needs ``Authorization: Bearer <token>`` (``[api] token_file``) and
the daemon refuses to start without one; a configured token is required on loopback too.
Requests carry no body (at most 1 KiB is read); anything else is 404/405 with a JSON error.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from agent.log import get_logger
from agent.model import utc_today
from agent.secretfile import SecretFileError, read_secret
from agent.store import StoreError

if TYPE_CHECKING:
    from agent.catalog import Catalog
    from agent.model import Room
    from agent.store import Store
    from agent.uploader.delivery import PortalSettings
    from agent.uploader.outbox import Outbox
    from agent.uploader.snapshot import SnapshotContext

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
    def push_failures(self) -> int: ...
    @property
    def delivery_problem(self) -> str | None: ...
    def uptime(self) -> float: ...
    def ready_problems(self) -> list[str]: ...
    def problems(self) -> list[str]: ...


log = get_logger("roomsync.api")

MAX_REQUEST_BYTES = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=_json_text(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class ApiServer:
    """The API of one daemon (anything of the :class:`DaemonView` shape)."""

    def __init__(self, daemon: DaemonView, listen: str, token_file: Path | None) -> None:
        self.daemon = daemon
        self.listen = listen
        self.token_file = token_file
        self._token: bytes | None = None
        self._runner: web.AppRunner | None = None
        self.where = listen
        #: ``/v1/inventory`` and ``/v1/rooms`` by path: their text, under the newest stored scan
        #: and the settings it was made with (room summaries of 5,000 units are not rebuilt
        #: for every request: they change only with a stored scan or a reload).
        self._answers: dict[str, tuple[int, object, str]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))
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
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            if self.listen.startswith("unix:"):
                path = self.listen[len("unix:") :]
                site: web.BaseSite = web.UnixSite(self._runner, path)
            else:
                host, _, port = self.listen.rpartition(":")
                site = web.TCPSite(self._runner, host.strip("[]"), int(port), reuse_address=True)
            await site.start()
            if self.listen.startswith("unix:"):
                # The service's UMask (0077) would leave the socket to its user alone; its
                # group (roomsync) may ask for health too.
                os.chmod(self.listen[len("unix:") :], 0o660)
        except OSError as exc:
            await self._runner.cleanup()
            raise ApiStartError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from None
        self.where = self._bound(site)

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

    @staticmethod
    def _bound(site: web.BaseSite) -> str:
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
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
            }
        )

    def _store(self) -> Store:
        if self.daemon.store is None:
            raise StoreError(f"the store is not available: {self.daemon.store_error}")
        return self.daemon.store

    def _summary(self) -> tuple[list[Any], Any]:
        from agent.inventory import merge_rooms, summarize_rooms

        store = self._store()
        devices = store.devices()
        rooms = merge_rooms(store.rooms(), self.daemon.settings.rooms)
        return devices, summarize_rooms(devices, self.daemon.settings.catalog, rooms)

    def _cached(self, path: str, build: Callable[[], Any]) -> web.Response:
        """The answer of ``path``: rebuilt only when a scan was stored or the settings were
        reloaded since it was last built."""
        generation, settings = self._store().scan_generation(), self.daemon.settings
        found = self._answers.get(path)
        if found is None or found[0] != generation or found[1] is not settings:
            found = (generation, settings, _json_text(build()))
            self._answers[path] = found
        return web.Response(text=found[2], content_type="application/json")

    async def inventory(self, request: web.Request) -> web.Response:
        def build() -> dict[str, Any]:
            devices, summary = self._summary()
            last = self._store().last_scan()
            return {
                "last_scan": last.isoformat() if last else None,
                "devices": [d.to_dict() for d in devices],
                "rooms": [r.to_dict() for r in summary.rooms],
                "unassigned": [d.identity for d in summary.unassigned],
            }

        return self._cached("/v1/inventory", build)

    async def rooms(self, request: web.Request) -> web.Response:
        return self._cached("/v1/rooms", lambda: [r.to_dict() for r in self._summary()[1].rooms])

    async def coverage(self, request: web.Request) -> web.Response:
        from agent.uploader.snapshot import verdicts_for

        context = self.daemon.settings.snapshot
        devices = self._store().devices()
        if context is None or context.entitlements is None:
            return _json(
                {"evaluated": False, "reason": "no [coverage] entitlements file configured", "verdicts": []}
            )
        today = context.today or utc_today(datetime.now(UTC))
        verdicts = verdicts_for(devices, context, today, unseen=True)  # as roomsync coverage lists them
        return _json(
            {
                "evaluated": True,
                "today": today.isoformat(),
                "verdicts": [v.to_dict() for v in verdicts.values()],
            }
        )

    async def events(self, request: web.Request) -> web.Response:
        since = None
        text = request.query.get("since")
        if text:
            try:
                since = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
            except ValueError:
                return _error(400, f"since={text!r}: expected YYYY-MM-DD or an RFC 3339 time")
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
        limit_text = request.query.get("limit", "1000")
        if not limit_text.isdigit() or int(limit_text) > 100_000:
            return _error(400, f"limit={limit_text!r}: expected 0 to 100000 (0 = all)")
        found = self._store().events(since, limit=int(limit_text) or None)
        return _json([e.to_dict() for e in found])

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class DaemonCollector(Collector):
    """Prometheus metrics read from the daemon at scrape time."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

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

    def _store_metrics(self) -> Iterator[Any]:
        d = self.daemon
        if d.store is None or d.outbox is None:
            return
        try:
            devices = d.store.devices()
            stats = d.outbox.stats()
        except StoreError:
            return
        from agent.uploader.protocol import status_out
        from agent.uploader.snapshot import seen_by_latest_runs

        runs = d.store.latest_runs()
        counts: dict[tuple[str, str], int] = {}
        for device in devices:
            key = (device.product, status_out(device, seen_by_latest_runs(device, runs)))
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily("roomsync_devices", "Units in the inventory", labels=["product", "status"])
        for (product, status), count in sorted(counts.items()):
            family.add_metric([product, status], count)
        yield family
        coverage = GaugeMetricFamily(
            "roomsync_coverage_units", "Units per coverage status", labels=["status"]
        )
        context = d.settings.snapshot
        if context is not None and context.entitlements is not None:
            from agent.uploader.snapshot import verdicts_for

            by_status: dict[str, int] = {}
            for verdict in verdicts_for(devices, context, utc_today(datetime.now(UTC)), unseen=True).values():
                by_status[str(verdict.status)] = by_status.get(str(verdict.status), 0) + 1
            for status, count in sorted(by_status.items()):
                coverage.add_metric([status], count)
        yield coverage
        depth = GaugeMetricFamily("roomsync_outbox_messages", "Messages in the outbox", labels=["state"])
        depth.add_metric(["pending"], stats.pending)
        depth.add_metric(["parked"], stats.parked)
        yield depth
        yield GaugeMetricFamily("roomsync_outbox_bytes", "Bytes queued in the outbox", value=stats.bytes)
        yield GaugeMetricFamily(
            "roomsync_outbox_events_waiting",
            "Events not yet taken into a message",
            value=stats.events_waiting,
        )
        yield CounterMetricFamily(
            "roomsync_outbox_dropped_events", "Events the outbox bound dropped", value=stats.dropped_events
        )
        portal = GaugeMetricFamily(
            "roomsync_portal_state", "1 for the portal's current state", labels=["state"]
        )
        for state in ("unknown", "ok", "retrying", "unhealthy"):
            portal.add_metric([state], 1.0 if stats.portal.state == state else 0.0)
        yield portal
