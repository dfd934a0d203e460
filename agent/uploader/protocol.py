"""The portal protocol: what the agent sends to ``POST {portal}/v1/inventory`` and
``POST {portal}/v1/events``, as pydantic models, with the builders that make messages from
the inventory and the JSON Schemas that ``docs/portal-api.md`` embeds (kept current by
``python -m tools.portal_schemas``, a developer tool of the checkout).

Pure: nothing here reads the clock, a file or the network. Delivery (headers, retries, the
outbox) is elsewhere; ``docs/portal-api.md`` is the contract both sides keep.

The models forbid unknown fields and are strict (``"5"`` is not a sequence number), so a
portal that validates with them — the test stand-in does — catches a malformed message. Read
wire data with :func:`parse_message` or ``Model.model_validate_json`` (strict validation of a
Python ``dict`` wants Python types: ``datetime``, enums, ``UUID``).

Decisions (also in ``docs/portal-api.md``)
------------------------------------------
* **status** (Sync's ``Offline``/``Online``/``InUse``) and **health** (``NoIssues``/
  ``Warning``/``Error``/``Unknown``) describe the *latest scan*. A unit the latest scan did not
  see is ``Offline`` with health ``Unknown``: what it last reported is stale. A unit it saw is
  its reported state mapped to Sync's words (:data:`SYNC_STATUS`: ``in-use`` → ``InUse``,
  ``offline`` → ``Offline``, ``online``/``idle``/``audio-only``/``enumerating`` → ``Online``),
  else ``Online``; its health is :attr:`Device.health` mapped by :data:`SYNC_HEALTH`. "Seen by
  the latest scan" is ``last_seen >= last_scan``; a caller whose sources run on different
  schedules passes its own ``seen`` rule instead.
* **places** are the rooms of the report in its order (by room id); a place's **devices** are
  the room's units in the order of :attr:`RoomSummary.devices` (systems first, then standalone
  units), each followed by the units read through it (``parent`` = that unit's identity).
  **unassigned** lists units placed in no room the same way.
* **coverage** is ``null`` when no verdict is known for the unit (coverage not evaluated, or
  no serial); verdicts are looked up by serial in the form entitlements use
  (:func:`agent.sanitize.normalize_serial`).
* Every time is sent in UTC (``…Z``); a naive time is taken to be UTC already.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from functools import cache
from types import UnionType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from agent.coverage import Status, Verdict
from agent.events import EventType  # the store's words are the wire's words
from agent.inventory import RoomsReport
from agent.model import (
    Device,
    HealthState,
    SerialSource,
    Severity,
    Transport,
    as_utc,
)
from agent.sanitize import normalize_serial
from agent.support import SiteSupport, Support
from agent.systems import RoomSummary, units

__all__ = [
    "ENDPOINTS",
    "GZIP_LEVEL",
    "JSON_SCHEMA_DIALECT",
    "MAX_EVENTS_PER_MESSAGE",
    "MODELS",
    "SCHEMA_EVENTS",
    "SCHEMA_INVENTORY",
    "SYNC_HEALTH",
    "SYNC_STATUS",
    "AgentInfo",
    "CoverageOut",
    "DeviceOut",
    "EventOut",
    "EventType",
    "EventsMessage",
    "HealthIssueOut",
    "InventoryMessage",
    "Message",
    "PeripheralCount",
    "Place",
    "change_event_out",
    "device_out",
    "event_out",
    "events_message",
    "gzip_body",
    "health_out",
    "inventory_body",
    "inventory_chunks",
    "inventory_message",
    "json_schemas",
    "parse_message",
    "serialize",
    "status_out",
]

SCHEMA_INVENTORY: Final = "roomsync.inventory.v1"
SCHEMA_EVENTS: Final = "roomsync.events.v1"
#: The most events one ``roomsync.events.v1`` message may carry; the outbox batches by it.
MAX_EVENTS_PER_MESSAGE = 1000
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

SyncStatus = Literal["Online", "Offline", "InUse"]
SyncHealth = Literal["NoIssues", "Warning", "Error", "Unknown"]

#: A unit's reported state (``Device.state``, the words of the Sync interface's ``status``)
#: to Sync's device status. A state not listed (``unknown``, none) counts as ``Online`` for a
#: unit the latest scan saw.
SYNC_STATUS: Mapping[str, SyncStatus] = {
    "online": "Online",
    "idle": "Online",
    "audio-only": "Online",
    "enumerating": "Online",
    "in-use": "InUse",
    "offline": "Offline",
}
#: A unit's health to Sync's ``healthStatus`` (plus ``Unknown``, which Sync lacks).
SYNC_HEALTH: Mapping[HealthState, SyncHealth] = {
    HealthState.OK: "NoIssues",
    HealthState.WARNING: "Warning",
    HealthState.ERROR: "Error",
    HealthState.UNKNOWN: "Unknown",
}
#: Attributes that carry a unit's host name, by source (mDNS, SSH room PC, SNMP sysName).
_HOST_NAME_ATTRIBUTES = ("host", "hostname", "sys_name")


# --------------------------------------------------------------------------- models


class _Wire(BaseModel):
    """A part of a message on the wire: no unknown fields, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentInfo(_Wire):
    """Which agent sent the message."""

    id: str = Field(min_length=1, max_length=200, description="The agent's stable id.")
    version: str = Field(min_length=1, max_length=100, description="roomsync's version.")
    hostname: str = Field(min_length=1, max_length=253, description="The agent host's name.")


