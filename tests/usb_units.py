"""USB Rally Bars in a store, for the tests and benchmarks of the outbox and its outputs:
``unit(i, at)`` is bar ``i`` (serial ``S0000i``, label-grade) as a USB scan at ``at`` reads it,
``scan(store, units, at)`` stores one USB scan of them. Importable without pytest (the
benchmarks use it)."""

from __future__ import annotations

from datetime import datetime

from agent.model import Device, Transport
from agent.store import Retention, Store


def unit(i: int, at: datetime, *, firmware: str = "1.0", room: str | None = "oslo-4-12") -> Device:
    return Device(
        product="Rally Bar",
        transport=Transport.USB,
        address=f"1-{i}",
        first_seen=at,
        last_seen=at,
        room=room,
        serial=f"S{i:05d}",
        serial_label_grade=True,
        firmware=firmware,
        sources=["usb"],
        category="collabos-bar",
    )


def scan(store: Store, devices: list[Device], at: datetime, retention: Retention | None = None) -> int:
    """Store one USB scan; returns how many change events it produced."""
    return len(store.record_scan(devices, [], at, sources_run={"usb"}, retention=retention).events)
