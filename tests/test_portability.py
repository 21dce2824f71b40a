"""The test suite itself is portable: every test module imports (pytest collects it) on Windows
and on macOS, where `resource` and `/proc` do not exist. Both OSes are simulated on this machine
(tests/support/simulated_platform.py) so a Linux-only import is caught here, not on the CI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.mark.parametrize("target", ["win32", "darwin"])
def test_every_test_module_imports_with_resource_and_proc_absent(target):
    proc = subprocess.run(
        [sys.executable, str(TESTS / "support" / "simulated_platform.py"), target, "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "error" not in out.splitlines()[-1].lower(), out[-4000:]
    modules = sorted(p.relative_to(ROOT).as_posix() for p in TESTS.rglob("test_*.py"))
    collected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert [m for m in modules if m not in collected] == []


def test_ci_workflow_is_valid_against_githubs_workflow_schema():
    # `make lint` runs the same check; here it also guards `make test`. The schema ships inside
    # check-jsonschema (vendor.github-workflows), so this needs no network.
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is a dev extra (pip install -e '.[dev]')")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         str(ROOT / ".github" / "workflows" / "ci.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