class CoverageOut(_Wire):
    """A unit's warranty / service coverage on the day it was evaluated (Sync: warranty)."""

    status: Status
    covered_until: date | None = Field(description="The last covered day, if any.")
    flags: list[str] = Field(description="Why a layer is missing or uncertain (sorted).")


SupportRoute = Literal[
    "reseller", "logitech-select", "logitech-jumpstart", "logitech-support", "distributor-rma"
]


class ContactOut(_Wire):
    """A desk: a name, and a URL or a phone number."""

    name: str
    url: str | None
    phone: str | None


class SupportOut(_Wire):
    """What to do when the unit fails (docs/support.md: the rules, with the ids of domain.md)."""

    route: SupportRoute | None = Field(description="The desk to call; null when two are candidates (routes).")
    routes: list[SupportRoute] = Field(
        description="The candidate routes: one, or two for a Tap bundle in a room of unknown platform."
    )
    ticket_serial: str | None = Field(description="The serial to quote; null: read it from the label.")
    contact: ContactOut | None = Field(description="The desk of route; null when two are candidates.")
    contacts: list[ContactOut] = Field(description="The desk of each of routes.")
    priority: Literal["critical", "degraded", "request"] | None = Field(
        description="A reseller contract's priority, by the unit's health (H2)."
    )
    hours: str | None = Field(description="When the desk answers (24x7, 8x5…).")
    response: str | None = Field(description="First response within.")
    updates: str | None = Field(description="Updates every.")
    replacement: str | None = Field(description="Replacement within, when the contract says.")
    contract: str | None = Field(description="The reseller contract number to quote (P3).")
    room: str | None = Field(description="The licensed room a SELECT ticket names (S12).")
    platform: str | None = Field(description="The room's meeting platform as the rules took it.")
    steps: list[str] = Field(description="What an administrator does, in order.")
    flags: list[str] = Field(description="not-covered, coverage-unknown, platform-unknown… (sorted).")
    rules: list[str] = Field(description="The ids of the rules applied (domain.md).")


class HealthIssueOut(_Wire):
    """One thing worth telling an operator about a unit."""

    code: str = Field(description="Stable machine-readable word, e.g. peripheral-missing.")
    severity: Severity
    message: str = Field(description="For people.")


class PeripheralCount(_Wire):
    """How many peripherals of one kind a unit expects and has (Sync: peripherals.*.count)."""

    expected: int = Field(ge=0)
    actual: int = Field(ge=0)


