"""The room-PC collector as the SSH source uses it: its registry entry and its gate.

A room PC is read over SSH (:mod:`agent.discovery.ssh`): on Linux by files only, through SFTP
(open for reading, list a directory); on Windows by one constant PowerShell command
(:data:`~agent.collectors.windows_pc.WINDOWS_COMMAND`). :func:`check_ssh_request` is the one
check every request passes before the SSH source sends it; the facts read are turned into
observations by :mod:`agent.collectors.room_pc` and :mod:`agent.collectors.windows_pc`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.collectors.room_pc import observe_pc, read_linux_pc
from agent.collectors.windows_pc import WINDOWS_COMMAND, parse_windows_inventory
from agent.readonly import Gate, ReadOnlyViolation

#: The SFTP operations a Linux read uses, as ``(operation, path)``.
SFTP_READS = frozenset({"read", "list"})


def check_ssh_request(request: Any) -> None:
    """The SSH gate. A request is ``("read", path)`` (an SFTP open for reading),
    ``("list", path)`` (an SFTP directory listing) or ``("exec", command)``, which passes only
    for the constant Windows inventory command. Anything else — an SFTP write, rename or
    remove, another command, a command with anything appended — raises
    :class:`~agent.readonly.ReadOnlyViolation`."""
    if not isinstance(request, tuple) or len(request) != 2 or not all(isinstance(p, str) for p in request):
        raise ReadOnlyViolation(f"refused an SSH request of unknown form: {type(request).__name__}")
    operation, detail = request
    if operation in SFTP_READS:
        if "\x00" in detail:
            raise ReadOnlyViolation("refused an SFTP path with a NUL byte")
        return
    if operation == "exec":
        if detail != WINDOWS_COMMAND:
            raise ReadOnlyViolation(
                "refused to run a command on a room PC: only the constant Windows inventory command runs"
            )
        return
    raise ReadOnlyViolation(f"refused SSH operation {operation!r}: only SFTP reads and the inventory command")


class RoomPcCollector:
    """Every configured SSH host: the PC's own facts and the units on its USB."""

    name: ClassVar[str] = "ssh-dmi"
    writes: ClassVar[str | None] = (
        "SFTP opens for reading and directory listings (Linux); one constant PowerShell command (Windows)"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_ssh_request)
    read_linux_pc = staticmethod(read_linux_pc)
    parse_windows_inventory = staticmethod(parse_windows_inventory)
    observe_pc = staticmethod(observe_pc)
