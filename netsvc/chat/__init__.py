"""A multi-user line chat over TCP that stays fair under slow and abusive clients.

* :mod:`netsvc.chat.text` -- charsets (UTF-8 by default, gb2312 and other legacy ones),
  sanitising of terminal control, nickname and room name rules (pure);
* :mod:`netsvc.chat.registry` -- :class:`ChatRegistry`: users, rooms, history, events,
  bots; the library API for applications that drive or observe the chat (no I/O);
* :mod:`netsvc.chat.protocol` -- :class:`ChatServer`, :class:`ChatFactory`,
  :class:`ChatProtocol`: framing, commands, flood control, send queues, caps, timeouts;
* :mod:`netsvc.chat.service` -- :func:`chat_service`, a ready-to-start service.

``python -m netsvc.chat --port 7777`` runs one (same options as ``twistd netsvc-chat``).
"""

from netsvc.chat.limits import CHAT_PORT, ChatLimits
from netsvc.chat.protocol import ChatFactory, ChatProtocol, ChatServer
from netsvc.chat.registry import (
    Bot,
    ChatError,
    ChatEvent,
    ChatRegistry,
    PrivateMessage,
    RoomInfo,
    RoomMessage,
    UserInfo,
    UserJoined,
    UserLeft,
    UserQuit,
    UserRegistered,
    UserRenamed,
)
from netsvc.chat.service import ChatService, chat_service
from netsvc.chat.text import Charset, CharsetError, lookup_charset, sanitize

__all__ = [
    "CHAT_PORT",
    "Bot",
    "Charset",
    "CharsetError",
    "ChatError",
    "ChatEvent",
    "ChatFactory",
    "ChatLimits",
    "ChatProtocol",
    "ChatRegistry",
    "ChatServer",
    "ChatService",
    "PrivateMessage",
    "RoomInfo",
    "RoomMessage",
    "UserInfo",
    "UserJoined",
    "UserLeft",
    "UserQuit",
    "UserRegistered",
    "UserRenamed",
    "chat_service",
    "lookup_charset",
    "sanitize",
]
