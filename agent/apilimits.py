"""The local API's door: how many connections it holds and how long an idle one may stay.

The API serves a handful of local clients (``roomsync health``, a monitoring probe, a script).
Without limits any local user could hold it, and the daemon with it: a thousand connections
that send half a request and then nothing would take every file descriptor the service has
(systemd gives it 1,024), and with them every USB scan and the health probes.

:class:`ConnectionGate` stands between the listening socket and aiohttp's protocol:

* **At most** ``limit`` **connections.** When a new one comes at the limit, it takes the place
  of the connection that has been idle longest (one with no request being answered: a
  half-sent request, a keep-alive connection between requests), which is told ``503`` with
  ``Retry-After: 1`` and closed. For :data:`SPARED_S` a new connection that has sent
  nothing yet, or one whose whole request header is in, is spared: its request is on its way
  or being read (a client sends a header whole: a part of one is no reason to wait, nor is a
  keep-alive connection between requests).
  When none can go, the newcomer is turned away at once with that same ``503`` and
  ``Connection: close``. So ``/healthz`` gets through a flood of half-sent requests, and a
  burst of clients beyond the limit gets answers, not resets.
* **An idle connection is closed after** ``header_timeout`` **seconds**: one that has not sent
  a whole request header by then, or that has sat that long between requests. Closing is an
  abort: a client that stops reading cannot keep a closing connection's descriptor (the API
  also gives up a write that waits longer than ``header_timeout``, agent/api.py).
* **One log line per storm**: refusals and evictions are counted, and logged once when they
  start and once, with the counts, when they have stopped for a while.

"Busy" is known from aiohttp's middleware (:meth:`ConnectionGate.busy`), which runs once a
request's header is in; the gate itself only wraps the protocol, forwarding every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.log import get_logger

log = get_logger(__name__)

__all__ = ["ConnectionGate", "GateStats"]

#: What a turned-away connection is told before it is closed.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Connection: close\r\n"
    b"Retry-After: 1\r\n"
    b"Content-Length: 62\r\n"
    b"\r\n"
    b'{"error": "too many connections to the roomsync API: retry"}\n\n'
)
#: A connection younger than this (seconds) is never evicted: its request is on its way.
SPARED_S = 0.5
#: A storm is over when nothing was refused or evicted for this long (seconds).
STORM_QUIET_S = 10.0


@dataclass(slots=True)
class GateStats:
    """Counts since the daemon started (``/metrics``)."""

    accepted: int = 0
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol behind it, and what the gate knows."""

    __slots__ = (
        "admitted",
        "busy",
        "gate",
        "header_in",
        "idle_since",
        "inner",
        "requests",
        "tail",
        "timer",
        "transport",
    )

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        #: Requests being answered, and answered so far.
        self.busy = 0
        self.requests = 0
        #: A whole request header has come since the last request was answered; the last
        #: bytes that came since then (empty: nothing came).
        self.header_in = False
        self.tail = b""
        self.idle_since = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol, forwarded to aiohttp once admitted.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.admitted = self.gate._admit(self)
        if self.admitted:
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.header_in:
            # A whole header has come (aiohttp is about to answer it): not idle. Only the
            # last three bytes are kept, for a header end split across two reads.
            seen = self.tail + data
            self.header_in = b"\r\n\r\n" in seen
            self.tail = seen[-3:] or b"\0"  # not empty: something came
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate._release(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    # What the gate does with it.

    def idle(self, now: float) -> None:
        self.idle_since = now
        self._cancel()
        gate = self.gate
        self.timer = asyncio.get_running_loop().call_later(gate.header_timeout, gate._time_out, self)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self, last_words: bytes = b"") -> None:
        """Close it now: its file descriptor is free at once. ``last_words`` (a refusal) are
        written first only when nothing else waits to be written; even then the connection
        is cut after a second, so that a client that never reads cannot hold it."""
        self._cancel()
        transport = self.transport
        if transport is None:
            return
        if last_words and not transport.is_closing() and not transport.get_write_buffer_size():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write(last_words)
            transport.close()
            asyncio.get_running_loop().call_later(1.0, transport.abort)
        else:
            transport.abort()  # also when closing already: a close with unsent data never ends

    def evictable(self, settled: float) -> bool:
        """Whether it may make room for a newcomer: not answering a request, and not a young
        one (idle since after ``settled``) whose request is on its way or being read — one
        just made that has sent nothing yet, or one whose whole header is in. A part of a
        header, or a keep-alive connection between requests, may go at once."""
        if self.busy:
            return False
        if self.idle_since <= settled:
            return True
        return not (self.header_in or (not self.requests and not self.tail))


