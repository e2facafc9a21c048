"""twistd wiring: options, service trees, plugin discovery and readable startup errors."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.python import usage

from netsvc import echo_tap, tap
from netsvc.listening import (
    ListenError,
    StartupError,
    TCPListenService,
    UDPListenService,
    describe_listen_error,
    tcp_endpoint_description,
)
from tests.support import REPO, free_tcp_udp_port, running, twistd_command


def parse(options_class: type[usage.Options], *args: str) -> usage.Options:
    options = options_class()
    options.parseOptions(list(args))
    return options


def leaves(service: Any) -> list[Any]:
    if IServiceCollection.providedBy(service):
        return [leaf for child in service for leaf in leaves(child)]
    return [service]


def test_echo_defaults_follow_rfc_862() -> None:
    options = parse(echo_tap.Options)
    assert options["port"] == 7 and options["interface"] == ""
    services = leaves(echo_tap.makeService(options))
    tcp = [s for s in services if isinstance(s, TCPListenService)]
    udp = [s for s in services if isinstance(s, UDPListenService)]
    assert [s.description for s in tcp] == ["tcp:7"]
    assert [(s.port_number, s.interface, s.max_packet_size) for s in udp] == [(7, "", 65536)]


def test_echo_options_reach_the_services() -> None:
    options = parse(
        echo_tap.Options,
        "--port", "7007", "--interface", "::", "--idle-timeout", "30",
        "--max-per-peer", "4", "--udp-rate", "0",
    )
    services = leaves(echo_tap.makeService(options))
    tcp: Any = next(s for s in services if isinstance(s, TCPListenService))
    udp: Any = next(s for s in services if isinstance(s, UDPListenService))
    assert tcp.description == "tcp:7007:interface=\\:\\:"
    assert tcp.factory.limits.idle_timeout == 30
    assert tcp.factory.limits.max_connections_per_peer == 4
    assert udp.protocol.sources.rate is None


def test_echo_loopback_rate_limit_switch() -> None:
    for argv, expected in [((), False), (("--udp-limit-loopback",), True)]:
        services = leaves(echo_tap.makeService(parse(echo_tap.Options, *argv)))
        udp: Any = next(s for s in services if isinstance(s, UDPListenService))
        assert udp.protocol.limits.udp_limit_loopback is expected


def test_echo_tcp_endpoint_overrides_and_switches() -> None:
    options = parse(echo_tap.Options, "--tcp", "tcp:17007:interface=127.0.0.1", "--no-udp")
    services = leaves(echo_tap.makeService(options))
    assert [type(s) for s in services] == [TCPListenService]
    assert services[0].description == "tcp:17007:interface=127.0.0.1"


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "70000"],
        ["--port", "seven"],
        ["--idle-timeout", "-1"],
        ["--udp-rate", "nan"],
        ["--no-tcp", "--no-udp"],
        ["--max-connections", "-1"],
        ["--max-per-peer", "-1"],
        ["--udp-burst", "0.5"],
    ],
)
def test_echo_bad_options_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(echo_tap.Options, *args)


def test_suite_prefixes_options_and_can_switch_echo_off() -> None:
    options = parse(tap.Options, "--echo-port", "7007", "--echo-no-udp")
    services = leaves(tap.makeService(options))
    assert [s.description for s in services] == ["tcp:7007"]
    with pytest.raises(usage.UsageError, match="nothing to run"):
        parse(tap.Options, "--no-echo")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tftp-port", "6969"], "--tftp-port: for tftp, which is off (it runs only with"
         " --tftp-root)"),
        (["--chat-charset", "gbk"], "--chat-charset: for chat, which is off (it runs only"
         " with --chat)"),
        (["--no-echo", "--echo-port", "7007", "--chat", "tcp:0"], "--echo-port: for echo,"
         " which is off (--no-echo switched it off)"),
        (["--broadcast-loopback"], "for broadcast, which is off (it runs only with --announce"
         " or --discovery)"),
    ],
    ids=["tftp", "chat", "echo", "broadcast"],
)
def test_suite_refuses_options_of_a_service_that_is_off(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as raised:
        parse(tap.Options, *args)
    assert message in str(raised.value)


def test_suite_children_are_named() -> None:
    root: Any = tap.makeService(parse(tap.Options))
    assert root.getServiceNamed("echo") is not None


def test_tcp_endpoint_description_escapes_ipv6() -> None:
    assert tcp_endpoint_description(7) == "tcp:7"
    assert tcp_endpoint_description(7, "::1") == "tcp:7:interface=\\:\\:1"


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EACCES, "-u/-g"),
        (errno.EADDRINUSE, "choose another port"),
        (errno.EADDRNOTAVAIL, "check the interface"),
    ],
)
def test_listen_errors_say_how_to_fix_them(code: int, hint: str) -> None:
    error = CannotListenError("127.0.0.1", 7, OSError(code, "boom"))
    line = describe_listen_error("UDP echo", error)
    assert line.startswith("cannot listen for UDP echo on 127.0.0.1 port 7: boom.")
    assert hint in line and "\n" not in line


def test_bind_failure_in_service_becomes_startup_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        from twisted.internet import reactor

        options = parse(echo_tap.Options, "--tcp", f"tcp:{port}:interface=127.0.0.1", "--no-udp")
        service = echo_tap.makeService(options)
        with pytest.raises(StartupError) as raised:
            service.privilegedStartService()
        assert isinstance(raised.value, SystemExit) and isinstance(raised.value, Exception)
        assert "Address already in use" in str(raised.value)
        assert str(raised.value).startswith("netsvc-echo: cannot listen for TCP echo")
        del reactor


def test_listen_service_binds_on_plain_start_and_unbinds() -> None:
    clock_reactor: Any = Clock()
    calls: list[Any] = []

    class FakeUDPReactor:
        def listenUDP(self, *args: Any) -> Any:
            calls.append(args)

            class Port:
                def stopListening(self) -> None:
                    calls.append("stopped")

            return Port()

    service = UDPListenService(FakeUDPReactor(), 0, object(), "::1")  # type: ignore[arg-type]
    service.startService()
    service.stopService()
    assert calls[0][0] == 0 and calls[0][2] == "::1" and calls[0][3] == 65536
    assert calls[1] == "stopped"
    del clock_reactor


def test_listen_error_keeps_cannot_listen_error_contract() -> None:
    original = CannotListenError("", 7, OSError(errno.EACCES, "Permission denied"))
    error = ListenError("TCP echo", original)
    assert isinstance(error, CannotListenError) and error.port == 7
    assert "Ports below 1024 need root" in error.explain()


def test_twistd_lists_plugins_from_outside_the_checkout(tmp_path: Any) -> None:
    output = subprocess.run(
        twistd_command("--help"), cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "netsvc-echo" in output and "\n    netsvc " in output


def test_twistd_bind_failure_prints_one_clear_line(tmp_path: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            twistd_command("netsvc-echo", "--port", str(port), "--interface", "127.0.0.1"),
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"cannot listen for TCP echo on 127.0.0.1 port {port}: Address already in use" in output


def test_twistd_runs_echo_end_to_end(tmp_path: Any) -> None:
    port = free_tcp_udp_port()
    command = twistd_command("netsvc", "--echo-port", str(port), "--echo-interface", "127.0.0.1")
    with running(command, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(b"pong", ("127.0.0.1", port))
            assert udp.recvfrom(10)[0] == b"pong"
    assert REPO.exists()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_failed_bind_releases_the_ports_already_bound() -> None:
    from twisted.internet import reactor, task

    from netsvc.echo import echo_service

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]  # UDP taken, TCP free: TCP binds first, then UDP fails
        service = echo_service(reactor, port=port, interface="127.0.0.1")
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
        await task.deferLater(reactor, 0.05, lambda: None)  # Twisted closes ports a turn later
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # would fail if the TCP port were still held
        assert not service.running


def tftp_listener(service: Any) -> Any:
    """The TFTP listening service among ``service``'s leaves (there is exactly one)."""
    from netsvc.tftp.server import TFTPServer

    (udp,) = [s for s in leaves(service) if isinstance(getattr(s, "protocol", None), TFTPServer)]
    return udp


