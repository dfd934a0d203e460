"""One unit, one record (agent.identity): the examples of docs/identity.md, one test each,
then the store merging channels across scans, then properties over generated readings."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import EventType, Tracked, diff_scan, serial_conflicts
from agent.identity import (
    FIRMWARE_DISAGREEMENT,
    MODEL_DISAGREEMENT,
    MergeRules,
    Reading,
    group_readings,
    merge_readings,
    normalize_mac,
    normalize_version,
)
from agent.model import Device, HealthIssue, SerialSource, Severity, Transport
from agent.store import Store as StoreDb

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SERIAL = "2313FD1N08Z2"
RULES = MergeRules(generic_products=frozenset({"CollabOS bar (unnamed)"}))
FAMILY = {
    "Rally Bar": "collabos-bar",
    "Rally Bar Mini": "collabos-bar",
    "CollabOS bar (unnamed)": "collabos-bar",
    "Tap": "controller",
    "Room PC": "room-pc",
    "Brio": "webcam",
}
SERIAL_SOURCES = {
    "usb": SerialSource.SYNC_INTERFACE,
    "replay": SerialSource.SYNC_INTERFACE,
    "mdns": SerialSource.MDNS_TXT,
    "snmp": SerialSource.SNMP_ENTITY,
    "ssh": SerialSource.SSH_DMI,
}
FIRMWARE_SOURCES = {
    "usb": "sync-interface",
    "mdns": "mdns-txt",
    "snmp": "snmp-entity-firmware",
    "ssh": "bios",
}


def reading(
    source: str,
    address: str,
    serial: str | None = SERIAL,
    *,
    product: str = "Rally Bar",
    label: bool = True,
    firmware: str | None = None,
    at: datetime = T0,
    room: str | None = None,
    **attributes: Any,
) -> Device:
    """One channel's report of a unit, as the scan pipeline makes it (placed, categorised)."""
    transport = Transport(source) if source in set(Transport) else Transport.USB
    return Device(
        product=product,
        category=FAMILY.get(product, "other"),
        transport=transport,
        address=address,
        first_seen=at,
        last_seen=at,
        room=room,
        serial=serial,
        serial_label_grade=label and serial is not None,
        serial_source=SERIAL_SOURCES.get(source) if serial else None,
        firmware=firmware,
        firmware_source=FIRMWARE_SOURCES.get(source) if firmware else None,
        sources=[source],
        vendor_id=0x046D if transport is Transport.USB else None,
        product_id=0x089B if transport is Transport.USB else None,
        attributes=dict(attributes),
    )


def units(*readings: Device) -> list[Device]:
    return merge_readings(list(readings), RULES)


# --------------------------------------------------------------------------- the examples of docs/identity.md


def test_one_bar_on_usb_and_mdns_is_one_unit_with_the_sync_interface_facts():
    [bar] = units(
        reading("usb", "2-1.1", firmware="1.9.556"),
        reading("mdns", "10.0.0.5", firmware="1.9.5", host="RallyBar-AAA.local."),
    )
    assert [(s.source, s.transport, s.address, s.serial_source) for s in bar.seen_by] == [
        ("usb", "usb", "2-1.1", "sync-interface"),
        ("mdns", "mdns", "10.0.0.5", "mdns-txt"),
    ]
    assert (bar.firmware, bar.serial_source, bar.transport, bar.address) == (
        "1.9.556",
        SerialSource.SYNC_INTERFACE,
        Transport.USB,
        "2-1.1",
    )
    assert {fact: p.source for fact, p in bar.provenance.items()} == dict.fromkeys(
        ["serial", "model", "firmware", "address", "health"], "usb"
    )
    assert bar.identity == f"serial:Rally Bar:{SERIAL}" and bar.attributes["host"] == "RallyBar-AAA.local."


def test_two_serials_never_join_even_on_one_host_name():
    found = units(
        reading("usb", "2-1.1"),
        reading("mdns", "10.0.0.6", "2313FD1N0999", host="RallyBar-BBB.local."),
        reading("snmp", "10.0.0.7", "2313FD1N0777", host="RallyBar-BBB.local."),
    )
    assert sorted(d.serial or "" for d in found) == sorted(["2313FD1N0777", "2313FD1N0999", SERIAL])


def test_an_snmp_agent_with_only_an_address_joins_the_one_host_there():
    [bar] = units(
        reading("mdns", "10.0.0.5", host="RallyBar-AAA.local."),
        reading("snmp", "10.0.0.5", None, product="Rally Bar"),
    )
    assert [s.source for s in bar.seen_by] == ["snmp", "mdns"]  # ENTITY-MIB ranks above TXT
    assert bar.serial == SERIAL and bar.provenance["serial"].source == "mdns"


