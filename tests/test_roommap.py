"""The room map: the CSV format, refusal with every problem listed, and placement precedence
(serial > host > address > the narrowest cidr)."""

from __future__ import annotations

import ipaddress
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Device, Room, Transport
from agent.roommap import (
    MatchKind,
    RoomMap,
    RoomMapError,
    RoomRule,
    load_room_map,
    normalize_host,
    parse_room_map,
    place,
    rule,
    split_address,
)
from agent.sanitize import is_placeholder_serial

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "rooms.example.csv"
NOW = datetime(2024, 5, 1, tzinfo=UTC)
_addresses = itertools.count(1)


def device(
    product: str = "Rally Bar",
    *,
    serial: str | None = None,
    transport: Transport = Transport.SNMP,
    address: str | None = None,
    **attributes: Any,
) -> Device:
    return Device(
        product=product,
        transport=transport,
        address=address or f"192.0.2.{next(_addresses) % 250 + 1}",
        first_seen=NOW,
        last_seen=NOW,
        serial=serial,
        serial_label_grade=serial is not None,
        attributes=attributes,
    )


def problems(text: str | bytes, name: str = "rooms.csv") -> list[str]:
    with pytest.raises(RoomMapError) as caught:
        parse_room_map(text, name)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


HEADER = "match,value,room\n"


# --------------------------------------------------------------------------- the format


def test_example_file_reads_and_documents_every_kind() -> None:
    room_map = load_room_map(EXAMPLE)
    assert {r.match for r in room_map.rules} == set(MatchKind)
    assert room_map.rooms["oslo-4-12"] == Room("oslo-4-12", "Fjord", "Oslo HQ / 4th floor", "Oslo, Norway", 8)
    assert room_map.rooms["oslo-4-16"].seat_count == 12  # details on one row, rules on others
    text = EXAMPLE.read_text(encoding="utf-8")
    for word in ("serial > host > address > the narrowest cidr", "unassigned", "FILE:LINE"):
        assert word in text
    # what the example's rows say, placement by placement
    assert place(device(address="10.20.4.5:161"), room_map) == "oslo-4-open"
    assert place(device(address="10.20.4.130"), room_map) == "oslo-4-16"  # the narrower range
    assert place(device(address="10.20.4.77"), room_map) == "oslo-4-14"  # exact beats both ranges
    assert place(device("Scribe", serial="2301 sc0005e2", address="10.20.4.5"), room_map) == "oslo-4-16"
    assert place(device(address="[2001:db8:b::17]:22"), room_map) == "bergen-2-03"
    assert place(device(sys_name="RallyBar-1L5V32", address="10.99.0.1"), room_map) == "oslo-4-14"


def test_excel_habits_bom_semicolon_crlf_and_padding() -> None:
    plain = parse_room_map("match,value,room,room_name\nserial,ABC123,r1,Fjord\nhost,pc-1,r2,\n")
    excel = parse_room_map(
        "\ufeffMatch;Value;Room;Room Name;;\r\nserial;ABC123;r1;Fjord;;\r\n"
        "host;pc-1;r2;;;\r\n\r\n;;;;;\r\n".encode()
    )
    assert excel.rules == plain.rules
    assert excel.rooms == plain.rooms == {"r1": Room("r1", "Fjord"), "r2": Room("r2")}


def test_comments_anywhere_and_quoted_hash_cell() -> None:
    room_map = parse_room_map(
        '# top\n\nroom_name,match,value,room\n# a section\n"#5 Board",serial,S1,r1\n   # indented comment\n'
    )
    assert room_map.rules == (RoomRule(MatchKind.SERIAL, "S1", "r1"),)
    assert room_map.rooms["r1"].name == "#5 Board"


def test_line_numbers_are_physical_lines() -> None:
    room_map = parse_room_map("# c\nmatch,value,room\n\n# c\nserial,S1,r1\n", "f.csv")
    assert room_map.rules[0].line == 5 and room_map.rules[0].where == "f.csv:5"


