"""Coverage: which warranty, SELECT and reseller layers cover a unit, and until when.

A pure function of (unit, its entitlement record, the catalog, today): nothing here reads the
clock, a file or the network (design.md). Every layer names the rule ids of ``domain.md`` it
rests on, so an operator can check a verdict by hand against the seeds.

Date arithmetic
---------------
* D + N years is the same month and day N years later, or 28 February when D is 29 February
  and that year has none (:func:`add_years`); "+ 30 days" and "+ 60 days" are calendar days.
* A period of N years from day D covers D through D + N years − 1 day (:func:`period_end`).
  ``until`` and ``covered_until`` are always the *last covered day*.

Layers (only valid layers are listed; why a layer is missing is in ``flags``)
-----------------------------------------------------------------------------
* ``standard`` (W1): from ``purchase_date`` for the catalog's standard length
  (``catalog.warranty_years(product)``; an unknown product gets the catalog default).
* ``extended`` (W2–W6): runs on from the day after the standard ends to ``purchase_date`` +
  (standard + ``extension_years``) years − 1 day (W2: counted from the original purchase, §8).
  It is valid only when every condition holds; each failing one adds a flag:

  - ``extension-ineligible-product``: the catalog knows the product and it is not in schedule A
    (``extension_eligible``) (W1/W2). An unknown product is not judged;
  - ``extension-bought-late``: bought more than 30 days after purchase (W3). Day 30 is in time;
  - ``extension-purchase-date-unknown``: ``extension_purchased`` is blank, so W3 cannot be shown
    (W3: "flagged, not silently honoured");
  - ``extension-ineligible-customer``: a consumer (W4);
  - ``extension-ineligible-country``: the country is not US, GB, EU or EFTA, *or is blank* (W5);
  - ``extension-ineligible-date``: bought on or before 2020-03-06 (W6: "after 6 March 2020").
  - ``extension-excluded-component``: the product is a component sold separately or a
    consumable (catalog ``kind`` ``component`` / ``consumable``): W7 excludes it, standard
    warranty only (it replaces ``extension-ineligible-product`` for such a product). A
    component of a primary unit's original box has no row of its own: covered with it (P1).

  The product judged is the one a scan found, else the one the record's ``product`` names.
* **W9** (a record that bought an extension): the serials on the extension's confirmation
  must be checked within 30 days of buying it (``check_by`` = ``extension_purchased`` + 30
  days). A serial no scan has ever found (the inventory, and the units that left it) is
  ``extension-serial-unverified`` until ``check_by`` (also when ``check_by`` is not known) and
  ``extension-serial-unverified-late`` after it; a found one is ``serial_verified`` with the
  day it was ``first_seen``, and ``extension-serial-mismatch`` when the record's ``product``
  is not the product found. These flags change no layer.

* ``select`` (S4, S5, S7, S8): service start = the earlier of ``select_activation_date`` and
  ``select_order_date`` + 60 days (S4); the term runs ``select_term_years`` from the start (S5)
  but product replacement ends when the unit turns 5 (``purchase_date`` + 5 years − 1 day, S7):
  the layer ends at the earlier of the two, flagged ``select-age-cap`` when the age limit is
  strictly earlier. The unit must be under a valid standard, extended or replacement layer on
  ``select_registered`` (or on the service start when that is blank), else ``select-gap`` and
  no SELECT layer (S8: SELECT cannot cure a gap). A replacement layer counts because a
  replacement carries "the rest of the original warranty" (W8). A reseller contract does not:
  it is not a Logitech warranty. Further flags: ``select-incomplete`` (SELECT data without a
  start date or a term), ``select-unsupported-product`` (the catalog knows the product and it is
  outside SELECT's support scope, seed 003 / S2).
* ``reseller`` (H1): from ``purchase_date`` through ``reseller_until``. Flags:
  ``reseller-incomplete`` (a contract without ``reseller_until``), ``reseller-unsupported-product``
  (the catalog knows the product and it is outside the HEZO+ scope, seed 004).
* ``replacement`` (W8, S11): a record with ``replaced_serial`` inherits the replaced unit's
  ``covered_until``, or ``replacement_date`` + 30 days − 1 day, whichever is later. Chains
  (A replaced by B replaced by C) are followed without recursion; the replaced units are
  evaluated as the same product as the unit asked about (a replacement is "the same product or
  one of equivalent value", §6). Flags: ``replaced-unit-unknown`` (no record for the replaced
  serial: the 30 days alone), ``replaced-unit-coverage-unknown`` (its record gives no coverage,
  e.g. no purchase date: the 30 days alone), ``replacement-cycle`` (the chain loops: the link
  that closes the loop counts as unknown), ``replacement-incomplete`` (no ``replacement_date``).

Extended, SELECT and reseller layers need the unit's own ``purchase_date``; a record without one
gets ``unknown-purchase-date`` unless it is a replacement that inherits coverage and carries
nothing else that needed the date. A unit with no record at all gets ``no-entitlement-record``
and ``unknown-purchase-date``.

Status
------
``covered_until`` is the latest ``until`` of the valid layers. ``unknown`` when there is none and
no purchase date; ``out_of_warranty`` when today is after ``covered_until`` (or nothing ever
covered the unit); ``expiring_soon`` when ``covered_until`` − today < ``expiring_days`` (90 by
default; covered_until == today is expiring_soon); else ``in_warranty``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from agent.catalog import Catalog, Product
from agent.entitlements import Customer, EntitlementRecord, Entitlements
from agent.model import Device, as_utc
from agent.sanitize import normalize_serial

__all__ = [
    "EXTENSION_CHECKS",
    "EXTENSION_COUNTRIES",
    "URGENCY",
    "CoverageUnit",
    "Flag",
    "Layer",
    "LayerKind",
    "RowVerdicts",
    "Sighting",
    "Status",
    "Verdict",
    "add_days",
    "add_years",
    "coverage_units",
    "evaluate",
    "evaluate_all",
    "period_end",
    "urgency_key",
]

DEFAULT_EXPIRING_DAYS = 90
#: W6: the B2B extension applies to products bought *after* this day.
EXTENSION_CUTOFF = date(2020, 3, 6)
#: W3: the extension must be bought with the product or within this many days of its purchase.
EXTENSION_PURCHASE_DAYS = 30
#: S4: without an assignment or activation, the service starts this many days after the order.
SELECT_ORDER_START_DAYS = 60
#: S7: SELECT product replacement only while the unit is less than this many years old.
SELECT_AGE_LIMIT_YEARS = 5
#: W8, S11: a replaced unit or deployed spare is warranted for at least this many days.
REPLACEMENT_MIN_DAYS = 30

_EU = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"
_EFTA = "IS LI NO CH"
#: W5: schedule A countries: USA, EU + EFTA, United Kingdom.
EXTENSION_COUNTRIES = frozenset(["US", "GB", *_EU.split(), *_EFTA.split()])

_ONE_DAY = timedelta(days=1)


class Status(StrEnum):
    """A unit's coverage on the day asked about."""

    OUT_OF_WARRANTY = "out_of_warranty"
    EXPIRING_SOON = "expiring_soon"
    UNKNOWN = "unknown"
    IN_WARRANTY = "in_warranty"


#: Most urgent first: what an operator must act on before what can wait.
URGENCY: tuple[Status, ...] = (
    Status.OUT_OF_WARRANTY,
    Status.EXPIRING_SOON,
    Status.UNKNOWN,
    Status.IN_WARRANTY,
)
_URGENCY_RANK = {status: rank for rank, status in enumerate(URGENCY)}


class LayerKind(StrEnum):
    """Sources of coverage, in the order verdicts list them."""

    STANDARD = "standard"
    EXTENDED = "extended"
    SELECT = "select"
    RESELLER = "reseller"
    REPLACEMENT = "replacement"


class Flag(StrEnum):
    """Why a layer is missing or shorter than asked, or why the verdict is uncertain."""

    NO_ENTITLEMENT_RECORD = "no-entitlement-record"
    UNKNOWN_PURCHASE_DATE = "unknown-purchase-date"
    EXTENSION_BOUGHT_LATE = "extension-bought-late"
    EXTENSION_PURCHASE_DATE_UNKNOWN = "extension-purchase-date-unknown"
    EXTENSION_INELIGIBLE_CUSTOMER = "extension-ineligible-customer"
    EXTENSION_INELIGIBLE_COUNTRY = "extension-ineligible-country"
    EXTENSION_INELIGIBLE_DATE = "extension-ineligible-date"
    EXTENSION_INELIGIBLE_PRODUCT = "extension-ineligible-product"
    SELECT_AGE_CAP = "select-age-cap"
    SELECT_GAP = "select-gap"
    SELECT_INCOMPLETE = "select-incomplete"
    SELECT_UNSUPPORTED_PRODUCT = "select-unsupported-product"
    RESELLER_INCOMPLETE = "reseller-incomplete"
    RESELLER_UNSUPPORTED_PRODUCT = "reseller-unsupported-product"
    REPLACED_UNIT_UNKNOWN = "replaced-unit-unknown"
    REPLACED_UNIT_COVERAGE_UNKNOWN = "replaced-unit-coverage-unknown"
    REPLACEMENT_CYCLE = "replacement-cycle"
    REPLACEMENT_INCOMPLETE = "replacement-incomplete"
    EXTENSION_EXCLUDED_COMPONENT = "extension-excluded-component"
    EXTENSION_SERIAL_UNVERIFIED = "extension-serial-unverified"
    EXTENSION_SERIAL_UNVERIFIED_LATE = "extension-serial-unverified-late"
    EXTENSION_SERIAL_MISMATCH = "extension-serial-mismatch"


#: The flags of the extension checks an administrator acts on (W7, W9), counted by
#: ``roomsync coverage --summary``.
EXTENSION_CHECKS: tuple[str, ...] = (
    Flag.EXTENSION_EXCLUDED_COMPONENT,
    Flag.EXTENSION_SERIAL_UNVERIFIED,
    Flag.EXTENSION_SERIAL_UNVERIFIED_LATE,
    Flag.EXTENSION_SERIAL_MISMATCH,
)

