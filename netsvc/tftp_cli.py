"""``netsvc tftp get|put``: a TFTP client on the command line (documented in docs/tftp-client.rst).

.. code-block:: text

   netsvc tftp get [options] HOST[:PORT] REMOTE [LOCAL|-]
   netsvc tftp put [options] HOST[:PORT] LOCAL [REMOTE]

A download appears under its local name only once it is complete (a temporary file is
renamed into place); after a failure an existing file of that name is untouched. ``-``
writes the download to standard output. A progress line goes to standard error when it
is a terminal (not with ``--quiet``); otherwise only errors are printed, each in one line:
``netsvc tftp: NAME: what happened``.

Exit statuses (:class:`ExitCode`):

===  ==========================================================================
 0   success
 1   file not found (server ERROR 1, or the local file to upload is missing)
 2   bad usage (argparse's status: unknown option, bad value, bad HOST:PORT)
 3   access violation (server ERROR 2; local permission denied, not a regular file)
 4   disk full or allocation exceeded (server ERROR 3; local disk full; a download
     whose announced size exceeds the free space)
 5   timeout or unreachable (no answer, the server went silent, name not resolved)
 6   protocol error (ERROR 4 illegal operation, 5 unknown transfer ID, 8 option
     negotiation, from either side; an unexpected or malformed packet)
 7   file exists (server ERROR 6; local target exists with ``--no-clobber``)
 8   any other error (server ERROR 0 or 7, a local I/O error)
130  interrupted (Ctrl-C)
===  ==========================================================================
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO, TextIO

from netsvc.tftp.blocking import UDPChannel, run_transfer
from netsvc.tftp.clientcore import (
    TFTP_PORT,
    TFTPError,
    TransferResult,
    download_request,
    request_timer,
    resolve,
    upload_request,
)
from netsvc.tftp.files import (
    BackendError,
    FilesystemReader,
    StreamWriter,
    TempFileWriter,
    free_space,
    open_local_reader,
    open_local_writer_with,
)
from netsvc.tftp.options import (
    MAX_BLKSIZE,
    MAX_TIMEOUT,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    MIN_TIMEOUT,
    MIN_WINDOWSIZE,
    Negotiated,
)
from netsvc.tftp.packets import RRQ, WRQ, ErrorCode, Mode

__all__ = [
    "DEFAULT_BLKSIZE",
    "ExitCode",
    "ProgressLine",
    "add_parser",
    "exit_code_for",
    "format_progress",
    "parse_server",
    "transfer",
]

PROG = "netsvc tftp"
#: Requested unless ``--blksize`` says otherwise: a block that fits an Ethernet frame.
DEFAULT_BLKSIZE = 1468
#: Seconds without progress before giving up, unless ``--timeout`` sets 5 times its value.
DEFAULT_GIVE_UP_AFTER = 30.0


class ExitCode:
    """Process exit statuses of ``netsvc tftp`` (the table in the module docstring)."""

    OK = 0
    NOT_FOUND = 1
    USAGE = 2  # argparse's own status for bad arguments
    ACCESS = 3
    DISK_FULL = 4
    TIMEOUT = 5
    PROTOCOL = 6
    EXISTS = 7
    OTHER = 8
    INTERRUPTED = 130


_BY_TFTP_CODE: dict[int, int] = {
    ErrorCode.FILE_NOT_FOUND: ExitCode.NOT_FOUND,
    ErrorCode.ACCESS_VIOLATION: ExitCode.ACCESS,
    ErrorCode.DISK_FULL: ExitCode.DISK_FULL,
    ErrorCode.ILLEGAL_OPERATION: ExitCode.PROTOCOL,
    ErrorCode.UNKNOWN_TID: ExitCode.PROTOCOL,
    ErrorCode.FILE_EXISTS: ExitCode.EXISTS,
    ErrorCode.OPTION_NEGOTIATION: ExitCode.PROTOCOL,
}


def exit_code_for(error: BaseException) -> int:
    """The exit status for a failed transfer (:class:`TFTPError`) or local file error."""
    if isinstance(error, TFTPError):
        if error.timed_out:
            return ExitCode.TIMEOUT
        return _BY_TFTP_CODE.get(error.code, ExitCode.OTHER)
    if isinstance(error, BackendError):
        return _BY_TFTP_CODE.get(error.code, ExitCode.OTHER)
    return ExitCode.OTHER


# -- arguments -------------------------------------------------------------------------------


def parse_server(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT`` (a bare IPv6 address has no
    port) into ``(host, port)``; raises :class:`argparse.ArgumentTypeError`."""
    port = TFTP_PORT
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise argparse.ArgumentTypeError(f"bad address {text!r}: use [IPV6] or [IPV6]:PORT")
        try:
            literal = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is None or literal.version != 6:
            raise argparse.ArgumentTypeError(f"not an IPv6 address in brackets: {text!r}")
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"bad address {text!r}: use [IPV6]:PORT")
            port = _port_number(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port_number(port_text, text)
    else:
        host = text  # a name, an IPv4 address, or an IPv6 address without a port
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    return host, port


def _port_number(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {whole!r}: must be 1-65535")
    return int(text)


def _ranged(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}: {text}")
        return value

    parse.__name__ = f"integer {low}-{high}"
    return parse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``netsvc tftp get`` and ``netsvc tftp put`` on the top-level command line."""
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("transfer options")
    options.add_argument(
        "--blksize", type=_ranged(MIN_BLKSIZE, MAX_BLKSIZE), default=DEFAULT_BLKSIZE,
        help=f"block size to request ({MIN_BLKSIZE}-{MAX_BLKSIZE}; default {DEFAULT_BLKSIZE})",
    )
    options.add_argument(
        "--windowsize", type=_ranged(MIN_WINDOWSIZE, MAX_WINDOWSIZE), default=None,
        help="blocks per window to request (RFC 7440; default: not requested, i.e. 1)",
    )
    options.add_argument(
        "--timeout", type=_ranged(MIN_TIMEOUT, MAX_TIMEOUT), default=None,
        help="retransmission timeout in seconds to request, also our longest wait between "
        "retransmissions; gives up after 5 times this without progress (default: not "
        "requested, retransmit within 2 s, give up after 30 s)",
    )
    options.add_argument(
        "--mode", choices=["octet", "netascii"], default="octet",
        help="transfer mode (default octet; netascii converts line ends)",
    )
    options.add_argument(
        "--no-options", action="store_true",
        help="send a plain RFC 1350 request, without blksize/windowsize/timeout/tsize",
    )
    family = options.add_mutually_exclusive_group()
    family.add_argument(
        "-4", dest="family", action="store_const", const=socket.AF_INET, help="IPv4 only"
    )
    family.add_argument(
        "-6", dest="family", action="store_const", const=socket.AF_INET6, help="IPv6 only"
    )
    output = common.add_argument_group("output").add_mutually_exclusive_group()
    output.add_argument(
        "-q", "--quiet", action="store_true", help="no progress line, only errors"
    )
    output.add_argument(
        "-v", "--verbose", action="store_true",
        help="print the negotiated options, size, time, rate and retransmissions",
    )
    common.set_defaults(family=socket.AF_UNSPEC)

    tftp = subparsers.add_parser(
        "tftp",
        help="download or upload a file with TFTP",
        description="A TFTP client (RFC 1350 with the blksize, timeout, tsize and "
        "windowsize options). Exit statuses: 0 ok, 1 file not found, 2 bad usage, "
        "3 access violation, 4 disk full, 5 timeout/unreachable, 6 protocol error, "
        "7 file exists, 8 other error.",
    )
    actions = tftp.add_subparsers(title="actions", metavar="ACTION", required=True)
    get = actions.add_parser(
        "get", parents=[common], help="download REMOTE from the server",
        description="Download REMOTE into LOCAL (default: the last component of REMOTE; "
        "a directory: into it; -: standard output). LOCAL appears only once complete.",
    )
    get.add_argument("server", metavar="HOST[:PORT]", type=parse_server,
                     help="server name or address; [IPV6]:PORT for a port with IPv6")
    get.add_argument("remote", metavar="REMOTE", help="file name on the server")
    get.add_argument("local", metavar="LOCAL", nargs="?", help="local file, directory or -")
    get.add_argument(
        "--no-clobber", action="store_true", help="fail (status 7) if LOCAL already exists"
    )
    get.add_argument(
        "--fsync", action="store_true",
        help="flush LOCAL to disk before renaming it into place and exiting (so that it "
        "survives a power loss; without it, like curl and rsync, it is complete or absent "
        "for every program, but the disk catches up later)",
    )
    get.set_defaults(func=_run, action="get")
    put = actions.add_parser(
        "put", parents=[common], help="upload LOCAL to the server",
        description="Upload the regular file LOCAL as REMOTE (default: its file name).",
    )
    put.add_argument("server", metavar="HOST[:PORT]", type=parse_server,
                     help="server name or address; [IPV6]:PORT for a port with IPv6")
    put.add_argument("local", metavar="LOCAL", help="local file to send")
    put.add_argument("remote", metavar="REMOTE", nargs="?", help="file name on the server")
    put.set_defaults(func=_run, action="put", no_clobber=False, fsync=False)


# -- progress --------------------------------------------------------------------------------


def format_size(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``; bytes below 1 KiB as ``"999 B"``."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``3700`` → ``"1:01:40"``."""
    whole = int(max(seconds, 0) + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(
    label: str, done: int, total: int | None, rate: float | None, width: int = 80,
    *, elapsed: float | None = None,
) -> str:
    """One progress line of at most ``width`` characters.

    With a known ``total``: percentage, a bar when there is room, bytes, rate and ETA.
    Without: bytes and rate. ``elapsed`` (for the final line) replaces the ETA.
    """
    speed = f"{format_size(rate)}/s" if rate else "--/s"
    if elapsed is not None:
        tail = f"in {format_duration(elapsed)}"
    elif total is not None and rate:
        tail = f"ETA {format_duration(max(total - done, 0) / rate)}"
    else:
        tail = "ETA --:--" if total is not None else ""
    if total is not None:
        fraction = min(done / total, 1.0) if total else 1.0
        amounts = f"{format_size(done)}/{format_size(total)}"
        head = f"{fraction * 100:3.0f}%"
    else:
        fraction = None
        amounts = format_size(done)
        head = ""
    # Narrow terminals lose the least useful fields first: bytes, then rate, then ETA.
    fields = [(head, 0), (amounts, 3), (speed, 2), (tail, 1)]
    fields = [(text, rank) for text, rank in fields if text]
    info = "  ".join(text for text, _ in fields)
    while len(info) > width and len(fields) > 1:
        fields.remove(max(fields, key=lambda field: field[1]))
        info = "  ".join(text for text, _ in fields)
    room = width - len(info) - 2  # what is left for the name and the bar
    if room < 4:
        return info[:width]
    bar_size = min(room - len(label) - 2, 42) if fraction is not None else 0
    if bar_size >= 12:
        filled = int((bar_size - 2) * fraction) if fraction is not None else 0
        bar = "[" + "#" * filled + " " * (bar_size - 2 - filled) + "]"
        return f"{label}  {bar}  {info}"
    name = label if len(label) <= room else "…" + label[len(label) - room + 1 :]
    return f"{name}  {info}"


class ProgressLine:
    """A progress line on a terminal, redrawn in place by :meth:`update` (call it ~10 times
    a second); the rate is measured over the last few seconds."""

    WINDOW = 3.0  # seconds of samples behind the rate

    def __init__(
        self, stream: TextIO, label: str, count: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.count = count
        self.clock = clock
        self.total: int | None = None
        self._started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self._started, 0)])
        self._shown = 0

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        # The last column would wrap on some terminals; 0 means the size is unknown.
        return max(columns - 1, 20) if columns > 0 else 79

    def rate(self) -> float | None:
        now = self.clock()
        done = self.count()
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= self.WINDOW:
            samples.popleft()
        then, before = samples[0]
        return (done - before) / (now - then) if now > then else None

    def update(self) -> None:
        rate = self.rate()
        self._draw(format_progress(self.label, self.count(), self.total, rate, self._width()))

    def finish(self, keep: bool) -> None:
        """Leave the final state (``keep``) with its average rate, or erase the line."""
        if keep:
            elapsed = self.clock() - self._started
            done = self.count()
            rate = done / elapsed if elapsed > 0 else None
            total = self.total if self.total is not None else done
            line = format_progress(self.label, done, total, rate, self._width(), elapsed=elapsed)
            self._draw(line)
            self.stream.write("\n")
        else:
            self._draw("")
            self.stream.write("\r")
        self.stream.flush()

    def _draw(self, line: str) -> None:
        padding = " " * max(self._shown - len(line), 0)
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._shown = len(line)


class _CountingWriter:
    """Counts the bytes going to a download's writer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        self.count += len(data)

    def commit_now(self) -> None:
        self.inner.commit_now()

    def abort(self) -> None:
        self.inner.abort()


# -- running a transfer ----------------------------------------------------------------------


def _default_local_name(remote: str) -> str:
    name = remote.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return "" if name in (".", "..") else name


def _say(stderr: TextIO, message: str) -> None:
    stderr.write(f"{PROG}: {message}\n")
    stderr.flush()


def _resolve(host: str, port: int, family: int) -> tuple[str, int]:
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            host.split("%", 1)[0]
        )
    except ValueError:
        literal = None
    if literal is not None and family == socket.AF_INET and literal.version == 6:
        raise _UsageError(f"-4 given, but {host} is an IPv6 address")
    return resolve(host, port, family)


class _UsageError(Exception):
    pass


def transfer(
    args: argparse.Namespace,
    *,
    stdout: BinaryIO | None = None,
    stderr: TextIO | None = None,
    interactive: bool | None = None,
    open_channel: Callable[[tuple[str, int]], Any] = UDPChannel,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the ``get`` or ``put`` that ``args`` describes; the exit status (errors are
    printed to ``stderr`` in one line, never raised).

    ``stdout`` receives a download to ``-``; ``interactive`` (default: ``stderr`` is a
    terminal and not ``--quiet``) shows the progress line. ``open_channel(address)``
    gives the :class:`~netsvc.tftp.blocking.Channel` to the server (tests pass one on a
    fake network, with its ``clock``).
    """
    err = stderr if stderr is not None else sys.stderr
    if interactive is None:
        interactive = not args.quiet and err.isatty()
    command = _Transfer(args, stdout, err, interactive, clock)
    try:
        return command.run(open_channel)
    except KeyboardInterrupt:
        command.interrupted()
        return ExitCode.INTERRUPTED
    except Exception as error:  # a bug: still one line, with the traceback under --verbose
        command.discard()
        if args.verbose:
            traceback.print_exc(file=err)
        _say(err, f"internal error: {type(error).__name__}: {error}")
        return ExitCode.OTHER


class _Transfer:
    """One command-line transfer: open the local side, run it, report, clean up."""

    def __init__(
        self,
        args: argparse.Namespace,
        stdout: BinaryIO | None,
        stderr: TextIO,
        interactive: bool,
        clock: Callable[[], float],
    ) -> None:
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.interactive = interactive
        self.clock = clock
        self.storage: _CountingWriter | FilesystemReader | None = None
        self.progress: ProgressLine | None = None
        self.moved = 0  # bytes so far, as the transfer last reported them
        self.address: tuple[str, int] = args.server
        self.remote = ""
        self.local = ""
        self.label = ""
        self.max_size: int | None = None

    def run(self, open_channel: Callable[[tuple[str, int]], Any]) -> int:
        args = self.args
        host, port = args.server
        is_get = args.action == "get"
        try:
            self.address = _resolve(host, port, args.family)
        except _UsageError as error:
            _say(self.stderr, str(error))
            return ExitCode.USAGE
        except (OSError, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            _say(self.stderr, f"{host}: {reason}")
            return ExitCode.TIMEOUT
        code = self._open_download() if is_get else self._open_upload()
        if code is not None:
            return code
        try:
            channel = open_channel(self.address)
        except OSError as error:
            self.discard()
            _say(self.stderr, f"cannot open a UDP port: {error.strerror}")
            return ExitCode.TIMEOUT
        try:
            return self._exchange(channel)
        finally:
            channel.close()

    def _exchange(self, channel: Any) -> int:
        args = self.args
        mode = Mode(args.mode)
        asked: dict[str, Any] = {
            "blksize": args.blksize,
            "windowsize": args.windowsize,
            "timeout": args.timeout,
            "tsize": True,
            "options": not args.no_options,
        }
        if isinstance(self.storage, _CountingWriter):
            request: RRQ | WRQ = download_request(self.remote, mode, **asked)
        else:
            assert self.storage is not None
            request = upload_request(self.remote, mode, self.storage.size, **asked)
        if self.interactive:
            self.progress = ProgressLine(self.stderr, self.label, self._count, self.clock)
            if not isinstance(self.storage, _CountingWriter):
                self.progress.total = self.storage.size
        try:
            result = run_transfer(
                channel, self.address, request, self.storage,
                timer=request_timer(args.timeout),
                give_up_after=5.0 * args.timeout if args.timeout else DEFAULT_GIVE_UP_AFTER,
                max_size=self.max_size, clock=self.clock, on_negotiated=self._negotiated,
                progress=self._progressed if self.progress is not None else None,
            )
        except TFTPError as error:
            self._stop_progress(keep=False)
            _say(self.stderr, self._describe(error))
            return exit_code_for(error)
        self.moved = result.bytes
        self._stop_progress(keep=True)
        if args.verbose:
            self._report(result)
        return ExitCode.OK

    # -- opening the local side --

    def _open_download(self) -> int | None:
        args = self.args
        self.remote = args.remote
        local = args.local
        if local is None or (local != "-" and os.path.isdir(local)):
            name = _default_local_name(args.remote)
            if not name:
                _say(self.stderr, f"{args.remote}: give a LOCAL file name")
                return ExitCode.USAGE
            local = name if local is None else os.path.join(local, name)
        self.local = local
        if local == "-":
            stream = self.stdout if self.stdout is not None else sys.stdout.buffer
            self.storage = _CountingWriter(StreamWriter(stream))
            self.label = self.remote
            return None
        self.label = local
        try:
            writer = open_local_writer_with(
                TempFileWriter, local, overwrite=not args.no_clobber, durable=args.fsync
            )
        except BackendError as error:
            _say(self.stderr, f"{local}: {error.message}")
            return exit_code_for(error)
        self.storage = _CountingWriter(writer)
        self.max_size = free_space(local)
        return None

    def _open_upload(self) -> int | None:
        args = self.args
        self.local = args.local
        self.label = args.local
        remote = args.remote if args.remote is not None else os.path.basename(args.local)
        if not remote:
            _say(self.stderr, f"{args.local}: give a REMOTE file name")
            return ExitCode.USAGE
        self.remote = remote
        try:
            self.storage = open_local_reader(args.local)
        except BackendError as error:
            _say(self.stderr, f"{args.local}: {error.message}")
            return exit_code_for(error)
        return None

    # -- progress --

    def _count(self) -> int:
        return self.moved

    def _progressed(self, moved: int) -> None:
        self.moved = moved
        if self.progress is not None:
            self.progress.update()

    def _negotiated(self, negotiated: Negotiated) -> None:
        if self.progress is not None and self.args.action == "get":
            self.progress.total = negotiated.tsize

    def _stop_progress(self, keep: bool) -> None:
        if self.progress is not None:
            self.progress.finish(keep)
            self.progress = None

    # -- outcome --

    def _describe(self, error: TFTPError) -> str:
        host, port = self.address
        if error.timed_out:
            return f"{self.remote}: {error.message} ({host} port {port})"
        if (
            isinstance(self.storage, _CountingWriter)
            and not error.remote
            and error.code == ErrorCode.DISK_FULL
            and self.max_size is not None
            and self.storage.count == 0  # refused for its announced size, before any data
        ):
            where = os.path.dirname(os.path.abspath(self.local)) or "."
            return f"{self.remote}: {error}; {format_size(self.max_size)} free in {where}"
        return f"{self.remote}: {error}"

    def _report(self, result: TransferResult) -> None:
        verb = "received" if self.args.action == "get" else "sent"
        rate = result.bytes / result.duration if result.duration > 0 else None
        speed = f"{format_size(rate)}/s" if rate else "instant"
        peer_host, peer_port = result.server
        negotiated = result.options
        values = f"blksize={negotiated.blksize} windowsize={negotiated.windowsize}"
        if negotiated.timeout is not None:
            values += f" timeout={negotiated.timeout}"
        if negotiated.tsize is not None:
            values += f" tsize={negotiated.tsize}"
        granted = ", ".join(negotiated.granted) if negotiated.granted else "none"
        direction = "from" if self.args.action == "get" else "to"
        _say(
            self.stderr,
            f"{verb} {result.bytes} bytes in {result.duration:.3f} s ({speed}) "
            f"{direction} {peer_host} port {peer_port}",
        )
        _say(self.stderr, f"options: {values} (granted: {granted})")
        _say(self.stderr, f"retransmits: {result.retransmits}")

    # -- interruption --

    def discard(self) -> None:
        """Let go of the local side (no temporary file left behind)."""
        storage = self.storage
        if isinstance(storage, _CountingWriter):
            storage.abort()
        elif storage is not None:
            storage.close()

    def interrupted(self) -> None:
        self._stop_progress(keep=False)
        self.discard()
        _say(self.stderr, f"{self.remote}: interrupted")


def _terminate(_signal: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a transfer as Ctrl-C does: cleaned up


def _run(args: argparse.Namespace) -> int:
    """Entry point of ``netsvc tftp get|put``."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return transfer(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
