"""Numbers are finite and in range everywhere (issue [13/16], part 5): a time-out, a deadline
or a configured number that is nan, infinite, zero or negative is a usage error, exit 2, that
names the flag or the key; nothing runs with it (``push --deadline nan`` used to retry for
ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main

FLAGS = [
    ["health", "--timeout"],
    ["push", "--once", "--deadline"],
    ["scan", "--no-store", "--timeout"],
    ["scan", "--no-store", "--snmp", "127.0.0.1", "--snmp-timeout"],
    ["scan", "--no-store", "--mdns", "--mdns-timeout"],
    ["trust", "collabos", "127.0.0.1", "--timeout"],
]


CASES = [
    (command, value)
    for command in FLAGS
    for value in ["nan", "inf", "-inf", "-1", "0", "soon"]
    # push --deadline 0 is one attempt, no retry (tests/test_outbox_outage.py uses it).
    if not (command[-1] == "--deadline" and value == "0")
]


@pytest.mark.parametrize(("command", "value"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else c)
def test_a_number_that_is_not_a_finite_positive_time_is_refused(
    command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*command[:-1], f"{command[-1]}={value}"])  # "=": a value may start with "-"
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {command[-1]}:" in err and repr(value) in err


@pytest.mark.parametrize("value", ["0.5", "30", "1e1"])
def test_a_finite_positive_time_is_taken(value: str) -> None:
    from agent.cli.common import seconds

    assert seconds(value) == float(value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("sources.snmp", "timeout", "nan"),
        ("sources.snmp", "timeout", "inf"),
        ("store", "history_days", "nan"),
        ("store", "history_max_mb", "-inf"),
        ("portal", "backoff_cap", "inf"),
    ],
)
def test_a_configured_number_that_is_not_finite_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, value: str
) -> None:
    path = tmp_path / "agent.toml"
    extra = 'url = "https://portal.example.com/"\n' if section == "portal" else ""
    path.write_text(f"[{section}]\n{extra}{key} = {value}\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err and ("finite number" in err or "greater than" in err), err
