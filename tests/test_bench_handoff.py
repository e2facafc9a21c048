"""The measuring instrument ``bench/handoff_server.py`` serves correct bytes to curl.

Its figures stand in docs/benchmarks.rst as the ceiling of a Python server built like
tftpd-hpa: they only mean something if every download it served was whole and right.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "handoff_server.py"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(params=["bare", "engine"])
def handoff_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port(socket.SOCK_DGRAM)
    root = tmp_path / "root"
    root.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--loop", request.param, "127.0.0.1", str(port), str(root)]
    )
    try:
        _wait_until_answering(port)
        yield port, root
    finally:
        process.kill()
        process.wait()


def _wait_until_answering(port: int, timeout: float = 15.0) -> None:
    """Until a request for a missing file gets its ERROR (the listener is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            probe.sendto(b"\0\1missing\0octet\0", ("127.0.0.1", port))
            try:
                if probe.recv(100)[:2] == b"\0\5":
                    return
            except OSError:
                time.sleep(0.05)  # not bound yet (ICMP refused) or no answer in time
    raise AssertionError(f"bench/handoff_server.py did not answer on port {port}")


@pytest.mark.parametrize(("size", "blksize"), [(0, 512), (512 * 300, 512), (200_001, 1468)])
def test_downloads_are_whole(
    handoff_server: tuple[int, Path], tmp_path: Path, size: int, blksize: int
) -> None:
    port, root = handoff_server
    content = bytes((i * 7 + 3) % 251 for i in range(size))
    (root / "f").write_bytes(content)
    target = tmp_path / "out"
    subprocess.run(
        ["curl", "-s", "-m", "20", "--tftp-blksize", str(blksize), "-o", str(target),
         f"tftp://127.0.0.1:{port}/f"],
        check=True,
    )
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
