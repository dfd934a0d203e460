"""Build the Debian package: ``scripts/build-deb [--arch amd64|arm64]`` ->
``dist/roomsync_<version>_<arch>.deb``, for either architecture on any machine, without
emulation: every dependency is taken as a wheel for CPython 3.11 on that architecture
(manylinux, glibc 2.17-2.36: Debian 12 has 2.36) or as a pure-Python wheel.

What the package holds (issue [16/16]):

* ``/opt/roomsync/lib``: roomsync and every dependency (``pip install --target``), no
  scripts, no byte code (``postinst`` compiles it, ``prerm`` removes it);
* ``/usr/bin/roomsync``: a launcher for Debian's ``python3`` (``-I``: no user site, no
  ``PYTHON*`` variables) with ``/opt/roomsync/lib`` first on its path;
* the unit ``/usr/lib/systemd/system/roomsync-agent.service`` (``systemd/``, with
  ``ExecStart=/usr/bin/roomsync run``), the sysusers file ``/usr/lib/sysusers.d/roomsync.conf``,
  the udev rule ``/usr/lib/udev/rules.d/70-roomsync.rules``;
* ``/etc/roomsync/agent.toml``, a conffile: ``config/agent.example.toml``;
* maintainer scripts: ``postinst`` creates the user (systemd-sysusers), reloads udev and
  systemd, enables and starts the service on install and restarts it on upgrade (a service
  the administrator disabled only if it runs; never enabled again); ``prerm`` stops it on
  remove (a reinstall starts it again as it was); ``postrm`` keeps ``/var/lib/roomsync`` and
  ``/etc/roomsync`` unless purged. Each acts on systemd only where it runs
  (``/run/systemd/system``).

It depends on Debian 12 packages only: ``python3 (>= 3.11)`` and ``(<< 3.12)`` (the wheels'
extensions are CPython 3.11's), ``libusb-1.0-0``, ``libc6``.

Nothing here runs as root or touches the system: the tree is staged in ``build/deb-<arch>``
and packed by ``dpkg-deb --root-owner-group``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Debian architecture -> the wheel platform tags that run on Debian 12 there.
PLATFORMS = {
    "amd64": ["manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 37))],
    "arm64": ["manylinux2014_aarch64", *(f"manylinux_2_{n}_aarch64" for n in range(17, 37))],
}
#: ELF ``e_machine`` of each architecture (the package may hold no other machine's code).
ELF_MACHINES = {"amd64": 0x3E, "arm64": 0xB7}
#: Debian 12 packages only: Python, libusb, and the C library the wheels' extensions link.
#: The wheels' compiled extensions are CPython 3.11's: no other python3 can load them (Debian 13's
#: is 3.13), so the package says so rather than install and fail to start.
DEPENDS = "python3 (>= 3.11), python3 (<< 3.12), libusb-1.0-0, libc6 (>= 2.17)"
MAINTAINER = "roomsync maintainers <roomsync@users.noreply.github.com>"
#: What lintian reports that is this package's design, each with why (lintian runs in CI).
LINTIAN_OVERRIDES = """\
# The agent and its Python libraries are one self-contained tree in /opt, as agents
# installed this way are (Debian's python3 runs it; nothing in /usr/lib/python3).
roomsync: dir-or-file-in-opt
# The libraries' compiled extensions are the wheels PyPI publishes, as published.
roomsync: unstripped-binary-or-object
"""
PREFIX = "/opt/roomsync"
LIB = f"{PREFIX}/lib"
UNIT = "roomsync-agent.service"

LAUNCHER = f"""#!/usr/bin/python3 -I
# roomsync, as the Debian package installs it: the agent and every library it uses are in
# {LIB}; nothing from the user's site or PYTHON* variables is read (-I).
import sys

sys.path.insert(0, "{LIB}")
from agent.cli import main  # noqa: E402

sys.exit(main())
"""

POSTINST = f"""#!/bin/sh
# roomsync postinst: the user, udev, systemd; enable and start on install, restart on upgrade.
# An upgrade (or a reinstall after remove) keeps what the administrator chose: an enabled
# service is restarted (started when it was stopped), a disabled one only if it runs.
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers roomsync.conf
    elif ! getent passwd roomsync >/dev/null; then
        adduser --system --group --no-create-home --home /nonexistent roomsync >/dev/null
    fi
    # /etc/roomsync/agent.toml holds no secret (secrets are credentials): readable by the agent.
    chgrp roomsync /etc/roomsync/agent.toml && chmod 0640 /etc/roomsync/agent.toml
    python3 -m compileall -q {LIB} >/dev/null 2>&1 || true
    if command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
        udevadm control --reload-rules || true
        udevadm trigger --subsystem-match=usb --attr-match=idVendor=046d || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        if [ -z "$2" ]; then
            systemctl enable --now {UNIT}
        else
            if systemctl is-enabled --quiet {UNIT}; then
                systemctl restart {UNIT}
            else
                systemctl try-restart {UNIT}
            fi
        fi
    elif [ -z "$2" ]; then
        # No running systemd (a chroot, an image being built): enabled for the next boot.
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /usr/lib/systemd/system/{UNIT} /etc/systemd/system/multi-user.target.wants/{UNIT}
    fi
fi
exit 0
"""

PRERM = f"""#!/bin/sh
# roomsync prerm: stop the service before its files go (remove); an upgrade restarts it later.
# Whether it is enabled stays as it was (purge forgets it), so a reinstall starts it again.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop {UNIT} || true
fi
find {LIB} -name __pycache__ -type d -prune -exec rm -rf {{}} + 2>/dev/null || true
exit 0
"""

POSTRM = f"""#!/bin/sh
# roomsync postrm: the store (/var/lib/roomsync) and the configuration (/etc/roomsync) stay
# unless purged.
set -e
if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/{UNIT}
    rm -rf /var/lib/roomsync /etc/roomsync /var/lib/private/roomsync
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
fi
exit 0
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: roomsync
Comment: roomsync is the project's own code. /opt/roomsync/lib also holds its Python
 dependencies as published on PyPI, each with its licence in its *.dist-info directory.

Files: *
Copyright: the roomsync authors
License: see /opt/roomsync/lib/*.dist-info for the bundled libraries
"""


def version() -> str:
    text = (REPO / "agent" / "__init__.py").read_text()
    found = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if found is None:
        raise SystemExit("build-deb: agent/__init__.py has no __version__")
    return found.group(1)


def run(*command: str | Path, **kw: object) -> None:
    print("build-deb: " + " ".join(map(str, command)), file=sys.stderr)
    subprocess.run([str(c) for c in command], check=True, **kw)  # type: ignore[call-overload]


def stage(arch: str, root: Path, wheels: Path) -> None:
    """Lay out the package's files in ``root``."""
    python = sys.executable
    wheels.mkdir(parents=True, exist_ok=True)
    run(python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO)
    [own] = sorted(wheels.glob(f"roomsync-{version()}-*.whl"))
    platforms = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
    lib = root / LIB.lstrip("/")
    run(
        python, "-m", "pip", "install", "-q", "--no-compile", "--no-warn-script-location",
        "--target", lib, "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
        "--abi", "cp311", *platforms, own,
    )  # fmt: skip
    shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts for the build machine
    for cache in lib.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    install(root / "usr/bin/roomsync", LAUNCHER, 0o755)
    unit = (REPO / "systemd" / UNIT).read_text()
    unit = re.sub(r"^ExecStart=.*$", "ExecStart=/usr/bin/roomsync run", unit, count=1, flags=re.M)
    install(root / "usr/lib/systemd/system" / UNIT, unit)
    install(root / "usr/lib/sysusers.d/roomsync.conf", (REPO / "systemd/roomsync.sysusers.conf").read_text())
    install(root / "usr/lib/udev/rules.d/70-roomsync.rules", (REPO / "systemd/70-roomsync.rules").read_text())
    install(root / "etc/roomsync/agent.toml", (REPO / "config/agent.example.toml").read_text())
    docs = root / "usr/share/doc/roomsync"
    install(docs / "copyright", COPYRIGHT)
    install(root / "usr/share/lintian/overrides/roomsync", LINTIAN_OVERRIDES)
    changelog = (
        f"roomsync ({version()}) stable; urgency=medium\n\n  * Built from the repository.\n\n"
        f" -- {MAINTAINER}  Thu, 01 Jan 2026 00:00:00 +0000\n"
    )
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "changelog.Debian.gz").write_bytes(gzip.compress(changelog.encode(), mtime=0))


def install(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def control(root: Path, arch: str) -> None:
    meta = root / "DEBIAN"
    meta.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and meta not in p.parents)
    install(
        meta / "control",
        f"Package: roomsync\nVersion: {version()}\nArchitecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {max(1, size // 1024)}\n"
        f"Depends: {DEPENDS}\n"
        "Section: admin\nPriority: optional\n"
        "Homepage: https://example.invalid/roomsync\n"
        "Description: inventory agent for Logitech meeting-room hardware\n"
        " roomsync finds the Rally Bars, Rally systems, MeetUps, Taps, Scribes and webcams\n"
        " on its host's USB and on the LAN, reads their serials, firmware and health,\n"
        " places them in rooms, works out warranty and service coverage, and pushes the\n"
        " inventory to a portal. It runs as the systemd service roomsync-agent.\n",
    )
    install(meta / "conffiles", "/etc/roomsync/agent.toml\n")
    install(meta / "postinst", POSTINST, 0o755)
    install(meta / "prerm", PRERM, 0o755)
    install(meta / "postrm", POSTRM, 0o755)
    sums = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and meta not in p.parents):
        relative = path.relative_to(root).as_posix()
        if relative != "etc/roomsync/agent.toml":  # conffiles are not listed
            sums.append(
                f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n"
            )  # md5sums: dpkg's format
    install(meta / "md5sums", "".join(sums))


def foreign_code(root: Path, arch: str) -> list[str]:
    """The ELF files in ``root`` built for another machine than ``arch``'s."""
    wrong = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                head = fh.read(20)
            if head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") != ELF_MACHINES[arch]:
                wrong.append(path.relative_to(root).as_posix())
    return wrong


def build(arch: str, out: Path, work: Path) -> Path:
    root = work / f"deb-{arch}" / "root"
    shutil.rmtree(root.parent, ignore_errors=True)
    stage(arch, root, root.parent / "wheels")
    wrong = foreign_code(root, arch)
    if wrong:
        raise SystemExit(f"build-deb: {arch} package would hold code for another machine: {wrong[:5]}")
    control(root, arch)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"roomsync_{version()}_{arch}.deb"
    os.umask(0o022)
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb, stdout=subprocess.DEVNULL)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build-deb", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="amd64", help="Debian architecture")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes (dist/)")
    parser.add_argument("--work", type=Path, default=REPO / "build", help="staging directory (build/)")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        print("build-deb: dpkg-deb is missing (Debian package dpkg)", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pip") is None:
        print(
            f"build-deb: {sys.executable} has no pip: run ./scripts/bootstrap (a .venv), or install"
            " Debian's python3-pip",
            file=sys.stderr,
        )
        return 2
    try:
        print(build(args.arch, args.out, args.work))
    except subprocess.CalledProcessError as exc:  # pip's own words are above (no index reachable…)
        command = " ".join(map(str, exc.cmd[:4]))
        print(f"build-deb: {command} … failed (exit {exc.returncode}): nothing was built", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
