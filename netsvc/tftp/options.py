"""TFTP option negotiation policy (RFC 2347, 2348, 2349, 7440). Pure functions, no I/O.

Server side: :func:`negotiate` turns the options of a request into a :class:`Negotiated`
(what the transfer will use, and what goes in the OACK) under a :class:`ServerOptionPolicy`.
Client side: :func:`request_options` builds the options to send and :func:`check_oack`
validates the server's OACK against them.

Known options and their ranges:

============  ==============  ==========================================================
option        valid values    negotiation
============  ==============  ==========================================================
blksize       8..65464        server answers ``min(asked, policy.max_blksize)`` (RFC 2348)
windowsize    1..65535        server answers ``min(asked, policy.max_windowsize)`` (RFC 7440)
timeout       1..255 seconds  server echoes it unchanged or omits it (RFC 2349)
tsize         0..             RRQ: server answers the file size, if known exactly;
                              WRQ: server echoes the client's announced size (RFC 2349)
============  ==============  ==========================================================

Rules:

- Option names are case-insensitive and answered in lowercase. Unknown options are ignored
  (RFC 2347). The server never grants an option that was not requested, and the client
  refuses an OACK that does.
- Values are plain ASCII decimal: digits only, at most :data:`MAX_VALUE_DIGITS` of them;
  leading zeros are accepted (``"0512"`` is 512). A sign, whitespace, an empty value or
  anything else is a bad value.
- Duplicates: the **last** occurrence of an option wins (case-insensitively), and the OACK
  lists it once, at the position of its first occurrence. This is what atftpd does (it
  overwrites as it parses) and what tftp-hpa's values amount to (it applies every
  occurrence in turn, although it then lists the option twice in its OACK). Only the
  winning value is validated.
- Bad values: with ``ServerOptionPolicy(strict=True)`` (the default) a bad value of a known,
  allowed option raises :class:`OptionNegotiationError` (answered with ERROR 8). With
  ``strict=False`` the server behaves like tftp-hpa: a bad value drops the option from the
  OACK, and a blksize/windowsize above the RFC maximum is clamped like any large value.
- tsize on WRQ: a size above ``policy.max_tsize`` raises :class:`OptionNegotiationError`
  with code 3 ("disk full or allocation exceeded", as RFC 2349 suggests), in either mode.
  The announced size is also returned in :attr:`Negotiated.tsize` so that the caller can
  check free space itself.
- tsize on RRQ: RFC 2349 says the client sends 0; any valid value is accepted and ignored.
  The caller passes the exact size, or ``None`` when it is not known exactly (netascii
  conversion changes it): then the option is left out of the OACK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from netsvc.tftp.packets import ErrorCode, TFTPProtocolError

__all__ = [
    "BLKSIZE",
    "DEFAULT_BLKSIZE",
    "DEFAULT_WINDOWSIZE",
    "MAX_BLKSIZE",
    "MAX_TIMEOUT",
    "MAX_VALUE_DIGITS",
    "MAX_WINDOWSIZE",
    "MIN_BLKSIZE",
    "MIN_TIMEOUT",
    "MIN_WINDOWSIZE",
    "TIMEOUT",
    "TSIZE",
    "WINDOWSIZE",
    "Negotiated",
    "OptionNegotiationError",
    "ServerOptionPolicy",
    "check_oack",
    "negotiate",
    "request_options",
]

BLKSIZE = "blksize"
TIMEOUT = "timeout"
TSIZE = "tsize"
WINDOWSIZE = "windowsize"

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255
DEFAULT_WINDOWSIZE = 1
MIN_WINDOWSIZE = 1
MAX_WINDOWSIZE = 65535
#: Longest digit string accepted as a value: enough for any 64-bit size.
MAX_VALUE_DIGITS = 20

_KNOWN = frozenset({BLKSIZE, TIMEOUT, TSIZE, WINDOWSIZE})


class OptionNegotiationError(TFTPProtocolError):
    """Option negotiation failed; ``code`` is 8 unless stated otherwise (tsize: 3)."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.OPTION_NEGOTIATION) -> None:
        super().__init__(reason, code)


def _in_range(low: int, high: int) -> list[Callable[[Any, attrs.Attribute[int], int], Any]]:
    return [attrs.validators.ge(low), attrs.validators.le(high)]


