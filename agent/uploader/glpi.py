"""GLPI native inventory documents from roomsync's inventory (issue [14/16], part 2: the
mapping; ``[outputs.glpi]`` delivers them: :mod:`agent.uploader.outputs`).

Pure: nothing here reads the clock, the store or the network. :func:`glpi_documents` turns
the inventory's units, rooms and coverage verdicts into the JSON documents a GLPI server
takes at ``front/inventory.php``, each with its ``deviceid`` and a digest of its bytes so
that a delivery layer can send only the documents that changed. ``docs/glpi.md`` is the
mapping table for operators; the rules, in short:

* **This host** is one ``Computer`` document (``action: inventory``): its name (and OS, when
  the caller passes them), every Logitech unit on its USB as ``content.usbdevices[]`` — the
  units read through one (a bar's mic pods and Sight) after it — and every firmware of those
  units in ``content.firmwares[]``.
* **Every other unit** (a CollabOS bar, a Tap IP, a room PC seen over SSH, a unit on a room
  PC's USB, an SNMP responder the catalog knows) is a ``NetworkEquipment`` document of its
  own (``action: netinventory``): ``content.network_device`` with ``type`` ``Video`` (``Computer``
  for a room PC, ``Unmanaged`` for a Logitech unit the catalog does not know), the units read
  through it as ``content.network_components[]``, and every firmware in ``content.firmwares[]``.
* **Coverage and health** go in the schema's free-text field of the item:
  ``network_device.description`` (GLPI keeps it as the equipment's *sysdescr*),
  ``network_components[].description`` for a unit read through another, and
  ``hardware.description`` of this host for its USB units.
* **Not sent**: LAN responders that are neither in the catalog nor Logitech's (a switch, a
  printer: GLPI's own network inventory owns them), and nothing that changes on every scan
  (times, uptime), so that an unchanged inventory gives byte-identical documents.

Every text from a device goes through :func:`agent.sanitize.clean_text` (printable, no
control characters, one space for any run of white space), cut at 255 characters — the
schema sets no length, GLPI's columns for names, serials and models are 255 wide — and a
value that is not known is left out, never sent empty. IP addresses are sent only when they
parse (the schema checks ``format: ipv4 / ipv6``), without zone or port, and never loopback,
link-local, multicast or unspecified ones (they tell GLPI nothing about where a unit is).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import platform
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.coverage import Verdict
from agent.identity import ATTACHED_TO, is_lan, macs_of
from agent.model import OTHER, Device, Room, Transport
from agent.sanitize import clean_text

# Private helpers of the portal protocol, shared so that GLPI and the portal name a unit's host
# and find its verdict alike.
from agent.uploader.protocol import _host_name, _Verdicts

__all__ = [
    "ACTION_INVENTORY",
    "ACTION_NETINVENTORY",
    "COMPUTER",
    "MAX_DESCRIPTION",
    "MAX_TEXT",
    "NETWORK_EQUIPMENT",
    "GlpiDocument",
    "GlpiHost",
    "coverage_text",
    "deviceid_for",
    "glpi_documents",
    "health_text",
    "host_deviceid",
    "is_sent",
    "on_this_host",
    "unit_document",
]

COMPUTER: Final = "Computer"
NETWORK_EQUIPMENT: Final = "NetworkEquipment"
ACTION_INVENTORY: Final = "inventory"
ACTION_NETINVENTORY: Final = "netinventory"
#: Longest text from a device that a document carries (GLPI's name, serial and model
#: columns are 255 characters wide; the schema sets no length).
MAX_TEXT: Final = 255
#: Longest free text (coverage and health of a unit, or of all of this host's units): a
#: guard only, far under GLPI's TEXT column (64 KiB) whatever the characters.
MAX_DESCRIPTION: Final = 16000
#: What roomsync calls itself in ``versionclient`` (GLPI agents write ``GLPI-Agent_v1.7``).
CLIENT_NAME: Final = "roomsync"

#: ``network_device.type`` (the schema's pattern: Unmanaged|Computer|Networking|Printer|
#: Storage|Power|Phone|Video|KVM) by catalog family; any other family is room hardware.
_DEVICE_TYPES: Mapping[str, str] = {"room-pc": "Computer", OTHER: "Unmanaged"}
_ROOM_HARDWARE = "Video"
#: ``firmwares[].type`` by ``firmware_source``: a room PC's firmware is its BIOS; the rest is
#: the unit's own firmware ("device", as GLPI's agent writes for network devices).
_FIRMWARE_TYPES: Mapping[str, str] = {"bios": "BIOS"}
_DEVICE_FIRMWARE = "device"
_SLUG = re.compile(r"[^a-z0-9]+")
_DEVICEID_NAME_LEN = 64
_DIGEST_LEN = 12


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class GlpiHost:
    """What the Computer document says of this host besides its USB units. Only ``name`` is
    required; every other fact is sent only when given."""

    name: str
    os_name: str | None = None
    os_full_name: str | None = None
    os_version: str | None = None
    kernel_name: str | None = None
    kernel_version: str | None = None
    arch: str | None = None

    @classmethod
    def local(cls) -> GlpiHost:
        """This machine's facts: its host name, ``uname`` and ``/etc/os-release`` (no network:
        the FQDN is left out, finding it may ask DNS)."""
        uname = platform.uname()
        try:
            release = platform.freedesktop_os_release()
        except OSError:
            release = {}
        return cls(
            name=socket.gethostname(),
            os_name=release.get("NAME"),
            os_full_name=release.get("PRETTY_NAME"),
            os_version=release.get("VERSION_ID"),
            kernel_name=uname.system.lower() or None,
            kernel_version=uname.release or None,
            arch=uname.machine or None,
        )


@dataclass(frozen=True, slots=True)
class GlpiDocument:
    """One document for GLPI: the JSON object (``data``), its bytes as sent (``body``:
    compact UTF-8 JSON, keys sorted) and ``digest`` (SHA-256 of ``body``, hex): equal for
    two builds exactly when they say the same, so "resend only what changed" compares
    digests. ``identity`` is the roomsync identity of the unit (``agent:<id>`` for this host's
    document)."""

    deviceid: str
    itemtype: str
    action: str
    identity: str
    data: dict[str, Any]
    body: bytes
    digest: str

    @classmethod
    def build(
        cls, deviceid: str, itemtype: str, action: str, identity: str, content: dict[str, Any]
    ) -> GlpiDocument:
        data = {"deviceid": deviceid, "itemtype": itemtype, "action": action, "content": content}
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return cls(deviceid, itemtype, action, identity, data, body, hashlib.sha256(body).hexdigest())


# --------------------------------------------------------------------------- documents


def glpi_documents(
    devices: Iterable[Device],
    rooms: Iterable[Room] = (),
    verdicts: Mapping[str, Verdict] | None = None,
    *,
    agent_id: str,
    host: GlpiHost,
    version: str,
) -> list[GlpiDocument]:
    """Every document for the inventory ``devices`` (the store's units, children inside
    their parents): this host's ``Computer`` first, then one ``NetworkEquipment`` per other
    unit, by identity. ``rooms`` name the units' rooms (ids without a :class:`Room` are sent as
    they are); ``verdicts`` are coverage verdicts by serial (:func:`agent.uploader.snapshot.
    verdicts_for`), ``None`` when coverage was not evaluated."""
    by_room = {room.id: room for room in rooms}
    lookup = _Verdicts(verdicts)
    on_host: list[Device] = []
    others: list[Device] = []
    for device in devices:
        if is_sent(device):
            (on_host if on_this_host(device) else others).append(device)
    docs = [_host_document(on_host, by_room, lookup, agent_id=agent_id, host=host, version=version)]
    others.sort(key=lambda d: d.identity)
    deviceid = host_deviceid(agent_id)
    docs.extend(_unit_document(d, by_room, lookup, deviceid=deviceid, version=version) for d in others)
    return docs


def unit_document(
    device: Device,
    rooms: Iterable[Room] = (),
    verdicts: Mapping[str, Verdict] | None = None,
    *,
    agent_id: str,
    version: str,
) -> GlpiDocument:
    """The ``NetworkEquipment`` document of one unit that is not on this host's USB, sent by
    the agent ``agent_id``."""
    return _unit_document(
        device,
        {room.id: room for room in rooms},
        _Verdicts(verdicts),
        deviceid=host_deviceid(agent_id),
        version=version,
    )


def is_sent(device: Device) -> bool:
    """Whether the unit goes to GLPI at all: a unit the catalog knows, or a Logitech one.
    A LAN responder of another maker (a switch, a printer answering SNMP or mDNS) is GLPI's
    own network inventory's: a sparse document from roomsync, matched to that asset by GLPI's
    import rules (serial, MAC, IP), would only overwrite what GLPI knows better."""
    return device.category != OTHER or "logitech" in (device.vendor or "").casefold()


def on_this_host(device: Device) -> bool:
    """Whether the unit is on this host's own USB (then it is one of the Computer document's
    USB devices, not a document of its own)."""
    return device.transport is Transport.USB and ATTACHED_TO not in device.attributes


def deviceid_for(identity: str) -> str:
    """A ``deviceid`` made of ``identity`` (the agent's: :func:`host_deviceid`): a readable
    name, a dash, then 12 hex digits of SHA-256 of the identity — the shape of a GLPI agent's
    ``<hostname>-<first run time>``, with a suffix that depends on nothing but the identity,
    so every rebuild gives the same one (docs/glpi.md)."""
    readable = identity.removeprefix("serial:")
    name = _SLUG.sub("-", readable.casefold()).strip("-")[:_DEVICEID_NAME_LEN].rstrip("-") or "unit"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_LEN]
    return f"{name}-{digest}"


def host_deviceid(agent_id: str) -> str:
    """The ``deviceid`` of every document the agent sends — GLPI keeps it as the **agent**
    record (``glpi_agents.deviceid``), as glpi-agent sends its own with each network device it
    inventories; assets are matched by GLPI's import rules (serial, MAC, IP), not by it. From
    the agent's stable id (the one the portal knows it by), not its host name, which can
    change."""
    return deviceid_for(_host_identity(agent_id))


def coverage_text(verdict: Verdict) -> str:
    """A verdict as one line: status, last covered day, each valid layer with the rule ids of
    domain.md it rests on and its days, then the flags
    (``coverage in_warranty until 2027-05-31; standard W1 2025-06-01..2027-05-31``)."""
    head = f"coverage {verdict.status}"
    if verdict.covered_until is not None:
        head += f" until {verdict.covered_until.isoformat()}"
    parts = [head]
    parts.extend(
        f"{layer.kind} {' '.join(layer.rules)} {layer.start.isoformat()}..{layer.until.isoformat()}"
        for layer in verdict.layers
    )
    if verdict.flags:
        parts.append("flags " + " ".join(verdict.flags))
    return "; ".join(parts)


def health_text(device: Device) -> str:
    """The unit's health and each of its issues (``health warning: peripheral-missing (…)``)."""
    text = f"health {device.health}"
    issues = [
        f"{_text(issue.code, 64) or 'issue'} ({_text(issue.message) or issue.severity})"
        for issue in device.health_issues
    ]
    return f"{text}: {'; '.join(issues)}" if issues else text


# --------------------------------------------------------------------------- builders


def _host_identity(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _content(version: str) -> dict[str, Any]:
    """What every document's ``content`` starts with (``versionclient`` is required)."""
    version = _text(version, 100) or "0"
    return {
        "versionclient": f"{CLIENT_NAME}_v{version}",
        "versionprovider": {"name": CLIENT_NAME, "version": version},
    }


def _host_document(
    units: Sequence[Device],
    rooms: Mapping[str, Room],
    verdicts: _Verdicts,
    *,
    agent_id: str,
    host: GlpiHost,
    version: str,
) -> GlpiDocument:
    content = _content(version)
    hardware = _facts(name=_text(host.name))
    usb: list[dict[str, Any]] = []
    firmwares: list[dict[str, Any]] = []
    lines: list[str] = []
    for unit in sorted(units, key=lambda d: d.identity):
        for device, path in _tree(unit):
            usb.append(_usb_device(device))
            firmwares.extend(_firmwares(device))
            lines.append(f"{path}: {_description(device, verdicts, rooms)}")
    description = _text(" | ".join(lines), MAX_DESCRIPTION)
    if description:
        hardware["description"] = description
    if hardware:
        content["hardware"] = hardware
    system = _facts(
        name=_text(host.os_name),
        full_name=_text(host.os_full_name),
        version=_text(host.os_version),
        kernel_name=_text(host.kernel_name),
        kernel_version=_text(host.kernel_version),
        arch=_text(host.arch),
    )
    if system:
        content["operatingsystem"] = system
    if usb:
        content["usbdevices"] = usb
    if firmwares:
        content["firmwares"] = firmwares
    identity = _host_identity(agent_id)
    return GlpiDocument.build(deviceid_for(identity), COMPUTER, ACTION_INVENTORY, identity, content)


def _unit_document(
    device: Device, rooms: Mapping[str, Room], verdicts: _Verdicts, *, deviceid: str, version: str
) -> GlpiDocument:
    content = _content(version)
    serial = _text(device.serial)
    macs = macs_of(device)
    network_device = _facts(
        type=_DEVICE_TYPES.get(device.category, _ROOM_HARDWARE),
        name=_name(device),
        serial=serial,
        firmware=_text(device.firmware),
        model=_model(device),
        manufacturer=_text(device.vendor),
        mac=macs[0] if macs else None,
        location=_room_name(device, rooms),
        description=_text(_own_text(device, verdicts), MAX_DESCRIPTION),
    )
    ips = _ips(device)
    if ips:
        network_device["ips"] = ips
    content["network_device"] = network_device
    components = _components(device.children, verdicts, rooms)
    if components:
        content["network_components"] = components
    firmwares = [entry for d, _ in _tree(device) for entry in _firmwares(d)]
    if firmwares:
        content["firmwares"] = firmwares
    return GlpiDocument.build(deviceid, NETWORK_EQUIPMENT, ACTION_NETINVENTORY, device.identity, content)


def _facts(**values: Any) -> dict[str, Any]:
    """The known ones of ``values`` (a value that is not known is left out, never sent empty)."""
    return {key: value for key, value in values.items() if value is not None and value != []}


def _tree(device: Device, path: str | None = None) -> list[tuple[Device, str]]:
    """The unit, then every unit read through it (depth first), each with its path of labels
    (``Rally Bar 2313FD1N08Z2 / Rally Mic Pod 2245MP01``)."""
    here = _label(device) if path is None else f"{path} / {_label(device)}"
    found = [(device, here)]
    for child in device.children:
        found.extend(_tree(child, here))
    return found


def _name(device: Device) -> str:
    """The equipment's name: the host name a source reported (an mDNS name without its
    ``.local``, as GLPI's own agent names hosts), else :func:`_label`."""
    host = _text(_host_name(device))
    if host is not None and host.casefold().endswith(".local") and len(host) > len(".local"):
        host = host[: -len(".local")]
    return host or _label(device)


def _label(device: Device) -> str:
    """How a unit is named where no host name is known: its product and its serial."""
    product = _text(device.product) or "Unknown device"
    serial = _text(device.serial)
    if serial is None:
        return product
    return _text(f"{product} {serial}") or product


def _model(device: Device) -> str | None:
    """The model GLPI files the unit under: the catalog product's name for a unit the catalog
    knows (a model code such as ``VR0019`` tells an operator less); the model the unit reports
    for a room PC (its DMI product name) and for a unit the catalog does not know."""
    if device.category in (OTHER, "room-pc"):
        return _text(device.model)
    return _text(device.product)


def _room_name(device: Device, rooms: Mapping[str, Room]) -> str | None:
    if device.room is None:
        return None
    room = rooms.get(device.room)
    return _text(room.name if room is not None and room.name else device.room)


def _own_text(device: Device, verdicts: _Verdicts) -> str:
    """Coverage (when a verdict is known), then health: the unit's free text."""
    verdict = verdicts.of(device)
    health = health_text(device)
    return f"{coverage_text(verdict)} | {health}" if verdict is not None else health


def _description(device: Device, verdicts: _Verdicts, rooms: Mapping[str, Room]) -> str:
    """:func:`_own_text`, after the unit's room (the host's description lists many units)."""
    room = _room_name(device, rooms)
    text = _own_text(device, verdicts)
    return f"room {room}; {text}" if room else text


def _usb_device(device: Device) -> dict[str, Any]:
    return _facts(
        name=_text(device.product) or "Unknown device",
        vendorid=f"{device.vendor_id:04x}" if device.vendor_id is not None else None,
        productid=f"{device.product_id:04x}" if device.product_id is not None else None,
        serial=_text(device.serial),
        manufacturer=_text(device.vendor),
    )


def _components(
    children: Sequence[Device], verdicts: _Verdicts, rooms: Mapping[str, Room], parent: int = 0
) -> list[dict[str, Any]]:
    """The units read through a unit, depth first, numbered from 1 (``contained_index`` is the
    parent's ``index``, 0 for the unit itself). Never ``type`` ``chassis`` or ``stack``, and
    never an ``ip`` together with a ``mac``: GLPI would take the unit for a switch stack or a
    wireless controller and make an asset of each component."""
    found: list[dict[str, Any]] = []
    _add_components(found, children, verdicts, parent)
    return found


def _add_components(
    found: list[dict[str, Any]], devices: Sequence[Device], verdicts: _Verdicts, parent: int
) -> None:
    """:func:`_components`' step (a module function: a closure that calls itself is a
    reference cycle, held until the cyclic collector runs)."""
    for device in devices:
        index = len(found) + 1
        found.append(
            _facts(
                index=index,
                contained_index=parent,
                name=_text(device.product) or "Unknown device",
                model=_model(device),
                manufacturer=_text(device.vendor),
                serial=_text(device.serial),
                firmware=_text(device.firmware),
                description=_text(_own_text(device, verdicts), MAX_DESCRIPTION),
            )
        )
        _add_components(found, device.children, verdicts, index)


def _firmwares(device: Device) -> list[dict[str, Any]]:
    """The unit's firmware, then each component's (``components``), as ``firmwares[]``
    entries; ``description`` names the unit they belong to."""
    product = _text(device.product) or "Unknown device"
    serial = _text(device.serial)
    owner = _text(f"{product}, serial {serial}") if serial else None
    vendor = _text(device.vendor)
    found = []
    firmware = _text(device.firmware)
    if firmware is not None:
        kind = _FIRMWARE_TYPES.get(device.firmware_source or "", _DEVICE_FIRMWARE)
        found.append(
            _facts(name=product, type=kind, version=firmware, manufacturer=vendor, description=owner)
        )
    for component, raw in device.components.items():
        version = _text(raw)
        if version is None:
            continue
        name = _text(f"{product} {_text(component) or 'component'}") or product
        found.append(
            _facts(name=name, type=_DEVICE_FIRMWARE, version=version, manufacturer=vendor, description=owner)
        )
    return found


def _ips(device: Device) -> list[str]:
    """The unit's IP addresses, each once: where it was reached, then what it announced, then
    where its other channels reached it. Only on a LAN unit (a USB address is a port)."""
    if not is_lan(device):
        return []
    texts: list[object] = [device.address]
    announced = device.attributes.get("addresses")
    if isinstance(announced, list):
        texts.extend(announced)
    texts.extend(seen.address for seen in device.seen_by if seen.transport != Transport.USB)
    found: list[str] = []
    for text in texts:
        ip = _ip(text)
        if ip is not None and ip not in found:
            found.append(ip)
    return found


def _ip(text: object) -> str | None:
    """The IP address in ``10.0.0.5``, ``10.0.0.5:161``, ``[fe80::1]:161`` or ``2001:db8::5``,
    without zone; ``None`` for a name, a USB path, or an address that says nothing of where a
    unit stands (loopback, link-local, multicast, unspecified)."""
    if not isinstance(text, str):
        return None
    host = text
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return None
    return str(ip)


def _text(value: object, max_len: int = MAX_TEXT) -> str | None:
    """``value`` as :func:`agent.sanitize.clean_text` leaves it (``None`` for no text). A
    printable text without stray spaces that fits is already what clean_text returns, and is
    taken as it is (the common case, without clean_text's walk over every character)."""
    if not isinstance(value, str):
        return None
    if value.isprintable() and len(value) <= max_len and "  " not in value and value == value.strip(" "):
        return value or None
    return clean_text(value, max_len=max_len).value
