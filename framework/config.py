"""Deployment settings: one pydantic model per deployment, loaded from YAML with environment overrides.

Precedence, lowest first: the model defaults, the YAML file (or the embedded default when no file is
given), then environment variables `FRAMEWORK_<SECTION>__<FIELD>` (e.g. `FRAMEWORK_IO__BACKEND=epoll`).
Every section forbids unknown keys, so a typo fails loudly instead of silently running with a default.
Any problem raises `ConfigError`, whose message names the file (with line and column where known) or the
environment variable, the dotted field path and what was expected.

CLI: `python -m framework.config --check FILE`, `--show [FILE]`, `--markdown` (writes docs/CONFIG.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import operator
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FRAMEWORK_"
ENV_DELIMITER = "__"
EMBEDDED_DEFAULT_NAME = "<embedded default>"

MiB = 1024 * 1024
Backend = Literal["auto", "io_uring", "epoll", "kqueue", "iocp", "rio", "legacy_iocp"]
OptionValue = int | bool | str


class _Section(BaseModel):
    # validate_default: cross-field checks must also hold when one side is a default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


_RELATIONS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}


def _relative_to(info: ValidationInfo, other: str, value: int, relation: str) -> int:
    """A cross-field check: `value <relation> <other field>` (skipped when the other one failed)."""
    bound = info.data.get(other)
    if bound is not None and not _RELATIONS[relation](value, bound):
        raise ValueError(f"must be {relation} {other} ({bound}), got {value}")
    return value


class ServerSettings(_Section):
    """Where and how the server listens."""

    hosts: list[str] = Field(
        default=["127.0.0.1", "::1"],
        min_length=1,
        description="Addresses to listen on. The server skips an IPv6 host that cannot bind (with a warning).",
    )
    port: int = Field(
        default=7777,
        ge=0,
        le=65535,
        description="TCP port for every host (0 = an ephemeral port chosen by the kernel, for tests).",
    )
    workers: int = Field(
        default=1, ge=1, description="Worker processes sharing the port with SO_REUSEPORT (one loop each)."
    )
    backlog: int = Field(default=1024, ge=1, description="listen() backlog per listening socket.")
    reuse_port: bool = Field(
        default=True, description="Set SO_REUSEPORT on listening sockets (required when workers > 1)."
    )
    memory_budget_bytes: int = Field(
        default=256 * MiB,
        ge=0,
        description="All input and output buffered by a worker's sessions, at most; over it the largest "
        "holders are closed first and a new large frame is refused (0 = no budget).",
    )
    max_connections_per_address: int = Field(
        default=64,
        ge=0,
        description="Most connections open at once from one peer IP address (per worker); more are "
        'refused at accept, logged as "connection refused: per-address limit reached" (0 = no limit).',
    )

    @field_validator("hosts")
    @classmethod
    def _hosts_not_blank(cls, hosts: list[str]) -> list[str]:
        cleaned = [h.strip() for h in hosts]
        if any(not h for h in cleaned):
            raise ValueError("host addresses must be non-empty strings")
        return cleaned

    @field_validator("reuse_port")
    @classmethod
    def _reuse_port_for_workers(cls, reuse_port: bool, info: ValidationInfo) -> bool:
        workers = info.data.get("workers", 1)
        if workers > 1 and not reuse_port:
            raise ValueError(f"must be true when workers > 1 (workers = {workers} share one port)")
        return reuse_port


class IOSettings(_Section):
    """The async I/O provider (backend) and its completion loop."""

    backend: Backend = Field(
        default="auto",
        description='Backend name, or "auto" for the best one this platform offers '
        "(Linux: io_uring then epoll; macOS/BSD: kqueue; Windows: rio then iocp).",
    )
    fallback: bool = Field(
        default=True,
        description="When the named backend cannot run here, fall back along the platform chain (logged) "
        "instead of failing.",
    )
    max_connections: int = Field(
        default=10000, ge=1, description="Most connections open at once per worker process."
    )
    completion_queue_size: int = Field(
        default=1024, ge=1, description="Completion queue entries (io_uring ring size; a hint elsewhere)."
    )
    completion_batch: int = Field(
        default=512, ge=1, description="max_results per process_completions call (completions per loop turn)."
    )
    poll_timeout_ms: int = Field(
        default=50, ge=0, description="process_completions timeout when idle, so timers and shutdown run."
    )
    options: dict[str, OptionValue] = Field(
        default={},
        description="Backend-specific options passed to provider.set_option(name, value); "
        'strings "true"/"false" and integer strings become bool/int.',
    )

    @field_validator("options", mode="before")
    @classmethod
    def _coerce_option_strings(cls, value: Any) -> Any:
        # Environment values arrive as strings; give them the types a YAML file would have produced.
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if not isinstance(item, int | str):  # bool is an int
                raise ValueError(f"option {key!r} must be an integer, boolean or string, got {_kind(item)}")
            if isinstance(item, str):
                low = item.strip().lower()
                if low in ("true", "false"):
                    item = low == "true"
                else:
                    try:
                        item = int(low, 10)
                    except ValueError:
                        pass
            out[key] = item
        return out


class BufferSettings(_Section):
    """The receive buffer pool."""

    recv_buffer_size: int = Field(default=65536, ge=256, description="Bytes per receive buffer.")
    initial_buffers: int = Field(default=64, ge=0, description="Buffers allocated at start-up.")
    max_buffers: int = Field(default=16384, ge=1, description="Upper bound of the pool's size.")
    register_with_kernel: bool = Field(
        default=True,
        description="Register pool buffers with the kernel where the backend can (io_uring fixed buffers, "
        "RIO buffer ids); elsewhere ignored.",
    )

    @field_validator("max_buffers")
    @classmethod
    def _max_at_least_initial(cls, max_buffers: int, info: ValidationInfo) -> int:
        return _relative_to(info, "initial_buffers", max_buffers, ">=")


class TypeRateLimit(_Section):
    """One per-message-type token bucket (see `Session.rate_limit_key`)."""

    per_s: float = Field(gt=0, description="Sustained messages per second of this type.")
    burst: int = Field(ge=1, description="Messages of this type accepted at once before limiting.")


class RateLimitSettings(_Section):
    """Per-session token buckets over the messages a client sends (accepted sessions only)."""

    messages_per_s: float = Field(
        default=5000.0, ge=0, description="Sustained messages per second per session (0 = no message limit)."
    )
    message_burst: int = Field(default=10000, ge=1, description="Messages a session may send at once.")
    bytes_per_s: int = Field(
        default=4 * MiB, ge=0, description="Sustained received bytes per second per session (0 = no byte limit)."
    )
    byte_burst: int = Field(
        default=8 * MiB,
        ge=1,
        description="Bytes a session may send at once (> session.max_frame_size, or a largest frame "
        "could never pass).",
    )
    policy: Literal["drop", "close"] = Field(
        default="close",
        description='Over a limit the message is dropped; "close" also closes the session at '
        'max_violations drops with reason "rate limit exceeded", "drop" never closes.',
    )
    max_violations: int = Field(
        default=100, ge=1, description='Dropped messages after which policy "close" closes the session.'
    )
    error_reply: bool = Field(
        default=True,
        description='msgpack sessions get a {"type": "error", "code": "rate_limited", ...} map for a '
        "dropped message (at most one per second; docs/SESSIONS.md).",
    )
    per_type: dict[str, TypeRateLimit] = Field(
        default={},
        description="Per-message-type limits by key (what Session.rate_limit_key returns), e.g. "
        "{chat: {per_s: 5, burst: 10}}; they replace the session class's `rate_limits` entries.",
    )


class SessionSettings(_Section):
    """Per-session framing, decoding limits, timeouts and write back-pressure."""

    codec: Literal["msgpack", "raw"] = Field(
        default="msgpack", description='Message codec: "msgpack" objects or "raw" frame bytes.'
    )
    max_frame_size: int = Field(
        default=MiB,
        ge=1,
        le=0xFFFFFFFF,
        description="Largest frame payload in bytes (4-byte length prefix); a longer frame closes the session.",
    )
    max_str_len: int = Field(
        default=MiB, ge=0, description="msgpack Unpacker max_str_len (bytes; ≤ max_frame_size)."
    )
    max_bin_len: int = Field(
        default=MiB, ge=0, description="msgpack Unpacker max_bin_len (bytes; ≤ max_frame_size)."
    )
    max_array_len: int = Field(
        default=65536, ge=0, description="msgpack Unpacker max_array_len (items; ≤ max_frame_size)."
    )
    max_map_len: int = Field(
        default=65536, ge=0, description="msgpack Unpacker max_map_len (pairs; ≤ max_frame_size)."
    )
    max_ext_len: int = Field(
        default=MiB, ge=0, description="msgpack Unpacker max_ext_len (bytes; ≤ max_frame_size)."
    )
    idle_timeout_s: float = Field(
        default=60.0, ge=0, description="Close a session that completes no frame for this long (0 disables)."
    )
    heartbeat_interval_s: float = Field(
        default=0.0, ge=0, description="Interval of server heartbeats to idle sessions (0 = off)."
    )
    write_high_water: int = Field(
        default=262144, ge=1, description="Queued outgoing bytes above which on_pause_writing is called."
    )
    write_low_water: int = Field(
        default=65536,
        ge=0,
        description="Queued outgoing bytes below which on_resume_writing is called (< write_high_water).",
    )
    write_hard_cap: int = Field(
        default=4194304,
        ge=1,
        description="Queued outgoing bytes above which the session is closed as a slow consumer "
        "(>= write_high_water).",
    )
    read_budget_frames: int = Field(
        default=64,
        ge=1,
        description="Fairness: frames decoded and dispatched per session per loop turn, at most; the rest "
        "waits undecoded while other sessions and timers get their turn.",
    )
    read_budget_bytes: int = Field(
        default=65536,
        ge=1,
        description="Fairness: input bytes decoded per session per loop turn, at most (a larger frame is "
        "still taken whole, one per turn).",
    )
    read_pause_bytes: int = Field(
        default=262144,
        ge=0,
        description="Input waiting undecoded above which the session's reading pauses (it resumes under "
        "half of it); its peer's bytes then wait in the kernel.",
    )
    slow_consumer_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="A session over write_high_water whose peer takes no byte for this long is reset as "
        "a slow consumer (0 = never; write_hard_cap still applies).",
    )
    handler_errors: Literal["close", "keep"] = Field(
        default="close",
        description='An exception in a handler is logged; then "close" closes that session, "keep" keeps it.',
    )
    first_message_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="Close an accepted session that has sent no message (heartbeats do not count) this "
        'long after connecting, with reason "first message timeout" (0 = off).',
    )
    rate_limit: RateLimitSettings = Field(
        default_factory=RateLimitSettings,
        description="Per-session message and byte rate limits (see the rows below).",
    )

    @field_validator("max_str_len", "max_bin_len", "max_array_len", "max_map_len", "max_ext_len")
    @classmethod
    def _limit_within_frame(cls, value: int, info: ValidationInfo) -> int:
        return _relative_to(info, "max_frame_size", value, "<=")

    @field_validator("write_low_water")
    @classmethod
    def _low_below_high(cls, low: int, info: ValidationInfo) -> int:
        return _relative_to(info, "write_high_water", low, "<")

    @field_validator("write_hard_cap")
    @classmethod
    def _cap_above_high(cls, cap: int, info: ValidationInfo) -> int:
        return _relative_to(info, "write_high_water", cap, ">=")

    @field_validator("rate_limit")
    @classmethod
    def _burst_holds_a_frame(cls, limit: RateLimitSettings, info: ValidationInfo) -> RateLimitSettings:
        frame = info.data.get("max_frame_size")
        if limit.bytes_per_s and frame is not None and limit.byte_burst <= frame:
            raise ValueError(
                f"rate_limit.byte_burst ({limit.byte_burst}) must be > max_frame_size ({frame}), "
                "or a largest frame could never pass"
            )
        return limit


class ShutdownSettings(_Section):
    """Graceful shutdown."""

    drain_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On shutdown, how long sessions may flush queued output before being closed.",
    )


class LoggingSettings(_Section):
    """Structured logging (framework.logging)."""

    format: Literal["json", "console"] = Field(
        default="json",
        description='"json": one JSON object per line (production); "console": coloured, for humans.',
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written (case-insensitive)."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class StatsSettings(_Section):
    """Periodic statistics in the log."""

    interval_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds between structured stats records (sessions, sessions opened/closed, "
        "frames/s, bytes/s over the interval); 0 = off. For live figures use `metrics`.",
    )


def split_listen(value: str) -> tuple[str, int]:
    """`"host:port"` or `"[v6]:port"` -> (host, port); raises ValueError saying what is expected."""
    host, sep, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'must look like "host:port" (e.g. "127.0.0.1:9177", "[::1]:9177"), got {value!r}')
    return host, int(port_text)


class MetricsSettings(_Section):
    """Prometheus metrics, health and readiness endpoints (docs/METRICS.md)."""

    listen: str | None = Field(
        default=None,
        description='"host:port" of the HTTP endpoint serving /metrics, /healthz and /readyz; null = off. '
        "With workers > 1, worker i listens on port + i (port 0: each picks a free port).",
    )
    health_stall_s: float = Field(
        default=5.0,
        gt=0,
        description="/healthz answers 503 once the loop has not turned for this long (a handler "
        "blocking it, a deadlock).",
    )

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value


class Settings(BaseSettings):
    """One deployment's settings. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, case_sensitive=False, extra="forbid"
    )

    server: ServerSettings = Field(default_factory=ServerSettings, description="Listening sockets.")
    io: IOSettings = Field(default_factory=IOSettings, description="I/O backend and completion loop.")
    buffers: BufferSettings = Field(default_factory=BufferSettings, description="Receive buffer pool.")
    session: SessionSettings = Field(default_factory=SessionSettings, description="Per-session limits.")
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings, description="Graceful shutdown.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Log output.")
    stats: StatsSettings = Field(default_factory=StatsSettings, description="Periodic statistics.")
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics and health endpoints."
    )
    app: dict[str, Any] = Field(
        default={},
        description="Free-form section for the application, which validates it with its own model "
        "(e.g. the example game server's tick_hz, max_players_per_room, max_rooms).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Direct `Settings(...)` gets the same precedence as load_settings: the environment wins.
        return env_settings, init_settings


# The embedded default; tests assert it equals configs/default.yaml byte for byte.
DEFAULT_YAML = """\
# The default deployment: every setting at its default, on the best backend this machine offers.
# Embedded in framework/config.py (load_settings() with no file); configs/default.yaml is a copy.
# Reference: docs/CONFIG.md. Override any value with FRAMEWORK_<SECTION>__<FIELD>.
server:
  hosts: ["127.0.0.1", "::1"]
  port: 7777
  workers: 1
  backlog: 1024
  reuse_port: true
  memory_budget_bytes: 268435456
  max_connections_per_address: 64
io:
  backend: auto
  fallback: true
  max_connections: 10000
  completion_queue_size: 1024
  completion_batch: 512
  poll_timeout_ms: 50
  options: {}
buffers:
  recv_buffer_size: 65536
  initial_buffers: 64
  max_buffers: 16384
  register_with_kernel: true
session:
  codec: msgpack
  max_frame_size: 1048576
  max_str_len: 1048576
  max_bin_len: 1048576
  max_array_len: 65536
  max_map_len: 65536
  max_ext_len: 1048576
  idle_timeout_s: 60.0
  heartbeat_interval_s: 0
  write_high_water: 262144
  write_low_water: 65536
  write_hard_cap: 4194304
  read_budget_frames: 64
  read_budget_bytes: 65536
  read_pause_bytes: 262144
  slow_consumer_timeout_s: 30.0
  handler_errors: close
  first_message_timeout_s: 10.0
  rate_limit:
    messages_per_s: 5000.0
    message_burst: 10000
    bytes_per_s: 4194304
    byte_burst: 8388608
    policy: close
    max_violations: 100
    error_reply: true
    per_type: {}
shutdown:
  drain_timeout_s: 10.0
logging:
  format: json
  level: INFO
stats:
  interval_s: 60.0
metrics:
  listen: null
  health_stall_s: 5.0
app:
  # The example game server (examples/gameserver) validates these with its own model.
  tick_hz: 20
  max_players_per_room: 16
  max_rooms: 100
"""


# ---------------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings."""

    where: str  # "configs/x.yaml:3:9", "configs/x.yaml", or "environment variable FRAMEWORK_..."
    field: str  # dotted path, e.g. "session.write_low_water"; "" for the document as a whole
    message: str  # what was expected

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.field}: {self.message}" if self.field else f"{self.where}: {self.message}"
        )


