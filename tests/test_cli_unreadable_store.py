"""A store the user may not read or write (install.md's "forgot ``sudo -u roomsync``"), run as a
real unprivileged user: as root, the command runs under ``setpriv`` as ``nobody``; as anyone
else, as that user (the store then made read-only by its modes). Real files, real SQLite.

* A state directory the user may not read: every command that reads the store says so in one
  line, exit 2, with the path, the user and the fix, not a traceback (issue [13/16], part 4).
* A store the user may read but not write: the commands that only read it
  (``agent.cli.context.READ_ONLY_COMMANDS``) open it read-only and print what they print for
  its owner, changing none of its files; what they cannot do without writing — read a WAL
  database whose ``-wal`` and ``-shm`` are gone (the path, the user and the fix), migrate an
  older schema, assign the agent id — is exit 2 saying why and what to do.
* Before any scan they create nothing (no state directory, no database).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from agent.cli.context import READ_ONLY_COMMANDS
from agent.store import DB_NAME, MIGRATIONS, Store
from tests.shared import not_applicable
from tests.sysfs import add_device
from tests.test_store import T0, unit

REPO = Path(__file__).resolve().parents[1]
ENTITLEMENTS = str(REPO / "config" / "entitlements.example.csv")
#: Every form of the read-only commands whose output depends on the store.
READS: dict[str, list[str]] = {
    "inventory": ["inventory"],
    "inventory-json": ["inventory", "--json"],
    "events": ["events"],
    "outbox": ["outbox", "--json"],
    "coverage": ["coverage", "--json", "--entitlements", ENTITLEMENTS, "--today", "2026-12-01"],
    "support": ["support", "2313FD1N08Z2", "--json", "--entitlements", ENTITLEMENTS, "--today", "2026-12-01"],
    "export-csv": ["export", "--format", "service-portal-csv"],
    "export-json": ["export", "--format", "json"],
}
#: What each prints of the store ``served`` holds (and none prints without it).
SHOWS = {
    "inventory": "2313FD1N08Z2",
    "inventory-json": "2313FD1N08Z2",
    "events": "device.added",
    "outbox": '"pending": 2',
    "coverage": '"room": "oslo-4-12"',
    "support": '"route": "logitech-support"',
    "export-csv": "2313FD1N08Z2",
    "export-json": "2313FD1N08Z2",
}


def test_every_read_only_command_is_exercised() -> None:
    assert {command[0] for command in READS.values()} == READ_ONLY_COMMANDS


def roomsync(*args: str, other_user: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI as this user, or (``other_user``) as an unprivileged one when this is root."""
    command = [sys.executable, "-m", "agent", *args]
    if other_user and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to run as another user"
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSYNC_")}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


def as_someone_else(*args: str) -> subprocess.CompletedProcess[str]:
    return roomsync(*args, other_user=True)


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory the other user may reach. Not pytest's ``tmp_path``: its base directory is
    private (0700), and every pytest session sets it so again."""
    probe = as_someone_else("--version")
    if probe.returncode != 0:  # the interpreter itself lies where that user may not go
        not_applicable(f"this Python cannot run as another user here: {probe.stderr.strip()[-200:]}")
    path = Path(tempfile.mkdtemp(prefix="roomsync-store-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for inner in path.rglob("*"):  # what a test left read-only
            if inner.is_dir():
                inner.chmod(0o755)
        shutil.rmtree(path)


def read_only(state: Path) -> None:
    """The store as another user sees the service's (or, to its owner, one it may not change):
    readable, not writable."""
    for inner in state.iterdir():
        inner.chmod(0o444)
    state.chmod(0o555)


def files(state: Path) -> dict[str, bytes]:
    return {inner.name: inner.read_bytes() for inner in sorted(state.iterdir())}


def but_the_shm(stored: dict[str, bytes]) -> dict[str, bytes | bool]:
    """:func:`files` but whether the ``-shm`` is there: the shared memory of the readers and
    writers, which a reader that may write it writes (where it reads; an index it rebuilds)."""
    shm = f"{DB_NAME}-shm"
    return {**{k: v for k, v in stored.items() if k != shm}, shm: shm in stored}


#: A connection as the daemon keeps one: open, idle, until its stdin closes.
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("holding", flush=True)
sys.stdin.read()
db.close()
"""


@contextmanager
def held_open(state: Path) -> Iterator[None]:
    """The store open in another process, as the running daemon keeps it: its ``-wal`` and
    ``-shm`` exist while it is. Not in this process: reading a file here (:func:`files`) would
    drop the POSIX locks SQLite holds on it in this process, and the next connection to close
    would take the store for its own and remove them."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state / DB_NAME)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "holding\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def configure(place: Path) -> Path:
    """agent.toml for a store in ``place/state``: the host's room oslo-4-12."""
    config = place / "agent.toml"
    config.write_text(f'state_dir = "{place / "state"}"\n[room]\nid = "oslo-4-12"\n')
    config.chmod(0o644)
    return config


@pytest.mark.parametrize(
    "command",
    [
        ["inventory"],
        ["events"],
        ["outbox"],
        ["inventory", "--json"],
        ["coverage", "--entitlements", ENTITLEMENTS],
        ["export", "--format", "service-portal-csv"],
        ["export", "--format", "json"],
    ],
)
def test_a_state_directory_the_user_cannot_read_is_one_clear_error(place: Path, command: list[str]) -> None:
    state = place / "state"
    with Store.open(state) as store:
        store.record_scan([unit("A1", T0)], [], T0)
    state.chmod(0o000 if os.geteuid() != 0 else 0o700)  # root's 0700 keeps nobody out
    try:
        done = as_someone_else(*command, "--state-dir", str(state))
    finally:
        state.chmod(0o700)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot read the state directory {state}" in done.stderr
    assert "as user" in done.stderr and "sudo -u roomsync" in done.stderr


@pytest.fixture
def served(place: Path) -> Iterator[Path]:
    """A store as the service keeps it while it runs: scanned (two units in oslo-4-12, their
    events, a snapshot queued, the agent id assigned) while another process held it open, as
    the daemon does — so that its ``-wal`` (holding the scan) and ``-shm`` exist — and readable
    but not writable. Yields the configuration."""
    sysfs = place / "sys"
    add_device(sysfs, "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    add_device(sysfs, "2-2", 0x046D, 0x08E2, serial="2301SC0005E2", product="Logi Scribe")
    config = configure(place)
    Store.open(place / "state").close()  # the schema, before the daemon holds it open
    with held_open(place / "state"):
        scanned = roomsync("scan", "--config", str(config), "--sysfs-root", str(sysfs))
        assert scanned.returncode == 0, scanned.stderr
        read_only(place / "state")
        stored = files(place / "state")
        assert stored[f"{DB_NAME}-wal"] and f"{DB_NAME}-shm" in stored  # the scan is in the -wal
        yield config


def comparable(command: list[str], out: str) -> str:
    """The output, but for the time a snapshot is generated at (each run's own)."""
    if command[:3] != ["export", "--format", "json"]:
        return out
    snapshot = json.loads(out)
    snapshot.pop("generated_at")
    return json.dumps(snapshot, sort_keys=True)


@pytest.mark.parametrize("name", list(READS))
def test_a_store_the_user_may_read_but_not_write_is_read_as_its_owner_reads_it(
    place: Path, served: Path, name: str
) -> None:
    command = [*READS[name], "--config", str(served)]
    state = place / "state"
    owner = roomsync(*command)
    assert owner.returncode == 0, owner.stderr
    before = files(state)
    done = as_someone_else(*command)
    assert done.returncode == 0, done.stderr
    assert comparable(command, done.stdout) == comparable(command, owner.stdout)
    assert done.stderr == owner.stderr
    assert files(state) == before  # the database, its -wal and its -shm, byte for byte
    assert SHOWS[name] in done.stdout


def test_a_store_no_writer_has_open_cannot_be_read_without_creating_its_wal(place: Path) -> None:
    """No writer has the store open (the daemon stopped): its ``-wal`` and ``-shm`` are gone,
    and SQLite cannot read a WAL database without them — nor may this user create them."""
    state = place / "state"
    with Store.open(state) as store:
        store.record_scan([unit("A1", T0)], [], T0)
    read_only(state)
    before = files(state)
    assert list(before) == [DB_NAME]
    config = str(configure(place))
    for command in READS.values():
        done = as_someone_else(*command, "--config", config)
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr
        assert f"state database {state / DB_NAME} cannot be read as user " in done.stderr
        assert f"{DB_NAME}-wal and {DB_NAME}-shm" in done.stderr and "sudo -u roomsync" in done.stderr
        assert files(state) == before


def test_a_reader_that_may_create_the_wal_leaves_it_and_the_database_as_they_were(place: Path) -> None:
    """The same store, to a user who may create files in the state directory (its owner, or
    root): read; the database byte for byte as it was, an empty ``-wal`` and the ``-shm`` left
    beside it (SQLite removes them at a writer's last close only)."""
    state = place / "state"
    with Store.open(state) as store:
        store.record_scan([unit("A1", T0)], [], T0)
    (state / DB_NAME).chmod(0o444)
    database = (state / DB_NAME).read_bytes()
    done = roomsync("inventory", "--json", "--config", str(configure(place)))
    assert done.returncode == 0, done.stderr
    assert [d["serial"] for d in json.loads(done.stdout)["devices"]] == ["A1"]
    assert (state / DB_NAME).read_bytes() == database
    assert set(files(state)) <= {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
    assert not files(state).get(f"{DB_NAME}-wal")
    (state / DB_NAME).chmod(0o644)
    with Store.open(state) as store:  # the next writer uses them, and removes them
        store.record_scan([unit("A1", T0), unit("B2", T0)], [], T0)
    assert sorted(files(state)) == [DB_NAME]


#: A daemon that stores a scan and is killed before it closes the store.
KILLED = """
import sys
from agent.store import Store
from tests.test_store import T0, unit
store = Store.open(sys.argv[1])
store.record_scan([unit("A1", T0)], [], T0)
print("stored", flush=True)
sys.stdin.read()
"""


def test_a_store_a_killed_daemon_left_is_read_as_it_is(place: Path) -> None:
    """A daemon killed (kill -9, power cut) leaves its last scans in the ``-wal``: a reader
    reads them there and leaves them — the owner's read included, where a writer's last close
    would merge them into the database and remove the ``-wal`` (the ``-shm``, shared memory, is
    rebuilt by a reader that may write it)."""
    state = place / "state"
    daemon = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(state)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.stdout is not None and daemon.stdout.readline() == "stored\n"
    daemon.kill()
    daemon.communicate()
    read_only(state)
    before = files(state)
    assert before[f"{DB_NAME}-wal"] and f"{DB_NAME}-shm" in before  # the scan is in the -wal
    config = str(configure(place))
    read = as_someone_else("inventory", "--json", "--config", config)
    assert read.returncode == 0, read.stderr
    assert [d["serial"] for d in json.loads(read.stdout)["devices"]] == ["A1"]
    assert files(state) == before
    owner = roomsync("inventory", "--json", "--config", config)
    assert owner.returncode == 0, owner.stderr
    assert owner.stdout == read.stdout
    assert but_the_shm(files(state)) == but_the_shm(before)  # not merged into the database


def test_a_store_of_an_older_schema_is_left_to_the_daemon_to_migrate(place: Path) -> None:
    """roomsync upgraded, the daemon not restarted yet: the store is of the schema before.
    Not read (the read paths know the latest only), not migrated — by whoever asks — and the
    error says how it will be."""
    state = place / "state"
    state.mkdir()
    old = sqlite3.connect(state / DB_NAME, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for migration in MIGRATIONS[:-1]:
        for statement in migration.split(";"):
            if statement.strip():
                old.execute(statement)
    old.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    old.close()
    with held_open(state):  # the old daemon, still running
        read_only(state)
        before = files(state)
        config = str(configure(place))
        refused = as_someone_else("inventory", "--config", config)
        assert files(state) == before
        refused_owner = roomsync("events", "--config", config)  # its owner too
        assert but_the_shm(files(state)) == but_the_shm(before)
    for done in (refused, refused_owner):
        assert done.returncode == 2, done.stderr
        assert f"state database {state / DB_NAME} has schema {len(MIGRATIONS) - 1}, older" in done.stderr
        assert "systemctl restart roomsync-agent" in done.stderr and "sudo -u roomsync" in done.stderr
    with closing(sqlite3.connect(state / DB_NAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) - 1  # not migrated


def test_without_an_agent_id_the_outbox_and_the_snapshot_say_so(place: Path) -> None:
    """A store no outbox has used yet has no agent id; assigning one is a write: ``outbox``
    and ``export --format json`` say so, ``inventory`` reads on."""
    state = place / "state"
    with Store.open(state) as store:
        store.record_scan([unit("A1", T0)], [], T0)
    with held_open(state):
        read_only(state)
        before = files(state)
        config = str(configure(place))
        for command in (["outbox"], ["export", "--format", "json"]):
            done = as_someone_else(*command, "--config", config)
            assert done.returncode == 2, done.stderr
            assert f"no agent id is stored in {state / DB_NAME} yet" in done.stderr
        assert as_someone_else("inventory", "--config", config).returncode == 0
        assert files(state) == before


@pytest.mark.parametrize("name", list(READS))
def test_before_any_scan_a_read_only_command_creates_nothing(place: Path, name: str) -> None:
    """As before: an empty answer (``export --format json``, which has no snapshot to give, and
    ``support``, which has no unit to answer for: exit 1) and a line saying why — and no state
    directory left behind, even for a user who may create it."""
    done = roomsync(*READS[name], "--config", str(configure(place)))
    assert done.returncode == (1 if name in ("export-json", "support") else 0), done.stderr
    assert "no inventory stored" in done.stderr and "run roomsync scan first" in done.stderr
    assert not (place / "state").exists()


def test_trust_list_reads_a_store_it_may_not_write(place: Path, served: Path) -> None:
    """``roomsync trust collabos --list`` only reads the pins: a store the user may not write
    is read as for the read-only commands above (only --accept-new and --forget write)."""
    state = place / "state"
    with closing(sqlite3.connect(state / DB_NAME)) as db:
        pins = db.execute("SELECT count(*) FROM tls_pins").fetchone()[0]
    owner = roomsync("trust", "collabos", "--list", "--json", "--config", str(served))
    assert owner.returncode == 0, owner.stderr
    before = files(state)
    done = as_someone_else("trust", "collabos", "--list", "--json", "--config", str(served))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(owner.stdout) == {"pins": []} and pins == 0
    assert files(state) == before
    forget = as_someone_else("trust", "collabos", "10.1.2.3", "--forget", "--config", str(served))
    assert forget.returncode == 2 and "cannot" in forget.stderr + forget.stdout, forget
