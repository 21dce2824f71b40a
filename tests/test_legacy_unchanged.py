"""RAON code ported line by line runs unchanged: notify-then-kick, N worker threads on
handle_iocp, RAON's reference-count convention, pool guards, cross-thread timers, the backend name
"legacy_iocp", and the RAON surface added for it (KickReason, SessionType, a caller's pool, ...).

Real loopback sockets on every runnable backend (epoll, io_uring, legacy_iocp); the close semantics
also run on the stand-in IOCP kernel (tests/support/standin_kernels.py; the test id says it is mocked).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from examples.legacy_chat.protocol import PacketId, parse_chat_notify, text_packet
from framework.legacy import (
    IocpCore,
    IocpObject,
    IocpObjectSession,
    KickReason,
    PacketHeader,
    ServiceType,
    SessionPool,
    SessionType,
    build_packet,
    read_packets,
)
from tests.support.backends import RUNNABLE_BACKENDS, STANDIN_BACKENDS, new_provider
from tests.support.provider import WAIT_S

ROOT = Path(__file__).resolve().parent.parent
WORKERS_FULL = ["--workers", "4", "--max-members", "1"]
IOCP_STANDIN = [name for name in STANDIN_BACKENDS if name.startswith("iocp-")]


def _make_core(name: str) -> IocpCore:
    core = IocpCore(provider=new_provider(name), max_connections=256)
    assert core.initialize(), core.last_error
    return core


@pytest.fixture(params=RUNNABLE_BACKENDS)
def core(request: pytest.FixtureRequest) -> Iterator[IocpCore]:
    c = _make_core(request.param)
    yield c
    c.shutdown()


@pytest.fixture(params=RUNNABLE_BACKENDS + IOCP_STANDIN)
def any_core(request: pytest.FixtureRequest, standin_kernel: Callable[[str], None]) -> Iterator[IocpCore]:
    """`core`, plus the IOCP backend on the stand-in Windows kernel."""
    standin_kernel(request.param)
    c = _make_core(request.param)
    yield c
    c.shutdown()


def pump(core: IocpCore, until: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        core.handle_iocp(20)


def connect_raw(address: tuple[str, int], rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect(address[:2])
    return sock


def read_to_end(core: IocpCore, sock: socket.socket) -> tuple[bytes, str]:
    """Everything the peer sends until it closes, while the core runs: (data, "eof" | "reset")."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, f"no close after {len(data)} bytes"
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            core.handle_iocp(10)
            continue
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


class Recorder(IocpObjectSession):
    def __init__(self) -> None:
        super().__init__(recv_buffer_size=4096)
        self.sent: list[tuple[int, int]] = []
        self.disconnects = 0
        self.received = 0  # packets, for the sessions that parse them

    def on_send(self, length: int, packet_id: int) -> None:
        self.sent.append((length, packet_id))

    def on_disconnect(self) -> None:
        self.disconnects += 1


NOTICE = build_packet(1, b"server full")
TAIL = build_packet(2, bytes(range(256)) * 200)  # 51 KB: queued behind the notice in flight


class NotifyThenKick(Recorder):
    def on_connect(self, success: bool) -> None:
        assert self.send(NOTICE)  # in flight
        assert self.send(TAIL)  # queued behind it
        self.disconnect("server full")
        assert not self.send(b"late")  # no new send once the close began


# ---------------------------------------------------------------------------------- defect 1
def test_notify_then_kick_delivers_every_accepted_send_before_the_close(any_core: IocpCore) -> None:
    svc = any_core.register_server_service(0, NotifyThenKick, host="127.0.0.1", max_sessions=1)
    session = svc.pool.sessions[0]
    for round_ in range(1, 6):  # the one pooled session, reused every round
        client = connect_raw(svc.address)
        data, end = read_to_end(any_core, client)
        client.close()
        assert (data, end) == (NOTICE + TAIL, "eof")
        pump(any_core, lambda r=round_: session.disconnects == r and svc.pool.free_count == 1)
        assert session.sent[-2:] == [(len(NOTICE), 1), (len(TAIL), 2)]
        assert session.kick_reason == KickReason.KICKED and session.disconnect_reason == "server full"
    assert any_core.handler_errors == 0


