"""Start the game server, run locust headless against it, write reports, stop the server.

    python loadtests/run.py [--users 50] [--spawn-rate 10] [--time 30s] [--config FILE] [--out reports/loadtest]

(`make loadtest USERS=.. SPAWN=.. TIME=..` calls this.) Reports: OUT/stats_stats.csv (per request
name: counts, failures, percentiles), OUT/stats_failures.csv, OUT/stats_stats_history.csv,
OUT/report.html, and OUT/server.log (the server's structured log). The exit status is locust's: 0 when
no request failed. The server gets SIGTERM at the end and must exit 0 (a drain problem is reported).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on {host}:{port} within {timeout:.0f}s")


def start_server(
    port: int,
    config: str | None,
    log_path: Path,
    python: str = sys.executable,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["FRAMEWORK_SERVER__PORT"] = str(port)
    env["FRAMEWORK_SERVER__HOSTS"] = '["127.0.0.1"]'
    # Every simulated player connects from 127.0.0.1: no per-address connection limit.
    env["FRAMEWORK_SERVER__MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    env.update(extra_env or {})
    cmd = [python, "-m", "examples.gameserver"]
    if config:
        cmd += ["--config", config]
    log = log_path.open("wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def read_stats(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def summary(rows: list[dict[str, str]]) -> str:
    lines = [
        f"{'request':<10} {'count':>7} {'fail':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['Name']:<10} {row['Request Count']:>7} {row['Failure Count']:>5} {row['50%']:>7} "
            f"{row['95%']:>7} {row['99%']:>7} {float(row['Requests/s']):>7.1f}"
        )
    return "\n".join(lines)


def run(
    users: int,
    spawn_rate: float,
    run_time: str,
    out: Path,
    config: str | None = None,
    port: int = 0,
    python: str = sys.executable,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = start_server(port, config, out / "server.log", python)
    try:
        wait_listening("127.0.0.1", port, server, 30.0)
        cmd = [
            python, "-m", "locust",
            "-f", str(ROOT / "loadtests" / "locustfile.py"),
            "--headless", "-u", str(users), "-r", str(spawn_rate), "-t", run_time,
            "--host", f"127.0.0.1:{port}",
            "--csv", str(out / "stats"), "--html", str(out / "report.html"),
            "--only-summary", "--stop-timeout", "5",
        ]  # fmt: skip
        status = subprocess.call(cmd, cwd=ROOT)
    finally:
        server_status = stop_server(server)
    stats = out / "stats_stats.csv"
    if stats.exists():
        print(summary(read_stats(stats)))
    print(f"reports in {out}/ (report.html, stats_*.csv, server.log)")
    if server_status != 0:
        print(
            f"warning: the server exited with status {server_status} (see {out / 'server.log'})",
            file=sys.stderr,
        )
        status = status or 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="run the game server and a headless locust load test against it"
    )
    parser.add_argument("--users", type=int, default=50, help="simulated players (default 50)")
    parser.add_argument(
        "--spawn-rate", type=float, default=10, help="players started per second (default 10)"
    )
    parser.add_argument("--time", default="30s", help="run time, e.g. 30s, 2m (default 30s)")
    parser.add_argument("--config", default=None, help="server deployment YAML (default: embedded default)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "loadtest"), help="report folder")
    args = parser.parse_args(argv)
    return run(args.users, args.spawn_rate, args.time, Path(args.out), args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
