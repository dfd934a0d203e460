"""CollabOS "Local Network Access" (the Device Management API v1.0): what the agent may send a
CollabOS device, and what its replies mean (issue [10/16]). The source that sends is
:mod:`agent.discovery.collabos`.

Facts (from the issue; V = read in a source or sample, U = a hint the catalog can override):

* ``POST /api/v1/signin`` with ``{"username", "password"}`` gives ``result.auth_token`` (V);
  then ``GET`` of ``/api/v1/device``, ``/api/v1/peripherals``, ``/api/v1/insights/device`` and
  ``/api/v1/insights/room`` with ``Authorization: Bearer`` (V). Nothing else is documented,
  and nothing else may leave the agent: :func:`check_collabos_request` is the gate.
* Every reply is ``{"code", "message", "result"}``: the HTTP status *and* ``code`` must both
  say 200 (V). ``code`` 401 is a refused sign-in or an expired token.
* Types vary between the spec and devices (numbers as strings, ``vid`` as ``"0x046d"`` or
  ``"1133"``): every value is read leniently, and a value of the wrong kind is dropped, never
  trusted (V).

Parsing is pure: :func:`parse_reply` checks an envelope (size, depth, JSON, code) and
:func:`observe` turns the four results into observations — the bar, each Tap IP as a unit of
its own at its own address, and the Sight, Tap USB and USB devices as the bar's children.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from agent.catalog import Catalog
from agent.model import Observation, SerialSource, Severity, Transport
from agent.readonly import Gate, ReadOnlyViolation
from agent.sanitize import clean_serial, clean_text

NAME = "collabos-api"
SIGNIN = "/api/v1/signin"
#: The four documented reads.
READS = ("/api/v1/device", "/api/v1/peripherals", "/api/v1/insights/device", "/api/v1/insights/room")
#: Replies larger than this are refused before they are parsed.
MAX_REPLY_BYTES = 1 << 20
#: Nesting deeper than this is refused (the documented replies nest three levels).
MAX_DEPTH = 16
#: At most this many items of each peripheral list are read (a room has a handful).
MAX_ITEMS = 64
#: At most this many facts of each insights reply are kept.
MAX_INSIGHT_KEYS = 32


class CollabosError(Exception):
    """A reply that cannot be used; the message says which and why (never a credential)."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        #: The device refused the credentials or the token (``code`` 401).
        self.auth = auth


#: The keys of the one body the agent sends (the sign-in's).
SIGNIN_KEYS = frozenset({"username", "password"})


def check_collabos_request(request: Any) -> None:
    """The CollabOS gate. A request is ``(method, path, body)``: ``("POST",
    "/api/v1/signin", {"username": …, "password": …})`` or ``("GET", one of READS, None)``.
    Anything else — another method or path, a query string, a body on a read, other keys in
    the sign-in — raises :class:`~agent.readonly.ReadOnlyViolation`, however it was built."""
    if not isinstance(request, tuple) or len(request) != 3:
        raise ReadOnlyViolation(f"CollabOS API: refused a request of unknown form: {type(request).__name__}")
    method, path, body = request
    if not isinstance(method, str) or not isinstance(path, str):
        raise ReadOnlyViolation("CollabOS API: refused a request whose method or path is not text")
    if method == "POST" and path == SIGNIN:
        if (
            not isinstance(body, dict)
            or body.keys() != SIGNIN_KEYS
            or not all(isinstance(v, str) for v in body.values())
        ):
            raise ReadOnlyViolation("CollabOS API: the sign-in carries exactly a username and a password")
        return
    if method == "GET" and path in READS:
        if body is not None:
            raise ReadOnlyViolation(f"CollabOS API: GET {path} carries no body")
        return
    raise ReadOnlyViolation(f"CollabOS API: {method} {path!r} is not one of the documented reads")


