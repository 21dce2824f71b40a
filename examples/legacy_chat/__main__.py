"""`python -m examples.legacy_chat [server|client|mixed] --backend NAME --port N [--name NAME]`.

server: `--workers N` runs RAON's main: N worker threads, each looping on `core.handle_iocp(-1)`
(the core serializes them; completions go to whichever worker waits). `--max-members N`: a login
beyond N is told "server full" and kicked.

mixed: the legacy chat server and its Session-API port in one process, one loop (the Server's, on
the legacy_iocp provider wrapping the legacy IocpCore), sharing one room; see docs/MIGRATING.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from examples.legacy_chat.client import ChatClient
from examples.legacy_chat.server import ChatServer
from framework.legacy import IocpCore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.legacy_chat", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=("server", "client", "mixed"), default="server")
    parser.add_argument("--backend", default="auto", help="epoll, io_uring, ... or auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7100)
    parser.add_argument("--name", default="guest", help="client: the chat name")
    parser.add_argument("--session-port", type=int, default=7101, help="mixed: the Session-API port")
    parser.add_argument("--config", default=None, help="mixed: a deployment YAML for the Session server")
    parser.add_argument("--workers", type=int, default=1, help="server: threads calling handle_iocp")
    parser.add_argument("--max-members", type=int, default=0, help="server: room capacity (0: no limit)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.mode == "mixed":
        return run_mixed(args)

    core = IocpCore(backend=args.backend, fallback=False)
    if not core.initialize():
        print(f"cannot start: {core.last_error}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(*_: Any) -> None:
        stopping.set()
        core.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        if args.mode == "server":
            server = ChatServer(core, args.host, args.port, max_members=args.max_members)
            host, port = server.address[:2]
            print(f"legacy chat listening on {host}:{port} (backend {core.provider.name})", flush=True)
            if args.workers > 1:
                run_workers(core, args.workers, stopping)
                return 0
        else:
            run_client(core, args)
        core.run()
    finally:
        core.shutdown()
    return 0


def run_workers(core: IocpCore, n: int, stopping: threading.Event) -> None:
    """RAON's main: services registered first, then N workers on the completion port; on a
    signal the flag is set and `core.stop()` makes every worker's handle_iocp(-1) return."""

    def worker() -> None:
        while not stopping.is_set():
            core.handle_iocp(-1)

    threads = [threading.Thread(target=worker, name=f"iocp-worker-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    stopping.wait()  # the signal handler runs here, in the main thread
    for thread in threads:
        thread.join()


def run_mixed(args: argparse.Namespace) -> int:
    from examples.legacy_chat.ported import SessionChat, mount
    from framework.config import load_settings
    from framework.legacy import IocpLegacyProvider
    from framework.session.server import Server

    core = IocpCore(backend=args.backend, fallback=False)  # the legacy process's core, as before
    if not core.initialize():
        print(f"cannot start: {core.last_error}", file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(
                update={"hosts": [args.host], "port": args.session_port, "workers": 1}
            ),
            "io": settings.io.model_copy(update={"backend": "legacy_iocp"}),
        }
    )
    server = Server(settings, SessionChat, provider=IocpLegacyProvider(core=core))
    try:
        chat = ChatServer(core, args.host, args.port)
        mount(chat.room, server)
        (session_address, *_) = server.start()
        print(
            f"legacy chat listening on {args.host}:{chat.address[1]}, Session chat on "
            f"{session_address[0]}:{session_address[1]} (backend legacy_iocp over {core.provider.name})",
            flush=True,
        )
        return server.run()  # the Server's loop drives the legacy core too
    finally:
        core.shutdown()


def run_client(core: IocpCore, args: argparse.Namespace) -> None:
    def show(kind: str, value: Any) -> None:
        text = f"<{value[0]}> {value[1]}" if kind == "chat" else f"* {value}"
        print(text, flush=True)

    client = ChatClient(core, (args.host, args.port), args.name, on_event=show)

    def read_stdin() -> None:
        # A second thread only ever talks to the loop through push_iocp_job.
        for line in sys.stdin:
            if line.strip():
                client.say_threadsafe(line.rstrip("\n"))
        core.stop()

    threading.Thread(target=read_stdin, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
