"""A state directory the user may not read (install.md's "forgot ``sudo -u roomsync``"):
every command that reads the store says so in one line, exit 2, with the path, the user and
the fix, not a traceback (issue [13/16], part 4). Run as a real unprivileged user: as root,
the command runs under ``setpriv`` as ``nobody``; as anyone else, as that user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store import Store
from tests.shared import not_applicable
from tests.test_store import T0, unit

REPO = Path(__file__).resolve().parents[1]


def as_someone_else(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to run as another user"
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSYNC_")}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("command", [["inventory"], ["events"], ["outbox"], ["inventory", "--json"]])
def test_a_state_directory_the_user_cannot_read_is_one_clear_error(
    tmp_path: Path, command: list[str]
) -> None:
    probe = as_someone_else("--version")
    if probe.returncode != 0:  # the interpreter itself lies where that user may not go
        not_applicable(f"this Python cannot run as another user here: {probe.stderr.strip()[-200:]}")
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.record_scan([unit("A1", T0)], [], T0)
    state.chmod(0o000 if os.geteuid() != 0 else 0o700)  # root's 0700 keeps nobody out
    try:
        done = as_someone_else(*command, "--state-dir", str(state))
    finally:
        state.chmod(0o700)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot read the state directory {state}" in done.stderr or "cannot be written" in done.stderr
    assert "as user" in done.stderr and "sudo -u roomsync" in done.stderr