class CollabosApiCollector:
    """Every CollabOS device the operator listed (``[sources.collabos] hosts``): the sign-in
    and the four documented reads (:mod:`agent.discovery.collabos` sends them)."""

    name: ClassVar[str] = NAME
    writes: ClassVar[str | None] = (
        "HTTPS: POST /api/v1/signin (username and password); GET /api/v1/device, "
        "/api/v1/peripherals, /api/v1/insights/device and /api/v1/insights/room"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_collabos_request)


# --------------------------------------------------------------------------- replies


def parse_reply(status: int, body: bytes, *, what: str, redact: Iterable[str] = ()) -> dict[str, Any]:
    """The ``result`` object of one reply, or :class:`CollabosError` naming ``what`` (e.g.
    ``"GET /api/v1/device"``) and the problem. The device's ``message`` is quoted with every
    text of ``redact`` (the password, the token) cut out first: a device may echo them."""
    if len(body) > MAX_REPLY_BYTES:
        raise CollabosError(f"{what}: reply of {len(body)} bytes, more than {MAX_REPLY_BYTES}")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise CollabosError(f"{what}: the reply nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise CollabosError(f"{what}: HTTP {status}, the reply is not JSON") from None
    if _depth(doc) > MAX_DEPTH:
        raise CollabosError(f"{what}: the reply nests deeper than {MAX_DEPTH} levels")
    if not isinstance(doc, dict):
        raise CollabosError(f"{what}: HTTP {status}, the reply is not a {{code, message, result}} object")
    code = as_int(doc.get("code"))
    said = doc.get("message") if isinstance(doc.get("message"), str) else None
    for secret in redact:
        if said and secret:
            said = said.replace(secret, "***")
    message = clean_text(said, max_len=200).value
    if status == 401 or code == 401:
        raise CollabosError(f"{what}: refused (401{': ' + message if message else ''})", auth=True)
    if status != 200 or code != 200:
        said = f"code {code}" if code is not None else "no code"
        raise CollabosError(f"{what}: HTTP {status}, {said}{': ' + message if message else ''}")
    result = doc.get("result")
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise CollabosError(f"{what}: the result is not an object")
    return result


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


# --------------------------------------------------------------------------- lenient values

_INT = re.compile(r"[+-]?\d{1,12}")
_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,8}")


def as_text(value: Any, *, max_len: int = 200) -> str | None:
    """A printable text from a string or a number; ``None`` for anything else or empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    return clean_text(value, max_len=max_len).value


def as_int(value: Any) -> int | None:
    """An integer from a number or a decimal string; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def as_usb_id(value: Any) -> int | None:
    """A USB vendor or product id from ``0x046d``, ``"1133"`` or ``1133``."""
    number = (
        int(value.strip(), 16) if isinstance(value, str) and _HEX.fullmatch(value.strip()) else as_int(value)
    )
    return number if number is not None and 0 <= number <= 0xFFFF else None


def as_bool(value: Any) -> bool | None:
    """``true``/``false`` from a boolean, ``1``/``0`` or their strings."""
    if isinstance(value, bool):
        return value
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def _items(result: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects of list ``key``, at most :data:`MAX_ITEMS` of them."""
    value = result.get(key)
    return [v for v in value if isinstance(v, dict)][:MAX_ITEMS] if isinstance(value, list) else []


def _too_many(peripherals: Mapping[str, Any]) -> list[str]:
    """The peripheral lists longer than :data:`MAX_ITEMS` (only the first are read)."""
    return [
        key
        for key in ("sights", "usbControllers", "usbDevices", "ipControllers")
        if isinstance(peripherals.get(key), list) and len(peripherals[key]) > MAX_ITEMS
    ]


def as_ip(value: Any) -> str | None:
    """An IP address (in its normal form) from text; ``None`` for anything else."""
    text = as_text(value, max_len=64)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _insight_values(data: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The flat facts of an insights reply: at most :data:`MAX_INSIGHT_KEYS` keys of printable
    text, each a boolean, an integer, a finite number or a short printable text."""
    found: dict[str, str | int | float | bool] = {}
    for raw_key, raw in data.items():
        key = as_text(raw_key, max_len=64)
        if key is None:
            continue
        value: str | int | float | bool | None
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, int):
            value = raw if abs(raw) < 1 << 53 else None
        elif isinstance(raw, float):
            value = raw if math.isfinite(raw) else None
        else:
            value = as_text(raw, max_len=64) if isinstance(raw, str) else None
        if value is not None:
            found[key] = value
            if len(found) == MAX_INSIGHT_KEYS:
                break
    return found


