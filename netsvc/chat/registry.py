"""Who is connected, which rooms exist, who is in them, and what was said.

:class:`ChatRegistry` is the chat's shared state and its library API. Connections
(:mod:`netsvc.chat.protocol`) and in-process bots (:class:`Bot`) are both
:class:`User` objects to it: something with a nickname, a charset and a ``send``
callable that takes the bytes of whole lines.

Fan-out is the hot path: a room keeps its members grouped by the encoder of their
charset, so a message is encoded once per charset present in the room (not once per
recipient) and each recipient costs one ``send(data)`` call. Removing a user while a
fan-out is running (a recipient whose send queue overflowed, say) is deferred until the
outermost fan-out ends, so every recipient sees the message before the departure, and no
fan-out ever recurses into another one more than one level deep.

No Twisted, no sockets and no clock of its own: the owner passes ``clock`` (seconds since
the epoch, e.g. ``reactor.seconds``), used only to time-stamp the history.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, TypeAlias

import attrs
from twisted.logger import Logger

from netsvc.chat.limits import DEFAULT_LIMITS, ChatLimits
from netsvc.chat.text import (
    DEFAULT_CHARSET,
    Charset,
    name_key,
    nick_problem,
    room_problem,
    sanitize,
)

__all__ = [
    "Bot",
    "ChatError",
    "ChatEvent",
    "ChatRegistry",
    "JoinResult",
    "PrivateMessage",
    "RoomInfo",
    "RoomMessage",
    "Session",
    "User",
    "UserInfo",
    "UserJoined",
    "UserLeft",
    "UserQuit",
    "UserRegistered",
    "UserRenamed",
]

EOL = "\r\n"


class ChatError(Exception):
    """A request the registry refuses; ``str(error)`` is a message for the user."""


# Events, delivered synchronously to subscribers (see ChatRegistry.subscribe).


@attrs.frozen
class UserRegistered:
    """``nick`` chose its nickname (or got a guest name): it is now on the server."""

    nick: str
    peer: str


@attrs.frozen
class UserRenamed:
    old: str
    new: str


@attrs.frozen
class UserJoined:
    room: str
    nick: str


@attrs.frozen
class UserLeft:
    """``nick`` left ``room``; ``reason`` is what it gave, or why it had to go."""

    room: str
    nick: str
    reason: str


@attrs.frozen
class UserQuit:
    """``nick`` left the server (after a :class:`UserLeft` for each of its rooms)."""

    nick: str
    reason: str


@attrs.frozen
class RoomMessage:
    """``nick`` said ``text`` in ``room`` (``action``: it was a ``/me``)."""

    room: str
    nick: str
    text: str
    action: bool = False


@attrs.frozen
class PrivateMessage:
    """``sender`` sent ``text`` to ``target`` only."""

    sender: str
    target: str
    text: str


ChatEvent: TypeAlias = (
    UserRegistered | UserRenamed | UserJoined | UserLeft | UserQuit | RoomMessage | PrivateMessage
)


@attrs.frozen
class UserInfo:
    nick: str
    peer: str
    charset: str
    rooms: tuple[str, ...]
    bot: bool


@attrs.frozen
class RoomInfo:
    name: str
    members: tuple[str, ...]


@attrs.frozen
class JoinResult:
    """What the joiner is told: the room, how many are in it, the recent history."""

    room: str
    members: int
    history: tuple[str, ...]
    already_member: bool = False


def _discard(data: bytes) -> None:
    pass


class Session(Protocol):
    """Whoever owns a :class:`User`: a connection, or a :class:`Bot`."""

    def disconnect(self, reason: str) -> None:
        """End the session with ``reason`` (a kick, a shutdown)."""


class User:
    """One participant: a connection or a bot. The registry owns its room fields."""

    __slots__ = ("active", "bot", "charset", "key", "nick", "peer", "rooms", "send", "session")

    def __init__(
        self,
        send: Callable[[bytes], None] = _discard,
        charset: Charset = DEFAULT_CHARSET,
        peer: str = "",
        session: Session | None = None,
        bot: bool = False,
    ) -> None:
        #: Takes the bytes of whole lines; connections swap it as their transport fills.
        self.send = send
        self.charset = charset
        self.peer = peer
        #: Ends this user's session (``None``: the registry just removes the user).
        self.session = session
        self.bot = bot
        self.nick: str | None = None
        self.key = ""
        #: A tuple, rebuilt on join and part: rooms change rarely, and an empty tuple is
        #: shared where an empty list would cost every idle user 56 bytes.
        self.rooms: tuple[Room, ...] = ()
        self.active: Room | None = None

    def notify(self, text: str) -> None:
        """Send this user one server line ``*** text``."""
        self.send(self.charset.encode(f"*** {text}{EOL}"))

    def __repr__(self) -> str:
        return f"<User {self.nick or '(unregistered)'} {self.peer}>"


class Room:
    __slots__ = ("by_encoder", "history", "key", "label", "size")

    def __init__(self, name: str, history_lines: int) -> None:
        self.label = "#" + name
        self.key = name_key(name)
        #: Members grouped by output encoder: encode once per group, send to each.
        self.by_encoder: dict[str, dict[User, None]] = {}
        self.size = 0
        self.history: deque[tuple[float, str]] = deque(maxlen=history_lines)

    def members(self) -> list[User]:
        return [user for group in self.by_encoder.values() for user in group]

    def add(self, user: User) -> None:
        self.by_encoder.setdefault(user.charset.encoder, {})[user] = None
        self.size += 1

    def remove(self, user: User) -> None:
        group = self.by_encoder[user.charset.encoder]
        del group[user]
        if not group:
            del self.by_encoder[user.charset.encoder]
        self.size -= 1


class ChatRegistry:
    """The chat's users, rooms and history, and the API to drive or observe them.

    The registry sends every chat line, including the acting user's own confirmations
    ("You joined #rust", its history, "-> *bob* hi"), so that events, delivered after
    them, never overtake them.

    Observe: :meth:`subscribe` to :data:`ChatEvent` values; :meth:`users`,
    :meth:`rooms`, :meth:`room`. Drive: :meth:`post` server notices, :meth:`add_bot` for a
    participant that joins rooms, talks and gets private messages, :meth:`disconnect`.
    """

    log = Logger()

    def __init__(
        self,
        limits: ChatLimits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        welcome: str = "Welcome, {nick}! /help lists the commands.",
    ) -> None:
        self.limits = limits
        self.clock = clock
        #: What a user is told on choosing its nickname (``{nick}`` is replaced).
        self.welcome = welcome
        self._users: dict[str, User] = {}
        self._rooms: dict[str, Room] = {}
        self._subscribers: list[Callable[[ChatEvent], None]] = []
        self._fanning_out = 0
        #: Quits asked for during a fan-out, run when it ends (each user once).
        self._deferred: deque[tuple[User, str]] = deque()
        self._deferred_users: set[User] = set()
        self._running_deferred = False
        self._guest_serial = 0
        self._presence_limit = limits.presence_limit or float("inf")
        if limits.lobby is not None:
            problem = room_problem(limits.lobby.removeprefix("#"))
            if problem:
                raise ValueError(f"lobby {limits.lobby!r}: {problem}")
            self._create_room(limits.lobby.removeprefix("#"))
        self._lobby_key: str | None = (
            None if limits.lobby is None else name_key(limits.lobby.removeprefix("#"))
        )

    # -- observing -------------------------------------------------------------------

    def subscribe(self, callback: Callable[[ChatEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscriber.

        Callbacks run synchronously, after the lines of the event have been sent. An
        exception in one is logged and does not stop the chat or the other callbacks.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def users(self) -> list[UserInfo]:
        """Everyone on the server (bots included), sorted by nickname."""
        return sorted(
            (
                UserInfo(u.nick or "", u.peer, u.charset.name,
                         tuple(r.label for r in u.rooms), u.bot)
                for u in self._users.values()
            ),
            key=lambda info: name_key(info.nick),
        )

    def rooms(self) -> list[RoomInfo]:
        """Every room with its members, sorted by name."""
        return sorted(
            (self._room_info(room) for room in self._rooms.values()),
            key=lambda info: name_key(info.name),
        )

    def room_sizes(self, limit: int | None = None) -> list[tuple[str, int]]:
        """``(name, members)`` of the ``limit`` largest rooms (all by default), largest
        first: cheap, unlike :meth:`rooms`, which lists every member of every room."""
        sizes = ((room.label, room.size) for room in self._rooms.values())
        if limit is None:
            return sorted(sizes, key=lambda item: (-item[1], name_key(item[0])))
        return heapq.nsmallest(limit, sizes, key=lambda item: (-item[1], name_key(item[0])))

    def room_count(self) -> int:
        return len(self._rooms)

    def room(self, name: str) -> RoomInfo | None:
        """One room by name (with or without ``#``, any case), or ``None``."""
        found = self._rooms.get(name_key(name.removeprefix("#")))
        return None if found is None else self._room_info(found)

    def user(self, nick: str) -> User | None:
        """The user called ``nick`` (any case), or ``None``."""
        return self._users.get(name_key(nick))

    @property
    def lobby(self) -> str | None:
        """The label of the room new users join (``#lobby``), if there is one."""
        room = self._rooms.get(self._lobby_key) if self._lobby_key else None
        return None if room is None else room.label

    # -- driving ---------------------------------------------------------------------

    def post(self, room: str, text: str) -> None:
        """Send the server notice ``*** text`` to everyone in ``room``."""
        found = self._find_room(room)
        self._fanout(found.by_encoder, f"*** {sanitize(text)}{EOL}", None)

    def post_all(self, text: str) -> None:
        """Send the server notice ``*** text`` to every user on the server."""
        line = f"*** {sanitize(text)}{EOL}"
        groups: dict[str, dict[User, None]] = {}
        for user in self._users.values():
            groups.setdefault(user.charset.encoder, {})[user] = None
        self._fanout(groups, line, None)

    def add_bot(self, nick: str) -> Bot:
        """A participant driven by your code: it holds ``nick``, can join rooms and talk.

        It receives nothing as bytes; subscribe to events to see what is said (private
        messages to it are :class:`PrivateMessage` events with ``target`` set to its nick).
        """
        user = User(peer="bot", bot=True)
        bot = Bot(self, user)
        user.session = bot
        self.set_nick(user, nick)
        return bot

    def disconnect(self, nick: str, reason: str) -> bool:
        """Ask ``nick``'s session to end with ``reason``; return whether it existed."""
        user = self.user(nick)
        if user is None:
            return False
        if user.session is None:
            self.quit(user, sanitize(reason))
        else:
            user.session.disconnect(sanitize(reason))
        return True

    # -- the operations of a session (connections and bots) --------------------------------

    def guest_nick(self) -> str:
        """A free nickname of the form ``guestN``."""
        while True:
            self._guest_serial += 1
            nick = f"guest{self._guest_serial}"
            if name_key(nick) not in self._users:
                return nick

    def set_nick(self, user: User, nick: str) -> None:
        """Register ``user`` as ``nick``, or rename it; announce a rename to its rooms."""
        problem = nick_problem(nick)
        if problem:
            raise ChatError(f"{nick!r} is not a valid nickname: {problem}")
        key = name_key(nick)
        if key == nick:
            key = nick  # one string object for both when they are equal (memory per user)
        holder = self._users.get(key)
        if holder is not None and holder is not user:
            raise ChatError(f"the nickname {nick} is taken; choose another")
        old = user.nick
        if old is not None and user.key in self._users:
            if old == nick:
                return
            del self._users[user.key]
        user.nick, user.key = nick, key
        self._users[key] = user
        if old is None:
            user.notify(self.welcome.format(nick=nick))
            self._emit(UserRegistered(nick, user.peer))
            return
        self._notify_neighbours(user, f"*** {old} is now known as {nick}{EOL}")
        user.notify(f"You are now known as {nick}.")
        self._emit(UserRenamed(old, nick))

    def set_charset(self, user: User, charset: Charset) -> None:
        """Switch ``user`` to ``charset`` (for its input and its output)."""
        for room in user.rooms:
            room.remove(user)
        user.charset = charset
        for room in user.rooms:
            room.add(user)

    def join(self, user: User, name: str) -> JoinResult:
        """Put ``user`` in room ``name`` (created if needed) and make it its active room."""
        self._require_registered(user)
        bare = name.removeprefix("#")
        problem = room_problem(bare)
        if problem:
            raise ChatError(f"{name!r} is not a valid room name: {problem}")
        room = self._rooms.get(name_key(bare))
        if room is not None and room in user.rooms:
            user.active = room
            user.notify(f"You now talk in {room.label}.")
            return JoinResult(room.label, room.size, (), already_member=True)
        if len(user.rooms) >= self.limits.max_rooms_per_user:
            raise ChatError(
                f"you are in {len(user.rooms)} rooms, the most allowed: /part one first"
            )
        if room is None:
            if len(self._rooms) >= self.limits.max_rooms:
                raise ChatError("the server has as many rooms as it allows: join an existing one")
            room = self._create_room(bare)
        if room.size < self._presence_limit:
            self._fanout(room.by_encoder, f"*** {user.nick} joined {room.label}{EOL}", user)
        room.add(user)
        user.rooms = (*user.rooms, room)
        user.active = room
        history = tuple(self._format_history(room))
        self._tell_joiner(user, room, history)
        self._emit(UserJoined(room.label, user.nick or ""))
        return JoinResult(room.label, room.size, history)

    def part(self, user: User, name: str | None = None, reason: str = "") -> str:
        """Take ``user`` out of room ``name`` (its active room by default); return the label."""
        self._require_registered(user)
        reason = sanitize(reason)
        room = user.active if name is None else self._rooms.get(name_key(name.removeprefix("#")))
        if room is None or room not in user.rooms:
            raise ChatError(
                "you are not in any room" if name is None else f"you are not in {name}"
            )
        self._leave_room(user, room, reason)
        suffix = f" ({reason})" if reason else ""
        if room.size + 1 <= self._presence_limit:
            self._fanout(room.by_encoder, f"*** {user.nick} left {room.label}{suffix}{EOL}", None)
        where = f"you now talk in {user.active.label}" if user.active else "you are in no room"
        user.notify(f"You left {room.label}; {where}.")
        self._emit(UserLeft(room.label, user.nick or "", reason))
        return room.label

    def say(self, user: User, text: str, room: str | None = None, action: bool = False) -> None:
        """``user`` says ``text`` in ``room`` (its active room by default); ``action``: /me.

        Terminal control is removed from ``text`` (and from every text the registry takes).
        """
        self.say_many(user, [text], room, action)

    def say_many(
        self, user: User, texts: list[str], room: str | None = None, action: bool = False
    ) -> None:
        """:meth:`say` for several lines at once: one fan-out carries them all."""
        texts = [sanitize(text) for text in texts]  # a no-op scan for what a connection sends
        if room is None:
            target = user.active
            if target is None:
                raise ChatError("you are not in a room: /join one (/rooms lists them)")
        else:
            target = self._rooms.get(name_key(room.removeprefix("#")))
            if target is None or target not in user.rooms:
                raise ChatError(f"you are not in {room}")
        prefix = f"* {user.nick} " if action else f"<{user.nick}> "
        label = target.label + " "
        if len(texts) == 1:
            bodies = [prefix + texts[0]]
            self._fanout(target.by_encoder, f"{label}{bodies[0]}{EOL}", user)
        else:
            bodies = [prefix + text for text in texts]
            self._fanout(target.by_encoder, "".join(f"{label}{b}{EOL}" for b in bodies), user)
        if target.history.maxlen:
            now = self.clock()
            target.history.extend((now, body) for body in bodies)
        if self._subscribers:
            nick = user.nick or ""
            for text in texts:
                self._emit(RoomMessage(target.label, nick, text, action))

    def message(self, user: User, nick: str, text: str) -> str:
        """``user`` sends ``text`` to ``nick`` only; returns the recipient's nickname."""
        self._require_registered(user)
        text = sanitize(text)
        target = self._users.get(name_key(nick))
        if target is None:
            raise ChatError(f"there is no one called {nick}")
        target.send(target.charset.encode(f"*{user.nick}* {text}{EOL}"))
        user.send(user.charset.encode(f"-> *{target.nick}* {text}{EOL}"))
        self._emit(PrivateMessage(user.nick or "", target.nick or "", text))
        return target.nick or ""

    def quit(self, user: User, reason: str) -> None:
        """Take ``user`` off the server: out of its rooms (announced), nickname freed.

        Safe to call more than once. During a fan-out it waits for the fan-out to end.
        """
        if self._fanning_out:
            if user not in self._deferred_users:
                self._deferred_users.add(user)
                self._deferred.append((user, reason))
            return
        if user.nick is None or self._users.get(user.key) is not user:
            return
        reason = sanitize(reason)
        rooms = list(user.rooms)
        line = f"*** {user.nick} quit ({reason}){EOL}" if reason else f"*** {user.nick} quit{EOL}"
        self._notify_neighbours(user, line)
        for room in rooms:
            self._leave_room(user, room, reason)
        del self._users[user.key]
        nick = user.nick
        for room in rooms:
            self._emit(UserLeft(room.label, nick, reason))
        self._emit(UserQuit(nick, reason))

    # -- internals -------------------------------------------------------------------

    def _fanout(self, groups: dict[str, dict[User, None]], line: str, exclude: User | None) -> None:
        self._fanning_out += 1
        try:
            for encoder, users in groups.items():
                data = line.encode(encoder, "replace")
                for user in users:
                    if user is not exclude:
                        try:
                            user.send(data)
                        except Exception:
                            self.log.failure("chat: sending to {user!r} failed", user=user)
        finally:
            self._fanning_out -= 1
        if self._deferred and not self._fanning_out and not self._running_deferred:
            self._run_deferred()

    def _run_deferred(self) -> None:
        # A loop, not recursion: a deferred quit fans out its notice, which may overflow
        # another user's queue and defer another quit, which this loop then runs.
        self._running_deferred = True
        try:
            while self._deferred:
                user, reason = self._deferred.popleft()
                self._deferred_users.discard(user)
                self.quit(user, reason)
        finally:
            self._running_deferred = False

    def _notify_neighbours(self, user: User, line: str) -> None:
        """Send ``line`` once to everyone sharing an announcing room with ``user``."""
        rooms = [room for room in user.rooms if room.size <= self._presence_limit]
        if len(rooms) == 1:
            self._fanout(rooms[0].by_encoder, line, user)
        elif rooms:
            merged: dict[str, dict[User, None]] = {}
            for room in rooms:
                for encoder, members in room.by_encoder.items():
                    merged.setdefault(encoder, {}).update(members)
            self._fanout(merged, line, user)

    def _leave_room(self, user: User, room: Room, reason: str) -> None:
        room.remove(user)
        user.rooms = tuple(r for r in user.rooms if r is not room)
        if user.active is room:
            user.active = user.rooms[-1] if user.rooms else None
        if room.size == 0 and room.key != self._lobby_key:
            del self._rooms[room.key]

    def _create_room(self, name: str) -> Room:
        room = Room(name, self.limits.history_lines)
        self._rooms[room.key] = room
        return room

    def _find_room(self, name: str) -> Room:
        room = self._rooms.get(name_key(name.removeprefix("#")))
        if room is None:
            raise ChatError(f"there is no room {name}")
        return room

    def _tell_joiner(self, user: User, room: Room, history: tuple[str, ...]) -> None:
        others = room.size - 1
        people = "nobody else" if not others else f"{others} other{'s' if others > 1 else ''}"
        user.notify(f"You joined {room.label} ({people} here). Your lines go there.")
        if history:
            user.notify(f"Recent messages in {room.label} (UTC):")
            encode = user.charset.encode
            user.send(b"".join(encode(line + EOL) for line in history))
            user.notify("End of recent messages.")

    def _format_history(self, room: Room) -> Iterable[str]:
        for stamp, body in room.history:
            clock = time.strftime("%H:%M", time.gmtime(stamp))
            yield f"{room.label} [{clock}] {body}"

    def _require_registered(self, user: User) -> None:
        if user.nick is None or self._users.get(user.key) is not user:
            raise ChatError("choose a nickname first: /nick NAME")

    def _room_info(self, room: Room) -> RoomInfo:
        nicks = sorted((u.nick or "" for u in room.members()), key=name_key)
        return RoomInfo(room.label, tuple(nicks))

    def _emit(self, event: ChatEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self.log.failure("chat: event subscriber {callback!r} failed", callback=callback)


class Bot:
    """An in-process participant (see :meth:`ChatRegistry.add_bot`)."""

    def __init__(self, registry: ChatRegistry, user: User) -> None:
        self.registry = registry
        self.user = user

    @property
    def nick(self) -> str:
        return self.user.nick or ""

    @property
    def rooms(self) -> list[str]:
        return [room.label for room in self.user.rooms]

    def join(self, room: str) -> None:
        """Join ``room`` (created if needed)."""
        self.registry.join(self.user, room)

    def part(self, room: str, reason: str = "") -> None:
        self.registry.part(self.user, room, reason)

    def say(self, room: str, text: str) -> None:
        """Say ``text`` in ``room`` (joined before). Terminal control is removed."""
        self.registry.say(self.user, text, room)

    def act(self, room: str, text: str) -> None:
        """``/me text`` in ``room``."""
        self.registry.say(self.user, text, room, action=True)

    def message(self, nick: str, text: str) -> None:
        """A private message to ``nick``."""
        self.registry.message(self.user, nick, text)

    def rename(self, nick: str) -> None:
        self.registry.set_nick(self.user, nick)

    def quit(self, reason: str = "") -> None:
        """Leave the server; the nickname becomes free."""
        self.registry.quit(self.user, reason)

    def disconnect(self, reason: str) -> None:
        """What :meth:`ChatRegistry.disconnect` calls: the bot quits."""
        self.quit(reason)
