"""Idle-memory changes that must not change behaviour (the idle-memory benchmark): a socket's pending operations
are tracked without a per-socket dict, an accepted session resolves its peer address lazily, and
an operation context finds its session through the registry instead of a weak reference."""

from __future__ import annotations

import socket
import threading
from typing import Any, ClassVar

import pytest

from framework.io import AsyncIOProvider, Status
from framework.session import Session
from framework.session.session import _UNRESOLVED
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.provider import WAIT_S, pump
from tests.support.session import make_settings, on_loop, running_server, wait_for


def test_unregister_cancels_only_the_operations_still_pending(
    provider: AsyncIOProvider, make_pair, collector
):
    # Mixed order on one socket: the first recv, a send that completes, a second recv; the first
    # recv then completes with data. Unregistering cancels exactly the one still waiting.
    client, server = make_pair()
    assert provider.register_socket(server)
    first = provider.recv_async(server, bytearray(8), collector, context="first")
    sent = provider.send_async(server, b"out", collector, context="send")
    second = provider.recv_async(server, bytearray(8), collector, context="second")
    third = provider.recv_async(server, bytearray(8), collector, context="third")
    client.sendall(b"in")
    pump(provider, lambda: len(collector) >= 2)
    assert collector.by_id(sent).status == Status.SUCCESS
    assert collector.by_id(first).status == Status.SUCCESS
    assert collector.by_id(first).bytes_transferred == 2
    assert provider.unregister_socket(server)
    pump(provider, lambda: len(collector) == 4)
    assert {collector.by_id(second).status, collector.by_id(third).status} == {Status.CANCELLED}
    assert provider.get_statistics().pending_operations == 0
    assert client.recv(8) == b"out"


class _PeerSession(Session):
    __slots__ = ()  # the recommended subclass style: no per-instance dict
    seen: ClassVar[dict[str, Any]] = {}
    closed: ClassVar[threading.Event] = threading.Event()

    def on_connected(self) -> None:
        if "connected" not in self.seen:  # only the first session asks for its peer here
            type(self).seen["connected"] = self.peer
            type(self).seen["ctx_ref"] = self._ctx.ref() is self

    def on_disconnected(self, reason: str) -> None:
        type(self).seen["disconnected"] = self.peer
        type(self).seen["ctx_ref_after"] = self._ctx.ref()
        type(self).closed.set()


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_accepted_session_peer_is_resolved_lazily_and_kept_through_close(backend: str):
    _PeerSession.seen = {}
    _PeerSession.closed = threading.Event()
    with running_server(make_settings(backend), _PeerSession) as server:
        client = socket.create_connection(server.addresses[0], timeout=WAIT_S)
        try:
            local = client.getsockname()
            wait_for(lambda: "connected" in _PeerSession.seen, what="on_connected")
            assert _PeerSession.seen["connected"] == local
            assert _PeerSession.seen["ctx_ref"] is True
            # A session nobody asked for its peer still has it in on_disconnected.
            second = socket.create_connection(server.addresses[0], timeout=WAIT_S)
            wait_for(lambda: on_loop(server, lambda: len(server.registry)) == 2, what="second session")
            second_local = second.getsockname()
            sessions = on_loop(server, lambda: list(server.registry))
            other = next(s for s in sessions if s._peer is _UNRESOLVED)  # nobody asked yet
            _PeerSession.seen.pop("disconnected", None)
            second.close()
            assert _PeerSession.closed.wait(WAIT_S)
            assert _PeerSession.seen["disconnected"] == second_local
            assert other.peer == second_local  # kept after the socket closed
            assert _PeerSession.seen["ctx_ref_after"] is None  # the slot moved on: stale
        finally:
            client.close()