_RULES: dict[LayerKind, tuple[str, ...]] = {
    LayerKind.STANDARD: ("W1",),
    LayerKind.EXTENDED: ("W2", "W3", "W4", "W5", "W6"),
    LayerKind.SELECT: ("S4", "S5", "S7", "S8"),
    LayerKind.RESELLER: ("H1",),
    LayerKind.REPLACEMENT: ("W8", "S11"),
}
_LABELS: dict[LayerKind, tuple[str, str]] = {  # what the reason line calls it, its main rule
    LayerKind.STANDARD: ("standard warranty", "W1"),
    LayerKind.EXTENDED: ("extended warranty", "W2"),
    LayerKind.SELECT: ("SELECT product replacement", "S5"),
    LayerKind.RESELLER: ("reseller service contract", "H1"),
    LayerKind.REPLACEMENT: ("replacement unit warranty", "W8"),
}
_KIND_ORDER = {kind: order for order, kind in enumerate(LayerKind)}
#: S8: layers that count as "valid coverage" when a unit is registered to a SELECT room.
_S8_COVERAGE = frozenset({LayerKind.STANDARD, LayerKind.EXTENDED, LayerKind.REPLACEMENT})


# --- date arithmetic ---------------------------------------------------------------------


def add_years(day: date, years: int) -> date:
    """The same month and day ``years`` later; 28 February for 29 February in a common year.
    Saturates at ``date.max``."""
    year = day.year + years
    if year > date.max.year:
        return date.max
    try:
        return day.replace(year=year)
    except ValueError:  # 29 February in a year without one
        return date(year, 2, 28)


def add_days(day: date, days: int) -> date:
    """Calendar days later (earlier when negative); saturates at the ends of ``date``."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def period_end(start: date, years: int) -> date:
    """The last day of a period of ``years`` years starting on ``start``."""
    end = add_years(start, years)
    return end if end == date.max else end - _ONE_DAY


# --- the verdict -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """One valid source of coverage: ``start`` (JSON ``from``) through ``until``, both covered."""

    kind: LayerKind
    start: date
    until: date
    rules: tuple[str, ...]

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.until

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "from": self.start.isoformat(),
            "until": self.until.isoformat(),
            "rules": list(self.rules),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The coverage of one unit on one day."""

    serial: str | None
    product: str | None
    status: Status
    covered_until: date | None
    layers: tuple[Layer, ...]
    flags: tuple[str, ...]  # sorted Flag values
    reason: str
    #: W9, for a record that bought an extension (else ``None``): whether a scan has ever found
    #: a unit with the serial, the day one was first seen, and the day the serials on the
    #: extension's confirmation must be checked by (its purchase + 30 days).
    serial_verified: bool | None = None
    first_seen: date | None = None
    check_by: date | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "product": self.product,
            "status": str(self.status),
            "covered_until": self.covered_until.isoformat() if self.covered_until else None,
            "layers": [layer.to_dict() for layer in self.layers],
            "flags": list(self.flags),
            "serial_verified": self.serial_verified,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "check_by": self.check_by.isoformat() if self.check_by else None,
        }


def urgency_key(verdict: Verdict) -> tuple[int, date, str]:
    """Sort key, most urgent first: by :data:`URGENCY`, then ``covered_until`` ascending
    (unknown last), then serial."""
    return (_URGENCY_RANK[verdict.status], verdict.covered_until or date.max, verdict.serial or "")


# --- evaluation --------------------------------------------------------------------------


@dataclass(slots=True)
class _Assessment:
    """Layers and flags found so far for one record, with one note per flag for people."""

    layers: list[Layer] = field(default_factory=list)
    flags: set[Flag] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    #: The layer that ends last (on a tie, the first in LayerKind order): it sets covered_until.
    deciding: Layer | None = None

    def flag(self, flag: Flag, note: str) -> None:
        if flag not in self.flags:
            self.flags.add(flag)
            self.notes.append(note)

    def add(self, kind: LayerKind, start: date, until: date) -> Layer | None:
        if until < start:
            return None
        layer = Layer(kind, start, until, _RULES[kind])
        self.layers.append(layer)
        best = self.deciding
        if (
            best is None
            or until > best.until
            or (until == best.until and _KIND_ORDER[kind] < _KIND_ORDER[best.kind])
        ):
            self.deciding = layer
        return layer

    @property
    def covered_until(self) -> date | None:
        return self.deciding.until if self.deciding else None

    def ordered_layers(self) -> tuple[Layer, ...]:
        if len(self.layers) < 2:
            return tuple(self.layers)
        return tuple(sorted(self.layers, key=lambda layer: _KIND_ORDER[layer.kind]))

    def sorted_flags(self) -> tuple[str, ...]:
        return tuple(sorted(map(str, self.flags))) if self.flags else ()


def _standard(bought: date, years: int, asm: _Assessment) -> None:
    # W1: the standard warranty runs from the original purchase date for the catalog's length.
    asm.add(LayerKind.STANDARD, bought, period_end(bought, years))


