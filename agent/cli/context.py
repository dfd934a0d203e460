"""From the configuration and the command line to what the commands work on: the room map,
the configured rooms, the store, the outbox, the snapshot context, the portal settings.

Each turns a refusal into a :class:`UsageError` (exit 2). Heavy modules are imported inside
the functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, TypeVar

from agent import __version__
from agent.cli.common import UsageError, revalidate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from agent.config import AgentConfig
    from agent.inventory import RoomsReport
    from agent.model import Device, Room
    from agent.roommap import RoomMap
    from agent.store import Store
    from agent.uploader.delivery import PortalSettings
    from agent.uploader.outbox import Outbox
    from agent.uploader.snapshot import SnapshotContext

_T = TypeVar("_T")


def room_map(args: argparse.Namespace, cfg: AgentConfig) -> RoomMap | None:
    """The room map named by --room-map or the configuration; None when there is none."""
    path = args.room_map or cfg.room_map
    if path is None:
        return None
    from agent.roommap import RoomMapError, load_room_map

    try:
        return load_room_map(path)
    except RoomMapError as exc:
        raise UsageError("room map refused:\n  " + "\n  ".join(exc.problems)) from None


def config_room(cfg: AgentConfig) -> Room | None:
    """The room this host stands in (``[room]``), if the configuration names one."""
    from agent.daemon_settings import config_room as room_of

    return room_of(cfg)


def configured_rooms(args: argparse.Namespace, cfg: AgentConfig) -> list[Room]:
    """The rooms the configuration and the room map name."""
    from agent.inventory import known_rooms

    return known_rooms(config_room(cfg), room_map(args, cfg))


def rooms_report(
    args: argparse.Namespace, cfg: AgentConfig, devices: list[Device], stored_rooms: list[Room]
) -> RoomsReport:
    """The stored devices summarised by room: the stored rooms and the configured ones."""
    from agent.catalog import load_catalog
    from agent.inventory import merge_rooms, summarize_rooms

    return summarize_rooms(devices, load_catalog(), merge_rooms(stored_rooms, configured_rooms(args, cfg)))


#: The commands that only read the store: they open it read-only (:class:`agent.store.Store`'s
#: ``read_only``), so that a user who may read the state directory but not write it can run
#: them, and so that they change nothing there — no migration, no agent id assigned. The others
#: (``push``) open it to write.
READ_ONLY_COMMANDS = frozenset({"inventory", "events", "outbox", "coverage", "support", "export"})


def open_store(args: argparse.Namespace, cfg: AgentConfig) -> Store | None:
    """The store, or None when no scan was stored yet (a message says so); read-only for the
    :data:`READ_ONLY_COMMANDS` (unless the arguments say ``writes``: ``outbox --discard``)."""
    from agent.config import resolve_state_dir
    from agent.store import DB_NAME, Store, StoreError

    state_dir = resolve_state_dir(cfg, args.state_dir)
    try:
        stored = (state_dir / DB_NAME).exists()
    except OSError as exc:  # a state directory this user may not look into
        from agent.store import user_name

        raise UsageError(
            f"cannot read the state directory {state_dir} as user {user_name()} "
            f"({exc.strerror or exc}): run the command as the service's user "
            "(sudo -u roomsync roomsync …), or pass --state-dir"
        ) from None
    if not stored:
        print(f"roomsync: no inventory stored in {state_dir} yet: run roomsync scan first", file=sys.stderr)
        return None
    try:
        read_only = getattr(args, "command", None) in READ_ONLY_COMMANDS and not getattr(
            args, "writes", False
        )
        return Store.open(state_dir, read_only=read_only)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def read_store(args: argparse.Namespace, cfg: AgentConfig, read: Callable[[Store], _T], empty: _T) -> _T:
    """What ``read`` reads from the store; ``empty`` when nothing was stored yet. A store
    that cannot be read is a :class:`UsageError` saying why."""
    from agent.store import StoreError

    store = open_store(args, cfg)
    if store is None:
        return empty
    try:
        with store:
            return read(store)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def stored_inventory(args: argparse.Namespace, cfg: AgentConfig) -> tuple[list[Device], list[Room]]:
    """(devices, rooms) from the store; empty, with a message, when nothing was stored yet."""
    nothing: tuple[list[Device], list[Room]] = ([], [])
    return read_store(args, cfg, lambda store: (store.devices(), store.rooms()), nothing)


def stored_with_removed(
    args: argparse.Namespace, cfg: AgentConfig
) -> tuple[list[Device], list[Room], list[Device]]:
    """:func:`stored_inventory` and, read with it, the units that left the inventory, as last
    seen (W9: scans found them once)."""
    nothing: tuple[list[Device], list[Room], list[Device]] = ([], [], [])
    return read_store(
        args, cfg, lambda store: (store.devices(), store.rooms(), store.devices(removed=True)), nothing
    )


def stored_runs(args: argparse.Namespace, cfg: AgentConfig) -> dict[str, datetime]:
    """When each source's latest stored run was (``Store.latest_runs``); empty when nothing
    was stored yet."""
    from agent.model import as_utc

    return read_store(
        args, cfg, lambda store: {name: as_utc(at) for name, at in store.latest_runs().items()}, {}
    )


def snapshot_context(cfg: AgentConfig, rooms: Iterable[Room]) -> SnapshotContext:
    """What a snapshot needs besides the store: catalog, the configured ``rooms``,
    entitlements."""
    from agent.daemon_settings import SettingsError
    from agent.daemon_settings import snapshot_context as context_of

    try:
        return context_of(cfg, rooms)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def make_outbox(store: Store, cfg: AgentConfig, output: str = "portal") -> Outbox:
    """The queue of ``output`` (``portal``, ``glpi``, ``mqtt``) in ``store``, with the bound
    and resend interval of its section. Of a read-only store, with the agent id the store
    keeps (the outbox would otherwise assign one, a write): none yet is a
    :class:`UsageError`."""
    from datetime import timedelta

    from agent.uploader.outbox import Outbox

    agent_id = cfg.agent_id
    if agent_id is None and store.read_only:
        agent_id = stored_agent_id(store)
    section = getattr(cfg.outputs, output, None) if output != "portal" else None
    if section is not None:
        max_mb, hours = section.outbox_max_mb, section.resend_hours
    else:  # the portal's, or an output no longer configured whose queue is still shown
        max_mb, hours = cfg.portal.outbox_max_mb, cfg.portal.snapshot_interval_hours
    return Outbox(
        store,
        agent_id=agent_id,
        version=__version__,
        hostname=os.uname().nodename,
        max_bytes=int(max_mb * 1024 * 1024),
        snapshot_interval=timedelta(hours=hours),
        output=output,
    )


def queue_outputs(store: Store, cfg: AgentConfig, context: SnapshotContext, now: datetime) -> list[str]:
    """After a stored scan: the portal's snapshot (queued whether or not a portal is
    configured, as ever: ``roomsync push --portal-url`` may deliver it later), then what each
    of ``[outputs.*]`` gets. A store failure raises; an output whose queueing failed
    otherwise is one line of the list returned, and the others are queued."""
    from agent.store import StoreError
    from agent.uploader.outputs import GlpiOutput, MqttOutput
    from agent.uploader.snapshot import queue_snapshot

    queue_snapshot(make_outbox(store, cfg), store, context, now)
    extra: list[GlpiOutput | MqttOutput] = []
    if cfg.outputs.glpi is not None:
        extra.append(GlpiOutput.from_config(cfg.outputs.glpi))
    if cfg.outputs.mqtt is not None:
        extra.append(MqttOutput.from_config(cfg.outputs.mqtt))
    problems = []
    for output in extra:
        try:
            output.queue(make_outbox(store, cfg, output.name), store, context, now)
        except StoreError:
            raise
        except Exception as exc:  # one output's documents failing must not lose the others'
            problems.append(f"{output.name}: nothing queued: {type(exc).__name__}: {exc}")
    return problems


def stored_agent_id(store: Store) -> str:
    """The agent id ``store`` keeps (``meta.agent_id``, as :class:`agent.uploader.outbox.Outbox`
    stores it), without writing one."""
    import json

    from agent.store import StoreError

    try:
        rows = store.read("SELECT value FROM meta WHERE key = 'agent_id'")
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    try:
        value = json.loads(rows[0][0]) if rows else None
    except ValueError as exc:
        raise UsageError(
            f"state database {store.path} is corrupt (the agent id cannot be read: {exc}); move it "
            "aside and the next scan starts a fresh one"
        ) from None
    if not value:
        raise UsageError(
            f"no agent id is stored in {store.path} yet, and this command only reads the store: the "
            "first scan that queues a snapshot (roomsync scan, the daemon) assigns it, or set agent_id "
            "in agent.toml"
        )
    return str(value)


def portal_settings(args: argparse.Namespace, cfg: AgentConfig) -> PortalSettings:
    """``[portal]`` with the --portal-url, --token-file, --ca-file, --client-cert and
    --client-key flags."""
    from agent.uploader.delivery import PortalError, PortalSettings

    overrides = {
        key: value
        for key, value in (
            ("url", args.portal_url),
            ("token_file", args.token_file),
            ("ca_file", args.ca_file),
            ("client_cert", args.client_cert),
            ("client_key", args.client_key),
        )
        if value is not None
    }
    portal = revalidate(cfg.portal, overrides, "--portal-url/--token-file/--ca-file/--client-cert")
    try:
        return PortalSettings.from_config(portal)
    except PortalError as exc:
        raise UsageError(str(exc)) from None
