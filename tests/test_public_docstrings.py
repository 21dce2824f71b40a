"""Every public module, class, function, method and property of framework.io and
framework.session has a docstring (an override may inherit its base's, as `inspect.getdoc` does).
Modules that cannot be imported on this OS are skipped (none of these packages has one on Linux)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import framework.io
import framework.session

PACKAGES = (framework.io, framework.session)


def _modules() -> Iterator[ModuleType]:
    for package in PACKAGES:
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.rpartition(".")[2].startswith("_"):
                yield importlib.import_module(info.name)


def _member_doc(cls: type, name: str) -> str | None:
    for klass in cls.__mro__:
        member = vars(klass).get(name)
        if member is not None:
            doc = getattr(getattr(member, "__func__", member), "__doc__", None)
            if doc:
                return str(doc)
    return None


def _undocumented() -> list[str]:
    missing = []
    for module in _modules():
        if not module.__doc__:
            missing.append(module.__name__)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            where = f"{module.__name__}.{name}"
            if inspect.isfunction(obj) and not obj.__doc__:
                missing.append(where)
            elif inspect.isclass(obj):
                if not obj.__doc__:
                    missing.append(where)
                for attr, member in vars(obj).items():
                    func = getattr(member, "__func__", member)
                    documentable = inspect.isfunction(func) or isinstance(member, property)
                    if documentable and not attr.startswith("_") and not _member_doc(obj, attr):
                        missing.append(f"{where}.{attr}")
    return missing


def test_every_public_name_of_io_and_session_has_a_docstring() -> None:
    assert _undocumented() == []


def test_the_checker_sees_a_missing_docstring() -> None:
    class Bare:
        def method(self) -> None:
            pass

    assert _member_doc(Bare, "method") is None
    assert framework.session.Client.__doc__
