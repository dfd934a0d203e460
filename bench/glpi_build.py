"""Benchmark: GLPI document build time for a 5,000-unit inventory (issue [14/16], Done-when:
"bench/ reports GLPI document build time for 5,000 units"), beside its floor.

The inventory: ``--units`` units on the LAN of ``--rooms`` rooms — per room a CollabOS Rally
Bar or Rally Bar Mini (over its management API, with a Sight and two mic pods read through it,
each with firmware, the pods with serials), a Tap IP (mDNS, with a second address), a room PC
(SSH, BIOS firmware) and an SNMP Rally Bar — plus this host's own USB units (a Rally Bar with
its peripherals, a Scribe, a webcam), label-grade serials, firmware and components, a few
health warnings. Coverage verdicts come from a generated entitlements CSV of the same serials
(``--no-coverage`` leaves them out), worked out once before the timing (what the snapshot
already does: ``agent.uploader.snapshot.verdicts_for``).

Timed: :func:`agent.uploader.glpi.glpi_documents` — every document's JSON object, its bytes
(compact JSON, keys sorted) and its SHA-256 digest. The floor, on the same units in the same
run, right after each run of the figure (a ratio holds on a shared, noisy machine where a bare
time drifts): ``json.dumps`` of the same units' ``Device.to_dict()`` (built in the timing too),
compact, encoded to UTF-8 — roomsync's own JSON form of the same inventory.

Prints median/min/max over the runs and the ratio; it is not a pass/fail test.

    .venv/bin/python bench/glpi_build.py [--units 5000] [--rooms 1250] [--runs 7] [--no-coverage]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import Catalog, load_catalog
from agent.entitlements import load_entitlements
from agent.model import Device, HealthIssue, Room, SerialSource, Severity, Transport
from agent.uploader.glpi import GlpiHost, glpi_documents
from agent.uploader.snapshot import SnapshotContext, verdicts_for
from bench.coverage import generate_rows, serial_of, write_csv

T0 = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
TODAY = date(2025, 6, 2)
#: One room's LAN units: (product, transport, source, firmware source).
ROOM_UNITS = [
    ("Rally Bar", Transport.HTTPS, "collabos", "collabos-api"),
    ("Tap IP", Transport.MDNS, "mdns", "mdns-txt"),
    ("Room PC", Transport.SSH, "ssh", "bios"),
    ("Rally Bar", Transport.SNMP, "snmp", "snmp-entity-firmware"),
]


class Serials:
    """Serials in the generated entitlements' form, each once."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> str:
        self.next += 1
        return serial_of(self.next - 1)


def _unit(catalog: Catalog, product: str, transport: Transport, address: str, **facts: Any) -> Device:
    entry = catalog.product(product)
    return Device(
        product=product,
        category=entry.family,
        model=facts.pop("model", entry.model),
        transport=transport,
        address=address,
        first_seen=T0 - timedelta(days=400),
        last_seen=T0,
        vendor=facts.pop("vendor", "Logitech"),
        **facts,
    )


def _peripherals(catalog: Catalog, bar_address: str, serial: Serials, rng: random.Random) -> list[Device]:
    sight = _unit(
        catalog, "Sight", Transport.HTTPS, f"{bar_address}/sight/1", firmware=f"0.{rng.randrange(3, 9)}.0"
    )
    pods = [
        _unit(
            catalog,
            "Rally Mic Pod",
            Transport.HTTPS,
            f"{bar_address}/usb/{i}",
            serial=serial(),
            serial_label_grade=True,
            firmware=f"2.1.{rng.randrange(0, 9)}",
            components={"audio": f"2.1.{rng.randrange(0, 9)}"},
            vendor_id=0x046D,
            product_id=0x0891,
        )
        for i in (1, 2)
    ]
    return [sight, *pods]


