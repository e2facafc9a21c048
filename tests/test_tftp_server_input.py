"""The TFTP server against hostile and sloppy input on the in-memory network (netsvc.testing).

Unsafe names reach the real filesystem backend over the wire; requests near the size limit;
generated request-shaped datagrams that nobody ever answers; uploads over a lossy link.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TypeVar, cast

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from netsvc.testing import FakeUDPReactor, RecordingDatagramProtocol, SentDatagram
from netsvc.tftp.backend import FilesystemBackend
from netsvc.tftp.client import TFTPError
from netsvc.tftp.packets import (
    MAX_REQUEST_SIZE,
    RRQ,
    WRQ,
    ErrorCode,
    TFTPProtocolError,
    encode_ack,
    encode_data,
    parse,
)
from netsvc.tftp.server import TFTPServerLimits
from tests import test_tftp_backend as backend_tests
from tests.test_tftp_server import LOSSY, payload, put
from tests.tftp_support import SERVER_HOST, SERVER_PORT, fake_network

#: Simulated seconds a test lets pass without answering: well past every give-up.
SILENCE = 60.0
#: A file of several blocks: a download of it has a next block to send ahead.
FILE = payload(2000)
RETRIES = TFTPServerLimits().first_contact_retries


def ask(reactor: FakeUDPReactor, datagram: bytes, seconds: float = SILENCE) -> list[SentDatagram]:
    """Send ``datagram`` to the server from a fresh port that never answers; let ``seconds``
    pass; everything sent to that port (from the listener or a transfer's own port)."""
    client = reactor.listenUDP(0, RecordingDatagramProtocol(), "")
    client.write(datagram, (SERVER_HOST, SERVER_PORT))
    reactor.run_until(lambda: False, timeout=seconds)
    port = client.getHost().port
    return [s for s in reactor.sent if s.dst[1] == port]


def error_code(datagram: bytes) -> int | None:
    """The code of an ERROR datagram; ``None`` for any other datagram."""
    opcode, code = struct.unpack_from("!HH", datagram)
    return code if opcode == 5 else None


def request(opcode: int, name: bytes, *options: tuple[bytes, bytes]) -> bytes:
    """A request datagram in octet mode."""
    fields = [name, b"octet", *(field for pair in options for field in pair)]
    return struct.pack("!H", opcode) + b"".join(field + b"\0" for field in fields)


# -- unsafe names, over the wire, with the filesystem backend --------------------------------


def _backend_illegal_names() -> list[str]:
    """The names test_tftp_backend refuses at the backend (its parameter list, not a copy)."""
    test = backend_tests.test_illegal_names_are_access_violations
    (names,) = [m.args[1] for m in vars(test)["pytestmark"] if m.args[0] == "name"]
    assert len(names) > 10
    return list(names)


def _expected_code(name: str) -> ErrorCode:
    # Empty and NUL-split names cannot travel in a request: the parser refuses those first.
    return ErrorCode.ILLEGAL_OPERATION if not name or "\0" in name else ErrorCode.ACCESS_VIOLATION


WRITABLE = {"writable": True, "overwrite": True, "create_dirs": True}

NAME_ROWS: list[tuple[str, int, dict[str, bool], ErrorCode]] = [
    *((name, opcode, WRITABLE, _expected_code(name))
      for name in _backend_illegal_names() for opcode in (1, 2)),
    # With backslash_to_slash a "\\" separates components, so "..\\" climbs: refused.
    *((name, opcode, {**WRITABLE, "backslash_to_slash": True}, ErrorCode.ACCESS_VIOLATION)
      for name in ("..\\x", "dir\\..\\..\\x", "..\\tftp\\dir\\file") for opcode in (1, 2)),
    # Without it "..\\x" is one ordinary (missing) name inside the root.
    ("..\\x", 1, {}, ErrorCode.FILE_NOT_FOUND),
    # Absolute names are taken below the root: missing there, and no directory is made.
    ("/etc/passwd", 1, {}, ErrorCode.FILE_NOT_FOUND),
    ("/etc/passwd", 2, {"writable": True}, ErrorCode.FILE_NOT_FOUND),
]


def _tree(top: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry below ``top``: its modification time and, for a file, its bytes."""
    return {
        str(path.relative_to(top)): (
            path.lstat().st_mtime_ns,
            path.read_bytes() if path.is_file() and not path.is_symlink() else b"",
        )
        for path in [top, *top.rglob("*")]
    }


@pytest.mark.parametrize(
    ("name", "opcode", "backend_options", "code"),
    NAME_ROWS,
    ids=[
        f"{'RRQ' if op == 1 else 'WRQ'}-{name!r}-{'+'.join(o) or 'read-only'}"
        for name, op, o, _ in NAME_ROWS
    ],
)
def test_unsafe_names_over_the_wire_get_one_error_and_touch_nothing(
    tmp_path: Path, name: str, opcode: int, backend_options: dict[str, bool], code: ErrorCode
) -> None:
    root = tmp_path / "tftp"
    (root / "sub").mkdir(parents=True)
    (root / "dir").mkdir()
    (root / "x").write_bytes(b"inside")
    (root / "dir" / "file").write_bytes(b"sub")
    (tmp_path / "x").write_bytes(b"outside")
    before, neighbours = _tree(tmp_path), sorted(p.name for p in tmp_path.parent.iterdir())
    backend = FilesystemBackend(root, run_in_thread=backend_tests.in_caller, **backend_options)
    reactor, server, _ = fake_network(backend=backend, record=True)
    replies = ask(reactor, request(opcode, name.encode("utf-8", "surrogateescape")))
    assert [error_code(r.data) for r in replies] == [code]
    assert str(tmp_path).encode() not in replies[0].data
    assert not server.transfers
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == neighbours


# -- request sizes -------------------------------------------------------------------------


def padded_rrq(size: int, *options: tuple[bytes, bytes]) -> bytes:
    """An RRQ for "f" of exactly ``size`` bytes: ``options``, then an unknown option "pad"
    (which the server ignores) whose value fills up."""
    head = request(1, b"f", *options)
    datagram = head + b"pad\0" + b"v" * (size - len(head) - len(b"pad\0\0")) + b"\0"
    assert len(datagram) == size
    return datagram


@pytest.mark.parametrize("size", [513, 700, MAX_REQUEST_SIZE])
@pytest.mark.parametrize("blksize", [None, b"1024"])
def test_requests_over_512_bytes_up_to_the_limit_are_served(
    size: int, blksize: bytes | None
) -> None:
    reactor, _, _ = fake_network({"f": FILE}, record=True)
    options = [(b"blksize", blksize)] if blksize else []
    first = ask(reactor, padded_rrq(size, *options), seconds=0)[0].data
    if blksize:
        assert first == b"\x00\x06blksize\x001024\x00"  # "pad" left out
    else:
        assert first == encode_data(1, FILE[:512])


@pytest.mark.parametrize("opcode", [1, 2])
def test_a_request_one_byte_over_the_limit_gets_one_error(opcode: int) -> None:
    reactor, server, _ = fake_network({"f": FILE}, record=True)
    datagram = padded_rrq(MAX_REQUEST_SIZE + 1)
    datagram = struct.pack("!H", opcode) + datagram[2:]
    replies = ask(reactor, datagram)
    assert [error_code(r.data) for r in replies] == [ErrorCode.NOT_DEFINED]
    assert replies[0].src[1] == SERVER_PORT and not server.transfers


# -- generated requests that nobody answers ------------------------------------------------

T = TypeVar("T")


def _mostly(usual: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` three times in four: enough requests get far enough to start a transfer.
    (``st.one_of`` draws its branches evenly, repeated ones too.)"""
    return st.integers(0, 3).flatmap(lambda n: other if n == 3 else usual)


_VALUES = _mostly(
    st.one_of(
        st.sampled_from(["0", "1", "8", "512", "1468", "65464", "65465", "65535", "256"]),
        st.integers(-(2**70), 2**70).map(str),  # huge and negative
    ),
    st.one_of(
        st.sampled_from(["", "abc", " 8", "1e3", "0x10", "+5", "08", "99999999999999999999"]),
        st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=6),
    ),
)
_OPTION_NAMES = _mostly(
    st.sampled_from(["blksize", "timeout", "tsize", "windowsize", "BLKSIZE", "WindowSize"]),
    st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=6),
)


