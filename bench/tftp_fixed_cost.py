"""What a burst of downloads costs the server, by process: its per-download CPU, measured.

The 50-client rows of ``bench/tftp_bench.py`` are a sum of CPU time on two CPUs (the
curls, their start, the server), and a server's CPU per download is what separates netsvc
from atftpd there (docs/benchmarks.rst). This script measures that CPU precisely instead
of the wall time: ``--bursts`` bursts of ``--clients`` curl downloads at once (as in the
row), each against a freshly started server (as in the bench, whose spare workers are
fresh too). The server runs in a ``cpuacct`` cgroup of its own (nanoseconds; threads and
processes that ended included: atftpd's threads, tftpd-hpa's forks; needs root). For
netsvc the CPU is also split by process from ``/proc/PID/schedstat``: the Twisted
``server``, the ``helper`` and its ``worker`` processes (which live through the run).

    .venv/bin/python bench/tftp_fixed_cost.py --servers netsvc,atftpd --bursts 9
    .venv/bin/python bench/tftp_fixed_cost.py --blksize 512

``--server NAME=CMD`` adds a server (``{python} {root} {port} {host}`` are filled in), e.g.
a worktree of an earlier commit for an A/B run; the servers alternate burst by burst.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVERS = {
    "netsvc": "{python} -m twisted --reactor=epoll netsvc-tftp --root {root} --port {port}"
    " --interface {host}",
    "hpa": "/opt/tftpd-hpa/usr/sbin/in.tftpd -L -a {host}:{port} -s {root} -u nobody",
    "atftpd": "atftpd --daemon --no-fork --bind-address {host} --port {port}"
    " --user nobody --group nogroup --logfile /dev/null {root}",
}
HOST = "127.0.0.1"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1, as on this machine
ROLES = ("server", "helper", "worker")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def curl_argv(port: int, name: str, blksize: int) -> list[str]:
    url = f"tftp://{HOST}:{port}/{name}"
    return ["curl", "-sS", "-o", "/dev/null", "-m", "20", "--tftp-blksize", str(blksize), url]


def curl_burst(port: int, name: str, blksize: int, clients: int) -> float:
    """``clients`` curls started at once; seconds until the last exits."""
    started = time.perf_counter()
    running = [subprocess.Popen(curl_argv(port, name, blksize)) for _ in range(clients)]
    if any(process.wait() != 0 for process in running):
        raise RuntimeError("a curl download failed")
    return time.perf_counter() - started


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (netsvc's helper and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):  # it ended meanwhile
                children.setdefault(parent_of(int(entry)), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def run_ns(pid: int) -> int:
    """CPU time of a process's main thread (all of netsvc's processes are single-threaded)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def one_burst(command: str, root: Path, blksize: int, clients: int) -> dict[str, float]:
    """Start the server, wait until it answers and is idle, run one burst: CPU µs per
    download, by role and in all, and the burst's wall time in ms."""
    port = free_port()
    line = command.format(python=sys.executable, root=root, port=port, host=HOST)
    group = CPUACCT / f"netsvc-fixed-cost-{os.getpid()}"
    group.mkdir(exist_ok=True)

    def join_group() -> None:  # in the child, before exec: all it starts counts too
        (group / "cgroup.procs").write_text(str(os.getpid()))

    server = subprocess.Popen(
        shlex.split(line), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=join_group,
    )
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(curl_argv(port, "probe", blksize), capture_output=True).returncode:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start: {line}")
            time.sleep(0.05)
        usage = group / "cpuacct.usage"
        while True:  # until the start (spare workers' rehearsals) is over
            mark = int(usage.read_text())
            time.sleep(0.2)
            if int(usage.read_text()) - mark < 2_000_000:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server busy for 15 s: {line}")
        before = {pid: run_ns(pid) for pid in process_tree(server.pid)}
        total_before = int(usage.read_text())
        wall = curl_burst(port, "payload", blksize, clients)
        time.sleep(0.1)  # the last reports and log events
        total_after = int(usage.read_text())
        figures = dict.fromkeys(ROLES, 0.0)
        for pid in process_tree(server.pid):
            kind = "server" if pid == server.pid else (
                "helper" if parent_of(pid) == server.pid else "worker")
            figures[kind] += (run_ns(pid) - before.get(pid, 0)) / clients / 1000
        figures["total"] = (total_after - total_before) / clients / 1000
        figures["wall"] = wall * 1000
        return figures
    finally:
        os.killpg(server.pid, 15)
        server.wait()
        for _ in range(50):  # the workers leave after the helper
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="netsvc,atftpd", help="comma list")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=CMD")
    parser.add_argument("--bursts", type=int, default=7, help="per server (default 7)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--blksize", type=int, default=1468)
    args = parser.parse_args()
    if os.geteuid() != 0 or not CPUACCT.is_dir():
        sys.exit("needs root and a cgroup v1 cpuacct hierarchy at " + str(CPUACCT))
    if not 1 <= args.clients <= 200 or not 1 <= args.bursts <= 100:
        parser.error("1-200 clients, 1-100 bursts")
    servers = dict(SERVERS)
    for item in args.server:
        key, _, value = item.partition("=")
        servers[key] = value
    names = args.servers.split(",")
    root = Path(tempfile.mkdtemp(prefix="tftp-fixed-cost-"))
    try:
        root.chmod(0o755)  # the C servers serve as nobody
        (root / "payload").write_bytes(os.urandom(args.size_kib * 1024))
        (root / "probe").write_bytes(b"x" * 100)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for index in range(args.bursts):
            for name in names:
                figures = one_burst(servers[name], root, args.blksize, args.clients)
                results[name].append(figures)
                print(f"[{index + 1}/{args.bursts}] {name}: "
                      + " ".join(f"{k} {v:.0f}" for k, v in figures.items()), flush=True)
        print(f"\nmedians of {args.bursts} bursts of {args.clients} x {args.size_kib} KiB at"
              f" blksize {args.blksize}: server CPU µs per download; wall ms per burst")
        keys = (*ROLES, "total", "wall")
        print(f"{'server':12}" + "".join(f"{key:>9}" for key in keys))
        for name in names:
            medians = [statistics.median(r[key] for r in results[name]) for key in keys]
            print(f"{name:12}" + "".join(f"{value:9.0f}" for value in medians))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
