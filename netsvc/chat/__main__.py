"""``python -m netsvc.chat [OPTIONS]``: run a chat server in the foreground.

Takes exactly the options of ``twistd netsvc-chat`` (``--help`` lists them) and runs the
same service, without twistd's daemonising, logging set-up or pid file: handy for a
quick try, benchmarks and containers. Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import sys

from twisted.python import usage


def main(argv: list[str] | None = None) -> int:
    from netsvc.chat_tap import CHAT_STANDALONE_SPEC, Options
    from netsvc.listening import StartupError
    from netsvc.tapkit import make_standalone_service

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        print(f"{options}\npython -m netsvc.chat: {error}", file=sys.stderr)
        return 2

    from twisted.internet import reactor

    service = make_standalone_service(CHAT_STANDALONE_SPEC, options, reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    for child in _leaves(service):
        port = getattr(child, "port", None)
        if port is not None:
            host = port.getHost()
            print(f"chat on {getattr(host, 'host', host)} port {getattr(host, 'port', '')}",
                  flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def _leaves(service: object) -> list[object]:
    children = list(service) if hasattr(service, "__iter__") else []
    if not children:
        return [service]
    return [leaf for child in children for leaf in _leaves(child)]


if __name__ == "__main__":
    sys.exit(main())
