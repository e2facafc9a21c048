"""``netsvc discover``: find the netsvc nodes on the local networks.

Broadcasts one query (sent twice, 0.2 s apart, against loss) to the directed broadcast
address of every non-loopback IPv4 interface (or to what ``--interface``/``--address``/
``--loopback``/``--limited`` choose), waits ``--timeout`` seconds and lists the nodes that
answered: name, address, services and ports, reply time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from netsvc.broadcast.interfaces import TargetSpec
from netsvc.broadcast.service import DISCOVERY_PORT, DiscoveredNode, DiscoveryClient, discover
from netsvc.broadcast.wire import WireError, check_service_name

__all__ = ["add_parser", "main"]

T = TypeVar("T")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``netsvc discover`` on the top-level command line."""
    parser = subparsers.add_parser(
        "discover",
        help="broadcast a query and list the netsvc nodes that answer",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    _add_arguments(parser)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text}")
    return value


def _service(text: str) -> str:
    try:
        return check_service_name(text)
    except WireError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        default=DISCOVERY_PORT,
        help=f"discovery port (default {DISCOVERY_PORT})",
    )
    parser.add_argument(
        "-t", "--timeout", type=_positive, default=1.0, help="seconds to wait (default 1)"
    )
    parser.add_argument(
        "-i",
        "--interface",
        action="append",
        default=[],
        metavar="NAME|ADDRESS",
        help="query on this interface only (repeatable; default: every non-loopback one)",
    )
    parser.add_argument(
        "-a",
        "--address",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="send the query to this IPv4 address (a broadcast address such as "
        "127.255.255.255, or a node); alone, no interface is used",
    )
    parser.add_argument(
        "--loopback", action="store_true", help="also query on the loopback interface"
    )
    parser.add_argument(
        "--limited",
        action="store_true",
        help="also send to 255.255.255.255 (limited broadcast, off unless asked)",
    )
    parser.add_argument(
        "-b", "--bind", default="", metavar="ADDRESS",
        help="send from this local address (picks the interface of a 255.255.255.255 query "
        "on hosts without a default route)",
    )
    parser.add_argument("-s", "--service", type=_service, help="only nodes offering SERVICE")
    parser.add_argument(
        "-n",
        "--count",
        type=int,
        default=None,
        help="stop as soon as this many nodes answered",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=_run)


def format_nodes(nodes: Sequence[DiscoveredNode]) -> list[str]:
    """A table, one line per node."""
    rows = [("NAME", "ADDRESS", "SERVICES", "TIME")]
    for node in nodes:
        services = ", ".join(f"{e.name} {e.port}/{e.protocol}" for e in node.services) or "-"
        rows.append((node.name, node.host, services, f"{node.rtt * 1000:.1f} ms"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
        for row in rows
    ]


def run_with_reactor(start: Callable[[Any], Any]) -> tuple[bool, Any]:
    """Run the global reactor until the Deferred from ``start(reactor)`` fires.

    Returns ``(True, result)``, or ``(False, None)`` if the reactor was stopped first
    (Ctrl-C). A failure is raised.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def begin() -> None:
        deferred = maybeDeferred(start, reactor)
        deferred.addBoth(outcome.append)
        deferred.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    if not outcome:
        return False, None
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return True, result


def _run(args: argparse.Namespace) -> int:
    spec = (
        TargetSpec(
            interfaces=tuple(args.interface),
            addresses=tuple(args.address),
            include_loopback=args.loopback,
            limited=args.limited,
        )
        if _valid_addresses(args.address)
        else None
    )
    if spec is None:
        return 2
    try:
        targets = spec.resolve()
    except Exception as error:
        print(f"netsvc discover: cannot list the interfaces: {error}", file=sys.stderr)
        return 3
    if not targets:
        wanted = ", ".join(args.interface) or "any non-loopback interface"
        print(
            f"netsvc discover: no IPv4 broadcast address on {wanted}"
            " (try --loopback, --interface NAME or --address ADDRESS)",
            file=sys.stderr,
        )
        return 3
    if not args.quiet:
        listed = ", ".join(str(t) for t in targets)
        print(f"querying {listed} port {args.port} for {args.timeout:g} s", file=sys.stderr)
    clients: list[DiscoveryClient] = []
    try:
        completed, nodes = run_with_reactor(
            lambda reactor: discover(
                reactor,
                [t.address for t in targets],
                port=args.port,
                timeout=args.timeout,
                service=args.service,
                max_nodes=args.count,
                client=clients, interface=args.bind,
            )
        )
    except OSError as error:
        print(f"netsvc discover: {error}", file=sys.stderr)
        return 3
    if not completed:
        return 130
    for target, reason in sorted(clients[0].errors.items()) if clients else ():
        print(f"netsvc discover: cannot send to {target}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([node.as_dict() for node in nodes], indent=2, ensure_ascii=False))
    elif nodes:
        print("\n".join(format_nodes(nodes)), flush=True)
    if not args.quiet:
        print(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} answered", file=sys.stderr)
    return 0 if nodes else 1


def _valid_addresses(addresses: Sequence[str]) -> bool:
    try:
        TargetSpec(addresses=tuple(addresses))
    except ValueError as error:
        print(f"netsvc discover: {error}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m netsvc.broadcast.cli ...``: the same as ``netsvc discover ...``."""
    parser = argparse.ArgumentParser(prog="netsvc discover")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
