#!/usr/bin/env python3
"""Echo benchmark: the netsvc echo server against Twisted's stock echo, side by side.

Every measurement starts a fresh server (a subprocess in its own process group, killed
afterwards) on a free loopback port, waits until it answers a probe, drives one load
pattern ("row") against it and reads the server's CPU time and RSS from /proc. Runs
alternate the servers (stock, netsvc, stock, netsvc, ...); the table gives medians over
``--runs`` and ratios to the first server (the baseline).

Rows (``--rows``, comma list; all by default):
  tcp-rr-1      1 TCP connection: send --size bytes, wait for the whole echo, repeat (req/s)
  tcp-rr-many   --flows TCP connections doing the same concurrently (total req/s)
  tcp-bulk      1 connection streaming --chunk-kib chunks, at most --window-kib in flight,
                reading the echo back (MiB/s; byte count verified exactly, content sampled)
  udp-rr-1      1 UDP flow, --size byte datagrams request/response; an answer missing for
                200 ms is resent and counted as lost (req/s)
  udp-rr-many   --flows UDP sockets (distinct source ports) doing the same (total req/s)
  idle          open --idle-conns TCP connections, each echoing 1 byte so the server really
                accepted it; server RSS growth per connection (bytes/conn, lower is better)
  never-read    one TCP client sends as fast as it can for --never-read-seconds and never
                reads; server RSS growth (MiB, lower is better), stopped early at
                --never-read-cap-mib and then reported as "> X"

The load generator is this single process (non-blocking sockets on epoll). On a 2-core
machine it can be the bottleneck, so every throughput row also reports the server's CPU
time per operation (utime+stime of its process group over the measurement window), which
does not depend on how fast the client is: its ratio is the steadier figure.

Ratios: "ratio" is > 1 when the compared server is better: other/baseline for throughput
rows, baseline/other for the memory rows (idle, never-read). "cpu/op" is other/baseline
server CPU per operation: < 1 means the compared server spends less CPU per operation.

Loopback (127.0.0.1) only. Every loop is bounded in time (and the request loops in count,
--max-ops); the whole run is bounded by --deadline. Linux only (/proc, epoll).
The last line of output is ``SUMMARY echo ...`` with every row.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import resource
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

DEFAULT_SERVERS = (
    "stock={python} " + shlex.quote(str(BENCH_DIR / "stock_echo_server.py")) + " --port {port}",
    # --reactor=epoll: the reactor twistd and a plain script get on Linux; `python -m
    # twisted` alone picks another one, which cost netsvc ~15 % per request here.
    "netsvc={python} -m twisted --reactor=epoll netsvc-echo --port {port} --interface 127.0.0.1",
)

#: CPUs the servers are moved to as they start (``--split-cpus``); empty: inherited.
SERVER_CPUS: set[int] = set()

UDP_RESEND_AFTER = 0.2  # seconds without an answer before a datagram counts as lost
POLL_INTERVAL = 0.05  # epoll timeout: how often the loops look at the clock when idle
DRAIN_TIMEOUT = 5.0  # tcp-bulk: time allowed for the echo of the last bytes in flight
RSS_SAMPLE_INTERVAL = 0.1  # never-read: how often the server's RSS is sampled
PATTERN_PERIOD = 251  # tcp-bulk stream content: byte at offset o is o % 251 (prime period)
BULK_RECV_SIZE = 256 * 1024
BULK_CHECK_EVERY = 16  # tcp-bulk: compare the content of every 16th read with the pattern


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    runs: int
    duration: float
    warmup: float
    size: int
    flows: int
    chunk: int
    window: int
    idle_conns: int
    idle_pending: int
    never_read_seconds: float
    never_read_cap_mib: float
    never_read_bar_mib: float
    max_ops: int
    start_timeout: float
    setup_timeout: float
    deadline: float
    port: int
    pin_cpu: int | None
    split_cpus: tuple[int, int] | None  # (servers, this client)


# ----------------------------------------------------------------------------- /proc


def _proc_stat_fields(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, "state", is index 0)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def group_pids(pgid: int) -> list[str]:
    """PIDs of the live processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat_fields(entry)
            if fields is not None and int(fields[2]) == pgid:
                pids.append(entry)
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every process in the group, in seconds."""
    ticks = 0
    for pid in group_pids(pgid):
        fields = _proc_stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLK_TCK


def group_rss_bytes(pgid: int) -> int:
    """Sum of VmRSS over the process group, in bytes."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


