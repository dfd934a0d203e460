"""Identity from standard USB descriptors: ids, product strings, iSerialNumber, bcdDevice.

Works for every USB device without claiming any interface. How much the result is worth
depends on the product (catalog data): a Rally Bar's iSerialNumber is its label serial,
an old webcam's is the USB chip's and not label-grade (protocols.md). bcdDevice is the USB
device release; for CollabOS bars it is not the firmware version, so it is kept as an
attribute (``usb_release``) and not shown as firmware.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from agent.catalog import LOGITECH_VID, UNKNOWN_DEVICE, UNKNOWN_LOGITECH, Catalog
from agent.model import Observation, SerialSource, Severity, Transport
from agent.readonly import Gate
from agent.sanitize import trustworthy
from agent.usbtree import UsbRecord, UsbUnit, check_control_request

NAME = "usb-descriptor"

_PROBLEM_TEXT = {
    "not-utf8": "is not valid text in its encoding (undecodable bytes replaced)",
    "nul-padded": "had NUL padding inside it (cut at the first NUL)",
    "control-chars": "held control characters (removed)",
    "too-long": "was absurdly long (cut)",
    "empty": "is empty",
    "placeholder": "is a placeholder, not a real serial",
}


def observe_unit(
    unit: UsbUnit, catalog: Catalog, now: datetime, *, source: str = "usb", address_prefix: str = ""
) -> Observation:
    """One observation for one physical USB unit."""
    main = unit.main
    product = unit.product
    obs = Observation(
        source=source,
        transport=Transport.USB,
        address=f"{address_prefix}{main.name}",
        observed_at=now,
        vendor_id=main.vendor_id,
        product_id=main.product_id,
    )
    if product is not None:
        obs.product = product.name
        obs.model = product.model
        obs.vendor = "Logitech"
    elif main.vendor_id == LOGITECH_VID:
        obs.product = UNKNOWN_LOGITECH
        obs.vendor = "Logitech"
        obs.note(
            "unknown-product",
            f"USB id {main.vendor_id:04x}:{main.product_id:04x} is not in the catalog",
            Severity.INFO,
        )
    else:
        obs.product = main.product or UNKNOWN_DEVICE
        obs.vendor = main.manufacturer
    for issue in unit.notes:
        obs.health.append(issue)

    # Serial: the main function's, else the first further function that has one.
    serial_record = main if main.serial else next((r for r in unit.records if r.serial), None)
    for record in unit.records:
        _report_string_problems(obs, record)
        for issue in record.issues:
            if issue not in obs.health:
                obs.health.append(issue)
    if serial_record is not None:
        obs.serial = serial_record.serial
        obs.serial_source = SerialSource.USB_DESCRIPTOR
        trusted = trustworthy(serial_record.string_problems.get("serial", ()))
        obs.serial_label_grade = bool(product and product.usb_serial_label_grade and trusted)
        if serial_record is not main:
            obs.attributes["serial_from"] = serial_record.name
    elif product is not None and product.key_device:
        obs.note("serial-missing", "no serial number could be read over USB", Severity.WARNING)
    if obs.serial and not obs.serial_label_grade and product is not None and product.usb_serial_note:
        obs.note("serial-not-label-grade", product.usb_serial_note, Severity.INFO)

    if main.release is not None:
        obs.attributes["usb_release"] = main.release
        if product is None or product.usb_release_is_firmware:
            obs.firmware = main.release
            obs.firmware_source = "usb-bcdDevice"
    for key in ("manufacturer", "product"):
        value = getattr(main, key)
        if value is not None:
            obs.attributes[f"usb_{key}"] = value
    if main.busnum is not None:
        obs.attributes["busnum"] = main.busnum
    if main.devnum is not None:
        obs.attributes["devnum"] = main.devnum
    libusb = sorted({k for r in unit.records for k, v in r.string_sources.items() if v == "libusb"})
    if libusb:
        obs.attributes["strings_from_libusb"] = libusb
    if unit.functions:
        obs.attributes["functions"] = [
            {
                "address": f"{address_prefix}{r.name}",
                "role": m.role,
                "vendor_id": f"{r.vendor_id:04x}",
                "product_id": f"{r.product_id:04x}",
            }
            for r, m in unit.functions
        ]
    if unit.match is not None and not unit.match.usb_id.sure:
        obs.attributes["identification"] = "unconfirmed USB id (protocols.md: U)"
    return obs


class UsbDescriptorCollector:
    """Every USB unit: identity from its descriptors (sysfs, and libusb for strings sysfs
    lacks). The only request it may send is GET_DESCRIPTOR of a string
    (:func:`agent.usbtree.check_control_request`, used by :func:`agent.usbtree.enrich_with_libusb`)."""

    name: ClassVar[str] = NAME
    writes: ClassVar[str | None] = "GET_DESCRIPTOR (string) control requests, for strings sysfs lacks"
    gate: ClassVar[Gate | None] = staticmethod(check_control_request)

    @staticmethod
    def collect(
        unit: UsbUnit, catalog: Catalog, now: datetime, *, source: str = "usb", address_prefix: str = ""
    ) -> Observation:
        return observe_unit(unit, catalog, now, source=source, address_prefix=address_prefix)


def _report_string_problems(obs: Observation, record: UsbRecord) -> None:
    for name, problems in record.string_problems.items():
        for problem in problems:
            text = _PROBLEM_TEXT.get(problem, problem)
            severity = Severity.WARNING if name == "serial" else Severity.INFO
            obs.note(f"usb-string-{problem}", f"{record.name}: USB {name} string {text}", severity)
