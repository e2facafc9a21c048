"""Netascii mode for any backend: reader and writer wrappers around the streaming codec.

The backend always stores octets; in netascii mode the server (or client) wraps the
reader so that it produces netascii and the writer so that it consumes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netsvc.tftp.netascii import NetasciiDecoder, NetasciiEncoder

if TYPE_CHECKING:  # Twisted is imported only where a Deferred is made: the blocking
    # client reads netascii through NetasciiReader without loading Twisted.
    from twisted.internet.defer import Deferred

__all__ = ["NetasciiReader", "NetasciiWriter"]

_READ_CHUNK = 1 << 16


class NetasciiReader:
    """Reads octets from ``inner`` and returns them netascii-encoded.

    Like every reader, ``read(n)`` returns exactly ``n`` bytes until the end of the data.
    The encoded size is not known in advance, so :attr:`size` is ``None`` (no tsize).
    """

    size: int | None = None

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._encoder = NetasciiEncoder()
        self._buffer = bytearray()
        self._eof = False

    def read(self, n: int) -> bytes | Deferred[bytes]:
        while len(self._buffer) < n and not self._eof:
            chunk = self._inner.read(_READ_CHUNK)
            if hasattr(chunk, "addCallback"):  # a Deferred (checked without importing it)
                later: Deferred[bytes] = chunk.addCallback(self._feed).addCallback(
                    lambda _: self.read(n)
                )
                return later
            self._feed(chunk)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _feed(self, chunk: bytes) -> None:
        self._buffer += self._encoder.encode(chunk)
        if len(chunk) < _READ_CHUNK:
            self._buffer += self._encoder.flush()
            self._eof = True

    def close(self) -> None:
        self._inner.close()


class NetasciiWriter:
    """Decodes netascii and writes the octets to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._decoder = NetasciiDecoder()

    def write(self, data: bytes) -> Deferred[None] | None:
        decoded = self._decoder.decode(data)
        if not decoded:
            return None
        result: Deferred[None] | None = self._inner.write(decoded)
        return result

    def commit(self) -> Deferred[None]:
        from twisted.internet.defer import maybeDeferred, succeed

        tail = self._decoder.flush()
        written: Deferred[None] = maybeDeferred(self._inner.write, tail) if tail else succeed(None)
        return written.addCallback(lambda _: self._inner.commit())

    def abort(self) -> None:
        self._inner.abort()
