"""Broadcast on real sockets over loopback: nodes in separate processes.

Everything is sent to 127.255.255.255 (the loopback network's broadcast address) and the
listeners bind 0.0.0.0, as DESIGN.md section 4 asks: never 255.255.255.255 or the real
interfaces' broadcast addresses from the host namespace. The queries of ``netsvc
discover`` go to ``--address 127.255.255.255`` only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support import free_port

LOOP = "127.255.255.255"


def shared_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM, "0.0.0.0")


@contextmanager
def broadcast_node(port: int, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m netsvc.broadcast --port PORT --addresses 127.255.255.255 ARGS``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "netsvc.broadcast", "--port", str(port),
         "--addresses", LOOP, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("broadcast node on"):
            process.kill()
            pytest.fail(f"node did not start: {line!r} {process.communicate()[1][-2000:]}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_discover(port: int, *args: str, timeout: float = 1.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netsvc.broadcast.cli", "--address", LOOP, "--port",
         str(port), "--timeout", str(timeout), "--json", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_two_nodes_share_the_port_see_each_other_and_answer_discovery() -> None:
    port = shared_udp_port()
    with broadcast_node(port, "--announce", "--discovery", "--name", "alpha",
                        "--interval", "0.3", "--advertise", "tftp/udp/69") as alpha, \
         broadcast_node(port, "--announce", "--discovery", "--name", "beta",
                        "--interval", "0.3") as beta:
        result = run_discover(port, "--count", "2", timeout=5)
        assert result.returncode == 0, result.stderr
        nodes = {node["name"]: node for node in json.loads(result.stdout)}
        assert set(nodes) == {"alpha", "beta"}
        assert nodes["alpha"]["services"] == [{"name": "tftp", "protocol": "udp", "port": 69}]
        assert all(node["address"] == "127.0.0.1" and node["port"] == port
                   for node in nodes.values())
        assert max(node["rtt_ms"] for node in nodes.values()) < 1000
        filtered = run_discover(port, "--service", "tftp", timeout=0.5)
        assert [n["name"] for n in json.loads(filtered.stdout)] == ["alpha"]
        time.sleep(1.0)  # a few announcement rounds
        alpha.terminate()
        beta.terminate()
        alpha_log = alpha.communicate(timeout=10)[1]
        beta_log = beta.communicate(timeout=10)[1]
    assert "beta (" in alpha_log and "joined" in alpha_log
    assert "alpha (" in beta_log and "joined: tftp 69/udp" in beta_log
    assert "alpha (" not in alpha_log  # its own announcements are ignored


def test_discover_with_nobody_answering_exits_1() -> None:
    result = run_discover(shared_udp_port(), timeout=0.3)
    assert result.returncode == 1
    assert json.loads(result.stdout) == []
    assert "0 nodes answered" in result.stderr


def test_passive_node_does_not_answer() -> None:
    port = shared_udp_port()
    with broadcast_node(port):
        result = run_discover(port, timeout=0.5)
    assert result.returncode == 1


def test_udp_listeners_share_a_port_and_all_get_a_broadcast() -> None:
    port = shared_udp_port()
    listeners = [
        subprocess.Popen(
            [sys.executable, "-m", "netsvc.udptools", "listen", str(port), "--reuse", "-n", "1",
             "--no-time", "-e", "gb2312"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    try:
        for listener in listeners:
            assert listener.stderr is not None
            assert listener.stderr.readline().startswith("listening on 0.0.0.0:")
        sent = subprocess.run(
            [sys.executable, "-m", "netsvc.udptools", "send", LOOP, str(port), "广播",
             "-e", "gb2312", "--broadcast"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert sent.returncode == 0, sent.stderr
        outputs = [listener.communicate(timeout=10)[0] for listener in listeners]
    finally:
        for listener in listeners:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
    assert [out.split(" ", 1)[1].strip() for out in outputs] == ["4 bytes: 广播"] * 3


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_junk_flood_leaves_the_node_responsive_and_memory_flat() -> None:
    port = shared_udp_port()
    with broadcast_node(port, "--discovery", "--name", "target") as node:
        assert run_discover(port, "--count", "1", timeout=5).returncode == 0  # warm up
        before = _rss_kib(node.pid)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            junk = [os.urandom(n % 600 + 1) for n in range(64)]
            forged = b"NSVD\x01\x02" + os.urandom(18) + b"{" * 200  # our magic, bad body
            for i in range(10_000):
                flood.sendto(forged if i % 10 == 0 else junk[i % 64], ("127.0.0.1", port))
        start = time.monotonic()
        result = run_discover(port, "--count", "1", timeout=5)
        elapsed = time.monotonic() - start
        after = _rss_kib(node.pid)
        assert node.poll() is None
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)
    print(f"after 10,000 junk datagrams: reply in {answer['rtt_ms']} ms "
          f"(discover run {elapsed:.2f} s), RSS {before} -> {after} KiB")
    assert answer["rtt_ms"] < 1000
    assert after - before < 4096, f"RSS grew from {before} to {after} KiB"
