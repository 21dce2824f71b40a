"""The example game server (examples/gameserver) for tests: loopback settings per backend and a
server serving GameSession in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Any

from examples.gameserver.app import GameSession
from examples.gameserver.client import GameClient
from framework.config import Settings, load_settings

WAIT = 10.0  # generous: the machine is shared


def make_settings(backend: str, session: dict[str, Any] | None = None, **app: Any) -> Settings:
    """Loopback settings for `backend`; `app` overrides the game's settings, `session` the
    framework's session section (validated, e.g. {"rate_limit": {...}})."""
    s = load_settings(env={})
    sess = s.session if session is None else type(s.session).model_validate({**s.session.model_dump(), **session})
    return s.model_copy(
        update={
            "server": s.server.model_copy(update={"hosts": ["127.0.0.1"], "port": 0}),
            "io": s.io.model_copy(update={"backend": backend, "fallback": False}),
            "stats": s.stats.model_copy(update={"interval_s": 0}),
            "session": sess,
            "app": {**s.app, **app},
        }
    )


class RunningServer:
    """A Server serving GameSession in a background thread."""

    def __init__(self, backend: str, session: dict[str, Any] | None = None, **app: Any) -> None:
        from framework.session.server import Server

        self.server = Server(make_settings(backend, session, **app), GameSession)
        GameSession.setup_server(self.server)
        ready: queue.Queue[Any] = queue.Queue()

        def run() -> None:
            try:
                ready.put(self.server.start())
                self.server.serve_forever()
            except BaseException as exc:  # surfaced to the test below
                ready.put(exc)

        self.thread = threading.Thread(target=run, name=f"gameserver-{backend}", daemon=True)
        self.thread.start()
        addresses = ready.get(timeout=WAIT)
        if isinstance(addresses, BaseException):
            raise addresses
        host, port = addresses[0][:2]
        self.host, self.port = host, port

    def client(self, name: str | None = None) -> GameClient:
        c = GameClient(self.host, self.port, timeout=WAIT)
        if name is not None:
            c.hello(name)
        return c

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(WAIT * 2)
        assert not self.thread.is_alive(), "server thread did not stop"
