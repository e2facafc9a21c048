#!/usr/bin/env python3
"""Chat benchmark: the netsvc chat server against the chat of Twisted's "Writing Servers"
howto, side by side in one run.

Every measurement starts a fresh server (a subprocess in its own process group, killed
afterwards) on a free loopback port, waits until it accepts TCP, drives one load pattern
("row") against it and reads the server's CPU time and RSS from /proc. The servers
alternate (naive, netsvc, naive, netsvc, ...); the table gives medians over ``--runs``
and ratios to the first server (the baseline).

Rows (``--rows``, comma list; all by default):
  fanout-64   --clients receivers and one sender, all logged in (the first line each
              client sends is its name) and so in the same room; the sender sends
              --line-bytes lines ("FANOUT <seq> <padding>") keeping at most 64 lines not
              yet delivered to every receiver (counted over the sum of deliveries).
              Figure: lines delivered per second (one line reaching one receiver is one).
  fanout-1    the same with one line outstanding: lock-step, latency-bound
  idle        --idle-clients clients connect and log in (each waits for "Welcome"), at
              most 32 in set-up at a time; server RSS after minus before, per client
              (bytes/client, lower is better)

A receiver counts every "FANOUT " it receives, whatever the server puts around it, so the
servers' different line formats (``<s> ...`` against ``#lobby <s> ...``) do not matter.

The netsvc server runs with its SendQ and flood control on. Flood control's default
budget (10 lines/s per connection) exists to stop exactly what the sender here does, so
the default command raises the budget far above the benchmark's rate: the buckets are
still charged for every line, they just never run dry. It also lifts the per-address
connection cap (every client here is 127.0.0.1). Everything else is at its defaults.

Loopback (127.0.0.1) only. Every loop is bounded in time; the whole run is bounded by
--deadline. Linux only (/proc, epoll). The last line of output is ``SUMMARY chat ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from typing import IO

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARK = b"FANOUT "
WELCOME = b"Welcome, "
SETUP_CONCURRENCY = 32  # idle row: connections in set-up at once (Twisted's backlog is 50)

NETSVC_FLOOD_FOR_BENCH = (
    "--flood-lines 1000000 --flood-line-burst 1000000"
    " --flood-bytes 1000000000 --flood-byte-burst 1000000000 --max-per-peer 0"
)
DEFAULT_SERVERS = (
    "naive={python} " + shlex.quote(str(BENCH_DIR / "naive_chat_server.py"))
    + " --port {port} --interface {host}",
    "netsvc={python} -m netsvc.chat --port {port} --interface {host} " + NETSVC_FLOOD_FOR_BENCH,
)


def log(message: str) -> None:
    print(message, flush=True)


# -- servers --------------------------------------------------------------------------


@dataclass
class ServerSpec:
    name: str
    command: str


def group_pids(pgid: int) -> list[str]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(entry)
    return pids


def group_cpu_seconds(pgid: int) -> float:
    ticks = 0
    for pid in group_pids(pgid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / CLK_TCK


def group_rss_bytes(pgid: int) -> int:
    total = 0
    for pid in group_pids(pgid):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def pick_port() -> int:
    """A free TCP port below the ephemeral range (so client sockets never take it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = int.from_bytes(os.urandom(2), "big") % (low - 20000) + 20000
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


class ServerProcess:
    def __init__(self, spec: ServerSpec, port: int, pin: int | None, log_file: IO[bytes]):
        self.spec = spec
        self.port = port
        self.log_file = log_file
        argv = [
            part.format(python=sys.executable, port=port, host=HOST)
            for part in shlex.split(spec.command)
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))

        def prepare() -> None:
            if pin is not None:
                os.sched_setaffinity(0, {pin})

        self.process = subprocess.Popen(
            argv, cwd=REPO_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=prepare,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                time.sleep(0.3)  # let it settle after the probe
                return
            time.sleep(0.05)
        raise RuntimeError(f"server not accepting on port {self.port}: {self.tail()}")

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.process.pid)

    def rss_bytes(self) -> int:
        return group_rss_bytes(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, limit: int = 600) -> str:
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")[-limit:].strip()

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(spec: ServerSpec, pin: int | None) -> Iterator[ServerProcess]:
    with tempfile.TemporaryFile() as log_file:
        server = ServerProcess(spec, pick_port(), pin, log_file)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()


