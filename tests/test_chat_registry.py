"""The chat registry on its own: users, rooms, history, fan-out, events and bots."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netsvc.chat.limits import ChatLimits
from netsvc.chat.registry import (
    ChatError,
    ChatEvent,
    ChatRegistry,
    PrivateMessage,
    RoomMessage,
    User,
    UserJoined,
    UserLeft,
    UserQuit,
    UserRegistered,
    UserRenamed,
)
from netsvc.chat.text import lookup_charset


class Inbox:
    """A user's received bytes, decoded in its charset."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.data.append(data)

    def lines(self, encoding: str = "utf-8") -> list[str]:
        text = b"".join(self.data).decode(encoding)
        self.data.clear()
        return text.split("\r\n")[:-1]


def person(registry: ChatRegistry, nick: str, charset: str = "utf-8") -> tuple[User, Inbox]:
    inbox = Inbox()
    user = User(inbox, lookup_charset(charset), peer="192.0.2.1")
    registry.set_nick(user, nick)
    return user, inbox


def registry_with(*nicks: str, **limits: object) -> tuple[ChatRegistry, list[tuple[User, Inbox]]]:
    registry = ChatRegistry(ChatLimits(**limits), clock=lambda: 3600.0)  # type: ignore[arg-type]
    people = [person(registry, nick) for nick in nicks]
    for user, _ in people:
        registry.join(user, "lobby")
    for _, inbox in people:
        inbox.lines()
    return registry, people


def test_nicknames_are_unique_case_insensitively() -> None:
    registry = ChatRegistry()
    person(registry, "Alice")
    with pytest.raises(ChatError, match="taken"):
        person(registry, "aLiCe")
    with pytest.raises(ChatError, match="not a valid nickname"):
        person(registry, "al ice")
    assert [u.nick for u in registry.users()] == ["Alice"]


def test_rename_frees_the_old_name_and_tells_the_room() -> None:
    registry, [(alice, _), (_bob, bob_inbox)] = registry_with("alice", "bob")
    registry.set_nick(alice, "Alicia")
    assert bob_inbox.lines() == ["*** alice is now known as Alicia"]
    registry.set_nick(alice, "ALICIA")  # only the case changes: allowed
    person(registry, "alice")  # the old name is free
    assert registry.user("alicia") is alice


def test_guest_names_skip_taken_ones() -> None:
    registry = ChatRegistry()
    person(registry, "guest1")
    assert registry.guest_nick() == "guest2"


def test_messages_reach_the_room_but_not_the_sender() -> None:
    registry, [(alice, alice_inbox), (_, bob_inbox), (_, carol_inbox)] = registry_with(
        "alice", "bob", "carol"
    )
    registry.say(alice, "hello")
    registry.say(alice, "waves", action=True)
    assert bob_inbox.lines() == carol_inbox.lines() == ["#lobby <alice> hello",
                                                        "#lobby * alice waves"]
    assert alice_inbox.lines() == []


def test_a_message_is_encoded_once_per_charset_and_sent_once_per_recipient() -> None:
    registry, people = registry_with("alice")
    sent: list[tuple[str, bytes]] = []
    for index, charset in enumerate(["utf-8", "gb2312", "utf-8", "gbk", "latin-1"]):
        user = User(lambda data, i=index: sent.append((str(i), data)), lookup_charset(charset))
        registry.set_nick(user, f"u{index}")
        registry.join(user, "lobby")
    sent.clear()
    registry.say(people[0][0], "你好")
    assert len(sent) == 5
    by_recipient = dict(sent)
    assert by_recipient["0"] == by_recipient["2"] == "#lobby <alice> 你好\r\n".encode()
    assert by_recipient["1"] == by_recipient["3"] == "#lobby <alice> 你好\r\n".encode("gbk")
    assert by_recipient["4"] == b"#lobby <alice> ??\r\n"
    assert by_recipient["0"] is by_recipient["2"]  # the very same bytes object


