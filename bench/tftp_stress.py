#!/usr/bin/env python3
"""A bounded soak of the TFTP server under messy load: does every transfer end, and right?

Not a speed benchmark: a check for what the timed rows cannot see. The helper hang of the
thirteenth session (docs/benchmarks.rst) showed only with clients started from a shell, in
a rhythm the benches did not have. For ``--seconds``, this keeps ``--concurrency`` real
clients running against one netsvc server (curl, atftp, busybox, tftp-hpa; files of many
sizes; blksizes 512 to 8192; atftp sometimes with a window):

* ``--upload-share`` of them upload (the server is writable; each to a name of its own);
* ``--netascii-share`` of tftp-hpa's and atftp's transfers use netascii (atftp's only
  downloads), whose bytes must come back as they are on disk;
* ``--kill-share`` of them are killed at a random moment in their first 0.3 s;
* ``--stop-helper-every S`` stops the download helper with SIGSTOP every S seconds: the
  server's watchdog must replace it (docs/tftp-server.rst), and the downloads it held
  must still be served.

It fails (exit status 1) when a client that was not killed failed, when a download or a
stored upload differs from its source, when a client ran into its own time limit
(``--client-timeout``: stuck), when the server still held transfers at the end (after
the clients it waits until the server's log has been quiet for longer than its idle
timeout, then stops it: every transfer the stop aborts was left behind), or when an
upload's temporary file is left after the stop.

Examples:
  .venv/bin/python bench/tftp_stress.py                       # 60 s, 40 clients at a time
  .venv/bin/python bench/tftp_stress.py --seconds 120 --stop-helper-every 15
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tftp_bench as tb  # the bench's server process, files and clients

sys.path.insert(0, str(tb.REPO_DIR))
from netsvc.tftp.files import TEMP_SUFFIX

SIZES = (0, 1, 511, 512, 513, 3 * 65536 + 1000, tb.MIB, 3 * tb.MIB + 7)
BLKSIZES = (512, 1024, 1468, 8192)
WINDOWS = (None, None, 4, 16)  # atftp only
CLIENTS: tuple[tb.Client, ...] = (tb.Curl(), tb.Atftp(), tb.Busybox(), tb.HpaTftp())
KILL_WITHIN = 0.3  # a killed client dies within this many seconds of its start
IDLE_TIMEOUT = 8  # the server's, shortened: a killed client's upload with a window (no
# peer-gone for those) waits for it, and so does the drain
QUIET_LOG = IDLE_TIMEOUT + 1.0  # the server's log unchanged this long: its transfers ended
LONGEST_DRAIN = 60.0
EVENT = re.compile(r"tftp (?:read|write) '[^']*' \S+: (?P<outcome>[a-z-]+)")  # a text log's line


@dataclass
class Running:
    kind: str
    options: str  # blksize, and the window if any
    file: tb.TestFile
    local: Path  # the download's copy; for an upload, what it should store
    stored: Path | None  # an upload's file in the server's root
    messages: Path  # its standard error
    proc: subprocess.Popen[bytes]
    started: float
    kill_at: float | None


@dataclass
class Tally:
    launched: collections.Counter[str] = field(default_factory=collections.Counter)
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    killed: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)


def upload_argv(kind: str, d: tb.Download) -> list[str]:
    """The command that uploads ``d.local`` as ``d.remote`` (tftp_bench's clients download)."""
    address = [tb.HOST, str(d.port)]
    if kind == "curl":
        return ["curl", "-s", "-S", "-T", d.local, "--tftp-blksize", str(d.blksize),
                "-m", str(int(d.timeout)), f"tftp://{tb.HOST}:{d.port}/{d.remote}"]
    if kind == "atftp":
        window = ["--option", f"windowsize {d.windowsize}"] if d.windowsize else []
        return ["atftp", "--option", f"blksize {d.blksize}", *window, "-p", "-r", d.remote,
                "-l", d.local, *address]
    if kind == "busybox":
        return ["busybox", "tftp", "-b", str(d.blksize), "-p", "-r", d.remote, "-l", d.local,
                *address]
    return ["tftp", "-m", "binary", *address, "-c", "put", d.local, d.remote]


def start_client(
    rng: random.Random, port: int, files: list[tb.TestFile], root: Path, out: Path,
    serial: int, args: argparse.Namespace,
) -> Running:
    client = rng.choice(CLIENTS)
    file = rng.choice(files)
    blksize = 512 if isinstance(client, tb.HpaTftp) else rng.choice(BLKSIZES)
    window = rng.choice(WINDOWS) if client.windowed else None
    uploading = rng.random() < args.upload_share
    if uploading:
        remote, local, stored = f"up-{serial}", file.path, root / f"up-{serial}"
        download = tb.Download(port, remote, str(local), blksize, window, args.client_timeout)
        argv = upload_argv(client.name, download)
    else:
        local, stored = out / f"{serial}.{client.name}", None
        download = tb.Download(port, file.name, str(local), blksize, window,
                               args.client_timeout)
        argv = client.argv(download)
    # netascii, where the client decodes it (curl does not; busybox has no such mode):
    # the bytes must come back as they are on disk, whatever they are.
    text = client.name in ("tftp", "atftp") and not (uploading and client.name == "atftp")
    text = text and rng.random() < args.netascii_share
    if text:
        argv = (
            [a if a != "binary" else "ascii" for a in argv]
            if client.name == "tftp"
            else [argv[0], "--mode", "netascii", *argv[1:]]
        )
    # Its messages to a file: a pipe read only at the end fills up (atftp writes a line
    # per out-of-order block) and stops the client in write(), a hang of our making.
    with open(out / f"{serial}.err", "wb") as messages:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=messages, cwd=out
        )
    now = time.monotonic()
    kill_at = now + rng.uniform(0, KILL_WITHIN) if rng.random() < args.kill_share else None
    options = (
        ("put " if uploading else "")
        + ("netascii " if text else "")
        + f"b{blksize}"
        + (f"w{window}" if window else "")
    )
    return Running(client.name, options, file, local, stored, out / f"{serial}.err", proc,
                   now, kill_at)


