"""Benchmark harness: the framework (io_uring, epoll) against asyncio and uvloop, in one run.

    python -m benchmarks.run [--quick] [--out DIR] [--servers io_uring,epoll,asyncio,uvloop]
                             [--only E1,F1,...] [--baseline-ref GIT_REF] [--rounds N]

`--baseline-ref REF` also measures the framework as it was at commit REF (`io_uring@REF`,
`epoll@REF`): REF is exported with `git archive` into a temporary directory, its io_uring extension is
built there, and those servers run with that directory as cwd and PYTHONPATH, so old and new code
meet the same uvloop/asyncio baselines in one run.

Each measurement starts a fresh server process pinned to CPU 0 and the C load client
(benchmarks/loadgen.c, compiled here with gcc -O2) pinned to CPU 1. The client samples the server's
utime+stime from /proc/PID/stat at the edges of the measured window, so "µs/frame" is the server's
own CPU time divided by the frames it delivered in that window. Workloads run one after the other
for every server (server order alternates per workload), so all servers see the same machine state as
closely as a shared machine allows: compare ratios, not absolute times.

Writes DIR/latest.json, DIR/latest.md and DIR/latest.png (µs/frame against connection count).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BENCH_DIR / "build" / "loadgen"
DEFAULT_OUT = BENCH_DIR / "results"

SERVERS = ("io_uring", "epoll", "asyncio", "uvloop")
FRAMEWORK_BACKENDS = ("io_uring", "epoll")
SERVER_CPU, CLIENT_CPU = 0, 1

# CPU and memory targets (benchmarks/README.md), as (best framework backend) / uvloop in the same run.
TARGETS = {"E1": 0.70, "E2": 0.65, "B1": 0.85, "M1": 0.75}
SCALING_TARGET = 1.2  # µs/frame at the largest sweep point within 1.2x of the smallest
# The fairness goal (F1), for every framework backend: the bystander's p99 round trip no worse than
# uvloop's in the same run, and at most this many ms.
F1_TARGET_MS = 10.0
# F1 flooders: frames each keeps in flight. 4,096 x 20 B = 80 KiB per flooder, more than one 64 KiB
# read: a server that serves each ready connection a bounded share per loop turn answers the
# bystander within one short turn, one that drains every flooder's backlog first makes it wait for
# all 8 x 4,096 frames. (256 in flight is too shallow to tell them apart: every server drains that in
# about 1 ms.)
F1_INFLIGHT = 4096
F1_INFLIGHT_QUICK = 256


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str  # loadgen mode: echo | broadcast | idle | fair
    conns: int
    inflight: int = 1
    payload: int = 64
    hz: float = 0.0
    warmup_s: float = 2.0
    duration_s: float = 5.0
    description: str = ""
    bystanders: int = 0  # fair mode: the first `bystanders` connections play ping-pong
    bystander_payload: int = 64


def workloads(quick: bool, f1_inflight: int | None = None) -> tuple[list[Workload], list[int]]:
    """The workloads and the sweep's connection counts (the sweep reuses E1 where counts match).
    `f1_inflight` overrides F1's window per flooder; 0 = no window (write while the socket takes it)."""
    if f1_inflight is None:
        f1_inflight = F1_INFLIGHT_QUICK if quick else F1_INFLIGHT
    depth = f"{f1_inflight} in flight" if f1_inflight else "unwindowed"
    if quick:
        w, d = 0.3, 0.7
        e1 = 20
        wl = [
            Workload("E1", "echo", e1, 1, 64, warmup_s=w, duration_s=d, description="echo ping-pong"),
            Workload("E2", "echo", 4, 4, 64, warmup_s=w, duration_s=d, description="echo pipelined"),
            Workload(
                "B1", "broadcast", 20, payload=512, hz=30, warmup_s=w, duration_s=d, description="broadcast"
            ),
            Workload("M1", "idle", 50, warmup_s=0.5, duration_s=0.1, description="idle memory"),
        ]
        f1 = Workload(
            "F1", "fair", 9, f1_inflight, 16, warmup_s=w, duration_s=d,
            description=f"fairness: 8 flooders {depth}, 1 bystander", bystanders=1,
        )  # fmt: skip
        sweep = [10, e1]
    else:
        e1 = 1000
        wl = [
            Workload("E1", "echo", e1, 1, 64, description="echo ping-pong, 1 in flight"),
            Workload("E2", "echo", 100, 16, 64, description="echo pipelined, 16 in flight"),
            Workload("B1", "broadcast", 5000, payload=512, hz=30, description="broadcast 30 Hz to all"),
            Workload("M1", "idle", 10000, warmup_s=2.0, duration_s=0.2, description="idle connections"),
        ]
        f1 = Workload(
            "F1", "fair", 9, f1_inflight, 16, bystanders=1,
            description=f"fairness: 8 flooders {depth}, 1 ping-pong bystander",
        )  # fmt: skip
        sweep = [100, e1, 10000]
    wl.append(f1)
    base = wl[0]
    for conns in sweep:
        if conns != base.conns:
            wl.append(
                Workload(
                    f"S{conns}",
                    "echo",
                    conns,
                    1,
                    64,
                    warmup_s=base.warmup_s,
                    duration_s=base.duration_s,
                    description="E1-style sweep point",
                )
            )
    return wl, sweep


