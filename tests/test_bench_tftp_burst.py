"""``bench/tftp_burst.py`` runs end to end: real curl clients against a real netsvc server,
files checked, one table row and a SUMMARY line per server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "tftp_burst.py"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_a_small_burst_is_measured_and_summarised() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--servers", "netsvc", "--runs", "1", "--clients", "3",
         "--size-mib", "0.25"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("SUMMARY tftp_burst 3x256KiB b1468 | netsvc=last ")
    [row] = [line for line in lines if line.startswith("netsvc ")]
    last_exit, ratio = row.split()[1:3]
    assert float(last_exit) > 0 and ratio == "1.00"
    # 256 KiB at 1468 is 179 DATA blocks and as many ACKs: the datagram count sees them.
    datagrams, drops, ipis = row.split()[-3:]
    assert 2 * 179 <= float(datagrams) < 10 * 179 and int(drops) >= 0 and float(ipis) >= 0


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--servers", "nosuch"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "unknown servers: nosuch" in done.stderr
