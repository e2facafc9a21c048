"""``netsvc tftp get|put``: argument parsing, exit statuses, messages, progress line.

In memory (the ``transfer()`` function on a fake network, for every error class), then as
a real command (``python -m netsvc tftp ...``) against twistd netsvc-tftp, tftpd-hpa and
small misbehaving servers on real sockets, and under a pseudo-terminal for the progress line.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import os
import pty
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from netsvc.cli import build_parser
from netsvc.testing import BlockingChannel, FakeUDPReactor, LinkConditions
from netsvc.tftp.backend import AccessViolation, BackendError, DiskFull, FileExists, FileNotFound
from netsvc.tftp.client import TFTPError
from netsvc.tftp.packets import OACK, RRQ, WRQ, encode_data
from netsvc.tftp_cli import (
    DEFAULT_BLKSIZE,
    ExitCode,
    ProgressLine,
    exit_code_for,
    format_duration,
    format_progress,
    format_size,
    parse_server,
    transfer,
)
from tests.interop_support import TFTPServer, temp_files
from tests.test_tftp_client import Script, Sender, Transfer, scripted
from tests.test_tftp_client_interop import foreground_server, tftpd_hpa_command
from tests.tftp_support import fake_network

# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server", ("server", 69)),
        ("server:6969", ("server", 6969)),
        ("10.0.0.1", ("10.0.0.1", 69)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("::1", ("::1", 69)),
        ("fe80::1%eth0", ("fe80::1%eth0", 69)),
        ("[::1]", ("::1", 69)),
        ("[::1]:69", ("::1", 69)),
        ("[2001:db8::5]:65535", ("2001:db8::5", 65535)),
        ("[fe80::1%lo]:70", ("fe80::1%lo", 70)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":69", "host:", "host:0", "host:65536", "host:x", "host:-1", "[::1", "[]:69",
     "[::1]x", "[::1]:", "[10.0.0.1]:69", "[name]:69", "host: 69", "host:\uff16\uff19"],
)
def test_parse_server_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_server(text)


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [value for name, value in vars(ExitCode).items() if name.isupper()]
    assert len(codes) == len(set(codes))
    documented = (Path(__file__).parent.parent / "docs" / "tftp-client.rst").read_text()
    for code in codes:
        assert f"\n   * - {code}\n" in documented, code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TFTPError(1, "File not found", remote=True), ExitCode.NOT_FOUND),
        (TFTPError(2, "Access violation", remote=True), ExitCode.ACCESS),
        (TFTPError(3, "Disk full", remote=True), ExitCode.DISK_FULL),
        (TFTPError(3, "file too large"), ExitCode.DISK_FULL),
        (TFTPError(4, "expected DATA"), ExitCode.PROTOCOL),
        (TFTPError(5, "unknown transfer ID", remote=True), ExitCode.PROTOCOL),
        (TFTPError(6, "File exists", remote=True), ExitCode.EXISTS),
        (TFTPError(7, "No such user", remote=True), ExitCode.OTHER),
        (TFTPError(8, "OACK grants an option that was not requested"), ExitCode.PROTOCOL),
        (TFTPError(0, "whatever", remote=True), ExitCode.OTHER),
        (TFTPError(0, "no answer from the server", timed_out=True), ExitCode.TIMEOUT),
        (TFTPError(99, "odd code", remote=True), ExitCode.OTHER),
        (FileNotFound("No such file or directory"), ExitCode.NOT_FOUND),
        (AccessViolation("Permission denied"), ExitCode.ACCESS),
        (DiskFull("No space left on device"), ExitCode.DISK_FULL),
        (FileExists("File exists"), ExitCode.EXISTS),
        (BackendError("Input/output error"), ExitCode.OTHER),
    ],
)
def test_exit_code_for(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"), (2 << 40, "2.0 TiB"), (2 << 50, "2048.0 TiB")],
)
def test_format_size(count: int, text: str) -> None:
    assert format_size(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.4, "0:59"), (75, "1:15"), (3700, "1:01:40")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_progress_with_a_known_size_shows_bar_percentage_rate_and_eta() -> None:
    line = format_progress("boot.img", 1 << 20, 4 << 20, 512 * 1024, 80)
    assert line.startswith("boot.img  [") and "]   25%  1.0 MiB/4.0 MiB" in line
    assert line.endswith("512.0 KiB/s  ETA 0:06") and len(line) <= 80


def test_progress_without_a_size_shows_bytes_and_rate_only() -> None:
    assert format_progress("x", 3000, None, 1000.0, 80) == "x  2.9 KiB  1000 B/s"
    assert format_progress("x", 0, None, None, 80) == "x  0 B  --/s"


def test_final_progress_line_has_the_elapsed_time() -> None:
    line = format_progress("f", 100, 100, 50.0, 80, elapsed=2.0)
    assert "100%" in line and line.endswith("in 0:02")


@pytest.mark.parametrize("width", [10, 20, 30, 40, 60, 80, 200])
def test_progress_never_exceeds_the_width(width: int) -> None:
    label = "a/very/long/directory/name/and/a/long/file-name.iso"
    for total in (None, 10 << 30):
        line = format_progress(label, 5 << 30, total, 12.5e6, width)
        assert len(line) <= width
    narrow = format_progress(label, 5 << 30, 10 << 30, 12.5e6, 30)
    assert "50%" in narrow and "ETA" in narrow  # the bytes go first, the ETA stays


def test_progress_line_redraws_in_place_and_measures_a_recent_rate() -> None:
    stream = io.StringIO()
    now = [0.0]
    done = [0]
    line = ProgressLine(stream, "f", lambda: done[0], lambda: now[0])
    line.total = 10_000
    for step in range(1, 6):
        now[0] = float(step)
        done[0] = step * 1000 if step < 4 else 3000 + (step - 3) * 100  # slows down
        line.update()
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 5 and "\n" not in text
    # The rate of the last 3 seconds (3200 - 2000 bytes), not the average (640 B/s).
    assert "  400 B/s  " in frames[-1] and "32%  3.1 KiB/9.8 KiB" in frames[-1]
    line.finish(keep=True)
    assert stream.getvalue().endswith("\n") and "in 0:05" in stream.getvalue()
    erased = io.StringIO()
    other = ProgressLine(erased, "f", lambda: 5, lambda: 1.0)
    other.update()
    other.finish(keep=False)
    assert erased.getvalue().endswith("\r") and erased.getvalue().split("\r")[-2].strip() == ""


def test_parser_defaults_and_flags() -> None:
    args = build_parser().parse_args(["tftp", "get", "h", "r"])
    assert (args.action, args.server, args.remote, args.local) == ("get", ("h", 69), "r", None)
    assert (args.blksize, args.windowsize, args.timeout, args.mode) == (
        DEFAULT_BLKSIZE, None, None, "octet",
    )
    assert args.family == socket.AF_UNSPEC and not args.quiet and not args.verbose
    args = build_parser().parse_args(
        ["tftp", "put", "-6", "--windowsize", "16", "--mode", "netascii", "--no-options",
         "[::1]:70", "local", "remote"]
    )
    assert (args.action, args.server, args.local, args.remote) == (
        "put", ("::1", 70), "local", "remote",
    )
    assert args.family == socket.AF_INET6 and args.windowsize == 16 and args.no_options


# -- in memory: transfer() on a fake network ---------------------------------------------------


def run_cli(
    reactor: FakeUDPReactor, *argv: str, interactive: bool = False,
    channel: type[BlockingChannel] = BlockingChannel,
) -> tuple[int, bytes, str]:
    """``transfer()`` on the fake network: its blocking channel runs the simulated clock."""
    args = build_parser().parse_args(["tftp", *argv])
    stdout = io.BytesIO()
    stderr = io.StringIO()

    def open_channel(address: tuple[str, int]) -> BlockingChannel:
        return channel(reactor, "::" if ":" in address[0] else "")

    code = transfer(
        args, stdout=stdout, stderr=stderr, interactive=interactive,
        open_channel=open_channel, clock=reactor.seconds,
    )
    return code, stdout.getvalue(), stderr.getvalue()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def test_get_to_a_file_quietly(tmp_path: Path) -> None:
    data = payload(20_000)
    reactor, _, _ = fake_network({"dir/f.bin": data})
    target = tmp_path / "f.bin"
    code, out, err = run_cli(reactor, "get", "127.0.0.1", "dir/f.bin", str(target))
    assert (code, out, err) == (0, b"", "")
    assert target.read_bytes() == data and temp_files(tmp_path) == []


def test_get_into_a_directory_uses_the_remote_base_name(tmp_path: Path) -> None:
    reactor, _, _ = fake_network({"boot/pxelinux.0": b"x" * 10})
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "boot/pxelinux.0", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "pxelinux.0").read_bytes() == b"x" * 10


def test_get_to_stdout(tmp_path: Path) -> None:
    data = payload(3000)
    reactor, _, _ = fake_network({"f": data})
    code, out, err = run_cli(reactor, "get", "127.0.0.1", "f", "-")
    assert (code, out, err) == (0, data, "")


def test_put_from_a_file(tmp_path: Path) -> None:
    source = tmp_path / "image.bin"
    source.write_bytes(payload(5000))
    reactor, _, backend = fake_network()
    code, _, err = run_cli(reactor, "put", "127.0.0.1", str(source))
    assert code == 0, err
    assert backend.files["image.bin"] == source.read_bytes()
    assert backend.contexts[0].options == (("blksize", "1468"), ("tsize", "5000"))


def test_verbose_reports_options_size_time_rate_and_retransmits(tmp_path: Path) -> None:
    reactor, _, _ = fake_network({"f": payload(50_000)})
    code, _, err = run_cli(
        reactor, "get", "-v", "--windowsize", "8", "127.0.0.1", "f", str(tmp_path / "f")
    )
    lines = err.splitlines()
    assert code == 0 and len(lines) == 3, err
    assert lines[0].startswith("netsvc tftp: received 50000 bytes in ")
    assert "from 127.0.0.1 port " in lines[0]
    assert lines[1] == (
        "netsvc tftp: options: blksize=1468 windowsize=8 tsize=50000 "
        "(granted: blksize, windowsize, tsize)"
    )
    assert lines[2] == "netsvc tftp: retransmits: 0"


def test_no_options_sends_a_plain_request(tmp_path: Path) -> None:
    reactor, _, backend = fake_network({"f": b"abc"})
    code, _, err = run_cli(reactor, "get", "-v", "--no-options", "127.0.0.1", "f", "-")
    assert code == 0 and backend.contexts[0].options == ()
    assert "(granted: none)" in err and "blksize=512 windowsize=1" in err


def test_progress_line_in_memory(tmp_path: Path) -> None:
    reactor, _, _ = fake_network({"f": payload(100_000)})
    reactor.conditions = LinkConditions(delay=0.01)  # about 2 s of transfer
    code, _, err = run_cli(
        reactor, "get", "--blksize", "1024", "127.0.0.1", "f", str(tmp_path / "f"),
        interactive=True,
    )
    frames = err.split("\r")
    assert code == 0 and len(frames) > 10  # about 10 a second, not one per packet
    assert len(frames) < 2 * 100_000 // 1024
    assert any("ETA" in frame and "/97.7 KiB" in frame for frame in frames)
    assert frames[-1].endswith("\n") and "100%" in frames[-1]


def test_missing_remote_file_is_1_and_the_old_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    reactor, _, _ = fake_network({})
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "nothere", str(target))
    assert code == ExitCode.NOT_FOUND
    assert err == "netsvc tftp: nothere: File not found (server error 1)\n"
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_access_violation_is_3(tmp_path: Path) -> None:
    reactor, _, _ = fake_network({})
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "secret", str(tmp_path / "s"))
    assert code == ExitCode.ACCESS and err == "netsvc tftp: secret: no (server error 2)\n"


def test_file_exists_on_the_server_is_7(tmp_path: Path) -> None:
    source = tmp_path / "keepme"
    source.write_bytes(b"data")
    reactor, _, _ = fake_network({"keepme": b"old"})
    code, _, err = run_cli(reactor, "put", "127.0.0.1", str(source))
    assert code == ExitCode.EXISTS and "(server error 6)" in err


def test_no_clobber_is_7_before_any_traffic(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"mine")
    reactor, _, backend = fake_network({"f": b"theirs"})
    code, _, err = run_cli(reactor, "get", "--no-clobber", "127.0.0.1", "f", str(target))
    assert code == ExitCode.EXISTS and err == f"netsvc tftp: {target}: File exists\n"
    assert backend.contexts == [] and target.read_bytes() == b"mine"


def test_too_large_for_the_free_space_is_4_before_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reactor, _, _ = fake_network({"big.iso": payload(50_000)}, record=True)
    target = tmp_path / "big.iso"
    target.write_bytes(b"old")
    real_statvfs = os.statvfs

    def small_disk(path: Any) -> Any:
        real = real_statvfs(path)
        return SimpleNamespace(f_bavail=10, f_frsize=1024, f_bsize=real.f_bsize)

    monkeypatch.setattr(os, "statvfs", small_disk)
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "big.iso", str(target))
    assert code == ExitCode.DISK_FULL
    assert err == (
        f"netsvc tftp: big.iso: file too large (local error 3); 10.0 KiB free in {tmp_path}\n"
    )
    assert not any(s.data[:2] == b"\x00\x03" for s in reactor.sent)  # no DATA was sent
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_local_disk_full_during_the_transfer_is_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Larger than the client's 64 KiB write buffer, so the disk fills mid-transfer.
    reactor, _, _ = fake_network({"f": payload(300_000)}, record=True)
    real_write = os.write
    written = [0]

    def full(fd: int, data: Any) -> int:
        if fd > 2 and len(data) > 100:
            if written[0] >= 5000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "f", str(tmp_path / "f"))
    monkeypatch.undo()
    assert code == ExitCode.DISK_FULL, err
    assert err == "netsvc tftp: f: Disk full or allocation exceeded (local error 3)\n"
    assert temp_files(tmp_path) == [] and not (tmp_path / "f").exists()
    to_server = [s.data for s in reactor.sent if s.data[:4] == b"\x00\x05\x00\x03"]
    assert len(to_server) == 1  # the server was told: ERROR 3


def test_silent_server_is_5_after_five_timeouts() -> None:
    reactor, _ = scripted(Script())
    started = reactor.seconds()
    code, _, err = run_cli(reactor, "get", "--timeout", "1", "127.0.0.1", "f", "-")
    assert code == ExitCode.TIMEOUT
    assert err == "netsvc tftp: f: no answer from the server (127.0.0.1 port 69)\n"
    assert 5 <= reactor.seconds() - started < 7


def answering(code: int) -> Callable[[], Script]:
    def make() -> Script:
        class Answer(Script):
            def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
                transfer.send(b"\x00\x05\x00" + bytes([code]) + b"bad\x00")

        return Answer()

    return make


@pytest.mark.parametrize(
    ("make_script", "code", "message"),
    [
        (lambda: Sender(b"x" * 100, oack=[("foo", "1")]), ExitCode.PROTOCOL,
         "OACK grants an option that was not requested (local error 8)"),
        (lambda: Sender(b"x" * 100, oack=[("blksize", "9000")]), ExitCode.PROTOCOL,
         "OACK blksize larger than requested (local error 8)"),
        (answering(4), ExitCode.PROTOCOL, "bad (server error 4)"),
        (answering(5), ExitCode.PROTOCOL, "bad (server error 5)"),
        (answering(0), ExitCode.OTHER, "bad (server error 0)"),
        (answering(7), ExitCode.OTHER, "bad (server error 7)"),
        (answering(3), ExitCode.DISK_FULL, "bad (server error 3)"),
    ],
    ids=["unrequested-option", "larger-blksize", "error-4", "error-5", "error-0", "error-7",
         "error-3"],
)
def test_misbehaving_and_erring_servers(
    make_script: Callable[[], Script], code: int, message: str
) -> None:
    reactor, _ = scripted(make_script())
    result, _, err = run_cli(reactor, "get", "127.0.0.1", "f", "-")
    assert result == code and err == f"netsvc tftp: f: {message}\n"


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        ("missing", ExitCode.NOT_FOUND, "No such file or directory"),
        ("directory", ExitCode.ACCESS, "Not a regular file"),
    ],
)
def test_put_local_errors(tmp_path: Path, setup: str, code: int, message: str) -> None:
    path = tmp_path / "src"
    if setup == "directory":
        path.mkdir()
    reactor, _, backend = fake_network()
    result, _, err = run_cli(reactor, "put", "127.0.0.1", str(path), "dst")
    assert result == code and err == f"netsvc tftp: {path}: {message}\n"
    assert backend.contexts == []


def test_get_into_a_missing_directory_is_1(tmp_path: Path) -> None:
    reactor, _, _ = fake_network({"f": b"x"})
    target = tmp_path / "no" / "f"
    code, _, err = run_cli(reactor, "get", "127.0.0.1", "f", str(target))
    assert code == ExitCode.NOT_FOUND
    assert err == f"netsvc tftp: {target}: No such file or directory\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "-4", "::1", "f", "-"], "netsvc tftp: -4 given, but ::1 is an IPv6 address\n"),
        (["get", "127.0.0.1", "/", "."], "netsvc tftp: /: give a LOCAL file name\n"),
        (["get", "127.0.0.1", ".."], "netsvc tftp: ..: give a LOCAL file name\n"),
    ],
)
def test_usage_errors_found_late_are_2(argv: list[str], message: str) -> None:
    reactor, _, _ = fake_network({})
    code, _, err = run_cli(reactor, *argv)
    assert (code, err) == (ExitCode.USAGE, message)


def test_interrupted_transfer_removes_its_temporary_file_and_tells_the_server(
    tmp_path: Path,
) -> None:
    reactor, _, _ = fake_network({"f": payload(200_000)}, record=True)
    reactor.conditions = LinkConditions(delay=0.01)
    temporaries: list[list[Path]] = []

    class Interrupted(BlockingChannel):
        """Ctrl-C (or SIGTERM, which the command turns into the same) mid-transfer."""

        receives = 0

        def receive(self, timeout: float) -> tuple[bytes, tuple[str, int]] | None:
            self.receives += 1
            if self.receives == 50:
                temporaries.append(temp_files(tmp_path))
                raise KeyboardInterrupt
            return super().receive(timeout)

    code, _, err = run_cli(
        reactor, "get", "127.0.0.1", "f", str(tmp_path / "f"), channel=Interrupted
    )
    assert (code, err) == (ExitCode.INTERRUPTED, "netsvc tftp: f: interrupted\n")
    assert len(temporaries[0]) == 1  # the download was under way
    assert temp_files(tmp_path) == [] and not (tmp_path / "f").exists()
    errors = [s.data for s in reactor.sent if s.data[:2] == b"\x00\x05"]
    assert errors and errors[-1].startswith(b"\x00\x05\x00\x00transfer interrupted")


# -- as a command: python -m netsvc tftp ... --------------------------------------------------


def netsvc(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "netsvc", "tftp", *args], capture_output=True, timeout=timeout,
        cwd=cwd, stdin=subprocess.DEVNULL,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {"hello.bin": payload(300_000, 1), "text.txt": b"a\nb\r\nc\n" * 1000, "empty": b""}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    base = tmp_path_factory.mktemp("cli-netsvc")
    root = base / "root"
    root.mkdir()
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    running = TFTPServer(root, base / "twistd.log", "--writable", "--max-upload", "1000000")
    running.start()
    try:
        yield running.port, root
    finally:
        running.stop()


def test_cli_get_ok_is_silent_without_a_terminal(server: tuple[int, Path], tmp_path: Path) -> None:
    port, _root = server
    result = netsvc("get", f"127.0.0.1:{port}", "hello.bin", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert sha256((tmp_path / "hello.bin").read_bytes()) == sha256(FILES["hello.bin"])
    assert temp_files(tmp_path) == []


def test_cli_get_to_stdout(server: tuple[int, Path]) -> None:
    port, _ = server
    result = netsvc("get", "--windowsize", "8", f"127.0.0.1:{port}", "hello.bin", "-")
    assert result.returncode == 0 and result.stderr == b""
    assert sha256(result.stdout) == sha256(FILES["hello.bin"])


def test_cli_netascii_round_trip(server: tuple[int, Path], tmp_path: Path) -> None:
    port, root = server
    target = tmp_path / "t.txt"
    result = netsvc("get", "--mode", "netascii", f"127.0.0.1:{port}", "text.txt", str(target))
    assert result.returncode == 0 and target.read_bytes() == FILES["text.txt"]
    result = netsvc("put", "--mode", "netascii", f"127.0.0.1:{port}", str(target), "t-up.txt")
    assert result.returncode == 0 and (root / "t-up.txt").read_bytes() == FILES["text.txt"]


def test_cli_put_then_put_again_is_7(server: tuple[int, Path], tmp_path: Path) -> None:
    port, root = server
    source = tmp_path / "fresh.bin"
    source.write_bytes(payload(100_000, 7))
    result = netsvc("put", "-v", f"127.0.0.1:{port}", str(source))
    assert result.returncode == 0, result.stderr
    assert (root / "fresh.bin").read_bytes() == source.read_bytes()
    assert result.stderr.startswith(b"netsvc tftp: sent 100000 bytes in ")
    result = netsvc("put", f"127.0.0.1:{port}", str(source))
    assert result.returncode == ExitCode.EXISTS
    assert result.stderr == b"netsvc tftp: fresh.bin: File already exists (server error 6)\n"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["get", "{server}", "nothere", "{tmp}/x"], ExitCode.NOT_FOUND,
         "nothere: File not found (server error 1)"),
        (["get", "{server}", "../etc/passwd", "{tmp}/x"], ExitCode.ACCESS,
         "../etc/passwd: Illegal file name (server error 2)"),
        (["put", "{server}", "{tmp}/big", "big"], ExitCode.DISK_FULL,
         "big: file too large (server error 3)"),
        (["put", "{server}", "{tmp}/small", "../up"], ExitCode.ACCESS,
         "../up: Illegal file name (server error 2)"),
    ],
)
def test_cli_server_errors(
    server: tuple[int, Path], tmp_path: Path, argv: list[str], code: int, message: str
) -> None:
    port, _ = server
    (tmp_path / "big").write_bytes(b"b" * 1_500_000)  # above --max-upload
    (tmp_path / "small").write_bytes(b"s")
    (tmp_path / "x").write_bytes(b"keep me")
    filled = [a.format(server=f"127.0.0.1:{port}", tmp=tmp_path) for a in argv]
    result = netsvc(*filled)
    assert result.returncode == code
    assert result.stderr.decode() == f"netsvc tftp: {message}\n"
    assert (tmp_path / "x").read_bytes() == b"keep me" and temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["get"],
        ["get", "127.0.0.1"],
        ["get", "127.0.0.1:0", "f"],
        ["get", "[::1", "f"],
        ["get", "--blksize", "7", "h", "f"],
        ["get", "--blksize", "65465", "h", "f"],
        ["get", "--windowsize", "0", "h", "f"],
        ["get", "--timeout", "256", "h", "f"],
        ["get", "--mode", "mail", "h", "f"],
        ["get", "-4", "-6", "h", "f"],
        ["get", "-q", "-v", "h", "f"],
        ["put", "h"],
        ["put", "--no-clobber", "h", "f"],
        ["frobnicate"],
    ],
)
def test_cli_bad_usage_is_2(argv: list[str]) -> None:
    result = netsvc(*argv)
    assert result.returncode == ExitCode.USAGE and b"usage:" in result.stderr
    assert b"Traceback" not in result.stderr


def test_cli_unresolvable_host_is_5() -> None:
    result = netsvc("get", "no-such-host.invalid", "f", "-")
    assert result.returncode == ExitCode.TIMEOUT
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netsvc tftp: no-such-host.invalid: ")


def test_cli_silent_port_is_5(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # nobody else can answer on this port
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = netsvc("get", "--timeout", "1", f"127.0.0.1:{port}", "f", str(tmp_path / "f"))
    assert result.returncode == ExitCode.TIMEOUT and 4.5 < time.monotonic() - started < 20
    assert result.stderr.decode() == (
        f"netsvc tftp: f: no answer from the server (127.0.0.1 port {port})\n"
    )
    assert list(tmp_path.iterdir()) == []


def misbehaving_server(answer: Callable[[bytes], bytes]) -> tuple[int, Callable[[], None]]:
    """A UDP server on 127.0.0.1 that answers the first request with ``answer(request)``,
    from a new port, then stops. Returns its port and a function that waits for it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(20)

    def serve() -> None:
        with listener:
            try:
                request, client = listener.recvfrom(65536)
            except TimeoutError:
                return
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as transfer_socket:
                transfer_socket.bind(("127.0.0.1", 0))
                transfer_socket.sendto(answer(request), client)
                transfer_socket.settimeout(2)
                with contextlib.suppress(TimeoutError):
                    transfer_socket.recvfrom(65536)  # the client's ERROR

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], lambda: thread.join(30)


