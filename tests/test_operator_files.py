"""The operator's files at scale (issue [13/16]): entitlements and room maps read a block at a
time into compact structures (agent/csvtext.py, agent/entitlements.py, agent/roommap.py).

* an import's packed records read as the file says: lookups, ``len``, order, lines, views;
* the quick checks of a whole block agree with reading it row by row (what every problem
  message comes from), on files with and without problems;
* a large file costs bounded memory (a fresh process's peak RSS), and placing units by a map of
  many ranges costs what placing them by a map of four rules does.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.csvtext
from agent.csvtext import CsvFileError
from agent.entitlements import (
    COLUMNS,
    EntitlementRecord,
    Entitlements,
    load_entitlements,
    parse_entitlements,
)
from agent.model import Device, Transport
from agent.roommap import (
    RoomMap,
    _address_key,
    _ip,
    _ip_key,
    _network,
    _network_key,
    _parse_address,
    _parse_cidr,
    load_room_map,
    parse_room_map,
    place,
    rule,
)
from tests.test_entitlements import record_lists, serial_texts

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 2, tzinfo=UTC)


@contextmanager
def blocks_of(chars: int) -> Iterator[None]:
    """Files read ``chars`` characters a block: many blocks in a small file."""
    with mock.patch.object(agent.csvtext, "BLOCK_CHARS", chars):
        yield


@contextmanager
def row_by_row() -> Iterator[None]:
    """The quick checks off: every line read alone, every row checked alone."""
    never = re.compile(r"(?!)")
    with (
        mock.patch.object(agent.csvtext, "_plain_rows", lambda delimiter, width: never),
        mock.patch("agent.entitlements._Import.block", lambda self, block: False),
    ):
        yield


# --------------------------------------------------------------------------- entitlements

_texts = st.sampled_from(["SEL-1", "SEL-2", "HEZO 77", "Ünïcode-9", "#5 board"]) | st.text(
    st.characters(categories=["L", "N", "P", "S"], max_codepoint=0x2FF), min_size=1, max_size=12
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, date) else str(value)


def _written(records: list[EntitlementRecord], columns: list[str], delimiter: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = [_cell(getattr(r, c)) for c in columns]
        if row[0].startswith("#"):
            row[0] = f'"{row[0]}"'  # a first cell starting with '#' is quoted (docs/csv-formats.md)
        writer.writerow(row)
    return out.getvalue()


def _reading(ents: Entitlements) -> list[tuple[str, EntitlementRecord, int | None]]:
    return [(serial, record, record.line) for serial, record in ents.items()]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=record_lists(max_size=40, texts=_texts, countries=("NO", "GB", "JP"), select_days=False),
    order=st.permutations(COLUMNS[1:]),
    delimiter=st.sampled_from([",", ";", "\t"]),
    chars=st.sampled_from([1, 40, 500, 256 * 1024]),
)
def test_packed_records_read_as_the_file_says(
    records: list[EntitlementRecord], order: list[str], delimiter: str, chars: int
) -> None:
    columns = ["serial", *order]
    with blocks_of(chars):
        ents = parse_entitlements(_written(records, columns, delimiter).encode(), "f.csv")
    # The reference: a plain dict of what was written, in the file's order, row i on line i + 2.
    expected = {r.serial: r for r in records}
    assert len(ents) == len(expected)
    assert list(ents) == list(expected)
    assert dict(ents) == expected and ents == Entitlements.of(records)
    assert [(s, r) for s, r in ents.items()] == list(expected.items())
    assert list(ents.values()) == list(expected.values())
    assert [ents[s].line for s in expected] == list(range(2, len(records) + 2))
    for serial, record in expected.items():
        assert serial in ents and ents.get(serial) == record
        assert ents[f" {serial.lower()} "] == record and f"{serial[:2]} {serial[2:]}" in ents
    for missing in ("NOPE-1", "", "A\tB", "\n"):
        assert missing not in ents and ents.get(missing) is None
        with pytest.raises(KeyError):
            ents[missing]


_ODD_CELLS = st.sampled_from(
    ["2023-02-29", "UK", "x", "-1", "100", "007", "a\x00b", '"q"', '"a,b"', '"open', "#h", "N/A", " ", "\x1c"]
)
#: What may be wrong with a row (or a line) of :func:`_entitlement_files`.
_FAULTS = st.sampled_from(
    [
        "none",
        "cell",
        "replaces-itself",
        "no-replacement-date",
        "no-replaced-serial",
        "H1",
        "repeated",
        "comment",
        "blank",
        "empty-cells",
        "short",
    ]
)


#: Right cells of the columns :func:`_entitlement_files` does not set itself.
_VALID = {
    "extension_years": ["", "1", "3"],
    "select_term_years": ["", "5"],
    "extension_purchased": ["", "2022-02-01"],
    "select_order_date": ["", "2023-01-01"],
    "select_activation_date": ["", "2023-02-01"],
    "select_registered": ["", "2023-02-02"],
    "select_contract": ["", "SEL-1", "#5 board", "Zürich 2"],
    "reseller_contract": ["", "HEZO 77"],
    "product": ["", "Rally Mic Pod", "rally  bar", "A headset of another maker"],
}
#: The columns a fault needs (added to the file's header when it has it).
_NEEDS = {
    "replaces-itself": ("replaced_serial", "replacement_date"),
    "no-replacement-date": ("replaced_serial", "replacement_date"),
    "no-replaced-serial": ("replaced_serial", "replacement_date"),
    "H1": ("purchase_date", "reseller_until"),
}


@st.composite
def _entitlement_files(draw: st.DrawFn) -> bytes:
    """A file mostly right: valid rows and, on a few of them, one kind of thing wrong: a
    cell, a rule of the row (W8, H1, a unit replacing itself), a repeated serial, a comment,
    a blank line, a line of empty cells, a row of the wrong width."""
    fault = draw(_FAULTS)
    columns = ["serial", *draw(st.permutations(COLUMNS[1:]))[: draw(st.integers(0, len(COLUMNS) - 1))]]
    columns += [c for c in _NEEDS.get(fault, ()) if c not in columns]
    delimiter = draw(st.sampled_from([",", ";"]))
    serials = draw(st.lists(serial_texts, min_size=1, max_size=30, unique=True))
    faulty = draw(st.sets(st.integers(0, len(serials) - 1), min_size=1, max_size=3))
    lines = [delimiter.join(columns)]
    for i, serial in enumerate(serials):
        replaced = draw(st.sampled_from(["", "OLD1"]))
        row = {
            "serial": serial,
            "purchase_date": draw(st.sampled_from(["2022-01-01", "2021-06-30", ""])),
            "country": draw(st.sampled_from(["NO", "gb", ""])),
            "customer": draw(st.sampled_from(["", "consumer", "Business"])),
            "reseller_until": draw(st.sampled_from(["", "2025-01-01"])),
            "replaced_serial": replaced,
            "replacement_date": "2024-02-02" if replaced else "",
        }
        wrong = fault if i in faulty else None
        if wrong == "replaces-itself":
            row["replaced_serial"], row["replacement_date"] = serial, "2024-02-02"
        elif wrong == "no-replacement-date":
            row["replaced_serial"], row["replacement_date"] = "OLD2", ""
        elif wrong == "no-replaced-serial":
            row["replaced_serial"], row["replacement_date"] = "", "2024-02-02"
        elif wrong == "H1":
            row["purchase_date"], row["reseller_until"] = "2022-01-01", "2020-01-01"
        elif wrong == "repeated" and i:
            row["serial"] = draw(st.sampled_from(serials[:i])).lower()
        cells = [row[c] if c in row else draw(st.sampled_from(_VALID[c])) for c in columns]
        if wrong == "cell":
            cells[draw(st.integers(0, len(cells) - 1))] = draw(_ODD_CELLS)
        lines.append(
            "# " + delimiter.join(cells)  # a row commented out
            if wrong == "comment"
            else ""
            if wrong == "blank"
            else delimiter * (len(cells) - 1)
            if wrong == "empty-cells"
            else delimiter.join(cells[:-1])
            if wrong == "short"
            else delimiter.join(cells)
        )
    return ("\n".join(lines) + "\n").encode()


def _outcome(read: Callable[[], Any], view: Callable[[Any], Any]) -> tuple[str, Any]:
    try:
        return "read", view(read())
    except CsvFileError as exc:
        return "refused", exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_entitlement_files(), chars=st.sampled_from([1, 60, 256 * 1024]))
def test_block_checks_agree_with_reading_row_by_row(data: bytes, chars: int) -> None:
    with blocks_of(chars):
        quick = _outcome(lambda: parse_entitlements(data, "f.csv"), _reading)
        with row_by_row():
            slow = _outcome(lambda: parse_entitlements(data, "f.csv"), _reading)
    assert quick == slow


@st.composite
def _room_map_files(draw: st.DrawFn) -> bytes:
    rules = st.sampled_from(
        [
            "serial,SN{i}",
            "serial,sn {i}",
            "host,pc-{i}",
            "address,10.0.{i}.1",
            "address,::ffff:10.1.{i}.1",
            "address,010.0.0.{i}",
            "cidr,10.{i}.0.0/16",
            "cidr,10.{i}.0.1/16",
            "cidr,2001:db8:{i}::/48",
            ",",
            "ip,10.0.0.{i}",
        ]
    )
    lines = ["match,value,room,room_name,seat_count"]
    for _ in range(draw(st.integers(0, 40))):
        room = draw(st.sampled_from(["r1", "r2", "r 3", "oslo-4-12"]))
        details = draw(st.sampled_from([",", "Fjord,", ",8", "Fjord,8", "Fjord,-1"]))
        lines.append(f"{draw(rules).format(i=draw(st.integers(0, 5)))},{room},{details}")
        if draw(st.integers(0, 20)) == 0:
            lines.append(draw(st.sampled_from(["# note", "", '"x', "a\x00,b,c,d,e"])))
    return ("\n".join(lines) + "\n").encode()


def _placing(room_map: RoomMap) -> tuple[object, ...]:
    return tuple((r.match, r.value, r.room, r.line) for r in room_map.rules), tuple(room_map.rooms.items())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_room_map_files(), chars=st.sampled_from([1, 60, 256 * 1024]))
def test_room_map_blocks_agree_with_reading_line_by_line(data: bytes, chars: int) -> None:
    with blocks_of(chars):
        quick = _outcome(lambda: parse_room_map(data, "f.csv"), _placing)
        with row_by_row():
            slow = _outcome(lambda: parse_room_map(data, "f.csv"), _placing)
    assert quick == slow


def test_problems_keep_the_order_of_lines_across_blocks() -> None:
    # A block read line by line (a quote, a NUL) records its lines' problems before the cells
    # of its rows are checked: the problems still come in the file's order.
    data = 'serial,purchase_date\nA1,2022-13-01\n"B1,2022-01-01\nC1,2022-01-01\x00\nD1,someday\n'
    for chars in (1, 20, 256 * 1024):
        with blocks_of(chars), pytest.raises(CsvFileError) as caught:
            parse_entitlements(data, "f.csv")
        assert [p.split(":")[1] for p in caught.value.problems] == ["2", "3", "4", "5"]


def test_a_line_not_utf8_after_rows_already_read_is_the_only_problem(tmp_path: Path) -> None:
    path = tmp_path / "ents.csv"
    path.write_bytes(b"serial,purchase_date\n" + b"A%d,2022-13-01\n" * 50 % tuple(range(50)) + b"Z,\xe9\n")
    with blocks_of(64), pytest.raises(CsvFileError) as caught:
        load_entitlements(path)
    assert caught.value.problems == [
        f"{path}:52: byte 0xE9 at character 3 is not UTF-8: save the file as 'CSV UTF-8'"
    ]


def test_a_pipe_is_read_within_the_size_cap(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "ents.fifo"
    os.mkfifo(fifo)
    content = b"serial,country\nA1,no\nB2,GB\n"

    def write() -> None:
        with open(fifo, "wb") as fh:
            fh.write(content)

    for cap, expected in ((len(content), ["A1", "B2"]), (len(content) - 1, None)):
        writer = threading.Thread(target=write)
        writer.start()
        try:
            if expected is None:
                with pytest.raises(CsvFileError, match="larger than the"):
                    load_entitlements(fifo, max_bytes=cap)
            else:
                assert list(load_entitlements(fifo, max_bytes=cap)) == expected
        finally:
            writer.join(timeout=10)


# --------------------------------------------------------------------------- memory

#: Run as ``python -c LOAD FILE`` in a fresh process (cwd: a checkout): its peak RSS after the
#: imports and after the load, in KiB, as JSON. VmHWM, not ru_maxrss: that one starts at the
#: peak RSS of the process that started this one (here, pytest's).
LOAD = """
import json, sys

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

