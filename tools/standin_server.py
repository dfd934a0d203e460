"""What the HTTP stand-ins of ``tools/`` share (:mod:`tools.portal_standin`,
:mod:`tools.glpi_standin`): an aiohttp application served on one address from a background
thread with its own event loop, so that a synchronous test, an async test and a program in a
subprocess can all talk to it; and the small request helpers each of them needs.

A stand-in subclasses :class:`StandInServer` (generic in the record of a request and in its
injected fault), gives :meth:`StandInServer._application` and ``_label`` / ``_thread_name``,
records each request with :meth:`StandInServer._add_request` and keeps its other records under
``self._lock``; :meth:`StandInServer.wait_for` wakes up at each request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web

from tools.faults import Fault, FaultQueue

__all__ = [
    "GZIP_WBITS",
    "RAW_DEFLATE_WBITS",
    "ZLIB_WBITS",
    "InflateError",
    "ServerTls",
    "StandInServer",
    "client_cert_name",
    "fault_name",
    "follow",
    "inflate",
    "media_type",
    "reason",
    "redact_headers",
    "request_fields",
    "reset_connection",
]

REDACTED = "<redacted>"
#: ``wbits`` of :func:`zlib.decompressobj` for a gzip member, a zlib stream, raw deflate.
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class ServerTls(Protocol):
    """What a stand-in needs of its TLS files (:class:`tools.portal_standin.TlsFiles`)."""

    def server_context(self) -> Any: ...


RequestT = TypeVar("RequestT")
FaultT = TypeVar("FaultT", bound=Fault)


class StandInServer(Generic[RequestT, FaultT]):
    """Serves :meth:`_application` on ``host``:``port`` (a free port when ``None``), over HTTPS
    when ``tls`` is given, from a daemon thread running its own event loop; keeps the requests
    (``RequestT``) and the injected faults (``FaultT``)."""

    #: How errors and the thread name the stand-in.
    _label = "stand-in"
    _thread_name = "standin"

    def __init__(self, *, tls: ServerTls | None, host: str, port: int | None) -> None:
        self._tls = tls
        self._host = host
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = port  # None: a free one
        self._error: BaseException | None = None
        self._loop_errors: list[str] = []
        self._requests: list[RequestT] = []
        self._faults: FaultQueue[FaultT] = FaultQueue(self._lock)

    def __repr__(self) -> str:  # never a credential
        return f"{type(self).__name__}(url={self._url_or_none()!r})"

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Listen on the port given, else a free one — after :meth:`stop`, on the same port
        again (the server was down and is back); returns once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        family = socket.AF_INET6 if _is_ipv6(self._host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port or 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._error = None
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, ready), name=self._thread_name, daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._error is not None or not ready.is_set():
            self.stop()
            raise RuntimeError(f"the {self._label} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving (replies still being written are cut off). Records stay readable."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_error)
        try:
            runner = loop.run_until_complete(self._setup(sock))
        except BaseException as exc:  # reported by start()
            self._error = exc
            sock.close()
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _application(self) -> web.Application:
        """The routes the stand-in serves."""
        raise NotImplementedError

    async def _setup(self, sock: socket.socket) -> web.AppRunner:
        runner = web.AppRunner(
            self._application(),
            handle_signals=False,
            access_log=None,
            auto_decompress=False,
            shutdown_timeout=0.2,
        )
        await runner.setup()
        context = self._tls.server_context() if self._tls is not None else None
        await web.SockSite(runner, sock, ssl_context=context).start()
        return runner

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Failed handshakes and the like: kept for the test to see, not printed."""
        exc = context.get("exception")
        with self._lock:
            self._loop_errors.append(f"{context.get('message')}: {exc!r}")

    @property
    def loop_errors(self) -> list[str]:
        """Errors outside a request (a TLS handshake a client refused…)."""
        with self._lock:
            return list(self._loop_errors)

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT`` or ``https://…``)."""
        url = self._url_or_none()
        if url is None:
            raise RuntimeError("the stand-in is not started")
        return url

    def _url_or_none(self) -> str | None:
        if self._port is None:
            return None
        host = f"[{self._host}]" if _is_ipv6(self._host) else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the stand-in is not started")
        return self._port

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[RequestT]:
        """Every request answered or reset, in the order finished (credentials redacted)."""
        with self._lock:
            return list(self._requests)

    def _add_request(self, entry: RequestT, also: Callable[[], None] | None = None) -> None:
        """Record a request (with what ``also`` records, at once) and wake :meth:`wait_for`."""
        with self._changed:
            if also is not None:
                also()
            self._requests.append(entry)
            self._changed.notify_all()

    @property
    def pending_faults(self) -> list[str]:
        """Faults injected and not yet used, in order."""
        return self._faults.pending

    def clear(self) -> None:
        """Forget every record and pending fault."""
        with self._lock:
            self._requests.clear()
            self._loop_errors.clear()
            self._faults.clear()
            self._forget()

    def _forget(self) -> None:
        """Forget the records of the subclass (called by :meth:`clear`, under the lock)."""

    def wait_for(self, condition: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Block until ``condition(self)`` holds (checked after each request); ``False`` when
        ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)


