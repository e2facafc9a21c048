"""The chat over real sockets on 127.0.0.1 and ::1 (port 0), clients in threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.threads import blockingCallFromThread, deferToThread

from netsvc.chat.limits import ChatLimits
from netsvc.chat.protocol import ChatProtocol
from netsvc.chat.service import ChatService, chat_service
from netsvc.listening import tcp_endpoint_description
from tests.support import ipv6_loopback_available
from tests.test_chat_helpers import TEST_LIMITS

T = TypeVar("T")
reactor: Any = global_reactor

HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not ipv6_loopback_available(), reason="this machine has no IPv6 loopback"))]


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    result: T = await deferToThread(function, *args)
    return result


@asynccontextmanager
async def chat_on(
    host: str = "127.0.0.1", limits: ChatLimits = TEST_LIMITS
) -> AsyncIterator[tuple[ChatService, int]]:
    """A chat service on ``host``, port 0; yields it and its port number."""
    service = chat_service(reactor, endpoint=tcp_endpoint_description(0, host), limits=limits)
    service.startService()
    try:
        yield service, service.listening_ports()[0].getHost().port
    finally:
        await service.stopService()
        for protocol in list(service.server.connections):
            protocol.transport.abortConnection()
        await task.deferLater(reactor, 0, lambda: None)


class LineClient:
    """A blocking client: send lines, read lines until one matches."""

    def __init__(self, host: str, port: int, nick: str | None = None, eol: bytes = b"\r\n",
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect((host, port))
        self.eol = eol
        self.buffer = b""
        if nick is not None:
            self.send(nick)
            self.expect(f"Welcome, {nick}!")
            self.expect("You joined")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + self.eol)

    def read_line(self) -> str | None:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def expect(self, fragment: str) -> list[str]:
        """Lines up to and including the first that contains ``fragment``."""
        seen = []
        while True:
            line = self.read_line()
            if line is None:
                raise AssertionError(f"closed before {fragment!r}; saw {seen}")
            seen.append(line)
            if fragment in line:
                return seen

    def read_until_closed(self) -> list[str]:
        lines = []
        while (line := self.read_line()) is not None:
            lines.append(line)
        return lines

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_lf_and_crlf_clients_and_lines_split_across_segments(host: str) -> None:
    def scenario(port: int) -> list[str]:
        receiver = LineClient(host, port, "receiver")
        lf_client = LineClient(host, port, "netcat", eol=b"\n")
        receiver.expect("netcat joined")
        lf_client.send("from an LF-only client")
        lines = [receiver.expect("<netcat>")[-1]]
        crlf = LineClient(host, port, "telnet")
        receiver.expect("telnet joined")
        crlf.sock.sendall(b"split ac")
        time.sleep(0.05)
        crlf.sock.sendall(b"ross segments\r")
        time.sleep(0.05)
        crlf.sock.sendall(b"\nsecond\r\nthird\n")
        lines += [receiver.read_line() or "" for _ in range(3)]
        for client in (receiver, lf_client, crlf):
            client.close()
        return lines

    async with chat_on(host) as (_, port):
        lines = await in_thread(scenario, port)
    assert lines == [
        "#lobby <netcat> from an LF-only client",
        "#lobby <telnet> split across segments",
        "#lobby <telnet> second",
        "#lobby <telnet> third",
    ]


@pytest_twisted.ensureDeferred
async def test_fan_out_delivers_everything_in_order_to_everyone() -> None:
    receivers_count, lines_count = 20, 2000

    def scenario(port: int) -> list[list[str]]:
        receivers = [LineClient("127.0.0.1", port, f"r{n}") for n in range(receivers_count)]
        sender = LineClient("127.0.0.1", port, "sender")
        results: list[list[str]] = [[] for _ in receivers]

        def read(index: int) -> None:
            client = receivers[index]
            while len(results[index]) < lines_count:
                line = client.read_line()
                if line is None:
                    return
                if "<sender>" in line:
                    results[index].append(line.rsplit(" ", 1)[1])

        readers = [threading.Thread(target=read, args=(n,)) for n in range(receivers_count)]
        for reader in readers:
            reader.start()
        payload = b"".join(b"line %d\r\n" % n for n in range(lines_count))
        for start in range(0, len(payload), 7919):  # odd-sized pieces, lines cut anywhere
            sender.sock.sendall(payload[start:start + 7919])
        for reader in readers:
            reader.join(60)
        for client in [*receivers, sender]:
            client.close()
        return results

    async with chat_on() as (_, port):
        results = await in_thread(scenario, port)
    expected = [str(n) for n in range(lines_count)]
    assert all(result == expected for result in results)


def kernel_send_buffer_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            return int(limits.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_reader_that_never_reads_is_cut_off_and_nobody_waits_for_it() -> None:
    limits = attrs.evolve(TEST_LIMITS, sendq_bytes=64 * 1024)

    def scenario(port: int, service: ChatService) -> tuple[list[float], str, int]:
        stuck = LineClient("127.0.0.1", port, "stuck", rcvbuf=4096)
        reader = LineClient("127.0.0.1", port, "reader")
        sender = LineClient("127.0.0.1", port, "sender")
        reader.expect("sender joined")
        delays = []
        line = "x" * 1000
        notice = ""
        # Far beyond what stuck's buffers can take, the server's kernel send buffer
        # included: Linux grows that up to tcp_wmem's maximum (4 MiB by default), and
        # with BBR as the congestion control it does take megabytes for a stuck reader.
        for number in range(kernel_send_buffer_max() // len(line) + 1500):
            started = time.monotonic()
            sender.send(f"{number} {line}")
            got = reader.read_line() or ""
            if "quit (SendQ exceeded)" in got:
                notice = got
                got = reader.read_line() or ""
            assert got.endswith(f"{number} {line}"), got[:60]
            delays.append(time.monotonic() - started)
        held = max(
            (p._held_by_transport for p in service.server.connections
             if isinstance(p, ChatProtocol)),
            default=0,
        )
        for client in (stuck, reader, sender):
            client.close()
        return delays, notice, held

    async with chat_on(limits=limits) as (service, port):
        delays, notice, held = await in_thread(scenario, port, service)
        assert service.registry.user("stuck") is None
        assert service.server.sendq_exceeded == 1
    assert notice == "*** stuck quit (SendQ exceeded)"
    assert held <= 64 * 1024 + 64 * 1024 + 2000
    assert sorted(delays)[len(delays) // 2] < 0.05  # the median line is not held back


def _slow_steady_reader(port: int, service: ChatService) -> list[int]:
    """A receiver with tiny buffers that reads in small sips: the server's socket fills,
    the protocol falls back to the transport and back to direct writes, many times."""
    slow = LineClient("127.0.0.1", port, "slow", rcvbuf=2048)

    def shrink_server_side_buffer() -> None:
        user = service.registry.user("slow")
        assert user is not None and isinstance(user.session, ChatProtocol)
        user.session.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    blockingCallFromThread(reactor, shrink_server_side_buffer)
    sender = LineClient("127.0.0.1", port, "sender")
    slow.expect("sender joined")
    numbers: list[int] = []

    def read() -> None:
        while len(numbers) < 2000:
            line = slow.read_line()
            if line is None:
                return
            if "<sender>" in line:
                numbers.append(int(line.split()[2]))
            time.sleep(0.0002)

    reader = threading.Thread(target=read)
    reader.start()
    for burst in range(20):  # 30 KB bursts, much more than the socket buffers hold
        sender.sock.sendall(b"".join(
            b"%d %s\r\n" % (n, b"y" * 300) for n in range(burst * 100, burst * 100 + 100)
        ))
        time.sleep(0.1)
    reader.join(60)
    slow.close()
    sender.close()
    return numbers


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_gets_every_line_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fallback": 0, "drained": 0}
    send_buffered, resume = ChatProtocol._send_buffered, ChatProtocol.resumeProducing

    def counting_send_buffered(self: ChatProtocol, data: bytes) -> None:
        if self._held_by_transport == 0:
            calls["fallback"] += 1  # the socket was full: from direct to buffered
        send_buffered(self, data)

    def counting_resume(self: ChatProtocol) -> None:
        calls["drained"] += 1
        resume(self)

    monkeypatch.setattr(ChatProtocol, "_send_buffered", counting_send_buffered)
    monkeypatch.setattr(ChatProtocol, "resumeProducing", counting_resume)
    async with chat_on() as (service, port):
        numbers = await in_thread(_slow_steady_reader, port, service)
        assert service.server.sendq_exceeded == 0
    assert numbers == list(range(2000))
    assert calls["fallback"] >= 5 and calls["drained"] >= 5, calls


@pytest_twisted.ensureDeferred
async def test_half_close_processes_everything_then_closes() -> None:
    def scenario(port: int) -> tuple[list[str], list[str]]:
        watcher = LineClient("127.0.0.1", port, "watcher")
        script = socket.create_connection(("127.0.0.1", port), timeout=20)
        script.sendall(b"scripted\n/join lobby\nline one\nline two without newline")
        script.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := script.recv(65536):
            reply += chunk
        script.close()
        seen = watcher.expect("quit (end of input)")
        watcher.close()
        return reply.decode().split("\r\n")[:-1], seen

    async with chat_on() as (_, port):
        reply, seen = await in_thread(scenario, port)
    assert reply[-1] == "*** Goodbye."
    assert seen[-3:] == [
        "#lobby <scripted> line one",
        "#lobby <scripted> line two without newline",
        "*** scripted quit (end of input)",
    ]


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_endpoint_works(tmp_path: Any) -> None:
    path = str(tmp_path / "chat.sock")

    def scenario() -> list[str]:
        clients = []
        for nick in ("left", "right"):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(20)
            sock.connect(path)
            sock.sendall(nick.encode() + b"\n")
            clients.append(sock)
        received = b""
        clients[1].sendall(b"over a unix socket\n")
        while b"<right> over a unix socket" not in received:
            chunk = clients[0].recv(4096)
            assert chunk, received
            received += chunk
        for sock in clients:
            sock.close()
        return received.decode().split("\r\n")

    service = chat_service(reactor, endpoint=f"unix:{path}", limits=TEST_LIMITS)
    service.startService()
    try:
        lines = await in_thread(scenario)
    finally:
        await service.stopService()
        for protocol in list(service.server.connections):
            protocol.transport.abortConnection()
        await task.deferLater(reactor, 0, lambda: None)
    assert "#lobby <right> over a unix socket" in lines


@pytest_twisted.ensureDeferred
async def test_refused_connections_get_a_reason() -> None:
    limits = attrs.evolve(TEST_LIMITS, max_connections_per_peer=2)

    def scenario(port: int) -> list[str]:
        kept = [LineClient("127.0.0.1", port, f"k{n}") for n in range(2)]
        refused = LineClient("127.0.0.1", port)
        lines = refused.read_until_closed()
        for client in [*kept, refused]:
            client.close()
        return lines

    async with chat_on(limits=limits) as (_, port):
        lines = await in_thread(scenario, port)
    assert lines == ["*** Too many connections from 127.0.0.1; close one first."]
