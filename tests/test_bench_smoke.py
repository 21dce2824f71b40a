"""Smoke test of the benchmark harness (`make bench`) on tiny settings.

Benchmarks are not tests: nothing here asserts a time or a speed. This checks only that the harness
builds the C load client, runs the framework (epoll) and the asyncio baseline through every workload
on loopback, and writes the JSON, markdown and plot with the fields the README documents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.linux_only,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the load client is epoll-based (Linux)"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to compile benchmarks/loadgen.c"),
]

ROW_FIELDS = {
    "server", "workload", "mode", "conns", "ok", "connected", "frames_per_s", "server_us_per_frame",
    "server_cpu_util", "client_cpu_util", "lat_p50_us", "lat_p99_us", "rss_kb", "errors", "client",
}  # fmt: skip
CLIENT_FIELDS = {
    "frames", "window_s", "client_cpu_s", "server_cpu_user_s", "server_cpu_sys_s", "server_rss_kb_start",
    "server_rss_kb_end",
}  # fmt: skip


@pytest.mark.timeout(60)
def test_quick_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--out",
            str(tmp_path),
            "--servers",
            "epoll,asyncio",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())

    assert {"cpu_model", "cpus", "kernel", "python"} <= report["machine"].keys()
    assert report["servers"] == {"epoll": None, "asyncio": None}
    names = [w["name"] for w in report["workloads"]]
    assert {"E1", "E2", "B1", "M1"} <= set(names)
    rows = {(r["server"], r["workload"]): r for r in report["results"]}
    assert set(rows) == {(s, n) for s in ("epoll", "asyncio") for n in names}
    for (server, workload), row in rows.items():
        assert row["ok"], f"{workload} on {server}: {row.get('error')}"
        assert row.keys() >= ROW_FIELDS
        assert row["client"].keys() >= CLIENT_FIELDS
        assert row["connected"] == row["conns"], row
        assert row["errors"] == 0, row
        if row["mode"] == "idle":
            assert row["rss_growth_kb_per_conn"] is not None
        else:
            assert row["server_us_per_frame"] is not None
            assert row["client"]["frames"] > 0  # frames really flowed through the server
            assert row["lat_p50_us"] is not None and row["lat_p99_us"] >= row["lat_p50_us"]

    analysis = report["analysis"]
    assert {"ratios_to_uvloop", "sweep_conns", "sweep_us_per_frame", "targets"} <= analysis.keys()
    assert set(analysis["targets"]) == {"E1", "E2", "B1", "M1", "scaling"}
    assert all(p is not None for p in analysis["sweep_us_per_frame"]["epoll"])

    table = (tmp_path / "latest.md").read_text()
    assert "| E1 | epoll |" in table and "| E1 | asyncio |" in table
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