@pytest.mark.parametrize(
    ("answer", "options", "code", "message"),
    [
        (OACK([("blksize", "1468"), ("multicast", "1")]).encode(), [], ExitCode.PROTOCOL,
         "OACK grants an option that was not requested (local error 8)"),
        (encode_data(1, b"z" * 600), ["--no-options"], ExitCode.PROTOCOL,
         "DATA block larger than blksize 512 (local error 4)"),
        (b"\x00\x05\x00\x00internal trouble\x00", [], ExitCode.OTHER,
         "internal trouble (server error 0)"),
    ],
    ids=["unrequested-option", "oversized-data", "error-0"],
)
def test_cli_against_misbehaving_servers(
    tmp_path: Path, answer: bytes, options: list[str], code: int, message: str
) -> None:
    port, wait = misbehaving_server(lambda request: answer)
    result = netsvc("get", *options, f"127.0.0.1:{port}", "f", str(tmp_path / "f"))
    wait()
    assert result.returncode == code
    assert result.stderr.decode() == f"netsvc tftp: f: {message}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.interop
@pytest.mark.skipif(not os.path.exists("/opt/tftpd-hpa/usr/sbin/in.tftpd")
                    and not os.path.exists("/usr/sbin/in.tftpd"),
                    reason="tftpd-hpa is not installed (.ci/run installs it)")
