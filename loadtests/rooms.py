"""How a simulated player gets a seat in a room: the load test's room choice, as a real client does it.

A room list is stale the moment it arrives: other players may take the last seat (the join gets
`room_full`) or open the last room the server allows (a new room gets `too_many_rooms`). Both are
the server answering correctly, so the player tries again, a bounded number of times, and the
caller is told about each refused attempt (locust reports them as their own rows, not as failures).

Kept apart from the locustfile because importing locust monkeypatches the standard library (gevent);
tests import this module and run it against a real server.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from examples.gameserver import protocol as p
from examples.gameserver.client import GameClient, ServerError

ROOM_PREFIX = "lt"  # load-test rooms; rooms opened by anyone else (bots, people) are left alone
DEFAULT_ROOM_SIZE = 8
ROOM_SIZE_ENV = "GAME_ROOM_SIZE"
ATTEMPTS = 6
BACKOFF_S = 0.005  # before the 2nd attempt at most; doubling after each further refusal
RETRY_CODES = frozenset({p.ROOM_FULL, p.TOO_MANY_ROOMS})

# (error code, room, seconds the refused join took), called before each retry.
OnRetry = Callable[[str, str, float], None]

_room_ids = itertools.count(1)


def room_size_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """Players a simulated player aims for per room: GAME_ROOM_SIZE, default 8."""
    raw = environ.get(ROOM_SIZE_ENV, str(DEFAULT_ROOM_SIZE))
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{ROOM_SIZE_ENV} must be a whole number >= 1, got {raw!r}")
    return size


def retry_name(code: str) -> str:
    """The locust row of a refused-and-retried join, e.g. 'join_retry_room_full'."""
    return f"join_retry_{code}"


def new_room_name() -> str:
    return f"{ROOM_PREFIX}{os.getpid()}-{next(_room_ids)}"


def join_room(
    client: GameClient,
    *,
    current: str | None = None,
    room_size: int = DEFAULT_ROOM_SIZE,
    rng: random.Random | None = None,
    on_retry: OnRetry | None = None,
    attempts: int = ATTEMPTS,
) -> dict[str, Any]:
    """Seat the (named) player of `client` in a load-test room other than `current`; return `joined`.

    Each attempt lists the rooms and joins, with create=true, a random one below `room_size` players,
    or a new room when there is none. `room_full` excludes that room and tries again;
    `too_many_rooms` means no new room may open, so later attempts fill existing rooms up to the
    server's limit instead. Retries wait a short random backoff. Other errors, and the last refusal
    when `attempts` run out, raise `ServerError`.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    rng = rng or random.Random()
    refused: set[str] = set()
    fill_up = False
    last: ServerError | None = None
    for attempt in range(1, attempts + 1):
        if attempt > 1:  # jittered backoff, so players who collided do not collide again at once
            time.sleep(rng.uniform(0.0, BACKOFF_S * 2 ** (attempt - 2)))
        rooms = client.request({"type": "list_rooms"})["rooms"]
        open_rooms = [
            r["name"]
            for r in rooms
            if r["name"].startswith(ROOM_PREFIX)
            and r["name"] != current
            and r["name"] not in refused
            and r["players"] < (r["max_players"] if fill_up else min(room_size, r["max_players"]))
        ]
        if open_rooms:
            room = rng.choice(open_rooms)
        elif not fill_up:
            room = new_room_name()
        else:
            continue  # every seat is taken right now, but players are moving: look again
        started = time.perf_counter()
        try:
            return client.request({"type": "join", "room": room, "create": True})
        except ServerError as exc:
            if exc.code not in RETRY_CODES or attempt == attempts:
                raise
            last = exc
            if exc.code == p.ROOM_FULL:
                refused.add(room)
            else:
                fill_up = True
            if on_retry is not None:
                on_retry(exc.code, room, time.perf_counter() - started)
    assert last is not None  # only a refusal leads to an attempt that joins nothing
    raise last
