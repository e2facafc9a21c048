#!/usr/bin/env python3
"""Do the server's download processes and their curl clients share a CPU? (tftp_burst under perf)

A lock-step download is a ping-pong between the client and the process serving it. When
both run on one CPU, each wake-up is local; when they are on two, each one is a remote
wake-up with an inter-processor interrupt. This script runs ``bench/tftp_burst.py``
under ``perf record`` (the scheduler's ``sched_wakeup`` tracepoint, all CPUs) and tells,
for every server, how the wake-ups between each client and its server process went:

  pairs        (server process, curl) pairs that woke each other at least 100 times
               (one per download)
  wake-ups     wake-ups between the two, both ways, per download
  remote       the share of them that woke the other on another CPU than the waker's
  split        pairs with more than half of their wake-ups remote
  whole        pairs with at least 90 % of their wake-ups remote: split for (nearly)
               the whole download

A server process is any process that is neither curl nor a kernel thread; the load
generator's own wake-ups do not pair with a curl for 100 wake-ups.

Needs ``perf`` (Debian: linux-perf) and root (or a permissive perf_event_paranoid).

Examples:
  sudo .venv/bin/python bench/sched_pairs.py --runs 3
  sudo .venv/bin/python bench/sched_pairs.py --runs 3 --servers hpa,netsvc,nofollow \\
      --server "nofollow={python} -m twisted --reactor=epoll netsvc-tftp --root {root} \\
      --port {port} --interface {host} --no-cpu-follow"
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MIN_WAKEUPS = 100  # wake-ups that make a (server process, client) pair a download
_EVENT = re.compile(
    r"^\s*(?P<comm>.+?)\s+(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+[\d.]+:\s+sched:(?P<kind>\w+):"
    r"\s+comm=(?P<target_comm>.+?) pid=(?P<target>\d+) prio=\d+ (?P<rest>.*)$"
)


@dataclass
class Pair:
    wakeups: list[bool] = field(default_factory=list)  # remote or not, in order

    @property
    def remote(self) -> int:
        return sum(self.wakeups)


def pairs_of(script_lines: list[str]) -> dict[tuple[int, int], Pair]:
    """(server process, curl) -> its wake-ups, from ``perf script`` output."""
    pairs: dict[tuple[int, int], Pair] = defaultdict(Pair)
    for line in script_lines:
        match = _EVENT.match(line)
        if match is None or match["kind"] != "sched_wakeup":
            continue
        target_cpu = re.search(r"target_cpu=(\d+)", match["rest"])
        if target_cpu is None:
            continue
        remote = int(target_cpu[1]) != int(match["cpu"])
        waker, wakee = match["comm"].strip(), match["target_comm"].strip()
        if waker == "curl" and wakee != "curl" and not _kernel_thread(wakee):
            pairs[(int(match["target"]), int(match["pid"]))].wakeups.append(remote)
        elif wakee == "curl" and waker != "curl" and not _kernel_thread(waker):
            pairs[(int(match["pid"]), int(match["target"]))].wakeups.append(remote)
    return {key: pair for key, pair in pairs.items() if len(pair.wakeups) >= MIN_WAKEUPS}


def _kernel_thread(comm: str) -> bool:
    return comm.startswith(("swapper", "ksoftirqd", "kworker", "rcu_", "migration"))


def summary(pairs: dict[tuple[int, int], Pair]) -> str:
    if not pairs:
        return "no pairs"
    wakeups = sum(len(p.wakeups) for p in pairs.values())
    remote = sum(p.remote for p in pairs.values())
    split = sum(1 for p in pairs.values() if p.remote * 2 > len(p.wakeups))
    whole = sum(1 for p in pairs.values() if p.remote >= 0.9 * len(p.wakeups))
    return (
        f"pairs {len(pairs)}, wake-ups {wakeups / len(pairs):.0f} per download,"
        f" remote {100 * remote / wakeups:.1f} %, split {split}, whole {whole}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="bursts per server")
    parser.add_argument("--servers", default="hpa,netsvc", help="as tftp_burst.py's")
    parser.add_argument("--server", action="append", default=[], help="as tftp_burst.py's")
    parser.add_argument("--blksize", type=int, default=1468)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("sched_pairs: needs perf (Debian: linux-perf)", file=sys.stderr)
        return 2
    for server in args.servers.split(","):
        with tempfile.TemporaryDirectory(prefix="sched-pairs-") as scratch:
            data = Path(scratch) / "perf.data"
            burst = [
                sys.executable, str(BENCH_DIR / "tftp_burst.py"), "--runs", str(args.runs),
                "--servers", server, "--blksize", str(args.blksize),
            ]
            for spec in args.server:
                burst += ["--server", spec]
            recorded = subprocess.run(
                ["perf", "record", "-q", "-a", "-e", "sched:sched_wakeup", "-o", str(data),
                 "--", *burst],
                capture_output=True, text=True,
            )
            if recorded.returncode != 0:
                print(f"{server}: perf record failed: {recorded.stderr.strip()}")
                continue
            output = recorded.stdout.splitlines()
            timing = [line for line in output if line.startswith(server + " ")]
            script = subprocess.run(
                ["perf", "script", "-i", str(data), "-F", "comm,pid,cpu,time,event,trace"],
                capture_output=True, text=True, check=True,
            )
            pairs = pairs_of(script.stdout.splitlines())
            print(f"{server}: {summary(pairs)}")
            for line in timing:
                print(f"  tftp_burst median last exit: {line.split()[1]} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
