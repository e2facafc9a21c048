"""netsvc.addr: notations, netmask/prefix, broadcast, host ranges, classes, ports, CLI."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc import addr
from netsvc.addr import AddressError


@pytest.mark.parametrize(
    "text",
    [
        "192.168.1.17/255.255.255.0",
        "192.168.1.17/24",
        "192.168.1.17/0.0.0.255",
        "192.168.1.17 255.255.255.0",
        "  192.168.1.17 / 24 ",
    ],
)
def test_notations_agree(text: str) -> None:
    report = addr.describe(text)
    assert str(report.network) == "192.168.1.0/24"
    assert str(report.netmask) == "255.255.255.0"
    assert report.prefixlen == 24
    assert report.host_number == 17
    assert str(report.broadcast) == "192.168.1.255"
    first, last, count = report.hosts
    assert (str(first), str(last), count) == ("192.168.1.1", "192.168.1.254", 254)
    assert report.address_class is not None and report.address_class.name == "C"
    assert report.kinds == ("private (RFC 1918: 192.168.0.0/16)",)


@pytest.mark.parametrize(
    ("text", "network", "broadcast", "first", "last", "count"),
    [
        ("10.1.2.3/8", "10.0.0.0/8", "10.255.255.255", "10.0.0.1", "10.255.255.254", 2**24 - 2),
        ("128.0.0.1/16", "128.0.0.0/16", "128.0.255.255", "128.0.0.1", "128.0.255.254", 65534),
        ("10.0.0.1/31", "10.0.0.0/31", None, "10.0.0.0", "10.0.0.1", 2),
        ("10.0.0.1/32", "10.0.0.1/32", None, "10.0.0.1", "10.0.0.1", 1),
        ("0.0.0.0/0", "0.0.0.0/0", "255.255.255.255", "0.0.0.1", "255.255.255.254", 2**32 - 2),
        ("2001:db8::1/64", "2001:db8::/64", None, "2001:db8::1",
         "2001:db8::ffff:ffff:ffff:ffff", 2**64 - 1),
        ("2001:db8::1/127", "2001:db8::/127", None, "2001:db8::", "2001:db8::1", 2),
        ("::1", "::1/128", None, "::1", "::1", 1),
    ],
)
def test_network_table(
    text: str, network: str, broadcast: str | None, first: str, last: str, count: int
) -> None:
    report = addr.describe(text)
    assert str(report.network) == network
    assert (None if report.broadcast is None else str(report.broadcast)) == broadcast
    got_first, got_last, got_count = report.hosts
    assert (str(got_first), str(got_last), got_count) == (first, last, count)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0", "A"), ("1.0.0.1", "A"), ("126.1.1.1", "A"), ("127.255.255.254", "A"),
        ("128.0.0.1", "B"), ("191.255.255.254", "B"), ("192.0.0.1", "C"),
        ("223.255.255.254", "C"), ("224.0.0.0", "D"), ("239.255.255.255", "D"),
        ("240.0.0.0", "E"), ("255.255.255.255", "E"),
    ],
)
def test_classes_follow_the_leading_bits(address: str, expected: str) -> None:
    assert addr.address_class(address) == expected
    rule = addr.class_rule(address)
    first_octet = int(address.split(".")[0])
    assert f"{first_octet:08b}".startswith(rule.leading_bits)


def test_classful_netmasks() -> None:
    assert [rule.default_prefix for rule in addr.CLASSES] == [8, 16, 24, None, None]


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("10.255.255.255", "RFC 1918: 10.0.0.0/8"),
        ("172.16.0.0", "RFC 1918: 172.16.0.0/12"),
        ("172.31.255.255", "RFC 1918: 172.16.0.0/12"),
        ("192.168.0.0", "RFC 1918: 192.168.0.0/16"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.255", "loopback"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("250.0.0.1", "reserved (class E)"),
        ("255.255.255.255", "limited broadcast"),
        ("8.8.8.8", "global"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique local"),
        ("ff02::1", "multicast"),
        ("::ffff:192.168.1.1", "RFC 1918"),
    ],
)
def test_kinds(address: str, needle: str) -> None:
    labels = addr.kinds(ipaddress.ip_address(address))
    assert any(needle in label for label in labels), labels


def test_not_private_just_outside_the_ranges() -> None:
    for address in ("172.15.255.255", "172.32.0.0", "11.0.0.0", "192.169.0.0"):
        assert not any("RFC 1918" in k for k in addr.kinds(ipaddress.ip_address(address)))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.2.3.4/255.0.255.0", "contiguous"),
        ("1.2.3.4/33", "longer than 32"),
        ("1.2.3.4/abc", "neither"),
        ("1.2.3/24", "not an IPv4 or IPv6"),
        ("", "empty"),
        ("2001:db8::1/129", "longer than 128"),
    ],
)
def test_readable_errors(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        addr.parse_interface(text)


def test_netmask_prefix_conversions() -> None:
    assert addr.netmask_to_prefix("255.255.255.0") == 24
    assert addr.netmask_to_prefix("0.0.0.0") == 0
    assert addr.netmask_to_prefix("ffff:ffff:ffff:ffff::") == 64
    assert str(addr.prefix_to_netmask(20)) == "255.255.240.0"
    assert str(addr.prefix_to_netmask(64, 6)) == "ffff:ffff:ffff:ffff::"
    with pytest.raises(AddressError):
        addr.netmask_to_prefix("255.0.255.0")
    with pytest.raises(AddressError):
        addr.prefix_to_netmask(33)


@given(st.integers(0, 32))
def test_prefix_netmask_round_trip_v4(prefix: int) -> None:
    mask = addr.prefix_to_netmask(prefix)
    assert addr.netmask_to_prefix(mask) == prefix
    assert addr.parse_interface(f"10.0.0.1/{mask}").network.prefixlen == prefix


@given(st.integers(0, 128))
def test_prefix_netmask_round_trip_v6(prefix: int) -> None:
    assert addr.netmask_to_prefix(addr.prefix_to_netmask(prefix, 6)) == prefix


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_arithmetic_matches_ipaddress(value: int, prefix: int) -> None:
    interface = ipaddress.IPv4Interface((value, prefix))
    network = interface.network
    broadcast = addr.directed_broadcast(interface)
    if prefix >= 31:
        assert broadcast is None
    else:
        assert broadcast == network.broadcast_address
        assert int(broadcast) == int(network.network_address) | int(network.hostmask)
    first, last, count = addr.usable_hosts(network)
    assert network.network_address <= first <= last <= network.broadcast_address
    assert count == int(last) - int(first) + 1
    assert addr.host_part(interface) == value & ((1 << (32 - prefix)) - 1)
    if prefix >= 22:  # small enough to enumerate
        hosts = list(network.hosts())
        assert (first, last, count) == (hosts[0], hosts[-1], len(hosts))


@given(st.integers(0, 2**128 - 1), st.integers(116, 128))
def test_ipv6_hosts_match_ipaddress(value: int, prefix: int) -> None:
    network = ipaddress.IPv6Interface((value, prefix)).network
    hosts = list(network.hosts())
    assert addr.usable_hosts(network) == (hosts[0], hosts[-1], len(hosts))


def test_ports() -> None:
    tftp = addr.lookup_port("69")
    assert ("udp", "tftp") in tftp.names
    assert tftp.range_name.startswith("well-known")
    assert addr.lookup_port("tftp").number == 69
    assert addr.lookup_port("HTTP").number == 80
    assert ("tcp", "pop2") in addr.lookup_port(109).names  # the seed's "109-POP3" is POP2
    assert ("tcp", "pop3") in addr.lookup_port(110).names
    assert addr.lookup_port(8080).range_name.startswith("registered")
    assert addr.lookup_port(50000).range_name.startswith("dynamic")
    with pytest.raises(AddressError):
        addr.lookup_port("no-such-service-xyz")
    with pytest.raises(AddressError):
        addr.lookup_port(70000)


def test_notes() -> None:
    assert any("network address" in n for n in addr.describe("10.0.0.0/24").notes())
    assert any("broadcast" in n for n in addr.describe("10.0.0.255/24").notes())
    assert any("no prefix" in n for n in addr.describe("10.0.0.5").notes())
    assert addr.describe("10.0.0.5/24").notes() == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netsvc.addr", *args], capture_output=True, text=True,
        timeout=30, check=False,
    )


def test_cli_text() -> None:
    result = run_cli("192.168.1.17/255.255.255.0", "--port", "69")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("network    192.168.1.0/24", "netmask    255.255.255.0 = /24",
                   "broadcast  192.168.1.255", "(254 usable)", "class      C",
                   "port       69: tftp/udp"):
        assert needle in out


def test_cli_json_and_errors() -> None:
    result = run_cli("2001:db8::1/64", "10.0.0.1/255.0.255.0", "--json")
    assert result.returncode == 1
    assert "contiguous" in result.stderr
    [document] = json.loads(result.stdout)
    assert document["network"] == "2001:db8::/64"
    assert document["broadcast"] is None
    assert document["host_count"] == 2**64 - 1
    assert run_cli().returncode == 2


def test_add_parser_registers_addr() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    addr.add_parser(parser.add_subparsers())
    args = parser.parse_args(["addr", "10.0.0.1/8", "-p", "tftp"])
    assert args.addresses == ["10.0.0.1/8"] and args.port == ["tftp"]


@pytest.mark.parametrize(
    ("host", "plain"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # an IPv4 peer of a dual-stack socket
        ("::FFFF:10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),  # not how sockets write it: left alone
        ("2001:db8::ffff:1.2.3.4", "2001:db8::ffff:1.2.3.4"),  # not IPv4-mapped
        ("", ""),
    ],
)
def test_plain_host_unmaps_ipv4_mapped_addresses(host: str, plain: str) -> None:
    assert addr.plain_host(host) == plain
