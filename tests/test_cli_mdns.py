"""``roomsync scan --mdns`` as an operator runs it, against a zeroconf publisher in another
process. Everything is pinned to 127.0.0.1 (--mdns-interface)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers_mdns import RUN_TOKEN, Publisher, Service

T = f"{RUN_TOKEN}C"
BAR_HOST = f"RallyBar-{T}.local."
PRINTER_HOST = f"printer-{T}.local."


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    services = [
        Service("_https._tcp.local.", f"Rally Bar {T}", BAR_HOST, 443),
        Service("_ipp._tcp.local.", f"Printer {T}", PRINTER_HOST, 631, {"ty": "HP LaserJet"}),
    ]
    with Publisher(services, workdir=tmp_path_factory.mktemp("mdns-cli")) as peer:
        yield peer


def scan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text("[sources.usb]\nenabled = false\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "scan",
            "--config",
            str(config),
            "--no-store",
            "--mdns-interface",
            "127.0.0.1",
            "--mdns-timeout",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def mine(out: dict) -> dict[str, dict]:
    return {d["attributes"]["host"]: d for d in out["devices"] if T in d["attributes"].get("host", "")}


def test_mdns_interface_and_timeout_flags_run_mdns_alone(publisher, tmp_path: Path):
    result = scan(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [s["name"] for s in out["sources"]] == ["mdns"]
    bar = mine(out)[BAR_HOST]
    assert (bar["product"], bar["category"], bar["transport"]) == ("Rally Bar", "collabos-bar", "mdns")
    assert PRINTER_HOST not in mine(out)  # _ipp._tcp is not a default type


@pytest.mark.slow
def test_mdns_type_adds_a_type_and_unknowns_are_hidden_from_the_table(publisher, tmp_path: Path):
    out = json.loads(scan(tmp_path, "--json", "--mdns-type", "_ipp._tcp").stdout)
    printer = mine(out)[PRINTER_HOST]
    assert printer["category"] == "other" and printer["vendor"] == "HP"
    table = scan(tmp_path, "--mdns-type", "_ipp._tcp.local")
    assert table.returncode == 0
    assert "Rally Bar" in table.stdout and "HP LaserJet" not in table.stdout
    assert "--all lists them" in table.stdout
    listed = scan(tmp_path, "--mdns-type", "_ipp._tcp.local.", "--all")
    assert "other: HP" in listed.stdout


def test_bad_mdns_type_is_a_usage_error(tmp_path: Path):
    result = scan(tmp_path, "--mdns-type", "printer")
    assert result.returncode == 2 and "--mdns-type printer" in result.stderr
