"""TFTP wire format: packet value objects, :func:`parse` and fast encoders. No I/O.

Packets (RFC 1350, OACK from RFC 2347)::

    RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
    DATA     | 03    | block (2 bytes) | payload (0.. bytes)
    ACK      | 04    | block (2 bytes)
    ERROR    | 05    | code (2 bytes)  | message | 0
    OACK     | 06    | opt1 | 0 | value1 | 0 | ...

Every malformed datagram makes :func:`parse` raise :class:`TFTPProtocolError` (and nothing
else), which carries the TFTP error code a server should answer with.

Bounds (ours, documented because the RFCs leave them open or are ignored in practice):

- A request (RRQ/WRQ) may be at most :data:`MAX_REQUEST_SIZE` (1024) bytes. RFC 2347 caps
  requests at 512 bytes, but clients with long paths and several options exceed that, and
  other servers accept them; 1024 leaves room for a maximal filename plus ~500 bytes of
  options. Larger requests are refused with error code 0 ("not defined", see message).
- A filename may be at most :data:`MAX_FILENAME_SIZE` (512) encoded bytes, also code 0.
- DATA payloads, ERROR messages and OACKs are bounded only by the datagram: the engine checks a
  DATA payload against the negotiated blksize.

Leniencies (real peers are sloppy; each is deliberate):

- Requests and OACKs may carry trailing NUL padding after the last complete field (tftp-hpa
  also stops at the first empty field). Any other byte after an empty option name is an error.
- An ACK longer than 4 bytes is accepted and the extra bytes are ignored (some embedded
  stacks pad short datagrams).
- An ERROR whose message lacks the final NUL is accepted, as is one with no message at all;
  anything after the first NUL is ignored. Messages are decoded as UTF-8 with
  ``errors="replace"`` (ASCII decodes unchanged, and a sloppy peer cannot make us fail).
- The mode is matched case-insensitively (RFC 1350) and normalised to lowercase.

Filenames are ``str`` decoded from UTF-8 with ``errors="surrogateescape"``: lossless for any
bytes a client sends (``request.filename_bytes`` gives them back exactly, and on a UTF-8 POSIX
system ``os.fsencode(filename)`` is the same), while ordinary UTF-8 names read naturally. The
server does path safety checks; the parser only guarantees the name is non-empty, NUL-free
and bounded.

Option names and values are ``str`` decoded as ASCII (RFC 2347); a non-ASCII byte in an
option is refused with error code 8. Options keep their order, case and duplicates: the
negotiation policy (:mod:`netsvc.tftp.options`) decides what they mean.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import ClassVar, TypeAlias

import attrs

__all__ = [
    "ACK",
    "DATA",
    "ERROR",
    "MAX_BLOCK",
    "MAX_FILENAME_SIZE",
    "MAX_REQUEST_SIZE",
    "OACK",
    "RRQ",
    "WRQ",
    "ErrorCode",
    "Mode",
    "Opcode",
    "Packet",
    "Request",
    "TFTPProtocolError",
    "encode_ack",
    "encode_data",
    "parse",
]

#: Largest request datagram (RRQ/WRQ, opcode included) that :func:`parse` accepts.
MAX_REQUEST_SIZE = 1024
#: Largest filename, in encoded bytes, that :func:`parse` accepts.
MAX_FILENAME_SIZE = 512
#: Block numbers are 16 bits on the wire.
MAX_BLOCK = 0xFFFF


class Opcode(enum.IntEnum):
    """TFTP opcodes (RFC 1350; OACK from RFC 2347)."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """TFTP error codes (0-7 from RFC 1350, 8 from RFC 2347)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION = 8


# Not enum.StrEnum: setup.cfg still promises Python 3.10.
class Mode(str, enum.Enum):  # noqa: UP042
    """Transfer modes (RFC 1350). ``MAIL`` parses so that a server can refuse it explicitly."""

    NETASCII = "netascii"
    OCTET = "octet"
    MAIL = "mail"

    @property
    def is_text(self) -> bool:
        """True for modes whose data is netascii on the wire (netascii and mail)."""
        return self is not Mode.OCTET


