"""Where TFTP transfers read and write their bytes: the backend plug point and a safe filesystem.

The server asks an :class:`IBackend` to open a file for each request, passing a
:class:`RequestContext` (who asks, on which local address, for which name, in which mode,
with which options). The backend answers asynchronously with an :class:`IReader` (RRQ) or
an :class:`IWriter` (WRQ), or fails with a :class:`BackendError` whose ``code`` and
``message`` go into the ERROR packet. Readers and writers see octets only: the server wraps
them with the netascii codec when the mode asks for it.

:class:`FilesystemBackend` serves a directory tree; :class:`BytesReader` and
:class:`MemoryWriter` are small building blocks for dynamic content and for tests.

Writing a dynamic backend
-------------------------

A backend is any object that provides :class:`IBackend`. This one generates a
configuration file for each client and serves everything else from a directory:

.. code-block:: python

    from twisted.internet import defer
    from zope.interface import implementer

    from netsvc.tftp.backend import (
        AccessViolation,
        BytesReader,
        FilesystemBackend,
        IBackend,
    )


    @implementer(IBackend)
    class PerClientConfig:
        # "boot.cfg" is written for each client; other names come from files.

        def __init__(self, files):
            self.files = files

        def open_read(self, context):
            if context.filename == "boot.cfg":
                client, _port = context.peer
                server, _port = context.local
                text = f"# for {client}\\nhostname=node-{client.replace('.', '-')}\\n"
                text += f"next-server={server}\\n"
                return defer.succeed(BytesReader(text.encode("ascii")))
            return self.files.open_read(context)

        def open_write(self, context, size):
            return defer.fail(AccessViolation("uploads are not accepted here"))


    backend = PerClientConfig(FilesystemBackend("/srv/tftp"))

Filesystem rules
----------------

Names. The client's name is taken as a path relative to the root, on every platform:

* Leading slashes are stripped, so ``/pxelinux.0`` is ``ROOT/pxelinux.0`` (like servers run
  with a root directory, e.g. ``in.tftpd -s``); empty and ``.`` components are dropped.
* Refused with ERROR 2 (access violation), before any file system call: a ``..``
  component, a name that leaves nothing (the root itself), control characters (C0, DEL
  and C1: they would reach terminals through logs), and names that look like our own
  upload temp files. With ``backslash_to_slash=True`` a ``\\`` separates components too
  (for Windows clients), so ``..\\x`` is refused as well; without it a backslash is an
  ordinary character of a POSIX file name.
* The joined path is resolved (symbolic links followed) and must stay inside the resolved
  root, compared component by component (``/srv/tftp-evil`` is not inside ``/srv/tftp``).
  A symbolic link inside the root that points inside the root works; one that points
  outside is an access violation. Where ``/proc/self/fd`` exists the opened file (or
  directory) is checked again, which defeats a symbolic link swapped in between.
* Only regular files are served or replaced: directories, FIFOs, devices and sockets are
  access violations (a FIFO is never opened in a way that could block the reactor, and a
  device is not opened at all).
* Errors map to: missing → ERROR 1; permission denied or a symbolic link loop → ERROR 2;
  a name too long for the file system → ERROR 1 (read) or ERROR 2 (write). Messages never
  contain server paths.

Uploads (only with ``writable=True``):

* A new file is created; an existing one is ERROR 6 unless ``overwrite=True`` (and then
  it must be writable by us). A missing directory is ERROR 1 unless ``create_dirs=True``.
* Data goes to a hidden temporary file in the target's directory
  (``.NAME.XXXXXXXXXXXX.netsvc.part``). :meth:`FilesystemWriter.commit` fsyncs it (in a
  thread), renames it onto the target and fsyncs the directory, so the target name shows
  either the old file or the complete new one, never a partial upload. Without
  ``overwrite`` the rename is a hard link that fails if the name appeared meanwhile (two
  clients uploading one new name: the second gets ERROR 6).
* Any error, :meth:`~FilesystemWriter.abort` or a failed commit deletes the temporary file;
  :func:`cleanup_stale_temp_files` removes those a crashed process left behind.
* ENOSPC, EDQUOT and EFBIG become ERROR 3 (disk full) from ``write`` or ``commit``; so does
  exceeding ``max_upload_size``, and a tsize announced beyond that limit or beyond the free
  space of the target's file system is refused when the upload is opened.
* A new file gets mode 0o644 minus the umask; a replaced file keeps its permission bits
  (not set-id bits, and not its owner: the new file belongs to the server's user).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, classImplements, implementer

from netsvc.addr import plain_host
from netsvc.tftp.files import (
    TEMP_SUFFIX,
    AccessViolation,
    BackendError,
    DiskFull,
    FileExists,
    FileNotFound,
    FilesystemReader,
    IllegalRequest,
    TempFileWriter,
    create_temp_file,
    from_os_error,
)
from netsvc.tftp.packets import RRQ, WRQ, Mode

__all__ = [
    "TEMP_SUFFIX",
    "AccessViolation",
    "BackendError",
    "BytesReader",
    "DiskFull",
    "FileExists",
    "FileNotFound",
    "FilesystemBackend",
    "FilesystemReader",
    "FilesystemWriter",
    "IBackend",
    "IReader",
    "IWriter",
    "IllegalRequest",
    "MemoryWriter",
    "RequestContext",
    "ThreadRunner",
    "cleanup_stale_temp_files",
]

#: Runs ``f(*args)`` in a thread and returns a Deferred of its result (like
#: :func:`twisted.internet.threads.deferToThread`).
ThreadRunner = Callable[..., "Deferred[Any]"]


# -- request context -------------------------------------------------------------------------


def _to_mode(value: str) -> Mode:
    return value if isinstance(value, Mode) else Mode(value.lower())


def _to_pairs(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in items)


def _to_address(address: Any) -> tuple[str, int]:
    # IPv6 addresses from Twisted have four fields; host and port are what backends use.
    # An IPv4 client of a dual-stack listener is its IPv4 address (not ::ffff:a.b.c.d), so
    # that a backend's per-client table works whatever the server listens on.
    host, port = tuple(address)[:2]
    return (plain_host(str(host)), int(port))


def _encodable_filename(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"filename is not encodable: {value!r}") from None


@attrs.frozen
class RequestContext:
    """Everything a backend may want to know about one request."""

    #: The client's (host, port); an IPv4 client as IPv4, whatever the listener's family.
    peer: tuple[str, int] = attrs.field(converter=_to_address)
    #: The server address (host, port) the request was sent to: the listening port, and
    #: the address the client used (the listener's own address when it has one; on a
    #: listener on every address, the one the system reports, else ``0.0.0.0``/``::``).
    local: tuple[str, int] = attrs.field(converter=_to_address)
    #: The requested name as parsed (UTF-8 with ``surrogateescape``: lossless for any bytes).
    filename: str = attrs.field(validator=_encodable_filename)
    mode: Mode = attrs.field(default=Mode.OCTET, converter=_to_mode)
    #: The options exactly as requested (order, case and duplicates kept).
    options: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_to_pairs)
    #: True for an RRQ (download), False for a WRQ (upload).
    is_read: bool = True

    @property
    def filename_bytes(self) -> bytes:
        """The filename exactly as it was on the wire."""
        return self.filename.encode("utf-8", "surrogateescape")

    @classmethod
    def from_request(
        cls, request: RRQ | WRQ, peer: tuple[str, int], local: tuple[str, int]
    ) -> RequestContext:
        """The context of a parsed request that ``peer`` sent to our address ``local``."""
        return cls(
            peer=peer,
            local=local,
            filename=request.filename,
            mode=request.mode,
            options=request.options,
            is_read=request.is_read,
        )


# -- interfaces ------------------------------------------------------------------------------


class IReader(Interface):
    """The source of one download."""

    size = Attribute(
        "int or None: the exact number of octets read() will produce, if known (for tsize)."
    )

    def read(n: int) -> bytes | Deferred[bytes]:  # noqa: N805
        """Return up to ``n`` bytes (or a Deferred firing with them).

        Fewer than ``n`` bytes, including none, means the end of the data: a short read in
        the middle would end the transfer early. Failures should be :class:`BackendError`.
        """

    def close() -> None:
        """Release resources. Called once the transfer ends, however it ends; idempotent."""


class IWriter(Interface):
    """The sink of one upload. Nothing is visible under the target name before commit()."""

    def write(data: bytes) -> Deferred[None] | None:  # noqa: N805
        """Store ``data`` (the next bytes of the file), all of it.

        Returns ``None`` once the bytes are written, or a Deferred that fires when they
        are; the server acknowledges the block only then. Raises (or fails with)
        :class:`DiskFull` when space or the allowed size runs out, another
        :class:`BackendError` otherwise.
        """

    def commit() -> Deferred[None]:
        """All data was written: make the file durable and put it in place.

        Fails with a :class:`BackendError` (e.g. :class:`DiskFull`) if that cannot be
        done; the upload is then discarded.
        """

    def abort() -> None:
        """Discard the upload (error, timeout, shutdown). Idempotent; a no-op after commit."""


class IBackend(Interface):
    """Opens the files that TFTP requests name."""

    def open_read(context: RequestContext) -> Deferred[IReader]:  # noqa: N805
        """Open ``context.filename`` for a download; fail with a :class:`BackendError`."""

    def open_write(context: RequestContext, size: int | None) -> Deferred[IWriter]:  # noqa: N805
        """Open ``context.filename`` for an upload of ``size`` octets (the client's tsize,
        or None if it announced none); fail with a :class:`BackendError`, e.g.
        :class:`DiskFull` when ``size`` cannot fit."""


# -- in-memory helpers -----------------------------------------------------------------------


@implementer(IReader)
class BytesReader:
    """An :class:`IReader` over bytes already in memory (for generated content)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._position = 0
        self.size: int | None = len(self._data)

    def read(self, n: int) -> bytes:
        start = self._position
        chunk = self._data[start : start + n]
        self._position = start + len(chunk)
        return chunk

    def close(self) -> None:
        pass


