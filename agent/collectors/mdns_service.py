"""Identity from resolved mDNS / DNS-SD services: host name, addresses, port and TXT records.

A pure collector: :class:`ResolvedService` holds what one resolve returned, still in the
network's own words (TXT keys and values as bytes); :func:`observe_hosts` turns a scan's
services into one :class:`~agent.model.Observation` per host. Nothing here does I/O;
:mod:`agent.discovery.mdns` does the browsing.

How a unit is identified (catalog data, :meth:`~agent.catalog.Catalog.match_lan`): a TXT model
key (``model``, ``md``, ``ty``… from ``[mdns]`` in the catalog) gives the model; with the TXT
values as descriptions and the SRV host name (``RallyBar-1L5V32.local.``) the catalog picks the
product, most specific first. The instance name is *not* used: people name instances
("Oslo 4.12 display"), so it says nothing reliable about the hardware.

Trust: a serial from a TXT record (``mdns-txt``) is weaker than one read over the Sync
interface. It is marked label-grade only when the product is identified *and* the serial
needed no repair (:func:`agent.sanitize.trustworthy`); no public source says which TXT key, if
any, a CollabOS device fills with its label serial (protocols.md, U), so inventory merging
should prefer a Sync or USB serial over it.

Everything read from the network goes through :func:`agent.sanitize.clean_text`. Names in any
script are kept as they are; undecodable bytes (which zeroconf turns into U+FFFD) are noted.
TXT values are shown as text when they are UTF-8 without control characters, otherwise as
``<binary N bytes: 00ff…>``; long values are cut with a ``…<truncated, N bytes>`` marker; values
under a key that names a secret (:func:`agent.sanitize.is_secret_key`) are masked. All the
repairs made to one service become one informational health note: one line per target.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from agent.catalog import Catalog, LanMatch, MdnsKeys, Product
from agent.model import Observation, SerialSource, Severity, Transport
from agent.readonly import Gate
from agent.sanitize import MASK, CleanText, clean_serial, clean_text, is_secret_key

NAME = "mdns-txt"
#: Longest TXT value shown as text; longer ones are cut with a marker (a TXT string holds
#: at most 255 bytes on the wire, RFC 6763 §6.1).
MAX_TXT_TEXT = 128
#: Bytes of a binary TXT value shown as hex; the rest is counted, not shown.
MAX_BINARY_SHOWN = 32
#: TXT keys kept per service; RFC 6763 §6.2 suggests a record under 400 bytes, so a service
#: with more keys than this is broken or hostile.
MAX_TXT_KEYS = 64
MAX_KEY_LEN = 64
#: DNS names are at most 255 bytes (RFC 1035 §2.3.4).
MAX_NAME_LEN = 255
#: Control characters that a text TXT value may hold (cleaned away like any other).
_TEXT_CONTROLS = frozenset("\t\r\n")


@dataclass(frozen=True, slots=True)
class ResolvedService:
    """What one resolve of a DNS-SD service instance returned, as the network said it."""

    service_type: str
    #: The full service instance name: ``<Instance>.<service type>``.
    name: str
    #: The SRV target host name (``RallyBar-1L5V32.local.``).
    server: str | None = None
    addresses: tuple[str, ...] = ()
    port: int | None = None
    txt: Mapping[bytes, bytes | None] = field(default_factory=dict)
    #: Parts the resolve did not get in time (``"address"``, ``"txt"``).
    missing: tuple[str, ...] = ()

    @property
    def instance(self) -> str:
        """The instance label: the full name without the service type."""
        suffix = "." + self.service_type
        if self.name.lower().endswith(suffix.lower()):
            return self.name[: -len(suffix)]
        return self.name


@dataclass(slots=True)
class TxtView:
    """One TXT record made presentable, and what had to be repaired."""

    #: Key → shown value (text, ``True`` for a key without ``=``, markers for binary).
    shown: dict[str, str | bool] = field(default_factory=dict)
    #: Readable values for identification (no secrets, no binary).
    texts: list[str] = field(default_factory=list)
    #: Lower-case key → raw value, first occurrence (RFC 6763 §6.4: keys are
    #: case-insensitive and only the first occurrence counts).
    raw: dict[str, bytes | None] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)


def read_txt(txt: Mapping[bytes, bytes | None]) -> TxtView:
    """Decode, clean and mark every entry of one TXT record; never raises."""
    view = TxtView()
    for index, (raw_key, raw_value) in enumerate(txt.items()):
        if index >= MAX_TXT_KEYS:
            view.repairs.append(
                f"{len(txt) - MAX_TXT_KEYS} TXT keys beyond the first {MAX_TXT_KEYS} were dropped"
            )
            break
        _read_entry(view, raw_key, raw_value)
    return view


def _read_entry(view: TxtView, raw_key: bytes, raw_value: bytes | None) -> None:
    if raw_key == b"" and raw_value is None:
        return  # a zero-length string: how an empty TXT record is written (RFC 6763 §6.1)
    key = clean_text(raw_key, max_len=MAX_KEY_LEN)
    if key.value is None:
        view.repairs.append("a TXT entry with an empty key was ignored")
        return
    name = key.value
    if key.problems:
        view.repairs.append(f"TXT key {name!r} {_describe(key.problems)}")
    folded = name.lower()  # the catalog's key names are lower-case
    if folded in view.raw:
        view.repairs.append(f"TXT key {name!r} appears twice (the first counts)")
        return
    view.raw[folded] = raw_value
    if raw_value is None:
        view.shown[name] = True  # a boolean attribute (RFC 6763 §6.4)
        return
    if is_secret_key(name) and raw_value:
        view.shown[name] = MASK
        return
    if is_binary(raw_value):
        view.shown[name] = binary_marker(raw_value)
        view.repairs.append(f"TXT {name!r} is binary ({_bytes(len(raw_value))}, shown as hex)")
        return
    cleaned = clean_text(raw_value, max_len=MAX_TXT_TEXT)
    text = cleaned.value or ""
    if "too-long" in cleaned.problems:
        text = f"{text}…<truncated, {len(raw_value)} bytes>"
        view.repairs.append(f"TXT {name!r} was cut from {len(raw_value)} bytes")
    elif cleaned.problems and cleaned.value is not None:
        view.repairs.append(f"TXT {name!r} {_describe(cleaned.problems)}")
    view.shown[name] = text
    if cleaned.value:
        view.texts.append(cleaned.value)


def is_binary(value: bytes) -> bool:
    """True when ``value`` is not UTF-8 text: undecodable, or holding control characters
    other than tab / line breaks and NUL padding at the end."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    text = text.rstrip("\x00")
    return any((ch < " " or "\x7f" <= ch <= "\x9f") and ch not in _TEXT_CONTROLS for ch in text)