class TFTPProtocolError(ValueError):
    """A datagram (or option) that breaks the protocol.

    ``reason`` is short, safe to log and to put in an ERROR packet; ``code`` is the TFTP error
    code a server should answer with (usually 4, "illegal TFTP operation").
    """

    reason: str
    code: ErrorCode

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.ILLEGAL_OPERATION) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason

    def to_packet(self) -> ERROR:
        """The ERROR packet that reports this error to the peer."""
        return ERROR(self.code, self.reason)


# Precompiled structs: encoding DATA/ACK is the server's hot path.
_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_OPCODE_RRQ = _OPCODE.pack(Opcode.RRQ)
_OPCODE_WRQ = _OPCODE.pack(Opcode.WRQ)
_OPCODE_OACK = _OPCODE.pack(Opcode.OACK)


def encode_data(block: int, payload: bytes) -> bytes:
    """Encode a DATA packet without building a :class:`DATA` object.

    Raises :class:`ValueError` if ``block`` is not in 0..65535.
    """
    try:
        return _pack_header(3, block) + payload
    except struct.error:
        raise ValueError(f"block number out of range: {block!r}") from None


def encode_ack(block: int) -> bytes:
    """Encode an ACK packet without building an :class:`ACK` object.

    Raises :class:`ValueError` if ``block`` is not in 0..65535.
    """
    try:
        return _pack_header(4, block)
    except struct.error:
        raise ValueError(f"block number out of range: {block!r}") from None


def _to_mode(value: str) -> Mode:
    return value if isinstance(value, Mode) else Mode(value.lower())


def _to_pairs(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in items)


_ERROR_CODES = {int(code): code for code in ErrorCode}


def _to_error_code(code: int) -> int:
    # Known codes become ErrorCode members (readable reprs); others stay plain ints.
    return _ERROR_CODES.get(code, code)


def _payload_repr(payload: bytes) -> str:
    # A 64 KiB payload in a log line or a test failure helps nobody.
    if len(payload) <= 32:
        return repr(payload)
    return f"<{len(payload)} bytes {payload[:16]!r}...>"


def _encode_filename(filename: str) -> bytes:
    if not filename:
        raise ValueError("empty filename")
    raw = filename.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError("filename contains NUL")
    if len(raw) > MAX_FILENAME_SIZE:
        raise ValueError(f"filename longer than {MAX_FILENAME_SIZE} bytes")
    # Escaped bytes that happen to form valid UTF-8 would parse back as a different str.
    if raw.decode("utf-8", "surrogateescape") != filename:
        raise ValueError("filename is not a canonical surrogateescape string")
    return raw


def _encode_option_field(text: str, what: str) -> bytes:
    if not text.isascii() or "\0" in text:
        raise ValueError(f"option {what} must be ASCII without NUL: {text!r}")
    return text.encode("ascii")


def _encode_options(options: tuple[tuple[str, str], ...]) -> list[bytes]:
    parts: list[bytes] = []
    for name, value in options:
        if not name:
            raise ValueError("empty option name")
        parts += (
            _encode_option_field(name, "name"),
            b"\0",
            _encode_option_field(value, "value"),
            b"\0",
        )
    return parts


@attrs.frozen
class _Request:
    """Fields shared by :class:`RRQ` and :class:`WRQ`."""

    filename: str
    mode: Mode = attrs.field(default=Mode.OCTET, converter=_to_mode)
    options: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_to_pairs)

    opcode: ClassVar[Opcode]
    is_read: ClassVar[bool]
    _opcode_bytes: ClassVar[bytes]

    @property
    def filename_bytes(self) -> bytes:
        """The filename exactly as it was (or will be) on the wire."""
        return self.filename.encode("utf-8", "surrogateescape")

    def encode(self) -> bytes:
        """Serialise; raises :class:`ValueError` for anything :func:`parse` would refuse."""
        packet = b"".join(
            [
                self._opcode_bytes,
                _encode_filename(self.filename),
                b"\0",
                self.mode.value.encode("ascii"),
                b"\0",
                *_encode_options(self.options),
            ]
        )
        if len(packet) > MAX_REQUEST_SIZE:
            raise ValueError(f"request longer than {MAX_REQUEST_SIZE} bytes")
        return packet


@attrs.frozen
class RRQ(_Request):
    """Read request: the client wants to download ``filename``."""

    opcode: ClassVar[Opcode] = Opcode.RRQ
    is_read: ClassVar[bool] = True
    _opcode_bytes: ClassVar[bytes] = _OPCODE_RRQ


@attrs.frozen
class WRQ(_Request):
    """Write request: the client wants to upload ``filename``."""

    opcode: ClassVar[Opcode] = Opcode.WRQ
    is_read: ClassVar[bool] = False
    _opcode_bytes: ClassVar[bytes] = _OPCODE_WRQ


@attrs.frozen
class DATA:
    """A data block. ``payload`` may have any length; the engine checks it against blksize."""

    block: int
    payload: bytes = attrs.field(repr=_payload_repr)

    opcode: ClassVar[Opcode] = Opcode.DATA

    def encode(self) -> bytes:
        """Serialise; raises :class:`ValueError` if ``block`` is not in 0..65535."""
        return encode_data(self.block, self.payload)


@attrs.frozen
class ACK:
    """Acknowledgement of DATA ``block`` (block 0 acknowledges a WRQ or an OACK)."""

    block: int

    opcode: ClassVar[Opcode] = Opcode.ACK

    def encode(self) -> bytes:
        """Serialise; raises :class:`ValueError` if ``block`` is not in 0..65535."""
        return encode_ack(self.block)


@attrs.frozen
class ERROR:
    """An error report; it ends the transfer. Unknown codes are kept as plain ints."""

    code: int = attrs.field(converter=_to_error_code)
    message: str = ""

    opcode: ClassVar[Opcode] = Opcode.ERROR

    def encode(self) -> bytes:
        """Serialise; raises :class:`ValueError` for a code outside 0..65535 or a NUL in the
        message (or a message that is not encodable as UTF-8)."""
        if "\0" in self.message:
            raise ValueError("error message contains NUL")
        try:
            header = _pack_header(5, self.code)
        except struct.error:
            raise ValueError(f"error code out of range: {self.code!r}") from None
        return header + self.message.encode("utf-8") + b"\0"


@attrs.frozen
class OACK:
    """Option acknowledgement (RFC 2347): the options the server granted, in order."""

    options: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_to_pairs)

    opcode: ClassVar[Opcode] = Opcode.OACK

    def encode(self) -> bytes:
        """Serialise; raises :class:`ValueError` for empty names or non-ASCII/NUL text."""
        return b"".join([_OPCODE_OACK, *_encode_options(self.options)])


# parse() builds DATA and ACK through the slot descriptors: it skips attrs' frozen __init__
# (object.__setattr__ per field), which is most of the cost of parsing a block. Safe: the
# values come straight from struct, and the instances are indistinguishable (same slots).
_new = object.__new__
_set_data_block = DATA.__dict__["block"].__set__
_set_data_payload = DATA.__dict__["payload"].__set__
_set_ack_block = ACK.__dict__["block"].__set__


def _make_data(block: int, payload: bytes) -> DATA:
    packet = _new(DATA)
    _set_data_block(packet, block)
    _set_data_payload(packet, payload)
    return packet


def _make_ack(block: int) -> ACK:
    packet = _new(ACK)
    _set_ack_block(packet, block)
    return packet


Request: TypeAlias = RRQ | WRQ
Packet: TypeAlias = RRQ | WRQ | DATA | ACK | ERROR | OACK

_MODES = {mode.value.encode("ascii"): mode for mode in Mode}


def parse(datagram: bytes) -> Packet:
    """Parse one datagram into a packet.

    Raises :class:`TFTPProtocolError` (and nothing else) for malformed input; its ``code`` is
    what a server should answer with. DATA and ACK, the per-block traffic, take the fast path.
    """
    if len(datagram) >= 4:
        opcode, number = _unpack_header(datagram)
        if opcode == 3:
            return _make_data(number, datagram[4:])
        if opcode == 4:
            # Lenient: bytes after the block number are ignored.
            return _make_ack(number)
        if opcode == 5:
            return _parse_error(number, datagram)
    return _parse_other(datagram)


def _parse_error(code: int, datagram: bytes) -> ERROR:
    raw = datagram[4:]
    end = raw.find(b"\0")
    # Lenient: a missing final NUL is tolerated and bytes after the first NUL ignored.
    if end >= 0:
        raw = raw[:end]
    return ERROR(code, raw.decode("utf-8", "replace"))


def _parse_other(datagram: bytes) -> Packet:
    if len(datagram) < 2:
        raise TFTPProtocolError("datagram too short for an opcode")
    opcode = (datagram[0] << 8) | datagram[1]
    if opcode == 1 or opcode == 2:
        return _parse_request(opcode, datagram)
    if opcode == 6:
        return OACK(_parse_option_fields(_split_fields(datagram[2:], "OACK"), "OACK"))
    if 3 <= opcode <= 5:
        raise TFTPProtocolError(f"{Opcode(opcode).name} packet shorter than 4 bytes")
    raise TFTPProtocolError(f"unknown opcode {opcode}")


def _split_fields(body: bytes, kind: str) -> list[bytes]:
    """Split a run of NUL-terminated strings; an empty body has no fields."""
    if not body:
        return []
    if body[-1] != 0:
        raise TFTPProtocolError(f"{kind} not NUL-terminated")
    return body[:-1].split(b"\0")


def _parse_option_fields(fields: list[bytes], kind: str) -> tuple[tuple[str, str], ...]:
    count = len(fields)
    # Lenient: an empty option name followed only by empty strings is NUL padding.
    for index in range(0, count, 2):
        if not fields[index]:
            if any(fields[index:]):
                raise TFTPProtocolError(f"empty option name in {kind}")
            count = index
            break
    if count % 2:
        raise TFTPProtocolError(f"option without a value in {kind}")
    options = []
    for index in range(0, count, 2):
        name = fields[index]
        value = fields[index + 1]
        if not (name.isascii() and value.isascii()):
            raise TFTPProtocolError(f"non-ASCII option in {kind}", ErrorCode.OPTION_NEGOTIATION)
        options.append((name.decode("ascii"), value.decode("ascii")))
    return tuple(options)


def _parse_request(opcode: int, datagram: bytes) -> Request:
    kind = "RRQ" if opcode == 1 else "WRQ"
    if len(datagram) > MAX_REQUEST_SIZE:
        raise TFTPProtocolError(
            f"{kind} longer than {MAX_REQUEST_SIZE} bytes", ErrorCode.NOT_DEFINED
        )
    fields = _split_fields(datagram[2:], kind)
    if not fields:
        raise TFTPProtocolError(f"{kind} without a filename")
    if not fields[0]:
        raise TFTPProtocolError(f"{kind} with empty filename")
    if len(fields) < 2:
        raise TFTPProtocolError(f"{kind} without a mode")
    raw_filename, raw_mode = fields[0], fields[1]
    if len(raw_filename) > MAX_FILENAME_SIZE:
        raise TFTPProtocolError(
            f"filename longer than {MAX_FILENAME_SIZE} bytes", ErrorCode.NOT_DEFINED
        )
    if not raw_mode:
        raise TFTPProtocolError(f"{kind} with empty mode")
    mode = _MODES.get(raw_mode.lower())
    if mode is None:
        raise TFTPProtocolError(f"unknown transfer mode in {kind}")
    options = _parse_option_fields(fields[2:], kind)
    filename = raw_filename.decode("utf-8", "surrogateescape")
    if opcode == 1:
        return RRQ(filename, mode, options)
    return WRQ(filename, mode, options)
