"""The chat protocol in memory: StringTransport connections and a task.Clock."""

from __future__ import annotations

import itertools
import re

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from netsvc.chat.limits import ChatLimits
from netsvc.chat.protocol import HELP, ChatProtocol
from tests.test_chat_helpers import TEST_LIMITS, BufferTransport, Peer, logged_in, make_server


def limits(**changes: object) -> ChatLimits:
    return attrs.evolve(TEST_LIMITS, **changes)  # type: ignore[arg-type]


# -- connecting and choosing a nickname ------------------------------------------------


def test_banner_prompt_and_registration() -> None:
    server = make_server()
    alice = Peer(server)
    assert alice.lines() == [
        "*** netsvc chat. Type /help for the commands.",
        "*** Your charset is utf-8; /charset NAME changes it.",
        "*** Choose a nickname (or press Enter for a guest name):",
    ]
    alice.line("alice")
    assert alice.lines() == [
        "*** Welcome, alice! /help lists the commands.",
        "*** You joined #lobby (nobody else here). Your lines go there.",
    ]
    bob = Peer(server)
    bob.output()
    bob.line("bob")
    assert bob.lines()[1] == "*** You joined #lobby (1 other here). Your lines go there."
    assert alice.lines() == ["*** bob joined #lobby"]


def test_enter_gives_a_guest_name() -> None:
    server = make_server()
    guest = Peer(server)
    guest.output()
    guest.line("")
    assert guest.lines()[0] == "*** Welcome, guest1! /help lists the commands."


def test_invalid_and_taken_nicknames_prompt_again() -> None:
    server = make_server()
    logged_in(server, "alice")
    bob = Peer(server)
    bob.output()
    bob.line("hello everyone")
    assert bob.lines() == [
        "*** 'hello everyone' is not a valid nickname: a nickname uses letters, digits, _ and -"
        " only, and starts with a letter or _. Choose a nickname (or press Enter for a guest"
        " name):"
    ]
    bob.line("ALICE")
    assert bob.lines() == [
        "*** the nickname ALICE is taken; choose another. Choose a nickname (or press Enter"
        " for a guest name):"
    ]
    bob.line("bob")
    assert bob.user.nick == "bob"


def test_commands_before_registration() -> None:
    server = make_server()
    peer = Peer(server)
    peer.output()
    peer.line("/charset gb2312")
    assert peer.lines("gbk") == ["*** Your charset is now gbk."]
    peer.send("李雷\r\n".encode("gbk"))
    assert peer.user.nick == "李雷"
    other = Peer(server)
    other.output()
    other.line("/join rust")  # any other command: become a guest, then do it
    lines = other.lines()
    assert lines[0] == "*** Welcome, guest1! /help lists the commands."
    assert lines[-1] == "*** You joined #rust (nobody else here). Your lines go there."


# -- framing ---------------------------------------------------------------------------


def test_lf_crlf_and_split_lines() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"one\ntwo\r\nthr")
    bob.send(b"ee\r")
    bob.send(b"\n")
    for byte in b"four\n":
        bob.send(bytes([byte]))
    assert alice.lines() == ["#lobby <bob> one", "#lobby <bob> two", "#lobby <bob> three",
                             "#lobby <bob> four"]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1,
                           max_size=40).filter(lambda t: not t.isspace() and t[0] != "/"),
                   max_size=20),
    eols=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=20, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_framing_does_not_depend_on_how_the_bytes_are_cut(
    lines: list[str], eols: list[bytes], cuts: list[int]
) -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    stream = b"".join(line.encode() + eol for line, eol in zip(lines, eols, strict=False))
    pieces = sorted({0, len(stream), *[cut for cut in cuts if cut < len(stream)]})
    for start, end in itertools.pairwise(pieces):
        bob.send(stream[start:end])
    assert alice.lines() == [f"#lobby <bob> {line}" for line in lines]


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20),
       charset=st.sampled_from(["utf-8", "gb2312", "latin-1", "shift_jis"]))
def test_arbitrary_bytes_never_break_the_connection(chunks: list[bytes], charset: str) -> None:
    server = make_server(limits(max_line_bytes=100))
    alice = logged_in(server, "alice")
    mallory = logged_in(server, "mallory")
    mallory.line(f"/charset {charset}")
    # Everything but the commands that end or rename the session, wherever the cuts fall.
    stream = re.sub(rb"/(quit|exit|nick)", b"", b"".join(chunks))
    position = 0
    for chunk in chunks:
        mallory.send(stream[position:position + len(chunk)])
        position += len(chunk)
    mallory.send(b"\n/who\n")
    assert mallory.output()  # still answering
    assert "\x1b" not in alice.output().decode()
    assert not mallory.transport.disconnecting


def test_blank_lines_are_ignored_and_double_slash_escapes() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"\n   \r\n//etc/passwd is a path\n")
    assert alice.lines() == ["#lobby <bob> /etc/passwd is a path"]


def test_over_long_line_gets_an_error_and_the_connection_stays() -> None:
    server = make_server(limits(max_line_bytes=32))
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"x" * 40 + b"\nshort\n")
    assert bob.lines() == ["*** Line too long: 40 bytes, the most is 32. Not sent."]
    assert alice.lines() == ["#lobby <bob> short"]
    # A long line arriving in pieces: one error, the rest discarded up to its end.
    bob.send(b"y" * 20)
    bob.send(b"y" * 20)
    bob.send(b"y" * 100)
    bob.send(b"yyy\nafter\n")
    assert bob.lines() == ["*** Line too long: the most is 32 bytes. Not sent."]
    assert alice.lines() == ["#lobby <bob> after"]
    assert not bob.transport.disconnecting


def test_exactly_max_line_bytes_passes_with_crlf() -> None:
    server = make_server(limits(max_line_bytes=32))
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"z" * 32 + b"\r\n")
    assert alice.lines() == ["#lobby <bob> " + "z" * 32]


# -- commands --------------------------------------------------------------------------


def test_help_and_unknown_command() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    alice.line("/help")
    assert alice.lines() == [f"*** {line}" for line in HELP]
    alice.line("/frobnicate now")
    assert alice.lines() == ["*** Unknown command /frobnicate. /help lists the commands."]


def test_join_history_part_rooms_who() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.line("/join rust")
    alice.line("first")
    alice.line("/me waves")
    alice.output()
    bob.output()
    bob.line("/join #RUST")
    lines = bob.lines()
    assert lines[0] == "*** You joined #rust (1 other here). Your lines go there."
    assert lines[1] == "*** Recent messages in #rust (UTC):"
    assert lines[2].endswith("<alice> first") and lines[3].endswith("* alice waves")
    assert lines[4] == "*** End of recent messages."
    assert alice.lines() == ["*** bob joined #rust"]
    bob.line("/who")
    assert bob.lines() == ["*** #rust (2):", "***   alice bob"]
    bob.line("/rooms")
    assert bob.lines() == ["*** 2 rooms:", "***   #lobby (2)", "***   #rust (2)"]
    for number in range(120):
        alice.line(f"/join r{number:03}")
        alice.line("/part")
    for number in range(101):
        server.registry.join(server.registry.add_bot(f"b{number}").user, f"r{number:03}")
    alice.output()
    bob.line("/rooms")
    listing = bob.lines()
    assert listing[0] == "*** 103 rooms:" and listing[1] == "***   #lobby (2)"
    assert listing[-1] == "***   ... and 3 smaller rooms" and len(listing) == 102
    bob.line("/join lobby")
    assert bob.lines() == ["*** You now talk in #lobby."]
    bob.line("/part rust see you")
    assert bob.lines() == ["*** You left #rust; you now talk in #lobby."]
    assert alice.lines() == ["*** bob left #rust (see you)"]
    bob.line("/part")
    assert bob.lines() == ["*** You left #lobby; you are in no room."]
    bob.line("anyone?")
    assert bob.lines() == ["*** you are not in a room: /join one (/rooms lists them)"]
    bob.line("/who nowhere")
    assert bob.lines() == ["*** There is no room nowhere."]
    bob.line("/join")
    assert bob.lines() == ["*** Usage: /join ROOM"]


def test_private_message_and_action() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.line("/msg ALICE meet me at noon")
    assert bob.lines() == ["-> *alice* meet me at noon"]
    assert alice.lines() == ["*bob* meet me at noon"]
    bob.line("/msg nobody hi")
    assert bob.lines() == ["*** there is no one called nobody"]
    bob.line("/msg alice")
    assert bob.lines() == ["*** Usage: /msg NICK TEXT"]
    bob.line("/me  dances")
    assert alice.lines() == ["#lobby * bob dances"]


def test_rename() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.line("/nick")
    assert bob.lines() == ["*** You are bob."]
    bob.line("/nick Robert")
    assert bob.lines() == ["*** You are now known as Robert."]
    assert alice.lines() == ["*** bob is now known as Robert"]
    bob.line("/nick alice")
    assert bob.lines() == ["*** the nickname alice is taken; choose another"]


def test_quit_with_reason() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.line("/quit time for bed")
    assert bob.lines() == ["*** Goodbye."]
    assert bob.transport.disconnecting and bob.transport.producer is None
    assert alice.lines() == ["*** bob quit (time for bed)"]
    bob.line("ignored after quit")
    bob.close()
    assert alice.lines() == []
    assert server.connections == {alice.protocol}


def test_lines_after_quit_in_the_same_chunk_are_ignored() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"last words\n/quit\nnever said\n")
    assert alice.lines() == ["#lobby <bob> last words", "*** bob quit (quit)"]


# -- charsets and sanitising -------------------------------------------------------------


def test_gb2312_and_utf8_users_talk() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    li = Peer(server, transport=StringTransport())
    li.output()
    li.line("/charset gb2312")
    li.send("lilei\n".encode("gbk"))
    li.output()
    alice.output()
    li.send("你好, 镕\n".encode("gbk"))
    assert alice.lines() == ["#lobby <lilei> 你好, 镕"]
    alice.line("欢迎")
    assert li.lines("gbk") == ["#lobby <alice> 欢迎"]
    li.line("/charset")
    assert li.lines("gbk") == ["*** Your charset is gbk."]
    li.line("/charset utf-16")
    assert "not ASCII-compatible" in li.lines("gbk")[0]


def test_undecodable_bytes_never_crash() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"bad \xff\xfe\xc0 bytes\n")
    assert alice.lines() == ["#lobby <bob> bad \ufffd\ufffd\ufffd bytes"]
    garbled = Peer(server)
    garbled.output()
    garbled.send(b"\xff\xfe\n")
    assert "not a valid nickname" in garbled.lines()[0]


def test_per_listener_default_charset() -> None:
    server = make_server()
    factory = server.factory("gb2312")
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert "Your charset is gbk" in transport.value().decode("gbk")


def test_terminal_control_is_neutralised_before_others_see_it() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"\x1b[2J\x1b[Hfake\x1b]0;pwned\x07 \x08\x08\x07\xc2\x9b1m line\x1b[0m\n")
    bob.send(b"/me \x1b[5mblinks\n")
    bob.send(b"/msg alice \x1b]52;c;ZXZpbA==\x07copy\n")
    assert alice.lines() == ["#lobby <bob> fake  line", "#lobby * bob blinks", "*bob* copy"]
    assert "\x1b" not in "".join(alice.lines())


# -- flood control ---------------------------------------------------------------------


def test_flood_control_pauses_reading_warns_once_and_resumes() -> None:
    clock = Clock()
    server = make_server(
        limits(flood_lines_per_second=2.0, flood_line_burst=3.0, flood_disconnect_after=None),
        clock,
    )
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")  # the nickname is not charged: the burst is intact
    alice.output()
    bob.send(b"".join(b"line %d\n" % n for n in range(8)))
    assert alice.lines() == ["#lobby <bob> line 0", "#lobby <bob> line 1", "#lobby <bob> line 2"]
    assert bob.lines() == ["*** Flood control: you are sending too fast, your lines are delayed."]
    assert bob.transport.producerState == "paused"
    clock.advance(0.5)
    assert alice.lines() == ["#lobby <bob> line 3"]
    clock.advance(0.5)
    clock.advance(0.5)
    assert alice.lines() == ["#lobby <bob> line 4", "#lobby <bob> line 5"]
    assert bob.lines() == []  # warned once per episode
    for _ in range(4):
        clock.advance(0.5)
    assert alice.lines() == ["#lobby <bob> line 6", "#lobby <bob> line 7"]
    assert bob.transport.producerState == "producing"
    assert not clock.getDelayedCalls()


