"""``bench/tftp_bench.py`` judges netsvc's bar against the servers a user would pick
instead, not against other builds or settings of netsvc added with ``--server``; and its
server CPU meter counts what a server's processes and threads ran."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "tftp_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tftp_bench_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_variants_of_netsvc_are_not_competitors(bench: ModuleType) -> None:
    row = bench.select_rows("concurrent", 1)[0]
    cells = {
        "hpa": bench.Cell(runs=3, wall=1.0),
        "netsvc": bench.Cell(runs=3, wall=0.9),
        "spare64": bench.Cell(runs=3, wall=0.8),
    }
    assert bench.bar_verdict(row, cells, frozenset({"spare64"})) == "netsvc:MET(x0.90 vs hpa)"
    # Counted as a competitor, the variant would decide the verdict.
    assert bench.bar_verdict(row, cells, frozenset()) == "netsvc:MISSED(x1.12 vs spare64)"


def test_a_server_running_the_netsvc_plugin_is_a_variant(bench: ModuleType) -> None:
    # The worktree recipe of docs/benchmarks.rst: netsvc inside ``sh -c``.
    before = bench.ServerSpec(
        "before", "sh -c 'cd /wt && exec {python} -m twisted netsvc-tftp --root {root}'"
    )
    other = bench.ServerSpec("dnsmasq", "dnsmasq --enable-tftp --tftp-root={root}")
    assert bench.runs_netsvc(before)
    assert not bench.runs_netsvc(other)


@pytest.mark.skipif(os.geteuid() != 0, reason="taskstats exit records need root (CI runs as root)")
def test_the_cpu_of_threads_that_end_is_counted(bench: ModuleType) -> None:
    # atftpd's way: one thread per transfer, gone when the transfer is.
    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading, time\n"
            "def burn():\n"
            "    end = time.thread_time() + 0.3\n"
            "    while time.thread_time() < end: pass\n"
            "sys.stdin.readline()\n"
            "t = threading.Thread(target=burn); t.start(); t.join()\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        time.sleep(0.3)  # started and waiting
        meter = bench.GroupCpuMeter(burner.pid, use_taskstats=True)
        assert burner.stdin is not None
        burner.stdin.write("go\n")
        burner.stdin.flush()
        time.sleep(0.8)  # the thread burned 0.3 s of CPU and ended
        measured = meter.stop()
        assert 0.28 <= measured < 0.6, measured
    finally:
        burner.kill()
        burner.wait()
