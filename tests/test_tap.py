"""twistd wiring: options, service trees, plugin discovery and readable startup errors."""

from __future__ import annotations

import errno
import socket
import subprocess
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
    tcp = next(s for s in services if isinstance(s, TCPListenService))
    udp = next(s for s in services if isinstance(s, UDPListenService))
    assert tcp.description == "tcp:7007:interface=\\:\\:"
    assert tcp.factory.limits.idle_timeout == 30
    assert tcp.factory.limits.max_connections_per_peer == 4
    assert udp.protocol.sources.rate is None


def test_echo_loopback_rate_limit_switch() -> None:
    for argv, expected in [((), False), (("--udp-limit-loopback",), True)]:
        services = leaves(echo_tap.makeService(parse(echo_tap.Options, *argv)))
        udp = next(s for s in services if isinstance(s, UDPListenService))
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


def test_suite_children_are_named() -> None:
    root = tap.makeService(parse(tap.Options))
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


@pytest_twisted.ensureDeferred
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


def test_tftp_plugin_options_reach_the_server(tmp_path: Any) -> None:
    from netsvc import tftp_tap
    from netsvc.tftp.server import TFTPServer

    options = parse(
        tftp_tap.Options, "--root", str(tmp_path), "--port", "6969", "--interface", "::1",
        "--writable", "--max-upload", "1000", "--max-blksize", "1468", "--port-range",
        "50000-50100", "--request-rate", "0",
    )
    (udp,) = leaves(tftp_tap.makeService(options))
    assert (udp.port_number, udp.interface) == (6969, "::1")
    server = udp.protocol
    assert isinstance(server, TFTPServer)
    assert server.policy.max_blksize == 1468 and server.policy.max_tsize == 1000
    assert server.limits.port_range == (50000, 50100) and server.requests.rate is None
    assert server.backend.writable and server.backend.max_upload_size == 1000


@pytest.mark.parametrize(("flags", "processes"), [([], True), (["--one-process"], False)])
def test_tftp_downloads_get_processes_unless_one_process(
    tmp_path: Any, flags: list[str], processes: bool
) -> None:
    from netsvc import tftp_tap
    from netsvc.tftp.handoff import can_hand_off
    from netsvc.tftp.server import TFTPServer

    options = parse(tftp_tap.Options, "--root", str(tmp_path), *flags)
    (udp,) = leaves(tftp_tap.makeService(options))
    assert isinstance(udp.protocol, TFTPServer)
    assert udp.protocol.processes is (processes and can_hand_off())
    assert udp.protocol.helper is None  # started with the service, not before


def test_tftp_no_spin_stops_the_transfer_sockets_waiting_awake(tmp_path: Any) -> None:
    from twisted.internet.epollreactor import EPollReactor

    from netsvc import tftp_tap
    from netsvc.spin import usable_cpus
    from netsvc.udpport import socket_set_for

    private_reactor = EPollReactor()  # the socket set belongs to one reactor
    values = parse(tftp_tap.Options, "--root", str(tmp_path))
    tftp_tap.build_tftp(values, private_reactor)
    sockets = socket_set_for(private_reactor)
    assert sockets is not None and (sockets.spinner is not None) == (usable_cpus() > 1)
    tftp_tap.build_tftp(parse(tftp_tap.Options, "--root", str(tmp_path), "--no-spin"),
                        private_reactor)
    assert sockets.spinner is None


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--root", "/nonexistent/dir"],
        ["--overwrite"],
        ["--port-range", "5-1"],
        ["--port-range", "abc"],
        ["--max-sessions", "-1"],
    ],
)
def test_tftp_plugin_bad_options_are_usage_errors(args: list[str], tmp_path: Any) -> None:
    from netsvc import tftp_tap

    root = [] if args[:1] == ["--root"] or not args else ["--root", str(tmp_path)]
    with pytest.raises(usage.UsageError):
        parse(tftp_tap.Options, *root, *args)


def test_suite_runs_tftp_only_with_a_root(tmp_path: Any) -> None:
    from netsvc.tftp.server import TFTPServer

    without = leaves(tap.makeService(parse(tap.Options)))
    assert not any(isinstance(getattr(s, "protocol", None), TFTPServer) for s in without)
    with_root = leaves(
        tap.makeService(parse(tap.Options, "--tftp-root", str(tmp_path), "--tftp-port", "6969"))
    )
    tftp = [s for s in with_root if isinstance(getattr(s, "protocol", None), TFTPServer)]
    assert [s.port_number for s in tftp] == [6969]
