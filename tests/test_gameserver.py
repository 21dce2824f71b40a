"""The example game server: sans-IO game rules, then the real server over loopback on every
available backend, the command-line entry points, the bot and a small locust run."""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from examples.gameserver import protocol as p
from examples.gameserver.app import GameSession
from examples.gameserver.client import GameClient, ServerError
from examples.gameserver.game import (
    Broadcast,
    Game,
    GameSettings,
    MemberAdded,
    MemberRemoved,
    RoomClosed,
    RoomOpened,
    Send,
)
from framework.config import load_settings
from framework.session.codec import encode_message
from loadtests.run import SUMMARY_TITLE
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.gameserver import WAIT, RunningServer
from tests.support.marks import needs_posix_signals

# --------------------------------------------------------------------------------------------------
# Game rules (sans-IO)


def sends(effects, player=None):
    return [e.msg for e in effects if isinstance(e, Send) and (player is None or e.player == player)]


def only_error(effects) -> dict:
    msgs = sends(effects)
    assert len(msgs) == 1 and msgs[0]["type"] == "error", effects
    return msgs[0]


def named(game: Game, name: str) -> int:
    pid = game.add_player()
    (welcome,) = sends(game.handle(pid, {"type": "hello", "name": name}, 0.0))
    assert welcome["type"] == "welcome" and welcome["id"] == pid and welcome["name"] == name
    return pid


def test_settings_reject_unknown_keys_and_bad_values():
    assert GameSettings.model_validate({"tick_hz": 30}).tick_hz == 30
    with pytest.raises(ValidationError, match="tick_rate"):
        GameSettings.model_validate({"tick_rate": 30})
    with pytest.raises(ValidationError, match="tick_hz"):
        GameSettings.model_validate({"tick_hz": 0})


@pytest.mark.parametrize(
    ("msg", "code", "words"),
    [
        ([1, 2], p.BAD_REQUEST, "map"),
        ({"name": "x"}, p.BAD_REQUEST, "'type'"),
        ({"type": "fly"}, p.UNKNOWN_TYPE, "unknown message type 'fly'"),
        ({"type": "hello"}, p.BAD_REQUEST, "needs the field 'name'"),
        ({"type": "hello", "name": ""}, p.BAD_REQUEST, "1-16 characters"),
        ({"type": "hello", "name": "a b"}, p.BAD_REQUEST, "letters, digits"),
        ({"type": "hello", "name": "x" * 17}, p.BAD_REQUEST, "1-16"),
        ({"type": "hello", "name": 5}, p.BAD_REQUEST, "must be a string"),
        ({"type": "hello", "name": "ok", "colour": 1}, p.BAD_REQUEST, "unknown field 'colour'"),
        ({"type": "hello", "name": "ok", "version": 9}, p.BAD_REQUEST, "version"),
        ({"type": "move", "dir": [1, float("nan")]}, p.BAD_REQUEST, "finite"),
        ({"type": "move", "dir": [1]}, p.BAD_REQUEST, "two numbers"),
        ({"type": "move", "dir": [True, 0]}, p.BAD_REQUEST, "must be a number"),
        ({"type": "move"}, p.BAD_REQUEST, "exactly one"),
        ({"type": "move", "dir": [1, 0], "target": [1, 1]}, p.BAD_REQUEST, "exactly one"),
        ({"type": "move", "dir": [1, 0], "seq": -1}, p.BAD_REQUEST, "seq"),
        ({"type": "chat", "text": "   "}, p.BAD_REQUEST, "empty"),
        ({"type": "chat", "text": "x" * 201}, p.BAD_REQUEST, "at most 200"),
        ({"type": "chat", "text": "a\nb"}, p.BAD_REQUEST, "control"),
        ({"type": "chat", "text": "a\x9b2Jb"}, p.BAD_REQUEST, "control"),  # C1 CSI
        ({"type": "hello", "name": "ok", "version": True}, p.BAD_REQUEST, "version"),
        ({"type": "ping"}, p.BAD_REQUEST, "'t'"),
        ({"type": "ping", "t": "now"}, p.BAD_REQUEST, "number"),
        ({"type": "join", "room": "r", "create": 1}, p.BAD_REQUEST, "true or false"),
        ({"type": "ping", "t": 1, "rid": [1]}, p.BAD_REQUEST, "rid"),
    ],
)
def test_invalid_requests_raise_clear_protocol_errors(msg, code, words):
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(msg, p.Limits())
    assert info.value.code == code
    assert words in info.value.message