def test_say_many_is_one_write_per_recipient() -> None:
    registry, [(alice, _), (_, bob_inbox)] = registry_with("alice", "bob")
    registry.say_many(alice, ["one", "two", "three"])
    assert len(bob_inbox.data) == 1
    assert bob_inbox.lines() == ["#lobby <alice> one", "#lobby <alice> two", "#lobby <alice> three"]


def test_join_and_part_notices_and_active_room() -> None:
    registry, [(alice, alice_inbox), (bob, _bob_inbox)] = registry_with("alice", "bob")
    result = registry.join(alice, "#Rust")
    assert (result.room, result.members) == ("#Rust", 1)
    assert alice_inbox.lines() == ["*** You joined #Rust (nobody else here). Your lines go there."]
    registry.join(bob, "rust")
    assert alice_inbox.lines() == ["*** bob joined #Rust"]
    registry.say(bob, "in rust")
    assert alice_inbox.lines() == ["#Rust <bob> in rust"]
    registry.part(bob, "#rust", "bye")
    assert alice_inbox.lines() == ["*** bob left #Rust (bye)"]
    assert bob.active is not None and bob.active.label == "#lobby"
    registry.part(bob)
    assert bob.active is None
    with pytest.raises(ChatError, match="not in a room"):
        registry.say(bob, "nowhere")


def test_empty_rooms_vanish_but_the_lobby_stays() -> None:
    registry, [(alice, _)] = registry_with("alice")
    registry.join(alice, "temp")
    registry.part(alice, "temp")
    registry.part(alice, "lobby")
    assert [room.name for room in registry.rooms()] == ["#lobby"]


def test_history_is_bounded_and_replayed_on_join() -> None:
    registry, [(alice, _)] = registry_with("alice", history_lines=3)
    for number in range(5):
        registry.say(alice, f"message {number}")
    bob, _ = person(registry, "bob")
    result = registry.join(bob, "lobby")
    assert result.history == (
        "#lobby [01:00] <alice> message 2",
        "#lobby [01:00] <alice> message 3",
        "#lobby [01:00] <alice> message 4",
    )


def test_no_history_when_switched_off() -> None:
    registry, [(alice, _)] = registry_with("alice", history_lines=0)
    registry.say(alice, "gone")
    bob, _ = person(registry, "bob")
    assert registry.join(bob, "lobby").history == ()


def test_big_rooms_do_not_announce_presence() -> None:
    registry, people = registry_with("a", "b", "c", presence_limit=3)
    newcomer, _ = person(registry, "d")
    registry.join(newcomer, "lobby")  # the room would have 4 members: no announcement
    assert all(inbox.lines() == [] for _, inbox in people)
    registry.part(newcomer)  # back to 3 after: announced? it had 4 before: no
    assert all(inbox.lines() == [] for _, inbox in people)
    registry.quit(people[0][0], "bye")  # 3 members: announced to the 2 others
    assert people[1][1].lines() == ["*** a quit (bye)"]


def test_room_limits() -> None:
    registry, [(alice, _)] = registry_with("alice", max_rooms=3, max_rooms_per_user=2)
    registry.join(alice, "one")
    with pytest.raises(ChatError, match="the most allowed"):
        registry.join(alice, "two")
    bob, _ = person(registry, "bob")
    registry.join(bob, "two")
    with pytest.raises(ChatError, match="as many rooms"):
        registry.join(bob, "three")
    with pytest.raises(ChatError, match="not a valid room"):
        registry.join(bob, "bad room")


def test_private_messages() -> None:
    registry, [(alice, alice_inbox), (_, bob_inbox)] = registry_with("alice", "bob")
    assert registry.message(alice, "BOB", "psst") == "bob"
    assert bob_inbox.lines() == ["*alice* psst"]
    assert alice_inbox.lines() == ["-> *bob* psst"]
    with pytest.raises(ChatError, match="no one called"):
        registry.message(alice, "nobody", "hi")


