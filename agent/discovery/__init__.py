"""Sources: where the agent looks for devices. One module per source, registered here.

A source is a small class with a ``name`` and one coroutine, ``run(ctx)``, that finds its
endpoints, has the collectors turn them into observations and returns a
:class:`SourceResult`. The scan pipeline (:mod:`agent.scan`) times every run and isolates its
failures, so one broken source never takes the others down (node_exporter's pattern).

The registry maps a source name to ``module:Class`` and is imported lazily, so that
``roomsync --help`` does not pay for libraries a command does not use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.model import Observation, Room, ScanError

if TYPE_CHECKING:
    from agent.catalog import Catalog

#: Every source the agent has, by name. Adding a source is one module and one line here.
SOURCES: dict[str, str] = {
    "usb": "agent.discovery.usb:UsbSource",
    "mdns": "agent.discovery.mdns:MdnsSource",
    "snmp": "agent.discovery.snmp:SnmpSource",
    "ssh": "agent.discovery.ssh:SshSource",
}


@dataclass(slots=True)
class ScanContext:
    """What a source run may use. Time is passed in, never read inside (design.md)."""

    catalog: Catalog
    now: datetime
    room: Room | None = None


@dataclass(slots=True)
class SourceResult:
    observations: list[Observation] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    #: Plain facts for the operator ("no USB bus is visible").
    messages: list[str] = field(default_factory=list)
    #: False when the source could not look at all (its sysfs tree is gone…): the run does
    #: not count, so nothing it found before is taken to be missing.
    complete: bool = True


class Source(Protocol):
    name: str

    async def run(self, ctx: ScanContext) -> SourceResult: ...


def source_class(name: str) -> Any:
    """The class registered for ``name`` (``KeyError`` for an unknown source)."""
    module, _, attr = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
