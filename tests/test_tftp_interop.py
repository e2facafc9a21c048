"""Interop: the real netsvc TFTP server (twistd netsvc-tftp) against real third-party clients.

Clients: curl (tftp://), busybox tftp, tftp-hpa's tftp and atftp, all on 127.0.0.1 with a
free high port. Every transfer is checked with sha256; errors are checked the way each
client reports them:

* curl: its exit code (68 not found, 69 access violation, 70 disk full, 71 illegal
  operation or ERROR 0, 73 file exists). curl 7.88's *message* is useless for TFTP errors
  ("getpeername() failed with errno 107", curl PR #11332), so only the code is checked.
* busybox: exit 1 and ``server error: (CODE) ...``.
* tftp-hpa: ``Error code CODE: MESSAGE`` (tftp-hpa 5.2 exits 0 even on errors).
* atftp: a non-zero exit and ``error received from server <MESSAGE>`` (it never prints
  the code, so the server's message for that code is what we can check).

Client quirks that shape the tests (measured with the Debian bookworm clients):

* busybox refuses ``-b`` below 24 ("bad blocksize") and needs the whole request to fit in
  one block ("remote filename is too long" below ~56), so its rollover test uses
  ``-b 64`` and a file of more than 64 x 65536 bytes. At the top it takes ``-b 65464``,
  the largest blksize RFC 2348 allows (busybox 1.35 itself checks only against 65564).
* curl 7.88 with options asks for ``tsize`` and rejects ``tsize 0`` in an OACK ("invalid
  tsize", exit 71, and it leaves without an ERROR packet): an empty file cannot be
  downloaded by curl with options from any RFC 2349 server. That case has its own test;
  the download matrix covers empty files with curl ``--tftp-no-options``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop_support import (
    EVENT,
    HOST,
    PROBE_NAME,
    TFTPServer,
    atftp,
    busybox_tftp,
    curl,
    output_of,
    require,
    run,
    settled,
    sha256,
    temp_files,
    tftp_hpa,
)

pytestmark = pytest.mark.interop

KIB = 1024
MIB = 1024 * KIB

#: The sizes every client moves in both directions.
SIZES = {"0B": 0, "1B": 1, "512B": 512, "3MiB": 3 * MIB}
#: curl and atftp at blksize 8: 600 KiB is 76,800 blocks, so the block number wraps once.
BLKSIZE_8_ROLLOVER_SIZE = 600 * KIB
#: busybox at blksize 64 (its practical minimum): past 65,535 blocks by 500 and a bit.
BUSYBOX_ROLLOVER_SIZE = 64 * 65536 + 64 * 500 + 3
#: How long a rollover transfer may take on this shared 2-core machine.
ROLLOVER_LIMIT = 60.0

#: What the server says for each error code (atftp shows only the message).
NOT_FOUND = (1, "File not found")
UPLOADS_REFUSED = (2, "Uploads are not allowed")
ILLEGAL_NAME = (2, "Illegal file name")
ACCESS_VIOLATION = (2, "Access violation")
NOT_A_FILE = (2, "Not a regular file")
TOO_LARGE = (3, "File too large")
DISK_FULL = (3, "Disk full or allocation exceeded")
EXISTS = (6, "File already exists")

#: curl's exit code for each TFTP error code (lib/tftp.c, tftp_translate_code).
CURL_EXIT = {0: 71, 1: 68, 2: 69, 3: 70, 4: 71, 5: 72, 6: 73, 7: 74}


def _file(path: Path, size: int, seed: int) -> Path:
    """``size`` pseudo-random bytes (deterministic per seed): reordered blocks would show."""
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _netascii_text() -> bytes:
    """A text file with LF line ends, some bare CRs and a CRLF, many lines long.

    With ~3,000 lines of varying length, netascii CR LF pairs (and CR NUL) fall across
    512-byte block edges many times, which is where a streaming codec goes wrong.
    """
    lines = []
    for i in range(3000):
        line = "".join("abcdefghij klmnop"[(i * 7 + j * 3) % 17] for j in range((i * 37) % 83))
        if i % 97 == 0:
            line += "\rbare-cr"
        if i % 211 == 0:
            line += "\r"  # becomes CR LF in the file: CR NUL CR LF on the wire
        lines.append(line)
    return ("\n".join(lines) + "\n").encode("ascii")


def _netascii_length(data: bytes) -> int:
    """Octets on the wire for ``data`` in netascii: LF -> CR LF, CR -> CR NUL."""
    return len(data) + data.count(b"\n") + data.count(b"\r")


def _netascii(data: bytes) -> bytes:
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def _cr_at_block_ends(data: bytes) -> int:
    """How many 512-octet netascii blocks end in the middle of a CR LF or CR NUL pair."""
    wire = _netascii(data)
    return sum(1 for end in range(511, len(wire), 512) if wire[end] == 13)


def _passwd() -> bytes | None:
    try:
        data = Path("/etc/passwd").read_bytes()
    except OSError:
        return None
    return data or None


def _not_passwd(path: Path) -> None:
    """The client's output file, if any, does not hold the real /etc/passwd."""
    real = _passwd()
    if real is None or not path.exists():
        return
    got = path.read_bytes()
    assert real not in got, "the real /etc/passwd came through"
    assert not (len(got) >= 16 and got in real), "part of the real /etc/passwd came through"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source files (outside every server root) by name."""
    base = tmp_path_factory.mktemp("interop-src")
    made = {f"s{label}.bin": _file(base / f"s{label}.bin", size, seed)
            for seed, (label, size) in enumerate(SIZES.items())}
    made["roll600k.bin"] = _file(base / "roll600k.bin", BLKSIZE_8_ROLLOVER_SIZE, 11)
    made["r"] = _file(base / "r", BUSYBOX_ROLLOVER_SIZE, 12)
    made["m1.bin"] = _file(base / "m1.bin", MIB, 13)
    made["m1b.bin"] = _file(base / "m1b.bin", MIB, 14)
    made["k200.bin"] = _file(base / "k200.bin", 200 * KIB, 15)
    made["k10.bin"] = _file(base / "k10.bin", 10 * KIB, 16)
    made["k20.bin"] = _file(base / "k20.bin", 20 * KIB, 17)
    made["max.bin"] = _file(base / "max.bin", 100_000, 18)
    made["max1.bin"] = _file(base / "max1.bin", 100_001, 19)
    (base / "text.txt").write_bytes(_netascii_text())
    made["text.txt"] = base / "text.txt"
    return made


@pytest.fixture(scope="module")
def ro_root(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("interop-ro") / "root"
    root.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, root / name)
    (root / "passwd_link").symlink_to("/etc/passwd")
    (root / "inside_link").symlink_to("s512B.bin")
    (root / "adir").mkdir()
    os.mkfifo(root / "fifo")
    return root


def _serve(
    root: Path, log: Path, *flags: str, json_log: Path | None = None
) -> Iterator[TFTPServer]:
    server = TFTPServer(root, log, *flags, json_log=json_log).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ro_server(ro_root: Path) -> Iterator[TFTPServer]:
    """Read-only, all defaults; its events also in JSON (for the options they granted)."""
    yield from _serve(
        ro_root, ro_root.parent / "twistd.log", json_log=ro_root.parent / "events.json"
    )


@pytest.fixture(scope="module")
def rw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFTPServer]:
    """``--writable`` (new files only).

    ``--max-per-client 0``: each finished upload keeps its session (and a per-client
    slot) for the 5 s dally, and this module uploads more than 32 files from 127.0.0.1
    within 5 s (see test_many_quick_uploads_from_one_host_are_not_refused_as_busy).
    """
    root = tmp_path_factory.mktemp("interop-rw") / "root"
    root.mkdir()
    yield from _serve(root, root.parent / "twistd.log", "--writable", "--max-per-client", "0")


@pytest.fixture(scope="module")
def capped_server(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[TFTPServer]:
    """``--writable --max-upload 100000``."""
    root = tmp_path_factory.mktemp("interop-cap") / "root"
    root.mkdir()
    yield from _serve(
        root, root.parent / "twistd.log", "--writable", "--max-upload", "100000",
    )


# -- how each client reports an error -----------------------------------------------------------


def assert_reported(client: str, result: subprocess.CompletedProcess[str],
                    error: tuple[int, str]) -> None:
    """``client`` reported the server's ERROR ``code`` (with ``message``)."""
    code, message = error
    both = result.stdout + result.stderr
    details = output_of(result)
    kind = client.split("-")[0] if not client.startswith("tftp-hpa") else "tftp-hpa"
    if kind == "curl":
        assert result.returncode == CURL_EXIT[code], details
    elif kind == "busybox":
        assert result.returncode == 1, details
        assert f"server error: ({code})" in both, details
    elif kind == "tftp-hpa":
        assert f"Error code {code}: {message}" in both, details
    elif kind == "atftp":
        assert result.returncode != 0, details
        assert f"<{message}>" in both, details
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(f"unknown client {client}")


