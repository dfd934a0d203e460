"""Entitlement records: the purchase and contract facts that coverage needs, imported from CSV.

A device never reports its purchase date or its contracts (domain.md, "What this means for the
agent"), so the operator imports them. This module reads that file; :mod:`agent.coverage` turns
a record into a verdict.

The file (for operators: ``docs/csv-formats.md``)
-------------------------------------------------
A CSV file in the dialect every operator CSV shares (:mod:`agent.csvtext`): a header row naming
the columns of :data:`COLUMNS` in any order; only ``serial`` is required, and a blank cell means
"not known". ``config/entitlements.example.csv`` is a worked example. What the import enforces,
so that every later verdict rests on clean data:

* dates are ``YYYY-MM-DD``, years 1980-2199; numbers whole, 0-99;
* ``country`` is an assigned ISO 3166 alpha-2 code, upper-cased (``UK`` refused: use ``GB``);
* ``customer`` is ``business`` (the default when blank) or ``consumer`` (W4);
* serials lose all white space and are upper-cased (``" 2313 fd1n08z2"`` is ``2313FD1N08Z2``),
  so two rows equal after this are duplicates; placeholders (``N/A``, ``0000000``…) are refused;
  lookups through :class:`Entitlements` normalise the asked serial the same way;
* ``select_contract`` and ``reseller_contract`` are text without control characters, at most
  128 characters;
* ``replaced_serial`` and ``replacement_date`` go together; a unit cannot replace itself;
  ``reseller_until`` cannot be before ``purchase_date``.

A file with any problem is refused as a whole: nothing is imported, and every problem is listed
as ``FILE:LINE: COLUMN: what is wrong`` in :class:`EntitlementsError` (line numbers are the
file's physical lines). At most 50 MB. The CLI exits with status 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, overload

from agent.csvtext import CellError as _Bad
from agent.csvtext import CsvFileError, CsvLayout, CsvReader, CsvRow, read_file, serial_cell
from agent.sanitize import clean_text, normalize_serial

__all__ = [
    "COLUMNS",
    "LAYOUT",
    "MAX_FILE_BYTES",
    "Customer",
    "EntitlementRecord",
    "Entitlements",
    "EntitlementsError",
    "load_entitlements",
    "normalize_serial",
    "parse_entitlements",
]

#: Largest file the import reads (a clear error beyond it, never a partial import).
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_NUMBER = 99
MIN_YEAR, MAX_YEAR = 1980, 2199
MAX_TEXT_LEN = 128
MAX_SERIAL_LEN = 64

_T = TypeVar("_T")

COLUMNS: tuple[str, ...] = (
    "serial",
    "purchase_date",
    "country",
    "customer",
    "extension_years",
    "extension_purchased",
    "select_contract",
    "select_order_date",
    "select_activation_date",
    "select_term_years",
    "select_registered",
    "reseller_contract",
    "reseller_until",
    "replaced_serial",
    "replacement_date",
)

# ISO 3166-1 alpha-2: the 249 assigned codes.
_ISO_CODES = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES = frozenset(_ISO_CODES.split())
# Codes people write that ISO does not assign (or reserves) for a country it does.
_COUNTRY_HINTS = {"UK": "GB", "EL": "GR", "EN": "GB"}


class Customer(StrEnum):
    """Who bought the unit (W4: the B2B extension is for business end customers only)."""

    BUSINESS = "business"
    CONSUMER = "consumer"


@dataclass(frozen=True, slots=True, kw_only=True)
class EntitlementRecord:
    """One imported row: what is known of one unit's purchase and contracts.

    ``None`` means the cell was blank. ``line`` is the physical line the row started on (for
    messages); it takes no part in equality.
    """

    serial: str
    purchase_date: date | None = None
    country: str | None = None
    customer: Customer = Customer.BUSINESS
    extension_years: int | None = None
    extension_purchased: date | None = None
    select_contract: str | None = None
    select_order_date: date | None = None
    select_activation_date: date | None = None
    select_term_years: int | None = None
    select_registered: date | None = None
    reseller_contract: str | None = None
    reseller_until: date | None = None
    replaced_serial: str | None = None
    replacement_date: date | None = None
    line: int | None = field(default=None, compare=False)


class EntitlementsError(CsvFileError):
    """The file was refused. ``problems`` lists every problem found, one line each
    (``file:line: column: what is wrong``); ``str()`` joins them with newlines."""


class Entitlements(Mapping[str, EntitlementRecord]):
    """Imported records keyed by normalised serial. Lookups normalise the asked serial
    (``ents[" abc1"]`` finds ``ABC1``)."""

    __slots__ = ("_records", "source")

    def __init__(
        self, records: Mapping[str, EntitlementRecord] | None = None, *, source: str = "<memory>"
    ) -> None:
        self._records: dict[str, EntitlementRecord] = {}
        self.source = source
        for key, record in (records or {}).items():
            self._records[normalize_serial(key)] = record

    @classmethod
    def of(cls, records: Iterable[EntitlementRecord], *, source: str = "<memory>") -> Entitlements:
        """Records built in code (the portal, tests); a repeated serial is an error."""
        by_serial: dict[str, EntitlementRecord] = {}
        problems = []
        for record in records:
            key = normalize_serial(record.serial)
            if key in by_serial:
                problems.append(f"{source}: serial: {key!r} is listed twice")
            by_serial[key] = record
        if problems:
            raise EntitlementsError(problems)
        return cls._normalised(by_serial, source)

    @classmethod
    def _normalised(cls, records: dict[str, EntitlementRecord], source: str) -> Entitlements:
        """Records already keyed by :func:`normalize_serial` (the import's own result)."""
        made = cls(source=source)
        made._records = records
        return made

    def __getitem__(self, serial: str) -> EntitlementRecord:
        record = self._records.get(serial)
        if record is None:
            return self._records[normalize_serial(serial)]
        return record

    @overload
    def get(self, serial: str, /) -> EntitlementRecord | None: ...
    @overload
    def get(self, serial: str, /, default: EntitlementRecord | _T) -> EntitlementRecord | _T: ...

    def get(self, serial: str, /, default: object = None) -> object:
        # Mapping.get without a KeyError per miss: units with no record are common.
        record = self._records.get(serial)
        if record is None:
            return self._records.get(normalize_serial(serial), default)
        return record

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, str) and (
            serial in self._records or normalize_serial(serial) in self._records
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"Entitlements({len(self)} records from {self.source})"


def load_entitlements(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> Entitlements:
    """Read and check an entitlements CSV file; raise :class:`EntitlementsError` (every
    problem listed, nothing imported) when anything in it is wrong."""
    return parse_entitlements(read_file(path, max_bytes, EntitlementsError), str(path), max_bytes=max_bytes)


def parse_entitlements(
    data: str | bytes, name: str = "<file>", *, max_bytes: int = MAX_FILE_BYTES
) -> Entitlements:
    """Check and import entitlements CSV content (bytes as read from a file, or text).
    ``name`` is used in messages."""
    return _Import(name).run(data, max_bytes)


# --- cell parsers: each takes the stripped, non-empty cell text ---------------------------


def _parse_date(text: str) -> date:
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        raise _Bad(f"{text!r} is not a date in the form YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise _Bad(f"{text!r} is not a real date (YYYY-MM-DD)") from None
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise _Bad(f"{text!r} is out of range (years {MIN_YEAR}-{MAX_YEAR})")
    return day


def _parse_count(text: str) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value > MAX_NUMBER:
            raise _Bad(f"{text!r} is too large (at most {MAX_NUMBER})")
        return value
    if text.startswith("-") and text[1:].isascii() and text[1:].replace(".", "", 1).isdigit():
        raise _Bad(f"{text!r} is negative (expected a whole number of 0 or more)")
    raise _Bad(f"{text!r} is not a whole number")


def _parse_country(text: str) -> str:
    code = text.upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise _Bad(f"{text!r} is not a two-letter ISO 3166 country code (e.g. NO, GB, US)")
    if code not in ISO_COUNTRIES:
        hint = _COUNTRY_HINTS.get(code)
        raise _Bad(f"{text!r} is not an ISO 3166 country code" + (f" (use {hint})" if hint else ""))
    return code


_CUSTOMERS = {c.value: c for c in Customer}


def _parse_customer(text: str) -> Customer:
    customer = _CUSTOMERS.get(text.lower())
    if customer is None:
        raise _Bad(f"{text!r} is not 'business' or 'consumer'")
    return customer


def _parse_text(text: str) -> str:
    if not text.isprintable():
        cleaned = clean_text(text, max_len=len(text)).value
        if cleaned is None:
            raise _Bad("holds only control characters")
        text = cleaned
    if len(text) > MAX_TEXT_LEN:
        raise _Bad(f"is longer than {MAX_TEXT_LEN} characters")
    return text


def _parse_serial(text: str) -> str:
    return serial_cell(text, MAX_SERIAL_LEN)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "serial": _parse_serial,
    "purchase_date": _parse_date,
    "country": _parse_country,
    "customer": _parse_customer,
    "extension_years": _parse_count,
    "extension_purchased": _parse_date,
    "select_contract": _parse_text,
    "select_order_date": _parse_date,
    "select_activation_date": _parse_date,
    "select_term_years": _parse_count,
    "select_registered": _parse_date,
    "reseller_contract": _parse_text,
    "reseller_until": _parse_date,
    "replaced_serial": _parse_serial,
    "replacement_date": _parse_date,
}
assert set(_PARSERS) == set(COLUMNS)


#: The entitlements file's columns, as the common CSV reader (:mod:`agent.csvtext`) reads them.
LAYOUT = CsvLayout(
    columns=COLUMNS,
    required={"serial": "the column is missing: every row needs the unit's serial"},
    example="e.g. serial,purchase_date",
    text_columns=frozenset({"select_contract", "reseller_contract"}),
)


class _Import:
    """One import run: collects every problem, builds records only while there are none."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.csv = CsvReader(name, LAYOUT, EntitlementsError)
        self.problem = self.csv.problem

    def run(self, data: str | bytes, max_bytes: int) -> Entitlements:
        records = self.rows(self.csv.read(data, max_bytes))
        self.csv.refuse()
        return Entitlements._normalised(records, self.name)

    def rows(self, rows: Iterator[CsvRow]) -> dict[str, EntitlementRecord]:
        records: dict[str, EntitlementRecord] = {}
        first_line: dict[str, int] = {}
        for line, cells in rows:
            values: dict[str, Any] = {}
            ok = True
            for name, text in cells.items():
                if text:
                    try:
                        values[name] = _PARSERS[name](text)
                    except _Bad as exc:
                        self.problem(line, name, str(exc))
                        ok = False
            ok = self.row_rules(values, line) and ok
            serial = values.get("serial")
            if serial is None:
                if not cells["serial"]:
                    self.problem(line, "serial", "is empty: every row needs the unit's serial")
                continue
            if serial in first_line:
                self.problem(
                    line, "serial", f"{serial!r} is a duplicate: already on line {first_line[serial]}"
                )
                continue
            first_line[serial] = line
            if ok and not self.csv.problems:
                records[serial] = EntitlementRecord(line=line, **values)
        return records

    def row_rules(self, values: dict[str, Any], line: int) -> bool:
        """Checks across the cells of one row. True when they pass."""
        ok = True
        replaced, replaced_on = values.get("replaced_serial"), values.get("replacement_date")
        if replaced is not None and replaced == values.get("serial"):
            self.problem(line, "replaced_serial", "is the row's own serial: a unit cannot replace itself")
            ok = False
        if replaced is not None and replaced_on is None:
            self.problem(line, "replacement_date", "is required when replaced_serial is given (W8)")
            ok = False
        if replaced_on is not None and replaced is None:
            self.problem(line, "replaced_serial", "is required when replacement_date is given (W8)")
            ok = False
        until, bought = values.get("reseller_until"), values.get("purchase_date")
        if until is not None and bought is not None and until < bought:
            self.problem(
                line,
                "reseller_until",
                f"{until.isoformat()} is before purchase_date {bought.isoformat()} (H1)",
            )
            ok = False
        return ok
