"""Windows I/O completion ports (IOCP) through cffi in ABI mode (kernel32 + ws2_32).

Facts about the kernel API that shaped this module:
- IOCP is completion-based: WSASend/WSARecv/AcceptEx/ConnectEx start an operation described by an
  OVERLAPPED; the kernel owns that OVERLAPPED and the data buffer until the operation's completion
  packet is dequeued. Every request therefore lives in `_inflight` (keyed by operation id, which
  rides in the OVERLAPPED right behind it, see FW_OVERLAPPED) holding the OVERLAPPED, the WSABUF and
  the cffi view of the caller's buffer until the packet arrives - even when the operation was
  cancelled or timed out in the meantime.
- A socket is associated once with a port (`CreateIoCompletionPort(socket, port, key, 0)`) and can
  never be dissociated; associating it again fails with ERROR_INVALID_PARAMETER. That is tolerated
  only for a socket this provider associated with its current port (a re-register after an
  unregister); a socket tied to another port (another provider's, or this provider's before a
  shutdown and re-initialize) would post its completions there and hang, so registering it fails.
- A call that returns success immediately still queues its completion packet (we do not set
  FILE_SKIP_COMPLETION_PORT_ON_SUCCESS), so every operation completes on exactly one path: the
  packet. A call that fails with anything but WSA_IO_PENDING queues nothing and completes at once.
- `GetQueuedCompletionStatusEx` dequeues a whole batch of OVERLAPPED_ENTRY in one kernel call; it
  fails with WAIT_TIMEOUT when nothing came. `PostQueuedCompletionStatus` with our wake-up key is
  the thread-safe wake-up for `post()`.
- OVERLAPPED.Internal holds the NTSTATUS (0 = success) in its low 32 bits only: it is a ULONG_PTR
  shared with a pointer, so the upper half is undefined (HasOverlappedIoCompleted compares
  `(DWORD)Internal`). A failure's NTSTATUS is mapped to its Winsock error here
  (`_windows_cffi.winsock_error_of`) instead of asking `WSAGetOverlappedResult`, whose socket
  handle may already be closed or reused (it would answer WSAENOTSOCK). A request aborted by a
  cancel or by closing its socket ends with STATUS_CANCELLED, but closing a connected socket may
  also end them with STATUS_LOCAL_DISCONNECT (WSAECONNABORTED) or STATUS_REQUEST_ABORTED; on a
  socket the caller closed those are reported as CANCELLED.
- `CancelIoEx(handle, overlapped)` only requests cancellation; the operation still completes
  through the port (aborted, or with its real result if it won the race - then that result is
  delivered, so no received byte is lost). ERROR_NOT_FOUND means its packet is already queued.
- AcceptEx and ConnectEx are extension functions loaded through
  `WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)`. AcceptEx needs a pre-created accept socket and
  address space of sizeof(sockaddr_in6)+16 per address; afterwards SO_UPDATE_ACCEPT_CONTEXT makes
  the socket a normal connected socket, and GetAcceptExSockaddrs parses the peer address from the
  output buffer (no system call). ConnectEx needs a bound socket and SO_UPDATE_CONNECT_CONTEXT
  after it completes.
"""

from __future__ import annotations

import socket
import sys
import time
import weakref
from typing import Any, ClassVar

import structlog

from framework.io.backends import _windows_cffi as win
from framework.io.backends.base import Operation, QueuedProvider, SocketEntry
from framework.io.errors import (
    ERROR_CONNECTION_REFUSED,
    ERROR_NETNAME_DELETED,
    ERROR_SEM_TIMEOUT,
    WSAECONNABORTED,
    WSAECONNREFUSED,
    WSAECONNRESET,
    WSAETIMEDOUT,
    BackendUnavailable,
    ProviderError,
    map_wsa_error,
)
from framework.io.provider import OpType, Status

log = structlog.get_logger("framework.io")
ffi = win.ffi

ERROR_CONNECTION_ABORTED = 1236
# Win32 (NTSTATUS-derived) codes that some paths report instead of the Winsock code the error table
# maps (docs/PROVIDER.md, "Error codes").
_WIN32_TO_WSA = {
    ERROR_NETNAME_DELETED: WSAECONNRESET,
    ERROR_CONNECTION_REFUSED: WSAECONNREFUSED,
    ERROR_SEM_TIMEOUT: WSAETIMEDOUT,
    ERROR_CONNECTION_ABORTED: WSAECONNABORTED,
}

