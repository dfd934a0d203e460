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

import operator
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from functools import cache
from itertools import accumulate, islice, repeat
from pathlib import Path
from typing import Any, TypeVar, overload

from agent.csvtext import CellError as _Bad
from agent.csvtext import CsvBlock, CsvFileError, CsvLayout, CsvReader, serial_cell
from agent.gcpause import paused_gc
from agent.sanitize import clean_text, is_placeholder_serial, normalize_serial

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
    "record_shape",
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
    "product",
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
    #: The product the row (an extension's confirmation) names: the catalog's name when the
    #: catalog knows it (matched without regard to case or spacing), else as written (W7, W9).
    product: str | None = None
    line: int | None = field(default=None, compare=False)


class EntitlementsError(CsvFileError):
    """The file was refused. ``problems`` lists every problem found, one line each
    (``file:line: column: what is wrong``); ``str()`` joins them with newlines."""


class Entitlements(Mapping[str, EntitlementRecord]):
    """Imported records keyed by normalised serial. Lookups normalise the asked serial
    (``ents[" abc1"]`` finds ``ABC1``).

    An imported file's records are kept packed (:class:`_Rows`: a file of millions of rows
    costs tens of MB, not GB) and built on lookup; records given in code are kept as given."""

    __slots__ = ("_records", "source")

    def __init__(
        self, records: Mapping[str, EntitlementRecord] | None = None, *, source: str = "<memory>"
    ) -> None:
        by_serial: dict[str, EntitlementRecord] = {}
        self._records: Mapping[str, EntitlementRecord] = by_serial
        self.source = source
        for key, record in (records or {}).items():
            by_serial[normalize_serial(key)] = record

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
    def _normalised(cls, records: Mapping[str, EntitlementRecord], source: str) -> Entitlements:
        """Records already keyed by :func:`normalize_serial` (an import's own result)."""
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

    def items(self) -> ItemsView[str, EntitlementRecord]:
        return self._records.items()  # an import's rows in order, without a lookup each

    def values(self) -> ValuesView[EntitlementRecord]:
        return self._records.values()

    def __repr__(self) -> str:
        return f"Entitlements({len(self)} records from {self.source})"

    def shapes(self, start: int = 0) -> Iterator[tuple[str, str, Hashable | None]]:
        """Each record's key (its normalised serial), its serial as given (an imported file's
        are normalised: the same) and its shape, in the file's order from record ``start``
        on. Two
        records of one import with equal shapes differ at most in their serials and in the
        texts (not the presence) of their contracts: as :func:`record_shape` tells (the
        shapes of an imported file are made from its packed columns instead, and compare
        with each other only). A replacement's shape is ``None``."""
        records = self._records
        if isinstance(records, _Rows):
            return records.shapes(start)
        return (
            (key, record.serial, record_shape(record)) for key, record in islice(records.items(), start, None)
        )

    def index_of(self, serial: str) -> int | None:
        """The position of ``serial``'s record among all records (the file's order), if it
        has one. (Records given in code: found by a walk through them.)"""
        records, key = self._records, normalize_serial(serial)
        if isinstance(records, _Rows):
            return records.index_of(key)
        return next((at for at, each in enumerate(records) if each == key), None)


def record_shape(record: EntitlementRecord) -> Hashable | None:
    """What a record's coverage verdict as a unit of unknown product depends on besides its
    serial: every value but the contracts' texts, of which only whether each is there
    (:mod:`agent.coverage` reads ``select_contract`` and ``reseller_contract`` for that alone,
    and ``tests/test_coverage_rows.py`` holds it to it). ``None`` for a replacement (its
    verdict follows the unit it replaced, so it is worked out on its own)."""
    if record.replaced_serial is not None:
        return None
    return (
        record.purchase_date,
        record.country,
        record.customer,
        record.extension_years,
        record.extension_purchased,
        bool(record.select_contract),
        record.select_order_date,
        record.select_activation_date,
        record.select_term_years,
        record.select_registered,
        bool(record.reseller_contract),
        record.reseller_until,
        record.replacement_date,
        record.product,
    )


def load_entitlements(
    path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, shift_days: int = 0
) -> Entitlements:
    """Read and check an entitlements CSV file; raise :class:`EntitlementsError` (every
    problem listed, nothing imported) when anything in it is wrong. The file is read a block
    at a time: the import's memory is its records, packed, whatever the file's size.

    ``shift_days`` moves every date of the file by that many days once it is checked (an
    example file read relative to today: ``[coverage] dates_relative_to``); the checks see
    the dates as written."""
    return _Import(str(path)).run(Path(path), max_bytes, shift_days)