class SeenByOut(_Wire):
    """One channel that reported a unit (docs/identity.md)."""

    source: str = Field(description="The agent's source: usb, mdns, snmp, ssh, replay…")
    transport: str = Field(description="How it reached the unit: usb, mdns, snmp, ssh…")
    address: str = Field(description="Where that channel reached it: USB port path, IP[:port], host.")
    serial_source: str | None = Field(description="Which collector read the serial this channel gave.")
    last_seen: AwareDatetime = Field(description="When this channel last reported the unit.")
    collector: str = Field(description="The collector whose reading this channel is (trust order).")
    missed: int = Field(ge=0, description="Runs of its source in a row that have not seen it since.")


class DeviceOut(_Wire):
    """One unit: the facts Sync shows per device, and where each serial came from."""

    identity: str = Field(
        description=(
            "Stable key of the agent's record of the unit: product + label-grade serial, else "
            "where seen, given when first seen and kept while its channels come and go."
        )
    )
    identity_kind: Literal["serial", "transport"]
    parent: str | None = Field(description="Identity of the unit this one was read through.")
    serial: str | None
    serial_source: SerialSource | None
    serial_label_grade: bool = Field(description="True when the serial is the one on the label.")
    product: str
    category: str = Field(description="Catalog family (collabos-bar, room-pc…), or other.")
    model: str | None
    vendor: str | None
    firmware: str | None
    components: dict[str, str] = Field(description="Component firmware versions by component.")
    transport: Transport
    address: str = Field(description="Where the agent reached it: USB port path, IP[:port], host.")
    host_name: str | None = Field(description="Host name when a source reported one.")
    status: SyncStatus = Field(description="Sync's device status, as of the latest scan.")
    state: str | None = Field(description="The state the unit itself reported, when it did.")
    health: SyncHealth = Field(description="Sync's healthStatus, as of the latest scan.")
    health_issues: list[HealthIssueOut]
    peripherals: dict[str, PeripheralCount] = Field(description="Expected and actual peripherals.")
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    coverage: CoverageOut | None = Field(description="null when no verdict is known.")
    support: SupportOut | None = Field(
        default=None,
        description=(
            "What to do when the unit fails (docs/support.md); null, or absent in a snapshot an "
            "earlier agent queued, when not worked out."
        ),
    )
    seen_by: list[SeenByOut] = Field(
        default_factory=list,
        description=(
            "Every channel of this agent that reported the unit, most trusted first; a portal "
            "merges the views of several agents by the rules of docs/identity.md."
        ),
    )


class Place(_Wire):
    """A room (Sync: a place of type Room) and its units."""

    id: str = Field(min_length=1)
    name: str | None
    group: str | None
    location: str | None
    seat_count: int | None = Field(ge=0)
    primary_unit: str | None = Field(description="Label-grade serial of the primary unit (P1).")
    primary_product: str | None
    ticket_serial: str | None = Field(description="Label-grade serial support tickets quote (P2).")
    ticket_product: str | None
    flags: list[str] = Field(description="Room flags (key-device-unregistered…), sorted.")
    devices: list[DeviceOut]


class InventoryMessage(_Wire):
    """``POST /v1/inventory``: the whole inventory, one snapshot."""

    schema_: Literal["roomsync.inventory.v1"] = Field(alias="schema")
    agent: AgentInfo
    sequence: int = Field(ge=1, description="Per agent, increasing; a higher one supersedes.")
    generated_at: AwareDatetime
    places: list[Place]
    unassigned: list[DeviceOut] = Field(description="Units placed in no room.")
    dropped_events: int = Field(
        default=0,
        ge=0,
        description=(
            "Events the agent's bounded outbox dropped, ever; when it grows, events were lost and "
            "this snapshot is the truth."
        ),
    )


