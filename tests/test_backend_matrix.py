"""The backend matrix (tests/support/backends.py) drops no backend silently: one that cannot run
here is listed with its reason, one of this platform's own that is missing is a warning, and one
that fails to build fails the suite naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.io import factory
from framework.io.backends.epoll import EpollProvider
from framework.io.backends.io_uring import DISABLE_ENV
from tests.support import backends

ROOT = Path(__file__).resolve().parent.parent


def test_no_backend_fails_to_build_here() -> None:
    backends.stream_backends()  # creates every backend of the matrix, stand-ins on their kernels
    assert backends.BROKEN == {}, "\n".join(f"{name}: {why}" for name, why in backends.BROKEN.items())


def test_every_registered_backend_is_runnable_unavailable_or_broken() -> None:
    found = backends.survey(factory.backend_names())
    placed = [*found.runnable, *found.unavailable, *found.broken]
    assert sorted(placed) == sorted(factory.backend_names())
    assert set(backends.PLATFORM_BACKENDS) <= set(backends.RUNNABLE_BACKENDS)


def test_a_backend_module_that_does_not_import_is_reported_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = factory.BackendSpec("gone", "framework.io.backends.no_such_module", "GoneProvider")
    monkeypatch.setitem(factory._REGISTRY, "gone", spec)  # removed again after the test
    found = backends.survey(["gone"])
    assert found.runnable == [] and "no_such_module" in found.broken["gone"]


def test_a_probe_that_raises_something_else_is_reported_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(EpollProvider, "probe", staticmethod(probe))
    found = backends.survey(["epoll"])
    assert found.runnable == [] and "Too many open files" in found.broken["epoll"]


def test_kernel_facts_are_listed_with_their_reason_not_as_broken() -> None:
    found = backends.survey(["iocp"])  # Windows only
    if sys.platform == "win32":
        pytest.skip("IOCP is this platform's")
    assert found.broken == {} and found.unavailable["iocp"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="io_uring is a Linux backend")
def test_a_missing_backend_of_this_platform_is_a_warning_and_in_the_header() -> None:
    env = {**os.environ, DISABLE_ENV: "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "tests/test_codec.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "backend io_uring of this platform is not tested here" in out, out[-3000:]
    assert f"unavailable here: io_uring: disabled by the environment ({DISABLE_ENV}=1)" in out, out[-3000:]