# --------------------------------------------------------------------------- observations


def observe(
    host: str,
    device: Mapping[str, Any],
    peripherals: Mapping[str, Any],
    catalog: Catalog,
    now: datetime,
    *,
    insights: Mapping[str, Mapping[str, Any]] | None = None,
    source: str = "collabos",
) -> list[Observation]:
    """The bar at ``host`` with its peripherals as children, then each Tap IP it is paired
    with as a unit of its own (at the Tap's address; ``paired_with`` names the bar)."""
    model = as_text(device.get("modelName"))
    match = catalog.match_lan(model=model, host_name=as_text(device.get("systemName")))
    product = match.product if match is not None else None
    bar = Observation(
        source=source,
        transport=Transport.HTTPS,
        address=host,
        observed_at=now,
        product=product.name if product else None,
        model=model if model else (product.model if product else None),
        vendor="Logitech",
    )
    if not _set_serial(bar, device.get("serialNumber"), known=product is not None):
        bar.note("serial-unavailable", "the Device Management API reports no serial number", Severity.INFO)
    _set_firmware(bar, device.get("collabOSVersion"))
    hardware = as_text(device.get("hwVersion"), max_len=64)
    if hardware is not None:
        bar.components["hardware"] = hardware
    facts = {
        "host": as_text(device.get("systemName")),
        "device_name": as_text(device.get("deviceName")),
        "mac_addresses": [m for m in (as_text(device.get(k)) for k in ("ethernetMAC", "wifiMAC")) if m],
        "device_configuration": as_text(device.get("deviceConfiguration")),
        "service_provider": as_text(device.get("serviceProvider")),
    }
    bar.attributes.update({k: v for k, v in facts.items() if v})
    for name, data in (insights or {}).items():
        values = _insight_values(data) if isinstance(data, Mapping) else {}
        if values:
            bar.attributes[f"insights_{name}"] = values
    dropped = _too_many(peripherals)
    if dropped:
        bar.note(
            "peripherals-truncated",
            f"the device lists more than {MAX_ITEMS} {' and '.join(dropped)}; "
            f"only the first {MAX_ITEMS} are read",
            Severity.INFO,
        )
    about_device = (insights or {}).get("device")
    state = as_text(about_device.get("deviceState")) if isinstance(about_device, Mapping) else None
    if state is not None:
        bar.state = state.lower()
    bar.children.extend(_sights(bar, peripherals, catalog, now, source))
    bar.children.extend(_usb_children(bar, peripherals, catalog, now, source))
    return [bar, *_taps(bar, peripherals, catalog, now, source)]


def _set_serial(obs: Observation, raw: Any, *, known: bool) -> bool:
    """The API's serial, label-grade for a product the catalog knows and a serial that needed
    no repair; ``False`` when there is none."""
    serial = clean_serial(as_text(raw, max_len=64))
    if serial.value is None:
        return False
    obs.serial, obs.serial_source = serial.value, SerialSource.COLLABOS_API
    obs.serial_label_grade = known and serial.trustworthy
    return True


def _set_firmware(obs: Observation, raw: Any) -> None:
    firmware = as_text(raw, max_len=64)
    if firmware is not None:
        obs.firmware, obs.firmware_source = firmware, NAME


def _child(bar: Observation, address: str, product: str | None, now: datetime, source: str) -> Observation:
    return Observation(
        source=source,
        transport=Transport.HTTPS,
        address=f"{bar.address}/{address}",
        observed_at=now,
        product=product,
        vendor="Logitech",
    )


