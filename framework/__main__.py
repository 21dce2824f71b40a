"""Command line: `python -m framework serve|check-config|backends|top`.

- `serve --app module:SessionClass [--config FILE]` serves any `Session` subclass (the embedded
  default config when no file is given) until SIGINT/SIGTERM; exit status 0 after a clean drain.
- `check-config FILE [--app module:SessionClass]` validates a deployment file (and, with --app, the
  application's `app:` section); exit status 1 and the reason when invalid.
- `backends` lists every I/O backend: available here, or why not, and which one "auto" picks.
- `top --url http://host:port/metrics [--url ...]` is a live terminal view of running servers
  (their `metrics.listen` endpoints; docs/METRICS.md).

Application hooks (optional classmethods on the session class), so an app fails before it listens
rather than at its first connection: `check_settings(settings)` raises `ValueError` with a readable
message when `settings.app` does not fit; `setup_server(server)` runs once after the server is built
and before it accepts connections (single-process servers; worker processes of `workers: N` do not
call it, so state it creates must also be creatable lazily).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def load_app(spec: str) -> type:
    """Import `module:Class` and check it is a Session subclass; raises ValueError saying what is wrong."""
    from framework.session.session import Session

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like module:SessionClass, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    cls: Any = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Session)):
        raise ValueError(f"{spec} is not a subclass of framework.Session")
    return cls


def _load(config: str | None, session_class: type | None) -> Any:
    """Settings for `config`, checked by the app's hook; raises ConfigError / ValueError."""
    from framework.config import load_settings

    settings = load_settings(config)
    check = getattr(session_class, "check_settings", None)
    if check is not None:
        check(settings)
    return settings


def serve(session_class: type, config: str | Path | None = None) -> int:
    """Load settings, set up logging, build the server and run it until a signal; its exit status."""
    from framework.config import ConfigError
    from framework.logging import configure_logging
    from framework.session.server import Server

    try:
        settings = _load(str(config) if config is not None else None, session_class)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.logging)
    server = Server(settings, session_class)
    setup = getattr(session_class, "setup_server", None)
    # With workers > 1 this server only supervises; each worker builds its own Server (without this
    # hook), so per-server state is made lazily there, on first use.
    if setup is not None and settings.server.workers == 1:
        setup(server)
    return server.run()


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        cls = load_app(args.app)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(cls, args.config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from framework.config import ConfigError

    cls = None
    if args.app:
        try:
            cls = load_app(args.app)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        settings = _load(args.file, cls)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    hosts = ", ".join(settings.server.hosts)
    print(
        f"OK: {args.file}: backend {settings.io.backend}, listening on {hosts} port {settings.server.port}, "
        f"{settings.server.workers} worker(s), logging {settings.logging.format}/{settings.logging.level}"
    )
    return EXIT_OK


def _cmd_backends(args: argparse.Namespace) -> int:
    from framework.io import factory
    from framework.io.errors import BackendUnavailable

    chain = factory.fallback_chain()
    rows = []
    for name in factory.backend_names():
        try:
            factory.check_available(name)
        except BackendUnavailable as exc:
            rows.append((name, False, exc.reason))
            continue
        except Exception as exc:  # a broken backend module must not hide the others
            rows.append((name, False, f"{type(exc).__name__}: {exc}"))
            continue
        rows.append((name, True, ""))
    # "auto" tries the chain in order, so the first available one in chain order wins.
    available = {name for name, ok, _ in rows if ok}
    auto = next((name for name in chain if name in available), None)
    width = max(len(name) for name, _, _ in rows)
    print(f"platform {sys.platform}; auto tries: {' -> '.join(chain) or '(none)'}")
    for name, ok, reason in rows:
        mark = "  <- auto" if name == auto else ""
        state = "available" if ok else f"unavailable: {reason}"
        print(f"  {name:<{width}}  {state}{mark}")
    return EXIT_OK if auto is not None else EXIT_INVALID


def main(argv: Sequence[str] | None = None) -> int:
    """The `raon` console script and `python -m framework`: parse `argv` and run the verb."""
    parser = argparse.ArgumentParser(prog="python -m framework", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve a Session subclass")
    p_serve.add_argument(
        "--app", required=True, help="module:SessionClass, e.g. examples.gameserver.app:GameSession"
    )
    p_serve.add_argument("--config", default=None, help="deployment YAML (default: the embedded default)")
    p_serve.set_defaults(func=_cmd_serve)
    p_check = sub.add_parser("check-config", help="validate a deployment file")
    p_check.add_argument("file", help="deployment YAML")
    p_check.add_argument("--app", default=None, help="also validate the app: section for module:SessionClass")
    p_check.set_defaults(func=_cmd_check_config)
    p_back = sub.add_parser("backends", help="list I/O backends and why any is unavailable")
    p_back.set_defaults(func=_cmd_backends)
    p_top = sub.add_parser("top", help="live view of servers' /metrics", add_help=False)
    p_top.set_defaults(func=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:  # its own parser (framework.metrics.top) takes the rest
        from framework.metrics.top import main as top_main

        return top_main(argv[1:])
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
