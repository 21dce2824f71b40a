"""The game on the network: `GameSession` (one per player) and `GameApp` (one per server).

`GameApp` owns the sans-IO `Game` and carries out its effects: a reply becomes `session.send`, a room
broadcast becomes one `Group.broadcast` (msgpack-encoded once for all members), a room that opens gets
its own simulation timer (`server.call_every(1 / tick_hz)`) which is cancelled when the room closes.
It also logs the game's periodic stats (rooms, players, moves/s, snapshots/s) next to the server's.

Serve it with `python -m examples.gameserver` or, generically,
`python -m framework serve --app examples.gameserver.app:GameSession`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, ClassVar

import structlog
from msgpack import packb

from examples.gameserver.game import (
    Broadcast,
    Effect,
    Game,
    GameSettings,
    MemberAdded,
    MemberRemoved,
    RoomClosed,
    RoomOpened,
    Send,
)
from framework.config import validate_app
from framework.session.session import Session

log = structlog.get_logger("gameserver")

_APP_ATTR = "_gameserver_app"
_RATE_KEYS = ("moves", "chats", "snapshots", "errors", "joins", "requests")
_TICK_SAMPLE_MASK = 7


class GameApp:
    """The game state of one server process and the glue between it and the sessions."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.settings = validate_app(GameSettings, server.settings)
        self.game = Game(self.settings)
        self.sessions: dict[int, GameSession] = {}
        self._timers: dict[str, Any] = {}
        self._last = dict.fromkeys(_RATE_KEYS, 0)
        self._last_t = time.monotonic()
        self.snapshot_bytes = 0  # snapshot payload bytes encoded (once per room tick, not per member)
        self._tick_timer: Any = None  # the game's tick-duration histogram, when metrics are on
        self._ticks = 0
        # Room and stats timers live on the server's loop and end with it.
        interval = server.settings.stats.interval_s
        if interval > 0:
            server.call_every(interval, self.log_stats)
        metrics = getattr(server, "metrics", None)
        if metrics is not None:
            from examples.gameserver.metrics import register

            self._tick_timer = register(self, metrics)

    @classmethod
    def of(cls, server: Any) -> GameApp:
        """The app attached to `server`, created on first use."""
        app = getattr(server, _APP_ATTR, None)
        if app is None:
            app = cls(server)
            setattr(server, _APP_ATTR, app)
        return app

    # --- effects -----------------------------------------------------------------------------
    def apply(self, effects: list[Effect]) -> None:
        registry = self.server.registry
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                session = self.sessions.get(effect.player)
                if session is not None:
                    session.send(effect.msg)
            elif kind is Broadcast:
                registry.group(_group(effect.room)).broadcast(effect.msg)
            elif kind is MemberAdded:
                session = self.sessions.get(effect.player)
                if session is not None:
                    registry.group(_group(effect.room)).add(session)
            elif kind is MemberRemoved:
                session = self.sessions.get(effect.player)
                if session is not None:
                    registry.group(_group(effect.room)).discard(session)
            elif kind is RoomOpened:
                name = effect.room
                self._timers[name] = self.server.call_every(
                    1.0 / self.settings.tick_hz, partial(self.tick, name)
                )
                log.debug("room opened", room=name, rooms=len(self.game.rooms))
            elif kind is RoomClosed:
                timer = self._timers.pop(effect.room, None)
                if timer is not None:
                    timer.cancel()
                registry.remove_group(_group(effect.room))
                log.debug("room closed", room=effect.room, rooms=len(self.game.rooms))

    def tick(self, room: str) -> None:
        timer = self._tick_timer
        if timer is not None:
            self._ticks += 1
            if not self._ticks & _TICK_SAMPLE_MASK:  # one tick in 8 is timed (cheap metrics)
                t0 = time.perf_counter()
                self._tick(room)
                timer.observe(time.perf_counter() - t0)
                return
        self._tick(room)

    def _tick(self, room: str) -> None:
        snapshot = self.game.tick(room)
        if snapshot is not None:
            payload = packb(snapshot)  # encoded once for every member
            self.snapshot_bytes += len(payload)
            self.server.registry.group(_group(room)).broadcast_frame(payload)

    # --- sessions ----------------------------------------------------------------------------
    def connect(self, session: GameSession) -> int:
        player = self.game.add_player()
        self.sessions[player] = session
        return player

    def disconnect(self, player: int) -> None:
        if self.sessions.pop(player, None) is not None:
            self.apply(self.game.remove_player(player))

    # --- stats -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Game gauges plus per-second rates of the counters since the previous call."""
        now = time.monotonic()
        span = max(1e-9, now - self._last_t)
        counters = self.game.counters
        out = self.game.stats()
        for key in _RATE_KEYS:
            out[f"{key}_per_s"] = round((counters[key] - self._last[key]) / span, 1)
            self._last[key] = counters[key]
        self._last_t = now
        return out

    def log_stats(self) -> None:
        log.info("game stats", **self.stats())


def _group(room: str) -> str:
    return f"room:{room}"  # a namespace, so the game's groups never collide with others


# Which per-type rate limit each request type counts against (GameSession.rate_limit_key).
_LIMITED = {"move": "move", "join": "join", "create_room": "join", "chat": "chat"}


class GameSession(Session):
    """One player's connection."""

    app: GameApp
    player: int

    # Per-player request rates, enforced by the framework before on_message (a request over its
    # limit never reaches the game; the player gets the framework's `rate_limited` error). A bot
    # moves 10 times a second and joins once; settings.session.rate_limit.per_type overrides these.
    rate_limits: ClassVar[dict[str, tuple[float, int]]] = {
        "move": (60.0, 120),  # one input per frame at 60 fps, with room for a burst
        "join": (2.0, 5),  # join and create_room: room churn opens timers and logs
        "chat": (5.0, 10),
    }

    def rate_limit_key(self, msg: Any) -> str | None:
        kind = msg.get("type") if type(msg) is dict else None
        return _LIMITED.get(kind) if type(kind) is str else None

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Raise `ConfigError` naming file:line, `app.<key>` and what was expected when `settings.app`
        does not fit `GameSettings` (`python -m framework check-config --app` and `serve` call it)."""
        validate_app(GameSettings, settings)

    @classmethod
    def setup_server(cls, server: Any) -> None:
        """Validate the `app:` settings and start the stats timer before the server accepts anyone
        (called by `python -m examples.gameserver` and `python -m framework serve`)."""
        GameApp.of(server)

    def on_connected(self) -> None:
        self.app = GameApp.of(self.server)
        self.player = self.app.connect(self)

    def on_message(self, msg: Any) -> None:
        app = self.app
        app.apply(app.game.handle(self.player, msg, time.monotonic()))

    def on_disconnected(self, reason: Any) -> None:
        app = getattr(self, "app", None)
        if app is not None:
            app.disconnect(self.player)

    def on_shutdown(self) -> None:
        # Tell the player why the connection is about to end; the server then drains and closes.
        self.send({"type": "shutdown", "message": "the server is shutting down"})
