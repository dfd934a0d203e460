"""Benchmark: import a 50,000-row entitlements CSV and evaluate coverage for 50,000 units.

Targets: CSV import ≤ 1 s, coverage of 50,000 units ≤ 1 s. The records are generated from a
fixed seed and mix every layer kind (standard only, extensions valid and late, SELECT with and
without gaps and age caps, reseller contracts, replacements and chains of them, a few units with
no record). Prints the median of several runs; it is not a pass/fail test.

Beside each figure, a floor measured on the same data in the same run, each of its runs right
after one of the figure's (a ratio holds on a shared, noisy machine where a bare time drifts):
CSV import against reading the same file and splitting it with ``csv.DictReader`` (no checks);
evaluate_all against looking each unit's serial up in the same records (a dict ``get`` per unit);
the urgency sort against sorting the same verdicts by one plain key (``covered_until``).

    .venv/bin/python bench/coverage.py [--units 50000] [--runs 5]
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.coverage import evaluate_all, urgency_key
from agent.entitlements import COLUMNS, load_entitlements

PRODUCTS = ["Rally Bar", "Rally Bar Mini", "Rally Camera", "MeetUp", "Tap", "Scribe", "Brio"]
COUNTRIES = ["NO", "GB", "US", "DE", "FR", "PL", "CH", "JP", "CA", ""]
TODAY = date(2025, 6, 1)


def serial_of(i: int) -> str:
    return f"{2100 + i % 500:04d}FD{i:06d}"


def generate_rows(n: int, seed: int = 20240601) -> list[dict[str, str]]:
    """``n`` rows with a deterministic mix of entitlements."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        bought = date(2018, 1, 1) + timedelta(days=rng.randrange(0, 365 * 7))
        row = dict.fromkeys(COLUMNS, "")
        row["serial"] = serial_of(i)
        row["purchase_date"] = bought.isoformat()
        row["country"] = rng.choice(COUNTRIES)
        row["customer"] = "consumer" if rng.random() < 0.05 else "business"
        kind = rng.random()
        if kind < 0.30:
            row["extension_years"] = str(rng.choice([1, 1, 2, 3]))
            late = rng.choice([0, 10, 30, 31, 45])
            row["extension_purchased"] = (bought + timedelta(days=late)).isoformat()
        elif kind < 0.55:
            order = bought + timedelta(days=rng.randrange(0, 900))
            row["select_contract"] = f"SEL-{i // 40:05d}"
            row["select_order_date"] = order.isoformat()
            if rng.random() < 0.7:
                row["select_activation_date"] = (order + timedelta(days=rng.randrange(0, 90))).isoformat()
            row["select_term_years"] = str(rng.choice([1, 3, 5]))
        elif kind < 0.70:
            row["reseller_contract"] = f"HEZO-{i:06d}"
            term_days = 365 * rng.choice([1, 2, 3, 4, 5]) - 1
            row["reseller_until"] = (bought + timedelta(days=term_days)).isoformat()
        elif kind < 0.80 and i > 10:
            row["purchase_date"] = "" if rng.random() < 0.5 else row["purchase_date"]
            row["replaced_serial"] = serial_of(rng.randrange(0, i)) if rng.random() < 0.9 else f"GONE{i}"
            row["replacement_date"] = (bought + timedelta(days=rng.randrange(100, 1500))).isoformat()
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), delimiter=";", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)


def median_seconds(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def paired(
    fn: Callable[[], object], floor: Callable[[], object], runs: int
) -> tuple[list[float], list[float], list[float]]:
    """``runs`` times ``fn`` then ``floor``: their seconds and the ratio of each pair."""
    times, floors, ratios = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        floor()
        t2 = time.perf_counter()
        times.append(t1 - t0)
        floors.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return times, floors, ratios


def read_rows(path: Path) -> int:
    """The CSV import's floor: the file read and split into rows, nothing checked."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return sum(1 for _ in csv.DictReader(fh, delimiter=";"))


def figure(name: str, times: list[float], floors: list[float], ratios: list[float], note: str = "") -> str:
    ms, fl = [t * 1000 for t in times], [t * 1000 for t in floors]
    return (
        f"  {name:<16} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   "
        f"max {max(ms):7.1f}{note}\n"
        f"    floor        median {statistics.median(fl):7.1f} ms   min {min(fl):7.1f}   max {max(fl):7.1f}"
        f"   ratio median {statistics.median(ratios):5.1f}x (min {min(ratios):.1f}, max {max(ratios):.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--units", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = generate_rows(args.units)
    catalog = load_catalog()
    rng = random.Random(7)
    # The inventory: 98 % of the units have a record, 2 % were found without one.
    units = [
        (row["serial"] if i % 50 else f"NOREC{i:06d}", rng.choice(PRODUCTS)) for i, row in enumerate(rows)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "entitlements.csv"
        write_csv(rows, path)
        size_mb = path.stat().st_size / 1e6
        load_entitlements(path)  # warm up
        read_rows(path)
        imports = paired(lambda: load_entitlements(path), lambda: read_rows(path), args.runs)
        records = load_entitlements(path)
    serials = [serial for serial, _ in units]

    def lookups() -> object:
        return [records.get(serial) for serial in serials]

    evaluate_all(units, records, catalog, TODAY)  # warm up
    covers = paired(lambda: evaluate_all(units, records, catalog, TODAY), lookups, args.runs)
    verdicts = evaluate_all(units, records, catalog, TODAY)
    sorts = paired(
        lambda: sorted(verdicts, key=urgency_key),
        lambda: sorted(verdicts, key=lambda v: v.covered_until or TODAY),
        args.runs,
    )

    statuses: dict[str, int] = {}
    layers: dict[str, int] = {}
    for v in verdicts:
        statuses[v.status] = statuses.get(v.status, 0) + 1
        for layer in v.layers:
            layers[layer.kind] = layers.get(layer.kind, 0) + 1
    print(
        f"coverage bench: {len(records):,} records ({size_mb:.1f} MB CSV, ';' + BOM + CRLF), "
        f"{len(units):,} units, median of {args.runs} runs"
    )
    print(figure("CSV import", *imports, "   (target ≤ 1000 ms)"))
    print(figure("evaluate_all", *covers, "   (target ≤ 1000 ms)"))
    print(figure("urgency sort", *sorts))
    print("  statuses: " + ", ".join(f"{k} {n:,}" for k, n in sorted(statuses.items())))
    print("  layers:   " + ", ".join(f"{k} {n:,}" for k, n in sorted(layers.items())))


if __name__ == "__main__":
    main()
