"""The platform backends (kqueue, IOCP, RIO) as far as each machine can check them.

Everywhere: every backend module imports, unavailable backends say why, the factory walks the
right chain for a (patched) platform, the Windows structures compile in cffi ABI mode with the
documented x64 layouts, the WSA error table. On Linux, kqueue's kernel is stood in for by fakes,
only in tests named *_mocked_macos_kernel*. Tests that need the real kernel run on the macOS and
Windows CI runners (.github/workflows/ci.yml), where the contract suite also covers these backends.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any

import cffi
import pytest

from framework.io import BackendUnavailable, ErrorCode, Status, create_provider, factory
from framework.io.backends import _windows_cffi as win
from framework.io.backends import kqueue as kqueue_module
from framework.io.backends.iocp import IocpProvider, map_windows_error
from framework.io.backends.kqueue import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_ERROR,
    KQ_FILTER_READ,
    KQ_FILTER_WRITE,
    KqueueProvider,
)
from framework.io.backends.rio import RioProvider
from framework.io.errors import map_wsa_error
from framework.io.provider import AsyncIOProvider, CompletionResult
from tests.support.provider import WAIT_S, Collector, pump
from tests.support.standin_kernels import StandinKevent as FakeKevent
from tests.support.standin_kernels import install_macos_kernel, install_windows_kernel

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks Linux's answers")
macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="needs the real macOS kqueue")
windows_only = pytest.mark.skipif(sys.platform != "win32", reason="needs the real Windows kernel")
x64_only = pytest.mark.skipif(
    win.ffi.sizeof("void *") != 8, reason="the documented sizes are those of 64-bit Windows"
)


# ---------------------------------------------------------------------------------- every OS
@pytest.mark.parametrize("name", factory.backend_names())
def test_every_backend_module_imports_on_any_os(name):
    cls = factory.provider_class(name)  # imports the module; must not touch OS-specific APIs
    assert issubclass(cls, AsyncIOProvider)
    assert cls.name == name


@linux_only
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("kqueue", ("select.kqueue", "linux", "macOS/BSD")),
        ("iocp", ("Windows", "linux")),
        ("rio", ("Windows 8+", "linux")),
    ],
)
def test_platform_backend_on_linux_is_unavailable_with_a_clear_reason(name, words):
    with pytest.raises(BackendUnavailable) as info:
        create_provider(name, fallback=False)
    assert info.value.backend == name
    for word in words:
        assert word in info.value.reason, info.value.reason


@linux_only
def test_patched_windows_platform_walks_rio_then_iocp_and_explains_each(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(BackendUnavailable) as info:
        create_provider("auto")
    reason = info.value.reason
    # Past the platform check, both try to open the DLLs, which a Linux machine does not have.
    assert reason.index("rio: ") < reason.index("iocp: ")
    assert reason.count("cannot load kernel32/ws2_32") == 2, reason


@linux_only
def test_patched_macos_platform_walks_kqueue_only(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert factory.fallback_chain() == ["kqueue"]
    with pytest.raises(BackendUnavailable) as info:
        create_provider("auto")
    assert info.value.reason.startswith("kqueue: select.kqueue is not available on darwin")


def test_windows_declarations_compile_in_abi_mode():
    ffi = cffi.FFI()
    ffi.cdef(win.CDEF)  # parsing only (kernel32/ws2_32 functions included): no compiler, no DLL
    for typedef in (
        "LPFN_ACCEPTEX",
        "LPFN_CONNECTEX",
        "LPFN_GETACCEPTEXSOCKADDRS",
        "LPFN_RIOSEND",
        "LPFN_RIODEQUEUECOMPLETION",
    ):
        assert ffi.typeof(typedef).kind == "function"
    assert ffi.typeof("LPFN_RIODEQUEUECOMPLETION").result is ffi.typeof("ULONG")


@x64_only
@pytest.mark.parametrize(
    ("ctype", "size"),
    [
        ("OVERLAPPED", 32),
        ("OVERLAPPED_ENTRY", 32),
        ("WSABUF", 16),
        ("GUID", 16),
        ("RIO_BUF", 16),
        ("RIORESULT", 24),
        ("struct sockaddr_in", 16),
        ("struct sockaddr_in6", 28),
        ("RIO_NOTIFICATION_COMPLETION", 32),
        ("RIO_EXTENSION_FUNCTION_TABLE", 8 + 13 * 8),
        ("DWORD", 4),  # LLP64: 32-bit even where the host's long is 64-bit
        ("ULONG", 4),
        ("SOCKET", 8),
    ],
)
def test_windows_structures_have_the_documented_x64_sizes(ctype, size):
    assert win.ffi.sizeof(ctype) == size


@x64_only
@pytest.mark.parametrize(
    ("ctype", "field", "offset"),
    [
        ("OVERLAPPED", "hEvent", 24),
        ("OVERLAPPED_ENTRY", "lpOverlapped", 8),
        ("OVERLAPPED_ENTRY", "dwNumberOfBytesTransferred", 24),
        ("WSABUF", "buf", 8),
        ("RIO_BUF", "Length", 12),
        ("RIORESULT", "SocketContext", 8),
        ("RIORESULT", "RequestContext", 16),
        ("RIO_NOTIFICATION_COMPLETION", "Iocp", 8),
        ("RIO_EXTENSION_FUNCTION_TABLE", "RIOReceive", 8),
        ("RIO_EXTENSION_FUNCTION_TABLE", "RIOResizeRequestQueue", 104),
        ("struct sockaddr_in6", "sin6_addr", 8),
        ("struct sockaddr_in6", "sin6_scope_id", 24),
        ("FW_OVERLAPPED", "op_id", 32),  # our id rides right behind the OVERLAPPED
    ],
)
def test_windows_structure_fields_sit_at_the_documented_offsets(ctype, field, offset):
    assert win.ffi.offsetof(ctype, field) == offset


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (win.WSAID_ACCEPTEX, "b5367df1-cbac-11cf-95ca-00805f48a192"),
        (win.WSAID_GETACCEPTEXSOCKADDRS, "b5367df2-cbac-11cf-95ca-00805f48a192"),
        (win.WSAID_CONNECTEX, "25a207b9-ddf3-4660-8ee9-76e58c74063e"),
        (win.WSAID_MULTIPLE_RIO, "8509e081-96dd-4005-b165-9e2ee8c79e3f"),
    ],
)
def test_extension_guids_have_the_windows_memory_layout(spec, text):
    guid = win.new_guid(spec)
    assert bytes(win.ffi.buffer(guid)) == uuid.UUID(text).bytes_le


def test_ioctl_codes_and_flags_are_the_winsock_values():
    ioc_inout, ioc_ws2 = 0x80000000 | 0x40000000, 0x08000000
    ioctls = (win.SIO_GET_EXTENSION_FUNCTION_POINTER, win.SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER)
    assert ioctls == (ioc_inout | ioc_ws2 | 6, ioc_inout | ioc_ws2 | 36)
    assert (win.SO_UPDATE_ACCEPT_CONTEXT, win.SO_UPDATE_CONNECT_CONTEXT) == (0x700B, 0x7010)
    assert (win.WSA_FLAG_OVERLAPPED, win.WSA_FLAG_REGISTERED_IO) == (0x01, 0x100)
    assert (win.RIO_MSG_DEFER, win.RIO_MSG_COMMIT_ONLY, win.RIO_CORRUPT_CQ) == (0x2, 0x8, 0xFFFFFFFF)


def test_sockaddr_conversion_round_trips():
    sa, n = win.sockaddr_from_address(socket.AF_INET, ("127.0.0.1", 8080))
    assert n == 16
    raw = bytes(win.ffi.buffer(sa))
    assert raw[2:4] == b"\x1f\x90" and raw[4:8] == b"\x7f\x00\x00\x01" and raw[8:] == bytes(8)
    assert win.address_from_sockaddr(win.ffi.cast("struct sockaddr *", sa), n) == ("127.0.0.1", 8080)
    sa6, n6 = win.sockaddr_from_address(socket.AF_INET6, ("::1", 443, 7, 3))
    assert n6 == 28
    assert win.address_from_sockaddr(win.ffi.cast("struct sockaddr *", sa6), n6) == ("::1", 443, 7, 3)
    assert win.address_from_sockaddr(win.ffi.NULL, 16) is None


@pytest.mark.skipif(sys.platform == "win32", reason="off Windows only")
def test_windows_libraries_are_never_opened_off_windows():
    with pytest.raises(OSError, match="only on Windows"):
        win.load()


@pytest.mark.parametrize(
    ("wsa", "expected"),
    [
        (10061, ErrorCode.CONNECTION_REFUSED),  # WSAECONNREFUSED
        (10054, ErrorCode.CONNECTION_RESET),  # WSAECONNRESET
        (10060, ErrorCode.CONNECTION_TIMEOUT),  # WSAETIMEDOUT
        (10055, ErrorCode.BUFFER_TOO_SMALL),  # WSAENOBUFS
        (10022, ErrorCode.SOCKET_NOT_REGISTERED),  # WSAEINVAL
    ],
)
def test_the_seed_wsa_table(wsa, expected):
    assert map_wsa_error(wsa) == expected
    assert map_windows_error(wsa) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (64, ErrorCode.CONNECTION_RESET),  # ERROR_NETNAME_DELETED: a reset seen through GetLastError
        (1225, ErrorCode.CONNECTION_REFUSED),  # ERROR_CONNECTION_REFUSED
        (121, ErrorCode.CONNECTION_TIMEOUT),  # ERROR_SEM_TIMEOUT
        (10053, 10053),  # WSAECONNABORTED: not mapped (docs/PROVIDER.md, "Error codes"), passes through
        (995, 995),  # ERROR_OPERATION_ABORTED
    ],
)
def test_win32_codes_reach_the_same_error_codes(code, expected):
    assert map_windows_error(code) == expected


# ---------------------------------------------------------------------------------- kqueue on Linux
class RecordingKqueue:
    """Records every control() call; returns scripted event lists (else sleeps out the timeout)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, int, int]] | None, int, float | None]] = []
        self.script: deque[Any] = deque()  # event lists, or an exception to raise
        self.closed = False

    def control(self, changes: Any, max_events: int, timeout: float | None = None) -> list[FakeKevent]:
        keys = [(c.ident, c.filter, c.flags) for c in changes] if changes is not None else None
        self.calls.append((keys, max_events, timeout))
        if max_events == 0:
            return []
        if self.script:
            item = self.script.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        if timeout:
            time.sleep(timeout)
        return []

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recording_kernel(monkeypatch):
    kq = RecordingKqueue()
    monkeypatch.setattr(kqueue_module, "_new_kqueue", lambda: kq)
    monkeypatch.setattr(kqueue_module, "_kevent", FakeKevent)
    return kq


