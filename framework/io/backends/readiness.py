"""Completion semantics emulated on top of readiness notification (shared by epoll and kqueue).

A readiness kernel API says "this socket may be read/written now", not "your operation finished";
the backend performs recv/send/accept/connect itself and turns their results into completions.
Only the kernel notification differs between epoll (Linux) and kqueue (macOS/BSD); everything in
this module is the same for both. A subclass supplies `_open_kernel`/`_close_kernel`, `_watch`/
`_unwatch` (edge-triggered interest in one descriptor) and `_wait_events` (one kernel wait,
returning (fd, event bits) pairs tested against its READ_EVENTS/WRITE_EVENTS).

Facts that shaped the shared part:
- Trying the syscall first (before waiting) saves one kernel round trip whenever data or buffer
  space is already there, which is the common case.
- Interest is edge-triggered (EPOLLET, EV_CLEAR): an edge is reported once per state change, so a
  socket whose peer is gone never makes an idle loop spin, and a writable socket with nothing to
  send costs nothing. The price: an edge must never be lost, so an operation waits only after its
  syscall returned EAGAIN (the kernel then owes us an edge), and a queue of waiting operations is
  processed until EAGAIN again. A spurious event only costs one EAGAIN.
- On a stream socket a short read (0 < n < buffer size) emptied the receive queue; any byte that
  arrives later raises a new edge (not so for datagrams: one read takes one of several queued). Where the kernel guarantees that (epoll: every arrival wakes the waiters,
  `SHORT_READ_DRAINS`), the next recv is queued for that edge instead of first trying a syscall
  that would fail with EAGAIN (a wasted syscall plus a Python exception per receive in ping-pong
  traffic). Any read edge clears it, even one that arrives while no recv is queued. Once the peer's
  FIN or an error was reported (`HANGUP_EVENTS`) it is never set again: a FIN that came with the
  data raises no further edge, and later recvs must see the EOF at once.
- A partial write means the send buffer is full; the kernel reports writability when space frees,
  so the flush stops there without an extra EAGAIN probe.
- A recv after EOF returns 0 at once, so queued recvs all complete with 0 once the peer closed (no
  further edge would come for them); errors (ECONNRESET, EPIPE) come from the syscalls themselves.
- A non-blocking connect returns EINPROGRESS; the result is SO_ERROR once the socket turns
  writable (or errs). Accept drains the backlog per edge, one connection per queued accept.
- `sendmsg` gathers the queued sends of one socket into one syscall (up to IOV_MAX buffers); the
  byte count is split back over the operations in order, each completing with its own length.
- Cross-thread wake-up is an eventfd where the OS has one (one 8-byte write; counts coalesce),
  else a non-blocking pipe; either way one descriptor in the kernel's interest set.
- Provided-buffer receives (`recv_async_provided`) wait in the same per-socket queue with no
  buffer at all ("ProvidedBuffers" is True: an idle connection holds no receive memory). When the
  socket is readable, `sock.recv(64 KiB)` reads and Python shrinks the result to the bytes that
  arrived: memory is held only for data, no copy outlives the delivery. Measured on loopback with
  68-byte messages, that costs the same as recv_into a loop-wide scratch buffer plus a copy of
  the n bytes (~2.4 vs ~2.6 us per send+recv pair) and needs no rotating pool, because results
  delivered later (after `max_results`) each own their bytes. A read shorter than 64 KiB is
  "short" for the drained-edge logic below, exactly like a plain recv shorter than its buffer.
- Buffer registration is user-space only (the base class pins buffers by id); the kernel is not
  told, so "BufferRegistration" is False and "UserBufferRegistration" is True.
- Streams (feature "Streams", as uvloop runs a transport): the socket's edge-triggered read
  interest is the "receive that stays armed". On a read edge the loop `recv_into`s ONE
  provider-wide buffer (64 KiB, or `provided_buffer_size` when set) until EAGAIN (on epoll until a
  short read, see above) and hands `view[:n]` to `on_data`: no operation, result, callback or
  allocation per read. At most `_STREAM_READS` reads per socket per turn (fairness); a socket cut
  short, and one just opened (its edge may have been spent before the stream existed), is read
  again at the next turn, which then does not block. `stream_send` tries `send` at once when
  nothing is queued (usually all of it goes); the rest is copied into a per-stream bytearray
  (created only then: an idle stream holds no send memory) and written on write edges, one
  `send` per edge (a short write means the buffer is full, an edge follows). The stream's state
  lives in the socket record (five slots); its id is `serial << 32 | fd`, so a lookup is the
  registration table's and a stale id (closed stream, reused fd) never matches. Handlers run only
  inside `process_completions`: an error met inside `stream_send` (which returns it negated) is queued
  as STREAM_ERROR for the next turn, and a pending event or read makes that turn's wait a poll.
  One STREAM_ERROR per stream at most: it stops sending (and, for a receive error, receiving).

Timeouts and cancellation: the op leaves its socket's queue and completes with the given status;
a timed-out op is Status.TIMEOUT with error_code ErrorCode.CONNECTION_TIMEOUT (set by the base
class). A send cancelled after part of it was written completes with the bytes written so far;
the stream then lacks the rest, so a caller that cancels a partial send should close the socket.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, ClassVar, cast

from framework.io.backends.base import Operation, QueuedStreamsProvider, SocketEntry, as_memoryview, log
from framework.io.errors import map_errno
from framework.io.provider import (
    STREAM_DRAINED,
    STREAM_EOF,
    STREAM_ERROR,
    Feature,
    OpType,
    SendOperation,
    Status,
)

_sysconf = getattr(os, "sysconf", None)
try:
    _IOV_MAX = min(_sysconf("SC_IOV_MAX") if _sysconf else 1024, 1024) or 1024
except (OSError, ValueError):
    _IOV_MAX = 1024
_SUCCESS = Status.SUCCESS
_PROVIDED_READ = 65536  # bytes asked for by one provided-buffer recv (see the module docstring)
_CONNECT_PENDING = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN)
# A connection that died between the SYN queue and accept(); the next one may be fine.
_ACCEPT_RETRY = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR)
# Streams: the shared read buffer's default size, reads per socket per turn, the id layout, and
# the bits of a stream's `sflags`.
_STREAM_READ = 65536
_STREAM_READS = 16
_SID_FD = 0xFFFFFFFF
_S_RECV_ENDED = 1  # EOF or a receive error: no more reads
_S_FAILED = 2  # STREAM_ERROR reported (or queued): sends refused, queue dropped
_S_RPAUSED = 4  # reading paused (flow control): read edges are remembered, not served
_S_READABLE = 8  # a read edge came while paused: read at the resume


class ReadinessSocket(SocketEntry):
    """Per-socket queues: FIFO, so operations on one socket complete in the order they were
    posted. It is the provider's SocketEntry itself (`state` points back at it while registered:
    one object per connection instead of two). An empty deque costs ~760 bytes, which every idle
    connection would carry: the send and accept queues are created on first use, and the receive
    queue is a list (a socket rarely has more than one recv waiting), also created on first use.
    The `s*` slots are the socket's stream (see the module docstring); `sid` 0 means none."""

    __slots__ = (
        "accept_stalled",
        "acceptq",
        "always_try",
        "connect_op",
        "drained",
        "recvq",
        "sctx",
        "sendq",
        "sflags",
        "sid",
        "sout",
        "swatch",
    )

    def __init__(self, sock: socket.socket, context: Any, fd: int = -1) -> None:
        super().__init__(sock, context, fd)
        self.drained = False  # the last read was short: wait for the next read edge
        # FIN or error reported, or not a byte stream: never trust a short read (always try first)
        self.always_try = sock.type != socket.SOCK_STREAM
        # A list: almost always 0 or 1 waiting recv; None until the first one waits (an empty list
        # costs 56 bytes, and a stream's socket never queues a recv).
        self.recvq: list[Operation] | None = None
        self.sendq: deque[Operation] | None = None
        self.acceptq: deque[Operation] | None = None
        # The last accept() failed (EMFILE ...) with connections still waiting: the edge that
        # announced them is spent, so the next posted accept must try the syscall itself.
        self.accept_stalled = False
        self.connect_op: Operation | None = None
        self.sid = 0  # the open stream's id
        self.sctx: Any = None  # its context
        self.sout: bytearray | None = None  # its unsent bytes, in order; None when all went out
        self.swatch = -1  # STREAM_DRAINED wanted when unsent <= swatch; -1: none
        self.sflags = 0  # _S_* bits


