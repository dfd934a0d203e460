"""The API's door (issue [13/16]): a cap on connections, idle ones closed, the newcomer taking
the longest-idle one's place, a refusal only when every connection is busy, one log line per
storm; and the loop's own error reports told once per storm. A real
:class:`agent.api.ApiServer` on 127.0.0.1 with small limits, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from agent.api import CHUNK
from agent.daemon import LoopErrors
from tests.test_api_cache import Daemon, Settings, bar, counting, get, serving, stored

HALF = b"GET /v1/rooms HTTP/1.1\r\nHost: roomsync\r\nX-Slow: "


async def connect(host_port: str, send: bytes = HALF) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = host_port.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``within`` seconds,
    whatever it sent before."""
    try:
        await asyncio.wait_for(reader.read(), within)  # to EOF
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


@contextmanager
def site(tmp_path: Path) -> Iterator[Daemon]:
    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])
    try:
        yield Daemon(store, Settings(tmp_path))
    finally:
        store.close()


def test_a_client_gets_through_a_full_house_of_idle_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.apilimits.SPARED_S", 0.2)

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=4, header_timeout=30) as (api, url):
            idle = [await connect(api.where) for _ in range(4)]
            await asyncio.sleep(0.3)
            assert api.gate.open == 4
            for _ in range(3):  # each newcomer takes the place of the longest idle
                status, health = await get(url, "/healthz")
                assert status == 200 and health["status"] == "alive"
                idle.append(await connect(api.where))  # the house is full again
                await asyncio.sleep(0.3)
                assert api.gate.open == 4
            for reader, _ in idle[:3]:  # told why, then closed
                assert (await asyncio.wait_for(reader.read(), 1.0)).startswith(b"HTTP/1.1 503 ")
            assert not await closed_by_server(idle[3][0], 0.2)  # the newer ones stay
            assert api.gate.stats.evicted == 3 and api.gate.stats.refused == 0
            for _, w in idle:
                w.close()

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_newcomer_is_turned_away_only_when_every_connection_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting(monkeypatch, delay=1.0)  # a room summary takes a second to build

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=2, header_timeout=30) as (api, url):
            busy = [asyncio.create_task(get(url, "/v1/rooms")) for _ in range(2)]
            await asyncio.sleep(0.3)
            reader, writer = await connect(api.where, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            refusal = await asyncio.wait_for(reader.read(), 2)
            assert time.monotonic() - t0 < 0.5  # at once, not after a wait
            head = refusal.split(b"\r\n\r\n", 1)[0].decode()
            assert (
                head.startswith("HTTP/1.1 503") and "Connection: close" in head and "Retry-After: 1" in head
            )
            writer.close()
            assert [status for status, _ in await asyncio.gather(*busy)] == [200, 200]
            assert api.gate.stats.refused == 1
            assert (await get(url, "/healthz"))[0] == 200  # and once they are answered, all is well
            _, state = await get(url, "/v1/status")
            assert state["connections"]["refused"] == 1 and state["connections"]["open"] >= 1
            async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as reply:
                metrics = await reply.text()
            assert 'roomsync_api_connections_closed_total{reason="refused"} 1.0' in metrics

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_burst_beyond_the_limit_gets_answers_not_resets(tmp_path: Path) -> None:
    """Young connections are spared: their requests are on the way (tests/test_daemon.py's
    200 concurrent clients, with a limit of 4)."""

    async def one(where: str) -> bytes:
        reader, writer = await connect(
            where, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        try:
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=4, header_timeout=30) as (api, _):
            answers = await asyncio.gather(*(one(api.where) for _ in range(60)))
            heads = [a.split(b"\r\n", 1)[0] for a in answers]
            assert set(heads) <= {b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"}, heads
            assert heads.count(b"HTTP/1.1 200 OK") >= 4
            assert api.gate.stats.evicted == 0

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_half_sent_request_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=8, header_timeout=0.5) as (api, _):
            reader, writer = await connect(api.where)
            t0 = time.monotonic()
            assert await closed_by_server(reader, 5.0)
            assert 0.4 <= time.monotonic() - t0 < 2.0
            writer.close()
            assert api.gate.stats.timed_out == 1
            # A keep-alive client that goes quiet after its answer is closed too, but not
            # counted as a slow sender.
            reader, writer = await connect(api.where, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await closed_by_server(reader, 5.0)
            writer.close()
            assert api.gate.stats.timed_out == 1
            assert api.gate.open == 0

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_storm_is_one_line_when_it_starts_and_one_when_it_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.apilimits.STORM_QUIET_S", 0.5)

    async def scenario(daemon: Daemon) -> list[dict[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            async with serving(daemon, max_connections=4, header_timeout=30) as (api, _):
                held = [await connect(api.where) for _ in range(200)]
                await asyncio.sleep(1.5)
                assert api.gate.stats.refused + api.gate.stats.evicted == 196
                for _, w in held:
                    w.close()
        return logs

    with site(tmp_path) as daemon:
        logs = asyncio.run(scenario(daemon))
    storm = [e for e in logs if e["event"].startswith("api.connections")]
    assert [e["event"] for e in storm] == ["api.connections.storm", "api.connections.storm.over"]
    assert storm[1]["evicted"] + storm[1]["refused"] == 196


def test_the_loops_error_reports_are_one_line_a_storm() -> None:
    errors = LoopErrors(quiet=0.2)
    loop = asyncio.new_event_loop()
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(1000):
                errors(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    },
                )
            errors(loop, {"message": "something else"})
            errors.flush()  # too early: the storm goes on
            time.sleep(0.3)
            errors.flush()
    finally:
        loop.close()
    assert [e["event"] for e in logs] == ["loop.error", "loop.error", "loop.error.repeated"]
    assert logs[0]["message"] == "socket.accept() out of system resource"
    assert logs[0]["error"] == "OSError: [Errno 24] Too many open files"
    assert logs[2]["times"] == 1000


def test_limits_are_checked() -> None:
    from agent.apilimits import ConnectionGate

    with pytest.raises(ValueError):
        ConnectionGate(0, 10)
    with pytest.raises(ValueError):
        ConnectionGate(4, float("nan"))


def test_the_listening_socket_is_loopback_and_refusing_is_cheap(tmp_path: Path) -> None:
    """A connection turned away holds no file descriptor of the daemon's once refused."""

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=1, header_timeout=30) as (api, _):
            assert api.where.startswith("127.0.0.1:")
            host, port = api.where.rsplit(":", 1)
            socks = [socket.create_connection((host, int(port))) for _ in range(50)]
            await asyncio.sleep(0.5)
            assert api.gate.open == 1
            for s in socks:
                s.close()

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_roomsync_health_waits_out_a_full_house_within_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.cli.health import Unreachable, fetch_status

    counting(monkeypatch, delay=1.5)  # a room summary takes 1.5 s to build

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=1, header_timeout=30) as (_, url):
            busy = asyncio.create_task(get(url, "/v1/rooms"))
            await asyncio.sleep(0.2)
            with pytest.raises(Unreachable, match="turning connections away"):
                await fetch_status(url, None, 0.5)  # too short to wait a second
            status = await fetch_status(url, None, 5.0)  # asked again after Retry-After: 1
            assert status["connections"]["refused"] >= 2
            assert (await busy)[0] == 200

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("path", ["/v1/inventory", "/v1/coverage"])
def test_a_client_that_never_reads_a_big_answer_is_cut_off_and_holds_no_descriptor(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big answer of known length (the inventory) or streamed as it is worked out (the
    coverage of 20,000 entitlement records; as many streams let through as clients)."""
    import agent.api

    monkeypatch.setattr(agent.api, "STREAMS_MAX", 6)
    from agent.entitlements import load_entitlements
    from agent.uploader.snapshot import SnapshotContext
    from tests.test_api_cache import CATALOG, _records_file

    devices = [bar(f"2313FD1N{i:04d}", f"room-{i % 40}", port=f"{i}") for i in range(1500)]
    store = stored(tmp_path, devices)
    records = load_entitlements(_records_file(tmp_path, 20_000))
    settings = Settings(tmp_path, snapshot=SnapshotContext(CATALOG, entitlements=records))

    async def scenario() -> None:
        async with serving(Daemon(store, settings), max_connections=8, header_timeout=1.0) as (
            api,
            url,
        ):
            host, port = api.where.rsplit(":", 1)
            assert (await get(url, path))[0] == 200  # the reader's store open, the answer built
            before = _fds()
            stuck = []
            for close in (False, True):  # keep-alive, and "Connection: close" (aiohttp closes)
                for _ in range(3):
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
                    sock.connect((host, int(port)))
                    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
                    sock.sendall(head + (b"Connection: close\r\n" if close else b"") + b"\r\n")
                    stuck.append(sock)
            await asyncio.sleep(0.5)
            assert api.gate.open == 6
            for _ in range(60):  # the writes wait; after header_timeout the server lets go
                await asyncio.sleep(0.1)
                if api.gate.open == 0 and _fds() <= before + len(stuck):
                    break
            assert api.gate.open == 0 and api._streams == 0
            assert _fds() <= before + len(stuck), "the server still holds the connections' descriptors"
            for sock in stuck:
                sock.close()

    asyncio.run(scenario())
    store.close()


def test_keep_alive_clients_asking_in_a_loop_do_not_lock_health_out(tmp_path: Path) -> None:
    async def hammer(url: str, stop: asyncio.Event) -> int:
        answered = 0
        async with aiohttp.ClientSession() as session:  # one keep-alive connection
            while not stop.is_set():
                try:
                    async with session.get(url + "/v1/rooms") as reply:
                        await reply.read()
                        answered += reply.status == 200
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)
        return answered

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=4, header_timeout=30) as (_api, url):
            stop = asyncio.Event()
            clients = [asyncio.create_task(hammer(url, stop)) for _ in range(4)]
            await asyncio.sleep(0.5)
            statuses = [(await get(url, "/healthz"))[0] for _ in range(10)]
            stop.set()
            assert sum(await asyncio.gather(*clients)) > 10
            # Now and then all four are answering at the instant it comes: a 503 at once.
            assert set(statuses) <= {200, 503} and statuses.count(200) >= 8, statuses

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_bare_header_end_is_spared_only_briefly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.apilimits.SPARED_S", 0.3)

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon, max_connections=4, header_timeout=30) as (api, url):
            held = [await connect(api.where, b"\r\n\r\n") for _ in range(4)]
            await asyncio.sleep(0.5)
            assert (await get(url, "/healthz"))[0] == 200
            for _, w in held:
                w.close()

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_head_of_a_big_answer_has_no_body_and_odd_numbers_are_refused(tmp_path: Path) -> None:
    devices = [bar(f"2313FD1N{i:04d}", f"room-{i % 40}", port=f"{i}") for i in range(400)]
    store = stored(tmp_path, devices)

    async def scenario() -> None:
        async with (
            serving(Daemon(store, Settings(tmp_path))) as (_api, url),
            aiohttp.ClientSession() as session,
        ):
            async with session.head(url + "/v1/inventory") as reply:
                assert reply.status == 200 and int(reply.headers["Content-Length"]) > CHUNK
                assert await reply.read() == b""
            async with session.get(url + "/healthz") as reply:  # the same connection, still in step
                assert reply.status == 200 and (await reply.json())["status"] == "alive"
            for path in ("/v1/inventory?limit=²", "/v1/events?limit=" + "9" * 5000, "/v1/events?limit=١"):
                async with session.get(url + path) as reply:
                    assert reply.status == 400, path

    asyncio.run(scenario())
    store.close()


def test_uncached_work_waiting_for_the_reader_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.api import UNCACHED_MAX
    from agent.store import Store

    events = Store.events

    def slow(self: Store, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return events(self, *args, **kwargs)

    monkeypatch.setattr(Store, "events", slow)

    async def scenario(daemon: Daemon) -> None:
        async with serving(daemon) as (_api, url):
            statuses = [s for s, _ in await asyncio.gather(*(get(url, "/v1/events") for _ in range(10)))]
            assert statuses.count(200) == UNCACHED_MAX and statuses.count(503) == 10 - UNCACHED_MAX

    with site(tmp_path) as daemon:
        asyncio.run(scenario(daemon))


def test_a_storm_that_never_ends_is_told_of_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.daemon.LOOP_STORM_REPORT_S", 0.2)
    errors = LoopErrors(quiet=10.0)
    loop = asyncio.new_event_loop()
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many")}
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):  # three report periods, the storm never quiet
                for _ in range(50):
                    errors(loop, context)
                time.sleep(0.25)
                errors.flush()
            errors.flush()  # nothing new since the last report: nothing to tell
            errors.flush(everything=True)
    finally:
        loop.close()
    assert [e["event"] for e in logs] == ["loop.error"] + ["loop.error.repeated"] * 3
    assert [e["times"] for e in logs[1:]] == [50, 50, 50]
