"""legacy_iocp backend: the AsyncIOProvider interface on top of a RAON-style `IocpCore`.

`IocpLegacyProvider` wraps an existing `IocpCore` and adapts `IocpCore::HandleIocp` to the provider
interface (docs/PROVIDER.md), so new `Session` code runs inside a legacy process. It lives in the
legacy package because it depends on it; `framework.io.factory` registers it by dotted path, so the
io layer never imports this package. "Wrapping" here means:
- the provider owns (or is given) an `IocpCore`; every registered socket becomes an `IocpObject`
  associated with that core (the completion key), and every operation is issued through the core's
  Winsock calls (`wsa_send`, `wsa_recv`, `accept_ex`, `connect_ex`) with an `OverlappedEx` that
  carries the provider's `Operation`;
- `_backend_poll(timeout)` is exactly one `IocpCore.handle_iocp(timeout)`: the core dispatches
  `(IocpObject, OverlappedEx, bytes)` and the socket object turns that into this provider's
  completion, so whoever drives this provider also drives every legacy object on the same core
  (RAON listeners, sessions, jobs, timers): both styles share one loop during a migration;
- cross-thread `post()` wakes the core with a key-less completion (PostQueuedCompletionStatus);
- cancellation and timeouts ask the core to CancelIoEx the underlying operation and complete only
  when the core confirms it (a completion-based backend may still be writing into the buffer until
  then); the status asked for (CANCELLED or TIMEOUT) replaces the underlying CANCELLED.
`QueuedProvider` keeps all the bookkeeping (ids, pending table, ready queue, timeouts, statistics);
this module holds only the translation. The core itself runs on the platform's real backend
(io_uring or epoll here; `set_option("legacy_underlying", name)` before initialize picks one).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from framework.io.backends.base import Operation, QueuedProvider, SocketEntry
from framework.io.errors import BackendUnavailable, ErrorCode
from framework.io.provider import Status
from framework.legacy.core import IocpCore, IocpObject, IoType, OverlappedEx

_DRAIN_S = 5.0  # how long shutdown waits for a shared core to confirm cancellations


class _SocketObject(IocpObject):
    """The IocpObject for one socket registered with the provider."""

    def __init__(self, provider: IocpLegacyProvider, sock: socket.socket) -> None:
        super().__init__()
        self.provider = provider
        self.sock = sock

    def get_handle(self) -> socket.socket:
        return self.sock

    def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
        self.provider._on_iocp(overlapped, bytes_transferred)


class IocpLegacyProvider(QueuedProvider):
    """AsyncIOProvider over an IocpCore (see the module docstring)."""

    name = "legacy_iocp"

    def __init__(self, core: IocpCore | None = None, *, underlying: str = "auto") -> None:
        super().__init__()
        self._core = core
        self._owns_core = core is None
        self._underlying = underlying
        self._free_ov: list[OverlappedEx] = []

    @staticmethod
    def probe() -> None:
        """Raise `BackendUnavailable` when no backend that could run the core works here."""
        from framework.io.factory import available_backends

        if not available_backends():
            raise BackendUnavailable("legacy_iocp", "no underlying backend can run on this platform")

    @property
    def core(self) -> IocpCore:
        """The IocpCore this provider runs on; RuntimeError before initialize."""
        if self._core is None:
            raise RuntimeError("provider is not initialized")
        return self._core

    # ------------------------------------------------------------------ lifecycle
    def _backend_open(self) -> None:
        if self._owns_core:
            self._core = IocpCore(
                backend=self._underlying,
                max_connections=self._max_connections,
                max_completion_queue_size=self._cq_size,
                batch_size=self._cq_size,
            )
        core = self._core
        assert core is not None  # given, or made just above
        if not core.initialize():  # an unusable underlying backend is reported here too
            raise OSError(f"IocpCore.initialize failed: {core.last_error}")

    def _backend_close(self) -> None:
        if self._owns_core and self._core is not None:
            self._core.shutdown()
            self._core = None
        self._free_ov.clear()

    def _backend_cancel_all(self) -> None:
        core = self._core
        if core is None:
            return
        if self._owns_core:
            # Shutting the core's provider down completes every underlying operation (CANCELLED)
            # through handle_iocp, i.e. into this provider's ready queue, before it returns.
            core.shutdown()
            return
        # A shared core keeps running: cancel only our operations and pump until confirmed.
        waiting = [op for op in self._pending.values() if isinstance(op.token, OverlappedEx)]
        for op in waiting:
            self._request_cancel(op, Status.CANCELLED, 0)
        deadline = time.monotonic() + _DRAIN_S
        while any(op.op_id in self._pending for op in waiting) and time.monotonic() < deadline:
            core.handle_iocp(10)

    # ------------------------------------------------------------------ sockets
    def _backend_register(self, entry: SocketEntry) -> None:
        obj = _SocketObject(self, entry.sock)
        if not self.core.register_iocp_object(obj):
            raise OSError(self.core.last_error)
        entry.state = obj

    def _backend_unregister(self, entry: SocketEntry) -> None:
        obj = entry.state
        if obj is not None and self._core is not None and not self._core.closed:
            self._core.unregister_iocp_object(obj)  # underlying operations complete CANCELLED

    # ------------------------------------------------------------------ operations
    @staticmethod
    def _obj(op: Operation) -> IocpObject:
        """The IocpObject of the operation's socket (a hook's operation is on a registered one)."""
        entry = op.entry
        assert entry is not None
        obj: IocpObject = entry.state
        return obj

    def _overlapped(self, op: Operation, io_type: IoType) -> OverlappedEx:
        ov = self._free_ov.pop() if self._free_ov else OverlappedEx(io_type)
        ov.io_type = io_type
        ov.owner = self._obj(op)
        ov.wsa_buf = op.buf
        ov.user = op
        ov.cancel_status = None
        op.token = ov
        return ov

    def _issued(self, op: Operation, ok: bool) -> None:
        if not ok:  # the core's provider refused (shut down): nothing will complete it later
            ov, op.token = op.token, None
            ov.user = ov.owner = ov.wsa_buf = None
            self._complete(op, Status.ERROR, 0, ErrorCode.SOCKET_NOT_REGISTERED)

    def _backend_send(self, op: Operation) -> None:
        self._issued(op, self.core.wsa_send(self._obj(op), self._overlapped(op, IoType.SEND)))

    def _backend_recv(self, op: Operation) -> None:
        self._issued(op, self.core.wsa_recv(self._obj(op), self._overlapped(op, IoType.RECV)))

    def _backend_accept(self, op: Operation) -> None:
        self._issued(op, self.core.accept_ex(self._obj(op), self._overlapped(op, IoType.ACCEPT)))

    def _backend_connect(self, op: Operation) -> None:
        ov = self._overlapped(op, IoType.CONNECT)
        self._issued(op, self.core.connect_ex(self._obj(op), ov, op.address))

    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        if isinstance(op.token, OverlappedEx) and op.token.pending:
            self._request_cancel(op, status, error_code)
        else:
            self._complete(op, status, op.done, error_code)

    def _request_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        ov = op.token
        if ov.cancel_status is None:  # the first reason wins (a timeout, then a cancel)
            ov.cancel_status = (status, error_code)
        self.core.cancel_io_ex(ov)

    def _on_iocp(self, ov: OverlappedEx, nbytes: int) -> None:
        """The core dispatched one of our operations: complete it here."""
        op: Operation = ov.user
        status, error_code = ov.status, ov.error_code
        if ov.cancel_status is not None and status == Status.CANCELLED:
            status, error_code = ov.cancel_status
        accepted, ov.accepted = ov.accepted, None
        ov.user = ov.owner = ov.wsa_buf = None
        ov.cancel_status = None
        op.token = None
        self._free_ov.append(ov)
        self._complete(op, status, nbytes, error_code, accepted)

    # ------------------------------------------------------------------ loop
    def _backend_poll(self, timeout_ms: int) -> None:
        self.core.handle_iocp(timeout_ms)

    def _backend_wakeup(self) -> None:
        core = self._core
        if core is not None and not core.closed:
            core.wakeup()

    # ------------------------------------------------------------------ options, statistics
    def _features(self) -> frozenset[str]:
        return super()._features() | {"UserBufferRegistration", "LegacyIocp"}

    def _backend_set_option(self, name: str, value: Any) -> bool:
        if name == "legacy_underlying":
            if self._initialized or not self._owns_core:
                return False
            self._underlying = str(value)
            return True
        if self._core is None:
            return False
        return self._core.provider.set_option(name, value)

    def _backend_statistics(self) -> dict[str, Any]:
        core = self._core
        if core is None:
            return {}
        under = core.provider.get_statistics()
        return {
            "underlying_backend": under.backend,
            "underlying_pending": under.pending_operations,
            "underlying_completed": under.completed_operations,
            "iocp_dispatched": core.dispatched,
            "iocp_handler_errors": core.handler_errors,
        }
