"""The ``netsvc`` console command: client tools for the services (``netsvc echoping ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from netsvc import __version__, addr, echoping, tftp_cli, udptools
from netsvc.broadcast import cli as broadcast_cli

__all__ = ["main"]

#: Modules that each register one sub-command through ``add_parser(subparsers)``.
COMMANDS = [echoping, tftp_cli, addr, udptools, broadcast_cli]


def build_parser() -> argparse.ArgumentParser:
    """The full command line, with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="netsvc", description="Client tools for the netsvc network services."
    )
    parser.add_argument("--version", action="version", version=f"netsvc {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