def test_direction_is_clamped_to_unit_length():
    move = p.parse_request({"type": "move", "dir": [30, 40], "seq": 7}, p.Limits())
    assert isinstance(move, p.Move) and not move.is_target and move.seq == 7
    assert math.isclose(move.x, 0.6) and math.isclose(move.y, 0.8)
    slow = p.parse_request({"type": "move", "dir": [0.25, 0]}, p.Limits())
    assert (slow.x, slow.y) == (0.25, 0.0)


def test_errors_go_to_the_sender_with_rid_and_game_survives():
    game = Game(seed=1)
    pid = game.add_player()
    err = only_error(game.handle(pid, {"type": "nope", "rid": 5}, 0.0))
    assert err["code"] == p.UNKNOWN_TYPE and err["rid"] == 5 and err["request"] == "nope"
    err = only_error(game.handle(pid, {"type": "join", "room": "r"}, 0.0))
    assert err["code"] == p.NOT_NAMED
    err = only_error(game.handle(pid, {"type": "move", "dir": [1, 0]}, 0.0))
    assert err["code"] == p.NOT_NAMED
    (pong,) = sends(game.handle(pid, {"type": "ping", "t": 12.5}, 3.0))  # allowed before hello
    assert pong == {"type": "pong", "t": 12.5, "server_time": 3.0}
    named(game, "alice")
    assert game.counters["errors"] == 3


def test_names_are_unique_case_insensitively_and_freed_on_disconnect():
    game = Game(seed=1)
    a = named(game, "Alice")
    b = game.add_player()
    assert only_error(game.handle(b, {"type": "hello", "name": "alice"}, 0.0))["code"] == p.NAME_TAKEN
    assert only_error(game.handle(a, {"type": "hello", "name": "Other"}, 0.0))["code"] == p.ALREADY_NAMED
    game.remove_player(a)
    assert sends(game.handle(b, {"type": "hello", "name": "alice"}, 0.0))[0]["type"] == "welcome"


def test_join_create_leave_and_room_lifecycle_effects():
    game = Game(seed=1)
    a, b = named(game, "a"), named(game, "b")
    err = only_error(game.handle(a, {"type": "join", "room": "arena"}, 0.0))
    assert err["code"] == p.ROOM_NOT_FOUND
    effects = game.handle(a, {"type": "join", "room": "arena", "create": True, "rid": "j1"}, 0.0)
    assert RoomOpened("arena") in effects and MemberAdded("arena", a) in effects
    (joined,) = sends(effects, a)
    assert (
        joined["type"] == "joined" and joined["rid"] == "j1" and [m["id"] for m in joined["players"]] == [a]
    )
    effects = game.handle(b, {"type": "join", "room": "arena"}, 0.0)
    # The others hear about b before b is added to the room's group.
    kinds = [type(e).__name__ for e in effects]
    assert kinds == ["Broadcast", "MemberAdded", "Send"]
    assert effects[0].msg == {"type": "player_joined", "room": "arena", "id": b, "name": "b"}
    assert only_error(game.handle(b, {"type": "create_room", "room": "arena"}, 0.0))["code"] == p.ROOM_EXISTS
    (rooms,) = sends(game.handle(b, {"type": "list_rooms"}, 0.0))
    assert rooms["rooms"] == [{"name": "arena", "players": 2, "max_players": 16}]
    effects = game.handle(a, {"type": "leave"}, 0.0)
    assert MemberRemoved("arena", a) in effects
    assert Broadcast("arena", {"type": "player_left", "room": "arena", "id": a, "name": "a"}) in effects
    assert sends(effects, a) == [{"type": "left", "room": "arena"}]
    assert only_error(game.handle(a, {"type": "leave"}, 0.0))["code"] == p.NOT_IN_ROOM
    # The last member leaving closes the room (by disconnecting here).
    effects = game.remove_player(b)
    assert effects == [MemberRemoved("arena", b), RoomClosed("arena")]
    assert game.rooms == {}


