"""``roomsync scan`` storing and reporting change events; ``roomsync inventory`` and
``roomsync events`` reading the store (subprocesses, real SQLite)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sysfs import add_device


def roomsync(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(site / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    add_device(tmp_path / "sys", "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    add_device(tmp_path / "sys", "2-2", 0x046D, 0x08E2, serial="2301SC0005E2", product="Logi Scribe")
    (tmp_path / "agent.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[room]\nid = "oslo-4-12"\n'
        "[store]\nremove_after_missed_scans = 2\n"
    )
    return tmp_path


def scan(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return roomsync(site, "scan", "--sysfs-root", str(site / "sys"), *args)


def test_scan_reports_the_events_it_stored(site: Path):
    first = json.loads(scan(site, "--json").stdout)
    assert sorted((e["type"], e["serial"]) for e in first["events"]) == [
        ("device.added", "2301SC0005E2"),
        ("device.added", "2313FD1N08Z2"),
    ]
    assert json.loads(scan(site, "--json").stdout)["events"] == []  # nothing changed
    shutil.rmtree(site / "sys" / "bus" / "usb" / "devices" / "2-2")
    assert json.loads(scan(site, "--json").stdout)["events"] == []  # one missed run: not yet
    table = scan(site)
    assert "device.removed  Scribe" in table.stdout  # [store] remove_after_missed_scans = 2


def test_inventory_and_events_read_the_store(site: Path):
    scan(site)
    shutil.rmtree(site / "sys" / "bus" / "usb" / "devices" / "2-2")
    scan(site)
    scan(site)
    inventory = json.loads(roomsync(site, "inventory", "--json").stdout)
    assert [d["serial"] for d in inventory["devices"]] == ["2313FD1N08Z2"]
    assert inventory["rooms"][0]["primary_unit"] == "2313FD1N08Z2" and inventory["last_scan"]
    removed = json.loads(roomsync(site, "inventory", "--removed", "--json").stdout)
    assert [d["serial"] for d in removed["devices"]] == ["2301SC0005E2"]
    events = json.loads(roomsync(site, "events", "--json").stdout)
    assert [e["type"] for e in events] == ["device.added", "device.added", "device.removed"]
    later = json.loads(roomsync(site, "events", "--json", "--since", events[-1]["at"]).stdout)
    assert [e["type"] for e in later] == ["device.removed"]
    assert json.loads(roomsync(site, "events", "--json", "--limit", "1").stdout) == later
    assert "device.removed" in roomsync(site, "events").stdout


def test_reading_before_any_scan_and_bad_options(site: Path):
    empty = roomsync(site, "inventory")
    assert empty.returncode == 0 and "run roomsync scan first" in empty.stderr
    assert roomsync(site, "events", "--json").stdout.strip() == "[]"
    bad = roomsync(site, "events", "--since", "yesterday")
    assert bad.returncode == 2 and "--since yesterday" in bad.stderr