class ConnectionGate:
    """See the module's docstring. ``limit`` connections at most; idle ones closed after
    ``header_timeout`` seconds."""

    def __init__(self, limit: int, header_timeout: float, *, what: str = "api") -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not header_timeout > 0:
            raise ValueError("header_timeout must be positive")
        self.limit = limit
        self.header_timeout = header_timeout
        self.what = what
        self.stats = GateStats()
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        # Storm accounting: when the current one started, its counts, when it was last fed.
        self._storm: GateStats | None = None
        self._storm_start = 0.0
        self._storm_last = 0.0
        self._storm_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """What ``loop.create_server`` is given instead of aiohttp's ``runner.server``."""
        return lambda: _Connection(self, inner())

    @contextlib.contextmanager
    def busy(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Around the answering of one request on ``transport`` (aiohttp's middleware): the
        connection is not idle meanwhile."""
        conn = self._open.get(transport) if transport is not None else None
        if conn is None:
            yield
            return
        conn.busy += 1
        conn.requests += 1
        conn.header_in, conn.tail = False, b""
        conn._cancel()
        try:
            yield
        finally:
            conn.busy -= 1
            if conn.busy == 0 and conn.transport is not None and not conn.transport.is_closing():
                conn.idle(time.monotonic())

    def close_all(self) -> None:
        for conn in list(self._open.values()):
            conn.close()
        if self._storm_timer is not None:
            self._storm_timer.cancel()
            self._storm_timer = None
        self._end_storm()

    # ------------------------------------------------------------------ internals

    def _admit(self, conn: _Connection) -> bool:
        assert conn.transport is not None
        if len(self._open) >= self.limit:
            settled = time.monotonic() - SPARED_S
            idle = [c for c in self._open.values() if c.evictable(settled)]
            if not idle:
                self.stats.refused += 1
                self._stormy("refused")
                with contextlib.suppress(OSError, RuntimeError):
                    conn.transport.write(REFUSAL)
                conn.transport.close()
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            self._forget(oldest)
            oldest.close(REFUSAL)
            self.stats.evicted += 1
            self._stormy("evicted")
        self._open[conn.transport] = conn
        self.stats.accepted += 1
        conn.idle(time.monotonic())
        return True

    def _forget(self, conn: _Connection) -> None:
        """Drop ``conn`` from the count now (its ``connection_lost`` comes later)."""
        if conn.transport is not None:
            self._open.pop(conn.transport, None)

    def _release(self, conn: _Connection) -> None:
        """``conn`` is gone."""
        conn._cancel()
        if conn.transport is not None and self._open.get(conn.transport) is conn:
            del self._open[conn.transport]

    def _time_out(self, conn: _Connection) -> None:
        conn.timer = None
        if conn.busy:
            return
        if not conn.requests:  # never sent a whole request: worth counting (a keep-alive
            self.stats.timed_out += 1  # client that went quiet is not)
            self._stormy("timed_out")
        self._forget(conn)
        conn.close()

    def _stormy(self, what: str) -> None:
        now = time.monotonic()
        if self._storm is None:
            self._storm = GateStats()
            self._storm_start = now
            log.warning(
                f"{self.what}.connections.storm",
                limit=self.limit,
                header_timeout=self.header_timeout,
                first=what,
            )
        setattr(self._storm, what, getattr(self._storm, what) + 1)
        self._storm_last = now
        if self._storm_timer is None:
            self._storm_timer = asyncio.get_running_loop().call_later(STORM_QUIET_S, self._check_storm)

    def _check_storm(self) -> None:
        self._storm_timer = None
        left = self._storm_last + STORM_QUIET_S - time.monotonic()
        if left > 0:
            self._storm_timer = asyncio.get_running_loop().call_later(left, self._check_storm)
            return
        self._end_storm()

    def _end_storm(self) -> None:
        if self._storm is None:
            return
        storm, self._storm = self._storm, None
        log.warning(
            f"{self.what}.connections.storm.over",
            seconds=round(self._storm_last - self._storm_start, 1),
            refused=storm.refused,
            evicted=storm.evicted,
            timed_out=storm.timed_out,
        )
