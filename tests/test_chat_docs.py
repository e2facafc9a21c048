"""The chat docs stay true: the embedding example runs for real, the page lists every option."""

from __future__ import annotations

import importlib.util
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from netsvc.chat.registry import User
from tests.support import free_port
from tests.test_chat_loopback import LineClient

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLE = DOCS / "examples" / "chat_bot.py"
reactor: Any = global_reactor


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_example_chat_bot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _talk_to_the_bot(port: int) -> dict[str, list[str]]:
    alice = LineClient("127.0.0.1", port, "alice")
    seen = {"welcome": alice.expect("<helper> welcome")}
    alice.send("!users")
    seen["users"] = alice.expect("<helper> alice")
    alice.send("!echo ping")
    seen["echo"] = alice.expect("echoes")
    alice.send("/msg helper are you a bot?")
    seen["private"] = alice.expect("*helper* you told me")
    bob = LineClient("127.0.0.1", port, "bob")
    seen["bob joins"] = alice.expect("welcome, bob")
    alice.send("!rooms")
    seen["rooms"] = alice.expect("<helper> #lobby")
    alice.close()
    bob.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_the_bot_example_answers_on_real_sockets() -> None:
    example = load_example()
    service, bot = example.build(reactor, port=0)
    service.startService()
    try:
        port = service.listening_ports()[0].getHost().port
        seen = await deferToThread(_talk_to_the_bot, port)
    finally:
        await service.stopService()
        for protocol in list(service.server.connections):
            protocol.transport.abortConnection()
    assert seen["welcome"][-1] == "#lobby <helper> welcome, alice! Say !help for what I can do."
    assert seen["users"][-1] == "#lobby <helper> alice, helper"
    assert seen["echo"][-1] == "#lobby * helper echoes: ping"
    assert seen["private"][-1] == "*helper* you told me 'are you a bot?'"
    assert seen["bob joins"][-1] == "#lobby <helper> welcome, bob! Say !help for what I can do."
    assert seen["rooms"][-1] == "#lobby <helper> #lobby (3)"
    assert bot.rooms == ["#lobby"]


def test_the_example_announces_on_the_injected_clock() -> None:
    example = load_example()
    clock = Clock()
    service, _ = example.build(clock, port=0)  # built, never started: no socket needed
    received: list[bytes] = []
    listener = User(received.append)
    service.registry.set_nick(listener, "listener")
    service.registry.join(listener, "lobby")
    received.clear()
    loop = example.announce_every(clock, service, 60)
    clock.advance(60)
    loop.stop()
    assert received == [b"*** 2 people (and bots) are here\r\n"]


def test_the_example_script_runs_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(port)], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert (process.stdout.readline().decode() if ready else "") == (
            f"chat on 127.0.0.1 port {port}; Ctrl-C stops\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.recv(100).startswith(b"*** netsvc chat.")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _long_options(options_class: Any) -> set[str]:
    return {"--" + row[0] for row in [*options_class.optParameters, *options_class.optFlags]}


def test_the_chat_page_documents_every_option_and_no_other() -> None:
    from netsvc import chat_tap, tapkit

    page = (DOCS / "chat.rst").read_text()
    start = page.index("\nOptions\n-------\n")
    end = page.index("\nCommands\n--------\n")
    documented = set(re.findall(r"``(--[a-z][a-z-]*)``", page[start:end]))
    alone = _long_options(chat_tap.Options)
    in_suite = _long_options(tapkit.suite_options([chat_tap.CHAT_SPEC]))
    assert documented == alone | in_suite


def test_the_chat_page_includes_the_tested_example_and_the_real_defaults() -> None:
    from netsvc.chat.limits import CHAT_PORT, ChatLimits

    page = (DOCS / "chat.rst").read_text()
    assert ".. literalinclude:: examples/chat_bot.py" in page
    assert f"port {CHAT_PORT}" in page
    limits = ChatLimits()
    for value in (limits.sendq_bytes, limits.max_line_bytes, limits.history_lines):
        assert str(value) in page
