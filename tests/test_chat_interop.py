"""Interop: scripted sessions with netcat (OpenBSD nc, LF-only) and socat (CRLF) against
``python -m netsvc.chat`` in a subprocess (the same options and service as twistd's)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.interop_support import require
from tests.support import REPO, free_port, running

pytestmark = pytest.mark.interop
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def chat_port() -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "netsvc.chat", "--port", str(port), "--interface", HOST,
               "--max-line", "1024"]
    with running(command, port):
        yield port


class Watcher:
    """A long-lived ``nc`` session whose output lines are collected by a thread."""

    def __init__(self, port: int, nick: str) -> None:
        self.process = subprocess.Popen(
            [require("nc"), HOST, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.say(nick)
        self.expect(f"Welcome, {nick}!")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, fragment: str, timeout: float = 20.0) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {fragment!r} within {timeout}s; saw {seen}") from None
            seen.append(line)
            if fragment in line:
                return seen

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@contextmanager
def watching(port: int, nick: str) -> Iterator[Watcher]:
    watcher = Watcher(port, nick)
    try:
        yield watcher
    finally:
        watcher.close()


def test_scripted_netcat_session(chat_port: int) -> None:
    script = (
        "alice\n"
        "hello from netcat\n"
        "/me waves\n"
        "\x1b[31mred\x1b[0m and \x1b]0;a title\x07plain\n"
        "/msg watcher psst\n"
        "/who\n"
        "/quit see you\n"
    )
    with watching(chat_port, "watcher") as watcher:
        result = subprocess.run(
            [require("nc"), "-N", HOST, str(chat_port)],
            input=script.encode(), capture_output=True, timeout=60, check=True,
        )
        seen = watcher.expect("alice quit (see you)")
    output = result.stdout.decode().split("\r\n")
    assert "*** Welcome, alice! /help lists the commands." in output
    assert "-> *watcher* psst" in output
    assert "***   alice watcher" in output
    assert output[-2:] == ["*** Goodbye.", ""]
    assert seen[-6:] == [
        "*** alice joined #lobby",
        "#lobby <alice> hello from netcat",
        "#lobby * alice waves",
        "#lobby <alice> red and plain",
        "*alice* psst",
        "*** alice quit (see you)",
    ]


def test_netcat_over_long_line_gets_an_error_line(chat_port: int) -> None:
    with watching(chat_port, "watcher2") as watcher:
        result = subprocess.run(
            [require("nc"), "-N", HOST, str(chat_port)],
            input=b"bob\n" + b"x" * 5000 + b"\nstill connected\n",
            capture_output=True, timeout=60, check=True,
        )
        seen = watcher.expect("bob quit")
    assert "*** Line too long: 5000 bytes, the most is 1024. Not sent." in result.stdout.decode()
    assert "#lobby <bob> still connected" in seen
    assert not any("xxxx" in line for line in seen)


def test_socat_crlf_client_speaking_gb2312(chat_port: int) -> None:
    with watching(chat_port, "watcher3") as watcher:
        watcher.say("你好, gb2312 friend")
        script = "/charset gb2312\n李雷\n你好,世界\n".encode("gbk")
        result = subprocess.run(
            [require("socat"), "-t", "5", "-", f"TCP:{HOST}:{chat_port},crlf"],
            input=script, capture_output=True, timeout=60, check=True,
        )
        seen = watcher.expect("李雷 quit")
    assert "#lobby <李雷> 你好,世界" in seen
    reply = result.stdout.decode("gbk")
    assert "*** Your charset is now gbk." in reply
    assert "*** Welcome, 李雷!" in reply
    assert "[" in reply and "<watcher3> 你好, gb2312 friend" in reply  # history, in gbk


def test_netcat_without_a_nickname_becomes_a_guest(chat_port: int) -> None:
    result = subprocess.run(
        [require("nc"), "-N", HOST, str(chat_port)], input=b"\n/quit\n",
        capture_output=True, timeout=60, check=True,
    )
    assert "*** Welcome, guest" in result.stdout.decode()
    assert REPO.exists()
