"""io_uring-specific behaviour beyond the shared contract suite (which io_uring also passes).

Real rings, real loopback sockets. Skipped, with the probe's reason, where io_uring cannot run.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from framework.io import BackendUnavailable, CompletionResult, ErrorCode, OpType, Status, create_provider
from framework.io.backends import io_uring as uring_mod
from framework.io.backends.io_uring import DISABLE_ENV, NOT_BUILT_REASON, IoUringProvider
from framework.io.provider import SendOperation
from tests.support.provider import Collector, StreamReader, pattern, pump


def _unavailable_reason() -> str:
    try:
        IoUringProvider.probe()
    except BackendUnavailable as exc:
        return exc.reason
    return ""


REASON = _unavailable_reason()
needs_uring = pytest.mark.skipif(bool(REASON), reason=f"io_uring unavailable: {REASON}")


class Buf(bytearray):
    """A bytearray that can be weakly referenced, to watch who keeps it alive."""


class RecordingBuf(Buf):
    """Records its content when freed: shows what the kernel wrote into a buffer nobody but the
    provider referenced."""

    def __init__(self, size: int, tag: int, sink: dict[int, bytes]) -> None:
        super().__init__(size)
        self.tag = tag
        self.sink = sink

    def __del__(self) -> None:
        self.sink[self.tag] = bytes(self).rstrip(b"\0")


def make_uring(max_connections: int = 256, queue: int = 128) -> IoUringProvider:
    p = create_provider("io_uring", fallback=False)
    assert isinstance(p, IoUringProvider)
    assert p.initialize(max_connections, queue), p.last_error
    return p


@pytest.fixture
def uring() -> Iterator[IoUringProvider]:
    p = make_uring()
    yield p
    p.shutdown()
    assert p.get_statistics().backend_specific["callback_errors"] == 0


@pytest.fixture
def pairs() -> Iterator[list[socket.socket]]:
    owned: list[socket.socket] = []
    yield owned
    for s in owned:
        s.close()


def socketpairs(owned: list[socket.socket], n: int) -> list[tuple[socket.socket, socket.socket]]:
    out = []
    for _ in range(n):
        a, b = socket.socketpair()
        owned += (a, b)
        out.append((a, b))
    return out


def registered_listener(provider: IoUringProvider, owned: list[socket.socket], backlog: int) -> socket.socket:
    """A loopback listener owned by the test and registered with `provider`."""
    lst = socket.socket()
    owned.append(lst)
    lst.bind(("127.0.0.1", 0))
    lst.listen(backlog)
    assert provider.register_socket(lst)
    return lst


# ------------------------------------------------------------------------------ scale and batching
@needs_uring
def test_ten_thousand_recvs_in_flight_all_complete(pairs):
    """10,000 recvs in the kernel at once (SQ flushed many times, CQ overflowing into NODROP);
    then data arrives for all of them and each completes exactly once with its own bytes."""
    p = make_uring(max_connections=10_100, queue=256)
    try:
        socks = [s for pair in socketpairs(pairs, 5_000) for s in pair]
        done = Collector()
        bufs: dict[int, bytearray] = {}
        for i, s in enumerate(socks):
            assert p.register_socket(s)
            bufs[i] = bytearray(16)
            assert p.recv_async(s, bufs[i], done, context=i) > 0
        results: list[CompletionResult] = []
        assert p.process_completions(0, 64, results) == 0  # everything is waiting in the kernel
        st = p.get_statistics()
        assert st.pending_operations == 10_000
        assert st.backend_specific["sq_full"] > 0  # 10,000 SQEs went through a 256-entry SQ
        for i in range(len(socks)):
            peer = socks[i ^ 1]
            peer.send(b"%08d" % i)  # each socket's peer writes that socket's number
        pump(p, lambda: len(done) == 10_000, max_results=1024)
        assert sorted(done.contexts) == list(range(10_000))
        for r in done.results:
            assert (r.status, r.bytes_transferred) == (Status.SUCCESS, 8)
            assert bytes(bufs[r.user_context][:8]) == b"%08d" % r.user_context
        assert p.get_statistics().pending_operations == 0
    finally:
        p.shutdown()


@needs_uring
def test_submission_queue_smaller_than_a_batch(pairs):
    p = make_uring(max_connections=128, queue=4)
    try:
        assert p.get_statistics().backend_specific["sq_entries"] == 4
        socks = socketpairs(pairs, 40)
        done = Collector()
        bufs = []
        for a, b in socks:  # 80 SQEs (a recv and a send per pair) through a 4-entry SQ
            assert p.register_socket(a) and p.register_socket(b)
            bufs.append(bytearray(32))
            assert p.recv_async(b, bufs[-1], done) > 0
        for i, (a, _b) in enumerate(socks):
            assert p.send_async(a, pattern(32, seed=i), done) > 0
        pump(p, lambda: len(done) == 80)
        assert all(r.ok and r.bytes_transferred == 32 for r in done.results)
        assert bufs == [bytearray(pattern(32, seed=i)) for i in range(40)]
        assert p.get_statistics().backend_specific["sq_full"] > 0
    finally:
        p.shutdown()


@needs_uring
def test_send_batch_through_a_tiny_submission_queue(pairs):
    """send_batch_async prepares a flush's SQEs in one C call: 300 sends (more than the first argument
    arrays hold) through a 4-entry SQ, plus a second send on one socket (it waits for the first)
    and one on an unregistered socket; each completes once through its own callback and context."""
    p = make_uring(max_connections=700, queue=4)
    try:
        socks = socketpairs(pairs, 300)
        for a, _b in socks:
            assert p.register_socket(a)
        stray, _peer = socketpairs(pairs, 1)[0]
        done = Collector()
        ops = [
            SendOperation(a, pattern(48, seed=i), context=i, callback=done) for i, (a, _b) in enumerate(socks)
        ]
        ops.append(SendOperation(socks[0][0], bytearray(b"-tail"), context="tail", callback=done))
        ops.append(SendOperation(stray, b"nowhere", context="stray", callback=done))
        assert p.send_batch_async(ops) == 302
        pump(p, lambda: len(done) == 302)
        by_ctx = dict(zip(done.contexts, done.results, strict=True))
        assert by_ctx["stray"].error_code == ErrorCode.SOCKET_NOT_REGISTERED
        assert by_ctx["tail"].ok and by_ctx["tail"].bytes_transferred == 5
        for i, (_a, b) in enumerate(socks):
            assert by_ctx[i].ok and by_ctx[i].bytes_transferred == 48
            want = pattern(48, seed=i) + (b"-tail" if i == 0 else b"")
            b.settimeout(10)
            got = b""
            while len(got) < len(want):
                got += b.recv(len(want) - len(got))
            assert got == want
        st = p.get_statistics()
        assert st.backend_specific["sq_full"] > 0 and st.pending_operations == 0
    finally:
        p.shutdown()


@needs_uring
def test_one_kernel_enter_carries_a_batch(uring, pairs):
    socks = [s for pair in socketpairs(pairs, 50) for s in pair]
    for s in socks:
        assert uring.register_socket(s)
    done = Collector()
    for s in socks[::2]:
        uring.recv_async(s, bytearray(8), done)
    before = uring.get_statistics().backend_specific
    results: list[CompletionResult] = []
    uring.process_completions(0, 64, results)
    after = uring.get_statistics().backend_specific
    assert after["sqes"] - before["sqes"] == 0  # SQEs are counted when prepared ...
    assert after["submits"] - before["submits"] == 1  # ... and 50 reach the kernel in one submit
    assert after["enters"] - before["enters"] == 1


@needs_uring
def test_sends_on_one_socket_stay_in_order_through_short_writes(uring, pairs):
    """Many large sends posted at once on one socket with a tiny send buffer: the kernel would
    interleave two short sends in flight, so the backend must keep them in posting order."""
    a, b = socketpairs(pairs, 1)[0]
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    assert uring.register_socket(a) and uring.register_socket(b)
    chunks = [pattern(64 * 1024, seed=i) for i in range(12)]
    done = Collector()
    reader = StreamReader(uring, b, sum(map(len, chunks)), chunk=8192)
    ids = [uring.send_async(a, c, done) for c in chunks]
    pump(uring, lambda: len(done) == len(chunks) and reader.done)
    assert [r.operation_id for r in done.results] == ids
    assert all(r.ok and r.bytes_transferred == 64 * 1024 for r in done.results)
    assert bytes(reader.data) == b"".join(chunks)


# ------------------------------------------------------------------------------ memory safety
@needs_uring
def test_dropped_recv_buffers_stay_pinned_until_completion(uring, pairs):
    socks = socketpairs(pairs, 20)
    watched: list[weakref.ref[Buf]] = []
    freed_with: dict[int, bytes] = {}
    done = Collector()
    for i, (a, b) in enumerate(socks):
        assert uring.register_socket(a) and uring.register_socket(b)
        buf = RecordingBuf(64, i, freed_with)
        watched.append(weakref.ref(buf))
        assert uring.recv_async(b, buf, done, context=i) > 0
        del buf  # the caller lets go while the kernel holds the address
    results: list[CompletionResult] = []
    uring.process_completions(0, 64, results)  # submitted: the kernel now owns the buffers
    gc.collect()
    assert all(w() is not None for w in watched) and freed_with == {}
    garbage = [bytearray(64) for _ in range(10_000)]  # churn the allocator meanwhile
    for i, (a, _b) in enumerate(socks):
        a.send(b"payload-%d" % i)
    pump(uring, lambda: len(done) == len(socks))
    del garbage
    gc.collect()
    assert all(w() is None for w in watched)  # released once complete: nothing leaks
    # What the kernel wrote was in each buffer when the provider let go of it.
    assert freed_with == {i: b"payload-%d" % i for i in range(len(socks))}
    assert all(r.bytes_transferred == len(b"payload-%d" % r.user_context) for r in done.results)


@needs_uring
def test_dropped_send_buffer_is_sent_intact(uring, pairs):
    a, b = socketpairs(pairs, 1)[0]
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    assert uring.register_socket(a) and uring.register_socket(b)
    data = Buf(pattern(512 * 1024, seed=3))
    ref = weakref.ref(data)
    done = Collector()
    assert uring.send_async(a, data, done) > 0
    del data
    results: list[CompletionResult] = []
    uring.process_completions(0, 64, results)  # in flight, far larger than the socket buffer
    gc.collect()
    assert ref() is not None
    reader = StreamReader(uring, b, 512 * 1024)
    pump(uring, lambda: len(done) == 1 and reader.done)
    assert done.results[0].bytes_transferred == 512 * 1024
    assert bytes(reader.data) == pattern(512 * 1024, seed=3)
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------------------------ fixed buffers, files
@needs_uring
def test_echo_through_fixed_buffers(uring, pairs):
    if not uring.supports_feature("BufferRegistration"):
        pytest.skip("this kernel refused sparse fixed-buffer registration")
    a, b = socketpairs(pairs, 1)[0]
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    assert uring.register_socket(a) and uring.register_socket(b)
    out_buf = bytearray(pattern(256 * 1024, seed=9))
    in_buf = bytearray(256 * 1024)
    out_id = uring.register_buffer(out_buf)
    in_id = uring.register_buffer(in_buf)
    assert out_id >= 0 and in_id >= 0
    assert uring.get_statistics().backend_specific["fixed_buffers"] == 2
    done = Collector()
    send_id = uring.send_async_registered(a, out_id, 0, len(out_buf), done)
    assert send_id > 0
    received = 0

    def on_recv(result: CompletionResult, _ctx: Any) -> None:
        nonlocal received
        assert result.ok and result.bytes_transferred > 0
        received += result.bytes_transferred
        if received < len(in_buf):
            assert uring.recv_async_registered(b, in_id, received, len(in_buf) - received, on_recv) > 0

    assert uring.recv_async_registered(b, in_id, 0, len(in_buf), on_recv) > 0
    pump(uring, lambda: received == len(in_buf) and len(done) == 1)
    assert done.by_id(send_id).bytes_transferred == len(out_buf)  # short writes were continued
    assert in_buf == out_buf
    # ... and back, through a slice of the registered buffer.
    back = Collector()
    echo = bytearray(16)
    reader_id = uring.recv_async(a, echo, back)
    assert uring.send_async_registered(b, in_id, 100, 16, back) > 0
    pump(uring, lambda: len(back) == 2)
    assert back.by_id(reader_id).bytes_transferred == 16 and echo == out_buf[100:116]
    assert uring.unregister_buffer(out_id) and uring.unregister_buffer(in_id)
    assert uring.get_statistics().backend_specific["fixed_buffers"] == 0
    assert uring.send_async_registered(a, out_id, 0, 1) == 0  # gone


@needs_uring
def test_fixed_files_echo_and_release(uring, pairs):
    if not uring.supports_feature("FixedFileSet"):
        pytest.skip("this kernel refused a sparse fixed-file table")
    assert uring.set_option("fixed_files", True)
    a, b = socketpairs(pairs, 1)[0]
    assert uring.register_socket(a) and uring.register_socket(b)
    assert uring.get_statistics().backend_specific["fixed_files"] == 2
    reader = StreamReader(uring, b, 5)
    uring.send_async(a, b"fixed")
    pump(uring, lambda: reader.done)
    assert bytes(reader.data) == b"fixed"
    # Unregistering releases the slot, so closing the socket really closes it (peer sees EOF).
    assert uring.unregister_socket(a)
    assert uring.get_statistics().backend_specific["fixed_files"] == 1
    a.close()
    eof = StreamReader(uring, b, 1)
    pump(uring, lambda: eof.done)
    assert eof.eof


# ------------------------------------------------------------------------------ accept, timeouts
@needs_uring
def test_multishot_accept_queues_extra_connections(uring, pairs):
    lst = registered_listener(uring, pairs, 64)
    first = Collector()
    assert uring.accept_async(lst, first) > 0
    clients = []
    for _ in range(5):
        c = socket.create_connection(lst.getsockname(), timeout=10)
        pairs.append(c)
        clients.append(c.getsockname())
    pump(uring, lambda: len(first) == 1)
    rest = Collector()
    for _ in range(4):
        assert uring.accept_async(lst, rest) > 0
    pump(uring, lambda: len(rest) == 4)
    accepted = [r.accepted for r in first.results + rest.results]
    for conn, _addr in accepted:
        pairs.append(conn)
    assert sorted(addr for _conn, addr in accepted) == sorted(clients)
    assert all(r.op_type == OpType.ACCEPT and r.ok for r in first.results + rest.results)
    if uring.supports_feature("MultishotAccept"):
        assert uring.get_statistics().backend_specific["multishot_accepts"] == 5


@needs_uring
def test_timeouts_are_kernel_linked_timeouts(uring, pairs):
    _a, b = socketpairs(pairs, 1)[0]
    assert uring.register_socket(b)
    done = Collector()
    uring.recv_async(b, bytearray(8), done, timeout_ms=50)
    pump(uring, lambda: len(done) == 1)
    r = done.results[0]
    assert (r.status, r.error_code) == (Status.TIMEOUT, ErrorCode.CONNECTION_TIMEOUT)
    assert uring.get_statistics().backend_specific["linked_timeouts_fired"] == 1


# ------------------------------------------------------------------------------ shutdown
@needs_uring
def test_shutdown_with_operations_in_flight(pairs):
    p = make_uring()
    socks = socketpairs(pairs, 10)
    lst = registered_listener(p, pairs, 8)
    done = Collector()
    ids = [p.accept_async(lst, done)]
    for a, b in socks:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert p.register_socket(a) and p.register_socket(b)
        ids.append(p.recv_async(a, Buf(64), done))  # nobody writes to a
        ids.append(p.send_async(a, pattern(1 << 20), done))  # stuck: nobody reads b
        ids.append(p.send_async(a, b"queued behind it", done))
    results: list[CompletionResult] = []
    p.process_completions(0, 64, results)
    assert p.get_statistics().backend_specific["inflight_requests"] > 0
    p.shutdown()
    assert sorted(r.operation_id for r in done.results) == sorted(ids)  # each exactly once
    assert all(r.status == Status.CANCELLED for r in done.results), [
        r for r in done.results if r.status != Status.CANCELLED
    ]
    assert p.get_statistics().pending_operations == 0
    assert p._ring is None  # the ring was unmapped after every CQE came back
    assert p.process_completions(0, 8, results) < 0
    p.shutdown()  # idempotent


# ------------------------------------------------------------------------------ availability
def test_environment_switch_falls_back_to_epoll(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    with pytest.raises(BackendUnavailable, match=DISABLE_ENV):
        create_provider("io_uring", fallback=False)
    with structlog.testing.capture_logs() as logs:
        p = create_provider("auto")
    assert p.name == "epoll"
    chosen = [e for e in logs if e.get("event") == "io backend selected"]
    assert chosen and any(s.startswith("io_uring:") and DISABLE_ENV in s for s in chosen[-1]["skipped"])


def test_missing_extension_is_reported_and_falls_back(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(uring_mod, "_uring", None)
    with pytest.raises(BackendUnavailable) as info:
        IoUringProvider.probe()
    assert NOT_BUILT_REASON in info.value.reason
    assert create_provider("io_uring").name == "epoll"  # fallback=True walks the chain


def test_monkeypatched_probe_falls_back_to_epoll(monkeypatch):
    def refuse(cls) -> None:
        raise BackendUnavailable("io_uring", "io_uring_queue_init failed with EPERM (seccomp, simulated)")

    monkeypatch.setattr(IoUringProvider, "probe", classmethod(refuse))
    with structlog.testing.capture_logs() as logs:
        p = create_provider("auto")
    assert p.name == "epoll"
    skipped = next(e for e in logs if e.get("event") == "io backend selected")["skipped"]
    assert skipped == ["io_uring: io_uring_queue_init failed with EPERM (seccomp, simulated)"]


@needs_uring
def test_statistics_fields(uring):
    st = uring.get_statistics()
    assert st.backend == "io_uring"
    for key in (
        "submits",
        "enters",
        "sq_full",
        "cqe_reaped",
        "multishot_accepts",
        "fixed_buffers",
        "fixed_files",
    ):
        assert isinstance(st.backend_specific[key], int), key
    for feature in ("BatchSubmit", "LinkedTimeout", "AsyncCancel"):
        assert uring.supports_feature(feature), feature
    assert not uring.supports_feature("NoSuchFeature")


# ------------------------------------------------------------------------------ provided buffers
def tiny_ring_uring(count: int, size: int = 512, max_connections: int = 64) -> IoUringProvider:
    p = IoUringProvider()
    assert p.set_option("provided_buffer_count", count)
    assert p.set_option("provided_buffer_size", size)
    assert p.initialize(max_connections, 64), p.last_error
    assert p.supports_feature("ProvidedBuffers")
    assert p.get_statistics().backend_specific["provided_buffer_count"] == count
    return p


def provided_data(got: dict[int, bytes], failed: dict[int, CompletionResult] | None = None) -> Any:
    def on_recv(result: CompletionResult, ctx: int) -> None:
        if failed is not None and result.status != Status.SUCCESS:
            assert result.data is None
            failed[ctx] = result
            return
        assert result.status == Status.SUCCESS, result
        got[ctx] = bytes(result.data)

    return on_recv


@needs_uring
def test_waiting_provided_recvs_hold_no_ring_buffer(pairs):
    """Ten provided recvs wait on a ring of two buffers: if a waiting recv held a buffer, eight of
    them would fail to get one (-ENOBUFS) at submission."""
    p = tiny_ring_uring(2)
    try:
        socks = socketpairs(pairs, 10)
        got: dict[int, bytes] = {}
        for i, (_a, b) in enumerate(socks):
            assert p.register_socket(b)
            assert p.recv_async_provided(b, provided_data(got), context=i) > 0
        results: list[CompletionResult] = []
        for _ in range(3):
            assert p.process_completions(20, 64, results) == 0
        stats = p.get_statistics().backend_specific
        assert (stats["provided_enobufs"], stats["provided_buffers_in_use"]) == (0, 0)
        assert p.get_statistics().pending_operations == 10
        socks[3][0].send(b"three")
        pump(p, lambda: len(got) == 1)
        assert got == {3: b"three"}
    finally:
        p.shutdown()


@needs_uring
def test_empty_buffer_ring_parks_recvs_until_buffers_return(pairs):
    """Data on 12 sockets, a ring of 2 buffers and one result delivered per call: recvs meet an
    empty ring (-ENOBUFS), wait, are resubmitted as buffers come back, and every one completes
    with its own bytes; cancelling one of the waiting ones still works. (Where the kernel fills
    ring buffers incrementally a receive may get part of what arrived: each socket's receive is
    posted again until its 300 bytes are in.)"""
    p = tiny_ring_uring(2)
    try:
        socks = socketpairs(pairs, 12)
        got: dict[int, bytes] = {}
        failed: dict[int, CompletionResult] = {}
        ids = {}

        def on_recv(result: CompletionResult, i: int) -> None:
            if result.status != Status.SUCCESS:
                assert result.data is None
                failed[i] = result
                return
            got[i] = got.get(i, b"") + bytes(result.data)
            if len(got[i]) < 300:
                p.recv_async_provided(socks[i][1], on_recv, context=i)

        for i, (_a, b) in enumerate(socks):
            assert p.register_socket(b)
            ids[i] = p.recv_async_provided(b, on_recv, context=i)
        for i, (a, _b) in enumerate(socks):
            a.send(pattern(300, seed=i))
        results: list[CompletionResult] = []
        while p.get_statistics().backend_specific["provided_enobufs"] == 0:
            assert p.process_completions(50, 1, results) >= 0
        # One still pending (not one already completed and queued for delivery).
        victim = next(i for i in range(12) if i not in got and p.cancel(ids[i]))
        done = lambda: sum(len(got.get(i, b"")) == 300 for i in range(12)) == 11  # noqa: E731
        pump(p, lambda: done() and victim in failed, max_results=1)
        assert failed[victim].status == Status.CANCELLED
        assert set(got) == set(range(12)) - {victim}
        assert all(got[i] == pattern(300, seed=i) for i in got)
        # The cancelled recv consumed nothing: its bytes are still there for the next ones.
        p.recv_async_provided(socks[victim][1], on_recv, context=victim)
        pump(p, lambda: len(got.get(victim, b"")) == 300)
        assert got[victim] == pattern(300, seed=victim)
        assert p.process_completions(0, 64, results) >= 0  # releases the last delivered buffer
        stats = p.get_statistics().backend_specific
        assert stats["provided_buffers_in_use"] == 0 and stats["provided_parked"] == 0
    finally:
        p.shutdown()


@needs_uring
def test_provided_recv_larger_than_a_buffer_arrives_in_pieces(pairs):
    p = tiny_ring_uring(4, size=1024)
    try:
        ((a, b),) = socketpairs(pairs, 1)
        assert p.register_socket(b)
        data = pattern(10_000)
        a.sendall(data)
        received = bytearray()

        def on_recv(result: CompletionResult, _ctx: Any) -> None:
            assert result.status == Status.SUCCESS and 0 < result.bytes_transferred <= 1024
            received.extend(result.data)
            if len(received) < len(data):
                p.recv_async_provided(b, on_recv)

        p.recv_async_provided(b, on_recv)
        pump(p, lambda: len(received) == len(data))
        assert bytes(received) == data
    finally:
        p.shutdown()


@needs_uring
def test_provided_buffer_options_are_checked():
    p = IoUringProvider()
    assert not p.set_option("provided_buffer_count", 3)  # not a power of two
    assert not p.set_option("provided_buffer_size", 100)
    assert p.set_option("provided_buffer_count", 8)
    assert p.initialize(8, 16), p.last_error
    try:
        assert not p.set_option("provided_buffer_count", 16)  # the ring exists already
    finally:
        p.shutdown()


@needs_uring
def test_recv_waiting_for_ring_buffers_still_times_out(pairs):
    """The two buffers stay lent (results not delivered: max_results=0), so the third recv waits
    in user space after -ENOBUFS; its deadline still ends it, and its bytes stay in the socket.
    (512-byte messages fill a 512-byte buffer each, also where the kernel fills incrementally.)"""
    p = tiny_ring_uring(2)
    try:
        socks = socketpairs(pairs, 3)
        got: dict[int, bytes] = {}
        failed: dict[int, CompletionResult] = {}
        for i, (_a, b) in enumerate(socks):
            assert p.register_socket(b)
            timeout = 300 if i == 2 else None
            assert p.recv_async_provided(b, provided_data(got, failed), context=i, timeout_ms=timeout) > 0
        for i, (a, _b) in enumerate(socks):
            a.send(pattern(512, seed=i))
        results: list[CompletionResult] = []
        pump(p, lambda: p.get_statistics().failed_operations == 1, max_results=0)
        assert p.get_statistics().backend_specific["provided_enobufs"] >= 1
        pump(p, lambda: len(got) + len(failed) == 3)
        assert got == {0: pattern(512, seed=0), 1: pattern(512, seed=1)}
        assert (failed[2].status, failed[2].error_code) == (Status.TIMEOUT, ErrorCode.CONNECTION_TIMEOUT)
        p.recv_async_provided(socks[2][1], provided_data(got), context=2)
        pump(p, lambda: 2 in got)
        assert got[2] == pattern(512, seed=2)
        assert p.process_completions(0, 8, results) >= 0
        assert p.get_statistics().backend_specific["provided_buffers_in_use"] == 0
    finally:
        p.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the io_uring extension is Linux-only")
def test_the_c_side_compiles_without_warnings():
    """fw_uring.c (with fw_uring.h and fw_ring_public.h) is clean under -Wall -Wextra -Werror."""
    from framework.io.backends import _uring_build

    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "no C compiler: install gcc (make test installs what the project needs)"
    src = os.path.join(_uring_build.C_DIR, "fw_uring.c")
    proc = subprocess.run(
        [cc, "-fsyntax-only", *_uring_build.WARNINGS, "-Werror", "-I", _uring_build.C_DIR, src],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@needs_uring
def test_the_extension_offers_what_the_c_header_declares():
    """The Python-visible API is fw_uring.h's cffi part: every function declared there is in the
    built extension, and the C stream event kinds are the provider contract's."""
    import re

    from framework.io.backends import _uring, _uring_build
    from framework.io.provider import StreamEvent

    declared = re.findall(r"\b(fw_\w+)\(", _uring_build.cdef())
    assert len(declared) >= 30
    missing = [name for name in declared if not hasattr(_uring.lib, name)]
    assert missing == []
    lib = _uring.lib
    assert {kind.name: getattr(lib, f"FW_SEV_{kind.name}") for kind in StreamEvent} == {
        kind.name: kind.value for kind in StreamEvent
    }
