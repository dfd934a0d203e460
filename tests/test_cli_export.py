"""Every command that writes a file (``roomsync export -o``, both formats) reports a path it
cannot write as a usage error: exit 2, one line naming the path and the reason, no traceback,
nothing on stdout. Run as an operator runs it (subprocesses, real files, real SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sysfs import add_device

FORMATS = ("service-portal-csv", "json")


def roomsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stored scan: a Rally Bar on this host's USB in room oslo-4-12."""
    root = tmp_path_factory.mktemp("site")
    sysfs = root / "sys"
    add_device(sysfs, "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    (root / "agent.toml").write_text(f'state_dir = "{root / "state"}"\n[room]\nid = "oslo-4-12"\n')
    result = roomsync("scan", "--config", str(root / "agent.toml"), "--sysfs-root", str(sysfs))
    assert result.returncode == 0, result.stderr
    return root


def export(site: Path, fmt: str, output: str) -> subprocess.CompletedProcess[str]:
    return roomsync("export", "--config", str(site / "agent.toml"), "--format", fmt, "-o", output)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_the_file_it_is_given(site: Path, fmt: str) -> None:
    out = site / f"out.{fmt}"
    result = export(site, fmt, str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"to {out}" in result.stderr
    text = out.read_bytes().decode("utf-8")
    if fmt == "json":
        assert json.loads(text)["schema"] == "roomsync.inventory.v1"
    else:
        assert text.startswith("room_id,room_name,") and "\r\n" in text and "2313FD1N08Z2" in text


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("missing/x.out", "No such file or directory"),  # a directory that does not exist
        (".", "Is a directory"),  # the path names a directory
        ("/dev/full", "No space left on device"),  # the write itself fails (a full disk)
    ],
)
def test_an_unwritable_output_is_exit_2_with_the_path_and_the_reason(
    site: Path, fmt: str, where: str, reason: str
) -> None:
    path = where if where.startswith("/") else str(site / where)
    result = export(site, fmt, path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip() == f"roomsync: --output {path}: {reason}"