def test_values_are_normalised() -> None:
    room_map = parse_room_map(
        HEADER + "serial, 2313 fd1n08z2 ,r1\nhost,RallyBar-X.local.,r1\n"
        "address,::FFFF:10.0.0.1,r1\ncidr,2001:DB8::/32,r1\nCIDR,::ffff:10.1.0.0/112,r1\n"
    )
    assert [r.value for r in room_map.rules] == [
        "2313FD1N08Z2",
        "rallybar-x",
        "10.0.0.1",
        "2001:db8::/32",
        "10.1.0.0/16",
    ]


def test_room_only_rows_describe_rooms_and_details_must_agree() -> None:
    room_map = parse_room_map("match,value,room,location,seat_count\n,,r1,Oslo,\nserial,S1,r1,Oslo,4\n")
    assert room_map.rooms["r1"] == Room("r1", location="Oslo", seat_count=4)
    with_platform = parse_room_map("match,value,room,platform\nserial,S1,r1,Google-Meet\n")
    assert with_platform.rooms["r1"] == Room("r1", platform="google-meet")
    assert problems("match,value,room,location\n,,r1,Oslo\nserial,S1,r1,Bergen\n") == [
        "rooms.csv:3: location: 'Bergen' differs from 'Oslo' given for room r1 on line 2"
    ]


