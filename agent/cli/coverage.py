"""``roomsync coverage``: the warranty, SELECT and reseller coverage of every unit."""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, TypeAlias

from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parents,
    UsageError,
    json_item,
    load,
    parse_day,
    print_json,
    print_json_texts,
    print_table,
)
from agent.cli.context import rooms_report, stored_inventory, stored_runs, stored_with_removed

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import date

    from agent.config import AgentConfig
    from agent.coverage import CoverageUnit, Verdict
    from agent.entitlements import Entitlements
    from agent.inventory import RoomsReport
    from agent.model import Device
    from agent.support import Support
    from agent.uploader.snapshot import CoverageList, SnapshotContext

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    coverage = sub.add_parser(
        "coverage",
        parents=[parents.common, parents.state, parents.rooms],
        help="warranty, extended warranty, SELECT and reseller coverage of every unit",
        description="Evaluate the coverage of every serial in the entitlements file and every "
        "unit in the agent's state (what the scans stored), with the rule ids of "
        "domain.md behind each verdict. Most urgent first.",
    )
    _entitlement_flags(coverage)
    coverage.add_argument(
        "--summary",
        action="store_true",
        help="site summary: rooms, units, counts per status, SELECT spares and "
        "service manager (S10, S11), enterprise tier (S3)",
    )
    coverage.add_argument("--json", action="store_true", help="print JSON")
    coverage.set_defaults(func=cmd_coverage)

    support = sub.add_parser(
        "support",
        parents=[parents.common, parents.state, parents.rooms],
        help="when a unit fails: whom to call, which serial to quote, what the contract promises",
        description="For the unit with SERIAL (as the scans stored it): the route (reseller, "
        "logitech-select, logitech-jumpstart, logitech-support, distributor-rma), the serial the "
        "ticket quotes, the desk, the priority and times the contract promises, the steps, with "
        "the room, the system and the coverage behind them and the rule ids of domain.md.",
    )
    support.add_argument("serial", metavar="SERIAL", help="the unit's serial (case and spaces do not matter)")
    _entitlement_flags(support, required=False)
    support.add_argument("--json", action="store_true", help="print JSON")
    support.set_defaults(func=cmd_support)


