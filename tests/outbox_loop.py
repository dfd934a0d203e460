"""A scan-and-push loop to kill: the process the crash test (tests/test_outbox_crash.py) and
``bench/crash.py`` run, SIGKILL and restart.

Each iteration is what a cron job of ``roomsync scan`` and ``roomsync push --once`` does,
through the real command line in this process (``agent.cli.main``), against a fake sysfs tree
and the portal stand-in::

    python -m tests.outbox_loop WORKDIR --portal-url URL [--once]

``WORKDIR`` holds ``agent.toml`` (the room changes with the iteration), ``token``, ``state/``
(the agent's store), ``sys/`` (the sysfs tree), ``iteration`` (the next iteration to run)
and ``phases.log`` (what the loop was doing: one ``<i> <phase> <monotonic time>`` line at
each step, written unbuffered, so the last line says where a kill landed).

Restartable and deterministic: iteration ``i`` scans the tree :func:`tree_state` ``(i)``
describes (made so by :func:`write_tree`, which a kill half way leaves for the next run to
finish); ``iteration`` is written (atomically) after the scan is stored, so a kill
before that runs ``i`` again — scanning the same tree again, which the store takes as a
second scan of the same devices. The truth the test compares the portal with is therefore
the store's ``events`` table, not a schedule: whatever the store committed must arrive.

The schedule makes every kind of event a USB scan can happen: units leave (absent two scans
in a row: ``remove_after_missed_scans = 2``) and come back, firmware (``bcdDevice``) changes,
the room changes (every unit moves), and a Rally Bar Mini claims the Rally Bar's serial now
and then (``serial.conflict``; its label-grade serial is its identity, so each switch also
adds one unit and later removes the other). The other units' serials change now and then
too (they are not label-grade: no event, but the snapshot changes).

The driver, :func:`run_crash`, starts the loop, waits for it to be ready, lets it run for a
random (seeded) time and kills it with SIGKILL, ``kills`` times; then it runs one clean
iteration (``--once``: scan, then push until the outbox is empty).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sysfs import add_device

TOKEN = "crash-test-token"
REMOVE_AFTER = 2

#: (sysfs port, product id, serial prefix): units without a Sync interface report their
#: firmware as bcdDevice, so changing it is a firmware.changed.
SLOTS = (
    ("1-1", 0x08E2, "2301SC"),  # Scribe
    ("1-2", 0x0866, "1843MU"),  # MeetUp
    ("1-3", 0x085F, "1911PZ"),  # PTZ Pro 2
    ("1-4", 0x085E, "2004BR"),  # Brio
    ("1-5", 0x0885, "2120DH"),  # Rally Display Hub
    ("1-6", 0x087A, "2219SI"),  # Sight
)
BAR = ("2-1", 0x089B, "2313FD1N08Z2")  # Rally Bar: always there
MINI = ("2-2", 0x08D3, "2402FDMINI01")  # Rally Bar Mini: sometimes claims the bar's serial


@dataclass(frozen=True, slots=True)
class Unit:
    port: str
    pid: int
    serial: str
    bcd: int


def tree_state(i: int) -> list[Unit]:
    """The USB units of iteration ``i``'s tree (a pure function of ``i``)."""
    units = [Unit(BAR[0], BAR[1], BAR[2], 0x0100)]
    for s, (port, pid, prefix) in enumerate(SLOTS):
        if (i + 7 * s) % 11 in (0, 1):  # gone two scans in a row: removed, then back
            continue
        revision = (i + 13 * s) // 29 % 2  # a new serial now and then (not label-grade)
        bcd = 0x0100 + (i + 3 * s) // 5 % 4  # firmware moves every 5 iterations
        units.append(Unit(port, pid, f"{prefix}{revision:02d}{s:04d}", bcd))
    if i % 4 != 3:
        serial = BAR[2] if (i // 13) % 3 == 0 else MINI[2]
        units.append(Unit(MINI[0], MINI[1], serial, 0x0100))
    return units


def room_of(i: int) -> str:
    return "oslo-4-12" if (i // 20) % 2 == 0 else "oslo-5-01"


PORTS = (BAR[0], MINI[0], *(slot[0] for slot in SLOTS))
_UNIT_FILE = "roomsync-test-unit"  # what a device entry was made for, written last


def write_tree(root: Path, i: int) -> Path:
    """Make ``root/sys`` iteration ``i``'s sysfs tree: entries of units gone are deleted,
    those of units changed rewritten. An entry is trusted only when its last file, naming
    the unit it was made for, says so: a kill half way leaves it to be rewritten."""
    tree = root / "sys"
    devices = tree / "bus" / "usb" / "devices"
    wanted = {unit.port: unit for unit in tree_state(i)}
    for n, port in enumerate(PORTS):
        unit = wanted.get(port)
        entry = devices / port
        if unit is None:
            shutil.rmtree(entry, ignore_errors=True)
            shutil.rmtree(devices / f"{port}:1.0", ignore_errors=True)
            continue
        try:
            if (entry / _UNIT_FILE).read_text() == repr(unit):
                continue
            (entry / _UNIT_FILE).unlink()
        except FileNotFoundError:
            pass
        add_device(
            tree,
            port,
            0x046D,
            unit.pid,
            bcd=unit.bcd,
            serial=unit.serial,
            manufacturer="Logitech",
            devnum=n + 2,
        )
        _atomic_write(entry / _UNIT_FILE, repr(unit))
    return tree


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(root: Path, i: int) -> Path:
    path = root / "agent.toml"
    _atomic_write(
        path,
        f'state_dir = "{root / "state"}"\n[room]\nid = "{room_of(i)}"\n'
        f"[store]\nremove_after_missed_scans = {REMOVE_AFTER}\n",
    )
    return path


def read_iteration(root: Path) -> int:
    try:
        return int((root / "iteration").read_text())
    except (FileNotFoundError, ValueError):
        return 0


# --------------------------------------------------------------------------- the loop process


class _Phases:
    """Appends ``<i> <phase>`` to phases.log at each step (one write(2) each); with
    ``die_at``, the process SIGKILLs itself right after writing that phase."""

    def __init__(self, path: Path, die_at: str | None = None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.iteration = 0
        self.die_at = die_at

    def mark(self, phase: str) -> None:
        os.write(self.fd, f"{self.iteration} {phase} {time.monotonic():.6f}\n".encode())
        if phase == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)


#: The steps marked inside the agent (before, and ``-done`` after): (owner, method, phase).
#: The POST's phase names the message's kind: ``post-events``, ``post-inventory``.
STEPS = (
    ("agent.store:Store", "record_scan", "store-scan"),  # the scan, its events: one transaction
    ("agent.uploader.outbox:Outbox", "queue_snapshot", "queue-snapshot"),
    ("agent.uploader.outbox:Outbox", "begin_attempt", "count-attempt"),
    ("agent.uploader.delivery:PortalTransport", "_send", "post"),  # the POST, until the reply is read
    ("agent.uploader.outbox:Outbox", "delivered", "mark-delivered"),
)
#: Every point a directed kill stops the loop at: each step's edges, and the loop's own.
KILL_POINTS = (
    "scan",
    *(
        f"{phase}{kind}{edge}"
        for _, _, phase in STEPS
        for kind in (("-events", "-inventory") if phase == "post" else ("",))
        for edge in ("", "-done")
    ),
    "next",
    "push",
)


def _marked(phases: _Phases, original: Callable[..., Any], phase: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(original):  # PortalTransport._send(self, session, token, message)

        async def marked_async(*args: Any, **kwargs: Any) -> Any:
            name = f"{phase}-{args[3].kind}"
            phases.mark(name)
            result = await original(*args, **kwargs)
            phases.mark(f"{name}-done")
            return result

        return wraps(original)(marked_async)

    def marked(*args: Any, **kwargs: Any) -> Any:
        phases.mark(phase)
        result = original(*args, **kwargs)
        phases.mark(f"{phase}-done")
        return result

    return wraps(original)(marked)


def _instrument(phases: _Phases) -> None:
    """Mark the steps of a scan and a push (wrapping, not changing, the agent's code)."""
    for where, name, phase in STEPS:
        module, _, cls = where.partition(":")
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, name, _marked(phases, getattr(owner, name), phase))


def _cli(argv: list[str]) -> int:
    from agent.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def iterate(root: Path, url: str, phases: _Phases, deadline: float) -> None:
    """One iteration: build the tree, scan (stored, events and a snapshot queued), note the
    next iteration, push until the outbox is empty."""
    i = read_iteration(root)
    phases.iteration = i
    phases.mark("tree")
    tree = write_tree(root, i)
    config = write_config(root, i)
    phases.mark("scan")
    code = _cli(["scan", "--config", str(config), "--sysfs-root", str(tree), "--no-libusb", "--json"])
    if code != 0:
        raise SystemExit(f"outbox_loop: roomsync scan exited {code} in iteration {i}")
    phases.mark("next")
    _atomic_write(root / "iteration", str(i + 1))
    phases.mark("push")
    code = _cli(
        [
            "push",
            "--once",
            "--config",
            str(config),
            "--portal-url",
            url,
            "--token-file",
            str(root / "token"),
            "--deadline",
            str(deadline),
        ]
    )
    if code != 0:
        raise SystemExit(f"outbox_loop: roomsync push exited {code} in iteration {i}")
    phases.mark("done")


def loop_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="scan-and-push loop for the crash test")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--portal-url", required=True)
    ap.add_argument("--once", action="store_true", help="one iteration, then exit")
    ap.add_argument("--die-at", choices=KILL_POINTS, help="SIGKILL itself at this point")
    ap.add_argument("--deadline", type=float, default=20.0, help="each push's --deadline")
    args = ap.parse_args(argv)
    root = args.workdir.resolve()
    (root / "token").write_text(TOKEN + "\n")
    # Everything a scan and a push import, imported before "ready": the kills land in the
    # loop, not in the interpreter's start.
    import aiohttp  # noqa: F401

    import agent.cli
    import agent.discovery.usb
    import agent.scan
    import agent.uploader.delivery
    import agent.uploader.snapshot  # noqa: F401
    from agent.catalog import load_catalog

    load_catalog()
    phases = _Phases(root / "phases.log", args.die_at)
    _instrument(phases)
    print("ready", flush=True)
    if args.once:
        iterate(root, args.portal_url, phases, args.deadline)
        return 0
    while True:
        iterate(root, args.portal_url, phases, args.deadline)


# --------------------------------------------------------------------------- the driver


@dataclass(slots=True)
class CrashRun:
    """What :func:`run_crash` did."""

    seed: int
    kills: int = 0  # random kills
    delays: list[float] = field(default_factory=list)
    phases: Counter[str] = field(default_factory=Counter)  # where the random kills landed
    directed: dict[str, str] = field(default_factory=dict)  # kill point -> where it died
    iterations: int = 0
    seconds: float = 0.0


def _last_phase(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - 200))
            lines = log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return "start"
    return lines[-1].split(" ")[1] if lines else "start"


