"""``python -m netsvc.broadcast [OPTIONS]``: run a broadcast node in the foreground.

Takes exactly the options of ``twistd netsvc-broadcast`` (``--help`` lists them) and runs
the same service without twistd's daemonising or pid file; log events (nodes joining and
leaving, summaries) go to stderr. Ctrl-C or SIGTERM stops it (with a goodbye
announcement when announcing).
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from netsvc.broadcast_tap import BROADCAST_SPEC, Options
    from netsvc.tapkit import run_foreground

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    return run_foreground(
        BROADCAST_SPEC,
        Options,
        sys.argv[1:] if argv is None else argv,
        "python -m netsvc.broadcast",
        _print_node,
    )


def _print_node(service: object, options: Any) -> None:
    print(
        f"broadcast node on {options['interface'] or '0.0.0.0'} port {options['port']}"
        f" (announce: {'yes' if options['announce'] else 'no'},"
        f" discovery: {'yes' if options['discovery'] else 'no'})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
