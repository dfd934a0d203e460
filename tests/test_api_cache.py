"""``/v1/rooms`` and ``/v1/inventory`` are answered from a cache that a stored scan or a reload
invalidates (issue [12/16]: room summaries are not rebuilt for every request)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.api import ApiServer
from agent.catalog import load_catalog
from agent.model import Device, Room, Transport
from agent.store import Store

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def bar(serial: str, room: str) -> Device:
    return Device(
        product="Rally Bar",
        transport=Transport.USB,
        address=f"1-{serial[-1]}",
        first_seen=NOW,
        last_seen=NOW,
        room=room,
        serial=serial,
        serial_label_grade=True,
        sources=["usb"],
    )


@dataclass
class Settings:
    catalog: Any = field(default_factory=load_catalog)
    rooms: tuple[Room, ...] = ()


@dataclass
class Daemon:
    store: Store
    settings: Settings = field(default_factory=Settings)


def answer(api: ApiServer, handler: str) -> Any:
    response = asyncio.run(getattr(api, handler)(None))
    return json.loads(response.text)


def test_rooms_and_inventory_are_rebuilt_only_after_a_stored_scan_or_a_reload(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.record_scan([bar("2313FD1N08Z2", "oslo-4-12")], [], NOW, sources_run={"usb"})
    daemon = Daemon(store)
    api = ApiServer(daemon, "127.0.0.1:0", None)  # type: ignore[arg-type]
    built = []
    summary = api._summary
    api._summary = lambda: built.append(1) or summary()  # type: ignore[method-assign]

    assert [r["room"] for r in answer(api, "rooms")] == ["oslo-4-12"]
    assert [r["room"] for r in answer(api, "rooms")] == ["oslo-4-12"]
    assert len(answer(api, "inventory")["devices"]) == 1
    assert len(answer(api, "inventory")["devices"]) == 1
    assert len(built) == 2  # once per path

    later = NOW + timedelta(minutes=5)
    store.record_scan(
        [bar("2313FD1N08Z2", "oslo-4-12"), bar("2313FD1N08Z3", "oslo-4-14")], [], later, sources_run={"usb"}
    )
    assert [r["room"] for r in answer(api, "rooms")] == ["oslo-4-12", "oslo-4-14"]
    assert answer(api, "inventory")["last_scan"] == later.isoformat()
    assert len(built) == 4

    daemon.settings = Settings(rooms=(Room("oslo-4-16", "Nordkapp"),))  # a reload
    assert "oslo-4-16" in [r["room"] for r in answer(api, "rooms")]
    assert len(built) == 5
    store.close()
