"""The USB scan reading CollabOS bars over their Sync interface: `roomsync scan --replay`,
the live path's combination of Sync and descriptor facts, and the fallbacks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.catalog import load_catalog
from agent.cli import main
from agent.collectors.sync.errors import TransportError
from agent.collectors.sync.replay import Recording, ReplayTransport
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from agent.model import Observation
from agent.usbtree import UsbRecord
from tests.shared import shared_file
from tests.sync_captures import (
    BAR_SERIAL,
    GDI_RESPONSE,
    SIGHT_SERIAL,
    Capture,
    timeout_event,
)
from tests.sysfs import add_device

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FIXTURE = ("fixtures", "usb-captures", "logi-rally-bar-setup.json")


def scan_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["scan", "--json", *args])
    out, _ = capsys.readouterr()
    return code, json.loads(out)


def test_replay_of_the_recorded_rally_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[room]\nid = "lon-2-07"\nname = "Thames"\n')
    code, report = scan_json(capsys, "--replay", str(shared_file(*FIXTURE)), "--config", str(config))
    assert code == 0, report["errors"]
    [bar] = report["devices"]
    assert (bar["product"], bar["model"], bar["serial"]) == ("Rally Bar", "VR0019", BAR_SERIAL)
    assert bar["serial_source"] == "sync-interface" and bar["serial_label_grade"] is True
    assert (bar["firmware"], bar["firmware_source"]) == ("1.9.556", "sync-interface")
    assert bar["components"]["manifest"] == "10.12.556"
    assert (bar["vendor_id"], bar["product_id"], bar["address"]) == ("046d", "089b", "2-1.1")
    assert bar["attributes"]["usb_release"] == "0.20"  # descriptor facts kept beside Sync's
    assert bar["room"] == "lon-2-07"
    assert bar["health"] == "ok"
    children = {c["product"]: c for c in bar["children"]}
    sight = children["Sight"]
    assert (sight["serial"], sight["model"]) == (SIGHT_SERIAL, "VU0067")
    assert children["Rally Mic Pod"]["firmware"] == "2.1.3"
    assert report["sources"] == [
        {"name": "replay", "seconds": report["sources"][0]["seconds"], "success": True}
    ]


def write_capture(tmp_path: Path, capture: Capture) -> Path:
    path = tmp_path / "derived.json"
    path.write_text(json.dumps(capture.doc))
    return path


def test_replay_with_a_missing_peripheral_is_a_health_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = Capture()
    info = capture.device_info()
    mics = info["payload"]["devices"][0]["peripherals"]["micPod"]
    mics["count"]["expected"] = mics["count"]["actual"] + 1
    code, report = scan_json(capsys, "--replay", str(write_capture(tmp_path, capture.set_device_info(info))))
    assert code == 0
    [bar] = report["devices"]
    assert bar["health"] == "warning"
    [issue] = [i for i in bar["health_issues"] if i["code"] == "peripheral-missing"]
    assert "Mic Pod" in issue["message"]


def test_replay_that_cannot_answer_falls_back_to_descriptors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = Capture()
    capture.events[GDI_RESPONSE] = timeout_event()  # the device never sends its answer
    code, report = scan_json(capsys, "--replay", str(write_capture(tmp_path, capture)))
    assert code == 1
    [bar] = report["devices"]
    # The recording's USB strings still identify the bar; its iSerialNumber is label-grade.
    assert (bar["product"], bar["serial"], bar["serial_source"]) == (
        "Rally Bar",
        BAR_SERIAL,
        "usb-descriptor",
    )
    assert bar["firmware"] is None  # bcdDevice is not the CollabOS version
    assert any(i["code"] == "sync-interface-failed" for i in bar["health_issues"])
    [error] = report["errors"]
    assert error["source"] == "replay" and error["target"] == "2-1.1"
    assert "Sync interface exchange failed" in error["message"]


def test_replay_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--replay", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, report = scan_json(capsys, "--replay", str(bad))
    assert code == 1 and report["devices"] == []
    assert str(bad) in report["errors"][0]["message"]


# ----------------------------------------------------------------------------- live path


class SyncFromRecording(UsbSource):
    """The live USB path with the bar's transport replaced by a recording (no USB bus here)."""

    def __init__(self, root: Path, recording: Recording | None, fail: str | None = None) -> None:
        super().__init__(root, libusb_strings=False)
        self.live = True
        self.devices_reachable = True
        self.recording, self.fail, self.opened = recording, fail, []

    def sync_transport(self, record: UsbRecord):  # type: ignore[override]
        @contextlib.contextmanager
        def opener() -> Iterator[ReplayTransport]:
            self.opened.append(record.name)
            if self.fail:
                raise TransportError(self.fail)
            assert self.recording is not None
            yield ReplayTransport(self.recording)

        return opener


