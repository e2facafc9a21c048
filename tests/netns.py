"""Two network namespaces joined by a veth pair, with optional packet loss, for real-network tests.

Everything a test sends through a :class:`NetnsPair` stays inside the two namespaces it
creates: the veth pair is created inside them (it never appears in the host namespace) and
its private /24 exists only there, so nothing ever leaves the machine (DESIGN.md section 4).

Loss is random drop in the nftables **input** hook of each namespace (the kernel here has no
netem, and a drop in the output hook turns into EPERM on send, which a lossy network does not
do). Each namespace counts the packets that arrive on its veth and the ones it drops.

Typical use::

    from tests.netns import NetnsPair, namespaces_available

    ok, reason = namespaces_available()
    if not ok:
        pytest.skip(reason)
    with NetnsPair(loss_percent=10) as pair:
        server = pair.a.popen(["some-server", "--interface", pair.a_address])
        result = pair.b.run(["some-client", pair.a_address], timeout=30)
        print(pair.b.counters())  # {"seen": ..., "dropped": ...}

Cleanup always runs: on leaving the ``with`` block, on :meth:`NetnsPair.close`, and at
interpreter exit (``atexit``) for pairs that were never closed. SIGTERM (``timeout``, CI
cancellation) would kill Python without either, so while a pair exists a default SIGTERM
disposition is replaced by one that raises ``SystemExit`` (a handler somebody else installed
is left alone). It ends the processes started
through :meth:`Namespace.popen` (their whole process group), then anything else still running
inside the namespaces (only this helper's own children can be there), then deletes the
namespaces, which also removes the veth pair. Names carry the process id and a random token, so
parallel test runs never collide.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

#: Interface name of the veth end inside each namespace (the same name in both is fine:
#: each namespace has its own set of interface names).
VETH = "veth0"
#: nftables table this helper owns inside each namespace.
NFT_TABLE = "netsvc_netns"
#: Default private /24 (first three octets); it exists only inside the namespaces.
DEFAULT_SUBNET = "10.213.0"

_IP_TIMEOUT = 15.0
_STOP_GRACE = 5.0

_live: set[Namespace] = set()
_live_lock = threading.Lock()


class NetnsError(RuntimeError):
    """A namespace could not be created or configured."""


def _check_call(argv: Sequence[str], *, input: str | None = None, timeout: float = _IP_TIMEOUT
                ) -> str:
    """Run a setup command (``ip``, ``nft``) on the host; raise :class:`NetnsError` on failure."""
    try:
        result = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsError(f"{' '.join(argv)}: {error}") from error
    if result.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def _kill_group(process: subprocess.Popen[Any], grace: float = _STOP_GRACE) -> None:
    """Stop ``process`` and its process group: SIGTERM, then SIGKILL after ``grace`` s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # not a group leader we own: signal the process alone
            process.send_signal(sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _loss_rules(loss_percent: float) -> list[str]:
    """nft rules for the input chain: count everything on the veth, drop ``loss_percent``."""
    rules = [f'iifname "{VETH}" counter name "seen"']
    permille = round(loss_percent * 10)
    if permille > 0:
        rules.append(
            f'iifname "{VETH}" numgen random mod 1000 < {permille} counter name "dropped" drop'
        )
    return rules


def _check_loss(loss_percent: float) -> float:
    if not 0 <= loss_percent <= 100:
        raise ValueError(f"loss_percent must be within 0..100, got {loss_percent}")
    return float(loss_percent)


class Namespace:
    """One network namespace with a veth end (:data:`VETH`) holding :attr:`address`.

    Create namespaces through :class:`NetnsPair`; this class is what its :attr:`~NetnsPair.a`
    and :attr:`~NetnsPair.b` are.
    """

    def __init__(self, name: str, address: str, prefix_len: int = 24) -> None:
        #: The namespace name, as ``ip netns`` knows it.
        self.name = name
        #: This namespace's IPv4 address on its veth end.
        self.address = address
        self.prefix_len = prefix_len
        #: The veth interface name inside the namespace.
        self.interface = VETH
        self._processes: list[subprocess.Popen[Any]] = []
        self._closed = False
        self._created = False

    def __repr__(self) -> str:
        return f"<Namespace {self.name} {self.address}/{self.prefix_len}>"

    # -- running things inside -------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this namespace (``ip netns exec NAME ...``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = False,
        input: bytes | None = None,
        capture: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the namespace and wait for it, at most ``timeout`` seconds.

        The command runs in its own process group; on timeout the whole group is killed and
        :class:`subprocess.TimeoutExpired` is raised. With ``check``, a non-zero exit raises
        :class:`subprocess.CalledProcessError`. Output is captured (bytes) unless
        ``capture`` is false.
        """
        command = self.command(argv)
        pipe = subprocess.PIPE if capture else None
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=pipe, stderr=pipe, start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process, grace=1.0)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
        finally:
            if process.poll() is None:  # KeyboardInterrupt and the like
                _kill_group(process, grace=1.0)
        result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        if check:
            result.check_returncode()
        return result

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace in the background (:class:`subprocess.Popen`).

        The process gets its own process group (``start_new_session``) and is stopped when
        the namespace is closed; stop it earlier with :func:`stop`. ``kwargs`` go to
        ``Popen`` (stdin defaults to ``/dev/null``).
        """
        if self._closed:
            raise NetnsError(f"{self.name} is closed")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs["start_new_session"] = True
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def nft(self, script: str) -> str:
        """Run an nftables script (``nft -f -``) inside the namespace; returns nft's output."""
        return _check_call(self.command(["nft", "-f", "-"]), input=script)

    # -- loss and counters -----------------------------------------------------------------

    def set_loss(self, loss_percent: float) -> None:
        """Drop ``loss_percent`` % (0-100, steps of 0.1) of the packets arriving on the veth.

        Counters are kept across changes (use :meth:`reset_counters`).
        """
        loss_percent = _check_loss(loss_percent)
        lines = [f"flush chain inet {NFT_TABLE} input"]
        lines += [f"add rule inet {NFT_TABLE} input {rule}" for rule in _loss_rules(loss_percent)]
        self.nft("\n".join(lines) + "\n")

    def counters(self) -> dict[str, int]:
        """Packets that arrived on the veth (``seen``) and were dropped (``dropped``) so far."""
        output = _check_call(
            self.command(["nft", "-j", "list", "counters", "table", "inet", NFT_TABLE])
        )
        found = {"seen": 0, "dropped": 0}
        for item in json.loads(output).get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("name") in found:
                found[counter["name"]] = int(counter["packets"])
        return found

    def reset_counters(self) -> None:
        """Set the ``seen`` and ``dropped`` counters back to zero."""
        _check_call(
            self.command(["nft", "reset", "counters", "table", "inet", NFT_TABLE])
        )

    # -- life cycle ------------------------------------------------------------------------

    def _create(self, loss_percent: float) -> None:
        _check_call(["ip", "netns", "add", self.name])
        self._created = True
        with _live_lock:
            _live.add(self)
        _check_call(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self.nft(
            f"table inet {NFT_TABLE} {{\n"
            "  counter seen {\n  }\n"
            "  counter dropped {\n  }\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in _loss_rules(loss_percent))
            + "  }\n}\n"
        )

    def _configure_veth(self) -> None:
        _check_call([
            "ip", "-n", self.name, "addr", "add", f"{self.address}/{self.prefix_len}",
            "broadcast", "+", "dev", VETH,
        ])
        _check_call(["ip", "-n", self.name, "link", "set", VETH, "up"])

    def close(self) -> None:
        """Stop every process running inside, then delete the namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for process in self._processes:
            _kill_group(process)
        if self._created:
            self._kill_leftovers()
            with contextlib.suppress(NetnsError):  # already gone
                _check_call(["ip", "netns", "del", self.name])
        with _live_lock:
            _live.discard(self)

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever still runs inside (only our own children can be in here)."""
        try:
            pids = _check_call(["ip", "netns", "pids", self.name]).split()
        except NetnsError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class NetnsPair:
    """Two fresh namespaces, :attr:`a` and :attr:`b`, joined by a veth pair.

    ``a`` holds ``SUBNET.1`` and ``b`` holds ``SUBNET.2`` on a /24 that exists only inside
    them (``subnet`` is the first three octets, :data:`DEFAULT_SUBNET` by default). Both have
    loopback up. ``loss_percent`` drops that share of the packets arriving in *each*
    namespace, i.e. loss both ways; change it later with :meth:`set_loss`.

    Use it as a context manager, or call :meth:`close` (also run at interpreter exit).
    Construction either fully succeeds or cleans up and raises :class:`NetnsError`.
    """

    def __init__(
        self, loss_percent: float = 0.0, *, subnet: str = DEFAULT_SUBNET, prefix: str = "netsvc"
    ) -> None:
        loss_percent = _check_loss(loss_percent)
        _install_sigterm_cleanup()
        token = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.a = Namespace(f"{token}-a", f"{subnet}.1")
        self.b = Namespace(f"{token}-b", f"{subnet}.2")
        self.subnet = subnet
        try:
            self.a._create(loss_percent)
            self.b._create(loss_percent)
            # Created inside a and moved straight into b: never visible on the host.
            _check_call([
                "ip", "-n", self.a.name, "link", "add", VETH, "type", "veth",
                "peer", "name", VETH, "netns", self.b.name,
            ])
            self.a._configure_veth()
            self.b._configure_veth()
        except BaseException:
            self.close()
            raise

    @property
    def a_address(self) -> str:
        """The address of namespace :attr:`a` (``SUBNET.1``)."""
        return self.a.address

    @property
    def b_address(self) -> str:
        """The address of namespace :attr:`b` (``SUBNET.2``)."""
        return self.b.address

    @property
    def broadcast_address(self) -> str:
        """The directed broadcast address of the shared /24 (``SUBNET.255``)."""
        return f"{self.subnet}.255"

    def set_loss(self, loss_percent: float) -> None:
        """Set the loss of both namespaces' input (loss both ways)."""
        self.a.set_loss(loss_percent)
        self.b.set_loss(loss_percent)

    def counters(self) -> dict[str, dict[str, int]]:
        """``{"a": a.counters(), "b": b.counters()}``."""
        return {"a": self.a.counters(), "b": self.b.counters()}

    def close(self) -> None:
        """Stop all processes started inside and delete both namespaces. Idempotent."""
        try:
            self.b.close()
        finally:
            self.a.close()

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NetnsPair {self.a!r} <-> {self.b!r}>"


def stop(process: subprocess.Popen[Any], grace: float = _STOP_GRACE) -> int | None:
    """Stop a process from :meth:`Namespace.popen` (SIGTERM, then SIGKILL); its exit code."""
    _kill_group(process, grace)
    return process.returncode


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_sigterm_cleanup() -> None:
    """Make SIGTERM unwind (``with`` blocks, ``atexit``) instead of killing us outright."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


@functools.cache
def namespaces_available() -> tuple[bool, str]:
    """Whether this machine lets us build a :class:`NetnsPair`, and if not, why.

    Checks root, ``ip`` and ``nft``, then really builds a lossy pair and runs a command
    inside it. Cached for the process.
    """
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"{tool!r} is not installed"
    start = time.monotonic()
    try:
        with NetnsPair(loss_percent=1) as pair:
            pair.b.run(["true"], timeout=_IP_TIMEOUT, check=True)
            pair.b.counters()
    except (NetnsError, OSError, subprocess.SubprocessError) as error:
        return False, f"cannot create network namespaces here: {error}"
    return True, f"network namespaces work (probe took {time.monotonic() - start:.2f} s)"


@atexit.register
def _close_all() -> None:
    with _live_lock:
        leftovers = list(_live)
    for namespace in leftovers:
        namespace.close()