class EventOut(_Wire):
    """One change of the inventory."""

    id: UUID = Field(description="Unique per event; the portal de-duplicates by it.")
    type: EventType
    time: AwareDatetime
    identity: str = Field(description="The unit's identity (see DeviceOut.identity).")
    product: str
    serial: str | None
    room: str | None = Field(description="The unit's room after the change (before, if removed).")
    before: dict[str, Any] | None = Field(description="The changed facts before; null if none.")
    after: dict[str, Any] | None = Field(description="The changed facts after; null if none.")


class EventsMessage(_Wire):
    """``POST /v1/events``: changes, oldest first."""

    schema_: Literal["roomsync.events.v1"] = Field(alias="schema")
    agent: AgentInfo
    sequence: int = Field(ge=1, description="Per agent, increasing, shared with inventory.")
    generated_at: AwareDatetime
    events: list[EventOut] = Field(min_length=1, max_length=MAX_EVENTS_PER_MESSAGE)


Message = InventoryMessage | EventsMessage
#: Each schema name to its message model.
MODELS: Mapping[str, type[InventoryMessage] | type[EventsMessage]] = {
    SCHEMA_INVENTORY: InventoryMessage,
    SCHEMA_EVENTS: EventsMessage,
}
#: Each schema name to the path it is posted to, under the portal's base URL.
ENDPOINTS: Mapping[str, str] = {
    SCHEMA_INVENTORY: "/v1/inventory",
    SCHEMA_EVENTS: "/v1/events",
}


# --------------------------------------------------------------------------- builders


def status_out(device: Device, seen: bool) -> SyncStatus:
    """Sync's status of ``device``: ``Offline`` unless the latest scan ``seen`` it; then its
    reported state mapped by :data:`SYNC_STATUS`, ``Online`` when it reported none."""
    if not seen:
        return "Offline"
    return SYNC_STATUS.get(device.state or "", "Online")


def health_out(device: Device, seen: bool) -> SyncHealth:
    """Sync's health of ``device``: ``Unknown`` unless the latest scan ``seen`` it."""
    return SYNC_HEALTH[device.health] if seen else "Unknown"


def coverage_out(verdict: Verdict) -> CoverageOut:
    """The wire form of one coverage verdict."""
    return CoverageOut.model_validate(_coverage_fields(verdict))


def _coverage_fields(verdict: Verdict) -> dict[str, Any]:
    return {"status": verdict.status, "covered_until": verdict.covered_until, "flags": sorted(verdict.flags)}


def _host_name(device: Device) -> str | None:
    """The first host name a source put in the unit's attributes, without a trailing dot."""
    for key in _HOST_NAME_ATTRIBUTES:
        value = device.attributes.get(key)
        if isinstance(value, str) and value.strip(". "):
            return value.strip().rstrip(".")
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _peripherals(device: Device) -> dict[str, dict[str, int]]:
    """``attributes["peripheral_counts"]`` (the Sync interface's counts) as the fields of
    :class:`PeripheralCount`; malformed entries (a hand-edited store) are left out rather
    than refused."""
    raw = device.attributes.get("peripheral_counts")
    if not isinstance(raw, dict):
        return {}
    out = {}
    for group, count in raw.items():
        if not isinstance(group, str) or not isinstance(count, dict):
            continue
        expected, actual = _count(count.get("expected")), _count(count.get("actual"))
        if expected is not None and actual is not None:
            out[group] = {"expected": expected, "actual": actual}
    return out


def device_out(
    device: Device,
    verdict: Verdict | None = None,
    *,
    last_scan: datetime | None = None,
    parent: str | None = None,
    seen: bool | None = None,
    support: Support | None = None,
) -> DeviceOut:
    """The wire form of one unit (its children are not included: list them on their own
    with ``parent`` set). ``last_scan`` is when the latest scan ran: a unit last seen before
    it is ``Offline`` with health ``Unknown``; ``None`` counts the unit as seen. ``seen``,
    when given, decides instead of ``last_scan``. ``support`` is what to do when it fails
    (:func:`agent.support.support_for`)."""
    if seen is None:
        seen = last_scan is None or as_utc(device.last_seen) >= as_utc(last_scan)
    return DeviceOut.model_validate(_device_fields(device, verdict, parent, seen, support))


