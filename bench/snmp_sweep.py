"""Benchmark: the whole ``roomsync scan`` process sweeping SNMP ranges on loopback, against
onesixtyone and against floors measured in the same run. Prints figures; not pass/fail.

Peers: snmpsim serving 20 devices in 127.0.2.0/24 (tests/peers_snmp.py); everything else in
127.0.0.0/8 is silent. Every roomsync figure is a fresh process running the real CLI::

    .venv/bin/roomsync scan --snmp RANGE --snmp-port PORT --community public --no-store --json

with a configuration holding only ``[sources.snmp] max_pps`` (the default, 4000, unless
said), timeout 1 s, retries 0. ``--no-store`` keeps the store out of the figure.

1. /24 (127.0.2.0/24, 254 addresses): median wall time over ``--runs``, beside
   ``onesixtyone -p PORT -w 0`` on the same addresses (Debian package ``onesixtyone``:
   ``apt-get install -y onesixtyone``; the bench needs it for the ratio) and the ratio
   (target ≤ 0.3x onesixtyone).
2. /22 (127.0.0.0/22, 1,022 addresses): time and ratio to the /24 (target ≤ 1.3x).
3. /16 (127.0.0.0/16, 65,534 addresses) at ``max_pps = 5000``: time (target ≤ 20 s) and the
   process's peak RSS (target ≤ 80 MiB).

Floors, in the same run: a bare ``python -c pass`` (time and RSS), and a bare asyncio UDP
send-and-wait of the same address count at the same rate (one socket, one pre-encoded
datagram, one timeout after the last send): what any sweep at that rate must take.

    .venv/bin/python bench/snmp_sweep.py [--runs 3]

Traffic goes to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers_snmp import SimDevice, SnmpSim, entity_rows, free_udp_port  # noqa: E402

TIMEOUT = 1.0
DEFAULT_PPS = 4000
ROOMSYNC = str(Path(sys.executable).parent / "roomsync")

#: A bare sweep: one socket, the same datagram to every address at RATE, one timeout after
#: the last send. argv: first address (int), count, port, rate, timeout.
BARE = r"""
import asyncio, socket, sys, time
first, count, port = (int(a) for a in sys.argv[1:4])
rate, timeout = float(sys.argv[4]), float(sys.argv[5])
PROBE = bytes.fromhex(
    "302902010104067075626c6963a01c020401020304020100020100300e300c06082b060102010101000500"
)
async def main():
    loop = asyncio.get_running_loop()
    answers = 0
    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            nonlocal answers
            answers += 1
    transport, _ = await loop.create_datagram_endpoint(P, family=socket.AF_INET)
    start = time.monotonic()
    for i in range(count):
        slot = start + i / rate
        if slot > time.monotonic():
            await asyncio.sleep(slot - time.monotonic())
        transport.sendto(PROBE, (socket.inet_ntoa((first + i).to_bytes(4, "big")), port))
    await asyncio.sleep(timeout)
    transport.close()
    print(answers)
asyncio.run(main())
"""


def devices() -> list[SimDevice]:
    return [
        SimDevice.make(
            f"127.0.2.{i * 12}",
            sys_descr="Logitech Rally Bar",
            sys_name=f"RallyBar-{i:06d}",
            entity=entity_rows(f"2313FD{i:06d}", "VR0019", firmware=f"1.9.{i}"),
        )
        for i in range(1, 21)
    ]


def rss_of(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, the peak RSS (KiB) of exactly that process, and its stdout. The RSS is
    GNU time's (``/usr/bin/time -f %M``): a child's own ``wait4`` figure would include this
    bench's memory at the fork."""
    with tempfile.NamedTemporaryFile("w+") as out, tempfile.NamedTemporaryFile("w+") as rss:
        started = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
            check=False,
            timeout=600,
        )
        elapsed = time.perf_counter() - started
        out.seek(0)
        rss.seek(0)
        return elapsed, int(rss.read().split()[-1]), out.read()


def scan(target: str, port: int, config: Path) -> tuple[float, int, dict[str, object]]:
    env = dict(os.environ, ROOMSYNC_CONFIG=str(config))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte-code cached
    seconds, rss, out = rss_of(
        [
            ROOMSYNC,
            "scan",
            "--snmp",
            target,
            "--snmp-port",
            str(port),
            "--community",
            "public",
            "--no-store",
            "--json",
        ],
        env,
    )
    return seconds, rss, json.loads(out)


