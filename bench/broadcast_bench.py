"""Measure the broadcast/UDP-tools bar: gb2312 round trip, junk flood, netns discovery.

    .venv/bin/python bench/broadcast_bench.py [--runs 3] [--flood 10000] [--no-netns]

1. gb2312 round trip: ``netsvc udp listen -e gb2312 --reply`` and ``netsvc udp send -e
   gb2312 --wait`` on 127.0.0.1; checks both directions byte for byte.
2. Junk flood on loopback: a broadcast node (``python -m netsvc.broadcast --discovery``)
   gets FLOOD junk datagrams (random bytes; one in ten with our magic and a broken body)
   spread over --flood-seconds (0: as fast as one socket sends them), while a prober sends
   a discovery query every 50 ms and times the replies (the bench node's per-source reply
   limit is raised so that the prober's own queries are not refused). Reports reply
   latency during the flood (median/max, answered
   share), a discovery after it, and the node's RSS before/after (from /proc).
3. Discovery across two network namespaces joined by a veth (needs root, ``ip``):
   node in A, ``netsvc discover`` in B; reply time and whole-command time.

Everything stays on loopback or inside the namespaces this script creates (DESIGN.md s4).
Each part runs RUNS times; medians are printed. The flood is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netsvc.broadcast import wire  # noqa: E402

PY = sys.executable
GREETING = "你好，世界！netsvc 广播测试"  # noqa: RUF001


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def gb2312_round_trip() -> tuple[bool, float]:
    listener = subprocess.Popen(
        [PY, "-m", "netsvc.udptools", "listen", "0", "-I", "127.0.0.1", "-e", "gb2312",
         "--reply", GREETING, "-n", "1", "--no-time"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )
    assert listener.stderr is not None
    port = listener.stderr.readline().split()[2].rsplit(":", 1)[1]
    start = time.monotonic()
    sent = subprocess.run(
        [PY, "-m", "netsvc.udptools", "send", "127.0.0.1", port, GREETING, "-e", "gb2312",
         "--wait", "0.5"],
        capture_output=True, text=True, encoding="utf-8", timeout=30, check=False,
    )
    elapsed = time.monotonic() - start
    out, _ = listener.communicate(timeout=10)
    size = len(GREETING.encode("gb2312"))
    ok = (
        out.strip().endswith(f"{size} bytes: {GREETING}")
        and sent.stdout.strip().endswith(f"{size} bytes: {GREETING}")
    )
    return ok, elapsed


def flood_run(count: int, seconds: float) -> dict[str, float]:
    port = free_udp_port()
    node = subprocess.Popen(
        [PY, "-m", "netsvc.broadcast", "--port", str(port), "--discovery", "--addresses",
         "127.255.255.255", "--name", "bench", "--reply-rate", "1000", "--reply-burst",
         "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert node.stdout is not None
        node.stdout.readline()
        time.sleep(0.3)
        before = rss_kib(node.pid)
        latencies: list[float] = []
        queries = 0
        stop = threading.Event()

        def probe() -> None:
            nonlocal queries
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                while not stop.is_set():
                    query = wire.Query(os.urandom(8), os.urandom(8))
                    queries += 1
                    start = time.perf_counter()
                    sock.sendto(wire.encode(query), ("127.0.0.1", port))
                    try:
                        while True:
                            data = sock.recv(1024)
                            reply = wire.decode(data)
                            if isinstance(reply, wire.Reply) and reply.nonce == query.nonce:
                                latencies.append(time.perf_counter() - start)
                                break
                    except (TimeoutError, wire.WireError):
                        pass
                    time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        junk = [os.urandom(n % 700 + 1) for n in range(97)]
        forged = b"NSVD\x01\x02" + os.urandom(18) + b"[" * 300
        deadline = time.monotonic() + 30
        flood_start = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            # From another loopback address, as a flooder on a LAN has its own address:
            # the per-source limits then hold the flood back, not the prober.
            flood.bind(("127.0.0.2", 0))
            for i in range(count):
                if time.monotonic() > deadline:
                    break
                flood.sendto(forged if i % 10 == 0 else junk[i % 97], ("127.0.0.1", port))
                if seconds and i % 100 == 99:  # paced: 100 datagrams per slot
                    pause = flood_start + seconds * (i + 1) / count - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        flood_seconds = time.monotonic() - flood_start
        time.sleep(0.3)
        stop.set()
        prober.join()
        after_start = time.monotonic()
        result = subprocess.run(
            [PY, "-m", "netsvc.broadcast.cli", "--address", "127.255.255.255", "--port",
             str(port), "--count", "1", "--json", "--timeout", "2"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        after_discover = time.monotonic() - after_start
        nodes = json.loads(result.stdout or "[]")
        after = rss_kib(node.pid)
        alive = node.poll() is None
    finally:
        node.terminate()
        node.wait(timeout=10)
    ms = [x * 1000 for x in latencies] or [float("nan")]
    return {
        "flood_s": flood_seconds,
        "rate_kpps": count / flood_seconds / 1000,
        "answered": len(latencies) / max(queries, 1),
        "queries": queries,
        "median_ms": statistics.median(ms),
        "max_ms": max(ms),
        "after_rtt_ms": nodes[0]["rtt_ms"] if nodes else float("nan"),
        "after_cmd_s": after_discover,
        "rss_before": before,
        "rss_after": after,
        "alive": float(alive),
    }


def netns_run() -> dict[str, float] | str:
    from tests.netns import NetnsPair, namespaces_available, stop

    available, reason = namespaces_available()
    if not available:
        return reason
    with NetnsPair(subnet="10.214.0") as pair:
        node = pair.a.popen(
            [PY, "-m", "netsvc.broadcast", "--discovery", "--name", "node-a"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert node.stdout is not None
        node.stdout.readline()
        start = time.monotonic()
        result = pair.b.run([PY, "-m", "netsvc.broadcast.cli", "--json", "--count", "1"],
                            timeout=30)
        command = time.monotonic() - start
        stop(node)
    nodes = json.loads(result.stdout or b"[]")
    return {
        "rtt_ms": nodes[0]["rtt_ms"] if nodes else float("nan"),
        "cmd_s": command,
        "found": float(len(nodes)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--flood-seconds", type=float, default=2.0)
    parser.add_argument("--no-netns", action="store_true")
    args = parser.parse_args()

    print(f"1. gb2312 round trip via netsvc udp send/listen ({args.runs} runs)")
    trips = [gb2312_round_trip() for _ in range(args.runs)]
    print(f"   intact: {sum(ok for ok, _ in trips)}/{len(trips)}; send command (incl. 0.5 s"
          f" --wait) median {statistics.median(t for _, t in trips):.2f} s")

    print(f"\n2. {args.flood:,} junk datagrams at a broadcast node on loopback: {args.runs}"
          f" runs over {args.flood_seconds:g} s, then one unpaced run")
    runs = [flood_run(args.flood, args.flood_seconds) for _ in range(args.runs)]
    runs += [flood_run(args.flood, 0.0)]
    for i, run in enumerate(runs, 1):
        print(
            f"   run {i}: flood {run['flood_s']:.2f} s ({run['rate_kpps']:.0f} kpps); probes "
            f"answered {run['answered']:.0%} of {run['queries']:.0f}, median "
            f"{run['median_ms']:.2f} ms, max {run['max_ms']:.2f} ms; after: reply "
            f"{run['after_rtt_ms']:.2f} ms; RSS {run['rss_before']:.0f} -> "
            f"{run['rss_after']:.0f} KiB; alive {bool(run['alive'])}"
        )
    print(f"   median probe latency {statistics.median(r['median_ms'] for r in runs):.2f} ms,"
          f" median RSS growth "
          f"{statistics.median(r['rss_after'] - r['rss_before'] for r in runs):.0f} KiB")

    if args.no_netns:
        return 0
    print(f"\n3. discovery across two network namespaces ({args.runs} runs)")
    results = [netns_run() for _ in range(args.runs)]
    if isinstance(results[0], str):
        print(f"   skipped: {results[0]}")
        return 0
    measured = [r for r in results if isinstance(r, dict)]
    for i, r in enumerate(measured, 1):
        print(f"   run {i}: found {r['found']:.0f}, reply {r['rtt_ms']:.2f} ms, whole "
              f"netsvc discover command {r['cmd_s']:.2f} s")
    print(f"   median reply {statistics.median(r['rtt_ms'] for r in measured):.2f} ms "
          f"(bar: 1000 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
