"""Option values of the echo, chat and broadcast plugins, alone and in the suite.

A bad value is a usage error whose message names the option (as both ``twistd
netsvc-echo --port`` and ``twistd netsvc --echo-port`` spell it: ``port``; or both
spellings when they share nothing: ``--endpoint (--chat in the suite)``), quotes the
value and says what the option takes; a good value reaches the service it configures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.application.service import IServiceCollection
from twisted.python import usage

from netsvc import broadcast_tap, chat_tap, echo_tap, tap, tapkit
from netsvc.broadcast.wire import MAX_NAME_BYTES, MAX_SERVICES, MAX_TTL, ServiceEntry
from netsvc.listening import TCPListenService, UDPListenService


class Plugin:
    """One plugin: its standalone options, its suite prefix and what switches it on."""

    def __init__(
        self,
        module: Any,
        suite_spec: tapkit.ServiceSpec,
        standalone_args: list[str],
        suite_args: list[str],
    ) -> None:
        self.module = module
        self.prefix = f"{suite_spec.name}-"
        self.suite_spec = suite_spec
        self.standalone_args = standalone_args
        self.suite_args = suite_args

    def spelling(self, suite: bool, option: str) -> str:
        """``option`` (a standalone name) as the mode spells it, without dashes: in the
        suite ``<prefix><option>`` unless the spec names it otherwise (``--chat``)."""
        if not suite:
            return option
        for param in self.suite_spec.params:
            if param.name == option and param.suite_name:
                return param.suite_name
        return f"{self.prefix}{option}"

    def error_name(self, option: str) -> str:
        """How an error names ``option`` to be right in both modes: the name both
        spellings share (``max-line``), or both spellings (``--endpoint`` is ``--chat``)."""
        suite_spelling = self.spelling(True, option)
        if suite_spelling == f"{self.prefix}{option}":
            return option
        return f"--{option} (--{suite_spelling} in the suite)"

    def argv(self, suite: bool, pairs: list[tuple[str, str]]) -> list[str]:
        """The command line giving each ``(option, value)`` pair, plus the switches."""
        argv = list(self.suite_args if suite else self.standalone_args)
        for option, value in pairs:
            argv += [f"--{self.spelling(suite, option)}", value]
        return argv

    def options_class(self, suite: bool) -> Any:  # a usage.Options subclass
        return tap.Options if suite else self.module.Options

    def takes(self, suite: bool, option: str) -> bool:
        name = self.spelling(suite, option)
        return any(row[0] == name for row in self.options_class(suite).optParameters)

    def service(self, suite: bool, options: usage.Options) -> Any:
        """What the spec's ``build`` made of ``options`` (the plugin's own subtree)."""
        if suite:
            root: Any = tap.makeService(options)
            return root.getServiceNamed(self.prefix.rstrip("-"))
        (child,) = list(self.module.makeService(options))
        return child


PLUGINS = {
    "echo": Plugin(echo_tap, echo_tap.ECHO_SPEC, [], []),
    "chat": Plugin(chat_tap, chat_tap.CHAT_SPEC, [], ["--chat", "7777"]),
    "broadcast": Plugin(
        broadcast_tap,
        broadcast_tap.BROADCAST_SPEC,
        ["--announce", "--discovery"],
        ["--announce", "--discovery"],
    ),
}
MODES = {"standalone": False, "suite": True}


def parse(options_class: type[usage.Options], argv: list[str]) -> usage.Options:
    options = options_class()
    options.parseOptions(argv)
    return options


def leaves(service: Any) -> list[Any]:
    if IServiceCollection.providedBy(service):
        return [leaf for child in service for leaf in leaves(child)]
    return [service]


#: (plugin, option, bad value, what the message must say besides the option and the value).
BAD_VALUES = [
    ("echo", "port", "70000", "whole number from 0 to 65535"),
    ("echo", "port", "-1", "from 0 to 65535"),
    ("echo", "port", "seven", "whole number"),
    ("echo", "port", "7.5", "whole number"),
    ("echo", "max-connections", "-1", "at least 0 (0: no limit)"),
    ("echo", "max-connections", "inf", "whole number"),
    ("echo", "max-per-peer", "-1", "at least 0 (0: no limit)"),
    ("echo", "max-per-peer", "nan", "whole number"),
    ("echo", "idle-timeout", "-1", "0 or more (0: never)"),
    ("echo", "idle-timeout", "inf", "0 or more"),
    ("echo", "idle-timeout", "nan", "0 or more"),
    ("echo", "idle-timeout", "soon", "number of seconds"),
    ("echo", "udp-rate", "-0.5", "0 or more (0: no limit)"),
    ("echo", "udp-rate", "inf", "0 or more"),
    ("echo", "udp-rate", "nan", "0 or more"),
    ("echo", "udp-burst", "0.5", "1 or more"),
    ("echo", "udp-burst", "-1", "1 or more"),
    ("echo", "udp-burst", "inf", "1 or more"),
    ("echo", "udp-burst", "nan", "1 or more"),
    ("chat", "port", "65536", "whole number from 0 to 65535"),
    ("chat", "port", "-7", "from 0 to 65535"),
    ("chat", "charset", "utf-16", "not ASCII-compatible"),
    ("chat", "charset", "klingon", "unknown charset"),
    ("chat", "extra-charset", "base64", "not a text encoding"),
    ("chat", "max-line", "0", "at least 1"),
    ("chat", "max-line", "4k", "whole number"),
    ("chat", "sendq", "-1", "at least 1"),
    ("chat", "sendq", "1e6", "whole number"),
    ("chat", "flood-lines", "-1", "0 or more (0: no limit)"),
    ("chat", "flood-lines", "inf", "0 or more"),
    ("chat", "flood-lines", "nan", "0 or more"),
    ("chat", "flood-line-burst", "0", "1 or more"),
    ("chat", "flood-line-burst", "inf", "1 or more"),
    ("chat", "flood-bytes", "-1", "0 or more (0: no limit)"),
    ("chat", "flood-bytes", "nan", "0 or more"),
    ("chat", "flood-byte-burst", "0", "above 0"),
    ("chat", "flood-byte-burst", "inf", "above 0"),
    ("chat", "flood-disconnect-after", "-1", "0 or more (0: never)"),
    ("chat", "flood-disconnect-after", "inf", "0 or more"),
    ("chat", "max-connections", "-1", "at least 0 (0: no limit)"),
    ("chat", "max-connections", "many", "whole number"),
    ("chat", "max-per-peer", "-1", "at least 0 (0: no limit)"),
    ("chat", "register-timeout", "-1", "0 or more (0: forever)"),
    ("chat", "register-timeout", "inf", "0 or more"),
    ("chat", "idle-timeout", "nan", "0 or more (0: never)"),
    ("chat", "idle-timeout", "inf", "0 or more"),
    ("chat", "history", "-3", "at least 0 (0: none)"),
    ("chat", "history", "inf", "whole number"),
    ("chat", "max-rooms", "0", "at least 1"),
    ("chat", "max-rooms-per-user", "0", "at least 1"),
    ("chat", "max-rooms-per-user", "nan", "whole number"),
    ("chat", "presence-limit", "-1", "at least 0 (0: always announce)"),
    ("chat", "endpoint", "bogus:1234", "server endpoint like tcp:7777 or a port number"),
    ("chat", "endpoint", "tcp:notaport", "server endpoint"),
    ("chat", "extra-endpoint", "bogus:1", "server endpoint like tcp:7778 or a port number"),
    ("chat", "extra-endpoint", "unix", "server endpoint"),
    ("chat", "lobby", "two words", "room name (empty: no lobby)"),
    ("chat", "lobby", "#", "cannot be empty"),
    ("chat", "lobby", "#" + "x" * 33, "at most 32 characters"),
    ("broadcast", "port", "0", "from 1 to 65535"),
    ("broadcast", "port", "65536", "from 1 to 65535"),
    ("broadcast", "port", "discovery", "whole number"),
    ("broadcast", "interval", "0", "0.1 or more"),
    ("broadcast", "interval", "0.01", "0.1 or more"),  # a broadcast flood on the LAN
    ("broadcast", "interval", "-10", "0.1 or more"),
    ("broadcast", "interval", "inf", "0.1 or more"),
    ("broadcast", "interval", "nan", "0.1 or more"),
    ("broadcast", "ttl", "-1", f"from 0 to {MAX_TTL} (0: three intervals)"),
    ("broadcast", "ttl", str(MAX_TTL + 1), f"from 0 to {MAX_TTL}"),
    ("broadcast", "ttl", "2.5", "whole number"),
    ("broadcast", "ttl", "inf", "whole number"),
    ("broadcast", "advertise", "tftp/udp", "NAME/PROTOCOL/PORT"),
    ("broadcast", "advertise", "tftp/udp/0", "NAME/PROTOCOL/PORT"),
    # An announcement carries MAX_SERVICES: the rest would be dropped without a word.
    (
        "broadcast",
        "advertise",
        ",".join(f"s{n}/udp/{1000 + n}" for n in range(MAX_SERVICES + 1)),
        f"at most {MAX_SERVICES} services (all an announcement carries), not {MAX_SERVICES + 1}",
    ),
    ("broadcast", "name", "a\x07", "without control characters (empty: the host name)"),
    ("broadcast", "name", "n" * (MAX_NAME_BYTES + 1), f"at most {MAX_NAME_BYTES} UTF-8 bytes"),
    ("broadcast", "name", "\u00e9" * (MAX_NAME_BYTES // 2 + 1), "UTF-8 bytes"),
    ("broadcast", "reply-rate", "0", "above 0"),
    ("broadcast", "reply-rate", "nan", "above 0"),
    ("broadcast", "reply-rate", "inf", "above 0"),
    ("broadcast", "reply-burst", "0.5", "1 or more"),
    ("broadcast", "reply-burst", "inf", "1 or more"),
    ("broadcast", "max-peers", "0", "at least 1"),
    ("broadcast", "max-peers", "-1", "at least 1"),
    ("broadcast", "max-peers", "1e3", "whole number"),
    ("broadcast", "addresses", "eth0", "IPv4 addresses"),
]


def _short(value: str) -> str:
    """``value`` for a test id: long ones cut short."""
    return value if len(value) <= 24 else f"{value[:16]}...({len(value)} chars)"


def _in_each_mode(
    rows: list[Any], options_of: Callable[[Any], list[str]], label_of: Callable[[Any], str]
) -> list[Any]:
    """``(plugin, *rest)`` rows as ``(plugin, suite, *rest)`` cases, standalone and in the
    suite, wherever that mode has every option of the row (the suite has no --chat-port)."""
    cases = []
    for plugin, *rest in rows:
        for mode, suite in MODES.items():
            if all(PLUGINS[plugin].takes(suite, option) for option in options_of(rest)):
                label = f"{plugin}-{mode}-{label_of(rest)}"
                cases.append(pytest.param(plugin, suite, *rest, id=label))
    return cases


def _bad_value_cases() -> list[Any]:
    return _in_each_mode(
        BAD_VALUES, lambda rest: [rest[0]], lambda rest: f"{rest[0]}={_short(rest[1])}"
    )


@pytest.mark.parametrize(("plugin", "suite", "option", "value", "allowed"), _bad_value_cases())
def test_a_bad_value_is_a_usage_error_naming_the_option(
    plugin: str, suite: bool, option: str, value: str, allowed: str
) -> None:
    spec = PLUGINS[plugin]
    with pytest.raises(usage.UsageError) as raised:
        parse(spec.options_class(suite), spec.argv(suite, [(option, value)]))
    message = str(raised.value)
    assert f"{spec.error_name(option)} must be" in message, message
    # A spelling with dashes is right in one mode only: never without the other one.
    standalone, in_suite = (f"--{spec.spelling(mode, option)}" for mode in (False, True))
    assert (standalone in message) == (in_suite in message), message
    assert repr(value) in message and allowed in message, message


#: Values each fine alone but not together: (plugin, options, what the message says).
BAD_COMBINATIONS = [
    ("chat", [("max-line", "100000")], "flood-byte-burst must be at least max-line + 2 = 100002"),
    (
        "chat",
        [("max-line", "100"), ("flood-byte-burst", "101")],
        "flood-byte-burst must be at least max-line + 2 = 102 bytes",
    ),
    (
        "broadcast",
        [("interval", "10"), ("ttl", "5")],
        "ttl must be 0 or at least the interval (10 s), not 5",
    ),
    (
        "broadcast",
        [("interval", "28801")],
        f"interval 28801 makes the default ttl (three intervals) longer than the {MAX_TTL}",
    ),
]


@pytest.mark.parametrize("suite", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize(("plugin", "pairs", "message"), BAD_COMBINATIONS)
def test_values_that_do_not_fit_together_are_usage_errors_naming_them(
    plugin: str, pairs: list[tuple[str, str]], message: str, suite: bool
) -> None:
    spec = PLUGINS[plugin]
    with pytest.raises(usage.UsageError) as raised:
        parse(spec.options_class(suite), spec.argv(suite, pairs))
    assert message in str(raised.value)


def _tcp(service: Any) -> Any:
    (listener,) = [s for s in leaves(service) if isinstance(s, TCPListenService)]
    return listener


def _udp(service: Any) -> Any:
    (listener,) = [s for s in leaves(service) if isinstance(s, UDPListenService)]
    return listener


def _echo_limits(service: Any) -> Any:
    limits = _tcp(service).factory.limits
    assert _udp(service).protocol.limits == limits
    return limits


def _chat_limits(service: Any) -> Any:
    return _tcp(service).factory.server.limits


Get = Callable[[Any], Any]

#: (plugin, options, where the value lands in the built service, what it is there).
GOOD_VALUES: list[tuple[str, list[tuple[str, str]], Get, Any]] = [
    ("echo", [("port", "7007")], lambda s: _udp(s).port_number, 7007),
    ("echo", [("port", "0")], lambda s: _tcp(s).description, "tcp:0"),
    ("echo", [("max-connections", "5")], lambda s: _echo_limits(s).max_connections, 5),
    ("echo", [("max-connections", "0")], lambda s: _echo_limits(s).max_connections, None),
    ("echo", [("max-per-peer", "3")], lambda s: _echo_limits(s).max_connections_per_peer, 3),
    ("echo", [("idle-timeout", "2.5")], lambda s: _echo_limits(s).idle_timeout, 2.5),
    ("echo", [("idle-timeout", "0")], lambda s: _echo_limits(s).idle_timeout, None),
    ("echo", [("udp-rate", "50.5")], lambda s: _echo_limits(s).udp_rate, 50.5),
    ("echo", [("udp-rate", "0")], lambda s: _echo_limits(s).udp_rate, None),
    ("echo", [("udp-burst", "1")], lambda s: _echo_limits(s).udp_burst, 1.0),
    ("chat", [("port", "7001")], lambda s: _tcp(s).description, "tcp:7001"),
    ("chat", [("charset", "gb2312")], lambda s: _tcp(s).factory.charset.name, "gbk"),
    ("chat", [("max-line", "1"), ("flood-byte-burst", "3")],
     lambda s: (_chat_limits(s).max_line_bytes, _chat_limits(s).flood_byte_burst), (1, 3.0)),
    ("chat", [("sendq", "1")], lambda s: _chat_limits(s).sendq_bytes, 1),
    ("chat", [("flood-lines", "0.5")], lambda s: _chat_limits(s).flood_lines_per_second, 0.5),
    ("chat", [("flood-lines", "0")], lambda s: _chat_limits(s).flood_lines_per_second, None),
    ("chat", [("flood-line-burst", "1")], lambda s: _chat_limits(s).flood_line_burst, 1.0),
    ("chat", [("flood-bytes", "0")], lambda s: _chat_limits(s).flood_bytes_per_second, None),
    ("chat", [("flood-disconnect-after", "0")],
     lambda s: _chat_limits(s).flood_disconnect_after, None),
    ("chat", [("max-connections", "0")], lambda s: _chat_limits(s).max_connections, None),
    ("chat", [("max-per-peer", "2")], lambda s: _chat_limits(s).max_connections_per_peer, 2),
    ("chat", [("register-timeout", "0")], lambda s: _chat_limits(s).register_timeout, None),
    ("chat", [("idle-timeout", "90")], lambda s: _chat_limits(s).idle_timeout, 90.0),
    ("chat", [("history", "0")], lambda s: _chat_limits(s).history_lines, 0),
    ("chat", [("max-rooms", "1")], lambda s: _chat_limits(s).max_rooms, 1),
    ("chat", [("max-rooms-per-user", "3")], lambda s: _chat_limits(s).max_rooms_per_user, 3),
    ("chat", [("presence-limit", "0")], lambda s: _chat_limits(s).presence_limit, None),
    ("chat", [("endpoint", "tcp:7010")], lambda s: _tcp(s).description, "tcp:7010"),
    ("chat", [("endpoint", "7011")], lambda s: _tcp(s).description, "tcp:7011"),
    ("chat", [("lobby", "#hall")], lambda s: _chat_limits(s).lobby, "#hall"),
    ("chat", [("lobby", "")], lambda s: _chat_limits(s).lobby, None),
    ("broadcast", [("port", "65535")], lambda s: s.listener.port_number, 65535),
    ("broadcast", [("interval", "2")], lambda s: (s.announcer.interval, s.node.ttl), (2.0, 6)),
    ("broadcast", [("interval", "28800")], lambda s: s.node.ttl, MAX_TTL),
    ("broadcast", [("ttl", str(MAX_TTL))], lambda s: s.node.ttl, MAX_TTL),
    ("broadcast", [("ttl", "0")], lambda s: s.node.ttl, 30),
    ("broadcast", [("advertise", "tftp/udp/69")],
     lambda s: ServiceEntry("tftp", "udp", 69) in s.node.info().services, True),
    ("broadcast", [("advertise", ",".join(f"s{n}/tcp/{n + 1}" for n in range(MAX_SERVICES)))],
     lambda s: len(s.node.info().services), MAX_SERVICES),
    ("broadcast", [("name", "n" * MAX_NAME_BYTES)],
     lambda s: s.node.info().name, "n" * MAX_NAME_BYTES),
    ("broadcast", [("reply-rate", "0.5")], lambda s: s.node.limits.reply_rate, 0.5),
    ("broadcast", [("reply-burst", "1")], lambda s: s.node.limits.reply_burst, 1.0),
    ("broadcast", [("max-peers", "1")], lambda s: s.node.table.max_peers, 1),
]


def _good_value_cases() -> list[Any]:
    return _in_each_mode(
        GOOD_VALUES,
        lambda rest: [option for option, _ in rest[0]],
        lambda rest: ",".join(f"{option}={_short(value)}" for option, value in rest[0]),
    )


@pytest.mark.parametrize(("plugin", "suite", "pairs", "get", "expected"), _good_value_cases())
def test_a_good_value_reaches_the_service(
    plugin: str, suite: bool, pairs: list[tuple[str, str]], get: Get, expected: Any
) -> None:
    spec = PLUGINS[plugin]
    options = parse(spec.options_class(suite), spec.argv(suite, pairs))
    assert get(spec.service(suite, options)) == expected


def test_every_numeric_option_is_in_the_bad_value_table() -> None:
    """A new option with a coerce function gets rows above (the table is the contract)."""
    tested = {(plugin, option) for plugin, option, _, _ in BAD_VALUES}
    for name, spec in PLUGINS.items():
        for row in spec.options_class(False).optParameters:
            if row[4] is not None:  # a coerce function
                assert (name, row[0]) in tested, (name, row[0])


def test_number_at_least() -> None:
    burst = tapkit.number("burst", "datagrams", at_least=1)
    assert burst("1") == 1.0 and burst("1e3") == 1000.0
    for bad in ("0.99", "inf", "nan", "-1", "one"):
        with pytest.raises(ValueError) as raised:
            burst(bad)
        assert str(raised.value) == f"burst must be a number of datagrams, 1 or more, not {bad!r}"
    with pytest.raises(TypeError):
        tapkit.number("burst", "datagrams", zero_means="off", at_least=1)


def test_the_running_page_quotes_the_real_message() -> None:
    from tests.test_docs_examples import DOCS

    with pytest.raises(usage.UsageError) as raised:
        parse(echo_tap.Options, ["--port", "70000"])
    page = " ".join((DOCS / "running.rst").read_text().split())
    assert f'gives "{raised.value}"' in page
