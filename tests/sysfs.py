"""Build fake sysfs trees for the USB reader (``<root>/bus/usb/devices/<name>/<attr>``).

Real sysfs entries are symlinks into ``/sys/devices/...``; the reader must work with either,
so :func:`add_device` can make both shapes.
"""

from __future__ import annotations

from pathlib import Path

_DEFAULT_STRINGS = ("manufacturer", "product", "serial")


def device_descriptor(
    vid: int, pid: int, bcd: int = 0x0100, *, i_manufacturer: int = 1, i_product: int = 2, i_serial: int = 3
) -> bytes:
    """An 18-byte USB device descriptor (what sysfs' ``descriptors`` file starts with)."""
    return bytes(
        [
            18,
            1,
            0x00,
            0x02,
            0xEF,
            0x02,
            0x01,
            64,
            vid & 0xFF,
            vid >> 8,
            pid & 0xFF,
            pid >> 8,
            bcd & 0xFF,
            bcd >> 8,
            i_manufacturer,
            i_product,
            i_serial,
            1,
        ]
    )


def add_device(
    root: Path,
    name: str,
    vid: int,
    pid: int,
    *,
    bcd: int | None = 0x0100,
    serial: bytes | str | None = None,
    product: bytes | str | None = None,
    manufacturer: bytes | str | None = None,
    busnum: int | None = None,
    devnum: int | None = None,
    descriptors: bytes | None = None,
    symlink: bool = False,
    interfaces: int = 1,
    raw: dict[str, bytes] | None = None,
) -> Path:
    """Create one device entry; strings are written as given (bytes verbatim, str + newline)."""
    devices = root / "bus" / "usb" / "devices"
    devices.mkdir(parents=True, exist_ok=True)
    if symlink:
        target = root / "devices" / "pci0000:00" / "0000:00:14.0" / name
        target.mkdir(parents=True, exist_ok=True)
        (devices / name).symlink_to(target)
        path = target
    else:
        path = devices / name
        path.mkdir(parents=True, exist_ok=True)
    bus = busnum if busnum is not None else int(name.split("-")[0].removeprefix("usb") or 1)
    attrs: dict[str, bytes] = {
        "idVendor": f"{vid:04x}\n".encode(),
        "idProduct": f"{pid:04x}\n".encode(),
        "busnum": f"{bus}\n".encode(),
        "devnum": f"{devnum if devnum is not None else 2}\n".encode(),
    }
    if bcd is not None:
        attrs["bcdDevice"] = f"{bcd:04x}\n".encode()
    for key, value in (("serial", serial), ("product", product), ("manufacturer", manufacturer)):
        if value is not None:
            attrs[key] = value if isinstance(value, bytes) else (value + "\n").encode()
    if descriptors is not None:
        attrs["descriptors"] = descriptors
    attrs.update(raw or {})
    for key, value in attrs.items():
        (path / key).write_bytes(value)
    for i in range(interfaces):  # interface entries must be skipped by the reader
        iface = devices / f"{name}:1.{i}"
        iface.mkdir(exist_ok=True)
        (iface / "bInterfaceClass").write_text("ff\n")
    return path
