"""StaleUploadCleanup: the start-up walk for a crashed server's upload files runs in a
thread, reports what it removed, and a stop ends it early."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs

from netsvc.tftp.backend import FilesystemBackend
from netsvc.tftp.files import TEMP_SUFFIX
from netsvc.tftp.server import StaleUploadCleanup


def stale_file(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (f".{name}.0123456789ab" + TEMP_SUFFIX)
    path.write_bytes(b"")
    os.utime(path, (1000, 1000))  # decades old
    return path


class _GatedBackend(FilesystemBackend):
    """A backend whose walk waits at its first directory until the test opens the gate,
    and notes which thread walked."""

    def __init__(self, root: str) -> None:
        super().__init__(root, writable=True)
        self.gate = threading.Event()
        self.walked_in: list[threading.Thread] = []

    def cleanup_stale_temp_files(self, max_age: float = 3600.0, *, stopping: Any = None) -> int:
        def gated() -> bool:
            self.walked_in.append(threading.current_thread())
            assert self.gate.wait(10)
            return bool(stopping())

        return super().cleanup_stale_temp_files(max_age, stopping=gated)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_the_walk_runs_in_a_thread_and_reports_what_it_removed(tmp_path: Path) -> None:
    stale = [stale_file(tmp_path, "a"), stale_file(tmp_path / "sub" / "deeper", "b")]
    backend = _GatedBackend(str(tmp_path))
    cleanup = StaleUploadCleanup(backend, reactor)
    with capturedLogs() as events:
        cleanup.startService()
        # startService returned while the walk still waits at its gate: the reactor is free.
        assert cleanup.done is not None and not cleanup.done.called
        backend.gate.set()
        removed = await cleanup.done
        await cleanup.stopService()
    assert removed == 2 and not any(path.exists() for path in stale)
    assert threading.main_thread() not in backend.walked_in
    counts = [e["count"] for e in events if "count" in e]
    assert counts == [2]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_stop_ends_the_walk_before_its_next_directory(tmp_path: Path) -> None:
    later = stale_file(tmp_path / "sub", "a")  # only below the root: reached after a stop
    backend = _GatedBackend(str(tmp_path))
    cleanup = StaleUploadCleanup(backend, reactor)
    cleanup.startService()
    stopped = cleanup.stopService()
    backend.gate.set()
    assert await stopped == 0
    assert later.exists()


def test_a_service_never_started_stops_at_once(tmp_path: Path) -> None:
    cleanup = StaleUploadCleanup(FilesystemBackend(str(tmp_path), writable=True), reactor)
    assert cleanup.stopService() is None
