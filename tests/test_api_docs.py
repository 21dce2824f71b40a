"""`make docs`: the pdoc API reference builds, covers every public module (the Windows and macOS
backends too, built on this machine) and raises no pdoc warning; a warning fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "docs" / "build_api.py"


def _build(out: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(BUILDER), str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    proc = _build(tmp_path / "docs")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    pages = {p.relative_to(tmp_path / "docs").as_posix() for p in (tmp_path / "docs").rglob("*.html")}
    for page in (
        "index.html",
        "framework.html",
        "framework/io/provider.html",
        "framework/io/backends/iocp.html",  # Windows-only at run time, documented from Linux
        "framework/io/backends/rio.html",
        "framework/io/backends/kqueue.html",
        "framework/legacy/provider.html",
        "framework/session/server.html",
        "framework/metrics/collector.html",
        "framework/logging.html",
    ):
        assert page in pages, sorted(pages)
    assert not any("/_" in page and "__main__" not in page for page in pages), sorted(pages)
    assert 'id="IocpLegacyProvider"' in (tmp_path / "docs/framework/legacy/provider.html").read_text()


def test_a_pdoc_warning_fails_the_build(tmp_path: Path) -> None:
    """An annotation pdoc cannot parse makes it warn: the builder prints it and exits 1."""
    pkg = tmp_path / "src" / "brokendocs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A package."""\n')
    (pkg / "mod.py").write_text('"""A module."""\n\n\ndef f(x: "list[int") -> None:\n    """A function."""\n')
    proc = _build(tmp_path / "docs", "--package", "brokendocs", pythonpath=tmp_path / "src")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "warning:" in proc.stderr and "list[int" in proc.stderr, proc.stderr
