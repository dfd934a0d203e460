"""One unit, one record, as an operator sees it: the recorded Rally Bar replayed on USB and a
bar announcing the same serial over mDNS on loopback are one device in ``roomsync scan
--json``, in the store (``roomsync inventory --json``) and in the portal snapshot (``roomsync
export --format json``); a second bar with another serial stays apart (issue [9/16])."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.entitlements import COLUMNS
from agent.uploader.protocol import InventoryMessage, parse_message
from tests.peers_mdns import RUN_TOKEN, Publisher, Service
from tests.shared import shared_file
from tests.sync_captures import BAR_SERIAL

FIXTURE = ("fixtures", "usb-captures", "logi-rally-bar-setup.json")
T = f"{RUN_TOKEN}M"
SAME_HOST = f"RallyBar-{T}1.local."
OTHER_HOST = f"RallyBar-{T}2.local."
OTHER_SERIAL = "2313FD1N0999"


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    services = [
        Service(
            "_https._tcp.local.", f"Rally Bar {T}1", SAME_HOST, 443, {"serial": BAR_SERIAL, "fw": "1.9.5"}
        ),
        Service("_https._tcp.local.", f"Rally Bar {T}2", OTHER_HOST, 443, {"serial": OTHER_SERIAL}),
    ]
    with Publisher(services, workdir=tmp_path_factory.mktemp("mdns-merge")) as peer:
        yield peer


def roomsync(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(site / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=90,
        env=dict(os.environ),
    )


def replay_and_mdns(site: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``roomsync scan`` of the recorded bar on USB and of the loopback mDNS announcements."""
    return roomsync(
        site,
        "scan",
        "--replay",
        str(shared_file(*FIXTURE)),
        "--mdns",
        "--mdns-interface",
        "127.0.0.1",
        "--mdns-timeout",
        "2",
        *extra,
    )


def scan(site: Path, *extra: str) -> dict[str, Any]:
    done = replay_and_mdns(site, "--json", *extra)
    assert done.returncode == 0, done.stderr + json.dumps(json.loads(done.stdout or "{}").get("errors"))
    return json.loads(done.stdout)


def mine(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """This test's bars by serial (other peers on loopback may answer too)."""
    return {d["serial"]: d for d in devices if d["serial"] in (BAR_SERIAL, OTHER_SERIAL)}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "agent.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[room]\nid = "lon-2-07"\nname = "Thames"\n'
    )
    return tmp_path


def test_the_replayed_bar_and_its_mdns_announcement_are_one_device(publisher: Publisher, site: Path):
    report = scan(site, "--no-store")
    bars = mine(report["devices"])
    assert sorted(bars) == sorted([BAR_SERIAL, OTHER_SERIAL])
    bar = bars[BAR_SERIAL]
    assert [(s["source"], s["transport"], s["serial_source"]) for s in bar["seen_by"]] == [
        ("replay", "usb", "sync-interface"),
        ("mdns", "mdns", "mdns-txt"),
    ]
    assert {s["address"] for s in bar["seen_by"]} == {"2-1.1", "127.0.0.1"}
    assert all(s["last_seen"] for s in bar["seen_by"])
    assert (bar["firmware"], bar["serial_source"], bar["transport"]) == ("1.9.556", "sync-interface", "usb")
    assert bar["provenance"]["firmware"]["collector"] == "sync-interface"
    assert bar["attributes"]["host"] == SAME_HOST
    # The TXT says 1.9.5: the disagreement is kept and is a warning naming both.
    [issue] = [i for i in bar["health_issues"] if i["code"] == "firmware-disagreement"]
    assert "1.9.556" in issue["message"] and "1.9.5" in issue["message"] and "mdns-txt" in issue["message"]
    other = bars[OTHER_SERIAL]
    assert [s["source"] for s in other["seen_by"]] == ["mdns"] and other["identity"] != bar["identity"]


def test_the_store_and_the_snapshot_hold_one_unit_with_both_channels(publisher: Publisher, site: Path):
    first = scan(site)
    assert [e["type"] for e in first["events"]].count("device.added") >= 2
    added = [e for e in first["events"] if e["type"] == "device.added" and e["serial"] == BAR_SERIAL]
    assert len(added) == 1  # one unit, one device.added
    scanned = mine(first["devices"])[BAR_SERIAL]  # the scan names the unit as its record does
    assert (scanned["identity"], scanned["identity_assigned"]) == (added[0]["identity"], True)
    again = scan(site)
    assert [e for e in again["events"] if e["serial"] in (BAR_SERIAL, OTHER_SERIAL)] == []

    shown = roomsync(site, "inventory", "--json")
    assert shown.returncode == 0, shown.stderr
    stored = mine(json.loads(shown.stdout)["devices"])
    bar = stored[BAR_SERIAL]
    assert [s["source"] for s in bar["seen_by"]] == ["replay", "mdns"]
    assert (bar["firmware"], bar["serial_source"], bar["room"]) == ("1.9.556", "sync-interface", "lon-2-07")
    assert bar["identity"] == f"serial:Rally Bar:{BAR_SERIAL}" and bar["identity_assigned"] is True

    exported = roomsync(site, "export", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    snapshot = parse_message(exported.stdout)
    assert isinstance(snapshot, InventoryMessage)
    devices = [d for p in snapshot.places for d in p.devices] + list(snapshot.unassigned)
    rows = [d for d in devices if d.serial == BAR_SERIAL]
    assert len(rows) == 1
    assert [(s.source, s.serial_source) for s in rows[0].seen_by] == [
        ("replay", "sync-interface"),
        ("mdns", "mdns-txt"),
    ]

    entitlements = site / "entitlements.csv"
    entitlements.write_text(
        ",".join(COLUMNS) + "\n" + f"{BAR_SERIAL},2025-01-15,NO,business" + "," * (len(COLUMNS) - 4) + "\n"
    )
    covered = roomsync(site, "coverage", "--json", "--entitlements", str(entitlements))
    assert covered.returncode == 0, covered.stderr
    verdicts = [v for v in json.loads(covered.stdout) if v["serial"] == BAR_SERIAL]
    assert len(verdicts) == 1  # one verdict per unit


def test_the_table_shows_every_transport_of_a_unit(publisher: Publisher, site: Path):
    done = replay_and_mdns(site, "--no-store")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("Rally Bar ")]
    [row] = [r for r in rows if BAR_SERIAL in r]  # one row: one unit
    assert "usb+mdns" in row
    [other] = [r for r in rows if OTHER_SERIAL in r]
    assert "mdns" in other and "usb+mdns" not in other
