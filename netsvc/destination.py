"""Where a datagram was sent: the destination address the kernel reports with it.

A UDP socket bound to the unspecified address (``0.0.0.0``, ``::``) receives datagrams
sent to any local address, to a broadcast address and to multicast groups it joined,
and ``recvfrom`` does not say which. With ``IP_PKTINFO`` / ``IPV6_RECVPKTINFO`` the
kernel tells, per datagram, the address it was sent to and (IPv4) the local address a
reply would come from. A server uses that to ignore requests sent to a broadcast
address (one request would otherwise get an answer from every server on the segment)
and to answer from the address the client talked to (a client that checks where the
answer comes from gets it from there; ``tftpd-hpa`` does the same).

Linux only; elsewhere :func:`request_destinations` says no and nothing changes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

import attrs

__all__ = ["CONTROL_SPACE", "Destination", "destination_of", "request_destinations"]

# linux/in.h and linux/in6.h (the socket module lacks some of them on some builds).
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=i4s4s")  # interface index, local address, header destination
_IN6_PKTINFO = struct.Struct("=16si")  # header destination, interface index

#: Ancillary buffer size for ``recvmsg`` that holds both kinds of packet information.
CONTROL_SPACE = socket.CMSG_SPACE(_IN_PKTINFO.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size)

_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@attrs.frozen
class Destination:
    """Where one datagram was sent.

    :ivar address: the destination address of the datagram, written as the receiving
        socket writes addresses (IPv4 as ``::ffff:a.b.c.d`` on an IPv6 socket).
    :ivar local: the local address to answer from, in the same notation; ``""`` when
        there is none to bind to (a broadcast or multicast destination, an IPv6
        link-local address, which needs its interface too).
    :ivar broadcast: the datagram was sent to a broadcast or multicast address.
    """

    address: str
    local: str
    broadcast: bool

    @classmethod
    def classify(cls, address: str, local: str | None = None) -> Destination:
        """The destination ``address`` (socket notation); ``local``: the kernel's
        reply address for it (``IP_PKTINFO``'s ``ipi_spec_dst``), when known.

        For a datagram sent to one of its own unicast addresses the kernel gives that
        very address as the local one; any other answer means a broadcast (a directed
        one, such as ``192.168.1.255``, is only known as such to the kernel).
        """
        ip = ipaddress.ip_address(address)
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        target = plain or ip
        broadcast = (
            target.is_multicast
            or target == _LIMITED_BROADCAST
            or (local is not None and local != address)
        )
        usable = not broadcast and not (target.version == 6 and target.is_link_local)
        return cls(address, address if usable else "", broadcast)


def request_destinations(sock: socket.socket) -> bool:
    """Ask the kernel to report each datagram's destination on ``sock``; whether it will.

    An IPv6 socket gets both options: its IPv4 datagrams (dual-stack) then come with
    ``IP_PKTINFO`` too, which alone tells a directed broadcast.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
    except OSError:
        return sock.family == socket.AF_INET6 and _has_ipv6_option(sock)
    return True


def _has_ipv6_option(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO))
    except OSError:
        return False


def destination_of(control: list[tuple[int, int, bytes]], family: int) -> Destination | None:
    """The :class:`Destination` in ``recvmsg``'s ancillary data (``None``: not there)."""
    ipv6: bytes | None = None
    for level, kind, data in control:
        if (level, kind) == (socket.IPPROTO_IP, _IP_PKTINFO) and len(data) >= _IN_PKTINFO.size:
            _, local, address = _IN_PKTINFO.unpack_from(data)
            return Destination.classify(
                _written(socket.inet_ntoa(address), family),
                _written(socket.inet_ntoa(local), family),
            )
        if (level, kind) == (socket.IPPROTO_IPV6, _IPV6_PKTINFO) and len(data) >= _IN6_PKTINFO.size:
            ipv6 = data[:16]
    # IPV6_PKTINFO alone: an IPv6 datagram (IPv4 ones come with IP_PKTINFO as well).
    return None if ipv6 is None else Destination.classify(socket.inet_ntop(socket.AF_INET6, ipv6))


def _written(ipv4: str, family: int) -> str:
    """``ipv4`` as a socket of ``family`` writes it."""
    return f"::ffff:{ipv4}" if family == socket.AF_INET6 else ipv4
