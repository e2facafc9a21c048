"""The chat over TCP: line framing, commands, flood control and send queues.

:class:`ChatServer` holds what all listeners share (the :class:`ChatRegistry`, the
connection table and caps, the idle sweep); :class:`ChatFactory` is one listener with its
default charset; :class:`ChatProtocol` is one connection and stays thin: it frames lines,
applies flood control, parses commands and calls the registry.

Framing is linear: one ``split(b"\\n")`` per chunk, a trailing ``\\r`` stripped, so LF-only
clients (``nc``) and CRLF clients both work. A line longer than
``ChatLimits.max_line_bytes`` is discarded with an error line to its sender.

Output: every line for a client goes through ``user.send``, which the protocol points
at the cheapest correct path for the state of the connection (the "SendQ" is what the
server holds for a client beyond the kernel's socket buffer):

* Plain TCP (the common case): the protocol is the transport's *pull* producer, so
  Twisted calls :meth:`ChatProtocol.resumeProducing` each time the transport's write
  buffer has drained completely. While it is empty, ``send`` is ``socket.send`` on the
  connection's socket: one system call, no buffering, no reactor round trip, and no
  reordering is possible because nothing is queued. What the kernel does not take goes
  to ``transport.write`` and from then on everything does, counted, until the next
  "drained"; more than ``sendq_bytes`` + 64 KiB held disconnects the client.
* Other transports (TLS, test fakes): the protocol is the transport's *streaming*
  producer. ``send`` is ``transport.write`` until the transport's buffer passes 64 KiB and
  Twisted calls :meth:`ChatProtocol.pauseProducing`; then lines go to a private queue,
  written in one piece on ``resumeProducing``. A queue past ``sendq_bytes`` disconnects.

Either way a reader that cannot keep up never slows the others or grows the server: it
is disconnected with "SendQ exceeded".

Fan-out: the chat lines of one chunk of input leave as one fan-out (one write per
recipient for all of them), and connections set ``TCP_NODELAY``, since a chat line
should leave at once rather than wait for the acknowledgement of the previous one.

Flood control: a token bucket for lines and one for bytes per connection. When a line
finds either empty, the rest of the input is held, reading stops
(``transport.pauseProducing``: TCP flow control pushes back on the client) and a timer
resumes it when the tokens are back. The first hold of an episode sends a warning; a
client held back for ``flood_disconnect_after`` seconds in a row (no pause of a second or
more between holds) is disconnected ("Excess flood").
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet import task, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsvc.chat.limits import DEFAULT_LIMITS, ChatLimits
from netsvc.chat.registry import ChatError, ChatRegistry, User
from netsvc.chat.text import (
    DEFAULT_CHARSET,
    Charset,
    CharsetError,
    lookup_charset,
    name_key,
    sanitize,
)
from netsvc.ratelimit import ALWAYS, Admission, TokenBucket

__all__ = ["DEFAULT_BANNER", "HELP", "ChatFactory", "ChatProtocol", "ChatServer"]

#: Lines every client sees on connecting, before the nickname prompt.
DEFAULT_BANNER: tuple[str, ...] = (
    "netsvc chat. Type /help for the commands.",
)

HELP: tuple[str, ...] = (
    "Commands:",
    "  /nick NAME             change your nickname",
    "  /join ROOM             join a room (created if needed); your lines go there",
    "  /part [ROOM] [REASON]  leave a room (default: the one you talk in)",
    "  /rooms                 list the rooms",
    "  /who [ROOM]            list who is in a room",
    "  /msg NICK TEXT         send TEXT to NICK only",
    "  /me TEXT               an action: * you TEXT",
    "  /charset [NAME]        show or set your charset (utf-8, gb2312, big5, latin-1...)",
    "  /quit [REASON]         leave",
    "  /help                  this list",
    "Lines that are not commands go to your current room; start a line with // to send",
    "one that begins with /.",
)

_LONG_AGO = -1e18
#: ``FileDescriptor.bufferSize``: what a transport buffers before pausing its producer.
_TRANSPORT_BUFFER = 64 * 1024
_PROMPT = "Choose a nickname (or press Enter for a guest name):"
#: A hold of flood control less than this after the previous one ended (its input was
#: resumed) continues the same episode: the client kept sending all along.
_FLOOD_EPISODE_GAP = 1.0
#: Most lines in a /who or /rooms reply line, so each line stays short.
_LIST_LINE_CHARS = 400
_MAX_ROOMS_LISTED = 100


def _discard(data: bytes) -> None:
    pass


class _NotMetered:
    """A connection's flood-control state before its buckets exist (see _admit)."""

    __slots__ = ()
    tokens = 0.0  # never enough: the inlined fast path always falls through to _admit

    def take(self, clock: Callable[[], float], cost: float = 1.0) -> bool:
        return False