@st.composite
def request_shaped(draw: st.DrawFn) -> bytes:
    """Datagrams close to RRQ/WRQ: random opcodes, names, modes and options, a final NUL
    that may be missing, junk after it."""
    opcode = draw(_mostly(
        st.sampled_from([1, 2]).map(lambda n: struct.pack("!H", n)),
        st.one_of(st.integers(3, 6).map(lambda n: struct.pack("!H", n)),
                  st.binary(min_size=2, max_size=2)),
    ))
    name = draw(_mostly(st.sampled_from(["f", "/f", "./f", "../f", "f/", "g"]),
                        st.text("fg/.\\", max_size=10)))
    mode = draw(_mostly(st.sampled_from(["octet", "netascii", "mail", "OCTET"]),
                        st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=8)))
    options = draw(st.lists(st.tuples(_OPTION_NAMES, _VALUES), max_size=6))
    fields = [name, mode, *(field for pair in options for field in pair)]
    datagram = opcode + b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    if draw(_mostly(st.just(False), st.just(True))):
        datagram = datagram[:-1]  # the final NUL missing
    return datagram + draw(_mostly(st.just(b""), st.binary(min_size=1, max_size=8)))


def _is_request(datagram: bytes) -> bool:
    try:
        return isinstance(parse(datagram), RRQ | WRQ)
    except TFTPProtocolError:
        return False


