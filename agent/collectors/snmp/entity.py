"""Identity from SNMP: the system group and ENTITY-MIB's physical table (RFC 6933).

Pure functions: values in (as the client returned them), one :class:`Observation` out.

* system group (protocols.md, V): sysDescr ``1.3.6.1.2.1.1.1.0``, sysObjectID ``.2.0``,
  sysName ``.5.0``;
* ``entPhysicalTable`` ``1.3.6.1.2.1.47.1.1.1.1.<column>.<index>``: ``.2`` description,
  ``.5`` class (3 = chassis), ``.7`` name, ``.8`` hardware revision, ``.9`` firmware
  revision, ``.10`` software revision, ``.11`` serial, ``.12`` manufacturer, ``.13`` model.

The unit is the chassis entity (else the first entity with a serial, else the first one);
further entities with a serial or firmware are kept as attributes so nothing read is lost.
A responder the catalog cannot identify is still reported, as ``other``: its vendor (from
the enterprise number of its sysObjectID or its manufacturer) and description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from agent.catalog import Catalog
from agent.collectors.snmp.gate import (
    ENT_PHYSICAL_ENTRY,
    ENTITY_COLUMNS,
    SYS_DESCR,
    SYS_NAME,
    SYS_OBJECT_ID,
    SYSTEM_OIDS,
    check_snmp_request,
)
from agent.model import Observation, SerialSource, Severity, Transport
from agent.readonly import Gate
from agent.sanitize import CleanText, clean_serial, clean_text

__all__ = [
    "ENTITY_COLUMNS",
    "ENT_PHYSICAL_ENTRY",
    "SYSTEM_OIDS",
    "SYS_DESCR",
    "SYS_NAME",
    "SYS_OBJECT_ID",
    "SnmpEntityCollector",
    "SystemInfo",
    "entity_rows",
    "observe",
]

SYSTEM = "1.3.6.1.2.1.1"
CHASSIS = 3
_CLASS_NAMES = {
    1: "other",
    2: "unknown",
    3: "chassis",
    4: "backplane",
    5: "container",
    6: "powerSupply",
    7: "fan",
    8: "sensor",
    9: "module",
    10: "port",
    11: "stack",
    12: "cpu",
    13: "energyObject",
    14: "battery",
    15: "storageDrive",
}
#: sysDescr can be a paragraph; keep enough of it to be useful.
DESCR_MAX = 512

_PROBLEMS = {
    "not-utf8": "was not valid UTF-8 (undecodable bytes replaced)",
    "binary": "was binary data (shown as hex)",
    "control-chars": "held control characters (removed)",
    "too-long": "was absurdly long (cut)",
    "nul-padded": "had NUL padding inside it (cut at the first NUL)",
    "placeholder": "is a placeholder, not a real serial",
    "wrong-type": "had an unexpected SNMP type",
}


def octets(value: Any) -> bytes | None:
    """The raw bytes of an OctetString-like value, ``None`` for anything else."""
    as_octets = getattr(value, "asOctets", None)
    if as_octets is None:
        return None
    try:
        return bytes(as_octets())
    except Exception:
        return None


def _looks_binary(raw: bytes) -> bool:
    if not raw:
        return False
    controls = sum(1 for b in raw if (b < 0x20 and b not in (0x09, 0x0A, 0x0D)) or b == 0x7F)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        high = sum(1 for b in raw if b >= 0x80)
        return controls > 0 or high * 2 > len(raw)
    return controls * 4 > len(raw)


def snmp_text(value: Any, *, max_len: int = 128, serial: bool = False) -> CleanText:
    """Decode an SNMP value meant as text. Binary OctetStrings (a MAC in a text column,
    garbage) become ``0x…`` hex with the problem ``binary``; other types their string form."""
    raw = octets(value)
    if raw is None:
        if value is None:
            return CleanText(None, ("missing",))
        text = clean_text(str(value), max_len=max_len)
        return CleanText(text.value, (*text.problems, "wrong-type"))
    if _looks_binary(raw.rstrip(b"\x00")):
        hexed = "0x" + raw.hex()
        if len(hexed) > max_len:
            return CleanText(hexed[:max_len], ("binary", "too-long"))
        return CleanText(hexed, ("binary",))
    return clean_serial(raw, max_len=max_len) if serial else clean_text(raw, max_len=max_len)


def object_id_text(value: Any) -> str | None:
    """sysObjectID as dotted text; ``None`` when the agent sent something else."""
    if value is None or octets(value) is not None:
        return None
    try:
        parts = tuple(int(p) for p in value)
    except (TypeError, ValueError):
        return None
    return ".".join(str(p) for p in parts) if parts else None


@dataclass(slots=True)
class SystemInfo:
    descr: CleanText
    object_id: str | None
    name: CleanText

    @classmethod
    def from_values(cls, values: Mapping[tuple[int, ...], Any]) -> SystemInfo:
        return cls(
            snmp_text(values.get(SYS_DESCR), max_len=DESCR_MAX),
            object_id_text(values.get(SYS_OBJECT_ID)),
            snmp_text(values.get(SYS_NAME)),
        )


@dataclass(slots=True)
class EntityRow:
    """One row of entPhysicalTable, cleaned. ``problems`` maps a column to its repairs."""

    index: tuple[int, ...]
    values: dict[str, str] = field(default_factory=dict)
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    entity_class: int | None = None

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": ".".join(map(str, self.index)), **self.values}
        if self.entity_class is not None:
            out["class"] = _CLASS_NAMES.get(self.entity_class, str(self.entity_class))
        return out


def entity_rows(columns: Mapping[int, list[tuple[tuple[int, ...], Any]]]) -> list[EntityRow]:
    """Rows from walked columns: ``columns[column] = [(index, value), …]``."""
    rows: dict[tuple[int, ...], EntityRow] = {}
    for column, cells in columns.items():
        name = ENTITY_COLUMNS.get(column)
        if name is None:
            continue
        for index, value in cells:
            row = rows.setdefault(index, EntityRow(index))
            if column == 5:
                try:
                    row.entity_class = int(value)
                except (TypeError, ValueError):
                    row.problems["class"] = ("wrong-type",)
                continue
            text = snmp_text(value, serial=(name == "serial"), max_len=DESCR_MAX if name == "descr" else 128)
            if text.value is not None:
                row.values[name] = text.value
            repairs = tuple(p for p in text.problems if p not in ("missing", "empty"))
            if repairs:
                row.problems[name] = repairs
    return [rows[i] for i in sorted(rows)]


def main_entity(rows: list[EntityRow]) -> EntityRow | None:
    """The entity that stands for the unit: the first chassis, else the first with a
    serial, else the first row."""
    for row in rows:
        if row.entity_class == CHASSIS:
            return row
    for row in rows:
        if row.get("serial"):
            return row
    return rows[0] if rows else None


def observe(
    address: str,
    system: SystemInfo,
    rows: list[EntityRow],
    catalog: Catalog,
    now: datetime,
    *,
    source: str = "snmp",
    entity_problems: list[str] | None = None,
) -> Observation:
    """One observation of the SNMP agent at ``address``."""
    main = main_entity(rows)
    vendor = catalog.vendor_for(
        system.object_id, [main.get("manufacturer") if main else None, system.descr.value]
    )
    model = main.get("model") if main else None
    texts = [system.descr.value]
    if main is not None:
        texts += [main.get("descr"), main.get("name")]
    match = catalog.match_lan(
        object_id=system.object_id, model=model, texts=texts, host_name=system.name.value, vendor=vendor
    )
    obs = Observation(
        source=source,
        transport=Transport.SNMP,
        address=address,
        observed_at=now,
        product=match.product.name if match else None,
        model=model,
        vendor=(main.get("manufacturer") if main else None) or (vendor.name if vendor else None),
    )
    obs.attributes.update(_system_attributes(system))
    if match is not None:
        obs.attributes["identified_by"] = match.how
    if main is not None:
        _apply_entity(obs, main)
        others = [
            r.to_dict()
            for r in rows
            if r is not main and (r.get("serial") or r.get("firmware_rev") or r.get("software_rev"))
        ]
        if others:
            obs.attributes["entities"] = others
        for column, repairs in main.problems.items():
            for problem in repairs:
                obs.note(
                    f"snmp-value-{problem}",
                    f"ENTITY-MIB {column} {_PROBLEMS.get(problem, problem)}",
                    Severity.INFO,
                )
    for problem in entity_problems or ():
        obs.note("snmp-entity-incomplete", problem, Severity.INFO)
    for label, text in (("sysDescr", system.descr), ("sysName", system.name)):
        for problem in text.problems:
            if problem in _PROBLEMS:
                obs.note(f"snmp-value-{problem}", f"{label} {_PROBLEMS[problem]}", Severity.INFO)
    if main is None or not main.get("serial"):
        obs.note("serial-unavailable", "the agent reports no ENTITY-MIB serial number", Severity.INFO)
    return obs


class SnmpEntityCollector:
    """Every SNMP responder: system group and ENTITY-MIB identity (:func:`observe`). The SNMP
    source sends through :class:`~agent.collectors.snmp.client.SnmpClient`, which passes every
    PDU through this gate, and :class:`~agent.collectors.snmp.probe.V2cProber`, which passes
    every encoded datagram (:mod:`agent.collectors.snmp.gate`)."""

    name: ClassVar[str] = "snmp-entity"
    writes: ClassVar[str | None] = "SNMP GET and GETBULK requests (system group, ENTITY-MIB columns)"
    gate: ClassVar[Gate | None] = staticmethod(check_snmp_request)
    observe = staticmethod(observe)


def _system_attributes(system: SystemInfo) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if system.descr.value:
        attrs["description"] = system.descr.value
    if system.object_id:
        attrs["sys_object_id"] = system.object_id
    if system.name.value:
        attrs["sys_name"] = system.name.value
    return attrs


def _apply_entity(obs: Observation, main: EntityRow) -> None:
    serial = main.get("serial")
    if serial:
        obs.serial = serial
        obs.serial_source = SerialSource.SNMP_ENTITY
        # Label-grade unless a repair may have altered it: ENTITY-MIB serials are the
        # manufacturer's asset serials (entPhysicalSerialNum), not a chip's.
        obs.serial_label_grade = not main.problems.get("serial")
    for column, source in (
        ("firmware_rev", "snmp-entity-firmware"),
        ("software_rev", "snmp-entity-software"),
    ):
        if main.get(column):
            obs.firmware = main.get(column)
            obs.firmware_source = source
            break
    for column in ("hardware_rev", "firmware_rev", "software_rev"):
        if main.get(column):
            obs.components[column.removesuffix("_rev")] = main.values[column]
    entity = main.to_dict()
    obs.attributes["entity"] = entity
