"""Network targets: addresses, ``host:port``, ``[v6]:port`` and CIDR ranges.

Kept free of network libraries so the configuration can check targets cheaply
(``roomsync check-config``) with the same rules the sweep uses.
"""

from __future__ import annotations

import ipaddress
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


def parse_targets(
    specs: Sequence[str], default_port: int = DEFAULT_PORT, *, max_addresses: int = MAX_ADDRESSES
) -> list[Target]:
    """Every address named by ``specs``, once, in order. Raises :class:`TargetError`
    listing every unusable spec."""
    seen: dict[tuple[str, int], Target] = {}
    problems: list[str] = []
    for spec in specs:
        try:
            for target in _expand(spec, default_port):
                key = (target.host, target.port)
                if key not in seen or (seen[key].swept and not target.swept):
                    seen[key] = target
        except ValueError as exc:
            problems.append(f"SNMP target {spec!r}: {exc}")
        if len(seen) > max_addresses:
            problems.append(f"the targets name more than {max_addresses} addresses")
            break
    if problems:
        raise TargetError(problems)
    return list(seen.values())
