"""The CollabOS stand-in of ``bench/collabos_sweep.py``, served from a process of its own (so
the agent's measured sweep does not share a GIL with its devices), and the commands the
bench sends it.

The bench makes every device's certificate and key (before anything is timed) and starts
``python bench/collabos_standin_proc.py``. Over its stdin and stdout, one JSON object a line:

* first the bench sends ``{"devices": [spec, ...]}`` (a spec: :func:`rally_bar_mini`'s
  arguments, ``cert`` and ``key`` the PEM files to serve); the process answers
  ``{"ports": {host: port}, "cpu": s}`` once every device accepts connections;
* then commands, each answered with one line (``cpu``: this process's CPU time so far, all
  its threads): ``fresh`` (empty the records, rate windows and handshake counts of ``hosts``),
  ``limits`` (``signin`` and ``calls`` per minute of ``hosts``, ``null``: off), ``records``
  (``{host: [[method, path, status, authorized, at], ...]}`` and ``{host: handshakes}``;
  ``at`` is ``time.monotonic()``, the same clock in every process on Linux) and ``stop``
  (the stand-in's loop errors; then the process exits).

End of input (the bench gone or closing the pipe) also stops it; it ignores SIGINT (Ctrl-C
reaches the bench, which ends it). Only loopback addresses are served. ``--in-process`` of
the bench uses :class:`Controller` directly, on a stand-in thread of its own process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.collabos_standin import (  # noqa: E402
    CollabosDevice,
    CollabosStandIn,
    TlsFiles,
    rally_bar_mini,
)


class Seen(NamedTuple):
    """One request a device recorded, as the bench needs it."""

    method: str
    path: str
    status: int | None
    authorized: bool
    at: float


def device_from_spec(spec: dict[str, Any], directory: Path | None = None) -> CollabosDevice:
    """A Rally Bar Mini from its spec: with ``cert`` and ``key``, serving those files (nothing
    is generated); without, making its certificate in ``directory``."""
    options = dict(spec)
    cert, key = options.pop("cert", None), options.pop("key", None)
    host = options.pop("host")
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host}: the bench serves loopback addresses only")
    if cert is not None and key is not None:
        options["tls"] = TlsFiles(Path(cert), Path(key), Path(cert))
        directory = Path(cert).parent
    if directory is None:
        raise ValueError(f"{host}: neither certificate files nor a directory for them")
    return rally_bar_mini(host, directory, **options)


class Controller:
    """The bench's commands over the devices of a stand-in not yet started (``start`` after
    building this: the handshake counters hook into each device's listening TLS context).
    ``cpu``: the stand-in's CPU time so far (this process's, or its thread's)."""

    def __init__(self, standin: CollabosStandIn, cpu: Callable[[], float]) -> None:
        self.standin = standin
        self.cpu = cpu
        self.devices = {d.host: d for d in standin.devices}
        self.handshakes = dict.fromkeys(self.devices, 0)
        for host, device in self.devices.items():
            self._count_handshakes(host, device)

    def _count_handshakes(self, host: str, device: CollabosDevice) -> None:
        """Count each ClientHello the device's listening socket receives: its TLS context
        calls the SNI callback at every handshake, with or without SNI."""
        front = device._front_context()
        pick = front.sni_callback
        assert pick is not None
        counts = self.handshakes

        def counting(connection: Any, server_name: Any, context: Any) -> Any:
            counts[host] += 1
            return pick(connection, server_name, context)

        front.sni_callback = counting

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        command = message.get("cmd")
        hosts = [self.devices[h] for h in message.get("hosts", [])]
        if command == "fresh":
            for device in hosts:
                device.clear()
                device.reset_rate_limits()
                self.handshakes[device.host] = 0
            return {"cpu": self.cpu()}
        if command == "limits":
            for device in hosts:
                device.signin_per_minute = message["signin"]
                device.calls_per_minute = message["calls"]
            return {"cpu": self.cpu()}
        if command == "records":
            cpu = self.cpu()  # before the records are gathered: what the run cost
            return {
                "cpu": cpu,
                "records": {
                    d.host: [
                        Seen(r.method, r.path, r.status, "Authorization" in r.headers, r.at)
                        for r in d.requests
                    ]
                    for d in hosts
                },
                "handshakes": {d.host: self.handshakes[d.host] for d in hosts},
            }
        if command == "stop":
            cpu = self.cpu()  # before: a stopped thread has no clock
            self.standin.stop()
            return {"cpu": cpu, "loop_errors": self.standin.loop_errors}
        raise ValueError(f"unknown command {command!r}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench ends this process
    # The protocol has stdout to itself: anything else printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def send(reply: dict[str, Any]) -> None:
        out.write(json.dumps(reply) + "\n")

    first = sys.stdin.readline()
    if not first:
        return
    devices = [device_from_spec(spec) for spec in json.loads(first)["devices"]]
    standin = CollabosStandIn(*devices)
    controller = Controller(standin, time.process_time)
    standin.start()
    try:
        send({"ports": {d.host: d.port for d in devices}, "cpu": time.process_time()})
        for line in sys.stdin:
            message = json.loads(line)
            send(controller.handle(message))
            if message.get("cmd") == "stop":
                break
    finally:
        standin.stop()
        out.close()


if __name__ == "__main__":
    main()
