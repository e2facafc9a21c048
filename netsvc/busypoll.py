"""``netsvc-busypoll``: Twisted's epoll reactor, polling for a moment before each sleep.

``twistd --reactor=netsvc-busypoll -n netsvc-tftp --root DIR`` (or ``install()`` before
anything imports ``twisted.internet.reactor``). Every service works as on the epoll
reactor; only the waiting changes: when the reactor has nothing to do, it first polls
its descriptors without sleeping for up to :data:`netsvc.spin.SPIN_SECONDS` (100 µs),
and sleeps only if nothing came. A peer on the same machine or a fast LAN that answers
within that (a TFTP client acknowledging a block, an echo client's next request) is
served without the cost of waking the process up, which on a virtual machine is tens of
microseconds per packet. The :class:`~netsvc.spin.Spinner` stops spinning after a few
misses (an idle server, distant peers), for longer each time, so an idle server costs
next to no CPU; on a single usable CPU the reactor never spins, since spinning there
only delays the peers it waits for.

Choose it for latency with spare CPU; the plain epoll reactor spends less CPU per packet.
"""

from __future__ import annotations

import time

from twisted.internet.epollreactor import EPollReactor

from netsvc.spin import Spinner, useful_spinner

__all__ = ["BusyPollReactor", "install", "make_reactor"]


class BusyPollReactor(EPollReactor):
    """An :class:`EPollReactor` that spins (``spinner``) before it sleeps."""

    def __init__(self, spinner: Spinner | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spinner = spinner

    def doPoll(self, timeout: float | None) -> None:
        spinner = self.spinner
        if spinner is not None and (timeout is None or timeout > 0):
            poll = self._poller.poll
            started = time.perf_counter()
            # Level-triggered: an event seen here is reported again by the real poll.
            if spinner.spin(lambda: poll(0, 1), timeout):
                timeout = 0
            elif timeout is not None:  # what is left of it after the spin
                timeout = max(0.0, timeout - (time.perf_counter() - started))
        super().doPoll(timeout)  # type: ignore[no-untyped-call]

    doIteration = doPoll


def make_reactor() -> BusyPollReactor:
    """A busy-polling reactor that spins only with two or more usable CPUs."""
    return BusyPollReactor(useful_spinner())


def install() -> None:
    """Install the busy-polling reactor as the global reactor (``--reactor=netsvc-busypoll``)."""
    from twisted.internet.main import installReactor

    installReactor(make_reactor())  # type: ignore[no-untyped-call]
