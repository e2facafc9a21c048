"""twistd wiring for the whole suite: ``twistd -n netsvc``.

Each service contributes a :class:`~netsvc.tapkit.ServiceSpec`; adding a service to the
suite is one line in :data:`SERVICES`.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from netsvc.broadcast_tap import BROADCAST_SPEC
from netsvc.chat_tap import CHAT_SPEC
from netsvc.echo_tap import ECHO_SPEC
from netsvc.tapkit import ServiceSpec, make_suite_service, suite_options
from netsvc.tftp_tap import TFTP_SPEC

# Broadcast last: the ports it announces are bound by the time it starts.
SERVICES: list[ServiceSpec] = [ECHO_SPEC, TFTP_SPEC, CHAT_SPEC, BROADCAST_SPEC]

Options = suite_options(SERVICES)


def makeService(options: usage.Options) -> IService:
    """Entry point of ``twistd netsvc``."""
    from twisted.internet import reactor  # twistd has installed its reactor by now

    return make_suite_service(SERVICES, options, reactor)
