"""GetDeviceInfo JSON → observations in the project's model.

The document (protocols.md; recorded Rally Bar, event 40) is
``{"id", "ts", "type": 2, "payload": {"devices": [...]}}``. ``devices[0]`` is the bar
itself; further entries are attached CollabOS devices such as the Sight; each device may
list ``peripherals`` grouped by kind (``camera``, ``micPod``, ``remote``…), each group with
``count.expected`` / ``count.actual`` and ``data[]``.

What becomes what:

* the bar → one :class:`~agent.model.Observation`: catalog product by CollabOS model code,
  ``serial`` (serial_source ``sync-interface``, label-grade when clean: the bar reports the
  serial printed on its label), ``firmware`` = ``sw`` (the CollabOS version; bcdDevice is
  not), ``components`` from ``manifest``/``osv``/``av``/``vv``/``ptv``/``zfv``/``hkv``,
  ``state`` from ``status``;
* every further device (Sight) and every peripheral → a child observation; a ``camera``
  peripheral whose ``uid`` is the serial of a further device is that device, not another;
* every peripheral group with ``count.actual < count.expected`` → a ``peripheral-missing``
  health issue naming the group and how many are missing; ``updateStatus`` → the
  ``update_status`` attribute and, when it says so, an update issue;
* every other field is kept in ``attributes`` (sanitized), never fatal.

Input is bounded before anything else: a size cap and a nesting cap. Malformed input raises
:class:`~agent.collectors.sync.errors.DeviceInfoError`; a document that is usable but
incomplete gives a partial observation with ``sync-data-malformed`` notes.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from agent.catalog import LOGITECH_VID, UNKNOWN_LOGITECH, Catalog, load_catalog
from agent.collectors.sync.errors import DeviceInfoError
from agent.model import Observation, SerialSource, Severity, Transport
from agent.sanitize import MASK, clean_serial, clean_text, is_secret_key

NAME = "sync-interface"
FIRMWARE_SOURCE = "sync-interface"
#: The recorded answer is 2,942 characters; 1 MiB leaves room for a bar with dozens of
#: peripherals and still bounds memory and time.
MAX_JSON_CHARS = 1 << 20
#: The recorded document nests 6 levels deep.
MAX_DEPTH = 32
MAX_DEVICES = 32
MAX_PERIPHERALS_PER_GROUP = 64
MAX_ATTRIBUTE_TEXT = 256

#: ``status`` of a device (protocols.md, V).
DEVICE_STATES = {
    -1: "unknown",
    0: "offline",
    1: "online",
    2: "idle",
    3: "in-use",
    4: "audio-only",
    5: "enumerating",
}
#: ``updateStatus`` (U: fwupd's Logitech bulk-controller plugin; protocols.md names the
#: field only). 2 is not defined there.
UPDATE_STATES = {
    -1: "unknown",
    0: "current",
    1: "available",
    3: "starting",
    4: "downloading",
    5: "ready",
    6: "updating",
    7: "scheduled",
    8: "error",
}
_UPDATE_ISSUES = {
    "available": ("update-available", "a firmware update is available", Severity.INFO),
    "error": ("update-failed", "the last firmware update failed", Severity.WARNING),
    **{
        s: ("update-in-progress", f"a firmware update is in progress ({s})", Severity.INFO)
        for s in ("starting", "downloading", "ready", "updating", "scheduled")
    },
}
#: Component firmware versions (protocols.md: manifest, osv, av audio, ptv/zfv/hkv).
COMPONENT_KEYS = ("manifest", "osv", "av", "vv", "ptv", "zfv", "hkv")
_CONSUMED = frozenset({"model", "serial", "sw", "peripherals", *COMPONENT_KEYS})
_GROUP_LABELS = {"micPod": "Mic Pod", "camera": "camera", "remote": "remote"}
_HEX_ID = re.compile(r"^0x[0-9a-fA-F]{1,4}$")


def parse_device_info(
    document: str | bytes, *, address: str, now: datetime, catalog: Catalog | None = None, source: str = NAME
) -> Observation:
    """The bar (``devices[0]``) as an observation, with its devices and peripherals as
    children. ``address`` is where the bar was reached (its USB port name).

    Raises :class:`DeviceInfoError` when the document is not JSON, too large, nested too
    deeply, or holds no ``payload.devices[0]`` object.
    """
    doc = load_document(document)
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise DeviceInfoError("GetDeviceInfo document has no 'payload' object")
    devices = payload.get("devices")
    if not isinstance(devices, list) or not devices or not isinstance(devices[0], dict):
        raise DeviceInfoError("GetDeviceInfo document has no 'payload.devices[0]' object")
    ctx = _Context(catalog or load_catalog(), now, source)
    bar = ctx.device(devices[0], "payload.devices[0]", address)
    bar.attributes["sync_message"] = _plain({k: v for k, v in doc.items() if k != "payload"})
    if len(devices) > MAX_DEVICES:
        bar.note(
            "sync-data-malformed",
            f"{len(devices)} devices reported; only the first {MAX_DEVICES} are read",
            Severity.INFO,
        )
    by_serial: dict[str, Observation] = {}
    entries: list[tuple[dict[str, Any], Observation]] = [(devices[0], bar)]
    for i, raw in enumerate(devices[1:MAX_DEVICES], 1):
        where = f"payload.devices[{i}]"
        if not isinstance(raw, dict):
            bar.note("sync-data-malformed", f"{where} is not an object; skipped", Severity.INFO)
            continue
        serial = _serial_text(raw.get("serial"))
        child = ctx.device(raw, where, f"{address}/sync/{serial or f'devices[{i}]'}")
        bar.children.append(child)
        entries.append((raw, child))
        if child.serial:
            by_serial[child.serial] = child
    for raw, obs in entries:
        ctx.peripherals(raw.get("peripherals"), obs, by_serial)
    return bar


def load_document(document: str | bytes) -> dict[str, Any]:
    """Decode and bound the JSON text: size cap, nesting cap, an object at the top."""
    if isinstance(document, bytes | bytearray | memoryview):
        raw = bytes(document)
        if len(raw) > 4 * MAX_JSON_CHARS:
            raise DeviceInfoError(
                f"GetDeviceInfo document of {len(raw)} bytes is over the cap of {MAX_JSON_CHARS} characters"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DeviceInfoError(f"GetDeviceInfo document is not UTF-8: {exc}") from exc
    elif isinstance(document, str):
        text = document
    else:
        raise DeviceInfoError(f"GetDeviceInfo document must be text, not {type(document).__name__}")
    if len(text) > MAX_JSON_CHARS:
        raise DeviceInfoError(
            f"GetDeviceInfo document of {len(text)} characters is over the cap of {MAX_JSON_CHARS}"
        )
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:
        raise DeviceInfoError(f"GetDeviceInfo document nests deeper than {MAX_DEPTH}") from exc
    except json.JSONDecodeError as exc:
        raise DeviceInfoError(
            f"GetDeviceInfo document is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise DeviceInfoError(f"GetDeviceInfo document is not usable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DeviceInfoError(f"GetDeviceInfo document is a JSON {type(doc).__name__}, not an object")
    _check_depth(doc)
    return doc


def _no_constant(name: str) -> None:
    return None  # NaN / Infinity are not JSON; keep the field, drop the value


def _check_depth(doc: dict[str, Any]) -> None:
    # Level by level: one pass over each level's containers, no per-node tuples.
    level: list[Any] = [doc]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            raise DeviceInfoError(f"GetDeviceInfo document nests deeper than {MAX_DEPTH}")
        below: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            below.extend(v for v in values if type(v) in _CONTAINERS)
        level = below
        depth += 1


# --------------------------------------------------------------------------- strings


_CONTAINERS = (dict, list)
#: Keys already checked: a device sends the same few dozen field names every time, and a
#: dict lookup is cheaper than checking the text again. Bounded against hostile input.
_KEYS: dict[str, str | None] = {}
_KEYS_MAX = 4096


def _is_clean(text: str, max_len: int) -> bool:
    """True when :func:`agent.sanitize.clean_text` would return ``text`` unchanged:
    printable ASCII, not empty, within the cap, no leading, trailing or doubled spaces.
    (Three C-level string checks instead of a Python loop over the characters.)"""
    return (
        0 < len(text) <= max_len
        and text.isascii()
        and text.isprintable()
        and (" " not in text or (text[0] != " " and text[-1] != " " and "  " not in text))
    )


def _text(value: Any, max_len: int = 128) -> tuple[str | None, tuple[str, ...]]:
    """:func:`agent.sanitize.clean_text`, with a fast path for text that needs no repair."""
    if type(value) is not str:
        return None, ("not-text",) if value is not None else ()
    if _is_clean(value, max_len):
        return value, ()
    cleaned = clean_text(value, max_len=max_len)
    return cleaned.value, cleaned.problems


def _key(raw: str) -> str | None:
    try:
        return _KEYS[raw]
    except KeyError:
        key = raw if _is_clean(raw, 128) else clean_text(raw).value
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[raw] = key
        return key


def _serial_text(value: Any) -> str | None:
    return clean_serial(value).value if isinstance(value, str) else None


def _plain(value: Any) -> Any:
    """A sanitized copy for ``attributes``: cleaned strings, finite numbers, nothing else.

    json.loads gives exactly str, int, float, bool, None, list and dict. Scalars inside a
    dict are handled inline: this runs over every kept field of every device, and a call
    per value would be most of the parse time (bench/sync_parse.py).
    """
    kind = type(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _key(k)
            if key is None:
                continue
            if is_secret_key(key) and v not in (None, ""):
                out[key] = MASK  # a device's settings may carry credentials: never keep them
                continue
            t = type(v)
            if t is str:
                # _is_clean, inlined: the hottest line of the parser
                if (
                    0 < len(v) <= MAX_ATTRIBUTE_TEXT
                    and v.isascii()
                    and v.isprintable()
                    and (" " not in v or (v[0] != " " and v[-1] != " " and "  " not in v))
                ):
                    out[key] = v
                else:
                    out[key] = clean_text(v, max_len=MAX_ATTRIBUTE_TEXT).value
            elif t is int or t is bool or v is None:
                out[key] = v
            else:
                out[key] = _plain(v)
        return out
    if kind is str:
        return (
            value
            if _is_clean(value, MAX_ATTRIBUTE_TEXT)
            else clean_text(value, max_len=MAX_ATTRIBUTE_TEXT).value
        )
    if kind is list:
        return [_plain(v) for v in value]
    if kind is float:
        return value if math.isfinite(value) else None
    return value if kind is int or kind is bool or value is None else None


def _code(value: Any) -> int | None:
    """An integer code (``status``, ``updateStatus``); booleans are not codes."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _hex_id(value: Any) -> int | None:
    return int(value, 16) if isinstance(value, str) and _HEX_ID.match(value) else None


