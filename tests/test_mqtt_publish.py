"""The MQTT transport (agent/uploader/mqtt.py) against a real Mosquitto on 127.0.0.1
(tests/peers_mqtt.py): delivered only once acknowledged, a retained message a later subscriber
gets, a wrong password refused without showing it, TLS verified (the test CA, never another),
a broker that is down or goes away is a clear error, and the Last Will said for a connection
that ends without a goodbye."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.uploader.mqtt import MqttError, MqttPublisher, MqttRefused, MqttTarget
from tests.peers_mqtt import LOOPBACK, PASSWORD, USER, Mosquitto
from tools.portal_standin import CertAuthority

REPO = Path(__file__).resolve().parents[1]


def target(broker: Mosquitto, *, tls: bool = False, ca: Path | None = None) -> MqttTarget:
    scheme, port = ("mqtts", broker.tls_port) if tls else ("mqtt", broker.port)
    host = "localhost" if tls else LOOPBACK  # the test certificate names localhost and 127.0.0.1
    return MqttTarget.of(f"{scheme}://{host}:{port}", "roomsync-test", username=USER, ca_file=ca)


def retained(broker: Mosquitto, topic: str) -> str:
    return broker.retained(topic)


def test_a_retained_message_is_delivered_and_a_later_subscriber_gets_it(broker: Mosquitto) -> None:
    with MqttPublisher(target(broker), password=PASSWORD) as publisher:
        publisher.publish("roomsync/a1/inventory", {"units": 2, "room": "Fjord ø"}, retain=True)
        publisher.publish("roomsync/a1/events", b'{"events": []}')
    assert retained(broker, "roomsync/a1/inventory") == '{"units":2,"room":"Fjord ø"}'


def test_a_wrong_password_is_refused_and_never_shown(broker: Mosquitto) -> None:
    with pytest.raises(MqttRefused) as refused:
        MqttPublisher(target(broker), password="wrong-pw-123", timeout=5).connect()
    assert "refused" in str(refused.value) and "wrong-pw-123" not in str(refused.value)


def test_tls_is_verified_with_the_given_ca_and_never_without(broker: Mosquitto, tmp_path: Path) -> None:
    assert broker.ca is not None
    with MqttPublisher(target(broker, tls=True, ca=broker.ca), password=PASSWORD) as publisher:
        publisher.publish("roomsync/a1/status", "online", retain=True)
    assert retained(broker, "roomsync/a1/status") == "online"
    other = CertAuthority(tmp_path / "other", name="another CA")
    for ca in (other.path, None):  # another CA; the system's trust store
        with pytest.raises(MqttError, match="TLS failed"):
            MqttPublisher(target(broker, tls=True, ca=ca), password=PASSWORD, timeout=5).connect()


def test_a_broker_that_is_down_or_goes_away_is_a_clear_error(broker: Mosquitto) -> None:
    publisher = MqttPublisher(target(broker), password=PASSWORD, timeout=3).connect()
    broker.stop()
    t0 = time.monotonic()
    with pytest.raises(MqttError):
        for _ in range(50):  # the loop notices the lost connection; a publish then fails
            publisher.publish("roomsync/a1/events", "x")
            time.sleep(0.05)
    assert time.monotonic() - t0 < 10
    publisher.close()
    with pytest.raises(MqttError, match="cannot connect"):
        MqttPublisher(target(broker), password=PASSWORD, timeout=3).connect()


def test_the_last_will_is_said_for_a_connection_that_ends_without_goodbye(broker: Mosquitto) -> None:
    code = (
        "import sys, time\n"
        "from agent.uploader.mqtt import MqttPublisher, MqttTarget\n"
        f"t = MqttTarget.of('mqtt://{LOOPBACK}:{broker.port}', 'will-test', username={USER!r})\n"
        f"p = MqttPublisher(t, password={PASSWORD!r}, keepalive=2,"
        " will=('roomsync/a1/status', b'offline')).connect()\n"
        "p.publish('roomsync/a1/status', 'online', retain=True)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert retained(broker, "roomsync/a1/status") == "online"
        os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker says the will
        proc.wait(10)
        for _ in range(40):
            if retained(broker, "roomsync/a1/status") == "offline":
                break
            time.sleep(0.25)
        assert retained(broker, "roomsync/a1/status") == "offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    "url",
    [
        "http://broker",
        "mqtt://",
        "mqtt://u:p@broker",
        "mqtt://broker/topic",
        "mqtt://broker:99999",
        "mqtt://b?x=1",
    ],
)
def test_a_url_that_is_not_a_broker_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        MqttTarget.of(url, "c")
    with pytest.raises(ValueError, match="needs mqtts"):
        MqttTarget.of("mqtt://broker", "c", ca_file=Path("/ca.pem"))
