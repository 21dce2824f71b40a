"""SessionHost: the completion loop shared by Server and Client.

It owns the provider, the registry, the receive-buffer pool, the timer heap and a tiny coroutine
scheduler, and turns provider completions into session events. Only the provider contract is used
(no backend-specific code), so every backend runs the same session layer.

One loop turn: process_completions (callbacks below run inside it: decode within the session's
read budget, dispatch, re-post the receive) -> due timers -> runnable coroutines -> held input
(sessions whose budget ran out, one budget each, round-robin) -> deferred receives (buffer
backpressure) -> flush:
every session with queued output gets one gathered send. A session keeps at most one send in flight,
so frames stay in order and whatever is queued meanwhile leaves together in the next send.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import socket
import time
from collections import deque
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import msgpack
import structlog

from framework.io.errors import ErrorCode, ProviderError, describe
from framework.io.provider import (
    STREAM_DRAINED,
    STREAM_EOF,
    AsyncIOProvider,
    CompletionResult,
    Feature,
    Status,
    StreamsProvider,
)
from framework.session.buffers import Buffer, BufferPool
from framework.session.codec import HEARTBEAT_FRAME, FrameDecoder, ProtocolError, make_payload_decoder
from framework.session.context import OpContext
from framework.session.flow import Flow
from framework.session.reasons import PEER_CODES, close_code
from framework.session.registry import SessionRegistry
from framework.session.session import CLOSED, CLOSING, CONNECTING, OPEN, Session

log = structlog.get_logger("framework.session")

_monotonic = time.monotonic
_perf_counter = time.perf_counter
_SUCCESS = Status.SUCCESS
_DRAIN_LINGER_S = 0.5  # after the last FIN of a shutdown, how long peers get to close their side
_MAX_ATTEMPTS = 3  # process_completions attempts per loop turn before the loop gives up
_RETRY_BACKOFF_S = 0.010
# Receive buffers: a session starts on a small one (an idle connection holds little memory) and
# moves to a large one when a read fills the small one; after this many reads in a row that would
# have fitted the small one it moves back (hysteresis, so a bursty stream does not flap).
_SMALL_RECV_BUFFER = 2048
_SHRINK_AFTER_READS = 8
_ERROR_RATE_WINDOW = 200  # loop calls per error-rate check
_ERROR_RATE_PERCENT = 5
_LOW32 = 0xFFFFFFFF
_NO_BYTES = memoryview(b"")


def _append_task(ready: deque[Task], task: Task, _future: LoopFuture) -> None:
    ready.append(task)  # a future the task awaited is done: it runs again next turn


def _no_stream_send(stream_id: int, data: bytes) -> int:
    return -errno.ENOTCONN  # what `_stream_send` is while the provider runs no streams


# ---------------------------------------------------------------------------------------------- timers
class Timer:
    """Handle of a call_later / call_every callback."""

    __slots__ = ("_host", "cancelled", "fn", "interval", "when")

    def __init__(self, host: SessionHost, when: float, fn: Callable[[], Any], interval: float) -> None:
        self._host = host
        self.when = when
        self.fn = fn
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        """The callback will not run (again)."""
        self.cancelled = True
        self.fn = _noop  # drop references (a cancelled timer stays in the heap until due)

    def __repr__(self) -> str:
        return f"Timer(when={self.when:.3f}, interval={self.interval}, cancelled={self.cancelled})"


def _describe_failure(what: str, status: int, code: int) -> str:
    if code == ErrorCode.CONNECTION_RESET:
        return "connection reset"
    if status == Status.TIMEOUT:
        return f"{what} timeout"
    if status == Status.CANCELLED:
        return f"{what} cancelled"
    return f"{what} error: {describe(code)}"


def _noop() -> None:
    return None


# ---------------------------------------------------------------------------------------------- futures
class LoopFuture:
    """A result that a coroutine on the loop can await (`await fut`). Loop-thread only."""

    __slots__ = ("_callbacks", "_done", "_exception", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[LoopFuture], Any]] = []

    def done(self) -> bool:
        """True once a result or an exception was set."""
        return self._done

    def result(self) -> Any:
        """The result; raises the exception that was set, or RuntimeError while not done."""
        if not self._done:
            raise RuntimeError("future is not done")
        if self._exception is not None:
            raise self._exception
        return self._result

    def set_result(self, value: Any = None) -> None:
        """Finish with `value` and run the callbacks (ignored once done)."""
        if self._done:
            return
        self._done = True
        self._result = value
        self._fire()

    def set_exception(self, exc: BaseException) -> None:
        """Finish with `exc`, raised to whoever awaits it, and run the callbacks (ignored once done)."""
        if self._done:
            return
        self._done = True
        self._exception = exc
        self._fire()

    def add_done_callback(self, fn: Callable[[LoopFuture], Any]) -> None:
        """Call `fn(future)` when done (at once if it already is)."""
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def __await__(self) -> Generator[LoopFuture, None, Any]:
        if not self._done:
            yield self
        return self.result()


class Task:
    """A handler coroutine driven by the loop (coro.send(None) per step)."""

    __slots__ = ("coro", "done", "session", "throw")

    def __init__(self, coro: Any, session: Session | None) -> None:
        self.coro = coro
        self.session = session  # None: detached (e.g. an async on_disconnected)
        self.done = False
        self.throw: BaseException | None = None  # thrown into the coroutine at its next step


# ---------------------------------------------------------------------------------------------- host
class SessionHost:
    """Completion loop + sessions. Server and Client subclass it."""

    # Set by _open_provider, before any loop-thread method runs: the opened provider and pool
    # (`provider` and `pool` are the public, possibly None, views), and the provider again as a
    # StreamsProvider when the sessions use its streams.
    _io: AsyncIOProvider
    _pool: BufferPool
    _sp: StreamsProvider

    def __init__(
        self, settings: Any, session_class: type[Session], *, provider: AsyncIOProvider | None = None
    ):
        if not (isinstance(session_class, type) and issubclass(session_class, Session)):
            raise TypeError(f"session_class must be a Session subclass, got {session_class!r}")
        self.settings = settings
        self.session_class = session_class
        self.provider: AsyncIOProvider | None = provider
        self._own_provider = provider is None
        self.registry = SessionRegistry()
        self.pool: BufferPool | None = None
        # The provider picks receive memory when data arrives ("ProvidedBuffers"): sessions then
        # hold no receive buffer at all and the pool stays empty (see _post_recv).
        self._provided = False
        # The provider keeps each session's receive armed and owns its send queue ("Streams"):
        # no operation, result object or callback per read or per send (see _on_stream_data).
        self._streams = False
        self._stream_send: Callable[[int, bytes], int] = _no_stream_send
        # Bound once: a pending receive holds its callback, and a bound method made per receive
        # would cost every idle connection 64 bytes (and an allocation per read).
        self._recv_provided_cb = self._on_recv
        s = settings.session
        self._write_high = s.write_high_water
        self._write_low = s.write_low_water
        self._write_cap = s.write_hard_cap
        # Fairness (docs/RELIABILITY.md): a session's frames decoded per loop turn, at most; input
        # held beyond it waits undecoded and pauses reading over read_pause_bytes.
        self._budget_frames = s.read_budget_frames
        self._budget_bytes = s.read_budget_bytes
        self._read_pause = s.read_pause_bytes
        self._slow_timeout = float(s.slow_consumer_timeout_s)
        self._memory_budget = settings.server.memory_budget_bytes
        self._turn = 0
        self._spent: dict[Session, int] = {}  # this turn's decoded frames << 32 | bytes, per session
        self._share_frames = self._budget_frames // 4  # what a first decode may use unrecorded
        self._share_bytes = self._budget_bytes // 4
        self._budget_share = self._share_frames << 32 | self._share_bytes
        self._held_ready: deque[Session] = deque()  # sessions with held frames, served round-robin
        self._in_bytes = 0  # input buffered by every decoder (partial frames and held frames)
        self._out_acct = 0  # output of sessions over their high-water mark (Flow.out_acct)
        self._memory_turn = -1
        self._idle_timeout = float(s.idle_timeout_s)
        self._heartbeat = float(s.heartbeat_interval_s)
        self._drain_timeout = float(settings.shutdown.drain_timeout_s)
        self._close_errors = s.handler_errors == "close"
        self._batch = settings.io.completion_batch
        self._poll_ms = settings.io.poll_timeout_ms
        self._payload_decoders: dict[str, Any] = {}
        self._packb = msgpack.Packer().pack  # reused: faster than msgpack.packb per message
        self._results: list[CompletionResult] = []
        self._dirty: list[Session] = []
        self._closing: set[Session] = set()
        self._starved: deque[OpContext] = deque()
        self._starving = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._ready_tasks: deque[Task] = deque()
        self._running = False
        self._started = False
        self._closed = False
        self.now = _monotonic()
        # counters (plain ints on the hot path; `stats` assembles them)
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.sessions_opened = 0
        self.sessions_closed = 0
        self.handler_errors = 0
        self.protocol_errors = 0
        self.slow_consumers = 0
        self.read_pauses = 0
        self.memory_sheds = 0
        self.idle_timeouts = 0
        self.recv_deferred = 0
        self.provider_failures = 0
        self.closes: dict[str, int] = {}  # by close code (framework.session.reasons)
        self.io_errors: dict[str, int] = {}  # sessions ended by a failed I/O operation, by error name
        # Metrics (framework.metrics) set this to time the next loop turn, and read it back through
        # turn_observer: one turn in many is timed, so an untimed turn costs one attribute test.
        self.sample_turn = False
        self.turn_observer: Callable[[float], Any] | None = None
        self._loop_calls = 0
        self._loop_failures = 0

    # ------------------------------------------------------------------ setup
    def _open_provider(self) -> AsyncIOProvider:
        io = self.settings.io
        provider = self.provider
        if provider is None:
            from framework.io.factory import create_provider

            provider = create_provider(io.backend, fallback=io.fallback)
            self.provider = provider
        # Headroom over max_connections for listeners and outgoing sockets.
        if not provider.initialized and not provider.initialize(io.max_connections + 64, io.completion_queue_size):
            raise ProviderError(f"{provider.name}: initialize failed: {provider.last_error}")
        for name, value in io.options.items():
            if not provider.set_option(name, value):
                log.warning("provider option not supported", backend=provider.name, option=name, value=value)
        self._provided = provider.supports_feature(Feature.PROVIDED_BUFFERS)
        self._streams = isinstance(provider, StreamsProvider) and provider.supports_feature(Feature.STREAMS)
        self._io = provider
        if isinstance(provider, StreamsProvider) and self._streams:
            self._sp = provider
            provider.set_stream_handlers(self._on_stream_data, self._on_stream_event)
            self._stream_send = provider.stream_send
            self.registry.fanout = self._fanout
        b = self.settings.buffers
        self.pool = self._pool = BufferPool(
            provider,
            b.recv_buffer_size,
            0 if self._provided or self._streams else b.initial_buffers,
            b.max_buffers,
            register=b.register_with_kernel,
            small_size=min(_SMALL_RECV_BUFFER, b.recv_buffer_size // 2),
        )
        self.now = _monotonic()
        if self._idle_timeout > 0 or self._heartbeat > 0 or self._drain_timeout > 0 or self._slow_timeout > 0:
            self.call_every(self._housekeeping_interval(), self._housekeeping)
        interval = float(self.settings.stats.interval_s)
        if interval > 0:
            self._stats_mark = (self.now, 0, 0, 0, 0, 0, 0)
            self.call_every(interval, self._log_stats)
        self._started = True
        return provider

    def _housekeeping_interval(self) -> float:
        candidates = [1.0]
        if self._idle_timeout > 0:
            candidates.append(self._idle_timeout / 8)
        if self._heartbeat > 0:
            candidates.append(self._heartbeat / 4)
        if self._drain_timeout > 0:
            candidates.append(self._drain_timeout / 8)
        if self._slow_timeout > 0:
            candidates.append(self._slow_timeout / 4)
        return max(0.02, min(candidates))

    def _decoder_for(self, session_class: type[Session]) -> FrameDecoder:
        codec = session_class.codec or self.settings.session.codec
        payload = self._payload_decoders.get(codec)
        if payload is None:
            payload = self._payload_decoders[codec] = make_payload_decoder(codec, self.settings.session)
        return FrameDecoder(self.settings.session.max_frame_size, payload)

    # ------------------------------------------------------------------ timers & scheduling
    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run `fn(*args)` in the loop after `delay_s` seconds (loop thread only), as asyncio does."""
        timer = Timer(self, _monotonic() + max(0.0, delay_s), partial(fn, *args) if args else fn, 0.0)
        heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
        return timer

    def call_every(self, interval_s: float, fn: Callable[[], Any]) -> Timer:
        """Run `fn()` every `interval_s` seconds (game ticks); a late tick does not pile up."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        timer = Timer(self, _monotonic() + interval_s, fn, interval_s)
        heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
        return timer

    def call_soon_threadsafe(self, fn: Callable[[], Any]) -> None:
        """Run `fn()` in the loop thread soon; callable from any thread."""
        provider = self.provider
        if provider is None or not provider.post(self._on_posted, fn):
            raise RuntimeError("the loop is not running (start() it first)")

    def _on_posted(self, result: CompletionResult, fn: Any) -> None:
        if result.status == _SUCCESS and fn is not None:
            try:
                fn()
            except Exception:
                self.handler_errors += 1
                log.exception("call_soon_threadsafe callback raised")

    def sleep(self, delay_s: float) -> LoopFuture:
        """`await host.sleep(s)` inside an async handler."""
        fut = LoopFuture()
        self.call_later(delay_s, fut.set_result)
        return fut

    def create_future(self) -> LoopFuture:
        """A future that handler coroutines on this loop can await; set it from the loop thread."""
        return LoopFuture()

    def _run_timers(self) -> None:
        timers = self._timers
        now = self.now
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            if timer.interval:
                # Next tick from the schedule, not from now; skip missed ticks instead of bursting.
                nxt = timer.when + timer.interval
                if nxt <= now:
                    nxt = now + timer.interval
                timer.when = nxt
                heapq.heappush(timers, (nxt, next(self._timer_seq), timer))
            try:
                timer.fn()
            except Exception:
                self.handler_errors += 1
                log.exception("timer callback raised", callback=repr(timer.fn))

    # ------------------------------------------------------------------ coroutine handlers
    def _start_task(self, session: Session | None, coro: Any) -> None:
        if not hasattr(coro, "send"):
            raise TypeError(f"a handler returned {coro!r}; handlers return None or a coroutine")
        task = Task(coro, session)
        if session is not None:
            session._task = task
            self._flow(session).held = True  # later input waits undecoded until it finishes
        # First step runs now; the caller (a dispatch loop) continues with later messages itself.
        self._step(task, None, resumed=False)

    def _step(self, task: Task, exc: BaseException | None, resumed: bool = True) -> None:
        if task.done:
            return
        try:
            yielded = task.coro.throw(exc) if exc is not None else task.coro.send(None)
        except StopIteration:
            finished = True
        except Exception:
            self._task_finished(task, "on_message", resumed)
            return
        else:
            finished = False
        if finished:
            # Outside the except block: handlers run from here (queued messages) must not have
            # their tracebacks chained to this StopIteration.
            self._task_finished(task, None, resumed)
            return
        if yielded is None:
            self._ready_tasks.append(task)  # bare yield: run again next turn
        elif isinstance(yielded, LoopFuture):
            yielded.add_done_callback(partial(_append_task, self._ready_tasks, task))
        else:
            task.throw = TypeError(
                f"awaited {type(yielded).__name__}: only host.sleep(), host.create_future() futures "
                "and plain coroutines can be awaited in the framework loop"
            )
            self._ready_tasks.append(task)

    def _task_finished(self, task: Task, failed_in: str | None, resumed: bool) -> None:
        task.done = True
        session = task.session
        if session is None:
            if failed_in is not None:
                self.handler_errors += 1
                log.exception("detached handler coroutine raised")
            return
        if session._task is task:
            session._task = None
        if failed_in is not None:
            self._handler_failed(session, failed_in)
        # A task that finished later (resumed by the loop) lets queued messages through; one that
        # finished in its first step is followed by its caller's own loop (no recursion).
        if session._task is None and not session._backlog and session._state == OPEN:
            self._unhold(session, resumed)
        if resumed and session._state == OPEN and session._task is None and session._backlog:
            self._drain_backlog(session)

    def _run_ready_tasks(self) -> None:
        ready = self._ready_tasks
        for _ in range(len(ready)):
            task = ready.popleft()
            exc = task.throw
            task.throw = None
            self._step(task, exc)

    def _drain_backlog(self, session: Session) -> None:
        backlog = session._backlog
        while backlog and session._task is None and session._state == OPEN:
            self._dispatch_one(session, backlog.popleft())
        if not backlog and session._task is None and session._state == OPEN:
            self._unhold(session, True)

    # ------------------------------------------------------------------ handler calls
    def _call_handler(self, session: Session, fn: Callable[..., Any], *args: Any) -> None:
        try:
            r = fn(*args)
        except Exception:
            self._handler_failed(session, getattr(fn, "__name__", "handler"))
            return
        if r is not None:
            # on_connected's coroutine orders later messages behind it; others run detached.
            ordered = session._state <= OPEN and session._task is None
            self._start_task(session if ordered else None, r)

    def _handler_failed(self, session: Session, where: str) -> None:
        """Log the current exception; close the session or keep it (settings.session.handler_errors)."""
        self.handler_errors += 1
        log.exception("session handler raised", session=str(session.id), handler=where)
        if self._close_errors and session._state <= OPEN:
            self._close_session(session, f"handler error in {where}")

    def _dispatch(self, session: Session, msgs: list[Any]) -> None:
        if session._task is not None or session._backlog:
            self._defer(session, msgs)
            return
        handler = session.on_message
        for i, msg in enumerate(msgs):
            if session._state != OPEN:
                return
            try:
                r = handler(msg)
            except Exception:
                self._handler_failed(session, "on_message")
                continue
            if r is not None:
                self._start_task(session, r)
                if session._task is not None:
                    self._defer(session, msgs[i + 1 :])
                    return

    @staticmethod
    def _defer(session: Session, msgs: list[Any]) -> None:
        """Queue messages behind a running async handler (the deque exists only while needed:
        an empty deque costs ~600 bytes per session)."""
        if not session._backlog:
            session._backlog = deque(msgs)
        else:
            session._backlog.extend(msgs)

    def _dispatch_one(self, session: Session, msg: Any) -> None:
        try:
            r = session.on_message(msg)
        except Exception:
            self._handler_failed(session, "on_message")
            return
        if r is not None:
            self._start_task(session, r)

    # ------------------------------------------------------------------ session lifecycle
    def _new_session(
        self, session_class: type[Session], sock: socket.socket, peer: Any, state: int
    ) -> Session:
        session = session_class()
        sid = self.registry.add(session)
        session._attach(self, sid, sock, peer, state)
        session._decoder = self._decoder_for(session_class)
        return session

    def _open_session(self, session: Session) -> None:
        """The connection is up: on_connected, then start receiving."""
        session._state = OPEN
        session._last_frame = self.now
        self.sessions_opened += 1
        self._call_handler(session, session.on_connected)
        if session._state == CLOSED:
            return
        # Also when on_connected closed it (CLOSING): the receive sees the peer's FIN, which ends
        # the graceful close at once instead of at drain_timeout_s.
        if session._out and not session._dirty:
            session._dirty = True
            self._dirty.append(session)
        if self._streams:
            ctx = session._ctx
            assert ctx.sock is not None  # attached with its socket, released only after close
            ctx.stream = self._sp.stream_open(ctx.sock, ctx)
            if not ctx.stream:
                self._abort_session(session, "receive could not be posted")
            return
        self._post_recv(session._ctx, None)

    def _post_recv(self, ctx: OpContext, buf: Any) -> None:
        assert ctx.sock is not None  # released only once no operation of the session is pending
        if self._provided:
            # No buffer on loan while the receive waits: the provider picks memory when data
            # arrives (so nothing to defer either; its own memory is bounded).
            if self._io.recv_async_provided(ctx.sock, self._recv_provided_cb, ctx):
                ctx.pending += 1
            else:
                session = ctx.ref()
                if session is not None:
                    self._abort_session(session, "receive could not be posted")
            return
        pool = self._pool
        if buf is None:
            buf = pool.acquire_small()
            if buf is None:
                # Backpressure: no buffer until one is released; counted and logged, retried later.
                self.recv_deferred += 1
                if not self._starving:
                    self._starving = True
                    log.warning(
                        "receive buffer pool exhausted; deferring receives",
                        capacity=pool.capacity,
                        max_buffers=pool.max_buffers,
                    )
                self._starved.append(ctx)
                return
        ctx.recv_buf = buf
        if not pool.recv_into(ctx.sock, buf, self._on_recv, ctx):
            ctx.recv_buf = None
            pool.release(buf)
            session = ctx.ref()
            if session is not None:
                self._abort_session(session, "receive could not be posted")
            return
        ctx.pending += 1

    def _resume_starved(self) -> None:
        starved = self._starved
        pool = self._pool
        while starved and pool.available:
            ctx = starved.popleft()
            session = ctx.ref()
            if session is not None and session._state <= CLOSING and not ctx.closed:
                self._post_recv(ctx, None)
        if not starved and self._starving:
            self._starving = False
            log.info("receive buffer pool recovered", deferred_total=self.recv_deferred)

    def _close_session(self, session: Session, reason: str) -> None:
        """Graceful: refuse new sends, flush queued output, half-close, wait (bounded) for EOF."""
        state = session._state
        if state >= CLOSING:
            return
        if state == CONNECTING:
            self._finalize(session, reason)
            return
        session._state = CLOSING
        session._close_reason = reason
        session._close_deadline = self.now + self._drain_timeout
        session._backlog = ()
        self._closing.add(session)
        flow = session._flow
        if flow is not None:
            self._drop_input(session, flow)
            if flow.rpaused:
                self._update_reading(session, flow)  # read (and discard) until the peer's EOF
        if not session._out and not session._sending:
            if self._streams and session._ctx.stream:
                self._watch_stream(session)  # half-closes once the provider has written it all
            else:
                self._half_close(session)

    def _half_close(self, session: Session) -> None:
        """Everything queued was sent: send FIN. Keep reading (and discarding) until the peer's EOF,
        so unread input never turns our close into a reset that could destroy data in flight."""
        session._drained = True
        if session._eof or self._drain_timeout <= 0:
            self._finalize(session, session._close_reason)
            return
        try:
            session._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finalize(session, session._close_reason)

    def _abort_session(self, session: Session, reason: str) -> None:
        """Close at once, dropping queued output."""
        if session._state == CLOSED:
            return
        if reason == "slow consumer":
            self.slow_consumers += 1
            try:
                # Reset rather than leave megabytes to an orphaned socket that is not read.
                session._sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
        # A peer that resets or vanishes mid-send is ordinary client behaviour, not news.
        level = log.debug if close_code(reason)[0] in PEER_CODES else log.info
        level("session aborted", session=str(session.id), peer=session.peer, reason=reason)
        self._finalize(session, reason)

    def _finalize(self, session: Session, reason: str) -> None:
        """The session is over: free its slot, stop its I/O, tell the handler."""
        if session._state == CLOSED:
            return
        session._state = CLOSED
        session._close_reason = reason
        self._closing.discard(session)
        self.registry.remove(session)
        self.sessions_closed += 1
        code, io_error = close_code(reason)
        closes = self.closes
        closes[code] = closes.get(code, 0) + 1
        if io_error is not None:
            self.io_errors[io_error] = self.io_errors.get(io_error, 0) + 1
        ctx = session._ctx
        ctx.closed = True
        sock = session._sock
        provider = self.provider
        if provider is not None:
            provider.unregister_socket(sock)  # pending operations complete as CANCELLED (stale)
        if ctx.pending == 0:
            self._release_ctx(ctx)
        session._out.clear()
        session._backlog = ()
        session._out_bytes = 0
        flow = session._flow
        if flow is not None:
            self._drop_input(session, flow)
            self._out_acct -= flow.out_acct
            flow.out_acct = 0
        task = session._task
        if task is not None:
            session._task = None
            task.done = True
            try:
                task.coro.close()
            except Exception:
                log.exception("closing a handler coroutine raised", session=str(session.id))
        log.debug("session closed", session=str(session.id), reason=reason)
        # Also after a failed outgoing connect, so bots learn why.
        self._call_handler(session, session.on_disconnected, reason)

    def _drop_input(self, session: Session, flow: Flow) -> None:
        """A closing session's buffered input is never decoded: free it (and its accounting)."""
        flow.held = False
        decoder = session._decoder
        if decoder is not None:
            self._in_bytes -= decoder.clear()

    def _release_ctx(self, ctx: OpContext) -> None:
        """No operation of a finished session is in flight: the socket and buffer can go."""
        buf = ctx.recv_buf
        if buf is not None:
            ctx.recv_buf = None
            self._pool.release(buf)
        sock = ctx.sock
        if sock is not None:
            ctx.sock = None
            try:
                sock.close()
            except OSError:
                pass

    def _drop_stale(self, ctx: OpContext, buf: Buffer | None = None) -> None:
        """A completion whose session is gone: resolve() counts and logs it; the detached receive
        buffer goes back, and the socket once nothing else of it is in flight."""
        self.registry.resolve(ctx)
        if buf is not None:
            self._pool.release(buf)
        if ctx.pending <= 0 and ctx.closed:
            self._release_ctx(ctx)

    # ------------------------------------------------------------------ completions
    def _on_recv(self, result: CompletionResult, ctx: OpContext) -> None:
        """A receive completed, into the buffer on loan in `ctx.recv_buf` or, with provided buffers
        (no buffer on loan), into provider-picked memory: `result.data` is valid only inside this
        callback; the decoder copies nothing but an incomplete tail, and messages own their bytes."""
        ctx.pending -= 1
        buf = ctx.recv_buf
        ctx.recv_buf = None
        # registry.resolve, inlined for the hot path; resolve() itself counts and logs a stale one.
        registry = self.registry
        slot = ctx.slot
        session = registry._sessions[slot] if registry._generations[slot] == ctx.generation else None
        if session is None:
            self._drop_stale(ctx, buf)
            return
        n = result.bytes_transferred
        if n == 0 or result.status != _SUCCESS:
            if buf is not None:
                self._pool.release(buf)
            self._recv_ended(session, result.status, result.error_code)
            return
        session.bytes_in += n
        self.bytes_in += n
        if session._state != OPEN:
            self._post_recv(ctx, buf)  # closing: read and discard until EOF
            return
        data = result.data if buf is None else buf.view[:n]
        assert data is not None  # a successful provided receive carries its bytes
        msgs = self._decode(session, data)
        if msgs is None:
            if buf is not None:
                self._pool.release(buf)
            return
        flow = session._flow
        if flow is not None and flow.rpaused:  # flow control: the next receive waits for the resume
            if buf is not None:
                self._pool.release(buf)
            flow.parked = True
            if msgs:
                self._deliver(session, msgs)
            return
        if buf is None:  # provided buffers: nothing on loan, nothing to size
            assert ctx.sock is not None  # the session is open
            if self._io.recv_async_provided(ctx.sock, self._recv_provided_cb, ctx):
                ctx.pending += 1
            else:
                self._abort_session(session, "receive could not be posted")
                return
            if msgs:
                self._deliver(session, msgs)
            return
        # Size class of the next receive buffer (see _SMALL_RECV_BUFFER).
        pool = self._pool
        size = buf.size
        if n == size:
            ctx.short_reads = 0
            if size != pool.buffer_size:  # a small buffer filled up: more is probably waiting
                pool.release(buf)
                buf = pool.acquire()  # cannot hit the cap: one buffer was just released
        elif pool.small_size and size == pool.buffer_size:
            if n < pool.small_size:
                ctx.short_reads += 1
                if ctx.short_reads >= _SHRINK_AFTER_READS:
                    ctx.short_reads = 0
                    pool.release(buf)
                    buf = pool.acquire_small()
            else:
                ctx.short_reads = 0
        # _post_recv's common case inlined (a buffer in hand): one call less per read.
        if buf is None:
            self._post_recv(ctx, None)  # no buffer of the wanted size: the deferral path
        else:
            ctx.recv_buf = buf
            if pool.recv_into(ctx.sock, buf, self._on_recv, ctx):
                ctx.pending += 1
            else:
                ctx.recv_buf = None
                pool.release(buf)
                self._abort_session(session, "receive could not be posted")
                return
        if msgs:
            self._deliver(session, msgs)

    def _recv_ended(self, session: Session, status: int, code: int) -> None:
        """A receive got EOF (0 bytes; status SUCCESS) or failed."""
        if status == _SUCCESS:
            session._eof = True
            if session._state == CLOSING:
                if session._drained:
                    self._finalize(session, session._close_reason)
                # else: the flush completes first, then finalizes (EOF already seen)
            else:
                self._eof_received(session)
        else:
            self._abort_session(session, _describe_failure("recv", status, code))

    # ------------------------------------------------------------------ streams
    def _on_stream_data(self, ctx: OpContext, data: memoryview) -> None:
        """Bytes arrived on a session's stream (provider memory, valid only inside this call; the
        decoder copies nothing but an incomplete tail or held input, and messages own their bytes)."""
        registry = self.registry  # resolve(), inlined as in _on_recv
        slot = ctx.slot
        session = registry._sessions[slot] if registry._generations[slot] == ctx.generation else None
        if session is None:  # cannot happen while the stream is closed with its session; counted
            registry.resolve(ctx)
            return
        n = len(data)
        session.bytes_in += n
        self.bytes_in += n
        if session._state != OPEN:
            return  # closing: read and discard until EOF
        flow = session._flow
        if flow is not None and flow.held:
            self._hold(session, flow, data)
            return
        msgs = self._decode(session, data)
        if msgs:
            self._deliver(session, msgs)

    def _flow(self, session: Session) -> Flow:
        flow = session._flow
        if flow is None:
            flow = session._flow = Flow()
        return flow

    def _decode(self, session: Session, data: memoryview) -> list[Any] | None:
        """The messages complete in `data`, within the session's read budget for this turn (the
        decoder keeps an incomplete tail, and holds what the budget leaves; frames are counted),
        or None when the session was closed (a protocol error, the memory budget)."""
        # What the session already decoded this turn (frames << 32 | bytes) is kept in a per-turn
        # dict, not on the session, and only once it is over a quarter of the budget: a session
        # that had frames this turn (_last_frame is this turn's `now`) but no entry used at most
        # that quarter. So ping-pong and handshake bursts cost neither a dict entry nor memory.
        if session._last_frame == self.now:
            spent = self._spent.get(session, self._budget_share)
            frames_left = self._budget_frames - (spent >> 32)
            bytes_left = self._budget_bytes - (spent & _LOW32)
        else:
            spent = None
            frames_left = self._budget_frames
            bytes_left = self._budget_bytes
        decoder = session._decoder
        assert decoder is not None  # set when the session was attached
        before = len(decoder._buf)
        msgs: list[Any] = []
        try:
            frames = decoder.feed(data, msgs, frames_left, bytes_left)
        except ProtocolError as exc:
            self.protocol_errors += 1
            self._abort_session(session, f"protocol error: {exc}")
            return None
        after = len(decoder._buf)
        used = self._budget_bytes - bytes_left + len(data) + before - after
        used_frames = self._budget_frames - frames_left + frames
        if spent is not None or used_frames > self._share_frames or used > self._share_bytes:
            self._spent[session] = used_frames << 32 | (used if used < _LOW32 else _LOW32)
        if frames:
            session._last_frame = self.now
            session.frames_in += frames
            self.frames_in += frames
        if before or after:  # the slow path: bytes are buffered (a partial frame, or held input)
            self._buffered(session, self._flow(session), after - before, before == 0)
            if session._state != OPEN:
                return None
        return msgs

    def _hold(self, session: Session, flow: Flow, data: memoryview) -> None:
        """Input behind held input or a running ordered handler: kept undecoded, in order."""
        decoder = session._decoder
        assert decoder is not None
        try:
            decoder.push(data)
        except ProtocolError as exc:
            self.protocol_errors += 1
            self._abort_session(session, f"protocol error: {exc}")
            return
        self._buffered(session, flow, len(data), False)

    def _buffered(self, session: Session, flow: Flow, grown: int, new_partial: bool) -> None:
        """A session's decoder buffer changed by `grown` bytes: account it, queue held frames for
        the next turns, pause reading over read_pause_bytes, and keep the memory budget."""
        self._in_bytes += grown
        decoder = session._decoder
        assert decoder is not None
        if decoder.has_frame():  # the budget ran out with frames left, or they wait behind others
            flow.held = True
            if not flow.queued and session._task is None and not session._backlog and not session._paused:
                flow.queued = True
                self._held_ready.append(session)
        if grown > 0:
            if flow.held and not flow.rpaused:
                self._update_reading(session, flow)
            budget = self._memory_budget
            if budget and self._in_bytes + self._out_acct > budget:
                if new_partial and not flow.held and decoder.pending_frame_size() > self._budget_bytes:
                    # Over budget, a new large frame is refused before it grows any further.
                    self.memory_sheds += 1
                    self._abort_session(session, "memory budget exceeded: large frame refused")
                    return
                self._enforce_memory_budget()

    def _unhold(self, session: Session, close_on_eof: bool) -> None:
        """Nothing runs ahead of the session's input any more: held frames are queued for the next
        turns, or input is decoded on arrival again (and a half-closed peer's session closes,
        unless the caller is still dispatching a batch)."""
        flow = session._flow
        if flow is not None and flow.held:
            if session._paused:
                return  # output behind: _writing_resumed unholds
            decoder = session._decoder
            if decoder is not None and decoder.has_frame():
                if not flow.queued:
                    flow.queued = True
                    self._held_ready.append(session)
                return
            flow.held = False
            if flow.rpaused:
                self._update_reading(session, flow)
        if close_on_eof and session._eof and session._state == OPEN:
            self._close_session(session, "peer closed")  # the half-closed peer's last reply is out

    def _serve_held(self) -> None:
        """One read budget for each session with held frames, round-robin; sessions with frames
        left go to the back of the queue, behind the others."""
        ready = self._held_ready
        for _ in range(len(ready)):
            session = ready.popleft()
            flow = session._flow
            assert flow is not None  # queued with held frames
            flow.queued = False
            if session._state != OPEN or session._task is not None or session._backlog or session._paused:
                continue  # closed; an ordered handler runs, or output is behind: their ends unhold
            # No new bytes: the decoder drains its hold within this turn's budget, accounted as
            # any arrival's decode is.
            msgs = self._decode(session, _NO_BYTES)
            if msgs is None:
                continue
            if msgs:
                self._deliver(session, msgs)
            if session._state == OPEN and session._task is None and not session._backlog:
                self._unhold(session, True)
            if flow.rpaused and session._state == OPEN:
                self._update_reading(session, flow)

    def _update_reading(self, session: Session, flow: Flow) -> None:
        """Pause reading while held input exceeds read_pause_bytes (resume under half of it) or
        the session's output is over its high-water mark (asyncio's pause_reading/resume_reading:
        the peer's bytes wait in the kernel, and TCP pushes back on the sender)."""
        if session._state == OPEN:
            decoder = session._decoder
            held = len(decoder._buf) if flow.held and decoder is not None else 0
            limit = self._read_pause // 2 if flow.rpaused else self._read_pause
            want = session._paused or held > limit or (flow.held and not self._streams)
        else:
            want = False  # closing: read (and discard) until the peer's EOF
        if want == flow.rpaused:
            return
        flow.rpaused = want
        ctx = session._ctx
        if self._streams:
            if ctx.stream:
                if want:
                    self.read_pauses += 1
                    self._sp.stream_pause_reading(ctx.stream)
                else:
                    self._sp.stream_resume_reading(ctx.stream)
        elif want:
            self.read_pauses += 1  # _on_recv parks the next receive
        elif flow.parked:
            flow.parked = False
            self._post_recv(ctx, None)

    def _on_stream_event(self, ctx: OpContext, kind: int, code: int) -> None:
        session = self.registry.resolve(ctx)
        if session is None:
            return
        if kind == STREAM_DRAINED:
            self._stream_drained(session)
        elif kind == STREAM_EOF:
            self._recv_ended(session, _SUCCESS, 0)
        else:
            self._abort_session(session, _describe_failure("stream", Status.ERROR, code))

    def _watch_stream(self, session: Session) -> None:
        """Ask the provider for STREAM_DRAINED at the level this session waits for: everything
        written (closing) or the low-water mark (paused)."""
        low = 0 if session._state == CLOSING else self._write_low
        if self._sp.stream_watch(session._ctx.stream, low):
            self._stream_drained(session)

    def _stream_drained(self, session: Session) -> None:
        unsent = self._sp.stream_queued(session._ctx.stream)
        session._inflight = unsent if unsent > 0 else 0
        if session._paused and session._out_bytes + session._inflight <= self._write_low:
            self._writing_resumed(session)
        if session._state == CLOSING and not session._out:
            if unsent <= 0:
                self._half_close(session)
            else:
                self._watch_stream(session)
        elif session._paused and session._state == OPEN and not session._out:
            self._watch_stream(session)

    def _output_behind(self, session: Session) -> None:
        """The session's output is over its high-water mark (Session._over_high_water, after
        on_pause_writing): its input waits undecoded and reading pauses until the output drains;
        its queued bytes count toward the memory budget."""
        flow = self._flow(session)
        if flow.out_acct == 0:  # just went over: the slow-consumer clock starts
            flow.written = -1
            flow.progress_at = self.now
        if session._state == OPEN:
            flow.held = True
            if not flow.rpaused:
                self._update_reading(session, flow)
        total = session._out_bytes + session._inflight
        self._out_acct += total - flow.out_acct
        flow.out_acct = total
        budget = self._memory_budget
        if budget and self._in_bytes + self._out_acct > budget:
            self._enforce_memory_budget()

    def _writing_resumed(self, session: Session) -> None:
        """The output drained under the low-water mark: the producer and reading resume."""
        session._paused = False
        flow = session._flow
        if flow is not None:
            self._out_acct -= flow.out_acct
            flow.out_acct = 0
            if session._state == OPEN and session._task is None and not session._backlog:
                self._unhold(session, True)
            if flow.rpaused and session._state == OPEN:
                self._update_reading(session, flow)
        self._call_handler(session, session.on_resume_writing)

    def _enforce_memory_budget(self) -> None:
        """All buffered input and output is over server.memory_budget_bytes: close the largest
        holders first until it is back under 90 % of the budget (at most one pass per turn; each
        shed is counted and logged with its reason)."""
        if self._memory_turn == self._turn:
            return
        self._memory_turn = self._turn
        holders: list[tuple[int, Session]] = []
        total_out = 0
        over_high = 0
        for session in self.registry:
            decoder = session._decoder
            held = len(decoder._buf) if decoder is not None else 0
            out = session.queued_bytes
            total_out += out
            flow = session._flow
            if flow is not None and flow.out_acct:
                flow.out_acct = out
                over_high += out
            if held + out:
                holders.append((held + out, session))
        self._out_acct = over_high  # the estimate the triggers compare is exact again
        total = self._in_bytes + total_out
        budget = self._memory_budget
        if total <= budget:
            return
        target = budget * 9 // 10
        holders.sort(key=lambda h: h[0], reverse=True)
        shed = 0
        for size, session in holders:
            if total <= target:
                break
            total -= size
            shed += 1
            self.memory_sheds += 1
            self._abort_session(session, "memory budget exceeded")
        log.warning(
            "memory budget exceeded; largest sessions shed",
            budget_bytes=budget,
            shed=shed,
            buffered_bytes=total,
            memory_sheds_total=self.memory_sheds,
        )

    def _fanout(self, sessions: list[Session], frame: bytes) -> int:
        """A broadcast's open members with nothing queued: one provider call hands `frame` to all
        their streams; only members it flags (failed, or over the high-water mark) are looked at
        again. Returns how many took the frame."""
        n = len(frame)
        now = self.now
        flagged = self._sp.stream_send_many([s._ctx.stream for s in sessions], frame, self._write_high)
        for session in sessions:
            session.frames_out += 1
            session.bytes_out += n
            session._last_send = now
        took = len(sessions)
        self.frames_out += took
        self.bytes_out += n * took
        for i in flagged:
            session = sessions[i]
            unsent = self._sp.stream_queued(session._ctx.stream)
            if unsent < 0:
                took -= 1
                self._abort_session(session, "send error: " + describe(-unsent))
                continue
            session._inflight = unsent
            if not session._over_high_water():  # closed as a slow consumer
                took -= 1
            elif session._paused:
                self._watch_stream(session)
        return took

    def _stream_unsent(self, session: Session) -> int:
        """Bytes handed to the provider and not yet written (the slow path of the high-water
        check asks; the hot path uses the figure from the last flush)."""
        unsent = self._sp.stream_queued(session._ctx.stream) if session._ctx.stream else 0
        return unsent if unsent > 0 else 0

    def _deliver(self, session: Session, msgs: list[Any]) -> None:
        """Hand decoded messages to the session's handler."""
        # Admission (Server: first-message deadline, rate limits; framework/session/limits.py): an
        # accepted session's first message and, with limits on, every batch. None: no check.
        limiter = session._limiter
        if limiter is not None:
            msgs = limiter.admit(self, session, msgs)
            if not msgs:
                return
        if len(msgs) == 1 and session._task is None and not session._backlog and session._state == OPEN:
            # One message, nothing queued before it (ping-pong): no dispatch loop.
            try:
                r = session.on_message(msgs[0])
            except Exception:
                self._handler_failed(session, "on_message")
                return
            if r is not None:
                self._start_task(session, r)
        else:
            self._dispatch(session, msgs)

    def _eof_received(self, session: Session) -> None:
        # The peer finished sending (it may still read: a half-close). Messages already received
        # are still handled - an async handler may be running - and their replies flushed; then
        # the session closes.
        flow = session._flow
        if session._task is None and not session._backlog and (flow is None or not flow.held):
            self._close_session(session, "peer closed")

    def _on_send(self, result: CompletionResult, ctx: OpContext) -> None:
        ctx.pending -= 1
        registry = self.registry  # resolve(), inlined as in _on_recv
        slot = ctx.slot
        session = registry._sessions[slot] if registry._generations[slot] == ctx.generation else None
        if session is None:
            self._drop_stale(ctx)
            return
        sent = session._inflight
        session._inflight = 0
        session._sending = False
        if result.status != _SUCCESS:
            self._abort_session(session, _describe_failure("send", result.status, result.error_code))
            return
        session.bytes_out += sent
        self.bytes_out += sent
        if session._paused and session._out_bytes <= self._write_low:
            self._writing_resumed(session)
        if session._out:
            if not session._dirty and session._state != CLOSED:
                session._dirty = True
                self._dirty.append(session)
        elif session._state == CLOSING:
            self._half_close(session)

    def _on_connect(self, result: CompletionResult, ctx: OpContext) -> None:
        ctx.pending -= 1
        session = self.registry.resolve(ctx)
        if session is None:
            if ctx.pending <= 0 and ctx.closed:
                self._release_ctx(ctx)
            return
        if result.status != _SUCCESS:
            reason = "connect failed: " + (
                "connection refused"
                if result.error_code == ErrorCode.CONNECTION_REFUSED
                else _describe_failure("connect", result.status, result.error_code)
            )
            self._finalize(session, reason)
            return
        self._open_session(session)

    # ------------------------------------------------------------------ flush
    def _flush(self) -> None:
        """Each dirty session's queued frames leave in one gathered write: handed to its stream
        (the provider writes them in order and reports what is still unsent, for the high-water
        check) or, without streams, one send operation at a time."""
        dirty = self._dirty
        streams = self._streams
        stream_send = self._stream_send
        send_async = self._io.send_async
        on_send = self._on_send
        now = self.now
        frames = 0
        for session in dirty:
            session._dirty = False
            out = session._out
            # Only OPEN (1) and CLOSING (2) sessions send; one send in flight keeps frames in order.
            if session._sending or not out or not 0 < session._state < CLOSED:
                continue
            if len(out) == 1:
                data = out[0]
                frames += 1
            else:
                data = b"".join(out)
                frames += len(out)
            out.clear()
            session._out_bytes = 0
            session._last_send = now
            ctx = session._ctx
            if streams:
                n = len(data)
                session.bytes_out += n
                self.bytes_out += n
                unsent = stream_send(ctx.stream, data)
                if unsent < 0:
                    self._abort_session(session, "send error: " + describe(-unsent))
                    continue
                session._inflight = unsent
                if session._state == CLOSING or session._paused:
                    self._watch_stream(session)
                continue
            session._inflight = len(data)
            session._sending = True
            if send_async(session._sock, data, on_send, ctx):
                ctx.pending += 1
            else:
                session._sending = False
                self._abort_session(session, "send could not be posted")
        self.frames_out += frames
        dirty.clear()

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        now = self.now
        for session in list(self._closing):
            if session._state == CLOSING and now >= session._close_deadline:
                self._finalize(session, session._close_reason)
        idle = self._idle_timeout
        beat = self._heartbeat
        slow = self._slow_timeout
        if idle <= 0 and beat <= 0 and slow <= 0:
            return
        for session in self.registry:
            if session._state != OPEN:
                continue
            if session._paused and slow > 0 and self._slow_consumer(session, now, slow):
                continue
            if idle > 0 and now - session._last_frame > idle:
                self.idle_timeouts += 1
                self._abort_session(session, "idle timeout")
            elif beat > 0 and now - session._last_send >= beat and not session._out:
                # A zero-length frame: keeps the peer's idle timer from firing; never delivered.
                session._last_send = now
                session._queue(HEARTBEAT_FRAME)
                session.frames_out -= 1

    def _slow_consumer(self, session: Session, now: float, timeout: float) -> bool:
        """A session over its high-water mark whose peer has taken no byte for `timeout` seconds
        is reset (True). One that reads, however slowly, is only paused."""
        flow = self._flow(session)
        # bytes_out counts bytes handed to a stream (minus the unsent rest) or each completed send
        written = session.bytes_out - (self._stream_unsent(session) if self._streams else 0)
        if written != flow.written:
            flow.written = written
            flow.progress_at = now
            return False
        if now - flow.progress_at < timeout:
            return False
        self._abort_session(session, "slow consumer")
        return True

    @property
    def loop_turn(self) -> int:
        """The loop turn in progress (read budgets are per session and per turn)."""
        return self._turn

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of this host: sessions, frames and bytes, closes by reason, buffers."""
        provider = self.provider
        out: dict[str, Any] = {
            "sessions": len(self.registry),
            "sessions_opened": self.sessions_opened,
            "sessions_closed": self.sessions_closed,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "stale_completions": self.registry.stale_completions,
            "handler_errors": self.handler_errors,
            "protocol_errors": self.protocol_errors,
            "slow_consumers": self.slow_consumers,
            "read_pauses": self.read_pauses,
            "memory_sheds": self.memory_sheds,
            "input_buffered_bytes": self._in_bytes,
            "sessions_with_held_input": len(self._held_ready),
            "idle_timeouts": self.idle_timeouts,
            "recv_deferred": self.recv_deferred,
            "closes": dict(self.closes),
            "io_errors": dict(self.io_errors),
            "provided_buffers": self._provided,
            "streams": self._streams,
            "backend": provider.name if provider is not None else None,
        }
        if self.pool is not None:
            out["buffers"] = self.pool.statistics()
        return out

    def _log_stats(self) -> None:
        """The periodic stats record (stats.interval_s). Rates are over the interval; each name
        says what it counts (the provider's registered sockets include the listeners, and its
        operations in flight the accepts kept posted, so neither is a session count)."""
        now = self.now
        t0, fi, fo, bi, bo, so, sc = self._stats_mark
        dt = max(now - t0, 1e-9)
        self._stats_mark = (
            now, self.frames_in, self.frames_out, self.bytes_in, self.bytes_out,
            self.sessions_opened, self.sessions_closed,
        )  # fmt: skip
        ps = self._io.get_statistics()
        log.info(
            "stats",
            interval_s=round(dt, 1),
            sessions=len(self.registry),
            sessions_opened=self.sessions_opened - so,
            sessions_closed=self.sessions_closed - sc,
            frames_in_per_s=round((self.frames_in - fi) / dt, 1),
            frames_out_per_s=round((self.frames_out - fo) / dt, 1),
            bytes_in_per_s=round((self.bytes_in - bi) / dt),
            bytes_out_per_s=round((self.bytes_out - bo) / dt),
            input_buffered_bytes=self._in_bytes,
            handler_errors_total=self.handler_errors,
            protocol_errors_total=self.protocol_errors,
            recv_deferred_total=self.recv_deferred,
            stale_completions_total=self.registry.stale_completions,
            backend=ps.backend,
            registered_sockets=ps.active_connections,
            operations_in_flight=ps.pending_operations,
            **self._stats_extra(),
        )

    def _stats_extra(self) -> dict[str, Any]:
        """More fields for the stats record (the server adds its listeners and posted accepts)."""
        return {}

    # ------------------------------------------------------------------ the loop
    def run_once(self, timeout_ms: int | None = None) -> int:
        """One loop turn; returns the number of operation completions processed (stream arrivals
        and events are not counted). Loop thread only."""
        if timeout_ms is None:
            timeout_ms = self._poll_ms
        if self._ready_tasks or self._dirty or self._held_ready:
            timeout_ms = 0
        elif self._timers:
            until = self._timers[0][0] - _monotonic()
            if until <= 0:
                timeout_ms = 0
            else:
                timeout_ms = (
                    min(timeout_ms, int(until * 1000) + 1) if timeout_ms >= 0 else int(until * 1000) + 1
                )
        sampled = self.sample_turn
        if sampled:
            timeout_ms = 0  # the timed turn measures work, not an idle wait for I/O
            t0 = _perf_counter()
        results = self._results
        n = self._io.process_completions(timeout_ms, self._batch, results)
        self._loop_calls += 1
        if n < 0:
            n = self._retry_completions(results)
        if self._loop_calls >= _ERROR_RATE_WINDOW:
            self._check_error_rate()
        self.now = _monotonic()
        if self._timers and self._timers[0][0] <= self.now:
            self._run_timers()
        if self._ready_tasks:
            self._run_ready_tasks()
        self._turn += 1  # arrivals of the next process_completions share this turn's budgets
        if self._spent:
            self._spent.clear()
        if self._held_ready:
            self._serve_held()
        if self._starved and self._pool.available:
            self._resume_starved()
        if self._dirty:
            self._flush()
        if sampled:
            self.sample_turn = False
            observer = self.turn_observer
            if observer is not None:
                observer(_perf_counter() - t0)
        return n

    def _retry_completions(self, results: list[CompletionResult]) -> int:
        """A failed process_completions is retried with back-off (10 ms << attempt, 3 attempts in
        all); then ProviderError (docs/PROVIDER.md, "process_completions")."""
        provider = self._io
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            self.provider_failures += 1
            self._loop_failures += 1
            err = results[0] if results else None
            if attempt == _MAX_ATTEMPTS:
                log.error(
                    "process_completions failed after retries",
                    backend=provider.name,
                    attempts=_MAX_ATTEMPTS,
                    error=repr(err),
                    detail=str(err.user_context) if err is not None else "",
                )
                raise ProviderError(
                    f"{provider.name}: process_completions failed {_MAX_ATTEMPTS} times: {err!r}"
                )
            log.warning(
                "process_completions failed; retrying",
                backend=provider.name,
                attempt=attempt,
                max_attempts=_MAX_ATTEMPTS,
                error=repr(err),
            )
            time.sleep(_RETRY_BACKOFF_S * (1 << (attempt - 1)))
            n = provider.process_completions(0, self._batch, results)
            self._loop_calls += 1
            if n >= 0:
                return n
        raise AssertionError("unreachable")

    def _check_error_rate(self) -> None:
        """Warn when more than 5 % of loop calls failed."""
        calls, failures = self._loop_calls, self._loop_failures
        self._loop_calls = self._loop_failures = 0
        if failures * 100 > _ERROR_RATE_PERCENT * calls:
            log.warning(
                "high completion error rate",
                failures=failures,
                calls=calls,
                rate_percent=round(100 * failures / calls, 1),
                backend=self._io.name,
            )

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop until `predicate()` is true (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else _monotonic() + timeout
        while not predicate():
            if deadline is not None:
                left = deadline - _monotonic()
                if left <= 0:
                    return predicate()
                self.run_once(min(self._poll_ms, int(left * 1000) + 1))
            else:
                self.run_once()
        return True

    # ------------------------------------------------------------------ outgoing sessions
    def connect(
        self,
        host: str,
        port: int,
        session_class: type[Session] | None = None,
        *,
        timeout_s: float | None = 10.0,
    ) -> Session:
        """Open an outgoing session on this loop. It is returned at once (`connected` False);
        on_connected runs when the connect completes; a failure calls on_disconnected with the
        reason. Sends before that are queued. Loop thread only."""
        if not self._started:
            self._open_provider()
        cls = session_class or self.session_class
        try:
            family, type_, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise ConnectionError(
                f"connect to {host}:{port} failed: cannot resolve {host!r}: {exc.strerror}"
            ) from None
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        session = self._new_session(cls, sock, address, CONNECTING)
        ctx = session._ctx
        provider = self._io
        if not provider.register_socket(sock, ctx):
            self._finalize(session, f"connect failed: {provider.last_error or 'register failed'}")
            return session
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        if provider.connect_async(sock, address, self._on_connect, ctx, timeout_ms):
            ctx.pending += 1
        else:
            self._finalize(session, "connect failed: not posted")
        return session

    # ------------------------------------------------------------------ draining (shutdown / close)
    def _begin_drain(self, reason: str, notify: bool) -> None:
        """on_shutdown (if `notify`) on every session, then a graceful close of each."""
        self.now = _monotonic()
        sessions = list(self.registry)
        if notify:
            for session in sessions:
                if session._state == OPEN:
                    self._call_handler(session, session.on_shutdown)
        for session in sessions:
            self._close_session(session, reason)
        self._drain_total = len(sessions)
        self._drain_deadline = self.now + self._drain_timeout
        self._all_drained_at: float | None = None

    def _drain_finished(self) -> bool:
        """Every session gone, or the deadline passed, or every remaining session has sent all its
        output and its FIN and had a short linger to see the peer's EOF (a peer that never closes
        must not hold the shutdown for the whole drain timeout)."""
        if not len(self.registry) or self.now >= self._drain_deadline:
            return True
        if all(s._drained for s in self.registry):
            if self._all_drained_at is None:
                self._all_drained_at = self.now
            return self.now - self._all_drained_at >= _DRAIN_LINGER_S
        self._all_drained_at = None
        return False

    def _end_drain(self) -> tuple[int, int]:
        """Close what is left (forced if its output was not fully sent), then the provider.
        Returns (drained, forced)."""
        forced = 0
        for session in self.registry:
            if session._drained:
                self._finalize(session, session._close_reason)
            else:
                forced += 1
                self._finalize(session, "drain timeout")
        self._close_provider()
        return self._drain_total - forced, forced

    def _close_provider(self) -> None:
        provider = self.provider
        if provider is not None:
            provider.shutdown()  # every pending op completes CANCELLED -> contexts released
        if self.pool is not None:
            self.pool.close()
        self._timers.clear()
        self._ready_tasks.clear()
        self._starved.clear()
        self._closed = True


__all__ = ["CLOSED", "CLOSING", "CONNECTING", "OPEN", "LoopFuture", "SessionHost", "Task", "Timer"]
