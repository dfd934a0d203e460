"""``roomsync check-config``: validate the configuration, print it with secrets masked."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_OK, Parents, UsageError, load, print_json

if TYPE_CHECKING:
    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    check = sub.add_parser(
        "check-config",
        parents=[parents.common],
        help="validate the configuration and print it with secrets masked",
        description="Validate the configuration (file and ROOMSYNC_* environment) and print "
        "the effective configuration with secrets masked.",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = load(args)
    from agent.config import api_exposure_problem, effective_config

    # What roomsync run would refuse, check-config refuses too.
    exposed = api_exposure_problem(loaded.config.api.listen, loaded.config.api.token_file)
    if exposed is not None:
        raise UsageError(exposed)

    data = effective_config(loaded.config)
    if args.json:
        print_json(
            {
                "file": str(loaded.path) if loaded.path else None,
                "env_overrides": list(loaded.env_overrides),
                "config": data,
            }
        )
        return EXIT_OK
    import tomli_w

    if loaded.path:
        print(f"# configuration file: {loaded.path} (valid)")
    else:
        print(f"# {loaded.requested} not found: built-in defaults")
    for name in loaded.env_overrides:
        print(f"# overridden by environment: {name}")
    print("# secrets are masked\n")
    sys.stdout.write(tomli_w.dumps(data))
    return EXIT_OK
