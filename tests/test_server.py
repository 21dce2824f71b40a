"""Server and Client behaviour over real loopback sockets, on every backend available here."""

from __future__ import annotations

import gc
import socket
import threading
import weakref
from typing import Any, ClassVar

import pytest

from framework import Client, Server, Session
from framework.session import ProtocolError, SessionId
from tests.support.backends import SESSION_BACKENDS
from tests.support.session import (
    WAIT_S,
    FrameClient,
    fd_count,
    frame,
    make_settings,
    msg_frame,
    on_loop,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=SESSION_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


class Echo(Session):
    """Echoes every message; records why sessions ended (class-level, reset per test)."""

    reasons: ClassVar[list[str]] = []
    live: ClassVar[list[weakref.ref[Session]]] = []

    def on_connected(self) -> None:
        Echo.live.append(weakref.ref(self))

    def on_message(self, msg: Any) -> None:
        if msg == "boom":
            raise RuntimeError("handler failure requested by the test")
        self.send(msg)

    def on_disconnected(self, reason: str) -> None:
        Echo.reasons.append(reason)


@pytest.fixture(autouse=True)
def _reset_records() -> None:
    Echo.reasons = []
    Echo.live = []


def test_echo_over_ipv4_and_ipv6(backend: str) -> None:
    settings = make_settings(backend, server={"hosts": ["127.0.0.1", "::1"]})
    with running_server(settings, Echo) as server:
        assert len(server.addresses) >= 1
        assert server.addresses[0][0] == "127.0.0.1"
        for address in server.addresses:  # ::1 is skipped (with a warning) only without IPv6
            c = FrameClient(address)
            for msg in ({"op": "move", "x": 1}, [1, 2, 3], "text", b"\x00\x01"):
                c.send(msg)
                assert c.recv() == msg
            c.close()
        wait_for(lambda: len(server.registry) == 0, what="sessions closed")
        assert server.stats["frames_in"] == server.stats["frames_out"] == 4 * len(server.addresses)
    assert Echo.reasons == ["peer closed"] * len(server.addresses)


def test_client_sessions_talk_to_the_server(backend: str) -> None:
    got: list[Any] = []

    class Bot(Session):
        def on_message(self, msg: Any) -> None:
            got.append(msg)

    settings = make_settings(backend)
    with running_server(settings, Echo) as server, Client(settings, Bot) as client:
        bot = client.connect(*server.addresses[0])
        assert bot.connected and bot.server is client
        for i in range(10):
            bot.send({"n": i})
        assert client.run_until(lambda: len(got) == 10, WAIT_S)
        assert got == [{"n": i} for i in range(10)]
        assert bot.stats["frames_in"] == 10 and bot.stats["frames_out"] == 10


def test_client_connect_failure_names_the_reason(backend: str) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with Client(make_settings(backend)) as client:
        with pytest.raises(ConnectionError, match="refused"):
            client.connect("127.0.0.1", port)
        assert len(client.registry) == 0


def test_a_thousand_concurrent_sessions(backend: str) -> None:
    replies: dict[int, Any] = {}

    class Bot(Session):
        def on_connected(self) -> None:
            self.send({"id": self.id.slot})

        def on_message(self, msg: Any) -> None:
            replies[msg["id"]] = msg

    settings = make_settings(
        backend,
        server={"max_connections_per_address": 0},  # 1,000 bots from 127.0.0.1
        buffers={"recv_buffer_size": 1024, "initial_buffers": 256},
    )
    with running_server(settings, Echo) as server, Client(settings, Bot) as client:
        bots = [client.connect(*server.addresses[0], wait=False) for _ in range(1000)]
        assert client.run_until(lambda: len(replies) == 1000, 30), f"only {len(replies)} replies"
        assert all(b.connected for b in bots)
        assert len(server.registry) == 1000
        assert sorted(replies) == sorted(b.id.slot for b in bots)
    assert len(server.registry) == 0


class Room(Session):
    """join -> enters the room; say -> broadcast to the room; ping -> pong."""

    def on_message(self, msg: Any) -> None:
        room = self.server.registry.group("lobby")
        if msg == "join":
            room.add(self)
            self.send("joined")
        elif msg == "ping":
            self.send("pong")
        else:
            room.broadcast({"said": msg})


FLOOD_FRAMES = 300
FLOOD_SIZE = 32 * 1024


class Caster(Session):
    """join -> enters the room; "reply+cast" -> a reply to the sender, then a room broadcast in
    the same handler; "flood" -> FLOOD_FRAMES broadcasts of FLOOD_SIZE bytes, one per millisecond,
    then "flooded" to the sender."""

    paused: ClassVar[list[str]] = []
    reasons: ClassVar[list[str]] = []

    def on_message(self, msg: Any) -> None:
        room = self.server.registry.group("room")
        if msg == "join":
            room.add(self)
            self.send("joined")
        elif msg == "reply+cast":
            self.send("reply")
            room.broadcast("cast")
        elif msg == "flood":
            sent = iter(range(FLOOD_FRAMES))

            def tick() -> None:
                i = next(sent, None)
                if i is None:
                    timer.cancel()
                    self.send("flooded")
                    return
                room.broadcast_frame(b"%08d" % i + b"f" * (FLOOD_SIZE - 8))

            timer = self.server.call_every(0.001, tick)

    def on_pause_writing(self) -> None:
        Caster.paused.append(str(self.id))

    def on_disconnected(self, reason: str) -> None:
        Caster.reasons.append(reason)


def test_broadcast_keeps_each_members_order_and_closes_a_member_that_never_reads(backend: str) -> None:
    """A member with a reply still queued gets the broadcast after it; a member that never reads
    is paused at the high-water mark and closed as a slow consumer at the hard cap by broadcasts
    alone, while the members that read get every frame in order."""
    Caster.paused.clear()
    Caster.reasons.clear()
    session = {"write_high_water": 64 * 1024, "write_low_water": 16 * 1024, "write_hard_cap": 512 * 1024}
    with running_server(make_settings(backend, session=session), Caster) as server:
        readers = [FrameClient(server.addresses[0]) for _ in range(3)]
        stuck = FrameClient(server.addresses[0], rcvbuf=4096)
        for c in [*readers, stuck]:
            c.send("join")
            assert c.recv() == "joined"
        readers[0].send("reply+cast")
        assert readers[0].recv() == "reply"  # queued before the broadcast: it leaves first
        for c in readers:
            assert c.recv() == "cast"

        got: dict[int, list[int]] = {}

        def read_all(i: int) -> None:  # every reader reads at once, so only `stuck` backs up
            got[i] = [int(readers[i].recv_frame()[:8]) for _ in range(FLOOD_FRAMES)]

        threads = [threading.Thread(target=read_all, args=(i,)) for i in range(3)]
        readers[1].send("flood")
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert all(got.get(i) == list(range(FLOOD_FRAMES)) for i in range(3))
        assert readers[1].recv() == "flooded"
        wait_for(lambda: "slow consumer" in Caster.reasons, what="the stuck member closed as a slow consumer")
        assert Caster.reasons == ["slow consumer"]  # nobody else was closed
        assert len(Caster.paused) == 1
        assert stuck.closed_by_peer()
        for c in readers:
            c.close()


def test_group_broadcast_reaches_every_member_exactly_once(backend: str) -> None:
    with running_server(make_settings(backend), Room) as server:
        members = [FrameClient(server.addresses[0]) for _ in range(20)]
        outsider = FrameClient(server.addresses[0])
        for c in members:
            c.send("join")
            assert c.recv() == "joined"
        members[0].send("hello")
        for c in members:
            assert c.recv() == {"said": "hello"}
            c.send("ping")
            assert c.recv() == "pong"  # nothing extra arrived between the broadcast and the pong
        outsider.send("ping")
        assert outsider.recv() == "pong"  # the non-member got no broadcast
        members[5].close()
        wait_for(lambda: len(server.registry.group("lobby")) == 19, what="member left the group")
        members[1].send("again")
        for i, c in enumerate(members):
            if i != 5:
                assert c.recv() == {"said": "again"}
        for c in [*members, outsider]:
            c.close()


def test_stale_completion_after_slot_reuse_is_dropped(backend: str) -> None:
    """Deterministic race, single-threaded: session A closes, B takes A's slot (new generation), then
    a real recv completion carrying A's context arrives. It must be dropped and counted, and B must
    neither see its data nor be disturbed."""
    received: list[Any] = []

    class Recorder(Session):
        def on_message(self, msg: Any) -> None:
            received.append((self.id, msg))
            self.send(msg)

    server = Server(make_settings(backend), Recorder)
    address = server.start()[0]
    try:
        a = FrameClient(address)
        assert server.run_until(lambda: len(server.registry) == 1, WAIT_S)
        session_a = next(iter(server.registry))
        ctx_a = session_a._ctx
        a.close()
        assert server.run_until(lambda: len(server.registry) == 0, WAIT_S)

        b = FrameClient(address)
        assert server.run_until(lambda: len(server.registry) == 1, WAIT_S)
        session_b = next(iter(server.registry))
        assert session_b.id == SessionId(session_a.id.slot, session_a.id.generation + 1)
        assert server.registry.get(session_a.id) is None

        # A completion for A's (finished) operation context, delivered by the provider now.
        stale_before = server.registry.stale_completions
        x, y = socket.socketpair()
        assert server.provider.register_socket(x)
        ctx_a.pending += 1
        assert server.provider.recv_async(x, bytearray(256), server._on_recv, ctx_a)
        y.sendall(msg_frame("intruder"))
        assert server.run_until(lambda: server.registry.stale_completions == stale_before + 1, WAIT_S)
        assert received == []
        assert session_b.frames_in == 0 and session_b.connected

        b.send("mine")
        assert server.run_until(lambda: received == [(session_b.id, "mine")], WAIT_S)
        server.run_once(0)  # flushes the echo
        assert b.recv() == "mine"
        server.provider.unregister_socket(x)
        x.close()
        y.close()
        b.close()
    finally:
        server.shutdown()
        server.serve_forever()


def test_session_object_is_freed_after_close(backend: str) -> None:
    with running_server(make_settings(backend), Echo) as server:
        clients = [FrameClient(server.addresses[0]) for _ in range(3)]
        for c in clients:
            c.send("hi")
            assert c.recv() == "hi"
        refs = list(Echo.live)
        assert len(refs) == 3 and all(r() is not None for r in refs)
        on_loop(server, lambda: next(iter(server.registry)).close("kick"))  # server-side close
        clients[1].close()  # peer close
        clients[2].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        clients[2].close()  # reset
        assert clients[0].closed_by_peer()  # slot 0 is the first client: the kicked one
        clients[0].close()
        wait_for(lambda: len(server.registry) == 0, what="all sessions closed")

        def all_dead() -> bool:
            gc.collect()
            return all(r() is None for r in refs)

        wait_for(all_dead, what="session objects freed")


def test_exceptions_in_handlers_close_or_keep_per_config(backend: str) -> None:
    with running_server(make_settings(backend, session={"handler_errors": "close"}), Echo) as server:
        c = FrameClient(server.addresses[0])
        other = FrameClient(server.addresses[0])
        c.send("boom")
        assert c.closed_by_peer()
        c.close()
        other.send("still here")
        assert other.recv() == "still here"
        wait_for(lambda: server.handler_errors == 1, what="error counted")
        other.close()
    assert "handler error in on_message" in Echo.reasons

    with running_server(make_settings(backend, session={"handler_errors": "keep"}), Echo) as server:
        c = FrameClient(server.addresses[0])
        c.send("boom")
        c.send("after")
        assert c.recv() == "after"
        assert server.handler_errors == 1
        c.close()


def test_oversized_frame_and_malformed_msgpack_close_only_that_session(backend: str) -> None:
    settings = make_settings(backend, session={
        "max_frame_size": 1024, "max_str_len": 512, "max_bin_len": 512, "max_ext_len": 512,
        "max_array_len": 512, "max_map_len": 512,
    })
    with running_server(settings, Echo) as server:
        good = FrameClient(server.addresses[0])
        oversized = FrameClient(server.addresses[0])
        malformed = FrameClient(server.addresses[0])
        good.send("before")
        assert good.recv() == "before"
        oversized.send_raw(b"\xff\xff\xff\xf0")  # announces ~4 GB; nothing else follows
        malformed.send_raw(frame(b"\xc1\xc1"))
        assert oversized.closed_by_peer()
        assert malformed.closed_by_peer()
        good.send("after")
        assert good.recv() == "after"
        wait_for(lambda: server.protocol_errors == 2, what="protocol errors counted")
        assert len(server.registry) == 1
        good.close()
    assert sum(r.startswith("protocol error") for r in Echo.reasons) == 2
    assert any("exceeds max_frame_size" in r for r in Echo.reasons)
    assert any("malformed msgpack" in r for r in Echo.reasons)
    assert issubclass(ProtocolError, Exception)


def test_idle_timeout_closes_silent_and_trickling_clients(backend: str) -> None:
    settings = make_settings(backend, session={"idle_timeout_s": 1.5})
    with running_server(settings, Echo) as server:
        silent = FrameClient(server.addresses[0])
        trickler = FrameClient(server.addresses[0])
        active = FrameClient(server.addresses[0])
        stop = threading.Event()
        payload = msg_frame("x" * 200)
        active_ok: list[bool] = []

        def trickle() -> None:
            # A slowloris: bytes keep coming, but a frame never completes.
            for i in range(len(payload) - 1):
                if stop.wait(0.05):
                    return
                try:
                    trickler.send_raw(payload[i : i + 1])
                except OSError:
                    return

        def keep_busy() -> None:
            # Completes a frame every 100 ms: never idle.
            try:
                while not stop.wait(0.1):
                    active.send("ping")
                    assert active.recv() == "ping"
                active_ok.append(True)
            except (OSError, EOFError, AssertionError):
                active_ok.append(False)

        threads = [threading.Thread(target=f, daemon=True) for f in (trickle, keep_busy)]
        for t in threads:
            t.start()
        try:
            assert silent.closed_by_peer()
            assert trickler.closed_by_peer()
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT_S)
        assert active_ok == [True]
        assert server.idle_timeouts == 2
        assert len(server.registry) == 1
        for c in (silent, trickler, active):
            c.close()
    assert Echo.reasons.count("idle timeout") == 2


class Flooder(Session):
    """`sub` subscribes to a tick that pushes 16 KB per session every 10 ms (ignoring pause, like a
    careless producer); anything else is echoed."""

    subscribers: ClassVar[set[Session]] = set()
    timer: ClassVar[Any] = None

    def on_message(self, msg: Any) -> None:
        if msg == "sub":
            Flooder.subscribers.add(self)
            if Flooder.timer is None:
                blob = b"z" * 16384
                Flooder.timer = self.server.call_every(0.01, lambda: [s.send_frame(blob) for s in list(Flooder.subscribers)])
            self.send("subbed")
        else:
            self.send(msg)

    def on_disconnected(self, reason: str) -> None:
        Flooder.subscribers.discard(self)
        Echo.reasons.append(reason)


def test_non_reading_client_is_closed_at_the_cap_while_others_keep_going(backend: str) -> None:
    Flooder.subscribers = set()
    Flooder.timer = None
    settings = make_settings(
        backend,
        session={"write_high_water": 65536, "write_low_water": 16384, "write_hard_cap": 512 * 1024},
    )
    with running_server(settings, Flooder) as server:
        hog = FrameClient(server.addresses[0], rcvbuf=4096)
        hog.send("sub")  # ... and never reads again
        readers = [FrameClient(server.addresses[0]) for _ in range(2)]
        received = [0, 0]
        stop = threading.Event()

        def read(i: int) -> None:
            c = readers[i]
            c.send("sub")
            while not stop.is_set():
                try:
                    c.recv_frame()
                except (OSError, EOFError):
                    return
                received[i] += 1

        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: server.slow_consumers >= 1, what="the hog closed as a slow consumer")
            before = list(received)
            wait_for(lambda: all(r > b + 20 for r, b in zip(received, before, strict=True)), what="readers still served")
            assert len(server.registry) == 2
        finally:
            stop.set()
            on_loop(server, lambda: Flooder.timer.cancel())
            for c in readers:
                c.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
                c.close()
            for t in threads:
                t.join(WAIT_S)
            hog.close()
    assert Echo.reasons.count("slow consumer") == 1


