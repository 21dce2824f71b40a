"""Targeted runs of single benchmark workloads (the full-size E1/E2/B1/M1 of benchmarks.run).

    python -m benchmarks.session_profile --workloads B1,M1 --servers epoll,uvloop [--repeat 2]

Uses the harness's own pieces (`benchmarks.run.workloads`, `measure`, the C load client and the
same CPU pinning), so a number here is measured exactly as in `make bench`; it only lets one
workload be rerun while working on it instead of the whole ~8-minute suite. Prints one line per
measurement with the ratio to uvloop from the same repetition.

`--hog` also runs a busy loop pinned to the server's CPU during every measurement: the server gets
about half a core, as on a shared machine. Under it B1 saturates the server, which shows how each
server degrades (the framework gathers several ticks' frames per send; uvloop skips ticks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import SERVER_CPU, build_loadgen, measure, pinning, workloads


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


@contextlib.contextmanager
def _cpu_hog(enabled: bool) -> Any:
    """A busy loop pinned to the server's CPU while the block runs (nothing when not enabled)."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.session_profile")
    parser.add_argument("--workloads", default="E1", help="comma list of E1,E2,B1,M1,S100,S10000")
    parser.add_argument("--servers", default="io_uring,epoll,uvloop")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--hog", action="store_true", help="share the server's CPU with a busy loop")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    all_wl, _ = workloads(quick=False)
    by_name = {w.name: w for w in all_wl}
    wanted = [by_name[n] for n in args.workloads.split(",") if n]
    servers = [s for s in args.servers.split(",") if s]
    loadgen = build_loadgen()
    server_pin, client_pin, _note = pinning()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="session-profile-") as tmp:
        for rep in range(args.repeat):
            for wl in wanted:
                got: dict[str, dict[str, Any]] = {}
                for server in servers:
                    t0 = time.monotonic()
                    with _cpu_hog(args.hog):
                        row = measure(server, wl, loadgen, server_pin, client_pin, Path(tmp))
                    row["wall_s"] = round(time.monotonic() - t0, 1)
                    row["rep"] = rep
                    got[server] = row
                    rows.append(row)
                base = got.get("uvloop", {})
                key = "rss_growth_kb_per_conn" if wl.mode == "idle" else "server_us_per_frame"
                for server, row in got.items():
                    if not row.get("ok"):
                        print(f"{wl.name:6} {server:9} FAILED: {row.get('error')}", flush=True)
                        continue
                    v, b = row.get(key), base.get(key)
                    ratio = v / b if v is not None and b else None
                    c = row.get("client", {})
                    print(
                        f"{wl.name:6} {server:9} {key}={_fmt(v, '.2f'):>8} ratio={_fmt(ratio, '.2f'):>5} "
                        f"fps={_fmt(row.get('frames_per_s'), ',.0f'):>9} p50={_fmt(row.get('lat_p50_us'), '.0f'):>7} "
                        f"p99={_fmt(row.get('lat_p99_us'), '.0f'):>7} max={_fmt(c.get('lat_max_us'), '.0f'):>7} cpu={_fmt(row.get('server_cpu_util'), '.2f')} "
                        f"conn={row.get('connected')} connect_s={_fmt(c.get('connect_s'), '.1f')} "
                        f"wall={row['wall_s']}",
                        flush=True,
                    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
