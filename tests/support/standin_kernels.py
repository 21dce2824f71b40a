"""Stand-ins for the macOS and Windows kernel calls, so the kqueue and IOCP backends' logic runs the
provider contract suite on Linux (test ids say `mocked_macos_kernel` / `mocked_windows_kernel`).

Only the kernel boundary is replaced; the I/O itself happens on real Linux loopback sockets, and the
backends run unchanged. Where the stand-in and a backend disagree, the documented kernel behaviour
(cited per method) is what the stand-in implements.

`StandinSelect` replaces `select.kqueue`/`select.kevent` (BSD constants, same call shapes) on top
of an edge-triggered epoll:
- EV_ADD|EV_CLEAR interest is EPOLLET interest: reported once per state change, and the state that
  already holds when a filter is added (or re-added) is reported at the next wait.
- A change that fails comes back as an EV_ERROR event (errno in `data`) while there is room in the
  event list, and then the call returns those without waiting for events (FreeBSD/XNU kevent());
  without room kevent() fails with that errno and the rest of the changelist is not applied.
- close(2) removes a descriptor's knotes: before each call, knotes whose descriptor was closed (or
  now names another file) are dropped, so EV_DELETE then fails with EBADF (closed) or ENOENT
  (number reused). Only EV_CLEAR knotes are emulated (the backend uses nothing else).
- EVFILT_READ reports EV_EOF once the peer's FIN (or an error) arrived, `data` = bytes readable;
  EVFILT_WRITE reports EV_EOF once nothing can be sent any more. Events beyond `max_events` stay
  queued for the next call, as knotes stay active in a real kqueue.
`XnuSendRules` (switches of `install_macos_kernel`, both on by default) makes send(2)/sendmsg(2)
of every socket in the process (as on macOS, the test's own peers too) answer as XNU and FreeBSD
do after the peer's reset, where Linux would answer otherwise:
- `epipe_before_reset`: EPIPE, never ECONNRESET (sosendcheck tests SS_CANTSENDMORE, which the
  RST set, before so_error);
- `async_rst`: a loopback RST is processed asynchronously there, so the first send after the
  peer's abortive close still succeeds (its bytes are lost) and a later send fails.

`StandinWindowsKernel` replaces the kernel32/ws2_32 functions `_windows_cffi.CDEF` declares. Each is
a cffi callback of exactly the declared C type, so the backend's arguments go through the same
cffi conversions as with the real DLLs; the SOCKET handle is the Linux fd. Design (one thread does
the I/O, no helper thread): an overlapped request is tried at once when nothing is queued before
it on its socket; if it cannot finish it is pended (OVERLAPPED.Internal = STATUS_PENDING, the call
fails with WSA_IO_PENDING) and is driven by `GetQueuedCompletionStatusEx`, which polls the sockets
with pending requests plus a wake-up eventfd. IOCP facts kept:
- every request that was started (returned 0, or failed with WSA_IO_PENDING) posts exactly one
  packet, also when it finished synchronously (unless FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set
  on the socket); one that failed with another error posts nothing;
- OVERLAPPED.Internal/InternalHigh carry the NTSTATUS and the byte count; WSAGetOverlappedResult
  turns the NTSTATUS into a Winsock error; a stream WSASend completes only when all its bytes were
  taken; requests of one socket complete in the order they were issued;
- CancelIoEx completes the request (if it has not finished yet) with STATUS_CANCELLED; it fails
  with ERROR_NOT_FOUND for a request that is not pending on that handle. Closing a socket (through
  closesocket or Python's close) aborts its requests with `close_abort_status`;
- AcceptEx needs an unconnected accept socket and address space of max address + 16 bytes; the
  accepted socket becomes a normal connected socket only after SO_UPDATE_ACCEPT_CONTEXT (before,
  getpeername fails); ConnectEx needs a bound socket and SO_UPDATE_CONNECT_CONTEXT afterwards;
- a socket is associated with one port for life (again: ERROR_INVALID_PARAMETER);
- GetQueuedCompletionStatusEx fills OVERLAPPED_ENTRY records and fails with WAIT_TIMEOUT when the
  timeout passes; PostQueuedCompletionStatus wakes it from any thread; GetLastError/WSAGetLastError
  are per thread (`last_error` replaces `_windows_cffi.last_error`, which reads cffi's copy).
Switches of `StandinWindowsKernel` (defaults: what Windows does, where Linux would differ):
- `close_abort_status` (STATUS_LOCAL_DISCONNECT): closing a socket aborts its pending requests with
  a status that is not STATUS_CANCELLED, as closing a connected socket may on Windows;
- `async_rst` (on): the first send after the peer's abortive close still succeeds (the loopback
  RST is not processed yet); later ones fail with WSAECONNRESET. A send after our own
  shutdown(SD_SEND) fails with WSAESHUTDOWN, not WSAECONNRESET (Linux says EPIPE to both);
- `accept_immediate` (on): AcceptEx with a connection already waiting completes in the call
  (returns TRUE; the packet is still queued);
- `connect_refused_delay_s` (1.0): a refused ConnectEx completes only after Windows' SYN retries
  (about 1-2 s), never at once;
- `dirty_internal` (on): only the low 32 bits of OVERLAPPED.Internal hold the NTSTATUS; the upper
  half is left dirty (it is shared with a pointer in IO_STATUS_BLOCK);
- `faults`: {function name: Winsock error} makes that function fail once (fault injection).
The Registered I/O table (WSAIoctl SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER) is stood in for too:
- RIORegisterBuffer/RIODeregisterBuffer: RIO_BUF (id, offset, length) must lie inside a registered
  buffer; deregistering a buffer a request still uses is a misuse;
- RIOCreateRequestQueue: only on a socket created with WSA_FLAG_REGISTERED_IO, one per socket,
  and the completion queue must have room for every request the queue can hold (WSAENOBUFS);
- RIOSend/RIOReceive: at most the queue's depth outstanding (WSAENOBUFS); RIO_MSG_DEFER requests
  start only when committed (RIO_MSG_COMMIT_ONLY or a later undeferred call); per socket and
  direction they complete in order; a send completes when all its bytes went, a receive with
  what arrived (0 = the peer closed); there is no way to cancel one: closing the socket ends them
  with WSAECONNABORTED;
- completions go to the completion queue (overflowing it is a misuse); RIONotify arms one IOCP
  packet (key, OVERLAPPED of RIOCreateCompletionQueue) for when the queue is not empty, fails
  with WSAEALREADY when already armed; RIODequeueCompletion fills RIORESULTs.
Misuse of an API (what the real kernel would reject or leave undefined) is recorded in `errors`;
the contract fixture fails the test when any was recorded.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from framework.io.backends import _windows_cffi as win

# ================================================================================ kqueue (macOS/BSD)
# sys/event.h (identical on macOS and FreeBSD for these)
KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000

# Linux values, spelled out so this module imports anywhere (it runs only where epoll exists).
_EPOLLIN, _EPOLLOUT, _EPOLLERR, _EPOLLHUP, _EPOLLRDHUP, _EPOLLET = 0x1, 0x4, 0x8, 0x10, 0x2000, 1 << 31
_EP_IN = _EPOLLIN | _EPOLLRDHUP
_EP_HUP = _EPOLLHUP | _EPOLLERR


def _identity(fd: int) -> tuple[int, int] | None:
    """Which open file `fd` names now (None when closed): tells a closed or reused number apart."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class StandinKevent:
    """`select.kevent`'s shape: kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD, ...)."""

    __slots__ = ("data", "fflags", "filter", "flags", "ident", "udata")

    def __init__(
        self,
        ident: Any,
        filter: int = KQ_FILTER_READ,
        flags: int = KQ_EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: int = 0,
    ) -> None:
        self.ident = ident if isinstance(ident, int) else ident.fileno()
        self.filter = filter
        self.flags = flags
        self.fflags = fflags
        self.data = data
        self.udata = udata

    def __repr__(self) -> str:
        return f"kevent(ident={self.ident}, filter={self.filter}, flags={self.flags:#x}, data={self.data})"


