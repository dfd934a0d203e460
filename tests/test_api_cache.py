"""The API's answers that read the inventory are built off the event loop, once per stored scan
and settings however many clients ask, and big ones are paged or written in pieces (issues
[12/16] and [13/16]). A real :class:`agent.api.ApiServer` on a loopback port over a real store,
asked over HTTP by aiohttp's client; the daemon behind it is a plain object of the
:class:`agent.api.DaemonView` shape."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import agent.api
from agent.api import CHUNK, ApiServer
from agent.catalog import Catalog, load_catalog
from agent.model import Device, Room, Transport
from agent.store import Store

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()


def bar(serial: str, room: str, port: str | None = None) -> Device:
    return Device(
        product="Rally Bar",
        transport=Transport.USB,
        address=f"1-{port or serial[-1]}",
        first_seen=NOW,
        last_seen=NOW,
        room=room,
        serial=serial,
        serial_label_grade=True,
        sources=["usb"],
    )


@dataclass
class Settings:
    state_dir: Path
    catalog: Catalog = CATALOG
    rooms: tuple[Room, ...] = ()
    snapshot: Any = None
    portal: Any = None


@dataclass
class Daemon:
    """What the API reads of a daemon, and nothing more."""

    store: Store
    settings: Settings
    store_error: str | None = None
    outbox: Any = None
    sources: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = NOW
    push_failures: int = 0
    delivery_problem: str | None = None

    @property
    def outboxes(self) -> dict[str, Any]:
        return {} if self.outbox is None else {"portal": self.outbox}

    def output_problems(self) -> dict[str, str | None]:
        return {}

    def output_failures(self) -> dict[str, int]:
        return {}

    def uptime(self) -> float:
        return 1.0

    def ready_problems(self) -> list[str]:
        return []

    def problems(self) -> list[str]:
        return []


@asynccontextmanager
async def serving(daemon: Daemon, **limits: Any) -> AsyncIterator[tuple[ApiServer, str]]:
    api = ApiServer(daemon, "127.0.0.1:0", None, **limits)  # type: ignore[arg-type]
    await api.start()
    try:
        yield api, f"http://{api.where}"
    finally:
        await api.stop()


async def get(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as reply:
        return reply.status, json.loads(await reply.read())


def counting(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[str]:
    """Every room summary the API builds, by the thread that built it (after ``delay``)."""
    built: list[str] = []
    summary = agent.api._summary

    def counted(store: Store, settings: Any) -> Any:
        built.append(threading.current_thread().name)
        time.sleep(delay)
        return summary(store, settings)

    monkeypatch.setattr(agent.api, "_summary", counted)
    return built


def stored(tmp_path: Path, devices: list[Device], at: datetime = NOW) -> Store:
    store = Store.open(tmp_path)
    store.record_scan(devices, [], at, sources_run={"usb"})
    return store


def test_rooms_and_inventory_are_rebuilt_only_after_a_stored_scan_or_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = counting(monkeypatch)
    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])
    daemon = Daemon(store, Settings(tmp_path))

    async def scenario() -> None:
        async with serving(daemon) as (_, url):
            assert [r["room"] for r in (await get(url, "/v1/rooms"))[1]] == ["oslo-4-12"]
            assert [r["room"] for r in (await get(url, "/v1/rooms"))[1]] == ["oslo-4-12"]
            assert len((await get(url, "/v1/inventory"))[1]["devices"]) == 1
            assert len((await get(url, "/v1/inventory"))[1]["devices"]) == 1
            assert len(built) == 2  # once per path
            assert all(name.startswith("roomsync-api") for name in built)  # never on the loop

            later = NOW + timedelta(minutes=5)
            store.record_scan(
                [bar("2313FD1N08Z2", "oslo-4-12"), bar("2313FD1N08Z3", "oslo-4-14")],
                [],
                later,
                sources_run={"usb"},
            )
            assert [r["room"] for r in (await get(url, "/v1/rooms"))[1]] == ["oslo-4-12", "oslo-4-14"]
            assert (await get(url, "/v1/inventory"))[1]["last_scan"] == later.isoformat()
            assert len(built) == 4

            daemon.settings = Settings(tmp_path, rooms=(Room("oslo-4-16", "Nordkapp"),))  # a reload
            assert "oslo-4-16" in [r["room"] for r in (await get(url, "/v1/rooms"))[1]]
            assert len(built) == 5

    asyncio.run(scenario())
    store.close()


def test_a_slow_build_leaves_the_loop_free_and_is_made_once_for_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = counting(monkeypatch, delay=1.5)
    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])

    async def scenario() -> None:
        async with serving(Daemon(store, Settings(tmp_path))) as (_, url):
            asking = [asyncio.create_task(get(url, "/v1/rooms")) for _ in range(20)]
            await asyncio.sleep(0.3)  # the build has started and sleeps in its thread
            t0 = time.monotonic()
            status, health = await get(url, "/healthz")
            took = time.monotonic() - t0
            answers = await asyncio.gather(*asking)
            assert status == 200 and health["status"] == "alive"
            assert took < 0.5, f"/healthz waited {took:.2f} s for a build"
            assert {json.dumps(a) for a in answers} == {json.dumps((200, [answers[0][1][0]]))}
            assert len(built) == 1

    asyncio.run(scenario())
    store.close()


def test_inventory_pages_walk_every_unit_once_in_identity_order(tmp_path: Path) -> None:
    devices = [bar(f"2313FD1N{i:04d}", f"room-{i % 5}", port=f"{i}") for i in range(23)]
    store = stored(tmp_path, devices)

    async def scenario() -> None:
        async with serving(Daemon(store, Settings(tmp_path))) as (_, url):
            status, whole = await get(url, "/v1/inventory")
            assert status == 200
            walked: list[dict[str, Any]] = []
            after = None
            for _ in range(10):
                query = f"/v1/inventory?limit=5{'&after=' + after if after else ''}"
                status, page = await get(url, query)
                assert status == 200 and page["total"] == 23
                assert page["last_scan"] == whole["last_scan"]
                assert len(page["devices"]) <= 5
                walked += page["devices"]
                after = page["next"]
                if after is None:
                    break
                assert after == page["devices"][-1]["identity"]
            identities = [d["identity"] for d in walked]
            assert identities == sorted(d["identity"] for d in whole["devices"])
            assert {json.dumps(d, sort_keys=True) for d in walked} == {
                json.dumps(d, sort_keys=True) for d in whole["devices"]
            }
            # Past the end: an empty page; a cursor of a unit that has left still works.
            assert (await get(url, f"/v1/inventory?after={identities[-1]}"))[1]["devices"] == []
            gone = identities[7] + "~"
            assert (await get(url, f"/v1/inventory?limit=1&after={gone}"))[1]["devices"][0]["identity"] == (
                identities[8]
            )
            for bad in ("0", "-1", "x", "10001", "nan"):
                status, error = await get(url, f"/v1/inventory?limit={bad}")
                assert status == 400 and "limit" in error["error"]

    asyncio.run(scenario())
    store.close()


def test_a_big_answer_is_written_in_pieces_with_its_length(tmp_path: Path) -> None:
    devices = [bar(f"2313FD1N{i:04d}", f"room-{i % 40}", port=f"{i}") for i in range(400)]
    store = stored(tmp_path, devices)

    async def scenario() -> None:
        async with (
            serving(Daemon(store, Settings(tmp_path))) as (_, url),
            aiohttp.ClientSession() as session,
            session.get(url + "/v1/inventory") as reply,
        ):
            body = await reply.read()
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
            assert int(reply.headers["Content-Length"]) == len(body) > CHUNK
            assert len(json.loads(body)["devices"]) == 400

    asyncio.run(scenario())
    store.close()


def test_the_reader_takes_over_what_the_writer_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])
    decoded: list[int] = []
    decode: Callable[..., Any] = Store._decode_inventory

    def counted(self: Store, db: Any) -> Any:
        decoded.append(1)
        return decode(self, db)

    monkeypatch.setattr(Store, "_decode_inventory", counted)

    async def scenario() -> None:
        async with serving(Daemon(store, Settings(tmp_path))) as (api, url):
            writer = Store.open(tmp_path)
            record = writer.record_scan(
                [bar("2313FD1N08Z2", "oslo-4-12"), bar("2313FD1N08Z3", "oslo-4-14")],
                [],
                NOW + timedelta(minutes=1),
                sources_run={"usb"},
            )
            inventory = writer.tracked()
            writer.close()
            before = len(decoded)
            api.adopt(inventory, record.scan_id)
            assert len((await get(url, "/v1/inventory"))[1]["devices"]) == 2
            assert len(decoded) == before  # the reader decoded nothing itself

    asyncio.run(scenario())
    store.close()


def test_coverage_is_built_again_on_a_new_day(tmp_path: Path) -> None:
    from dataclasses import replace
    from datetime import date

    from agent.entitlements import EntitlementRecord, Entitlements
    from agent.uploader.snapshot import SnapshotContext

    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])
    records = Entitlements.of(
        [EntitlementRecord(serial="2313FD1N08Z2", purchase_date=date(2024, 1, 10), country="NO")]
    )
    settings = Settings(
        tmp_path, snapshot=SnapshotContext(CATALOG, entitlements=records, today=date(2025, 6, 1))
    )

    async def scenario() -> None:
        async with serving(Daemon(store, settings)) as (_, url):
            first = (await get(url, "/v1/coverage"))[1]
            # The same settings object, another day (as midnight UTC does to a daemon).
            settings.snapshot = replace(settings.snapshot, today=date(2029, 6, 1))
            later = (await get(url, "/v1/coverage"))[1]
            assert (first["today"], later["today"]) == ("2025-06-01", "2029-06-01")
            assert first["verdicts"][0]["status"] != later["verdicts"][0]["status"]

    asyncio.run(scenario())
    store.close()


def _records_file(tmp_path: Path, count: int) -> Path:
    """``count`` entitlement records of a few dozen shapes; the second is the stored bar's."""
    lines = ["serial,purchase_date,country,customer,reseller_contract,reseller_until"]
    for i in range(count):
        # The stored bar's, and two a JSON string must escape or may hold as they are.
        serial = {1: "2313FD1N0002", 3: '"AB-12/\\""X"', 4: "ÆØ000004"}.get(i, f"2401SP{i:06d}")
        country = ["NO", "US", "JP"][i % 3]
        reseller = f"HZ,2027-0{1 + i % 9}-01" if i % 4 == 0 else ","
        lines.append(f"{serial},202{i % 5}-0{1 + i % 9}-15,{country},,{reseller}")
    path = tmp_path / "entitlements.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_coverage_streams_every_unit_and_its_pages_walk_them_once(tmp_path: Path) -> None:
    """``/v1/coverage`` of 7,000 records: the stored units' verdicts, then every record no
    scan found in the file's order (written as they are worked out, a batch at a time), as
    each record's own evaluation gives them; its pages (``?limit=&after=``) walk the same
    units once; HEAD has no body; a cursor no unit has is a 400."""
    from datetime import date

    from agent.coverage import evaluate_all
    from agent.entitlements import load_entitlements
    from agent.support import support_for
    from agent.uploader.snapshot import SnapshotContext

    today = date(2026, 12, 2)
    store = stored(tmp_path, [bar("2313FD1N0001", "oslo-4-12"), bar("2313FD1N0002", "oslo-4-14")])
    records = load_entitlements(_records_file(tmp_path, 7_000))
    settings = Settings(tmp_path, snapshot=SnapshotContext(CATALOG, entitlements=records, today=today))
    units = [("2313FD1N0001", "Rally Bar"), ("2313FD1N0002", "Rally Bar")]
    units += [(serial, None) for serial in records if serial != "2313FD1N0002"]
    verdicts = evaluate_all(units, records, CATALOG, today)
    # A stored unit carries what to do when it fails: each bar stands alone in its room, so
    # Logitech Support quoting its own serial (D2, P1); a record no scan found, null.
    helped = [
        support_for(device, catalog=CATALOG, today=today, verdict=verdict, record=records.get(device.serial))
        for device, verdict in zip(
            (bar("2313FD1N0001", "x"), bar("2313FD1N0002", "x")), verdicts, strict=False
        )
    ]
    assert [(h.route, h.ticket_serial) for h in helped] == [
        ("logitech-support", "2313FD1N0001"),
        ("logitech-support", "2313FD1N0002"),
    ]
    expected = [
        {**v.to_dict(), "support": helped[i].to_dict() if i < 2 else None} for i, v in enumerate(verdicts)
    ]
    assert len(expected) - 2 > 3 * agent.api.COVERAGE_BATCH  # several batches

    async def scenario() -> None:
        async with serving(Daemon(store, settings)) as (_, url), aiohttp.ClientSession() as session:
            async with session.get(url + "/v1/coverage") as reply:
                assert reply.status == 200 and reply.headers["Transfer-Encoding"] == "chunked"
                whole = json.loads(await reply.read())
            assert (whole["evaluated"], whole["today"], whole["total"]) == (True, "2026-12-02", 7_001)
            assert whole["verdicts"] == expected
            walked: list[dict[str, Any]] = []
            after = ""
            for _ in range(20):
                status, page = await get(url, f"/v1/coverage?limit=999&after={quote(after)}")
                assert status == 200 and page["total"] == 7_001 and len(page["verdicts"]) <= 999
                walked += page["verdicts"]
                if page["next"] is None:
                    break
                after = page["next"]
                assert after == page["verdicts"][-1]["serial"]
            assert walked == expected
            assert [v["serial"] for v in walked[4:6]] == ['AB-12/\\"X', "ÆØ000004"]
            status, page = await get(url, f"/v1/coverage?limit=1&after={quote(walked[4]['serial'])}")
            assert (status, page["verdicts"], page["next"]) == (200, expected[5:6], "ÆØ000004")
            # A page that ends on the last stored unit, and the one after it.
            status, first = await get(url, "/v1/coverage?limit=2")
            assert [v["serial"] for v in first["verdicts"]] == ["2313FD1N0001", "2313FD1N0002"]
            status, second = await get(url, f"/v1/coverage?limit=3&after={first['next']}")
            assert second["verdicts"] == expected[2:5]
            status, last = await get(url, f"/v1/coverage?after={expected[-1]['serial']}")
            assert (status, last["verdicts"], last["next"]) == (200, [], None)
            async with session.head(url + "/v1/coverage") as reply:
                assert reply.status == 200 and await reply.read() == b""
            for query in ("after=NOSUCHUNIT", "limit=0", "limit=10001", "limit=x"):
                status, body = await get(url, f"/v1/coverage?{query}")
                assert status == 400 and "error" in body, query
            # The metric counts the same units, without a verdict held for each record.
            async with session.get(url + "/metrics") as reply:
                text = await reply.text()
            [family] = [
                f for f in text_string_to_metric_families(text) if f.name == "roomsync_coverage_units"
            ]
            counted = {sample.labels["status"]: sample.value for sample in family.samples}
            listed = Counter(v["status"] for v in expected)
            assert counted == {
                s: float(listed[s]) for s in ("out_of_warranty", "expiring_soon", "unknown", "in_warranty")
            }
            assert len(listed) >= 2

    asyncio.run(scenario())
    store.close()


