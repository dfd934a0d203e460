"""The whole live USB path through the real libusb: ``roomsync scan --usb --json`` under
``umockdev-run``, with a fake Rally Bar built from the recording's descriptors whose Sync
interface answers from the recorded bulk transfers (renumbered to the sequence ids a fresh
agent session uses). sysfs, catalog, grouping, PyUsbTransport, the client, the read-only
gate and the parser all run as they do on a room PC."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sync_captures import BAR_SERIAL, SIGHT_SERIAL, Capture, fake_bar, recorded_bulk
from tests.usbfake import FakeUsbDevice, UsbmonCapture, run_under_umockdev

pytestmark = [
    pytest.mark.umockdev,
]


def scan(
    tmp_path: Path, device: FakeUsbDevice, capture: UsbmonCapture, *extra: str
) -> tuple[int, dict[str, Any]]:
    config = tmp_path / "agent.toml"
    config.write_text('[room]\nid = "lon-2-07"\n[sources.usb]\nsync_deadline = 3.0\n')
    proc = run_under_umockdev(
        tmp_path,
        device,
        capture,
        sys.executable,
        "-m",
        "agent",
        "scan",
        "--usb",
        "--json",
        "--config",
        str(config),
        *extra,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def bar_device() -> tuple[FakeUsbDevice, Any]:
    recording = Capture().recording()
    # The kernel exports the strings it read: no string descriptor requests are needed.
    device = dataclasses.replace(fake_bar(recording), sysfs_strings=("product", "serial"))
    return device, recording


def test_live_scan_reads_the_bar_over_its_sync_interface(tmp_path: Path) -> None:
    device, recording = bar_device()
    code, report = scan(tmp_path, device, recorded_bulk(recording, 0x02, 0x84, seq_offset=-10))
    assert code == 0, report["errors"]
    [bar] = report["devices"]
    assert (bar["product"], bar["serial"], bar["serial_source"]) == (
        "Rally Bar",
        BAR_SERIAL,
        "sync-interface",
    )
    assert (bar["model"], bar["firmware"], bar["room"]) == ("VR0019", "1.9.556", "lon-2-07")
    assert {c["serial"] for c in bar["children"] if c["serial"]} == {SIGHT_SERIAL}
    assert bar["attributes"]["sync_exchange"]["closed"] is True


def test_a_bar_that_never_answers_falls_back_within_the_deadline(tmp_path: Path) -> None:
    device, _ = bar_device()
    code, report = scan(tmp_path, device, UsbmonCapture(busnum=2, devnum=20))  # no bulk answers
    assert code == 1
    [bar] = report["devices"]
    assert (bar["serial"], bar["serial_source"]) == (BAR_SERIAL, "usb-descriptor")
    assert any(i["code"] == "sync-interface-failed" for i in bar["health_issues"])
    [error] = report["errors"]
    assert error["target"] == bar["address"]
    assert report["sources"][0]["seconds"] < 3.0 + 2.0  # one deadline, not one per retry
