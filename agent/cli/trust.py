"""``roomsync trust collabos HOST``: the certificate pinned for a CollabOS device, the one it
presents now, and accepting a new one (``--accept-new``) after a reset or a new certificate.

Only a TLS handshake reaches the device: no request, no password.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from agent.cli.common import EXIT_FAILED, EXIT_OK, Parents, UsageError, load, print_json, seconds

if TYPE_CHECKING:
    from agent.pins import Pin

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    trust = sub.add_parser(
        "trust",
        help="show or accept the certificates pinned for devices (CollabOS)",
        description="Show or accept the certificates pinned for devices. A CollabOS device's "
        "certificate is pinned at its first contact; a device presenting another one is refused "
        "until it is accepted here.",
    )
    kinds = trust.add_subparsers(dest="kind", metavar="KIND")
    collabos = kinds.add_parser(
        "collabos",
        parents=[parents.common, parents.state],
        help="CollabOS devices' Device Management API certificates",
        description="Compare the certificate HOST presents with the one pinned for it (only a "
        "TLS handshake is made: nothing is sent, no password). Exit 0 when they match, nothing "
        "is pinned yet or --accept-new pinned the presented one; 1 when they differ or the "
        "device cannot be reached. The pin is the SHA-256 of the certificate's public key: on the device's "
        "network, `openssl s_client -connect HOST:443 </dev/null | openssl x509 -pubkey -noout "
        "| openssl pkey -pubin -outform der | openssl dgst -sha256` prints the same.",
    )
    collabos.add_argument("host", nargs="?", metavar="HOST[:PORT]", help="the device as configured")
    collabos.add_argument(
        "--accept-new", action="store_true", help="pin the certificate the device presents now"
    )
    collabos.add_argument(
        "--expect",
        metavar="SHA256",
        help="with --accept-new: accept only this key (hex, as shown; 'sha256:' optional)",
    )
    collabos.add_argument("--forget", action="store_true", help="remove the device's pin")
    collabos.add_argument("--list", action="store_true", help="list every pinned device")
    collabos.add_argument("--timeout", type=seconds, default=10.0, metavar="S", help="handshake timeout")
    collabos.add_argument("--json", action="store_true", help="print JSON")
    collabos.set_defaults(func=cmd_trust_collabos)
    trust.set_defaults(func=lambda args: _needs_kind(trust))


def _needs_kind(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_trust_collabos(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from datetime import UTC, datetime

    from agent.config import resolve_state_dir
    from agent.discovery.collabos import SOURCE_NAME, CollabosHost
    from agent.pins import PinStore, shown
    from agent.store import DB_NAME, Store, StoreError

    if args.list == bool(args.host):
        raise UsageError("trust collabos: give a HOST, or --list")
    if args.expect and not args.accept_new:
        raise UsageError("--expect goes with --accept-new")
    if args.forget and args.accept_new:
        raise UsageError("--forget and --accept-new exclude each other")
    expect = _expected(args.expect) if args.expect else None
    state_dir = resolve_state_dir(cfg, args.state_dir)
    # Only --accept-new and --forget change the pins: the rest reads a store it may not write.
    read_only = not (args.accept_new or args.forget)
    if read_only and not (state_dir / DB_NAME).exists():
        if args.list:
            if args.json:
                print_json({"pins": []})
            else:
                print("no CollabOS device is pinned yet")
            return EXIT_OK
        read_only = False  # nothing stored yet: the store is made as for any first use
    try:
        store = Store.open(state_dir, read_only=read_only)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    with store:
        pins = PinStore(store, SOURCE_NAME)
        if args.list:
            found = pins.all()
            if args.json:
                print_json({"pins": [p.to_dict() for p in found]})
            else:
                for p in found:
                    print(f"{p.host}  {shown(p.spki_sha256)}  {p.how} {p.pinned_at}")
                if not found:
                    print("no CollabOS device is pinned yet")
            return EXIT_OK
        try:
            host = CollabosHost.of(args.host)
        except ValueError as exc:
            raise UsageError(f"trust collabos {args.host}: {exc}") from None
        pinned = pins.get(host.address)
        if args.forget:
            try:
                gone = pins.forget(host.address)
            except StoreError as exc:  # a store this user may read but not write
                raise UsageError(str(exc)) from None
            _say(args, host.address, pinned, None, forgotten=gone)
            return EXIT_OK
        try:
            presented, certificate = _presented(host, args.timeout)
        except Exception as exc:  # reported, whatever it is: the device could not be asked
            from agent.discovery.collabos import CollabosSource

            message = CollabosSource([]).describe(exc)
            if args.json:
                print_json({"host": host.address, "pinned": _pin_dict(pinned), "error": message})
            else:
                print(f"roomsync: {host.address}: {message}")
            return EXIT_FAILED
        accepted = None
        if expect is not None and expect != presented:
            _say(args, host.address, pinned, presented)
            print(
                f"roomsync: {host.address} presents {shown(presented)}, not the expected "
                f"{shown(expect)}: nothing accepted",
                file=sys.stderr if args.json else sys.stdout,
            )
            return EXIT_FAILED
        if args.accept_new and (pinned is None or pinned.spki_sha256 != presented):
            try:
                accepted = pins.accept(host.address, presented, certificate, datetime.now(UTC))
            except StoreError as exc:
                raise UsageError(str(exc)) from None
        status = _say(args, host.address, pinned, presented, accepted=accepted)
        ca_file = cfg.sources.collabos.ca_file
        if ca_file is not None and not args.json:
            print(f"note: [sources.collabos] ca_file is set ({ca_file}): pins are not used")
        return status


def _expected(text: str) -> str:
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"--expect {text}: not a SHA-256 in hex (64 digits)")
    return value


def _presented(host: Any, timeout: float) -> tuple[str, str]:
    """The key and the certificate (hex SHA-256 each) ``host`` presents."""
    import asyncio

    from agent.discovery.collabos import presented_certificate
    from agent.pins import certificate_sha256, spki_sha256

    der = asyncio.run(presented_certificate(host, timeout))
    return spki_sha256(der), certificate_sha256(der)


def _pin_dict(pin: Pin | None) -> dict[str, str | None] | None:
    return pin.to_dict() if pin is not None else None


def _say(
    args: argparse.Namespace,
    address: str,
    pinned: Pin | None,
    presented: str | None,
    *,
    accepted: Pin | None = None,
    forgotten: bool | None = None,
) -> int:
    """Print what was found and done; the exit status."""
    from agent.pins import shown

    matches = pinned is not None and presented is not None and pinned.spki_sha256 == presented
    fine = forgotten is not None or matches or accepted is not None or pinned is None
    status = EXIT_OK if fine else EXIT_FAILED
    if args.json:
        doc: dict[str, Any] = {"host": address, "pinned": _pin_dict(pinned)}
        if forgotten is not None:
            doc["forgotten"] = forgotten
        else:
            doc.update(presented=presented, matches=matches, accepted=_pin_dict(accepted))
        print_json(doc)
        return status
    if forgotten is not None:
        print(f"{address}: {'pin removed' if forgotten else 'was not pinned'}")
        return status
    if pinned is None:
        print(f"{address}: not pinned yet; presents {shown(presented or '')}")
    elif matches:
        print(f"{address}: presents the pinned certificate {shown(pinned.spki_sha256)}")
    else:
        print(f"{address}: pinned {shown(pinned.spki_sha256)} ({pinned.how} {pinned.pinned_at})")
        print(f"{' ' * len(address)}  presents {shown(presented or '')}")
    if accepted is not None:
        print(f"{address}: accepted {shown(accepted.spki_sha256)}")
    elif pinned is not None and not matches:
        print(f"check the new key, then: roomsync trust collabos {address} --accept-new")
    elif pinned is None:
        print(f"it is pinned at the first scan, or now with: roomsync trust collabos {address} --accept-new")
    return status
