"""When a unit fails: whom to call, which serial to quote, what the contract promises.

A pure function (:func:`support_for`) of the unit, its room (and the room's platform), the
systems of its room, its coverage verdict, its entitlement record, whether its room holds an
active SELECT licence, the catalog and the contacts; nothing here reads the clock, a file or
the network. Every answer names the rule ids of ``domain.md`` it rests on. :class:`SiteSupport`
answers for every unit of a site a room at a time (the snapshot, ``/v1/coverage``,
``roomsync coverage --json`` and ``roomsync support``); a room's platform is its configured
one, else the one its CollabOS units report (``serviceProvider``, :func:`reported_platform`).

Rules (the first that applies)
------------------------------
1. **reseller** (H1, H2, H3, P3): the unit's verdict has a reseller layer covering today. The
   ticket quotes the failed unit's own serial and the contract number (P3). Priority by the
   unit's health (H2): ``critical`` (it does not work: health error, or offline) 24x7, first
   response 1 h, updates every 1 h, replacement on site within 8 h of confirmation;
   ``degraded`` (a warning) 8x5, 1 h, updates every 2 h, replacement within 8 h; ``request``
   (no fault) 8x5, 4 h, updates every 4 h. The failed unit goes back within 7 days with the
   prepaid waybill (H3).
2. **logitech-select** (S2, S12, S6, S7, S15): the unit's room holds an active SELECT licence
   (a unit of the room has a SELECT layer covering today: a room licence covers every supported
   product in its room, S2) and SELECT supports its product (catalog ``select_supported``; a
   product the catalog does not know is not judged). English 24x7, first-response objective
   1 h; the ticket names the licensed room (S12). Replacement only while the unit is under 5
   years from purchase (S7: ``select-replacement-age``, ``purchase-date-unknown``) and the
   fault is not an exclusion (S6, listed in ``steps``); country notes (S15).
3. **A conference system** (D2): a product the catalog marks ``conference_system`` (the Rally
   and Rally Bar families, MeetUp, Tap, Scribe, Swytch, Sight…), or the room PC of a Tap
   bundle.

   * In a **Tap bundle** (a system whose tickets quote the Tap, P2): ``logitech-jumpstart`` in a
     Microsoft Teams room, ``logitech-support`` (the Tap-bundle form) in a Zoom or Google Meet
     room; the ticket quotes the **Tap's** serial whatever failed. A room of unknown platform
     gets both candidate routes (``routes``), ``route`` ``null`` and ``platform-unknown``.
   * Otherwise ``logitech-support``, quoting the unit's system's primary unit (P1) — the unit's
     own when it is a primary unit or stands alone.
4. **distributor-rma** (D1): anything else (webcams, headsets, other Logitech products): an RMA
   request to the distributor; a credit note follows receipt.
5. A verdict ``out_of_warranty`` keeps its route, flagged ``not-covered`` (a paid repair or a
   replacement purchase); ``unknown`` is flagged ``coverage-unknown``.

A serial counts only when it is label-grade (the one on the label, agent/systems.py): when
the serial to quote is not known, ``ticket_serial`` is ``null`` and ``ticket-serial-unknown``
says to read it from the label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from functools import partial
from typing import Any

from agent.catalog import Catalog
from agent.coverage import LayerKind, Status, Verdict, add_years
from agent.entitlements import EntitlementRecord
from agent.model import Device, HealthState
from agent.sanitize import normalize_serial
from agent.systems import RoomSummary, System, label_serial, units

__all__ = [
    "COUNTRY_NOTES",
    "EXCLUSIONS",
    "SERVICE_PLATFORMS",
    "Contact",
    "Contacts",
    "Platform",
    "Route",
    "SiteSupport",
    "Support",
    "SupportSettings",
    "contacts_from",
    "reported_platform",
    "room_has_select",
    "site_support",
    "support_for",
    "support_settings_from",
]


class Route(StrEnum):
    RESELLER = "reseller"
    SELECT = "logitech-select"
    JUMPSTART = "logitech-jumpstart"
    SUPPORT = "logitech-support"
    DISTRIBUTOR = "distributor-rma"


class Platform(StrEnum):
    """The meeting platform of a room (``[room] platform``, the room map's ``platform``)."""

    TEAMS = "teams"
    ZOOM = "zoom"
    GOOGLE_MEET = "google-meet"


@dataclass(frozen=True, slots=True)
class Contact:
    """Whom to call: a name, and a URL or a phone number."""

    name: str
    url: str | None = None
    phone: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "phone": self.phone}


