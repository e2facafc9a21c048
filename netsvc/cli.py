"""The ``netsvc`` console command: client tools for the services (``netsvc echoping ...``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from netsvc import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

#: Sub-command name -> the module that registers it through ``add_parser(subparsers)``.
#: Only the module of the command being run is imported: the TFTP client pulls in
#: Twisted (~0.1 s), which the other tools do not need.
COMMANDS = {
    "echoping": "netsvc.echoping",
    "tftp": "netsvc.tftp_cli",
    "addr": "netsvc.addr",
    "udp": "netsvc.udptools",
    "discover": "netsvc.broadcast.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line, with every sub-command registered (or just ``only``)."""
    parser = argparse.ArgumentParser(
        prog="netsvc", description="Client tools for the netsvc network services."
    )
    parser.add_argument("--version", action="version", version=f"netsvc {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments[0] if arguments and arguments[0] in COMMANDS else None
    args = build_parser(command).parse_args(arguments)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
