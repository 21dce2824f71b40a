"""The game itself, sans-IO: players, rooms, server-authoritative movement, chat.

`Game.handle(player, message)` takes one decoded client message and returns a list of effects
(send to a player, broadcast to a room, room opened/closed, member added/removed) that the network
layer (app.py) carries out; `Game.tick(room)` advances one room by one fixed step and returns its
snapshot. Nothing here touches a socket or a clock it was not given, so every rule is unit-tested
without I/O.

Movement is authoritative: a client only sends an input (a direction, clamped to unit length, or a
target point); the server moves the player at most `player_speed * dt` per tick inside the world
bounds. Each snapshot carries, per player, the `seq` of the last input applied, so a client can tell
when its input took effect (the load test times exactly that).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from examples.gameserver import protocol as p


class GameSettings(BaseModel):
    """The `app:` section of the deployment config when serving this game."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tick_hz: float = Field(
        20.0, gt=0, le=1000, description="room simulation steps (and snapshots) per second"
    )
    max_players_per_room: int = Field(16, ge=1, le=10_000, description="a join beyond this gets room_full")
    max_rooms: int = Field(100, ge=1, le=100_000, description="a new room beyond this gets too_many_rooms")
    world_width: float = Field(1000.0, gt=0, description="world size in game units (x from 0 to width)")
    world_height: float = Field(1000.0, gt=0, description="world size in game units (y from 0 to height)")
    player_speed: float = Field(200.0, gt=0, description="maximum player speed, game units per second")
    max_name_length: int = Field(16, ge=1, le=64, description="player name length limit")
    max_chat_length: int = Field(200, ge=1, le=4096, description="chat text length limit (characters)")
    room_stats_limit: int = Field(5, ge=0, description="busiest rooms listed in each periodic stats log line")

    def limits(self) -> p.Limits:
        return p.Limits(max_name_length=self.max_name_length, max_chat_length=self.max_chat_length)


# Effects: what the network layer must do after a call into the game.
@dataclass(slots=True, frozen=True)
class Send:
    player: int
    msg: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Broadcast:
    room: str
    msg: dict[str, Any]


@dataclass(slots=True, frozen=True)
class RoomOpened:
    room: str


@dataclass(slots=True, frozen=True)
class RoomClosed:
    room: str


@dataclass(slots=True, frozen=True)
class MemberAdded:
    room: str
    player: int


@dataclass(slots=True, frozen=True)
class MemberRemoved:
    room: str
    player: int


Effect = Send | Broadcast | RoomOpened | RoomClosed | MemberAdded | MemberRemoved


class Player:
    __slots__ = ("ack", "dx", "dy", "id", "name", "room", "target", "x", "y")

    def __init__(self, player_id: int, x: float, y: float) -> None:
        self.id = player_id
        self.name: str | None = None
        self.room: Room | None = None
        self.x = x
        self.y = y
        self.dx = 0.0  # input direction, |(dx, dy)| <= 1
        self.dy = 0.0
        self.target: tuple[float, float] | None = None
        self.ack = 0  # seq of the last input applied

    @property
    def moving(self) -> bool:
        return self.target is not None or self.dx != 0.0 or self.dy != 0.0

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "x": self.x, "y": self.y}


class Room:
    __slots__ = ("members", "name", "tick")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[int, Player] = {}
        self.tick = 0

    def summary(self, capacity: int) -> dict[str, Any]:
        return {"name": self.name, "players": len(self.members), "max_players": capacity}


