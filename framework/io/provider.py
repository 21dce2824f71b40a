"""The AsyncIOProvider contract: one completion-style API over every OS's async I/O.

Snake_case of the seed's `AsyncIOProvider`. Every backend (epoll, io_uring, kqueue, IOCP, RIO, the
RAON legacy adapter) implements this class and proves itself against one contract suite
(tests/test_provider_contract.py).

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

Provided-buffer receives (`recv_async_provided`, feature "ProvidedBuffers"): the caller gives no
buffer; the provider picks memory when data arrives and the SUCCESS result carries it as
`result.data`, a memoryview of exactly `bytes_transferred` bytes (empty: the peer closed).
THAT MEMORY BELONGS TO THE PROVIDER AND IS REUSED: `result.data` is valid only until the callback
returns (a caller reading `results` instead of callbacks: until its next `process_completions`
call). Copy what must outlive that (`bytes(result.data[i:j])`); never keep the memoryview. Failed,
cancelled and timed-out provided receives carry `data is None`. Every backend offers the method;
"ProvidedBuffers" is True only where no memory is held while the receive waits (the kernel or the
readiness loop picks it when data arrives), so an idle connection costs no receive buffer.

Streams (feature "Streams"; an extension beyond the seed for the per-frame hot path): a stream is a
registered socket's receive that stays armed plus an ordered send queue owned by the provider.
There is no operation, no `CompletionResult` and no callback per send or per receive:
- `set_stream_handlers(on_data, on_event)` once; then `stream_open(sock, context)` -> stream id.
- `on_data(context, data)` for every arrival, in order; `data` is provider memory valid only until
  the handler returns (as `result.data` above).
- `stream_send(id, data)` takes `data` (the caller may reuse it at once) and returns the bytes not
  yet written, this call's included (0: all written already, as a readiness backend's immediate
  `send` usually manages), or -errno when the stream can no longer send. Sends go out in call
  order; a short write is finished by the provider.
- `stream_send_many(ids, data, high_water)`: `stream_send` of one `data` to many streams in one
  call (a broadcast); returns the indices (into `ids`) of the streams where it failed or whose
  unsent bytes now exceed `high_water`, the only ones a caller has to look at again.
- `on_event(context, kind, error_code)`: STREAM_EOF (the peer closed; receiving ended),
  STREAM_ERROR (receiving or sending failed, at most once per stream; `error_code` as in
  `CompletionResult`; sends are refused from then on), or STREAM_DRAINED, once per
  `stream_watch(id, low_water)` that returned False, when the unsent bytes fell to `low_water`.
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
from enum import IntEnum
from typing import Any

from framework.io.errors import describe


class Status(IntEnum):
    SUCCESS = 0
    ERROR = 1
    CANCELLED = 2
    TIMEOUT = 3


class OpType(IntEnum):
    SEND = 1
    RECV = 2
    ACCEPT = 3
    CONNECT = 4
    POST = 5


class CompletionResult:
    """Result of one operation. `error_code` is an `ErrorCode` where the seed maps the OS error,
    else the OS code itself (0 on success). `data` is set only for a successful
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
        return self.status == 0  # Status.SUCCESS; looking the member up costs more than the compare

    def __repr__(self) -> str:
        op = self.op_type.name if self.op_type is not None else "?"
        err = f" error={describe(self.error_code)}" if self.error_code else ""
        return (
            f"CompletionResult({op} #{self.operation_id} {Status(self.status).name}"
            f" bytes={self.bytes_transferred}{err})"
        )


CompletionCallback = Callable[[CompletionResult, Any], None]

# stream event kinds (`on_event`'s second argument)
STREAM_EOF = 1
STREAM_ERROR = 2
STREAM_DRAINED = 3


@dataclass(slots=True)
class SendOperation:
    sock: socket.socket
    data: bytes | bytearray | memoryview
    context: Any = None
    callback: CompletionCallback | None = None


