"""The TFTP client on a blocking socket: no event loop, no Twisted.

:func:`run_transfer` runs one download or upload to the end in the calling thread, on
the same engine and first-reply logic as the Twisted client (:mod:`netsvc.tftp.client`,
through :mod:`netsvc.tftp.clientcore`). It is what ``netsvc tftp`` runs: a command
that starts without importing Twisted (0.05 s instead of 0.2 s) and spends no time per
datagram on a reactor, and a plain function for scripts that have no reactor.

The network is a :class:`Channel`: :class:`UDPChannel` on a real socket, or any object
with the same three methods (tests use one over :mod:`netsvc.testing`'s fake network).
Local storage is synchronous: a download writes to an object with ``write(bytes)``,
``commit_now()`` and ``abort()`` (:class:`~netsvc.tftp.files.TempFileWriter`,
:class:`~netsvc.tftp.files.StreamWriter`); an upload reads from one with ``read(n)``
and ``close()`` (:class:`~netsvc.tftp.files.FilesystemReader`).
"""

from __future__ import annotations

import math
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from netsvc.sockopts import grow_receive_buffer
from netsvc.spin import Spinner, useful_spinner
from netsvc.tftp.clientcore import (
    ClientSettings,
    FirstReply,
    Next,
    RequestRetry,
    TFTPError,
    TransferResult,
    engine_error,
    judge_first_reply,
    new_engine,
    without_options,
)
from netsvc.tftp.engine import (
    BlockReceiver,
    BlockSender,
    Outcome,
    RetransmitTimer,
    encode_error,
    window_receive_buffer,
)
from netsvc.tftp.files import BackendError
from netsvc.tftp.netascii import NetasciiDecoder
from netsvc.tftp.options import Negotiated
from netsvc.tftp.packets import RRQ, WRQ, ErrorCode, Mode
from netsvc.tftp.textmode import NetasciiReader

__all__ = ["Channel", "ReadAhead", "UDPChannel", "run_transfer"]

Address = tuple[str, int]

#: Bytes collected before a download writes to its file (one system call per 64 KiB,
#: not per block). Nothing shows under the target name before the commit anyway.
WRITE_BATCH = 64 * 1024
#: Bytes an upload reads from its file at a time (one system call per 64 blocks of 512).
READ_AHEAD = 32 * 1024

_UNKNOWN_TID = encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")


class Channel(Protocol):
    """The datagram socket a blocking transfer runs on."""

    def sender(self, address: Address) -> Callable[[bytes], None]:
        """A function that sends a datagram to ``address``; a failed send is a lost one."""

    def receive(self, timeout: float) -> tuple[bytes, Address] | None:
        """The next datagram and its source, or ``None`` after ``timeout`` seconds."""

    def expect(self, largest: int, burst: int) -> None:
        """Datagrams will be at most ``largest`` bytes and come ``burst`` at a time."""


class UDPChannel:
    """A UDP socket on an ephemeral port for talking to ``server`` (IPv4 or IPv6).

    A wait first spins (``spinner``: ``True``, the default, makes a :class:`Spinner` when
    at least two CPUs are usable, since on one CPU spinning would only delay a local
    server; ``None`` or ``False`` never spins), then sleeps in ``poll`` and reads.
    Measured on this project's 2-CPU virtual machine, 16 MiB at blksize 512 from
    tftpd-hpa: 2.9 s sleeping at every block, 0.93 s spinning first. Blocking in
    ``recvfrom`` itself (``SO_RCVTIMEO``) instead of ``poll`` was slower still (3.13 vs
    2.79 s without spinning).
    """

    def __init__(self, server: Address, *, spinner: Spinner | bool | None = True) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.bind(("::" if family == socket.AF_INET6 else "", 0))
        self.socket.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self.socket, select.POLLIN)
        self._ipv6 = family == socket.AF_INET6
        self._size = 65536
        self._read_first = False
        if spinner is True:
            spinner = useful_spinner()
        self.spinner: Spinner | None = spinner or None

    def sender(self, address: Address) -> Callable[[bytes], None]:
        sendto = self.socket.sendto

        def send(datagram: bytes) -> None:
            try:  # noqa: SIM105 (no context manager object per block)
                sendto(datagram, address)
            except OSError:
                pass  # EAGAIN, ENOBUFS, ...: a lost packet; the timers recover

        return send

    def receive(self, timeout: float) -> tuple[bytes, Address] | None:
        recvfrom = self.socket.recvfrom
        size = self._size
        spinner = self.spinner
        budget = spinner.budget() if spinner is not None else 0.0
        if budget or self._read_first:
            clock = time.perf_counter
            end = clock() + min(budget, timeout)
            while True:
                try:
                    received = recvfrom(size)
                except BlockingIOError:
                    if not budget:
                        break
                    if clock() < end:
                        continue
                    spinner.missed()  # type: ignore[union-attr]
                    break
                except ConnectionRefusedError:
                    return None  # an ICMP error about an earlier send: nothing to read
                if budget:
                    spinner.caught()  # type: ignore[union-attr]
                return self._received(*received)
        milliseconds = max(0, math.ceil(timeout * 1000))
        while self._poll.poll(milliseconds):
            try:
                return self._received(*recvfrom(size))
            except BlockingIOError:
                continue  # woken for nothing (a datagram with a bad checksum, say)
            except ConnectionRefusedError:
                return None
        return None

    def _received(self, data: bytes, source: Any) -> tuple[bytes, Address]:
        return data, (source[:2] if self._ipv6 else source)

    def expect(self, largest: int, burst: int) -> None:
        self._size = largest
        # Windows come in bursts: without spinning, read before polling (one system
        # call per datagram instead of two while the burst lasts).
        self._read_first = burst > 1
        if burst > 1:
            grow_receive_buffer(self.socket, window_receive_buffer(largest, burst))

    def close(self) -> None:
        self.socket.close()


class _DownloadSink:
    """A download's local side: netascii decoding, batched writes, the final commit."""

    def __init__(self, writer: Any, *, netascii: bool) -> None:
        self.writer = writer
        self.decoder = NetasciiDecoder() if netascii else None
        self.buffer = bytearray()
        #: Bytes received so far (as sent, before any netascii decoding).
        self.received = 0

    def write(self, payload: bytes) -> None:
        self.received += len(payload)
        if self.decoder is not None:
            payload = self.decoder.decode(payload)
        buffer = self.buffer
        buffer += payload
        if len(buffer) >= WRITE_BATCH:
            self.writer.write(bytes(buffer))
            buffer.clear()

    def commit(self) -> None:
        if self.decoder is not None:
            self.buffer += self.decoder.flush()
        if self.buffer:
            self.writer.write(bytes(self.buffer))
            self.buffer.clear()
        self.writer.commit_now()


class ReadAhead:
    """A sending side's source: netascii encoding, read-ahead, bytes read so far.

    For a synchronous reader (``read(n)`` returns bytes): a client's upload, and a
    server's download in a process of its own (:mod:`netsvc.tftp.downloader`).
    """

    def __init__(self, reader: Any, *, netascii: bool) -> None:
        self.reader: Any = NetasciiReader(reader) if netascii else reader
        #: Bytes handed to the engine so far (as sent).
        self.sent = 0
        self._buffer = b""
        self._offset = 0
        self._ended = False

    def read(self, size: int) -> bytes:
        offset = self._offset
        if len(self._buffer) - offset < size and not self._ended:
            want = max(size, READ_AHEAD)
            more: bytes = self.reader.read(want)
            self._ended = len(more) < want  # a reader returns less only at the end
            self._buffer = self._buffer[offset:] + more
            offset = 0
        data = self._buffer[offset : offset + size]
        self._offset = offset + len(data)
        self.sent += len(data)
        return data

    def restart_at(self, position: int) -> None:
        """Continue at byte ``position`` of an octet source: someone else sent the bytes
        before it, reading them from the file itself (:mod:`netsvc.tftp.lockstep`)."""
        if isinstance(self.reader, NetasciiReader):
            raise ValueError("a netascii source cannot be repositioned")
        if position != self.sent or self._offset != len(self._buffer):
            self.reader.seek(position)
            self.sent = position
            self._buffer = b""
            self._offset = 0
            self._ended = False


