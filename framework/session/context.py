"""Generation-checked operation contexts: what a session's operations carry instead of the session.

Every operation posted for a session carries that session's `OpContext` as its provider
`user_context`. The context names the session by its slot and generation and never holds the
session itself, so neither the provider nor a pending operation keeps a closed session alive. A
completion is delivered only if the registry's generation for the slot still equals the context's:
a completion that outlives its session (or arrives after the slot was reused) is stale. `ref()`
finds the session the same way (a weak reference per connection cost 80 bytes of idle memory; the
registry holds a session exactly while it is current).

One context serves every operation of one session (no allocation per operation); it also owns the
bookkeeping that must survive the session: the socket, the receive buffer on loan from the pool
and the count of operations still in flight, so the socket is closed and the buffer returned only
after the kernel has finished with them.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from framework.session.buffers import Buffer
    from framework.session.registry import SessionRegistry
    from framework.session.session import Session


class SessionId(NamedTuple):
    slot: int
    generation: int

    def __str__(self) -> str:
        return f"{self.slot}:{self.generation}"


class OpContext:
    """The user_context of every provider operation of one session."""

    __slots__ = (
        "closed",
        "generation",
        "pending",
        "recv_buf",
        "registry",
        "short_reads",
        "slot",
        "sock",
        "stream",
    )

    def __init__(
        self, session_id: SessionId, registry: SessionRegistry | None, sock: socket.socket | None
    ) -> None:
        self.slot = session_id.slot
        self.generation = session_id.generation
        self.registry = registry
        self.sock: socket.socket | None = sock
        self.recv_buf: Buffer | None = None  # on loan while a recv is in flight
        self.pending = 0  # provider operations posted and not yet completed
        self.closed = False  # the session is finished; close the socket when pending reaches 0
        self.short_reads = 0  # reads in a row that a small receive buffer would have held
        self.stream = 0  # the provider stream carrying the session's I/O ("Streams"), 0 = none

    @property
    def id(self) -> SessionId:
        """Made on access (logs, rare paths): a stored SessionId would cost 64 bytes per session."""
        return SessionId(self.slot, self.generation)

    def ref(self) -> Session | None:
        """The session, while it is still the current one of its slot; else None."""
        registry = self.registry
        if registry is None:  # a context made by hand (Session.id's setter): in no registry
            return None
        slot = self.slot
        if registry._generations[slot] == self.generation:
            return registry._sessions[slot]
        return None

    def __repr__(self) -> str:
        return f"OpContext({self.id}, pending={self.pending}, closed={self.closed})"
