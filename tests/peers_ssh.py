"""A real OpenSSH ``sshd`` on 127.0.0.1 for the SSH source's tests (test-peers.md, "SSH").

sshd needs ``/run/sshd``; it runs inside ``unshare -m`` with a private directory bound over
``/run``, so the host's ``/run`` is untouched. Key authentication only. It listens on two
ports: on the first, a normal sshd with the in-process SFTP server (what a Linux room PC
offers); on the second, every session runs a stand-in for ``powershell.exe``
(``ForceCommand``) that records the command line the client sent and answers with what the
test chose, since Windows cannot run here.

Everything lives in one world-readable directory so that sshd can log in a second, unprivileged
user (``nobody``, SFTP only) to read files that only root may read. The daemon is stopped by
its PID.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.processes import stop_process
from tests.shared import BOOTSTRAP, require, require_tool

SSHD = Path("/usr/sbin/sshd")
SKIP_REASON = f"{SSHD} is not installed (Debian package openssh-server; {BOOTSTRAP})"
LOOPBACK = "127.0.0.1"
#: The unprivileged user of the permission tests (SFTP only: its shell is nologin).
UNPRIVILEGED_USER = "nobody"

# Positional arguments, not interpolation: $1 = the private /run, $2 = sshd_config.
_RUN_SSHD = 'mount --bind "$1" /run && mkdir -p /run/sshd && exec "$3" -D -e -f "$2"'

_FAKE_POWERSHELL = """#!/bin/sh
# Stands in for powershell.exe on a Windows PC: records the command line the client sent,
# then answers with the reply the test chose.
printf '%s\\n' "$SSH_ORIGINAL_COMMAND" >> "{dir}/commands.log"
cat "{dir}/reply.stdout"
cat "{dir}/reply.stderr" >&2
exit "$(cat "{dir}/reply.status")"
"""


def require_sshd() -> None:
    """Stop the calling test (or fixture) when the real peer cannot run here: a failure
    under CI, a skip otherwise (tests.shared.missing)."""
    require(SSHD.is_file(), SKIP_REASON)
    require_tool("ssh-keygen", "openssh-client")
    require_tool("unshare", "util-linux")
    require(os.geteuid() == 0, "sshd runs inside unshare -m, which needs root (CI runs as root)")


def keygen(path: Path, *, passphrase: str = "") -> Path:
    """A new Ed25519 key pair at ``path`` / ``path.pub``; returns the private key's path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "roomsync-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def fingerprint_of(public_key: Path) -> str:
    """``SHA256:…`` as OpenSSH's own ``ssh-keygen -l`` prints it."""
    # "256 SHA256:abc… comment (ED25519)"
    return subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public_key)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split()[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def known_hosts_line(port: int, public_key: Path) -> str:
    """The known_hosts line ``ssh-keyscan -p PORT 127.0.0.1`` would print for this key."""
    key_type, body = public_key.read_text().split()[:2]
    return f"[{LOOPBACK}]:{port} {key_type} {body}\n"


def keyscan(port: int) -> str:
    """What an operator adds to known_hosts: ``ssh-keyscan -H`` (hashed host names)."""
    return subprocess.run(
        ["ssh-keyscan", "-H", "-p", str(port), LOOPBACK],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def write_known_hosts(path: Path, *lines: str) -> Path:
    path.write_text("".join(lines))
    return path


def world_dir(path: Path) -> Path:
    """Make ``path`` a directory every user may enter and read (for the unprivileged user)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@dataclass
class Sshd:
    """A running sshd: ``port`` serves SFTP, ``windows_port`` runs the PowerShell stand-in."""

    workdir: Path
    port: int
    windows_port: int
    host_key: Path
    client_key: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def windows_reply(self, stdout: bytes, *, stderr: bytes = b"", status: int = 0) -> None:
        """What the PowerShell stand-in prints for the next sessions."""
        (self.workdir / "reply.stdout").write_bytes(stdout)
        (self.workdir / "reply.stderr").write_bytes(stderr)
        (self.workdir / "reply.status").write_text(f"{status}\n")

    def windows_commands(self) -> list[str]:
        log = self.workdir / "commands.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop(self) -> None:
        """Stop the daemon by its PID (unshare and sh exec into sshd: one process)."""
        stop_process(self.process)


def start_sshd(workdir: Path) -> Sshd:
    """Start sshd on two free loopback ports with fresh keys in ``workdir`` (world-readable)."""
    world_dir(workdir)
    host_key = keygen(workdir / "host_key")
    client_key = keygen(workdir / "client_key")
    port, windows_port = free_port(), free_port()
    fake = workdir / "fake-powershell"
    fake.write_text(_FAKE_POWERSHELL.format(dir=workdir))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    config = workdir / "sshd_config"
    config.write_text(f"""\
ListenAddress {LOOPBACK}:{port}
ListenAddress {LOOPBACK}:{windows_port}
HostKey {host_key}
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {client_key}.pub
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
LogLevel VERBOSE
MaxStartups 100
Subsystem sftp internal-sftp
Match LocalPort {windows_port}
    ForceCommand {fake}
""")
    rundir = world_dir(workdir / "run")
    log_path = workdir / "sshd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                _RUN_SSHD,
                "sh",
                str(rundir),
                str(config),
                str(SSHD),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    sshd = Sshd(workdir, port, windows_port, host_key, client_key, process, log_path)
    sshd.windows_reply(b"{}")
    _wait_listening(sshd)
    return sshd


def _wait_listening(sshd: Sshd, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sshd.process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {sshd.process.returncode}: {sshd.log_text()}")
        if "Server listening" in sshd.log_text() and all(_accepts(p) for p in (sshd.port, sshd.windows_port)):
            return
        time.sleep(0.02)
    sshd.stop()
    raise RuntimeError(f"sshd did not listen within {timeout} s: {sshd.log_text()}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False
