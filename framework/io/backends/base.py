"""Bookkeeping every backend shares, so each backend module holds only its kernel-facing code.

`QueuedProvider` owns: operation ids and the pending-operation table, the per-socket registration
table, the queue of finished completions and its delivery through `process_completions` (with the
>0/0/<0 contract, `max_results` carry-over and callback isolation), `post()` from any thread with a
coalesced wake-up, the per-operation timeout heap, statistics, user-space buffer registration and
the shutdown sweep. A backend implements the hooks at the bottom of the class.

Provided-buffer receives (`recv_async_provided`): a result whose memory must go back to the
provider is a `LeasedResult` (its `lease` says what to give back). The delivery loop collects the
ones it delivered and the next `process_completions` call releases them before it polls (so the
data stays valid through the callback, and for a `results` reader until that next call); results
still queued beyond `max_results` keep theirs. The default here posts a normal recv into a buffer
from a small free list: correct on every backend, but the buffer is held while the recv waits, so
"ProvidedBuffers" stays False; epoll/kqueue and io_uring override it with memory picked on arrival.

Everything on the per-operation path (`_new_op`, `_complete`, the delivery loop) is written for
speed: no IntEnum attribute lookups, no helper calls that cost as much as their bodies, no tuple
per queued completion, and `average_latency_ms` from a 1-in-16 sample of operations.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog

from framework.io.errors import ErrorCode, ProviderError, map_errno
from framework.io.provider import (
    AsyncIOProvider,
    CompletionCallback,
    CompletionResult,
    Feature,
    OpType,
    ProviderStatistics,
    RecvOperation,
    SendOperation,
    Status,
    StreamDataHandler,
    StreamEventHandler,
    StreamsProvider,
)

log = structlog.get_logger("framework.io")

_monotonic_ns = time.monotonic_ns

# Hot-path constants: an IntEnum member looked up through its class costs ~100 ns per access.
_SUCCESS = Status.SUCCESS
_ERROR = Status.ERROR
_SEND = OpType.SEND
_RECV = OpType.RECV
_LATENCY_SAMPLE = 16  # with measure_latency, one operation in this many is timed (two clock reads)
PROVIDED_BUFFER_SIZE = 16384  # default size of a provider-owned receive buffer
_PBUF_FREE_MAX = 64  # free provided buffers kept for reuse by the default implementation
_EMPTY = memoryview(b"")


class LeasedResult(CompletionResult):
    """A provided-buffer receive's result whose memory goes back to the provider after delivery:
    `lease` is the backend's handle for it (a buffer id, a pooled bytearray)."""

    __slots__ = ("lease",)
    lease: Any


class Operation:
    """One posted operation, alive from post to completion. Holds the caller's buffer (a memoryview,
    or what the backend needs to keep it alive: `bytes`, a cffi handle) strongly, so the memory an
    in-flight kernel request points at cannot be freed."""

    __slots__ = (
        "address",
        "buf",
        "callback",
        "context",
        "deadline",
        "done",
        "entry",
        "fd",
        "op_id",
        "op_type",
        "sock",
        "started_ns",
        "token",
    )

    def __init__(
        self,
        op_id: int,
        op_type: OpType,
        entry: SocketEntry | None,
        buf: Any,
        callback: CompletionCallback | None,
        context: Any,
    ) -> None:
        self.op_id = op_id
        self.op_type = op_type
        self.entry = entry
        self.sock = entry.sock if entry is not None else None
        self.fd = entry.fd if entry is not None else -1
        self.buf = buf
        self.callback = callback
        self.context = context
        self.done = 0  # bytes transferred so far (partial sends continue)
        self.deadline = 0  # monotonic ns, 0 = none
        self.started_ns = 0
        self.address: Any = None
        self.token: Any = None  # backend-private (e.g. an io_uring slot)


_new_operation = object.__new__  # _new_op fills every slot itself


