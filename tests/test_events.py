"""Change events from consecutive scans (agent.events): one table per event type, then
properties over generated scans (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import (
    ChangeEvent,
    EventType,
    Sighting,
    Tracked,
    diff_scan,
    learn_channels,
    reading_facts,
    resolve_room,
    serial_conflicts,
)
from agent.identity import merge_readings
from agent.model import Device, HealthIssue, SerialSource, Severity, Transport

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ADDED, REMOVED, MOVED = EventType.DEVICE_ADDED, EventType.DEVICE_REMOVED, EventType.DEVICE_MOVED
FIRMWARE, HEALTH, CONFLICT = EventType.FIRMWARE_CHANGED, EventType.HEALTH_CHANGED, EventType.SERIAL_CONFLICT
MISSING = HealthIssue("peripheral-missing", "mic pod missing", Severity.WARNING)
BROKEN = HealthIssue("camera-error", "camera does not answer", Severity.ERROR)


def unit(
    serial: str | None = "2313FD1N08Z2",
    *,
    product: str = "Rally Bar",
    source: str = "usb",
    room: str | None = "oslo-4-12",
    firmware: str | None = "1.9.556",
    address: str | None = None,
    issues: Sequence[HealthIssue] = (),
    components: dict[str, str] | None = None,
    label: bool = True,
    at: datetime = T0,
) -> Device:
    """A unit as one source reports it (the transport follows the source's name)."""
    transport = Transport(source) if source in set(Transport) else Transport.USB
    return Device(
        product=product,
        transport=transport,
        address=address or f"{source}-addr",
        first_seen=at,
        last_seen=at,
        room=room,
        serial=serial,
        serial_label_grade=label and serial is not None,
        serial_source=SerialSource.SYNC_INTERFACE if serial else None,
        firmware=firmware,
        components=dict(components or {}),
        health_issues=list(issues),
        sources=[source],
        vendor_id=0x046D,
        product_id=0x089B,
    )


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"ev-{next(numbers)}"


@dataclass
class Run:
    """Scans applied one after another, as the store would, keeping every scan's events."""

    remove_after: int = 3
    state: dict[str, Tracked] = field(default_factory=dict)
    new_id: Callable[[], str] = field(default_factory=counter)
    scans: int = 0
    #: The identity of the unit each reading of the latest scan joined.
    placed: tuple[str, ...] = ()

    def scan(
        self,
        devices: Iterable[Device],
        scope: Iterable[str] | None = None,
        unreached: dict[str, list[str]] | None = None,
    ) -> list[ChangeEvent]:
        self.scans += 1
        diff = diff_scan(
            self.state,
            list(devices),
            T0 + timedelta(minutes=self.scans),
            scope=None if scope is None else set(scope),
            remove_after=self.remove_after,
            new_id=self.new_id,
            unreached=unreached,
        )
        assert not diff.inventory.keys() & diff.removed.keys()
        self.state = diff.inventory
        self.placed = diff.placed
        return list(diff.events)


def kinds(events: Iterable[ChangeEvent]) -> list[tuple[EventType, str]]:
    return [(e.type, e.identity) for e in events]


BAR = unit().identity


# --------------------------------------------------------------------------- one table per event type


def test_added_carries_the_units_summary_and_nothing_before():
    [event] = Run().scan([unit()])
    assert (event.type, event.identity, event.product, event.serial, event.room) == (
        ADDED,
        BAR,
        "Rally Bar",
        "2313FD1N08Z2",
        "oslo-4-12",
    )
    assert event.before is None
    assert event.after == {
        "product": "Rally Bar",
        "room": "oslo-4-12",
        "firmware": "1.9.556",
        "health": "ok",
        "transport": "usb",
        "address": "usb-addr",
        "sources": ["usb"],
        "last_seen": T0.isoformat(),
    }
    assert event.at == T0 + timedelta(minutes=1) and event.id == "ev-1"


REMOVAL_CASES = [
    # (remove_after, scopes of the scans after the one that saw the bar, index of the removing scan)
    pytest.param(3, [{"usb"}, {"usb"}, {"usb"}], 2, id="third-missed-usb-run"),
    pytest.param(1, [{"usb"}], 0, id="remove-after-one"),
    pytest.param(2, [{"usb"}, {"snmp"}, {"mdns"}, {"usb"}], 3, id="other-sources-do-not-count"),
    pytest.param(3, [{"snmp"}] * 6, None, id="never-while-usb-does-not-run"),
    pytest.param(3, [None] * 5, None, id="unknown-scope-counts-nothing"),
    pytest.param(2, [set(), {"usb", "snmp"}, {"usb"}], 2, id="empty-scope-then-full"),
]


@pytest.mark.parametrize(("remove_after", "scopes", "removed_at"), REMOVAL_CASES)
def test_removed_only_after_n_missed_runs_of_its_source(
    remove_after: int, scopes: list[set[str] | None], removed_at: int | None
):
    run = Run(remove_after=remove_after)
    run.scan([unit()])
    removals = [i for i, scope in enumerate(scopes) for e in run.scan([], scope) if e.type is REMOVED]
    assert removals == ([] if removed_at is None else [removed_at])


def test_what_was_seen_at_or_through_an_unreached_target_is_not_missed():
    def appliance() -> list[Device]:
        bar = unit("2232LZ51E7A8", product="Rally Bar Mini", source="collabos", address="10.0.0.5")
        tap = unit("2246FDA0B4C8", product="Tap IP", source="collabos", address="10.0.0.9")
        tap.attributes["paired_with"] = "10.0.0.5"
        pc = unit("NUC0016", product="Room PC", source="ssh", address="pc-1")
        camera = unit("2301SC0005E2", product="Rally Camera", source="ssh", address="pc-1/usb/1-2")
        hub = unit(None, product="Rally Table Hub", source="ssh", address="pc-1-hub")
        hub.attributes["attached_to"] = "pc-1"
        return [bar, tap, pc, camera, hub]

    run = Run(remove_after=2)
    run.scan(appliance())
    held = {"collabos": ["10.0.0.5"], "ssh": ["pc-1"]}
    for _ in range(4):  # the bar refused the agent, the PC did not answer: nothing is gone
        assert run.scan([], {"collabos", "ssh"}, held) == []
    assert all(t.missed == 0 for t in run.state.values()) and len(run.state) == 5
    # Another target of the same source does not hold them; reached again, they are missed.
    assert run.scan([], {"collabos", "ssh"}, {"collabos": ["10.0.0.6"], "ssh": ["pc-10"]}) == []
    assert {t.device.product for t in run.state.values() if t.missed == 1} == {
        "Rally Bar Mini",
        "Tap IP",
        "Room PC",
        "Rally Camera",
        "Rally Table Hub",
    }
    assert len([e for e in run.scan([], {"collabos", "ssh"}) if e.type is REMOVED]) == 5


def test_a_unit_reported_by_another_is_held_only_through_its_reporter():
    # Bar A once reported a Tap at B's address; A stops reporting it. B, unreached, holds
    # nothing of A's: the Tap is missed (its address is A's word, not where it was seen).
    bar = unit("2232LZ51E7A8", product="Rally Bar Mini", source="collabos", address="10.0.0.5")
    tap = unit("2246FDA0B4C8", product="Tap IP", source="collabos", address="10.0.0.6")
    tap.attributes["paired_with"] = "10.0.0.5"
    run = Run(remove_after=2)
    run.scan([bar, tap])
    removed = [e for _ in range(2) for e in run.scan([bar], {"collabos"}, {"collabos": ["10.0.0.6"]})]
    assert [e.type for e in removed] == [REMOVED]


def test_removed_event_describes_the_unit_as_it_was_last_seen():
    run = Run(remove_after=1)
    run.scan([unit(firmware="1.10.0")])
    [event] = run.scan([], {"usb"})
    assert (event.type, event.room, event.after) == (REMOVED, "oslo-4-12", None)
    assert event.before is not None and event.before["firmware"] == "1.10.0"
    assert event.before["last_seen"] == (T0).isoformat()
    assert run.state == {}


def test_seen_again_before_n_resets_the_count():
    run = Run(remove_after=3)
    run.scan([unit()])
    assert run.scan([], {"usb"}) == run.scan([], {"usb"}) == []
    assert run.state[BAR].missed == 2
    assert run.scan([unit()], {"usb"}) == []  # back: not added again, the count starts over
    assert run.state[BAR].missed == 0
    assert run.scan([], {"usb"}) == run.scan([], {"usb"}) == []
    assert kinds(run.scan([], {"usb"})) == [(REMOVED, BAR)]


def test_a_unit_removed_then_seen_again_is_added_again():
    run = Run(remove_after=1)
    run.scan([unit()])
    run.scan([], {"usb"})
    assert kinds(run.scan([unit()])) == [(ADDED, BAR)]


def test_a_unit_seen_by_two_sources_is_removed_when_both_have_missed_it():
    run = Run(remove_after=2)
    run.scan([unit(source="usb"), unit(source="snmp")])
    assert run.scan([], {"usb"}) == run.scan([], {"usb"}) == []  # the usb sighting is gone
    assert [s.source for s in run.state[BAR].sightings] == ["snmp"]
    assert run.scan([], {"snmp"}) == []
    assert kinds(run.scan([], {"snmp"})) == [(REMOVED, BAR)]


MOVE_CASES = [
    # (first scan, second scan, scope of the second, expected (before, after) room or None)
    pytest.param([unit(room="a")], [unit(room="b")], None, ("a", "b"), id="same-source-new-room"),
    pytest.param([unit(room=None)], [unit(room="b")], None, (None, "b"), id="placed"),
    pytest.param([unit(room="a")], [unit(room=None)], None, ("a", None), id="unplaced"),
    pytest.param(
        [unit(source="snmp", address="10.0.0.1", room="a")],
        [unit(source="snmp", address="10.0.0.9", room="b")],
        None,
        ("a", "b"),
        id="new-address-of-the-same-source",
    ),
    pytest.param(
        [unit(source="usb", room="a")],
        [unit(source="snmp", room="b")],
        {"usb", "snmp"},
        ("a", "b"),
        id="unplugged-here-seen-there",
    ),
    pytest.param(
        [unit(source="usb", room="a")],
        [unit(source="snmp", room="b")],
        {"snmp"},
        None,
        id="other-channel-disagrees-is-a-conflict-not-a-move",
    ),
    pytest.param(
        [unit(source="usb", room="a")],
        [unit(source="snmp", room=None)],
        {"snmp"},
        None,
        id="a-source-that-cannot-place-does-not-unplace",
    ),
    pytest.param([unit(room="a")], [], {"usb"}, None, id="missed-once-stays"),
]


@pytest.mark.parametrize(("first", "second", "scope", "expected"), MOVE_CASES)
def test_moved_when_the_room_changes_s9(
    first: list[Device],
    second: list[Device],
    scope: set[str] | None,
    expected: tuple[str | None, str | None] | None,
):
    run = Run()
    run.scan(first)
    moves = [e for e in run.scan(second, scope) if e.type is MOVED]
    if expected is None:
        assert moves == []
    else:
        [move] = moves
        assert (move.before, move.after) == ({"room": expected[0]}, {"room": expected[1]})
        assert move.room == expected[1]
        assert run.state[BAR].device.room == expected[1]


def test_a_unit_placed_by_another_sighting_takes_its_children_along():
    run = Run()
    run.scan([unit(source="snmp", room="b")], {"snmp"})
    bar = unit(source="usb", room="a")
    bar.children = [unit("2325LZ51XY58", product="Sight", room="a")]
    run.scan([bar], {"usb"})  # usb says a, snmp (not run, still standing) says b: b stays
    device = run.state[BAR].device
    assert (device.room, [c.room for c in device.children]) == ("b", ["b"])
    assert bar.room == "a" and bar.children[0].room == "a"  # the scan's own devices are not changed


FIRMWARE_CASES = [
    pytest.param(
        unit(firmware="1.9.556"),
        unit(firmware="1.10.0"),
        (
            {"firmware": "1.9.556", "components": {}, "source": "usb"},
            {"firmware": "1.10.0", "components": {}, "source": "usb"},
        ),
        id="unit",
    ),
    pytest.param(
        unit(components={"audio": "2.3", "video": "1.1"}),
        unit(components={"audio": "2.4", "video": "1.1"}),
        (
            {"firmware": "1.9.556", "components": {"audio": "2.3", "video": "1.1"}, "source": "usb"},
            {"firmware": "1.9.556", "components": {"audio": "2.4", "video": "1.1"}, "source": "usb"},
        ),
        id="component",
    ),
    pytest.param(unit(firmware="1.9.556"), unit(firmware=None), None, id="unknown-now-is-no-change"),
    pytest.param(unit(firmware=None), unit(firmware="1.9.556"), None, id="known-now-is-no-change"),
    pytest.param(
        unit(components={"audio": "2.3"}), unit(components={"video": "1.1"}), None, id="other-components-read"
    ),
    pytest.param(
        unit(source="usb", firmware="1.9.556"),
        unit(source="snmp", firmware="CollabOS 1.9.556"),
        None,
        id="another-channel-writes-it-differently",
    ),
]


@pytest.mark.parametrize(("first", "second", "expected"), FIRMWARE_CASES)
def test_firmware_changed_compares_a_source_with_itself(
    first: Device, second: Device, expected: tuple[dict, dict] | None
):
    run = Run()
    run.scan([first])
    events = run.scan([second])
    changed = [(e.before, e.after) for e in events if e.type is FIRMWARE]
    assert changed == ([] if expected is None else [expected])


HEALTH_CASES = [
    pytest.param([], [MISSING], ("ok", [], "warning", ["peripheral-missing"]), id="ok-to-warning"),
    pytest.param(
        [MISSING],
        [BROKEN, MISSING],
        ("warning", ["peripheral-missing"], "error", ["camera-error", "peripheral-missing"]),
        id="warning-to-error",
    ),
    pytest.param([BROKEN], [], ("error", ["camera-error"], "ok", []), id="error-to-ok"),
    pytest.param([MISSING], [HealthIssue("remote-missing", "remote missing")], None, id="same-state"),
    pytest.param([HealthIssue("note", "fyi", Severity.INFO)], [], None, id="info-is-ok"),
]


@pytest.mark.parametrize(("first", "second", "expected"), HEALTH_CASES)
def test_health_changed_on_a_new_state(
    first: list[HealthIssue],
    second: list[HealthIssue],
    expected: tuple[str, list[str], str, list[str]] | None,
):
    run = Run()
    run.scan([unit(issues=first)])
    changed = [(e.before, e.after) for e in run.scan([unit(issues=second)]) if e.type is HEALTH]
    if expected is None:
        assert changed == []
    else:
        assert changed == [
            (
                {"health": expected[0], "issues": expected[1], "source": "usb"},
                {"health": expected[2], "issues": expected[3], "source": "usb"},
            )
        ]


def test_health_judged_by_another_channel_does_not_flap():
    run = Run()
    run.scan([unit(source="usb", issues=[MISSING]), unit(source="snmp")])
    for _ in range(3):
        assert run.scan([unit(source="usb", issues=[MISSING])], {"usb"}) == []
        assert run.scan([unit(source="snmp")], {"snmp"}) == []


CONFLICT_CASES = [
    pytest.param(
        [unit(source="usb", room="a"), unit(source="snmp", room="b")],
        {("Rally Bar", "a"), ("Rally Bar", "b")},
        None,
        id="two-rooms-one-scan",
    ),
    pytest.param(
        [unit(source="usb"), unit(source="snmp", product="Rally Bar Mini")],
        {("Rally Bar", "oslo-4-12"), ("Rally Bar Mini", "oslo-4-12")},
        None,
        id="two-products",
    ),
    pytest.param(
        [
            unit(source="ssh", address="pc-1/usb/1-1", room="a"),
            unit(source="ssh", address="pc-2/usb/1-1", room="b"),
        ],
        {("Rally Bar", "a"), ("Rally Bar", "b")},
        None,
        id="one-source-two-rooms",
    ),
    pytest.param(
        [unit(source="usb", room="a"), unit(source="snmp", room=None)], None, None, id="unplaced-is-no-claim"
    ),
    pytest.param(
        [
            unit(source="usb", room="a"),
            unit(source="snmp", room="a", address="10.0.0.1"),
            unit(source="mdns", room="a", address="10.0.0.1"),
        ],
        None,
        None,
        id="agreeing-channels",
    ),
    pytest.param(
        [
            unit(source="usb", room="a"),
            unit(source="snmp", room="a", address="10.0.0.1"),
            unit(source="snmp", room="a", address="10.0.0.2"),
        ],
        {("Rally Bar", "a")},
        None,
        id="two-lan-hosts-one-serial",
    ),
    pytest.param(
        [
            unit(None, source="usb", room="a", address="1-1"),
            unit(None, source="usb", room="b", address="1-2"),
        ],
        None,
        None,
        id="no-serial",
    ),
    pytest.param(
        [unit(source="usb", room="a", label=False), unit(source="snmp", room="b", label=False)],
        None,
        None,
        id="not-label-grade",
    ),
    pytest.param(
        [unit("abc 123", source="usb", room="a"), unit("ABC123", source="snmp", product="Tap", room="a")],
        {("Rally Bar", "a"), ("Tap", "a")},
        None,
        id="serials-compared-normalised",
    ),
]


@pytest.mark.parametrize(("devices", "claims", "_"), CONFLICT_CASES)
def test_serial_conflict(devices: list[Device], claims: set[tuple[str, str | None]] | None, _: None):
    conflicts = [e for e in Run().scan(devices) if e.type is CONFLICT]
    if claims is None:
        assert conflicts == []
        return
    [event] = conflicts
    assert event.before is None and event.after is not None
    assert {(c["product"], c["room"]) for c in event.after["claims"]} == claims
    assert event.identity == min(c["identity"] for c in event.after["claims"])


def test_a_conflict_is_reported_once_while_it_lasts_and_again_when_it_comes_back():
    run = Run(remove_after=1)
    both = [unit(source="usb", room="a"), unit(source="snmp", room="b")]
    assert CONFLICT in [e.type for e in run.scan(both)]
    assert run.scan(both) == []
    assert run.scan(both) == []
    assert run.scan([unit(source="usb", room="a")], {"usb", "snmp"}) == []  # resolved
    assert kinds(run.scan(both)) == [(CONFLICT, BAR)]  # it came back


def test_a_sighting_its_source_missed_claims_nothing():
    """Unplugged from the room PC in room a, the bar shows up on the LAN in room b: a move,
    not a conflict, since USB ran and no longer sees it there."""
    run = Run()
    run.scan([unit(source="usb", room="a")])
    assert kinds(run.scan([unit(source="snmp", room="b")], {"usb", "snmp"})) == [(MOVED, BAR)]
    assert serial_conflicts(run.state) == {}


def test_a_conflict_whose_claims_change_is_reported_again():
    run = Run()
    run.scan([unit(source="usb", room="a"), unit(source="snmp", room="b")])
    [event] = run.scan([unit(source="usb", room="a"), unit(source="snmp", room="c")])
    assert event.type is CONFLICT and event.before is not None and event.after is not None
    assert {c["room"] for c in event.before["claims"]} == {"a", "b"}
    assert {c["room"] for c in event.after["claims"]} == {"a", "c"}


def test_channels_scheduled_apart_that_disagree_raise_one_conflict_and_never_flap():
    """A daemon runs USB and SNMP at different times; the local USB says room a, the room
    map places the bar's address in room b."""
    run = Run()
    assert kinds(run.scan([unit(source="usb", room="a")], {"usb"})) == [(ADDED, BAR)]
    assert kinds(run.scan([unit(source="snmp", room="b")], {"snmp"})) == [(CONFLICT, BAR)]
    for _ in range(4):
        assert run.scan([unit(source="usb", room="a")], {"usb"}) == []
        assert run.scan([unit(source="snmp", room="b")], {"snmp"}) == []
    assert run.state[BAR].device.room == "a"  # the first placement stays while they disagree


def test_duplicates_of_one_identity_in_a_scan_are_one_unit():
    run = Run()
    events = run.scan([unit(source="usb", firmware=None), unit(source="snmp")])
    assert kinds(events) == [(ADDED, BAR)]
    device = run.state[BAR].device
    # Sources by trust (both read by the Sync interface here), then by name; the firmware
    # from the channel that has one.
    assert (device.sources, device.firmware) == (["snmp", "usb"], "1.9.556")


def test_first_seen_is_kept_and_last_seen_follows():
    run = Run()
    run.scan([unit(at=T0)])
    run.scan([unit(at=T0 + timedelta(days=2))])
    device = run.state[BAR].device
    assert (device.first_seen, device.last_seen) == (T0, T0 + timedelta(days=2))


def test_events_come_in_a_stable_order():
    run = Run(remove_after=1)
    run.scan([unit("A1", room="a"), unit("B2", room="a", issues=[MISSING]), unit("C3")])
    events = run.scan(
        [
            unit("A1", room="b", firmware="2.0"),
            unit("B2", room="a"),
            unit("D4"),
            unit("E5", source="snmp"),
            unit("E5", source="usb", product="Tap", room="x"),
        ],
        {"usb", "snmp"},
    )
    assert [(e.type, e.serial) for e in events] == [
        (MOVED, "A1"),
        (FIRMWARE, "A1"),
        (HEALTH, "B2"),
        (REMOVED, "C3"),
        (ADDED, "D4"),
        (ADDED, "E5"),
        (ADDED, "E5"),
        (CONFLICT, "E5"),
    ]
    assert [e.id for e in events] == [f"ev-{n}" for n in range(4, 12)]


def test_remove_after_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        diff_scan({}, [], T0, remove_after=0)


def test_event_and_sighting_round_trip():
    run = Run()
    run.scan([unit(components={"audio": "2.3"}, issues=[MISSING])])
    for event in run.scan([unit(room="b", components={"audio": "2.4"})]):
        assert ChangeEvent.from_dict(event.to_dict()) == event
    for sighting in run.state[BAR].sightings:
        assert Sighting.from_dict(sighting.to_dict()) == sighting


def test_resolve_room():
    def seen(room: str | None, missed: int = 0, source: str = "usb") -> Sighting:
        return Sighting(source, "x", room, None, {}, "ok", (), T0, missed)

    assert resolve_room("a", [seen("b")]) == "b"
    assert resolve_room("a", [seen("a"), seen("b", source="snmp")]) == "a"
    assert resolve_room(None, [seen("c"), seen("b", source="snmp")]) == "b"
    assert resolve_room("a", [seen(None), seen("a", missed=1, source="snmp")]) == "a"
    assert resolve_room("a", [seen("b", missed=1), seen("c", missed=2, source="snmp")]) == "b"
    assert resolve_room("a", [seen(None)]) is None
    assert resolve_room("a", []) is None


# --------------------------------------------------------------------------- properties

SOURCES = ("usb", "snmp", "mdns")


@st.composite
def devices(draw: st.DrawFn, sources: Sequence[str] = SOURCES) -> Device:
    label = draw(st.booleans())
    source = draw(st.sampled_from(sources))
    return unit(
        draw(st.sampled_from(["A1", "B2", "C3", "D4"])) if label or draw(st.booleans()) else None,
        product=draw(st.sampled_from(["Rally Bar", "Tap"])),
        source=source,
        room=draw(st.sampled_from([None, "r1", "r2"])),
        firmware=draw(st.sampled_from([None, "1.0", "1.1"])),
        address=f"{source}-{draw(st.integers(1, 3))}",
        issues=draw(st.sampled_from([[], [MISSING], [BROKEN]])),
        components=draw(st.sampled_from([{}, {"audio": "2.3"}, {"audio": "2.4"}])),
        label=label,
    )


scans = st.lists(devices(), max_size=6)
#: Scans as sources make them: one reading per channel (source and address) and scan.
channel_scans = st.lists(devices(), max_size=6, unique_by=lambda d: (d.sources[0], d.address))
scopes = st.none() | st.sets(st.sampled_from(SOURCES))


@settings(max_examples=150, deadline=None)
@given(found=scans, scope=scopes)
def test_a_scan_against_itself_yields_no_events(found: list[Device], scope: set[str] | None):
    run = Run()
    run.scan(found)
    state = run.state
    assert run.scan(found, scope) == []
    assert run.state == state


@settings(max_examples=150, deadline=None)
@given(first=channel_scans, second=channel_scans, scope=scopes, n=st.integers(1, 3))
def test_repeating_a_scan_reaches_a_fixpoint(
    first: list[Device], second: list[Device], scope: set[str] | None, n: int
):
    """Repeated, a scan only lets the sightings it misses expire (removals, moves where an
    expired sighting was what placed a unit, health where an expired channel disagreed on the
    firmware, and a unit joining the one its host's channels now point to — or its serial,
    once the sightings that contested it expire — with the conflicts and the firmware reading
    that brings); after remove_after repeats nothing changes. (A channel reports one unit a
    scan: two units on one channel can take a repeat more to settle.)"""
    run = Run(remove_after=n)
    run.scan(first)
    run.scan(second, scope)
    for _ in range(n):
        assert {e.type for e in run.scan(second, scope)} <= {REMOVED, MOVED, HEALTH, CONFLICT, FIRMWARE}
    state = run.state
    assert run.scan(second, scope) == []
    assert run.state == state


@settings(max_examples=100, deadline=None)
@given(found=st.lists(devices(), min_size=1, max_size=6), n=st.integers(1, 5))
def test_added_then_removed_after_exactly_n_full_scans(found: list[Device], n: int):
    run = Run(remove_after=n)
    added = {e.identity for e in run.scan(found) if e.type is ADDED}
    assert added == {d.identity for d in merge_readings(found)}  # one unit per identity
    for _ in range(n - 1):
        assert [e for e in run.scan([], SOURCES) if e.type is REMOVED] == []
    assert {e.identity for e in run.scan([], SOURCES) if e.type is REMOVED} == added
    assert run.state == {}


@settings(max_examples=150, deadline=None)
@given(presence=st.lists(st.booleans(), max_size=14), n=st.integers(1, 4))
def test_removal_follows_n_consecutive_misses(presence: list[bool], n: int):
    """Against a model: a counter reset by every sighting, removal at n misses in a row."""
    run = Run(remove_after=n)
    run.scan([unit()])
    present, missed = True, 0
    for seen in presence:
        events = kinds(run.scan([unit()] if seen else [], {"usb"}))
        expected: list[tuple[EventType, str]] = []
        if seen:
            missed = 0
            if not present:
                expected, present = [(ADDED, BAR)], True
        elif present:
            missed += 1
            if missed == n:
                expected, present, missed = [(REMOVED, BAR)], False, 0
        assert events == expected
        assert (BAR in run.state) == present
        if present:
            assert run.state[BAR].missed == missed


@settings(max_examples=150, deadline=None)
@given(
    usb=st.lists(devices(["usb"]), max_size=5),
    lan=st.lists(st.lists(devices(["snmp"]), max_size=5), min_size=1, max_size=5),
    n=st.integers(1, 3),
)
def test_scans_scoped_to_snmp_never_touch_usb_units(usb: list[Device], lan: list[list[Device]], n: int):
    """A unit only USB ever reported gets no event and keeps its state, whatever SNMP-only
    scans find (a unit both report is SNMP's business too)."""
    run = Run(remove_after=n)
    run.scan(usb, {"usb"})
    before = dict(run.state)
    shared = {d.identity for found in lan for d in found}
    for found in lan:
        for event in run.scan(found, {"snmp"}):
            if event.type is not CONFLICT:  # a conflict may name a USB unit: that is its point
                assert event.identity not in before or event.identity in shared
    for identity in before.keys() - shared:
        assert run.state[identity] == before[identity]
    for identity in before.keys() & shared:
        usb = [s for s in run.state[identity].sightings if s.source == "usb"]
        assert usb == list(before[identity].sightings)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(scans, scopes), min_size=1, max_size=6), n=st.integers(1, 3))
