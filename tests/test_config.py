"""Deployment settings: YAML loading, environment overrides, error messages, shipped configs, docs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from framework.config import (
    DEFAULT_YAML,
    EMBEDDED_DEFAULT_NAME,
    ConfigError,
    IOSettings,
    Settings,
    check_runnable,
    load_settings,
    markdown,
    validate_app,
)
from framework.io.factory import backend_names

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env or {})
    return info.value


# ---- the packaged default and the shipped configs -----------------------------------------------------


def test_packaged_default_is_configs_default_yaml():
    # One source of truth (framework/config/default.yaml, package data); configs/ holds a copy.
    packaged = ROOT / "framework" / "config" / "default.yaml"
    assert packaged.read_text(encoding="utf-8") == DEFAULT_YAML
    assert (ROOT / "configs" / "default.yaml").read_text(encoding="utf-8") == DEFAULT_YAML


def test_default_yaml_is_declared_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "config/default.yaml" in data["tool"]["setuptools"]["package-data"]["framework"]


def test_embedded_default_matches_model_defaults_and_carries_game_settings():
    settings = load_settings(env={})
    defaults = Settings.model_validate({})
    assert settings.model_dump(exclude={"app"}) == defaults.model_dump(exclude={"app"})
    assert settings.app == {"tick_hz": 20, "max_players_per_room": 16, "max_rooms": 100}
    assert settings.server.hosts == ["127.0.0.1", "::1"] and settings.server.port == 7777
    assert settings.io.backend == "auto" and settings.logging.format == "json"


def test_configs_directory_has_the_promised_deployments():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "dev.yaml", "epoll.yaml", "production-io_uring.yaml", "legacy-iocp.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path):
    settings = load_settings(path, env={})
    # What `--show` prints is itself a valid deployment that loads to the same settings.
    dumped = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
    assert load_settings(write(tmp_path, dumped), env={}) == settings


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("default.yaml", {"backend": "auto", "fallback": True, "format": "json"}),
        ("dev.yaml", {"format": "console", "level": "DEBUG"}),
        ("epoll.yaml", {"backend": "epoll", "fallback": False}),
        (
            "production-io_uring.yaml",
            {
                "backend": "io_uring",
                "fallback": True,
                "hosts": ["0.0.0.0", "::"],
                "workers": 1,
                "format": "json",
            },
        ),
        ("legacy-iocp.yaml", {"backend": "legacy_iocp"}),
    ],
)
def test_shipped_configs_say_what_their_names_promise(name: str, expected: dict):
    s = load_settings(ROOT / "configs" / name, env={})
    actual = {
        "backend": s.io.backend,
        "fallback": s.io.fallback,
        "format": s.logging.format,
        "level": s.logging.level,
        "hosts": s.server.hosts,
        "workers": s.server.workers,
    }
    assert {k: actual[k] for k in expected} == expected


def test_dev_limits_are_smaller_and_production_limits_bigger_than_default():
    default = load_settings(env={})
    dev = load_settings(ROOT / "configs" / "dev.yaml", env={})
    prod = load_settings(ROOT / "configs" / "production-io_uring.yaml", env={})
    for section, key in [
        ("io", "max_connections"),
        ("buffers", "max_buffers"),
        ("io", "completion_queue_size"),
    ]:
        d, v, p = (getattr(getattr(s, section), key) for s in (default, dev, prod))
        assert v < d < p, (section, key)


def test_dev_config_holds_a_hundred_local_bots():
    # `python -m examples.gameserver.bot --count 100` against configs/dev.yaml: every bot connects
    # from 127.0.0.1 and gets a seat in a room (10 rooms of 8 were once too few).
    s = load_settings(ROOT / "configs" / "dev.yaml", env={})
    per_address = s.server.max_connections_per_address
    assert s.io.max_connections >= 100 and (per_address == 0 or per_address >= 100)
    assert s.app["max_rooms"] * s.app["max_players_per_room"] >= 100


def test_admission_defaults_protect_a_public_server():
    s = load_settings(env={})
    assert 0 < s.server.max_connections_per_address < s.io.max_connections
    assert 0 < s.session.first_message_timeout_s <= 30
    limit = s.session.rate_limit
    assert limit.messages_per_s > 0 and limit.bytes_per_s > 0 and limit.policy == "close"
    assert limit.byte_burst > s.session.max_frame_size


def test_byte_burst_must_hold_the_largest_frame(tmp_path: Path):
    path = write(tmp_path, "session:\n  max_frame_size: 4096\n  max_str_len: 4096\n  max_bin_len: 4096\n"
                 "  max_ext_len: 4096\n  max_array_len: 4096\n  max_map_len: 4096\n"
                 "  rate_limit: {byte_burst: 4096}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.field == "session.rate_limit" and "max_frame_size (4096)" in str(info.value)


def test_rate_limit_settings_from_the_environment():
    s = load_settings(
        env={
            "FRAMEWORK_SESSION__RATE_LIMIT__POLICY": "drop",
            "FRAMEWORK_SESSION__RATE_LIMIT__PER_TYPE": '{"chat": {"per_s": 2, "burst": 4}}',
        }
    )
    assert s.session.rate_limit.policy == "drop"
    assert s.session.rate_limit.per_type["chat"].per_s == 2.0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_app_sections_are_valid_game_settings(path: Path):
    game = pytest.importorskip("examples.gameserver.game")
    app = load_settings(path, env={}).app
    assert app, "every shipped deployment configures the example game"
    game.GameSettings.model_validate(app)


def test_backend_choices_are_the_factory_registry():
    choices = set(get_args(IOSettings.model_fields["backend"].annotation))
    assert choices == {"auto", *backend_names()}


# ---- bad files -----------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 7777\n  hosts: [127.0.0.1\nio: {}\n")
    err = load_error(path)
    assert f"{path}:" in str(err) and "YAML syntax error" in str(err)
    where = err.problems[0].where
    line, column = (int(x) for x in where.rsplit(":", 2)[1:])
    assert line >= 3 and column >= 1
    assert "flow sequence" in str(err) and "line 3" in str(err)


def test_unknown_key_names_file_field_and_line(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 7000\n  prot: 7001\n")
    err = load_error(path)
    assert err.field == "server.prot"
    assert f"{path}:3:3: server.prot: unknown key 'prot'" in str(err)
    assert "did you mean 'port'" in str(err)


def test_unknown_section_is_rejected(tmp_path: Path):
    err = load_error(write(tmp_path, "servers:\n  port: 1\n"))
    assert err.field == "servers" and "did you mean 'server'" in str(err)


def test_wrong_type_names_field_and_expectation(tmp_path: Path):
    path = write(tmp_path, "io:\n  fallback: true\n  max_connections: lots\n")
    err = load_error(path)
    assert err.field == "io.max_connections"
    assert f"{path}:3:20: io.max_connections: Input should be a valid integer" in str(err)
    assert "'lots'" in str(err)


def test_section_of_wrong_type(tmp_path: Path):
    err = load_error(write(tmp_path, "server: 7777\n"))
    assert err.field == "server" and "valid dictionary" in str(err)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("server:\n  port: 70000\n", "server.port", "less than or equal to 65535"),
        ("server:\n  port: -1\n", "server.port", "greater than or equal to 0"),
        ("server:\n  workers: 0\n", "server.workers", "greater than or equal to 1"),
        ("server:\n  hosts: []\n", "server.hosts", "at least 1 item"),
        ("server:\n  hosts: ['  ']\n", "server.hosts", "non-empty"),
        (
            "server:\n  workers: 2\n  reuse_port: false\n",
            "server.reuse_port",
            "must be true when workers > 1",
        ),
        ("io:\n  backend: iouring\n", "io.backend", "'io_uring'"),
        (
            "io:\n  options: {sqpoll: [1]}\n",
            "io.options",
            "option 'sqpoll' must be an integer, boolean or string",
        ),
        (
            "buffers:\n  initial_buffers: 100\n  max_buffers: 10\n",
            "buffers.max_buffers",
            "initial_buffers (100)",
        ),
        ("session:\n  codec: json\n", "session.codec", "'msgpack' or 'raw'"),
        ("session:\n  max_frame_size: 1000\n", "session.max_str_len", "max_frame_size (1000)"),
        ("session:\n  max_frame_size: 0x100000000\n", "session.max_frame_size", "4294967295"),
        (
            "session:\n  write_low_water: 300000\n",
            "session.write_low_water",
            "must be < write_high_water (262144), got 300000",
        ),
        (
            "session:\n  write_high_water: 100\n  write_low_water: 100\n",
            "session.write_low_water",
            "must be < write_high_water (100)",
        ),
        (
            "session:\n  write_high_water: 5000000\n",
            "session.write_hard_cap",
            "must be >= write_high_water (5000000)",
        ),
        ("session:\n  idle_timeout_s: -1\n", "session.idle_timeout_s", "greater than or equal to 0"),
        ("session:\n  handler_errors: ignore\n", "session.handler_errors", "'close' or 'keep'"),
        ("logging:\n  format: xml\n", "logging.format", "'json' or 'console'"),
        ("logging:\n  level: TRACE\n", "logging.level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("stats:\n  interval_s: -5\n", "stats.interval_s", "greater than or equal to 0"),
        ("app: [1, 2]\n", "app", "valid dictionary"),
    ],
)
def test_bad_values_name_field_and_expectation(tmp_path: Path, text: str, field: str, words: str):
    path = write(tmp_path, text)
    err = load_error(path)
    assert field in [p.field for p in err.problems], str(err)
    problem = next(p for p in err.problems if p.field == field)
    assert words in problem.message, str(err)
    assert problem.where.startswith(str(path))


def test_every_problem_in_a_file_is_reported(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: x\nio:\n  backend: nope\nlogging:\n  colour: true\n")
    err = load_error(path)
    assert [p.field for p in err.problems] == ["server.port", "io.backend", "logging.colour"]
    assert str(err).startswith("invalid settings (3 problems):")
    assert [p.where for p in err.problems] == [f"{path}:2:9", f"{path}:4:12", f"{path}:6:3"]


def test_lowercase_level_is_accepted(tmp_path: Path):
    assert load_settings(write(tmp_path, "logging:\n  level: warning\n"), env={}).logging.level == "WARNING"


def test_partial_file_keeps_model_defaults(tmp_path: Path):
    s = load_settings(write(tmp_path, "server:\n  port: 9001\n"), env={})
    assert s.server.port == 9001 and s.server.hosts == ["127.0.0.1", "::1"] and s.io.backend == "auto"
    assert s.app == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- server\n- io\n", "top level must be a mapping of sections"),
        ("just a string\n", "top level must be a mapping"),
        ("", "empty document"),
        ("# only a comment\n", "empty document"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, words: str):
    path = write(tmp_path, text)
    err = load_error(path)
    assert words in str(err) and str(path) in str(err)


def test_duplicate_key_is_an_error(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 1\nio: {}\nserver:\n  port: 2\n")
    err = load_error(path)
    assert err.field == "server" and f"{path}:4:1" in str(err) and "duplicate key" in str(err)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    err = load_error(path)
    assert str(path) in str(err) and "file not found" in str(err)


def test_unreadable_file(tmp_path: Path):
    err = load_error(tmp_path)  # a directory cannot be read as a file, even by root
    assert str(tmp_path) in str(err) and "cannot read file" in str(err)


def test_non_utf8_file(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("server:\n  hosts: ['caf\xe9']\n".encode("latin-1"))
    err = load_error(path)
    assert str(path) in str(err) and "not UTF-8" in str(err)


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path):
    path = write(tmp_path, "app: !!python/object/apply:os.system ['true']\n")
    err = load_error(path)
    assert f"{path}:1:6: YAML error: could not determine a constructor" in str(err)


# ---- environment overrides -----------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 7000\nio:\n  backend: epoll\n  fallback: false\n")
    env = {
        "FRAMEWORK_SERVER__PORT": "9000",
        "FRAMEWORK_IO__BACKEND": "io_uring",
        "FRAMEWORK_IO__FALLBACK": "true",
        "FRAMEWORK_SESSION__IDLE_TIMEOUT_S": "2.5",
        "UNRELATED": "ignored",
    }
    s = load_settings(path, env=env)
    assert (s.server.port, s.io.backend, s.io.fallback, s.session.idle_timeout_s) == (
        9000,
        "io_uring",
        True,
        2.5,
    )
    # Untouched values still come from the file, then the defaults.
    assert s.server.hosts == ["127.0.0.1", "::1"] and s.server.workers == 1


def test_environment_overrides_the_embedded_default():
    s = load_settings(env={"FRAMEWORK_LOGGING__FORMAT": "console", "FRAMEWORK_LOGGING__LEVEL": "debug"})
    assert (s.logging.format, s.logging.level) == ("console", "DEBUG")
    assert s.app["tick_hz"] == 20  # the rest of the embedded default survives


def test_environment_list_and_mapping_values():
    env = {
        "FRAMEWORK_SERVER__HOSTS": '["0.0.0.0", "::"]',
        "FRAMEWORK_IO__OPTIONS": '{"sqpoll": true, "sq_thread_idle": 2000}',
        "FRAMEWORK_IO__OPTIONS__MODE": "fast",
        "FRAMEWORK_APP__TICK_HZ": "30",
        "FRAMEWORK_APP__MOTD": "hello",
    }
    s = load_settings(env=env)
    assert s.server.hosts == ["0.0.0.0", "::"]
    assert s.io.options == {"sqpoll": True, "sq_thread_idle": 2000, "mode": "fast"}
    assert s.app == {"tick_hz": 30, "max_players_per_room": 16, "max_rooms": 100, "motd": "hello"}


def test_environment_option_strings_get_yaml_types():
    env = {"FRAMEWORK_IO__OPTIONS__SQPOLL": "TRUE", "FRAMEWORK_IO__OPTIONS__IDLE": "2000"}
    assert load_settings(env=env).io.options == {"sqpoll": True, "idle": 2000}


def test_environment_whole_section_as_json():
    s = load_settings(env={"FRAMEWORK_SHUTDOWN": '{"drain_timeout_s": 1.5}'})
    assert s.shutdown.drain_timeout_s == 1.5


def test_environment_variable_names_are_case_insensitive():
    assert load_settings(env={"framework_server__port": "9100"}).server.port == 9100


def test_os_environ_is_used_when_env_is_not_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FRAMEWORK_SERVER__PORT", "9200")
    assert load_settings().server.port == 9200
    assert Settings().server.port == 9200  # direct construction has the same precedence


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"FRAMEWORK_SERVER__PORT": "abc"}, "server.port", "valid integer"),
        ({"FRAMEWORK_SERVER__PORT": ""}, "server.port", "valid integer"),
        ({"FRAMEWORK_IO__BACKEND": "uring"}, "io.backend", "'io_uring'"),
        ({"FRAMEWORK_IO__FALLBACK": "maybe"}, "io.fallback", "valid boolean"),
        ({"FRAMEWORK_SERVER__HOSTS": "0.0.0.0,::"}, "server.hosts", "expected JSON for list[str]"),
        ({"FRAMEWORK_SERVER__HOSTS": '"0.0.0.0"'}, "server.hosts", "valid list"),
        ({"FRAMEWORK_SERVER": "port=1"}, "server", "expected a JSON object"),
        ({"FRAMEWORK_SESSION__WRITE_LOW_WATER": "999999"}, "session.write_low_water", "write_high_water"),
        ({"FRAMEWORK_IO__BACKNED": "epoll"}, "io.backned", "did you mean 'backend'"),
        ({"FRAMEWORK_SERVR__PORT": "1"}, "servr", "did you mean 'server'"),
        ({"FRAMEWORK_SERVER__PORT__X": "1"}, "server.port", "not a section"),
    ],
)
def test_bad_environment_value_names_the_variable(tmp_path: Path, env: dict, field: str, words: str):
    path = write(tmp_path, "server:\n  port: 7000\n")
    err = load_error(path, env)
    (name,) = env
    problem = next((p for p in err.problems if p.field == field), None)
    assert problem is not None, str(err)
    assert f"environment variable {name}" in problem.where and words in problem.message, str(err)


def test_env_error_and_file_error_are_told_apart(tmp_path: Path):
    path = write(tmp_path, "io:\n  backend: nope\n")
    err = load_error(path, {"FRAMEWORK_SERVER__PORT": "x"})
    where = {p.field: p.where for p in err.problems}
    assert where["io.backend"] == f"{path}:2:12"
    assert where["server.port"] == f"environment variable FRAMEWORK_SERVER__PORT (over {path})"


def test_embedded_default_is_named_in_errors():
    err = load_error(None, {"FRAMEWORK_SERVER__PORT": "99999"})
    assert err.problems[0].where == "environment variable FRAMEWORK_SERVER__PORT"
    assert err.source == EMBEDDED_DEFAULT_NAME


# ---- documentation and CLI -----------------------------------------------------------------------------


def test_every_field_has_a_description():
    sections = [Settings] + [
        f.annotation
        for f in Settings.model_fields.values()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    ]
    missing = [f"{m.__name__}.{n}" for m in sections for n, f in m.model_fields.items() if not f.description]
    assert missing == []


def test_config_md_is_not_stale():
    doc = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert doc == markdown(), "docs/CONFIG.md is stale: run `make config-doc`"


def test_config_md_lists_every_field_with_its_environment_variable():
    text = markdown()
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name in annotation.model_fields:
                assert f"| `{name}` |" in text and f"`FRAMEWORK_{section.upper()}__{name.upper()}`" in text
    assert "`FRAMEWORK_APP__<KEY>`" in text


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_check_exit_codes(tmp_path: Path):
    good = run_cli("check-config", "configs/epoll.yaml")
    assert good.returncode == 0 and good.stdout.startswith("OK: configs/epoll.yaml"), good
    bad_path = write(tmp_path, "server:\n  prot: 1\n")
    bad = run_cli("check-config", str(bad_path))
    assert bad.returncode == 1 and f"{bad_path}:2:3: server.prot" in bad.stderr, bad
    assert "did you mean 'port'?" in bad.stderr
    missing = run_cli("check-config", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 1 and "file not found" in missing.stderr
    env_bad = run_cli("check-config", "configs/default.yaml", env={"FRAMEWORK_IO__BACKEND": "nope"})
    assert env_bad.returncode == 1 and "FRAMEWORK_IO__BACKEND" in env_bad.stderr


def test_cli_docs_config_and_show():
    md = run_cli("docs-config")
    assert md.returncode == 0 and md.stdout == markdown()
    shown = run_cli("check-config", "--show", env={"FRAMEWORK_SERVER__PORT": "9300"})
    assert shown.returncode == 0
    assert yaml.safe_load(shown.stdout)["server"]["port"] == 9300


def test_there_is_one_cli():
    # The settings module is a package without a command line of its own: `python -m framework`.
    old = subprocess.run(
        [sys.executable, "-m", "framework.config", "--check", "configs/default.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert old.returncode != 0 and "cannot be directly executed" in old.stderr


# ---- what a valid config needs of this machine ---------------------------------------------------------


@pytest.mark.linux_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kqueue is the foreign backend on Linux")
def test_check_config_says_a_backend_cannot_run_here(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 7001\nio:\n  backend: kqueue\n  fallback: false\n")
    settings = load_settings(path, env={})  # valid: the schema has no opinion about this machine
    with pytest.raises(ConfigError) as info:
        check_runnable(settings)
    assert str(info.value).startswith(f"settings cannot run here: {path}:4:12: io.backend: 'kqueue' ")
    assert "kqueue" in info.value.problems[0].message and "io.fallback is false" in str(info.value)
    res = run_cli("check-config", str(path))
    assert res.returncode == 1 and f"{path}:4:12: io.backend" in res.stderr, res
    assert "cannot run on this machine" in res.stderr and res.stdout == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll is Linux's")
def test_check_config_with_fallback_names_the_backend_that_runs(tmp_path: Path):
    path = write(tmp_path, "io:\n  backend: kqueue\n  fallback: true\n")
    assert check_runnable(load_settings(path, env={})) in backend_names()
    res = run_cli("check-config", str(path))
    assert res.returncode == 0 and "backend kqueue (runs " in res.stdout, res


def test_cannot_run_here_names_the_environment_variable(tmp_path: Path):
    foreign = "iocp" if not sys.platform.startswith("win") else "epoll"
    env = {"FRAMEWORK_IO__BACKEND": foreign, "FRAMEWORK_IO__FALLBACK": "false"}
    with pytest.raises(ConfigError) as info:
        check_runnable(load_settings(ROOT / "configs" / "default.yaml", env=env))
    where = info.value.problems[0].where
    assert where == "environment variable FRAMEWORK_IO__BACKEND (over " + str(ROOT / "configs" / "default.yaml") + ")"


# ---- an application's app: section ---------------------------------------------------------------------


class _AppModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tick_hz: int = Field(default=20, ge=1)
    rooms: dict[str, int] = {}


def test_validate_app_names_file_line_and_suggests_a_key(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 7001\napp:\n  tick_hz: 0\n  tick_hzz: 5\n  rooms: {a: x}\n")
    settings = load_settings(path, env={})  # app: is free-form for the framework
    with pytest.raises(ConfigError) as info:
        validate_app(_AppModel, settings)
    found = {p.field: (p.where, p.message) for p in info.value.problems}
    assert found["app.tick_hz"][0] == f"{path}:4:12" and "greater than or equal to 1" in found["app.tick_hz"][1]
    assert found["app.tick_hzz"][0] == f"{path}:5:3"
    assert "did you mean 'tick_hz'?" in found["app.tick_hzz"][1]
    assert found["app.rooms.a"][0] == f"{path}:6:14"
    good = validate_app(_AppModel, load_settings(write(tmp_path, "app:\n  tick_hz: 30\n", "ok.yaml"), env={}))
    assert good.tick_hz == 30


def test_validate_app_names_the_environment_variable():
    settings = load_settings(None, env={"FRAMEWORK_APP__TICK_HZ": "0"})
    with pytest.raises(ConfigError) as info:
        validate_app(_AppModel, settings.model_copy(update={"app": {"tick_hz": 0}}))
    assert info.value.problems[0].where == "environment variable FRAMEWORK_APP__TICK_HZ"


def test_validate_app_on_settings_built_in_code():
    with pytest.raises(ConfigError) as info:
        validate_app(_AppModel, Settings(app={"tick_hz": "fast"}))
    assert info.value.problems[0].where == "<settings built in code>"
    assert info.value.field == "app.tick_hz"


def test_check_config_app_section_with_positions(tmp_path: Path):
    path = write(tmp_path, "app:\n  tick_hz: 20\n  max_room: 5\n")
    res = run_cli("check-config", str(path), "--app", "examples.gameserver.app:GameSession")
    assert res.returncode == 1 and f"{path}:3:3: app.max_room" in res.stderr, res
    assert "did you mean 'max_rooms'?" in res.stderr