_ACCEPT_ADDR_LEN = ffi.sizeof("struct sockaddr_in6") + 16  # AcceptEx: max address size + 16
_MAX_WSABUF = 0x7FFFFFFF  # one WSABUF length is a ULONG; larger sends continue in pieces
_SHUTDOWN_DRAIN_S = 5.0

# Requests the kernel never returned (shutdown gave up waiting): their memory must stay valid for
# the life of the process, so they are parked here instead of being freed.
_never_returned: list[Any] = []


def map_windows_error(code: int) -> int:
    """A Windows error (Winsock or Win32) -> `ErrorCode` where the table maps it, else the code."""
    return map_wsa_error(_WIN32_TO_WSA.get(code, code))


def _is_bound(sock: socket.socket) -> bool:
    """Winsock's getsockname fails (WSAEINVAL) on an unbound socket; other stacks report port 0."""
    try:
        port: int = sock.getsockname()[1]
        return port != 0
    except OSError:
        return False


class _Request:
    """One kernel request: everything the kernel may touch until its completion packet arrives."""

    __slots__ = ("accept_sock", "cancel_code", "cancel_status", "keep", "op", "ov")

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.ov = ffi.new("FW_OVERLAPPED *")
        self.ov.op_id = op.op_id
        self.keep: tuple[Any, ...] = ()
        self.accept_sock: socket.socket | None = None
        self.cancel_status: Status | None = None
        self.cancel_code = 0