def _device_fields(
    device: Device, verdict: Verdict | None, parent: str | None, seen: bool, support: Support | None = None
) -> dict[str, Any]:
    """The fields of :class:`DeviceOut` for ``device``, as plain values (Python types: the
    model validates them, strictly, once for a whole place)."""
    return {
        "identity": device.identity,
        "identity_kind": "serial" if device.identity_kind == "serial" else "transport",
        "parent": parent,
        "serial": device.serial,
        "serial_source": device.serial_source,
        "serial_label_grade": device.serial_label_grade,
        "product": device.product,
        "category": device.category,
        "model": device.model,
        "vendor": device.vendor,
        "firmware": device.firmware,
        "components": dict(device.components),
        "transport": device.transport,
        "address": device.address,
        "host_name": _host_name(device),
        "status": status_out(device, seen),
        "state": device.state,
        "health": health_out(device, seen),
        "health_issues": [
            {"code": i.code, "severity": i.severity, "message": i.message} for i in device.health_issues
        ],
        "peripherals": _peripherals(device),
        "first_seen": as_utc(device.first_seen),
        "last_seen": as_utc(device.last_seen),
        "coverage": _coverage_fields(verdict) if verdict is not None else None,
        "support": support.to_dict() if support is not None else None,
        "seen_by": [
            {
                "source": s.source,
                "transport": s.transport,
                "address": s.address,
                "serial_source": s.serial_source,
                "last_seen": as_utc(s.last_seen),
                "collector": s.collector,
                "missed": s.missed,
            }
            for s in device.seen_by
        ],
    }


def _with_parents(flat: Sequence[Device]) -> list[tuple[Device, str | None]]:
    """Each unit of a flattened list (parents before children) with its parent's identity."""
    parents: dict[int, str] = {}
    for device in flat:
        for child in device.children:
            parents[id(child)] = device.identity
    return [(d, parents.get(id(d))) for d in flat]


class _Verdicts:
    """Verdicts looked up by serial in the normalised form entitlements use."""

    def __init__(self, verdicts: Mapping[str, Verdict] | None) -> None:
        self._by_serial = {normalize_serial(k): v for k, v in (verdicts or {}).items()}

    def of(self, device: Device) -> Verdict | None:
        return self._by_serial.get(normalize_serial(device.serial)) if device.serial else None


def _devices_fields(
    flat: Sequence[Device],
    verdicts: _Verdicts,
    last_scan: datetime | None,
    seen: Callable[[Device], bool] | None,
    supports: Mapping[int, Support],
) -> list[dict[str, Any]]:
    scan = as_utc(last_scan) if last_scan is not None else None
    if seen is None:
        seen = lambda device: scan is None or as_utc(device.last_seen) >= scan  # noqa: E731
    return [
        _device_fields(d, verdicts.of(d), parent, seen(d), supports.get(id(d)))
        for d, parent in _with_parents(flat)
    ]


def _latest_seen(report: RoomsReport) -> datetime | None:
    """When the latest scan ran, as far as the report tells: the latest ``last_seen`` of any
    unit (a scan stamps everything it finds with one time)."""
    flat = [d for r in report.rooms for d in r.devices] + list(units(report.unassigned))
    return max((as_utc(d.last_seen) for d in flat), default=None)


