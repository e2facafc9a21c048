"""Helpers for the chat tests: in-memory connections on StringTransport and a Clock.

No tests here; the chat test modules import from it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from netsvc.chat.limits import ChatLimits
from netsvc.chat.protocol import ChatProtocol, ChatServer
from netsvc.chat.registry import User

#: Limits for in-memory tests: generous flood control unless a test wants it.
TEST_LIMITS = ChatLimits(
    flood_lines_per_second=1000.0,
    flood_line_burst=1000.0,
    flood_bytes_per_second=1e7,
    flood_byte_burst=1e7,
    max_connections_per_peer=None,
)


class BufferTransport(StringTransport):
    """A StringTransport with a write buffer that only ``drain()`` empties.

    Like Twisted's FileDescriptor it pauses a registered streaming producer when more than
    ``bufferSize`` bytes are buffered and resumes it when the buffer has drained.
    """

    bufferSize = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        StringTransport.__init__(self, *args, **kwargs)
        self.buffered = 0
        self.received: list[bytes] = []
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        StringTransport.write(self, data)
        self.buffered += len(data)
        if self.producer is not None and self.streaming and self.buffered > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The client reads everything: the buffer empties, a paused producer resumes."""
        data = self.value()
        self.clear()
        self.buffered = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


class Peer:
    """One in-memory client: a ChatProtocol on a transport, with helpers to talk."""

    def __init__(self, server: ChatServer, host: str = "192.0.2.1", port: int = 40000,
                 transport: StringTransport | None = None) -> None:
        address = IPv4Address("TCP", host, port)
        self.transport = transport or StringTransport(peerAddress=address)
        factory = server.factory()
        protocol = factory.buildProtocol(address)
        self.protocol: Any = protocol
        protocol.makeConnection(self.transport)

    @property
    def chat(self) -> ChatProtocol:
        assert isinstance(self.protocol, ChatProtocol)
        return self.protocol

    @property
    def user(self) -> User:
        return self.chat.user

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.protocol.dataReceived(data)

    def line(self, text: str) -> None:
        self.send(text + "\n")

    def output(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self, encoding: str = "utf-8") -> list[str]:
        """Lines received since the last call (CRLF stripped)."""
        text = self.output().decode(encoding)
        assert text == "" or text.endswith("\r\n"), repr(text)
        return text.split("\r\n")[:-1]

    def close(self) -> None:
        self.protocol.connectionLost(None)


def make_server(limits: ChatLimits = TEST_LIMITS, clock: Clock | None = None) -> ChatServer:
    return ChatServer(clock or Clock(), limits)


def logged_in(server: ChatServer, nick: str, host: str = "192.0.2.1", **kwargs: Any) -> Peer:
    peer = Peer(server, host, **kwargs)
    peer.line(nick)
    peer.output()
    return peer
