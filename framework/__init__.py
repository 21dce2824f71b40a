"""A game-server session framework on a unified async I/O provider.

Public API: `Session`, `Server`, `Client`, `load_settings`, `create_provider` (and the provider types
in `framework.io`). Names load lazily so `import framework` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "Session": "framework.session.session",
    "Server": "framework.session.server",
    "Client": "framework.session.client",
    "Settings": "framework.config",
    "load_settings": "framework.config",
    "configure_logging": "framework.logging",
    "create_provider": "framework.io.factory",
    "AsyncIOProvider": "framework.io.provider",
    "CompletionResult": "framework.io.provider",
    "Status": "framework.io.provider",
    "ErrorCode": "framework.io.errors",
    "BackendUnavailable": "framework.io.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'framework' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
