"""Run `pytest --collect-only` as if this were Windows or macOS (used by tests/test_portability.py).

    python tests/support/simulated_platform.py win32|darwin [pytest args...]

Collection imports every test module, so a module that reaches for an OS facility at import time
(`resource`, `fcntl`, `/proc`, `select.epoll`, `os.eventfd`) fails here as it would on that OS's CI
runner. Standard-library and third-party modules are imported first under the real platform (their
own Windows branches, e.g. subprocess's `_winapi`, cannot load on Linux); then `sys.platform` is
switched and the OS facilities the target lacks are taken away, before any project module loads:
- both targets: no `resource` module, no `/proc`, no `select.epoll`, no `os.eventfd`;
- win32 also: no `fcntl`, `termios`, `pwd`, `grp`, `select.poll`, `select.kqueue`.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import select
import sys
from typing import Any

_PRELOAD = (
    "asyncio", "concurrent.futures", "ctypes", "ctypes.util", "email", "getpass", "http.client",
    "json", "locale", "logging", "mimetypes", "multiprocessing", "pathlib", "platform", "selectors",
    "shutil", "signal", "socket", "ssl", "subprocess", "tempfile", "threading", "urllib.request",
    "uuid", "cffi", "hypothesis", "msgpack", "pexpect", "psutil", "pydantic", "pydantic_settings", "pytest",
    "structlog", "yaml",
)  # fmt: skip
_MISSING_MODULES = {"win32": ("resource", "fcntl", "termios", "pwd", "grp"), "darwin": ("resource",)}
_MISSING_SELECT = {"win32": ("epoll", "poll", "kqueue"), "darwin": ("epoll",)}


def _no_proc(fn: Any, target: str) -> Any:
    def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
        name = path if isinstance(path, str) else path.decode() if isinstance(path, bytes) else ""
        if not isinstance(path, int) and hasattr(path, "__fspath__"):
            name = os.fsdecode(os.fspath(path))
        if name == "/proc" or name.startswith("/proc/"):
            raise FileNotFoundError(2, f"No such file or directory (simulated {target})", name)
        return fn(path, *args, **kwargs)

    return guarded


def simulate(target: str) -> None:
    for name in _PRELOAD:
        importlib.import_module(name)
    sys.platform = target
    for name in _MISSING_MODULES[target]:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    for attr in _MISSING_SELECT[target]:
        if hasattr(select, attr):
            delattr(select, attr)
    if hasattr(os, "eventfd"):
        del os.eventfd
    builtins.open = io.open = _no_proc(io.open, target)
    os.listdir = _no_proc(os.listdir, target)
    os.scandir = _no_proc(os.scandir, target)
    os.stat = _no_proc(os.stat, target)


if __name__ == "__main__":
    target = sys.argv[1]
    if target not in _MISSING_MODULES:
        raise SystemExit(f"usage: simulated_platform.py {'|'.join(_MISSING_MODULES)} [pytest args]")
    simulate(target)
    import pytest

    sys.path[0] = os.getcwd()  # as `python -m pytest` from the project root has it
    # -s: pytest's Windows console workaround would look for io._WindowsConsoleIO.
    raise SystemExit(pytest.main(["--collect-only", "-q", "-s", "-p", "no:cacheprovider", *sys.argv[2:]]))
