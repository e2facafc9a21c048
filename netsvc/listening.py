"""Services that own one listening socket, and a readable account of why binding failed.

Sockets are bound in ``privilegedStartService`` so that ``twistd -u/-g`` can bind a
privileged port as root and drop privileges afterwards; an embedding application that
only calls ``startService`` gets the socket bound there instead.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorUDP,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from netsvc.udpport import UDP_MAX_PACKET_SIZE, listen_udp_quietly

__all__ = [
    "UDP_MAX_PACKET_SIZE",
    "ListenError",
    "ListenGroup",
    "StartupError",
    "TCPListenService",
    "UDPListenService",
    "add_child",
    "describe_listen_error",
    "listen_udp_quietly",
    "tcp_endpoint_description",
]


class StartupError(SystemExit, Exception):
    """A service could not start for a reason the user can fix; the message says how.

    Deriving from ``SystemExit`` makes the interpreter print the one-line message and
    exit 1 instead of a traceback (``twistd -n``); deriving from ``Exception`` too lets a
    daemonising twistd report it to the parent process through its status pipe.
    """

    def __str__(self) -> str:
        return str(self.code)


def tcp_endpoint_description(port: int, interface: str = "") -> str:
    """A ``serverFromString`` description for ``port`` on ``interface`` (IPv6 colons escaped)."""
    description = f"tcp:{port}"
    if interface:
        description += ":interface=" + interface.replace(":", "\\:")
    return description


def describe_listen_error(what: str, error: CannotListenError) -> str:
    """One line saying which bind failed, why, and how to fix it."""
    interface = error.interface or "all interfaces"
    cause = error.socketError
    code = getattr(cause, "errno", None)
    reason = getattr(cause, "strerror", None) or str(cause)
    line = f"cannot listen for {what} on {interface} port {error.port}: {reason}."
    if code in (errno.EACCES, errno.EPERM):
        line += (
            " Ports below 1024 need root: choose a port above 1023, or start twistd as root"
            " with -u/-g so it drops privileges after binding."
        )
    elif code == errno.EADDRINUSE:
        line += " Another program is using it: choose another port or stop that program."
    elif code == errno.EADDRNOTAVAIL:
        line += " No interface on this machine has that address: check the interface option."
    elif code == errno.EAFNOSUPPORT:
        line += " This machine does not support that address family (IPv6 disabled?)."
    return line


class ListenError(CannotListenError):
    """A :class:`CannotListenError` that also names the service (``what``) that failed."""

    def __init__(self, what: str, error: CannotListenError) -> None:
        CannotListenError.__init__(self, error.interface, error.port, error.socketError)
        self.what = what

    def explain(self) -> str:
        """One line for humans (see :func:`describe_listen_error`)."""
        return describe_listen_error(self.what, self)


def add_child(parent: MultiService, child: IService) -> None:
    """Attach ``child`` to ``parent`` the way ``setServiceParent`` does (parent link too)."""
    child.setServiceParent(parent)


class ListenGroup(MultiService):
    """A group of services that starts all or nothing.

    When one child fails to start (a port is taken, say), the children already started
    are stopped again before the error propagates, so an embedding application that
    carries on is not left holding half the ports.
    """

    def __init__(self) -> None:
        MultiService.__init__(self)

    def privilegedStartService(self) -> None:
        self._start_all(lambda child: child.privilegedStartService())

    def startService(self) -> None:
        Service.startService(self)
        self._start_all(lambda child: child.startService())

    def _start_all(self, start: Callable[[IService], None]) -> None:
        started: list[IService] = []
        try:
            for child in list(self):
                start(child)
                started.append(child)
        except BaseException:
            self.running = 0
            for child in reversed(started):
                child.stopService()
            raise

    def addService(self, service: IService) -> None:
        MultiService.addService(self, service)

    def stopService(self) -> Deferred[None] | None:
        result: Deferred[None] | None = MultiService.stopService(self)
        return result


class _ListenService(Service):
    """Binds once (privileged start if offered, plain start otherwise); unbinds on stop."""

    what = "a service"
    port: IListeningPort | None = None

    def _listen(self) -> IListeningPort:
        raise NotImplementedError

    def _bind(self) -> None:
        try:
            self.port = self._listen()
        except CannotListenError as error:
            raise ListenError(self.what, error) from error

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._bind()

    def startService(self) -> None:
        Service.startService(self)
        if self.port is None:
            self._bind()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        result: Deferred[None] | None = port.stopListening()
        return result


class UDPListenService(_ListenService):
    """Listen for datagrams on ``interface``:``port`` with ``protocol``."""

    def __init__(
        self,
        reactor: IReactorUDP,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        max_packet_size: int = UDP_MAX_PACKET_SIZE,
        what: str = "UDP",
    ) -> None:
        self.reactor = reactor
        self.port_number = port
        self.protocol = protocol
        self.interface = interface
        self.max_packet_size = max_packet_size
        self.what = what

    def _listen(self) -> IListeningPort:
        return self.reactor.listenUDP(
            self.port_number, self.protocol, self.interface, self.max_packet_size
        )


class TCPListenService(_ListenService):
    """Listen on a Twisted server endpoint description (``tcp:7007:interface=::1``)."""

    def __init__(
        self,
        reactor: IReactorCore,
        description: str,
        factory: IProtocolFactory,
        what: str = "TCP",
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.what = what

    def _listen(self) -> IListeningPort:
        endpoint = serverFromString(self.reactor, self.description)
        outcome: list[IListeningPort | Failure] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        # Stream server endpoints bind synchronously; an endpoint that does not would
        # leave the service half-started, so refuse it plainly.
        if not outcome:
            raise StartupError(f"endpoint {self.description!r} did not bind synchronously")
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        assert not isinstance(result, Failure)
        return result
