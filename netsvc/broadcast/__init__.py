"""LAN broadcast: announcements, a peer table and discovery of netsvc nodes.

* :mod:`netsvc.broadcast.wire` -- the versioned wire format (pure parse/serialize);
* :mod:`netsvc.broadcast.peers` -- the bounded, expiring peer table (pure);
* :mod:`netsvc.broadcast.interfaces` -- directed broadcast addresses of local interfaces;
* :mod:`netsvc.broadcast.service` -- Twisted adapters: :func:`broadcast_service`
  (listener, responder, announcer) and :func:`discover`;
* :mod:`netsvc.broadcast.cli` -- ``netsvc discover``;
* ``python -m netsvc.broadcast`` -- run a node in the foreground (the options of
  ``twistd netsvc-broadcast``).
"""

from __future__ import annotations

from netsvc.broadcast.interfaces import BroadcastTarget, TargetSpec
from netsvc.broadcast.peers import Peer, PeerTable
from netsvc.broadcast.service import (
    DISCOVERY_PORT,
    BroadcastLimits,
    BroadcastNode,
    BroadcastService,
    DiscoveredNode,
    broadcast_service,
    discover,
)
from netsvc.broadcast.wire import NodeInfo, ServiceEntry, WireError

__all__ = [
    "DISCOVERY_PORT",
    "BroadcastLimits",
    "BroadcastNode",
    "BroadcastService",
    "BroadcastTarget",
    "DiscoveredNode",
    "NodeInfo",
    "Peer",
    "PeerTable",
    "ServiceEntry",
    "TargetSpec",
    "WireError",
    "broadcast_service",
    "discover",
]
