"""``roomsync run`` as systemd runs it: a subprocess with a notify socket and a watchdog, its
configuration pointing at real peers on loopback — net-snmp ``snmpd``, a zeroconf publisher
pinned to 127.0.0.1, the portal stand-in, a fake sysfs tree — and ``roomsync health`` asking
it. Every daemon here listens on 127.0.0.1 (or a unix socket) and browses mDNS on 127.0.0.1
only (or not at all).

One daemon (``site_daemon``) is shared by the tests that only look at it; tests that need
their own configuration, or end the daemon, start their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_peer import (
    LOOPBACK,
    NotifySocket,
    RunningDaemon,
    daemon_env,
    free_tcp_port,
    launch,
    short_dir,
    start_daemon,
    toml_str,
)
from tests.peers_mdns import RUN_TOKEN, Publisher, Service
from tests.peers_snmp import Snmpd, entity_rows
from tests.peers_ssh import keygen
from tests.shared import require_tool
from tests.sysfs import add_device
from tools.portal_standin import PortalStandIn

RALLY_BAR, SCRIBE, BRIO = 0x089B, 0x08E2, 0x085E
LOGITECH = 0x046D
USB_SERIAL, SNMP_SERIAL = "2313FD1N08Z2", "2325LZ51XY58"
PORTAL_TOKEN = "portal-test-token"
COMMUNITY = "site-secret"
MDNS_HOST = f"RallyBar-{RUN_TOKEN}D.local."
#: The issue's budget from a device directory appearing to its event at the portal.
HOTPLUG_BUDGET_S = 3.0
#: The issue's budget from SIGTERM to exit.
STOP_BUDGET_S = 10.0


# --------------------------------------------------------------------------- helpers


def usb_section(sysfs: Path, *, poll: float = 1.0, interval: float = 300.0) -> str:
    return (
        f"[sources.usb]\nsysfs_root = {toml_str(sysfs)}\nlibusb_strings = false\n"
        f"sync_interface = false\nhotplug_poll = {poll}\ninterval = {interval}\n"
    )


MDNS_OFF = "[sources.mdns]\nenabled = false\n"


def api_section(listen: str, token_file: Path | None = None) -> str:
    text = f"[api]\nlisten = {toml_str(listen)}\n"
    return text + (f"token_file = {toml_str(token_file)}\n" if token_file else "")


def write_config(path: Path, *sections: str, state_dir: Path, room: str | None = None) -> Path:
    head = f"state_dir = {toml_str(state_dir)}\n"
    if room:
        head += f"[room]\nid = {toml_str(room)}\n"
    path.write_text(head + "".join(sections))
    return path


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(None),
    )


def added(events: list[dict], serial: str) -> bool:
    return any(e["type"] == "device.added" and e["serial"] == serial for e in events)


def portal_has(portal: PortalStandIn, serial: str) -> bool:
    return any(str(e.type) == "device.added" and e.serial == serial for e in portal.events)


@dataclass
class Own:
    """A daemon of one test: its files and the daemon."""

    dir: Path
    notify: NotifySocket
    daemon: RunningDaemon | None = None


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Own]:
    notify = NotifySocket.make()
    holder = Own(tmp_path, notify)
    try:
        yield holder
    finally:
        if holder.daemon is not None:
            holder.daemon.stop()
        notify.close()


def start_own(
    own: Own,
    *sections: str,
    room: str | None = None,
    args: tuple[str, ...] = (),
    listen: str | None = None,
    token: str | None = None,
    state_dir: Path | None = None,
) -> RunningDaemon:
    """A daemon of the test's own: USB on ``own.dir/sys`` unless ``sections`` name sources."""
    port = free_tcp_port()
    listen = listen or f"{LOOPBACK}:{port}"
    url = f"http://{LOOPBACK}:{port}"
    token_file = own.dir / "api-token" if token else None
    if token_file is not None:
        token_file.write_text(f"{token}\n")
    config = write_config(
        own.dir / "agent.toml",
        *sections,
        api_section(listen, token_file),
        state_dir=state_dir or own.dir / "state",
        room=room,
    )
    own.daemon = start_daemon(config, own.notify, own.dir / "daemon.log", url=url, args=args, token=token)
    return own.daemon


