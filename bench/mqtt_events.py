"""Benchmark: events/s the MQTT output publishes to a real Mosquitto, beside a bare paho floor.

Change events published by roomsync's MQTT output to a real Mosquitto on 127.0.0.1, beside a
bare paho-mqtt floor measured on the same bytes in the same run (events/s and messages/s; it
is not a pass/fail test).

The broker is tests/peers_mqtt.py's: Mosquitto on a free loopback port, a password file with
the tests' user (no anonymous access), no persistence, nothing subscribed (it answers each
QoS 1 ``PUBLISH`` with ``PUBACK`` and drops it). The store is a real SQLite
``agent.store.Store`` (WAL, ``synchronous=FULL``: every commit is an fsync) in a temporary
directory (``--tmp`` says where; its file system is printed).

**Batched** (``--events``, default 20,000): a store of N units (USB Rally Bars, as
tests/test_outbox.py's ``unit``) whose MQTT queue has taken its first events (a fresh
output's first ``take_events`` only sets its cursor to the latest event), then a scan in which
every unit's firmware changed: N ``firmware.changed`` events waiting. That store is built once and copied
for each run. Timed, per run, as ``roomsync push`` does it: ``Outbox.take_events`` (the events
read from the store, built into ``roomsync.events.v1`` messages of up to 1,000, serialised,
gzipped, written in one transaction) then ``Delivery.run`` with ``MqttOutput.transport(...,
persistent=False)`` until the queue is empty (connect with user and password, the retained
``online`` status, each message gunzipped and published with QoS 1 on ``<prefix>/events``
waiting for ``PUBACK``, its attempt and delivery committed to the store, the ``offline``
status, disconnect). ``Delivery.run``'s sends (``Attempt.seconds``: gunzip, publish, ``PUBACK``;
the first one connects) are shown apart from the rest (store commits, goodbye).

Its floor: the decompressed bodies of the very messages that run queued (read from the outbox
before delivery, gunzipped outside the timing) published to the same broker and topic by a bare
``paho.mqtt.client.Client`` (MQTT 5, QoS 1, ``wait_for_publish``, one at a time): connect,
the publishes, disconnect. The ratio roomsync / floor is per run (this machine is shared and
noisy: a ratio holds where a bare time drifts).

**Single-event messages** (``--small``, default 500): how the daemon delivers when events come
one at a time: a scan changes one unit's firmware (not timed), ``take_events`` queues it as one
message of one event, ``Delivery.run`` publishes it over a persistent connection (made by a
first, untimed message); taken one after another without delivering, they would join one
message (a never-attempted events message takes the events that follow). Per message: a
``take_events`` transaction, the attempt counted, gunzip + publish + ``PUBACK``, the delivery
committed. Floor: the same bodies, gunzipped, each published alone over a bare paho
connection already open. A reference line times one small SQLite commit (WAL,
``synchronous=FULL``) in the same directory: the store's part of a message is about three of
them.

Every run times roomsync then its floor; a first run warms up and is not counted. Prints the
load average at the start and at the end, so a reader can judge the noise.

    .venv/bin/python -m bench.mqtt_events [--events 20000] [--small 500] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.log import configure
from agent.store import Store
from agent.uploader.delivery import Delivery
from agent.uploader.outbox import Outbox, QueuedMessage
from agent.uploader.outputs import MqttOutput, MqttTransport, make_outbox
from tests.peers_mqtt import LOOPBACK, PASSWORD, USER, Mosquitto, require_mosquitto
from tests.usb_units import scan, unit

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
AGENT = "b3e7c0de-0000-4000-8000-00000000be7c"
USER_AGENT = "roomsync-bench"
TIMEOUT = 10.0


class Floor:
    """A bare paho-mqtt client: MQTT 5, one connection, QoS 1, one publish at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connected = threading.Event()
        self._refused: str | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-floor", protocol=mqtt.MQTTv5)
        client.username_pw_set(USER, PASSWORD)
        client.on_connect = self._on_connect
        self.client = client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def connect(self) -> None:
        self.client.connect(LOOPBACK, self.port, keepalive=60)
        self.client.loop_start()
        if not self._connected.wait(TIMEOUT) or self._refused is not None:
            self.close()
            raise SystemExit(f"the floor's client could not connect: {self._refused or 'no CONNACK'}")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise SystemExit(f"the floor's client got no PUBACK within {TIMEOUT:g} s")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


@dataclass
class Batched:
    """One run of the batched case (seconds)."""

    take: float
    deliver: float
    sends: float
    floor_connect: float
    floor_publish: float
    floor_close: float
    messages: int
    sizes: list[int]
    raw: list[int]
    types: Counter[str]

    @property
    def total(self) -> float:
        return self.take + self.deliver

    @property
    def floor(self) -> float:
        return self.floor_connect + self.floor_publish + self.floor_close


@dataclass
class Single:
    """One run of the single-event case: per message (seconds)."""

    take: list[float] = field(default_factory=list)
    deliver: list[float] = field(default_factory=list)
    sends: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.take) + sum(self.deliver)


def output_for(port: int, password_file: Path) -> MqttOutput:
    return MqttOutput(
        url=f"mqtt://{LOOPBACK}:{port}", username=USER, password_file=password_file, timeout=TIMEOUT
    )


def outbox_of(store: Store, output: MqttOutput) -> Outbox:
    return make_outbox(store, output, agent_id=AGENT, version="bench", hostname="bench-host")


def prepare(state: Path, output: MqttOutput, events: int) -> None:
    """A store with ``events`` firmware changes waiting in the MQTT queue (not yet taken)."""
    with Store.open(state) as store:
        scan(store, [unit(i, T0) for i in range(events)], T0)
        assert outbox_of(store, output).take_events(T0) == 0  # the cursor set: the MQTT queue starts here
        later = T0 + timedelta(minutes=1)
        stored = scan(store, [unit(i, later, firmware="2.0") for i in range(events)], later)
        assert stored == events, f"{stored} events stored, not {events}"


def floor_session(port: int, topic: str, payloads: list[bytes]) -> tuple[float, float, float]:
    """Connect, publish each payload, disconnect: the three times."""
    floor = Floor(port)
    t0 = time.perf_counter()
    floor.connect()
    t1 = time.perf_counter()
    try:
        for payload in payloads:
            floor.publish(topic, payload)
        t2 = time.perf_counter()
    finally:
        floor.close()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def batched_run(prepared: Path, state: Path, output: MqttOutput, port: int, events: int) -> Batched:
    shutil.copytree(prepared, state)
    try:
        with Store.open(state) as store:
            outbox = outbox_of(store, output)
            delivery = Delivery(outbox, output.transport(outbox.agent, user_agent=USER_AGENT))
            t0 = time.perf_counter()
            taken = outbox.take_events(datetime.now(UTC))
            t1 = time.perf_counter()
            queued = outbox.messages(with_body=True)
            t2 = time.perf_counter()
            result = asyncio.run(delivery.run(deadline=time.monotonic() + 120))
            t3 = time.perf_counter()
            assert taken == events, f"{taken} events taken, not {events}"
            assert result.stopped_because == "empty" and not result.retries, result
            assert (result.delivered, result.events_delivered) == (len(queued), events), result
            assert outbox.stats().empty
    finally:
        shutil.rmtree(state, ignore_errors=True)
    payloads = [gzip.decompress(m.body) for m in queued]
    topic = f"{output.prefix(AGENT)}/events"
    connect_s, publish_s, close_s = floor_session(port, topic, payloads)
    types = Counter(e["type"] for p in payloads for e in json.loads(p)["events"])
    return Batched(
        take=t1 - t0,
        deliver=t3 - t2,
        sends=sum(a.seconds for a in result.attempts),
        floor_connect=connect_s,
        floor_publish=publish_s,
        floor_close=close_s,
        messages=len(queued),
        sizes=[m.size for m in queued],
        raw=[len(p) for p in payloads],
        types=types,
    )


