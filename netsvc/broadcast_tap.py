"""twistd wiring for broadcast: ``twistd -n netsvc-broadcast`` and ``--broadcast-*`` options.

Standalone, the node always listens (and logs nodes joining and leaving);
``--announce`` makes it announce itself, ``--discovery`` makes it answer
``netsvc discover``. Both are off by default. In the suite (``twistd netsvc``) the node
runs with ``--broadcast`` and advertises the ports of the other services it runs beside.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from netsvc.broadcast.interfaces import TargetSpec
from netsvc.broadcast.service import (
    DEFAULT_LIMITS,
    DISCOVERY_PORT,
    MIN_ANNOUNCE_INTERVAL,
    BroadcastLimits,
    broadcast_service,
)
from netsvc.broadcast.wire import (
    MAX_NAME_BYTES,
    MAX_SERVICES,
    MAX_TTL,
    ServiceEntry,
    WireError,
    check_node_name,
)
from netsvc.tapkit import (
    Flag,
    Param,
    ServiceSpec,
    Values,
    make_standalone_service,
    number,
    standalone_options,
    whole_number,
)

__all__ = ["BROADCAST_SPEC", "Options", "build_broadcast", "makeService", "service_list"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def service_list(text: str) -> tuple[ServiceEntry, ...]:
    """Parse ``name/proto/port,...`` (``tftp/udp/69,echo/tcp/7``)."""
    entries = []
    for item in _names(text):
        parts = item.split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"{item!r} is not NAME/PROTOCOL/PORT (like tftp/udp/69)")
        try:
            entries.append(ServiceEntry(parts[0], parts[1].lower(), int(parts[2])))
        except WireError as error:
            raise ValueError(f"{item!r}: {error}") from None
    return tuple(entries)


def _advertised(text: str) -> tuple[ServiceEntry, ...]:
    """``--advertise``: :func:`service_list`, with an error that names the option.

    At most :data:`MAX_SERVICES` services: an announcement carries no more, and the rest
    would be dropped without a word.
    """
    try:
        entries = service_list(text)
    except ValueError as error:
        raise ValueError(
            f"advertise must be services as NAME/PROTOCOL/PORT separated by commas,"
            f" not {text!r}: {error}"
        ) from None
    if len(entries) > MAX_SERVICES:
        raise ValueError(
            f"advertise must be at most {MAX_SERVICES} services (all an announcement"
            f" carries), not {len(entries)}: {text!r}"
        )
    return entries


def _targets(values: Values) -> TargetSpec:
    return TargetSpec(
        interfaces=_names(values["interfaces"]),
        addresses=_names(values["addresses"]),
        include_loopback=bool(values["loopback"]),
        limited=bool(values["limited"]),
    )


def _limits(values: Values) -> BroadcastLimits:
    return BroadcastLimits(
        max_peers=values["max-peers"],
        reply_rate=values["reply-rate"],
        reply_burst=values["reply-burst"],
    )


def build_broadcast(values: Values, reactor: Any) -> IService:
    """Build the broadcast node from option values (shared by the plugin and the suite)."""
    interval = values["interval"]
    return broadcast_service(
        reactor,
        name=values["name"] or None,
        port=values["port"],
        interface=values["interface"],
        services=values["advertise"],
        announce=bool(values["announce"]),
        respond=bool(values["discovery"]),
        interval=interval,
        ttl=values["ttl"] or None,
        targets=_targets(values),
        limits=_limits(values),
    )


def _check(values: Values) -> None:
    name = values["name"]
    try:
        if name:
            check_node_name(name)
    except WireError as error:
        raise usage.UsageError(
            f"name must be a node name of at most {MAX_NAME_BYTES} UTF-8 bytes without"
            f" control characters (empty: the host name), not {name!r}: {error}"
        ) from None
    try:
        _limits(values)
    except ValueError as error:
        raise usage.UsageError(str(error)) from None
    try:
        _targets(values)
    except ValueError as error:
        raise usage.UsageError(
            f"addresses must be IPv4 addresses separated by commas,"
            f" not {values['addresses']!r}: {error}"
        ) from None
    ttl, interval = values["ttl"], values["interval"]
    if ttl and ttl < interval:
        raise usage.UsageError(
            f"ttl must be 0 or at least the interval ({interval:g} s), not {ttl}: peers would"
            " expire between two announcements"
        )
    if not ttl and round(3 * interval) > MAX_TTL:
        raise usage.UsageError(
            f"interval {interval:g} makes the default ttl (three intervals) longer than the"
            f" {MAX_TTL} seconds an announcement can carry: give a ttl from {interval:g}"
            f" to {MAX_TTL}"
        )


BROADCAST_SPEC = ServiceSpec(
    name="broadcast",
    description="LAN broadcast: peer table, announcements, discovery replies",
    params=[
        Param(
            "port",
            DISCOVERY_PORT,
            f"UDP port shared by all nodes ({DISCOVERY_PORT}).",
            whole_number("port", 1, 65535, " (nodes share it: 0 would pick a random one)"),
            "p",
        ),
        Param(
            "interface",
            "",
            "Address to bind (default 0.0.0.0: needed to hear broadcasts).",
            None,
            "i",
        ),
        Param("name", "", "Node name shown by netsvc discover (default: the host name)."),
        Param(
            "interval",
            10.0,
            f"Seconds between announcements (at least {MIN_ANNOUNCE_INTERVAL:g}).",
            number("interval", "seconds", at_least=MIN_ANNOUNCE_INTERVAL),
        ),
        Param(
            "ttl",
            0,
            "Whole seconds listeners keep this node without news, at most"
            f" {MAX_TTL} (0: three intervals).",
            whole_number("ttl", 0, MAX_TTL, " (0: three intervals)"),
        ),
        Param(
            "interfaces",
            "",
            "Announce on these interfaces only: names or addresses,"
            " comma-separated (default: every non-loopback IPv4 interface).",
        ),
        Param(
            "addresses",
            "",
            "Announce to these IPv4 addresses (comma-separated), e.g."
            " 127.255.255.255; alone, no interface is used.",
        ),
        Param(
            "advertise",
            (),
            "Services to advertise besides the suite's own, as NAME/PROTO/PORT,... (tftp/udp/69).",
            _advertised,
        ),
        Param(
            "reply-rate",
            DEFAULT_LIMITS.reply_rate,
            "Discovery replies per second per source address.",
            number("reply-rate", "replies per second"),
        ),
        Param(
            "reply-burst",
            DEFAULT_LIMITS.reply_burst,
            "Discovery replies a source may get at once (at least 1).",
            number("reply-burst", "replies", at_least=1),
        ),
        Param(
            "max-peers", DEFAULT_LIMITS.max_peers, "Nodes kept in the peer table.",
            whole_number("max-peers", 1),
        ),
    ],
    flags=[
        Flag(
            "announce", "Announce this node periodically (off by default).",
            suite_name="announce",
        ),
        Flag(
            "discovery", "Answer netsvc discover queries (off by default).",
            suite_name="discovery",
        ),
        Flag("loopback", "Also announce on the loopback interface (127.255.255.255)."),
        Flag("limited", "Also announce to 255.255.255.255 (limited broadcast)."),
    ],
    build=build_broadcast,
    suite_switch=("announce", "discovery"),
    check=_check,
)

Options = standalone_options(BROADCAST_SPEC)


def makeService(options: usage.Options) -> IService:
    """Entry point of ``twistd netsvc-broadcast``."""
    from twisted.internet import reactor  # twistd has installed its reactor by now

    return make_standalone_service(BROADCAST_SPEC, options, reactor)
