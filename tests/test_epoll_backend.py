"""epoll-specific behaviour beyond the shared contract: gathered sends, honest features, stats."""

from __future__ import annotations

import select
import socket

import pytest

from framework.io import Status, create_provider
from framework.io.backends.epoll import EpollProvider
from framework.io.provider import SendOperation
from tests.support.provider import Collector, pump

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux-only")


@pytest.fixture
def epoll():
    p = create_provider("epoll", fallback=False)
    assert isinstance(p, EpollProvider)
    assert p.initialize(64, 32)
    yield p
    p.shutdown()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "peer closed early"
        out += chunk
    return bytes(out)


def test_batch_of_sends_on_one_socket_is_one_sendmsg(epoll, make_pair):
    client, server = make_pair()
    assert epoll.register_socket(client)
    sent = Collector()
    parts = [b"a" * 10, b"bb" * 10, b"ccc" * 10, b"", b"dddd" * 10]
    before = epoll.get_statistics().backend_specific["sendmsg_calls"]
    n = epoll.send_batch_async([SendOperation(client, p, i, sent) for i, p in enumerate(parts)])
    assert n == len(parts)
    assert epoll.get_statistics().backend_specific["sendmsg_calls"] == before + 1
    pump(epoll, lambda: len(sent) == len(parts))
    assert [sent.results[sent.contexts.index(i)].bytes_transferred for i in range(len(parts))] == list(
        map(len, parts)
    )
    assert all(r.status == Status.SUCCESS for r in sent.results)
    assert read_exactly(server, sum(map(len, parts))) == b"".join(parts)


def test_sends_queued_behind_a_full_buffer_are_gathered_and_complete_individually(epoll, make_pair):
    client, server = make_pair(sndbuf=4096, rcvbuf=4096)
    assert epoll.register_socket(client)
    sent = Collector()
    big = bytes(range(256)) * 2048  # 512 KiB: cannot fit, so it is written in parts
    smalls = [bytes([65 + i]) * (100 + i) for i in range(8)]
    epoll.send_async(client, big, sent, "big")
    for i, s in enumerate(smalls):
        epoll.send_async(client, s, sent, i)
    assert len(sent) == 0 and epoll.get_statistics().pending_operations == 9
    expected = big + b"".join(smalls)
    got = bytearray()
    server.setblocking(False)

    def drain_peer() -> bool:
        try:
            while chunk := server.recv(65536):
                got.extend(chunk)
        except BlockingIOError:
            pass
        return len(sent) == 9 and len(got) == len(expected)

    pump(epoll, drain_peer)
    assert bytes(got) == expected
    lengths = {ctx: r.bytes_transferred for ctx, r in zip(sent.contexts, sent.results, strict=True)}
    assert lengths == {"big": len(big), **{i: len(s) for i, s in enumerate(smalls)}}
    stats = epoll.get_statistics().backend_specific
    assert stats["partial_writes"] >= 1
    assert stats["sendmsg_calls"] >= 1  # the tail of `big` and the small sends went out together


def test_features_are_honest(epoll):
    assert epoll.supports_feature("BufferRegistration") is False  # no kernel registration
    assert epoll.supports_feature("UserBufferRegistration") is True
    assert epoll.supports_feature("BatchSubmit") is True
    assert epoll.supports_feature("PostCompletion") is True
    assert epoll.supports_feature("FixedFileSet") is False
    assert epoll.supports_feature("NoSuchFeature") is False


def test_statistics_name_the_backend(epoll):
    stats = epoll.get_statistics()
    assert stats.backend == "epoll" == epoll.get_backend_name()
    for key in ("epoll_waits", "events", "sendmsg_calls", "partial_writes", "callback_errors", "poll_calls"):
        assert key in stats.backend_specific, key


def test_small_max_events_still_delivers_every_readiness(epoll, make_pair):
    assert epoll.set_option("max_events", 2) is True
    assert epoll.set_option("max_events", 0) is False
    assert epoll.set_option("no_such_option", 1) is False
    got = Collector()
    pairs = [make_pair() for _ in range(6)]
    bufs = []
    for i, (_client, server) in enumerate(pairs):
        assert epoll.register_socket(server)
        bufs.append(bytearray(8))
        epoll.recv_async(server, bufs[-1], got, i)
    for i, (client, _server) in enumerate(pairs):
        client.sendall(b"n%d" % i)
    pump(epoll, lambda: len(got) == 6)
    for i in range(6):
        r = got.results[got.contexts.index(i)]
        assert bytes(bufs[i][: r.bytes_transferred]) == b"n%d" % i


def test_probe_passes_on_linux():
    EpollProvider.probe()  # raises BackendUnavailable elsewhere


def test_accepts_queued_behind_emfile_recover_when_a_new_accept_is_posted(epoll, make_listener, sockets):
    """EMFILE spends the edge that announced the waiting connections; the accepts still queued must
    not wait for a connection that may never come: the next accept_async retries the syscall."""
    import errno
    import os
    import resource

    lst = make_listener()
    assert epoll.register_socket(lst)
    accepted = Collector()
    first = [epoll.accept_async(lst, accepted, i) for i in range(3)]
    clients = [socket.socket() for _ in range(2)]
    sockets.extend(clients)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.dup(0)  # the lowest free descriptor number: a limit there leaves none free
    os.close(probe)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
        for c in clients:
            c.connect(lst.getsockname())
        pump(epoll, lambda: len(accepted) >= 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = accepted.by_id(first[0])
    assert failed.status == Status.ERROR and failed.error_code == errno.EMFILE
    assert len(accepted) == 1  # the other two stay queued, their edge spent
    epoll.accept_async(lst, accepted, "after")
    pump(epoll, lambda: len(accepted) == 3)
    for op_id in first[1:]:
        result = accepted.by_id(op_id)
        assert result.status == Status.SUCCESS
        sockets.append(result.accepted[0])