class _Inventory:
    """The parts of one ``roomsync.inventory.v1`` message, each validated by its model when
    it is made: the message's own fields, then each place and each unassigned unit in order."""

    def __init__(
        self,
        report: RoomsReport,
        verdicts: Mapping[str, Verdict] | None,
        last_scan: datetime | None,
        seen: Callable[[Device], bool] | None,
        supports: SiteSupport | None,
    ) -> None:
        self.report = report
        self.index = _Verdicts(verdicts)
        self.seen = seen
        self.supports = supports
        # With a ``seen`` rule no time decides: the report is not walked for one.
        self.scan = None if seen is not None else last_scan if last_scan is not None else _latest_seen(report)

    @staticmethod
    def _helped(supports: SiteSupport | None, summary: RoomSummary | None) -> dict[int, Support]:
        """The support of each unit of a room (``None``: of the units in none), by the unit's
        ``id``; empty without the support rules."""
        if supports is None:
            return {}
        pairs = supports.room(summary) if summary is not None else supports.unassigned()
        return {id(device): support for device, support in pairs}

    def places(self) -> Iterator[Place]:
        for fields in self.place_fields():
            yield Place.model_validate(fields)

    def place_fields(self) -> Iterator[dict[str, Any]]:
        """The fields of each :class:`Place`, as plain values (not yet checked)."""
        for summary in self.report.rooms:
            room = self.report.room(summary.room_id)
            yield (
                {
                    "id": summary.room_id,
                    "name": room.name,
                    "group": room.group,
                    "location": room.location,
                    "seat_count": room.seat_count,
                    "primary_unit": summary.primary_unit,
                    "primary_product": summary.primary_product,
                    "ticket_serial": summary.ticket_serial,
                    "ticket_product": summary.ticket_product,
                    "flags": sorted(summary.flags),
                    "devices": _devices_fields(
                        summary.devices,
                        self.index,
                        self.scan,
                        self.seen,
                        self._helped(self.supports, summary),
                    ),
                }
            )

    def unassigned(self) -> Iterator[DeviceOut]:
        for fields in self.unassigned_fields():
            yield DeviceOut.model_validate(fields)

    def unassigned_fields(self) -> list[dict[str, Any]]:
        """The fields of each unassigned unit's :class:`DeviceOut` (not yet checked)."""
        flat = list(units(self.report.unassigned))
        return _devices_fields(flat, self.index, self.scan, self.seen, self._helped(self.supports, None))


def inventory_message(
    agent: AgentInfo,
    sequence: int,
    generated_at: datetime,
    report: RoomsReport,
    verdicts: Mapping[str, Verdict] | None = None,
    *,
    last_scan: datetime | None = None,
    seen: Callable[[Device], bool] | None = None,
    supports: SiteSupport | None = None,
    dropped_events: int = 0,
) -> InventoryMessage:
    """A ``roomsync.inventory.v1`` message: every room summary of ``report`` as a place,
    and its unassigned units. ``verdicts`` are keyed by serial. ``last_scan`` is when the
    latest scan ran (the store's ``last_scan()``); by default the latest ``last_seen`` in the
    report. ``seen`` replaces that rule where one time does not fit (sources on different
    schedules: a unit counts as seen while its sources' latest runs reported it). ``supports``
    (:class:`agent.support.SiteSupport`) is what to do when each unit
    fails, worked out a place at a time; without it every ``support`` is null."""
    parts = _Inventory(report, verdicts, last_scan, seen, supports)
    return InventoryMessage(
        schema=SCHEMA_INVENTORY,
        agent=agent,
        sequence=sequence,
        generated_at=as_utc(generated_at),
        places=list(parts.places()),
        unassigned=list(parts.unassigned()),
        dropped_events=dropped_events,
    )


def inventory_body(
    agent: AgentInfo,
    sequence: int,
    generated_at: datetime,
    report: RoomsReport,
    verdicts: Mapping[str, Verdict] | None = None,
    *,
    last_scan: datetime | None = None,
    seen: Callable[[Device], bool] | None = None,
    supports: SiteSupport | None = None,
    dropped_events: int = 0,
) -> bytes:
    """``serialize(inventory_message(...))`` — the same bytes — without ever holding the
    whole message as models (:func:`inventory_chunks`, joined)."""
    return b"".join(
        inventory_chunks(
            agent,
            sequence,
            generated_at,
            report,
            verdicts,
            last_scan=last_scan,
            seen=seen,
            supports=supports,
            dropped_events=dropped_events,
        )
    )


