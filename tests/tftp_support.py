"""Shared pieces for the TFTP tests: an in-memory backend and a server on a fake network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from netsvc.testing import FakeUDPReactor, LinkConditions
from netsvc.tftp.backend import (
    AccessViolation,
    BytesReader,
    FileExists,
    FileNotFound,
    IBackend,
    MemoryWriter,
    RequestContext,
)
from netsvc.tftp.server import TFTPServer, TFTPServerLimits

SERVER_HOST = "127.0.0.1"
SERVER_PORT = 69


@implementer(IBackend)
class MemoryBackend:
    """Files in a dict; uploads land in the dict on commit. Records every context."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        *,
        writable: bool = True,
        reader: Callable[[bytes], Any] = BytesReader,
    ) -> None:
        self.files = dict(files or {})
        self.writable = writable
        self.reader = reader
        self.contexts: list[RequestContext] = []
        self.writers: list[MemoryWriter] = []

    def open_read(self, context: RequestContext) -> Deferred[Any]:
        self.contexts.append(context)
        if context.filename == "secret":
            return defer.fail(AccessViolation("no"))
        if context.filename not in self.files:
            return defer.fail(FileNotFound())
        return defer.succeed(self.reader(self.files[context.filename]))

    def open_write(self, context: RequestContext, size: int | None) -> Deferred[Any]:
        self.contexts.append(context)
        if not self.writable:
            return defer.fail(AccessViolation("read-only"))
        if context.filename in self.files and context.filename.startswith("keep"):
            return defer.fail(FileExists())

        def store(data: bytes) -> None:
            self.files[context.filename] = data

        writer = MemoryWriter(store)
        self.writers.append(writer)
        return defer.succeed(writer)


def fake_network(
    files: dict[str, bytes] | None = None,
    *,
    conditions: LinkConditions = LinkConditions(),
    seed: int = 0,
    limits: TFTPServerLimits = TFTPServerLimits(),
    record: bool = False,
    backend: Any = None,
    **server_kwargs: Any,
) -> tuple[FakeUDPReactor, TFTPServer, Any]:
    """A fake reactor with a TFTP server listening on 127.0.0.1:69."""
    reactor = FakeUDPReactor(conditions, seed, record=record)
    backend = backend if backend is not None else MemoryBackend(files)
    server = TFTPServer(reactor, backend, limits=limits, interface=SERVER_HOST, **server_kwargs)
    reactor.listenUDP(SERVER_PORT, server, SERVER_HOST, 65536)
    return reactor, server, backend


def finish(reactor: FakeUDPReactor, deferred: Deferred[Any], timeout: float = 600.0) -> Any:
    """Run the fake clock until ``deferred`` fires; return its result or raise its error."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert reactor.run_until(lambda: bool(results), timeout=timeout), "transfer hung"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome
