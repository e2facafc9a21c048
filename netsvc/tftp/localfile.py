"""Local files for the TFTP client: downloads that appear only once complete, stdout, uploads.

:func:`open_local_writer` gives an :class:`~netsvc.tftp.backend.IWriter` for a download
into a file. The data goes to a hidden temporary file next to the target (named like the
server's upload temporaries, ``.NAME.XXXXXXXXXXXX.netsvc.part``, so
:func:`~netsvc.tftp.backend.cleanup_stale_temp_files` recognises leftovers); ``commit()``
fsyncs it and renames it onto the target, ``abort()`` deletes it. The target name
therefore shows either the old file, untouched, or the complete new one: never a partial
download. It is the server's :class:`~netsvc.tftp.backend.FilesystemWriter`, built on
descriptors opened here.

:class:`StdoutWriter` streams a download to standard output (what ``-`` means on the
command line); :func:`open_local_reader` opens a regular file for an upload, with its size
known (it becomes the tsize option). :func:`free_space` tells how much a download may
occupy, for the ``max_size`` argument of :func:`netsvc.tftp.client.download`.

Errors are :class:`~netsvc.tftp.backend.BackendError` subclasses carrying the operating
system's message (``FileNotFound``, ``AccessViolation``, ``DiskFull``, ``FileExists``), so
a caller can sort them like the server's errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from netsvc.tftp.backend import FilesystemWriter, IWriter, ThreadRunner
from netsvc.tftp.files import (
    StreamWriter,
    free_space,
    local_error,
    open_local_reader,
    open_local_writer_with,
)

__all__ = [
    "BufferedWriter",
    "StdoutWriter",
    "free_space",
    "local_error",
    "open_local_reader",
    "open_local_writer",
    "run_inline",
]


def run_inline(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A :data:`~netsvc.tftp.backend.ThreadRunner` that runs ``function`` right away.

    The commit's fsync then blocks the caller briefly; pass a real thread runner (e.g.
    ``functools.partial(deferToThreadPool, reactor, reactor.getThreadPool())``) to keep
    a busy reactor responsive.
    """
    result: Deferred[Any] = defer.maybeDeferred(function, *args)
    return result


def open_local_writer(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    max_size: int | None = None,
    run_in_thread: ThreadRunner | None = None,
) -> FilesystemWriter:
    """An :class:`IWriter` that puts a download at ``path`` only once it is complete.

    A symbolic link at ``path`` is followed: the file it points to is replaced. An existing
    file keeps its permission bits; a new one gets ``0o666`` minus the umask. Without
    ``overwrite`` an existing target raises :class:`FileExists` now, and a file that
    appears meanwhile makes :meth:`commit` fail with it. ``max_size`` bounds the bytes
    written (:class:`DiskFull` beyond). ``run_in_thread`` runs the commit's fsync and
    rename (default: :func:`run_inline`).

    :raises FileNotFound: the directory does not exist.
    :raises AccessViolation: the target is a directory or not a regular file, or we may
        not write there.
    :raises FileExists: the target exists and ``overwrite`` is false.
    """
    runner = run_in_thread or run_inline
    return open_local_writer_with(
        partial(FilesystemWriter, run_in_thread=runner), path,
        overwrite=overwrite, max_size=max_size,
    )


@implementer(IWriter)
class StdoutWriter(StreamWriter):
    """Streams a download to a binary stream (standard output by default).

    What was written cannot be taken back, so :meth:`abort` only stops; :meth:`commit`
    flushes. ``written`` counts the bytes handed over.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stdout.buffer)

    def commit(self) -> Deferred[None]:
        return defer.maybeDeferred(self.commit_now)


class BufferedWriter:
    """Collects small blocks into writes of ``size`` bytes for another :class:`IWriter`.

    A 512-byte blksize otherwise costs a ``write`` system call per block. For a client
    this is safe: nothing appears under the target name before :meth:`commit`, which
    writes the rest and then commits (fsync, rename) the inner writer.
    """

    def __init__(self, inner: Any, size: int = 64 * 1024) -> None:
        self._inner = inner
        self._size = size
        self._buffer = bytearray()

    def write(self, data: bytes) -> Deferred[None] | None:
        self._buffer += data
        if len(self._buffer) < self._size:
            return None
        chunk = bytes(self._buffer)
        self._buffer.clear()
        result: Deferred[None] | None = self._inner.write(chunk)
        return result

    def commit(self) -> Deferred[None]:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        written: Deferred[Any] = maybeDeferred(self._inner.write, chunk) if chunk else succeed(None)
        return written.addCallback(lambda _: self._inner.commit())

    def abort(self) -> None:
        self._buffer.clear()
        self._inner.abort()