class _Knote:
    __slots__ = ("flags", "identity", "udata")

    def __init__(self, flags: int, identity: tuple[int, int], udata: int) -> None:
        self.flags = flags
        self.identity = identity
        self.udata = udata


class StandinKqueue:
    """`select.kqueue` on an edge-triggered epoll; see the module docstring."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._knotes: dict[tuple[int, int], _Knote] = {}
        self._queued: deque[StandinKevent] = deque()  # reported but not yet returned
        self.calls = 0

    @property
    def closed(self) -> bool:
        return self._ep.closed

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        self._ep.close()

    # ---- changes
    def _forget_closed(self) -> None:
        """close(2) drops a descriptor's knotes (and its queued events) in a real kqueue."""
        stale = {fd for (fd, _f), kn in self._knotes.items() if _identity(fd) != kn.identity}
        if stale:
            for key in [k for k in self._knotes if k[0] in stale]:
                del self._knotes[key]
            self._queued = deque(ev for ev in self._queued if ev.ident not in stale)
            for fd in stale:
                try:
                    self._ep.unregister(fd)
                except OSError:
                    pass  # epoll already dropped it with the file's last reference

    def _mask(self, fd: int) -> int:
        mask = 0
        if (fd, KQ_FILTER_READ) in self._knotes:
            mask |= _EP_IN
        if (fd, KQ_FILTER_WRITE) in self._knotes:
            mask |= _EPOLLOUT
        return mask

    def _apply(self, ch: StandinKevent) -> None:
        fd = ch.ident
        identity = _identity(fd)
        if identity is None:
            raise OSError(errno.EBADF, "kevent: bad file descriptor")
        if ch.filter not in (KQ_FILTER_READ, KQ_FILTER_WRITE):
            raise OSError(errno.EINVAL, "kevent: filter not emulated")
        key = (fd, ch.filter)
        had = self._mask(fd)
        if ch.flags & KQ_EV_DELETE:
            if key not in self._knotes:
                raise OSError(errno.ENOENT, "kevent: no such knote")
            del self._knotes[key]
        elif ch.flags & KQ_EV_ADD:
            if not ch.flags & KQ_EV_CLEAR:
                raise AssertionError("the stand-in emulates EV_CLEAR (edge-triggered) knotes only")
            # The kernel keeps the flags minus the action bits; they come back with each event.
            kept = ch.flags & ~(KQ_EV_ADD | KQ_EV_ENABLE | KQ_EV_DISABLE)
            self._knotes[key] = _Knote(kept, identity, ch.udata)
        else:
            raise AssertionError(f"change flags {ch.flags:#x} are not emulated")
        mask = self._mask(fd)
        if mask and had:
            self._ep.modify(fd, mask | _EPOLLET)  # re-evaluates: current state is reported
        elif mask:
            self._ep.register(fd, mask | _EPOLLET)
        elif had:
            self._ep.unregister(fd)

    # ---- the system call
    def control(
        self, changelist: Iterable[StandinKevent] | None, max_events: int, timeout: float | None = None
    ) -> list[StandinKevent]:
        if self.closed:
            raise ValueError("I/O operation on closed kqueue object")
        if max_events < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {max_events}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be positive or None")  # CPython's check
        self.calls += 1
        changes = list(changelist) if changelist is not None else []
        for ch in changes:
            if not isinstance(ch, StandinKevent):
                raise TypeError("changelist must be an iterable of select.kevent objects")
        self._forget_closed()
        errors: list[StandinKevent] = []
        for ch in changes:
            try:
                self._apply(ch)
            except OSError as exc:
                if len(errors) >= max_events:
                    raise  # no room to report it: kevent() fails, later changes are not applied
                errors.append(
                    StandinKevent(ch.ident, ch.filter, ch.flags | KQ_EV_ERROR, 0, exc.errno or 0, ch.udata)
                )
        if errors or max_events == 0:
            return errors  # change errors are returned at once, without waiting for events
        wait = 0 if self._queued else (-1 if timeout is None else timeout)
        for fd, mask in self._ep.poll(wait):
            self._report(fd, mask)
        n = min(max_events, len(self._queued))
        return [self._queued.popleft() for _ in range(n)]

    def _report(self, fd: int, mask: int) -> None:
        rd = self._knotes.get((fd, KQ_FILTER_READ))
        wr = self._knotes.get((fd, KQ_FILTER_WRITE))
        if rd is not None and mask & (_EP_IN | _EP_HUP):
            eof = KQ_EV_EOF if mask & (_EPOLLRDHUP | _EP_HUP) else 0
            self._queued.append(StandinKevent(fd, KQ_FILTER_READ, rd.flags | eof, 0, _readable(fd), rd.udata))
        if wr is not None and mask & (_EPOLLOUT | _EP_HUP):
            eof = KQ_EV_EOF if mask & _EP_HUP else 0
            self._queued.append(StandinKevent(fd, KQ_FILTER_WRITE, wr.flags | eof, 0, 0, wr.udata))


def _readable(fd: int) -> int:
    """EVFILT_READ's `data`: bytes in the receive buffer (pending connections are not counted)."""
    import fcntl
    import termios

    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
    except OSError:
        return 0


class XnuSendRules:
    """send/sendmsg answering as XNU/FreeBSD after a peer's reset (see the module docstring).
    Installed on `socket.socket` for one test."""

    def __init__(self, async_rst: bool, epipe_before_reset: bool) -> None:
        self.async_rst = async_rst
        self.epipe_before_reset = epipe_before_reset
        self.lost_sends = 0  # sends that "succeeded" before the RST was processed
        self._reset_seen: set[tuple[int, tuple[int, int] | None]] = set()

    def install(self, monkeypatch: Any) -> None:
        for name in ("send", "sendmsg"):
            monkeypatch.setattr(socket.socket, name, self._wrap(getattr(socket.socket, name)))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        rules = self

        def send(sock: socket.socket, data: Any, *args: Any) -> Any:
            try:
                return real(sock, data, *args)
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                return rules._after_reset(sock, data, exc)

        return send

    def _after_reset(self, sock: socket.socket, data: Any, exc: OSError) -> int:
        key = (sock.fileno(), _identity(sock.fileno()))
        # Linux reports the reset itself (so_error) once as ECONNRESET; EPIPE alone is our own
        # shutdown or a reset already reported, which no RST in flight can make succeed.
        if self.async_rst and exc.errno == errno.ECONNRESET and key not in self._reset_seen:
            self._reset_seen.add(key)  # the RST is still "in flight": this send goes into the void
            self.lost_sends += 1
            if isinstance(data, list):
                return sum(len(memoryview(b)) for b in data)
            return len(memoryview(data))
        self._reset_seen.add(key)
        if self.epipe_before_reset:
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE)) from None
        raise exc


class StandinSelect:
    """What the kqueue backend takes from `select` on macOS: kqueue, kevent and the constants."""

    kqueue = StandinKqueue
    kevent = StandinKevent
    KQ_FILTER_READ = KQ_FILTER_READ
    KQ_FILTER_WRITE = KQ_FILTER_WRITE
    KQ_EV_ADD = KQ_EV_ADD
    KQ_EV_DELETE = KQ_EV_DELETE
    KQ_EV_CLEAR = KQ_EV_CLEAR
    KQ_EV_ERROR = KQ_EV_ERROR
    KQ_EV_EOF = KQ_EV_EOF