def follow(
    server: StandInServer[Any, Any],
    feeds: Sequence[tuple[Callable[[], Sequence[Any]], Callable[[Any], str]]],
    say: Callable[[str], None],
) -> int:
    """Run by hand: ``say`` a line for each new record of each feed (a records getter and
    the line of one record) as they come, until Ctrl-C; then stop ``server``. Returns 0."""
    seen = [0] * len(feeds)

    def more(_: object) -> bool:
        return any(len(records()) > n for (records, _line), n in zip(feeds, seen, strict=True))

    try:
        while True:
            server.wait_for(more, 1.0)
            for i, (records, line) in enumerate(feeds):
                for record in records()[seen[i] :]:
                    say(line(record))
                    seen[i] += 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


# --------------------------------------------------------------------------- request helpers


def fault_name(fault: str | int, times: int, kinds: Sequence[str]) -> str:
    """The name of an injected ``fault``: an HTTP status 400–599 or one of ``kinds``."""
    name = str(fault)
    if name not in kinds and not (name.isdigit() and 400 <= int(name) <= 599):
        raise ValueError(f"unknown fault {fault!r}: an HTTP status 400-599 or one of {', '.join(kinds)}")
    if times < 1:
        raise ValueError("times must be 1 or more")
    return name


def reset_connection(request: web.Request) -> web.StreamResponse:
    """Reset the connection (RST, not FIN) so that the client gets no reply at all; what
    the handler returns then is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=204)  # never sent: the transport is gone


def request_fields(request: web.Request, size: int) -> dict[str, Any]:
    """What every stand-in records of a request: ``method``, ``path``, ``headers`` (redacted),
    ``body_bytes`` (``size``) and ``client_cert``."""
    return {
        "method": request.method,
        "path": request.path,
        "headers": redact_headers(request.headers),
        "body_bytes": size,
        "client_cert": client_cert_name(request),
    }


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the ``Authorization`` credentials replaced by ``<redacted>`` (the
    scheme stays)."""
    out = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme = value.split(None, 1)[0] if value.strip() else ""
            value = f"{scheme} {REDACTED}".strip()
        out[name] = value
    return out


def media_type(value: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower case, without parameters."""
    return (value or "").split(";", 1)[0].strip().lower()


def reason(status: int) -> str:
    """The reason phrase of ``status`` (``Error`` for one HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def client_cert_name(request: web.Request) -> str | None:
    """The common name of the client certificate of an mTLS request."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class InflateError(Exception):
    """Why :func:`inflate` refused a body: ``kind`` is ``corrupt`` (with zlib's words in
    ``detail``), ``too-big``, ``truncated`` or ``trailing`` (data after the stream)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def inflate(body: bytes, limit: int, wbits: int) -> bytes:
    """One compressed stream (``wbits``: :data:`GZIP_WBITS`, :data:`ZLIB_WBITS`,
    :data:`RAW_DEFLATE_WBITS`), at most ``limit`` bytes once decompressed (a bomb stops there)."""
    inflater = zlib.decompressobj(wbits=wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InflateError("corrupt", str(exc)) from None
    if len(data) > limit:
        raise InflateError("too-big")
    if not inflater.eof:
        raise InflateError("truncated")
    if inflater.unused_data:
        raise InflateError("trailing")
    return data
