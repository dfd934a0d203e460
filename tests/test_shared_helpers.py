"""tests/shared.py and the CI rule of tests/conftest.py: under ``CI=true`` a missing fixture,
peer or tool fails, and so does any other skip; only ``not_applicable`` stays a skip. Each
case runs pytest in a subprocess on a small test file, with ``RS_SHARED_DIR`` pointing at an
empty directory (the real ../shared is never hidden)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import shared

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport, pytest_runtest_setup
"""

INI = """[pytest]
asyncio_default_fixture_loop_scope = function
markers =
    umockdev: as in pyproject.toml
    missing(reason): as in pyproject.toml
"""

TESTS = """
import pytest
from tests.shared import missing, not_applicable, require, require_tool, shared_file

@pytest.fixture
def fixture_needing_a_peer():
    missing("snmpd is not installed (Debian package snmpd; run ./scripts/bootstrap)")

def test_shared_file():
    shared_file("fixtures", "usb-captures", "absent.json")

def test_require_holds():
    require(True, "never shown")

def test_tool():
    require_tool("no-such-tool-roomsync", "no-such-package")

def test_fixture(fixture_needing_a_peer):
    pass

def test_plain_skip():
    pytest.skip("someone skipped without the helper")

def test_not_applicable():
    not_applicable("root reads any file")

@pytest.mark.missing("protocols.md is absent")
def test_missing_marker():
    pass
"""

#: A collection error (the skipped module, under CI) would stop the run before the tests.
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--continue-on-collection-errors"]

MODULE_SKIP = """
import pytest
pytest.skip("a whole module skipped", allow_module_level=True)

def test_never_runs():
    pass
"""


def run_pytest(tmp_path: Path, *, ci: bool) -> tuple[dict[str, tuple[str, str]], str]:
    """Outcome and message of each test of the small suite: (``passed``, ``failed``,
    ``error``, ``skipped``), read from pytest's JUnit XML."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "pytest.ini").write_text(INI)
    (suite / "test_small.py").write_text(TESTS)
    (suite / "test_module_skip.py").write_text(MODULE_SKIP)
    empty = tmp_path / "empty-shared"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    env.update(PYTHONPATH=str(REPO), RS_SHARED_DIR=str(empty))
    if ci:
        env["CI"] = "true"
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [*PYTEST, f"--junitxml={junit}", str(suite)],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("name") or case.get("classname", "")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in {"failure", "error", "skipped"}:
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "") + (child.text or "")
        outcomes.setdefault(name, (outcome, message))
    return outcomes, proc.stdout + proc.stderr


def test_under_ci_a_missing_prerequisite_or_any_skip_fails(tmp_path: Path) -> None:
    outcomes, output = run_pytest(tmp_path, ci=True)
    status = {name: outcome for name, (outcome, _) in outcomes.items()}
    assert status["test_shared_file"] == "failed", output
    assert "absent.json is absent" in outcomes["test_shared_file"][1]
    assert str(tmp_path / "empty-shared") in outcomes["test_shared_file"][1]
    assert "../shared" in outcomes["test_shared_file"][1]
    assert status["test_require_holds"] == "passed"
    assert status["test_tool"] == "failed"
    assert "Debian package no-such-package" in outcomes["test_tool"][1]
    assert status["test_fixture"] == "error"  # failed in setup
    assert "run ./scripts/bootstrap" in outcomes["test_fixture"][1]
    assert status["test_plain_skip"] == "failed"
    assert "CI never passes by skipping" in outcomes["test_plain_skip"][1]
    assert status["test_not_applicable"] == "skipped"
    assert "root reads any file" in outcomes["test_not_applicable"][1]
    assert status["test_missing_marker"] == "error"
    assert "protocols.md is absent" in outcomes["test_missing_marker"][1]
    module = [outcome for name, (outcome, _) in outcomes.items() if "module_skip" in name]
    assert module == ["error"], outcomes  # the collection of a skipped module fails


def test_without_ci_the_same_prerequisites_skip(tmp_path: Path) -> None:
    outcomes, output = run_pytest(tmp_path, ci=False)
    status = {name: outcome for name, (outcome, _) in outcomes.items() if "module_skip" not in name}
    assert status == {
        "test_shared_file": "skipped",
        "test_require_holds": "passed",
        "test_tool": "skipped",
        "test_fixture": "skipped",
        "test_plain_skip": "skipped",
        "test_not_applicable": "skipped",
        "test_missing_marker": "skipped",
    }, output
    assert "absent.json is absent" in outcomes["test_shared_file"][1]
    assert "Debian package no-such-package" in outcomes["test_tool"][1]


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("True", True), ("", False), ("false", False)]
)
def test_in_ci_reads_the_ci_variable(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert shared.in_ci() is expected