def inventory_chunks(
    agent: AgentInfo,
    sequence: int,
    generated_at: datetime,
    report: RoomsReport,
    verdicts: Mapping[str, Verdict] | None = None,
    *,
    last_scan: datetime | None = None,
    seen: Callable[[Device], bool] | None = None,
    supports: SiteSupport | None = None,
    dropped_events: int = 0,
) -> Iterator[bytes]:
    """The bytes of ``serialize(inventory_message(...))``, in pieces: the message's head, then
    each place and each unassigned unit as its model validates and serialises it, then the
    tail. A piece ends where a JSON value does, never inside a key or a string. Each place is
    made, serialised and let go in turn: with the pieces hashed and compressed as they come
    (:meth:`agent.uploader.outbox.Outbox.queue_snapshot`), the snapshot never costs its whole
    size in memory, let alone tens of MB of models."""
    parts = _Inventory(report, verdicts, last_scan, seen, supports)
    shell = serialize(
        InventoryMessage(
            schema=SCHEMA_INVENTORY,
            agent=agent,
            sequence=sequence,
            generated_at=as_utc(generated_at),
            places=[],
            unassigned=[],
            dropped_events=dropped_events,
        )
    )
    # A JSON string cannot hold an unescaped quote: the marker can only be the message's keys.
    head, marker, tail = shell.rpartition(_EMPTY_LISTS)
    if marker != _EMPTY_LISTS:  # pragma: no cover - the models' field order is fixed above
        raise AssertionError("unexpected serialisation of an empty inventory message")
    yield head + b'"places":['
    place = _place_adapter()
    for i, fields in enumerate(parts.place_fields()):
        yield (b"," if i else b"") + _checked_json(place, fields)
    yield b'],"unassigned":['
    device = _device_adapter()
    for i, fields in enumerate(parts.unassigned_fields()):
        yield (b"," if i else b"") + _checked_json(device, fields)
    yield b"]," + tail


#: How an inventory message with no place and no unassigned unit writes those two fields.
_EMPTY_LISTS: Final = b'"places":[],"unassigned":[],'


# --- a snapshot's places as checked dicts ------------------------------------------------------
#
# A place validated as a model costs a model instance per unit and per part of it (its
# support, contacts, channels…). The same checks on plain dicts — the model's fields, types,
# constraints and configuration, mirrored as a TypedDict — serialise to the same bytes (tests
# compare) and cost less: a 5,000-unit snapshot queued in ~240 ms instead of ~275
# (bench/portal_push.py). The models stay the schema, and what parses a message.


def _mirrored(model: type[BaseModel], made: dict[type[BaseModel], Any]) -> Any:
    """A TypedDict with ``model``'s fields, in its order, with their types (models in them
    mirrored in turn), constraints and configuration; every field required (the builders give
    each one, defaults included). Only for models without aliases or validators, as each part
    of a place is (a model with either is refused, not mirrored wrong)."""
    if model in made:
        return made[model]
    if model.__pydantic_decorators__.field_validators or model.__pydantic_decorators__.model_validators:
        raise TypeError(f"{model.__name__} has validators: a mirror would not run them")
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.alias not in (None, name):
            raise TypeError(f"{model.__name__}.{name} has an alias: a mirror would not use it")
        kind = _mirrored_type(info.annotation, made)
        fields[name] = Annotated[(kind, *info.metadata)] if info.metadata else kind
    config = ConfigDict(extra=model.model_config.get("extra"), strict=bool(model.model_config.get("strict")))
    mirror = with_config(config)(TypedDict(f"{model.__name__}Dict", fields))  # type: ignore[misc,operator]
    made[model] = mirror
    return mirror


def _mirrored_type(kind: Any, made: dict[type[BaseModel], Any]) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return _mirrored(kind, made)
    origin = get_origin(kind)
    if origin is None or origin is Literal:
        return kind
    args = tuple(_mirrored_type(arg, made) for arg in get_args(kind))
    if origin is Union or origin is UnionType:
        return Union[args]  # noqa: UP007 - built from a tuple
    return origin[args]  # list[...], dict[...]


@cache
def _place_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(_mirrored(Place, {}))


@cache
def _device_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(_mirrored(DeviceOut, {}))