def test_an_address_two_named_hosts_share_joins_nothing():
    found = units(
        reading("mdns", "127.0.0.1", None, host="a.local"),
        reading("mdns", "127.0.0.1", None, host="b.local"),
        reading("snmp", "127.0.0.1", None),
    )
    assert len(found) == 3


def test_a_port_is_another_endpoint():
    found = units(reading("mdns", "127.0.0.1", None, host="a.local"), reading("snmp", "127.0.0.1:1161", None))
    assert len(found) == 2


def test_a_serial_of_another_family_is_a_conflict_not_a_merge():
    found = units(reading("usb", "2-1.1"), reading("mdns", "10.0.0.8", product="Tap"))
    assert sorted(d.product for d in found) == ["Rally Bar", "Tap"]
    run = Store()
    run.scan([reading("usb", "2-1.1"), reading("mdns", "10.0.0.8", product="Tap")])
    [claims] = serial_conflicts(run.state).values()
    assert {c.product for c in claims} == {"Rally Bar", "Tap"}


def test_one_source_putting_a_serial_on_two_hosts_contests_it():
    found = units(
        reading("mdns", "10.0.0.5", host="bar-a.local"),
        reading("mdns", "10.0.0.6", host="bar-b.local"),
    )
    assert len(found) == 2 and len({d.identity for d in found}) == 2
    run = Store()
    events = run.scan(
        [reading("mdns", "10.0.0.5", host="bar-a.local"), reading("mdns", "10.0.0.6", host="bar-b.local")]
    )
    assert [e.type for e in events].count(EventType.DEVICE_ADDED) == 2
    [conflict] = [e for e in events if e.type is EventType.SERIAL_CONFLICT]
    assert {c["address"] for c in conflict.after["claims"]} == {"10.0.0.5", "10.0.0.6"}
    assert (
        run.scan(  # while it lasts, it is not reported again and nothing merges
            [reading("mdns", "10.0.0.5", host="bar-a.local"), reading("mdns", "10.0.0.6", host="bar-b.local")]
        )
        == []
    )
    assert run.scan([], {"mdns"}) == [] and len(run.state) == 2  # both missed: still two


def test_two_named_hosts_behind_one_address_claiming_one_serial_are_a_conflict_not_a_crash(tmp_path):
    """Two mDNS hosts on 127.0.0.1 announcing one serial in one run: two units, a conflict,
    and the store keeps both (it once refused the scan: one channel twice in one unit)."""
    found = [
        reading("mdns", "127.0.0.1", host="RallyBar-A.local."),
        reading("mdns", "127.0.0.1", host="RallyBar-B.local."),
    ]
    assert len(units(*found)) == 2
    with StoreDb.open(tmp_path) as store:
        record = store.record_scan(found, [], T0, rules=RULES)
        assert [e.type for e in record.events].count(EventType.SERIAL_CONFLICT) == 1
        assert len(store.devices()) == 2
        # The same channel twice in one unit (nothing tells the two apart) is one sighting.
        twins = [reading("snmp", "10.0.0.7", None), reading("snmp", "10.0.0.7", None)]
        store.record_scan(twins, [], T0 + timedelta(minutes=1), rules=RULES)
        [pc] = [d for d in store.devices() if d.address == "10.0.0.7"]
        assert len(pc.seen_by) == 1


def test_two_webcams_with_one_chip_serial_stay_two():
    found = units(
        reading("usb", "1-1", "0000ABCD", product="Brio", label=False),
        reading("usb", "1-2", "0000ABCD", product="Brio", label=False),
    )
    assert [d.identity for d in found] == ["usb:1-1:046d:089b", "usb:1-2:046d:089b"]


def test_a_room_pc_over_ssh_and_mdns_is_one_unit_by_its_host_name():
    [pc] = units(
        reading("ssh", "10.1.0.12", "PF3ABCDE", product="Room PC", hostname="ROOM5-PC", firmware="F.20"),
        reading("mdns", "10.1.0.99", None, product="Room PC", host="room5-pc.local."),
    )
    assert [s.source for s in pc.seen_by] == ["ssh", "mdns"] and pc.firmware == "F.20"


def test_a_mac_address_joins_readings_in_any_spelling():
    [tap] = units(
        reading("mdns", "10.0.0.9", None, product="Tap", mac="AA-BB-CC-00-11-22"),
        reading("snmp", "10.0.0.10", None, product="Tap", mac_addresses=["aa:bb:cc:00:11:22"]),
    )
    assert len(tap.seen_by) == 2
    assert normalize_mac("aabb.cc00.1122") == "aa:bb:cc:00:11:22"
    assert normalize_mac("00:00:00:00:00:00") is None and normalize_mac("not a mac") is None


