"""Tests for netsvc.tftp.options: server negotiation and client OACK checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc.tftp.options import (
    MAX_BLKSIZE,
    Negotiated,
    OptionNegotiationError,
    ServerOptionPolicy,
    check_oack,
    negotiate,
    request_options,
)
from netsvc.tftp.packets import OACK, ErrorCode, TFTPProtocolError, parse

DEFAULT = ServerOptionPolicy()
LENIENT = ServerOptionPolicy(strict=False)

Pairs = list[tuple[str, str]]


def _read(
    requested: Pairs, policy: ServerOptionPolicy = DEFAULT, tsize: int | None = 1000
) -> Negotiated:
    return negotiate(requested, policy, is_read=True, tsize=tsize)


def _write(requested: Pairs, policy: ServerOptionPolicy = DEFAULT) -> Negotiated:
    return negotiate(requested, policy, is_read=False, tsize=None)


# --- server: granting ------------------------------------------------------------------------


def test_no_options_means_no_oack() -> None:
    result = _read([])
    assert result == Negotiated()
    assert result.oack_items() == ()
    assert (result.blksize, result.windowsize, result.timeout, result.tsize) == (512, 1, None, None)


def test_all_options_granted_in_request_order() -> None:
    result = _read(
        [("tsize", "0"), ("windowsize", "8"), ("timeout", "3"), ("blksize", "1428")],
        tsize=12345,
    )
    assert result.oack_items() == (
        ("tsize", "12345"),
        ("windowsize", "8"),
        ("timeout", "3"),
        ("blksize", "1428"),
    )
    assert (result.blksize, result.windowsize, result.timeout, result.tsize) == (1428, 8, 3, 12345)


def test_names_are_case_insensitive_and_answered_lowercase() -> None:
    result = _read([("BlkSize", "1024"), ("TSIZE", "0")], tsize=5)
    assert result.oack_items() == (("blksize", "1024"), ("tsize", "5"))


def test_unknown_options_are_ignored() -> None:
    result = _read([("multicast", ""), ("utimeout", "junk"), ("blksize", "600"), ("x", "-")])
    assert result.oack_items() == (("blksize", "600"),)


def test_non_ascii_option_names_are_unknown() -> None:
    # U+212A KELVIN SIGN lowercases to "k": it must not smuggle in "blksize".
    assert _read([("bl\u212asize", "9")]).oack_items() == ()


@pytest.mark.parametrize(
    ("asked", "max_blksize", "granted"),
    [
        ("8", 65464, 8),
        ("512", 65464, 512),
        ("1428", 1428, 1428),
        ("1429", 1428, 1428),
        ("65464", 65464, 65464),
        ("65464", 1468, 1468),
        ("0001024", 65464, 1024),  # leading zeros are plain decimal
        ("9000", 8, 8),
    ],
)
def test_blksize_is_clamped_to_policy(asked: str, max_blksize: int, granted: int) -> None:
    result = _read([("blksize", asked)], ServerOptionPolicy(max_blksize=max_blksize))
    assert result.blksize == granted
    assert result.oack_items() == (("blksize", str(granted)),)


@pytest.mark.parametrize(
    ("asked", "max_windowsize", "granted"),
    [("1", 64, 1), ("16", 64, 16), ("64", 64, 64), ("65", 64, 64), ("65535", 65535, 65535)],
)
def test_windowsize_is_clamped_to_policy(asked: str, max_windowsize: int, granted: int) -> None:
    policy = ServerOptionPolicy(max_windowsize=max_windowsize)
    assert _read([("windowsize", asked)], policy).windowsize == granted


@pytest.mark.parametrize("timeout", ["1", "5", "255"])
def test_timeout_is_echoed(timeout: str) -> None:
    result = _read([("timeout", timeout)])
    assert result.timeout == int(timeout)
    assert result.oack_items() == (("timeout", timeout),)


@pytest.mark.parametrize(
    ("policy", "name", "value"),
    [
        (ServerOptionPolicy(allow_blksize=False), "blksize", "1024"),
        (ServerOptionPolicy(allow_windowsize=False), "windowsize", "4"),
        (ServerOptionPolicy(allow_timeout=False), "timeout", "2"),
        (ServerOptionPolicy(allow_tsize=False), "tsize", "0"),
    ],
)
def test_disallowed_options_are_not_granted(
    policy: ServerOptionPolicy, name: str, value: str
) -> None:
    assert _read([(name, value)], policy).oack_items() == ()
    assert _write([(name, value)], policy).oack_items() == ()


def test_disallowed_option_bad_value_is_not_an_error() -> None:
    assert _read([("blksize", "x")], ServerOptionPolicy(allow_blksize=False)) == Negotiated()


# --- server: tsize ---------------------------------------------------------------------------


def test_tsize_rrq_answers_real_size() -> None:
    result = _read([("tsize", "0")], tsize=987654321)
    assert result.tsize == 987654321
    assert result.oack_items() == (("tsize", "987654321"),)


def test_tsize_rrq_zero_byte_file() -> None:
    assert _read([("tsize", "0")], tsize=0).oack_items() == (("tsize", "0"),)


def test_tsize_rrq_unknown_size_omits_option() -> None:
    result = _read([("tsize", "0"), ("blksize", "1024")], tsize=None)
    assert result.tsize is None
    assert result.oack_items() == (("blksize", "1024"),)


def test_tsize_rrq_nonzero_request_value_is_ignored() -> None:
    assert _read([("tsize", "77")], tsize=5).tsize == 5


def test_tsize_wrq_returns_announced_size_and_echoes_it() -> None:
    result = negotiate([("tsize", "4096")], DEFAULT, is_read=False, tsize=123)
    assert result.tsize == 4096
    assert result.oack_items() == (("tsize", "4096"),)


def test_tsize_wrq_over_limit_is_disk_full() -> None:
    policy = ServerOptionPolicy(max_tsize=1000)
    assert _write([("tsize", "1000")], policy).tsize == 1000
    with pytest.raises(OptionNegotiationError) as info:
        _write([("tsize", "1001")], policy)
    assert info.value.code is ErrorCode.DISK_FULL
    # A limit is not a bad value: lenient servers refuse too.
    with pytest.raises(OptionNegotiationError):
        _write([("tsize", "1001")], ServerOptionPolicy(max_tsize=1000, strict=False))


def test_negative_tsize_argument_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        _read([("tsize", "0")], tsize=-1)


# --- server: duplicates ----------------------------------------------------------------------


def test_duplicates_last_wins_at_first_position() -> None:
    result = _read([("blksize", "1024"), ("timeout", "2"), ("BLKSIZE", "2048")])
    assert result.blksize == 2048
    assert result.oack_items() == (("blksize", "2048"), ("timeout", "2"))


def test_duplicates_only_the_winning_value_is_validated() -> None:
    assert _read([("blksize", "junk"), ("blksize", "1024")]).blksize == 1024
    with pytest.raises(OptionNegotiationError):
        _read([("blksize", "1024"), ("blksize", "junk")])


# --- server: bad values ----------------------------------------------------------------------

BAD_VALUES: list[tuple[str, str]] = [
    ("blksize", ""),
    ("blksize", "abc"),
    ("blksize", "-1"),
    ("blksize", "+1024"),
    ("blksize", " 1024"),
    ("blksize", "1024 "),
    ("blksize", "1_024"),
    ("blksize", "10.5"),
    ("blksize", "0x400"),
    ("blksize", "\u0661\u0660\u0662\u0664"),  # Arabic-Indic digits: isdigit() but not ASCII
    ("blksize", "1" * 21),
    ("blksize", "0" * 21),
    ("blksize", "0"),
    ("blksize", "7"),
    ("blksize", "65465"),
    ("blksize", "99999999999999999999"),
    ("windowsize", "0"),
    ("windowsize", "65536"),
    ("windowsize", "-4"),
    ("timeout", "0"),
    ("timeout", "256"),
    ("timeout", "1.5"),
    ("tsize", "-1"),
    ("tsize", ""),
    ("tsize", "1e6"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_values_are_option_negotiation_errors(name: str, value: str) -> None:
    for is_read in (True, False):
        with pytest.raises(OptionNegotiationError) as info:
            negotiate([(name, value)], DEFAULT, is_read=is_read, tsize=10)
        assert info.value.code is ErrorCode.OPTION_NEGOTIATION
        assert isinstance(info.value, TFTPProtocolError)


_RFC_MAX = {"blksize": 65464, "windowsize": 65535}


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_lenient_policy_drops_bad_values(name: str, value: str) -> None:
    other = ("timeout", "4") if name != "timeout" else ("blksize", "1024")
    result = negotiate([(name, value), other], LENIENT, is_read=True, tsize=10)
    granted = dict(result.oack_items())
    too_large = (
        name in _RFC_MAX
        and value.isascii()
        and value.isdigit()
        and len(value) <= 20
        and int(value) > _RFC_MAX[name]
    )
    # Too-large sizes are clamped (like tftp-hpa); every other bad value drops the option.
    assert (name in granted) is too_large
    assert granted[other[0]] == other[1]


def test_lenient_policy_clamps_oversized_blksize() -> None:
    policy = ServerOptionPolicy(strict=False, max_blksize=1468)
    assert _read([("blksize", "70000")], policy).blksize == 1468
    assert _read([("blksize", "70000")], LENIENT).blksize == MAX_BLKSIZE
    assert _read([("windowsize", "70000")], LENIENT).windowsize == LENIENT.max_windowsize


# --- policy and Negotiated validation --------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_blksize": 7},
        {"max_blksize": 65465},
        {"max_windowsize": 0},
        {"max_windowsize": 65536},
        {"max_tsize": -1},
    ],
)
def test_policy_validates_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ServerOptionPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blksize": 7},
        {"windowsize": 0},
        {"timeout": 0},
        {"tsize": -1},
        {"granted": ("timeout",)},
        {"granted": ("tsize",)},
        {"granted": ("blksize", "blksize")},
        {"granted": ("multicast",)},
    ],
)
def test_negotiated_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Negotiated(**kwargs)  # type: ignore[arg-type]


def test_oack_items_encode_as_oack() -> None:
    result = _read([("blksize", "1024"), ("tsize", "0")], tsize=42)
    wire = OACK(result.oack_items()).encode()
    assert wire == b"\x00\x06blksize\x001024\x00tsize\x0042\x00"
    assert parse(wire) == OACK(result.oack_items())


# --- client: request_options -----------------------------------------------------------------


def test_request_options_builds_pairs() -> None:
    assert request_options() == ()
    assert request_options(blksize=1428, windowsize=16, timeout=2, tsize=0) == (
        ("blksize", "1428"),
        ("windowsize", "16"),
        ("timeout", "2"),
        ("tsize", "0"),
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"blksize": 7}, {"blksize": 65465}, {"windowsize": 0}, {"timeout": 256}, {"tsize": -1}],
)
def test_request_options_refuses_out_of_range(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        request_options(**kwargs)


# --- client: check_oack ----------------------------------------------------------------------

ASKED = request_options(blksize=1428, windowsize=16, timeout=3, tsize=0)


def test_check_oack_accepts_everything_granted() -> None:
    result = check_oack(
        ASKED, [("blksize", "1428"), ("windowsize", "16"), ("timeout", "3"), ("tsize", "99")]
    )
    assert (result.blksize, result.windowsize, result.timeout, result.tsize) == (1428, 16, 3, 99)
    assert result.granted == ("blksize", "windowsize", "timeout", "tsize")


def test_check_oack_accepts_smaller_values_and_omissions() -> None:
    result = check_oack(ASKED, [("BLKSIZE", "512"), ("windowsize", "1")])
    assert (result.blksize, result.windowsize, result.timeout, result.tsize) == (512, 1, None, None)
    assert result.granted == ("blksize", "windowsize")


def test_check_oack_empty() -> None:
    assert check_oack(ASKED, []) == Negotiated()


@pytest.mark.parametrize(
    ("requested", "oack"),
    [
        ((), [("blksize", "512")]),
        (request_options(blksize=1024), [("tsize", "5")]),
        (request_options(tsize=0), [("windowsize", "1")]),
        (ASKED, [("blksize", "1429")]),
        (ASKED, [("windowsize", "17")]),
        (ASKED, [("timeout", "2")]),
        (ASKED, [("timeout", "4")]),
        (ASKED, [("blksize", "7")]),
        (ASKED, [("blksize", "")]),
        (ASKED, [("blksize", "+512")]),
        (ASKED, [("windowsize", "0")]),
        (ASKED, [("tsize", "-1")]),
        (ASKED, [("tsize", "x")]),
        (ASKED, [("blksize", "512"), ("blksize", "512")]),
        (ASKED, [("blksize", "512"), ("BLKSIZE", "512")]),
        (ASKED, [("bl\u212asize", "512")]),
        (ASKED, [("multicast", "1")]),
    ],
)
def test_check_oack_refuses(requested: Pairs, oack: Pairs) -> None:
    with pytest.raises(OptionNegotiationError) as info:
        check_oack(requested, oack)
    assert info.value.code is ErrorCode.OPTION_NEGOTIATION


def test_check_oack_tsize_limit_is_disk_full() -> None:
    asked = request_options(tsize=0)
    assert check_oack(asked, [("tsize", "100")], max_tsize=100).tsize == 100
    with pytest.raises(OptionNegotiationError) as info:
        check_oack(asked, [("tsize", "101")], max_tsize=100)
    assert info.value.code is ErrorCode.DISK_FULL


def test_check_oack_requested_unknown_option_is_ignored() -> None:
    result = check_oack([("rollover", "0"), ("blksize", "1024")], [("rollover", "0")])
    assert result == Negotiated()


# --- properties: server and client agree -----------------------------------------------------


@given(
    blksize=st.none() | st.integers(8, 65464),
    windowsize=st.none() | st.integers(1, 65535),
    timeout=st.none() | st.integers(1, 255),
    tsize=st.none() | st.integers(0, 10**12),
    max_blksize=st.integers(8, 65464),
    max_windowsize=st.integers(1, 65535),
    is_read=st.booleans(),
    file_size=st.none() | st.integers(0, 10**12),
)
def test_client_accepts_what_server_grants(
    blksize: int | None,
    windowsize: int | None,
    timeout: int | None,
    tsize: int | None,
    max_blksize: int,
    max_windowsize: int,
    is_read: bool,
    file_size: int | None,
) -> None:
    asked = request_options(blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=tsize)
    policy = ServerOptionPolicy(max_blksize=max_blksize, max_windowsize=max_windowsize)
    server = negotiate(asked, policy, is_read=is_read, tsize=file_size)
    assert {name for name, _ in server.oack_items()} <= {name for name, _ in asked}
    if blksize is not None:
        assert server.blksize == min(blksize, max_blksize)
    if windowsize is not None:
        assert server.windowsize == min(windowsize, max_windowsize)
    client = check_oack(asked, server.oack_items())
    assert client == server


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=8), st.booleans())
def test_negotiate_raises_only_negotiation_errors(requested: Pairs, is_read: bool) -> None:
    for policy in (DEFAULT, LENIENT):
        try:
            result = negotiate(requested, policy, is_read=is_read, tsize=7)
        except OptionNegotiationError:
            assert policy.strict
        else:
            requested_names = {name.lower() for name, _ in requested if name.isascii()}
            assert set(result.granted) <= requested_names
