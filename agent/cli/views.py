"""The tables ``roomsync scan``, ``inventory`` and ``events`` print."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from agent.cli.common import table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.events import ChangeEvent
    from agent.inventory import RoomsReport
    from agent.model import Device
    from agent.scan import ScanReport


def event_change(event: ChangeEvent) -> str:
    """What changed, in a few words: ``room a → b``, ``firmware 1.9 → 1.10``…"""
    before, after = event.before or {}, event.after or {}
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if str(event.type) in ("device.added", "device.removed") or not keys:
        return ""
    return "; ".join(
        f"{k} {before.get(k) if before.get(k) is not None else '-'} → "
        f"{after.get(k) if after.get(k) is not None else '-'}"
        for k in keys[:3]
    )


def print_events(events: Sequence[ChangeEvent]) -> None:
    print(
        table(
            ["AT", "EVENT", "PRODUCT", "SERIAL", "ROOM", "CHANGE"],
            [
                [
                    e.at.isoformat(timespec="seconds"),
                    str(e.type),
                    e.product or "-",
                    e.serial or "-",
                    e.room or "-",
                    event_change(e),
                ]
                for e in events
            ],
        )
    )


def print_room_lines(summary: RoomsReport) -> None:
    """One line per room that holds something: its primary unit and the serial to quote."""
    lines = []
    for r in summary.rooms:
        if not r.devices:
            continue
        line = (
            f"room {r.room_id}: primary unit {r.primary_product or '-'} {r.primary_unit or '-'}, "
            f"ticket serial {r.ticket_serial or '-'}"
        )
        if r.flags:
            line += f" [{', '.join(r.flags)}]"
        lines.append(line)
    if lines:
        print()
        print("\n".join(lines))


def is_hidden_other(device: Device) -> bool:
    """An unknown LAN responder: listed in JSON always, in the table with --all."""
    return bool(device.category == "other" and str(device.transport) != "usb")


def product_label(device: Device) -> str:
    if device.category != "other" or str(device.transport) == "usb":
        return str(device.product)
    description = str(device.attributes.get("description") or "")
    if len(description) > 40:
        description = description[:39] + "…"
    label = f"other: {device.vendor or 'unknown vendor'}"
    return f"{label} ({description})" if description else label


_SCAN_HEADERS = ["PRODUCT", "MODEL", "SERIAL", "FIRMWARE", "TRANSPORT", "ADDRESS", "USB ID", "ROOM", "HEALTH"]


def _transports(device: Device) -> str:
    """Every transport a unit was seen over, most trusted first (``usb+mdns``)."""
    return "+".join(dict.fromkeys(str(s.transport) for s in device.seen_by)) or str(device.transport)


def print_scan_table(report: ScanReport, *, show_other: bool = False) -> None:
    for message in report.messages:
        print(message)
    devices = [d for d in report.devices if show_other or not is_hidden_other(d)]
    hidden = len(report.devices) - len(devices)
    if devices:
        rows: list[list[str]] = []
        weak_serial = False

        def add_row(d: Device, depth: int) -> None:
            nonlocal weak_serial
            serial = d.serial or "-"
            if d.serial and not d.serial_label_grade:
                serial += "*"
                weak_serial = True
            usb_id = f"{d.vendor_id:04x}:{d.product_id:04x}" if d.vendor_id is not None else "-"
            rows.append(
                [
                    "  " * depth + ("└ " if depth else "") + product_label(d),
                    d.model or "-",
                    serial,
                    d.firmware or "-",
                    _transports(d) if not depth else "",
                    d.address if not depth else "",
                    usb_id if not depth else "",
                    (d.room or "-") if not depth else "",
                    str(d.health),
                ]
            )
            for child in d.children:  # a bar's Sight, mic pods, remote
                add_row(child, depth + 1)

        for d in devices:
            add_row(d, 0)
        print(table(_SCAN_HEADERS, rows))
        if weak_serial:
            print("* serial is not label-grade (e.g. the USB chip's serial): check the label")
        for d in devices:
            for unit in (d, *d.children):
                for issue in unit.health_issues:
                    if str(issue.severity) != "info":
                        print(f"{unit.product} at {d.address}: {issue.message}")
    elif not report.errors and not hidden:
        print("no devices found")
    if hidden:
        print(
            f"{hidden} other responder{'s' if hidden != 1 else ''} the catalog does not know "
            "(not Logitech room hardware): --all lists them"
        )
    for err in report.errors:
        print(f"error: {err.source}: {err.target}: {err.message}", file=sys.stderr)
