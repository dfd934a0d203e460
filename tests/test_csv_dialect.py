"""One CSV dialect for every operator file (agent/csvtext.py, docs/csv-formats.md): the same
text fed to the room-map reader and to the entitlements reader reads the same, or is refused
with the same problems.

Each case is written in two abstract columns, KEY (a serial: the room map's ``value``, the
entitlements' ``serial``) and TEXT (free text: ``room_name``, ``select_contract``); each reader
adds two columns of its own with fixed, valid cells. A reading is ``(line, key, text)`` per
row; problems name the columns KEY and TEXT.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.csvtext import CsvFileError, delimiter_of, split_cells
from agent.entitlements import parse_entitlements
from agent.roommap import parse_room_map
from agent.sanitize import is_placeholder_serial

NAME = "f.csv"

Reading = list[tuple[int, str, str | None]]


@dataclass(frozen=True)
class Reader:
    """One of the two readers, seen through the KEY and TEXT columns."""

    name: str
    key: str
    text: str
    extra_columns: tuple[str, str]
    extra: Callable[[int], tuple[str, str]]  # the row's own two cells, from its number
    read: Callable[[str | bytes], Reading]

    def problems(self, data: str | bytes) -> list[str]:
        with pytest.raises(CsvFileError) as caught:
            self.read(data)
        out = []
        for problem in caught.value.problems:
            for column, abstract in ((self.key, "KEY"), (self.text, "TEXT")):
                problem = re.sub(rf"(: | than ){column}(: | first)", rf"\g<1>{abstract}\g<2>", problem)
            out.append(problem)
        return out


def _read_room_map(data: str | bytes) -> Reading:
    room_map = parse_room_map(data, NAME)
    return [(r.line or 0, r.value, room_map.rooms[r.room].name) for r in room_map.rules]


def _read_entitlements(data: str | bytes) -> Reading:
    ents = parse_entitlements(data, NAME)
    return sorted((r.line or 0, r.serial, r.select_contract) for r in ents.values())


ROOM_MAP = Reader(
    "room map", "value", "room_name", ("match", "room"), lambda n: ("serial", f"r{n}"), _read_room_map
)
ENTITLEMENTS = Reader(
    "entitlements",
    "serial",
    "select_contract",
    ("customer", "country"),
    lambda n: ("business", "NO"),
    _read_entitlements,
)
READERS = pytest.mark.parametrize("reader", [ROOM_MAP, ENTITLEMENTS], ids=lambda r: r.name)

#: The header line, in a case.
HEADER = ("TEXT", "KEY")
Line = str | tuple[str, str]  # a raw line (comment, blank), or (TEXT cell, KEY cell) as written


def render(
    reader: Reader,
    lines: Sequence[Line],
    *,
    delimiter: str = ",",
    newline: str = "\n",
    key_first: bool = False,
    bom: bool = False,
) -> str:
    """The case as ``reader``'s file: TEXT and KEY (in that order unless ``key_first``), then
    the reader's own two columns."""
    out = []
    for number, line in enumerate(lines):
        if isinstance(line, str):
            out.append(line)
            continue
        if line == HEADER:
            cells = [reader.text, reader.key, *reader.extra_columns]
        else:
            cells = [*line, *reader.extra(number)]
        if key_first:
            cells[0], cells[1] = cells[1], cells[0]
        out.append(delimiter.join(cells))
    return ("\ufeff" if bom else "") + newline.join(out) + newline


# --------------------------------------------------------------------------- readings


@READERS
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [False, True])
def test_delimiters_line_ends_and_bom(reader: Reader, delimiter: str, newline: str, bom: bool) -> None:
    text = render(
        reader,
        [HEADER, ("Fjord", "S1"), ("Oslo HQ", " s 2 ")],
        delimiter=delimiter,
        newline=newline,
        bom=bom,
    )
    assert reader.read(text) == [(2, "S1", "Fjord"), (3, "S2", "Oslo HQ")]
    assert reader.read(text.encode()) == reader.read(text)


@READERS
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_quoted_cells_hold_delimiters_and_doubled_quotes(reader: Reader, delimiter: str) -> None:
    lines: list[Line] = [
        HEADER,
        ('"Oslo, Norway; 4th"', "S1"),
        ('"5"" screen"', '"S2"'),
        (' "a,b;c" ', "S3"),  # spaces around a quoted cell
        ('say "hi"', "S4"),  # a quote inside an unquoted cell is a character
    ]
    assert reader.read(render(reader, lines, delimiter=delimiter)) == [
        (2, "S1", "Oslo, Norway; 4th"),
        (3, "S2", '5" screen'),
        (4, "S3", "a,b;c"),
        (5, "S4", 'say "hi"'),
    ]


