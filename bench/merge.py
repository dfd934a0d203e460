"""Benchmark: merge 50,000 readings of 20,000 units into one record per unit (target < 1 s,
linear in the number of readings).

The readings are a site as the agent sees it: bars on a room PC's USB (Sync interface) that
also announce themselves over mDNS and answer SNMP; bars on the LAN only (mDNS with a serial,
SNMP at the same address without one: joined by address); room PCs over SSH that also announce
their host name over mDNS (joined by host name); Taps on USB that answer over mDNS too.
``agent.identity.merge_readings`` groups and merges them, as ``roomsync scan`` does for one
scan.

Beside each figure, a floor measured on the same readings in the same run: one pass that
copies each reading and groups them by serial in a dict — what any merge must at least do —
so the ratio holds on a noisy machine where a bare time drifts. Linearity: the same mix at a
quarter, half and all of the size, time per reading. Prints figures; it is not a pass/fail
test.

    .venv/bin/python bench/merge.py [--units 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.events import diff_scan
from agent.gcpause import paused_gc
from agent.identity import MergeRules, merge_readings
from agent.model import Device, SerialSource, Transport

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _device(
    source: str, transport: Transport, address: str, product: str, family: str, **facts: object
) -> Device:
    return Device(
        product=product,
        category=family,
        transport=transport,
        address=address,
        first_seen=NOW,
        last_seen=NOW,
        sources=[source],
        **facts,  # type: ignore[arg-type]
    )


def site(units: int) -> list[Device]:
    """Readings of ``units`` units, 2.5 per unit (50,000 for 20,000)."""
    readings: list[Device] = []
    for i in range(units):
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        serial = f"23{i:08d}Z"
        kind = i % 10
        if kind < 5:  # a bar on a PC's USB, on mDNS and on SNMP: 3 readings
            readings += [
                _device(
                    "usb",
                    Transport.USB,
                    f"{1 + i % 8}-{1 + i % 4}.{i}",
                    "Rally Bar",
                    "collabos-bar",
                    serial=serial,
                    serial_label_grade=True,
                    serial_source=SerialSource.SYNC_INTERFACE,
                    firmware="1.9.556",
                    firmware_source="sync-interface",
                    vendor_id=0x046D,
                    product_id=0x089B,
                ),
                _device(
                    "mdns",
                    Transport.MDNS,
                    ip,
                    "Rally Bar",
                    "collabos-bar",
                    serial=serial,
                    serial_label_grade=True,
                    serial_source=SerialSource.MDNS_TXT,
                    firmware="1.9.556",
                    firmware_source="mdns-txt",
                    attributes={"host": f"RallyBar-{i:06d}.local.", "addresses": [ip]},
                ),
                _device(
                    "snmp",
                    Transport.SNMP,
                    ip,
                    "Rally Bar",
                    "collabos-bar",
                    serial=serial,
                    serial_label_grade=True,
                    serial_source=SerialSource.SNMP_ENTITY,
                ),
            ]
        elif kind < 7:  # a bar on the LAN: mDNS with its serial, SNMP without one
            readings += [
                _device(
                    "mdns",
                    Transport.MDNS,
                    ip,
                    "Rally Bar Mini",
                    "collabos-bar",
                    serial=serial,
                    serial_label_grade=True,
                    serial_source=SerialSource.MDNS_TXT,
                    attributes={"host": f"RallyBarMini-{i:06d}.local.", "addresses": [ip]},
                ),
                _device("snmp", Transport.SNMP, ip, "Rally Bar Mini", "collabos-bar"),
            ]
        elif kind < 9:  # a room PC over SSH and over mDNS: joined by host name
            readings += [
                _device(
                    "ssh",
                    Transport.SSH,
                    ip,
                    "Room PC",
                    "room-pc",
                    serial=f"PF{i:08d}",
                    serial_label_grade=True,
                    serial_source=SerialSource.SSH_DMI,
                    firmware="F.20",
                    firmware_source="bios",
                    attributes={"hostname": f"ROOM-PC-{i:06d}"},
                ),
                _device(
                    "mdns",
                    Transport.MDNS,
                    f"10.200.{(i // 256) % 256}.{i % 256}",
                    "Room PC",
                    "room-pc",
                    attributes={"host": f"room-pc-{i:06d}.local."},
                ),
            ]
        else:  # a Tap on a PC's USB that also answers over mDNS: joined by serial
            readings += [
                _device(
                    "usb",
                    Transport.USB,
                    f"3-{i}",
                    "Tap",
                    "controller",
                    serial=f"T{serial}",
                    serial_label_grade=True,
                    serial_source=SerialSource.USB_DESCRIPTOR,
                    vendor_id=0x046D,
                    product_id=0x0876,
                ),
                _device(
                    "mdns",
                    Transport.MDNS,
                    ip,
                    "Tap",
                    "controller",
                    serial=f"T{serial}",
                    serial_label_grade=True,
                    serial_source=SerialSource.MDNS_TXT,
                    attributes={"host": f"Tap-{i:06d}.local."},
                ),
            ]
    return readings


def floor(readings: list[Device]) -> list[list[Device]]:
    """Copy every reading once and group by serial: the least a merge does (with the
    collector paused, as the merge runs)."""
    groups: dict[str, list[Device]] = {}
    with paused_gc():
        for reading in readings:
            copy = reading.clone()
            groups.setdefault(copy.serial or f"{copy.transport}:{copy.address}", []).append(copy)
    return list(groups.values())


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5, help="runs per figure; the best is shown")
    args = ap.parse_args()
    rules = MergeRules()
    print(f"merge: {args.units:,} units, best of {args.runs} runs (target < 1 s at 50,000 readings)")
    rows = []
    for part in (4, 2, 1):
        units = args.units // part
        readings = site(units)
        merged = merge_readings(readings, rules)
        seconds = best_of(args.runs, lambda r=readings: merge_readings(r, rules))  # type: ignore[misc]
        base = best_of(args.runs, lambda r=readings: floor(r))  # type: ignore[misc]
        rows.append((len(readings), len(merged), seconds, base))
        print(
            f"  {len(readings):>7,} readings -> {len(merged):>6,} units: {seconds * 1000:8.1f} ms "
            f"({seconds / len(readings) * 1e6:5.2f} µs/reading); floor (copy + group by serial) "
            f"{base * 1000:7.1f} ms; ratio {seconds / base:4.1f}x"
        )
    readings = site(args.units)
    started = time.perf_counter()
    first = diff_scan({}, readings, NOW, rules=rules)
    into_empty = time.perf_counter() - started
    again = site(args.units)
    started = time.perf_counter()
    steady = diff_scan(first.inventory, again, NOW, rules=rules)
    repeat = time.perf_counter() - started
    base = best_of(1, lambda r=readings: floor(r))  # type: ignore[misc]
    print(
        f"  the store's diff (what each daemon run does): {len(readings):,} readings into an empty "
        f"inventory {into_empty * 1000:.0f} ms ({len(first.events):,} events), the same scan again "
        f"{repeat * 1000:.0f} ms ({len(steady.events)} events); floor {base * 1000:.0f} ms"
    )
    # One daemon run of a small source: the agent's own USB (two bars) on a site whose other
    # units it sees over the LAN; leaving alone what the run cannot touch, and taking every
    # unit through the grouping.
    pc = [
        d
        for d in site(args.units)
        if d.transport is Transport.USB and d.serial in ("2300000000Z", "2300000001Z")
    ]
    lan = [d for d in site(args.units) if d.transport is not Transport.USB]
    inventory = diff_scan(diff_scan({}, lan, NOW, rules=rules).inventory, pc, NOW, rules=rules).inventory
    own_usb = {"usb"}
    lean = best_of(3, lambda: diff_scan(inventory, pc, NOW, scope=own_usb, rules=rules))
    everything = best_of(
        1, lambda: diff_scan(inventory, pc, NOW, scope=own_usb, rules=rules, incremental=False)
    )
    print(
        f"  a run of the agent's own USB ({len(pc)} readings) against {len(inventory):,} units seen "
        f"over the LAN: {lean * 1000:.0f} ms; taking every unit through the grouping "
        f"{everything * 1000:.0f} ms"
    )
    per = [s / n for n, _, s, _ in rows]
    print(
        f"  linearity: µs per reading at 1/4, 1/2, 1 of the size: "
        f"{', '.join(f'{p * 1e6:.2f}' for p in per)} (largest / smallest {max(per) / min(per):.2f})"
    )
    print(f"  median ratio to the floor: {statistics.median(s / b for _, _, s, b in rows):.1f}x")


if __name__ == "__main__":
    main()
