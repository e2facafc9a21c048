"""``netsvc echoping`` against a real netsvc echo server run by twistd."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from netsvc.echoping import ExitCode, echoping
from tests.support import free_port, free_tcp_udp_port, running, twistd_command


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    port = free_tcp_udp_port()
    command = twistd_command("netsvc-echo", "--port", str(port), "--interface", "127.0.0.1")
    with running(command, port):
        yield port


def netsvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netsvc", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("udp", [False, True])
def test_echoping_reports_each_round_trip_and_a_summary(echo_port: int, udp: bool) -> None:
    args = ["echoping", "127.0.0.1", "-p", str(echo_port), "-n", "3", "-w", "0", "-s", "1000"]
    result = netsvc(*args, *(["--udp"] if udp else []))
    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["seq=1", "seq=2", "seq=3"]
    assert "bytes=1000" in lines[0]
    assert lines[3] == "--- 3 of 3 messages echoed, 0.0% lost"
    assert lines[4].startswith("rtt min/avg/median/max = ")


def test_echoping_library_call_counts_rtts(echo_port: int) -> None:
    result = echoping("127.0.0.1", echo_port, udp=True, count=5, size=65507, interval=0)
    assert len(result.rtts) == 5 and result.exit_code == ExitCode.OK


def test_echoping_refused_is_one_line_and_exit_3() -> None:
    result = netsvc("echoping", "127.0.0.1", "-p", str(free_port()))
    assert result.returncode == ExitCode.UNREACHABLE
    assert result.stderr.strip().count("\n") == 0 and "refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_echoping_udp_timeout_counts_loss() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = netsvc(
            "echoping", "127.0.0.1", "-p", str(port), "-u", "-n", "2", "-t", "0.2", "-w", "0"
        )
    assert result.returncode == ExitCode.LOST
    assert "seq=1 timeout" in result.stdout
    assert "0 of 2 messages echoed, 100.0% lost" in result.stdout


def _corrupting_server(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        data = conn.recv(65536)
        conn.sendall(bytes(len(data)))


def test_echoping_mismatch_exit_4() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_corrupting_server, args=(server,), daemon=True)
        thread.start()
        result = netsvc("echoping", "127.0.0.1", "-p", str(server.getsockname()[1]), "-s", "64")
        thread.join(10)
    assert result.returncode == ExitCode.MISMATCH
    assert "reply differs" in result.stdout


@pytest.mark.parametrize("args", [["-n", "0"], ["-s", "-1"], ["-t", "0"], ["-u", "-s", "65508"]])
def test_echoping_bad_usage_exit_2(args: list[str]) -> None:
    result = netsvc("echoping", "127.0.0.1", *args)
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr
