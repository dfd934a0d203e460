"""Framing of the Sync Agent interface: a 12-byte header in front of every transfer.

protocols.md ("The Sync Agent interface of CollabOS bars"), checked against the recorded
Rally Bar session: every bulk transfer starts with three little-endian u32 —
``command, payload_length, sequence_id`` — followed by ``payload_length`` bytes.

Two facts from the recording that the plain description leaves out:

* the device's own ``UninitBuffer`` (sent after the host acknowledged a ``BufferRead``) is
  **8 bytes**: command and a zero length, no sequence id (events 26, 34, 42 of
  ``logi-rally-bar-setup.json``). It is decoded with sequence id 0, which is what a host
  that parses from a zero-filled buffer sees;
* acknowledgements differ by direction: the device puts the acknowledged command in its
  payload as ASCII decimal (``b"52231"`` = 0xCC07), the host as a u32le (``06 cc 00 00``).

Decoding is strict: a transfer must hold exactly one frame, with a known command and a
declared length that matches the bytes and stays under a cap. Anything else is a
:class:`FrameError` naming what was wrong; nothing here raises anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from agent.collectors.sync.errors import FrameError

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size  # 12
#: The device's UninitBuffer as recorded: command + zero length, no sequence id.
SHORT_UNINIT_SIZE = 8
#: Largest payload accepted. The recorded GetDeviceInfo answer is 3,017 bytes; a bar with
#: many peripherals stays far below this. A larger declared length is a corrupt header.
MAX_PAYLOAD = 1 << 20
_U32 = struct.Struct("<I")
_MAX_U32 = 0xFFFF_FFFF


class Command(IntEnum):
    """Frame commands of the Sync interface (protocols.md)."""

    BUFFER_READ = 0xCC06  # device → host message
    BUFFER_WRITE = 0xCC07  # host → device message
    UNINIT_BUFFER = 0xCC08  # closes a BufferWrite (host) or a BufferRead (device)
    ACK = 0xFF01
    TIMEOUT = 0xFF02
    NACK = 0xFF03

    @property
    def label(self) -> str:
        """The protocol's own spelling (``BufferRead``), for messages."""
        return _LABELS[self]


_LABELS = {
    Command.BUFFER_READ: "BufferRead",
    Command.BUFFER_WRITE: "BufferWrite",
    Command.UNINIT_BUFFER: "UninitBuffer",
    Command.ACK: "Ack",
    Command.TIMEOUT: "Timeout",
    Command.NACK: "Nack",
}
_COMMANDS = frozenset(int(c) for c in Command)


def command_label(value: int) -> str:
    """``BufferRead`` for a known command, ``0x1234`` for anything else."""
    return Command(value).label if value in _COMMANDS else f"0x{value:04x}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded transfer."""

    command: Command
    sequence_id: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.command, self.sequence_id, self.payload)

    def describe(self) -> str:
        """Short human form for logs and errors: ``Ack(seq 3, b'52231')``."""
        shown = self.payload if len(self.payload) <= 16 else self.payload[:16] + b"..."
        return f"{self.command.label}(seq {self.sequence_id}, {len(self.payload)} bytes {shown!r})"


def encode_frame(
    command: Command | int, sequence_id: int, payload: bytes = b"", *, max_payload: int = MAX_PAYLOAD
) -> bytes:
    """Header + payload. Raises :class:`FrameError` for values the header cannot carry."""
    if int(command) not in _COMMANDS:
        raise FrameError(f"unknown command {command_label(int(command))}")
    if not 0 <= sequence_id <= _MAX_U32:
        raise FrameError(f"sequence id {sequence_id} does not fit in a u32")
    if len(payload) > max_payload:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the cap of {max_payload}")
    return HEADER.pack(int(command), len(payload), sequence_id) + bytes(payload)


def encode_short_uninit() -> bytes:
    """The device's 8-byte UninitBuffer exactly as recorded (for replays and tests)."""
    return struct.pack("<II", Command.UNINIT_BUFFER, 0)


def declared_size(data: bytes, *, max_payload: int = MAX_PAYLOAD) -> int:
    """How many bytes the frame starting at ``data`` declares (header included).

    Used to reassemble a frame that arrives in several transfers. Raises
    :class:`FrameError` when ``data`` is too short to hold a header, names an unknown
    command, or declares more than ``max_payload``.
    """
    if len(data) == SHORT_UNINIT_SIZE and _is_short_uninit(data):
        return SHORT_UNINIT_SIZE
    if len(data) < HEADER_SIZE:
        raise FrameError(f"truncated frame: {len(data)} bytes, a header needs {HEADER_SIZE}")
    command, length, _seq = HEADER.unpack_from(data)
    length = int(length)
    if command not in _COMMANDS:
        raise FrameError(f"unknown command {command_label(command)} in frame header")
    if length > max_payload:
        raise FrameError(
            f"{command_label(command)} declares a payload of {length} bytes, over the cap of {max_payload}"
        )
    return HEADER_SIZE + length


def decode_frame(data: bytes, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Decode exactly one frame. Raises :class:`FrameError` for anything malformed."""
    data = bytes(data)
    if len(data) == SHORT_UNINIT_SIZE and _is_short_uninit(data):
        return Frame(Command.UNINIT_BUFFER, 0)
    size = declared_size(data, max_payload=max_payload)
    command, _length, seq = HEADER.unpack_from(data)
    if len(data) < size:
        raise FrameError(
            f"truncated {command_label(command)} frame: header declares "
            f"{size - HEADER_SIZE} payload bytes, {len(data) - HEADER_SIZE} arrived"
        )
    if len(data) > size:
        raise FrameError(
            f"{command_label(command)} frame has {len(data) - size} bytes after "
            f"its declared {size - HEADER_SIZE}-byte payload"
        )
    return Frame(Command(command), seq, data[HEADER_SIZE:])


def _is_short_uninit(data: bytes) -> bool:
    return struct.unpack_from("<II", data) == (Command.UNINIT_BUFFER, 0)


# --------------------------------------------------------------------------- acknowledgements


def host_ack_payload(command: Command) -> bytes:
    """What the host puts in its Ack: the acknowledged command as u32le (recorded
    ``06 cc 00 00`` for a BufferRead, ``08 cc 00 00`` for the device's UninitBuffer)."""
    return _U32.pack(int(command))


def parse_host_ack(payload: bytes) -> int:
    """The command a host Ack acknowledges. Raises :class:`FrameError` unless 4 bytes."""
    if len(payload) != _U32.size:
        raise FrameError(f"a host Ack carries a 4-byte command, not {len(payload)} bytes")
    return int(_U32.unpack(payload)[0])


def device_ack_payload(command: Command | int) -> bytes:
    """What the device puts in its Ack: the command as ASCII decimal (``b"52231"``)."""
    return str(int(command)).encode("ascii")


def parse_device_ack(payload: bytes) -> int:
    """The command a device Ack acknowledges (ASCII decimal, NUL padding tolerated).

    Raises :class:`FrameError` for anything that is not 1–10 decimal digits of a u32.
    """
    text = payload.rstrip(b"\x00")
    if not 1 <= len(text) <= 10 or not text.isdigit():
        raise FrameError(f"device Ack payload {payload[:16]!r} is not an ASCII decimal command")
    value = int(text)
    if value > _MAX_U32:
        raise FrameError(f"device Ack payload {text!r} does not fit in a u32")
    return value
