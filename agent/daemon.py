"""The daemon behind ``roomsync run``: sources on their own schedules, the store, the
outbox's delivery, the local API and systemd's notify protocol, on one asyncio loop.

Shape
-----
* **One task per source** (:class:`SourcePlan`): run it (``agent.scan.execute``: timed, its
  own time-out, any failure an error of that source only), store what it found
  (``Store.record_scan`` scoped to that source, so units other sources report are never
  "missed"), queue the change events and — when it says something new, or the daily one is
  due — a snapshot, and wake the delivery. Then wait for the interval or a trigger.
* **Scans are stored off the loop** (:class:`agent.storethread.StoreThread`, the writer): one
  worker thread with its own connection stores each run and, only when the run changed what
  the store says (or the snapshot's context or the day changed), builds and queues the
  snapshot; the loop's own connection and the API's reader then take over the inventory the
  writer decoded. The API and the watchdog never wait on a scan being stored.
* **USB hot-plug**: a cheap poll of the sysfs device list (names and device numbers) every
  ``hotplug_poll`` seconds; a change triggers the USB source at once. It needs no netlink
  socket and works on a captured sysfs tree as on ``/sys``.
* **mDNS** is browsed for ``timeout`` seconds every ``interval`` (default 60 s), not held
  open: a bar that appears is seen within a minute, and nothing lingers between browses.
* **Delivery**: one task per configured output (the portal, ``[outputs.glpi]``,
  ``[outputs.mqtt]``), each :class:`agent.uploader.delivery.Delivery` over its own queue until
  it is empty; paused (a refused token or password, unusable settings) until its secret file
  changes, the backoff cap passes, or a reload. One output down never holds up another.
  The MQTT connection is kept between runs (the broker's Last Will says ``offline`` if the
  agent vanishes); it says ``offline`` itself when the daemon stops.
* **Supervisor**: ``WATCHDOG=1`` each second (at most half ``WATCHDOG_USEC``), sent by the loop
  itself, so only while the loop turns and every task is alive (a stuck loop is killed);
  ``STATUS=`` one line; the daily snapshot check.

The store may be unusable (read-only directory, full disk, corrupt file): the daemon still
starts, answers ``/readyz`` with 503 and the reason, and tries to open it again each minute.
``READY=1`` is sent once the API listens and the store has been tried, so that systemd does
not restart a daemon in a loop for a cause a restart cannot fix; ``STATUS=`` says what is
wrong.

Signals: SIGTERM/SIGINT stop (``STOPPING=1``; the current store write — a transaction in
the writer thread — always finishes before the store closes; exit 0 well within 10 s).
SIGHUP reloads the configuration through the ``reload`` callable; an invalid one is logged
and the old one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent import __version__
from agent.catalog import Catalog
from agent.discovery import ScanContext, Source
from agent.inventory import known_rooms, merge_rules
from agent.log import get_logger
from agent.model import Room, utc_today
from agent.roommap import RoomMap
from agent.scan import run_scan
from agent.sdnotify import Notifier, watchdog_interval
from agent.store import Retention, ScanRecord, Store, StoreError
from agent.storethread import StoreThread
from agent.uploader import GLPI, PORTAL
from agent.uploader.delivery import Delivery, OutputError, PortalSettings, Transport
from agent.uploader.outbox import Outbox
from agent.uploader.outputs import Output, PortalOutput, make_outbox
from agent.uploader.snapshot import SnapshotContext, queue_snapshot

__all__ = ["Daemon", "DaemonSettings", "SourcePlan", "SourceStatus", "run_until_stopped"]

log = get_logger("roomsync.daemon")

#: How long to wait before trying to open an unusable store again.
STORE_RETRY_S = 60.0
#: How often delivery looks at the outbox when nothing woke it.
DELIVERY_IDLE_S = 60.0
#: Sources whose errors are mostly about what other hosts announce (an mDNS instance that
#: left before it was resolved), not about what the configuration names: routine on a LAN,
#: so they make the daemon degraded only when the run found nothing at all (the interfaces
#: unusable). They are always in /v1/status and the log.
ADVISORY_ERRORS = frozenset({"mdns"})
#: Shutdown budget for tasks to finish after SIGTERM.
STOP_GRACE_S = 5.0
#: After the loop has stopped, how long a source's worker thread that is still busy (an SSH
#: connect waiting out its ``connect_timeout``, a libusb read) is waited for before the
#: process exits without it.
THREAD_GRACE_S = 2.0
#: A storm of one kind of loop error is over when it has not recurred for this long (s).
LOOP_STORM_QUIET_S = 10.0
#: A storm that goes on is told what it counted this often (s).
LOOP_STORM_REPORT_S = 60.0


#: The file in the state directory a running daemon holds locked (and writes its PID in).
LOCK_NAME = "daemon.lock"


class StateDirLock:
    """One daemon per state directory: an exclusive ``flock`` on :data:`LOCK_NAME`, held
    for the daemon's life (the kernel lets go of it when the process ends, however it ends).
    Two daemons on one state directory would be two deliverers on one outbox."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; ``None`` when this process holds it (or the directory cannot be
        made: the store's own error says so then), else why it cannot: another daemon,
        named by its PID."""
        import fcntl

        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            return (
                f"another roomsync daemon (PID {holder}) is using the state directory "
                f"{self.path.parent}; stop it first (systemctl stop roomsync), or give this one "
                "another state_dir"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """One source and its schedule."""

    name: str
    source: Source
    interval: float
    timeout: float


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """Everything the daemon runs on, made from the configuration and the command line
    (:func:`agent.daemon_settings.build_daemon_settings` builds it; a reload builds a new one)."""

    plans: tuple[SourcePlan, ...]
    state_dir: Path
    catalog: Catalog
    room: Room | None = None
    room_map: RoomMap | None = None
    snapshot: SnapshotContext | None = None
    portal: PortalSettings | None = None
    listen: str = "127.0.0.1:8765"
    api_token_file: Path | None = None
    api_max_connections: int = 64
    api_header_timeout: float = 10.0
    agent_id: str | None = None
    #: The USB sysfs tree to watch for hot-plugging (``None``: USB is not scheduled).
    sysfs_root: Path | None = None
    hotplug_poll: float = 1.0
    remove_after: int = 3
    retention: Retention = field(default_factory=Retention)
    outbox_max_bytes: int = 64 * 1024 * 1024
    snapshot_interval: timedelta = timedelta(hours=24)
    #: The outputs besides the portal (``[outputs.glpi]``, ``[outputs.mqtt]``).
    outputs: tuple[Output, ...] = ()

    @property
    def rooms(self) -> list[Room]:
        return known_rooms(self.room, self.room_map)

    def all_outputs(self) -> list[Output]:
        """Every output delivered to: the portal (when configured) first."""
        found: list[Output] = []
        if self.portal is not None:
            found.append(PortalOutput(self.portal, self.outbox_max_bytes, self.snapshot_interval))
        return [*found, *self.outputs]


@dataclass(slots=True)
class _Lane:
    """One output's delivery: its task's events, its transport kept between runs (MQTT's
    connection), what its last run said."""

    output: Output
    restart: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    transport: Transport | None = None
    problem: str | None = None
    failures: int = 0
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class SourceStatus:
    """What the status API says of one source."""

    name: str
    interval: float
    runs: int = 0
    failures: int = 0
    last_run: datetime | None = None
    last_duration: float | None = None
    last_success: bool | None = None
    last_error: str | None = None
    errors: int = 0
    devices: int = 0
    running: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interval": self.interval,
            "runs": self.runs,
            "failures": self.failures,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "last_duration": round(self.last_duration, 6) if self.last_duration is not None else None,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "errors": self.errors,
            "devices": self.devices,
            "running": self.running,
        }


def _usb_fingerprint(sysfs_root: Path) -> frozenset[tuple[str, str]]:
    """The USB devices present: (sysfs name, device number). A replug at the same port
    changes the device number. Interfaces (``1-1:1.0``) are skipped."""
    base = sysfs_root / "bus" / "usb" / "devices"
    found = set()
    try:
        names = os.listdir(base)
    except OSError:
        return frozenset()
    for name in names:
        if ":" in name:
            continue
        try:
            with open(base / name / "devnum", encoding="ascii", errors="replace") as fh:
                devnum = fh.read(16).strip()
        except OSError:
            devnum = ""
        found.add((name, devnum))
    return frozenset(found)


class Daemon:
    """One running agent. :meth:`serve` runs it until a stop signal; returns the exit
    status."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        reload: Callable[[], DaemonSettings] | None = None,
        notifier: Notifier | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.reload_settings = reload
        self.notifier = notifier or Notifier(environ)
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.store: Store | None = None
        #: The portal's queue (the others are in :attr:`outboxes`, the portal's too).
        self.outbox: Outbox | None = None
        self.outboxes: dict[str, Outbox] = {}
        self._lanes: dict[str, _Lane] = {}
        self._writer: StoreThread | None = None
        #: What the last snapshot built after a scan was built from: the snapshot context (a
        #: reload makes a new one), the UTC day (coverage verdicts change at midnight) and, by
        #: source, the units its latest run did not see. A scan that changed nothing and
        #: leaves these as they were queues no snapshot. Only the writer thread touches it.
        self._snapshot_basis: tuple[SnapshotContext, date, dict[str, frozenset[str]]] | None = None
        #: Snapshots are built by the writer thread after a scan and by the loop when one is
        #: due or the portal asks: one at a time (the snapshot context keeps a memo).
        self._snapshot_lock = threading.Lock()
        self.store_error: str | None = "not opened yet"
        self.sources: dict[str, SourceStatus] = {}
        #: Failed attempts of every output and settings that could not be used, ever (a counter).
        self._failures_total = 0
        self.first_scan_done = False
        self._stop = asyncio.Event()
        self._triggers: dict[str, asyncio.Event] = {}
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat = time.monotonic()
        self._api: Any = None
        self._reloads = 0
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._store_tried = time.monotonic()
        self._state_lock = StateDirLock(settings.state_dir)
        self.loop_errors = LoopErrors()

    # ------------------------------------------------------------------ life cycle

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for signum, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self._on_hup),
        ):
            loop.add_signal_handler(signum, handler)
        async with self._reload_lock:  # a SIGHUP during the start waits for it to finish
            problem = self._state_lock.acquire()
            if problem is not None:
                log.error("daemon.state_dir.in_use", error=problem)
                return 2  # a restart cannot fix it (RestartPreventExitStatus=2)
            self._open_store()
            from agent.api import ApiServer, ApiStartError

            self._api = ApiServer(
                self,
                self.settings.listen,
                self.settings.api_token_file,
                max_connections=self.settings.api_max_connections,
                header_timeout=self.settings.api_header_timeout,
            )
            try:
                await self._api.start()
            except ApiStartError as exc:
                log.error("api.start.failed", error=str(exc))
                self._close_store()
                return 2 if exc.usage else 1
            self._start_sources()
            self._start_lanes()
            self._tasks.append(asyncio.create_task(self._supervise(), name="supervisor"))
            self._tasks.append(asyncio.create_task(self._watch_usb(), name="hotplug"))
        self.notifier.ready(self.status_line())
        log.info(
            "daemon.ready",
            listen=self._api.where,
            state_dir=str(self.settings.state_dir),
            sources=[p.name for p in self.settings.plans],
            portal=self._portal_host(),
        )
        await self._stop.wait()
        self.notifier.stopping("stopping")
        log.info("daemon.stopping")
        await self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()
        for lane in self._lanes.values():
            lane.restart.set()

    async def _shutdown(self) -> None:
        tasks = [*self._source_tasks.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_GRACE_S)
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in lanes:  # after the sources: a store write they started queues for the lanes
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*lanes, return_exceptions=True), STOP_GRACE_S)
        with contextlib.suppress(TimeoutError):  # MQTT says offline itself
            await asyncio.wait_for(self._close_lanes(list(self._lanes.values())), STOP_GRACE_S)
        if self._api is not None:
            await self._api.stop()
        self._close_store()
        self._state_lock.release()

    def _on_hup(self) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def reload(self) -> bool:
        """Re-read the configuration; keep the old one when the new one is invalid. Reloads
        run one at a time (two quick SIGHUPs must not both start the sources)."""
        async with self._reload_lock:
            if self._stop.is_set():
                return False
            return await self._reload()

    async def _reload(self) -> bool:
        if self.reload_settings is None:
            log.warning("daemon.reload.unsupported")
            return False
        self.notifier.reloading("reloading configuration")
        try:
            fresh = self.reload_settings()
        except Exception as exc:  # a bad file must never stop the daemon
            log.error("daemon.reload.refused", error=str(exc))
            self.notifier.ready(self.status_line())
            return False
        at_start = ("listen", "state_dir", "api_max_connections", "api_header_timeout")
        if any(getattr(fresh, key) != getattr(self.settings, key) for key in at_start):
            log.warning(
                "daemon.reload.restart_needed",
                detail="state_dir and [api] listen, max_connections, header_timeout take effect "
                "at the next start",
            )
            fresh = replace(fresh, **{key: getattr(self.settings, key) for key in at_start})
        if self._api is not None and not self._api.reload_token(fresh.api_token_file):
            fresh = replace(fresh, api_token_file=self.settings.api_token_file)
        old_tasks = list(self._source_tasks.values())
        for task in old_tasks:
            task.cancel()
        await asyncio.gather(*old_tasks, return_exceptions=True)
        # A source that keeps per-target state across runs (CollabOS tokens and rate
        # windows) takes it over from its predecessor.
        before = {p.name: p.source for p in self.settings.plans}
        for plan in fresh.plans:
            adopt = getattr(plan.source, "adopt", None)
            if adopt is not None and plan.name in before:
                adopt(before[plan.name])
        self.settings = fresh
        self._reloads += 1
        if self.store is not None:
            self._make_outboxes(self.store)
        self._start_sources()
        await self._restart_lanes()
        log.info(
            "daemon.reloaded",
            sources=[p.name for p in fresh.plans],
            portal=self._portal_host(),
            outputs=[o.name for o in fresh.all_outputs()],
        )
        self.notifier.ready(self.status_line())
        return True

    # ------------------------------------------------------------------ store

    def _make_outbox(self, store: Store, output: Output | None = None) -> Outbox:
        """The queue of ``output`` (the portal's when ``None``, configured or not: scans
        queue its snapshot either way, as they always did)."""
        if output is None:
            output = PortalOutput(
                PortalSettings("", Path()), self.settings.outbox_max_bytes, self.settings.snapshot_interval
            )
        return make_outbox(
            store, output, agent_id=self.settings.agent_id, version=__version__, hostname=os.uname().nodename
        )

    def _make_outboxes(self, store: Store) -> None:
        self.outbox = self._make_outbox(store)
        self.outboxes = {PORTAL: self.outbox}
        for output in self.settings.outputs:
            self.outboxes[output.name] = self._make_outbox(store, output)

    def _open_store(self) -> bool:
        try:
            store = Store.open(self.settings.state_dir)
        except StoreError as exc:
            self.store_error = str(exc)
            log.error("store.unavailable", error=str(exc))
            return False
        try:
            self._make_outboxes(store)
        except StoreError as exc:
            store.close()
            self.store_error = str(exc)
            log.error("store.unavailable", error=str(exc))
            return False
        self.store, self.store_error = store, None
        return True

    def _close_store(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.store is not None:
            self.store.close()
            self.store = self.outbox = None
            self.outboxes = {}

    # ------------------------------------------------------------------ sources

    def _start_sources(self) -> None:
        self._source_tasks = {}
        previous = self.sources
        self.sources = {}
        for plan in self.settings.plans:
            status = previous.get(plan.name) or SourceStatus(plan.name, plan.interval)
            status.interval, status.running = plan.interval, False
            self.sources[plan.name] = status
            self._triggers[plan.name] = asyncio.Event()
            self._source_tasks[plan.name] = asyncio.create_task(
                self._source_loop(plan), name=f"source:{plan.name}"
            )

    def trigger(self, name: str) -> bool:
        """Run source ``name`` now (hot-plug, or an operator's request)."""
        event = self._triggers.get(name)
        if event is None:
            return False
        event.set()
        return True

    async def _source_loop(self, plan: SourcePlan) -> None:
        trigger = self._triggers[plan.name]
        while not self._stop.is_set():
            trigger.clear()
            await self.run_source(plan)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trigger.wait(), plan.interval)

    async def run_source(self, plan: SourcePlan) -> None:
        """One run of one source, stored; never raises (but for cancellation)."""
        status = self.sources[plan.name]
        status.running = True
        now = datetime.now(UTC)
        started = time.perf_counter()
        try:
            ctx = ScanContext(self.settings.catalog, now, self.settings.room)
            report = await run_scan([plan.source], ctx, plan.timeout, self.settings.room_map)
        finally:
            status.running = False
        run = report.runs[0]
        status.runs += 1
        status.last_run, status.last_duration = now, time.perf_counter() - started
        status.last_success = run.success
        status.errors = len(report.errors)
        status.devices = len(report.devices)
        status.last_error = report.errors[0].message if report.errors else None
        if not run.success:
            status.failures += 1
        await self._store_run(plan.name, report, now, run.success)
        if all(s.runs for s in self.sources.values()):
            self.first_scan_done = True

    async def _store_run(self, name: str, report: Any, now: datetime, success: bool) -> None:
        if self.store is None and not self._open_store():
            return
        assert self.store is not None and self.outbox is not None
        if self._writer is None:
            self._writer = StoreThread(self.settings.state_dir, name="roomsync-store")
        settings = self.settings
        context = settings.snapshot

        def store_and_queue(store: Store) -> tuple[ScanRecord, Any, bool]:
            record = store.record_scan(
                report.readings,
                settings.rooms,
                now,
                len(report.errors),
                sources_run={name} if success else set(),
                unreached=report.unreached,
                remove_after=settings.remove_after,
                retention=settings.retention,
                rules=merge_rules(settings.catalog),
            )
            queued = self._snapshot_after(store, name, record, context, now, success=success)
            return record, store.tracked(), queued

        # A reload may cancel this task while the writer works: the write finishes whatever
        # happens, and what follows it (the loop's cache, the log, waking the delivery) too.
        call = asyncio.ensure_future(self._writer.call(store_and_queue))
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._stored(name, done))
            raise
        except Exception:
            pass
        self._stored(name, call)

    def _snapshot_after(
        self,
        store: Store,
        name: str,
        record: ScanRecord,
        context: SnapshotContext | None,
        now: datetime,
        *,
        success: bool = True,
    ) -> bool:
        """In the writer thread: queue a snapshot when the scan may have changed what it says
        (its facts; which units the source's latest run saw; the snapshot's context, as a
        reload makes a new one; the day coverage is evaluated on). A failure is logged and
        leaves the basis unset, so that the next scan tries again."""
        if context is None:
            return False
        basis = self._snapshot_basis
        # A run that failed as a whole looked at nothing: what its source saw is unchanged.
        unseen = record.unseen if success or basis is None else basis[2].get(name, frozenset())
        same = (
            basis is not None
            and basis[0] is context
            and basis[1] == utc_today(now)
            and basis[2].get(name) == unseen
        )
        if same and not record.changed:
            return False
        queued = failed = False
        for output in [None, *self.settings.outputs]:
            try:
                with self._snapshot_lock:
                    queued |= self._queue_into(self._make_outbox(store, output), output, store, context, now)
            except Exception as exc:  # the scan is stored: a snapshot that failed is owed, nothing more
                failed = True
                log.error(
                    "snapshot.queue.failed",
                    source=name,
                    output=output.name if output else PORTAL,
                    error=f"{type(exc).__name__}: {exc}",
                )
        if failed:
            self._snapshot_basis = None
            return queued
        seen = dict(basis[2]) if basis is not None and basis[0] is context else {}
        seen[name] = unseen
        self._snapshot_basis = (context, utc_today(now), seen)
        return queued

    def _stored(self, name: str, call: asyncio.Future[tuple[ScanRecord, Any, bool]]) -> None:
        """What follows a stored run, on the loop."""
        if call.cancelled():
            return
        problem = call.exception()
        if problem is not None:
            if isinstance(problem, StoreError):
                self.store_error = str(problem)
                log.error("store.write.failed", source=name, error=str(problem))
            else:
                log.error("store.write.failed", source=name, error=f"{type(problem).__name__}: {problem}")
            return
        record, inventory, queued = call.result()
        if self.store is not None:
            self.store.adopt(inventory, record.scan_id)
        if self._api is not None:
            self._api.adopt(inventory, record.scan_id)
        self.store_error = None
        if record.events or queued:
            for lane in self._lanes.values():
                lane.wake.set()
        for event in record.events:
            log.info(
                "inventory.event",
                type=str(event.type),
                product=event.product,
                serial=event.serial,
                room=event.room,
            )

    @staticmethod
    def _queue_into(
        outbox: Outbox,
        output: Output | None,
        store: Store,
        context: SnapshotContext,
        now: datetime,
        *,
        force: bool = False,
    ) -> bool:
        if output is None:
            return queue_snapshot(outbox, store, context, now, force=force)
        return output.queue(outbox, store, context, now, force=force)

    def _queue_output(self, output: Output, now: datetime, *, force: bool = False) -> bool:
        """On the loop: queue what ``output`` gets of the store now (due, or after an outage)."""
        outbox = self.outboxes.get(output.name)
        if outbox is None or self.store is None or self.settings.snapshot is None:
            return False
        with self._snapshot_lock:
            return self._queue_into(outbox, output, self.store, self.settings.snapshot, now, force=force)

    def _hotplug_root(self) -> Path | None:
        """The sysfs tree to watch: the USB source's, while USB is scheduled."""
        return self.settings.sysfs_root if "usb" in self._source_tasks else None

    async def _watch_usb(self) -> None:
        # Reads the settings on every turn, so a reload that changes the tree, the poll or
        # whether USB runs at all takes effect without restarting the watcher. A new tree
        # that differs from the old one triggers a run too: a device plugged in between the
        # reload's own run and this look is not missed.
        root = self._hotplug_root()
        seen = _usb_fingerprint(root) if root is not None else frozenset()
        while not self._stop.is_set():
            await asyncio.sleep(self.settings.hotplug_poll)
            root = self._hotplug_root()
            if root is None:
                seen = frozenset()
                continue
            now = _usb_fingerprint(root)
            if now != seen:
                seen = now
                log.info("usb.hotplug")
                self.trigger("usb")

    # ------------------------------------------------------------------ delivery

    def _portal_host(self) -> str | None:
        return self.settings.portal.host if self.settings.portal else None

    @property
    def push_failures(self) -> int:
        """Attempts of every output that did not deliver, and settings that could not be used
        (a counter: never less, an output removed by a reload included)."""
        return self._failures_total

    def output_failures(self) -> dict[str, int]:
        return {name: lane.failures for name, lane in self._lanes.items()}

    @property
    def delivery_problem(self) -> str | None:
        """What stopped the portal's last delivery run (``None``: it emptied its queue)."""
        lane = self._lanes.get(PORTAL)
        return lane.problem if lane is not None else None

    def output_problems(self) -> dict[str, str | None]:
        return {name: lane.problem for name, lane in self._lanes.items()}

    def _start_lanes(self) -> None:
        for output in self.settings.all_outputs():
            lane = _Lane(output)
            lane.task = asyncio.create_task(self._delivery_loop(lane), name=f"delivery-{output.name}")
            self._lanes[output.name] = lane

    async def _restart_lanes(self) -> None:
        """After a reload: each output's loop goes on with its new settings; an output
        removed stops (MQTT says goodbye), one added starts."""
        fresh = {output.name: output for output in self.settings.all_outputs()}
        gone = [lane for name, lane in self._lanes.items() if name not in fresh]
        for lane in gone:
            lane.closed = True
            lane.restart.set()
            del self._lanes[lane.output.name]
        for name, output in fresh.items():
            kept = self._lanes.get(name)
            if kept is None:
                added = _Lane(output)
                added.task = asyncio.create_task(self._delivery_loop(added), name=f"delivery-{name}")
                self._lanes[name] = added
            else:
                kept.output = output
                kept.restart.set()
                kept.wake.set()
        await asyncio.gather(*(lane.task for lane in gone if lane.task is not None), return_exceptions=True)

    async def _close_lanes(self, lanes: list[_Lane]) -> None:
        for lane in lanes:
            await self._drop_transport(lane)

    async def _drop_transport(self, lane: _Lane) -> None:
        transport, lane.transport = lane.transport, None
        shutdown = getattr(transport, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                await shutdown()

    async def _delivery_loop(self, lane: _Lane) -> None:
        try:
            while not self._stop.is_set() and not lane.closed:
                lane.restart.clear()
                output = lane.output
                outbox = self.outboxes.get(output.name)
                try:
                    paused = await self._deliver(lane, output, outbox) if outbox is not None else False
                except Exception as exc:  # a bug or the unforeseen: this output waits, the rest go on
                    lane.problem = f"{type(exc).__name__}: {exc}"
                    lane.failures += 1
                    self._failures_total += 1
                    log.exception(f"{output.name}.delivery.failed", output=output.name, error=lane.problem)
                    await self._drop_transport(lane)
                    paused = True
                wait = output.backoff_cap if paused else DELIVERY_IDLE_S
                await self._wait_for_work(lane, wait, watch=output.watch if paused else None, paused=paused)
        finally:
            if lane.closed:
                await self._drop_transport(lane)

    def _transport(self, lane: _Lane, output: Output, outbox: Outbox) -> Transport:
        """The lane's transport: kept between runs while its settings stay (MQTT's
        connection), made afresh when they changed."""
        if lane.transport is not None:
            return lane.transport
        transport = output.transport(outbox.agent, user_agent=f"roomsync/{__version__}", persistent=True)
        if hasattr(transport, "shutdown"):
            lane.transport = transport
        return transport

    async def _deliver(self, lane: _Lane, output: Output, outbox: Outbox) -> bool:
        """Deliver until empty; True when delivery paused (token refused, bad settings)."""
        name = output.name
        try:
            now = datetime.now(UTC)
            if outbox.snapshot_due(now):
                self._queue_output(output, now)
            if lane.transport is not None and getattr(lane.transport, "settings", None) != output:
                await self._drop_transport(lane)  # a reload changed the settings
            transport = self._transport(lane, output, outbox)
            ensure = getattr(transport, "ensure_connected", None)
            if ensure is not None:  # MQTT: the status says online again without waiting for work
                await transport.open()
                problem = await ensure()
                if problem is not None:
                    log.warning(f"{name}.connect.failed", output=name, error=problem)
            delivery = Delivery(
                outbox,
                transport,
                # After an outage a fresh snapshot is worth sending; GLPI's documents were all
                # kept (nothing of them is lost in an outage): no full resend for a blip.
                snapshot=(lambda: self._queue_output(output, datetime.now(UTC), force=True))
                if output.name != GLPI
                else None,
            )
            result = await delivery.run(stop=lane.restart)
        except OutputError as exc:
            lane.problem = str(exc)
            lane.failures += 1
            self._failures_total += 1
            log.error(f"{name}.settings.unusable", output=name, error=str(exc))
            with contextlib.suppress(StoreError):
                outbox.set_state("unhealthy", str(exc), datetime.now(UTC))
            return True
        except StoreError as exc:
            self.store_error = str(exc)
            return False
        failed = sum(1 for a in result.attempts if a.outcome != "delivered")
        lane.failures += failed
        self._failures_total += failed
        lane.problem = result.last_problem if result.stopped_because != "empty" else None
        return result.stopped_because == "paused"

    async def _wait_for_work(
        self, lane: _Lane, seconds: float, watch: Path | None, *, paused: bool = False
    ) -> None:
        """Until ``seconds`` pass, a reload or stop, or — not paused — new work; paused,
        until ``watch`` (the secret file) changes, but not for new work: whatever stopped
        the output (a refused password, a disabled inventory) is not fixed by a scan."""
        stamp = _mtime(watch)
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and not lane.restart.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not paused and lane.wake.is_set():
                lane.wake.clear()
                return
            # Paused: look at the secret file each second; else sleep until woken.
            event = lane.restart if paused else lane.wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 1.0) if paused else remaining)
            if watch is not None and _mtime(watch) != stamp:
                log.info(
                    f"{lane.output.name}.secret.changed"
                    if lane.output.name != PORTAL
                    else "portal.token.changed"
                )
                return

    # ------------------------------------------------------------------ supervision

    async def _supervise(self) -> None:
        interval = watchdog_interval()
        # A ping every second whatever WatchdogSec is: a pause of WATCHDOG=1 longer than a
        # second or two then means the loop itself was held up, and shows as such.
        tick = min(interval, 1.0) if interval else 5.0
        last_status = ""
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            if self.store is None and time.monotonic() - self._store_tried >= STORE_RETRY_S:
                self._store_tried = time.monotonic()
                self._open_store()
            if interval and self.healthy_tasks():
                self.notifier.watchdog()
            self.loop_errors.flush()
            line = self.status_line()
            if line != last_status:
                self.notifier.status(line)
                last_status = line
            await asyncio.sleep(tick)

    def healthy_tasks(self) -> bool:
        """Every task alive (a source loop, a delivery or the watcher that ended has failed
        past its own isolation)."""
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        return all(not t.done() for t in [*self._source_tasks.values(), *self._tasks, *lanes])

    # ------------------------------------------------------------------ what the API reads

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def ready_problems(self) -> list[str]:
        problems = []
        if self.store_error:
            problems.append(f"store: {self.store_error}")
        waiting = sorted(name for name, s in self.sources.items() if not s.runs)
        if waiting:
            problems.append(f"first scan not done: {', '.join(waiting)}")
        return problems

    def problems(self) -> list[str]:
        """Everything degraded, one line each (``roomsync health``)."""
        found = self.ready_problems()
        for name, status in sorted(self.sources.items()):
            if status.last_success is False:
                found.append(f"source {name}: last run failed: {status.last_error or 'see the log'}")
            elif status.errors and (name not in ADVISORY_ERRORS or not status.devices):
                # The run finished, but a target of it (an SSH host, an SNMP address, the
                # sysfs tree) could not be read: what `roomsync scan` exits 1 for.
                found.append(
                    f"source {name}: {status.errors} error(s) in the last run: "
                    f"{status.last_error or 'see the log'}"
                )
        for name, outbox in self.outboxes.items():
            configured = name in self._lanes
            try:
                stats = outbox.stats()
            except StoreError as exc:
                found.append(f"outbox: {exc}")
                break
            if stats.state.state in ("unhealthy", "retrying") and configured:
                found.append(f"{name} {stats.state.state}: {stats.state.reason or 'see the log'}")
            if stats.parked:
                whose = "" if name == PORTAL else f" for {name}"
                found.append(f"outbox: {stats.parked} message(s){whose} parked (refused by the {name})")
        for name, lane in self._lanes.items():
            if lane.problem and not any(f.startswith(f"{name} ") for f in found):
                found.append(f"{name}: {lane.problem}")
        if not self.healthy_tasks():
            found.append("a daemon task ended unexpectedly (see the log)")
        return found

    def status_line(self) -> str:
        devices = sum(s.devices for s in self.sources.values())
        problems = self.problems()
        text = f"{devices} device(s) from {len(self.sources)} source(s)"
        return f"{text}; {problems[0]}" if problems else f"{text}; ok"


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    from agent.secretfile import resolve_secret_path

    try:
        return resolve_secret_path(path).stat().st_mtime
    except OSError:
        return None


