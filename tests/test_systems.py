"""Systems and primary units (issue [4/7] part 2): grouping from catalog data, the primary unit
(P1), the serial tickets quote (P2), key devices (S-list) and the flags, rule by rule; and the
catalog's ``[[system]]`` table."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import CatalogError, load_catalog, parse_catalog
from agent.model import Device, Transport
from agent.systems import ATTACHED, RoomSummary, group_systems, summarize_room, units

CATALOG = load_catalog()
NOW = datetime(2024, 5, 1, tzinfo=UTC)
_ports = itertools.count(1)


def unit(
    product: str, serial: str | None = None, *, label: bool = True, children: list[Device] | None = None
) -> Device:
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{next(_ports)}",
        first_seen=NOW,
        last_seen=NOW,
        serial=serial,
        serial_label_grade=label and serial is not None,
        children=children or [],
    )


def room(*devices: Device) -> RoomSummary:
    return summarize_room("oslo-4-12", list(devices), CATALOG)


def shape(summary: RoomSummary) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(s.name, [(m.role, m.device.product) for m in s.members]) for s in summary.systems]


def rule_ids(summary: RoomSummary) -> set[str]:
    return {i for note in summary.rules for i in note.ids}


# --------------------------------------------------------------------------- P1


def test_p1_rally_system_registers_its_camera() -> None:
    s = room(unit("Rally Table Hub"), unit("Rally Camera", "2210RC0001A1"), unit("Rally Display Hub"))
    assert shape(s) == [
        (
            "Rally system",
            [
                ("camera", "Rally Camera"),
                ("display-hub", "Rally Display Hub"),
                ("table-hub", "Rally Table Hub"),
            ],
        )
    ]
    assert (s.primary_unit, s.primary_product) == ("2210RC0001A1", "Rally Camera")
    assert (s.ticket_serial, s.ticket_product) == ("2210RC0001A1", "Rally Camera")
    assert s.flags == () and s.standalone == ()
    assert "P1" in rule_ids(s) and "P2" not in rule_ids(s)
    # the camera is primary and ticket unit at once: no other unit's serial to warn against
    assert [n.text for n in s.rules if "support tickets" in n.text] == [
        "Rally system: support tickets quote the Rally Camera's serial"
    ]
    assert any("primary unit is the Rally Camera (serial 2210RC0001A1)" in n.text for n in s.rules)


def test_p1_rally_camera_without_label_grade_serial_is_flagged_not_quoted() -> None:
    s = room(unit("Rally Camera", "USBCHIP01", label=False), unit("Rally Table Hub"))
    assert s.primary_product == "Rally Camera"
    assert s.primary_unit is None and s.ticket_serial is None
    assert s.flags == ("key-device-unregistered", "primary-unit-serial-unknown", "ticket-serial-unknown")
    assert s.key_devices[0].serial == "USBCHIP01" and not s.key_devices[0].label_grade
    assert any("serial USBCHIP01 is not label-grade" in n.text for n in s.rules)


def test_p1_collabos_bar_with_sight_tap_and_mic_pods() -> None:
    bar = unit(
        "Rally Bar",
        "2313FD1N08Z2",
        children=[unit("Sight", "2325LZ51XY58"), unit("Rally Mic Pod"), unit("Remote Controller")],
    )
    s = room(unit("Tap", "2104TP0007B3"), bar, unit("Rally Mic Pod"))
    assert shape(s) == [
        (
            "CollabOS bar",
            [
                ("bar", "Rally Bar"),
                ("table-camera", "Sight"),
                ("microphone", "Rally Mic Pod"),
                (ATTACHED, "Remote Controller"),
                ("controller", "Tap"),
                ("microphone", "Rally Mic Pod"),
            ],
        )
    ]
    system = s.systems[0]
    assert [m.attached_to for m in system.members[1:4]] == [bar.identity] * 3
    assert (s.primary_unit, s.ticket_serial) == ("2313FD1N08Z2", "2313FD1N08Z2")  # the bar, not the Tap
    assert [k.product for k in s.key_devices] == ["Rally Bar", "Tap"]
    assert s.flags == ()


def test_p1_a_bar_without_a_tap_is_complete() -> None:
    s = room(unit("Rally Bar Mini", "2301MINI0001"))
    assert shape(s) == [("CollabOS bar", [("bar", "Rally Bar Mini")])]
    assert s.flags == () and s.primary_unit == s.ticket_serial == "2301MINI0001"


def test_p1_a_bars_own_sight_fills_the_role_and_a_second_sight_stays_standalone() -> None:
    bar = unit("Rally Bar", "BAR0001", children=[unit("Sight", "SIGHT01")])
    loose = unit("Sight", "SIGHT02")
    s = room(bar, loose)
    assert [m.device for m in s.systems[0].members] == [bar, bar.children[0]]
    assert s.standalone == (loose,)


def test_p1_two_bars_are_two_systems_and_the_room_is_flagged() -> None:
    first, second = unit("Rally Bar", "AAA0001"), unit("Rally Bar", "BBB0002")
    tap = unit("Tap", "TAP0001")
    s = room(second, tap, first)
    assert [(x.name, x.primary is first or x.primary is second) for x in s.systems] == [
        ("CollabOS bar", True),
        ("CollabOS bar", True),
    ]
    assert s.systems[0].primary is first and s.systems[0].devices == [first, tap]  # max one Tap
    assert s.systems[1].devices == [second]
    assert s.primary_unit == "AAA0001"
    assert s.flags == ("primary-unit-ambiguous",)
    assert any("the room holds 2 systems" in n.text for n in s.rules)


def test_p1_label_grade_units_are_grouped_first() -> None:
    unlabelled, labelled = unit("Rally Bar", "CHIP", label=False), unit("Rally Bar", "ZZZ999")
    unlabelled.transport = Transport.MDNS  # "mdns:…" sorts before "serial:…": identity alone would lose
    assert unlabelled.identity < labelled.identity
    s = room(unlabelled, labelled)
    assert s.primary_unit == "ZZZ999" and s.systems[0].primary is labelled


def test_p1_meetup_on_its_own_is_the_rooms_primary_before_a_scribe() -> None:
    s = room(unit("Scribe", "2301SC0005E2"), unit("MeetUp", "2206MU0042C9"))
    assert shape(s) == [("MeetUp", [("camera", "MeetUp")])]
    assert s.primary_unit == "2206MU0042C9" and [d.product for d in s.standalone] == ["Scribe"]
    assert {k.product for k in s.key_devices} == {"MeetUp", "Scribe"}
    assert s.flags == ()


@pytest.mark.parametrize(
    ("products", "primary", "flags"),
    [
        (["Brio", "Scribe"], "Scribe", ()),  # key devices rank first
        (["Brio"], "Brio", ()),  # a unit sold alone is its own primary
        (["Scribe", "Tap"], "Tap", ("primary-unit-ambiguous",)),  # two key primaries: catalog order
        (["Brio", "PTZ Pro 2"], "PTZ Pro 2", ("primary-unit-ambiguous",)),
        (["Rally Display Hub", "Rally Mic Pod"], None, ("no-primary-unit",)),
        (["Unknown device"], None, ("no-primary-unit",)),
        ([], None, ("no-devices-found",)),
    ],
)
def test_p1_rooms_without_a_system(products: list[str], primary: str | None, flags: tuple[str, ...]) -> None:
    s = room(*(unit(p, f"SN{p.replace(' ', '').upper()}") for p in products))
    assert s.systems == ()
    assert s.primary_product == primary and s.ticket_product == primary
    assert s.primary_unit == (f"SN{primary.replace(' ', '').upper()}" if primary else None)
    assert s.flags == flags
    if primary:
        assert any(n.ids == ("P1",) and "its own primary unit" in n.text for n in s.rules)


# --------------------------------------------------------------------------- P2


@pytest.mark.parametrize(
    ("camera", "system"), [("Rally Camera", "Tap bundle (Rally)"), ("MeetUp", "Tap bundle (MeetUp)")]
)
def test_p2_tap_bundle_tickets_quote_the_tap(camera: str, system: str) -> None:
    pc, cam, tap = unit("Room PC", "NUC0001"), unit(camera, "CAM0001"), unit("Tap", "TAP0001")
    s = room(pc, cam, tap)
    assert [x.name for x in s.systems] == [system]
    assert sorted(map(id, s.systems[0].devices)) == sorted(map(id, [pc, cam, tap]))
    assert (s.primary_unit, s.primary_product) == ("CAM0001", camera)  # P1: the camera
    assert (s.ticket_serial, s.ticket_product) == ("TAP0001", "Tap")  # P2: the Tap
    assert s.flags == ()
    ticket_note = next(n for n in s.rules if "support tickets quote" in n.text)
    assert ticket_note.ids == ("P2",)
    assert f"not the {camera}, Room PC's" in ticket_note.text


def test_p2_tap_bundle_with_rally_takes_its_hubs_and_mic_pods() -> None:
    s = room(
        unit("Rally Camera", "CAM1"),
        unit("Tap", "TAP1"),
        unit("Rally Display Hub"),
        unit("Rally Table Hub"),
        unit("Rally Mic Pod"),
        unit("Rally Mic Pod"),
        unit("Room PC", "PC1"),
    )
    assert [r for r, _ in shape(s)[0][1]] == [
        "controller",
        "camera",
        "display-hub",
        "table-hub",
        "microphone",
        "microphone",
        "room-pc",
    ]
    assert s.standalone == ()


def test_p2_tap_bundle_whose_pc_was_not_found() -> None:
    s = room(unit("Rally Camera", "CAM1"), unit("Tap", "TAP1"))
    assert [x.name for x in s.systems] == ["Tap bundle (Rally)"]
    # The Room PC is optional in the catalog: the agent often runs on it and does not list
    # its own host, so a bundle without it is complete.
    assert s.systems[0].missing == ()
    assert s.ticket_serial == "TAP1"  # P2 holds all the same
    assert s.flags == ()


def test_p2_an_unknown_tap_serial_is_never_replaced_by_another_units() -> None:
    s = room(unit("Rally Camera", "CAM1"), unit("Tap", "TAPCHIP", label=False), unit("Room PC", "PC1"))
    assert s.ticket_product == "Tap" and s.ticket_serial is None
    assert s.primary_unit == "CAM1"
    assert s.flags == ("key-device-unregistered", "ticket-serial-unknown")
    note = next(n for n in s.rules if "the unit tickets quote" in n.text)
    assert note.ids == ("P2",) and "no other unit's serial stands in" in note.text


def test_p2_a_tap_with_a_bar_is_not_a_tap_bundle() -> None:
    s = room(unit("Rally Bar", "BAR1"), unit("Tap", "TAP1"), unit("Room PC", "PC1"))
    assert [x.name for x in s.systems] == ["CollabOS bar"]
    assert s.ticket_serial == "BAR1" and [d.product for d in s.standalone] == ["Room PC"]


def test_p2_second_camera_without_a_tap_forms_its_own_system() -> None:
    s = room(unit("Rally Camera", "CAM1"), unit("Rally Camera", "CAM2"), unit("Tap", "TAP1"))
    assert [x.name for x in s.systems] == ["Tap bundle (Rally)", "Rally system"]
    assert s.ticket_serial == "TAP1" and "primary-unit-ambiguous" in s.flags


# --------------------------------------------------------------------------- S-list


@pytest.mark.parametrize(
    ("product", "key"),
    [
        ("Rally Camera", True),
        ("Rally Bar", True),
        ("Rally Bar Mini", True),
        ("Rally Bar Huddle", True),
        ("Tap", True),
        ("Swytch", True),
        ("Scribe", True),
        ("MeetUp", True),
        ("Rally Mic Pod", False),
        ("Rally Display Hub", False),
        ("Rally Table Hub", False),
        ("Sight", False),
        ("Room PC", False),
        ("Brio", False),
        ("Unknown device", False),
    ],
)
def test_s_list_key_devices(product: str, key: bool) -> None:
    registered = room(unit(product, "SERIAL001"))
    assert [k.product for k in registered.key_devices] == ([product] if key else [])
    assert "key-device-unregistered" not in registered.flags
    unregistered = room(unit(product, None))
    assert ("key-device-unregistered" in unregistered.flags) is key
    if key:
        k = unregistered.key_devices[0]
        assert (k.serial, k.label_grade, k.registrable) == (None, False, False)
        assert any(
            n.ids == ("S-list",) and "read the serial from its label" in n.text for n in unregistered.rules
        )


def test_s_list_key_devices_carry_what_the_service_portal_csv_needs() -> None:
    bar = unit("Rally Bar", "2313FD1N08Z2")
    bar.model, bar.firmware = "VR0019", "1.9.556"
    s = room(bar, unit("Swytch"))
    assert [k.to_dict() for k in s.key_devices] == [
        {
            "identity": "serial:Rally Bar:2313FD1N08Z2",
            "product": "Rally Bar",
            "model": "VR0019",
            "serial": "2313FD1N08Z2",
            "label_grade": True,
            "firmware": "1.9.556",
            "system": "CollabOS bar",
        },
        {
            "identity": s.standalone[0].identity,
            "product": "Swytch",
            "model": None,
            "serial": None,
            "label_grade": False,
            "firmware": None,
            "system": None,
        },
    ]
    assert s.flags == ("key-device-unregistered",)


def test_summary_json_form() -> None:
    s = room(unit("Rally Camera", "CAM1"), unit("Tap", "TAP1"))
    data = s.to_dict()
    assert data["room"] == "oslo-4-12" and data["primary_unit"] == "CAM1" and data["ticket_serial"] == "TAP1"
    assert data["systems"][0]["missing"] == []
    assert data["flags"] == []
    assert {
        "rules": ["P2"],
        "decision": "Tap bundle (Rally): support tickets quote the Tap's serial, not the Rally Camera's",
    } in data["rules"]
    assert str(s.rules[0]) == "P1: Tap bundle (Rally): the primary unit is the Rally Camera (serial CAM1)"


# --------------------------------------------------------------------------- properties

_PRODUCTS = [
    "Rally Bar",
    "Rally Bar Mini",
    "Sight",
    "Tap",
    "Tap IP",
    "Rally Camera",
    "Rally Display Hub",
    "Rally Table Hub",
    "Rally Mic Pod",
    "MeetUp",
    "Room PC",
    "Scribe",
    "Swytch",
    "Brio",
    "Unknown device",
    "RoomMate",
]


@st.composite
def devices(draw: Any, depth: int = 0) -> Device:
    product = draw(st.sampled_from(_PRODUCTS))
    serial = draw(st.one_of(st.none(), st.text("ABC123", min_size=4, max_size=6)))
    kids = draw(st.lists(devices(depth + 1), max_size=2)) if depth < 2 else []
    return unit(product, serial, label=draw(st.booleans()), children=kids)


@settings(max_examples=200, deadline=None)
@given(top=st.lists(devices(), max_size=10), order=st.randoms(use_true_random=False))
def test_grouping_never_loses_or_duplicates_a_device(top: list[Device], order: Any) -> None:
    systems, standalone = group_systems(top, CATALOG)
    grouped = [m.device for s in systems for m in s.members] + list(units(standalone))
    assert sorted(map(id, grouped)) == sorted(map(id, units(top)))
    # the order the sources reported units in does not matter
    shuffled = list(top)
    order.shuffle(shuffled)
    again, rest = group_systems(shuffled, CATALOG)
    assert [[id(m.device) for m in s.members] for s in again] == [
        [id(m.device) for m in s.members] for s in systems
    ]
    assert [id(d) for d in rest] == [id(d) for d in standalone]


@settings(max_examples=200, deadline=None)
@given(top=st.lists(devices(), max_size=10))
def test_summary_invariants(top: list[Device]) -> None:
    s = summarize_room("r", top, CATALOG)
    everything = list(units(top))
    assert sorted(map(id, s.devices)) == sorted(map(id, everything))
    labelled = {d.serial for d in everything if d.serial and d.serial_label_grade}
    # P1: the primary unit is a label-grade serial of a primary unit of the room, or nothing
    assert s.primary_unit is None or s.primary_unit in labelled
    assert s.primary_product is None or CATALOG.products[s.primary_product].primary_unit
    # P2: tickets never quote a Room PC
    assert s.ticket_product != "Room PC"
    if any(x.ticket.product == "Tap" for x in s.systems[:1]):
        assert s.ticket_product == "Tap"
    # S-list: every key device listed once, and the flag exactly when one has no label serial
    keys = [d for d in everything if (p := CATALOG.get(d.product)) is not None and p.key_device]
    assert sorted(k.identity for k in s.key_devices) == sorted(d.identity for d in keys)
    assert ("key-device-unregistered" in s.flags) == any(not k.registrable for k in s.key_devices)
    assert list(s.flags) == sorted(set(s.flags))
    for system in s.systems:
        spec = CATALOG.system(system.name)
        assert all(spec.role_of(m.device.product) is not None or m.attached_to for m in system.members)
        for role in spec.roles:
            top_level = [m for m in system.members if m.role == role.role and m.attached_to is None]
            if role.max is not None:
                assert len(top_level) <= role.max


# --------------------------------------------------------------------------- the catalog table


def test_shipped_systems_follow_domain_md() -> None:
    assert [s.name for s in CATALOG.systems] == [
        "CollabOS bar",
        "Tap bundle (Rally)",
        "Tap bundle (MeetUp)",
        "Rally system",
        "MeetUp",
    ]
    rally = CATALOG.system("Rally system")
    assert rally.role(rally.primary).products == ("Rally Camera",) and rally.primary_rules == ("P1",)
    for name in ("Tap bundle (Rally)", "Tap bundle (MeetUp)"):
        bundle = CATALOG.system(name)
        assert bundle.role(bundle.ticket).products == ("Tap", "Tap IP") and bundle.ticket_rules == ("P2",)
        assert bundle.role("room-pc").need == "optional"  # the agent often runs on that PC
    assert [s.name for s in CATALOG.systems_with("Room PC")] == ["Tap bundle (Rally)", "Tap bundle (MeetUp)"]


_PRODUCTS_DATA = [
    {"name": "Cam", "family": "camera", "primary_unit": True},
    {"name": "Pad", "family": "controller", "primary_unit": True},
    {"name": "Hub", "family": "peripheral"},
]


def _system(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "S",
        "primary": "camera",
        "ticket": "camera",
        "primary_rules": ["P1"],
        "ticket_rules": ["P1"],
        "members": [
            {"role": "camera", "products": ["Cam"], "need": "required", "max": 1},
            {"role": "hub", "products": ["Hub"]},
        ],
    }
    base.update(overrides)
    return base


def test_catalog_system_table_parses() -> None:
    catalog = parse_catalog({"product": _PRODUCTS_DATA, "system": [_system(description="d")]})
    spec = catalog.system("S")
    assert spec.role("hub").need == "optional" and spec.role("hub").max is None
    assert spec.role_of("Hub") is spec.role("hub") and spec.role_of("Pad") is None
    assert parse_catalog({"product": _PRODUCTS_DATA}).systems == ()


@pytest.mark.parametrize(
    ("system", "message"),
    [
        (_system(colour="red"), r"system\[0\] \(S\): unknown keys \['colour'\]"),
        (_system(name=""), "name is required"),
        (_system(members=[]), "members must be a non-empty list"),
        (_system(members=["camera"]), r"members\[0\]: must be a table"),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "need": "required", "max": 1, "x": 1}]),
            r"members\[0\]: unknown keys \['x'\]",
        ),
        (_system(members=[{"role": "Camera", "products": ["Cam"]}]), "role must be a lower-case word"),
        (_system(members=[{"role": "camera", "products": []}]), "products must be a non-empty list"),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "need": "must"}]),
            "need 'must' is not one of",
        ),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "need": "required", "max": 0}]),
            "max must be a whole number",
        ),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "need": "required", "max": True}]),
            "max must be a whole number",
        ),
        (
            _system(
                members=[
                    {"role": "camera", "products": ["Cam"], "need": "required", "max": 1},
                    {"role": "camera", "products": ["Hub"]},
                ]
            ),
            "role 'camera' is listed twice",
        ),
        (
            _system(
                members=[
                    {"role": "camera", "products": ["Cam"], "need": "required", "max": 1},
                    {"role": "spare", "products": ["Cam"]},
                ]
            ),
            "product 'Cam' is in roles 'camera' and 'spare'",
        ),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "max": 1}]),
            "at least one role must have need",
        ),
        (_system(primary="lens"), "primary must name one of the roles"),
        (_system(ticket="hub"), "ticket role 'hub' must have need = \"required\" and max = 1"),
        (
            _system(members=[{"role": "camera", "products": ["Cam"], "need": "required"}]),
            "primary role 'camera' must have need",
        ),
        (_system(primary_rules=[]), "primary_rules must be a non-empty list of rule ids"),
        (_system(ticket_rules=["p2"]), "ticket_rules must be a non-empty list of rule ids"),
        (
            _system(members=[{"role": "camera", "products": ["Lens"], "need": "required", "max": 1}]),
            "system 'S': role 'camera' names unknown product 'Lens'",
        ),
        (
            _system(
                members=[
                    {"role": "camera", "products": ["Cam"], "need": "required", "max": 1},
                    {"role": "hub", "products": ["Hub"], "need": "required", "max": 1},
                ],
                ticket="hub",
            ),
            "ticket role 'hub' holds 'Hub', which is not a primary unit",
        ),
    ],
)
def test_catalog_rejects_malformed_systems(system: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog({"product": _PRODUCTS_DATA, "system": [system]})


def test_catalog_rejects_a_system_listed_twice() -> None:
    with pytest.raises(CatalogError, match="system 'S' is listed twice"):
        parse_catalog({"product": _PRODUCTS_DATA, "system": [_system(), _system()]})


def test_grouping_follows_catalog_data_not_code() -> None:
    """A made-up catalog: the same code groups by whatever the data says."""
    catalog = parse_catalog(
        {
            "product": _PRODUCTS_DATA,
            "system": [
                _system(
                    name="Pad kit",
                    ticket="pad",
                    ticket_rules=["P2"],
                    members=[
                        {"role": "pad", "products": ["Pad"], "need": "required", "max": 1},
                        {"role": "camera", "products": ["Cam"], "need": "required", "max": 1},
                        {"role": "hub", "products": ["Hub"], "max": 2},
                    ],
                )
            ],
        }
    )
    cam, pad, hubs = unit("Cam", "C1"), unit("Pad", "P1X"), [unit("Hub") for _ in range(3)]
    s = summarize_room("r", [cam, pad, *hubs], catalog)
    assert [x.name for x in s.systems] == ["Pad kit"] and len(s.systems[0].members) == 4
    assert (s.primary_unit, s.ticket_serial) == ("C1", "P1X") and len(s.standalone) == 1


def test_a_system_missing_an_expected_unit_is_flagged_incomplete() -> None:
    """An ``expected`` role (none of the shipped systems has one since the Room PC became
    optional) forms the system without the unit and flags it."""
    import tomllib
    from importlib import resources

    with resources.files("agent").joinpath("data/catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    for system in data["system"]:
        for member in system["members"]:
            if member["role"] == "room-pc":
                member["need"] = "expected"
    catalog = parse_catalog(data)
    s = summarize_room("oslo-4-12", [unit("Rally Camera", "CAM1"), unit("Tap", "TAP1")], catalog)
    assert s.systems[0].missing == ("room-pc",)
    assert s.flags == ("system-incomplete",) and s.ticket_serial == "TAP1"
    assert any("no Room PC found" in n.text and n.ids == ("P1", "P2") for n in s.rules)


def _reference_grouping(devices: list[Device]) -> tuple[list[list[int]], list[int]]:
    """The grouping as first written (a scan of the whole pool per system, quadratic), kept
    here to check that the linear one forms exactly the same systems."""
    from collections import Counter

    from agent.systems import _order, _roles_of

    pool = sorted(devices, key=_order)
    systems: list[list[int]] = []
    for spec in CATALOG.systems:
        while True:
            chosen: dict[str, list[Device]] = {r.role: [] for r in spec.roles}
            missing = False
            for role in spec.roles:
                if role.required:
                    first = next((d for d in pool if d.product in role.products), None)
                    if first is None:
                        missing = True
                        break
                    chosen[role.role].append(first)
            if missing:
                break
            taken = {id(d) for picked in chosen.values() for d in picked}
            counts = Counter(_roles_of(spec, [d for picked in chosen.values() for d in picked]))
            for role in spec.roles:
                for device in pool:
                    if role.max is not None and counts[role.role] >= role.max:
                        break
                    if id(device) not in taken and device.product in role.products:
                        chosen[role.role].append(device)
                        taken.add(id(device))
                        counts.update(_roles_of(spec, [device]))
            systems.append([id(d) for role in spec.roles for d in chosen[role.role]])
            pool = [d for d in pool if id(d) not in taken]
    return systems, [id(d) for d in pool]


@settings(max_examples=300, deadline=None)
@given(top=st.lists(devices(), max_size=40))
def test_the_linear_grouping_forms_what_the_first_one_formed(top: list[Device]) -> None:
    systems, standalone = group_systems(top, CATALOG)
    expected_systems, expected_rest = _reference_grouping(top)
    got = [[id(m.device) for m in s.members if m.attached_to is None] for s in systems]
    assert got == expected_systems
    assert [id(d) for d in standalone] == expected_rest
