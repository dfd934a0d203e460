"""Logging to journald's native protocol when stderr is the journal (agent/log.py).

A real AF_UNIX datagram socket in tmp_path stands in for /run/systemd/journal/socket, and a
real file is fd 2 (and ``sys.stderr``), with ``$JOURNAL_STREAM`` naming its device and inode
as systemd does. Datagrams are read back with a parser of the native format written here
from https://systemd.io/JOURNAL_NATIVE_PROTOCOL/.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest
import structlog

from agent import log
from agent.log import configure, get_logger

#: journald's rule for a field a client may send (journal_field_valid()).
FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
FIXED_TIME = "2025-01-02T03:04:05.000000Z"


def parse_native(data: bytes) -> list[tuple[str, bytes]]:
    """The fields of one datagram, in order: ``NAME=value\\n``, or ``NAME\\n`` + little-endian
    u64 size + value + ``\\n`` (the binary form). Fails on anything else."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            assert len(value) == size and data[start + size : start + size + 1] == b"\n", "bad binary field"
            pos = start + size + 1
        text = name.decode("ascii")
        assert FIELD_NAME.fullmatch(text), f"invalid field name {text!r}"
        fields.append((text, value))
    return fields


@dataclass
class Entry:
    raw: bytes
    fields: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.fields[name]


class Journal:
    """The stand-in journald socket, and a real file that becomes fd 2 and ``sys.stderr``.

    The file replaces stderr in the test itself (:meth:`attach`): pytest's own capture puts
    its file back on fd 2 and in ``sys.stderr`` between a fixture's setup and the test."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "journal.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.server.bind(str(self.path))
        self.server.settimeout(5)
        self.stderr_path = tmp_path / "stderr.txt"
        self._monkeypatch = monkeypatch
        self._stderr: TextIO | None = None
        self._saved_fd2: int | None = None

    def attach(self) -> None:
        """A real file is fd 2 and sys.stderr; $JOURNAL_STREAM names it, as systemd's does
        its stream."""
        if self._stderr is not None:
            return
        self._stderr = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        sys.stderr.flush()
        self._saved_fd2 = os.dup(2)
        os.dup2(self._stderr.fileno(), 2)
        self._monkeypatch.setattr(sys, "stderr", self._stderr)
        st = os.fstat(2)
        self._monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")

    def configure(self, level: str = "info", fmt: str = "auto") -> None:
        self.attach()
        configure(level, fmt)

    def close(self) -> None:
        if self._saved_fd2 is not None:
            os.dup2(self._saved_fd2, 2)
            os.close(self._saved_fd2)
        if self._stderr is not None:
            self._stderr.close()
        self.server.close()

    def entries(self, count: int) -> list[Entry]:
        out = []
        for _ in range(count):
            raw = self.server.recv(64 * 1024 * 1024)
            pairs = parse_native(raw)
            names = [name for name, _ in pairs]
            assert len(names) == len(set(names)), names
            out.append(Entry(raw, {name: value.decode("utf-8") for name, value in pairs}))
        return out

    def nothing_more(self) -> bool:
        self.server.setblocking(False)
        try:
            self.server.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        finally:
            self.server.settimeout(5)
        return False

    def stderr_raw(self) -> list[str]:
        assert self._stderr is not None
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8").splitlines()

    def stderr_lines(self) -> list[str]:
        """The lines that fell back to stderr, each without the ``<N>`` priority prefix the
        journal's stream takes off (every one must have it)."""
        lines = []
        for raw in self.stderr_raw():
            match = re.fullmatch(r"<([0-7])>(.*)", raw)
            assert match, f"no priority prefix: {raw[:80]!r}"
            lines.append(match[2])
        return lines


class FixedTime:
    """Stands in for structlog's TimeStamper: the same line from two pipelines."""

    def __init__(self, **_kw: Any) -> None:
        pass

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        event["timestamp"] = FIXED_TIME
        return event


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Journal]:
    saved_config = structlog.get_config()
    stand_in = Journal(tmp_path, monkeypatch)
    monkeypatch.setattr(log, "JOURNAL_SOCKET", str(stand_in.path))
    monkeypatch.setattr(structlog.processors, "TimeStamper", FixedTime)
    log._JOURNAL.reset()
    try:
        yield stand_in
    finally:
        structlog.configure(**saved_config)
        log._JOURNAL.reset()
        stand_in.close()


def reference_line(event: str, level: str = "info", **kw: Any) -> str:
    """The line today's JSON logging writes for this event (same fixed timestamp)."""
    stream = io.StringIO()
    configure("debug", "json", stream)
    getattr(get_logger(), level)(event, **kw)
    return stream.getvalue().rstrip("\n")