# -- a missing client ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ci", "outcome"), [
    (None, pytest.skip.Exception), ("", pytest.skip.Exception), ("true", pytest.fail.Exception),
])
def test_a_missing_client_is_a_skip_but_under_ci_a_failure(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type[BaseException]
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="'netsvc-no-such-client' is not installed"):
        require("netsvc-no-such-client")


# -- download commands -------------------------------------------------------------------------

Command = Callable[[TFTPServer, str, Path], list[str]]

DOWNLOADERS: dict[str, Command] = {
    "curl": lambda s, name, out: curl("-o", str(out), s.url(name)),
    "curl-blksize-1468": lambda s, name, out: curl(
        "--tftp-blksize", "1468", "-o", str(out), s.url(name)),
    "curl-blksize-65464": lambda s, name, out: curl(
        "--tftp-blksize", "65464", "-o", str(out), s.url(name)),
    "curl-no-options": lambda s, name, out: curl(
        "--tftp-no-options", "-o", str(out), s.url(name)),
    "busybox": lambda s, name, out: busybox_tftp(
        "-g", "-r", name, "-l", str(out), HOST, str(s.port)),
    "busybox-blksize-1468": lambda s, name, out: busybox_tftp(
        "-b", "1468", "-g", "-r", name, "-l", str(out), HOST, str(s.port)),
    "busybox-blksize-65464": lambda s, name, out: busybox_tftp(
        "-b", "65464", "-g", "-r", name, "-l", str(out), HOST, str(s.port)),
    "tftp-hpa": lambda s, name, out: tftp_hpa(
        s.port, "get", name, str(out), options=["-m", "binary"]),
    "atftp": lambda s, name, out: atftp(s.port, "-g", "-r", name, "-l", str(out)),
    "atftp-blksize-65464": lambda s, name, out: atftp(
        s.port, "--option", "blksize 65464", "-g", "-r", name, "-l", str(out)),
    "atftp-blksize-1468-windowsize-16": lambda s, name, out: atftp(
        s.port, "--option", "blksize 1468", "--option", "windowsize 16",
        "-g", "-r", name, "-l", str(out)),
}

