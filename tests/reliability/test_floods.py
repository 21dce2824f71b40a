"""Flood promises: connections beyond max_connections are refused (accepted and closed at once)
without harming existing sessions; a burst of connects and disconnects — clean, reset, mid-frame —
leaves no session, provider registration or file descriptor behind."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    WAIT_S,
    ServerThread,
    closing_all,
    connect,
    fd_count,
    msg_frame,
    read_until_closed,
    round_trip,
    rst_close,
    serving,
    wait_for,
)

LIMIT = 20


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_connections_beyond_max_connections_are_refused_and_existing_sessions_continue(backend):
    with serving(backend, io={"max_connections": LIMIT}) as st, closing_all([]) as socks:
        members = [connect(st.address) for _ in range(LIMIT)]
        socks.extend(members)
        for i, s in enumerate(members):
            round_trip(s, i)
        assert st.sessions() == LIMIT
        extra = [connect(st.address) for _ in range(3 * LIMIT)]
        socks.extend(extra)
        for s in extra:
            try:
                s.sendall(msg_frame("let me in"))
            except OSError:
                pass  # already refused: reset before our send
            assert read_until_closed(s) == b""  # refused: closed without a reply
        assert st.server.stats["refused"] == 3 * LIMIT
        assert st.sessions() == LIMIT and st.reasons == []
        for i, s in enumerate(members):
            round_trip(s, {"still": i})
        # A freed slot is usable again.
        members[0].close()
        wait_for(lambda: st.sessions() == LIMIT - 1, what="slot freed")
        late = connect(st.address)
        socks.append(late)
        round_trip(late, "welcome")


def _churn(address: tuple[str, int], n: int, seed: int, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        for i in range(n):
            s = connect(address)
            kind = rng.randrange(4)
            if kind == 0:
                s.close()  # connect and leave at once
            elif kind == 1:
                round_trip(s, i)
                s.close()
            elif kind == 2:
                s.sendall(msg_frame({"n": i})[:-2])  # mid-frame, then reset
                rst_close(s)
            else:
                s.sendall(msg_frame(i))
                rst_close(s)  # reset with a reply possibly in flight
    except BaseException as exc:
        errors.append(exc)


def _session_counts(st: ServerThread) -> Callable[[], tuple[int, int, int]]:
    """For `st.on_loop`: (sessions opened, sessions closed, sessions in the registry), read on the
    loop thread, so a session closing mid-batch is never half counted."""
    server = st.server
    return lambda: (server.sessions_opened, server.sessions_closed, len(server.registry))


@pytest.mark.parametrize("close", ["fin", "rst"])
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_connection_its_client_closed_before_the_accept_still_gets_a_session(backend, close):
    with serving(backend) as st:
        # Hold the loop thread, so the connection waits in the listen backlog, unaccepted.
        held, release = threading.Event(), threading.Event()

        def hold():
            held.set()
            release.wait(WAIT_S)

        st.server.call_soon_threadsafe(hold)
        try:
            assert held.wait(WAIT_S)
            s = connect(st.address)  # returns as soon as the kernel queued the connection
            s.sendall(msg_frame("gone before the accept"))
            if close == "fin":
                s.close()
            else:
                rst_close(s)
            # The client is done, yet the server has not seen the connection: an empty registry
            # does not mean that every connection was served.
            assert st.sessions() == 0 and st.server.sessions_opened == 0
        finally:
            release.set()
        wait_for(lambda: st.on_loop(_session_counts(st)) == (1, 1, 0), what="late accept served")


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_connect_disconnect_burst_leaks_no_sessions_or_descriptors(backend):
    with serving(backend, io={"max_connections": 256}) as st:
        warm = connect(st.address)
        round_trip(warm, "warm")
        warm.close()
        wait_for(lambda: st.sessions() == 0, what="warm-up session closed")
        # Settle lazily created descriptors (buffer pool, wake-up fds) before the baseline.
        wait_for(lambda: st.on_loop(lambda: st.server.provider.get_statistics().active_connections) <= 2)
        fds_before = fd_count()
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_churn, args=(st.address, 150, k, errors)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        # A client's connect() returns once the kernel queued the connection, so the server may
        # accept the last few after every client is done while its registry is empty: an empty
        # registry alone does not mean every connection was served. Wait for the accepts too.
        expected = (4 * 150 + 1, 4 * 150 + 1, 0)
        try:
            wait_for(lambda: st.on_loop(_session_counts(st)) == expected, what="every churned session closed")
        except AssertionError:
            assert st.on_loop(_session_counts(st)) == expected  # (opened, closed, in the registry)
            raise
        wait_for(lambda: fd_count() <= fds_before, what=f"descriptors back to {fds_before}")
        # Listeners only: no socket of a closed session is still registered with the provider.
        active = st.on_loop(lambda: st.server.provider.get_statistics().active_connections)
        assert active == len(st.server.addresses)
        check = connect(st.address)
        round_trip(check, "after the burst")
        check.close()