def test_fields_and_priority_per_level(journal: Journal) -> None:
    journal.configure("debug")
    logger = get_logger()
    logger.debug("probe.debug", n=1)
    logger.info("probe.info", n=2)
    logger.warning("probe.warning", n=3)
    logger.error("probe.error", n=4)
    logger.critical("probe.critical", n=5)
    entries = journal.entries(5)
    assert [e["PRIORITY"] for e in entries] == ["7", "6", "4", "3", "2"]
    assert [e["ROOMSYNC_EVENT"] for e in entries] == [
        "probe.debug",
        "probe.info",
        "probe.warning",
        "probe.error",
        "probe.critical",
    ]
    assert [e["ROOMSYNC_LEVEL"] for e in entries] == ["debug", "info", "warning", "error", "critical"]
    assert all(e["SYSLOG_IDENTIFIER"] == "roomsync" for e in entries)
    assert [e["ROOMSYNC_N"] for e in entries] == ["1", "2", "3", "4", "5"]
    assert "ROOMSYNC_TIMESTAMP" not in entries[0].fields  # journald stamps the entry itself
    assert json.loads(entries[0]["MESSAGE"])["timestamp"] == FIXED_TIME  # the line keeps it
    assert journal.nothing_more() and journal.stderr_lines() == []


def test_message_is_the_json_line_and_values_are_strings_or_compact_json(journal: Journal) -> None:
    kw: dict[str, Any] = {
        "room": "Huddle 3",
        "devices": 3,
        "ok": True,
        "missing": None,
        "ratio": 0.5,
        "serials": ["A1", "B2"],
        "versions": {"fw": "1.2", "hub": 4},
        "quoted": 'say "hi"',
    }
    expected = reference_line("usb.scan.done", **kw)
    journal.configure("info")
    get_logger().info("usb.scan.done", **kw)
    [entry] = journal.entries(1)
    assert entry["MESSAGE"] == expected
    assert json.loads(entry["MESSAGE"])["room"] == "Huddle 3"
    assert entry["ROOMSYNC_ROOM"] == "Huddle 3"  # a string as it is, not JSON-quoted
    assert entry["ROOMSYNC_QUOTED"] == 'say "hi"'
    assert entry["ROOMSYNC_DEVICES"] == "3"
    assert entry["ROOMSYNC_OK"] == "true"
    assert entry["ROOMSYNC_MISSING"] == "null"
    assert entry["ROOMSYNC_RATIO"] == "0.5"
    assert entry["ROOMSYNC_SERIALS"] == '["A1","B2"]'
    assert entry["ROOMSYNC_VERSIONS"] == '{"fw":"1.2","hub":4}'
    assert b"MESSAGE=" + expected.encode() + b"\n" in entry.raw  # the plain form: no newline in it


def test_a_value_with_a_newline_uses_the_binary_form(journal: Journal) -> None:
    journal.configure("info")
    detail = "first line\nsecond line\n"
    get_logger().warning("ssh.banner", detail=detail)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("source.run.failed")
    banner, failed = journal.entries(2)
    size = struct.pack("<Q", len(detail.encode()))
    assert b"\nROOMSYNC_DETAIL\n" + size + detail.encode() + b"\n" in banner.raw
    assert b"ROOMSYNC_DETAIL=" not in banner.raw
    assert banner["ROOMSYNC_DETAIL"] == detail
    assert "\n" not in banner["MESSAGE"] and json.loads(banner["MESSAGE"])["detail"] == detail
    assert failed["PRIORITY"] == "3"
    traceback = failed["ROOMSYNC_EXCEPTION"]
    assert "Traceback" in traceback and "RuntimeError: boom" in traceback
    assert b"\nROOMSYNC_EXCEPTION\n" in failed.raw


def test_secrets_stay_masked(journal: Journal) -> None:
    journal.configure("info")
    get_logger().info(
        "portal.push",
        token="abc123",
        community="s3cret-community",
        token_file="/etc/roomsync/portal.token",
        headers={"Authorization": "Bearer abc123"},
    )
    [entry] = journal.entries(1)
    assert entry["ROOMSYNC_TOKEN"] == entry["ROOMSYNC_COMMUNITY"] == "********"
    assert entry["ROOMSYNC_HEADERS"] == '{"Authorization":"********"}'
    assert entry["ROOMSYNC_TOKEN_FILE"] == "/etc/roomsync/portal.token"
    assert b"abc123" not in entry.raw and b"s3cret" not in entry.raw


