"""Benchmark: the CollabOS source reading 200 stand-in Rally Bar Minis at concurrency 32
(target: the sweep within 2x the time of one device's slowest call). Prints figures; it is
not a pass/fail test.

Each device is ``tests/collabos_standin.py``'s Rally Bar Mini on its own loopback address
(127.0.1.1, 127.0.1.2…, a free port each) with its own self-signed certificate, a Tap IP, a
Sight and a mic pod. Every reply is delayed 20–50 ms (fixed per device, seeded) and
``/api/v1/insights/room`` ``--room-insights-seconds`` more (2 s; a real device can take
15 s). The devices keep their documented rate limits (5 sign-ins, 10 calls a minute): every
phase stays within them, and they are emptied between phases (the probe's are off for the
floor's few calls).

The stand-in runs in a process of its own (``bench/collabos_standin_proc.py``, driven over a
pipe), as real devices are not in the agent's process: the agent's sweep does not share a GIL
with the devices, only the machine's cores. This process makes every certificate and key;
the stand-in's process serves them, reports each device's port,
and, after each run, the requests each device recorded and the TLS handshakes it received.
``--in-process`` serves them from a thread of this process instead (the stand-in's CPU then
shares the agent's GIL), to compare. The certificates are made, and the stand-in started,
before anything is timed (reported apart).

Measured in one run, beside a floor measured on the same devices in the same run (a ratio
holds on a noisy machine; a bare time drifts):

1. **floor**: one device's slowest call alone, ``GET /api/v1/insights/room`` signed in, on a
   kept-alive connection pinned with ``aiohttp.Fingerprint``, to a device with the slowest
   latency of the range (50 ms); best of ``--floor-runs``.
2. **one device**: ``CollabosSource([it]).run()`` at first contact (two TLS handshakes: a
   handshake-only probe, then the session's; a credential-less GET, the pin, the sign-in, the
   four reads) and again (token cached: one handshake, bound to the certificate stored with
   the pin; the four reads).
3. **the sweep**: ``CollabosSource(N hosts, concurrency=C)`` at first contact (a fresh state
   directory: every device pinned and signed in), again (tokens cached), and as a new source
   on the same state directory (pinned, signs in again: an agent restart, or every token
   expired; one handshake, no credential-less GET: 1 sign-in + 4 GETs): wall time, the ratio
   to the floor and the 2x target, observations and errors, CPU time of this process (the
   agent: its event loop's thread and the rest) and of the stand-in (its process, or its
   thread with ``--in-process``), the requests and handshakes each device recorded.
4. **the curve**: the same three sweeps at concurrency 8 and N (``--no-curve`` skips them).

Where the time goes, from the stand-in's arrival times (``time.monotonic()``: one clock for
every process on Linux): when the last ``GET /api/v1/insights/room`` arrived (the sweep is
that plus one room call: the 2x target asks for every device to reach its room call within
one room call's time), and each device's span from its first request to its room call, beside
what its replies' latency alone takes.

    .venv/bin/python bench/collabos_sweep.py [--devices 200] [--concurrency 32]
        [--room-insights-seconds 2] [--floor-runs 3] [--no-curve] [--in-process] [--json]
        [--profile FILE]

``--profile FILE`` writes a cProfile of the agent's thread during the first-contact sweep.
Traffic goes to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ipaddress
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from agent.catalog import Catalog, load_catalog  # noqa: E402
from agent.discovery import ScanContext  # noqa: E402
from agent.discovery.collabos import CollabosSource  # noqa: E402
from agent.log import configure  # noqa: E402
from bench.collabos_standin_proc import Controller, Seen, device_from_spec  # noqa: E402
from tests.collabos_standin import (  # noqa: E402
    DEVICE,
    INSIGHTS_DEVICE,
    INSIGHTS_ROOM,
    PERIPHERALS,
    SIGNIN,
    CollabosDevice,
    CollabosStandIn,
)

PASSWORD = "bench-s3cret"
LATENCY = (0.020, 0.050)
TARGET = 2.0
SEED = 20261201
#: The devices' documented rate limits (per minute).
SIGNIN_LIMIT, CALLS_LIMIT = 5, 10
HELPER = Path(__file__).with_name("collabos_standin_proc.py")
SHORT = {SIGNIN: "signin", DEVICE: "device", PERIPHERALS: "peripherals"}
SHORT |= {INSIGHTS_DEVICE: "insights/device", INSIGHTS_ROOM: "insights/room"}
#: What each device should see with the token cached: the four reads.
WARM = Counter(["GET device", "GET peripherals", "GET insights/device", "GET insights/room"])
#: Pinned, no token: the sign-in, then the four reads.
PINNED = WARM + Counter(["POST signin"])
#: First contact: the credential-less GET of /api/v1/device, the sign-in, the four reads.
COLD = PINNED + Counter(["GET device"])


# --------------------------------------------------------------------------- devices


def loopback(first: str, count: int) -> list[str]:
    """``count`` addresses from ``first`` on, skipping those ending in .0 and .255."""
    out: list[str] = []
    address = ipaddress.IPv4Address(first)
    while len(out) < count:
        if address.packed[-1] not in (0, 255):
            out.append(str(address))
        address += 1
    if ipaddress.IPv4Address(out[-1]) not in ipaddress.IPv4Network("127.0.0.0/8"):
        raise SystemExit("too many devices for 127.0.0.0/8")
    return out


def make_devices(
    count: int, directory: Path, room_seconds: float
) -> tuple[list[CollabosDevice], CollabosDevice, list[dict[str, Any]]]:
    """``count`` Rally Bar Minis with latencies in LATENCY, and the probe (slowest latency),
    their certificates made in ``directory``; and the specs the stand-in's process serves
    them from (the probe's first)."""
    rng = random.Random(SEED)
    room = {INSIGHTS_ROOM: room_seconds}
    hosts = zip(loopback("127.0.1.1", count), loopback("127.1.0.1", count), strict=True)
    devices = [("P0BE00", "127.0.0.2", "127.0.0.3", LATENCY[1])]  # the probe
    devices += [(f"{i:06d}", host, tap, rng.uniform(*LATENCY)) for i, (host, tap) in enumerate(hosts)]
    specs: list[dict[str, Any]] = [
        {
            "host": host,
            "serial": f"2232LZ{tag}",
            "tap_ip": tap,
            "tap_serial": f"2246FD{tag}",
            "password": PASSWORD,
            "latency": latency,
            "path_latency": dict(room),
        }
        for tag, host, tap, latency in devices
    ]
    made = [device_from_spec(spec, directory) for spec in specs]
    for spec, device in zip(specs, made, strict=True):
        spec.update(cert=str(device.tls.cert), key=str(device.tls.key))
    return made[1:], made[0], specs


# --------------------------------------------------------------------------- the stand-in


class StandIn:
    """The bench's side of the stand-in: ``ask`` sends one command of
    :class:`bench.collabos_standin_proc.Controller` and returns its answer."""

    in_process = False

    def describe(self) -> str:
        raise NotImplementedError

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def fresh(self, hosts: list[str]) -> float:
        """Empty the records, rate windows and handshake counts (tokens stay); the stand-in's
        CPU time now."""
        return float(self.ask({"cmd": "fresh", "hosts": hosts})["cpu"])

    def limits(self, hosts: list[str], signin: int | None, calls: int | None) -> None:
        self.ask({"cmd": "limits", "hosts": hosts, "signin": signin, "calls": calls})

    def records(self, hosts: list[str]) -> tuple[float, dict[str, list[Seen]], dict[str, int]]:
        """The stand-in's CPU time now, each device's requests and TLS handshakes."""
        reply = self.ask({"cmd": "records", "hosts": hosts})
        records = {h: [Seen(*r) for r in seen] for h, seen in reply["records"].items()}
        return float(reply["cpu"]), records, {h: int(n) for h, n in reply["handshakes"].items()}

    def finish(self) -> list[str]:
        """Stop serving; the stand-in's loop errors (failed handshakes…)."""
        return list(self.ask({"cmd": "stop"})["loop_errors"])

    def close(self) -> None:
        """Make sure it is stopped (any time, also after an error or Ctrl-C)."""


class ProcessStandIn(StandIn):
    """The devices served by ``bench/collabos_standin_proc.py`` in a process of its own,
    from the certificates this process made."""

    def __init__(self, devices: list[CollabosDevice], specs: list[dict[str, Any]]) -> None:
        self.devices, self.specs = devices, specs
        self.proc: subprocess.Popen[str] | None = None
        self.started_cpu = 0.0

    def describe(self) -> str:
        pid = self.proc.pid if self.proc is not None else "-"
        return f"the stand-in runs in its own process (pid {pid}, its own GIL)"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        reply = self.ask({"devices": self.specs})
        self.started_cpu = float(reply["cpu"])
        ports = reply["ports"]
        for device in self.devices:
            device.port = int(ports[device.host])

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the stand-in's process ended (exit {proc.wait(10)}); its errors above")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # end of input: it stops serving and exits
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


class ThreadStandIn(StandIn):
    """``--in-process``: the devices served from a thread of this process (the old way)."""

    in_process = True

    def __init__(self, devices: list[CollabosDevice]) -> None:
        self.standin = CollabosStandIn(*devices)
        self.thread: threading.Thread | None = None
        self.controller = Controller(self.standin, self.thread_cpu)
        self.started_cpu = 0.0

    def describe(self) -> str:
        return "the stand-in's thread shares this process (GIL) with the agent (--in-process)"

    def thread_cpu(self) -> float:
        if self.thread is None or self.thread.ident is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))

    def start(self) -> None:
        self.standin.start()
        self.thread = next(t for t in threading.enumerate() if t.name == "collabos-standin")
        self.started_cpu = self.thread_cpu()

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.controller.handle(message)

    def close(self) -> None:
        self.standin.stop()


