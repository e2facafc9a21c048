"""``python -m netsvc.chat [OPTIONS]``: run a chat server in the foreground.

Takes exactly the options of ``twistd netsvc-chat`` (``--help`` lists them) and runs the
same service, without twistd's daemonising, logging set-up or pid file: handy for a
quick try, benchmarks and containers. Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from netsvc.chat_tap import CHAT_STANDALONE_SPEC, Options
    from netsvc.tapkit import run_foreground

    return run_foreground(
        CHAT_STANDALONE_SPEC,
        Options,
        sys.argv[1:] if argv is None else argv,
        "python -m netsvc.chat",
        _print_endpoints,
    )


def _print_endpoints(service: object, options: object) -> None:
    for child in _leaves(service):
        port = getattr(child, "port", None)
        if port is not None:
            host = port.getHost()
            print(f"chat on {getattr(host, 'host', host)} port {getattr(host, 'port', '')}",
                  flush=True)


def _leaves(service: object) -> list[object]:
    children = list(service) if hasattr(service, "__iter__") else []
    if not children:
        return [service]
    return [leaf for child in children for leaf in _leaves(child)]


if __name__ == "__main__":
    sys.exit(main())
