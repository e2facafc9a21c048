"""Where requests were sent (netsvc.destination): a server on every address ignores
requests to a broadcast address and answers from the address the client talked to, and
``::`` takes IPv4 clients as well as IPv6 ones.

The real-socket tests run the server in this process on the real reactor; the clients
are plain blocking sockets in a thread, so that the reactor goes on serving meanwhile.
Everything stays on loopback (127.255.255.255 is loopback's broadcast address).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from netsvc.destination import (
    CONTROL_SPACE,
    Destination,
    destination_of,
    request_destinations,
)
from netsvc.testing import FakeUDPReactor, RecordingDatagramProtocol
from netsvc.tftp.backend import FilesystemBackend
from netsvc.tftp.server import TFTPServer, tftp_service
from tests.support import REPO, ipv6_loopback_available
from tests.tftp_support import MemoryBackend

reactor: Any = global_reactor

RRQ = b"\x00\x01f\x00octet\x00"
DATA = bytes(range(256)) * 80  # 20,480 bytes: 40 blocks of 512, more than the server keeps


# -- classifying -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "local", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", Destination("127.0.0.1", "127.0.0.1", False)),
        ("127.0.0.5", None, Destination("127.0.0.5", "127.0.0.5", False)),
        # The kernel answers a directed broadcast from one of its own addresses.
        ("127.255.255.255", "127.0.0.1", Destination("127.255.255.255", "", True)),
        ("192.168.1.255", "192.168.1.7", Destination("192.168.1.255", "", True)),
        ("255.255.255.255", None, Destination("255.255.255.255", "", True)),
        ("224.0.0.1", None, Destination("224.0.0.1", "", True)),
        ("::ffff:255.255.255.255", None, Destination("::ffff:255.255.255.255", "", True)),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", Destination("::ffff:127.0.0.1", "::ffff:127.0.0.1", False)),  # noqa: E501
        ("::1", None, Destination("::1", "::1", False)),
        ("ff02::1", None, Destination("ff02::1", "", True)),
        # Link-local: unicast, but binding to it needs the interface too.
        ("fe80::1", None, Destination("fe80::1", "", False)),
    ],
)
def test_destinations_are_classified(
    address: str, local: str | None, expected: Destination
) -> None:
    assert Destination.classify(address, local) == expected


def _in_pktinfo(local: str, address: str) -> tuple[int, int, bytes]:
    data = struct.pack("=i4s4s", 1, socket.inet_aton(local), socket.inet_aton(address))
    return (socket.IPPROTO_IP, 8, data)


def _in6_pktinfo(address: str) -> tuple[int, int, bytes]:
    packed = socket.inet_pton(socket.AF_INET6, address)
    return (socket.IPPROTO_IPV6, 50, struct.pack("=16si", packed, 1))


def test_ancillary_data_is_read() -> None:
    v4 = _in_pktinfo("127.0.0.1", "127.255.255.255")
    assert destination_of([v4], socket.AF_INET) == Destination("127.255.255.255", "", True)
    # An IPv6 socket gets both for an IPv4 datagram; IP_PKTINFO (with the local address)
    # decides, in the socket's notation, in either order.
    both = [_in6_pktinfo("::ffff:127.255.255.255"), v4]
    for control in (both, both[::-1]):
        assert destination_of(control, socket.AF_INET6) == Destination(
            "::ffff:127.255.255.255", "", True
        )
    assert destination_of([_in6_pktinfo("::1")], socket.AF_INET6) == Destination(
        "::1", "::1", False
    )
    assert destination_of([], socket.AF_INET) is None
    assert destination_of([(socket.IPPROTO_IP, 8, b"short")], socket.AF_INET) is None


def test_a_real_socket_reports_where_datagrams_were_sent() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as client:
        assert request_destinations(server)
        server.bind(("0.0.0.0", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        seen = []
        for target in ("127.0.0.5", "127.255.255.255"):
            client.sendto(b"x", (target, port))
            _, control, _, _ = server.recvmsg(16, CONTROL_SPACE)
            seen.append(destination_of(control, socket.AF_INET))
    assert seen == [
        Destination("127.0.0.5", "127.0.0.5", False),
        Destination("127.255.255.255", "", True),
    ]


# -- the server, in memory ---------------------------------------------------------------


def test_a_request_to_a_broadcast_address_gets_no_answer() -> None:
    fake = FakeUDPReactor()
    server = TFTPServer(fake, MemoryBackend({"f": DATA}))
    fake.listenUDP(69, server, "")
    client = RecordingDatagramProtocol()
    port = fake.listenUDP(0, client, "127.0.0.9")
    port.setBroadcastAllowed(True)
    for target in ("127.255.255.255", "255.255.255.255"):
        port.write(RRQ, (target, 69))
        fake.advance(1)
    assert client.received == [] and server.counters["ignored"] == 2
    assert server.transfers == {}
    port.write(RRQ, ("127.0.0.1", 69))  # the same request, to the server's own address
    fake.advance(0.1)
    assert client.datagrams and client.datagrams[0][:4] == b"\x00\x03\x00\x01"


# -- the server, on real sockets ---------------------------------------------------------


def exchange(family: int, target: tuple[str, int], datagram: bytes) -> tuple[bytes, Any] | None:
    """Send ``datagram`` from a fresh socket; the first reply and its source, or ``None``
    after 0.5 s. Blocking: run it in a thread."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.settimeout(0.5)
        sock.sendto(datagram, target)
        try:
            reply, source = sock.recvfrom(2048)
        except TimeoutError:
            return None
        sock.sendto(struct.pack("!HH", 5, 0) + b"done\x00", source)  # end it: ERROR 0
        return reply, source[:2]


