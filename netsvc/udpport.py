"""UDP ports for short-lived, busy sockets: one per TFTP transfer.

:func:`listen_udp_quietly` opens a :class:`QuietUDPPort`: Twisted's ``udp.Port`` without
its two log lines per socket, and able to receive with UDP generic receive offload
(:meth:`QuietUDPPort.coalesce`), so that a burst of equal-sized datagrams from one peer
costs one system call instead of one each.
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import base, udp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from netsvc.sockopts import grow_receive_buffer

__all__ = ["UDP_MAX_PACKET_SIZE", "QuietUDPPort", "listen_udp_quietly"]

#: Twisted's ``listenUDP`` silently truncates datagrams to ``maxPacketSize`` (8192 by
#: default). Every UDP port netsvc opens takes the largest datagram IP can carry.
UDP_MAX_PACKET_SIZE = 65536

# UDP generic receive offload (linux/udp.h, Linux 5.0+): the kernel hands over a run of
# equal-sized datagrams from one sender as a single buffer, with the segment size in a
# control message. On loopback it is what a sender's segmentation offload sent, intact.
_UDP_GRO = 104
_GRO_CONTROL_SPACE = socket.CMSG_SPACE(4)
_GRO_READ_SIZE = 65536  # a coalesced buffer never exceeds one IP datagram

_log = Logger()


class QuietUDPPort(udp.Port):
    """``udp.Port`` minus its "starting on N" and "(UDP Port N Closed)" log lines.

    A TFTP server opens one socket per transfer; Twisted's two lines per socket would
    double the log volume of a busy server and break "one log event per transfer".
    The two logging methods are replaced (they do what Twisted's do otherwise), and
    ``doRead``, which also reads coalesced datagrams once :meth:`coalesce` is on.
    """

    #: Whether reads return coalesced runs of datagrams (see :meth:`coalesce`).
    coalescing = False

    def __init__(
        self, port: int, protocol: DatagramProtocol, interface: str, size: int, reactor: object
    ) -> None:
        udp.Port.__init__(self, port, protocol, interface, size, reactor)

    def startListening(self) -> None:
        udp.Port.startListening(self)

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as error:
            raise CannotListenError(self.interface, self.port, error) from error
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]  # as udp.Port does

    def connectionLost(self, reason: object = None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d

    def coalesce(self) -> bool:
        """Receive with generic receive offload where the kernel offers it.

        The protocol still gets one ``datagramReceived`` per datagram: each coalesced
        buffer is cut at the segment size the kernel reports. Worth it on a socket that
        receives bursts (a window of DATA blocks), not on one that gets a lone ACK.
        Takes effect from the next read on, even when called from the protocol in the
        middle of a read loop. Returns whether offload is on.
        """
        if self.coalescing or not sys.platform.startswith("linux"):
            return self.coalescing
        try:
            self.socket.setsockopt(socket.SOL_UDP, _UDP_GRO, 1)
        except OSError:
            return False
        self.coalescing = True
        return True

    def grow_receive_buffer(self, size: int) -> None:
        """Let the kernel queue at least ``size`` bytes of datagrams for this socket
        (see :func:`netsvc.sockopts.grow_receive_buffer`)."""
        grow_receive_buffer(self.socket, size)

    def doRead(self) -> None:
        # udp.Port.doRead, plus coalesced reads: recvmsg, then the split.
        read = 0
        ipv6 = self.addressFamily == socket.AF_INET6
        while read < self.maxThroughput:
            segment = 0
            try:
                if self.coalescing:
                    data, control, _flags, addr = self.socket.recvmsg(
                        _GRO_READ_SIZE, _GRO_CONTROL_SPACE
                    )
                    if control:
                        segment = _segment_size(control)
                else:
                    data, addr = self.socket.recvfrom(self.maxPacketSize)
            except OSError as error:
                if error.args[0] in udp._sockErrReadIgnore:
                    return
                if error.args[0] in udp._sockErrReadRefuse:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            size = len(data)
            read += size
            if ipv6:
                addr = addr[:2]  # as udp.Port: no flow info or scope id
            try:
                if not segment or segment >= size:
                    self.protocol.datagramReceived(data, addr)
                else:
                    for start in range(0, size, segment):
                        self.protocol.datagramReceived(data[start : start + segment], addr)
            except Exception:  # as udp.Port.doRead: the port outlives a bad handler
                _log.failure("unhandled error in {protocol!r}", protocol=self.protocol)


def _segment_size(control: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in control:
        if level == socket.SOL_UDP and kind == _UDP_GRO:
            return int.from_bytes(value[:4], sys.byteorder)
    return 0


def listen_udp_quietly(
    reactor: IReactorUDP,
    port: int,
    protocol: DatagramProtocol,
    interface: str = "",
    max_packet_size: int = UDP_MAX_PACKET_SIZE,
) -> IListeningPort:
    """``reactor.listenUDP`` without Twisted's per-socket log lines, for short-lived
    sockets (one per transfer). Other reactors (test fakes) get a plain ``listenUDP``."""
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(port, protocol, interface, max_packet_size)
    listening = QuietUDPPort(port, protocol, interface, max_packet_size, reactor)
    listening.startListening()
    return listening
