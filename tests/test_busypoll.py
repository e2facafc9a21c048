"""The netsvc-busypoll reactor: spinning before sleeping, and a real server on it."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netsvc.busypoll as busypoll
import netsvc.spin as spin
from netsvc.busypoll import BusyPollReactor
from netsvc.spin import Spinner
from netsvc.testing import RecordingDatagramProtocol
from tests.interop_support import TFTPServer


@pytest.fixture
def reactor_and_port() -> tuple[BusyPollReactor, RecordingDatagramProtocol, socket.socket]:
    reactor = BusyPollReactor(Spinner(limit=0.002, misses_allowed=1))
    protocol = RecordingDatagramProtocol()
    port = reactor.listenUDP(0, protocol, "127.0.0.1")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(("127.0.0.1", port.getHost().port))
    yield reactor, protocol, sender
    sender.close()
    port.stopListening()


def test_a_datagram_that_is_ready_is_caught_while_spinning(
    reactor_and_port: tuple[BusyPollReactor, RecordingDatagramProtocol, socket.socket],
) -> None:
    reactor, protocol, sender = reactor_and_port
    sender.send(b"ping")
    time.sleep(0.01)  # queued in the socket before the reactor looks
    reactor.doPoll(5.0)
    assert protocol.datagrams == [b"ping"]
    assert reactor.spinner is not None and reactor.spinner.budget() > 0  # no miss counted


def test_nothing_ready_spins_then_sleeps_the_rest_of_the_timeout(
    reactor_and_port: tuple[BusyPollReactor, RecordingDatagramProtocol, socket.socket],
) -> None:
    reactor, protocol, _ = reactor_and_port
    started = time.monotonic()
    reactor.doPoll(0.05)
    elapsed = time.monotonic() - started
    assert protocol.datagrams == [] and 0.04 <= elapsed < 0.5
    assert reactor.spinner is not None and reactor.spinner.budget() == 0.0  # paused after a miss


def test_a_zero_timeout_never_spins(
    reactor_and_port: tuple[BusyPollReactor, RecordingDatagramProtocol, socket.socket],
) -> None:
    reactor, _, _ = reactor_and_port
    reactor.doPoll(0)
    assert reactor.spinner is not None and reactor.spinner.budget() > 0  # nothing consumed


def test_one_cpu_means_no_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spin, "usable_cpus", lambda: 1)
    assert busypoll.make_reactor().spinner is None
    monkeypatch.setattr(spin, "usable_cpus", lambda: 2)
    assert isinstance(busypoll.make_reactor().spinner, Spinner)


def test_twistd_lists_the_reactor() -> None:
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "--help-reactors"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout
    assert "netsvc-busypoll" in listing


def test_a_tftp_server_on_the_busypoll_reactor_serves_curl(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = bytes(range(256)) * 4000  # 1 MB
    (root / "f.bin").write_bytes(data)
    server = TFTPServer(root, tmp_path / "server.log", reactor="netsvc-busypoll").start()
    try:
        target = tmp_path / "got.bin"
        subprocess.run(
            ["curl", "-s", "--connect-timeout", "30", "-m", "60", "--tftp-blksize", "1468",
             "-o", str(target), server.url("f.bin")],
            check=True,
        )
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert "BusyPollReactor" in server.log()
    finally:
        server.stop()
