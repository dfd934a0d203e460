"""The amd64 package on a real systemd (issue [16/16], item 2): Debian 12 booted with systemd as
PID 1 in ``systemd-nspawn --private-network`` (loopback only: the default configuration browses
mDNS on every interface, which must never reach a real network), and, against the real
service manager, in this order:

install of the first package shipped with ``dpkg -i`` (enabled and started: ``systemctl
start`` has returned after READY=1) -> ``roomsync health`` exits 0 -> an upgrade to this
checkout's package keeps the store, the agent id and an edited conffile -> ``systemctl reload``
re-reads the configuration -> a portal token given as a credential in ``/etc/credstore`` is
read (and its absence is reported as the agent's own error) -> the hardening leaves the state
directory writable and the rest read-only -> logs reach the journal with their structured
fields -> a hung daemon (SIGSTOP) is restarted by the watchdog -> an upgrade leaves a service
the administrator disabled disabled and stopped -> remove keeps the state, a reinstall starts
on it with the same agent id, purge deletes it.

The Debian root is made once with ``debootstrap`` and kept between runs on one machine
(``$ROOMSYNC_NSPAWN_CACHE``, default ``/var/tmp/roomsync-nspawn``); each run boots a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shared import require
from tools import build_deb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a first debootstrap takes minutes

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ROOMSYNC_NSPAWN_CACHE", "/var/tmp/roomsync-nspawn"))
MIRROR = os.environ.get("ROOMSYNC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: What the root holds besides minbase: systemd as PID 1, and the package's dependencies.
INCLUDE = ["systemd", "systemd-sysv", "dbus", "python3", "libusb-1.0-0", "util-linux"]
UNIT = "roomsync-agent.service"
#: Where Debian keeps the administrator's tools (debootstrap, chroot), whatever PATH says.
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
STORE = "/var/lib/roomsync/roomsync.db"
#: Where files for the container are put, inside it (it exists only there).
DROP = "/var/lib/roomsync-test"


def debian_root() -> Path:
    """A debootstrapped Debian 12 root, made once per machine (a copy is booted)."""
    for tool in ("systemd-nspawn", "nsenter", "dpkg-deb"):
        require(shutil.which(tool), f"{tool} (Debian: systemd-container, util-linux, dpkg)")
    return debootstrapped("amd64", INCLUDE)


def debootstrapped(arch: str, include: list[str]) -> Path:
    """A Debian 12 root of ``arch`` (minbase and ``include``), made with debootstrap once per
    machine and kept in :data:`CACHE` (a failed or interrupted one is cleared the next time,
    its mounts first)."""
    require(shutil.which("debootstrap", path=SBIN), "debootstrap (Debian: debootstrap)")
    require(os.geteuid() == 0, "root, for debootstrap, systemd-nspawn and chroot")
    key = hashlib.sha256(" ".join(["bookworm", arch, MIRROR, *include]).encode()).hexdigest()[:12]
    root = CACHE / f"bookworm-{arch}-{key}"
    if (root / "usr/bin/python3").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"partial-{arch}-{key}-*"):
        clear(stale)
    partial = CACHE / f"partial-{arch}-{key}-{os.getpid()}"
    done = subprocess.run(
        [
            shutil.which("debootstrap", path=SBIN) or "debootstrap", f"--arch={arch}", "--variant=minbase",
            f"--include={','.join(include)}", "bookworm", str(partial), MIRROR,
        ],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    (partial / "etc/hostname").write_text("roomsync-test\n")
    partial.rename(root)
    return root


def clear(tree: Path) -> None:
    """Delete ``tree`` after unmounting what debootstrap left mounted in it (its /proc…);
    a tree that still holds a mount is left alone rather than deleted through it."""
    inside = str(tree.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(inside)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    if not any(m.startswith(inside) for m in mounts):
        shutil.rmtree(tree, ignore_errors=True)


class Container:
    """A booted copy of the Debian root: systemd as PID 1, a private network."""

    def __init__(self, template: Path, where: Path) -> None:
        self.root = where / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(template), str(self.root)], check=True)
        self.log = open(where / "console.log", "wb")  # noqa: SIM115 - closed in stop()
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn", "-q", "-D", str(self.root), "--private-network", "--register=no",
                "--keep-unit", "--boot",
            ],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.leader = 0

    def boot(self, where: Path) -> None:
        """Wait for the container's systemd to be up (``running`` or ``degraded``)."""
        self.leader = self._find_leader()
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise AssertionError(
            f"the container did not boot: {state}\n{(where / 'console.log').read_text()[-2000:]}"
        )

    def _find_leader(self) -> int:
        """The container's PID 1 (systemd) as the host sees it: a child of nspawn's."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.nspawn.poll() is None, "systemd-nspawn exited"
            level = [self.nspawn.pid]
            for _ in range(3):  # nspawn's child, or the child of its helper
                level = [child for pid in level for child in _children(pid)]
                for pid in level:
                    try:
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                            return pid
                    except OSError:
                        continue
            time.sleep(0.2)
        raise AssertionError("no systemd in the container")

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if check:
            assert done.returncode == 0, (
                f"{script}\n-> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {UNIT}").stdout.strip()

    def journal(self) -> list[dict[str, str]]:
        out = self.sh(f"journalctl -u {UNIT} -o json --no-pager").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self) -> list[str]:
        """The ``event`` of every JSON log line the agent wrote to the journal."""
        found = []
        for entry in self.journal():
            message = entry.get("MESSAGE", "")
            if isinstance(message, str) and message.startswith("{"):
                found.append(json.loads(message).get("event", ""))
        return found

    def stop(self) -> None:
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        self.log.close()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from each one's ``/proc/PID/stat``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _first_package(where: Path) -> Path | None:
    """The package :data:`PREVIOUS_COMMIT`'s own ``tools/build_deb.py`` builds from that
    commit's tree; ``None`` when the history does not hold it."""
    if shutil.which("git") is None:
        return None
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_COMMIT}^{{commit}}"], capture_output=True
    )
    if known.returncode != 0:
        return None
    source = where / "previous-src"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_COMMIT], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.build_deb",
            "--out",
            str(where / "old"),
            "--work",
            str(where / "old-build"),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [old] = (where / "old").glob("roomsync_*_amd64.deb")
    return old


