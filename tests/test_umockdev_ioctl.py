"""The ioctl testbed (tests/umockdev_ioctl.py): real ``fcntl.ioctl()`` calls of a child
process reach the test's callbacks byte for byte, and the callbacks' answers reach the caller.

The functions the child runs are the ``caller_*`` ones at module level (``IoctlTestbed.run``
pickles them by name); they build the ioctl arguments themselves, as the agent will."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.umockdev_ioctl import (
    CAPTURE_CAPS,
    HIDIOCGRAWINFO,
    UVC_GET_CUR,
    UVC_GET_LEN,
    UVC_SET_CUR,
    UVCIOC_CTRL_QUERY,
    VIDIOC_QUERYCAP,
    HidFeature,
    Ioctl,
    IoctlTestbed,
    UvcQuery,
    hidiocgfeature,
    hidiocsfeature,
    querycap_reply,
)

pytestmark = [pytest.mark.umockdev]

CAMERA = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"
HUB = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3"
SCRIBE = (0x046D, 0x08E2)
TAP_SENSOR = (0x046D, 0x0872)


@pytest.fixture
def bed() -> Iterator[IoctlTestbed]:
    with IoctlTestbed.required() as testbed:
        yield testbed


# --------------------------------------------------------------------------- child side


class XuQuery(ctypes.Structure):
    _fields_ = (
        ("unit", ctypes.c_uint8),
        ("selector", ctypes.c_uint8),
        ("query", ctypes.c_uint8),
        ("size", ctypes.c_uint16),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
    )


def xu(fd: int, unit: int, selector: int, query: int, size: int, data: bytes = b"") -> tuple[int, bytes]:
    buffer = (ctypes.c_uint8 * max(size, 1))(*data)
    result = fcntl.ioctl(fd, UVCIOC_CTRL_QUERY, XuQuery(unit, selector, query, size, buffer), True)
    return result, bytes(buffer[:size])


def caller_get_len_then_cur(node: str, unit: int, selector: int) -> list[tuple[int, bytes]]:
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        first = xu(fd, unit, selector, UVC_GET_LEN, 2)
        length = int.from_bytes(first[1], "little")
        return [first, xu(fd, unit, selector, UVC_GET_CUR, length)]
    finally:
        os.close(fd)


def caller_set_cur(node: str, unit: int, selector: int, data: bytes) -> int:
    fd = os.open(node, os.O_RDWR)
    try:
        return xu(fd, unit, selector, UVC_SET_CUR, len(data), data)[0]
    finally:
        os.close(fd)


def caller_errno_of(node: str, query: int) -> tuple[int | None, str]:
    """Returns the errno of the failed query (None when it succeeded) and an error string."""
    fd = os.open(node, os.O_RDWR)
    try:
        xu(fd, 8, 1, query, 4 if query != UVC_GET_LEN else 2)
    except OSError as exc:
        return exc.errno, str(exc)
    finally:
        os.close(fd)
    return None, ""


def caller_hid_set_then_get(node: str, sent: bytes, report: int, length: int) -> tuple[int, int, bytes]:
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    try:
        set_buffer = bytearray(sent)
        set_result = fcntl.ioctl(fd, hidiocsfeature(len(set_buffer)), set_buffer, True)
        get_buffer = bytearray(length)
        get_buffer[0] = report
        got = fcntl.ioctl(fd, hidiocgfeature(length), get_buffer, True)
        return set_result, got, bytes(get_buffer[:got])
    finally:
        os.close(fd)


def caller_hid_get_errno(node: str) -> int | None:
    fd = os.open(node, os.O_RDWR)
    try:
        fcntl.ioctl(fd, hidiocgfeature(5), bytearray(b"\x19\0\0\0\0"), True)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def caller_hid_info(node: str) -> tuple[int, int, int]:
    fd = os.open(node, os.O_RDONLY)
    try:
        buffer = bytearray(8)
        fcntl.ioctl(fd, HIDIOCGRAWINFO, buffer, True)
        bustype, vendor, product = struct.unpack("=IHH", buffer)
        return bustype, vendor, product
    finally:
        os.close(fd)


def caller_querycap(node: str) -> tuple[str, str, int, int]:
    fd = os.open(node, os.O_RDWR)
    try:
        buffer = bytearray(104)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buffer, True)
        driver, card, _bus, _version, caps, device_caps = struct.unpack_from("=16s32s32sIII", buffer)
        return driver.rstrip(b"\0").decode(), card.rstrip(b"\0").decode(), caps, device_caps
    finally:
        os.close(fd)


def caller_sysfs() -> dict[str, object]:
    usb = Path("/sys/bus/usb/devices")
    video = Path("/sys/class/video4linux/video0")
    return {
        "usb": sorted(p.name for p in usb.iterdir()),
        "idVendor": (usb / "1-2" / "idVendor").read_text(),
        "idProduct": (usb / "1-2" / "idProduct").read_text(),
        "index": (video / "index").read_text(),
        "name": (video / "name").read_text(),
        "video_path": os.path.realpath(video),
        "video_glob": sorted(str(p) for p in (usb / "1-2").glob("*:*/video4linux/*")),
        "hidraw_glob": sorted(str(p.name) for p in (usb / "1-3").glob("*:*/*/hidraw/*")),
        "driver": os.readlink(usb / "1-2:1.0" / "driver").rsplit("/", 1)[-1],
        "is_char_device": os.stat("/dev/video0").st_mode & 0o170000 == 0o020000,
    }


def caller_opens(path: str) -> str:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.errno}"
    return "opened"


def caller_raises() -> None:
    raise LookupError("from the child")


# --------------------------------------------------------------------------- tests


def test_uvc_get_len_then_get_cur_reach_the_handler_and_the_caller_gets_its_bytes(bed: IoctlTestbed) -> None:
    replies = {UVC_GET_LEN: b"\x04\x00", UVC_GET_CUR: b"\x01\x02\x03\x04"}
    seen: list[UvcQuery] = []

    def answer(query: UvcQuery) -> bytes:
        seen.append(query)  # the callback runs in this process: plain closures work
        return replies[query.query]

    video = bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=answer, name="Logi Scribe")
    assert video.node == "/dev/video0"
    assert video.sysfs == f"{CAMERA}/1-2:1.0/video4linux/video0"

    result = bed.run(caller_get_len_then_cur, video.node, 8, 1)

    assert result == [(0, b"\x04\x00"), (0, b"\x01\x02\x03\x04")]
    assert bed.requests == [
        UvcQuery("/dev/video0", unit=8, selector=1, query=UVC_GET_LEN, size=2, data=b"\0\0"),
        UvcQuery("/dev/video0", unit=8, selector=1, query=UVC_GET_CUR, size=4, data=b"\0\0\0\0"),
    ]
    assert seen == bed.requests
    assert all(r.request == 0xC0107521 for r in seen)


def test_set_cur_carries_the_callers_bytes_to_the_handler(bed: IoctlTestbed) -> None:
    bed.add_uvc_device(CAMERA, vid=0x046D, pid=0x0876, answer=lambda query: None)
    sent = bytes([0x0B, 0, 0, 0, 0, 0, 0, 0])

    assert bed.run(caller_set_cur, "/dev/video0", 6, 1, sent) == 0
    assert bed.requests == [UvcQuery("/dev/video0", 6, 1, UVC_SET_CUR, 8, sent)]


def test_hidraw_set_feature_then_get_feature_round_trip(bed: IoctlTestbed) -> None:
    def answer(feature: HidFeature) -> bytes | None:
        if feature.op == "set":
            return None
        assert feature.report_id == 0x19
        return bytes([0x19, 0x34, 0x12, 0x07, 0x02])

    hidraw = bed.add_hidraw_device(HUB, vid=TAP_SENSOR[0], pid=TAP_SENSOR[1], answer=answer, interface=2)
    assert hidraw.node == "/dev/hidraw0"

    result = bed.run(caller_hid_set_then_get, hidraw.node, bytes([0x1B, 4, 0, 0, 0]), 0x19, 5)

    assert result == (5, 5, bytes([0x19, 0x34, 0x12, 0x07, 0x02]))
    assert bed.requests == [
        HidFeature("/dev/hidraw0", "set", bytes([0x1B, 4, 0, 0, 0])),
        HidFeature("/dev/hidraw0", "get", bytes([0x19, 0, 0, 0, 0])),
    ]
    assert [r.request for r in bed.requests] == [0xC0054806, 0xC0054807]  # type: ignore[union-attr]
    # The node's identity ioctls are answered from its description (and recorded too).
    bed.requests.clear()
    assert bed.run(caller_hid_info, hidraw.node) == (3, 0x046D, 0x0872)
    assert bed.requests == [Ioctl("/dev/hidraw0", HIDIOCGRAWINFO)]


@pytest.mark.parametrize("code", [errno.EIO, errno.EPIPE])
def test_the_handler_fails_an_ioctl_with_an_errno(bed: IoctlTestbed, code: int) -> None:
    def by_return(query: UvcQuery) -> int:
        return code

    def by_raise(feature: HidFeature) -> bytes:
        raise OSError(code, os.strerror(code))

    bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=by_return)
    bed.add_hidraw_device(HUB, vid=TAP_SENSOR[0], pid=TAP_SENSOR[1], answer=by_raise)

    assert bed.run(caller_errno_of, "/dev/video0", UVC_GET_CUR) == (
        code,
        f"[Errno {code}] {os.strerror(code)}",
    )
    assert bed.run(caller_hid_get_errno, "/dev/hidraw0") == code
    assert bed.failures == []  # an errno is an answer, not a failure of the test


def test_an_assertion_in_the_handler_fails_the_test_even_when_the_caller_swallows_it(
    bed: IoctlTestbed,
) -> None:
    def answer(query: UvcQuery) -> bytes:
        assert query.query != UVC_GET_CUR, "GET_CUR is forbidden here"
        return b"\x04\x00"

    bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=answer)
    # caller_errno_of catches the OSError (EIO); the handler's assertion surfaces all the same.
    with pytest.raises(AssertionError, match="GET_CUR is forbidden here"):
        bed.run(caller_errno_of, "/dev/video0", UVC_GET_CUR)
    assert bed.requests == [UvcQuery("/dev/video0", 8, 1, UVC_GET_CUR, 4, b"\0" * 4)]
    # A reply of the wrong length is the test's mistake, reported the same way.
    bed.requests.clear()
    bed.add_uvc_device(HUB, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: b"\x01", video=1)
    with pytest.raises(ValueError, match="must be 2 bytes"):
        bed.run(caller_errno_of, "/dev/video1", UVC_GET_LEN)


def test_vidioc_querycap_is_answered(bed: IoctlTestbed) -> None:
    bed.add_uvc_device(
        CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: 5, name="Logi Scribe", metadata_video=1
    )
    assert bed.run(caller_querycap, "/dev/video0") == ("uvcvideo", "Logi Scribe", 0x84A00001, CAPTURE_CAPS)
    assert bed.run(caller_querycap, "/dev/video1")[3] == 0x04A00000  # the metadata node
    assert bed.requests == [Ioctl("/dev/video0", VIDIOC_QUERYCAP), Ioctl("/dev/video1", VIDIOC_QUERYCAP)]

    other = querycap_reply("Other card", "usb-x", device_caps=0x1)
    bed.add_uvc_device(HUB, vid=0x046D, pid=0x0866, answer=lambda q: 5, video=2, querycap=other)
    assert bed.run(caller_querycap, "/dev/video2")[1:] == ("Other card", 0x84A00001, 0x1)
    bed.add_uvc_device(
        "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1",
        vid=1,
        pid=2,
        answer=lambda q: 5,
        video=3,
        querycap=errno.EINVAL,
    )
    with pytest.raises(OSError) as raised:
        bed.run(caller_querycap, "/dev/video3")
    assert raised.value.errno == errno.EINVAL
    assert "raised in the child process" in "".join(raised.value.__notes__)


def test_the_sysfs_tree_is_visible(bed: IoctlTestbed) -> None:
    bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: 5, name="Logi Scribe")
    bed.add_hidraw_device(HUB, vid=TAP_SENSOR[0], pid=TAP_SENSOR[1], answer=lambda f: 5, interface=2)

    seen = bed.run(caller_sysfs)

    assert seen == {
        "usb": ["1-2", "1-2:1.0", "1-3", "1-3:1.2"],
        "idVendor": "046d\n",
        "idProduct": "08e2\n",
        "index": "0\n",
        "name": "Logi Scribe\n",
        "video_path": f"{CAMERA}/1-2:1.0/video4linux/video0",
        "video_glob": ["/sys/bus/usb/devices/1-2/1-2:1.0/video4linux/video0"],
        "hidraw_glob": ["hidraw0"],
        "driver": "uvcvideo",
        "is_char_device": True,
    }
    assert bed.requests == []  # reading sysfs is no ioctl


def test_the_child_never_opens_a_real_node_and_raises_what_the_function_raised(bed: IoctlTestbed) -> None:
    bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: 5)
    assert bed.run(caller_opens, "/dev/video0") == "opened"
    assert bed.run(caller_opens, "/dev/video7") == "FileNotFoundError: 2"
    assert bed.run(caller_opens, "/dev/hidraw0") == "FileNotFoundError: 2"
    assert bed.run(caller_opens, "/dev/null") == "opened"
    with pytest.raises(LookupError, match="from the child"):
        bed.run(caller_raises)


def test_the_environment_serves_any_subprocess_and_the_test_process_is_untouched(bed: IoctlTestbed) -> None:
    bed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: b"\x02\x00")
    code = "import tests.test_umockdev_ioctl as t; print(t.caller_get_len_then_cur('/dev/video0', 8, 1)[0])"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=bed.env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(0, b'\\x02\\x00')"
    assert "UMOCKDEV_DIR" not in os.environ and "umockdev" not in os.environ.get("LD_PRELOAD", "")
    child_env = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    assert "UMOCKDEV_DIR" not in child_env


def test_closing_removes_the_testbed_and_refuses_duplicates() -> None:
    started = time.perf_counter()
    with IoctlTestbed.required() as testbed:
        root = testbed.root
        testbed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: 5)
        with pytest.raises(ValueError, match="video4linux/video0: exists already"):
            testbed.add_uvc_device(HUB, vid=1, pid=2, answer=lambda q: 5)
        assert testbed.run(caller_sysfs)["usb"] == ["1-2", "1-2:1.0"]  # nothing of HUB was made
        with pytest.raises(ValueError, match="already"):
            testbed.add_uvc_device(CAMERA, vid=SCRIBE[0], pid=SCRIBE[1], answer=lambda q: 5)
        with pytest.raises(ValueError, match="is 046d:08e2 already"):
            testbed.add_hidraw_device(CAMERA, vid=1, pid=2, answer=lambda f: 5)
        assert root.is_dir()
    assert not root.exists()
    assert time.perf_counter() - started < 1.0
