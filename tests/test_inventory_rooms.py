"""Rooms (issue [4/7] part 1): explicit and local-USB rooms kept, LAN units placed by the room
map, units on a room PC following the PC, unplaced units listed as unassigned; and every room
summarised into systems (part 2)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.inventory import (
    devices_from_observations,
    known_rooms,
    map_rooms,
    summarize_rooms,
)
from agent.model import Device, Observation, Room, Transport
from agent.roommap import RoomMap, parse_room_map
from agent.systems import units

CATALOG = load_catalog()
NOW = datetime(2024, 5, 1, tzinfo=UTC)
LOCAL = Room("oslo-4-12", name="Fjord")
_n = itertools.count(1)

ROOM_MAP = parse_room_map(
    "match,value,room,room_name\n"
    "cidr,10.20.4.0/24,oslo-4-open,Open area\n"
    "host,room-pc-4-16,oslo-4-16,Nordkapp\n"
    "host,RallyBar-1L5V32,oslo-4-14,\n"
    "serial,2301SC0005E2,oslo-4-14,\n"
    "serial,NUC0016,oslo-4-18,\n"
    "serial,2313FD1N08Z2,oslo-4-99,\n"
    ",,bergen-2-03,Bryggen\n",
    "rooms.csv",
)


def obs(
    product: str | None = "Rally Bar",
    *,
    source: str = "snmp",
    transport: Transport = Transport.SNMP,
    address: str | None = None,
    serial: str | None = None,
    room: str | None = None,
    children: list[Observation] | None = None,
    **attributes: Any,
) -> Observation:
    return Observation(
        source=source,
        transport=transport,
        address=address or f"192.0.2.{next(_n)}",
        observed_at=NOW,
        product=product,
        serial=serial,
        serial_label_grade=serial is not None,
        room=room,
        children=children or [],
        attributes=attributes,
    )


def usb(product: str, serial: str | None = None, **kw: Any) -> Observation:
    return obs(product, source="usb", transport=Transport.USB, address=f"1-{next(_n)}", serial=serial, **kw)


def by_product(devices: list[Device]) -> dict[str, str | None]:
    return {d.product: d.room for d in devices}


# --------------------------------------------------------------------------- placement


def test_local_usb_units_stay_in_the_configured_room_whatever_the_map_says() -> None:
    # 2313FD1N08Z2 is mapped to oslo-4-99, but it is on this host's USB: the config wins
    devices = devices_from_observations([usb("Rally Bar", "2313FD1N08Z2")], LOCAL, CATALOG, ROOM_MAP)
    assert by_product(devices) == {"Rally Bar": "oslo-4-12"}


def test_an_explicit_room_from_the_source_is_never_overridden() -> None:
    pc = obs(
        "Room PC",
        source="ssh",
        transport=Transport.SSH,
        address="room-pc-4-16",
        serial="NUC0016",
        room="oslo-4-20",
        hostname="room-pc-4-16",
    )
    devices = devices_from_observations([pc], None, CATALOG, ROOM_MAP)
    assert by_product(devices) == {"Room PC": "oslo-4-20"}


def test_lan_units_are_placed_by_the_map_and_the_rest_is_unassigned() -> None:
    observations = [
        obs("Rally Bar", address="10.20.4.9:161"),  # cidr
        obs(
            "Rally Bar Mini",
            transport=Transport.MDNS,
            source="mdns",
            address="10.9.9.9",
            host="RallyBar-1L5V32.local.",
        ),  # host
        obs("Scribe", address="10.20.4.10", serial="2301SC0005E2"),  # serial > cidr
        obs(None, address="172.16.0.1"),  # not mapped
    ]
    devices = devices_from_observations(observations, LOCAL, CATALOG, ROOM_MAP)
    assert by_product(devices) == {
        "Rally Bar": "oslo-4-open",
        "Rally Bar Mini": "oslo-4-14",
        "Scribe": "oslo-4-14",
        "Unknown device": None,
    }
    assert [d.category for d in devices if d.room is None] == ["other"]


def test_without_a_map_lan_units_are_unassigned_as_before() -> None:
    devices = devices_from_observations([obs("Rally Bar", address="10.20.4.9")], LOCAL, CATALOG)
    assert by_product(devices) == {"Rally Bar": None}


def test_usb_units_without_a_configured_room_are_placed_by_serial_only() -> None:
    # a USB address is a port path: even one that reads like a mapped host or address is ignored
    devices = devices_from_observations(
        [
            usb("Scribe", "2301SC0005E2"),
            obs("Brio", source="usb", transport=Transport.USB, address="room-pc-4-16"),
            obs("MeetUp", source="usb", transport=Transport.USB, address="10.20.4.5"),
        ],
        None,
        CATALOG,
        ROOM_MAP,
    )
    assert by_product(devices) == {"Scribe": "oslo-4-14", "Brio": None, "MeetUp": None}


def test_children_follow_their_parent_into_the_mapped_room() -> None:
    bar = obs("Rally Bar", address="10.20.4.50", children=[obs("Sight"), obs("Rally Mic Pod")])
    (device,) = devices_from_observations([bar], None, CATALOG, ROOM_MAP)
    assert [c.room for c in device.children] == ["oslo-4-open", "oslo-4-open"]
    assert [c.category for c in device.children] == ["collabos-peripheral", "peripheral"]


def _pc_and_units(pc_serial: str | None, *, address: str = "room-pc-x") -> list[Observation]:
    def attached(product: str, serial: str | None = None) -> Observation:
        return obs(
            product,
            source="ssh",
            transport=Transport.SSH,
            address=f"{address}/usb/1-{next(_n)}",
            serial=serial,
            attached_to=address,
        )

    pc = obs(
        "Room PC", source="ssh", transport=Transport.SSH, address=address, serial=pc_serial, hostname=address
    )
    return [
        pc,
        attached("Tap", "TAP0001"),
        attached("Rally Camera", "2301SC0005E2"),
        attached("Rally Table Hub"),
    ]


def test_units_on_a_room_pc_follow_where_the_map_puts_the_pc() -> None:
    # the PC is placed by its serial; the Tap and the hub go with it; the camera's own serial
    # row (oslo-4-14) is more specific than the PC's placement
    devices = devices_from_observations(_pc_and_units("NUC0016"), None, CATALOG, ROOM_MAP)
    assert by_product(devices) == {
        "Room PC": "oslo-4-18",
        "Tap": "oslo-4-18",
        "Rally Table Hub": "oslo-4-18",
        "Rally Camera": "oslo-4-14",
    }


def test_a_tap_ip_goes_where_its_bar_goes_unless_its_own_serial_is_mapped() -> None:
    def appliance(bar_host: str, tap_serial: str, tap_address: str) -> list[Observation]:
        bar = obs("Rally Bar Mini", source="collabos", transport=Transport.HTTPS, address="192.0.2.200")
        bar.attributes["host"] = bar_host
        tap = obs(
            "Tap IP",
            source="collabos",
            transport=Transport.HTTPS,
            address=tap_address,
            serial=tap_serial,
            paired_with="192.0.2.200",
        )
        return [bar, tap]

    # The bar is placed by its host name; its Tap IP (on another subnet) goes with it.
    placed = devices_from_observations(
        appliance("RallyBar-1L5V32", "TAPIP0001", "198.51.100.7"), None, CATALOG, ROOM_MAP
    )
    assert by_product(placed) == {"Rally Bar Mini": "oslo-4-14", "Tap IP": "oslo-4-14"}
    # A serial row naming the Tap itself wins over its bar's place.
    own = devices_from_observations(
        appliance("RallyBar-1L5V32", "2313FD1N08Z2", "198.51.100.7"), None, CATALOG, ROOM_MAP
    )
    assert by_product(own) == {"Rally Bar Mini": "oslo-4-14", "Tap IP": "oslo-4-99"}
    # A bar nowhere: the Tap is placed on its own (here by its address) or not at all.
    alone = devices_from_observations(
        appliance("RallyBar-XXXX", "TAPIP0002", "10.20.4.77"), None, CATALOG, ROOM_MAP
    )
    assert by_product(alone) == {"Rally Bar Mini": None, "Tap IP": "oslo-4-open"}


def test_units_on_a_room_pc_placed_by_host_name() -> None:
    devices = devices_from_observations(
        _pc_and_units(None, address="room-pc-4-16:2222"), None, CATALOG, ROOM_MAP
    )
    assert by_product(devices)["Tap"] == by_product(devices)["Room PC"] == "oslo-4-16"


def test_units_on_an_unplaced_pc_match_on_their_own_or_stay_unassigned() -> None:
    devices = devices_from_observations(_pc_and_units(None, address="pc-nowhere"), None, CATALOG, ROOM_MAP)
    assert by_product(devices) == {
        "Room PC": None,
        "Tap": None,
        "Rally Table Hub": None,
        "Rally Camera": "oslo-4-14",
    }
    # the PC's own observation failed: its units still match the map through its host name
    units_only = _pc_and_units(None, address="room-pc-4-16")[1:]
    assert set(by_product(devices_from_observations(units_only, None, CATALOG, ROOM_MAP)).values()) == {
        "oslo-4-16",
        "oslo-4-14",
    }


def test_map_rooms_is_pure() -> None:
    devices = devices_from_observations(_pc_and_units("NUC0016"), None, CATALOG)
    before = [d.room for d in devices]
    assert map_rooms(devices, ROOM_MAP) != before
    assert [d.room for d in devices] == before


def test_scan_keeps_calling_with_three_arguments() -> None:
    devices = devices_from_observations([usb("Brio")], LOCAL, CATALOG)
    assert devices[0].room == "oslo-4-12"


# --------------------------------------------------------------------------- rooms


def test_known_rooms_merge_configuration_and_map() -> None:
    room_map = parse_room_map(
        "match,value,room,room_name,location,seat_count\n,,oslo-4-12,Map name,Oslo,8\nhost,pc,other,,,\n"
    )
    rooms = {r.id: r for r in known_rooms(LOCAL, room_map)}
    assert rooms["oslo-4-12"] == Room("oslo-4-12", name="Fjord", location="Oslo", seat_count=8)
    assert rooms["other"] == Room("other")
    assert known_rooms(None, None) == [] and known_rooms(LOCAL, None) == [LOCAL]


def test_every_room_is_summarised_and_unplaced_units_are_listed() -> None:
    observations = [
        usb("Rally Camera", "2210RC0001A1"),
        usb("Tap", "2104TP0007B3"),
        usb("Rally Table Hub"),
        obs("Rally Bar", address="10.20.4.9", serial="BAR0001"),
        obs(None, address="172.16.0.1"),
        obs("Rally Bar", address="172.16.0.2"),
    ]
    devices = devices_from_observations(observations, LOCAL, CATALOG, ROOM_MAP)
    report = summarize_rooms(devices, CATALOG, known_rooms(LOCAL, ROOM_MAP))
    summaries = {s.room_id: s for s in report.rooms}
    assert (
        list(summaries)
        == sorted(summaries)
        == ["bergen-2-03", "oslo-4-12", "oslo-4-14", "oslo-4-16", "oslo-4-18", "oslo-4-99", "oslo-4-open"]
    )
    local = summaries["oslo-4-12"]
    assert [s.name for s in local.systems] == ["Tap bundle (Rally)"]
    assert (local.primary_unit, local.ticket_serial) == ("2210RC0001A1", "2104TP0007B3")
    assert local.flags == ()  # the PC the agent runs on is not listed, and need not be
    assert summaries["oslo-4-open"].primary_unit == "BAR0001"
    assert summaries["bergen-2-03"].flags == ("no-devices-found",)
    assert sorted(d.address for d in report.unassigned) == ["172.16.0.1", "172.16.0.2"]
    assert report.room("oslo-4-12") == LOCAL and report.room("bergen-2-03").name == "Bryggen"
    assert report.room("nowhere") == Room("nowhere")


def test_rooms_only_seen_on_devices_are_listed_too() -> None:
    devices = devices_from_observations([obs("Scribe", room="ad-hoc", serial="S1")], None, CATALOG)
    report = summarize_rooms(devices, CATALOG)
    assert [s.room_id for s in report.rooms] == ["ad-hoc"] and report.directory == {"ad-hoc": Room("ad-hoc")}


@st.composite
def observations(draw: Any) -> Observation:
    product = draw(st.sampled_from(["Rally Bar", "Tap", "Rally Camera", "Room PC", "Scribe", None]))
    kind = draw(st.sampled_from(["usb", "snmp", "mdns", "explicit"]))
    serial = draw(st.sampled_from([None, "2301SC0005E2", "NUC0016", "X1", "X2"]))
    address = draw(st.sampled_from(["10.20.4.7", "10.20.5.1:161", "room-pc-4-16", "[2001:db8::1]:22"]))
    kids = [obs("Sight")] if draw(st.booleans()) else []
    if kind == "usb":
        return usb(product or "Brio", serial, children=kids)
    transport = Transport.MDNS if kind == "mdns" else Transport.SNMP
    return obs(
        product,
        source=kind,
        transport=transport,
        address=address,
        serial=serial,
        room="fixed" if kind == "explicit" else None,
        children=kids,
    )


@settings(max_examples=150, deadline=None)
@given(
    found=st.lists(observations(), max_size=12),
    local=st.sampled_from([None, LOCAL]),
    room_map=st.sampled_from([None, ROOM_MAP, RoomMap()]),
)
def test_no_unit_is_ever_dropped(
    found: list[Observation], local: Room | None, room_map: RoomMap | None
) -> None:
    devices = devices_from_observations(found, local, CATALOG, room_map)
    assert len(devices) == len(found)
    explicit = sum(1 for o in found if o.room == "fixed")
    assert sum(1 for d in devices if d.room == "fixed") == explicit
    if local is not None:
        assert all(d.room == local.id for d in devices if d.transport is Transport.USB)
    report = summarize_rooms(devices, CATALOG, known_rooms(local, room_map))
    listed = [d for s in report.rooms for d in s.devices] + list(units(report.unassigned))
    assert sorted(map(id, listed)) == sorted(map(id, units(devices)))
    assert all(d.room is None for d in report.unassigned)
    assert all(d.room == s.room_id for s in report.rooms for d in s.devices)
