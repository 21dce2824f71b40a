"""`serve` that cannot start says why in one line, exit status 2: invalid settings, an invalid `app:`
section, a backend this machine cannot run, a port already in use. Real processes, real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backends import RUNNABLE_BACKENDS

ROOT = Path(__file__).resolve().parent.parent
GAME = ["-m", "framework", "serve", "--app", "examples.gameserver.app:GameSession"]


def serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FRAMEWORK_")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def failure_line(res: subprocess.CompletedProcess[str]) -> str:
    """The one line that is not a structured log record (logging may already be set up)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = []
    for line in res.stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_invalid_config_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  prot: 7001\nsession:\n  max_frame_size: 0\n")
    line = failure_line(serve([*GAME, "--config", str(bad)]))
    assert f"{bad}:2:3: server.prot: unknown key 'prot'; did you mean 'port'?" in line
    assert f"{bad}:4:19: session.max_frame_size" in line


def test_invalid_app_section_is_one_line_with_its_position(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("app:\n  tick_hz: 0\n")
    line = failure_line(serve(["-m", "examples.gameserver", "--config", str(bad)]))
    assert f"{bad}:2:12: app.tick_hz" in line and "greater than" in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kqueue is the foreign backend on Linux")
def test_backend_unavailable_is_one_line(tmp_path: Path):
    cfg = tmp_path / "kqueue.yaml"
    cfg.write_text("server:\n  hosts: [127.0.0.1]\n  port: 0\nio:\n  backend: kqueue\n  fallback: false\n")
    for args in ([*GAME, "--config", str(cfg)], ["-m", "examples.gameserver", "--config", str(cfg)]):
        line = failure_line(serve(args))
        assert line.startswith(f"error: settings cannot run here: {cfg}:5:12: io.backend: 'kqueue' ")


@pytest.mark.parametrize("backend", RUNNABLE_BACKENDS)
def test_port_in_use_is_one_line(backend: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "FRAMEWORK_SERVER__HOSTS": '["127.0.0.1"]',
            "FRAMEWORK_SERVER__PORT": str(port),
            "FRAMEWORK_SERVER__REUSE_PORT": "false",
            "FRAMEWORK_IO__BACKEND": backend,
            "FRAMEWORK_IO__FALLBACK": "false",
        }
        line = failure_line(serve(["-m", "examples.gameserver"], env))
    assert line.startswith(f"error: cannot listen on 127.0.0.1 port {port}: ")
    assert "Address already in use" in line or "EADDRINUSE" in line


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT")
def test_port_in_use_with_workers_is_one_line():
    # The supervisor forks workers that bind for themselves; it checks the port before forking, so
    # the operator gets one line instead of a traceback per worker and restart.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "FRAMEWORK_SERVER__HOSTS": '["127.0.0.1"]',
            "FRAMEWORK_SERVER__PORT": str(port),
            "FRAMEWORK_SERVER__WORKERS": "2",
        }
        line = failure_line(serve(["-m", "examples.gameserver"], env))
    assert line.startswith(f"error: cannot listen on 127.0.0.1 port {port}: ")
    assert "Address already in use" in line or "EADDRINUSE" in line
