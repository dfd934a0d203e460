"""The one CSV reader for the files operators hand the agent (entitlements, room maps).

Both files are read in one dialect, described for operators in ``docs/csv-formats.md``:

* at most a size cap (each file names its own), UTF-8 with or without Excel's byte-order mark;
* ``,``, ``;`` or a tab as the delimiter: whichever the header line holds most (``,`` on a tie);
* a line is a row: CRLF, LF or CR line ends; a quoted cell may hold the delimiter and ``""``
  (a quote) but not a line break, and is refused, naming its line and column, when it runs
  over lines (a cell with a line break typed in a spreadsheet, or a missing closing quote);
* blank lines, and lines of empty cells (``;;;``), are skipped anywhere;
* a line whose first non-blank character is ``#`` is a comment, before or after the header;
  a cell that starts with ``#`` is data when quoted (``"#5 Board"``). When the first column
  holds free text, a ``#`` line with a cell for every column might be either and is refused;
* the first other line is the header: column names compared without case or surrounding
  space, ``' '`` and ``'-'`` read as ``_``; unknown, unnamed and repeated columns refused;
* surrounding space in a cell is ignored; extra *empty* cells at the end of a row too
  (spreadsheets write them); any other row must have as many cells as the header.

A file with any problem is refused whole: every problem is listed as
``FILE:LINE: COLUMN: what is wrong`` (``FILE:LINE: what is wrong`` for a whole row, ``FILE: what
is wrong`` for the whole file) in a :class:`CsvFileError`; line numbers are physical lines.
:class:`CsvReader` does the reading; the modules of each file check the cells' values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.sanitize import is_placeholder_serial, normalize_serial

#: Undecodable lines listed one by one at most; the rest are counted.
MAX_ENCODING_PROBLEMS = 20
#: The delimiters a header may use, in the order that wins a tie.
DELIMITERS = (",", ";", "\t")
#: Lines a quoted cell is followed over before its quote is taken for a missing one.
MAX_CELL_LINES = 100
#: How much of a cell a message quotes.
_SNIPPET = 40


class CsvFileError(ValueError):
    """A CSV file was refused. ``problems`` lists every problem, one line each; ``str()``
    joins them with newlines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class CellError(ValueError):
    """One cell's value is wrong; the message says how (the caller adds file, line, column)."""


def serial_cell(text: str, max_len: int = 64) -> str:
    """A serial number cell, normalised (no white space, upper case); placeholders refused."""
    serial = normalize_serial(text)
    if not serial.isprintable():
        raise CellError(f"{text!r} holds control characters")
    if len(serial) > max_len:
        raise CellError(f"is longer than {max_len} characters")
    if is_placeholder_serial(serial):
        raise CellError(f"{text!r} is a placeholder, not a serial")
    return serial


def read_file(path: str | Path, max_bytes: int, error: type[CsvFileError] = CsvFileError) -> bytes:
    """The file's bytes, at most ``max_bytes + 1`` of them (so the size check can tell)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise error([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc


def file_text(data: str | bytes, name: str, max_bytes: int, error: type[CsvFileError] = CsvFileError) -> str:
    """Check the size, decode UTF-8 (every undecodable line named) and drop a byte-order mark."""
    if len(data) > max_bytes:
        raise error(
            [f"{name}: the file is larger than the {_size(max_bytes)} limit: split it into smaller files"]
        )
    text = _decode(data, name, error) if isinstance(data, bytes) else data
    return text.removeprefix("\ufeff")


def normalize_column(name: str) -> str:
    """Column names compare without case, surrounding space, and with ' ' or '-' as '_'."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def delimiter_of(header: str) -> str:
    """The delimiter the header line holds most of: ``,``, ``;`` (Excel in many locales) or a
    tab; ``,`` on a tie."""
    return max(DELIMITERS, key=header.count)


# --------------------------------------------------------------------------- one line


class _Syntax(Exception):
    """A line that is not CSV: cell ``index`` (from 0), at ``text[start:end]``, has a quote that
    is not closed on the line (``unclosed``) or text after its closing quote."""

    def __init__(self, index: int, start: int, end: int, unclosed: bool) -> None:
        super().__init__(index, start, end, unclosed)
        self.index, self.start, self.end, self.unclosed = index, start, end, unclosed

    def cell(self, text: str) -> str:
        """The cell's text as written, at most :data:`_SNIPPET` characters of it."""
        return text[self.start : min(self.end, self.start + _SNIPPET)]


