"""The real Mosquitto the MQTT output will be tested against (tests/peers_mqtt.py), shown to
behave as those tests need: a retained message reaches a later subscriber, a wrong password is
refused, TLS verifies with the test CA and not without it, and a restart keeps the ports and
the users but loses what the broker held (no persistence). Clients: ``mosquitto_pub`` and
``mosquitto_sub``, on 127.0.0.1 only."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.peers_mqtt import LOOPBACK, PASSWORD, USER, Mosquitto, require_mosquitto
from tools.portal_standin import CertAuthority


def client(
    tool: str, broker: Mosquitto, *args: str, password: str = PASSWORD, tls: bool = False
) -> list[str]:
    port = broker.tls_port if tls else broker.port
    command = [tool, "-h", LOOPBACK, "-p", str(port), "-u", USER, "-P", password, "-V", "mqttv5", *args]
    if tls:
        assert broker.ca is not None
        command += ["--cafile", str(broker.ca)]
    return command


def publish(
    broker: Mosquitto, topic: str, payload: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    pub = require_mosquitto()[2]
    command = client(pub, broker, "-t", topic, "-m", payload, "-q", "1", "-r", **kwargs)  # type: ignore[arg-type]
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


def retained(broker: Mosquitto, topic: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """What a new subscriber gets at once on ``topic`` (``-W``: gives up after 3 s)."""
    sub = require_mosquitto()[3]
    command = client(sub, broker, "-t", topic, "-C", "1", "-W", "3", **kwargs)  # type: ignore[arg-type]
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


def test_a_retained_message_reaches_a_later_subscriber(broker: Mosquitto) -> None:
    sent = publish(broker, "roomsync/agent-1/inventory", '{"units": 2}')
    assert sent.returncode == 0, sent.stderr
    got = retained(broker, "roomsync/agent-1/inventory")
    assert got.returncode == 0 and got.stdout.strip() == '{"units": 2}', got


def test_a_wrong_password_is_refused(broker: Mosquitto) -> None:
    sent = publish(broker, "roomsync/agent-1/inventory", "x", password="wrong")
    assert sent.returncode != 0
    assert "not authori" in (sent.stderr + sent.stdout).lower(), sent
    assert PASSWORD not in broker.log()


def test_tls_verifies_with_the_test_ca_only(broker: Mosquitto, tmp_path: Path) -> None:
    sent = publish(broker, "roomsync/agent-1/status", "online", tls=True)
    assert sent.returncode == 0, sent.stderr
    assert retained(broker, "roomsync/agent-1/status", tls=True).stdout.strip() == "online"
    other = CertAuthority(tmp_path / "other-ca", name="another CA")
    pub = require_mosquitto()[2]
    command = client(pub, broker, "-t", "t", "-m", "x")
    command[command.index(str(broker.port))] = str(broker.tls_port)
    refused = subprocess.run(
        [*command, "--cafile", str(other.path)], capture_output=True, text=True, timeout=20
    )
    assert refused.returncode != 0, refused


def test_a_restart_keeps_ports_and_users_and_loses_what_it_held(broker: Mosquitto) -> None:
    assert publish(broker, "roomsync/agent-1/inventory", "before").returncode == 0
    port = broker.port
    broker.restart()
    assert broker.port == port
    gone = retained(broker, "roomsync/agent-1/inventory")
    assert gone.stdout == "", gone  # nothing retained: no persistence
    assert publish(broker, "roomsync/agent-1/inventory", "after").returncode == 0
    assert retained(broker, "roomsync/agent-1/inventory").stdout.strip() == "after"
