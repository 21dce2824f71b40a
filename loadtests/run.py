"""Start the game server, run locust headless against it, write reports, stop the server.

    python loadtests/run.py [--users 50] [--spawn-rate USERS/10] [--time 30s] [--config FILE] [--out reports/loadtest]

(`make loadtest USERS=.. SPAWN=.. TIME=..` calls this; `make loadtest USERS=1000` is the scale
check.) Reports: OUT/stats_stats.csv (per request name: counts, failures, percentiles),
OUT/stats_failures.csv, OUT/stats_stats_history.csv, OUT/report.html, OUT/server.log (the server's
structured log) and OUT/summary.txt (the printed summary: the per-request table, then the CPU time
the server, locust and the whole machine used during the run). The exit status is locust's: 0 when
no request failed. The server gets SIGTERM at the end and must exit 0 (a drain problem is reported).

When the users need more rooms than the server allows (GAME_ROOM_SIZE players each, twice over for
players moving between rooms), FRAMEWORK_APP__MAX_ROOMS is raised for the server unless it is set.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: its folder is on sys.path, the repository root is not
    sys.path.insert(0, str(ROOT))

MAX_ROOMS_ENV = "FRAMEWORK_APP__MAX_ROOMS"


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
    width = max([len("request"), *(len(row["Name"]) for row in rows)])
    lines = [
        f"{'request':<{width}} {'count':>7} {'fail':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['Name']:<{width}} {row['Request Count']:>7} {row['Failure Count']:>5} {row['50%']:>7} "
            f"{row['95%']:>7} {row['99%']:>7} {float(row['Requests/s']):>7.1f}"
        )
    return "\n".join(lines)


def cpu_line(who: str, cpu_s: float, wall_s: float) -> str:
    return f"{who} CPU: {cpu_s:.1f} s user+sys in {wall_s:.1f} s ({100.0 * cpu_s / wall_s:.0f}% of one core)"


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def machine_line(busy_s: float, ours_s: float, wall_s: float) -> str:
    cores = psutil.cpu_count() or 1
    return (
        f"machine CPU: {busy_s / wall_s:.2f} of {cores} cores busy "
        f"(server + locust {ours_s / wall_s:.2f}, everything else {(busy_s - ours_s) / wall_s:.2f})"
    )


def rooms_env(users: int, config: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """{FRAMEWORK_APP__MAX_ROOMS: n} when `users` players at GAME_ROOM_SIZE per room need more rooms
    than the deployment allows, else {}. Twice the rooms a perfect packing needs: players keep moving
    between rooms, and a room below GAME_ROOM_SIZE takes newcomers only until it fills."""
    from examples.gameserver.app import game_settings
    from framework.config import load_settings
    from loadtests.rooms import room_size_from_env

    environ = dict(os.environ if environ is None else environ)
    if any(key.upper() == MAX_ROOMS_ENV for key in environ):
        return {}  # the operator chose
    game = game_settings(dict(load_settings(config, env=environ).app))
    per_room = min(room_size_from_env(environ), game.max_players_per_room)
    wanted = 2 * math.ceil(users / per_room)
    if game.max_rooms >= wanted:
        return {}
    print(
        f"note: app.max_rooms {game.max_rooms} -> {wanted} for {users} users at {per_room} per room "
        f"(set {MAX_ROOMS_ENV} to choose)"
    )
    return {MAX_ROOMS_ENV: str(wanted)}


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
    server = start_server(port, config, out / "server.log", python, rooms_env(users, config))
    cpu: list[str] = []
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
        # CPU over locust's run: the server's from /proc via psutil (still running), locust's from
        # the rusage of reaped children (the server is not reaped until after), and the whole
        # machine's, since on a shared box other work takes cores from both.
        server_proc = psutil.Process(server.pid)
        server_before = sum(server_proc.cpu_times()[:2])
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before = busy_cpu_s()
        started = time.monotonic()
        status = subprocess.call(cmd, cwd=ROOT)
        wall = time.monotonic() - started
        busy = busy_cpu_s() - busy_before
        server_cpu = sum(server_proc.cpu_times()[:2]) - server_before if server.poll() is None else 0.0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        locust_cpu = (children.ru_utime + children.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        cpu += [
            cpu_line("server", server_cpu, wall),
            cpu_line("locust", locust_cpu, wall),
            machine_line(busy, server_cpu + locust_cpu, wall),
        ]
    finally:
        server_status = stop_server(server)
    stats = out / "stats_stats.csv"
    report = [summary(read_stats(stats))] if stats.exists() else []
    report += cpu
    if report:
        text = "\n".join(report)
        print(text)
        (out / "summary.txt").write_text(text + "\n")
    print(f"reports in {out}/ (report.html, stats_*.csv, summary.txt, server.log)")
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
        "--spawn-rate",
        type=float,
        default=None,
        help="players started per second (default: users/10, at least 10: all running within 10 s)",
    )
    parser.add_argument("--time", default="30s", help="run time, e.g. 30s, 2m (default 30s)")
    parser.add_argument("--config", default=None, help="server deployment YAML (default: embedded default)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "loadtest"), help="report folder")
    args = parser.parse_args(argv)
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else max(10.0, args.users / 10)
    return run(args.users, spawn_rate, args.time, Path(args.out), args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
