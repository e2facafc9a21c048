"""Serve netsvc's TCP and UDP echo from your own Twisted program.

Run it with ``python embed_echo.py [PORT]`` (default 7007); Ctrl-C stops it.
"""

import sys

from twisted.internet import defer, task

from netsvc.echo import EchoLimits, TCPEchoFactory, UDPEchoProtocol, echo_service
from netsvc.listening import UDP_MAX_PACKET_SIZE, ListenError


def build(reactor, port=7007):
    """TCP and UDP echo on 127.0.0.1, with tighter guards than the defaults."""
    return echo_service(
        reactor,
        port=port,  # UDP; TCP takes the endpoint below
        interface="127.0.0.1",
        tcp_endpoint=f"tcp:{port}:interface=127.0.0.1:backlog=128",
        limits=EchoLimits(max_connections=100, idle_timeout=60.0, udp_rate=50.0, udp_burst=100.0),
    )


def main(reactor, port=7007):
    service = build(reactor, port)
    try:
        service.startService()  # binds both sockets now
    except ListenError as error:
        service.stopService()  # release the socket that did bind, if any
        raise SystemExit(error.explain()) from None  # one line, exit status 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    print(f"echo on 127.0.0.1 port {port} (TCP and UDP); Ctrl-C stops", flush=True)
    return defer.Deferred()  # never fires: serve until the reactor stops


def listen_by_hand(reactor, port=7007):
    """The same two listeners without a service: stop them with ``stopListening()``."""
    limits = EchoLimits(max_connections=100)
    tcp = reactor.listenTCP(port, TCPEchoFactory(reactor, limits), interface="127.0.0.1")
    udp = reactor.listenUDP(
        port,
        UDPEchoProtocol(reactor, limits),
        interface="127.0.0.1",
        maxPacketSize=UDP_MAX_PACKET_SIZE,  # Twisted's default (8192) truncates silently
    )
    return tcp, udp


if __name__ == "__main__":
    task.react(main, [int(arg) for arg in sys.argv[1:2]])