@dataclass(frozen=True, slots=True)
class Contacts:
    """The desks, by route. The defaults are the seeds' (domain.md): the Tap-bundle form for
    Zoom and Google Meet rooms and Logitech's professional support site (seed 000), JumpStart
    (seed 000), the reseller's portal (seed 004, myHEZO), the distributor's returns portal
    (seed 000: Ingram Micro, the Netherlands). The SELECT desk is the Logitech Service Portal
    (S12), whose address the seeds do not give."""

    reseller: Contact = Contact("myHEZO (HEZO+ service desk)", "https://myhezo.pl")
    select: Contact = Contact("Logitech Service Portal (SELECT)")
    jumpstart: Contact = Contact("Logitech JumpStart", "https://logitech.com/jumpstart")
    support: Contact = Contact("Logitech Support", "https://prosupport.logi.com/hc/nl")
    tap_support: Contact = Contact(
        "Logitech Support (Tap bundles, Zoom and Google Meet)",
        "https://support.logi.com/hc/requests/new?ticket_form_id=360000621393",
    )
    distributor: Contact = Contact(
        "Ingram Micro (RMA request)", "https://nl.ingrammicro.com/cep/app/frame?url=%2FSite%2FReturns/"
    )


def contacts_from(section: Any) -> Contacts:
    """The desks of ``[support]`` (:class:`agent.config.SupportConfig`): each field set
    replaces that part of the seeds' contact."""
    seeds = Contacts()
    chosen = {}
    for field_name, key in (
        ("distributor", "distributor"),
        ("reseller", "reseller"),
        ("select", "select"),
        ("jumpstart", "jumpstart"),
        ("support", "logitech"),
        ("tap_support", "tap_bundles"),
    ):
        given = getattr(section, key)
        default: Contact = getattr(seeds, field_name)
        if given.name is None and given.url is None and given.phone is None:
            continue
        chosen[field_name] = Contact(
            given.name or default.name,
            given.url if given.url is not None else (default.url if given.phone is None else None),
            given.phone,
        )
    return Contacts(**chosen)


#: S6: what a SELECT product replacement does not cover.
EXCLUSIONS: tuple[str, ...] = (
    "accident, abuse, misuse or unauthorised repair",
    "wrong operation or voltage",
    "non-Logitech consumables, parts or services",
    "missing original parts",
    "normal wear",
    "bundled and third-party bundled products (no product replacement)",
)
#: S15: what a replacement may need, by country (ISO 3166 alpha-2).
COUNTRY_NOTES: Mapping[str, str] = {
    "IN": "India: a replacement needs the proof of purchase",
    **{
        code: f"{name}: the customer's tax registration number may be needed"
        for code, name in (
            ("AE", "UAE"),
            ("ZA", "South Africa"),
            ("TR", "Turkey"),
            ("CO", "Colombia"),
            ("AR", "Argentina"),
            ("CL", "Chile"),
            ("PE", "Peru"),
        )
    },
}

#: H2: (hours, first response, updates, replacement) by priority.
_PRIORITIES: Mapping[str, tuple[str, str, str, str | None]] = {
    "critical": ("24x7", "1 h", "1 h", "on site within 8 h of confirmation"),
    "degraded": ("8x5", "1 h", "2 h", "within 8 h of confirmation"),
    "request": ("8x5", "4 h", "4 h", None),
}
SELECT_REPLACEMENT_YEARS = 5  # S7