def test_keys_are_sanitised_to_journal_field_names(journal: Journal) -> None:
    journal.configure("info")
    long_key = "k" * 100
    keys = {"snmp-host": 1, "a.b c": 2, "héllo": 3, "_private": 4, "9lives": 5, long_key: 6, "MixedCase": 7}
    get_logger().info("keys", **keys)
    [entry] = journal.entries(1)
    assert entry["ROOMSYNC_SNMP_HOST"] == "1"
    assert entry["ROOMSYNC_A_B_C"] == "2"
    assert entry["ROOMSYNC_H_LLO"] == "3"
    assert entry["ROOMSYNC__PRIVATE"] == "4"
    assert entry["ROOMSYNC_9LIVES"] == "5"
    assert entry[("ROOMSYNC_" + "K" * 100)[:64]] == "6"
    assert entry["ROOMSYNC_MIXEDCASE"] == "7"
    assert all(FIELD_NAME.fullmatch(name) for name in entry.fields)  # parse_native checks it too


def test_no_socket_falls_back_to_stderr(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "JOURNAL_SOCKET", str(journal.path.with_name("absent.sock")))
    expected = reference_line("daemon.ready", listen="127.0.0.1:8765")
    journal.configure("info")
    get_logger().info("daemon.ready", listen="127.0.0.1:8765")  # must not raise
    get_logger().error("store.write.failed", error="disk full")
    assert journal.stderr_lines() == [
        expected,
        reference_line("store.write.failed", "error", error="disk full"),
    ]
    assert [line[:3] for line in journal.stderr_raw()] == ["<6>", "<3>"]  # `journalctl -p` finds them
    assert journal.nothing_more()
    assert log._JOURNAL.send(b"MESSAGE=x\n") is False  # a refusal, not an exception


def test_more_fields_than_journald_keeps_falls_back(journal: Journal) -> None:
    """journald drops a whole entry of more than 1024 fields: such an event goes to stderr."""
    journal.configure("info")
    many = {f"k{i}": i for i in range(1100)}
    get_logger().info("many.keys", **many)
    [line] = journal.stderr_lines()
    assert json.loads(line)["k1099"] == 1099
    assert journal.nothing_more()