#: Whether the upgrade test upgrades from the first package shipped (the history held it).
FIRST_PACKAGE = {"built": False}
#: The first package this project shipped (its code, its maintainer scripts): what the
#: upgrade test upgrades from, built from this checkout's history.
PREVIOUS_COMMIT = "4488f6e3c25070bcec971902dcce5030af2f54e1"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This checkout's amd64 package, and the first one shipped (:data:`PREVIOUS_COMMIT`),
    built from the history by its own ``tools/build_deb.py`` and labelled an older version."""
    where = tmp_path_factory.mktemp("debs")
    current = build_deb.build("amd64", where / "dist", where / "build")
    old = _first_package(where) or current
    FIRST_PACKAGE["built"] = old is not current
    if old is current:  # a checkout without the history: the upgrade's mechanics, at least
        warnings.warn(
            f"commit {PREVIOUS_COMMIT[:7]} is not in this checkout's history (a shallow clone?): "
            "upgrading from this checkout's own package, labelled older",
            stacklevel=1,
        )
    tree = where / "previous"
    subprocess.run(["dpkg-deb", "-R", str(old), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    # Older than this checkout's whatever the two versions say ("~" sorts before anything).
    text, count = re.subn(r"(?m)^Version: (\S+)$", r"Version: \1~previous", control.read_text())
    assert count == 1, text
    control.write_text(text)
    previous = where / "dist" / "roomsync_previous_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(previous)], check=True, capture_output=True
    )
    return previous, current


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    template = debian_root()
    where = tmp_path_factory.mktemp("nspawn")
    container = Container(template, where)
    try:
        container.boot(where)
        yield container
    finally:
        container.stop()


def put(box: Container, path: str, data: bytes | str, mode: int = 0o644) -> None:
    target = box.root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)


def api(box: Container, path: str) -> Any:
    out = box.sh(
        "python3 -c 'import json, urllib.request; "
        f'print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:8765{path}", timeout=10))))\''
    ).stdout
    return json.loads(out)


def agent_id(box: Container) -> str:
    return box.sh(
        "python3 -c \"import sqlite3; print(sqlite3.connect('file:" + STORE + "?mode=ro', uri=True)"
        '.execute(\\"SELECT value FROM meta WHERE key = \'agent_id\'\\").fetchone()[0])"'
    ).stdout.strip()


def test_install_starts_after_ready_and_is_healthy(box: Container, packages: tuple[Path, Path]) -> None:
    previous, _ = packages
    put(box, f"{DROP}/previous.deb", previous.read_bytes())
    box.sh(f"dpkg -i {DROP}/previous.deb")
    # dpkg's postinst ran `systemctl enable --now`: a Type=notify start returns after READY=1.
    assert box.show("ActiveState") == "active" and box.show("UnitFileState") == "enabled"
    assert box.show("Type") == "notify" and box.show("StatusText")  # READY=1 and STATUS= arrived
    box.sh(f"systemctl restart {UNIT}")  # returns once READY=1 is in
    assert box.show("ActiveState") == "active"
    # Healthy once every source's first run is stored (mDNS browses for 3 s).
    wait_for("roomsync health to exit 0", lambda: box.sh("roomsync health", check=False).returncode == 0)
    assert box.sh("roomsync health").stdout.startswith("healthy: roomsync ")
    assert box.sh("id roomsync").stdout.startswith("uid=")  # sysusers made the user


def test_an_upgrade_from_the_first_package_keeps_the_store_and_the_agent_id(
    box: Container, packages: tuple[Path, Path]
) -> None:
    """From the first package shipped to this checkout's: its code and maintainer scripts then
    these; the store, the agent id and an edit of the conffile kept. The tests after this one
    run on this checkout's package."""
    _, current = packages
    wait_for("an agent id", lambda: box.sh(f"test -s {STORE}", check=False).returncode == 0)
    wait_for("an agent id", lambda: bool(agent_id(box)))
    before, pid = agent_id(box), box.show("MainPID")
    config = box.root / "etc/roomsync/agent.toml"
    config.write_text(config.read_text() + "# an administrator's edit, kept across the upgrade\n")
    log_py = box.root / "opt/roomsync/lib/agent/log.py"
    if FIRST_PACKAGE["built"]:
        assert "JOURNAL_SOCKET" not in log_py.read_text()  # the first package's code (no native journal)
    put(box, f"{DROP}/current.deb", current.read_bytes())
    box.sh(f"dpkg -i --force-confold {DROP}/current.deb")
    assert "JOURNAL_SOCKET" in log_py.read_text()  # this checkout's
    assert box.sh("dpkg-query -W -f='${Version}' roomsync").stdout == build_deb.version()
    assert box.show("MainPID") != pid and box.show("ActiveState") == "active"  # restarted
    assert agent_id(box) == before
    assert config.read_text().endswith("# an administrator's edit, kept across the upgrade\n")
    wait_for("roomsync health to exit 0", lambda: box.sh("roomsync health", check=False).returncode == 0)