from agent.entitlements import load_entitlements
before = peak()
rows = len(load_entitlements(sys.argv[1]))
print(json.dumps({"rows": rows, "before": before, "after": peak()}))
"""


def write_entitlements(path: Path, rows: int) -> None:
    """``rows`` rows as the issue's 50 MB file has them: distinct 12-character serials, a few
    dates, countries and customer kinds repeating."""
    countries = ["NO", "GB", "US", "DE", "FR", "JP"]
    days = [date.fromordinal(737000 + d).isoformat() for d in range(2000)]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("serial,purchase_date,country,customer\n")
        fh.writelines(
            f"{2100 + i % 500:04d}FD{i:06X},{days[i * 7919 % 2000]},{countries[i % 6]},"
            f"{'consumer' if i % 31 == 0 else ''}\n"
            for i in range(rows)
        )


def load_in_a_fresh_process(path: Path, checkout: Path = REPO) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(path)], cwd=checkout, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    figures: dict[str, int] = json.loads(out.stdout)
    return figures


def test_a_large_file_loads_in_bounded_memory(tmp_path: Path) -> None:
    # 15 MB, 535,000 rows. Every record held as an object, the load grew the process by
    # ~285 MiB (a 50 MB file by ~950 MiB); packed, by ~35 MiB.
    path = tmp_path / "entitlements.csv"
    write_entitlements(path, 535_000)
    assert 14_000_000 < path.stat().st_size < 16_000_000
    figures = load_in_a_fresh_process(path)
    assert figures["rows"] == 535_000
    grown_mib = (figures["after"] - figures["before"]) / 1024
    assert grown_mib < 96, f"the load grew the process by {grown_mib:.0f} MiB"


@pytest.mark.slow
def test_a_file_at_the_size_cap_loads_within_300_mib(tmp_path: Path) -> None:
    path = tmp_path / "entitlements.csv"
    write_entitlements(path, 1_850_000)
    assert path.stat().st_size <= 50 * 1024 * 1024
    started = time.perf_counter()
    figures = load_in_a_fresh_process(path)
    assert figures["rows"] == 1_850_000
    peak_mib = figures["after"] / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB ({time.perf_counter() - started:.1f} s)"


# --------------------------------------------------------------------------- room maps

_octets = st.sampled_from(
    ["0", "1", "9", "10", "99", "100", "199", "200", "249", "255", "256", "300", "01", "000"]
)
_quads = st.lists(_octets, min_size=3, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(quad=_quads, prefix=st.sampled_from(["", "/0", "/8", "/24", "/31", "/32", "/33", "/024", "/x"]))
def test_ipv4_values_read_as_ipaddress_reads_them(quad: str, prefix: str) -> None:
    text = quad + prefix

    def said(parse: Callable[[str], str]) -> str:
        try:
            return parse(text)
        except agent.csvtext.CellError as exc:
            return f"refused: {exc}"

    ip = _ip(text)
    if not prefix and ip is not None:
        assert said(_parse_address) == str(ip) and _address_key(text) == _ip_key(ip)
    else:
        assert said(_parse_address).startswith("refused")
    try:
        net = _network(ipaddress.ip_network(text))
    except ValueError:
        assert said(_parse_cidr).startswith("refused")
    else:
        assert said(_parse_cidr) == str(net)
        assert _network_key(str(net)) == (net.version, net.prefixlen, int(net.network_address))


def _unit(address: str) -> Device:
    return Device(
        product="Rally Bar", transport=Transport.SNMP, address=address, first_seen=NOW, last_seen=NOW
    )


_v4_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
_v6_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)
)


@settings(max_examples=150, deadline=None)
@given(
    nets=st.lists(_v4_nets | _v6_nets, min_size=1, max_size=12, unique_by=lambda n: _network(n)),
    probes=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 2**128 - 1), min_size=1, max_size=5),
)
def test_placement_by_ranges_is_the_narrowest_holding_range(nets: list[Any], probes: list[int]) -> None:
    room_map = RoomMap([rule("cidr", str(n), f"r{i}") for i, n in enumerate(nets)])
    normal = [_network(n) for n in nets]
    for number in probes:
        ip = ipaddress.ip_address(number)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        ip = mapped or ip
        holding = [(n.prefixlen, -i) for i, n in enumerate(normal) if n.version == ip.version and ip in n]
        expected = f"r{-max(holding)[1]}" if holding else None
        shown = f"[{ip}]:161" if ip.version == 6 else f"{ip}:161"
        assert place(_unit(shown), room_map) == expected


def test_placing_units_costs_the_same_by_a_map_of_many_ranges(tmp_path: Path) -> None:
    # 30,000 ranges: compared with each, 1,000 units took ~10 s; looked up once a prefix
    # length the map uses, as long as by a map of four rules.
    path = tmp_path / "rooms.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("match,value,room\nserial,SN1,r0\nhost,pc-1,r0\naddress,10.0.0.1,r0\n")
        fh.writelines(
            f"cidr,172.{16 + n // 4096}.{n // 16 % 256}.{n % 16 * 16}/28,r{n % 500}\n" for n in range(30_000)
        )
    big = load_room_map(path)
    small = RoomMap(
        [rule("serial", "SN1", "r0"), rule("address", "10.0.0.1", "r0"), rule("cidr", "172.16.0.0/28", "r0")]
    )
    units = [_unit(f"192.168.{i // 250}.{1 + i % 250}:161") for i in range(1000)]

    def seconds(room_map: RoomMap) -> float:
        started = time.perf_counter()
        assert [place(unit, room_map) for unit in units] == [None] * len(units)
        return time.perf_counter() - started

    small_seconds = min(seconds(small) for _ in range(3))
    big_seconds = min(seconds(big) for _ in range(3))
    assert big_seconds < 5 * small_seconds + 0.2, (big_seconds, small_seconds)
    assert place(_unit("172.16.0.17"), big) == "r1"
