"""Windows Registered I/O (RIO) through cffi in ABI mode, on top of the IOCP backend.

Facts about the kernel API that shaped this module:
- The RIO functions are not exported by any DLL: one `WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER,
  WSAID_MULTIPLE_RIO)` returns the whole RIO_EXTENSION_FUNCTION_TABLE (Windows 8 / Server 2012+).
  When it fails the backend is unavailable and "auto" falls back to IOCP.
- RIO moves data only between *registered* memory (`RIORegisterBuffer` -> RIO_BUFFERID; a RIO_BUF is
  (id, offset, length)). `register_buffer` registers the caller's buffer, so sends from it go
  straight to the kernel; other memory is copied through a pool of registered staging slots.
  A buffer must stay registered while any request on it is in flight, so deregistration is deferred
  (the buffer stays pinned until the request's completion is dequeued, even after a cancel).
- Receives always land in a staging slot and are copied out on completion, also for registered
  buffers: a RIO request cannot be cancelled, so a receive pointed at the caller's memory would
  keep writing there after its cancel or timeout was reported. A slot is the provider's, so a
  cancelled receive's late bytes never touch memory the caller got back.
- Sockets for RIO are created with `WSASocketW(..., WSA_FLAG_REGISTERED_IO)`. Sockets this provider
  makes (`create_socket()`, and every socket AcceptEx accepts into) use RIO; any other socket keeps
  the IOCP path of the base class (overlapped WSASend/WSARecv), so every socket works.
- A request queue (`RIOCreateRequestQueue`) belongs to one socket, lives until the socket is closed,
  and bounds the outstanding sends and receives; requests beyond that bound wait in a per-socket
  backlog. All request queues feed one completion queue, which must have room for every request
  that can be outstanding, so it grows (`RIOResizeCompletionQueue`) as request queues are added.
- `RIOCreateCompletionQueue` with RIO_NOTIFICATION_COMPLETION of type RIO_IOCP_COMPLETION posts one
  packet (our key + our OVERLAPPED) to the IOCP port when completions are ready after `RIONotify`.
  On that packet we drain with `RIODequeueCompletion` in batches (RIORESULT: Status is a Winsock
  error, RequestContext is our request id) and re-arm with `RIONotify`: one port wait serves
  AcceptEx/ConnectEx, RIO completions and `post()` wake-ups alike.
- Requests issued with RIO_MSG_DEFER are committed in one go (RIO_MSG_COMMIT_ONLY) per socket per
  pump: many sends or receives cost one kernel transition.
- On a stream socket a successful RIOSend transfers its whole buffer; RIOReceive completes with what
  arrived (0 = the peer closed). RIO requests in order per socket and cannot be cancelled one by
  one (only closing the socket aborts them): `cancel`/timeouts complete the operation at once,
  the request finishes in the background, and bytes a cancelled receive still gets are kept and
  handed to the next receive, so no stream data is lost. For that, at most ONE receive per socket
  is in the kernel: a later receive waits in the backlog until the request ahead of it completed,
  so it can never overtake it (nor wait forever for bytes the request ahead of it took).
- A send completes (or fails) when its last piece does; a failed piece fails the operation and
  takes it out of the socket's backlog at once, whatever pieces are still in flight.
- The notification is re-armed (`RIONotify`) after every drain, also when handling a completion
  raised: without it no RIO completion would ever reach the port again.
"""

from __future__ import annotations

import itertools
import socket
import sys
import weakref
from collections import deque
from typing import Any, ClassVar

import structlog

from framework.io.backends import _windows_cffi as win
from framework.io.backends.base import Operation, SocketEntry, as_memoryview
from framework.io.backends.iocp import IocpProvider, _never_returned, map_windows_error
from framework.io.errors import BackendUnavailable, ErrorCode, ProviderError
from framework.io.provider import OpType, Status

log = structlog.get_logger("framework.io")
ffi = win.ffi

