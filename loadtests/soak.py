"""Soak test: the example game server under bots for a bounded time; RSS, descriptors and sessions
must stay flat, and return to the idle baseline when the bots leave.

    python -m loadtests.soak [--seconds 600] [--bots 40] [--churn 10] [--backend auto] [--port 0]
                             [--out reports/soak]

(`make soak` runs this; `SOAK_SECONDS` sets the default duration.) A steady group of bots plays for
the whole run while a churn group reconnects in rounds, so connection set-up and tear-down are
soaked too. The server process is sampled (psutil) every `--interval` seconds (RSS, open descriptors,
threads) together with its session count (from its 1 s "stats" log lines). Written to OUT:
samples.csv, server.log, bots-*.log and soak.png (when matplotlib is available).

Verdict (exit status 1 when any fails): every bot process exits 0; after the warm-up (first 20 % of
the run), the median RSS of the last third is within max(--rss-slack-mb, 10 %) of the first third's,
the most descriptors and sessions in the last third are within a small slack of the first third's;
after the bots leave, sessions return to 0 and descriptors to the idle baseline; SIGTERM then
stops the server with status 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtests.run import ROOT, PortInUse, claim_port, port_number, start_server, stop_server, wait_listening


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int
    sessions: int


def fd_count(pid: int | None = None) -> int:
    """Open descriptors of a process (default: this one), through psutil on every OS. Windows
    sockets are handles, so there the handle count stands in."""
    proc = psutil.Process(pid)
    return proc.num_handles() if sys.platform == "win32" else proc.num_fds()


def proc_sample(pid: int, t: float, sessions: int) -> Sample:
    proc = psutil.Process(pid)
    with proc.oneshot():
        rss = proc.memory_info().rss
        threads = proc.num_threads()
    return Sample(round(t, 2), round(rss / 2**20, 2), fd_count(pid), threads, sessions)


class StatsTail:
    """Follows the server's JSON log and remembers the session count of its last "stats" line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.sessions = 0
        self.stats_lines = 0

    def poll(self) -> int:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "stats":
                self.sessions = int(event.get("sessions", 0))
                self.stats_lines += 1
        return self.sessions


