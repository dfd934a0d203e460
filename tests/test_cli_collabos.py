"""``roomsync scan --collabos`` and ``roomsync trust collabos`` as an operator runs them,
against the CollabOS device stand-in on a loopback address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collectors.collabos_api import READS, SIGNIN
from tests.collabos_standin import CollabosDevice, CollabosStandIn, rally_bar_mini

PASSWORD = "Tr0ub4dor&3-cli"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, CollabosDevice]]:
    mini = rally_bar_mini("127.0.0.41", tmp_path / "mini", password=PASSWORD)
    (tmp_path / "agent.toml").write_text("")
    (tmp_path / "collabos-password").write_text(PASSWORD + "\n")
    with CollabosStandIn(mini):
        yield tmp_path, mini


def roomsync(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            *args,
            "--config",
            str(site / "agent.toml"),
            "--state-dir",
            str(site / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(site)},
        cwd=site,
    )


def scan(site: Path, device: CollabosDevice, *args: str) -> subprocess.CompletedProcess[str]:
    return roomsync(
        site,
        "scan",
        "--collabos",
        device.address,
        "--collabos-password-file",
        "collabos-password",
        "-vv",
        *args,
    )


def test_scan_reads_a_rally_bar_mini_and_sends_only_the_documented_requests(site):
    root, mini = site
    done = scan(root, mini, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["errors"] == []
    by_product = {d["product"]: d for d in report["devices"]}
    bar, tap = by_product["Rally Bar Mini"], by_product["Tap IP"]
    assert (bar["serial"], bar["serial_source"], bar["firmware"]) == (
        "2232LZ51E7A8",
        "collabos-api",
        mini.collabos_version,
    )
    assert {c["product"] for c in bar["children"]} == {"Sight", "Rally Mic Pod"}
    assert tap["serial"] == mini.peripherals["ipControllers"][0]["serialNumber"]
    assert tap["serial_source"] == "collabos-api"
    assert {(r.method, r.path) for r in mini.requests} <= {("POST", SIGNIN), *(("GET", p) for p in READS)}
    assert mini.passwords_received == 1
    # -vv logs every step; the password is in none of it, nor in the store.
    assert PASSWORD not in done.stdout + done.stderr
    assert "collabos.pinned" in done.stderr
    for path in (root / "state").iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path
    table = scan(root, mini)
    assert (
        table.returncode == 0
        and "2232LZ51E7A8" in table.stdout
        and PASSWORD not in table.stdout + table.stderr
    )


def test_a_changed_certificate_is_refused_before_sign_in_and_accepted_by_trust(site):
    root, mini = site
    assert scan(root, mini, "--json", "--no-store").returncode == 0
    pinned = mini.spki_sha256
    shown = roomsync(root, "trust", "collabos", mini.address, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["matches"] is True
    mini.rotate_certificate()
    mini.clear()
    refused = scan(root, mini)
    assert refused.returncode == 1
    assert f"pinned sha256:{pinned}" in refused.stdout + refused.stderr
    assert f"roomsync trust collabos {mini.address} --accept-new" in refused.stdout + refused.stderr
    assert mini.requests == [] and mini.passwords_received == 0

    differs = roomsync(root, "trust", "collabos", mini.address)
    assert differs.returncode == 1
    assert (
        f"pinned sha256:{pinned}" in differs.stdout
        and f"presents sha256:{mini.spki_sha256}" in differs.stdout
    )
    wrong = roomsync(root, "trust", "collabos", mini.address, "--accept-new", "--expect", "ab" * 32)
    assert wrong.returncode == 1 and "nothing accepted" in wrong.stdout
    accepted = roomsync(
        root,
        "trust",
        "collabos",
        mini.address,
        "--accept-new",
        "--expect",
        f"sha256:{mini.spki_sha256}",
        "--json",
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert json.loads(accepted.stdout)["accepted"]["spki_sha256"] == mini.spki_sha256
    assert mini.requests == []  # the trust command makes a handshake only
    again = scan(root, mini, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["errors"] == []
    listed = json.loads(roomsync(root, "trust", "collabos", "--list", "--json").stdout)["pins"]
    assert [(p["host"], p["how"]) for p in listed] == [(mini.address, "accepted")]
    assert roomsync(root, "trust", "collabos", mini.address, "--forget").returncode == 0
    assert json.loads(roomsync(root, "trust", "collabos", "--list", "--json").stdout)["pins"] == []


def test_usage_errors(site):
    root, mini = site
    bad = roomsync(root, "scan", "--collabos", "not a host", "--collabos-password-file", "x")
    assert bad.returncode == 2 and "--collabos options" in bad.stderr and "hosts" in bad.stderr
    assert roomsync(root, "trust", "collabos").returncode == 2
    assert roomsync(root, "trust", "collabos", mini.address, "--expect", "zz").returncode == 2
    unreachable = roomsync(root, "trust", "collabos", "127.0.0.42:9", "--timeout", "2")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stdout
    (root / "agent.toml").write_text('[sources.collabos]\nenabled = true\nhosts = ["10.0.0.0/24"]\n')
    check = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(root / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and "sources.collabos.hosts" in check.stderr and "range" in check.stderr
