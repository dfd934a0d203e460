"""The room map: which room a unit found on the LAN stands in.

Units on this host's own USB belong to the configured room, and units a source already knows
the room of (a configured SSH host's ``room``) keep it: the map never overrides an explicit
room (:mod:`agent.inventory`). Everything else — SNMP responders, mDNS hosts, room PCs read over
SSH without a ``room`` — is placed by this map, or listed as *unassigned*, never dropped.

The file (for operators: ``docs/csv-formats.md``)
-------------------------------------------------
A CSV file in the dialect every operator CSV shares (:mod:`agent.csvtext`): a header row naming
the columns ``match``, ``value``, ``room`` (required) and ``room_name``, ``group``, ``location``,
``seat_count``, ``platform`` (``teams``, ``zoom``, ``google-meet``) (optional);
``config/rooms.example.csv`` is a worked example. ``match`` says
what ``value`` is:

* ``serial``: the unit's serial as the agent reads it, white space removed and letters
  upper-cased on both sides; placeholders (``N/A``, ``00000000``…) are refused.
* ``host``: a host name the unit gives (mDNS host, SNMP sysName, a room PC's host name) or the
  host part of its address. Case-insensitive; a trailing dot and ``.local`` are ignored; a
  value without a dot also matches the first label of a longer name. Units on a room PC's USB
  (``room-pc-12/usb/1-1.2``) match through the PC's host.
* ``address``: one IPv4 or IPv6 address, without a port; matches whatever port the unit was
  reached on, and the addresses an mDNS host announced.
* ``cidr``: a range (``10.1.2.0/24``, ``2001:db8:4::/64``), host bits zero.

A row with ``match`` and ``value`` both blank only describes its room; where several rows give
one room's detail they must agree. When several rows match one unit the most specific wins,
then the earlier line: ``serial > host > address > the narrowest cidr`` (a whole host name
beats a first-label match). Two rows with the same ``match`` and ``value`` are refused.

A file with any problem is refused as a whole: nothing is placed by it, and every problem is
listed as ``FILE:LINE: COLUMN: what is wrong`` in :class:`RoomMapError`. At most 10 MB.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.csvtext import CellError as _Bad
from agent.csvtext import CsvFileError, CsvLayout, CsvReader, serial_cell
from agent.gcpause import paused_gc
from agent.model import Device, Room, Transport
from agent.sanitize import normalize_serial

__all__ = [
    "COLUMNS",
    "HOST_NAME_ATTRIBUTES",
    "LAYOUT",
    "MAX_FILE_BYTES",
    "MatchKind",
    "Placement",
    "RoomMap",
    "RoomMapError",
    "RoomRule",
    "load_room_map",
    "normalize_host",
    "normalize_serial",
    "parse_room_map",
    "place",
    "rule",
    "split_address",
]

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TEXT_LEN = 200  # as the configuration's text values
MAX_SEATS = 10_000
MAX_SERIAL_LEN = 64

#: Device attributes that hold a host name: mDNS ``host``, a room PC's ``hostname``, SNMP
#: ``sys_name`` (the collectors' keys).
HOST_NAME_ATTRIBUTES = ("host", "hostname", "sys_name")
#: Device attributes that hold a list of addresses (an mDNS host's announced addresses).
ADDRESS_LIST_ATTRIBUTES = ("addresses",)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
MAX_ROOM_ID_LEN = 64
#: Control characters, refused in text cells (the configuration's text values refuse them too).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")
#: A host name: dot-separated labels (no overlapping repeats: linear time on any input).
_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
MAX_HOST_LEN = 253
#: The characters of an IP address (ipaddress refuses any other): a text with another one is
#: not an address, without asking ipaddress.
_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
#: An IPv4 address (and a range) as ipaddress writes one: octets without leading zeros. Read
#: without ipaddress, which costs microseconds an address: a map of ranges has 100,000s.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_IPV4_NET = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}/(3[0-2]|[12]?[0-9])")
#: The host bits of each prefix length, by IP version.
_HOST_BITS = {4: [(1 << (32 - p)) - 1 for p in range(33)], 6: [(1 << (128 - p)) - 1 for p in range(129)]}
#: Added to an IPv6 address's int in the address index: apart from every IPv4 one.
_V6 = 1 << 128


class MatchKind(StrEnum):
    """What a rule's value is, in order of precedence (most specific first)."""

    SERIAL = "serial"
    HOST = "host"
    ADDRESS = "address"
    CIDR = "cidr"


COLUMNS: tuple[str, ...] = (
    "match",
    "value",
    "room",
    "room_name",
    "group",
    "location",
    "seat_count",
    "platform",
)
#: The meeting platforms a room's ``platform`` may name (whom to call for a Tap bundle
#: depends on it: agent/support.py).
PLATFORMS = ("teams", "zoom", "google-meet")
_REQUIRED = ("match", "value", "room")
_MATCH_HINTS = {
    "ip": "address",
    "ip_address": "address",
    "addr": "address",
    "hostname": "host",
    "host_name": "host",
    "name": "host",
    "subnet": "cidr",
    "network": "cidr",
    "range": "cidr",
    "sn": "serial",
    "serial_number": "serial",
}


class RoomMapError(CsvFileError):
    """The room map was refused. ``problems`` lists every problem, one line each
    (``file:line: column: what is wrong``); ``str()`` joins them with newlines."""


@dataclass(frozen=True, slots=True)
class RoomRule:
    """One row that places units: ``value`` in its normalised form (see the module text).
    ``line`` and ``source`` say where it came from; they take no part in equality."""

    match: MatchKind
    value: str
    room: str
    line: int | None = field(default=None, compare=False)
    source: str = field(default="<memory>", compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def __str__(self) -> str:
        return f"{self.where}: {self.match} {self.value} → {self.room}"


@dataclass(frozen=True, slots=True)
class Placement:
    """Why a unit was placed: the rule that won and the fact of the unit it matched
    (``serial``, ``attributes.sys_name``, ``address``, ``attributes.addresses``)."""

    room: str
    rule: RoomRule
    fact: str


# --------------------------------------------------------------------------- values


def normalize_host(text: str) -> str:
    """Host names are compared lower-cased, without a trailing dot or ``.local`` suffix."""
    return text.strip().rstrip(".").lower().removesuffix(".local")


def _ip(text: str) -> IpAddress | None:
    """``text`` as an IP address (an IPv6 zone is dropped, an IPv4-mapped IPv6 address is its
    IPv4 address), else ``None``."""
    text = text.split("%", 1)[0]
    if not _IP_CHARS.fullmatch(text):  # a host name: no need to ask ipaddress (and its exception)
        return None
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _address_key(value: str) -> int | None:
    """The index key of an address rule's value (:func:`_ip_key`); a value as written by
    :func:`_parse_address` (IPv4 in dotted quads) without ipaddress."""
    quad = _IPV4.fullmatch(value)
    if quad is not None:
        return _v4(quad)
    ip = _ip(value)
    return None if ip is None else _ip_key(ip)


def _ip_key(ip: IpAddress) -> int:
    """An address as one int: IPv6 ones above every IPv4 one."""
    return int(ip) if ip.version == 4 else int(ip) | _V6


def _network_key(value: str) -> tuple[int, int, int]:
    """``(version, prefix length, network as an int)`` of a cidr rule's value; one as written
    by :func:`_parse_cidr` (IPv4) without ipaddress."""
    quad = _IPV4_NET.fullmatch(value)
    if quad is not None:
        address, prefix = _v4(quad), int(quad[5])
        if not address & _HOST_BITS[4][prefix]:
            return 4, prefix, address
    net = _network(ipaddress.ip_network(value))
    return net.version, net.prefixlen, int(net.network_address)


def _v4(quad: re.Match[str]) -> int:
    return (int(quad[1]) << 24) | (int(quad[2]) << 16) | (int(quad[3]) << 8) | int(quad[4])


def _network(net: IpNetwork) -> IpNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def split_address(address: str) -> tuple[str | None, IpAddress | None]:
    """The host part of a device address as ``(host name, None)`` or ``(None, ip)``.

    ``10.1.2.3``, ``10.1.2.3:1161``, ``[::1]:22``, ``::1``, ``room-pc-12:2222`` and
    ``room-pc-12/usb/1-1.2`` (a unit on that PC's USB) are understood; anything else gives
    ``(None, None)``.
    """
    text = address.strip().split("/", 1)[0]
    if text.startswith("["):
        inside, _, _rest = text[1:].partition("]")
        return None, _ip(inside)
    found = _ip(text)
    if found is not None:
        return None, found
    if text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None, None
        found = _ip(text)
        if found is not None:
            return None, found
    name = normalize_host(text)
    return (name, None) if _is_host(name) else (None, None)


def _is_host(name: str) -> bool:
    return len(name) <= MAX_HOST_LEN and _HOST.match(name) is not None


def _parse_serial(text: str) -> str:
    return serial_cell(text, MAX_SERIAL_LEN)


def _parse_host(text: str) -> str:
    if _ip(text.strip("[]")) is not None:
        raise _Bad(f"{text!r} is an IP address: use match 'address'")
    if "/" in text or ":" in text:
        raise _Bad(f"{text!r} is not a host name (write the name alone, without port or path)")
    name = normalize_host(text)
    if _DOTTED_NUMBERS.match(name):
        raise _Bad(f"{text!r} is not a host name, nor an IP address")
    if len(name) > MAX_HOST_LEN:
        raise _Bad(f"is longer than {MAX_HOST_LEN} characters")
    if not _HOST.match(name):
        raise _Bad(f"{text!r} is not a host name (letters, digits, '-', '_' and dots)")
    return name


def _parse_address(text: str) -> str:
    if _IPV4.fullmatch(text):
        return text  # as ipaddress writes it: digits without leading zeros
    if "/" in text:
        raise _Bad(f"{text!r} is a range: use match 'cidr'")
    found = _ip(text)
    if found is None:
        host, ip = split_address(text)
        if ip is not None:
            raise _Bad(f"{text!r} has a port: write the address alone ({ip})")
        if host is not None and not _DOTTED_NUMBERS.match(host):
            raise _Bad(f"{text!r} is not an IP address: use match 'host' for a host name")
        raise _Bad(f"{text!r} is not an IPv4 or IPv6 address")
    return str(found)


def _parse_cidr(text: str) -> str:
    quad = _IPV4_NET.fullmatch(text)
    if quad is not None and not _v4(quad) & _HOST_BITS[4][int(quad[5])]:
        return text  # as ipaddress writes it, host bits zero
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise _Bad(f"{text!r} has host bits set: did you mean {loose}?") from None
        raise _Bad(f"{text!r} is not a CIDR range (e.g. 10.1.2.0/24, 2001:db8::/64)") from None
    return str(_network(net))


_VALUE_PARSERS = {
    MatchKind.SERIAL: _parse_serial,
    MatchKind.HOST: _parse_host,
    MatchKind.ADDRESS: _parse_address,
    MatchKind.CIDR: _parse_cidr,
}


def _parse_kind(text: str) -> MatchKind:
    word = text.strip().lower()
    try:
        return MatchKind(word)
    except ValueError:
        hint = _MATCH_HINTS.get(word.replace(" ", "_").replace("-", "_"))
        kinds = ", ".join(k.value for k in MatchKind)
        raise _Bad(f"{text!r} is not one of {kinds}" + (f" (use {hint})" if hint else "")) from None


def _parse_room_id(text: str) -> str:
    if len(text) > MAX_ROOM_ID_LEN:
        raise _Bad(f"is longer than {MAX_ROOM_ID_LEN} characters")
    if not ROOM_ID.match(text):
        raise _Bad(
            f"{text!r} is not a room id: letters, digits and . _ : / -, starting with a letter or digit"
        )
    return text


def _parse_text(text: str) -> str:
    if _CONTROL.search(text):
        raise _Bad("holds control characters")
    if len(text) > MAX_TEXT_LEN:
        raise _Bad(f"is longer than {MAX_TEXT_LEN} characters")
    return text


def _parse_platform(text: str) -> str:
    platform = text.strip().lower()
    if platform not in PLATFORMS:
        raise _Bad(f"{text!r} is not a platform ({', '.join(PLATFORMS)})")
    return platform


def _parse_seats(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _Bad(f"{text!r} is not a whole number of 0 or more")
    seats = int(text)
    if seats > MAX_SEATS:
        raise _Bad(f"{text!r} is too large (at most {MAX_SEATS})")
    return seats


def rule(match: MatchKind | str, value: str, room: str) -> RoomRule:
    """A rule built in code (tests, the portal), checked and normalised as a file row is.
    Raises :class:`RoomMapError`."""
    try:
        kind = _parse_kind(str(match))
        return RoomRule(kind, _VALUE_PARSERS[kind](value.strip()), _parse_room_id(room.strip()))
    except _Bad as exc:
        raise RoomMapError([f"<memory>: {match} {value!r}: {exc}"]) from None


# --------------------------------------------------------------------------- the map


class RoomMap:
    """Rules that place units in rooms, and what the file says about each room.

    ``rooms`` holds every room the map names (with its details where given). Build one with
    :func:`load_room_map` / :func:`parse_room_map`, or from :func:`rule` objects in code (they
    carry checked, normalised values). Two rules with one ``match`` and value are refused
    (:class:`RoomMapError`).
    """

    __slots__ = ("_by_address", "_by_host", "_by_serial", "_cidrs", "_prefixes", "rooms", "rules", "source")

    def __init__(
        self, rules: Iterable[RoomRule] = (), rooms: Iterable[Room] = (), *, source: str = "<memory>"
    ) -> None:
        self.source = source
        self.rules: tuple[RoomRule, ...] = tuple(rules)
        self.rooms: dict[str, Room] = {r.id: r for r in rooms}
        self._by_serial: dict[str, RoomRule] = {}
        self._by_host: dict[str, RoomRule] = {}
        self._by_address: dict[int | None, RoomRule] = {}
        #: The ranges by (IP version, prefix length), each by its network address: an address
        #: is looked up once a prefix length the map uses, not compared with every range.
        self._cidrs: dict[tuple[int, int], dict[int, RoomRule]] = {}
        problems = []
        for r in self.rules:
            if r.room not in self.rooms:
                self.rooms[r.room] = Room(r.room)
            index: dict[Any, RoomRule]
            key: Any
            if r.match is MatchKind.CIDR:
                version, prefix, key = _network_key(r.value)
                index = self._cidrs.setdefault((version, prefix), {})
            elif r.match is MatchKind.SERIAL:
                index, key = self._by_serial, _same(normalize_serial(r.value), r.value)
            elif r.match is MatchKind.HOST:
                index, key = self._by_host, _same(normalize_host(r.value), r.value)
            else:
                index, key = self._by_address, _address_key(r.value)
            first = index.setdefault(key, r)
            if first is not r:
                problems.append(_duplicate(r, first))
        if problems:
            raise RoomMapError(problems)
        # Narrowest first; equal prefixes cannot both hold one address unless equal (refused).
        self._prefixes = sorted(self._cidrs, key=lambda length: -length[1])

    def __repr__(self) -> str:
        return f"RoomMap({len(self.rules)} rules, {len(self.rooms)} rooms from {self.source})"

    def match(self, device: Device) -> Placement | None:
        """The placement the map gives ``device`` (whatever room it already has), or ``None``.
        Precedence: serial > host > address > the narrowest cidr; then the earliest line."""
        return self._match_serial(device) or self._match_host(device) or self._match_address(device)

    def _match_serial(self, device: Device) -> Placement | None:
        if not device.serial:
            return None
        found = self._by_serial.get(normalize_serial(device.serial))
        return Placement(found.room, found, "serial") if found else None

    def _match_host(self, device: Device) -> Placement | None:
        best: tuple[tuple[int, int], Placement] | None = None
        for fact, name in _host_names(device):
            candidates = [(0, self._by_host.get(name))]
            if "." in name:  # a rule without a dot matches the first label (module text)
                candidates.append((1, self._by_host.get(name.split(".", 1)[0])))
            for quality, found in candidates:
                if found is None:
                    continue
                key = (quality, _line(found))
                if best is None or key < best[0]:
                    best = (key, Placement(found.room, found, fact))
        return best[1] if best else None

    def _match_address(self, device: Device) -> Placement | None:
        ips = _addresses(device)
        exact = [
            (_line(r), Placement(r.room, r, fact))
            for fact, ip in ips
            if (r := self._by_address.get(_ip_key(ip))) is not None
        ]
        if exact:
            return min(exact, key=lambda item: item[0])[1]
        best: tuple[tuple[int, int], Placement] | None = None
        for fact, ip in ips:
            address = int(ip)
            for version, prefix in self._prefixes:
                if version != ip.version:
                    continue
                r = self._cidrs[version, prefix].get(address & ~_HOST_BITS[version][prefix])
                if r is not None:
                    key = (-prefix, _line(r))
                    if best is None or key < best[0]:
                        best = (key, Placement(r.room, r, fact))
                    break  # the narrowest range holding this address
        return best[1] if best else None


def _same(key: str, value: str) -> str:
    """``value`` itself when ``key`` equals it (a rule's value is normalised already): one
    string kept, not two, for each of 100,000s of rules."""
    return value if key == value else key


def _duplicate(r: RoomRule, first: RoomRule) -> str:
    where = f"line {first.line}" if first.line is not None else first.where
    same = "the same room" if first.room == r.room else f"room {first.room}"
    return f"{r.where}: value: {r.match} {r.value} is already mapped on {where} ({same})"


def _line(r: RoomRule) -> int:
    return r.line if r.line is not None else 0


def _host_names(device: Device) -> Iterator[tuple[str, str]]:
    """``(fact, normalised host name)`` for every host name the device gives."""
    for key in HOST_NAME_ATTRIBUTES:
        value = device.attributes.get(key)
        if isinstance(value, str) and value.strip():
            yield f"attributes.{key}", normalize_host(value)
    if device.transport is not Transport.USB:  # a USB address is a port path, not a host
        host, _ = split_address(device.address)
        if host is not None:
            yield "address", host


def _addresses(device: Device) -> list[tuple[str, IpAddress]]:
    """``(fact, address)`` for every IP address the device was reached on or announced."""
    found: list[tuple[str, IpAddress]] = []
    if device.transport is not Transport.USB:
        _, ip = split_address(device.address)
        if ip is not None:
            found.append(("address", ip))
    for key in ADDRESS_LIST_ATTRIBUTES:
        values = device.attributes.get(key)
        if isinstance(values, list | tuple):
            for value in values:
                ip = _ip(value) if isinstance(value, str) else None
                if ip is not None:
                    found.append((f"attributes.{key}", ip))
    return found


def place(device: Device, room_map: RoomMap) -> str | None:
    """The room id the map gives ``device``, or ``None``. Pure; it ignores ``device.room``
    (the inventory keeps an explicit room and asks the map only for units without one)."""
    found = room_map.match(device)
    return found.room if found else None


# --------------------------------------------------------------------------- the file

#: The room map's columns, as the common CSV reader (:mod:`agent.csvtext`) reads them.
LAYOUT = CsvLayout(
    columns=COLUMNS,
    required={c: "the column is missing (required: match, value, room)" for c in _REQUIRED},
    example="match,value,room",
    text_columns=frozenset({"room_name", "group", "location"}),
)


def load_room_map(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> RoomMap:
    """Read and check a room-map CSV file; raise :class:`RoomMapError` (every problem listed,
    nothing placed) when anything in it is wrong. The file is read a block at a time."""
    return _Reader(str(path)).run(Path(path), max_bytes)


def parse_room_map(data: str | bytes, name: str = "<file>", *, max_bytes: int = MAX_FILE_BYTES) -> RoomMap:
    """Check and read room-map CSV content (bytes as read from a file, or text); ``name`` is
    used in messages."""
    return _Reader(name).run(data, max_bytes)


#: Texts a :class:`_Said` parser remembers: far more rooms than a site has; a bound for a file
#: of millions of rooms.
_MAX_SAID = 100_000


class _Said:
    """A cell parser that remembers what it said of each text: room ids, match kinds and room
    details repeat on many rows, and are parsed once (a problem's message too)."""

    __slots__ = ("_said", "parse")

    def __init__(self, parse: Callable[[str], Any]) -> None:
        self.parse = parse
        self._said: dict[str, tuple[Any, str | None]] = {}

    def __call__(self, text: str) -> Any:
        said = self._said.get(text)
        if said is None:
            try:
                said = (self.parse(text), None)
            except _Bad as exc:
                said = (None, str(exc))
            if len(self._said) < _MAX_SAID:
                self._said[text] = said
        value, problem = said
        if problem is not None:
            raise _Bad(problem)
        return value


class _Reader:
    """One read of a file: collects every problem; the map is built only when there is none."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.csv = CsvReader(name, LAYOUT, RoomMapError)
        self.problem = self.csv.problem
        self.room_id = _Said(_parse_room_id)
        self.kind = _Said(_parse_kind)
        #: The room's details, in the order their problems are listed.
        self.details = {
            "room_name": _Said(_parse_text),
            "group": _Said(_parse_text),
            "location": _Said(_parse_text),
            "seat_count": _Said(_parse_seats),
            "platform": _Said(_parse_platform),
        }

    def run(self, data: str | bytes | Path, max_bytes: int) -> RoomMap:
        rules: list[RoomRule] = []
        details: dict[str, dict[str, tuple[Any, int]]] = {}
        blocks = self.csv.blocks(data, max_bytes)
        with paused_gc():  # a rule and a few short-lived objects a row, none in a cycle
            for block in blocks:
                names = list(block.columns)
                for line, cells in zip(block.lines, zip(*block.columns.values(), strict=True), strict=True):
                    self.row(line, dict(zip(names, cells, strict=True)), rules, details)
            self.csv.refuse()
            return RoomMap(rules, _rooms(details), source=self.name)  # refuses a repeated rule

    def row(
        self,
        line: int,
        raw: dict[str, str],
        rules: list[RoomRule],
        details: dict[str, dict[str, tuple[Any, int]]],
    ) -> None:
        room = self.cell(line, "room", raw, self.room_id)
        if not raw["room"]:
            self.problem(line, "room", "is empty: every row names a room")
        kind = self.cell(line, "match", raw, self.kind)
        if raw["match"] and not raw["value"]:
            self.problem(line, "value", f"is empty: give the {raw['match']} to match")
        elif raw["value"] and not raw["match"]:
            self.problem(line, "match", "is empty: say what value is (serial, host, address or cidr)")
        value = self.cell(line, "value", raw, _VALUE_PARSERS[kind]) if kind is not None else None
        given = {
            column: detail
            for column, parse in self.details.items()
            if raw.get(column) and (detail := self.cell(line, column, raw, parse)) is not None
        }
        if room is None:
            return
        if not raw["match"] and not raw["value"] and not given:
            self.problem(
                line,
                None,
                "the row places nothing and describes nothing: give match and value, or the room's details",
            )
        if kind is not None and value is not None:
            rules.append(RoomRule(kind, value, room, line, self.name))
        known = details.setdefault(room, {})  # every room, in the order the file names them
        for column, detail in given.items():
            if column in known and known[column][0] != detail:
                earlier, first_line = known[column]
                self.problem(
                    line,
                    column,
                    f"{detail!r} differs from {earlier!r} given for room {room} on line {first_line}",
                )
            known.setdefault(column, (detail, line))

    def cell(self, line: int, column: str, raw: dict[str, str], parse: Callable[[str], Any]) -> Any:
        text = raw.get(column, "")
        if not text:
            return None
        try:
            return parse(text)
        except _Bad as exc:
            self.problem(line, column, str(exc))
            return None


def _rooms(details: dict[str, dict[str, tuple[Any, int]]]) -> list[Room]:
    def get(known: dict[str, tuple[Any, int]], column: str) -> Any:
        return known[column][0] if column in known else None

    return [
        Room(
            room,
            name=get(d, "room_name"),
            group=get(d, "group"),
            location=get(d, "location"),
            seat_count=get(d, "seat_count"),
            platform=get(d, "platform"),
        )
        for room, d in details.items()
    ]