@READERS
@pytest.mark.parametrize("key_first", [False, True])
def test_comments_before_and_after_the_header(reader: Reader, key_first: bool) -> None:
    # A '#' that does not start the line is data: in the second column here.
    hash_in_data = ("#Bergen", "S2") if key_first else ("Bergen", "#S2")
    lines: list[Line] = [
        "# exported by hand",
        "   # indented",
        "",
        HEADER,
        "# a section, with a comma",
        ("Fjord", "S1"),
        "  # indented, after the header",
        hash_in_data,
    ]
    assert reader.read(render(reader, lines, key_first=key_first)) == [
        (6, "S1", "Fjord"),
        (8, hash_in_data[1], hash_in_data[0]),
    ]


@READERS
def test_a_commented_out_row_is_a_comment_when_the_first_column_is_not_text(reader: Reader) -> None:
    text = render(reader, [HEADER, ("Fjord", "#S1"), ("Bergen", "S2")], key_first=True)
    assert reader.read(text) == [(3, "S2", "Bergen")]


@READERS
def test_a_hash_line_that_could_be_a_row_of_a_text_first_file_is_refused(reader: Reader) -> None:
    text = render(reader, [HEADER, ("#5 Board", "S1"), "# a comment", ('"#6 Board"', "S2")])
    assert reader.problems(text) == [
        f"{NAME}:2: TEXT: '#5 Board' starts with '#' on a line with a cell for every column: a "
        'comment or a row? Quote the cell if it is data ("#5 Board"); for a comment, put a '
        "column other than TEXT first"
    ]
    quoted = render(reader, [HEADER, ('"#5 Board"', "S1"), "# a comment"])
    assert reader.read(quoted) == [(2, "S1", "#5 Board")]


@READERS
def test_blank_lines_rows_of_empty_cells_and_padding_are_skipped(reader: Reader) -> None:
    padded = ",".join(["Fjord", "S1", *reader.extra(5), "", " "])  # empty cells past the header's
    lines: list[Line] = [",,,", ";;", "", HEADER, "", padded, "   ", ",,,", ' "" ,"",,', ("Bergen", "S2")]
    assert reader.read(render(reader, lines)) == [(6, "S1", "Fjord"), (10, "S2", "Bergen")]


# --------------------------------------------------------------------------- refusals


@READERS
def test_a_quoted_multi_line_cell_is_refused_and_the_rows_after_it_are_read(reader: Reader) -> None:
    text = render(reader, [HEADER, ('"two\nlines"', "S1"), ("Bergen", "S2"), ("Oslo", "N/A")])
    assert reader.problems(text) == [
        f"{NAME}:2: TEXT: the quoted cell runs over lines 2-3: a cell cannot hold a line break; "
        "remove it (typed with Alt+Enter in Excel)",
        f"{NAME}:5: KEY: 'N/A' is a placeholder, not a serial",
    ]
    crlf = render(reader, [HEADER, ("Fjord", '"S\r\n1"')], newline="\r\n")
    assert reader.problems(crlf) == [
        f"{NAME}:2: KEY: the quoted cell runs over lines 2-3: a cell cannot hold a line break; "
        "remove it (typed with Alt+Enter in Excel)"
    ]


@READERS
def test_a_missing_closing_quote_is_named_and_swallows_nothing(reader: Reader) -> None:
    text = render(reader, [HEADER, ('"Fjord', "S1"), ("Bergen", "S2"), ('"Oslo"', "S3")])
    assert reader.problems(text) == [
        f"{NAME}:2: TEXT: '\"Fjord,S1,{','.join(reader.extra(1))}' opens a quote that is not "
        "closed on its line: add the closing '\"' (a cell cannot span lines)"
    ]


@READERS
def test_text_after_a_closing_quote(reader: Reader) -> None:
    text = render(reader, [HEADER, ('"5" screen', "S1")])
    assert reader.problems(text) == [
        f"{NAME}:2: TEXT: '\"5\" screen' has text after its closing quote: inside a quoted cell a "
        'quote is written twice ("5"" screen")'
    ]


