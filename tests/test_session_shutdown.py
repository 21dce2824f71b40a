"""Graceful shutdown of a server process on SIGTERM: every queued frame is delivered, exit status 0;
and a multi-worker server (SO_REUSEPORT) that forwards SIGTERM to its workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.marks import needs_posix_signals
from tests.support.session import WAIT_S, FrameClient

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)


class ServerProcess:
    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.session_drain_server", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # workers share the group: cleanup reaches them too
        )
        self.marks: list[str] = []
        self.stdout: list[str] = []
        self._cv = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def exit_status(self) -> int:
        """Wait for the exit and for every line of output."""
        code = self.proc.wait(WAIT_S * 2)
        for t in self._readers:
            t.join(WAIT_S)
        return code

    def _read(self, stream, is_marks: bool) -> None:
        for line in stream:
            with self._cv:
                if is_marks and line.startswith("MARK "):
                    self.marks.append(line[5:].strip())
                else:
                    self.stdout.append(line)
                self._cv.notify_all()

    def wait_mark(self, prefix: str) -> str:
        deadline = time.monotonic() + WAIT_S
        with self._cv:
            while True:
                for m in self.marks:
                    if m.startswith(prefix):
                        return m[len(prefix) :].strip()
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {prefix!r} mark; output: {self.stdout[-20:]}"
                self._cv.wait(left)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(WAIT_S)


@needs_posix_signals
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_sigterm_delivers_every_queued_frame_then_exits_0(backend: str) -> None:
    server = ServerProcess("drain", backend)
    try:
        host, port = json.loads(server.wait_mark("listening"))
        client = FrameClient((host, port), rcvbuf=8192)  # small window: most frames stay queued
        client.send("burst")
        queued = int(server.wait_mark("queued"))
        assert queued > 1 << 20  # megabytes still in the server's session queue, not yet sent
        server.proc.send_signal(signal.SIGTERM)
        for i in range(4000):
            payload = client.recv_frame()
            assert payload[:4] == i.to_bytes(4, "big") and len(payload) == 1024
        assert client.recv() == "bye"
        assert client.closed_by_peer()  # then a clean EOF
        client.close()
        assert server.exit_status() == 0
        out = "".join(server.stdout)
        assert "shutdown complete" in out and "forced=0" in out and "drained=1" in out
    finally:
        server.kill()


@needs_posix_signals
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_workers_share_the_port_and_stop_on_sigterm() -> None:
    server = ServerProcess("workers", PLATFORM_BACKENDS[-1])
    try:
        port = int(server.wait_mark("supervising"))
        deadline = time.monotonic() + WAIT_S
        clients = []
        while len(clients) < 8:
            try:
                clients.append(FrameClient(("127.0.0.1", port)))
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "workers did not start listening"
                time.sleep(0.05)
        for i, c in enumerate(clients):
            c.send({"i": i})
            assert c.recv() == {"i": i}
        for c in clients:
            c.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.exit_status() == 0
        out = "".join(server.stdout)
        assert out.count("shutdown complete") == 2  # one per worker
        assert len({line.split("pid=")[1].split()[0] for line in server.stdout if "listening" in line and "pid=" in line}) == 2
    finally:
        server.kill()