def parse_entitlements(
    data: str | bytes, name: str = "<file>", *, max_bytes: int = MAX_FILE_BYTES, shift_days: int = 0
) -> Entitlements:
    """Check and import entitlements CSV content (bytes as read from a file, or text).
    ``name`` is used in messages; ``shift_days`` as :func:`load_entitlements`'s."""
    return _Import(name).run(data, max_bytes, shift_days)


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


def _parse_product(text: str) -> str:
    """A product name: the catalog's spelling when it knows the product (``rally bar`` is
    ``Rally Bar``), else the text as written (a product the catalog does not list)."""
    text = " ".join(_parse_text(text).split())
    if not text:
        raise _Bad("holds no product name")
    return _catalog_names().get(text.casefold(), text)


@cache
def _catalog_names() -> dict[str, str]:
    from agent.catalog import load_catalog

    return {name.casefold(): name for name in load_catalog().products}


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
    "product": _parse_product,
}
assert set(_PARSERS) == set(COLUMNS)


#: The entitlements file's columns, as the common CSV reader (:mod:`agent.csvtext`) reads them.
LAYOUT = CsvLayout(
    columns=COLUMNS,
    required={"serial": "the column is missing: every row needs the unit's serial"},
    example="e.g. serial,purchase_date",
    text_columns=frozenset({"select_contract", "reseller_contract"}),
)


# --- the import ------------------------------------------------------------------------------

#: Columns of few distinct values (at most 80,354 days, 249 countries, 100 numbers, 2 kinds of
#: customer): stored as a small code per row. The others (free text, serials) as text.
_CODED = frozenset(COLUMNS) - {"serial", "select_contract", "reseller_contract", "replaced_serial"}
#: Cell texts remembered per coded column (each parsed once): more than any valid file needs
#: (every day of the date range), a bound for a file of "007"-like numbers.
_MAX_CACHED = 100_000
#: File bytes per bucket of the serial index: a few serials a bucket, whatever the file.
_BYTES_PER_BUCKET = 256


class _Codes:
    """One coded column: each distinct cell text is parsed once (:meth:`code` raises what the
    parser raises) and a row stores the code of its value, an index into :attr:`values`
    (``0``: a blank cell)."""

    __slots__ = ("_by_text", "_by_value", "parse", "values")

    def __init__(self, parse: Callable[[str], Any]) -> None:
        self.parse = parse
        self.values: list[Any] = [None]
        self._by_value: dict[Any, int] = {}
        self._by_text: dict[str, int] = {"": 0}

    def code(self, text: str) -> int:
        code = self._by_text.get(text)
        if code is None:
            value = self.parse(text)
            code = self._by_value.setdefault(value, len(self.values))
            if code == len(self.values):
                self.values.append(value)
            if len(self._by_text) < _MAX_CACHED:
                self._by_text[text] = code
        return code

    def codes(self, cells: Sequence[str]) -> list[int] | None:
        """The code of each cell, or ``None`` when a cell's value is wrong."""
        codes = list(map(self._by_text.get, cells, repeat(-1)))
        if -1 in codes:  # a text not met before
            try:
                codes = [self.code(text) for text in cells]
            except _Bad:
                return None
        return codes

    def shift(self, step: timedelta) -> None:
        """Add ``step`` to every value (dates), in place. Only once the import is complete:
        nothing codes a cell after it, and the caches for that are dropped."""
        self.values[1:] = [value + step for value in self.values[1:]]
        self._by_value.clear()
        self._by_text.clear()

    def array(self, codes: Iterable[int]) -> array[int]:
        """``codes`` in as few bytes a code as the column's values need."""
        count = len(self.values)
        return array("B" if count <= 0x100 else "H" if count <= 0x10000 else "I", codes)


class _Block:
    """The rows of one block of the file, stored: their ``serials`` joined by line ends; for
    each coded column, its values (the column's table, shared) and a code per row; for each
    text column, its texts joined and where each row's text ends (``ends[i]:ends[i + 1]``; an
    empty text is a blank cell)."""

    __slots__ = ("coded", "lines", "serials", "texts")

    def __init__(
        self,
        serials: str,
        lines: range | array[int],
        coded: list[tuple[str, list[Any], array[int]]],
        texts: list[tuple[str, str, array[int]]],
    ) -> None:
        self.serials, self.lines, self.coded, self.texts = serials, lines, coded, texts

    def record(self, serial: str, line: int) -> EntitlementRecord:
        """The record of the row on ``line`` (``serial``'s)."""
        lines = self.lines
        row = lines.index(line) if isinstance(lines, range) else bisect_left(lines, line)
        return self.record_at(serial, row)

    def record_at(self, serial: str, row: int) -> EntitlementRecord:
        fields = {
            column: value for column, values, codes in self.coded if (value := values[codes[row]]) is not None
        }
        for column, text, ends in self.texts:
            start, end = ends[row], ends[row + 1]
            if end > start:
                fields[column] = text[start:end]
        return EntitlementRecord(serial=serial, line=self.lines[row], **fields)