# ----------------------------------------------------------------------------- servers


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    """Whether both TCP and UDP can bind HOST:port (so nobody else serves there)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def pick_port(fixed: int) -> int:
    """``fixed`` if given, else a random free port below the ephemeral range.

    Staying below the ephemeral range means no client socket of ours (5,000 of them in
    the idle row) or of anyone else can take the port between our check and the bind.
    """
    if fixed:
        if not _port_is_free(fixed):
            raise RuntimeError(f"port {fixed} is in use (TCP or UDP) on {HOST}")
        return fixed
    high = max(_ephemeral_low(), 10_001)
    for _ in range(200):
        port = random.randrange(10_000, high)
        if _port_is_free(port):
            return port
    raise RuntimeError("no free port found")


def _tcp_probe(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _udp_probe(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        payload = b"echo-bench-probe"
        try:
            s.connect((HOST, port))
            s.send(payload)
            return s.recv(65536) == payload
        except OSError:
            return False


@dataclass
class ServerSpec:
    name: str
    command: str  # with {port}, {host} and {python} placeholders


class ServerProcess:
    """One server subprocess in its own process group (pgid == pid)."""

    def __init__(self, spec: ServerSpec, port: int, log_file: IO[bytes]) -> None:
        self.spec = spec
        self.port = port
        self._log_file = log_file
        argv = shlex.split(spec.command.format(port=port, host=HOST, python=sys.executable))
        env = dict(os.environ)
        # The netsvc dropin and package are found from the checkout even when not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        if SERVER_CPUS:
            # Threads the server starts later inherit this from its main thread.
            os.sched_setaffinity(self.proc.pid, SERVER_CPUS)

    def wait_ready(self, protos: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probes = {"tcp": _tcp_probe, "udp": _udp_probe}
        pending = list(protos)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server {self.spec.name} exited with {self.proc.returncode}: {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server {self.spec.name} not ready on {'/'.join(pending)} port "
                    f"{self.port} after {timeout:.0f}s: {self.tail()}"
                )
            if probes[pending[0]](self.port):
                pending.pop(0)
            else:
                time.sleep(0.05)
        time.sleep(0.2)  # let start-up work (logging, late imports) settle

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pgid)

    def rss_bytes(self) -> int:
        return group_rss_bytes(self.pgid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, limit: int = 600) -> str:
        self._log_file.flush()
        self._log_file.seek(0)
        text = self._log_file.read().decode(errors="replace").strip()
        return ("..." + text[-limit:]) if len(text) > limit else (text or "(no output)")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Anything left in the group (children of the server) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)


@contextlib.contextmanager
def running_server(
    spec: ServerSpec, protos: Sequence[str], settings: Settings
) -> Iterator[ServerProcess]:
    port = pick_port(settings.port)
    with tempfile.TemporaryFile() as log_file:
        server = ServerProcess(spec, port, log_file)
        try:
            server.wait_ready(protos, settings.start_timeout)
            yield server
        finally:
            # A second Ctrl-C or SIGTERM must not orphan the server half-way through stop().
            masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                server.stop()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, masked)


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    value: float  # the row's figure, in the row's unit
    cpu_per_op: float | None = None  # server CPU seconds per op (op: see Row.op)
    ops: float = 0.0
    seconds: float = 0.0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    censored: bool = False  # the run stopped at a cap: value is a lower bound
    notes: dict[str, Any] = field(default_factory=dict)


class Window:
    """Wall clock, client CPU and server CPU between ``open`` and ``close``."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.opened = False
        self._start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def open(self, ops: float) -> None:
        server_cpu = self.server.cpu_seconds()
        self._start = (time.perf_counter(), time.process_time(), server_cpu, ops)
        self.opened = True

    def close(self, ops: float, value_per_second: float = 1.0) -> Result:
        server_cpu = self.server.cpu_seconds()
        now, client_cpu = time.perf_counter(), time.process_time()
        t0, c0, s0, ops0 = self._start
        secs = now - t0
        done = ops - ops0
        return Result(
            value=done / secs / value_per_second,
            cpu_per_op=(server_cpu - s0) / done if done else None,
            ops=done,
            seconds=secs,
            server_cpu_pct=100.0 * (server_cpu - s0) / secs,
            client_cpu_pct=100.0 * (client_cpu - c0) / secs,
        )


# ----------------------------------------------------------------------------- load patterns


def _connect_tcp(port: int, count: int) -> list[socket.socket]:
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=5.0)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
    except BaseException:
        _close_all(socks)
        raise
    return socks


def _close_all(socks: Sequence[socket.socket], reset: bool = False) -> None:
    for s in socks:
        if reset:  # RST instead of FIN: no TIME_WAIT pile-up after thousands of sockets
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()


