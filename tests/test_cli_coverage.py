"""``roomsync coverage``, ``roomsync export --format service-portal-csv`` and room placement
in ``roomsync scan``, run as an operator runs them (subprocesses, real files, real SQLite)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pysnmp.proto.api import v2c

from agent.catalog import load_catalog
from agent.coverage import evaluate_all
from agent.entitlements import load_entitlements
from tests.daemon_peer import LOOPBACK, NotifySocket, free_tcp_port, start_daemon, toml_str
from tests.snmp_rogue import SYSTEM, RogueAgent, no_table
from tests.sysfs import add_device

ENTITLEMENTS = """\
serial,purchase_date,country,customer,extension_years,extension_purchased,replaced_serial,replacement_date
2313FD1N08Z2,2025-03-01,NO,business,1,2025-03-20,,
2301SC0005E2,2023-01-16,GB,business,,,,
2104TP0007B3,2024-12-15,US,consumer,1,2024-12-20,,
"""


def roomsync(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A stored scan: a Rally Bar and a Scribe on this host's USB in room oslo-4-12."""
    sysfs = tmp_path / "sys"
    add_device(sysfs, "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    add_device(sysfs, "2-2", 0x046D, 0x08E2, serial="2301SC0005E2", product="Logi Scribe")
    (tmp_path / "agent.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[room]\nid = "oslo-4-12"\nname = "=Fjord"\nlocation = "Oslo, Norway"\n'
    )
    (tmp_path / "entitlements.csv").write_text(ENTITLEMENTS)
    result = roomsync("scan", "--config", str(tmp_path / "agent.toml"), "--sysfs-root", str(sysfs))
    assert result.returncode == 0, result.stderr
    return tmp_path


def coverage(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return roomsync(
        "coverage",
        "--config",
        str(site / "agent.toml"),
        "--entitlements",
        str(site / "entitlements.csv"),
        *args,
    )


def test_coverage_json_every_unit_most_urgent_first(site: Path):
    result = coverage(site, "--today", "2026-11-21", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["serial"] for r in rows] == ["2301SC0005E2", "2104TP0007B3", "2313FD1N08Z2"]
    scribe, tap, bar = rows
    assert set(bar) >= {
        "serial",
        "product",
        "room",
        "status",
        "covered_until",
        "layers",
        "flags",
        "ticket_serial",
    }
    assert (bar["status"], bar["covered_until"], bar["room"]) == ("in_warranty", "2027-02-28", "oslo-4-12")
    # A Rally Bar is not in schedule A of the extended warranty: the extension adds nothing.
    assert [(x["kind"], x["from"], x["until"], x["rules"]) for x in bar["layers"]] == [
        ("standard", "2025-03-01", "2027-02-28", ["W1"])
    ]
    assert bar["flags"] == ["extension-ineligible-product"]
    assert bar["ticket_serial"] == "2313FD1N08Z2" and bar["product"] == "Rally Bar"
    assert (scribe["status"], scribe["covered_until"]) == ("out_of_warranty", "2025-01-15")
    # only in the entitlements file: no product, no room; a consumer's extension adds nothing
    assert (tap["product"], tap["room"], tap["ticket_serial"]) == (None, None, None)
    assert tap["status"] == "expiring_soon"
    # W9: no scan ever found its serial, and the 30 days to check the confirmation are over.
    assert tap["flags"] == ["extension-ineligible-customer", "extension-serial-unverified-late"]
    assert (tap["serial_verified"], tap["first_seen"]) == (False, None) and tap["check_by"]
    assert bar["serial_verified"] is True and bar["first_seen"]


def test_cli_and_api_give_the_same_units_and_verdicts(site: Path):
    """``roomsync coverage --json`` and the daemon's ``/v1/coverage`` list the same units (the
    stored ones and the entitlement serial no scan found, 2104TP0007B3) with the same verdicts
    for the same store and day."""
    port = free_tcp_port()
    config = site / "agent.toml"
    config.write_text(
        config.read_text()
        + f"[coverage]\nentitlements = {toml_str(site / 'entitlements.csv')}\n"
        # no source runs: the daemon serves the store the scan left
        + "[sources.usb]\nenabled = false\n[sources.mdns]\nenabled = false\n"
        + f'[api]\nlisten = "{LOOPBACK}:{port}"\n'
    )
    with NotifySocket.make() as notify:
        daemon = start_daemon(config, notify, site / "daemon.log", url=f"http://{LOOPBACK}:{port}")
        try:
            api = daemon.get("/v1/coverage").json()
        finally:
            daemon.stop()
    assert api["evaluated"] is True
    result = roomsync("coverage", "--config", str(config), "--today", api["today"], "--json")
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout)
    served = {v["serial"]: v for v in api["verdicts"]}
    assert (
        sorted(served) == sorted(r["serial"] for r in cli) == ["2104TP0007B3", "2301SC0005E2", "2313FD1N08Z2"]
    )
    for row in cli:
        verdict = served[row["serial"]]
        assert {key: row[key] for key in verdict} == verdict, row["serial"]
    assert served["2104TP0007B3"]["product"] is None  # bought, never seen
    # Without --today the command line takes today as the API does: the UTC day.
    before = datetime.now(UTC).date().isoformat()
    summary = roomsync("coverage", "--config", str(config), "--summary", "--json")
    after = datetime.now(UTC).date().isoformat()
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["today"] in {before, after}
    if before == after == api["today"]:  # not across midnight UTC
        default = roomsync("coverage", "--config", str(config), "--json")
        assert json.loads(default.stdout) == cli


@pytest.mark.parametrize("tz", ["EAST-14", "WEST+12"])  # POSIX TZ: UTC+14, UTC-12
def test_today_is_the_utc_day_whatever_the_hosts_time_zone(site: Path, tz: str):
    """At any moment one of these zones has a local date other than the UTC one."""
    command = [sys.executable, "-m", "agent", "coverage", "--config", str(site / "agent.toml")]
    entitlements = ["--entitlements", str(site / "entitlements.csv"), "--summary", "--json"]
    before = datetime.now(UTC).date().isoformat()
    result = subprocess.run(
        [*command, *entitlements], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": tz}
    )
    after = datetime.now(UTC).date().isoformat()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["today"] in {before, after}


def test_coverage_table_and_expiring_days(site: Path):
    table = coverage(site, "--today", "2026-11-21", "--expiring-days", "30")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["STATUS", "COVERED", "UNTIL"]
    assert lines[1].startswith("out_of_warranty") and "2301SC0005E2" in lines[1] and "(W1)" in lines[1]
    # 2104TP0007B3 ends 2026-12-14: 23 days after 2026-11-21, within 30 -> expiring_soon
    assert lines[2].startswith("expiring_soon") and "2104TP0007B3" in lines[2] and "(W4)" in lines[2]
    assert lines[3].startswith("in_warranty") and "2313FD1N08Z2" in lines[3]


def test_a_unit_without_a_record_is_unknown(site: Path):
    (site / "entitlements.csv").write_text("serial\n")
    rows = json.loads(coverage(site, "--today", "2026-11-21", "--json").stdout)
    assert {r["serial"]: r["status"] for r in rows} == {"2313FD1N08Z2": "unknown", "2301SC0005E2": "unknown"}
    assert "unknown-purchase-date" in rows[0]["flags"]


def test_bad_entitlements_refused_whole_exit_2(site: Path):
    (site / "entitlements.csv").write_text("serial,purchase_date,colour\nA1,2025-02-30,\nA1,2025-01-01,\n")
    result = coverage(site, "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert "entitlements.csv:1: colour:" in result.stderr
    assert "entitlements.csv:2: purchase_date:" in result.stderr
    assert "entitlements.csv:3: serial:" in result.stderr


@pytest.mark.parametrize("args", [["--today", "21.11.2026"], ["--expiring-days", "-1"]])
def test_bad_options_exit_2(site: Path, args: list[str]):
    result = coverage(site, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_summary_with_enterprise_tier(site: Path):
    config = site / "agent.toml"
    config.write_text(config.read_text() + "\n[select]\nenterprise_tier = 100\n")
    result = coverage(site, "--today", "2026-11-21", "--summary", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["rooms"], out["units"], out["enterprise_tier"], out["spares_due"]) == (1, 3, "100", 1)
    assert out["by_status"] == {"out_of_warranty": 1, "expiring_soon": 1, "unknown": 0, "in_warranty": 1}
    assert out["room_summaries"][0]["primary_unit"] == "2313FD1N08Z2"
    text = coverage(site, "--today", "2026-11-21", "--summary").stdout
    assert "1 room(s), 3 unit(s)" in text and "enterprise plan 100" in text


def test_summary_counts_every_unit_the_listing_lists(site: Path):
    """With many records no scan found (counted by shape, not listed one by one), the summary
    counts what ``coverage --json`` lists, a unit of the scan once (2313FD1N08Z2 is in both)."""
    lines = [ENTITLEMENTS.rstrip("\n")]
    for i in range(2_500):
        extension = f"1,20{20 + i % 6}-0{1 + i % 9}-20" if i % 3 == 0 else ","
        country = ["NO", "US", "JP"][i // 7 % 3]  # apart from dates: shapes that end on one day
        lines.append(f"2405SP{i:06d},20{20 + i % 6}-0{1 + i % 9}-1{i % 10},{country},,{extension},,")
    (site / "entitlements.csv").write_text("\n".join(lines) + "\n")
    listed = json.loads(coverage(site, "--today", "2026-11-21", "--json").stdout)
    summary = coverage(site, "--today", "2026-11-21", "--summary", "--json")
    assert summary.returncode == 0, summary.stderr
    out = json.loads(summary.stdout)
    assert out["units"] == len(listed) == 2_503
    assert out["by_status"] == {s: sum(r["status"] == s for r in listed) for s in out["by_status"]}
    assert len({s for s, n in out["by_status"].items() if n}) >= 2
    # Most urgent first over all of them; each record no scan found with its own verdict.
    rank = {status: at for at, status in enumerate(out["by_status"])}
    keys = [(rank[r["status"]], r["covered_until"] or "9999-12-31", r["serial"]) for r in listed]
    assert keys == sorted(keys)
    records = load_entitlements(site / "entitlements.csv")
    unseen = [r for r in listed if r["product"] is None]
    own = evaluate_all([(r["serial"], None) for r in unseen], records, load_catalog(), date(2026, 11, 21))
    printed = [{key: r[key] for key in (*v.to_dict(), "reason")} for r, v in zip(unseen, own, strict=True)]
    assert printed == [v.to_dict() | {"reason": v.reason} for v in own]
    assert len(unseen) == 2_501 and {r["room"] for r in unseen} == {None}
    table = coverage(site, "--today", "2026-11-21").stdout.splitlines()
    assert len(table) == 1 + 2_503
    assert [line.split()[2] for line in table[1:]] == [r["serial"] for r in listed]


def test_service_portal_csv(site: Path):
    out = site / "rooms.csv"
    result = roomsync(
        "export", "--config", str(site / "agent.toml"), "--format", "service-portal-csv", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0] == ["room_id", "room_name", "location", "product", "model", "serial", "firmware"]
    assert sorted(r[3] for r in rows[1:]) == ["Rally Bar", "Scribe"]
    # a room name a spreadsheet would run as a formula is defused
    assert {r[1] for r in rows[1:]} == {"'=Fjord"} and {r[2] for r in rows[1:]} == {"Oslo, Norway"}


def test_export_without_a_stored_scan_says_so(tmp_path: Path):
    result = roomsync("export", "--format", "service-portal-csv", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2  # a named configuration file that does not exist
    (tmp_path / "agent.toml").write_text(f'state_dir = "{tmp_path / "empty"}"\n')
    result = roomsync("export", "--format", "service-portal-csv", "--config", str(tmp_path / "agent.toml"))
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["room_id,room_name,location,product,model,serial,firmware"]
    assert "run roomsync scan first" in result.stderr


def test_scan_places_lan_units_by_the_room_map(tmp_path: Path):
    system = {**SYSTEM, (1, 3, 6, 1, 2, 1, 1, 5, 0): v2c.OctetString(b"RallyBar-1L5V32")}
    room_map = tmp_path / "rooms.csv"
    room_map.write_text(
        "match;value;room;room_name\r\nhost;RallyBar-1L5V32;oslo-4-14;Skagerrak\r\n"
        ";;oslo-4-20;Empty room\r\n",
        encoding="utf-8-sig",
    )
    with RogueAgent(responder=no_table, system=system) as agent, RogueAgent(responder=no_table) as stranger:
        result = roomsync(
            "scan",
            "--snmp",
            f"127.0.0.1:{agent.port}",
            "--snmp",
            f"127.0.0.1:{stranger.port}",
            "--room-map",
            str(room_map),
            "--json",
            "--all",
            "--no-store",
        )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    placed = {d["attributes"]["sys_name"]: d["room"] for d in out["devices"]}
    assert placed == {"RallyBar-1L5V32": "oslo-4-14", "rogue": None}  # unplaced: listed, never dropped
    assert {r["room"] for r in out["rooms"]} == {"oslo-4-14", "oslo-4-20"}
    assert len(out["unassigned"]) == 1


def test_a_bad_room_map_is_refused_exit_2(tmp_path: Path):
    room_map = tmp_path / "rooms.csv"
    room_map.write_text("match,value,room\ncidr,10.0.0.1/8,r1\nplanet,mars,r2\n")
    result = roomsync("scan", "--room-map", str(room_map), "--no-store", "--sysfs-root", str(tmp_path))
    assert result.returncode == 2
    assert "rooms.csv:2:" in result.stderr and "rooms.csv:3:" in result.stderr
