"""One unit, one record: which readings are of the same unit, and what the unit then is.

A **reading** is what one channel — a source at an address (``mdns`` at ``10.0.0.5``,
``usb`` at port ``2-1.1``; for a LAN host, its names too: two hosts behind one address are
two channels) — last reported of one unit: a single-channel :class:`~agent.model.Device`.
This module groups readings into units and merges each group into one device. It is pure:
no clock, no I/O, no catalog lookups beyond what the readings carry (``category`` is the
catalog family) and :class:`MergeRules`. docs/identity.md states the rules for operators,
with examples; this is their implementation.

Grouping (linear in the number of readings: a union-find over keys)
--------------------------------------------------------------------
1. Readings that were one unit before (:attr:`Reading.unit`) stay together, and so do the
   readings of one channel that tell one label-grade serial. Only what a scan read links
   units the store kept apart: remembered readings of two stored units share a key only
   through a fresh one.
2. A **label-grade serial** joins the readings of one catalog family carrying it
   (``serial_key``) — unless one source puts that serial on two hosts (LAN hosts, or USB
   ports) in one run, or as two units the store keeps apart: then the serial is *contested*
   and joins nothing on its own (two devices claiming one serial are a ``serial.conflict``,
   both kept).
3. A **MAC address** joins readings; then a **host name** (mDNS host, a PC's own name);
   then a LAN **address** — only where that is unambiguous: an address shared by two hosts
   with other names (or other serials) joins neither with a reading that has nothing else.
4. A USB unit is also known by its port and USB ids: what identifies one without a
   label-grade serial, and what ties a reading whose serial did not read to its unit.

No join ever puts two different label-grade serials in one unit; a serial that is not
label-grade never joins anything on its own (two webcams with one chip serial stay two).

Merging (:func:`merge_group`)
-----------------------------
Each fact comes from the most trustworthy channel that reports it (:data:`TRUST_ORDER`;
within a rank, a standing reading before a missed one, then the newest). Where channels
disagree on the firmware or the product, the disagreement is kept
(:attr:`~agent.model.Device.disagreements`) and is a health warning naming both values and
both channels. A reading remembers what its channel said in its last few runs where that
disagreed with the unit (:attr:`Reading.recent`), so a channel that flips its answer every
scan keeps the warning standing instead of raising and clearing it each time, and channels
upgraded together raise none.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agent.gcpause import paused_gc
from agent.model import (
    OTHER,
    Device,
    Disagreement,
    FactSource,
    HealthIssue,
    HealthState,
    SeenBy,
    Severity,
    Transport,
    as_utc,
    transport_identity,
)
from agent.sanitize import normalize_serial

#: Collectors from the most trustworthy down (issue [9/16]): a unit's own management
#: interfaces, then what its host or SNMP agent says of it, then its mDNS announcements, then
#: what a USB descriptor tells. ``config`` is what an operator typed.
TRUST_ORDER: tuple[tuple[str, ...], ...] = (
    ("sync-interface", "collabos-api"),
    ("ssh-dmi", "snmp-entity", "config"),
    ("mdns-txt",),
    ("usb-descriptor",),
)
_RANK: dict[str, int] = {name: rank for rank, tier in enumerate(TRUST_ORDER) for name in tier}
UNRANKED = len(TRUST_ORDER)

#: What each ``firmware_source`` a collector writes means: the collector that read it.
FIRMWARE_COLLECTORS: Mapping[str, str] = {
    "usb-bcdDevice": "usb-descriptor",
    "bios": "ssh-dmi",
    "snmp-entity-firmware": "snmp-entity",
    "snmp-entity-software": "snmp-entity",
}
#: The collector a channel of each transport reads with when its facts do not say.
_TRANSPORT_COLLECTORS: Mapping[str, str] = {
    Transport.USB: "usb-descriptor",
    Transport.MDNS: "mdns-txt",
    Transport.SNMP: "snmp-entity",
    Transport.SSH: "ssh-dmi",
    Transport.HTTPS: "collabos-api",
    Transport.CONFIG: "config",
}
#: The attribute a unit read through a room PC carries (its PC's address): a USB unit.
ATTACHED_TO = "attached_to"
#: Attributes that carry MAC addresses (a string or a list of them).
MAC_ATTRIBUTES = ("mac", "mac_address", "mac_addresses")
_MAC_NAMES = frozenset(MAC_ATTRIBUTES)
#: Attributes that carry a LAN host's own name (mDNS host, a PC's host name).
HOST_NAME_ATTRIBUTES = ("host", "hostname")
#: Health issue codes of a disagreement between channels.
FIRMWARE_DISAGREEMENT = "firmware-disagreement"
MODEL_DISAGREEMENT = "model-disagreement"
#: Facts whose disagreement is remembered across runs (:attr:`Reading.recent`).
REMEMBERED_FACTS = ("firmware", "product")


def trust_rank(collector: str | None) -> int:
    """0 for the most trustworthy collectors, larger for less; unknown ones last."""
    return _RANK.get(collector or "", UNRANKED)


def firmware_collector(device: Device) -> str | None:
    source = device.firmware_source
    if source is None:
        return None
    return FIRMWARE_COLLECTORS.get(source, source)


def channel_collector(device: Device) -> str:
    """The collector whose reading a channel is: the most trustworthy of those that gave its
    serial and firmware, else its transport's own."""
    if device.transport is Transport.USB or ATTACHED_TO in device.attributes:
        best = "usb-descriptor"
    else:
        best = _TRANSPORT_COLLECTORS.get(device.transport, str(device.transport))
    rank = _RANK.get(best, UNRANKED)
    for other in (device.serial_source, firmware_collector(device)):
        if other is not None and _RANK.get(other, UNRANKED) < rank:
            best, rank = str(other), _RANK.get(other, UNRANKED)
    return best


