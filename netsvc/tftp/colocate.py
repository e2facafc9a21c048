"""Run a download on the CPU of a client on this host.

A lock-step download is a ping-pong: the client's ACK wakes the worker, the worker's
DATA wakes the client. On one CPU each wake-up is a context switch; across two CPUs each
one is also an inter-processor interrupt and a remote wake-up, which cost both sides CPU
(in a virtual machine, an exit to the hypervisor too). The scheduler's wake-up placement
usually keeps a pair on one CPU, but not always: in a traced burst of 50 local downloads,
4 pairs (worker, client) stayed on two CPUs for the whole download, and others split
midway (docs/benchmarks.rst, "Tenth session"; ``bench/sched_pairs.py`` counts it).

So a worker moves itself to the CPU on which its client's packets are processed
(``SO_INCOMING_CPU``): for a client on this host, the CPU the client sends from. It
checks after the first datagram from the client and then every :data:`CHECK_EVERY`,
while the server runs other transfers too. Alone, a download polls awake for its ACKs
(:mod:`netsvc.tftp.downloader`) on its own CPU while the client runs on another, which
is faster than sharing one: a single curl download of 64 MiB at blksize 512 took 3.3 s
with the move against 2.9 s without. In the C loop a check that finds both on one CPU
costs one system call; Python cannot ask which CPU it is on, so there a check always
sets the affinity (three more calls). The move is a hint: the affinity is restored at
once, and the scheduler stays free to move the worker again.

Only for a client on this host: behind a network card, that CPU is the one handling the
card's receive queue, which may be the same for every client, and following it would
crowd every download onto one CPU.

:class:`ClientCpu` is the Python side; the C loop (``netsvc.tftp._lockstep``) does the
same for the datagrams it receives itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import suppress

from netsvc.addr import plain_host

__all__ = ["CHECK_EVERY", "ClientCpu", "is_on_this_host", "move_to_incoming_cpu"]

#: Datagrams from the client between two checks of its CPU.
CHECK_EVERY = 16
#: ``None`` where the move is not possible (not Linux).
_SO_INCOMING_CPU: int | None = (
    getattr(socket, "SO_INCOMING_CPU", None) if hasattr(os, "sched_setaffinity") else None
)


def is_on_this_host(peer_host: str, local_host: str) -> bool:
    """Whether a client is on this host, as far as addresses tell: it sent from a
    loopback address, or from the address it sent to (``local_host``, when known)."""
    host = plain_host(peer_host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    return bool(local_host) and host == plain_host(local_host)


def move_to_incoming_cpu(sock: socket.socket) -> bool:
    """Move this process to the CPU that processed ``sock``'s last incoming packet, then
    allow it its former CPUs again; whether that CPU was known (nothing received yet: no).
    A CPU this process may not use, or a failing call, leaves it where it is."""
    if _SO_INCOMING_CPU is None:
        return True  # nothing to learn here: do not ask again
    try:
        cpu = sock.getsockopt(socket.SOL_SOCKET, _SO_INCOMING_CPU)
    except OSError:
        return True
    if cpu < 0:
        return False
    try:
        allowed = os.sched_getaffinity(0)
    except OSError:
        return True
    if cpu not in allowed or len(allowed) == 1:
        return True
    try:
        os.sched_setaffinity(0, {cpu})  # moves this process there before it returns
    except OSError:
        return True
    # The set it had a moment ago; should that fail all the same (its CPUs taken away
    # meanwhile), the download goes on where it is.
    with suppress(OSError):
        os.sched_setaffinity(0, allowed)
    return True


class ClientCpu:
    """One download's moves to its client's CPU (see the module's text): a check after
    the first datagram received from the client, and again every :data:`CHECK_EVERY`
    datagrams (the scheduler may have moved either side meanwhile)."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted and _SO_INCOMING_CPU is not None
        self.countdown = 0  # datagrams to receive before the next check

    def after_receive(self, sock: socket.socket, alone: bool) -> None:
        """Call after receiving a datagram from the client on ``sock``; ``alone``:
        whether the server runs no other transfer (then a check moves nothing)."""
        if not self.wanted:
            return
        if self.countdown > 0:
            self.countdown -= 1
        elif alone or move_to_incoming_cpu(sock):
            self.countdown = CHECK_EVERY - 1
