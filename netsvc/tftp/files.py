"""Files on disk for TFTP transfers, without Twisted: errors, readers, temporary-file writers.

Everything here is synchronous and imports only the standard library, so that both the
Twisted server (through :mod:`netsvc.tftp.backend`) and the blocking command-line client
(:mod:`netsvc.tftp.blocking`) use the same code, and the command line starts without
importing Twisted.

* :class:`BackendError` and its subclasses: a refusal or failure with its TFTP error code
  and a message that is safe to show to the peer.
* :class:`FilesystemReader`: reads a regular file through a descriptor it owns.
* :class:`TempFileWriter`: writes to a hidden temporary file next to the target and puts
  it in place (fsync, rename, fsync of the directory) in :meth:`TempFileWriter.finish`,
  or deletes it in :meth:`TempFileWriter.abort`: the target name shows the old file or
  the complete new one, never a partial one.
* :func:`open_local_writer_with` / :func:`open_local_reader` / :func:`free_space`: the
  client's local side (paths given by the local user, not by a peer).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from netsvc.tftp.packets import ERROR, ErrorCode

__all__ = [
    "TEMP_SUFFIX",
    "AccessViolation",
    "BackendError",
    "DiskFull",
    "FileExists",
    "FileNotFound",
    "FilesystemReader",
    "IllegalRequest",
    "StreamWriter",
    "TempFileWriter",
    "close_quietly",
    "create_temp_file",
    "free_space",
    "from_os_error",
    "local_error",
    "open_local_reader",
    "open_local_writer_with",
]

#: How every upload temporary file name ends (see
#: :func:`netsvc.tftp.backend.cleanup_stale_temp_files`).
TEMP_SUFFIX = ".netsvc.part"

# How much of the target's name goes into the temporary name: at most 32 bytes keeps the
# temporary name within NAME_MAX (255) whatever the target's length.
_TEMP_PREFIX_BYTES = 32
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the stat() cannot block the open.
_LOCAL_READ_FLAGS = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


# -- errors ----------------------------------------------------------------------------------


class BackendError(Exception):
    """A request the backend refuses or a transfer it cannot complete.

    ``code`` and ``message`` are meant for the ERROR packet: the message must be safe to
    show to the client (no server paths).
    """

    code: ErrorCode = ErrorCode.NOT_DEFINED
    default_message = "Undefined error"

    def __init__(self, message: str | None = None, code: ErrorCode | None = None) -> None:
        self.message: str = message if message is not None else self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_packet(self) -> ERROR:
        """The ERROR packet that reports this error to the peer."""
        return ERROR(self.code, self.message)


class FileNotFound(BackendError):  # noqa: N818 (TFTP's own names)
    """ERROR 1: no such file (or directory)."""

    code = ErrorCode.FILE_NOT_FOUND
    default_message = "File not found"


class AccessViolation(BackendError):  # noqa: N818 (TFTP's own names)
    """ERROR 2: the name or the operation is not allowed."""

    code = ErrorCode.ACCESS_VIOLATION
    default_message = "Access violation"


class DiskFull(BackendError):  # noqa: N818 (TFTP's own names)
    """ERROR 3: disk full or allocation exceeded (also: upload larger than allowed)."""

    code = ErrorCode.DISK_FULL
    default_message = "Disk full or allocation exceeded"


class IllegalRequest(BackendError):  # noqa: N818 (TFTP's own names)
    """ERROR 4: the backend cannot perform this kind of request."""

    code = ErrorCode.ILLEGAL_OPERATION
    default_message = "Illegal TFTP operation"


class FileExists(BackendError):  # noqa: N818 (TFTP's own names)
    """ERROR 6: the file exists and may not be replaced."""

    code = ErrorCode.FILE_EXISTS
    default_message = "File already exists"


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS, errno.EISDIR})


def from_os_error(exc: OSError, *, writing: bool) -> BackendError:
    """The peer-safe error for an OSError (``strerror`` carries no path, ``str`` does)."""
    number = exc.errno
    if number in _DISK_FULL_ERRNOS:
        return DiskFull()
    if number in _NOT_FOUND_ERRNOS:
        return FileNotFound()
    if number in _ACCESS_ERRNOS:
        return AccessViolation()
    if number == errno.ENAMETOOLONG:
        return AccessViolation("File name too long") if writing else FileNotFound()
    if number == errno.EEXIST:
        return FileExists()
    return BackendError(exc.strerror or "I/O error")


_LOCAL_ERRNO_CLASSES: tuple[tuple[frozenset[int], type[BackendError]], ...] = (
    (_DISK_FULL_ERRNOS, DiskFull),
    (_NOT_FOUND_ERRNOS, FileNotFound),
    (
        frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ELOOP}),
        AccessViolation,
    ),
    (frozenset({errno.EEXIST}), FileExists),
)


def local_error(error: OSError) -> BackendError:
    """The :class:`BackendError` for a local ``OSError``, keeping the system's message
    (for the local user, who may see paths and details)."""
    message = error.strerror or str(error)
    for numbers, kind in _LOCAL_ERRNO_CLASSES:
        if error.errno in numbers:
            return kind(message)
    return BackendError(message)


def close_quietly(fd: int) -> None:
    """Close ``fd``, ignoring errors (for clean-up paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)