def _start(root: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    repo = Path(__file__).resolve().parents[1]
    stderr = (root / "loop.stderr").open("a")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.outbox_loop", str(root), "--portal-url", url, *extra],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    finally:
        stderr.close()


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _loop_failed(root: Path, proc: subprocess.Popen[str], when: str) -> AssertionError:
    tail = (root / "loop.stderr").read_text()[-3000:]
    return AssertionError(f"the loop exited {proc.returncode} {when} (not killed):\n{tail}")


def _ready(root: Path, proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.wait(10)
        raise _loop_failed(root, proc, "before it was ready")


def run_crash(
    root: Path,
    url: str,
    *,
    kills: int,
    seed: int,
    max_delay: float = 0.3,
    directed: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> CrashRun:
    """Start the loop in ``root`` and SIGKILL it ``kills`` times, each after a random
    (``seed``) delay in [0, ``max_delay``) s from when it is ready; with ``directed``, then
    once at each of :data:`KILL_POINTS` (the loop kills itself there); then run one clean
    iteration. Raises AssertionError when the loop fails by itself."""
    rng = random.Random(seed)
    run = CrashRun(seed)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for k in range(kills):
        proc = _start(root, url)
        try:
            _ready(root, proc)
            delay = rng.uniform(0.0, max_delay)
            time.sleep(delay)
            if proc.poll() is not None:
                raise _loop_failed(root, proc, f"after {delay:.3f} s")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            _reap(proc)
        phase = _last_phase(root / "phases.log")
        run.kills += 1
        run.delays.append(delay)
        run.phases[phase] += 1
        log(f"kill {k + 1:2d}: after {delay * 1000:6.1f} ms, in {phase} (iteration {read_iteration(root)})")
    for point in KILL_POINTS if directed else ():
        proc = _start(root, url, "--die-at", point)
        try:
            _ready(root, proc)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the loop never reached {point} in 30 s") from None
            if proc.returncode != -signal.SIGKILL:
                raise _loop_failed(root, proc, f"before reaching {point}")
        finally:
            _reap(proc)
        run.directed[point] = _last_phase(root / "phases.log")
        log(f"directed kill at {point} (iteration {read_iteration(root)})")
    proc = _start(root, url, "--once")
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        _reap(proc)
    if proc.returncode != 0 or out.strip() != "ready":
        raise _loop_failed(root, proc, "in the clean run")
    run.iterations = read_iteration(root)
    run.seconds = time.perf_counter() - started
    return run


# --------------------------------------------------------------------------- what arrived


@dataclass(slots=True)
class Tally:
    """The portal stand-in's records against the store's: the figures of a crash run."""

    stored: list[tuple[str, str]]  # (event id, identity) in the store's order
    types: Counter[str]  # the stored events by type
    at_portal: list[tuple[str, str]]  # the stand-in's, once per id, in the order accepted
    carried: Counter[str]  # event id -> accepted messages (distinct keys) carrying it
    requests: int
    redelivered: int  # a key the stand-in already held (answered 200)
    refused: int  # any other non-2xx, or reset
    messages: int
    sequences: list[int]  # of every message accepted, in order
    snapshots: list[int]  # of the snapshots accepted, in order
    last_snapshot: dict[str, Any] | None  # what the outbox last queued (meta.last_snapshot)
    pending: int  # outbox messages and events left
    dropped_events: int

    @property
    def lost(self) -> list[str]:
        arrived = {event_id for event_id, _ in self.at_portal}
        return [event_id for event_id, _ in self.stored if event_id not in arrived]

    @property
    def carried_twice(self) -> list[str]:
        """Events the portal got in two different messages (only a key de-duplicates)."""
        return [event_id for event_id, n in self.carried.items() if n > 1]


def tally(state_dir: Path, portal: Any) -> Tally:
    """Read the store in ``state_dir`` and the stand-in ``portal``."""
    from agent.store import Store
    from agent.uploader.outbox import Outbox
    from agent.uploader.protocol import EventsMessage

    with Store.open(state_dir) as store:
        events = store.events(limit=None)
        stored = [(e.id, e.identity) for e in events]
        outbox = Outbox(store)
        stats = outbox.stats()
        rows = store.read("SELECT value FROM meta WHERE key = 'last_snapshot'")
    carried: Counter[str] = Counter()
    for accepted in portal.messages:
        if isinstance(accepted.message, EventsMessage):
            carried.update(str(e.id) for e in accepted.message.events)
    requests = portal.requests
    return Tally(
        stored=stored,
        types=Counter(str(e.type) for e in events),
        at_portal=[(str(e.id), e.identity) for e in portal.events],
        carried=carried,
        requests=len(requests),
        redelivered=sum(1 for r in requests if r.status == 200),
        refused=sum(1 for r in requests if r.status is None or r.status >= 300),
        messages=len(portal.messages),
        sequences=[a.message.sequence for a in portal.messages],
        snapshots=[m.sequence for m in portal.inventory],
        last_snapshot=json.loads(rows[0][0]) if rows else None,
        pending=stats.pending + stats.parked + stats.events_waiting,
        dropped_events=stats.dropped_events,
    )


if __name__ == "__main__":
    raise SystemExit(loop_main())
