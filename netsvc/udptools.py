"""``netsvc udp send`` and ``netsvc udp listen``: datagrams from the command line.

The seed's UDP examples as tools: ``send`` encodes a message (UTF-8 by default,
``--encoding gb2312`` or any Python codec, or raw bytes with ``--hex``), sends it and, with
``--wait``, prints the replies with their sender; ``listen`` binds a port and prints each
datagram as it arrives, one flushed line per datagram, optionally answering with a fixed
text or an echo. Both speak IPv4 and IPv6.

Replies from ``listen`` follow the echo service's guards (no answer to broadcast or
multicast sources, to port 0 or to the ports of other reflecting services) and a
per-source rate, so a listener left running is no reflector for spoofed traffic.
"""

from __future__ import annotations

import argparse
import codecs
import ipaddress
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TextIO

from netsvc.addr import plain_host
from netsvc.echo import REFLECTOR_PORTS, is_unanswerable_source
from netsvc.ratelimit import PerKeyRateLimiter

__all__ = [
    "ExitCode",
    "add_parser",
    "decode_payload",
    "encode_message",
    "format_datagram",
    "main",
    "printable",
]

MAX_DATAGRAM = 65535


class ExitCode:
    """Process exit statuses of ``netsvc udp``."""

    OK = 0
    NO_REPLY = 1  # send --wait: nothing came back in time
    USAGE = 2
    NETWORK = 3  # name not resolved, cannot bind, send refused


class MessageError(ValueError):
    """A message that cannot be turned into bytes (bad hex, unencodable character)."""


def check_encoding(name: str) -> str:
    """The canonical name of a text codec; ``ValueError`` if Python has none."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown encoding {name!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{name!r} is not a text encoding")
    return info.name


def encode_message(message: str, encoding: str = "utf-8", *, hex_input: bool = False) -> bytes:
    """The bytes to send: ``message`` encoded, or parsed as hex (spaces and ``:`` allowed)."""
    if hex_input:
        digits = "".join(message.replace(":", " ").replace("0x", " ").split())
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise MessageError(f"{message!r} is not hexadecimal bytes") from None
    try:
        return message.encode(encoding)
    except UnicodeEncodeError as error:
        bad = error.object[error.start : error.end]
        raise MessageError(
            f"cannot encode {bad!r} (position {error.start}) in {encoding}"
        ) from None


def printable(text: str) -> str:
    """``text`` on one line: control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def decode_payload(data: bytes, encoding: str = "utf-8", *, as_hex: bool = False) -> str:
    """How a datagram is shown: decoded (undecodable bytes as ``\\xNN``), or hex."""
    if as_hex:
        return data.hex(" ")
    return printable(data.decode(encoding, errors="backslashreplace"))