def _extension(
    record: EntitlementRecord, bought: date, standard_years: int, product: Product | None, asm: _Assessment
) -> None:
    extra = record.extension_years
    if not extra:
        return
    ok = True
    if product is not None and product.sold_separately:
        # W7: components sold separately and consumables are excluded (a component in its
        # primary unit's original box is covered with that unit, P1, not by a row of its own).
        asm.flag(
            Flag.EXTENSION_EXCLUDED_COMPONENT,
            f"{product.name} is a {product.kind} sold separately: the extension excludes it, "
            "standard warranty only (W7)",
        )
        ok = False
    elif product is not None and not product.extension_eligible:
        # W1/W2: the extension covers the products of schedule A only.
        asm.flag(
            Flag.EXTENSION_INELIGIBLE_PRODUCT,
            f"{product.name} is not in the extended warranty's schedule A (W2)",
        )
        ok = False
    if record.extension_purchased is None:
        # W3: in time cannot be shown, so the extension is flagged, not silently honoured.
        asm.flag(Flag.EXTENSION_PURCHASE_DATE_UNKNOWN, "extension purchase date unknown (W3)")
        ok = False
    elif record.extension_purchased > add_days(bought, EXTENSION_PURCHASE_DAYS):
        # W3: bought with the product or within 30 days of its purchase; day 31 is late.
        late = (record.extension_purchased - bought).days
        asm.flag(Flag.EXTENSION_BOUGHT_LATE, f"extension bought {late} days after purchase (W3)")
        ok = False
    if record.customer is not Customer.BUSINESS:
        # W4: business end customers only.
        asm.flag(Flag.EXTENSION_INELIGIBLE_CUSTOMER, "extension not valid for a consumer (W4)")
        ok = False
    if record.country not in EXTENSION_COUNTRIES:
        # W5: USA, EU + EFTA, United Kingdom; a blank country cannot be shown eligible.
        where = f"in {record.country}" if record.country else "without a known country"
        asm.flag(Flag.EXTENSION_INELIGIBLE_COUNTRY, f"extension not valid {where} (W5)")
        ok = False
    if bought <= EXTENSION_CUTOFF:
        # W6: products bought after 6 March 2020.
        asm.flag(
            Flag.EXTENSION_INELIGIBLE_DATE,
            f"extension not valid for a purchase on or before {EXTENSION_CUTOFF.isoformat()} (W6)",
        )
        ok = False
    if ok:
        # W2: "+1 year" gives 3 years in total, counted from the original purchase date (§8),
        # continuing the standard terms after the standard period (§6).
        asm.add(
            LayerKind.EXTENDED, add_years(bought, standard_years), period_end(bought, standard_years + extra)
        )


def _reseller(record: EntitlementRecord, bought: date, product: Product | None, asm: _Assessment) -> None:
    if record.reseller_until is None:
        if record.reseller_contract:
            asm.flag(Flag.RESELLER_INCOMPLETE, "reseller contract without an end date: ignored (H1)")
        return
    if product is not None and not product.reseller_supported:
        asm.flag(
            Flag.RESELLER_UNSUPPORTED_PRODUCT, f"{product.name} is outside the reseller service's scope (H1)"
        )
        return
    # H1: the reseller contract is an extended warranty for the whole service term.
    asm.add(LayerKind.RESELLER, bought, record.reseller_until)


def _has_select(record: EntitlementRecord) -> bool:
    return bool(
        record.select_contract
        or record.select_order_date
        or record.select_activation_date
        or record.select_term_years
        or record.select_registered
    )


def _select(record: EntitlementRecord, bought: date, product: Product | None, asm: _Assessment) -> None:
    # S4: the earliest of the first assignment / activation and 60 days after the order.
    starts = [
        d
        for d in (
            record.select_activation_date,
            record.select_order_date and add_days(record.select_order_date, SELECT_ORDER_START_DAYS),
        )
        if d
    ]
    if not starts or not record.select_term_years:
        missing = "a start date" if not starts else "a term"
        asm.flag(Flag.SELECT_INCOMPLETE, f"SELECT contract without {missing}: ignored (S4, S5)")
        return
    if product is not None and not product.select_supported:
        asm.flag(Flag.SELECT_UNSUPPORTED_PRODUCT, f"{product.name} is not a SELECT-supported product (S2)")
        return
    start = min(starts)
    registered = record.select_registered or start
    if not any(layer.covers(registered) for layer in asm.layers if layer.kind in _S8_COVERAGE):
        # S8: the unit must be under valid coverage when registered; SELECT cannot cure a gap.
        asm.flag(
            Flag.SELECT_GAP,
            f"not under warranty when registered to SELECT on "
            f"{registered.isoformat()}: SELECT cannot cure a gap (S8)",
        )
        return
    term_end = period_end(start, record.select_term_years)  # S5: the term as bought, never extended
    age_limit = period_end(bought, SELECT_AGE_LIMIT_YEARS)  # S7: replacement only while under 5
    if age_limit < term_end:
        asm.flag(
            Flag.SELECT_AGE_CAP,
            f"SELECT replacement ends when the unit turns "
            f"{SELECT_AGE_LIMIT_YEARS} on {age_limit.isoformat()} (S7)",
        )
    asm.add(LayerKind.SELECT, start, min(term_end, age_limit))


@dataclass(frozen=True, slots=True)
class _Inherited:
    """What a replacement inherits from the unit it replaced (W8, S11)."""

    until: date | None
    flag: Flag | None = None
    replaced: str = ""


_NO_INHERITANCE = _Inherited(None)


