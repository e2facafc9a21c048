"""The discovery wire format: announcements, queries and replies (pure, no I/O).

Every message is one UDP datagram of at most :data:`MAX_MESSAGE_SIZE` bytes::

    offset  size  field
    0       4     magic  b"NSVD"
    4       1     version (1)
    5       1     kind: 1 announce, 2 query, 3 reply
    6       8     node id: random per node, so a node recognises its own datagrams
    14      8     token: announce sequence number / query nonce (echoed by the reply)
    22      2     body length N (network order)
    24      N     body: a JSON object, UTF-8
    24+N    ...   zero padding (queries are padded to QUERY_SIZE bytes)

Bodies: an announcement ``{"name": ..., "services": [[name, "tcp"|"udp", port], ...],
"ttl": seconds}``; a reply the same without ``ttl``; a query ``{}`` or ``{"service":
name}`` to ask only nodes offering that service. Unknown keys are ignored (a later minor
revision may add some); another version number is rejected as a whole.

:func:`decode` never raises anything but :class:`WireError`, whatever the bytes.
"""

from __future__ import annotations

import enum
import json
import re
import struct
import unicodedata
from typing import Any, TypeAlias

import attrs

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_BYTES",
    "MAX_SERVICES",
    "MAX_TTL",
    "NODE_ID_SIZE",
    "QUERY_SIZE",
    "VERSION",
    "Announcement",
    "Kind",
    "Message",
    "NodeInfo",
    "Query",
    "Reply",
    "ServiceEntry",
    "WireError",
    "decode",
    "encode",
    "fit_info",
    "is_candidate",
    "sender_id",
]

MAGIC = b"NSVD"
VERSION = 1
_HEADER = struct.Struct("!4sBB8s8sH")
HEADER_SIZE = _HEADER.size  # 24
NODE_ID_SIZE = 8
#: No datagram of ours is longer: a reply always fits in one unfragmented packet.
MAX_MESSAGE_SIZE = 512
#: Queries are padded to this size, and a responder never sends a reply longer than the
#: query it answers: answering cannot amplify traffic (bytes or packets).
QUERY_SIZE = MAX_MESSAGE_SIZE
MAX_NAME_BYTES = 64
MAX_SERVICES = 16
MAX_TTL = 86_400
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_PROTOCOLS = ("tcp", "udp")


class WireError(ValueError):
    """A datagram that is not a valid message, or a message that cannot be encoded."""


class Kind(enum.IntEnum):
    ANNOUNCE = 1
    QUERY = 2
    REPLY = 3


