"""The daemon's settings (agent.daemon_settings) and the per-source defaults of the source
registry (agent.discovery): which sources run when the configuration leaves ``enabled`` unset,
how long one daemon run may take. In-process, nothing is opened or bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.daemon_settings import SettingsError, build_daemon_settings, daemon_sources, snapshot_context
from agent.discovery import SOURCE_DEFAULTS, SOURCES, runs, source_defaults


def config(tmp_path: Path, **data: object) -> AgentConfig:
    return AgentConfig.model_validate({"state_dir": str(tmp_path / "state"), **data})


def test_every_registered_source_has_defaults() -> None:
    assert set(SOURCE_DEFAULTS) == set(SOURCES)
    assert source_defaults("replay") == source_defaults("usb")  # not registered: the plain defaults


@pytest.mark.parametrize(
    ("interval", "timeout"), [(1.0, 30.0), (60.0, 54.0), (300.0, 270.0), (3600.0, 600.0)]
)
def test_one_run_may_take_nine_tenths_of_the_interval_within_30_s_and_10_min(
    interval: float, timeout: float
) -> None:
    for name in SOURCES:
        assert source_defaults(name).timeout(interval) == pytest.approx(timeout)


def test_mdns_unset_runs_under_run_not_under_scan() -> None:
    assert runs("mdns", None, daemon=True) and not runs("mdns", None, daemon=False)
    assert not runs("mdns", False, daemon=True) and runs("mdns", True, daemon=False)
    assert not any(runs(name, None, daemon=True) for name in ("usb", "snmp", "ssh"))


def test_the_daemon_runs_usb_and_mdns_by_default(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert daemon_sources(cfg.sources) == ["usb", "mdns"]
    settings = build_daemon_settings(cfg)
    assert [(p.name, p.interval, p.timeout) for p in settings.plans] == [
        ("usb", 300.0, 270.0),
        ("mdns", 60.0, 54.0),
    ]
    assert settings.sysfs_root == Path("/sys") and settings.state_dir == tmp_path / "state"
    assert settings.listen == "127.0.0.1:8765" and settings.portal is None
    assert settings.snapshot is not None and settings.snapshot.entitlements is None


def test_named_sources_with_their_settings_and_a_replay(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources={"mdns": {"enabled": False}, "usb": {"interval": 100}})
    usb = cfg.sources.usb.model_copy(update={"sysfs_root": tmp_path})
    capture = tmp_path / "capture.json"
    capture.write_text("{}")
    settings = build_daemon_settings(
        cfg,
        names=["usb"],
        source_settings=lambda name: usb if name == "usb" else getattr(cfg.sources, name),
        replays=[str(capture)],
        listen="127.0.0.1:9999",
        state_dir=tmp_path / "elsewhere",
    )
    assert [(p.name, p.interval, p.timeout) for p in settings.plans] == [
        ("usb", 100.0, 90.0),
        ("replay", 100.0, 90.0),
    ]
    assert settings.sysfs_root == tmp_path and settings.listen == "127.0.0.1:9999"
    assert settings.state_dir == tmp_path / "elsewhere"


def test_a_missing_replay_or_unreadable_entitlements_is_a_settings_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources={"usb": {"enabled": False}, "mdns": {"enabled": False}})
    with pytest.raises(SettingsError, match=r"--replay .*nope\.json: no such file"):
        build_daemon_settings(cfg, replays=[str(tmp_path / "nope.json")])
    missing = config(tmp_path, coverage={"entitlements": str(tmp_path / "none.csv")})
    with pytest.raises(
        SettingsError, match=r"\[coverage\] entitlements .*none\.csv refused:\n.*No such file"
    ):
        snapshot_context(missing, ())


def test_the_collabos_source_runs_when_enabled_and_keeps_its_pins_in_the_state_dir(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        sources={
            "usb": {"enabled": False},
            "mdns": {"enabled": False},
            "collabos": {
                "enabled": True,
                "hosts": ["10.20.4.31", {"host": "rallybar-1.example:8443", "room": "oslo-4-12"}],
                "password_file": "collabos-password",
            },
        },
    )
    settings = build_daemon_settings(cfg)
    [plan] = settings.plans
    assert (plan.name, plan.interval, plan.timeout) == ("collabos", 300.0, 270.0)
    source = plan.source
    assert source.state_dir == tmp_path / "state"
    assert [(h.address, h.room) for h in source.hosts] == [
        ("10.20.4.31", None),
        ("rallybar-1.example:8443", "oslo-4-12"),
    ]
    assert source.concurrency == 32 and source.host_deadline == 60.0 and source.user == "admin"