def make_inventory(
    catalog: Catalog, units: int, rooms: int, seed: int = 14
) -> tuple[list[Device], list[Room]]:
    """``units`` LAN units in ``rooms`` rooms, then this host's three USB units."""
    rng = random.Random(seed)
    serial = Serials()
    places = [Room(id=f"site-{r // 40 + 1}-{r % 40 + 1:02d}", name=f"Room {r + 1}") for r in range(rooms)]
    out: list[Device] = []
    for i in range(units):
        room = places[i % rooms]
        product, transport, source, firmware_source = ROOM_UNITS[(i // rooms) % len(ROOM_UNITS)]
        if product == "Rally Bar" and transport is Transport.HTTPS and i % 3 == 0:
            product = "Rally Bar Mini"
        host = i % rooms
        ip = f"10.{host // 250}.{host % 250}.{10 + (i // rooms) % 40}"
        issues = []
        if rng.random() < 0.03:
            issues.append(
                HealthIssue("peripheral-missing", "1 of 2 expected mic pods missing", Severity.WARNING)
            )
        facts: dict[str, Any] = {
            "serial": serial(),
            "serial_label_grade": True,
            "serial_source": SerialSource.COLLABOS_API,
            "firmware": f"1.{rng.randrange(8, 14)}.{rng.randrange(0, 400)}",
            "firmware_source": firmware_source,
            "room": room.id,
            "sources": [source],
            "health_issues": issues,
            "state": rng.choice(["online", "in-use", "idle"]),
        }
        if transport is Transport.HTTPS:
            facts["components"] = {"hardware": "3"}
            facts["attributes"] = {
                "host": f"RallyBar-{i:06X}",
                "device_name": f"{room.name} bar",
                "mac_addresses": [f"6c:c3:b2:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"],
            }
            facts["children"] = _peripherals(catalog, ip, serial, rng)
        elif transport is Transport.MDNS:
            facts["attributes"] = {"host": f"TapIP-{i:06X}.local", "addresses": [ip, f"2001:db8::{i:x}"]}
            ip = f"{ip}:443"
        elif transport is Transport.SSH:
            facts.update(model="NUC11TNHi5", vendor="Intel(R) Client Systems")
            facts["firmware"] = f"TNTGL357.0064.2022.{i % 1000:04d}"
            facts["attributes"] = {"hostname": f"room-pc-{i}", "os": "Debian GNU/Linux 12 (bookworm)"}
        else:
            facts["components"] = {"hardware": "2", "firmware": facts["firmware"]}
            facts["attributes"] = {"sys_name": f"RallyBar-S{i:05X}", "description": "Logitech Rally Bar"}
        out.append(_unit(catalog, product, transport, ip, **facts))
    bar = _unit(
        catalog,
        "Rally Bar",
        Transport.USB,
        "2-1.1",
        serial=serial(),
        serial_label_grade=True,
        firmware="1.9.556",
        components={"av": "1.0.763", "zfv": "1.0.79"},
        vendor_id=0x046D,
        product_id=0x089B,
        children=_peripherals(catalog, "2-1.1", serial, rng),
    )
    scribe = _unit(
        catalog,
        "Scribe",
        Transport.USB,
        "1-4",
        serial=serial(),
        serial_label_grade=True,
        firmware="1.08",
        vendor_id=0x046D,
        product_id=0x08E2,
    )
    brio = _unit(
        catalog,
        "Brio",
        Transport.USB,
        "1-6",
        serial="9C7A2B10",
        firmware="3.17",
        vendor_id=0x046D,
        product_id=0x085E,
    )
    return [*out, bar, scribe, brio], places


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def line(name: str, values: list[float], note: str = "") -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<34} median {statistics.median(ms):8.1f} ms   min {min(ms):8.1f}   max {max(ms):8.1f}{note}"
    )


def floor(devices: list[Device]) -> bytes:
    """``json.dumps`` of the same units' ``to_dict()``, compact, as UTF-8."""
    return json.dumps([d.to_dict() for d in devices], separators=(",", ":"), ensure_ascii=False).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--units", type=int, default=5000, help="LAN units (this host's 3 USB units come on top)")
    ap.add_argument("--rooms", type=int, default=1250)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument(
        "--no-coverage", action="store_true", help="no entitlements: no coverage in the documents"
    )
    args = ap.parse_args()
    catalog = load_catalog()
    devices, rooms = make_inventory(catalog, args.units, args.rooms)
    verdicts = None
    if not args.no_coverage:
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "entitlements.csv"
            write_csv(generate_rows(len(devices) * 3), csv_path)
            records = load_entitlements(csv_path)
        context = SnapshotContext(catalog, tuple(rooms), records, today=TODAY)
        verdicts = verdicts_for(devices, context, TODAY)
    host = GlpiHost("bench-host", os_name="Debian GNU/Linux", os_version="12")

    def build() -> list[Any]:
        return glpi_documents(devices, rooms, verdicts, agent_id="bench-agent", host=host, version="bench")

    builds, floors, ratios = [], [], []
    docs: list[Any] = []
    floor_bytes = b""
    for run in range(args.runs + 1):  # the first run warms up
        build_s, built = timed(build)
        floor_s, dumped = timed(lambda: floor(devices))
        if run:
            builds.append(build_s)
            floors.append(floor_s)
            ratios.append(build_s / floor_s)
        assert isinstance(built, list) and isinstance(dumped, bytes)
        docs, floor_bytes = built, dumped
    units = len(devices)
    children = sum(len(d.children) for d in devices)
    body = sum(len(d.body) for d in docs)
    described = sum(1 for d in docs for text in [json.dumps(d.data)] if "coverage " in text)
    assert len(docs) == units - 3 + 1, f"{len(docs)} documents for {units} units"
    per_unit = statistics.median(builds) / units * 1e6
    print(
        f"GLPI document build bench: {units:,} units ({args.units:,} on the LAN, 3 on this host's USB; "
        f"{children:,} peripherals read through them), {args.runs} runs after a warm-up"
    )
    print(
        f"  {len(docs):,} documents ({len(docs) - 1:,} NetworkEquipment + 1 Computer), {body / 1e6:.2f} MB "
        f"of JSON; {described:,} with coverage text"
        + (" (coverage not evaluated)" if verdicts is None else f" ({len(verdicts):,} verdicts)")
    )
    print(line("glpi_documents (dicts+bytes+digests)", builds, f"   ({per_unit:.0f} µs a unit)"))
    print(line("floor: json.dumps of to_dict()", floors, f"   ({len(floor_bytes) / 1e6:.2f} MB)"))
    print(
        f"  {'ratio build / floor':<34} median {statistics.median(ratios):8.2f} x    min {min(ratios):8.2f}"
        f"   max {max(ratios):8.2f}   (per run)"
    )


if __name__ == "__main__":
    main()
