"""The systemd notify protocol (``sd_notify(3)``), with the standard library only.

Under ``Type=notify`` systemd passes the address of its notification socket in
``$NOTIFY_SOCKET``; the service sends it datagrams of ``KEY=VALUE`` lines:

* ``READY=1`` once the service is up (the store is open and the API listens). After a reload
  the same message says the reload is over.
* ``STATUS=…``: one line for ``systemctl status``. :func:`status_line` makes it one line and
  caps its length, so a multi-line error cannot garble the status.
* ``WATCHDOG=1``: "still alive", at least every :func:`watchdog_interval` seconds (half of
  ``$WATCHDOG_USEC``) while ``WatchdogSec=`` is set; a missed deadline makes systemd kill and
  restart the service.
* ``STOPPING=1`` when shutting down; ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the form systemd
  253's ``Type=notify-reload`` asks for; older versions ignore the extra field) when a reload
  starts.

Decisions:

* **No-op outside systemd.** Without ``$NOTIFY_SOCKET`` every send returns False and does
  nothing, so the daemon calls these unconditionally.
* **Never raises on send.** A daemon must not die because systemd went away or its socket
  vanished: failures return False and log nothing (the caller decides whether it matters).
  Misuse (a key with ``=`` or a newline) is a programming error and raises ``ValueError``.
* **Bounded.** The socket has a send timeout (1 s by default): a datagram socket whose reader
  is stuck blocks the sender once its queue is full, and the daemon's event loop must not
  hang on that.
* Addresses: an absolute path, or ``@name`` for the abstract namespace. Anything else (such
  as the ``vsock:`` form of newer systemd for virtual machines) leaves the notifier disabled.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

STATUS_MAX_CHARS = 200


def _address(value: str | None) -> str | None:
    """The ``socket.sendto`` address for a ``$NOTIFY_SOCKET`` value, or None when unusable."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def status_line(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """``text`` as one line for ``STATUS=``: control characters (newlines, tabs…) become
    spaces, runs of spaces collapse, and anything past ``limit`` characters becomes ``…``."""
    cleaned = "".join(" " if (ord(ch) < 0x20 or ord(ch) == 0x7F) else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)].rstrip() + "…"
    return cleaned


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as ``sd_notify(3)``
    advises. None when the watchdog is off: ``$WATCHDOG_USEC`` unset, not a positive integer,
    or ``$WATCHDOG_PID`` set to another process (the variables were inherited from a parent)."""
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends notify datagrams to ``$NOTIFY_SOCKET`` (read once, when constructed).

    Every method returns True when systemd was handed the datagram, False when notifying is
    off or the send failed. Safe to call from several threads.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, timeout: float = 1.0) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET"))
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether ``$NOTIFY_SOCKET`` named a usable address."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=VALUE`` lines, in argument order: ``send(READY=1,
        STATUS="up")``. Keys must be non-empty without ``=``; no key or value may hold a
        newline (use :func:`status_line` for free text)."""
        lines = []
        for key, value in fields.items():
            text = str(value)
            if not key or "=" in key or "\n" in key or "\n" in text:
                raise ValueError(f"not a notify field: {key!r}")
            lines.append(f"{key}={text}")
        if not lines:
            raise ValueError("a notify message needs at least one field")
        return self._send("\n".join(lines).encode("utf-8"))

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or a reload is complete), with a ``STATUS=`` line if given."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status_line(status))

    def status(self, text: str) -> bool:
        """``STATUS=`` with ``text`` made one line."""
        return self.send(STATUS=status_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive. Send only while it really is healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=status_line(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (now, on ``CLOCK_MONOTONIC``); send
        :meth:`ready` when the reload is over, whether or not the new configuration was taken."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            return self.send(RELOADING=1, MONOTONIC_USEC=usec)
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status_line(status))

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, payload: bytes) -> bool:
        if self.address is None:
            return False
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(self._timeout)
                    self._sock = sock
                sock = self._sock
            sent = sock.sendto(payload, self.address)
        except OSError:
            return False
        return sent == len(payload)
