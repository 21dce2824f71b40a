"""Session: the class a game server subclasses, one instance per connection.

The framework constructs the subclass with no arguments, attaches it to a connection and then calls
its handlers from the completion loop (one thread). Sends only queue: every session's queued frames
leave as one gathered send per loop turn. See docs/SESSIONS.md for lifetimes and backpressure.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from framework.session.codec import HEADER, MAX_U32, FrameDecoder
from framework.session.context import OpContext, SessionId

if TYPE_CHECKING:
    import socket

    from framework.session.flow import Flow
    from framework.session.host import SessionHost, Task
    from framework.session.registry import Group

_pack_header = HEADER.pack

# Session states, in order.
CONNECTING = 0  # outgoing, connect pending (sends queue until connected)
OPEN = 1
CLOSING = 2  # close() called: no new sends; queued output drains, then the socket closes
CLOSED = 3

_UNRESOLVED: Any = object()  # Session._peer not yet asked of the socket


class Session:
    """Subclass and override the `on_*` handlers. All handlers run in the loop thread.

    Idle memory: a subclass that sets attributes without declaring `__slots__` gets an instance
    dict (~250 bytes per connection for two attributes); `__slots__ = ("player", "room")` costs 8
    bytes per attribute. The base keeps all of its own state in slots either way, and keeps the
    `__dict__` slot so undeclared attributes still work."""

    #: None: settings.session.codec; "msgpack": on_message gets decoded objects; "raw": bytes payloads.
    codec: ClassVar[str | None] = None
    #: Per-message-type rate limits of accepted sessions: key -> (messages per second, burst), for
    #: the keys `rate_limit_key` returns (settings.session.rate_limit.per_type replaces entries).
    rate_limits: ClassVar[Mapping[str, tuple[float, int]]] = {}

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_addr",
        "_backlog",
        "_close_deadline",
        "_close_reason",
        "_ctx",
        "_decoder",
        "_dirty",
        "_dirty_list",
        "_drained",
        "_eof",
        "_flow",
        "_groups",
        "_host_ref",
        "_inflight",
        "_last_frame",
        "_last_send",
        "_limiter",
        "_out",
        "_out_bytes",
        "_packb",
        "_paused",
        "_peer",
        "_sending",
        "_sock",
        "_state",
        "_task",
        "_write_high",
        "bytes_in",
        "bytes_out",
        "frames_in",
        "frames_out",
    )

    # ------------------------------------------------------------------ handlers (override)
    def on_connected(self) -> Awaitable[None] | None:
        """The connection is up (accepted, or an outgoing connect completed)."""

    def on_message(self, msg: Any) -> Awaitable[None] | None:
        """One decoded message (bytes for raw sessions). May be `async def`: later messages of this
        session wait until the coroutine finishes."""

    def on_disconnected(self, reason: str) -> None:
        """The session is closed; `reason` says why. Called exactly once per connected session."""

    def on_shutdown(self) -> None:
        """The server is shutting down; queue any goodbye message now (it is flushed before close)."""

    def on_pause_writing(self) -> None:
        """Queued output passed write_high_water: stop producing for this session."""

    def on_resume_writing(self) -> None:
        """Queued output fell below write_low_water: producing may resume."""

    def rate_limit_key(self, msg: Any) -> str | None:
        """The per-type rate limit `msg` counts against (a key of `rate_limits` or of
        settings.session.rate_limit.per_type), or None for the session-wide limits only. Called for
        every message of a class that has per-type limits: keep it cheap. An exception is handled
        like one in a handler (logged; the session closed unless handler_errors is "keep")."""
        return None

    # ------------------------------------------------------------------ attach (framework)
    def _attach(self, host: SessionHost, sid: SessionId, sock: socket.socket, peer: Any, state: int) -> None:
        self._host_ref = weakref.ref(host)
        self._peer = _UNRESOLVED if peer is None else peer
        self._sock = sock
        self._ctx = OpContext(sid, host.registry, sock)
        self._state = state
        self._decoder: FrameDecoder | None = None  # the host sets it right after attaching
        self._flow: Flow | None = None  # flow-control state, made when first needed (host._flow)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._inflight = 0
        self._sending = False
        self._dirty = False
        self._dirty_list = host._dirty
        self._packb = host._packb  # one Packer per loop thread (a Packer is not thread-safe)
        self._paused = False
        self._write_high = host._write_high
        self._groups: set[Group] | None = None  # created on the first Group.add
        self._task: Task | None = None
        self._backlog: deque[Any] | tuple[()] = ()  # a deque while messages wait (see SessionHost._defer)
        self._close_reason = ""
        self._close_deadline = 0.0
        self._drained = False
        self._eof = False
        self._last_frame = host.now
        self._last_send = host.now
        # Admission (the accepting Server sets these): the session's rate limiter, or the marker of
        # "no message yet"; and its peer address's live-connection count.
        self._limiter: Any = None
        self._addr: Any = None
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ public API
    @property
    def id(self) -> SessionId | None:
        """(slot, generation); None before the session is attached. Made on access from the
        operation context (which keeps slot and generation for the completion path)."""
        ctx = getattr(self, "_ctx", None)
        return None if ctx is None else SessionId(ctx.slot, ctx.generation)

    @id.setter
    def id(self, sid: SessionId) -> None:
        # For a session placed in a registry by hand (tests); _attach makes the real context.
        self._ctx = OpContext(sid, None, None)

    @property
    def peer(self) -> Any:
        """The remote address. An accepted session asks the socket on first access (and once at
        close, so on_disconnected still has it): keeping the accept's address tuple costs ~150
        bytes per idle connection. None if the connection was reset before anyone asked."""
        peer = self._peer
        if peer is _UNRESOLVED:
            try:
                peer = self._sock.getpeername()
            except (AttributeError, OSError):
                peer = None
            self._peer = peer
        return peer

    @peer.setter
    def peer(self, value: Any) -> None:
        self._peer = value

    @property
    def server(self) -> SessionHost | None:
        """The owning Server or Client (held weakly)."""
        ref = getattr(self, "_host_ref", None)
        return ref() if ref is not None else None

    @property
    def connected(self) -> bool:
        """True while the session is open (connected and not closing)."""
        return getattr(self, "_state", CLOSED) == OPEN

    @property
    def closed(self) -> bool:
        """True once close() was called or the connection ended."""
        return getattr(self, "_state", CLOSED) >= CLOSING

    @property
    def close_reason(self) -> str:
        """Why the session closed (or is closing); "" while open."""
        return getattr(self, "_close_reason", "")

    @property
    def paused(self) -> bool:
        """True between on_pause_writing and on_resume_writing."""
        return self._paused

    @property
    def queued_bytes(self) -> int:
        """Outgoing bytes not yet acknowledged by the provider (queued + in flight)."""
        host = self.server
        if host is not None and host._streams and self._state != CLOSED:
            self._inflight = host._stream_unsent(self)
        return self._out_bytes + self._inflight

    @property
    def stats(self) -> dict[str, int]:
        """This session's frame and byte counters and its queued output."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queued_bytes": self.queued_bytes,
        }

    def send(self, msg: Any) -> bool:
        """msgpack-encode `msg` and queue it as one frame. False if the session is closing/closed."""
        if self._state > OPEN:
            return False
        payload = self._packb(msg)
        return self._queue(_pack_header(len(payload)) + payload)

    def send_frame(self, payload: bytes | bytearray | memoryview) -> bool:
        """Queue one raw frame (the u32 length header is added). False if closing/closed."""
        if self._state > OPEN:
            return False
        n = len(payload)
        if n > MAX_U32:
            raise ValueError(f"payload of {n} bytes does not fit a u32 frame header")
        return self._queue(_pack_header(n) + payload)

    def send_encoded(self, frame: bytes) -> bool:
        """Queue an already framed (header included) and encoded frame, e.g. one broadcast frame."""
        if self._state > OPEN:
            return False
        return self._queue(frame)

    def close(self, reason: str = "closed by server") -> None:
        """Stop sending new data, flush what is queued, then close (bounded by drain_timeout_s)."""
        host = self.server
        if host is not None:
            host._close_session(self, reason)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "closed")[getattr(self, "_state", CLOSED)]
        return f"<{type(self).__name__} {getattr(self, 'id', None)} {getattr(self, 'peer', None)} {state}>"

    # ------------------------------------------------------------------ internals
    def _queue(self, frame: bytes) -> bool:
        self._out.append(frame)
        self._out_bytes += len(frame)
        self.frames_out += 1
        if not self._dirty and self._state == OPEN:
            self._dirty = True
            self._dirty_list.append(self)
        if self._out_bytes + self._inflight > self._write_high:
            return self._over_high_water()
        return True

    def _over_high_water(self) -> bool:
        host = self.server
        if host is not None and host._streams:
            # the figure from the last flush may be stale: the provider has written more since
            self._inflight = host._stream_unsent(self)
            if self._out_bytes + self._inflight <= self._write_high:
                return True
        if host is not None and self._out_bytes + self._inflight > host._write_cap:
            host._abort_session(self, "slow consumer")
            return False
        if not self._paused:
            self._paused = True
            if host is not None:
                host._call_handler(self, self.on_pause_writing)
        if host is not None:
            host._output_behind(self)
        return True