@dataclass(frozen=True, slots=True)
class Support:
    """What to do when the unit fails."""

    route: str | None
    routes: tuple[str, ...]
    ticket_serial: str | None
    contacts: tuple[Contact, ...]
    priority: str | None = None
    hours: str | None = None
    response: str | None = None
    updates: str | None = None
    replacement: str | None = None
    contract: str | None = None
    room: str | None = None
    #: The room's platform as the rules took it (``[room]``/room map, else its CollabOS
    #: units' ``serviceProvider``); ``None`` when not known.
    platform: str | None = None
    steps: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()

    @property
    def contact(self) -> Contact | None:
        return self.contacts[0] if len(self.contacts) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "routes": list(self.routes),
            "ticket_serial": self.ticket_serial,
            "contact": self.contact.to_dict() if self.contact else None,
            "contacts": [c.to_dict() for c in self.contacts],
            "priority": self.priority,
            "hours": self.hours,
            "response": self.response,
            "updates": self.updates,
            "replacement": self.replacement,
            "contract": self.contract,
            "room": self.room,
            "platform": self.platform,
            "steps": list(self.steps),
            "flags": list(self.flags),
            "rules": list(self.rules),
        }


@dataclass(slots=True)
class _Draft:
    flags: set[str] = field(default_factory=set)
    rules: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def rule(self, *ids: str) -> None:
        self.rules.extend(i for i in ids if i not in self.rules)


def room_has_select(verdicts: Iterable[Verdict | None], today: date) -> bool:
    """Whether one of a room's units has a SELECT layer covering ``today`` (S2: the room's
    licence covers every supported product installed in it)."""
    return any(
        layer.kind is LayerKind.SELECT and layer.covers(today)
        for verdict in verdicts
        if verdict is not None
        for layer in verdict.layers
    )


def _covering(verdict: Verdict | None, kind: LayerKind, today: date) -> bool:
    return verdict is not None and any(layer.kind is kind and layer.covers(today) for layer in verdict.layers)


def _system_of(device: Device, summary: RoomSummary) -> System | None:
    for system in summary.systems:
        if any(member.device.identity == device.identity for member in system.members):
            return system
    return None


def _is_tap_bundle(system: System | None) -> bool:
    """A system whose tickets quote the Tap (P2): a Tap bundle."""
    return system is not None and "P2" in system.ticket_rules


def _quote(serial: str | None, draft: _Draft) -> str | None:
    if serial is None:
        draft.flags.add("ticket-serial-unknown")
        draft.steps.append("Read the serial to quote from the unit's label (the one read is not the label's)")
    return serial


def _priority(device: Device, seen: bool) -> str:
    """H2: ``critical`` when the unit does not work (health error, offline), ``degraded`` on
    a warning, else ``request``."""
    if device.health is HealthState.ERROR or not seen or device.state == "offline":
        return "critical"
    if device.health is HealthState.WARNING:
        return "degraded"
    return "request"