# --------------------------------------------------------------------------- the shared daemon


@dataclass
class Site:
    dir: Path
    sysfs: Path
    token_file: Path
    portal: PortalStandIn
    snmpd: Snmpd
    daemon: RunningDaemon


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One daemon with every source on loopback peers: USB (fake sysfs), SNMP (snmpd), mDNS
    (a zeroconf publisher, browsed on 127.0.0.1 only), and the portal stand-in."""
    work = tmp_path_factory.mktemp("daemon-site")
    sysfs = work / "sys"
    add_device(sysfs, "2-1.1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, product="Logi Rally Bar", devnum=3)
    token_file = work / "portal-token"
    token_file.write_text(PORTAL_TOKEN + "\n")
    services = [Service("_https._tcp.local.", f"Rally Bar {RUN_TOKEN}D", MDNS_HOST, 443)]
    notify = NotifySocket.make()
    with (
        Snmpd(
            work / "snmpd",
            sys_descr="Logitech Rally Bar",
            community=COMMUNITY,
            entity=entity_rows(SNMP_SERIAL, "VR0019", firmware="1.9.556"),
        ) as snmpd,
        Publisher(services, workdir=work) as _publisher,
        PortalStandIn(PORTAL_TOKEN) as portal,
    ):
        port = free_tcp_port()
        config = write_config(
            work / "agent.toml",
            usb_section(sysfs),  # the default hot-plug poll: 1 s
            '[sources.mdns]\ninterfaces = ["127.0.0.1"]\ntimeout = 1.5\ninterval = 5\n',
            f'[sources.snmp]\nenabled = true\ntargets = ["127.0.0.1:{snmpd.port}"]\n'
            f"community = {toml_str(COMMUNITY)}\ntimeout = 0.5\ninterval = 5\n",
            f"[portal]\nurl = {toml_str(portal.url)}\ntoken_file = {toml_str(token_file)}\n",
            api_section(f"{LOOPBACK}:{port}"),
            state_dir=work / "state",
            room="oslo-4-12",
        )
        daemon = start_daemon(config, notify, work / "daemon.log", url=f"http://{LOOPBACK}:{port}")
        try:
            yield Site(work, sysfs, token_file, portal, snmpd, daemon)
        finally:
            daemon.stop()
            notify.close()


@pytest.fixture(scope="module")
def site_daemon(site: Site) -> RunningDaemon:
    assert site.daemon.proc.poll() is None, site.daemon.log_text()[-3000:]
    return site.daemon


def test_ready_watchdog_and_every_source_on_its_peer(site: Site, site_daemon: RunningDaemon) -> None:
    d = site_daemon
    assert d.ready_at is not None
    print(f"\nREADY=1 {d.ready_at - d.started:.3f} s after the start")
    assert d.notify.wait_for("WATCHDOG=1", 5.0, since=d.ready_at) is not None
    ready = d.wait_until(lambda: d.get("/readyz").status == 200, 20.0)
    assert ready, d.get("/readyz").text
    assert d.get("/readyz").json() == {"ready": True, "problems": []}
    assert d.get("/healthz").json()["status"] == "alive"
    status = d.status()
    sources = {s["name"]: s for s in status["sources"]}
    assert set(sources) == {"usb", "mdns", "snmp"}
    for name, source in sources.items():
        assert source["last_success"] is True and source["devices"] >= 1, (name, source)
        # Other tests on this machine may announce half-gone mDNS services on loopback.
        assert source["errors"] == 0 or name == "mdns", source
    assert status["portal"]["configured"] is True and status["problems"] == []
    inventory = d.get("/v1/inventory").json()
    serials = {dev["serial"] for dev in inventory["devices"]}
    assert {USB_SERIAL, SNMP_SERIAL} <= serials
    hosts = {dev.get("attributes", {}).get("host") for dev in inventory["devices"]}
    assert MDNS_HOST in hosts, sorted(h for h in hosts if h)
    # The shared snapshot reached the portal stand-in.
    assert site.portal.wait_for(lambda p: p.latest_inventory is not None, 10.0)
    rooms = d.get("/v1/rooms").json()
    assert "oslo-4-12" in {r["room"] for r in rooms}
    # systemctl status shows one line saying all is well.
    assert d.wait_until(
        lambda: any(line.startswith("STATUS=") and line.endswith("; ok") for _, line in d.notify.lines()), 5.0
    )


def test_hotplug_reaches_the_portal_within_3_s(site: Site, site_daemon: RunningDaemon) -> None:
    d = site_daemon
    d.wait_until(lambda: d.get("/readyz").status == 200, 20.0)
    serial = "2301SC0005E2"
    t0 = time.monotonic()
    add_device(site.sysfs, "2-2", LOGITECH, SCRIBE, serial=serial, product="Logi Scribe", devnum=7)
    arrived = site.portal.wait_for(lambda p: portal_has(p, serial), HOTPLUG_BUDGET_S)
    latency = time.monotonic() - t0
    print(f"\nhot-plug to portal: {latency:.3f} s (budget {HOTPLUG_BUDGET_S:g} s)")
    assert arrived, (
        f"device.added for {serial} not at the portal within {HOTPLUG_BUDGET_S:g} s",
        d.log_text()[-2000:],
    )
    [event] = [e for e in site.portal.events if e.serial == serial]
    assert (event.product, event.room) == ("Scribe", "oslo-4-12")
    events = d.get("/v1/events").json()
    assert added(events, serial)
    assert d.get("/v1/events?since=2999-01-01").json() == []
    assert added(d.get("/v1/events?since=2000-01-01T00:00:00Z&limit=0").json(), serial)


def test_metrics_parse_as_prometheus_text(site: Site, site_daemon: RunningDaemon) -> None:
    d = site_daemon
    d.wait_until(lambda: d.get("/readyz").status == 200, 20.0)
    assert d.wait_until(lambda: d.status()["outbox"]["portal"]["state"] == "ok", 10.0)
    reply = d.get("/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    for name in (
        "roomsync_source_success",
        "roomsync_source_duration_seconds",
        "roomsync_devices",
        "roomsync_outbox_messages",
        "roomsync_portal_state",
        "roomsync_push_failures",
        "roomsync_coverage_units",
        "roomsync_up",
        "roomsync_ready",
    ):
        assert name in families, sorted(families)

    def value(family: str, **labels: str) -> float:
        [sample] = [s for s in families[family].samples if s.labels == labels]
        return float(sample.value)

    for source in ("usb", "snmp", "mdns"):
        assert value("roomsync_source_success", source=source) == 1.0
    assert value("roomsync_ready") == 1.0
    assert value("roomsync_portal_state", state="ok") == 1.0
    assert value("roomsync_portal_state", state="unhealthy") == 0.0
    assert value("roomsync_outbox_messages", output="portal", state="parked") == 0.0
    assert value("roomsync_output_state", output="portal", state="ok") == 1.0
    assert value("roomsync_output_failures", output="portal") >= 0
    rally = [s for s in families["roomsync_devices"].samples if s.labels.get("product") == "Rally Bar"]
    assert sum(s.value for s in rally) >= 1
    [failures] = families["roomsync_push_failures"].samples
    assert failures.value >= 0


def test_health_exit_0_when_healthy_and_json(site: Site, site_daemon: RunningDaemon) -> None:
    d = site_daemon
    assert d.wait_until(lambda: d.get("/readyz").status == 200 and not d.status()["problems"], 20.0)
    result = health("--config", str(d.config))
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("healthy: roomsync ") and "usb ok" in first and "snmp ok" in first
    as_json = health("--config", str(d.config), "--json")
    assert as_json.returncode == 0
    data = json.loads(as_json.stdout)
    assert data["status"] == "healthy" and data["problems"] == []
    assert {s["name"] for s in data["sources"]} == {"usb", "snmp", "mdns"}


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("POST", "/healthz", 405),
        ("DELETE", "/v1/status", 405),
        ("GET", "/nope", 404),
        ("GET", "/v1/events?since=garbage", 400),
        ("GET", "/v1/events?limit=abc", 400),
        ("GET", "/v1/events?limit=-1", 400),
        ("GET", "/v1/events?limit=100001", 400),
        ("GET", "/v1/events?since=2024-01-01&limit=5", 200),
    ],
)
def test_api_answers_bad_requests_with_json_errors(
    site_daemon: RunningDaemon, method: str, path: str, status: int
) -> None:
    reply = site_daemon.get(path, method=method, data=b"x" * 4096 if method == "POST" else None)
    assert reply.status == status, reply.text
    if status != 200:
        assert "error" in reply.json()


def _raw(port: int, payload: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            return b""
        if not read:
            return b""
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


def _status_of(reply: bytes) -> int | None:
    """The status code of a raw HTTP reply, None when there was none."""
    first = reply.split(b"\r\n", 1)[0].split(b" ")
    return int(first[1]) if len(first) > 1 and first[0].startswith(b"HTTP/1.") else None


def test_garbage_and_oversized_requests_do_not_kill_the_daemon(site_daemon: RunningDaemon) -> None:
    d = site_daemon
    port = int(d.url.rsplit(":", 1)[1])
    assert _status_of(_raw(port, b"\x00\x01\x02\xffnot http at all\r\n\r\n")) == 400
    tls_hello = _raw(port, bytes.fromhex("160301020001000200fc0303") + os.urandom(500))
    assert _status_of(tls_hello) in (None, 400)
    big_header = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert _status_of(big_header) in (400, 431), big_header[:200]
    many_headers = _raw(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
    )
    assert _status_of(many_headers) in (400, 431), many_headers[:200]
    long_url = _raw(port, b"GET /" + b"a" * 50_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status_of(long_url) in (400, 414), long_url[:200]
    # Half a request, then gone; a promised huge body that never comes.
    _raw(port, b"GET /healthz HTTP/1.1\r\nHost", read=False)
    _raw(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\nabc", read=False)
    assert d.proc.poll() is None, d.log_text()[-2000:]
    assert d.get("/healthz").status == 200
    assert d.get("/v1/status").status == 200


def test_200_concurrent_clients_are_all_answered(site_daemon: RunningDaemon) -> None:
    paths = ["/healthz", "/readyz", "/v1/status", "/metrics", "/v1/inventory", "/v1/events"]

    async def hammer() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=30)
        ) as session:

            async def one(i: int) -> int:
                async with session.get(site_daemon.url + paths[i % len(paths)]) as reply:
                    await reply.read()
                    return reply.status

            return list(await asyncio.gather(*(one(i) for i in range(200))))

    statuses = asyncio.run(hammer())
    assert len(statuses) == 200
    assert set(statuses) <= {200, 503}, statuses  # /readyz may say 503, but every one answered
    assert statuses.count(200) >= 200 - statuses.count(503)
    assert site_daemon.get("/healthz").status == 200


@pytest.mark.slow
def test_portal_401_degrades_health_until_the_token_file_changes(
    site: Site, site_daemon: RunningDaemon
) -> None:
    d, portal = site_daemon, site.portal
    assert d.wait_until(lambda: d.get("/readyz").status == 200 and not d.status()["problems"], 20.0)
    portal.inject(401)
    serial = "2222BR10AAA1"
    add_device(site.sysfs, "2-3", LOGITECH, BRIO, serial=serial, product="Logi Brio", devnum=9)
    unhealthy = d.wait_until(
        lambda: [p for p in d.status()["problems"] if p.startswith("portal unhealthy")], 10.0
    )
    assert unhealthy, d.status()
    result = health("--config", str(d.config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("degraded:")
    assert any(
        line.strip().startswith("portal unhealthy") and "401" in line for line in result.stdout.splitlines()
    ), result.stdout
    assert json.loads(health("--config", str(d.config), "--json").stdout)["status"] == "degraded"
    time.sleep(1.5)  # paused: the event waits, and the portal is not asked again
    assert not portal_has(portal, serial)
    assert portal.pending_faults == []
    # The operator puts a (new) token in place: delivery resumes by itself.
    stamp = time.time() + 5
    os.utime(site.token_file, (stamp, stamp))
    assert portal.wait_for(lambda p: portal_has(p, serial), 10.0), d.log_text()[-2000:]
    assert d.wait_until(lambda: not d.status()["problems"], 10.0), d.status()["problems"]
    assert health("--config", str(d.config)).returncode == 0


def test_sigterm_exits_0_and_sends_stopping_then_health_says_down(
    site: Site, site_daemon: RunningDaemon
) -> None:
    d = site_daemon
    sent = time.monotonic()
    code, took = d.terminate(timeout=STOP_BUDGET_S + 5)
    print(f"\nSIGTERM to exit: {took:.3f} s")
    assert code == 0, d.log_text()[-2000:]
    assert took <= STOP_BUDGET_S
    assert d.notify.wait_for("STOPPING=1", 2.0, since=sent) is not None
    assert any(e.get("event") == "daemon.stopping" for e in d.log_events())
    down = health("--config", str(d.config))
    assert down.returncode == 2 and down.stdout.startswith("down: cannot reach the daemon")
    data = json.loads(health("--config", str(d.config), "--json").stdout)
    assert data["status"] == "down" and data["problems"]


# --------------------------------------------------------------------------- start-up faults


@pytest.mark.parametrize(
    "text, words",
    [
        ("[sources.usb]\ninterval = 0.5\n", "sources.usb.interval"),
        ("[sources.usb\n", "TOML syntax error"),
        ('[api]\nlisten = "no-port"\n', "api.listen"),
        ("[sources]\nbluetooth = {}\n", "sources.bluetooth"),
    ],
)
def test_invalid_config_at_start_exits_2_with_a_clear_message(own: Own, text: str, words: str) -> None:
    config = own.dir / "agent.toml"
    config.write_text(text)
    log = own.dir / "daemon.log"
    proc = launch(config, own.notify, log)
    try:
        code = proc.wait(30)
    finally:
        proc.kill() if proc.poll() is None else None
    err = log.read_text()
    assert code == 2, err
    assert err.startswith("roomsync: invalid configuration") and words in err, err
    assert "Traceback" not in err
    assert own.notify.count("READY=1") == 0


def test_network_listen_without_a_token_is_refused(own: Own) -> None:
    add_device(own.dir / "sys", "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL)
    config = write_config(
        own.dir / "agent.toml", usb_section(own.dir / "sys"), MDNS_OFF, state_dir=own.dir / "state"
    )
    log = own.dir / "daemon.log"
    # Refused before anything binds: nothing listens on 0.0.0.0 here.
    proc = launch(config, own.notify, log, args=("--listen", f"0.0.0.0:{free_tcp_port()}"))
    code = proc.wait(30)
    err = log.read_text()
    assert code == 2, err
    assert "reachable from the network" in err and "token_file" in err and "Traceback" not in err
    assert own.notify.count("READY=1") == 0
    assert not (own.dir / "state").exists()  # nothing was opened either


def test_api_token_is_required_when_configured(own: Own) -> None:
    add_device(own.dir / "sys", "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL)
    d = start_own(own, usb_section(own.dir / "sys"), MDNS_OFF, token="api-secret-1")
    for path in ("/healthz", "/v1/status", "/metrics"):
        refused = d.get(path, token=None)
        assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert d.get(path, token="wrong").status == 401
        assert d.get(path).status == 200
    assert "api-secret-1" not in refused.text
    assert d.wait_until(lambda: d.get("/readyz").status == 200, 10.0)
    result = health("--config", str(d.config))  # reads [api] token_file
    assert result.returncode == 0, result.stdout + result.stderr
    without = health("--url", d.url)
    assert without.returncode == 2 and "refused the API token" in without.stdout


def test_unix_socket_listen_and_health_over_it(own: Own) -> None:
    add_device(own.dir / "sys", "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL)
    sock_dir = short_dir("rs-api-")
    try:
        path = sock_dir / "api.sock"
        d = start_own(own, usb_section(own.dir / "sys"), MDNS_OFF, args=("--listen", f"unix:{path}"))
        assert path.exists()
        url = f"unix:{path}"
        assert d.wait_until(lambda: health("--url", url).returncode == 0, 10.0)
        data = json.loads(health("--url", url, "--json").stdout)
        assert data["status"] == "healthy" and [s["name"] for s in data["sources"]] == ["usb"]
        # Nothing listens on the TCP port of the configuration: --listen won.
        with pytest.raises(OSError):
            socket.create_connection((LOOPBACK, int(d.url.rsplit(":", 1)[1])), timeout=2).close()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_health_says_down_when_no_daemon_listens() -> None:
    url = f"http://{LOOPBACK}:{free_tcp_port()}"
    result = health("--url", url, "--timeout", "2")
    assert result.returncode == 2
    assert result.stdout.startswith(f"down: cannot reach the daemon at {url}")
    data = json.loads(health("--url", url, "--timeout", "2", "--json").stdout)
    assert data["status"] == "down"


def test_unusable_store_is_not_ready_until_it_can_be_opened(own: Own) -> None:
    sysfs = own.dir / "sys"
    add_device(sysfs, "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    blocker = own.dir / "not-a-dir"
    blocker.write_text("a file where the state directory's parent should be\n")
    d = start_own(own, usb_section(sysfs, poll=0.2), MDNS_OFF, state_dir=blocker / "state")
    # READY=1 anyway (a restart cannot fix this), with the reason in STATUS=.
    assert any(line.startswith("STATUS=") and "store:" in line for _, line in own.notify.lines())
    assert d.wait_until(lambda: d.source("usb")["runs"] >= 1, 10.0)
    readyz = d.get("/readyz")
    assert readyz.status == 503
    problems = readyz.json()["problems"]
    assert any(p.startswith("store: cannot create the state directory") for p in problems), problems
    assert d.get("/healthz").status == 200
    assert d.get("/v1/inventory").status == 503 and "store" in d.get("/v1/inventory").json()["error"]
    assert d.get("/metrics").status == 200
    result = health("--config", str(d.config))
    assert result.returncode == 1 and "  store: cannot create the state directory" in result.stdout
    # Fixed: the next run (here a hot-plug) opens it.
    blocker.unlink()
    add_device(sysfs, "1-2", LOGITECH, SCRIBE, serial="2301SC0005E3", devnum=4)
    assert d.wait_until(lambda: d.get("/readyz").status == 200, 10.0), d.get("/readyz").text
    # The run that opened it stores its scan in the writer thread, just after.
    assert d.wait_until(lambda: added(d.get("/v1/events").json(), "2301SC0005E3"), 10.0)


def test_sysfs_tree_vanishing_degrades_usb_and_its_return_is_seen(own: Own) -> None:
    sysfs = own.dir / "sys"
    add_device(sysfs, "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    # One missed run would remove a unit: a run that could not look must not count as one.
    d = start_own(own, usb_section(sysfs, poll=0.2), MDNS_OFF, "[store]\nremove_after_missed_scans = 1\n")
    assert d.wait_until(lambda: d.get("/readyz").status == 200, 10.0)
    runs = d.source("usb")["runs"]
    gone = own.dir / "sys.gone"
    sysfs.rename(gone)
    assert d.wait_until(lambda: d.source("usb")["runs"] > runs, 5.0)  # the hot-plug watcher noticed
    usb = d.source("usb")
    assert usb["errors"] == 1 and "does not exist" in usb["last_error"], usb
    # A source that could not look at all did not run: its units are not "missed".
    assert usb["last_success"] is False and usb["failures"] == 1, usb
    result = health("--config", str(d.config))
    assert result.returncode == 1, result.stdout
    assert "  source usb: last run failed: sysfs root" in result.stdout, result.stdout
    assert d.proc.poll() is None and d.get("/healthz").status == 200
    gone.rename(sysfs)
    assert d.wait_until(lambda: d.source("usb")["errors"] == 0, 5.0)
    assert health("--config", str(d.config)).returncode == 0
    assert not [e for e in d.get("/v1/events").json() if e["type"] == "device.removed"]


def test_api_port_in_use_exits_1_without_ready(own: Own) -> None:
    add_device(own.dir / "sys", "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL)
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(
            own.dir / "agent.toml",
            usb_section(own.dir / "sys"),
            MDNS_OFF,
            api_section(f"{LOOPBACK}:{port}"),
            state_dir=own.dir / "state",
        )
        log = own.dir / "daemon.log"
        code = launch(config, own.notify, log).wait(30)
    assert code == 1, log.read_text()
    failed = [json.loads(line) for line in log.read_text().splitlines() if "api.start.failed" in line]
    assert failed and f"cannot listen on {LOOPBACK}:{port}" in failed[0]["error"]
    assert own.notify.count("READY=1") == 0


# --------------------------------------------------------------------------- a source that hangs


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts and never says a word (an SSH banner that never
    comes)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def ssh_section(own: Own, port: int, connect_timeout: float) -> str:
    require_tool("ssh-keygen", "openssh-client")
    key = own.dir / "id_ed25519"
    if not key.exists():
        keygen(key)
    known = own.dir / "known_hosts"
    known.write_text("")
    return (
        f"[sources.ssh]\nenabled = true\nknown_hosts = {toml_str(known)}\n"
        f"connect_timeout = {connect_timeout}\ninterval = 60\n"
        f'[[sources.ssh.hosts]]\nhost = "127.0.0.1"\nport = {port}\nuser = "roomsync"\n'
        f"key_file = {toml_str(key)}\n"
    )


@pytest.mark.slow
def test_a_hanging_source_times_out_while_watchdog_and_hotplug_carry_on(own: Own) -> None:
    sysfs = own.dir / "sys"
    add_device(sysfs, "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    with SilentServer() as silent:
        d = start_own(own, usb_section(sysfs, poll=0.2), MDNS_OFF, ssh_section(own, silent.port, 4))
        assert d.ready_at is not None
        # The SSH host hangs (its banner never comes): not ready, and it says why.
        assert d.wait_until(lambda: silent.accepted, 5.0)
        readyz = d.get("/readyz")
        assert readyz.status == 503 and readyz.json()["problems"] == ["first scan not done: ssh"]
        assert d.source("ssh")["running"] is True
        # Meanwhile USB hot-plug still works…
        serial = "2301SC0005E4"
        add_device(sysfs, "1-2", LOGITECH, SCRIBE, serial=serial, devnum=5)
        assert d.wait_until(lambda: added(d.get("/v1/events").json(), serial), HOTPLUG_BUDGET_S)
        assert d.source("ssh")["running"] is True, "the SSH host should still be hanging"
        # …and the watchdog keeps being fed while the source hangs.
        assert d.wait_until(lambda: d.source("ssh")["last_success"] is not None, 15.0)
        ssh = d.source("ssh")
        hang_end = time.monotonic()
        pings = own.notify.count("WATCHDOG=1", since=d.ready_at, until=hang_end)
        print(f"\nWATCHDOG=1 x{pings} during a {hang_end - d.ready_at:.1f} s hang")
        assert pings >= 3
    assert ssh["errors"] == 1 and "no SSH handshake within 4 s" in ssh["last_error"], ssh
    assert d.wait_until(lambda: d.get("/readyz").status == 200, 5.0)
    result = health("--config", str(d.config))
    assert result.returncode == 1, result.stdout
    assert any(
        line.strip().startswith("source ssh:") and "no SSH handshake" in line
        for line in result.stdout.splitlines()
    ), result.stdout


def test_sigterm_while_a_source_hangs_still_exits_0_within_10_s(own: Own) -> None:
    sysfs = own.dir / "sys"
    add_device(sysfs, "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    with SilentServer() as silent:
        d = start_own(own, usb_section(sysfs), MDNS_OFF, ssh_section(own, silent.port, 60))
        assert d.wait_until(lambda: silent.accepted and d.source("ssh")["running"], 5.0)
        sent = time.monotonic()
        code, took = d.terminate(timeout=STOP_BUDGET_S + 20)
    print(f"\nSIGTERM to exit with a source blocked: {took:.3f} s")
    assert code == 0, d.log_text()[-2000:]
    assert took <= STOP_BUDGET_S
    assert own.notify.wait_for("STOPPING=1", 1.0, since=sent) is not None


# --------------------------------------------------------------------------- SIGHUP


def test_sighup_reloads_and_an_invalid_config_keeps_the_old_one(own: Own) -> None:
    first, second = own.dir / "sys", own.dir / "sys2"
    add_device(first, "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    add_device(second, "3-1", LOGITECH, SCRIBE, serial="2301SC0005E5", devnum=2)
    d = start_own(own, usb_section(first, poll=0.2), MDNS_OFF, room="oslo-4-12")
    assert d.wait_until(lambda: d.get("/readyz").status == 200, 10.0)
    assert d.source("usb")["interval"] == 300.0
    text = d.config.read_text()

    def hup() -> None:
        sent = time.monotonic()
        d.signal(signal.SIGHUP)
        reloading = own.notify.wait_for("RELOADING=1", 5.0, since=sent)
        assert reloading is not None
        assert own.notify.wait_for("READY=1", 5.0, since=reloading) is not None

    # A valid change: another room, another tree, another interval.
    d.config.write_text(
        text.replace("oslo-4-12", "oslo-4-14")
        .replace(str(first), str(second))
        .replace("interval = 300.0", "interval = 120")
    )
    hup()
    assert d.wait_until(lambda: d.source("usb")["interval"] == 120.0, 5.0)
    assert d.wait_until(lambda: added(d.get("/v1/events").json(), "2301SC0005E5"), 5.0)
    assert "oslo-4-14" in {r["room"] for r in d.get("/v1/rooms").json()}
    assert any(e.get("event") == "daemon.reloaded" for e in d.log_events())
    # Hot-plug now watches the new tree.
    add_device(second, "3-2", LOGITECH, BRIO, serial="2222BR10AAA2", devnum=3)
    assert d.wait_until(lambda: added(d.get("/v1/events").json(), "2222BR10AAA2"), HOTPLUG_BUDGET_S)
    # An invalid one is refused, logged, and the running configuration stays.
    d.config.write_text(d.config.read_text().replace("interval = 120", "interval = 0.5"))
    hup()
    assert d.proc.poll() is None
    refused = [e for e in d.log_events() if e.get("event") == "daemon.reload.refused"]
    assert refused and "sources.usb.interval" in refused[-1]["error"], refused
    assert d.source("usb")["interval"] == 120.0
    assert d.get("/healthz").status == 200 and d.get("/readyz").status == 200


def test_a_second_daemon_on_the_same_state_directory_is_refused_naming_the_first(own: Own) -> None:
    """Two daemons on one state directory would be two deliverers on one outbox: the second
    exits 2 before READY=1, naming the first one's PID; the first carries on."""
    add_device(own.dir / "sys", "1-1", LOGITECH, RALLY_BAR, serial=USB_SERIAL, devnum=2)
    first = start_own(own, usb_section(own.dir / "sys"), MDNS_OFF)
    second_dir = own.dir / "second"
    second_dir.mkdir()
    config = write_config(
        second_dir / "agent.toml",
        usb_section(own.dir / "sys"),
        MDNS_OFF,
        api_section(f"{LOOPBACK}:{free_tcp_port()}"),
        state_dir=own.dir / "state",
    )
    with NotifySocket.make() as notify:
        proc = launch(config, notify, second_dir / "daemon.log")
        code = proc.wait(30)
        assert notify.count("READY=1") == 0
    err = (second_dir / "daemon.log").read_text()
    assert code == 2, err
    assert f"PID {first.pid}" in err and "state directory" in err and "Traceback" not in err
    assert first.get("/healthz").status == 200
    assert (own.dir / "state" / "daemon.lock").read_text().strip() == str(first.pid)
