"""agent.sdnotify against real AF_UNIX datagram sockets (a path in a temporary directory and an
abstract-namespace name), standing in for systemd's notification socket."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import STATUS_MAX_CHARS, Notifier, status_line, watchdog_interval


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"roomsync-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    yield "@" + name, sock
    sock.close()


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def test_ready_status_watchdog_stopping_are_the_exact_datagrams(
    path_socket: tuple[str, socket.socket],
) -> None:
    path, sock = path_socket
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert _recv(sock) == b"READY=1"
        assert notifier.ready("3 devices, portal ok") is True
        assert _recv(sock) == b"READY=1\nSTATUS=3 devices, portal ok"
        assert notifier.status("scanning\nusb") is True
        assert _recv(sock) == b"STATUS=scanning usb"
        assert notifier.watchdog() is True
        assert _recv(sock) == b"WATCHDOG=1"
        assert notifier.stopping() is True
        assert _recv(sock) == b"STOPPING=1"
        assert notifier.stopping("SIGTERM") is True
        assert _recv(sock) == b"STOPPING=1\nSTATUS=SIGTERM"


def test_abstract_namespace_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, sock = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.address == "\0" + name[1:]
    assert notifier.ready() is True
    assert _recv(sock) == b"READY=1"
    notifier.close()


def test_reloading_carries_the_monotonic_time(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _recv(sock).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and value.isdigit()
    assert before <= int(value) <= after
    assert len(lines) == 2
    assert notifier.reloading("reloading /etc/roomsync/agent.toml") is True
    assert _recv(sock).decode().split("\n")[2] == "STATUS=reloading /etc/roomsync/agent.toml"
    notifier.close()


def test_status_is_one_capped_line() -> None:
    assert status_line("a\nb\r\n\tc  d\x00e\x7f") == "a b c d e"
    long = status_line("x" * 1000)
    assert len(long) == STATUS_MAX_CHARS and long.endswith("…")
    assert status_line("é" * 10, limit=5) == "éééé…"
    assert status_line("short") == "short"


def test_long_multiline_status_arrives_as_one_line(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.status("Traceback:\n" + "frame\n" * 500) is True
    data = _recv(sock).decode()
    assert data.startswith("STATUS=Traceback: frame frame")
    assert "\n" not in data and len(data) == len("STATUS=") + STATUS_MAX_CHARS
    notifier.close()


def test_send_rejects_fields_that_would_break_the_protocol(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    with pytest.raises(ValueError):
        notifier.send(STATUS="two\nlines")
    with pytest.raises(ValueError):
        notifier.send(**{"A=B": "1"})
    with pytest.raises(ValueError):
        notifier.send()
    assert notifier.send(READY=1, STATUS="x", EXTRA_FIELD="y") is True
    assert _recv(sock) == b"READY=1\nSTATUS=x\nEXTRA_FIELD=y"
    notifier.close()


@pytest.mark.parametrize("value", [None, "", "relative/path", "@", "vsock:2:1234"])
def test_no_usable_socket_is_a_no_op(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    notifier = Notifier(env)
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False


def test_reads_the_process_environment_by_default(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.watchdog() is True
    assert _recv(sock) == b"WATCHDOG=1"
    notifier.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Notifier().watchdog() is False


def test_vanished_socket_returns_false_without_raising(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready() is True
    sock.close()
    assert notifier.watchdog() is False  # the file is there, nobody listens
    os.unlink(path)
    assert notifier.watchdog() is False  # the file is gone
    assert notifier.stopping("bye") is False
    sock = _receiver(path)  # systemd came back at the same path
    assert notifier.watchdog() is True
    assert _recv(sock) == b"WATCHDOG=1"
    sock.close()
    notifier.close()


def test_a_path_that_is_not_a_socket_returns_false(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a socket")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "plain")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing-dir" / "notify")}).ready() is False


def test_a_full_reader_queue_does_not_hang_the_sender(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = _receiver(path)  # never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": path}, timeout=0.05)
    results: list[bool] = []

    def flood() -> None:
        for _ in range(100_000):
            results.append(notifier.watchdog())
            if not results[-1]:
                return

    worker = threading.Thread(target=flood, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(5.0)
    assert not worker.is_alive(), "a send blocked although the socket has a timeout"
    assert results[-1] is False and results.count(True) >= 1
    assert time.monotonic() - started < 5.0
    sock.close()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, 0.5),
        ({"WATCHDOG_USEC": "3"}, 1.5e-6),
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_checks_our_own_pid_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval() == 10.0