def format_address(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``host:port``, IPv6 in brackets as in URLs (``[::1]:69``); IPv4-mapped hosts as
    plain IPv4 (see :func:`plain_host`)."""
    host, port = plain_host(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_datagram(
    data: bytes,
    addr: tuple[str, int],
    encoding: str = "utf-8",
    *,
    as_hex: bool = False,
    stamp: float | None = None,
) -> str:
    """One output line: time, sender, size and the decoded text."""
    prefix = ""
    if stamp is not None:
        prefix = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d} "
    size = f"{len(data)} byte{'s' if len(data) != 1 else ''}"
    return f"{prefix}{format_address(addr)} {size}: {decode_payload(data, encoding, as_hex=as_hex)}"


# --------------------------------------------------------------------------- send


def _resolve(host: str, port: int, family: int) -> tuple[int, tuple[str, int]]:
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    af, _, _, _, address = infos[0]
    return af, (str(address[0]), int(address[1]))


def _is_broadcast_destination(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return isinstance(address, ipaddress.IPv4Address) and (
        address == ipaddress.IPv4Address("255.255.255.255") or str(address).endswith(".255")
    )


def send(
    host: str,
    port: int,
    payload: bytes,
    *,
    count: int = 1,
    interval: float = 1.0,
    wait: float = 0.0,
    family: int = socket.AF_UNSPEC,
    broadcast: bool = False,
    source_port: int = 0,
    on_reply: Callable[[bytes, tuple[str, int]], None] | None = None,
) -> int:
    """Send ``payload`` ``count`` times; with ``wait``, collect replies until ``wait``
    seconds after the last send. Returns the number of replies. Raises ``OSError``."""
    af, address = _resolve(host, port, family)
    replies = 0
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if source_port:
            sock.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", source_port))
        for sequence in range(count):
            sock.sendto(payload, address)
            last = time.monotonic()
            deadline = last + (interval if sequence + 1 < count else wait)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (wait <= 0 and sequence + 1 == count):
                    break
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    break
                try:
                    data, sender = sock.recvfrom(MAX_DATAGRAM)
                except ConnectionRefusedError:
                    continue  # ICMP port unreachable from an earlier send
                replies += 1
                if on_reply is not None:
                    on_reply(data, sender)
    return replies


def _read_message(args: argparse.Namespace) -> str:
    if args.message is None or args.message == "-":
        return str(sys.stdin.read())
    return str(args.message)


def _run_send(args: argparse.Namespace) -> int:
    try:
        payload = encode_message(_read_message(args), args.encoding, hex_input=args.hex)
    except MessageError as error:
        print(f"netsvc udp send: {error}", file=sys.stderr)
        return ExitCode.USAGE
    limit = 65527 if args.family == socket.AF_INET6 else 65507
    if len(payload) > limit:
        print(
            f"netsvc udp send: {len(payload)} bytes exceed one datagram ({limit})", file=sys.stderr
        )
        return ExitCode.USAGE

    def on_reply(data: bytes, sender: tuple[str, int]) -> None:
        line = format_datagram(data, sender, args.reply_encoding or args.encoding, as_hex=args.hex)
        print(f"reply from {line}", flush=True)

    try:
        replies = send(
            args.host,
            args.port,
            payload,
            count=args.count,
            interval=args.interval,
            wait=args.wait,
            family=args.family,
            broadcast=args.broadcast or _is_broadcast_destination(args.host),
            source_port=args.source_port,
            on_reply=on_reply,
        )
    except PermissionError as error:
        hint = " (sending to a broadcast address needs --broadcast)" if not args.broadcast else ""
        print(
            f"netsvc udp send: {args.host} port {args.port}: {error.strerror}{hint}",
            file=sys.stderr,
        )
        return ExitCode.NETWORK
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        print(f"netsvc udp send: {args.host} port {args.port}: {reason}", file=sys.stderr)
        return ExitCode.NETWORK
    if not args.quiet:
        print(
            f"sent {args.count} datagram{'s' if args.count != 1 else ''} of {len(payload)}"
            f" bytes to {args.host} port {args.port}",
            file=sys.stderr,
        )
    if args.wait > 0 and replies == 0:
        print(f"netsvc udp send: no reply within {args.wait:g} s", file=sys.stderr)
        return ExitCode.NO_REPLY
    return ExitCode.OK


# --------------------------------------------------------------------------- listen


def _bind_listener(interface: str, port: int, reuse: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and interface == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((interface or "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """The ``listen`` loop, separated from argument parsing for tests and embedding."""

    def __init__(
        self,
        sock: socket.socket,
        out: TextIO,
        *,
        encoding: str = "utf-8",
        as_hex: bool = False,
        reply: bytes | None = None,
        echo: bool = False,
        reply_rate: float = 10.0,
        timestamps: bool = True,
    ) -> None:
        self.sock = sock
        self.out = out
        self.encoding = encoding
        self.as_hex = as_hex
        self.reply = reply
        self.echo = echo
        self.timestamps = timestamps
        self.limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(
            reply_rate, max(1.0, reply_rate), time.monotonic, 4096
        )
        self.received = 0
        self.bytes = 0
        self.replied = 0
        self.not_answered = 0
        #: True while blocked in ``recvfrom``: only then may an interrupt cut in.
        self.waiting = False
        self.stop_requested = False

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: stop now if waiting, else after the datagram in hand."""
        if self.waiting:
            raise KeyboardInterrupt
        self.stop_requested = True

    def handle(self, data: bytes, sender: tuple[str, int]) -> None:
        self.received += 1
        self.bytes += len(data)
        stamp = time.time() if self.timestamps else None
        line = format_datagram(data, sender, self.encoding, as_hex=self.as_hex, stamp=stamp)
        self.out.write(line + "\n")
        self.out.flush()
        answer = data if self.echo else self.reply
        if answer is None:
            return
        host, port = sender[0], sender[1]
        if port in REFLECTOR_PORTS or is_unanswerable_source(host) or not self.limiter.allow(host):
            self.not_answered += 1
            return
        try:
            self.sock.sendto(answer, sender)
            self.replied += 1
        except OSError:
            self.not_answered += 1

    def run(self, count: int | None = None) -> None:
        """Receive and handle datagrams until ``count`` or an interrupt (returns then)."""
        try:
            while not self.stop_requested and (count is None or self.received < count):
                self.waiting = True
                try:
                    data, sender = self.sock.recvfrom(MAX_DATAGRAM)
                finally:
                    self.waiting = False
                self.handle(data, sender)
        except KeyboardInterrupt:
            pass


def _run_listen(args: argparse.Namespace) -> int:
    reply = None
    if args.reply is not None:
        try:
            reply = encode_message(args.reply, args.encoding, hex_input=args.hex)
        except MessageError as error:
            print(f"netsvc udp listen: --reply: {error}", file=sys.stderr)
            return ExitCode.USAGE
    try:
        sock = _bind_listener(args.interface, args.port, args.reuse)
    except OSError as error:
        where = args.interface or "all IPv4 interfaces"
        print(
            f"netsvc udp listen: cannot listen on {where} port {args.port}: "
            f"{error.strerror or error}",
            file=sys.stderr,
        )
        return ExitCode.NETWORK
    listener = Listener(
        sock,
        sys.stdout,
        encoding=args.encoding,
        as_hex=args.hex,
        reply=reply,
        echo=args.echo,
        reply_rate=args.reply_rate,
        timestamps=not args.no_time,
    )
    previous = {
        signum: signal.signal(signum, listener.interrupt)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    host, port = sock.getsockname()[:2]
    print(
        f"listening on {format_address((host, port))} (UDP); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    try:
        listener.run(args.count)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    summary = f"received {listener.received} datagrams ({listener.bytes} bytes)"
    if reply is not None or args.echo:
        summary += f", answered {listener.replied}, not answered {listener.not_answered}"
    print(summary, file=sys.stderr, flush=True)
    return ExitCode.OK


# --------------------------------------------------------------------------- parser


def _encoding(text: str) -> str:
    try:
        return check_encoding(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``send`` and ``listen`` (below ``netsvc udp``, or standalone)."""
    send_parser = commands.add_parser(
        "send",
        help="send a datagram and print the replies",
        description="Send MESSAGE (or standard input) to HOST PORT over UDP.",
    )
    send_parser.add_argument("host", help="name or IPv4/IPv6 address")
    send_parser.add_argument("port", type=_port)
    send_parser.add_argument("message", nargs="?", help="text to send (- or none: stdin)")
    send_parser.add_argument(
        "-e",
        "--encoding",
        type=_encoding,
        default="utf-8",
        help="text encoding, e.g. gb2312 (default utf-8)",
    )
    send_parser.add_argument(
        "--reply-encoding",
        type=_encoding,
        help="decode replies with this encoding (default: --encoding)",
    )
    send_parser.add_argument(
        "-x",
        "--hex",
        action="store_true",
        help="MESSAGE is hex bytes (68656c6c6f); replies shown in hex",
    )
    send_parser.add_argument(
        "-w",
        "--wait",
        type=_non_negative,
        default=0.0,
        help="seconds to wait for replies after the last send (0)",
    )
    send_parser.add_argument(
        "-n", "--count", type=_positive_int, default=1, help="datagrams to send (1)"
    )
    send_parser.add_argument(
        "-i", "--interval", type=_non_negative, default=1.0, help="seconds between datagrams (1)"
    )
    send_parser.add_argument(
        "-b", "--broadcast", action="store_true", help="allow broadcast destinations (SO_BROADCAST)"
    )
    send_parser.add_argument(
        "--source-port", type=_port, default=0, help="send from this port (default: any)"
    )
    send_parser.add_argument("-q", "--quiet", action="store_true", help="no summary")
    family = send_parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET)
    family.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6)
    send_parser.set_defaults(func=_run_send, family=socket.AF_UNSPEC)

    listen_parser = commands.add_parser(
        "listen",
        help="print datagrams as they arrive",
        description="Bind PORT and print each datagram: time, sender, size, text.",
    )
    listen_parser.add_argument("port", type=_port, help="UDP port (0: any free one)")
    listen_parser.add_argument(
        "-I",
        "--interface",
        default="",
        metavar="ADDR",
        help="address to bind (default: all IPv4; :: for IPv6 and IPv4)",
    )
    listen_parser.add_argument(
        "-e",
        "--encoding",
        type=_encoding,
        default="utf-8",
        help="text encoding, e.g. gb2312 (default utf-8)",
    )
    listen_parser.add_argument("-x", "--hex", action="store_true", help="show bytes in hex")
    answer = listen_parser.add_mutually_exclusive_group()
    answer.add_argument("-r", "--reply", metavar="TEXT", help="answer each datagram with TEXT")
    answer.add_argument("--echo", action="store_true", help="send each datagram back")
    listen_parser.add_argument(
        "--reply-rate", type=float, default=10.0, help="replies per second per source address (10)"
    )
    listen_parser.add_argument(
        "-n", "--count", type=_positive_int, help="exit after this many datagrams"
    )
    listen_parser.add_argument(
        "--reuse", action="store_true", help="share the port with other listeners (SO_REUSEPORT)"
    )
    listen_parser.add_argument("--no-time", action="store_true", help="no time stamps")
    listen_parser.set_defaults(func=_run_listen)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``netsvc udp send|listen`` on the top-level command line."""
    parser = subparsers.add_parser(
        "udp",
        help="send and receive UDP datagrams (any encoding, hex, IPv6)",
        description="Send datagrams and print replies, or listen and print datagrams.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m netsvc.udptools send|listen ...``: the same as ``netsvc udp ...``."""
    parser = argparse.ArgumentParser(prog="netsvc udp")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_commands(commands)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