# --------------------------------------------------------------------------- facts and disagreements


def test_a_firmware_disagreement_is_a_warning_naming_both_values_and_channels():
    [bar] = units(reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware="1.9.5"))
    [issue] = [i for i in bar.health_issues if i.code == FIRMWARE_DISAGREEMENT]
    assert issue.severity is Severity.WARNING
    for text in ("1.9.556", "1.9.5", "sync-interface", "mdns-txt", "2-1.1", "10.0.0.5"):
        assert text in issue.message
    [disagreement] = bar.disagreements
    assert [(v.value, v.source) for v in disagreement.values] == [("1.9.556", "usb"), ("1.9.5", "mdns")]


def test_versions_written_differently_agree():
    assert normalize_version("V1.09.556") == normalize_version("1.9.556")
    [bar] = units(
        reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware="v1.09.556")
    )
    assert bar.disagreements == [] and bar.health_issues == []


def test_two_named_products_disagree_but_a_fallback_name_yields():
    [bar] = units(reading("usb", "2-1.1"), reading("mdns", "10.0.0.5", product="Rally Bar Mini"))
    assert bar.product == "Rally Bar"
    assert [i.code for i in bar.health_issues] == [MODEL_DISAGREEMENT]
    [named] = units(reading("usb", "2-1.1", product="CollabOS bar (unnamed)"), reading("mdns", "10.0.0.5"))
    assert named.product == "Rally Bar" and named.health_issues == []


def test_health_issues_of_every_channel_are_kept():
    usb = reading("usb", "2-1.1")
    usb.health_issues = [HealthIssue("peripheral-missing", "mic pod missing")]
    mdns = reading("mdns", "10.0.0.5")
    mdns.health_issues = [HealthIssue("mdns-data", "TXT repaired", Severity.INFO)]
    [bar] = units(usb, mdns)
    assert [i.code for i in bar.health_issues] == ["peripheral-missing", "mdns-data"]
    assert bar.provenance["health"].source == "usb"


# --------------------------------------------------------------------------- across time (the store's diff)


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"ev-{next(numbers)}"


class Store:
    """Scans applied as the store applies them, a minute apart."""

    def __init__(self, remove_after: int = 3) -> None:
        self.state: dict[str, Tracked] = {}
        self.remove_after = remove_after
        self.new_id = counter()
        self.scans = 0

    def scan(self, found: Sequence[Device], scope: set[str] | None = None) -> list[Any]:
        self.scans += 1
        at = T0 + timedelta(minutes=self.scans)
        for device in found:
            device.first_seen = device.last_seen = at
        diff = diff_scan(
            self.state,
            list(found),
            at,
            scope=scope,
            remove_after=self.remove_after,
            new_id=self.new_id,
            rules=RULES,
        )
        self.state = diff.inventory
        return list(diff.events)


def test_a_unit_seen_on_usb_then_mdns_in_separate_runs_is_one_unit():
    run = Store()
    assert [e.type for e in run.scan([reading("usb", "2-1.1", firmware="1.9.556")], {"usb"})] == [
        EventType.DEVICE_ADDED
    ]
    assert run.scan([reading("mdns", "10.0.0.5", firmware="1.9.556")], {"mdns"}) == []
    [unit] = run.state.values()
    assert [s.source for s in unit.device.seen_by] == ["usb", "mdns"]


def test_a_unit_stays_while_one_channel_sees_it_and_goes_when_all_have_missed_it():
    run = Store(remove_after=2)
    run.scan([reading("usb", "2-1.1"), reading("mdns", "10.0.0.5")])
    for _ in range(3):
        assert run.scan([reading("mdns", "10.0.0.5")], {"usb", "mdns"}) == []
    [unit] = run.state.values()
    assert [s.source for s in unit.device.seen_by] == ["mdns"]
    assert run.scan([], {"mdns"}) == []
    assert [e.type for e in run.scan([], {"mdns"})] == [EventType.DEVICE_REMOVED]


def test_a_bar_moved_from_usb_to_appliance_mode_keeps_identity_and_first_seen():
    run = Store(remove_after=1)
    run.scan([reading("usb", "2-1.1", product="CollabOS bar (unnamed)")], {"usb"})
    [(identity, before)] = run.state.items()
    events = run.scan([reading("mdns", "10.0.0.5", host="RallyBar-AAA.local")], {"usb", "mdns"})
    assert [e.type for e in events] == []  # no removal, no second add
    [(after_identity, after)] = run.state.items()
    assert after_identity == identity == "serial:CollabOS bar (unnamed):2313FD1N08Z2"
    assert after.device.first_seen == before.device.first_seen
    assert after.device.product == "Rally Bar"  # the LAN names it; the record keeps its identity
    assert [s.source for s in after.device.seen_by] == ["mdns"]


