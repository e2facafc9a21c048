"""A download follows its client's CPU when the client is on this host
(netsvc.tftp.colocate, and the same in the C loop)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from netsvc.tftp import colocate
from netsvc.tftp.colocate import CHECK_EVERY, ClientCpu, is_on_this_host, move_to_incoming_cpu
from tests.interop_support import HOST
from tests.support import current_cpu


@pytest.mark.parametrize(
    ("peer", "local", "expected"),
    [
        ("127.0.0.1", "", True),
        ("127.3.4.5", "0.0.0.0", True),
        ("::1", "::", True),
        ("::ffff:127.0.0.1", "::", True),
        ("192.0.2.7", "192.0.2.7", True),  # a client that used this host's own address
        ("::ffff:192.0.2.7", "192.0.2.7", True),
        ("192.0.2.8", "192.0.2.7", False),
        ("192.0.2.8", "", False),
        ("2001:db8::2", "2001:db8::1", False),
        ("fe80::1%eth0", "", False),
        ("not an address", "not an address", False),
    ],
)
def test_a_client_is_on_this_host_by_its_address(peer: str, local: str, expected: bool) -> None:
    assert is_on_this_host(peer, local) is expected


def test_checks_come_after_the_first_datagram_and_then_every_check_every(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked_at: list[int] = []
    received = [0]

    def move(sock: socket.socket) -> bool:
        checked_at.append(received[0])
        return True

    monkeypatch.setattr(colocate, "move_to_incoming_cpu", move)
    client_cpu = ClientCpu(True)
    for count in range(1, 3 * CHECK_EVERY + 2):
        received[0] = count
        client_cpu.after_receive(socket.socket(), alone=False)
    assert checked_at == [1, 1 + CHECK_EVERY, 1 + 2 * CHECK_EVERY, 1 + 3 * CHECK_EVERY]


def test_an_unknown_cpu_is_asked_again_at_the_next_datagram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = [False, False, True, True]
    monkeypatch.setattr(colocate, "move_to_incoming_cpu", lambda sock: answers.pop(0))
    client_cpu = ClientCpu(True)
    for _ in range(3 + CHECK_EVERY):
        client_cpu.after_receive(socket.socket(), alone=False)
    assert answers == []  # asked at 1, 2, 3 (known), then at 3 + CHECK_EVERY


def test_alone_a_check_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    moved_at: list[int] = []
    monkeypatch.setattr(colocate, "move_to_incoming_cpu", lambda sock: moved_at.append(1) or True)
    client_cpu = ClientCpu(True)
    for count in range(1, 3 * CHECK_EVERY + 2):
        client_cpu.after_receive(socket.socket(), alone=count <= CHECK_EVERY + 1)
    assert len(moved_at) == 2  # the checks at 1 and 1 + CHECK_EVERY found it alone


def test_a_remote_client_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(colocate, "move_to_incoming_cpu", lambda sock: pytest.fail("moved"))
    client_cpu = ClientCpu(False)
    for _ in range(2 * CHECK_EVERY):
        client_cpu.after_receive(socket.socket(), alone=False)


# -- the move itself, on this machine's CPUs ------------------------------------------------


def send_from_cpu(cpu: int, sock: socket.socket, datagram: bytes) -> None:
    """Send from a thread bound to ``cpu``: loopback processes the packet there."""

    def send() -> None:
        os.sched_setaffinity(0, {cpu})
        sock.send(datagram)

    thread = threading.Thread(target=send)
    thread.start()
    thread.join(5)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind((HOST, 0))
    theirs.bind((HOST, 0))
    ours.connect(theirs.getsockname())
    theirs.connect(ours.getsockname())
    ours.settimeout(5)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_the_move_goes_to_the_cpu_that_sent_and_keeps_the_affinity(
    start_on_first_cpu: tuple[int, int], pair: tuple[socket.socket, socket.socket]
) -> None:
    here, there = start_on_first_cpu
    ours, theirs = pair
    allowed = os.sched_getaffinity(0)
    assert current_cpu() == here
    send_from_cpu(there, theirs, b"\x00\x04\x00\x00")
    ours.recv(16)
    assert move_to_incoming_cpu(ours) is True
    assert current_cpu() == there
    assert os.sched_getaffinity(0) == allowed


def test_nothing_received_means_not_known_yet(
    start_on_first_cpu: tuple[int, int], pair: tuple[socket.socket, socket.socket]
) -> None:
    here, _ = start_on_first_cpu
    assert move_to_incoming_cpu(pair[0]) is False
    assert current_cpu() == here


def test_a_cpu_this_process_may_not_use_is_left_alone(
    start_on_first_cpu: tuple[int, int], pair: tuple[socket.socket, socket.socket]
) -> None:
    here, there = start_on_first_cpu
    ours, theirs = pair
    os.sched_setaffinity(0, {here})  # as under a cpuset without the client's CPU
    send_from_cpu(there, theirs, b"\x00\x04\x00\x00")
    ours.recv(16)
    assert move_to_incoming_cpu(ours) is True  # known, and nothing to do
    assert current_cpu() == here
    assert os.sched_getaffinity(0) == {here}
