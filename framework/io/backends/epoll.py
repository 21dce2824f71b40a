"""epoll backend: completion semantics emulated on top of readiness (`select.epoll`).

Facts about the kernel API that shaped this module:
- epoll reports readiness, not completions: the backend itself performs recv/send/accept/connect
  and turns their results into completions. Trying the syscall first (before waiting) saves one
  epoll round trip whenever data or buffer space is already there, which is the common case.
- Each socket is registered once, edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET). An edge
  is reported once per state change, so a socket whose peer is gone (EPOLLHUP/EPOLLERR, which
  level-triggered epoll reports on every wait) never makes an idle loop spin, and a socket that
  is writable but has nothing to send costs nothing. The price: an edge must never be lost, so
  an operation waits only after its syscall returned EAGAIN (the kernel then owes us an edge),
  and a queue of waiting operations is processed until EAGAIN again.
- A partial write means the send buffer is full; the kernel sets SOCK_NOSPACE and reports
  EPOLLOUT when space frees (tokio relies on the same fact), so the flush stops there without
  an extra EAGAIN probe.
- A recv after EOF returns 0 at once, so queued recvs all complete with 0 once the peer closed
  (no further edge would come for them); errors (ECONNRESET, EPIPE) come from the syscalls
  themselves after EPOLLERR/EPOLLHUP.
- A non-blocking connect returns EINPROGRESS; the result is SO_ERROR once the socket turns
  writable (or errs). Accept drains the backlog per edge, one connection per queued accept.
- `sendmsg` gathers the queued sends of one socket into one syscall (up to IOV_MAX buffers);
  the byte count is split back over the operations in order, each completing with its own length.
- Cross-thread wake-up is an eventfd in the epoll set (one 8-byte write; counts coalesce).
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
import select
import socket
from collections import deque
from itertools import islice
from typing import Any

from framework.io.backends.base import Operation, QueuedProvider, SocketEntry
from framework.io.errors import BackendUnavailable
from framework.io.provider import OpType, SendOperation, Status

_EPOLLIN = getattr(select, "EPOLLIN", 0x001)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0x004)
_EPOLLERR = getattr(select, "EPOLLERR", 0x008)
_EPOLLHUP = getattr(select, "EPOLLHUP", 0x010)
_EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_EPOLLET = getattr(select, "EPOLLET", 1 << 31)

_READ_EVENTS = _EPOLLIN | _EPOLLERR | _EPOLLHUP | _EPOLLRDHUP
_WRITE_EVENTS = _EPOLLOUT | _EPOLLERR | _EPOLLHUP
_SOCKET_MASK = _EPOLLIN | _EPOLLOUT | _EPOLLRDHUP | _EPOLLET

_IOV_MAX = min(getattr(os, "sysconf", lambda _n: 1024)("SC_IOV_MAX") or 1024, 1024)
_SUCCESS = Status.SUCCESS
_EAGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_CONNECT_PENDING = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN)
# A connection that died between the SYN queue and accept(); the next one may be fine.
_ACCEPT_RETRY = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR)


class _EpollSocket:
    """Per-socket queues (stored in `SocketEntry.state`): FIFO, so operations on one socket
    complete in the order they were posted."""

    __slots__ = ("acceptq", "connect_op", "recvq", "sendq", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvq: deque[Operation] = deque()
        self.sendq: deque[Operation] = deque()
        self.acceptq: deque[Operation] = deque()
        self.connect_op: Operation | None = None


class EpollProvider(QueuedProvider):
    """Completion-style provider on edge-triggered epoll (Linux)."""

    name = "epoll"

    @staticmethod
    def probe() -> None:
        if not hasattr(select, "epoll"):
            raise BackendUnavailable("epoll", "select.epoll is missing (epoll exists only on Linux)")
        if not hasattr(os, "eventfd"):
            raise BackendUnavailable("epoll", "os.eventfd is missing (needs Linux and Python >= 3.10)")

    def __init__(self) -> None:
        super().__init__()
        self._epoll: Any = None
        self._wakefd = -1
        self._maxevents = 256
        self._defer_flush: list[_EpollSocket] | None = None
        self._epoll_waits = 0
        self._events = 0
        self._sendmsg_calls = 0
        self._partial_writes = 0

    # ------------------------------------------------------------------ lifecycle
    def _backend_open(self) -> None:
        self.probe()
        self._epoll = select.epoll()
        try:
            self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll.register(self._wakefd, _EPOLLIN)
        except OSError:
            self._epoll.close()
            if self._wakefd >= 0:
                os.close(self._wakefd)
            self._wakefd = -1
            raise
        self._maxevents = self._cq_size

    def _backend_close(self) -> None:
        wakefd, self._wakefd = self._wakefd, -1  # first, so a racing post() stops writing to it
        if wakefd >= 0:
            os.close(wakefd)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _backend_register(self, entry: SocketEntry) -> None:
        self._epoll.register(entry.fd, _SOCKET_MASK)
        entry.state = _EpollSocket(entry.sock)

    def _backend_unregister(self, entry: SocketEntry) -> None:
        st = entry.state
        if st is not None:
            st.recvq.clear()
            st.sendq.clear()
            st.acceptq.clear()
            st.connect_op = None
        try:
            self._epoll.unregister(entry.fd)
        except (OSError, ValueError):
            pass  # closed already: the kernel dropped it from the set with its last reference

    def _backend_cancel_all(self) -> None:
        """Nothing to wait for: no kernel request refers to user memory between syscalls."""

    # ------------------------------------------------------------------ operations
    def _backend_recv(self, op: Operation) -> None:
        q = op.entry.state.recvq
        if q:  # earlier recvs wait for an edge; keep FIFO order
            q.append(op)
            return
        try:
            n = op.sock.recv_into(op.buf)
        except BlockingIOError:
            q.append(op)
            return
        except OSError as exc:
            self._fail(op, exc.errno or 0)
            return
        self._complete(op, _SUCCESS, n, 0)

    def _backend_send(self, op: Operation) -> None:
        st = op.entry.state
        q = st.sendq
        q.append(op)
        if len(q) == 1:  # otherwise a flush is already waiting for EPOLLOUT (or queued below)
            if self._defer_flush is not None:
                self._defer_flush.append(st)
            else:
                self._flush_sends(st)

    def send_batch_async(self, ops: list[SendOperation] | Any) -> int:
        # Queue the whole batch first, then flush each socket once: one sendmsg per socket.
        dirty: list[_EpollSocket] = []
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
        st.acceptq.append(op)
        if len(st.acceptq) == 1:
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
                    q.remove(op)
                except ValueError:
                    pass
        self._complete(op, status, op.done, error_code)

    # ------------------------------------------------------------------ readiness -> completions
    def _drain_recvs(self, st: _EpollSocket) -> None:
        q = st.recvq
        recv_into = st.sock.recv_into
        complete = self._complete
        while q:
            op = q[0]
            try:
                n = recv_into(op.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                q.popleft()
                self._fail(op, exc.errno or 0)
                continue  # the next recv sees EOF or the same error at once
            q.popleft()
            complete(op, _SUCCESS, n, 0)

    def _flush_sends(self, st: _EpollSocket) -> None:
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
                return  # buffer full: EPOLLOUT will follow
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

    def _drain_accepts(self, st: _EpollSocket) -> None:
        q = st.acceptq
        sock = st.sock
        accept = sock.accept
        while q:
            try:
                conn, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                self._fail(q.popleft(), exc.errno or 0)
                return  # e.g. EMFILE: stop; the next accept_async tries again
            conn.setblocking(False)  # accept(2) does not inherit O_NONBLOCK on Linux
            op = q.popleft()
            self._complete(op, _SUCCESS, 0, 0, (conn, addr))

    def _finish_connect(self, st: _EpollSocket) -> None:
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
        self._epoll_waits += 1
        events = self._epoll.poll(timeout_ms / 1000.0 if timeout_ms >= 0 else -1, self._maxevents)
        if not events:
            return
        self._events += len(events)
        sockets = self._sockets
        wakefd = self._wakefd
        for fd, ev in events:
            entry = sockets.get(fd)
            if entry is None:
                if fd == wakefd:
                    try:
                        os.eventfd_read(fd)
                    except BlockingIOError:
                        pass
                continue
            st = entry.state
            if ev & _READ_EVENTS:
                if st.recvq:
                    self._drain_recvs(st)
                if st.acceptq:
                    self._drain_accepts(st)
            if ev & _WRITE_EVENTS:
                if st.connect_op is not None:
                    self._finish_connect(st)
                if st.sendq:
                    self._flush_sends(st)

    def _backend_wakeup(self) -> None:
        fd = self._wakefd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass  # closed by a concurrent shutdown, or the counter is saturated: a wake is due anyway

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
            "epoll_waits": self._epoll_waits,
            "events": self._events,
            "sendmsg_calls": self._sendmsg_calls,
            "partial_writes": self._partial_writes,
        }
