"""Bots that really play: `python -m examples.gameserver.bot --count N --host H --port P [--duration S]`.

Each bot connects, says hello, joins (creating when needed) a room shared with up to `--room-size`
others, then moves (10 inputs/s: wandering directions and targets), chats every few seconds and
pings every second. One thread drives every bot with `selectors` over non-blocking sockets. Live
stats print every second; the run stops by itself after `--duration` seconds and exits 0 only when
every bot connected and nothing went wrong (no error message, no lost connection). A server that
shuts down (its `shutdown` message, then the close) ends the run early and cleanly: exit status 0.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from examples.gameserver.client import new_decoder
from framework.session.codec import encode_message

MOVE_INTERVAL = 0.1
PING_INTERVAL = 1.0
CHAT_INTERVAL = 3.0


@dataclass
class Totals:
    connected: int = 0
    in_room: int = 0
    snapshots: int = 0
    moves: int = 0
    chats_out: int = 0
    chats_in: int = 0
    pongs: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    server_shutdown: bool = False  # the server said "shutdown": closes from then on are expected
    error_samples: list[str] = field(default_factory=list)
    rtts_ms: list[float] = field(default_factory=list)  # this report interval
    all_rtts_ms: list[float] = field(default_factory=list)  # the whole run (bounded sample)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bot:
    def __init__(self, index: int, name: str, room_size: int, rng: random.Random, totals: Totals) -> None:
        self.index = index
        self.name = name
        self.room_size = room_size
        self.rng = rng
        self.totals = totals
        self.sock: socket.socket | None = None
        self.decoder = new_decoder()
        self.out = bytearray()
        self.state = "new"  # new -> connecting -> hello -> joining -> playing -> closed
        self.seq = 0
        self.direction = (0.0, 0.0)
        self.next_move = self.next_ping = self.next_chat = self.next_turn = 0.0
        self._batch: list[Any] = []

    # --- I/O ------------------------------------------------------------------------------------
    def start(self, host: str, port: int, sel: selectors.BaseSelector) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((host, port))
        if err not in (0, 115, 36, 10035):  # EINPROGRESS (Linux, macOS), WSAEWOULDBLOCK
            sock.close()
            self.fail(f"connect failed: {os.strerror(err)}")
            return
        self.sock = sock
        self.state = "connecting"
        sel.register(sock, selectors.EVENT_WRITE, self)

    def send(self, msg: dict[str, Any], sel: selectors.BaseSelector) -> None:
        if self.sock is None:
            return
        frame = encode_message(msg)
        self.totals.bytes_out += len(frame)
        was_empty = not self.out
        self.out += frame
        if was_empty:
            self.flush(sel)

    def flush(self, sel: selectors.BaseSelector) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(sel, f"send failed: {exc}")
            return
        del self.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        sel.modify(self.sock, events, self)

    def on_ready(self, mask: int, sel: selectors.BaseSelector, now: float) -> None:
        assert self.sock is not None
        if self.state == "connecting":
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.close(sel, f"connect failed: {os.strerror(err)}")
                return
            self.state = "hello"
            self.totals.connected += 1
            sel.modify(self.sock, selectors.EVENT_READ, self)
            self.send({"type": "hello", "name": self.name}, sel)
            return
        if mask & selectors.EVENT_WRITE and self.out:
            self.flush(sel)
            if self.sock is None:
                return
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                return
            except OSError as exc:
                self.close(sel, f"recv failed: {exc}")
                return
            if not data:
                self.close(sel, "server closed the connection")
                return
            self.totals.bytes_in += len(data)
            batch = self._batch
            batch.clear()
            try:
                self.decoder.feed(data, batch)
            except Exception as exc:
                self.close(sel, f"bad frame from server: {exc}")
                return
            for msg in batch:
                self.on_message(msg, sel, now)

    def fail(self, reason: str) -> None:
        self.state = "closed"
        self.totals.error(f"{self.name}: {reason}")

    def close(self, sel: selectors.BaseSelector, reason: str | None = None) -> None:
        if self.sock is not None:
            if self.state == "playing":
                self.totals.in_room -= 1
            if self.state not in ("new", "connecting"):
                self.totals.connected -= 1
            sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
        if reason is not None and self.state != "closed" and not self.totals.server_shutdown:
            self.fail(reason)
        self.state = "closed"

    # --- game -----------------------------------------------------------------------------------
    def on_message(self, msg: Any, sel: selectors.BaseSelector, now: float) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        t = self.totals
        if kind == "snapshot":
            t.snapshots += 1
        elif kind == "pong":
            t.pongs += 1
            rtt = time.perf_counter() * 1000.0 - msg["t"]
            t.rtts_ms.append(rtt)
            if len(t.all_rtts_ms) < 1_000_000:
                t.all_rtts_ms.append(rtt)
        elif kind == "chat":
            t.chats_in += 1
        elif kind == "welcome":
            self.state = "joining"
            # Fill rooms in order, never beyond what the server allows per room.
            size = max(1, min(self.room_size, int(msg.get("max_players_per_room", self.room_size))))
            self.send({"type": "join", "room": f"arena-{self.index // size}", "create": True}, sel)
        elif kind == "joined":
            self.state = "playing"
            t.in_room += 1
            jitter = self.rng.random()
            self.next_move = now
            self.next_ping = now + jitter * PING_INTERVAL
            self.next_chat = now + jitter * CHAT_INTERVAL + 1.0
        elif kind == "error":
            t.error(f"{self.name}: {msg.get('code')}: {msg.get('message')}")
        elif kind == "shutdown":
            t.server_shutdown = True

    def act(self, now: float, sel: selectors.BaseSelector) -> None:
        rng = self.rng
        if now >= self.next_move:
            self.next_move = now + MOVE_INTERVAL
            self.seq += 1
            if now >= self.next_turn:
                self.next_turn = now + rng.uniform(0.5, 2.0)
                if rng.random() < 0.2:  # walk to a point now and then
                    target = [rng.uniform(0, 1000), rng.uniform(0, 1000)]
                    self.send({"type": "move", "target": target, "seq": self.seq}, sel)
                    self.totals.moves += 1
                    self.direction = (0.0, 0.0)
                    return
                angle = rng.uniform(0, 6.283185307179586)
                speed = rng.choice((0.5, 1.0, 1.0))
                self.direction = (speed * math.cos(angle), speed * math.sin(angle))
            if self.direction != (0.0, 0.0):
                self.send({"type": "move", "dir": list(self.direction), "seq": self.seq}, sel)
                self.totals.moves += 1
        if now >= self.next_ping:
            self.next_ping = now + PING_INTERVAL
            self.send({"type": "ping", "t": time.perf_counter() * 1000.0}, sel)
        if now >= self.next_chat:
            self.next_chat = now + CHAT_INTERVAL * rng.uniform(0.8, 1.2)
            self.send({"type": "chat", "text": rng.choice(_LINES)}, sel)
            self.totals.chats_out += 1


_LINES = ("hi all", "gg", "follow me", "nice move", "who wants to race?", "brb", "lag?", "o/")


def run(
    count: int,
    host: str,
    port: int,
    duration: float,
    room_size: int = 8,
    spawn_rate: float = 200.0,
    seed: int | None = None,
    out: Any = sys.stdout,
) -> Totals:
    """Run `count` bots for `duration` seconds; returns the final totals."""
    totals = Totals()
    sel = selectors.DefaultSelector()
    rng = random.Random(seed)
    tag = f"{os.getpid() % 100000}"
    bots = [Bot(i, f"bot{tag}-{i}", room_size, random.Random(rng.random()), totals) for i in range(count)]
    start = time.monotonic()
    end = start + duration
    next_report = start + 1.0
    started = 0
    last = {"snapshots": 0, "moves": 0, "chats_in": 0, "bytes_in": 0, "t": start}
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if totals.server_shutdown and all(bot.sock is None for bot in bots[:started]):
                break  # the server shut down and closed every bot: a clean end
            # Ramp up: start bots at spawn_rate per second.
            due = min(count, int((now - start) * spawn_rate) + 1)
            while started < due and not totals.server_shutdown:
                bots[started].start(host, port, sel)
                started += 1
            for key, mask in sel.select(timeout=0.01):
                key.data.on_ready(mask, sel, now)
            now = time.monotonic()
            for bot in bots:
                if bot.state == "playing":
                    bot.act(now, sel)
            if now >= next_report:
                next_report += 1.0
                _report(totals, last, now, now - start, count, out)
        stuck = sum(1 for bot in bots[:started] if bot.state not in ("playing", "closed"))
        if stuck and not totals.server_shutdown:
            totals.error(f"{stuck} bots connected but never got into a room")
    finally:
        for bot in bots:
            bot.close(sel)
        sel.close()
    missing = count - started
    if missing and not totals.server_shutdown:
        totals.error(f"{missing} bots never started")
    _report(totals, last, time.monotonic(), min(duration, time.monotonic() - start), count, out, final=True)
    return totals


def _report(
    totals: Totals,
    last: dict[str, float],
    now: float,
    elapsed: float,
    count: int,
    out: Any,
    final: bool = False,
) -> None:
    span = max(1e-6, now - last["t"])
    rates = {k: (getattr(totals, k) - last[k]) / span for k in ("snapshots", "moves", "chats_in", "bytes_in")}
    for k in ("snapshots", "moves", "chats_in", "bytes_in"):
        last[k] = getattr(totals, k)
    last["t"] = now
    rtts = totals.all_rtts_ms if final else totals.rtts_ms
    p50, p99 = percentile(rtts, 0.50), percentile(rtts, 0.99)
    if final:
        print(
            f"done after {elapsed:.0f}s: bots={count} snapshots={totals.snapshots} moves={totals.moves} "
            f"chats_sent={totals.chats_out} chats_received={totals.chats_in} pongs={totals.pongs} "
            f"rtt_ms p50={p50:.2f} p99={p99:.2f} errors={totals.errors}",
            file=out,
            flush=True,
        )
        if totals.server_shutdown:
            print("  the server shut down (its shutdown message, then the close): a clean end", file=out)
        for sample in totals.error_samples:
            print(f"  error: {sample}", file=out, flush=True)
        return
    print(
        f"[{elapsed:5.1f}s] connected={totals.connected}/{count} in_room={totals.in_room} "
        f"snapshots/s={rates['snapshots']:.0f} moves/s={rates['moves']:.0f} chat_in/s={rates['chats_in']:.0f} "
        f"kB/s_in={rates['bytes_in'] / 1000:.0f} rtt_ms p50={p50:.2f} p99={p99:.2f} errors={totals.errors}",
        file=out,
        flush=True,
    )
    rtts.clear()  # live lines show this interval's RTT percentiles; the final line the whole run's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gameserver.bot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--count", type=int, default=10, help="number of bots (default 10)")
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7777, help="server port (default 7777)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds to play, then stop (default 30)"
    )
    parser.add_argument("--room-size", type=int, default=8, help="bots per room (default 8)")
    parser.add_argument(
        "--spawn-rate", type=float, default=200.0, help="bots started per second (default 200)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible play")
    args = parser.parse_args(argv)
    if args.count < 1 or args.duration <= 0 or args.room_size < 1 or args.spawn_rate <= 0:
        parser.error("--count, --duration, --room-size and --spawn-rate must be positive")
    totals = run(args.count, args.host, args.port, args.duration, args.room_size, args.spawn_rate, args.seed)
    return 0 if totals.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
