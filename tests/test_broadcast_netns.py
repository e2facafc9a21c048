"""Broadcast across two network namespaces joined by a veth pair (10.213.0.0/24).

Node A runs ``python -m netsvc.broadcast`` in namespace a with its default targets (every
non-loopback interface: the veth, so 10.213.0.255 computed from 10.213.0.1/24 by ifaddr);
``netsvc discover`` runs in namespace b with its defaults too. The limited broadcast
(255.255.255.255) is exercised here only, inside the namespaces. Skipped, with the reason
in the output, only where namespaces cannot be created.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.netns import NetnsPair, namespaces_available, stop

pytestmark = [pytest.mark.root]

PORT = 27492
BAR_SECONDS = 1.0


@pytest.fixture(scope="module")
def pair() -> Iterator[NetnsPair]:
    available, reason = namespaces_available()
    if not available:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NetnsPair(subnet="10.213.0") as created:
        yield created


def start_node(pair: NetnsPair, where: str, *args: str) -> subprocess.Popen[str]:
    namespace = pair.a if where == "a" else pair.b
    process = namespace.popen(
        [sys.executable, "-m", "netsvc.broadcast", "--port", str(PORT), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("broadcast node on"):
        stop(process)
        pytest.fail(f"node did not start in {where}: {line!r} {process.communicate()[1]}")
    return process


def discover_from_b(pair: NetnsPair, *args: str) -> tuple[float, list[dict[str, object]]]:
    start = time.monotonic()
    result = pair.b.run(
        [sys.executable, "-m", "netsvc.broadcast.cli", "--port", str(PORT), "--json", *args],
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode in (0, 1), result.stderr.decode()
    return elapsed, json.loads(result.stdout)


def test_discovery_crosses_the_veth_within_one_second(pair: NetnsPair) -> None:
    node = start_node(pair, "a", "--discovery", "--name", "node-a",
                      "--advertise", "tftp/udp/69")
    try:
        elapsed, nodes = discover_from_b(pair, "--timeout", "1")
        assert [(n["name"], n["address"]) for n in nodes] == [("node-a", pair.a_address)]
        rtt_ms = nodes[0]["rtt_ms"]
        assert isinstance(rtt_ms, float)
        print(f"netns discovery: reply after {rtt_ms:.2f} ms, discover ran {elapsed:.2f} s "
              f"(bar {BAR_SECONDS:.0f} s)")
        assert rtt_ms < BAR_SECONDS * 1000
        assert nodes[0]["services"] == [{"name": "tftp", "protocol": "udp", "port": 69}]
        # default targets in b: the veth's directed broadcast, and not loopback
        probe = pair.b.run([sys.executable, "-c", (
            "from netsvc.broadcast.interfaces import TargetSpec;"
            "print([t.address for t in TargetSpec().resolve()])")], timeout=30)
        assert probe.stdout.decode().strip() == f"['{pair.broadcast_address}']"
    finally:
        stop(node)


def test_announcements_cross_by_directed_broadcast(pair: NetnsPair) -> None:
    listener = start_node(pair, "b", "--name", "listener-b")
    announcer = start_node(pair, "a", "--announce", "--interval", "0.2", "--name", "node-a")
    try:
        time.sleep(1.0)
    finally:
        stop(announcer)
        stop(listener)
    log = listener.communicate(timeout=10)[1]
    assert "node-a (" in log and f"at {pair.a_address} joined" in log, log[-2000:]


def test_limited_broadcast_inside_the_namespaces_only_when_asked(pair: NetnsPair) -> None:
    node = start_node(pair, "a", "--discovery", "--name", "node-a")
    try:
        # --address 255.255.255.255 alone: only the limited broadcast is used
        # (from b's veth address: there is no default route to carry it otherwise)
        _, nodes = discover_from_b(pair, "--address", "255.255.255.255", "--count", "1",
                                   "--timeout", "2", "--bind", pair.b_address)
        assert [n["name"] for n in nodes] == ["node-a"]
        # and the --limited flag adds it to the interface targets
        result = pair.b.run([sys.executable, "-m", "netsvc.broadcast.cli", "--port",
                             str(PORT), "--limited", "--timeout", "0.5"], timeout=60)
        assert "255.255.255.255" in result.stderr.decode()
    finally:
        stop(node)
