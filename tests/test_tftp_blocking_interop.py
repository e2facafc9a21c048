"""``netsvc tftp`` (the blocking client) against real servers on loopback: tftpd-hpa,
atftpd (windowsize) and twistd netsvc-tftp; every size and option set, both ways, sha256
compared. The same matrix as tests/test_tftp_client_interop.py, which runs the Twisted
library client: the two drivers share the engine, not their I/O.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from netsvc.cli import build_parser
from netsvc.tftp_cli import ExitCode, transfer
from tests.interop_support import sha256, temp_files
from tests.test_tftp_client_interop import (  # noqa: F401 (module-scoped server fixtures)
    SERVERS,
    SIZES,
    atftpd,
    hpa,
    netsvc_server,
    stored_file_settles,
)

pytestmark = pytest.mark.interop

FLAG_SETS = {
    "rfc1350": ["--no-options"],
    "blksize1468": ["--blksize", "1468"],
    "window16": ["--blksize", "1468", "--windowsize", "16"],
    "big-blocks": ["--blksize", "8192", "--windowsize", "4"],
}


def run(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["tftp", *argv])
    stderr = io.StringIO()
    code = transfer(args, stderr=stderr, interactive=False)
    return code, stderr.getvalue()


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("server", SERVERS)
def test_get_is_byte_identical(
    request: pytest.FixtureRequest, server: str, name: str, flags: list[str], tmp_path: Path
) -> None:
    port, root = request.getfixturevalue(server)
    target = tmp_path / "got"
    code, err = run("get", "-v", *flags, f"127.0.0.1:{port}", name, str(target))
    assert code == ExitCode.OK, err
    assert sha256(target) == sha256(root / name) and temp_files(tmp_path) == []
    granted_window = "windowsize=16" in err
    assert granted_window == (server != "hpa" and "16" in flags), err  # hpa has no windows


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
@pytest.mark.parametrize("name", ["empty", "512", "one-mb", "odd"])
@pytest.mark.parametrize("server", SERVERS)
def test_put_is_byte_identical(
    request: pytest.FixtureRequest, server: str, name: str, flags: list[str], tmp_path: Path
) -> None:
    port, root = request.getfixturevalue(server)
    source = tmp_path / "source"
    source.write_bytes(random.Random(name).randbytes(SIZES[name]))
    stored = f"cli-up-{name}-{'-'.join(flags).strip('-')}"
    code, err = run("put", *flags, f"127.0.0.1:{port}", str(source), stored)
    assert code == ExitCode.OK, err
    if server == "netsvc_server":
        assert sha256(root / stored) == sha256(source)  # ACKed only once committed
    else:
        assert stored_file_settles(root / stored, sha256(source))


@pytest.mark.parametrize("server", SERVERS)
def test_netascii_round_trip(request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    port, root = request.getfixturevalue(server)
    target = tmp_path / "text"
    code, err = run("get", "--mode", "netascii", f"127.0.0.1:{port}", "text.txt", str(target))
    assert code == ExitCode.OK, err
    assert target.read_bytes() == (root / "text.txt").read_bytes()