def test_cli_against_tftpd_hpa(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.bin").write_bytes(FILES["hello.bin"])
    work = tmp_path / "work"
    work.mkdir()
    with foreground_server(tftpd_hpa_command(root), what="in.tftpd") as port:
        server_arg = f"127.0.0.1:{port}"
        result = netsvc("get", "-v", "--windowsize", "16", server_arg, "hello.bin", cwd=work)
        assert result.returncode == 0, result.stderr
        assert (work / "hello.bin").read_bytes() == FILES["hello.bin"]
        assert b"windowsize=1 tsize=300000 (granted: blksize, tsize)" in result.stderr
        result = netsvc("put", server_arg, str(work / "hello.bin"), "copy.bin")
        assert result.returncode == 0 and (root / "copy.bin").read_bytes() == FILES["hello.bin"]
        (work / "x").write_bytes(b"old")
        result = netsvc("get", server_arg, "missing", str(work / "x"))
        assert result.returncode == ExitCode.NOT_FOUND
        assert result.stderr == b"netsvc tftp: missing: File not found (server error 1)\n"
        assert (work / "x").read_bytes() == b"old" and temp_files(work) == []


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="no pseudo-terminals")
def test_cli_progress_line_on_a_terminal(server: tuple[int, Path], tmp_path: Path) -> None:
    port, root = server
    # Large enough to take several tenths of a second (about 50 MiB/s at blksize 512 here).
    (root / "large.bin").write_bytes(payload(20_000_000, 3))
    output = run_on_a_terminal(
        [sys.executable, "-m", "netsvc", "tftp", "get", "--blksize", "512",
         f"127.0.0.1:{port}", "large.bin", str(tmp_path / "large.bin")]
    )
    frames = output.split("\r")
    assert frames[-1].endswith("\n") and "100%" in frames[-1] and "in 0:" in frames[-1]
    assert "19.1 MiB/19.1 MiB" in frames[-1]
    assert any("ETA" in frame for frame in frames[:-1]), output
    assert len(frames) < 200  # about ten updates a second, never one per packet
    quiet = run_on_a_terminal(
        [sys.executable, "-m", "netsvc", "tftp", "get", "-q", f"127.0.0.1:{port}", "large.bin",
         str(tmp_path / "again.bin")]
    )
    assert quiet == ""


def run_on_a_terminal(command: list[str], timeout: float = 60) -> str:
    """Run ``command`` with its standard error on a pseudo-terminal; what it wrote there."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stderr=slave, stdout=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
    finally:
        os.close(master)
        process.wait(timeout=30)
    assert process.returncode == 0, b"".join(chunks)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.parametrize("flag", [False, True])
def test_fsync_flushes_the_download_and_its_directory_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: bool
) -> None:
    reactor, _, _ = fake_network({"f": payload(3000)})
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    argv = ["get", *(["--fsync"] if flag else []), "127.0.0.1", "f", str(tmp_path / "f")]
    code, _, err = run_cli(reactor, *argv)
    assert code == 0, err
    assert (tmp_path / "f").read_bytes() == payload(3000) and temp_files(tmp_path) == []
    assert len(synced) == (2 if flag else 0)  # the file, then its directory
