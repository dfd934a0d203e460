"""Logging with structlog: JSON lines for machines, readable lines for people.

* ``format = "auto"`` (default): JSON when stderr is not a terminal or the process runs
  under systemd (``$JOURNAL_STREAM`` / ``$INVOCATION_ID``), a readable console line otherwise.
* Events have stable names (``usb.scan.done``) and keys; operators' log queries rely on them.
* Secrets never reach the log: values of keys that name a secret are masked, whatever the
  caller passes (see :func:`mask_secrets`).
* When stderr *is* the journal (``$JOURNAL_STREAM`` names the device and inode of fd 2, as
  systemd.exec(5) documents) and the lines are JSON, each event goes to journald as one
  datagram of its native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): ``MESSAGE``
  is the very JSON line that stderr would get, ``PRIORITY`` follows the level,
  ``SYSLOG_IDENTIFIER=roomsync``, and every key is a field ``ROOMSYNC_<KEY>``
  (``journalctl -u roomsync-agent -p warning``, ``... ROOMSYNC_EVENT=store.write.failed``).
  A datagram journald cannot take (no socket, a full queue, too large) is written to stderr
  as before: no line is lost, and logging never raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from types import TracebackType
from typing import Any, TextIO

import structlog

from agent.sanitize import MASK, is_secret_key

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: journald's native socket (AF_UNIX, SOCK_DGRAM). Read at every send: tests point it elsewhere.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "roomsync"
#: syslog(3) priorities of the levels (a level not listed is sent as info).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
#: journald drops a whole entry of more fields than this (ENTRY_FIELD_COUNT_MAX): such an
#: entry goes to stderr instead.
_MAX_FIELDS = 1024
#: As sd_journal_send() does: a larger send buffer lets larger entries go as one datagram
#: (the kernel caps it at net.core.wmem_max; a datagram beyond it fails with EMSGSIZE).
_SNDBUF = 8 * 1024 * 1024
_NOT_IN_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


def mask_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every value whose key names a secret, at any depth."""
    for key in list(event):
        event[key] = _masked(key, event[key])
    return event


def _masked(key: str, value: Any) -> Any:
    if key != "event" and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {k: _masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):  # a list of hosts, each with its password…
        return [_masked(key, v) for v in value]
    return value


def use_json(fmt: str, stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when fd 2 is the stream journald gave the service: ``$JOURNAL_STREAM`` is
    ``DEV:INODE`` of it (systemd.exec(5)). A redirected stderr (a pipe, a file, a child whose
    output the parent captures) keeps the variable but not the device and inode."""
    env = os.environ if environ is None else environ
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(2)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


@lru_cache(maxsize=1024)
def journal_field_name(key: str) -> str:
    """``ROOMSYNC_<KEY>``, valid as journald wants a field name: A-Z, 0-9 and ``_`` only,
    neither ``_`` nor a digit first (the prefix sees to that), at most 64 characters."""
    return ("ROOMSYNC_" + _NOT_IN_FIELD_NAME.sub("_", key.upper()))[:64]


def _json_default(value: Any) -> Any:
    """As structlog's JSONRenderer: an object's ``__structlog__()``, else its repr."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else repr(value)


def _field_value(value: Any) -> bytes:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    )
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate is not refused


def _field(name: str, value: bytes) -> bytes:
    if b"\n" in value:  # the binary form: name, LF, little-endian u64 size, data, LF
        return b"%s\n%s%s\n" % (name.encode("ascii"), struct.pack("<Q", len(value)), value)
    return b"%s=%s\n" % (name.encode("ascii"), value)


