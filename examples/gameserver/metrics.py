"""The game's own Prometheus metrics (rooms, players, tick duration, snapshot bytes, requests).

Registered on the server's registry when `metrics.listen` is set. Gauges and counters are read from
a snapshot the framework takes in the loop thread at scrape time (`Metrics.add_source`), so the game
pays nothing per message; the tick histogram times one room tick in eight.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TOP_ROOMS = 10  # rooms labelled in raon_game_room_players: a bounded label set
TICK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
_SOURCE = "game"


def game_snapshot(app: Any) -> dict[str, Any]:
    """Loop thread: the game's figures now."""
    game = app.game
    busiest = sorted(game.rooms.values(), key=lambda r: len(r.members), reverse=True)[:TOP_ROOMS]
    return {
        "players": len(game.players),
        "named": len(game._names),
        "rooms": len(game.rooms),
        "in_rooms": sum(len(r.members) for r in game.rooms.values()),
        "top_rooms": [(r.name, len(r.members)) for r in busiest],
        "counters": dict(game.counters),
        "snapshot_bytes": app.snapshot_bytes,
    }


class GameCollector(Collector):
    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.metrics.snapshot().get(_SOURCE))

    def _families(self, g: dict[str, Any] | None) -> Iterator[Metric]:
        def gauge(name: str, doc: str, key: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=g[key] if g else None)

        yield gauge("raon_game_players", "Players connected (named or not).", "players")
        yield gauge("raon_game_players_in_rooms", "Players in a room.", "in_rooms")
        yield gauge("raon_game_rooms", "Rooms open.", "rooms")
        rooms = GaugeMetricFamily(
            "raon_game_room_players",
            f"Players of the {TOP_ROOMS} busiest rooms, by room (only those: a bounded label set).",
            labels=["room"],
        )
        events = CounterMetricFamily(
            "raon_game_events",
            "Game events by kind: requests, moves, chats, joins, snapshots, errors (error replies, "
            "rate-limited chats included).",
            labels=["kind"],
        )
        snapshot_bytes = CounterMetricFamily(
            "raon_game_snapshot_bytes", "Snapshot payload bytes encoded (once per room tick).", value=None
        )
        if g:
            for name, players in g["top_rooms"]:
                rooms.add_metric([name], players)
            for kind, n in g["counters"].items():
                events.add_metric([kind], n)
            snapshot_bytes.add_metric([], g["snapshot_bytes"])
        yield rooms
        yield events
        yield snapshot_bytes


def register(app: Any, metrics: Any) -> Histogram:
    """Register the game's metrics on `metrics` (framework.metrics.Metrics); returns the tick
    histogram the app observes."""
    metrics.add_source(_SOURCE, lambda: game_snapshot(app))
    metrics.registry.register(GameCollector(metrics))
    return Histogram(
        "raon_game_tick_seconds",
        "One room tick: simulation step, snapshot encoding and broadcast (one tick in 8 timed).",
        buckets=TICK_BUCKETS,
        registry=metrics.registry,
    )
