"""The ``netsvc`` command: every tool is registered; each loads only what it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netsvc.cli import COMMANDS, build_parser


def test_every_command_is_registered_under_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert all(f"    {name} " in listing for name in COMMANDS)


@pytest.mark.parametrize("command", ["addr", "echoping"])
def test_tools_without_twisted_start_without_importing_it(command: str) -> None:
    # The TFTP client needs Twisted (~0.1 s to import); the other tools must not pay it.
    code = (
        "import sys; from netsvc.cli import build_parser; "
        f"build_parser({command!r}); print('twisted.internet.defer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_netsvc_is_the_console_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "netsvc", "addr", "192.168.1.77/26"],
        capture_output=True, text=True, check=True,
    )
    assert "192.168.1.127" in out.stdout  # the directed broadcast address
