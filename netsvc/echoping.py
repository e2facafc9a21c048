"""``netsvc echoping``: measure round trips to an RFC 862 echo server, like Debian's echoping.

Each message carries fresh random bytes, so a late reply to an earlier message is
recognised as such (and ignored) instead of being taken for a corrupted echo.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import attrs

__all__ = ["EchoPingResult", "ExitCode", "add_parser", "echoping"]


class ExitCode:
    """Process exit statuses of ``netsvc echoping`` (documented in docs/echoping.rst)."""

    OK = 0
    LOST = 1  # at least one message got no reply in time
    USAGE = 2  # argparse's own status for bad arguments
    UNREACHABLE = 3  # name not resolved, connection refused, network unreachable
    MISMATCH = 4  # a reply differed from what was sent


@attrs.define
class EchoPingResult:
    """What a run measured; ``rtts`` holds one entry per answered message, in seconds."""

    sent: int = 0
    rtts: list[float] = attrs.Factory(list)
    lost: int = 0
    mismatched: int = 0

    @property
    def exit_code(self) -> int:
        if self.mismatched:
            return ExitCode.MISMATCH
        if self.lost:
            return ExitCode.LOST
        return ExitCode.OK


class EchoMismatchError(Exception):
    """The server answered with bytes that were never sent."""


def _payloads(size: int) -> Iterator[bytes]:
    while True:
        yield os.urandom(size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _tcp_round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    if _recv_exactly(sock, len(payload)) != payload:
        raise EchoMismatchError


def _udp_round_trip(
    sock: socket.socket, payload: bytes, earlier: set[bytes], deadline: float
) -> None:
    sock.send(payload)
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.0))
        reply = sock.recv(65536)
        if reply == payload:
            return
        if reply not in earlier:
            raise EchoMismatchError


def echoping(
    host: str,
    port: int = 7,
    *,
    udp: bool = False,
    count: int = 1,
    size: int = 256,
    timeout: float = 10.0,
    interval: float = 1.0,
    family: int = socket.AF_UNSPEC,
    report: Callable[[int, float | None, str], None] | None = None,
) -> EchoPingResult:
    """Send ``count`` messages of ``size`` bytes and time each echo.

    ``report(seq, seconds_or_None, note)`` is called after each message. Raises
    ``OSError`` when the server cannot be reached at all.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    infos = socket.getaddrinfo(host, port, family, kind)
    af, _, proto, _, address = infos[0]
    result = EchoPingResult()
    earlier: set[bytes] = set()
    with socket.socket(af, kind, proto) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        if not udp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payloads = _payloads(size)
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                time.sleep(interval)
            payload = next(payloads)
            result.sent += 1
            start = time.perf_counter()
            try:
                if udp:
                    _udp_round_trip(sock, payload, earlier, time.monotonic() + timeout)
                else:
                    _tcp_round_trip(sock, payload)
            except TimeoutError:
                result.lost += 1
                earlier.add(payload)
                if report:
                    report(seq, None, "timeout")
                if not udp:
                    break  # the byte stream is out of step: later replies mean nothing
                continue
            except EchoMismatchError:
                result.mismatched += 1
                if report:
                    report(seq, None, "reply differs from what was sent")
                if not udp:
                    break
                continue
            elapsed = time.perf_counter() - start
            result.rtts.append(elapsed)
            earlier.add(payload)
            if report:
                report(seq, elapsed, "")
    result.lost += count - result.sent  # messages never sent after a TCP failure
    return result


def _print_summary(result: EchoPingResult, out: TextIO) -> None:
    answered = len(result.rtts)
    total = answered + result.lost + result.mismatched
    lost_pct = 100.0 * (total - answered) / max(total, 1)
    print(
        f"--- {answered} of {total} messages echoed, {lost_pct:.1f}% lost"
        + (f", {result.mismatched} mismatched" if result.mismatched else ""),
        file=out,
    )
    if answered:
        ms = [t * 1000 for t in result.rtts]
        print(
            f"rtt min/avg/median/max = {min(ms):.3f}/{statistics.fmean(ms):.3f}/"
            f"{statistics.median(ms):.3f}/{max(ms):.3f} ms",
            file=out,
        )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``netsvc echoping`` on the top-level command line."""
    parser = subparsers.add_parser(
        "echoping",
        help="time round trips to an echo server (TCP or UDP)",
        description="Send messages to an RFC 862 echo server, check each echo byte for byte "
        "and print round-trip times with a min/avg/median/max summary.",
    )
    parser.add_argument("host", help="echo server name or address")
    parser.add_argument("-p", "--port", type=int, default=7, help="port (default: 7)")
    parser.add_argument("-u", "--udp", action="store_true", help="use UDP instead of TCP")
    parser.add_argument("-n", "--count", type=_positive_int, default=1, help="messages (1)")
    parser.add_argument(
        "-s", "--size", type=_size, default=256, help="bytes per message (256; UDP: 0-65507)"
    )
    parser.add_argument(
        "-t", "--timeout", type=_positive_float, default=10.0, help="seconds to wait (10)"
    )
    parser.add_argument(
        "-w", "--wait", type=float, default=1.0, help="seconds between messages (1)"
    )
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET)
    family.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6)
    parser.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    parser.set_defaults(func=_run, family=socket.AF_UNSPEC)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 64 * 1024 * 1024:
        raise argparse.ArgumentTypeError(f"size out of range: {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    if args.udp and args.size > 65507:
        print("netsvc echoping: a UDP message holds at most 65507 bytes", file=sys.stderr)
        return ExitCode.USAGE

    def report(seq: int, seconds: float | None, note: str) -> None:
        if args.quiet:
            return
        if seconds is None:
            print(f"seq={seq} {note}", flush=True)
        else:
            print(f"seq={seq} bytes={args.size} time={seconds * 1000:.3f} ms", flush=True)

    try:
        result = echoping(
            args.host,
            args.port,
            udp=args.udp,
            count=args.count,
            size=args.size,
            timeout=args.timeout,
            interval=args.wait,
            family=args.family,
            report=report,
        )
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        proto = "UDP" if args.udp else "TCP"
        print(f"netsvc echoping: {args.host} port {args.port}/{proto}: {reason}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    _print_summary(result, sys.stdout)
    return result.exit_code
