"""Backend selection: the registry, the per-platform fallback chain and its logging."""

from __future__ import annotations

import sys

import pytest
from structlog.testing import capture_logs

from framework.io import BackendUnavailable, create_provider, factory, fallback_chain
from framework.io.factory import available_backends, backend_names, check_available

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux chain")


@linux_only
def test_auto_picks_io_uring_or_epoll_on_linux():
    with capture_logs() as logs:
        p = create_provider("auto")
    assert p.name in ("io_uring", "epoll")
    assert p.name == available_backends()[0]  # the best runnable one
    assert p.initialize(16, 16)
    p.shutdown()
    chosen = [e for e in logs if e["event"] == "io backend selected"]
    assert chosen and chosen[-1]["backend"] == p.name and chosen[-1]["requested"] == "auto"
    assert chosen[-1]["log_level"] == "info"  # "auto" walking its chain is expected


@linux_only
def test_create_epoll_by_name():
    from framework.io.backends.epoll import EpollProvider

    p = create_provider("epoll", fallback=False)
    assert type(p) is EpollProvider and p.name == "epoll"
    assert p.initialize(8, 8)
    assert p.get_statistics().backend == "epoll"
    p.shutdown()


@pytest.mark.parametrize("fallback", [True, False])
def test_unknown_name_is_refused_even_with_fallback(fallback):
    with pytest.raises(BackendUnavailable) as info:
        create_provider("epolll", fallback=fallback)
    assert info.value.backend == "epolll"
    assert "unknown backend" in info.value.reason
    assert "epoll" in info.value.reason  # lists the known names
    assert "epolll" in str(info.value)


@pytest.mark.parametrize(
    ("platform", "chain"),
    [
        ("win32", ["rio", "iocp"]),
        ("darwin", ["kqueue"]),
        ("freebsd14", ["kqueue"]),
        ("linux", ["io_uring", "epoll"]),
        ("sunos5", []),
    ],
)
def test_fallback_chain_for_patched_platform(monkeypatch, platform, chain):
    assert fallback_chain(platform) == chain
    monkeypatch.setattr(factory.sys, "platform", platform)  # no argument: reads sys.platform
    assert fallback_chain() == chain


def test_auto_on_a_platform_without_backends_is_refused():
    with pytest.raises(BackendUnavailable, match="no backend for platform 'sunos5'"):
        create_provider("auto", platform="sunos5")


@linux_only
def test_auto_for_windows_on_linux_names_every_reason():
    with pytest.raises(BackendUnavailable) as info:
        create_provider("auto", platform="win32")
    assert "rio:" in info.value.reason and "iocp:" in info.value.reason


@linux_only
def test_unavailable_backend_without_fallback_raises_with_reason():
    with pytest.raises(BackendUnavailable) as info:
        create_provider("kqueue", fallback=False)
    assert info.value.backend == "kqueue"
    assert info.value.reason  # why: no select.kqueue here (or the module cannot load)
    assert "kqueue" in str(info.value) and info.value.reason in str(info.value)


@linux_only
def test_unavailable_backend_with_fallback_falls_back_and_logs():
    with pytest.raises(BackendUnavailable) as info:
        check_available("kqueue")
    with capture_logs() as logs:
        p = create_provider("kqueue", fallback=True)
    assert p.name in fallback_chain("linux")
    [entry] = [e for e in logs if e["event"] == "io backend selected"]
    assert entry["backend"] == p.name and entry["requested"] == "kqueue"
    assert f"kqueue: {info.value.reason}" in entry["skipped"]
    assert entry["log_level"] == "warning"  # running on another backend than configured


def test_every_chain_member_is_registered():
    names = set(backend_names())
    for platform in ("win32", "darwin", "linux"):
        assert set(fallback_chain(platform)) <= names
    assert "legacy_iocp" in names


@linux_only
def test_available_backends_are_runnable():
    runnable = available_backends()
    assert "epoll" in runnable
    assert set(runnable) <= set(fallback_chain())
    for name in runnable:
        check_available(name)
