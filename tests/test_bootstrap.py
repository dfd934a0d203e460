"""``scripts/bootstrap``'s Debian part, run for real with apt-get, dpkg-query, systemctl and
sleep stood in by scripts that record what they are asked (installing packages, or disabling
this host's services, is not something a test may do to the machine it runs on). What it must
do, from issue [16/16]: wait for apt's locks rather than fail, install the missing packages
with no service of theirs started (a policy-rc.d that refuses, for the time of the install),
then disable the services of the packages it installed, and only those: a service that was
there before is the administrator's. The policy-rc.d is put where ``ROOMSYNC_POLICY_RC_D``
says (a file of the test), so that its own is tested whether or not this host has one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHIMS = {
    # installed: everything but what FAKE_MISSING lists
    "dpkg-query": """#!/bin/sh
pkg=""; for a in "$@"; do pkg=$a; done
for m in $FAKE_MISSING; do [ "$m" = "$pkg" ] && exit 1; done
printf 'install ok installed'
""",
    # `update` fails with FAKE_UPDATE_ERROR as many times as FAKE_UPDATE_FAILS says
    "apt-get": """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
case " $* " in
*" update "*)
    n=$(grep -c ' update ' "$FAKE_LOG")
    if [ "$n" -le "${FAKE_UPDATE_FAILS:-0}" ]; then echo "$FAKE_UPDATE_ERROR" >&2; exit 100; fi ;;
*" install "*)
    if [ -x "$ROOMSYNC_POLICY_RC_D" ]; then
        "$ROOMSYNC_POLICY_RC_D" ssh.service start; echo "policy $?" >> "$FAKE_LOG"
    else echo "policy none" >> "$FAKE_LOG"; fi ;;
esac
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
""",
    "sleep": """#!/bin/sh
echo "sleep $*" >> "$FAKE_LOG"
""",
    "sudo": """#!/bin/sh
exec "$@"
""",
}

LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)"


def bootstrap(
    tmp_path: Path, missing: list[str], *args: str, **env_extra: str
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
        "ROOMSYNC_POLICY_RC_D": str(tmp_path / "policy-rc.d"),
        **env_extra,
    }
    env.pop("ROOMSYNC_SKIP_APT", None)
    done = subprocess.run(
        [str(REPO / "scripts/bootstrap"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    return done, log.read_text().splitlines()


def calls(log: list[str], prefix: str) -> list[str]:
    return [line for line in log if line.startswith(prefix)]


def test_the_peers_are_installed_not_started_and_their_services_not_enabled(tmp_path: Path) -> None:
    done, log = bootstrap(tmp_path, ["snmpd", "openssh-server", "onesixtyone", "avahi-daemon"], "--apt-only")
    assert done.returncode == 0, done.stderr
    [install] = [line for line in calls(log, "apt-get") if " install " in line]
    assert "DPkg::Lock::Timeout=600" in install  # waits for another apt's dpkg lock
    assert install.split()[-4:] == ["snmpd", "openssh-server", "onesixtyone", "avahi-daemon"]
    assert log[log.index(install) + 1] == "policy 101"  # its own policy-rc.d: invoke-rc.d starts nothing
    assert not (tmp_path / "policy-rc.d").exists()  # and gone again
    # the services of what it installed are disabled; onesixtyone has none
    assert calls(log, "systemctl") == [
        "systemctl disable --quiet snmpd.service ssh.service avahi-daemon.service avahi-daemon.socket"
    ]
    assert "Debian packages done (--apt-only)" in done.stdout


def test_a_hosts_own_policy_rc_d_is_left_as_it_is(tmp_path: Path) -> None:
    own = tmp_path / "policy-rc.d"
    own.write_text("#!/bin/sh\nexit 104\n")
    own.chmod(0o755)
    done, log = bootstrap(tmp_path, ["snmpd"], "--apt-only")
    assert done.returncode == 0, done.stderr
    assert "policy 104" in log and own.read_text() == "#!/bin/sh\nexit 104\n"


def test_services_that_were_there_before_are_left_alone(tmp_path: Path) -> None:
    """Every package present (avahi-daemon and mosquitto among them): nothing installed,
    no service of this host touched."""
    done, log = bootstrap(tmp_path, [], "--apt-only")
    assert done.returncode == 0, done.stderr
    assert calls(log, "apt-get") == [] and calls(log, "systemctl") == [], log


def test_the_package_lists_lock_is_waited_for(tmp_path: Path) -> None:
    done, log = bootstrap(tmp_path, ["snmpd"], "--apt-only", FAKE_UPDATE_FAILS="2", FAKE_UPDATE_ERROR=LOCKED)
    assert done.returncode == 0, done.stderr
    assert len([line for line in calls(log, "apt-get") if " update " in line]) == 3
    assert calls(log, "sleep") == ["sleep 10", "sleep 10"]
    assert "another apt holds its lock: waiting" in done.stdout
    assert [line for line in calls(log, "apt-get") if " install " in line]


def test_an_update_that_fails_otherwise_stops_at_once_with_apts_words(tmp_path: Path) -> None:
    error = "E: The repository 'http://deb.debian.org/debian bookworm Release' does not have a Release file."
    done, log = bootstrap(tmp_path, ["snmpd"], "--apt-only", FAKE_UPDATE_FAILS="9", FAKE_UPDATE_ERROR=error)
    assert done.returncode == 1 and error in done.stderr
    assert len(calls(log, "apt-get")) == 1 and calls(log, "sleep") == []
    assert not (tmp_path / "policy-rc.d").exists()  # its policy-rc.d goes on the way out too


def test_an_unknown_option_is_refused(tmp_path: Path) -> None:
    done, log = bootstrap(tmp_path, ["snmpd"], "--apt")
    assert done.returncode == 2 and "unknown option --apt" in done.stderr
    assert log == []
