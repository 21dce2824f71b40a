"""Soak promise: under bots (steady and reconnecting) the game server's RSS, descriptors and sessions
stay flat and return to the idle baseline. `make soak` runs loadtests/soak.py for 10 minutes; this
smoke test runs it briefly on every backend, and checks that its verdict catches growth."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys

import pytest

from loadtests.soak import ROOT, Sample, verdict
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.marks import needs_posix_signals


@pytest.mark.slow
@needs_posix_signals  # the soak's verdict includes "SIGTERM stops the server with status 0"
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_soak_smoke_run_stays_flat(backend, tmp_path):
    """Through `make soak` with PORT, as an operator runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", f"PY={sys.executable}", "soak",
         "SOAK_SECONDS=10", f"PORT={port}",
         f"SOAK_ARGS=--bots 16 --churn 6 --backend {backend} --out {tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"game server on 127.0.0.1:{port} " in proc.stdout
    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 8
    assert max(int(r["sessions"]) for r in rows) >= 16  # the bots really were connected
    assert int(rows[-1]["sessions"]) == 0


def _samples(rss: float, fds: int, sessions: int, grow: float = 0.0) -> list[Sample]:
    return [Sample(t, rss + grow * t, fds + int(grow * t), 1, sessions + int(grow * t)) for t in range(30)]


def test_soak_verdict_accepts_flat_and_catches_every_kind_of_growth():
    flat = _samples(50.0, 30, 20)
    idle = Sample(31, 50.0, 6, 1, 0)
    assert verdict(flat, 6, idle, 8.0, 4, 2) == []
    leaking = _samples(50.0, 30, 20, grow=1.0)
    problems = verdict(leaking, 6, idle, 8.0, 4, 2)
    assert any("RSS" in p for p in problems)
    assert any("descriptors grew" in p for p in problems)
    assert any("sessions grew" in p for p in problems)
    left = verdict(flat, 6, Sample(31, 50.0, 9, 1, 1), 8.0, 4, 2)
    assert any("sessions left" in p for p in left) and any("baseline" in p for p in left)
