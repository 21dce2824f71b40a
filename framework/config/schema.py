"""The settings schema: one pydantic model per section, and `Settings`, the whole deployment.

Every section forbids unknown keys, so a typo fails loudly instead of silently running with a default.
Cross-field rules (e.g. `write_low_water < write_high_water`) are validators here, so they hold
however the values arrive (file, environment, or code). Loading and error positions: `loading.py`.
"""

from __future__ import annotations

import json
import operator
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from framework.config.loading import Origin

ENV_PREFIX = "FRAMEWORK_"
ENV_DELIMITER = "__"

MiB = 1024 * 1024
Backend = Literal["auto", "io_uring", "epoll", "kqueue", "iocp", "rio", "legacy_iocp"]
OptionValue = int | bool | str


def kind_of(value: object) -> str:
    """A value's kind in the words of a config file ("a list", "a number"), for error messages."""
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return kinds.get(type(value), type(value).__name__)


def type_name(annotation: Any) -> str:
    """A field annotation as a reader of docs/CONFIG.md or an error message would write it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " \\| ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if annotation is Any:
        return "any"
    return str(getattr(annotation, "__name__", annotation))


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field that is a nested section (None for a plain value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


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
                raise ValueError(f"option {key!r} must be an integer, boolean or string, got {kind_of(item)}")
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

    # Where each value came from (file, node tree, environment), set by load_settings: later checks
    # (the app's section, whether the backend can run here) then name file:line like the schema's.
    _origin: Origin | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # Equal settings are equal wherever they were read from: _origin is not compared.
        if not isinstance(other, Settings):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over arguments: `Settings(...)` gets load_settings' precedence (no dotenv/secrets)."""
        return env_settings, init_settings
