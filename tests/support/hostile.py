"""Shared helpers for the reliability suite (tests/reliability/): hypothesis profiles,
hostile loopback clients, descriptor counting and process sampling.

Hypothesis profiles: "reliability" (the default: a few thousand examples in all, so `make test`
stays fast) and "fuzz" (>= 100,000 examples per property, no deadline; `make fuzz` selects it with
RELIABILITY_PROFILE=fuzz). Tests apply the profile per test (`@PARSER_SETTINGS`), so loading it
never changes other test files' hypothesis settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings

from framework.session.session import Session
from tests.support.session import fd_count  # noqa: F401  (re-exported for the reliability tests)

ROOT = Path(__file__).resolve().parents[2]  # the repository
WAIT_S = 10.0  # generous deadline for "this must eventually happen" (2 shared cores)

settings.register_profile(
    "reliability",
    max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "600")),
    deadline=None,  # CPU contention from other test runs must not fail a property
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "100000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("RELIABILITY_PROFILE", "reliability")
PARSER_SETTINGS = settings(settings.get_profile(PROFILE))


# ---------------------------------------------------------------------------------------------- frames
def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def msg_frame(obj: Any) -> bytes:
    return frame(msgpack.packb(obj))


# ---------------------------------------------------------------------------------------------- waits
def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.01, what: str = "") -> None:
    """Poll `cond` until true; fail (never hang) after the generous deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s: {what or cond}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- clients
def connect(address: tuple[Any, ...], timeout: float = WAIT_S) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(address[:2])
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> Any:
    """One msgpack message (heartbeat frames skipped)."""
    while True:
        (n,) = struct.unpack(">I", recv_exact(sock, 4))
        if n:
            return msgpack.unpackb(recv_exact(sock, n))


def read_until_closed(sock: socket.socket, timeout: float = WAIT_S) -> bytes:
    """Everything the peer sends until it closes (EOF or reset); fails if it stays open."""
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError("peer did not close the connection")
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        except TimeoutError:
            raise AssertionError("peer did not close the connection") from None
        if not chunk:
            return bytes(data)
        data += chunk


def is_closed_by_peer(sock: socket.socket) -> bool:
    """Non-blocking: has the peer closed (EOF or reset)? Unread data is drained and discarded."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


# ---------------------------------------------------------------------------------------------- process
# fd_count lives in loadtests/soak.py (one portable implementation, through psutil).


# ---------------------------------------------------------------------------------------------- servers
def make_settings(backend: str, **sections: dict[str, Any]) -> Any:
    """Validated settings for a loopback test server on `backend` (port 0, IPv4, no stats lines);
    `sections` override per section, e.g. session={"idle_timeout_s": 2}."""
    from framework.config import Settings

    data: dict[str, dict[str, Any]] = {
        "server": {"hosts": ["127.0.0.1"], "port": 0},
        "io": {"backend": backend, "fallback": False},
        "stats": {"interval_s": 0},
        "buffers": {"initial_buffers": 16},
        "shutdown": {"drain_timeout_s": 2.0},  # a test that leaves a peer open still ends quickly
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings.model_validate(data)


class EchoSession(Session):
    """Replies to every message with the same message; records why it closed on the server
    (`server.reasons`: list of (session id, reason))."""

    def on_message(self, msg: Any) -> None:
        self.send(msg)

    def on_disconnected(self, reason: str) -> None:
        reasons = getattr(self.server, "reasons", None)  # absent when served by `python -m framework`
        if reasons is not None:
            reasons.append((self.id, reason))


class CountingSession(Session):
    """For drain tests: every request is answered by BURST frames numbered 1, 2, 3 ... per
    session; on shutdown the session says {"bye": <how many frames it queued>}, so a client can
    prove that every frame queued before the signal reached it."""

    BURST = 3

    def on_connected(self) -> None:
        self.queued = 0

    def on_message(self, msg: Any) -> None:
        for _ in range(self.BURST):
            self.queued += 1
            self.send({"seq": self.queued, "pad": msg})

    def on_shutdown(self) -> None:
        self.send({"bye": self.queued})


class ServerThread:
    """A Server whose loop runs in a background thread; `stop()` shuts it down gracefully and
    re-raises anything the loop thread raised."""

    def __init__(self, settings: Any, session_class: type[Session], provider: Any = None) -> None:
        from framework.session.server import Server

        self.server = Server(settings, session_class, provider=provider)
        self.server.reasons = []  # type: ignore[attr-defined]
        self.address = self.server.start()[0]
        self.error: BaseException | None = None
        self.loop_thread_id = 0
        self.thread = threading.Thread(target=self._run, name="server-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop_thread_id = threading.get_ident()
        try:
            self.server.serve_forever()
        except BaseException as exc:
            self.error = exc

    @property
    def reasons(self) -> list[tuple[Any, str]]:
        return self.server.reasons  # type: ignore[attr-defined,no-any-return]

    def sessions(self) -> int:
        return len(self.server.registry)

    def on_loop(self, fn: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Run `fn` on the loop thread and return its result (state is read without races)."""
        done = threading.Event()
        box: list[Any] = []

        def job() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self.server.call_soon_threadsafe(job)
        assert done.wait(timeout), "the loop did not run a posted job"
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def stop(self, timeout: float = WAIT_S) -> None:
        self.server.shutdown()
        finished = self.server.wait_closed(timeout)
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert finished and not self.thread.is_alive(), "server did not shut down"


@contextlib.contextmanager
def serving(
    backend: str, session_class: type[Session] = EchoSession, provider: Any = None, **sections: dict[str, Any]
) -> Iterator[ServerThread]:
    st = ServerThread(make_settings(backend, **sections), session_class, provider)
    try:
        yield st
    finally:
        st.stop()


def round_trip(sock: socket.socket, obj: Any) -> None:
    """Send one message and assert the echo comes back unchanged."""
    sock.sendall(msg_frame(obj))
    assert recv_message(sock) == obj


try:
    import resource  # POSIX only: Windows has no RLIMIT_NOFILE (callers skip there)
except ImportError:
    resource = None  # type: ignore[assignment]


def _limit_nofile(soft: int) -> None:
    assert resource is not None, "RLIMIT_NOFILE needs the POSIX resource module"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ServerProcess:
    """`python -m framework serve --app tests.support.hostile:<class>` in a subprocess, JSON logs to a file;
    `address` is parsed from its "listening" log line."""

    def __init__(
        self, tmp_path: Path, settings: Any, app: str = "tests.support.hostile:EchoSession", nofile: int | None = None
    ) -> None:
        import yaml

        data = settings.model_dump(mode="json")
        data["logging"] = {"format": "json", "level": "INFO"}
        config = tmp_path / "server.yaml"
        config.write_text(yaml.safe_dump(data))
        self.log_path = tmp_path / "server.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "framework", "serve", "--app", app, "--config", str(config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=None if nofile is None else partial(_limit_nofile, nofile),
            )
        self.pid = self.proc.pid
        event = self.wait_log(lambda e: e.get("event") == "listening", timeout=30)
        host, _, port = event["addresses"][0].rpartition(":")
        self.address = (host.strip("[]"), int(port))

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_log(self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if match(event):
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"log line not seen:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def terminate(self, timeout: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not exit after SIGTERM:\n{self.log_path.read_text()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
