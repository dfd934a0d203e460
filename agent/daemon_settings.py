"""The daemon's settings, built from the configuration (``roomsync run``, and again at every
SIGHUP reload), and the snapshot context that every command queueing or exporting a snapshot
uses.

What the command line changes arrives already applied: the sources to run and a function
giving each source's settings (``agent.cli`` maps its flags onto them). Per-source defaults —
which sources run when the configuration leaves ``enabled`` unset, how long one run may take —
come from the source registry (:data:`agent.discovery.SOURCE_DEFAULTS`), not from here.

A setting that cannot be used raises :class:`SettingsError`; its message names the setting.
Heavy modules (the daemon, the sources) are imported inside the functions, so a one-shot
command that only needs :func:`snapshot_context` does not load them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from agent.discovery import SOURCES, make_source, runs, source_defaults

if TYPE_CHECKING:
    from agent.config import (
        AgentConfig,
        CollabosSourceConfig,
        MdnsSourceConfig,
        SnmpSourceConfig,
        SourcesConfig,
        SshSourceConfig,
        UsbSourceConfig,
    )
    from agent.daemon import DaemonSettings
    from agent.model import Room
    from agent.roommap import RoomMap
    from agent.uploader.delivery import PortalSettings
    from agent.uploader.snapshot import SnapshotContext

    SourceConfig: TypeAlias = (
        UsbSourceConfig | MdnsSourceConfig | SnmpSourceConfig | SshSourceConfig | CollabosSourceConfig
    )

__all__ = ["SettingsError", "build_daemon_settings", "config_room", "daemon_sources", "snapshot_context"]


class SettingsError(ValueError):
    """A setting that cannot be used (an unreadable entitlements file, a missing capture)."""


def config_room(cfg: AgentConfig) -> Room | None:
    """The room this host stands in (``[room]``), if the configuration names one."""
    from agent.model import Room

    return Room(**cfg.room.model_dump()) if cfg.room else None


def snapshot_context(cfg: AgentConfig, rooms: Iterable[Room]) -> SnapshotContext:
    """What a snapshot needs besides the store: the catalog, the configured ``rooms`` and the
    entitlement records of ``[coverage] entitlements`` (none configured: coverage is not
    evaluated)."""
    from agent.catalog import load_catalog
    from agent.entitlements import EntitlementsError, load_entitlements
    from agent.model import utc_today
    from agent.support import support_settings_from
    from agent.uploader.snapshot import SnapshotContext

    entitlements = None
    path = cfg.coverage.entitlements
    if path is not None:
        try:
            shift = cfg.coverage.date_shift(utc_today(datetime.now(UTC)))
            entitlements = load_entitlements(path, shift_days=shift)
            if shift:  # an example's dates: say so wherever coverage goes (a portal, GLPI, MQTT)
                from agent.log import get_logger

                get_logger("roomsync.coverage").warning(
                    "entitlements.dates_moved",
                    path=str(path),
                    days=shift,
                    dates_relative_to=str(cfg.coverage.dates_relative_to),
                )
        except EntitlementsError as exc:
            problems = "\n  ".join(exc.problems)
            raise SettingsError(f"[coverage] entitlements {path} refused:\n  {problems}") from None
        except OSError as exc:
            raise SettingsError(f"[coverage] entitlements {path}: {exc.strerror or exc}") from None
    return SnapshotContext(
        load_catalog(),
        tuple(rooms),
        entitlements,
        cfg.coverage.expiring_days,
        support=support_settings_from(cfg.support),
    )


def daemon_sources(sources: SourcesConfig) -> list[str]:
    """The sources the daemon runs by the configuration: each one enabled, or left unset and
    on by default under ``roomsync run`` (the registry's defaults), in registry order."""
    return [name for name in SOURCES if runs(name, getattr(sources, name).enabled, daemon=True)]


def build_daemon_settings(
    cfg: AgentConfig,
    *,
    names: Sequence[str] | None = None,
    source_settings: Callable[[str], SourceConfig] | None = None,
    replays: Sequence[str] = (),
    portal: PortalSettings | None = None,
    listen: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    room_map: RoomMap | None = None,
) -> DaemonSettings:
    """The daemon's settings: ``cfg`` with what the command line changed.

    ``names``: the sources to run (``None``: :func:`daemon_sources`); ``source_settings``:
    each source's settings (default: the configuration's); ``replays``: recorded USB sessions
    to run as the ``replay`` source, every USB interval; ``portal``: where to deliver
    (``None``: no delivery); ``listen``: the API's address (default ``[api] listen``);
    ``state_dir``: as :func:`agent.config.resolve_state_dir` takes it; ``room_map``: the room
    map already read."""
    from datetime import timedelta

    from agent.catalog import load_catalog
    from agent.config import UsbSourceConfig, resolve_state_dir
    from agent.daemon import DaemonSettings, SourcePlan
    from agent.inventory import known_rooms
    from agent.store import Retention
    from agent.uploader.outputs import configured_outputs

    def configured(name: str) -> SourceConfig:
        section: SourceConfig = getattr(cfg.sources, name)
        return section

    settings_of = source_settings or configured

    def usb_settings() -> UsbSourceConfig:
        usb = settings_of("usb")
        if not isinstance(usb, UsbSourceConfig):
            raise TypeError(f"the usb source's settings are a {type(usb).__name__}")
        return usb

    plans = []
    sysfs_root = None
    state = resolve_state_dir(cfg, state_dir)
    for name in daemon_sources(cfg.sources) if names is None else names:
        settings = settings_of(name)
        interval = float(settings.interval)
        source = make_source(name, settings, state)
        timeout = source_defaults(name).timeout(interval)
        if hasattr(source, "run_budget"):  # a source that paces itself to end in time
            source.run_budget = timeout
        plans.append(SourcePlan(name, source, interval, timeout))
        if name == "usb":  # hot-plugging watches the USB source's sysfs tree
            sysfs_root = Path(usb_settings().sysfs_root)
    if replays:
        from agent.discovery.usb_replay import ReplaySources

        for capture in replays:
            if not os.path.isfile(capture):
                raise SettingsError(f"--replay {capture}: no such file")
        usb = usb_settings()
        interval = float(usb.interval)
        captures: list[str | os.PathLike[str]] = list(replays)
        plans.append(
            SourcePlan(
                "replay",
                ReplaySources(captures, sync_deadline=usb.sync_deadline),
                interval,
                source_defaults("replay").timeout(interval),
            )
        )
    store = cfg.store
    room = config_room(cfg)
    return DaemonSettings(
        plans=tuple(plans),
        state_dir=state,
        catalog=load_catalog(),
        room=room,
        room_map=room_map,
        snapshot=snapshot_context(cfg, known_rooms(room, room_map)),
        portal=portal,
        listen=listen or cfg.api.listen,
        api_token_file=cfg.api.token_file,
        api_max_connections=cfg.api.max_connections,
        api_header_timeout=cfg.api.header_timeout,
        agent_id=cfg.agent_id,
        sysfs_root=sysfs_root,
        hotplug_poll=cfg.sources.usb.hotplug_poll,
        remove_after=store.remove_after_missed_scans,
        retention=Retention.from_config(store),
        outbox_max_bytes=int(cfg.portal.outbox_max_mb * 1024 * 1024),
        snapshot_interval=timedelta(hours=cfg.portal.snapshot_interval_hours),
        outputs=tuple(o for o in configured_outputs(cfg, None)),
    )
