"""Fairness under floods (docs/RELIABILITY.md § Fairness): one client can never stall, starve or
lock out the others.

- a session's frames are dispatched within its read budget per loop turn, whatever the backend
  delivered in one go; the rest waits undecoded and is served round-robin in later turns;
- a client that pipelines faster than it reads is paused (its reading stops), not reset;
- a peer that takes no byte while over the high-water mark is reset after slow_consumer_timeout_s;
- the process-wide memory budget sheds the largest holders and spares the others.

Real sockets on loopback, every session backend (streams and per-operation receives)."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any, ClassVar

import msgpack
import pytest

from framework.session import Session
from tests.support.backends import SESSION_BACKENDS
from tests.support.session import (
    FrameClient,
    frame,
    make_settings,
    msg_frame,
    on_loop,
    running_server,
    wait_for,
)

BUDGET = 16
# These clients flood on purpose: the per-session rate limits (tests/reliability/test_ratelimit.py)
# would close them first.
NO_RATE_LIMIT = {"messages_per_s": 0, "bytes_per_s": 0}


class TurnRecorder(Session):
    """Records the loop turn of every message, per role ("flood" frames get no reply)."""

    turns: ClassVar[list[tuple[int, str]]] = []
    reasons: ClassVar[list[str]] = []

    def on_message(self, msg: Any) -> None:
        role = msg[0] if isinstance(msg, list) else "other"
        TurnRecorder.turns.append((self.server.loop_turn, role))
        if role == "ping":
            self.send(["pong", msg[1]])

    def on_disconnected(self, reason: str) -> None:
        TurnRecorder.reasons.append(reason)


def _flood(address: tuple[str, int], n: int) -> tuple[socket.socket, threading.Thread]:
    """A client that writes `n` tiny frames in one stream (pipelined, no waiting), from a thread
    (the server may pause reading it, so the write can block for a while)."""
    sock = socket.create_connection(address, timeout=30)
    data = msg_frame(["flood", 0]) * n
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return sock, thread


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_frames_dispatched_per_session_per_turn_stay_within_the_read_budget(backend):
    TurnRecorder.turns = []
    n = 20_000
    settings = make_settings(backend, session={"read_budget_frames": BUDGET, "rate_limit": NO_RATE_LIMIT})
    with running_server(settings, TurnRecorder) as server:
        sock, writer = _flood(server.addresses[0], n)
        try:
            wait_for(lambda: len(TurnRecorder.turns) >= n, what="the whole flood dispatched")
            writer.join(10)
        finally:
            sock.close()
    per_turn = Counter(turn for turn, role in TurnRecorder.turns if role == "flood")
    assert sum(per_turn.values()) == n  # nothing lost or duplicated by holding
    assert max(per_turn.values()) <= BUDGET, per_turn.most_common(3)
    assert len(per_turn) >= n // BUDGET


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_a_bystanders_round_trips_interleave_with_a_flood(backend):
    """While one client floods without pause, another client's 20 ping-pongs are answered: each
    in a turn where the flooder got no more than its budget, with the flood going on before the
    first and after the last (the bystander is never queued behind the flood)."""
    TurnRecorder.turns = []
    settings = make_settings(backend, session={"read_budget_frames": BUDGET, "rate_limit": NO_RATE_LIMIT})
    with running_server(settings, TurnRecorder) as server:
        address = server.addresses[0]
        bystander = FrameClient(address)
        flooder = socket.create_connection(address, timeout=30)
        chunk = msg_frame(["flood", 0]) * 2000

        def flood() -> None:  # until the test shuts the socket down (blocked writes then fail)
            try:
                while True:
                    flooder.sendall(chunk)
            except OSError:
                pass

        writer = threading.Thread(target=flood, daemon=True)
        writer.start()
        try:
            wait_for(lambda: len(TurnRecorder.turns) >= 1000, what="the flood under way")
            for i in range(20):
                bystander.send(["ping", i])
                assert bystander.recv() == ["pong", i]
            flood_at_last_pong = sum(1 for _, role in TurnRecorder.turns if role == "flood")
            wait_for(
                lambda: sum(1 for _, role in TurnRecorder.turns if role == "flood") > flood_at_last_pong + 1000,
                what="the flood going on after the last pong",
            )
        finally:
            flooder.shutdown(socket.SHUT_RDWR)
            writer.join(10)
            flooder.close()
            bystander.close()
    turns = list(TurnRecorder.turns)
    ping_turns = [turn for turn, role in turns if role == "ping"]
    flood_per_turn = Counter(turn for turn, role in turns if role == "flood")
    assert len(ping_turns) == 20
    assert all(flood_per_turn[turn] <= BUDGET for turn in ping_turns), [flood_per_turn[t] for t in ping_turns]
    flood_turns = sorted(flood_per_turn)
    assert flood_turns[0] < ping_turns[0] and ping_turns[-1] < flood_turns[-1]


class BigReplies(Session):
    """Each request asks for a 4 KiB reply: a client pipelining 3,000 of them without reading asks
    for ~12 MiB, three times write_hard_cap."""

    reasons: ClassVar[list[str]] = []

    def on_message(self, msg: Any) -> None:
        self.send(["r", msg[1], b"x" * 4096])

    def on_disconnected(self, reason: str) -> None:
        BigReplies.reasons.append(reason)


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_a_pipelining_client_that_reads_slowly_is_paused_not_reset(backend):
    BigReplies.reasons = []
    n = 3000
    settings = make_settings(
        backend,
        session={
            "write_high_water": 65536,
            "write_low_water": 16384,
            "write_hard_cap": 4 * 1024 * 1024,
            "rate_limit": NO_RATE_LIMIT,
        },
    )
    with running_server(settings, BigReplies) as server:
        client = FrameClient(server.addresses[0], rcvbuf=32768)
        sender = threading.Thread(
            target=client.send_raw, args=(b"".join(msg_frame(["q", i]) for i in range(n)),), daemon=True
        )
        sender.start()
        time.sleep(1.0)  # not reading: the server's output for this session fills up
        got = []
        for _ in range(n):
            reply = client.recv()
            got.append(reply[1])
            if len(got) % 500 == 0:
                time.sleep(0.05)  # a slow reader, but a reader
        sender.join(10)
        stats = on_loop(server, lambda: server.stats)
        client.close()
    assert got == list(range(n))  # every reply, in order: the session was never reset
    assert stats["read_pauses"] >= 1
    assert stats["slow_consumers"] == 0
    assert "slow consumer" not in BigReplies.reasons


class Producer(Session):
    """On "go", queues 16 MiB for a peer that never reads (more than the kernel's socket buffers
    take, so most of it stays unsent)."""

    reasons: ClassVar[list[str]] = []

    def on_message(self, msg: Any) -> None:
        for _ in range(1024):
            self.send_frame(b"z" * 16384)

    def on_disconnected(self, reason: str) -> None:
        Producer.reasons.append(reason)


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_a_peer_that_takes_nothing_is_reset_after_the_slow_consumer_timeout(backend):
    Producer.reasons = []
    settings = make_settings(
        backend,
        session={
            "write_high_water": 65536,
            "write_low_water": 16384,
            "write_hard_cap": 64 * 1024 * 1024,  # the cap is not what closes it
            "slow_consumer_timeout_s": 0.5,
        },
    )
    with running_server(settings, Producer) as server:
        client = FrameClient(server.addresses[0], rcvbuf=16384)
        client.send("go")
        wait_for(lambda: Producer.reasons, timeout=15, what="the non-reader reset")
        stats = on_loop(server, lambda: server.stats)
        client.close()
    assert Producer.reasons == ["slow consumer"]
    assert stats["slow_consumers"] == 1


class Named(Session):
    """The first message names the client; an echo after that."""

    reasons: ClassVar[dict[str, str]] = {}

    def on_connected(self) -> None:
        self.name = "?"

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, dict) and "name" in msg:
            self.name = msg["name"]
        self.send(msg)

    def on_disconnected(self, reason: str) -> None:
        Named.reasons[self.name] = reason


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_the_memory_budget_sheds_the_largest_holder_and_spares_the_others(backend):
    """Three clients each hold a large partial frame; together they pass the 2 MiB budget: the
    largest is closed, the two others complete their frames, and a small client never notices."""
    Named.reasons = {}
    budget = 2 * 1024 * 1024
    settings = make_settings(backend, server={"memory_budget_bytes": budget})
    sizes = {"b": 600 * 1024, "c": 700 * 1024, "a": 900 * 1024}
    with running_server(settings, Named) as server:
        address = server.addresses[0]
        small = FrameClient(address)
        small.send({"name": "small"})
        assert small.recv() == {"name": "small"}
        clients = {}
        payloads = {}
        for name, size in sizes.items():  # the largest arrives last and crosses the budget
            c = FrameClient(address)
            c.send({"name": name})
            assert c.recv() == {"name": name}
            payload = msgpack.packb({"blob": b"y" * (size - 16)})
            payloads[name] = payload
            whole = frame(payload)
            c.send_raw(whole[: len(whole) - 100])  # all but the last 100 bytes: a partial frame
            clients[name] = (c, whole[len(whole) - 100 :])
            if name != "a":
                wait_for(
                    lambda s=size: on_loop(server, lambda: server.stats)["input_buffered_bytes"] >= s - 200,
                    what=f"{name}'s partial frame buffered",
                )
        assert clients["a"][0].closed_by_peer(timeout=10)
        for name in ("b", "c"):
            c, rest = clients[name]
            c.send_raw(rest)
            assert c.recv() == msgpack.unpackb(payloads[name])
        for i in range(5):
            small.send(["still", i])
            assert small.recv() == ["still", i]
        stats = on_loop(server, lambda: server.stats)
        for c, _ in clients.values():
            c.close()
        small.close()
    assert Named.reasons["a"].startswith("memory budget exceeded")
    assert stats["memory_sheds"] >= 1
    assert "b" not in Named.reasons or not Named.reasons["b"].startswith("memory")