# --------------------------------------------------------------------------- refusal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "rooms.csv:1: the file is empty"),
        ("# only a comment\n", "rooms.csv:1: the file is empty"),
        ("serial,S1,r1\n", "rooms.csv:1: no header row"),
        ("match,value,rom\n", "rooms.csv:1: rom: unknown column (did you mean room?)"),
        ("match,value,room,colour\n", "rooms.csv:1: colour: unknown column (known columns: match,"),
        ("match,value\n", "rooms.csv:1: room: the column is missing"),
        ("match,value,room,room\n", "rooms.csv:1: room: appears twice (columns 3 and 4)"),
        ("match,,value,room\n", "rooms.csv:1: column 2: has no name"),
        (
            HEADER + "ip,10.0.0.1,r1\n",
            "rooms.csv:2: match: 'ip' is not one of serial, host, address, cidr (use address)",
        ),
        (HEADER + "serial,,r1\n", "rooms.csv:2: value: is empty: give the serial to match"),
        (HEADER + ",S1,r1\n", "rooms.csv:2: match: is empty"),
        (HEADER + "serial,S1,\n", "rooms.csv:2: room: is empty"),
        (HEADER + ",,r1\n", "rooms.csv:2: the row places nothing and describes nothing"),
        (HEADER + "serial,S1,oslo 4\n", "rooms.csv:2: room: 'oslo 4' is not a room id"),
        (HEADER + "serial,S1,-r\n", "rooms.csv:2: room: '-r' is not a room id"),
        (HEADER + "serial,S1," + "r" * 65 + "\n", "rooms.csv:2: room: is longer than 64 characters"),
        (HEADER + "serial,N/A,r1\n", "rooms.csv:2: value: 'N/A' is a placeholder, not a serial"),
        (HEADER + "serial,00000000,r1\n", "rooms.csv:2: value: '00000000' is a placeholder"),
        (HEADER + "serial,S\x01,r1\n", "rooms.csv:2: value: 'S\\x01' holds control characters"),
        (
            HEADER + "host,10.0.0.1,r1\n",
            "rooms.csv:2: value: '10.0.0.1' is an IP address: use match 'address'",
        ),
        (
            HEADER + "host,pc-1:22,r1\n",
            "rooms.csv:2: value: 'pc-1:22' is not a host name (write the name alone",
        ),
        (HEADER + "host,pc 1,r1\n", "rooms.csv:2: value: 'pc 1' is not a host name"),
        (HEADER + "host," + "a." * 127 + "ab,r1\n", "rooms.csv:2: value: is longer than 253 characters"),
        (HEADER + "host,pc..x,r1\n", "rooms.csv:2: value: 'pc..x' is not a host name"),
        (HEADER + "host,10.0.0.300,r1\n", "rooms.csv:2: value: '10.0.0.300' is not a host name, nor an IP"),
        (
            HEADER + "address,10.0.0.1:161,r1\n",
            "rooms.csv:2: value: '10.0.0.1:161' has a port: write the address alone (10.0.0.1)",
        ),
        (HEADER + "address,[::1]:22,r1\n", "rooms.csv:2: value: '[::1]:22' has a port"),
        (
            HEADER + "address,10.0.0.0/24,r1\n",
            "rooms.csv:2: value: '10.0.0.0/24' is a range: use match 'cidr'",
        ),
        (HEADER + "address,pc-1,r1\n", "rooms.csv:2: value: 'pc-1' is not an IP address: use match 'host'"),
        (HEADER + "address,10.0.0.300,r1\n", "rooms.csv:2: value: '10.0.0.300' is not an IPv4 or IPv6"),
        (
            HEADER + "cidr,10.1.2.3/24,r1\n",
            "rooms.csv:2: value: '10.1.2.3/24' has host bits set: did you mean 10.1.2.0/24?",
        ),
        (HEADER + "cidr,10.1.2.0/33,r1\n", "rooms.csv:2: value: '10.1.2.0/33' is not a CIDR range"),
        (
            "match,value,room,seat_count\nserial,S1,r1,-2\n",
            "rooms.csv:2: seat_count: '-2' is not a whole number",
        ),
        (
            "match,value,room,seat_count\nserial,S1,r1,10001\n",
            "rooms.csv:2: seat_count: '10001' is too large",
        ),
        (
            "match,value,room,platform\nserial,S1,r1,webex\n",
            "rooms.csv:2: platform: 'webex' is not a platform (teams, zoom, google-meet)",
        ),
        (
            "match,value,room,room_name\nserial,S1,r1," + "x" * 201 + "\n",
            "rooms.csv:2: room_name: is longer than 200 characters",
        ),
        (
            HEADER + "serial,S1,r1,extra\n",
            "rooms.csv:2: the row has 4 cells but the header has 3 (the delimiter is ',')",
        ),
        (
            HEADER + 'serial,"S1,r1\n',
            "rooms.csv:2: value: '\"S1,r1' opens a quote that is not closed on its line",
        ),
        (
            HEADER + "serial,S1,r1\nserial,s 1,r2\n",
            "rooms.csv:3: value: serial S1 is already mapped on line 2 (room r1)",
        ),
        (
            HEADER + "host,pc.local,r1\nhost,PC,r1\n",
            "rooms.csv:3: value: host pc is already mapped on line 2 (the same room)",
        ),
        (
            HEADER + "address,::ffff:10.0.0.1,r1\naddress,10.0.0.1,r2\n",
            "rooms.csv:3: value: address 10.0.0.1 is already mapped on line 2",
        ),
        (
            HEADER + "cidr,10.0.0.0/8,r1\ncidr,10.0.0.0/8,r2\n",
            "rooms.csv:3: value: cidr 10.0.0.0/8 is already mapped on line 2",
        ),
    ],
)
def test_each_problem_is_reported_with_file_line_and_column(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_listed_and_nothing_is_placed() -> None:
    text = (
        "match,value,room,seat_count\n"
        "serial,GOOD1,r1,\n"
        "bogus,x,r1,\n"
        "cidr,10.0.0.1/8,r 2,\n"
        "serial,GOOD2,r3,many\n"
    )
    assert problems(text) == [
        "rooms.csv:3: match: 'bogus' is not one of serial, host, address, cidr",
        "rooms.csv:4: room: 'r 2' is not a room id: letters, digits and . _ : / -, starting with a "
        "letter or digit",
        "rooms.csv:4: value: '10.0.0.1/8' has host bits set: did you mean 10.0.0.0/8?",
        "rooms.csv:5: seat_count: 'many' is not a whole number of 0 or more",
    ]


def test_encoding_problems() -> None:
    assert problems("match,value,room\n".encode("utf-16")) == [
        "rooms.csv:1: the file is UTF-16 (Excel's 'Unicode Text'): save it as 'CSV UTF-8' instead"
    ]
    found = problems(b"match,value,room\nserial,S1,r1\nhost,k\xf8k,r1\n" + b"serial,\xe5,r\n" * 30)
    assert found[0] == ("rooms.csv:3: byte 0xF8 at character 7 is not UTF-8: save the file as 'CSV UTF-8'")
    assert len(found) == 21 and found[-1] == "rooms.csv: 11 more lines are not UTF-8"


def test_size_limit_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RoomMapError, match=r"^big.csv: the file is larger than the 20 bytes limit: split it"):
        parse_room_map(HEADER + "serial,S1,r1\n", "big.csv", max_bytes=20)
    missing = tmp_path / "nope.csv"
    with pytest.raises(RoomMapError, match=rf"^{missing}: cannot read the file: No such file"):
        load_room_map(missing)
    path = tmp_path / "rooms.csv"
    path.write_bytes(b"\xef\xbb\xbfmatch;value;room\r\nserial;S1;r1\r\n")
    assert load_room_map(path).rules[0].where == f"{path}:2"


