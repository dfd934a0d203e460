"""A deliberately broken SNMPv2c agent on 127.0.0.1, for the faults no real agent shows on
demand: walks that never end or go backwards, answers that come too late.

It speaks real SNMP on a real UDP socket (pysnmp's protocol API encodes and decodes the
messages), so the client under test cannot tell it from a device. It runs in a thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from pysnmp.proto.api import v2c

Oid = tuple[int, ...]
#: ``responder(oid_requested, repetition) -> (oid, value)`` for one cell of a GETBULK row.
Responder = Callable[[Oid, int], tuple[Oid, Any]]

SYSTEM = {
    (1, 3, 6, 1, 2, 1, 1, 1, 0): v2c.OctetString(b"rogue agent"),
    (1, 3, 6, 1, 2, 1, 1, 2, 0): v2c.ObjectIdentifier((1, 3, 6, 1, 4, 1, 99999, 1)),
    (1, 3, 6, 1, 2, 1, 1, 5, 0): v2c.OctetString(b"rogue"),
}


def endless(oid: Oid, rep: int) -> tuple[Oid, Any]:
    """Every request gets ever higher rows: a table with no end."""
    return (*oid, rep + 1), v2c.OctetString(b"x")


def no_table(oid: Oid, rep: int) -> tuple[Oid, Any]:
    """No ENTITY-MIB at all: every walk ends at once."""
    return oid, v2c.EndOfMibView()


def backwards(oid: Oid, rep: int) -> tuple[Oid, Any]:
    """The same row again and again: a walk that never moves forward."""
    base = oid if len(oid) > 12 else (*oid, 1)
    return base, v2c.OctetString(b"loop")


class RogueAgent:
    def __init__(
        self,
        *,
        community: bytes = b"public",
        responder: Responder = endless,
        delay: float = 0.0,
        system: dict[Oid, Any] | None = None,
    ) -> None:
        self.community = community
        self.responder = responder
        self.delay = delay
        self.system = dict(SYSTEM if system is None else system)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RogueAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is None:
                continue
            self.requests += 1
            self._send(reply, peer)

    def _send(self, reply: bytes, peer: Any) -> None:
        """Send the answer to one request (a subclass may send other datagrams first)."""
        if self.delay:
            time.sleep(self.delay)
        self.sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        version = int(api.decodeMessageVersion(data))
        mod = api.PROTOCOL_MODULES[version]
        msg, _ = decoder.decode(data, asn1Spec=mod.Message())
        if bytes(mod.apiMessage.get_community(msg)) != self.community:
            return None  # like a real v2c agent: silence
        pdu = mod.apiMessage.get_pdu(msg)
        rsp = mod.apiMessage.get_response(msg)
        rsp_pdu = mod.apiMessage.get_pdu(rsp)
        asked = [tuple(o) for o, _ in mod.apiPDU.get_varbinds(pdu)]
        if pdu.isSameTypeWith(v2c.GetBulkRequestPDU()):
            reps = int(v2c.apiBulkPDU.get_max_repetitions(pdu))
            binds = [self.responder(o, r) for r in range(reps) for o in asked]
        else:
            binds = [(o, self.system.get(o, v2c.NoSuchObject())) for o in asked]
        mod.apiPDU.set_varbinds(rsp_pdu, binds)
        return bytes(encoder.encode(rsp))
