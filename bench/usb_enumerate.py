"""Benchmark: enumerate a fake sysfs tree of 200 USB devices (target ≤ 20 ms).

Times the whole USB source pass that `roomsync scan --usb --no-libusb` runs: reading every
device entry, grouping functions into units and building observations. Prints figures; it is
not a pass/fail test. Beside them, a floor measured on the same tree in the same run (a ratio
holds on a shared, noisy machine where a bare time drifts): a bare ``os.scandir`` walk of
``bus/usb/devices`` that reads every attribute file of every device entry (interface entries
skipped), each run right after an enumeration.

    .venv/bin/python bench/usb_enumerate.py [--devices 200] [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from tests.sysfs import add_device

# A mix like a floor of rooms: bars with their functions, cameras, taps, other devices.
MIX = [
    (0x046D, 0x089B),
    (0x046D, 0x08A4),
    (0x046D, 0x089A),
    (0x046D, 0x0898),
    (0x046D, 0x085E),
    (0x046D, 0x0866),
    (0x046D, 0x0876),
    (0x046D, 0x0872),
    (0x0BDA, 0x8153),
    (0x1D6B, 0x0002),
]


def build(root: Path, n: int) -> None:
    for i in range(n):
        vid, pid = MIX[i % len(MIX)]
        bus, port, sub = 1 + i // 100, 1 + (i // 10) % 10, 1 + i % 10
        add_device(
            root,
            f"{bus}-{port}.{sub}",
            vid,
            pid,
            bcd=0x0100 + i % 50,
            serial=f"{2300 + i:04d}FD1N{i:04X}",
            product=f"Device {i}",
            manufacturer="Logitech" if vid == 0x046D else "Other",
            devnum=i % 127 + 1,
        )


def floor_walk(root: Path) -> int:
    """The floor: every device entry's attribute files read with a bare ``os.scandir`` walk;
    returns how many bytes were read."""
    read = 0
    with os.scandir(root / "bus" / "usb" / "devices") as entries:
        for entry in entries:
            if ":" in entry.name:  # an interface, not a device
                continue
            with os.scandir(entry.path) as attributes:
                for attribute in attributes:
                    if attribute.is_file():
                        with open(attribute.path, "rb") as f:
                            read += len(f.read())
    return read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    catalog = load_catalog()
    ctx = ScanContext(catalog, datetime.now(UTC))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.devices)
        source = UsbSource(root, libusb_strings=False, all_usb=True)
        found = source.scan(ctx)  # warm the page cache and imports
        floor_walk(root)
        times, floors, ratios = [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            result = source.scan(ctx)
            t1 = time.perf_counter()
            floor_walk(root)
            t2 = time.perf_counter()
            times.append((t1 - t0) * 1000)
            floors.append((t2 - t1) * 1000)
            ratios.append((t1 - t0) / (t2 - t1))
    print(f"usb enumerate: {args.devices} sysfs devices -> {len(found.observations)} units, {args.runs} runs")
    print(
        f"  enumerate               median {statistics.median(times):6.2f} ms   min {min(times):6.2f}   "
        f"max {max(times):6.2f}   (target <= 20 ms)"
    )
    print(
        f"  floor: scandir + reads  median {statistics.median(floors):6.2f} ms   min {min(floors):6.2f}   "
        f"max {max(floors):6.2f}   (the same attribute files)"
    )
    print(
        f"  ratio enumerate / floor median {statistics.median(ratios):6.2f} x    min {min(ratios):6.2f}   "
        f"max {max(ratios):6.2f}   (per run)"
    )
    assert len(result.observations) == len(found.observations)


if __name__ == "__main__":
    main()
