"""`make docs`: the pdoc API reference builds, covers every public module (the Windows and macOS
backends too, built on this machine) and raises no pdoc warning; a warning fails the build. And the
packages listed in DOCUMENTED give every public name a docstring."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

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


# Packages whose every public class, function, method and property carries its own docstring.
# (framework.io, framework.session and framework.config join this list as they get theirs.)
DOCUMENTED = ("framework", "framework.__main__", "framework.logging", "framework.legacy", "framework.metrics")


def _own_class_doc(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    if doc and doc.startswith(f"{cls.__name__}("):  # the signature a dataclass writes in
        return None
    return doc


def undocumented(module: types.ModuleType) -> list[str]:
    """Public names defined in `module` without a docstring (a method may inherit its base's)."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            if not _own_class_doc(obj):
                missing.append(f"{module.__name__}.{name}")
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property) or inspect.isfunction(getattr(obj, attr, None)):
                    doc = (
                        inspect.getdoc(value)
                        if isinstance(value, property)
                        else inspect.getdoc(getattr(obj, attr))
                    )
                    if not doc:
                        missing.append(f"{module.__name__}.{name}.{attr}")
        elif inspect.isfunction(obj) and not obj.__doc__:
            missing.append(f"{module.__name__}.{name}")
    return missing


def _modules(name: str) -> list[types.ModuleType]:
    module = importlib.import_module(name)
    out = [module]
    if name != "framework" and hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, f"{name}."):
            if not any(part.startswith("_") and part != "__main__" for part in info.name.split(".")):
                out.append(importlib.import_module(info.name))
    return out


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_name_has_a_docstring(package: str) -> None:
    modules = _modules(package)
    assert [m.__name__ for m in modules if not (m.__doc__ or "").strip()] == []
    assert [name for m in modules for name in undocumented(m)] == []


def test_the_docstring_check_finds_what_is_missing() -> None:
    module = types.ModuleType("probe_module", "A module.")
    exec(
        "class Documented:\n"
        "    '''Has one.'''\n"
        "    def method(self):\n"
        "        pass\n"
        "    @property\n"
        "    def prop(self):\n"
        "        return 1\n"
        "class Bare:\n"
        "    pass\n"
        "def function():\n"
        "    pass\n",
        module.__dict__,
    )
    assert sorted(undocumented(module)) == [
        "probe_module.Bare",
        "probe_module.Documented.method",
        "probe_module.Documented.prop",
        "probe_module.function",
    ]
