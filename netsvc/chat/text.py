"""Text handling for the chat: character sets, sanitising, nickname and room names.

Pure functions and value objects, no I/O. Every byte string that arrives from a client is
decoded with ``errors="replace"`` (undecodable bytes become U+FFFD, nothing raises), and
every text sent to a client is encoded with ``errors="replace"`` (characters its charset
cannot show become ``?``).
"""

from __future__ import annotations

import codecs
import re
import unicodedata

import attrs

__all__ = [
    "DEFAULT_CHARSET",
    "MAX_NICK_LENGTH",
    "MAX_ROOM_LENGTH",
    "Charset",
    "CharsetError",
    "lookup_charset",
    "name_key",
    "nick_problem",
    "room_problem",
    "sanitize",
]

MAX_NICK_LENGTH = 24
MAX_ROOM_LENGTH = 32


class CharsetError(ValueError):
    """A charset name that is unknown or cannot carry a line protocol."""


@attrs.frozen
class Charset:
    """How one client's bytes become text and back.

    ``decoder`` may be a superset of ``encoder``: the WHATWG Encoding Standard (what web
    browsers do) reads "gb2312" as GBK and decodes it with GB18030, because real
    "gb2312" clients send GBK characters; Python's strict ``gb2312`` codec would turn
    those into U+FFFD.
    """

    #: The name shown to users (``/charset``).
    name: str
    #: Python codec used to decode the client's lines.
    decoder: str
    #: Python codec used to encode lines for the client.
    encoder: str

    def decode(self, data: bytes) -> str:
        """Bytes from the client as text; undecodable bytes become U+FFFD."""
        return data.decode(self.decoder, "replace")

    def encode(self, text: str) -> bytes:
        """Text for the client; characters the charset lacks become ``?``."""
        return text.encode(self.encoder, "replace")


#: Labels that the WHATWG Encoding Standard maps to GBK.
_GBK_LABELS = frozenset(
    {"gb2312", "gbk", "x-gbk", "cp936", "chinese", "csgb2312", "csiso58gb231280",
     "iso-ir-58", "gb_2312", "gb_2312-80", "euc-cn", "euccn"}
)

_UTF8 = Charset("utf-8", "utf-8", "utf-8")
DEFAULT_CHARSET = _UTF8

#: Bytes that framing and command parsing rely on; a charset must map them to themselves.
_PROTOCOL_TEXT = "\r\n /*#<>-_.:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def lookup_charset(label: str) -> Charset:
    """The :class:`Charset` for a user-supplied label (``utf-8``, ``gb2312``, ``latin-1``...).

    Raises :class:`CharsetError` for unknown names, for codecs that are not text
    encodings (``rot13``, ``zlib``), and for encodings that are not ASCII-compatible
    (UTF-16, UTF-32, EBCDIC): line framing and commands need ``\\n`` and ``/`` to be the
    ASCII bytes, with no multi-byte character containing them.
    """
    cleaned = label.strip().lower()
    if cleaned in _GBK_LABELS:
        return Charset("gbk", "gb18030", "gbk")
    if not cleaned or len(cleaned) > 40:
        raise CharsetError(f"unknown charset {label!r}")
    try:
        info = codecs.lookup(cleaned)
    except LookupError:
        raise CharsetError(f"unknown charset {label!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise CharsetError(f"{label!r} is not a text encoding")
    try:
        ascii_safe = _PROTOCOL_TEXT.encode(info.name) == _PROTOCOL_TEXT.encode("ascii")
    except (UnicodeError, LookupError):
        ascii_safe = False
    if not ascii_safe or info.name.startswith(("utf-16", "utf-32", "utf_16", "utf_32")):
        raise CharsetError(f"{label!r} is not ASCII-compatible, so it cannot carry chat lines")
    if info.name in ("utf-8", "utf_8"):
        return _UTF8
    display = info.name.replace("_", "-")
    return Charset(display, info.name, info.name)


# Terminal control that must never reach another client's terminal:
# - ESC sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (ESC ] P X ^ _ ...
#   up to BEL or ST), and two-character escapes (ESC + one character);
# - the 8-bit forms of CSI/OSC/DCS/... (U+009B etc.) with their parameters;
# - every other C0 and C1 control character and DEL (TAB becomes a space first);
# - bidirectional overrides and isolates, which can make a line display as something
#   other than what was sent ("Trojan Source", CVE-2021-42574).
_TERMINAL_CONTROL = re.compile(
    r"""
      \x1b\[ [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?        # CSI ... final byte
    | \x1b[\]PX^_] .*? (?:\x07|\x1b\\|\x9c|$)              # OSC, DCS, SOS, PM, APC
    | \x9b [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?          # 8-bit CSI
    | [\x9d\x90\x98\x9e\x9f] .*? (?:\x07|\x1b\\|\x9c|$)    # 8-bit OSC, DCS, SOS, PM, APC
    | \x1b [\x20-\x2f]* [\x30-\x7e]?                       # other escapes (ESC ( B, ESC c)
    | [\x00-\x08\x0a-\x1f\x7f-\x9f]                        # the remaining controls
    | [\u2028\u2029\u202a-\u202e\u2066-\u2069]             # line separators, bidi controls
    """,
    re.VERBOSE | re.DOTALL,
)


def sanitize(text: str) -> str:
    """``text`` without terminal control sequences or control characters.

    Tabs become spaces; escape sequences are removed whole (``"\\x1b[31mred"`` gives
    ``"red"``), so nothing a client sends can move another client's cursor, change its
    colours or title, clear its screen or hide text. Printable text, including every
    script and emoji, passes unchanged.
    """
    if text.isprintable():  # the common case: one C-speed scan, no copy
        return text
    return _TERMINAL_CONTROL.sub("", text.replace("\t", " "))


def name_key(name: str) -> str:
    """The case-insensitive identity of a nickname or room name.

    NFKC folds compatibility forms (full-width ``\\uff22`` is ``B``), ``casefold`` folds
    case (``Straße`` is ``STRASSE``), so look-alike spellings cannot coexist.
    """
    return unicodedata.normalize("NFKC", name).casefold()


_NAME_PUNCTUATION = frozenset("_-")


def _is_name_char(char: str) -> bool:
    # Letters, combining marks (needed by many scripts) and decimal digits.
    return char in _NAME_PUNCTUATION or unicodedata.category(char)[0] in "LM" or (
        unicodedata.category(char) == "Nd"
    )


def _is_name(text: str) -> bool:
    return all(map(_is_name_char, text))


def nick_problem(nick: str) -> str | None:
    """Why ``nick`` is not a valid nickname, or ``None`` when it is.

    A nickname is 1 to :data:`MAX_NICK_LENGTH` characters: letters (any script, with
    their combining marks), digits, ``_`` and ``-``, starting with a letter or ``_``.
    """
    if not nick:
        return "a nickname cannot be empty"
    if len(nick) > MAX_NICK_LENGTH:
        return f"a nickname has at most {MAX_NICK_LENGTH} characters"
    first = nick[0]
    if not _is_name(nick) or not (first == "_" or unicodedata.category(first)[0] == "L"):
        return (
            "a nickname uses letters, digits, _ and - only, and starts with a letter or _"
        )
    return None


def room_problem(room: str) -> str | None:
    """Why ``room`` (without its leading ``#``) is not a valid room name, or ``None``."""
    if not room:
        return "a room name cannot be empty"
    if len(room) > MAX_ROOM_LENGTH:
        return f"a room name has at most {MAX_ROOM_LENGTH} characters"
    if not _is_name(room):
        return "a room name uses letters, digits, _ and - only"
    return None