def split_cells(text: str, delimiter: str) -> list[str]:
    """The cells of one line, unquoted: a cell that starts with ``"`` (after spaces) ends at
    the next lone ``"``, and ``""`` inside it is one quote; a ``"`` inside an unquoted cell is
    an ordinary character. Raises :class:`_Syntax`."""
    if '"' not in text:
        return text.split(delimiter)
    cells: list[str] = []
    end = len(text)
    pos = 0
    while True:
        start = pos
        while pos < end and text[pos] == " ":
            pos += 1
        if pos < end and text[pos] == '"':
            quote = pos
            parts = []
            pos += 1
            while True:
                close = text.find('"', pos)
                if close < 0:
                    raise _Syntax(len(cells), quote, end, unclosed=True)
                parts.append(text[pos:close])
                if text.startswith('"', close + 1):
                    parts.append('"')
                    pos = close + 2
                    continue
                pos = close + 1
                break
            while pos < end and text[pos] == " ":
                pos += 1
            if pos < end and text[pos] != delimiter:
                found = text.find(delimiter, pos)
                raise _Syntax(len(cells), quote, end if found < 0 else found, unclosed=False)
            cells.append("".join(parts))
        else:
            found = text.find(delimiter, start)
            pos = end if found < 0 else found
            cells.append(text[start:pos])
        if pos >= end:
            return cells
        pos += 1


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """What one kind of file holds. ``required`` maps each required column to the message
    given when the header lacks it; ``example`` is the header shown in messages;
    ``text_columns`` hold free text, so their cells may start with ``#``."""

    columns: tuple[str, ...]
    required: Mapping[str, str]
    example: str
    text_columns: frozenset[str] = frozenset()


#: One data row: the physical line it is on and the cell of each known column, without
#: surrounding space (``""`` when blank).
CsvRow = tuple[int, dict[str, str]]


class CsvReader:
    """One read of one file. :meth:`read` checks the whole file's text and the header (a
    problem that leaves nothing to read raises ``error`` at once) and returns the data rows;
    it records every other problem in :attr:`problems`, which the caller extends with its own
    (:meth:`problem`) and refuses the file by (:meth:`refuse`)."""

    def __init__(self, name: str, layout: CsvLayout, error: type[CsvFileError] = CsvFileError) -> None:
        self.name = name
        self.layout = layout
        self.error = error
        self.problems: list[str] = []
        self.delimiter = ","
        self.header_line = 0
        #: Known column names by position (``None`` for a column that is not read).
        self.columns: list[str | None] = []
        self._names: list[str] = []

    def problem(self, line: int, column: str | None, what: str) -> None:
        where = f"{self.name}:{line}: {column}: " if column else f"{self.name}:{line}: "
        self.problems.append(where + what)

    def refuse(self) -> None:
        """Raise ``error`` with every problem found, if there is one."""
        if self.problems:
            raise self.error(self.problems)

    def read(self, data: str | bytes, max_bytes: int) -> Iterator[CsvRow]:
        """Decode ``data`` (bytes as read from a file, or text), read the header and return an
        iterator over the data rows. Rows are read only when the header names every required
        column; a row with a problem is recorded, not returned."""
        text = file_text(data, self.name, max_bytes, self.error)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # CRLF, LF or CR
        index = next((i for i, text in enumerate(lines) if _holds_cells(text)), None)
        if index is None:
            raise self.error(
                [
                    f"{self.name}:1: the file is empty: it needs a header row naming "
                    f"the columns ({self.layout.example})"
                ]
            )
        self.header_line = index + 1
        self._header(lines[index])
        if any(column not in self.columns for column in self.layout.required):
            return iter(())
        return self._rows(lines, index + 1)

    def _header(self, text: str) -> None:
        line, layout = self.header_line, self.layout
        self.delimiter = delimiter_of(text)
        try:
            cells = split_cells(text, self.delimiter)
        except _Syntax as exc:
            raise self.error(
                [f"{self.name}:{line}: column {exc.index + 1}: {_syntax_problem(text, exc)}"]
            ) from None
        names = [normalize_column(c) for c in cells]
        while names and not names[-1]:
            names.pop()  # spreadsheets write empty columns at the end
        if not any(n in layout.columns for n in names):
            shown = self.delimiter.join(cells)[:80]
            raise self.error(
                [
                    f"{self.name}:{line}: no header row: the first line must name the "
                    f"columns ({layout.example}), found {shown!r}"
                ]
            )
        seen: dict[str, int] = {}
        for position, column in enumerate(names, start=1):
            if not column:
                self.problem(line, f"column {position}", "has no name")
            elif column not in layout.columns:
                self.problem(line, column, "unknown column" + _suggestion(column, layout.columns))
            elif column in seen:
                self.problem(line, column, f"appears twice (columns {seen[column]} and {position})")
            else:
                seen[column] = position
            self.columns.append(column if seen.get(column) == position else None)
        for column, why in layout.required.items():
            if column not in seen:
                self.problem(line, column, why)
        self._names = names

    def _rows(self, lines: list[str], start: int) -> Iterator[CsvRow]:
        width = len(self.columns)
        text_first = self.columns[0] in self.layout.text_columns
        known = [(i, c) for i, c in enumerate(self.columns) if c is not None]
        every = [c for _, c in known] if len(known) == width else None  # the common case, faster
        index = start
        while index < len(lines):
            text = lines[index]
            line = index + 1
            index += 1
            stripped = text.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if text_first:
                    self._comment(line, text, width)
                continue
            try:
                cells = split_cells(text, self.delimiter) if '"' in text else text.split(self.delimiter)
            except _Syntax as exc:
                if exc.unclosed:
                    index = self._unclosed(lines, index - 1, exc, width)
                else:
                    self.problem(line, self._column(exc.index), _syntax_problem(text, exc))
                continue
            if len(cells) > width and not "".join(cells[width:]).strip():
                cells = cells[:width]  # spreadsheets pad rows with empty cells
            if not "".join(cells).strip():
                continue  # a row of empty cells
            if len(cells) != width:
                self.problem(
                    line,
                    None,
                    f"the row has {len(cells)} cells but the header has {width} "
                    f"(the delimiter is {self.delimiter!r})",
                )
                continue
            if "\x00" in text:
                position = next(i for i, c in enumerate(cells) if "\x00" in c)
                self.problem(
                    line,
                    self._column(position),
                    "holds a NUL character: is this a text file? Save it as 'CSV UTF-8'",
                )
                continue
            if every is not None:
                yield line, dict(zip(every, map(str.strip, cells), strict=True))
            else:
                yield line, {c: cells[i].strip() for i, c in known}

    def _comment(self, line: int, text: str, width: int) -> None:
        """A ``#`` line when the first column holds text: refused when it could be a row."""
        try:
            cells = split_cells(text, self.delimiter)
        except _Syntax:
            return
        if len(cells) > width and not "".join(cells[width:]).strip():
            cells = cells[:width]
        if width > 1 and len(cells) == width:
            first = self._column(0)
            cell = cells[0].strip()[:_SNIPPET]
            self.problem(
                line,
                first,
                f"{cell!r} starts with '#' on a line with a cell for every column: a comment or "
                f'a row? Quote the cell if it is data ("{cell}"); for a comment, put a column '
                f"other than {first} first",
            )

    def _unclosed(self, lines: list[str], index: int, exc: _Syntax, width: int) -> int:
        """Report a quoted cell not closed on its line; the index of the line to read next.
        When following the cell over the next lines closes it into a whole row, the cell holds
        line breaks (those lines are skipped); otherwise its closing quote is missing."""
        line, column = index + 1, self._column(exc.index)
        text = lines[index]
        for after in range(index + 1, min(len(lines), index + MAX_CELL_LINES)):
            text += "\n" + lines[after]
            try:
                cells = split_cells(text, self.delimiter)
            except _Syntax as again:
                if again.unclosed:
                    continue
                break
            if len(cells) == width or (len(cells) > width and not "".join(cells[width:]).strip()):
                self.problem(
                    line,
                    column,
                    f"the quoted cell runs over lines {line}-{after + 1}: a cell cannot hold a "
                    "line break; remove it (typed with Alt+Enter in Excel)",
                )
                return after + 1
            break
        snippet = exc.cell(lines[index])
        self.problem(
            line,
            column,
            f"{snippet!r} opens a quote that is not closed on its line: add the closing '\"' "
            "(a cell cannot span lines)",
        )
        return index + 1

    def _column(self, index: int) -> str:
        """How a message names the column at ``index`` (from 0)."""
        if index < len(self._names) and self._names[index]:
            return self._names[index]
        return f"column {index + 1}"


def _holds_cells(text: str) -> bool:
    """Neither blank, nor a comment, nor a line of empty cells: a header candidate."""
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#") and bool(stripped.strip(",;\t"))


def _syntax_problem(text: str, exc: _Syntax) -> str:
    snippet = exc.cell(text)
    if exc.unclosed:
        return f"{snippet!r} opens a quote that is not closed on its line: add the closing '\"'"
    return (
        f"{snippet!r} has text after its closing quote: inside a quoted cell a quote is "
        'written twice ("5"" screen")'
    )


def _suggestion(name: str, columns: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known columns: {', '.join(columns)})"


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _decode(data: bytes, name: str, error: type[CsvFileError]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(
            [f"{name}:1: the file is UTF-16 (Excel's 'Unicode Text'): save it as 'CSV UTF-8' instead"]
        )
    problems = []
    bad_lines = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_lines += 1
            if bad_lines <= MAX_ENCODING_PROBLEMS:
                problems.append(
                    f"{name}:{number}: byte 0x{raw[exc.start]:02X} at character "
                    f"{exc.start + 1} is not UTF-8: save the file as 'CSV UTF-8'"
                )
    if bad_lines > MAX_ENCODING_PROBLEMS:
        problems.append(f"{name}: {bad_lines - MAX_ENCODING_PROBLEMS} more lines are not UTF-8")
    raise error(problems)
