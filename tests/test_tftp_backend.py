"""Backends: the interfaces, the in-memory helpers and the filesystem backend's safety rules."""

from __future__ import annotations

import errno
import gc
import os
import re
import signal
import socket
import stat
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from netsvc.tftp import backend as backend_module
from netsvc.tftp.backend import (
    TEMP_SUFFIX,
    AccessViolation,
    BackendError,
    BytesReader,
    DiskFull,
    FileExists,
    FileNotFound,
    FilesystemBackend,
    IBackend,
    IllegalRequest,
    IReader,
    IWriter,
    MemoryWriter,
    RequestContext,
    cleanup_stale_temp_files,
)
from netsvc.tftp.packets import ERROR, RRQ, WRQ, ErrorCode, Mode

_case = SynchronousTestCase()
TEMP_RE = re.compile(r"\A\..*\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + r"\Z", re.DOTALL)


def ok(d: Deferred[Any]) -> Any:
    return _case.successResultOf(d)


def failed(d: Deferred[Any], kind: type[BaseException] = BackendError) -> Any:
    return _case.failureResultOf(d, kind).value


def in_caller(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A ``run_in_thread`` that runs in the calling thread: no reactor needed."""
    return defer.maybeDeferred(f, *args)


def context(name: str, *, is_read: bool = True) -> RequestContext:
    return RequestContext(
        peer=("192.0.2.7", 40000),
        local=("192.0.2.1", 69),
        filename=name,
        mode=Mode.OCTET,
        options=(("blksize", "1428"),),
        is_read=is_read,
    )


def make_backend(root: Path, **kwargs: Any) -> FilesystemBackend:
    kwargs.setdefault("run_in_thread", in_caller)
    return FilesystemBackend(root, **kwargs)


def read_all(reader: Any, blksize: int = 512) -> bytes:
    chunks = []
    while True:
        chunk = reader.read(blksize)
        assert not isinstance(chunk, Deferred)
        chunks.append(chunk)
        if len(chunk) < blksize:
            break
    reader.close()
    return b"".join(chunks)


def open_write(backend: FilesystemBackend, name: str, size: int | None = None) -> Any:
    return ok(backend.open_write(context(name, is_read=False), size))


def upload(backend: FilesystemBackend, name: str, data: bytes, size: int | None = None) -> None:
    writer = open_write(backend, name, size)
    for start in range(0, len(data), 512):
        assert writer.write(data[start : start + 512]) is None
    ok(writer.commit())


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TEMP_RE.match(p.name))


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "tftp"
    directory.mkdir()
    return directory


# -- errors and context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (BackendError, ErrorCode.NOT_DEFINED),
        (FileNotFound, ErrorCode.FILE_NOT_FOUND),
        (AccessViolation, ErrorCode.ACCESS_VIOLATION),
        (DiskFull, ErrorCode.DISK_FULL),
        (IllegalRequest, ErrorCode.ILLEGAL_OPERATION),
        (FileExists, ErrorCode.FILE_EXISTS),
    ],
)
def test_error_codes_and_packets(kind: type[BackendError], code: ErrorCode) -> None:
    error = kind()
    assert error.code == code
    assert error.message and str(error) == error.message
    assert error.to_packet() == ERROR(code, error.message)
    custom = kind("custom text")
    assert (custom.code, custom.message) == (code, "custom text")
    assert BackendError("x", ErrorCode.NO_SUCH_USER).code == ErrorCode.NO_SUCH_USER


def test_context_from_request_keeps_every_field() -> None:
    request = WRQ("dir/caf\udce9", "NetASCII", (("TSize", "5"), ("tsize", "6")))
    ctx = RequestContext.from_request(request, ("::1", 1000, 0, 0), ("::1", 69))  # type: ignore[arg-type]
    assert ctx.peer == ("::1", 1000)
    assert ctx.local == ("::1", 69)
    assert ctx.filename == "dir/caf\udce9"
    assert ctx.filename_bytes == b"dir/caf\xe9"
    assert ctx.mode is Mode.NETASCII
    assert ctx.options == (("TSize", "5"), ("tsize", "6"))
    assert ctx.is_read is False
    assert RequestContext.from_request(RRQ("x"), ("h", 1), ("l", 2)).is_read is True


def test_context_refuses_unencodable_names() -> None:
    with pytest.raises(ValueError, match="not encodable"):
        RequestContext(("h", 1), ("l", 2), "\ud800", Mode.OCTET)


# -- in-memory helpers -----------------------------------------------------------------------


def test_bytes_reader() -> None:
    reader = BytesReader(b"x" * 1000)
    assert verifyObject(IReader, reader)
    assert reader.size == 1000
    assert [len(reader.read(512)), len(reader.read(512)), len(reader.read(512))] == [512, 488, 0]
    reader.close()
    exact = BytesReader(b"y" * 512)
    assert read_all(exact) == b"y" * 512  # ends with an empty read
    assert BytesReader(b"").read(512) == b""


def test_memory_writer_commit_passes_the_data() -> None:
    received: list[bytes] = []
    writer = MemoryWriter(received.append)
    assert verifyObject(IWriter, writer)
    assert writer.write(b"abc") is None
    writer.write(b"def")
    assert writer.data == b"abcdef"
    assert ok(writer.commit()) is None
    assert received == [b"abcdef"] and writer.committed
    writer.abort()  # a no-op after commit
    assert writer.data == b"abcdef" and not writer.aborted
    with pytest.raises(BackendError):
        writer.write(b"more")
    failed(writer.commit())


def test_memory_writer_async_commit_and_failures() -> None:
    pending: Deferred[None] = Deferred()
    writer = MemoryWriter(lambda data: pending)
    writer.write(b"x")
    d = writer.commit()
    assert not d.called
    pending.callback(None)
    assert ok(d) is None

    def refuse(data: bytes) -> None:
        raise FileExists()

    refusing = MemoryWriter(refuse)
    assert failed(refusing.commit(), FileExists).code == ErrorCode.FILE_EXISTS

    limited = MemoryWriter(max_size=4)
    limited.write(b"1234")
    with pytest.raises(DiskFull):
        limited.write(b"5")
    assert limited.aborted and limited.data == b""
    failed(limited.commit())

    aborted = MemoryWriter()
    aborted.write(b"x")
    aborted.abort()
    aborted.abort()
    assert aborted.data == b""


# -- construction ----------------------------------------------------------------------------


def test_constructor_checks(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="require writable"):
        FilesystemBackend(root, overwrite=True)
    with pytest.raises(ValueError, match="require writable"):
        FilesystemBackend(root, create_dirs=True)
    with pytest.raises(ValueError, match="max_upload_size"):
        FilesystemBackend(root, writable=True, max_upload_size=-1)
    with pytest.raises(ValueError, match="not a directory"):
        FilesystemBackend(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        FilesystemBackend(tmp_path / "file")
    backend = FilesystemBackend(str(root))
    assert verifyObject(IBackend, backend)
    assert backend.root == os.fsencode(os.path.realpath(root))


# -- reading ---------------------------------------------------------------------------------


def test_read_files_and_leading_slashes(root: Path) -> None:
    (root / "pxelinux.0").write_bytes(b"boot" * 300)
    (root / "sub").mkdir()
    (root / "sub" / "file").write_bytes(b"nested")
    backend = make_backend(root)
    for name in ("pxelinux.0", "/pxelinux.0", "//pxelinux.0", "./pxelinux.0", "/./pxelinux.0"):
        reader = ok(backend.open_read(context(name)))
        assert verifyObject(IReader, reader)
        assert reader.size == 1200
        assert read_all(reader) == b"boot" * 300
    for name in ("sub/file", "/sub//file", "sub/./file"):
        assert read_all(ok(backend.open_read(context(name)))) == b"nested"


def test_read_sizes_end_with_a_short_block(root: Path) -> None:
    backend = make_backend(root)
    for size in (0, 1, 511, 512, 513, 1024, 5000):
        data = os.urandom(size)
        (root / "f").write_bytes(data)
        reader = ok(backend.open_read(context("f")))
        assert reader.size == size
        assert read_all(reader) == data
        reader.close()  # idempotent
        assert reader.read(512) == b""


def test_read_loops_over_short_os_reads(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3000)
    (root / "f").write_bytes(data)
    real_read = os.read

    def dribble(fd: int, n: int) -> bytes:
        if fd_path(fd).startswith(str(root)):
            return real_read(fd, min(n, 7))
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", dribble)
    reader = ok(make_backend(root).open_read(context("f")))
    assert len(reader.read(512)) == 512
    assert read_all(reader) == data[512:]


def test_read_stops_at_the_announced_size(root: Path) -> None:
    path = root / "growing"
    path.write_bytes(b"a" * 600)
    reader = ok(make_backend(root).open_read(context("growing")))
    with path.open("ab") as more:
        more.write(b"b" * 600)
    assert read_all(reader) == b"a" * 600


def test_read_error_is_a_backend_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "f").write_bytes(b"data")
    reader = ok(make_backend(root).open_read(context("f")))

    def broken(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "read", broken)
    with pytest.raises(BackendError) as info:
        reader.read(512)
    assert info.value.code == ErrorCode.NOT_DEFINED
    assert info.value.message == "Input/output error"
    reader.close()


def test_missing_files(root: Path) -> None:
    backend = make_backend(root)
    for name in ("missing", "no/such/dir/file", "a" * 300, "a" * 300 + "/b"):
        error = failed(backend.open_read(context(name)), FileNotFound)
        assert error.code == ErrorCode.FILE_NOT_FOUND
    (root / "plain").write_bytes(b"")
    failed(backend.open_read(context("plain/below")), FileNotFound)


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../x",
        "../tftp/x",
        "a/../../x",
        "a/..",
        "/../etc/passwd",
        "sub/../../../../etc/passwd",
        "/",
        "//",
        ".",
        "./",
        "",
        "x\x00y",
        "\x1b[31mred",
        "bell\x07",
        "new\nline",
        "tab\there",
        "del\x7f",
        "c1\x9b31m",
        "nel\x85",
        b"raw-c1\x9b31m".decode("utf-8", "surrogateescape"),  # 0x9b as a byte, not UTF-8
        b"raw-nel\x85".decode("utf-8", "surrogateescape"),
        ".x.0123456789ab" + TEMP_SUFFIX,
        "sub/.f.abcdef012345" + TEMP_SUFFIX,
    ],
)
def test_illegal_names_are_access_violations(root: Path, name: str) -> None:
    (root / "x").write_bytes(b"inside")
    (root / "sub").mkdir()
    backend = make_backend(root, writable=True, overwrite=True, create_dirs=True)
    error = failed(backend.open_read(context(name)), AccessViolation)
    assert error.code == ErrorCode.ACCESS_VIOLATION
    assert str(root) not in error.message
    failed(backend.open_write(context(name, is_read=False), None), AccessViolation)
    assert sorted(p.name for p in root.iterdir()) == ["sub", "x"]
    assert not list((root / "sub").iterdir())


def test_backslashes(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "file").write_bytes(b"sub")
    (root / "dir\\file").write_bytes(b"literal")
    literal = make_backend(root)
    assert read_all(ok(literal.open_read(context("dir\\file")))) == b"literal"
    # Without the switch "..\\x" is one (missing) name inside the root.
    failed(literal.open_read(context("..\\x")), FileNotFound)
    windows = make_backend(root, backslash_to_slash=True)
    assert read_all(ok(windows.open_read(context("dir\\file")))) == b"sub"
    assert read_all(ok(windows.open_read(context("\\dir\\file")))) == b"sub"
    for name in ("..\\x", "dir\\..\\..\\x", "..\\tftp\\dir\\file"):
        failed(windows.open_read(context(name)), AccessViolation)


def test_absolute_names_stay_inside_the_root(root: Path) -> None:
    backend = make_backend(root)
    failed(backend.open_read(context("/etc/passwd")), FileNotFound)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"not the real one")
    assert read_all(ok(backend.open_read(context("/etc/passwd")))) == b"not the real one"


def test_symlinks(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "real").mkdir()
    (root / "real" / "file").write_bytes(b"public")
    (root / "to-secret").symlink_to(outside / "secret")
    (root / "to-outside-dir").symlink_to(outside)
    (root / "relative-escape").symlink_to("../outside/secret")
    (root / "to-root-parent").symlink_to("..")
    (root / "inside").symlink_to("real/file")
    (root / "inside-dir").symlink_to("real")
    (root / "absolute-inside").symlink_to(root / "real" / "file")
    (root / "loop").symlink_to("loop")
    (root / "to-root").symlink_to(".")
    backend = make_backend(root)
    for name in (
        "to-secret",
        "to-outside-dir/secret",
        "relative-escape",
        "to-root-parent/outside/secret",
        "loop",
        "to-root",
    ):
        failed(backend.open_read(context(name)), AccessViolation)
    for name in ("inside", "inside-dir/file", "absolute-inside", "to-root/real/file"):
        assert read_all(ok(backend.open_read(context(name)))) == b"public"


def test_sibling_with_the_root_as_string_prefix(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "tftp"
    evil = tmp_path / "srv" / "tftp-evil"
    root.mkdir(parents=True)
    evil.mkdir()
    (evil / "secret").write_bytes(b"secret")
    (root / "evil").symlink_to("../tftp-evil")
    (root / "evil-file").symlink_to(evil / "secret")
    backend = make_backend(root, writable=True)
    failed(backend.open_read(context("evil/secret")), AccessViolation)
    failed(backend.open_read(context("evil-file")), AccessViolation)
    failed(backend.open_write(context("evil/new", is_read=False), None), AccessViolation)
    assert sorted(p.name for p in evil.iterdir()) == ["secret"]
    assert not backend_module._is_inside(b"/srv/tftp", b"/srv/tftp-evil/secret")
    assert backend_module._is_inside(b"/srv/tftp", b"/srv/tftp/x")
    assert backend_module._is_inside(b"/", b"/srv")


def test_names_that_resolve_to_the_root_itself(root: Path) -> None:
    (root / "to-root").symlink_to(".")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..")
    backend = make_backend(root, writable=True)
    for name in ("to-root", "sub/up", "to-root/sub/up"):
        with pytest.raises(AccessViolation):
            backend._resolve(context(name))
        failed(backend.open_write(context(name, is_read=False), None), AccessViolation)


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    (real / "f").write_bytes(b"f")
    (tmp_path / "link-root").symlink_to(real)
    backend = make_backend(tmp_path / "link-root")
    assert read_all(ok(backend.open_read(context("f")))) == b"f"


def test_symlink_swapped_in_after_the_check_is_caught(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"secret")
    (root / "sub").mkdir()
    (root / "sub" / "f").write_bytes(b"public")
    real_open = os.open

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsencode(path).endswith(b"/sub/f"):
            # The attacker replaces a directory by a symlink between check and open.
            (root / "sub" / "f").unlink()
            (root / "sub").rmdir()
            (root / "sub").symlink_to(outside)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing_open)
    failed(make_backend(root).open_read(context("sub/f")), AccessViolation)


def test_directories_and_special_files_are_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    opened: list[bytes] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsencode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "socket"))
        backend = make_backend(root, writable=True, overwrite=True)
        for name in ("dir", "fifo", "null", "socket"):
            error = failed(backend.open_read(context(name)), AccessViolation)
            assert error.code == ErrorCode.ACCESS_VIOLATION
            failed(backend.open_write(context(name, is_read=False), None), AccessViolation)
    # Special files are refused before open(): opening a device can have side effects.
    assert not [path for path in opened if path.endswith((b"/null", b"/fifo", b"/socket"))]
    assert not temp_files(root)


def test_fifo_swapped_in_after_stat_does_not_block(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(root / "fifo")
    backend = make_backend(root)
    real_stat = os.stat

    def claims_regular(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        fields = list(result)
        fields[0] = stat.S_IFREG | 0o644
        return os.stat_result(fields)

    monkeypatch.setattr(os, "stat", claims_regular)
    # Opening a FIFO without O_NONBLOCK would wait for a writer for ever.
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    signal.alarm(10)
    try:
        failed(backend.open_read(context("fifo")), AccessViolation)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (errno.EACCES, AccessViolation),
        (errno.EPERM, AccessViolation),
        (errno.ELOOP, AccessViolation),
        (errno.ENOENT, FileNotFound),
        (errno.ENAMETOOLONG, FileNotFound),
        (errno.EIO, BackendError),
    ],
)
def test_open_errors_map_to_codes(
    root: Path, monkeypatch: pytest.MonkeyPatch, number: int, kind: type[BackendError]
) -> None:
    (root / "f").write_bytes(b"data")

    def refuse(path: Any, *args: Any, **kwargs: Any) -> int:
        raise OSError(number, os.strerror(number), os.fsdecode(path))

    monkeypatch.setattr(os, "open", refuse)
    error = failed(make_backend(root).open_read(context("f")), kind)
    assert type(error) is kind
    assert str(root) not in error.message
    assert error.message in (os.strerror(number), kind.default_message)


# -- writing ---------------------------------------------------------------------------------


def test_read_only_by_default(root: Path) -> None:
    backend = make_backend(root)
    error = failed(backend.open_write(context("new", is_read=False), 10), AccessViolation)
    assert error.code == ErrorCode.ACCESS_VIOLATION
    (root / "existing").write_bytes(b"old")
    failed(backend.open_write(context("existing", is_read=False), None), AccessViolation)
    assert sorted(p.name for p in root.iterdir()) == ["existing"]
    assert (root / "existing").read_bytes() == b"old"


def test_upload_creates_a_new_file(root: Path) -> None:
    backend = make_backend(root, writable=True)
    data = os.urandom(5000)
    writer = open_write(backend, "/new.bin", len(data))
    assert verifyObject(IWriter, writer)
    for start in range(0, len(data), 512):
        writer.write(data[start : start + 512])
        # Never visible under its name before commit, only as a hidden temp file.
        assert not (root / "new.bin").exists()
        assert len(temp_files(root)) == 1
    assert writer.written == len(data)
    assert ok(writer.commit()) is None
    assert (root / "new.bin").read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["new.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((root / "new.bin").stat().st_mode) == 0o644 & ~umask
    writer.abort()  # safe after commit
    assert (root / "new.bin").read_bytes() == data
    with pytest.raises(BackendError):
        writer.write(b"late")
    failed(writer.commit())


def test_empty_upload(root: Path) -> None:
    backend = make_backend(root, writable=True)
    upload(backend, "empty", b"")
    assert (root / "empty").read_bytes() == b""


def test_existing_file_without_overwrite(root: Path) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True)
    error = failed(backend.open_write(context("f", is_read=False), None), FileExists)
    assert error.code == ErrorCode.FILE_EXISTS
    assert (root / "f").read_bytes() == b"old"
    assert not temp_files(root)


def test_overwrite_is_atomic(root: Path) -> None:
    target = root / "f"
    target.write_bytes(b"old contents")
    target.chmod(0o4640)  # set-uid must not be copied to the new file
    backend = make_backend(root, writable=True, overwrite=True)
    writer = open_write(backend, "f")
    for _ in range(10):
        writer.write(b"n" * 512)
        assert target.read_bytes() == b"old contents"
    inode = target.stat().st_ino
    ok(writer.commit())
    assert target.read_bytes() == b"n" * 5120
    assert target.stat().st_ino != inode  # replaced, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not temp_files(root)


def test_abort_keeps_the_old_file_and_removes_the_temp(root: Path) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True, overwrite=True)
    writer = open_write(backend, "f")
    writer.write(b"new data")
    assert len(temp_files(root)) == 1
    writer.abort()
    writer.abort()
    assert not temp_files(root)
    assert (root / "f").read_bytes() == b"old"
    with pytest.raises(BackendError):
        writer.write(b"more")
    failed(writer.commit())
    new = open_write(backend, "brand-new")
    new.write(b"partial")
    new.abort()
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_forgotten_writer_leaves_no_temp(root: Path) -> None:
    writer = open_write(make_backend(root, writable=True), "f")
    writer.write(b"x")
    assert temp_files(root)
    del writer
    gc.collect()
    assert not temp_files(root)


def test_writes_through_symlinks_only_inside(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "real").write_bytes(b"old")
    (root / "alias").symlink_to("real")
    (root / "dangling-out").symlink_to(outside / "new")
    (root / "out-dir").symlink_to(outside)
    backend = make_backend(root, writable=True, overwrite=True)
    upload(backend, "alias", b"new")
    assert (root / "real").read_bytes() == b"new"
    assert (root / "alias").is_symlink()
    failed(backend.open_write(context("dangling-out", is_read=False), None), AccessViolation)
    failed(backend.open_write(context("out-dir/x", is_read=False), None), AccessViolation)
    assert not list(outside.iterdir())


def test_missing_directories(root: Path) -> None:
    plain = make_backend(root, writable=True)
    failed(plain.open_write(context("a/b/c", is_read=False), None), FileNotFound)
    assert not list(root.iterdir())
    creating = make_backend(root, writable=True, create_dirs=True)
    upload(creating, "a/b/c", b"deep")
    assert (root / "a" / "b" / "c").read_bytes() == b"deep"
    (root / "file").write_bytes(b"")
    failed(creating.open_write(context("file/x", is_read=False), None), FileNotFound)


def test_long_names_on_upload(root: Path) -> None:
    backend = make_backend(root, writable=True, create_dirs=True)
    error = failed(backend.open_write(context("n" * 300, is_read=False), None), AccessViolation)
    assert "n" * 20 not in error.message
    failed(backend.open_write(context("d" * 300 + "/x", is_read=False), None), AccessViolation)
    # The longest legal name still fits: the temp name uses only a prefix of it.
    upload(backend, "m" * 255, b"ok")
    assert (root / ("m" * 255)).read_bytes() == b"ok"


def test_upload_permission_denied(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True, overwrite=True)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    failed(backend.open_write(context("f", is_read=False), None), AccessViolation)
    monkeypatch.undo()
    real_open = os.open

    def no_create(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_create)
    failed(backend.open_write(context("new", is_read=False), None), AccessViolation)
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_max_upload_size(root: Path) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True, overwrite=True, max_upload_size=1024)
    upload(backend, "exact", b"e" * 1024)
    assert (root / "exact").stat().st_size == 1024
    # Announced too large: refused before anything is created.
    error = failed(backend.open_write(context("f", is_read=False), 1025), DiskFull)
    assert error.code == ErrorCode.DISK_FULL
    assert not temp_files(root)
    # Not announced: refused by the write that crosses the limit.
    writer = open_write(backend, "f")
    writer.write(b"x" * 1000)
    with pytest.raises(DiskFull):
        writer.write(b"x" * 25)
    assert not temp_files(root)
    assert (root / "f").read_bytes() == b"old"
    writer.abort()


def test_announced_size_beyond_free_space(root: Path) -> None:
    backend = make_backend(root, writable=True)
    space = os.statvfs(root)
    free = space.f_bavail * space.f_frsize
    assert failed(backend.open_write(context("big", is_read=False), free + 1), DiskFull)
    assert not list(root.iterdir())
    ok(backend.open_write(context("fits", is_read=False), 1)).abort()
    assert not list(root.iterdir())


def _fail_temp_writes(monkeypatch: pytest.MonkeyPatch, number: int, after: int = 0) -> None:
    """Make os.write on upload temp files fail with ``number`` after ``after`` bytes."""
    real_write = os.write
    written = [0]

    def write(fd: int, data: Any) -> int:
        if fd_path(fd).endswith(TEMP_SUFFIX):
            if written[0] >= after:
                raise OSError(number, os.strerror(number))
            done = real_write(fd, data)
            written[0] += done
            return done
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_disk_full_on_write(root: Path, monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True, overwrite=True)
    writer = open_write(backend, "f")
    _fail_temp_writes(monkeypatch, number, after=1024)
    writer.write(b"a" * 512)
    writer.write(b"b" * 512)
    with pytest.raises(DiskFull) as info:
        writer.write(b"c" * 512)
    assert info.value.code == ErrorCode.DISK_FULL
    assert not temp_files(root)
    assert (root / "f").read_bytes() == b"old"
    writer.abort()
    failed(writer.commit())


def test_other_write_errors(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_write(make_backend(root, writable=True), "f")
    _fail_temp_writes(monkeypatch, errno.EIO)
    with pytest.raises(BackendError) as info:
        writer.write(b"x")
    assert info.value.code == ErrorCode.NOT_DEFINED
    assert info.value.message == os.strerror(errno.EIO)
    assert not list(root.iterdir())


def test_short_os_writes_still_write_everything(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def trickle(fd: int, data: Any) -> int:
        if fd_path(fd).endswith(TEMP_SUFFIX):
            return real_write(fd, bytes(data[:5]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", trickle)
    data = os.urandom(2000)
    upload(make_backend(root, writable=True), "f", data)
    assert (root / "f").read_bytes() == data


def test_fsync_failure_on_commit(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "f").write_bytes(b"old")
    backend = make_backend(root, writable=True, overwrite=True)
    writer = open_write(backend, "f")
    writer.write(b"new")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    assert failed(writer.commit(), DiskFull).code == ErrorCode.DISK_FULL
    assert (root / "f").read_bytes() == b"old"
    assert not temp_files(root)
    writer.abort()


def test_commit_runs_in_the_thread_runner_and_abort_during_commit(root: Path) -> None:
    (root / "f").write_bytes(b"old")
    queued: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queued.append((f, args, d))
        return d

    def run_queued() -> None:
        f, args, d = queued.pop()
        try:
            result = f(*args)
        except BaseException as exc:
            d.errback(exc)
        else:
            d.callback(result)

    backend = make_backend(root, writable=True, overwrite=True, run_in_thread=later)
    writer = open_write(backend, "f")
    writer.write(b"new")
    committing = writer.commit()
    assert queued and not committing.called
    with pytest.raises(BackendError):
        writer.write(b"during commit")
    writer.abort()  # shutdown while the thread works: the upload must not land
    run_queued()
    failed(committing)
    assert (root / "f").read_bytes() == b"old"
    assert not temp_files(root)

    second = open_write(backend, "f")
    second.write(b"newer")
    d = second.commit()
    run_queued()
    assert ok(d) is None
    second.abort()
    assert (root / "f").read_bytes() == b"newer"


def test_default_thread_runner_is_defer_to_thread(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet import threads

    calls: list[Callable[..., Any]] = []

    def fake_defer_to_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        calls.append(f)
        return defer.maybeDeferred(f, *args)

    monkeypatch.setattr(threads, "deferToThread", fake_defer_to_thread)
    backend = FilesystemBackend(root, writable=True)
    upload(backend, "f", b"data")
    assert len(calls) == 1
    assert (root / "f").read_bytes() == b"data"


def test_new_name_taken_during_upload(root: Path) -> None:
    backend = make_backend(root, writable=True)
    writer = open_write(backend, "race")
    writer.write(b"mine")
    (root / "race").write_bytes(b"theirs")
    assert failed(writer.commit(), FileExists).code == ErrorCode.FILE_EXISTS
    assert (root / "race").read_bytes() == b"theirs"
    assert not temp_files(root)


@pytest.mark.parametrize("taken", [False, True])
def test_no_hard_links_fallback(root: Path, monkeypatch: pytest.MonkeyPatch, taken: bool) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    backend = make_backend(root, writable=True)
    writer = open_write(backend, "f")
    writer.write(b"mine")
    if taken:
        (root / "f").write_bytes(b"theirs")
        failed(writer.commit(), FileExists)
        assert (root / "f").read_bytes() == b"theirs"
    else:
        ok(writer.commit())
        assert (root / "f").read_bytes() == b"mine"
    assert not temp_files(root)


def test_target_became_a_directory_before_commit(root: Path) -> None:
    backend = make_backend(root, writable=True, overwrite=True)
    writer = open_write(backend, "f")
    writer.write(b"x")
    (root / "f").mkdir()
    (root / "f" / "keep").write_bytes(b"")
    failed(writer.commit(), BackendError)
    assert (root / "f" / "keep").exists()
    assert not temp_files(root)


# -- stale temp files ------------------------------------------------------------------------


def test_cleanup_stale_temp_files(root: Path, tmp_path: Path) -> None:
    (root / "sub").mkdir()
    old = [
        root / (".a.0123456789ab" + TEMP_SUFFIX),
        root / "sub" / (".b.abcdefabcdef" + TEMP_SUFFIX),
    ]
    fresh = root / (".c.000000000000" + TEMP_SUFFIX)
    keep = [root / ".user.part", root / "a.netsvc.part", root / (".x.XYZ" + TEMP_SUFFIX)]
    for path in [*old, fresh, *keep]:
        path.write_bytes(b"")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = root / (".d.111111111111" + TEMP_SUFFIX)
    link.symlink_to(victim)
    for path in [*old, *keep]:
        os.utime(path, (1000, 1000))
    os.utime(link, (1000, 1000), follow_symlinks=False)
    assert cleanup_stale_temp_files(root, 60) == 2
    assert not any(p.exists() for p in old)
    assert fresh.exists() and all(p.exists() for p in keep)
    assert link.is_symlink() and victim.read_bytes() == b"precious"
    assert cleanup_stale_temp_files(str(root), 60) == 0
    os.utime(fresh, (1000, 1000))
    assert make_backend(root).cleanup_stale_temp_files(max_age=60) == 1
    assert not fresh.exists()


def test_cleanup_matches_real_temp_names(root: Path) -> None:
    writer = open_write(make_backend(root, writable=True), "name-" + "x" * 200)
    (temp,) = temp_files(root)
    assert cleanup_stale_temp_files(root, 3600) == 0
    assert cleanup_stale_temp_files(root, 0, now=os.stat(root / temp).st_mtime + 1) == 1
    # Removed under a live writer: nothing lands, the commit fails.
    failed(writer.commit(), FileNotFound)
    assert not list(root.iterdir())


# -- a real full file system -----------------------------------------------------------------


@pytest.mark.root
def test_full_tmpfs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        existing = os.urandom(100_000)
        (mountpoint / "f").write_bytes(existing)
        backend = make_backend(mountpoint, writable=True, overwrite=True)
        big = 2 * 1024 * 1024
        failed(backend.open_write(context("f", is_read=False), big), DiskFull)
        assert not temp_files(mountpoint)
        writer = open_write(backend, "f")
        block = b"z" * 512
        with pytest.raises(DiskFull):
            for _ in range(big // 512):
                writer.write(block)
        assert 0 < writer.written < big
        writer.abort()
        assert not temp_files(mountpoint)
        assert (mountpoint / "f").read_bytes() == existing
        # The space is back: a small upload succeeds.
        upload(backend, "f", b"small")
        assert (mountpoint / "f").read_bytes() == b"small"
        assert sorted(p.name for p in mountpoint.iterdir()) == ["f"]
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


# -- the documented example ------------------------------------------------------------------


def test_module_docstring_example(root: Path) -> None:
    doc = backend_module.__doc__
    assert doc is not None
    block = doc.split(".. code-block:: python\n", 1)[1].split("\nFilesystem rules", 1)[0]
    source = textwrap.dedent(block).replace('"/srv/tftp"', repr(str(root)))
    (root / "kernel").write_bytes(b"vmlinuz")
    namespace: dict[str, Any] = {}
    exec(compile(source, "backend-docstring-example", "exec"), namespace)
    example = namespace["backend"]
    assert verifyObject(IBackend, example)
    reader = ok(example.open_read(context("boot.cfg")))
    text = read_all(reader)
    assert text == (b"# for 192.0.2.7\nhostname=node-192-0-2-7\nnext-server=192.0.2.1\n")
    assert reader.size == len(text)
    assert read_all(ok(example.open_read(context("kernel")))) == b"vmlinuz"
    failed(example.open_read(context("../kernel")), AccessViolation)
    failed(example.open_write(context("boot.cfg", is_read=False), None), AccessViolation)


def test_cleanup_stops_when_asked(root: Path) -> None:
    for name in "abc":
        (root / name).mkdir()
        stale = root / name / (".f.0123456789ab" + TEMP_SUFFIX)
        stale.write_bytes(b"")
        os.utime(stale, (1000, 1000))
    asked: list[int] = []

    def stopping() -> bool:  # true from the second directory on
        asked.append(1)
        return len(asked) > 1

    assert cleanup_stale_temp_files(root, 60, stopping=stopping) == 0  # the root has none
    assert len(asked) == 2
    assert [len(temp_files(root / name)) for name in "abc"] == [1, 1, 1]