@dataclass(frozen=True, slots=True)
class MergeRules:
    """What the catalog adds to the rules: products that are a family's fallback name (a
    CollabOS bar the catalog cannot name), which yield to a named product and never
    disagree with one."""

    generic_products: frozenset[str] = frozenset()
    #: How many runs of a channel a value it reported is remembered for disagreements.
    remember_runs: int = 3


@dataclass(slots=True)
class Reading:
    """One channel's latest report of a unit, as grouping and merging see it."""

    device: Device
    #: Runs of the channel's source in a row that did not report it (0: reported now).
    missed: int = 0
    #: The identity of the stored unit this reading belonged to (``None``: new this scan).
    unit: str | None = None
    #: Reported in the scan being merged (not only remembered from an earlier one).
    fresh: bool = True
    #: Whether it counts for the unit as it stands now: fresh, or remembered from a source
    #: that did not run in this scan and had not missed it.
    standing: bool = True
    #: Missed for ``remove_after`` runs: it goes with this scan, and only tells which unit a
    #: new reading of its channel continues.
    expired: bool = False
    #: Other values the channel gave :data:`REMEMBERED_FACTS` in its previous runs: for each
    #: fact, value -> how many runs ago it last said it (below :attr:`MergeRules.remember_runs`).
    recent: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Worked out once from :attr:`device` (which a reading never changes).
    source: str = field(init=False)
    collector: str = field(init=False)
    rank: int = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.source = source_of(self.device)
        self.collector = channel_collector(self.device)
        self.rank = trust_rank(self.collector)
        seen = self.device.last_seen
        self.stamp = (seen if seen.tzinfo is not None else as_utc(seen)).timestamp()

    @property
    def channel(self) -> tuple[str, str]:
        return (self.source, self.device.address)


def source_of(device: Device) -> str:
    return device.sources[0] if device.sources else str(device.transport)


# --------------------------------------------------------------------------- keys


def family_of(device: Device) -> str:
    """The catalog family a serial is unique in (a unit the catalog does not know: its
    product name)."""
    return device.category if device.category != OTHER else f"{OTHER}/{device.product}"


def serial_key(device: Device) -> str | None:
    if device.serial and device.serial_label_grade:
        return f"{family_of(device)}\x00{normalize_serial(device.serial)}"
    return None


def is_lan(device: Device) -> bool:
    """Reached over the network as a host of its own (not a unit on some PC's USB)."""
    return device.transport not in (Transport.USB, Transport.CONFIG) and ATTACHED_TO not in device.attributes


_MAC_DIGITS = re.compile(r"[0-9a-f]{12}")


def normalize_mac(text: object) -> str | None:
    """``aa:bb:cc:dd:ee:ff`` from any common spelling; ``None`` for what is not a usable MAC
    (all zeros, broadcast)."""
    if not isinstance(text, str):
        return None
    digits = re.sub(r"[\s:.\-]", "", text).lower()
    if not _MAC_DIGITS.fullmatch(digits) or digits in ("000000000000", "ffffffffffff"):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def macs_of(device: Device) -> list[str]:
    found: list[str] = []
    if device.attributes.keys().isdisjoint(_MAC_NAMES):
        return found
    for name in MAC_ATTRIBUTES:
        value = device.attributes.get(name)
        for item in value if isinstance(value, list) else [value]:
            mac = normalize_mac(item)
            if mac is not None and mac not in found:
                found.append(mac)
    return found


def _host_name(text: str) -> str | None:
    name = text.strip().rstrip(".").casefold()
    if name.endswith(".local"):
        name = name[: -len(".local")]
    if not name or _endpoint(name) is not None:
        return None  # an address, not a name
    return name


def names_of(device: Device, memo: dict[str, tuple[str | None, str | None]] | None = None) -> list[str]:
    """The LAN host's own names: its mDNS host, the name its PC reports, the address it was
    reached at when that is a name. ``memo`` keeps what texts were found to be, across calls."""
    return _names(device, {} if memo is None else memo) if is_lan(device) else []


def _names(device: Device, memo: dict[str, tuple[str | None, str | None]]) -> list[str]:
    texts = (*map(device.attributes.get, HOST_NAME_ATTRIBUTES), device.address)
    return _classified(texts, memo, 0)