def _replacement(record: EntitlementRecord, inherited: _Inherited, asm: _Assessment) -> None:
    if record.replaced_serial is None:
        return
    if record.replacement_date is None:
        asm.flag(Flag.REPLACEMENT_INCOMPLETE, "replacement without a replacement date: ignored (W8)")
        return
    if inherited.flag is Flag.REPLACED_UNIT_UNKNOWN:
        asm.flag(
            inherited.flag,
            f"replaced unit {inherited.replaced} has no record: "
            f"{REPLACEMENT_MIN_DAYS} days from the replacement (W8)",
        )
    elif inherited.flag is Flag.REPLACED_UNIT_COVERAGE_UNKNOWN:
        asm.flag(
            inherited.flag,
            f"replaced unit {inherited.replaced} has no known coverage: "
            f"{REPLACEMENT_MIN_DAYS} days from the replacement (W8)",
        )
    elif inherited.flag is Flag.REPLACEMENT_CYCLE:
        asm.flag(inherited.flag, f"the replacement chain loops back to {inherited.replaced} (W8)")
    # W8, S11: the rest of the original warranty or 30 days, whichever is longer.
    until = add_days(record.replacement_date, REPLACEMENT_MIN_DAYS - 1)
    if inherited.until is not None and inherited.until > until:
        until = inherited.until
    asm.add(LayerKind.REPLACEMENT, record.replacement_date, until)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A unit a scan found with a serial (W9): its product, and the day it was first seen
    (``None`` for a unit read through another, a bar's mic pod: the store keeps the first
    sighting of the units it tracks, not of what is read through them)."""

    first_seen: date | None
    product: str


@dataclass(frozen=True, slots=True)
class _SerialCheck:
    verified: bool | None = None
    first_seen: date | None = None
    check_by: date | None = None


_NOT_ASKED = _SerialCheck()


def _serial_check(
    record: EntitlementRecord, seen: Sighting | None, today: date, asm: _Assessment
) -> _SerialCheck:
    """W9: the serials on an extension's confirmation must be checked within 30 days of buying
    it. A serial a scan has found is verified (``first_seen``); one never found is flagged
    until ``check_by`` and late after it; a found unit of another product than the row names
    is a mismatch."""
    if not record.extension_years:
        return _NOT_ASKED
    bought = record.extension_purchased
    check_by = add_days(bought, EXTENSION_PURCHASE_DAYS) if bought is not None else None
    if seen is None:
        if check_by is not None and today > check_by:
            asm.flag(
                Flag.EXTENSION_SERIAL_UNVERIFIED_LATE,
                "no scan has found the extension's serial; discrepancies were due by "
                f"{check_by.isoformat()} (W9)",
            )
        else:
            by = f" by {check_by.isoformat()}" if check_by is not None else ""
            asm.flag(
                Flag.EXTENSION_SERIAL_UNVERIFIED,
                f"no scan has found the extension's serial yet: check it against the unit{by} (W9)",
            )
        return _SerialCheck(False, None, check_by)
    if seen.product and record.product is not None and record.product.casefold() != seen.product.casefold():
        asm.flag(
            Flag.EXTENSION_SERIAL_MISMATCH,
            f"the extension names a {record.product}, the unit found with its serial is a "
            f"{seen.product} (W9)",
        )
    return _SerialCheck(True, seen.first_seen, check_by)


def _assess(
    record: EntitlementRecord, product: Product | None, standard_years: int, inherited: _Inherited
) -> _Assessment:
    """Every layer of one record, given what it inherits as a replacement."""
    asm = _Assessment()
    bought = record.purchase_date
    if bought is not None:
        _standard(bought, standard_years, asm)
        _extension(record, bought, standard_years, product, asm)
        _reseller(record, bought, product, asm)
    _replacement(record, inherited, asm)  # before SELECT: it counts as coverage for S8
    if bought is not None:
        if _has_select(record):
            _select(record, bought, product, asm)
    elif not asm.layers or record.extension_years or record.reseller_until or _has_select(record):
        asm.flag(Flag.UNKNOWN_PURCHASE_DATE, "no purchase date in the entitlement record")
    return asm


class _Evaluator:
    """Evaluates units against one set of records; remembers replaced units' coverage so
    that chains are resolved once per run."""

    def __init__(
        self, records: Mapping[str, EntitlementRecord], catalog: Catalog, today: date, expiring_days: int
    ) -> None:
        if expiring_days < 0:
            raise ValueError("expiring_days must be 0 or more")
        self.records = records
        self.catalog = catalog
        self.today = today
        self.expiring_days = expiring_days
        #: ``covered_until`` of the units some replacement names as replaced (each link of a
        #: chain once); only those: a run over millions of records keeps no entry for each.
        self._until: dict[tuple[str, str | None], date | None] = {}
        self._products: dict[str | None, tuple[Product | None, int]] = {}

    def _product(self, name: str | None) -> tuple[Product | None, int]:
        """The catalog entry (``None`` when unknown) and its standard warranty length (W1)."""
        found = self._products.get(name)
        if found is None:
            found = self._products[name] = (self.catalog.get(name), self.catalog.warranty_years(name))
        return found

    def verdict(
        self,
        serial: str | None,
        product_name: str | None,
        record: EntitlementRecord | None,
        seen: Sighting | None = None,
    ) -> Verdict:
        """``product_name`` is the product a scan found (``None``: the record's own ``product``
        is judged, when it names one); ``seen`` whether and when a scan found a unit with the
        serial (W9)."""
        if product_name is None and seen is not None:
            product_name = seen.product  # a unit scans found once, no longer in the inventory
        if record is None:
            return self._no_record(serial, product_name)
        # The product judged: the one found, unless the catalog cannot name it (an unknown or
        # generic unit), then the one the record names.
        found, _ = self._product(product_name)
        named = found is not None and not found.generic
        judged = product_name if named or record.product is None else record.product
        product, years = self._product(judged)
        inherited = self._inherited(record, judged, product, years)
        asm = _assess(record, product, years, inherited)
        check = _serial_check(
            record, seen if named or seen is None else replace(seen, product=""), self.today, asm
        )
        covered_until = asm.covered_until
        status = self._status(covered_until, record.purchase_date is not None)
        return Verdict(
            serial,
            product_name if product_name is not None else record.product,
            status,
            covered_until,
            asm.ordered_layers(),
            asm.sorted_flags(),
            _reason(status, asm),
            check.verified,
            check.first_seen,
            check.check_by,
        )

    def _no_record(self, serial: str | None, product_name: str | None) -> Verdict:
        flags = (str(Flag.NO_ENTITLEMENT_RECORD), str(Flag.UNKNOWN_PURCHASE_DATE))
        return Verdict(
            serial,
            product_name,
            Status.UNKNOWN,
            None,
            (),
            tuple(sorted(flags)),
            "coverage unknown; no entitlement record for this serial",
        )

    def _status(self, covered_until: date | None, has_purchase_date: bool) -> Status:
        if covered_until is None:
            return Status.OUT_OF_WARRANTY if has_purchase_date else Status.UNKNOWN
        if self.today > covered_until:
            return Status.OUT_OF_WARRANTY
        if (covered_until - self.today).days < self.expiring_days:
            return Status.EXPIRING_SOON
        return Status.IN_WARRANTY

    def _inherited(
        self, record: EntitlementRecord, product_name: str | None, product: Product | None, years: int
    ) -> _Inherited:
        """The replaced unit's ``covered_until`` (W8, S11), following the chain iteratively."""
        replaced = record.replaced_serial
        if replaced is None:
            return _NO_INHERITANCE
        chain: list[EntitlementRecord] = []  # replaced units, nearest first
        seen = {record.serial}
        current, end_until, flag = record, None, None
        while current.replaced_serial is not None:
            key = current.replaced_serial
            if (key, product_name) in self._until:
                end_until = self._until[(key, product_name)]
                break
            if key in seen:
                flag = Flag.REPLACEMENT_CYCLE
                replaced = key
                break
            previous = self.records.get(key)
            if previous is None:
                if current is record:
                    flag = Flag.REPLACED_UNIT_UNKNOWN
                break
            seen.add(key)
            chain.append(previous)
            current = previous
        for link in reversed(chain):  # the far end first: each link inherits from the next
            link_until = _assess(link, product, years, _Inherited(end_until)).covered_until
            if flag is None:
                self._until[(link.serial, product_name)] = link_until
            end_until = link_until
        if end_until is None and flag is None:
            flag = Flag.REPLACED_UNIT_COVERAGE_UNKNOWN
        return _Inherited(end_until, flag, replaced)


