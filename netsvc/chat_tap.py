"""twistd wiring for the chat: ``twistd -n netsvc-chat`` and the ``--chat-*`` suite options.

Two specs share every limit option and differ only in how they listen:

* :data:`CHAT_STANDALONE_SPEC` (``twistd netsvc-chat``, ``python -m netsvc.chat``):
  ``--port``/``--interface``, or ``--endpoint`` in their place;
* :data:`CHAT_SPEC` (the suite, ``twistd netsvc``): chat runs when ``--chat``
  is given, e.g. ``--chat tcp:7777`` (a bare ``7777`` works too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from netsvc.chat.limits import CHAT_PORT, ChatLimits, smallest_byte_burst
from netsvc.chat.service import chat_service, endpoint_description
from netsvc.chat.text import CharsetError, lookup_charset, room_problem
from netsvc.tapkit import (
    NO_LIMIT,
    Param,
    ServiceSpec,
    Values,
    make_standalone_service,
    number,
    standalone_options,
    whole_number,
)

_DEFAULTS = ChatLimits()


def charset_option(name: str) -> Callable[[str], str]:
    """The coerce function of option ``name``: a charset the chat can use (see
    ``lookup_charset``); its error names the option and says why the charset is refused."""

    def coerce(text: str) -> str:
        try:
            lookup_charset(text)
        except CharsetError as error:
            raise ValueError(
                f"{name} must be an ASCII-compatible charset (like utf-8 or gb2312),"
                f" not {text!r}: {error}"
            ) from None
        return text

    return coerce


def _off_if_zero(value: Any) -> Any:
    return value or None


def limits_from(values: Values) -> ChatLimits:
    """The :class:`ChatLimits` that option values describe (0 switches a guard off)."""
    return ChatLimits(
        max_line_bytes=values["max-line"],
        sendq_bytes=values["sendq"],
        flood_lines_per_second=_off_if_zero(values["flood-lines"]),
        flood_line_burst=values["flood-line-burst"],
        flood_bytes_per_second=_off_if_zero(values["flood-bytes"]),
        flood_byte_burst=values["flood-byte-burst"],
        flood_disconnect_after=_off_if_zero(values["flood-disconnect-after"]),
        max_connections=_off_if_zero(values["max-connections"]),
        max_connections_per_peer=_off_if_zero(values["max-per-peer"]),
        register_timeout=_off_if_zero(values["register-timeout"]),
        idle_timeout=_off_if_zero(values["idle-timeout"]),
        lobby=values["lobby"] or None,
        history_lines=values["history"],
        max_rooms=values["max-rooms"],
        max_rooms_per_user=values["max-rooms-per-user"],
        presence_limit=_off_if_zero(values["presence-limit"]),
    )


def build_chat(values: Values, reactor: Any) -> IService:
    """Build the chat service from option values (shared by the plugin and the suite)."""
    limits = limits_from(values)
    extra = values["extra-endpoint"]
    return chat_service(
        reactor,
        port=values.get("port", CHAT_PORT),
        interface=values.get("interface", ""),
        endpoint=values["endpoint"],
        charset=values["charset"],
        extra_listeners=[(extra, values["extra-charset"])] if extra else [],
        limits=limits,
    )


#: How errors name each endpoint option: right in ``twistd netsvc-chat`` and in the suite,
#: where ``--endpoint`` is ``--chat`` and ``--extra-endpoint`` is ``--chat-extra-endpoint``.
_ENDPOINT_OPTIONS = {
    "endpoint": ("--endpoint (--chat in the suite)", "tcp:7777"),
    "extra-endpoint": ("extra-endpoint", "tcp:7778"),
}


def _check(values: Values) -> None:
    for name, (label, example) in _ENDPOINT_OPTIONS.items():
        text = values[name]
        if text is None:
            continue
        try:
            # Parsing needs no reactor; the endpoint is only stored, never used.
            serverFromString(cast(Any, None), endpoint_description(text))
        except Exception as error:
            raise usage.UsageError(
                f"{label} must be a server endpoint like {example} or a port number,"
                f" not {text!r}: {error}"
            ) from None
    lobby = values["lobby"]
    problem = lobby and room_problem(lobby.removeprefix("#"))
    if problem:
        raise usage.UsageError(
            f"lobby must be a room name (empty: no lobby), not {lobby!r}: {problem}"
        )
    line = smallest_byte_burst(values["max-line"])
    if values["flood-byte-burst"] < line:
        raise usage.UsageError(
            f"flood-byte-burst must be at least max-line + 2 = {line} bytes (one longest"
            f" line and its CRLF), not {values['flood-byte-burst']:g}"
        )
    try:
        limits_from(values)
    except ValueError as error:
        raise usage.UsageError(str(error)) from None


_LISTEN_STANDALONE = [
    Param(
        "port", CHAT_PORT, f"TCP port (default {CHAT_PORT}).", whole_number("port", 0, 65535),
        "p",
    ),
    Param(
        "interface", "",
        "Address to listen on: IPv4 or IPv6, :: for dual-stack (default: all IPv4).",
        None, "i",
    ),
]

_COMMON = [
    Param(
        "endpoint", None,
        "Server endpoint replacing port and interface, e.g. tcp:7777:interface=\\:\\:1"
        " or tcp6:7777 (a bare port number means tcp:PORT).",
        suite_name="chat",
    ),
    Param(
        "charset", "utf-8", "Charset clients speak until they say /charset.",
        charset_option("charset"),
    ),
    Param(
        "extra-endpoint", None,
        "A second listener sharing the same rooms, e.g. tcp:7778 for legacy clients.",
    ),
    Param(
        "extra-charset", "gb2312", "Default charset of the second listener.",
        charset_option("extra-charset"),
    ),
    Param(
        "max-line", _DEFAULTS.max_line_bytes, "Longest line a client may send, in bytes.",
        whole_number("max-line", 1),
    ),
    Param(
        "sendq", _DEFAULTS.sendq_bytes,
        "Bytes queued for a client that does not read, beyond the transport's 64 KiB,"
        " before it is disconnected (SendQ exceeded).",
        whole_number("sendq", 1),
    ),
    Param(
        "flood-lines", _DEFAULTS.flood_lines_per_second,
        "Lines per second a connection may send, sustained (0: no limit).",
        number("flood-lines", "lines per second", zero_means="no limit"),
    ),
    Param(
        "flood-line-burst", _DEFAULTS.flood_line_burst,
        "Lines a connection may send at once (at least 1).",
        number("flood-line-burst", "lines", at_least=1),
    ),
    Param(
        "flood-bytes", _DEFAULTS.flood_bytes_per_second,
        "Bytes per second a connection may send, sustained (0: no limit).",
        number("flood-bytes", "bytes per second", zero_means="no limit"),
    ),
    Param(
        "flood-byte-burst", _DEFAULTS.flood_byte_burst,
        "Bytes a connection may send at once (at least one longest line: max-line + 2).",
        number("flood-byte-burst", "bytes"),
    ),
    Param(
        "flood-disconnect-after", _DEFAULTS.flood_disconnect_after,
        "Disconnect a client held back by flood control this many seconds in a row"
        " (0: never).",
        number("flood-disconnect-after", "seconds", zero_means="never"),
    ),
    Param(
        "max-connections", _DEFAULTS.max_connections,
        "Most connections at once (0: no limit).",
        whole_number("max-connections", 0, note=NO_LIMIT),
    ),
    Param(
        "max-per-peer", _DEFAULTS.max_connections_per_peer,
        "Most connections from one IP address (0: no limit).",
        whole_number("max-per-peer", 0, note=NO_LIMIT),
    ),
    Param(
        "register-timeout", _DEFAULTS.register_timeout,
        "Seconds a connection may take to choose a nickname (0: forever).",
        number("register-timeout", "seconds", zero_means="forever"),
    ),
    Param(
        "idle-timeout", 0.0,
        "Close connections that send nothing for this many seconds (0: never).",
        number("idle-timeout", "seconds", zero_means="never"),
    ),
    Param("lobby", _DEFAULTS.lobby, "Room every user joins first (empty: none)."),
    Param(
        "history", _DEFAULTS.history_lines,
        "Messages kept per room and replayed on join (0: none).",
        whole_number("history", 0, note=" (0: none)"),
    ),
    Param(
        "max-rooms", _DEFAULTS.max_rooms, "Most rooms at once.", whole_number("max-rooms", 1),
    ),
    Param(
        "max-rooms-per-user", _DEFAULTS.max_rooms_per_user,
        "Most rooms one user may be in.", whole_number("max-rooms-per-user", 1),
    ),
    Param(
        "presence-limit", _DEFAULTS.presence_limit,
        "Rooms with more members do not announce joins, parts and quits (0: always).",
        whole_number("presence-limit", 0, note=" (0: always announce)"),
    ),
]

#: ``twistd netsvc-chat`` and ``python -m netsvc.chat``.
CHAT_STANDALONE_SPEC = ServiceSpec(
    name="chat",
    description="multi-user line chat over TCP",
    params=[*_LISTEN_STANDALONE, *_COMMON],
    flags=[],
    build=build_chat,
    check=_check,
)

#: The suite's chat section: ``twistd netsvc --chat tcp:7777``.
CHAT_SPEC = ServiceSpec(
    name="chat",
    description="multi-user line chat over TCP",
    params=_COMMON,
    flags=[],
    build=build_chat,
    check=_check,
    suite_switch="endpoint",
)

Options = standalone_options(CHAT_STANDALONE_SPEC)


def makeService(options: usage.Options) -> IService:
    """Entry point of ``twistd netsvc-chat``."""
    from twisted.internet import reactor  # twistd has installed its reactor by now

    return make_standalone_service(CHAT_STANDALONE_SPEC, options, reactor)