def settle(client: Running, tally: Tally, now: float, client_timeout: float) -> bool:
    """Kill, time out or judge ``client``; whether it is done."""
    if client.kill_at is not None and now >= client.kill_at and client.proc.poll() is None:
        client.proc.kill()
        client.proc.wait()
        tally.killed[client.kind] += 1
        discard(client)
        return True
    if client.proc.poll() is None:
        if now - client.started > client_timeout + 5:
            client.proc.kill()
            client.proc.wait()
            tally.stuck.append(f"{client.kind} {client.options} {client.file.name}, started "
                               f"{client.started:.1f}")
            discard(client)
            return True
        return False
    stderr = client.messages.read_text(errors="replace")
    result = client.local if client.stored is None else client.stored
    if client.kill_at is not None and client.proc.returncode < 0:
        tally.killed[client.kind] += 1
    elif client.proc.returncode != 0:
        tally.failures.append(f"{client.kind} {client.options} {client.file.name}: exit "
                              f"{client.proc.returncode} {stderr.strip()[-200:]}")
    elif not result.exists() or tb.sha256_of(result) != client.file.sha256:
        tally.failures.append(f"{client.kind} {client.options} {client.file.name}: wrong bytes")
    else:
        tally.ok[client.kind] += 1
    discard(client)
    return True


def discard(client: Running) -> None:
    """Delete what ``client`` wrote: its download or upload, and its messages. (A killed
    upload's file may still come: the server may have had it whole. The end's check of
    the root judges those.)"""
    if client.stored is None:
        client.local.unlink(missing_ok=True)
    else:
        client.stored.unlink(missing_ok=True)
    client.messages.unlink(missing_ok=True)


