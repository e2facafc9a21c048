"""Tests for netsvc.tftp.packets: wire format, malformed input, round trips."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc.tftp.packets import (
    ACK,
    DATA,
    ERROR,
    MAX_FILENAME_SIZE,
    MAX_REQUEST_SIZE,
    OACK,
    RRQ,
    WRQ,
    ErrorCode,
    Mode,
    Opcode,
    Packet,
    TFTPProtocolError,
    encode_ack,
    encode_data,
    parse,
)

ILLEGAL = ErrorCode.ILLEGAL_OPERATION
UNDEFINED = ErrorCode.NOT_DEFINED
OPTNEG = ErrorCode.OPTION_NEGOTIATION


def _request(opcode: int, body: bytes) -> bytes:
    return struct.pack("!H", opcode) + body


# --- exact encodings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (RRQ("boot.img"), b"\x00\x01boot.img\x00octet\x00"),
        (WRQ("a", Mode.NETASCII), b"\x00\x02a\x00netascii\x00"),
        (
            RRQ("f", Mode.OCTET, (("blksize", "1428"), ("tsize", "0"))),
            b"\x00\x01f\x00octet\x00blksize\x001428\x00tsize\x000\x00",
        ),
        (DATA(1, b"hello"), b"\x00\x03\x00\x01hello"),
        (DATA(65535, b""), b"\x00\x03\xff\xff"),
        (ACK(0), b"\x00\x04\x00\x00"),
        (ACK(258), b"\x00\x04\x01\x02"),
        (ERROR(ErrorCode.FILE_NOT_FOUND, "nope"), b"\x00\x05\x00\x01nope\x00"),
        (ERROR(0), b"\x00\x05\x00\x00\x00"),
        (OACK((("blksize", "512"),)), b"\x00\x06blksize\x00512\x00"),
        (OACK(), b"\x00\x06"),
    ],
)
def test_encode_exact_bytes_and_parse_back(packet: Packet, wire: bytes) -> None:
    assert packet.encode() == wire
    assert parse(wire) == packet


def test_fast_helpers_match_objects() -> None:
    assert encode_data(7, b"xyz") == DATA(7, b"xyz").encode()
    assert encode_ack(7) == ACK(7).encode()


@pytest.mark.parametrize("block", [-1, 65536, 1 << 40])
def test_block_out_of_range_refused_on_encode(block: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_data(block, b"")
    with pytest.raises(ValueError, match="out of range"):
        encode_ack(block)
    with pytest.raises(ValueError):
        DATA(block, b"").encode()
    with pytest.raises(ValueError):
        ACK(block).encode()


def test_opcode_classvars() -> None:
    assert [c.opcode for c in (RRQ, WRQ, DATA, ACK, ERROR, OACK)] == list(Opcode)
    assert RRQ.is_read and not WRQ.is_read


def test_rrq_and_wrq_with_same_fields_differ() -> None:
    read: Packet = RRQ("f")
    write: Packet = WRQ("f")
    assert read != write


def test_mode_normalised_and_mail_flagged() -> None:
    packet = parse(_request(1, b"f\x00NetASCII\x00"))
    assert isinstance(packet, RRQ)
    assert packet.mode is Mode.NETASCII
    mail = parse(_request(2, b"root\x00MAIL\x00"))
    assert isinstance(mail, WRQ)
    assert mail.mode is Mode.MAIL
    assert Mode.MAIL.is_text and Mode.NETASCII.is_text and not Mode.OCTET.is_text
    assert RRQ("f", "OCTET").mode is Mode.OCTET


def test_options_keep_order_case_and_duplicates() -> None:
    wire = _request(1, b"f\x00octet\x00BLKSIZE\x00100\x00tsize\x000\x00blksize\x00200\x00")
    packet = parse(wire)
    assert isinstance(packet, RRQ)
    assert packet.options == (("BLKSIZE", "100"), ("tsize", "0"), ("blksize", "200"))
    assert packet.encode() == wire


def test_options_accept_lists_and_empty_values() -> None:
    packet = RRQ("f", Mode.OCTET, [("x", "")])
    assert packet.options == (("x", ""),)
    assert parse(packet.encode()) == packet


def test_non_utf8_filename_is_lossless() -> None:
    raw = b"caf\xe9/\xff\xfe.bin"
    packet = parse(_request(1, raw + b"\x00octet\x00"))
    assert isinstance(packet, RRQ)
    assert packet.filename_bytes == raw
    assert packet.encode() == _request(1, raw + b"\x00octet\x00")


def test_utf8_filename_decodes_naturally() -> None:
    packet = parse(_request(1, "résumé.txt".encode() + b"\x00octet\x00"))
    assert isinstance(packet, RRQ)
    assert packet.filename == "résumé.txt"


def test_request_size_bounds_are_inclusive() -> None:
    name = b"n" * MAX_FILENAME_SIZE
    packet = parse(_request(1, name + b"\x00octet\x00"))
    assert isinstance(packet, RRQ)
    # Exactly MAX_REQUEST_SIZE bytes is accepted.
    filler = MAX_REQUEST_SIZE - len(_request(1, name + b"\x00octet\x00x\x00\x00"))
    wire = _request(1, name + b"\x00octet\x00x\x00" + b"v" * filler + b"\x00")
    assert len(wire) == MAX_REQUEST_SIZE
    assert isinstance(parse(wire), RRQ)


# --- leniencies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        # NUL padding after the last field of a request.
        (_request(1, b"f\x00octet\x00\x00\x00\x00"), RRQ("f")),
        (
            _request(1, b"f\x00octet\x00blksize\x00512\x00\x00\x00"),
            RRQ("f", Mode.OCTET, (("blksize", "512"),)),
        ),
        # "blksize" with an empty value, then padding.
        (
            _request(2, b"f\x00octet\x00blksize\x00\x00\x00"),
            WRQ("f", Mode.OCTET, (("blksize", ""),)),
        ),
        (b"\x00\x06tsize\x00100\x00\x00", OACK((("tsize", "100"),))),
        (b"\x00\x06\x00", OACK()),
        # ACK padded by the peer.
        (b"\x00\x04\x00\x05\x00\x00\x00\x00", ACK(5)),
        # ERROR: no final NUL, no message, bytes after the NUL, non-UTF-8 message.
        (b"\x00\x05\x00\x02denied", ERROR(ErrorCode.ACCESS_VIOLATION, "denied")),
        (b"\x00\x05\x00\x00", ERROR(0, "")),
        (b"\x00\x05\x00\x03full\x00junk", ERROR(ErrorCode.DISK_FULL, "full")),
        (b"\x00\x05\x00\x00bad \xff\x00", ERROR(0, "bad \ufffd")),
        # Unknown error codes are kept.
        (b"\x00\x05\x01\x00x\x00", ERROR(256, "x")),
    ],
)
def test_lenient_parsing(wire: bytes, expected: Packet) -> None:
    """Deliberate leniency (Postel): what a peer sends us mid-transfer, a padded ACK or an
    ERROR without its final NUL, is read as meant; refusing it would only stall or hide the
    end of a transfer. Requests stay strict (MALFORMED below): a server answers them, and
    what it accepts is its attack surface. Only NUL padding after the last field of a request
    or an OACK is tolerated (tftp-hpa also stops at the first empty field)."""
    assert parse(wire) == expected


def test_known_error_codes_become_enum_members() -> None:
    packet = parse(b"\x00\x05\x00\x08x\x00")
    assert isinstance(packet, ERROR)
    assert packet.code is ErrorCode.OPTION_NEGOTIATION
    assert ERROR(999).code == 999


# --- malformed input -------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, ErrorCode]] = [
    ("empty datagram", b"", ILLEGAL),
    ("one byte", b"\x00", ILLEGAL),
    ("opcode 0", b"\x00\x00\x00\x00", ILLEGAL),
    ("opcode 7", b"\x00\x07\x00\x01", ILLEGAL),
    ("opcode 0xffff", b"\xff\xff", ILLEGAL),
    ("opcode 0x0103", b"\x01\x03\x00\x01", ILLEGAL),
    ("short DATA", b"\x00\x03\x00", ILLEGAL),
    ("opcode-only DATA", b"\x00\x03", ILLEGAL),
    ("short ACK", b"\x00\x04\x00", ILLEGAL),
    ("opcode-only ACK", b"\x00\x04", ILLEGAL),
    ("short ERROR", b"\x00\x05\x00", ILLEGAL),
    ("opcode-only RRQ", b"\x00\x01", ILLEGAL),
    ("RRQ filename unterminated", _request(1, b"file"), ILLEGAL),
    ("RRQ mode unterminated", _request(1, b"file\x00octet"), ILLEGAL),
    ("RRQ without mode", _request(1, b"file\x00"), ILLEGAL),
    ("WRQ without mode", _request(2, b"file\x00"), ILLEGAL),
    ("RRQ empty filename", _request(1, b"\x00octet\x00"), ILLEGAL),
    ("WRQ empty filename", _request(2, b"\x00octet\x00"), ILLEGAL),
    ("RRQ empty mode", _request(1, b"file\x00\x00"), ILLEGAL),
    ("RRQ unknown mode", _request(1, b"file\x00binary\x00"), ILLEGAL),
    ("RRQ non-ASCII mode", _request(1, b"file\x00oct\xe9t\x00"), ILLEGAL),
    ("RRQ junk after last NUL", _request(1, b"file\x00octet\x00junk"), ILLEGAL),
    ("RRQ option unterminated", _request(1, b"f\x00octet\x00blksize\x00512"), ILLEGAL),
    ("RRQ option without value", _request(1, b"f\x00octet\x00blksize\x00"), ILLEGAL),
    (
        "RRQ odd option strings",
        _request(1, b"f\x00octet\x00a\x001\x00blksize\x00"),
        ILLEGAL,
    ),
    ("RRQ empty option name", _request(1, b"f\x00octet\x00\x00512\x00"), ILLEGAL),
    (
        "RRQ empty name mid-options",
        _request(1, b"f\x00octet\x00\x00\x00blksize\x00512\x00"),
        ILLEGAL,
    ),
    ("RRQ non-ASCII option name", _request(1, b"f\x00octet\x00bl\xffk\x001\x00"), OPTNEG),
    ("RRQ non-ASCII option value", _request(1, b"f\x00octet\x00blksize\x00\xb9\x00"), OPTNEG),
    (
        "RRQ filename too long",
        _request(1, b"n" * (MAX_FILENAME_SIZE + 1) + b"\x00octet\x00"),
        UNDEFINED,
    ),
    (
        "RRQ too large",
        _request(1, b"f\x00octet\x00x\x00" + b"v" * MAX_REQUEST_SIZE + b"\x00"),
        UNDEFINED,
    ),
    (
        "WRQ too large",
        _request(2, b"f\x00octet\x00" + b"o\x00v\x00" * (MAX_REQUEST_SIZE // 4)),
        UNDEFINED,
    ),
    ("OACK unterminated", b"\x00\x06blksize\x00512", ILLEGAL),
    ("OACK option without value", b"\x00\x06blksize\x00", ILLEGAL),
    ("OACK empty name", b"\x00\x06\x00512\x00", ILLEGAL),
    ("OACK one stray byte", b"\x00\x06x", ILLEGAL),
    ("OACK non-ASCII", b"\x00\x06blksize\x00\xff\x00", OPTNEG),
]


@pytest.mark.parametrize(
    ("wire", "code"), [(w, c) for _, w, c in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_raises_protocol_error_with_code(wire: bytes, code: ErrorCode) -> None:
    with pytest.raises(TFTPProtocolError) as info:
        parse(wire)
    assert type(info.value) is TFTPProtocolError
    assert info.value.code is code
    assert info.value.reason and str(info.value) == info.value.reason
    assert isinstance(info.value, ValueError)


def test_protocol_error_to_packet() -> None:
    error = TFTPProtocolError("bad thing")
    assert error.to_packet() == ERROR(ErrorCode.ILLEGAL_OPERATION, "bad thing")
    assert TFTPProtocolError("x", ErrorCode.NOT_DEFINED).to_packet().code == 0
    # The ERROR packet a server sends back is itself encodable.
    assert parse(error.to_packet().encode()) == error.to_packet()


# --- encode refuses what parse would refuse --------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        RRQ(""),
        RRQ("a\x00b"),
        RRQ("n" * (MAX_FILENAME_SIZE + 1)),
        RRQ("é" * (MAX_FILENAME_SIZE // 2 + 1)),  # 2 bytes each in UTF-8
        RRQ("\udcc3\udca9"),  # escapes b"\xc3\xa9", which would parse back as "é"
        RRQ("\ud800"),  # a surrogate that surrogateescape cannot encode
        RRQ("f", Mode.OCTET, (("", "1"),)),
        RRQ("f", Mode.OCTET, (("blk\x00size", "1"),)),
        RRQ("f", Mode.OCTET, (("blksize", "1\x00"),)),
        RRQ("f", Mode.OCTET, (("blksïze", "1"),)),
        WRQ("f", Mode.OCTET, (("x", "v" * MAX_REQUEST_SIZE),)),
        ERROR(0, "a\x00b"),
        ERROR(-1, "x"),
        ERROR(65536, "x"),
        ERROR(0, "\ud800"),
        OACK((("", "1"),)),
        OACK((("tsize", "é"),)),
    ],
)
def test_encode_refuses_unencodable(packet: Packet) -> None:
    with pytest.raises(ValueError):
        packet.encode()


def test_unknown_mode_refused_on_construction() -> None:
    with pytest.raises(ValueError):
        RRQ("f", "binary")


def test_large_payload_repr_is_short() -> None:
    assert len(repr(DATA(1, b"x" * 65464))) < 100
    assert repr(DATA(1, b"ab")) == "DATA(block=1, payload=b'ab')"


# --- properties ------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_parse_arbitrary_bytes_raises_only_protocol_error(datagram: bytes) -> None:
    try:
        packet = parse(datagram)
    except TFTPProtocolError as error:
        assert isinstance(error.code, ErrorCode)
    else:
        assert isinstance(packet, RRQ | WRQ | DATA | ACK | ERROR | OACK)


@given(st.integers(0, 6), st.binary(max_size=64), st.lists(st.binary(max_size=8), max_size=6))
def test_parse_structured_garbage_raises_only_protocol_error(
    opcode: int, head: bytes, fields: list[bytes]
) -> None:
    # Shapes close to valid packets reach deeper into the parser than random bytes do.
    datagram = struct.pack("!H", opcode) + head + b"\x00".join(fields)
    for candidate in (datagram, datagram + b"\x00"):
        with contextlib.suppress(TFTPProtocolError):
            parse(candidate)


_ascii_text = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=12)
_option_pairs = st.lists(st.tuples(_ascii_text.filter(bool), _ascii_text), max_size=6).map(tuple)
_filenames = (
    st.binary(min_size=1, max_size=64)
    .filter(lambda b: b"\x00" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)
_message = (
    st.text(max_size=40)
    .filter(lambda s: "\x00" not in s)
    .filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
)
_blocks = st.integers(0, 65535)

packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(RRQ, _filenames, st.sampled_from(Mode), _option_pairs),
    st.builds(WRQ, _filenames, st.sampled_from(Mode), _option_pairs),
    st.builds(DATA, _blocks, st.binary(max_size=600)),
    st.builds(ACK, _blocks),
    st.builds(ERROR, st.integers(0, 65535), _message),
    st.builds(OACK, _option_pairs),
)


@given(packets)
def test_round_trip(packet: Packet) -> None:
    wire = packet.encode()
    assert parse(wire) == packet
    assert parse(wire).encode() == wire


@given(_blocks, st.binary(max_size=2000))
def test_fast_data_path_round_trip(block: int, payload: bytes) -> None:
    assert parse(encode_data(block, payload)) == DATA(block, payload)
    assert parse(encode_ack(block)) == ACK(block)