@settings(max_examples=150, deadline=None)
@given(request_shaped())
@example(request(1, b"f"))  # a download without options: DATA 1 is the first packet
@example(request(1, b"f", (b"windowsize", b"16")))
@example(request(2, b"new", (b"timeout", b"1")))
def test_unanswered_requests_get_a_bounded_reply_and_then_silence(datagram: bytes) -> None:
    logged: list[LogEvent] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        reactor, server, _ = fake_network({"f": FILE}, record=True)
        replies = [r.data for r in ask(reactor, datagram)]
        reactor.run_until(lambda: False, timeout=SILENCE)  # a second minute: still nothing
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [e for e in logged if "log_failure" in e] == [] and reactor.protocol_errors == []
    assert not server.transfers and not reactor.getDelayedCalls()
    assert len([s for s in reactor.sent if s.dst[1] != SERVER_PORT]) == len(replies)
    if not _is_request(datagram):
        event("not a request")
        assert len(replies) <= 1 and all(error_code(r) is not None for r in replies)
        return
    event("a request refused" if error_code(replies[0]) is not None else "a transfer")
    # A transfer: its first packet (OACK, DATA 1 or ACK 0) again on each timeout, never
    # anything new to a peer that has not answered once; at most a final ERROR after.
    # An upload's OACK is repeated as ACK 0 (where that says the same) or not at all.
    errors = [r for r in replies if error_code(r) is not None]
    assert errors == replies[len(replies) - len(errors):] and len(errors) <= 1
    sent = replies[: len(replies) - len(errors)]
    assert len(sent) <= RETRIES + 1
    if sent and sent[0][:2] == b"\x00\x06" and _is_request(datagram) and datagram[1] == 2:
        assert set(sent[1:]) <= {encode_ack(0)}
    else:
        assert len(set(sent)) <= 1


def test_an_unproven_peer_of_a_download_gets_only_block_1_again() -> None:
    reactor, _, _ = fake_network({"f": FILE}, record=True)
    replies = [r.data for r in ask(reactor, request(1, b"f"))]
    assert replies[:-1] == [encode_data(1, FILE[:512])] * (RETRIES + 1)
    assert error_code(replies[-1]) == ErrorCode.NOT_DEFINED


# -- uploads over a lossy link ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 1024, 4096, 100_000])
@pytest.mark.parametrize("windowsize", [None, 4, 16, 64])
def test_uploads_over_a_lossy_link_are_identical_or_a_clean_error(
    size: int, windowsize: int | None
) -> None:
    data = payload(size, 2)
    for seed in range(50):  # the first seed whose link loses something (deterministic)
        reactor, server, backend = fake_network(conditions=LOSSY, seed=seed)
        try:
            result = put(reactor, "up", data, windowsize=windowsize)
            error = None
        except TFTPError as raised:
            result, error = None, raised
        if reactor.stats.lost:
            break
    assert reactor.stats.lost
    reactor.run_until(lambda: False, timeout=SILENCE)  # the server's dally and timers end
    assert not server.transfers
    assert all(w.committed or w.aborted for w in backend.writers)
    if error is not None:
        # The one clean failure 15 % loss allows: every ACK of the last block lost, so the
        # client cannot know that the server has the whole file (TFTP has no more to say).
        assert error.timed_out and backend.files.get("up") == data
    else:
        assert result is not None and result.bytes == size
        assert backend.files["up"] == data