def test_pause_and_resume_writing(backend: str) -> None:
    events: list[str] = []

    class Producer(Session):
        def on_message(self, msg: Any) -> None:
            for _ in range(msg):
                self.send_frame(b"p" * 4096)

        def on_pause_writing(self) -> None:
            events.append("pause")

        def on_resume_writing(self) -> None:
            events.append("resume")

    settings = make_settings(backend, session={"write_high_water": 16384, "write_low_water": 4096})
    with running_server(settings, Producer) as server:
        c = FrameClient(server.addresses[0])
        c.send(20)  # 80 KB queued in one handler call: over high water at once
        for _ in range(20):
            assert c.recv_frame() == b"p" * 4096
        wait_for(lambda: events == ["pause", "resume"], what="pause then resume")
        c.close()


class Ordered(Session):
    """An async handler with awaits of varying length: replies must keep the message order."""

    async def on_message(self, msg: Any) -> None:
        await self.server.sleep(0.001 * (msg["n"] % 3))
        fut = self.server.create_future()
        self.server.call_later(0, lambda: fut.set_result(msg["n"]))
        n = await fut
        self.send({"n": n, "c": msg["c"]})


def test_async_handlers_keep_per_session_order(backend: str) -> None:
    with running_server(make_settings(backend), Ordered) as server:
        clients = [FrameClient(server.addresses[0]) for _ in range(3)]
        for n in range(30):
            for ci, c in enumerate(clients):
                c.send({"n": n, "c": ci})
        for ci, c in enumerate(clients):
            assert [c.recv() for _ in range(30)] == [{"n": n, "c": ci} for n in range(30)]
            c.close()


