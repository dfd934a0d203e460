"""The portal: ``roomsync push`` delivers the outbox, ``roomsync outbox`` shows it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parents,
    UsageError,
    load,
    print_json,
    seconds_or_zero,
    table,
)
from agent.cli.context import (
    configured_rooms,
    make_outbox,
    open_store,
    portal_settings,
    snapshot_context,
)

if TYPE_CHECKING:
    from agent.uploader.outbox import OutboxStats

    from .common import Subparsers


def add_portal_flags(parser: argparse.ArgumentParser) -> None:
    """Where to deliver: the flags that override ``[portal]``."""
    parser.add_argument("--portal-url", metavar="URL", help="the portal's base URL (default: [portal] url)")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file (or systemd credential name) holding the bearer token (default: [portal] token_file)",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the portal with")
    parser.add_argument("--client-cert", metavar="FILE", help="client certificate (mTLS); with --client-key")
    parser.add_argument("--client-key", metavar="FILE", help="the client certificate's key")


def register(sub: Subparsers, parents: Parents) -> None:
    push = sub.add_parser(
        "push",
        parents=[parents.common, parents.state, parents.rooms, parents.portal],
        help="deliver the outbox (snapshots and change events) to the portal",
        description="Deliver everything the outbox holds to the licensing portal, oldest first, "
        "retrying transient failures (network, 408, 429, 5xx) with backoff until "
        "the deadline. Exit 0 only when the outbox is empty afterwards. The daemon "
        "(roomsync run) delivers continuously; push is the one-shot form.",
    )
    push.add_argument(
        "--once",
        action="store_true",
        help="deliver what is pending and exit (what push always does; the flag "
        "is accepted for scripts that spell it out)",
    )
    push.add_argument(
        "--deadline",
        type=seconds_or_zero,
        default=60.0,
        metavar="S",
        help="stop after S seconds, the request in flight included (default 60; 0: one attempt)",
    )
    push.add_argument(
        "--retry-parked",
        action="store_true",
        help="first put parked messages (refused with a 4xx) back in the queue",
    )
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    push.set_defaults(func=cmd_push)


def register_outbox(sub: Subparsers, parents: Parents) -> None:
    outbox = sub.add_parser(
        "outbox",
        parents=[parents.common, parents.state],
        help="show what waits for the portal (queued, parked, dropped) and the portal's state",
        description="Show the outbox: queued and parked messages, events not yet queued, what "
        "the bound dropped, and what the last delivery attempts said of the portal.",
    )
    outbox.add_argument("--json", action="store_true", help="print JSON")
    outbox.set_defaults(func=cmd_outbox)


def cmd_push(args: argparse.Namespace) -> int:
    cfg = load(args).config
    import asyncio
    import time
    from datetime import UTC, datetime

    from agent.store import StoreError
    from agent.uploader.delivery import Delivery, PortalError
    from agent.uploader.snapshot import queue_snapshot

    settings = portal_settings(args, cfg)
    context = snapshot_context(cfg, configured_rooms(args, cfg))
    store = open_store(args, cfg)
    if store is None:
        return EXIT_OK  # nothing was ever stored: nothing to deliver
    deadline = time.monotonic() + args.deadline
    with store:
        try:
            outbox = make_outbox(store, cfg)
            if args.retry_parked:
                outbox.unpark()
            now = datetime.now(UTC)
            if outbox.snapshot_due(now):
                queue_snapshot(outbox, store, context, now)
            delivery = Delivery(
                outbox,
                settings,
                user_agent=f"roomsync/{__version__}",
                snapshot=lambda: queue_snapshot(outbox, store, context, datetime.now(UTC), force=True),
            )
            result = asyncio.run(delivery.run(deadline=deadline))
            stats = outbox.stats()
        except PortalError as exc:
            raise UsageError(str(exc)) from None
        except StoreError as exc:
            print(f"roomsync: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print_json(
            {
                "result": result.stopped_because,
                "delivered": result.delivered,
                "events_delivered": result.events_delivered,
                "parked": result.parked,
                "retries": result.retries,
                "last_problem": result.last_problem,
                "outbox": stats.to_dict(),
            }
        )
    else:
        print(
            f"delivered {result.delivered} message(s) ({result.events_delivered} event(s)) to "
            f"{settings.host}; {result.retries} retr{'y' if result.retries == 1 else 'ies'}"
        )
        print_outbox_summary(stats, result.stopped_because, result.last_problem)
    return EXIT_OK if stats.empty else EXIT_FAILED


def print_outbox_summary(stats: OutboxStats, stopped: str | None = None, problem: str | None = None) -> None:
    from agent.sanitize import printable

    reasons = {
        "paused": "delivery paused",
        "deadline": "gave up at the deadline",
        "error": "the store failed",
        "stopped": "stopped",
    }
    if stats.empty:
        print("outbox empty")
    else:
        print(
            f"outbox: {stats.pending} pending, {stats.parked} parked, {stats.events_waiting} event(s) "
            f"not yet queued ({stats.bytes} bytes)"
        )
    if stopped in reasons:
        print(f"{reasons[stopped]}: {printable(problem)}" if problem else reasons[stopped])
    if stats.parked:
        print(
            "parked messages were refused by the portal (4xx); roomsync outbox shows why, "
            "roomsync push --retry-parked sends them again"
        )
    if stats.dropped_events:
        print(
            f"the outbox bound dropped {stats.dropped_events} event(s) in {stats.dropped_messages} "
            "message(s) ([portal] outbox_max_mb)"
        )
    portal = stats.portal
    if portal.state not in ("ok", "unknown"):
        print(f"portal {portal.state}" + (f": {printable(portal.reason)}" if portal.reason else ""))


def cmd_outbox(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.store import StoreError

    store = open_store(args, cfg)
    if store is None:
        return EXIT_OK
    try:
        with store:
            outbox = make_outbox(store, cfg)
            stats, messages = outbox.stats(), outbox.messages()
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(
            {**stats.to_dict(), "agent_id": outbox.agent.id, "messages": [m.to_dict() for m in messages]}
        )
        return EXIT_OK
    print(f"agent id {outbox.agent.id}")
    print_outbox_summary(stats)
    if messages:
        print()
        print(
            table(
                ["SEQ", "KIND", "EVENTS", "BYTES", "STATE", "ATTEMPTS", "QUEUED", "LAST ERROR"],
                [
                    [
                        str(m.sequence),
                        m.kind,
                        str(m.events),
                        str(m.size),
                        m.state,
                        str(m.attempts),
                        m.created_at.isoformat(timespec="seconds"),
                        m.last_error or "-",
                    ]
                    for m in messages
                ],
            )
        )
    return EXIT_OK
