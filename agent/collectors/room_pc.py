"""Room PCs: what a PC says about itself, and the Logitech units plugged into it.

The SSH source (:mod:`agent.discovery.ssh`) reaches a room PC and hands this collector what
it can read there:

* **Linux**: files only, through a :class:`RemoteFiles` reader (SFTP in production; no remote
  command is ever run). DMI under ``<sysfs_root>/class/dmi/id`` (system serial, board serial,
  vendor, product name, BIOS), host name, ``/etc/os-release``, ``/proc/uptime``, and the USB
  devices under ``<sysfs_root>/bus/usb/devices``, parsed by the local USB source's own code
  (:func:`agent.usbtree.parse_device`, :func:`~agent.usbtree.read_entries`).
* **Windows**: the JSON that :mod:`agent.collectors.windows_pc` parses.

Both end as one :class:`PcFacts`, which :func:`observe_pc` turns into observations: the PC
itself (catalog product "Room PC") and one observation per Logitech unit on its USB, all
placed in the host's configured room.

Serial rule (protocols.md, "On the network"): the system serial, falling back to the board
serial when the system serial is a placeholder ("To be filled by O.E.M.") or unreadable. A PC
with neither is reported with no serial, a health note and one problem line; never a crash.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.catalog import Catalog
from agent.collectors.usb_descriptor import observe_unit
from agent.model import HealthIssue, Observation, SerialSource, Severity, Transport
from agent.sanitize import clean_serial, clean_text, is_placeholder_serial
from agent.usbtree import (
    MAX_ATTRIBUTE_BYTES,
    UsbRecord,
    attribute_unreadable,
    group_units,
    parse_device,
    read_entries,
)

ROOM_PC = "Room PC"
SOURCE = "ssh"
DMI_DIR = "class/dmi/id"
#: DMI attribute files read on a Linux PC (``product_uuid`` is left out: root-only, and not
#: what a label or a warranty form carries).
DMI_FIELDS = (
    "product_serial",
    "board_serial",
    "sys_vendor",
    "product_name",
    "product_version",
    "board_vendor",
    "board_name",
    "bios_vendor",
    "bios_version",
    "bios_date",
)
HOSTNAME_FILES = ("/proc/sys/kernel/hostname", "/etc/hostname")
OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
UPTIME_FILE = "/proc/uptime"
MAX_TEXT_FILE_BYTES = 16 * 1024
#: More entries than this under bus/usb/devices is not a room PC's USB; the rest is skipped.
MAX_USB_ENTRIES = 1024
#: DMI serials shorter than this ("0", "00") are placeholders too.
MIN_SERIAL_LENGTH = 3
#: Placeholders of DMI names that are not also placeholder serials (agent.sanitize).
_PLACEHOLDER_NAMES = frozenset(
    ("system product name", "system manufacturer", "system version", "to be filled by o.e.m", "default")
)
_OS_RELEASE_LINE = re.compile(r"^\s*(?P<key>[A-Z0-9_]+)=(?P<value>.*)$")


class RemoteFiles(Protocol):
    """Read-only access to a PC's files (an SFTP session in production).

    ``read`` returns at most ``limit`` bytes of a file, ``None`` when it does not exist, and
    raises :class:`OSError` when it exists but cannot be read. A failure of the connection
    itself must be raised as something other than :class:`OSError`, so that it ends the
    reading of that PC instead of being recorded against one file.
    """

    def read(self, path: str, limit: int) -> bytes | None: ...

    def listdir(self, path: str) -> list[str]: ...


@dataclass(slots=True)
class PcFacts:
    """What was read from one room PC, whatever its operating system."""

    os_family: str
    #: Raw serials as read (bytes from sysfs, text from Windows); cleaned in :func:`choose_serial`.
    system_serial: bytes | str | None = None
    board_serial: bytes | str | None = None
    #: How each serial is named in messages (the DMI file, the CIM property).
    serial_names: tuple[str, str] = ("product_serial", "board_serial")
    #: Facts that exist but could not be read: name → reason ("Permission denied").
    unreadable: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    os_name: str | None = None
    vendor: str | None = None
    model: str | None = None
    bios_version: str | None = None
    uptime_s: int | None = None
    #: Further facts kept as the PC's attributes (board vendor, BIOS date…).
    attributes: dict[str, Any] = field(default_factory=dict)
    usb_records: list[UsbRecord] = field(default_factory=list)
    #: Extra attributes for the unit whose main function is the record of that name.
    usb_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: USB entries that could not be used, as ``(entry, message)``.
    usb_errors: list[tuple[str, str]] = field(default_factory=list)
    usb_message: str | None = None
    #: The attribute naming where a unit sits on the PC (``usb_port``, ``pnp_device_id``).
    usb_location_key: str = "usb_port"


@dataclass(frozen=True, slots=True)
class PcPlace:
    """Where the observations of one PC belong: the PC's address as shown in the inventory
    (``room-pc-12``, ``10.0.0.5:2222``) and the configured room."""

    address: str
    room: str | None = None


@dataclass(slots=True)
class PcReport:
    """The observations of one PC, and the problems worth one error line each."""

    observations: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- Linux


def read_linux_pc(files: RemoteFiles, sysfs_root: str = "/sys") -> PcFacts:
    """Read a Linux PC's identity and USB devices through ``files``."""
    facts = PcFacts("linux")
    _read_dmi(files, posixpath.join(sysfs_root, DMI_DIR), facts)
    facts.hostname = _first_text(files, HOSTNAME_FILES)
    facts.os_name = os_release_name(_first_file(files, OS_RELEASE_FILES))
    facts.uptime_s = parse_uptime(_optional(files, UPTIME_FILE, 256))
    _read_usb(files, posixpath.join(sysfs_root, "bus", "usb", "devices"), facts)
    return facts


