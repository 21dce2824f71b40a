"""`python -m examples.echo --backend NAME --port PORT [--host 127.0.0.1] [--broadcast-hz HZ --payload N]`

Prints "ready <port>" on stdout once listening (the benchmark harness waits for it). The named backend
is used without fallback, so a benchmark never measures another backend under this one's name.
`FRAMEWORK_*` environment overrides apply as for any deployment: `FRAMEWORK_METRICS__LISTEN=127.0.0.1:9300`
serves /metrics while benchmarking (the cost of metrics on; docs/METRICS.md).
"""

from __future__ import annotations

import argparse
import sys

from examples.echo import BroadcastSession, EchoSession, start_broadcast
from framework.config import ConfigError, load_settings
from framework.io.errors import BackendUnavailable
from framework.logging import configure_logging
from framework.session.server import Server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.echo", description="Echo / broadcast server.")
    parser.add_argument("--backend", default="auto", help="io backend name (io_uring, epoll, ...) or auto")
    parser.add_argument(
        "--port", type=int, required=True, help="0 picks a free port (printed on the ready line)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", default=None, help="deployment YAML (default: the default config)")
    parser.add_argument("--broadcast-hz", type=float, default=0.0, help="broadcast ticks per second (0: off)")
    parser.add_argument("--payload", type=int, default=512, help="broadcast payload bytes (>= 8)")
    parser.add_argument("--max-connections", type=int, default=16384)
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    s = settings
    settings = s.model_copy(
        update={
            # Every benchmark connection comes from one address, and broadcast and idle clients
            # never send: no per-address limit, no first-message deadline.
            "server": s.server.model_copy(
                update={"hosts": [args.host], "port": args.port, "workers": 1, "max_connections_per_address": 0}
            ),
            "io": s.io.model_copy(
                update={
                    "backend": args.backend,
                    "fallback": args.backend == "auto",
                    "max_connections": max(args.max_connections, s.io.max_connections),
                }
            ),
            "buffers": s.buffers.model_copy(
                update={"max_buffers": max(args.max_connections, s.buffers.max_buffers)}
            ),
            # a benchmark holds idle connections for a while: no idle timeout; it measures the
            # framework's throughput, so no rate limits either (tests/reliability/test_ratelimit.py)
            "session": s.session.model_copy(
                update={
                    "codec": "raw",
                    "idle_timeout_s": 0.0,
                    "first_message_timeout_s": 0.0,
                    "rate_limit": s.session.rate_limit.model_copy(update={"messages_per_s": 0.0, "bytes_per_s": 0}),
                }
            ),
            "logging": s.logging.model_copy(update={"level": "WARNING"}),
        }
    )
    configure_logging(settings)
    session_class = BroadcastSession if args.broadcast_hz > 0 else EchoSession
    server = Server(settings, session_class)
    try:
        addresses = server.start()
    except BackendUnavailable as exc:
        print(f"backend {args.backend} unavailable: {exc.reason}", file=sys.stderr)
        return 3
    if args.broadcast_hz > 0:
        start_broadcast(server, args.broadcast_hz, args.payload)
    print(f"ready {addresses[0][1]}", flush=True)
    return server.run()  # until SIGTERM/SIGINT, then a graceful shutdown


if __name__ == "__main__":
    sys.exit(main())
