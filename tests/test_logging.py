"""Logging set-up: JSON lines and console output, stdlib routing, level filtering, re-configuration."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog

from framework.config import LoggingSettings, load_settings
from framework.logging import configure_logging, get_logger, reset_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    reset_logging()
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_fields_level_logger_and_iso_timestamp():
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="INFO"), stream=out)
    get_logger("game.rooms").info("room created", room="lobby", players=3, tags=["a", "b"])
    (rec,) = records(out)
    assert rec["event"] == "room created" and rec["room"] == "lobby" and rec["players"] == 3
    assert rec["tags"] == ["a", "b"] and rec["level"] == "info" and rec["logger"] == "game.rooms"
    assert datetime.fromisoformat(rec["timestamp"]).tzinfo is not None


def test_bound_context_and_contextvars_are_included():
    out = io.StringIO()
    configure_logging(format="json", level="DEBUG", stream=out)
    structlog.contextvars.bind_contextvars(worker=2)
    try:
        get_logger("s").bind(session="3:1").debug("frame", size=10)
    finally:
        structlog.contextvars.clear_contextvars()
    (rec,) = records(out)
    assert (rec["worker"], rec["session"], rec["size"], rec["level"]) == (2, "3:1", 10, "debug")


def test_exceptions_are_formatted_into_the_json_record():
    out = io.StringIO()
    configure_logging(format="json", stream=out)
    try:
        raise ValueError("bad frame")
    except ValueError:
        get_logger("s").exception("handler failed", session="1:1")
    (rec,) = records(out)
    assert rec["level"] == "error" and rec["session"] == "1:1"
    assert "Traceback" in rec["exception"] and "ValueError: bad frame" in rec["exception"]


def test_stdlib_logging_goes_through_the_same_renderer():
    out = io.StringIO()
    configure_logging(format="json", stream=out)
    logging.getLogger("thirdparty.lib").warning("disk %s at %d%%", "/var", 91)
    (rec,) = records(out)
    assert (
        rec["event"] == "disk /var at 91%" and rec["logger"] == "thirdparty.lib" and rec["level"] == "warning"
    )
    assert "timestamp" in rec


def test_level_filtering_applies_to_structlog_and_stdlib():
    out = io.StringIO()
    configure_logging(format="json", level="WARNING", stream=out)
    log = get_logger("f")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("std").info("std-i")
    logging.getLogger("std").error("std-e")
    assert [r["event"] for r in records(out)] == ["w", "e", "std-e"]


def test_console_mode_renders_readable_lines():
    out = io.StringIO()
    configure_logging(format="console", level="DEBUG", stream=out)
    get_logger("dev.thing").debug("player moved", player="ann", x=3)
    text = out.getvalue()
    assert "player moved" in text and "player=ann" in text and "x=3" in text and "dev.thing" in text
    assert "debug" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
    assert "\x1b[" not in text  # no colour codes when the stream is not a terminal


def test_reconfiguring_is_idempotent_and_switches_format():
    first, second = io.StringIO(), io.StringIO()
    log = get_logger("early")  # created before any configuration, like a module-level logger
    configure_logging(format="json", stream=first)
    configure_logging(format="json", stream=first)
    log.info("once")
    assert [r["event"] for r in records(first)] == ["once"]  # not duplicated by a second handler
    configure_logging(format="console", stream=second)
    log.info("twice")
    assert [r["event"] for r in records(first)] == ["once"]
    assert "twice" in second.getvalue()


def test_configured_from_a_loaded_deployment():
    settings = load_settings(env={"FRAMEWORK_LOGGING__LEVEL": "error"})
    out = io.StringIO()
    configure_logging(settings, stream=out)  # a whole Settings is accepted as well as its logging section
    get_logger("x").warning("hidden")
    get_logger("x").error("shown")
    assert [r["event"] for r in records(out)] == ["shown"]


def test_capture_logs_still_sees_module_loggers_after_configuration():
    # Other tests assert on log events with structlog.testing.capture_logs; configuring must not break it.
    configure_logging(format="json", stream=io.StringIO())
    log = get_logger("framework.io")
    with structlog.testing.capture_logs() as captured:
        log.warning("backend skipped", backend="io_uring")
    assert captured == [{"event": "backend skipped", "backend": "io_uring", "log_level": "warning"}]


def test_default_output_is_stderr(capfd: pytest.CaptureFixture[str]):
    configure_logging(format="json")
    get_logger("to.stderr").info("where am i")
    captured = capfd.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.strip().splitlines()[-1])["event"] == "where am i"


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(format="xml", stream=io.StringIO())  # type: ignore[arg-type]
