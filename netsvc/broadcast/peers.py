"""The table of peers heard on the broadcast port (pure: the caller passes the time).

Bounded: at most ``max_peers`` nodes. When the table is full, a new node is refused
(counted) rather than pushing out a node already known: a flood of forged announcements
then cannot flush the real peers, and the newcomer gets in as soon as an entry expires.
"""

from __future__ import annotations

import enum

import attrs

from netsvc.broadcast.wire import Announcement, ServiceEntry

__all__ = ["Peer", "PeerTable", "Update"]


@attrs.frozen
class Peer:
    """A node heard from, as the table keeps it."""

    node_id: bytes
    name: str
    host: str
    port: int
    services: tuple[ServiceEntry, ...]
    sequence: int
    first_seen: float
    last_seen: float
    expires: float

    @property
    def node(self) -> str:
        """The node id in hex, for logs and display."""
        return self.node_id.hex()

    def describe_services(self) -> str:
        return ", ".join(str(entry) for entry in self.services) or "no services"


class Update(enum.Enum):
    """What :meth:`PeerTable.update` did with an announcement."""

    JOINED = "joined"  # a new node
    CHANGED = "changed"  # known node, new name, address or services
    REFRESHED = "refreshed"  # known node, nothing new but its expiry
    STALE = "stale"  # an older sequence number than the one we have (reordered)
    FULL = "full"  # new node refused: the table is full


class PeerTable:
    """Nodes keyed by node id, each expiring ``ttl`` seconds after its last announcement."""

    def __init__(self, max_peers: int = 1024, max_ttl: float = 3600.0) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, got {max_peers}")
        if not max_ttl > 0:
            raise ValueError(f"max_ttl must be positive, got {max_ttl}")
        self.max_peers = max_peers
        self.max_ttl = max_ttl
        self._peers: dict[bytes, Peer] = {}
        self.refused = 0

    def update(self, message: Announcement, host: str, port: int, now: float) -> Update:
        """Record an announcement received from ``(host, port)`` at ``now``."""
        expires = now + min(float(message.ttl), self.max_ttl)
        known = self._peers.get(message.node_id)
        if known is None:
            if len(self._peers) >= self.max_peers:
                self.expire(now)
                if len(self._peers) >= self.max_peers:
                    self.refused += 1
                    return Update.FULL
            self._peers[message.node_id] = Peer(
                message.node_id,
                message.info.name,
                host,
                port,
                message.info.services,
                message.sequence,
                now,
                now,
                expires,
            )
            return Update.JOINED
        if message.sequence <= known.sequence:
            return Update.STALE
        changed = (known.name, known.host, known.port, known.services) != (
            message.info.name,
            host,
            port,
            message.info.services,
        )
        self._peers[message.node_id] = attrs.evolve(
            known,
            name=message.info.name,
            host=host,
            port=port,
            services=message.info.services,
            sequence=message.sequence,
            last_seen=now,
            expires=expires,
        )
        return Update.CHANGED if changed else Update.REFRESHED

    def expire(self, now: float) -> list[Peer]:
        """Remove and return the peers whose time ran out by ``now``."""
        gone = [peer for peer in self._peers.values() if peer.expires <= now]
        for peer in gone:
            del self._peers[peer.node_id]
        return gone

    def remove(self, node_id: bytes) -> Peer | None:
        """Forget one node (it said goodbye, or the caller knows better)."""
        return self._peers.pop(node_id, None)

    def peers(self, now: float | None = None) -> list[Peer]:
        """The known peers (still alive at ``now``, if given), by name then address."""
        alive = [p for p in self._peers.values() if now is None or p.expires > now]
        return sorted(alive, key=lambda peer: (peer.name, peer.host, peer.node_id))

    def get(self, node_id: bytes) -> Peer | None:
        return self._peers.get(node_id)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers
