"""``roomsync scan`` with SNMP, as an operator runs it, against real agents on loopback."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers_snmp import Snmpd, entity_rows
from tests.snmp_rogue import RogueAgent, no_table

ENV = dict(os.environ)


@pytest.fixture(scope="module", autouse=True)
def empty_config(tmp_path_factory: pytest.TempPathFactory):
    """Built-in defaults, whatever this machine's /etc/roomsync holds."""
    path = tmp_path_factory.mktemp("config") / "agent.toml"
    path.write_text("")
    ENV["ROOMSYNC_CONFIG"] = str(path)
    yield path
    ENV.pop("ROOMSYNC_CONFIG")


def scan(*args: str, stderr: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "scan", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
        timeout=60,
        env=ENV,
    )


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory):
    rows = entity_rows("2325LZ51XY58", "VR0019", firmware="1.9.556")
    with Snmpd(
        tmp_path_factory.mktemp("snmpd"), sys_descr="Logitech Rally Bar", entity=rows, community="site-secret"
    ) as agent:
        yield agent


def test_snmp_json(snmpd):
    result = scan("--snmp", f"127.0.0.1:{snmpd.port}", "--community", "site-secret", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    [device] = out["devices"]
    assert (device["product"], device["category"], device["serial"]) == (
        "Rally Bar",
        "collabos-bar",
        "2325LZ51XY58",
    )
    assert (device["transport"], device["serial_source"]) == ("snmp", "snmp-entity")
    assert [s["name"] for s in out["sources"]] == ["snmp"]  # --snmp runs SNMP alone
    assert "site-secret" not in result.stdout + result.stderr


def test_wrong_community_exits_1_with_one_line(snmpd):
    result = scan("--snmp", f"127.0.0.1:{snmpd.port}", "--community", "guess", "--snmp-timeout", "0.3")
    assert result.returncode == 1
    assert f"error: snmp: 127.0.0.1:{snmpd.port}: no answer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--snmp", "10.0.0.0/8"], "at most 65536"),
        (["--snmp", "not a host"], "neither an address"),
        (["--snmp", "127.0.0.1", "--concurrency", "0"], "concurrency"),
        (["--ssh", "no-user-here"], "USER@HOST"),
    ],
)
def test_bad_lan_options_exit_2(args, words):
    result = scan(*args)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr


def test_other_responders_hidden_from_table_unless_all():
    with RogueAgent(responder=no_table) as agent:
        plain = scan("--snmp", f"127.0.0.1:{agent.port}")
        listed = scan("--snmp", f"127.0.0.1:{agent.port}", "--all")
        as_json = scan("--snmp", f"127.0.0.1:{agent.port}", "--json")
    assert plain.returncode == listed.returncode == 0
    assert "1 other responder" in plain.stdout and "rogue agent" not in plain.stdout
    assert "other: unknown vendor (rogue agent)" in listed.stdout
    [device] = json.loads(as_json.stdout)["devices"]
    assert device["category"] == "other" and device["attributes"]["description"] == "rogue agent"


def test_progress_on_a_terminal_for_long_sweeps(tmp_path: Path):
    controller, terminal = pty.openpty()
    try:
        # 127.0.3.0/29 is silent: six addresses waited on for 1.5 s shows the progress line.
        result = scan("--snmp", "127.0.3.0/29", "--snmp-timeout", "1.5", stderr=terminal)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert result.returncode == 0
    assert b"SNMP sweep: " in shown and b"/6 addresses, 0 answered" in shown
    assert "SNMP sweep" not in result.stdout
