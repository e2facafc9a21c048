"""Helpers for the TFTP interop tests: the netsvc server in a subprocess, real clients.

The server runs as ``twistd --nodaemon netsvc-tftp`` in its own process group with its
log (stdout) going to a file, so a test can read every line the server wrote after it
stopped. UDP has no connect() to wait for: readiness is the port showing up bound in
``/proc/net/udp`` and then one request being answered.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.logger import (
    ILogObserver,
    LogPublisher,
    eventsFromJSONLogFile,
    jsonFileLogObserver,
    textFileLogObserver,
)

from tests.support import free_port, twistd_command

T = TypeVar("T")

HOST = "127.0.0.1"
#: The name the readiness probe asks for: it never exists, so the probe gets ERROR 1.
PROBE_NAME = "netsvc-interop-ready-probe"
#: Every client run is bounded by this (seconds) unless a test says otherwise.
CLIENT_TIMEOUT = 60.0
TEMP_SUFFIX = ".netsvc.part"

#: One transfer event: ``tftp read 'NAME' HOST:PORT: OUTCOME, N bytes in S s``.
EVENT = re.compile(
    r"tftp (?P<direction>read|write) '(?P<name>[^']*)' (?P<peer>[0-9.]+:\d+): "
    r"(?P<outcome>[a-z-]+), (?P<bytes>\d+) bytes in (?P<duration>[0-9.]+)s"
)

#: The file :func:`text_and_json_log` writes JSON events to (set in twistd's environment).
JSON_LOG_VARIABLE = "NETSVC_TEST_JSON_LOG"
#: The checkout, so that twistd (started elsewhere) can import this module for ``--logger``.
CHECKOUT = Path(__file__).resolve().parent.parent


def require(binary: str) -> str:
    """The path of ``binary``; if it is missing, skip the test saying so, or under CI fail it.

    CI (``.ci/run``, run with ``CI`` set) installs every client: there a missing one is a
    broken install step, which a skip would hide.
    """
    path = shutil.which(binary)
    if path is None:
        message = f"interop client {binary!r} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_files(root: Path) -> list[Path]:
    """Upload temporary files left anywhere under ``root`` (hidden names included)."""
    return sorted(path for path in root.rglob("*") if path.name.endswith(TEMP_SUFFIX))


def settled(check: Callable[[], T], *, grace: float = 1.0) -> T:
    """``check()`` once it is falsy, or its last value after ``grace`` seconds.

    After an ERROR the server deletes the upload's temporary file in the same reactor
    turn, right after sending the packet: a client can exit a hair before that.
    """
    deadline = time.monotonic() + grace
    while True:
        value = check()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def run(
    command: Sequence[str],
    *,
    timeout: float = CLIENT_TIMEOUT,
    stdin: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion (bounded by ``timeout``), capturing its output as text."""
    return subprocess.run(
        list(command),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _bound_udp_ports(host: str) -> set[int]:
    """UDP ports bound on ``host`` (IPv4 only) according to /proc/net/udp."""
    wanted = socket.inet_aton(host)[::-1].hex().upper()  # little-endian hex, as the kernel prints
    ports: set[int] = set()
    try:
        with open("/proc/net/udp", encoding="ascii") as table:
            next(table, None)
            for line in table:
                local = line.split()[1]
                address, _, port = local.partition(":")
                if address in (wanted, "00000000"):
                    ports.add(int(port, 16))
    except OSError:
        pass
    return ports


def read_whole(client: socket.socket, port: int, request: bytes) -> tuple[bytes, tuple[str, int]]:
    """Send ``request`` and read the whole download (blocks of 512); its data and TID."""
    client.sendto(request, (HOST, port))
    received, block = b"", 0
    while True:
        reply, transfer = client.recvfrom(1024)
        assert reply[:2] == b"\x00\x03", reply
        (number,) = struct.unpack("!H", reply[2:4])
        if number == block + 1:
            block, received = number, received + reply[4:]
        client.sendto(struct.pack("!HH", 4, number), transfer)
        if number == block and len(reply) < 516:
            return received, transfer


def probe(port: int, host: str = HOST, *, timeout: float = 2.0) -> bytes | None:
    """Send one RRQ for :data:`PROBE_NAME`; return the first reply, or None."""
    request = b"\x00\x01" + PROBE_NAME.encode("ascii") + b"\x00octet\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        try:
            reply, _addr = sock.recvfrom(65536)
        except TimeoutError:
            return None
        return reply


def text_and_json_log() -> ILogObserver:
    """A twistd ``--logger``: the usual text on standard output, and every event as JSON
    (all its fields, which the text leaves out) in the file named by
    :data:`JSON_LOG_VARIABLE`. Both flush after each event."""
    json_file = open(os.environ[JSON_LOG_VARIABLE], "a", encoding="utf-8")  # noqa: SIM115
    return LogPublisher(textFileLogObserver(sys.stdout), jsonFileLogObserver(json_file))


class TFTPServer:
    """``twistd netsvc-tftp`` serving ``root`` on 127.0.0.1 (a free port), for one test scope.

    With ``json_log``, the server also writes its log events there as JSON, with their
    fields: see :meth:`json_events`.
    """

    def __init__(
        self, root: Path, log_path: Path, *flags: str, reactor: str | None = None,
        json_log: Path | None = None,
    ) -> None:
        self.root = root
        self.log_path = log_path
        self.flags = flags
        self.reactor = reactor
        self.json_log = json_log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        #: Readiness probes that were answered (each is one refused transfer in the log).
        self.probes = 0

    def url(self, name: str) -> str:
        return f"tftp://{HOST}:{self.port}/{name}"

    def start(self, timeout: float = 20.0) -> TFTPServer:
        last_log = ""
        for _attempt in range(3):  # the free port may be taken between choosing and binding
            self.port = free_port(socket.SOCK_DGRAM, HOST)
            command = twistd_command(
                *([f"--reactor={self.reactor}"] if self.reactor else []),
                *self._logger_options(),
                "netsvc-tftp", "--root", str(self.root), "--port", str(self.port),
                "--interface", HOST, *self.flags,
            )
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=self.root.parent, env=self._environment(),
                )
            if self._wait_until_serving(timeout):
                return self
            self.stop()
            last_log = self.log()
            if "already in use" not in last_log:
                break
        raise AssertionError(f"netsvc-tftp did not start ({self.flags}):\n{last_log}")

    def _logger_options(self) -> list[str]:
        if self.json_log is None:
            return []
        return [f"--logger={__name__}.{text_and_json_log.__name__}"]

    def _environment(self) -> dict[str, str] | None:
        if self.json_log is None:
            return None  # inherited
        path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, JSON_LOG_VARIABLE: str(self.json_log)}

    def _wait_until_serving(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.port not in _bound_udp_ports(HOST):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            reply = probe(self.port)
            if reply is not None:
                self.probes += 1
                # ERROR 1 for the missing probe file: a TFTP server is answering.
                return reply[:4] == b"\x00\x05\x00\x01"
        return False

    def stop(self) -> str:
        """Stop the server (SIGTERM to its process group, SIGKILL after 10 s); its log."""
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        return self.log()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[re.Match[str]]:
        """The transfer events logged so far (readiness probes left out)."""
        found = (EVENT.search(line) for line in self.log().splitlines())
        return [m for m in found if m is not None and m["name"] != PROBE_NAME]

    def json_events(self) -> list[dict[str, Any]]:
        """The transfer events logged so far with all their fields (needs ``json_log``;
        readiness probes left out)."""
        assert self.json_log is not None, "this server was started without json_log"
        try:
            with open(self.json_log, encoding="utf-8") as records:
                events = list(eventsFromJSONLogFile(records))
        except FileNotFoundError:
            return []
        return [e for e in events if "outcome" in e and e.get("filename") != PROBE_NAME]


# -- client command lines ----------------------------------------------------------------------


def curl(*args: str, max_time: float = CLIENT_TIMEOUT) -> list[str]:
    """curl, silent but for errors, always bounded (``-m`` and ``--connect-timeout``).

    A 1-byte curl upload once failed in CI with exit 28 under a 5 s connect timeout,
    right after the pip install: curl seems to apply its connect timeout to short TFTP
    transfers, and an upload's final ACK waits for the server's fsync, which is slow
    while the disk is flushing (the likely cause, not proven). Hence 30 s.
    """
    return [
        require("curl"), "--silent", "--show-error", "-m", str(int(max_time)),
        "--connect-timeout", "30", *args,
    ]


def busybox_tftp(*args: str) -> list[str]:
    return [require("busybox"), "tftp", *args]


def tftp_hpa(port: int, *command: str, options: Sequence[str] = ()) -> list[str]:
    """tftp-hpa: ``tftp [OPTIONS] HOST PORT [-c COMMAND...]`` (``-c`` must come last).

    Without ``command`` it reads its commands from standard input.
    """
    tail = ["-c", *command] if command else []
    return [require("tftp"), *options, HOST, str(port), *tail]


def atftp(port: int, *args: str) -> list[str]:
    return [require("atftp"), *args, HOST, str(port)]
