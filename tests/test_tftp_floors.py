"""Retransmission floors learned per client host (netsvc.tftp.floors)."""

from __future__ import annotations

import pytest

from netsvc.testing import LinkConditions
from netsvc.tftp.backend import MemoryWriter
from netsvc.tftp.client import download
from netsvc.tftp.floors import KEEP_FOR, SHARED_CAP, LearnedFloors
from netsvc.tftp.server import TFTPServerLimits, Transfer
from tests.tftp_support import SERVER_HOST, SERVER_PORT, fake_network, finish


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_learned_floor_is_for_its_host_only() -> None:
    floors = LearnedFloors(Clock())
    floors.learned("192.0.2.1", 0.03)
    assert floors.floor_for("192.0.2.1") == 0.03
    assert floors.floor_for("192.0.2.2") is None


def test_a_shared_floor_is_capped() -> None:
    floors = LearnedFloors(Clock())
    floors.learned("192.0.2.1", 2.0)
    assert floors.floor_for("192.0.2.1") == SHARED_CAP


def test_a_floor_is_forgotten_keep_for_seconds_after_it_was_learned() -> None:
    clock = Clock()
    floors = LearnedFloors(clock)
    floors.learned("192.0.2.1", 0.03)
    clock.now += KEEP_FOR - 1
    assert floors.floor_for("192.0.2.1") == 0.03  # asking does not keep it
    clock.now += 1
    assert floors.floor_for("192.0.2.1") is None
    assert len(floors) == 0


def test_a_fresh_floor_only_grows_a_stale_one_is_replaced() -> None:
    clock = Clock()
    floors = LearnedFloors(clock)
    floors.learned("192.0.2.1", 0.05)
    floors.learned("192.0.2.1", 0.02)  # a concurrent download learned less
    assert floors.floor_for("192.0.2.1") == 0.05
    clock.now += KEEP_FOR
    floors.learned("192.0.2.1", 0.02)
    assert floors.floor_for("192.0.2.1") == 0.02


def test_a_lowered_floor_replaces_a_higher_one_and_keeps_its_age() -> None:
    clock = Clock()
    floors = LearnedFloors(clock)
    floors.lowered("192.0.2.1", 0.01)  # nothing known: nothing to lower
    assert floors.floor_for("192.0.2.1") is None
    floors.learned("192.0.2.1", 0.2)
    clock.now += 10
    floors.lowered("192.0.2.1", 0.3)  # not lower: stays
    assert floors.floor_for("192.0.2.1") == 0.2
    floors.lowered("192.0.2.1", 0.025)
    assert floors.floor_for("192.0.2.1") == 0.025
    clock.now += KEEP_FOR - 10  # forgotten when the raise it came from is old
    assert floors.floor_for("192.0.2.1") is None


def test_the_hosts_learned_longest_ago_go_first() -> None:
    clock = Clock()
    floors = LearnedFloors(clock, max_hosts=3)
    for number in range(1, 5):
        clock.now += 1
        floors.learned(f"192.0.2.{number}", 0.01 * number)
    floors.learned("192.0.2.2", 0.05)  # learned again: now the newest
    clock.now += 1
    floors.learned("192.0.2.5", 0.05)
    assert len(floors) == 3
    assert floors.floor_for("192.0.2.1") is None and floors.floor_for("192.0.2.3") is None
    assert [floors.floor_for(f"192.0.2.{n}") for n in (2, 4, 5)] == [0.05, 0.04, 0.05]


def test_a_timer_starts_from_the_learned_floor_within_the_servers_bounds() -> None:
    limits = TFTPServerLimits()
    assert limits.timer_for(None).minimum == limits.min_rto
    assert limits.timer_for(None, 0.05).minimum == 0.05
    assert limits.timer_for(None, 0.001).minimum == limits.min_rto  # never below min_rto
    assert limits.timer_for(1, 5.0).minimum == 1.0  # never above the client's timeout
    # Real losses may take a learned floor back down to min_rto, no further.
    assert limits.timer_for(None, 0.05).lowest == limits.min_rto



def test_a_download_served_here_passes_on_the_floor_late_acks_taught_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started_from: list[float | None] = []
    remember = Transfer._remember_floor

    def noting_remember(self: Transfer) -> None:
        started_from.append(self._start_floor)
        remember(self)

    monkeypatch.setattr(Transfer, "_remember_floor", noting_remember)
    data = bytes(range(256)) * 2000  # 1,000 blocks of 512
    # Blocks and ACKs up to 20 ms late, against a 5 ms floor: spurious timeouts (this
    # seed of the simulated link has some; the run is deterministic).
    reactor, server, _ = fake_network(
        {"f": data}, conditions=LinkConditions(delay=0.0005, jitter=0.02), seed=0
    )
    for _ in range(2):
        writer = MemoryWriter()
        finish(reactor, download(reactor, SERVER_HOST, "f", writer, port=SERVER_PORT))
        assert writer.data == data
        reactor.run_until(lambda: not server.transfers, timeout=10)  # the last ACK arrives
        if len(started_from) == 1:
            learned = server.learned_floors.floor_for(SERVER_HOST)  # the client's host too
            assert learned is not None and server.limits.min_rto < learned <= SHARED_CAP
    assert started_from == [server.limits.min_rto, learned]


def test_a_download_through_loss_passes_on_the_lower_floor_its_losses_left() -> None:
    data = bytes(range(256)) * 400  # 200 blocks of 512
    reactor, server, _ = fake_network(
        {"f": data}, conditions=LinkConditions(delay=0.0005, loss=0.1), seed=1
    )
    server.learned_floors.learned(SERVER_HOST, SHARED_CAP)  # an earlier busy moment
    writer = MemoryWriter()
    finish(reactor, download(reactor, SERVER_HOST, "f", writer, port=SERVER_PORT))
    assert writer.data == data
    reactor.run_until(lambda: not server.transfers, timeout=30)
    shared = server.learned_floors.floor_for(SERVER_HOST)
    assert shared is not None and server.limits.min_rto <= shared < SHARED_CAP / 4
