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


def test_raon_serve_finds_an_app_module_in_the_working_directory(tmp_path):
    """`raon serve --app mymodule:Echo` from the directory holding mymodule.py, as a user runs it."""
    (tmp_path / "mymodule.py").write_text(
        "from framework import Session\n\nclass Echo(Session):\n    def on_message(self, msg):\n        self.send(msg)\n"
    )
    script = Path(sys.executable).with_name("raon.exe" if os.name == "nt" else "raon")
    proc = subprocess.run(
        [str(script), "check-config", "--app", "mymodule:Echo"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