# --------------------------------------------------------------------------- records


def seen(records: dict[str, list[Seen]], handshakes: dict[str, int]) -> dict[str, Any]:
    """The requests each device recorded, grouped by pattern, those not answered 200, and
    the TLS handshakes each received (the most common count)."""
    patterns: Counter[tuple[tuple[str, int], ...]] = Counter()
    not_ok = 0
    for requests in records.values():
        counts = Counter(f"{r.method} {SHORT.get(r.path, r.path)}" for r in requests)
        patterns[tuple(sorted(counts.items()))] += 1
        # The credential-less GET before a sign-in is answered 401, as it should be.
        not_ok += sum(1 for r in requests if r.status != 200 and not (r.status == 401 and not r.authorized))
    common, devices_with_it = patterns.most_common(1)[0]
    shakes, devices_shaking = Counter(handshakes.values()).most_common(1)[0]
    return {
        "pattern": dict(common),
        "devices": devices_with_it,
        "unexpected_status": not_ok,
        "handshakes": shakes,
        "handshakes_devices": devices_shaking,
    }


def timeline(records: dict[str, list[Seen]], latency: dict[str, float], start: float) -> dict[str, float]:
    """From the stand-in's arrival times (``time.monotonic()``, one clock for every process):
    when the last ``GET /insights/room`` arrived (after that the sweep only waits for the
    slowest room), and each device's span from its first request to its room GET, beside the
    least the replies before it take (their number times the device's latency)."""
    front, spans, least = 0.0, [], []
    for host, unsorted in records.items():
        requests = sorted(unsorted, key=lambda r: r.at)
        index = next((i for i, r in enumerate(requests) if r.path == INSIGHTS_ROOM), None)
        if index is None:
            continue
        front = max(front, requests[index].at - start)
        spans.append(requests[index].at - requests[0].at)
        least.append(index * latency[host])
    count = max(len(spans), 1)
    return {
        "last_room_get_at": front,
        "span_mean": sum(spans) / count,
        "span_max": max(spans, default=0.0),
        "span_latency_mean": sum(least) / count,
    }