def _checked_json(adapter: TypeAdapter[Any], fields: Mapping[str, Any]) -> bytes:
    """``fields`` checked as the model ``adapter`` mirrors checks them (a :class:`ValidationError`
    when they are wrong), as compact UTF-8 JSON: the bytes :func:`_to_json` writes for it."""
    return adapter.dump_json(adapter.validate_python(fields))


def _to_json(model: BaseModel) -> bytes:
    """``model`` as compact UTF-8 JSON, field names as on the wire (what :func:`serialize`
    writes for it, also as a part of a message)."""
    return model.__pydantic_serializer__.to_json(model, by_alias=True)


def change_event_out(
    *,
    id: UUID | str,
    type: str,
    time: datetime,
    identity: str,
    product: str,
    serial: str | None,
    room: str | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> EventOut:
    """One event from the fields a store keeps: ``id`` may be a UUID's text and ``type`` any
    string (or string enum) with one of :class:`EventType`'s words. Raises :class:`ValueError`
    for an id that is no UUID or an unknown type."""
    return EventOut(
        id=id if isinstance(id, UUID) else UUID(id),
        type=EventType(type),
        time=as_utc(time),
        identity=identity,
        product=product,
        serial=serial,
        room=room,
        before=dict(before) if before is not None else None,
        after=dict(after) if after is not None else None,
    )


def event_out(
    kind: EventType,
    time: datetime,
    device: Device,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    room: str | None = None,
    event_id: UUID | str | None = None,
) -> EventOut:
    """One event about ``device``. ``room`` defaults to the device's room; ``event_id``
    should be the id the store gave the event (a fresh random one when ``None``)."""
    return change_event_out(
        id=event_id if event_id is not None else uuid4(),
        type=kind,
        time=time,
        identity=device.identity,
        product=device.product,
        serial=device.serial,
        room=room if room is not None else device.room,
        before=before,
        after=after,
    )


def events_message(
    agent: AgentInfo, sequence: int, generated_at: datetime, events: Iterable[EventOut]
) -> EventsMessage:
    """A ``roomsync.events.v1`` message carrying ``events`` in the order given (the store's
    order, oldest first): 1 to :data:`MAX_EVENTS_PER_MESSAGE` of them."""
    return EventsMessage(
        schema=SCHEMA_EVENTS,
        agent=agent,
        sequence=sequence,
        generated_at=as_utc(generated_at),
        events=list(events),
    )


# --------------------------------------------------------------------------- bytes


def serialize(message: Message) -> bytes:
    """The message as compact UTF-8 JSON, field names as on the wire."""
    return _to_json(message)


#: The gzip level of every body the agent sends.
GZIP_LEVEL: Final = 6


def gzip_body(data: bytes) -> bytes:
    """``data`` gzip-compressed, one member, with no time stamp: the same message always
    compresses to the same bytes (a retry sends exactly what the first attempt sent). zlib's
    own gzip wrapper (what ``gzip.compress(data, mtime=0)`` is on Python 3.11 and 3.12; 3.13
    writes another OS byte): the same bytes on every Python, and what
    :func:`agent.uploader.outbox.digest_and_gzip` writes piece by piece."""
    return zlib.compress(data, level=GZIP_LEVEL, wbits=31)


def parse_message(data: bytes | str) -> Message:
    """A message from its JSON (as a portal reads it): the model is chosen by ``schema``.
    Raises :class:`pydantic.ValidationError` or :class:`ValueError`."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError("the message is nested too deeply to be JSON a portal reads") from None
    name = doc.get("schema") if isinstance(doc, dict) else None
    model = MODELS.get(name) if isinstance(name, str) else None
    if model is None:
        raise ValueError(f"unknown schema {name!r}: expected one of {', '.join(MODELS)}")
    return model.model_validate_json(data)


# --------------------------------------------------------------------------- schemas


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of each message, by schema name."""
    return {
        name: {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(by_alias=True)}
        for name, model in MODELS.items()
    }
