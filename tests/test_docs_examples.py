"""The docs stay true: examples run for real on loopback, pages match the code they describe."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EMBED_ECHO = DOCS / "examples" / "embed_echo.py"
HOST = "127.0.0.1"
reactor: Any = global_reactor


def load_example(path: Path) -> ModuleType:
    """Import a docs example by path, the way a reader would copy it."""
    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tcp_echo(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and return everything until the server closes."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def udp_echo(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(payload, (HOST, port))
        reply, sender = sock.recvfrom(65536)
    assert sender == (HOST, port)
    return reply


def tcp_refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest_twisted.ensureDeferred
async def test_embed_echo_build_serves_tcp_and_udp() -> None:
    example = load_example(EMBED_ECHO)
    service = example.build(reactor, port=0)  # port 0: TCP and UDP each get a free port
    service.startService()
    try:
        ports = {child.what: child.port.getHost().port for child in service}
        assert set(ports) == {"TCP echo", "UDP echo"}
        tcp_payload = os.urandom(100_000)
        assert await deferToThread(tcp_echo, ports["TCP echo"], tcp_payload) == tcp_payload
        assert await deferToThread(udp_echo, ports["UDP echo"], b"hello, udp") == b"hello, udp"
        factory = next(child.factory for child in service if child.what == "TCP echo")
        assert factory.limits.max_connections == 100  # the example's limits are in force
    finally:
        await service.stopService()
    assert all(child.port is None for child in service)
    assert await deferToThread(tcp_refused, ports["TCP echo"])


@pytest_twisted.ensureDeferred
async def test_embed_echo_listen_by_hand_serves_tcp_and_udp() -> None:
    example = load_example(EMBED_ECHO)
    tcp, udp = example.listen_by_hand(reactor, port=0)
    tcp_port, udp_port = tcp.getHost().port, udp.getHost().port
    try:
        big = os.urandom(60_000)  # above Twisted's default maxPacketSize of 8192
        assert await deferToThread(tcp_echo, tcp_port, b"hello, tcp") == b"hello, tcp"
        assert await deferToThread(udp_echo, udp_port, big) == big
    finally:
        await tcp.stopListening()
        await udp.stopListening()
    assert await deferToThread(tcp_refused, tcp_port)


def free_tcp_and_udp_port() -> int:
    """A loopback port number that is free for both TCP and UDP right now."""
    for _ in range(50):
        with socket.socket() as tcp_sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            tcp_sock.bind((HOST, 0))
            port: int = tcp_sock.getsockname()[1]
            try:
                u.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


def checkout_env() -> dict[str, str]:
    """The environment for running an example as a script against this checkout."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def test_embed_echo_script_runs_and_stops_on_sigterm() -> None:
    port = free_tcp_and_udp_port()
    process = subprocess.Popen(
        [sys.executable, str(EMBED_ECHO), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=checkout_env(),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        first_line = process.stdout.readline().decode() if ready else ""
        assert f"echo on {HOST} port {port}" in first_line, first_line
        assert tcp_echo(port, b"hello, tcp") == b"hello, tcp"
        assert udp_echo(port, b"hello, udp") == b"hello, udp"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert tcp_refused(port)


def test_embed_echo_script_explains_a_busy_port_in_one_line() -> None:
    port = free_tcp_and_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((HOST, port))  # so UDP fails after TCP has bound
        finished = subprocess.run(
            [sys.executable, str(EMBED_ECHO), str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=checkout_env(),
        )
    assert finished.returncode == 1
    assert finished.stderr == (
        f"cannot listen for UDP echo on {HOST} port {port}: Address already in use."
        " Another program is using it: choose another port or stop that program.\n"
    )
    assert "echo on" not in finished.stdout



def _section(text: str, title: str) -> str:
    """The body of the reStructuredText section ``title`` (up to the next section)."""
    heading = f"\n{title}\n{'-' * len(title)}\n"
    start = text.index(heading) + len(heading)
    following = re.search(r"\n[^\n]+\n-{3,}\n", text[start:])
    return text[start : start + following.start()] if following else text[start:]


def _long_options(options_class: Any) -> set[str]:
    rows = [*options_class.optParameters, *options_class.optFlags]
    return {"--" + row[0] for row in rows}


def test_running_page_documents_every_echo_option_and_no_other() -> None:
    from netsvc import echo_tap, tap, tapkit

    table = _section((DOCS / "running.rst").read_text(), "Options")
    documented = set(re.findall(r"``(--[a-z][a-z-]*)``", table))
    echo_in_suite = _long_options(tapkit.suite_options([echo_tap.ECHO_SPEC]))
    echo_alone = _long_options(echo_tap.Options)
    assert echo_in_suite <= _long_options(tap.Options)
    assert documented == echo_in_suite | echo_alone | {"--help", "--version"}  # twistd's


def test_embedding_page_shows_the_real_echo_limits_defaults() -> None:
    from netsvc import echo

    page = (DOCS / "embedding.rst").read_text()
    signature = re.search(r"autoclass:: netsvc\.echo\.EchoLimits\((.*)\)", page)
    assert signature is not None
    shown = eval(f"dict({signature.group(1)})", vars(echo))  # our own docs, not input
    assert echo.EchoLimits(**shown) == echo.EchoLimits()
    assert shown.keys() == {field.name for field in attrs.fields(echo.EchoLimits)}
