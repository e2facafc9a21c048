"""Streaming netascii codec (RFC 1350 / RFC 764 "NVT ASCII"). Pure, no I/O.

On the wire a line ends with CR LF and a bare CR is sent as CR NUL. Locally (POSIX) a line
ends with LF. So:

- encode: LF -> CR LF, CR -> CR NUL, every other byte unchanged. Each byte maps on its own,
  so the encoder has no state and any chunking gives the same bytes. A local file with
  CR LF line ends is sent as CR NUL CR LF: the mapping is exact and round-trips.
- decode: CR LF -> LF, CR NUL -> CR. A CR at the end of a chunk is held back until the next
  chunk shows what follows it (a DATA block may end between CR and LF).

Leniency (decoding data from real peers): a CR followed by anything other than LF or NUL is
kept together with that byte (``b"\\rx"`` decodes to ``b"\\rx"``), and a CR at the very end of
the stream is kept. Nothing is ever dropped, and nothing raises.

Both directions work on whole chunks with ``bytes.replace`` (C speed), never per byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = [
    "NetasciiDecoder",
    "NetasciiEncoder",
    "decode",
    "encode",
    "encoded_size",
    "encoded_size_of_stream",
]


class NetasciiEncoder:
    """Local bytes -> netascii, chunk by chunk."""

    __slots__ = ()

    def encode(self, chunk: bytes) -> bytes:
        """Encode one chunk (any size, any boundary)."""
        # CR first: the CRs that the LF replacement inserts must not be escaped again.
        return chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")

    def flush(self) -> bytes:
        """End of stream. Encoding holds nothing back, so this is always empty."""
        return b""


class NetasciiDecoder:
    """Netascii -> local bytes, chunk by chunk; correct when a CR ends a chunk."""

    __slots__ = ("_pending_cr",)

    def __init__(self) -> None:
        self._pending_cr = False

    def decode(self, chunk: bytes) -> bytes:
        """Decode one chunk; a trailing CR is held until the next chunk (or :meth:`flush`)."""
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # A CR is never the second byte of a pair, so a final CR always awaits its partner.
            self._pending_cr = True
            chunk = chunk[:-1]
        # CR LF first: its output (LF) can never form CR NUL, whereas CR NUL's output (CR)
        # could pair with a following LF and be decoded twice.
        return chunk.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def flush(self) -> bytes:
        """End of stream: a held CR had no partner and is kept as it is (lenient)."""
        if self._pending_cr:
            self._pending_cr = False
            return b"\r"
        return b""


def encode(data: bytes) -> bytes:
    """Encode a whole buffer to netascii."""
    return NetasciiEncoder().encode(data)


def decode(data: bytes) -> bytes:
    """Decode a whole netascii buffer."""
    decoder = NetasciiDecoder()
    return decoder.decode(data) + decoder.flush()


def encoded_size(chunks: Iterable[bytes]) -> int:
    """Size of the netascii encoding of the concatenated ``chunks`` (for tsize).

    Streaming: each chunk is counted and dropped, so a file never has to be held whole.
    Every CR and every LF gains one byte.
    """
    return sum(len(chunk) + chunk.count(b"\r") + chunk.count(b"\n") for chunk in chunks)


class SupportsReadBytes(Protocol):
    """A binary stream, e.g. a file opened with ``"rb"``."""

    def read(self, size: int = ..., /) -> bytes: ...


def encoded_size_of_stream(stream: SupportsReadBytes, chunk_size: int = 1 << 16) -> int:
    """Size of the netascii encoding of everything ``stream`` yields from its position on."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return encoded_size(iter(lambda: stream.read(chunk_size), b""))