def tcp_request_response(server: ServerProcess, settings: Settings, conns: int) -> Result:
    """``conns`` connections in lock-step: one request in flight on each."""
    size = settings.size
    message = b"x" * size
    socks = _connect_tcp(server.port, conns)
    ep = select.epoll()
    try:
        recv_of = {s.fileno(): s.recv for s in socks}
        send_of = {s.fileno(): s.send for s in socks}
        got = dict.fromkeys(recv_of, 0)
        for fd in recv_of:
            ep.register(fd, select.EPOLLIN)
        for send in send_of.values():
            send(message)
        count = 0
        window = Window(server)
        start_at = time.monotonic() + settings.warmup
        end_at = start_at + settings.duration
        limit = settings.max_ops
        poll, monotonic = ep.poll, time.monotonic
        while True:
            now = monotonic()
            if not window.opened:
                if now >= start_at:
                    window.open(count)
                    limit += count
            elif now >= end_at or count >= limit:
                break
            for fd, _ in poll(POLL_INTERVAL):
                data = recv_of[fd](65536)
                if not data:
                    raise ConnectionError(f"server closed a connection after {count} requests")
                n = got[fd] + len(data)
                if n >= size:
                    n -= size
                    count += 1
                    send_of[fd](message)
                got[fd] = n
        return window.close(count)
    finally:
        ep.close()
        _close_all(socks)


def udp_request_response(server: ServerProcess, settings: Settings, flows: int) -> Result:
    """``flows`` UDP sockets in lock-step; each request carries a sequence number so a
    late answer to a resent datagram is recognised (counted as stale, not as an answer)."""
    pad = b"x" * max(0, settings.size - 8)
    socks = []
    ep = select.epoll()
    try:
        for _ in range(flows):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.connect((HOST, server.port))
            s.setblocking(False)
        fds = [s.fileno() for s in socks]
        recv_of = {s.fileno(): s.recv for s in socks}
        send_of = {s.fileno(): s.send for s in socks}
        seq = dict.fromkeys(fds, 0)
        current = {fd: (0).to_bytes(8, "big") + pad for fd in fds}
        sent_at = dict.fromkeys(fds, 0.0)
        lost = stale = errors = 0

        def send(fd: int, now: float) -> None:
            nonlocal errors
            sent_at[fd] = now
            try:
                send_of[fd](current[fd])
            except OSError:  # ENOBUFS, ECONNREFUSED from an earlier ICMP: a lost datagram
                errors += 1

        now = time.monotonic()
        for fd in fds:
            ep.register(fd, select.EPOLLIN)
            send(fd, now)
        count = 0
        window = Window(server)
        start_at = now + settings.warmup
        end_at = start_at + settings.duration
        limit = settings.max_ops
        next_resend_check = now + POLL_INTERVAL
        poll, monotonic = ep.poll, time.monotonic
        while True:
            now = monotonic()
            if not window.opened:
                if now >= start_at:
                    window.open(count)
                    limit += count
            elif now >= end_at or count >= limit:
                break
            if now >= next_resend_check:
                next_resend_check = now + POLL_INTERVAL
                for fd in fds:
                    if now - sent_at[fd] > UDP_RESEND_AFTER:
                        lost += 1
                        send(fd, now)
            for fd, _ in poll(POLL_INTERVAL):
                try:
                    data = recv_of[fd](65536)
                except OSError:
                    errors += 1
                    continue
                if data != current[fd]:
                    stale += 1
                    continue
                count += 1
                seq[fd] += 1
                current[fd] = seq[fd].to_bytes(8, "big") + pad
                send(fd, now)
        result = window.close(count)
        result.notes.update(lost=lost, stale=stale, errors=errors)
        return result
    finally:
        ep.close()
        _close_all(socks)