class LoopErrors:
    """The event loop's own error reports (``loop.set_exception_handler``), through the log:
    the first of a kind in full (``loop.error``), the rest of its storm counted and told in
    one line (``loop.error.repeated``) once it has been quiet for :data:`LOOP_STORM_QUIET_S`.
    asyncio's default handler writes a traceback each time: when the process runs out of file
    descriptors its accept loop reports each failed accept, hundreds of thousands a minute."""

    def __init__(self, quiet: float = LOOP_STORM_QUIET_S) -> None:
        self.quiet = quiet
        #: kind -> [first, last, count, 1 when already told of in part (0: not yet)]
        self._storms: dict[str, list[float]] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        exc = context.get("exception")
        kind = f"{message}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        now = time.monotonic()
        storm = self._storms.get(kind)
        if storm is not None and now - storm[1] <= self.quiet:
            storm[1] = now
            storm[2] += 1
            return
        self._told(kind)
        self._storms[kind] = [now, now, 1, 0]
        log.error(
            "loop.error",
            message=message,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    def flush(self, *, everything: bool = False) -> None:
        """Tell the storms that have been quiet long enough (all of them: ``everything``); of
        one that goes on, what it has counted each :data:`LOOP_STORM_REPORT_S` (then counting
        starts again), so that a storm that never ends is not silent."""
        now = time.monotonic()
        for kind, (first, last, _, _) in list(self._storms.items()):
            if everything or now - last > self.quiet:
                self._told(kind)
            elif now - first >= LOOP_STORM_REPORT_S:
                self._told(kind)
                self._storms[kind] = [now, last, 0, 1]  # still in its storm: not told in full again

    def _told(self, kind: str) -> None:
        storm = self._storms.pop(kind, None)
        # The first of a storm was told in full; what came after it is told here.
        if storm is not None and storm[2] > (0 if storm[3] else 1):
            log.warning(
                "loop.error.repeated",
                message=kind.split("|", 1)[0],
                times=int(storm[2]),
                seconds=round(storm[1] - storm[0], 1),
            )


def run_until_stopped(daemon: Daemon) -> int:
    """Run ``daemon.serve()`` on a new event loop and return its exit status.

    Like :func:`asyncio.run`, but the default executor's threads are not waited for without
    end: a source blocked in a worker thread (an SSH connect waiting out a long
    ``connect_timeout``, a libusb read) must not hold the exit past the stop budget (SIGTERM:
    exit within 10 s). By the time the loop has stopped the store is closed, so threads still
    busy after :data:`THREAD_GRACE_S` are abandoned (``os._exit``) and logged.
    """
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="roomsync-worker")
    loop.set_default_executor(executor)
    loop.set_exception_handler(daemon.loop_errors)
    asyncio.set_event_loop(loop)
    try:
        status = loop.run_until_complete(daemon.serve())
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        daemon.loop_errors.flush(everything=True)
        asyncio.set_event_loop(None)
        executor.shutdown(wait=False, cancel_futures=True)
        loop.close()
    deadline = time.monotonic() + THREAD_GRACE_S
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    busy = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if busy:
        log.warning(
            "daemon.exit.threads_abandoned",
            threads=busy,
            detail="a source was still blocked; exiting without waiting for it",
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
