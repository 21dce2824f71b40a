"""Start the game server, run locust headless against it, write reports, stop the server.

    python loadtests/run.py [--users 50] [--spawn-rate USERS/10] [--time 30s] [--port 0]
                            [--progress 3] [--config FILE] [--out reports/loadtest]

(`make loadtest USERS=.. SPAWN=.. TIME=.. PORT=..` calls this; `make loadtest USERS=1000` is the
scale check.) While the users run, a line every --progress seconds gives users, req/s and failures.
At the end locust prints its tables (per request name: counts, times, req/s; then percentiles),
then this script prints its summary, made from the same final numbers (see `summary`), and the CPU
time the server, locust and the whole machine used during the run.

Reports: OUT/stats_stats.csv (per request name, final), OUT/stats_failures.csv,
OUT/stats_stats_history.csv (once a second), OUT/report.html, OUT/server.log (the server's log) and
OUT/summary.txt (the printed summary). The exit status is locust's: 0 when no request failed. The
server gets SIGTERM at the end and must exit 0 (a drain problem is reported).

When the users need more rooms than the server allows (GAME_ROOM_SIZE players each, twice over for
players moving between rooms), FRAMEWORK_APP__MAX_ROOMS is raised for the server unless it is set.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
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


class PortInUse(RuntimeError):
    pass


def claim_port(port: int, host: str = "127.0.0.1") -> int:
    """`port`, or a free one when it is 0. A taken port is an error here: the server would share it
    with the other listener through SO_REUSEPORT, or fail to bind while wait_listening reaches the
    other one, and the load would go to the wrong process either way."""
    if port == 0:
        return free_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the server sets it: connections of an earlier run in TIME_WAIT do not count,
        # a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} is not free ({exc.strerror}); choose another (PORT=, --port) "
                "or 0 for a free one"
            ) from None
    return port


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 meaning a free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, got {text!r}")
    return port


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
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()
    print(f"game server on 127.0.0.1:{port} (log: {log_path})", flush=True)
    return proc


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


SUMMARY_TITLE = "summary (locust's final numbers, as in its tables above)"


def summary(rows: list[dict[str, str]]) -> str:
    """The table of stats_stats.csv, which the locustfile rewrites at exit from the numbers locust
    prints: count and fail are its `# reqs` and `# fails`, p50/p95/p99 its percentile table's
    50%/95%/99% columns, req/s its `req/s` (requests over the time from the start to the last one)."""
    width = max([len("request"), *(len(row["Name"]) for row in rows)])
    lines = [
        SUMMARY_TITLE,
        f"{'request':<{width}} {'count':>7} {'fail':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>8}",
    ]
    for row in rows:
        lines.append(
            f"{row['Name']:<{width}} {row['Request Count']:>7} {row['Failure Count']:>5} {row['50%']:>7} "
            f"{row['95%']:>7} {row['99%']:>7} {float(row['Requests/s']):>8.2f}"
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
    from examples.gameserver.game import GameSettings
    from framework.config import load_settings, validate_app
    from loadtests.rooms import room_size_from_env

    environ = dict(os.environ if environ is None else environ)
    if any(key.upper() == MAX_ROOMS_ENV for key in environ):
        return {}  # the operator chose
    game = validate_app(GameSettings, load_settings(config, env=environ))
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
    progress_s: float = 3.0,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    port = claim_port(port)
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
            "--only-summary", "--stop-timeout", "5", "--progress-every", str(progress_s),
        ]  # fmt: skip
        # CPU over locust's run: the server's from /proc via psutil (still running), locust's from
        # the rusage of reaped children (the server is not reaped until after), and the whole
        # machine's, since on a shared box other work takes cores from both.
        server_proc = psutil.Process(server.pid)
        server_before = sum(server_proc.cpu_times()[:2])
        children_before = os.times()  # reaped children's CPU (0 on Windows, which does not count it)
        busy_before = busy_cpu_s()
        started = time.monotonic()
        status = subprocess.call(cmd, cwd=ROOT)
        wall = time.monotonic() - started
        busy = busy_cpu_s() - busy_before
        server_cpu = sum(server_proc.cpu_times()[:2]) - server_before if server.poll() is None else 0.0
        children = os.times()
        locust_cpu = (children.children_user + children.children_system) - (
            children_before.children_user + children_before.children_system
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
    parser.add_argument("--port", type=port_number, default=0, help="server port (default 0: a free one)")
    parser.add_argument(
        "--progress", type=float, default=3.0, help="seconds between progress lines (default 3; 0: none)"
    )
    parser.add_argument("--out", default=str(ROOT / "reports" / "loadtest"), help="report folder")
    args = parser.parse_args(argv)
    if args.progress < 0:
        parser.error(f"--progress must be >= 0, got {args.progress}")
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else max(10.0, args.users / 10)
    try:
        return run(
            args.users, spawn_rate, args.time, Path(args.out), args.config, args.port, progress_s=args.progress
        )
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
