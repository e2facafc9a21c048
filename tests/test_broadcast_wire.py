"""netsvc.broadcast.wire, peers and interfaces: pure code, tables and properties."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc.broadcast import wire
from netsvc.broadcast.interfaces import InterfaceAddress, TargetSpec, broadcast_targets
from netsvc.broadcast.peers import PeerTable, Update
from netsvc.broadcast.wire import (
    Announcement,
    NodeInfo,
    Query,
    Reply,
    ServiceEntry,
    WireError,
    decode,
    encode,
)

NODE = b"\x01" * 8
OTHER = b"\x02" * 8
NONCE = b"\x10" * 8
INFO = NodeInfo("node-a", (ServiceEntry("echo", "tcp", 7), ServiceEntry("tftp", "udp", 69)))


@pytest.mark.parametrize(
    "message",
    [
        Announcement(NODE, 1, INFO, 30),
        Announcement(NODE, 2**64 - 1, NodeInfo("节点一"), 1),
        Query(NODE, NONCE),
        Query(NODE, NONCE, "tftp"),
        Reply(NODE, NONCE, INFO),
    ],
)
def test_round_trip(message: wire.Message) -> None:
    datagram = encode(message)
    assert decode(datagram) == message
    assert wire.is_candidate(datagram)
    assert wire.sender_id(datagram) == NODE
    assert len(datagram) <= wire.MAX_MESSAGE_SIZE


def test_header_layout() -> None:
    datagram = encode(Announcement(NODE, 7, INFO, 30))
    magic, version, kind, node, token, length = struct.unpack_from("!4sBB8s8sH", datagram)
    assert (magic, version, kind, node) == (b"NSVD", 1, 1, NODE)
    assert int.from_bytes(token, "big") == 7
    body = json.loads(datagram[24 : 24 + length])
    assert body == {"name": "node-a", "services": [["echo", "tcp", 7], ["tftp", "udp", 69]],
                    "ttl": 30}


def test_queries_are_padded_and_replies_never_longer() -> None:
    query = encode(Query(NODE, NONCE))
    assert len(query) == wire.QUERY_SIZE
    biggest = NodeInfo(
        "x" * 64, tuple(ServiceEntry("s" * 32, "tcp", 65535) for _ in range(16))
    )
    fitted, omitted = wire.fit_info(biggest)
    assert omitted > 0
    assert len(encode(Reply(NODE, NONCE, fitted))) <= len(query)


def test_unknown_keys_are_ignored() -> None:
    body = b'{"name":"n","services":[],"ttl":5,"future":{"x":[1,2]}}'
    datagram = struct.pack("!4sBB8s8sH", b"NSVD", 1, 1, NODE, bytes(8), len(body)) + body
    assert decode(datagram) == Announcement(NODE, 0, NodeInfo("n"), 5)


def _raw(kind: int, body: bytes, *, version: int = 1, node: bytes = NODE) -> bytes:
    return struct.pack("!4sBB8s8sH", b"NSVD", version, kind, node, bytes(8), len(body)) + body


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "shorter"),
        (b"NSVD", "shorter"),
        (b"XXXX" + bytes(30), "magic"),
        (_raw(1, b"{}", version=2), "version"),
        (_raw(9, b"{}"), "kind"),
        (_raw(1, b'{"name":"n","ttl":5}', node=bytes(8)), "node id"),
        (_raw(1, b'{"name":"n","ttl":5}')[:-3], "past the end"),
        (_raw(1, b'{"name":"n","ttl":5}') + b"\x00\x01", "after the body"),
        (_raw(1, b'{"name":"n"}'), "ttl"),
        (_raw(1, b'{"name":"n","ttl":0}'), "ttl"),
        (_raw(1, b'{"name":"n","ttl":true}'), "ttl"),
        (_raw(1, b'{"name":"","ttl":5}'), "name"),
        (_raw(1, b'{"name":"a\\u001b[2J","ttl":5}'), "control"),
        (_raw(1, b'{"name":"n","ttl":5,"services":[["x","sctp",1]]}'), "protocol"),
        (_raw(1, b'{"name":"n","ttl":5,"services":[["x","tcp",0]]}'), "port"),
        (_raw(1, b'{"name":"n","ttl":5,"services":[["x","tcp",true]]}'), "port"),
        (_raw(1, b'{"name":"n","ttl":5,"services":[["bad name","tcp",1]]}'), "service name"),
        (_raw(1, b'{"name":"n","ttl":5,"services":{}}'), "list"),
        (_raw(1, b"[1,2]"), "object"),
        (_raw(1, b"\xff\xfe"), "JSON"),
        (_raw(1, b"[" * 480), "JSON"),
        (_raw(2, b'{"service":7}'), "service name"),
        (_raw(3, b'{"name":"n","services":[[1,2]]}'), "entry"),
        (_raw(1, b"{}") + bytes(600), "exceeds"),
    ],
)
def test_malformed(datagram: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode(datagram)


@given(st.binary(max_size=700))
def test_decode_raises_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data)


@given(st.binary(max_size=488))
def test_decode_our_header_with_any_body(body: bytes) -> None:
    for kind in (1, 2, 3, 4):
        with contextlib.suppress(WireError):
            decode(_raw(kind, body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["name", "ttl", "services", "service", "x"]),
                       json_values, max_size=4))
def test_decode_any_json_object(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    if len(raw) > 480:
        return
    for kind in (1, 2, 3):
        with contextlib.suppress(WireError):
            decode(_raw(kind, raw))


def test_encode_refuses_oversized() -> None:
    huge = NodeInfo("n" * 64, tuple(ServiceEntry("s" * 32, "tcp", 65535) for _ in range(16)))
    with pytest.raises(WireError, match="exceeds"):
        encode(Announcement(NODE, 1, huge, 30))


def test_value_checks() -> None:
    with pytest.raises(WireError):
        NodeInfo("n" * 65)
    with pytest.raises(WireError):
        ServiceEntry("echo", "icmp", 7)
    with pytest.raises(WireError):
        Announcement(b"short", 1, INFO, 30)
    with pytest.raises(WireError):
        Query(NODE, NONCE, "no spaces")


# ------------------------------------------------------------------------------ peers


def announce(node: bytes, sequence: int, name: str = "n", ttl: int = 30) -> Announcement:
    return Announcement(node, sequence, NodeInfo(name), ttl)


def test_peer_table_life_cycle() -> None:
    table = PeerTable(max_peers=10, max_ttl=100)
    assert table.update(announce(NODE, 1), "10.0.0.1", 1, now=0) is Update.JOINED
    assert table.update(announce(NODE, 2), "10.0.0.1", 1, now=5) is Update.REFRESHED
    assert table.update(announce(NODE, 2), "10.0.0.1", 1, now=6) is Update.STALE
    assert table.update(announce(NODE, 3, "renamed"), "10.0.0.1", 1, now=7) is Update.CHANGED
    peer = table.get(NODE)
    assert peer is not None and peer.name == "renamed" and peer.first_seen == 0
    assert peer.expires == 37
    assert table.expire(36.9) == []
    assert [p.node_id for p in table.expire(37)] == [NODE]
    assert len(table) == 0


def test_peer_table_caps_ttl() -> None:
    table = PeerTable(max_ttl=10)
    table.update(announce(NODE, 1, ttl=86400), "h", 1, now=0)
    assert table.peers(now=9.9) and not table.peers(now=10)


def test_full_table_refuses_newcomers_but_keeps_known_peers() -> None:
    table = PeerTable(max_peers=2)
    table.update(announce(b"\x01" * 8, 1, ttl=10), "h", 1, now=0)
    table.update(announce(b"\x02" * 8, 1, ttl=100), "h", 1, now=0)
    assert table.update(announce(b"\x03" * 8, 1), "h", 1, now=1) is Update.FULL
    assert table.refused == 1
    # a known peer still refreshes; once an entry expires, a newcomer gets in
    assert table.update(announce(b"\x02" * 8, 2), "h", 1, now=2) is Update.REFRESHED
    assert table.update(announce(b"\x03" * 8, 1), "h", 1, now=11) is Update.JOINED


# ------------------------------------------------------------------------------ interfaces


def iface(name: str, text: str) -> InterfaceAddress:
    return InterfaceAddress(name, ipaddress.IPv4Interface(text))


INTERFACES = [
    iface("lo", "127.0.0.1/8"),
    iface("eth0", "192.168.1.17/24"),
    iface("eth1", "10.1.2.3/16"),
    iface("ptp0", "10.9.9.1/31"),
    iface("tun0", "10.8.0.1/32"),
]


def test_directed_broadcast_per_interface() -> None:
    targets = broadcast_targets(INTERFACES)
    assert [(t.interface, t.address) for t in targets] == [
        ("eth0", "192.168.1.255"), ("eth1", "10.1.255.255"),
    ]
    assert next(t.address for t in broadcast_targets(INTERFACES, include_loopback=True)) == (
        "127.255.255.255"
    )
    assert [t.address for t in broadcast_targets(INTERFACES, names=["lo"])] == [
        "127.255.255.255"
    ]
    assert [t.address for t in broadcast_targets(INTERFACES, names=["10.1.2.3"])] == [
        "10.1.255.255"
    ]


def test_target_spec() -> None:
    assert [t.address for t in TargetSpec(addresses=("127.255.255.255",)).resolve_from(
        INTERFACES)] == ["127.255.255.255"]
    spec = TargetSpec(interfaces=("eth0",), addresses=("192.168.1.255",), limited=True)
    assert [t.address for t in spec.resolve_from(INTERFACES)] == [
        "192.168.1.255", "255.255.255.255",
    ]
    assert not TargetSpec().limited  # limited broadcast only when asked
    with pytest.raises(ValueError, match="IPv4"):
        TargetSpec(addresses=("eth0",))
    # the address-only spec never asks the system for its interfaces
    assert TargetSpec(addresses=("10.0.0.255",)).resolve(lambda: 1 / 0) != []  # type: ignore