def _read_dmi(files: RemoteFiles, dmi_dir: str, facts: PcFacts) -> None:
    text: dict[str, str] = {}
    for name in DMI_FIELDS:
        try:
            raw = files.read(posixpath.join(dmi_dir, name), MAX_ATTRIBUTE_BYTES)
        except OSError as exc:
            facts.unreadable[name] = exc.strerror or str(exc) or type(exc).__name__
            continue
        if raw is None:
            continue
        if name == "product_serial":
            facts.system_serial = raw
        elif name == "board_serial":
            facts.board_serial = raw
        else:
            value = clean_text(raw).value
            if value is not None:
                text[name] = value
    facts.vendor = text.pop("sys_vendor", None)
    facts.model = text.pop("product_name", None)
    facts.bios_version = text.pop("bios_version", None)
    facts.attributes.update(text)


def _optional(files: RemoteFiles, path: str, limit: int) -> bytes | None:
    """A file that may be absent or unreadable without that being worth a note."""
    try:
        return files.read(path, limit)
    except OSError:
        return None


def _first_file(files: RemoteFiles, paths: tuple[str, ...]) -> bytes | None:
    for path in paths:
        raw = _optional(files, path, MAX_TEXT_FILE_BYTES)
        if raw is not None:
            return raw
    return None


