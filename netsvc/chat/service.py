"""Assemble a ready-to-start chat service: listeners around one shared :class:`ChatServer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netsvc.chat.limits import CHAT_PORT, DEFAULT_LIMITS, ChatLimits
from netsvc.chat.protocol import DEFAULT_BANNER, ChatServer
from netsvc.chat.registry import ChatRegistry
from netsvc.chat.text import DEFAULT_CHARSET, Charset
from netsvc.listening import ListenGroup, TCPListenService, add_child, tcp_endpoint_description

__all__ = ["ChatService", "chat_service", "endpoint_description"]


class ChatService(ListenGroup):
    """The listeners of one chat (all or nothing, see :class:`ListenGroup`).

    :attr:`server` is the shared :class:`ChatServer`; :attr:`registry` its
    :class:`ChatRegistry`, the API to observe and drive the chat.
    """

    def __init__(self, server: ChatServer) -> None:
        ListenGroup.__init__(self)
        self.server = server

    @property
    def registry(self) -> ChatRegistry:
        return self.server.registry

    def listening_ports(self) -> list[Any]:
        """The ``IListeningPort`` of each started listener (``getHost().port`` etc.)."""
        return [child.port for child in self if getattr(child, "port", None) is not None]


def endpoint_description(text: str) -> str:
    """A server endpoint description; a bare port number ``7777`` means ``tcp:7777``."""
    text = text.strip()
    return f"tcp:{text}" if text.isdigit() else text


def chat_service(
    reactor: Any,
    *,
    port: int = CHAT_PORT,
    interface: str = "",
    endpoint: str | None = None,
    charset: str | Charset = DEFAULT_CHARSET,
    extra_listeners: Sequence[tuple[str, str | Charset]] = (),
    limits: ChatLimits = DEFAULT_LIMITS,
    registry: ChatRegistry | None = None,
    banner: Sequence[str] = DEFAULT_BANNER,
) -> ChatService:
    """A chat service listening on ``port`` at ``interface`` (or on ``endpoint``).

    ``endpoint`` is a Twisted server endpoint description (``tcp:7777:interface=::``,
    ``tcp6:7777``, ``unix:/run/chat.sock``...) and replaces ``port``/``interface``.
    ``charset`` is what its clients speak until they say ``/charset``.
    ``extra_listeners`` adds listeners sharing the same rooms, each an
    ``(endpoint, charset)`` pair, e.g. ``[("tcp:7778", "gb2312")]`` for legacy clients.
    ``registry`` lets you build (and subscribe to) the registry first; ``reactor`` must
    provide ``IReactorTime`` and what the endpoints need (``IReactorTCP``...).
    """
    server = ChatServer(reactor, limits, registry, banner)
    service = ChatService(server)
    listeners = [
        (endpoint_description(endpoint) if endpoint else tcp_endpoint_description(port, interface),
         charset),
        *((endpoint_description(description), extra) for description, extra in extra_listeners),
    ]
    for description, listener_charset in listeners:
        factory = server.factory(listener_charset)
        add_child(service, TCPListenService(reactor, description, factory, what="TCP chat"))
    return service