def test_joining_another_room_leaves_the_first():
    game = Game(seed=1)
    a = named(game, "a")
    game.handle(a, {"type": "create_room", "room": "one"}, 0.0)
    effects = game.handle(a, {"type": "join", "room": "two", "create": True}, 0.0)
    assert [type(e).__name__ for e in effects][:3] == ["MemberRemoved", "RoomClosed", "RoomOpened"]
    assert list(game.rooms) == ["two"]


def test_room_full_and_too_many_rooms():
    game = Game(GameSettings(max_players_per_room=2, max_rooms=1), seed=1)
    a, b, c = named(game, "a"), named(game, "b"), named(game, "c")
    game.handle(a, {"type": "create_room", "room": "r"}, 0.0)
    game.handle(b, {"type": "join", "room": "r"}, 0.0)
    err = only_error(game.handle(c, {"type": "join", "room": "r"}, 0.0))
    assert err["code"] == p.ROOM_FULL and "2/2" in err["message"]
    err = only_error(game.handle(c, {"type": "create_room", "room": "s"}, 0.0))
    assert err["code"] == p.TOO_MANY_ROOMS
    # A full room refuses before the joiner leaves its current room.
    assert game.players[c].room is None and len(game.rooms["r"].members) == 2


def test_movement_is_server_authoritative_speed_limited_and_clamped():
    settings = GameSettings(tick_hz=10, player_speed=50, world_width=100, world_height=100)
    game = Game(settings, seed=1)
    a = named(game, "a")
    game.handle(a, {"type": "create_room", "room": "r"}, 0.0)
    player = game.players[a]
    player.x, player.y = 10.0, 10.0
    assert (
        only_error(game.handle(named(game, "b"), {"type": "move", "dir": [1, 0]}, 0.0))["code"]
        == p.NOT_IN_ROOM
    )
    # A huge direction vector still moves at most speed / tick_hz per tick.
    assert game.handle(a, {"type": "move", "dir": [1000, 0], "seq": 3}, 0.0) == []
    snap = game.tick("r")
    assert snap["type"] == "snapshot" and snap["room"] == "r" and snap["tick"] == 1
    assert snap["players"] == [[a, 15.0, 10.0, 3]]
    for _ in range(40):  # runs into the east wall and stays inside the world
        snap = game.tick("r")
    assert snap["players"][0][1:3] == [100.0, 10.0]
    # A target far away is approached at the speed limit and reached exactly.
    game.handle(a, {"type": "move", "target": [100, 500], "seq": 4}, 0.0)  # clamped to the world
    snap = game.tick("r")
    assert math.isclose(snap["players"][0][2], 15.0) and snap["players"][0][3] == 4
    for _ in range(30):
        snap = game.tick("r")
    assert snap["players"][0][1:] == [100.0, 100.0, 4]
    assert not player.moving
    # An old seq arriving late does not move the acknowledgement backwards.
    game.handle(a, {"type": "move", "dir": [0, 0], "seq": 2}, 0.0)
    assert game.tick("r")["players"][0][3] == 4
    assert game.tick("gone") is None


def test_snapshot_lists_every_member_of_the_room_only():
    game = Game(seed=2)
    a, b, c = named(game, "a"), named(game, "b"), named(game, "c")
    for pid, room in ((a, "r"), (b, "r"), (c, "s")):
        game.handle(pid, {"type": "join", "room": room, "create": True}, 0.0)
    snap = game.tick("r")
    assert [row[0] for row in snap["players"]] == [a, b]
    for row in snap["players"]:
        x, y = row[1], row[2]
        assert 0 <= x <= 1000 and 0 <= y <= 1000
    assert game.stats()["rooms"] == 2 and game.stats()["in_rooms"] == 3


