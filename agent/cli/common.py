"""What every command shares: exit statuses, usage errors, loading the configuration, printing
JSON and tables, writing an output file.

Nothing heavy is imported at module level (``roomsync --help`` imports this module).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, TypeAlias, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agent.config import LoadedConfig

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_Model = TypeVar("_Model", bound="BaseModel")


class UsageError(Exception):
    """Bad arguments or configuration: reported in one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class Parents:
    """The option groups several commands share (argparse parent parsers)."""

    #: --config, -v, --log-format
    common: argparse.ArgumentParser
    #: --state-dir
    state: argparse.ArgumentParser
    #: --room-map
    rooms: argparse.ArgumentParser
    #: --usb, --sysfs-root, --snmp…: the sources to run and their settings
    sources: argparse.ArgumentParser
    #: --portal-url, --token-file…: where to deliver
    portal: argparse.ArgumentParser


def load(args: argparse.Namespace) -> LoadedConfig:
    """The configuration ``--config`` names (or the default one), with logging set up for a
    one-shot command."""
    from agent.config import ConfigError, load_config
    from agent.log import configure

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(exc.problems)) from None
    cfg = loaded.config
    # A one-shot command prints its result, not its progress, unless asked (-v, -vv).
    level = {0: "warning", 1: "info"}.get(args.verbose, "debug")
    configure(level, args.log_format or cfg.log.format)
    return loaded


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def json_item(item: object) -> str:
    """An item of a list as :func:`print_json` writes it (before the list's own indent)."""
    return json.dumps(item, indent=2, ensure_ascii=False, default=str)


def print_json_items(items: Iterable[object]) -> None:
    """:func:`print_json` of a list, its items made and written one at a time (a list of
    millions is not held as JSON)."""
    print_json_texts(map(json_item, items))


def print_json_texts(texts: Iterable[str]) -> None:
    """:func:`print_json_items` of items already made into text by :func:`json_item`."""
    out = sys.stdout
    first = True
    for text in texts:
        out.write("[\n  " if first else ",\n  ")
        # json escapes a line end in a string: every line end is the layout's, indented once more.
        out.write(text.replace("\n", "\n  "))
        first = False
    out.write("[]\n" if first else "\n]\n")


def print_table(headers: Sequence[str], rows: Callable[[], Iterable[Sequence[str]]]) -> None:
    """:func:`table`, printed a line at a time: ``rows()`` is called twice, for the widths
    and for the lines (rows of millions of units are not held as text)."""
    from agent.sanitize import printable

    widths = [len(h) for h in headers]
    for row in rows():
        widths = [max(w, len(printable(c))) for w, c in zip(widths, row, strict=True)]
    out = sys.stdout
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in rows():
        out.write("  ".join(printable(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under headers, columns aligned; every cell printable (agent.sanitize.printable:
    what a device or a portal wrote cannot drive the terminal)."""
    from agent.sanitize import printable

    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def revalidate(settings: _Model, overrides: Mapping[str, object], flags: str) -> _Model:
    """``settings`` with command-line ``overrides``, validated like the configuration."""
    from pydantic import ValidationError

    if not overrides:
        return settings
    try:
        return type(settings).model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"{flags}: {problems}") from None


def write_output(path: str | None, text: str, flag: str = "--output") -> None:
    """``text`` to the file ``path`` (``None``: stdout) as it is (no newline translation).

    A file that cannot be written — no such directory, no permission, a full disk — is a
    usage error (exit 2) naming the path and the reason, never a traceback."""
    if not path:
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8", newline="") as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above zero (``nan``, ``inf``, 0 and
    negative numbers are usage errors, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, not {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    if text.strip() in {"0", "0.0", "0e0"}:
        return 0.0
    return seconds(text)


def parse_day(text: str | None, flag: str) -> date:
    """The day ``text`` names (YYYY-MM-DD); when ``None``, today as every part of the agent
    takes it: the UTC day (:func:`agent.model.utc_today`)."""
    if text is None:
        from datetime import UTC, datetime

        from agent.model import utc_today

        return utc_today(datetime.now(UTC))
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text}: expected a date as YYYY-MM-DD") from None