def start_bots(port: int, count: int, duration: float, log_path: Path, seed: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "examples.gameserver.bot", "--count", str(count), "--port", str(port),
        "--duration", f"{duration:.1f}", "--seed", str(seed),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def verdict(
    samples: list[Sample],
    baseline_fds: int,
    final: Sample,
    rss_slack_mb: float,
    fd_slack: int,
    session_slack: int,
) -> list[str]:
    """Problems found (empty: flat)."""
    problems = []
    warm = [s for s in samples if s.t >= 0.2 * samples[-1].t] if samples else []
    third = len(warm) // 3
    if third < 2:
        problems.append(f"too few samples after the warm-up ({len(warm)}); run longer")
    else:
        first, last = warm[:third], warm[-third:]
        rss0, rss1 = statistics.median(s.rss_mb for s in first), statistics.median(s.rss_mb for s in last)
        allowed = max(rss_slack_mb, 0.10 * rss0)
        if rss1 - rss0 > allowed:
            problems.append(f"RSS grew from {rss0:.1f} MB to {rss1:.1f} MB (allowed +{allowed:.1f} MB)")
        fd0, fd1 = max(s.fds for s in first), max(s.fds for s in last)
        if fd1 > fd0 + fd_slack:
            problems.append(f"descriptors grew from {fd0} to {fd1} (allowed +{fd_slack})")
        se0, se1 = max(s.sessions for s in first), max(s.sessions for s in last)
        if se1 > se0 + session_slack:
            problems.append(f"sessions grew from {se0} to {se1} (allowed +{session_slack})")
    if final.sessions != 0:
        problems.append(f"{final.sessions} sessions left after every bot disconnected")
    if final.fds > baseline_fds + 2:
        problems.append(f"{final.fds} descriptors after the bots left; idle baseline was {baseline_fds}")
    return problems


def plot(samples: list[Sample], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    t = [s.t for s in samples]
    for ax, values, label in zip(
        axes,
        ([s.rss_mb for s in samples], [s.fds for s in samples], [s.sessions for s in samples]),
        ("RSS (MB)", "descriptors", "sessions"),
        strict=True,
    ):
        ax.plot(t, values)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds")
    fig.suptitle("soak: game server under bots")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = claim_port(args.port)
    log_path = out / "server.log"
    env = {
        "FRAMEWORK_IO__BACKEND": args.backend,
        "FRAMEWORK_IO__FALLBACK": "false" if args.backend != "auto" else "true",
        "FRAMEWORK_STATS__INTERVAL_S": "1",
        "FRAMEWORK_LOGGING__FORMAT": "json",
    }
    server = start_server(port, args.config, log_path, extra_env=env)
    bots: list[subprocess.Popen[bytes]] = []
    samples: list[Sample] = []
    problems: list[str] = []
    tail = StatsTail(log_path)
    try:
        wait_listening("127.0.0.1", port, server, 30.0)
        time.sleep(1.0)  # let the probe connection of wait_listening close
        baseline_fds = fd_count(server.pid)
        t0 = time.monotonic()
        steady = start_bots(port, args.bots, args.seconds, out / "bots-steady.log", 1)
        bots.append(steady)
        round_s = max(3.0, min(30.0, args.seconds / 5))
        churn: subprocess.Popen[bytes] | None = None
        rounds = 0
        next_sample = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= args.seconds:
                break
            if (
                args.churn
                and (churn is None or churn.poll() is not None)
                and elapsed + round_s <= args.seconds
            ):
                rounds += 1
                churn = start_bots(port, args.churn, round_s, out / f"bots-churn-{rounds}.log", 100 + rounds)
                bots.append(churn)
            if elapsed >= next_sample:
                next_sample = elapsed + args.interval
                samples.append(proc_sample(server.pid, elapsed, tail.poll()))
            if server.poll() is not None:
                problems.append(f"the server exited early with status {server.returncode}")
                break
            time.sleep(0.1)
        for b in bots:
            try:
                b.wait(30)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()
        for i, b in enumerate(bots):
            if b.returncode != 0:
                problems.append(f"bot process {i} exited with status {b.returncode} (see {out}/bots-*.log)")
        # Idle again: sessions must drain to 0 and descriptors to the baseline.
        deadline = time.monotonic() + 15
        seen = tail.stats_lines
        while time.monotonic() < deadline:
            final = proc_sample(server.pid, time.monotonic() - t0, tail.poll())
            if tail.stats_lines > seen and final.sessions == 0 and final.fds <= baseline_fds + 2:
                break
            time.sleep(0.5)
        samples.append(final)
        problems += verdict(
            samples[:-1], baseline_fds, final, args.rss_slack_mb, args.fd_slack, args.session_slack
        )
    finally:
        for b in bots:
            if b.poll() is None:
                b.kill()
                b.wait()
        status = stop_server(server)
    if status != 0:
        problems.append(f"the server exited with status {status} after SIGTERM")
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb", "fds", "threads", "sessions"])
        for s in samples:
            w.writerow([s.t, s.rss_mb, s.fds, s.threads, s.sessions])
    plot(samples, out / "soak.png")
    step = max(1, len(samples) // 12)
    print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'sessions':>8}")
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"{s.t:>7.1f} {s.rss_mb:>8.1f} {s.fds:>5} {s.threads:>7} {s.sessions:>8}")
    print(f"samples in {out / 'samples.csv'}; baseline descriptors {baseline_fds if samples else '?'}")
    if problems:
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        return 1
    print(
        f"OK: flat for {args.seconds:.0f} s ({args.bots} steady bots, {args.churn} churning in {rounds} rounds)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")),
        help="run time (default $SOAK_SECONDS or 600)",
    )  # fmt: skip
    parser.add_argument("--bots", type=int, default=40, help="bots playing the whole run (default 40)")
    parser.add_argument("--churn", type=int, default=10, help="bots reconnecting every round (default 10)")
    parser.add_argument("--backend", default="auto", help="I/O backend (default auto)")
    parser.add_argument("--config", default=None, help="server deployment YAML (default: embedded default)")
    parser.add_argument("--port", type=port_number, default=0, help="server port (default 0: a free one)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument(
        "--rss-slack-mb", type=float, default=8.0, help="allowed RSS growth floor (default 8)"
    )
    parser.add_argument("--fd-slack", type=int, default=4, help="allowed descriptor growth (default 4)")
    parser.add_argument("--session-slack", type=int, default=2, help="allowed session growth (default 2)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "soak"), help="report folder")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.bots < 1 or args.churn < 0 or args.interval <= 0:
        parser.error("--seconds, --bots and --interval must be positive, --churn >= 0")
    try:
        return run(args)
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
