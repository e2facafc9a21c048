"""The wheel carries the plugin: build it, install it into a fresh venv, ask twistd."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.slow


def test_wheel_installs_plugins_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("netsvc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/netsvc_plugins.py" in names
    # Shipping either file would overwrite Twisted's own and break twistd on uninstall.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")]

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Dependencies come from the index (pip's cache makes this quick after the first run).
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    help_text = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help"],
        cwd=outside, capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert "netsvc-echo" in help_text
    assert "\n    netsvc " in help_text
    reactors = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help-reactors"],
        cwd=outside, capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert "netsvc-busypoll" in reactors
    version = subprocess.run(
        [str(env_dir / "bin" / "netsvc"), "--version"],
        cwd=outside, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert version.startswith("netsvc ")
