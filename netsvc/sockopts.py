"""Socket settings shared by the Twisted ports and the blocking client (no Twisted here)."""

from __future__ import annotations

import socket

__all__ = ["grow_receive_buffer"]


def grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Let the kernel queue at least ``size`` bytes of datagrams for ``sock``.

    A burst larger than the receive buffer loses its tail, which the sender only
    notices at a timeout. The kernel caps the value at ``net.core.rmem_max`` and counts
    each datagram with its overhead (an 8 KiB datagram takes about 17 KiB): ``size``
    should include it. Never shrinks the buffer; best effort (a smaller buffer only
    costs retransmissions).
    """
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            # The kernel doubles what it is given (for its bookkeeping).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, (size + 1) // 2)
    except OSError:
        pass