def test_rules_built_in_code_are_checked_like_rows() -> None:
    assert rule("host", "PC-1.local.", "r1") == RoomRule(MatchKind.HOST, "pc-1", "r1")
    with pytest.raises(RoomMapError, match="has host bits set"):
        rule("cidr", "10.0.0.1/8", "r1")
    with pytest.raises(RoomMapError, match=r"serial A1 is already mapped on <memory> \(room r1\)"):
        RoomMap([rule("serial", "A1", "r1"), rule("serial", "a1", "r2")])


# --------------------------------------------------------------------------- placement


def _map(*rows: str) -> RoomMap:
    return parse_room_map(HEADER + "".join(r + "\n" for r in rows))


PRECEDENCE_MAP = _map(
    "cidr,10.0.0.0/8,wide",
    "cidr,10.1.0.0/16,narrow",
    "address,10.1.2.3,exact",
    "host,pc-1,by-host",
    "host,pc-1.oslo.example.com,by-fqdn",
    "serial,SN1,by-serial",
    "cidr,2001:db8::/32,v6-wide",
    "address,2001:db8::5,v6-exact",
)


@pytest.mark.parametrize(
    ("unit", "room", "fact"),
    [
        # serial > host > address > narrowest cidr
        (device(serial="sn1", address="10.1.2.3", sys_name="pc-1"), "by-serial", "serial"),
        (device(serial="OTHER", address="10.1.2.3", sys_name="PC-1"), "by-host", "attributes.sys_name"),
        (device(address="10.1.2.3:1161"), "exact", "address"),
        (device(address="10.1.9.9"), "narrow", "address"),
        (device(address="10.9.9.9"), "wide", "address"),
        (device(address="192.168.1.1"), None, None),
        # host names: attribute keys, .local and trailing dot, first label, address host part
        (device(host="PC-1.local.", address="192.168.1.1"), "by-host", "attributes.host"),
        (device(hostname="pc-1.bergen.example.com"), "by-host", "attributes.hostname"),
        (device(hostname="pc-1.oslo.example.com"), "by-fqdn", "attributes.hostname"),  # whole name wins
        (device(transport=Transport.SSH, address="pc-1:2222"), "by-host", "address"),
        (device(transport=Transport.SSH, address="pc-1/usb/1-1.2"), "by-host", "address"),
        (device(transport=Transport.SSH, address="10.1.2.3:2222/usb/1-1.2"), "exact", "address"),
        (device(hostname="oslo.pc-1"), None, None),  # only the first label counts
        # IPv6 and mapped addresses
        (device(address="[2001:db8::5]:22"), "v6-exact", "address"),
        (device(address="2001:db8::5"), "v6-exact", "address"),
        (device(address="[2001:db8::77]:161"), "v6-wide", "address"),
        (device(address="::ffff:10.1.2.3"), "exact", "address"),
        (device(address="fe80::1%eth0"), None, None),
        # mDNS: announced addresses; a host name address when no IPv4 was announced
        (
            device(transport=Transport.MDNS, address="RallyBar-1.local", addresses=["fe80::1", "10.1.5.5"]),
            "narrow",
            "attributes.addresses",
        ),
        # a USB address is a port path, never a host name or an IP
        (device(transport=Transport.USB, address="1-1"), None, None),
        (device(transport=Transport.USB, address="10.1.2.3"), None, None),
        (device(transport=Transport.USB, address="1-1", serial="SN1"), "by-serial", "serial"),
    ],
)
def test_placement_precedence(unit: Device, room: str | None, fact: str | None) -> None:
    assert place(unit, PRECEDENCE_MAP) == room
    found = PRECEDENCE_MAP.match(unit)
    assert (found.fact if found else None) == fact