def test_tftp_plugin_options_reach_the_server(tmp_path: Any) -> None:
    from netsvc import tftp_tap

    options = parse(
        tftp_tap.Options, "--root", str(tmp_path), "--port", "6969", "--interface", "::1",
        "--writable", "--overwrite", "--create-dirs", "--backslash", "--max-upload", "1000",
        "--max-blksize", "1468", "--max-windowsize", "16", "--port-range", "50000-50100",
        "--request-rate", "0", "--max-sessions", "7", "--max-per-client", "3",
        "--idle-timeout", "12.5", "--max-duration", "600", "--spare-workers", "5",
    )
    udp = tftp_listener(tftp_tap.makeService(options))
    assert (udp.port_number, udp.interface) == (6969, "::1")
    server = udp.protocol
    assert server.policy.max_blksize == 1468 and server.policy.max_tsize == 1000
    assert server.policy.max_windowsize == 16
    assert server.limits.port_range == (50000, 50100) and server.requests.rate is None
    assert (server.limits.max_sessions, server.limits.max_sessions_per_client) == (7, 3)
    assert (server.limits.idle_timeout, server.limits.max_duration) == (12.5, 600)
    assert server.spare_workers == 5
    backend = server.backend
    assert backend.writable and backend.overwrite and backend.create_dirs
    assert backend.backslash_to_slash and backend.max_upload_size == 1000


