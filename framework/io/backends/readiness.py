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

Timeouts and cancellation: the op leaves its socket's queue and completes with the given status;
a timed-out op is Status.TIMEOUT with error_code ErrorCode.CONNECTION_TIMEOUT (set by the base
class). A send cancelled after part of it was written completes with the bytes written so far;
the stream then lacks the rest, so a caller that cancels a partial send should close the socket.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, ClassVar

from framework.io.backends.base import Operation, QueuedProvider, SocketEntry
from framework.io.provider import OpType, SendOperation, Status

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


class ReadinessSocket(SocketEntry):
    """Per-socket queues: FIFO, so operations on one socket complete in the order they were
    posted. It is the provider's SocketEntry itself (`state` points back at it while registered:
    one object per connection instead of two). An empty deque costs ~760 bytes, which every idle
    connection would carry: the send and accept queues are created on first use, and the receive
    queue is a list (a socket rarely has more than one recv waiting)."""

    __slots__ = (
        "accept_stalled",
        "acceptq",
        "always_try",
        "connect_op",
        "drained",
        "recvq",
        "sendq",
    )

    def __init__(self, sock: socket.socket, context: Any, fd: int = -1) -> None:
        super().__init__(sock, context, fd)
        self.drained = False  # the last read was short: wait for the next read edge
        # FIN or error reported, or not a byte stream: never trust a short read (always try first)
        self.always_try = sock.type != socket.SOCK_STREAM
        # A list: almost always 0 or 1 waiting recv, and an empty list costs 56 bytes.
        self.recvq: list[Operation] = []
        self.sendq: deque[Operation] | None = None
        self.acceptq: deque[Operation] | None = None
        # The last accept() failed (EMFILE ...) with connections still waiting: the edge that
        # announced them is spent, so the next posted accept must try the syscall itself.
        self.accept_stalled = False
        self.connect_op: Operation | None = None


class ReadinessProvider(QueuedProvider):
    """Completion-style provider on an edge-triggered readiness API; see the module docstring."""

    _SEND_BYTES_AS_IS = True  # send/sendmsg take bytes; a partial send's rest is a (rare) copy
    _ENTRY_CLASS = ReadinessSocket
    READ_EVENTS: ClassVar[int] = 0  # event bits after which queued recvs/accepts are retried
    WRITE_EVENTS: ClassVar[int] = 0  # event bits after which connects/sends are retried
    SHORT_READ_DRAINS: ClassVar[bool] = False  # see the module docstring; True only where proven
    HANGUP_EVENTS: ClassVar[int] = 0  # event bits reporting the peer's FIN or an error

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

    # ------------------------------------------------------------------ kernel hooks
    def _open_kernel(self) -> None:
        """Create the kernel object (epoll fd, kqueue). Raise OSError on failure."""
        raise NotImplementedError

    def _close_kernel(self) -> None:
        raise NotImplementedError

    def _watch(self, fd: int, write: bool = True) -> None:
        """Start edge-triggered interest in `fd`: readable (and writable when `write`)."""
        raise NotImplementedError

    def _unwatch(self, fd: int) -> None:
        """Stop watching `fd`; it may be closed already (the kernel then dropped it itself)."""
        raise NotImplementedError

    def _wait_events(self, timeout_ms: int) -> Sequence[tuple[int, int]]:
        """One kernel wait (-1 forever, 0 poll): (fd, event bits) pairs, at most `_maxevents`."""
        raise NotImplementedError

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
            st.recvq.clear()
            st.sendq = None
            st.acceptq = None
            st.connect_op = None
            entry.state = None  # its operations were cancelled already (synchronously)
        self._unwatch(entry.fd)

    def _backend_cancel_all(self) -> None:
        """Nothing to wait for: no kernel request refers to user memory between syscalls."""

    # ------------------------------------------------------------------ operations
    def _backend_recv(self, op: Operation) -> None:
        st = op.entry.state
        q = st.recvq
        if q or st.drained:  # earlier recvs wait for an edge (FIFO), or the queue is known empty
            q.append(op)
            return
        buf = op.buf
        try:
            if buf is None:  # provided buffer: memory only for what arrived
                data = op.sock.recv(_PROVIDED_READ)
                n = len(data)
            else:
                n = op.sock.recv_into(buf)
        except BlockingIOError:
            q.append(op)
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
        st = op.entry.state
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
        st = op.entry.state
        if st.acceptq is None:
            st.acceptq = deque()
        st.acceptq.append(op)
        if len(st.acceptq) == 1 or st.accept_stalled:
            self._drain_accepts(st)

    def _backend_connect(self, op: Operation) -> None:
        st = op.entry.state
        if st.connect_op is not None:
            self._fail(op, errno.EALREADY)
            return
        try:
            err = op.sock.connect_ex(op.address)
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
                    q.remove(op)  # type: ignore[union-attr]
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
        self._waits += 1
        events = self._wait_events(timeout_ms)
        if not events:
            return
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
                if st.recvq:
                    self._drain_recvs(st)
                if st.acceptq:
                    self._drain_accepts(st)
            if ev & write_events:
                if st.connect_op is not None:
                    self._finish_connect(st)
                if st.sendq:
                    self._flush_sends(st)

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

    # ------------------------------------------------------------------ options, features, stats
    def _features(self) -> frozenset[str]:
        return super()._features() | {"UserBufferRegistration", "GatherSend", "EdgeTriggered"}

    def _backend_set_option(self, name: str, value: Any) -> bool:
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
        }
