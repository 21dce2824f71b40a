"""The RAON legacy API (framework.legacy), its example chat, and the legacy_iocp provider.

Everything runs on real loopback sockets over every backend that can run here (the contract suite
covers legacy_iocp as a provider; here it also serves as the core's completion port).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from examples.legacy_chat.client import ChatClient
from examples.legacy_chat.protocol import MAX_TEXT, PacketId, chat_notify, parse_chat_notify
from examples.legacy_chat.server import ChatServer
from framework.io.factory import create_provider, provider_class
from framework.legacy import (
    IocpCore,
    IocpLegacyProvider,
    IocpObject,
    IocpObjectSession,
    IoType,
    OverlappedEx,
    PacketError,
    PacketHeader,
    build_packet,
    read_packets,
)
from tests.support.backends import RUNNABLE_BACKENDS
from tests.support.marks import needs_posix_signals
from tests.support.provider import WAIT_S

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=RUNNABLE_BACKENDS)
def core(request: pytest.FixtureRequest) -> Iterator[IocpCore]:
    """An IocpCore whose completion port is each runnable backend (legacy_iocp included)."""
    c = IocpCore(provider=create_provider(request.param, fallback=False), max_connections=256)
    assert c.initialize(), c.last_error
    yield c
    c.shutdown()


def pump(core: IocpCore, until: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        core.handle_iocp(50)


def connect_raw(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address[:2], timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(core: IocpCore, sock: socket.socket, n: int) -> bytes:
    """Read n bytes from a blocking client socket while the core keeps running."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + WAIT_S
    while len(data) < n:
        assert time.monotonic() < deadline, f"got {len(data)} of {n} bytes"
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            core.handle_iocp(20)
            continue
        assert chunk, "peer closed"
        data += chunk
    return data


# ---------------------------------------------------------------------------------- packet header
def test_packet_header_is_little_endian_and_counts_itself() -> None:
    packet = build_packet(0x0102, b"ab")
    assert packet == b"\x06\x00\x02\x01ab"
    assert PacketHeader.unpack_from(packet) == PacketHeader(6, 0x0102)
    packets, consumed = read_packets(packet + packet[:3], len(packet) + 3)
    assert [(i, bytes(p)) for i, p in packets] == [(0x0102, b"ab")]
    assert consumed == 6
    with pytest.raises(PacketError):
        read_packets(b"\x02\x00\x01\x00", 4)  # size smaller than the header itself


def test_chat_notify_round_trips_and_a_truncated_one_is_a_packet_error() -> None:
    packet = chat_notify("é" * 20, "hi")  # 40 bytes of name: cut to 32 at a character boundary
    (packet_id, payload), *_ = read_packets(packet, len(packet))[0]
    assert packet_id == PacketId.CHAT_NOTIFY
    assert parse_chat_notify(payload) == ("é" * 16, "hi")
    for bad in (b"", b"\x05abc"):
        with pytest.raises(PacketError):
            parse_chat_notify(bad)


def test_initialize_reports_an_unusable_backend_instead_of_raising() -> None:
    core = IocpCore(backend="no-such-backend", fallback=False)
    assert not core.initialize()
    assert "no-such-backend" in core.last_error


@pytest.mark.parametrize("backend", RUNNABLE_BACKENDS)
def test_a_server_service_that_cannot_register_its_listener_raises(backend: str) -> None:
    core = IocpCore(provider=create_provider(backend, fallback=False), max_connections=1)
    assert core.initialize(), core.last_error
    try:
        first = core.register_server_service(0, RecordingSession, host="127.0.0.1", max_sessions=1)
        with pytest.raises(OSError, match="could not start"):
            core.register_server_service(0, RecordingSession, host="127.0.0.1", max_sessions=1)
        assert core.services == [first]
    finally:
        core.shutdown()


# ---------------------------------------------------------------------------------- the chat example
def test_legacy_chat_end_to_end(core: IocpCore) -> None:
    server = ChatServer(core, "127.0.0.1", 0)
    alice = ChatClient(core, server.address[:2], "alice")
    pump(core, lambda: alice.logged_in)
    bob = ChatClient(core, server.address[:2], "bob")
    pump(core, lambda: bob.logged_in and "bob joined" in alice.notices)
    assert alice.say("hello bob")
    assert bob.say("hi alice")
    pump(core, lambda: len(alice.chats) == 2 and len(bob.chats) == 2)
    assert alice.chats == bob.chats == [("alice", "hello bob"), ("bob", "hi alice")]
    bob.stop()
    pump(core, lambda: "bob left" in alice.notices)
    assert server.room.messages == 2
    # on_send reported every packet the server wrote: 2 logins, 1 join, 4 chats, 1 leave notice.
    assert server.room.packets_sent == 8
    assert core.handler_errors == 0


def test_a_chat_too_long_to_relay_disconnects_only_its_sender(core: IocpCore) -> None:
    server = ChatServer(core, "127.0.0.1", 0)
    alice = ChatClient(core, server.address[:2], "alice", reconnect_delay_ms=50)
    bob = ChatClient(core, server.address[:2], "bob")
    pump(core, lambda: alice.logged_in and bob.logged_in)
    # Relayed, this line would make a CHAT_NOTIFY over MAX_PACKET that every client refuses.
    assert alice.say("x" * (MAX_TEXT + 1))
    pump(core, lambda: alice.logins == 2)  # disconnected by the server, then reconnected
    assert server.room.messages == 0
    assert alice.say("y" * MAX_TEXT)  # the longest line that fits is relayed
    pump(core, lambda: len(bob.chats) == 1)
    assert bob.chats == [("alice", "y" * MAX_TEXT)] and bob.logins == 1
    assert core.handler_errors == 0


@needs_posix_signals
@pytest.mark.skipif(not RUNNABLE_BACKENDS, reason="no backend can run here")
def test_legacy_chat_command_line_server() -> None:
    """`python -m examples.legacy_chat --backend <this OS's first backend> --port 0` serves a
    client, stops on SIGTERM."""
    backend = RUNNABLE_BACKENDS[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.legacy_chat", "--backend", backend, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    core = IocpCore(backend=backend, fallback=False)
    assert core.initialize()
    try:
        match = None
        for _ in range(20):  # log lines may come first
            line = proc.stdout.readline()
            assert line, f"server exited: {proc.stderr.read() if proc.poll() is not None else ''}"
            match = re.search(rf"listening on ([\d.]+):(\d+) \(backend {backend}\)", line)
            if match:
                break
        assert match
        address = (match.group(1), int(match.group(2)))
        carol = ChatClient(core, address, "carol")
        pump(core, lambda: carol.logged_in)
        assert carol.say("anyone?")
        pump(core, lambda: carol.chats == [("carol", "anyone?")])
    finally:
        core.shutdown()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=WAIT_S)
        finally:
            proc.kill()
            proc.stdout.close()
            proc.stderr.close()
    assert rc == 0


def test_auto_reconnecting_client_service_reconnects_after_server_restart(core: IocpCore) -> None:
    server = ChatServer(core, "127.0.0.1", 0)
    address = server.address[:2]
    client = ChatClient(core, address, "dave", reconnect_delay_ms=50)
    pump(core, lambda: client.logins == 1)
    server.stop()
    pump(core, lambda: server.service.stopped and not client.logged_in)
    pump(core, lambda: client.failed_connects >= 1)  # retried while the port is closed
    restarted = ChatServer(core, *address)
    pump(core, lambda: client.logins == 2)
    assert client.connects == 2
    assert client.say("back")
    pump(core, lambda: ("dave", "back") in client.chats)
    assert restarted.room.messages == 1


# ---------------------------------------------------------------------------------- IocpObjectSession
class RecordingSession(IocpObjectSession):
    """Consumes complete packets only; records what on_recv saw and returned."""

    def __init__(self) -> None:
        super().__init__(recv_buffer_size=256)
        self.seen: list[tuple[bytes, int]] = []
        self.packets: list[tuple[int, bytes]] = []
        self.sent: list[tuple[int, int]] = []
        self.disconnected = 0

    def on_recv(self, buf: memoryview, length: int) -> int:
        packets, consumed = read_packets(buf, length)
        self.packets += [(i, bytes(p)) for i, p in packets]
        self.seen.append((bytes(buf[:length]), consumed))
        return consumed

    def on_send(self, length: int, packet_id: int) -> None:
        self.sent.append((length, packet_id))

    def on_disconnect(self) -> None:
        self.disconnected += 1


def serve_one(core: IocpCore, session_cls: type[IocpObjectSession]) -> tuple[Any, socket.socket, Any]:
    svc = core.register_server_service(0, session_cls, host="127.0.0.1", max_sessions=2)
    client = connect_raw(svc.address)
    pump(core, lambda: any(s.is_connected for s in svc.active_sessions))
    return svc, client, svc.active_sessions[0]


