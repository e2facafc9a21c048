"""twistd wiring for echo: ``twistd -n netsvc-echo`` and the ``--echo-*`` suite options."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.application.service import IService
from twisted.python import usage

from netsvc.echo import ECHO_PORT, EchoLimits, echo_service
from netsvc.tapkit import (
    NO_LIMIT,
    Flag,
    Param,
    ServiceSpec,
    Values,
    make_standalone_service,
    number,
    standalone_options,
    whole_number,
)

_DEFAULTS = EchoLimits()
N = TypeVar("N", int, float)


def _off_if_zero(value: N) -> N | None:
    return value or None


def build_echo(values: Values, reactor: Any) -> IService:
    """Build the echo service from option values (shared by the plugin and the suite)."""
    limits = EchoLimits(
        max_connections=_off_if_zero(values["max-connections"]),
        max_connections_per_peer=_off_if_zero(values["max-per-peer"]),
        idle_timeout=_off_if_zero(values["idle-timeout"]),
        udp_rate=_off_if_zero(values["udp-rate"]),
        udp_burst=values["udp-burst"],
        udp_limit_loopback=bool(values["udp-limit-loopback"]),
    )
    return echo_service(
        reactor,
        port=values["port"],
        interface=values["interface"],
        tcp=not values["no-tcp"],
        udp=not values["no-udp"],
        tcp_endpoint=values["tcp"],
        limits=limits,
    )


def _check(values: Values) -> None:
    if values["no-tcp"] and values["no-udp"]:
        raise usage.UsageError("switching off both TCP and UDP leaves no echo to run")


ECHO_SPEC = ServiceSpec(
    name="echo",
    description="RFC 862 echo over TCP and UDP",
    params=[
        Param(
            "port",
            ECHO_PORT,
            "TCP and UDP port (RFC 862: 7).",
            whole_number("port", 0, 65535),
            "p",
        ),
        Param(
            "interface",
            "",
            "Address to listen on: an IPv4 or IPv6 address, or :: for dual-stack"
            " (default: all IPv4 interfaces).",
            None,
            "i",
        ),
        Param(
            "tcp",
            None,
            "TCP server endpoint, replacing the port and interface for TCP"
            " (e.g. tcp:7007:interface=127.0.0.1).",
        ),
        Param(
            "max-connections",
            _DEFAULTS.max_connections,
            "Most TCP connections at once (0: no limit).",
            whole_number("max-connections", 0, note=NO_LIMIT),
        ),
        Param(
            "max-per-peer", 0, "Most TCP connections from one address (0: no limit).",
            whole_number("max-per-peer", 0, note=NO_LIMIT),
        ),
        Param(
            "idle-timeout",
            0.0,
            "Close TCP connections idle this many seconds (0: never).",
            number("idle-timeout", "seconds", zero_means="never"),
        ),
        Param(
            "udp-rate",
            _DEFAULTS.udp_rate,
            "UDP datagrams answered per second per source address (0: no limit).",
            number("udp-rate", "datagrams per second", zero_means="no limit"),
        ),
        Param(
            "udp-burst",
            _DEFAULTS.udp_burst,
            "UDP datagrams a source may send at once before its rate applies (at least 1).",
            number("udp-burst", "datagrams", at_least=1),
        ),
    ],
    flags=[
        Flag("no-tcp", "Do not serve TCP echo."),
        Flag("no-udp", "Do not serve UDP echo."),
        Flag(
            "udp-limit-loopback",
            "Rate-limit loopback sources too (by default they are exempt: they cannot be "
            "forged from the network, so they are no reflection victims).",
        ),
    ],
    build=build_echo,
    check=_check,
)

Options = standalone_options(ECHO_SPEC)


def makeService(options: usage.Options) -> IService:
    """Entry point of ``twistd netsvc-echo``."""
    from twisted.internet import reactor  # twistd has installed its reactor by now

    return make_standalone_service(ECHO_SPEC, options, reactor)
