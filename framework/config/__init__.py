"""Deployment settings: one pydantic model per deployment, loaded from YAML with environment overrides.

- `schema`: the models (`Settings` and one class per section), with their defaults and cross-field rules.
- `loading`: `load_settings()` (file, packaged `default.yaml`, `FRAMEWORK_*` variables) and `ConfigError`,
  which names file:line:column or the variable, the field and what was expected; `validate_app()` for an
  application's `app:` model and `check_runnable()` for whether this machine can run the backend.
- `docs`: the generator of docs/CONFIG.md.

The command line is `python -m framework check-config` (and `docs-config`); see `framework.__main__`.
"""

from framework.config.docs import markdown
from framework.config.loading import (
    DEFAULT_YAML,
    EMBEDDED_DEFAULT_NAME,
    ConfigError,
    Origin,
    Problem,
    check_runnable,
    load_settings,
    validate_app,
)
from framework.config.schema import (
    ENV_DELIMITER,
    ENV_PREFIX,
    Backend,
    BufferSettings,
    IOSettings,
    LoggingSettings,
    MetricsSettings,
    MiB,
    OptionValue,
    RateLimitSettings,
    ServerSettings,
    SessionSettings,
    Settings,
    ShutdownSettings,
    StatsSettings,
    TypeRateLimit,
    split_listen,
)

__all__ = [
    "DEFAULT_YAML",
    "EMBEDDED_DEFAULT_NAME",
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "Backend",
    "BufferSettings",
    "ConfigError",
    "IOSettings",
    "LoggingSettings",
    "MetricsSettings",
    "MiB",
    "OptionValue",
    "Origin",
    "Problem",
    "RateLimitSettings",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "ShutdownSettings",
    "StatsSettings",
    "TypeRateLimit",
    "check_runnable",
    "load_settings",
    "markdown",
    "split_listen",
    "validate_app",
]
