"""Adaptive busy-waiting: poll for a moment before going to sleep.

Used by the blocking TFTP client (:class:`netsvc.tftp.blocking.UDPChannel`), the
``netsvc-busypoll`` reactor (:mod:`netsvc.busypoll`) and the transfer sockets'
:class:`netsvc.udpport.SocketSet`. No Twisted here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["SPIN_SECONDS", "Spinner", "usable_cpus", "useful_spinner"]

T = TypeVar("T")

#: How long a wait for a datagram polls the socket before it sleeps (see :class:`Spinner`).
SPIN_SECONDS = 100e-6


def usable_cpus() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class Spinner:
    """Adaptive busy-waiting: how long the next wait may poll before it sleeps.

    Sleeping in ``poll`` and being woken up costs tens of microseconds per datagram on
    a virtual machine, more than a local peer needs to answer, so a program that
    sleeps between every packet and its answer runs at the speed of wake-ups. Polling
    for up to :data:`SPIN_SECONDS` first catches those answers awake. When answers
    keep coming later than that (a distant peer, an idle server), spinning is wasted
    CPU: after
    ``misses_allowed`` misses in a row it pauses for 16 waits, then 32, ... up to
    ``longest_pause``, and any catch resumes it.
    """

    def __init__(
        self, limit: float = SPIN_SECONDS, misses_allowed: int = 4, longest_pause: int = 1024
    ) -> None:
        self.limit = limit
        self.misses_allowed = misses_allowed
        self.longest_pause = longest_pause
        self._misses = 0
        self._pause = 0  # waits left without spinning
        self._next_pause = 16

    def budget(self) -> float:
        """Seconds the coming wait may spin (0: sleep at once)."""
        if self._pause:
            self._pause -= 1
            return 0.0
        return self.limit

    def spin(self, poll: Callable[[], T], most: float | None = None) -> T | None:
        """Call ``poll()`` without sleeping until it returns something true, for this
        wait's :meth:`budget` (at most ``most`` seconds); that result, or ``None`` when
        the budget ran out (a miss) or was nothing (pausing)."""
        budget = self.budget()
        if most is not None and most < budget:
            budget = most
        if budget <= 0:
            return None
        clock = time.perf_counter
        end = clock() + budget
        while True:
            result = poll()
            if result:
                self.caught()
                return result
            if clock() >= end:
                self.missed()
                return None

    def export_state(self) -> tuple[int, int, int]:
        """Misses in a row, waits left to pause, next pause: for a loop that runs this
        rule elsewhere (:mod:`netsvc.tftp.lockstep`) and hands it back with
        :meth:`import_state`."""
        return self._misses, self._pause, self._next_pause

    def import_state(self, misses: int, pause: int, next_pause: int) -> None:
        self._misses, self._pause, self._next_pause = misses, pause, next_pause

    def caught(self) -> None:
        """The datagram arrived while spinning."""
        self._misses = 0
        self._next_pause = 16

    def missed(self) -> None:
        """The spin ended without a datagram."""
        self._misses += 1
        if self._misses >= self.misses_allowed:
            self._misses = 0
            self._pause = self._next_pause
            self._next_pause = min(2 * self._next_pause, self.longest_pause)


def useful_spinner() -> Spinner | None:
    """A :class:`Spinner`, or ``None`` with a single usable CPU: there, spinning would
    only delay the peer it waits for."""
    return Spinner() if usable_cpus() > 1 else None
