"""The package layers point one way: `session` uses `io`, `legacy` uses `io`, and
nothing below imports anything above it. `io` is the bottom: it imports no other framework package,
so a backend that needs a higher layer (legacy_iocp) lives up there and registers by dotted path.

Two checks: every import statement in the source (function-level and TYPE_CHECKING ones included,
since a lazy import is still a dependency), and what importing all of `framework.io` really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK = ROOT / "framework"

# package -> framework packages it must never import (directly or lazily)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "io": (
        "framework.legacy",
        "framework.session",
        "framework.metrics",
        "framework.config",
        "framework.logging",
        "framework.__main__",
    ),
    "legacy": ("framework.session", "framework.metrics", "framework.__main__"),
    "session": ("framework.legacy", "framework.__main__"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def framework_imports(path: Path, module_name: str | None = None) -> list[tuple[int, str]]:
    """(line, imported module) for each import of a `framework...` module in the file (whose module
    name is derived from its place under the repository unless given)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from framework import session` imports framework.session
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            found.append((node.lineno, module))
    return [(line, name) for line, name in found if name == "framework" or name.startswith("framework.")]


def _violations(package: str) -> list[str]:
    out = []
    for path in sorted((FRAMEWORK / package).rglob("*.py")):
        for line, name in framework_imports(path):
            for forbidden in FORBIDDEN[package]:
                if name == forbidden or name.startswith(forbidden + "."):
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(out))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    assert (FRAMEWORK / package).is_dir()
    assert _violations(package) == []


def test_import_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a function-level import and a relative one both count."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "def f():\n    from framework.legacy.core import IocpCore\n    return IocpCore\n"
        "from ...session import host\n"
    )
    names = {name for _, name in framework_imports(sample, "framework.io.backends.probe")}
    assert "framework.legacy.core" in names
    assert "framework.session.host" in names


def test_importing_all_of_framework_io_loads_no_higher_layer() -> None:
    """Every module of framework.io (the Windows and macOS backends import on any OS) in a fresh
    interpreter; none of them may pull in legacy, session or metrics."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import framework.io\n"
        "names = [m.name for m in pkgutil.walk_packages(framework.io.__path__, 'framework.io.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'loaded': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "framework.io.factory" in report["imported"]
    assert "framework.io.backends.iocp" in report["imported"]
    higher = [
        m
        for m in report["loaded"]
        if m.split(".")[:2] in (["framework", "legacy"], ["framework", "session"], ["framework", "metrics"])
    ]
    assert higher == []


def test_legacy_iocp_backend_is_registered_by_dotted_path_in_the_legacy_package() -> None:
    from framework.io.factory import provider_class
    from framework.legacy import IocpLegacyProvider

    assert provider_class("legacy_iocp") is IocpLegacyProvider
    assert IocpLegacyProvider.__module__ == "framework.legacy.provider"
