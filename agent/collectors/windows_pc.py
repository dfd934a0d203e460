"""Windows room PCs over OpenSSH: one fixed PowerShell command and the parser of its JSON.

The command is a constant (:data:`WINDOWS_COMMAND`): nothing from the configuration or from a
device is ever put into it. It runs ``powershell.exe -EncodedCommand`` (the script as
base64 UTF-16LE, so that neither ``cmd.exe`` — OpenSSH's default shell on Windows — nor
PowerShell re-parses any of it) and prints one JSON object built from documented CIM classes:

* ``Win32_BIOS``: ``SerialNumber`` (the SMBIOS system serial), ``SMBIOSBIOSVersion``,
  ``Manufacturer``;
* ``Win32_ComputerSystem``: ``Name``, ``Manufacturer``, ``Model``;
* ``Win32_OperatingSystem``: ``Caption``, ``Version``, ``LastBootUpTime`` (sent as ISO 8601
  UTC text, with the uptime in seconds computed on the PC);
* ``Win32_BaseBoard``: ``SerialNumber``, ``Manufacturer``, ``Product`` (the serial fallback,
  protocols.md);
* ``Win32_PnPEntity`` whose ``DeviceID`` starts ``USB\\VID_046D``: ``DeviceID``, ``Name``,
  ``Status``, ``PNPClass``, ``ConfigManagerErrorCode``.

A USB device instance ID is ``USB\\VID_046D&PID_089B\\<instance>``; Windows uses the device's
USB serial number as ``<instance>`` when it has a usable one, and a generated id containing
``&`` otherwise. Interface entries (``&MI_nn``) are parts of a device listed already.

This parser is tested only against example outputs composed from Microsoft's documentation of
these classes (``tests/data/windows``), not against output captured from a real PC.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from agent.collectors.room_pc import PcFacts
from agent.model import HealthIssue, Severity
from agent.sanitize import clean_text
from agent.usbtree import UsbRecord

WINDOWS_INVENTORY_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
$bios = Get-CimInstance -ClassName Win32_BIOS | Select-Object -First 1
$system = Get-CimInstance -ClassName Win32_ComputerSystem | Select-Object -First 1
$os = Get-CimInstance -ClassName Win32_OperatingSystem | Select-Object -First 1
$board = Get-CimInstance -ClassName Win32_BaseBoard | Select-Object -First 1
$usb = @(Get-CimInstance -ClassName Win32_PnPEntity |
    Where-Object { $_.DeviceID -like 'USB\VID_046D*' } |
    ForEach-Object { [ordered]@{ DeviceID = $_.DeviceID; Name = $_.Name; Status = $_.Status;
        PNPClass = $_.PNPClass; ConfigManagerErrorCode = $_.ConfigManagerErrorCode } })
$boot = $os.LastBootUpTime
[ordered]@{
    roomsync_inventory = 1
    bios = [ordered]@{ SerialNumber = $bios.SerialNumber; SMBIOSBIOSVersion = $bios.SMBIOSBIOSVersion;
        Manufacturer = $bios.Manufacturer }
    computer_system = [ordered]@{ Name = $system.Name; Manufacturer = $system.Manufacturer;
        Model = $system.Model }
    operating_system = [ordered]@{ Caption = $os.Caption; Version = $os.Version;
        LastBootUpTime = $boot.ToUniversalTime().ToString('o');
        UptimeSeconds = [long]((Get-Date) - $boot).TotalSeconds }
    baseboard = [ordered]@{ SerialNumber = $board.SerialNumber; Manufacturer = $board.Manufacturer;
        Product = $board.Product }
    usb = $usb
} | ConvertTo-Json -Depth 4 -Compress
""".strip()

#: The one command run on a Windows PC (a constant: see the module docstring).
WINDOWS_COMMAND = "powershell.exe -NoLogo -NoProfile -NonInteractive -EncodedCommand " + base64.b64encode(
    WINDOWS_INVENTORY_SCRIPT.encode("utf-16-le")
).decode("ascii")
#: The inventory of a PC is a few KiB; more than this is not the script's output.
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_USB_DEVICES = 512
SCHEMA_KEY = "roomsync_inventory"
SERIAL_NAMES = ("Win32_BIOS.SerialNumber", "Win32_BaseBoard.SerialNumber")
_DEVICE_ID = re.compile(
    r"^USB\\VID_(?P<vid>[0-9A-F]{4})&PID_(?P<pid>[0-9A-F]{4})(?P<rest>&[^\\]*)?\\(?P<instance>[^\\]+)$",
    re.IGNORECASE,
)


class WindowsOutputError(ValueError):
    """The command's output is not the inventory JSON (one line, for the host's error)."""


