"""What an operator reads: the stats record, session-end log levels, connect errors, handler
tracebacks and the framework's output before logging is configured (real servers on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from framework.session import Client, Session
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import rst_close
from tests.support.session import WAIT_S, FrameClient, make_settings, running_server, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Streamer(Session):
    """Sends a frame every 10 ms (like game snapshots), so a vanishing peer fails a send."""

    def on_connected(self) -> None:
        self._timer = self.server.call_every(0.01, lambda: self.send_frame(b"s" * 256))

    def on_disconnected(self, reason: str) -> None:
        self._timer.cancel()


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_a_client_that_goes_away_is_not_logged_as_an_aborted_session(backend: str) -> None:
    settings = make_settings(backend, session={"codec": "raw"})
    with capture_logs() as logs, running_server(settings, Streamer) as server:
        for _ in range(3):
            peer = FrameClient(server.addresses[0])
            peer.recv_frame()
            # A client process that exits with unread data: the kernel resets the connection.
            rst_close(peer.sock)
        wait_for(lambda: server.sessions_closed == 3, what="three closes")
    aborted = [e for e in logs if e["event"] == "session aborted"]
    assert aborted, "the resets were seen"
    assert {e["log_level"] for e in aborted} == {"debug"}, aborted  # ordinary: not info-level news
    assert sum(server.closes.values()) == 3 and server.closes.get("peer_reset") == 3, server.closes


def test_server_decisions_are_still_logged_at_info() -> None:
    settings = make_settings(PLATFORM_BACKENDS[0], session={"idle_timeout_s": 0.2})
    with capture_logs() as logs, running_server(settings, Session) as server:
        peer = FrameClient(server.addresses[0])
        assert peer.closed_by_peer()
        wait_for(lambda: server.sessions_closed == 1, what="idle close")
    [entry] = [e for e in logs if e["event"] == "session aborted"]
    assert (entry["log_level"], entry["reason"]) == ("info", "idle timeout")


def test_connect_refused_says_connect_failed_once() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with Client(make_settings(PLATFORM_BACKENDS[0])) as client, pytest.raises(ConnectionError) as info:
        client.connect("127.0.0.1", port, timeout_s=WAIT_S)
    assert str(info.value) == f"connect to 127.0.0.1:{port} failed: connection refused"


def test_an_unresolvable_host_raises_connection_error() -> None:
    # ".invalid" never resolves (RFC 2606); the documented error is ConnectionError, not gaierror.
    with Client(make_settings(PLATFORM_BACKENDS[0])) as client, pytest.raises(ConnectionError) as info:
        client.connect("no-such-host.invalid", 7777, timeout_s=WAIT_S)
    assert "cannot resolve 'no-such-host.invalid'" in str(info.value)
    assert not isinstance(info.value, socket.gaierror)


class AsyncThenFailing(Session):
    """The first message runs an async handler; the next one, queued behind it, raises."""

    context_seen: ClassVar[list[Any]] = []

    def on_message(self, msg: Any) -> Any:
        if msg == "slow":
            return self._slow()
        AsyncThenFailing.context_seen.append(sys.exc_info()[1])
        raise ValueError("the handler's own error")

    async def _slow(self) -> None:
        await self.server.sleep(0.05)
        self.send("slow done")


def test_a_handler_traceback_does_not_start_with_the_loops_stop_iteration() -> None:
    # The failing handler runs when the async one finishes (StopIteration inside the loop): it must
    # not run inside that except block, or its traceback begins "During handling of StopIteration".
    settings = make_settings(PLATFORM_BACKENDS[0], session={"handler_errors": "keep"})
    AsyncThenFailing.context_seen = []
    with capture_logs() as logs, running_server(settings, AsyncThenFailing) as server:
        peer = FrameClient(server.addresses[0])
        peer.send("slow")
        peer.send("fail")
        assert peer.recv() == "slow done"
        wait_for(lambda: server.handler_errors == 1, what="the handler error")
    assert AsyncThenFailing.context_seen == [None]  # no exception was being handled around it
    [entry] = [e for e in logs if e["event"] == "session handler raised"]
    assert entry["exc_info"] is True


def test_the_stats_record_counts_what_its_names_say() -> None:
    settings = make_settings(PLATFORM_BACKENDS[0], stats={"interval_s": 0.2})
    with capture_logs() as logs, running_server(settings, Session) as server:
        peer = FrameClient(server.addresses[0])
        wait_for(lambda: len(server.registry) == 1, what="a session")
        peer.close()
        wait_for(lambda: len(server.registry) == 0, what="no session")
        wait_for(lambda: sum(1 for e in logs if e["event"] == "stats") >= 3, what="stats records")
    records = [e for e in logs if e["event"] == "stats"]
    last = records[-1]
    # Idle: no session, one listener; the provider's sockets and operations say they include the
    # listener and its posted accepts instead of passing for connections.
    assert last["sessions"] == 0 and last["listeners"] == 1
    assert last["registered_sockets"] == 1
    assert last["operations_in_flight"] == last["accepts_posted"] > 0
    assert "average_latency_ms" not in last and "active_connections" not in last
    assert sum(r["sessions_opened"] for r in records) == 1 == sum(r["sessions_closed"] for r in records)


def test_the_framework_prints_no_debug_lines_before_logging_is_configured() -> None:
    # A script that uses the framework without configure_logging: its stdout stays its own.
    script = textwrap.dedent(
        f"""
        from tests.support.session import FrameClient, make_settings, running_server, wait_for
        from framework.session import Session
        with running_server(make_settings({PLATFORM_BACKENDS[0]!r}), Session) as server:
            FrameClient(server.addresses[0]).close()
            wait_for(lambda: server.sessions_closed == 1)
        print("script output")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "script output\n"  # no "session closed" debug line, no log line at all
    assert "session closed" not in res.stderr  # debug is dropped; info goes to stderr
    assert "listening" in res.stderr