def describe_pattern(pattern: dict[str, int]) -> str:
    signins = pattern.get("POST signin", 0)
    gets = sum(n for k, n in pattern.items() if k.startswith("GET "))
    return f"{signins} sign-in + {gets} GETs" if signins else f"{gets} GETs"


# --------------------------------------------------------------------------- floor


async def floor_calls(device: CollabosDevice, runs: int) -> list[float]:
    """Sign in once, then time ``GET /api/v1/insights/room`` ``runs`` times on a kept-alive
    connection pinned to the device's certificate."""
    connector = aiohttp.TCPConnector(ssl=device.fingerprint, limit=1)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        async with session.post(
            device.url + SIGNIN, json={"username": "admin", "password": PASSWORD}
        ) as response:
            token = (await response.json())["result"]["auth_token"]
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            async with session.get(
                device.url + INSIGHTS_ROOM, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"floor: GET {INSIGHTS_ROOM} answered {response.status}")
            times.append(time.perf_counter() - started)
        return times


# --------------------------------------------------------------------------- runs


def timed_run(
    source: CollabosSource,
    catalog: Catalog,
    devices: list[CollabosDevice],
    standin: StandIn,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One ``source.run`` in a fresh event loop: wall and CPU time, what it observed, what
    the devices saw."""
    hosts = [d.host for d in devices]
    standin0 = standin.fresh(hosts)
    ctx = ScanContext(catalog, datetime.now(UTC))
    profiler = cProfile.Profile() if profile is not None else None
    process0, agent0 = time.process_time(), time.thread_time()
    started, mono0 = time.perf_counter(), time.monotonic()
    if profiler is not None:
        profiler.enable()
    result = asyncio.run(source.run(ctx))
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - started
    process, agent = time.process_time() - process0, time.thread_time() - agent0
    standin1, records, handshakes = standin.records(hosts)
    stand_in = standin1 - standin0
    if standin.in_process:  # this process's CPU holds the stand-in's thread's
        process = max(process - stand_in, 0.0)
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    addresses = {d.address for d in devices}
    taps = {d.peripherals["ipControllers"][0]["ipAddress"]: d.address for d in devices}
    bars = {
        o.address
        for o in result.observations
        if o.product == "Rally Bar Mini" and o.address in addresses and o.serial
    }
    tap_ips = {
        o.address
        for o in result.observations
        if o.product == "Tap IP" and taps.get(o.address) == o.attributes.get("paired_with")
    }
    return {
        "seconds": wall,
        "cpu_agent": process,
        "cpu_agent_thread": agent,
        "cpu_agent_other": max(process - agent, 0.0),
        "cpu_standin": stand_in,
        "bars": len(bars),
        "tap_ips": len(tap_ips),
        "errors": [f"{e.target}: {e.message}" for e in result.errors],
        "requests": seen(records, handshakes),
        **timeline(records, {d.host: d.latency for d in devices}, mono0),
    }


#: The three runs of a sweep: (key, label, requests each device should see, its handshakes).
KINDS = (
    ("cold", "first contact", COLD, 2),
    ("warm", "token cached", WARM, 1),
    ("restart", "pinned, signs in", PINNED, 1),
)


def sweeps(
    hosts: list[str],
    concurrency: int,
    workdir: Path,
    password_file: Path,
    catalog: Catalog,
    devices: list[CollabosDevice],
    standin: StandIn,
    profile: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """``cold``: first contact (a fresh state directory, nothing pinned); ``warm``: the same
    source again (pinned, tokens cached); ``restart``: a new source on the same state
    directory, as after an agent restart or a token's expiry (pinned, signs in again)."""
    state = Path(tempfile.mkdtemp(prefix=f"c{concurrency}-", dir=workdir))

    def source() -> CollabosSource:
        return CollabosSource(hosts, concurrency=concurrency, state_dir=state, password_file=password_file)

    first = source()
    return {
        "cold": timed_run(first, catalog, devices, standin, profile),
        "warm": timed_run(first, catalog, devices, standin),
        "restart": timed_run(source(), catalog, devices, standin),
    }


# --------------------------------------------------------------------------- output


def time_row(label: str, run: dict[str, Any], floor: float) -> str:
    span = (
        f"{run['span_mean'] * 1000:5.0f} / {run['span_max'] * 1000:5.0f} "
        f"({run['span_latency_mean'] * 1000:.0f})"
    )
    return (
        f"{label:<28} {run['seconds']:7.2f} {run['seconds'] / floor:7.2f}x "
        f"{run['last_room_get_at']:9.2f}   {span}"
    )


def cost_row(label: str, run: dict[str, Any], expected: Counter[str], shakes: int, count: int) -> str:
    agent = f"{run['cpu_agent']:5.2f} = {run['cpu_agent_thread']:.2f} + {run['cpu_agent_other']:.2f}"
    cpu = f"{agent:<19} {run['cpu_standin']:8.2f}"
    req = run["requests"]
    shown = f"{req['devices']}/{count}: {describe_pattern(req['pattern'])}"
    if req["pattern"] != dict(expected) or req["devices"] != count:
        shown += f" (expected {describe_pattern(dict(expected))}: {req['pattern']})"
    if req["unexpected_status"]:
        shown += f", {req['unexpected_status']} answered neither 200 nor the expected 401"
    shown += f", {req['handshakes']} TLS"
    if req["handshakes"] != shakes or req["handshakes_devices"] != count:
        shown += f" ({req['handshakes_devices']}/{count}; expected {shakes})"
    observed = f"{run['bars']} bars, {run['tap_ips']} Tap IPs, {len(run['errors'])} errors"
    if run["errors"]:
        observed += f" (first: {run['errors'][0]})"
    return f"{label:<28} {cpu:<28} {shown:<36} {observed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--room-insights-seconds", type=float, default=2.0)
    parser.add_argument("--floor-runs", type=int, default=3, choices=range(1, 10), metavar="1..9")
    parser.add_argument("--no-curve", action="store_true", help="skip the sweeps at concurrency 8 and N")
    parser.add_argument(
        "--in-process", action="store_true", help="serve the stand-in from a thread of this process"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--profile", type=Path, help="cProfile of the agent's thread, first-contact sweep")
    args = parser.parse_args()
    if args.devices < 1 or args.concurrency < 1 or args.room_insights_seconds < 0:
        parser.error("--devices and --concurrency must be >= 1, --room-insights-seconds >= 0")
    configure("warning")
    catalog = load_catalog()
    count = args.devices
    figures: dict[str, Any] = {
        "devices": count,
        "concurrency": args.concurrency,
        "room_insights_seconds": args.room_insights_seconds,
        "latency_seconds": list(LATENCY),
        "standin": "thread" if args.in_process else "process",
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="collabos-sweep-") as tmp:
        workdir = Path(tmp)
        password_file = workdir / "collabos-password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        started = time.perf_counter()
        bars, probe, specs = make_devices(count, workdir / "certs", args.room_insights_seconds)
        figures["setup_certificates_seconds"] = time.perf_counter() - started
        standin: ThreadStandIn | ProcessStandIn = (
            ThreadStandIn([probe, *bars]) if args.in_process else ProcessStandIn([probe, *bars], specs)
        )
        try:
            started = time.perf_counter()
            standin.start()
            figures["setup_standin_seconds"] = time.perf_counter() - started
            figures["setup_standin_cpu"] = standin.started_cpu
            figures["standin_described"] = standin.describe()
            hosts = [d.address for d in bars]
            figures["addresses"] = f"{bars[0].host}–{bars[-1].host}"

            # 1. floor: the probe's slowest call alone (its rate limits off for the few calls).
            standin.limits([probe.host], None, None)
            calls = asyncio.run(floor_calls(probe, args.floor_runs))
            standin.limits([probe.host], SIGNIN_LIMIT, CALLS_LIMIT)
            floor = min(calls)
            figures["floor_seconds"] = floor
            figures["floor_runs"] = calls

            # 2. one device, first contact then token cached.
            one_dir = Path(tempfile.mkdtemp(prefix="one-", dir=workdir))
            one = CollabosSource([probe.address], state_dir=one_dir, password_file=password_file)
            figures["one_cold"] = timed_run(one, catalog, [probe], standin)
            figures["one_warm"] = timed_run(one, catalog, [probe], standin)

            # 3. the sweep.
            figures["sweep"] = sweeps(
                hosts, args.concurrency, workdir, password_file, catalog, bars, standin, args.profile
            )

            # 4. the curve.
            curve: dict[str, dict[str, Any]] = {}
            if not args.no_curve:
                for c in sorted({8, count} - {args.concurrency}):
                    curve[str(c)] = sweeps(hosts, c, workdir, password_file, catalog, bars, standin)
            figures["curve"] = curve
            figures["standin_loop_errors"] = len(standin.finish())
        finally:
            standin.close()
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu_this_process_total"] = self_usage.ru_utime + self_usage.ru_stime
    if not args.in_process:  # the stand-in's process, waited for: its whole life
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures["cpu_standin_process_total"] = usage.ru_utime + usage.ru_stime
    figures["load_after"] = os.getloadavg()[0]
    figures["target_seconds"] = TARGET * floor
    figures["target_met"] = {k: r["seconds"] <= TARGET * floor for k, r in figures["sweep"].items()}
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return
    report(figures, args, count)


def report(figures: dict[str, Any], args: argparse.Namespace, count: int) -> None:
    floor = figures["floor_seconds"]
    c = args.concurrency
    print(
        f"CollabOS sweep: {count} stand-in Rally Bar Minis ({figures['addresses']}, a port each), "
        f"replies +{LATENCY[0] * 1000:.0f}–{LATENCY[1] * 1000:.0f} ms, "
        f"/insights/room +{args.room_insights_seconds:g} s"
    )
    print(
        f"setup (not timed below): {count + 1} self-signed certificates and TLS contexts "
        f"{figures['setup_certificates_seconds']:.2f} s (this process); "
        f"stand-in started {figures['setup_standin_seconds']:.2f} s "
        f"({figures['setup_standin_cpu']:.2f} s of its CPU)"
    )
    print(
        f"{figures['standin_described']}; the machine's {figures['cpus']} cores are shared; "
        f"load average {figures['load_before']:.2f} before, {figures['load_after']:.2f} after"
    )
    total = f"CPU in all: this process {figures['cpu_this_process_total']:.2f} s"
    if "cpu_standin_process_total" in figures:
        child = figures["cpu_standin_process_total"]
        total += f" (with the certificates); the stand-in's process {child:.2f} s (getrusage, once it exited)"
    else:
        total += " (with the stand-in's thread and the certificates)"
    print(total)
    runs: list[tuple[str, dict[str, Any], Counter[str], int, int]] = [
        ("one device, first contact", figures["one_cold"], COLD, 2, 1),
        ("one device, token cached", figures["one_warm"], WARM, 1, 1),
    ]
    for conc, three in [(str(c), figures["sweep"]), *figures["curve"].items()]:
        runs += [
            (f"c={conc}, {label}", three[key], expected, shakes, count)
            for key, label, expected, shakes in KINDS
        ]
    print()
    print(f"{'':<28} {'wall s':>7} {'÷ floor':>8} {'room GETs':>9}   device span ms: mean / max")
    print(f"{'':<28} {'':>7} {'':>8} {'all in by':>9}   (its replies' latency alone)")
    shown = ", ".join(f"{t:.3f}" for t in figures["floor_runs"])
    print(f"{'floor: GET /insights/room':<28} {floor:7.3f} {1:7.2f}x {'':>9}   best of {shown}")
    for label, run, _, _, _ in runs:
        print(time_row(label, run, floor))
    print()
    print(f"{'':<28} {'agent CPU s':<19} {'stand-in':>8} {'requests, TLS handshakes':<36} observed")
    print(f"{'':<28} {'= loop + other':<19} {'CPU s':>8}")
    for label, run, expected, shakes, n in runs:
        print(cost_row(label, run, expected, shakes, n))
    if figures["standin_loop_errors"]:
        print(f"stand-in loop errors (failed handshakes…): {figures['standin_loop_errors']}")
    print()
    target = figures["target_seconds"]
    for key, label, _, _ in KINDS:
        run = figures["sweep"][key]
        verdict = "within" if run["seconds"] <= target else "NOT within"
        print(
            f"target: {count} devices at c={c}, {label}: {run['seconds']:.2f} s = "
            f"{run['seconds'] / floor:.2f}x the floor, {verdict} {TARGET:g}x ({target:.2f} s)"
        )


if __name__ == "__main__":
    main()
