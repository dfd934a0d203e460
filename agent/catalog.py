"""Product identification. The table itself is data: ``agent/data/catalog.toml``.

Lookups a collector needs:

* :meth:`Catalog.match_usb` — a USB vendor/product id to the product(s) and the role that
  id plays in the unit (``main``, or a further function such as an internal hub);
* :meth:`Catalog.match_usb_product_string` — products with no known USB id, by the
  descriptor's product string;
* :meth:`Catalog.by_collabos_model` / :meth:`Catalog.by_model_number` — model codes;
* :meth:`Catalog.match_host_name` and :meth:`Catalog.match_lan` — units found on the LAN
  (mDNS host names and TXT values, SNMP sysObjectID / sysDescr / ENTITY-MIB rows);
* :meth:`Catalog.vendor_for` — the vendor of something the catalog does not know, so an
  unknown SNMP responder is still reported with a vendor;
* :attr:`Catalog.systems` / :meth:`Catalog.system` / :meth:`Catalog.systems_with` — the kinds
  of system a room's units are grouped into (``[[system]]``: a Rally system, a Tap bundle, a
  CollabOS bar with its peripherals), with the role whose unit is the primary unit (P1) and
  the role whose serial support tickets quote (P2). :mod:`agent.systems` does the grouping.

An id that is Logitech's but unknown to the catalog is never dropped: collectors report it
as :data:`UNKNOWN_LOGITECH` with its ids.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from agent.collectors.registry import COLLECTORS, PRODUCT_COLLECTORS

LOGITECH_VID = 0x046D
UNKNOWN_LOGITECH = "Unknown Logitech device"
UNKNOWN_DEVICE = "Unknown device"

#: W7: the ``kind`` of products sold separately (components) and of consumables.
SEPARATE_KINDS = frozenset({"component", "consumable"})
FAMILIES = frozenset(
    {
        "collabos-bar",
        "collabos-peripheral",
        "rally-system",
        "controller",
        "camera",
        "webcam",
        "speakerphone",
        "whiteboard-camera",
        "system",
        "peripheral",
        "room-pc",
    }
)
USB_ROLES = frozenset({"main", "hub", "hid", "audio", "video", "function"})
#: How much a system needs a role: ``required`` (no system without it), ``expected`` (the
#: system is formed but flagged incomplete without it), ``optional``.
SYSTEM_NEEDS = ("required", "expected", "optional")
#: A rule id of domain.md (``P1``, ``S8``) or a named list (``S-list``).
_RULE_ID = re.compile(r"^[A-Z][A-Za-z0-9]*(-[A-Za-z0-9]+)*$")


class CatalogError(ValueError):
    """The catalog data file is malformed (a packaging bug, not an operator error)."""


@dataclass(frozen=True, slots=True)
class UsbId:
    vid: int
    pid: int
    role: str
    sure: bool
    #: Further products this id may belong to (a hub chip shared by two bars).
    shared_with: tuple[str, ...] = ()
    #: Only counts as this product when a main function of it is on the same host.
    only_with_main: bool = False


@dataclass(frozen=True, slots=True)
class Product:
    name: str
    family: str
    kind: str
    model_numbers: tuple[str, ...] = ()
    collabos_models: tuple[str, ...] = ()
    primary_unit: bool = False
    key_device: bool = False
    select_supported: bool = False
    reseller_supported: bool = False
    #: Room hardware Logitech supports itself (D2: the first contact for a warranty claim is
    #: Logitech); any other product goes to the distributor (D1).
    conference_system: bool = False
    extension_eligible: bool = False
    standard_warranty_years: int = 2
    warranty_source: str = "default"
    #: Product collectors (``agent.collectors.registry``) that read more of this product's
    #: units than their source's identification does (``"sync-interface"``).
    collectors: tuple[str, ...] = ()
    #: The USB bcdDevice is the unit's firmware version (not for CollabOS bars, whose
    #: firmware is the CollabOS version read over Sync).
    usb_release_is_firmware: bool = True
    usb_serial_label_grade: bool = False
    #: Said (an info note) on a unit whose USB serial is not label-grade: why, and where the
    #: label serial can be found (the Tap's is readable only in a test mode: issue [11/16]).
    usb_serial_note: str | None = None
    #: A family's fallback name for a unit the catalog cannot name more precisely ("CollabOS
    #: bar (unnamed)"): when channels merge, a named product wins over it and it never
    #: counts as a model disagreement (agent/identity.py).
    generic: bool = False
    usb: tuple[UsbId, ...] = ()
    usb_product_strings: tuple[re.Pattern[str], ...] = field(default=(), compare=False)
    #: LAN host names (mDNS host, SNMP sysName), matched from the start, case-insensitive.
    host_names: tuple[re.Pattern[str], ...] = field(default=(), compare=False)
    #: Patterns on LAN descriptions (sysDescr, ENTITY-MIB model/name, mDNS TXT values).
    lan_descriptions: tuple[re.Pattern[str], ...] = field(default=(), compare=False)
    #: SNMP sysObjectID prefixes (dotted, no leading dot).
    snmp_object_ids: tuple[str, ...] = ()

    @property
    def sold_separately(self) -> bool:
        """A component sold on its own or a consumable (``kind`` ``component`` /
        ``consumable``): the B2B extended warranty excludes it (W7)."""
        return self.kind in SEPARATE_KINDS

    @property
    def model(self) -> str | None:
        """The model identifier shown for the unit when the device does not report one."""
        if self.collabos_models:
            return self.collabos_models[0]
        if self.model_numbers:
            return self.model_numbers[0]
        return None


@dataclass(frozen=True, slots=True)
class UsbMatch:
    """What a USB id means: the product(s) it belongs to and its role in the unit."""

    products: tuple[Product, ...]
    usb_id: UsbId

    @property
    def product(self) -> Product:
        return self.products[0]

    @property
    def role(self) -> str:
        return self.usb_id.role

    @property
    def is_main(self) -> bool:
        return self.usb_id.role == "main"

    @property
    def ambiguous(self) -> bool:
        return len(self.products) > 1


@dataclass(frozen=True, slots=True)
class Vendor:
    """A maker the agent can name from an SNMP enterprise number or a description."""

    name: str
    enterprises: tuple[int, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False)
    #: Its products are in this catalog (product names in a description identify them).
    catalog_vendor: bool = False


@dataclass(frozen=True, slots=True)
class MdnsKeys:
    """Which TXT record keys carry a model, a serial or a firmware version (U: hints)."""

    model: tuple[str, ...] = ()
    serial: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LanMatch:
    """A LAN endpoint identified: the product and which fact identified it."""

    product: Product
    how: str


@dataclass(frozen=True, slots=True)
class SystemRole:
    """One role in a kind of system: which products fill it, how much the system needs it,
    and how many units it takes (``max``; ``None`` = no limit)."""

    role: str
    products: tuple[str, ...]
    need: str = "optional"
    max: int | None = None

    @property
    def required(self) -> bool:
        return self.need == "required"


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """A kind of system (``[[system]]`` in the catalog): units of one room that form one
    product or bundle. ``primary`` names the role whose unit is the primary unit (P1);
    ``ticket`` the role whose serial support tickets quote (P2 for a Tap bundle). Each
    decision cites its rule ids (``primary_rules``, ``ticket_rules``)."""

    name: str
    roles: tuple[SystemRole, ...]
    primary: str
    ticket: str
    primary_rules: tuple[str, ...]
    ticket_rules: tuple[str, ...]
    description: str = ""

    def role(self, name: str) -> SystemRole:
        return next(r for r in self.roles if r.role == name)

    def role_of(self, product: str | None) -> SystemRole | None:
        """The role ``product`` fills in this kind of system, if any."""
        return next((r for r in self.roles if product in r.products), None)


#: Dotted prefix of SNMP enterprise object ids (sysObjectID 1.3.6.1.4.1.<number>…).
ENTERPRISES_PREFIX = "1.3.6.1.4.1."


class Catalog:
    """The loaded product catalog. Use :func:`load_catalog` to get the shipped one."""

    def __init__(
        self,
        products: list[Product],
        default_warranty_years: int,
        vendors: list[Vendor] | None = None,
        mdns_keys: MdnsKeys | None = None,
        systems: list[SystemSpec] | None = None,
    ) -> None:
        self.products: dict[str, Product] = {}
        self.default_warranty_years = default_warranty_years
        self.vendors: list[Vendor] = list(vendors or ())
        self.mdns_keys = mdns_keys or MdnsKeys()
        self._enterprises = {n: v for v in self.vendors for n in v.enterprises}
        self._usb: dict[tuple[int, int], UsbMatch] = {}
        self._collabos: dict[str, Product] = {}
        self._model_numbers: dict[str, list[Product]] = {}
        for p in products:
            if p.name in self.products:
                raise CatalogError(f"product {p.name!r} is listed twice")
            self.products[p.name] = p
        for p in products:
            for uid in p.usb:
                key = (uid.vid, uid.pid)
                if key in self._usb:
                    raise CatalogError(
                        f"USB id {uid.vid:04x}:{uid.pid:04x} is listed under both "
                        f"{self._usb[key].product.name!r} and {p.name!r}; use shared_with"
                    )
                others = []
                for name in uid.shared_with:
                    if name not in self.products:
                        raise CatalogError(f"{p.name}: shared_with names unknown product {name!r}")
                    others.append(self.products[name])
                self._usb[key] = UsbMatch((p, *others), uid)
            for code in p.collabos_models:
                self._collabos[code.upper()] = p
            for number in p.model_numbers:
                self._model_numbers.setdefault(_norm_model(number), []).append(p)
        #: Kinds of system, in the order units are grouped into them (first match first).
        self.systems: tuple[SystemSpec, ...] = tuple(systems or ())
        self._systems: dict[str, SystemSpec] = {}
        for spec in self.systems:
            self._check_system(spec)
            self._systems[spec.name] = spec

    def _check_system(self, spec: SystemSpec) -> None:
        """Cross-checks of a ``[[system]]`` entry against the products (data errors)."""
        where = f"system {spec.name!r}"
        if spec.name in self._systems:
            raise CatalogError(f"{where} is listed twice")
        for role in spec.roles:
            for name in role.products:
                if name not in self.products:
                    raise CatalogError(f"{where}: role {role.role!r} names unknown product {name!r}")
        # P1: a system registers its primary unit's serial, and a ticket quotes a unit's own
        # serial (P2): both roles must hold units the catalog marks as primary units.
        for what, role_name in (("primary", spec.primary), ("ticket", spec.ticket)):
            for name in spec.role(role_name).products:
                if not self.products[name].primary_unit:
                    raise CatalogError(
                        f"{where}: {what} role {role_name!r} holds {name!r}, which "
                        "is not a primary unit (primary_unit = false)"
                    )

    def system(self, name: str) -> SystemSpec:
        return self._systems[name]

    def systems_with(self, product: str | None) -> list[SystemSpec]:
        """The kinds of system ``product`` can be part of, in grouping order."""
        return [s for s in self.systems if s.role_of(product) is not None]

    def product(self, name: str) -> Product:
        return self.products[name]

    def get(self, name: str | None) -> Product | None:
        return self.products.get(name) if name else None

    def match_usb(self, vid: int, pid: int) -> UsbMatch | None:
        return self._usb.get((vid, pid))

    def match_usb_product_string(self, text: str | None) -> Product | None:
        if not text:
            return None
        for p in self.products.values():
            if any(rx.search(text) for rx in p.usb_product_strings):
                return p
        return None

    def by_collabos_model(self, code: str | None) -> Product | None:
        return self._collabos.get(code.strip().upper()) if code else None

    def by_model_number(self, number: str | None) -> list[Product]:
        """Products carrying a label model number (``V-R0010`` and ``VR0010`` alike).

        One number may name several products: V-R0010 is the Rally Camera and the number
        a Rally or Rally Plus system is registered by (P1).
        """
        return list(self._model_numbers.get(_norm_model(number), [])) if number else []

    def warranty_years(self, name: str | None) -> int:
        p = self.get(name)
        return p.standard_warranty_years if p else self.default_warranty_years

    # ------------------------------------------------------------------ LAN

    def match_host_name(self, host: str | None) -> Product | None:
        """The product whose host-name pattern matches ``host`` (``RallyBar-1L5V32.local.``)."""
        if not host:
            return None
        name = host.rstrip(".")
        if name.lower().endswith(".local"):
            name = name[: -len(".local")]
        for p in self.products.values():
            if any(rx.match(name) for rx in p.host_names):
                return p
        return None

    def vendor_for(
        self, object_id: str | None = None, texts: tuple[str | None, ...] | list[str | None] = ()
    ) -> Vendor | None:
        """The vendor named by an SNMP enterprise object id, else by a description."""
        number = enterprise_number(object_id)
        if number is not None and number in self._enterprises:
            return self._enterprises[number]
        for text in texts:
            if not text:
                continue
            for v in self.vendors:
                if any(rx.search(text) for rx in v.patterns):
                    return v
        return None

    def match_lan(
        self,
        *,
        object_id: str | None = None,
        model: str | None = None,
        texts: tuple[str | None, ...] | list[str | None] = (),
        host_name: str | None = None,
        vendor: Vendor | None = None,
    ) -> LanMatch | None:
        """Identify a LAN endpoint from what it said about itself, most specific first:

        1. an SNMP sysObjectID under a product's ``snmp_object_ids``;
        2. a reported model code or number (``VR0019``, ``V-R0010``);
        3. a product's ``lan_descriptions`` pattern in any of ``texts``;
        4. a host name pattern (``RallyBar-…``);
        5. when the vendor is one whose products the catalog holds, the longest product
           name found as whole words in ``texts`` ("Logitech Rally Bar Mini" → Rally Bar Mini).
        """
        oid = (object_id or "").lstrip(".")
        if oid:
            for p in self.products.values():
                if any(oid == prefix or oid.startswith(prefix + ".") for prefix in p.snmp_object_ids):
                    return LanMatch(p, "snmp-object-id")
        if model:
            found = self.by_collabos_model(model) or next(iter(self.by_model_number(model)), None)
            if found is None:
                found = self._by_name_exact(model)
            if found is not None:
                return LanMatch(found, "model")
        present = [t for t in texts if t]
        for p in self.products.values():
            if any(rx.search(t) for rx in p.lan_descriptions for t in present):
                return LanMatch(p, "description")
        by_host = self.match_host_name(host_name)
        if by_host is not None:
            return LanMatch(by_host, "host-name")
        if vendor is not None and vendor.catalog_vendor:
            named = self._longest_name_in(present + ([model] if model else []))
            if named is not None:
                return LanMatch(named, "product-name")
        return None

    def _by_name_exact(self, text: str) -> Product | None:
        wanted = " ".join(text.split()).casefold()
        return next((p for p in self.products.values() if p.name.casefold() == wanted), None)

    def _longest_name_in(self, texts: list[str]) -> Product | None:
        best: Product | None = None
        for p in self.products.values():
            rx = _name_pattern(p.name)
            if any(rx.search(t) for t in texts) and (best is None or len(p.name) > len(best.name)):
                best = p
        return best


@cache
def _name_pattern(name: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in name.split())
    return re.compile(rf"(?<![\w-]){words}(?![\w-])", re.IGNORECASE)


def enterprise_number(object_id: str | None) -> int | None:
    """The IANA enterprise number in an SNMP object id under 1.3.6.1.4.1, else ``None``."""
    if not object_id:
        return None
    oid = object_id.lstrip(".")
    if not oid.startswith(ENTERPRISES_PREFIX):
        return None
    head = oid[len(ENTERPRISES_PREFIX) :].split(".", 1)[0]
    return int(head) if head.isdigit() and len(head) <= 10 else None


def _norm_model(number: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", number.upper())


def parse_catalog(data: dict[str, Any]) -> Catalog:
    """Build a :class:`Catalog` from the decoded TOML, checking every entry."""
    default_years = data.get("default_standard_warranty_years", 2)
    if not isinstance(default_years, int) or default_years < 0:
        raise CatalogError("default_standard_warranty_years must be a whole number ≥ 0")
    unknown = set(data) - {"default_standard_warranty_years", "product", "vendor", "mdns", "system"}
    if unknown:
        raise CatalogError(f"unknown top-level keys {sorted(unknown)}")
    products = []
    for i, raw in enumerate(data.get("product", [])):
        where = f"product[{i}] ({raw.get('name', '?')})"
        products.append(_parse_product(raw, where, default_years))
    vendors = [
        _parse_vendor(raw, f"vendor[{i}] ({raw.get('name', '?')})")
        for i, raw in enumerate(data.get("vendor", []))
    ]
    systems = [
        _parse_system(raw, f"system[{i}] ({raw.get('name', '?')})")
        for i, raw in enumerate(data.get("system", []))
    ]
    return Catalog(products, default_years, vendors, _parse_mdns(data.get("mdns", {})), systems)


def _patterns(
    raw: dict[str, Any], key: str, where: str, *, anchored: bool = False
) -> tuple[re.Pattern[str], ...]:
    values = raw.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CatalogError(f"{where}: {key} must be a list of strings")
    out = []
    for text in values:
        try:
            out.append(
                re.compile(("^" + text) if anchored and not text.startswith("^") else text, re.IGNORECASE)
            )
        except re.error as exc:
            raise CatalogError(f"{where}: bad {key} pattern {text!r}: {exc}") from exc
    return tuple(out)


def _parse_vendor(raw: dict[str, Any], where: str) -> Vendor:
    unknown = set(raw) - {"name", "enterprises", "patterns", "catalog_vendor"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: name is required")
    numbers = raw.get("enterprises", [])
    if not isinstance(numbers, list) or not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise CatalogError(f"{where}: enterprises must be a list of whole numbers")
    return Vendor(
        name, tuple(numbers), _patterns(raw, "patterns", where), bool(raw.get("catalog_vendor", False))
    )


def _parse_mdns(raw: dict[str, Any]) -> MdnsKeys:
    unknown = set(raw) - {"txt_model_keys", "txt_serial_keys", "txt_firmware_keys"}
    if unknown:
        raise CatalogError(f"mdns: unknown keys {sorted(unknown)}")
    keys = {}
    for key in ("txt_model_keys", "txt_serial_keys", "txt_firmware_keys"):
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise CatalogError(f"mdns: {key} must be a list of strings")
        keys[key] = tuple(v.lower() for v in values)
    return MdnsKeys(keys["txt_model_keys"], keys["txt_serial_keys"], keys["txt_firmware_keys"])


_SYSTEM_KEYS = frozenset(
    {"name", "description", "members", "primary", "ticket", "primary_rules", "ticket_rules"}
)
_MEMBER_KEYS = frozenset({"role", "products", "need", "max"})


def _rule_ids(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = raw.get(key)
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and _RULE_ID.match(v) for v in values)
    ):
        raise CatalogError(f'{where}: {key} must be a non-empty list of rule ids ("P1", "S-list")')
    return tuple(values)


def _parse_member(raw: Any, where: str) -> SystemRole:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a table {{ role = …, products = […] }}")
    unknown = set(raw) - _MEMBER_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    role = raw.get("role")
    if not isinstance(role, str) or not re.fullmatch(r"[a-z][a-z0-9-]*", role):
        raise CatalogError(f'{where}: role must be a lower-case word ("camera", "room-pc")')
    products = raw.get("products")
    if not isinstance(products, list) or not products or not all(isinstance(p, str) and p for p in products):
        raise CatalogError(f"{where}: products must be a non-empty list of product names")
    need = raw.get("need", "optional")
    if need not in SYSTEM_NEEDS:
        raise CatalogError(f"{where}: need {need!r} is not one of {list(SYSTEM_NEEDS)}")
    limit = raw.get("max")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise CatalogError(f"{where}: max must be a whole number ≥ 1 (leave it out for no limit)")
    return SystemRole(role, tuple(products), need, limit)


def _parse_system(raw: dict[str, Any], where: str) -> SystemSpec:
    unknown = set(raw) - _SYSTEM_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: name is required")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise CatalogError(f"{where}: description must be a string")
    members = raw.get("members")
    if not isinstance(members, list) or not members:
        raise CatalogError(f"{where}: members must be a non-empty list of roles")
    roles = tuple(_parse_member(m, f"{where}: members[{j}]") for j, m in enumerate(members))
    seen_roles: set[str] = set()
    seen_products: dict[str, str] = {}
    for r in roles:
        if r.role in seen_roles:
            raise CatalogError(f"{where}: role {r.role!r} is listed twice")
        seen_roles.add(r.role)
        for product in r.products:
            if product in seen_products:
                raise CatalogError(
                    f"{where}: product {product!r} is in roles {seen_products[product]!r} "
                    f"and {r.role!r}: a product fills one role of a system"
                )
            seen_products[product] = r.role
    if not any(r.required for r in roles):
        raise CatalogError(f'{where}: at least one role must have need = "required"')
    picked = {}
    for key in ("primary", "ticket"):
        role_name = raw.get(key)
        role = next((r for r in roles if r.role == role_name), None)
        if role is None:
            raise CatalogError(f"{where}: {key} must name one of the roles {sorted(seen_roles)}")
        if not role.required or role.max != 1:
            raise CatalogError(
                f'{where}: {key} role {role_name!r} must have need = "required" '
                "and max = 1 (one unit stands for the system)"
            )
        picked[key] = role.role
    return SystemSpec(
        name=name,
        roles=roles,
        primary=picked["primary"],
        ticket=picked["ticket"],
        primary_rules=_rule_ids(raw, "primary_rules", where),
        ticket_rules=_rule_ids(raw, "ticket_rules", where),
        description=description,
    )


_BOOL_KEYS = (
    "primary_unit",
    "key_device",
    "select_supported",
    "reseller_supported",
    "conference_system",
    "extension_eligible",
    "usb_release_is_firmware",
    "usb_serial_label_grade",
    "generic",
)
_BOOL_DEFAULTS = {"usb_release_is_firmware": True}
_PRODUCT_KEYS = frozenset(
    {
        "name",
        "family",
        "kind",
        "model_numbers",
        "collabos_models",
        "standard_warranty_years",
        "warranty_source",
        "usb",
        "usb_product_strings",
        "host_names",
        "lan_descriptions",
        "snmp_object_ids",
        "collectors",
        "usb_serial_note",
        *_BOOL_KEYS,
    }
)


def _parse_product(raw: dict[str, Any], where: str, default_years: int) -> Product:
    unknown = set(raw) - _PRODUCT_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: name is required")
    family = raw.get("family")
    if family not in FAMILIES:
        raise CatalogError(f"{where}: family {family!r} is not one of {sorted(FAMILIES)}")
    for key in _BOOL_KEYS:
        if not isinstance(raw.get(key, False), bool):
            raise CatalogError(f"{where}: {key} must be true or false")
    usb = []
    for j, u in enumerate(raw.get("usb", [])):
        role = u.get("role", "main")
        if role not in USB_ROLES:
            raise CatalogError(f"{where}: usb[{j}].role {role!r} is not one of {sorted(USB_ROLES)}")
        vid, pid = u.get("vid", LOGITECH_VID), u.get("pid")
        if not isinstance(pid, int) or not 0 <= pid <= 0xFFFF or not 0 <= vid <= 0xFFFF:
            raise CatalogError(f"{where}: usb[{j}] needs pid (and vid) between 0 and 0xFFFF")
        usb.append(
            UsbId(
                vid,
                pid,
                role,
                bool(u.get("sure", False)),
                tuple(u.get("shared_with", ())),
                bool(u.get("only_with_main", False)),
            )
        )
    oids = raw.get("snmp_object_ids", [])
    if not isinstance(oids, list) or not all(
        isinstance(o, str) and re.fullmatch(r"\.?\d+(\.\d+)+", o) for o in oids
    ):
        raise CatalogError(f"{where}: snmp_object_ids must be dotted numeric object ids")
    serial_note = raw.get("usb_serial_note")
    if serial_note is not None and (not isinstance(serial_note, str) or not serial_note.strip()):
        raise CatalogError(f"{where}: usb_serial_note must be a text")
    years = raw.get("standard_warranty_years", default_years)
    if not isinstance(years, int) or years < 0:
        raise CatalogError(f"{where}: standard_warranty_years must be a whole number ≥ 0")
    return Product(
        name=name,
        family=family,
        kind=raw.get("kind", family),
        model_numbers=tuple(raw.get("model_numbers", ())),
        collabos_models=tuple(raw.get("collabos_models", ())),
        standard_warranty_years=years,
        warranty_source=raw.get(
            "warranty_source", "default" if "standard_warranty_years" not in raw else "catalog"
        ),
        usb=tuple(usb),
        usb_product_strings=_patterns(raw, "usb_product_strings", where),
        host_names=_patterns(raw, "host_names", where, anchored=True),
        lan_descriptions=_patterns(raw, "lan_descriptions", where),
        snmp_object_ids=tuple(o.lstrip(".") for o in oids),
        collectors=_collectors(raw, where, has_usb=bool(usb or raw.get("usb_product_strings"))),
        usb_serial_note=serial_note,
        **{k: raw.get(k, _BOOL_DEFAULTS.get(k, False)) for k in _BOOL_KEYS},
    )


def _collectors(raw: dict[str, Any], where: str, *, has_usb: bool) -> tuple[str, ...]:
    """The product's ``collectors``, checked against the collector registry."""
    names = raw.get("collectors", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CatalogError(f'{where}: collectors must be a list of collector names (["sync-interface"])')
    if len(set(names)) != len(names):
        raise CatalogError(f"{where}: collectors lists a name twice")
    for name in names:
        entry = COLLECTORS.get(name)
        if entry is None:
            raise CatalogError(
                f"{where}: collectors names unknown collector {name!r} "
                f"(known product collectors: {', '.join(sorted(PRODUCT_COLLECTORS))})"
            )
        if entry.scope != "product":
            raise CatalogError(
                f"{where}: collectors names {name!r}, which reads every {entry.transport} endpoint "
                "already; list only product collectors"
            )
        if entry.transport == "usb" and not has_usb:
            raise CatalogError(f"{where}: collector {name!r} reads USB units, but the product has no usb ids")
    return tuple(names)


def load_catalog_file(path: str | Path) -> Catalog:
    with open(path, "rb") as fh:
        return parse_catalog(tomllib.load(fh))


@cache
def load_catalog() -> Catalog:
    """The catalog shipped inside the package (parsed once per process)."""
    with resources.files("agent").joinpath("data/catalog.toml").open("rb") as fh:
        return parse_catalog(tomllib.load(fh))