def _sights(
    bar: Observation, peripherals: Mapping[str, Any], catalog: Catalog, now: datetime, source: str
) -> list[Observation]:
    found = []
    sight = catalog.get("Sight")
    for i, item in enumerate(_items(peripherals, "sights")):
        child = _child(
            bar, f"sight/{as_text(item.get('id')) or i}", sight.name if sight else None, now, source
        )
        _set_firmware(child, item.get("firmwareVersion"))
        for key, what in (("cameraConnected", "camera"), ("microphoneConnected", "microphone")):
            if as_bool(item.get(key)) is False:
                child.note(f"sight-{what}-disconnected", f"the Sight's {what} is not connected")
        found.append(child)
    return found


def _usb_children(
    bar: Observation, peripherals: Mapping[str, Any], catalog: Catalog, now: datetime, source: str
) -> list[Observation]:
    found = []
    for i, item in enumerate(_items(peripherals, "usbControllers")):
        child = _child(bar, f"tap-usb/{i}", "Tap", now, source)
        _set_firmware(child, item.get("firmwareVersion"))
        for key in ("swMcuVersion", "hwMcuVersion", "hdmiVersion"):
            version = as_text(item.get(key), max_len=64)
            if version is not None:
                child.components[key] = version
        found.append(child)
    for i, item in enumerate(_items(peripherals, "usbDevices")):
        vid, pid = as_usb_id(item.get("vid")), as_usb_id(item.get("pid"))
        name = as_text(item.get("name"))
        match = catalog.match_usb(vid, pid) if vid is not None and pid is not None else None
        product = match.product if match is not None else catalog.match_usb_product_string(name)
        child = _child(
            bar, f"usb/{as_text(item.get('id')) or i}", product.name if product else None, now, source
        )
        child.vendor_id, child.product_id = vid, pid
        child.model = name
        for key, component in (("audioFirmwareVersion", "audio"), ("videoFirmwareVersion", "video")):
            version = as_text(item.get(key), max_len=64)
            if version is not None:
                child.components[component] = version
        # One firmware to show: the audio one for an audio device (a mic pod), else the video one.
        shown = ("audio", "video") if as_bool(item.get("isVideoDevice")) is not True else ("video", "audio")
        firmware = next((child.components[c] for c in shown if c in child.components), None)
        if firmware is not None:
            child.firmware, child.firmware_source = firmware, NAME
        found.append(child)
    return found


def _taps(
    bar: Observation, peripherals: Mapping[str, Any], catalog: Catalog, now: datetime, source: str
) -> list[Observation]:
    """Each Tap IP the bar is paired with: a unit of its own, at its own address when the bar
    gives one (``paired_with`` names the bar; placing it in the bar's room is the source's,
    still to come)."""
    found = []
    tap = catalog.get("Tap IP")
    for i, item in enumerate(_items(peripherals, "ipControllers")):
        # Only an IP address is taken for the Tap's own address (never another text).
        address = as_ip(item.get("ipAddress")) or f"{bar.address}/tap-ip/{i}"
        unit = Observation(
            source=source,
            transport=Transport.HTTPS,
            address=address,
            observed_at=now,
            product=tap.name if tap else None,
            vendor=as_text(item.get("manufacturer")) or "Logitech",
            model=as_text(item.get("name")),
        )
        _set_serial(unit, item.get("serialNumber"), known=tap is not None)
        _set_firmware(unit, item.get("firmwareVersion"))
        name = as_text(item.get("deviceName"))
        if name:
            unit.attributes["device_name"] = name
        unit.attributes["paired_with"] = bar.address
        found.append(unit)
    return found


__all__ = [
    "MAX_DEPTH",
    "MAX_INSIGHT_KEYS",
    "MAX_ITEMS",
    "MAX_REPLY_BYTES",
    "NAME",
    "READS",
    "SIGNIN",
    "SIGNIN_KEYS",
    "CollabosApiCollector",
    "CollabosError",
    "as_bool",
    "as_int",
    "as_ip",
    "as_text",
    "as_usb_id",
    "check_collabos_request",
    "observe",
    "parse_reply",
]