def test_reload_rereads_the_configuration(box: Container) -> None:
    main_pid = box.show("MainPID")
    config = box.root / "etc/roomsync/agent.toml"
    text = config.read_text()
    assert '\nid = "oslo-4-12"' in text  # the example's [room]
    config.write_text(text.replace('\nid = "oslo-4-12"', '\nid = "reloaded-room"', 1))
    box.sh(f"systemctl reload {UNIT}")
    wait_for("daemon.reloaded in the journal", lambda: "daemon.reloaded" in box.events())
    assert box.show("MainPID") == main_pid and box.show("ActiveState") == "active"
    rooms = api(box, "/v1/rooms")
    assert "reloaded-room" in json.dumps(rooms), rooms  # the new [room] is the one in use


def test_a_portal_token_from_the_credstore_is_read(box: Container) -> None:
    config = box.root / "etc/roomsync/agent.toml"
    text = config.read_text()
    assert '\n# url = "https://portal.example.com"' in text  # the example's [portal], unset
    text = text.replace('\n# url = "https://portal.example.com"', '\nurl = "http://127.0.0.1:9/"', 1)
    config.write_text(text.replace('\n# token_file = "portal-token"', '\ntoken_file = "portal-token"', 1))
    box.sh("rm -f /etc/credstore/roomsync.portal-token")
    box.sh(f"systemctl restart {UNIT}")

    def portal() -> dict[str, Any]:
        return dict(api(box, "/v1/status")["portal"])

    # Without the credential the agent runs and says which secret it lacks.
    wait_for("the missing token to be reported", lambda: "token" in str(portal()["problem"]))
    assert "portal.settings.unusable" in box.events()
    seen = len(box.events())
    put(box, "/etc/credstore/roomsync.portal-token", "s3cret-portal-token\n", 0o600)
    box.sh(f"chmod 0700 /etc/credstore && systemctl restart {UNIT}")
    # With it, the settings are usable: what said the token was missing says nothing now.
    wait_for("the first scans", lambda: box.sh("roomsync health", check=False).returncode in (0, 1))
    time.sleep(2)
    status = portal()
    assert status["configured"] is True and "token" not in str(status["problem"]), status
    assert "daemon.ready" in box.events()[seen:] and "portal.settings.unusable" not in box.events()[seen:]
    assert "s3cret-portal-token" not in box.sh(f"journalctl -u {UNIT} --no-pager").stdout  # never logged


def test_hardening_leaves_only_the_state_directory_writable(box: Container) -> None:
    pid = box.show("MainPID")
    probe = (
        f"nsenter -t {pid} -m sh -c '"
        "touch /var/lib/roomsync/probe && echo state-writable; "
        "for d in /etc/roomsync /opt/roomsync /usr /var/lib /root; do "
        "touch $d/probe 2>/dev/null && echo $d-writable; done; "
        "true'"
    )
    out = box.sh(probe).stdout.split()
    assert out == ["state-writable"], out
    box.sh("rm -f /var/lib/roomsync/probe")