def test_quit_is_announced_once_per_neighbour_and_frees_the_nick() -> None:
    registry, [(alice, _), (bob, bob_inbox)] = registry_with("alice", "bob")
    registry.join(alice, "x")
    registry.join(bob, "x")
    bob_inbox.lines()
    registry.quit(alice, "gone fishing")
    assert bob_inbox.lines() == ["*** alice quit (gone fishing)"]
    registry.quit(alice, "again")  # idempotent
    assert registry.user("alice") is None
    assert registry.room("x") == registry.room("#X")
    assert registry.room("x").members == ("bob",)  # type: ignore[union-attr]


def test_events_in_order() -> None:
    registry = ChatRegistry(clock=lambda: 0.0)
    events: list[ChatEvent] = []
    registry.subscribe(events.append)
    alice, _ = person(registry, "alice")
    bob, _ = person(registry, "bob")
    registry.join(alice, "lobby")
    registry.say(alice, "hi")
    registry.say(alice, "dances", action=True)
    registry.message(alice, "bob", "secret")
    registry.set_nick(alice, "al")
    registry.quit(alice, "bye")
    assert events == [
        UserRegistered("alice", "192.0.2.1"),
        UserRegistered("bob", "192.0.2.1"),
        UserJoined("#lobby", "alice"),
        RoomMessage("#lobby", "alice", "hi"),
        RoomMessage("#lobby", "alice", "dances", action=True),
        PrivateMessage("alice", "bob", "secret"),
        UserRenamed("alice", "al"),
        UserLeft("#lobby", "al", "bye"),
        UserQuit("al", "bye"),
    ]
    del bob


def test_a_failing_subscriber_breaks_nothing() -> None:
    registry, [(alice, _), (_, bob_inbox)] = registry_with("alice", "bob")
    seen: list[ChatEvent] = []

    def broken(event: ChatEvent) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    unsubscribe = registry.subscribe(seen.append)
    registry.say(alice, "still works")
    assert bob_inbox.lines() == ["#lobby <alice> still works"]
    assert seen == [RoomMessage("#lobby", "alice", "still works")]
    unsubscribe()
    registry.say(alice, "unseen")
    assert len(seen) == 1


def test_a_send_that_raises_does_not_stop_the_fan_out() -> None:
    registry, [(alice, _), (_, bob_inbox)] = registry_with("alice", "bob")

    broken_now = False

    def broken(data: bytes) -> None:
        if broken_now:
            raise OSError("broken pipe")

    mallory = User(broken)
    registry.set_nick(mallory, "mallory")
    registry.join(mallory, "lobby")
    bob_inbox.lines()
    broken_now = True
    registry.say(alice, "after the broken one")
    assert bob_inbox.lines() == ["#lobby <alice> after the broken one"]


def test_quitting_during_a_fan_out_waits_until_it_ends() -> None:
    """A recipient that leaves mid-fan-out (SendQ overflow) does not reorder anything."""
    registry, people = registry_with("alice", "bob", "carol", "dave")
    order: list[str] = []

    def leaving(data: bytes) -> None:
        if not order:
            return  # not yet: still joining
        order.append("mallory got " + data.decode().strip())
        registry.quit(mallory, "SendQ exceeded")
        order.append("mallory asked to quit")

    mallory = User(leaving)
    registry.set_nick(mallory, "mallory")
    registry.join(mallory, "lobby")
    for _, inbox in people:
        inbox.lines()
    order.append("start")
    registry.say(people[0][0], "hello")
    assert order[1:3] == ["mallory got #lobby <alice> hello", "mallory asked to quit"]
    for _, inbox in people[1:]:
        assert inbox.lines() == ["#lobby <alice> hello", "*** mallory quit (SendQ exceeded)"]
    assert registry.user("mallory") is None


