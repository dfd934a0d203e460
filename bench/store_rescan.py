"""Benchmark: what an unchanged re-scan costs the store (issue [12/16]). Prints figures; it is
not a pass/fail test.

1. **Growth at rest:** a fake sysfs tree of 400 USB units, read by the real USB source and
   stored by ``Store.record_scan`` (what ``roomsync scan --sysfs-root`` and the daemon do),
   then re-scanned 30 times unchanged. Prints the growth of the database file and the size
   of its WAL journal (bounded by SQLite's checkpoints, not by the data), and the time per
   re-scan against its floor: the USB source's run alone on the same tree.
   Target: growth <= 256 KiB over the 30 re-scans.
2. **A site's unchanged re-scan:** 5,000 units (bench/portal_push.py's site) stored once, then
   re-scanned unchanged: SQL statements (SQLite's trace hook: executemany counts each row),
   CPU time of ``record_scan`` (which carries unchanged units over: ``diff_scan``'s
   ``known``) and, measured alone, of that diff and of the full diff that merges every unit
   again (what a re-scan cost before), against a floor measured on the same
   readings in the same run: one pass that keys every reading by its channel, looks up the
   stored unit of that channel and takes the reading's facts apart from its times
   (``agent.freshness``) — what any change detection must at least do.
   Targets: <= 10 statements, <= 100 ms CPU.

    .venv/bin/python bench/store_rescan.py [--units 400] [--rescans 30] [--site 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from agent.events import diff_scan, reading_facts, source_of
from agent.gcpause import paused_gc
from agent.inventory import merge_rules
from agent.log import configure
from agent.model import Device, Transport, facts_key
from agent.scan import run_scan
from agent.store import DB_NAME, Store
from bench.portal_push import make_inventory
from tests.sysfs import add_device

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
#: Cameras, hubs, Scribes… with serials: a floor of rooms on one agent's USB.
PRODUCTS = [0x0881, 0x0885, 0x088F, 0x08E2, 0x087A, 0x0866, 0x0876, 0x089B]


def build_tree(root: Path, units: int) -> None:
    for i in range(units):
        bus, port = 1 + i // 100, 1 + i % 100
        pid = PRODUCTS[i % len(PRODUCTS)]
        add_device(
            root,
            f"{bus}-{port}",
            0x046D,
            pid,
            serial=f"B{i:05d}",
            product="Logitech unit",
            devnum=2 + i % 120,
        )


def checkpoint(store: Store) -> None:
    """Move the WAL's pages into the database file and empty the journal, so that the file's
    size is what the store holds."""
    store.read("PRAGMA wal_checkpoint(TRUNCATE)")


def sizes(state: Path) -> tuple[int, int]:
    db = state / DB_NAME
    wal = state / f"{DB_NAME}-wal"
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


def growth_at_rest(units: int, rescans: int) -> None:
    catalog = load_catalog()
    rules = merge_rules(catalog)
    with tempfile.TemporaryDirectory() as tmp:
        root, state = Path(tmp) / "sys", Path(tmp) / "state"
        build_tree(root, units)
        source = UsbSource(root, libusb_strings=False, sync_interface=False)

        def scan(k: int) -> tuple[object, datetime, float]:
            at = T0 + timedelta(minutes=5 * k)
            started = time.perf_counter()
            report = asyncio.run(run_scan([source], ScanContext(catalog, at), 30.0))
            return report, at, time.perf_counter() - started

        with Store.open(state) as store:
            report, at, _ = scan(0)
            store.record_scan(report.readings, [], at, sources_run={"usb"}, rules=rules)  # type: ignore[attr-defined]
            wal0 = sizes(state)[1]
            checkpoint(store)
            db0 = sizes(state)[0]
            rescans_s, floors_s, wal_max = [], [], wal0
            for k in range(1, rescans + 1):
                report, at, read_s = scan(k)
                started = time.perf_counter()
                record = store.record_scan(report.readings, [], at, sources_run={"usb"}, rules=rules)  # type: ignore[attr-defined]
                rescans_s.append(read_s + time.perf_counter() - started)
                floors_s.append(read_s)
                assert not record.changed, "the tree did not change: nothing should have"
                wal_max = max(wal_max, sizes(state)[1])
            devices = len(store.devices())
            checkpoint(store)
            db1 = sizes(state)[0]
    print(f"1. {units} USB units ({devices} in the inventory), {rescans} unchanged re-scans:")
    print(
        f"   database file {db0 / 1024:.0f} KiB -> {db1 / 1024:.0f} KiB: growth {(db1 - db0) / 1024:.0f} KiB "
        f"(target <= 256 KiB), both measured after a checkpoint; the WAL journal: {wal0 / 1024:.0f} KiB "
        f"after the first scan, at most {wal_max / 1024:.0f} KiB during the re-scans"
    )
    median, floor = statistics.median(rescans_s), statistics.median(floors_s)
    print(
        f"   a re-scan (read + store): median {median * 1000:.0f} ms; floor (the USB source's run alone, "
        f"same tree): {floor * 1000:.0f} ms; ratio {median / floor:.2f}x"
    )


def own_addresses(readings: list[Device]) -> None:
    """bench/portal_push.py's site puts many units at one address (that bench pushes a
    snapshot and never diffs); one agent sees each channel once: give every unit its own."""
    for i, device in enumerate(readings):
        device.address = {
            Transport.USB: f"{1 + i // 120}-{1 + i % 120}",
            Transport.SNMP: f"10.1.{i // 250}.{1 + i % 250}",
            Transport.MDNS: f"10.2.{i // 250}.{1 + i % 250}:443",
        }[device.transport]


def site_rescan(units: int, runs: int) -> None:
    catalog = load_catalog()
    rules = merge_rules(catalog)
    readings, rooms = make_inventory(catalog, units, max(1, units // 10))
    own_addresses(readings)
    for device in readings:
        device.first_seen = device.last_seen = T0
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        store.record_scan(readings, rooms, T0, rules=rules)
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        cpu, diff_cpu, full_cpu, floor_cpu, counts, settled, no_gc_cpu = [], [], [], [], [], [], []
        for k in range(1, runs + 1):
            at = T0 + timedelta(minutes=5 * k)
            for device in readings:
                device.first_seen = device.last_seen = at
            previous = store.tracked()
            statements.clear()
            started = time.process_time()
            record = store.record_scan(readings, rooms, at, rules=rules)
            cpu.append(time.process_time() - started)
            counts.append(len(statements))
            # The same scan's parts alone, after it (the diff is a pure function of the same
            # inventory and readings): measured second, their garbage is not record_scan's.
            with paused_gc():
                started = time.process_time()
                by_channel = {(source_of(d), d.address): d for d in readings}
                units_by_channel = {s.key: u for u in previous.values() for s in u.sightings}
                found = [
                    (units_by_channel.get(key), facts_key(d, top=False)) for key, d in by_channel.items()
                ]
                floor_cpu.append(time.process_time() - started)
                started = time.process_time()
                diff_scan(previous, readings, at, rules=rules)
                full_cpu.append(time.process_time() - started)
                started = time.process_time()
                facts = [reading_facts(d) for d in readings]
                carried = diff_scan(
                    previous, readings, at, rules=rules, known=dict(store._known), facts=facts
                )
                diff_cpu.append(time.process_time() - started)
            settled.append(len(carried.settled))
            gc.collect()
            # One more unchanged re-scan with the cyclic collector off around it: what
            # record_scan costs without the full collections its garbage brings on.
            at += timedelta(seconds=1)
            for device in readings:
                device.first_seen = device.last_seen = at
            with paused_gc():
                started = time.process_time()
                store.record_scan(readings, rooms, at, rules=rules)
                no_gc_cpu.append(time.process_time() - started)
            gc.collect()
            assert not record.changed and all(unit is not None for unit, _ in found)
    median = statistics.median(cpu)
    floor = statistics.median(floor_cpu)
    print(f"2. {units} units in {len(rooms)} rooms, an unchanged re-scan, median of {runs}:")
    print(
        f"   SQL statements: {statistics.median(counts):.0f} "
        f"(target <= 10; about {units * 4:,} before: ~4 per unit)"
    )
    print(
        f"   record_scan CPU: {median * 1000:.0f} ms (target <= 100 ms); units carried over "
        f"{min(settled)}-{max(settled)} of {units}; with the cyclic garbage collector off around "
        f"the call: {statistics.median(no_gc_cpu) * 1000:.0f} ms"
    )
    print(
        f"     measured alone: reading facts + the diff carrying units over "
        f"{statistics.median(diff_cpu) * 1000:.0f} ms; the full diff (every unit merged again, "
        f"as before) {statistics.median(full_cpu) * 1000:.0f} ms"
    )
    print(
        f"   floor (key every reading by channel, look its unit up, take its facts): "
        f"{floor * 1000:.1f} ms; ratio record_scan / floor {median / floor:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=400)
    ap.add_argument("--rescans", type=int, default=30)
    ap.add_argument("--site", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    configure(level="warning")
    print(f"cpu count {os.cpu_count()}, python {sys.version.split()[0]}")
    growth_at_rest(args.units, args.rescans)
    site_rescan(args.site, args.runs)


if __name__ == "__main__":
    main()
