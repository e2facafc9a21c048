"""The per-client TFTP backend shown in docs/tftp-server.rst works as printed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from netsvc.tftp.backend import MemoryWriter
from netsvc.tftp.client import TFTPError, download
from tests.support import REPO, free_port, ipv6_loopback_available


def load_example() -> Any:
    path = REPO / "docs" / "examples" / "tftp_per_client.py"
    spec = importlib.util.spec_from_file_location("tftp_per_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# "": every address. The server learns where each request was sent (netsvc.destination),
# so the generated file names the address the client talked to, not 0.0.0.0. "::" is
# dual-stack: the IPv4 client and address reach the backend as IPv4, not ::ffff:127.0.0.1.
@pytest.mark.parametrize(
    "interface",
    [
        "127.0.0.1",
        "",
        pytest.param(
            "::", marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6")
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_generated_file_names_the_client_and_disk_files_are_served(
    tmp_path: Path, interface: str
) -> None:
    (tmp_path / "kernel").write_bytes(b"K" * 3000)
    port = free_port(kind=2)  # SOCK_DGRAM
    service = load_example().build(reactor, str(tmp_path), port=port, interface=interface)
    service.startService()
    try:
        config = MemoryWriter()
        await download(reactor, "127.0.0.1", "boot.cfg", config, port=port)
        assert config.data == b"hostname=node-127-0-0-1\nnext-server=127.0.0.1\n"
        kernel = MemoryWriter()
        await download(reactor, "127.0.0.1", "kernel", kernel, port=port, blksize=1468)
        assert kernel.data == b"K" * 3000
        with pytest.raises(TFTPError) as raised:
            await download(reactor, "127.0.0.1", "missing", MemoryWriter(), port=port)
        assert raised.value.code == 1
    finally:
        await service.stopService()