def parse_windows_inventory(raw: bytes) -> PcFacts:
    """The facts in the inventory command's output. Raises :class:`WindowsOutputError`."""
    data = _decode(raw)
    bios, system = _section(data, "bios"), _section(data, "computer_system")
    os_info, board = _section(data, "operating_system"), _section(data, "baseboard")
    facts = PcFacts("windows", serial_names=SERIAL_NAMES)
    facts.system_serial = _raw_text(bios, "SerialNumber")
    facts.board_serial = _raw_text(board, "SerialNumber")
    facts.bios_version = _text(bios, "SMBIOSBIOSVersion")
    facts.hostname = _text(system, "Name")
    facts.vendor = _text(system, "Manufacturer")
    facts.model = _text(system, "Model")
    facts.os_name = " ".join(v for v in (_text(os_info, "Caption"), _text(os_info, "Version")) if v) or None
    uptime = os_info.get("UptimeSeconds")
    if isinstance(uptime, int) and not isinstance(uptime, bool) and uptime >= 0:
        facts.uptime_s = uptime
    extra = {
        "bios_vendor": _text(bios, "Manufacturer"),
        "board_vendor": _text(board, "Manufacturer"),
        "board_name": _text(board, "Product"),
        "last_boot": _text(os_info, "LastBootUpTime"),
    }
    facts.attributes.update({k: v for k, v in extra.items() if v is not None})
    facts.usb_location_key = "pnp_device_id"
    _read_usb(data.get("usb"), facts)
    return facts


def _decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_OUTPUT_BYTES:
        raise WindowsOutputError(f"the inventory output is larger than {MAX_OUTPUT_BYTES} bytes")
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if not text:
        raise WindowsOutputError("the inventory command printed nothing")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WindowsOutputError(
            f"the inventory output is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):  # a number of thousands of digits, deep nesting
        raise WindowsOutputError(
            "the inventory output is not JSON the inventory command writes (a huge number or deep nesting)"
        ) from None
    if not isinstance(data, dict) or data.get(SCHEMA_KEY) != 1:
        raise WindowsOutputError(f'the output is not the roomsync inventory (no "{SCHEMA_KEY}": 1)')
    return data


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WindowsOutputError(f'"{key}" in the inventory output is not an object')
    return value


def _raw_text(section: dict[str, Any], key: str) -> str | None:
    value = section.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _text(section: dict[str, Any], key: str) -> str | None:
    return clean_text(_raw_text(section, key)).value


def _read_usb(value: Any, facts: PcFacts) -> None:
    # ConvertTo-Json may write a list of one as the object itself, and none as null.
    entries = [] if value is None else value if isinstance(value, list) else [value]
    if len(entries) > MAX_USB_DEVICES:
        facts.usb_errors.append(
            ("usb", f"{len(entries)} devices; only the first {MAX_USB_DEVICES} were read")
        )
        entries = entries[:MAX_USB_DEVICES]
    for entry in entries:
        record = _pnp_record(entry, facts)
        if record is not None:
            facts.usb_records.append(record)
    facts.usb_records.sort(key=lambda r: r.name)
    if not facts.usb_records and not facts.usb_errors:
        facts.usb_message = "no Logitech USB devices found"


def _pnp_record(entry: Any, facts: PcFacts) -> UsbRecord | None:
    """One USB device of the PnP list; ``None`` for interfaces and unusable entries."""
    if not isinstance(entry, dict):
        facts.usb_errors.append(("usb", "an entry of the USB device list is not an object"))
        return None
    device_id = clean_text(_raw_text(entry, "DeviceID"), max_len=200)
    m = _DEVICE_ID.match(device_id.value or "")
    if not m or not device_id.trustworthy:
        facts.usb_errors.append((device_id.value or "?", "not a USB\\VID_xxxx&PID_xxxx\\instance device id"))
        return None
    if "MI_" in (m.group("rest") or "").upper():
        return None  # an interface of a composite device listed on its own
    name = device_id.value or ""
    record = UsbRecord(
        name=name, path=Path(name), vendor_id=int(m.group("vid"), 16), product_id=int(m.group("pid"), 16)
    )
    instance = m.group("instance")
    if "&" not in instance:
        record.set_string("serial", instance, "pnp-instance-id")
    attributes: dict[str, Any] = {"serial_read_from": "pnp-instance-id"} if record.serial else {}
    for key, attr in (("Name", "pnp_name"), ("PNPClass", "pnp_class"), ("Status", "pnp_status")):
        text = _text(entry, key)
        if text is not None:
            attributes[attr] = text
    _note_status(record, attributes.get("pnp_status"), entry.get("ConfigManagerErrorCode"))
    facts.usb_attributes[name] = attributes
    return record


def _note_status(record: UsbRecord, status: str | None, error_code: Any) -> None:
    problem = status is not None and status.upper() != "OK"
    has_code = isinstance(error_code, int) and not isinstance(error_code, bool) and error_code != 0
    if problem or has_code:
        detail = f" (device manager error code {error_code})" if has_code else ""
        record.issues.append(
            HealthIssue(
                "pnp-status",
                f"Windows reports the device's status as {status or 'unknown'!r}{detail}",
                Severity.WARNING,
            )
        )


def summarize_stderr(raw: bytes) -> str:
    """One line from what a failed command wrote to standard error. PowerShell writes its
    errors as CLIXML (``#< CLIXML`` then ``<S S="Error">…</S>`` elements) when its output is
    not a console; the text of those elements is what an operator wants to see."""
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith("#< CLIXML"):
        parts = re.findall(r'<S S="Error">(.*?)</S>', text, re.DOTALL)
        text = html.unescape(" ".join(parts)).replace("_x000D_", " ").replace("_x000A_", " ")
    line = next((line for line in text.splitlines() if line.strip()), "")
    return clean_text(line, max_len=200).value or "nothing on standard error"