def test_max_connections_refuses_beyond_the_limit(backend: str) -> None:
    settings = make_settings(backend, io={"max_connections": 3})
    with running_server(settings, Echo) as server:
        kept = [FrameClient(server.addresses[0]) for _ in range(3)]
        for c in kept:
            c.send("in")
            assert c.recv() == "in"
        extra = FrameClient(server.addresses[0])
        assert extra.closed_by_peer()
        wait_for(lambda: server.refused == 1, what="refusal counted")
        kept[0].close()
        wait_for(lambda: len(server.registry) == 2, what="a slot freed")
        again = FrameClient(server.addresses[0])
        again.send("room again")
        assert again.recv() == "room again"
        for c in [*kept[1:], again, extra]:
            c.close()


def test_receive_buffer_exhaustion_defers_then_recovers(backend: str) -> None:
    # The pool path (a buffer on loan per waiting receive), also where the provider could pick
    # receive memory on arrival instead.
    settings = make_settings(
        backend, buffers={"initial_buffers": 1, "max_buffers": 2}, io={"options": {"provided_buffers": False}}
    )
    with running_server(settings, Echo) as server:
        first, second = FrameClient(server.addresses[0]), FrameClient(server.addresses[0])
        for c in (first, second):
            c.send("ok")
            assert c.recv() == "ok"
        third = FrameClient(server.addresses[0])
        third.send("waiting")
        wait_for(lambda: server.recv_deferred >= 1, what="deferred receive counted")
        first.close()  # frees a buffer
        assert third.recv() == "waiting"
        assert server.stats["buffers"]["exhausted"] >= 1
        second.close()
        third.close()


