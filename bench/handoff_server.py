"""A measuring instrument, not a server: tftpd-hpa's architecture in a few lines of Python.

It answers the question the 50-client rows of ``bench/tftp_bench.py`` raise: how close can
*any* CPython server come to tftpd-hpa there? tftpd-hpa runs each transfer in a process of
its own, which sleeps in ``recv`` on its own socket; the client's ACK wakes exactly that
process, on the client's CPU, and it answers before the client has gone to sleep. This
script does the same with the least Python per block: the listener forks per read request
and the child serves the file in lock-step on a socket connected to the client.

``--loop bare``: the cheapest loop (pack a header, send, wait for the matching ACK).
``--loop engine``: the child runs netsvc's own child loop instead
(:func:`netsvc.tftp.downloader.drive_download`: the engine's adaptive timer,
retransmissions and rollover, a blocking ``recv`` that times out at the engine's
deadline), without netsvc's server around it.

No guards of any kind (no path checks, limits, logging, windowsize, tsize or netascii;
only the blksize option): never point it at anything but a benchmark's temp directory.
Used as::

    .venv/bin/python bench/tftp_bench.py --rows concurrent --runs 5 \\
      --servers hpa,pytftp,netsvc,bare,engine \\
      --server 'bare={python} bench/handoff_server.py --loop bare {host} {port} {root}' \\
      --server 'engine={python} bench/handoff_server.py --loop engine {host} {port} {root}'
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import signal
import socket
import struct
from collections.abc import Callable

from netsvc.tftp.downloader import DownloadJob, SenderSettings, drive_download

_ACK = b"\0\4"


def _parse_request(request: bytes) -> tuple[str, int, bool] | None:
    """(file name, blksize, whether blksize was asked) of an RRQ, or ``None``."""
    if request[:2] != b"\0\1":
        return None
    fields = request[2:].split(b"\0")
    if len(fields) < 3:
        return None
    options = {k.lower(): v for k, v in zip(fields[2:-1:2], fields[3:-1:2], strict=False)}
    asked = b"blksize" in options
    blksize = min(max(int(options[b"blksize"]), 8), 65464) if asked else 512
    return os.path.basename(fields[0].decode()), blksize, asked


def _wait_for(sock: socket.socket, acceptable: Callable[[bytes], bool], tries: int = 5) -> bool:
    for _ in range(tries):
        try:
            if acceptable(sock.recv(1024)):
                return True
        except OSError:
            return False  # timed out (SO_RCVTIMEO) or the client is gone
    return False


def bare_loop(sock: socket.socket, data: bytes, blksize: int) -> None:
    """Lock-step without retransmissions: each block waits (1 s at most) for its ACK."""
    pack = struct.pack
    block, offset = 1, 0
    while True:
        chunk = data[offset : offset + blksize]
        header = pack("!HH", 3, block & 0xFFFF)
        sock.send(header + chunk)
        expected = _ACK + header[2:]
        if not _wait_for(sock, expected.__eq__):
            return
        if len(chunk) < blksize:
            return
        block += 1
        offset += blksize


def engine_loop(sock: socket.socket, data: bytes, blksize: int) -> None:
    """netsvc's own child loop (:func:`~netsvc.tftp.downloader.drive_download`: its engine
    and timers), without the server around it. The OACK was sent already, so the engine
    starts at block 1. Never polls awake, as netsvc's children do not with company."""
    settings = SenderSettings(
        blksize=blksize, windowsize=1, preamble=None, initial_rto=1.0, min_rto=0.005,
        max_rto=2.0, give_up_after=30.0, first_contact_retries=4,
    )
    job = DownloadJob(settings, size=len(data), netascii=False, max_duration=None)
    drive_download(job, sock, io.BytesIO(data).read)


LOOPS = {"bare": bare_loop, "engine": engine_loop}


def serve_one(
    host: str, peer: tuple[str, int], request: bytes, root: str, loop: Callable[..., None]
) -> None:
    parsed = _parse_request(request)
    if parsed is None:
        return
    name, blksize, asked = parsed
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.connect(peer)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    try:
        with open(os.path.join(root, name), "rb") as file:
            data = file.read()
    except OSError:
        sock.send(b"\0\5\0\1File not found\0")
        return
    if asked:  # the OACK, then its ACK 0
        sock.send(b"\0\6blksize\0%d\0" % blksize)
        if not _wait_for(sock, (_ACK + b"\0\0").__eq__):
            return
    loop(sock, data, blksize)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=sorted(LOOPS), default="bare")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("root")
    args = parser.parse_args(argv)
    loop = LOOPS[args.loop]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((args.host, args.port))
    while True:
        request, peer = listener.recvfrom(600)
        if os.fork() == 0:
            status = 1
            try:
                gc.disable()  # a collection would copy the parent's pages
                listener.close()
                serve_one(args.host, peer, request, args.root, loop)
                status = 0
            finally:
                os._exit(status)


if __name__ == "__main__":
    main()
