"""structlog set-up: JSON lines in production, a console renderer in development, chosen by config.

Both structlog loggers and plain stdlib `logging` records go through one `ProcessorFormatter` on one
root handler, so third-party libraries log in the same format. Level filtering happens in stdlib
(`filter_by_level` asks the stdlib logger), which keeps loggers cheap to re-configure: loggers are not
cached on first use, so `structlog.testing.capture_logs` and a later `configure_logging` both still see
every logger created at import time.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, Literal

import structlog

from framework.config import LoggingSettings, Settings

Format = Literal["json", "console"]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}

# The handler this module installed on the root logger; replaced (not duplicated) on re-configuration.
_handler: logging.Handler | None = None


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    settings: LoggingSettings | Settings | None = None,
    *,
    format: Format | None = None,
    level: str | int | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Route structlog and stdlib logging to `stream` (default: stderr) in the configured format.

    Explicit `format`/`level` override `settings`; with neither, the `LoggingSettings` defaults apply
    (JSON, INFO). Calling it again replaces the previous set-up.
    """
    global _handler
    given = settings or LoggingSettings()
    chosen = given.logging if isinstance(given, Settings) else given  # a whole Settings works too
    fmt = format or chosen.format
    lvl = level if level is not None else chosen.level
    numeric = _LEVELS[lvl.upper()] if isinstance(lvl, str) else int(lvl)

    if fmt == "json":
        final: list[Any] = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    elif fmt == "console":
        # ConsoleRenderer formats exc_info itself (pretty tracebacks); colours only on a terminal.
        out = stream or sys.stderr
        final = [structlog.dev.ConsoleRenderer(colors=bool(getattr(out, "isatty", lambda: False)()))]
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected 'json' or 'console'")

    shared = _shared_processors()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo `configure_logging`: remove its handler and restore the unconfigured default (for tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    structlog.reset_defaults()
    import framework

    framework._quiet_unconfigured_logging()  # back to the framework's unconfigured default


def get_logger(name: str, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (shown as `logger` in every record)."""
    return structlog.stdlib.get_logger(name, **initial_values)