def install_macos_kernel(
    monkeypatch: Any, *, async_rst: bool = True, epipe_before_reset: bool = True
) -> XnuSendRules:
    """Point the kqueue backend at the stand-in (only what kqueue.py looks up), and take eventfd
    away (macOS has none), so the backend's pipe wake-up runs as it does there. The switches model
    XNU's send(2) after a peer reset (see the module docstring); both default to the real OS."""
    from framework.io.backends import kqueue as kqueue_module

    for name in (
        "KQ_FILTER_READ",
        "KQ_FILTER_WRITE",
        "KQ_EV_ADD",
        "KQ_EV_DELETE",
        "KQ_EV_CLEAR",
        "KQ_EV_ERROR",
    ):
        assert getattr(kqueue_module, name) == getattr(StandinSelect, name), name  # the BSD values
    monkeypatch.setattr(kqueue_module, "_new_kqueue", StandinKqueue)
    monkeypatch.setattr(kqueue_module, "_kevent", StandinKevent)
    monkeypatch.delattr(os, "eventfd", raising=False)
    rules = XnuSendRules(async_rst, epipe_before_reset)
    rules.install(monkeypatch)
    return rules


# ================================================================================ Windows (IOCP)
ffi = win.ffi

STATUS_PENDING = 0x103
STATUS_CANCELLED = win.STATUS_CANCELLED
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_IO_TIMEOUT = 0xC00000B5
STATUS_INVALID_CONNECTION = 0xC0000140
STATUS_CONNECTION_RESET = 0xC000020D
STATUS_CONNECTION_REFUSED = 0xC0000236
STATUS_CONNECTION_ABORTED = 0xC0000241
STATUS_LOCAL_DISCONNECT = 0xC000013B
STATUS_PIPE_DISCONNECTED = 0xC00000B0
_DIRTY_HIGH = 0x5A5A_0000_0000_0000  # what the upper half of OVERLAPPED.Internal may hold

ERROR_INVALID_HANDLE = 6
WSA_IO_INCOMPLETE = 996
WSAEFAULT = 10014
WSAENOTSOCK = 10038
WSAENOPROTOOPT = 10042
WSAEADDRNOTAVAIL = 10049
WSAEISCONN = 10056
WSAENOTCONN = 10057
WSAEALREADY = 10037
WSAENOBUFS = 10055
WSAECONNABORTED = 10053
WSAECONNRESET = 10054
WSAESHUTDOWN = 10058

# errno of the Linux syscall -> (NTSTATUS left in OVERLAPPED.Internal, Winsock error of that status)
_ERRNO_TO_STATUS = {
    errno.ECONNRESET: (STATUS_CONNECTION_RESET, 10054),
    # EPIPE: our own shutdown, or a reset Linux already reported (_status_of tells them apart)
    errno.EPIPE: (STATUS_PIPE_DISCONNECTED, WSAESHUTDOWN),
    errno.ECONNREFUSED: (STATUS_CONNECTION_REFUSED, 10061),
    errno.ETIMEDOUT: (STATUS_IO_TIMEOUT, 10060),
    errno.ECONNABORTED: (STATUS_CONNECTION_ABORTED, 10053),
    errno.ENOTCONN: (STATUS_INVALID_CONNECTION, WSAENOTCONN),
    errno.EBADF: (STATUS_INVALID_HANDLE, WSAENOTSOCK),
    errno.ENOTSOCK: (STATUS_INVALID_HANDLE, WSAENOTSOCK),
}
_STATUS_TO_WSA = {status: wsa for status, wsa in _ERRNO_TO_STATUS.values()}
_STATUS_TO_WSA[STATUS_CANCELLED] = win.ERROR_OPERATION_ABORTED
_STATUS_TO_WSA[STATUS_LOCAL_DISCONNECT] = WSAECONNABORTED

_FN_TYPES = {  # extension GUID -> function pointer type (mswsock.h)
    win.WSAID_ACCEPTEX: "LPFN_ACCEPTEX",
    win.WSAID_CONNECTEX: "LPFN_CONNECTEX",
    win.WSAID_GETACCEPTEXSOCKADDRS: "LPFN_GETACCEPTEXSOCKADDRS",
}


def _declared_functions() -> dict[str, str]:
    """name -> C function pointer type, exactly as `_windows_cffi.CDEF` declares the DLL exports."""
    found = re.findall(r"^(\w+) WINAPI (\w+)\(([^;]*?)\);", win.CDEF, re.M | re.S)
    return {name: f"{ret}(*)({args})" for ret, name, args in found}