def test_stderr_not_the_journal_stream_keeps_json_lines_on_stderr(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.attach()
    st = os.fstat(2)
    expected = reference_line("usb.scan.done", devices=1)
    # Set by systemd for the service, but this process's stderr was redirected elsewhere.
    for stale in (f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev + 1}:{st.st_ino}", "garbage", ""):
        monkeypatch.setenv("JOURNAL_STREAM", stale)
        configure("info", "auto")
        get_logger().info("usb.scan.done", devices=1)
    monkeypatch.delenv("JOURNAL_STREAM")
    configure("info", "json")
    get_logger().info("usb.scan.done", devices=1)
    assert journal.stderr_raw() == [expected] * 5  # as ever: no prefix off the journal
    assert journal.nothing_more()


def test_console_format_and_a_given_stream_are_not_sent(journal: Journal) -> None:
    journal.configure("info", "console")
    get_logger().info("usb.scan.done", devices=1)
    [line] = journal.stderr_raw()
    assert "usb.scan.done" in line and not line.startswith(("{", "<"))
    stream = io.StringIO()
    configure("info", "auto", stream)
    get_logger().info("usb.scan.done", devices=2)
    assert json.loads(stream.getvalue())["devices"] == 2
    assert journal.nothing_more()


def test_a_datagram_too_large_falls_back_to_stderr(journal: Journal) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
    largest = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # capped by net.core.wmem_max
    probe.close()
    journal.configure("info")
    big = "x" * (largest + 1024 * 1024)
    get_logger().info("big.event", blob=big)
    get_logger().info("small.event")
    [line] = journal.stderr_lines()
    assert json.loads(line)["blob"] == big
    [small] = journal.entries(1)
    assert small["ROOMSYNC_EVENT"] == "small.event"
    assert journal.nothing_more()


def test_a_full_journal_never_blocks_and_loses_no_line(journal: Journal) -> None:
    try:
        queue = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        queue = 512
    count = queue + 20
    journal.configure("info")
    done = threading.Event()

    def emit() -> None:
        for i in range(count):
            get_logger().info("burst", i=i)
        done.set()

    threading.Thread(target=emit, daemon=True).start()
    assert done.wait(30), "logging blocked on a full journal socket"
    fallback = [json.loads(line)["i"] for line in journal.stderr_lines()]
    sent = []
    while not journal.nothing_more():
        sent += [int(e["ROOMSYNC_I"]) for e in journal.entries(1)]
    assert fallback, "nothing fell back: the queue was never full"
    assert sorted(sent + fallback) == list(range(count))


def test_one_socket_shared_by_threads(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[socket.socket] = []
    real = log._new_socket

    def counting() -> socket.socket:
        time.sleep(0.05)  # the other threads reach the first send meanwhile
        sock = real()
        opened.append(sock)
        return sock

    monkeypatch.setattr(log, "_new_socket", counting)
    journal.configure("info")
    threads, per_thread = 6, 25
    start = threading.Barrier(threads)
    received: list[Entry] = []
    stop = threading.Event()

    def read() -> None:  # drains as journald would, until the workers are done and it is empty
        while True:
            if not journal.nothing_more():
                received.extend(journal.entries(1))
            elif stop.is_set():
                return
            else:
                time.sleep(0.001)

    def emit(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            get_logger().info("thread.event", t=t, i=i)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    workers = [threading.Thread(target=emit, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()  # every send is done: what journald did not take is on stderr already
    reader.join(10)
    assert not reader.is_alive()
    lines = [json.loads(line) for line in journal.stderr_lines()]  # a full queue falls back
    seen = {(int(e["ROOMSYNC_T"]), int(e["ROOMSYNC_I"])) for e in received}
    seen |= {(d["t"], d["i"]) for d in lines}
    assert len(received) + len(lines) == threads * per_thread
    assert seen == {(t, i) for t in range(threads) for i in range(per_thread)}
    assert len(opened) == 1


def test_a_reload_that_switches_the_format_fails_no_thread_logging_in_between(journal: Journal) -> None:
    """structlog swaps processors and logger factory one after the other: a logger made in
    between pairs the journal's renderer with stderr's printer, or the reverse. Neither fails."""
    journal.attach()
    printer = log._Printer(sys.stderr)
    printer.msg('{"event": "between"}', event={"event": "between", "level": "info"})
    assert journal.stderr_raw() == ['{"event": "between"}']
    log._JournalLogger(printer).msg('{"event": "other.way"}')  # a JSON line without its event
    [entry] = journal.entries(1)
    assert entry["MESSAGE"] == '{"event": "other.way"}' and entry["PRIORITY"] == "6"


def test_the_clis_own_error_lines_carry_their_priority_to_the_journal(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.cli import main

    journal.attach()
    assert log.journal_prefixed("roomsync: a\n  b") == "<3>roomsync: a\n<3>  b"
    bad = journal.path.with_name("bad.toml")
    bad.write_text("[api]\nlisten = 7\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    lines = journal.stderr_raw()
    assert lines and lines[0].startswith("<3>roomsync: ") and all(x.startswith("<3>") for x in lines), lines
    monkeypatch.delenv("JOURNAL_STREAM")
    assert log.journal_prefixed("roomsync: a") == "roomsync: a"  # not the journal: as it is


#: A roomsync process whose command fails with an exception nothing catches (the main
#: thread's, after a thread of its own failed the same way): main() as the console script
#: runs it, with this process's own command line.
_CRASHING = """
import sys, threading
import agent.cli.check_config as command

def crash(args):
    def worker():
        raise RuntimeError("worker failed: a bug")
    thread = threading.Thread(target=worker, name="roomsync-worker")
    thread.start()
    thread.join()
    raise RuntimeError("command failed: a bug")

command.cmd_check_config = crash
from agent.cli import main
sys.argv = ["roomsync", "check-config"]
sys.exit(main())
"""


def _crash_output(tmp_path: Path, *, journal: bool) -> tuple[int, list[str]]:
    """Run :data:`_CRASHING` with fd 2 a file; ``journal``: ``$JOURNAL_STREAM`` names it."""
    import subprocess

    path = tmp_path / "stderr.txt"
    with open(path, "w", encoding="utf-8") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}" if journal else "0:0")
        for noisy in ("PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONTRACEMALLOC"):  # no other stderr lines
            env.pop(noisy, None)
        done = subprocess.run(
            [sys.executable, "-c", _CRASHING], stderr=err, env=env, cwd=Path(__file__).resolve().parents[1]
        )
    return done.returncode, path.read_text(encoding="utf-8").splitlines()


def test_a_crash_reaches_the_journal_at_priority_crit_with_its_traceback(tmp_path: Path) -> None:
    """Under systemd an exception nothing caught (the main thread's, another thread's) is
    Python's traceback with every line at priority crit (``<2>``): ``journalctl -p err`` shows
    the crash. Where stderr is not the journal it is Python's own output, unprefixed."""
    import agent.cli.check_config

    assert callable(agent.cli.check_config.cmd_check_config)  # what the crashing process replaces
    code, lines = _crash_output(tmp_path, journal=True)
    assert code == 1, lines
    assert lines and all(line.startswith("<2>") for line in lines), lines
    text = "\n".join(line[3:] for line in lines)
    assert "Exception in thread roomsync-worker:\nTraceback (most recent call last):" in text
    assert "RuntimeError: worker failed: a bug" in text
    assert text.count("Traceback (most recent call last):") == 2
    assert lines[-1] == "<2>RuntimeError: command failed: a bug"

    code, lines = _crash_output(tmp_path, journal=False)
    assert code == 1 and lines[-1] == "RuntimeError: command failed: a bug", lines
    assert not any(line.startswith("<") for line in lines)
    assert "Exception in thread roomsync-worker:" in lines
