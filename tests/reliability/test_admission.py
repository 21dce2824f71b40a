"""Admission control (docs/RELIABILITY.md): one address cannot lock out every new player.

- `server.max_connections_per_address` refuses a further connection from a full address at accept,
  while other addresses (127.0.0.2, ::1) still get in, and frees the place when a session ends;
- `session.first_message_timeout_s` closes a connection that sent no message (heartbeats do not
  count) and spares one that did;
- at `io.max_connections` the oldest connection that has not sent a message gives way to a
  newcomer ("evicted for a new connection"); one that has spoken never does, and when every
  session has spoken the newcomer is refused.

Real sockets on loopback, on every Linux backend (both session I/O paths: streams and operations).
"""

from __future__ import annotations

import socket
import time
from typing import Any, ClassVar

import pytest

from framework.session.codec import HEARTBEAT_FRAME
from framework.session.server import EVICTED, FIRST_MESSAGE_TIMEOUT
from tests.support.backends import SESSION_BACKENDS
from tests.support.session import (
    WAIT_S,
    FrameClient,
    RecordingEcho,
    make_settings,
    on_loop,
    running_server,
    wait_for,
)


class _Echo(RecordingEcho):
    __slots__ = ()
    reasons: ClassVar[list[str]] = []  # this module's own record


@pytest.fixture(autouse=True)
def _fresh_reasons():
    _Echo.reasons = []
    yield


def _client_from(source: str, address: tuple[str, int]) -> FrameClient:
    """A FrameClient whose connection comes from `source` (any 127/8 address is local on Linux)."""
    client = FrameClient.__new__(FrameClient)
    client.sock = socket.create_connection(address, timeout=WAIT_S, source_address=(source, 0))
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def _round_trip(client: FrameClient, value: Any) -> None:
    client.send({"v": value})
    assert client.recv() == {"v": value}


def _sessions(server) -> int:
    return on_loop(server, lambda: len(server.registry))


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_per_address_limit_refuses_the_extra_connection_and_other_addresses_still_get_in(backend: str):
    settings = make_settings(
        backend, server={"hosts": ["127.0.0.1", "::1"], "max_connections_per_address": 3}
    )
    with running_server(settings, _Echo) as server:
        v4 = next(a for a in server.addresses if a[0] == "127.0.0.1")
        v6 = next((a for a in server.addresses if a[0] == "::1"), None)
        first = [FrameClient(v4) for _ in range(3)]
        for i, c in enumerate(first):
            _round_trip(c, i)
        extra = FrameClient(v4)
        assert extra.closed_by_peer(), "a fourth connection from 127.0.0.1 was kept"
        extra.close()
        assert on_loop(server, lambda: server.refused_per_address) == 1
        # Another address is not affected by 127.0.0.1 being full.
        other = _client_from("127.0.0.2", v4)
        _round_trip(other, "127.0.0.2")
        if v6 is not None:
            six = FrameClient(v6)
            _round_trip(six, "::1")
            six.close()
        # A session that ends frees its address's place.
        first[0].close()
        wait_for(lambda: _sessions(server) == 3, what="the closed sessions gone")
        again = FrameClient(v4)
        _round_trip(again, "again")
        for c in [*first[1:], other, again]:
            _round_trip(c, "still here")
            c.close()
        assert on_loop(server, lambda: server.refused_per_address) == 1
        assert on_loop(server, lambda: server.stats["refused_per_address"]) == 1


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_first_message_deadline_closes_heartbeat_only_and_silent_connections_and_spares_real_ones(
    backend: str,
):
    timeout = 1.5  # the player's first message must make it even on a loaded machine
    settings = make_settings(backend, session={"first_message_timeout_s": timeout, "idle_timeout_s": 60})
    with running_server(settings, _Echo) as server:
        address = server.addresses[0]
        player = FrameClient(address)
        _round_trip(player, "hello")
        beating = FrameClient(address)
        silent = FrameClient(address)
        wait_for(lambda: _sessions(server) == 3, what="three sessions")
        # Heartbeats are frames, not messages: they keep the idle timer quiet but do not count.
        beating.sock.settimeout(0.05)
        deadline = time.monotonic() + WAIT_S
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                beating.send_raw(HEARTBEAT_FRAME)
                player.send_raw(HEARTBEAT_FRAME)
                if beating.sock.recv(64) == b"":
                    closed = True
            except TimeoutError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                closed = True
        assert closed, "a heartbeat-only connection outlived first_message_timeout_s"
        assert silent.closed_by_peer(), "a silent connection outlived first_message_timeout_s"
        # The one that sent a message stays, however long it then only sends heartbeats.
        time.sleep(timeout + 0.5)
        player.send_raw(HEARTBEAT_FRAME)
        _round_trip(player, "still here")
        assert _Echo.reasons == [FIRST_MESSAGE_TIMEOUT, FIRST_MESSAGE_TIMEOUT]
        assert on_loop(server, lambda: server.first_message_timeouts) == 2
        for c in (player, beating, silent):
            c.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_first_message_deadline_zero_keeps_silent_connections(backend: str):
    settings = make_settings(backend, session={"first_message_timeout_s": 0})
    with running_server(settings, _Echo) as server:
        silent = FrameClient(server.addresses[0])
        wait_for(lambda: _sessions(server) == 1, what="session")
        assert not silent.closed_by_peer(timeout=0.5)
        _round_trip(silent, "late but fine")
        silent.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_at_max_connections_the_oldest_silent_session_gives_way_never_one_that_spoke(backend: str):
    settings = make_settings(
        backend,
        io={"max_connections": 3},
        server={"max_connections_per_address": 0},
        session={"first_message_timeout_s": 0},  # only the reclaim under test closes anyone
    )
    with running_server(settings, _Echo) as server:
        address = server.addresses[0]
        player = FrameClient(address)  # the oldest, but it spoke
        _round_trip(player, "player")
        oldest_silent = FrameClient(address)
        wait_for(lambda: _sessions(server) == 2, what="second session")
        beating = FrameClient(address)  # younger, and heartbeats do not make it a player
        beating.send_raw(HEARTBEAT_FRAME)
        wait_for(lambda: _sessions(server) == 3, what="third session")

        newcomer = FrameClient(address)
        assert oldest_silent.closed_by_peer(), "the oldest silent session was not evicted"
        _round_trip(newcomer, "newcomer")
        assert _Echo.reasons == [EVICTED]

        second = FrameClient(address)
        assert beating.closed_by_peer(), "the remaining silent session was not evicted"
        _round_trip(second, "second")
        assert _Echo.reasons == [EVICTED, EVICTED]

        # Everyone has spoken now: a further connection is refused, nobody is evicted.
        refused = FrameClient(address)
        assert refused.closed_by_peer()
        for c in (player, newcomer, second):
            _round_trip(c, "kept")
        assert _Echo.reasons == [EVICTED, EVICTED]
        assert on_loop(server, lambda: (server.evicted, server.refused)) == (2, 1)
        for c in (player, oldest_silent, beating, newcomer, second, refused):
            c.close()
