"""A real Mosquitto broker on 127.0.0.1 for the MQTT output's tests (issue [14/16]): a plain
listener and, with a test CA, a TLS one; a password file (no anonymous access); no
persistence, so that a restart loses what it held, as a broker that crashed does.

    with Mosquitto.start(tmp_path, users={"agent": "s3cret"}, tls=ca) as broker:
        broker.port, broker.tls_port
        broker.restart()                 # the same ports, the same users

``mosquitto_pub`` and ``mosquitto_sub`` (Debian ``mosquitto-clients``) stand in for the clients
in the tests of the broker itself (tests/test_mqtt_peer.py). Everything listens on 127.0.0.1
only; the broker is stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import stop_process
from tests.shared import require_tool
from tools.portal_standin import CertAuthority

LOOPBACK = "127.0.0.1"
#: The user the test brokers (the ``broker`` fixture, tests/conftest.py) accept.
USER, PASSWORD = "roomsync-agent", "s3cret-broker-pw"


def require_mosquitto() -> tuple[str, str, str, str]:
    """The broker, ``mosquitto_passwd``, ``mosquitto_pub`` and ``mosquitto_sub``: a failure
    under CI when one is missing, a skip otherwise (tests.shared.missing)."""
    return (
        require_tool("mosquitto", "mosquitto", path="/usr/sbin"),
        require_tool("mosquitto_passwd", "mosquitto"),
        require_tool("mosquitto_pub", "mosquitto-clients"),
        require_tool("mosquitto_sub", "mosquitto-clients"),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Mosquitto:
    """One broker in ``directory`` (its configuration, password file, certificates, log)."""

    directory: Path
    port: int
    tls_port: int | None = None
    ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        users: Mapping[str, str],
        tls: CertAuthority | None = None,
        acl: str | None = None,
    ) -> Mosquitto:
        """``acl``: the text of a Mosquitto ACL file (``user NAME`` / ``topic write T`` lines);
        none by default (every user may publish anywhere)."""
        broker, passwd, _, _ = require_mosquitto()
        directory.mkdir(parents=True, exist_ok=True)
        passwords = directory / "passwords"
        passwords.write_text("")
        for user, password in users.items():
            subprocess.run([passwd, "-b", str(passwords), user, password], check=True, capture_output=True)
        port = _free_port()
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwords}",
            "persistence false",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {port} {LOOPBACK}",
        ]
        if acl is not None:
            (directory / "acl").write_text(acl)
            lines.insert(3, f"acl_file {directory / 'acl'}")
        tls_port = ca = None
        if tls is not None:
            files = tls.server_tls()
            tls_port, ca = _free_port(), files.ca
            lines += [
                f"listener {tls_port} {LOOPBACK}",
                f"cafile {files.ca}",
                f"certfile {files.cert}",
                f"keyfile {files.key}",
            ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to user mosquitto, who cannot read the files
        (directory / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        found = cls(directory, port, tls_port, ca)
        found._launch(broker)
        return found

    def _launch(self, broker: str | None = None) -> None:
        broker = broker or require_mosquitto()[0]
        self.proc = subprocess.Popen(
            [broker, "-c", str(self.directory / "mosquitto.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{self.log()[-2000:]}")
            if _accepts(self.port) and (self.tls_port is None or _accepts(self.tls_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen within 10 s: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return (self.directory / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def retained(self, topic: str, *, user: str = USER, password: str = PASSWORD, wait: float = 5) -> str:
        """What a subscriber that comes now gets first on ``topic`` (its retained message),
        read by ``mosquitto_sub`` as a client would; "" when nothing came within ``wait`` s."""
        sub = require_mosquitto()[3]
        command = [sub, "-h", LOOPBACK, "-p", str(self.port), "-u", user, "-P", password, "-t", topic]
        got = subprocess.run(
            [*command, "-C", "1", "-W", f"{wait:g}"], capture_output=True, text=True, timeout=wait + 15
        )
        return got.stdout.strip()

    def restart(self) -> None:
        """Stop, then start on the same ports with the same users (and nothing it held)."""
        self.stop()
        self._launch()

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
