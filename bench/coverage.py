"""Benchmark: import a 50,000-row entitlements CSV and evaluate coverage for 50,000 units.

Targets: CSV import ≤ 1 s, coverage of 50,000 units ≤ 1 s. The records are generated from a
fixed seed and mix every layer kind (standard only, extensions valid and late, SELECT with and
without gaps and age caps, reseller contracts, replacements and chains of them, a few units with
no record). Prints the median of several runs; it is not a pass/fail test.

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
        import_s, import_runs = median_seconds(lambda: load_entitlements(path), args.runs)
        records = load_entitlements(path)
    evaluate_all(units, records, catalog, TODAY)  # warm up
    cover_s, cover_runs = median_seconds(lambda: evaluate_all(units, records, catalog, TODAY), args.runs)
    verdicts = evaluate_all(units, records, catalog, TODAY)
    sort_s, _ = median_seconds(lambda: sorted(verdicts, key=urgency_key), args.runs)

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
    print(
        f"  CSV import       median {import_s * 1000:7.1f} ms   min {min(import_runs) * 1000:7.1f}   "
        f"max {max(import_runs) * 1000:7.1f}   (target ≤ 1000 ms)"
    )
    print(
        f"  evaluate_all     median {cover_s * 1000:7.1f} ms   min {min(cover_runs) * 1000:7.1f}   "
        f"max {max(cover_runs) * 1000:7.1f}   (target ≤ 1000 ms)"
    )
    print(f"  urgency sort     median {sort_s * 1000:7.1f} ms")
    print("  statuses: " + ", ".join(f"{k} {n:,}" for k, n in sorted(statuses.items())))
    print("  layers:   " + ", ".join(f"{k} {n:,}" for k, n in sorted(layers.items())))


if __name__ == "__main__":
    main()
