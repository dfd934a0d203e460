"""The arm64 package runs on arm64 (issue [16/16], item 3): installed into a Debian 12 arm64
root (``debootstrap --arch=arm64``, kept between runs like the amd64 one) and run there under
Debian's ``qemu-user-static`` through binfmt_misc: ``roomsync --version``, and a ``roomsync
scan`` of the README quickstart's captured USB tree, which finds its four units.

The package is installed with ``dpkg -i`` inside the root, so its maintainer scripts run on
arm64 too, as on an image being built (no systemd running: tests/system/test_systemd.py runs
them under systemd as PID 1): the user made, the configuration readable by it alone, the
libraries compiled by arm64's ``python3``, the service enabled for the next boot. Then Debian's
arm64 ``python3`` imports every compiled dependency the package holds for arm64.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.shared import require
from tests.system.test_systemd import DROP, SBIN, debootstrapped
from tools import build_deb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a first debootstrap takes minutes

REPO = Path(__file__).resolve().parents[2]
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QUICKSTART_SERIALS = ("2313FD1N08Z2", "2104TP0007B3", "2301SC0005E2", "2206MU0042C9")


def binfmt_aarch64() -> None:
    """qemu-aarch64 registered with binfmt_misc (mounting binfmt_misc if it is not)."""
    require(
        shutil.which("qemu-aarch64-static"), "qemu-user-static (Debian: qemu-user-static, binfmt-support)"
    )
    require(os.geteuid() == 0, "root, to mount binfmt_misc and chroot")
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=False)
    if not (BINFMT / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    require(
        entry.exists() and entry.read_text().startswith("enabled"), "binfmt_misc with qemu-aarch64 enabled"
    )


def test_the_arm64_package_runs_a_scan_on_arm64(tmp_path: Path) -> None:
    binfmt_aarch64()
    chroot = shutil.which("chroot", path=SBIN)
    require(chroot, "chroot (Debian: coreutils)")
    deb = build_deb.build("arm64", tmp_path / "dist", tmp_path / "build")
    root = tmp_path / "root"
    subprocess.run(
        ["cp", "-a", "--reflink=auto", str(debootstrapped("arm64", ["python3", "libusb-1.0-0"])), str(root)],
        check=True,
    )
    shutil.copytree(REPO / "config" / "quickstart", root / DROP.lstrip("/") / "quickstart")
    shutil.copy(deb, root / DROP.lstrip("/") / "roomsync.deb")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

    def inside(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(chroot), str(root), *args], capture_output=True, text=True, timeout=timeout, env=env
        )

    assert "aarch64" in inside("/usr/bin/python3", "-c", "import platform; print(platform.machine())").stdout
    installed = inside("dpkg", "-i", f"{DROP}/roomsync.deb", timeout=900)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    assert inside("getent", "passwd", "roomsync").returncode == 0  # the user
    assert inside("stat", "-c", "%G %a", "/etc/roomsync/agent.toml").stdout.split() == ["roomsync", "640"]
    wants = root / f"etc/systemd/system/multi-user.target.wants/{build_deb.UNIT}"
    assert wants.is_symlink() and os.readlink(wants) == f"/usr/lib/systemd/system/{build_deb.UNIT}"
    compiled = list((root / "opt/roomsync/lib/agent/__pycache__").glob("*.cpython-311.pyc"))
    assert compiled, "postinst compiled nothing"

    def roomsync(*args: str) -> subprocess.CompletedProcess[str]:
        return inside("/usr/bin/roomsync", *args)

    version = roomsync("--version")
    assert version.returncode == 0 and build_deb.version() in version.stdout, version.stderr[-2000:]
    scan = roomsync("scan", "--config", f"{DROP}/quickstart/agent.toml", "--no-store")
    assert scan.returncode == 0, scan.stderr[-3000:]
    for serial in QUICKSTART_SERIALS:
        assert serial in scan.stdout, scan.stdout