def _classified(
    texts: Iterable[object], memo: dict[str, tuple[str | None, str | None]], kind: int
) -> list[str]:
    """The host names (``kind`` 0) or endpoints (1) among ``texts``, each once, in order."""
    found: list[str] = []
    for value in texts:
        if not isinstance(value, str):
            continue
        known = memo.get(value)
        key = (known if known is not None else _classify(value, memo))[kind]
        if key is not None and key not in found:
            found.append(key)
    return found


def _classify(text: str, memo: dict[str, tuple[str | None, str | None]]) -> tuple[str | None, str | None]:
    """``(host name, endpoint)`` of a text: one of them, or neither; remembered in ``memo``."""
    endpoint = _endpoint(text)
    found = (None if endpoint is not None else _host_name(text), endpoint)
    memo[text] = found
    return found


_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?::(\d{1,5}))?")


def _endpoint(text: str) -> str | None:
    """``ip:<address>`` for an IP address, ``ip:<address>:<port>`` for ``host:port`` /
    ``[v6]:port`` (another port is another endpoint: SNMP agents on one test host)."""
    v4 = _IPV4.fullmatch(text)
    if v4 is not None:  # the common case, without ipaddress's cost
        octets = [int(o) for o in v4.group(1, 2, 3, 4)]
        if max(octets) > 255:
            return None
        port = v4.group(5)
        address = ".".join(map(str, octets))
        return f"ip:{address}:{int(port)}" if port is not None else f"ip:{address}"
    if ":" not in text:
        return None  # a name
    try:
        return f"ip:{ipaddress.ip_address(text)}"
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return f"ip:{ipaddress.ip_address(host)}:{int(port)}"
    except ValueError:
        return None


def endpoints_of(device: Device, memo: dict[str, tuple[str | None, str | None]] | None = None) -> list[str]:
    """The IP endpoints a LAN host was reached at or announced (``ip:…``)."""
    return _endpoints(device, {} if memo is None else memo) if is_lan(device) else []


def _endpoints(device: Device, memo: dict[str, tuple[str | None, str | None]]) -> list[str]:
    addresses = device.attributes.get("addresses")
    return _classified([device.address, *(addresses if isinstance(addresses, list) else ())], memo, 1)


def port_key(device: Device) -> str | None:
    """A unit on USB: its port and ids (what identifies one without a label serial, and what
    ties a reading whose serial did not read this time to its unit)."""
    if is_lan(device):
        return None
    return transport_identity(device.transport, device.address, device.vendor_id, device.product_id)


# --------------------------------------------------------------------------- grouping


#: What texts were found to be: (host name, endpoint) (texts repeat across readings).
_Memo = dict[str, tuple[str | None, str | None]]


@dataclass(frozen=True, slots=True)
class ReadingKeys:
    """What grouping reads of one reading, computed once."""

    serial: str | None
    macs: tuple[str, ...]
    names: frozenset[str]
    endpoints: tuple[str, ...]
    port: str | None
    channel_serial: str | None
    lan: bool

    @classmethod
    def of(cls, device: Device, memo: _Memo | None = None, *, channel: bool = True) -> ReadingKeys:
        """The keys of ``device`` (as :func:`serial_key`, :func:`macs_of`, :func:`names_of`,
        :func:`endpoints_of` and :func:`port_key` give them, in one pass: a site's merge reads
        every reading once); ``memo`` spares re-reading the addresses readings share.
        ``channel=False`` leaves out the channel key (no other reading has the channel)."""
        memo = {} if memo is None else memo
        attributes = device.attributes
        serial = serial_key(device)
        lan = is_lan(device)
        names: frozenset[str] = _NO_NAMES
        endpoints: tuple[str, ...] = ()
        port = None
        if lan:
            names = frozenset(_names(device, memo)) or _NO_NAMES
            endpoints = tuple(_endpoints(device, memo))
        else:  # a USB unit is also where it is: its port and ids
            port = transport_identity(device.transport, device.address, device.vendor_id, device.product_id)
        channel_serial = None
        if serial is not None and channel:
            # A channel is its source and address, and for a host its names too: two hosts
            # behind one address are two channels.
            channel_serial = (
                f"{source_of(device)}\x00{device.address}\x00{','.join(sorted(names))}\x00{serial}"
            )
        macs = () if attributes.keys().isdisjoint(_MAC_NAMES) else tuple(macs_of(device))
        return cls(serial, macs, names, endpoints, port, channel_serial, lan)


_NO_NAMES: frozenset[str] = frozenset()


class _Groups:
    """Union-find over reading indexes; each set knows its serial key and host names, and a
    join that would put two serials (or, through an address, two named hosts) in one set is
    refused."""

    def __init__(self, keys: Sequence[ReadingKeys]) -> None:
        self.parent = list(range(len(keys)))
        self.serial: list[str | None] = [k.serial for k in keys]
        self.names: list[frozenset[str]] = [k.names for k in keys]

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def compatible(self, a: int, b: int, *, by_address: bool = False) -> bool:
        sa, sb = self.serial[a], self.serial[b]
        if sa is not None and sb is not None and sa != sb:
            return False
        return not (by_address and self.names[a] and self.names[b] and not (self.names[a] & self.names[b]))

    def union(self, a: int, b: int, *, by_address: bool = False) -> bool:
        a, b = self.find(a), self.find(b)
        if a == b:
            return True
        if not self.compatible(a, b, by_address=by_address):
            return False
        if b < a:
            a, b = b, a
        self.parent[b] = a
        self.serial[a] = self.serial[a] or self.serial[b]
        if self.names[b]:
            self.names[a] = self.names[a] | self.names[b]
        return True

    def anchored(self, root: int) -> bool:
        return self.serial[root] is not None or bool(self.names[root])