def test_chat_goes_to_the_room():
    # Chat's rate limit is the framework's now (see test_framework_rate_limits_guard_...).
    game = Game(GameSettings(), seed=1)
    a = named(game, "a")
    assert only_error(game.handle(a, {"type": "chat", "text": "hi"}, 0.0))["code"] == p.NOT_IN_ROOM
    game.handle(a, {"type": "create_room", "room": "r"}, 0.0)
    effects = game.handle(a, {"type": "chat", "text": "  hello  "}, 10.0)
    assert effects == [Broadcast("r", {"type": "chat", "room": "r", "from": a, "name": "a", "text": "hello"})]


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=8)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_types = st.sampled_from(["hello", "list_rooms", "create_room", "join", "leave", "move", "chat", "ping", "x"])
_fields = st.sampled_from(["name", "room", "create", "dir", "target", "seq", "text", "t", "rid", "version"])
_requests = st.fixed_dictionaries({"type": _types}, optional={"rid": _values}).flatmap(
    lambda base: st.dictionaries(_fields, _values, max_size=4).map(lambda extra: {**extra, **base})
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_requests | _values, min_size=1, max_size=12))
def test_any_message_sequence_yields_replies_or_errors_never_exceptions(messages):
    game = Game(GameSettings(max_players_per_room=2, max_rooms=2), seed=3)
    players = [game.add_player(), game.add_player()]
    for i, msg in enumerate(messages):
        for effect in game.handle(players[i % 2], msg, float(i)):
            if isinstance(effect, Send):
                assert isinstance(effect.msg.get("type"), str)
        for room in list(game.rooms):
            snap = game.tick(room)
            for _, x, y, _ack in snap["players"]:
                assert 0.0 <= x <= 1000.0 and 0.0 <= y <= 1000.0
    for pid in players:
        game.remove_player(pid)
    assert game.rooms == {} and game.stats()["named"] == 0


# --------------------------------------------------------------------------------------------------
# The real server over loopback, on every backend available here

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=PLATFORM_BACKENDS)
def game_server(request):
    srv = RunningServer(request.param, max_players_per_room=3)
    yield srv
    srv.stop()


def snapshot_row(msg: dict, player: int):
    for row in msg["players"]:
        if row[0] == player:
            return row
    return None


def test_a_move_by_one_player_shows_in_the_other_players_snapshot(game_server):
    with game_server.client("alice") as a, game_server.client("bob") as b:
        ja = a.join("arena")
        assert ja["players"][0]["name"] == "alice"
        jb = b.join("arena", create=False)
        assert {m["name"] for m in jb["players"]} == {"alice", "bob"}
        assert a.wait_for(lambda m: m["type"] == "player_joined")["name"] == "bob"
        me = ja["you"]
        start_x = next(m["x"] for m in jb["players"] if m["id"] == me)
        a.send({"type": "move", "dir": [1, 0], "seq": 1})
        seen = b.wait_for(lambda m: m["type"] == "snapshot" and snapshot_row(m, me)[3] >= 1)
        first = snapshot_row(seen, me)
        later = b.wait_for(lambda m: m["type"] == "snapshot" and m["tick"] > seen["tick"] + 2)
        row = snapshot_row(later, me)
        assert row[1] > first[1] >= start_x  # moving east, on the server's simulation
        per_tick = 200.0 / 20.0
        assert row[1] - start_x <= per_tick * later["tick"] + 1e-6  # never faster than the speed limit
        assert row[2] == first[2]


def test_chat_reaches_room_members_only(game_server):
    with game_server.client("a") as a, game_server.client("b") as b, game_server.client("c") as c:
        a.join("one")
        b.join("one")
        c.join("two")
        a.send({"type": "chat", "text": "hello room"})
        for member in (a, b):
            chat = member.wait_for(lambda m: m["type"] == "chat")
            assert chat["text"] == "hello room" and chat["name"] == "a" and chat["room"] == "one"
        # c's pong is queued after any chat for c would have been: no chat before it means none came.
        got = []
        c.on_message = got.append
        c.request({"type": "ping", "t": 1})
        assert not [m for m in got if m["type"] == "chat"]