def test_logs_reach_the_journal_with_their_fields(box: Container) -> None:
    """Through journald's native protocol: MESSAGE the JSON line, each key a ROOMSYNC_ field,
    the priority the level's (``journalctl -p``, field matches)."""
    entries = [e for e in box.journal() if str(e.get("MESSAGE", "")).startswith("{")]
    assert entries and all(e.get("_SYSTEMD_UNIT") == UNIT for e in entries)
    ready = [json.loads(e["MESSAGE"]) for e in entries if '"daemon.ready"' in e["MESSAGE"]]
    assert ready and {"event", "level", "timestamp", "listen", "state_dir"} <= set(ready[-1])
    assert ready[-1]["state_dir"] == "/var/lib/roomsync"
    native = [e for e in entries if e.get("_TRANSPORT") == "journal"]
    assert native and all(e.get("SYSLOG_IDENTIFIER") == "roomsync" for e in native)
    [last] = [e for e in native if e.get("ROOMSYNC_EVENT") == "daemon.ready"][-1:]
    assert (last["PRIORITY"], last["ROOMSYNC_STATE_DIR"]) == ("6", "/var/lib/roomsync")
    assert json.loads(last["MESSAGE"])["event"] == "daemon.ready"
    # the missing portal token (an error) earlier: found by priority and by field
    errors = box.sh(f"journalctl -u {UNIT} -p err -o json --no-pager").stdout.splitlines()
    assert any('"portal.settings.unusable"' in line for line in errors), errors[-5:]
    matched = box.sh(f"journalctl -u {UNIT} ROOMSYNC_EVENT=portal.settings.unusable -o json --no-pager")
    assert [json.loads(x)["PRIORITY"] for x in matched.stdout.splitlines()][:1] == ["3"]
    # The CLI's own error, before logging is set up (an invalid configuration): priority err too.
    config = box.root / "etc/roomsync/agent.toml"
    good = config.read_text()
    config.write_text("no_such_key = 1\n" + good)
    assert box.sh(f"systemctl restart {UNIT}", check=False).returncode != 0
    wait_for(
        "the refusal in the journal at priority err",
        lambda: "roomsync: invalid configuration" in box.sh(f"journalctl -u {UNIT} -p err -o cat").stdout,
    )
    config.write_text(good)
    box.sh(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
    assert box.show("ActiveState") == "active"


def test_a_hung_daemon_is_restarted_by_the_watchdog(box: Container) -> None:
    put(box, f"/etc/systemd/system/{UNIT}.d/fast-watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n")
    box.sh(f"systemctl daemon-reload && systemctl restart {UNIT}")
    pid, restarts = box.show("MainPID"), int(box.show("NRestarts"))
    box.sh(f"kill -STOP {pid}")
    wait_for(
        "a new main process",
        lambda: box.show("MainPID") not in (pid, "0") and box.show("ActiveState") == "active",
        timeout=60,
    )
    assert int(box.show("NRestarts")) > restarts
    assert "Watchdog timeout" in box.sh(f"journalctl -u {UNIT} --no-pager").stdout
    box.sh(f"rm /etc/systemd/system/{UNIT}.d/fast-watchdog.conf && systemctl daemon-reload")


def test_an_upgrade_leaves_a_disabled_service_as_the_administrator_left_it(box: Container) -> None:
    box.sh(f"systemctl disable --now {UNIT}")
    box.sh(f"dpkg -i {DROP}/current.deb")  # configure with the installed version: an upgrade
    assert (box.show("ActiveState"), box.show("UnitFileState")) == ("inactive", "disabled")
    box.sh(f"systemctl enable --now {UNIT}")
    box.sh(f"dpkg -i {DROP}/current.deb")  # enabled again: restarted
    assert (box.show("ActiveState"), box.show("UnitFileState")) == ("active", "enabled")


def test_remove_keeps_the_state_a_reinstall_runs_on_it_and_purge_deletes_it(box: Container) -> None:
    before = agent_id(box)
    box.sh("dpkg -r roomsync")
    assert box.show("ActiveState") in ("inactive", "")
    assert box.sh(f"test -s {STORE} && test -f /etc/roomsync/agent.toml", check=False).returncode == 0
    assert box.sh("test -e /usr/bin/roomsync", check=False).returncode != 0
    # Installed again, it starts as it was (enabled) on the same store: the same agent.
    box.sh(f"dpkg -i {DROP}/current.deb")
    assert (box.show("ActiveState"), box.show("UnitFileState")) == ("active", "enabled")
    assert agent_id(box) == before
    assert "reloaded-room" in (box.root / "etc/roomsync/agent.toml").read_text()
    box.sh("dpkg -r roomsync")
    box.sh("dpkg -P roomsync")
    assert box.sh("test -e /var/lib/roomsync || test -e /etc/roomsync", check=False).returncode != 0
    wants = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
    assert box.sh(f"test -e {wants} || test -L {wants}", check=False).returncode != 0  # forgotten