def native_entry(message: str, event: Mapping[str, Any]) -> bytes | None:
    """One journal entry in journald's native format: ``MESSAGE``, ``PRIORITY``,
    ``SYSLOG_IDENTIFIER`` and ``ROOMSYNC_<KEY>`` for every key of ``event`` (a string as it
    is, any other value as compact JSON). ``None`` when journald would drop it whole."""
    if len(event) + 3 > _MAX_FIELDS:
        return None
    priority = PRIORITIES.get(str(event.get("level")), 6)
    parts = [
        _field("MESSAGE", message.encode("utf-8", "backslashreplace")),
        _field("PRIORITY", b"%d" % priority),
        _field("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.encode("ascii")),
    ]
    parts += [
        _field(journal_field_name(str(key)), _field_value(value))
        for key, value in event.items()
        if key != "timestamp"  # journald stamps the entry itself; MESSAGE keeps the agent's
    ]
    return b"".join(parts)


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec, as Python's are
    # Never blocks: with journald's queue full, the line goes to stderr instead of the daemon
    # (its event loop, its watchdog pings) waiting for journald.
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
    return sock


class _Journal:
    """The process's one socket to journald, opened at the first entry, shared by threads.

    Unconnected: every entry is sent to :data:`JOURNAL_SOCKET` by name, so a journald that
    restarted (a new socket at the same path) is found again without reopening anything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def send(self, entry: bytes) -> bool:
        """True when journald has the entry; False (never an exception) when it does not."""
        try:
            sock = self._sock
            if sock is None:
                with self._lock:
                    if self._sock is None:
                        self._sock = _new_socket()
                    sock = self._sock
            sock.sendto(entry, JOURNAL_SOCKET)
        except OSError:  # ENOENT/ECONNREFUSED (no journald), EAGAIN/ENOBUFS (full), EMSGSIZE…
            return False
        return True

    def reset(self) -> None:
        """Forget the socket (after a fork the child opens its own; tests start afresh)."""
        self._lock = threading.Lock()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


_JOURNAL = _Journal()
os.register_at_fork(after_in_child=_JOURNAL.reset)


class _JournalRenderer:
    """Last processor when logging to the journal: today's JSON line, and the event whose
    keys become the entry's fields (the secrets in it masked already)."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        line = self._json(logger, method, event)
        return (line,), {"event": event}


class _JournalLogger:
    """Sends each line to journald; writes it to ``fallback`` (stderr) when that fails."""

    def __init__(self, fallback: structlog.PrintLogger) -> None:
        self._fallback = fallback

    def msg(self, line: str, event: Mapping[str, Any] | None = None) -> None:
        try:
            entry = native_entry(line, event or {})
            sent = entry is not None and _JOURNAL.send(entry)
        except Exception:  # an entry that cannot be made: the line itself still goes out
            sent = False
        if not sent:
            # To the journal's stream after all: its priority as the stream's "<N>" prefix,
            # which journald takes off (SyslogLevelPrefix=): `journalctl -p` still finds it.
            level = str(event.get("level")) if event else ""
            self._fallback.msg(f"<{PRIORITIES.get(level, 6)}>{line}")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _Printer(structlog.PrintLogger):
    """structlog's PrintLogger, taking (and leaving) the event the journal's renderer passes:
    a reload that switches the format swaps renderer and logger one after the other, and a
    thread logging in between must not fail."""

    def msg(self, message: str, event: Mapping[str, Any] | None = None) -> None:  # type: ignore[override]
        super().msg(message)

    log = debug = info = warn = warning = msg  # type: ignore[assignment]
    fatal = failure = err = error = critical = exception = msg  # type: ignore[assignment]


def journal_prefixed(text: str, priority: int = 3) -> str:
    """``text`` (the CLI's own ``roomsync: …`` lines) with each line's syslog priority as the
    journal's stream takes it, when stderr is the journal (3: an error); else as it is."""
    if not stderr_is_journal():
        return text
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


#: syslog's ``crit``: what an exception nothing caught is reported at.
_CRASH_PRIORITY = 2


def install_crash_reports() -> None:
    """When stderr is the journal, an exception nothing caught — in the main thread or any
    other — is written as Python writes it, each line at priority ``crit``, so that
    ``journalctl -p err`` shows a crash with its traceback (unprefixed, a traceback's lines
    would land at the stream's default, ``info``). Elsewhere nothing changes. (A fatal error's
    ``faulthandler`` dump is written by the interpreter itself and stays at ``info``.)"""
    if not stderr_is_journal():
        return
    sys.excepthook = _report_crash
    threading.excepthook = _report_thread_crash


def _report_crash(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, value, tb)).rstrip("\n")
    _write_crash(text)


def _report_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as threading's own hook: a thread may end that way
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    _write_crash(f"Exception in thread {name}:\n" + text.rstrip("\n"))


def _write_crash(text: str) -> None:
    try:
        sys.stderr.write(journal_prefixed(text, _CRASH_PRIORITY) + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr left (None, closed): nothing better to do
        pass


class _Stderr:
    """``sys.stderr`` as it is when a line is written, not when logging was set up (it may
    be replaced meanwhile: a test harness's capture, a daemonising wrapper)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. Logs go to stderr; stdout is for command output.

    JSON lines to a stderr that is the journal go to journald's native socket instead (see the
    module's doc); a ``stream`` given, or console lines, are written as they are."""
    out: Any = stream or _Stderr()
    json_lines = use_json(fmt, out)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    logger_factory: Any = _printer_factory(out)
    if json_lines and stream is None and stderr_is_journal():
        processors += [structlog.processors.format_exc_info, _JournalRenderer()]
        logger_factory = _journal_logger_factory(out)
    elif json_lines:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )


def _printer_factory(out: Any) -> Any:
    printer = _Printer(out)

    def factory(*_args: Any) -> _Printer:
        return printer

    return factory


def _journal_logger_factory(out: Any) -> Any:
    fallback = _Printer(out)

    def factory(*_args: Any) -> _JournalLogger:
        return _JournalLogger(fallback)

    return factory


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
