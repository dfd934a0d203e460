"""``scripts/bootstrap``'s Debian part, run for real with apt, dpkg-query and systemctl stood in
by scripts that record what they are asked (installing packages, or disabling this host's
services, is not something a test may do to the machine it runs on). What it must do, from
issue [16/16]: wait for the dpkg lock rather than fail, install the missing packages with no
service of theirs started (a policy-rc.d that refuses, for the time of the install), then
disable the services of the packages it installed, and only those: a service that was there
before is the administrator's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POLICY = Path("/usr/sbin/policy-rc.d")

SHIMS = {
    # installed: everything but what FAKE_MISSING lists
    "dpkg-query": """#!/bin/sh
pkg=""; for a in "$@"; do pkg=$a; done
for m in $FAKE_MISSING; do [ "$m" = "$pkg" ] && exit 1; done
printf 'install ok installed'
""",
    "apt-get": """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
case " $* " in *" install "*)
    if [ -x /usr/sbin/policy-rc.d ]; then
        /usr/sbin/policy-rc.d ssh.service start; echo "policy $?" >> "$FAKE_LOG"
    else echo "policy none" >> "$FAKE_LOG"; fi ;;
esac
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
""",
    "sudo": """#!/bin/sh
exec "$@"
""",
}


def bootstrap(
    tmp_path: Path, missing: list[str], *args: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    for name, text in SHIMS.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "FAKE_MISSING": " ".join(missing),
        "FAKE_LOG": str(log),
    }
    env.pop("ROOMSYNC_SKIP_APT", None)
    done = subprocess.run(
        [str(REPO / "scripts/bootstrap"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    return done, log.read_text().splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="writes /usr/sbin/policy-rc.d when the host has none (root)")
def test_the_peers_are_installed_not_started_and_their_services_not_enabled(tmp_path: Path) -> None:
    had_policy = POLICY.exists()
    done, log = bootstrap(tmp_path, ["snmpd", "openssh-server", "onesixtyone"], "--apt-only")
    assert done.returncode == 0, done.stderr
    installs = [line for line in log if line.startswith("apt-get") and " install " in line]
    assert len(installs) == 1, log
    assert "DPkg::Lock::Timeout=600" in installs[0]  # waits for another apt's lock
    assert installs[0].split()[-3:] == ["snmpd", "openssh-server", "onesixtyone"]
    assert log[log.index(installs[0]) + 1] == "policy 101"  # invoke-rc.d would start nothing
    assert POLICY.exists() == had_policy  # its own policy-rc.d is gone again
    # the two services of what it installed are disabled; onesixtyone has none
    assert [line for line in log if line.startswith("systemctl")] == [
        "systemctl disable --quiet snmpd.service ssh.service"
    ]
    assert "Debian packages done (--apt-only)" in done.stdout


def test_services_that_were_there_before_are_left_alone(tmp_path: Path) -> None:
    done, log = bootstrap(tmp_path, [], "--apt-only")
    assert done.returncode == 0, done.stderr
    assert not [line for line in log if line.startswith(("apt-get", "systemctl disable --quiet"))], log


def test_an_unknown_option_is_refused(tmp_path: Path) -> None:
    done, log = bootstrap(tmp_path, ["snmpd"], "--apt")
    assert done.returncode == 2 and "unknown option --apt" in done.stderr
    assert log == []
