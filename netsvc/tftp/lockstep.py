"""The steady state of a lock-step download, run in C.

A download in a process of its own (:mod:`netsvc.tftp.downloader`) spends most of its life
in one state: block N in flight, block N+1 read and packed, waiting for ACK N. In CPython
the engine's work for that state costs about as much CPU per block as the kernel's, and
with many clients on few CPUs that CPU is the time. :func:`pump` runs the state in C
(``netsvc.tftp._lockstep``): wait for the ACK (polling first as
:class:`netsvc.spin.Spinner` would, while its :class:`~netsvc.spin.IdleCpuCheck` says a
CPU is free, then sleeping in ``recv`` until the engine's deadline), time it as
:meth:`~netsvc.tftp.engine.RetransmitTimer.sample` would, send the next block, read the
one after it from the file (64 KiB at a time up to blksize 16384: a ``pread`` per block
cost more than the copy out of a buffer). Anything else goes back to the Python
engine, which stays the only judge of what a datagram means:

* :attr:`Reason.DATAGRAM`: a datagram that is not the awaited ACK (a duplicate ACK, an
  ERROR, junk): the engine handles it.
* :attr:`Reason.WAKE`: the retransmission deadline or the time limit came: the engine's
  timeout (or the caller's limit) handles it.
* :attr:`Reason.READ`: the next block is not a full one (the end is near, the file
  shrank, a read failed): the engine reads it itself and decides.
* :attr:`Reason.REFUSED`: the client's port is closed (an ICMP port unreachable came back
  as ``ECONNREFUSED``): the caller tells the engine
  (:meth:`~netsvc.tftp.engine.BlockSender.peer_unreachable`).

The engine is then updated as if it had handled each of those ACKs itself
(:meth:`~netsvc.tftp.engine.BlockSender.lockstep_moved`). A signal handler that raises
(SIGTERM: the server stops) interrupts the pump after the engine was updated.

Without a C compiler the package installs without the module; :data:`available` is then
false and downloads run entirely in Python, with the same results.
"""

from __future__ import annotations

import enum
from types import ModuleType
from typing import Any

import attrs

from netsvc.spin import Spinner
from netsvc.tftp.blocking import ReadAhead
from netsvc.tftp.colocate import CHECK_EVERY, ClientCpu
from netsvc.tftp.engine import BlockSender, LockstepPoint

_lockstep: ModuleType | None
try:
    from netsvc.tftp import _lockstep
except ImportError:  # built without a C compiler
    _lockstep = None

__all__ = ["PumpState", "Reason", "available", "pump", "send_all"]

#: Whether the C module is there (it is built by ``pip install`` where a compiler is).
available = _lockstep is not None
#: ``send_all(fd, datagrams)``: a window's datagrams in one ``sendmmsg`` (how many went
#: out; ``ConnectionRefusedError`` for a closed peer port); ``None`` without the C module.
send_all = _lockstep.send_all if _lockstep is not None else None


class Reason(enum.IntEnum):
    """Why :func:`pump` returned (values shared with the C module)."""

    DATAGRAM = 0
    WAKE = 1
    READ = 2
    REFUSED = 3


@attrs.define
class PumpState:
    """What the C loop reads and writes (attribute names are its interface)."""

    sock: int
    file: int
    size: int  # bytes of the file to send
    blksize: int
    block: int
    in_flight: bytes
    sent_at: float
    staged: bytes | None
    position: int  # file offset of the data after ``staged``
    srtt: float | None
    rttvar: float
    rto: float
    rto_min: float
    rto_max: float
    stop_at: float
    waiting_ms: int = 0  # the socket's SO_RCVTIMEO in ms as last set (0: unknown)
    # Wait in ppoll, which wakes on time, rather than in recv with SO_RCVTIMEO, which
    # costs less per block but wakes up to two scheduler ticks late: once the path has
    # been seen to lose blocks (BlockSender.losses_seen).
    precise_wait: bool = False
    spin_limit: float = 0.0  # seconds a wait may poll (0: never)
    spin_misses_allowed: int = 4
    spin_longest_pause: int = 1024
    spin_misses: int = 0
    spin_pause: int = 0
    spin_next_pause: int = 16
    # The spinner's IdleCpuCheck, which the loop runs itself: its file ("": no check) and
    # CPU count. The loop reads the file at most every netsvc.spin.IDLE_CPU_INTERVAL.
    idle_cpu_path: str = ""
    idle_cpu_count: int = 1
    # netsvc.tftp.colocate.ClientCpu: wanted, countdown, and CHECK_EVERY
    follow_client_cpu: bool = False
    follow_countdown: int = 0
    follow_every: int = CHECK_EVERY
    follow_cpu: int = -1  # where the loop's last check left it (set by it; for tests)
    acked: int = 0
    last_ack_at: float = 0.0


def pump(
    engine: BlockSender,
    point: LockstepPoint,
    *,
    sock: int,
    file: int,
    source: ReadAhead,
    spinner: Spinner | None,
    board: Any,
    stop_at: float,
    client_cpu: ClientCpu | None = None,
) -> tuple[Reason, bytes | None]:
    """Run the steady state from ``point`` (``engine.lockstep_point()``) on the connected
    socket ``sock``, reading file descriptor ``file`` (from the position ``source`` has
    reached; it continues from where the pump stopped). ``board``: the server's shared
    page (polling only while its byte 0 is at most 1), or ``None``. ``client_cpu``: the
    download's moves to its client's CPU, which the loop makes for the datagrams it
    receives (:mod:`netsvc.tftp.colocate`). Returns why it stopped and, for
    :attr:`Reason.DATAGRAM`, the datagram, which the caller gives to the engine."""
    if _lockstep is None:
        raise RuntimeError("netsvc.tftp._lockstep is not built")
    timer = engine.timer
    reader = source.reader
    state = PumpState(
        sock=sock,
        file=file,
        size=reader.size,
        blksize=engine.blksize,
        block=point.block,
        in_flight=point.in_flight,
        sent_at=point.sent_at,
        staged=point.staged,
        position=source.sent,
        srtt=point.srtt,
        rttvar=point.rttvar,
        rto=point.rto,
        rto_min=timer.minimum,
        rto_max=timer.maximum,
        stop_at=stop_at,
        precise_wait=engine.losses_seen,
    )
    if client_cpu is not None:
        state.follow_client_cpu = client_cpu.wanted
        state.follow_countdown = client_cpu.countdown
    if spinner is not None:
        state.spin_limit = spinner.limit
        state.spin_misses_allowed = spinner.misses_allowed
        state.spin_longest_pause = spinner.longest_pause
        state.spin_misses, state.spin_pause, state.spin_next_pause = spinner.export_state()
        if spinner.idle_cpu is not None:
            state.idle_cpu_path = spinner.idle_cpu.path
            state.idle_cpu_count = spinner.idle_cpu.cpus
    try:
        reason, datagram = _lockstep.pump(state, board)
    finally:
        # Also when a signal handler raised inside: the engine learns what was sent.
        if spinner is not None:
            spinner.import_state(state.spin_misses, state.spin_pause, state.spin_next_pause)
        source.restart_at(state.position)
        if client_cpu is not None:
            client_cpu.countdown = state.follow_countdown
        moved = LockstepPoint(
            state.block,
            state.in_flight,
            state.sent_at,
            state.staged,
            state.srtt,
            state.rttvar,
            state.rto,
        )
        engine.lockstep_moved(moved, state.acked, state.last_ack_at)
    return Reason(reason), datagram