def test_tftp_plugin_defaults_and_zero_meaning_no_limit(tmp_path: Any) -> None:
    from netsvc import tftp_tap
    from netsvc.tftp.server import SPARE_WORKERS, TFTPServerLimits

    default = tftp_listener(tftp_tap.makeService(parse(tftp_tap.Options, "--root", str(tmp_path))))
    assert default.protocol.limits == TFTPServerLimits()
    assert default.protocol.spare_workers == SPARE_WORKERS
    backend = default.protocol.backend
    assert not (backend.writable or backend.overwrite or backend.create_dirs)
    assert not backend.backslash_to_slash
    options = parse(
        tftp_tap.Options, "--root", str(tmp_path), "--max-upload", "0", "--max-sessions", "0",
        "--max-per-client", "0", "--request-rate", "0", "--max-duration", "0",
    )
    server = tftp_listener(tftp_tap.makeService(options)).protocol
    limits = server.limits
    assert limits.max_sessions is limits.max_sessions_per_client is limits.max_duration is None
    assert server.requests.rate is None and server.policy.max_tsize is None
    assert server.backend.max_upload_size is None


@pytest.mark.parametrize(("flags", "processes"), [([], True), (["--one-process"], False)])
def test_tftp_downloads_get_processes_unless_one_process(
    tmp_path: Any, flags: list[str], processes: bool
) -> None:
    from netsvc import tftp_tap
    from netsvc.tftp.handoff import can_hand_off

    options = parse(tftp_tap.Options, "--root", str(tmp_path), *flags)
    udp = tftp_listener(tftp_tap.makeService(options))
    assert udp.protocol.processes is (processes and can_hand_off())
    assert udp.protocol.helper is None  # started with the service, not before


@pytest.mark.parametrize(("flags", "follow"), [([], True), (["--no-cpu-follow"], False)])
def test_tftp_downloads_follow_their_clients_cpu_unless_no_cpu_follow(
    tmp_path: Any, flags: list[str], follow: bool
) -> None:
    from netsvc import tftp_tap

    options = parse(tftp_tap.Options, "--root", str(tmp_path), *flags)
    assert tftp_listener(tftp_tap.makeService(options)).protocol.follow_client_cpu is follow


def test_tftp_no_spin_stops_the_transfer_sockets_waiting_awake(tmp_path: Any) -> None:
    from twisted.internet.epollreactor import EPollReactor

    from netsvc import tftp_tap
    from netsvc.spin import usable_cpus
    from netsvc.udpport import socket_set_for

    private_reactor = EPollReactor()  # type: ignore[no-untyped-call]  # one reactor's set
    values = parse(tftp_tap.Options, "--root", str(tmp_path))
    tftp_tap.build_tftp(values, private_reactor)
    sockets = socket_set_for(private_reactor)
    assert sockets is not None and (sockets.spinner is not None) == (usable_cpus() > 1)
    tftp_tap.build_tftp(parse(tftp_tap.Options, "--root", str(tmp_path), "--no-spin"),
                        private_reactor)
    assert sockets.spinner is None


