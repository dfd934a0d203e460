"""Product identification. The table itself is data: ``agent/data/catalog.toml``.

Lookups a collector needs:

* :meth:`Catalog.match_usb` — a USB vendor/product id to the product(s) and the role that
  id plays in the unit (``main``, or a further function such as an internal hub);
* :meth:`Catalog.match_usb_product_string` — products with no known USB id, by the
  descriptor's product string;
* :meth:`Catalog.by_collabos_model` / :meth:`Catalog.by_model_number` — model codes.

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

LOGITECH_VID = 0x046D
UNKNOWN_LOGITECH = "Unknown Logitech device"
UNKNOWN_DEVICE = "Unknown device"

FAMILIES = frozenset({
    "collabos-bar", "collabos-peripheral", "rally-system", "controller", "camera", "webcam",
    "speakerphone", "whiteboard-camera", "system", "peripheral", "room-pc",
})
USB_ROLES = frozenset({"main", "hub", "hid", "audio", "video", "function"})


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
    extension_eligible: bool = False
    standard_warranty_years: int = 2
    warranty_source: str = "default"
    sync_interface: bool = False
    usb_serial_label_grade: bool = False
    usb: tuple[UsbId, ...] = ()
    usb_product_strings: tuple[re.Pattern[str], ...] = field(default=(), compare=False)

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


class Catalog:
    """The loaded product catalog. Use :func:`load_catalog` to get the shipped one."""

    def __init__(self, products: list[Product], default_warranty_years: int) -> None:
        self.products: dict[str, Product] = {}
        self.default_warranty_years = default_warranty_years
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


def _norm_model(number: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", number.upper())


def parse_catalog(data: dict[str, Any]) -> Catalog:
    """Build a :class:`Catalog` from the decoded TOML, checking every entry."""
    default_years = data.get("default_standard_warranty_years", 2)
    if not isinstance(default_years, int) or default_years < 0:
        raise CatalogError("default_standard_warranty_years must be a whole number ≥ 0")
    products = []
    for i, raw in enumerate(data.get("product", [])):
        where = f"product[{i}] ({raw.get('name', '?')})"
        products.append(_parse_product(raw, where, default_years))
    return Catalog(products, default_years)


_BOOL_KEYS = ("primary_unit", "key_device", "select_supported", "reseller_supported",
              "extension_eligible", "sync_interface", "usb_serial_label_grade")
_PRODUCT_KEYS = frozenset({
    "name", "family", "kind", "model_numbers", "collabos_models", "standard_warranty_years",
    "warranty_source", "usb", "usb_product_strings", *_BOOL_KEYS,
})


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
        usb.append(UsbId(vid, pid, role, bool(u.get("sure", False)),
                         tuple(u.get("shared_with", ())), bool(u.get("only_with_main", False))))
    patterns = []
    for text in raw.get("usb_product_strings", []):
        try:
            patterns.append(re.compile(text, re.IGNORECASE))
        except re.error as exc:
            raise CatalogError(f"{where}: bad usb_product_strings pattern {text!r}: {exc}") from exc
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
        warranty_source=raw.get("warranty_source",
                                "default" if "standard_warranty_years" not in raw else "catalog"),
        usb=tuple(usb),
        usb_product_strings=tuple(patterns),
        **{k: raw.get(k, False) for k in _BOOL_KEYS},
    )


def load_catalog_file(path: str | Path) -> Catalog:
    with open(path, "rb") as fh:
        return parse_catalog(tomllib.load(fh))


@cache
def load_catalog() -> Catalog:
    """The catalog shipped inside the package (parsed once per process)."""
    with resources.files("agent").joinpath("data/catalog.toml").open("rb") as fh:
        return parse_catalog(tomllib.load(fh))
