"""Benchmark: SNMP sweep of 127.0.2.0/24 with 20 snmpsim responders, and of 127.0.0.0/20
under a packets-per-second cap. Prints figures; it is not a pass/fail test.

1. roomsync's sweep of 127.0.2.0/24 (timeout 1 s, retries 0), collecting ENTITY-MIB
   identity for every responder. The floor is one timeout (every silent address waited on in
   parallel); the target is wall time ≤ timeout + 0.5 s, with all 20 found.
2. The references on the same range: ``onesixtyone -p PORT -w 0`` (Debian package
   onesixtyone; a community sweep that waits a fixed 5 s, no identity) and, when installed,
   FusionInventory's netdiscovery task (Debian package fusioninventory-agent-task-network;
   ``apt-get install fusioninventory-agent-task-network``).
3. 127.0.0.0/20 (4,094 addresses) with a 2,000 packets/s cap: time and peak RSS growth
   (target ≤ 30 MB), measured in a fresh process.

    .venv/bin/python bench/snmp_sweep.py [--runs 3]

Traffic goes to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers_snmp import SimDevice, SnmpSim, entity_rows  # noqa: E402

PORT = 1161
TIMEOUT = 1.0


def devices() -> list[SimDevice]:
    out = []
    for i in range(1, 21):
        out.append(
            SimDevice.make(
                f"127.0.2.{i * 12}",
                sys_descr="Logitech Rally Bar",
                sys_name=f"RallyBar-{i:06d}",
                entity=entity_rows(f"2313FD{i:06d}", "VR0019", firmware=f"1.9.{i}"),
            )
        )
    return out


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sweep_once(target: str, *, concurrency: int, max_pps: float) -> dict[str, object]:
    """One roomsync sweep in this process; figures as a dict."""
    from agent.catalog import load_catalog
    from agent.collectors.snmp.client import V2cCredentials
    from agent.discovery import ScanContext
    from agent.discovery.snmp import SnmpSource

    source = SnmpSource(
        [target],
        V2cCredentials("public"),
        port=PORT,
        timeout=TIMEOUT,
        retries=0,
        concurrency=concurrency,
        max_pps=max_pps,
    )
    ctx = ScanContext(load_catalog(), datetime.now(UTC))
    before = rss_kib()
    started = time.perf_counter()
    result = asyncio.run(source.run(ctx))
    elapsed = time.perf_counter() - started
    identified = sum(1 for o in result.observations if o.serial and o.product == "Rally Bar")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": elapsed,
        "responders": len(result.observations),
        "identified": identified,
        "errors": len(result.errors),
        "rss_before_kib": before,
        "rss_peak_kib": peak,
        "requests": source.last_stats.requests if source.last_stats else None,
    }


def child_sweep(target: str, concurrency: int, max_pps: float) -> dict[str, object]:
    """Run :func:`sweep_once` in a fresh interpreter, so peak RSS belongs to that sweep."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from bench.snmp_sweep import sweep_once; "
        f"print(json.dumps(sweep_once({target!r}, concurrency={concurrency}, max_pps={max_pps!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_command(cmd: list[str], timeout: float = 600) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return time.perf_counter() - started, proc.stdout + proc.stderr


def onesixtyone(workdir: Path) -> str:
    exe = shutil.which("onesixtyone")
    if exe is None:
        return "onesixtyone: not installed (Debian package onesixtyone)"
    hosts = workdir / "hosts"
    hosts.write_text("\n".join(f"127.0.2.{i}" for i in range(1, 255)) + "\n")
    communities = workdir / "communities"
    communities.write_text("public\n")
    seconds, out = time_command([exe, "-p", str(PORT), "-w", "0", "-c", str(communities), "-i", str(hosts)])
    found = sum(1 for line in out.splitlines() if line.startswith("127.0.2."))
    return f"onesixtyone -w 0: {seconds:.2f} s, {found} found (sysDescr only, no ENTITY-MIB)"


def fusioninventory(workdir: Path) -> str:
    exe = shutil.which("fusioninventory-netdiscovery")
    if exe is None:
        return (
            "FusionInventory netdiscovery: not installed (apt-get install fusioninventory-agent-task-network)"
        )
    seconds, out = time_command(
        [
            exe,
            "--first",
            "127.0.2.1",
            "--last",
            "127.0.2.254",
            "--community",
            "public",
            "--port",
            str(PORT),
            "--timeout",
            "1",
            "--threads",
            "20",
        ]
    )
    found = out.count("<AUTHSNMP>")  # devices that answered SNMP (others are ping/NetBIOS hits)
    return f"FusionInventory netdiscovery (20 threads, timeout 1): {seconds:.2f} s, {found} SNMP devices"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, SnmpSim(Path(tmp) / "sim", devices(), port=PORT):
        print(f"snmpsim: 20 responders in 127.0.2.0/24 on UDP {PORT}; timeout {TIMEOUT} s, retries 0")
        runs = [child_sweep("127.0.2.0/24", 256, 0) for _ in range(args.runs)]
        seconds = [float(r["seconds"]) for r in runs]  # type: ignore[arg-type]
        median = statistics.median(seconds)
        last = runs[-1]
        print(
            f"roomsync /24: median {median:.3f} s over {args.runs} runs "
            f"(min {min(seconds):.3f}, max {max(seconds):.3f}); responders {last['responders']}, "
            f"identified with ENTITY-MIB serial {last['identified']}; target ≤ {TIMEOUT + 0.5:.1f} s"
        )
        ref = onesixtyone(Path(tmp))
        print(ref)
        if ": " in ref and " s," in ref:
            ref_s = float(ref.split(": ", 1)[1].split(" s", 1)[0])
            print(f"  ratio onesixtyone / roomsync: {ref_s / median:.1f}x")
        fi = fusioninventory(Path(tmp))
        print(fi)
        if "SNMP devices" in fi:
            fi_s = float(fi.rsplit(": ", 1)[1].split(" s", 1)[0])
            print(f"  ratio FusionInventory / roomsync: {fi_s / median:.1f}x")
        big = child_sweep("127.0.0.0/20", 2048, 2000)
        growth_mb = (int(big["rss_peak_kib"]) - int(big["rss_before_kib"])) / 1024  # type: ignore[call-overload]
        print(
            f"roomsync /20 (4,094 addresses, 2,000 packets/s cap): {float(big['seconds']):.2f} s "  # type: ignore[arg-type]
            f"(pacing alone needs {4094 / 2000:.2f} s + one timeout), responders {big['responders']}, "
            f"peak RSS growth {growth_mb:.1f} MB (target ≤ 30 MB)"
        )


if __name__ == "__main__":
    main()