# ---- machine facts and tools ----


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(ImportError):
        import uvloop

        facts["uvloop"] = uvloop.__version__
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        facts["gcc"] = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True
        ).stdout.strip()
    return facts


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def build_loadgen() -> Path:
    """Compile the C client when missing or older than its source; raises RuntimeError without gcc."""
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN_BIN
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: it compiles the load client benchmarks/loadgen.c")
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    tmp = LOADGEN_BIN.with_suffix(".tmp")
    proc = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(tmp), str(LOADGEN_SRC)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compiling loadgen failed:\n{proc.stderr}")
    tmp.replace(LOADGEN_BIN)
    return LOADGEN_BIN


def pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for server and client, and a note on what pinning was possible."""
    taskset = shutil.which("taskset")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if taskset and {SERVER_CPU, CLIENT_CPU} <= cpus:
        return (
            [taskset, "-c", str(SERVER_CPU)],
            [taskset, "-c", str(CLIENT_CPU)],
            f"server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}",
        )
    why = "taskset not found" if not taskset else f"CPUs {SERVER_CPU} and {CLIENT_CPU} not both available"
    return [], [], f"not pinned ({why})"


# ---- servers, and the framework at a baseline git ref ----


METRICS = "+metrics"  # a framework server with its Prometheus endpoint on, scraped every second


def split_server(name: str) -> tuple[str, str | None]:
    """Split a server name: `io_uring@b280653` -> ("io_uring", "b280653"); `uvloop` -> ("uvloop", None);
    `epoll+metrics` -> ("epoll", None)."""
    base, _, ref = name.partition("@")
    return base.removesuffix(METRICS), ref or None


def metrics_on(name: str) -> bool:
    return name.partition("@")[0].endswith(METRICS)


def is_framework(name: str) -> bool:
    return split_server(name)[0] in FRAMEWORK_BACKENDS


@dataclass(frozen=True)
class RefTree:
    """The framework's source at a git ref, exported into `path` (which outlives this object only
    as long as the run's temporary directory)."""

    ref: str
    commit: str
    path: Path
    uring_problem: str | None  # why io_uring@ref cannot run (its extension did not build), or None


def export_ref(ref: str, parent: Path, build_uring: bool) -> RefTree:
    """`git archive` REF into a fresh directory under `parent` and, when asked, build its io_uring
    cffi extension in place with this interpreter (the same way `_uring_build.py` is run by hand).
    Raises RuntimeError when REF is not a commit of this repository."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"--baseline-ref {ref!r} is not a commit of the repository at {ROOT}")
    commit = proc.stdout.strip()
    path = parent / f"ref-{commit[:12]}"
    path.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace')[-400:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    problem: str | None = None
    if build_uring:
        builder = path / "framework" / "io" / "backends" / "_uring_build.py"
        if not builder.exists():
            problem = f"{ref} has no {builder.relative_to(path)} to build its io_uring extension with"
        else:
            built = subprocess.run(
                [sys.executable, str(builder)], cwd=path, capture_output=True, text=True, timeout=600
            )
            if built.returncode != 0:
                problem = f"building {ref}'s io_uring extension failed: {built.stderr.strip()[-300:]}"
    return RefTree(ref, commit, path, problem)


def server_env(tree: RefTree | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if tree is not None:
        # The ref's tree first on sys.path: it shadows this checkout's editable install.
        env["PYTHONPATH"] = str(tree.path)
    return env


# Run in the ref's tree: the backend must be available there, and `framework` must really be the
# ref's copy (printed, then compared with the tree's path by the harness).
_REF_PROBE = (
    "import sys, framework, examples.echo\n"
    "from framework.io.factory import check_available\n"
    "check_available(sys.argv[1])\n"
    "print(framework.__file__)\n"
)


def ref_server_problem(name: str, tree: RefTree) -> str | None:
    base, _ = split_server(name)
    if base == "io_uring" and tree.uring_problem:
        return tree.uring_problem
    proc = subprocess.run(
        [sys.executable, "-c", _REF_PROBE, base], cwd=tree.path, env=server_env(tree), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"cannot run at {tree.ref}: {lines[-1] if lines else f'exit code {proc.returncode}'}"
    loaded = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    if not loaded.is_relative_to(tree.path.resolve()):
        return f"the framework loaded from {loaded}, not from {tree.ref}'s tree {tree.path}"
    return None


def server_availability(names: list[str], trees: dict[str, RefTree]) -> dict[str, str | None]:
    """None when the server can run here, else the reason it is skipped."""
    out: dict[str, str | None] = {}
    for name in names:
        reason: str | None = None
        ref = split_server(name)[1]
        if ref is not None:
            reason = ref_server_problem(name, trees[ref])
        elif split_server(name)[0] in FRAMEWORK_BACKENDS:
            try:
                from framework.io.errors import BackendUnavailable
                from framework.io.factory import check_available

                try:
                    check_available(split_server(name)[0])
                except BackendUnavailable as exc:
                    reason = f"backend unavailable: {exc.reason}"
            except Exception as exc:  # the framework itself failed to import
                reason = f"framework import failed: {exc!r}"
        elif name == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError as exc:
                reason = f"uvloop not installed: {exc}"
        elif name != "asyncio":
            reason = f"unknown server {name!r}; known: {', '.join(SERVERS)}"
        out[name] = reason
    return out


def server_command(name: str, wl: Workload, port: int = 0) -> list[str]:
    py = sys.executable
    base, _ = split_server(name)
    if base in FRAMEWORK_BACKENDS:
        cmd = [py, "-m", "examples.echo", "--backend", base, "--port", str(port)]
    else:
        cmd = [py, "-m", "benchmarks.baselines", "--loop", name, "--port", str(port)]
    cmd += ["--host", "127.0.0.1"]
    if wl.mode == "broadcast":
        cmd += ["--broadcast-hz", str(wl.hz), "--payload", str(wl.payload)]
    return cmd


# ---- one measurement ----


class ServerProcess:
    """A server subprocess; `start()` waits for its "ready <port>" line."""

    def __init__(
        self, cmd: list[str], log_path: Path, tree: RefTree | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.cmd = cmd
        self.env = env or {}  # on top of server_env(tree)
        self.log_path = log_path
        self.tree = tree  # run the framework at this ref (cwd and PYTHONPATH), else this checkout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 60.0) -> None:
        cwd = self.tree.path if self.tree is not None else ROOT
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=log, env={**server_env(self.tree), **self.env},
                start_new_session=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"server did not print 'ready <port>' within {timeout_s:.0f}s")
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise RuntimeError(f"server exited with code {self.proc.returncode}: {self.log_tail()}")
                line += chunk
        finally:
            sel.close()
        parts = line.decode(errors="replace").split()
        if len(parts) < 2 or parts[0] != "ready":
            raise RuntimeError(f"unexpected first line from server: {line!r}")
        self.port = int(parts[1])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs the server: same pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


def measure(
    server: str,
    wl: Workload,
    loadgen: Path,
    server_pin: list[str],
    client_pin: list[str],
    log_dir: Path,
    tree: RefTree | None = None,
    port: int = 0,
) -> dict[str, Any]:
    row: dict[str, Any] = {"server": server, "workload": wl.name, **asdict(wl), "ok": False}
    env: dict[str, str] = {}
    scraper: Scraper | None = None
    if metrics_on(server):
        scraper = Scraper(free_port())
        env["FRAMEWORK_METRICS__LISTEN"] = f"127.0.0.1:{scraper.port}"
    log = log_dir / f"{wl.name}-{server}.log"
    srv = ServerProcess(server_pin + server_command(server, wl, port), log, tree, env)
    try:
        srv.start()
        if scraper is not None:
            scraper.start()
        cmd = [
            *client_pin, str(loadgen), "--port", str(srv.port), "--mode", wl.mode, "--conns", str(wl.conns),
            "--inflight", str(wl.inflight), "--payload", str(wl.payload if wl.mode in ("echo", "fair") else 64),
            "--warmup", str(wl.warmup_s), "--duration", str(wl.duration_s), "--server-pid", str(srv.pid),
        ]  # fmt: skip
        if wl.mode == "fair":
            cmd += ["--bystanders", str(wl.bystanders), "--bystander-payload", str(wl.bystander_payload)]
        timeout = 180 + wl.warmup_s + wl.duration_s + 30
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if not proc.stdout.strip():
            raise RuntimeError(f"load client failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        client = json.loads(proc.stdout)
        row["client"] = client
        if not srv.alive():
            raise RuntimeError(f"server died during the run: {srv.log_tail()}")
        if not client.get("ok"):
            raise RuntimeError(f"load client did not finish: {proc.stderr.strip()[-400:]}")
        row.update(summarise(wl, client))
        row["ok"] = True
        if scraper is not None:
            row["scrapes"] = scraper.stop()
            if not row["scrapes"]:
                raise RuntimeError(f"no metrics scrape answered on port {scraper.port}: {srv.log_tail()}")
    except Exception as exc:
        row["error"] = str(exc)
    finally:
        if scraper is not None:
            scraper.stop()
        srv.stop()
    return row


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Scrapes a server's /metrics once a second, as Prometheus would, while a measurement runs (its
    cost lands in the server's CPU time, where it belongs)."""

    def __init__(self, port: int, interval_s: float = 1.0) -> None:
        import threading

        self.port = port
        self.interval_s = interval_s
        self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        url = f"http://127.0.0.1:{self.port}/metrics"
        while True:  # one scrape at once, then one a second
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                self.ok += 1
            except OSError:
                pass
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> int:
        """Stop scraping; the number of scrapes that answered."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        return self.ok


def summarise(wl: Workload, c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connected": c["connected"],
        "frames_per_s": c["frames_per_s"],
        "server_us_per_frame": c.get("server_us_per_frame") if c["frames"] else None,
        "server_cpu_util": c.get("server_cpu_util"),
        "client_cpu_util": c["client_cpu_util"],
        "lat_p50_us": c["lat_p50_us"] if c["lat_p50_us"] >= 0 else None,
        "lat_p99_us": c["lat_p99_us"] if c["lat_p99_us"] >= 0 else None,
        "rss_kb": c["server_rss_kb_end"],
        "errors": c["errors"] + c["closed_by_peer"],
    }
    if wl.mode == "idle" and c["connected"]:
        out["rss_growth_kb_per_conn"] = (c["server_rss_kb_end"] - c["server_rss_kb_start"]) / c["connected"]
    if wl.mode == "fair":
        out.update(
            bystander_frames=c["by_frames"],
            bystander_p50_us=c["by_p50_us"] if c["by_p50_us"] >= 0 else None,
            bystander_p99_us=c["by_p99_us"] if c["by_p99_us"] >= 0 else None,
            bystander_max_us=c["by_max_us"] if c["by_max_us"] >= 0 else None,
            flood_frames_per_s=c["flood_frames_per_s"],
            flooders_closed=c["flood_closed"],
        )
    return out


def main_key(mode: str) -> str:
    """The metric a workload is judged (and its rounds' median picked) by."""
    return {"idle": "rss_growth_kb_per_conn", "fair": "bystander_p99_us"}.get(mode, "server_us_per_frame")


# ---- analysis and output ----


def metric(rows: list[dict[str, Any]], server: str, wl: str, key: str) -> float | None:
    for r in rows:
        if r["server"] == server and r["workload"] == wl and r.get("ok"):
            v = r.get(key)
            return float(v) if v is not None else None
    return None


def f1_verdict(rows: list[dict[str, Any]], backends: list[str]) -> dict[str, Any]:
    """The fairness goal (F1) for each framework backend: bystander p99 <= uvloop's (same run) and
    <= F1_TARGET_MS. Without a uvloop row only the absolute limit applies (and is said so)."""
    base_us = metric(rows, "uvloop", "F1", "bystander_p99_us")
    limit_ms = F1_TARGET_MS if base_us is None else min(F1_TARGET_MS, base_us / 1000)
    per: dict[str, dict[str, Any]] = {}
    for server in backends:
        p99_us = metric(rows, server, "F1", "bystander_p99_us")
        p99_ms = None if p99_us is None else p99_us / 1000
        per[server] = {"p99_ms": p99_ms, "met": None if p99_ms is None else p99_ms <= limit_ms}
    met = [v["met"] for v in per.values()]
    return {
        "target_ms": F1_TARGET_MS,
        "uvloop_p99_ms": None if base_us is None else base_us / 1000,
        "limit_ms": limit_ms,
        "backends": per,
        "met": None if not met or None in met else all(met),
    }


def vs_ref(
    rows: list[dict[str, Any]], servers: list[str], workload_names: list[str], metrics: bool = False
) -> dict[str, Any]:
    """For every `backend@REF` row: each workload's main metric now ÷ at REF (same run). With
    `metrics`, for every `backend+metrics` row: metrics on ÷ off instead (same run)."""
    out: dict[str, Any] = {}
    modes = {r["workload"]: r["mode"] for r in rows}
    for server in servers:
        base, ref = split_server(server)
        wanted = metrics_on(server) if metrics else ref is not None
        if not wanted or base not in servers:
            continue
        cells: dict[str, Any] = {}
        for wl in workload_names:
            key = main_key(modes.get(wl, ""))
            plain, other = metric(rows, base, wl, key), metric(rows, server, wl, key)
            now, then = (other, plain) if metrics else (plain, other)
            cells[wl] = {"metric": key, "now": now, "ref": then,
                         "ratio": now / then if now is not None and then else None}  # fmt: skip
        out[server] = cells
    return out


def analyse(
    rows: list[dict[str, Any]], servers: list[str], sweep: list[int], e1_conns: int, workload_names: list[str]
) -> dict[str, Any]:
    fw_all = [s for s in servers if is_framework(s)]
    fw = [s for s in fw_all if s in FRAMEWORK_BACKENDS]  # the targets judge today's code only
    ratios: dict[str, dict[str, float | None]] = {}
    key_of = {"E1": "server_us_per_frame", "E2": "server_us_per_frame", "B1": "server_us_per_frame",
              "M1": "rss_growth_kb_per_conn", "F1": "server_us_per_frame"}  # fmt: skip
    for server in [*fw_all, "asyncio"]:
        ratios[server] = {}
        for wl, key in key_of.items():
            mine, base = metric(rows, server, wl, key), metric(rows, "uvloop", wl, key)
            ratios[server][wl] = mine / base if mine is not None and base else None

    def sweep_name(conns: int) -> str:
        return "E1" if conns == e1_conns else f"S{conns}"

    curves = {s: [metric(rows, s, sweep_name(n), "server_us_per_frame") for n in sweep] for s in servers}
    scaling = {
        s: (pts[-1] / pts[0] if pts and pts[0] and pts[-1] is not None else None) for s, pts in curves.items()
    }
    verdict: dict[str, Any] = {}
    for wl, target in TARGETS.items():
        candidates = [(ratios[s][wl], s) for s in fw if ratios[s].get(wl) is not None]
        if not candidates:
            verdict[wl] = {"target": target, "ratio": None, "backend": None, "met": None}
            continue
        ratio, best = min(candidates)
        met = ratio <= target
        entry = {"target": target, "ratio": round(ratio, 3), "backend": best, "met": met}
        if wl == "B1":
            p99, base_p99 = metric(rows, best, wl, "lat_p99_us"), metric(rows, "uvloop", wl, "lat_p99_us")
            entry["p99_us"], entry["uvloop_p99_us"] = p99, base_p99
            entry["met"] = met and p99 is not None and base_p99 is not None and p99 <= base_p99
        verdict[wl] = entry
    fw_scaling = [(scaling[s], s) for s in fw if scaling.get(s) is not None]
    if fw_scaling:
        best_scaling, best_backend = min(fw_scaling)
        verdict["scaling"] = {
            "target": SCALING_TARGET, "ratio": round(best_scaling, 3), "backend": best_backend,
            "met": best_scaling <= SCALING_TARGET,
        }  # fmt: skip
    else:
        verdict["scaling"] = {"target": SCALING_TARGET, "ratio": None, "backend": None, "met": None}
    verdict["F1"] = f1_verdict(rows, fw)
    return {"ratios_to_uvloop": ratios, "sweep_conns": sweep, "sweep_us_per_frame": curves,
            "scaling_last_over_first": scaling, "targets": verdict,
            "vs_ref": vs_ref(rows, servers, workload_names),
            "metrics_on_vs_off": vs_ref(rows, servers, workload_names, metrics=True)}  # fmt: skip


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}"
        f", uvloop {m.get('uvloop', '–')}, gcc {m.get('gcc', '–')}",
        f"- Pinning: {report['pinning']}; load average at start {report['loadavg_start']},"
        f" at end {report['loadavg_end']}",
        f"- Date: {m['date_utc']}; mode: {'quick' if report['quick'] else 'full'};"
        f" wall time {report['wall_s']:.0f} s",
        "- Shared machine: absolute times drift between runs; the ratios to uvloop (same run) are what count.",
        *(
            [f"- {report['rounds']} rounds: each cell is its median round (all rounds' values in the JSON)"]
            if report.get("rounds", 1) > 1
            else []
        ),
        *(
            [f"- Workloads: {', '.join(w['name'] for w in report['workloads'])} (--only)"]
            if report.get("only")
            else []
        ),
        *(
            f"- Baseline `{ref}` = commit {t['commit'][:12]}: the `…@{ref}` rows run that commit's framework"
            " (exported with git archive, io_uring extension built in place)"
            for ref, t in report.get("baseline_refs", {}).items()
        ),
        "",
    ]
    skipped = {k: v for k, v in report["servers"].items() if v}
    for name, why in skipped.items():
        lines.append(f"- Skipped **{name}**: {why}")
    if skipped:
        lines.append("")
    if any(r["mode"] not in ("idle", "fair") for r in report["results"]):
        lines += [
            "| workload | server | conns | frames/s | server µs/frame | ÷ uvloop | p50 µs | p99 µs"
            " | server CPU | client CPU | RSS MB | connect s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    ratios = report["analysis"]["ratios_to_uvloop"]
    for r in report["results"]:
        if r["mode"] in ("idle", "fair"):
            continue
        if not r.get("ok"):
            lines.append(
                f"| {r['workload']} | {r['server']} | {r['conns']} | failed: {r.get('error', '?')[:80]} |"
            )
            continue
        mine, base = (
            r["server_us_per_frame"],
            metric(report["results"], "uvloop", r["workload"], "server_us_per_frame"),
        )
        ratio = mine / base if mine is not None and base else None
        lines.append(
            f"| {r['workload']} | {r['server']} | {r['connected']} | {_fmt(r['frames_per_s'], ',.0f')}"
            f" | {_fmt(r['server_us_per_frame'], '.2f')} | {_fmt(ratio, '.2f')}"
            f" | {_fmt(r['lat_p50_us'])} | {_fmt(r['lat_p99_us'])}"
            f" | {_fmt(r['server_cpu_util'] and 100 * r['server_cpu_util'], '.0f')}%"
            f" | {_fmt(100 * r['client_cpu_util'], '.0f')}% | {_fmt(r['rss_kb'] / 1024, '.1f')}"
            f" | {_fmt(r['client']['connect_s'], '.1f')} |"
        )
    ran = {w["name"] for w in report["workloads"]}
    if "M1" in ran:
        lines += [
            "",
            "| M1 idle memory | conns | RSS growth KB/conn | ÷ uvloop | RSS MB |",
            "|---|---:|---:|---:|---:|",
        ]
    for r in report["results"]:
        if r["mode"] != "idle":
            continue
        if not r.get("ok"):
            lines.append(f"| {r['server']} | {r['conns']} | failed: {r.get('error', '?')[:80]} | | |")
            continue
        ratio = 1.0 if r["server"] == "uvloop" else ratios.get(r["server"], {}).get("M1")
        lines.append(
            f"| {r['server']} | {r['connected']} | {_fmt(r.get('rss_growth_kb_per_conn'), '.2f')}"
            f" | {_fmt(ratio, '.2f')} | {_fmt(r['rss_kb'] / 1024, '.1f')} |"
        )
    fair = [r for r in report["results"] if r["mode"] == "fair"]
    if fair:
        lines += [
            "",
            "| F1 fairness | conns | bystander p50 ms | p99 ms | max ms | bystander round trips"
            " | flooders' frames/s | server µs/frame | ÷ uvloop | server CPU | flooders reset |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in fair:
        if not r.get("ok"):
            lines.append(f"| {r['server']} | {r['conns']} | failed: {r.get('error', '?')[:80]} |")
            continue
        ratio = 1.0 if r["server"] == "uvloop" else ratios.get(r["server"], {}).get("F1")

        def ms(v: float | None) -> str:
            return _fmt(None if v is None else v / 1000, ".2f")

        lines.append(
            f"| {r['server']} | {r['connected']} | {ms(r['bystander_p50_us'])} | {ms(r['bystander_p99_us'])}"
            f" | {ms(r['bystander_max_us'])} | {r['bystander_frames']:,} | {_fmt(r['flood_frames_per_s'], ',.0f')}"
            f" | {_fmt(r['server_us_per_frame'], '.2f')} | {_fmt(ratio, '.2f')}"
            f" | {_fmt(r['server_cpu_util'] and 100 * r['server_cpu_util'], '.0f')}% | {r['flooders_closed']} |"
        )
    a = report["analysis"]
    lines += [
        "",
        "| target (best framework backend ÷ uvloop) | limit | measured | backend | met |",
        "|---|---:|---:|---|---|",
    ]
    yes_no = {True: "yes", False: "**no**", None: "–"}
    swept = any(p is not None for pts in a["sweep_us_per_frame"].values() for p in pts)
    for name, t in a["targets"].items():
        if not (name in ran or (name == "scaling" and swept)):
            continue  # not run (--only)
        if name == "F1":
            limit = f"≤ {t['limit_ms']:.2f} ms"
            why = "≤ uvloop's p99 and" if t["uvloop_p99_ms"] is not None else "uvloop not measured;"
            for backend, v in t["backends"].items():
                lines.append(
                    f"| F1 bystander p99 ({why} ≤ {t['target_ms']:.0f} ms) | {limit}"
                    f" | {_fmt(v['p99_ms'], '.2f')} ms | {backend} | {yes_no[v['met']]} |"
                )
            continue
        label = "µs/frame at max ÷ at min sweep conns" if name == "scaling" else f"{name}"
        if name == "B1":
            label += " (and p99 no worse)"
        met = yes_no[t["met"]]
        lines.append(
            f"| {label} | ≤ {t['target']} | {_fmt(t['ratio'], '.2f')} | {t['backend'] or '–'} | {met} |"
        )
    conns = a["sweep_conns"]
    if swept:
        lines += ["", "µs/frame by connection count (E1-style sweep):", ""]
        lines.append("| server | " + " | ".join(f"{n:,}" for n in conns) + " | max ÷ min conns |")
        lines.append("|---|" + "---:|" * (len(conns) + 1))
    for server, pts in a["sweep_us_per_frame"].items() if swept else ():
        cells = " | ".join(_fmt(p, ".2f") for p in pts)
        lines.append(f"| {server} | {cells} | {_fmt(a['scaling_last_over_first'].get(server), '.2f')} |")
    if a.get("vs_ref"):
        refs = list(a["vs_ref"])
        lines += [
            "",
            "Now ÷ baseline ref, same run (µs/frame; M1: KB/conn; F1: bystander p99; < 1 is better now):",
            "",
            "| workload | " + " | ".join(f"{split_server(s)[0]} ÷ {s}" for s in refs) + " |",
            "|---|" + "---:|" * len(refs),
        ]
        for w in report["workloads"]:
            cells = " | ".join(_fmt(a["vs_ref"][s].get(w["name"], {}).get("ratio"), ".2f") for s in refs)
            lines.append(f"| {w['name']} | {cells} |")
    if a.get("metrics_on_vs_off"):
        on = list(a["metrics_on_vs_off"])
        lines += [
            "",
            "Metrics on (/metrics scraped every second) ÷ off, same run (µs/frame; M1: KB/conn;"
            " F1: bystander p99; goal ≤ 1.03 on E1 and B1):",
            "",
            "| workload | " + " | ".join(f"{s} ÷ {split_server(s)[0]}" for s in on) + " |",
            "|---|" + "---:|" * len(on),
        ]
        for w in report["workloads"]:
            cells = " | ".join(
                _fmt(a["metrics_on_vs_off"][s].get(w["name"], {}).get("ratio"), ".2f") for s in on
            )
            lines.append(f"| {w['name']} | {cells} |")
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> str | None:
    """PNG of µs/frame against connections; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib unavailable: {exc}"
    a = report["analysis"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    plotted = False
    for server, pts in a["sweep_us_per_frame"].items():
        xs = [n for n, p in zip(a["sweep_conns"], pts, strict=True) if p is not None]
        ys = [p for p in pts if p is not None]
        if xs:
            ax.plot(xs, ys, marker="o", label=server)
            plotted = True
    ax.set_xscale("log")
    ax.set_xlabel("connections (1 frame in flight each, 64 B)")
    ax.set_ylabel("server CPU µs per delivered frame")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Echo cost vs connections — {report['machine']['cpu_model']}")
    ax.grid(True, which="both", alpha=0.3)
    if plotted:  # no sweep workload ran (--only): an empty plot, no legend
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def pick_median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one cell's rounds, the measurement with the median main metric (so every column of the
    reported row comes from one real run); every round's value is kept in `rounds`."""
    key = main_key(rows[0]["mode"])
    ok = sorted((r for r in rows if r.get("ok") and r.get(key) is not None), key=lambda r: r[key])
    chosen = dict(ok[(len(ok) - 1) // 2] if ok else rows[0])
    chosen["rounds"] = [r.get(key) if r.get("ok") else None for r in rows]
    return chosen


def progress_line(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"failed: {row['error']}"
    if row["mode"] == "idle":
        return f"RSS growth {_fmt(row.get('rss_growth_kb_per_conn'), '.2f')} KB/conn"
    if row["mode"] == "fair":
        p50, p99 = row["bystander_p50_us"], row["bystander_p99_us"]
        return (
            f"bystander p50 {_fmt(p50 and p50 / 1000, '.2f')} ms, p99 {_fmt(p99 and p99 / 1000, '.2f')} ms;"
            f" flooders {_fmt(row['flood_frames_per_s'], ',.0f')} frames/s,"
            f" {_fmt(row['server_us_per_frame'], '.2f')} µs/frame, {row['flooders_closed']} flooders reset"
        )
    return (
        f"{_fmt(row['frames_per_s'], ',.0f')} frames/s, {_fmt(row['server_us_per_frame'], '.2f')} µs/frame,"
        f" p99 {_fmt(row['lat_p99_us'])} µs, client CPU {100 * row['client_cpu_util']:.0f}%"
    )


def run_benchmark(
    quick: bool,
    out_dir: Path,
    servers: list[str],
    rounds: int = 1,
    only: list[str] | None = None,
    f1_inflight: int | None = None,
    port: int = 0,
) -> dict[str, Any]:
    """Measure `servers` (names as in --servers, `backend@REF` included) on the workloads (all, or
    those named in `only`) and write DIR/latest.{json,md,png}."""
    started = time.monotonic()
    loadgen = build_loadgen()
    server_pin, client_pin, pin_note = pinning()
    all_wls, sweep = workloads(quick, f1_inflight)
    e1_conns = next(w.conns for w in all_wls if w.name == "E1")
    wls = [w for w in all_wls if only is None or w.name in only]
    refs = list(dict.fromkeys(ref for s in servers if (ref := split_server(s)[1]) is not None))
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        trees: dict[str, RefTree] = {}
        for ref in refs:
            print(f"[bench] exporting {ref} and building its io_uring extension ...", file=sys.stderr)
            wants_uring = any(split_server(s) == ("io_uring", ref) for s in servers)
            trees[ref] = export_ref(ref, Path(tmp), build_uring=wants_uring)
        availability = server_availability(servers, trees)
        runnable = [s for s in servers if availability[s] is None]
        report: dict[str, Any] = {
            "machine": machine_facts(),
            "pinning": pin_note,
            "quick": quick,
            "loadavg_start": loadavg(),
            "servers": availability,
            "workloads": [asdict(w) for w in wls],
            "only": only,
            "rounds": rounds,
            "baseline_refs": {
                ref: {"commit": t.commit, "uring_problem": t.uring_problem} for ref, t in trees.items()
            },
        }
        measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        for i, wl in enumerate(wl for _ in range(rounds) for wl in wls):
            # alternate the order so no server always runs first (or last) after a change of workload
            order = runnable if i % 2 == 0 else runnable[::-1]
            for server in order:
                print(
                    f"[bench] {wl.name} ({wl.description}, {wl.conns} conns) on {server}"
                    f" (round {i // len(wls) + 1}/{rounds}) ...",
                    file=sys.stderr,
                )
                tree = trees.get(split_server(server)[1] or "")
                row = measure(server, wl, loadgen, server_pin, client_pin, log_dir, tree, port)
                print(f"[bench]   {progress_line(row)}", file=sys.stderr)
                measured.setdefault((wl.name, server), []).append(row)
    rows = [pick_median(cell) for cell in measured.values()]
    rows.sort(key=lambda r: ([w.name for w in wls].index(r["workload"]), servers.index(r["server"])))
    report["results"] = rows
    report["loadavg_end"] = loadavg()
    report["analysis"] = analyse(rows, runnable, sweep, e1_conns, [w.name for w in wls])
    report["wall_s"] = time.monotonic() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_problem = plot(report, out_dir / "latest.png")
    report["plot"] = plot_problem or "latest.png"
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "latest.md").write_text(render_markdown(report))
    return report


def server_list(arg: str | None, refs: list[str]) -> list[str]:
    """--servers (exact list, `backend@REF` allowed) or the default: every server, and each
    framework backend at every --baseline-ref next to today's. Raises ValueError on a bad list."""
    if arg is None:
        out: list[str] = []
        for base in SERVERS:
            out.append(base)
            if base in FRAMEWORK_BACKENDS:
                out += [f"{base}@{ref}" for ref in refs]
        return out
    names = list(dict.fromkeys(s.strip() for s in arg.split(",") if s.strip()))
    if not names:
        raise ValueError("--servers names no server")
    for name in names:
        base, ref = split_server(name)
        if metrics_on(name) and (base not in FRAMEWORK_BACKENDS or ref is not None):
            raise ValueError(
                f"--servers {name!r}: {METRICS} goes with today's framework backends only ({', '.join(FRAMEWORK_BACKENDS)})"
            )
        if ref is not None and base not in FRAMEWORK_BACKENDS:
            raise ValueError(
                f"--servers {name!r}: only the framework's backends ({', '.join(FRAMEWORK_BACKENDS)}) run at a git ref"
            )
    used = {split_server(n)[1] for n in names}
    for ref in refs:
        if ref not in used:
            raise ValueError(
                f"--baseline-ref {ref}: --servers names none of its rows (e.g. io_uring@{ref}, epoll@{ref})"
            )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings (a few connections, ~1 s windows)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--servers",
        default=None,
        help=f"comma-separated servers to run, of {','.join(SERVERS)} and BACKEND@REF for a framework"
        " backend at a git ref (default: all four, plus io_uring@REF and epoll@REF for each --baseline-ref)",
    )
    parser.add_argument(
        "--baseline-ref",
        action="append",
        default=[],
        metavar="GIT_REF",
        help="also measure the framework at this commit (rows io_uring@REF, epoll@REF) in the same run;"
        " repeatable",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="WORKLOADS",
        help="comma-separated workloads to run (E1,E2,B1,M1,F1 and the sweep's S<conns>); default all",
    )
    parser.add_argument(
        "--f1-inflight",
        type=int,
        default=None,
        metavar="K",
        help=f"frames each F1 flooder keeps in flight (default {F1_INFLIGHT}; --quick {F1_INFLIGHT_QUICK});"
        " 0: no window, the flooders write whenever their socket takes more",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="the loopback port every server under test listens on, one after another (default 0: a free"
        " port each time)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure everything this many times and report each cell's median round (a shared "
        "machine's noise is large: 3 rounds make the ratios far steadier)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.f1_inflight is not None and args.f1_inflight < 0:
        parser.error("--f1-inflight must be 0 (no window) or more")
    refs = list(dict.fromkeys(r.strip() for r in args.baseline_ref if r.strip()))
    try:
        servers = server_list(args.servers, refs)
    except ValueError as exc:
        parser.error(str(exc))
    only: list[str] | None = None
    if args.only is not None:
        known = [w.name for w in workloads(args.quick)[0]]
        only = list(dict.fromkeys(w.strip() for w in args.only.split(",") if w.strip()))
        unknown = [w for w in only if w not in known]
        if unknown or not only:
            parser.error(
                f"--only {args.only!r}: unknown workload(s) {unknown}; known here: {','.join(known)}"
            )
    try:
        report = run_benchmark(args.quick, args.out, servers, args.rounds, only, args.f1_inflight, args.port)
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    print(f"written: {args.out / 'latest.json'}, {args.out / 'latest.md'}, {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
