"""``netsvc udp send|listen``: pure helpers, and real processes on loopback."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from netsvc import udptools
from netsvc.udptools import MessageError, decode_payload, encode_message, format_datagram
from tests.support import ipv6_loopback_available

GREETING = "你好\uff0c世界\uff01UDP 广播"  # with full-width punctuation


def test_encode_and_decode() -> None:
    data = encode_message(GREETING, "gb2312")
    assert data == GREETING.encode("gb2312")
    assert decode_payload(data, "gb2312") == GREETING
    assert encode_message("68 65:6c 0x6c6f", hex_input=True) == b"hello"
    assert decode_payload(b"hello", as_hex=True) == "68 65 6c 6c 6f"
    assert decode_payload(b"a\nb\x1b[2J\xff") == "a\\nb\\x1b[2J\\xff"  # one line, no escapes
    with pytest.raises(MessageError, match="gb2312"):
        encode_message("😀", "gb2312")
    with pytest.raises(MessageError, match="hexadecimal"):
        encode_message("zz", hex_input=True)
    with pytest.raises(ValueError):
        udptools.check_encoding("no-such-codec")
    with pytest.raises(ValueError):
        udptools.check_encoding("rot13")  # a codec, but not a text encoding


def test_format_datagram() -> None:
    assert format_datagram(b"hi", ("::1", 5)) == "[::1]:5 2 bytes: hi"
    assert format_datagram(b"x", ("10.0.0.1", 7)) == "10.0.0.1:7 1 byte: x"


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def test_listener_reply_guards() -> None:
    sock = FakeSocket()
    out = io.StringIO()
    listener = udptools.Listener(
        sock,
        out,
        reply=b"ok",
        reply_rate=2.0,  # type: ignore
        timestamps=False,
    )
    for _ in range(5):
        listener.handle(b"ping", ("127.0.0.1", 40000))
    listener.handle(b"x", ("127.0.0.1", 53))  # a DNS server: never answered
    listener.handle(b"x", ("224.0.0.1", 40000))
    assert len(sock.sent) == 2  # the per-source burst
    assert listener.not_answered == 5
    assert out.getvalue().splitlines()[0] == "127.0.0.1:40000 4 bytes: ping"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "netsvc.udptools", *args]


@contextmanager
def listening(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``netsvc udp listen ARGS`` in the background; yields (process, bound port)."""
    process = subprocess.Popen(
        cli("listen", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "listening on HOST:PORT (UDP); ..."
        assert line.startswith("listening on"), line
        port = int(line.split()[2].rsplit(":", 1)[1])
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_gb2312_round_trip_between_send_and_listen() -> None:
    with listening(
        "0", "-I", "127.0.0.1", "-e", "gb2312", "--reply", "收到", "-n", "1", "--no-time"
    ) as (listener, port):
        result = subprocess.run(
            cli("send", "127.0.0.1", str(port), GREETING, "-e", "gb2312", "--wait", "1"),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=30,
            check=False,
        )
        out, err = listener.communicate(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reply from 127.0.0.1:{port} 4 bytes: 收到"
    size = len(GREETING.encode("gb2312"))
    [line] = out.splitlines()
    host_port, rest = line.split(" ", 1)
    assert host_port.startswith("127.0.0.1:")
    assert rest == f"{size} bytes: {GREETING}"
    assert listener.returncode == 0
    assert "received 1 datagrams" in err


def test_listen_prints_each_datagram_as_it_arrives_and_ctrl_c_ends_cleanly() -> None:
    with listening("0", "-I", "127.0.0.1", "--echo") as (listener, port):
        assert listener.stdout is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for text in ("one", "two"):
                sock.sendto(text.encode(), ("127.0.0.1", port))
                line = listener.stdout.readline()  # flushed per datagram
                assert line.rstrip().endswith(f"3 bytes: {text}")
                assert sock.recvfrom(100)[0] == text.encode()  # echo mode
        listener.send_signal(signal.SIGINT)
        _, err = listener.communicate(timeout=10)
    assert listener.returncode == 0
    assert "Traceback" not in err
    assert "received 2 datagrams (6 bytes), answered 2" in err


def test_hex_and_count() -> None:
    with listening("0", "-I", "127.0.0.1", "--hex", "-n", "3", "--no-time") as (listener, port):
        result = subprocess.run(
            cli("send", "127.0.0.1", str(port), "00ff10", "--hex", "-n", "3", "-i", "0"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out, _ = listener.communicate(timeout=10)
    assert result.returncode == 0, result.stderr
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["00 ff 10"] * 3


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_ipv6() -> None:
    with listening("0", "-I", "::1", "-n", "1", "--no-time", "--reply", "v6") as (
        listener,
        port,
    ):
        result = subprocess.run(
            cli("send", "::1", str(port), "hello", "--wait", "1"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out, _ = listener.communicate(timeout=10)
    assert result.returncode == 0, result.stderr
    assert out.startswith("[::1]:") and out.rstrip().endswith("5 bytes: hello")
    assert result.stdout.startswith(f"reply from [::1]:{port} 2 bytes: v6")


def test_send_exit_codes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        result = subprocess.run(
            cli("send", "127.0.0.1", str(port), "x", "--wait", "0.3"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == udptools.ExitCode.NO_REPLY
        assert time.monotonic() - start >= 0.3
        assert silent.recv(10) == b"x"
    bad = subprocess.run(
        cli("send", "127.0.0.1", "9", "😀", "-e", "gb2312"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == udptools.ExitCode.USAGE and "gb2312" in bad.stderr
    unknown = subprocess.run(
        cli("send", "no-such-host.invalid", "9", "x"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert unknown.returncode == udptools.ExitCode.NETWORK


def test_message_from_stdin() -> None:
    with listening("0", "-I", "127.0.0.1", "-n", "1", "--no-time", "-e", "gb2312") as (
        listener,
        port,
    ):
        subprocess.run(
            cli("send", "127.0.0.1", str(port), "-e", "gb2312"),
            input="中文",
            text=True,
            capture_output=True,
            timeout=30,
            check=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        out, _ = listener.communicate(timeout=10)
    assert out.rstrip().endswith("4 bytes: 中文")


def test_listen_port_in_use_is_explained() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            cli("listen", "-I", "127.0.0.1", str(port)),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == udptools.ExitCode.NETWORK
    assert "cannot listen on 127.0.0.1 port" in result.stderr


def test_add_parser_registers_udp() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    udptools.add_parser(parser.add_subparsers())
    args = parser.parse_args(["udp", "send", "h", "9", "m", "-e", "GB2312"])
    assert args.encoding == "gb2312" and args.func is udptools._run_send


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("127.0.0.1", 69), "127.0.0.1:69"),
        (("::1", 69, 0, 0), "[::1]:69"),  # as in URLs
        (("::ffff:127.0.0.1", 5000, 0, 0), "127.0.0.1:5000"),  # IPv4 on a dual-stack socket
    ],
)
def test_format_address(address: tuple[str, int], text: str) -> None:
    assert udptools.format_address(address) == text
