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

A file is read a block of lines at a time (:class:`CsvBlock`, about :data:`BLOCK_CHARS` of text),
never held whole: what reading costs in memory is one block, whatever the file's size. A block of
plain rows (no quote, comment, blank line, NUL or short row) is split with ``str.split`` and
checked as a whole; any other block is read line by line, which the plain case must equal.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import IO

from agent.sanitize import is_placeholder_serial, normalize_serial

#: Undecodable lines listed one by one at most; the rest are counted.
MAX_ENCODING_PROBLEMS = 20
#: The delimiters a header may use, in the order that wins a tie.
DELIMITERS = (",", ";", "\t")
#: Lines a quoted cell is followed over before its quote is taken for a missing one.
MAX_CELL_LINES = 100
#: How much of a cell a message quotes.
_SNIPPET = 40
#: Text read at a time (whole lines): the rows of one :class:`CsvBlock`.
BLOCK_CHARS = 256 * 1024
#: Bytes that are not UTF-8, as the ``surrogateescape`` error handler keeps them: valid UTF-8
#: never decodes to a lone surrogate, so one of these in the text is an undecodable line.
_UNDECODED = re.compile("[\udc80-\udcff]")


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
        raise _too_large(name, max_bytes, error)
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


@dataclass(frozen=True, slots=True)
class CsvBlock:
    """Data rows read together: the physical line of each row (ascending), and for each known
    column, in the header's order, its cells (one per row, without surrounding space, ``""``
    when blank). What the import of a large file checks column by column."""

    lines: Sequence[int]
    columns: dict[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.lines)


class CsvReader:
    """One read of one file. :meth:`read` checks the header (a problem that leaves nothing to
    read raises ``error`` at once) and returns the data rows; it records every other problem
    in :attr:`problems`, which the caller extends with its own (:meth:`problem`) and refuses
    the file by (:meth:`refuse`). The file's size and its encoding are checked as
    :func:`file_text` checks them, and win over every other problem, as if the whole text had
    been decoded first (the file is read a block at a time: a line that is not UTF-8 may come
    after rows already read; they are then dropped)."""

    def __init__(self, name: str, layout: CsvLayout, error: type[CsvFileError] = CsvFileError) -> None:
        self.name = name
        self.layout = layout
        self.error = error
        self.problems: list[str] = []
        self._lines: list[int] = []  # the line of each problem
        self.delimiter = ","
        self.header_line = 0
        #: The size of what is read (bytes, or characters of a text), known once read begins.
        self.size = 0
        #: Known column names by position (``None`` for a column that is not read).
        self.columns: list[str | None] = []
        self._names: list[str] = []

    def problem(self, line: int, column: str | None, what: str) -> None:
        where = f"{self.name}:{line}: {column}: " if column else f"{self.name}:{line}: "
        self.problems.append(where + what)
        self._lines.append(line)

    def refuse(self) -> None:
        """Raise ``error`` with every problem found, if there is one, in the order of the
        file's lines: a block read line by line records its lines' problems before the caller
        checks the cells of its rows (the problems of one line all come from one of the two)."""
        if self.problems:
            order = sorted(range(len(self.problems)), key=self._lines.__getitem__)
            raise self.error([self.problems[i] for i in order])

    def read(self, data: str | bytes | Path, max_bytes: int) -> Iterator[CsvRow]:
        """Read ``data`` (bytes as read from a file, text, or the path of a file), check the
        header and return an iterator over the data rows. Rows are read only when the header
        names every required column; a row with a problem is recorded, not returned."""
        return (
            (line, dict(zip(block.columns, cells, strict=True)))
            for block in self.blocks(data, max_bytes)
            for line, cells in zip(block.lines, zip(*block.columns.values(), strict=True), strict=True)
        )

    def blocks(self, data: str | bytes | Path, max_bytes: int) -> Iterator[CsvBlock]:
        """As :meth:`read`, the rows a block at a time (a block may hold no row)."""
        text = _Lines(data, self.name, max_bytes, self.error)
        self.size = text.size
        try:
            header = text.readline()
            while header is not None and not _holds_cells(header):
                header = text.readline()
            if header is None:
                text.rest()
                raise self.error(
                    [
                        f"{self.name}:1: the file is empty: it needs a header row naming "
                        f"the columns ({self.layout.example})"
                    ]
                )
            self.header_line = text.line
            try:
                self._header(header)
            except CsvFileError:
                text.rest()  # a line that is not UTF-8 is the problem to report, wherever it is
                raise
            if any(column not in self.columns for column in self.layout.required):
                text.rest()
                text.close()
                return iter(())
        except BaseException:
            text.close()
            raise
        return self._blocks(text)

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

    def _blocks(self, text: _Lines) -> Iterator[CsvBlock]:
        names = [c for c in self.columns if c is not None]
        plain = _plain_rows(self.delimiter, len(names)) if len(names) == len(self.columns) else None
        try:
            while True:
                first = text.line + 1
                chunk = text.block()
                if not chunk:
                    return
                body = chunk[:-1] if chunk[-1] == "\n" else chunk
                if plain is not None and plain.fullmatch(body):
                    # Every line a plain row (what _plain_rows says): its cells are what _rows
                    # would split it into. Split all at once, a column every len(names) cells.
                    cells = body.replace("\n", self.delimiter).split(self.delimiter)
                    yield CsvBlock(
                        range(first, text.line + 1),
                        {name: tuple(map(str.strip, cells[i :: len(names)])) for i, name in enumerate(names)},
                    )
                else:
                    yield self._rows(body.split("\n"), first, text)
        finally:
            text.close()

    def _rows(self, lines: list[str], first: int, text: _Lines) -> CsvBlock:
        """The rows of ``lines`` (the first on line ``first``), read line by line; problems
        recorded. A quoted cell not closed on its line reads on into the lines after
        ``lines``, which ``lines`` is extended by."""
        width = len(self.columns)
        text_first = self.columns[0] in self.layout.text_columns
        known = [(i, c) for i, c in enumerate(self.columns) if c is not None]
        numbers: list[int] = []
        rows: list[list[str]] = []
        index = 0
        while index < len(lines):
            line_text = lines[index]
            line = first + index
            index += 1
            stripped = line_text.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if text_first:
                    self._comment(line, line_text, width)
                continue
            try:
                cells = (
                    split_cells(line_text, self.delimiter)
                    if '"' in line_text
                    else line_text.split(self.delimiter)
                )
            except _Syntax as exc:
                if exc.unclosed:
                    text.more(lines, index - 1 + MAX_CELL_LINES)
                    index = self._unclosed(lines, index - 1, exc, width, first)
                else:
                    self.problem(line, self._column(exc.index), _syntax_problem(line_text, exc))
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
            if "\x00" in line_text:
                position = next(i for i, c in enumerate(cells) if "\x00" in c)
                self.problem(
                    line,
                    self._column(position),
                    "holds a NUL character: is this a text file? Save it as 'CSV UTF-8'",
                )
                continue
            numbers.append(line)
            rows.append([cells[i].strip() for i, _ in known])
        columns = zip(*rows, strict=True) if rows else repeat((), len(known))
        return CsvBlock(numbers, dict(zip((c for _, c in known), columns, strict=True)))

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

    def _unclosed(self, lines: list[str], index: int, exc: _Syntax, width: int, first: int) -> int:
        """Report a quoted cell not closed on its line (``lines[index]``, physical line
        ``first + index``); the index of the line to read next. When following the cell over
        the next lines closes it into a whole row, the cell holds line breaks (those lines are
        skipped); otherwise its closing quote is missing."""
        line, column = first + index, self._column(exc.index)
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
                    f"the quoted cell runs over lines {line}-{first + after}: a cell cannot hold a "
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


