"""Every limit of the chat server in one frozen value object, with defaults and why."""

from __future__ import annotations

import attrs

__all__ = ["CHAT_PORT", "DEFAULT_LIMITS", "ChatLimits", "smallest_byte_burst"]

#: The default TCP port. Unprivileged (no root needed), and deliberately not IRC's 6667:
#: this is not IRC, and an IRC client pointed at it would only get confusing errors.
CHAT_PORT = 7777


@attrs.frozen
class ChatLimits:
    """Guards and sizes of the chat server. ``None`` switches a guard off.

    Memory is bounded per connection by ``max_line_bytes`` of input, the transport's own
    64 KiB write buffer plus ``sendq_bytes`` of output, and two token buckets; in total by
    ``max_connections`` times that, plus ``max_rooms * history_lines`` history lines.
    """

    #: Longest line a client may send, in bytes, without its line ending. A longer line is
    #: discarded with an error line to its sender; the connection stays open.
    max_line_bytes: int = 4096
    #: Output queued for one client beyond the transport's 64 KiB buffer. A client that
    #: reads slower than its rooms talk is disconnected ("SendQ exceeded") when its queue
    #: passes this, so it never slows the others or grows the server.
    sendq_bytes: int = 256 * 1024
    #: Lines per second a connection may send (sustained), and the burst it may send at
    #: once. Beyond them the server stops reading from it until tokens come back.
    flood_lines_per_second: float | None = 10.0
    flood_line_burst: float = 20.0
    #: The same for bytes (line endings included).
    flood_bytes_per_second: float | None = 16 * 1024.0
    flood_byte_burst: float = 64 * 1024.0
    #: A connection held back by flood control for this many seconds in a row is
    #: disconnected ("Excess flood"). ``None``: held back forever, never disconnected.
    flood_disconnect_after: float | None = 30.0
    #: Open connections at once, and from one IP address. Connections over a cap get a
    #: one-line explanation and are closed.
    max_connections: int | None = 10_000
    max_connections_per_peer: int | None = 16
    #: Seconds a connection may take to choose a nickname (or ask for a guest name).
    register_timeout: float | None = 60.0
    #: Seconds without receiving a line after which a connection is closed.
    idle_timeout: float | None = None
    #: Seconds a closing connection may take to flush its last lines before it is aborted.
    close_timeout: float = 10.0
    #: Room that every new user joins (``None``: start in no room).
    lobby: str | None = "lobby"
    #: Room messages kept per room and replayed to whoever joins (0: no history).
    history_lines: int = 50
    #: Rooms that may exist at once, and that one user may be in.
    max_rooms: int = 1000
    max_rooms_per_user: int = 10
    #: Rooms with more members than this do not announce joins, parts, renames and quits
    #: (a join would otherwise cost one line per member: quadratic as a room fills).
    presence_limit: int | None = 250

    def __attrs_post_init__(self) -> None:
        positive = ("max_line_bytes", "sendq_bytes", "max_rooms", "max_rooms_per_user")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        optional_counts = ("max_connections", "max_connections_per_peer", "presence_limit")
        for name in optional_counts:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")
        optional_times = (
            "flood_lines_per_second",
            "flood_bytes_per_second",
            "flood_disconnect_after",
            "register_timeout",
            "idle_timeout",
        )
        for name in optional_times:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if not self.close_timeout > 0:
            raise ValueError(f"close_timeout must be positive, got {self.close_timeout}")
        if self.history_lines < 0:
            raise ValueError(f"history_lines must not be negative, got {self.history_lines}")
        if not self.flood_line_burst >= 1:
            raise ValueError("flood_line_burst must be at least one line")
        if not self.flood_byte_burst >= smallest_byte_burst(self.max_line_bytes):
            raise ValueError(
                "flood_byte_burst must hold at least one line of max_line_bytes plus CRLF"
            )


def smallest_byte_burst(max_line_bytes: int) -> int:
    """The least ``flood_byte_burst`` for ``max_line_bytes``: one longest line and its CRLF."""
    return max_line_bytes + 2


#: The defaults, as one shared value (frozen, so safe as an argument default).
DEFAULT_LIMITS = ChatLimits()