def _entitlement_flags(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--entitlements, --today, --expiring-days."""
    parser.add_argument(
        "--entitlements",
        metavar="FILE",
        help="purchase and contract records (CSV; config/entitlements.example.csv; "
        "default: [coverage] entitlements)" + ("" if required else "; without one, coverage is unknown"),
    )
    parser.add_argument(
        "--today",
        metavar="YYYY-MM-DD",
        help="evaluate as of this day (default: today in UTC, as the daemon's API)",
    )
    parser.add_argument(
        "--expiring-days",
        type=int,
        metavar="N",
        help="'expiring_soon' when coverage ends within N days (default: [coverage] expiring_days, 90)",
    )


def _entitlements(
    args: argparse.Namespace, cfg: AgentConfig, *, required: bool = True
) -> Entitlements | None:
    """The records --entitlements or ``[coverage] entitlements`` names (``None`` when neither
    does and they are not ``required``); checks --expiring-days."""
    from agent.entitlements import EntitlementsError, load_entitlements

    if args.expiring_days is None:
        args.expiring_days = cfg.coverage.expiring_days
    if args.expiring_days < 0:
        raise UsageError("--expiring-days must be 0 or more")
    path = args.entitlements or cfg.coverage.entitlements
    if path is None:
        if not required:
            return None
        raise UsageError("no entitlements file: pass --entitlements FILE or set [coverage] entitlements")
    # The configured file's own dates setting; a file named on the command line is read as written.
    shift = 0 if args.entitlements else cfg.coverage.date_shift(parse_day(None, "today"))
    if shift:
        print(
            f"roomsync: note: {path} is an example dated {cfg.coverage.dates_relative_to}"
            f" ([coverage] dates_relative_to): its dates are moved {abs(shift)} day(s)"
            f" {'forward' if shift > 0 else 'back'}, to today",
            file=sys.stderr,
        )
    try:
        return load_entitlements(path, shift_days=shift)
    except EntitlementsError as exc:
        raise UsageError("entitlements refused, nothing imported:\n  " + "\n  ".join(exc.problems)) from None
    except OSError as exc:
        raise UsageError(f"--entitlements {path}: {exc.strerror or exc}") from None


def _supports(
    args: argparse.Namespace,
    cfg: AgentConfig,
    report: RoomsReport,
    devices: list[Device],
    context: SnapshotContext,
    today: date,
) -> dict[str, tuple[Device, Support]]:
    """Support for every unit of the stored inventory (agent/support.py), by normalised serial."""
    from agent.support import site_support
    from agent.uploader.snapshot import seen_by_latest_runs, verdicts_for

    runs = stored_runs(args, cfg) if devices else {}
    return site_support(
        report,
        devices,
        verdicts_for(devices, context, today),
        context.entitlements,
        catalog=context.catalog,
        today=today,
        seen=lambda device: seen_by_latest_runs(device, runs),
        settings=context.support,
    )


def cmd_coverage(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.catalog import load_catalog
    from agent.support import support_settings_from
    from agent.uploader.snapshot import SnapshotContext, coverage_list

    today = parse_day(args.today, "--today")
    entitlements = _entitlements(args, cfg)
    devices, stored_rooms, removed = stored_with_removed(args, cfg)  # one read: one scan's
    report = rooms_report(args, cfg, devices, stored_rooms)
    context = SnapshotContext(
        load_catalog(),
        entitlements=entitlements,
        expiring_days=args.expiring_days,
        support=support_settings_from(cfg.support),
    )
    listed = coverage_list(devices, context, today, removed)  # the units /v1/coverage lists too
    assert listed is not None  # records were given
    if args.summary:
        return _print_site_summary(args, cfg, listed, report, today)
    tickets = {r.room_id: r.ticket_serial for r in report.rooms}
    rows = _most_urgent_first(listed)
    if args.json:
        supports = _supports(args, cfg, report, devices, context, today)
        print_json_texts(_json_texts(rows(), tickets, supports))
        return EXIT_OK
    if not listed.units and not listed.rows.records:
        print("no units: the entitlements file is empty and no scan has been stored yet")
        return EXIT_OK
    print_table(
        ["STATUS", "COVERED UNTIL", "SERIAL", "PRODUCT", "ROOM", "REASON"],
        lambda: (
            [
                str(v.status),
                v.covered_until.isoformat() if v.covered_until else "-",
                serial or "-",
                (unit.product or "-") if unit else "-",
                (unit.room or "-") if unit else "-",
                v.reason,
            ]
            for v, serial, unit in rows()
        ),
    )
    return EXIT_OK


Row: TypeAlias = "tuple[Verdict, str, CoverageUnit | None]"


def _most_urgent_first(listed: CoverageList) -> Callable[[], Iterator[Row]]:
    """Every listed unit, most urgent first (:func:`agent.coverage.urgency_key`), as often as
    asked: the inventory's units and their verdicts, sorted; the records no scan found
    (units of unknown product, in no room) as serials grouped by the verdict they share, each
    group sorted, merged in. A record costs its serial, not a verdict of its own."""
    from agent.coverage import urgency_key

    seen = sorted(zip(listed.verdicts, listed.units, strict=True), key=lambda pair: urgency_key(pair[0]))
    groups = listed.rows.groups(skip=listed.keys, seen=listed.seen)
    for _, serials in groups:
        serials.sort()

    def group(verdict: Verdict, serials: list[str]) -> Iterator[tuple[tuple[int, date, str], Row]]:
        rank, until, _ = urgency_key(verdict)
        return (((rank, until, serial), (verdict, serial, None)) for serial in serials)

    def rows() -> Iterator[Row]:
        streams: list[Iterator[tuple[tuple[int, date, str], Row]]] = [
            ((urgency_key(v), (v, v.serial or "", unit)) for v, unit in seen)
        ]
        streams += [group(verdict, serials) for verdict, serials in groups]
        return (row for _, row in heapq.merge(*streams, key=itemgetter(0)))

    return rows


def _json_texts(
    rows: Iterable[Row], tickets: dict[str, str | None], supports: Mapping[str, tuple[Device, Support]]
) -> Iterator[str]:
    """Each row as ``coverage --json`` lists it: a verdict records share made into text once,
    each one's serial put in. ``support`` is what to do when the unit fails (agent/support.py);
    ``null`` for a record no scan found (its product and room are not known)."""
    from agent.sanitize import normalize_serial

    shared: dict[int, str] = {}  # by the verdict's id: every one is kept by the groups
    for verdict, serial, unit in rows:
        if unit is not None:
            room = unit.room
            found = supports.get(normalize_serial(serial)) if serial else None
            yield json_item(
                {
                    **verdict.to_dict(),
                    "room": room,
                    "ticket_serial": tickets.get(room) if room else None,
                    "reason": verdict.reason,
                    "support": found[1].to_dict() if found is not None else None,
                }
            )
            continue
        text = shared.get(id(verdict))
        if text is None:
            fields = {
                **verdict.to_dict(),
                "room": None,
                "ticket_serial": None,
                "reason": verdict.reason,
                "support": None,
            }
            text = shared[id(verdict)] = json_item({**fields, "serial": ""})[len(_SERIAL_HEAD) + 2 :]
        yield _SERIAL_HEAD + json.dumps(serial, ensure_ascii=False) + text


#: How :func:`json_item` begins a verdict: its serial is its first key.
_SERIAL_HEAD = '{\n  "serial": '


def _print_site_summary(
    args: argparse.Namespace,
    cfg: AgentConfig,
    listed: CoverageList,
    report: RoomsReport,
    today: date,
) -> int:
    from agent.site import summarize

    site = summarize(
        [(v, unit.room) for v, unit in zip(listed.verdicts, listed.units, strict=True)],
        [r.room_id for r in report.rooms],
        today,
        enterprise_tier=cfg.select.enterprise_tier,
        roomless={str(status): count for status, count in listed.rows.counts(skip=listed.keys).items()},
    )
    rooms = [
        {
            "room": r.room_id,
            "primary_unit": r.primary_unit,
            "ticket_serial": r.ticket_serial,
            "flags": list(r.flags),
        }
        for r in report.rooms
    ]
    from agent.coverage import EXTENSION_CHECKS

    checks = listed.flag_counts(EXTENSION_CHECKS)
    if args.json:
        print_json(
            {
                **site.to_dict(),
                "extension_checks": checks,
                "today": today.isoformat(),
                "room_summaries": rooms,
                "unassigned": len(report.unassigned),
            }
        )
        return EXIT_OK
    print(f"as of {today.isoformat()}: {site.rooms} room(s), {site.units} unit(s)")
    print("  " + ", ".join(f"{status} {count}" for status, count in site.by_status.items()))
    for note in site.notes:
        print(f"  {note}")
    if site.flags:
        print(f"  flags: {', '.join(site.flags)}")
    if any(checks.values()):
        print(
            "  extensions (W7, W9): "
            + ", ".join(f"{flag} {count}" for flag, count in checks.items() if count)
        )
    if report.unassigned:
        print(f"  {len(report.unassigned)} unit(s) in no room (a room map places LAN devices)")
    return EXIT_OK


def cmd_support(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.catalog import load_catalog
    from agent.sanitize import normalize_serial
    from agent.support import support_settings_from
    from agent.uploader.snapshot import SnapshotContext, verdicts_for

    today = parse_day(args.today, "--today")
    entitlements = _entitlements(args, cfg, required=False)
    devices, stored_rooms = stored_inventory(args, cfg)
    report = rooms_report(args, cfg, devices, stored_rooms)
    context = SnapshotContext(
        load_catalog(),
        entitlements=entitlements,
        expiring_days=args.expiring_days,
        support=support_settings_from(cfg.support),
    )
    key = normalize_serial(args.serial)
    found = _supports(args, cfg, report, devices, context, today).get(key) if key else None
    if found is None:
        print(f"roomsync: no unit with serial {args.serial!r} in the stored inventory", file=sys.stderr)
        return EXIT_FAILED
    device, support = found
    verdict = verdicts_for(devices, context, today).get(key)
    room = report.room(device.room) if device.room else None
    summary = next((r for r in report.rooms if room is not None and r.room_id == room.id), None)
    system = next((s for s in (summary.systems if summary else ()) if device in s.devices), None)
    if args.json:
        print_json(
            {
                "serial": device.serial,
                "product": device.product,
                "identity": device.identity,
                "today": today.isoformat(),
                "room": room.to_dict() if room is not None else None,
                "system": system.to_dict() if system is not None else None,
                "coverage": {**verdict.to_dict(), "reason": verdict.reason} if verdict is not None else None,
                "support": support.to_dict(),
            }
        )
        return EXIT_OK
    from agent.sanitize import printable

    where = (
        f"{room.name or room.id}" + (f" ({support.platform})" if support.platform else "")
        if room
        else "no room"
    )
    print(f"{device.product} {device.serial} — {where}" + (f", {system.name}" if system else ""))
    if verdict is not None:
        until = verdict.covered_until.isoformat() if verdict.covered_until else "-"
        print(f"coverage: {verdict.status} until {until} ({printable(verdict.reason)})")
        for layer in verdict.layers:
            now = "covers today" if layer.covers(today) else "not today"
            rules = ", ".join(layer.rules)
            print(f"  {layer.kind} {layer.start.isoformat()} .. {layer.until.isoformat()} ({now}; {rules})")
    else:
        print("coverage: unknown (no entitlements file: --entitlements or [coverage] entitlements)")
    route = support.route or " or ".join(support.routes)
    print(f"route: {route}; quote serial {support.ticket_serial or '(read it from the label)'}")
    for contact in support.contacts:
        print(f"  {contact.name}" + "".join(f", {v}" for v in (contact.url, contact.phone) if v))
    promised = [
        f"{label} {value}"
        for label, value in (
            ("priority", support.priority),
            ("hours", support.hours),
            ("first response", support.response),
            ("updates every", support.updates),
            ("replacement", support.replacement),
            ("contract", support.contract),
            ("room", support.room),
        )
        if value
    ]
    if promised:
        print("; ".join(promised))
    for step in support.steps:
        print(f"- {step}")
    if support.flags:
        print(f"flags: {', '.join(support.flags)}")
    print(f"rules: {', '.join(support.rules)}")
    return EXIT_OK