class IocpProvider(QueuedProvider):
    """AsyncIOProvider on a Windows I/O completion port."""

    name = "iocp"
    KEY_IO: ClassVar[int] = 1
    KEY_WAKEUP: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()
        self._libs: win.WinLibs | None = None
        self._port: Any = None
        self._entries: Any = None
        self._removed: Any = None
        self._batch = 0
        self._inflight: dict[int, _Request] = {}
        self._extensions: dict[tuple[int, int, int, str], Any] = {}
        self._packets = 0
        self._gqcs_calls = 0
        # Sockets associated with the current port (a port association lasts the socket's life).
        self._associated: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    # ------------------------------------------------------------------ availability
    @classmethod
    def probe(cls) -> None:
        """Raise BackendUnavailable with the reason when IOCP cannot run here."""
        if sys.platform != "win32":
            raise BackendUnavailable(
                cls.name, f"I/O completion ports are a Windows kernel API; this is {sys.platform}"
            )
        try:
            win.load()
        except OSError as exc:
            raise BackendUnavailable(cls.name, f"cannot load kernel32/ws2_32: {exc}") from exc

    # ------------------------------------------------------------------ lifecycle hooks
    def _backend_open(self) -> None:
        self._libs = libs = win.load()
        port = libs.kernel32.CreateIoCompletionPort(ffi.cast("HANDLE", -1), ffi.NULL, 0, 0)
        if port == ffi.NULL:
            raise win.winerror_exc(win.last_error(), "CreateIoCompletionPort")
        self._port = port
        self._associated = weakref.WeakSet()
        self._batch = max(16, min(self._cq_size, 4096))
        self._entries = ffi.new("OVERLAPPED_ENTRY[]", self._batch)
        self._removed = ffi.new("ULONG *")

    def _backend_close(self) -> None:
        if self._port is not None and self._libs is not None:
            self._libs.kernel32.CloseHandle(self._port)
        self._port = None

    def _backend_register(self, entry: SocketEntry) -> None:
        libs = self._k()
        handle = win.handle_of(entry.fd)
        if libs.kernel32.CreateIoCompletionPort(handle, self._port, self.KEY_IO, 0) == ffi.NULL:
            err = win.last_error()
            if err != win.ERROR_INVALID_PARAMETER:
                raise win.winerror_exc(err, "CreateIoCompletionPort(socket)")
            # Associated for life: fine when it is with our port (registered again after an
            # unregister), fatal for the socket when it is another port's (see the docstring).
            if entry.sock not in self._associated:
                raise win.winerror_exc(
                    err,
                    "CreateIoCompletionPort(socket): the socket is tied to another completion port "
                    "(another provider's, or this one's before a re-initialize), and Windows cannot "
                    "move it; use a new socket",
                )
        self._associated.add(entry.sock)
        # The socket's event object is never waited on; skipping it saves work per completion.
        libs.kernel32.SetFileCompletionNotificationModes(handle, win.FILE_SKIP_SET_EVENT_ON_HANDLE)

    def _k(self) -> win.WinLibs:
        assert self._libs is not None
        return self._libs

    # ------------------------------------------------------------------ requests
    def _start(self, req: _Request, rc_ok: bool, err: int) -> None:
        """Book a started request, or fail its operation when the call failed synchronously."""
        op = req.op
        if rc_ok or err == win.ERROR_IO_PENDING:
            self._inflight[op.op_id] = req
            return
        if req.accept_sock is not None:
            req.accept_sock.close()
        self._complete(op, Status.ERROR, op.done, map_windows_error(err))

    def _backend_send(self, op: Operation) -> None:
        self._issue_send(op)

    def _issue_send(self, op: Operation) -> None:
        assert op.buf is not None
        chunk = op.buf[op.done : op.done + _MAX_WSABUF]
        req = _Request(op)
        cbuf = ffi.from_buffer(chunk)
        wsabuf = ffi.new("WSABUF *")
        wsabuf.len = len(chunk)
        wsabuf.buf = cbuf
        req.keep = (wsabuf, cbuf)
        ws2 = self._k().ws2_32
        # lpNumberOfBytesSent is NULL: with an OVERLAPPED the count comes with the completion.
        rc = ws2.WSASend(
            win.socket_of(op.fd), wsabuf, 1, ffi.NULL, 0, ffi.cast("LPWSAOVERLAPPED", req.ov), ffi.NULL
        )
        self._start(req, rc == 0, 0 if rc == 0 else ws2.WSAGetLastError())

    def _backend_recv(self, op: Operation) -> None:
        assert op.buf is not None
        req = _Request(op)
        cbuf = ffi.from_buffer(op.buf, require_writable=True)
        wsabuf = ffi.new("WSABUF *")
        wsabuf.len = min(len(op.buf), _MAX_WSABUF)
        wsabuf.buf = cbuf
        flags = ffi.new("DWORD *")
        req.keep = (wsabuf, cbuf, flags)
        ws2 = self._k().ws2_32
        rc = ws2.WSARecv(
            win.socket_of(op.fd), wsabuf, 1, ffi.NULL, flags, ffi.cast("LPWSAOVERLAPPED", req.ov), ffi.NULL
        )
        self._start(req, rc == 0, 0 if rc == 0 else ws2.WSAGetLastError())

    def _extension(self, sock: socket.socket, guid: win.GuidSpec, fntype: str) -> Any:
        """AcceptEx/ConnectEx/GetAcceptExSockaddrs for this socket kind, loaded once."""
        key = (int(sock.family), int(sock.type), int(sock.proto), fntype)
        fn = self._extensions.get(key)
        if fn is None:
            fn = win.load_extension(self._k(), sock, guid, fntype)
            self._extensions[key] = fn
        return fn

    def _new_accept_socket(self, listen_sock: socket.socket) -> socket.socket:
        """The socket AcceptEx fills in; RIO overrides it to create a Registered-I/O socket."""
        return socket.socket(listen_sock.family, listen_sock.type, listen_sock.proto)

    def _backend_accept(self, op: Operation) -> None:
        listen_sock = op.sock
        assert listen_sock is not None
        try:
            accept_ex = self._extension(listen_sock, win.WSAID_ACCEPTEX, "LPFN_ACCEPTEX")
            accept_sock = self._new_accept_socket(listen_sock)
        except OSError as exc:
            self._complete(op, Status.ERROR, 0, map_windows_error(getattr(exc, "winerror", None) or 0))
            return
        req = _Request(op)
        req.accept_sock = accept_sock
        outbuf = ffi.new("char[]", 2 * _ACCEPT_ADDR_LEN)
        received = ffi.new("DWORD *")
        req.keep = (outbuf, received)
        ok = accept_ex(
            win.socket_of(listen_sock),
            win.socket_of(accept_sock),
            outbuf,
            0,  # no initial data: complete as soon as the connection is accepted
            _ACCEPT_ADDR_LEN,
            _ACCEPT_ADDR_LEN,
            received,
            ffi.cast("LPOVERLAPPED", req.ov),
        )
        self._start(req, bool(ok), 0 if ok else self._k().ws2_32.WSAGetLastError())

    def _backend_connect(self, op: Operation) -> None:
        sock = op.sock
        assert sock is not None
        try:
            connect_ex = self._extension(sock, win.WSAID_CONNECTEX, "LPFN_CONNECTEX")
            if not _is_bound(sock):  # ConnectEx requires a bound socket (WSAEINVAL otherwise)
                sock.bind(("::", 0) if sock.family == socket.AF_INET6 else ("0.0.0.0", 0))
            name, namelen = win.sockaddr_from_address(sock.family, op.address)
        except OSError as exc:
            code = getattr(exc, "winerror", None) or exc.errno or 0
            self._complete(op, Status.ERROR, 0, map_windows_error(code))
            return
        req = _Request(op)
        req.keep = (name,)
        ok = connect_ex(
            win.socket_of(sock),
            ffi.cast("struct sockaddr *", name),
            namelen,
            ffi.NULL,
            0,
            ffi.NULL,
            ffi.cast("LPOVERLAPPED", req.ov),
        )
        self._start(req, bool(ok), 0 if ok else self._k().ws2_32.WSAGetLastError())

    # ------------------------------------------------------------------ cancellation
    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        req = self._inflight.get(op.op_id)
        if req is None:
            self._complete(op, status, op.done, error_code)
            return
        if req.cancel_status is None:
            req.cancel_status = status
            req.cancel_code = error_code
            # Completion (aborted, or the real result if it won the race) arrives through the port.
            self._k().kernel32.CancelIoEx(win.handle_of(op.fd), ffi.cast("LPOVERLAPPED", req.ov))

    def _backend_cancel_all(self) -> None:
        if not self._inflight or self._libs is None:
            return
        k32 = self._libs.kernel32
        for req in list(self._inflight.values()):
            k32.CancelIoEx(win.handle_of(req.op.fd), ffi.cast("LPOVERLAPPED", req.ov))
        deadline = time.monotonic() + _SHUTDOWN_DRAIN_S
        while self._inflight and time.monotonic() < deadline:
            for key, lpov, _nbytes in self._dequeue(100):
                if key == self.KEY_IO:
                    returned = self._inflight.pop(int(ffi.cast("FW_OVERLAPPED *", lpov).op_id), None)
                    if returned is not None and returned.accept_sock is not None:
                        returned.accept_sock.close()
        if self._inflight:
            log.warning(
                "iocp: requests never returned by the kernel; their memory is kept", count=len(self._inflight)
            )
            _never_returned.extend(self._inflight.values())
            self._inflight.clear()

    # ------------------------------------------------------------------ completions
    def _dequeue(self, timeout_ms: int) -> list[tuple[int, Any, int]]:
        """One GetQueuedCompletionStatusEx: a batch of (key, lpOverlapped, bytes)."""
        libs = self._k()
        wait = win.INFINITE if timeout_ms < 0 else timeout_ms
        self._gqcs_calls += 1
        ok = libs.kernel32.GetQueuedCompletionStatusEx(
            self._port, self._entries, self._batch, self._removed, wait, 0
        )
        if not ok:
            err = win.last_error()
            if err == win.WAIT_TIMEOUT:
                return []
            raise ProviderError(f"GetQueuedCompletionStatusEx failed (error {err})", map_windows_error(err))
        entries = self._entries
        n = self._removed[0]
        self._packets += n
        return [
            (
                int(entries[i].lpCompletionKey),
                entries[i].lpOverlapped,
                int(entries[i].dwNumberOfBytesTransferred),
            )
            for i in range(n)
        ]

    def _backend_poll(self, timeout_ms: int) -> None:
        for key, lpov, nbytes in self._dequeue(timeout_ms):
            if key == self.KEY_IO:
                self._on_io(lpov, nbytes)
            elif key != self.KEY_WAKEUP:
                self._on_packet(key, lpov, nbytes)

    def _on_packet(self, key: int, lpov: Any, nbytes: int) -> None:
        """A packet with a key this class does not own (RIO's completion-queue notification)."""

    @staticmethod
    def _aborted(op: Operation, err: int) -> bool:
        """A failed request that ended because it was aborted locally: a cancel, or its socket
        closed under it (which may report a local disconnect rather than a cancel)."""
        if err == win.ERROR_OPERATION_ABORTED:
            return True
        return err in (win.WSAECONNABORTED, win.WSAENOTSOCK) and op.sock is not None and op.sock.fileno() == -1

    def _on_io(self, lpov: Any, nbytes: int) -> None:
        fw = ffi.cast("FW_OVERLAPPED *", lpov)
        req = self._inflight.pop(int(fw.op_id), None)
        if req is None:
            return
        op = req.op
        if op.op_id not in self._pending:  # completed meanwhile (unregister, shutdown)
            if req.accept_sock is not None:
                req.accept_sock.close()
            return
        ntstatus = int(fw.ov.Internal) & 0xFFFFFFFF  # the NTSTATUS; the upper half is undefined
        if ntstatus != win.STATUS_SUCCESS:
            if req.accept_sock is not None:
                req.accept_sock.close()
            if req.cancel_status is not None:  # cancelled by us (CancelIoEx)
                self._complete(op, req.cancel_status, op.done, req.cancel_code)
                return
            err = win.winsock_error_of(ntstatus)
            if self._aborted(op, err):
                self._complete(op, Status.CANCELLED, op.done, 0)
            else:
                self._complete(op, Status.ERROR, op.done, map_windows_error(err))
            return
        self._io_succeeded(op, req, nbytes)

    def _io_succeeded(self, op: Operation, req: _Request, nbytes: int) -> None:
        op_type = op.op_type
        if op_type == OpType.SEND:
            op.done += nbytes
            assert op.buf is not None
            if op.done < len(op.buf) and nbytes > 0 and req.cancel_status is None:
                self._issue_send(op)  # a WSABUF-sized piece, or a short write: send the rest
            elif op.done < len(op.buf) and req.cancel_status is not None:
                self._complete(op, req.cancel_status, op.done, req.cancel_code)
            else:
                self._complete(op, Status.SUCCESS, op.done, 0)
        elif op_type == OpType.RECV:
            self._complete(op, Status.SUCCESS, nbytes, 0)
        elif op_type == OpType.ACCEPT:
            self._accepted(op, req)
        elif op_type == OpType.CONNECT:
            # Makes getpeername/shutdown work on a ConnectEx socket.
            err = self._update_context(op.fd, win.SO_UPDATE_CONNECT_CONTEXT, ffi.NULL, 0)
            if err:
                self._complete(op, Status.ERROR, 0, map_windows_error(err))
                return
            self._complete(op, Status.SUCCESS, 0, 0)

    def _update_context(self, fd: int, option: int, value: Any, size: int) -> int:
        """setsockopt(SOL_SOCKET, SO_UPDATE_*_CONTEXT) through ws2_32 (Winsock's SOL_SOCKET is
        0xFFFF); returns 0 or the Winsock error."""
        ws2 = self._k().ws2_32
        if ws2.setsockopt(win.socket_of(fd), win.SOL_SOCKET, option, ffi.cast("char *", value), size) == 0:
            return 0
        return int(ws2.WSAGetLastError())

    def _accepted(self, op: Operation, req: _Request) -> None:
        accept_sock = req.accept_sock
        listen_sock = op.sock
        assert accept_sock is not None and listen_sock is not None
        req.accept_sock = None
        # Inherit the listening socket's properties; getpeername/shutdown work afterwards.
        listen_handle = ffi.new("SOCKET *", listen_sock.fileno())
        err = self._update_context(
            accept_sock.fileno(), win.SO_UPDATE_ACCEPT_CONTEXT, listen_handle, ffi.sizeof("SOCKET")
        )
        if err:
            accept_sock.close()
            self._complete(op, Status.ERROR, 0, map_windows_error(err))
            return
        try:
            get_addrs = self._extension(
                listen_sock, win.WSAID_GETACCEPTEXSOCKADDRS, "LPFN_GETACCEPTEXSOCKADDRS"
            )
            accept_sock.setblocking(False)  # like every socket the provider hands out
        except OSError as exc:
            accept_sock.close()
            self._complete(op, Status.ERROR, 0, map_windows_error(getattr(exc, "winerror", None) or 0))
            return
        local = ffi.new("struct sockaddr **")
        remote = ffi.new("struct sockaddr **")
        local_len = ffi.new("int *")
        remote_len = ffi.new("int *")
        get_addrs(req.keep[0], 0, _ACCEPT_ADDR_LEN, _ACCEPT_ADDR_LEN, local, local_len, remote, remote_len)
        address = win.address_from_sockaddr(remote[0], remote_len[0])
        self._complete(op, Status.SUCCESS, 0, 0, accepted=(accept_sock, address))

    def _backend_wakeup(self) -> None:
        if self._port is not None and self._libs is not None:
            self._libs.kernel32.PostQueuedCompletionStatus(self._port, 0, self.KEY_WAKEUP, ffi.NULL)

    # ------------------------------------------------------------------ diagnostics
    def _features(self) -> frozenset[str]:
        return super()._features() | {"CompletionPort", "AcceptEx", "ConnectEx"}

    def _backend_statistics(self) -> dict[str, Any]:
        return {
            "inflight_requests": len(self._inflight),
            "completion_packets": self._packets,
            "dequeue_calls": self._gqcs_calls,
            "dequeue_batch": self._batch,
        }