def test_flood_control_on_bytes() -> None:
    clock = Clock()
    server = make_server(
        limits(max_line_bytes=100, flood_bytes_per_second=100.0, flood_byte_burst=300.0),
        clock,
    )
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    line = b"b" * 99 + b"\n"
    bob.send(line * 5)
    assert len(alice.lines()) == 3
    assert bob.transport.producerState == "paused"
    clock.advance(1.0)
    assert len(alice.lines()) == 1
    clock.advance(1.0)
    assert len(alice.lines()) == 1
    assert bob.transport.producerState == "producing"


def test_input_that_arrives_while_held_waits_its_turn() -> None:
    clock = Clock()
    server = make_server(
        limits(flood_lines_per_second=10.0, flood_line_burst=2.0, flood_disconnect_after=None),
        clock,
    )
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"1\n2\n3\n4")
    bob.send(b"\n5\n6")  # a transport may deliver after pauseProducing (TLS does)
    bob.send(b"\n")
    for _ in range(20):
        clock.advance(0.1)
    assert [line.rsplit(" ", 1)[1] for line in alice.lines()] == ["1", "2", "3", "4", "5", "6"]


def test_too_much_input_while_held_disconnects() -> None:
    server = make_server(limits(flood_lines_per_second=1.0, flood_line_burst=1.0,
                                max_line_bytes=100, flood_byte_burst=1000.0))
    bob = logged_in(server, "bob")
    bob.send(b"a\nb\n")
    for _ in range(20):
        bob.send(b"x" * 99 + b"\n")
    assert bob.transport.disconnecting
    assert bob.lines()[-1] == "*** Disconnected: Excess flood"


def test_sustained_flood_disconnects() -> None:
    clock = Clock()
    server = make_server(
        limits(flood_lines_per_second=2.0, flood_line_burst=2.0, flood_disconnect_after=5.0),
        clock,
    )
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"spam\n" * 100)
    for _ in range(30):
        clock.advance(0.25)
        if bob.transport.disconnecting:
            break
    assert bob.transport.disconnecting
    assert bob.lines()[-1] == "*** Disconnected: Excess flood"
    delivered = alice.lines()
    assert delivered[-1] == "*** bob quit (Excess flood)"
    assert 10 <= len(delivered) - 1 <= 16  # burst 2 + 2/s for about 5 s
    assert server.flood_holds == 1


def test_separate_bursts_are_separate_episodes() -> None:
    clock = Clock()
    server = make_server(
        limits(flood_lines_per_second=1.0, flood_line_burst=2.0, flood_disconnect_after=3.0),
        clock,
    )
    bob = logged_in(server, "bob")
    for _ in range(5):  # a paste of 4 lines every 10 s: delayed, never disconnected
        bob.send(b"paste\n" * 4)
        for _ in range(100):
            clock.advance(0.1)
    assert not bob.transport.disconnecting
    assert server.flood_holds == 5


# -- SendQ -----------------------------------------------------------------------------


def test_a_client_that_never_reads_is_disconnected_and_the_others_are_not_slowed() -> None:
    server = make_server(limits(sendq_bytes=10_000))
    alice = logged_in(server, "alice")
    stuck = logged_in(server, "stuck", transport=BufferTransport())
    carol = logged_in(server, "carol")
    for peer in (alice, stuck, carol):
        peer.output()
    line = "x" * 1000
    for number in range(200):
        alice.line(f"{number} {line}")
        # carol gets each line at once, whatever stuck does
        assert carol.lines()[0] == f"#lobby <alice> {number} {line}"
        queued = stuck.chat._queued if stuck.chat._queue is not None else 0
        assert queued <= 10_000 + 1100  # bounded: at most one line over the limit
    assert stuck.transport.disconnecting
    received = stuck.transport.value().decode().split("\r\n")
    assert received[-2] == "*** Disconnected: SendQ exceeded"
    assert len(received) < 100  # it got the 64 KiB buffer and the reason, nothing more
    assert carol.lines() == []
    assert server.sendq_exceeded == 1
    # The others were told, right after the line that overflowed the queue.
    alice.line("after")
    assert carol.lines() == ["#lobby <alice> after"]