class ConfigError(Exception):
    """Invalid settings. `str()` names the file or variable, the field path and what was expected."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"invalid settings: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"invalid settings ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)

    @property
    def field(self) -> str:
        """The dotted path of the first problem (convenience for callers and tests)."""
        return self.problems[0].field


# ---------------------------------------------------------------------------------------------------------
# YAML


def _read_yaml(text: str, source: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse a document into a dict, keeping the node tree for line/column look-ups."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        detail = str(exc.problem or exc.context)
        if exc.context and exc.problem and exc.context_mark:
            ctx = exc.context_mark
            detail += f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
        syntax = isinstance(
            exc, yaml.scanner.ScannerError | yaml.parser.ParserError | yaml.composer.ComposerError
        )
        label = "YAML syntax error" if syntax else "YAML error"
        raise ConfigError(source, [Problem(where, "", f"{label}: {detail}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem(source, "", f"YAML error: {exc}")]) from None
    if data is None:
        raise ConfigError(source, [Problem(source, "", "empty document; expected a mapping of sections")])
    if not isinstance(data, dict):
        where = _mark(node, source)
        raise ConfigError(
            source,
            [
                Problem(
                    where, "", f"top level must be a mapping of sections ({_sections()}), got {_kind(data)}"
                )
            ],
        )
    if node is not None:
        _check_duplicate_keys(node, source, ())
    return data, node


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _mark(node: yaml.Node | None, source: str) -> str:
    if node is None:
        return source
    return f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _check_duplicate_keys(node: yaml.Node, source: str, path: tuple[str, ...]) -> None:
    # PyYAML silently keeps the last of two equal keys; a repeated key is almost always a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if isinstance(key, yaml.ScalarNode) and name in seen:
                dotted = ".".join((*path, name))
                raise ConfigError(source, [Problem(_mark(key, source), dotted, "duplicate key")])
            seen.add(name)
            _check_duplicate_keys(value, source, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, source, (*path, str(i)))


def _node_at(node: yaml.Node | None, loc: Sequence[int | str], *, key: bool) -> yaml.Node | None:
    """The deepest node along `loc`; with `key`, the key node of the last step (for unknown keys)."""
    found = node
    for i, part in enumerate(loc):
        nxt: yaml.Node | None = None
        if isinstance(found, yaml.MappingNode):
            for k, v in found.value:
                if str(k.value) == str(part):
                    nxt = k if key and i == len(loc) - 1 else v
                    break
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            nxt = found.value[part]
        if nxt is None:
            break
        found = nxt
    return found


# ---------------------------------------------------------------------------------------------------------
# Environment


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over an explicit mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {k.lower(): v for k, v in environ.items()}


def _is_complex(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return origin in (list, dict, tuple, set) or (isinstance(origin, type) and issubclass(origin, BaseModel))


def _env_paths(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Map each FRAMEWORK_ variable to the field path it sets, rejecting unknown names and bad JSON.

    Checked here rather than left to pydantic-settings, whose errors name only the top-level section.
    """
    paths: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        where = f"environment variable {name}"
        model: type[BaseModel] = Settings
        for depth, part in enumerate(parts):
            dotted = ".".join(parts[: depth + 1])
            field = model.model_fields.get(part)
            if field is None:
                raise ConfigError(where, [Problem(where, dotted, _unknown_key_message(model, part))])
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if depth == len(parts) - 1:
                    _check_json(value, where, dotted, "a JSON object")
                model = annotation
                continue
            if depth < len(parts) - 1 and typing.get_origin(annotation) is not dict:
                raise ConfigError(where, [Problem(where, dotted, "is a value, not a section")])
            if depth == len(parts) - 1 and _is_complex(annotation):
                _check_json(value, where, dotted, f"JSON for {_type_name(annotation)}")
            break
        paths[parts] = name
    return paths


def _check_json(value: str, where: str, dotted: str, expected: str) -> None:
    try:
        json.loads(value)
    except ValueError as exc:
        raise ConfigError(
            where, [Problem(where, dotted, f"expected {expected}, got {value!r} ({exc})")]
        ) from None


def _unknown_key_message(model: type[BaseModel], key: str) -> str:
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} (known: {', '.join(known)})"


def _decode_app_entries(env_data: dict[str, Any], env_paths: Mapping[tuple[str, ...], str]) -> None:
    # `app` is free-form, so pydantic-settings leaves FRAMEWORK_APP__X values as strings; read them as
    # JSON when they are JSON (30, true, [1, 2]) so they match what the same value in YAML would give.
    for path in env_paths:
        if len(path) < 2 or path[0] != "app":
            continue
        parent: Any = env_data
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
            try:
                parent[path[-1]] = json.loads(parent[path[-1]])
            except ValueError:
                pass


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Loading


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def _problems(
    exc: ValidationError, source: str, node: yaml.Node | None, env_paths: Mapping[tuple[str, ...], str]
) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        extra = err["type"] == "extra_forbidden"
        if extra:
            parent = _model_at(loc[:-1])
            message = _unknown_key_message(parent, str(loc[-1])) if parent else err["msg"]
        elif err["type"] == "value_error":
            message = str(err["ctx"]["error"])  # our validators already say what they got
        else:
            message = err["msg"]
            if err["type"] != "missing":
                message += f" (got {err['input']!r})"
        lowered = tuple(str(p).lower() for p in loc)
        env_name = next(
            (env_paths[lowered[:n]] for n in range(len(lowered), 0, -1) if lowered[:n] in env_paths), None
        )
        if env_name is not None:
            where = f"environment variable {env_name}"
            if source != EMBEDDED_DEFAULT_NAME:
                where += f" (over {source})"
        else:
            where = _mark(_node_at(node, loc, key=extra), source) if node is not None else source
        problems.append(Problem(where, dotted, message))
    return problems


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load a deployment: the YAML file at `path` (the embedded default when None), then the environment.

    `env` replaces os.environ as the source of `FRAMEWORK_*` overrides (tests pass `{}`).
    Raises `ConfigError` for any problem with the file, a value, or an environment variable.
    """
    if path is None:
        source, text = EMBEDDED_DEFAULT_NAME, DEFAULT_YAML
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(source, [Problem(source, "", "file not found")]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(source, [Problem(source, "", f"not UTF-8 text ({exc.reason})")]) from None
        except OSError as exc:
            raise ConfigError(
                source, [Problem(source, "", f"cannot read file: {exc.strerror or exc}")]
            ) from None
    data, node = _read_yaml(text, source)

    environ = os.environ if env is None else env
    env_paths = _env_paths(environ)
    env_data = _MappingEnvSource(Settings, environ)() if env_paths else {}
    _decode_app_entries(env_data, env_paths)

    try:
        return Settings.model_validate(_deep_merge(data, env_data))
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, source, node, env_paths)) from None


# ---------------------------------------------------------------------------------------------------------
# Reference documentation (docs/CONFIG.md)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: Any) -> str:
    words = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                words.append(f"{sym} {getattr(meta, attr)}")
        if isinstance(meta, annotated_types.MinLen):
            words.append(f"at least {meta.min_length} item{'s' if meta.min_length != 1 else ''}")
    return f" ({', '.join(words)})" if words else ""


def _env_name(*parts: str) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(p.upper() for p in parts)


def markdown() -> str:
    """The text of docs/CONFIG.md, generated from the models."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m framework.config --markdown > docs/CONFIG.md`; do not edit by hand.",
        "     tests/test_config.py fails when this file is stale. -->",
        "",
        "A deployment is one YAML file validated by `framework.config.Settings`. Values come from, lowest",
        "precedence first: the defaults below, the YAML file (`load_settings(path)`; with no file the",
        "embedded default, a copy of `configs/default.yaml`), then environment variables.",
        "",
        "- Unknown keys are errors, in the file and in `FRAMEWORK_*` variables.",
        "- Environment variables are named `FRAMEWORK_<SECTION>__<FIELD>` (case-insensitive), e.g.",
        "  `FRAMEWORK_IO__BACKEND=epoll`, `FRAMEWORK_SERVER__PORT=9000`. Scalars are written plainly;",
        '  lists and mappings as JSON, e.g. `FRAMEWORK_SERVER__HOSTS=\'["0.0.0.0", "::"]\'`. A mapping\'s',
        "  entries can also be set one by one: `FRAMEWORK_APP__TICK_HZ=30`, `FRAMEWORK_IO__OPTIONS__SQPOLL=1`.",
        "- Check a file: `python -m framework.config --check FILE` (exit status 1 and the reason when",
        "  invalid); print the effective settings: `python -m framework.config --show [FILE]`.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        out.append(f"## `{name}`")
        out.append("")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append((annotation.__doc__ or "").strip())
            out.append("")
            out.append("| Key | Type | Default | Environment variable | Meaning |")
            out.append("| --- | --- | --- | --- | --- |")
            out.extend(_field_rows(annotation, (name,), ()))
        else:
            out.append(f"{field.description}")
            out.append("")
            model_default = json.dumps(field.get_default(call_default_factory=True))
            embedded = json.dumps(yaml.safe_load(DEFAULT_YAML).get(name))
            out.append(
                f"Type {_type_name(annotation)}, model default `{model_default}`, in the embedded default "
                f"`{embedded}`; environment: `{_env_name(name)}` (JSON) or `{_env_name(name, '<KEY>')}` "
                "(read as JSON when it parses, else as a string)."
            )
        out.append("")
    return "\n".join(out)