def helper_of(server_pid: int) -> int | None:
    """The pid of the server's download helper (python -m netsvc.tftp.workers)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == server_pid and b"netsvc.tftp.workers" in command:
            return int(entry)
    return None


def outcomes(log_text: str) -> list[str]:
    """The outcome of each transfer event in a server log, JSON lines or text."""
    found = []
    for line in log_text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                event = json.loads(line[start:])
            except ValueError:
                event = None
            if isinstance(event, dict):
                if "outcome" in event and "direction" in event:
                    found.append(str(event["outcome"]))
                continue
        match = EVENT.search(line)
        if match:
            found.append(match["outcome"])
    return found


def judge_root(root: Path, sources: dict[str, tb.TestFile]) -> list[str]:
    """What is wrong in the server's root once every transfer has ended: a temporary file
    (an upload not cleaned up), or a stored upload that is not one of the sources whole
    (those of killed clients, stored because the server had them complete, are deleted
    here)."""
    problems = []
    by_digest = {f.sha256 for f in sources.values()}
    for path in sorted(root.iterdir()):
        if path.name in sources:
            continue
        if path.name.endswith(TEMP_SUFFIX):
            problems.append(f"{path.name}: a temporary file")
        elif tb.sha256_of(path) not in by_digest:
            problems.append(f"{path.name}: {path.stat().st_size} bytes, none of the sources")
        path.unlink()
    return problems


def server_log(server: tb.ServerProcess) -> str:
    """What the server has logged since its start (its output goes straight to the file)."""
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        f.seek(server.log_start)
        return f.read()


def wait_for_quiet_log(server: tb.ServerProcess) -> float:
    """Wait until the server's log stops growing (at most LONGEST_DRAIN); seconds waited."""
    started = time.monotonic()
    size, changed = -1, started
    while time.monotonic() - started < LONGEST_DRAIN:
        now_size = os.path.getsize(server.log_path)
        if now_size != size:
            size, changed = now_size, time.monotonic()
        elif time.monotonic() - changed >= QUIET_LOG:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--kill-share", type=float, default=0.15)
    parser.add_argument("--upload-share", type=float, default=0.2)
    parser.add_argument("--netascii-share", type=float, default=0.1,
                        help="of tftp-hpa's and atftp's transfers (atftp: downloads)")
    parser.add_argument("--stop-helper-every", type=float, default=0.0, metavar="S")
    parser.add_argument("--client-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="one more option for netsvc-tftp, e.g. --server-flag=--one-process")
    parser.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    missing = [c.program for c in CLIENTS if c.unavailable()]
    if missing:
        tb.log(f"missing clients: {', '.join(missing)}")
        return 2
    with tempfile.TemporaryDirectory(prefix="tftp-stress-") as scratch:
        root, out = Path(scratch, "root"), Path(scratch, "out")
        root.mkdir()
        out.mkdir()
        root.chmod(0o755)
        files = [tb.make_file(root, f"s{size}", size) for size in SIZES]
        probe = tb.make_file(root, tb.PROBE_FILE, tb.PROBE_SIZE)
        # The per-address request limit would hold back one address's flood of requests,
        # as it must a real one.
        spec = tb.ServerSpec(
            "netsvc",
            tb.BUILTIN_SERVERS["netsvc"]
            + f" --writable --request-rate 100000 --idle-timeout {IDLE_TIMEOUT}"
            + "".join(f" {flag}" for flag in args.server_flag)
        )
        tally, stops = Tally(), 0
        with tb.running_server(spec, root, probe, Path(scratch)) as server:
            running: list[Running] = []
            started = time.monotonic()
            next_stop = started + args.stop_helper_every if args.stop_helper_every else None
            serial = 0
            while True:
                now = time.monotonic()
                running = [c for c in running if not settle(c, tally, now, args.client_timeout)]
                if now - started >= args.seconds:
                    if not running:
                        break
                else:
                    while len(running) < args.concurrency:
                        serial += 1
                        client = start_client(rng, server.port, files, root, out, serial, args)
                        tally.launched[client.kind] += 1
                        running.append(client)
                if next_stop is not None and now >= next_stop:
                    helper = helper_of(server.proc.pid)
                    if helper is not None:
                        os.kill(helper, signal.SIGSTOP)
                        stops += 1
                    next_stop = now + args.stop_helper_every
                time.sleep(0.005)
            elapsed = time.monotonic() - started
            drained = wait_for_quiet_log(server)
            before_stop = len(outcomes(server_log(server)))
        log_text = server_log(server)
        # After the stop: it must have deleted what it had not stored whole.
        leftovers = judge_root(root, {f.name: f for f in [*files, probe]})
    if args.server_log is not None:
        args.server_log.write_text(log_text)
    ended = outcomes(log_text)
    left_behind = len(ended) - before_stop
    replaced = sum("tftp: the download helper" in line for line in log_text.splitlines())
    tb.log(f"seed {seed}: {sum(tally.launched.values())} clients in {elapsed:.1f} s "
           f"(drained in {drained:.1f} s), helper stopped {stops} times, replaced {replaced}")
    for kind in sorted(tally.launched):
        tb.log(f"  {kind:8} launched {tally.launched[kind]:5}  ok {tally.ok[kind]:5}  "
               f"killed {tally.killed[kind]:4}")
    tb.log(f"  server outcomes: {dict(sorted(collections.Counter(ended).items()))}")
    for line in tally.failures[:20]:
        tb.log(f"  FAILED {line}")
    for line in tally.stuck[:20]:
        tb.log(f"  STUCK {line}")
    if left_behind:
        tb.log(f"  {left_behind} transfers were still held when the server was stopped")
    for line in leftovers[:20]:
        tb.log(f"  LEFT IN ROOT {line}")
    good = not tally.failures and not tally.stuck and not left_behind and not leftovers
    tb.log(f"SUMMARY tftp_stress seed={seed} clients={sum(tally.launched.values())} "
           f"ok={sum(tally.ok.values())} killed={sum(tally.killed.values())} "
           f"failed={len(tally.failures)} stuck={len(tally.stuck)} left={left_behind} "
           f"bad_files={len(leftovers)} "
           f"helper_stops={stops} replaced={replaced} {'PASS' if good else 'FAIL'}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
