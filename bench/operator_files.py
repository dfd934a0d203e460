"""Benchmark: what the operator's files cost at their size caps (issue [13/16]): a 50 MB
entitlements CSV and a 10 MB room map. Prints figures; it is not a pass/fail test.

Targets: a 50 MB entitlements file loads in a few seconds within 300 MiB peak RSS (the whole
process: interpreter, imports, the load); a 10 MB room map costs a few seconds a command, and
placing units by it does not grow with its number of ranges.

The files are generated at run time in a temporary directory, from a fixed seed:

* **entitlements, narrow** (the issue's file): 1,850,000 rows of ``serial,purchase_date,
  country,customer`` (distinct 12-character serials; dates, countries and the customer kind
  repeating), about 50 MB;
* **entitlements, wide**: every column, rows as bench/coverage.py mixes them (extensions,
  SELECT contracts shared by 40 units, reseller contracts of a few partners, replacements),
  written up to the same 50 MB;
* **room map**: 10 MB of ``serial`` (60 %), ``host`` (20 %), ``address`` and ``cidr`` rules
  (10 % each) for rooms of about 7 rules each, the room's details on its first row.

Each load runs in a fresh process (``--child``), its peak RSS read from ``/proc/self/status``
(``VmHWM``: the peak of that process alone; ``ru_maxrss`` would start at the peak of the process
that started it, this bench). Beside each figure, a floor measured on the same file in the same
run, each of its runs right after one of the figure's (a ratio holds on a shared, noisy machine
where a bare time drifts): for a load's time, ``csv.reader`` reading the same file in a fresh
process (split into cells, nothing checked); for its peak RSS, a fresh process that only imports
the same modules (and the file's size, to read the rest against); for placing units by the room
map, the same units placed by a map of one rule of each kind.

Coverage of each entitlements file, its records as units no scan found (what the daemon's API
thread does for the ``roomsync_coverage_units`` metric and the whole ``/v1/coverage``): counting
them by status, against the bare walk of the records; listing every verdict as JSON, against
encoding one verdict's JSON as many times; the peak RSS after the load and after both.

With ``--cli``, also ``roomsync coverage --summary`` (``agent.cli.main`` in a fresh process)
given each 50 MB file (each of its units gets a verdict: the evaluation's own cost comes on
top of the load) and given the room map, against the same command given a one-row file.

    .venv/bin/python bench/operator_files.py [--rows 1850000] [--room-map-mb 10] [--runs 3] [--cli]
    .venv/bin/python bench/operator_files.py --src /path/to/another/checkout   # before/after
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Most of the 2 x 50 MB and 10 MB: what the caps allow (agent.entitlements, agent.roommap).
ENTITLEMENTS_BYTES = 50 * 1024 * 1024 - 64 * 1024
COUNTRIES = ["NO", "GB", "US", "DE", "FR", "PL", "CH", "JP", "CA", "SE", "NL", "DK"]
PARTNERS = ["HEZO", "AVEC", "NORDAV", "CONFTEK", "MEETCO"]
#: Units placed by the room map in its timing: addresses it holds no rule for, the worst case.
UNITS = 1000

#: The RSS floors: fresh processes that import what the load of each file imports.
IMPORTS = {
    "import-entitlements": ("agent.entitlements",),
    "import-room-map": ("agent.model", "agent.roommap", "datetime"),
}


def serial_of(i: int) -> str:
    return f"{2100 + i % 500:04d}FD{i:06X}"  # 12 characters up to 16.7 M rows


def write_narrow(path: Path, rows: int, seed: int = 20261202) -> None:
    """The issue's file: ``rows`` rows of serial, purchase date, country, customer kind."""
    rng = random.Random(seed)
    first = date(2018, 1, 1).toordinal()
    days = [date.fromordinal(first + d).isoformat() for d in range(7 * 365)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("serial,purchase_date,country,customer\n")
        lines = []
        for i in range(rows):
            customer = "consumer" if rng.random() < 0.03 else ""
            lines.append(f"{serial_of(i)},{rng.choice(days)},{rng.choice(COUNTRIES)},{customer}\n")
            if len(lines) == 10_000:
                fh.writelines(lines)
                lines.clear()
        fh.writelines(lines)


def write_wide(path: Path, size: int, seed: int = 20240601) -> int:
    """Every column, up to ``size`` bytes; the number of rows written."""
    from agent.entitlements import COLUMNS

    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        written, i = fh.tell(), 0
        while True:
            bought = date(2018, 1, 1) + timedelta(days=rng.randrange(0, 365 * 7))
            row = dict.fromkeys(COLUMNS, "")
            row.update(serial=serial_of(i), purchase_date=bought.isoformat(), country=rng.choice(COUNTRIES))
            row["customer"] = "consumer" if rng.random() < 0.05 else "business"
            kind = rng.random()
            if kind < 0.30:
                row["extension_years"] = str(rng.choice([1, 1, 2, 3]))
                row["extension_purchased"] = (
                    bought + timedelta(days=rng.choice([0, 10, 30, 45]))
                ).isoformat()
            elif kind < 0.55:
                order = bought + timedelta(days=rng.randrange(0, 900))
                row["select_contract"] = f"SEL-{i // 40:06d}"
                row["select_order_date"] = order.isoformat()
                row["select_activation_date"] = (order + timedelta(days=rng.randrange(0, 90))).isoformat()
                row["select_term_years"] = str(rng.choice([1, 3, 5]))
            elif kind < 0.70:
                row["reseller_contract"] = f"{rng.choice(PARTNERS)}-{i // 25:06d}"
                row["reseller_until"] = (bought + timedelta(days=365 * rng.choice([1, 3, 5]) - 1)).isoformat()
            elif kind < 0.80 and i > 10:
                row["replaced_serial"] = serial_of(rng.randrange(0, i))
                row["replacement_date"] = (bought + timedelta(days=rng.randrange(100, 1500))).isoformat()
            line = ",".join(row[c] for c in COLUMNS) + "\n"
            if written + len(line) > size:
                return i
            fh.write(line)
            written += len(line)
            i += 1


def write_room_map(path: Path, size: int) -> int:
    """Rules of every kind up to ``size`` bytes; the number of rows written."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("match,value,room,room_name,group,location,seat_count\n")
        written, i = fh.tell(), 0
        while True:
            number = i // 7  # the room's: 7 rules a room, its details on the first
            room = f"site{number % 40:02d}-r{number:06d}"
            details = (
                f"Room {number},Floor {number // 100},Site {number % 40},{4 + i % 9}" if i % 7 == 0 else ",,,"
            )
            kind = i % 10
            if kind < 6:
                rule = f"serial,{3100 + i % 400:04d}RB{i:07d}"
            elif kind < 8:
                rule = f"host,pc-{i:07d}.site{i % 40:02d}.example.com"
            elif kind < 9:
                rule = f"address,10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            else:
                n = i // 10
                rule = f"cidr,172.{16 + (n >> 12) % 16}.{(n >> 4) & 255}.{(n & 15) * 16}/28"
            line = f"{rule},{room},{details}\n"
            if written + len(line) > size:
                return i
            fh.write(line)
            written += len(line)
            i += 1


# --------------------------------------------------------------------------- fresh processes


def peak_kib() -> int:
    """This process's peak RSS (VmHWM), in KiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def child(kind: str, args: list[str]) -> None:
    """One measurement in this fresh process; prints its figures as JSON."""
    started = time.perf_counter()
    out: dict[str, float] = {}
    path = Path(args[0])
    if kind == "csv-reader":
        with open(path, newline="", encoding="utf-8") as fh:
            out["rows"] = sum(1 for _ in csv.reader(fh)) - 1
    elif kind in IMPORTS:
        for module in IMPORTS[kind]:
            importlib.import_module(module)
    elif kind == "entitlements":
        from agent.entitlements import load_entitlements

        started = time.perf_counter()
        out["rows"] = len(load_entitlements(path))
    elif kind == "coverage":
        out.update(coverage_figures(path))
    elif kind == "room-map":
        out.update(place_units(path))
    elif kind == "cli":
        from agent.cli import main

        with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
            out["status"] = main(args)
    else:
        raise SystemExit(f"unknown child {kind!r}")
    out.setdefault("seconds", time.perf_counter() - started)
    out["rss_kib"] = peak_kib()
    print(json.dumps(out))


def coverage_figures(path: Path) -> dict[str, float]:
    """Load the entitlements, then what the daemon's API thread does with them (as units no
    scan found, on one day): count them by status (the ``roomsync_coverage_units`` metric,
    ``coverage --summary``), then list every verdict as JSON, as the whole ``/v1/coverage``
    streams them. Floors, on the same records in this process: the bare walk of the records
    (``shapes()``, no verdict) for the counts; one verdict's JSON encoded once per record (the
    encoding alone) for the listing. Peak RSS after the load, and after the rest."""
    from datetime import date

    from agent.catalog import load_catalog
    from agent.coverage import RowVerdicts
    from agent.entitlements import load_entitlements

    records = load_entitlements(path)
    loaded_kib = peak_kib()
    book = RowVerdicts(records, load_catalog(), date(2026, 12, 2))
    t0 = time.perf_counter()
    walked = sum(1 for _ in records.shapes())
    t1 = time.perf_counter()
    counts = book.counts()
    t2 = time.perf_counter()
    listed = sum(map(len, book.texts()))
    t3 = time.perf_counter()
    one = next(book.verdicts()).to_dict()
    encoded = sum(len(json.dumps(one, ensure_ascii=False).encode()) for _ in range(walked))  # dumps alone
    t4 = time.perf_counter()
    return {
        "rows": walked,
        "counted": sum(counts.values()),
        "counts_seconds": t2 - t1,
        "walk_seconds": t1 - t0,
        "list_seconds": t3 - t2,
        "list_mb": listed / 1e6,
        "encode_seconds": t4 - t3,
        "encoded_mb": encoded / 1e6,
        "loaded_rss_kib": loaded_kib,
    }


def coverage_report(src: Path, name: str, path: Path, runs: int) -> str:
    figures = [run_child(src, "coverage", path) for _ in range(runs)]
    rows = int(figures[0]["rows"])
    assert all(f["counted"] == f["rows"] for f in figures)
    loaded = statistics.median(f["loaded_rss_kib"] for f in figures) / 1024
    peak = statistics.median(f["rss_kib"] for f in figures) / 1024
    return "\n".join(
        [
            f"coverage of {name} ({rows:,} records as units no scan found), each run in a fresh process",
            seconds_line(
                "count by status",
                [f["counts_seconds"] for f in figures],
                [f["walk_seconds"] for f in figures],
                "bare walk",
                "   (the metric, coverage --summary; target: a few seconds)",
            ),
            seconds_line(
                "list as JSON",
                [f["list_seconds"] for f in figures],
                [f["encode_seconds"] for f in figures],
                "encoding",
                f"   ({statistics.median(f['list_mb'] for f in figures):.0f} MB: the whole /v1/coverage)",
            ),
            f"  {'peak RSS':<22} median {peak:8.1f} MiB   (after the load alone: {loaded:.1f} MiB; "
            "target <= 300 MiB)",
        ]
    )


def place_units(path: Path) -> dict[str, float]:
    """Load the room map, then place :data:`UNITS` units by it (addresses it has no rule for:
    each is looked for by every kind of rule); the floor: the same units placed by a map of
    one rule of each kind (a ratio near 1: the cost does not grow with the map)."""
    from datetime import UTC, datetime

    from agent.model import Device, Transport
    from agent.roommap import RoomMap, load_room_map, place, rule

    started = time.perf_counter()
    room_map = load_room_map(path)
    loaded = time.perf_counter()
    small = RoomMap([rule(r.match, r.value, r.room) for r in {r.match: r for r in room_map.rules}.values()])
    now = datetime.now(UTC)
    units = [
        Device(
            product="Rally Bar",
            transport=Transport.SNMP,
            address=f"192.168.{i // 250}.{1 + i % 250}:161",
            first_seen=now,
            last_seen=now,
        )
        for i in range(UNITS)
    ]
    placing = time.perf_counter()
    placed = sum(place(unit, room_map) is not None for unit in units)
    placed_at = time.perf_counter()
    floor = sum(place(unit, small) is not None for unit in units)
    floor_end = time.perf_counter()
    return {
        "seconds": loaded - started,
        "rows": len(room_map.rules),
        "rooms": len(room_map.rooms),
        "place_seconds": placed_at - placing,
        "place_floor_seconds": floor_end - placed_at,
        "placed": placed + floor,
    }


def run_child(src: Path, kind: str, *args: object) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--src", str(src), "--child", kind, *map(str, args)]
    out = subprocess.run(cmd, cwd=src, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {kind} child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def run_cli(src: Path, args: list[str]) -> tuple[float, float]:
    """``roomsync ARGS`` in a fresh process (a child running ``agent.cli.main``): wall seconds
    from start to exit, and its peak RSS in MiB."""
    started = time.perf_counter()
    figures = run_child(src, "cli", *args)
    seconds = time.perf_counter() - started
    if figures["status"] != 0:
        raise SystemExit(f"roomsync {' '.join(args)} exited with {figures['status']}")
    return seconds, figures["rss_kib"] / 1024


# --------------------------------------------------------------------------- the report


def paired(
    src: Path, kind: str, floor: str, path: Path, runs: int
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """``runs`` times the load ``kind`` then its floor, each in a fresh process."""
    return [(run_child(src, kind, path), run_child(src, floor, path)) for _ in range(runs)]


def seconds_line(name: str, times: list[float], floors: list[float], floor_name: str, note: str = "") -> str:
    ms, fl = [t * 1000 for t in times], [t * 1000 for t in floors]
    ratios = [t / f for t, f in zip(times, floors, strict=True)]
    return (
        f"  {name:<22} median {statistics.median(ms):8.1f} ms   min {min(ms):8.1f}   "
        f"max {max(ms):8.1f}{note}\n"
        f"    floor: {floor_name:<14} median {statistics.median(fl):8.1f} ms   min {min(fl):8.1f}   "
        f"max {max(fl):8.1f}   ratio median {statistics.median(ratios):5.1f}x "
        f"(min {min(ratios):.1f}, max {max(ratios):.1f})"
    )


def rss_line(peaks_kib: list[float], bare_kib: list[float], size: int, note: str = "") -> str:
    peak, bare = statistics.median(peaks_kib) / 1024, statistics.median(bare_kib) / 1024
    return (
        f"  {'peak RSS':<22} median {peak:8.1f} MiB{note}\n"
        f"    floor: bare imports  median {bare:8.1f} MiB   ratio {peak / bare:5.1f}x; above it "
        f"{peak - bare:.1f} MiB = {(peak - bare) * 1024 * 1024 / size:.2f}x the file's {size / 1e6:.1f} MB"
    )


def load_report(src: Path, name: str, path: Path, kind: str, runs: int) -> str:
    loads = paired(src, kind, "csv-reader", path, runs)
    bare = [run_child(src, f"import-{kind}", path)["rss_kib"] for _ in range(runs)]
    rows = int(loads[0][0]["rows"])
    size = path.stat().st_size
    return "\n".join(
        [
            f"{name}: {rows:,} rows, {size / 1e6:.1f} MB",
            seconds_line(
                "load",
                [load["seconds"] for load, _ in loads],
                [floor["seconds"] for _, floor in loads],
                "csv.reader",
                "   (target: a few seconds)",
            ),
            rss_line(
                [load["rss_kib"] for load, _ in loads],
                bare,
                size,
                "   (target <= 300 MiB)" if kind == "entitlements" else "",
            ),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_850_000, help="rows of the narrow entitlements file")
    ap.add_argument("--room-map-mb", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time roomsync coverage --summary")
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose agent to measure")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    src = args.src.resolve()
    sys.path.insert(0, str(src))
    if args.child:
        child(args.child[0], args.child[1:])
        return
    with tempfile.TemporaryDirectory(prefix="operator-files-") as tmp:
        root = Path(tmp)
        narrow, wide, rooms = root / "entitlements.csv", root / "entitlements-wide.csv", root / "rooms.csv"
        write_narrow(narrow, args.rows)
        write_wide(wide, min(ENTITLEMENTS_BYTES, narrow.stat().st_size))
        write_room_map(rooms, int(args.room_map_mb * 1024 * 1024) - 4096)
        print(f"operator files bench ({src}): median of {args.runs} runs, each in a fresh process")
        print(load_report(src, "entitlements, narrow", narrow, "entitlements", args.runs))
        print(load_report(src, "entitlements, wide", wide, "entitlements", args.runs))
        print(coverage_report(src, "entitlements, narrow", narrow, args.runs))
        print(coverage_report(src, "entitlements, wide", wide, args.runs))
        print(load_report(src, "room map", rooms, "room-map", args.runs))
        placing = [run_child(src, "room-map", rooms) for _ in range(args.runs)]
        print(
            seconds_line(
                f"place {UNITS:,} units",
                [p["place_seconds"] for p in placing],
                [p["place_floor_seconds"] for p in placing],
                "a 4-rule map",
                "   (target: not growing with the map's ranges)",
            )
        )
        if args.cli:
            print(cli_report(src, root, narrow, wide, rooms, args.runs))


def cli_report(src: Path, root: Path, entitlements: Path, wide: Path, rooms: Path, runs: int) -> str:
    """``roomsync coverage --summary``: given the 50 MB file; given the room map (and a
    one-row file); each against the command given only the one-row file."""
    small = root / "one-row.csv"
    small.write_text("serial,purchase_date\nA1,2024-01-01\n", encoding="utf-8")
    configs = {}
    for name, room_map in (("plain", None), ("rooms", rooms)):
        config = root / f"{name}.toml"
        lines = [f'state_dir = "{root / "state"}"']
        if room_map is not None:
            lines.append(f'room_map = "{room_map}"')
        config.write_text("\n".join(lines) + '\n[room]\nid = "oslo-4-12"\n', encoding="utf-8")
        configs[name] = config

    def command(config: Path, ents: Path) -> list[str]:
        return [
            "coverage",
            "--config",
            str(config),
            "--entitlements",
            str(ents),
            "--summary",
            "--today",
            "2026-06-01",
        ]

    out = ["roomsync coverage --summary, each in a fresh process"]
    for name, config, ents in (
        ("given the entitlements", configs["plain"], entitlements),
        ("given the wide ones", configs["plain"], wide),
        ("given the room map", configs["rooms"], small),
    ):
        pairs = [
            (run_cli(src, command(config, ents)), run_cli(src, command(configs["plain"], small)))
            for _ in range(runs)
        ]
        out.append(seconds_line(name, [p[0][0] for p in pairs], [p[1][0] for p in pairs], "one-row file"))
        peak, bare = statistics.median(p[0][1] for p in pairs), statistics.median(p[1][1] for p in pairs)
        out.append(
            f"  {'peak RSS':<22} median {peak:8.1f} MiB\n    floor: one-row file  median {bare:8.1f} MiB"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