# --------------------------------------------------------------------------- building


class _Context:
    """What every observation built from one document shares: catalog, time, source."""

    def __init__(self, catalog: Catalog, now: datetime, source: str) -> None:
        self.catalog = catalog
        self.now = now
        self.source = source

    def _new(self, address: str) -> Observation:
        return Observation(source=self.source, transport=Transport.USB, address=address, observed_at=self.now)

    def _field(self, obs: Observation, raw: dict[str, Any], key: str, where: str) -> str | None:
        value, problems = _text(raw.get(key))
        for problem in problems:
            obs.note("sync-data-malformed", f"{where}.{key} {_PROBLEMS.get(problem, problem)}", Severity.INFO)
        return value

    def device(self, raw: dict[str, Any], where: str, address: str) -> Observation:
        """One CollabOS device entry (the bar, a Sight…) without its peripherals."""
        obs = self._new(address)
        # Raw fields first, so the words derived below (update_status) win over a raw
        # field of the same name.
        obs.attributes.update(_plain({k: v for k, v in raw.items() if k not in _CONSUMED}))
        model = self._field(obs, raw, "model", where)
        name = self._field(obs, raw, "name", where)
        product = self.catalog.by_collabos_model(model)
        vid = _hex_id(raw.get("vid"))
        if product is not None:
            obs.product = product.name
            obs.vendor = "Logitech"
        else:
            obs.product = UNKNOWN_LOGITECH
            obs.vendor = "Logitech" if vid in (None, LOGITECH_VID) else None
            obs.note(
                "unknown-product",
                f"CollabOS model {model or '(none)'} ({name or 'no name'}) is not in the catalog",
                Severity.INFO,
            )
        obs.model = model or (product.model if product else None)
        self._serial(obs, raw, where, key_device=bool(product and product.key_device))
        obs.firmware = self._field(obs, raw, "sw", where)
        if obs.firmware:
            obs.firmware_source = FIRMWARE_SOURCE
        for key in COMPONENT_KEYS:
            version = self._field(obs, raw, key, where)
            if version:
                obs.components[key] = version
        self._status(obs, raw)
        return obs

    def _serial(self, obs: Observation, raw: dict[str, Any], where: str, *, key_device: bool) -> None:
        value = raw.get("serial")
        if isinstance(value, str):
            cleaned = clean_serial(value)
            obs.serial = cleaned.value
            for problem in cleaned.problems:
                obs.note(
                    f"sync-serial-{problem}",
                    f"{where}.serial {_PROBLEMS.get(problem, problem)}",
                    Severity.WARNING,
                )
            if cleaned.value is not None:
                obs.serial_source = SerialSource.SYNC_INTERFACE
                obs.serial_label_grade = cleaned.trustworthy
        elif value is not None:
            obs.note("sync-data-malformed", f"{where}.serial is not text", Severity.INFO)
        if obs.serial is None and key_device:
            obs.note(
                "serial-missing", "the Sync interface reported no usable serial number", Severity.WARNING
            )

    def _status(self, obs: Observation, raw: dict[str, Any], *, state: bool = True) -> None:
        status = _code(raw.get("status"))
        if state and status is not None:
            obs.state = DEVICE_STATES.get(status, "unknown")
        update = _code(raw.get("updateStatus"))
        if update is not None:
            word = UPDATE_STATES.get(update, "unknown")
            obs.attributes["update_status"] = word
            if word in _UPDATE_ISSUES:
                obs.note(*_UPDATE_ISSUES[word])

    def peripherals(self, groups: Any, owner: Observation, by_serial: dict[str, Observation]) -> None:
        """Children and health of one device's ``peripherals`` object."""
        if groups is None:
            return
        if not isinstance(groups, dict):
            owner.note("sync-data-malformed", "peripherals is not an object", Severity.INFO)
            return
        counts: dict[str, dict[str, int]] = {}
        for raw_key, group in groups.items():
            key = _key(raw_key) if isinstance(raw_key, str) else None
            if key is None or not isinstance(group, dict):
                owner.note("sync-data-malformed", f"peripherals.{key} is not an object", Severity.INFO)
                continue
            self._count(owner, key, group.get("count"), counts)
            entries = group.get("data")
            if entries is None:
                continue
            if not isinstance(entries, list):
                owner.note("sync-data-malformed", f"peripherals.{key}.data is not a list", Severity.INFO)
                continue
            for j, entry in enumerate(entries[:MAX_PERIPHERALS_PER_GROUP]):
                if isinstance(entry, dict):
                    self._peripheral(owner, key, j, entry, by_serial)
                else:
                    owner.note(
                        "sync-data-malformed", f"peripherals.{key}.data[{j}] is not an object", Severity.INFO
                    )
        if counts:
            owner.attributes["peripheral_counts"] = counts

    def _count(self, owner: Observation, key: str, count: Any, counts: dict[str, dict[str, int]]) -> None:
        if not isinstance(count, dict):
            return
        expected, actual = _code(count.get("expected")), _code(count.get("actual"))
        if expected is None or actual is None or expected < 0 or actual < 0:
            owner.note(
                "sync-data-malformed", f"peripherals.{key}.count is not two whole numbers", Severity.INFO
            )
            return
        counts[key] = {"expected": expected, "actual": actual}
        if actual < expected:
            label = _GROUP_LABELS.get(key) or _words(key)
            missing = expected - actual
            owner.note(
                "peripheral-missing",
                f"{missing} of {expected} expected {label}{'s' if expected != 1 else ''} "
                f"missing: Sync reports {actual} connected",
                Severity.WARNING,
            )

    def _peripheral(
        self, owner: Observation, group: str, j: int, entry: dict[str, Any], by_serial: dict[str, Observation]
    ) -> None:
        uid = _serial_text(entry.get("uid"))
        known = by_serial.get(uid) if uid else None
        if known is not None:
            # A camera peripheral that is a CollabOS device of its own (the Sight): one unit.
            known.attributes["peripheral"] = {"group": group, **_plain(entry)}
            return
        where = f"peripherals.{group}.data[{j}]"
        obs = self._new(f"{owner.address}/{group}/{uid or j}")
        name = self._field(obs, entry, "name", where)
        product = self.catalog.match_usb_product_string(name)
        obs.product = product.name if product else name
        obs.model = product.model if product else None
        vid = _hex_id(entry.get("vid"))
        obs.vendor = "Logitech" if vid == LOGITECH_VID else None
        obs.firmware = self._field(obs, entry, "sw", where)
        if obs.firmware:
            obs.firmware_source = FIRMWARE_SOURCE
        # Peripherals: an explicit isOnline wins over the status code (U: the recorded
        # remote reports status 0 while counted as connected).
        online = entry.get("isOnline")
        if isinstance(online, bool):
            obs.state = "online" if online else "offline"
        obs.attributes.update(_plain({k: v for k, v in entry.items() if k != "sw"}))
        self._status(obs, entry, state=not isinstance(online, bool))
        obs.attributes["peripheral_group"] = group
        owner.children.append(obs)


_PROBLEMS = {
    "not-text": "is not text",
    "not-utf8": "is not valid UTF-8",
    "nul-padded": "had NUL padding inside it (cut at the first NUL)",
    "control-chars": "held control characters (removed)",
    "too-long": "was too long (cut)",
    "empty": "is empty",
    "placeholder": "is a placeholder, not a real serial",
}


def _words(key: str) -> str:
    """``tableHub`` → ``table hub``: a readable name for a group this module does not know."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).lower()
