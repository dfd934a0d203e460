"""What every CSV file operators hand the agent has in common (entitlements, room maps):
a size cap, UTF-8 with or without Excel's byte-order mark, a refusal that lists every
problem as ``file:line: column: what is wrong``, and column names compared loosely.
"""

from __future__ import annotations

from pathlib import Path

from agent.sanitize import is_placeholder_serial, normalize_serial

#: Undecodable lines listed one by one at most; the rest are counted.
MAX_ENCODING_PROBLEMS = 20


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
    """``;`` when the header line uses it more than ``,`` (Excel in many locales), else ``,``."""
    return ";" if header.count(";") > header.count(",") else ","


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