@implementer(IWriter)
class MemoryWriter:
    """An :class:`IWriter` that keeps the upload in memory.

    On :meth:`commit`, ``on_commit(data)`` is called with all the bytes; it may return a
    Deferred, and its failure (preferably a :class:`BackendError`) fails the commit. With
    ``max_size`` set, a write beyond that many bytes raises :class:`DiskFull`.
    """

    def __init__(
        self,
        on_commit: Callable[[bytes], object] | None = None,
        *,
        max_size: int | None = None,
    ) -> None:
        self._on_commit = on_commit
        self._max_size = max_size
        self._buffer = bytearray()
        self.committed = False
        self.aborted = False

    @property
    def data(self) -> bytes:
        """The bytes written so far (empty after an abort)."""
        return bytes(self._buffer)

    def write(self, data: bytes) -> None:
        if self.committed or self.aborted:
            raise BackendError("Transfer is closed")
        if self._max_size is not None and len(self._buffer) + len(data) > self._max_size:
            self.abort()
            raise DiskFull("File too large")
        self._buffer += data

    def commit(self) -> Deferred[None]:
        if self.committed or self.aborted:
            return defer.fail(BackendError("Transfer is closed"))
        self.committed = True
        if self._on_commit is None:
            return defer.succeed(None)
        result: Deferred[object] = defer.maybeDeferred(self._on_commit, bytes(self._buffer))
        return result.addCallback(lambda _: None)

    def abort(self) -> None:
        if not self.committed:
            self.aborted = True
            self._buffer = bytearray()


# -- filesystem ------------------------------------------------------------------------------

# Control characters: C0, DEL and C1, whether C1 came as UTF-8 or as raw bytes 0x80-0x9f,
# which decode to the lone surrogates U+DC80-U+DC9F (0x9b alone is a terminal's CSI).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udc9f]")
_TEMP_NAME = re.compile(
    rb"\A\..*\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX.encode("ascii")) + rb"\Z", re.DOTALL
)
_PROC_FD = b"/proc/self/fd"
_HAVE_PROC_FD = os.path.isdir(_PROC_FD)
_ACCESS_EFFECTIVE = os.access in os.supports_effective_ids

_READ_FLAGS = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _is_inside(root: bytes, path: bytes) -> bool:
    """True if ``path`` is ``root`` or below it, by whole components (both absolute and
    normalized, as ``realpath`` and the kernel give them)."""
    # A prefix that ends at a separator compares whole components ("/srv/tftp" is not
    # inside "/srv/tf"), and costs a fraction of os.path.commonpath per request.
    return path == root or path.startswith(root if root.endswith(b"/") else root + b"/")


classImplements(FilesystemReader, IReader)


@implementer(IWriter)
class FilesystemWriter(TempFileWriter):
    """Writes an upload to a temporary file and puts it in place on :meth:`commit`.

    Made by :meth:`FilesystemBackend.open_write`: a :class:`~netsvc.tftp.files.TempFileWriter`
    whose commit (fsync and rename) runs in a thread, so a slow disk never stalls the
    reactor.
    """

    _log = Logger()

    def __init__(self, *, run_in_thread: ThreadRunner, **arguments: Any) -> None:
        super().__init__(**arguments)
        self._run_in_thread = run_in_thread

    def commit(self) -> Deferred[None]:
        try:
            self.begin_commit()
        except BackendError as error:
            return defer.fail(error)
        finished: Deferred[None] = self._run_in_thread(self.finish)

        def settle(result: object) -> object:
            self.settle(not isinstance(result, Failure))
            return result

        return finished.addBoth(settle)

    def cleanup_failed(self, name: bytes, error: OSError) -> None:
        self._log.warn(
            "could not remove upload temporary file {name!r}: {error}",
            name=os.fsdecode(name),
            error=error.strerror,
        )


