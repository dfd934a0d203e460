"""The agent is read-only toward devices: the one exception every gate raises.

Every collector that sends a device anything at all — a USB control request, a Sync frame, an
SNMP PDU, a command over SSH — passes each request through its own *gate* first: a function
that accepts exactly the documented identity and status reads and raises
:class:`ReadOnlyViolation` for anything else, however it was built. The collector registry
(:mod:`agent.collectors`) refuses a collector that writes without declaring its gate.

This module sits at the bottom of the package (it imports nothing of the project) so that
every layer that talks to a device can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ReadOnlyViolation(Exception):
    """A request other than a documented read was about to be sent to a device. Raised
    before a single byte of it leaves the process."""


#: A gate: called with one outgoing request in its transport's own form (the bytes of a
#: frame or a setup packet, an SNMP PDU, a command line…); returns when the request may be
#: sent, raises :class:`ReadOnlyViolation` when it may not.
Gate = Callable[[Any], object]
