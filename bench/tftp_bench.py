#!/usr/bin/env python3
"""TFTP benchmark: the netsvc TFTP server against the servers a user would pick instead.

Servers (``--servers``, comma list; every one is started by this script):
  hpa     tftpd-hpa:  in.tftpd -L -a HOST:PORT -s ROOT -u nobody  (C, one process per transfer)
  atftpd  atftpd --daemon --no-fork ... ROOT                       (C, one thread per transfer)
  pytftp  pytftp serve --listen HOST --port PORT ROOT              (the strongest Python server)
  netsvc  python -m twisted --reactor=epoll netsvc-tftp --root ROOT ...  (skipped, with a
          message, when the twistd plugin ``netsvc-tftp`` is not installed)
  netsvc-busypoll  the same on netsvc's busy-polling reactor (--reactor=netsvc-busypoll)
``--server NAME=CMD`` adds a server or replaces a built-in one. CMD is split like a shell line
(no shell runs it) after filling in {host} {port} {root} {python} (this interpreter) and
{bindir} (its directory, e.g. the venv's bin/).

Rows (``--rows``): each row is one client program downloading one file size, alone or many at
once, with one blksize and optionally an RFC 7440 windowsize. The defaults (S = --size-mib):
  single-SMiB-curl-512            one curl download of S MiB, blksize 512 (lock-step)
  single-SMiB-curl-1468           the same, blksize 1468
  concurrent-50x1MiB-curl-512     50 curl downloads of 1 MiB at once (wall time until all end)
  concurrent-50x1MiB-curl-1468    the same, blksize 1468
  atftp-SMiB-1468-w16             one atftp download of S MiB, blksize 1468, windowsize 16
  atftp-SMiB-1468-w64             the same, windowsize 64
Other rows are named by the same grammar:
  single-SIZE-CLIENT-BLKSIZE[-wN]   concurrent-COUNTxSIZE-CLIENT-BLKSIZE[-wN]
  CLIENT-SIZE-BLKSIZE[-wN]          (a single download); SIZE is like 64MiB or 512KiB.
An item of ``--rows`` that is not such a name selects the default rows containing it
(``--rows concurrent,atftp``).

Clients: curl, atftp, busybox (``busybox tftp -b``), tftp (tftp-hpa's client: blksize 512 and no
options only), tftpy (its TftpClient, run by this interpreter), pytftp (``pytftp get``), netsvc
(``python -m netsvc tftp get -v [--blksize B] [--windowsize W] HOST:PORT REMOTE LOCAL``;
unavailable until that command exists) and ``self``: each server's own client (pytftp -> pytftp,
netsvc -> netsvc, atftpd -> atftp; none for hpa), for client<->server pairs.
``--client NAME=CMD`` adds a client; placeholders {host} {port} {remote} {local} {blksize}
{windowsize} (1 for lock-step rows) {timeout} {python} {bindir}.

Measurement protocol:
  * One temp root holds the test files, generated once per run with random content; their sha256
    is recorded and every downloaded file is checked against it. A wrong or missing file makes
    the run a FAILURE, printed with "!!" and counted in the table.
  * A fresh server per measurement: started in its own process group on 127.0.0.1 and a free
    high UDP port, ready once a real RRQ for a small probe file is answered (and ACKed), and
    killed (SIGTERM, then SIGKILL, whole group) right after the measurement.
  * The order is: for each row, for each round (--runs), every server in --servers order
    (hpa, atftpd, pytftp, netsvc, hpa, ...), so machine noise hits all servers alike.
  * Time: wall time from starting the first client process to the exit of the last one.
  * Options: the blksize (and windowsize) the server granted is read from the client: curl -v
    output, the JSON of pytftp/tftpy, and for atftp an untimed ``--trace`` download of the probe
    file just before the timed one. A server that grants a smaller blksize than asked makes the
    run INVALID (a failure); a windowsize not granted is measured but flagged with "*".
  * Server CPU: run time of the server's session (all its process groups) over the
    measurement, from /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat's 10 ms
    ticks where there is no schedstat), plus (as root) the exit records of the kernel's
    taskstats interface for processes that ended meanwhile: tftpd-hpa forks one process per
    transfer and ignores SIGCHLD, so its children's CPU never shows in /proc (not even in the
    parent's cutime); netsvc's download helper does the same.
    An exit record carries the task's exact run time (cpu_run_virtual_total; filled here with
    kernel.task_delayacct=0 too) and its tick-sampled utime/stime, used only when the former is
    missing: those read 10 % low typically and half in some runs for tftpd-hpa's bursty
    children, so a figure that relies on them is marked "~", as is any figure taken without
    taskstats (not root: exited processes are not counted at all).
    CPU per MiB transferred (ms/MiB) is the steadier comparison on a noisy 2-core machine.
  * Client CPU: user+system of the client processes (getrusage of reaped children).

Report per row: median time, MiB/s, ratio to hpa (time; < 1 is faster), median server CPU and
ms/MiB, the granted options, ok/failed runs, and the bar for netsvc: fastest of all servers in
the row (median time <= every other server's median, no failed run). The last line of output
is ``SUMMARY tftp ...`` with every row. ``--json FILE`` writes every run and every median.

Pinning: ``--pin-cpu N`` pins this script to CPU N before anything starts, so every server and
client inherits it (same as ``taskset -c N`` on all of them). Lock-step TFTP on two vCPUs is
dominated by cross-CPU wake-ups; pinned, wall time becomes a per-packet CPU cost. Report both.

Bounds: every client has a timeout (--timeout, also curl's -m), server start and stop are
bounded, and the whole run stops starting measurements after --deadline seconds (cells not
reached are reported as skipped). Loopback only. Linux only (/proc, taskstats).

Examples (from the checkout):
  .venv/bin/python bench/tftp_bench.py               # everything, 3 rounds
  .venv/bin/python bench/tftp_bench.py --size-mib 4 --runs 1 --servers hpa,atftpd,pytftp
  .venv/bin/python bench/tftp_bench.py --rows atftp --pin-cpu 0 --json /tmp/tftp.json
  .venv/bin/python bench/tftp_bench.py --servers hpa \
      --rows single-64MiB-curl-1468,single-64MiB-tftpy-1468
  .venv/bin/python bench/tftp_bench.py --servers pytftp,netsvc --rows single-64MiB-self-1468-w16
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
MIB = 1024 * 1024
KIB = 1024
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PYTHON = sys.executable
BINDIR = str(Path(sys.executable).parent)
CLK_TCK = os.sysconf("SC_CLK_TCK")

HPA_TFTPD = "/opt/tftpd-hpa/usr/sbin/in.tftpd"
BUILTIN_SERVERS = {
    "hpa": (HPA_TFTPD if os.path.exists(HPA_TFTPD) else "in.tftpd")
    + " -L -a {host}:{port} -s {root} -u nobody",
    # atftpd's default --maxthread (100) is enough for the 50-client rows.
    "atftpd": "atftpd --daemon --no-fork --bind-address {host} --port {port}"
    " --user nobody --group nogroup --logfile /dev/null {root}",
    "pytftp": "{bindir}/pytftp serve --listen {host} --port {port} {root}",
    # --reactor=epoll: what twistd uses on Linux (`python -m twisted` alone picks another).
    "netsvc": "{python} -m twisted --reactor=epoll netsvc-tftp --root {root} --port {port}"
    " --interface {host}",
    # The same server on netsvc's busy-polling reactor (netsvc.busypoll).
    "netsvc-busypoll": "{python} -m twisted --reactor=netsvc-busypoll netsvc-tftp --root {root}"
    " --port {port} --interface {host}",
}
NETSVC_PLUGIN = "netsvc-tftp"
BASELINE = "hpa"
CANDIDATE = "netsvc"
# The client each server ships with, for the "self" client.
OWN_CLIENT = {
    "pytftp": "pytftp", "netsvc": "netsvc", "netsvc-busypoll": "netsvc", "atftpd": "atftp"
}


def is_candidate(server: str) -> bool:
    """netsvc itself, on whichever reactor (the bar compares it with the others)."""
    return server == CANDIDATE or server.startswith(CANDIDATE + "-")


def runs_netsvc(spec: ServerSpec) -> bool:
    """Whether a server's command runs netsvc's TFTP plugin: another build or setting of
    netsvc (``--server before=...``), which the bar does not count as a competitor."""
    return f" {NETSVC_PLUGIN} " in f" {spec.template} "


PROBE_FILE = "probe.bin"
PROBE_SIZE = 100  # one DATA block whatever the blksize
START_TIMEOUT = 20.0  # seconds for a server to bind and answer the probe
STOP_TIMEOUT = 3.0  # seconds after SIGTERM (then after SIGKILL)
PROBE_TIMEOUT = 10.0  # the untimed option probe of a client (atftp --trace)
SETTLE = 0.2  # seconds for per-transfer workers to end before reading the server's CPU
IDLE_QUIET = 0.1  # a started server is ready once it used no CPU for this long
CONNECT_TIMEOUT = 5  # curl --connect-timeout


def log(message: str = "") -> None:
    print(message, flush=True)


class BenchError(Exception):
    """A measurement could not be made (server did not start, client missing, ...)."""


# ----------------------------------------------------------------------------- sizes and rows


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(MiB|KiB)", text)
    if not match:
        raise ValueError(f"bad size {text!r} (want e.g. 64MiB or 512KiB)")
    return int(float(match.group(1)) * (MIB if match.group(2) == "MiB" else KIB))


def format_size(size: int) -> str:
    if size % MIB == 0:
        return f"{size // MIB}MiB"
    if size % KIB == 0:
        return f"{size // KIB}KiB"
    raise ValueError(f"size {size} is not a whole number of KiB")


@dataclass(frozen=True)
class Row:
    name: str
    client: str
    size: int  # bytes per download
    count: int  # downloads at once
    blksize: int
    windowsize: int | None  # None: do not ask (lock-step)

    @property
    def total_mib(self) -> float:
        return self.size * self.count / MIB

    def describe(self) -> str:
        what = (
            f"{self.count} x {format_size(self.size)}" if self.count > 1 else format_size(self.size)
        )
        window = f", windowsize {self.windowsize}" if self.windowsize else ""
        return f"{what}, client {self.client}, blksize {self.blksize}{window}"


_TAIL = r"(?P<blksize>\d+)(?:-w(?P<window>\d+))?"
_SIZE = r"(?P<size>\d+(?:\.\d+)?(?:MiB|KiB))"
ROW_PATTERNS = (
    re.compile(rf"single-{_SIZE}-(?P<client>\w+)-{_TAIL}"),
    re.compile(rf"concurrent-(?P<count>\d+)x{_SIZE}-(?P<client>\w+)-{_TAIL}"),
    re.compile(rf"(?P<client>[a-z]\w*)-{_SIZE}-{_TAIL}"),
)


def parse_row(name: str) -> Row | None:
    for pattern in ROW_PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            parts = match.groupdict()
            window = parts.get("window")
            count = int(parts.get("count") or 1)
            blksize = int(parts["blksize"])
            if count < 1 or not 8 <= blksize <= 65464:
                raise ValueError(f"row {name}: count >= 1 and blksize 8..65464 please")
            return Row(
                name=name,
                client=parts["client"],
                size=parse_size(parts["size"]),
                count=count,
                blksize=blksize,
                windowsize=int(window) if window else None,
            )
    return None


def default_rows(size_mib: float) -> list[Row]:
    size = format_size(int(size_mib * MIB))
    names = [
        f"single-{size}-curl-512",
        f"single-{size}-curl-1468",
        "concurrent-50x1MiB-curl-512",
        "concurrent-50x1MiB-curl-1468",
        f"atftp-{size}-1468-w16",
        f"atftp-{size}-1468-w64",
    ]
    return [row for row in map(parse_row, names) if row is not None]


def select_rows(wanted: str | None, size_mib: float) -> list[Row]:
    defaults = default_rows(size_mib)
    if not wanted:
        return defaults
    rows: list[Row] = []
    for item in (part.strip() for part in wanted.split(",")):
        if not item:
            continue
        row = parse_row(item)
        matches = [row] if row else [r for r in defaults if item in r.name]
        if not matches:
            raise SystemExit(f"--rows: {item!r} is neither a row name nor part of a default row")
        rows.extend(r for r in matches if r not in rows)
    return rows


# ----------------------------------------------------------------------------- test files


@dataclass(frozen=True)
class TestFile:
    name: str
    path: Path
    size: int
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_file(root: Path, name: str, size: int) -> TestFile:
    """Write ``size`` random bytes to ROOT/NAME (readable by servers that run as nobody)."""
    path = root / name
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, MIB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    path.chmod(0o644)
    return TestFile(name, path, size, digest.hexdigest())


# ----------------------------------------------------------------------------- ports and probes


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port() -> int:
    """A free UDP port above the ephemeral range (clients' ports never collide with it)."""
    low = _ephemeral_range()[1] + 1
    if low < 65000:
        for _ in range(200):
            port = random.randint(low, 65535)
            if udp_port_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1].endswith(suffix) for line in lines if line.strip()):
            return True
    return False


