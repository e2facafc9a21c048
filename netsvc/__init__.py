"""netsvc: event-driven network services on Twisted.

Each service is a library first (protocols, factories and builder functions that take a
``reactor``) and a twistd plugin second (``twistd -n netsvc``, ``twistd -n netsvc-echo``,
``twistd -n netsvc-tftp``).

Subpackages load on first use, so ``import netsvc`` stays cheap:

* :mod:`netsvc.echo` -- RFC 862 echo over TCP and UDP (:func:`netsvc.echo.echo_service`);
* :mod:`netsvc.tftp` -- TFTP wire format, engine, server, client and backends;
* :mod:`netsvc.testing` -- in-memory UDP networking for tests (``FakeUDPReactor``);
* :mod:`netsvc.chat` -- a multi-user line chat server (``twistd -n netsvc-chat``);
* :mod:`netsvc.addr` -- IPv4/IPv6 address arithmetic (``netsvc addr``);
* :mod:`netsvc.broadcast` -- LAN announcements, peer table and discovery;
* :mod:`netsvc.ratelimit` -- token buckets shared by the services.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "addr",
    "broadcast",
    "chat",
    "echo",
    "ratelimit",
    "testing",
    "tftp",
]

_SUBMODULES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"netsvc.{name}")
    raise AttributeError(f"module 'netsvc' has no attribute {name!r}")