class AbortAfterSend(Recorder):
    def on_connect(self, success: bool) -> None:
        self.set_send_buffer_size(4096)
        assert self.send(build_packet(3, b"x" * 60_000))
        self.disconnect(KickReason.KICKED, "cheater", abortive=True)


def test_abortive_disconnect_resets_the_connection(any_core: IocpCore) -> None:
    svc = any_core.register_server_service(0, AbortAfterSend, host="127.0.0.1", max_sessions=1)
    client = connect_raw(svc.address, rcvbuf=4096)
    _, end = read_to_end(any_core, client)
    client.close()
    assert end == "reset"
    session = svc.pool.sessions[0]
    pump(any_core, lambda: session.disconnects == 1)
    assert session.disconnect_reason == "cheater"


class KickNonReader(Recorder):
    def on_connect(self, success: bool) -> None:
        self.set_send_buffer_size(4096)
        assert self.send(build_packet(4, b"y" * 60_000) * 30)  # far more than both buffers hold
        self.disconnect("bye", linger_ms=200)


def test_a_graceful_close_to_a_peer_that_never_reads_aborts_after_the_linger(any_core: IocpCore) -> None:
    svc = any_core.register_server_service(0, KickNonReader, host="127.0.0.1", max_sessions=1)
    client = connect_raw(svc.address, rcvbuf=4096)
    session = svc.pool.sessions[0]
    pump(any_core, lambda: session.disconnects == 1)  # not reading: the send never completes
    assert session.sent == []  # cancelled by the abort, never reported as written
    _, end = read_to_end(any_core, client)
    client.close()
    assert end == "reset"


# ---------------------------------------------------------------------------------- defect 2
def read_packet(sock: socket.socket, want: int) -> bytes:
    """The payload of the next packet with id `want` (others are skipped); blocking."""
    while True:
        header = _recv_exactly(sock, PacketHeader.SIZE)
        size, packet_id = PacketHeader.unpack_from(header).size, PacketHeader.unpack_from(header).id
        payload = _recv_exactly(sock, size - PacketHeader.SIZE)
        if packet_id == want:
            return payload


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


class PacketEcho(Recorder):
    def on_recv(self, buf: memoryview, length: int) -> int:
        packets, consumed = read_packets(buf, length)
        for packet_id, payload in packets:
            self.reserve_send(build_packet(packet_id, payload))
        self.flush_send()
        return consumed


def test_n_worker_threads_calling_handle_iocp_serve_every_connection(any_core: IocpCore) -> None:
    core = any_core
    """RAON's main: services first, then 4 workers looping on handle_iocp(-1); 20 clients at once,
    each connecting 3 times and echoing 30 packets per connection."""
    svc = core.register_server_service(0, PacketEcho, host="127.0.0.1", max_sessions=64)  # >= 60 conns
    stopping = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stopping.is_set():
                core.handle_iocp(-1)
        except BaseException as exc:
            errors.append(exc)

    served: list[int] = []

    def client(n: int) -> None:
        try:
            for _ in range(3):
                with connect_raw(svc.address) as sock:
                    for i in range(30):
                        packet = build_packet(i, f"client {n} packet {i}".encode())
                        sock.sendall(packet)
                        assert _recv_exactly(sock, len(packet)) == packet
            served.append(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(20)]
    try:
        for thread in workers + clients:
            thread.start()
        for thread in clients:
            thread.join(WAIT_S * 3)
    finally:
        stopping.set()
        core.stop()  # every worker's handle_iocp(-1) returns
        for thread in workers:
            thread.join(WAIT_S)
    assert errors == [] and sorted(served) == list(range(20))
    assert not any(thread.is_alive() for thread in workers)
    assert core.handler_errors == 0
    pump(core, lambda: not svc.active_sessions)