class ReadinessProvider(QueuedStreamsProvider):
    """Completion-style provider on an edge-triggered readiness API; see the module docstring."""

    _SEND_BYTES_AS_IS = True  # send/sendmsg take bytes; a partial send's rest is a (rare) copy
    _ENTRY_CLASS = ReadinessSocket
    READ_EVENTS: ClassVar[int] = 0  # event bits after which queued recvs/accepts are retried
    WRITE_EVENTS: ClassVar[int] = 0  # event bits after which connects/sends are retried
    SHORT_READ_DRAINS: ClassVar[bool] = False  # see the module docstring; True only where proven
    HANGUP_EVENTS: ClassVar[int] = 0  # event bits reporting the peer's FIN or an error
    # errno -> the errno whose meaning the contract gives it on this kernel (kqueue: a send after
    # a peer reset fails with EPIPE on XNU/FreeBSD); applied to failed operations and stream errors.
    ERRNO_ALIASES: ClassVar[dict[int, int]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._provided_on_arrival = not self._provided_off
        self._wake_r = -1
        self._wake_w = -1
        self._wake_eventfd = False
        self._maxevents = 256
        self._defer_flush: list[ReadinessSocket] | None = None
        self._waits = 0
        self._events = 0
        self._sendmsg_calls = 0
        self._partial_writes = 0
        # streams: the one read buffer every stream shares (allocated with the first
        # stream), streams to read at the next turn, events queued outside a turn (flat:
        # socket, stream id, kind, code, ...)
        self._streams_off = False
        self._stream_read_size = _STREAM_READ
        self._sbuf: bytearray | None = None
        self._sview: memoryview | None = None
        self._sretry: list[ReadinessSocket] = []
        self._sev: list[Any] = []
        self._stream_serial = itertools.count(1)
        self._streams_open = 0
        # The registration table, typed as what it holds here (entries are _ENTRY_CLASS's).
        self._rsockets = cast("dict[int, ReadinessSocket]", self._sockets)

    # ------------------------------------------------------------------ kernel hooks
    @abstractmethod
    def _open_kernel(self) -> None:
        """Create the kernel object (epoll fd, kqueue). Raise OSError on failure."""

    @abstractmethod
    def _close_kernel(self) -> None:
        """Close the kernel object."""

    @abstractmethod
    def _watch(self, fd: int, write: bool = True) -> None:
        """Start edge-triggered interest in `fd`: readable (and writable when `write`)."""

    @abstractmethod
    def _unwatch(self, fd: int) -> None:
        """Stop watching `fd`; it may be closed already (the kernel then dropped it itself)."""

    @abstractmethod
    def _wait_events(self, timeout_ms: int) -> Sequence[tuple[int, int]]:
        """One kernel wait (-1 forever, 0 poll): (fd, event bits) pairs, at most `_maxevents`."""

    # ------------------------------------------------------------------ lifecycle
    def _backend_open(self) -> None:
        self._open_kernel()
        try:
            if hasattr(os, "eventfd"):
                self._wake_r = self._wake_w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._wake_eventfd = True
            else:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
            self._watch(self._wake_r, write=False)
        except OSError:
            self._close_wakeup()
            self._close_kernel()
            raise
        self._maxevents = self._cq_size

    def _close_wakeup(self) -> None:
        # The write end first, so a racing post() stops writing to it.
        wake_w, self._wake_w = self._wake_w, -1
        wake_r, self._wake_r = self._wake_r, -1
        for fd in {wake_w, wake_r}:
            if fd >= 0:
                os.close(fd)

    def _backend_close(self) -> None:
        self._close_wakeup()
        self._close_kernel()

    def _backend_register(self, entry: SocketEntry) -> None:
        self._watch(entry.fd)
        entry.state = entry  # a ReadinessSocket (_ENTRY_CLASS); unregister breaks the cycle

    def _backend_unregister(self, entry: SocketEntry) -> None:
        st = entry.state
        if st is not None:
            if st.sid:
                self.stream_close(st.sid)
            st.recvq = None
            st.sendq = None
            st.acceptq = None
            st.connect_op = None
            entry.state = None  # its operations were cancelled already (synchronously)
        self._unwatch(entry.fd)

    def _backend_cancel_all(self) -> None:
        """Nothing to wait for: no kernel request refers to user memory between syscalls. Streams
        close first: no stream handler runs once shutdown began."""
        for entry in self._sockets.values():
            if entry.state is not None and entry.state.sid:
                self.stream_close(entry.state.sid)
        self._sretry = []
        self._sev = []

    # ------------------------------------------------------------------ operations
    def _backend_recv(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # the hooks get operations on registered sockets only
        st = entry.state
        q = st.recvq
        if q or st.drained:  # earlier recvs wait for an edge (FIFO), or the queue is known empty
            if q is None:
                st.recvq = [op]
            else:
                q.append(op)
            return
        buf = op.buf
        try:
            if buf is None:  # provided buffer: memory only for what arrived
                data = st.sock.recv(_PROVIDED_READ)
                n = len(data)
            else:
                n = st.sock.recv_into(buf)
        except BlockingIOError:
            st.recvq = [op]  # empty or None here (checked above)
            return
        except OSError as exc:
            self._fail(op, exc.errno or 0)
            return
        if 0 < n < (_PROVIDED_READ if buf is None else len(buf)) and not st.always_try:
            st.drained = self.SHORT_READ_DRAINS
        if buf is None:
            self._complete(op, _SUCCESS, n, 0, None, memoryview(data))
        else:
            self._complete(op, _SUCCESS, n, 0)

    def _backend_send(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # the hooks get operations on registered sockets only
        st = entry.state
        q = st.sendq
        if q is None:
            q = st.sendq = deque()
        q.append(op)
        if len(q) == 1:  # otherwise a flush is already waiting for writability (or queued below)
            if self._defer_flush is not None:
                self._defer_flush.append(st)
            else:
                self._flush_sends(st)

    def send_batch_async(self, ops: Sequence[SendOperation]) -> int:
        # Queue the whole batch first, then flush each socket once: one sendmsg per socket.
        dirty: list[ReadinessSocket] = []
        self._defer_flush = dirty
        try:
            n = super().send_batch_async(ops)
        finally:
            self._defer_flush = None
        for st in dirty:
            self._flush_sends(st)
        return n

    def _backend_accept(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # the hooks get operations on registered sockets only
        st = entry.state
        if st.acceptq is None:
            st.acceptq = deque()
        st.acceptq.append(op)
        if len(st.acceptq) == 1 or st.accept_stalled:
            self._drain_accepts(st)

    def _backend_connect(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # the hooks get operations on registered sockets only
        st = entry.state
        if st.connect_op is not None:
            self._fail(op, errno.EALREADY)
            return
        try:
            err = st.sock.connect_ex(op.address)
        except OSError as exc:  # bad address (e.g. gaierror) rather than a connect error
            self._fail(op, exc.errno or errno.EINVAL)
            return
        if err == 0 or err == errno.EISCONN:
            self._complete(op, _SUCCESS, 0, 0)
        elif err in _CONNECT_PENDING:
            st.connect_op = op
        else:
            self._fail(op, err)

    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        st = op.entry.state if op.entry is not None else None
        if st is not None:
            t = op.op_type
            if t == OpType.CONNECT:
                if st.connect_op is op:
                    st.connect_op = None  # the socket stays mid-handshake; the caller closes it
            else:
                q = st.recvq if t == OpType.RECV else st.sendq if t == OpType.SEND else st.acceptq
                try:
                    q.remove(op)
                except (ValueError, AttributeError):  # not queued (or no queue: never was)
                    pass
        self._complete(op, status, op.done, error_code)

    # ------------------------------------------------------------------ readiness -> completions
    def _drain_recvs(self, st: ReadinessSocket) -> None:
        q = st.recvq
        recv_into = st.sock.recv_into
        complete = self._complete
        while q:
            op = q[0]
            buf = op.buf
            try:
                if buf is None:  # provided buffer, as in _backend_recv
                    data = st.sock.recv(_PROVIDED_READ)
                    n = len(data)
                else:
                    n = recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                del q[0]
                self._fail(op, exc.errno or 0)
                continue  # the next recv sees EOF or the same error at once
            del q[0]
            if buf is None:
                complete(op, _SUCCESS, n, 0, None, memoryview(data))
                size = _PROVIDED_READ
            else:
                complete(op, _SUCCESS, n, 0)
                size = len(buf)
            if 0 < n < size and self.SHORT_READ_DRAINS and not st.always_try:
                st.drained = True
                return  # the rest wait for the next edge

    def _flush_sends(self, st: ReadinessSocket) -> None:
        q = st.sendq
        sock = st.sock
        complete = self._complete
        while q:
            if len(q) == 1:
                op = q[0]
                want = len(op.buf) - op.done
                view = op.buf[op.done :] if op.done else op.buf
                try:
                    n = sock.send(view)
                except BlockingIOError:
                    return
                except OSError as exc:
                    q.popleft()
                    self._fail(op, exc.errno or 0)
                    continue
                if n >= want:
                    op.done += n
                    q.popleft()
                    complete(op, _SUCCESS, op.done, 0)
                    continue
                op.done += n
                self._partial_writes += 1
                return  # buffer full: writability will follow
            bufs = [o.buf[o.done :] if o.done else o.buf for o in islice(q, _IOV_MAX)]
            want = sum(map(len, bufs))
            self._sendmsg_calls += 1
            try:
                n = sock.sendmsg(bufs)
            except BlockingIOError:
                return
            except OSError as exc:
                op = q.popleft()
                self._fail(op, exc.errno or 0)
                continue
            left = n
            while left:
                op = q[0]
                rest = len(op.buf) - op.done
                if left >= rest:
                    left -= rest
                    op.done += rest
                    q.popleft()
                    complete(op, _SUCCESS, op.done, 0)
                else:
                    op.done += left
                    left = 0
            # Zero-length sends at the head are complete too (nothing to write).
            while q and len(q[0].buf) == q[0].done:
                op = q.popleft()
                complete(op, _SUCCESS, op.done, 0)
            if n < want:
                self._partial_writes += 1
                return

    def _drain_accepts(self, st: ReadinessSocket) -> None:
        q = st.acceptq
        sock = st.sock
        accept = sock.accept
        st.accept_stalled = False
        while q:
            try:
                conn, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                self._fail(q.popleft(), exc.errno or 0)
                st.accept_stalled = True  # e.g. EMFILE: the next accept_async tries again
                return
            conn.setblocking(False)  # accept(2) does not inherit O_NONBLOCK on Linux
            op = q.popleft()
            self._complete(op, _SUCCESS, 0, 0, (conn, addr))

    def _finish_connect(self, st: ReadinessSocket) -> None:
        op = st.connect_op
        assert op is not None  # called only while a connect waits
        sock = st.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                sock.getpeername()
            except OSError:
                return  # a stale writability edge: still connecting
            st.connect_op = None
            self._complete(op, _SUCCESS, 0, 0)
        else:
            st.connect_op = None
            self._fail(op, err)

    def _backend_poll(self, timeout_ms: int) -> None:
        if self._sretry or self._sev:
            timeout_ms = 0  # stream handlers are owed a turn: the wait must not block
        self._waits += 1
        events = self._wait_events(timeout_ms)
        if events:
            self._dispatch(events)
        if self._sretry:
            self._stream_retry()
        if self._sev:
            self._stream_queued_events()

    def _dispatch(self, events: Sequence[tuple[int, int]]) -> None:
        self._events += len(events)
        sockets = self._sockets
        read_events = self.READ_EVENTS
        write_events = self.WRITE_EVENTS
        hangup_events = self.HANGUP_EVENTS
        for fd, ev in events:
            entry = sockets.get(fd)
            if entry is None:
                if fd == self._wake_r:
                    self._drain_wakeup()
                continue
            st = entry.state
            if ev & read_events:
                st.drained = False  # even with no recv queued: the next recv must try again
                if ev & hangup_events:
                    st.always_try = True
                if st.sid:
                    if st.sflags & _S_RPAUSED:
                        st.sflags |= _S_READABLE  # the edge is spent: read at the resume
                    elif not st.sflags & _S_RECV_ENDED:
                        self._stream_read(st)
                else:
                    if st.recvq:
                        self._drain_recvs(st)
                    if st.acceptq:
                        self._drain_accepts(st)
            if ev & write_events:
                if st.sout is not None:
                    self._stream_write(st)
                if st.connect_op is not None:
                    self._finish_connect(st)
                if st.sendq:
                    self._flush_sends(st)

    def _fail(self, op: Operation, os_errno: int) -> None:
        super()._fail(op, self.ERRNO_ALIASES.get(os_errno, os_errno))

    def _drain_wakeup(self) -> None:
        try:
            if self._wake_eventfd:
                os.eventfd_read(self._wake_r)
            else:
                while os.read(self._wake_r, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def _backend_wakeup(self) -> None:
        fd = self._wake_w
        if fd < 0:
            return
        try:
            if self._wake_eventfd:
                os.eventfd_write(fd, 1)
            else:
                os.write(fd, b"\x01")
        except OSError:
            pass  # closed by a concurrent shutdown, or full/saturated: a wake is due anyway

    def _provided_capable(self) -> bool:
        return True

    # ------------------------------------------------------------------ streams
    def stream_open(self, sock: socket.socket, context: Any = None) -> int:
        if not self._initialized or self._closed:
            raise NotImplementedError(f"{self.name}: the provider is not initialized")
        if self._on_stream_data is None:
            raise NotImplementedError(
                f"{self.name}: set_stream_handlers() must be called before stream_open()"
            )
        st = self._entry_for(sock)
        if st is None:
            self.last_error = "stream_open: socket is not registered"
            return 0
        assert isinstance(st, ReadinessSocket)  # this provider's _ENTRY_CLASS
        if st.sid or st.recvq or sock.type != socket.SOCK_STREAM:
            self.last_error = "stream_open: one stream per connected stream socket, with no recv pending"
            return 0
        if self._sbuf is None:
            self._sbuf = bytearray(self._stream_read_size)
            self._sview = memoryview(self._sbuf)
        sid = st.sid = next(self._stream_serial) << 32 | st.fd
        st.sctx = context
        st.sout = None
        st.swatch = -1
        st.sflags = 0
        self._streams_open += 1
        self._sretry.append(st)  # data may be waiting already, its edge spent before the stream
        return sid

    def _stream(self, stream_id: int) -> ReadinessSocket | None:
        st = self._rsockets.get(stream_id & _SID_FD)
        return st if st is not None and st.sid == stream_id and stream_id else None

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        st = self._rsockets.get(stream_id & _SID_FD)
        if st is None or st.sid != stream_id or not stream_id:
            return -errno.ENOTCONN
        if st.sflags & _S_FAILED:
            return -errno.EPIPE
        out = st.sout
        if out is not None:  # bytes wait for a write edge: these go behind them
            out += data
            return len(out)
        if type(data) is not bytes:
            data = as_memoryview(data)
        want = len(data)
        if not want:
            return 0
        try:
            n = st.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            return -self._stream_failed(st, exc.errno or errno.EPIPE, True)
        if n == want:
            return 0
        st.sout = bytearray(memoryview(data)[n:])  # the one copy: the caller may reuse `data`
        self._partial_writes += 1
        return want - n

    def stream_queued(self, stream_id: int) -> int:
        st = self._stream(stream_id)
        if st is None:
            return -errno.ENOTCONN
        if st.sflags & _S_FAILED:
            return -errno.EPIPE
        return 0 if st.sout is None else len(st.sout)

    def stream_watch(self, stream_id: int, low_water: int) -> bool:
        st = self._stream(stream_id)
        if st is None or st.sflags & _S_FAILED:
            return True  # nothing will ever drain (the caller learns why elsewhere)
        low = max(0, low_water)
        if st.sout is None or len(st.sout) <= low:
            st.swatch = -1
            return True
        st.swatch = low
        return False

    def stream_pause_reading(self, stream_id: int) -> bool:
        st = self._stream(stream_id)
        if st is None:
            return False
        st.sflags |= _S_RPAUSED
        return True

    def stream_resume_reading(self, stream_id: int) -> bool:
        st = self._stream(stream_id)
        if st is None:
            return False
        flags = st.sflags
        if flags & _S_RPAUSED:
            st.sflags = flags & ~(_S_RPAUSED | _S_READABLE)
            if flags & _S_READABLE or not self.SHORT_READ_DRAINS:
                self._sretry.append(st)  # bytes may wait and no edge will announce them again
        return True

    def stream_close(self, stream_id: int) -> None:
        st = self._stream(stream_id)
        if st is None:
            return  # stale: never touch the socket's next stream
        st.sid = 0
        st.sctx = None
        st.sout = None
        st.swatch = -1
        st.sflags = 0
        self._streams_open -= 1
        # Queued events and retries of the closed stream are skipped when their turn comes.

    def _stream_read(self, st: ReadinessSocket) -> None:
        """Read until EAGAIN (or a short read where that proves the queue empty), at most
        `_STREAM_READS` times, handing each read to on_data."""
        sid = st.sid
        ctx = st.sctx
        buf = self._sbuf
        view = self._sview
        on_data = self._on_stream_data
        assert buf is not None and view is not None and on_data is not None  # set by stream_open
        size = len(buf)
        recv_into = st.sock.recv_into
        short_drains = self.SHORT_READ_DRAINS and not st.always_try
        for _ in range(_STREAM_READS):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                st.sflags |= _S_RECV_ENDED
                self._stream_failed(st, exc.errno or errno.EIO, False)
                return
            if not n:
                st.sflags |= _S_RECV_ENDED
                self._stream_emit(st, STREAM_EOF, 0)
                return
            self._delivered += 1
            try:
                on_data(ctx, view[:n])
            except Exception:
                self._callback_errors += 1
                log.exception("stream handler raised", backend=self.name, kind=0)
            if st.sid != sid:
                return  # the handler closed the stream
            if st.sflags & _S_RPAUSED:
                st.sflags |= _S_READABLE  # the handler paused reading: the rest waits for resume
                return
            if n < size and short_drains:
                return  # epoll: emptied; the next arrival raises an edge
        self._sretry.append(st)  # cut short for fairness: the edge is spent, read on next turn

    def _stream_retry(self) -> None:
        todo = self._sretry
        self._sretry = []
        for st in todo:
            if not st.sid or st.sflags & _S_RECV_ENDED:
                continue
            if st.sflags & _S_RPAUSED:
                st.sflags |= _S_READABLE  # cut short or opened with bytes waiting: read at resume
            else:
                self._stream_read(st)

    def _stream_write(self, st: ReadinessSocket) -> None:
        """A write edge: send what is queued (one send; short means the buffer is full again)."""
        out = st.sout
        assert out is not None  # called only with bytes queued
        try:
            n = st.sock.send(out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stream_failed(st, exc.errno or errno.EPIPE, False)
            return
        if n >= len(out):
            st.sout = None  # an idle stream keeps no send memory
            left = 0
        else:
            del out[:n]  # CPython drops a bytearray's head without moving the rest
            left = len(out)
            self._partial_writes += 1
        if st.swatch >= 0 and left <= st.swatch:
            st.swatch = -1
            self._stream_emit(st, STREAM_DRAINED, 0)

    def _stream_failed(self, st: ReadinessSocket, os_errno: int, queue: bool) -> int:
        """Receiving or sending failed: sends are refused from now on; one STREAM_ERROR, queued
        when we are inside stream_send (handlers run only inside process_completions). Returns
        the error code (the event's)."""
        st.sout = None
        st.swatch = -1
        code = map_errno(self.ERRNO_ALIASES.get(os_errno, os_errno))
        if st.sflags & _S_FAILED:
            return code
        st.sflags |= _S_FAILED
        if queue:
            self._sev += (st, st.sid, STREAM_ERROR, code)
        else:
            self._stream_emit(st, STREAM_ERROR, code)
        return code

    def _stream_emit(self, st: ReadinessSocket, kind: int, code: int) -> None:
        self._delivered += 1
        on_event = self._on_stream_event
        assert on_event is not None  # set before any stream was opened
        try:
            on_event(st.sctx, kind, code)
        except Exception:
            self._callback_errors += 1
            log.exception("stream handler raised", backend=self.name, kind=kind)

    def _stream_queued_events(self) -> None:
        while self._sev:  # a handler may queue more
            sev = self._sev
            self._sev = []
            for i in range(0, len(sev), 4):
                st = sev[i]
                if st.sid == sev[i + 1]:  # still open (not closed since it was queued)
                    self._stream_emit(st, sev[i + 2], sev[i + 3])

    # ------------------------------------------------------------------ options, features, stats
    def _features(self) -> frozenset[str]:
        feats = super()._features() | {
            Feature.USER_BUFFER_REGISTRATION,
            Feature.GATHER_SEND,
            Feature.EDGE_TRIGGERED,
        }
        # Streams read into provider memory on arrival, as provided receives do: off with those.
        if self._provided_on_arrival and not self._streams_off:
            feats |= {Feature.STREAMS}
        return feats

    def set_option(self, name: str, value: Any) -> bool:
        ok = super().set_option(name, value)
        if ok and name == "provided_buffer_size":  # also the most one stream delivery carries
            self._stream_read_size = value
            if self._sbuf is not None:
                self._sbuf = bytearray(value)
                self._sview = memoryview(self._sbuf)
        return ok

    def _backend_set_option(self, name: str, value: Any) -> bool:
        if name == "streams":  # False: sessions use per-operation receives and sends
            self._streams_off = not value
            return True
        if name == "max_events":
            if not isinstance(value, int) or value <= 0:
                return False
            self._maxevents = value
            return True
        return False

    def _backend_statistics(self) -> dict[str, Any]:
        return {
            f"{self.name}_waits": self._waits,
            "events": self._events,
            "sendmsg_calls": self._sendmsg_calls,
            "partial_writes": self._partial_writes,
            "provided_buffer_size": _PROVIDED_READ,  # what one provided recv asks for
            "streams_open": self._streams_open,
        }
