"""Helpers shared by the test modules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host`` (for servers that cannot use port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_tcp_udp_port(host: str = "127.0.0.1") -> int:
    """A port number free for both TCP and UDP on ``host``."""
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM, host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def twistd_command(*args: str) -> list[str]:
    """``twistd -n --pidfile= ARGS`` from this test environment."""
    twistd = shutil.which("twistd", path=str(VENV_BIN)) or "twistd"
    return [twistd, "--nodaemon", "--pidfile=", *args]


def wait_for_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def running(command: list[str], ready_port: int, host: str = "127.0.0.1") -> Iterator[
    subprocess.Popen[bytes]
]:
    """Run a server in the background until the block ends; wait until it accepts TCP."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            wait_for_tcp(host, ready_port)
        except OSError:
            process.kill()
            output = process.communicate(timeout=10)[0].decode(errors="replace")
            raise AssertionError(f"server did not start: {command}\n{output}") from None
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        if process.stdout:
            process.stdout.close()


# -- CPUs ---------------------------------------------------------------------------------


def two_cpus() -> tuple[int, int]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("this process may run on one CPU only: there is nowhere to move")
    return allowed[0], allowed[1]


def current_cpu() -> int:
    """The CPU this thread runs on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat") as f:
        text = f.read()
    return int(text[text.rindex(")") + 2 :].split()[36])
