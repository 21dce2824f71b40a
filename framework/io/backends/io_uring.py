"""io_uring backend: completion-native I/O through a cffi extension on liburing.

Facts about io_uring that shaped this module:

- Two rings shared with the kernel: the application writes submission queue entries (SQEs) and the
  kernel posts completion queue entries (CQEs). One `io_uring_enter` submits every queued SQE and can
  wait for completions in the same call, so all operations posted between two `process_completions`
  calls reach the kernel together. The C side (`_uring_build.py`) prepares one SQE per FFI call (a
  `send_batch_async` prepares all its plain sends in one) and reaps a whole batch of CQEs into a
  preallocated array per FFI call; Python unpacks that array with `struct.iter_unpack`, never
  crossing the FFI boundary per field.
- A CQE carries only the SQE's 64-bit `user_data`, `res` (bytes or -errno) and flags. `user_data` is
  the operation id; internal requests (linked timeouts, cancels, the wake-up read, multishot accepts)
  carry tag bits and the C reaper swallows the ones Python does not need.
- The SQ has a fixed size: when it is full the queued SQEs are submitted (flushed) and the SQE is
  prepared again. The CQ is larger; with IORING_FEAT_NODROP (5.5+) a full CQ parks completions in an
  overflow list that the next enter flushes, so nothing is lost; the reaper drains the CQ fully.
- The kernel reads and writes the caller's memory until the CQE arrives, whatever Python does with its
  own references. Every in-flight operation therefore keeps its buffer (a memoryview plus the cffi
  `from_buffer` handle, in `Operation.buf`/`Operation.token`) referenced from the pending table keyed
  by its user_data, and `shutdown` cancels everything and waits for every CQE before the ring is
  unmapped (if the kernel never confirms, the ring and the buffers are deliberately leaked).
- A send on a stream socket may complete short. With MSG_WAITALL the kernel (5.19+) retries a short
  send itself; a CQE that still reports fewer bytes is resubmitted for the rest. Two sends in flight
  on one socket could interleave after a short write, so sends of one socket are issued one at a time,
  in posting order (later ones wait in a per-socket queue).
- Per-operation timeouts are linked timeouts (IOSQE_IO_LINK + IORING_OP_LINK_TIMEOUT): the kernel
  cancels the operation, which completes with -ECANCELED, reported as TIMEOUT/CONNECTION_TIMEOUT.
- Cancel is asynchronous (IORING_OP_ASYNC_CANCEL by user_data): the operation completes as CANCELLED
  when its own -ECANCELED CQE arrives, exactly once. If it finished first it reports what it really
  did (a recv that got data reports the data; nothing is lost).
- Multishot accept (IORING_ACCEPT_MULTISHOT, 5.19+) posts one CQE per connection with IORING_CQE_F_MORE
  while it stays armed. One `accept_async` consumes one accepted fd; extra fds wait for the next
  `accept_async`, and the multishot request is cancelled when too many wait unclaimed.
- Fixed buffers (`io_uring_register_buffers_sparse` once, then `..._update_tag` per buffer: the
  kernel pins the pages once, instead of per operation) serve `send_async_registered` and
  `recv_async_registered` through IORING_OP_WRITE_FIXED / READ_FIXED, which work on sockets.
- Fixed files (`io_uring_register_files_sparse`, IOSQE_FIXED_FILE) save the per-operation fd lookup,
  but the table holds a reference to the file: a registered socket closed without `unregister_socket`
  would stay open (no FIN to the peer). So they are opt-in: `set_option("fixed_files", True)`.
- Provided buffers (`recv_async_provided`, 5.19+): one buffer ring (`io_uring_register_buf_ring`,
  then `io_uring_buf_ring_add`/`_advance`, all in liburing 2.3) in one anonymous mmap, so untouched
  buffers cost no RSS. IORING_OP_RECV with IOSQE_BUFFER_SELECT takes a buffer only when data is
  there (a recv that has to wait gives it back before arming its poll), so an idle connection
  holds none. The CQE has IORING_CQE_F_BUFFER and the buffer id in flags >> 16.
- Incremental consumption (IOU_PBUF_RING_INC, 6.12+; the flag is newer than liburing 2.3's headers
  and is set by hand): the kernel fills a buffer piece by piece, receive after receive, across
  sockets, and flags a CQE with F_BUF_MORE while it keeps the buffer. A few large buffers (default
  64 x 32 KiB) then serve thousands of connections' small messages: with one small buffer per
  receive, 10,000 busy connections emptied a 1,024-buffer ring every turn. The C reaper computes
  where each chunk starts (it tracks each buffer's fill in CQE order) and counts references: a
  buffer goes back to the ring when the kernel is done with it and every chunk delivered from it was
  released (after its delivery, at the next `process_completions`). Older kernels reject the flag;
  the ring is then one buffer per receive (1024 x 16 KiB) with the same accounting. An empty ring
  fails a recv with -ENOBUFS: the operation waits in user space (its deadline on the base heap) and
  is submitted again as soon as buffers come back; it is never failed for that.
- Streams (feature "Streams", 6.0+; see provider.py): one multishot receive
  (IORING_RECV_MULTISHOT + buffer select) stays armed per connection and posts a CQE per arrival
  while it keeps IORING_CQE_F_MORE. It ends on EOF, an error, an empty ring (-ENOBUFS) or a CQ with
  no room for its next CQE; the last two are armed again at the next submission, so the CQ is sized
  for a completion per connection. Sends are copied into a per-stream C buffer and issued one at a
  time in order; the C reaper finishes short sends and moves the queue up itself, so a stream costs
  Python nothing per send and one tuple per arrival. Stream requests carry the stream's generation
  in their user_data and closed slots are reused only from the next reap, so a late CQE never
  reaches a newer stream in the same slot.
- In-flight requests also hold a file reference; closing a socket does not end its operations. That is
  why unregistering (or re-registering a reused fd number) cancels them explicitly.
- `post()` from another thread writes an eventfd that has a read SQE pending, so a blocked enter
  returns; the base class coalesces wake-ups.
- The ring can be unavailable although the library is installed: kernel.io_uring_disabled, seccomp
  (ENOSYS/EPERM) or an old kernel. `probe()` creates and closes a tiny ring to find out.
"""

from __future__ import annotations

import errno
import heapq
import mmap
import os
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from framework.io.backends.base import (
    _EMPTY,
    _LATENCY_SAMPLE,
    PROVIDED_BUFFER_SIZE,
    Operation,
    QueuedStreamsProvider,
    SocketEntry,
    _new_operation,
    as_memoryview,
)
from framework.io.errors import BackendUnavailable, ErrorCode, map_errno
from framework.io.provider import (
    STREAM_DATA,
    CompletionCallback,
    CompletionResult,
    Feature,
    OpType,
    SendOperation,
    Status,
    StreamEvent,
)

try:  # import-safe on every OS: the extension exists only where liburing was found at install
    from framework.io.backends import _uring
except ImportError as _exc:  # pragma: no cover - depends on the machine
    _uring = None
    _IMPORT_ERROR = str(_exc)
else:
    _IMPORT_ERROR = ""
    # fw_uring.h defines the stream event kinds the C reaper emits; they are the contract's.
    _kinds = tuple(getattr(_uring.lib, f"FW_SEV_{kind.name}") for kind in StreamEvent)
    if _kinds != tuple(StreamEvent):  # pragma: no cover - a build mismatch
        _IMPORT_ERROR = f"_uring's stream event kinds {_kinds} differ from StreamEvent's {tuple(StreamEvent)}"
        _uring = None

log = structlog.get_logger("framework.io")

DISABLE_ENV = "FRAMEWORK_DISABLE_IO_URING"
NOT_BUILT_REASON = (
    "the _uring extension was not built: install liburing-dev (Debian) and reinstall: pip install -e ."
)

_CQE_BATCH = 256  # CQEs reaped per FFI call
_CQE_SIZE = 24  # fw_cqe: u64 user_data, i32 res, u32 flags, u32 off (ring data), u32 pad
_CQE_FORMAT = "QiIII"
_SEV_BATCH = 512  # stream events per reap (fw_sev: u64 sid, i32 res, u32 off, u32 kind, u32 pad)
_SEV_SIZE = 24
_SEV_FORMAT = "QiIII"
_SID_SLOT = 0xFFFFFF
_MAX_FIXED_BUFFERS = 1024
_ACCEPT_BACKLOG_CAP = 128  # accepted-but-unclaimed fds before multishot accept is paused
_SHUTDOWN_WAIT_S = 5.0
_CANCEL_ERRNOS = (errno.ECANCELED, errno.EINTR)
_SQ_FULL = -errno.EBUSY  # what a fw_prep_* returns when the SQ has no room
PROVIDED_BUFFER_COUNT = 1024  # buffers in the provided-buffer ring (a power of two <= 32768)
# The default ring where the kernel consumes buffers incrementally: 2 MiB in all, a small
# message takes only its own bytes (and so do the RSS pages it touches).
_INCREMENTAL_RING = (64, 32768)
_PARKED = object()  # Operation.token of a provided recv waiting in user space for ring buffers
_NO_STREAM = object()  # a stream slot's context while no stream is open there (None is a context)

_SEV_DATA = STREAM_DATA  # a plain int: compared once per stream event
_CQE_F_BUFFER = _uring.lib.IORING_CQE_F_BUFFER if _uring is not None else 1  # the CQE carries a ring buffer
_SUCCESS = Status.SUCCESS
_RECV = OpType.RECV
_SEND = OpType.SEND
_ACCEPT = OpType.ACCEPT
_CONNECT = OpType.CONNECT

_probe_result: str | None = None  # "" = ring creation works; else the reason it does not
_leaked: list[Any] = []  # rings (and their buffers) the kernel never released at shutdown


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except (ValueError, AttributeError):
        return (0, 0)


def _ring_probe() -> str:
    """Why a ring cannot be created here ('' if it can); the answer is cached per process."""
    global _probe_result
    if _probe_result is None:
        disabled = ""
        try:
            with open("/proc/sys/kernel/io_uring_disabled") as f:
                disabled = f.read().strip()
        except OSError:
            pass
        rc = _uring.lib.fw_probe()
        if rc == 0:
            _probe_result = ""
        elif disabled in ("1", "2"):
            _probe_result = f"kernel.io_uring_disabled={disabled} (io_uring_queue_init: {os.strerror(-rc)})"
        elif rc in (-errno.ENOSYS, -errno.EPERM):
            _probe_result = (
                f"io_uring_queue_init failed with {errno.errorcode.get(-rc, rc)}: the kernel lacks io_uring"
                " or a seccomp filter (container runtime) blocks it"
            )
        else:
            _probe_result = f"io_uring_queue_init failed: {os.strerror(-rc)}"
    return _probe_result


def _pack_sockaddr(family: int, address: Any) -> bytes:
    """struct sockaddr for IORING_OP_CONNECT (the kernel copies it when the SQE is submitted)."""
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        sa: tuple[Any, ...] = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
        ip, port = sa[0], sa[1]
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        info: tuple[Any, ...] = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
        flowinfo = address[2] if len(address) > 2 else info[2]
        scope_id = address[3] if len(address) > 3 else info[3]
        return (
            struct.pack("=H", family)
            + struct.pack("!HI", info[1], flowinfo)
            + socket.inet_pton(socket.AF_INET6, info[0])
            + struct.pack("=I", scope_id)
        )
    if family == socket.AF_UNIX:
        path = os.fsencode(address)
        return struct.pack("=H", family) + path + (b"" if path.startswith(b"\0") else b"\0")
    raise OSError(errno.EAFNOSUPPORT, f"address family {family} is not supported")


class _UringSocket:
    """Per-socket state (in `SocketEntry.state`)."""

    __slots__ = ("accept_ud", "accept_waiters", "accepted", "io_fd", "send_queue", "sending", "slot", "stream")

    def __init__(self, fd: int, slot: int) -> None:
        self.slot = slot  # fixed-file slot, -1 = plain fd
        self.io_fd = slot if slot >= 0 else fd  # what SQEs name
        self.sending: Operation | None = None  # the one send of this socket in the kernel
        # Created on first use: an empty deque costs ~600 bytes, per connection that adds up.
        self.send_queue: deque[Operation] | None = None
        self.accept_ud = 0  # user_data of the armed multishot accept, 0 = none
        self.accept_waiters: deque[Operation] | None = None
        self.accepted: deque[int] | None = None  # fds accepted by multishot, not yet claimed
        self.stream = 0  # the open stream's id, 0 = none