def _optional_non_negative(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be None or >= 0, not {value!r}")


@attrs.frozen
class ServerOptionPolicy:
    """What a server is willing to grant.

    ``max_windowsize`` bounds memory as well as burst size: a sender keeps up to
    ``windowsize * blksize`` bytes per session for retransmission. The maxima only clamp
    negotiated values: a client that does not ask for blksize still gets RFC 1350's 512,
    even when ``max_blksize`` is smaller.
    """

    #: Largest blksize granted; larger requests are clamped to it.
    max_blksize: int = attrs.field(
        default=MAX_BLKSIZE, validator=_in_range(MIN_BLKSIZE, MAX_BLKSIZE)
    )
    #: Largest windowsize granted; larger requests are clamped to it.
    max_windowsize: int = attrs.field(
        default=64, validator=_in_range(MIN_WINDOWSIZE, MAX_WINDOWSIZE)
    )
    allow_blksize: bool = True
    allow_windowsize: bool = True
    allow_timeout: bool = True
    allow_tsize: bool = True
    #: Largest file a WRQ may announce with tsize (None: no limit here).
    max_tsize: int | None = attrs.field(default=None, validator=_optional_non_negative)
    #: True: bad values raise (ERROR 8). False: bad values are ignored, like tftp-hpa.
    strict: bool = True


def _check_negotiated(instance: Negotiated) -> None:
    if len(set(instance.granted)) != len(instance.granted):
        raise ValueError("granted lists an option twice")
    unknown = set(instance.granted) - _KNOWN
    if unknown:
        raise ValueError(f"granted lists unknown options: {sorted(unknown)}")
    if TIMEOUT in instance.granted and instance.timeout is None:
        raise ValueError("timeout granted without a value")
    if TSIZE in instance.granted and instance.tsize is None:
        raise ValueError("tsize granted without a value")


def _to_names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen
class Negotiated:
    """The outcome of option negotiation: what the transfer uses.

    ``granted`` lists the options acknowledged in the OACK (lowercase, in order); options not
    in it keep their defaults. An empty ``granted`` means no OACK: the transfer proceeds as
    plain RFC 1350 (DATA 1 or ACK 0 answers the request).
    """

    blksize: int = attrs.field(
        default=DEFAULT_BLKSIZE, validator=_in_range(MIN_BLKSIZE, MAX_BLKSIZE)
    )
    windowsize: int = attrs.field(
        default=DEFAULT_WINDOWSIZE, validator=_in_range(MIN_WINDOWSIZE, MAX_WINDOWSIZE)
    )
    #: Retransmission timeout in seconds requested by the client, if granted.
    timeout: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_in_range(MIN_TIMEOUT, MAX_TIMEOUT)),
    )
    #: RRQ: size of the file being sent; WRQ: size the client announced.
    tsize: int | None = attrs.field(default=None, validator=_optional_non_negative)
    granted: tuple[str, ...] = attrs.field(default=(), converter=_to_names)

    def __attrs_post_init__(self) -> None:
        _check_negotiated(self)

    def oack_items(self) -> tuple[tuple[str, str], ...]:
        """The (name, value) pairs for the OACK: granted options only, lowercase names."""
        values = {
            BLKSIZE: self.blksize,
            WINDOWSIZE: self.windowsize,
            TIMEOUT: self.timeout,
            TSIZE: self.tsize,
        }
        return tuple((name, str(values[name])) for name in self.granted)