def test_a_channel_flipping_its_firmware_every_scan_makes_no_event_storm():
    run = Store()
    run.scan([reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware="1.9.556")])
    events = []
    for n in range(12):
        flip = "1.9.5" if n % 2 == 0 else "1.9.556"
        events += run.scan(
            [reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware=flip)]
        )
    # The warning comes once and stays while the channel keeps flipping.
    assert [(e.type, e.after["health"]) for e in events] == [(EventType.HEALTH_CHANGED, "warning")]
    [unit] = run.state.values()
    assert unit.device.firmware == "1.9.556"
    steady = [
        run.scan(
            [reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware="1.9.556")]
        )
        for _ in range(3)
    ]
    # It clears once the channel has agreed for remove_after runs in a row.
    assert [[(e.type, e.after["health"]) for e in s] for s in steady] == [
        [],
        [(EventType.HEALTH_CHANGED, "ok")],
        [],
    ]


def test_a_channel_flipping_its_serial_makes_no_event_storm():
    run = Store()
    events = []
    for n in range(12):
        other = SERIAL if n % 2 == 0 else "2313FD1N0999"
        events += run.scan([reading("usb", "2-1.1"), reading("mdns", "10.0.0.5", other, host="bar.local")])
    kinds = [e.type for e in events]
    assert kinds.count(EventType.DEVICE_ADDED) == 2 and EventType.DEVICE_REMOVED not in kinds
    assert len(events) <= 3


def test_a_less_trusted_channel_never_moves_the_firmware():
    run = Store()
    run.scan([reading("usb", "2-1.1", firmware="1.9.556"), reading("mdns", "10.0.0.5", firmware="1.9.556")])
    events = run.scan([reading("mdns", "10.0.0.5", firmware="2.0.1")], {"mdns"})
    assert EventType.FIRMWARE_CHANGED not in [e.type for e in events]
    events = run.scan([reading("usb", "2-1.1", firmware="2.0.1")], {"usb"})
    [fw] = [e for e in events if e.type is EventType.FIRMWARE_CHANGED]
    assert (fw.before["firmware"], fw.after["firmware"], fw.after["source"]) == ("1.9.556", "2.0.1", "usb")


def test_two_records_a_new_reading_links_become_one():
    run = Store()
    run.scan([reading("snmp", "10.0.0.5", None)], {"snmp"})
    run.scan([reading("usb", "2-1.1")], {"usb"})
    assert len(run.state) == 2
    events = run.scan([reading("mdns", "10.0.0.5", host="RallyBar-AAA.local")], {"mdns"})
    [merged] = [e for e in events if e.type is EventType.DEVICE_REMOVED]
    assert merged.after == {"merged_into": f"serial:Rally Bar:{SERIAL}"}
    [unit] = run.state.values()
    assert sorted(s.source for s in unit.device.seen_by) == ["mdns", "snmp", "usb"]


def test_a_contested_serial_stays_contested_when_one_host_misses_a_run():
    a = lambda: reading("mdns", "10.0.0.5", host="a.local")  # noqa: E731
    b = lambda: reading("mdns", "10.0.0.6", host="b.local")  # noqa: E731
    run = Store()
    first = run.scan([a(), b()], {"mdns"})
    assert [e.type for e in first].count(EventType.SERIAL_CONFLICT) == 1
    assert run.scan([b()], {"mdns"}) == []  # a missed one announcement: nothing merges
    assert run.scan([a(), b()], {"mdns"}) == [] and len(run.state) == 2  # nor is it new again


def test_every_channel_upgraded_together_is_no_disagreement():
    run = Store()
    events = []
    for firmware in ["1.9.556"] * 2 + ["2.0.1"] * 5:
        events += run.scan(
            [reading("usb", "2-1.1", firmware=firmware), reading("mdns", "10.0.0.5", firmware=firmware)]
        )
    assert [(e.type, e.after["firmware"]) for e in events if e.type is not EventType.DEVICE_ADDED] == [
        (EventType.FIRMWARE_CHANGED, "2.0.1")
    ]
    [unit] = run.state.values()
    assert unit.device.disagreements == [] and unit.device.health_issues == []