def test_chained_quits_during_fan_outs_do_not_recurse() -> None:
    """Every recipient overflowing on every line: no recursion, everyone leaves."""
    registry = ChatRegistry(ChatLimits(presence_limit=None))
    users: list[User] = []
    armed = []

    def make_send(index: int) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            if armed:  # overflowing on every line, as a connection would not (worst case)
                registry.quit(users[index], "SendQ exceeded")

        return send

    for index in range(2000):  # deeper than Python's recursion limit if it recursed
        user = User(make_send(index))
        registry.set_nick(user, f"u{index}")
        registry.join(user, "lobby")
        users.append(user)
    speaker, _ = person(registry, "speaker")
    registry.join(speaker, "lobby")
    armed.append(True)
    registry.say(speaker, "boom")
    assert [u.nick for u in registry.users()] == ["speaker"]


def test_bots_hold_a_nick_join_talk_and_get_private_messages() -> None:
    registry, [(alice, alice_inbox)] = registry_with("alice")
    events: list[ChatEvent] = []
    registry.subscribe(events.append)
    bot = registry.add_bot("helper")
    with pytest.raises(ChatError, match="taken"):
        person(registry, "HELPER")
    bot.join("lobby")
    bot.say("lobby", "hello \x1b[31mhumans")
    bot.act("lobby", "beeps")
    bot.message("alice", "just you")
    assert alice_inbox.lines() == [
        "*** helper joined #lobby",
        "#lobby <helper> hello humans",
        "#lobby * helper beeps",
        "*helper* just you",
    ]
    registry.message(alice, "helper", "hi bot")
    assert alice_inbox.lines() == ["-> *helper* hi bot"]
    assert PrivateMessage("alice", "helper", "hi bot") in events
    assert [(u.nick, u.bot) for u in registry.users()] == [("alice", False), ("helper", True)]
    assert registry.disconnect("helper", "maintenance")
    assert alice_inbox.lines() == ["*** helper quit (maintenance)"]
    assert not registry.disconnect("helper", "again")


def test_server_notices() -> None:
    registry, [(alice, alice_inbox), (bob, bob_inbox)] = registry_with("alice", "bob")
    registry.join(alice, "ops")
    alice_inbox.lines()
    registry.post("#ops", "maintenance at \x1b[5m noon")
    assert alice_inbox.lines() == ["*** maintenance at  noon"]
    assert bob_inbox.lines() == []
    registry.post_all("restarting")
    assert alice_inbox.lines() == bob_inbox.lines() == ["*** restarting"]
    with pytest.raises(ChatError):
        registry.post("#nowhere", "x")
    del bob


def test_users_and_rooms_listing() -> None:
    registry, _ = registry_with("bob", "Alice")
    assert [(u.nick, u.rooms) for u in registry.users()] == [
        ("Alice", ("#lobby",)), ("bob", ("#lobby",))
    ]
    assert registry.rooms()[0].members == ("Alice", "bob")
    registry.join(registry.user("bob"), "small")  # type: ignore[arg-type]
    assert registry.room_sizes() == [("#lobby", 2), ("#small", 1)]
    assert registry.room_sizes(1) == [("#lobby", 2)] and registry.room_count() == 2
    assert registry.lobby == "#lobby"
    assert ChatRegistry(ChatLimits(lobby=None)).lobby is None


def test_charset_switch_moves_the_user_between_encodings() -> None:
    registry, [(alice, _), (bob, bob_inbox)] = registry_with("alice", "bob")
    registry.set_charset(bob, lookup_charset("gb2312"))
    registry.say(alice, "你好")
    assert bob_inbox.lines("gbk") == ["#lobby <alice> 你好"]


def test_the_registry_sanitizes_whatever_the_caller_passes() -> None:
    registry, [(alice, _), (bob, bob_inbox)] = registry_with("alice", "bob")
    registry.say(alice, "\x1b[2Jwiped?")
    registry.message(alice, "bob", "\x1b]0;title\x07hi")
    registry.part(alice, None, "\x1b[31mred reason")
    registry.quit(alice, "bye\x07\x07")
    assert bob_inbox.lines() == [
        "#lobby <alice> wiped?", "*alice* hi", "*** alice left #lobby (red reason)",
    ]
    del bob
