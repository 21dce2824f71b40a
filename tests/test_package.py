"""The installed package: the `raon` console script, its version and typing marker."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import framework


def test_version_is_the_installed_distributions():
    assert framework.__version__ == importlib.metadata.version("raon-framework")


def test_the_raon_script_runs_the_same_verbs_as_python_m_framework():
    script = Path(sys.executable).with_name("raon.exe" if os.name == "nt" else "raon")
    assert script.exists(), f"{script} missing: reinstall with pip install -e '.[dev]'"
    via_script = subprocess.run([str(script), "backends"], capture_output=True, text=True, timeout=60)
    via_module = subprocess.run(
        [sys.executable, "-m", "framework", "backends"], capture_output=True, text=True, timeout=60
    )
    assert via_script.returncode == via_module.returncode == 0, via_script.stderr
    assert via_script.stdout == via_module.stdout
    bad = subprocess.run([str(script), "no-such-verb"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_package_is_typed_and_licensed():
    assert (Path(framework.__file__).parent / "py.typed").exists()
    meta = importlib.metadata.metadata("raon-framework")
    assert meta.get("License-Expression") == "MIT" or meta.get("License") == "MIT"
