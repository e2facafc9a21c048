"""The chat server of Twisted's "Writing Servers" howto: the baseline of ``chat_bench.py``.

What a user gets after reading https://docs.twisted.org/en/stable/core/howto/servers.html:
a ``LineReceiver`` (lines end in CRLF) that asks each client for a name, then sends every
line it receives as ``<name> line`` to every other named client with ``sendLine``. Only
the bytes/str handling is adapted to Python 3. No send queue limit, no flood control, no
caps of any kind: that is the point of the comparison.

Run in the foreground until killed::

    python bench/naive_chat_server.py --port 18123
"""

from __future__ import annotations

import argparse

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class Chat(LineReceiver):
    def __init__(self, users: dict[bytes, Chat]) -> None:
        self.users = users
        self.name: bytes | None = None
        self.state = "GETNAME"

    def connectionMade(self) -> None:
        self.sendLine(b"What's your name?")

    def connectionLost(self, reason: object = None) -> None:
        if self.name in self.users:
            del self.users[self.name]

    def lineReceived(self, line: bytes) -> None:
        if self.state == "GETNAME":
            self.handle_GETNAME(line)
        else:
            self.handle_CHAT(line)

    def handle_GETNAME(self, name: bytes) -> None:
        if name in self.users:
            self.sendLine(b"Name taken, please choose another.")
            return
        self.sendLine(b"Welcome, " + name + b"!")
        self.name = name
        self.users[name] = self
        self.state = "CHAT"

    def handle_CHAT(self, message: bytes) -> None:
        assert self.name is not None
        message = b"<" + self.name + b"> " + message
        for _name, protocol in self.users.items():
            if protocol != self:
                protocol.sendLine(message)


class ChatFactory(Factory):
    def __init__(self) -> None:
        self.users: dict[bytes, Chat] = {}  # maps user names to Chat instances

    def buildProtocol(self, addr: object) -> Chat:
        return Chat(self.users)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1", help="address to bind")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    reactor.listenTCP(args.port, ChatFactory(), interface=args.interface)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