def test_io_from_a_thread_racing_a_running_worker_is_refused_with_a_clear_error(core: IocpCore) -> None:
    inside = threading.Event()
    leave = threading.Event()

    def job() -> None:  # holds the port, as a worker dispatching a completion does
        inside.set()
        leave.wait(WAIT_S)

    core.push_iocp_job(job)
    worker = threading.Thread(target=core.handle_iocp, args=(int(WAIT_S * 1000),))
    worker.start()
    try:
        assert inside.wait(WAIT_S)
        with pytest.raises(RuntimeError, match="push_iocp_job"):
            core.register_server_service(0, Recorder, host="127.0.0.1", max_sessions=1)
    finally:
        leave.set()
        worker.join(WAIT_S)
    # Without a running worker the same call is fine (setup before the workers start).
    assert core.register_server_service(0, Recorder, host="127.0.0.1", max_sessions=1).address


# ---------------------------------------------------------------------------------- defect 3
def test_add_ref_on_a_released_pooled_session_takes_no_reference(core: IocpCore) -> None:
    svc = core.register_server_service(0, Recorder, host="127.0.0.1", max_sessions=1)
    session = svc.pool.sessions[0]
    assert session.ref_count == IocpObject.UNUSED and session.add_ref() <= 0
    client = connect_raw(svc.address)
    pump(core, lambda: session.is_connected)
    assert session.add_ref() >= 2  # in use: a real reference (the recv holds one)
    assert session.release() >= 1
    client.close()
    pump(core, lambda: session.disconnects == 1 and svc.pool.free_count == 1)
    assert session.add_ref() <= 0  # RAON: "already released"; the count stays UNUSED
    again = connect_raw(svc.address)
    pump(core, lambda: session.is_connected)  # the only pooled session is still in service
    again.close()
    pump(core, lambda: session.disconnects == 2)


class PinnedDelayedEcho(Recorder):
    """Answers 100 ms later from a timer that pins the session with add_ref (docs/MIGRATING.md)."""

    def on_recv(self, buf: memoryview, length: int) -> int:
        packets, consumed = read_packets(buf, length)
        self.received += len(packets)
        for packet_id, payload in packets:
            reply = build_packet(packet_id, payload)
            if self.add_ref() > 0:  # <= 0: already released, nothing to answer
                self.core.push_timer_job(100, lambda r=reply: self.answer(r))
        return consumed

    def answer(self, reply: bytes) -> None:
        try:
            if self.is_connected:  # the player may have left; the object cannot have been reused
                self.send(reply)
        finally:
            self.release()


class GenerationDelayedEcho(Recorder):
    """The same with `generation`: no pin, so the session may be reused before the timer fires."""

    def on_recv(self, buf: memoryview, length: int) -> int:
        packets, consumed = read_packets(buf, length)
        self.received += len(packets)
        for packet_id, payload in packets:
            reply, generation = build_packet(packet_id, payload), self.generation
            self.core.push_timer_job(100, lambda r=reply, g=generation: self.answer(r, g))
        return consumed

    def answer(self, reply: bytes, generation: int) -> None:
        if self.generation == generation and self.is_connected:
            self.send(reply)


