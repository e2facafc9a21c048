"""twistd wiring for TFTP: ``twistd -n netsvc-tftp --root DIR`` and ``--tftp-*`` in the suite."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from netsvc.listening import add_child
from netsvc.tapkit import (
    NO_LIMIT,
    Flag,
    Param,
    ServiceSpec,
    Values,
    checked,
    make_standalone_service,
    number,
    standalone_options,
    whole_number,
)
from netsvc.tftp.backend import FilesystemBackend
from netsvc.tftp.options import (
    MAX_BLKSIZE,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    MIN_WINDOWSIZE,
    ServerOptionPolicy,
)
from netsvc.tftp.server import (
    SMALL_DOWNLOAD_BLOCKS,
    SPARE_WORKERS,
    TFTP_PORT,
    StaleUploadCleanup,
    TFTPServerLimits,
    tftp_service,
)
from netsvc.udpport import socket_set_for

_LIMITS = TFTPServerLimits()
_POLICY = ServerOptionPolicy()

_PORT_RANGE = "LOW-HIGH, two port numbers with 1 <= LOW <= HIGH <= 65535 (like 50000-50999)"


def _port_pair(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError(text)
    return (int(low), int(high))


#: ``--port-range LOW-HIGH`` (inclusive) as a tuple.
port_range = checked(
    "port-range", _port_pair, lambda pair: 1 <= pair[0] <= pair[1] <= 65535, _PORT_RANGE
)


def _none_if_zero(value: Any) -> Any:
    return value or None


def build_tftp(values: Values, reactor: Any) -> IService:
    """Build the TFTP service from option values (shared by the plugin and the suite)."""
    backend = FilesystemBackend(
        values["root"],
        writable=values["writable"],
        overwrite=values["overwrite"],
        create_dirs=values["create-dirs"],
        backslash_to_slash=values["backslash"],
        max_upload_size=_none_if_zero(values["max-upload"]),
    )
    policy = ServerOptionPolicy(
        max_blksize=values["max-blksize"],
        max_windowsize=values["max-windowsize"],
        max_tsize=_none_if_zero(values["max-upload"]),
    )
    limits = TFTPServerLimits(
        max_sessions=_none_if_zero(values["max-sessions"]),
        max_sessions_per_client=_none_if_zero(values["max-per-client"]),
        request_rate=_none_if_zero(values["request-rate"]),
        idle_timeout=values["idle-timeout"],
        max_duration=_none_if_zero(values["max-duration"]),
        port_range=values["port-range"],
    )
    processes = not values["one-process"]
    if values["no-spin"]:
        sockets = socket_set_for(reactor)
        if sockets is not None:
            sockets.spinner = None
    service = tftp_service(
        reactor, backend, port=values["port"], interface=values["interface"], policy=policy,
        limits=limits, processes=processes, spare_workers=values["spare-workers"],
        follow_client_cpu=not values["no-cpu-follow"],
    )
    if backend.writable:
        # In a thread: serving starts at once; only files an hour old go.
        add_child(service, StaleUploadCleanup(backend, reactor))
    return service


def _check(values: Values) -> None:
    if not values["root"]:
        # The same check serves both spellings: name both.
        raise usage.UsageError(
            "--root DIR is required (--tftp-root DIR in the suite): the directory to serve"
        )
    if not os.path.isdir(values["root"]):
        raise usage.UsageError(f"the TFTP root {values['root']!r} is not a directory")
    if (values["overwrite"] or values["create-dirs"]) and not values["writable"]:
        raise usage.UsageError("overwrite and create-dirs need the writable switch")


TFTP_SPEC = ServiceSpec(
    name="tftp",
    description="TFTP (RFC 1350 with blksize, timeout, tsize and windowsize options)",
    params=[
        Param("root", None, "Directory to serve (required)."),
        Param("port", TFTP_PORT, "UDP port (default 69).", whole_number("port", 0, 65535), "p"),
        Param(
            "interface", "", "Address to listen on; :: for dual-stack (default: all IPv4).",
            None, "i",
        ),
        Param(
            "max-blksize", _POLICY.max_blksize,
            f"Largest blksize granted ({MIN_BLKSIZE}-{MAX_BLKSIZE}).",
            whole_number("max-blksize", MIN_BLKSIZE, MAX_BLKSIZE, " (RFC 2348)"),
        ),
        Param(
            "max-windowsize", _POLICY.max_windowsize,
            f"Largest windowsize granted ({MIN_WINDOWSIZE}-{MAX_WINDOWSIZE}).",
            whole_number("max-windowsize", MIN_WINDOWSIZE, MAX_WINDOWSIZE, " (RFC 7440)"),
        ),
        Param(
            "max-upload", 0, "Largest upload in bytes (0: no limit).",
            whole_number("max-upload", 0, note=NO_LIMIT),
        ),
        Param(
            "max-sessions", _LIMITS.max_sessions, "Transfers at once (0: no limit).",
            whole_number("max-sessions", 0, note=NO_LIMIT),
        ),
        Param(
            "max-per-client", _LIMITS.max_sessions_per_client,
            "Transfers at once per client address (0: no limit).",
            whole_number("max-per-client", 0, note=NO_LIMIT),
        ),
        Param(
            "request-rate", _LIMITS.request_rate,
            "Requests per second accepted from one address (0: no limit).",
            number("request-rate", "requests per second", zero_means="no limit"),
        ),
        Param(
            "idle-timeout", _LIMITS.idle_timeout,
            "Seconds without progress before a transfer is dropped (more than 0).",
            number("idle-timeout", "seconds"),
        ),
        Param(
            "max-duration", _LIMITS.max_duration,
            "Longest transfer in seconds (0: no limit).",
            number("max-duration", "seconds", zero_means="no limit"),
        ),
        Param(
            "port-range", None, "Ports for transfers, e.g. 50000-50999 (default: any).",
            port_range,
        ),
        Param(
            "spare-workers", SPARE_WORKERS,
            "Download processes kept ready (more start when more downloads run"
            " at once; each takes about 2.2 MB idle).", whole_number("spare-workers", 0),
        ),
    ],
    flags=[
        Flag("writable", "Allow uploads that create new files."),
        Flag("overwrite", "Allow uploads to replace existing files (needs writable)."),
        Flag("create-dirs", "Create missing directories for uploads (needs writable)."),
        Flag("backslash", "Treat \\ in file names as a directory separator (Windows clients)."),
        Flag(
            "no-spin",
            "Never poll awake for a transfer's next packet (less CPU while transfers run,"
            " up to 3x slower with a client on a fast link).",
        ),
        Flag(
            "no-cpu-follow",
            "Leave a download for a client on this host on the CPU the scheduler picks"
            " (by default its process moves to the client's CPU: no wake-ups across CPUs).",
        ),
        Flag(
            "one-process",
            "Serve downloads in this process too (by default each download of a file of"
            f" more than {SMALL_DOWNLOAD_BLOCKS} blocks runs in a process of its own, as in"
            " tftpd-hpa).",
        ),
    ],
    build=build_tftp,
    check=_check,
    suite_switch="root",
)

Options = standalone_options(TFTP_SPEC)


def makeService(options: usage.Options) -> IService:
    """Entry point of ``twistd netsvc-tftp``."""
    from twisted.internet import reactor  # twistd has installed its reactor by now

    return make_standalone_service(TFTP_SPEC, options, reactor)