def test_coverage_whole_to_http_1_0_and_a_bound_on_streams_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP/1.0 client (a proxy's default upstream) gets the whole answer ended by the
    close, not chunks; whole answers sent at once are bounded (503, Retry-After)."""
    import socket

    from agent.entitlements import load_entitlements
    from agent.uploader.snapshot import SnapshotContext

    store = stored(tmp_path, [bar("2313FD1N0001", "oslo-4-12")])
    records = load_entitlements(_records_file(tmp_path, 3_000))
    settings = Settings(tmp_path, snapshot=SnapshotContext(CATALOG, entitlements=records))

    async def scenario() -> None:
        async with serving(Daemon(store, settings)) as (api, url):
            host, port = api.where.rsplit(":", 1)

            def http10() -> bytes:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"GET /v1/coverage HTTP/1.0\r\nHost: x\r\n\r\n")
                    reply = b""
                    while chunk := sock.recv(65536):
                        reply += chunk
                    return reply

            reply = await asyncio.to_thread(http10)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
            assert json.loads(body)["total"] == len(json.loads(body)["verdicts"]) == 3_001

            monkeypatch.setattr(agent.api, "STREAMS_MAX", 0)
            async with aiohttp.ClientSession() as session, session.get(url + "/v1/coverage") as busy:
                assert busy.status == 503 and busy.headers["Retry-After"] == "1"
            assert (await get(url, "/v1/coverage?limit=5"))[0] == 200  # pages are not streams

    asyncio.run(scenario())
    store.close()


def test_an_answer_is_built_with_the_cyclic_collector_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer is a burst of short-lived objects built in the reader: made with the cyclic
    collector off (agent/gcpause.py), the objects it makes and drops are not promoted into
    the old generation meanwhile, whose full collections would then stall the requests that
    follow (bench/api_rooms.py's /v1/rooms p99). It is on again once the answer is made."""
    import gc

    states: list[bool] = []
    summary = agent.api._summary

    def watched(store: Store, settings: Any) -> Any:
        states.append(gc.isenabled())
        return summary(store, settings)

    monkeypatch.setattr(agent.api, "_summary", watched)
    store = stored(tmp_path, [bar("2313FD1N08Z2", "oslo-4-12")])

    async def scenario() -> None:
        async with serving(Daemon(store, Settings(tmp_path))) as (_, url):
            for path in ("/v1/rooms", "/v1/inventory"):
                status, _ = await get(url, path)
                assert status == 200
                assert gc.isenabled()

    assert gc.isenabled()
    asyncio.run(scenario())
    store.close()
    assert states == [False, False]
