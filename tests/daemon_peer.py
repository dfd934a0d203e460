"""``roomsync run`` as systemd runs it, for the daemon's tests and benchmark: a subprocess
(``python -m agent run --config F``) with a notify socket standing in for systemd's
(``$NOTIFY_SOCKET``, an AF_UNIX datagram socket) and ``$WATCHDOG_USEC``; its API on a free
loopback port (or a unix socket); its log (JSON lines on stderr) in a file.

    with NotifySocket.make() as notify:
        daemon = start_daemon(config_path, notify, log_path)   # waits for READY=1
        try:
            daemon.get("/readyz")
        finally:
            daemon.stop()

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
#: No proxy from the environment between the tests and the daemon.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escaping is TOML's)."""
    return json.dumps(str(value))


def short_dir(prefix: str = "rs-") -> Path:
    """A directory with a short path, for AF_UNIX addresses (108 bytes at most)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class NotifySocket:
    """A bound AF_UNIX datagram socket collecting every notify message, with the time it
    arrived (``time.monotonic``), in a background thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    @classmethod
    def make(cls) -> NotifySocket:
        return cls(short_dir("rs-notify-") / "notify")

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append((time.monotonic(), data.decode("utf-8", "replace")))
                self._changed.notify_all()

    def lines(self, since: float = 0.0) -> list[tuple[float, str]]:
        """Every ``KEY=VALUE`` line received at or after ``since``, with its arrival time."""
        with self._changed:
            return [(at, line) for at, text in self.messages if at >= since for line in text.split("\n")]

    def count(self, line: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for at, got in self.lines(since) if got == line and at <= until)

    def wait_for(self, line: str, timeout: float, since: float = 0.0) -> float | None:
        """When ``line`` (e.g. ``READY=1``) first arrived at or after ``since``; None when it
        has not within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for at, got in self.lines(since):
                    if got == line:
                        return at
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    data: bytes | None = None,
    timeout: float = 10.0,
) -> Reply:
    request = urllib.request.Request(url, method=method, data=data)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return Reply(reply.status, reply.read(), dict(reply.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[bytes]
    config: Path
    notify: NotifySocket
    log: Path
    url: str
    started: float
    ready_at: float | None = None
    token: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, **kwargs: Any) -> Reply:
        kwargs.setdefault("token", self.token)
        return http(self.url + path, **kwargs)

    def status(self) -> dict[str, Any]:
        reply = self.get("/v1/status")
        assert reply.status == 200, reply.text
        return dict(reply.json())

    def source(self, name: str) -> dict[str, Any]:
        [found] = [s for s in self.status()["sources"] if s["name"] == name]
        return dict(found)

    def wait_until(self, condition: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
        """Poll ``condition`` until it returns something true; that value, or the last false
        one after ``timeout`` seconds (the daemon exiting ends the wait early)."""
        end = time.monotonic() + timeout
        while True:
            value = condition()
            if value or time.monotonic() >= end or self.proc.poll() is not None:
                return value
            time.sleep(step)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running after ``timeout``, seconds taken)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - t0

    def stop(self) -> None:
        stop_process(self.proc)


def daemon_env(notify: NotifySocket | None, watchdog_usec: int | None = 1_000_000) -> dict[str, str]:
    """The environment systemd gives a ``Type=notify`` service, minus this machine's
    ``ROOMSYNC_*`` overrides and proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROOMSYNC_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def launch(
    config: Path,
    notify: NotifySocket | None,
    log: Path,
    *,
    args: Sequence[str] = (),
    watchdog_usec: int | None = 1_000_000,
    nofile: int | None = None,
) -> subprocess.Popen[bytes]:
    """``nofile``: the daemon's file-descriptor limit (systemd gives a service 1,024 unless
    its unit says ``LimitNOFILE=``)."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )

    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), *args],
            cwd=REPO,
            env=daemon_env(notify, watchdog_usec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=limit if nofile is not None else None,
        )


def start_daemon(
    config: Path,
    notify: NotifySocket,
    log: Path,
    *,
    url: str,
    args: Sequence[str] = (),
    watchdog_usec: int | None = 1_000_000,
    ready_timeout: float = 20.0,
    token: str | None = None,
    nofile: int | None = None,
) -> RunningDaemon:
    """Start the daemon and wait for ``READY=1``; raises (after stopping it) when it exits or
    does not get ready."""
    since = time.monotonic()
    proc = launch(config, notify, log, args=args, watchdog_usec=watchdog_usec, nofile=nofile)
    daemon = RunningDaemon(proc, config, notify, log, url, since, token=token)
    end = since + ready_timeout
    while time.monotonic() < end:
        at = notify.wait_for("READY=1", 0.1, since)
        if at is not None:
            daemon.ready_at = at
            return daemon
        if proc.poll() is not None:
            raise RuntimeError(f"roomsync run exited with {proc.returncode}: {daemon.log_text()[-3000:]}")
    daemon.stop()
    raise RuntimeError(
        f"roomsync run sent no READY=1 within {ready_timeout:g} s: {daemon.log_text()[-3000:]}"
    )
