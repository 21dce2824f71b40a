"""Smoke test of the benchmark harness (`make bench`) on tiny settings.

Benchmarks are not tests: nothing here asserts a time or a speed. This checks only that the harness
builds the C load client, runs the framework (epoll) and the asyncio baseline through every workload
on loopback (F1 fairness included), writes the JSON, markdown and plot with the fields the README
documents, and that `--baseline-ref` really runs the framework exported from a git commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run as bench
from framework.io.errors import BackendUnavailable
from framework.io.factory import check_available

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
FAIR_FIELDS = {
    "bystander_frames", "bystander_p50_us", "bystander_p99_us", "bystander_max_us", "flood_frames_per_s",
    "flooders_closed",
}  # fmt: skip


def run_harness(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_fair_row(row: dict) -> None:
    """An F1 row whose bystander and flooders both really exchanged frames through the server."""
    assert row.keys() >= FAIR_FIELDS, row
    assert row["bystander_frames"] > 0 and row["flood_frames_per_s"] > 0, row
    assert row["client"]["flood_frames"] > row["bystander_frames"], row  # the flooders dominate
    assert row["bystander_p99_us"] >= row["bystander_p50_us"] > 0, row
    assert row["flooders_closed"] == 0, row


@pytest.mark.timeout(90)
def test_quick_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    proc = run_harness(tmp_path, "--servers", "epoll,asyncio", timeout=85)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())

    assert {"cpu_model", "cpus", "kernel", "python"} <= report["machine"].keys()
    assert report["servers"] == {"epoll": None, "asyncio": None}
    names = [w["name"] for w in report["workloads"]]
    assert {"E1", "E2", "B1", "M1", "F1"} <= set(names)
    rows = {(r["server"], r["workload"]): r for r in report["results"]}
    assert set(rows) == {(s, n) for s in ("epoll", "asyncio") for n in names}
    for (server, workload), row in rows.items():
        assert row["ok"], f"{workload} on {server}: {row.get('error')}"
        assert row.keys() >= ROW_FIELDS
        assert row["client"].keys() >= CLIENT_FIELDS
        assert row["connected"] == row["conns"], row
        assert row["errors"] == 0, row
        if row["mode"] == "fair":
            assert_fair_row(row)
        if row["mode"] == "idle":
            assert row["rss_growth_kb_per_conn"] is not None
        else:
            assert row["server_us_per_frame"] is not None
            assert row["client"]["frames"] > 0  # frames really flowed through the server
            assert row["lat_p50_us"] is not None and row["lat_p99_us"] >= row["lat_p50_us"]

    analysis = report["analysis"]
    assert {"ratios_to_uvloop", "sweep_conns", "sweep_us_per_frame", "targets"} <= analysis.keys()
    assert set(analysis["targets"]) == {"E1", "E2", "B1", "M1", "scaling", "F1"}
    assert all(p is not None for p in analysis["sweep_us_per_frame"]["epoll"])
    f1 = analysis["targets"]["F1"]
    # no uvloop in this run: only the absolute limit applies
    assert f1["uvloop_p99_ms"] is None and f1["limit_ms"] == bench.F1_TARGET_MS
    assert f1["backends"]["epoll"]["p99_ms"] == rows[("epoll", "F1")]["bystander_p99_us"] / 1000

    table = (tmp_path / "latest.md").read_text()
    assert "| E1 | epoll |" in table and "| E1 | asyncio |" in table
    assert "| F1 fairness |" in table and "| F1 bystander p99 (uvloop not measured;" in table
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(90)
def test_baseline_ref_runs_the_framework_exported_from_that_commit(tmp_path: Path) -> None:
    """--baseline-ref HEAD: the committed tree is exported, its io_uring extension built, and its
    rows measured next to this checkout's in one run (the harness checks that the ref's server
    imported the framework from the exported tree, not from this checkout)."""
    try:
        check_available("io_uring")
        uring = True
    except BackendUnavailable:
        uring = False
    servers = "epoll,epoll@HEAD" + (",io_uring@HEAD" if uring else "")
    proc = run_harness(tmp_path, "--only", "F1", "--baseline-ref", "HEAD", "--servers", servers, timeout=85)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert report["baseline_refs"]["HEAD"]["commit"] == head.stdout.strip()
    assert all(reason is None for reason in report["servers"].values()), report["servers"]
    assert [w["name"] for w in report["workloads"]] == ["F1"]
    rows = {r["server"]: r for r in report["results"]}
    assert set(rows) == set(servers.split(","))
    for row in rows.values():
        assert row["ok"], row.get("error")
        assert_fair_row(row)
    ratio = report["analysis"]["vs_ref"]["epoll@HEAD"]["F1"]
    assert ratio["ref"] == rows["epoll@HEAD"]["bystander_p99_us"] and ratio["ratio"] is not None
    table = (tmp_path / "latest.md").read_text()
    assert "| epoll@HEAD | 9 |" in table and "| F1 | " in table  # F1 row, and the now ÷ ref table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--servers", "uvloop@HEAD"], "only the framework's backends"),
        (["--baseline-ref", "HEAD", "--servers", "epoll,uvloop"], "--servers names none of its rows"),
        (["--only", "E1,X9"], "unknown workload(s) ['X9']"),
        (["--f1-inflight", "-1"], "--f1-inflight must be 0 (no window) or more"),
        (["--servers", "uvloop+metrics"], "goes with today's framework backends only"),
        (["--port", "70000"], "expected 0 to 65535"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_baseline_ref_that_is_no_commit_fails_clearly(tmp_path: Path) -> None:
    proc = run_harness(
        tmp_path,
        "--only",
        "F1",
        "--baseline-ref",
        "no-such-ref-13f",
        "--servers",
        "epoll@no-such-ref-13f",
        timeout=55,
    )
    assert proc.returncode == 2
    assert "'no-such-ref-13f' is not a commit" in proc.stderr


@pytest.mark.timeout(90)
def test_metrics_on_rows_are_scraped_and_compared_with_metrics_off_on_a_chosen_port(tmp_path: Path) -> None:
    """`epoll+metrics` runs the same server with its /metrics endpoint on and scraped every second
    during the window; the report divides it by the plain row. `--port` is where servers listen."""
    port = bench.free_port()
    res = run_harness(
        tmp_path, "--only", "E1", "--servers", "epoll,epoll+metrics", "--port", str(port), timeout=80
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    rows = {r["server"]: r for r in report["results"]}
    assert rows["epoll"]["ok"] and rows["epoll+metrics"]["ok"], rows
    assert rows["epoll+metrics"]["scrapes"] >= 1
    assert "scrapes" not in rows["epoll"]
    ratio = report["analysis"]["metrics_on_vs_off"]["epoll+metrics"]["E1"]["ratio"]
    assert ratio is not None and ratio > 0
    assert "Metrics on (/metrics scraped every second) ÷ off" in (tmp_path / "latest.md").read_text()
