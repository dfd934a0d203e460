"""Entitlements import: the CSV format of agent/entitlements.py, read from real files."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.entitlements import (
    COLUMNS,
    Customer,
    EntitlementRecord,
    Entitlements,
    EntitlementsError,
    load_entitlements,
    normalize_serial,
    parse_entitlements,
)
from agent.sanitize import is_placeholder_serial

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, content: str | bytes, name: str = "ents.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(EntitlementsError) as caught:
        load_entitlements(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- a good file --------------------------------------------------------------------------

FULL_HEADER = ",".join(COLUMNS)


def test_every_column_is_read_into_typed_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        FULL_HEADER + "\n"
        "2313FD1N08Z2,2022-03-15,no,consumer,1,2022-04-01,SEL-0001,2023-01-10,2023-02-01,3,"
        "2023-02-03,HEZO-77,2025-03-14,OLD1,2023-05-05,rally  BAR\n",
    )
    ents = load_entitlements(path)
    assert ents.source == str(path)
    assert list(ents) == ["2313FD1N08Z2"]
    assert ents["2313FD1N08Z2"] == EntitlementRecord(
        serial="2313FD1N08Z2",
        purchase_date=date(2022, 3, 15),
        country="NO",
        customer=Customer.CONSUMER,
        extension_years=1,
        extension_purchased=date(2022, 4, 1),
        select_contract="SEL-0001",
        select_order_date=date(2023, 1, 10),
        select_activation_date=date(2023, 2, 1),
        select_term_years=3,
        select_registered=date(2023, 2, 3),
        reseller_contract="HEZO-77",
        reseller_until=date(2025, 3, 14),
        replaced_serial="OLD1",
        replacement_date=date(2023, 5, 5),
        product="Rally Bar",  # the catalog's spelling (W9 compares it with what a scan found)
    )
    assert ents["2313FD1N08Z2"].line == 2


def test_blank_cells_are_none_and_customer_defaults_to_business(tmp_path: Path) -> None:
    ents = load_entitlements(write(tmp_path, "country,serial,customer\n,A1,\n"))
    assert ents["A1"] == EntitlementRecord(serial="A1")
    assert ents["A1"].customer is Customer.BUSINESS
    assert ents["A1"].purchase_date is None and ents["A1"].extension_years is None


def test_header_only_is_zero_records(tmp_path: Path) -> None:
    ents = load_entitlements(write(tmp_path, "serial,purchase_date\r\n"))
    assert len(ents) == 0


def test_excel_habits_bom_semicolon_crlf_are_accepted(tmp_path: Path) -> None:
    content = (
        "\ufeffSerial;Purchase Date;Country;extension_years;select_contract\r\n"
        'A1;2022-03-15;gb;1;"SEL;42"\r\n'
        ";;;;\r\n"
        "b2;2021-01-31;NO;0;\r\n"
    ).encode()
    ents = load_entitlements(write(tmp_path, content))
    assert sorted(ents) == ["A1", "B2"]
    assert ents["A1"].purchase_date == date(2022, 3, 15)
    assert ents["A1"].country == "GB"
    assert ents["A1"].select_contract == "SEL;42"
    assert ents["B2"].line == 4 and ents["B2"].extension_years == 0


def test_spreadsheet_padding_cells_at_the_end_are_ignored(tmp_path: Path) -> None:
    ents = load_entitlements(write(tmp_path, "serial;purchase_date;;\nA1;2022-03-15;;\nB1;2022-03-16\n"))
    assert sorted(ents) == ["A1", "B1"]


def test_line_numbers_are_physical_across_comments_blank_lines_and_a_refused_multi_line_cell(
    tmp_path: Path,
) -> None:
    # The common dialect (docs/csv-formats.md): a quoted cell cannot hold a line break. It is
    # refused where it starts, and the rows after it are still read and numbered.
    path = write(
        tmp_path,
        "# exported by hand\r\n"
        "\r\n"
        "serial,select_contract,purchase_date\r\n"
        "\r\n"
        'A1,"two\r\nlines",2022-01-01\r\n'
        ",,\r\n"
        "B1,,2022-02-30\r\n",
    )
    assert refused(path) == [
        f"{path}:5: select_contract: the quoted cell runs over lines 5-6: a cell cannot hold a line "
        "break; remove it (typed with Alt+Enter in Excel)",
        f"{path}:8: purchase_date: '2022-02-30' is not a real date (YYYY-MM-DD)",
    ]


def test_a_hash_line_after_the_header_is_a_comment_unless_it_could_be_a_row(tmp_path: Path) -> None:
    # The common dialect: '#' lines are comments anywhere. With a text column first, a '#' line
    # with a cell for every column could be a row too: refused, never silently dropped.
    path = write(tmp_path, "# comment\nselect_contract,serial\n#4411,A1\n# a comment\n")
    assert refused(path) == [
        f"{path}:3: select_contract: '#4411' starts with '#' on a line with a cell for every column: "
        'a comment or a row? Quote the cell if it is data ("#4411"); for a comment, put a column '
        "other than select_contract first"
    ]
    ents = load_entitlements(write(tmp_path, 'select_contract,serial\n"#4411",A1\n# a comment\n', "b.csv"))
    assert ents["A1"].select_contract == "#4411"
    ents = load_entitlements(write(tmp_path, "serial,select_contract\n#B1,x\nA1,#4411\n", "c.csv"))
    assert list(ents) == ["A1"] and ents["A1"].select_contract == "#4411"


def test_serials_are_normalised_and_lookups_too(tmp_path: Path) -> None:
    ents = load_entitlements(
        write(tmp_path, "serial,replaced_serial,replacement_date\n 2313 fd1n08z2 , old 1 ,2023-01-01\n")
    )
    record = ents["2313FD1N08Z2"]
    assert record.serial == "2313FD1N08Z2" and record.replaced_serial == "OLD1"
    # An import's records are built on lookup: the same record, not the same object.
    assert ents["2313fd1n08z2 "] == record and ents["2313fd1n08z2 "].line == record.line
    assert " 2313FD1N08Z2" in ents
    assert ents.get("nope") is None and "nope" not in ents
    assert normalize_serial(" ab c\t1 ") == "ABC1"


def test_contract_ids_lose_control_characters(tmp_path: Path) -> None:
    ents = load_entitlements(
        write(tmp_path, "serial,select_contract,reseller_contract\nA1,SEL\x07-42\u200b,  HZ 9  \n")
    )
    assert ents["A1"].select_contract == "SEL-42"
    assert ents["A1"].reseller_contract == "HZ 9"


@pytest.mark.parametrize(("cell", "country"), [("no", "NO"), ("Gb", "GB"), (" us ", "US"), ("CH", "CH")])
def test_country_is_upper_cased(tmp_path: Path, cell: str, country: str) -> None:
    ents = load_entitlements(write(tmp_path, f"serial,country\nA1,{cell}\n"))
    assert ents["A1"].country == country


def test_entitlements_of_refuses_a_repeated_serial() -> None:
    ents = Entitlements.of([EntitlementRecord(serial="A1")], source="portal")
    assert list(ents) == ["A1"]
    with pytest.raises(EntitlementsError) as caught:
        Entitlements.of([EntitlementRecord(serial="a1"), EntitlementRecord(serial="A1")], source="portal")
    assert caught.value.problems == ["portal: serial: 'A1' is listed twice"]


# --- refused files: the four named cases, each with its exact message -----------------------


def test_unknown_column(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,purchse_date,colour\nA1,2022-01-01,red\n")
    assert refused(path) == [
        f"{path}:1: purchse_date: unknown column (did you mean purchase_date?)",
        f"{path}:1: colour: unknown column (known columns: serial, purchase_date, country, customer, "
        "extension_years, extension_purchased, select_contract, select_order_date, "
        "select_activation_date, select_term_years, select_registered, reseller_contract, "
        "reseller_until, replaced_serial, replacement_date, product)",
    ]


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        ("2024-13-01", "'2024-13-01' is not a real date (YYYY-MM-DD)"),
        ("2023-02-29", "'2023-02-29' is not a real date (YYYY-MM-DD)"),
        ("01/03/2024", "'01/03/2024' is not a date in the form YYYY-MM-DD"),
        ("20240301", "'20240301' is not a date in the form YYYY-MM-DD"),
        ("2024-03-01T00:00", "'2024-03-01T00:00' is not a date in the form YYYY-MM-DD"),
        ("1979-12-31", "'1979-12-31' is out of range (years 1980-2199)"),
    ],
)
def test_bad_date(tmp_path: Path, cell: str, what: str) -> None:
    path = write(tmp_path, f"serial,purchase_date\nA1,2024-02-29\nB1,{cell}\n")
    assert refused(path) == [f"{path}:3: purchase_date: {what}"]


@pytest.mark.parametrize(
    ("column", "cell", "what"),
    [
        ("extension_years", "-1", "'-1' is negative (expected a whole number of 0 or more)"),
        ("select_term_years", "-3", "'-3' is negative (expected a whole number of 0 or more)"),
        ("extension_years", "1.5", "'1.5' is not a whole number"),
        ("extension_years", "one", "'one' is not a whole number"),
        ("select_term_years", "100", "'100' is too large (at most 99)"),
    ],
)
def test_negative_or_bad_number(tmp_path: Path, column: str, cell: str, what: str) -> None:
    path = write(tmp_path, f"serial,{column}\nA1,{cell}\n")
    assert refused(path) == [f"{path}:2: {column}: {what}"]


def test_duplicated_serial_is_compared_case_and_space_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,purchase_date\nABC1,2022-01-01\nXYZ9,2022-01-01\n abc 1,2022-01-02\n")
    assert refused(path) == [f"{path}:4: serial: 'ABC1' is a duplicate: already on line 2"]


def test_every_problem_is_reported_together_and_nothing_is_imported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "serial;warranty;purchase_date;extension_years\r\n"
        "A1;red;2022-01-01;1\r\n"
        "B2;;2022-13-01;-1\r\n"
        "A1;;2022-01-01;0\r\n"
        "C3;;2022-01-01;2\r\n",
    )
    assert refused(path) == [
        f"{path}:1: warranty: unknown column (known columns: serial, purchase_date, country, customer, "
        "extension_years, extension_purchased, select_contract, select_order_date, "
        "select_activation_date, select_term_years, select_registered, reseller_contract, "
        "reseller_until, replaced_serial, replacement_date, product)",
        f"{path}:3: purchase_date: '2022-13-01' is not a real date (YYYY-MM-DD)",
        f"{path}:3: extension_years: '-1' is negative (expected a whole number of 0 or more)",
        f"{path}:4: serial: 'A1' is a duplicate: already on line 2",
    ]


# --- refused files: the rest -----------------------------------------------------------------


def test_non_utf8_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"serial,select_contract\nA1,ok\nB1,Z\xfcrich\n")
    assert refused(path) == [f"{path}:3: byte 0xFC at character 5 is not UTF-8: save the file as 'CSV UTF-8'"]


def test_utf16_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "serial\r\nA1\r\n".encode("utf-16"))
    assert refused(path) == [
        f"{path}:1: the file is UTF-16 (Excel's 'Unicode Text'): save it as 'CSV UTF-8' instead"
    ]


def test_a_whole_file_in_latin1_lists_twenty_lines_and_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, b"serial,select_contract\n" + b"A,\xe9\n" * 25)
    problems = refused(path)
    assert len(problems) == 21
    assert problems[0].startswith(f"{path}:2: byte 0xE9")
    assert problems[-1] == f"{path}: 5 more lines are not UTF-8"


@pytest.mark.parametrize("content", ["", "\r\n\r\n", "# only a comment\n"])
def test_empty_file_has_no_header(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    assert refused(path) == [
        f"{path}:1: the file is empty: it needs a header row naming the columns (e.g. serial,purchase_date)"
    ]


def test_data_without_a_header_row(tmp_path: Path) -> None:
    path = write(tmp_path, "2313FD1N08Z2,2022-03-15\n")
    assert refused(path) == [
        f"{path}:1: no header row: the first line must name the columns "
        "(e.g. serial,purchase_date), found '2313FD1N08Z2,2022-03-15'"
    ]


def test_missing_serial_column(tmp_path: Path) -> None:
    path = write(tmp_path, "purchase_date,country\n2022-01-01,NO\n")
    assert refused(path) == [f"{path}:1: serial: the column is missing: every row needs the unit's serial"]


def test_repeated_and_unnamed_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,,country,Country\nA1,,NO,NO\n")
    assert refused(path) == [
        f"{path}:1: column 2: has no name",
        f"{path}:1: country: appears twice (columns 3 and 4)",
    ]


def test_blank_serial_and_placeholder_serial(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,purchase_date\n  ,2022-01-01\nN/A,2022-01-01\n")
    assert refused(path) == [
        f"{path}:2: serial: is empty: every row needs the unit's serial",
        f"{path}:3: serial: 'N/A' is a placeholder, not a serial",
    ]


def test_rows_with_too_many_or_too_few_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,purchase_date,country\nA1,2022-01-01\nB1,2022-01-01,NO,extra\nC1,,NO\n")
    assert refused(path) == [
        f"{path}:2: the row has 2 cells but the header has 3 (the delimiter is ',')",
        f"{path}:3: the row has 4 cells but the header has 3 (the delimiter is ',')",
    ]


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        ("UK", "'UK' is not an ISO 3166 country code (use GB)"),
        ("XX", "'XX' is not an ISO 3166 country code"),
        ("Norway", "'Norway' is not a two-letter ISO 3166 country code (e.g. NO, GB, US)"),
        ("N0", "'N0' is not a two-letter ISO 3166 country code (e.g. NO, GB, US)"),
    ],
)
def test_bad_country(tmp_path: Path, cell: str, what: str) -> None:
    path = write(tmp_path, f"serial,country\nA1,{cell}\n")
    assert refused(path) == [f"{path}:2: country: {what}"]


def test_bad_customer(tmp_path: Path) -> None:
    path = write(tmp_path, "serial,customer\nA1,Business\nB1,reseller\n")
    assert refused(path) == [f"{path}:3: customer: 'reseller' is not 'business' or 'consumer'"]


def test_rows_that_contradict_themselves(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "serial,purchase_date,reseller_until,replaced_serial,replacement_date\n"
        "A1,2022-01-01,2021-12-31,,\n"
        "B1,,,b 1,2023-01-01\n"
        "C1,,,A1,\n"
        "D1,,,,2023-01-01\n",
    )
    assert refused(path) == [
        f"{path}:2: reseller_until: 2021-12-31 is before purchase_date 2022-01-01 (H1)",
        f"{path}:3: replaced_serial: is the row's own serial: a unit cannot replace itself",
        f"{path}:4: replacement_date: is required when replaced_serial is given (W8)",
        f"{path}:5: replaced_serial: is required when replacement_date is given (W8)",
    ]


def test_broken_quoting_names_its_line_and_column_and_the_rest_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, 'serial,select_contract\nA1,ok\nB1,"half"quoted\nC1,"open\nD1,ok\n')
    assert refused(path) == [
        f"{path}:3: select_contract: '\"half\"quoted' has text after its closing quote: inside a "
        'quoted cell a quote is written twice ("5"" screen")',
        f"{path}:4: select_contract: '\"open' opens a quote that is not closed on its line: add the "
        "closing '\"' (a cell cannot span lines)",
    ]


def test_file_size_cap(tmp_path: Path) -> None:
    path = write(tmp_path, "serial\n" + "".join(f"A{i}\n" for i in range(10)))
    with pytest.raises(EntitlementsError) as caught:
        load_entitlements(path, max_bytes=20)
    assert caught.value.problems == [
        f"{path}: the file is larger than the 20 bytes limit: split it into smaller files"
    ]
    assert len(load_entitlements(path, max_bytes=len(path.read_bytes()))) == 10


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.csv"
    assert refused(missing) == [f"{missing}: cannot read the file: No such file or directory"]


def test_parse_entitlements_takes_text_and_names_it() -> None:
    with pytest.raises(EntitlementsError) as caught:
        parse_entitlements("serial,purchase_date\nA1,someday\n", name="portal.csv")
    assert caught.value.problems == [
        "portal.csv:2: purchase_date: 'someday' is not a date in the form YYYY-MM-DD"
    ]
    assert list(parse_entitlements("\ufeffserial\nA1\n")) == ["A1"]


def test_the_shipped_example_file_is_valid() -> None:
    ents = load_entitlements(REPO / "config" / "entitlements.example.csv")
    assert len(ents) >= 5


# --- round trip property ------------------------------------------------------------------------

_dates = st.dates(min_value=date(1980, 1, 1), max_value=date(2199, 12, 31))
_text = st.text(st.characters(categories=["L", "N", "P", "S"], max_codepoint=0x2FF), min_size=1, max_size=20)
serial_texts = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=4, max_size=14).filter(
    lambda s: not is_placeholder_serial(s)
)


@st.composite
def record_lists(
    draw: st.DrawFn,
    *,
    max_size: int = 6,
    texts: st.SearchStrategy[str] = _text,
    countries: tuple[str, ...] = ("NO", "US", "JP"),
    select_days: bool = True,
) -> list[EntitlementRecord]:
    """Records of distinct serials, every column drawn (``select_days``: the SELECT activation
    and registration days too), as an import accepts them."""
    serials = draw(st.lists(serial_texts, min_size=0, max_size=max_size, unique=True))
    out = []
    for serial in serials:
        replaced = draw(st.none() | serial_texts)
        if replaced == serial:
            replaced = None  # a unit cannot replace itself (refused on import)
        bought = draw(st.none() | _dates)
        until = draw(st.none() | _dates)
        if bought and until and until < bought:
            until = bought
        out.append(
            EntitlementRecord(
                serial=serial,
                purchase_date=bought,
                country=draw(st.none() | st.sampled_from(countries)),
                customer=draw(st.sampled_from(list(Customer))),
                extension_years=draw(st.none() | st.integers(0, 99)),
                extension_purchased=draw(st.none() | _dates),
                select_contract=draw(st.none() | texts),
                select_order_date=draw(st.none() | _dates),
                select_activation_date=draw(st.none() | _dates) if select_days else None,
                select_term_years=draw(st.none() | st.integers(0, 99)),
                select_registered=draw(st.none() | _dates) if select_days else None,
                reseller_contract=draw(st.none() | texts),
                reseller_until=until,
                replaced_serial=replaced,
                replacement_date=draw(_dates) if replaced else None,
            )
        )
    return out


def _to_csv(records: list[EntitlementRecord], delimiter: str, columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    # A row whose first cell starts with '#' is quoted, as docs/csv-formats.md asks of writers
    # (unquoted, the line would be a comment).
    quoting = csv.writer(out, delimiter=delimiter, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow(columns)
    for r in records:
        row = [
            ""
            if getattr(r, c) is None
            else getattr(r, c).isoformat()
            if isinstance(getattr(r, c), date)
            else str(getattr(r, c))
            for c in columns
        ]
        (quoting if row[0].startswith("#") else writer).writerow(row)
    return out.getvalue()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=record_lists(),
    delimiter=st.sampled_from([",", ";"]),
    bom=st.booleans(),
    order=st.permutations(COLUMNS),
)
def test_written_records_read_back_identical(
    tmp_path: Path, records: list[EntitlementRecord], delimiter: str, bom: bool, order: list[str]
) -> None:
    text = _to_csv(records, delimiter, list(order))
    path = write(tmp_path, ("\ufeff" if bom else "") + text)
    ents = load_entitlements(path)
    assert dict(ents) == {r.serial: r for r in records}