_FIRST_LINE: Admission = _NotMetered()
_SECOND_LINE: Admission = _NotMetered()


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _direct_socket(transport: object) -> socket.socket | None:
    """The socket of a plain (not TLS) TCP or UNIX stream transport, else ``None``."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return handle
    return None


def _host_of(addr: IAddress | None) -> str:
    if isinstance(addr, IPv4Address | IPv6Address):
        return addr.host
    return str(addr)


@implementer(IProtocol, ILoggingContext, IHalfCloseableProtocol, IPushProducer)
class ChatProtocol:
    """One client connection. Shared state lives in :attr:`server` (see module docs).

    Not a subclass of Twisted's ``Protocol``, whose instances always carry a ``__dict__``:
    with ``__slots__`` and no ``__dict__`` an idle connection costs about 270 bytes less,
    and idle connections are what a chat server has most of.
    """

    __slots__ = (
        "_buffer",
        "_bytes",
        "_close_call",
        "_closing",
        "_discarding",
        "_flood_started",
        "_flood_until",
        "_held",
        "_held_by_transport",
        "_input_closed",
        "_lines",
        "_queue",
        "_queued",
        "_resume_call",
        "_socket",
        "active",
        "charset",
        "connected",
        "connected_at",
        "factory",
        "idle_since",
        "peer_host",
        "server",
        "transport",
        "user",
    )
    transport: ITCPTransport
    factory: ChatFactory | None

    def __init__(self, server: ChatServer, charset: Charset, peer_host: str) -> None:
        self.factory = None
        self.connected = 0
        self.server = server
        self.charset = charset
        self.peer_host = peer_host
        #: Set when a line arrives; the server's idle sweep clears it (ChatServer.sweep).
        self.active = False
        self.connected_at = self.idle_since = 0.0
        self.user = User(_discard, charset, peer_host, self)
        # Flood control starts metering at the second line (see _admit).
        metered = server.line_rate is not None or server.byte_rate is not None
        self._lines: Admission = _FIRST_LINE if metered else ALWAYS
        self._bytes: Admission = ALWAYS
        self._buffer = b""
        self._discarding = False
        self._held: tuple[list[bytes], int, bytes] | None = None
        self._resume_call: IDelayedCall | None = None
        self._flood_started = 0.0
        self._flood_until = _LONG_AGO
        self._queue: list[bytes] | None = None
        self._queued = 0
        self._socket: socket.socket | None = None
        self._held_by_transport = 0
        self._closing = False
        self._close_call: IDelayedCall | None = None
        self._input_closed = False

    # -- connection life -----------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self.connected = 1
        self.transport = cast(ITCPTransport, transport)
        self.connectionMade()

    def logPrefix(self) -> str:
        return "ChatProtocol"

    def connectionMade(self) -> None:
        server = self.server
        transport = self.transport
        self.connected_at = self.idle_since = server.clock()
        self.user.send = transport.write
        # Chat is interactive: a line should leave now, not wait (Nagle) for the ACK of the
        # previous one, which a receiver's delayed ACK can hold back for up to 40 ms.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):  # not TCP: a UNIX socket, say
                set_no_delay(True)
        # Registering as producer is how the transport tells us about its buffer (see the
        # module docstring); a pull producer is resumed at once, which sets ``send``.
        sock = _direct_socket(transport) if server.direct_writes else None
        if sock is not None:
            self._socket = sock
            cast(IConsumer, transport).registerProducer(self, False)
        else:
            cast(IConsumer, transport).registerProducer(self, True)
        notify = self.user.notify
        for line in server.banner:
            notify(line)
        notify(f"Your charset is {self.charset.name}; /charset NAME changes it.")
        notify(_PROMPT)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = 0
        self._cancel_timers()
        self.user.send = _discard
        self._queue = None
        if not self._closing:
            self._closing = True
            self.server.registry.quit(self.user, "connection closed")
        self.server.connection_closed(self)

    def readConnectionLost(self) -> None:
        """The client half-closed: finish its last lines, then say goodbye and close."""
        self._input_closed = True
        if self._held is None:
            self._end_of_input()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _end_of_input(self) -> None:
        tail, self._buffer = self._buffer, b""
        if tail and not self._discarding and not self._closing and not self._process(tail + b"\n"):
            return  # held by flood control: _resume_input comes back here
        self.disconnect("end of input", farewell="Goodbye.")

    def disconnect(self, reason: str, farewell: str | None = None, flush: bool = True) -> None:
        """End this session: tell the client why, leave the rooms, close the connection.

        The client gets ``*** farewell`` (default ``Disconnected: reason``) after the
        output still queued for it (dropped instead when ``flush`` is false: the SendQ
        overflowed); a client that does not read it within ``close_timeout`` seconds is
        cut off. Others see ``nick quit (reason)``.
        """
        if self._closing:
            return
        self._closing = True
        user = self.user
        queue, self._queue = self._queue, None
        self._cancel_timers()
        transport = self.transport
        user.send = _discard
        if queue and flush:
            transport.write(b"".join(queue))
        text = farewell if farewell is not None else f"Disconnected: {reason}"
        transport.write(user.charset.encode(f"*** {text}\r\n"))
        cast(IConsumer, transport).unregisterProducer()
        transport.loseConnection()
        self._close_call = self.server.reactor.callLater(
            self.server.limits.close_timeout, transport.abortConnection
        )
        self.server.registry.quit(user, reason)

    def _cancel_timers(self) -> None:
        for call in (self._resume_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        self._resume_call = self._close_call = None

    # -- output: the SendQ (producer callbacks come from the transport) ---------------

    def pauseProducing(self) -> None:
        """Streaming mode: the transport's buffer is full; queue further output here."""
        if self._closing:
            return
        if self._queue is None:
            self._queue = []
            self._queued = 0
        self.user.send = self._enqueue

    def resumeProducing(self) -> None:
        """The transport's buffer has drained: send directly again."""
        if self._closing:
            return
        if self._socket is not None:
            self._held_by_transport = 0
            self.user.send = self._send_direct
            return
        queue, self._queue = self._queue, None
        self.user.send = self.transport.write
        if queue:
            self.transport.write(b"".join(queue))  # may pause us again at once

    def _send_direct(self, data: bytes) -> None:
        """Plain TCP with an empty transport buffer: straight to the socket."""
        try:
            sent = self._socket.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError:
            # Reset or broken: the transport finds out on its next write and closes.
            sent = 0
        if sent < len(data):
            self.user.send = self._send_buffered
            self._send_buffered(data[sent:] if sent else data)

    def _send_buffered(self, data: bytes) -> None:
        """Plain TCP, transport buffer not empty: keep the order, count what is held."""
        self._held_by_transport += len(data)
        self.transport.write(data)
        if self._held_by_transport > self.server.direct_sendq_limit:
            self.server.sendq_exceeded += 1
            self.disconnect("SendQ exceeded", flush=False)

    def stopProducing(self) -> None:
        pass  # the connection is going away; connectionLost cleans up

    def _enqueue(self, data: bytes) -> None:
        queue = self._queue
        if queue is None:
            return
        queue.append(data)
        self._queued += len(data)
        if self._queued > self.server.limits.sendq_bytes:
            self.server.sendq_exceeded += 1
            self.disconnect("SendQ exceeded", flush=False)

    # -- input: framing and flood control -----------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        held = self._held
        if held is not None:
            # Reading is paused, but a transport may still deliver what it had buffered.
            lines, index, tail = held
            self._held = (lines, index, tail + data)
            if len(tail) + len(data) > self.server.held_input_limit:
                self.disconnect("Excess flood")
            return
        self._process(data)

    def _process(self, data: bytes) -> bool:
        """Handle the complete lines in ``data``; return False if flood control held some."""
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return True
            data = data[end + 1 :]
            self._discarding = False
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        lines = data.split(b"\n")
        tail = lines.pop()
        return self._process_lines(lines, 0, tail)

    def _process_lines(self, lines: list[bytes], start: int, tail: bytes) -> bool:
        """Handle ``lines[start:]``, then keep ``tail`` (a partial line) for later."""
        if start < len(lines):
            self.active = True
            max_line = self.server.limits.max_line_bytes
            line_bucket = self._lines
            byte_bucket = self._bytes
            user = self.user
            # Consecutive chat lines of one chunk leave as one fan-out: one encode per
            # charset and one send per recipient for all of them, not one per line.
            said: list[str] = []
            for index in range(start, len(lines)):
                line = lines[index]
                cost = len(line) + 1
                # Both buckets' common case inlined (TokenBucket.take when tokens are left).
                if line_bucket.tokens >= 1.0 and byte_bucket.tokens >= cost:
                    line_bucket.tokens -= 1.0
                    byte_bucket.tokens -= cost
                elif self._admit(min(cost, max_line + 2)):
                    line_bucket = self._lines  # _admit may have started metering
                    byte_bucket = self._bytes
                else:
                    if said:
                        self._say(said)
                    self._hold(lines, index, tail)
                    return False
                if line[-1:] == b"\r":
                    line = line[:-1]
                if len(line) > max_line:
                    user.notify(
                        f"Line too long: {len(line)} bytes, the most is {max_line}. Not sent."
                    )
                    continue
                text = line.decode(user.charset.decoder, "replace")
                if not text.isprintable():
                    text = sanitize(text)
                if user.nick is not None and (text[:1] != "/" or text[:2] == "//"):
                    if text[:1] == "/":
                        text = text[1:]
                    if text and not text.isspace():
                        said.append(text)
                    continue
                if said:
                    self._say(said)
                    said = []
                self._text_line(text)
                if self._closing:
                    return True
            if said:
                self._say(said)
                if self._closing:
                    return True
        if len(tail) > self.server.limits.max_line_bytes + 1:
            self.user.notify(
                f"Line too long: the most is {self.server.limits.max_line_bytes} bytes."
                " Not sent."
            )
            self._discarding = True
        else:
            self._buffer = tail
        return True

    def _admit(self, cost: float) -> bool:
        """Flood control's slow path: refill the buckets; whether the line may pass.

        The first line (usually the nickname) is not charged and the buckets are only
        made for the second: a user who chooses a nickname and then only reads, which is
        what most users of a big chat do, never costs the two buckets' memory.
        """
        server = self.server
        clock = server.clock
        if self._lines is _FIRST_LINE:
            self._lines = _SECOND_LINE
            return True
        if self._lines is _SECOND_LINE:
            now = clock()
            self._lines = (
                ALWAYS if server.line_rate is None
                else TokenBucket(server.line_rate, server.line_burst, now)
            )
            if server.byte_rate is not None:
                self._bytes = TokenBucket(server.byte_rate, server.byte_burst, now)
        if not self._lines.take(clock):
            return False
        if self._bytes.take(clock, cost):
            return True
        self._lines.tokens += 1.0  # not spent: the line waits
        return False

    def _hold(self, lines: list[bytes], index: int, tail: bytes) -> None:
        """Flood control: keep the unprocessed input, stop reading, resume when allowed.

        The lines stay as they were split, with the index of the first one not handled:
        resuming costs nothing per held line, however many a chunk held.
        """
        server = self.server
        now = server.clock()
        self._held = (lines, index, tail)
        if now - self._flood_until > _FLOOD_EPISODE_GAP:
            self._flood_started = now
            server.flood_holds += 1
            self.user.notify("Flood control: you are sending too fast, your lines are delayed.")
        limit = server.limits.flood_disconnect_after
        if limit is not None and now - self._flood_started >= limit:
            self.disconnect("Excess flood")
            return
        if not self._input_closed:
            cast(IPushProducer, self.transport).pauseProducing()
        wait = self._wait_for_tokens()
        self._flood_until = now + wait
        self._resume_call = server.reactor.callLater(wait, self._resume_input)

    def _wait_for_tokens(self) -> float:
        wait = 0.01
        max_line = float(self.server.limits.max_line_bytes)
        for bucket, needed in ((self._lines, 1.0), (self._bytes, max_line)):
            if isinstance(bucket, TokenBucket) and bucket.tokens < needed:
                wait = max(wait, (min(needed, bucket.burst) - bucket.tokens) / bucket.rate)
        return min(wait, 5.0)

    def _resume_input(self) -> None:
        self._resume_call = None
        held, self._held = self._held, None
        if self._closing or held is None:
            return
        lines, index, tail = held
        if b"\n" in tail:  # more arrived while reading was paused
            more = tail.split(b"\n")
            tail = more.pop()
            lines, index = lines[index:] + more, 0
        if self._process_lines(lines, index, tail) and not self._closing:
            if self._input_closed:
                self._end_of_input()
            elif self._held is None:
                cast(IPushProducer, self.transport).resumeProducing()

    # -- lines and commands ------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """Handle one line (without its line ending) as if it had arrived on its own."""
        text = self.user.charset.decode(line)
        if not text.isprintable():
            text = sanitize(text)
        self._text_line(text)

    def _say(self, texts: list[str]) -> None:
        try:
            self.server.registry.say_many(self.user, texts)
        except ChatError as error:
            self.user.notify(str(error))

    def _text_line(self, text: str) -> None:
        user = self.user
        if user.nick is None:
            self._register(text.strip())
            return
        if text[:1] == "/":
            if text[:2] == "//":
                text = text[1:]
            else:
                self._command(text)
                return
        if text and not text.isspace():
            try:
                self.server.registry.say(user, text)
            except ChatError as error:
                user.notify(str(error))

    def _register(self, text: str) -> None:
        user = self.user
        registry = self.server.registry
        if text.startswith("/"):
            name = text[1:].partition(" ")[0].lower()
            if name in ("nick", "charset", "help", "quit", "exit", "?"):
                self._command(text)
                return
            # Any other command: the user did not want to choose, so be a guest.
            self._register("")
            if user.nick is not None:
                self._command(text)
            return
        try:
            registry.set_nick(user, text or registry.guest_nick())  # says "Welcome"
        except ChatError as error:
            user.notify(f"{error}. {_PROMPT}")
            return
        lobby = registry.lobby
        if lobby is not None:
            self._join(lobby)

    def _command(self, text: str) -> None:
        name, _, rest = text[1:].partition(" ")
        handler = _COMMANDS.get(name.lower())
        if handler is None:
            self.user.notify(f"Unknown command /{name}. /help lists the commands.")
            return
        try:
            handler(self, rest.strip())
        except ChatError as error:
            self.user.notify(str(error))

    def _help(self, rest: str) -> None:
        for line in HELP:
            self.user.notify(line)

    def _nick(self, rest: str) -> None:
        if not rest:
            current = self.user.nick
            self.user.notify(f"You are {current}." if current else _PROMPT)
            return
        if self.user.nick is None:
            self._register(rest)
            return
        self.server.registry.set_nick(self.user, rest)

    def _join(self, rest: str) -> None:
        if not rest:
            raise ChatError("Usage: /join ROOM")
        self.server.registry.join(self.user, rest.split()[0])  # tells the user, with history

    def _part(self, rest: str) -> None:
        user = self.user
        room, _, reason = rest.partition(" ")
        mine = {r.key for r in user.rooms}
        if room and (room.startswith("#") or name_key(room) in mine):
            self.server.registry.part(user, room, reason.strip())
        else:
            self.server.registry.part(user, None, rest)

    def _rooms(self, rest: str) -> None:
        registry = self.server.registry
        count = registry.room_count()
        listed = registry.room_sizes(_MAX_ROOMS_LISTED)
        notify = self.user.notify
        notify(f"{count} room{'s' if count != 1 else ''}:")
        for name, size in listed:
            notify(f"  {name} ({size})")
        if count > len(listed):
            notify(f"  ... and {count - len(listed)} smaller rooms")

    def _who(self, rest: str) -> None:
        user = self.user
        name = rest.split()[0] if rest else (user.active.label if user.active else None)
        if name is None:
            raise ChatError("Usage: /who ROOM (you are in no room)")
        info = self.server.registry.room(name)
        if info is None:
            raise ChatError(f"There is no room {name}.")
        user.notify(f"{info.name} ({len(info.members)}):")
        line = ""
        for nick in info.members:
            if line and len(line) + len(nick) > _LIST_LINE_CHARS:
                user.notify("  " + line)
                line = ""
            line = f"{line} {nick}" if line else nick
        if line:
            user.notify("  " + line)

    def _msg(self, rest: str) -> None:
        nick, _, text = rest.partition(" ")
        text = text.strip()
        if not nick or not text:
            raise ChatError("Usage: /msg NICK TEXT")
        self.server.registry.message(self.user, nick, text)

    def _me(self, rest: str) -> None:
        if not rest:
            raise ChatError("Usage: /me TEXT")
        self.server.registry.say(self.user, rest, action=True)

    def _charset(self, rest: str) -> None:
        user = self.user
        if not rest:
            user.notify(f"Your charset is {user.charset.name}.")
            return
        try:
            charset = lookup_charset(rest.split()[0])
        except CharsetError as error:
            raise ChatError(f"{error}. Try utf-8, gb2312, gb18030, big5, shift_jis,"
                            " euc-kr, koi8-r or latin-1.") from None
        self.server.registry.set_charset(user, charset)
        user.notify(f"Your charset is now {charset.name}.")

    def _quit(self, rest: str) -> None:
        self.disconnect(rest or "quit", farewell="Goodbye.")


