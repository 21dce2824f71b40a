"""Fault promises: a peer reset mid-frame, a half-close, a peer that vanishes without a FIN, and
running out of file descriptors on accept. Each session closes with the right reason and nothing
leaks; the server keeps serving."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    WAIT_S,
    EchoSession,
    ServerProcess,
    closing_all,
    connect,
    fd_count,
    frame,
    make_settings,
    msg_frame,
    read_until_closed,
    recv_message,
    round_trip,
    rst_close,
    serving,
    wait_for,
)
from tests.support.marks import needs_posix_signals


def _no_leak(st: Any) -> None:
    wait_for(lambda: st.sessions() == 0, what="sessions gone")
    active = st.on_loop(lambda: st.server.provider.get_statistics().active_connections)
    assert active == len(st.server.addresses), "a closed session's socket is still registered"


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_peer_reset_mid_frame_closes_the_session_as_connection_reset(backend):
    with serving(backend) as st:
        good = connect(st.address)
        s = connect(st.address)
        round_trip(s, "hello")
        s.sendall(msg_frame({"half": "x" * 200})[:100])
        wait_for(lambda: st.on_loop(lambda: st.server.stats["bytes_in"]) >= len(msg_frame("hello")) + 100,
                 what="partial frame received")
        rst_close(s)
        wait_for(lambda: st.reasons, what="session closed")
        assert st.reasons == [(st.reasons[0][0], "connection reset")]
        round_trip(good, "unaffected")
        good.close()
        _no_leak(st)


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_half_close_delivers_every_pending_reply_then_closes(backend):
    with serving(backend) as st:
        s = connect(st.address)
        s.sendall(b"".join(msg_frame(i) for i in range(50)))
        s.shutdown(socket.SHUT_WR)  # "no more requests" - the replies must still come
        data = read_until_closed(s)
        s.close()
        expected = b"".join(msg_frame(i) for i in range(50))
        assert data == expected
        wait_for(lambda: st.reasons, what="session closed")
        assert st.reasons[0][1] == "peer closed"
        _no_leak(st)


class SlowReplies(EchoSession):
    """Replies after awaiting (an async handler, e.g. a database call)."""

    async def on_message(self, msg: Any) -> None:
        await self.server.sleep(0.02)
        self.send(msg)


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_half_close_delivers_replies_of_async_handlers_still_running(backend):
    with serving(backend, SlowReplies) as st:
        s = connect(st.address)
        s.sendall(b"".join(msg_frame(i) for i in range(5)))
        s.shutdown(socket.SHUT_WR)
        data = read_until_closed(s)
        s.close()
        assert data == b"".join(msg_frame(i) for i in range(5))
        wait_for(lambda: st.reasons, what="session closed")
        assert st.reasons[0][1] == "peer closed"
        _no_leak(st)


_FROZEN_PEER = """
import os, signal, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack(">I", 1) + b"\\xc0")  # msgpack nil
assert s.recv(5) == struct.pack(">I", 1) + b"\\xc0"
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # the application vanishes; its kernel still ACKs, never FINs
"""


@needs_posix_signals
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_a_vanished_peer_without_fin_is_closed_by_the_idle_timeout_while_heartbeats_keep_others(backend):
    # Detection is the idle timeout: no frame (heartbeats count) for idle_timeout_s. On loopback a
    # frozen or vanished application never produces a FIN or RST, and TCP keepalive would only
    # catch a dead host, which loopback cannot simulate.
    with serving(backend, session={"idle_timeout_s": 1.5, "heartbeat_interval_s": 0.3}) as st:
        healthy = connect(st.address)
        child = subprocess.Popen(
            [sys.executable, "-c", _FROZEN_PEER, str(st.address[1])], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            # The healthy peer only sends heartbeats (zero-length frames) and reads the server's.
            deadline = time.monotonic() + 1.5 + WAIT_S
            beats = 0
            while not st.reasons:
                assert time.monotonic() < deadline, "vanished peer not closed"
                healthy.sendall(frame(b""))
                if select.select([healthy], [], [], 0.2)[0]:
                    chunk = healthy.recv(4096)
                    assert chunk and set(chunk) == {0}, chunk  # only heartbeat frames
                    beats += 1
            assert [r for _, r in st.reasons] == ["idle timeout"]
            assert beats > 0  # the server sent heartbeats to the idle-but-alive peer
            round_trip(healthy, "alive")
            assert st.sessions() == 1
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT_S)
            child.stdout.close()
            healthy.close()


@pytest.mark.slow
@pytest.mark.skipif(
    sys.platform == "win32", reason="needs RLIMIT_NOFILE (POSIX resource module); Windows has no descriptor limit"
)
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_accept_backs_off_on_emfile_and_recovers_when_descriptors_free(backend, tmp_path):
    # The limit is set when the process starts: io_uring's (multishot) accept samples
    # RLIMIT_NOFILE when it is armed, so lowering it later (prlimit) would not be seen.
    limit = 40
    server = ServerProcess(tmp_path, make_settings(backend), nofile=limit)
    try:
        room = limit - fd_count(server.pid)  # descriptors left for accepted connections
        assert 4 <= room <= limit
        with closing_all([]) as socks:
            for i in range(3 * room):
                s = connect(server.address)
                socks.append(s)
                s.sendall(msg_frame(i))
            server.wait_log(lambda e: "backing off" in e.get("event", ""), timeout=WAIT_S)
            # Connections the server took are answered; the rest wait in the listen backlog.
            # (A late answer only moves a socket from "pending" to served: both are checked.)
            wait_for(lambda: select.select(socks, [], [], 0)[0], what="some connections served")
            time.sleep(0.5)
            answered = set(select.select(socks, [], [], 0)[0])
            served = [s for s in socks if s in answered]
            pending = [s for s in socks if s not in answered]
            assert pending and len(served) <= room
            for s in served:
                recv_message(s)
                s.close()  # frees descriptors in the server
            for s in pending:
                s.settimeout(WAIT_S)
                recv_message(s)  # accepted after the back-off, then served
                s.close()
            check = connect(server.address)
            socks.append(check)
            round_trip(check, "recovered")
            assert server.proc.poll() is None
        assert server.terminate() == 0
    finally:
        server.kill()
