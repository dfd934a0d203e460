"""``roomsync scan`` then ``roomsync push --once`` with ``[outputs.glpi]`` and ``[outputs.mqtt]``
configured, as an operator runs them (subprocesses, real SQLite, the GLPI stand-in and a real
Mosquitto on loopback): GLPI gets documents that all validate and carry every serial and
firmware, a subscriber gets the retained ``roomsync/<agent_id>/inventory``; ``--target`` delivers
to one output; one output down holds up nothing else, and ``roomsync outbox`` shows each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers_mqtt import LOOPBACK, PASSWORD, USER, Mosquitto
from tests.sysfs import add_device
from tests.test_cli_push import roomsync
from tools.glpi_standin import GlpiStandIn

SERIALS = {"2301SC0005E2", "2313FD1N08Z2"}
AGENT = "7d1f3c52-9a0e-4b7c-8d21-5e6f7a8b9c0d"


@pytest.fixture
def glpi() -> Iterator[GlpiStandIn]:
    with GlpiStandIn() as server:
        yield server


@pytest.fixture
def site(tmp_path: Path, glpi: GlpiStandIn, broker: Mosquitto) -> Path:
    """Two units on a fake USB bus, both outputs configured (no portal), one stored scan."""
    add_device(tmp_path / "sys", "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    add_device(tmp_path / "sys", "2-2", 0x046D, 0x08E2, serial="2301SC0005E2", product="Logi Scribe")
    (tmp_path / "mqtt.pw").write_text(PASSWORD + "\n")
    (tmp_path / "agent.toml").write_text(
        f'agent_id = "{AGENT}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[room]\nid = "oslo-4-12"\nname = "Fjord"\n'
        f'[outputs.glpi]\nurl = "{glpi.url}/front/inventory.php"\ntimeout = 5\nbackoff_cap = 1\n'
        f'[outputs.mqtt]\nurl = "mqtt://{LOOPBACK}:{broker.port}"\nusername = "{USER}"\n'
        f'password_file = "{tmp_path / "mqtt.pw"}"\ntimeout = 3\nbackoff_cap = 1\n'
    )
    scanned = roomsync(tmp_path, "scan", "--sysfs-root", str(tmp_path / "sys"), "--json")
    assert scanned.returncode == 0, scanned.stderr
    return tmp_path


def retained(broker: Mosquitto, topic: str) -> Any:
    text = broker.retained(topic)
    return json.loads(text) if text else None


def outbox(site: Path) -> dict[str, Any]:
    shown = roomsync(site, "outbox", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_push_once_delivers_to_glpi_and_mqtt(site: Path, glpi: GlpiStandIn, broker: Mosquitto) -> None:
    before = outbox(site)
    assert set(before["outputs"]) == {"portal", "glpi", "mqtt"}
    assert before["outputs"]["glpi"]["pending"] >= 1 and before["outputs"]["mqtt"]["pending"] == 1
    table = roomsync(site, "outbox")
    assert table.returncode == 0 and "OUTPUT" in table.stdout and "glpi:" in table.stdout

    pushed = roomsync(site, "push", "--once", "--json")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    result = json.loads(pushed.stdout)
    assert set(result["outputs"]) == {"glpi", "mqtt"}  # no portal configured: none tried
    assert all(r["result"] == "empty" and r["outbox"]["empty"] for r in result["outputs"].values())

    # GLPI: every document validated (the stand-in refuses any other) and carries the serials
    # and firmware: this host's USB units are its Computer document's usbdevices.
    [computer] = [d for d in glpi.documents if d["itemtype"] == "Computer"]
    usb = computer["content"]["usbdevices"]
    assert {u["serial"] for u in usb} == SERIALS
    assert glpi.agent_ids == [AGENT]
    # MQTT: a subscriber that comes later gets the retained inventory.
    inventory = retained(broker, f"roomsync/{AGENT}/inventory")
    assert {d["serial"] for p in inventory["places"] for d in p["devices"]} == SERIALS
    # The status is the daemon's: a one-shot push (its own client id) leaves it alone.
    assert retained(broker, f"roomsync/{AGENT}/status") is None

    after = outbox(site)
    assert after["outputs"]["glpi"]["delivery"]["state"] == "ok"
    assert after["outputs"]["mqtt"]["delivery"]["state"] == "ok"
    assert after["outputs"]["portal"]["pending"] >= 1  # queued for a portal, as ever; not ours


def test_one_output_down_holds_up_nothing_else_and_target_picks_one(
    site: Path, glpi: GlpiStandIn, broker: Mosquitto
) -> None:
    broker.stop()
    pushed = roomsync(site, "push", "--once", "--deadline", "2")
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr  # MQTT's queue is not empty
    assert "glpi: delivered" in pushed.stdout and "outbox empty" in pushed.stdout
    assert "mqtt retrying" in pushed.stdout
    assert glpi.documents, "GLPI was delivered to while the broker was down"
    shown = outbox(site)
    assert shown["outputs"]["mqtt"]["delivery"]["state"] == "retrying"
    assert shown["outputs"]["glpi"]["empty"]

    broker.restart()
    glpi.stop()  # only MQTT is asked for: GLPI being down does not matter
    only = roomsync(site, "push", "--once", "--target", "mqtt", "--json")
    assert only.returncode == 0, only.stdout + only.stderr
    assert set(json.loads(only.stdout)["outputs"]) == {"mqtt"}
    assert retained(broker, f"roomsync/{AGENT}/inventory") is not None

    refused = roomsync(site, "push", "--once", "--target", "portal")
    assert refused.returncode == 2 and "portal" in refused.stderr


def test_an_output_whose_settings_fail_holds_up_nothing_else(
    site: Path, glpi: GlpiStandIn, broker: Mosquitto
) -> None:
    config = site / "agent.toml"
    missing = site / "no-such-password"
    config.write_text(
        config.read_text().replace(
            "[outputs.glpi]\n", f'[outputs.glpi]\nusername = "roomsync"\npassword_file = "{missing}"\n'
        )
    )
    pushed = roomsync(site, "push", "--once", "--json")
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    result = json.loads(pushed.stdout)
    assert result["outputs"]["glpi"]["result"] == "unusable"
    assert "GLPI password file" in result["outputs"]["glpi"]["last_problem"]
    assert result["outputs"]["mqtt"]["result"] == "empty" and result["outputs"]["mqtt"]["outbox"]["empty"]
    assert glpi.documents == [] and "glpi:" in pushed.stderr
    assert retained(broker, f"roomsync/{AGENT}/inventory") is not None
    # Every output unusable: a usage error (exit 2), as the portal's settings always were.
    only = roomsync(site, "push", "--once", "--target", "glpi")
    assert only.returncode == 2 and "GLPI password file" in only.stderr


def test_discard_drops_the_queue_of_an_output_taken_out_only(site: Path) -> None:
    refused = roomsync(site, "outbox", "--discard", "mqtt")
    assert refused.returncode == 2 and "still configured" in refused.stderr
    config = site / "agent.toml"
    text = config.read_text()
    config.write_text(text[: text.index("[outputs.mqtt]")])
    shown = roomsync(site, "outbox")
    assert "mqtt (not configured: its queue is kept; --discard mqtt drops it):" in shown.stdout
    dropped = roomsync(site, "outbox", "--discard", "mqtt")
    assert dropped.returncode == 0 and "1 message(s)" in dropped.stdout, dropped.stdout + dropped.stderr
    assert "mqtt" not in outbox(site)["outputs"]
