"""The provider contract suite: every runnable backend proves itself here.

Only the public AsyncIOProvider API is used, over real loopback sockets, so any correct backend
passes unchanged. Waits are bounded by generous deadlines; nothing asserts timing.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

import pytest

from framework.io import (
    AsyncIOProvider,
    CompletionResult,
    ErrorCode,
    OpType,
    RecvOperation,
    SendOperation,
    Status,
)
from tests.support.provider import WAIT_S, Collector, StreamReader, pattern, pump


def registered_pair(provider: AsyncIOProvider, make_pair, **kw) -> tuple[socket.socket, socket.socket]:
    client, server = make_pair(**kw)
    assert provider.register_socket(client)
    assert provider.register_socket(server)
    return client, server


def bound_unlistening_port(sockets: list[socket.socket]) -> tuple[str, int]:
    """A loopback port that is bound (so nobody else can take it) but not listening: connecting
    to it is refused."""
    s = socket.socket()
    sockets.append(s)
    s.bind(("127.0.0.1", 0))
    return s.getsockname()


def drain_all(provider: AsyncIOProvider, max_results: int = 64) -> list[CompletionResult]:
    """Everything already deliverable (short waits until one comes back empty)."""
    out: list[CompletionResult] = []
    results: list[CompletionResult] = []
    while provider.process_completions(20, max_results, results) > 0:
        out.extend(results)
    return out


# ---------------------------------------------------------------------------------- data transfer
def test_echo_many_messages(provider, make_pair):
    client, server = registered_pair(provider, make_pair)
    count = 300
    msgs = [struct.pack("!I", i) + pattern(1 + i % 200, i) for i in range(count)]
    total = sum(map(len, msgs))

    # Server: echo whatever arrives, in order (one recv posted at a time; sends may queue).
    sbuf = bytearray(4096)
    echoed = 0
    send_errors: list[CompletionResult] = []

    def on_server_send(result: CompletionResult, _ctx: Any) -> None:
        if result.status != Status.SUCCESS:
            send_errors.append(result)

    def on_server_recv(result: CompletionResult, _ctx: Any) -> None:
        nonlocal echoed
        if result.status == Status.CANCELLED:  # the last recv, at shutdown
            return
        assert result.status == Status.SUCCESS, result
        if result.bytes_transferred == 0:
            return
        chunk = bytes(sbuf[: result.bytes_transferred])
        echoed += len(chunk)
        assert provider.send_async(server, chunk, on_server_send) > 0
        provider.recv_async(server, sbuf, on_server_recv)

    provider.recv_async(server, sbuf, on_server_recv)
    reader = StreamReader(provider, client, total)
    sends = Collector()
    for i, m in enumerate(msgs):
        assert provider.send_async(client, m, sends, context=i) > 0
    pump(provider, lambda: reader.done and len(sends) == count)
    assert reader.error is None and not reader.eof
    assert bytes(reader.data) == b"".join(msgs)
    assert sorted(sends.contexts) == list(range(count))
    assert all(r.status == Status.SUCCESS and r.op_type == OpType.SEND for r in sends.results)
    assert sorted(r.bytes_transferred for r in sends.results) == sorted(map(len, msgs))
    assert not send_errors and echoed == total


def test_one_mib_through_tiny_send_buffer_arrives_intact(provider, make_pair):
    client, server = registered_pair(provider, make_pair, sndbuf=4096, rcvbuf=4096)
    payload = pattern(1 << 20, 7)
    sent = Collector()
    op_id = provider.send_async(client, payload, sent, context="big")
    assert op_id > 0
    reader = StreamReader(provider, server, len(payload), chunk=8192)
    pump(provider, lambda: reader.done and len(sent) == 1)
    result = sent.results[0]
    assert (result.status, result.bytes_transferred, result.operation_id) == (
        Status.SUCCESS,
        len(payload),
        op_id,
    )
    assert sent.contexts == ["big"]
    assert reader.error is None
    assert bytes(reader.data) == payload


def test_recv_completes_with_zero_bytes_when_peer_closes(provider, make_pair, collector):
    client, server = make_pair()
    assert provider.register_socket(server)
    buf = bytearray(16)
    op_id = provider.recv_async(server, buf, collector)
    client.sendall(b"last")
    client.shutdown(socket.SHUT_WR)
    pump(provider, lambda: len(collector) == 1)
    first = collector.by_id(op_id)
    assert first.status == Status.SUCCESS and bytes(buf[: first.bytes_transferred]) == b"last"
    second = provider.recv_async(server, buf, collector)
    pump(provider, lambda: len(collector) == 2)
    assert collector.by_id(second).status == Status.SUCCESS
    assert collector.by_id(second).bytes_transferred == 0


def test_many_accepts(provider, make_listener, sockets):
    lst = make_listener(backlog=128)
    assert provider.register_socket(lst)
    n_before, n_after = 20, 20
    accepted = Collector()
    # Connections already waiting in the backlog before any accept is posted...
    clients = []
    for _ in range(n_before):
        c = socket.create_connection(lst.getsockname(), timeout=WAIT_S)
        sockets.append(c)
        clients.append(c)
    for i in range(n_before + n_after):
        assert provider.accept_async(lst, accepted, context=i) > 0
    pump(provider, lambda: len(accepted) == n_before)
    # ...and connections arriving while accepts wait.
    for _ in range(n_after):
        c = socket.create_connection(lst.getsockname(), timeout=WAIT_S)
        sockets.append(c)
        clients.append(c)
    pump(provider, lambda: len(accepted) == n_before + n_after)
    assert sorted(accepted.contexts) == list(range(n_before + n_after))
    peers = set()
    for r in accepted.results:
        assert r.status == Status.SUCCESS and r.op_type == OpType.ACCEPT, r
        conn, addr = r.accepted
        sockets.append(conn)
        assert conn.getblocking() is False
        assert conn.getpeername() == addr
        peers.add(addr)
    assert peers == {c.getsockname() for c in clients}


def test_accepted_socket_is_usable_with_connect_async(provider, make_listener, sockets, collector):
    lst = make_listener()
    assert provider.register_socket(lst)
    client = socket.socket()
    sockets.append(client)
    assert provider.register_socket(client)
    accept_id = provider.accept_async(lst, collector)
    connect_id = provider.connect_async(client, lst.getsockname(), collector, timeout_ms=int(WAIT_S * 1000))
    pump(provider, lambda: len(collector) == 2)
    assert collector.by_id(connect_id).status == Status.SUCCESS
    assert collector.by_id(connect_id).op_type == OpType.CONNECT
    conn, _ = collector.by_id(accept_id).accepted
    sockets.append(conn)
    assert provider.register_socket(conn)
    reader = StreamReader(provider, conn, 5)
    provider.send_async(client, b"hello")
    pump(provider, lambda: reader.done)
    assert bytes(reader.data) == b"hello"


# ---------------------------------------------------------------------------------- errors
def test_connect_to_closed_port_is_refused(provider, sockets, collector):
    address = bound_unlistening_port(sockets)
    client = socket.socket()
    sockets.append(client)
    assert provider.register_socket(client)
    op_id = provider.connect_async(client, address, collector, context="c", timeout_ms=int(WAIT_S * 1000))
    assert op_id > 0
    pump(provider, lambda: len(collector) == 1)
    r = collector.results[0]
    assert (r.status, r.error_code, r.operation_id) == (Status.ERROR, ErrorCode.CONNECTION_REFUSED, op_id)
    assert r.error_code == 1001 and r.user_context == "c" and r.op_type == OpType.CONNECT


def _reset(peer: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def test_peer_reset_fails_a_waiting_recv(provider, make_pair, collector):
    client, server = make_pair()
    assert provider.register_socket(server)
    op_id = provider.recv_async(server, bytearray(64), collector)
    assert op_id > 0
    drain_all(provider)  # the recv is now waiting for data
    assert len(collector) == 0
    _reset(client)
    pump(provider, lambda: len(collector) == 1)
    r = collector.results[0]
    assert (r.status, r.error_code) == (Status.ERROR, ErrorCode.CONNECTION_RESET)
    assert r.error_code == 1002


def test_peer_reset_fails_a_send(provider, make_pair, collector):
    client, server = make_pair()
    assert provider.register_socket(server)
    _reset(client)
    # Linux processes a loopback RST within close(); XNU/FreeBSD and Windows may do it a little
    # later, so a send or two may still succeed (into the void). A later one must fail as a reset
    # (on XNU the send sees EPIPE, which the contract also calls CONNECTION_RESET).
    for attempt in range(1, 51):
        op_id = provider.send_async(server, b"x" * 1024, collector)
        pump(provider, lambda n=attempt: len(collector) == n)
        r = collector.by_id(op_id)
        if r.status != Status.SUCCESS:
            break
        time.sleep(0.01)
    assert (r.status, r.error_code) == (Status.ERROR, ErrorCode.CONNECTION_RESET)


def _saturated_listener(make_listener, sockets: list[socket.socket]) -> socket.socket:
    """A listener whose accept backlog is full, so a further connect stays in progress. How many
    connections a backlog of 0 holds differs per OS (Linux 1, BSD/macOS a few, Windows picks its
    own), so fillers connect until one of them stays pending."""
    lst = make_listener(backlog=0)
    for _ in range(64):
        filler = socket.socket(lst.family)
        sockets.append(filler)
        filler.setblocking(False)
        filler.connect_ex(lst.getsockname())
        if not select.select([], [filler], [], 0.2)[1]:
            return lst  # ignored (Linux, macOS) or being retried (Windows): the backlog is full
    pytest.skip("the listen backlog never filled up: a connect here cannot be made to hang")


def test_connect_timeout(provider, make_listener, sockets, collector):
    lst = _saturated_listener(make_listener, sockets)
    client = socket.socket()
    sockets.append(client)
    assert provider.register_socket(client)
    op_id = provider.connect_async(client, lst.getsockname(), collector, timeout_ms=200)
    pump(provider, lambda: len(collector) == 1)
    r = collector.by_id(op_id)
    assert (r.status, r.error_code, r.op_type) == (
        Status.TIMEOUT,
        ErrorCode.CONNECTION_TIMEOUT,
        OpType.CONNECT,
    )


def test_recv_timeout_loses_no_data(provider, make_pair, collector):
    client, server = registered_pair(provider, make_pair)
    buf = bytearray(32)
    op_id = provider.recv_async(server, buf, collector, context="t", timeout_ms=100)
    pump(provider, lambda: len(collector) == 1)
    r = collector.by_id(op_id)
    assert (r.status, r.error_code, r.bytes_transferred) == (Status.TIMEOUT, ErrorCode.CONNECTION_TIMEOUT, 0)
    assert r.user_context == "t"
    # The socket still works and the timed-out recv consumed nothing.
    client.sendall(b"after")
    reader = StreamReader(provider, server, 5)
    pump(provider, lambda: reader.done)
    assert bytes(reader.data) == b"after"


def test_timeout_fires_while_the_loop_is_never_idle(provider, make_pair, collector):
    _client, server = registered_pair(provider, make_pair)
    op_id = provider.recv_async(server, bytearray(8), collector, timeout_ms=50)
    spins = 0

    def busy(result: CompletionResult, _ctx: Any) -> None:  # a completion is always ready
        nonlocal spins
        spins += 1
        if not collector.results:
            provider.post(busy)

    provider.post(busy)
    pump(provider, lambda: len(collector) == 1)
    assert collector.by_id(op_id).status == Status.TIMEOUT
    assert spins >= 1


def test_cancel(provider, make_pair, collector):
    _client, server = registered_pair(provider, make_pair)
    op_id = provider.recv_async(server, bytearray(8), collector, context="x")
    assert provider.cancel(op_id) is True
    pump(provider, lambda: len(collector) == 1)
    r = collector.results[0]
    assert (r.status, r.operation_id, r.user_context) == (Status.CANCELLED, op_id, "x")
    assert provider.cancel(op_id) is False  # already completed
    assert provider.cancel(987654321) is False  # never existed
    assert drain_all(provider) == []  # completed exactly once


def test_operation_on_unregistered_socket(provider, make_pair, collector):
    client, _server = make_pair()
    op_id = provider.send_async(client, b"data", collector, context="u")
    assert op_id > 0
    recv_id = provider.recv_async(client, bytearray(4), collector)
    pump(provider, lambda: len(collector) == 2)
    for oid in (op_id, recv_id):
        r = collector.by_id(oid)
        assert (r.status, r.error_code) == (Status.ERROR, ErrorCode.SOCKET_NOT_REGISTERED)
        assert r.error_code == 3001
    assert collector.by_id(op_id).user_context == "u"


# ---------------------------------------------------------------------------------- delivery
def test_process_completions_returns_zero_on_timeout(provider, make_pair):
    registered_pair(provider, make_pair)
    drain_all(provider)
    results: list[CompletionResult] = [CompletionResult(Status.SUCCESS)]  # stale content is cleared
    assert provider.process_completions(0, 16, results) == 0
    assert results == []
    assert provider.process_completions(30, 16, results) == 0
    assert results == []


def test_more_completions_than_max_results_are_delivered_across_calls(provider, make_pair):
    client, server = registered_pair(provider, make_pair)
    ids = set()
    for i in range(15):
        ids.add(provider.post(None, i))
        ids.add(provider.send_async(client, b"m%d" % i))
    assert 0 not in ids and len(ids) == 30
    got: list[int] = []
    results: list[CompletionResult] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < 30 and time.monotonic() < deadline:
        n = provider.process_completions(50, 4, results)
        assert 0 <= n <= 4 and n == len(results)
        got.extend(r.operation_id for r in results)
    assert sorted(got) == sorted(ids)  # none lost, none twice
    assert drain_all(provider) == []
    reader = StreamReader(provider, server, sum(len(b"m%d" % i) for i in range(15)))
    pump(provider, lambda: reader.done)
    assert bytes(reader.data) == b"".join(b"m%d" % i for i in range(15))


@pytest.mark.allows_callback_errors
def test_raising_callback_is_counted_and_loop_goes_on(provider):
    seen = []

    def bad(result: CompletionResult, ctx: Any) -> None:
        seen.append(ctx)
        raise RuntimeError("handler bug")

    before = provider.get_statistics().backend_specific["callback_errors"]
    provider.post(bad, "a")
    provider.post(lambda r, c: seen.append(c), "b")
    provider.post(bad, "c")
    delivered = pump(provider, lambda: len(seen) == 3)
    assert seen == ["a", "b", "c"]
    assert [r.user_context for r in delivered] == ["a", "b", "c"]
    assert all(r.status == Status.SUCCESS and r.op_type == OpType.POST for r in delivered)
    assert provider.get_statistics().backend_specific["callback_errors"] == before + 2


def test_shutdown_cancels_everything_pending(provider, make_pair, make_listener, sockets, collector):
    _client, server = registered_pair(provider, make_pair)
    lst = make_listener(backlog=0)
    assert provider.register_socket(lst)
    ids = {
        provider.recv_async(server, bytearray(8), collector, context="recv"),
        provider.recv_async(server, bytearray(8), collector, context="recv2", timeout_ms=60_000),
        provider.accept_async(lst, collector, context="accept"),
        provider.post(collector, "post"),
    }
    assert 0 not in ids and len(ids) == 4
    provider.shutdown()
    # Every callback ran before shutdown returned, each exactly once, as CANCELLED.
    assert sorted(r.operation_id for r in collector.results) == sorted(ids)
    assert all(r.status == Status.CANCELLED for r in collector.results)
    assert sorted(collector.contexts) == ["accept", "post", "recv", "recv2"]
    provider.shutdown()  # idempotent
    assert len(collector) == 4


def test_process_completions_after_shutdown_reports_failure(provider):
    provider.shutdown()
    results: list[CompletionResult] = []
    assert provider.process_completions(0, 8, results) < 0
    assert len(results) >= 1 and results[0].status == Status.ERROR
    assert results[0].error_code != 0
    assert isinstance(results[0].user_context, str) and results[0].user_context  # says what failed
    assert provider.post(None) == 0


def test_statistics_add_up(provider, make_pair, collector):
    client, server = registered_pair(provider, make_pair)
    other, _ = make_pair()  # never registered
    base = provider.get_statistics()
    assert base.backend == provider.name == provider.get_backend_name()
    assert base.active_connections == 2
    assert base.pending_operations == 0

    for i in range(3):
        provider.send_async(client, b"abc", collector, context=i)  # 3 successes
    provider.post(collector, "p")  # a post is a successful completion too
    provider.send_async(other, b"x", collector)  # ERROR: not registered
    provider.recv_async(server, bytearray(1), collector)  # consumes one byte: SUCCESS
    cancelled = provider.recv_async(client, bytearray(1), collector)
    provider.cancel(cancelled)
    waiting = provider.recv_async(client, bytearray(1), collector)  # stays pending
    pump(provider, lambda: len(collector) == 7)

    st = provider.get_statistics()
    assert st.completed_operations - base.completed_operations == 5
    assert st.failed_operations - base.failed_operations == 1
    assert st.backend_specific["cancelled_operations"] - base.backend_specific["cancelled_operations"] == 1
    assert st.pending_operations == 1
    assert st.active_connections == 2
    assert st.average_latency_ms >= 0.0
    assert provider.unregister_socket(client)
    pump(provider, lambda: len(collector) == 8)
    assert collector.by_id(waiting).status == Status.CANCELLED
    st = provider.get_statistics()
    assert (st.pending_operations, st.active_connections) == (0, 1)


# ---------------------------------------------------------------------------------- post
@pytest.mark.timeout(30)
def test_post_from_another_thread_wakes_a_blocked_wait(provider):
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def poster() -> None:
        time.sleep(0.2)  # likely (not necessarily) after the main thread blocks; either way it must wake
        provider.post(lambda r, c: ran_on.append(threading.get_ident()), "wake")

    t = threading.Thread(target=poster)
    t.start()
    results: list[CompletionResult] = []
    n = provider.process_completions(-1, 8, results)
    t.join(WAIT_S)
    assert n == 1
    assert results[0].user_context == "wake" and results[0].op_type == OpType.POST
    assert ran_on == [loop_thread]


@pytest.mark.timeout(60)
def test_post_from_many_threads_delivers_each_exactly_once(provider):
    threads, per_thread = 8, 500
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    wrong_thread: list[int] = []

    def on_post(result: CompletionResult, ctx: tuple[int, int]) -> None:
        if threading.get_ident() != loop_thread:
            wrong_thread.append(threading.get_ident())
        seen.append(ctx)

    start = threading.Barrier(threads)

    def worker(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            assert provider.post(on_post, (k, i)) > 0

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    pump(provider, lambda: len(seen) >= threads * per_thread, timeout_s=40, max_results=256)
    for t in ts:
        t.join(WAIT_S)
    assert drain_all(provider) == []
    assert sorted(seen) == [(k, i) for k in range(threads) for i in range(per_thread)]
    assert wrong_thread == []


# ---------------------------------------------------------------------------------- batches, buffers
def test_send_and_recv_batches(provider, make_pair):
    (c1, s1), (c2, s2) = registered_pair(provider, make_pair), registered_pair(provider, make_pair)
    sent = Collector()
    parts = [b"alpha-", b"beta-", b"gamma"]
    ops = [SendOperation(c1, p, context=("c1", i), callback=sent) for i, p in enumerate(parts)]
    ops.append(SendOperation(c2, bytearray(b"solo"), context=("c2", 0), callback=sent))
    assert provider.send_batch_async(ops) == 4
    pump(provider, lambda: len(sent) == 4)
    assert all(r.status == Status.SUCCESS for r in sent.results)
    by_ctx = dict(zip(sent.contexts, sent.results, strict=True))
    assert [by_ctx[("c1", i)].bytes_transferred for i in range(3)] == [len(p) for p in parts]
    assert by_ctx[("c2", 0)].bytes_transferred == 4

    got = Collector()
    b1, b2 = bytearray(64), bytearray(64)
    recv_ops = [RecvOperation(s1, b1, "s1", got), RecvOperation(s2, b2, "s2", got)]
    assert provider.recv_batch_async(recv_ops) == 2
    pump(provider, lambda: len(got) == 2)
    data = {ctx: r.bytes_transferred for ctx, r in zip(got.contexts, got.results, strict=True)}
    # Loopback delivers the three small sends of c1 before the recv: read the rest if split.
    stream1 = bytes(b1[: data["s1"]])
    if len(stream1) < 16:
        reader = StreamReader(provider, s1, 16 - len(stream1))
        pump(provider, lambda: reader.done)
        stream1 += bytes(reader.data)
    assert stream1 == b"".join(parts)
    assert bytes(b2[: data["s2"]]) == b"solo"


def test_registered_buffers(provider, make_pair, collector):
    client, server = registered_pair(provider, make_pair)
    out_buf, in_buf = bytearray(4096), bytearray(4096)
    out_id, in_id = provider.register_buffer(out_buf), provider.register_buffer(in_buf)
    assert out_id >= 0 and in_id >= 0 and out_id != in_id
    message = pattern(1000, 3)
    out_buf[96 : 96 + len(message)] = message
    recv_id = provider.recv_async_registered(server, in_id, 200, 2048, collector, context="in")
    send_id = provider.send_async_registered(client, out_id, 96, len(message), collector, context="out")
    assert recv_id > 0 and send_id > 0
    pump(provider, lambda: len(collector) == 2)
    assert collector.by_id(send_id).bytes_transferred == len(message)
    got = collector.by_id(recv_id).bytes_transferred
    assert 0 < got <= len(message)
    assert bytes(in_buf[200 : 200 + got]) == message[:got]
    assert in_buf[:200] == bytes(200)  # nothing written outside the slice
    # Out-of-range slices and unknown ids are refused without posting anything.
    assert provider.send_async_registered(client, out_id, 4000, 200) == 0
    assert provider.recv_async_registered(server, 999_999, 0, 10) == 0
    assert provider.unregister_buffer(out_id) is True
    assert provider.unregister_buffer(out_id) is False
    assert provider.send_async_registered(client, out_id, 0, 10) == 0


def test_unregister_socket_cancels_its_pending_operations(provider, make_pair, collector):
    client, server = registered_pair(provider, make_pair)
    ids = [provider.recv_async(server, bytearray(8), collector, context=i) for i in range(3)]
    assert provider.unregister_socket(server) is True
    assert provider.unregister_socket(server) is False
    pump(provider, lambda: len(collector) == 3)
    assert sorted(r.operation_id for r in collector.results) == sorted(ids)
    assert all(r.status == Status.CANCELLED for r in collector.results)
    assert provider.get_statistics().active_connections == 1
    after = provider.send_async(server, b"x", collector)
    pump(provider, lambda: len(collector) == 4)
    assert collector.by_id(after).error_code == ErrorCode.SOCKET_NOT_REGISTERED
    # Registering again works, and the socket is usable.
    assert provider.register_socket(server)
    client.sendall(b"again")
    reader = StreamReader(provider, server, 5)
    pump(provider, lambda: reader.done)
    assert bytes(reader.data) == b"again"


def test_socket_closed_without_unregister_can_be_unregistered(provider, make_pair):
    _client, server = registered_pair(provider, make_pair)
    server.close()
    assert provider.unregister_socket(server) is True  # found by identity although closed
    assert provider.unregister_socket(server) is False
    assert provider.get_statistics().active_connections == 1


def test_fd_number_reused_after_close_registers_again(provider, make_pair, sockets, collector):
    _client, server = registered_pair(provider, make_pair)
    fd = server.fileno()
    pending = provider.recv_async(server, bytearray(8), collector)
    server.close()  # without unregister_socket
    replacement = socket.socket()  # usually gets the lowest free fd, i.e. the old number
    sockets.append(replacement)
    if replacement.fileno() != fd:  # force it otherwise
        if sys.platform == "win32":  # os.dup2 works on CRT descriptors, not on SOCKET handles
            pytest.skip("Windows did not reuse the handle value, and a SOCKET cannot be dup2'ed onto it")
        os.dup2(replacement.fileno(), fd)
        replacement.close()
        replacement = socket.socket(fileno=fd)
        sockets.append(replacement)
    assert replacement.fileno() == fd
    assert provider.register_socket(replacement)
    assert provider.get_statistics().active_connections == 2
    # The stale socket's pending operation ended (exactly once) instead of haunting the new one.
    pump(provider, lambda: len(collector) == 1)
    assert collector.by_id(pending).status == Status.CANCELLED


def test_ipv6_echo(provider, make_pair):
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"::1 cannot bind here: {exc}")
    client, server = registered_pair(provider, make_pair, host="::1")
    reader = StreamReader(provider, server, 6)
    provider.send_async(client, b"ipv6!!")
    pump(provider, lambda: reader.done)
    assert bytes(reader.data) == b"ipv6!!"
    back = StreamReader(provider, client, 6)
    provider.send_async(server, bytes(reader.data))
    pump(provider, lambda: back.done)
    assert bytes(back.data) == b"ipv6!!"


# ---------------------------------------------------------------------------------- idle loop
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_idle_loop_with_dead_peer_does_not_spin(provider, make_pair, how, collector):
    client, server = make_pair()
    assert provider.register_socket(server)
    if how == "rst":
        _reset(client)
    else:
        client.close()
    drain_all(provider)
    before = provider.get_statistics().backend_specific["poll_calls"]
    results: list[CompletionResult] = []
    assert provider.process_completions(200, 16, results) == 0
    assert results == []
    waits = provider.get_statistics().backend_specific["poll_calls"] - before
    # A correct backend sleeps through the 200 ms in one or a few kernel waits; a backend that
    # keeps being woken by the dead socket makes thousands.
    assert 1 <= waits <= 20, waits
    # The socket still reports the peer's end to a recv posted now.
    op_id = provider.recv_async(server, bytearray(8), collector)
    pump(provider, lambda: len(collector) == 1)
    r = collector.by_id(op_id)
    if how == "fin":
        assert (r.status, r.bytes_transferred) == (Status.SUCCESS, 0)
    else:
        assert r.status == Status.ERROR and r.error_code == ErrorCode.CONNECTION_RESET


# ---------------------------------------------------------------------------------- provided buffers
class ProvidedCollector:
    """Callback for recv_async_provided: copies `result.data` while it is valid (in the callback)."""

    def __init__(self) -> None:
        self.results: list[CompletionResult] = []
        self.data: dict[Any, bytes | None] = {}

    def __call__(self, result: CompletionResult, context: Any) -> None:
        if result.status == Status.SUCCESS:
            assert isinstance(result.data, memoryview), result
            assert len(result.data) == result.bytes_transferred
            self.data[context] = bytes(result.data)
        else:
            assert result.data is None, result
            self.data[context] = None
        self.results.append(result)

    def __len__(self) -> int:
        return len(self.results)


def in_use(provider: AsyncIOProvider) -> int:
    return provider.get_statistics().backend_specific["provided_buffers_in_use"]


def test_provided_recv_echo_many_messages(provider, make_pair):
    client, server = registered_pair(provider, make_pair)
    count = 300
    msgs = [struct.pack("!I", i) + pattern(1 + i % 200, i) for i in range(count)]
    total = sum(map(len, msgs))
    echoed = 0

    def on_server_recv(result: CompletionResult, _ctx: Any) -> None:
        nonlocal echoed
        if result.status == Status.CANCELLED:  # the last recv, at shutdown
            return
        assert result.status == Status.SUCCESS, result
        assert len(result.data) == result.bytes_transferred
        if result.bytes_transferred == 0:
            return
        chunk = bytes(result.data)  # the provider reuses the memory once we return
        echoed += len(chunk)
        assert provider.send_async(server, chunk) > 0
        assert provider.recv_async_provided(server, on_server_recv) > 0

    assert provider.recv_async_provided(server, on_server_recv) > 0
    reader = StreamReader(provider, client, total)
    for m in msgs:
        assert provider.send_async(client, m) > 0
    pump(provider, lambda: reader.done)
    assert reader.error is None and not reader.eof
    assert bytes(reader.data) == b"".join(msgs)
    assert echoed == total


def test_provided_recv_completes_with_zero_bytes_when_peer_closes(provider, make_pair):
    client, server = registered_pair(provider, make_pair)
    got = ProvidedCollector()
    op_id = provider.recv_async_provided(server, got, context="eof")
    client.close()
    pump(provider, lambda: len(got) == 1)
    r = got.results[0]
    assert (r.operation_id, r.status, r.bytes_transferred, r.op_type) == (op_id, Status.SUCCESS, 0, OpType.RECV)
    assert got.data["eof"] == b""


def test_provided_recv_timeout_and_cancel(provider, make_pair):
    client, server = registered_pair(provider, make_pair)
    got = ProvidedCollector()
    provider.recv_async_provided(server, got, context="t", timeout_ms=100)
    pump(provider, lambda: len(got) == 1)
    r = got.results[0]
    assert (r.status, r.error_code, r.bytes_transferred) == (Status.TIMEOUT, ErrorCode.CONNECTION_TIMEOUT, 0)
    op_id = provider.recv_async_provided(server, got, context="c")
    assert provider.cancel(op_id) is True
    pump(provider, lambda: len(got) == 2)
    assert got.results[1].status == Status.CANCELLED and got.data["c"] is None
    # Neither consumed anything: the next provided recv gets all of it.
    client.sendall(b"after")
    provider.recv_async_provided(server, got, context="d")
    pump(provider, lambda: len(got) == 3)
    assert got.data["d"] == b"after"
    drain_all(provider)
    assert in_use(provider) == 0


def test_provided_data_stays_valid_for_a_results_reader_until_the_next_call(provider, make_pair):
    """No callback: every result of one process_completions call keeps its data (no recycling
    during the call), also across the max_results carry-over."""
    pairs = [registered_pair(provider, make_pair) for _ in range(6)]
    for i, (_client, server) in enumerate(pairs):
        assert provider.recv_async_provided(server, context=i) > 0
    for i, (client, _server) in enumerate(pairs):
        client.sendall(pattern(100 + i, seed=i))
    seen: dict[int, bytes] = {}
    results: list[CompletionResult] = []
    deadline = time.monotonic() + WAIT_S
    while len(seen) < 6:
        assert time.monotonic() < deadline, seen.keys()
        n = provider.process_completions(50, 4, results)
        assert n >= 0
        for r in results:  # read after the call returned, all of them
            assert r.status == Status.SUCCESS, r
            assert bytes(r.data) == pattern(100 + r.user_context, seed=r.user_context)
            seen[r.user_context] = bytes(r.data)
    drain_all(provider)
    assert in_use(provider) == 0


def test_provided_recvs_pending_on_many_idle_sockets(provider, make_listener, sockets):
    """1,000 idle connections with a provided recv each: where "ProvidedBuffers" is True they hold
    no receive memory; then data arrives on all of them and each gets exactly its own bytes."""
    p = type(provider)()  # the fixture's provider has room for 512 sockets only
    assert p.initialize(max_connections=1100, max_completion_queue_size=256), p.last_error
    try:
        lst = make_listener(backlog=1024)
        pairs = []
        for _ in range(1000):
            c = socket.create_connection(lst.getsockname()[:2], timeout=WAIT_S)
            sockets.append(c)
            s, _ = lst.accept()
            sockets.append(s)
            pairs.append((c, s))
        got = ProvidedCollector()
        for i, (_c, s) in enumerate(pairs):
            assert p.register_socket(s)
            assert p.recv_async_provided(s, got, context=i) > 0
        results: list[CompletionResult] = []
        assert p.process_completions(0, 64, results) == 0
        stats = p.get_statistics()
        assert stats.pending_operations == 1000
        if p.supports_feature("ProvidedBuffers"):
            assert stats.backend_specific["provided_buffers_in_use"] == 0
        else:  # the default path is honest about holding one buffer per waiting recv
            assert stats.backend_specific["provided_buffers_in_use"] == 1000
        for i, (c, _s) in enumerate(pairs):
            c.send(b"%06d" % i)
        pump(p, lambda: len(got) == 1000, max_results=256)
        assert all(r.status == Status.SUCCESS for r in got.results)
        assert got.data == {i: b"%06d" % i for i in range(1000)}
        drain_all(p)
        assert in_use(p) == 0
    finally:
        p.shutdown()


def test_provided_buffers_can_be_switched_to_the_pooled_path(provider, make_pair):
    """set_option("provided_buffers", False): provided recvs still work, on pooled buffers that a
    waiting recv holds (so the feature is reported False); True restores what the backend can."""
    capable = provider.supports_feature("ProvidedBuffers")
    assert provider.set_option("provided_buffers", False)
    assert not provider.supports_feature("ProvidedBuffers")
    client, server = registered_pair(provider, make_pair)
    got = ProvidedCollector()
    assert provider.recv_async_provided(server, got, context=1) > 0
    drain_all(provider)
    assert in_use(provider) == 1
    client.sendall(b"pooled")
    pump(provider, lambda: len(got) == 1)
    assert got.data[1] == b"pooled"
    drain_all(provider)
    assert in_use(provider) == 0
    assert provider.set_option("provided_buffers", True) == capable
    assert provider.supports_feature("ProvidedBuffers") == capable
