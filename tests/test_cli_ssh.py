"""``roomsync scan --ssh`` as an operator runs it, against a real sshd on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers_ssh import Sshd, keygen, keyscan, require_sshd, start_sshd, world_dir, write_known_hosts
from tests.sysfs import add_device

LOGI = 0x046D


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Sshd, Path, Path]]:
    require_sshd()
    world = world_dir(Path(tempfile.mkdtemp(prefix="roomsync-cli-ssh-")))
    sshd = start_sshd(world / "sshd")
    try:
        root = world_dir(world / "pc" / "sys")
        dmi = world_dir(root / "class" / "dmi" / "id")
        (dmi / "product_serial").write_bytes(b"G6JY00A1\n")
        (dmi / "bios_version").write_bytes(b"TNTGL357.0064\n")
        add_device(
            root,
            "2-1.1",
            LOGI,
            0x089B,
            serial="2313FD1N08Z2",
            product="Logi Rally Bar",
            manufacturer="Logitech",
            symlink=True,
        )
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        known = write_known_hosts(world / "known_hosts", keyscan(sshd.port))
        yield sshd, root, known
    finally:
        sshd.stop()
        shutil.rmtree(world, ignore_errors=True)


def scan(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "scan", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_configured_room_pc_with_key_and_known_hosts_from_the_command_line(site, tmp_path: Path):
    sshd, root, known = site
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[sources.usb]
enabled = false
[sources.ssh]
[[sources.ssh.hosts]]
host = "127.0.0.1"
port = {sshd.port}
user = "root"
sysfs_root = "{root}"
room = "oslo-4-12"
""")
    result = scan(config, "--ssh-key", str(sshd.client_key), "--known-hosts", str(known), "--json")
    # [sources.ssh] is not enabled, and --ssh-key alone names no source: nothing ran.
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sources"] == []
    config.write_text(config.read_text().replace("[sources.ssh]\n", "[sources.ssh]\nenabled = true\n"))
    result = scan(config, "--ssh-key", str(sshd.client_key), "--known-hosts", str(known), "--json")
    assert result.returncode == 0, result.stderr
    devices = {d["product"]: d for d in json.loads(result.stdout)["devices"]}
    assert devices["Room PC"]["serial"] == "G6JY00A1" and devices["Room PC"]["room"] == "oslo-4-12"
    assert devices["Room PC"]["category"] == "room-pc"
    assert devices["Rally Bar"]["serial"] == "2313FD1N08Z2" and devices["Rally Bar"]["room"] == "oslo-4-12"
    assert devices["Rally Bar"]["attributes"]["attached_to"] == devices["Room PC"]["address"]


def test_ssh_flag_with_an_unknown_host_key_is_one_error_line(site, tmp_path: Path):
    sshd, _root, _known = site
    other = write_known_hosts(
        tmp_path / "known_hosts",
        f"[127.0.0.1]:{sshd.port} "
        + keygen(tmp_path / "k").with_suffix(".pub").read_text().split()[0]
        + " "
        + keygen(tmp_path / "k2").with_suffix(".pub").read_text().split()[1],
    )
    config = tmp_path / "agent.toml"
    config.write_text("")
    result = scan(
        config,
        "--ssh",
        f"root@127.0.0.1:{sshd.port}",
        "--ssh-key",
        str(sshd.client_key),
        "--known-hosts",
        str(other),
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ssh:")]
    assert len(lines) == 1 and "does not match" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