def test_partial_on_recv_consumption_keeps_the_rest(core: IocpCore) -> None:
    _svc, client, session = serve_one(core, RecordingSession)
    p1 = build_packet(7, b"hello world")
    p2 = build_packet(8, b"xyz")
    chunks = [p1[:3], p1[3:10], p1[10:] + p2[:2], p2[2:]]
    for i, chunk in enumerate(chunks, 1):
        client.sendall(chunk)
        pump(core, lambda i=i: len(session.seen) == i)
    assert (
        session.seen
        == [
            (p1[:3], 0),  # not even a header: nothing consumed
            (p1[:10], 0),  # the same 3 bytes presented again, followed by the new ones
            (p1 + p2[:2], len(p1)),  # the first packet completes; 2 bytes of the next stay
            (p2, len(p2)),
        ]
    )
    assert session.packets == [(7, b"hello world"), (8, b"xyz")]
    client.close()
    pump(core, lambda: session.disconnected == 1)
    assert session.disconnect_reason == "closed by peer"


def counting_core(backend: str) -> tuple[IocpCore, Any]:
    base = provider_class(backend)

    class CountingProvider(base):  # type: ignore[misc, valid-type]
        """Counts the send operations the session layer posts (no OS call is faked)."""

        def __init__(self) -> None:
            super().__init__()
            self.sends_posted = 0

        def send_async(self, sock, data, callback=None, context=None, timeout_ms=None):  # type: ignore[no-untyped-def]
            self.sends_posted += 1
            return super().send_async(sock, data, callback, context, timeout_ms)

    provider = CountingProvider()
    c = IocpCore(provider=provider, max_connections=64)
    assert c.initialize(), c.last_error
    return c, provider


@pytest.mark.parametrize("backend", RUNNABLE_BACKENDS)
def test_reserve_send_flush_send_is_one_gathered_send(backend: str) -> None:
    core, provider = counting_core(backend)
    try:
        _svc, client, session = serve_one(core, RecordingSession)
        packets = [build_packet(10 + i, bytes([65 + i]) * (i + 1)) for i in range(3)]
        before = provider.sends_posted
        for p in packets:
            assert session.reserve_send(p)
        assert provider.sends_posted == before  # reserved only
        assert session.flush_send()
        assert provider.sends_posted == before + 1  # three packets, one send operation
        assert recv_exactly(core, client, sum(map(len, packets))) == b"".join(packets)
        pump(core, lambda: len(session.sent) == 3)
        assert session.sent == [(len(p), 10 + i) for i, p in enumerate(packets)]

        # While a send is in flight, later sends queue and leave together as the next one.
        before = provider.sends_posted
        for p in packets:
            assert session.send(p)
        assert provider.sends_posted == before + 1
        pump(core, lambda: len(session.sent) == 6)
        assert provider.sends_posted == before + 2
        assert recv_exactly(core, client, sum(map(len, packets))) == b"".join(packets)
        client.close()
    finally:
        core.shutdown()


class RaisingSession(RecordingSession):
    def on_recv(self, buf: memoryview, length: int) -> int:
        if bytes(buf[:length]).startswith(b"boom"):
            raise RuntimeError("handler bug")
        return super().on_recv(buf, length)


def test_a_raising_handler_closes_its_session_and_the_loop_goes_on(core: IocpCore) -> None:
    svc, bad_client, bad = serve_one(core, RaisingSession)
    good_client = connect_raw(svc.address)
    pump(core, lambda: len([s for s in svc.active_sessions if s.is_connected]) == 2)
    good = next(s for s in svc.active_sessions if s is not bad)
    bad_client.sendall(b"boom")
    pump(core, lambda: bad.disconnected == 1)
    assert bad.disconnect_reason.startswith("handler raised RuntimeError")
    assert core.handler_errors == 1
    good_client.sendall(build_packet(1, b"still here"))
    pump(core, lambda: good.packets == [(1, b"still here")])
    bad_client.close()
    good_client.close()


def test_session_pool_is_reused_circularly_and_refuses_when_empty(core: IocpCore) -> None:
    svc = core.register_server_service(0, RecordingSession, host="127.0.0.1", max_sessions=1)
    first = connect_raw(svc.address)
    pump(core, lambda: len(svc.active_sessions) == 1)
    session = svc.active_sessions[0]
    generation = session.generation
    refused = connect_raw(svc.address)
    refused.settimeout(WAIT_S)
    refused.setblocking(False)
    pump(core, lambda: _peer_closed(refused))  # pool empty: the connection is closed at once
    first.close()
    pump(core, lambda: not svc.active_sessions and svc.pool.free_count == 1)
    again = connect_raw(svc.address)
    pump(core, lambda: len(svc.active_sessions) == 1)
    assert svc.active_sessions[0] is session  # the same object, reset
    assert session.generation == generation + 1
    again.close()
    refused.close()


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


# ---------------------------------------------------------------------------------- jobs
def test_push_iocp_job_from_threads_runs_each_job_once_on_the_loop_thread(core: IocpCore) -> None:
    ran: list[tuple[int, int]] = []
    threads_n, per_thread = 4, 250

    def producer(t: int) -> None:
        for i in range(per_thread):
            assert core.push_iocp_job(lambda key=(t, i): ran.append((key, threading.get_ident())))

    class Job(IocpObject):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[IoType, int]] = []

        def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
            self.calls.append((overlapped.io_type, bytes_transferred))

    job = Job()
    threads = [threading.Thread(target=producer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    assert core.push_iocp_job(job)
    pump(core, lambda: len(ran) == threads_n * per_thread and job.calls)
    for th in threads:
        th.join(WAIT_S)
    core.handle_iocp(0)
    keys = collections.Counter(key for key, _ in ran)
    assert len(keys) == threads_n * per_thread and set(keys.values()) == {1}
    assert {ident for _, ident in ran} == {threading.get_ident()}
    assert job.calls == [(IoType.JOB, 0)]


def test_a_blocked_handle_iocp_wakes_for_a_job_from_another_thread(core: IocpCore) -> None:
    ran = threading.Event()
    timer = threading.Timer(0.2, lambda: core.push_iocp_job(ran.set))
    timer.start()
    deadline = time.monotonic() + WAIT_S
    while not ran.is_set():
        assert time.monotonic() < deadline
        core.handle_iocp(-1)  # would block forever without the job's wake-up
    timer.join()


# ---------------------------------------------------------------------------------- Session code on legacy_iocp
def _settings(tmp_path: Path, backend: str) -> Any:
    from framework.config import load_settings

    path = tmp_path / "legacy.yaml"
    path.write_text(
        f"server:\n  hosts: ['127.0.0.1']\n  port: 0\nio:\n  backend: {backend}\n  fallback: false\n"
        "stats:\n  interval_s: 0\n"
    )
    return load_settings(path, env={})


def _frame(obj: Any) -> bytes:
    payload = msgpack.packb(obj)
    return struct.pack(">I", len(payload)) + payload


def _read_frame(sock: socket.socket, run: Callable[[], Any] | None = None) -> Any:
    """One frame; `run` keeps a loop in this thread going (None: the server has its own thread)."""
    if run is None:
        sock.settimeout(WAIT_S)
    else:
        sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + WAIT_S
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        assert time.monotonic() < deadline
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            run()
            continue
        assert chunk, "server closed"
        data += chunk
    return msgpack.unpackb(data[4:])


def test_session_port_of_the_chat_runs_beside_the_legacy_one_on_one_core(tmp_path: Path) -> None:
    """Migration: the RAON chat and its Session-API port in one process, one loop, one room."""
    from examples.legacy_chat.ported import SessionChat, mount
    from framework.session.server import Server

    core = IocpCore(backend="auto")
    assert core.initialize()
    provider = IocpLegacyProvider(core=core)
    server = Server(_settings(tmp_path, "legacy_iocp"), SessionChat, provider=provider)
    try:
        chat = ChatServer(core, "127.0.0.1", 0)  # the legacy half
        mount(chat.room, server)
        (address,) = server.start()
        assert server.provider.name == "legacy_iocp"

        def run() -> None:
            server.run_once(20)  # only the Server's loop runs: it drives the legacy core too

        raon = ChatClient(core, chat.address[:2], "erin")
        modern = connect_raw(address)
        modern.sendall(_frame({"login": "frank"}))
        assert _read_frame(modern, run) == {"welcome": "frank"}
        assert server.run_until(lambda: raon.logged_in, WAIT_S)
        assert raon.say("hello from RAON")
        assert _read_frame(modern, run) == {"chat": ["erin", "hello from RAON"]}
        modern.sendall(_frame({"say": "hello from Session"}))
        assert server.run_until(lambda: ("frank", "hello from Session") in raon.chats, WAIT_S)
        stats = provider.get_statistics()
        assert stats.backend == "legacy_iocp" and stats.backend_specific["iocp_dispatched"] > 0
        modern.close()
    finally:
        server.shutdown()
        server.serve_forever()  # runs the graceful drain and returns
        core.shutdown()


def test_session_server_runs_on_backend_legacy_iocp_from_config(tmp_path: Path) -> None:
    from framework.session.server import Server
    from framework.session.session import Session

    class Echo(Session):
        def on_message(self, msg: Any) -> None:
            self.send(msg)

    server = Server(_settings(tmp_path, "legacy_iocp"), Echo)
    thread = threading.Thread(target=server.serve_forever)
    (address,) = server.start()
    thread.start()
    try:
        assert server.provider.name == "legacy_iocp"
        with socket.create_connection(address, timeout=WAIT_S) as client:
            client.sendall(_frame([1, "two"]))
            assert _read_frame(client) == [1, "two"]
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    assert not thread.is_alive()
