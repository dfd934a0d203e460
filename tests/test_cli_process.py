"""The installed command as an operator runs it: entry points, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.sysfs import add_device

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_console_script_and_module_agree() -> None:
    script = run(str(BIN / "roomsync"), "--version")
    module = run(sys.executable, "-m", "agent", "--version")
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    assert script.stdout.startswith("roomsync ")


def test_help_lists_commands() -> None:
    result = run(sys.executable, "-m", "agent", "--help")
    assert result.returncode == 0
    for word in ("scan", "check-config", "Exit status"):
        assert word in result.stdout


def test_usage_errors_exit_2() -> None:
    assert run(sys.executable, "-m", "agent").returncode == 2
    assert run(sys.executable, "-m", "agent", "frobnicate").returncode == 2
    bad = run(sys.executable, "-m", "agent", "scan", "--timeout", "soon")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_scan_json_in_a_subprocess_logs_json_to_stderr(tmp_path: Path) -> None:
    add_device(tmp_path, "1-2", 0x046D, 0x08E2, serial="ABCDEF123456", product="Logi Scribe")
    result = run(
        sys.executable,
        "-m",
        "agent",
        "scan",
        "--json",
        "-v",
        "--sysfs-root",
        str(tmp_path),
        env={"ROOMSYNC_CONFIG": "", "CONFIGURATION_DIRECTORY": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    [device] = json.loads(result.stdout)["devices"]
    assert (device["product"], device["serial"]) == ("Scribe", "ABCDEF123456")
    events = [json.loads(line) for line in result.stderr.splitlines()]
    done = next(e for e in events if e["event"] == "source.run.done")
    assert done["source"] == "usb" and done["success"] is True and done["observations"] == 1


def test_no_enabled_source_says_so(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[sources.usb]\nenabled = false\n")
    result = run(sys.executable, "-m", "agent", "scan", "--config", str(config))
    assert result.returncode == 0
    assert "no source is enabled" in result.stdout


def test_sources_enabled_in_the_configuration_run(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[sources.usb]\nsysfs_root = "{tmp_path}"\n[sources.snmp]\nenabled = true\n')
    result = run(sys.executable, "-m", "agent", "scan", "--json", "--config", str(config), "--no-store")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [s["name"] for s in out["sources"]] == ["usb", "snmp"]
    assert "snmp: SNMP is enabled but no targets are configured" in out["messages"]
