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
import os
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
    "collabos": "agent.discovery.collabos:CollabosSource",
}


@dataclass(frozen=True, slots=True)
class SourceDefaults:
    """What a source does where the configuration says nothing. The interval between the
    daemon's runs is the configuration's (``[sources.NAME] interval``, with its default)."""

    #: Runs under ``roomsync run`` when its ``enabled`` is unset (``None``).
    run: bool = False
    #: Runs under a one-shot ``roomsync scan`` when its ``enabled`` is unset (``None``).
    scan: bool = False
    #: The daemon gives up on one run after this share of the interval, but never sooner than
    #: ``min_timeout`` nor later than ``max_timeout`` seconds (docs/security.md).
    timeout_share: float = 0.9
    min_timeout: float = 30.0
    max_timeout: float = 600.0

    def timeout(self, interval: float) -> float:
        """Seconds one daemon run of the source may take."""
        return min(max(interval * self.timeout_share, self.min_timeout), self.max_timeout)


#: Each source's defaults, by name (a source not listed, such as ``replay``, gets
#: ``SourceDefaults()``). mDNS browsing is passive and cheap, so the daemon runs it unless the
#: configuration turns it off; a one-shot scan browses only with ``--mdns``.
SOURCE_DEFAULTS: dict[str, SourceDefaults] = {
    "usb": SourceDefaults(),
    "mdns": SourceDefaults(run=True),
    "snmp": SourceDefaults(),
    "ssh": SourceDefaults(),
    "collabos": SourceDefaults(),
}


def source_defaults(name: str) -> SourceDefaults:
    """The defaults of source ``name``."""
    return SOURCE_DEFAULTS.get(name) or SourceDefaults()


def runs(name: str, enabled: bool | None, *, daemon: bool) -> bool:
    """Whether source ``name`` runs, its configuration saying ``enabled`` (``None``: unset),
    under ``roomsync run`` (``daemon``) or a one-shot ``roomsync scan``."""
    if enabled is not None:
        return enabled
    defaults = source_defaults(name)
    return defaults.run if daemon else defaults.scan


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
    #: Targets the source could not read this run (a device that refused it or did not
    #: answer): what it saw at or through them before is not taken to be missing.
    unreached: list[str] = field(default_factory=list)


class Source(Protocol):
    name: str

    async def run(self, ctx: ScanContext) -> SourceResult: ...


def make_source(name: str, settings: Any, state_dir: str | os.PathLike[str] | None) -> Any:
    """Source ``name`` built from its settings. A source that keeps state in the store (the
    CollabOS certificate pins) has a ``bind_state(state_dir)`` method and is given it here."""
    source = source_class(name).from_config(settings)
    bind = getattr(source, "bind_state", None)
    if bind is not None and state_dir is not None:
        bind(state_dir)
    return source


def source_class(name: str) -> Any:
    """The class registered for ``name`` (``KeyError`` for an unknown source)."""
    module, _, attr = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