def _default_thread_runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)


@implementer(IBackend)
class FilesystemBackend:
    """Serves the files under ``root`` (see the module documentation for the rules).

    Read-only unless ``writable``; ``overwrite`` and ``create_dirs`` refine ``writable``
    and require it. ``max_upload_size`` bounds each upload in octets.
    ``run_in_thread(f, *args)`` runs the blocking fsync/rename of a commit and returns a
    Deferred; the default is :func:`twisted.internet.threads.deferToThread` (the global
    reactor's thread pool): embedders with their own reactor pass
    ``functools.partial(deferToThreadPool, reactor, reactor.getThreadPool())``.

    Opening and reading happen in the caller's thread (local disks answer quickly);
    only the commit, which waits for the disk, goes to a thread.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        writable: bool = False,
        overwrite: bool = False,
        create_dirs: bool = False,
        backslash_to_slash: bool = False,
        max_upload_size: int | None = None,
        run_in_thread: ThreadRunner | None = None,
    ) -> None:
        if (overwrite or create_dirs) and not writable:
            raise ValueError("overwrite and create_dirs require writable=True")
        if max_upload_size is not None and max_upload_size < 0:
            raise ValueError(f"max_upload_size must be None or >= 0, not {max_upload_size!r}")
        real_root = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real_root):
            raise ValueError(f"TFTP root is not a directory: {os.fsdecode(root)!r}")
        self.root: bytes = real_root
        self.writable = writable
        self.overwrite = overwrite
        self.create_dirs = create_dirs
        self.backslash_to_slash = backslash_to_slash
        self.max_upload_size = max_upload_size
        self._run_in_thread: ThreadRunner = run_in_thread or _default_thread_runner

    # -- names --

    def _resolve(self, context: RequestContext) -> bytes:
        """The resolved absolute path for the request's name, inside the root, or raise."""
        if _CONTROL.search(context.filename):
            raise AccessViolation("Illegal file name")
        raw = context.filename_bytes
        if self.backslash_to_slash:
            raw = raw.replace(b"\\", b"/")
        parts = [part for part in raw.split(b"/") if part and part != b"."]
        if not parts or b".." in parts or _TEMP_NAME.match(parts[-1]):
            raise AccessViolation("Illegal file name")
        resolved = os.path.realpath(os.path.join(self.root, *parts))
        if resolved == self.root or not _is_inside(self.root, resolved):
            raise AccessViolation()
        return resolved

    def _check_opened(self, fd: int, *, allow_root: bool) -> None:
        """Where the kernel says ``fd`` is must be inside the root (a swapped-in symlink)."""
        if not _HAVE_PROC_FD:
            return
        try:
            where = os.readlink(b"%s/%d" % (_PROC_FD, fd))
        except OSError:
            return
        if not _is_inside(self.root, where) or (where == self.root and not allow_root):
            raise AccessViolation()

    # -- reading --

    def open_read(self, context: RequestContext) -> Deferred[IReader]:
        return defer.maybeDeferred(self._open_read, context)

    def _open_read(self, context: RequestContext) -> IReader:
        path = self._resolve(context)
        try:
            # stat() first: a device is refused without being opened at all.
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise AccessViolation("Not a regular file")
            # O_NONBLOCK: should a FIFO be swapped in after stat(), open() cannot block.
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise from_os_error(exc, writing=False) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AccessViolation("Not a regular file")
            self._check_opened(fd, allow_root=False)
        except BaseException:
            os.close(fd)
            raise
        return FilesystemReader(fd, info.st_size)

    # -- writing --

    def open_write(self, context: RequestContext, size: int | None) -> Deferred[IWriter]:
        return defer.maybeDeferred(self._open_write, context, size)

    def _open_write(self, context: RequestContext, size: int | None) -> IWriter:
        if not self.writable:
            raise AccessViolation("Uploads are not allowed")
        limit = self.max_upload_size
        if size is not None and limit is not None and size > limit:
            raise DiskFull("File too large")
        path = self._resolve(context)
        directory, name = os.path.split(path)
        try:
            if self.create_dirs:
                self._make_directories(directory)
            dir_fd = os.open(directory, _DIR_FLAGS)
        except OSError as exc:
            raise from_os_error(exc, writing=True) from None
        try:
            self._check_opened(dir_fd, allow_root=True)
            return self._create_temp(dir_fd, name, size)
        except OSError as exc:
            os.close(dir_fd)
            raise from_os_error(exc, writing=True) from None
        except BaseException:
            os.close(dir_fd)
            raise

    def _make_directories(self, directory: bytes) -> None:
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # Some component is a file.
            raise FileNotFound() from None

    def _create_temp(self, dir_fd: int, name: bytes, size: int | None) -> FilesystemWriter:
        try:
            existing: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise AccessViolation("Is a directory")
            if not stat.S_ISREG(existing.st_mode):
                raise AccessViolation("Not a regular file")
            if not self.overwrite:
                raise FileExists()
            if not os.access(name, os.W_OK, dir_fd=dir_fd, effective_ids=_ACCESS_EFFECTIVE):
                raise AccessViolation()
        if size is not None:
            space = os.fstatvfs(dir_fd)
            if size > space.f_bavail * space.f_frsize:
                raise DiskFull()
        # 0o644: the kernel applies the umask (and default ACLs) as for any new file.
        fd, temp = create_temp_file(dir_fd, name, 0o644)
        if existing is not None:
            try:
                # Keep the replaced file's permissions (never its set-id bits).
                os.fchmod(fd, existing.st_mode & 0o777)
            except OSError:
                os.close(fd)
                os.unlink(temp, dir_fd=dir_fd)
                raise
        return FilesystemWriter(
            fd=fd,
            dir_fd=dir_fd,
            temp_name=temp,
            target_name=name,
            overwrite=self.overwrite,
            max_size=self.max_upload_size,
            run_in_thread=self._run_in_thread,
        )

    # -- housekeeping --

    def cleanup_stale_temp_files(
        self, max_age: float = 3600.0, *, stopping: Callable[[], bool] | None = None
    ) -> int:
        """Remove upload temporary files under the root older than ``max_age`` seconds
        (see :func:`cleanup_stale_temp_files`)."""
        return cleanup_stale_temp_files(self.root, max_age, stopping=stopping)


def cleanup_stale_temp_files(
    root: str | bytes | os.PathLike[str],
    max_age: float = 3600.0,
    *,
    now: float | None = None,
    stopping: Callable[[], bool] | None = None,
) -> int:
    """Delete leftover upload temporary files under ``root``; return how many.

    Only regular files named like our temporary files (``.NAME.<12 hex>.netsvc.part``)
    whose last modification is more than ``max_age`` seconds old are removed; symbolic
    links are not followed. Meant for start-up, after a crash: a live upload touches its
    file with every block, and ``max_age`` should exceed the longest stall of a transfer
    by far (the default is an hour). A removed file that was still in use fails its commit.
    ``stopping()``, asked before each directory, ends the walk early when true.
    """
    cutoff = (time.time() if now is None else now) - max_age
    removed = 0
    top = os.fsencode(root)
    for directory, _dirs, files in os.walk(top, followlinks=False):
        if stopping is not None and stopping():
            break
        for name in files:
            if not _TEMP_NAME.match(name):
                continue
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed
