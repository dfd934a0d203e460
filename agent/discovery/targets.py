"""Network targets: addresses, ``host:port``, ``[v6]:port`` and CIDR ranges.

Kept free of network libraries so the configuration can check targets cheaply
(``roomsync check-config``) with the same rules the sweep uses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DEFAULT_PORT = 161
#: A sweep larger than this is refused: it is almost certainly a typo (/8 instead of /24).
MAX_ADDRESSES = 65_536


class TargetError(ValueError):
    """One or more target specifications are unusable; every problem is listed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    #: Part of a range: silence is normal and not an error.
    swept: bool = False

    @property
    def address(self) -> str:
        """How the target is shown and identified: ``host`` on the default port,
        ``host:port`` (``[v6]:port``) otherwise."""
        if self.port == DEFAULT_PORT:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split_port(spec: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, bare IPv6 (no port)."""
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError("missing ']'")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
        return host, _port(rest[1:])
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, _port(port)
    return spec, default_port


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number between 1 and 65535")
    return int(text)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(spec: str, default_port: int) -> tuple[Network | str, int]:
    """One spec as (network, port) for a range, else (host, port). Raises ValueError."""
    text = spec.strip()
    if not text:
        raise ValueError("empty target")
    if "/" in text:
        net_text, port = text, default_port
        if text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit():  # 10.0.0.0/24:1161
            net_text, _, port_text = text.rpartition(":")
            port = _port(port_text)
        if net_text.startswith("[") and "]" in net_text:  # [fd00::]/120:1161
            head, _, tail = net_text[1:].partition("]")
            net_text, port = head, _port(tail[1:]) if tail.startswith(":") else default_port
        net = ipaddress.ip_network(net_text, strict=False)
        if net.num_addresses > MAX_ADDRESSES:
            raise ValueError(
                f"{net} holds {net.num_addresses} addresses; at most {MAX_ADDRESSES} per sweep (split it)"
            )
        return net, port
    return _host_and_port(text, default_port)


def _host_and_port(text: str, default_port: int) -> tuple[str, int]:
    """One host (an address in its normal form, or a host name as written) and its port."""
    host, port = _split_port(text, default_port)
    if not host:
        raise ValueError("no host")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        if not _is_host_name(host):
            raise ValueError(f"{host!r} is neither an address nor a host name") from None
    return host, port


def _expand(spec: str, default_port: int) -> Iterator[Target]:
    where, port = _parse(spec, default_port)
    if isinstance(where, str):
        yield Target(where, port)
        return
    for ip in where.hosts() if where.num_addresses > 2 else iter(where):
        yield Target(str(ip), port, swept=True)


def check_targets(specs: Sequence[str], default_port: int = DEFAULT_PORT) -> list[str]:
    """Every problem with ``specs``, without expanding ranges (for configuration checks)."""
    problems = []
    total = 0
    for spec in specs:
        try:
            where, _ = _parse(spec, default_port)
        except ValueError as exc:
            problems.append(f"{spec!r}: {exc}")
            continue
        total += 1 if isinstance(where, str) else where.num_addresses
    if total > MAX_ADDRESSES:
        problems.append(f"the targets name more than {MAX_ADDRESSES} addresses")
    return problems


def parse_host_port(spec: str, default_port: int) -> tuple[str, int]:
    """One host: ``address``, ``host name``, ``host:port``, ``[v6]`` or ``[v6]:port`` (no
    ranges). Raises :class:`ValueError` saying what is wrong."""
    text = spec.strip()
    if not text:
        raise ValueError("empty host")
    if "/" in text:
        raise ValueError("a range is not a host: list each device")
    host, port = _host_and_port(text, default_port)
    return host.rstrip(".").lower(), port


def _is_host_name(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in labels
    )


class TargetPlan:
    """The addresses ``specs`` name, once each, in order, produced one at a time: a /16 is
    never held as 65,534 objects. ``len()`` is the exact count. An address given on its own
    and again inside a range is one target, not swept (silence is an error for it), at the
    place it first appears."""

    def __init__(self, entries: list[tuple[Network | str, int]]) -> None:
        self._entries = entries
        self._singles = {(w, p) for w, p in entries if isinstance(w, str)}
        self._total = sum(1 for _ in self._walk(text=False))

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[Target]:
        for host, port, swept in self._walk(text=True):
            yield Target(str(host), port, swept)

    def _walk(self, *, text: bool) -> Iterator[tuple[object, int, bool]]:
        emitted: set[tuple[str, int]] = set()
        ranges: list[tuple[int, int, int, int]] = []  # (version, port, first, last) before this one
        for where, port in self._entries:
            if isinstance(where, str):
                if (where, port) not in emitted:
                    emitted.add((where, port))
                    yield where, port, False
                continue
            version = where.version
            first, last = int(where.network_address), int(where.broadcast_address)
            if where.num_addresses > 2:
                first, last = first + 1, last - 1
            earlier = [
                (f, la) for v, p, f, la in ranges if v == version and p == port and f <= last and la >= first
            ]
            ranges.append((version, port, first, last))
            make = _ipv4_text if version == 4 else _ipv6_text
            for number in range(first, last + 1):
                if earlier and any(f <= number <= la for f, la in earlier):
                    continue
                host = str(make(number)) if text or self._singles else number
                if self._singles and (host, port) in self._singles:
                    if (host, port) in emitted:
                        continue
                    emitted.add((str(host), port))
                    yield host, port, False
                    continue
                yield host, port, True


def _ipv4_text(number: int) -> str:
    return socket.inet_ntoa(number.to_bytes(4, "big"))


def _ipv6_text(number: int) -> str:
    return str(ipaddress.IPv6Address(number))


def plan_targets(
    specs: Sequence[str], default_port: int = DEFAULT_PORT, *, max_addresses: int = MAX_ADDRESSES
) -> TargetPlan:
    """Every address named by ``specs``, once, in order, as a lazy :class:`TargetPlan`.
    Raises :class:`TargetError` listing every unusable spec."""
    entries: list[tuple[Network | str, int]] = []
    problems: list[str] = []
    named = 0
    for spec in specs:
        try:
            where, port = _parse(spec, default_port)
        except ValueError as exc:
            problems.append(f"SNMP target {spec!r}: {exc}")
            continue
        entries.append((where, port))
        named += 1 if isinstance(where, str) else where.num_addresses
    if problems:
        raise TargetError(problems)
    # Cheap bound first: overlapping ranges are counted once only by the plan itself.
    if named > max_addresses:
        plan = TargetPlan(entries) if named <= 4 * max_addresses else None
        if plan is None or len(plan) > max_addresses:
            raise TargetError([f"the targets name more than {max_addresses} addresses"])
        return plan
    return TargetPlan(entries)


def parse_targets(
    specs: Sequence[str], default_port: int = DEFAULT_PORT, *, max_addresses: int = MAX_ADDRESSES
) -> list[Target]:
    """Every address named by ``specs``, once, in order. Raises :class:`TargetError`
    listing every unusable spec."""
    return list(plan_targets(specs, default_port, max_addresses=max_addresses))