class Game:
    """All players and rooms of one server process."""

    def __init__(self, settings: GameSettings | None = None, seed: int | None = None) -> None:
        self.settings = settings or GameSettings()
        self.limits = self.settings.limits()
        self.dt = 1.0 / self.settings.tick_hz
        self.players: dict[int, Player] = {}
        self.rooms: dict[str, Room] = {}
        self._names: dict[str, int] = {}  # casefolded name -> player id
        self._next_id = 1
        self._rng = random.Random(seed)
        # Monotonic counters; the stats logger turns them into rates.
        self.counters: dict[str, int] = {
            "moves": 0,
            "chats": 0,
            "snapshots": 0,
            "errors": 0,
            "joins": 0,
            "requests": 0,
        }

    # --- players -----------------------------------------------------------------------------
    def add_player(self) -> int:
        """A new connection; returns its player id (unique for the life of the process)."""
        player_id = self._next_id
        self._next_id += 1
        s = self.settings
        x = self._rng.uniform(0.0, s.world_width)
        y = self._rng.uniform(0.0, s.world_height)
        self.players[player_id] = Player(player_id, x, y)
        return player_id

    def remove_player(self, player_id: int) -> list[Effect]:
        """The connection is gone: leave the room, free the name."""
        player = self.players.pop(player_id, None)
        if player is None:
            return []
        effects: list[Effect] = []
        if player.room is not None:
            self._leave(player, effects)
        if player.name is not None:
            self._names.pop(player.name.casefold(), None)
        return effects

    # --- requests ------------------------------------------------------------------------------
    def handle(self, player_id: int, msg: Any, now: float) -> list[Effect]:
        """One decoded client message; `now` is a monotonic time in seconds (pong)."""
        player = self.players.get(player_id)
        if player is None:
            return []
        self.counters["requests"] += 1
        rid = p.request_id(msg)
        effects: list[Effect] = []
        try:
            request = p.parse_request(msg, self.limits)
            self._dispatch(player, request, rid, now, effects)
        except p.ProtocolError as exc:
            self.counters["errors"] += 1
            effects.append(Send(player_id, p.error_message(exc.code, exc.message, exc.request, rid)))
        return effects

    def _reply(self, player: Player, msg: dict[str, Any], rid: Any, effects: list[Effect]) -> None:
        if rid is not None:
            msg["rid"] = rid
        effects.append(Send(player.id, msg))

    def _dispatch(self, player: Player, req: p.Request, rid: Any, now: float, effects: list[Effect]) -> None:
        s = self.settings
        if isinstance(req, p.Move):
            self._room_of(player, "move")
            self.counters["moves"] += 1
            if req.is_target:
                player.target = (min(max(req.x, 0.0), s.world_width), min(max(req.y, 0.0), s.world_height))
                player.dx = player.dy = 0.0
            else:
                player.target = None
                player.dx, player.dy = req.x, req.y
            player.ack = max(player.ack, req.seq)
            return
        if isinstance(req, p.Ping):
            self._reply(player, {"type": "pong", "t": req.t, "server_time": now}, rid, effects)
            return
        if isinstance(req, p.Hello):
            if player.name is not None:
                raise p.ProtocolError(p.ALREADY_NAMED, f"you are already named {player.name!r}", "hello")
            key = req.name.casefold()
            if key in self._names:
                raise p.ProtocolError(p.NAME_TAKEN, f"the name {req.name!r} is taken; pick another", "hello")
            self._names[key] = player.id
            player.name = req.name
            welcome = {
                "type": "welcome",
                "id": player.id,
                "name": player.name,
                "version": p.PROTOCOL_VERSION,
                "tick_hz": s.tick_hz,
                "world": [s.world_width, s.world_height],
                "speed": s.player_speed,
                "max_players_per_room": s.max_players_per_room,
            }
            self._reply(player, welcome, rid, effects)
            return
        if player.name is None:
            kind = type(req).__name__.lower()
            raise p.ProtocolError(p.NOT_NAMED, "send 'hello' with a name first", _KIND.get(kind, kind))
        if isinstance(req, p.Chat):
            # Chat's rate limit is the framework's (GameSession.rate_limits), before this is called.
            room = self._room_of(player, "chat")
            self.counters["chats"] += 1
            msg = {
                "type": "chat",
                "room": room.name,
                "from": player.id,
                "name": player.name,
                "text": req.text,
            }
            effects.append(Broadcast(room.name, msg))
            return
        if isinstance(req, p.ListRooms):
            rooms = [r.summary(s.max_players_per_room) for r in self.rooms.values()]
            self._reply(player, {"type": "rooms", "rooms": rooms}, rid, effects)
            return
        if isinstance(req, p.CreateRoom):
            if req.room in self.rooms:
                raise p.ProtocolError(
                    p.ROOM_EXISTS, f"room {req.room!r} already exists; join it", "create_room"
                )
            self._join(player, req.room, True, rid, effects, "create_room")
            return
        if isinstance(req, p.Join):
            self._join(player, req.room, req.create, rid, effects, "join")
            return
        if isinstance(req, p.Leave):
            room = self._room_of(player, "leave")
            self._leave(player, effects)
            self._reply(player, {"type": "left", "room": room.name}, rid, effects)
            return
        raise AssertionError(f"unhandled request {req!r}")  # parse_request returned a new type

    def _room_of(self, player: Player, kind: str) -> Room:
        if player.name is None:
            raise p.ProtocolError(p.NOT_NAMED, "send 'hello' with a name first", kind)
        if player.room is None:
            raise p.ProtocolError(p.NOT_IN_ROOM, f"'{kind}' needs you in a room; send 'join' first", kind)
        return player.room

    def _join(
        self, player: Player, name: str, create: bool, rid: Any, effects: list[Effect], kind: str
    ) -> None:
        s = self.settings
        room = self.rooms.get(name)
        if room is not None and player.room is room:
            self._reply(player, self._joined(player, room), rid, effects)  # idempotent
            return
        if room is None:
            if not create:
                raise p.ProtocolError(
                    p.ROOM_NOT_FOUND,
                    f"no room {name!r}; create it with create_room or join with create=true",
                    kind,
                )
            if len(self.rooms) >= s.max_rooms:
                raise p.ProtocolError(p.TOO_MANY_ROOMS, f"the server already has {s.max_rooms} rooms", kind)
        elif len(room.members) >= s.max_players_per_room:
            raise p.ProtocolError(
                p.ROOM_FULL, f"room {name!r} is full ({len(room.members)}/{s.max_players_per_room})", kind
            )
        if player.room is not None:
            self._leave(player, effects)
        if room is None:
            room = self.rooms[name] = Room(name)
            effects.append(RoomOpened(name))
        # Tell the others before adding the newcomer, so it does not hear about itself.
        effects.append(
            Broadcast(name, {"type": "player_joined", "room": name, "id": player.id, "name": player.name})
        )
        room.members[player.id] = player
        player.room = room
        player.dx = player.dy = 0.0
        player.target = None
        effects.append(MemberAdded(name, player.id))
        self.counters["joins"] += 1
        self._reply(player, self._joined(player, room), rid, effects)

    def _joined(self, player: Player, room: Room) -> dict[str, Any]:
        return {
            "type": "joined",
            "room": room.name,
            "you": player.id,
            "tick": room.tick,
            "max_players": self.settings.max_players_per_room,
            "players": [m.public() for m in room.members.values()],
        }

    def _leave(self, player: Player, effects: list[Effect]) -> None:
        room = player.room
        assert room is not None
        room.members.pop(player.id, None)
        player.room = None
        player.dx = player.dy = 0.0
        player.target = None
        effects.append(MemberRemoved(room.name, player.id))
        if room.members:
            effects.append(
                Broadcast(
                    room.name,
                    {"type": "player_left", "room": room.name, "id": player.id, "name": player.name},
                )
            )
        else:
            del self.rooms[room.name]
            effects.append(RoomClosed(room.name))

    # --- simulation ----------------------------------------------------------------------------
    def tick(self, room_name: str) -> dict[str, Any] | None:
        """Advance one room by one fixed step; its snapshot, or None when the room no longer exists."""
        room = self.rooms.get(room_name)
        if room is None:
            return None
        s = self.settings
        step = s.player_speed * self.dt
        width, height = s.world_width, s.world_height
        rows = []
        for player in room.members.values():
            if player.target is not None:
                tx, ty = player.target
                ddx, ddy = tx - player.x, ty - player.y
                dist = math.hypot(ddx, ddy)
                if dist <= step:
                    player.x, player.y = tx, ty
                    player.target = None
                else:
                    player.x += ddx / dist * step
                    player.y += ddy / dist * step
            elif player.dx or player.dy:
                player.x = min(max(player.x + player.dx * step, 0.0), width)
                player.y = min(max(player.y + player.dy * step, 0.0), height)
            rows.append([player.id, player.x, player.y, player.ack])
        room.tick += 1
        self.counters["snapshots"] += 1
        return {"type": "snapshot", "room": room.name, "tick": room.tick, "players": rows}

    # --- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Gauges of this moment (counters are in `self.counters`)."""
        in_rooms = moving = 0
        for room in self.rooms.values():
            in_rooms += len(room.members)
            moving += sum(1 for m in room.members.values() if m.moving)
        busiest = sorted(self.rooms.values(), key=lambda r: len(r.members), reverse=True)
        top = {r.name: len(r.members) for r in busiest[: self.settings.room_stats_limit]}
        return {
            "players": len(self.players),
            "named": len(self._names),
            "rooms": len(self.rooms),
            "in_rooms": in_rooms,
            "moving": moving,
            "top_rooms": top,
        }


_KIND = {"listrooms": "list_rooms", "createroom": "create_room"}