def run(source: UsbSource) -> tuple[list[Observation], list]:
    result = source.scan(ScanContext(load_catalog(), NOW))
    return result.observations, result.errors


def bar_tree(root: Path, serial: str) -> None:
    add_device(root, "2-1", 0x046D, 0x08A5)
    add_device(root, "2-1.1", 0x046D, 0x089B, bcd=0x0020, serial=serial, product="Logi Rally Bar")
    add_device(root, "1-3", 0x046D, 0x085E, serial="476C95B2")


def test_live_scan_reads_bars_over_sync_and_keeps_usb_facts(tmp_path: Path) -> None:
    bar_tree(tmp_path, BAR_SERIAL)
    source = SyncFromRecording(tmp_path, Capture().recording())
    observations, errors = run(source)
    assert errors == []
    assert source.opened == ["2-1.1"]  # only the bar's main function, never the webcam
    bar = next(o for o in observations if o.product == "Rally Bar")
    assert (bar.serial, str(bar.serial_source), bar.firmware) == (BAR_SERIAL, "sync-interface", "1.9.556")
    assert bar.attributes["functions"][0]["address"] == "2-1"
    assert not bar.health


def test_usb_serial_that_disagrees_with_sync_is_flagged(tmp_path: Path) -> None:
    bar_tree(tmp_path, "2313FD1N0XXX")
    [bar] = [
        o for o in run(SyncFromRecording(tmp_path, Capture().recording()))[0] if o.product == "Rally Bar"
    ]
    assert bar.serial == BAR_SERIAL
    assert [i.code for i in bar.health] == ["serial-mismatch"]


def test_busy_interface_keeps_descriptor_facts_without_an_error(tmp_path: Path) -> None:
    bar_tree(tmp_path, BAR_SERIAL)
    observations, errors = run(SyncFromRecording(tmp_path, None, fail="interface 3 is busy"))
    assert errors == []
    bar = next(o for o in observations if o.product == "Rally Bar")
    assert str(bar.serial_source) == "usb-descriptor"
    [note] = bar.health
    assert note.code == "sync-interface-unavailable" and "busy" in note.message
    assert str(note.severity) == "info"


def test_a_captured_tree_never_opens_live_devices(tmp_path: Path) -> None:
    bar_tree(tmp_path, BAR_SERIAL)
    source = UsbSource(tmp_path)
    assert not source.live and not source.devices_reachable and not source.libusb_strings
    observations, errors = run(source)
    bar = next(o for o in observations if o.product == "Rally Bar")
    # Nothing opened; the bar says why it shows no firmware (an info note, health stays ok).
    assert errors == [] and [(i.code, str(i.severity)) for i in bar.health] == [("firmware-not-read", "info")]


def test_table_lists_a_bars_devices_and_peripherals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--replay", str(shared_file(*FIXTURE))]) == 0
    lines = capsys.readouterr().out.splitlines()
    bar_line = next(i for i, line in enumerate(lines) if line.startswith("Rally Bar "))
    assert BAR_SERIAL in lines[bar_line] and "1.9.556" in lines[bar_line]
    children = lines[bar_line + 1 : bar_line + 4]
    assert any("└ Sight" in line and SIGHT_SERIAL in line for line in children)
    assert any("└ Rally Mic Pod" in line and "2.1.3" in line for line in children)