async def single_messages(
    store: Store, outbox: Outbox, transport: MqttTransport, count: int, run: Single
) -> list[QueuedMessage]:
    """``count`` one-event messages, each taken and delivered as its scan stored it; the first
    (which connects) is not counted. Returns the messages, bodies included."""
    delivery = Delivery(outbox, transport)
    sent: list[QueuedMessage] = []
    try:
        for k in range(count + 1):
            at = T0 + timedelta(seconds=k + 1)
            assert scan(store, [unit(0, at, firmware=f"1.{k + 1}")], at) == 1
            t0 = time.perf_counter()
            taken = outbox.take_events(datetime.now(UTC))
            t1 = time.perf_counter()
            [message] = outbox.messages(with_body=True)
            t2 = time.perf_counter()
            result = await delivery.run(deadline=time.monotonic() + 30)
            t3 = time.perf_counter()
            assert taken == 1 and message.events == 1, (taken, message)
            assert (result.delivered, result.events_delivered, result.retries) == (1, 1, 0), result
            if k:
                run.take.append(t1 - t0)
                run.deliver.append(t3 - t2)
                run.sends.append(sum(a.seconds for a in result.attempts))
                sent.append(message)
    finally:
        await transport.shutdown()
    return sent


def single_run(state: Path, output: MqttOutput, port: int, count: int) -> Single:
    run = Single()
    try:
        with Store.open(state) as store:
            outbox = outbox_of(store, output)
            scan(store, [unit(0, T0)], T0)
            assert outbox.take_events(T0) == 0  # the cursor set
            transport = output.transport(outbox.agent, user_agent=USER_AGENT, persistent=True)
            assert isinstance(transport, MqttTransport)
            sent = asyncio.run(single_messages(store, outbox, transport, count, run))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    payloads = [gzip.decompress(m.body) for m in sent]
    topic = f"{output.prefix(AGENT)}/events"
    floor = Floor(port)
    floor.connect()
    try:
        for payload in payloads:
            t0 = time.perf_counter()
            floor.publish(topic, payload)
            run.floor.append(time.perf_counter() - t0)
    finally:
        floor.close()
    return run


def commit_reference(directory: Path, count: int = 60) -> list[float]:
    """One small SQLite commit (WAL, ``synchronous=FULL``) in ``directory``, ``count`` times."""
    path = directory / "commit-reference.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        seconds = []
        for i in range(count):
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            db.execute("COMMIT")
            seconds.append(time.perf_counter() - t0)
    finally:
        db.close()
    return seconds[count // 6 :]  # the first ones set the WAL file up


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), else ``?``."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    where = str(path.resolve())
    for row in mounts:
        parts = row.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min; {os.cpu_count()} CPUs)"


def spread(values: list[float], fmt: str, scale: float = 1.0) -> str:
    shown = [v * scale for v in values]
    return f"median {statistics.median(shown):{fmt}}   min {min(shown):{fmt}}   max {max(shown):{fmt}}"


def row(name: str, values: list[float], fmt: str, unit_: str = "", note: str = "", scale: float = 1.0) -> str:
    return f"  {name:<34} {spread(values, fmt, scale)}{unit_}{note}"


def runs_after(runs: list[Any]) -> str:
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} after a warm-up"


def report_batched(runs: list[Batched], events: int) -> None:
    first = runs[0]
    kinds = ", ".join(f"{n:,} {t}" for t, n in first.types.most_common())
    print(
        f"batched: {events:,} events ({kinds}) in {first.messages} messages "
        f"(median {statistics.median(first.raw) / 1e3:.0f} kB JSON, "
        f"{statistics.median(first.sizes) / 1e3:.1f} kB gzip stored), {runs_after(runs)}"
    )
    print(row("events/s roomsync (take+deliver)", [events / r.total for r in runs], "9,.0f"))
    print(row("events/s floor (bare paho)", [events / r.floor for r in runs], "9,.0f"))
    print(row("messages/s roomsync", [r.messages / r.total for r in runs], "9,.1f"))
    print(row("messages/s floor", [r.messages / r.floor for r in runs], "9,.1f"))
    print(row("ratio roomsync / floor", [r.total / r.floor for r in runs], "9.2f", " x", "   (per run)"))
    print(
        row(
            "ratio Delivery.run / floor",
            [r.deliver / r.floor for r in runs],
            "9.2f",
            " x",
            "   (take left out)",
        )
    )
    ms = 1000.0
    print(
        row(
            "take_events",
            [r.take for r in runs],
            "9.1f",
            " ms",
            "   (read, build, serialise, gzip, 1 commit)",
            ms,
        )
    )
    print(row("Delivery.run", [r.deliver for r in runs], "9.1f", " ms", "   (connect … disconnect)", ms))
    print(
        row(
            "  sends (Attempt.seconds)",
            [r.sends for r in runs],
            "9.1f",
            " ms",
            "   (gunzip, publish, PUBACK; the 1st connects)",
            ms,
        )
    )
    print(
        row(
            "  rest",
            [r.deliver - r.sends for r in runs],
            "9.1f",
            " ms",
            f"   ({2 * first.messages} commits, offline, disconnect)",
            ms,
        )
    )
    print(row("floor (connect+publish+close)", [r.floor for r in runs], "9.1f", " ms", "", ms))
    print(row("  floor: connect", [r.floor_connect for r in runs], "9.1f", " ms", "", ms))
    print(
        row(
            "  floor: publishes",
            [r.floor_publish for r in runs],
            "9.1f",
            " ms",
            f"   ({first.messages} x QoS 1, one at a time)",
            ms,
        )
    )


