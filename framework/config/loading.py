"""Loading a deployment and saying precisely what is wrong with it.

Precedence, lowest first: the model defaults, the YAML file (or the packaged `default.yaml` when no file
is given), then environment variables `FRAMEWORK_<SECTION>__<FIELD>` (e.g. `FRAMEWORK_IO__BACKEND=epoll`).
Any problem raises `ConfigError`, whose message names the file (with line and column where known) or the
environment variable, the dotted field path and what was expected. The same positions serve the checks
that run after loading: an application's own `app:` model (`validate_app`) and whether this machine can
run the configured backend (`check_runnable`).
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource

from framework.config.schema import ENV_DELIMITER, ENV_PREFIX, Settings, kind_of, section_model, type_name

EMBEDDED_DEFAULT_NAME = "<default config>"
# The default deployment, shipped as package data; configs/default.yaml is a copy (a test keeps them equal).
DEFAULT_YAML = resources.files("framework.config").joinpath("default.yaml").read_text(encoding="utf-8")

M = TypeVar("M", bound=BaseModel)
Loc = tuple[int | str, ...]


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

    def __init__(self, source: str, problems: Sequence[Problem], *, title: str = "invalid settings") -> None:
        self.source = source
        self.problems = list(problems)
        self.title = title
        if len(self.problems) == 1:
            text = f"{title}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"{title} ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)

    @property
    def field(self) -> str:
        """The dotted path of the first problem (convenience for callers and tests)."""
        return self.problems[0].field

    def one_line(self) -> str:
        """The whole error on one line (problems joined by "; "), for a command that fails at start."""
        if len(self.problems) == 1:
            return str(self)
        return f"{self.title}: " + "; ".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class Origin:
    """Where a loaded deployment's values came from, so later checks can point at them too."""

    source: str  # the file name, or EMBEDDED_DEFAULT_NAME
    node: yaml.Node | None  # the document's node tree (line and column of every key and value)
    env_paths: Mapping[tuple[str, ...], str] = field(default_factory=dict)  # field path -> variable

    def where(self, loc: Loc, *, key: bool = False) -> str:
        """Where the value at `loc` (its key, with `key`) came from: "file:line:col", or the variable."""
        lowered = tuple(str(p).lower() for p in loc)
        for n in range(len(lowered), 0, -1):
            name = self.env_paths.get(lowered[:n])
            if name is not None:
                where = f"environment variable {name}"
                return where if self.source == EMBEDDED_DEFAULT_NAME else f"{where} (over {self.source})"
        return _mark(_node_at(self.node, loc, key=key), self.source) if self.node is not None else self.source


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
        sections = ", ".join(Settings.model_fields)
        message = f"top level must be a mapping of sections ({sections}), got {kind_of(data)}"
        raise ConfigError(source, [Problem(_mark(node, source), "", message)])
    if node is not None:
        _check_duplicate_keys(node, source, ())
    return data, node


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
    return origin in (list, dict, tuple, set) or section_model(origin) is not None


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
            info = model.model_fields.get(part)
            if info is None:
                raise ConfigError(where, [Problem(where, dotted, _unknown_key_message(model, part))])
            annotation = info.annotation
            nested = section_model(annotation)
            if nested is not None:
                if depth == len(parts) - 1:
                    _check_json(value, where, dotted, "a JSON object")
                model = nested
                continue
            if depth < len(parts) - 1 and typing.get_origin(annotation) is not dict:
                raise ConfigError(where, [Problem(where, dotted, "is a value, not a section")])
            if depth == len(parts) - 1 and _is_complex(annotation):
                _check_json(value, where, dotted, f"JSON for {type_name(annotation)}")
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


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        info = model.model_fields.get(str(part))
        nested = section_model(info.annotation) if info is not None else None
        if nested is None:
            return None
        model = nested
    return model


