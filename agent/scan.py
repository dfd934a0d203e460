"""One pass of every enabled source: the pipeline behind ``roomsync scan``.

Every source runs concurrently inside :func:`execute`, which times it, records whether it
succeeded and turns any exception into a :class:`~agent.model.ScanError`, so one failing
source never stops the others (node_exporter's ``execute``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.catalog import Catalog
from agent.discovery import ScanContext, Source, SourceResult
from agent.inventory import devices_from_observations, units_from_readings
from agent.log import get_logger
from agent.model import Device, Room, ScanError
from agent.roommap import RoomMap

log = get_logger("agent.scan")


@dataclass(slots=True)
class SourceRun:
    name: str
    seconds: float
    success: bool
    result: SourceResult


@dataclass(slots=True)
class ScanReport:
    """One scan: its units (``devices``: what every channel said of one unit, merged), the
    readings they were merged from (one per channel: what the store records), and how each
    source did."""

    devices: list[Device] = field(default_factory=list)
    readings: list[Device] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    runs: list[SourceRun] = field(default_factory=list)
    #: By source, the targets it could not read (:attr:`SourceResult.unreached`).
    unreached: dict[str, list[str]] = field(default_factory=dict)


async def execute(source: Source, ctx: ScanContext, timeout: float | None = None) -> SourceRun:
    """Run one source with timing and failure isolation."""
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(source.run(ctx), timeout)
        success = result.complete
    except TimeoutError:
        result = SourceResult(errors=[ScanError(source.name, "*", f"timed out after {timeout:g} s")])
        success = False
    except Exception as exc:  # isolate: one source's bug must not end the scan
        log.exception("source.failed", source=source.name)
        result = SourceResult(errors=[ScanError(source.name, "*", f"{type(exc).__name__}: {exc}")])
        success = False
    seconds = time.perf_counter() - started
    log.info(
        "source.run.done",
        source=source.name,
        seconds=round(seconds, 4),
        success=success,
        observations=len(result.observations),
        errors=len(result.errors),
    )
    return SourceRun(source.name, seconds, success, result)


async def run_scan(
    sources: Sequence[Source], ctx: ScanContext, timeout: float | None = None, room_map: RoomMap | None = None
) -> ScanReport:
    runs = await asyncio.gather(*(execute(s, ctx, timeout) for s in sources))
    report = ScanReport(runs=list(runs))
    observations = []
    for run in runs:
        observations.extend(run.result.observations)
        report.errors.extend(run.result.errors)
        report.messages.extend(f"{run.name}: {m}" for m in run.result.messages)
        if run.result.unreached:
            report.unreached.setdefault(run.name, []).extend(run.result.unreached)
    report.readings = devices_from_observations(observations, ctx.room, ctx.catalog, room_map)
    report.devices = units_from_readings(report.readings, ctx.catalog)
    return report


def scan_once(
    sources: Sequence[Source],
    catalog: Catalog,
    now: datetime,
    room: Room | None = None,
    timeout: float | None = None,
    room_map: RoomMap | None = None,
) -> ScanReport:
    return asyncio.run(run_scan(sources, ScanContext(catalog, now, room), timeout, room_map))
