"""Command line: `python -m framework serve|check-config|backends|top`.

- `serve --app module:SessionClass [--config FILE]` serves any `Session` subclass (the packaged
  default config when no file is given) until SIGINT/SIGTERM; exit status 0 after a clean drain. A
  server that cannot start (invalid config, backend unavailable here, port in use) says why in one
  line on stderr, exit status 2.
- `check-config [FILE] [--app module:SessionClass] [--show]` validates a deployment file (and, with
  --app, the application's `app:` section) and checks that this machine can run it (its backend);
  exit status 1 and the reasons, with file:line:column, when not. `--show` prints the effective settings.
- `docs-config` prints docs/CONFIG.md (generated from the settings models).
- `backends` lists every I/O backend: available here, or why not, and which one "auto" picks.
- `top --url http://host:port/metrics [--url ...]` is a live terminal view of running servers
  (their `metrics.listen` endpoints; docs/METRICS.md).

Application hooks (optional classmethods on the session class), so an app fails before it listens
rather than at its first connection: `check_settings(settings)` raises `ConfigError` (from
`framework.config.validate_app(Model, settings)`, which names file:line) or `ValueError` with a
readable message when `settings.app` does not fit; `setup_server(server)` runs once after the server
is built and before it accepts connections (single-process servers; worker processes of `workers: N`
do not call it, so state it creates must also be creatable lazily).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
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
    # The `raon` script, unlike `python -m framework`, does not put the working directory on the
    # path: the user's module sits there (as with uvicorn or gunicorn).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
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


def _one_line(exc: BaseException) -> str:
    from framework.config import ConfigError

    text = exc.one_line() if isinstance(exc, ConfigError) else str(exc)
    return " ".join(text.split())


def serve(session_class: type, config: str | Path | None = None) -> int:
    """Load settings, set up logging, build the server and run it until a signal; its exit status.

    Whatever stops the server before it listens (invalid settings, a backend this machine cannot
    run, a port in use) is one line on stderr and exit status 2, not a traceback.
    """
    from framework.config import ConfigError, check_runnable
    from framework.io.errors import ProviderError
    from framework.logging import configure_logging
    from framework.session.server import Server

    try:
        settings = _load(str(config) if config is not None else None, session_class)
        check_runnable(settings)  # before logging is set up and a server is built: names file:line
    except (ConfigError, ValueError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.logging)
    server = Server(settings, session_class)
    setup = getattr(session_class, "setup_server", None)
    # With workers > 1 this server only supervises; each worker builds its own Server (without this
    # hook), so per-server state is made lazily there, on first use.
    if setup is not None and settings.server.workers == 1:
        setup(server)
    try:
        if settings.server.workers == 1:
            server.start()
        else:
            _check_can_listen(settings)  # workers bind for themselves, after the fork
    except (OSError, ProviderError) as exc:  # the process ends here: the kernel frees the rest
        hosts = ", ".join(settings.server.hosts)
        print(f"error: cannot listen on {hosts} port {settings.server.port}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return server.run()


def _check_can_listen(settings: Any) -> None:
    """Raise OSError when the port is taken on an IPv4 host, as each worker's listener would find it.

    Binds and closes one SO_REUSEPORT listener per host (what workers share); an IPv6 host that cannot
    bind is skipped by the server too, and port 0 is the supervisor's to choose.
    """
    from framework.io.sockets import open_listener

    cfg = settings.server
    if cfg.port == 0:
        return
    for host in cfg.hosts:
        try:
            open_listener(host, cfg.port, 1, reuse_port=True).close()
        except OSError:
            if ":" not in host:
                raise


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        cls = load_app(args.app)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(cls, args.config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    from framework.config import ConfigError, check_runnable

    cls = None
    if args.app:
        try:
            cls = load_app(args.app)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    name = args.file or "the default config"
    try:
        settings = _load(args.file, cls)
        backend = check_runnable(settings)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.show:
        sys.stdout.write(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
        return EXIT_OK
    hosts = ", ".join(settings.server.hosts)
    chosen = "" if backend == settings.io.backend else f" (runs {backend} here)"
    app = f", app: section valid for {args.app}" if args.app else ""
    print(
        f"OK: {name}: backend {settings.io.backend}{chosen}, listening on {hosts} port "
        f"{settings.server.port}, {settings.server.workers} worker(s), logging "
        f"{settings.logging.format}/{settings.logging.level}{app}"
    )
    return EXIT_OK


def _cmd_docs_config(args: argparse.Namespace) -> int:
    from framework.config import markdown

    sys.stdout.write(markdown())
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
    p_serve.add_argument("--config", default=None, help="deployment YAML (default: the default config)")
    p_serve.set_defaults(func=_cmd_serve)
    p_check = sub.add_parser(
        "check-config", help="validate a deployment file and check that this machine can run it"
    )
    p_check.add_argument("file", nargs="?", default=None, help="deployment YAML (default: the default config)")
    p_check.add_argument("--app", default=None, help="also validate the app: section for module:SessionClass")
    p_check.add_argument("--show", action="store_true", help="print the effective settings as YAML")
    p_check.set_defaults(func=_cmd_check_config)
    p_docs = sub.add_parser("docs-config", help="print docs/CONFIG.md (the settings reference)")
    p_docs.set_defaults(func=_cmd_docs_config)
    p_back = sub.add_parser("backends", help="list I/O backends and why any is unavailable")
    p_back.set_defaults(func=_cmd_backends)
    p_top = sub.add_parser("top", help="live view of servers' /metrics", add_help=False)
    p_top.set_defaults(func=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:  # its own parser (framework.metrics.top) takes the rest
        from framework.metrics.top import main as top_main

        return top_main(argv[1:])
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
