"""Locust load test for the example game server.

Each simulated user is one player on a plain blocking TCP socket (examples.gameserver.client): locust
runs users as gevent greenlets and monkeypatches `socket`, so blocking calls yield to other users and
no asyncio loop is involved. Every task fires a locust request event (request_type "game") with its
timing, or a failure with the reason:

- connect, hello: the request until its reply;
- join: from listing the rooms until `joined` (loadtests/rooms.py: a room with space, else a new one;
  join with create, and on `room_full` / `too_many_rooms` list again and try another room);
- join_retry_room_full, join_retry_too_many_rooms: one refused join that was retried. The server
  answered correctly (someone took the seat or opened the last room first), so these count as
  successes; they show how often players raced for seats;
- move: a direction input until the first snapshot whose acknowledged input seq for this player
  reaches it, i.e. until the server's simulation has applied it (bounded by one tick + RTT);
- chat: the chat line until it comes back in the room's broadcast;
- ping: round trip of ping/pong.

Run headless (see loadtests/run.py and `make loadtest`):
    locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 10s --host 127.0.0.1:7777 \
        --only-summary --progress-every 5

Two additions to locust's own output:
- `--progress-every S` prints one line every S seconds while the users run (instead of locust's
  full table every 2 s, which --only-summary turns off):
  `progress t=6s users=50 req/s=166.3 fails=0 total_reqs=796 total_fails=0`, where req/s and fails
  are over the last S seconds and total_* since the start;
- with `--csv PREFIX`, PREFIX_stats.csv, _failures.csv and _exceptions.csv are rewritten at exit with
  the final numbers, the ones locust prints in its summary: locust itself writes them once a second
  while the users run and never after, so they missed the last second and the stop
  (locustio/locust#2299).
Environment: GAME_ROOM_SIZE (players a user aims for per room, default 8; a room may hold more when
the server allows no new room), GAME_TIMEOUT_S (seconds a reply may take before it counts as a
failure, default 5).
"""

from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
import uuid
from argparse import ArgumentParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent

# The locustfile's folder is on sys.path, the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import User, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from examples.gameserver.client import GameClient, ServerError
from loadtests.rooms import join_room, retry_name, room_size_from_env

ROOM_SIZE = room_size_from_env()
TIMEOUT = float(os.environ.get("GAME_TIMEOUT_S", "5"))
REQUEST_TYPE = "game"


def parse_host(host: str | None) -> tuple[str, int]:
    """'127.0.0.1:7777', 'tcp://127.0.0.1:7777' or '[::1]:7777' -> (address, port)."""
    if not host:
        raise ValueError("no host: pass --host ADDRESS:PORT")
    parts = urlsplit(host if "//" in host else f"tcp://{host}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"host must be ADDRESS:PORT, got {host!r}")
    return parts.hostname, parts.port


# --- output: live progress, final CSV ------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _add_options(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--progress-every",
        type=float,
        default=0.0,
        help="seconds between one-line progress reports (users, req/s, failures); 0: none (default)",
    )


def progress_line(t: float, users: int, rps: float, fails: int, total_reqs: int, total_fails: int) -> str:
    return (
        f"progress t={t:.0f}s users={users} req/s={rps:.1f} fails={fails} "
        f"total_reqs={total_reqs} total_fails={total_fails}"
    )


def _report_progress(environment: Environment, every: float) -> None:
    assert environment.runner is not None
    total = environment.stats.total
    started = last = time.monotonic()
    last_reqs, last_fails = total.num_requests, total.num_failures
    while True:
        gevent.sleep(every)
        now = time.monotonic()
        reqs, fails = total.num_requests, total.num_failures
        line = progress_line(
            now - started, environment.runner.user_count, (reqs - last_reqs) / (now - last),
            fails - last_fails, reqs, fails,
        )  # fmt: skip
        print(line, flush=True)  # flush: stdout is a pipe under make or a test, and this is live output
        last, last_reqs, last_fails = now, reqs, fails


def write_final_csv(environment: Environment, prefix: str) -> None:
    """PREFIX_stats.csv, _failures.csv and _exceptions.csv from the final stats, in locust's format
    (its own StatsCSV writes the rows)."""
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
        ("_exceptions.csv", writer.exceptions_csv),
    ):
        with open(prefix + suffix, "w", newline="") as f:
            write(csv.writer(f))