def test_earliest_line_breaks_ties_within_a_kind() -> None:
    room_map = _map("host,pc-b,second", "host,pc-a,first")
    unit = device(sys_name="pc-b", hostname="pc-a")
    found = room_map.match(unit)
    assert found is not None and found.room == "second" and found.rule.line == 2
    room_map = _map("address,10.0.0.2,late", "cidr,10.0.0.0/24,range", "address,10.0.0.1,early")
    assert place(device(address="10.0.0.2", addresses=["10.0.0.1"]), room_map) == "late"


def test_place_ignores_the_room_the_device_already_has() -> None:
    unit = device(serial="SN1")
    unit.room = "from-config"
    assert place(unit, PRECEDENCE_MAP) == "by-serial"  # the inventory keeps explicit rooms


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", (None, "10.1.2.3")),
        ("10.1.2.3:1161", (None, "10.1.2.3")),
        ("[::1]:22", (None, "::1")),
        ("::1", (None, "::1")),
        ("room-pc-12/usb/1-1.2", ("room-pc-12", None)),
        ("Room-PC-12:2222", ("room-pc-12", None)),
        ("host:port", (None, None)),
        ("", (None, None)),
    ],
)
def test_split_address(address: str, expected: tuple[str | None, str | None]) -> None:
    host, ip = split_address(address)
    assert (host, str(ip) if ip else None) == expected


def test_normalize_host() -> None:
    assert normalize_host(" RallyBar-1.LOCAL. ") == "rallybar-1"
    assert normalize_host("pc.example.com.") == "pc.example.com"


# --------------------------------------------------------------------------- properties

_networks = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(8, 32)
)


@settings(max_examples=150, deadline=None)
@given(nets=st.lists(_networks, min_size=1, max_size=12, unique=True), addr=st.integers(0, 2**32 - 1))
def test_the_narrowest_containing_range_wins(nets: list[ipaddress.IPv4Network], addr: int) -> None:
    ip = ipaddress.IPv4Address(addr)
    room_map = RoomMap([rule("cidr", str(n), f"r{i}") for i, n in enumerate(nets)])
    holding = [(n, i) for i, n in enumerate(nets) if ip in n]
    expected = f"r{max(holding, key=lambda h: h[0].prefixlen)[1]}" if holding else None
    assert place(device(address=str(ip)), room_map) == expected


_serials = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=14).filter(
    lambda s: not is_placeholder_serial(s)
)


@settings(max_examples=100, deadline=None)
@given(
    serials=st.lists(_serials, min_size=1, max_size=8, unique=True),
    delimiter=st.sampled_from([",", ";"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    name=st.text(st.characters(codec="utf-8", categories=["L", "N", "Zs"]), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool),
)
def test_written_maps_read_back(
    serials: list[str], delimiter: str, newline: str, bom: bool, name: str
) -> None:
    lines = [delimiter.join(["match", "value", "room", "room_name"])]
    lines += [delimiter.join(["serial", s, f"room-{i % 3}", f'"{name}"']) for i, s in enumerate(serials)]
    text = ("\ufeff" if bom else "") + newline.join(lines) + newline
    room_map = parse_room_map(text.encode())
    expected = [(s, f"room-{i % 3}") for i, s in enumerate(serials)]
    assert [(r.value, r.room) for r in room_map.rules] == expected
    assert {r.name for r in room_map.rooms.values()} == {name}
