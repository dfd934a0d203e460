"""The Debian packages ``scripts/build-deb`` makes (issue [16/16], items 1 and 3): both
architectures built on this machine without emulation, each holding what the issue lists and no
code for another machine; the amd64 one's agent runs on Debian's own ``python3`` from the
unpacked package. (Installing it under systemd as PID 1 is tests/system/, where it can run.)

The wheels come from PyPI, as ``./scripts/bootstrap``'s do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared import require
from tools import build_deb

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require(
        subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode == 0, "dpkg-deb (Debian: dpkg)"
    )
    root = tmp_path_factory.mktemp("deb")
    built = {}
    for arch in ("amd64", "arm64"):
        done = subprocess.run(
            [
                str(REPO / "scripts" / "build-deb"),
                "--arch",
                arch,
                "--out",
                str(root / "dist"),
                "--work",
                str(root / "build"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        built[arch] = Path(done.stdout.strip().splitlines()[-1])
        assert built[arch] == root / "dist" / f"roomsync_{build_deb.version()}_{arch}.deb"
    return built


def unpack(deb: Path, into: Path) -> Path:
    subprocess.run(["dpkg-deb", "-R", str(deb), str(into)], check=True)
    return into


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_package_holds_what_the_issue_lists(packages: dict[str, Path], arch: str, tmp_path: Path) -> None:
    deb = packages[arch]
    assert (field(deb, "Package"), field(deb, "Architecture"), field(deb, "Version")) == (
        "roomsync",
        arch,
        build_deb.version(),
    )
    # Debian 12's, and no other Python: the extensions are CPython 3.11's
    assert field(deb, "Depends") == "python3 (>= 3.11), python3 (<< 3.12), libusb-1.0-0, libc6 (>= 2.17)"
    root = unpack(deb, tmp_path / "root")
    for path in (
        "usr/bin/roomsync",
        "usr/lib/systemd/system/roomsync-agent.service",
        "usr/lib/sysusers.d/roomsync.conf",
        "usr/lib/udev/rules.d/70-roomsync.rules",
        "etc/roomsync/agent.toml",
        "opt/roomsync/lib/agent/cli/__init__.py",
        "opt/roomsync/lib/agent/data/catalog.toml",
        "usr/share/doc/roomsync/copyright",
    ):
        assert (root / path).is_file(), path
    assert (root / "DEBIAN/conffiles").read_text() == "/etc/roomsync/agent.toml\n"
    assert (root / "etc/roomsync/agent.toml").read_text() == (REPO / "config/agent.example.toml").read_text()
    unit = (root / "usr/lib/systemd/system/roomsync-agent.service").read_text()
    assert [line for line in unit.splitlines() if line.startswith("ExecStart=")] == [
        "ExecStart=/usr/bin/roomsync run"
    ]
    for script in ("postinst", "prerm", "postrm"):
        path = root / "DEBIAN" / script
        assert path.stat().st_mode & 0o111, script
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, script
    postinst = (root / "DEBIAN/postinst").read_text()
    assert "systemctl enable --now roomsync-agent.service" in postinst and "systemctl restart" in postinst
    assert "rm -rf /var/lib/roomsync /etc/roomsync" in (root / "DEBIAN/postrm").read_text()
    # Nothing built for this machine only: no console scripts, no byte code, no other machine's code.
    lib = root / "opt/roomsync/lib"
    assert not (lib / "bin").exists() and not list(lib.rglob("__pycache__"))
    assert build_deb.foreign_code(root, arch) == []
    elf = [p for p in lib.rglob("*.so") if p.read_bytes()[:4] == b"\x7fELF"]
    assert elf, "compiled dependencies (pydantic-core, cryptography…) are in the package"
    # Every file but the conffile is in md5sums.
    listed = {line.split("  ", 1)[1] for line in (root / "DEBIAN/md5sums").read_text().splitlines()}
    files = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "DEBIAN" not in p.parts
    }
    assert listed == files - {"etc/roomsync/agent.toml"}


def test_the_amd64_agent_runs_on_debians_python_from_the_package(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    require(DEBIAN_PYTHON.exists(), "Debian's python3 (/usr/bin/python3)")
    root = unpack(packages["amd64"], tmp_path / "root")
    launcher = (root / "usr/bin/roomsync").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    # The launcher as installed, its library path pointed at the unpacked tree.
    code = launcher.replace('"/opt/roomsync/lib"', repr(str(root / "opt/roomsync/lib"))).split("\n", 1)[1]
    for args in (["--version"], ["check-config", "--config", str(root / "etc/roomsync/agent.toml")]):
        done = subprocess.run(
            [str(DEBIAN_PYTHON), "-I", "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr[-2000:])
    assert (
        build_deb.version()
        in subprocess.run(
            [str(DEBIAN_PYTHON), "-I", "-c", code, "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    )


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_lintian_finds_no_error(packages: dict[str, Path], arch: str) -> None:
    """lintian (Debian's package checker) on each package: no error (and lintian itself ran to
    its end: exit 0 with ``--fail-on error``); the overrides the package ships (/opt, the
    wheels' unstripped extensions) say why each is its design."""
    require(
        subprocess.run(["which", "lintian"], capture_output=True).returncode == 0, "lintian (Debian: lintian)"
    )
    done = subprocess.run(
        ["lintian", "--fail-on", "error", "--no-tag-display-limit", str(packages[arch])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors[:20])
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_pip_build_deb_says_what_to_install(tmp_path: Path) -> None:
    """An operator's plain Debian 12 has no pip: a clear line, exit 2, nothing built."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    done = subprocess.run(
        [str(tmp_path / "venv/bin/python"), "-m", "tools.build_deb", "--out", str(tmp_path / "dist")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "has no pip" in done.stderr and "python3-pip" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "dist").exists()
