"""The collector registry: every way the agent reads a device, by name, in one place.

Like :data:`agent.discovery.SOURCES` (and node_exporter's ``registerCollector``), each entry
maps a name to ``module:Class`` and is imported only when a unit needs it, so a host with no
CollabOS bar never loads the Sync interface's code (or protobuf).

Two scopes:

* ``endpoint`` collectors identify whatever their source finds (every USB unit gets
  ``usb-descriptor``; every SNMP responder ``snmp-entity``…);
* ``product`` collectors read more from units of the catalog products that name them
  (``collectors = ["sync-interface"]`` in ``agent/data/catalog.toml``). The catalog is checked
  against this table when it loads: an unknown name, or an ``endpoint`` collector, is a
  catalog error naming the product.

This module is a leaf: the catalog imports it, so it imports nothing of the project but
:mod:`agent.readonly`. ``docs/adding-a-device.md`` says how to add an entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

#: Which source's endpoints a collector reads.
Transport = Literal["usb", "snmp", "mdns", "ssh", "https"]
Scope = Literal["endpoint", "product"]


class CollectorRegistryError(Exception):
    """A registered collector is unusable (a packaging bug, not an operator error)."""


@dataclass(frozen=True, slots=True)
class CollectorEntry:
    name: str
    #: ``module:Class``, imported on first use.
    target: str
    transport: Transport
    scope: Scope


def _table(*entries: CollectorEntry) -> dict[str, CollectorEntry]:
    table: dict[str, CollectorEntry] = {}
    for entry in entries:
        if entry.name in table:
            raise CollectorRegistryError(f"collector {entry.name!r} is registered twice")
        table[entry.name] = entry
    return table


#: Every collector the agent has. A new way of reading is one module and one line here.
COLLECTORS: dict[str, CollectorEntry] = _table(
    CollectorEntry(
        "usb-descriptor", "agent.collectors.usb_descriptor:UsbDescriptorCollector", "usb", "endpoint"
    ),
    CollectorEntry(
        "sync-interface", "agent.collectors.sync.usb_unit:SyncInterfaceCollector", "usb", "product"
    ),
    CollectorEntry("snmp-entity", "agent.collectors.snmp.entity:SnmpEntityCollector", "snmp", "endpoint"),
    CollectorEntry("mdns-txt", "agent.collectors.mdns_service:MdnsTxtCollector", "mdns", "endpoint"),
    CollectorEntry("ssh-dmi", "agent.collectors.ssh_host:RoomPcCollector", "ssh", "endpoint"),
    CollectorEntry("collabos-api", "agent.collectors.collabos_api:CollabosApiCollector", "https", "endpoint"),
    CollectorEntry("uvc-xu", "agent.collectors.usbfw.collectors:UvcXuCollector", "usb", "product"),
    CollectorEntry("hid-feature", "agent.collectors.usbfw.collectors:HidFeatureCollector", "usb", "product"),
    CollectorEntry("usb-bulk", "agent.collectors.usbfw.collectors:UsbBulkCollector", "usb", "product"),
)

#: Names the catalog may give a product (``collectors = [...]``).
PRODUCT_COLLECTORS = frozenset(n for n, e in COLLECTORS.items() if e.scope == "product")

#: Checked classes, by entry (a test may register an entry of its own).
_loaded: dict[CollectorEntry, Any] = {}


def check_collector(name: str, cls: Any) -> None:
    """Refuse a collector class that does not say what it sends a device, or that sends
    something without a gate (``agent.readonly``: the agent is read-only toward devices)."""
    declared = getattr(cls, "name", None)
    if declared != name:
        raise CollectorRegistryError(f"collector {name!r}: its class names itself {declared!r}")
    if not hasattr(cls, "writes") or not hasattr(cls, "gate"):
        raise CollectorRegistryError(
            f"collector {name!r} must declare `writes` (what it sends a device, or None) and `gate`"
        )
    if cls.writes is not None and not callable(cls.gate):
        raise CollectorRegistryError(
            f"collector {name!r} sends devices {cls.writes}, but declares no read-only gate: "
            "every request must pass a gate that accepts only the documented reads"
        )
    if cls.writes is None and cls.gate is not None:
        raise CollectorRegistryError(
            f"collector {name!r} has a gate but says it sends nothing (writes = None)"
        )


def collector_class(name: str, registry: dict[str, CollectorEntry] | None = None) -> Any:
    """The checked class registered as ``name`` (``KeyError`` for an unknown name)."""
    entry = (COLLECTORS if registry is None else registry)[name]
    cls = _loaded.get(entry)
    if cls is None:
        module, _, attr = entry.target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        check_collector(name, cls)
        _loaded[entry] = cls
    return cls