@pytest.mark.parametrize("session_cls", [PinnedDelayedEcho, GenerationDelayedEcho])
def test_a_timer_holding_a_session_never_answers_the_next_player(
    core: IocpCore, session_cls: type[Recorder]
) -> None:
    svc = core.register_server_service(0, session_cls, host="127.0.0.1", max_sessions=1)
    session = svc.pool.sessions[0]
    first = connect_raw(svc.address)
    first.sendall(build_packet(1, b"for the first player"))
    pump(core, lambda: session.received == 1)
    first.close()
    pump(core, lambda: session.disconnects == 1)  # pinned: only after the timer let go
    second = connect_raw(svc.address)
    second.sendall(build_packet(2, b"for the second player"))
    expected = build_packet(2, b"for the second player")
    data = b""
    second.setblocking(False)
    deadline = time.monotonic() + WAIT_S
    while len(data) < len(expected):  # a stale answer's timer is due first: it would come first
        assert time.monotonic() < deadline, f"got {data!r}"
        core.handle_iocp(10)
        try:
            data += second.recv(4096)
        except BlockingIOError:
            pass
    second.close()
    assert data == expected


# ---------------------------------------------------------------------------------- defect 4
def test_a_standalone_pool_refuses_a_double_release_and_a_stranger() -> None:
    pool = SessionPool(Recorder, 2)
    first = pool.acquire()
    assert first is not None
    pool.release(first)
    with pytest.raises(RuntimeError, match="released twice"):
        pool.release(first)
    with pytest.raises(ValueError, match="does not belong"):
        pool.release(Recorder())
    a, b = pool.acquire(), pool.acquire()
    assert a is not None and b is not None and a is not b and pool.acquire() is None
    assert pool.alive_sessions() == {a, b}


# ---------------------------------------------------------------------------------- defect 5
def test_push_timer_job_from_another_thread_wakes_a_waiting_handle_iocp(any_core: IocpCore) -> None:
    stopping = threading.Event()
    ran = threading.Event()
    ran_on: list[int] = []

    def loop() -> None:
        while not stopping.is_set():
            any_core.handle_iocp(-1)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.1)  # the loop is waiting with no timer due
        any_core.push_timer_job(20, lambda: (ran_on.append(threading.get_ident()), ran.set()))
        assert ran.wait(WAIT_S / 2), "the timer waited for an unrelated wake-up"
        assert ran_on == [thread.ident]
    finally:
        stopping.set()
        any_core.stop()
        thread.join(WAIT_S)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------------- defect 6
def test_backend_legacy_iocp_means_the_iocp_legacy_provider(tmp_path: Path) -> None:
    from framework.config import load_settings

    path = tmp_path / "legacy.yaml"
    path.write_text("io:\n  backend: legacy_iocp\n  fallback: false\n")
    for core in (
        IocpCore(backend="legacy_iocp", fallback=False),
        IocpCore(settings=load_settings(path, env={})),
    ):
        assert core.initialize(), core.last_error
        try:
            assert core.provider.name == "legacy_iocp"
            svc = core.register_server_service(0, NotifyThenKick, host="127.0.0.1", max_sessions=1)
            client = connect_raw(svc.address)
            assert read_to_end(core, client) == (NOTICE + TAIL, "eof")
            client.close()
        finally:
            core.shutdown()


# ---------------------------------------------------------------------------------- the RAON surface
class Kicker(Recorder):
    def on_recv(self, buf: memoryview, length: int) -> int:
        self.disconnect(KickReason.RECV_BUFFER_FULL)  # any enum member: the reason is an enum
        return length


def test_kick_reason_and_session_type(core: IocpCore) -> None:
    svc = core.register_server_service(0, Recorder, host="127.0.0.1", max_sessions=1)
    server_side = svc.pool.sessions[0]
    assert server_side.get_session_type() == SessionType.NONE
    out = core.register_client_service(svc.address, Kicker)
    assert out.service_type is ServiceType.CLIENT_MANUAL  # RAON's name, same service type
    client_side = out.manual_connect()
    assert client_side is not None
    pump(core, lambda: server_side.is_connected and client_side.is_connected)
    assert server_side.get_session_type() == SessionType.SERVER
    assert client_side.get_session_type() == SessionType.CLIENT
    assert server_side.send(b"hi")
    pump(core, lambda: client_side.disconnects == 1 and server_side.disconnects == 1)
    assert client_side.kick_reason == KickReason.RECV_BUFFER_FULL
    assert client_side.disconnect_reason == "recv buffer full"
    assert server_side.kick_reason == KickReason.CLOSED_BY_PEER
    assert server_side.get_session_type() == SessionType.NONE  # back in the pool


