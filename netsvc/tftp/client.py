"""TFTP client: :func:`download` and :func:`upload`, on the same engine as the server.

Both return a Deferred that fires with a :class:`TransferResult` or fails with a
:class:`TFTPError` (the server's ERROR, a timeout, a protocol violation or a local
storage error). The caller supplies the reactor, and a writer (download) or reader
(upload) with the backend interfaces of :mod:`netsvc.tftp.backend`: ``MemoryWriter`` and
``BytesReader`` for memory, :func:`netsvc.tftp.localfile.open_local_writer` for a file
that appears only once complete, or anything of your own.

Behaviour: options are requested and whatever the server grants (no more than asked) is
used; an OACK granting more, or an option that was not requested, is answered with ERROR
8; a server that answers ERROR 8 or ignores the options gets one plain retry (or just
works with the defaults). The first reply fixes the server's transfer port; datagrams
from any other address or port get ERROR 5 and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from netsvc.tftp.backend import BackendError
from netsvc.tftp.clientcore import (
    TFTP_PORT,
    ClientSettings,
    FirstReply,
    Next,
    RequestRetry,
    TFTPError,
    TransferResult,
    download_request,
    engine_error,
    judge_first_reply,
    new_engine,
    request_timer,
    resolve,
    upload_request,
    without_options,
)
from netsvc.tftp.engine import encode_error
from netsvc.tftp.options import Negotiated
from netsvc.tftp.packets import RRQ, WRQ, Mode
from netsvc.tftp.session import EngineSession
from netsvc.tftp.textmode import NetasciiReader, NetasciiWriter
from netsvc.udpport import listen_udp_quietly

__all__ = ["TFTP_PORT", "TFTPError", "TransferResult", "download", "resolve", "upload"]


class _ClientSession(EngineSession):
    """One client transfer: request, first reply, engine, result."""

    def __init__(
        self,
        reactor: Any,
        server: tuple[str, int],
        request: RRQ | WRQ,
        storage: Any,
        settings: ClientSettings,
    ) -> None:
        super().__init__(reactor)
        self.server = server
        self.request = request
        self.storage = storage
        self.settings = settings
        self.result: Deferred[TransferResult] = Deferred()
        self.negotiated: Negotiated | None = None
        self._started = reactor.seconds()
        self._retry = RequestRetry(settings.timer, settings.give_up_after, self._started)
        self._request_timer: IDelayedCall | None = None
        self._error: TFTPError | None = None
        self._reported = False

    # -- request phase ------------------------------------------------------------------

    def start(self) -> None:
        interface = "::" if ":" in self.server[0] else ""
        self.port = listen_udp_quietly(self.reactor, 0, self, interface)
        self._send_request()

    def _send_request(self) -> None:
        self._request_timer = None
        wait = self._retry.next_wait(self.reactor.seconds())
        if wait is None:
            self._fail(TFTPError(0, "no answer from the server", timed_out=True))
            return
        with suppress(OSError):
            self.port.write(self.request.encode(), self.server)  # type: ignore[union-attr]
        self._request_timer = self.reactor.callLater(wait, self._send_request)

    def _stop_requesting(self) -> None:
        if self._request_timer is not None and self._request_timer.active():
            self._request_timer.cancel()
        self._request_timer = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.peer is None:
            if addr[0] != self.server[0]:
                self.stranger(datagram, addr)
                return
            self._first_reply(datagram, addr)
            return
        super().datagramReceived(datagram, addr)
        self._maybe_report()

    def _first_reply(self, datagram: bytes, addr: Any) -> None:
        reply = judge_first_reply(self.request, datagram, max_size=self.settings.max_size)
        action = reply.next
        if action is Next.IGNORE:
            return
        self._stop_requesting()
        if action is Next.RETRY_PLAIN:
            self.request = without_options(self.request)
            self._send_request()
            return
        assert reply.error is not None or action is Next.START
        if action is Next.FAIL:
            self._fail(reply.error)  # type: ignore[arg-type]
            return
        self.peer = (addr[0], addr[1])  # lock onto the server's transfer port (its TID)
        if action is Next.REFUSE:
            error = reply.error
            assert error is not None
            self.send_to_peer(encode_error(error.code, error.message))
            self._fail(error)
            return
        self._start_engine(reply)

    def _start_engine(self, reply: FirstReply) -> None:
        negotiated = reply.negotiated
        assert negotiated is not None
        self.negotiated = negotiated
        if self.settings.on_negotiated is not None:
            self.settings.on_negotiated(negotiated)
        text = self.request.mode is Mode.NETASCII
        if self.request.is_read:
            self.writer = NetasciiWriter(self.storage) if text else self.storage
        else:
            self.reader = NetasciiReader(self.storage) if text else self.storage
        self.engine = new_engine(
            self.request,
            reply,
            send=self.send_to_peer,
            read=self.engine_read,
            write=self.engine_write,
            settings=self.settings,
            now=self.reactor.seconds(),
        )
        if reply.first_data is not None:
            self.engine.on_datagram(reply.first_data, self.reactor.seconds())
        self.fit_packet_size()
        self.after_event()
        self._maybe_report()

    # -- outcome ------------------------------------------------------------------------

    def _fail(self, error: TFTPError) -> None:
        self._error = error
        self._stop_requesting()
        if not self.finished:
            self.end()
        self._report()

    def after_event(self) -> None:
        super().after_event()
        # A commit that finishes later (a file fsynced in a thread) completes the download
        # outside any datagram: report it then, not only once the dally is over.
        self._maybe_report()

    def _maybe_report(self) -> None:
        # A download is done once its last block is committed and acknowledged, even
        # though the session dallies on to re-acknowledge a retransmitted last block.
        if self.succeeded:
            self._report()

    def session_ended(self) -> None:
        self._stop_requesting()
        self._report()

    def _report(self) -> None:
        if self._reported:
            return
        engine = self.engine
        if self._error is None and not self.succeeded:
            self._error = engine_error(engine)
        if self._error is None and self.engine is not None and self.negotiated is not None:
            self._reported = True
            stats = self.engine.stats
            assert self.peer is not None
            self.result.callback(
                TransferResult(
                    bytes=stats.bytes,
                    duration=self.reactor.seconds() - self._started,
                    options=self.negotiated,
                    retransmits=stats.retransmits + self._retry.retransmits,
                    server=self.peer,
                )
            )
            return
        if self._error is not None:
            self._reported = True
            self.result.errback(self._error)

    def end(self) -> None:
        if self.engine is None and self.storage is not None:
            # The transfer never started, so the session does not own the storage yet.
            with suppress(BackendError, OSError):
                if self.request.is_read:
                    self.storage.abort()
                else:
                    self.storage.close()
        super().end()


def _start(
    reactor: Any,
    host: str,
    port: int,
    request: RRQ | WRQ,
    storage: Any,
    *,
    timeout: int | None,
    give_up_after: float,
    max_size: int | None,
    on_negotiated: Callable[[Negotiated], object] | None,
) -> Deferred[TransferResult]:
    session = _ClientSession(
        reactor,
        resolve(host, port),
        request,
        storage,
        ClientSettings(request_timer(timeout), give_up_after, max_size, on_negotiated),
    )
    session.start()
    return session.result


def download(
    reactor: Any,
    host: str,
    remote: str,
    writer: Any,
    *,
    port: int = TFTP_PORT,
    mode: Mode = Mode.OCTET,
    blksize: int | None = None,
    windowsize: int | None = None,
    timeout: int | None = None,
    tsize: bool = True,
    options: bool = True,
    max_size: int | None = None,
    give_up_after: float = 30.0,
    on_negotiated: Callable[[Negotiated], object] | None = None,
) -> Deferred[TransferResult]:
    """Fetch ``remote`` from ``host`` into ``writer`` (an ``IWriter``).

    ``blksize``/``windowsize``/``timeout`` are requested when given; ``tsize`` asks for
    the size so that a file larger than ``max_size`` is refused before it is sent.
    ``options=False`` sends a plain RFC 1350 request. ``timeout`` (seconds, 1-255) is both
    the option sent and the longest wait between retransmissions.
    ``on_negotiated(options)`` is called once the server's first reply settles the
    options (e.g. to learn the tsize for a progress display).
    """
    request = download_request(
        remote, mode, blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=tsize,
        options=options,
    )
    return _start(
        reactor, host, port, request, writer, timeout=timeout,
        give_up_after=give_up_after, max_size=max_size, on_negotiated=on_negotiated,
    )


def upload(
    reactor: Any,
    host: str,
    remote: str,
    reader: Any,
    *,
    port: int = TFTP_PORT,
    mode: Mode = Mode.OCTET,
    blksize: int | None = None,
    windowsize: int | None = None,
    timeout: int | None = None,
    tsize: bool = True,
    options: bool = True,
    give_up_after: float = 30.0,
    on_negotiated: Callable[[Negotiated], object] | None = None,
) -> Deferred[TransferResult]:
    """Send ``reader`` (an ``IReader``; its ``size`` becomes the tsize option) as ``remote``."""
    request = upload_request(
        remote, mode, getattr(reader, "size", None), blksize=blksize, windowsize=windowsize,
        timeout=timeout, tsize=tsize, options=options,
    )
    return _start(
        reactor, host, port, request, reader, timeout=timeout,
        give_up_after=give_up_after, max_size=None, on_negotiated=on_negotiated,
    )
