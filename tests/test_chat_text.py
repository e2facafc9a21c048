"""Chat text rules: charsets, sanitising terminal control, nickname and room names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc.chat.text import (
    DEFAULT_CHARSET,
    MAX_NICK_LENGTH,
    CharsetError,
    lookup_charset,
    name_key,
    nick_problem,
    room_problem,
    sanitize,
)

LEGACY = ["gb2312", "gbk", "gb18030", "big5", "shift_jis", "euc-jp", "euc-kr", "koi8-r",
          "latin-1", "cp1252", "iso-8859-15", "ascii", "utf-8"]


def test_default_is_utf8() -> None:
    assert DEFAULT_CHARSET.name == "utf-8"
    assert lookup_charset("UTF8") is DEFAULT_CHARSET


@pytest.mark.parametrize("label", ["gb2312", "GB2312", "gbk", "cp936", "x-gbk", "euc-cn"])
def test_gb2312_reads_as_gbk_like_browsers(label: str) -> None:
    charset = lookup_charset(label)
    assert (charset.name, charset.decoder, charset.encoder) == ("gbk", "gb18030", "gbk")
    assert charset.decode("你好".encode("gb2312")) == "你好"
    # 镕 is GBK, not GB2312: strict gb2312 would turn it into U+FFFD.
    assert charset.decode("镕".encode("gbk")) == "镕"
    assert charset.encode("你好, 镕") == "你好, 镕".encode("gbk")


def test_unencodable_text_becomes_question_marks() -> None:
    assert lookup_charset("latin-1").encode("café 你好") == b"caf\xe9 ??"


@pytest.mark.parametrize(
    "label", ["utf-16", "utf-32-le", "rot13", "zlib", "base64", "cp500", "nope", "", "x" * 100]
)
def test_unusable_charsets_are_refused(label: str) -> None:
    with pytest.raises(CharsetError):
        lookup_charset(label)


@given(label=st.sampled_from(LEGACY), data=st.binary(max_size=200))
def test_decoding_never_raises_and_keeps_no_newline(label: str, data: bytes) -> None:
    text = lookup_charset(label).decode(data.replace(b"\n", b""))
    assert "\n" not in text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[2J\x1b[Hclear", "clear"),
        ("\x1b]0;evil title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bPdevice control\x1b\\ok", "ok"),
        ("bell\x07 backspace\x08 nul\x00", "bell backspace nul"),
        ("tab\there", "tab here"),
        ("\x9b31mc1 csi", "c1 csi"),
        ("\x1bc reset", " reset"),
        ("\x1b(B charset", " charset"),
        ("del\x7f", "del"),
        ("line\u2028separator", "lineseparator"),
        ("abc\u202eevil\u202c", "abcevil"),
        ("emoji 👍🏽 family 👨‍👩‍👧", "emoji 👍🏽 family 👨‍👩‍👧"),
        ("中文 русский עברית", "中文 русский עברית"),
        ("lone escape at end \x1b", "lone escape at end "),
    ],
)
def test_sanitize_removes_terminal_control(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


@given(st.text())
def test_sanitized_text_holds_no_control_character(text: str) -> None:
    clean = sanitize(text)
    for char in clean:
        assert unicodedata.category(char) != "Cc", repr(char)
        assert char not in "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))))
def test_printable_text_passes_unchanged(text: str) -> None:
    assert sanitize(text) == text


@pytest.mark.parametrize(
    "nick", ["bob", "Bob_2", "_x", "a-b", "李雷", "Дмитрий", "नमस्ते", "x" * MAX_NICK_LENGTH]
)
def test_valid_nicknames(nick: str) -> None:
    assert nick_problem(nick) is None


@pytest.mark.parametrize(
    "nick",
    ["", "1abc", "-x", "bob smith", "bob!", "a*b", "x" * (MAX_NICK_LENGTH + 1), "\ufffdx",
     "#room", "/nick"],
)
def test_invalid_nicknames(nick: str) -> None:
    assert nick_problem(nick)


@pytest.mark.parametrize(("room", "ok"), [("lobby", True), ("rust-lang", True), ("2024", True),
                                          ("", False), ("a b", False), ("x" * 33, False)])
def test_room_names(room: str, ok: bool) -> None:
    assert (room_problem(room) is None) is ok


def test_name_key_folds_case_and_compatibility_forms() -> None:
    assert name_key("Bob") == name_key("BOB") == name_key("bob")
    assert name_key("\uff22\uff2f\uff22") == name_key("bob")  # full-width letters
    assert name_key("Straße") == name_key("STRASSE")
