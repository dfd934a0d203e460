"""The daemon stores scans off its event loop and builds a snapshot only when a scan changed
something (issue [12/16]). An in-process daemon over a real sysfs tree and a real SQLite
store; the store write is slowed in its own thread to show the loop keeps turning."""

from __future__ import annotations

import asyncio
import threading
import time
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

    async def main() -> float:
        assert daemon._open_store()
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
        # The loop's connection took the writer's inventory over instead of decoding it.
        assert daemon.store._cache is not None and len(daemon.store._cache[1]) == 30
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
        # A new day: coverage verdicts may have changed at midnight, so it is built again.
        daemon._snapshot_basis = (id(daemon.settings.snapshot), date(2000, 1, 1))
        asyncio.run(run())
        assert len(built) == 3
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