def support_for(
    device: Device,
    *,
    catalog: Catalog,
    today: date,
    verdict: Verdict | None = None,
    record: EntitlementRecord | Callable[[], EntitlementRecord | None] | None = None,
    summary: RoomSummary | None = None,
    system: System | None = None,
    platform: str | None = None,
    room_name: str | None = None,
    room_select: bool = False,
    seen: bool = True,
    contacts: Contacts | None = None,
) -> Support:
    """What to do when ``device`` fails (the rules are the module's docstring). ``summary`` is
    its room's (:func:`agent.systems.summarize_room`: its system is looked up there), or
    ``system`` the system it is a member of, when known; ``platform`` its room's, ``room_select``
    whether its room holds an active SELECT licence (:func:`room_has_select`), ``seen``
    whether the latest run of a source that reports it saw it. ``record`` (its entitlement
    record) may be a function that looks it up: only the routes that quote it call it (a
    site's snapshot asks for every unit's support, and a packed record is built on lookup)."""
    desks = contacts or Contacts()
    if callable(record):
        record = _looked_up(record, verdict, today, room_select)
    draft = _Draft()
    if summary is not None:
        system = _system_of(device, summary)
    own = label_serial(device)
    product = catalog.get(device.product)

    if _covering(verdict, LayerKind.RESELLER, today):
        draft.rule("H1", "H2", "P3", "H3")
        priority = _priority(device, seen)
        hours, response, updates, replacement = _PRIORITIES[priority]
        contract = record.reseller_contract if record is not None else None
        if contract is None:
            draft.flags.add("contract-number-unknown")
        serial = _quote(own, draft)
        draft.steps[:0] = [
            f"Open a {priority} ticket with {desks.reseller.name}"
            + (f" ({desks.reseller.url})" if desks.reseller.url else "")
            + f", quoting serial {serial or '(from the label)'} and contract {contract or '(unknown)'}",
        ]
        draft.steps.append("Send the failed unit back within 7 days with the prepaid waybill")
        return _done(
            platform,
            Route.RESELLER,
            serial,
            (desks.reseller,),
            draft,
            verdict,
            priority=priority,
            hours=hours,
            response=response,
            updates=updates,
            replacement=replacement,
            contract=contract,
        )

    if room_select and (product is None or product.select_supported):
        draft.rule("S2", "S12", "S6", "S7")
        serial = _quote(own, draft)
        room = room_name or device.room
        draft.steps[:0] = [
            f"Open a ticket in {desks.select.name} naming the licensed room {room or '(its room)'}"
            + (f" and serial {serial}" if serial else "")
        ]
        purchase = record.purchase_date if record is not None else None
        if purchase is None:
            draft.flags.add("purchase-date-unknown")
            draft.steps.append("Replacement only while the unit is under 5 years old: find its purchase date")
        elif today >= add_years(purchase, SELECT_REPLACEMENT_YEARS):
            draft.flags.add("select-replacement-age")
            draft.steps.append(f"No replacement: bought {purchase.isoformat()}, 5 years old or more")
        draft.steps.append("Not covered by a replacement: " + "; ".join(EXCLUSIONS))
        country = (record.country or "").upper() if record is not None else ""
        if country in COUNTRY_NOTES:
            draft.rule("S15")
            draft.steps.append(COUNTRY_NOTES[country])
        return _done(
            platform,
            Route.SELECT,
            serial,
            (desks.select,),
            draft,
            verdict,
            hours="24x7 (English; other languages in set hours)",
            response="1 h (objective)",
            room=room,
        )

    in_bundle = _is_tap_bundle(system)
    conference = (product is not None and product.conference_system) or (
        in_bundle and product is not None and product.family == "room-pc"
    )
    if conference and in_bundle and system is not None:
        draft.rule("D2", "P2")
        serial = _quote(system.ticket_serial, draft)
        routes: tuple[Route, ...]
        desks_of: tuple[Contact, ...]
        if platform == Platform.TEAMS:
            routes, desks_of = (Route.JUMPSTART,), (desks.jumpstart,)
        elif platform in (Platform.ZOOM, Platform.GOOGLE_MEET):
            routes, desks_of = (Route.SUPPORT,), (desks.tap_support,)
        else:
            draft.flags.add("platform-unknown")
            routes, desks_of = (Route.JUMPSTART, Route.SUPPORT), (desks.jumpstart, desks.tap_support)
        draft.steps[:0] = [
            f"Open a ticket quoting the Tap's serial {serial or '(from the Tap display)'}, whatever failed; "
            "Rally, MeetUp and NUC serials are not accepted on these forms",
            "Troubleshooting with the support agent comes before any replacement",
            "Hardware replacements go through the point of sale",
        ]
        if product is not None and product.family == "room-pc":
            draft.steps.append(
                "NUC and Chromebox replacements are handled by Logitech Support, with a prepaid return label"
            )
        return _done(
            platform,
            routes[0] if len(routes) == 1 else None,
            serial,
            desks_of,
            draft,
            verdict,
            response="1 business day",
            routes=routes,
        )

    if conference:
        draft.rule("D2", "P1")
        serial = _quote(system.primary_serial if system is not None else own, draft)
        draft.steps[:0] = [
            f"Open a ticket with {desks.support.name}, quoting serial {serial or '(from the label)'}"
            + (" (the system's primary unit)" if system is not None and system.primary is not device else ""),
            "Troubleshooting with the support agent comes before any replacement",
        ]
        return _done(
            platform, Route.SUPPORT, serial, (desks.support,), draft, verdict, response="1 business day"
        )

    draft.rule("D1")
    serial = _quote(own, draft)
    draft.steps[:0] = [
        f"Request an RMA from {desks.distributor.name}"
        + (f" ({desks.distributor.url})" if desks.distributor.url else "")
        + f", quoting serial {serial or '(from the label)'}",
        "A credit note follows once the distributor has received the product",
    ]
    return _done(platform, Route.DISTRIBUTOR, serial, (desks.distributor,), draft, verdict)