def test_an_empty_tftp_root_in_the_suite_names_the_suite_option() -> None:
    with pytest.raises(usage.UsageError, match="--tftp-root DIR in the suite"):
        parse(tap.Options, "--tftp-root", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--root DIR is required"),
        (["--root", "/nonexistent/dir"], "is not a directory"),
        (["--overwrite"], "need the writable switch"),
        (["--create-dirs"], "need the writable switch"),
    ],
)
def test_tftp_plugin_bad_options_are_usage_errors(
    args: list[str], message: str, tmp_path: Any
) -> None:
    from netsvc import tftp_tap

    root = [] if args[:1] == ["--root"] or not args else ["--root", str(tmp_path)]
    with pytest.raises(usage.UsageError, match=message):
        parse(tftp_tap.Options, *root, *args)


#: (option, bad value, what the message must say besides the option's name and the value).
TFTP_BAD_VALUES = [
    ("port", "70000", "0 to 65535"),
    ("port", "sixty-nine", "whole number"),
    ("max-blksize", "4", "8 to 65464"),
    ("max-blksize", "7", "8 to 65464"),
    ("max-blksize", "65465", "8 to 65464"),
    ("max-windowsize", "0", "1 to 65535"),
    ("max-windowsize", "70000", "1 to 65535"),
    ("max-upload", "-1", "at least 0"),
    ("max-sessions", "-1", "at least 0"),
    ("max-sessions", "1e3", "whole number"),
    ("max-per-client", "-1", "at least 0"),
    ("request-rate", "-1", "0 or more"),
    ("request-rate", "nan", "0 or more"),
    ("request-rate", "inf", "0 or more"),
    ("idle-timeout", "0", "above 0"),
    ("idle-timeout", "-5", "above 0"),
    ("idle-timeout", "inf", "above 0"),
    ("max-duration", "-1", "0 or more"),
    ("max-duration", "inf", "0 or more"),
    ("max-duration", "six hours", "0 or more"),
    ("port-range", "70000-70010", "LOW <= HIGH <= 65535"),
    ("port-range", "10-5", "LOW <= HIGH"),
    ("port-range", "0-10", "1 <= LOW"),
    ("port-range", "50000", "LOW-HIGH"),
    ("port-range", "abc", "LOW-HIGH"),
    ("spare-workers", "-1", "at least 0"),
    ("spare-workers", "two", "whole number"),
]


@pytest.mark.parametrize("prefix", ["", "tftp-"], ids=["netsvc-tftp", "suite"])
@pytest.mark.parametrize(("option", "value", "allowed"), TFTP_BAD_VALUES)
def test_tftp_bad_values_are_usage_errors_naming_the_option(
    tmp_path: Any, prefix: str, option: str, value: str, allowed: str
) -> None:
    from netsvc import tftp_tap

    options_class = tap.Options if prefix else tftp_tap.Options
    with pytest.raises(usage.UsageError) as raised:
        parse(options_class, f"--{prefix}root", str(tmp_path), f"--{prefix}{option}", value)
    message = str(raised.value)
    assert f"{option} must be" in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    "args",
    [
        ["--max-blksize", "8", "--max-windowsize", "1", "--port-range", "1-1"],
        ["--max-blksize", "65464", "--max-windowsize", "65535", "--port-range", "1-65535"],
        ["--idle-timeout", "0.25", "--max-duration", "0", "--request-rate", "0.5"],
        ["--port", "0", "--max-sessions", "0", "--spare-workers", "0", "--max-upload", "0"],
    ],
)
def test_tftp_values_at_the_edges_build_a_service(tmp_path: Any, args: list[str]) -> None:
    from netsvc import tftp_tap

    assert tftp_listener(tftp_tap.makeService(parse(tftp_tap.Options, "--root", str(tmp_path),
                                                    *args)))


