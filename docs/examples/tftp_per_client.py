"""A TFTP server that writes ``boot.cfg`` for each client and serves other files from disk."""

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from netsvc.tftp.backend import AccessViolation, BytesReader, FilesystemBackend, IBackend
from netsvc.tftp.server import tftp_service


@implementer(IBackend)
class PerClientConfig:
    """``boot.cfg`` is generated per client; every other name comes from ``files``."""

    def __init__(self, files: IBackend) -> None:
        self.files = files

    def open_read(self, context: Any) -> Any:
        if context.filename == "boot.cfg":
            client = context.peer[0]
            text = f"hostname=node-{client.replace('.', '-').replace(':', '-')}\n"
            text += f"next-server={context.local[0]}\n"
            return defer.succeed(BytesReader(text.encode("ascii")))
        return self.files.open_read(context)

    def open_write(self, context: Any, size: int | None) -> Any:
        return defer.fail(AccessViolation("uploads are not accepted here"))


def build(reactor: Any, root: str, port: int = 6969, interface: str = "127.0.0.1") -> Any:
    """The service; start it with ``startService()`` or attach it to an application."""
    backend = PerClientConfig(FilesystemBackend(root))
    return tftp_service(reactor, backend, port=port, interface=interface)