def test_idle_sessions_hold_no_receive_buffer_where_the_provider_picks_memory(backend: str) -> None:
    """With "ProvidedBuffers" the sessions' receives wait without memory: no pool buffer is on
    loan and the provider lends none either; frames split across reads still decode."""
    settings = make_settings(backend, buffers={"initial_buffers": 1, "max_buffers": 2})
    with running_server(settings, Echo) as server:
        provider = server.provider
        if not provider.supports_feature("ProvidedBuffers"):
            pytest.skip(f"{backend} holds a buffer per waiting receive")
        clients = [FrameClient(server.addresses[0]) for _ in range(8)]  # more than max_buffers
        for i, c in enumerate(clients):
            c.send(f"hello {i}")
            assert c.recv() == f"hello {i}"
        whole = msg_frame("split" * 100)
        clients[0].sock.sendall(whole[:7])
        greeted = sum(len(msg_frame(f"hello {i}")) for i in range(8))
        wait_for(lambda: server.stats["bytes_in"] >= greeted + 7, what="first part read")
        clients[0].sock.sendall(whole[7:])
        assert clients[0].recv() == "split" * 100
        stats = server.stats
        assert stats["provided_buffers"] and stats["recv_deferred"] == 0
        assert stats["buffers"]["in_use"] == 0 and stats["buffers"]["capacity"] == 0
        in_use = on_loop(server, lambda: provider.get_statistics().backend_specific["provided_buffers_in_use"])
        assert in_use <= 1  # at most the data delivered in the loop's last turn, never one per session
        for c in clients:
            c.close()