def run_transfer(
    channel: Channel,
    server: Address,
    request: RRQ | WRQ,
    storage: Any,
    *,
    timer: RetransmitTimer,
    give_up_after: float,
    max_size: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_negotiated: Callable[[Negotiated], object] | None = None,
    progress: Callable[[int], object] | None = None,
    progress_interval: float = 0.1,
) -> TransferResult:
    """Run ``request`` against ``server`` to the end; the result, or :class:`TFTPError`.

    ``storage`` is the download's writer or the upload's reader (see the module
    documentation); it is committed on success and aborted (writer) or closed (reader)
    otherwise, also when an exception such as KeyboardInterrupt ends the transfer (the
    server then gets an ERROR). ``max_size`` refuses a download larger than that, by its
    announced tsize or as it arrives. ``progress(bytes)`` is called every
    ``progress_interval`` seconds while data flows. Datagrams from any address but the
    server's, and after its first reply from any port but that reply's, get ERROR 5.
    """
    settings = ClientSettings(timer, give_up_after, max_size, on_negotiated)
    transfer = _BlockingTransfer(channel, server, request, storage, settings, clock)
    try:
        return transfer.run(progress, progress_interval)
    finally:
        transfer.release()


class _BlockingTransfer:
    """One transfer's state between :func:`run_transfer`'s phases."""

    def __init__(
        self,
        channel: Channel,
        server: Address,
        request: RRQ | WRQ,
        storage: Any,
        settings: ClientSettings,
        clock: Callable[[], float],
    ) -> None:
        self.channel = channel
        self.server = server
        self.request = request
        self.storage = storage
        self.settings = settings
        self.clock = clock
        netascii = request.mode is Mode.NETASCII
        self.sink = _DownloadSink(storage, netascii=netascii) if request.is_read else None
        self.source = None if request.is_read else ReadAhead(storage, netascii=netascii)
        self.engine: BlockSender | BlockReceiver | None = None
        self.succeeded = False
        # An upload's first blocks are read while the engine is being built: an error
        # then waits here until there is an engine to abort.
        self._read_error: tuple[int, str] | None = None

    def run(
        self, progress: Callable[[int], object] | None, progress_interval: float
    ) -> TransferResult:
        started = self.clock()
        settings = self.settings
        retry = RequestRetry(settings.timer, settings.give_up_after, started)
        peer, reply = self._request(retry)
        negotiated = reply.negotiated
        assert negotiated is not None
        if settings.on_negotiated is not None:
            settings.on_negotiated(negotiated)
        engine = self.engine = new_engine(
            self.request, reply, send=self.channel.sender(peer), read=self._read,
            write=self._write, settings=settings, now=self.clock(),
        )
        if self._read_error is not None:
            engine.abort(*self._read_error, self.clock())
        if isinstance(engine, BlockReceiver):
            self.channel.expect(engine.blksize + 5, engine.windowsize)
        else:
            self.channel.expect(1024, 1)  # ACKs, and ERRORs with a message of any length
        if reply.first_data is not None:
            engine.on_datagram(reply.first_data, self.clock())
        self._exchange(engine, peer, progress, progress_interval)
        if not self.succeeded:
            raise engine_error(engine)
        return TransferResult(
            bytes=engine.stats.bytes,
            duration=self.clock() - started,
            options=negotiated,
            retransmits=engine.stats.retransmits + retry.retransmits,
            server=peer,
        )

    def _request(self, retry: RequestRetry) -> tuple[Address, FirstReply]:
        """Send the request until the server's first reply starts the transfer."""
        channel, clock, server = self.channel, self.clock, self.server
        send_to_server = channel.sender(server)
        deadline = self._send_request(retry, send_to_server)
        while True:
            received = channel.receive(deadline - clock())
            if received is None:
                if clock() >= deadline:
                    deadline = self._send_request(retry, send_to_server)
                continue
            datagram, source = received
            if source[0] != server[0]:
                channel.sender(source)(_UNKNOWN_TID)
                continue
            reply = judge_first_reply(self.request, datagram, max_size=self.settings.max_size)
            action = reply.next
            if action is Next.IGNORE:
                continue
            if action is Next.RETRY_PLAIN:
                self.request = without_options(self.request)
                deadline = self._send_request(retry, send_to_server)
                continue
            if action is Next.START:
                return source, reply
            error = reply.error
            assert error is not None
            if action is Next.REFUSE:
                channel.sender(source)(encode_error(error.code, error.message))
            raise error

    def _send_request(self, retry: RequestRetry, send: Callable[[bytes], None]) -> float:
        now = self.clock()
        wait = retry.next_wait(now)
        if wait is None:
            raise TFTPError(0, "no answer from the server", timed_out=True)
        send(self.request.encode())
        return now + wait

    def _exchange(
        self,
        engine: BlockSender | BlockReceiver,
        peer: Address,
        progress: Callable[[int], object] | None,
        progress_interval: float,
    ) -> None:
        """Feed the engine datagrams and timeouts until the transfer ends."""
        receive, clock = self.channel.receive, self.clock
        on_datagram = engine.on_datagram
        reject = self.channel.sender
        downloading = isinstance(engine, BlockReceiver)
        next_report = clock() + progress_interval if progress is not None else math.inf
        while engine.outcome is None:
            if downloading and engine.complete:  # type: ignore[union-attr]
                break  # committed and acknowledged; no need to dally in a command
            now = clock()
            if now >= next_report:
                next_report = now + progress_interval
                progress(self._moved())  # type: ignore[misc]
            deadline = engine.deadline
            if deadline is not None and now >= deadline:
                engine.on_timeout(now)
                continue
            wait = progress_interval if deadline is None else deadline - now
            received = receive(min(wait, next_report - now))
            if received is None:
                continue
            datagram, source = received
            if source != peer:
                reject(source)(_UNKNOWN_TID)
                continue
            on_datagram(datagram, clock())
        self.succeeded = engine.outcome is Outcome.COMPLETE or (
            downloading and engine.complete  # type: ignore[union-attr]
        )

    def _moved(self) -> int:
        if self.sink is not None:
            return self.sink.received
        assert self.source is not None
        return self.source.sent

    def _write(self, payload: bytes) -> bool:
        engine = self.engine
        assert self.sink is not None and engine is not None
        try:
            self.sink.write(payload)
            if len(payload) < engine.blksize:
                # The final ACK promises a complete file: commit (rename into place) first.
                self.sink.commit()
        except BackendError as error:
            engine.abort(error.code, error.message, self.clock())
            return False
        except OSError as error:
            engine.abort(ErrorCode.DISK_FULL, f"write error: {error.strerror}", self.clock())
            return False
        return True

    def _read(self, size: int) -> bytes | None:
        assert self.source is not None
        try:
            return self.source.read(size)
        except BackendError as error:
            failure = (int(error.code), error.message)
        except OSError as error:
            failure = (int(ErrorCode.NOT_DEFINED), f"read error: {error.strerror}")
        if self.engine is None:
            self._read_error = failure
        else:
            self.engine.abort(*failure, self.clock())
        return None  # "not yet": the engine has ended anyway

    def release(self) -> None:
        """Give the storage back: abort an unfinished download, close an upload's file;
        tell the server when we stop in the middle (an interrupt)."""
        engine = self.engine
        if engine is not None and engine.outcome is None and not self.succeeded:
            engine.abort(ErrorCode.NOT_DEFINED, "transfer interrupted", self.clock())
        if self.sink is not None:
            if not self.succeeded:
                self.storage.abort()
        else:
            self.storage.close()