def test_invalid_requests_get_errors_and_the_session_survives(game_server):
    with game_server.client() as a:
        for msg, code in (
            ({"type": "teleport"}, "unknown_type"),
            ({"type": "join", "room": "x"}, "not_named"),
            ({"type": "hello", "name": "bad name!"}, "bad_request"),
            ({"type": "hello", "name": "ok", "extra": 1}, "bad_request"),
        ):
            with pytest.raises(ServerError) as info:
                a.request(msg)
            assert info.value.code == code
        a.send(["not", "a", "map"])  # no rid possible: the error still comes back
        assert a.wait_for(lambda m: m["type"] == "error")["code"] == "bad_request"
        a.hello("ok")
        with game_server.client() as other, pytest.raises(ServerError, match="name_taken"):
            other.hello("OK")
        for msg, code in (
            ({"type": "move", "dir": [1, 0]}, "not_in_room"),
            ({"type": "chat", "text": "hi"}, "not_in_room"),
            ({"type": "leave"}, "not_in_room"),
            ({"type": "join", "room": "nowhere"}, "room_not_found"),
            ({"type": "move", "dir": ["a", 0]}, "bad_request"),
        ):
            with pytest.raises(ServerError) as info:
                a.request(msg)
            assert info.value.code == code, msg
        a.join("full")
        with game_server.client("p2") as p2, game_server.client("p3") as p3, game_server.client("p4") as p4:
            p2.join("full")
            p3.join("full")
            with pytest.raises(ServerError) as info:
                p4.join("full")
            assert info.value.code == "room_full" and "3/3" in info.value.msg["message"]
        assert a.request({"type": "ping", "t": 42})["t"] == 42  # still served


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_framework_rate_limits_guard_chat_join_and_move(backend):
    """GameSession's per-type limits (chat 5/s burst 10, join/create_room 2/s burst 5, move 60/s
    burst 120) are enforced by the framework: the excess never reaches the game, the player gets
    the framework's `rate_limited` error, and a move flood closes only the flooder."""
    srv = RunningServer(backend)
    try:
        with srv.client("a") as a, srv.client("b") as b, srv.client("c") as c:
            a.join("r")
            b.join("r", create=False)
            # One write each, so the buckets barely refill while the server reads them.
            a.sock.sendall(b"".join(encode_message({"type": "chat", "text": str(i)}) for i in range(12)))
            error = a.wait_for(lambda m: m["type"] == "error")
            assert error["code"] == p.RATE_LIMITED and error["limit"] == "chat"
            seen: list[dict] = []
            b.on_message = seen.append
            b.request({"type": "ping", "t": 1})  # every chat of a's was handled before the error
            assert [m["text"] for m in seen if m["type"] == "chat"] == [str(i) for i in range(10)]

            # c has not joined yet: its whole join burst is left.
            c.sock.sendall(
                b"".join(encode_message({"type": "create_room", "room": f"churn{i}", "rid": i}) for i in range(7))
            )
            replies = []
            while not any(m.get("type") == "error" for m in replies):
                replies.append(c.wait_for(lambda m: m["type"] in ("joined", "error")))
            assert [m["room"] for m in replies if m["type"] == "joined"] == [f"churn{i}" for i in range(5)]
            assert replies[-1]["code"] == p.RATE_LIMITED and replies[-1]["limit"] == "join"

            flood = b"".join(encode_message({"type": "move", "dir": [1, 0], "seq": i}) for i in range(400))
            a.sock.sendall(flood)
            with pytest.raises(ConnectionError):
                a.wait_for(lambda m: False)
            assert b.request({"type": "ping", "t": 2})["t"] == 2  # the others play on
            assert c.request({"type": "ping", "t": 3})["t"] == 3
            stats = srv.server.stats
            assert stats["rate_limit_closes"] == 1 and stats["rate_limited"] >= 2 + 2 + 100
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------------
# Command-line entry points, the bot, locust