def binary_marker(value: bytes) -> str:
    """``<binary 300 bytes: 0001ff…>``: the length and the first bytes as hex."""
    shown = value[:MAX_BINARY_SHOWN].hex()
    more = "…" if len(value) > MAX_BINARY_SHOWN else ""
    return f"<binary {_bytes(len(value))}: {shown}{more}>"


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


_PROBLEM_TEXT = {
    "not-utf8": "was not valid UTF-8 (repaired)",
    "nul-padded": "had NUL bytes inside (cut at the first)",
    "control-chars": "held control characters (removed)",
    "too-long": "was too long (cut)",
    "empty": "is empty",
    "placeholder": "is a placeholder, not a real serial",
}


def _describe(problems: Iterable[str]) -> str:
    return ", ".join(_PROBLEM_TEXT.get(p, p) for p in problems)


def clean_name(raw: str | None) -> CleanText:
    """Clean a DNS name from zeroconf. zeroconf decodes labels with replacement, so
    undecodable bytes arrive as U+FFFD: that is reported as ``not-utf8``."""
    cleaned = clean_text(raw, max_len=MAX_NAME_LEN)
    if raw and "\ufffd" in raw and "not-utf8" not in cleaned.problems:
        return CleanText(cleaned.value, ("not-utf8", *cleaned.problems))
    return cleaned


# --------------------------------------------------------------------------- one service


@dataclass(slots=True)
class ServiceView:
    """One resolved service, cleaned: what the observation shows of it."""

    service: ResolvedService
    name: str
    instance: str
    host: str | None
    txt: TxtView
    repairs: list[str] = field(default_factory=list)

    def to_attributes(self) -> dict[str, object]:
        return {
            "service_type": clean_text(self.service.service_type).value,
            "instance": self.instance,
            "port": self.service.port,
            "txt": dict(self.txt.shown),
        }


def view_service(service: ResolvedService) -> ServiceView:
    """Clean one service's names and TXT record, collecting what was repaired."""
    repairs: list[str] = []
    name = clean_name(service.name)
    label = clean_name(service.instance)
    if label.problems:
        repairs.append(f"instance name {_describe(label.problems)}")
    host = clean_name(service.server) if service.server else CleanText(None)
    if host.problems:
        repairs.append(f"host name {_describe(host.problems)}")
    txt = read_txt(service.txt)
    return ServiceView(
        service=service,
        name=name.value or "?",
        instance=label.value or "?",
        host=host.value,
        txt=txt,
        repairs=[*repairs, *txt.repairs],
    )


# --------------------------------------------------------------------------- one host


def host_key(service: ResolvedService) -> str:
    """What ties services to one unit: the host name, else the first address, else the name."""
    if service.server:
        return service.server.rstrip(".").casefold()
    if service.addresses:
        return service.addresses[0]
    return service.name.casefold()


def group_by_host(services: Iterable[ResolvedService]) -> list[list[ResolvedService]]:
    """Services grouped per host, each group sorted (type, name), groups in key order."""
    groups: dict[str, list[ResolvedService]] = {}
    for service in services:
        groups.setdefault(host_key(service), []).append(service)
    return [sorted(groups[key], key=lambda s: (s.service_type, s.name)) for key in sorted(groups)]


@dataclass(slots=True)
class _Identity:
    """A TXT fact read under one of the catalog's keys, and the service it came from."""

    value: CleanText
    key: str
    view: ServiceView