# -- clients ----------------------------------------------------------------------------


class Client:
    """A non-blocking client socket that counts markers across reads."""

    __slots__ = ("marks", "pending", "sock", "tail", "welcomed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tail = b""
        self.marks = 0
        self.welcomed = False
        self.pending = b""

    def absorb(self, data: bytes) -> int:
        chunk = self.tail + data
        found = chunk.count(MARK)
        self.tail = chunk[1 - len(MARK):]  # too short to hold a whole marker again
        self.marks += found
        if not self.welcomed:
            self.pending = (self.pending + data)[-4096:]
            if WELCOME in self.pending:
                self.welcomed = True
                self.pending = b""
        return found


def connect_and_login(port: int, names: Sequence[str], deadline: float) -> list[Client]:
    """Connect one client per name, send the name, wait until each is welcomed."""
    clients: list[Client] = []
    poller = select.epoll()
    waiting: dict[int, Client] = {}
    queue = list(names)
    try:
        while queue or waiting:
            while queue and len(waiting) < SETUP_CONCURRENCY:
                name = queue.pop(0)
                sock = socket.create_connection((HOST, port), timeout=10)
                # As asyncio and uvloop clients do: no Nagle delay on small writes.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                sock.send(name.encode() + b"\r\n")
                client = Client(sock)
                clients.append(client)
                waiting[sock.fileno()] = client
                poller.register(sock.fileno(), select.EPOLLIN)
            if time.monotonic() > deadline:
                raise RuntimeError(f"log-in timed out with {len(waiting)} clients waiting")
            for fd, _ in poller.poll(0.2):
                client = waiting[fd]
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("the server closed a connection during log-in")
                client.absorb(data)
                if client.welcomed:
                    poller.unregister(fd)
                    del waiting[fd]
    except BaseException:
        close_all(clients)
        raise
    finally:
        poller.close()
    return clients


def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        with contextlib.suppress(OSError):
            client.sock.close()


def drain(clients: Sequence[Client], seconds: float) -> None:
    """Read what the server still sends (join notices, history), for at most ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = 0
        for client in clients:
            with contextlib.suppress(BlockingIOError):
                data = client.sock.recv(262144)
                if data:
                    client.absorb(data)
                    got += 1
        if not got:
            return
        time.sleep(0.05)


@dataclass
class Result:
    server: str
    row: str
    value: float | None = None
    cpu_per_op_us: float | None = None
    srv_cpu_pct: float | None = None
    cli_cpu_pct: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def fanout(server: ServerProcess, settings: argparse.Namespace, window: int) -> Result:
    result = Result(server.spec.name, f"fanout-{window}")
    deadline = time.monotonic() + settings.row_timeout
    names = [f"r{i}" for i in range(settings.clients)]
    receivers = connect_and_login(server.port, names, deadline)
    sender_list = connect_and_login(server.port, ["sender"], deadline)
    sender = sender_list[0].sock
    everyone = receivers + sender_list
    try:
        drain(receivers, 0.3)
        poller = select.epoll()
        by_fd = {c.sock.fileno(): c for c in receivers}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        count = len(receivers)
        # Probe until every receiver has seen a marked line: everyone is in the room.
        while min(c.marks for c in receivers) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("not every receiver got the probe line")
            sender.send(b"FANOUT probe\r\n")
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                for fd, _ in poller.poll(0.05):
                    with contextlib.suppress(BlockingIOError):
                        by_fd[fd].absorb(by_fd[fd].sock.recv(262144))
        time.sleep(0.3)
        for fd, _ in poller.poll(0):
            with contextlib.suppress(BlockingIOError):
                by_fd[fd].absorb(by_fd[fd].sock.recv(262144))
        for client in receivers:
            client.marks = 0

        pad = b"p" * max(0, settings.line_bytes - len(b"FANOUT 0000000 ") - 2)
        delivered = 0
        sent = 0
        outbox = b""
        started = time.monotonic()
        window_start = started + settings.warmup
        window_end = window_start + settings.duration
        measuring = False
        base_delivered = 0
        cpu0 = cli0 = t0 = 0.0
        while True:
            now = time.monotonic()
            if not measuring and now >= window_start:
                measuring = True
                base_delivered = delivered
                cpu0 = server.cpu_seconds()
                cli0 = time.process_time()
                t0 = time.perf_counter()
            if now >= window_end or now > deadline:
                break
            allowed = delivered // count + window
            if sent < allowed and not outbox:
                outbox = b"".join(
                    b"FANOUT %07d " % (seq % 10_000_000) + pad + b"\r\n"
                    for seq in range(sent, allowed)
                )
                sent = allowed
            if outbox:
                try:
                    written = sender.send(outbox)
                    outbox = outbox[written:]
                except BlockingIOError:
                    pass
            for fd, _ in poller.poll(0.05):
                client = by_fd[fd]
                try:
                    data = client.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("the server closed a receiver")
                delivered += client.absorb(data)
        elapsed = time.perf_counter() - t0
        cpu = server.cpu_seconds() - cpu0
        cli = time.process_time() - cli0
        got = delivered - base_delivered
        if not measuring or got <= 0:
            raise RuntimeError("nothing delivered in the measurement window")
        result.value = got / elapsed
        result.cpu_per_op_us = 1e6 * cpu / got
        result.srv_cpu_pct = 100 * cpu / elapsed
        result.cli_cpu_pct = 100 * cli / elapsed
        spread = [c.marks for c in receivers]
        result.notes.append(f"per-receiver min/max {min(spread)}/{max(spread)}")
        poller.close()
    finally:
        close_all(everyone)
    return result


def idle(server: ServerProcess, settings: argparse.Namespace) -> Result:
    result = Result(server.spec.name, f"idle-{settings.idle_clients}")
    time.sleep(0.5)
    before = server.rss_bytes()
    cpu0 = server.cpu_seconds()
    deadline = time.monotonic() + settings.row_timeout
    names = [f"i{i}" for i in range(settings.idle_clients)]
    clients = connect_and_login(server.port, names, deadline)
    try:
        drain(clients, 0.5)
        time.sleep(1.0)
        after = server.rss_bytes()
        cpu = server.cpu_seconds() - cpu0
        closed = 0
        for client in clients:
            try:
                if client.sock.recv(65536) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        if closed:
            raise RuntimeError(f"{closed} of the idle clients were closed by the server")
        result.value = (after - before) / len(clients)
        result.cpu_per_op_us = 1e6 * cpu / len(clients)
        result.notes.append(f"rss {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    finally:
        close_all(clients)
    return result


ROWS: dict[str, tuple[str, Callable[[ServerProcess, argparse.Namespace], Result]]] = {
    "fanout-64": ("lines/s", lambda server, s: fanout(server, s, 64)),
    "fanout-1": ("lines/s", lambda server, s: fanout(server, s, 1)),
    "idle": ("B/client", idle),
}
LOWER_IS_BETTER = {"idle"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument(
        "--servers", action="append", metavar="NAME=CMD",
        help="server to compare (repeat; the first is the baseline). Placeholders {python}"
        " {port} {host}; split like a shell line, no shell runs it. Default: naive, netsvc",
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma list of rows")
    parser.add_argument("--runs", type=int, default=3, help="measurements per server and row")
    parser.add_argument("--clients", type=int, default=100, help="receivers in the fan-out rows")
    parser.add_argument("--line-bytes", type=int, default=64, help="sent line size with CRLF")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load first")
    parser.add_argument("--idle-clients", type=int, default=5000)
    parser.add_argument(
        "--row-timeout", type=float, default=180.0, help="bound on one measurement (s)"
    )
    parser.add_argument("--deadline", type=float, default=1800.0, help="bound on the run (s)")
    parser.add_argument("--pin-cpu", type=int, help="run the servers and this client on one CPU")
    parser.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    args = parser.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    return args


def parse_servers(specs: Sequence[str] | None) -> list[ServerSpec]:
    servers = []
    for spec in specs or DEFAULT_SERVERS:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise SystemExit(f"--servers wants NAME=CMD, got {spec!r}")
        servers.append(ServerSpec(name, command))
    return servers


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "FAIL"
    if unit == "lines/s":
        return f"{value / 1e3:.1f}k" if value < 1e6 else f"{value / 1e6:.2f}M"
    return f"{value:.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    servers = parse_servers(args.servers)
    rows = args.rows.split(",")
    raise_nofile(args.idle_clients + args.clients + 200)
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    stop_at = time.monotonic() + args.deadline
    pinned = f"cpu{args.pin_cpu}" if args.pin_cpu is not None else "no"
    log(
        f"# chat bench: clients={args.clients} line-bytes={args.line_bytes}"
        f" duration={args.duration}s warmup={args.warmup}s idle-clients={args.idle_clients}"
        f" runs={args.runs} pinned={pinned} cpus={os.cpu_count()}"
    )
    for spec in servers:
        log(f"# server {spec.name}: {spec.command}")
    results: list[Result] = []
    skipped = 0
    for row in rows:
        unit, measure = ROWS[row]
        for run in range(args.runs):
            for spec in servers:
                if time.monotonic() > stop_at:
                    skipped += 1
                    continue
                try:
                    with running_server(spec, args.pin_cpu) as server:
                        result = measure(server, args)
                        if not server.alive():
                            raise RuntimeError(f"server died: {server.tail()}")
                except Exception as error:  # a failed cell, not a failed run
                    result = Result(spec.name, row, error=f"{type(error).__name__}: {error}")
                result.row = row
                results.append(result)
                if result.error:
                    log(f"run {run + 1}/{args.runs} {row} {spec.name} FAIL {result.error}")
                    continue
                extra = ""
                if result.srv_cpu_pct is not None:
                    extra = f" srv-cpu {result.srv_cpu_pct:.0f}% cli-cpu {result.cli_cpu_pct:.0f}%"
                log(
                    f"run {run + 1}/{args.runs} {row} {spec.name} {fmt(result.value, unit)}"
                    f" {unit} cpu/op {result.cpu_per_op_us:.2f}us{extra}"
                    f" {'; '.join(result.notes)}"
                )

    def median(name: str, row: str, attr: str) -> float | None:
        values = [
            getattr(r, attr) for r in results
            if r.server == name and r.row == row and r.error is None
        ]
        return statistics.median(values) if values else None

    base = servers[0].name
    header = ["row", "unit", *[s.name for s in servers]]
    header += [f"ratio {s.name}" for s in servers[1:]]
    header += [f"{s.name} cpu/op" for s in servers]
    header += [f"cpu/op ratio {s.name}" for s in servers[1:]]
    table = [header]
    summary = []
    for row in rows:
        unit = ROWS[row][0]
        medians = {s.name: median(s.name, row, "value") for s in servers}
        cpus = {s.name: median(s.name, row, "cpu_per_op_us") for s in servers}
        cells = [row if row != "idle" else f"idle-{args.idle_clients}", unit]
        cells += [fmt(medians[s.name], unit) for s in servers]
        ratios = []
        for spec in servers[1:]:
            b, o = medians[base], medians[spec.name]
            if b is None or o is None or not b or not o:
                ratios.append("-")
            elif row in LOWER_IS_BETTER:
                ratios.append(f"{b / o:.2f}")
            else:
                ratios.append(f"{o / b:.2f}")
        cells += ratios
        cells += [f"{cpus[s.name]:.2f}us" if cpus[s.name] else "-" for s in servers]
        for spec in servers[1:]:
            b, o = cpus[base], cpus[spec.name]
            cells.append(f"{o / b:.2f}" if b and o else "-")
        table.append(cells)
        summary.append(
            f"{cells[0]}=" + ",".join(f"{s.name}:{fmt(medians[s.name], unit)}" for s in servers)
            + (",ratio:" + ",".join(ratios) if ratios else "")
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    log("")
    for line in table:
        log("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    log(
        "# ratio > 1: the compared server is better (more lines/s; fewer bytes per idle"
        " client). cpu/op: server CPU per delivered line (per client set-up for idle);"
        " cpu/op ratio < 1: the compared server spends less."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": vars(args), "results": [asdict(r) for r in results]}, indent=2
        ))
    failures = sum(1 for r in results if r.error)
    log(
        f"SUMMARY chat runs={args.runs} clients={args.clients} pinned={pinned}"
        f" failures={failures} skipped={skipped} " + " ".join(summary)
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