def bare(first: str, count: int, port: int, rate: float) -> tuple[float, int]:
    number = int.from_bytes(bytes(int(p) for p in first.split(".")), "big")
    seconds, rss, _ = rss_of(
        [sys.executable, "-c", BARE, str(number), str(count), str(port), str(rate), str(TIMEOUT)]
    )
    return seconds, rss


def identified(report: dict[str, object]) -> int:
    devices = report.get("devices") or []
    assert isinstance(devices, list)
    return sum(1 for d in devices if d.get("serial") and d.get("product") == "Rally Bar")


def onesixtyone(workdir: Path, port: int) -> tuple[float, int] | None:
    exe = shutil.which("onesixtyone")
    if exe is None:
        return None
    hosts = workdir / "hosts"
    hosts.write_text("\n".join(f"127.0.2.{i}" for i in range(1, 255)) + "\n")
    communities = workdir / "communities"
    communities.write_text("public\n")
    seconds, _, out = rss_of([exe, "-p", str(port), "-w", "0", "-c", str(communities), "-i", str(hosts)])
    return seconds, sum(1 for line in out.splitlines() if line.startswith("127.0.2."))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        default_cfg = work / "default.toml"
        default_cfg.write_text("")
        fast_cfg = work / "pps5000.toml"
        fast_cfg.write_text("[sources.snmp]\nmax_pps = 5000\n")
        port = free_udp_port("127.0.2.12")
        with SnmpSim(work / "sim", devices(), port=port):
            print(f"snmpsim: 20 responders in 127.0.2.0/24 on UDP {port}; timeout {TIMEOUT} s, retries 0")
            py = [rss_of([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
            py_s = statistics.median(p[0] for p in py)
            print(f"floor: python -c pass: {py_s:.3f} s, peak RSS {py[-1][1] / 1024:.1f} MiB")
            scan("127.0.2.0/24", port, default_cfg)  # warm-up: byte-code and page cache
            runs = [scan("127.0.2.0/24", port, default_cfg) for _ in range(args.runs)]
            s24 = statistics.median(r[0] for r in runs)
            last = runs[-1][2]
            floor24 = statistics.median(
                bare("127.0.2.1", 254, port, DEFAULT_PPS)[0] for _ in range(args.runs)
            )
            print(
                f"roomsync scan /24 (254 addresses, max_pps {DEFAULT_PPS}): median {s24:.3f} s over "
                f"{args.runs} runs (min {min(r[0] for r in runs):.3f}, max {max(r[0] for r in runs):.3f}); "
                f"{len(last['devices'])} responders, {identified(last)} identified with ENTITY-MIB serial; "  # type: ignore[arg-type]
                f"peak RSS {runs[-1][1] / 1024:.1f} MiB"
            )
            print(f"  floor: bare asyncio send-and-wait, 254 addresses at {DEFAULT_PPS}/s: {floor24:.3f} s")
            ref = onesixtyone(work, port)
            if ref is None:
                print("onesixtyone: not installed (apt-get install -y onesixtyone): no ratio")
            else:
                print(
                    f"onesixtyone -p {port} -w 0, same 254 addresses: {ref[0]:.3f} s, "
                    f"{ref[1]} found (sysDescr only)"
                )
                print(f"  ratio roomsync / onesixtyone: {s24 / ref[0]:.2f}x (target <= 0.3x)")
            runs22 = [scan("127.0.0.0/22", port, default_cfg) for _ in range(args.runs)]
            s22 = statistics.median(r[0] for r in runs22)
            floor22 = bare("127.0.0.1", 1022, port, DEFAULT_PPS)[0]
            print(
                f"roomsync scan /22 (1,022 addresses, max_pps {DEFAULT_PPS}): median {s22:.3f} s, "
                f"{identified(runs22[-1][2])} identified; ratio to the /24: {s22 / s24:.2f}x (target <= 1.3x)"
            )
            print(f"  floor: bare asyncio send-and-wait, 1,022 addresses at {DEFAULT_PPS}/s: {floor22:.3f} s")
            s16, rss16, report16 = scan("127.0.0.0/16", port, fast_cfg)
            floor16, floor16_rss = bare("127.0.0.1", 65534, port, 5000)
            print(
                f"roomsync scan /16 (65,534 addresses, max_pps 5000): {s16:.2f} s (target <= 20 s), "
                f"peak RSS {rss16 / 1024:.1f} MiB (target <= 80 MiB), {identified(report16)} identified, "
                f"messages {report16.get('messages')}"
            )
            print(
                f"  floor: bare asyncio send-and-wait, 65,534 addresses at 5000/s: {floor16:.2f} s, "
                f"peak RSS {floor16_rss / 1024:.1f} MiB"
            )


if __name__ == "__main__":
    main()
