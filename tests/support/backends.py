"""The backend matrix: which backends each suite runs on, computed once, here.

Every registered backend is probed once per test session. A test id names its backend; a backend
running on a stand-in kernel says so ("<backend>-mocked_<os>_kernel"), and the session host's
second I/O path says so too ("<backend>-operations": provider streams turned off).

- `RUNNABLE_BACKENDS`: every registered backend whose `probe()` passes on this machine (the provider
  contract suite, the legacy core). On Linux: io_uring, epoll, legacy_iocp.
- `PLATFORM_BACKENDS`: this platform's fallback chain, i.e. what "auto" may pick here (session, server, game
  server and reliability suites). On Linux: io_uring, epoll.
- `SESSION_BACKENDS`: `PLATFORM_BACKENDS` plus "<first>-operations", so the host's operations path (IOCP, RIO and the
  legacy adapter use it) also runs on Linux.
- `STANDIN_BACKENDS`: backends whose kernel is missing here but stood in for by
  `tests/support/standin_kernels.py` (built on Linux epoll and eventfd).
- `stream_backends()`: the `RUNNABLE_BACKENDS` and `STANDIN_BACKENDS` backends that report the "Streams" feature.
- `UNAVAILABLE`: name -> reason, for every registered backend that cannot run here (a kernel fact).
  pytest's header lists them; one of this platform's own backends missing is a warning.
- `BROKEN`: name -> reason, for a backend that fails to build here: its module does not import, its
  `probe()` raises something other than `BackendUnavailable`, or it cannot be created or initialized.
  It is never silently dropped: tests/test_backend_matrix.py fails naming it and the reason.
"""

from __future__ import annotations

import functools
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from framework.io.errors import BackendUnavailable
from framework.io.factory import (
    backend_names,
    check_available,
    create_provider,
    fallback_chain,
    provider_class,
)
from framework.io.provider import AsyncIOProvider

MOCKED = "-mocked_"
OPERATIONS = "-operations"
# The kernel tests/support/standin_kernels.py provides for each backend it can stand in for.
_STANDIN_KERNELS = {"kqueue": "macos_kernel", "iocp": "windows_kernel", "rio": "windows_kernel"}


@dataclass
class Survey:
    runnable: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)


def survey(names: Iterable[str]) -> Survey:
    """Sort backends into runnable here, unavailable here (with the reason) and broken."""
    out = Survey()
    for name in names:
        try:
            provider_class(name)
        except BackendUnavailable as exc:  # importing a backend module must work on every OS
            out.broken[name] = exc.reason
            continue
        try:
            check_available(name)
        except BackendUnavailable as exc:
            out.unavailable[name] = exc.reason
            continue
        except Exception as exc:  # a probe states what is missing; anything else is a bug
            out.broken[name] = f"probe() raised {exc!r}"
            continue
        out.runnable.append(name)
    return out


_SURVEY = survey(backend_names())
RUNNABLE_BACKENDS: list[str] = _SURVEY.runnable
UNAVAILABLE: dict[str, str] = _SURVEY.unavailable
BROKEN: dict[str, str] = _SURVEY.broken
PLATFORM_BACKENDS: list[str] = [name for name in fallback_chain() if name in RUNNABLE_BACKENDS]
SESSION_BACKENDS: list[str] = [*PLATFORM_BACKENDS, PLATFORM_BACKENDS[0] + OPERATIONS] if PLATFORM_BACKENDS else []
STANDIN_BACKENDS: list[str] = (
    [f"{name}{MOCKED}{kernel}" for name, kernel in _STANDIN_KERNELS.items() if name not in RUNNABLE_BACKENDS]
    if hasattr(select, "epoll") and hasattr(os, "eventfd")
    else []
)


def split(name: str) -> tuple[str, str]:
    """A matrix name -> (backend, stand-in kernel or "")."""
    backend, _, standin = name.partition(MOCKED)
    return backend, standin


def install_kernel(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install the stand-in kernel a matrix name asks for (undone with `monkeypatch`); returns the
    stand-in Windows kernel, whose `errors` the caller checks, or None. Tests use the conftest
    fixture `standin_kernel`, which does the check."""
    standin = split(name)[1]
    if not standin:
        return None
    from tests.support import standin_kernels  # Linux-only helpers, imported only where they run

    if standin == "macos_kernel":
        standin_kernels.install_macos_kernel(monkeypatch)
        return None
    return standin_kernels.install_windows_kernel(monkeypatch)


def new_provider(name: str) -> AsyncIOProvider:
    """An uninitialized provider of a matrix name (its stand-in kernel, if any, already installed)."""
    backend, standin = split(name)
    # Not create_provider for a stand-in: its probe() checks the real OS.
    return provider_class(backend)() if standin else create_provider(backend, fallback=False)


@functools.cache
def stream_backends() -> list[str]:
    """Backends reporting "Streams" here: stand-in kernels are asked before initialize (on their
    kernel), real backends once initialized (io_uring decides then)."""
    names = []
    for name in RUNNABLE_BACKENDS:
        p = new_provider(name)
        try:
            if not p.initialize(8, 8):
                BROKEN[name] = f"initialize() failed: {getattr(p, 'last_error', '')}"
            elif p.supports_feature("Streams"):
                names.append(name)
        finally:
            p.shutdown()
    for name in STANDIN_BACKENDS:
        try:
            with pytest.MonkeyPatch.context() as monkeypatch:
                install_kernel(name, monkeypatch)
                if new_provider(name).supports_feature("Streams"):
                    names.append(name)
        except Exception as exc:
            BROKEN[name] = f"cannot be created on its stand-in kernel: {exc!r}"
    return names


def header() -> list[str]:
    """Lines for pytest's header: what runs, what is stood in for, what is missing and why."""
    lines = [f"backends: {', '.join(RUNNABLE_BACKENDS) or 'none'}"]
    lines += [f"  on stand-in kernels: {', '.join(STANDIN_BACKENDS) or 'none'}"]
    lines += [f"  unavailable here: {name}: {reason}" for name, reason in UNAVAILABLE.items()]
    lines += [f"  BROKEN: {name}: {reason}" for name, reason in BROKEN.items()]
    return lines


def missing_platform_backends(found: Survey = _SURVEY) -> dict[str, str]:
    """This platform's own backends that cannot run here, with the reason (worth a warning)."""
    return {name: found.unavailable[name] for name in fallback_chain() if name in found.unavailable}