def tcp_bulk(server: ServerProcess, settings: Settings) -> Result:
    """One connection streaming a known pattern with at most ``window`` bytes unechoed."""
    chunk, window_bytes = settings.chunk, settings.window
    pattern = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD + max(chunk, BULK_RECV_SIZE)))
    view = memoryview(pattern)
    (sock,) = _connect_tcp(server.port, 1)
    ep = select.epoll()
    try:
        fd = sock.fileno()
        recv, send = sock.recv, sock.send
        interest = select.EPOLLIN | select.EPOLLOUT
        ep.register(fd, interest)
        sent = received = reads = checked = 0
        window = Window(server)
        now = time.monotonic()
        start_at = now + settings.warmup
        end_at = start_at + settings.duration
        limit = settings.max_ops * chunk
        sending = True
        drain_until = 0.0
        result: Result | None = None
        poll, monotonic = ep.poll, time.monotonic
        while True:
            now = monotonic()
            if not window.opened:
                if now >= start_at:
                    window.open(received)
                    limit += received
            elif sending and (now >= end_at or received >= limit):
                result = window.close(received, MIB)
                sending = False
                drain_until = now + DRAIN_TIMEOUT
            if not sending and (received >= sent or now >= drain_until):
                break
            for _, events in poll(POLL_INTERVAL):
                if events & select.EPOLLIN:
                    data = recv(BULK_RECV_SIZE)
                    if not data:
                        raise ConnectionError(f"server closed the connection after {received} B")
                    if reads % BULK_CHECK_EVERY == 0:
                        offset = received % PATTERN_PERIOD
                        if data != pattern[offset : offset + len(data)]:
                            raise ValueError(f"echo content differs at stream offset {received}")
                        checked += 1
                    reads += 1
                    received += len(data)
                if sending and events & select.EPOLLOUT:
                    room = window_bytes - (sent - received)
                    if room > 0:
                        offset = sent % PATTERN_PERIOD
                        with contextlib.suppress(BlockingIOError):
                            sent += send(view[offset : offset + min(chunk, room)])
            wanted = select.EPOLLIN | (
                select.EPOLLOUT if sending and sent - received < window_bytes else 0
            )
            if wanted != interest:
                ep.modify(fd, wanted)
                interest = wanted
        assert result is not None  # set when sending stopped, before the loop can end
        if received != sent:
            raise ValueError(f"echoed {received} of {sent} bytes ({DRAIN_TIMEOUT}s drain)")
        result.cpu_per_op = None if result.cpu_per_op is None else result.cpu_per_op * MIB
        result.ops /= MIB
        result.notes.update(
            sent_mib=round(sent / MIB, 1), bytes_verified=True, content_checks=checked
        )
        return result
    finally:
        ep.close()
        sock.close()