@READERS
def test_cell_counts_nul_and_header_problems(reader: Reader) -> None:
    text = render(reader, [HEADER, ("Fjord", "S1,extra"), ("Oslo\x00", "S2"), "Bergen,S3"])
    assert reader.problems(text) == [
        f"{NAME}:2: the row has 5 cells but the header has 4 (the delimiter is ',')",
        f"{NAME}:3: TEXT: holds a NUL character: is this a text file? Save it as 'CSV UTF-8'",
        f"{NAME}:4: the row has 2 cells but the header has 4 (the delimiter is ',')",
    ]
    header = render(reader, ['"TEXT,KEY', ("Fjord", "S1")])
    assert reader.problems(header) == [
        f"{NAME}:1: column 1: '\"TEXT,KEY' opens a quote that is not closed on its line: add the closing '\"'"
    ]
    names = render(reader, [HEADER]).replace("\n", f",,{reader.text}\n")
    assert reader.problems(names) == [
        f"{NAME}:1: column 5: has no name",
        f"{NAME}:1: TEXT: appears twice (columns 1 and 6)",
    ]


@READERS
@pytest.mark.parametrize("text", ["", "\n \n", "# only a comment\n", ",,,\n;;\n"])
def test_an_empty_file(reader: Reader, text: str) -> None:
    (problem,) = reader.problems(text)
    assert problem.startswith(f"{NAME}:1: the file is empty: it needs a header row naming the columns (")


# --------------------------------------------------------------------------- both readers agree

_TEXTS = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=20,
).filter(lambda t: t.strip() == t and t.strip())
_KEYS = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=12).filter(
    lambda s: not is_placeholder_serial(s)
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(_TEXTS, _KEYS), max_size=6, unique_by=lambda r: r[1]),
    comments=st.lists(st.booleans(), min_size=8, max_size=8),
    delimiter=st.sampled_from([",", ";", "\t"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_written_files_read_the_same_in_both_readers(
    rows: list[tuple[str, str]], comments: list[bool], delimiter: str, newline: str, bom: bool
) -> None:
    """Files as a spreadsheet writes them (csv.writer's quoting; a first cell starting with '#'
    quoted, as the dialect asks), with comments between rows, read back the same."""
    readings = []
    for reader in (ROOM_MAP, ENTITLEMENTS):
        out = io.StringIO()
        plain = csv.writer(out, delimiter=delimiter, lineterminator=newline)
        quoted = csv.writer(out, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_ALL)
        plain.writerow([reader.text, reader.key, *reader.extra_columns])
        expected = []
        for number, (text, key) in enumerate(rows):
            if comments[number]:
                out.write(f"# comment {number}{delimiter} with a delimiter{newline}")
            row = [text, key, *reader.extra(number)]
            (quoted if text.startswith("#") else plain).writerow(row)
            expected.append((out.getvalue().count(newline), key, text))
        data = ("\ufeff" if bom else "") + out.getvalue()
        readings.append(reader.read(data.encode()))
        assert readings[-1] == expected
    assert readings[0] == readings[1]


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("a,b,c", ","),
        ("a;b;c", ";"),
        ("a\tb\tc", "\t"),
        ("a;b,c", ","),  # a tie: ','
        ("Room Name;Match;Value, Room", ";"),
        ("a\tb;c", ";"),  # a tie: ';' before a tab
        ("serial", ","),
    ],
)
def test_delimiter_of(header: str, delimiter: str) -> None:
    assert delimiter_of(header) == delimiter


@pytest.mark.parametrize(
    ("line", "cells"),
    [
        ("a,b,c", ["a", "b", "c"]),
        ("a,,", ["a", "", ""]),
        ("", [""]),
        ('"a,b",c', ["a,b", "c"]),
        ('"a""b",""', ['a"b', ""]),
        ('  "a" ,b', ["a", "b"]),
        ('a"b,c', ['a"b', "c"]),
        ('x,"",y', ["x", "", "y"]),
    ],
)
def test_split_cells(line: str, cells: list[str]) -> None:
    assert split_cells(line, ",") == cells


# --------------------------------------------------------------------------- the operators' document

DOC = Path(__file__).resolve().parents[1] / "docs" / "csv-formats.md"


def test_the_examples_in_docs_csv_formats_read() -> None:
    blocks = re.findall(r"```text\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    room_maps = [b for b in blocks if b.lower().startswith(("match", "# oslo"))]
    entitlements = [b for b in blocks if b.startswith("serial")]
    assert len(room_maps) == 2 and len(entitlements) == 1
    excel = parse_room_map(room_maps[0])
    assert [(r.line, r.value, r.room) for r in excel.rules] == [
        (3, "2313FD1N08Z2", "oslo-4-12"),
        (5, "10.20.4.0/24", "oslo-4-open"),
    ]
    assert excel.rooms["oslo-4-12"].location == "Oslo; Norway"
    assert len(parse_room_map(room_maps[1]).rules) == 5
    assert len(parse_entitlements(entitlements[0])) == 3