def _index(keys: Sequence[Iterable[str]], fresh: Sequence[bool], skip: set[str]) -> list[list[int]]:
    """The readings that share each key, for the keys two or more readings share and at least
    one fresh reading has (only what a scan read links units the store kept apart), keys in
    sorted order."""
    index: dict[str, list[int]] = {}
    for i, found in enumerate(keys):
        for key in found:
            index.setdefault(key, []).append(i)
    shared = sorted(key for key, members in index.items() if len(members) > 1 and key not in skip)
    return [index[key] for key in shared if any(fresh[i] for i in index[key])]


def _shared_keys(
    keys: Sequence[ReadingKeys], fresh: Sequence[bool], contested: set[str]
) -> tuple[list[list[int]], ...]:
    """For each kind of key (serial, channel and serial, MAC, host name, address, USB port):
    the readings that share one, as :func:`_index` gives them, in one pass over the keys."""
    index: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {}, {}, {})
    serials, channels, macs, names, addresses, ports = index
    for i, k in enumerate(keys):
        if k.serial is not None:
            serials.setdefault(k.serial, []).append(i)
        if k.channel_serial is not None:
            channels.setdefault(k.channel_serial, []).append(i)
        for key in k.macs:
            macs.setdefault(key, []).append(i)
        for key in k.names:
            names.setdefault(key, []).append(i)
        for key in k.endpoints:
            addresses.setdefault(key, []).append(i)
        if k.port is not None:
            ports.setdefault(k.port, []).append(i)
    return tuple(
        [
            found[key]
            for key in sorted(key for key, members in found.items() if len(members) > 1)
            if not (n == 0 and key in contested) and any(fresh[i] for i in found[key])
        ]
        for n, found in enumerate(index)
    )


def _canonical(reading: Reading, keys: ReadingKeys) -> tuple[str, ...]:
    """A sort key of a reading by its content, so that where a join is refused the outcome
    does not depend on the order the readings came in."""
    d = reading.device
    return (
        source_of(d),
        d.address,
        keys.serial or "",
        d.product,
        d.firmware or "",
        ",".join(sorted(keys.names)),
        reading.unit or "",
        d.last_seen.isoformat(),
    )


def contested_serials(readings: Sequence[Reading], keys: Sequence[ReadingKeys] | None = None) -> set[str]:
    """Serial keys one source puts on two hosts (LAN hosts whose names and addresses share
    nothing, or two USB ports): in one run (the scan's own readings, or remembered ones read
    at one time), or as two units the store already keeps apart (a conflict stays one while
    either host is remembered, so one missed announcement does not merge them)."""
    keys = keys if keys is not None else [ReadingKeys.of(r.device) for r in readings]
    buckets: dict[tuple[str, str], list[int]] = {}
    for i, (reading, key) in enumerate(zip(readings, keys, strict=True)):
        if key.serial is not None and not reading.expired:
            buckets.setdefault((reading.source, key.serial), []).append(i)
    contested = set()
    for (_, serial), members in buckets.items():
        if len(members) < 2:
            continue
        runs: dict[object, list[ReadingKeys]] = {}
        for i in members:
            runs.setdefault("now" if readings[i].fresh else readings[i].stamp, []).append(keys[i])
        stored = [i for i in members if readings[i].unit is not None]
        if any(len(found) > 1 and _hosts(found) > 1 for found in runs.values()) or (
            len({readings[i].unit for i in stored}) > 1 and _hosts([keys[i] for i in stored]) > 1
        ):
            contested.add(serial)
    return contested


def _hosts(keys: Sequence[ReadingKeys]) -> int:
    """How many hosts readings stand on: linked by a shared name, a USB port, or a shared
    address unless both have names and none in common (two named hosts behind one address)."""
    hosts = _Groups([replace(k, serial=None) for k in keys])
    every = [True] * len(keys)
    for members in _index([[*k.names, *([k.port] if k.port else [])] for k in keys], every, set()):
        for i in members[1:]:
            hosts.union(members[0], i)
    for members in _index([k.endpoints for k in keys], every, set()):
        for i in members[1:]:
            hosts.union(members[0], i, by_address=True)
    return len({hosts.find(i) for i in range(len(keys))})


def reading_keys(readings: Sequence[Reading]) -> list[ReadingKeys]:
    """The grouping keys of each reading (texts the readings share are read once)."""
    memo: _Memo = {}
    channels = Counter(r.channel for r in readings)
    return [ReadingKeys.of(r.device, memo, channel=channels[r.channel] > 1) for r in readings]