def _looked_up(
    lookup: Callable[[], EntitlementRecord | None], verdict: Verdict | None, today: date, room_select: bool
) -> EntitlementRecord | None:
    """The record, for the routes that quote it: a reseller's contract (H1) and, in a SELECT
    room, the purchase date and country (S7, S15); ``None`` for the others, which never read it."""
    return lookup() if room_select or _covering(verdict, LayerKind.RESELLER, today) else None


def _done(
    platform: str | None,
    route: Route | None,
    serial: str | None,
    contacts: tuple[Contact, ...],
    draft: _Draft,
    verdict: Verdict | None,
    *,
    routes: tuple[Route, ...] | None = None,
    **facts: Any,
) -> Support:
    status = verdict.status if verdict is not None else Status.UNKNOWN
    if status is Status.OUT_OF_WARRANTY:
        draft.flags.add("not-covered")
        draft.steps.append("Not covered: a paid repair, or a replacement bought")
    elif status is Status.UNKNOWN:
        draft.flags.add("coverage-unknown")
    return Support(
        route=str(route) if route is not None else None,
        routes=tuple(str(r) for r in (routes or ((route,) if route is not None else ()))),
        ticket_serial=serial,
        contacts=contacts,
        steps=tuple(draft.steps),
        flags=tuple(sorted(draft.flags)),
        rules=tuple(draft.rules),
        platform=platform,
        **facts,
    )


#: ``[support] service_platforms``'s default: the ``serviceProvider`` values whose platform is
#: documented (issue [15/16]: MTR is a Microsoft Teams room).
SERVICE_PLATFORMS: Mapping[str, str] = {"MTR": str(Platform.TEAMS)}


@dataclass(frozen=True, slots=True)
class SupportSettings:
    """What ``[support]`` says besides the rules: the desks, and the platform each CollabOS
    ``serviceProvider`` stands for (keys upper-cased)."""

    contacts: Contacts = field(default_factory=Contacts)
    service_platforms: Mapping[str, str] = field(default_factory=lambda: dict(SERVICE_PLATFORMS))


def support_settings_from(section: Any) -> SupportSettings:
    """:class:`SupportSettings` of ``[support]`` (:class:`agent.config.SupportConfig`)."""
    return SupportSettings(
        contacts_from(section),
        {key.upper(): str(value) for key, value in section.service_platforms.items()},
    )


def reported_platform(devices: Iterable[Device], service_platforms: Mapping[str, str]) -> str | None:
    """The platform a room's units report: the one every unit with a known ``serviceProvider``
    (CollabOS, ``attributes.service_provider``) stands for; ``None`` when none does, or when
    they disagree (a room is not both)."""
    found: set[str] = set()
    for device in devices:
        provider = device.attributes.get("service_provider")
        if isinstance(provider, str):
            platform = service_platforms.get(provider.strip().upper())
            if platform is not None:
                found.add(platform)
    return found.pop() if len(found) == 1 else None