def _first_text(files: RemoteFiles, paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value = clean_text(_optional(files, path, 256)).value
        if value is not None:
            return value
    return None


def os_release_name(raw: bytes | None) -> str | None:
    """``PRETTY_NAME`` (else ``NAME VERSION``) from an os-release file (os-release(5))."""
    if raw is None:
        return None
    values: dict[str, str] = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        m = _OS_RELEASE_LINE.match(line)
        if m:
            values[m.group("key")] = _unquote(m.group("value").strip())
    name = values.get("PRETTY_NAME") or " ".join(v for v in (values.get("NAME"), values.get("VERSION")) if v)
    return clean_text(name).value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def parse_uptime(raw: bytes | None) -> int | None:
    """Whole seconds from ``/proc/uptime`` (``"350735.47 234388.90"``)."""
    if raw is None:
        return None
    parts = raw.split()
    if not parts:
        return None
    try:
        seconds = float(parts[0])
    except ValueError:
        return None
    return int(seconds) if 0 <= seconds < 1e10 else None


def _read_usb(files: RemoteFiles, devices_dir: str, facts: PcFacts) -> None:
    try:
        names = files.listdir(devices_dir)
    except FileNotFoundError:
        facts.usb_message = f"no USB bus is visible ({devices_dir} is absent)"
        return
    except OSError as exc:
        facts.usb_errors.append((devices_dir, f"cannot list: {exc.strerror or exc}"))
        return
    if len(names) > MAX_USB_ENTRIES:
        facts.usb_errors.append(
            (devices_dir, f"{len(names)} entries; only the first {MAX_USB_ENTRIES} were read")
        )
        names = sorted(names)[:MAX_USB_ENTRIES]
    found = read_entries(Path(devices_dir), names, lambda name: _read_usb_device(files, devices_dir, name))
    facts.usb_records = found.records
    facts.usb_errors.extend(found.errors)
    facts.usb_message = found.message


def _read_usb_device(files: RemoteFiles, devices_dir: str, name: str) -> UsbRecord:
    issues: list[HealthIssue] = []
    entry = posixpath.join(devices_dir, name)

    def read(attribute: str) -> bytes | None:
        try:
            return files.read(posixpath.join(entry, attribute), MAX_ATTRIBUTE_BYTES)
        except OSError as exc:
            issues.append(attribute_unreadable(attribute, exc))
            return None

    return parse_device(name, Path(entry), read, issues)


# --------------------------------------------------------------------------- serial


@dataclass(frozen=True, slots=True)
class SerialChoice:
    """The serial shown for a PC, which fact it came from, and what to tell about it."""

    value: str | None
    source_field: str | None = None
    label_grade: bool = False
    notes: tuple[HealthIssue, ...] = ()
    problem: str | None = None


def choose_serial(facts: PcFacts) -> SerialChoice:
    """The system serial; else the board serial; else none, with the reason for each."""
    system_name, board_name = facts.serial_names
    system, system_trusted, system_why = _examine(facts.system_serial, system_name, facts)
    if system is not None:
        return SerialChoice(system, system_name, system_trusted)
    board, board_trusted, board_why = _examine(facts.board_serial, board_name, facts)
    if board is not None:
        note = HealthIssue("serial-from-board", f"{system_why}; the board serial is shown", Severity.INFO)
        # The case label carries the system serial; a board serial stands in for it and is
        # shown, but it is not the label's (so not label-grade, whatever its quality).
        del board_trusted
        return SerialChoice(board, board_name, False, (note,))
    problem = f"no usable serial: {system_why}; {board_why}"
    if system_name in facts.unreadable or board_name in facts.unreadable:
        problem += (
            f" (give the SSH user read access to {system_name} and {board_name}, see docs/ssh-room-pcs.md)"
        )
    return SerialChoice(
        None, notes=(HealthIssue("serial-missing", problem, Severity.WARNING),), problem=problem
    )


def _examine(raw: bytes | str | None, name: str, facts: PcFacts) -> tuple[str | None, bool, str]:
    """``(serial, trustworthy, why not)`` for one serial fact."""
    if name in facts.unreadable:
        return None, False, f"{name} is unreadable ({facts.unreadable[name]})"
    if raw is None:
        return None, False, f"{name} is absent"
    cleaned = clean_serial(raw)
    # clean_serial drops the placeholders of agent.sanitize (is_placeholder_serial).
    if cleaned.value is None or len(cleaned.value) < MIN_SERIAL_LENGTH:
        shown = clean_text(raw, max_len=40).value
        return None, False, (f"{name} is a placeholder ({shown!r})" if shown else f"{name} is empty")
    return cleaned.value, cleaned.trustworthy, ""


# --------------------------------------------------------------------------- observations


def observe_pc(
    facts: PcFacts, place: PcPlace, catalog: Catalog, now: datetime, *, source: str = SOURCE
) -> PcReport:
    """The PC's observation, one per Logitech unit on its USB, and the problems found."""
    report = PcReport()
    pc, problem = _pc_observation(facts, place, now, source)
    report.observations.append(pc)
    if problem:
        report.problems.append(problem)
    report.observations.extend(_attached_units(facts, place, catalog, now, source))
    report.problems.extend(f"USB entry {entry}: {message}" for entry, message in facts.usb_errors)
    if facts.usb_message:
        report.messages.append(facts.usb_message)
    return report


def _pc_observation(
    facts: PcFacts, place: PcPlace, now: datetime, source: str
) -> tuple[Observation, str | None]:
    obs = Observation(
        source=source,
        transport=Transport.SSH,
        address=place.address,
        observed_at=now,
        product=ROOM_PC,
        room=place.room,
        model=meaningful(facts.model),
        vendor=meaningful(facts.vendor),
    )
    choice = choose_serial(facts)
    if choice.value is not None:
        obs.serial = choice.value
        obs.serial_source = SerialSource.SSH_DMI
        obs.serial_label_grade = choice.label_grade
        obs.attributes["serial_from"] = choice.source_field
    for note in choice.notes:
        obs.note(note.code, note.message, note.severity)
    if facts.bios_version:
        obs.firmware = facts.bios_version
        obs.firmware_source = "bios"
    board = clean_serial(facts.board_serial).value if facts.board_serial is not None else None
    known = {
        "os_family": facts.os_family,
        "hostname": facts.hostname,
        "os": facts.os_name,
        "product_name": facts.model,
        "sys_vendor": facts.vendor,
        "board_serial": board,
        "uptime_s": facts.uptime_s,
    }
    obs.attributes.update({k: v for k, v in known.items() if v is not None})
    obs.attributes.update(facts.attributes)
    for name, reason in sorted(facts.unreadable.items()):
        if name not in facts.serial_names:
            obs.note("pc-fact-unreadable", f"{name}: cannot read ({reason})", Severity.INFO)
    return obs, choice.problem


def meaningful(text: str | None) -> str | None:
    """``text`` unless it is what firmware writes when it has nothing to say ("To be filled by
    O.E.M.", "Default string", "System Product Name"); the raw value stays an attribute."""
    if text is None or is_placeholder_serial(text) or text.casefold() in _PLACEHOLDER_NAMES:
        return None
    return text


def _attached_units(
    facts: PcFacts, place: PcPlace, catalog: Catalog, now: datetime, source: str
) -> list[Observation]:
    """The Logitech units on the PC's USB, grouped and described as the local USB source
    does, addressed under the PC (``room-pc-12/usb/1-1.2``) so that a unit with no label
    serial keeps an identity of its own on every PC."""
    observations = []
    for unit in group_units(facts.usb_records, catalog):
        if not unit.is_logitech:
            continue
        obs = observe_unit(unit, catalog, now, source=source, address_prefix=f"{place.address}/usb/")
        obs.transport = Transport.SSH
        obs.room = place.room
        obs.attributes["attached_to"] = place.address
        obs.attributes[facts.usb_location_key] = unit.main.name
        obs.attributes.update(facts.usb_attributes.get(unit.main.name, {}))
        if unit.product is not None and unit.product.collectors:
            # Product collectors open the device itself: only an agent on the PC can.
            obs.note(
                "firmware-not-read",
                "firmware is read over the unit's own interface "
                f"({', '.join(unit.product.collectors)}) only by an agent on the PC it is plugged into",
                Severity.INFO,
            )
        observations.append(obs)
    return observations