#: curl with options cannot take an empty file (tsize 0): see the module docstring.
_CURL_WITH_OPTIONS = {"curl", "curl-blksize-1468", "curl-blksize-65464"}

DOWNLOAD_CASES = [
    pytest.param(client, label, id=f"{client}-{label}")
    for client in DOWNLOADERS
    for label in SIZES
    if not (label == "0B" and client in _CURL_WITH_OPTIONS)
]


def _asked_blksize(client: str) -> int | None:
    """The blksize a client row asks for (``...-blksize-N...``), if it names one."""
    found = re.search(r"blksize-(\d+)", client)
    return int(found[1]) if found else None


def _assert_blksize_granted(server: TFTPServer, name: str, logged_before: int,
                            blksize: int | None) -> None:
    """The download of ``name`` logged after the first ``logged_before`` events ran at
    ``blksize``: the client did not fall back to 512 (nor the server grant less)."""
    if blksize is None:
        return
    deadline = time.monotonic() + 10  # logged on the last ACK, which the client may beat
    while True:
        found = [e for e in server.json_events()[logged_before:] if e["filename"] == name]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(e["outcome"], e["options"].get("blksize")) for e in found] == [
        ("complete", str(blksize))
    ], found


@pytest.mark.parametrize(("client", "label"), DOWNLOAD_CASES)
def test_download(ro_server: TFTPServer, files: dict[str, Path], tmp_path: Path,
                  client: str, label: str) -> None:
    name = f"s{label}.bin"
    out = tmp_path / "out.bin"
    logged_before = len(ro_server.json_events())
    result = run(DOWNLOADERS[client](ro_server, name, out))
    details = output_of(result)
    assert result.returncode == 0, details
    assert "Error code" not in result.stdout + result.stderr, details  # tftp-hpa exits 0
    assert out.exists(), details
    assert out.stat().st_size == SIZES[label], details
    assert sha256(out) == sha256(files[name])
    _assert_blksize_granted(ro_server, name, logged_before, _asked_blksize(client))


