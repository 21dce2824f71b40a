"""Helpers for the session-layer tests: settings per backend, a server in a background thread, and
a blocking loopback frame client (the peer under test is always the real framework on a real backend)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import msgpack

from framework.config import Settings, load_settings
from framework.session import Server, Session
from loadtests.soak import fd_count  # noqa: F401  (portable, through psutil; re-exported)
from tests.support.backends import OPERATIONS

WAIT_S = 15.0  # generous: the machine is shared and the CPU contended
HEADER = struct.Struct(">I")


def make_settings(backend: str, **sections: dict[str, Any]) -> Settings:
    """Defaults with port 0 on 127.0.0.1, the given backend without fallback, stats off, a small
    buffer pool; `sections` override fields per section, e.g. session={"idle_timeout_s": 1}."""
    base = load_settings()
    options: dict[str, Any] = {}
    if backend.endswith(OPERATIONS):
        backend = backend[: -len(OPERATIONS)]
        options = {"streams": False}
    updates: dict[str, dict[str, Any]] = {
        "server": {"hosts": ["127.0.0.1"], "port": 0},
        "io": {"backend": backend, "fallback": False, "max_connections": 2048, "poll_timeout_ms": 20},
        "buffers": {"recv_buffer_size": 4096, "initial_buffers": 64, "max_buffers": 4096},
        "stats": {"interval_s": 0},
        "shutdown": {"drain_timeout_s": 5.0},
    }
    for name, fields in sections.items():
        updates.setdefault(name, {}).update(fields)
    if options:
        updates["io"]["options"] = {**options, **updates["io"].get("options", {})}
    data = base.model_dump()
    for name, fields in updates.items():
        data[name].update(fields)
    return Settings(**data)


@contextlib.contextmanager
def running_server(settings: Settings, session_class: type[Session]) -> Iterator[Server]:
    """A started server whose loop runs in a background thread; shut down (and joined) on exit."""
    server = Server(settings, session_class)
    server.start()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # surfaced by the test, never swallowed
            errors.append(exc)

    thread = threading.Thread(target=loop, name="server-loop", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "server loop did not stop"
        assert not errors, errors


def on_loop(server: Server, fn: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Run `fn` in the server's loop thread and return its result."""
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("err", exc))
        done.set()

    server.call_soon_threadsafe(run)
    assert done.wait(timeout), "loop did not run the callback"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def msg_frame(msg: Any) -> bytes:
    return frame(msgpack.packb(msg))


class FrameClient:
    """A blocking TCP client speaking the framework's framing (msgpack payloads)."""

    def __init__(self, address: tuple[str, int], rcvbuf: int | None = None) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, msg: Any) -> None:
        self.sock.sendall(msg_frame(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise EOFError("peer closed")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv_frame(self) -> bytes:
        (n,) = HEADER.unpack(self._exact(4))
        return self._exact(n)

    def recv(self) -> Any:
        while True:
            payload = self.recv_frame()
            if payload:  # skip heartbeats
                return msgpack.unpackb(payload)

    def closed_by_peer(self, timeout: float = WAIT_S) -> bool:
        """True once the server closed the connection (EOF or reset); data before that is discarded."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()




class RecordingEcho(Session):
    """Echoes every message and records each close reason in its class's `reasons` (a subclass
    declares its own list; on_disconnected may run in the loop thread while a test reads it)."""

    __slots__ = ()
    reasons: ClassVar[list[str]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def on_message(self, msg: Any) -> None:
        self.send(msg)

    def on_disconnected(self, reason: str) -> None:
        with type(self).lock:
            type(self).reasons.append(reason)
