"""Drain promise: SIGTERM while clients are busy -> every frame the server queued before the signal
(and its goodbye) reaches its client, new connections are refused, and the process exits 0 within
drain_timeout_s. The server runs in a subprocess (`python -m framework serve`)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    WAIT_S,
    ServerProcess,
    connect,
    make_settings,
    msg_frame,
    recv_message,
    wait_for,
)
from tests.support.marks import needs_posix_signals

BOTS = 16
DRAIN_S = 5.0


class Bot(threading.Thread):
    """Pipelines requests and checks every reply frame arrives in order until the goodbye."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.sock = connect(address)
        self.frames = 0
        self.bye: int | None = None
        self.eof_after_bye = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            s = self.sock
            while self.bye is None:
                s.sendall(msg_frame("x" * 200) * 8)  # 8 requests -> 24 reply frames queued
                for _ in range(24):
                    msg = recv_message(s)
                    if "bye" in msg:
                        self.bye = msg["bye"]
                        break
                    assert msg["seq"] == self.frames + 1, f"frame {self.frames + 1} lost: got {msg}"
                    self.frames += 1
            s.settimeout(WAIT_S)
            self.eof_after_bye = s.recv(1) == b""  # nothing after the goodbye, then the FIN
        except BaseException as exc:
            self.error = exc
        finally:
            self.sock.close()


@needs_posix_signals
@pytest.mark.slow
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_sigterm_under_load_delivers_every_queued_frame_refuses_new_connections_and_exits_0(backend, tmp_path):
    settings = make_settings(backend, shutdown={"drain_timeout_s": DRAIN_S})
    server = ServerProcess(tmp_path, settings, app="tests.support.hostile:CountingSession")
    try:
        bots = [Bot(server.address) for _ in range(BOTS)]
        for b in bots:
            b.start()
        # A client that stays connected (and reads nothing) keeps the drain going while we check
        # that the listener is gone.
        holder = connect(server.address)
        holder.sendall(msg_frame("hold"))
        wait_for(lambda: all(b.frames > 100 for b in bots) or any(b.error for b in bots),
                 timeout=3 * WAIT_S, what="bots busy")
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        refused = False
        probes = 0  # connects that got through before the listener closed (each may be a session)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                probe = socket.create_connection(server.address, timeout=1.0)
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the handshake raced the listener's close, which resets what it queued.
                refused = True
                break
            probes += 1
            probe.close()
            time.sleep(0.01)
        assert refused, "a connection was still accepted while draining"
        for b in bots:
            b.join(WAIT_S)
        assert not any(b.is_alive() for b in bots)
        errors = [b.error for b in bots if b.error]
        assert not errors, errors[:3]
        for b in bots:
            assert b.bye == b.frames, f"the server queued {b.bye} frames, the client got {b.frames}"
            assert b.eof_after_bye
        holder_msgs: list[Any] = [recv_message(holder) for _ in range(4)]
        assert [m.get("seq") for m in holder_msgs[:3]] == [1, 2, 3] and holder_msgs[3] == {"bye": 3}
        holder.close()
        code = server.proc.wait(DRAIN_S + WAIT_S)
        elapsed = time.monotonic() - t0
        assert code == 0
        assert elapsed < DRAIN_S + 3.0, f"exit took {elapsed:.1f} s"  # generous: interpreter exit under load
        done = server.wait_log(lambda e: e.get("event") == "shutdown complete")
        assert BOTS + 1 <= done["drained"] <= BOTS + 1 + probes and done["forced"] == 0
    finally:
        server.kill()
