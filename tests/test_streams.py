"""Provider "Streams": a receive that stays armed plus a provider-owned ordered send queue.

Every backend that reports "Streams" runs every test here: io_uring (multishot receive over its
buffer ring, sends in C), the readiness backends (epoll, and kqueue on its Linux stand-in kernel:
a read loop into one shared buffer, sends tried at once and queued for write edges). Cases about
io_uring's buffer ring stay io_uring-only. Real loopback TCP sockets, driven by
`process_completions` in bounded loops. The contract is docs/PROVIDER.md, "Streams".
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from framework.io import AsyncIOProvider, ErrorCode
from framework.io.errors import describe
from framework.io.factory import provider_class
from framework.io.provider import (
    STREAM_DATA,
    STREAM_DRAINED,
    STREAM_EOF,
    STREAM_ERROR,
    Feature,
    StreamEvent,
    StreamsProvider,
)
from tests.support.backends import new_provider as new_backend_provider
from tests.support.backends import stream_backends
from tests.support.provider import WAIT_S

STREAM_BACKENDS = stream_backends()
URING = [name for name in STREAM_BACKENDS if name == "io_uring"]  # its buffer ring's own cases
pytestmark = pytest.mark.timeout(60)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def counter_bytes(n_words: int, start: int = 0) -> bytes:
    """A counter pattern: any loss, duplication or reordering changes the content."""
    return array("I", range(start, start + n_words)).tobytes()


class Rig:
    """One initialized provider with recording stream handlers.

    `data[ctx]` is a copy made inside on_data (the memoryview is provider memory, valid only
    while the handler runs); `events` holds (ctx, kind, error_code) in delivery order."""

    def __init__(self, provider: AsyncIOProvider) -> None:
        self.p = provider
        self.data: dict[Any, bytearray] = defaultdict(bytearray)
        self.data_calls: dict[Any, int] = defaultdict(int)
        self.events: list[tuple[Any, int, int]] = []
        self.data_hook: Callable[[Any, memoryview], None] | None = None
        self.event_hook: Callable[[Any, int, int], None] | None = None
        self.allowed_callback_errors = 0
        provider.set_stream_handlers(self._on_data, self._on_event)

    def _on_data(self, ctx: Any, data: memoryview) -> None:
        assert type(data) is memoryview and len(data) > 0
        self.data_calls[ctx] += 1
        self.data[ctx] += data  # the copy, inside the handler
        if self.data_hook is not None:
            self.data_hook(ctx, data)

    def _on_event(self, ctx: Any, kind: int, code: int) -> None:
        self.events.append((ctx, kind, code))
        if self.event_hook is not None:
            self.event_hook(ctx, kind, code)

    def kinds(self, ctx: Any) -> list[int]:
        return [k for c, k, _ in self.events if c == ctx]

    def open(self, sock: socket.socket, ctx: Any) -> int:
        assert self.p.register_socket(sock), self.p.last_error
        sid = self.p.stream_open(sock, ctx)
        assert sid > 0, self.p.last_error
        return sid

    def pump(
        self, until: Callable[[], bool], step: Callable[[], None] | None = None, timeout_s: float = WAIT_S
    ) -> None:
        """process_completions until `until()` holds (fails, never hangs, past the deadline);
        `step` runs every round (e.g. a peer reading a little)."""
        results: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, f"condition not reached; events: {self.events[-10:]!r}"
            n = self.p.process_completions(1 if step is not None else 10, 64, results)
            assert n >= 0, f"provider failed: {results[:1]!r}"
            if step is not None:
                step()

    def settle(self, rounds: int = 5) -> None:
        """A few short waits: lets anything wrongly pending show up (never used to synchronise)."""
        results: list[Any] = []
        for _ in range(rounds):
            assert self.p.process_completions(20, 64, results) >= 0


@pytest.fixture(params=STREAM_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """A backend with Streams; a test of one backend's own machinery parametrizes this itself."""
    return request.param


@pytest.fixture
def new_provider(backend: str, standin_kernel: Callable[[str], None]) -> Callable[[], AsyncIOProvider]:
    """new_provider() -> an uninitialized provider of `backend` (its stand-in kernel installed)."""
    standin_kernel(backend)
    return functools.partial(new_backend_provider, backend)


