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


def _quiet_unconfigured_logging() -> None:
    """Until the application calls `configure_logging`, structlog's defaults would print every
    record, debug included, to stdout: a script or test importing the framework would get
    `session closed` lines mixed into its output. Keep the defaults but drop debug records and
    write to stderr. (`structlog.testing.capture_logs` replaces the processors, so tests still see
    debug events.)"""
    import sys

    import structlog

    if structlog.is_configured():
        return

    def drop_debug(_logger: Any, method_name: str, event_dict: Any) -> Any:
        if method_name == "debug":
            raise structlog.DropEvent
        return event_dict

    structlog.configure(
        processors=[drop_debug, *structlog.get_config()["processors"]],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


_quiet_unconfigured_logging()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'framework' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