def _reason(status: Status, asm: _Assessment) -> str:
    """One human line: the layer that decides ``covered_until``, then why others are missing."""
    deciding = asm.deciding
    if deciding is None:
        head = "coverage unknown" if status is Status.UNKNOWN else "no coverage"
    else:
        label, rule = _LABELS[deciding.kind]
        if deciding.kind is LayerKind.SELECT and Flag.SELECT_AGE_CAP in asm.flags:
            rule = "S7"  # the 5-year age limit, not the term, ends it
        verb = "ended" if status is Status.OUT_OF_WARRANTY else "until"
        head = f"{label} {verb} {deciding.until.isoformat()} ({rule})"
    return "; ".join([head, *asm.notes]) if asm.notes else head


def evaluate(
    serial: str | None,
    product: str | None,
    record: EntitlementRecord | None,
    records: Mapping[str, EntitlementRecord],
    catalog: Catalog,
    today: date,
    *,
    expiring_days: int = DEFAULT_EXPIRING_DAYS,
    seen: Sighting | None = None,
) -> Verdict:
    """The coverage verdict of one unit on ``today``.

    ``record`` is the unit's entitlement record (``None`` when the import has none: status
    ``unknown``, flags ``no-entitlement-record`` and ``unknown-purchase-date``); ``records`` is
    the whole import, used to follow replacements (W8, S11); ``seen`` when a scan found a unit
    with the serial (W9: ``None``, never).
    """
    return _Evaluator(records, catalog, today, expiring_days).verdict(serial, product, record, seen)


def evaluate_all(
    units: Iterable[tuple[str | None, str | None]],
    records: Mapping[str, EntitlementRecord],
    catalog: Catalog,
    today: date,
    *,
    expiring_days: int = DEFAULT_EXPIRING_DAYS,
    sightings: Mapping[str, Sighting] | None = None,
) -> list[Verdict]:
    """Verdicts for many ``(serial, product)`` units, in the order given; each unit's record is
    ``records.get(serial)``, its sighting (W9) ``sightings.get(normalised serial)``.
    Replacement chains are resolved once for the whole run."""
    evaluator = _Evaluator(records, catalog, today, expiring_days)
    get = records.get
    found = sightings.get if sightings else lambda _key: None
    return [
        evaluator.verdict(
            serial,
            product,
            get(serial) if serial else None,
            found(normalize_serial(serial)) if serial else None,
        )
        for serial, product in units
    ]


# --------------------------------------------------------------------------- records as units

#: Verdicts :class:`RowVerdicts` keeps, one per shape: more than a file of plain rows has shapes
#: (every purchase day of a decade, in a dozen countries, of two kinds of customer), a bound
#: for a file where nearly every row is a shape of its own (those rows are worked out each).
MAX_SHAPES = 100_000


def _compact(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=str).encode()


class RowVerdicts:
    """The verdicts of entitlement records as units of unknown product — the units no scan
    found, which ``roomsync coverage``, ``/v1/coverage`` and the ``roomsync_coverage_units``
    metric list after the inventory's — on one day, without an object held for each record:
    a 50 MB file holds about 1.85 M records.

    Records of one shape (:meth:`agent.entitlements.Entitlements.shapes`: equal but for their
    serials and their contracts' texts) get one verdict, worked out once, and listed under
    each one's serial; a replacement is worked out on its own. The counts per status over all
    records are worked out once too; the counts of the records no scan found are those less
    the records of the few units it did (``skip``)."""

    def __init__(
        self,
        records: Mapping[str, EntitlementRecord],
        catalog: Catalog,
        today: date,
        *,
        expiring_days: int = DEFAULT_EXPIRING_DAYS,
    ) -> None:
        self.records = records if isinstance(records, Entitlements) else Entitlements(records)
        self.today = today
        self._evaluator = _Evaluator(self.records, catalog, today, expiring_days)
        self._by_shape: dict[Hashable, Verdict] = {}
        #: Each shape's verdict as JSON but its serial (:meth:`texts`).
        self._texts: dict[Hashable, bytes] = {}
        self._counts: tuple[dict[Status, int], dict[tuple[str, ...], int]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def _verdict(self, key: str, shape: Hashable | None) -> Verdict:
        """The verdict of ``key``'s record; one of another record of the same shape (with
        that one's serial) when one was worked out already."""
        if shape is not None:
            found = self._by_shape.get(shape)
            if found is not None:
                return found
        record = self.records[key]
        verdict = self._evaluator.verdict(record.serial, None, record)
        if shape is not None and len(self._by_shape) < MAX_SHAPES:
            self._by_shape[shape] = verdict
        return verdict

    def verdict(self, serial: str, seen: Sighting | None = None) -> Verdict | None:
        """The verdict of ``serial``'s record as a unit of unknown product (``seen``: a scan
        found it once, W9); ``None`` without a record."""
        record = self.records.get(serial)
        return None if record is None else self._evaluator.verdict(record.serial, None, record, seen)

    def shared(
        self, start: int = 0, *, skip: Collection[str] = (), seen: Mapping[str, Sighting] | None = None
    ) -> Iterator[tuple[str, Verdict]]:
        """Each record's serial and verdict from position ``start`` on (the file's order), but
        of those whose key (normalised serial) is in ``skip``; records of one shape get the
        same verdict object, which carries the serial of one of them. A record whose key is
        in ``seen`` (a unit scans found once, no longer in the inventory: W9) is worked out on
        its own."""
        by_shape = self._by_shape
        for key, serial, shape in self.records.shapes(start):
            if key in skip:
                continue
            sighting = seen.get(key) if seen else None
            if sighting is not None:
                yield serial, self._evaluator.verdict(serial, None, self.records[key], sighting)
                continue
            verdict = by_shape.get(shape) if shape is not None else None
            yield serial, verdict or self._verdict(key, shape)

    def verdicts(
        self, start: int = 0, *, skip: Collection[str] = (), seen: Mapping[str, Sighting] | None = None
    ) -> Iterator[Verdict]:
        """:meth:`shared`, each verdict with its record's serial."""
        for serial, verdict in self.shared(start, skip=skip, seen=seen):
            yield verdict if verdict.serial == serial else replace(verdict, serial=serial)

    def texts(
        self, start: int = 0, *, skip: Collection[str] = (), seen: Mapping[str, Sighting] | None = None
    ) -> Iterator[bytes]:
        """:meth:`verdicts` as compact JSON (:meth:`Verdict.to_dict`): the verdict of a shape
        encoded once and kept for every later call (of at most :data:`MAX_SHAPES` shapes),
        each record's serial put in. (Not for two threads at once: the daemon's API thread
        alone lists records.)"""
        rests = self._texts
        by_shape = self._by_shape
        for key, serial, shape in self.records.shapes(start):
            if key in skip:
                continue
            sighting = seen.get(key) if seen else None
            if sighting is not None:
                yield _compact(self._evaluator.verdict(serial, None, self.records[key], sighting).to_dict())
                continue
            rest = rests.get(shape) if shape is not None else None
            if rest is None:
                verdict = (by_shape.get(shape) if shape is not None else None) or self._verdict(key, shape)
                fields = verdict.to_dict()
                del fields["serial"]  # its first key: put back first
                rest = _compact(fields)[1:]
                if shape is not None and len(rests) < MAX_SHAPES:
                    rests[shape] = rest
            name = serial.encode() if serial.isascii() and serial.isalnum() else _compact(serial)[1:-1]
            yield b'{"serial": "' + name + b'", ' + rest

    def groups(
        self, *, skip: Collection[str] = (), seen: Mapping[str, Sighting] | None = None
    ) -> list[tuple[Verdict, list[str]]]:
        """The records' serials (but of those whose key is in ``skip``), in the file's order,
        grouped by the verdict they share (:meth:`shared`): a list to sort without a verdict
        made for each record."""
        groups: dict[int, tuple[Verdict, list[str]]] = {}  # by id: each verdict is kept in it
        for serial, verdict in self.shared(skip=skip, seen=seen):
            group = groups.get(id(verdict))
            if group is None:
                group = groups[id(verdict)] = (verdict, [])
            group[1].append(serial)
        return list(groups.values())

    def counts(self, *, skip: Collection[str] = ()) -> dict[Status, int]:
        """How many records have each status (every status listed), but of those whose key
        (normalised serial) is in ``skip``: the units a scan found, which have verdicts of
        their own."""
        counts = dict(self._tally()[0])
        for key in skip:
            found = self.verdict(key)
            if found is not None:
                counts[found.status] -= 1
        return counts

    def flag_counts(
        self, *, skip: Collection[str] = (), seen: Mapping[str, Sighting] | None = None
    ) -> dict[str, int]:
        """How many records carry each flag, but of those in ``skip``, and with the records
        in ``seen`` as :meth:`shared` gives them (verified, W9); worked out in the one pass
        over the records that :meth:`counts` makes."""
        tally: dict[str, int] = {}
        for flags, count in self._tally()[1].items():
            for flag in flags:
                tally[flag] = tally.get(flag, 0) + count

        def add(flags: Iterable[str], step: int) -> None:
            for flag in flags:
                tally[flag] = tally.get(flag, 0) + step

        for key in skip:
            found = self.verdict(key)
            if found is not None:
                add(found.flags, -1)
        for key, sighting in (seen or {}).items():
            if key in skip:
                continue
            plain, verified = self.verdict(key), self.verdict(key, sighting)
            if plain is not None and verified is not None:
                add(plain.flags, -1)
                add(verified.flags, 1)
        return {flag: count for flag, count in tally.items() if count}

    def _tally(self) -> tuple[dict[Status, int], dict[tuple[str, ...], int]]:
        """Records per status and per set of flags, over every record (one pass, kept)."""
        if self._counts is None:
            counts = dict.fromkeys(URGENCY, 0)
            flag_sets: dict[tuple[str, ...], int] = {}
            for _, verdict in self.shared():
                counts[verdict.status] += 1
                if verdict.flags:
                    flag_sets[verdict.flags] = flag_sets.get(verdict.flags, 0) + 1
            self._counts = (counts, flag_sets)
        return self._counts


# --------------------------------------------------------------------------- units


@dataclass(frozen=True, slots=True)
class CoverageUnit:
    """A unit that gets a coverage verdict: its serial (as read or as imported), its product
    (``None``: never seen, only in the entitlement records) and its room."""

    serial: str
    product: str | None = None
    room: str | None = None
    #: The day a scan first found it (UTC); ``None`` for an entitlement record no scan found
    #: and for a unit read through another (:class:`Sighting`).
    first_seen: date | None = None

    @property
    def sighting(self) -> Sighting | None:
        """What W9 checks: a unit a scan found (one of the inventory has a product)."""
        return Sighting(self.first_seen, self.product) if self.product is not None else None


def coverage_units(devices: Iterable[Device]) -> list[CoverageUnit]:
    """The inventory's units that get coverage verdicts: every unit with a serial, the
    peripherals under a device included (a Rally Bar's mic pods and Sight carry their own
    serials and warranties), each device followed by its children. Each serial once, compared
    as :func:`agent.sanitize.normalize_serial` compares serials; the first unit to carry it
    wins.

    ``roomsync coverage``, ``/v1/coverage`` and the ``roomsync_coverage_units`` metric list
    these units, then every entitlement record no unit of the inventory has (bought, but not
    found by any scan: a spare on the shelf, a unit in a room no source reaches, a lost one —
    the units an operator most needs to hear about), in the records' order, as units of
    unknown product (:class:`RowVerdicts`).
    """
    units: dict[str, CoverageUnit] = {}
    for device in devices:
        _add_unit(units, device, True)
    return list(units.values())


def _add_unit(units: dict[str, CoverageUnit], device: Device, top: bool) -> None:
    """:func:`coverage_units`' step: ``device`` then its children. (A module function, not a
    closure that calls itself: that is a reference cycle, and would hold every unit listed
    until the cyclic collector runs.)"""
    if device.serial:
        # A child's first_seen is when it was last read (agent/model.py facts_key).
        first = as_utc(device.first_seen).date() if top else None
        units.setdefault(
            normalize_serial(device.serial),
            CoverageUnit(device.serial, device.product, device.room, first),
        )
    for child in device.children:
        _add_unit(units, child, False)
