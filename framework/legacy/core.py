"""RAON's completion-port core (IocpCore, IocpObject, OverlappedEx, IoType) on any AsyncIOProvider.

On Windows, RAON associates each socket with a completion port (the completion key is the
`IocpObject`), issues WSASend/WSARecv/AcceptEx/ConnectEx/DisconnectEx with an `OverlappedEx` that
names the operation (`io_type`) and its buffer (`wsa_buf`), and runs `HandleIocp(timeout)`: one
GetQueuedCompletionStatus turn that hands `(IocpObject, OverlappedEx, bytes)` to
`IocpObject::HandleIocp`. `PushIocpJob` is PostQueuedCompletionStatus.

Here the completion port is an `AsyncIOProvider` (epoll, io_uring, ...). Every operation is posted
with the `OverlappedEx` as its context and one bound method of the core as its callback, so a
completion is dispatched to `overlapped.owner.handle_iocp(overlapped, bytes)` whichever loop drives
the provider: `IocpCore.handle_iocp` itself, or a `Server` sharing the provider. The OS-level result
(status, error code, accepted socket) is written into the `OverlappedEx`, where IOCP keeps it too
(OVERLAPPED.Internal); a failed operation is dispatched like any other, as IOCP does.

Threading, as RAON servers use it: any number of worker threads may call `handle_iocp`. Their
calls are serialized by one lock (the providers underneath are single-threaded), so exactly one
worker waits on the port and dispatches at a time and the completions go to whichever worker is
waiting; handlers therefore never run concurrently. I/O (`wsa_send`, `disconnect_ex`, ...) is issued
from handlers, or from any thread while no `handle_iocp` runs (setup); from another thread while a
worker runs, it raises RuntimeError: use `push_iocp_job`. `push_iocp_job`, `push_timer_job`,
`wakeup` and `stop` may be called from any thread.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, cast

import structlog

from framework.io.errors import BackendUnavailable, ProviderError
from framework.io.provider import AsyncIOProvider, CompletionResult, Status

if TYPE_CHECKING:
    from framework.legacy.service import ServiceCoordinator, SessionPool
    from framework.legacy.session import IocpObjectSession

log = structlog.get_logger("framework.legacy")

_monotonic_ns = time.monotonic_ns
_get_ident = threading.get_ident
_LINGER = struct.Struct("ii")  # struct linger {int l_onoff; int l_linger;}
_DISCARD_MAX = 16  # recv calls discard_unread makes at most


def set_socket_option(sock: socket.socket | None, level: int, name: int, value: int | bytes) -> bool:
    """setsockopt as RAON's helpers report it: False (no exception) when there is no socket or the
    OS refused (e.g. the connection is already gone)."""
    if sock is None:
        return False
    try:
        sock.setsockopt(level, name, value)
    except OSError:
        return False
    return True


def set_abortive_linger(sock: socket.socket | None) -> bool:
    """SO_LINGER {1, 0}: the close resets the connection (RST) and drops unsent data."""
    return set_socket_option(sock, socket.SOL_SOCKET, socket.SO_LINGER, _LINGER.pack(1, 0))


def discard_unread(sock: socket.socket) -> None:
    """Read and drop what the peer sent that nobody will read: closing a socket with unread input
    makes the kernel reset the connection, which can destroy our own data still in flight."""
    for _ in range(_DISCARD_MAX):
        try:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return
        except OSError:  # EAGAIN (nothing more), or the connection is already gone
            return


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """An I/O call on the core: under the loop lock (re-entrant for a thread inside handle_iocp);
    refused with a clear error from a thread racing a running worker."""

    @functools.wraps(method)
    def call(self: IocpCore, *args: Any, **kwargs: Any) -> Any:
        lock = self._lock
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                f"IocpCore.{method.__name__} called from a thread that is not running handle_iocp while "
                "another thread runs it; post the call with core.push_iocp_job(...)"
            )
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()

    return call


class IoType(IntEnum):
    """RAON IO_TYPE: what an OverlappedEx was issued for."""

    SEND = 0
    RECV = 1
    ACCEPT = 2
    CONNECT = 3
    DISCONNECT = 4
    JOB = 5
    # PRE_RECV (the zero-byte pre-receive) and FILE_WRITE are deliberately absent: see docs/MIGRATING.md.


class OverlappedEx:
    """RAON OverlappedEx: the per-operation record. An object reuses its OverlappedEx for the next
    operation of the same kind once the completion arrived (`pending` is False again)."""

    __slots__ = (
        "accepted",
        "cancel_status",
        "error_code",
        "io_type",
        "operation_id",
        "owner",
        "status",
        "user",
        "wsa_buf",
    )

    def __init__(
        self,
        io_type: IoType,
        wsa_buf: memoryview | None = None,
        owner: IocpObject | None = None,
        user: Any = None,
    ) -> None:
        self.io_type = io_type
        self.wsa_buf = wsa_buf
        self.owner = owner  # the completion key
        self.user = user  # free for the owner (the legacy provider keeps its Operation here)
        self.operation_id = 0  # provider operation id while pending, else 0
        self.status = Status.SUCCESS  # of the last completion (OVERLAPPED.Internal)
        self.error_code = 0
        self.accepted: tuple[socket.socket, Any] | None = None
        self.cancel_status: tuple[Status, int] | None = None

    @property
    def pending(self) -> bool:
        """True while the operation is with the provider (between issue and completion)."""
        return self.operation_id != 0

    @property
    def ok(self) -> bool:
        """True when the last completion succeeded."""
        return self.status == Status.SUCCESS

    def __repr__(self) -> str:
        return f"OverlappedEx({self.io_type.name} op={self.operation_id} {Status(self.status).name})"


class IocpObject:
    """RAON IocpObject: anything that owns a handle and receives its completions.

    The reference count (`add_ref`/`release`) counts outstanding operations (and any other holder);
    `on_last_release` runs when it drops to zero, which is where an object tears itself down, so
    it never goes away while the provider still owes it a completion. As in RAON, a count below
    zero (`UNUSED`, e.g. a pooled session nobody uses) means released: `add_ref()` then takes no
    reference and returns <= 0, which the caller must read as "already released"."""

    UNUSED = -1

    def __init__(self) -> None:
        self.core: IocpCore | None = None
        self._refs = 0
        self._sends_pending = 0  # wsa_send operations not completed yet (a graceful close waits)
        self._deferred_disconnect: OverlappedEx | None = None
        self._disconnect_token = 0  # tells a linger timer which deferred close it belongs to

    def get_handle(self) -> socket.socket | None:
        """The socket this object's operations run on (RAON GetHandle); None for a job."""
        return None

    def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
        """Handle one completion of this object (RAON HandleIocp); runs on a loop thread.

        `overlapped.status` / `overlapped.error_code` say how it ended, `bytes_transferred` how much
        moved. Subclasses must override it."""
        raise NotImplementedError

    def on_iocp_error(self, overlapped: OverlappedEx, exc: BaseException) -> None:
        """`handle_iocp` raised: the core logged it; an object may close itself here."""

    # ---- reference count (InterlockedIncrement/Decrement in RAON; one loop thread here) ----
    def add_ref(self) -> int:
        """AddRef(): the new count, or <= 0 (unchanged) when the object is released."""
        if self._refs < 0:
            return self._refs
        self._refs += 1
        return self._refs

    def release(self) -> int:
        """Release(): drop one reference and return the new count; `on_last_release` runs at zero.
        Raises RuntimeError on a release without a matching `add_ref`."""
        if self._refs <= 0:
            raise RuntimeError(f"{type(self).__name__}.release() without a matching add_ref()")
        self._refs -= 1
        if self._refs == 0:
            self.on_last_release()
        return self._refs

    @property
    def ref_count(self) -> int:
        """The current reference count (`UNUSED`, below zero, when released)."""
        return self._refs

    def on_last_release(self) -> None:
        """The last reference went away: tear the object down here (the default does nothing)."""
        pass

    # ---- socket options on the handle (RAON's helpers): False when no handle or the OS refused ----
    def set_no_delay(self, on: bool = True) -> bool:
        """TCP_NODELAY on the handle; False when there is no handle or the OS refused."""
        return set_socket_option(self.get_handle(), socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))

    def set_keep_alive(self, on: bool = True) -> bool:
        """SO_KEEPALIVE on the handle; False when there is no handle or the OS refused."""
        return set_socket_option(self.get_handle(), socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(on))

    def set_send_buffer_size(self, size: int) -> bool:
        """SO_SNDBUF on the handle; False when there is no handle or the OS refused."""
        return set_socket_option(self.get_handle(), socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def set_recv_buffer_size(self, size: int) -> bool:
        """SO_RCVBUF on the handle; False when there is no handle or the OS refused."""
        return set_socket_option(self.get_handle(), socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def set_linger(self, on: bool, seconds: int = 0) -> bool:
        """SO_LINGER. Prefer `disconnect(abortive=True)` for a reset: that also drops queued sends."""
        return set_socket_option(
            self.get_handle(), socket.SOL_SOCKET, socket.SO_LINGER, _LINGER.pack(int(on), seconds)
        )


class CallableJob(IocpObject):
    """A plain function pushed with `push_iocp_job`; runs once on the loop thread (not when the
    provider shuts down first, as queued packets die with a closed completion port)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn

    def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
        """Run the job's function, unless the completion reports the provider shutting down."""
        if overlapped.ok:
            self.fn()


def _handle(obj: IocpObject) -> socket.socket:
    # An object without a handle (closed) is passed on as it is, as RAON hands Winsock a dead
    # SOCKET: the provider completes the operation with SOCKET_NOT_REGISTERED.
    return cast(socket.socket, obj.get_handle())


def _wsa_buf(overlapped: OverlappedEx) -> memoryview:
    if overlapped.wsa_buf is None:
        raise TypeError("the OVERLAPPED has no wsa_buf to send from or receive into")
    return overlapped.wsa_buf


class IocpCore:
    """RAON IocpCore over an AsyncIOProvider.

    `IocpCore(provider)` uses that provider (initializing it when needed, shutting it down only if
    it initialized it). `IocpCore(backend="epoll")` or `IocpCore(settings=settings)` creates one
    through the factory; a backend name means the same provider everywhere, so "legacy_iocp" is the
    IocpLegacyProvider (which runs its own core on the platform's best backend) and None is "auto".
    """

    DISCONNECT_LINGER_MS = 10_000  # a graceful close waits this long for accepted sends, then aborts

    def __init__(
        self,
        provider: AsyncIOProvider | None = None,
        *,
        backend: str | None = None,
        settings: Any = None,
        max_connections: int = 4096,
        max_completion_queue_size: int = 256,
        batch_size: int = 256,
        fallback: bool = True,
    ) -> None:
        io = getattr(settings, "io", None)
        if io is not None:
            backend = backend or io.backend
            max_connections = io.max_connections
            max_completion_queue_size = io.completion_queue_size
            batch_size = io.completion_batch
            fallback = io.fallback
        self._provider = provider
        self._backend = backend or "auto"
        self._fallback = fallback
        self._options: dict[str, Any] = dict(getattr(io, "options", {}) or {})
        self._owns_provider = False
        self._max_connections = max_connections
        self._cq_size = max_completion_queue_size
        self._batch = batch_size
        self._results: list[CompletionResult] = []
        self._timers: list[tuple[int, int, IocpObject | Callable[[], Any]]] = []
        self._timer_seq = itertools.count()
        self._timer_lock = threading.Lock()  # push_timer_job comes from any thread
        # Serializes handle_iocp and I/O: N RAON worker threads may call handle_iocp (module doc).
        self._lock = threading.RLock()
        self._loop_thread = 0  # ident of the thread inside handle_iocp (0: none)
        self._stop_epoch = 0  # bumped by stop(): handle_iocp calls waiting for the lock return
        self._services: list[ServiceCoordinator] = []
        self._running = False
        self._closing = False
        self._closed = False
        self.dispatched = 0  # completions handed to an IocpObject
        self.handler_errors = 0  # handle_iocp calls that raised
        self.null_keys = 0  # completions without an owner (no completion key), ignored
        self.last_error = ""

    # ------------------------------------------------------------------ lifecycle
    @property
    def provider(self) -> AsyncIOProvider:
        """The provider this core posts on; RuntimeError before `initialize`."""
        if self._provider is None:
            raise RuntimeError("IocpCore.initialize() has not run")
        return self._provider

    def initialize(self) -> bool:
        """Create/initialize the provider (RAON IocpCore::Initialize: CreateIoCompletionPort)."""
        if self._provider is None:
            from framework.io.factory import create_provider

            try:
                self._provider = create_provider(self._backend, fallback=self._fallback)
            except BackendUnavailable as exc:  # RAON reports a failed Initialize() as false
                self.last_error = str(exc)
                return False
        if not self._provider.initialized:
            if not self._provider.initialize(self._max_connections, self._cq_size):
                self.last_error = self._provider.last_error or "initialize failed"
                return False
            self._owns_provider = True
            for name, value in self._options.items():
                self._provider.set_option(name, value)
        self._closed = self._closing = False
        return True

    def shutdown(self) -> None:
        """Stop every service, then (if this core initialized it) shut the provider down, which
        completes every pending operation as CANCELLED through the owners' handle_iocp. Worker
        threads still calling handle_iocp get 0 at once from then on."""
        if self._closed:
            return
        self._closing = True  # handle_iocp callers return instead of taking the lock again
        self.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for service in list(self._services):
                service.stop()
            self._services.clear()
            with self._timer_lock:
                self._timers.clear()
            if self._provider is not None and self._owns_provider:
                self._provider.shutdown()
                self._owns_provider = False
        self._closing = False

    @property
    def closed(self) -> bool:
        """True once `shutdown` has run."""
        return self._closed

    # ------------------------------------------------------------------ objects
    @_serialized
    def register_iocp_object(self, obj: IocpObject) -> bool:
        """CreateIoCompletionPort(handle, port, key=obj)."""
        sock = obj.get_handle()
        if sock is None:
            self.last_error = "object has no handle"
            return False
        if not self.provider.register_socket(sock, obj):
            self.last_error = self.provider.last_error or "register_socket failed"
            return False
        obj.core = self
        return True

    @_serialized
    def unregister_iocp_object(self, obj: IocpObject) -> bool:
        """Detach the handle; its pending operations complete as CANCELLED."""
        sock = obj.get_handle()
        return sock is not None and self._provider is not None and self._provider.unregister_socket(sock)

    # ------------------------------------------------------------------ the Winsock calls RAON issues
    @_serialized
    def wsa_send(self, obj: IocpObject, overlapped: OverlappedEx, timeout_ms: int | None = None) -> bool:
        """WSASend of `overlapped.wsa_buf`; completes when every byte is written. A graceful
        `disconnect_ex` waits for it (the send was accepted, so it is delivered)."""
        overlapped.io_type = IoType.SEND
        if overlapped.owner is None:
            overlapped.owner = obj
        if not self._posted(
            overlapped,
            self.provider.send_async(
                _handle(obj), _wsa_buf(overlapped), self._dispatch, overlapped, timeout_ms
            ),
        ):
            return False
        overlapped.owner._sends_pending += 1
        return True

    @_serialized
    def wsa_recv(self, obj: IocpObject, overlapped: OverlappedEx, timeout_ms: int | None = None) -> bool:
        """WSARecv into `overlapped.wsa_buf`; 0 bytes means the peer closed."""
        overlapped.io_type = IoType.RECV
        return self._posted(
            overlapped,
            self.provider.recv_async(
                _handle(obj), _wsa_buf(overlapped), self._dispatch, overlapped, timeout_ms
            ),
        )

    @_serialized
    def accept_ex(self, listener: IocpObject, overlapped: OverlappedEx) -> bool:
        """AcceptEx: the completion carries `overlapped.accepted == (sock, addr)`."""
        overlapped.io_type = IoType.ACCEPT
        return self._posted(
            overlapped, self.provider.accept_async(_handle(listener), self._dispatch, overlapped)
        )

    @_serialized
    def connect_ex(
        self, obj: IocpObject, overlapped: OverlappedEx, address: Any, timeout_ms: int | None = None
    ) -> bool:
        """ConnectEx: connect `obj`'s socket to `address`; False when nothing was posted.

        The completion fails with `CONNECTION_REFUSED`, or `CONNECTION_TIMEOUT` after `timeout_ms`."""
        overlapped.io_type = IoType.CONNECT
        return self._posted(
            overlapped,
            self.provider.connect_async(_handle(obj), address, self._dispatch, overlapped, timeout_ms),
        )

    @_serialized
    def disconnect_ex(
        self,
        obj: IocpObject,
        overlapped: OverlappedEx,
        *,
        abortive: bool = False,
        linger_ms: int | None = None,
    ) -> bool:
        """DisconnectEx, with IOCP's close semantics on every backend.

        Graceful (the default): every send already accepted (`wsa_send` returned True) is delivered
        first; then the connection is shut down (FIN after the data), the socket detached (its
        pending operations complete as CANCELLED) and a DISCONNECT completion queued behind them.
        A send that is not done after `linger_ms` (default DISCONNECT_LINGER_MS; the peer does not
        read) turns the close abortive. Abortive (RAON: SO_LINGER 0 before the close): pending
        sends are cancelled and the close resets the connection. The owner closes the socket once
        its reference count shows every completion arrived. A second call while a graceful close
        waits may only make it abortive."""
        overlapped.io_type = IoType.DISCONNECT
        if overlapped.owner is None:
            overlapped.owner = obj
        waiting = obj._deferred_disconnect
        if waiting is not None:
            if not abortive:
                return True  # the graceful close already requested goes on
            obj._deferred_disconnect = None
            return self._disconnect_now(obj, waiting, abortive=True, deferred=True)
        if not abortive and obj._sends_pending > 0:
            obj._deferred_disconnect = overlapped
            obj._disconnect_token += 1
            token = obj._disconnect_token
            delay = self.DISCONNECT_LINGER_MS if linger_ms is None else linger_ms
            self.push_timer_job(delay, lambda: self._linger_expired(obj, token))
            return True
        return self._disconnect_now(obj, overlapped, abortive=abortive, deferred=False)

    def _disconnect_now(
        self, obj: IocpObject, overlapped: OverlappedEx, *, abortive: bool, deferred: bool
    ) -> bool:
        sock = obj.get_handle()
        if sock is not None:
            if abortive:
                set_abortive_linger(sock)
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # FIN after every byte already written
                except OSError:
                    pass  # not connected (any more): nothing to shut down
            self.unregister_iocp_object(obj)
        posted = self._posted(overlapped, self.provider.post(self._dispatch, overlapped))
        if not posted and deferred:
            # The caller was told the close was accepted: complete it here (provider shut down).
            overlapped.status = Status.CANCELLED
            self._dispatch_to(obj, overlapped, 0)
        return posted

    def _linger_expired(self, obj: IocpObject, token: int) -> None:
        if obj._deferred_disconnect is not None and obj._disconnect_token == token:
            log.info("graceful close timed out: aborting", owner=type(obj).__name__)
            self.disconnect_ex(obj, obj._deferred_disconnect, abortive=True)

    @_serialized
    def cancel_io_ex(self, overlapped: OverlappedEx) -> bool:
        """CancelIoEx: the operation completes (CANCELLED, or normally if it won the race)."""
        return overlapped.operation_id != 0 and self.provider.cancel(overlapped.operation_id)

    def _posted(self, overlapped: OverlappedEx, op_id: int) -> bool:
        overlapped.operation_id = op_id
        if op_id == 0:
            self.last_error = (self._provider.last_error if self._provider else "") or "operation not posted"
            return False
        return True

    # ------------------------------------------------------------------ jobs and timers
    def push_iocp_job(self, job: IocpObject | Callable[[], Any]) -> bool:
        """PostQueuedCompletionStatus: `job.handle_iocp(OverlappedEx(JOB), 0)` (or `job()`) runs
        once, on the thread running handle_iocp. Safe to call from any thread."""
        obj = job if isinstance(job, IocpObject) else CallableJob(job)
        return self.provider.post(self._dispatch, OverlappedEx(IoType.JOB, owner=obj)) != 0

    def push_timer_job(self, delay_ms: int, job: IocpObject | Callable[[], Any]) -> None:
        """Run `job` as a JOB completion after `delay_ms`, on a thread running handle_iocp. Safe to
        call from any thread: a waiting handle_iocp is woken to shorten its wait. When another
        loop drives the provider, call `run_timers()` from it."""
        deadline = _monotonic_ns() + max(0, delay_ms) * 1_000_000
        with self._timer_lock:
            heapq.heappush(self._timers, (deadline, next(self._timer_seq), job))
        if self._loop_thread != _get_ident() and self._provider is not None and not self._closed:
            self.wakeup()  # a waiter computed its timeout without this timer

    def run_timers(self) -> int:
        """Dispatch every due timer job; returns how many ran."""
        timers = self._timers
        n = 0
        while True:
            with self._timer_lock:
                if not timers or timers[0][0] > _monotonic_ns():
                    return n
                _, _, job = heapq.heappop(timers)
            obj = job if isinstance(job, IocpObject) else CallableJob(job)
            self._dispatch_to(obj, OverlappedEx(IoType.JOB, owner=obj), 0)
            n += 1

    def _next_timer_ms(self) -> int | None:
        with self._timer_lock:
            if not self._timers:
                return None
            return max(0, (self._timers[0][0] - _monotonic_ns() + 999_999) // 1_000_000)

    def wakeup(self) -> None:
        """Make a blocked handle_iocp return (a completion with no key, which it ignores)."""
        self.provider.post(None)

    # ------------------------------------------------------------------ the GetQueuedCompletionStatus loop
    def handle_iocp(self, timeout_ms: int = -1) -> int:
        """One loop turn: wait up to `timeout_ms` (-1 forever, 0 poll) and dispatch every completion
        that arrived as `owner.handle_iocp(overlapped, bytes)`. Returns how many were dispatched
        (0 on timeout, a bare wake-up, after `stop()`, or once the core is shut down). Several
        threads may call it (module docstring). Raises ProviderError when the provider failed."""
        if self._closing or self._closed:
            return 0
        epoch = self._stop_epoch
        lock = self._lock
        if not lock.acquire(timeout=-1 if timeout_ms < 0 else timeout_ms / 1000):
            return 0  # another worker had the port for the whole timeout
        try:
            if self._closed or self._stop_epoch != epoch:
                return 0  # stop() while this worker queued for the port
            outer, self._loop_thread = self._loop_thread, _get_ident()
            try:
                return self._turn(timeout_ms)
            finally:
                self._loop_thread = outer
        finally:
            lock.release()

    def _turn(self, timeout_ms: int) -> int:
        before = self.dispatched
        self.run_timers()
        until = self._next_timer_ms()
        if until is not None:
            timeout_ms = until if timeout_ms < 0 else min(timeout_ms, until)
        if self.dispatched != before:
            timeout_ms = 0  # timers ran: poll, do not wait
        results = self._results
        n = self.provider.process_completions(timeout_ms, self._batch, results)
        if n < 0:
            err = results[0] if results else None
            raise ProviderError(
                f"completion port failed: {err.user_context if err else 'unknown'}",
                err.error_code if err else 0,
            )
        results.clear()  # drop references to the delivered results
        self.run_timers()
        return self.dispatched - before

    def run(self, poll_ms: int = 100) -> None:
        """Run handle_iocp until `stop()` (the worker thread body of a RAON server; N threads
        may run it)."""
        self._running = True
        epoch = self._stop_epoch
        while self._running and self._stop_epoch == epoch and not self._closed:
            self.handle_iocp(poll_ms)

    def stop(self) -> None:
        """End every `run()` and make every handle_iocp call in progress return; callable from
        any thread. (RAON workers looping on handle_iocp(-1) check their own flag after it.)"""
        self._running = False
        self._stop_epoch += 1
        if self._provider is not None and not self._closed:
            self.wakeup()  # the worker waiting on the port; the others see the epoch

    def _dispatch(self, result: CompletionResult, overlapped: OverlappedEx) -> None:
        overlapped.operation_id = 0
        overlapped.status = result.status
        overlapped.error_code = result.error_code
        overlapped.accepted = result.accepted
        owner = overlapped.owner
        if owner is None:
            self.null_keys += 1
            log.warning("completion without an owner ignored", overlapped=repr(overlapped))
            return
        if overlapped.io_type != IoType.SEND:
            self._dispatch_to(owner, overlapped, result.bytes_transferred)
            return
        owner._sends_pending -= 1
        self._dispatch_to(owner, overlapped, result.bytes_transferred)  # may send again
        waiting = owner._deferred_disconnect
        if waiting is not None and owner._sends_pending == 0:
            owner._deferred_disconnect = None  # every accepted send is done: close now
            self._disconnect_now(owner, waiting, abortive=False, deferred=True)

    def _dispatch_to(self, owner: IocpObject, overlapped: OverlappedEx, nbytes: int) -> None:
        self.dispatched += 1
        try:
            owner.handle_iocp(overlapped, nbytes)
        except Exception as exc:
            # One broken handler must not stop the loop: the batch's other completions still run.
            self.handler_errors += 1
            log.exception("handle_iocp raised", owner=type(owner).__name__, overlapped=repr(overlapped))
            try:
                owner.on_iocp_error(overlapped, exc)
            except Exception:
                log.exception("on_iocp_error raised", owner=type(owner).__name__)

    # ------------------------------------------------------------------ services
    def register_server_service(
        self,
        port: int,
        session_factory: Callable[[], IocpObjectSession] | None = None,
        *,
        host: str = "0.0.0.0",
        max_sessions: int = 1000,
        backlog: int = 128,
        accept_count: int = 4,
        pool: SessionPool | None = None,
    ) -> ServiceCoordinator:
        """Listen on (host, port) and serve with a pool of `max_sessions` sessions made by
        `session_factory`, or with the caller's `pool` (RAON RegisterServerService(port, n, pool)).
        Raises OSError when the port cannot be bound or the listener not registered (e.g.
        max_connections). `coordinator.address` is the bound address (port 0 works)."""
        from framework.legacy.service import ServiceCoordinator, ServiceType

        return self._start_service(
            ServiceCoordinator(
                self,
                ServiceType.SERVER,
                (host, port),
                session_factory,
                max_sessions,
                backlog=backlog,
                accept_count=accept_count,
                pool=pool,
            )
        )

    def register_client_service(
        self,
        address: tuple[str, int],
        session_factory: Callable[[], IocpObjectSession],
        *,
        connection_count: int = 1,
        auto_reconnect: bool = False,
        reconnect_delay_ms: int = 500,
        connect_timeout_ms: int | None = 5000,
    ) -> ServiceCoordinator:
        """Outgoing sessions to `address`. With `auto_reconnect` (CLIENT_AUTO_RECONNECT) all
        `connection_count` sessions connect now and reconnect `reconnect_delay_ms` after each loss
        or failed attempt; otherwise (CLIENT) call `manual_connect()`."""
        from framework.legacy.service import ServiceCoordinator, ServiceType

        return self._start_service(
            ServiceCoordinator(
                self,
                ServiceType.CLIENT_AUTO_RECONNECT if auto_reconnect else ServiceType.CLIENT,
                address,
                session_factory,
                connection_count,
                reconnect_delay_ms=reconnect_delay_ms,
                connect_timeout_ms=connect_timeout_ms,
            )
        )

    def _start_service(self, svc: ServiceCoordinator) -> ServiceCoordinator:
        if not svc.start():
            raise OSError(f"service on {svc.address} could not start: {self.last_error}")
        self._services.append(svc)
        return svc

    def unregister_service(self, service: ServiceCoordinator) -> None:
        """Stop a service and forget it (RAON UnregisterService)."""
        service.stop()
        if service in self._services:
            self._services.remove(service)

    @property
    def services(self) -> list[ServiceCoordinator]:
        """The services this core runs, in start order (a copy)."""
        return list(self._services)