RECV_DEPTH = 1  # outstanding receives per request queue: one, see the module docstring
SEND_DEPTH = 8  # outstanding sends per request queue
STAGING_SLOT = 8 * 1024  # bytes per staging slot (a bigger unregistered send goes in pieces)
STAGING_CHUNK_SLOTS = 64  # slots registered per RIORegisterBuffer call when the pool grows
_MAX_RIO_LEN = 0x7FFFFFFF


class _StagingPool:
    """Registered slots that unregistered caller memory is copied through. Grows a chunk at a
    time, so an idle connection's pending receive can never starve another socket of a slot."""

    def __init__(self, rio: Any) -> None:
        self._rio = rio
        self.chunks: list[tuple[Any, Any]] = []  # (memory, RIO_BUFFERID)
        self.free: list[int] = []

    def grow(self) -> bool:
        size = STAGING_SLOT * STAGING_CHUNK_SLOTS
        mem = ffi.new("char[]", size)
        rid = self._rio.RIORegisterBuffer(mem, size)
        if _invalid_buffer_id(rid):
            return False
        base = len(self.chunks) * STAGING_CHUNK_SLOTS
        self.chunks.append((mem, rid))
        self.free.extend(range(base + STAGING_CHUNK_SLOTS - 1, base - 1, -1))
        return True

    def take(self) -> int:
        if not self.free and not self.grow():
            return -1
        return self.free.pop()

    def give(self, slot: int) -> None:
        self.free.append(slot)

    def memory(self, slot: int) -> Any:
        """`char *` to the slot."""
        return self.chunks[slot // STAGING_CHUNK_SLOTS][0] + (slot % STAGING_CHUNK_SLOTS) * STAGING_SLOT

    def locate(self, slot: int) -> tuple[Any, int]:
        """(RIO_BUFFERID, offset) of the slot."""
        return self.chunks[slot // STAGING_CHUNK_SLOTS][1], (slot % STAGING_CHUNK_SLOTS) * STAGING_SLOT

    def close(self) -> None:
        for _mem, rid in self.chunks:
            self._rio.RIODeregisterBuffer(rid)
        self.chunks.clear()
        self.free.clear()


class _Region:
    """A buffer registered with RIORegisterBuffer: address range, RIO id, in-flight users."""

    __slots__ = ("cbuf", "end", "retired", "rid", "start", "users")

    def __init__(self, start: int, end: int, rid: Any, cbuf: Any) -> None:
        self.start = start
        self.end = end
        self.rid = rid
        self.cbuf = cbuf  # keeps the caller's memory exported (cannot be resized or freed)
        self.users = 0
        self.retired = False


class _RioSocket:
    """Per-socket RIO state; outlives a registration (the request queue lives with the socket)."""

    __slots__ = ("carry", "eof", "recv_queue", "recvs_out", "rq", "send_queue", "sends_out", "sock_ref")

    def __init__(self, rq: Any, sock: socket.socket) -> None:
        self.rq = rq
        self.sock_ref = weakref.ref(sock)
        self.send_queue: deque[Operation] = deque()  # not fully issued yet, in order
        self.recv_queue: deque[Operation] = deque()
        self.sends_out = 0
        self.recvs_out = 0
        self.carry = bytearray()  # received by a cancelled request; belongs to the next receive
        self.eof = False

    def closed(self) -> bool:
        sock = self.sock_ref()
        return sock is None or sock.fileno() == -1


class _RioOp:
    """Backend-private progress of a RIO send/recv (stored in Operation.token)."""

    __slots__ = ("issued", "offset", "region")

    def __init__(self, region: _Region | None, offset: int) -> None:
        self.region = region
        self.offset = offset  # of op.buf inside the region
        self.issued = 0


class _RioReq:
    __slots__ = ("buf", "length", "op", "region", "rs", "send", "slot")

    def __init__(
        self, op: Operation, rs: _RioSocket, send: bool, slot: int, length: int, region: _Region | None
    ):
        self.op = op
        self.rs = rs
        self.send = send
        self.slot = slot
        self.length = length
        self.region = region
        self.buf = ffi.new("RIO_BUF *")


class RioProvider(IocpProvider):
    """AsyncIOProvider on Windows Registered I/O; accept/connect and non-RIO sockets use IOCP."""

    name = "rio"
    KEY_RIO: ClassVar[int] = 3

    def __init__(self) -> None:
        super().__init__()
        self._rio: Any = None
        self._cq: Any = None
        self._cq_capacity = 0
        self._cq_reserved = 0
        self._notify: Any = None
        self._notify_ov: Any = None
        self._results: Any = None
        self._pool: _StagingPool | None = None
        self._regions: dict[int, _Region] = {}
        self._rio_reqs: dict[int, _RioReq] = {}
        self._req_ids = itertools.count(1)
        self._capable: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._rio_sockets: weakref.WeakKeyDictionary[socket.socket, _RioSocket] = weakref.WeakKeyDictionary()
        self._dirty: set[_RioSocket] = set()
        self._commits = 0
        self._rio_dequeues = 0
        self._fallback_sockets = 0

    # ------------------------------------------------------------------ availability
    @classmethod
    def probe(cls) -> None:
        if sys.platform != "win32":
            raise BackendUnavailable(
                cls.name, f"Registered I/O is a Windows 8+ Winsock API; this is {sys.platform}"
            )
        try:
            libs = win.load()
        except OSError as exc:
            raise BackendUnavailable(cls.name, f"cannot load kernel32/ws2_32: {exc}") from exc
        try:
            _load_rio_table(libs)
        except OSError as exc:
            raise BackendUnavailable(
                cls.name, f"the RIO extension is missing (needs Windows 8 / Server 2012 or later): {exc}"
            ) from exc

    # ------------------------------------------------------------------ lifecycle
    def _backend_open(self) -> None:
        super()._backend_open()
        # Request queues of a previous run were bound to its completion queue: forget them.
        self._rio_sockets = weakref.WeakKeyDictionary()
        self._dirty = set()
        self._cq_reserved = 0
        try:
            self._open_rio()
        except BaseException:
            self._backend_close()  # release the port, queue and pool opened so far
            raise

    def _open_rio(self) -> None:
        libs = self._k()
        self._rio = rio = _load_rio_table(libs)
        self._notify_ov = ffi.new("OVERLAPPED *")
        notify = ffi.new("RIO_NOTIFICATION_COMPLETION *")
        notify.Type = win.RIO_IOCP_COMPLETION
        notify.Iocp.IocpHandle = self._port
        notify.Iocp.CompletionKey = ffi.cast("PVOID", self.KEY_RIO)
        notify.Iocp.Overlapped = self._notify_ov
        self._notify = notify
        self._cq_capacity = min(
            win.RIO_MAX_CQ_SIZE, max(1, min(self._max_connections, 64)) * (RECV_DEPTH + SEND_DEPTH)
        )
        cq = rio.RIOCreateCompletionQueue(self._cq_capacity, notify)
        if cq == ffi.NULL:
            raise win.winerror_exc(libs.ws2_32.WSAGetLastError(), "RIOCreateCompletionQueue")
        self._cq = cq
        self._results = ffi.new("RIORESULT[]", self._batch)
        self._pool = _StagingPool(rio)
        if not self._pool.grow():
            raise win.winerror_exc(libs.ws2_32.WSAGetLastError(), "RIORegisterBuffer(staging pool)")
        rc = self._notify_cq()
        if rc:
            raise win.winerror_exc(rc, "RIONotify")

    def _backend_close(self) -> None:
        rio = self._rio
        if self._rio_reqs:
            # RIO requests cannot be cancelled; the kernel may still write into the staging pool or
            # post to the port, so those stay alive for the life of the process.
            log.warning(
                "rio: requests still in flight at shutdown; keeping their memory", count=len(self._rio_reqs)
            )
            _never_returned.append(
                (
                    self._cq,
                    self._pool,
                    self._regions.copy(),
                    self._notify,
                    self._notify_ov,
                    self._rio_reqs,
                    self._port,
                )
            )
            self._port = None
        elif rio is not None:
            for region in self._regions.values():
                rio.RIODeregisterBuffer(region.rid)
            if self._pool is not None:
                self._pool.close()
            if self._cq is not None:
                rio.RIOCloseCompletionQueue(self._cq)
        self._regions.clear()
        self._rio_sockets = weakref.WeakKeyDictionary()
        self._dirty = set()
        self._rio_reqs = {}
        self._cq = None
        self._pool = None
        super()._backend_close()

    # ------------------------------------------------------------------ RIO sockets
    def create_socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket created for Registered I/O (WSA_FLAG_REGISTERED_IO); its sends and receives
        use RIO once registered with this provider."""
        ws2 = self._k().ws2_32
        flags = win.WSA_FLAG_OVERLAPPED | win.WSA_FLAG_NO_HANDLE_INHERIT | win.WSA_FLAG_REGISTERED_IO
        handle = ws2.WSASocketW(family, type, proto, ffi.NULL, 0, flags)
        if handle == win.INVALID_SOCKET:
            raise win.winerror_exc(ws2.WSAGetLastError(), "WSASocketW(WSA_FLAG_REGISTERED_IO)")
        sock = socket.socket(family, type, proto, fileno=int(handle))
        self._capable.add(sock)
        return sock

    def _new_accept_socket(self, listen_sock: socket.socket) -> socket.socket:
        return self.create_socket(listen_sock.family, listen_sock.type, listen_sock.proto)

    def _rio_socket(self, entry: SocketEntry) -> _RioSocket | None:
        """The RIO state of a registered socket, or None when it uses the IOCP path."""
        state = entry.state
        if isinstance(state, _RioSocket):
            return state
        if state is not None or entry.sock not in self._capable:
            return None
        rs = self._rio_sockets.get(entry.sock)
        if rs is None:
            rs = self._create_request_queue(entry.sock)
            if rs is None:
                entry.state = False  # IOCP path for this socket from now on
                self._fallback_sockets += 1
                return None
            self._rio_sockets[entry.sock] = rs
        entry.state = rs
        return rs

    def _create_request_queue(self, sock: socket.socket) -> _RioSocket | None:
        if not self._reserve_cq(RECV_DEPTH + SEND_DEPTH):
            return None
        rq = self._rio.RIOCreateRequestQueue(
            win.socket_of(sock), RECV_DEPTH, 1, SEND_DEPTH, 1, self._cq, self._cq, ffi.NULL
        )
        if rq == ffi.NULL:
            err = self._k().ws2_32.WSAGetLastError()
            self._cq_reserved -= RECV_DEPTH + SEND_DEPTH
            log.warning("rio: RIOCreateRequestQueue failed; socket uses IOCP", error=err)
            return None
        return _RioSocket(rq, sock)

    def _reserve_cq(self, n: int) -> bool:
        """Make room in the completion queue for one more request queue."""
        if self._cq_reserved + n > self._cq_capacity:
            # Request queues of closed sockets are gone: give back their room first.
            self._cq_reserved = sum(
                RECV_DEPTH + SEND_DEPTH
                for rs in self._rio_sockets.values()
                if not rs.closed() or rs.sends_out or rs.recvs_out
            )
        need = self._cq_reserved + n
        if need > self._cq_capacity:
            new_size = min(win.RIO_MAX_CQ_SIZE, max(need, 2 * self._cq_capacity))
            if need > new_size or not self._rio.RIOResizeCompletionQueue(self._cq, new_size):
                return False
            self._cq_capacity = new_size
        self._cq_reserved = need
        return True

    # ------------------------------------------------------------------ buffers
    def register_buffer(self, buffer: bytearray | memoryview) -> int:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return -ErrorCode.SOCKET_NOT_REGISTERED
        mv = as_memoryview(buffer)
        if mv.readonly or len(mv) == 0 or len(mv) > _MAX_RIO_LEN:
            self.last_error = "a registered buffer must be writable and 1 byte .. 2 GiB long"
            return -ErrorCode.BUFFER_TOO_SMALL
        cbuf = ffi.from_buffer(mv, require_writable=True)
        rid = self._rio.RIORegisterBuffer(ffi.cast("PCHAR", cbuf), len(mv))
        if _invalid_buffer_id(rid):
            err = self._k().ws2_32.WSAGetLastError()
            self.last_error = f"RIORegisterBuffer failed (error {err})"
            code = map_windows_error(err)
            return -code if code > 0 else -ErrorCode.BUFFER_TOO_SMALL
        buffer_id = super().register_buffer(mv)
        start = int(ffi.cast("uintptr_t", cbuf))
        self._regions[buffer_id] = _Region(start, start + len(mv), rid, cbuf)
        return buffer_id

    def unregister_buffer(self, buffer_id: int) -> bool:
        region = self._regions.pop(buffer_id, None)
        if region is not None:
            region.retired = True
            if region.users == 0:
                self._rio.RIODeregisterBuffer(region.rid)
        return super().unregister_buffer(buffer_id)

    def _region_of(self, mv: memoryview) -> tuple[_Region | None, int]:
        """The registered region `mv` lies in (and its offset there): such memory goes direct."""
        if not self._regions:
            return None, 0
        start = int(ffi.cast("uintptr_t", ffi.from_buffer(mv)))
        end = start + len(mv)
        for region in self._regions.values():
            if region.start <= start and end <= region.end:
                return region, start - region.start
        return None, 0

    # ------------------------------------------------------------------ operations
    def _backend_send(self, op: Operation) -> None:
        assert op.entry is not None and op.buf is not None
        rs = self._rio_socket(op.entry)
        if rs is None:
            super()._backend_send(op)
            return
        op.token = _RioOp(*self._region_of(op.buf))
        rs.send_queue.append(op)
        self._pump(rs)

    def _backend_recv(self, op: Operation) -> None:
        assert op.entry is not None and op.buf is not None
        rs = self._rio_socket(op.entry)
        if rs is None:
            super()._backend_recv(op)
            return
        op.token = _RioOp(None, 0)  # always through a staging slot (see the module docstring)
        rs.recv_queue.append(op)
        self._pump(rs)

    def _fill(self, req: _RioReq, offset: int) -> None:
        """Point the request's RIO_BUF at its registered memory."""
        if req.region is not None:
            req.buf.BufferId = req.region.rid
            req.buf.Offset = offset
            req.region.users += 1
        else:
            assert self._pool is not None
            req.buf.BufferId, req.buf.Offset = self._pool.locate(req.slot)
        req.buf.Length = req.length

    def _pump(self, rs: _RioSocket) -> None:
        """Issue what the socket's backlogs allow, deferred, then commit once per direction."""
        rio = self._rio
        pool = self._pool
        assert pool is not None
        sent = received = False
        while rs.send_queue and rs.sends_out < SEND_DEPTH:
            op = rs.send_queue[0]
            if op.buf is None:  # completed meanwhile (a failed piece): never issue the rest
                rs.send_queue.popleft()
                continue
            token: _RioOp = op.token
            remaining = len(op.buf) - token.issued
            slot = -1
            if token.region is not None:
                length = min(remaining, _MAX_RIO_LEN)
            else:
                slot = pool.take()
                if slot < 0:
                    rs.send_queue.popleft()
                    self._complete(op, Status.ERROR, op.done, ErrorCode.BUFFER_TOO_SMALL)
                    continue
                length = min(remaining, STAGING_SLOT)
                ffi.memmove(pool.memory(slot), op.buf[token.issued : token.issued + length], length)
            req = _RioReq(op, rs, True, slot, length, token.region)
            self._fill(req, token.offset + token.issued)
            req_id = next(self._req_ids)
            if not rio.RIOSend(rs.rq, req.buf, 1, win.RIO_MSG_DEFER, ffi.cast("PVOID", req_id)):
                self._request_failed(rs.send_queue, req)
                continue
            self._rio_reqs[req_id] = req
            rs.sends_out += 1
            sent = True
            token.issued += length
            if token.issued >= len(op.buf):
                rs.send_queue.popleft()
        while rs.recv_queue and rs.recvs_out < RECV_DEPTH:
            op = rs.recv_queue[0]
            if rs.carry or rs.eof:
                rs.recv_queue.popleft()
                self._complete_from_carry(op, rs)
                continue
            assert op.buf is not None
            slot = pool.take()
            if slot < 0:
                rs.recv_queue.popleft()
                self._complete(op, Status.ERROR, 0, ErrorCode.BUFFER_TOO_SMALL)
                continue
            req = _RioReq(op, rs, False, slot, min(len(op.buf), STAGING_SLOT), None)
            self._fill(req, 0)
            req_id = next(self._req_ids)
            if not rio.RIOReceive(rs.rq, req.buf, 1, win.RIO_MSG_DEFER, ffi.cast("PVOID", req_id)):
                self._request_failed(rs.recv_queue, req)
                continue
            self._rio_reqs[req_id] = req
            rs.recvs_out += 1
            received = True
            rs.recv_queue.popleft()
        if sent:
            rio.RIOSend(rs.rq, ffi.NULL, 0, win.RIO_MSG_COMMIT_ONLY, ffi.NULL)
            self._commits += 1
        if received:
            rio.RIOReceive(rs.rq, ffi.NULL, 0, win.RIO_MSG_COMMIT_ONLY, ffi.NULL)
            self._commits += 1

    def _request_failed(self, queue: deque[Operation], req: _RioReq) -> None:
        err = self._k().ws2_32.WSAGetLastError()
        queue.popleft()
        self._release(req)
        op = req.op
        self._complete(op, Status.ERROR, op.done, map_windows_error(err))

    def _release(self, req: _RioReq) -> None:
        if req.slot >= 0:
            assert self._pool is not None
            self._pool.give(req.slot)
            req.slot = -1
        region = req.region
        if region is not None:
            region.users -= 1
            if region.retired and region.users == 0:
                self._rio.RIODeregisterBuffer(region.rid)
            req.region = None

    def _complete_from_carry(self, op: Operation, rs: _RioSocket) -> None:
        assert op.buf is not None
        n = min(len(op.buf), len(rs.carry))
        op.buf[:n] = rs.carry[:n]
        del rs.carry[:n]
        self._complete(op, Status.SUCCESS, n, 0)

    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        rs = op.entry.state if op.entry is not None else None
        if isinstance(rs, _RioSocket) and isinstance(op.token, _RioOp):
            # A request already handed to RIO runs on; its completion is then ignored (a receive's
            # bytes go to the carry). One still in the backlog simply never starts.
            queue = rs.send_queue if op.op_type == OpType.SEND else rs.recv_queue
            try:
                queue.remove(op)
            except ValueError:
                pass
            self._complete(op, status, op.done, error_code)
            return
        super()._backend_cancel(op, status, error_code)

    # ------------------------------------------------------------------ completions
    def _notify_cq(self) -> int:
        """Arm the completion queue's IOCP notification; 0 or the Winsock error."""
        rc = int(self._rio.RIONotify(self._cq))
        return 0 if rc == 10037 else rc  # WSAEALREADY: a notification is already armed

    def _on_packet(self, key: int, lpov: Any, nbytes: int) -> None:
        if key != self.KEY_RIO:
            return
        try:
            self._drain_cq()
        finally:
            rc = self._notify_cq()  # re-armed whatever happened, or RIO traffic would stop
        if rc:
            raise ProviderError(f"RIONotify failed (error {rc})", map_windows_error(rc))

    def _drain_cq(self) -> None:
        rio = self._rio
        results = self._results
        while True:
            n = rio.RIODequeueCompletion(self._cq, results, self._batch)
            self._rio_dequeues += 1
            if n == win.RIO_CORRUPT_CQ:
                raise ProviderError(
                    "RIODequeueCompletion: the completion queue is corrupt", ErrorCode.BUFFER_TOO_SMALL
                )
            for i in range(n):
                r = results[i]
                self._on_rio(int(r.RequestContext), int(r.Status), int(r.BytesTransferred))
            if n < self._batch:
                break
        dirty = self._dirty
        while dirty:
            self._pump(dirty.pop())

    def _on_rio(self, req_id: int, status: int, nbytes: int) -> None:
        req = self._rio_reqs.pop(req_id, None)
        if req is None:
            return
        rs = req.rs
        op = req.op
        live = op.op_id in self._pending
        if req.send:
            rs.sends_out -= 1
            self._release(req)
            if live:
                assert op.buf is not None
                if status or nbytes < req.length:
                    # A stream RIOSend moves its whole buffer; anything else broke the stream order.
                    err = status or win.ERROR_OPERATION_ABORTED
                    try:
                        rs.send_queue.remove(op)  # its pieces not yet issued must never go
                    except ValueError:
                        pass
                    self._fail_rio(op, op.done + nbytes, err)
                else:
                    op.done += nbytes
                    if op.done >= len(op.buf):
                        self._complete(op, Status.SUCCESS, op.done, 0)
        else:
            rs.recvs_out -= 1
            data: Any = b""
            if status == 0 and nbytes:
                assert self._pool is not None and req.slot >= 0
                data = ffi.buffer(self._pool.memory(req.slot), nbytes)
            if not live:  # cancelled or timed out: its bytes belong to the next receive
                if status == 0:
                    rs.carry += data
                    rs.eof = rs.eof or nbytes == 0
            elif status:
                self._fail_rio(op, 0, status)
            elif rs.carry:
                rs.carry += data
                rs.eof = rs.eof or nbytes == 0
                self._complete_from_carry(op, rs)
            else:
                assert op.buf is not None
                op.buf[:nbytes] = data
                rs.eof = nbytes == 0
                self._complete(op, Status.SUCCESS, nbytes, 0)
            self._release(req)
        if rs.send_queue or rs.recv_queue:
            self._dirty.add(rs)  # room in its request queue again

    def _fail_rio(self, op: Operation, done: int, wsa_error: int) -> None:
        """A RIO request of a live operation failed (RIORESULT.Status is a Winsock error)."""
        if self._aborted(op, wsa_error):  # its socket was closed under it
            self._complete(op, Status.CANCELLED, done, 0)
        else:
            self._complete(op, Status.ERROR, done, map_windows_error(wsa_error))

    # ------------------------------------------------------------------ diagnostics
    def _features(self) -> frozenset[str]:
        return super()._features() | {"BufferRegistration", "RegisteredIO"}

    def _backend_statistics(self) -> dict[str, Any]:
        stats = super()._backend_statistics()
        stats.update(
            {
                "rio_requests_in_flight": len(self._rio_reqs),
                "rio_sockets": len(self._rio_sockets),
                "iocp_path_sockets": len(self._sockets)
                - sum(isinstance(e.state, _RioSocket) for e in self._sockets.values()),
                "rio_fallback_sockets": self._fallback_sockets,
                "rio_commits": self._commits,
                "rio_dequeue_calls": self._rio_dequeues,
                "completion_queue_size": self._cq_capacity,
                "staging_slots": len(self._pool.chunks) * STAGING_CHUNK_SLOTS if self._pool else 0,
                "staging_slots_free": len(self._pool.free) if self._pool else 0,
            }
        )
        return stats


def _invalid_buffer_id(rid: Any) -> bool:
    return int(ffi.cast("uintptr_t", rid)) == win.RIO_INVALID_BUFFERID


def _load_rio_table(libs: win.WinLibs) -> Any:
    """The RIO function table, read through a throw-away Registered-I/O socket."""
    ws2 = libs.ws2_32
    flags = win.WSA_FLAG_OVERLAPPED | win.WSA_FLAG_NO_HANDLE_INHERIT | win.WSA_FLAG_REGISTERED_IO
    handle = ws2.WSASocketW(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, ffi.NULL, 0, flags)
    if handle == win.INVALID_SOCKET:
        raise win.winerror_exc(ws2.WSAGetLastError(), "WSASocketW(WSA_FLAG_REGISTERED_IO)")
    try:
        return win.load_rio_table(libs, int(handle))
    finally:
        ws2.closesocket(handle)