def tftp_probe(port: int, probe: TestFile, timeout: float) -> str | None:
    """Download the probe file with a plain RRQ (no options); None if it arrived intact.

    The one DATA block is ACKed so the server ends the transfer cleanly.
    """
    request = b"\x00\x01" + probe.name.encode() + b"\x00octet\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (HOST, port))
        try:
            packet, peer = sock.recvfrom(65536)
        except TimeoutError:
            return f"no answer to an RRQ within {timeout:.0f}s"
        except OSError as e:
            return f"RRQ failed: {e}"
        opcode = int.from_bytes(packet[:2], "big")
        if opcode == 5:
            message = packet[4:].rstrip(bytes(1)).decode(errors="replace")
            return f"TFTP error {packet[2:4].hex()}: {message}"
        if opcode != 3 or packet[2:4] != b"\x00\x01":
            return f"unexpected answer to an RRQ: {packet[:8].hex()}"
        sock.sendto(b"\x00\x04\x00\x01", peer)
        if hashlib.sha256(packet[4:]).hexdigest() != probe.sha256:
            return "probe file arrived corrupted"
    return None


# ----------------------------------------------------------------------------- CPU accounting


def _stat_fields(path: str) -> list[str] | None:
    """Fields of a /proc stat file after the command name (index 0 is field 3, "state")."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def group_cpu(sid: int, exact: set[int] | None = None) -> dict[int, float]:
    """{pid: CPU seconds} of every live process in session ``sid`` (the server's: it
    starts as a session leader; a helper process of its own may form another process
    group, as netsvc's download helper does).

    A process's time is the sum of its live threads' run time from
    ``/proc/PID/task/*/schedstat`` (nanoseconds; its pid goes into ``exact``), else its
    utime + stime (10 ms ticks, dead threads included). The ticks are truncated per
    process: over a pool of 50 download processes that put netsvc 25-40 % low in a 0.2 s
    figure, where schedstat is exact. Threads that end are counted from their taskstats
    exit records (GroupCpuMeter), children too (cutime is left out on purpose).
    """
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(f"/proc/{entry}/stat")
            if fields is not None and int(fields[3]) == sid:
                precise = _threads_run_time(entry)
                if precise is None:
                    found[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
                else:
                    found[int(entry)] = precise
                    if exact is not None:
                        exact.add(int(entry))
    return found


def _threads_run_time(pid: str) -> float | None:
    """Seconds the live threads of ``pid`` have run (schedstat), or None without it."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


@dataclass(frozen=True)
class TaskExit:
    tid: int
    tgid: int
    ppid: int
    cpu: float  # seconds, user + system, of this thread
    precise: bool  # False: the kernel's raw tick samples (no delay accounting)


class TaskExitListener:
    """Exit records of every task on the machine, from the kernel's taskstats (generic netlink).

    Needs CAP_NET_ADMIN; ``open()`` returns None when the kernel or the privileges say no.
    """

    _GENL_CTRL = 0x10
    _CTRL_CMD_GETFAMILY = 3
    _CTRL_ATTR_FAMILY_ID = 1
    _CTRL_ATTR_FAMILY_NAME = 2
    _CMD_GET = 1
    _CMD_ATTR_REGISTER_CPUMASK = 3
    _TYPE_PID = 1
    _TYPE_STATS = 3
    _TYPE_AGGR_PID = 4
    _NLMSG_ERROR = 2
    # struct taskstats offsets (linux/taskstats.h); ac_tgid exists from version 12 on.
    _OFF_CPU_COUNT = 16  # delay accounting: 0 when it is off
    _OFF_CPU_RUN_VIRTUAL_TOTAL = 72  # delay accounting: the task's exact run time, ns
    _OFF_PID_PPID = 128
    _OFF_UTIME_STIME = 152
    _OFF_TGID = 368
    _MIN_VERSION = 12

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.overflowed = False

    @staticmethod
    def _attr(kind: int, payload: bytes) -> bytes:
        length = 4 + len(payload)
        return struct.pack("HH", length, kind) + payload + bytes(-length % 4)

    @staticmethod
    def _attrs(buf: bytes) -> dict[int, bytes]:
        found = {}
        offset = 0
        while offset + 4 <= len(buf):
            length, kind = struct.unpack_from("HH", buf, offset)
            if length < 4:
                break
            found[kind & 0x3FFF] = buf[offset + 4 : offset + length]
            offset += (length + 3) & ~3
        return found

    @classmethod
    def _request(cls, sock: socket.socket, family: int, cmd: int, attrs: bytes) -> None:
        body = struct.pack("BBH", cmd, 1, 0) + attrs
        sock.send(struct.pack("IHHII", 16 + len(body), family, 1, 0, 0) + body)

    @classmethod
    def open(cls) -> TaskExitListener | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
        except (OSError, AttributeError):
            return None
        try:
            sock.settimeout(2.0)
            sock.bind((0, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MIB)
            name = cls._attr(cls._CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")
            cls._request(sock, cls._GENL_CTRL, cls._CTRL_CMD_GETFAMILY, name)
            reply = sock.recv(65536)
            if struct.unpack_from("H", reply, 4)[0] == cls._NLMSG_ERROR:
                raise OSError("no TASKSTATS family")
            family_id = cls._attrs(reply[20:]).get(cls._CTRL_ATTR_FAMILY_ID)
            if family_id is None:
                raise OSError("no TASKSTATS family id")
            cpus = f"0-{(os.cpu_count() or 1) - 1}\0".encode()
            mask = cls._attr(cls._CMD_ATTR_REGISTER_CPUMASK, cpus)
            cls._request(sock, struct.unpack("H", family_id[:2])[0], cls._CMD_GET, mask)
            sock.setblocking(False)
            time.sleep(0.01)
            listener = cls(sock)
            listener._check_registered()
            return listener
        except OSError:
            sock.close()
            return None

    def _check_registered(self) -> None:
        with contextlib.suppress(BlockingIOError):
            reply = self._sock.recv(65536)
            kind = struct.unpack_from("H", reply, 4)[0]
            if kind == self._NLMSG_ERROR and struct.unpack_from("i", reply, 16)[0] != 0:
                raise OSError("taskstats registration refused")

    def drain(self) -> list[TaskExit]:
        exits: list[TaskExit] = []
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return exits
            except OSError:  # ENOBUFS: records were dropped
                self.overflowed = True
                continue
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, offset)
                if length < 16:
                    break
                if kind != self._NLMSG_ERROR:
                    aggr = self._attrs(data[offset + 20 : offset + length]).get(self._TYPE_AGGR_PID)
                    stats = self._attrs(aggr).get(self._TYPE_STATS) if aggr else None
                    record = self._parse(stats) if stats else None
                    if record is not None:
                        exits.append(record)
                offset += (length + 3) & ~3

    def _parse(self, stats: bytes) -> TaskExit | None:
        if len(stats) < self._OFF_TGID + 4 or struct.unpack_from("H", stats)[0] < self._MIN_VERSION:
            return None
        tid, ppid = struct.unpack_from("II", stats, self._OFF_PID_PPID)
        utime, stime = struct.unpack_from("QQ", stats, self._OFF_UTIME_STIME)
        (tgid,) = struct.unpack_from("I", stats, self._OFF_TGID)
        (runs,) = struct.unpack_from("Q", stats, self._OFF_CPU_COUNT)
        (run_ns,) = struct.unpack_from("Q", stats, self._OFF_CPU_RUN_VIRTUAL_TOTAL)
        if runs and run_ns:
            return TaskExit(tid, tgid, ppid, run_ns / 1e9, precise=True)
        return TaskExit(tid, tgid, ppid, (utime + stime) / 1e6, precise=False)

    def close(self) -> None:
        self._sock.close()


class GroupCpuMeter:
    """Server CPU (all processes of one process group, those that end meanwhile included)."""

    # Above this share of tick-sampled exit records in the figure, it is marked approximate.
    APPROXIMATE_SHARE = 0.05

    def __init__(self, pgid: int, use_taskstats: bool) -> None:
        self.pgid = pgid
        self.listener = TaskExitListener.open() if use_taskstats else None
        self.start = group_cpu(pgid)
        self.exact = self.listener is not None

    def stop(self) -> float:
        """The group's CPU seconds since __init__; sets ``exact``."""
        live_threads_only: set[int] = set()  # their ended threads count from exit records
        end = group_cpu(self.pgid, live_threads_only)
        exits = self.listener.drain() if self.listener else []
        if self.listener:
            self.exact = not self.listener.overflowed
            self.listener.close()
        members = set(self.start) | set(end)
        dead: dict[int, list[TaskExit]] = {}
        ended_threads: list[TaskExit] = []
        for record in exits:
            if record.tgid in live_threads_only:
                if record.tid != record.tgid:
                    ended_threads.append(record)  # a thread (atftpd: one per transfer)
            elif record.tgid not in end:  # ticks of live processes include ended threads
                dead.setdefault(record.tgid, []).append(record)
        # A dead process belongs to the group if it was a member or its parent was (children
        # of children included: iterate until nothing more joins).
        counted: set[int] = set()
        grew = True
        while grew:
            grew = False
            for tgid, records in dead.items():
                if tgid not in counted and (
                    tgid in members or any(r.ppid in members for r in records)
                ):
                    counted.add(tgid)
                    members.add(tgid)
                    grew = True
        exited = [r for tgid in counted for r in dead[tgid]] + ended_threads
        total = max(0.0, sum(end.values()) + sum(r.cpu for r in exited) - sum(self.start.values()))
        sampled = sum(r.cpu for r in exited if not r.precise)
        if sampled > self.APPROXIMATE_SHARE * total:
            self.exact = False
        return total


# ----------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    name: str
    template: str

    def argv(self, port: int | str, root: Path) -> list[str]:
        fields = {"host": HOST, "port": port, "root": str(root), "python": PYTHON, "bindir": BINDIR}
        return [part.format(**fields) for part in shlex.split(self.template)]

    def unavailable(self) -> str | None:
        program = self.argv(0, Path("/"))[0]
        if shutil.which(program) is None:
            return f"{program} not found"
        if is_candidate(self.name) and f" {NETSVC_PLUGIN} " in f" {self.template} ":
            _, help_text = run_quietly([PYTHON, "-m", "twisted", "--help"], 60)
            if not re.search(rf"^\s*{re.escape(NETSVC_PLUGIN)}\s", help_text, re.MULTILINE):
                return (
                    f"the twistd plugin {NETSVC_PLUGIN} is not installed (python -m twisted --help)"
                )
        return None


def server_env() -> dict[str, str]:
    """The netsvc package and its twistd dropin are found from the checkout, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    return env


def run_quietly(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Exit status (None: did not run or timed out) and output of a short command."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=server_env(), cwd=REPO_DIR
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{e}"
    return done.returncode, done.stdout + done.stderr


class ServerProcess:
    def __init__(self, spec: ServerSpec, root: Path, log_path: Path) -> None:
        self.spec = spec
        self.port = pick_port()
        self.log_path = log_path
        self.log_file: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.log_file.write(f"--- {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
        self.log_file.flush()
        self.log_start = self.log_file.tell()
        self.proc = subprocess.Popen(
            spec.argv(self.port, root),
            cwd=REPO_DIR,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, probe: TestFile, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not udp_port_bound(self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"exited with status {self.proc.returncode}{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"did not bind UDP {self.port} within {timeout:.0f}s{self.tail()}")
            time.sleep(0.02)
        problem = tftp_probe(self.port, probe, max(1.0, deadline - time.monotonic()))
        if problem:
            raise BenchError(f"bound port {self.port} but {problem}{self.tail()}")
        self._wait_idle(deadline)

    def _wait_idle(self, deadline: float) -> None:
        """Wait until the server has finished starting: its processes (helpers and
        pre-started workers included) stay below a tick of CPU for :data:`IDLE_QUIET`
        seconds. A measurement must not pay for a server's start-up; a start that
        takes long is logged."""
        started = time.monotonic()
        before = sum(group_cpu(self.proc.pid).values())
        while time.monotonic() < deadline:
            time.sleep(IDLE_QUIET)
            now = sum(group_cpu(self.proc.pid).values())
            if now - before < 1.5 / CLK_TCK:  # at most a tick of noise
                waited = time.monotonic() - started
                if waited > 2 * IDLE_QUIET:
                    log(f"  ({self.spec.name} busy starting for {waited:.2f}s before it went idle)")
                return
            before = now
        log(f"  ({self.spec.name} never went idle after its start: measured anyway)")

    def tail(self, limit: int = 400) -> str:
        self.log_file.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f"; output: ...{text[-limit:]}" if text else ""

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            # Group members (per-transfer processes) may outlive the leader.
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)
        self.log_file.close()


@contextlib.contextmanager
def running_server(
    spec: ServerSpec, root: Path, probe: TestFile, log_dir: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(spec, root, log_dir / f"server-{spec.name}.log")
    try:
        server.wait_ready(probe, START_TIMEOUT)
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Download:
    port: int
    remote: str
    local: str
    blksize: int
    windowsize: int | None
    timeout: float


Granted = dict[str, int]  # {"blksize": n, "windowsize": n}


class Client:
    """One TFTP client program. Subclasses say how to run it and how to read what was granted."""

    name = "?"
    program = "?"
    windowed = False  # can ask for windowsize

    def unavailable(self) -> str | None:
        return None if shutil.which(self.program) else f"{self.program} not found"

    def cannot(self, row: Row) -> str | None:
        if row.windowsize and not self.windowed:
            return f"{self.name} cannot ask for windowsize"
        return None

    def argv(self, d: Download) -> list[str]:
        raise NotImplementedError

    def granted(self, output: str, d: Download) -> Granted | None:
        """The options the server granted, from the client's output; None if it cannot tell."""
        return None

    def probe_argv(self, d: Download) -> list[str] | None:
        """An untimed run whose output tells the granted options (when the timed one cannot)."""
        return None


class Curl(Client):
    name = program = "curl"

    def argv(self, d: Download) -> list[str]:
        return [
            "curl",
            "-v",
            "-s",
            "-S",
            "-o",
            d.local,
            "--tftp-blksize",
            str(d.blksize),
            "-m",
            str(int(d.timeout)),
            "--connect-timeout",
            str(CONNECT_TIMEOUT),
            f"tftp://{HOST}:{d.port}/{d.remote}",
        ]

    def granted(self, output: str, d: Download) -> Granted | None:
        match = re.search(r"blksize parsed from OACK \((\d+)\)", output)
        # Without an OACK blksize (or any OACK) the transfer runs at the default 512.
        return {"blksize": int(match.group(1)) if match else 512, "windowsize": 1}


class Atftp(Client):
    name = program = "atftp"
    windowed = True

    def argv(self, d: Download) -> list[str]:
        argv = ["atftp", "--option", f"blksize {d.blksize}"]
        if d.windowsize:
            argv += ["--option", f"windowsize {d.windowsize}"]
        return [*argv, "-g", "-r", d.remote, "-l", d.local, HOST, str(d.port)]

    def probe_argv(self, d: Download) -> list[str] | None:
        return [*self.argv(d), "--trace"]

    def granted(self, output: str, d: Download) -> Granted | None:
        if "sent RRQ" not in output:  # not the --trace probe
            return None
        match = re.search(r"received OACK <([^>]*)>", output)
        options = dict(re.findall(r"(\w+): (\d+)", match.group(1))) if match else {}
        return {
            "blksize": int(options.get("blksize", 512)),
            "windowsize": int(options.get("windowsize", 1)),
        }


class Busybox(Client):
    name = program = "busybox"

    def argv(self, d: Download) -> list[str]:
        return [
            "busybox",
            "tftp",
            "-b",
            str(d.blksize),
            "-g",
            "-r",
            d.remote,
            "-l",
            d.local,
            HOST,
            str(d.port),
        ]


class HpaTftp(Client):
    """tftp-hpa's client: sends no options, so only blksize 512 lock-step rows."""

    name = program = "tftp"

    def cannot(self, row: Row) -> str | None:
        if row.blksize != 512 or row.windowsize:
            return "tftp-hpa's client sends no options (blksize 512, lock-step only)"
        return None

    def argv(self, d: Download) -> list[str]:
        return ["tftp", "-m", "binary", HOST, str(d.port), "-c", "get", d.remote, d.local]

    def granted(self, output: str, d: Download) -> Granted | None:
        return {"blksize": 512, "windowsize": 1}


def _granted_from_json_or_text(output: str) -> Granted | None:
    """blksize/windowsize from a JSON line of the output, else from "blksize N" text."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = json.loads(line)
                options = data.get("options", {}) | data
                if "blksize" in options:
                    return {
                        "blksize": int(options["blksize"]),
                        "windowsize": int(options.get("windowsize", 1)),
                    }
    blksize = re.search(r"blksize\W+(\d+)", output)
    windowsize = re.search(r"windowsize\W+(\d+)", output)
    if blksize is None:
        return None
    return {
        "blksize": int(blksize.group(1)),
        "windowsize": int(windowsize.group(1)) if windowsize else 1,
    }


class Pytftp(Client):
    name = "pytftp"
    program = f"{BINDIR}/pytftp"
    windowed = True

    def argv(self, d: Download) -> list[str]:
        argv = [self.program, "get", "--json", "--port", str(d.port), "--blksize", str(d.blksize)]
        if d.windowsize:
            argv += ["--windowsize", str(d.windowsize)]
        return [*argv, HOST, d.remote, d.local]

    def granted(self, output: str, d: Download) -> Granted | None:
        return _granted_from_json_or_text(output)


class NetsvcClient(Client):
    """``python -m netsvc tftp get -v`` (it prints ``blksize=N windowsize=N``)."""

    name = "netsvc"
    program = PYTHON
    windowed = True

    def unavailable(self) -> str | None:
        status, _ = run_quietly([PYTHON, "-m", "netsvc", "tftp", "get", "--help"], 60)
        if status != 0:
            return "`python -m netsvc tftp get` does not exist (yet)"
        return None

    def argv(self, d: Download) -> list[str]:
        argv = [PYTHON, "-m", "netsvc", "tftp", "get", "-v", "--blksize", str(d.blksize)]
        if d.windowsize:
            argv += ["--windowsize", str(d.windowsize)]
        return [*argv, f"{HOST}:{d.port}", d.remote, d.local]

    def granted(self, output: str, d: Download) -> Granted | None:
        return _granted_from_json_or_text(output)


TFTPY_SCRIPT = """\
import json, logging, sys
import tftpy
logging.getLogger("tftpy").setLevel(logging.WARNING)  # it logs every packet at INFO
host, port, remote, local, blksize = sys.argv[1:6]
client = tftpy.TftpClient(host, int(port), options={"blksize": int(blksize)})
client.download(remote, local, timeout=5)
print(json.dumps({k: int(v) for k, v in client.context.options.items()}))
"""


class Tftpy(Client):
    name = "tftpy"
    program = PYTHON

    def unavailable(self) -> str | None:
        return (
            None
            if run_quietly([PYTHON, "-c", "import tftpy"], 60)[0] == 0
            else "tftpy not importable"
        )

    def argv(self, d: Download) -> list[str]:
        return [PYTHON, "-c", TFTPY_SCRIPT, HOST, str(d.port), d.remote, d.local, str(d.blksize)]

    def granted(self, output: str, d: Download) -> Granted | None:
        return _granted_from_json_or_text(output)


class TemplateClient(Client):
    """A client given as --client NAME=CMD."""

    windowed = True

    def __init__(self, name: str, template: str) -> None:
        self.name = name
        self.template = template
        self.program = shlex.split(template)[0].format(python=PYTHON, bindir=BINDIR)

    def argv(self, d: Download) -> list[str]:
        fields = {
            "host": HOST,
            "port": d.port,
            "remote": d.remote,
            "local": d.local,
            "blksize": d.blksize,
            "windowsize": d.windowsize or 1,
            "timeout": int(d.timeout),
            "python": PYTHON,
            "bindir": BINDIR,
        }
        return [part.format(**fields) for part in shlex.split(self.template)]

    def granted(self, output: str, d: Download) -> Granted | None:
        return _granted_from_json_or_text(output)


BUILTIN_CLIENTS: dict[str, Client] = {
    c.name: c for c in (Curl(), Atftp(), Busybox(), HpaTftp(), Pytftp(), NetsvcClient(), Tftpy())
}


def client_for(row: Row, server: str, clients: dict[str, Client]) -> Client | str:
    """The client of ``row`` against ``server``, or why there is none."""
    name = OWN_CLIENT.get(server, "") if row.client == "self" else row.client
    if not name:
        return f"{server} has no client of its own"
    client = clients.get(name)
    if client is None:
        return f"unknown client {name!r}"
    return client.cannot(row) or client_unavailable(client) or client


_UNAVAILABLE: dict[str, str | None] = {}


def client_unavailable(client: Client) -> str | None:
    """``client.unavailable()``, asked once per run (it may start a process)."""
    if client.name not in _UNAVAILABLE:
        _UNAVAILABLE[client.name] = client.unavailable()
    return _UNAVAILABLE[client.name]


# ----------------------------------------------------------------------------- one measurement


@dataclass
class RunResult:
    row: str
    server: str
    round: int
    ok: bool
    wall: float | None = None
    server_cpu: float | None = None
    cpu_exact: bool = True
    client_cpu: float | None = None
    granted: Granted | None = None
    window_flag: bool = False  # asked windowsize not granted
    good_files: int = 0
    problems: list[str] = field(default_factory=list)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass
class ClientsRun:
    """What :func:`run_clients` saw: times from the first start, exit statuses, rusage."""

    wall: float  # until the last client exited (or the timeout)
    codes: list[int | None]  # exit statuses; None: killed at the timeout
    launched: float = 0.0  # until the last client was started
    exits: list[float] = field(default_factory=list)  # each exit, in the order seen
    user: float = 0.0  # CPU seconds of the clients that exited, user and system
    system: float = 0.0
    sleeps: int = 0  # their voluntary context switches (waits for a packet asleep)


def run_clients(argvs: Sequence[list[str]], outputs: Sequence[Path], timeout: float) -> ClientsRun:
    """Start every client at once and wait until the last exits.

    A client still running after ``timeout`` is killed and its status is None.
    """
    logs = [open(str(out) + ".log", "wb") for out in outputs]  # noqa: SIM115 (closed below)
    procs: list[subprocess.Popen[bytes]] = []
    started = time.perf_counter()
    try:
        for argv, log_file in zip(argvs, logs, strict=True):
            procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
                )
            )
        run = ClientsRun(wall=0.0, codes=[], launched=time.perf_counter() - started)
        # Wait on pidfds: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would
        # quantize the wall time.
        waiting = {os.pidfd_open(proc.pid): index for index, proc in enumerate(procs)}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = started + timeout
        try:
            while waiting and (left := deadline - time.perf_counter()) > 0:
                for fd, _ in poller.poll(left * 1000):
                    run.exits.append(time.perf_counter() - started)
                    poller.unregister(fd)
                    os.close(fd)
                    del waiting[fd]
            run.wall = time.perf_counter() - started
        finally:
            for fd in waiting:
                os.close(fd)
        timed_out = set(waiting.values())
        for index, proc in enumerate(procs):
            if index in timed_out:
                run.codes.append(None)
                continue
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            run.codes.append(proc.returncode)
            run.user += usage.ru_utime
            run.system += usage.ru_stime
            run.sleeps += usage.ru_nvcsw
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log_file in logs:
            log_file.close()
    return run


def last_words(output: str) -> str:
    """The lines of a client's output that say why it failed (errors, else the last line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|curl: \(|timeout|refused", line, re.I)]
    return " / ".join((errors or lines)[-2:])[-240:]


def measure(
    row: Row,
    spec: ServerSpec,
    client: Client,
    round_no: int,
    files: dict[int, TestFile],
    probe: TestFile,
    workdir: Path,
    timeout: float,
    use_taskstats: bool,
) -> RunResult:
    result = RunResult(row=row.name, server=spec.name, round=round_no, ok=False)
    source = files[row.size]
    out_dir = workdir / "out"
    outputs = [out_dir / f"{spec.name}-{i}.bin" for i in range(row.count)]
    try:
        with running_server(spec, workdir / "root", probe, workdir) as server:
            downloads = [
                Download(server.port, source.name, str(out), row.blksize, row.windowsize, timeout)
                for out in outputs
            ]
            probe_argv = client.probe_argv(
                Download(
                    server.port,
                    probe.name,
                    str(out_dir / "probe.out"),
                    row.blksize,
                    row.windowsize,
                    timeout,
                )
            )
            if probe_argv:
                result.granted = client.granted(
                    run_quietly(probe_argv, PROBE_TIMEOUT)[1], downloads[0]
                )
            time.sleep(SETTLE)
            for out in outputs:
                _remove(out)
            meter = GroupCpuMeter(server.proc.pid, use_taskstats)
            client_cpu = _children_cpu()
            run = run_clients([client.argv(d) for d in downloads], outputs, timeout)
            result.wall, codes = run.wall, run.codes
            time.sleep(SETTLE)
            result.client_cpu = _children_cpu() - client_cpu
            result.server_cpu = meter.stop()
            result.cpu_exact = meter.exact
    except BenchError as e:
        result.problems.append(f"server {spec.name} {e}")
        return result
    # Verify every file and read the granted options from every client's output.
    seen: set[tuple[int, int]] = set()
    failures: Counter[str] = Counter()
    for out, download, code in zip(outputs, downloads, codes, strict=True):
        log_path = Path(str(out) + ".log")
        output = log_path.read_text(errors="replace") if log_path.exists() else ""
        if not out.exists():
            content = "no output file"
        elif out.stat().st_size != source.size or sha256_of(out) != source.sha256:
            content = f"WRONG CONTENT ({out.stat().st_size} bytes, sha256 mismatch)"
        else:
            content = ""
        _remove(out)
        _remove(log_path)
        status = "killed at the timeout" if code is None else f"exit status {code}" if code else ""
        if content or status:
            failures[", ".join(filter(None, (status, content))) + f": {last_words(output)}"] += 1
            continue
        result.good_files += 1
        # Options only from complete downloads: a refused client saw no OACK.
        granted = client.granted(output, download)
        if granted:
            seen.add((granted["blksize"], granted["windowsize"]))
            result.granted = granted
    result.problems += [f"{n}/{row.count} clients: {what}" for what, n in failures.items()]
    if len(seen) > 1:
        result.problems.append(f"clients were granted different options: {sorted(seen)}")
    if result.granted and result.granted["blksize"] != row.blksize:
        result.problems.append(
            f"INVALID: server granted blksize {result.granted['blksize']}, asked {row.blksize}"
        )
    if result.granted and row.windowsize and result.granted["windowsize"] != row.windowsize:
        result.window_flag = True
    result.ok = not result.problems and result.good_files == row.count
    return result


# ----------------------------------------------------------------------------- report


@dataclass
class Cell:
    """The medians of one (row, server)."""

    runs: int = 0
    failed: int = 0
    wall: float | None = None
    mib_per_s: float | None = None
    server_cpu: float | None = None
    ms_per_mib: float | None = None
    client_cpu: float | None = None
    cpu_exact: bool = True
    granted: str = "?"
    window_flag: bool = False
    note: str = ""


def summarize(row: Row, results: list[RunResult]) -> Cell:
    cell = Cell(runs=len(results), failed=sum(not r.ok for r in results))
    good = [r for r in results if r.ok and r.wall]
    if not good:
        return cell
    cell.wall = statistics.median(r.wall for r in good if r.wall)
    cell.mib_per_s = row.total_mib / cell.wall
    cpus = [r.server_cpu for r in good if r.server_cpu is not None]
    if cpus:
        cell.server_cpu = statistics.median(cpus)
        cell.ms_per_mib = 1000 * cell.server_cpu / row.total_mib
    client_cpus = [r.client_cpu for r in good if r.client_cpu is not None]
    cell.client_cpu = statistics.median(client_cpus) if client_cpus else None
    cell.cpu_exact = all(r.cpu_exact for r in good)
    granted = good[-1].granted
    if granted:
        cell.granted = f"b{granted['blksize']}" + (
            f"w{granted['windowsize']}" if row.windowsize else ""
        )
    cell.window_flag = any(r.window_flag for r in good)
    return cell


def bar_verdict(row: Row, cells: dict[str, Cell], variants: frozenset[str]) -> str:
    """netsvc's bar for the row: fastest of all servers, with no failed run; judged for
    each netsvc server (plain epoll reactor, busy-polling reactor) against the others,
    leaving out ``variants`` (other builds or settings of netsvc)."""
    others = {
        name: c.wall
        for name, c in cells.items()
        if not is_candidate(name) and name not in variants and c.wall is not None
    }
    verdicts = []
    for name, mine in cells.items():
        if not is_candidate(name):
            continue
        if mine.note:
            verdicts.append(f"{name}:n/a(not-run)")
        elif mine.failed or mine.wall is None:
            verdicts.append(f"{name}:MISSED(failed runs)")
        elif not others:
            verdicts.append(f"{name}:n/a(no other server)")
        else:
            best = min(others, key=lambda other: others[other])
            ratio = mine.wall / others[best]
            verdicts.append(f"{name}:{'MET' if ratio <= 1.0 else 'MISSED'}(x{ratio:.2f} vs {best})")
    return " ".join(verdicts) if verdicts else f"n/a({CANDIDATE}-not-run)"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(headers: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) for column in zip(headers, *lines, strict=True)]
    text = []
    for line in [headers, *lines]:
        cells = (
            x.rjust(w) if i else x.ljust(w)
            for i, (x, w) in enumerate(zip(line, widths, strict=False))
        )
        text.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(text)


def report(
    rows: list[Row],
    servers: list[str],
    results: list[RunResult],
    skipped: dict[str, str],
    settings: argparse.Namespace,
    variants: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    log()
    log("=" * 100)
    pinned = "no" if settings.pin_cpu is None else f"cpu{settings.pin_cpu}"
    log(
        f"TFTP results: median of {settings.runs} round(s), pinned={pinned}; "
        f"x{BASELINE} = time / {BASELINE}'s time (< 1 is faster); "
        "ms/MiB = server CPU per MiB delivered"
    )
    summary_parts = []
    data: dict[str, Any] = {"rows": {}}
    for row in rows:
        cells: dict[str, Cell] = {}
        for server in servers:
            mine = [r for r in results if r.row == row.name and r.server == server]
            cells[server] = summarize(row, mine)
            if not mine:
                cells[server].note = (
                    skipped.get(f"{row.name}/{server}") or skipped.get(server) or "skipped"
                )
        base = cells.get(BASELINE)
        base_wall = base.wall if base else None
        lines = []
        parts = []
        not_run = []
        for server in servers:
            c = cells[server]
            if c.note:
                not_run.append(f"  {server}: n/a ({c.note})")
                parts.append(f"{server}=n/a")
                continue
            ratio = c.wall / base_wall if c.wall and base_wall else None
            cpu = fmt(c.ms_per_mib, ".1f") + ("" if c.cpu_exact else "~")
            lines.append(
                [
                    server,
                    fmt(c.wall, ".3f"),
                    fmt(c.mib_per_s, ".1f"),
                    fmt(ratio, ".2f"),
                    fmt(c.server_cpu, ".2f"),
                    cpu,
                    fmt(c.client_cpu, ".2f"),
                    c.granted + ("*" if c.window_flag else ""),
                    f"{c.runs - c.failed}/{c.runs}",
                    "FAILED" if c.failed else "",
                ]
            )
            if c.wall is None:
                parts.append(f"{server}=FAIL({c.failed}/{c.runs})")
            else:
                parts.append(
                    f"{server}={c.wall:.3f}s({c.mib_per_s:.1f}MiB/s,x{fmt(ratio, '.2f')},"
                    f"{cpu}ms/MiB,{c.granted}{'*' if c.window_flag else ''}"
                    f"{f',FAILED{c.failed}' if c.failed else ''})"
                )
        verdict = bar_verdict(row, cells, variants)
        log()
        log(f"{row.name}  ({row.describe()})   bar for {CANDIDATE}: {verdict}")
        headers = [
            "server",
            "median_s",
            "MiB/s",
            f"x{BASELINE}",
            "srv_cpu_s",
            "ms/MiB",
            "cli_cpu_s",
            "granted",
            "ok",
            "",
        ]
        if lines:
            log(render_table(headers, lines))
        for line in not_run:
            log(line)
        summary_parts.append(f"{row.name}: {' '.join(parts)} bar={verdict}")
        data["rows"][row.name] = {
            "row": asdict(row),
            "bar": verdict,
            "cells": {server: asdict(cell) for server, cell in cells.items()},
        }
    log()
    log(
        "'*' after granted: the server did not grant the windowsize asked (measured anyway, with\n"
        "the window it granted). '~' after ms/MiB: approximate; processes that ended during the\n"
        "run (tftpd-hpa's per-transfer children) were counted from tick-sampled exit records\n"
        "(off by up to 2x in single runs), or not at all (no taskstats: not root)"
    )
    log(f"SUMMARY tftp runs={settings.runs} pinned={pinned} | " + " | ".join(summary_parts))
    return data


# ----------------------------------------------------------------------------- main


class StopRequestedError(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise StopRequestedError(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        epilog="See the module docstring for the protocol.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--servers",
        default="hpa,atftpd,pytftp,netsvc,netsvc-busypoll",
        help="comma list of servers, in measuring order (default: %(default)s)",
    )
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="add (or replace) a server; placeholders {host} {port} {root} {python} {bindir}",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="add (or replace) a client; placeholders {host} {port} {remote} {local} {blksize} "
        "{windowsize} {timeout} {python} {bindir}",
    )
    parser.add_argument(
        "--rows", help="comma list of row names, or parts of default row names (default: all)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="rounds; the table gives medians (default: %(default)s)"
    )
    parser.add_argument(
        "--size-mib", type=float, default=64, help="file size of the single-download default rows"
    )
    parser.add_argument(
        "--pin-cpu", type=int, metavar="N", help="run everything on CPU N (like taskset -c N)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120,
        help="seconds per measurement, all clients (and curl -m)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=3600,
        help="seconds for the whole run (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every run and the medians as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (files, server logs)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mib <= 0 or args.timeout <= 0:
        parser.error("--runs, --size-mib and --timeout must be positive")
    return args


def build_servers(args: argparse.Namespace) -> list[ServerSpec]:
    templates = dict(BUILTIN_SERVERS)
    order = [name.strip() for name in args.servers.split(",") if name.strip()]
    for spec in args.server:
        name, sep, template = spec.partition("=")
        if not sep or not name or not template:
            raise SystemExit(f"--server wants NAME=CMD, got {spec!r}")
        templates[name] = template
        if name not in order:
            order.append(name)
    unknown = [name for name in order if name not in templates]
    if unknown:
        raise SystemExit(
            f"unknown server(s) {unknown}; known: {sorted(templates)} (or add --server NAME=CMD)"
        )
    return [ServerSpec(name, templates[name]) for name in order]


def build_clients(args: argparse.Namespace) -> dict[str, Client]:
    clients = dict(BUILTIN_CLIENTS)
    for spec in args.client:
        name, sep, template = spec.partition("=")
        if not sep or not re.fullmatch(r"[a-z]\w*", name) or not template:
            raise SystemExit(f"--client wants NAME=CMD with a lower-case word NAME, got {spec!r}")
        clients[name] = TemplateClient(name, template)
    return clients


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    rows = select_rows(args.rows, args.size_mib)
    specs = build_servers(args)
    clients = build_clients(args)

    skipped: dict[str, str] = {}  # "server" or "row/server" -> why
    servers = []
    for spec in specs:
        why = spec.unavailable()
        if why:
            log(f"# SKIPPING server {spec.name}: {why}")
            skipped[spec.name] = why
        servers.append(spec)
    runnable = [spec for spec in servers if spec.name not in skipped]
    use_taskstats = TaskExitListener.open() is not None
    if not use_taskstats:
        log(
            "# taskstats unavailable (not root?): the CPU of per-transfer processes that exit "
            "is not counted (~)"
        )

    workdir = Path(tempfile.mkdtemp(prefix="tftp-bench-"))
    workdir.chmod(0o755)  # servers that drop privileges to nobody must reach the files
    root = workdir / "root"
    root.mkdir(mode=0o755)
    (workdir / "out").mkdir()
    results: list[RunResult] = []
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    accounting = "/proc+taskstats" if use_taskstats else "/proc only (~)"
    try:
        probe = make_file(root, PROBE_FILE, PROBE_SIZE)
        files = {
            size: make_file(root, f"file-{format_size(size)}.bin", size)
            for size in sorted({r.size for r in rows})
        }
        log(
            f"# tftp_bench: {len(rows)} row(s) x {len(runnable)} server(s) x {args.runs} round(s); "
            f"pinned={'no' if args.pin_cpu is None else f'cpu{args.pin_cpu}'}; "
            f"server cpu from {accounting}; work dir {workdir}"
        )
        for f in files.values():
            log(f"#   {f.name}: {f.size} bytes, sha256 {f.sha256}")
        for spec in runnable:
            log(f"#   server {spec.name}: {shlex.join(spec.argv('PORT', root))}")
        for row_index, row in enumerate(rows, 1):
            for round_no in range(1, args.runs + 1):
                for spec in runnable:
                    key = f"{row.name}/{spec.name}"
                    client = client_for(row, spec.name, clients)
                    if isinstance(client, str):
                        if key not in skipped:
                            log(f"# {row.name} {spec.name}: n/a: {client}")
                        skipped[key] = client
                        continue
                    if time.monotonic() - started > args.deadline:
                        skipped.setdefault(key, f"deadline ({args.deadline:.0f}s) reached")
                        continue
                    result = measure(
                        row,
                        spec,
                        client,
                        round_no,
                        files,
                        probe,
                        workdir,
                        args.timeout,
                        use_taskstats,
                    )
                    results.append(result)
                    describe_run(row, row_index, len(rows), round_no, args.runs, result)
    except (KeyboardInterrupt, StopRequestedError) as e:
        log(f"# interrupted ({e or 'Ctrl-C'}): reporting what was measured")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if args.keep:
            log(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    variants = frozenset(
        spec.name for spec in servers if runs_netsvc(spec) and not is_candidate(spec.name)
    )
    data = report(rows, [spec.name for spec in servers], results, skipped, args, variants)
    if args.json:
        data |= {"settings": vars(args), "runs": [asdict(r) for r in results], "skipped": skipped}
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
    return 1 if any(not r.ok for r in results) else 0


def describe_run(
    row: Row, row_index: int, rows: int, round_no: int, rounds: int, r: RunResult
) -> None:
    head = f"[row {row_index}/{rows} round {round_no}/{rounds}] {row.name} {r.server}:"
    if r.wall is None:
        log(f"!! {head} FAILED: {'; '.join(r.problems)}")
        return
    granted = ",".join(f"{k}={v}" for k, v in (r.granted or {}).items()) or "?"
    cpu = (
        "-"
        if r.server_cpu is None
        else f"{r.server_cpu:.2f}s ({1000 * r.server_cpu / row.total_mib:.1f} ms/MiB)"
    )
    line = (
        f"{head} {r.wall:.3f}s {row.total_mib / r.wall:.1f} MiB/s "
        f"srv_cpu {cpu}{'' if r.cpu_exact else '~'} cli_cpu {fmt(r.client_cpu, '.2f')}s "
        f"granted {granted}{' (windowsize NOT granted)' if r.window_flag else ''} "
        f"ok {r.good_files}/{row.count}"
    )
    if r.ok:
        log(line)
    else:
        log(f"!! {line} FAILED: {'; '.join(r.problems)}")


if __name__ == "__main__":
    sys.exit(main())