def _field_rows(model: type[BaseModel], section: tuple[str, ...], prefix: tuple[str, ...]) -> list[str]:
    """Table rows for a section's fields; a nested model gets a row of its own (set it whole, as
    JSON in the environment) followed by one row per field, named `outer.inner`."""
    rows = []
    defaults = model()
    for sub, subfield in model.model_fields.items():
        key = ".".join((*prefix, sub))
        env = _env_name(*section, *prefix, sub)
        annotation = subfield.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append(
                f"| `{key}` | mapping | (below) | `{env}` (JSON) | {subfield.description or ''} |"
            )
            rows.extend(_field_rows(annotation, section, (*prefix, sub)))
            continue
        default = json.dumps(_plain(getattr(defaults, sub)), ensure_ascii=False)
        rows.append(
            f"| `{key}` | {_type_name(annotation)}{_constraints(subfield)} | `{default}` "
            f"| `{env}` | {subfield.description or ''} |"
        )
    return rows


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _sections() -> str:
    return ", ".join(Settings.model_fields)


# ---------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.config", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--check", metavar="FILE", help="validate FILE (with FRAMEWORK_* overrides); exit 1 if bad"
    )
    group.add_argument(
        "--show", metavar="FILE", nargs="?", const="", help="print the effective settings as YAML"
    )
    group.add_argument("--markdown", action="store_true", help="print docs/CONFIG.md")
    args = parser.parse_args(argv)

    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    path = args.check if args.check is not None else (args.show or None)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check is not None:
        print(f"OK: {path} (backend {settings.io.backend}, port {settings.server.port})")
    else:
        sys.stdout.write(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