def _collapse(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lowercase names; the last value wins, at the first occurrence's position."""
    result: dict[str, str] = {}
    for name, value in pairs:
        # Non-ASCII names are never ours (and str.lower maps e.g. KELVIN SIGN to "k").
        if name.isascii():
            result[name.lower()] = value
    return result


def _parse_uint(name: str, raw: str) -> int:
    if not raw:
        raise OptionNegotiationError(f"{name}: empty value")
    if len(raw) > MAX_VALUE_DIGITS:
        raise OptionNegotiationError(f"{name}: value too long")
    # isascii() first: str.isdigit() also accepts e.g. superscript and Arabic-Indic digits.
    if not (raw.isascii() and raw.isdigit()):
        raise OptionNegotiationError(f"{name}: value is not a decimal integer")
    return int(raw)


def _parse_ranged(name: str, raw: str, low: int, high: int | None) -> int:
    value = _parse_uint(name, raw)
    if value < low or (high is not None and value > high):
        bound = f"{low}.." if high is None else f"{low}..{high}"
        raise OptionNegotiationError(f"{name}: value out of range {bound}")
    return value


def _server_value(
    name: str, raw: str, low: int, high: int | None, *, strict: bool, clamp_high: bool
) -> int | None:
    """The requested value, or None when a lenient server drops the option."""
    try:
        return _parse_ranged(name, raw, low, high)
    except OptionNegotiationError:
        if strict:
            raise
    # Lenient path: mirror tftp-hpa (clamp large sizes, drop everything else).
    if clamp_high and high is not None:
        try:
            value = _parse_uint(name, raw)
        except OptionNegotiationError:
            return None
        if value > high:
            return high
    return None


def negotiate(
    requested: Sequence[tuple[str, str]],
    policy: ServerOptionPolicy,
    *,
    is_read: bool,
    tsize: int | None,
) -> Negotiated:
    """Server side: decide which of the ``requested`` options (from an RRQ/WRQ) to grant.

    ``tsize`` is the exact size of the file an RRQ will send, or ``None`` when it is not
    known exactly; it is ignored for a WRQ. Raises :class:`OptionNegotiationError` (its
    ``code`` is what to answer: 8, or 3 for a WRQ tsize above ``policy.max_tsize``).
    """
    if tsize is not None and tsize < 0:
        raise ValueError(f"tsize must be None or >= 0, not {tsize!r}")
    strict = policy.strict
    blksize = DEFAULT_BLKSIZE
    windowsize = DEFAULT_WINDOWSIZE
    timeout: int | None = None
    size: int | None = None
    granted: list[str] = []
    for name, raw in _collapse(requested).items():
        if name == BLKSIZE and policy.allow_blksize:
            value = _server_value(
                name, raw, MIN_BLKSIZE, MAX_BLKSIZE, strict=strict, clamp_high=True
            )
            if value is None:
                continue
            blksize = min(value, policy.max_blksize)
        elif name == WINDOWSIZE and policy.allow_windowsize:
            value = _server_value(
                name, raw, MIN_WINDOWSIZE, MAX_WINDOWSIZE, strict=strict, clamp_high=True
            )
            if value is None:
                continue
            windowsize = min(value, policy.max_windowsize)
        elif name == TIMEOUT and policy.allow_timeout:
            # The client must get exactly its own value back, so no clamping here.
            value = _server_value(
                name, raw, MIN_TIMEOUT, MAX_TIMEOUT, strict=strict, clamp_high=False
            )
            if value is None:
                continue
            timeout = value
        elif name == TSIZE and policy.allow_tsize:
            value = _server_value(name, raw, 0, None, strict=strict, clamp_high=False)
            if value is None:
                continue
            if is_read:
                if tsize is None:
                    continue
                size = tsize
            else:
                if policy.max_tsize is not None and value > policy.max_tsize:
                    raise OptionNegotiationError("file too large", ErrorCode.DISK_FULL)
                size = value
        else:
            continue
        granted.append(name)
    return Negotiated(
        blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=size, granted=granted
    )


def request_options(
    *,
    blksize: int | None = None,
    windowsize: int | None = None,
    timeout: int | None = None,
    tsize: int | None = None,
) -> tuple[tuple[str, str], ...]:
    """Client side: the options to put in a request (``None`` leaves an option out).

    For an RRQ pass ``tsize=0`` to ask for the file size; for a WRQ pass the size being
    sent. Raises :class:`ValueError` for values outside the RFC ranges.
    """
    wanted = (
        (BLKSIZE, blksize, MIN_BLKSIZE, MAX_BLKSIZE),
        (WINDOWSIZE, windowsize, MIN_WINDOWSIZE, MAX_WINDOWSIZE),
        (TIMEOUT, timeout, MIN_TIMEOUT, MAX_TIMEOUT),
        (TSIZE, tsize, 0, 10**MAX_VALUE_DIGITS - 1),
    )
    options = []
    for name, value, low, high in wanted:
        if value is None:
            continue
        if not low <= value <= high:
            raise ValueError(f"{name} must be in {low}..{high}, not {value!r}")
        options.append((name, str(value)))
    return tuple(options)


def check_oack(
    requested: Sequence[tuple[str, str]],
    oack_options: Sequence[tuple[str, str]],
    *,
    max_tsize: int | None = None,
) -> Negotiated:
    """Client side: validate an OACK against the options the client ``requested``.

    Refused (:class:`OptionNegotiationError`, answer ERROR 8): an option that was not
    requested, an option listed twice, a bad value, a blksize or windowsize larger than
    requested, a timeout different from the one requested. Smaller blksize/windowsize are
    accepted. A tsize is accepted as the server states it (RRQ: the file size; WRQ: the
    echo), but with ``max_tsize`` set a larger one raises with code 3 ("disk full"), as RFC
    2349 suggests for a file too large to receive. Options the client requested but this
    module does not know are accepted and otherwise ignored.
    """
    asked = _collapse(requested)
    blksize = DEFAULT_BLKSIZE
    windowsize = DEFAULT_WINDOWSIZE
    timeout: int | None = None
    size: int | None = None
    granted: list[str] = []
    seen: set[str] = set()
    for raw_name, raw in oack_options:
        name = raw_name.lower() if raw_name.isascii() else raw_name
        if name in seen:
            raise OptionNegotiationError(f"OACK lists {name} twice")
        seen.add(name)
        if name not in asked:
            raise OptionNegotiationError("OACK grants an option that was not requested")
        if name == BLKSIZE:
            blksize = _parse_ranged(name, raw, MIN_BLKSIZE, MAX_BLKSIZE)
            if blksize > _parse_uint(name, asked[name]):
                raise OptionNegotiationError("OACK blksize larger than requested")
        elif name == WINDOWSIZE:
            windowsize = _parse_ranged(name, raw, MIN_WINDOWSIZE, MAX_WINDOWSIZE)
            if windowsize > _parse_uint(name, asked[name]):
                raise OptionNegotiationError("OACK windowsize larger than requested")
        elif name == TIMEOUT:
            timeout = _parse_ranged(name, raw, MIN_TIMEOUT, MAX_TIMEOUT)
            if timeout != _parse_uint(name, asked[name]):
                raise OptionNegotiationError("OACK timeout differs from the request")
        elif name == TSIZE:
            size = _parse_uint(name, raw)
            if max_tsize is not None and size > max_tsize:
                raise OptionNegotiationError("file too large", ErrorCode.DISK_FULL)
        else:
            continue
        granted.append(name)
    return Negotiated(
        blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=size, granted=granted
    )
