"""``[coverage] dates_relative_to``: an example entitlements file (the quickstart's) read with
its dates moved forward to today, so it shows the same statuses on any day. The import
(`agent/entitlements.py`), the configuration, ``roomsync coverage`` and the daemon's snapshot
context, each on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import CoverageConfig, load_config
from agent.coverage import Status
from agent.daemon_settings import snapshot_context
from agent.entitlements import (
    COLUMNS,
    EntitlementsError,
    load_entitlements,
    parse_entitlements,
)
from agent.model import utc_today

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "entitlements.example.csv"
QUICKSTART = REPO / "config" / "quickstart" / "agent.toml"
DATES = [c for c in COLUMNS if c.endswith(("_date", "_purchased", "_registered", "_until"))]


def test_every_date_column_moves_and_nothing_else() -> None:
    assert len(DATES) == 7, (
        DATES
    )  # purchase, extension, SELECT order/activation/registered, reseller, replacement
    plain = load_entitlements(EXAMPLE)
    moved = load_entitlements(EXAMPLE, shift_days=400)
    assert list(moved) == list(plain)
    for serial, was in plain.items():
        now = moved[serial]
        for column in COLUMNS:
            before, after = getattr(was, column), getattr(now, column)
            if column in DATES and before is not None:
                assert after == before + timedelta(days=400), (serial, column)
            else:
                assert after == before, (serial, column)
    # the same codes: records that shared a verdict (one shape) still share one
    assert list(moved.shapes()) == list(plain.shapes())
    back = load_entitlements(EXAMPLE, shift_days=-3)
    assert back["2301SC0005E2"].purchase_date == date(2023, 1, 13)


def test_the_checks_see_the_dates_as_written() -> None:
    """A file wrong as written is refused whatever the shift; a shift is not a check."""
    bad = "serial,purchase_date,reseller_until\nA1,2024-02-30,\n"
    with pytest.raises(EntitlementsError, match="not a real date"):
        parse_entitlements(bad, shift_days=10)
    h1 = "serial,purchase_date,reseller_until\nA1,2024-06-01,2024-05-01\n"  # until before bought
    with pytest.raises(EntitlementsError):
        parse_entitlements(h1, shift_days=10)
    text = parse_entitlements("serial,purchase_date\nA1,2024-06-01\nA2,2024-06-01\n", shift_days=2)
    assert {r.purchase_date for r in text.values()} == {date(2024, 6, 3)}


def test_the_configuration_names_the_day_and_the_shift_follows_today(tmp_path: Path) -> None:
    assert CoverageConfig().date_shift(date(2030, 1, 1)) == 0
    cfg = CoverageConfig(dates_relative_to=date(2024, 12, 1))
    assert cfg.date_shift(date(2024, 12, 1)) == 0
    assert cfg.date_shift(date(2026, 12, 3)) == 732
    assert cfg.date_shift(date(2024, 11, 30)) == -1
    toml = tmp_path / "agent.toml"
    toml.write_text('[coverage]\ndates_relative_to = "yesterday"\n')
    with pytest.raises(Exception, match="dates_relative_to"):
        load_config(toml)


def test_the_daemon_reads_the_configured_example_moved_to_today(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART).config
    assert cfg.coverage.dates_relative_to is not None
    context = snapshot_context(cfg, ())
    assert context.entitlements is not None
    shift = (utc_today(datetime.now(UTC)) - cfg.coverage.dates_relative_to).days
    assert context.entitlements["2301SC0005E2"].purchase_date == date(2023, 1, 16) + timedelta(days=shift)


def roomsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """The quickstart's configuration, its state in ``tmp_path``, after one scan."""
    config = tmp_path / "agent.toml"
    text = QUICKSTART.read_text().replace(
        'state_dir = "/tmp/roomsync-quickstart"', f'state_dir = "{tmp_path}"'
    )
    text = text.replace('sysfs_root = "sys"', f'sysfs_root = "{QUICKSTART.parent / "sys"}"')
    text = text.replace('"../entitlements.example.csv"', f'"{EXAMPLE}"')
    config.write_text(text)
    scanned = roomsync("scan", "--config", str(config))
    assert scanned.returncode == 0, scanned.stderr
    return config


def test_the_quickstart_shows_every_status_today(quickstart: Path) -> None:
    done = roomsync("coverage", "--config", str(quickstart), "--json")
    assert done.returncode == 0, done.stderr
    assert "is an example dated 2024-12-01" in done.stderr and "forward, to today" in done.stderr
    rows = {row["serial"]: row for row in json.loads(done.stdout)}
    assert {row["status"] for row in rows.values()} == {str(s) for s in Status}
    shift = (utc_today(datetime.now(UTC)) - date(2024, 12, 1)).days
    bought = date(2023, 1, 16) + timedelta(days=shift)  # the Scribe's purchase, moved
    assert rows["2301SC0005E2"]["layers"][0]["from"] == bought.isoformat()
    # named on the command line, the same file is read as written
    named = roomsync("coverage", "--config", str(quickstart), "--entitlements", str(EXAMPLE), "--json")
    assert named.returncode == 0, named.stderr
    assert "example dated" not in named.stderr
    written = {row["serial"]: row for row in json.loads(named.stdout)}
    assert written["2301SC0005E2"]["covered_until"] == "2025-01-15"


def test_a_move_out_of_the_imports_years_is_refused_not_a_crash(tmp_path: Path) -> None:
    text = "serial,purchase_date\nA1,2190-06-01\nA2,2024-06-01\n"
    with pytest.raises(
        EntitlementsError, match=r"moved \+4000 days .* 2190-06-01 leaves the years 1980-2199"
    ):
        parse_entitlements(text, shift_days=4000)
    with pytest.raises(EntitlementsError, match="leaves the years"):
        parse_entitlements(text, shift_days=10**7)  # past what a date can hold: no OverflowError
    with pytest.raises(Exception, match="dates_relative_to"):
        CoverageConfig(dates_relative_to=date(9000, 1, 1))
    with pytest.raises(Exception, match="dates_relative_to"):
        CoverageConfig(dates_relative_to=date(1, 1, 1))


def test_the_daemon_and_the_outputs_log_that_the_dates_are_moved(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.log import configure

    configure(level="info", fmt="json")
    snapshot_context(load_config(QUICKSTART).config, ())
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [moved] = [e for e in logged if e["event"] == "entitlements.dates_moved"]
    assert moved["level"] == "warning" and moved["dates_relative_to"] == "2024-12-01" and moved["days"] > 0