def _open_idle_connections(
    port: int, count: int, max_pending: int, timeout: float
) -> list[socket.socket]:
    """Open ``count`` connections, each echoing one byte, at most ``max_pending`` at a time
    in the handshake or waiting for the echo (a Twisted server listens with backlog 50)."""
    ep = select.epoll()
    done: list[socket.socket] = []
    pending: dict[int, socket.socket] = {}
    connected: set[int] = set()
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {count} connections set up in {timeout}s")
            while started < count and len(pending) < max_pending:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((HOST, port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    raise OSError(err, f"connect #{started + 1}: {os.strerror(err)}")
                pending[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLOUT)
                started += 1
            for fd, _ in ep.poll(POLL_INTERVAL):
                s = pending[fd]
                if fd not in connected:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect after {len(done)}: {os.strerror(err)}")
                    s.send(b"x")
                    connected.add(fd)
                    ep.modify(fd, select.EPOLLIN)
                    continue
                if s.recv(16) != b"x":
                    raise ConnectionError(f"connection closed during set-up after {len(done)}")
                ep.unregister(fd)
                connected.discard(fd)
                done.append(pending.pop(fd))
        return done
    except BaseException:
        _close_all(done + list(pending.values()), reset=True)
        raise
    finally:
        ep.close()


def _count_closed(socks: Sequence[socket.socket]) -> int:
    """How many of these connections the peer has closed (or reset)."""
    ep = select.epoll()
    try:
        for s in socks:
            ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return len(ep.poll(0))
    finally:
        ep.close()


def idle_connections(server: ServerProcess, settings: Settings) -> Result:
    n = settings.idle_conns
    # Warm the server's code paths (and its allocator) before the baseline reading.
    warm = _open_idle_connections(server.port, 50, settings.idle_pending, settings.setup_timeout)
    _close_all(warm, reset=True)
    time.sleep(0.5)
    rss_before = server.rss_bytes()
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    socks = _open_idle_connections(server.port, n, settings.idle_pending, settings.setup_timeout)
    try:
        setup = time.perf_counter() - started
        time.sleep(0.5)
        rss_after = server.rss_bytes()
        cpu = server.cpu_seconds() - cpu_before
        closed = _count_closed(socks)
        if closed:
            raise ConnectionError(f"server closed {closed} of {n} idle connections")
        return Result(
            value=(rss_after - rss_before) / n,
            cpu_per_op=cpu / n,
            ops=n,
            seconds=setup,
            notes={
                "rss_before_mib": round(rss_before / MIB, 1),
                "rss_after_mib": round(rss_after / MIB, 1),
                "setup_s": round(setup, 2),
            },
        )
    finally:
        _close_all(socks, reset=True)


def never_reading_client(server: ServerProcess, settings: Settings) -> Result:
    """Send as fast as possible, never read; track the server's RSS."""
    cap = settings.never_read_cap_mib * MIB
    payload = memoryview(b"\0" * (256 * 1024))
    (sock,) = _connect_tcp(server.port, 1)
    ep = select.epoll()
    try:
        ep.register(sock.fileno(), select.EPOLLOUT)
        rss_before = server.rss_bytes()
        peak = rss_before
        sent = 0
        capped = False
        started = now = time.monotonic()
        end_at = started + settings.never_read_seconds
        next_sample = started + RSS_SAMPLE_INTERVAL
        while now < end_at:
            if ep.poll(min(POLL_INTERVAL, end_at - now)):
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(payload)
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + RSS_SAMPLE_INTERVAL
                peak = max(peak, server.rss_bytes())
                if peak - rss_before > cap:
                    capped = True
                    break
                if not server.alive():
                    raise RuntimeError("server died during the never-read run")
        elapsed = time.monotonic() - started
        peak = max(peak, server.rss_bytes())
        return Result(
            value=(peak - rss_before) / MIB,
            seconds=elapsed,
            censored=capped,
            notes={
                "sent_mib": round(sent / MIB, 1),
                "rss_before_mib": round(rss_before / MIB, 1),
                "stopped_at_cap": capped,
                "ran_s": round(elapsed, 1),
            },
        )
    finally:
        ep.close()
        _close_all([sock], reset=True)


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    key: str  # selector for --rows
    label: str  # shown in the table, with the configured numbers
    proto: str  # what the readiness probe checks: "tcp" or "udp"
    unit: str
    higher_is_better: bool
    op: str  # what one operation is, for the cpu/op column ("" = not measured)
    measure: Callable[[ServerProcess, Settings], Result]


def build_rows(settings: Settings) -> list[Row]:
    flows = settings.flows
    return [
        Row("tcp-rr-1", "tcp-rr-1", "tcp", "req/s", True, "req",
            lambda srv, st: tcp_request_response(srv, st, 1)),
        Row("tcp-rr-many", f"tcp-rr-{flows}", "tcp", "req/s", True, "req",
            lambda srv, st: tcp_request_response(srv, st, flows)),
        Row("tcp-bulk", "tcp-bulk", "tcp", "MiB/s", True, "MiB", tcp_bulk),
        Row("udp-rr-1", "udp-rr-1", "udp", "req/s", True, "req",
            lambda srv, st: udp_request_response(srv, st, 1)),
        Row("udp-rr-many", f"udp-rr-{flows}", "udp", "req/s", True, "req",
            lambda srv, st: udp_request_response(srv, st, flows)),
        Row("idle", f"idle-{settings.idle_conns}", "tcp", "B/conn", False, "conn",
            idle_connections),
        Row("never-read", "never-read", "tcp", "MiB", False, "", never_reading_client),
    ]  # fmt: skip


def select_rows(all_rows: list[Row], wanted: str | None) -> list[Row]:
    if not wanted:
        return all_rows
    by_name = {r.key: r for r in all_rows} | {r.label: r for r in all_rows}
    chosen = []
    for name in (w.strip() for w in wanted.split(",") if w.strip()):
        if name not in by_name:
            known = ", ".join(r.key for r in all_rows)
            raise SystemExit(f"unknown row {name!r} (rows: {known})")
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    return chosen


# ----------------------------------------------------------------------------- reporting


@dataclass
class Cell:
    """The medians of one (row, server) pair."""

    value: float | None
    censored: bool
    cpu_per_op: float | None
    runs: int
    failures: int
    lost: int | None = None


def summarize(results: list[Result], failures: int) -> Cell:
    if not results:
        return Cell(None, False, None, 0, failures)
    cpu = [r.cpu_per_op for r in results if r.cpu_per_op is not None]
    lost = [r.notes["lost"] for r in results if "lost" in r.notes]
    return Cell(
        value=statistics.median(r.value for r in results),
        # The median of lower bounds is a lower bound of the median.
        censored=any(r.censored for r in results),
        cpu_per_op=statistics.median(cpu) if cpu else None,
        runs=len(results),
        failures=failures,
        lost=sum(lost) if lost else None,
    )


def fmt_value(value: float | None, censored: bool = False) -> str:
    if value is None:
        return "FAIL"
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2
    text = f"{value:.{digits}f}"
    return (">" if censored else "") + text


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.0f}" if ratio >= 100 else f"{ratio:.1f}" if ratio >= 10 else f"{ratio:.2f}"


def fmt_cpu(seconds: float | None, op: str) -> str:
    if seconds is None or not op:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms/{op}"
    return f"{seconds * 1e6:.1f} us/{op}"


def ratio_of(row: Row, base: Cell, other: Cell) -> str:
    """> 1 means ``other`` is better than ``base`` (see the module docstring)."""
    if base.value is None or other.value is None:
        return "n/a"
    num, den = (other, base) if row.higher_is_better else (base, other)
    if den.value is None or num.value is None or den.value <= 0:
        return "n/a"
    text = fmt_ratio(num.value / den.value)
    if num.censored and den.censored:
        return "?"
    if num.censored:
        return ">" + text
    if den.censored:
        return "<" + text
    return text


def cpu_ratio_of(base: Cell, other: Cell) -> str:
    if base.cpu_per_op is None or other.cpu_per_op is None or base.cpu_per_op <= 0:
        return "-"
    return fmt_ratio(other.cpu_per_op / base.cpu_per_op)


def render_table(headers: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = [headers, ["-" * w for w in widths], *lines]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in out
    )


def describe(result: Result, row: Row) -> str:
    parts = [f"{fmt_value(result.value, result.censored)} {row.unit}"]
    if result.cpu_per_op is not None and row.op:
        parts.append(f"srv-cpu/op {fmt_cpu(result.cpu_per_op, row.op)}")
    if result.server_cpu_pct is not None:
        parts.append(f"srv-cpu {result.server_cpu_pct:.0f}%  cli-cpu {result.client_cpu_pct:.0f}%")
    parts.extend(f"{k}={v}" for k, v in result.notes.items())
    return "  ".join(parts)


# ----------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_servers(specs: list[str] | None) -> list[ServerSpec]:
    servers = []
    for spec in specs or DEFAULT_SERVERS:
        name, sep, command = spec.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise SystemExit(f"--servers wants NAME=CMD, got {spec!r}")
        servers.append(ServerSpec(name.strip(), command.strip()))
    if len(servers) < 2:
        raise SystemExit("give at least two servers: the baseline first, then the compared ones")
    if len({s.name for s in servers}) != len(servers):
        raise SystemExit("server names must be distinct")
    return servers


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="See bench/README.md for how to read the output.",
    )
    p.add_argument(
        "--servers",
        action="append",
        metavar="NAME=CMD",
        help="a server to measure (repeat; the first is the baseline). CMD is split "
        "like a shell line (no shell runs it); placeholders {port} {host} "
        "{python}. Default: stock (bench/stock_echo_server.py) and netsvc "
        "(python -m twisted --reactor=epoll netsvc-echo)",
    )
    p.add_argument(
        "--rows",
        help="comma list of rows (default all): tcp-rr-1, tcp-rr-many, "
        "tcp-bulk, udp-rr-1, udp-rr-many, idle, never-read",
    )
    p.add_argument("--runs", type=int, default=3, help="measurements per server and row")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per row")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    p.add_argument("--size", type=int, default=64, help="request size for the *-rr rows")
    p.add_argument("--flows", type=int, default=50, help="connections/sockets in the -many rows")
    p.add_argument("--chunk-kib", type=int, default=64, help="tcp-bulk write size")
    p.add_argument("--window-kib", type=int, default=1024, help="tcp-bulk bytes in flight")
    p.add_argument("--idle-conns", type=int, default=5000, help="connections in the idle row")
    p.add_argument(
        "--idle-pending",
        type=int,
        default=32,
        help="idle row: connections being set up at once (paces the connects)",
    )
    p.add_argument("--never-read-seconds", type=float, default=10.0)
    p.add_argument(
        "--never-read-cap-mib",
        type=float,
        default=1024.0,
        help="stop the never-read run when the server grew this much",
    )
    p.add_argument(
        "--never-read-bar-mib",
        type=float,
        default=50.0,
        help="pass mark for the compared servers in the never-read row",
    )
    p.add_argument(
        "--max-ops",
        type=int,
        default=10_000_000,
        help="upper bound on operations per measurement window",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=20.0,
        help="seconds a server has to answer the readiness probe",
    )
    p.add_argument(
        "--setup-timeout",
        type=float,
        default=60.0,
        help="seconds allowed to open the idle connections",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=1800.0,
        help="whole run, seconds; measurements not started by then are skipped",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="fixed server port (default: a free one per measurement)",
    )
    p.add_argument(
        "--pin-cpu",
        type=int,
        metavar="N",
        help="run this client and the servers on CPU N only (taskset)",
    )
    p.add_argument(
        "--split-cpus",
        metavar="S,C",
        help="run the servers on CPU S and this client on CPU C (no shared-CPU runs)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    args = p.parse_args(argv)
    if args.split_cpus is not None:
        try:
            server_cpu, client_cpu = (int(part) for part in args.split_cpus.split(","))
        except ValueError:
            p.error("--split-cpus wants two CPU numbers, e.g. 0,1")
        if server_cpu == client_cpu or args.pin_cpu is not None:
            p.error("--split-cpus wants two different CPUs, and not with --pin-cpu")
        args.split_cpus = (server_cpu, client_cpu)
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0 or args.size < 8:
        p.error("need --runs >= 1, --duration > 0, --warmup >= 0, --size >= 8")
    if args.flows < 1 or args.idle_conns < 1 or args.idle_pending < 1:
        p.error("need --flows, --idle-conns and --idle-pending >= 1")
    return args


@dataclass
class Campaign:
    """Everything measured in one invocation."""

    results: dict[tuple[str, str], list[Result]] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    interrupted: bool = False
    elapsed: float = 0.0


def run_campaign(settings: Settings, rows: list[Row], servers: list[ServerSpec]) -> Campaign:
    """Every (run, row, server) measurement, servers alternating within each row."""
    done = Campaign()
    begun = time.monotonic()
    plan = [
        (run, row, spec) for run in range(1, settings.runs + 1) for row in rows for spec in servers
    ]
    for run, row, spec in plan:
        if done.interrupted or time.monotonic() - begun > settings.deadline:
            done.skipped += 1
            continue
        key = (row.key, spec.name)
        prefix = f"run {run}/{settings.runs} {row.label:<12} {spec.name:<8}"
        try:
            with running_server(spec, [row.proto], settings) as server:
                result = row.measure(server, settings)
        except KeyboardInterrupt:  # the server is already killed: report what we have
            log(f"{prefix} interrupted")
            done.interrupted = True
            done.skipped += 1
            continue
        except Exception as exc:  # one failed cell must not stop the others
            done.failures[key] = done.failures.get(key, 0) + 1
            error = f"{type(exc).__name__}: {exc}"
            log(f"{prefix} FAILED {error}")
            done.raw.append({"run": run, "row": row.label, "server": spec.name, "error": error})
            continue
        done.results.setdefault(key, []).append(result)
        done.raw.append({"run": run, "row": row.label, "server": spec.name, **asdict(result)})
        log(f"{prefix} {describe(result, row)}")
    done.elapsed = time.monotonic() - begun
    return done


def report(
    settings: Settings, rows: list[Row], servers: list[ServerSpec], done: Campaign
) -> tuple[str, list[str], list[dict[str, Any]]]:
    """The table, the SUMMARY parts (one per row) and the medians for the JSON file."""
    base = servers[0]
    headers = ["row", "unit", base.name]
    for other in servers[1:]:
        headers += [other.name, "ratio", "cpu/op ratio"]
    headers += [f"{base.name} cpu/op"] + [f"{o.name} cpu/op" for o in servers[1:]] + ["notes"]
    lines: list[list[str]] = []
    summary_parts: list[str] = []
    medians: list[dict[str, Any]] = []
    for row in rows:
        cells = {
            s.name: summarize(done.results.get(cell_key, []), done.failures.get(cell_key, 0))
            for s in servers
            for cell_key in [(row.key, s.name)]
        }
        b = cells[base.name]
        line = [row.label, row.unit, fmt_value(b.value, b.censored)]
        part = [f"{row.label}[{row.unit}] {base.name}={fmt_value(b.value, b.censored)}"]
        notes = []
        for other in servers[1:]:
            c = cells[other.name]
            ratio, cpu_ratio = ratio_of(row, b, c), cpu_ratio_of(b, c)
            line += [fmt_value(c.value, c.censored), ratio, cpu_ratio]
            part.append(f"{other.name}={fmt_value(c.value, c.censored)} ratio={ratio}")
            if cpu_ratio != "-":
                part.append(f"cpu/op={cpu_ratio}")
            if row.key == "never-read" and c.value is not None:
                passed = not c.censored and c.value < settings.never_read_bar_mib
                verdict = "PASS" if passed else "FAIL"
                notes.append(f"{other.name} bar <{settings.never_read_bar_mib:g} MiB: {verdict}")
                part.append(f"bar={verdict}")
        line += [fmt_cpu(cells[s.name].cpu_per_op, row.op) for s in servers]
        for s in servers:
            c = cells[s.name]
            if c.lost:
                notes.append(f"{s.name} lost {c.lost}")
            if c.failures:
                notes.append(f"{s.name} {c.failures} failed")
            if c.runs < settings.runs and not c.failures:
                notes.append(f"{s.name} {c.runs}/{settings.runs} runs")
        line.append("; ".join(notes))
        lines.append(line)
        summary_parts.append(" ".join(part))
        medians.append(
            {
                "row": row.label,
                "unit": row.unit,
                "higher_is_better": row.higher_is_better,
                "cells": {name: asdict(c) for name, c in cells.items()},
            }
        )

    return render_table(headers, lines), summary_parts, medians


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        size=args.size,
        flows=args.flows,
        chunk=args.chunk_kib * 1024,
        window=args.window_kib * 1024,
        idle_conns=args.idle_conns,
        idle_pending=args.idle_pending,
        never_read_seconds=args.never_read_seconds,
        never_read_cap_mib=args.never_read_cap_mib,
        never_read_bar_mib=args.never_read_bar_mib,
        max_ops=args.max_ops,
        start_timeout=args.start_timeout,
        setup_timeout=args.setup_timeout,
        deadline=args.deadline,
        port=args.port,
        pin_cpu=args.pin_cpu,
        split_cpus=args.split_cpus,
    )
    servers = parse_servers(args.servers)
    rows = select_rows(build_rows(settings), args.rows)

    if settings.pin_cpu is not None:
        if settings.pin_cpu not in os.sched_getaffinity(0):
            raise SystemExit(f"CPU {settings.pin_cpu} is not available to this process")
        os.sched_setaffinity(0, {settings.pin_cpu})  # the servers inherit it
    if settings.split_cpus is not None:
        server_cpu, client_cpu = settings.split_cpus
        if not {server_cpu, client_cpu} <= os.sched_getaffinity(0):
            raise SystemExit(f"CPUs {server_cpu},{client_cpu} are not both available")
        SERVER_CPUS.add(server_cpu)
        os.sched_setaffinity(0, {client_cpu})
    nofile = raise_nofile(settings.idle_conns + 256)  # the servers inherit it too
    if any(r.key == "idle" for r in rows) and nofile < settings.idle_conns + 64:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}: too low for {settings.idle_conns} conns")
    # A SIGTERM unwinds like Ctrl-C, so the running server is always killed.
    signal.signal(signal.SIGTERM, _interrupt)

    pinned = "cpu" + str(settings.pin_cpu) if settings.pin_cpu is not None else "no"
    if settings.split_cpus is not None:
        pinned = "split(servers=cpu{},client=cpu{})".format(*settings.split_cpus)
    log(
        f"# echo_bench: {', '.join(s.name for s in servers)} (baseline {servers[0].name}); "
        f"runs={settings.runs} duration={settings.duration}s warmup={settings.warmup}s "
        f"size={settings.size} flows={settings.flows} pinned={pinned} nofile={nofile} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}"
    )
    for s in servers:
        log(f"#   {s.name}: {s.command}")

    done = run_campaign(settings, rows, servers)
    table, summary_parts, medians = report(settings, rows, servers, done)
    elapsed, skipped, interrupted = done.elapsed, done.skipped, done.interrupted
    log("")
    log(f"# medians of {settings.runs} run(s), pinned={pinned}, {elapsed:.0f}s in all")
    log("# ratio > 1: compared server better (throughput other/base; memory rows base/other)")
    log("# cpu/op ratio: other/base server CPU per op (< 1: compared server cheaper)")
    log(table)
    if skipped:
        why = "interrupted" if interrupted else f"deadline {settings.deadline:.0f}s reached"
        log(f"# {why}: {skipped} measurement(s) skipped")

    if args.json:
        with open(args.json, "w") as f:
            payload = {
                "settings": asdict(settings),
                "pinned": pinned,
                "servers": [asdict(s) for s in servers],
                "elapsed_s": elapsed,
                "skipped": skipped,
                "interrupted": interrupted,
                "medians": medians,
                "results": done.raw,
            }
            json.dump(payload, f, indent=2)
        log(f"# results written to {args.json}")

    log(
        f"SUMMARY echo runs={settings.runs} duration={settings.duration:g}s pinned={pinned}"
        + (f" skipped={skipped}" if skipped else "")
        + (" interrupted" if interrupted else "")
        + " | "
        + " | ".join(summary_parts)
    )
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
