"""twistd wiring for the chat: options, the service they build, the suite section, and
``python -m netsvc.chat`` (same options) as a real process."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.task import Clock
from twisted.python import usage

from netsvc import chat_tap, echo_tap, tapkit
from netsvc.chat.limits import CHAT_PORT, ChatLimits
from netsvc.chat.protocol import ChatFactory
from netsvc.listening import TCPListenService
from tests.support import REPO, free_port, twistd_command


def parse(options_class: type[usage.Options], *args: str) -> usage.Options:
    options = options_class()
    options.parseOptions(list(args))
    return options


def listeners(service: Any) -> list[TCPListenService]:
    if IServiceCollection.providedBy(service):
        return [leaf for child in service for leaf in listeners(child)]
    assert isinstance(service, TCPListenService)
    return [service]


def test_defaults() -> None:
    (listener,) = listeners(chat_tap.makeService(parse(chat_tap.Options)))
    assert listener.description == f"tcp:{CHAT_PORT}" and CHAT_PORT == 7777
    assert isinstance(listener.factory, ChatFactory)
    assert listener.factory.charset.name == "utf-8"
    assert listener.factory.server.limits == ChatLimits(idle_timeout=None)


def test_options_reach_the_server() -> None:
    options = parse(
        chat_tap.Options,
        "--port", "7001", "--interface", "::", "--charset", "gb2312",
        "--max-line", "2048", "--sendq", "100000",
        "--flood-lines", "5", "--flood-line-burst", "8",
        "--flood-bytes", "0", "--flood-disconnect-after", "0",
        "--max-connections", "50", "--max-per-peer", "0",
        "--register-timeout", "30", "--idle-timeout", "600",
        "--lobby", "", "--history", "0", "--max-rooms", "7", "--max-rooms-per-user", "2",
        "--presence-limit", "0",
    )
    (listener,) = listeners(chat_tap.makeService(options))
    assert listener.description == "tcp:7001:interface=\\:\\:"
    factory = listener.factory
    assert isinstance(factory, ChatFactory)
    assert factory.charset.name == "gbk"
    assert factory.server.limits == ChatLimits(
        max_line_bytes=2048, sendq_bytes=100000, flood_lines_per_second=5.0,
        flood_line_burst=8.0, flood_bytes_per_second=None, flood_disconnect_after=None,
        max_connections=50, max_connections_per_peer=None, register_timeout=30.0,
        idle_timeout=600.0, lobby=None, history_lines=0, max_rooms=7, max_rooms_per_user=2,
        presence_limit=None,
    )


def test_endpoint_replaces_port_and_a_second_listener_shares_the_rooms() -> None:
    options = parse(
        chat_tap.Options, "--endpoint", "tcp6:7002:interface=\\:\\:1",
        "--extra-endpoint", "7003", "--extra-charset", "big5",
    )
    first, second = listeners(chat_tap.makeService(options))
    assert first.description == "tcp6:7002:interface=\\:\\:1"
    assert second.description == "tcp:7003"
    assert isinstance(first.factory, ChatFactory) and isinstance(second.factory, ChatFactory)
    assert first.factory.server is second.factory.server
    assert (first.factory.charset.name, second.factory.charset.name) == ("utf-8", "big5")


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "70000"],
        ["--charset", "utf-16"],
        ["--charset", "klingon"],
        ["--endpoint", "bogus:1234"],
        ["--endpoint", "tcp:notaport"],
        ["--max-line", "0"],
        ["--max-line", "100000"],  # longer than the byte burst: could never be sent
        ["--flood-lines", "-1"],
        ["--flood-line-burst", "0"],
        ["--idle-timeout", "nan"],
        ["--lobby", "two words"],
        ["--history", "-3"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(chat_tap.Options, *args)


def test_suite_section_runs_chat_only_with_an_endpoint() -> None:
    suite = tapkit.suite_options([echo_tap.ECHO_SPEC, chat_tap.CHAT_SPEC])
    without = tapkit.make_suite_service(
        [echo_tap.ECHO_SPEC, chat_tap.CHAT_SPEC], parse(suite, "--echo-port", "7007"), Clock()
    )
    assert not any(isinstance(s.factory, ChatFactory) for s in listeners_or_udp(without))
    options = parse(suite, "--no-echo", "--chat", "7777", "--chat-charset", "gb2312",
                    "--chat-idle-timeout", "60")
    root = tapkit.make_suite_service([echo_tap.ECHO_SPEC, chat_tap.CHAT_SPEC], options, Clock())
    (listener,) = listeners(root)
    assert listener.description == "tcp:7777"
    assert isinstance(listener.factory, ChatFactory)
    assert listener.factory.charset.name == "gbk"
    assert listener.factory.server.limits.idle_timeout == 60
    assert root.getServiceNamed("chat") is not None


def listeners_or_udp(service: Any) -> list[Any]:
    if IServiceCollection.providedBy(service):
        return [leaf for child in service for leaf in listeners_or_udp(child)]
    return [service] if hasattr(service, "factory") else []


def test_python_m_netsvc_chat_runs_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "netsvc.chat", "--port", str(port), "--interface", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        first = process.stdout.readline().decode() if ready else ""
        assert first == f"chat on 127.0.0.1 port {port}\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"tester\n")
            received = b""
            while b"You joined #lobby" not in received:
                chunk = client.recv(4096)
                assert chunk, received
                received += chunk
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_python_m_netsvc_chat_explains_a_busy_port_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "netsvc.chat", "--port", str(port), "--interface",
             "127.0.0.1"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"netsvc-chat: cannot listen for TCP chat on 127.0.0.1 port {port}: Address already"
        " in use. Another program is using it: choose another port or stop that program.\n"
    )


def test_python_m_netsvc_chat_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netsvc.chat", "--charset", "utf-16"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 2
    assert "not ASCII-compatible" in result.stderr.splitlines()[-1]


def _chat_plugin_registered() -> bool:
    from twisted.plugin import IPlugin, getPlugins

    return any(getattr(p, "tapname", "") == "netsvc-chat" for p in getPlugins(IPlugin))


@pytest.mark.skipif(
    not _chat_plugin_registered(),
    reason="the netsvc-chat ServiceMaker line is not in twisted/plugins/netsvc_plugins.py yet",
)
def test_twistd_netsvc_chat_end_to_end(tmp_path: Any) -> None:
    from tests.support import running

    port = free_port()
    command = twistd_command("netsvc-chat", "--port", str(port), "--interface", "127.0.0.1")
    with running(command, port), socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"via-twistd\n")
        received = b""
        while b"Welcome, via-twistd!" not in received:
            chunk = c.recv(4096)
            assert chunk, received
            received += chunk
