"""The TFTP bar through a lossy link: 1 MiB through 10% random loss both ways in <= 10 s.

The netsvc server (``twistd netsvc-tftp``) runs in namespace A, a real client (curl with
default options, or busybox) in namespace B; :mod:`tests.netns` drops 10% of the packets
arriving in each namespace. A sanity run without loss separates setup problems from loss
problems. Skipped only where network namespaces cannot be created (not root, no ``ip`` or
``nft``, or the kernel refuses).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Namespace, NetnsPair, namespaces_available, stop
from tests.support import twistd_command

pytestmark = [pytest.mark.root, pytest.mark.slow]

TFTP_PORT = 69
PAYLOAD_SIZE = 1024 * 1024
LOSS_PERCENT = 10
BAR_SECONDS = 10.0
#: Hard bound on one client run (curl has ``-m 60`` as well; busybox has no overall limit):
#: three times the test's limit, so a hang costs CI a minute, not more.
CLIENT_TIMEOUT = 60.0
SERVER_READY_TIMEOUT = 20.0

CLIENTS = ("curl", "busybox")

#: A timed test on a shared machine needs slack: the bar (10 s, measured as a median by
#: ``bench/tftp_lossy.py``) is what we report; the test fails at twice the bar, which still
#: catches the regressions that matter (before the lock-step fix, busybox took ~55 s).
CI_LIMIT_SECONDS = 2 * BAR_SECONDS


def client_command(client: str, host: str, remote: str, local: Path) -> list[str]:
    """A download of ``remote`` from ``host`` into ``local`` with default transfer options."""
    if client == "curl":
        return [
            "curl", "--silent", "--show-error", "-m", "60", "--connect-timeout", "10",
            "-o", str(local), f"tftp://{host}:{TFTP_PORT}/{remote}",
        ]
    if client == "busybox":
        return ["busybox", "tftp", "-g", "-r", remote, "-l", str(local), host, str(TFTP_PORT)]
    raise ValueError(client)


def netsvc_server_command(root: Path, interface: str) -> list[str]:
    """``twistd netsvc-tftp`` serving ``root`` on ``interface``:69."""
    return twistd_command(
        "netsvc-tftp", "--root", str(root), "--port", str(TFTP_PORT), "--interface", interface
    )


def _udp_port_bound(namespace: Namespace, port: int) -> bool:
    result = namespace.run(["ss", "-H", "-n", "-u", "-l", f"sport = :{port}"], timeout=10)
    return result.returncode == 0 and bool(result.stdout.strip())


def start_server(
    pair: NetnsPair, command: list[str], log: Path, probe_file: Path, *, client: str = "curl"
) -> subprocess.Popen[bytes]:
    """Start ``command`` in namespace A; return once it has served ``probe_file`` to B.

    Readiness is a real TFTP download from B, so call this before adding loss. The process
    is stopped when ``pair`` closes.
    """
    with log.open("wb") as log_file:
        server = pair.a.popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not _udp_port_bound(pair.a, TFTP_PORT):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            pytest.fail(f"server did not bind UDP {TFTP_PORT}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    probe_out = probe_file.with_suffix(".probe-out")
    result = pair.b.run(
        client_command(client, pair.a_address, probe_file.name, probe_out), timeout=30
    )
    if result.returncode != 0 or probe_out.read_bytes() != probe_file.read_bytes():
        pytest.fail(
            f"probe download failed ({result.returncode}): {result.stderr.decode()!r}\n"
            f"{log.read_text()[-3000:]}"
        )
    probe_out.unlink()
    return server


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed_download(
    pair: NetnsPair, client: str, served: Path, out: Path
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Download ``served`` from A to ``out`` in B; (seconds, completed process)."""
    out.unlink(missing_ok=True)
    command = client_command(client, pair.a_address, served.name, out)
    start = time.monotonic()
    result = pair.b.run(command, timeout=CLIENT_TIMEOUT)
    return time.monotonic() - start, result


@pytest.fixture(scope="module")
def namespaces() -> None:
    available, reason = namespaces_available()
    if not available:
        pytest.skip(reason)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A directory with ``file`` (1 MiB of random bytes) and ``probe`` (a few blocks)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(random_bytes(PAYLOAD_SIZE))
    (root / "probe").write_bytes(random_bytes(1500))
    return root


def random_bytes(size: int) -> bytes:
    with open("/dev/urandom", "rb") as source:
        return source.read(size)


@pytest.fixture
def netsvc_pair(namespaces: None, served: Path, tmp_path: Path) -> Iterator[NetnsPair]:
    """A pair without loss yet, the netsvc server running in A and proven ready from B."""
    with NetnsPair() as pair:
        server = start_server(
            pair, netsvc_server_command(served, pair.a_address), tmp_path / "server.log",
            served / "probe",
        )
        yield pair
        stop(server)


def check_client_installed(client: str) -> None:
    # The clients are part of the CI image; a missing one is a broken setup, not a skip.
    assert shutil.which(client), f"{client} is not installed"


@pytest.mark.parametrize("client", CLIENTS)
def test_sanity_without_loss(
    client: str, netsvc_pair: NetnsPair, served: Path, tmp_path: Path
) -> None:
    check_client_installed(client)
    out = tmp_path / "out"
    elapsed, result = timed_download(netsvc_pair, client, served / "file", out)
    print(f"{client} <- netsvc, 1 MiB, no loss: {elapsed:.2f} s")
    assert result.returncode == 0, result.stderr.decode()
    assert sha256(out) == sha256(served / "file")
    assert netsvc_pair.counters()["a"]["dropped"] == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_one_mebibyte_through_ten_percent_loss(
    client: str, netsvc_pair: NetnsPair, served: Path, tmp_path: Path
) -> None:
    check_client_installed(client)
    netsvc_pair.set_loss(LOSS_PERCENT)
    netsvc_pair.a.reset_counters()
    netsvc_pair.b.reset_counters()
    out = tmp_path / "out"
    try:
        elapsed, result = timed_download(netsvc_pair, client, served / "file", out)
    except subprocess.TimeoutExpired as timed_out:
        # Rare, and the server's side of it is gone once the fixture ends: keep it here.
        # The summary comes last: CI shows the end of a long failure.
        got = out.stat().st_size if out.exists() else 0
        pytest.fail(
            f"server log:\n{(tmp_path / 'server.log').read_text()[-3000:]}\n"
            f"{client}'s output: {(timed_out.stderr or b'')[-300:]!r}\n"
            f"{client} still running after {CLIENT_TIMEOUT:.0f} s ({got} bytes written);"
            f" counters {netsvc_pair.counters()}"
        )
    counters = netsvc_pair.counters()
    print(
        f"{client} <- netsvc, 1 MiB, {LOSS_PERCENT}% loss both ways: {elapsed:.2f} s "
        f"(bar {BAR_SECONDS:.0f} s); packets at server seen/dropped "
        f"{counters['a']['seen']}/{counters['a']['dropped']}, at client "
        f"{counters['b']['seen']}/{counters['b']['dropped']}"
    )
    assert result.returncode == 0, result.stderr.decode()
    assert sha256(out) == sha256(served / "file")
    # The loss really was applied in both directions.
    assert counters["a"]["dropped"] > 0
    assert counters["b"]["dropped"] > 0
    assert elapsed <= CI_LIMIT_SECONDS, f"{elapsed:.2f} s > {CI_LIMIT_SECONDS} s"