_Command = Callable[[ChatProtocol, str], None]
_COMMANDS: dict[str, _Command] = {
    "help": ChatProtocol._help,
    "?": ChatProtocol._help,
    "nick": ChatProtocol._nick,
    "join": ChatProtocol._join,
    "j": ChatProtocol._join,
    "part": ChatProtocol._part,
    "leave": ChatProtocol._part,
    "rooms": ChatProtocol._rooms,
    "list": ChatProtocol._rooms,
    "who": ChatProtocol._who,
    "names": ChatProtocol._who,
    "msg": ChatProtocol._msg,
    "tell": ChatProtocol._msg,
    "me": ChatProtocol._me,
    "charset": ChatProtocol._charset,
    "quit": ChatProtocol._quit,
    "exit": ChatProtocol._quit,
}


class _Refusal(Protocol):
    """Says why a connection is refused (a cap was reached), then closes it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"*** {self.reason}\r\n".encode())
        self.transport.loseConnection()


class ChatServer:
    """What every listener of one chat shares: registry, connections, caps, idle sweep.

    ``reactor`` provides ``IReactorTime`` (and is what the listeners run on).
    :meth:`factory` makes a listener's protocol factory with its default charset.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        limits: ChatLimits = DEFAULT_LIMITS,
        registry: ChatRegistry | None = None,
        banner: Sequence[str] = DEFAULT_BANNER,
    ) -> None:
        self.reactor = reactor
        self.clock = reactor.seconds
        self.limits = limits
        self.registry = registry if registry is not None else ChatRegistry(limits, reactor.seconds)
        self.banner = tuple(banner)
        self.connections: set[ChatProtocol] = set()
        self.per_peer: dict[str, int] = {}
        #: Counters for monitoring.
        self.refused = 0
        self.sendq_exceeded = 0
        self.flood_holds = 0
        self.timed_out = 0
        # The buckets' parameters as shared float objects (TokenBucket keeps them as given).
        self.line_rate = _float_or_none(limits.flood_lines_per_second)
        self.line_burst = float(limits.flood_line_burst)
        self.byte_rate = _float_or_none(limits.flood_bytes_per_second)
        self.byte_burst = float(limits.flood_byte_burst)
        #: Use ``socket.send`` on plain TCP connections while their buffer is empty.
        self.direct_writes = True
        #: What a plain TCP connection may hold in its transport: the same as the streaming
        #: path (the transport's 64 KiB before it pauses, plus the queue).
        self.direct_sendq_limit = limits.sendq_bytes + _TRANSPORT_BUFFER
        #: Input kept for a flood-held connection at most (a transport that keeps
        #: delivering after pauseProducing).
        self.held_input_limit = 16 * (limits.max_line_bytes + 2)
        self._sweeper: task.LoopingCall | None = None
        self._listeners = 0

    def factory(self, charset: str | Charset = DEFAULT_CHARSET) -> ChatFactory:
        """A protocol factory for one listener; ``charset`` is its clients' default."""
        if isinstance(charset, str):
            charset = lookup_charset(charset)
        return ChatFactory(self, charset)

    def accept(self, addr: IAddress | None, charset: Charset) -> ChatProtocol | Protocol:
        limits = self.limits
        if limits.max_connections is not None and len(self.connections) >= limits.max_connections:
            self.refused += 1
            return _Refusal("The server is full; try again later.")
        host = _host_of(addr)
        count = self.per_peer.get(host, 0)
        cap = limits.max_connections_per_peer
        if cap is not None and count >= cap:
            self.refused += 1
            return _Refusal(f"Too many connections from {host}; close one first.")
        self.per_peer[host] = count + 1
        protocol = ChatProtocol(self, charset, host)
        self.connections.add(protocol)
        return protocol

    def connection_closed(self, protocol: ChatProtocol) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        remaining = self.per_peer.get(protocol.peer_host, 1) - 1
        if remaining > 0:
            self.per_peer[protocol.peer_host] = remaining
        else:
            self.per_peer.pop(protocol.peer_host, None)

    def listener_started(self) -> None:
        self._listeners += 1
        timeouts = [t for t in (self.limits.idle_timeout, self.limits.register_timeout) if t]
        if self._sweeper is None and timeouts:
            # One timer for every connection: reads only set a flag. A timeout T is
            # enforced between T and T + min(timeouts) / 2.
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = self.reactor
            self._sweeper.start(min(timeouts) / 2, now=False)

    def listener_stopped(self) -> None:
        self._listeners -= 1
        if self._listeners <= 0 and self._sweeper is not None:
            if self._sweeper.running:
                self._sweeper.stop()
            self._sweeper = None

    def sweep(self) -> int:
        """Close connections past the registration or idle timeout; return how many."""
        now = self.clock()
        idle_timeout = self.limits.idle_timeout
        register_timeout = self.limits.register_timeout
        closed = 0
        for protocol in list(self.connections):
            if protocol._closing:
                continue
            if (
                register_timeout
                and protocol.user.nick is None
                and now - protocol.connected_at >= register_timeout
            ):
                protocol.disconnect(f"no nickname chosen within {register_timeout:g} seconds")
                closed += 1
                continue
            if protocol.active:
                protocol.active = False
                protocol.idle_since = now
            elif idle_timeout and now - protocol.idle_since >= idle_timeout:
                protocol.disconnect(f"idle for {idle_timeout:g} seconds")
                closed += 1
        if closed:
            self.timed_out += closed
            self.log.info("chat: closed {count} idle connections", count=closed)
        return closed


class ChatFactory(Factory[Any]):
    """One listener of a :class:`ChatServer`: builds :class:`ChatProtocol` connections."""

    noisy = False

    def __init__(self, server: ChatServer, charset: Charset = DEFAULT_CHARSET) -> None:
        self.server = server
        self.charset = charset

    @property
    def registry(self) -> ChatRegistry:
        return self.server.registry

    def buildProtocol(self, addr: IAddress | None) -> ChatProtocol | Protocol:
        protocol = self.server.accept(addr, self.charset)
        protocol.factory = self
        return protocol

    def startFactory(self) -> None:
        self.server.listener_started()

    def stopFactory(self) -> None:
        self.server.listener_stopped()

