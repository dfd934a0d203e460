"""The MQTT output (``agent/uploader/outputs.py`` ``MqttOutput``/``MqttTransport``) delivering
its outbox queue to a real Mosquitto on 127.0.0.1 (tests/peers_mqtt.py): the snapshot retained
on ``<prefix>/inventory`` for a later subscriber, events on ``<prefix>/events``, the agent's
``online``/``offline`` status retained and its Last Will; a message leaves the queue only once
``PUBACK`` came back: a wrong password pauses delivery (nothing lost, never shown), a broker
that is down, restarts mid-delivery, drops the connection after ``CONNACK`` or never sends
``PUBACK`` is retried; TLS is verified with the test CA and never another."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.store import Store
from agent.uploader.delivery import Delivery, RunResult
from agent.uploader.outbox import Outbox, QueuedMessage
from agent.uploader.outputs import MqttOutput, MqttTransport, make_outbox
from tests.peers_mqtt import LOOPBACK, PASSWORD, USER, Mosquitto
from tests.test_outbox import CONTEXT, T0
from tests.usb_units import scan, unit
from tools.portal_standin import CertAuthority

AGENT = "a1b2c3d4-0000-4000-8000-000000000001"
PREFIX = f"roomsync/{AGENT}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


def output(broker: Mosquitto, tmp_path: Path, *, password: str = PASSWORD, **changes: Any) -> MqttOutput:
    secret = tmp_path / "mqtt-password"
    secret.write_text(password + "\n")
    fields: dict[str, Any] = {
        "url": f"mqtt://{LOOPBACK}:{broker.port}",
        "username": USER,
        "password_file": secret,
        "timeout": 3.0,
        "backoff_cap": 0.2,
    }
    fields.update(changes)
    return MqttOutput(**fields)


def queue(store: Store, out: MqttOutput, at: datetime = T0) -> Outbox:
    """The MQTT queue with the events of a 3-unit scan and its snapshot."""
    outbox = make_outbox(store, out, agent_id=AGENT, version="test", hostname="room-pc")
    outbox.take_events(at)  # an output starts from now: the events of the scan below are its own
    scan(store, [unit(i, at) for i in range(3)], at)
    assert out.queue(outbox, store, CONTEXT, at)
    return outbox


def deliver(outbox: Outbox, transport: Any, seconds: float = 8.0) -> RunResult:
    delivery = Delivery(outbox, transport, snapshot=None)
    return asyncio.run(delivery.run(deadline=time.monotonic() + seconds))


def retained(broker: Mosquitto, topic: str) -> Any:
    text = broker.retained(topic)
    return json.loads(text) if text else None


class Subscriber:
    """A paho client subscribed to ``topic`` (QoS 1) — ready once the broker's ``SUBACK``
    came back — that keeps every message it gets."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[bytes] = []
        self._got = threading.Condition()
        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber", protocol=mqtt.MQTTv5)
        client.username_pw_set(USER, PASSWORD)
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.connect(LOOPBACK, broker.port)
        client.loop_start()
        self.client = client
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._got:
            self.messages.append(bytes(message.payload))
            self._got.notify_all()

    def lines(self, count: int, timeout: float = 10.0) -> list[bytes]:
        with self._got:
            self._got.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_queue_is_published_the_inventory_retained_and_the_status_said(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    out = output(broker, tmp_path)
    outbox = queue(store, out)
    assert [m.kind for m in outbox.messages()] == ["events", "inventory"]
    events = Subscriber(broker, f"{PREFIX}/events")
    try:
        result = deliver(outbox, out.transport(outbox.agent, user_agent="t"))
        [line] = events.lines(1)
    finally:
        events.close()
    assert (result.stopped_because, result.delivered, result.events_delivered) == ("empty", 2, 3)
    assert outbox.stats().empty and outbox.stats().state.state == "ok"
    sent = json.loads(line)
    assert sent["schema"] == "roomsync.events.v1" and len(sent["events"]) == 3
    inventory = retained(broker, f"{PREFIX}/inventory")  # a later subscriber gets it
    assert inventory["schema"] == "roomsync.inventory.v1" and inventory["agent"]["id"] == AGENT
    serials = {d["serial"] for place in inventory["places"] for d in place["devices"]}
    assert serials == {f"S{i:05d}" for i in range(3)}
    assert retained(broker, f"{PREFIX}/status") is None  # a one-shot push leaves the daemon's status alone
    assert retained(broker, f"{PREFIX}/events") is None  # events are not retained


def test_a_persistent_connection_says_online_and_the_will_says_offline_when_it_drops(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    out = output(broker, tmp_path, keepalive=5, topic_prefix="site/oslo")
    outbox = queue(store, out)
    transport = out.transport(outbox.agent, user_agent="t", persistent=True)
    assert isinstance(transport, MqttTransport)
    assert deliver(outbox, transport).delivered == 2
    assert retained(broker, "site/oslo/status")["state"] == "online"  # the daemon stays connected
    assert retained(broker, "site/oslo/inventory")["agent"]["id"] == AGENT
    publisher = transport._publisher
    assert publisher is not None and publisher.connected
    publisher._client.socket().shutdown(socket.SHUT_RDWR)  # gone without a DISCONNECT
    for _ in range(40):
        status = retained(broker, "site/oslo/status")
        if status["state"] == "offline":
            break
        time.sleep(0.25)
    assert (status["state"], status["reason"]) == ("offline", "connection lost")
    # The next message goes over a new connection, which says online again.
    at = T0 + timedelta(minutes=1)
    scan(store, [unit(i, at, firmware="2.0") for i in range(3)], at)
    assert deliver(outbox, transport).events_delivered == 3
    assert retained(broker, "site/oslo/status")["state"] == "online"
    asyncio.run(transport.shutdown())
    assert retained(broker, "site/oslo/status")["state"] == "offline"


def test_a_wrong_password_pauses_delivery_keeps_the_queue_and_is_never_shown(
    broker: Mosquitto, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = output(broker, tmp_path, password="wrong-pw-7731")
    outbox = queue(store, out)
    result = deliver(outbox, out.transport(outbox.agent, user_agent="t"))
    assert result.stopped_because == "paused" and result.delivered == 0
    assert len(outbox.messages()) == 2
    state = outbox.stats().state
    assert state.state == "unhealthy" and "refused" in (state.reason or "")
    captured = capsys.readouterr()
    for text in (state.reason or "", result.last_problem or "", captured.out, captured.err):
        assert "wrong-pw-7731" not in text


def test_a_broker_that_is_down_is_retried_and_delivered_to_once_it_is_back(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    out = output(broker, tmp_path, timeout=1.0)
    outbox = queue(store, out)
    broker.stop()
    result = deliver(outbox, out.transport(outbox.agent, user_agent="t"), seconds=1.5)
    assert result.stopped_because == "deadline" and result.retries >= 1 and result.delivered == 0
    assert outbox.stats().state.state == "retrying" and "cannot connect" in (
        outbox.stats().state.reason or ""
    )
    assert outbox.messages()[0].attempts >= 1 and len(outbox.messages()) == 2
    broker.restart()
    assert deliver(outbox, out.transport(outbox.agent, user_agent="t")).delivered == 2
    assert outbox.stats().empty


class RestartingTransport(MqttTransport):
    """Restarts the broker just before the second message is published: the connection the
    first went over is gone mid-delivery."""

    broker: Mosquitto
    sent = 0

    async def send(self, message: QueuedMessage, left: float | None) -> Any:
        self.sent += 1
        if self.sent == 2:
            await asyncio.to_thread(self.broker.restart)
        return await super().send(message, left)


def test_a_broker_restart_mid_delivery_loses_nothing(broker: Mosquitto, store: Store, tmp_path: Path) -> None:
    out = output(broker, tmp_path, timeout=2.0)
    outbox = queue(store, out)
    transport = RestartingTransport(out, outbox.agent)
    transport.broker = broker
    result = deliver(outbox, transport, seconds=20)
    assert (result.stopped_because, result.delivered) == ("empty", 2)
    assert result.retries >= 1 or transport.sent == 2  # the restart was noticed, or raced ahead
    # The broker kept nothing across its restart: the inventory was published after it.
    assert retained(broker, f"{PREFIX}/inventory")["schema"] == "roomsync.inventory.v1"


def test_tls_is_verified_with_the_test_ca_and_never_another(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    assert broker.tls_port is not None and broker.ca is not None
    other = CertAuthority(tmp_path / "other", name="another CA")
    bad = output(
        broker, tmp_path, url=f"mqtts://localhost:{broker.tls_port}", ca_file=other.path, timeout=2.0
    )
    outbox = queue(store, bad)
    result = deliver(outbox, bad.transport(outbox.agent, user_agent="t"), seconds=1.0)
    assert result.delivered == 0 and "TLS failed" in (result.last_problem or "")
    good = output(broker, tmp_path, url=f"mqtts://localhost:{broker.tls_port}", ca_file=broker.ca)
    assert deliver(outbox, good.transport(outbox.agent, user_agent="t")).delivered == 2


class SilentBroker:
    """A TCP server on 127.0.0.1 that answers ``CONNECT`` with a successful MQTT 5
    ``CONNACK`` and then either never acknowledges anything (``mode="no-puback"``) or
    closes the connection (``mode="drop"``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(65536)  # CONNECT
            conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: session not present, success, no properties
            if self.mode == "drop":
                conn.close()
            else:
                self._held.append(conn)  # reads nothing more, acknowledges nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.mark.parametrize("mode", ["no-puback", "drop"])
def test_no_puback_or_a_drop_after_connack_is_retried_and_nothing_leaves(
    mode: str, store: Store, tmp_path: Path
) -> None:
    silent = SilentBroker(mode)
    try:
        out = MqttOutput(url=f"mqtt://{LOOPBACK}:{silent.port}", timeout=0.5, backoff_cap=0.1)
        outbox = queue(store, out)
        result = deliver(outbox, out.transport(outbox.agent, user_agent="t"), seconds=2.0)
    finally:
        silent.close()
    assert result.delivered == 0 and result.retries >= 1 and result.stopped_because == "deadline"
    assert len(outbox.messages()) == 2 and outbox.messages()[0].attempts >= 1
    assert outbox.stats().state.state == "retrying"
    if mode == "no-puback":
        assert "PUBACK" in (result.last_problem or "")
    assert silent.connections >= 1


def test_the_daemon_default_names_come_from_the_agent_id(store: Store) -> None:
    out = MqttOutput(url="mqtt://127.0.0.1:1")
    outbox = make_outbox(store, out, agent_id="site+1/#", version="t", hostname="h")
    daemon = out.transport(outbox.agent, user_agent="t", persistent=True)
    push = out.transport(outbox.agent, user_agent="t")
    assert isinstance(daemon, MqttTransport) and isinstance(push, MqttTransport)
    assert daemon.prefix == push.prefix == "roomsync/site_1__"
    # A push never takes the daemon's connection over (a broker drops the older of two
    # connections with one client id).
    assert (daemon._target.client_id, push._target.client_id) == (
        "roomsync-site_1__",
        "roomsync-site_1__-push",
    )
    transport = daemon
    assert json.loads(transport.status("online"))["agent_id"] == "site+1/#"


def test_a_puback_that_refuses_the_message_is_not_a_delivery(store: Store, tmp_path: Path) -> None:
    """An ACL lets the agent publish under ``site/allowed`` only: the broker answers the
    others' PUBLISH with a PUBACK "Not authorized" — the message stays, delivery pauses."""
    acl = f"user {USER}\ntopic readwrite site/allowed/#\n"
    with Mosquitto.start(tmp_path / "acl-broker", users={USER: PASSWORD}, acl=acl) as strict:
        out = output(strict, tmp_path, topic_prefix="site/denied")
        outbox = queue(store, out)
        result = deliver(outbox, out.transport(outbox.agent, user_agent="t"))
        assert (result.stopped_because, result.delivered) == ("paused", 0), result.attempts
        assert len(outbox.messages()) == 2 and "Not authorized" in (result.last_problem or "")
        assert outbox.stats().state.state == "unhealthy"
        allowed = output(strict, tmp_path, topic_prefix="site/allowed")
        assert deliver(outbox, allowed.transport(outbox.agent, user_agent="t")).delivered == 2
