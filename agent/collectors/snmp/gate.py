"""The SNMP read-only gate: what the agent may send an SNMP agent, checked before it is sent.

Every request leaves through this gate, whichever path sends it:

* the pysnmp engine's requests (:class:`~agent.collectors.snmp.client.SnmpClient`, v2c and v3)
  pass their PDU object to :func:`check_snmp_request` before the engine encodes it;
* the sweep's own liveness probe (:mod:`agent.collectors.snmp.probe`) passes the encoded
  message: :func:`check_snmp_request` decodes it (pysnmp's message API) and checks the PDU
  inside. :class:`StampedMessageGate` is that check for a stream of messages that differ from
  one checked message only in their request-id.

Documented reads (docs/snmp.md, shared protocols.md "SNMP"): GET, GETNEXT and GETBULK, every
varbind carrying NULL, every object id one of the system group's sysDescr, sysObjectID and
sysName, or inside one of the ENTITY-MIB physical table columns the agent reads. Anything else
— SET, traps, informs, responses, reports, a value in a read, another object — raises
:class:`~agent.readonly.ReadOnlyViolation` before a byte leaves the process.
"""

from __future__ import annotations

from typing import Any

from pysnmp.proto.api import v2c

from agent.readonly import ReadOnlyViolation

Oid = tuple[int, ...]

SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID: Oid = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_NAME: Oid = (1, 3, 6, 1, 2, 1, 1, 5, 0)
SYSTEM_OIDS: tuple[Oid, ...] = (SYS_DESCR, SYS_OBJECT_ID, SYS_NAME)
ENT_PHYSICAL_ENTRY: Oid = (1, 3, 6, 1, 2, 1, 47, 1, 1, 1, 1)
#: The ENTITY-MIB columns read, by number.
ENTITY_COLUMNS: dict[int, str] = {
    2: "descr",
    5: "class",
    7: "name",
    8: "hardware_rev",
    9: "firmware_rev",
    10: "software_rev",
    11: "serial",
    12: "manufacturer",
    13: "model",
}

#: The PDUs a read sends. SET, traps, informs, responses and reports never leave the agent.
_READ_PDUS = (v2c.GetRequestPDU, v2c.GetNextRequestPDU, v2c.GetBulkRequestPDU)
_ENTRY_LEN = len(ENT_PHYSICAL_ENTRY)


def documented_oid(oid: Oid) -> bool:
    """A system group object the agent reads, or an object of a documented ENTITY-MIB column
    (the column itself, where a walk starts, or one of its rows)."""
    if oid in SYSTEM_OIDS:
        return True
    return (
        len(oid) > _ENTRY_LEN and oid[:_ENTRY_LEN] == ENT_PHYSICAL_ENTRY and oid[_ENTRY_LEN] in ENTITY_COLUMNS
    )


def check_snmp_request(request: Any) -> None:
    """The SNMP gate. ``request`` is a PDU object, or an encoded SNMPv1/v2c message (bytes).
    It must be a GET, GETNEXT or GETBULK of documented objects whose varbinds carry no
    values (NULL), else :class:`~agent.readonly.ReadOnlyViolation`."""
    if isinstance(request, (bytes, bytearray, memoryview)):
        request = _decode_request(bytes(request))
    if not isinstance(request, _READ_PDUS):
        raise ReadOnlyViolation(
            f"refused to send an SNMP {type(request).__name__}: only GET, GETNEXT and GETBULK are sent"
        )
    for name, value in v2c.apiPDU.get_varbinds(request):
        if not isinstance(value, v2c.Null):
            raise ReadOnlyViolation(
                f"refused to send an SNMP request carrying a value for {name.prettyPrint()}: reads carry NULL"
            )
        if not documented_oid(tuple(name)):
            raise ReadOnlyViolation(
                f"refused to send an SNMP request for {name.prettyPrint()}: "
                "not an object the agent documents reading"
            )


def _decode_request(data: bytes) -> Any:
    """The PDU inside an encoded v1/v2c message; a message that does not decode as exactly one
    such message (trailing bytes included) is refused."""
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api

    try:
        version = int(api.decodeMessageVersion(data))
        module = api.PROTOCOL_MODULES[version]
        message, rest = decoder.decode(data, asn1Spec=module.Message())
    except Exception as exc:  # pyasn1 raises many kinds; none of them is a documented read
        raise ReadOnlyViolation(f"refused to send bytes that are not an SNMPv1/v2c message ({exc})") from None
    if rest:
        raise ReadOnlyViolation("refused to send an SNMP message with trailing bytes")
    return module.apiMessage.get_pdu(message)


class StampedMessageGate:
    """The gate for a stream of messages built from one template: the template is decoded and
    checked once (:func:`check_snmp_request`); a message then passes when it equals the
    template everywhere but its request-id's content octets (``window``, checked to hold the
    request-id when the gate is made). Any other message is decoded and checked in full.

    So every datagram is checked, at the cost of a comparison rather than a decode (a decode
    is ~0.2 ms: at 5,000 probes a second it alone would need a whole core)."""

    def __init__(self, template: bytes, window: tuple[int, int]) -> None:
        check_snmp_request(template)
        start, end = window
        if not 0 < start < end <= len(template):
            raise ValueError("request-id window outside the message")
        # The window must be the request-id's content octets and nothing else: the template
        # and a copy with other octets there decode to the same PDU but for the request-id.
        other = template[:start] + bytes(0x5A ^ b for b in template[start:end]) + template[end:]
        for message in (template, other):
            pdu = _decode_request(message)
            if int(v2c.apiPDU.get_request_id(pdu)) != int.from_bytes(message[start:end], "big", signed=True):
                raise ValueError("the window does not hold the request-id")
        first, second = _decode_request(template), _decode_request(other)
        if type(first) is not type(second) or list(v2c.apiPDU.get_varbinds(first)) != list(
            v2c.apiPDU.get_varbinds(second)
        ):
            raise ValueError("the window holds more than the request-id")
        self.template = bytes(template)
        self.start, self.end = start, end
        self._head = self.template[:start]
        self._tail = self.template[end:]

    def __call__(self, message: bytes) -> None:
        if (
            len(message) == len(self.template)
            and message[: self.start] == self._head
            and message[self.end :] == self._tail
        ):
            return
        check_snmp_request(message)