class SiteSupport:
    """Support for every unit of a site, peripherals and units without a serial included,
    worked out a room at a time (:meth:`room`, :meth:`unassigned`): the snapshot asks for each
    place as it writes it, so a site's answers are never all held at once. ``report`` is
    :func:`agent.inventory.summarize_rooms`'s (rooms, their systems and platforms, and the
    units in none); ``verdicts`` by normalised serial (:func:`agent.uploader.snapshot.
    verdicts_for`); ``seen`` whether the latest run of a source that reports a unit saw it.
    A room's platform is its configured one, else the one its CollabOS units report
    (:func:`reported_platform`). Linear in the units: each room's systems are indexed once."""

    def __init__(
        self,
        report: Any,
        verdicts: Mapping[str, Verdict],
        records: Mapping[str, EntitlementRecord] | None,
        *,
        catalog: Catalog,
        today: date,
        seen: Callable[[Device], bool] = lambda _device: True,
        settings: SupportSettings | None = None,
    ) -> None:
        self.report = report
        self.verdicts = verdicts
        self.records = records
        self.catalog = catalog
        self.today = today
        self.seen = seen
        self.settings = settings or SupportSettings()

    def room(self, summary: RoomSummary) -> list[tuple[Device, Support]]:
        """Each unit of the room of ``summary`` (in :attr:`RoomSummary.devices`' order) and
        its support."""
        room = self.report.room(summary.room_id)
        members = summary.devices
        systems = {member.device.identity: system for system in summary.systems for member in system.members}
        platform = room.platform or reported_platform(members, self.settings.service_platforms)
        licensed = room_has_select(
            (self.verdicts.get(normalize_serial(d.serial)) for d in members if d.serial), self.today
        )
        return [
            (device, self._one(device, systems.get(device.identity), room, platform, licensed))
            for device in members
        ]

    def unassigned(self) -> list[tuple[Device, Support]]:
        """Each unit placed in no room, children after their parent, and its support."""
        return [
            (device, self._one(device, None, None, None, False)) for device in units(self.report.unassigned)
        ]

    def every(self) -> Iterator[tuple[Device, Support]]:
        """Every unit of the site and its support: the rooms' (in the report's order), then
        the units in none."""
        for summary in self.report.rooms:
            yield from self.room(summary)
        yield from self.unassigned()

    def _one(
        self, device: Device, system: System | None, room: Any, platform: str | None, licensed: bool
    ) -> Support:
        key = normalize_serial(device.serial) if device.serial else None
        return support_for(
            device,
            catalog=self.catalog,
            today=self.today,
            verdict=self.verdicts.get(key) if key is not None else None,
            record=partial(self.records.get, key) if self.records is not None and key is not None else None,
            system=system,
            platform=platform,
            room_name=(room.name or room.id) if room is not None else None,
            room_select=licensed,
            seen=self.seen(device),
            contacts=self.settings.contacts,
        )


def site_support(
    report: Any,
    devices: Iterable[Device],
    verdicts: Mapping[str, Verdict],
    records: Mapping[str, EntitlementRecord] | None,
    *,
    catalog: Catalog,
    today: date,
    seen: Callable[[Device], bool] = lambda _device: True,
    settings: SupportSettings | None = None,
) -> dict[str, tuple[Device, Support]]:
    """Support for the units with a serial, by normalised serial: for each serial, the unit
    coverage lists (:func:`agent.coverage.coverage_units`: the first of ``devices``, each
    followed by its children, to carry it), so a verdict and its ``support`` are the same
    unit's. ``report`` is :func:`agent.inventory.summarize_rooms`'s of ``devices``."""
    site = SiteSupport(report, verdicts, records, catalog=catalog, today=today, seen=seen, settings=settings)
    helped = {id(device): (device, support) for device, support in site.every()}
    found: dict[str, tuple[Device, Support]] = {}
    for device in units(devices):
        if device.serial and id(device) in helped:
            found.setdefault(normalize_serial(device.serial), helped[id(device)])
    return found
