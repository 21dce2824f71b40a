"""The AsyncIOProvider contract: one completion-style API over every OS's async I/O.

Every backend (epoll, io_uring, kqueue, IOCP, RIO, the RAON legacy adapter) implements this class
and proves itself against one contract suite (tests/test_provider_contract.py). docs/PROVIDER.md
says the same contract in prose.

Semantics every backend keeps:
- Operations complete exactly once, as a `CompletionResult`, through `process_completions`; the
  callback given at post time runs inside that call, after the result is appended to `results`.
- `process_completions(timeout_ms, max_results, results)` clears and fills `results` and returns
  >0 (that many), 0 (timed out, nothing ready) or <0 (the provider itself failed; `results[0]` holds
  the error). Completions beyond `max_results` stay queued for the next call.
- `timeout_ms`: -1 blocks, 0 polls.
- A send completes when all its bytes are written, or with an error. A recv completes with what
  arrived; 0 bytes means the peer closed. An accept completion carries `accepted == (sock, addr)`.
- `shutdown()` completes every pending operation as CANCELLED and runs its callback before it returns.
- `post()` may be called from any thread and wakes a blocked `process_completions`.

Provided-buffer receives (`recv_async_provided`, `Feature.PROVIDED_BUFFERS`): the caller gives no
buffer; the provider picks memory when data arrives and the SUCCESS result carries it as
`result.data`, a memoryview of exactly `bytes_transferred` bytes (empty: the peer closed).
THAT MEMORY BELONGS TO THE PROVIDER AND IS REUSED: `result.data` is valid only until the callback
returns (a caller reading `results` instead of callbacks: until its next `process_completions`
call). Copy what must outlive that (`bytes(result.data[i:j])`); never keep the memoryview. Failed,
cancelled and timed-out provided receives carry `data is None`. Every backend offers the method;
"ProvidedBuffers" is True only where no memory is held while the receive waits (the kernel or the
readiness loop picks it when data arrives), so an idle connection costs no receive buffer.

Streams (`Feature.STREAMS`, methods of `StreamsProvider`; for the per-frame hot path): a stream is
a registered socket's receive that stays armed plus an ordered send queue owned by the provider.
Only backends that subclass `StreamsProvider` have the methods; whether streams can be used on an
initialized instance is `supports_feature(Feature.STREAMS)` (they can be switched off by options).
There is no operation, no `CompletionResult` and no callback per send or per receive:
- `set_stream_handlers(on_data, on_event)` once; then `stream_open(sock, context)` -> stream id.
- `on_data(context, data)` for every arrival, in order; `data` is provider memory valid only until
  the handler returns (as `result.data` above).
- `stream_send(id, data)` takes `data` (the caller may reuse it at once) and returns the bytes not
  yet written, this call's included (0: all written already, as a readiness backend's immediate
  `send` usually manages), or a negative error code when the stream can no longer send (see
  below). Sends go out in call order; a short write is finished by the provider.
- `stream_send_many(ids, data, high_water)`: `stream_send` of one `data` to many streams in one
  call (a broadcast); returns the indices (into `ids`) of the streams where it failed or whose
  unsent bytes now exceed `high_water`, the only ones a caller has to look at again.
- `on_event(context, kind, error_code)`, `kind` a `StreamEvent`: EOF (the peer closed; receiving
  ended), ERROR (receiving or sending failed, at most once per stream; sends are refused from then
  on), or DRAINED, once per `stream_watch(id, low_water)` that returned False, when the unsent
  bytes fell to `low_water`.
- One error convention for streams: an error is the code a `CompletionResult` would carry
  (`map_errno(os_errno)`: an `ErrorCode` where one applies, else the OS errno). `on_event` passes
  it as `error_code` (0 for EOF and DRAINED); `stream_send` and `stream_queued` return it negated
  (for example `-ErrorCode.CONNECTION_RESET`, `-errno.EPIPE`, `-errno.ENOTCONN` for an unknown or
  closed stream), so `describe(-rc)` names it either way.
- `stream_pause_reading(id)` / `stream_resume_reading(id)`: flow control, as asyncio's
  `pause_reading`/`resume_reading`. While paused the provider issues no read for the stream, so
  the peer's bytes wait in the kernel and TCP's window pushes back on the sender. Bytes the
  provider had already received may still reach `on_data` after the pause (io_uring: chunks the
  kernel filled before its receive was cancelled); EOF and receive errors may be seen only after
  the resume. Both are idempotent and return False for a closed stream.
- `stream_close(id)`: no handler runs for the stream again and queued bytes are dropped (io_uring
  also cancels a send the kernel holds; on readiness backends bytes `send` already handed to the
  kernel still go out). Then unregister and close the socket as usual.
Handlers run inside `process_completions` (whose return value counts only `results`).
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from framework.io.errors import describe


class Status(IntEnum):
    """How an operation ended (`CompletionResult.status`)."""

    SUCCESS = 0
    ERROR = 1
    CANCELLED = 2
    TIMEOUT = 3


class OpType(IntEnum):
    """The kind of operation a `CompletionResult` completes."""

    SEND = 1
    RECV = 2
    ACCEPT = 3
    CONNECT = 4
    POST = 5


class CompletionResult:
    """Result of one operation. `error_code` is an `ErrorCode` where one applies to the OS error
    (docs/PROVIDER.md, "Error codes"), else the OS code itself (0 on success). `data` is set only for a successful
    `recv_async_provided`: provider-owned memory, valid only until the callback returns (see the
    module docstring)."""

    __slots__ = (
        "accepted",
        "bytes_transferred",
        "data",
        "error_code",
        "op_type",
        "operation_id",
        "status",
        "user_context",
    )

    def __init__(
        self,
        status: Status,
        bytes_transferred: int = 0,
        error_code: int = 0,
        operation_id: int = 0,
        user_context: Any = None,
        op_type: OpType | None = None,
        accepted: tuple[socket.socket, Any] | None = None,
        data: memoryview | None = None,
    ) -> None:
        self.status = status
        self.bytes_transferred = bytes_transferred
        self.error_code = error_code
        self.operation_id = operation_id
        self.user_context = user_context
        self.op_type = op_type
        self.accepted = accepted
        self.data = data

    @property
    def ok(self) -> bool:
        """True when the operation succeeded."""
        return self.status == 0  # Status.SUCCESS; looking the member up costs more than the compare

    def __repr__(self) -> str:
        op = self.op_type.name if self.op_type is not None else "?"
        err = f" error={describe(self.error_code)}" if self.error_code else ""
        return (
            f"CompletionResult({op} #{self.operation_id} {Status(self.status).name}"
            f" bytes={self.bytes_transferred}{err})"
        )


CompletionCallback = Callable[[CompletionResult, Any], None]


class Feature(StrEnum):
    """What `supports_feature` answers for. Members are strings, so `supports_feature("Streams")`
    and `supports_feature(Feature.STREAMS)` are the same question."""

    BATCH_SUBMIT = "BatchSubmit"
    POST_COMPLETION = "PostCompletion"
    OPERATION_TIMEOUT = "OperationTimeout"
    CANCEL = "Cancel"
    ASYNC_CANCEL = "AsyncCancel"
    PROVIDED_BUFFERS = "ProvidedBuffers"  # receives into memory picked on arrival (module docstring)
    STREAMS = "Streams"  # `StreamsProvider` methods usable now (module docstring)
    BUFFER_REGISTRATION = "BufferRegistration"  # buffers registered with the kernel
    USER_BUFFER_REGISTRATION = "UserBufferRegistration"  # registered in user space only
    GATHER_SEND = "GatherSend"
    EDGE_TRIGGERED = "EdgeTriggered"
    LINKED_TIMEOUT = "LinkedTimeout"
    NO_DROP_COMPLETIONS = "NoDropCompletions"
    MULTISHOT_ACCEPT = "MultishotAccept"
    FIXED_FILE_SET = "FixedFileSet"
    COMPLETION_PORT = "CompletionPort"
    ACCEPT_EX = "AcceptEx"
    CONNECT_EX = "ConnectEx"
    REGISTERED_IO = "RegisteredIO"
    LEGACY_IOCP = "LegacyIocp"


class StreamEvent(IntEnum):
    """`on_event`'s `kind` (DATA goes to `on_data`; it is listed because io_uring's C reaper
    numbers its events with the same values)."""

    DATA = 0
    EOF = 1
    ERROR = 2
    DRAINED = 3


# Plain ints for comparisons on hot paths (an IntEnum compare costs more than an int's); equal to
# the members, which handlers also receive as plain ints.
STREAM_DATA: int = StreamEvent.DATA.value
STREAM_EOF: int = StreamEvent.EOF.value
STREAM_ERROR: int = StreamEvent.ERROR.value
STREAM_DRAINED: int = StreamEvent.DRAINED.value

StreamDataHandler = Callable[[Any, memoryview], object]
StreamEventHandler = Callable[[Any, int, int], object]


@dataclass(slots=True)
class SendOperation:
    """One send of a `send_batch_async` batch."""

    sock: socket.socket
    data: bytes | bytearray | memoryview
    context: Any = None
    callback: CompletionCallback | None = None


@dataclass(slots=True)
class RecvOperation:
    """One receive of a `recv_batch_async` batch."""

    sock: socket.socket
    buffer: bytearray | memoryview
    context: Any = None
    callback: CompletionCallback | None = None


@dataclass(slots=True)
class ProviderStatistics:
    """`get_statistics()`: counters every backend keeps, plus `backend_specific` ones."""

    active_connections: int = 0
    pending_operations: int = 0
    completed_operations: int = 0
    failed_operations: int = 0
    average_latency_ms: float = 0.0
    backend: str = ""
    backend_specific: dict[str, Any] = field(default_factory=dict)


class AsyncIOProvider(ABC):
    """Unified async I/O interface every backend implements (see the module docstring)."""

    name: str = "abstract"
    last_error: str = ""
    """Why the last call that returned False or 0 failed (empty when none did)."""

    @classmethod
    def probe(cls) -> None:
        """Raise `BackendUnavailable` with the reason when this backend cannot run on this machine
        (wrong OS, kernel, missing library); return when it can. Backends override it."""
        return None  # the default: nothing to check

    # ---- initialization ----
    @abstractmethod
    def initialize(self, max_connections: int, max_completion_queue_size: int = 256) -> bool:
        """Create the kernel objects; False (with `last_error`) when that fails."""

    @property
    @abstractmethod
    def initialized(self) -> bool:
        """True between a successful `initialize` and `shutdown`."""

    @abstractmethod
    def shutdown(self) -> None:
        """Complete every pending operation as CANCELLED, run its callback, release the kernel
        objects (docs/PROVIDER.md, "Shutdown")."""

    # ---- sockets ----
    @abstractmethod
    def register_socket(self, sock: socket.socket, context: Any = None) -> bool:
        """Make `sock` usable for operations; False (with `last_error`) when it cannot be."""

    @abstractmethod
    def unregister_socket(self, sock: socket.socket) -> bool:
        """Cancel the socket's pending operations and forget it; False when it was not registered."""

    # ---- operations; each returns an operation id, 0 when nothing was posted ----
    @abstractmethod
    def send_async(
        self,
        sock: socket.socket,
        data: bytes | bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Send all of `data`; completes when every byte is written, or with an error."""

    @abstractmethod
    def recv_async(
        self,
        sock: socket.socket,
        buffer: bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Receive into `buffer`; completes with what arrived (0 bytes: the peer closed)."""

    @abstractmethod
    def recv_async_provided(
        self,
        sock: socket.socket,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Receive into provider-owned memory picked when data arrives; completes like
        `recv_async` with the bytes in `result.data` (a memoryview VALID ONLY UNTIL THE CALLBACK
        RETURNS, or for a `results` reader until the next `process_completions`). 0 bytes: the
        peer closed. See the module docstring."""

    @abstractmethod
    def accept_async(
        self, listen_sock: socket.socket, callback: CompletionCallback | None = None, context: Any = None
    ) -> int:
        """Accept one connection; the completion carries `accepted == (sock, addr)`."""

    @abstractmethod
    def connect_async(
        self,
        sock: socket.socket,
        address: Any,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Connect the registered `sock` to `address`."""

    @abstractmethod
    def send_batch_async(self, ops: Sequence[SendOperation]) -> int:
        """Post several sends at once; returns how many were posted."""

    @abstractmethod
    def recv_batch_async(self, ops: Sequence[RecvOperation]) -> int:
        """Post several receives at once; returns how many were posted."""

    @abstractmethod
    def cancel(self, operation_id: int) -> bool:
        """Complete a pending operation as CANCELLED; False when it is not pending."""

    # ---- completions ----
    @abstractmethod
    def process_completions(self, timeout_ms: int, max_results: int, results: list[CompletionResult]) -> int:
        """Clear and fill `results`; >0 that many, 0 timed out, <0 the provider failed
        (docs/PROVIDER.md, "process_completions")."""

    @abstractmethod
    def post(self, callback: CompletionCallback | None, context: Any = None) -> int:
        """From any thread: queue a POST completion and wake a blocked `process_completions`."""

    # ---- configuration and diagnostics ----
    def get_backend_name(self) -> str:
        """The backend's name (`name`)."""
        return self.name

    @abstractmethod
    def supports_feature(self, name: Feature | str) -> bool:
        """Whether this provider offers `name` now (a `Feature` or its string value)."""

    @abstractmethod
    def set_option(self, name: str, value: Any) -> bool:
        """Set a backend option; False when the name or value is not accepted."""

    @abstractmethod
    def get_statistics(self) -> ProviderStatistics:
        """A snapshot of the provider's counters."""

    # ---- buffer registration (kernel-registered where the backend can) ----
    @abstractmethod
    def register_buffer(self, buffer: bytearray | memoryview) -> int:
        """Pin `buffer` for registered sends and receives; returns its id (-1 on failure)."""

    @abstractmethod
    def unregister_buffer(self, buffer_id: int) -> bool:
        """Release a registered buffer; False when the id is unknown."""

    @abstractmethod
    def send_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        """`send_async` of `length` bytes at `offset` of a registered buffer."""

    @abstractmethod
    def recv_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        max_length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        """`recv_async` into `max_length` bytes at `offset` of a registered buffer."""


class StreamsProvider(AsyncIOProvider):
    """A provider with streams (see the module docstring): only backends that can run them
    subclass it. Use them where `supports_feature(Feature.STREAMS)` (options can switch them off)."""

    @abstractmethod
    def set_stream_handlers(self, on_data: StreamDataHandler, on_event: StreamEventHandler) -> None:
        """Set the two handlers every stream of this provider shares; before `stream_open`."""

    @abstractmethod
    def stream_open(self, sock: socket.socket, context: Any = None) -> int:
        """Start a stream on the registered, connected `sock`; its id, 0 when refused (with
        `last_error`). Raises NotImplementedError before `initialize` or `set_stream_handlers`."""

    @abstractmethod
    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue `data` behind the stream's earlier sends; the bytes not yet written (this call's
        included), or a negative error code."""

    def stream_send_many(
        self, stream_ids: Sequence[int], data: bytes | bytearray | memoryview, high_water: int
    ) -> list[int]:
        """`stream_send` of `data` to each stream; the indices of those that failed or whose
        unsent bytes now exceed `high_water`. Backends may do it in one call into C."""
        flagged = []
        send = self.stream_send
        for i, sid in enumerate(stream_ids):
            unsent = send(sid, data)
            if unsent < 0 or unsent > high_water:
                flagged.append(i)
        return flagged

    @abstractmethod
    def stream_queued(self, stream_id: int) -> int:
        """The stream's unsent bytes, or a negative error code."""

    @abstractmethod
    def stream_watch(self, stream_id: int, low_water: int) -> bool:
        """True: the unsent bytes are already <= low_water (no event follows); False: one
        DRAINED event will come."""

    @abstractmethod
    def stream_pause_reading(self, stream_id: int) -> bool:
        """Stop reading the stream (flow control); False for a closed stream."""

    @abstractmethod
    def stream_resume_reading(self, stream_id: int) -> bool:
        """Read the stream again; False for a closed stream."""

    @abstractmethod
    def stream_close(self, stream_id: int) -> None:
        """No handler runs for the stream again; its queued bytes are dropped."""
