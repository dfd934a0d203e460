"""The daemon stores scans off its event loop and builds a snapshot only when a scan changed
something (issue [12/16]). An in-process daemon over a real sysfs tree and a real SQLite
store; the store write is slowed in its own thread to show the loop keeps turning."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from agent.catalog import load_catalog
from agent.daemon import Daemon, DaemonSettings, SourcePlan, SourceStatus
from agent.discovery.usb import UsbSource
from agent.model import Room
from agent.store import Store
from agent.uploader.outbox import Outbox
from agent.uploader.snapshot import SnapshotContext
from tests.sysfs import add_device

ROOM = Room("oslo-4-12", "Fjord")


def tree(root: Path, count: int) -> Path:
    for i in range(count):
        add_device(root, f"1-{i + 1}", 0x046D, 0x0881, serial=f"CAM{i:05d}", product="Rally Camera")
    return root


def daemon_over(tmp_path: Path, sysfs: Path) -> tuple[Daemon, SourcePlan]:
    catalog = load_catalog()
    plan = SourcePlan("usb", UsbSource(sysfs, libusb_strings=False, sync_interface=False), 60.0, 30.0)
    settings = DaemonSettings(
        plans=(plan,),
        state_dir=tmp_path / "state",
        catalog=catalog,
        room=ROOM,
        snapshot=SnapshotContext(catalog, (ROOM,)),
        agent_id="4f1d1c5e-8a53-4b51-9d0e-3b7c7b2a9f10",
    )
    daemon = Daemon(settings, environ={})
    daemon.sources["usb"] = SourceStatus("usb", plan.interval)
    return daemon, plan


def snapshots(state: Path) -> int:
    with Store.open(state) as store:
        return sum(1 for m in Outbox(store).messages() if m.kind == "inventory")


def test_a_scan_is_stored_while_the_loop_keeps_turning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, plan = daemon_over(tmp_path, tree(tmp_path / "sys", 30))
    real = Store.record_scan
    threads: list[str] = []

    def slow_record(self: Store, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(1.0)  # a site's scan on a slow SD card
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_scan", slow_record)

    decodes: list[int] = []

    async def main() -> float:
        assert daemon._open_store() and daemon.store is not None
        decode = daemon.store._decode_inventory
        monkeypatch.setattr(daemon.store, "_decode_inventory", lambda db: decodes.append(1) or decode(db))
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await daemon.run_source(plan)
        stop.set()
        await tick
        return max(gaps)

    try:
        worst = asyncio.run(main())
        assert threads and all(name.startswith("roomsync-store") for name in threads)
        assert worst < 0.5, f"the loop stood still for {worst:.2f} s while the scan was stored"
        assert daemon.store is not None
        assert len(daemon.store.devices()) == 30
        assert decodes == []  # the loop's connection took the writer's inventory over
    finally:
        daemon._close_store()


def test_an_unchanged_scan_builds_no_snapshot_a_change_or_a_new_day_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysfs = tree(tmp_path / "sys", 5)
    daemon, plan = daemon_over(tmp_path, sysfs)
    built: list[int] = []
    import agent.daemon as daemon_module

    real = daemon_module.queue_snapshot
    monkeypatch.setattr(daemon_module, "queue_snapshot", lambda *a, **k: built.append(1) or real(*a, **k))

    async def run() -> None:
        await daemon.run_source(plan)

    try:
        assert daemon._open_store()
        asyncio.run(run())
        assert len(built) == 1 and snapshots(daemon.settings.state_dir) == 1
        asyncio.run(run())
        asyncio.run(run())
        assert len(built) == 1  # nothing changed: not even built
        add_device(sysfs, "1-9", 0x046D, 0x0881, serial="CAM09999", product="Rally Camera")
        asyncio.run(run())
        assert len(built) == 2
        # A new day (UTC, as coverage counts them): verdicts may have changed at midnight.
        basis = daemon._snapshot_basis
        assert basis is not None
        daemon._snapshot_basis = (basis[0], date(2000, 1, 1), basis[2])
        asyncio.run(run())
        assert len(built) == 3
        asyncio.run(run())
        assert len(built) == 3
        # A reload makes a new snapshot context (new rooms, new entitlements): built again.
        daemon.settings = replace(daemon.settings, snapshot=SnapshotContext(daemon.settings.catalog, (ROOM,)))
        asyncio.run(run())
        assert len(built) == 4
    finally:
        daemon._close_store()


def test_the_writer_finishes_its_write_before_the_store_closes(tmp_path: Path) -> None:
    daemon, plan = daemon_over(tmp_path, tree(tmp_path / "sys", 3))

    async def cancelled_midway() -> None:
        task = asyncio.create_task(daemon.run_source(plan))
        while daemon._writer is None:  # until the write has been handed to the writer
            await asyncio.sleep(0.001)
        task.cancel()
        [outcome] = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)

    assert daemon._open_store()
    asyncio.run(cancelled_midway())
    daemon._close_store()  # waits for the write under way
    with Store.open(daemon.settings.state_dir) as store:
        scans = store.read("SELECT count(*) FROM scans")[0][0]
        devices = len(store.devices())
    assert (scans, devices) == (1, 3)  # the write the loop stopped waiting for still happened whole


@dataclass
class LanSource:
    """A source of LAN units whose targets may not answer (as SNMP's and CollabOS's): what
    it reports is set by the test."""

    answering: set[str] = field(default_factory=set)
    name: str = "snmp"
    broken: bool = False

    async def run(self, ctx: Any) -> Any:
        from agent.discovery import SourceResult
        from agent.model import Observation, Transport

        if self.broken:
            raise OSError("the network is unreachable")
        result = SourceResult()
        for host in ("10.0.0.5", "10.0.0.6"):
            if host in self.answering:
                result.observations.append(
                    Observation(
                        source="snmp",
                        transport=Transport.SNMP,
                        address=host,
                        observed_at=ctx.now,
                        product="Rally Bar",
                        serial=f"2313FD{host[-1]}N08Z2",
                        serial_label_grade=True,
                    )
                )
            else:
                result.unreached.append(host)
        return result


def test_a_target_that_stops_answering_rebuilds_the_snapshot_and_so_does_its_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit at a target that does not answer is not missed (its rows stay), but its source's
    latest run did not see it, which the snapshot says: rebuilt then, and when it answers again."""
    daemon, _ = daemon_over(tmp_path, tree(tmp_path / "sys", 1))
    source = LanSource({"10.0.0.5", "10.0.0.6"})
    plan = SourcePlan("snmp", source, 60.0, 30.0)  # type: ignore[arg-type]
    daemon.sources["snmp"] = SourceStatus("snmp", 60.0)
    built: list[int] = []
    import agent.daemon as daemon_module

    real = daemon_module.queue_snapshot
    monkeypatch.setattr(daemon_module, "queue_snapshot", lambda *a, **k: built.append(1) or real(*a, **k))
    try:
        assert daemon._open_store()
        asyncio.run(daemon.run_source(plan))
        asyncio.run(daemon.run_source(plan))
        assert len(built) == 1
        source.answering = {"10.0.0.6"}
        asyncio.run(daemon.run_source(plan))
        assert len(built) == 2  # 10.0.0.5's unit is no longer seen by the latest run
        asyncio.run(daemon.run_source(plan))
        assert len(built) == 2
        source.answering = {"10.0.0.5", "10.0.0.6"}
        asyncio.run(daemon.run_source(plan))
        assert len(built) == 3  # seen again
        source.broken = True
        asyncio.run(daemon.run_source(plan))  # a run that failed as a whole looked at nothing
        source.broken = False
        asyncio.run(daemon.run_source(plan))
        assert len(built) == 3
    finally:
        daemon._close_store()


