"""The whole suite under twistd, found through the installed plugin and console command."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.support import VENV_BIN, free_port, free_tcp_udp_port, running, twistd_command


def test_suite_runs_echo_tftp_chat_and_answers_discovery(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    while True:  # a freed port number can come back: insist on four distinct ones
        echo_port = free_tcp_udp_port()
        chat_port = free_port()
        tftp_port = free_port(socket.SOCK_DGRAM)
        discovery_port = free_port(socket.SOCK_DGRAM, "0.0.0.0")
        if len({echo_port, chat_port, tftp_port, discovery_port}) == 4:
            break
    command = twistd_command(
        "netsvc", "--echo-port", str(echo_port), "--echo-interface", "127.0.0.1",
        "--tftp-root", str(tmp_path), "--tftp-port", str(tftp_port),
        "--tftp-interface", "127.0.0.1", "--chat", f"tcp:{chat_port}:interface=127.0.0.1",
        "--discovery", "--broadcast-port", str(discovery_port),
        "--broadcast-addresses", "127.255.255.255", "--broadcast-name", "suite-node",
    )
    netsvc = str(VENV_BIN / "netsvc")
    with running(command, echo_port):
        with socket.create_connection(("127.0.0.1", chat_port), timeout=5) as chat:
            assert b"/help" in chat.recv(4096)
        got = subprocess.run(
            [netsvc, "tftp", "get", f"127.0.0.1:{tftp_port}", "hello.txt", "-"],
            capture_output=True, timeout=60, check=False,
        )
        assert got.returncode == 0 and got.stdout == b"hello\n", got.stderr
        deadline = time.monotonic() + 10
        while True:
            found = subprocess.run(
                [netsvc, "discover", "--address", "127.255.255.255", "--port",
                 str(discovery_port), "--timeout", "1", "--json"],
                capture_output=True, text=True, timeout=60, check=False,
            )
            if found.returncode == 0 or time.monotonic() > deadline:
                break
        assert found.returncode == 0, found.stderr
        flat = json.dumps(json.loads(found.stdout))
        assert "suite-node" in flat
        assert str(tftp_port) in flat and str(echo_port) in flat