class SocketEntry:
    """A registered socket. Its pending operations are tracked so unregistering can cancel them:
    the first in `op1`, any more in the `more` list. Per idle connection (one recv waiting) that is
    one slot instead of a dict (~220 bytes), with no cost per operation."""

    __slots__ = ("context", "fd", "more", "op1", "sock", "state")

    def __init__(self, sock: socket.socket, context: Any, fd: int = -1) -> None:
        self.sock = sock
        self.fd = fd if fd >= 0 else sock.fileno()  # share the caller's int (32 bytes per entry)
        self.context = context
        self.op1: Operation | None = None
        self.more: list[Operation] | None = None  # created when a second operation overlaps
        self.state: Any = None  # backend-private per-socket state

    @property
    def ops(self) -> list[Operation]:
        """The pending operations of this socket (a new list)."""
        ops = [] if self.op1 is None else [self.op1]
        return ops + self.more if self.more else ops


def as_memoryview(data: bytes | bytearray | memoryview) -> memoryview:
    """`data` as a 1-D memoryview of bytes (a view of another shape is cast)."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


class QueuedProvider(AsyncIOProvider):
    """Shared machinery; see the module docstring. Subclasses implement the `_backend_*` hooks."""

    name = "base"
    # True where the backend takes `bytes` as they are for a send (no memoryview made per send):
    # it only needs len() and the buffer protocol, and slices only to resume a partial send.
    _SEND_BYTES_AS_IS = False
    # The per-socket record; a backend may use a subclass holding its own per-socket fields (and
    # point `state` at the entry itself), which saves an object per connection.
    _ENTRY_CLASS: type[SocketEntry] = SocketEntry

    def __init__(self) -> None:
        self._initialized = False
        self._closed = False
        self._max_connections = 0
        self._cq_size = 256
        self._ids = itertools.count(1)
        self._sockets: dict[int, SocketEntry] = {}
        self._pending: dict[int, Operation] = {}
        # Flat pairs: result, callback, result, callback, ... (no tuple allocated per completion).
        self._ready: deque[Any] = deque()
        self._posted: deque[tuple[CompletionCallback | None, Any, int]] = deque()
        self._wake_pending = False
        self._timeouts: list[tuple[int, int]] = []  # (deadline ns, op id), lazily pruned
        self._buffers: dict[int, memoryview] = {}
        self._buffer_ids = itertools.count(0)
        self._measure_latency = True
        self._latency_tick = _LATENCY_SAMPLE - 1  # the first operation is timed
        self._latency_total_ns = 0
        self._latency_count = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._callback_errors = 0
        # Completions a backend handed straight to stream handlers during this call (no result
        # object): they end a blocking wait like results do.
        self._delivered = 0
        # The two handlers every stream of this provider shares (`QueuedStreamsProvider`).
        self._on_stream_data: StreamDataHandler | None = None
        self._on_stream_event: StreamEventHandler | None = None
        self._posted_count = 0
        self._poll_calls = 0  # kernel waits; the contract suite checks an idle loop does not spin
        # Provided-buffer receives: pooled buffers of pending default-path recvs (by op id), the
        # free list, how many are out, and delivered LeasedResults awaiting release.
        self._leases: dict[int, bytearray] = {}
        self._pbuf_free: list[bytearray] = []
        self._pbuf_size = PROVIDED_BUFFER_SIZE
        self._pbuf_out = 0
        self._lent: list[LeasedResult] = []
        # True where the backend itself picks memory when data arrives: a provided recv is then
        # posted with `buf=None` to `_backend_recv` (and "ProvidedBuffers" is reported).
        self._provided_on_arrival = False
        self._provided_off = False  # set_option("provided_buffers", False): use the pooled default
        self.last_error: str = ""

    # ------------------------------------------------------------------ lifecycle
    def initialize(self, max_connections: int, max_completion_queue_size: int = 256) -> bool:
        if self._initialized:
            self.last_error = "already initialized"
            return False
        if max_connections <= 0 or max_completion_queue_size <= 0:
            self.last_error = "max_connections and max_completion_queue_size must be positive"
            return False
        self._max_connections = max_connections
        self._cq_size = max_completion_queue_size
        try:
            self._backend_open()
        except OSError as exc:
            self.last_error = f"{self.name}: {exc}"
            return False
        self._initialized = True
        self._closed = False
        return True

    def shutdown(self) -> None:
        if not self._initialized or self._closed:
            return
        self._closed = True
        # Everything still pending completes as CANCELLED; the backend first makes sure the kernel
        # no longer touches any buffer (io_uring waits for every CQE here).
        self._backend_cancel_all()
        for op in list(self._pending.values()):
            self._complete(op, Status.CANCELLED, op.done, 0)
        while self._posted:
            callback, context, op_id = self._posted.popleft()
            self._ready.append(CompletionResult(Status.CANCELLED, 0, 0, op_id, context, OpType.POST))
            self._ready.append(callback)
        while self._ready:
            result = self._ready.popleft()
            self._run_callback(self._ready.popleft(), result)
            if type(result) is LeasedResult:
                self._lent.append(result)
        self._release_lent()
        for entry in list(self._sockets.values()):
            self._backend_unregister(entry)
        self._sockets.clear()
        self._backend_close()
        self._initialized = False

    @property
    def initialized(self) -> bool:
        return self._initialized and not self._closed

    # ------------------------------------------------------------------ sockets
    def register_socket(self, sock: socket.socket, context: Any = None) -> bool:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return False
        fd = sock.fileno()
        if fd < 0:
            self.last_error = "socket is closed"
            return False
        stale = self._sockets.get(fd)
        if stale is not None:
            if stale.sock.fileno() == fd:
                self.last_error = f"fd {fd} is already registered"
                return False
            # The old socket was closed without unregister_socket and its fd number reused.
            self._drop_entry(stale)
        if len(self._sockets) >= self._max_connections:
            self.last_error = f"max_connections ({self._max_connections}) reached"
            return False
        sock.setblocking(False)
        entry = self._ENTRY_CLASS(sock, context, fd)
        try:
            self._backend_register(entry)
        except OSError as exc:
            self.last_error = f"register fd {fd}: {exc}"
            return False
        self._sockets[fd] = entry
        return True

    def unregister_socket(self, sock: socket.socket) -> bool:
        fd = sock.fileno()
        entry = self._sockets.get(fd)
        if entry is None or entry.sock is not sock:
            # A socket closed before unregistering has fileno() -1: find it by identity.
            entry = next((e for e in self._sockets.values() if e.sock is sock), None) if fd < 0 else None
            if entry is None:
                self.last_error = "socket is not registered"
                return False
        self._drop_entry(entry)
        return True

    def _drop_entry(self, entry: SocketEntry) -> None:
        # Pending operations end as CANCELLED; the backend stops watching the descriptor.
        for op in entry.ops:
            self._backend_cancel(op, Status.CANCELLED, 0)
        self._backend_unregister(entry)
        del self._sockets[entry.fd]

    def _entry_for(self, sock: socket.socket) -> SocketEntry | None:
        try:
            fd = sock.fileno()
        except (AttributeError, OSError):
            return None
        entry = self._sockets.get(fd)
        if entry is None or entry.sock is not sock:
            return None
        return entry

    # ------------------------------------------------------------------ operations
    def _new_op(
        self,
        op_type: OpType,
        sock: socket.socket,
        buf: memoryview | bytes | None,
        callback: CompletionCallback | None,
        context: Any,
    ) -> Operation:
        """Create and track an operation. On an unregistered socket it completes at once with
        SOCKET_NOT_REGISTERED and has no `entry`."""
        # This runs for every operation: Operation.__init__ and _entry_for are inlined (a Python
        # call costs about as much as the slot stores).
        op_id = next(self._ids)
        try:
            entry = self._sockets.get(sock.fileno())
        except (AttributeError, OSError):
            entry = None
        op = _new_operation(Operation)
        op.op_id = op_id
        op.op_type = op_type
        op.buf = buf
        op.callback = callback
        op.context = context
        op.done = 0
        op.deadline = 0
        op.address = None
        op.token = None
        op.started_ns = 0
        if self._measure_latency:
            tick = self._latency_tick + 1
            if tick >= _LATENCY_SAMPLE:
                tick = 0
                op.started_ns = _monotonic_ns()
            self._latency_tick = tick
        self._pending[op_id] = op
        if entry is None or entry.sock is not sock:
            op.entry = None
            op.sock = None
            op.fd = -1
            self._complete(op, _ERROR, 0, ErrorCode.SOCKET_NOT_REGISTERED)
            return op
        op.entry = entry
        op.sock = sock
        op.fd = entry.fd
        if entry.op1 is None:
            entry.op1 = op
        elif entry.more is None:
            entry.more = [op]
        else:
            entry.more.append(op)
        return op

    def send_async(
        self,
        sock: socket.socket,
        data: bytes | bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        buf = data if type(data) is bytes and self._SEND_BYTES_AS_IS else as_memoryview(data)
        op = self._new_op(_SEND, sock, buf, callback, context)
        if op.entry is None:
            return op.op_id
        if timeout_ms is not None:
            self._arm_timeout(op, timeout_ms)
        self._backend_send(op)
        return op.op_id

    def recv_async(
        self,
        sock: socket.socket,
        buffer: bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        mv = as_memoryview(buffer)
        if mv.readonly:
            raise TypeError("recv buffer must be writable")
        return self._recv_view(sock, mv, callback, context, timeout_ms)

    def _recv_view(
        self,
        sock: socket.socket,
        mv: memoryview,
        callback: CompletionCallback | None,
        context: Any,
        timeout_ms: int | None,
    ) -> int:
        """recv_async after argument checks: `mv` is a writable 1-D byte view."""
        op = self._new_op(_RECV, sock, mv, callback, context)
        if op.entry is None:
            return op.op_id
        if len(mv) == 0:
            self._complete(op, Status.ERROR, 0, ErrorCode.BUFFER_TOO_SMALL)
            return op.op_id
        if timeout_ms is not None:
            self._arm_timeout(op, timeout_ms)
        self._backend_recv(op)
        return op.op_id

    def recv_async_provided(
        self,
        sock: socket.socket,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        """See the module docstring: `_backend_recv` gets `buf=None` where the backend picks memory
        on arrival; else (the default) a normal recv into a pooled buffer, held while it waits."""
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        if self._provided_on_arrival:
            op = self._new_op(_RECV, sock, None, callback, context)
            if op.entry is not None:
                if timeout_ms is not None:
                    self._arm_timeout(op, timeout_ms)
                self._backend_recv(op)
            return op.op_id
        free = self._pbuf_free
        buf = free.pop() if free else bytearray(self._pbuf_size)
        self._pbuf_out += 1
        op = self._new_op(_RECV, sock, memoryview(buf), callback, context)
        if op.entry is None:  # already completed (not registered), before the lease was recorded
            self._release_leases([buf])
            return op.op_id
        self._leases[op.op_id] = buf
        if timeout_ms is not None:
            self._arm_timeout(op, timeout_ms)
        self._backend_recv(op)
        return op.op_id

    def accept_async(
        self, listen_sock: socket.socket, callback: CompletionCallback | None = None, context: Any = None
    ) -> int:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return 0
        op = self._new_op(OpType.ACCEPT, listen_sock, None, callback, context)
        if op.entry is None:
            return op.op_id
        self._backend_accept(op)
        return op.op_id

    def connect_async(
        self,
        sock: socket.socket,
        address: Any,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return 0
        op = self._new_op(OpType.CONNECT, sock, None, callback, context)
        if op.entry is None:
            return op.op_id
        op.address = address
        self._arm_timeout(op, timeout_ms)
        self._backend_connect(op)
        return op.op_id

    def send_batch_async(self, ops: Sequence[SendOperation]) -> int:
        return sum(1 for o in ops if self.send_async(o.sock, o.data, o.callback, o.context))

    def recv_batch_async(self, ops: Sequence[RecvOperation]) -> int:
        return sum(1 for o in ops if self.recv_async(o.sock, o.buffer, o.callback, o.context))

    def cancel(self, operation_id: int) -> bool:
        op = self._pending.get(operation_id)
        if op is None or op.op_type == OpType.POST:
            return False
        self._backend_cancel(op, Status.CANCELLED, 0)
        return True

    # ------------------------------------------------------------------ timeouts
    def _arm_timeout(self, op: Operation, timeout_ms: int | None) -> None:
        if timeout_ms is None or timeout_ms < 0:
            return
        op.deadline = _monotonic_ns() + timeout_ms * 1_000_000
        heapq.heappush(self._timeouts, (op.deadline, op.op_id))

    def _expire_timeouts(self) -> None:
        heap = self._timeouts
        if not heap:
            return
        now = _monotonic_ns()
        while heap and heap[0][0] <= now:
            _, op_id = heapq.heappop(heap)
            op = self._pending.get(op_id)
            if op is not None and op.deadline and op.deadline <= now:
                self._backend_cancel(op, Status.TIMEOUT, ErrorCode.CONNECTION_TIMEOUT)

    def _wait_budget_ms(self, timeout_ms: int) -> int:
        """Shorten a kernel wait so the earliest operation deadline is honoured."""
        heap = self._timeouts
        while heap and heap[0][1] not in self._pending:
            heapq.heappop(heap)
        if not heap:
            return timeout_ms
        until = max(0, (heap[0][0] - _monotonic_ns() + 999_999) // 1_000_000)
        return until if timeout_ms < 0 else min(timeout_ms, until)

    # ------------------------------------------------------------------ completion delivery
    def _complete(
        self,
        op: Operation,
        status: Status,
        nbytes: int,
        error_code: int,
        accepted: tuple[socket.socket, Any] | None = None,
        data: memoryview | None = None,
        lease: Any = None,
    ) -> None:
        """Finish `op` exactly once and queue its result for delivery. `data`/`lease`: a
        provided-buffer receive's bytes and, if they are provider memory to give back, its handle."""
        op_id = op.op_id
        if self._pending.pop(op_id, None) is None:
            return
        entry = op.entry
        if entry is not None:
            if entry.op1 is op:
                entry.op1 = None
            else:
                more = entry.more
                assert more is not None  # _new_op put it there
                more.remove(op)
        if status == 0:  # Status.SUCCESS; plain int compare, see the constants above
            self._completed += 1
        elif status == 2:  # Status.CANCELLED
            self._cancelled += 1
        else:
            self._failed += 1
        if op.started_ns:
            self._latency_total_ns += _monotonic_ns() - op.started_ns
            self._latency_count += 1
        ready = self._ready
        if self._leases:  # a default-path provided recv: its pooled buffer becomes the data
            buf = self._leases.pop(op_id, None)
            if buf is not None:
                if status == 0 and nbytes:
                    data = op.buf[:nbytes]
                    lease = buf
                else:
                    self._release_leases([buf])
                    data = _EMPTY if status == 0 else None
        if lease is None:
            ready.append(
                CompletionResult(status, nbytes, error_code, op_id, op.context, op.op_type, accepted, data)
            )
        else:
            result = LeasedResult(status, nbytes, error_code, op_id, op.context, op.op_type, None, data)
            result.lease = lease
            ready.append(result)
        ready.append(op.callback)
        op.buf = None
        op.callback = None

    def _fail(self, op: Operation, os_errno: int) -> None:
        self._complete(op, Status.ERROR, op.done, map_errno(os_errno))

    def _run_callback(self, callback: CompletionCallback | None, result: CompletionResult) -> None:
        if callback is None:
            return
        try:
            callback(result, result.user_context)
        except Exception:
            self._callback_errors += 1
            log.exception("completion callback raised", backend=self.name, result=repr(result))

    def _drain_posted(self) -> None:
        """Move jobs from post() into the ready queue (loop thread only)."""
        self._wake_pending = False  # cleared before draining: a racing post() then wakes us again
        posted = self._posted
        ready = self._ready
        while posted:
            callback, context, op_id = posted.popleft()
            self._completed += 1
            ready.append(CompletionResult(_SUCCESS, 0, 0, op_id, context, OpType.POST))
            ready.append(callback)

    def post(self, callback: CompletionCallback | None, context: Any = None) -> int:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return 0
        op_id = next(self._ids)  # itertools.count is atomic under the GIL
        job = (callback, context, op_id)
        self._posted.append(job)
        if self._closed:
            # shutdown() raced with this thread: it either already delivered the job (as
            # CANCELLED) or drained the queue before the append and will never see it.
            try:
                self._posted.remove(job)
            except ValueError:
                return op_id
            self.last_error = "provider is shutting down"
            return 0
        self._posted_count += 1
        if not self._wake_pending:
            self._wake_pending = True
            self._backend_wakeup()
        return op_id

    def process_completions(self, timeout_ms: int, max_results: int, results: list[CompletionResult]) -> int:
        results.clear()
        if not self._initialized or self._closed:
            results.append(
                CompletionResult(
                    Status.ERROR, 0, ErrorCode.SOCKET_NOT_REGISTERED, 0, "provider is not initialized", None
                )
            )  # user_context carries the message, as for a ProviderError below
            return -1
        ready = self._ready
        self._delivered = 0
        if self._lent:
            self._release_lent()  # delivered last call: their data is no longer valid
        if self._posted:
            self._drain_posted()
        try:
            if ready or timeout_ms == 0:
                self._poll_calls += 1
                self._backend_poll(0)
                if self._timeouts:
                    self._expire_timeouts()  # a busy loop must still honour deadlines
                if self._posted:
                    self._drain_posted()
            else:
                deadline = None if timeout_ms < 0 else _monotonic_ns() + timeout_ms * 1_000_000
                while True:
                    if deadline is None:
                        budget = -1
                    else:
                        budget = max(0, (deadline - _monotonic_ns() + 999_999) // 1_000_000)
                    self._poll_calls += 1
                    self._backend_poll(self._wait_budget_ms(budget) if self._timeouts else budget)
                    if self._timeouts:
                        self._expire_timeouts()
                    if self._posted:
                        self._drain_posted()
                    if (
                        ready
                        or self._delivered
                        or budget == 0
                        or (deadline is not None and _monotonic_ns() >= deadline)
                    ):
                        break
        except ProviderError as exc:
            results.append(CompletionResult(Status.ERROR, 0, exc.code, 0, str(exc), None))
            return -1
        except OSError as exc:
            code = map_errno(exc.errno or 0)
            results.append(CompletionResult(Status.ERROR, 0, code, 0, str(exc), None))
            return -1
        n = 0
        append = results.append
        popleft = ready.popleft
        lent = self._lent
        while ready and n < max_results:
            result = popleft()
            callback = popleft()
            append(result)
            n += 1
            if type(result) is LeasedResult:
                lent.append(result)
            if callback is not None:
                try:  # _run_callback, inlined: one Python call less per completion
                    callback(result, result.user_context)
                except Exception:
                    self._callback_errors += 1
                    log.exception("completion callback raised", backend=self.name, result=repr(result))
        return n

    # ------------------------------------------------------------------ options, statistics
    def supports_feature(self, name: Feature | str) -> bool:
        return name in self._features()

    def _features(self) -> frozenset[str]:
        """The `Feature`s this provider offers now (their string values)."""
        feats = frozenset({Feature.BATCH_SUBMIT, Feature.POST_COMPLETION, Feature.OPERATION_TIMEOUT, Feature.CANCEL})
        return feats | {Feature.PROVIDED_BUFFERS} if self._provided_on_arrival else feats

    def set_option(self, name: str, value: Any) -> bool:
        if name == "measure_latency":
            self._measure_latency = bool(value)
            return True
        if name == "provided_buffers":  # False: the pooled default even where memory is picked on arrival
            self._provided_off = not value
            self._provided_on_arrival = bool(value) and self._provided_capable()
            return self._provided_on_arrival == bool(value)
        if name == "provided_buffer_size":  # io_uring applies it to its ring at initialize
            if type(value) is not int or not 512 <= value <= 1 << 20:
                return False
            self._pbuf_size = value
            self._pbuf_free.clear()
            return True
        return self._backend_set_option(name, value)

    def get_statistics(self) -> ProviderStatistics:
        avg = (self._latency_total_ns / self._latency_count / 1e6) if self._latency_count else 0.0
        specific = {
            "cancelled_operations": self._cancelled,
            "callback_errors": self._callback_errors,
            "posted": self._posted_count,
            "poll_calls": self._poll_calls,
            "ready_queue": len(self._ready) // 2,
            "latency_samples": self._latency_count,
            "registered_buffers": len(self._buffers),
            "provided_buffers_in_use": self._pbuf_out,
            "provided_buffer_size": self._pbuf_size,
        }
        specific.update(self._backend_statistics())
        return ProviderStatistics(
            active_connections=len(self._sockets),
            pending_operations=len(self._pending),
            completed_operations=self._completed,
            failed_operations=self._failed,
            average_latency_ms=avg,
            backend=self.name,
            backend_specific=specific,
        )

    # ------------------------------------------------------------------ provided buffers
    def _release_lent(self) -> None:
        """Give back the memory of delivered provided-buffer results; their `data` goes None."""
        lent = self._lent
        self._lent = []
        leases = []
        for result in lent:
            result.data = None
            leases.append(result.lease)
        self._release_leases(leases)

    def _provided_capable(self) -> bool:
        """Whether this backend can pick receive memory on arrival (see `_provided_on_arrival`)."""
        return False

    def _release_leases(self, leases: list[Any]) -> None:
        """Return provided memory; the default's leases are pooled bytearrays. Backends with their
        own provided memory override this (and call it for leases of the default path)."""
        free = self._pbuf_free
        size = self._pbuf_size
        for buf in leases:
            self._pbuf_out -= 1
            if len(free) < _PBUF_FREE_MAX and len(buf) == size:
                free.append(buf)

    # ------------------------------------------------------------------ buffers
    def register_buffer(self, buffer: bytearray | memoryview) -> int:
        """User-space registration: the buffer is pinned by reference and addressed by id. Backends
        with kernel registration (io_uring fixed buffers, RIO) override this."""
        mv = as_memoryview(buffer)
        if mv.readonly:
            return -ErrorCode.BUFFER_TOO_SMALL
        buffer_id = next(self._buffer_ids)
        self._buffers[buffer_id] = mv
        return buffer_id

    def unregister_buffer(self, buffer_id: int) -> bool:
        return self._buffers.pop(buffer_id, None) is not None

    def _registered_slice(self, buffer_id: int, offset: int, length: int) -> memoryview | None:
        mv = self._buffers.get(buffer_id)
        if mv is None or offset < 0 or length < 0 or offset + length > len(mv):
            return None
        return mv[offset : offset + length]

    def send_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        view = self._registered_slice(buffer_id, offset, length)
        if view is None:
            self.last_error = f"buffer {buffer_id} [{offset}:{offset + length}] is not registered"
            return 0
        return self.send_async(sock, view, callback, context)

    def recv_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        max_length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        # A session's receive loop runs through here: no as_memoryview or writability check per
        # call (register_buffer made the view 1-D bytes and refused read-only buffers).
        mv = self._buffers.get(buffer_id)
        if mv is None or offset < 0 or max_length < 0 or offset + max_length > len(mv):
            self.last_error = f"buffer {buffer_id} [{offset}:{offset + max_length}] is not registered"
            return 0
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        return self._recv_view(sock, mv[offset : offset + max_length], callback, context, None)

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _backend_open(self) -> None:
        """Create kernel objects (epoll fd, ring, wake-up fd). Raise OSError on failure."""

    @abstractmethod
    def _backend_close(self) -> None:
        """Release kernel objects; no operation is pending any more."""

    def _backend_register(self, entry: SocketEntry) -> None:
        pass

    def _backend_unregister(self, entry: SocketEntry) -> None:
        pass

    @abstractmethod
    def _backend_send(self, op: Operation) -> None:
        """Start sending `op.buf` (all of it, in order behind the socket's earlier sends)."""

    @abstractmethod
    def _backend_recv(self, op: Operation) -> None:
        """Start a recv into `op.buf`; `op.buf is None` (only where `_provided_on_arrival`): into
        memory the backend picks when data arrives, completed with `_complete(..., data, lease)`."""

    @abstractmethod
    def _backend_accept(self, op: Operation) -> None:
        """Start accepting one connection on the listening socket."""

    @abstractmethod
    def _backend_connect(self, op: Operation) -> None:
        """Start connecting the socket to `op.address`."""

    @abstractmethod
    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        """Stop `op` and complete it with `status` (CANCELLED or TIMEOUT). A completion-based
        backend may complete it later, when the kernel confirms; it must complete it exactly once."""

    def _backend_cancel_all(self) -> None:
        """At shutdown: make sure the kernel touches no operation's memory any more. Operations
        still in `_pending` afterwards are completed as CANCELLED by the caller."""

    @abstractmethod
    def _backend_poll(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` (-1 forever, 0 poll) for kernel events and turn them into
        completions via `_complete`. Returning early with nothing done is allowed. Must return
        promptly after `_backend_wakeup()` from any thread."""

    @abstractmethod
    def _backend_wakeup(self) -> None:
        """Called from any thread: make a blocked `_backend_poll` return."""

    def _backend_set_option(self, name: str, value: Any) -> bool:
        return False

    def _backend_statistics(self) -> dict[str, Any]:
        return {}


class QueuedStreamsProvider(QueuedProvider, StreamsProvider):
    """`QueuedProvider` for a backend with streams: keeps the handlers its streams share."""

    def set_stream_handlers(self, on_data: StreamDataHandler, on_event: StreamEventHandler) -> None:
        self._on_stream_data = on_data
        self._on_stream_event = on_event