# -- reading ---------------------------------------------------------------------------------


class FilesystemReader:
    """Reads a regular file through a file descriptor it owns.

    ``size`` is the file's size when it was opened, and reading stops there, so that a
    tsize sent to the peer stays true even if the file grows meanwhile.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._remaining = size
        self.size: int | None = size

    def read(self, n: int) -> bytes:
        fd = self._fd
        want = min(n, self._remaining)
        if fd is None or want <= 0:
            return b""
        try:
            chunk = os.read(fd, want)
            if 0 < len(chunk) < want:
                # A short read is not the end of a regular file: keep reading until it is.
                parts = [chunk]
                got = len(chunk)
                while got < want:
                    more = os.read(fd, want - got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                chunk = b"".join(parts)
        except OSError as exc:
            raise from_os_error(exc, writing=False) from None
        self._remaining -= len(chunk)
        return chunk

    def seek(self, position: int) -> None:
        """Continue reading at byte ``position`` (someone else read the bytes before it)."""
        fd = self._fd
        if fd is not None and self.size is not None:
            try:
                os.lseek(fd, position, os.SEEK_SET)
            except OSError as exc:
                raise from_os_error(exc, writing=False) from None
            self._remaining = self.size - position

    def fileno(self) -> int | None:
        """The file's descriptor while open (a download in a process of its own reads it)."""
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            close_quietly(fd)


# -- writing ---------------------------------------------------------------------------------


class _WriterState:
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


def create_temp_file(dir_fd: int, name: bytes, mode: int) -> tuple[int, bytes]:
    """Create a new hidden temporary file for target ``name`` in ``dir_fd``.

    Named ``.NAME.<12 hex>.netsvc.part`` (the pattern stale-file clean-up recognises);
    ``mode`` goes through the umask as for any new file. Returns (descriptor, name).

    :raises OSError: from ``open``.
    :raises BackendError: no free name after 100 tries.
    """
    prefix = b"." + name[:_TEMP_PREFIX_BYTES] + b"."
    suffix = TEMP_SUFFIX.encode("ascii")
    for _attempt in range(100):
        # os.urandom as secrets.token_hex does (importing secrets costs a command's start-up).
        temp = prefix + os.urandom(6).hex().encode("ascii") + suffix
        try:
            return os.open(temp, _TEMP_FLAGS, mode, dir_fd=dir_fd), temp
        except FileExistsError:
            continue
    raise BackendError("Could not create a temporary file")