def report_single(runs: list[Single], count: int, commits: list[float]) -> None:
    print(
        f"single-event messages: {count} messages of 1 firmware.changed event each, taken and "
        f"delivered as each scan stored it (persistent connection), {runs_after(runs)}"
    )
    print(row("messages/s roomsync (take+deliver)", [count / r.total for r in runs], "9,.1f"))
    print(row("messages/s floor (bare paho)", [count / sum(r.floor) for r in runs], "9,.1f"))
    print(row("ratio roomsync / floor", [r.total / sum(r.floor) for r in runs], "9.2f", " x", "   (per run)"))
    ms = 1000.0
    take = [t for r in runs for t in r.take]
    deliver = [t for r in runs for t in r.deliver]
    sends = [t for r in runs for t in r.sends]
    rest = [d - s for r in runs for d, s in zip(r.deliver, r.sends, strict=True)]
    floor = [t for r in runs for t in r.floor]
    print("  per message, over every run's messages:")
    print(row("  take_events", take, "9.2f", " ms", "   (1 commit)", ms))
    print(row("  Delivery.run", deliver, "9.2f", " ms", "", ms))
    print(row("    send (Attempt.seconds)", sends, "9.2f", " ms", "   (gunzip + publish + PUBACK)", ms))
    print(row("    rest", rest, "9.2f", " ms", "   (2 commits: attempt, delivered; reads)", ms))
    print(row("  floor: one publish", floor, "9.2f", " ms", "", ms))
    print(row("  one SQLite commit (reference)", commits, "9.2f", " ms", "   (WAL, synchronous=FULL)", ms))


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="events of the batched case")
    ap.add_argument("--small", type=int, default=500, help="single-event messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tmp", type=Path, default=None, help="where the state and the broker go")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2,000 events, 20 messages, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.events, args.small, args.runs = 2_000, 20, 1
    if args.events < 1 or args.small < 1 or args.runs < 1:
        ap.error("--events, --small and --runs must be at least 1")
    configure("warning")
    signal.signal(signal.SIGTERM, _interrupted)
    broker_path = require_mosquitto()[0]
    version = subprocess.run([broker_path, "-h"], capture_output=True, text=True, check=False).stdout
    version = version.splitlines()[0] if version else "mosquitto"
    print(f"load average at the start: {load()}")
    with tempfile.TemporaryDirectory(prefix="roomsync-mqtt-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        broker = Mosquitto.start(root / "broker", users={USER: PASSWORD})
        try:
            print(
                f"{version} on {LOOPBACK}:{broker.port}; state in {root} "
                f"({file_system(root)}; SQLite WAL, synchronous=FULL)"
            )
            (root / "mqtt-password").write_text(PASSWORD + "\n")
            output = output_for(broker.port, root / "mqtt-password")
            t0 = time.perf_counter()
            prepare(root / "prepared", output, args.events)
            built = time.perf_counter() - t0
            print(f"  (store of {args.events:,} units with their changes built in {built:.1f} s)")
            batched: list[Batched] = []
            single: list[Single] = []
            for run in range(args.runs + 1):  # the first run warms up
                got = batched_run(root / "prepared", root / "run", output, broker.port, args.events)
                small = single_run(root / "small", output, broker.port, args.small)
                if run:
                    batched.append(got)
                    single.append(small)
            commits = commit_reference(root)
        finally:
            broker.stop()
    report_batched(batched, args.events)
    report_single(single, args.small, commits)
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; the broker is stopped and the temporary directory removed", file=sys.stderr)
        sys.exit(130)