def key_strings(keys: ReadingKeys) -> frozenset[str]:
    """Every key of a reading as one set of strings, each kind apart: what a reading of
    another unit must share with it to join it (or to contest its serial). The channel key
    is left out: a reading that shares it shares the serial too."""
    found = {f"m{mac}" for mac in keys.macs} | {f"n{name}" for name in keys.names}
    found |= {f"e{endpoint}" for endpoint in keys.endpoints}
    for kind, key in (("s", keys.serial), ("p", keys.port)):
        if key is not None:
            found.add(kind + key)
    return frozenset(found)


def group_readings(readings: Sequence[Reading], keys: Sequence[ReadingKeys] | None = None) -> list[list[int]]:
    """The readings of each unit (indexes into ``readings``), units in the order of their
    first reading; see the module's rules. ``keys``: :func:`reading_keys` of ``readings``,
    when the caller has them."""
    keys = reading_keys(readings) if keys is None else keys
    groups = _Groups(keys)
    by_unit: dict[str, int] = {}
    for i, reading in enumerate(readings):
        if reading.unit is not None:
            groups.union(by_unit.setdefault(reading.unit, i), i)
    contested = contested_serials(readings, keys)
    fresh = [r.fresh for r in readings]
    serials, channels, macs, names, addresses, ports = _shared_keys(keys, fresh, contested)
    # One channel telling one serial again is the same unit, contested or not.
    joins = [serials, channels, macs, names]
    by_address = addresses
    canonical: dict[int, tuple[str, ...]] = {}

    def order(i: int) -> tuple[str, ...]:
        if i not in canonical:
            canonical[i] = _canonical(readings[i], keys[i])
        return canonical[i]

    find = groups.find
    for n, shared in enumerate(joins):
        for members in shared:
            roots = {find(i) for i in members}
            if len(roots) == 1:
                continue  # one unit already
            # Serial joins are never refused; elsewhere the order decides what a refusal keeps.
            if n > 1 and len({groups.serial[r] for r in roots} - {None}) > 1:
                members.sort(key=order)
            for i in members[1:]:
                groups.union(members[0], i)
    for members in by_address:
        roots = {find(i) for i in members}
        if len(roots) == 1:
            continue
        if sum(groups.anchored(r) for r in roots) > 1:
            members.sort(key=order)
        _join_by_address(groups, members)
    for members in ports:
        for i in members[1:]:
            groups.union(members[0], i)
    units: dict[int, list[int]] = {}
    for i in range(len(readings)):
        units.setdefault(groups.find(i), []).append(i)
    return list(units.values())


def _join_by_address(groups: _Groups, members: Sequence[int]) -> None:
    """Readings at one address are one host when that is unambiguous: the sets that have a
    serial or a name join where they can; what has neither joins them only if they end up
    one set."""
    roots = list(dict.fromkeys(groups.find(i) for i in members))
    anchors = [r for r in roots if groups.anchored(r)]
    floaters = [r for r in roots if not groups.anchored(r)]
    for other in anchors[1:]:
        groups.union(anchors[0], other, by_address=True)
    anchor_roots = {groups.find(r) for r in anchors}
    target = next(iter(anchor_roots)) if len(anchor_roots) == 1 else None
    if target is None and floaters:
        target = floaters[0]
    for floater in floaters:
        if target is not None:
            groups.union(target, floater, by_address=True)


# --------------------------------------------------------------------------- merging


def _fact(reading: Reading, value: str | None, collector: str | None) -> FactSource:
    d = reading.device
    return FactSource(
        value, reading.source, d.transport, d.address, collector or reading.collector, d.last_seen
    )


def _order(reading: Reading, collector: str | None) -> tuple[int, bool, float, str, str]:
    """Sort key of a reading for one fact: trust, then standing before missed, then newest."""
    return (
        reading.rank if collector is None else trust_rank(collector),
        not reading.standing,
        -reading.stamp,
        reading.source,
        reading.device.address,
    )


def seen_by_of(reading: Reading) -> SeenBy:
    d = reading.device
    serial_source = d.serial_source or None
    return SeenBy(
        reading.source,
        d.transport,
        d.address,
        serial_source,
        d.last_seen,
        reading.collector,
        reading.missed,
    )


