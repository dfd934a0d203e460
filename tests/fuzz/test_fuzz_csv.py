"""Fuzz: the CSV files operators hand the agent — entitlements (agent/entitlements.py), the
room map (agent/roommap.py) and what they share (agent/csvtext.py).

Inputs: random text and bytes; files with a valid header and random rows (cells that are
almost right: dates, numbers, countries, serials, hosts, addresses, CIDRs, room ids — and
garbage), ``,`` or ``;``, CRLF or LF, a byte-order mark, quoting, comments, padding; lines
with broken quoting for the common reader both files use.

Documented behaviour: a result, or the module's error class (:class:`EntitlementsError`,
:class:`RoomMapError`, :class:`CsvFileError`) with every problem listed, one line each, named
after the file — never another exception. What is imported is clean: serials normalised and
capped, texts without control characters, dates in range.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

from hypothesis import event, example, given
from hypothesis import strategies as st

from agent.csvtext import (
    MAX_ENCODING_PROBLEMS,
    CellError,
    CsvFileError,
    CsvLayout,
    CsvReader,
    file_text,
    serial_cell,
    split_cells,
)
from agent.entitlements import (
    COLUMNS as ENTITLEMENT_COLUMNS,
)
from agent.entitlements import (
    ISO_COUNTRIES,
    MAX_SERIAL_LEN,
    MAX_TEXT_LEN,
    MAX_YEAR,
    MIN_YEAR,
    EntitlementsError,
    parse_entitlements,
)
from agent.model import Device, Transport
from agent.roommap import COLUMNS as ROOM_COLUMNS
from agent.roommap import RoomMapError, parse_room_map, place, split_address
from agent.sanitize import normalize_serial
from tests.fuzz import fuzz, has_control_chars

NAME = "fuzzed.csv"

# --------------------------------------------------------------------------- cells

_ALMOST = st.sampled_from(
    [
        "2024-02-29",
        "2023-02-29",
        "2024-13-01",
        "1979-12-31",
        "2200-01-01",
        "24-01-01",
        "2024/01/01",
        "0",
        "99",
        "100",
        "-1",
        "1.5",
        "٣",
        "²",
        "１２",
        "NO",
        "no",
        "UK",
        "XX",
        "N0",
        "business",
        "Consumer",
        "other",
        "2313FD1N08Z2",
        " 2313 fd1n08z2 ",
        "N/A",
        "0000000",
        "",
        " ",
        "#comment",
        '"quoted"',
        "a,b",
        "a;b",
        "line\nbreak",
        "tab\there",
        "\x00",
        "\u202e",
        "\ufeff",
        "serial",
        "host",
        "address",
        "cidr",
        "room-pc-12",
        "room-pc-12.local.",
        "10.1.2.3",
        "10.1.2.3:22",
        "::1",
        "[::1]:22",
        "fe80::1%eth0",
        "::ffff:10.1.2.3",
        "10.1.2.0/24",
        "10.1.2.3/24",
        "::ffff:0:0/96",
        "2001:db8::/64",
        "oslo-4.12",
        "-bad",
        "x" * 65,
        "x" * 300,
        "10000",
        "10001",
    ]
)
CELLS = st.one_of(
    _ALMOST,
    st.text(max_size=30),
    st.dates(date(1900, 1, 1), date(2300, 1, 1)).map(str),
    st.integers(-5, 200).map(str),
)


def _render(header: list[str], rows: list[list[str]], delimiter: str, crlf: bool, quote_all: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=delimiter,
        lineterminator="\r\n" if crlf else "\n",
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    )
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@st.composite
def csv_files(draw: st.DrawFn, columns: tuple[str, ...]) -> str | bytes:
    """A file with a header of (mostly) known columns and random rows."""
    header = draw(
        st.lists(
            st.sampled_from(columns)
            | st.sampled_from(["", "Serial", "Purchase Date", "unknown", "room name"]),
            min_size=1,
            max_size=len(columns) + 2,
        )
    )
    if draw(st.booleans()) and columns[0] not in header:
        header.insert(0, columns[0])
    width = len(header)
    rows = draw(st.lists(st.lists(CELLS, min_size=max(0, width - 1), max_size=width + 2), max_size=8))
    text = _render(header, rows, draw(st.sampled_from([",", ";"])), draw(st.booleans()), draw(st.booleans()))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["# exported\n", "\n\n", "#a,b\n"])) + text
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode("utf-8") if draw(st.booleans()) else text


@st.composite
def valid_room_maps(draw: st.DrawFn) -> str:
    """A room map that should load (values unique per kind), to check the happy path holds."""
    rows = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["serial", "host", "address", "cidr"]))
        value = {
            "serial": f"SN{i:06d}",
            "host": f"room-pc-{i}",
            "address": f"10.1.{i}.1",
            "cidr": f"10.2.{i}.0/24",
        }[kind]
        rows.append([kind, value, f"room-{draw(st.integers(0, 3))}"])
    return _render(["match", "value", "room"], rows, ",", False, False)


_DAYS = st.dates(date(MIN_YEAR, 1, 1), date(MAX_YEAR - 1, 12, 31))
_GOOD_CELLS = {
    "country": st.sampled_from(sorted(ISO_COUNTRIES)),
    "customer": st.sampled_from(["business", "consumer", "Business", ""]),
    "extension_years": st.integers(0, 99).map(str),
    "select_term_years": st.integers(0, 99).map(str),
    "select_contract": st.text(max_size=40),
    "reseller_contract": st.text(max_size=40),
}


@st.composite
def entitlement_files(draw: st.DrawFn) -> str:
    """Entitlement files whose cells are right for their column (so rows import and the
    cross-cell rules run), with the odd wrong cell."""
    header = ["serial", *draw(st.lists(st.sampled_from(ENTITLEMENT_COLUMNS[1:]), unique=True, max_size=8))]
    header = draw(st.permutations(header))
    rows = []
    for i in range(draw(st.integers(1, 8))):
        bought = draw(_DAYS)
        cells = {
            "serial": f"{draw(st.from_regex(r'[0-9A-Z]{6}', fullmatch=True))}{i:04d}",
            "purchase_date": str(bought),
            "reseller_until": str(bought + timedelta(days=draw(st.integers(0, 2000)))),
        }
        if draw(st.booleans()) and {"replaced_serial", "replacement_date"} <= set(header):
            cells["replaced_serial"], cells["replacement_date"] = f"OLD{i:06d}", str(draw(_DAYS))
        row = []
        for column in header:
            if column in cells:
                good: st.SearchStrategy[str] = st.just(cells[column])
            elif column in ("replaced_serial", "replacement_date"):
                good = st.just("")
            else:
                good = _GOOD_CELLS.get(column, _DAYS.map(str) | st.just(""))
            wrong = draw(st.integers(0, 39)) == 0
            row.append(draw(CELLS if wrong else good))
        rows.append(row)
    return _render(header, rows, draw(st.sampled_from([",", ";"])), draw(st.booleans()), False)


RANDOM_BYTES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400),
    st.binary(max_size=200).map(lambda b: b"\xff\xfe" + b),
    st.lists(st.binary(max_size=20), max_size=40).map(b"\n".join),
)


def _check_problems(exc: CsvFileError) -> None:
    assert exc.problems, "refused without a reason"
    for line in exc.problems:
        assert isinstance(line, str) and line.startswith(NAME), line
    assert str(exc) == "\n".join(exc.problems)


# --------------------------------------------------------------------------- entitlements


@fuzz(140)
@given(st.one_of(csv_files(ENTITLEMENT_COLUMNS), RANDOM_BYTES, entitlement_files()))
@example("serial\n\x00\n")
@example("serial,purchase_date\nA1B2C3,2024-02-30\n")
@example('serial\n"unterminated\n')
@example("\ufeffserial;country\n2313FD1N08Z2;uk\n")
@example(b"serial\n\xff\n" * 30)
def test_entitlements_import_or_refuse_with_every_problem(data: str | bytes) -> None:
    try:
        records = parse_entitlements(data, NAME)
    except EntitlementsError as exc:
        _check_problems(exc)
        event("refused")
        return
    event("imported" if records else "imported, empty")
    for key, record in records.items():
        assert key == record.serial == normalize_serial(record.serial)
        assert 0 < len(record.serial) <= MAX_SERIAL_LEN and record.serial.isprintable()
        assert record.serial in records
        for day in (
            record.purchase_date,
            record.extension_purchased,
            record.select_order_date,
            record.select_activation_date,
            record.select_registered,
            record.reseller_until,
            record.replacement_date,
        ):
            assert day is None or MIN_YEAR <= day.year <= MAX_YEAR
        for text in (record.select_contract, record.reseller_contract):
            assert text is None or (len(text) <= MAX_TEXT_LEN and not has_control_chars(text))


@fuzz(100)
@given(st.text(max_size=80))
@example("\u3000\u2028")
@example("ß")  # upper-cases to two letters
def test_serial_cells_are_normalised_or_refused(text: str) -> None:
    try:
        serial = serial_cell(text)
    except CellError as exc:
        assert str(exc)
        return
    assert serial == normalize_serial(serial) and len(serial) <= 64 and serial.isprintable()


# --------------------------------------------------------------------------- room map


def _probe_device(address: str) -> Device:
    return Device(
        product="p",
        transport=Transport.SNMP,
        address=address,
        first_seen=_T0,
        last_seen=_T0,
        serial="SN000001",
        attributes={"host": "room-pc-1.local.", "addresses": ["10.1.1.1"]},
    )


_T0 = datetime(2026, 1, 1, tzinfo=UTC)


@fuzz(140)
@given(st.one_of(csv_files(ROOM_COLUMNS), RANDOM_BYTES, valid_room_maps()), CELLS)
@example("match,value,room\ncidr,10.1.2.3/24,a\n", "10.1.2.3")
@example("match,value,room\naddress,fe80::1%eth0,a\n", "[fe80::1]:22")
@example("match,value,room\nhost,\u00e9.local,a\n", "x")
@example('match,value,room\n#x,y,z\n"#q",v,r\n', "x")
def test_room_map_reads_or_refuses_with_every_problem(data: str | bytes, address: str) -> None:
    try:
        room_map = parse_room_map(data, NAME)
    except RoomMapError as exc:
        _check_problems(exc)
        event("refused")
        return
    event("read" if room_map.rules else "read, no rules")
    for rule in room_map.rules:
        assert rule.value and rule.room and not has_control_chars(rule.value)
    for room in room_map.rooms.values():
        assert room.seat_count is None or 0 <= room.seat_count <= 10_000
    # The map then places any device without raising.
    found = place(_probe_device(address), room_map)
    assert found is None or found in {r.room for r in room_map.rules}


@fuzz(140)
@given(st.one_of(CELLS, st.text(max_size=60)))
def test_split_address_understands_or_gives_nothing(address: str) -> None:
    host, ip = split_address(address)
    assert host is None or ip is None
    assert host is None or host == host.strip().lower()


@fuzz(70)
@given(valid_room_maps())
def test_a_valid_room_map_loads(text: str) -> None:
    try:
        parse_room_map(text, NAME)
    except RoomMapError as exc:
        # Only a room with no rule and no details is refused; the generator never makes one.
        raise AssertionError(exc.problems) from None


# --------------------------------------------------------------------------- csvtext


@fuzz(140)
@given(
    st.one_of(RANDOM_BYTES, st.lists(st.binary(max_size=3), max_size=200).map(b"\n".join)),
    st.integers(0, 500),
)
@example(b"\xff\n" * 100, 500)
def test_file_text_decodes_or_lists_the_undecodable_lines(data: str | bytes, max_bytes: int) -> None:
    try:
        text = file_text(data, NAME, max_bytes)
    except CsvFileError as exc:
        _check_problems(exc)
        assert len(exc.problems) <= MAX_ENCODING_PROBLEMS + 1
        return
    assert not text.startswith("\ufeff")
    assert len(data) <= max_bytes


_LAYOUT = CsvLayout(
    columns=("key", "note", "other"),
    required={"key": "the column is missing"},
    example="key,note",
    text_columns=frozenset({"note"}),
)
_SYNTAX = st.sampled_from(['"', '""', '"a"b', ' "', "#", ",", ";", "\t", "\r", "\n", "\r\n", "\x00", " "])


@fuzz(140)
@given(
    st.lists(st.one_of(_SYNTAX, st.text(max_size=8)), max_size=60).map("".join),
    st.sampled_from(["key,note,other\n", "note;key\r\n", "# c\nkey\tnote\n", ""]),
)
@example('"x\n', "key,note\n")
@example('a,"b\n' * 50 + '"\n', "key,note\n")
def test_the_common_reader_reads_rows_or_lists_problems_with_their_lines(body: str, header: str) -> None:
    text = header + body
    reader = CsvReader(NAME, _LAYOUT)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    try:
        rows = list(reader.read(text, 10_000))
    except CsvFileError as exc:
        _check_problems(exc)
        return
    for problem in reader.problems:
        assert problem.startswith(NAME)
        number = int(problem.split(":")[1])
        assert 1 <= number <= len(lines), problem
    for line, cells in rows:
        assert 1 <= line <= len(lines)
        assert set(cells) <= set(_LAYOUT.columns) and "key" in cells
        assert all(c == c.strip() and "\n" not in c and "\r" not in c for c in cells.values())


@fuzz(140)
@given(
    st.lists(st.text(max_size=12).filter(lambda t: "\n" not in t and "\r" not in t), min_size=1, max_size=6)
)
@example(["", ""])
@example(['"', ' "x" '])
def test_split_cells_reads_back_what_csv_writer_wrote(cells: list[str]) -> None:
    """Cells written by Python's csv module (Excel's quoting) split back unchanged, surrounding
    space aside (the reader ignores it)."""
    for delimiter in (",", ";", "\t"):
        out = io.StringIO()
        csv.writer(out, delimiter=delimiter, lineterminator="").writerow(cells)
        assert [c.strip(" ") for c in split_cells(out.getvalue(), delimiter)] == [c.strip(" ") for c in cells]