@pytest.mark.parametrize("failure", ["locked", "bug"])
def test_a_snapshot_that_failed_to_queue_is_tried_again_by_the_next_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    sysfs = tree(tmp_path / "sys", 2)
    daemon, plan = daemon_over(tmp_path, sysfs)
    import agent.daemon as daemon_module
    from agent.store import StoreError

    real = daemon_module.queue_snapshot
    failures: list[Exception] = []

    def flaky(*args: Any, **kwargs: Any) -> bool:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(daemon_module, "queue_snapshot", flaky)
    try:
        assert daemon._open_store()
        asyncio.run(daemon.run_source(plan))
        assert snapshots(daemon.settings.state_dir) == 1
        add_device(sysfs, "1-9", 0x046D, 0x0881, serial="CAM09999", product="Rally Camera")
        failures.append(
            StoreError("state database is locked by another process; try again when it is done")
            if failure == "locked"
            else RuntimeError("a bug in the snapshot's code")
        )
        asyncio.run(daemon.run_source(plan))  # the new camera is stored; its snapshot failed
        assert daemon.store is not None and len(daemon.store.devices()) == 3
        assert daemon.store_error is None  # the scan was stored: only the snapshot failed
        assert snapshots(daemon.settings.state_dir) == 1
        asyncio.run(daemon.run_source(plan))  # nothing changed, but the snapshot is still owed
        with Store.open(daemon.settings.state_dir) as store:
            [latest] = [m for m in Outbox(store).messages(with_body=True) if m.kind == "inventory"]
        assert b"CAM09999" in gzip.decompress(latest.body)
    finally:
        daemon._close_store()