def test_a_usb_serial_that_did_not_read_once_is_the_same_unit():
    run = Store()
    run.scan([reading("usb", "2-1.1")], {"usb"})
    events = []
    for n in range(8):  # the serial reads every other scan
        events += run.scan([reading("usb", "2-1.1", SERIAL if n % 2 else None)], {"usb"})
    assert EventType.DEVICE_ADDED not in [e.type for e in events]
    assert list(run.state) == [f"serial:Rally Bar:{SERIAL}"]


def test_a_conflict_with_a_flaky_channel_is_reported_once():
    run = Store()
    events = []
    for n in range(10):
        tap = [reading("mdns", "10.0.0.8", product="Tap", host="tap.local")] if n % 2 == 0 else []
        events += run.scan([reading("usb", "2-1.1"), *tap], {"usb", "mdns"})
    assert [e.type for e in events].count(EventType.SERIAL_CONFLICT) == 1


def test_which_contested_host_keeps_the_serial_identity_does_not_depend_on_input_order():
    a = reading("mdns", "10.0.0.5", host="a.local")
    b = reading("mdns", "10.0.0.6", host="b.local")
    assert {d.identity: d.address for d in units(a, b)} == {d.identity: d.address for d in units(b, a)}
    one, other = Store(), Store()
    one.scan([reading("mdns", "10.0.0.5", host="a.local"), reading("mdns", "10.0.0.6", host="b.local")])
    other.scan([reading("mdns", "10.0.0.6", host="b.local"), reading("mdns", "10.0.0.5", host="a.local")])
    assert {k: u.device.address for k, u in one.state.items()} == {
        k: u.device.address for k, u in other.state.items()
    }


def test_two_usb_ports_with_one_serial_are_two_units_and_a_conflict():
    """Two units of one family on two USB ports claiming one label serial (a Rally Bar Mini
    reporting its bar's serial): two units, not one."""
    run = Store()
    events = run.scan([reading("usb", "2-1.1"), reading("usb", "2-2", product="Rally Bar Mini")], {"usb"})
    assert [e.type for e in events].count(EventType.DEVICE_ADDED) == 2
    assert [e.type for e in events].count(EventType.SERIAL_CONFLICT) == 1


# --------------------------------------------------------------------------- properties

SOURCES = ("usb", "mdns", "snmp")


@st.composite
def readings(draw: st.DrawFn) -> Device:
    source = draw(st.sampled_from(SOURCES))
    lan = source != "usb"
    return reading(
        source,
        draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1:1161"] if lan else ["1-1", "1-2"])),
        draw(st.sampled_from([None, "A1", "B2"])),
        product=draw(st.sampled_from(["Rally Bar", "Rally Bar Mini", "Tap", "Other thing"])),
        label=draw(st.booleans()),
        firmware=draw(st.sampled_from([None, "1.0", "1.1"])),
        **({"host": draw(st.sampled_from(["a.local", "b.local"]))} if lan and draw(st.booleans()) else {}),
    )


@settings(max_examples=200, deadline=None)
@given(found=st.lists(readings(), max_size=12))
def test_grouping_is_a_partition_that_never_mixes_two_serials(found: list[Device]):
    pool = [Reading(d) for d in found]
    groups = group_readings(pool)
    assert sorted(i for g in groups for i in g) == list(range(len(found)))
    for group in groups:
        serials = {
            (pool[i].device.category, pool[i].device.serial)
            for i in group
            if pool[i].device.serial and pool[i].device.serial_label_grade
        }
        assert len(serials) <= 1
    merged = merge_readings(found, RULES)
    assert len({d.identity for d in merged}) == len(merged)
    for device in merged:  # one entry per channel
        assert len({(s.source, s.address) for s in device.seen_by}) == len(device.seen_by)
    assert {(r.sources[0], r.address) for r in found} == {
        (s.source, s.address) for d in merged for s in d.seen_by
    }


@settings(max_examples=100, deadline=None)
@given(found=st.lists(readings(), max_size=10))
def test_the_order_of_readings_does_not_change_the_units(found: list[Device]):
    def shape(devices: list[Device]) -> set[tuple[str, ...]]:
        return {tuple(sorted(f"{s.source}@{s.address}" for s in d.seen_by)) for d in devices}

    assert shape(merge_readings(found, RULES)) == shape(merge_readings(list(reversed(found)), RULES))


def test_readings_pool_rejects_nothing_and_keeps_order():
    pool = [Reading(reading("usb", "1-1", None)), Reading(reading("usb", "1-1", None))]
    assert group_readings(pool) == [[0, 1]]


@pytest.mark.parametrize("text", ["", "n/a", "zz:zz:zz:zz:zz:zz", "aa:bb:cc:dd:ee"])
def test_what_is_not_a_mac_is_ignored(text: str):
    assert normalize_mac(text) is None
