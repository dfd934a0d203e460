"""Test-wide settings, and the rule that CI never passes by skipping (see tests/shared.py)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.peers_mqtt import PASSWORD, USER, Mosquitto
from tests.shared import NOT_APPLICABLE, SHARED, SHARED_ENV, in_ci, missing, require_tool
from tools.portal_standin import CertAuthority


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Commands the tests run (in this process or as subprocesses) keep their state in a
    temporary directory, never in the user's ~/.local/state/roomsync."""
    path = tmp_path_factory.mktemp("xdg-state")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "STATE_DIRECTORY", "INVOCATION_ID")}
    os.environ["XDG_STATE_HOME"] = str(path)
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ.pop("INVOCATION_ID", None)
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_report_header(config: pytest.Config) -> list[str]:
    present = (SHARED / "fixtures").is_dir()
    state = "present" if present else "ABSENT or empty: the tests that read it fail under CI"
    mode = "CI=true: a missing fixture or peer fails" if in_ci() else "a missing fixture or peer skips"
    return [f"roomsync: shared fixtures {SHARED} ({state}; ${SHARED_ENV} moves it)", f"roomsync: {mode}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The markers that name a prerequisite: checked before the test runs."""
    if item.get_closest_marker("umockdev") is not None:
        require_tool("umockdev-run", "umockdev")
    marker = item.get_closest_marker("missing")
    if marker is not None:
        missing(str(marker.args[0] if marker.args else marker.kwargs["reason"]))


def _ci_failure(longrepr: object) -> str | None:
    """Under CI: the failure text for a skip that did not come from ``not_applicable``."""
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if NOT_APPLICABLE in str(reason):
        return None
    return (
        f"CI=true: this test was skipped, and CI never passes by skipping ({reason}). Report a "
        f"missing prerequisite with tests.shared.missing() (it says what to install), or use "
        f"tests.shared.not_applicable() for a check CI cannot make by its nature."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Safety net: under CI, any skip not declared not-applicable is a failure."""
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        text = _ci_failure(report.longrepr)
        if text is not None:
            report.outcome = "failed"
            report.longrepr = text
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a whole module skipped at collection (``allow_module_level=True``)."""
    report = yield
    if in_ci() and report.skipped:
        text = _ci_failure(report.longrepr)
        if text is not None:
            report.outcome = "failed"
            report.longrepr = text
    return report


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on loopback ports (tests/peers_mqtt.py): ``USER`` with ``PASSWORD``,
    a TLS listener with a test CA of its own."""
    with Mosquitto.start(
        tmp_path / "broker", users={USER: PASSWORD}, tls=CertAuthority(tmp_path / "ca")
    ) as b:
        yield b