class TempFileWriter:
    """Writes to a temporary file and puts it in place on :meth:`commit_now`.

    Holds two descriptors: the temporary file and its directory; every later operation
    is relative to that directory, so a directory renamed or replaced meanwhile cannot
    redirect the data. :meth:`finish` is the blocking part of a commit (fsync, rename,
    fsync of the directory), split out so that an asynchronous owner can run it in a
    thread; :meth:`abort` meanwhile only asks it to discard the file.

    ``durable=False`` leaves out the two fsyncs: the rename still shows a complete file
    or none to every program, but after a power loss the new name may hold less (what
    curl, wget and rsync give by default; a TFTP server's upload needs ``durable``, as
    its last ACK promises the file).
    """

    def __init__(
        self,
        *,
        fd: int,
        dir_fd: int,
        temp_name: bytes,
        target_name: bytes,
        overwrite: bool,
        max_size: int | None,
        durable: bool = True,
    ) -> None:
        self._fd = fd
        self._durable = durable
        self._dir_fd = dir_fd
        self._temp_name = temp_name
        self._target_name = target_name
        self._overwrite = overwrite
        self._max_size = max_size
        self._state = _WriterState.OPEN
        self._abort_requested = False
        #: Bytes written so far.
        self.written = 0

    def write(self, data: bytes) -> None:
        if self._state != _WriterState.OPEN:
            raise BackendError("Transfer is closed")
        if self._max_size is not None and self.written + len(data) > self._max_size:
            self.abort()
            raise DiskFull("File too large")
        view = memoryview(data)
        fd = self._fd
        try:
            while view:
                done = os.write(fd, view)
                view = view[done:]
                self.written += done
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, writing=True) from None

    def begin_commit(self) -> None:
        """Stop accepting data; from here on :meth:`finish` owns the descriptors.

        :raises BackendError: the writer was already committed or aborted.
        """
        if self._state != _WriterState.OPEN:
            raise BackendError("Transfer is closed")
        self._state = _WriterState.COMMITTING

    def settle(self, committed: bool) -> None:
        """Record how :meth:`finish` ended."""
        self._state = _WriterState.COMMITTED if committed else _WriterState.ABORTED

    def commit_now(self) -> None:
        """Commit in the calling thread: fsync, rename into place, fsync the directory."""
        self.begin_commit()
        try:
            self.finish()
        except BaseException:
            self.settle(False)
            raise
        self.settle(True)

    def abort(self) -> None:
        if self._state == _WriterState.COMMITTING:
            # finish() holds the descriptors; it checks this flag before it renames,
            # and discards the data if the flag is set by then.
            self._abort_requested = True
            return
        if self._state != _WriterState.OPEN:
            return
        self._state = _WriterState.ABORTED
        close_quietly(self._fd)
        self._remove_temp()
        close_quietly(self._dir_fd)

    def __del__(self) -> None:
        # Last resort against a forgotten abort(): never leave a temporary file behind.
        try:
            if self._state == _WriterState.OPEN:
                self.abort()
        except Exception:
            pass

    def cleanup_failed(self, name: bytes, error: OSError) -> None:
        """Hook: the temporary file ``name`` could not be removed (default: ignored)."""

    def _remove_temp(self) -> None:
        try:
            os.unlink(self._temp_name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.cleanup_failed(self._temp_name, exc)

    def finish(self) -> None:
        """The blocking part of a commit: fsync, close, rename into place, fsync the
        directory. Removes the temporary file if anything fails."""
        placed = False
        try:
            try:
                try:
                    if self._durable:
                        os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                if self._abort_requested:
                    raise BackendError("Transfer aborted")
                self._place()
                placed = True
                if self._durable:
                    self._sync_directory()
            except OSError as exc:
                raise from_os_error(exc, writing=True) from None
        finally:
            if not placed:
                self._remove_temp()
            close_quietly(self._dir_fd)

    def _place(self) -> None:
        temp, target, dir_fd = self._temp_name, self._target_name, self._dir_fd
        if self._overwrite:
            os.replace(temp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        # No clobbering, atomically: link() fails if the name exists by now.
        try:
            os.link(temp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileExistsError:
            raise FileExists() from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: check, then rename (a small race).
            try:
                os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.replace(temp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return
            raise FileExists() from None
        self._remove_temp()

    def _sync_directory(self) -> None:
        try:
            os.fsync(self._dir_fd)
        except OSError as exc:
            # Some file systems cannot fsync a directory; that is not a failed upload.
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise


class StreamWriter:
    """Streams a download to a binary stream (standard output, say).

    What was written cannot be taken back, so :meth:`abort` only stops;
    :meth:`commit_now` flushes. ``written`` counts the bytes handed over.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
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

    def commit_now(self) -> None:
        if self._closed:
            raise BackendError("Transfer is closed")
        self._closed = True
        try:
            self._stream.flush()
        except OSError as error:
            raise local_error(error) from None

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            # A closed pipe: nothing more to say.
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()


# -- the client's local side -----------------------------------------------------------------

_Writer = TypeVar("_Writer", bound=TempFileWriter)


def open_local_writer_with(
    make: Callable[..., _Writer],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    max_size: int | None = None,
    durable: bool = True,
) -> _Writer:
    """A writer (built by ``make(**TempFileWriter arguments)``) that puts a download at
    ``path`` only once it is complete.

    A symbolic link at ``path`` is followed: the file it points to is replaced. An existing
    file keeps its permission bits; a new one gets ``0o666`` minus the umask. Without
    ``overwrite`` an existing target raises :class:`FileExists` now, and a file that
    appears meanwhile makes the commit fail with it. ``max_size`` bounds the bytes
    written (:class:`DiskFull` beyond). ``durable``: see :class:`TempFileWriter`.

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
        fd, temp = _create_local_temp(dir_fd, name, overwrite)
    except BaseException:
        os.close(dir_fd)
        raise
    return make(
        fd=fd, dir_fd=dir_fd, temp_name=temp, target_name=name,
        overwrite=overwrite, max_size=max_size, durable=durable,
    )


def _create_local_temp(dir_fd: int, name: bytes, overwrite: bool) -> tuple[int, bytes]:
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
    try:
        fd, temp = create_temp_file(dir_fd, name, 0o666)
    except OSError as error:
        raise local_error(error) from None
    if existing is not None:
        try:
            os.fchmod(fd, existing.st_mode & 0o777)  # never the set-id bits
        except OSError as error:
            os.close(fd)
            os.unlink(temp, dir_fd=dir_fd)
            raise local_error(error) from None
    return fd, temp


def free_space(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged user may still write in the directory that would hold ``path``
    (``None`` when the file system does not say)."""
    directory = os.path.dirname(os.path.realpath(os.fsencode(path)))
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def open_local_reader(path: str | os.PathLike[str]) -> FilesystemReader:
    """A reader over the regular file ``path``, for an upload.

    Its ``size`` is the file's size now, and reading stops there (so the tsize sent stays
    true if the file grows).

    :raises FileNotFound: no such file.
    :raises AccessViolation: not a regular file (a directory, FIFO, device), or no
        permission to read it.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AccessViolation("Not a regular file")
        fd = os.open(path, _LOCAL_READ_FLAGS)
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