def _check_node_id(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != NODE_ID_SIZE:
        raise WireError(f"a node id is {NODE_ID_SIZE} bytes, not {value!r}")


def _check_token(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 8:
        raise WireError(f"a token is 8 bytes, not {value!r}")


def check_node_name(name: object) -> str:
    """A node name: 1-64 UTF-8 bytes, no control or format characters (safe to print)."""
    if not isinstance(name, str) or not name:
        raise WireError("the node name must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise WireError(f"the node name is longer than {MAX_NAME_BYTES} bytes")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise WireError(f"the node name contains the control character {char!r}")
    return name


def check_service_name(name: object) -> str:
    """A service name: ASCII letters, digits, ``.``, ``_``, ``-``; 1-32 characters."""
    if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
        raise WireError(f"{name!r} is not a service name (letters, digits, . _ -; 1-32)")
    return name


def _validate_name(_instance: object, _attribute: object, value: str) -> None:
    check_node_name(value)


@attrs.frozen
class ServiceEntry:
    """One service a node offers: ``ServiceEntry("tftp", "udp", 69)``."""

    name: str = attrs.field(validator=lambda _i, _a, v: check_service_name(v))
    protocol: str
    port: int

    def __attrs_post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise WireError(f"protocol must be tcp or udp, not {self.protocol!r}")
        if type(self.port) is not int or not 1 <= self.port <= 65535:
            raise WireError(f"{self.port!r} is not a port number (1-65535)")

    def __str__(self) -> str:
        return f"{self.name} {self.port}/{self.protocol}"


@attrs.frozen
class NodeInfo:
    """What a node says about itself: its name and services."""

    name: str = attrs.field(validator=_validate_name)
    services: tuple[ServiceEntry, ...] = ()

    def __attrs_post_init__(self) -> None:
        if len(self.services) > MAX_SERVICES:
            raise WireError(f"at most {MAX_SERVICES} services, not {len(self.services)}")

    def offers(self, service: str) -> bool:
        return any(entry.name == service for entry in self.services)


@attrs.frozen
class Announcement:
    """Sent periodically to broadcast addresses; keeps the node in listeners' tables."""

    node_id: bytes = attrs.field(validator=_check_node_id)
    sequence: int
    info: NodeInfo
    #: Seconds a listener keeps the node without hearing from it again.
    ttl: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.sequence < 1 << 64:
            raise WireError(f"sequence {self.sequence} does not fit in 64 bits")
        if type(self.ttl) is not int or not 1 <= self.ttl <= MAX_TTL:
            raise WireError(f"ttl must be 1-{MAX_TTL} seconds, not {self.ttl!r}")


@attrs.frozen
class Query:
    """ "Who is there?", broadcast by ``netsvc discover``; answered by unicast replies."""

    node_id: bytes = attrs.field(validator=_check_node_id)
    nonce: bytes = attrs.field(validator=_check_token)
    #: Only nodes offering this service should answer (None: every node).
    service: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.service is not None:
            check_service_name(self.service)


@attrs.frozen
class Reply:
    """A responder's answer to one :class:`Query` (same nonce), sent to the querier."""

    node_id: bytes = attrs.field(validator=_check_node_id)
    nonce: bytes = attrs.field(validator=_check_token)
    info: NodeInfo


Message: TypeAlias = Announcement | Query | Reply


def _info_body(info: NodeInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "services": [[entry.name, entry.protocol, entry.port] for entry in info.services],
    }


def encode(message: Message, *, pad_to: int | None = None) -> bytes:
    """The datagram for ``message``; queries are padded to :data:`QUERY_SIZE` by default.

    Raises :class:`WireError` when it would exceed :data:`MAX_MESSAGE_SIZE`
    (see :func:`fit_info`).
    """
    body: dict[str, Any]
    if isinstance(message, Announcement):
        kind, token = Kind.ANNOUNCE, message.sequence.to_bytes(8, "big")
        body = _info_body(message.info)
        body["ttl"] = message.ttl
    elif isinstance(message, Query):
        kind, token = Kind.QUERY, message.nonce
        body = {} if message.service is None else {"service": message.service}
        if pad_to is None:
            pad_to = QUERY_SIZE
    else:
        kind, token = Kind.REPLY, message.nonce
        body = _info_body(message.info)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    datagram = _HEADER.pack(MAGIC, VERSION, kind, message.node_id, token, len(raw)) + raw
    if pad_to is not None and len(datagram) < pad_to:
        datagram += bytes(pad_to - len(datagram))
    if len(datagram) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(datagram)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return datagram


def fit_info(info: NodeInfo, budget: int = MAX_MESSAGE_SIZE) -> tuple[NodeInfo, int]:
    """``info`` with as many services as fit in an announcement of ``budget`` bytes;
    also returns how many services were left out."""
    services = list(info.services)
    while True:
        candidate = NodeInfo(info.name, tuple(services))
        probe = Announcement(bytes(NODE_ID_SIZE - 1) + b"\x01", 0, candidate, MAX_TTL)
        try:
            if len(encode(probe)) <= budget:
                return candidate, len(info.services) - len(services)
        except WireError:
            pass
        if not services:
            raise WireError(f"the node name alone does not fit in {budget} bytes")
        services.pop()


def is_candidate(datagram: bytes) -> bool:
    """Cheap pre-filter: the right magic and a plausible size (no parsing)."""
    return HEADER_SIZE <= len(datagram) <= MAX_MESSAGE_SIZE and datagram[:4] == MAGIC


def sender_id(datagram: bytes) -> bytes:
    """The node id field of a candidate datagram (see :func:`is_candidate`)."""
    return datagram[6:14]


def decode(datagram: bytes) -> Message:
    """Parse one datagram; :class:`WireError` (only) if it is not a valid message."""
    if len(datagram) > MAX_MESSAGE_SIZE:
        raise WireError(f"datagram of {len(datagram)} bytes exceeds {MAX_MESSAGE_SIZE}")
    if len(datagram) < HEADER_SIZE:
        raise WireError(f"datagram of {len(datagram)} bytes is shorter than the header")
    magic, version, kind, node_id, token, length = _HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise WireError("not a netsvc discovery datagram (bad magic)")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    end = HEADER_SIZE + length
    if end > len(datagram):
        raise WireError("body length runs past the end of the datagram")
    if any(datagram[end:]):
        raise WireError("non-zero bytes after the body")
    if node_id == bytes(NODE_ID_SIZE):
        raise WireError("the all-zero node id is invalid")
    try:
        body = json.loads(datagram[HEADER_SIZE:end].decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise WireError(f"body is not UTF-8 JSON: {error}") from None
    if not isinstance(body, dict):
        raise WireError("body is not a JSON object")
    if kind == Kind.ANNOUNCE:
        ttl = body.get("ttl")
        if type(ttl) is not int:
            raise WireError("announcement without an integer ttl")
        return Announcement(node_id, int.from_bytes(token, "big"), _info(body), ttl)
    if kind == Kind.QUERY:
        service = body.get("service")
        if service is not None:
            check_service_name(service)
        return Query(node_id, token, service)
    if kind == Kind.REPLY:
        return Reply(node_id, token, _info(body))
    raise WireError(f"unknown message kind {kind}")


def _info(body: dict[str, Any]) -> NodeInfo:
    name = check_node_name(body.get("name"))
    raw = body.get("services", [])
    if not isinstance(raw, list) or len(raw) > MAX_SERVICES:
        raise WireError(f"services must be a list of at most {MAX_SERVICES} entries")
    services = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise WireError("a service entry is [name, protocol, port]")
        name_, protocol, port = item
        if not isinstance(protocol, str):
            raise WireError("a service protocol is a string")
        if type(port) is not int:
            raise WireError("a service port is an integer")
        services.append(ServiceEntry(check_service_name(name_), protocol, port))
    return NodeInfo(name, tuple(services))