class _Rows(Mapping[str, EntitlementRecord]):
    """The records of one import, packed, keyed by normalised serial; a record is built when
    it is looked up (two lookups give equal records, not one object).

    What one row costs: its serial and line number as text in the serial index, its serial
    again in its block (for iteration in the file's order), a byte or two per coded column,
    its texts. The index is a fixed number of buckets (by the file's size), each a string of
    entries ``LF serial TAB line``: a lookup is one hash and one ``str.find`` in a string of a
    few entries (a serial holds no white space, so no entry can be mistaken for another), and
    no Python object a row: a dict of 1.85 M serials and records took ~1.8 GB."""

    def __init__(self, columns: Iterable[str], size: int) -> None:
        present = [c for c in columns if c != "serial"]
        self.coded = {c: _Codes(_PARSERS[c]) for c in present if c in _CODED}
        self.text_columns = [c for c in present if c not in _CODED]
        buckets = 64
        while buckets * _BYTES_PER_BUCKET < size:
            buckets *= 2
        self._mask = buckets - 1
        self._buckets = [""] * buckets
        self._blocks: list[_Block] = []
        self._first_lines = array("I")  # the first line of each block
        self._first_rows = array("I")  # the index of each block's first row
        self._count = 0

    def shift_dates(self, days: int) -> date | None:
        """Move every date of the import by ``days``, once it is complete: a date column's
        table of values is shared by its blocks, and a uniform move keeps every code (and so
        every row's shape) as it was. A date the move would take out of the import's years is
        returned (as written), and nothing is moved."""
        step = timedelta(days=days)
        columns = [coded for column, coded in self.coded.items() if _PARSERS[column] is _parse_date]
        for coded in columns:
            for day in coded.values[1:]:
                try:
                    if not MIN_YEAR <= (day + step).year <= MAX_YEAR:
                        return day  # type: ignore[no-any-return]
                except OverflowError:
                    return day  # type: ignore[no-any-return]
        for coded in columns:
            coded.shift(step)
        return None

    # --- the serial index: every serial read, first line of each --------------------------------

    def first_line(self, serial: str) -> int | None:
        """The line ``serial`` was first read on, if it was."""
        bucket = self._buckets[hash(serial) & self._mask]
        at = bucket.find(f"\n{serial}\t")
        if at < 0:
            return None
        start = at + len(serial) + 2
        end = bucket.find("\n", start)
        return int(bucket[start:end] if end >= 0 else bucket[start:])

    def register(self, serial: str, line: int) -> None:
        """Note that ``serial`` (not read before) is on ``line``."""
        self._buckets[hash(serial) & self._mask] += f"\n{serial}\t{line}"

    def register_new(self, serials: list[str], lines: Sequence[int]) -> bool:
        """:meth:`register` each of ``serials`` (on ``lines``), when none was read before and
        none is repeated among them; otherwise register nothing and return false."""
        mask, buckets = self._mask, self._buckets
        for done, (serial, line) in enumerate(zip(serials, lines, strict=True)):
            slot = hash(serial) & mask
            bucket = buckets[slot]
            key = f"\n{serial}\t"
            if key in bucket:  # read before: take back this block's entries, the last first
                for gone, on in zip(reversed(serials[:done]), reversed(lines[:done]), strict=True):
                    undo = hash(gone) & mask
                    buckets[undo] = buckets[undo][: -len(f"\n{gone}\t{on}")]
                return False
            buckets[slot] = f"{bucket}{key}{line}"
        return True

    # --- the rows --------------------------------------------------------------------------------

    def append(
        self,
        serials: list[str],
        lines: Sequence[int],
        codes: dict[str, list[int]],
        texts: dict[str, list[str]],
    ) -> None:
        """Store rows (registered already): a code per row for each coded column, a text per
        row (``""``: blank) for each text column."""
        if not serials:
            return
        self._first_lines.append(lines[0])
        self._first_rows.append(self._count)
        self._blocks.append(
            _Block(
                "\n".join(serials),
                lines if isinstance(lines, range) else array("I", lines),
                [(c, coded.values, coded.array(codes[c])) for c, coded in self.coded.items()],
                [
                    (c, "".join(texts[c]), array("I", accumulate(map(len, texts[c]), initial=0)))
                    for c in texts
                ],
            )
        )
        self._count += len(serials)

    # --- the Mapping ----------------------------------------------------------------------------

    @overload
    def get(self, serial: str, /) -> EntitlementRecord | None: ...
    @overload
    def get(self, serial: str, /, default: EntitlementRecord | _T) -> EntitlementRecord | _T: ...

    def get(self, serial: str, /, default: object = None) -> object:
        line = self.first_line(serial)
        if line is None:
            return default
        return self._blocks[bisect_right(self._first_lines, line) - 1].record(serial, line)

    def __getitem__(self, serial: str) -> EntitlementRecord:
        record = self.get(serial)
        if record is None:
            raise KeyError(serial)
        return record

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, str) and self.first_line(serial) is not None

    def __iter__(self) -> Iterator[str]:
        for block in self._blocks:
            yield from block.serials.split("\n")

    def __len__(self) -> int:
        return self._count

    def items(self) -> ItemsView[str, EntitlementRecord]:
        return _RowItems(self)

    def values(self) -> ValuesView[EntitlementRecord]:
        return _RowValues(self)

    def records(self) -> Iterator[tuple[str, EntitlementRecord]]:
        """Every serial and its record, in the file's order (no index lookup)."""
        for block in self._blocks:
            for row, serial in enumerate(block.serials.split("\n")):
                yield serial, block.record_at(serial, row)

    # --- by position, by shape ------------------------------------------------------------------

    def index_of(self, serial: str) -> int | None:
        """The position of ``serial``'s row among all rows (the file's order), if it has one."""
        line = self.first_line(serial)
        if line is None:
            return None
        at = bisect_right(self._first_lines, line) - 1
        lines = self._blocks[at].lines
        row = lines.index(line) if isinstance(lines, range) else bisect_left(lines, line)
        return self._first_rows[at] + row

    def shapes(self, start: int = 0) -> Iterator[tuple[str, str, Hashable | None]]:
        """:meth:`Entitlements.shapes`, from the packed columns: a row's shape is the tuple of
        its codes and of whether each text is there."""
        at = max(bisect_right(self._first_rows, start) - 1, 0)
        for block, first in zip(self._blocks[at:], self._first_rows[at:], strict=True):
            serials = block.serials.split("\n")
            columns: list[Iterable[Any]] = [codes for _, _, codes in block.coded]
            replaced: list[bool] | None = None
            for column, _, ends in block.texts:
                present = list(map(operator.lt, ends, islice(ends, 1, None)))
                if column == "replaced_serial":
                    replaced = present
                else:
                    columns.append(present)
            keys: Iterator[Hashable | None] = (
                zip(*columns, strict=True) if columns else repeat((), len(serials))
            )
            if replaced is not None and any(replaced):
                keys = (None if gone else key for key, gone in zip(keys, replaced, strict=True))
            skip = max(start - first, 0)
            rows = islice(serials, skip, None)
            yield from zip(rows, islice(serials, skip, None), islice(keys, skip, None), strict=True)


class _RowItems(ItemsView[str, EntitlementRecord]):
    _mapping: _Rows

    def __iter__(self) -> Iterator[tuple[str, EntitlementRecord]]:
        return self._mapping.records()


class _RowValues(ValuesView[EntitlementRecord]):
    _mapping: _Rows

    def __iter__(self) -> Iterator[EntitlementRecord]:
        return (record for _, record in self._mapping.records())


class _Import:
    """One import run: collects every problem, stores records only while there are none.

    A block of the file (:class:`agent.csvtext.CsvBlock`) is checked column by column
    (:meth:`block`): each distinct date, country… parsed once, serials checked together. A
    block where anything is wrong, or unusual, is read again row by row (:meth:`rows`), which
    reports every problem in the file's order; the quick check only ever accepts what that
    would accept, with the same values."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.csv = CsvReader(name, LAYOUT, EntitlementsError)
        self.problem = self.csv.problem

    def run(self, data: str | bytes | Path, max_bytes: int, shift_days: int = 0) -> Entitlements:
        blocks = self.csv.blocks(data, max_bytes)
        self.store = _Rows((c for c in self.csv.columns if c is not None), self.csv.size)
        with paused_gc():  # blocks of short-lived cells and lists, none in a cycle
            for block in blocks:
                if not self.block(block):
                    self.rows(block)
        self.csv.refuse()
        if shift_days:
            moved = self.store.shift_dates(shift_days)
            if moved is not None:
                raise EntitlementsError(
                    [
                        f"{self.name}: moved {shift_days:+d} days (an example file's dates_relative_to),"
                        f" {moved} leaves the years {MIN_YEAR}-{MAX_YEAR}"
                    ]
                )
        return Entitlements._normalised(self.store, self.name)

    def block(self, block: CsvBlock) -> bool:
        """Check and store a whole block: true when every row of it is right. Otherwise
        nothing of it is stored or reported, and false."""
        store, columns = self.store, block.columns
        serials = _plain_serials(columns["serial"])
        if serials is None:
            return False
        codes: dict[str, list[int]] = {}
        for column, coded in store.coded.items():
            found = coded.codes(columns[column])
            if found is None:
                return False
            codes[column] = found
        texts: dict[str, list[str]] = {}
        for column in store.text_columns:
            cells = columns[column]
            try:
                parsed = {text: _PARSERS[column](text) for text in set(cells) if text}
            except _Bad:
                return False
            texts[column] = list(map(parsed.get, cells, repeat(""))) if parsed else [""] * len(cells)
        if not self.rules_hold(serials, codes, texts) or not store.register_new(serials, block.lines):
            return False
        if not self.csv.problems:
            store.append(serials, block.lines, codes, texts)
        return True

    def rules_hold(
        self, serials: list[str], codes: dict[str, list[int]], texts: dict[str, list[str]]
    ) -> bool:
        """:meth:`row_rules` for every row of a block at once: true when no row breaks one."""
        if "replaced_serial" in texts or "replacement_date" in codes:
            replaced = texts.get("replaced_serial", [""] * len(serials))
            if any(map(operator.eq, replaced, serials)):  # a unit cannot replace itself
                return False
            dated = codes.get("replacement_date", [0] * len(serials))
            if list(map(bool, replaced)) != list(map(bool, dated)):  # W8: both or neither
                return False
        until, bought = codes.get("reseller_until"), codes.get("purchase_date")
        if until is None or bought is None:
            return True
        until_on, bought_on = (
            self.store.coded["reseller_until"].values,
            self.store.coded["purchase_date"].values,
        )
        return not any(
            until_on[u] < bought_on[b] for u, b in zip(until, bought, strict=True) if u and b
        )  # H1

    def rows(self, block: CsvBlock) -> None:
        """Check ``block`` row by row, as an import always did: every problem reported, in
        the file's order; rows stored while there is none."""
        store = self.store
        names = list(block.columns)
        serial_at = names.index("serial")
        serials: list[str] = []
        lines: list[int] = []
        codes: dict[str, list[int]] = {column: [] for column in store.coded}
        texts: dict[str, list[str]] = {column: [] for column in store.text_columns}
        for line, cells in zip(block.lines, zip(*block.columns.values(), strict=True), strict=True):
            values: dict[str, Any] = {}
            row_codes: dict[str, int] = {}
            ok = True
            for name, text in zip(names, cells, strict=True):
                if text:
                    try:
                        coded = store.coded.get(name)
                        if coded is None:
                            values[name] = _PARSERS[name](text)
                        else:
                            row_codes[name] = code = coded.code(text)
                            values[name] = coded.values[code]
                    except _Bad as exc:
                        self.problem(line, name, str(exc))
                        ok = False
            ok = self.row_rules(values, line) and ok
            serial = values.get("serial")
            if serial is None:
                if not cells[serial_at]:
                    self.problem(line, "serial", "is empty: every row needs the unit's serial")
                continue
            first = store.first_line(serial)
            if first is not None:
                self.problem(line, "serial", f"{serial!r} is a duplicate: already on line {first}")
                continue
            store.register(serial, line)
            if ok and not self.csv.problems:
                serials.append(serial)
                lines.append(line)
                for column, kept in codes.items():
                    kept.append(row_codes.get(column, 0))
                for column, kept_texts in texts.items():
                    kept_texts.append(values.get(column) or "")
        if not self.csv.problems:
            store.append(serials, lines, codes, texts)

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


def _plain_serials(cells: Sequence[str]) -> list[str] | None:
    """The serials of a block's cells, when every cell is a plain one (ASCII letters and
    digits, at most :data:`MAX_SERIAL_LEN`, not a placeholder): then :func:`_parse_serial`
    gives each upper-cased. ``None`` when one is not (the block is read row by row)."""
    joined = "".join(cells)
    if not (joined.isascii() and joined.isalnum() and all(cells)):
        return None
    if max(map(len, cells)) > MAX_SERIAL_LEN:
        return None
    serials = list(cells) if joined.upper() == joined else list(map(str.upper, cells))
    return None if any(map(is_placeholder_serial, serials)) else serials