def _addr(ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _borrow(fd: int) -> socket.socket:
    """A socket object over `fd` that does not own it (detach() before it is dropped)."""
    return socket.socket(fileno=fd)


class _Request:
    """One overlapped request the stand-in kernel owns until its packet is queued."""

    __slots__ = ("accept_fd", "address", "bufs", "delay_until", "done", "fd", "kind", "out", "ov")

    def __init__(self, kind: str, fd: int, ov: Any) -> None:
        self.kind = kind  # "recv", "send", "accept", "connect"
        self.fd = fd
        self.ov = ov  # OVERLAPPED * (the backend's memory)
        self.bufs: list[Any] = []  # cffi buffers (WSABUF contents)
        self.done = 0
        self.accept_fd = -1
        self.address: Any = None
        self.out: tuple[Any, int, int, int] | None = None  # AcceptEx output buffer and lengths
        self.delay_until = 0.0  # a refused connect reports only then (Windows retries the SYN)


class _Port:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.lock = threading.Lock()
        self.packets: deque[tuple[int, Any, int]] = deque()  # (key, LPOVERLAPPED, bytes)
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False


class _SockState:
    """A socket the stand-in knows: its port association and pending requests, in issue order."""

    def __init__(self, fd: int, identity: tuple[int, int]) -> None:
        self.fd = fd
        self.identity = identity
        self.port: _Port | None = None
        self.key = 0
        self.skip_on_success = False
        self.recvs: deque[_Request] = deque()
        self.sends: deque[_Request] = deque()
        self.accepts: deque[_Request] = deque()
        self.connect: _Request | None = None
        self.accepted_fd = -1  # AcceptEx done, SO_UPDATE_ACCEPT_CONTEXT not yet
        self.accepted_from = -1
        self.connected = False  # ConnectEx succeeded
        self.reset = False  # the peer's reset was seen (a later EPIPE means WSAECONNRESET)
        self.rio: _RioRq | None = None  # its Registered I/O request queue

    def pending(self) -> list[_Request]:
        return [*self.recvs, *self.sends, *self.accepts, *([self.connect] if self.connect else [])]


class StandinWindowsKernel:
    """kernel32 + ws2_32 for the IOCP backend; see the module docstring. `kernel32` and `ws2_32`
    are namespaces of cffi callbacks with the declared C types."""

    def __init__(
        self,
        *,
        close_abort_status: int = STATUS_LOCAL_DISCONNECT,
        async_rst: bool = True,
        accept_immediate: bool = True,
        connect_refused_delay_s: float = 1.0,
        dirty_internal: bool = True,
    ) -> None:
        self.close_abort_status = close_abort_status
        self.async_rst = async_rst
        self.accept_immediate = accept_immediate
        self.connect_refused_delay_s = connect_refused_delay_s
        self.dirty_internal = dirty_internal
        self.faults: dict[str, int] = {}
        self.lost_sends = 0
        self.errors: list[str] = []
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._ports: dict[int, _Port] = {}
        self._next_port = 0x7000_0000
        self._socks: dict[int, _SockState] = {}
        self._callbacks: list[Any] = []  # keeps every cffi callback alive
        self.calls: dict[str, int] = {}
        decl = _declared_functions()
        ns: dict[str, Any] = {}
        for name, ctype in decl.items():
            impl = getattr(self, "_" + name, None)
            if impl is None:
                continue
            ns[name] = self._callback(ctype, impl, name)
        self.kernel32 = type("kernel32", (), ns)()
        self.ws2_32 = self.kernel32  # one namespace: the names do not overlap
        self._extension_fns = {
            guid: self._callback(fntype, getattr(self, "_" + fntype[len("LPFN_") :]), fntype)
            for guid, fntype in _FN_TYPES.items()
        }
        self._rio = _StandinRio(self)

    # ---- plumbing
    def _callback(self, ctype: str, impl: Callable[..., Any], name: str) -> Any:
        result = ffi.typeof(ctype).result
        error: Any = None  # what the call returns should the stand-in itself raise
        if result.kind == "primitive":
            error = {"int": -1, "uintptr_t": win.INVALID_SOCKET}.get(result.cname, 0)

        def onerror(exc_type: Any, exc: Any, tb: Any) -> None:
            self.errors.append(f"{name}: {exc_type.__name__}: {exc}")

        def counted(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            fault = self.faults.pop(name, None)
            if fault is not None:
                self._set_error(fault)
                return fault if name == "RIONotify" else error  # RIONotify returns its error
            return impl(*args)

        kwargs: dict[str, Any] = {"onerror": onerror}
        if error is not None:
            kwargs["error"] = error
        cb = ffi.callback(ctype, counted, **kwargs)
        self._callbacks.append(cb)
        return cb

    def _misuse(self, what: str) -> None:
        self.errors.append(what)

    def _set_error(self, code: int) -> None:
        self._tls.error = code

    def last_error(self) -> int:
        """GetLastError of the calling thread (replaces `_windows_cffi.last_error`)."""
        return getattr(self._tls, "error", 0)

    def _fail(self, code: int, result: Any = -1) -> Any:
        self._set_error(code)
        return result

    def _state(self, fd: int) -> _SockState | None:
        """The stand-in's record of socket `fd`, dropping (and aborting) a stale one first."""
        identity = _identity(fd)
        st = self._socks.get(fd)
        if st is not None and st.identity != identity:
            self._abort_all(st)
            del self._socks[fd]
            st = None
        if st is None and identity is not None:
            st = self._socks[fd] = _SockState(fd, identity)
        return st

    def _post(self, port: _Port, key: int, ov: Any, nbytes: int) -> None:
        with port.lock:
            port.packets.append((key, ov, nbytes))
        try:
            os.eventfd_write(port.wake, 1)
        except OSError:
            pass

    def _finish(self, st: _SockState, req: _Request, status: int, nbytes: int, sync: bool = False) -> None:
        """The request is over: fill its OVERLAPPED and queue its packet."""
        req.ov.Internal = status | (_DIRTY_HIGH if self.dirty_internal else 0)
        req.ov.InternalHigh = nbytes
        if sync and status == 0 and st.skip_on_success:
            return
        assert st.port is not None
        self._post(st.port, st.key, req.ov, nbytes)

    def _abort_all(self, st: _SockState) -> None:
        """The socket was closed: every pending request ends with `close_abort_status`."""
        for req in st.pending():
            self._finish(st, req, self.close_abort_status, req.done)  # the accept socket stays the caller's
        if st.rio is not None:
            self._rio.abort(st.rio)
        st.recvs.clear()
        st.sends.clear()
        st.accepts.clear()
        st.connect = None
        if st.accepted_fd >= 0:
            os.close(st.accepted_fd)
            st.accepted_fd = -1

    def _associated(self, fd: int, what: str) -> _SockState | None:
        st = self._state(fd)
        if st is None:
            return None
        if st.port is None:
            # Legal on Windows, but then no packet ever reaches a port: the backend would hang.
            self._misuse(f"{what} on socket {fd}, which is not associated with a completion port")
        return st

    # ---- kernel32
    def _CreateIoCompletionPort(self, file: Any, existing: Any, key: int, threads: int) -> Any:
        handle = _addr(file)
        if handle == _addr(ffi.cast("HANDLE", -1)):  # INVALID_HANDLE_VALUE: a new port
            if existing != ffi.NULL:
                return self._fail(win.ERROR_INVALID_PARAMETER, ffi.NULL)
            with self._lock:
                self._next_port += 1
                port = _Port(self._next_port)
                self._ports[port.handle] = port
            return ffi.cast("HANDLE", port.handle)
        port = self._ports.get(_addr(existing))
        if port is None or port.closed:
            return self._fail(ERROR_INVALID_HANDLE, ffi.NULL)
        st = self._state(handle)
        if st is None:
            return self._fail(ERROR_INVALID_HANDLE, ffi.NULL)
        if st.port is not None:  # associated for life
            return self._fail(win.ERROR_INVALID_PARAMETER, ffi.NULL)
        st.port = port
        st.key = key
        return existing

    def _SetFileCompletionNotificationModes(self, handle: Any, flags: int) -> int:
        st = self._state(_addr(handle))
        if st is None:
            return self._fail(ERROR_INVALID_HANDLE, 0)
        st.skip_on_success = bool(flags & win.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS)
        return 1

    def _CloseHandle(self, handle: Any) -> int:
        port = self._ports.pop(_addr(handle), None)
        if port is None:
            return self._fail(ERROR_INVALID_HANDLE, 0)
        port.closed = True
        os.close(port.wake)
        return 1

    def _PostQueuedCompletionStatus(self, handle: Any, nbytes: int, key: int, ov: Any) -> int:
        port = self._ports.get(_addr(handle))
        if port is None or port.closed:
            return self._fail(ERROR_INVALID_HANDLE, 0)
        self._post(port, key, ov, nbytes)
        return 1

    def _CancelIoEx(self, handle: Any, ov: Any) -> int:
        fd = _addr(handle)
        st = self._state(fd)  # a closed socket's requests were aborted just now
        if st is None:
            return self._fail(ERROR_INVALID_HANDLE, 0)
        found = [r for r in st.pending() if ov == ffi.NULL or _addr(r.ov) == _addr(ov)]
        if not found:
            return self._fail(win.ERROR_NOT_FOUND, 0)
        self._drive(st)  # a request the kernel finished meanwhile keeps its real result
        cancelled = 0
        for req in found:
            if req in st.pending():
                self._remove(st, req)
                self._finish(st, req, STATUS_CANCELLED, req.done)
                cancelled += 1
        return 1 if cancelled else self._fail(win.ERROR_NOT_FOUND, 0)

    def _remove(self, st: _SockState, req: _Request) -> None:
        for q in (st.recvs, st.sends, st.accepts):
            if req in q:
                q.remove(req)
        if st.connect is req:
            st.connect = None

    def _GetQueuedCompletionStatusEx(
        self, handle: Any, entries: Any, count: int, removed: Any, ms: int, alertable: int
    ) -> int:
        port = self._ports.get(_addr(handle))
        if port is None or port.closed:
            return self._fail(ERROR_INVALID_HANDLE, 0)
        if count == 0 or removed == ffi.NULL:
            return self._fail(win.ERROR_INVALID_PARAMETER, 0)
        deadline = None if ms == win.INFINITE else time.monotonic() + ms / 1000.0
        while True:
            for st in [s for s in self._socks.values() if s.port is port]:
                self._drive(st)
            self._rio.drive(port)
            with port.lock:
                n = min(count, len(port.packets))
                batch = [port.packets.popleft() for _ in range(n)]
            if batch:
                for i, (key, ov, nbytes) in enumerate(batch):
                    entries[i].lpCompletionKey = key
                    entries[i].lpOverlapped = ov
                    entries[i].Internal = ov.Internal if ov != ffi.NULL else 0
                    entries[i].dwNumberOfBytesTransferred = nbytes
                self._rio.check_overflow()
                removed[0] = n
                return 1
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                removed[0] = 0
                return self._fail(win.WAIT_TIMEOUT, 0)
            self._wait(port, 0.1 if left is None else min(left, 0.1))  # re-checks for closed sockets

    def _wait(self, port: _Port, seconds: float) -> None:
        poller = select.poll()
        poller.register(port.wake, select.POLLIN)
        for st in self._socks.values():
            if st.port is not port:
                continue
            mask = 0
            if st.recvs or st.accepts:
                mask |= select.POLLIN
            if st.sends or (st.connect and not st.connect.delay_until):
                mask |= select.POLLOUT
            if st.connect and st.connect.delay_until:
                seconds = min(seconds, max(0.0, st.connect.delay_until - time.monotonic()))
            if mask:
                poller.register(self._io_fd(st), mask)
        for fd, mask in self._rio.poll_interest(port):
            try:
                poller.modify(fd, mask)
            except OSError:
                poller.register(fd, mask)
        poller.poll(max(0, int(seconds * 1000)))
        try:
            os.eventfd_read(port.wake)
        except OSError:
            pass

    # ---- driving requests (the "kernel" doing the I/O)
    def _drive(self, st: _SockState) -> None:
        if _identity(st.fd) != st.identity:  # closed (maybe reused) behind our back
            self._abort_all(st)
            self._socks.pop(st.fd, None)
            return
        while st.recvs and self._try_recv(st, st.recvs[0]):
            st.recvs.popleft()
        while st.sends and self._try_send(st, st.sends[0]):
            st.sends.popleft()
        while st.accepts and self._try_accept(st, st.accepts[0]):
            st.accepts.popleft()
        if st.connect is not None and self._try_connect(st, st.connect):
            st.connect = None

    def _io_fd(self, st: _SockState) -> int:
        """AcceptEx's socket does its I/O on the accepted connection before the context update."""
        return st.accepted_fd if st.accepted_fd >= 0 else st.fd

    def _try_recv(self, st: _SockState, req: _Request, sync: bool = False) -> bool:
        s = _borrow(self._io_fd(st))
        try:
            n = s.recvmsg_into(req.bufs, 0, socket.MSG_DONTWAIT)[0]
        except BlockingIOError:
            return False
        except OSError as exc:
            self._finish(st, req, self._status_of(exc, st), 0)
            return True
        finally:
            s.detach()
        self._finish(st, req, 0, n, sync)
        return True

    def _try_send(self, st: _SockState, req: _Request, sync: bool = False) -> bool:
        total = sum(len(b) for b in req.bufs)
        while req.done < total:
            try:
                req.done += self._sendmsg(st, _skip(req.bufs, req.done))
            except BlockingIOError:
                return False
            except OSError as exc:
                self._finish(st, req, self._status_of(exc, st), req.done)
                return True
        self._finish(st, req, 0, total, sync)
        return True

    def _sendmsg(self, st: _SockState, views: list[Any]) -> int:
        """One non-blocking sendmsg on the socket, as Windows answers it (`async_rst`)."""
        s = _borrow(self._io_fd(st))
        try:
            return s.sendmsg(views, [], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as exc:
            if exc.errno == errno.ECONNRESET and self.async_rst and not st.reset:
                st.reset = True  # the RST is not processed yet: these bytes go into the void
                self.lost_sends += 1
                return sum(len(memoryview(v)) for v in views)
            raise
        finally:
            s.detach()

    def _try_accept(self, st: _SockState, req: _Request, sync: bool = False) -> bool:
        lst = _borrow(st.fd)
        try:
            while True:
                try:
                    fd = lst._accept()[0]  # type: ignore[attr-defined]  # the raw accept(2)
                except BlockingIOError:
                    return False
                except OSError as exc:
                    if exc.errno == errno.ECONNABORTED:
                        continue
                    if sync:
                        return False  # pended: the request fails through its packet
                    self._finish(st, req, self._status_of(exc, st), 0)
                    return True
                break
        finally:
            lst.detach()
        conn = _borrow(fd)
        try:
            local, remote = conn.getsockname(), conn.getpeername()
        except OSError as exc:  # reset before we looked: try the next connection
            conn.detach()
            os.close(fd)
            if sync:
                return False
            self._finish(st, req, self._status_of(exc, st), 0)
            return True
        conn.detach()
        target = self._state(req.accept_fd)
        assert target is not None
        target.accepted_fd, target.accepted_from = fd, st.fd
        req.accept_fd = -1
        buf, recv_len, local_len, _remote_len = req.out  # type: ignore[misc]
        family = lst.family
        for addr, at in ((local, recv_len), (remote, recv_len + local_len)):
            sa, n = win.sockaddr_from_address(family, addr)
            ffi.memmove(buf + at, sa, n)
        self._finish(st, req, 0, 0, sync)
        return True

    def _try_connect(self, st: _SockState, req: _Request) -> bool:
        if req.delay_until:  # refused: reported once Windows would have given up retrying
            if time.monotonic() < req.delay_until:
                return False
            self._finish(st, req, STATUS_CONNECTION_REFUSED, 0)
            return True
        poller = select.poll()
        poller.register(st.fd, select.POLLOUT)
        if not poller.poll(0):
            return False
        s = _borrow(st.fd)
        try:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        finally:
            s.detach()
        if err == errno.ECONNREFUSED and self.connect_refused_delay_s > 0:
            req.delay_until = time.monotonic() + self.connect_refused_delay_s
            return False
        if err:
            self._finish(st, req, _ERRNO_TO_STATUS.get(err, (STATUS_INVALID_CONNECTION, 0))[0], 0)
        else:
            st.connected = True
            self._finish(st, req, 0, 0)
        return True

    def _status_of(self, exc: OSError, st: _SockState | None = None) -> int:
        if st is not None and exc.errno == errno.ECONNRESET:
            st.reset = True
        if st is not None and exc.errno == errno.EPIPE and st.reset:
            return STATUS_CONNECTION_RESET  # Windows keeps saying "reset" to every later send
        mapped = _ERRNO_TO_STATUS.get(exc.errno or 0)
        if mapped is None:
            self._misuse(f"no NTSTATUS emulated for {exc!r}")
            return STATUS_INVALID_CONNECTION
        return mapped[0]

    def _wsa_of(self, exc: OSError, st: _SockState | None = None) -> int:
        if exc.errno == errno.EINVAL:
            return 10022  # WSAEINVAL
        if st is not None and exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return _STATUS_TO_WSA[self._status_of(exc, st)]
        mapped = _ERRNO_TO_STATUS.get(exc.errno or 0)
        if mapped is None:
            self._misuse(f"no Winsock error emulated for {exc!r}")
            return WSAEFAULT
        return mapped[1]

    def _pend(self, req: _Request) -> None:
        """The request did not finish in the call: it fails with WSA_IO_PENDING (a packet follows)."""
        req.ov.Internal = STATUS_PENDING | (_DIRTY_HIGH if self.dirty_internal else 0)
        self._set_error(win.ERROR_IO_PENDING)

    # ---- ws2_32
    def _wsabufs(self, bufs: Any, count: int) -> list[Any]:
        return [ffi.buffer(bufs[i].buf, bufs[i].len) for i in range(count)]

    def _WSARecv(
        self, s: int, bufs: Any, count: int, received: Any, flags: Any, ov: Any, routine: Any
    ) -> int:
        if ov == ffi.NULL or routine != ffi.NULL:
            self._misuse("WSARecv: only overlapped requests without a completion routine are emulated")
            return self._fail(WSAEFAULT)
        if flags == ffi.NULL:
            return self._fail(WSAEFAULT)  # lpFlags is in/out and required
        st = self._associated(s, "WSARecv")
        if st is None:
            return self._fail(WSAENOTSOCK)
        req = _Request("recv", s, ov)
        req.bufs = self._wsabufs(bufs, count)
        if not st.recvs:
            s_ = _borrow(self._io_fd(st))
            try:
                n = s_.recvmsg_into(req.bufs, 0, socket.MSG_DONTWAIT)[0]
            except BlockingIOError:
                n = -1
            except OSError as exc:
                return self._fail(self._wsa_of(exc, st))  # failed at once: no packet
            finally:
                s_.detach()
            if n >= 0:
                if received != ffi.NULL:
                    received[0] = n
                flags[0] = 0
                self._finish(st, req, 0, n, sync=True)
                return 0
        st.recvs.append(req)
        self._pend(req)
        return -1

    def _WSASend(self, s: int, bufs: Any, count: int, sent: Any, flags: int, ov: Any, routine: Any) -> int:
        if ov == ffi.NULL or routine != ffi.NULL:
            self._misuse("WSASend: only overlapped requests without a completion routine are emulated")
            return self._fail(WSAEFAULT)
        st = self._associated(s, "WSASend")
        if st is None:
            return self._fail(WSAENOTSOCK)
        req = _Request("send", s, ov)
        req.bufs = self._wsabufs(bufs, count)
        total = sum(len(b) for b in req.bufs)
        if not st.sends:
            try:
                req.done = self._sendmsg(st, req.bufs)
            except BlockingIOError:
                pass
            except OSError as exc:
                return self._fail(self._wsa_of(exc, st))
            if req.done == total:
                if sent != ffi.NULL:
                    sent[0] = total
                self._finish(st, req, 0, total, sync=True)
                return 0
        st.sends.append(req)
        self._pend(req)
        return -1

    def _WSAGetOverlappedResult(self, s: int, ov: Any, transferred: Any, wait: int, flags: Any) -> int:
        if _identity(s) is None:
            return self._fail(WSAENOTSOCK, 0)
        status = int(ov.Internal) & 0xFFFFFFFF
        if status == STATUS_PENDING:
            if wait:
                self._misuse("WSAGetOverlappedResult(fWait=TRUE) is not emulated")
            return self._fail(WSA_IO_INCOMPLETE, 0)
        transferred[0] = int(ov.InternalHigh)
        if flags != ffi.NULL:
            flags[0] = 0
        if status == 0:
            return 1
        return self._fail(_STATUS_TO_WSA.get(status, WSAEFAULT), 0)

    def _WSAGetLastError(self) -> int:
        return self.last_error()

    def _WSAIoctl(
        self,
        s: int,
        code: int,
        inbuf: Any,
        inlen: int,
        outbuf: Any,
        outlen: int,
        returned: Any,
        ov: Any,
        routine: Any,
    ) -> int:
        if _identity(s) is None:
            return self._fail(WSAENOTSOCK)
        if code == win.SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER:
            return self._rio.table(inbuf, inlen, outbuf, outlen, returned)
        if code != win.SIO_GET_EXTENSION_FUNCTION_POINTER:
            return self._fail(10045)  # WSAEOPNOTSUPP
        if inlen != ffi.sizeof("GUID"):
            return self._fail(WSAEFAULT)
        raw = bytes(ffi.buffer(inbuf, inlen))
        for guid, fn in self._extension_fns.items():
            if bytes(ffi.buffer(win.new_guid(guid))) == raw:
                fntype = _FN_TYPES[guid]
                if outlen < ffi.sizeof(fntype):
                    return self._fail(WSAEFAULT)
                ffi.cast(f"{fntype} *", outbuf)[0] = fn
                if returned != ffi.NULL:
                    returned[0] = ffi.sizeof(fntype)
                return 0
        return self._fail(10022)  # WSAEINVAL: unknown extension

    def _setsockopt(self, s: int, level: int, optname: int, optval: Any, optlen: int) -> int:
        st = self._state(s)
        if st is None:
            return self._fail(WSAENOTSOCK)
        if level != win.SOL_SOCKET or optname not in (
            win.SO_UPDATE_ACCEPT_CONTEXT,
            win.SO_UPDATE_CONNECT_CONTEXT,
        ):
            self._misuse(f"setsockopt({level:#x}, {optname:#x}) is not emulated: use Python's setsockopt")
            return self._fail(WSAENOPROTOOPT)
        if optname == win.SO_UPDATE_CONNECT_CONTEXT:
            if not st.connected:
                return self._fail(WSAENOTCONN)
            return 0
        if optlen != ffi.sizeof("SOCKET") or optval == ffi.NULL:
            return self._fail(WSAEFAULT)
        listener = int(ffi.cast("SOCKET *", optval)[0])
        if st.accepted_fd < 0 or listener != st.accepted_from:
            return self._fail(10022)  # WSAEINVAL: not a socket AcceptEx filled from that listener
        # Now the accept socket *is* the connection (and getpeername works on it).
        registered_io = self._rio.capable.get(s) == st.identity  # WSA_FLAG_REGISTERED_IO stays
        os.dup2(st.accepted_fd, s)
        os.close(st.accepted_fd)
        st.accepted_fd = -1
        self._socks.pop(s, None)
        new = self._state(s)
        if registered_io and new is not None:
            self._rio.capable[s] = new.identity
        return 0

    def _closesocket(self, s: int) -> int:
        st = self._state(s)
        if st is None:
            return self._fail(WSAENOTSOCK)
        self._abort_all(st)
        del self._socks[s]
        os.close(s)
        return 0

    def _WSASocketW(self, af: int, type_: int, proto: int, info: Any, group: int, flags: int) -> int:
        try:
            sock = socket.socket(af, type_, proto)
        except OSError as exc:
            return self._fail(self._wsa_of(exc), win.INVALID_SOCKET)
        fd = sock.detach()
        if flags & win.WSA_FLAG_REGISTERED_IO:
            self._rio.capable[fd] = _identity(fd)
        return fd

    # ---- extension functions (reached through WSAIoctl)
    def _ACCEPTEX(
        self,
        listen: int,
        accept: int,
        out: Any,
        recv_len: int,
        local_len: int,
        remote_len: int,
        received: Any,
        ov: Any,
    ) -> int:
        st = self._associated(listen, "AcceptEx")
        target = self._state(accept)
        if st is None or target is None:
            return self._fail(WSAENOTSOCK, 0)
        if recv_len:
            self._misuse("AcceptEx with initial data is not emulated")
            return self._fail(10022, 0)
        lst = _borrow(listen)
        try:
            family = lst.family
            addr_max = ffi.sizeof(
                "struct sockaddr_in6" if family == socket.AF_INET6 else "struct sockaddr_in"
            )
            if local_len < addr_max + 16 or remote_len < addr_max + 16:
                return self._fail(WSAEFAULT, 0)  # "16 bytes more than the maximum address length"
            if lst.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
                return self._fail(10022, 0)  # WSAEINVAL: not listening
        finally:
            lst.detach()
        acc = _borrow(accept)
        try:
            bound = acc.getsockname()[1] != 0
        finally:
            acc.detach()
        if bound or target.accepted_fd >= 0:
            return self._fail(10022, 0)  # the accept socket must be fresh (unbound, unconnected)
        req = _Request("accept", listen, ov)
        req.accept_fd = accept
        req.out = (ffi.cast("char *", out), recv_len, local_len, remote_len)
        if self.accept_immediate and not st.accepts and self._try_accept(st, req, sync=True):
            if received != ffi.NULL:
                received[0] = 0
            return 1  # accepted in the call; the packet is queued all the same
        st.accepts.append(req)
        self._pend(req)
        return 0

    def _GETACCEPTEXSOCKADDRS(
        self,
        out: Any,
        recv_len: int,
        local_len: int,
        remote_len: int,
        local: Any,
        local_n: Any,
        remote: Any,
        remote_n: Any,
    ) -> None:
        base = ffi.cast("char *", out)
        for at, ptr, n in ((recv_len, local, local_n), (recv_len + local_len, remote, remote_n)):
            sa = ffi.cast("struct sockaddr *", base + at)
            ptr[0] = sa
            n[0] = ffi.sizeof(
                "struct sockaddr_in6" if sa.sa_family == socket.AF_INET6 else "struct sockaddr_in"
            )

    def _CONNECTEX(
        self, s: int, name: Any, namelen: int, send: Any, send_len: int, sent: Any, ov: Any
    ) -> int:
        st = self._associated(s, "ConnectEx")
        if st is None:
            return self._fail(WSAENOTSOCK, 0)
        if send_len:
            self._misuse("ConnectEx with initial data is not emulated")
            return self._fail(10022, 0)
        sock = _borrow(s)
        try:
            if sock.getsockname()[1] == 0:
                return self._fail(10022, 0)  # WSAEINVAL: ConnectEx needs a bound socket
            address = win.address_from_sockaddr(name, namelen)
            if address is None:
                return self._fail(WSAEFAULT, 0)
            blocking = sock.getblocking()
            sock.setblocking(False)
            try:
                err = sock.connect_ex(address)
            finally:
                sock.setblocking(blocking)
        finally:
            sock.detach()
        if err == errno.EISCONN:
            return self._fail(WSAEISCONN, 0)
        if err == errno.ECONNREFUSED and self.connect_refused_delay_s > 0:
            req = _Request("connect", s, ov)  # Windows never refuses in the call: it retries the SYN
            req.delay_until = time.monotonic() + self.connect_refused_delay_s
            st.connect = req
            self._pend(req)
            return 0
        if err not in (0, errno.EINPROGRESS):
            return self._fail(_ERRNO_TO_STATUS.get(err, (0, WSAEADDRNOTAVAIL))[1], 0)
        req = _Request("connect", s, ov)
        if err == 0:
            st.connected = True
            self._finish(st, req, 0, 0, sync=True)
            return 1
        st.connect = req
        self._pend(req)
        return 0


# ================================================================================ Windows (RIO)
_RIO_FN_TYPES = {  # RIO_EXTENSION_FUNCTION_TABLE field -> function pointer type
    "RIOReceive": "LPFN_RIORECEIVE",
    "RIOSend": "LPFN_RIOSEND",
    "RIOCloseCompletionQueue": "LPFN_RIOCLOSECOMPLETIONQUEUE",
    "RIOCreateCompletionQueue": "LPFN_RIOCREATECOMPLETIONQUEUE",
    "RIOCreateRequestQueue": "LPFN_RIOCREATEREQUESTQUEUE",
    "RIODequeueCompletion": "LPFN_RIODEQUEUECOMPLETION",
    "RIODeregisterBuffer": "LPFN_RIODEREGISTERBUFFER",
    "RIONotify": "LPFN_RIONOTIFY",
    "RIORegisterBuffer": "LPFN_RIOREGISTERBUFFER",
    "RIOResizeCompletionQueue": "LPFN_RIORESIZECOMPLETIONQUEUE",
}


class _RioCq:
    def __init__(self, handle: int, size: int, port: _Port, key: int, ov: Any) -> None:
        self.handle = handle
        self.size = size
        self.port = port
        self.key = key
        self.ov = ov  # the OVERLAPPED the notification packet carries
        self.results: deque[tuple[int, int, int, int]] = deque()  # Status, bytes, socket ctx, request ctx
        self.armed = False
        self.reserved = 0  # request slots of the request queues feeding it


class _RioReq:
    __slots__ = ("buffer_id", "ctx", "done", "length", "mem")

    def __init__(self, mem: Any, length: int, buffer_id: int, ctx: int) -> None:
        self.mem = mem  # char * into registered memory
        self.length = length
        self.buffer_id = buffer_id
        self.ctx = ctx
        self.done = 0


class _RioRq:
    def __init__(self, handle: int, st: _SockState, cq: _RioCq, depth: tuple[int, int], ctx: int) -> None:
        self.handle = handle
        self.st = st
        self.cq = cq
        self.max_recv, self.max_send = depth
        self.ctx = ctx
        self.recvs: deque[_RioReq] = deque()  # started, in order
        self.sends: deque[_RioReq] = deque()
        self.deferred_recvs: list[_RioReq] = []  # RIO_MSG_DEFER: wait for a commit
        self.deferred_sends: list[_RioReq] = []
        self.dead = False


class _StandinRio:
    """The RIO function table of the stand-in Windows kernel (see the module docstring)."""

    def __init__(self, kernel: StandinWindowsKernel) -> None:
        self.k = kernel
        self.capable: dict[int, tuple[int, int] | None] = {}  # fds made with WSA_FLAG_REGISTERED_IO
        self.buffers: dict[int, tuple[int, int]] = {}  # RIO_BUFFERID -> (address, length)
        self.cqs: dict[int, _RioCq] = {}
        self.rqs: dict[int, _RioRq] = {}
        self._ids = iter(range(0x100, 1 << 30))
        self.fns = {
            field: kernel._callback(fntype, getattr(self, "_" + field), field)
            for field, fntype in _RIO_FN_TYPES.items()
        }

    # ---- WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER, WSAID_MULTIPLE_RIO)
    def table(self, inbuf: Any, inlen: int, outbuf: Any, outlen: int, returned: Any) -> int:
        k = self.k
        if inlen != ffi.sizeof("GUID") or bytes(ffi.buffer(inbuf, inlen)) != bytes(
            ffi.buffer(win.new_guid(win.WSAID_MULTIPLE_RIO))
        ):
            return k._fail(10022)
        size = ffi.sizeof("RIO_EXTENSION_FUNCTION_TABLE")
        if outlen < size:
            return k._fail(WSAEFAULT)
        table = ffi.cast("RIO_EXTENSION_FUNCTION_TABLE *", outbuf)
        if table.cbSize != size:
            return k._fail(10022)  # the caller must set cbSize
        for field, fn in self.fns.items():
            setattr(table, field, fn)
        if returned != ffi.NULL:
            returned[0] = size
        return 0

    # ---- buffers
    def _RIORegisterBuffer(self, data: Any, length: int) -> Any:
        if data == ffi.NULL or length == 0:
            self.k._set_error(10022)
            return ffi.cast("RIO_BUFFERID", win.RIO_INVALID_BUFFERID)
        bid = next(self._ids)
        self.buffers[bid] = (_addr(data), length)
        return ffi.cast("RIO_BUFFERID", bid)

    def _RIODeregisterBuffer(self, buffer_id: Any) -> None:
        bid = _addr(buffer_id)
        if bid not in self.buffers:
            self.k._misuse(f"RIODeregisterBuffer({bid:#x}): not registered")
            return
        for rq in self.rqs.values():
            for req in (*rq.recvs, *rq.sends, *rq.deferred_recvs, *rq.deferred_sends):
                if req.buffer_id == bid:
                    self.k._misuse(f"RIODeregisterBuffer({bid:#x}) while a request still uses it")
        del self.buffers[bid]

    # ---- completion queues
    def _RIOCreateCompletionQueue(self, size: int, notify: Any) -> Any:
        k = self.k
        if notify == ffi.NULL or notify.Type != win.RIO_IOCP_COMPLETION:
            k._misuse("RIOCreateCompletionQueue: only RIO_IOCP_COMPLETION notification is emulated")
            k._set_error(10022)
            return ffi.NULL
        port = k._ports.get(_addr(notify.Iocp.IocpHandle))
        if port is None or size == 0 or size > win.RIO_MAX_CQ_SIZE:
            k._set_error(10022)
            return ffi.NULL
        handle = next(self._ids)
        key = _addr(notify.Iocp.CompletionKey)
        self.cqs[handle] = _RioCq(handle, size, port, key, ffi.cast("LPOVERLAPPED", notify.Iocp.Overlapped))
        return ffi.cast("RIO_CQ", handle)

    def _RIOResizeCompletionQueue(self, cq: Any, size: int) -> int:
        q = self.cqs.get(_addr(cq))
        if q is None or size < max(len(q.results), q.reserved) or size > win.RIO_MAX_CQ_SIZE:
            return self.k._fail(10022, 0)
        q.size = size
        return 1

    def _RIOCloseCompletionQueue(self, cq: Any) -> None:
        q = self.cqs.pop(_addr(cq), None)
        if q is None:
            self.k._misuse("RIOCloseCompletionQueue: not a completion queue")
            return
        if any(rq.cq is q and not rq.dead and (rq.recvs or rq.sends) for rq in self.rqs.values()):
            self.k._misuse("RIOCloseCompletionQueue while requests feeding it are outstanding")

    def _RIONotify(self, cq: Any) -> int:
        q = self.cqs.get(_addr(cq))
        if q is None:
            return 10022  # WSAEINVAL
        if q.armed:
            return WSAEALREADY
        q.armed = True
        self._maybe_notify(q)
        return 0

    def _RIODequeueCompletion(self, cq: Any, array: Any, size: int) -> int:
        q = self.cqs.get(_addr(cq))
        if q is None or size == 0:
            self.k._misuse("RIODequeueCompletion on a bad queue or with no room")
            return win.RIO_CORRUPT_CQ
        n = min(size, len(q.results))
        for i in range(n):
            status, nbytes, sctx, rctx = q.results.popleft()
            array[i].Status = status
            array[i].BytesTransferred = nbytes
            array[i].SocketContext = sctx
            array[i].RequestContext = rctx
        return n

    def _maybe_notify(self, q: _RioCq) -> None:
        if q.armed and q.results:
            q.armed = False
            self.k._post(q.port, q.key, q.ov, 0)

    def check_overflow(self) -> None:
        for q in self.cqs.values():
            if len(q.results) > q.size:
                self.k._misuse(f"RIO completion queue overflow ({len(q.results)} > {q.size})")

    # ---- request queues
    def _RIOCreateRequestQueue(
        self, s: int, max_recv: int, recv_bufs: int, max_send: int, send_bufs: int, rcq: Any, scq: Any, ctx: Any
    ) -> Any:
        k = self.k
        st = k._state(s)
        if st is None:
            k._set_error(WSAENOTSOCK)
            return ffi.NULL
        if self.capable.get(s) != st.identity or st.rio is not None:
            k._set_error(10022)  # not a Registered-I/O socket, or it has its queue already
            return ffi.NULL
        q = self.cqs.get(_addr(rcq))
        if q is None or _addr(rcq) != _addr(scq):
            k._misuse("RIOCreateRequestQueue: the stand-in emulates one completion queue for both directions")
            k._set_error(10022)
            return ffi.NULL
        if recv_bufs != 1 or send_bufs != 1 or (max_recv == 0 and max_send == 0):
            k._set_error(10022)
            return ffi.NULL
        if q.reserved + max_recv + max_send > q.size:
            k._set_error(WSAENOBUFS)  # the completion queue has no room for this queue's requests
            return ffi.NULL
        q.reserved += max_recv + max_send
        handle = next(self._ids)
        rq = self.rqs[handle] = _RioRq(handle, st, q, (max_recv, max_send), _addr(ctx))
        st.rio = rq
        return ffi.cast("RIO_RQ", handle)

    def _RIOSend(self, rq: Any, buf: Any, count: int, flags: int, ctx: Any) -> int:
        return self._request(rq, buf, count, flags, ctx, send=True)

    def _RIOReceive(self, rq: Any, buf: Any, count: int, flags: int, ctx: Any) -> int:
        return self._request(rq, buf, count, flags, ctx, send=False)

    def _request(self, handle: Any, buf: Any, count: int, flags: int, ctx: Any, send: bool) -> int:
        k = self.k
        rq = self.rqs.get(_addr(handle))
        if rq is None or rq.dead:
            return k._fail(WSAENOTSOCK, 0)
        started = rq.sends if send else rq.recvs
        deferred = rq.deferred_sends if send else rq.deferred_recvs
        if flags & win.RIO_MSG_COMMIT_ONLY:
            if count != 0 or buf != ffi.NULL:
                return k._fail(10022, 0)
            started.extend(deferred)
            deferred.clear()
            return 1
        if count != 1:
            return k._fail(10022, 0)
        bid, offset, length = _addr(buf.BufferId), int(buf.Offset), int(buf.Length)
        region = self.buffers.get(bid)
        if region is None or offset + length > region[1] or length == 0:
            return k._fail(10022, 0)  # WSAEINVAL: not inside a registered buffer
        if len(started) + len(deferred) >= (rq.max_send if send else rq.max_recv):
            return k._fail(WSAENOBUFS, 0)  # more outstanding than the queue holds
        req = _RioReq(ffi.cast("char *", region[0]) + offset, length, bid, _addr(ctx))
        deferred.append(req)
        if not flags & win.RIO_MSG_DEFER:
            started.extend(deferred)
            deferred.clear()
        return 1

    # ---- the "kernel" moving data
    def drive(self, port: _Port) -> None:
        for rq in list(self.rqs.values()):
            if rq.dead or rq.cq.port is not port:
                continue
            st = rq.st
            if _identity(st.fd) != st.identity:
                self.abort(rq)
                continue
            while rq.recvs and self._try_recv(rq, rq.recvs[0]):
                rq.recvs.popleft()
            while rq.sends and self._try_send(rq, rq.sends[0]):
                rq.sends.popleft()
        for q in self.cqs.values():
            if q.port is port:
                self._maybe_notify(q)

    def poll_interest(self, port: _Port) -> list[tuple[int, int]]:
        out = []
        for rq in self.rqs.values():
            if rq.dead or rq.cq.port is not port:
                continue
            mask = (select.POLLIN if rq.recvs else 0) | (select.POLLOUT if rq.sends else 0)
            if mask:
                out.append((self.k._io_fd(rq.st), mask))
        return out

    def _result(self, rq: _RioRq, req: _RioReq, status: int, nbytes: int) -> None:
        rq.cq.results.append((status, nbytes, rq.ctx, req.ctx))

    def _try_recv(self, rq: _RioRq, req: _RioReq) -> bool:
        s = _borrow(self.k._io_fd(rq.st))
        try:
            n = s.recv_into(ffi.buffer(req.mem, req.length), req.length, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._result(rq, req, _STATUS_TO_WSA.get(self.k._status_of(exc, rq.st), WSAEFAULT), 0)
            return True
        finally:
            s.detach()
        self._result(rq, req, 0, n)
        return True

    def _try_send(self, rq: _RioRq, req: _RioReq) -> bool:
        while req.done < req.length:
            try:
                req.done += self.k._sendmsg(rq.st, [ffi.buffer(req.mem + req.done, req.length - req.done)])
            except BlockingIOError:
                return False
            except OSError as exc:
                self._result(rq, req, _STATUS_TO_WSA.get(self.k._status_of(exc, rq.st), WSAEFAULT), req.done)
                return True
        self._result(rq, req, 0, req.length)
        return True

    def abort(self, rq: _RioRq) -> None:
        """The socket was closed: its request queue is gone; outstanding requests end aborted."""
        if rq.dead:
            return
        rq.dead = True
        for req in (*rq.recvs, *rq.sends):
            self._result(rq, req, WSAECONNABORTED, 0)
        rq.recvs.clear()
        rq.sends.clear()
        rq.deferred_recvs.clear()
        rq.deferred_sends.clear()
        rq.cq.reserved -= rq.max_recv + rq.max_send
        self.rqs.pop(rq.handle, None)
        self._maybe_notify(rq.cq)


def _skip(bufs: list[Any], n: int) -> list[memoryview]:
    """The buffers after the first `n` bytes."""
    out = []
    for b in bufs:
        mv = memoryview(b)
        if n >= len(mv):
            n -= len(mv)
            continue
        out.append(mv[n:])
        n = 0
    return out


def install_windows_kernel(monkeypatch: Any, **switches: Any) -> StandinWindowsKernel:
    """Make `_windows_cffi.load()` return the stand-in libraries and GetLastError read its value;
    `switches` go to StandinWindowsKernel (their defaults model Windows)."""
    kernel = StandinWindowsKernel(**switches)
    monkeypatch.setattr(win, "_libs", win.WinLibs(kernel.kernel32, kernel.ws2_32))
    monkeypatch.setattr(win, "last_error", kernel.last_error)
    return kernel