def test_the_sendq_notice_follows_the_message_for_everyone() -> None:
    server = make_server(limits(sendq_bytes=1000))
    alice = logged_in(server, "alice")
    stuck = logged_in(server, "stuck", transport=BufferTransport())
    bob = logged_in(server, "bob")
    stuck.transport.bufferSize = 10  # type: ignore[misc]
    for peer in (alice, stuck, bob):
        peer.output()
    alice.line("y" * 2000)
    assert bob.lines() == ["#lobby <alice> " + "y" * 2000]
    alice.line("z" * 2000)
    assert bob.lines() == ["#lobby <alice> " + "z" * 2000, "*** stuck quit (SendQ exceeded)"]


def test_a_slow_reader_that_catches_up_stays() -> None:
    server = make_server(limits(sendq_bytes=20_000))
    alice = logged_in(server, "alice")
    slow = logged_in(server, "slow", transport=BufferTransport())
    assert isinstance(slow.transport, BufferTransport)
    slow.output()
    received = b""
    for number in range(500):
        alice.line(f"{number} " + "s" * 500)
        if number % 100 == 99:  # reads now and then: the queue drains back
            received += slow.transport.drain()
    received += slow.transport.drain()
    assert not slow.transport.disconnecting
    lines = received.decode().split("\r\n")[:-1]
    assert [line.split()[2] for line in lines] == [str(n) for n in range(500)]


def test_a_quit_while_output_is_queued_flushes_it_first() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    slow = logged_in(server, "slow", transport=BufferTransport())
    slow.transport.bufferSize = 10  # type: ignore[misc]
    slow.output()
    alice.line("one")  # passes the transport's mark: the next lines are queued
    alice.line("two")
    alice.line("three")
    assert slow.chat._queue is not None and len(slow.chat._queue) == 2
    slow.line("/quit")
    assert slow.lines() == ["#lobby <alice> one", "#lobby <alice> two", "#lobby <alice> three",
                            "*** Goodbye."]


# -- caps and timeouts -----------------------------------------------------------------


def test_connection_caps_explain_and_close() -> None:
    server = make_server(limits(max_connections=3, max_connections_per_peer=2))
    first = Peer(server, "192.0.2.1")
    Peer(server, "192.0.2.1")
    refused = Peer(server, "192.0.2.1")
    assert refused.lines() == ["*** Too many connections from 192.0.2.1; close one first."]
    assert refused.transport.disconnecting and not isinstance(refused.protocol, ChatProtocol)
    Peer(server, "192.0.2.2")
    full = Peer(server, "192.0.2.3")
    assert full.lines() == ["*** The server is full; try again later."]
    assert server.refused == 2
    first.close()
    assert isinstance(Peer(server, "192.0.2.1").protocol, ChatProtocol)
    assert server.per_peer == {"192.0.2.1": 2, "192.0.2.2": 1}


def test_registration_timeout() -> None:
    clock = Clock()
    server = make_server(limits(register_timeout=60.0), clock)
    factory = server.factory()
    factory.startFactory()
    try:
        silent = Peer(server)
        chatty_but_unregistered = Peer(server)
        registered = logged_in(server, "alice")
        for _ in range(10):
            clock.advance(10)
            chatty_but_unregistered.line("not a nick!")
        assert silent.transport.disconnecting and chatty_but_unregistered.transport.disconnecting
        assert silent.lines()[-1] == "*** Disconnected: no nickname chosen within 60 seconds"
        assert not registered.transport.disconnecting
    finally:
        factory.stopFactory()
    assert not [c for c in clock.getDelayedCalls() if c.func.__name__ != "abortConnection"]