def merge_group(readings: Sequence[Reading], rules: MergeRules = MergeRules()) -> Device:
    """One device from the readings of one unit (see the module's rules). The readings are
    not changed."""
    ordered = sorted(readings, key=lambda r: _order(r, None))
    best = ordered[0]
    if len(readings) == 1:
        device = best.device.clone()
        device.seen_by = [seen_by_of(best)]
        device.provenance = _provenance_of_one(best)
        device.disagreements = []
        _read_through(device.children, best)
        return device
    # Every container of the unit is built below from its readings: none of best's is kept.
    device = best.device.shallow_copy()
    device.health_issues = []
    device.children = [c.clone() for c in best.device.children]
    _merge_attributes(device, ordered)
    _take_product(device, ordered, rules, _take_serial(device, ordered))
    _take_firmware(device, ordered)
    standing = [r for r in ordered if r.standing] or ordered
    device.health_issues = _union_issues(r.device.health_issues for r in standing)
    device.first_seen = _earliest([r.device.first_seen for r in readings])
    device.last_seen = max(readings, key=_stamp).device.last_seen
    device.sources = list(dict.fromkeys(r.source for r in ordered))
    device.seen_by = [seen_by_of(r) for r in ordered]
    device.provenance["address"] = _fact(best, best.device.address, None)
    device.disagreements = (
        _disagreements(_latest_per_source(ordered), device, rules) if _may_disagree(ordered) else []
    )
    for disagreement in device.disagreements:
        issue = _disagreement_issue(disagreement)
        if issue is not None and issue not in device.health_issues:
            device.health_issues.append(issue)
    if device.health_issues:
        device.provenance["health"] = _fact(_worst(standing), str(device.health), None)
    else:
        device.provenance["health"] = _fact(best, HealthState.OK, None)
    _place(device, next((r.device.room for r in standing if r.device.room is not None), None))
    return device


def _read_through(children: list[Device], parent: Reading) -> None:
    """A unit read through another (a bar's Sight and mic pods over the bar's Sync
    interface) was seen by its parent's channel, at its own address."""
    for child in children:
        serial_source = child.serial_source or None
        child.seen_by = [
            SeenBy(
                parent.source,
                child.transport,
                child.address,
                serial_source,
                child.last_seen,
                parent.collector,
            )
        ]
        _read_through(child.children, parent)


def _stamp(reading: Reading) -> float:
    return reading.stamp


def _earliest(moments: list[datetime]) -> datetime:
    try:
        return min(moments)
    except TypeError:  # naive and aware times: a naive one is UTC
        return min(moments, key=as_utc)


def _place(device: Device, room: str | None) -> None:
    device.room = room
    for child in device.children:
        _place(child, room)


def _may_disagree(ordered: Sequence[Reading]) -> bool:
    """Whether the readings could disagree at all: they remember other values, or say
    different firmware, products or serials."""
    first = ordered[0].device
    return any(
        r.recent
        or r.device.firmware != first.firmware
        or r.device.product != first.product
        or r.device.serial != first.serial
        for r in ordered
    )


def _latest_per_source(ordered: Sequence[Reading]) -> list[Reading]:
    """Each source's standing readings (all of them where it has none standing): a sighting
    its own source has since seen elsewhere (a unit moved to another port) is stale, not
    another channel's opinion."""
    standing_sources = {r.source for r in ordered if r.standing}
    return [r for r in ordered if r.standing or r.source not in standing_sources]


def _provenance_of_one(reading: Reading) -> dict[str, FactSource]:
    d = reading.device
    found = {"address": _fact(reading, d.address, None), "health": _fact(reading, str(d.health), None)}
    if d.serial is not None:
        found["serial"] = _fact(reading, d.serial, str(d.serial_source) if d.serial_source else None)
    if d.model is not None or d.category != OTHER:
        found["model"] = _fact(reading, d.model or d.product, None)
    if d.firmware is not None:
        found["firmware"] = _fact(reading, d.firmware, firmware_collector(d))
    return found


def _merge_attributes(device: Device, ordered: Sequence[Reading]) -> None:
    """Attributes and components of every channel, the more trusted one's on top; children
    from the most trusted channel that has any."""
    attributes: dict[str, object] = {}
    components: dict[str, str] = {}
    for reading in reversed(ordered):
        attributes.update(reading.device.attributes)
        components.update(reading.device.components)
    device.attributes = attributes
    device.components = components
    with_children = next((r for r in ordered if r.device.children), None)
    if with_children is not ordered[0]:  # the device is a copy of ordered[0]'s, children too
        device.children = [c.clone() for c in with_children.device.children] if with_children else []
    if with_children is not None:
        _read_through(device.children, with_children)
    for field_name in ("vendor", "vendor_id", "product_id", "state"):
        if getattr(device, field_name) is None:
            for reading in ordered:
                value = getattr(reading.device, field_name)
                if value is not None:
                    setattr(device, field_name, value)
                    break
    device.provenance = {}


def _take_serial(device: Device, ordered: Sequence[Reading]) -> Reading | None:
    """The serial from the most trustworthy channel, a label-grade one first; the reading
    it came from."""
    # ``ordered`` is by channel (trust, standing, newest): within a rank of the collector
    # that read the serial, the channel's order decides.
    candidates = [
        (not r.device.serial_label_grade, trust_rank(r.device.serial_source), i, r)
        for i, r in enumerate(ordered)
        if r.device.serial
    ]
    if not candidates:
        return None
    winner = min(candidates)[3]
    d = winner.device
    device.serial, device.serial_source, device.serial_label_grade = (
        d.serial,
        d.serial_source,
        d.serial_label_grade,
    )
    device.provenance["serial"] = _fact(winner, d.serial, _serial_collector(d))
    return winner


def _serial_collector(device: Device) -> str | None:
    return str(device.serial_source) if device.serial_source else None


