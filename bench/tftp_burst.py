#!/usr/bin/env python3
"""Where a burst of curl downloads spends its time: the anatomy of tftp_bench's 50-client rows.

tftp_bench.py gives one figure per burst (wall time until the last client exits). This
script splits it, for every server, in one run (fresh server per measurement, servers
alternating, medians of --runs):

  launched   seconds until the last client process was started (the load generator's
             own pace: 50 fork+exec of curl compete with the downloads for the CPUs)
  exits      when the clients exited: the 50 % and 80 % quantiles and the last one
             (seconds from the first start; an exit before the last start counts as then)
  tail       last exit - launched: the downloads still running once every client started
  curl CPU   user and system CPU of all clients, and their voluntary context switches
             (each one a client that went to sleep waiting for a packet)
  server CPU the server's whole session (processes that ended meanwhile included, as root)
  softirq    CPU-seconds of softirq work during the burst (loopback packet delivery and
             the wake-ups it does), from /proc/stat (10 ms ticks, all CPUs). Where the
             kernel has no IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING, off on many
             distributions) this time is also in the process that was running, i.e. in
             the clients' and the server's figures
  other      the CPUs' busy time that was neither the clients nor the server: the load
             generator, kernel threads, other tenants of the machine
  dgrams     UDP datagrams sent per download, both directions (/proc/net/snmp
             OutDatagrams; every datagram of the network namespace counts): at blksize
             1468, 1 MiB is 715 blocks, so ~1,433 with no loss; the rest are
             retransmissions, by the server's timer or the client's
  drops      datagrams dropped for a full receive buffer (RcvbufErrors)
  ipis       inter-processor interrupts per download (/proc/interrupts: rescheduling and
             function-call IPIs of all CPUs; anything on the machine counts): a wake-up
             of a task on the other CPU sends one, a wake-up on the waker's CPU none
  idle       CPU-seconds the CPUs had nothing to run: time lost to waiting, not to work

``--steady`` runs fewer, longer downloads instead (default 20 x 8 MiB): the starting
phase is then a small part, and the figures show the servers' steady state under load.

Servers: hpa and netsvc (tftp_bench.py's commands; ``--server NAME=CMD`` adds one, with
the same placeholders). Each burst goes to a server started for it, as in tftp_bench.py:
netsvc's per-address request limit (50/s after a burst of 100) would hold back repeated
bursts from one address, as it must a real flood.

Examples:
  .venv/bin/python bench/tftp_burst.py --runs 7               # 50 x 1 MiB at blksize 1468
  .venv/bin/python bench/tftp_burst.py --blksize 512 --runs 5
  .venv/bin/python bench/tftp_burst.py --steady --runs 5      # 20 x 8 MiB
  .venv/bin/python bench/tftp_burst.py --clients 100 --size-kib 4 --runs 9  # small files
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tftp_bench as tb  # the bench's servers, files and CPU meter

CLIENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Burst:
    launched: float
    exits: list[float]  # sorted, seconds from the first start
    curl_user: float
    curl_system: float
    curl_sleeps: int
    server_cpu: float
    idle: float  # CPU-seconds no CPU had anything to run, from the first start to the last exit
    softirq: float  # CPU-seconds of softirq work (packet delivery), see the module docstring
    busy: float  # CPU-seconds all CPUs worked, on anything (this machine's other tenants too)
    datagrams: int  # UDP datagrams sent during the burst, by anyone
    drops: int  # UDP datagrams dropped for a full receive buffer
    ipis: int  # rescheduling and function-call IPIs during the burst (all CPUs)

    @property
    def unaccounted(self) -> float:
        """Busy time that was neither the clients nor the server."""
        return self.busy - self.curl_user - self.curl_system - self.server_cpu

    @property
    def tail(self) -> float:
        return self.exits[-1] - self.launched


def cpu_times() -> tuple[float, float, float]:
    """CPU-seconds of all CPUs since boot (/proc/stat): idle (with iowait), softirq, busy."""
    with open("/proc/stat") as f:
        ticks = [int(field) for field in f.readline().split()[1:9]]
    idle, softirq = ticks[3] + ticks[4], ticks[6]
    return idle / tb.CLK_TCK, softirq / tb.CLK_TCK, (sum(ticks) - idle) / tb.CLK_TCK


def udp_counters() -> tuple[int, int]:
    """UDP datagrams sent and dropped for a full receive buffer, since boot (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        names, values = [line.split() for line in f if line.startswith("Udp:")][:2]
    fields = dict(zip(names[1:], map(int, values[1:]), strict=True))
    return fields["OutDatagrams"], fields["RcvbufErrors"]


def ipi_count() -> int:
    """Rescheduling and function-call inter-processor interrupts since boot, all CPUs."""
    total = 0
    with open("/proc/interrupts") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() in ("RES", "CAL"):
                total += sum(int(field) for field in rest.split() if field.isdigit())
    return total


def run_burst(
    port: int, count: int, blksize: int, remote: str, out: Path
) -> tuple[tb.ClientsRun, tuple[float, float, float, int, int, int]]:
    """Start ``count`` curls at once (tftp_bench's run_clients): what they did, the CPUs'
    idle, softirq and busy time, the UDP datagrams sent and dropped, and the IPIs, until the
    last exit."""
    argvs = [
        [
            "curl", "-s", "-S", "-o", str(out / f"f{index}"), "--tftp-blksize", str(blksize),
            "-m", str(int(CLIENT_TIMEOUT)), f"tftp://{tb.HOST}:{port}/{remote}",
        ]
        for index in range(count)
    ]
    idle, softirq, busy = cpu_times()
    sent, dropped = udp_counters()
    ipis = ipi_count()
    run = tb.run_clients(argvs, [out / f"f{index}" for index in range(count)], CLIENT_TIMEOUT + 5)
    idle_after, softirq_after, busy_after = cpu_times()
    sent_after, dropped_after = udp_counters()
    ipis_after = ipi_count()
    failed = [code for code in run.codes if code != 0]
    if failed:
        raise tb.BenchError(f"{len(failed)} clients failed (exit statuses {failed[:5]})")
    return run, (
        idle_after - idle,
        softirq_after - softirq,
        busy_after - busy,
        sent_after - sent,
        dropped_after - dropped,
        ipis_after - ipis,
    )


def quantile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="hpa,netsvc", help="comma list (default: %(default)s)")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=CMD")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=None, help="default 50 (--steady: 20)")
    parser.add_argument("--size-mib", type=float, default=None, help="default 1 (--steady: 8)")
    parser.add_argument("--size-kib", type=int, default=None, help="instead of --size-mib")
    parser.add_argument("--blksize", type=int, default=1468)
    parser.add_argument("--steady", action="store_true", help="fewer, longer downloads")
    args = parser.parse_args()
    clients = args.clients or (20 if args.steady else 50)
    size_mib = args.size_mib or (8.0 if args.steady else 1.0)
    if args.size_kib is not None:
        size_mib = args.size_kib / 1024
    if not 1 <= clients <= 200 or not 0 < size_mib <= 64 or args.runs < 1:
        parser.error("need 1-200 clients, 0-64 MiB and at least one run")
    commands = dict(tb.BUILTIN_SERVERS)
    for item in args.server:
        name, _, command = item.partition("=")
        commands[name] = command
    names = args.servers.split(",")
    unknown = [name for name in names if name not in commands]
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)}")
    use_taskstats = os.geteuid() == 0

    work = Path(tempfile.mkdtemp(prefix="tftp-burst-"))
    try:
        os.chmod(work, 0o755)  # tftpd-hpa serves as nobody
        root = work / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        payload = tb.make_file(root, "payload", int(size_mib * tb.MIB))
        probe = tb.make_file(root, "probe", 100)
        out = work / "out"
        out.mkdir()
        tb.log(
            f"TFTP burst anatomy: {clients} curl x {tb.format_size(payload.size)} at blksize"
            f" {args.blksize}, {args.runs} rounds, servers {', '.join(names)}"
        )
        results: dict[str, list[Burst]] = {name: [] for name in names}
        for round_number in range(1, args.runs + 1):
            for name in names:
                spec = tb.ServerSpec(name, commands[name])
                with tb.running_server(spec, root, probe, work) as server:
                    meter = tb.GroupCpuMeter(server.proc.pid, use_taskstats)
                    run, machine = run_burst(server.port, clients, args.blksize, payload.name, out)
                    time.sleep(tb.SETTLE)  # the server's own ending work counts too
                    burst = Burst(
                        run.launched,
                        sorted(run.exits),
                        run.user,
                        run.system,
                        run.sleeps,
                        meter.stop(),
                        *machine,
                    )
                for index in range(clients):
                    if tb.sha256_of(out / f"f{index}") != payload.sha256:
                        raise tb.BenchError(f"{name}: client {index} got a wrong file")
                results[name].append(burst)
                tb.log(
                    f"[{round_number}/{args.runs}] {name}: last exit {burst.exits[-1]:.3f}s"
                    f" (started all by {burst.launched:.3f}s) curl {burst.curl_user:.2f}"
                    f"+{burst.curl_system:.2f}s {burst.curl_sleeps} sleeps, server"
                    f" {burst.server_cpu:.2f}s, softirq {burst.softirq:.2f}s,"
                    f" CPUs idle {burst.idle:.2f}s, busy {burst.busy:.2f}s of which"
                    f" {burst.unaccounted:.2f}s other, {burst.datagrams / clients:.0f}"
                    f" datagrams per download, {burst.drops} dropped,"
                    f" {burst.ipis / clients:.0f} IPIs per download"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    baseline = median(b.exits[-1] for b in results[names[0]])
    tb.log()
    tb.log(f"medians of {args.runs}; x = last exit / {names[0]}'s")
    tb.log(
        f"{'server':10s} {'last exit':>9s} {'x':>5s} {'launched':>8s} {'exit50%':>7s}"
        f" {'exit80%':>7s} {'tail':>6s} {'curl usr':>8s} {'curl sys':>8s} {'sleeps':>6s}"
        f" {'srv cpu':>7s} {'softirq':>7s} {'other':>5s} {'idle':>5s} {'dgrams':>6s}"
        f" {'drops':>5s} {'ipis':>5s}"
    )
    summary = []
    for name, bursts in results.items():
        last = median(b.exits[-1] for b in bursts)
        row = {
            "launched": median(b.launched for b in bursts),
            "exit50": median(quantile(b.exits, 0.5) for b in bursts),
            "exit80": median(quantile(b.exits, 0.8) for b in bursts),
            "tail": median(b.tail for b in bursts),
            "user": median(b.curl_user for b in bursts),
            "system": median(b.curl_system for b in bursts),
            "sleeps": median(b.curl_sleeps for b in bursts),
            "server": median(b.server_cpu for b in bursts),
            "idle": median(b.idle for b in bursts),
            "softirq": median(b.softirq for b in bursts),
            "other": median(b.unaccounted for b in bursts),
            "datagrams": median(b.datagrams / clients for b in bursts),
            "drops": median(b.drops for b in bursts),
            "ipis": median(b.ipis / clients for b in bursts),
        }
        tb.log(
            f"{name:10s} {last:9.3f} {last / baseline:5.2f} {row['launched']:8.3f}"
            f" {row['exit50']:7.3f} {row['exit80']:7.3f} {row['tail']:6.3f} {row['user']:8.3f}"
            f" {row['system']:8.3f} {row['sleeps']:6.0f} {row['server']:7.3f}"
            f" {row['softirq']:7.3f} {row['other']:5.2f} {row['idle']:5.2f}"
            f" {row['datagrams']:6.0f} {row['drops']:5.0f} {row['ipis']:5.0f}"
        )
        summary.append(
            f"{name}=last {last:.3f}s x{last / baseline:.2f} tail {row['tail']:.3f}s"
            f" curl {row['user']:.2f}+{row['system']:.2f}s sleeps {row['sleeps']:.0f}"
            f" server {row['server']:.2f}s idle {row['idle']:.2f}s"
            f" datagrams/download {row['datagrams']:.0f} IPIs/download {row['ipis']:.0f}"
        )
    what = f"{clients}x{tb.format_size(payload.size)} b{args.blksize}"
    tb.log(f"SUMMARY tftp_burst {what} | " + " | ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