def test_tftp_option_table_matches_the_plugin_options() -> None:
    """docs/tftp-server.rst's table lists what ``twistd netsvc-tftp --help`` does: every
    option, its short form and its default."""
    from netsvc import tftp_tap
    from tests.test_docs_examples import DOCS, _long_options, _section

    table = _section((DOCS / "tftp-server.rst").read_text(), "Options")
    rows = [row.split("\n     - ") for row in table.split("\n   * - ")[1:]]
    assert rows[0] == ["``netsvc-tftp``", "default", "meaning"]
    documented = {}
    for names, default, _meaning in rows[1:]:
        spelled = re.findall(r"``(--?[a-z][a-z-]*)\b", names)
        documented[spelled[0]] = (spelled[1:], default)
    assert set(documented) == _long_options(tftp_tap.Options)
    options_class: Any = tftp_tap.Options
    help_text = str(options_class())  # what --help prints after twistd's own line
    for param in options_class.optParameters:
        name, short, default = param[:3]
        shorts, shown = documented["--" + name]
        assert shorts == ([f"-{short}"] if short else [])
        assert _documented_default(shown) == default, name
        assert f"--{name}=" in help_text
    for name, short, _help in options_class.optFlags:
        assert documented["--" + name] == ([], "off") and short is None
        assert f"--{name} " in help_text


def _documented_default(cell: str) -> Any:
    """A default as the table shows it: ``69``, ``30 s``, ``6 h``, ``50/s``, ``0 (none)``."""
    words = {"(required)": None, "any": None, "all IPv4": ""}
    if cell in words:
        return words[cell]
    number = re.fullmatch(r"(\d+)(?: s|/s| h| \(none\))?", cell)
    assert number is not None, f"unreadable default {cell!r}"
    return int(number.group(1)) * (3600 if cell.endswith(" h") else 1)


def _all_services(service: Any) -> list[Any]:
    """``service`` and every service under it."""
    found = [service]
    for child in getattr(service, "services", []):
        found += _all_services(child)
    return found


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_writable_tftp_server_removes_stale_upload_files_at_start(tmp_path: Any) -> None:
    from twisted.logger import capturedLogs

    from netsvc import tftp_tap
    from netsvc.tftp.files import create_temp_file
    from netsvc.tftp.server import StaleUploadCleanup

    def temp_file(directory: Any, target: bytes, age: float) -> Any:
        directory.mkdir(exist_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd, name = create_temp_file(dir_fd, target, 0o644)  # the backend's own naming
            os.close(fd)
        finally:
            os.close(dir_fd)
        path = directory / os.fsdecode(name)
        when = time.time() - age
        os.utime(path, (when, when))
        return path

    root, other = tmp_path / "root", tmp_path / "other"
    stale = [temp_file(root, b"boot.img", 7200), temp_file(root / "sub", b"cfg", 7200)]
    fresh = temp_file(root, b"uploading.bin", 60)  # perhaps another server's upload
    not_writable = temp_file(other, b"x", 7200)
    with capturedLogs() as events:
        for directory, writable in [(other, []), (root, ["--writable"])]:
            service = tftp_tap.makeService(parse(
                tftp_tap.Options, "--root", str(directory), *writable, "--port", "0",
                "--interface", "127.0.0.1", "--one-process",
            ))
            service.startService()
            cleanups = [c for c in _all_services(service) if isinstance(c, StaleUploadCleanup)]
            assert len(cleanups) == len(writable)  # only a writable server cleans up
            for cleanup in cleanups:
                assert cleanup.done is not None
                await cleanup.done  # the walk runs in a thread
            await service.stopService()
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and not_writable.exists()
    removals = [e for e in events if "removed" in e.get("log_format", "")]
    assert [(e["count"], e["root"]) for e in removals] == [(2, str(root.resolve()))]


def test_running_page_shows_every_plugin_with_a_command_line() -> None:
    from twisted.application.reactors import Reactor
    from twisted.application.service import ServiceMaker

    from tests.test_docs_examples import DOCS
    from twisted.plugins import netsvc_plugins

    page = (DOCS / "running.rst").read_text()
    plugins = vars(netsvc_plugins).values()
    makers = [p.tapname for p in plugins if isinstance(p, ServiceMaker)]
    reactors = [p.shortName for p in plugins if isinstance(p, Reactor)]
    assert len(makers) == 5 and reactors == ["netsvc-busypoll"]
    for name in makers + reactors:
        assert f"\n``{name}``\n   " in page, name  # its entry in the list of plugins
    for name in makers:
        assert f"twistd -n --pidfile= {name} " in page, name
    assert "twistd --reactor=netsvc-busypoll" in page