class IoUringProvider(QueuedStreamsProvider):
    """Completion-native provider on io_uring (Linux 5.6+; multishot accept from 5.19)."""

    name = "io_uring"

    @classmethod
    def probe(cls) -> None:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            raise BackendUnavailable("io_uring", f"disabled by the environment ({DISABLE_ENV}=1)")
        if not sys.platform.startswith("linux"):
            raise BackendUnavailable("io_uring", f"io_uring exists only on Linux, not {sys.platform}")
        if _uring is None:
            raise BackendUnavailable("io_uring", NOT_BUILT_REASON + f" ({_IMPORT_ERROR})")
        reason = _ring_probe()
        if reason:
            raise BackendUnavailable("io_uring", reason)

    def __init__(self) -> None:
        super().__init__()
        self._ffi: Any = None
        self._lib: Any = None
        self._ring: Any = None
        self._cqes: Any = None
        self._cqe_view: memoryview = _EMPTY  # over the CQE batch array, once the ring exists
        self._wakefd = -1
        self._wake_armed = False
        self._cancelling: dict[int, tuple[Status, int]] = {}
        self._listeners: dict[int, SocketEntry] = {}
        self._multishot = False
        self._features_found: frozenset[str] = frozenset()
        self._use_fixed_files = False
        self._file_slots: deque[int] = deque()
        self._buffer_slots: deque[int] = deque()
        self._fixed_buffer_of: dict[int, int] = {}  # buffer id -> kernel fixed-buffer index
        # buffer id -> (fixed-buffer index, cffi handle of the whole buffer, its length): a receive
        # into a slice passes base + offset to C, no handle made per operation
        self._fixed_base: dict[int, tuple[int, Any, int]] = {}
        self._multishot_accepts = 0
        self._short_sends = 0
        self._leaked_ring = False
        self._pbuf_count = PROVIDED_BUFFER_COUNT
        self._pbuf_mem: mmap.mmap | None = None
        self._pbuf_view: memoryview | None = None
        self._pbuf_ring_size = 0  # buffer size of the registered ring
        self._starved: deque[Operation] = deque()  # provided recvs parked after -ENOBUFS
        self._enobufs = 0
        # send_batch_async's argument arrays for fw_prep_send_batch, grown on demand
        self._batch_cap = 0
        self._batch_fds: Any = None
        self._batch_bufs: Any = None
        self._batch_lens: Any = None
        self._batch_uds: Any = None
        # streams (feature "Streams"): per-slot contexts (the handlers are the base class's)
        self._sevs: Any = None
        self._streams_off = False
        self._sev_view: memoryview = _EMPTY  # over the stream event array, once streams exist
        self._stream_ctx: list[Any] = []
        self._stream_sock: list[_UringSocket | None] = []

    # ------------------------------------------------------------------ lifecycle
    def _backend_open(self) -> None:
        try:
            self.probe()
        except BackendUnavailable as exc:
            raise OSError(errno.ENOSYS, exc.reason) from None
        ffi, lib = _uring.ffi, _uring.lib
        sq = 1 << max(1, (self._cq_size - 1).bit_length())  # power of two >= max_completion_queue_size
        sq = min(sq, 4096)
        # Room for a completion per connection: a multishot receive that finds the CQ full ends
        # (no F_MORE) and must be armed again.
        cq = min(max(2 * sq, 4096, 1 << (2 * self._max_connections - 1).bit_length()), 65536)
        err = ffi.new("int *")
        ring = lib.fw_ring_new(sq, cq, err)
        if ring == ffi.NULL:
            raise OSError(-err[0], f"io_uring_queue_init: {os.strerror(-err[0])}")
        self._ffi, self._lib, self._ring = ffi, lib, ring
        self._cqes = ffi.new("fw_cqe[]", _CQE_BATCH)
        self._cqe_view = memoryview(ffi.buffer(self._cqes))
        try:
            self._wakefd = os.eventfd(0, os.EFD_CLOEXEC)  # blocking: the kernel waits on it for us
        except OSError:
            lib.fw_ring_free(ring)
            self._ring = None
            raise
        self._wake_armed = False
        self._arm_wake()
        feats = {
            "BatchSubmit",
            "AsyncCancel" if lib.fw_opcode_supported(ring, lib.IORING_OP_ASYNC_CANCEL) else "",
        }
        if lib.fw_opcode_supported(ring, lib.IORING_OP_LINK_TIMEOUT):
            feats.add("LinkedTimeout")
        if ring.features & lib.IORING_FEAT_NODROP:
            feats.add("NoDropCompletions")
        self._multishot = bool(lib.FW_HAVE_MULTISHOT_ACCEPT) and _kernel_version() >= (5, 19)
        if self._multishot:
            feats.add("MultishotAccept")
        import resource  # here, not at module level: the module must import on Windows (no resource)

        nfiles = min(self._max_connections + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[0], 32768)
        if lib.fw_register_files_sparse(ring, nfiles) == 0:
            self._file_slots = deque(range(nfiles))
            feats.add("FixedFileSet")
        if lib.fw_register_buffers_sparse(ring, _MAX_FIXED_BUFFERS) == 0:
            self._buffer_slots = deque(range(_MAX_FIXED_BUFFERS))
            feats.add("BufferRegistration")
        self._setup_buffer_ring()
        self._setup_streams()
        feats.discard("")
        self._features_found = frozenset(feats)

    def _setup_buffer_ring(self) -> None:
        """Register the provided-buffer ring; without it (kernel < 5.19) the base class's pooled
        default serves recv_async_provided and "ProvidedBuffers" stays False."""
        count, size = self._pbuf_count, self._pbuf_size
        # Incremental consumption first (6.12+): then the default is a few large buffers that
        # the kernel fills message after message, across connections.
        attempts = [(count, size, 1), (count, size, 0)]
        if (count, size) == (PROVIDED_BUFFER_COUNT, PROVIDED_BUFFER_SIZE):
            attempts[0] = (*_INCREMENTAL_RING, 1)
        for count, size, incremental in attempts:
            mem = mmap.mmap(-1, count * size)
            handle = self._ffi.from_buffer(mem)
            rc = self._lib.fw_pbuf_setup(self._ring, count, handle, size, incremental)
            self._ffi.release(handle)  # the kernel has the address; `mem` stays mapped while we live
            if rc == 0:
                break
            mem.close()
        else:
            return
        self._pbuf_count = count
        self._pbuf_size = size
        self._pbuf_mem = mem
        self._pbuf_view = memoryview(mem)
        self._pbuf_ring_size = size
        self._provided_on_arrival = not self._provided_off

    def _setup_streams(self) -> bool:
        """Streams need multishot receive (6.0+) over the buffer ring."""
        lib = self._lib
        if self._pbuf_view is None or not lib.FW_HAVE_RECV_MULTISHOT or _kernel_version() < (6, 0):
            return False
        n = min(self._max_connections + 64, _SID_SLOT + 1)
        sevs = self._ffi.new("fw_sev[]", _SEV_BATCH)
        if lib.fw_streams_init(self._ring, n, sevs, _SEV_BATCH) != 0:
            return False
        self._sevs = sevs
        self._sev_view = memoryview(self._ffi.buffer(sevs))
        self._stream_ctx = [_NO_STREAM] * n
        self._stream_sock = [None] * n
        return True

    def _backend_close(self) -> None:
        wakefd, self._wakefd = self._wakefd, -1  # first, so a racing post() stops writing to it
        self._provided_on_arrival = False
        # Not closed: memoryviews a caller kept still point into it (a stale view must not crash).
        pbuf_mem, self._pbuf_mem, self._pbuf_view = self._pbuf_mem, None, None
        self._starved.clear()
        if self._leaked_ring:
            _leaked.append((self._ring, self._pending, wakefd, pbuf_mem, self._sevs))
        else:
            if wakefd >= 0:
                os.close(wakefd)
            if self._ring is not None:
                self._lib.fw_ring_free(self._ring)
        self._ring = None
        self._cancelling.clear()
        self._listeners.clear()
        self._fixed_buffer_of.clear()
        self._fixed_base.clear()

    def _backend_cancel_all(self) -> None:
        """Cancel every request the kernel holds and wait for every CQE (buffers stay pinned until
        then). Operations not yet in the kernel complete at once."""
        for op in list(self._pending.values()):
            self._backend_cancel(op, Status.CANCELLED, 0)
        lib, ring = self._lib, self._ring
        if self._sevs is not None:
            lib.fw_streams_close_all(ring)  # no stream event reaches a handler after shutdown began
            self._stream_ctx = [_NO_STREAM] * len(self._stream_ctx)
            self._stream_sock = [None] * len(self._stream_sock)
        deadline = time.monotonic() + _SHUTDOWN_WAIT_S
        turn = 0
        while ring.inflight > 0:
            if time.monotonic() > deadline:
                log.error(
                    "io_uring requests not confirmed at shutdown; leaking the ring", inflight=ring.inflight
                )
                self._leaked_ring = True
                return
            if turn % 4 == 0:
                # One cancel-any request (5.19+) sweeps whatever is left: multishot accepts, the
                # wake-up read. Older kernels reject it; then each request is cancelled by user_data.
                if lib.fw_prep_cancel(ring, 0, 1) == -errno.EBUSY:
                    lib.fw_submit(ring)
                    lib.fw_prep_cancel(ring, 0, 1)
            elif turn % 4 == 2:
                for ud in [*self._pending, *self._listeners, lib.FW_UD_WAKE]:
                    self._prep_cancel(ud)
            self._backend_poll(50)
            turn += 1

    # ------------------------------------------------------------------ sockets
    def _backend_register(self, entry: SocketEntry) -> None:
        slot = -1
        if self._use_fixed_files and self._file_slots:
            slot = self._file_slots.popleft()
            if self._lib.fw_update_file(self._ring, slot, entry.fd) != 0:
                self._file_slots.appendleft(slot)
                slot = -1  # fall back to the plain fd
        entry.state = _UringSocket(entry.fd, slot)

    def _backend_unregister(self, entry: SocketEntry) -> None:
        st: _UringSocket = entry.state
        if st is None:
            return
        if st.stream:
            self.stream_close(st.stream)
            if not self._closed:
                # Submit now: a queued SQE naming this fd (a receive armed again this turn) must
                # reach the kernel before the caller closes the fd and the number is reused.
                self._lib.fw_submit(self._ring)
        while st.accepted:
            os.close(st.accepted.popleft())
        if st.accept_ud:
            self._listeners.pop(st.accept_ud, None)
            if not self._closed:
                self._prep_cancel(st.accept_ud)
            st.accept_ud = 0
        if st.slot >= 0 and self._ring is not None and not self._closed:
            # Submit first: a queued SQE naming this slot must not meet the slot's next occupant.
            self._lib.fw_submit(self._ring)
            self._lib.fw_update_file(self._ring, st.slot, -1)
            self._file_slots.append(st.slot)  # FIFO: a freed slot is reused as late as possible
            st.slot = -1

    # ------------------------------------------------------------------ operations
    def _arm_timeout(self, op: Operation, timeout_ms: int | None) -> None:
        # The kernel times operations (linked timeouts); the base heap serves only operations
        # waiting in user space (queued sends).
        if timeout_ms is not None and timeout_ms >= 0:
            op.deadline = time.monotonic_ns() + timeout_ms * 1_000_000

    def _flush(self) -> None:
        """The SQ is full: hand the queued SQEs to the kernel so the SQE can be prepared again."""
        rc = self._lib.fw_submit(self._ring)
        if rc < 0 and rc not in (-errno.EINTR, -errno.EAGAIN, -errno.EBUSY):
            raise OSError(-rc, f"io_uring_submit: {os.strerror(-rc)}")

    def _prep(self, prep: Callable[..., int], *args: Any) -> int:
        """Call a fw_prep_* function; if the SQ is full, flush it and prepare once more."""
        rc = prep(*args)
        if rc == _SQ_FULL:
            self._flush()
            rc = prep(*args)
        return rc

    def _backend_recv(self, op: Operation) -> None:
        if op.buf is None:
            self._prep_provided(op)
            return
        op.token = self._ffi.from_buffer(op.buf, require_writable=True)
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        tmo = max(0, op.deadline - time.monotonic_ns()) if op.deadline else -1
        lib = self._lib
        buf_index = op.address
        if buf_index is None:
            rc = self._prep(
                lib.fw_prep_recv, self._ring, st.io_fd, st.slot >= 0, op.token, len(op.buf), op.op_id, tmo
            )
        else:
            args = (self._ring, st.io_fd, st.slot >= 0, op.token, 0, len(op.buf), buf_index, op.op_id, tmo)
            rc = self._prep(lib.fw_prep_read_fixed, *args)
        if rc < 0:
            self._fail(op, -rc)

    def _prep_provided(self, op: Operation) -> None:
        """Submit a buffer-select recv (the kernel picks a ring buffer when data arrives)."""
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        tmo = max(0, op.deadline - time.monotonic_ns()) if op.deadline else -1
        size = self._pbuf_ring_size
        rc = self._prep(
            self._lib.fw_prep_recv_select, self._ring, st.io_fd, st.slot >= 0, size, op.op_id, tmo
        )
        if rc < 0:
            self._fail(op, -rc)

    def recv_async_provided(
        self,
        sock: socket.socket,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        if timeout_ms is not None or not self._provided_on_arrival or not self._initialized or self._closed:
            return super().recv_async_provided(sock, callback, context, timeout_ms)
        # A session's receive loop: straight to the SQE, without the base class's hops.
        op = self._new_op(_RECV, sock, None, callback, context)
        if op.entry is not None:
            self._prep_provided(op)
        return op.op_id

    def _park_starved(self, op: Operation) -> None:
        """-ENOBUFS: wait in user space until ring buffers come back (never fail the recv)."""
        self._enobufs += 1
        if self._ring.pbuf_lent < self._pbuf_count:
            # Buffers went back to the ring after the kernel found it empty: nothing would wake a
            # parked op, so submit it again now (with the next enter, never in a tight loop).
            self._prep_provided(op)
            return
        op.token = _PARKED
        self._starved.append(op)
        if op.deadline:
            self._push_timeout(op)

    def _provided_capable(self) -> bool:
        return self._pbuf_view is not None

    def _release_leases(self, leases: list[Any]) -> None:
        if self._pbuf_view is None:  # no ring: the base class's pooled buffers
            super()._release_leases(leases)
            return
        if self._pbuf_out:  # pooled-path bytearrays may be mixed in (set_option("provided_buffers"))
            super()._release_leases([b for b in leases if type(b) is not int])
            leases = [b for b in leases if type(b) is int]
        n = len(leases)
        if n:
            self._lib.fw_pbuf_recycle_many(self._ring, leases, n)  # one tail update for all
        starved = self._starved
        while starved and n and not self._closed:
            op = starved.popleft()
            if op.op_id in self._pending:
                op.token = None
                n -= 1
                self._prep_provided(op)

    def send_async(
        self,
        sock: socket.socket,
        data: bytes | bytearray | memoryview,
        callback: CompletionCallback | None = None,
        context: Any = None,
        timeout_ms: int | None = None,
    ) -> int:
        # The base version minus the memoryview for `bytes` (from_buffer takes bytes as they are)
        # and minus the user-space timeout heap (the kernel times the send: a linked timeout).
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        buf = data if type(data) is bytes else as_memoryview(data)
        op = self._new_op(_SEND, sock, buf, callback, context)
        entry = op.entry
        if entry is None:
            return op.op_id
        st: _UringSocket = entry.state
        timed = timeout_ms is not None and timeout_ms >= 0
        if timed or st.sending is not None:
            if timeout_ms is not None and timeout_ms >= 0:  # timed
                op.deadline = time.monotonic_ns() + timeout_ms * 1_000_000
            self._backend_send(op)
            return op.op_id
        # The common case, _backend_send + _submit_send inlined: the socket's only send, no timeout.
        st.sending = op
        op.token = token = self._ffi.from_buffer(buf)
        lib = self._lib
        op_id = op.op_id
        rc = lib.fw_prep_send(self._ring, st.io_fd, st.slot >= 0, token, 0, len(buf), op_id, -1)
        if rc == _SQ_FULL:
            self._flush()
            rc = lib.fw_prep_send(self._ring, st.io_fd, st.slot >= 0, token, 0, len(buf), op_id, -1)
        if rc < 0:
            self._fail(op, -rc)
            self._next_send(st)
        return op_id

    def send_batch_async(self, ops: Sequence[SendOperation]) -> int:
        """All sends of a flush: the common ones (the socket's only send, plain fd, no timeout) are
        tracked inline and their SQEs prepared in one FFI call; anything else goes via send_async."""
        if not self._initialized or self._closed:
            self.last_error = "provider is not initialized"
            return 0
        n = len(ops)
        if n > self._batch_cap:
            self._grow_batch(n)
        fds, bufs, lens, uds = self._batch_fds, self._batch_bufs, self._batch_lens, self._batch_uds
        ids, pending, sockets = self._ids, self._pending, self._sockets
        from_buffer = self._ffi.from_buffer
        posted = k = 0
        for o in ops:
            sock, data = o.sock, o.data
            try:
                entry = sockets.get(sock.fileno())
            except (AttributeError, OSError):
                entry = None
            st = entry.state if entry is not None and entry.sock is sock else None
            if st is None or st.sending is not None or st.slot >= 0:
                if self.send_async(sock, data, o.callback, o.context):
                    posted += 1
                continue
            assert entry is not None  # st came from it
            buf = data if type(data) is bytes else as_memoryview(data)
            op_id = next(ids)
            op = _new_operation(Operation)  # every slot set here, as in base._new_op
            op.op_id = op_id
            op.op_type = _SEND
            op.entry = entry
            op.sock = sock
            op.fd = entry.fd
            op.buf = buf
            op.callback = o.callback
            op.context = o.context
            op.done = op.deadline = op.started_ns = 0
            op.address = None
            op.token = token = from_buffer(buf)
            pending[op_id] = op
            if entry.op1 is None:  # base._new_op's per-socket tracking
                entry.op1 = op
            elif entry.more is None:
                entry.more = [op]
            else:
                entry.more.append(op)
            st.sending = op
            fds[k] = st.io_fd
            bufs[k] = token
            lens[k] = len(buf)
            uds[k] = op_id
            k += 1
        if not k:
            return posted
        if self._measure_latency:  # the base's 1-in-N sample, counted per batch
            tick = self._latency_tick + k
            if tick >= _LATENCY_SAMPLE:
                tick = 0
                pending[uds[0]].started_ns = time.monotonic_ns()
            self._latency_tick = tick
        got = self._lib.fw_prep_send_batch(self._ring, fds, bufs, lens, uds, k)
        for i in range(got, k):  # the SQ could not be submitted: these never reached the kernel
            op = pending[uds[i]]
            entry = op.entry
            assert entry is not None  # made above, on a registered socket
            self._fail(op, errno.EBUSY)
            self._next_send(entry.state)
        return posted + k

    def _grow_batch(self, n: int) -> None:
        cap = max(n, 2 * self._batch_cap, 256)
        new = self._ffi.new
        self._batch_fds = new("int[]", cap)
        self._batch_bufs = new("char *[]", cap)
        self._batch_lens = new("unsigned[]", cap)
        self._batch_uds = new("uint64_t[]", cap)
        self._batch_cap = cap

    def _backend_send(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        if st.sending is not None:
            if st.send_queue is None:
                st.send_queue = deque()
            st.send_queue.append(op)  # one send per socket in the kernel: bytes stay in order
            if op.deadline:
                self._push_timeout(op)
            return
        st.sending = op
        op.token = self._ffi.from_buffer(op.buf)
        self._submit_send(op, st)

    def _submit_send(self, op: Operation, st: _UringSocket) -> None:
        tmo = max(0, op.deadline - time.monotonic_ns()) if op.deadline else -1
        lib = self._lib
        remaining = len(op.buf) - op.done
        buf_index = op.address
        if buf_index is None:
            args: tuple[Any, ...] = (self._ring, st.io_fd, st.slot >= 0, op.token, op.done, remaining, op.op_id, tmo)
            rc = self._prep(lib.fw_prep_send, *args)
        else:
            args = (
                self._ring,
                st.io_fd,
                st.slot >= 0,
                op.token,
                op.done,
                remaining,
                buf_index,
                op.op_id,
                tmo,
            )
            rc = self._prep(lib.fw_prep_write_fixed, *args)
        if rc < 0:
            self._fail(op, -rc)
            self._next_send(st)

    def _next_send(self, st: _UringSocket) -> None:
        st.sending = None
        queue = st.send_queue
        while queue:
            op = queue.popleft()
            if op.op_id not in self._pending:
                continue
            st.sending = op
            op.token = self._ffi.from_buffer(op.buf)
            self._submit_send(op, st)
            return

    def _push_timeout(self, op: Operation) -> None:
        heapq.heappush(self._timeouts, (op.deadline, op.op_id))

    def _backend_accept(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        if not self._multishot:
            rc = self._prep(self._lib.fw_prep_accept, self._ring, st.io_fd, st.slot >= 0, 0, op.op_id)
            if rc < 0:
                self._fail(op, -rc)
            return
        if st.accepted:
            self._complete_accept(op, st.accepted.popleft())
            return
        if st.accept_waiters is None:
            st.accept_waiters = deque()
            st.accepted = deque()
        st.accept_waiters.append(op)
        if not st.accept_ud:
            self._arm_multishot(entry)

    def _arm_multishot(self, entry: SocketEntry) -> None:
        st: _UringSocket = entry.state
        ud = self._lib.FW_UD_ACCEPT_TAG | next(self._ids)
        rc = self._prep(self._lib.fw_prep_accept, self._ring, st.io_fd, st.slot >= 0, 1, ud)
        if rc < 0:
            while st.accept_waiters:
                self._fail(st.accept_waiters.popleft(), -rc)
            return
        st.accept_ud = ud
        self._listeners[ud] = entry

    def _complete_accept(self, op: Operation, fd: int) -> None:
        try:
            conn = socket.socket(fileno=fd)
        except OSError as exc:
            os.close(fd)
            self._fail(op, exc.errno or errno.EBADF)
            return
        conn.setblocking(False)
        try:
            addr = conn.getpeername()
        except OSError:
            addr = None  # the peer already left; the first recv will say so
        self._complete(op, _SUCCESS, 0, 0, (conn, addr))

    def _backend_connect(self, op: Operation) -> None:
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        try:
            addr = _pack_sockaddr(entry.sock.family, op.address)
        except (OSError, TypeError, ValueError, IndexError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno and exc.errno > 0 else errno.EINVAL
            self._fail(op, code)
            return
        op.token = self._ffi.from_buffer(addr)  # keeps `addr` alive until the CQE
        tmo = max(0, op.deadline - time.monotonic_ns()) if op.deadline else -1
        args = (self._ring, st.io_fd, st.slot >= 0, op.token, len(addr), op.op_id, tmo)
        rc = self._prep(self._lib.fw_prep_connect, *args)
        if rc < 0:
            self._fail(op, -rc)

    def _prep_cancel(self, target_ud: int) -> None:
        self._prep(self._lib.fw_prep_cancel, self._ring, target_ud, 0)

    def _backend_cancel(self, op: Operation, status: Status, error_code: int) -> None:
        op_id = op.op_id
        if op_id in self._cancelling or op_id not in self._pending:
            return
        st: _UringSocket | None = op.entry.state if op.entry is not None else None
        if op.token is _PARKED:  # a provided recv waiting for ring buffers, not in the kernel
            try:
                self._starved.remove(op)
            except ValueError:
                pass
            self._complete(op, status, 0, error_code)
            return
        if st is not None:
            # Not in the kernel yet: nothing to wait for.
            if op.op_type == _SEND and st.sending is not op:
                if st.send_queue is not None:
                    try:
                        st.send_queue.remove(op)
                    except ValueError:
                        pass
                self._complete(op, status, op.done, error_code)
                return
            if op.op_type == _ACCEPT and self._multishot:
                if st.accept_waiters is not None:
                    try:
                        st.accept_waiters.remove(op)
                    except ValueError:
                        pass
                self._complete(op, status, 0, error_code)
                return
        self._cancelling[op_id] = (status, error_code)
        self._prep_cancel(op_id)

    # ------------------------------------------------------------------ completions
    def _backend_poll(self, timeout_ms: int) -> None:
        lib, ring, view = self._lib, self._ring, self._cqe_view
        n = lib.fw_submit_wait_reap(ring, timeout_ms, self._cqes, _CQE_BATCH)
        pending = self._pending
        complete = self._complete
        pview = self._pbuf_view
        ready_append = self._ready.append
        sent_ok = 0
        while True:
            if n < 0:
                self._completed += sent_ok
                raise OSError(-n, f"io_uring_enter: {os.strerror(-n)}")
            for ud, res, flags, off, _ in struct.iter_unpack(_CQE_FORMAT, view[: n * _CQE_SIZE]):
                op = pending.get(ud)
                if op is None:
                    if flags & _CQE_F_BUFFER and res > 0:  # ring data nobody waits for: release the chunk
                        self._lib.fw_pbuf_recycle(ring, flags >> 16)
                    self._internal_cqe(ud, res, flags)
                    continue
                if res < 0:  # (a ring buffer it consumed was accounted by the C reaper)
                    self._op_failed(op, -res)
                    continue
                t = op.op_type
                if t is _RECV:
                    if op.buf is not None:
                        complete(op, _SUCCESS, res, 0)
                    elif flags & _CQE_F_BUFFER and res:  # provided: a chunk of ring buffer flags >> 16 at `off`
                        assert pview is not None  # the kernel picked a buffer from the ring
                        complete(op, _SUCCESS, res, 0, None, pview[off : off + res], flags >> 16)
                    else:  # provided, EOF (a buffer it consumed was accounted by the C reaper)
                        complete(op, _SUCCESS, res, 0, None, _EMPTY)
                elif t is _SEND:
                    done = op.done + res
                    if done == len(op.buf):  # the common case: all written; _complete inlined
                        op.done = done
                        del pending[ud]
                        entry = op.entry
                        assert entry is not None  # a send in the kernel is on a registered socket
                        if entry.op1 is op:  # base._complete's per-socket tracking
                            entry.op1 = None
                        else:
                            more = entry.more
                            assert more is not None  # it is tracked there
                            more.remove(op)
                        sent_ok += 1
                        if op.started_ns:
                            self._latency_total_ns += time.monotonic_ns() - op.started_ns
                            self._latency_count += 1
                        ready_append(CompletionResult(_SUCCESS, done, 0, ud, op.context, _SEND))
                        ready_append(op.callback)
                        op.buf = op.callback = None
                        st = entry.state
                        if st.sending is op:
                            if st.send_queue:
                                self._next_send(st)
                            else:
                                st.sending = None
                    else:
                        self._send_progress(op, res)
                elif t is _CONNECT:
                    self._complete(op, _SUCCESS, 0, 0)
                else:  # single-shot accept
                    if op.op_id in self._cancelling and self._closed:
                        os.close(res)
                        self._op_failed(op, errno.ECANCELED)
                    else:
                        self._complete_accept(op, res)
            m = ring.nsev
            if m:
                self._stream_events(m)
            if not ring.more:
                break
            n = lib.fw_reap(ring, self._cqes, _CQE_BATCH)
        self._completed += sent_ok
        if self._cancelling:
            for op_id in [i for i in self._cancelling if i not in pending]:
                del self._cancelling[op_id]

    def _stream_events(self, m: int) -> None:
        """Hand a reap's stream events to the handlers: DATA points into a ring buffer that goes
        back to the kernel at the next reap (valid until the handler returns)."""
        self._delivered += m
        ctxs = self._stream_ctx
        on_data = self._on_stream_data
        on_event = self._on_stream_event
        pview = self._pbuf_view
        # Streams exist only with handlers set and a buffer ring to receive into.
        assert on_data is not None and on_event is not None and pview is not None
        for sid, res, off, kind, _ in struct.iter_unpack(_SEV_FORMAT, self._sev_view[: m * _SEV_SIZE]):
            ctx = ctxs[sid & _SID_SLOT]
            if ctx is _NO_STREAM:  # closed by an earlier handler of this batch
                continue
            try:
                if kind == _SEV_DATA:
                    on_data(ctx, pview[off : off + res])
                else:
                    on_event(ctx, kind, map_errno(-res) if res < 0 else 0)
            except Exception:
                self._callback_errors += 1
                log.exception("stream handler raised", backend=self.name, kind=kind)

    def _send_progress(self, op: Operation, res: int) -> None:
        op.done += res
        entry = op.entry
        assert entry is not None  # a hook gets operations on registered sockets only
        st: _UringSocket = entry.state
        if op.done < len(op.buf) and res > 0 and op.op_id not in self._cancelling and not self._closed:
            self._short_sends += 1
            self._submit_send(op, st)  # the rest of a short send, same operation id
            return
        if op.done < len(op.buf) and op.op_id in self._cancelling:
            status, code = self._cancelling.pop(op.op_id)
            self._complete(op, status, op.done, code)
        elif op.done < len(op.buf) and res == 0:
            self._complete(op, Status.ERROR, op.done, map_errno(errno.EPIPE))
        else:
            self._complete(op, _SUCCESS, op.done, 0)
        if st.sending is op:
            self._next_send(st)

    def _op_failed(self, op: Operation, err: int) -> None:
        requested = self._cancelling.pop(op.op_id, None)
        if requested is not None:
            status, code = requested
            self._complete(op, status, op.done, code)
        elif err == errno.ENOBUFS and op.buf is None and op.op_type is _RECV and not self._closed:
            self._park_starved(op)
        elif err in _CANCEL_ERRNOS and op.deadline:
            self._complete(op, Status.TIMEOUT, op.done, ErrorCode.CONNECTION_TIMEOUT)  # linked timeout
        elif err in _CANCEL_ERRNOS:
            self._complete(op, Status.CANCELLED, op.done, 0)
        else:
            self._fail(op, err)
        if op.op_type is _SEND:
            entry = op.entry
            assert entry is not None  # a hook gets operations on registered sockets only
            st: _UringSocket = entry.state
            if st.sending is op:
                self._next_send(st)

    def _internal_cqe(self, ud: int, res: int, flags: int) -> None:
        lib = self._lib
        if ud == lib.FW_UD_WAKE:
            self._wake_armed = False
            if not self._closed:
                self._arm_wake()
            return
        if ud & lib.FW_UD_ACCEPT_TAG:
            self._multishot_cqe(ud, res, flags)
            return
        # Otherwise a late CQE of an operation already completed: nothing references it.

    def _multishot_cqe(self, ud: int, res: int, flags: int) -> None:
        entry = self._listeners.get(ud)
        if entry is None:  # the listener was unregistered while connections kept arriving
            if res >= 0:
                os.close(res)
            return
        st: _UringSocket = entry.state
        if not flags & self._lib.IORING_CQE_F_MORE:
            del self._listeners[ud]
            st.accept_ud = 0
        if res >= 0:
            self._multishot_accepts += 1
            if self._closed:
                os.close(res)
            elif st.accept_waiters:
                self._complete_accept(st.accept_waiters.popleft(), res)
            else:
                accepted = st.accepted
                assert accepted is not None  # made with accept_waiters when multishot was armed
                accepted.append(res)
                if len(accepted) >= _ACCEPT_BACKLOG_CAP and st.accept_ud:
                    self._prep_cancel(st.accept_ud)  # nobody accepts: leave the rest in the backlog
        elif -res not in _CANCEL_ERRNOS and st.accept_waiters:
            self._fail(st.accept_waiters.popleft(), -res)
        if not st.accept_ud and st.accept_waiters and not self._closed:
            self._arm_multishot(entry)

    def _arm_wake(self) -> None:
        if self._wake_armed or self._wakefd < 0:
            return
        rc = self._prep(self._lib.fw_prep_wake_read, self._ring, self._wakefd)
        self._wake_armed = rc == 0

    def _backend_wakeup(self) -> None:
        fd = self._wakefd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass  # closed by a concurrent shutdown: nothing left to wake

    # ------------------------------------------------------------------ streams
    def stream_open(self, sock: socket.socket, context: Any = None) -> int:
        if self._sevs is None or self._on_stream_data is None or self._closed:
            raise NotImplementedError(self._streams_unavailable())
        entry = self._entry_for(sock)
        if entry is None:
            return 0
        st: _UringSocket = entry.state
        if st.stream:
            return 0  # one stream per socket
        sid: int = self._lib.fw_stream_open(self._ring, entry.fd)
        if sid < 0:
            self.last_error = f"stream_open: {os.strerror(-sid)}"
            return 0
        st.stream = sid
        self._stream_ctx[sid & _SID_SLOT] = context
        self._stream_sock[sid & _SID_SLOT] = st
        return sid

    def stream_send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        if type(data) is not bytes:
            data = bytes(data)
        ring = self._ring
        if ring is None:
            return -errno.ENOTCONN
        rc: int = self._lib.fw_stream_send(ring, stream_id, data, len(data))
        return rc if rc >= 0 else -map_errno(-rc)  # C returns -errno; the contract, -map_errno

    def stream_send_many(
        self, stream_ids: Sequence[int], data: bytes | bytearray | memoryview, high_water: int
    ) -> list[int]:
        if type(data) is not bytes:
            data = bytes(data)
        n = len(stream_ids)
        if self._ring is None:
            return list(range(n))
        flagged = self._ffi.new("uint32_t[]", n)
        nf = self._lib.fw_stream_send_many(self._ring, stream_ids, n, data, len(data), high_water, flagged)
        return self._ffi.unpack(flagged, nf) if nf else []

    def stream_queued(self, stream_id: int) -> int:
        if self._ring is None:
            return -errno.ENOTCONN
        rc: int = self._lib.fw_stream_queued(self._ring, stream_id)
        return rc if rc >= 0 else -map_errno(-rc)

    def stream_watch(self, stream_id: int, low_water: int) -> bool:
        if self._ring is None:
            return True  # closed: nothing will ever drain (the caller learns why elsewhere)
        rc: int = self._lib.fw_stream_watch(self._ring, stream_id, max(0, low_water))
        return rc == 1 or rc < 0

    def stream_pause_reading(self, stream_id: int) -> bool:
        return self._ring is not None and self._lib.fw_stream_pause_reading(self._ring, stream_id) == 0

    def stream_resume_reading(self, stream_id: int) -> bool:
        return self._ring is not None and self._lib.fw_stream_resume_reading(self._ring, stream_id) == 0

    def stream_close(self, stream_id: int) -> None:
        # A stale id (the stream already closed) is refused by the C side's generation check, so
        # the context of the slot's next occupant is never touched.
        if self._ring is not None and self._lib.fw_stream_close(self._ring, stream_id) == 0:
            slot = stream_id & _SID_SLOT
            self._stream_ctx[slot] = _NO_STREAM
            st = self._stream_sock[slot]
            self._stream_sock[slot] = None
            if st is not None:
                st.stream = 0  # the socket may open a new stream

    def _streams_unavailable(self) -> str:
        if self._closed or not self._initialized:
            return "io_uring: the provider is not initialized"
        if self._sevs is None:
            return "io_uring: streams need multishot receive over a provided-buffer ring (Linux 6.0+)"
        return "io_uring: set_stream_handlers() must be called before stream_open()"

    # ------------------------------------------------------------------ registered buffers
    def register_buffer(self, buffer: bytearray | memoryview) -> int:
        buffer_id = super().register_buffer(buffer)
        if buffer_id < 0 or not self.initialized or not self._buffer_slots:
            return buffer_id
        mv = self._buffers[buffer_id]
        slot = self._buffer_slots.popleft()
        handle = self._ffi.from_buffer(mv, require_writable=True)
        if self._lib.fw_update_buffer(self._ring, slot, handle, len(mv)) != 0:
            self._buffer_slots.appendleft(slot)  # e.g. RLIMIT_MEMLOCK: stays a user-space registration
            return buffer_id
        self._fixed_buffer_of[buffer_id] = slot
        self._fixed_base[buffer_id] = (slot, handle, len(mv))
        return buffer_id

    def unregister_buffer(self, buffer_id: int) -> bool:
        slot = self._fixed_buffer_of.pop(buffer_id, None)
        self._fixed_base.pop(buffer_id, None)
        if slot is not None and self._ring is not None:
            # In-flight operations keep the kernel's reference (and their memoryview) until done.
            self._lib.fw_update_buffer(self._ring, slot, self._ffi.NULL, 0)
            self._buffer_slots.append(slot)
        return super().unregister_buffer(buffer_id)

    def send_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        return self._registered_op(_SEND, sock, buffer_id, offset, length, callback, context)

    def recv_async_registered(
        self,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        max_length: int,
        callback: CompletionCallback | None = None,
        context: Any = None,
    ) -> int:
        fixed = self._fixed_base.get(buffer_id)
        if (
            fixed is None
            or not self._initialized
            or self._closed
            or offset < 0
            or max_length <= 0
            or offset + max_length > fixed[2]
        ):  # the general path reports every error case
            return self._registered_op(_RECV, sock, buffer_id, offset, max_length, callback, context)
        # The hot path of a session's receive loop: the operation holds the whole buffer's handle
        # (which keeps the memory alive until the CQE) and C gets base + offset.
        slot, base, _size = fixed
        op = self._new_op(_RECV, sock, base, callback, context)
        entry = op.entry
        if entry is None:
            return op.op_id
        op.address = slot
        op.token = base
        st: _UringSocket = entry.state
        args = (self._ring, st.io_fd, st.slot >= 0, base, offset, max_length, slot, op.op_id, -1)
        rc = self._prep(self._lib.fw_prep_read_fixed, *args)
        if rc < 0:
            self._fail(op, -rc)
        return op.op_id

    def _registered_op(
        self,
        op_type: OpType,
        sock: socket.socket,
        buffer_id: int,
        offset: int,
        length: int,
        callback: CompletionCallback | None,
        context: Any,
    ) -> int:
        if not self.initialized:
            self.last_error = "provider is not initialized"
            return 0
        view = self._registered_slice(buffer_id, offset, length)
        if view is None:
            self.last_error = f"buffer {buffer_id} [{offset}:{offset + length}] is not registered"
            return 0
        slot = self._fixed_buffer_of.get(buffer_id)
        if slot is None:  # the kernel refused the registration: plain send/recv on the view
            if op_type is _SEND:
                return self.send_async(sock, view, callback, context)
            return self.recv_async(sock, view, callback, context)
        op = self._new_op(op_type, sock, as_memoryview(view), callback, context)
        if op.entry is None:
            return op.op_id
        op.address = slot  # a registered-buffer op: `address` holds the fixed-buffer index
        if op_type is _SEND:
            self._backend_send(op)
        elif length == 0:
            self._complete(op, Status.ERROR, 0, ErrorCode.BUFFER_TOO_SMALL)
        else:
            self._backend_recv(op)
        return op.op_id

    # ------------------------------------------------------------------ options, statistics
    def _features(self) -> frozenset[str]:
        feats = super()._features() | self._features_found
        # Streams receive through the buffer ring: off with provided buffers, or when asked.
        if self._sevs is not None and self._provided_on_arrival and not self._streams_off:
            feats |= {Feature.STREAMS}
        return feats

    def _backend_set_option(self, name: str, value: Any) -> bool:
        if name == "streams":  # False: sessions use per-operation receives and sends
            self._streams_off = not value
            return True
        if name == "provided_buffer_count":  # applies at initialize
            if type(value) is not int or not 1 <= value <= 32768 or value & (value - 1) or self._ring:
                return False
            self._pbuf_count = value
            return True
        if name == "fixed_files":
            if value and "FixedFileSet" not in self._features_found and self._ring is not None:
                return False
            self._use_fixed_files = bool(value)  # applies to sockets registered from now on
            return True
        return False

    def _backend_statistics(self) -> dict[str, Any]:
        ring = self._ring
        counters: dict[str, Any] = {"submits": 0, "enters": 0, "sq_full": 0, "cqe_reaped": 0, "sqes": 0}
        if ring is not None:
            counters = {
                "submits": ring.submits,
                "enters": ring.enters,
                "sq_full": ring.sq_full,
                "cqe_reaped": ring.cqe_reaped,
                "sqes": ring.sqes,
                "inflight_requests": ring.inflight,
                "linked_timeouts_fired": ring.timeouts_fired,
                "sq_entries": ring.sq_entries,
                "cq_entries": ring.cq_entries,
                "streams_open": ring.streams_open,
                "stream_rearms": ring.stream_rearms,
                "stream_enobufs": ring.stream_enobufs,
                "stream_short_sends": ring.stream_short_sends,
                "stream_read_pauses": ring.stream_pauses,
                "provided_incremental": bool(ring.pbuf_inc),
            }
        counters.update(
            {
                "multishot_accepts": self._multishot_accepts,
                "short_sends": self._short_sends,
                "provided_buffers_in_use": (ring.pbuf_lent if ring is not None else 0) + self._pbuf_out,
                "provided_buffer_count": self._pbuf_count if self._pbuf_view is not None else 0,
                "provided_enobufs": self._enobufs,
                "provided_parked": len(self._starved),
                "fixed_buffers": len(self._fixed_buffer_of),
                "fixed_files": sum(
                    1 for e in self._sockets.values() if e.state is not None and e.state.slot >= 0
                ),
            }
        )
        return counters


__all__ = ["DISABLE_ENV", "NOT_BUILT_REASON", "IoUringProvider"]