def test_a_server_service_on_the_callers_pool_with_counts_and_reset(core: IocpCore) -> None:
    pool = SessionPool(Recorder, 2)
    svc = core.register_server_service(0, host="127.0.0.1", pool=pool)
    assert svc.pool is pool and svc.listener is not None
    with pytest.raises(ValueError, match="already serves"):
        core.register_server_service(0, host="127.0.0.1", pool=pool)
    listener = svc.listener
    clients = [connect_raw(svc.address) for _ in range(3)]  # the third finds the pool empty
    pump(core, lambda: listener.accepted_count == 2 and listener.refused_count == 1)
    assert listener.session_count == 2 and listener.max_session_count == 2
    assert pool.alive_sessions() == set(pool.sessions)
    with pytest.raises(RuntimeError, match="still connected"):
        pool.reset_session_pool()
    for sock in clients:
        sock.close()
    core.unregister_service(svc)
    pump(core, lambda: svc.stopped)
    assert listener.session_count == 0 and pool.alive_sessions() == set()
    pool.reset_session_pool()
    assert pool.acquire() is pool.sessions[0]  # index order again
    pool.release(pool.sessions[0])
    # The stopped service's pool serves a new one.
    again = core.register_server_service(0, host="127.0.0.1", pool=pool)
    sock = connect_raw(again.address)
    pump(core, lambda: again.listener.session_count == 1)
    sock.close()


def test_call_later_passes_extra_arguments_as_asyncio_does(tmp_path: Path) -> None:
    from framework.config import load_settings
    from framework.session.server import Server
    from framework.session.session import Session

    path = tmp_path / "s.yaml"
    path.write_text("server:\n  hosts: ['127.0.0.1']\n  port: 0\nstats:\n  interval_s: 0\n")
    server = Server(load_settings(path, env={}), Session)
    server.start()
    try:
        got: list[tuple[int, str]] = []
        server.call_later(0.01, lambda n, s: got.append((n, s)), 3, "tries")
        assert server.run_until(lambda: got == [(3, "tries")], WAIT_S)
    finally:
        server.shutdown()
        server.serve_forever()


# ---------------------------------------------------------------------------------- the example
@pytest.mark.parametrize("backend", RUNNABLE_BACKENDS)
def test_legacy_chat_with_worker_threads_tells_a_late_client_server_full(backend: str) -> None:
    """`python -m examples.legacy_chat --workers 4 --max-members 1`: RAON's main; notify-then-kick."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.legacy_chat", "--backend", backend, "--port", "0", *WORKERS_FULL],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        match = None
        for _ in range(20):  # log lines may come first
            line = proc.stdout.readline()
            assert line, f"server exited: {proc.stderr.read() if proc.poll() is not None else ''}"
            match = re.search(r"listening on ([\d.]+):(\d+)", line)
            if match:
                break
        assert match
        address = (match.group(1), int(match.group(2)))
        with connect_raw(address) as alice, connect_raw(address) as bob:
            alice.sendall(text_packet(PacketId.LOGIN, "alice"))
            assert read_packet(alice, PacketId.LOGIN_OK).startswith(b"welcome alice")
            bob.sendall(text_packet(PacketId.LOGIN, "bob"))
            assert read_packet(bob, PacketId.NOTICE) == b"server full"
            assert bob.recv(1) == b""  # then kicked: a clean EOF after the notice
            alice.sendall(text_packet(PacketId.CHAT, "still here"))
            assert parse_chat_notify(read_packet(alice, PacketId.CHAT_NOTIFY)) == ("alice", "still here")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=WAIT_S)
        finally:
            proc.kill()
            proc.stdout.close()
            proc.stderr.close()
    assert rc == 0