def _problem(err: ErrorDetails, origin: Origin, root: type[BaseModel], prefix: Loc) -> Problem:
    """A pydantic error as a Problem: file:line:col (or variable), dotted path, what was expected.

    `root` is the model that was validated, found at `prefix` in the document (the app's model at
    ("app",)); unknown keys get a did-you-mean from the model that holds them.
    """
    loc = tuple(err["loc"])
    full = (*prefix, *loc)
    dotted = ".".join(str(p) for p in full)
    extra = err["type"] == "extra_forbidden"
    if extra:
        parent = _model_at(root, loc[:-1])
        message = _unknown_key_message(parent, str(loc[-1])) if parent else err["msg"]
    elif err["type"] == "value_error" and "ctx" in err:
        message = str(err["ctx"]["error"])  # our validators already say what they got
    else:
        message = err["msg"]
        if err["type"] != "missing":
            message += f" (got {err['input']!r})"
    return Problem(origin.where(full, key=extra), dotted, message)


def _read_file(path: str | Path) -> tuple[str, str]:
    source = str(path)
    try:
        return source, Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [Problem(source, "", "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [Problem(source, "", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise ConfigError(source, [Problem(source, "", f"cannot read file: {exc.strerror or exc}")]) from None


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load a deployment: the YAML file at `path` (the packaged default when None), then the environment.

    `env` replaces os.environ as the source of `FRAMEWORK_*` overrides (tests pass `{}`).
    Raises `ConfigError` for any problem with the file, a value, or an environment variable.
    """
    source, text = (EMBEDDED_DEFAULT_NAME, DEFAULT_YAML) if path is None else _read_file(path)
    data, node = _read_yaml(text, source)

    environ = os.environ if env is None else env
    env_paths = _env_paths(environ)
    env_data = _MappingEnvSource(Settings, environ)() if env_paths else {}
    _decode_app_entries(env_data, env_paths)

    origin = Origin(source, node, env_paths)
    try:
        settings = Settings.model_validate(_deep_merge(data, env_data))
    except ValidationError as exc:
        problems = [_problem(err, origin, Settings, ()) for err in exc.errors(include_url=False)]
        raise ConfigError(source, problems) from None
    settings._origin = origin
    return settings


def _origin_of(settings: Settings) -> Origin:
    # Settings built in code (not by load_settings) have no file: name the code as the source.
    return settings._origin or Origin("<settings built in code>", None)


def validate_app(model: type[M], settings: Settings) -> M:
    """`settings.app` validated by an application's own model (unknown keys should be forbidden there).

    Raises `ConfigError` naming file:line:col (or the environment variable), `app.<key>` and what was
    expected, with a did-you-mean for a misspelt key, as for the framework's own sections.
    """
    try:
        return model.model_validate(settings.app)
    except ValidationError as exc:
        origin = _origin_of(settings)
        problems = [_problem(err, origin, model, ("app",)) for err in exc.errors(include_url=False)]
        raise ConfigError(origin.source, problems) from None


def check_runnable(settings: Settings, *, platform: str | None = None) -> str:
    """The backend this machine would run for `settings`; `ConfigError` when a valid config cannot run here.

    Uses the factory's own selection (the backend's probe, then the platform's fallback chain when
    `io.fallback` allows it), so it agrees with what `serve` would do. Opens nothing.
    """
    from framework.io.errors import BackendUnavailable
    from framework.io.factory import select_backend

    io = settings.io
    try:
        return select_backend(io.backend, fallback=io.fallback, platform=platform)[0]
    except BackendUnavailable as exc:
        origin = _origin_of(settings)
        why = f"cannot run on this machine: {exc.reason}"
        if io.backend != "auto" and not io.fallback:
            why += " (and io.fallback is false)"
        problem = Problem(origin.where(("io", "backend")), "io.backend", f"{io.backend!r} {why}")
        raise ConfigError(origin.source, [problem], title="settings cannot run here") from None