def test_heartbeats_keep_an_idle_peer_alive(backend: str) -> None:
    settings = make_settings(backend, session={"heartbeat_interval_s": 0.1, "idle_timeout_s": 0})
    with running_server(settings, Echo) as server:
        c = FrameClient(server.addresses[0])
        assert c.recv_frame() == b""  # a zero-length heartbeat frame
        c.send("x")
        assert c.recv() == "x"
        c.close()

    # A Client with heartbeats stays connected to a server with an idle timeout.
    class Quiet(Session):
        pass

    srv_settings = make_settings(backend, session={"idle_timeout_s": 0.5})
    cli_settings = make_settings(backend, session={"heartbeat_interval_s": 0.1, "idle_timeout_s": 0})
    with running_server(srv_settings, Echo) as server, Client(cli_settings, Quiet) as client:
        bot = client.connect(*server.addresses[0])
        wait_for(lambda: len(server.registry) == 1, what="accepted")
        assert not client.run_until(lambda: not bot.connected, 1.5)  # 3 idle timeouts long
        assert bot.connected and server.idle_timeouts == 0 and len(server.registry) == 1


def test_timers_and_threadsafe_calls(backend: str) -> None:
    with running_server(make_settings(backend), Echo) as server:
        ticks: list[int] = []
        fired: list[str] = []
        done = threading.Event()

        def setup() -> None:
            cancelled = server.call_later(0.05, lambda: fired.append("cancelled"))
            cancelled.cancel()
            server.call_later(0.01, lambda: fired.append("later"))

            def tick() -> None:
                ticks.append(1)
                if len(ticks) == 5:
                    timer.cancel()
                    done.set()

            timer = server.call_every(0.01, tick)

        on_loop(server, setup)
        assert done.wait(WAIT_S)
        wait_for(lambda: fired == ["later"], what="call_later fired")
        on_loop(server, lambda: None)  # a later loop turn: the cancelled tick stays cancelled
        assert len(ticks) == 5


@pytest.mark.slow
def test_ten_thousand_connect_disconnect_cycles_leak_nothing(backend: str) -> None:
    # 500 at once from 127.0.0.1: no per-address limit
    settings = make_settings(backend, io={"max_connections": 1024}, server={"max_connections_per_address": 0})
    with running_server(settings, Echo) as server:
        address = server.addresses[0]
        warm = FrameClient(address)
        warm.close()
        wait_for(lambda: len(server.registry) == 0, what="warm-up closed")
        wait_for(
            lambda: server.provider.get_statistics().pending_operations == server.stats["accepts_posted"],
            what="only the accepts pending",
        )
        gc.collect()  # sockets dropped by earlier tests close now, not during the measurement
        baseline = fd_count()
        for _ in range(20):  # 20 batches of 500 concurrent connections
            batch = []
            for _ in range(500):
                s = socket.socket()
                s.connect(address)
                batch.append(s)
            for s in batch:
                s.close()
        wait_for(lambda: server.sessions_closed >= 10001, timeout=60, what="every session closed")
        wait_for(lambda: len(server.registry) == 0, what="registry empty")
        # Other objects of the process may close fds meanwhile, never open them: <= baseline.
        wait_for(lambda: fd_count() <= baseline, what=f"fds back to {baseline}")
        assert server.sessions_opened == 10001
        assert server.provider.get_statistics().active_connections == 1  # the listener
