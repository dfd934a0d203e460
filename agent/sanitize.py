"""Cleaning strings that come from devices: USB descriptors, DMI, SNMP, TXT records.

Devices lie, pad and truncate. Every string read from outside goes through
:func:`clean_text` so that what reaches the inventory, the logs and the portal is printable
UTF-8 of sane length, and every repair is reported rather than hidden.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

#: USB string descriptors hold at most 126 UTF-16 code units; DMI strings are similar.
DEFAULT_MAX_LEN = 128

# Values that firmware and BIOS vendors put where a serial should be.
_PLACEHOLDER_SERIALS = frozenset(
    s.casefold()
    for s in (
        "To be filled by O.E.M.",
        "To Be Filled By O.E.M.",
        "Default string",
        "System Serial Number",
        "Chassis Serial Number",
        "Not Specified",
        "Not Applicable",
        "None",
        "Null",
        "N/A",
        "NA",
        "Unknown",
        "Invalid",
        "Serial",
        "SerialNumber",
        "123456789",
        "1234567890",
        "0123456789",
        "ABCDEF",
        "XXXXXXXX",
        "Base Board Serial Number",
        "OEM",
        "O.E.M.",
        "Type2 - Board Serial Number",
    )
)
_REPEATED_CHAR = re.compile(r"^(.)\1*$")


#: Names of settings, log keys and device fields whose values are secrets (a ``*_file`` key
#: holds a path, which is not).
_SECRET_KEY = re.compile(
    r"(password|passwd|passphrase|secret|token(?!_file)|community|authorization"
    r"|auth_key(?!_file)|priv_key(?!_file)|api_key|private_key(?!_file)|credential)",
    re.IGNORECASE,
)
MASK = "********"
#: Zero-width (non-)joiners are format characters that text needs: emoji sequences (👨‍👩‍👧),
#: Persian and Indic scripts. Kept; every other format character is dropped.
_JOINERS = frozenset("\u200c\u200d")


@lru_cache(maxsize=4096)  # device JSON repeats the same few hundred keys on every parse
def is_secret_key(name: str) -> bool:
    """True when a value stored under ``name`` must never be shown or logged."""
    return _SECRET_KEY.search(name) is not None


@dataclass(frozen=True, slots=True)
class CleanText:
    """A cleaned string (``None`` when nothing usable was left) and what was repaired."""

    value: str | None
    problems: tuple[str, ...] = ()

    @property
    def trustworthy(self) -> bool:
        """False after a repair that may have changed the text itself (a serial so repaired
        can no longer be trusted as the one printed on the label)."""
        return trustworthy(self.problems)


#: Repairs after which the text may differ from what the device meant to say.
_ALTERING_REPAIRS = frozenset({"not-utf8", "too-long", "control-chars", "nul-padded"})


def trustworthy(problems: tuple[str, ...] | list[str]) -> bool:
    return _ALTERING_REPAIRS.isdisjoint(problems)


def clean_text(raw: bytes | str | None, *, max_len: int = DEFAULT_MAX_LEN) -> CleanText:
    """Decode and tidy one device string.

    - bytes are decoded as UTF-8; undecodable bytes become U+FFFD (problem ``not-utf8``);
    - NUL padding and surrounding white space are removed (``nul-padded`` when NULs were
      inside the text, not just at its end);
    - control and format characters are dropped (``control-chars``);
    - text longer than ``max_len`` is cut (``too-long``);
    - an empty result is ``None`` (``empty``).
    """
    if raw is None:
        return CleanText(None, ("missing",))
    problems: list[str] = []
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            problems.append("not-utf8")
    else:
        text = raw
    stripped = text.rstrip("\x00\r\n\t ")
    if "\x00" in stripped:
        # NUL inside the text: firmware wrote a fixed-size buffer; keep the part before it.
        stripped = stripped.split("\x00", 1)[0]
        problems.append("nul-padded")
    kept: list[str] = []
    dropped = False
    for ch in stripped:
        category = unicodedata.category(ch)
        if category[0] == "C" and ch not in _JOINERS:  # control, format, surrogate, private use…
            dropped = True
        elif category[0] == "Z":  # any kind of space or line separator
            kept.append(" ")
        else:
            kept.append(ch)
    if dropped:
        problems.append("control-chars")
    cleaned = "".join(kept)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > max_len:
        cleaned = cleaned[:max_len].rstrip()
        problems.append("too-long")
    if not cleaned:
        return CleanText(None, (*problems, "empty"))
    return CleanText(cleaned, tuple(problems))


def printable(text: str) -> str:
    """``text`` from outside (a portal's reply, a stored error) safe for a log line and a
    terminal: control and format characters dropped (an ANSI escape sequence can no longer
    recolour or rewrite the operator's terminal), white space of any kind one space."""
    kept = [
        " " if unicodedata.category(ch)[0] == "Z" or ch in "\t\r\n" else ch
        for ch in text
        if ch in "\t\r\n" or unicodedata.category(ch)[0] != "C" or ch in _JOINERS
    ]
    return " ".join("".join(kept).split())


def is_placeholder_serial(value: str | None) -> bool:
    """True for serials that firmware fills in when it has none (never label-grade)."""
    if value is None:
        return True
    v = value.strip()
    if not v:
        return True
    if v.casefold() in _PLACEHOLDER_SERIALS:
        return True
    # 0000000000, FFFFFFFF, ......: one character repeated is never a real serial.
    return bool(len(v) >= 3 and _REPEATED_CHAR.match(v))


def clean_serial(raw: bytes | str | None, *, max_len: int = 64) -> CleanText:
    """:func:`clean_text` for serial numbers: placeholders become ``None`` (``placeholder``)."""
    cleaned = clean_text(raw, max_len=max_len)
    if cleaned.value is not None and is_placeholder_serial(cleaned.value):
        return CleanText(None, (*cleaned.problems, "placeholder"))
    return cleaned


def normalize_serial(serial: str) -> str:
    """The form serials are compared in (entitlement records, room maps, inventory): no
    white space, upper case."""
    return "".join(serial.split()).upper()
