"""``python -m netsvc.broadcast [OPTIONS]``: run a broadcast node in the foreground.

Takes exactly the options of ``twistd netsvc-broadcast`` (``--help`` lists them) and runs
the same service without twistd's daemonising or pid file; log events (nodes joining and
leaving, summaries) go to stderr. Ctrl-C or SIGTERM stops it (with a goodbye
announcement when announcing).
"""

from __future__ import annotations

import sys

from twisted.python import usage


def main(argv: list[str] | None = None) -> int:
    from netsvc.broadcast_tap import BROADCAST_SPEC, Options
    from netsvc.listening import StartupError
    from netsvc.tapkit import make_standalone_service

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        print(f"{options}\npython -m netsvc.broadcast: {error}", file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = make_standalone_service(BROADCAST_SPEC, options, reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    print(
        f"broadcast node on {options['interface'] or '0.0.0.0'} port {options['port']}"
        f" (announce: {'yes' if options['announce'] else 'no'},"
        f" discovery: {'yes' if options['discovery'] else 'no'})",
        flush=True,
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
