"""README's quickstart, run as written: the block between ``<!-- quickstart -->`` markers, in
bash, from the root of a copy of the checkout (its first line makes a virtual environment there
and installs roomsync into it with pip, as a new user does: the Python libraries come from the
package index, as ``./scripts/bootstrap``'s do; pip's cache keeps that quick). The state
directory and the API's port are moved to fresh ones through the environment
(``ROOMSYNC_STATE_DIR``, ``ROOMSYNC_API__LISTEN``), which every command of the block reads."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def quickstart_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```\n<!-- /quickstart -->", text, re.S)
    assert match, "README.md has no quickstart block"
    return [line for line in match[1].splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Top-level entries of the checkout the copy leaves out: version control, environments, caches
#: and build output (anything starting with a dot, too).
_NOT_COPIED = {"build", "dist", "bench", "tests"}


def checkout_copy(into: Path) -> Path:
    """The checkout's files as a new user's clone has them, without environments or caches."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO
        return {n for n in names if n == "__pycache__" or (top and (n in _NOT_COPIED or n.startswith(".")))}

    return Path(shutil.copytree(REPO, into, ignore=ignore))


@pytest.mark.slow
def test_the_readme_quickstart_works_as_written(tmp_path: Path) -> None:
    lines = quickstart_lines()
    # the user's install: a venv of its own and roomsync's run-time libraries, no test peers,
    # no Debian package, no service (the developers' ./scripts/bootstrap installs those)
    assert lines[0].startswith("python3 -m venv .venv-quickstart && "), lines[0]
    assert "bootstrap" not in "\n".join(lines) and "sudo" not in "\n".join(lines)
    clone = checkout_copy(tmp_path / "clone")
    script = "set -e\n" + "\n".join(lines) + "\n"
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}},
        "PATH": ":".join(p for p in os.environ["PATH"].split(":") if not p.startswith(str(REPO))),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "ROOMSYNC_STATE_DIR": str(tmp_path / "state"),
        "ROOMSYNC_API__LISTEN": f"127.0.0.1:{free_port()}",
    }
    env.pop("ROOMSYNC_CONFIG", None)
    done = subprocess.run(
        ["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr[-3000:]}"
    # what ran is the copy's own install, not this checkout's
    installed = subprocess.run(
        [str(clone / ".venv-quickstart/bin/python"), "-c", "import agent; print(agent.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert installed.returncode == 0 and str(REPO) not in installed.stdout, installed
    assert "/.venv-quickstart/lib/" in installed.stdout, installed.stdout
    # scan: the four units in the example room, and their events
    for serial in ("2313FD1N08Z2", "2104TP0007B3", "2301SC0005E2", "2206MU0042C9"):
        assert serial in out
    assert "room quickstart-room: primary unit Rally Bar 2313FD1N08Z2" in out
    assert out.count("device.added") == 4
    # coverage: one line per entitlement serial, with the rule ids behind each verdict
    assert re.search(r"\b2104TP0007B3\s+Tap\s+quickstart-room\s+.*\(W3\)", out), out
    assert "(H1)" in out and "(S5)" in out
    # the example's dates are moved to today ([coverage] dates_relative_to): every status shows
    for status in ("out_of_warranty", "expiring_soon", "unknown", "in_warranty"):
        assert re.search(rf"^{status}\s+\S+\s+\w+", out, re.M), (status, out)
    # the extension checks of the example entitlements: a component (W7), a serial never found
    # and one found as another product than its row names (W9)
    assert "Rally Mic Pod is a component sold separately" in out and "(W7)" in out
    assert "the extension names a Tap IP, the unit found with its serial is a Tap (W9)" in out
    assert "no scan has found the extension's serial yet" in out  # extension-serial-unverified
    assert "no scan has found the extension's serial; discrepancies were due by" in out  # -late
    # the daemon ran, and health saw it healthy
    assert re.search(r"^healthy: roomsync \S+, up \d+ s; usb ok$", out, re.M), out
