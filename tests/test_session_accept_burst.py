"""A burst of connects is accepted while the server is busy broadcasting.

Regression: with one accept posted, each re-posted accept completed behind every send completion of
a broadcast tick, so connects were accepted about one per tick (5,000 took minutes). Bounded by a
generous deadline; nothing here measures speed.
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from examples.echo import BROADCAST_GROUP, BroadcastSession, start_broadcast
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.session import HEADER, make_settings, on_loop, running_server

CLIENTS = 2000
PAYLOAD = 512
DEADLINE_S = 60.0
MAX_PENDING = 256  # connects not yet answered by a broadcast: keeps the listen backlog from overflowing


@pytest.fixture(params=PLATFORM_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.timeout(120)
def test_connect_burst_is_accepted_while_broadcasting(backend: str) -> None:
    settings = make_settings(
        backend,
        io={"max_connections": CLIENTS + 64},
        buffers={"recv_buffer_size": 2048, "initial_buffers": 256, "max_buffers": CLIENTS + 64},
        # Broadcast listeners from one address that never send: no per-address limit, no deadline.
        server={"max_connections_per_address": 0},
        session={"codec": "raw", "idle_timeout_s": 0.0, "first_message_timeout_s": 0.0},
    )
    with running_server(settings, BroadcastSession) as server:
        on_loop(server, lambda: start_broadcast(server, 30.0, PAYLOAD))
        address = server.addresses[0]
        sel = selectors.DefaultSelector()
        socks: list[socket.socket] = []
        got: dict[socket.socket, bytearray] = {}
        heard = 0  # clients that received a whole broadcast frame
        pending = 0
        deadline = time.monotonic() + DEADLINE_S
        try:
            while heard < CLIENTS:
                assert time.monotonic() < deadline, (
                    f"{heard}/{CLIENTS} clients heard a broadcast; server has {len(server.registry)} sessions"
                )
                while len(socks) < CLIENTS and pending < MAX_PENDING:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    s.connect_ex(address)
                    socks.append(s)
                    got[s] = bytearray()
                    sel.register(s, selectors.EVENT_READ)
                    pending += 1
                for key, _ in sel.select(0.2):
                    s = key.fileobj
                    try:
                        data = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    assert data, "the server closed a client"
                    buf = got[s]
                    buf += data
                    if len(buf) >= HEADER.size and len(buf) >= HEADER.size + HEADER.unpack_from(buf)[0]:
                        assert HEADER.unpack_from(buf)[0] == PAYLOAD
                        sel.unregister(s)  # keep the connection open; stop reading it
                        heard += 1
                        pending -= 1
            sessions = on_loop(server, lambda: len(server.registry.group(BROADCAST_GROUP)))
            assert sessions == CLIENTS
            assert len(server.registry) == CLIENTS
        finally:
            sel.close()
            for s in socks:
                s.close()
