"""Twisted's stock echo, the baseline for ``bench/echo_bench.py``.

TCP: ``twisted.protocols.wire.Echo``, exactly as a user would write it after reading the
Twisted docs. UDP: the naive equivalent, a ``DatagramProtocol`` that writes every datagram
back to its sender. Both listen on the same port number on 127.0.0.1 (loopback only). No
guards of any kind: no back-pressure, no connection or rate limits. That is the point of
the comparison.

Run in the foreground until killed::

    python bench/stock_echo_server.py --port 17007
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.wire import Echo


class NaiveUDPEcho(DatagramProtocol):
    """Writes each datagram back to where it came from, nothing more."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(data, addr)  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP and UDP port")
    parser.add_argument("--interface", default="127.0.0.1", help="address to bind")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    # Factory (not ServerFactory), as in the Twisted docs; listenTCP is typed for the latter.
    factory = Factory.forProtocol(Echo)
    reactor.listenTCP(args.port, factory, interface=args.interface)  # type: ignore[arg-type]
    udp = NaiveUDPEcho()
    reactor.listenUDP(args.port, udp, interface=args.interface, maxPacketSize=65536)  # type: ignore[attr-defined]
    reactor.run()


if __name__ == "__main__":
    main()