ENV = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEWORK_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_connectable(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early: {proc.communicate()[0]!r}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("server did not start listening")


class LogWatcher:
    """Reads a child's JSON log lines in a thread; `wait(pred)` blocks until a record matches."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._records: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            try:
                self._records.put(json.loads(line))
            except ValueError:
                pass

    def wait(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self._records.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("no matching log record; log tail:\n" + "".join(self.lines[-20:]))
            if isinstance(record, dict) and predicate(record):
                return record

    def join(self) -> str:
        self._thread.join(20)
        return "".join(self.lines)


@needs_posix_signals
def test_python_m_examples_gameserver_serves_logs_players_moving_and_exits_0_on_sigterm():
    port = free_port()
    env = {
        **ENV,
        "FRAMEWORK_SERVER__PORT": str(port),
        "FRAMEWORK_SERVER__HOSTS": '["127.0.0.1"]',
        "FRAMEWORK_STATS__INTERVAL_S": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.gameserver"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    log = LogWatcher(proc.stdout)
    try:
        wait_connectable(port, proc)
        with GameClient("127.0.0.1", port, timeout=WAIT) as c:
            c.hello("walker")
            me = c.join("plaza")["you"]
            c.send({"type": "move", "dir": [0, 1], "seq": 1})
            c.wait_for(lambda m: m["type"] == "snapshot" and snapshot_row(m, me)[3] == 1)
            stats = log.wait(lambda r: r.get("event") == "game stats" and r.get("moving") == 1)
            assert stats["rooms"] == 1 and stats["top_rooms"] == {"plaza": 1}
            log.wait(lambda r: r.get("event") == "stats" and r.get("sessions") == 1)  # the server's own
            proc.send_signal(signal.SIGTERM)
            assert c.wait_for(lambda m: m["type"] == "shutdown")["message"]
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.join()
    assert proc.returncode == 0, text[-2000:]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_has_valid_game_settings(path):
    GameSession.check_settings(load_settings(path, env={}))


def test_framework_cli_check_config_and_backends(tmp_path):
    run = [sys.executable, "-m", "framework"]
    default = ROOT / "configs" / "default.yaml"
    ok = subprocess.run(
        [*run, "check-config", str(default), "--app", "examples.gameserver.app:GameSession"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("app:\n  tick_hz: 20\n  tick_rate: 5\n")
    res = subprocess.run(
        [*run, "check-config", str(bad), "--app", "examples.gameserver.app:GameSession"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1 and "app.tick_rate" in res.stderr
    res = subprocess.run(
        [*run, "serve", "--app", "examples.gameserver.app:Nope"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "no attribute 'Nope'" in res.stderr
    res = subprocess.run([*run, "backends"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for name in PLATFORM_BACKENDS:
        assert f"{name} " in res.stdout and "available" in res.stdout
    assert "iocp" in res.stdout and "unavailable" in res.stdout  # and the reason for the others


@needs_posix_signals
def test_framework_serve_runs_any_session_class_until_sigterm():
    port = free_port()
    env = {**ENV, "FRAMEWORK_SERVER__PORT": str(port), "FRAMEWORK_SERVER__HOSTS": '["127.0.0.1"]'}
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "serve", "--app", "examples.gameserver.app:GameSession"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_connectable(port, proc)
        with GameClient("127.0.0.1", port, timeout=WAIT) as c:
            assert c.request({"type": "ping", "t": 7})["t"] == 7
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]


@pytest.mark.slow
def test_bot_plays_for_a_few_seconds_without_errors():
    srv = RunningServer(PLATFORM_BACKENDS[0])
    try:
        res = subprocess.run(
            [sys.executable, "-m", "examples.gameserver.bot", "--count", "6", "--room-size", "3",
             "--host", srv.host, "--port", str(srv.port), "--duration", "3", "--seed", "1"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        srv.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    final = res.stdout.strip().splitlines()[-1]
    assert final.startswith("done") and "errors=0" in final, res.stdout
    fields = dict(item.split("=") for item in final.split() if "=" in item)
    assert int(fields["snapshots"]) > 0 and int(fields["moves"]) > 0 and int(fields["pongs"]) > 0
    assert "connected=6/6" in res.stdout


def locust_tables(text: str) -> dict[str, dict[str, str]]:
    """Per request name, what locust printed at exit: `# reqs`, `# fails` and `req/s` from its stats
    table, 50%/95%/99% from its percentile table."""
    rows: dict[str, dict[str, str]] = {}
    table = "stats"
    for line in text.splitlines():
        if line.startswith("Response time percentiles"):
            table = "percentiles"
        parts = line.split()
        if parts[:1] == ["game"]:
            parts = parts[1:]
        if not parts or not (parts[0] == "Aggregated" or line.startswith("game ")):
            continue
        row = rows.setdefault(parts[0], {})
        if table == "stats":  # name reqs fails(%) | avg min max med | req/s failures/s
            row.update(count=parts[1], fail=parts[2].split("(")[0], rps=parts[-2])
        else:  # name 50% 66% 75% 80% 90% 95% 98% 99% 99.9% 99.99% 100% reqs
            row.update(p50=parts[1], p95=parts[6], p99=parts[8])
    return rows


def script_summary(text: str) -> dict[str, dict[str, str]]:
    """loadtests/run.py's summary table, per request name."""
    lines = text.splitlines()
    start = lines.index(SUMMARY_TITLE) + 2  # the title, then the column header
    rows = {}
    for line in lines[start:]:
        if line.startswith("server CPU"):
            break
        name, count, fail, p50, p95, p99, rps = line.split()
        rows[name] = {"count": count, "fail": fail, "p50": p50, "p95": p95, "p99": p99, "rps": rps}
    return rows


def test_bot_treats_a_server_shutdown_as_a_clean_end():
    # The server says "shutdown" to every session, drains and closes: that ends the bots' run
    # early with exit status 0, not one error per lost connection.
    srv = RunningServer(PLATFORM_BACKENDS[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.gameserver.bot", "--count", "4", "--room-size", "2",
         "--host", srv.host, "--port", str(srv.port), "--duration", "60", "--seed", "2"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and len(srv.server.registry) < 4:
            time.sleep(0.05)
        assert len(srv.server.registry) == 4
        time.sleep(0.3)
        srv.stop()
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "errors=0" in out.splitlines()[-2] and "a clean end" in out, out


@pytest.mark.slow
@needs_posix_signals  # loadtests/run.py stops the server with SIGTERM and wants exit status 0
def test_make_loadtest_on_a_chosen_port_shows_live_progress_and_one_set_of_final_numbers(tmp_path):
    """`make loadtest` with PORT: the server listens there, a progress line arrives while the run
    goes on (locust has not written its report yet, and the server answers on PORT), no request
    fails, and the script's summary, stats_stats.csv and locust's printed tables carry the same
    numbers."""
    port = free_port()
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as for most users
    out = tmp_path / "reports"
    cmd = [
        "make", "--no-print-directory", "-o", ".venv/.installed", f"PY={sys.executable}", "loadtest",
        "USERS=20", "SPAWN=10", "TIME=10s", f"PORT={port}", f"LOADTEST_ARGS=--out {out} --progress 2",
    ]  # fmt: skip
    stdout: list[str] = []
    live: list[tuple[bool, int]] = []
    with (tmp_path / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)

        def read() -> None:
            for line in proc.stdout:
                stdout.append(line)
                if line.startswith("progress ") and not live:
                    report_written = (out / "report.html").exists()  # locust writes it when the run ends
                    with GameClient("127.0.0.1", port, timeout=WAIT) as c:  # the run's server, on PORT
                        live.append((report_written, c.request({"type": "ping", "t": 5})["t"]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(10)
        err.seek(0)
        stderr = err.read()
    text = "".join(stdout)
    detail = text[-3000:] + stderr[-3000:]
    assert proc.returncode == 0, detail
    assert f"game server on 127.0.0.1:{port} " in text, detail
    assert live == [(False, 5)], detail

    progress = [
        dict(item.split("=") for item in line.split()[1:]) for line in stdout if line.startswith("progress ")
    ]
    assert len(progress) >= 3, detail  # every 2 s over a 10 s run
    assert [int(p["total_reqs"]) for p in progress] == sorted(int(p["total_reqs"]) for p in progress)
    assert int(progress[-1]["users"]) == 20 and float(progress[-1]["req/s"]) > 0, progress
    assert all(p["fails"] == "0" and p["total_fails"] == "0" for p in progress), progress
    assert text.index("progress ") < text.index(SUMMARY_TITLE)

    with (out / "stats_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert rows["Aggregated"]["Failure Count"] == "0", detail
    for name in ("connect", "hello", "join", "move", "ping"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert (out / "report.html").stat().st_size > 0

    locust = locust_tables(stderr)
    ours = script_summary(text)
    assert ours == locust, detail  # every name, every column: the same final numbers
    assert {name: row["Request Count"] for name, row in rows.items()} == {
        name: row["count"] for name, row in ours.items()
    }
    summary = (out / "summary.txt").read_text()
    assert summary.startswith(SUMMARY_TITLE)
    for line in ("server CPU: ", "locust CPU: ", "machine CPU: "):
        assert line in summary and line in text, detail
