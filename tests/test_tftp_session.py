"""EngineSession details that the end-to-end tests do not isolate: batched sends."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import pytest

from netsvc.tftp import session as session_module
from netsvc.tftp.session import EngineSession


class FakeHandle:
    def __init__(self, error: int | None = None) -> None:
        self.error = error
        self.calls: list[tuple[bytes, Any, Any]] = []
        self.single: list[bytes] = []

    def sendmsg(self, buffers: list[bytes], control: Any, flags: int, addr: Any) -> int:
        if self.error is not None:
            raise OSError(self.error, "injected")
        self.calls.append((buffers[0], control, addr))
        return len(buffers[0])

    def sendto(self, data: bytes, addr: Any) -> int:
        self.single.append(data)
        return len(data)


class FakePort:
    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle

    def getHandle(self) -> FakeHandle:
        return self.handle

    def write(self, data: bytes, addr: Any) -> None:
        self.handle.single.append(data)


def session_with(handle: FakeHandle) -> EngineSession:
    session = EngineSession(reactor=None)
    session.port = FakePort(handle)  # type: ignore[assignment]
    session.peer = ("127.0.0.1", 4000)
    return session


def blocks(count: int, size: int, last: int | None = None) -> list[bytes]:
    out = [struct.pack("!HH", 3, i) + bytes(size) for i in range(count)]
    if last is not None:
        out[-1] = out[-1][: 4 + last]
    return out


@pytest.fixture(autouse=True)
def _gso_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_gso_available", True)


def test_a_window_goes_out_in_one_segmented_send() -> None:
    handle = FakeHandle()
    datagrams = blocks(16, 1468, last=100)
    session_with(handle).send_many_to_peer(datagrams)
    ((buffer, control, addr),) = handle.calls
    assert buffer == b"".join(datagrams) and addr == ("127.0.0.1", 4000)
    assert control == [(socket.SOL_UDP, 103, struct.pack("H", 1472))]


def test_large_windows_are_split_to_the_kernel_limits() -> None:
    handle = FakeHandle()
    session_with(handle).send_many_to_peer(blocks(100, 8192))
    assert [len(call[0]) // 8196 for call in handle.calls] == [7] * 14 + [2]
    session_with(handle2 := FakeHandle()).send_many_to_peer(blocks(200, 512))
    assert [len(call[0]) // 516 for call in handle2.calls] == [64, 64, 64, 8]


def test_unsupported_offload_falls_back_to_single_sends_for_good() -> None:
    handle = FakeHandle(error=errno.EIO)
    datagrams = blocks(4, 512)
    session_with(handle).send_many_to_peer(datagrams)
    assert handle.single == datagrams
    assert session_module._gso_available is False


def test_other_send_errors_are_loss_not_fallback() -> None:
    handle = FakeHandle(error=errno.ENOBUFS)
    session_with(handle).send_many_to_peer(blocks(4, 512))
    assert handle.single == [] and session_module._gso_available is True


def test_blocks_too_big_to_batch_go_one_by_one() -> None:
    handle = FakeHandle()
    datagrams = blocks(3, 40_000)
    session_with(handle).send_many_to_peer(datagrams)
    assert handle.calls == [] and handle.single == datagrams
