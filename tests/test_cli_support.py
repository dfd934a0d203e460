"""``roomsync support SERIAL`` and the ``support`` of ``roomsync coverage --json`` as an operator
runs them (subprocesses, a real store, a room map naming each room's platform, an entitlements
file): the issue's "done when" — a Tap bundle in a Teams room routes every unit to JumpStart
quoting the Tap, in a Zoom room to Logitech Support; a unit under a live reseller contract to
the reseller with its contract number; a Brio to the distributor."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.model import Device, Room, Transport
from agent.store import Store

AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
TEAMS_TAP, ZOOM_TAP = "2125TAP0A1B2", "2125TAP0C3D4"
UNITS = {
    # serial: (product, room)
    TEAMS_TAP: ("Tap", "teams-room"),
    "2114RC0XY12": ("Rally Camera", "teams-room"),
    "G6JY00A1": ("Room PC", "teams-room"),
    ZOOM_TAP: ("Tap", "zoom-room"),
    "2008MU0001": ("MeetUp", "zoom-room"),
    "2313FD1N08Z2": ("Rally Bar", "bar-room"),
    "9C7A2B10": ("Brio", "bar-room"),
}


def device(serial: str, product: str, room: str) -> Device:
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{serial}",
        first_seen=AT,
        last_seen=AT,
        room=room,
        serial=serial,
        serial_label_grade=True,
        sources=["usb"],
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    with Store.open(tmp_path / "state") as store:
        rooms = [Room(r) for r in ("teams-room", "zoom-room", "bar-room")]
        store.record_scan([device(s, p, r) for s, (p, r) in UNITS.items()], rooms, AT, sources_run={"usb"})
    (tmp_path / "rooms.csv").write_text(
        "match,value,room,room_name,platform\n"
        f"serial,{TEAMS_TAP},teams-room,Fjord,Teams\n"
        f"serial,{ZOOM_TAP},zoom-room,Skog,zoom\n"
    )
    (tmp_path / "entitlements.csv").write_text(
        "serial,purchase_date,country,reseller_contract,reseller_until\n"
        + "".join(f"{s},2025-06-01,NO,,\n" for s in UNITS if s != "2313FD1N08Z2")
        + "2313FD1N08Z2,2025-06-01,PL,HZ-2026-0042,2028-05-31\n"
    )
    (tmp_path / "agent.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\nroom_map = "{tmp_path / "rooms.csv"}"\n'
        f'[coverage]\nentitlements = "{tmp_path / "entitlements.csv"}"\n'
    )
    return tmp_path


def roomsync(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(site / "agent.toml"), "--today", "2026-12-02"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def support(site: Path, serial: str) -> dict[str, Any]:
    shown = roomsync(site, "support", serial, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return dict(json.loads(shown.stdout))


def test_the_issues_done_when(site: Path) -> None:
    for serial in (TEAMS_TAP, "2114RC0XY12", "G6JY00A1"):
        found = support(site, serial)
        assert (found["support"]["route"], found["support"]["ticket_serial"]) == (
            "logitech-jumpstart",
            TEAMS_TAP,
        )
        assert found["room"]["platform"] == "teams" and found["system"]["name"] == "Tap bundle (Rally)"
    for serial in (ZOOM_TAP, "2008mu 0001"):  # the serial as a person types it
        found = support(site, serial)
        assert (found["support"]["route"], found["support"]["ticket_serial"]) == (
            "logitech-support",
            ZOOM_TAP,
        )
        assert "support.logi.com" in found["support"]["contact"]["url"]
    bar = support(site, "2313FD1N08Z2")["support"]
    assert (bar["route"], bar["ticket_serial"], bar["contract"]) == (
        "reseller",
        "2313FD1N08Z2",
        "HZ-2026-0042",
    )
    assert bar["priority"] == "request" and "H1" in bar["rules"]
    brio = support(site, "9C7A2B10")["support"]
    assert (brio["route"], brio["rules"]) == ("distributor-rma", ["D1"])


def test_coverage_json_carries_each_units_support_and_the_table_reads(site: Path) -> None:
    listed = roomsync(site, "coverage", "--json")
    assert listed.returncode == 0, listed.stderr
    by_serial = {item["serial"]: item for item in json.loads(listed.stdout)}
    assert {s: by_serial[s]["support"]["route"] for s in UNITS} == {
        TEAMS_TAP: "logitech-jumpstart",
        "2114RC0XY12": "logitech-jumpstart",
        "G6JY00A1": "logitech-jumpstart",
        ZOOM_TAP: "logitech-support",
        "2008MU0001": "logitech-support",
        "2313FD1N08Z2": "reseller",
        "9C7A2B10": "distributor-rma",
    }
    text = roomsync(site, "support", "2114RC0XY12")
    assert text.returncode == 0, text.stderr
    assert f"route: logitech-jumpstart; quote serial {TEAMS_TAP}" in text.stdout
    assert "rules: D2, P2" in text.stdout
    # The coverage layers behind it: the reseller contract, whether it covers today.
    text = roomsync(site, "support", "2313FD1N08Z2")
    assert "reseller 2025-06-01 .. 2028-05-31 (covers today; H1)" in text.stdout, text.stdout


def test_an_unknown_serial_is_a_clear_failure(site: Path) -> None:
    missing = roomsync(site, "support", "NOPE0000")
    assert missing.returncode == 1 and "no unit with serial 'NOPE0000'" in missing.stderr
