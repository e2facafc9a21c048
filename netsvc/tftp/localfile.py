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

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from netsvc.tftp.backend import (
    TEMP_SUFFIX,
    AccessViolation,
    BackendError,
    DiskFull,
    FileExists,
    FileNotFound,
    FilesystemReader,
    FilesystemWriter,
    IWriter,
    ThreadRunner,
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

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the stat() cannot block the open.
_READ_FLAGS = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_PREFIX_BYTES = 32  # keeps the temporary name within NAME_MAX whatever the target

_ERRNO_CLASSES: tuple[tuple[frozenset[int], type[BackendError]], ...] = (
    (frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG}), DiskFull),
    (frozenset({errno.ENOENT, errno.ENOTDIR}), FileNotFound),
    (
        frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ELOOP}),
        AccessViolation,
    ),
    (frozenset({errno.EEXIST}), FileExists),
)


def local_error(error: OSError) -> BackendError:
    """The :class:`BackendError` for a local ``OSError``, keeping the system's message."""
    message = error.strerror or str(error)
    for numbers, kind in _ERRNO_CLASSES:
        if error.errno in numbers:
            return kind(message)
    return BackendError(message)


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
    target = os.path.realpath(os.fsencode(path))
    directory, name = os.path.split(target)
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError as error:
        raise local_error(error) from None
    try:
        return _create_temp(dir_fd, name, overwrite, max_size, run_in_thread or run_inline)
    except BaseException:
        os.close(dir_fd)
        raise


def _create_temp(
    dir_fd: int, name: bytes, overwrite: bool, max_size: int | None, runner: ThreadRunner
) -> FilesystemWriter:
    try:
        existing: os.stat_result | None = os.stat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        existing = None
    except OSError as error:
        raise local_error(error) from None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise AccessViolation("Is a directory")
        if not stat.S_ISREG(existing.st_mode):
            raise AccessViolation("Not a regular file")
        if not overwrite:
            raise FileExists("File exists")
        if not os.access(name, os.W_OK, dir_fd=dir_fd):
            raise AccessViolation("Permission denied")
    prefix = b"." + name[:_TEMP_PREFIX_BYTES] + b"."
    suffix = TEMP_SUFFIX.encode("ascii")
    for _attempt in range(100):
        temp = prefix + secrets.token_hex(6).encode("ascii") + suffix
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as error:
            raise local_error(error) from None
        break
    else:
        raise BackendError("Could not create a temporary file")
    if existing is not None:
        try:
            os.fchmod(fd, existing.st_mode & 0o777)  # never the set-id bits
        except OSError as error:
            os.close(fd)
            os.unlink(temp, dir_fd=dir_fd)
            raise local_error(error) from None
    return FilesystemWriter(
        fd=fd,
        dir_fd=dir_fd,
        temp_name=temp,
        target_name=name,
        overwrite=overwrite,
        max_size=max_size,
        run_in_thread=runner,
    )


def free_space(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged user may still write in the directory that would hold ``path``
    (``None`` when the file system does not say)."""
    directory = os.path.dirname(os.path.realpath(os.fsencode(path)))
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


@implementer(IWriter)
class StdoutWriter:
    """Streams a download to a binary stream (standard output by default).

    What was written cannot be taken back, so :meth:`abort` only stops; :meth:`commit`
    flushes. ``written`` counts the bytes handed over.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._closed = False
        #: Bytes written so far.
        self.written = 0

    def write(self, data: bytes) -> None:
        if self._closed:
            raise BackendError("Transfer is closed")
        try:
            self._stream.write(data)
        except OSError as error:
            self._closed = True
            raise local_error(error) from None
        self.written += len(data)

    def commit(self) -> Deferred[None]:
        if self._closed:
            return defer.fail(BackendError("Transfer is closed"))
        self._closed = True
        try:
            self._stream.flush()
        except OSError as error:
            return defer.fail(local_error(error))
        return defer.succeed(None)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            # A closed pipe: nothing more to say.
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()


def open_local_reader(path: str | os.PathLike[str]) -> FilesystemReader:
    """An :class:`~netsvc.tftp.backend.IReader` over the regular file ``path``.

    Its ``size`` is the file's size now, and reading stops there (so the tsize sent stays
    true if the file grows).

    :raises FileNotFound: no such file.
    :raises AccessViolation: not a regular file (a directory, FIFO, device), or no
        permission to read it.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AccessViolation("Not a regular file")
        fd = os.open(path, _READ_FLAGS)
    except OSError as error:
        raise local_error(error) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AccessViolation("Not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return FilesystemReader(fd, info.st_size)


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
