"""A local user flooding the daemon's API (issue [13/16]), for tests/test_api_load.py and
bench/api_load.py: a real daemon (``python -m agent run``, started as tests/daemon_peer.py
starts it, with the file-descriptor limit systemd gives a service, 1,024) over a state
directory holding a site's units, its USB source re-scanning an empty tree every few seconds
(so that every few seconds a stored scan makes the API's answers stale), while

* ``clients`` threads ask ``/v1/inventory`` and ``/v1/rooms`` in turn, each over keep-alive
  connections, as fast as they are answered;
* ``half_open`` connections each send the start of a request and then nothing;
* one prober opens a fresh connection for ``/healthz`` every ``probe_every`` seconds and
  records how long the answer took (or that none came within ``probe_timeout``);
* the notify socket records every ``WATCHDOG=1``.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import resource
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.catalog import load_catalog
from agent.inventory import merge_rules
from agent.model import Device, Room, Transport
from agent.store import Store
from tests.daemon_peer import LOOPBACK, NotifySocket, RunningDaemon, free_tcp_port, start_daemon, toml_str

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
#: What a site's LAN holds: bars by SNMP, Taps by mDNS, ten units to a room.
_KINDS = [("Rally Bar", Transport.SNMP, "snmp"), ("Tap IP", Transport.MDNS, "mdns")]


def site_units(units: int) -> tuple[list[Device], list[Room]]:
    """``units`` LAN units in ``units // 10`` rooms, each at an address of its own."""
    rooms = [
        Room(f"hq-{r // 40 + 1}-{r % 40 + 1:02d}", f"HQ {r // 40 + 1}.{r % 40 + 1:02d}")
        for r in range(max(1, units // 10))
    ]
    devices = []
    for i in range(units):
        product, transport, source = _KINDS[i % len(_KINDS)]
        address = (
            f"10.1.{i // 250}.{1 + i % 250}"
            if transport is Transport.SNMP
            else f"10.2.{i // 250}.{1 + i % 250}:443"
        )
        devices.append(
            Device(
                product=product,
                transport=transport,
                address=address,
                first_seen=T0,
                last_seen=T0,
                room=rooms[i % len(rooms)].id,
                serial=f"2313FD{i:06d}",
                serial_label_grade=True,
                firmware="1.12.3",
                sources=[source],
            )
        )
    return devices, rooms


def fill_site(state_dir: Path, units: int) -> int:
    """A state directory holding ``units`` stored units; how many the store then holds."""
    devices, rooms = site_units(units)
    with Store.open(state_dir) as store:
        store.record_scan(devices, rooms, T0, rules=merge_rules(load_catalog()), sources_run={"snmp", "mdns"})
        return len(store.devices())


@dataclass
class LoadReport:
    units: int
    seconds: float
    watchdog_pings: int = 0
    #: The longest time between two ``WATCHDOG=1`` (the start and end of the flood count as
    #: pings: a daemon that stops pinging during it shows the whole pause).
    watchdog_gap: float = 0.0
    health_times: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    #: The median ``/healthz`` time of the idle daemon just before the flood.
    health_floor: float = 0.0
    answers: int = 0
    answer_bytes: int = 0
    #: Requests the flooding clients got no answer to (refused, reset, timed out): the cap at
    #: work, not a failure of the daemon.
    refused: int = 0
    half_open_held: int = 0
    half_open_closed_by_daemon: int = 0
    ready_after: float | None = None
    log_lines: int = 0
    log_bytes: int = 0
    scans: int = 0
    alive: bool = True

    @property
    def health_worst(self) -> float:
        return max(self.health_times, default=float("inf"))

    @property
    def health_median(self) -> float:
        return statistics.median(self.health_times) if self.health_times else float("inf")


def _flood(port: int, stop: threading.Event, report: LoadReport, lock: threading.Lock, index: int) -> None:
    paths = ["/v1/inventory", "/v1/rooms"]
    turn = index
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        path = paths[turn % 2]
        turn += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
            conn.request("GET", path)
            reply = conn.getresponse()
            body = reply.read()
            with lock:
                if reply.status == 200:
                    report.answers += 1
                    report.answer_bytes += len(body)
                else:
                    report.refused += 1
        except (OSError, http.client.HTTPException):
            with lock:
                report.refused += 1
            if conn is not None:
                conn.close()
            conn = None
            stop.wait(0.05)
    if conn is not None:
        conn.close()


def _half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each having sent half a request's header."""
    held = []
    for _ in range(count):
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /v1/inventory HTTP/1.1\r\nHost: roomsync\r\nX-Slow: ")
        held.append(sock)
    return held


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the daemon has closed ``sock`` (whatever it said first)."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _probe(port: int, timeout: float) -> float | str:
    """Seconds ``/healthz`` took on a fresh connection, or why it failed."""
    t0 = time.monotonic()
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        try:
            conn.request("GET", "/healthz")
            reply = conn.getresponse()
            body = reply.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    if reply.status != 200 or json.loads(body).get("status") != "alive":
        return f"HTTP {reply.status}: {body[:200]!r}"
    return time.monotonic() - t0


def _raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )


def run_load(
    work: Path,
    *,
    units: int = 2000,
    clients: int = 30,
    seconds: float = 30.0,
    half_open: int = 900,
    nofile: int = 1024,
    scan_interval: float = 5.0,
    probe_every: float = 0.25,
    probe_timeout: float = 10.0,
    watchdog_usec: int = 30_000_000,
) -> LoadReport:
    """Flood a daemon over ``units`` stored units (see the module's docstring); the daemon is
    stopped before this returns."""
    stored = fill_site(work / "state", units)
    (work / "sys" / "bus" / "usb" / "devices").mkdir(parents=True, exist_ok=True)
    port = free_tcp_port()
    config = work / "agent.toml"
    config.write_text(
        f"state_dir = {toml_str(work / 'state')}\n"
        f"[sources.usb]\nsysfs_root = {toml_str(work / 'sys')}\nlibusb_strings = false\n"
        f"sync_interface = false\ninterval = {scan_interval}\n"
        "[sources.mdns]\nenabled = false\n"
        f'[api]\nlisten = "{LOOPBACK}:{port}"\n'
    )
    _raise_own_fd_limit(half_open + clients + 200)
    report = LoadReport(units=stored, seconds=seconds)
    with NotifySocket.make() as notify:
        daemon = start_daemon(
            config,
            notify,
            work / "daemon.log",
            url=f"http://{LOOPBACK}:{port}",
            watchdog_usec=watchdog_usec,
            nofile=nofile,
            ready_timeout=60.0,
        )
        try:
            _flood_daemon(
                daemon,
                port,
                report,
                clients=clients,
                seconds=seconds,
                half_open=half_open,
                probe_every=probe_every,
                probe_timeout=probe_timeout,
            )
        finally:
            daemon.stop()
        text = daemon.log_text()
        report.log_lines = len(text.splitlines())
        report.log_bytes = len(text.encode())
    return report


def _flood_daemon(
    daemon: RunningDaemon,
    port: int,
    report: LoadReport,
    *,
    clients: int,
    seconds: float,
    half_open: int,
    probe_every: float,
    probe_timeout: float,
) -> None:
    if not daemon.wait_until(lambda: daemon.get("/readyz").status == 200, 60.0):
        raise RuntimeError(f"the daemon is not ready: {daemon.log_text()[-2000:]}")
    scans_before = daemon.source("usb")["runs"]
    idle = [_probe(port, probe_timeout) for _ in range(10)]
    report.health_floor = statistics.median(t for t in idle if isinstance(t, float))
    stop = threading.Event()
    lock = threading.Lock()
    held: list[socket.socket] = []
    start = time.monotonic()
    threads = [
        threading.Thread(target=_flood, args=(port, stop, report, lock, i), name=f"flood-{i}", daemon=True)
        for i in range(clients)
    ]
    try:
        held = _half_open(port, half_open)
        for t in threads:
            t.start()
        end = start + seconds
        while time.monotonic() < end:
            result = _probe(port, probe_timeout)
            if isinstance(result, str):
                report.health_failures.append(f"at {time.monotonic() - start:.2f} s: {result}")
            else:
                report.health_times.append(result)
            time.sleep(probe_every)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        report.half_open_held = len(held)
        report.half_open_closed_by_daemon = sum(_closed_by_peer(s) for s in held)
        for sock in held:
            sock.close()
    finish = time.monotonic()
    pings = [at for at, line in daemon.notify.lines(start) if line == "WATCHDOG=1" and at <= finish]
    report.watchdog_pings = len(pings)
    marks = [start, *pings, finish]
    report.watchdog_gap = max(b - a for a, b in itertools.pairwise(marks))
    ready = daemon.wait_until(lambda: daemon.get("/readyz", timeout=5).status == 200, 30.0)
    report.ready_after = time.monotonic() - finish if ready else None
    report.alive = daemon.proc.poll() is None
    with contextlib.suppress(Exception):
        report.scans = daemon.source("usb")["runs"] - scans_before