@pytest.fixture
def make_rig(new_provider: Callable[[], AsyncIOProvider]) -> Iterator[Callable[..., Rig]]:
    """make_rig(max_connections=128, **options) -> a Rig; options are set before initialize.
    Shut down after the test, which fails on handler exceptions it did not allow."""
    rigs: list[Rig] = []

    def make(max_connections: int = 128, **options: Any) -> Rig:
        p = new_provider()
        for name, value in options.items():
            assert p.set_option(name, value), name
        assert p.initialize(max_connections, 256), p.last_error
        assert isinstance(p, StreamsProvider)
        assert p.supports_feature(Feature.STREAMS) and p.supports_feature("Streams")
        rig = Rig(p)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.p.shutdown()
        errors = rig.p.get_statistics().backend_specific["callback_errors"]
        assert errors == rig.allowed_callback_errors, f"{errors} stream handler(s) raised (see the log)"


class Peer:
    """The far end of a stream, non-blocking, read a bounded amount per step."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 20) -> None:
        self.sock = sock
        self.chunk = chunk
        self.got = bytearray()
        self.eof = False
        sock.setblocking(False)

    def read(self) -> None:
        if self.eof:
            return
        try:
            data = self.sock.recv(self.chunk)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.eof = True
            return
        if data:
            self.got += data
        else:
            self.eof = True


def accepted_pairs(
    sockets: list[socket.socket], n: int, host: str = "127.0.0.1"
) -> list[tuple[socket.socket, socket.socket]]:
    """n connected (ours, peer) TCP pairs over one listener."""
    lst = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(lst)
    lst.bind((host, 0))
    lst.listen(n)
    lst.settimeout(WAIT_S)
    out = []
    for _ in range(n):
        peer = socket.create_connection(lst.getsockname()[:2], timeout=WAIT_S)
        sockets.append(peer)
        ours, _ = lst.accept()
        sockets.append(ours)
        ours.settimeout(None)
        peer.settimeout(None)
        out.append((ours, peer))
    return out


def send_all(rig: Rig, sid: int, chunks: list[bytes]) -> list[int]:
    """stream_send every chunk (no turn in between) and return what each call reported as unsent:
    once bytes are unsent, every later call queues all of its own behind them; with nothing
    unsent a backend may write part or all of a chunk at once (readiness) or none (io_uring)."""
    unsent: list[int] = []
    before = 0
    for c in chunks:
        n = rig.p.stream_send(sid, c)
        if before:
            assert n == before + len(c), f"stream_send returned {n}: {before} were unsent, {len(c)} added"
        else:
            assert 0 <= n <= len(c), f"stream_send returned {n} for {len(c)} bytes"
        unsent.append(n)
        before = n
    return unsent


# ---------------------------------------------------------------------------------------- echo
HOSTS = ["127.0.0.1"] + (["::1"] if _has_ipv6_loopback() else [])


@pytest.mark.parametrize("host", HOSTS)
def test_echo_many_small_writes_in_order_with_own_context(make_rig, sockets, host):
    rig = make_rig()
    pairs = accepted_pairs(sockets, 3, host)
    ctxs = [("conn", i) for i in range(3)]
    sids = [rig.open(ours, ctx) for (ours, _), ctx in zip(pairs, ctxs, strict=True)]
    assert all(s > 0 for s in sids) and len(set(sids)) == 3
    sid_of = dict(zip(ctxs, sids, strict=True))
    # echo from inside on_data: the handler may send on its own stream
    rig.data_hook = lambda ctx, data: rig.p.stream_send(sid_of[ctx], data)

    expected = {}
    for i, (_, peer) in enumerate(pairs):
        msgs = [b"conn%d-line%04d;" % (i, j) for j in range(300)]
        for m in msgs:
            peer.sendall(m)  # many small writes: the kernel may coalesce them, order must hold
        expected[ctxs[i]] = b"".join(msgs)
    peers = [Peer(peer) for _, peer in pairs]

    def step() -> None:
        for pr in peers:
            pr.read()

    rig.pump(lambda: all(len(pr.got) >= len(expected[c]) for pr, c in zip(peers, ctxs, strict=True)), step)
    for pr, c in zip(peers, ctxs, strict=True):
        assert bytes(rig.data[c]) == expected[c]
        assert bytes(pr.got) == expected[c]
    assert set(rig.data) == set(ctxs)  # every arrival carried the context given to stream_open
    assert rig.events == []


def test_blocking_wait_ends_on_stream_data_and_counts_no_results(make_rig, make_pair):
    rig = make_rig()
    ours, peer = make_pair()
    rig.open(ours, "ctx")
    peer.sendall(b"wake up")
    results: list[Any] = []
    # timeout -1: only a delivered stream event can end this wait (pytest-timeout guards a hang)
    while len(rig.data["ctx"]) < 7:
        assert rig.p.process_completions(-1, 64, results) == 0
        assert results == []
    assert bytes(rig.data["ctx"]) == b"wake up"


# ---------------------------------------------------------------------------------- large sends
def test_large_send_to_slow_reader_arrives_intact_and_drains_once(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)  # small buffers and window keep bytes queued
    sid = rig.open(client, "big")
    peer = Peer(server, chunk=32768)  # reads a little per round
    payload = counter_bytes(1 << 20)  # 4 MiB
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]

    unsent = send_all(rig, sid, chunks)
    assert 0 < unsent[-1] <= len(payload)  # far more than the peer's window holds
    assert rig.p.stream_watch(sid, 0) is False  # bytes are unsent: one DRAINED will come

    queued: list[int] = []

    def step() -> None:
        peer.read()
        queued.append(rig.p.stream_queued(sid))

    rig.pump(lambda: len(peer.got) >= len(payload) and STREAM_DRAINED in rig.kinds("big"), step)
    assert bytes(peer.got) == payload
    assert all(b <= a for a, b in pairwise(queued)), "unsent bytes only fall"
    assert rig.p.stream_queued(sid) == 0
    rig.settle()
    assert rig.kinds("big") == [STREAM_DRAINED]
    assert rig.events == [("big", STREAM_DRAINED, 0)]

    assert rig.p.stream_watch(sid, 0) is True  # already drained: no event follows
    assert rig.p.stream_send(sid, b"") == 0
    rig.settle()
    assert rig.kinds("big") == [STREAM_DRAINED]


def test_drained_fires_at_the_low_water_mark(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)
    sid = rig.open(client, "lw")
    peer = Peer(server, chunk=32768)
    payload = counter_bytes(1 << 20)
    low = 1 << 20
    unsent = rig.p.stream_send(sid, payload)
    assert low < unsent <= len(payload)  # far more than the windows hold stays unsent
    assert rig.p.stream_watch(sid, low) is False
    seen_at_event: list[int] = []
    rig.event_hook = lambda ctx, kind, code: seen_at_event.append(rig.p.stream_queued(sid))
    rig.pump(lambda: len(peer.got) >= len(payload), peer.read)
    assert bytes(peer.got) == payload
    rig.settle()
    assert rig.events == [("lw", STREAM_DRAINED, 0)]
    assert seen_at_event[0] <= low


def test_sends_queued_behind_one_in_flight_keep_call_order(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)
    sid = rig.open(client, "order")
    peer = Peer(server)
    head = counter_bytes(1 << 19)  # 2 MiB: still in flight while the rest is queued
    msgs = [b"%06d;" % i for i in range(2000)]
    unsent = send_all(rig, sid, [head, *msgs])
    assert unsent[0] > 0  # the head did not fit: every message queued behind it (send_all checks)
    expected = head + b"".join(msgs)
    rig.pump(lambda: len(peer.got) >= len(expected), peer.read)
    assert bytes(peer.got) == expected
    rig.pump(lambda: rig.p.stream_queued(sid) == 0)
    assert rig.events == []


def test_send_many_reaches_every_stream_and_flags_the_failed_and_the_backed_up(make_rig, make_pair):
    """stream_send_many: one payload to several streams in one call; the returned indices are
    exactly the streams that refused it (closed) or now hold more than high_water unsent."""
    rig = make_rig()
    fast = [make_pair() for _ in range(3)]
    slow_ours, slow_peer = make_pair(sndbuf=32768, rcvbuf=32768)
    closed_ours, _closed_peer = make_pair()
    sids = [rig.open(ours, ("fast", i)) for i, (ours, _) in enumerate(fast)]
    slow = rig.open(slow_ours, "slow")
    gone = rig.open(closed_ours, "gone")
    rig.p.stream_close(gone)
    # The slow reader's stream is backed up first: 4 MiB it does not read.
    rig.p.stream_send(slow, counter_bytes(1 << 20))
    peers = [Peer(peer) for _, peer in fast]
    ids = [sids[0], slow, sids[1], gone, sids[2]]
    flagged = rig.p.stream_send_many(ids, b"broadcast!", 64 * 1024)
    assert sorted(flagged) == [1, 3]  # the backed-up stream and the closed one
    assert rig.p.stream_send_many(sids, b"again", 64 * 1024) == []

    def step() -> None:
        for pr in peers:
            pr.read()

    rig.pump(lambda: all(len(pr.got) >= 15 for pr in peers), step)
    assert all(bytes(pr.got) == b"broadcast!again" for pr in peers)
    Peer(slow_peer).sock.close()


# ----------------------------------------------------------------------------- end of stream
def test_peer_close_gives_data_then_exactly_one_eof(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair()
    rig.open(client, "eof")
    server.sendall(b"last words")
    server.close()
    rig.pump(lambda: STREAM_EOF in rig.kinds("eof"))
    assert bytes(rig.data["eof"]) == b"last words"  # all data before the EOF
    rig.settle()
    assert rig.events == [("eof", STREAM_EOF, 0)]


def test_peer_reset_with_pending_sends_reports_error_then_refuses_sends(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)
    sid = rig.open(client, "rst")
    assert rig.p.stream_send(sid, counter_bytes(1 << 20)) > 0  # far more than the windows hold
    rig.settle(2)
    assert rig.p.stream_queued(sid) > 0
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST
    rig.pump(lambda: STREAM_ERROR in rig.kinds("rst"))
    codes = [code for _, kind, code in rig.events if kind == STREAM_ERROR]
    # the reset surfaces as ECONNRESET (mapped) or, once the kernel consumed it, as EPIPE
    assert codes[0] in (ErrorCode.CONNECTION_RESET, errno.EPIPE), codes
    assert rig.kinds("rst").count(STREAM_EOF) <= 1
    assert rig.p.stream_send(sid, b"after the reset") < 0


def test_a_send_that_meets_the_reset_returns_the_code_its_event_carries(make_rig, make_pair):
    """One error convention: a failing stream_send returns the negated code that the stream's
    ERROR event carries (an ErrorCode where one applies), not the raw errno."""
    rig = make_rig()
    client, server = make_pair()
    sid = rig.open(client, "r")
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST, not yet seen by the provider: the next send meets it
    time.sleep(0.05)
    rc = rig.p.stream_send(sid, b"into the reset")
    rig.pump(lambda: STREAM_ERROR in rig.kinds("r") or STREAM_EOF in rig.kinds("r"))
    codes = [code for _, kind, code in rig.events if kind == STREAM_ERROR]
    if rc < 0:  # readiness backends send at once; io_uring may queue the send and fail later
        assert codes == [-rc], (rc, codes)
        assert -rc in (ErrorCode.CONNECTION_RESET, errno.EPIPE), describe(-rc)
    for code in codes:
        assert code in (ErrorCode.CONNECTION_RESET, errno.EPIPE), describe(code)
    after = rig.p.stream_send(sid, b"again")
    assert after < 0 and describe(-after) in ("CONNECTION_RESET", "EPIPE"), after


def test_stream_event_kinds_are_one_int_enum_and_features_a_string_enum():
    assert list(StreamEvent) == [STREAM_DATA, STREAM_EOF, STREAM_ERROR, STREAM_DRAINED]
    assert all(type(k) is int for k in (STREAM_DATA, STREAM_EOF, STREAM_ERROR, STREAM_DRAINED))
    assert StreamEvent.EOF == STREAM_EOF and StreamEvent(STREAM_DRAINED) is StreamEvent.DRAINED
    assert Feature.STREAMS == "Streams" and Feature("ProvidedBuffers") is Feature.PROVIDED_BUFFERS


@pytest.mark.parametrize("name", ["iocp", "rio", "legacy_iocp"])
def test_a_backend_without_streams_has_no_stream_methods_in_its_type(name):
    # Class-level only: no instance is created (the Windows backends would need their kernel).
    cls = provider_class(name)
    assert not issubclass(cls, StreamsProvider)
    assert not hasattr(cls, "stream_send") and not hasattr(cls, "stream_open")


# ---------------------------------------------------------------------------------- stream_close
def test_close_silences_handlers_cancels_kernel_requests_and_peer_sees_eof(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)
    sid = rig.open(client, "c")
    server.sendall(b"before")
    rig.pump(lambda: len(rig.data["c"]) == 6)
    assert rig.p.stream_send(sid, counter_bytes(1 << 20)) > 0
    rig.settle(2)
    assert rig.p.stream_queued(sid) > 0  # a send is still in the kernel when the stream closes

    rig.p.stream_close(sid)
    server.sendall(b"after close")
    rig.settle()
    assert bytes(rig.data["c"]) == b"before" and rig.events == []
    rig.p.stream_close(sid)  # a second close is harmless
    assert rig.p.stream_send(sid, b"x") < 0
    assert rig.p.stream_queued(sid) < 0
    assert rig.p.stream_watch(sid, 0) is True  # nothing will ever drain on a closed stream

    assert rig.p.unregister_socket(client)
    client.close()
    # Only if the kernel's receive and send were really cancelled does the file go away (FIN).
    peer = Peer(server)
    rig.pump(lambda: peer.eof, peer.read)
    assert rig.data_calls["c"] == 1 and rig.events == []


def test_close_from_inside_on_data_stops_later_deliveries(make_rig, make_pair):
    rig = make_rig(provided_buffer_size=512)  # 4 KiB arrive as several deliveries
    client, server = make_pair()
    sid = rig.open(client, "self-close")
    rig.data_hook = lambda ctx, data: rig.p.stream_close(sid)
    server.sendall(counter_bytes(1024))
    server.close()
    rig.pump(lambda: rig.data_calls["self-close"] >= 1)
    rig.settle()
    assert rig.data_calls["self-close"] == 1 and rig.events == []
    assert rig.data["self-close"] == counter_bytes(1024)[: len(rig.data["self-close"])]


def test_unregister_with_the_stream_open_closes_it(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair(sndbuf=32768, rcvbuf=32768)
    sid = rig.open(client, "u")
    assert rig.p.stream_send(sid, counter_bytes(1 << 20)) > 0
    rig.settle(2)
    assert rig.p.unregister_socket(client)  # no stream_close first: unregister does it
    assert rig.p.stream_send(sid, b"x") < 0
    client.close()
    server.sendall(b"unheard")
    peer = Peer(server)
    rig.pump(lambda: peer.eof, peer.read)
    assert rig.data_calls["u"] == 0 and rig.events == []


def test_reopened_streams_get_new_ids_and_stale_ids_are_refused(make_rig, make_pair):
    # One socket, so every stream reuses the same descriptor (and on io_uring, table slots):
    # only the id tells an old stream from the current one.
    rig = make_rig(max_connections=64)
    client, server = make_pair()
    ids: list[int] = []
    results: list[Any] = []
    for i in range(300):
        sid = rig.open(client, i)
        ids.append(sid)
        if i % 60 == 0:  # the stream works and gets its own context
            server.sendall(b"n%d" % i)
            rig.pump(lambda i=i: bytes(rig.data[i]) == b"n%d" % i)
        rig.p.stream_close(sid)
        assert rig.p.unregister_socket(client)
        assert rig.p.process_completions(0, 64, results) >= 0  # let the cancels come back
    assert len(set(ids)) == 300 and 0 not in ids
    for old in ids[:5]:
        assert rig.p.stream_send(old, b"stale") < 0
        assert rig.p.stream_queued(old) < 0

    rig.pump(lambda: rig.p.get_statistics().backend_specific["streams_open"] == 0)
    new = rig.open(client, "new")
    assert new not in ids
    for old in ids:
        rig.p.stream_close(old)  # refused: must not close or silence the socket's new stream
    server.sendall(b"still here")
    rig.pump(lambda: bytes(rig.data["new"]) == b"still here")
    assert rig.p.stream_send(new, b"back") >= 0
    peer = Peer(server)
    rig.pump(lambda: bytes(peer.got) == b"back", peer.read)
    assert [n for n in range(300) if n % 60 and n in rig.data] == []
    assert rig.events == []


def test_stream_open_refuses_unregistered_socket_and_second_stream(make_rig, make_pair):
    rig = make_rig()
    client, _server = make_pair()
    assert rig.p.stream_open(client, "unregistered") == 0
    sid = rig.open(client, "one")
    assert rig.p.stream_open(client, "two") == 0  # one stream per socket
    assert rig.p.stream_queued(sid) == 0


# ------------------------------------------------------------------------ buffer-ring exhaustion
@pytest.mark.parametrize("backend", URING)
def test_exhausted_buffer_ring_rearms_and_loses_nothing(make_rig, sockets):
    rig = make_rig(provided_buffer_count=8, provided_buffer_size=512)
    pairs = accepted_pairs(sockets, 64)
    sids = [rig.open(ours, i) for i, (ours, _) in enumerate(pairs)]
    assert len(set(sids)) == 64
    expected = {i: counter_bytes(2048, start=i << 16) for i in range(64)}  # 8 KiB each
    for i, (_, peer) in enumerate(pairs):
        peer.sendall(expected[i])  # 512 KiB against a 4 KiB ring
    rig.pump(lambda: all(len(rig.data[i]) >= len(expected[i]) for i in range(64)))
    for i in range(64):
        assert bytes(rig.data[i]) == expected[i], f"stream {i} lost or reordered data"
    stats = rig.p.get_statistics().backend_specific
    assert stats["stream_enobufs"] > 0 and stats["stream_rearms"] > 0, stats
    # and the streams still work both ways afterwards
    for sid in sids:
        assert rig.p.stream_send(sid, b"ok") >= 0
    peers = [Peer(peer) for _, peer in pairs]

    def step() -> None:
        for pr in peers:
            pr.read()

    rig.pump(lambda: all(pr.got == b"ok" for pr in peers), step)
    assert rig.events == []


@pytest.mark.parametrize("backend", URING)
def test_starved_stream_does_not_stall_a_waiting_loop(make_rig, make_pair):
    rig = make_rig(provided_buffer_count=8, provided_buffer_size=512)
    client, server = make_pair()
    rig.open(client, "s")
    payload = counter_bytes(4096)  # 16 KiB: four times the ring
    server.sendall(payload)
    results: list[Any] = []
    for _ in range(len(payload) // 512 + 2):
        if len(rig.data["s"]) >= len(payload):
            break
        before = len(rig.data["s"])
        # data is already waiting in the socket: a correct loop never sits out this timeout
        assert rig.p.process_completions(2000, 64, results) == 0
        assert len(rig.data["s"]) > before, "process_completions waited with the stream starved"
    assert bytes(rig.data["s"]) == payload


# ---------------------------------------------------------------------------- handler failures
def test_raising_handlers_are_counted_and_the_loop_goes_on(make_rig, make_pair):
    rig = make_rig()
    rig.allowed_callback_errors = 2
    c1, s1 = make_pair()
    c2, s2 = make_pair()
    rig.open(c1, "bad")
    rig.open(c2, "good")
    raised: list[str] = []

    def data_hook(ctx: Any, data: memoryview) -> None:
        if ctx == "bad" and not raised:
            raised.append("data")
            raise RuntimeError("on_data fails on purpose")

    def event_hook(ctx: Any, kind: int, code: int) -> None:
        if ctx == "bad" and kind == STREAM_EOF:
            raised.append("event")
            raise RuntimeError("on_event fails on purpose")

    rig.data_hook, rig.event_hook = data_hook, event_hook
    s1.sendall(b"first")
    s2.sendall(b"other")
    rig.pump(lambda: raised == ["data"] and bytes(rig.data["good"]) == b"other")
    s1.sendall(b"second")
    rig.pump(lambda: bytes(rig.data["bad"]) == b"firstsecond")
    s1.close()
    s2.close()
    rig.pump(lambda: len(rig.events) == 2)
    assert sorted(rig.events) == [("bad", STREAM_EOF, 0), ("good", STREAM_EOF, 0)]
    assert raised == ["data", "event"]
    assert rig.p.get_statistics().backend_specific["callback_errors"] == 2


# ---------------------------------------------------------------------------- lifecycle, misuse
def test_shutdown_with_open_streams_releases_every_socket(make_rig, sockets):
    rig = make_rig()
    pairs = accepted_pairs(sockets, 4)
    for ours, _ in pairs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    sids = [rig.open(ours, i) for i, (ours, _) in enumerate(pairs)]
    for sid in sids[:2]:
        assert rig.p.stream_send(sid, counter_bytes(1 << 20)) > 0  # sends stuck in the kernel
    rig.settle(2)
    calls_before, events_before = dict(rig.data_calls), list(rig.events)

    rig.p.shutdown()  # must not hang, raise, or run a handler
    assert dict(rig.data_calls) == calls_before and rig.events == events_before
    assert rig.p.stream_queued(sids[0]) < 0
    with pytest.raises(NotImplementedError, match="not initialized"):
        rig.p.stream_open(pairs[0][0], "late")
    # The kernel gave back every file reference: closing our sockets reaches the peers as EOF.
    for ours, peer in pairs:
        ours.close()
        peer.settimeout(WAIT_S)
        while peer.recv(1 << 20):
            pass


def test_streams_before_initialize_or_without_handlers_raise(new_provider, make_pair):
    client, _server = make_pair()
    p = new_provider()
    with pytest.raises(NotImplementedError, match="not initialized"):
        p.stream_open(client, "early")
    assert p.initialize(16, 64), p.last_error
    try:
        assert p.register_socket(client)
        with pytest.raises(NotImplementedError, match="set_stream_handlers"):
            p.stream_open(client, "no handlers")
    finally:
        p.shutdown()


# ------------------------------------------------------------------- regressions: starvation wake-up, a None context, calls after shutdown
def test_default_none_context_still_gets_data(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair()
    assert rig.p.register_socket(client)
    assert rig.p.stream_open(client) > 0  # context defaults to None
    server.sendall(b"for nobody")
    server.close()
    rig.pump(lambda: STREAM_EOF in rig.kinds(None), timeout_s=2.0)
    assert bytes(rig.data[None]) == b"for nobody"


def test_stream_calls_after_shutdown_are_refused_quietly(make_rig, make_pair):
    rig = make_rig()
    client, _server = make_pair()
    sid = rig.open(client, "s")
    rig.p.shutdown()
    assert rig.p.stream_send(sid, b"late") < 0
    assert rig.p.stream_watch(sid, 0) is True


# ------------------------------------------------------------------ send errors, turns, half-close
def test_send_error_is_reported_by_the_next_turn_not_inside_stream_send(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair()
    sid = rig.open(client, "w")
    client.shutdown(socket.SHUT_WR)  # our side can no longer send; the kernel refuses with EPIPE
    peer = Peer(server)
    rig.pump(lambda: peer.eof, peer.read)  # the FIN went out; the edges it raised are consumed
    rig.settle(2)
    assert rig.events == []
    rig.p.stream_send(sid, b"too late")  # may fail at once (-EPIPE) or in the kernel later
    assert rig.events == [], "a handler ran inside stream_send"
    results: list[Any] = []
    # timeout -1: the owed STREAM_ERROR must end a blocking wait (pytest-timeout guards a hang)
    while STREAM_ERROR not in rig.kinds("w"):
        assert rig.p.process_completions(-1, 64, results) == 0
    codes = [code for _, kind, code in rig.events if kind == STREAM_ERROR]
    assert codes[0] in (errno.EPIPE, ErrorCode.CONNECTION_RESET), codes
    assert rig.p.stream_send(sid, b"again") < 0
    assert rig.p.stream_queued(sid) < 0


def test_more_than_a_turn_of_waiting_data_arrives_without_new_arrivals(make_rig, make_pair):
    # 512-byte deliveries: 256 KiB waiting at once is more than one socket may read in one turn
    # (fairness), and no further byte arrives to announce the rest.
    rig = make_rig(provided_buffer_size=512)
    client, server = make_pair()
    rig.open(client, "big")
    sizes: list[int] = []
    rig.data_hook = lambda ctx, data: sizes.append(len(data))
    payload = counter_bytes(1 << 16)
    server.sendall(payload)
    rig.pump(lambda: len(rig.data["big"]) >= len(payload))
    assert bytes(rig.data["big"]) == payload
    assert max(sizes) <= 512  # the option bounds one delivery
    assert rig.events == []


def test_after_the_peers_eof_the_stream_still_sends(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair()
    sid = rig.open(client, "half")
    server.sendall(b"question")
    server.shutdown(socket.SHUT_WR)
    rig.pump(lambda: STREAM_EOF in rig.kinds("half"))
    assert bytes(rig.data["half"]) == b"question"
    assert rig.p.stream_send(sid, b"answer") >= 0
    peer = Peer(server)
    rig.pump(lambda: bytes(peer.got) == b"answer", peer.read)
    rig.pump(lambda: rig.p.stream_queued(sid) == 0)
    assert rig.p.stream_watch(sid, 0) is True
    rig.settle()
    assert rig.events == [("half", STREAM_EOF, 0)]


@pytest.mark.parametrize("option", ["streams", "provided_buffers"])
def test_streams_can_be_switched_off(new_provider, option):
    # Streams receive into provider memory picked on arrival: off with provided buffers too.
    p = new_provider()
    assert p.set_option(option, False)
    assert p.initialize(16, 64), p.last_error
    try:
        assert not p.supports_feature(Feature.STREAMS)
    finally:
        p.shutdown()


def test_paused_reading_delivers_nothing_new_and_resume_delivers_the_rest_in_order(make_rig, make_pair):
    """pause_reading: the provider stops reading (only bytes it already had may still come), the
    peer's further bytes wait in the kernel; resume_reading delivers them, none lost, in order,
    even though no new arrival announces them. Pause and resume are idempotent."""
    rig = make_rig()
    client, server = make_pair()
    sid = rig.open(client, "p")
    first = counter_bytes(1024)
    server.sendall(first)
    rig.pump(lambda: len(rig.data["p"]) >= len(first))
    assert rig.p.stream_pause_reading(sid) and rig.p.stream_pause_reading(sid)
    rig.settle()  # the pause takes effect (io_uring: its cancel completes)
    had = len(rig.data["p"])
    second = counter_bytes(4096, start=1024)
    server.sendall(second)
    rig.settle(10)
    assert len(rig.data["p"]) == had  # paused: nothing new was read
    assert rig.p.stream_resume_reading(sid) and rig.p.stream_resume_reading(sid)
    rig.pump(lambda: len(rig.data["p"]) >= len(first) + len(second))
    assert bytes(rig.data["p"]) == first + second
    # a pause and resume within one turn keep the stream reading
    rig.p.stream_pause_reading(sid)
    rig.p.stream_resume_reading(sid)
    third = counter_bytes(256, start=5120)
    server.sendall(third)
    rig.pump(lambda: len(rig.data["p"]) >= len(first) + len(second) + len(third))
    assert bytes(rig.data["p"]) == first + second + third
    assert rig.events == []


def test_a_paused_stream_sees_the_peers_eof_after_resume(make_rig, make_pair):
    rig = make_rig()
    client, server = make_pair()
    sid = rig.open(client, "e")
    rig.p.stream_pause_reading(sid)
    rig.settle()
    server.sendall(b"last words")
    server.close()
    rig.settle(5)
    assert rig.kinds("e") == []
    rig.p.stream_resume_reading(sid)
    rig.pump(lambda: rig.kinds("e") == [STREAM_EOF])
    assert bytes(rig.data["e"]) == b"last words"
    assert not rig.p.stream_pause_reading(sid + (1 << 40))  # an id never opened: refused
