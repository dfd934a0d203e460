"""The package works the same installed from a wheel: nothing in ``agent/`` may read the
checkout. The wheel is built from a copy of the working tree, installed into a fresh virtual
environment, and its ``roomsync`` runs from a directory outside the checkout.

How, and why so:

* **Build.** ``pip wheel`` of a copy of the working tree (setuptools writes ``build/`` and
  ``*.egg-info`` into the source tree, and a stale ``build/lib`` would put deleted modules in
  the wheel). Without build isolation when this interpreter has the build backend (setuptools
  >= 70.1, or setuptools with ``wheel``): offline, about a second. Otherwise with isolation,
  which fetches the backend from the configured index (a few seconds).
* **Install.** ``python -m venv --without-pip`` (no ``--system-site-packages``: that would see
  the checkout), then this interpreter's pip installs the wheel alone into it
  (``pip --python VENV/bin/python install --no-deps --no-index``). The dependencies are the
  test environment's own, offered through a ``.pth`` file naming a directory of links to its
  site-packages entries, less roomsync's (the editable install's finder, its ``.pth`` and its
  ``.dist-info``), so ``import agent`` can only find the wheel's copy; the test checks that.
* **Run.** ``roomsync check-config`` and ``roomsync scan --sysfs-root`` over a copy of the
  quickstart's captured sysfs tree (a Rally Bar, a Tap, a Scribe and a MeetUp): identifying
  them needs the catalog, package data read from the installed wheel.

About 3 s in all (build ~1-3 s, venv and install ~1 s, the two commands ~0.5 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "config" / "quickstart" / "sys"
#: The units of the captured tree, by serial.
UNITS = {
    "2313FD1N08Z2": "Rally Bar",
    "2104TP0007B3": "Tap",
    "2301SC0005E2": "Scribe",
    "2206MU0042C9": "MeetUp",
}
#: Left out of the copy the wheel is built from: version control, environments, caches and
#: earlier build output.
_NOT_COPIED = {".git", ".venv", "build", "dist", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}

_UNSET = {
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "VIRTUAL_ENV",
    "CONFIGURATION_DIRECTORY",
    "STATE_DIRECTORY",
}

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a working directory outside the checkout

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def roomsync(self) -> Path:
        return self.venv / "bin" / "roomsync"


def _run(args: list[str | Path], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``args`` with none of the environment that could reach the checkout or another
    configuration (``PYTHONPATH``, ``ROOMSYNC_*``, systemd's directories)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSYNC_") and k not in _UNSET}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _backend_here() -> bool:
    """Whether this interpreter can build the wheel without build isolation (offline)."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _copy_checkout(dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO
        return {
            n
            for n in names
            if n == "__pycache__"
            or n.endswith(".egg-info")
            or (top and (n in _NOT_COPIED or n.startswith(".")))
        }

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def _dependencies(dest: Path) -> Path:
    """A directory of links to the test environment's site-packages entries, roomsync's left out."""
    dest.mkdir()
    dirs = dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))
    for site in dirs:
        for entry in site.iterdir():
            name = entry.name
            if (
                name.endswith(".pth")
                or name.startswith(("__editable__", "roomsync", "__pycache__"))
                or name in {"agent", "tools", "tests"}
                or (dest / name).exists()
            ):
                continue
            (dest / name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = _copy_checkout(base / "src")
    no_isolation = ["--no-build-isolation"] if _backend_here() else []
    _ok(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                *no_isolation,
                "-w",
                base / "dist",
                source,
            ],
            cwd=base,
        )
    )
    (wheel,) = (base / "dist").glob("roomsync-*.whl")

    venv = base / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base))
    python = venv / "bin" / "python"
    _ok(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                wheel,
            ],
            cwd=base,
        )
    )
    site = Path(
        _ok(
            _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
        ).strip()
    )
    (site / "_roomsync_test_dependencies.pth").write_text(
        f"{_dependencies(base / 'deps')}\n", encoding="utf-8"
    )

    outside = base / "elsewhere"
    outside.mkdir()
    shutil.copytree(TREE, outside / "sys")
    (outside / "agent.toml").write_text(
        f'state_dir = "{outside / "state"}"\n\n'
        '[room]\nid = "wheel-room"\nname = "Installed from a wheel"\n\n'
        "[sources.usb]\n"
        "libusb_strings = false         # the tree is a capture: open no real device\n"
        "sync_interface = false\n\n"
        "[sources.mdns]\nenabled = false\n",
        encoding="utf-8",
    )
    return Installed(wheel=wheel, venv=venv, outside=outside)


def test_the_wheel_holds_the_package_and_its_data_but_no_tools_or_tests(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
    assert "agent/data/catalog.toml" in names
    assert "agent/__init__.py" in names and "agent/__main__.py" in names
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"agent"}, sorted(tops)
    assert not [n for n in names if n.startswith(("tools/", "tests/", "bench/", "config/", "docs/"))]
    assert not [
        n for n in names if n.rsplit("/", 1)[-1] in {"configdoc.py", "docsync.py", "portal_schemas.py"}
    ]


def test_agent_is_imported_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    out = _ok(
        _run(
            [
                installed.python,
                "-c",
                "import agent, agent.cli, agent.catalog, importlib.util as u; "
                "print(agent.__file__); print(u.find_spec('tools') is None)",
            ],
            cwd=installed.outside,
        )
    )
    where, no_tools = out.splitlines()
    assert Path(where).is_relative_to(installed.venv), where
    assert not Path(where).is_relative_to(REPO)
    assert no_tools == "True"


def test_check_config_runs_from_the_wheel(installed: Installed) -> None:
    out = _ok(_run([installed.roomsync, "check-config", "--config", "agent.toml"], cwd=installed.outside))
    assert "# configuration file: agent.toml (valid)" in out
    assert 'id = "wheel-room"' in out
    assert "libusb_strings = false" in out


def test_scan_of_a_sysfs_tree_runs_from_the_wheel(installed: Installed) -> None:
    out = _ok(
        _run(
            [
                installed.roomsync,
                "scan",
                "--config",
                "agent.toml",
                "--sysfs-root",
                "sys",
                "--no-libusb",
                "--json",
            ],
            cwd=installed.outside,
        )
    )
    report = json.loads(out)
    found = {d["serial"]: d for d in report["devices"]}
    assert {s: d["product"] for s, d in found.items()} == UNITS
    bar = found["2313FD1N08Z2"]
    assert (bar["vendor_id"], bar["product_id"], bar["room"]) == ("046d", "089b", "wheel-room")