@dataclass(slots=True)
class RecvOperation:
    sock: socket.socket
    buffer: bytearray | memoryview
    context: Any = None
    callback: CompletionCallback | None = None


@dataclass(slots=True)
class ProviderStatistics:
    active_connections: int = 0
    pending_operations: int = 0
    completed_operations: int = 0
    failed_operations: int = 0
    average_latency_ms: float = 0.0
    backend: str = ""
    backend_specific: dict[str, Any] = field(default_factory=dict)


class AsyncIOProvider(ABC):
    """Unified async I/O interface (the seed's AsyncIOProvider)."""

    name: str = "abstract"

    # ---- initialization ----
    @abstractmethod
    def initialize(self, max_connections: int, max_completion_queue_size: int = 256) -> bool: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    # ---- sockets ----
    @abstractmethod
    def register_socket(self, sock: socket.socket, context: Any = None) -> bool: ...

    @abstractmethod
    def unregister_socket(self, sock: socket.socket) -> bool: ...

    # ---- operations; each returns an operation id, 0 when nothing was posted ----
    @abstractmethod
    def send_async(
        self,
        sock: socket.socket,
        data: bytes | bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int: ...

    @abstractmethod
    def recv_async(
        self,
        sock: socket.socket,
        buffer: bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int: ...

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
    ) -> int: ...

    @abstractmethod
    def connect_async(
        self,
        sock: socket.socket,
        address: Any,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int: ...

    @abstractmethod
    def send_batch_async(self, ops: Sequence[SendOperation]) -> int: ...

    @abstractmethod
    def recv_batch_async(self, ops: Sequence[RecvOperation]) -> int: ...

    @abstractmethod
    def cancel(self, operation_id: int) -> bool: ...

    # ---- completions ----
    @abstractmethod
    def process_completions(self, timeout_ms: int, max_results: int, results: list[CompletionResult]) -> int: ...

    @abstractmethod
    def post(self, callback: CompletionCallback | None, context: Any = None) -> int: ...

    # ---- configuration and diagnostics ----
    def get_backend_name(self) -> str:
        return self.name

    @abstractmethod
    def supports_feature(self, name: str) -> bool: ...

    @abstractmethod
    def set_option(self, name: str, value: Any) -> bool: ...

    @abstractmethod
    def get_statistics(self) -> ProviderStatistics: ...

    # ---- streams (feature "Streams"; see the module docstring) ----
    def set_stream_handlers(
        self, on_data: Callable[[Any, memoryview], Any], on_event: Callable[[Any, int, int], Any]
    ) -> None:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_open(self, sock: socket.socket, context: Any = None) -> int:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_send_many(
        self, stream_ids: Sequence[int], data: bytes | bytearray | memoryview, high_water: int
    ) -> list[int]:
        """See the module docstring; backends may do it in one call into C."""
        flagged = []
        send = self.stream_send
        for i, sid in enumerate(stream_ids):
            unsent = send(sid, data)
            if unsent < 0 or unsent > high_water:
                flagged.append(i)
        return flagged

    def stream_queued(self, stream_id: int) -> int:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_watch(self, stream_id: int, low_water: int) -> bool:
        """True: the unsent bytes are already <= low_water (no event follows); False: one
        STREAM_DRAINED event will come."""
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_pause_reading(self, stream_id: int) -> bool:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_resume_reading(self, stream_id: int) -> bool:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    def stream_close(self, stream_id: int) -> None:
        raise NotImplementedError(f"{self.name} has no streams (check supports_feature('Streams'))")

    # ---- buffer registration (kernel-registered where the backend can) ----
    @abstractmethod
    def register_buffer(self, buffer: bytearray | memoryview) -> int: ...

    @abstractmethod
    def unregister_buffer(self, buffer_id: int) -> bool: ...

    @abstractmethod
    def send_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int: ...

    @abstractmethod
    def recv_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        max_length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int: ...