def test_curl_with_options_and_an_empty_file(ro_server: TFTPServer, tmp_path: Path) -> None:
    """An empty file downloads with curl's default options.

    curl 7.88 (lib/tftp.c) rejects an OACK with ``tsize 0`` ("invalid tsize", exit 71) and
    leaves without an ERROR packet, so the server declines tsize for an empty file.
    """
    out = tmp_path / "empty.bin"
    result = run([*curl("-v", "-o", str(out), ro_server.url("s0B.bin"))])
    assert result.returncode == 0, output_of(result)
    assert out.exists() and out.stat().st_size == 0
    assert ro_server.alive


def _timed(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run(command, timeout=timeout)
    return result, time.monotonic() - started


#: Downloads whose block number wraps past 65535: (file, command) by client row.
#: 76,800 blocks of 8 bytes for curl and atftp; 66,037 blocks of 64 bytes for busybox
#: (it cannot go lower with a request that fits, see the module docstring).
ROLLOVER_DOWNLOADS: dict[str, tuple[str, Command]] = {
    "curl-blksize-8": ("roll600k.bin", lambda s, name, out: curl(
        "--tftp-blksize", "8", "-o", str(out), s.url(name), max_time=2 * ROLLOVER_LIMIT)),
    "atftp-blksize-8": ("roll600k.bin", lambda s, name, out: atftp(
        s.port, "--option", "blksize 8", "-g", "-r", name, "-l", str(out))),
    "busybox-blksize-64": ("r", lambda s, name, out: busybox_tftp(
        "-b", "64", "-g", "-r", name, "-l", str(out), HOST, str(s.port))),
}


@pytest.mark.parametrize("client", list(ROLLOVER_DOWNLOADS))
def test_rollover_download(ro_server: TFTPServer, files: dict[str, Path], tmp_path: Path,
                           client: str) -> None:
    name, command = ROLLOVER_DOWNLOADS[client]
    blksize = _asked_blksize(client)
    assert blksize is not None and files[name].stat().st_size // blksize > 65535
    out = tmp_path / "roll.bin"
    logged_before = len(ro_server.json_events())
    result, elapsed = _timed(command(ro_server, name, out), timeout=2 * ROLLOVER_LIMIT + 10)
    print(f"{client}, {files[name].stat().st_size} bytes: {elapsed:.1f} s")
    assert result.returncode == 0, output_of(result)
    assert sha256(out) == sha256(files[name])
    assert elapsed < ROLLOVER_LIMIT
    _assert_blksize_granted(ro_server, name, logged_before, blksize)


def test_rollover_curl_upload_blksize_8(rw_server: TFTPServer, files: dict[str, Path]) -> None:
    result, elapsed = _timed(
        curl("--tftp-blksize", "8", "-T", str(files["roll600k.bin"]),
             rw_server.url("roll-up.bin"), max_time=2 * ROLLOVER_LIMIT),
        timeout=2 * ROLLOVER_LIMIT + 10,
    )
    print(f"curl upload blksize 8, {BLKSIZE_8_ROLLOVER_SIZE} bytes: {elapsed:.1f} s")
    assert result.returncode == 0, output_of(result)
    assert sha256(rw_server.root / "roll-up.bin") == sha256(files["roll600k.bin"])
    assert temp_files(rw_server.root) == []
    assert elapsed < ROLLOVER_LIMIT


# -- uploads -----------------------------------------------------------------------------------

Upload = Callable[[TFTPServer, Path, str], list[str]]

UPLOADERS: dict[str, Upload] = {
    "curl": lambda s, src, name: curl("-T", str(src), s.url(name)),
    "curl-blksize-65464": lambda s, src, name: curl(
        "--tftp-blksize", "65464", "-T", str(src), s.url(name)),
    "curl-no-options": lambda s, src, name: curl(
        "--tftp-no-options", "-T", str(src), s.url(name)),
    "busybox": lambda s, src, name: busybox_tftp(
        "-p", "-l", str(src), "-r", name, HOST, str(s.port)),
    "busybox-blksize-1468": lambda s, src, name: busybox_tftp(
        "-b", "1468", "-p", "-l", str(src), "-r", name, HOST, str(s.port)),
    "tftp-hpa": lambda s, src, name: tftp_hpa(
        s.port, "put", str(src), name, options=["-m", "binary"]),
    "atftp": lambda s, src, name: atftp(s.port, "-p", "-l", str(src), "-r", name),
    "atftp-blksize-1468-windowsize-16": lambda s, src, name: atftp(
        s.port, "--option", "blksize 1468", "--option", "windowsize 16",
        "-p", "-l", str(src), "-r", name),
}


@pytest.mark.parametrize("label", list(SIZES))
@pytest.mark.parametrize("client", list(UPLOADERS))
def test_upload(rw_server: TFTPServer, files: dict[str, Path], client: str, label: str) -> None:
    source = files[f"s{label}.bin"]
    name = f"up-{client}-{label}.bin"
    result = run(UPLOADERS[client](rw_server, source, name))
    details = output_of(result)
    assert result.returncode == 0, details
    assert "Error code" not in result.stdout + result.stderr, details
    # The server sends the final ACK only after the commit: the file is there already.
    stored = rw_server.root / name
    assert stored.exists(), details
    assert sha256(stored) == sha256(source)
    assert temp_files(rw_server.root) == []


# -- netascii (tftp-hpa converts on its side too) ------------------------------------------------


def test_netascii_download_tftp_hpa(ro_server: TFTPServer, files: dict[str, Path],
                                    tmp_path: Path) -> None:
    text = files["text.txt"].read_bytes()
    assert _cr_at_block_ends(text) >= 5  # the codec's hard case is really exercised
    out = tmp_path / "text.txt"
    result = run(
        tftp_hpa(ro_server.port, "get", "text.txt", str(out), options=["-v", "-m", "ascii"])
    )
    details = output_of(result)
    assert result.returncode == 0 and "Error code" not in details, details
    assert out.read_bytes() == text
    # The wire carried netascii (CR LF, CR NUL), not the file's own bytes.
    assert f"Received {_netascii_length(text)} bytes" in result.stdout, details


def test_netascii_upload_tftp_hpa(rw_server: TFTPServer, files: dict[str, Path]) -> None:
    text = files["text.txt"].read_bytes()
    script = f"mode ascii\nput {files['text.txt']} ascii-up.txt\nquit\n"
    result = run(tftp_hpa(rw_server.port, options=["-v"]), stdin=script)
    details = output_of(result)
    assert result.returncode == 0 and "Error code" not in details, details
    assert f"Sent {_netascii_length(text)} bytes" in result.stdout, details
    assert (rw_server.root / "ascii-up.txt").read_bytes() == text
    assert temp_files(rw_server.root) == []


# -- errors ------------------------------------------------------------------------------------

ERROR_CLIENTS = ["curl", "busybox", "tftp-hpa", "atftp"]


@pytest.mark.parametrize("client", ERROR_CLIENTS)
def test_not_found(ro_server: TFTPServer, tmp_path: Path, client: str) -> None:
    out = tmp_path / "out"
    result = run(DOWNLOADERS[client](ro_server, "no-such-file.bin", out))
    assert_reported(client, result, NOT_FOUND)
    assert not out.exists() or out.stat().st_size == 0


@pytest.mark.parametrize("client", ERROR_CLIENTS)
def test_upload_to_read_only_server(ro_server: TFTPServer, files: dict[str, Path],
                                    client: str) -> None:
    result = run(UPLOADERS[client](ro_server, files["s512B.bin"], "new-upload.bin"))
    assert_reported(client, result, UPLOADS_REFUSED)
    assert not (ro_server.root / "new-upload.bin").exists()
    assert settled(lambda: temp_files(ro_server.root)) == []


TRAVERSALS: dict[str, Command] = {
    # --path-as-is: otherwise curl squashes the "../" itself before sending.
    "curl-dotdot": lambda s, name, out: curl(
        "--path-as-is", "-o", str(out), s.url("../etc/passwd")),
    "curl-dotdot-%2f": lambda s, name, out: curl("-o", str(out), s.url("..%2fetc%2fpasswd")),
    "curl-deep-dotdot": lambda s, name, out: curl(
        "-o", str(out), s.url("adir%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd")),
    "busybox": lambda s, name, out: DOWNLOADERS["busybox"](s, "../etc/passwd", out),
    "tftp-hpa": lambda s, name, out: DOWNLOADERS["tftp-hpa"](s, "../etc/passwd", out),
    "atftp": lambda s, name, out: DOWNLOADERS["atftp"](s, "../etc/passwd", out),
}


@pytest.mark.parametrize("variant", list(TRAVERSALS))
def test_dotdot_is_refused(ro_server: TFTPServer, tmp_path: Path, variant: str) -> None:
    out = tmp_path / "out"
    result = run(TRAVERSALS[variant](ro_server, "", out))
    assert_reported(variant, result, ILLEGAL_NAME)
    _not_passwd(out)


ABSOLUTE: dict[str, Command] = {
    "curl": lambda s, name, out: curl("-o", str(out), s.url("/etc/passwd")),
    "busybox": lambda s, name, out: DOWNLOADERS["busybox"](s, "/etc/passwd", out),
    "tftp-hpa": lambda s, name, out: DOWNLOADERS["tftp-hpa"](s, "/etc/passwd", out),
    "atftp": lambda s, name, out: DOWNLOADERS["atftp"](s, "/etc/passwd", out),
}


@pytest.mark.parametrize("client", list(ABSOLUTE))
def test_absolute_name_stays_inside_the_root(ro_server: TFTPServer, tmp_path: Path,
                                             client: str) -> None:
    """``/etc/passwd`` is ROOT/etc/passwd, which does not exist: not found, no leak."""
    assert not (ro_server.root / "etc").exists()
    out = tmp_path / "out"
    result = run(ABSOLUTE[client](ro_server, "", out))
    assert_reported(client, result, NOT_FOUND)
    _not_passwd(out)


@pytest.mark.parametrize("client", ERROR_CLIENTS)
def test_symlink_out_of_the_root_is_refused(ro_server: TFTPServer, tmp_path: Path,
                                            client: str) -> None:
    out = tmp_path / "out"
    result = run(DOWNLOADERS[client](ro_server, "passwd_link", out))
    assert_reported(client, result, ACCESS_VIOLATION)
    _not_passwd(out)


def test_symlink_inside_the_root_is_served(ro_server: TFTPServer, files: dict[str, Path],
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(DOWNLOADERS["curl"](ro_server, "inside_link", out))
    assert result.returncode == 0, output_of(result)
    assert sha256(out) == sha256(files["s512B.bin"])


@pytest.mark.parametrize("name", ["adir", "fifo"])
def test_directory_and_fifo_are_refused(ro_server: TFTPServer, tmp_path: Path,
                                        name: str) -> None:
    assert stat.S_ISFIFO((ro_server.root / "fifo").stat().st_mode)
    out = tmp_path / "out"
    result = run(DOWNLOADERS["tftp-hpa"](ro_server, name, out), timeout=20)
    assert_reported("tftp-hpa", result, NOT_A_FILE)
    # The reactor was not blocked on the FIFO: the server still serves.
    result = run(DOWNLOADERS["curl"](ro_server, "s1B.bin", tmp_path / "after"))
    assert result.returncode == 0, output_of(result)


@pytest.mark.parametrize("client", ERROR_CLIENTS)
def test_upload_onto_an_existing_file_without_overwrite(
    rw_server: TFTPServer, files: dict[str, Path], client: str
) -> None:
    target = rw_server.root / f"exists-{client}.bin"
    shutil.copyfile(files["k10.bin"], target)
    result = run(UPLOADERS[client](rw_server, files["k20.bin"], target.name))
    assert_reported(client, result, EXISTS)
    assert sha256(target) == sha256(files["k10.bin"])
    assert settled(lambda: temp_files(rw_server.root)) == []


#: Over --max-upload: curl and busybox announce tsize (refused before any data), the
#: others are stopped when the data passes the limit.
MAX_UPLOAD_CLIENTS = ["curl", "curl-no-options", "busybox", "tftp-hpa", "atftp"]


@pytest.mark.parametrize("client", MAX_UPLOAD_CLIENTS)
def test_upload_over_max_upload_is_disk_full(capped_server: TFTPServer,
                                             files: dict[str, Path], client: str) -> None:
    name = f"too-big-{client}.bin"
    result = run(UPLOADERS[client](capped_server, files["k200.bin"], name))
    assert_reported(client, result, TOO_LARGE)
    assert not (capped_server.root / name).exists()
    assert settled(lambda: temp_files(capped_server.root)) == []


@pytest.mark.parametrize("client", ["curl", "curl-no-options"])
def test_max_upload_boundary(capped_server: TFTPServer, files: dict[str, Path],
                             client: str) -> None:
    """Exactly --max-upload bytes are accepted, one byte more is not."""
    exact = f"exact-{client}.bin"
    result = run(UPLOADERS[client](capped_server, files["max.bin"], exact))
    assert result.returncode == 0, output_of(result)
    assert sha256(capped_server.root / exact) == sha256(files["max.bin"])
    over = f"over-{client}.bin"
    result = run(UPLOADERS[client](capped_server, files["max1.bin"], over))
    assert_reported(client, result, TOO_LARGE)
    assert not (capped_server.root / over).exists()
    assert settled(lambda: temp_files(capped_server.root)) == []


# -- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount(8)); skipped only if mounting fails."""
    mount = shutil.which("mount")
    umount = shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("mount/umount not found: cannot make a small tmpfs")
    where = tmp_path / "tmpfs"
    where.mkdir()
    result = run([mount, "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)],
                 timeout=30)
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs (euid {os.geteuid()}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    try:
        yield where
    finally:
        done = run([umount, str(where)], timeout=30)
        if done.returncode != 0:
            run([umount, "-l", str(where)], timeout=30)


def _free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


@pytest.mark.root
def test_real_disk_full_on_a_small_tmpfs(small_tmpfs: Path, files: dict[str, Path],
                                         tmp_path: Path) -> None:
    keep = small_tmpfs / "keep.bin"
    shutil.copyfile(files["k10.bin"], keep)
    keep_sum = sha256(keep)
    free_before = _free_bytes(small_tmpfs)
    server = TFTPServer(small_tmpfs, tmp_path / "twistd.log", "--writable", "--overwrite")
    server.start()
    try:
        attempts = {
            # curl announces tsize: the server compares it with the free space up front.
            "curl": UPLOADERS["curl"],
            # No tsize: the data really fills the file system (ENOSPC while writing).
            "curl-no-options": UPLOADERS["curl-no-options"],
            "tftp-hpa": UPLOADERS["tftp-hpa"],
        }
        for client, command in attempts.items():
            for name in ("keep.bin", f"new-{client}.bin"):
                result = run(command(server, files["m1.bin"], name))
                assert_reported(client, result, DISK_FULL)
                assert sha256(keep) == keep_sum, f"{client} {name}: keep.bin changed"
                left = settled(lambda: [p.name for p in small_tmpfs.iterdir() if p != keep])
                assert left == [], f"{client} {name}: files left: {left}"
        # The space of the discarded uploads came back, and the server still works.
        assert _free_bytes(small_tmpfs) == free_before
        result = run(UPLOADERS["curl"](server, files["k20.bin"], "keep.bin"))
        assert result.returncode == 0, output_of(result)
        assert sha256(keep) == sha256(files["k20.bin"])
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


# -- concurrency -------------------------------------------------------------------------------


def test_twenty_simultaneous_curl_downloads(ro_server: TFTPServer, files: dict[str, Path],
                                            tmp_path: Path) -> None:
    want = sha256(files["m1.bin"])
    outs = [tmp_path / f"c{i}.bin" for i in range(20)]
    processes = [
        subprocess.Popen(curl("-o", str(out), ro_server.url("m1.bin"), max_time=60),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for out in outs
    ]
    failures = []
    for out, process in zip(outs, processes, strict=True):
        try:
            _stdout, stderr = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            failures.append(f"{out.name}: timed out")
            continue
        if process.returncode != 0:
            failures.append(f"{out.name}: exit {process.returncode} {stderr!r}")
        elif sha256(out) != want:
            failures.append(f"{out.name}: wrong sha256")
    assert failures == []


# -- the log ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_session(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> tuple[str, list[tuple[str, str, str, int]], int]:
    """A server that ran a known list of transfers and was stopped; (log, expected, probes).

    Each expected transfer is (direction, name, outcome, bytes).
    """
    for binary in ("curl", "busybox", "tftp", "atftp"):
        require(binary)
    base = tmp_path_factory.mktemp("interop-log")
    root = base / "root"
    root.mkdir()
    shutil.copyfile(files["s3MiB.bin"], root / "big.bin")
    shutil.copyfile(files["k10.bin"], root / "exists.bin")
    server = TFTPServer(root, base / "twistd.log", "--writable").start()
    out = base / "out"
    out.mkdir()
    expected: list[tuple[str, str, str, int]] = []
    try:
        for client in ("curl-no-options", "busybox", "tftp-hpa", "atftp"):
            result = run(DOWNLOADERS[client](server, "big.bin", out / client))
            assert result.returncode == 0, output_of(result)
            expected.append(("read", "big.bin", "complete", 3 * MIB))
        result = run(DOWNLOADERS["curl"](server, "missing.bin", out / "missing"))
        assert_reported("curl", result, NOT_FOUND)
        expected.append(("read", "missing.bin", "refused", 0))
        for client in ("curl", "busybox"):
            result = run(UPLOADERS[client](server, files["k200.bin"], f"{client}.bin"))
            assert result.returncode == 0, output_of(result)
            expected.append(("write", f"{client}.bin", "complete", 200 * KIB))
        result = run(UPLOADERS["curl"](server, files["k20.bin"], "exists.bin"))
        assert_reported("curl", result, EXISTS)
        expected.append(("write", "exists.bin", "refused", 0))
    finally:
        log = server.stop()  # SIGTERM: dallying uploads end and log then
    return log, expected, server.probes


def test_log_has_one_event_per_transfer(
    logged_session: tuple[str, list[tuple[str, str, str, int]], int],
) -> None:
    log, expected, probes = logged_session
    events = [m for m in map(EVENT.search, log.splitlines()) if m is not None]
    seen = sorted(
        (m["direction"], m["name"], m["outcome"], int(m["bytes"]))
        for m in events if m["name"] != PROBE_NAME
    )
    assert seen == sorted(expected), log
    assert sum(m["name"] == PROBE_NAME for m in events) == probes, log
    assert all(m["peer"].startswith("127.0.0.1:") for m in events), log
    assert "Traceback" not in log, log
    assert "Unhandled" not in log, log
    # No per-packet lines: 3 MiB at 512 bytes is 6,144 blocks per download. Allow the
    # fixed start/stop lines and a few lines per transfer.
    lines = log.splitlines()
    assert len(lines) <= 15 + 3 * (len(expected) + probes), log
    assert not re.search(r"\b(DATA|ACK|block)\b", log), log


def test_log_has_no_other_per_transfer_lines(
    logged_session: tuple[str, list[tuple[str, str, str, int]], int],
) -> None:
    log, _expected, _probes = logged_session
    noise = [line for line in log.splitlines()
             if "Transfer starting on" in line or re.search(r"\(UDP Port \d+ Closed\)", line)]
    # The listening port's own start and close lines are fine; one pair, not one per transfer.
    assert len(noise) <= 2, "\n".join(noise)


def test_upload_log_duration_is_the_transfer_time(rw_server: TFTPServer,
                                                  files: dict[str, Path]) -> None:
    name = "duration.bin"
    started = time.monotonic()
    result = run(UPLOADERS["curl"](rw_server, files["k200.bin"], name))
    took = time.monotonic() - started
    assert result.returncode == 0, output_of(result)
    assert took < 2.0  # the client's own view: well under a second on loopback
    deadline = time.monotonic() + 15
    while True:
        found = [m for m in rw_server.events() if m["name"] == name]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(found) == 1, rw_server.log()
    assert found[0]["outcome"] == "complete"
    assert float(found[0]["duration"]) < took + 1.0, found[0].group(0)


def test_many_quick_uploads_from_one_host_are_not_refused_as_busy(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = TFTPServer(root, tmp_path / "twistd.log", "--writable").start()
    refused: list[str] = []
    try:
        for i in range(40):  # one after the other: never more than one running at once
            result = run(UPLOADERS["curl"](server, files["s1B.bin"], f"small{i}.bin"),
                         timeout=20)
            if result.returncode != 0:
                # tftp-hpa shows the server's code and message, curl only its exit code.
                again = run(UPLOADERS["tftp-hpa"](server, files["s1B.bin"], f"again{i}.bin"))
                refused.append(f"upload {i + 1}: curl exit {result.returncode}; tftp-hpa: "
                               f"{(again.stdout + again.stderr).strip()}")
                break
    finally:
        server.stop()
    assert refused == []


def test_server_survived(ro_server: TFTPServer, rw_server: TFTPServer) -> None:
    """Everything above left both module servers running, without a traceback."""
    for server in (ro_server, rw_server):
        assert server.alive, server.log()
        assert "Traceback" not in server.log(), server.log()
