"""Provider-level echo micro-benchmark: the io hot path without the session layer.

    python -m benchmarks.micro_provider [--backends io_uring,epoll] [--conns 20] [--inflight 1]
                                        [--duration 2] [--repeat 1] [--profile DIR]
    python -m benchmarks.micro_provider --session [--backends io_uring,epoll,uvloop] ...

Default mode: a server written directly on the provider contract (accept_async, recv_async_registered
into one registered buffer per connection, send_async of the received bytes, recv re-posted at once),
driven by the C load client of the main harness (`benchmarks/loadgen.c`, same pinning). Echoing the
received bytes unchanged keeps the client's frames intact, so the client needs no special mode. The
number is the server's CPU µs per echoed frame, split into user and system time (system time is
mostly the kernel's own TCP work); `--profile DIR` runs the server under cProfile and
writes DIR/<backend>.prof (profiling inflates absolute times; read it for where time goes).

`--session`: the same client against the real servers of the main harness (`examples.echo` and the
uvloop baseline), repeated and interleaved, printing µs/frame and the ratio to uvloop per round: a
quicker, longer-windowed A/B than `benchmarks.run --quick` while tuning the providers.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import ServerProcess, Workload, build_loadgen, measure, pinning


# ---------------------------------------------------------------------------- the provider server
def serve(backend: str, host: str, bufsize: int, profile: str | None) -> int:
    import logging

    import structlog

    from framework.io.factory import create_provider

    # stdout carries only the "ready <port>" line the driver waits for
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )

    provider = create_provider(backend, fallback=False)
    if not provider.initialize(20000, 1024):
        print(f"initialize failed: {getattr(provider, 'last_error', '')}", file=sys.stderr)
        return 2
    listener = socket.create_server((host, 0), backlog=1024)
    provider.register_socket(listener)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True
        provider.post(None)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    conns: dict[int, tuple[socket.socket, bytearray, int]] = {}  # op context -> conn state
    ids = iter(range(1, 1 << 62))
    send_async = provider.send_async
    recv_registered = provider.recv_async_registered

    def on_send(result: Any, key: int) -> None:
        if not result.ok:
            close(key)

    def post_recv(key: int) -> None:
        sock, _buf, bid = conns[key]
        if not recv_registered(sock, bid, 0, bufsize, on_recv, key):
            close(key)

    def on_recv(result: Any, key: int) -> None:
        n = result.bytes_transferred
        state = conns.get(key)
        if state is None:
            return
        if not result.ok or n == 0:
            close(key)
            return
        sock, buf, _bid = state
        send_async(sock, bytes(buf[:n]), on_send, key)  # a copy: the buffer is re-posted at once
        post_recv(key)

    def close(key: int) -> None:
        state = conns.pop(key, None)
        if state is not None:
            provider.unregister_socket(state[0])
            provider.unregister_buffer(state[2])
            state[0].close()

    def on_accept(result: Any, _ctx: Any) -> None:
        if result.ok:
            sock, _addr = result.accepted
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray(bufsize)
            key = next(ids)
            if provider.register_socket(sock):
                conns[key] = (sock, buf, provider.register_buffer(buf))
                post_recv(key)
            else:
                sock.close()
        if not stop:
            provider.accept_async(listener, on_accept)

    provider.accept_async(listener, on_accept)
    print(f"ready {listener.getsockname()[1]}", flush=True)
    results: list[Any] = []
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    while not stop:
        provider.process_completions(-1, 1024, results)
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    for key in list(conns):
        close(key)
    provider.shutdown()
    listener.close()
    return 0


# ---------------------------------------------------------------------------- drivers
def _run_loadgen(port: int, pid: int, conns: int, inflight: int, warmup: float, duration: float) -> dict:
    _server_pin, client_pin, _note = pinning()
    cmd = [
        *client_pin, str(build_loadgen()), "--port", str(port), "--mode", "echo", "--conns", str(conns),
        "--inflight", str(inflight), "--payload", "64", "--warmup", str(warmup),
        "--duration", str(duration), "--server-pid", str(pid),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + warmup + duration)
    if not proc.stdout.strip():
        raise RuntimeError(f"load client failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout)


def _split(c: dict) -> str:
    """User and system µs per frame: system time is mostly the kernel's own TCP work."""
    frames = c.get("frames") or 0
    if not frames or "server_cpu_user_s" not in c:
        return ""
    return f" (user {c['server_cpu_user_s'] * 1e6 / frames:.2f} + sys {c['server_cpu_sys_s'] * 1e6 / frames:.2f})"


def provider_round(backend: str, args: argparse.Namespace, log_dir: Path) -> float | None:
    server_pin, _client_pin, _note = pinning()
    cmd = [*server_pin, sys.executable, "-m", "benchmarks.micro_provider", "--serve", backend]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        cmd += ["--profile-out", str(Path(args.profile) / f"{backend}.prof")]
    srv = ServerProcess(cmd, log_dir / f"micro-{backend}.log")
    try:
        srv.start()
        c = _run_loadgen(srv.port, srv.pid, args.conns, args.inflight, args.warmup, args.duration)
        print(f"  {backend}: {c.get('server_us_per_frame', 0):.2f} µs/frame{_split(c)}", flush=True)
        return c.get("server_us_per_frame") if c.get("ok") and c.get("frames") else None
    finally:
        srv.stop()


def session_round(server: str, args: argparse.Namespace, log_dir: Path) -> float | None:
    server_pin, client_pin, _note = pinning()
    wl = Workload("AB", "echo", args.conns, args.inflight, 64, warmup_s=args.warmup, duration_s=args.duration)
    row = measure(server, wl, build_loadgen(), server_pin, client_pin, log_dir)
    if not row.get("ok"):
        print(f"  {server}: {row.get('error')}", file=sys.stderr)
        return None
    print(f"  {server}: {row['server_us_per_frame']:.2f} µs/frame{_split(row['client'])}", flush=True)
    return row.get("server_us_per_frame")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.micro_provider", description=__doc__.split("\n")[0]
    )
    p.add_argument("--serve", metavar="BACKEND", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    p.add_argument("--session", action="store_true", help="A/B the real servers instead (see the docstring)")
    p.add_argument("--backends", default=None, help="comma-separated (default io_uring,epoll[,uvloop])")
    p.add_argument("--conns", type=int, default=20)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--profile", metavar="DIR", help="cProfile the provider server into DIR/<backend>.prof")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, "127.0.0.1", 65536, args.profile_out)
    names = (args.backends or ("io_uring,epoll,uvloop" if args.session else "io_uring,epoll")).split(",")
    rounds: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            order = names if i % 2 == 0 else names[::-1]
            line = []
            for name in order:
                us = (session_round if args.session else provider_round)(name, args, Path(tmp))
                if us is not None:
                    rounds[name].append(us)
                line.append(f"{name} {us:.2f}" if us is not None else f"{name} failed")
            base = rounds.get("uvloop")
            ratios = (
                "  "
                + " ".join(
                    f"{n}/uvloop {rounds[n][-1] / base[-1]:.2f}" for n in names if n != "uvloop" and rounds[n]
                )
                if base
                else ""
            )
            print(f"round {i + 1}: " + ", ".join(line) + " µs/frame" + ratios, flush=True)
    summary = {n: round(statistics.median(v), 2) for n, v in rounds.items() if v}
    print("median µs/frame:", json.dumps(summary))
    if "uvloop" in summary:
        print(
            "median ratio to uvloop:",
            json.dumps({n: round(v / summary["uvloop"], 3) for n, v in summary.items()}),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
