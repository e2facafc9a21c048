"""Adaptive busy-waiting: poll for a moment before going to sleep.

Used by the blocking TFTP client (:class:`netsvc.tftp.blocking.UDPChannel`), the
``netsvc-busypoll`` reactor (:mod:`netsvc.busypoll`) and the transfer sockets'
:class:`netsvc.udpport.SocketSet`. No Twisted here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "IDLE_CPU_INTERVAL",
    "LOADAVG",
    "SPIN_SECONDS",
    "IdleCpuCheck",
    "Spinner",
    "running_tasks",
    "usable_cpus",
    "useful_spinner",
]

T = TypeVar("T")

#: How long a wait for a datagram polls the socket before it sleeps (see :class:`Spinner`).
SPIN_SECONDS = 100e-6
#: Where Linux tells how many tasks are running right now (the fourth field, "3/467").
LOADAVG = "/proc/loadavg"
#: How long an :class:`IdleCpuCheck` answer holds before it reads :data:`LOADAVG` again.
IDLE_CPU_INTERVAL = 0.010


def usable_cpus() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def running_tasks(text: str) -> int | None:
    """The running-task count in a ``/proc/loadavg`` text (``"0.5 0.6 0.6 3/467 1234"``:
    3, the reader included), or ``None`` for anything else."""
    fields = text.split()
    if len(fields) < 4:
        return None
    running, slash, _ = fields[3].partition("/")
    if not slash or not running.isascii() or not running.isdigit() or len(running) > 9:
        return None
    return int(running)


class IdleCpuCheck:
    """Whether the machine has a CPU that nothing else wants: at most as many running
    tasks (the caller included) as CPUs this process may use.

    Polling for an answer instead of sleeping pays only when the CPU it takes would
    otherwise be idle. Taken from a client, a load generator or another service, it
    slows them down: with 50 curl processes starting on two CPUs, a download polling
    because it was the server's only one made the whole burst 3-13 % longer
    (docs/benchmarks.rst, sixth session). Reads :data:`LOADAVG` at most every
    ``interval`` seconds; where it cannot be read, the answer is yes (spinning as before).
    """

    def __init__(
        self,
        path: str = LOADAVG,
        cpus: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = IDLE_CPU_INTERVAL,
    ) -> None:
        self.path = path
        self.cpus = usable_cpus() if cpus is None else cpus
        self.clock = clock
        self.interval = interval
        self._checked_at = -math.inf
        self._verdict = True

    def __call__(self) -> bool:
        now = self.clock()
        if now - self._checked_at < self.interval:
            return self._verdict
        self._checked_at = now
        try:
            with open(self.path) as f:
                running = running_tasks(f.read(128))
        except OSError:
            running = None
        self._verdict = running is None or running <= self.cpus
        return self._verdict


class Spinner:
    """Adaptive busy-waiting: how long the next wait may poll before it sleeps.

    Sleeping in ``poll`` and being woken up costs tens of microseconds per datagram on
    a virtual machine, more than a local peer needs to answer, so a program that
    sleeps between every packet and its answer runs at the speed of wake-ups. Polling
    for up to :data:`SPIN_SECONDS` first catches those answers awake. When answers
    keep coming later than that (a distant peer, an idle server), spinning is wasted
    CPU: after
    ``misses_allowed`` misses in a row it pauses for 16 waits, then 32, ... up to
    ``longest_pause``, and any catch resumes it. With an ``idle_cpu`` check (such as
    :class:`IdleCpuCheck`), a wait spins only while it says yes.
    """

    def __init__(
        self,
        limit: float = SPIN_SECONDS,
        misses_allowed: int = 4,
        longest_pause: int = 1024,
        idle_cpu: IdleCpuCheck | None = None,
    ) -> None:
        self.limit = limit
        self.misses_allowed = misses_allowed
        self.longest_pause = longest_pause
        #: Spinning only while this says a CPU is free (``None``: always).
        self.idle_cpu = idle_cpu
        self._misses = 0
        self._pause = 0  # waits left without spinning
        self._next_pause = 16

    def budget(self) -> float:
        """Seconds the coming wait may spin (0: sleep at once)."""
        if self._pause:
            self._pause -= 1
            return 0.0
        if self.idle_cpu is not None and not self.idle_cpu():
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
    """A :class:`Spinner` that spins only while a CPU is free (:class:`IdleCpuCheck`), or
    ``None`` with a single usable CPU: there, spinning would only delay the peer it
    waits for."""
    cpus = usable_cpus()
    return Spinner(idle_cpu=IdleCpuCheck(cpus=cpus)) if cpus > 1 else None
