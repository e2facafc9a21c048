"""The Twisted side of one transfer, shared by the server and the client.

:class:`EngineSession` owns a UDP port, a sans-I/O engine and the reader or writer it
feeds: it turns datagrams and one lazily re-armed timer into engine events, hands the
engine's reads and writes to the (possibly asynchronous) reader/writer, and makes sure
the final block of an upload is acknowledged only after the writer committed it.
Subclasses (the server's transfer, the client) decide how the session starts and what
happens when it ends (:meth:`EngineSession.session_ended`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsvc.tftp.backend import BackendError
from netsvc.tftp.engine import (
    BlockReceiver,
    BlockSender,
    Outcome,
    encode_error,
    window_receive_buffer,
)
from netsvc.tftp.packets import ErrorCode
from netsvc.udpport import QuietUDPPort, connect_peer_socket

__all__ = ["READ_AHEAD", "EngineSession"]

#: Bytes read from a reader at a time (at least one block): bounded per session.
READ_AHEAD = 32 * 1024

class EngineSession(DatagramProtocol):
    """Drives a :class:`BlockSender` or :class:`BlockReceiver` over a Twisted UDP port."""

    noisy = False
    log = Logger()

    #: The peer's (host, port): datagrams from anywhere else get ERROR 5.
    peer: tuple[str, int] | None = None

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.engine: BlockSender | BlockReceiver | None = None
        self.reader: Any = None
        self.writer: Any = None
        self.port: IListeningPort | None = None
        self.committed = False
        self.finished = False
        self._timer: IDelayedCall | None = None
        self._timer_at = float("inf")
        self._in_io_call = False
        self._completed_inline = False
        # How datagrams reach the peer: the port socket's own sendto(datagram, peer), or
        # the peer socket's send(datagram).
        self._send: Callable[..., object] | None = None
        # A socket connected to the peer (see use_peer_socket), and its read size.
        self._peer_socket: socket.socket | None = None
        self._peer_read_size = 1024
        self._peer_refused = False  # the peer's port is closed (see send_to_peer)
        self._buffer = b""  # read-ahead from the reader; the next block starts at _offset
        self._offset = 0
        self._source_done = False
        self._reading = False

    # -- sending ------------------------------------------------------------------------

    def send_to_peer(self, datagram: bytes) -> None:
        """Send a datagram to the peer; a failing send counts as a lost packet."""
        send = self._send
        if send is None:
            send = self._send = self._direct_send()
            if send is None:
                return
        # EAGAIN, ENOBUFS, EPERM...: a failed send is a lost packet; the timers recover.
        try:
            if self._peer_socket is None:
                send(datagram, self.peer)
            else:
                send(datagram)
        except ConnectionRefusedError:
            # The peer's port is closed (socket connected to it): told to the engine
            # after the call that sent this one (after_event), not from inside it.
            self._peer_refused = True
        except OSError:
            pass

    def _direct_send(self) -> Callable[..., object] | None:
        # Per block, Twisted's udp.Port.write re-validates the address three times; the
        # socket's own sendto does the same job without that (and the same errors), and
        # a socket connected to the peer needs no address at all.
        port, peer = self.port, self.peer
        if port is None or peer is None:
            return None
        if self._peer_socket is not None:
            connected: Callable[[bytes], object] = self._peer_socket.send
            return connected
        try:
            sendto: Callable[[bytes, Any], object] = port.getHandle().sendto  # type: ignore[attr-defined]
        except (AttributeError, NotImplementedError):
            sendto = port.write  # type: ignore[attr-defined]
        return sendto

    def use_peer_socket(self) -> None:
        """Talk to the peer through a socket connected to it (:func:`connect_peer_socket`),
        where the reactor and the platform allow; the port still answers strangers.

        Call once the port and peer are set, before anything is sent.
        """
        port, peer = self.port, self.peer
        if not isinstance(port, QuietUDPPort) or port.socket_set is None or peer is None:
            return
        peer_socket = connect_peer_socket(port, peer)
        if peer_socket is None:
            return
        self._peer_socket = peer_socket
        self._send = None
        port.socket_set.add(peer_socket.fileno(), self._peer_readable)

    def _peer_readable(self) -> None:
        # The peer socket's read handler: one datagram per call (level-triggered).
        peer_socket = self._peer_socket
        if peer_socket is None:
            return
        try:
            datagram = peer_socket.recv(self._peer_read_size)
        except ConnectionRefusedError:
            # An ICMP port unreachable about an earlier send: the peer has gone.
            self._peer_refused = True
            self.after_event()
            return
        except OSError:
            return  # nothing after all
        engine = self.engine
        if engine is None or self.finished:
            return  # still opening the file: the peer will retransmit
        engine.on_datagram(datagram, self.reactor.seconds())
        self.after_event()

    def _close_peer_socket(self) -> None:
        peer_socket, self._peer_socket = self._peer_socket, None
        if peer_socket is None:
            return
        self._send = None  # it was this socket's send
        port = self.port
        if isinstance(port, QuietUDPPort) and port.socket_set is not None:
            port.socket_set.remove(peer_socket.fileno())
        peer_socket.close()

    def send_error(self, addr: Any, code: int, message: str) -> None:
        """Send ERROR to ``addr`` (the peer or a stranger)."""
        if self.port is None:
            return
        with suppress(OSError):
            self.port.write(encode_error(code, message), addr)  # type: ignore[attr-defined]

    # -- engine callbacks: reading --------------------------------------------------------

    def engine_read(self, size: int) -> bytes | None:
        """The sender's ``read``: bytes now, or ``None`` while an async read is pending.

        Reads ahead in chunks of :data:`READ_AHEAD` bytes, so a 512-byte blksize costs
        one read system call per 64 blocks instead of one per block.
        """
        offset = self._offset
        if len(self._buffer) - offset < size and not self._source_done:
            if self._reading or not self._refill(max(size, READ_AHEAD)):
                return None
            offset = 0
        end = offset + size
        self._offset = end
        return self._buffer[offset:end]

    def _refill(self, size: int) -> bool:
        """Ask the reader for more; whether the data is already here."""
        try:
            result = self.reader.read(size)
        except BackendError as error:
            self.fail_locally(error.code, error.message)
            return False
        except OSError as error:
            self.fail_locally(ErrorCode.NOT_DEFINED, f"read error: {error.strerror}")
            return False
        if not isinstance(result, Deferred):
            self._append(result, size)
            return True
        self._reading = True
        self._in_io_call = True
        result.addCallback(self._append, size).addCallbacks(self._read_arrived, self._io_failed)
        self._in_io_call = False
        return not self._reading  # it may have fired at once

    def _append(self, data: bytes, requested: int) -> None:
        self._buffer = self._buffer[self._offset :] + bytes(data)
        self._offset = 0
        if len(data) < requested:
            self._source_done = True  # a short read is the end of the data

    def _read_arrived(self, _: object) -> None:
        self._reading = False
        engine = self.engine
        if not self._in_io_call and isinstance(engine, BlockSender) and not self.finished:
            engine.resume(self.reactor.seconds())
            self.after_event()

    # -- engine callbacks: writing --------------------------------------------------------

    def engine_write(self, payload: bytes) -> bool:
        """The receiver's ``write``: ``True`` when written, ``False`` when it finishes later."""
        engine = self.engine
        assert isinstance(engine, BlockReceiver)
        final = len(payload) < engine.blksize
        try:
            result = self.writer.write(payload)
        except BackendError as error:
            self.fail_locally(error.code, error.message)
            return False
        except OSError as error:
            self.fail_locally(ErrorCode.DISK_FULL, f"write error: {error.strerror}")
            return False
        if result is None and not final:
            return True
        # The final block is acknowledged only once the writer has committed the file
        # (fsync and rename): the last ACK promises the peer that the file is complete.
        written: Deferred[Any] = maybeDeferred(lambda: result)
        if final:
            written.addCallback(lambda _: self._commit())
        self._completed_inline = False
        self._in_io_call = True
        written.addCallbacks(self._write_finished, self._io_failed)
        self._in_io_call = False
        return self._completed_inline

    def _commit(self) -> Deferred[None]:
        committed: Deferred[None] = maybeDeferred(self.writer.commit)
        return committed.addCallback(self._mark_committed)

    def _mark_committed(self, _: object) -> None:
        self.committed = True

    def _write_finished(self, _: object) -> None:
        if self._in_io_call:
            self._completed_inline = True
            return
        engine = self.engine
        if isinstance(engine, BlockReceiver) and not self.finished:
            engine.write_done(self.reactor.seconds())
            self.after_event()

    def _io_failed(self, failure: Failure) -> None:
        self._reading = False
        error = failure.value
        if isinstance(error, BackendError):
            self.fail_locally(error.code, error.message)
        else:
            self.log.failure("tftp: storage I/O failed", failure)
            self.fail_locally(ErrorCode.NOT_DEFINED, "internal error")

    def fail_locally(self, code: int, message: str) -> None:
        """Abort the transfer because of a local problem (the peer gets ERROR ``code``)."""
        if self.engine is not None:
            self.engine.abort(code, message, self.reactor.seconds())
        if not self._in_io_call:
            self.after_event()

    def fit_packet_size(self) -> None:
        """Shrink the port's receive size to what the peer may legitimately send.

        The socket read allocates this many bytes per datagram (then trims): 64 KiB per
        4-byte ACK is pure waste. One byte more than a full DATA block keeps an
        oversized block detectable.
        """
        engine, port = self.engine, self.port
        if engine is None or port is None or not hasattr(port, "maxPacketSize"):
            return
        if isinstance(engine, BlockReceiver):
            port.maxPacketSize = self._peer_read_size = engine.blksize + 5
            if engine.windowsize > 1 and isinstance(port, QuietUDPPort):
                # A window of blocks arrives as a burst: with receive offload (where the
                # kernel coalesces them) it is one read instead of many; and the socket
                # must hold two windows, or the tail of one is lost (then waits a timeout).
                port.coalesce()
                port.grow_receive_buffer(
                    window_receive_buffer(engine.blksize, engine.windowsize)
                )
        else:
            port.maxPacketSize = 1024  # ACKs, and ERRORs with a message of any sane length
            if hasattr(port, "maxThroughput"):
                # A sender gets one ACK per block or window: after reading it, asking the
                # socket for another only earns EAGAIN (a system call and an exception).
                # The reactor polls again anyway, and epoll reports anything left over.
                port.maxThroughput = 1

    # -- events -------------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        peer = self.peer
        if peer is None or addr[0] != peer[0] or addr[1] != peer[1]:
            self.stranger(datagram, addr)
            return
        engine = self.engine
        if engine is None:
            return  # still opening the file: the peer will retransmit
        engine.on_datagram(datagram, self.reactor.seconds())
        self.after_event()

    def stranger(self, datagram: bytes, addr: Any) -> None:
        """A datagram from a wrong TID: tell the sender, leave the transfer alone."""
        self.send_error(addr, ErrorCode.UNKNOWN_TID, "unknown transfer ID")

    def after_event(self) -> None:
        """Follow the engine after anything happened: end, or keep the timer in step."""
        engine = self.engine
        if engine is None or self.finished:
            return
        if self._peer_refused and engine.outcome is None:
            engine.peer_unreachable(self.reactor.seconds())
        if engine.outcome is not None:
            self.end()
            return
        deadline = engine.deadline
        if deadline is None:
            return
        # One timer per session, re-armed lazily: per packet only the engine's deadline
        # moves; a timer that fires before it simply sets itself again.
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.reactor.callLater(
            max(0.0, deadline - self.reactor.seconds()), self._timer_fired
        )

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        engine = self.engine
        if engine is not None and not self.finished:
            engine.on_timeout(self.reactor.seconds())
            self.after_event()

    def abort(self, code: int, message: str) -> None:
        """End the transfer now, telling the peer why."""
        if self.finished:
            return
        if self.engine is not None:
            self.engine.abort(code, message, self.reactor.seconds())
        else:
            self.send_to_peer(encode_error(code, message))
        self.end()

    # -- teardown -----------------------------------------------------------------------

    @property
    def succeeded(self) -> bool:
        """Whether every byte got across (an upload counts only once committed)."""
        engine = self.engine
        if isinstance(engine, BlockReceiver):
            return engine.complete and (self.writer is None or self.committed)
        return engine is not None and engine.outcome is Outcome.COMPLETE

    def end(self) -> None:
        """Release the timer, the reader/writer and the port; then :meth:`session_ended`."""
        if self.finished:
            return
        self.finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None and not self.committed:
            self.writer.abort()
        self._close_peer_socket()
        if self.port is not None:
            self.port.stopListening()
        self.session_ended()

    def session_ended(self) -> None:
        """Hook for subclasses: the session is over (see :attr:`succeeded`)."""