def _too_large(name: str, max_bytes: int, error: type[CsvFileError]) -> CsvFileError:
    return error(
        [f"{name}: the file is larger than the {_size(max_bytes)} limit: split it into smaller files"]
    )


def _decode(data: bytes, name: str, error: type[CsvFileError]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _undecodable(io.BytesIO(data), name, error) from None


def _undecodable(raw: IO[bytes], name: str, error: type[CsvFileError]) -> CsvFileError:
    """The error for bytes that are not UTF-8 (``raw`` read from its start): each undecodable
    line named (lines end at LF, as a byte editor counts them), at most
    :data:`MAX_ENCODING_PROBLEMS` of them."""
    raw.seek(0)
    if raw.read(2) in (b"\xff\xfe", b"\xfe\xff"):
        return error(
            [f"{name}:1: the file is UTF-16 (Excel's 'Unicode Text'): save it as 'CSV UTF-8' instead"]
        )
    raw.seek(0)
    problems = []
    bad_lines = 0
    for number, line in enumerate(raw, start=1):
        try:
            line.decode("utf-8")  # the LF at the end moves no error: it is never part of one
        except UnicodeDecodeError as exc:
            bad_lines += 1
            if bad_lines <= MAX_ENCODING_PROBLEMS:
                problems.append(
                    f"{name}:{number}: byte 0x{line[exc.start]:02X} at character "
                    f"{exc.start + 1} is not UTF-8: save the file as 'CSV UTF-8'"
                )
    if bad_lines > MAX_ENCODING_PROBLEMS:
        problems.append(f"{name}: {bad_lines - MAX_ENCODING_PROBLEMS} more lines are not UTF-8")
    return error(problems)


class _Lines:
    """The lines of a file's text, read about :data:`BLOCK_CHARS` at a time: CRLF, LF and CR
    end a line, a byte-order mark at the start is dropped, as :func:`file_text` and
    ``CsvReader`` read a whole text. ``line`` is the physical line of the last line handed out.
    Raises ``error`` for a file over ``max_bytes`` (before reading it), one that cannot be read,
    or, as soon as a line is not UTF-8, with every undecodable line of the whole file."""

    def __init__(
        self, data: str | bytes | Path, name: str, max_bytes: int, error: type[CsvFileError]
    ) -> None:
        self.name, self.max_bytes, self.error = name, max_bytes, error
        self.line = 0
        #: What is read: bytes (or characters of a text given as one).
        self.size = 0
        self._started = False
        self._buffer = ""  # whole lines read, handed out up to _at
        self._at = 0
        #: The bytes, to list the undecodable lines (``None`` for a text: decoded already).
        self._raw: IO[bytes] | None = None
        self._stream: IO[str] | None = None
        self._text: str | None = None  # a text given whole, read by slicing
        self._text_at = 0
        if isinstance(data, str):
            self._check_size(len(data))
            # One copy with plain line ends (io.StringIO would hold four bytes a character).
            self._text = data.replace("\r\n", "\n").replace("\r", "\n") if "\r" in data else data
            return
        if isinstance(data, bytes):
            self._check_size(len(data))
            self._raw = io.BytesIO(data)
        else:
            self._raw = self._open(data)
        self._stream = io.TextIOWrapper(self._raw, encoding="utf-8", errors="surrogateescape", newline=None)

    def _check_size(self, size: int) -> None:
        self.size = size
        if size > self.max_bytes:
            raise _too_large(self.name, self.max_bytes, self.error)

    def _open(self, path: Path) -> IO[bytes]:
        """The file, unread: a regular file is checked against the size cap by its size; a
        pipe or a device is read (at most the cap and one byte) and checked by what it gave."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 -- closed by close(), after the last block
        except OSError as exc:
            raise self._unreadable(exc) from exc
        try:
            info = os.fstat(fh.fileno())
            if stat.S_ISREG(info.st_mode):
                self._check_size(info.st_size)
                return fh
            with fh:
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            fh.close()
            raise self._unreadable(exc) from exc
        except CsvFileError:
            fh.close()
            raise
        self._check_size(len(data))
        return io.BytesIO(data)

    def _unreadable(self, exc: OSError) -> CsvFileError:
        return self.error([f"{self.name}: cannot read the file: {exc.strerror or exc}"])

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def _chunk(self) -> str:
        """The next piece of the text: whole lines, about :data:`BLOCK_CHARS`; ``""`` at the end."""
        if self._text is not None:
            start = self._text_at
            end = self._text.find("\n", start + BLOCK_CHARS - 1)
            self._text_at = len(self._text) if end < 0 else end + 1
            chunk = self._text[start : self._text_at]
        else:
            assert self._stream is not None and self._raw is not None
            try:
                chunk = self._stream.read(BLOCK_CHARS)
                if chunk and chunk[-1] != "\n":
                    chunk += self._stream.readline()
                if self._raw.tell() > self.max_bytes:  # a file that grew while it was read
                    raise _too_large(self.name, self.max_bytes, self.error)
            except OSError as exc:
                raise self._unreadable(exc) from exc
            if not chunk.isascii() and _UNDECODED.search(chunk):
                raise _undecodable(self._raw, self.name, self.error)
        if not self._started:
            self._started = True
            chunk = chunk.removeprefix("\ufeff")
        return chunk

    def readline(self) -> str | None:
        """The next line (without its line end), or ``None`` at the end of the text."""
        if self._at >= len(self._buffer):
            self._buffer, self._at = self._chunk(), 0
            if not self._buffer:
                return None
        end = self._buffer.find("\n", self._at)
        if end < 0:  # the last line, without a line end
            end = len(self._buffer)
        line = self._buffer[self._at : end]
        self._at = end + 1
        self.line += 1
        return line

    def block(self) -> str:
        """The next lines (at least one), as text: each ends with a line end but the file's
        last one may not; ``""`` at the end of the text."""
        text = self._buffer[self._at :] if self._at < len(self._buffer) else self._chunk()
        self._buffer, self._at = "", 0
        if text:
            self.line += text.count("\n") + (text[-1] != "\n")
        return text

    def more(self, lines: list[str], count: int) -> None:
        """Extend ``lines`` by the next lines until it holds ``count`` (or the text ends)."""
        while len(lines) < count and (line := self.readline()) is not None:
            lines.append(line)

    def rest(self) -> None:
        """Read the text to its end, unused: a line that is not UTF-8 raises as anywhere."""
        self._buffer, self._at = "", 0
        while self._chunk():
            pass


@lru_cache(maxsize=16)
def _plain_rows(delimiter: str, width: int) -> re.Pattern[str]:
    """Lines (joined by LF) that are each a plain row of ``width`` cells: no quote, no NUL,
    not a comment (``#`` first, after white space), not only white space and delimiters.
    Possessive: linear in the text, whatever it holds."""
    d = re.escape(delimiter)
    cell = rf'[^{d}\n"\x00]*+'
    row = rf"(?![^\S\n]*+#)(?!(?:[^\S\n]|{d})*+(?:\n|\Z)){cell}(?:{d}{cell}){{{width - 1}}}"
    return re.compile(rf"(?:{row}\n)*+{row}")