def test_event_bookkeeping(steps: list[tuple[list[Device], set[str] | None]], n: int):
    """Every event id is unique; added only for units not in the inventory, removed only
    for units that were; the inventory holds exactly the units added and not removed; a
    conflict event is only raised for a serial the inventory holds in conflict."""
    run = Run(remove_after=n)
    present: set[str] = set()
    ids: list[str] = []
    for found, scope in steps:
        before = set(run.state)
        events = run.scan(found, scope)
        ids.extend(e.id for e in events)
        for event in events:
            if event.type is ADDED:
                assert event.identity not in before
                present.add(event.identity)
            elif event.type is REMOVED:
                assert event.identity in before
                present.discard(event.identity)
            elif event.type is CONFLICT:
                assert event.serial is not None
                conflicts = serial_conflicts(run.state).values()
                assert any(c.identity == event.identity for claims in conflicts for c in claims)
            else:
                assert event.identity in before and event.identity in run.state
        assert set(run.state) == present
        assert len(run.placed) == len(found) and set(run.placed) <= set(run.state)
    assert len(ids) == len(set(ids))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(scans, scopes), min_size=1, max_size=6), n=st.integers(1, 3))
def test_leaving_alone_what_a_scan_cannot_touch_changes_nothing(
    steps: list[tuple[list[Device], set[str] | None]], n: int
):
    """diff_scan takes through the grouping only the units a scan can change (a source that
    ran saw them, or they share a key with one of its readings): the same events and the same
    inventory as taking every unit through it."""
    lean: dict[str, Tracked] = {}
    full: dict[str, Tracked] = {}
    for k, (found, scope) in enumerate(steps):
        at = T0 + timedelta(minutes=k)
        ids_lean, ids_full = counter(), counter()
        a = diff_scan(lean, found, at, scope=scope, remove_after=n, new_id=ids_lean)
        b = diff_scan(full, found, at, scope=scope, remove_after=n, new_id=ids_full, incremental=False)
        assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
        assert a.inventory == b.inventory and a.placed == b.placed
        lean, full = a.inventory, b.inventory