def _named(reading: Reading, rules: MergeRules) -> int:
    """0 for a catalog product with a name of its own, 1 for a family's fallback, 2 for none."""
    d = reading.device
    if d.category == OTHER:
        return 2
    return 1 if d.product in rules.generic_products else 0


def _take_product(
    device: Device, ordered: Sequence[Reading], rules: MergeRules, serial: Reading | None
) -> None:
    """The product from the most trustworthy channel that names one, within the family of
    the unit's label-grade serial (a reading joined by its host alone may name another)."""
    product = ordered[0].device.product
    if all(r.device.product == product for r in ordered):
        winner = ordered[0]  # one product: the most trusted channel names it
    else:
        if serial is not None and serial.device.serial_label_grade:
            family = family_of(serial.device)
            ordered = [r for r in ordered if family_of(r.device) == family] or ordered
        winner = min(ordered, key=lambda r: (_named(r, rules), *_order(r, None)))
    d = winner.device
    device.product, device.category = d.product, d.category
    device.model = d.model or next((r.device.model for r in ordered if r.device.model), None)
    device.provenance["model"] = _fact(winner, device.model or d.product, None)


def _take_firmware(device: Device, ordered: Sequence[Reading]) -> None:
    candidates = [
        (trust_rank(firmware_collector(r.device)), i, r) for i, r in enumerate(ordered) if r.device.firmware
    ]
    if not candidates:
        device.firmware = device.firmware_source = None
        return
    winner = min(candidates)[2]
    d = winner.device
    device.firmware, device.firmware_source = d.firmware, d.firmware_source
    device.provenance["firmware"] = _fact(winner, d.firmware, firmware_collector(d))


def _union_issues(lists: Iterable[Iterable[HealthIssue]]) -> list[HealthIssue]:
    found: dict[HealthIssue, None] = {}
    for issues in lists:
        for issue in issues:
            found.setdefault(issue)
    return list(found)


def _worst(readings: Sequence[Reading]) -> Reading:
    return min(readings, key=lambda r: (-max((i.severity.rank for i in r.device.health_issues), default=-1),))


@functools.lru_cache(maxsize=4096)
def normalize_version(text: str) -> str:
    """The form versions are compared in across channels: case and separators aside, and
    numbers without leading zeros (``V1.09.556`` and ``1.9.556`` agree)."""
    parts = re.findall(r"[0-9]+|[a-z]+", text.casefold())
    if parts and parts[0] == "v" and len(parts) > 1 and parts[1].isdigit():
        parts = parts[1:]
    return ".".join(str(int(p)) if p.isdigit() else p for p in parts)


def recent_values(reading: Reading, fact: str) -> tuple[str, ...]:
    """What the channel says of ``fact`` now, then what it said in its remembered runs."""
    remembered = sorted(reading.recent.get(fact, {}).items(), key=lambda item: (item[1], item[0]))
    return tuple(dict.fromkeys([*current_values(reading.device, fact), *(v for v, _ in remembered)]))


def remember(
    old: Reading, new: Device, runs: int, shown: Mapping[str, str | None] | None = None
) -> dict[str, dict[str, int]]:
    """``recent`` of a channel's new reading ``new``, from its previous one ``old``: the values
    ``old`` gave that disagreed with what the unit showed then (``shown``: its firmware and
    product), and those it remembered, a run older, as long as they are younger than ``runs``
    and not what ``new`` says. A value every channel moved on from together (an upgrade) is
    no disagreement and is not remembered."""
    shown = shown or {}
    recent: dict[str, dict[str, int]] = {}
    for fact in REMEMBERED_FACTS:
        ages = {value: age + 1 for value, age in old.recent.get(fact, {}).items()}
        ages.update(
            {value: 1 for value in current_values(old.device, fact) if _differs(fact, value, shown.get(fact))}
        )
        now = current_values(new, fact)
        kept = {value: age for value, age in ages.items() if age < runs and value not in now}
        if kept:
            recent[fact] = kept
    return recent


def _differs(fact: str, value: str, shown: str | None) -> bool:
    if shown is None:
        return False
    if fact == "firmware":
        return normalize_version(value) != normalize_version(shown)
    return value != shown


def _current(device: Device, fact: str) -> str | None:
    if fact == "firmware":
        return device.firmware
    if fact == "product":
        return device.product if device.category != OTHER else None
    raise ValueError(fact)


def current_values(device: Device, fact: str) -> list[str]:
    """What ``device`` says of one of :data:`REMEMBERED_FACTS` (nothing, or one value)."""
    value = _current(device, fact)
    return [] if value is None else [value]


def _disagreements(ordered: Sequence[Reading], device: Device, rules: MergeRules) -> list[Disagreement]:
    remembered = any(r.recent for r in ordered)
    found = []
    if remembered or len({r.device.firmware for r in ordered if r.device.firmware}) > 1:
        found.append(_firmware_disagreement(ordered, device))
    if remembered or len({r.device.product for r in ordered}) > 1:
        found.append(_model_disagreement(ordered, device, rules))
    said = {r.device.serial for r in ordered if r.device.serial}
    serials = (
        {normalize_serial(r.device.serial): r for r in reversed(ordered) if r.device.serial}
        if len(said) > 1
        else {}
    )
    winner = device.provenance.get("serial")
    if len(serials) > 1 and winner is not None:
        others = [
            _fact(r, r.device.serial, _serial_collector(r.device))
            for key, r in sorted(serials.items())
            if key != normalize_serial(winner.value or "")
        ]
        found.append(Disagreement("serial", (winner, *others)))
    return [d for d in found if d is not None]