@events.init.add_listener
def _install_output(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # a library run, or a worker: the master reports
    progress: list[gevent.Greenlet] = []

    def start_progress(**_kwargs: Any) -> None:
        if options.progress_every > 0 and not progress:
            progress.append(gevent.spawn(_report_progress, environment, options.progress_every))

    def stop_progress(**_kwargs: Any) -> None:
        while progress:
            progress.pop().kill(block=False)

    environment.events.test_start.add_listener(start_progress)
    environment.events.test_stop.add_listener(stop_progress)
    if options.csv_prefix:
        # `quit` fires after locust printed its final summary and before it closes its CSV files;
        # its periodic writer has flushed (it truncates after each write) and cannot run meanwhile.
        environment.events.quit.add_listener(lambda **_kw: write_final_csv(environment, options.csv_prefix))


class GamePlayer(User):
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.client: GameClient | None = None
        self.player_id = 0
        self.seq = 0
        self.room: str | None = None
        self._connect()

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # --- plumbing ------------------------------------------------------------------------------
    def _fire(self, name: str, started: float, length: int = 0, exception: Exception | None = None) -> None:
        self._report(name, time.perf_counter() - started, length, exception)

    def _report(
        self, name: str, seconds: float, length: int = 0, exception: Exception | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=seconds * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )

    def _timed(self, name: str, fn: Any) -> Any:
        """Run fn(), report it as request `name`; a failure is reported and the connection dropped
        when it may be out of step (timeouts, lost connections)."""
        started = time.perf_counter()
        client = self.client
        before = client.bytes_in if client is not None else 0
        try:
            result = fn()
        except ServerError as exc:
            self._fire(name, started, exception=exc)
            return None
        except (OSError, ValueError) as exc:  # TimeoutError, ConnectionError, codec errors
            self._fire(name, started, exception=exc)
            self._drop()
            return None
        after = self.client.bytes_in if self.client is not None else before
        self._fire(name, started, length=after - before)
        return result

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.room = None

    def _connect(self) -> bool:
        host, port = parse_host(self.host)

        def connect() -> GameClient:
            return GameClient(host, port, timeout=TIMEOUT)

        self.client = self._timed("connect", connect)
        if self.client is None:
            return False
        name = f"lt-{uuid.uuid4().hex[:12]}"
        welcome = self._timed("hello", lambda: self.client.hello(name))
        if welcome is None:
            self._drop()
            return False
        self.player_id = welcome["id"]
        return self._join()

    def _ready(self) -> bool:
        if self.client is None and not self._connect():
            return False
        return self.room is not None or self._join()

    def _retried(self, code: str, room: str, seconds: float) -> None:
        self._report(retry_name(code), seconds)

    def _join(self) -> bool:
        def join() -> dict[str, Any]:
            assert self.client is not None
            return join_room(self.client, current=self.room, room_size=ROOM_SIZE, on_retry=self._retried)

        joined = self._timed("join", join)
        if joined is None:
            return False
        self.room = joined["room"]
        return True

    # --- tasks ---------------------------------------------------------------------------------
    @task(1)
    def join(self) -> None:
        """Move to another room (or open a new one)."""
        if self.client is None:
            self._connect()
            return
        self._join()

    @task(6)
    def move(self) -> None:
        if not self._ready():
            return
        client = self.client
        assert client is not None
        self.seq += 1
        seq, me = self.seq, self.player_id
        angle = random.uniform(0.0, 2.0 * math.pi)

        def move() -> None:
            client.send({"type": "move", "dir": [math.cos(angle), math.sin(angle)], "seq": seq})
            client.wait_for(
                lambda m: (
                    m.get("type") == "snapshot"
                    and any(row[0] == me and row[3] >= seq for row in m["players"])
                )
            )

        self._timed("move", move)

    @task(1)
    def chat(self) -> None:
        if not self._ready():
            return
        client = self.client
        assert client is not None
        text = f"hello {uuid.uuid4().hex[:8]}"
        me = self.player_id

        def chat() -> None:
            client.send({"type": "chat", "text": text})
            # The error check makes a rejected chat (e.g. rate_limited) fail fast with its reason.
            reply = client.wait_for(
                lambda m: (
                    (m.get("type") == "chat" and m.get("from") == me and m.get("text") == text)
                    or m.get("type") == "error"
                )
            )
            if reply.get("type") == "error":
                raise ServerError(reply)

        self._timed("chat", chat)

    @task(2)
    def ping(self) -> None:
        if not self._ready():
            return
        client = self.client
        assert client is not None
        self._timed("ping", lambda: client.request({"type": "ping", "t": time.time()}))