def _first_by_keys(
    views: Sequence[ServiceView], keys: tuple[str, ...], *, serial: bool = False
) -> _Identity | None:
    for view in views:
        for key in keys:
            raw = view.txt.raw.get(key)
            if raw:
                cleaned = clean_serial(raw) if serial else clean_text(raw)
                return _Identity(cleaned, key, view)
    return None


def _identify(
    catalog: Catalog, views: Sequence[ServiceView], model: str | None, host: str | None
) -> tuple[LanMatch | None, str | None]:
    """The catalog match, and the vendor's name (Logitech for a catalog product)."""
    texts = tuple(t for v in views for t in v.txt.texts)
    vendor = catalog.vendor_for(texts=texts)
    match = catalog.match_lan(model=model, texts=texts, host_name=host, vendor=vendor)
    if match is not None and match.product.family != "room-pc":
        return match, "Logitech"  # every catalog product but a room PC is Logitech's
    return match, vendor.name if vendor else None


def _address(views: Sequence[ServiceView], host: str | None) -> str:
    """The first IPv4 address, else the host name, else an IPv6 address, else the name."""
    addresses = _unique_addresses(views)
    for text in addresses:
        if _ip_version(text) == 4:
            return text
    if host:
        return host.rstrip(".")
    return addresses[0] if addresses else views[0].name


def _ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def _unique_addresses(views: Sequence[ServiceView]) -> list[str]:
    seen: dict[str, None] = {}
    for view in views:
        for text in view.service.addresses:
            if _ip_version(text) is not None:
                seen.setdefault(text)
    return list(seen)


def observe_host(
    services: Sequence[ResolvedService], catalog: Catalog, now: datetime, *, source: str = "mdns"
) -> Observation:
    """One observation for the services of one host (``services`` is not empty)."""
    views = [view_service(s) for s in services]
    keys: MdnsKeys = catalog.mdns_keys
    model = _first_by_keys(views, keys.model)
    # The primary service: the one whose TXT gave the model, else the first.
    primary = model.view if model else views[0]
    host = primary.host or next((v.host for v in views if v.host), None)
    match, vendor = _identify(catalog, views, model.value.value if model else None, host)
    product = match.product if match else None

    obs = Observation(
        source=source,
        transport=Transport.MDNS,
        address=_address(views, host),
        observed_at=now,
        product=product.name if product else None,
        vendor=vendor,
    )
    obs.model = model.value.value if model and model.value.value else (product.model if product else None)
    _set_serial(obs, _first_by_keys(views, keys.serial, serial=True), product)
    _set_firmware(obs, _first_by_keys(views, keys.firmware))
    obs.attributes.update(
        {
            "host": host,
            "addresses": _unique_addresses(views),
            **primary.to_attributes(),
            "services": [v.to_attributes() for v in views],
        }
    )
    if match is not None:
        obs.attributes["identified_by"] = match.how
    elif obs.vendor == "Logitech":
        obs.note("unknown-product", "a Logitech device the catalog does not know", Severity.INFO)
    _note_service_problems(obs, views)
    return obs


def _set_serial(obs: Observation, found: _Identity | None, product: Product | None) -> None:
    if found is None:
        return
    if found.value.value is None:
        if "placeholder" in found.value.problems:
            found.view.repairs.append(f"TXT {found.key!r} holds a placeholder, not a serial")
        return
    obs.serial = found.value.value
    obs.serial_source = SerialSource.MDNS_TXT
    # Label-grade only for an identified product and a serial that needed no repair.
    obs.serial_label_grade = product is not None and found.value.trustworthy
    if found.value.problems:
        found.view.repairs.append(f"serial {_describe(found.value.problems)}")


def _set_firmware(obs: Observation, found: _Identity | None) -> None:
    if found is None or found.value.value is None:
        return
    obs.firmware = found.value.value
    obs.firmware_source = NAME


def _note_service_problems(obs: Observation, views: Sequence[ServiceView]) -> None:
    """At most one note per service: what was repaired, and what its resolve lacked."""
    for view in views:
        lines = list(view.repairs)
        missing = view.service.missing
        if missing:
            lines.append(f"no {' or '.join(missing)} answer in time")
        if lines:
            obs.note("mdns-data", f"{view.name}: {'; '.join(lines)}", Severity.INFO)


def observe_hosts(
    services: Iterable[ResolvedService], catalog: Catalog, now: datetime, *, source: str = "mdns"
) -> list[Observation]:
    """One observation per host for every resolved service of a scan."""
    return [observe_host(group, catalog, now, source=source) for group in group_by_host(services)]


class MdnsTxtCollector:
    """Every mDNS host: identity from its service records (TXT keys, host-name patterns).

    It sends devices nothing: the browse and the resolves are standard mDNS questions to the
    multicast group (zeroconf's), and what a host announces is read as it comes."""

    name: ClassVar[str] = "mdns-txt"
    writes: ClassVar[str | None] = None
    gate: ClassVar[Gate | None] = None
    observe_host = staticmethod(observe_host)
