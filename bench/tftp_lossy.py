#!/usr/bin/env python3
"""TFTP through a lossy link: netsvc vs tftpd-hpa, curl and busybox, side by side.

Two network namespaces joined by a veth pair (``tests/netns.py``; needs root, ``ip`` and
``nft``); nftables drops ``--loss`` percent of the packets arriving in EACH namespace. The
server runs in namespace A, the client in B. For every run: a fresh pair of namespaces, a
fresh server, one download of ``--size`` random bytes with the client's default options,
sha256 checked. Runs alternate servers; the table gives medians and ratios.

The issue's bar: 1 MiB through 10% loss both ways in <= 10 s with curl and with busybox.
``--clients netsvc`` adds netsvc's own client (``python -m netsvc tftp get``, default options).

    sudo .venv/bin/python bench/tftp_lossy.py --runs 3

tftpd-hpa runs as ``in.tftpd -L -T 100000`` (a 100 ms retransmission timer, the best it
offers); curl asks for a ``timeout`` option of 3 s, which tftpd-hpa obeys, so curl against
tftpd-hpa often stalls: such runs are capped at ``--cap`` seconds and reported as ``>cap``.
Every loop is bounded; the namespaces are always removed. Last line: ``SUMMARY tftp-lossy``.

``--same-server`` keeps one server (and its namespaces) per server name for all rounds,
as a real server serves a host again and again: what one download leaves behind (netsvc's
retransmission floors shared per host, ``netsvc.tftp.floors``) reaches the next.
``--busy N`` runs N busy loops for the whole run, a loaded machine (as a busy CI runner).
``--upload``: the clients send the file instead (curl ``-T``, busybox ``-p``; the server
allows uploads), compared with what the server stored.
The eleventh session's busybox hang showed with both:

    sudo .venv/bin/python bench/tftp_lossy.py --servers netsvc --clients busybox \
        --same-server --busy 2 --runs 40 --cap 40
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns import NetnsPair, namespaces_available, stop

HPA = "/opt/tftpd-hpa/usr/sbin/in.tftpd"
PORT = 69
UPLOAD_NAME = "upload"  # what --upload sends (removed before each run)


def server_command(name: str, root: Path, address: str, upload: bool = False) -> list[str]:
    if name == "netsvc":
        twistd = str(Path(sys.executable).parent / "twistd")
        return [
            twistd,
            "--nodaemon",
            "--pidfile=",
            "netsvc-tftp",
            "--root",
            str(root),
            "--port",
            str(PORT),
            "--interface",
            address,
            *(["--writable"] if upload else []),
        ]
    if name == "hpa":
        return [HPA, "-L", "-T", "100000", *(["-c"] if upload else []), "-a", f"{address}:{PORT}",
                "-s", str(root), "-u", "root"]
    raise ValueError(name)


def upload_command(name: str, address: str, local: Path, cap: float) -> list[str]:
    """The client sending ``local`` to the server as :data:`UPLOAD_NAME`."""
    if name == "curl":
        return ["curl", "-s", "-S", "-m", str(int(cap)), "--connect-timeout", "10", "-T",
                str(local), f"tftp://{address}:{PORT}/{UPLOAD_NAME}"]
    if name == "busybox":
        return ["busybox", "tftp", "-p", "-l", str(local), "-r", UPLOAD_NAME, address, str(PORT)]
    raise ValueError(f"no upload with {name}")


def client_command(name: str, address: str, local: Path, cap: float) -> list[str]:
    if name == "curl":
        return [
            "curl",
            "-s",
            "-S",
            "-m",
            str(int(cap)),
            "--connect-timeout",
            "10",
            "-o",
            str(local),
            f"tftp://{address}:{PORT}/file",
        ]
    if name == "busybox":
        return ["busybox", "tftp", "-g", "-r", "file", "-l", str(local), address, str(PORT)]
    if name == "netsvc":  # netsvc's own client, default options (blksize 1468, tsize)
        return [sys.executable, "-m", "netsvc", "tftp", "get", "-q", f"{address}:{PORT}", "file",
                str(local)]
    raise ValueError(name)


def wait_until_serving(pair: NetnsPair, work: Path, deadline: float) -> None:
    probe = work / "probe.out"
    while time.monotonic() < deadline:
        result = pair.b.run(client_command("curl", pair.a_address, probe, 5), timeout=10)
        if result.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("server did not answer within its start-up time")


@contextlib.contextmanager
def serving(server: str, args: argparse.Namespace, root: Path, work: Path) -> Iterator[NetnsPair]:
    """A fresh pair of namespaces with ``server`` running in A, proven to serve, and the
    loss set; everything is stopped and removed on exit."""
    with NetnsPair() as pair:
        log = (work / f"{server}.log").open("wb")
        process = pair.a.popen(
            server_command(server, root, pair.a_address, args.upload),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(pair, work, time.monotonic() + 20)
            pair.set_loss(args.loss)
            yield pair
        finally:
            stop(process)
            log.close()


def download(pair: NetnsPair, client: str, args: argparse.Namespace, root: Path, work: Path
             ) -> tuple[float, bool]:
    """Seconds for one download (an upload, with ``--upload``; ``inf`` when capped) and
    whether the bytes were right."""
    out = work / "out"
    out.unlink(missing_ok=True)
    if args.upload:
        out = root / UPLOAD_NAME  # what the server stores
        out.unlink(missing_ok=True)
        command = upload_command(client, pair.a_address, root / "file", args.cap)
    else:
        command = client_command(client, pair.a_address, out, args.cap)
    started = time.monotonic()
    try:
        result = pair.b.run(command, timeout=args.cap + 5)
        code = result.returncode
    except subprocess.TimeoutExpired:
        code = -9
    elapsed = time.monotonic() - started
    good = (
        code == 0
        and out.exists()
        and (
            hashlib.sha256(out.read_bytes()).digest()
            == hashlib.sha256((root / "file").read_bytes()).digest()
        )
    )
    if not good and elapsed >= args.cap:
        return float("inf"), False
    return elapsed, good


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes spinning on a CPU each (each ends by itself after an hour)."""
    spin = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"
    loops = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="netsvc,hpa")
    parser.add_argument("--clients", default="curl,busybox")
    parser.add_argument("--loss", type=float, default=10.0, help="percent, each direction")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per download")
    parser.add_argument("--same-server", action="store_true",
                        help="one server per name for all rounds (floors carry over)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="N busy loops running throughout (a loaded machine)")
    parser.add_argument("--upload", action="store_true",
                        help="the clients send the file (curl, busybox) instead of fetching it")
    args = parser.parse_args()
    available, reason = namespaces_available()
    if not available:
        print(f"cannot run: {reason}")
        return 2
    servers = args.servers.split(",")
    clients = args.clients.split(",")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tftp-lossy-"))
        stack.enter_context(busy_loops(args.busy))
        root = Path(tmp) / "root"
        root.mkdir()
        (root / "file").write_bytes(os.urandom(args.size))
        (root / "probe").write_bytes(b"ok\n")
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o777)  # tftpd-hpa creates an upload as nobody
        work = Path(tmp)
        times: dict[tuple[str, str], list[float]] = {}
        kept = {}
        if args.same_server:
            kept = {name: stack.enter_context(serving(name, args, root, work)) for name in servers}
        for round_number in range(1, args.runs + 1):
            for client in clients:
                for server in servers:
                    if server in kept:
                        elapsed, good = download(kept[server], client, args, root, work)
                    else:
                        with serving(server, args, root, work) as pair:
                            elapsed, good = download(pair, client, args, root, work)
                    times.setdefault((server, client), []).append(elapsed if good else float("inf"))
                    shown = f"{elapsed:.2f} s" if elapsed != float("inf") else f">{args.cap:.0f} s"
                    print(
                        f"[round {round_number}] {client} {'->' if args.upload else '<-'}"
                        f" {server}: {shown}"
                        f"{'' if good else ' FAILED'}",
                        flush=True,
                    )
    what = "uploaded" if args.upload else "downloaded"
    print(f"\n{args.size} bytes {what} through {args.loss:g}% loss both ways,"
          f" median of {args.runs}")
    summary = []
    for client in clients:
        base = statistics.median(times[(servers[-1], client)])
        for server in servers:
            median = statistics.median(times[(server, client)])
            ratio = median / base if base not in (0, float("inf")) else float("nan")
            text = f"{median:.2f}s" if median != float("inf") else f">{args.cap:.0f}s"
            spread = ", ".join(
                f"{t:.1f}" if t != float("inf") else f">{args.cap:.0f}"
                for t in times[(server, client)]
            )
            print(
                f"  {client:8} {server:7} median {text:>8}  (runs: {spread})"
                f"  x{ratio:.2f} vs {servers[-1]}"
            )
            summary.append(f"{client}<-{server}={text}")
    print("SUMMARY tftp-lossy " + " ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