def _firmware_disagreement(ordered: Sequence[Reading], device: Device) -> Disagreement | None:
    winner = device.provenance.get("firmware")
    if winner is None or winner.value is None:
        return None
    shown = normalize_version(winner.value)
    others: dict[str, FactSource] = {}
    for reading in ordered:
        for value in recent_values(reading, "firmware"):
            key = normalize_version(value)
            if key != shown and key not in others:
                others[key] = _fact(reading, value, firmware_collector(reading.device))
    return Disagreement("firmware", (winner, *others.values())) if others else None


def _model_disagreement(ordered: Sequence[Reading], device: Device, rules: MergeRules) -> Disagreement | None:
    """Channels that name two catalog products (a family's fallback name never disagrees)."""
    winner = device.provenance.get("model")
    if winner is None or device.category == OTHER or device.product in rules.generic_products:
        return None
    others: dict[str, FactSource] = {}
    for reading in ordered:
        for value in recent_values(reading, "product"):
            if value != device.product and value not in rules.generic_products and value not in others:
                others[value] = _fact(reading, value, None)
    return Disagreement("model", (_with_value(winner, device.product), *others.values())) if others else None


def _with_value(source: FactSource, value: str) -> FactSource:
    return FactSource(value, source.source, source.transport, source.address, source.collector, source.at)


def _disagreement_issue(disagreement: Disagreement) -> HealthIssue | None:
    if disagreement.fact not in ("firmware", "model"):
        return None
    code = FIRMWARE_DISAGREEMENT if disagreement.fact == "firmware" else MODEL_DISAGREEMENT
    head, *others = disagreement.values
    said = "; ".join(f"{o.collector} ({o.transport} {o.address}) says {o.value}" for o in others)
    return HealthIssue(
        code,
        f"channels disagree on the {disagreement.fact}: {head.collector} ({head.transport} "
        f"{head.address}) says {head.value}, which is shown; {said}",
        Severity.WARNING,
    )


def one_per_channel(kept: list[Reading]) -> list[Reading]:
    """A unit keeps one reading per channel (source and address): the freshest of a channel
    that reported the unit twice in one run (two hosts behind one address that nothing
    tells apart), so that every channel is one sighting."""
    if len(kept) < 2 or len({r.channel for r in kept}) == len(kept):
        return kept
    best: dict[tuple[str, str], Reading] = {}
    for reading in kept:
        held = best.get(reading.channel)
        if held is None or (reading.missed, -reading.stamp) < (held.missed, -held.stamp):
            best[reading.channel] = reading
    return kept if len(best) == len(kept) else [r for r in kept if best[r.channel] is r]


# --------------------------------------------------------------------------- one scan


def merge_readings(readings: Sequence[Device], rules: MergeRules = MergeRules()) -> list[Device]:
    """The units of one scan: its readings (one device per channel) grouped and merged. A
    unit whose derived identity another unit of the scan already has (two hosts claiming
    one serial) is given one of its own (:func:`unique_identity`)."""
    with paused_gc():
        pool = [Reading(device) for device in readings]
        groups = group_readings(pool)
        merged = [merge_group(one_per_channel([pool[i] for i in group]), rules) for group in groups]
        derived = [d.derived_identity for d in merged]
        counts = Counter(derived)

        def order(i: int) -> tuple[bool, tuple[str, ...], int]:
            # Units that would share an identity (a contested serial) get theirs last, in
            # content order: the same way whatever the input's order.
            if counts[derived[i]] == 1:
                return (False, (), i)
            return (True, content_order([pool[j] for j in groups[i]]), i)

        taken: set[str] = set()
        for i in sorted(range(len(merged)), key=order):
            identity = unique_identity(merged[i], taken.__contains__)
            if identity != derived[i]:
                merged[i].assigned_identity = identity
            taken.add(identity)
    return merged


def unique_identity(device: Device, taken: Callable[[str], bool]) -> str:
    """The identity a new unit gets: its derived one, else (``taken`` by another unit: a
    contested serial) where its most trusted channel saw it, numbered if need be."""
    identity = device.derived_identity
    if not taken(identity):
        return identity
    identity = transport_identity(device.transport, device.address, device.vendor_id, device.product_id)
    candidate, n = identity, 2
    while taken(candidate):
        candidate, n = f"{identity}#{n}", n + 1
    return candidate


def content_order(readings: Sequence[Reading]) -> tuple[str, ...]:
    """A sort key of a unit by what its readings say (not the order they came in): units
    that compete for one identity get theirs the same way whatever the input's order."""
    return min(_canonical(r, ReadingKeys.of(r.device)) for r in readings)
