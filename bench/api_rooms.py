"""Benchmark: ``/v1/rooms`` and ``/v1/inventory`` of a daemon holding a site (issue [12/16]:
``/v1/rooms`` p99 <= 50 ms with 5,000 units). Prints figures; it is not a pass/fail test.

A real daemon (``python -m agent run``, as bench/daemon.py starts it) over a state directory
that already holds 5,000 units in 500 rooms (bench/portal_push.py's site, every unit at an
address of its own), its USB source on an empty tree with a long interval (it runs once at
the start), mDNS off. Each path is asked ``--requests`` times in a row over one keep-alive
connection on 127.0.0.1, after one first request (which builds the answer and the cache); the
floor is ``/healthz`` asked the same way on the same connection in the same run: the HTTP
round trip and the server's own work, with nothing to compute.

Two rounds: right after the daemon is ready (its first scan running meanwhile: the inventory
decoded by each connection, the scan's diff, its events queued, and the cyclic collector's
walks of what they leave, all in the same second), then once that first scan is stored and
the daemon has been idle for two seconds — a daemon holding a site between scans, which is
what the target is for. Both are printed.

    .venv/bin/python bench/api_rooms.py [--units 5000] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.inventory import merge_rules
from agent.store import Store
from bench.portal_push import make_inventory
from bench.store_rescan import own_addresses
from tests.daemon_peer import LOOPBACK, NotifySocket, free_tcp_port, start_daemon, toml_str

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def fill(state: Path, units: int) -> int:
    catalog = load_catalog()
    readings, rooms = make_inventory(catalog, units, max(1, units // 10))
    own_addresses(readings)
    for device in readings:
        device.first_seen = device.last_seen = T0
    with Store.open(state) as store:
        store.record_scan(readings, rooms, T0, rules=merge_rules(catalog))
        return len(store.devices())


def timed(conn: http.client.HTTPConnection, path: str, n: int) -> tuple[float, list[float], int]:
    """The first request's time, then ``n`` more; the size of the answer."""
    times = []
    size = 0
    for _ in range(n + 1):
        t0 = time.perf_counter()
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        times.append(time.perf_counter() - t0)
        if reply.status != 200:
            raise RuntimeError(f"{path}: HTTP {reply.status}: {body[:200]!r}")
        size = len(body)
    return times[0], times[1:], size


def wait_for_scan_after(conn: http.client.HTTPConnection, stored: datetime, timeout: float) -> None:
    """Until the inventory's ``last_scan`` is another than ``stored`` (the scan the state
    directory was filled with): the daemon's first scan is stored."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        conn.request("GET", "/v1/inventory?limit=1")
        reply = conn.getresponse()
        body = reply.read()
        if reply.status == 200:
            last = json.loads(body)["last_scan"]
            if last and datetime.fromisoformat(last) != stored:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the daemon stored no scan within {timeout:g} s")


def report(title: str, results: dict[str, tuple[float, list[float], int]]) -> None:
    floor = p99(results["/healthz"][1])
    print(f"  {title}")
    for path, (first, times, size) in results.items():
        line = (
            f"    {path:<14} first {first * 1000:7.1f} ms   "
            f"median {statistics.median(times) * 1000:6.2f} ms   "
            f"p99 {p99(times) * 1000:6.2f} ms   ({len(times)} requests, {size:,} bytes)"
        )
        if path != "/healthz":
            line += f"   p99 / floor {p99(times) / floor:.1f}x"
        print(line)
    print(f"    floor: /healthz p99 {floor * 1000:.2f} ms on the same connection")


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roomsync-bench-api-"))
    try:
        stored = fill(work / "state", args.units)
        (work / "sys" / "bus" / "usb" / "devices").mkdir(parents=True)
        port = free_tcp_port()
        config = work / "agent.toml"
        config.write_text(
            f"state_dir = {toml_str(work / 'state')}\n"
            f"[sources.usb]\nsysfs_root = {toml_str(work / 'sys')}\nlibusb_strings = false\n"
            "sync_interface = false\ninterval = 3600\n"
            "[sources.mdns]\nenabled = false\n"
            f'[api]\nlisten = "{LOOPBACK}:{port}"\n'
        )
        with NotifySocket.make() as notify:
            daemon = start_daemon(config, notify, work / "daemon.log", url=f"http://{LOOPBACK}:{port}")
            try:
                if not daemon.wait_until(lambda: daemon.get("/readyz").status == 200, 60.0):
                    raise RuntimeError(f"not ready: {daemon.log_text()[-2000:]}")
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
                rounds = []
                for _ in ("start", "steady"):
                    if rounds:
                        wait_for_scan_after(conn, T0, 60.0)
                        time.sleep(2.0)
                    results = {path: timed(conn, path, args.requests) for path in ("/healthz", "/v1/rooms")}
                    results["/v1/inventory"] = timed(conn, "/v1/inventory", max(20, args.requests // 10))
                    rounds.append(results)
                conn.close()
            finally:
                daemon.stop()
        print(f"daemon API over a store of {stored} units, {args.requests} requests a path on one connection")
        report("right after start (its first scan stored meanwhile):", rounds[0])
        report("once that scan is stored and the daemon idle (target: /v1/rooms p99 <= 50 ms):", rounds[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
