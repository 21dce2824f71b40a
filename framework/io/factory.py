"""Backend registry and `create_provider("auto" | name)`.

A backend registers a name and a loader (module path + class); importing a backend module must be
safe on every OS, and the class's `probe()` raises `BackendUnavailable` with the reason when it cannot
run here. "auto" walks the platform's fallback chain and logs which backend it chose and why the
others were skipped.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import structlog

from framework.io.errors import BackendUnavailable
from framework.io.provider import AsyncIOProvider

log = structlog.get_logger("framework.io")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    cls: str


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(name: str, module: str, cls: str) -> None:
    """Make a backend selectable by name (in code and in config)."""
    _REGISTRY[name] = BackendSpec(name, module, cls)


for _name, _module, _cls in (
    ("io_uring", "framework.io.backends.io_uring", "IoUringProvider"),
    ("epoll", "framework.io.backends.epoll", "EpollProvider"),
    ("kqueue", "framework.io.backends.kqueue", "KqueueProvider"),
    ("iocp", "framework.io.backends.iocp", "IocpProvider"),
    ("rio", "framework.io.backends.rio", "RioProvider"),
    ("legacy_iocp", "framework.legacy.provider", "IocpLegacyProvider"),
):
    register_backend(_name, _module, _cls)


def backend_names() -> list[str]:
    """Every registered backend's name, whether or not it can run here."""
    return list(_REGISTRY)


def fallback_chain(platform: str | None = None) -> list[str]:
    """Backends "auto" tries, best first, for a `sys.platform` value."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        return ["rio", "iocp"]
    if platform == "darwin" or "bsd" in platform or platform.startswith("dragonfly"):
        return ["kqueue"]
    if platform.startswith("linux"):
        return ["io_uring", "epoll"]
    return []


def provider_class(name: str) -> type[AsyncIOProvider]:
    """Import a backend's class; raises `BackendUnavailable` when its module cannot load here."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise BackendUnavailable(name, f"unknown backend; known: {', '.join(_REGISTRY)}")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendUnavailable(name, f"cannot import {spec.module}: {exc}") from exc
    cls = getattr(module, spec.cls, None)
    if not (isinstance(cls, type) and issubclass(cls, AsyncIOProvider)):
        raise BackendUnavailable(name, f"{spec.module}.{spec.cls} is not an AsyncIOProvider class")
    return cls


def check_available(name: str) -> None:
    """Raise `BackendUnavailable` with the reason when `name` cannot run on this machine."""
    provider_class(name).probe()


def available_backends(platform: str | None = None) -> list[str]:
    """The backends of this platform's chain that can run here (for tests and diagnostics)."""
    out = []
    for name in fallback_chain(platform):
        try:
            check_available(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out


def select_backend(
    name: str = "auto", *, fallback: bool = True, platform: str | None = None
) -> tuple[str, list[str]]:
    """(backend, skipped) for `create_provider(name, fallback=...)`: the backend it builds here and
    "name: reason" for each one passed over; `BackendUnavailable` when none can run.

    `name` is a backend name or "auto". With a name and `fallback=True`, a backend that is
    unavailable falls back along the platform chain; with `fallback=False` it raises.
    Opens nothing (each candidate's `probe()` only), so `check-config` can ask it too.
    """
    chain = fallback_chain(platform)
    if name != "auto" and name not in _REGISTRY:
        # A typo in a config must not silently fall back to another backend.
        provider_class(name)  # raises BackendUnavailable naming the known backends
    if name == "auto":
        candidates = chain
        if not candidates:
            raise BackendUnavailable("auto", f"no backend for platform {platform or sys.platform!r}")
    elif fallback:
        candidates = [name] + [c for c in chain if c != name]
    else:
        candidates = [name]
    skipped: list[str] = []
    for candidate in candidates:
        try:
            check_available(candidate)
        except BackendUnavailable as exc:
            if candidate == name and not fallback:
                raise
            skipped.append(f"{candidate}: {exc.reason}")
            continue
        return candidate, skipped
    raise BackendUnavailable(name, "; ".join(skipped) or "no candidate backend")


def create_provider(
    name: str = "auto", *, fallback: bool = True, platform: str | None = None
) -> AsyncIOProvider:
    """A new, not yet initialized provider of the backend `select_backend` picks (logged)."""
    backend, skipped = select_backend(name, fallback=fallback, platform=platform)
    # Running on another backend than the one configured is worth a warning; "auto" walking
    # its chain is expected.
    level = log.warning if name != "auto" and backend != name else log.info
    level("io backend selected", backend=backend, requested=name, skipped=skipped)
    return provider_class(backend)()
