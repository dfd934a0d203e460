"""Outage test: the portal is down for a compressed "hour" of scans (12, as a 5-minute
schedule would run them), then back; one ``roomsync push`` delivers everything, in order per
device, then a fresh snapshot.

``roomsync scan`` and ``roomsync push`` run through ``agent.cli.main`` in this process, against
a fake sysfs tree that changes at every scan (``tests/outbox_loop.py``'s schedule) and the
portal stand-in, stopped and started again on the same port.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.store import Store
from agent.uploader.outbox import Outbox, content_digest
from agent.uploader.protocol import EventsMessage, InventoryMessage
from tests.outbox_loop import TOKEN, write_config, write_tree
from tools.portal_standin import PortalStandIn

SCANS = 12  # an hour of scans every 5 minutes


@pytest.fixture
def portal() -> Iterator[PortalStandIn]:
    with PortalStandIn(TOKEN) as standin:
        yield standin


def roomsync(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(argv))


def scan(root: Path, k: int) -> int:
    """Scan ``k``: the loop's schedule at iteration 5k, where every unit there has new
    firmware (and units come and go, and the room changes at the fourth)."""
    tree, config = write_tree(root, 5 * k), write_config(root, 5 * k)
    return roomsync("scan", "--config", str(config), "--sysfs-root", str(tree), "--no-libusb", "--json")


def push(root: Path, url: str, deadline: float) -> int:
    return roomsync(
        "push",
        "--once",
        "--config",
        str(root / "agent.toml"),
        "--portal-url",
        url,
        "--token-file",
        str(root / "token"),
        "--deadline",
        str(deadline),
    )


def by_identity(events: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event_id, identity in events:
        out.setdefault(identity, []).append(event_id)
    return out


def test_an_hour_of_scans_while_the_portal_is_down_arrives_when_it_is_back(
    tmp_path: Path, portal: PortalStandIn
):
    root = tmp_path
    (root / "token").write_text(TOKEN + "\n")
    state = root / "state"
    url = portal.url

    # Before the outage: delivered as it happens.
    assert scan(root, 0) == 0
    assert push(root, url, 10) == 0
    before = len(portal.messages)
    with Store.open(state) as store:
        stored_before = len(store.events(limit=None))
    assert before == 2 and stored_before > 0  # the first events and the first snapshot

    portal.stop()
    stored = stored_before
    for k in range(1, SCANS + 1):
        assert scan(root, k) == 0
        with Store.open(state) as store:
            now_stored = len(store.events(limit=None))
        assert now_stored > stored, f"scan {k} changed nothing"
        stored = now_stored
        assert push(root, url, 0) == 1  # one attempt, refused connection, gave up at the deadline
        with Store.open(state) as store:
            outbox = Outbox(store)
            queued = outbox.messages()
            stats = outbox.stats()
            portal_state = outbox.portal_state()
        # The outbox grows, batched: the head (attempted once per push), one events message
        # every later scan joins, and only the newest snapshot.
        assert [m.kind for m in queued] == (
            ["events", "inventory"] if k == 1 else ["events", "events", "inventory"]
        ), k
        assert queued[0].attempts == k and all(m.attempts == 0 for m in queued[1:]), k
        assert stats.events_queued == stored - stored_before and stats.events_waiting == 0
        assert portal_state.state == "retrying" and "cannot reach" in (portal_state.reason or "")
    assert len(portal.messages) == before  # nothing got through
    outage_bytes = stats.bytes
    print(
        f"\noutage: {SCANS} scans, {stored - stored_before} events, queued in {len(queued)} "
        f"messages ({outage_bytes} bytes)"
    )

    portal.start()  # back, on the same port
    assert portal.url == url
    assert push(root, url, 30) == 0
    with Store.open(state) as store:
        stats = Outbox(store).stats()
        events = store.events(limit=None)
        rows = store.read("SELECT value FROM meta WHERE key = 'last_snapshot'")
    assert stats.empty and stats.portal.state == "ok"

    # Everything arrived, each event once, in the store's order (so in order per device).
    stored_order = [(e.id, e.identity) for e in events]
    at_portal = [(str(e.id), e.identity) for e in portal.events]
    assert at_portal == stored_order
    assert by_identity(at_portal) == by_identity(stored_order)
    times: dict[str, list[object]] = {}
    for e in portal.events:
        times.setdefault(e.identity, []).append(e.time)
    assert all(t == sorted(t) for t in times.values())  # type: ignore[type-var]

    # Batched: fewer messages than scans; the pending snapshot, then a fresh one after the
    # drain, which is the last message and the latest snapshot.
    after = portal.messages[before:]
    kinds = [type(a.message).__name__ for a in after]
    assert kinds == ["EventsMessage", "EventsMessage", "InventoryMessage", "InventoryMessage"], kinds
    assert len(after) < SCANS
    assert (
        sum(len(a.message.events) for a in after if isinstance(a.message, EventsMessage))
        == len(events) - stored_before
    )
    pending, fresh = (a.message for a in after[2:])
    assert isinstance(pending, InventoryMessage) and isinstance(fresh, InventoryMessage)
    assert portal.latest_inventory == fresh
    assert fresh.sequence == max(a.message.sequence for a in portal.messages)
    assert fresh.generated_at > pending.generated_at
    assert content_digest(fresh) == content_digest(pending)  # nothing changed meanwhile
    assert fresh.sequence == json.loads(rows[0][0])["sequence"]
    with Store.open(state) as store:
        inventory = {(d.identity, d.firmware, d.room) for d in store.devices()}
    assert {(d.identity, d.firmware, p.id) for p in fresh.places for d in p.devices} | {
        (d.identity, d.firmware, None) for d in fresh.unassigned
    } == inventory
    assert sum(1 for r in portal.requests if r.status == 200) == 0  # nothing was sent twice
    print(
        f"after the outage: {len(after)} messages ({kinds.count('EventsMessage')} of events, "
        f"then the pending snapshot and a fresh one), {len(events) - stored_before} events"
    )