@pytest.mark.parametrize("phase", [0.01, 2.0, 4.99])
def test_idle_timeout_closes_after_one_to_one_and_a_half_timeouts(phase: float) -> None:
    clock = Clock()
    server = make_server(limits(idle_timeout=10.0, register_timeout=None), clock)
    factory = server.factory()
    factory.startFactory()
    try:
        clock.advance(20 + phase)
        alice = logged_in(server, "alice")
        silent = 0.0
        while not alice.transport.disconnecting and silent < 30:
            clock.advance(0.01)
            silent += 0.01
        assert 10 - 1e-6 <= silent <= 15 + 0.02
        assert alice.lines()[-1] == "*** Disconnected: idle for 10 seconds"
        assert server.timed_out == 1
    finally:
        factory.stopFactory()


def test_talking_keeps_a_connection_open() -> None:
    clock = Clock()
    server = make_server(limits(idle_timeout=10.0), clock)
    factory = server.factory()
    factory.startFactory()
    try:
        alice = logged_in(server, "alice")
        for _ in range(20):
            clock.advance(4)
            alice.line("still here")
        assert not alice.transport.disconnecting
    finally:
        factory.stopFactory()


def test_no_timer_without_timeouts() -> None:
    clock = Clock()
    server = make_server(limits(idle_timeout=None, register_timeout=None), clock)
    server.factory().startFactory()
    assert not clock.getDelayedCalls()


def test_a_closing_connection_that_never_drains_is_aborted() -> None:
    clock = Clock()
    server = make_server(limits(close_timeout=10.0), clock)
    alice = logged_in(server, "alice")
    aborted: list[bool] = []
    alice.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    alice.line("/quit")
    clock.advance(9)
    assert not aborted
    clock.advance(1)
    assert aborted == [True]


def test_the_abort_timer_is_cancelled_when_the_connection_closes() -> None:
    clock = Clock()
    server = make_server(limits(close_timeout=10.0), clock)
    alice = logged_in(server, "alice")
    alice.line("/quit")
    alice.close()
    assert not clock.getDelayedCalls()


# -- half-close and disconnects ----------------------------------------------------------


def test_half_close_finishes_the_last_line_then_says_goodbye() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"first\nlast line without newline")
    bob.protocol.readConnectionLost()
    assert alice.lines() == [
        "#lobby <bob> first",
        "#lobby <bob> last line without newline",
        "*** bob quit (end of input)",
    ]
    assert bob.lines() == ["*** Goodbye."]
    assert bob.transport.disconnecting


def test_half_close_while_flood_held_finishes_the_input_first() -> None:
    clock = Clock()
    server = make_server(
        limits(flood_lines_per_second=1.0, flood_line_burst=1.0, flood_disconnect_after=None),
        clock,
    )
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.send(b"a\nb\nc")
    bob.protocol.readConnectionLost()
    assert not bob.transport.disconnecting
    clock.advance(1)
    clock.advance(1)
    assert alice.lines() == ["#lobby <bob> a", "#lobby <bob> b", "#lobby <bob> c",
                             "*** bob quit (end of input)"]
    assert bob.transport.disconnecting


def test_kick_from_the_registry_closes_the_connection() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    assert server.registry.disconnect("BOB", "be nice")
    assert bob.lines() == ["*** Disconnected: be nice"]
    assert alice.lines() == ["*** bob quit (be nice)"]
    assert bob.transport.disconnecting


def test_connection_lost_leaves_the_rooms() -> None:
    server = make_server()
    alice = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    alice.output()
    bob.close()
    assert alice.lines() == ["*** bob quit (connection closed)"]
    assert server.registry.user("bob") is None
    assert server.connections == {alice.protocol}


def test_a_client_lost_in_the_middle_of_a_fan_out_breaks_nothing() -> None:
    server = make_server()
    peers = [logged_in(server, f"user{n}") for n in range(6)]
    speaker = logged_in(server, "speaker")
    for peer in peers:
        peer.output()
    victim = peers[2]

    class Dying(StringTransport):
        def write(self, data: bytes) -> None:
            victim.close()  # the connection drops while the fan-out is under way

    victim.protocol.transport = Dying()
    victim.user.send = victim.protocol.transport.write
    speaker.line("hello all")
    for peer in peers:
        if peer is not victim:
            assert peer.lines() == [
                "#lobby <speaker> hello all", "*** user2 quit (connection closed)"
            ]
    speaker.line("again")
    assert peers[0].lines() == ["#lobby <speaker> again"]