@pytest.fixture
def epoll_kernel(monkeypatch):
    if not hasattr(select, "epoll"):
        pytest.skip("the stand-in kernel is built on Linux epoll")
    install_macos_kernel(monkeypatch)  # the contract suite's stand-in (tests/support/standin_kernels.py)


@pytest.fixture
def kq_provider():
    p = KqueueProvider()
    assert p.initialize(16, 32), p.last_error
    yield p
    p.shutdown()


def _pair(sockets: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    sockets.extend((a, b))
    return a, b


ADD_CLEAR = KQ_EV_ADD | KQ_EV_CLEAR


def test_registrations_ride_on_the_next_wait_in_one_control_call_mocked_macos_kernel(
    recording_kernel, kq_provider, sockets
):
    kq, p = recording_kernel, kq_provider
    a, b = _pair(sockets)
    c, d = _pair(sockets)
    for s in (a, b, c):
        assert p.register_socket(s)
    assert kq.calls == []  # registering cost no system call
    results: list[CompletionResult] = []
    assert p.process_completions(0, 8, results) == 0
    [(changes, max_events, timeout)] = kq.calls
    assert (max_events, timeout) == (32, 0)
    wake = changes[0]
    assert wake[1:] == (KQ_FILTER_READ, ADD_CLEAR) and wake[0] not in {a.fileno(), b.fileno(), c.fileno()}
    assert changes[1:] == [
        (s.fileno(), f, ADD_CLEAR) for s in (a, b, c) for f in (KQ_FILTER_READ, KQ_FILTER_WRITE)
    ]
    p.process_completions(0, 8, results)
    assert kq.calls[-1][0] is None  # nothing new: a plain wait
    assert p.unregister_socket(c)
    assert p.register_socket(d) and p.unregister_socket(d)  # never reached the kernel
    p.process_completions(0, 8, results)
    assert kq.calls[-1][0] == [
        (c.fileno(), KQ_FILTER_READ, KQ_EV_DELETE),
        (c.fileno(), KQ_FILTER_WRITE, KQ_EV_DELETE),
    ]
    stats = p.get_statistics().backend_specific
    assert stats["control_calls"] == len(kq.calls) and stats["changes_submitted"] == 9
    p.shutdown()
    assert kq.closed


def test_events_drive_operations_and_blocking_waits_pass_none_mocked_macos_kernel(
    recording_kernel, kq_provider, sockets, collector
):
    kq, p = recording_kernel, kq_provider
    a, b = _pair(sockets)
    assert p.register_socket(a)
    buf = bytearray(16)
    op_id = p.recv_async(a, buf, collector)  # nothing there yet: waits for an event
    assert len(collector) == 0
    b.sendall(b"kevent")
    kq.script.append([FakeKevent(a.fileno(), KQ_FILTER_READ, 0, data=6)])
    results: list[CompletionResult] = []
    assert p.process_completions(-1, 8, results) == 1
    assert kq.calls[-1][2] is None  # -1 blocks: no timeout
    assert results[0].operation_id == op_id and bytes(buf[: results[0].bytes_transferred]) == b"kevent"
    # A timeout reaches the kernel in seconds.
    assert p.process_completions(120, 8, results) == 0
    assert all(0 <= call[2] <= 0.12 for call in kq.calls[1:])


def test_failed_changes_are_skipped_or_applied_one_by_one_mocked_macos_kernel(
    recording_kernel, kq_provider, sockets, collector
):
    kq, p = recording_kernel, kq_provider
    a, b = _pair(sockets)
    assert p.register_socket(a)
    p.recv_async(a, bytearray(4), collector)  # waits for an event
    b.sendall(b"data")  # readable now, but the kernel stand-in reports only an error
    # A change error comes back as an EV_ERROR event: it is no readiness and is skipped.
    kq.script.append([FakeKevent(a.fileno(), KQ_FILTER_READ, KQ_EV_ERROR, data=errno.EBADF)])
    results: list[CompletionResult] = []
    assert p.process_completions(0, 8, results) == 0
    assert p.get_statistics().pending_operations == 1
    # Too many failed changes to report: the call fails, changes go one by one, then the wait.
    c, _d = _pair(sockets)
    assert p.register_socket(c)
    kq.script.append(OSError(errno.EBADF, "bad change"))
    calls_before = len(kq.calls)
    assert p.process_completions(0, 8, results) == 0
    retry = kq.calls[calls_before:]
    assert retry[0][0] == [
        (c.fileno(), KQ_FILTER_READ, ADD_CLEAR),
        (c.fileno(), KQ_FILTER_WRITE, ADD_CLEAR),
    ]
    assert [(call[0], call[1]) for call in retry[1:3]] == [
        ([(c.fileno(), KQ_FILTER_READ, ADD_CLEAR)], 0),
        ([(c.fileno(), KQ_FILTER_WRITE, ADD_CLEAR)], 0),
    ]
    assert retry[3][0] is None and retry[3][1] == 32


def test_a_pending_delete_survives_a_watch_and_unwatch_before_the_wait_mocked_macos_kernel(
    recording_kernel, kq_provider, sockets
):
    kq, p = recording_kernel, kq_provider
    a, _b = _pair(sockets)
    assert p.register_socket(a)
    results: list[CompletionResult] = []
    p.process_completions(0, 8, results)  # a's filters are in the kernel now
    assert p.unregister_socket(a)  # EV_DELETE queued for the next wait ...
    assert p.register_socket(a) and p.unregister_socket(a)  # ... and must survive this
    p.process_completions(0, 8, results)
    deletes = [c for c in kq.calls[-1][0] or [] if c[0] == a.fileno() and c[2] == KQ_EV_DELETE]
    assert deletes == [(a.fileno(), KQ_FILTER_READ, KQ_EV_DELETE), (a.fileno(), KQ_FILTER_WRITE, KQ_EV_DELETE)]


def test_a_failed_change_does_not_delay_ready_events_by_a_call_mocked_macos_kernel(
    epoll_kernel, kq_provider, sockets, collector
):
    # The stand-in follows kevent(2): when a change fails, the call returns the error entries
    # only and collects no events, so the backend must wait again in the same turn.
    p = kq_provider
    a, b = _pair(sockets)
    c, _d = _pair(sockets)
    assert p.register_socket(a) and p.register_socket(c)
    results: list[CompletionResult] = []
    p.process_completions(0, 8, results)  # both registered in the (stand-in) kernel
    op_id = p.recv_async(a, bytearray(16), collector)  # nothing there yet: waits for an edge
    c.close()
    assert p.unregister_socket(c)  # its EV_DELETE fails (closed: EBADF) with the next wait
    b.sendall(b"ready")
    # One non-blocking turn must see it (a blocking one would just wait again and hide the delay).
    assert p.process_completions(0, 8, results) == 1
    assert results[0].operation_id == op_id and results[0].bytes_transferred == 5


def _accept_and_connect(
    p: AsyncIOProvider, lst: socket.socket, client: socket.socket, sockets: list[socket.socket]
) -> tuple[socket.socket, Any]:
    """Register `lst` and `client`, post an accept and a connect, and return the accepted
    (socket, address) once both completed; the accepted socket is closed after the test."""
    assert p.register_socket(lst)
    assert p.register_socket(client)
    done = Collector()
    accept_id = p.accept_async(lst, done)
    connect_id = p.connect_async(client, lst.getsockname(), done, timeout_ms=int(WAIT_S * 1000))
    pump(p, lambda: len(done) == 2)
    assert done.by_id(connect_id).status == Status.SUCCESS
    conn, addr = done.by_id(accept_id).accepted
    sockets.append(conn)
    return conn, addr


def test_loopback_traffic_on_an_edge_triggered_stand_in_mocked_macos_kernel(
    epoll_kernel, kq_provider, make_listener, sockets
):
    p = kq_provider
    lst = make_listener()
    client = socket.socket()
    sockets.append(client)
    conn, addr = _accept_and_connect(p, lst, client, sockets)
    assert addr == client.getsockname() and conn.getblocking() is False
    assert p.register_socket(conn)
    # 1 MiB one way: partial writes and edges must all be honoured.
    payload = bytes(range(256)) * 4096
    got = bytearray()
    buf = bytearray(65536)
    eof = []

    def on_recv(result: CompletionResult, _ctx: Any) -> None:
        assert result.status == Status.SUCCESS, result
        if result.bytes_transferred == 0:
            eof.append(True)
            return
        got.extend(buf[: result.bytes_transferred])
        p.recv_async(conn, buf, on_recv)

    p.recv_async(conn, buf, on_recv)
    sent = Collector()
    p.send_async(client, payload, sent)
    pump(p, lambda: len(sent) == 1 and len(got) == len(payload))
    assert sent.results[0].bytes_transferred == len(payload) and bytes(got) == payload
    client.close()  # the peer's FIN reaches the waiting recv
    assert p.unregister_socket(client)
    pump(p, lambda: bool(eof))


def test_post_from_another_thread_wakes_the_wait_mocked_macos_kernel(epoll_kernel, kq_provider):
    p = kq_provider
    seen: list[Any] = []
    timer = threading.Timer(0.1, lambda: p.post(lambda r, c: seen.append(c), "woken"))
    timer.start()
    try:
        results: list[CompletionResult] = []
        start = time.monotonic()
        n = p.process_completions(int(WAIT_S * 1000), 8, results)
        assert n == 1 and seen == ["woken"]
        assert time.monotonic() - start < WAIT_S  # woken, not timed out
    finally:
        timer.cancel()


# ---------------------------------------------------------------------------------- real kernels
@macos_only
def test_kqueue_is_the_macos_choice():
    KqueueProvider.probe()
    p = create_provider("auto")
    assert isinstance(p, KqueueProvider)
    assert p.initialize(8, 8)
    try:
        stats = p.get_statistics()
        assert stats.backend == "kqueue"
        assert {"kqueue_waits", "control_calls", "changes_submitted", "poll_calls"} <= set(
            stats.backend_specific
        )
    finally:
        p.shutdown()


def _real_or_standin_windows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real Windows kernel on Windows; elsewhere the stand-in (tests/support/standin_kernels.py), and
    then the test id says `mocked_windows_kernel`. Returns the stand-in (None on Windows)."""
    if request.param == "windows":
        if sys.platform != "win32":
            pytest.skip("needs the real Windows kernel")
        return None
    if not hasattr(os, "eventfd"):
        pytest.skip("the stand-in Windows kernel is built on Linux sockets and eventfd")
    return install_windows_kernel(monkeypatch)


@pytest.fixture(params=["windows", "mocked_windows_kernel"])
def windows_kernel(request, monkeypatch):
    kernel = _real_or_standin_windows(request, monkeypatch)
    yield kernel
    if kernel is not None:
        assert kernel.errors == [], f"the backend misused the (stand-in) Windows API: {kernel.errors}"


@pytest.fixture
def rio(windows_kernel):
    p = RioProvider()
    assert p.initialize(64, 64), p.last_error
    yield p
    p.shutdown()


def _rio_pair(p: RioProvider, sockets: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    """A connected pair of Registered-I/O sockets: ConnectEx on one, AcceptEx into the other."""
    lst = socket.socket()
    sockets.append(lst)
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    client = p.create_socket()
    sockets.append(client)
    server, _addr = _accept_and_connect(p, lst, client, sockets)
    assert p.register_socket(server)
    return client, server


def _read(p: AsyncIOProvider, sock: socket.socket, want: int) -> bytes:
    got = bytearray()
    buf = bytearray(65536)

    def on_recv(result: CompletionResult, _ctx: Any) -> None:
        assert result.status == Status.SUCCESS and result.bytes_transferred > 0, result
        got.extend(buf[: result.bytes_transferred])
        if len(got) < want:
            p.recv_async(sock, buf, on_recv)

    p.recv_async(sock, buf, on_recv)
    pump(p, lambda: len(got) >= want)
    return bytes(got)


@windows_only
def test_windows_probes_and_auto_choice():
    IocpProvider.probe()
    p = create_provider("auto")
    assert p.name in ("rio", "iocp")
    p.shutdown()


def test_rio_sockets_move_data_through_registered_io(rio, sockets):
    client, server = _rio_pair(rio, sockets)
    payload = os.urandom(300_000)  # many staging slots' worth, in order
    sent = Collector()
    rio.send_async(client, payload, sent)
    assert _read(rio, server, len(payload)) == payload
    pump(rio, lambda: len(sent) == 1)
    assert sent.results[0].bytes_transferred == len(payload)
    stats = rio.get_statistics().backend_specific
    assert stats["rio_sockets"] >= 2 and stats["rio_commits"] > 0 and stats["iocp_path_sockets"] == 1


def test_rio_registered_buffers_go_direct(rio, sockets, collector):
    client, server = _rio_pair(rio, sockets)
    out_buf, in_buf = bytearray(8192), bytearray(8192)
    out_id, in_id = rio.register_buffer(out_buf), rio.register_buffer(in_buf)
    assert out_id >= 0 and in_id >= 0
    out_buf[100:600] = b"r" * 500
    recv_id = rio.recv_async_registered(server, in_id, 1000, 4000, collector)
    send_id = rio.send_async_registered(client, out_id, 100, 500, collector)
    pump(rio, lambda: len(collector) == 2)
    got = collector.by_id(recv_id).bytes_transferred
    assert collector.by_id(send_id).bytes_transferred == 500 and 0 < got <= 500
    assert bytes(in_buf[1000 : 1000 + got]) == b"r" * got and in_buf[:1000] == bytes(1000)
    assert rio.unregister_buffer(out_id) and rio.unregister_buffer(in_id)


def test_rio_cancelled_receive_hands_its_bytes_to_the_next(rio, sockets, collector):
    client, server = _rio_pair(rio, sockets)
    op_id = rio.recv_async(server, bytearray(64), collector)
    assert rio.cancel(op_id)
    pump(rio, lambda: len(collector) == 1)
    assert collector.results[0].status == Status.CANCELLED
    rio.send_async(client, b"not lost")
    assert _read(rio, server, 8) == b"not lost"


def test_rio_receives_after_timeouts_keep_stream_order(rio, sockets, collector):
    # Two receives time out while their RIO requests stay in the kernel; what arrives next must
    # reach the next receives in order, with nothing lost, duplicated or stuck behind them.
    client, server = _rio_pair(rio, sockets)
    for _ in range(2):
        rio.recv_async(server, bytearray(4), collector, timeout_ms=50)
    pump(rio, lambda: len(collector) == 2)
    assert [r.status for r in collector.results] == [Status.TIMEOUT, Status.TIMEOUT]
    rio.send_async(client, b"abcdef")  # fewer bytes than both dead receives could take
    assert _read(rio, server, 6) == b"abcdef"


def test_rio_cancelled_receive_never_writes_into_the_callers_registered_buffer(rio, sockets, collector):
    client, server = _rio_pair(rio, sockets)
    in_buf = bytearray(4096)
    in_id = rio.register_buffer(in_buf)
    assert in_id >= 0
    op_id = rio.recv_async_registered(server, in_id, 0, 4096, collector)
    assert rio.cancel(op_id)
    pump(rio, lambda: len(collector) == 1)
    assert collector.results[0].status == Status.CANCELLED  # the caller owns in_buf again
    rio.send_async(client, b"late bytes")
    assert _read(rio, server, 10) == b"late bytes"  # handed to the next receive ...
    assert in_buf == bytes(4096)  # ... never written into memory the caller got back
    assert rio.unregister_buffer(in_id)


def test_rio_failed_send_fails_its_operation_and_the_loop_goes_on(rio, sockets, collector):
    client, server = _rio_pair(rio, sockets)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert rio.unregister_socket(server)
    server.close()  # RST
    op_id = None
    for attempt in range(1, 21):  # the first send may still succeed: the RST is asynchronous
        # far more than SEND_DEPTH staging slots: the operation is still in the send backlog
        op_id = rio.send_async(client, bytes(300_000), collector)
        pump(rio, lambda n=attempt: len(collector) == n)
        if collector.by_id(op_id).status != Status.SUCCESS:
            break
    r = collector.by_id(op_id)
    assert (r.status, r.error_code) == (Status.ERROR, ErrorCode.CONNECTION_RESET)
    # The other pieces of that operation complete in the background and change nothing.
    pump(rio, lambda: rio.get_statistics().backend_specific["rio_requests_in_flight"] == 0)
    assert rio.get_statistics().pending_operations == 0
    # RIO completions still reach the port: another pair moves data.
    a, b = _rio_pair(rio, sockets)
    rio.send_async(a, b"still alive")
    assert _read(rio, b, 11) == b"still alive"


def test_rio_request_queues_do_not_outlive_a_reinitialize(rio, sockets):
    client, server = _rio_pair(rio, sockets)
    rio.send_async(client, b"x")
    assert _read(rio, server, 1) == b"x"
    assert rio.get_statistics().backend_specific["rio_sockets"] == 2
    rio.shutdown()
    assert rio.initialize(64, 64), rio.last_error
    assert rio.get_statistics().backend_specific["rio_sockets"] == 0
    # The old sockets are tied to the old completion port for life: refused, with the reason.
    assert rio.register_socket(server) is False
    assert "another completion port" in rio.last_error
    a, b = _rio_pair(rio, sockets)  # new sockets work
    rio.send_async(a, b"y")
    assert _read(rio, b, 1) == b"y"


def test_rio_notify_failure_at_initialize_is_a_clean_false_mocked_windows_kernel(monkeypatch):
    kernel = install_windows_kernel(monkeypatch)
    kernel.faults["RIONotify"] = 10055  # WSAENOBUFS
    p = RioProvider()
    assert p.initialize(16, 16) is False  # not an exception
    assert "RIONotify" in p.last_error
    assert kernel._ports == {} and kernel._rio.cqs == {}  # the port and completion queue were closed
    assert p.initialize(16, 16), p.last_error  # and a later attempt works
    p.shutdown()


@pytest.fixture
def iocp(windows_kernel):
    p = IocpProvider()
    assert p.initialize(64, 64), p.last_error
    yield p
    p.shutdown()


def test_iocp_socket_closed_under_a_pending_recv_completes_cancelled_mocked_windows_kernel(
    monkeypatch, make_pair, collector
):
    # Closing a connected socket may abort its requests with STATUS_LOCAL_DISCONNECT (not
    # STATUS_CANCELLED); the handle is closed, so it must not be asked for the error.
    kernel = install_windows_kernel(monkeypatch, dirty_internal=False)
    p = IocpProvider()
    assert p.initialize(16, 16)
    try:
        _client, server = make_pair()
        assert p.register_socket(server)
        op_id = p.recv_async(server, bytearray(8), collector)
        server.close()
        pump(p, lambda: len(collector) == 1)
        assert collector.by_id(op_id).status == Status.CANCELLED, collector.results
    finally:
        p.shutdown()
    assert kernel.errors == []


def test_iocp_reads_only_the_low_32_bits_of_internal_mocked_windows_kernel(monkeypatch, make_pair):
    install_windows_kernel(monkeypatch, dirty_internal=True)  # the upper half holds garbage
    p = IocpProvider()
    assert p.initialize(16, 16)
    try:
        client, server = make_pair()
        assert p.register_socket(client) and p.register_socket(server)
        sent = Collector()
        p.send_async(client, b"low half", sent)
        assert _read(p, server, 8) == b"low half"
        pump(p, lambda: len(sent) == 1)
        assert sent.results[0].status == Status.SUCCESS
    finally:
        p.shutdown()


def test_iocp_socket_tied_to_another_closed_port_is_refused_clearly(iocp, make_pair):
    _client, server = make_pair()
    assert iocp.register_socket(server)
    iocp.shutdown()  # its port is closed; the socket stays tied to it for life
    assert iocp.initialize(16, 16)
    assert iocp.register_socket(server) is False
    assert "another completion port" in iocp.last_error
    assert iocp.get_statistics().active_connections == 0
