"""Benchmark: decode and parse the recorded GetDeviceInfo answer (target ≤ 200 µs per device).

Takes the BufferRead transfer that carries the answer in the recorded Rally Bar session
(``../shared/fixtures/usb-captures/logi-rally-bar-setup.json``, read in place) and runs what
the collector does with it for every bar: frame decode, UsbMsg decode, JSON → observations
(the bar, its Sight, Mic Pod and remote). Prints figures; it is not a pass/fail test. Exits
quietly when the shared fixtures are absent. Beside them, a floor measured on the same bytes
in the same run (a ratio holds on a shared, noisy machine where a bare time drifts):
``json.loads`` of the answer's JSON payload, batch for batch after the parse's.

    .venv/bin/python bench/sync_parse.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.collectors.sync import proto
from agent.collectors.sync.device_info import parse_device_info
from agent.collectors.sync.frames import Command, decode_frame
from agent.collectors.sync.replay import load_recording

FIXTURE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "fixtures"
    / "usb-captures"
    / "logi-rally-bar-setup.json"
)


def answer_transfer() -> bytes:
    """The recorded BufferRead carrying the GetDeviceInfo answer."""
    exchange = load_recording(FIXTURE).exchanges[-1]
    for op in exchange.ops:
        if op.kind == "read" and decode_frame(op.data).command is Command.BUFFER_READ:
            return op.data
    raise SystemExit("the recording holds no GetDeviceInfo answer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    args = ap.parse_args()
    if not FIXTURE.is_file():
        print(
            f"sync parse: skipped, {FIXTURE} is absent (the shared fixtures are expected in "
            f"../shared beside the repository)"
        )
        return
    data = answer_transfer()
    catalog = load_catalog()
    now = datetime.now(UTC)

    def once() -> None:
        message = proto.decode_usb_msg(decode_frame(data).payload)
        assert message.json_payload is not None
        parse_device_info(message.json_payload, address="2-1.1", now=now, catalog=catalog)

    payload = proto.decode_usb_msg(decode_frame(data).payload).json_payload
    assert payload is not None

    def floor() -> None:
        json.loads(payload)

    for _ in range(200):  # warm up imports and caches
        once()
        floor()
    batches, per_batch = 20, max(1, args.runs // 20)
    per_device_us, floor_us, ratios = [], [], []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            once()
        t1 = time.perf_counter()
        for _ in range(per_batch):
            floor()
        t2 = time.perf_counter()
        per_device_us.append((t1 - t0) / per_batch * 1e6)
        floor_us.append((t2 - t1) / per_batch * 1e6)
        ratios.append((t1 - t0) / (t2 - t1))
    total = batches * per_batch
    print(f"sync parse: {len(data)}-byte GetDeviceInfo transfer -> bar + 3 children, {total} runs")
    print(
        f"  parse               median {statistics.median(per_device_us):6.1f} µs/device   "
        f"min {min(per_device_us):6.1f}   max {max(per_device_us):6.1f}   (target ≤ 200 µs)"
    )
    print(
        f"  floor: json.loads   median {statistics.median(floor_us):6.1f} µs/device   "
        f"min {min(floor_us):6.1f}   max {max(floor_us):6.1f}   (its {len(payload)}-char JSON payload)"
    )
    print(
        f"  ratio parse / floor median {statistics.median(ratios):6.1f} x           "
        f"min {min(ratios):6.1f}   max {max(ratios):6.1f}   (per batch of {per_batch})"
    )


if __name__ == "__main__":
    main()