def _at(found: Sequence[Device], at: datetime, *, skew: bool = False) -> list[Device]:
    """The readings as a scan at ``at`` makes them (each read at that instant; ``skew``: the
    last one a second later, as readings of two instants)."""
    out = []
    for i, device in enumerate(found):
        copy = device.clone()
        moment = at + timedelta(seconds=1) if skew and i == len(found) - 1 else at
        copy.first_seen = copy.last_seen = moment
        for child in copy.children:
            child.first_seen = child.last_seen = moment
        out.append(copy)
    return out


@settings(max_examples=300, deadline=None)
@given(
    pool=st.lists(st.tuples(channel_scans | scans, scopes), min_size=1, max_size=3),
    order=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=8),
    n=st.integers(1, 3),
)
def test_carrying_settled_units_over_gives_what_the_full_diff_gives(
    pool: list[tuple[list[Device], set[str] | None]], order: list[tuple[int, bool]], n: int
):
    """A unit the scan finds as the previous one did (``known``) is carried over with its times
    moved on instead of being grouped and merged again: the same events, inventory (times
    included), readings kept, placements and removals as the full diff. Scans repeat (so that
    units settle) and sometimes read at two instants (then nothing may settle)."""
    fast: dict[str, Tracked] = {}
    full: dict[str, Tracked] = {}
    known: dict[tuple[str, str], tuple[str, object]] = {}
    for k, (index, skew) in enumerate(order):
        found, scope = pool[index % len(pool)]
        readings = _at(found, T0 + timedelta(minutes=k), skew=skew and k % 3 == 2)
        facts = [reading_facts(d) for d in readings]
        a = diff_scan(
            fast,
            readings,
            readings[0].last_seen if readings else T0,
            scope=scope,
            remove_after=n,
            new_id=counter(),
            known=known,
            facts=facts,
        )
        b = diff_scan(
            full,
            readings,
            readings[0].last_seen if readings else T0,
            scope=scope,
            remove_after=n,
            new_id=counter(),
        )
        assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
        assert a.inventory == b.inventory
        assert a.placed == b.placed and a.removed == b.removed and a.merged == b.merged
        for identity, unit_ in a.inventory.items():
            assert unit_.device.to_dict() == b.inventory[identity].device.to_dict()
            assert [s.to_dict() for s in unit_.sightings] == [
                s.to_dict() for s in b.inventory[identity].sightings
            ]
            assert (
                unit_.keys == b.inventory[identity].keys
                or unit_.keys is None
                or b.inventory[identity].keys is None
            )
        learn_channels(known, readings, facts, a.placed)
        fast, full = a.inventory, b.inventory


def test_a_repeated_scan_settles_every_unit_and_a_changed_one_does_not():
    found = [
        unit("A1", source="usb", address="usb-1"),
        unit("A1", source="snmp", address="10.0.0.1"),
        unit("B2", source="usb", address="usb-2"),
        unit("C3", source="usb", address="usb-3"),
    ]
    state: dict[str, Tracked] = {}
    known: dict[tuple[str, str], tuple[str, object]] = {}
    for k, change in enumerate([None, None, "B2"]):
        readings = _at(found, T0 + timedelta(minutes=k))
        if change:
            next(d for d in readings if d.serial == change).firmware = "2.0"
        facts = [reading_facts(d) for d in readings]
        diff = diff_scan(state, readings, readings[0].last_seen, known=known, facts=facts)
        learn_channels(known, readings, facts, diff.placed)
        state = diff.inventory
        if k == 0:
            assert diff.settled == frozenset()
        elif k == 1:
            assert diff.settled == frozenset(state) and len(state) == 3
        else:
            assert "serial:Rally Bar:B2" not in diff.settled and len(diff.settled) == 2
            assert [e.type for e in diff.events] == [FIRMWARE]