def start_server(tmp_path: Path, interface: str, processes: bool) -> tuple[Any, int]:
    """The service (started) and its port; with ``processes``, downloads of more than
    32 blocks, such as ``f``, are sent by a worker process."""
    (tmp_path / "f").write_bytes(DATA)
    service = tftp_service(
        reactor, FilesystemBackend(str(tmp_path)), port=0, interface=interface,
        processes=processes,
    )
    service.startService()
    return service, next(iter(service)).port.getHost().port


async def stop_server(service: Any) -> None:
    stopped = service.stopService()
    if stopped is not None:
        await stopped


async def first_replies(
    port: int, targets: Sequence[tuple[int, str]]
) -> list[tuple[bytes, Any] | None]:
    return [
        await deferToThread(exchange, family, (address, port), RRQ)
        for family, address in targets
    ]


_EVERY_IPV4 = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "127.0.0.5")]
_EVERY_IPV6 = [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")]  # both families
_NO_IPV6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")


@pytest.mark.parametrize("processes", [False, True])
@pytest.mark.parametrize(
    ("interface", "served", "peers"),
    [
        ("0.0.0.0", _EVERY_IPV4, ["127.0.0.1", "127.0.0.1"]),
        pytest.param("::", _EVERY_IPV6, ["[::1]", "127.0.0.1"], marks=_NO_IPV6),
    ],
)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_server_on_every_address_answers_from_the_address_asked(
    tmp_path: Path,
    interface: str,
    served: list[tuple[int, str]],
    peers: list[str],
    processes: bool,
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
    service, port = start_server(tmp_path, interface, processes)
    try:
        *answers, broadcast = await first_replies(
            port, [*served, (socket.AF_INET, "127.255.255.255")]
        )
    finally:
        await stop_server(service)
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
    for answer, (_, address) in zip(answers, served, strict=True):
        assert answer is not None and answer[0][:4] == b"\x00\x03\x00\x01", address
        assert answer[1][0] == address  # from the address the request went to
    assert broadcast is None
    # One event per transfer (the client's source address); IPv6 written as in URLs.
    logged = sorted(e["peer"].rpartition(":")[0] for e in events if "peer" in e)
    assert logged == sorted(peers)


_V6ONLY_PROBE = """
import socket
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from netsvc.udpport import ListeningUDPPort, QuietUDPPort
plain = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
ours = [
    kind(0, DatagramProtocol(), "::", 8192, reactor).createInternetSocket()
    for kind in (QuietUDPPort, ListeningUDPPort)
]
print([s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for s in [plain, *ours]])
"""


def test_ipv6_ports_take_ipv4_whatever_the_system_default() -> None:
    # net.ipv6.bindv6only=1 (some distributions' choice) makes new IPv6 sockets IPv6-only;
    # it is per network namespace, so a namespace of its own tries it without touching
    # the machine's setting.
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (CI runs as root)")
    command = f"sysctl -qw net.ipv6.bindv6only=1 && exec {sys.executable} -c '{_V6ONLY_PROBE}'"
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", command],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 0, 0]"  # the system's default, then ours
