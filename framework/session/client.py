"""Client: outgoing sessions with the same Session classes, on their own completion loop.

For bots, load generators, tests and server-to-server links. A Client owns a provider and a loop;
drive it with `run_until(predicate, timeout)` (from the thread that owns it) or `serve_forever()`
(in a thread; `stop()` from anywhere). A Server can also open outgoing sessions on its own loop with
`server.connect(host, port, session_class)`.
"""

from __future__ import annotations

import threading
from typing import Any

from framework.io.provider import AsyncIOProvider
from framework.session.host import CONNECTING, SessionHost
from framework.session.session import Session


class Client(SessionHost):
    """Outgoing sessions on one completion loop: `connect()` opens them; the loop runs in the
    thread that calls `run_until`, `run_once` or `serve_forever` (`stop()` ends the latter from any
    thread). A context manager: leaving it closes every session and the provider."""

    def __init__(
        self,
        settings: Any,
        session_class: type[Session] = Session,
        *,
        provider: AsyncIOProvider | None = None,
    ) -> None:
        super().__init__(settings, session_class, provider=provider)
        self._stop_requested = False
        self._done = threading.Event()

    def start(self) -> None:
        """Create and initialize the provider (connect() does this on first use)."""
        if not self._started:
            self._open_provider()

    def connect(
        self,
        host: str,
        port: int,
        session_class: type[Session] | None = None,
        *,
        timeout_s: float | None = 10.0,
        wait: bool = True,
    ) -> Session:
        """Open a session to (host, port). With `wait` (and the loop not running in another
        thread), drive the loop until connected; raises ConnectionError with the reason on failure
        (also when `host` does not resolve, whatever `wait`).
        With wait=False the session is returned at once (`connected` turns True later)."""
        session = super().connect(host, port, session_class, timeout_s=timeout_s)
        if wait and not self._running:
            self.run_until(lambda: session._state != CONNECTING, timeout_s)
            if not session.connected:
                if session._state == CONNECTING:
                    self._finalize(session, "connect failed: timeout")
                # The reason already starts with "connect failed: ": say it once.
                reason = session.close_reason.removeprefix("connect failed: ")
                raise ConnectionError(f"connect to {host}:{port} failed: {reason}")
        return session

    def serve_forever(self) -> None:
        """Run the loop in this thread until stop() (from any thread) or close()."""
        self.start()
        self._running = True
        self._done.clear()
        try:
            while not self._stop_requested:
                self.run_once()
        finally:
            self._running = False
            self._stop_requested = False
            self._done.set()

    def stop(self) -> None:
        """Make serve_forever return (thread-safe); sessions stay open."""
        self._stop_requested = True
        if self._started and not self._closed:
            self._io.post(None)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the loop stopped (after `stop`); False when `timeout` seconds passed first."""
        return self._done.wait(timeout)

    def close(self, timeout_s: float | None = None) -> tuple[int, int]:
        """Gracefully close every session (flush, half-close, bounded wait), then the provider.
        Call from the loop's thread with the loop not running. Returns (drained, forced)."""
        if self._closed or not self._started:
            self._closed = True
            return 0, 0
        if timeout_s is not None:
            self._drain_timeout = timeout_s
        self._begin_drain("client closed", notify=False)
        while not self._drain_finished():
            self.run_once()
        return self._end_drain()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
