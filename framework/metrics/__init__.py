"""Prometheus metrics, health and readiness of one server process (`metrics.listen`; docs/METRICS.md).

Nothing here runs per frame. The loop keeps its plain-int counters (`SessionHost.stats`); a scrape
asks the loop thread for a snapshot of them (`call_soon_threadsafe`, bounded wait, the previous
snapshot when the loop does not answer in time) and custom collectors turn it into metric families.
A probe timer on the loop (every `PROBE_INTERVAL_S`) measures loop lag, marks the loop alive for
/healthz and asks run_once to time its next turn; only those turns are timed.

The HTTP endpoint runs in its own daemon threads: `/metrics` (prometheus_client's exposition,
text or OpenMetrics by content negotiation), `/healthz` (200 while the loop turns, 503 once it has
not for `metrics.health_stall_s`) and `/readyz` (200 while listening and not draining, and every
check added with `add_readiness_check` passes).

Applications add their own metrics: `server.metrics.registry` is the process's CollectorRegistry,
and `add_source(name, fn)` runs `fn()` in the loop thread at each snapshot so a collector can read
loop-owned state safely (`snapshot()[name]`). examples/gameserver does both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

from framework.metrics.collector import (
    LAG_BUCKETS,
    TURN_BUCKETS,
    HostCollector,
    build_snapshot,
)
from framework.metrics.http import MetricsHTTPServer

log = structlog.get_logger("framework.metrics")

PROBE_INTERVAL_S = 0.1  # loop-lag samples and timed turns per second: 10
_SNAPSHOT_MAX_AGE_S = 0.5  # the later collectors of one scrape share its snapshot
_SNAPSHOT_TIMEOUT_S = 1.0  # how long a scrape waits for the loop before serving the previous one

__all__ = ["PROBE_INTERVAL_S", "Metrics", "MetricsHTTPServer"]


class Metrics:
    """One server's registry, loop probe and HTTP endpoint. Built by `Server` when metrics.listen
    is set (`server.metrics`); `start()` with the server, `stop()` after its shutdown."""

    def __init__(self, server: Any, *, listen: str | None = None) -> None:
        self.server = server
        settings = server.settings.metrics
        self.listen = listen if listen is not None else settings.listen
        self.stall_s = float(settings.health_stall_s)
        self.registry = CollectorRegistry()
        self.loop_lag = Histogram(
            "raon_loop_lag_seconds",
            "How late a timer due on the loop ran (sampled every 0.1 s); high values mean a handler "
            "or a burst kept the loop busy.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.turn_seconds = Histogram(
            "raon_loop_turn_seconds",
            "Work of one loop turn (completions, timers, handlers, flush), timed for one turn in every "
            "0.1 s; the timed turn does not wait for I/O.",
            buckets=TURN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(HostCollector(self))
        # process_cpu_seconds_total, resident memory, open descriptors (read from /proc per scrape)
        ProcessCollector(registry=self.registry)
        self._sources: dict[str, Callable[[], Any]] = {}
        self._checks: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        self._probe_due = 0.0
        self._probe_timer: Any = None
        self.last_turn_at = time.monotonic()
        self.http: MetricsHTTPServer | None = None

    # ------------------------------------------------------------------ extension points
    def add_source(self, name: str, fn: Callable[[], Any]) -> None:
        """`fn()` runs in the loop thread at every snapshot; its result is `snapshot()[name]`."""
        self._sources[name] = fn

    def add_readiness_check(self, name: str, fn: Callable[[], bool]) -> None:
        """/readyz is 503 while `fn()` is false or raises (e.g. a Redis ping). It runs in the HTTP
        thread, so it must not touch loop-owned state; keep it quick (it runs per request)."""
        self._checks[name] = fn

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the endpoint listens on, once started."""
        return self.http.address if self.http is not None else None

    def start(self) -> None:
        """Start the probe timer on the loop and the HTTP endpoint (loop thread, after listen)."""
        if self.http is not None:
            return
        server = self.server
        server.turn_observer = self.turn_seconds.observe
        self.last_turn_at = time.monotonic()
        try:
            self.http = MetricsHTTPServer(self.listen, self)
        except OSError as exc:
            server.turn_observer = None
            raise OSError(exc.errno, f"metrics.listen {self.listen}: {exc.strerror or exc}") from None
        self._schedule_probe()
        host, port = self.http.address
        log.info("metrics endpoint listening", url=f"http://{_fmt_host(host)}:{port}/metrics", pid=_pid())

    def stop(self) -> None:
        """Stop the endpoint (after the server's shutdown: /readyz said 503 throughout the drain)."""
        http, self.http = self.http, None
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        self.server.turn_observer = None
        if http is not None:
            http.close()

    # ------------------------------------------------------------------ loop probe (loop thread)
    def _schedule_probe(self) -> None:
        self._probe_due = time.monotonic() + PROBE_INTERVAL_S
        self._probe_timer = self.server.call_later(PROBE_INTERVAL_S, self._probe)

    def _probe(self) -> None:
        now = time.monotonic()
        self.loop_lag.observe(max(0.0, now - self._probe_due))
        self.last_turn_at = now
        self.server.sample_turn = True
        self._schedule_probe()

    # ------------------------------------------------------------------ health (any thread)
    def healthy(self) -> tuple[bool, str]:
        """Alive: the loop ran its probe within health_stall_s."""
        age = time.monotonic() - self.last_turn_at
        if age > self.stall_s:
            return False, f"the loop has not turned for {age:.1f} s (limit {self.stall_s:g} s)"
        return True, f"the loop turned {age * 1000:.0f} ms ago"

    def ready(self) -> tuple[bool, str]:
        """Ready for traffic: listening, not draining, every readiness check passing."""
        server = self.server
        if server._stopping or server._shutdown_requested:
            return False, "draining: shutdown started"
        if not server._listening:
            return False, "not listening yet"
        for name, check in list(self._checks.items()):
            try:
                ok = bool(check())
            except Exception as exc:
                return False, f"check {name!r} raised {type(exc).__name__}: {exc}"
            if not ok:
                return False, f"check {name!r} failed"
        return True, "ready"

    # ------------------------------------------------------------------ snapshots (any thread)
    def snapshot(self, max_age_s: float = _SNAPSHOT_MAX_AGE_S) -> dict[str, Any]:
        """The loop's counters as of at most `max_age_s` ago, taken in the loop thread; the
        previous snapshot (marked stale) when the loop does not answer within 1 s. A scrape's first
        collector asks for a new one (max_age_s=0); the others share it."""
        with self._lock:
            if self._snapshot is not None and time.monotonic() - self._snapshot_at < max_age_s:
                return self._snapshot
            fresh = self._take()
            if fresh is not None:
                self._snapshot = fresh
                self._snapshot_at = time.monotonic()
            elif self._snapshot is not None:
                self._snapshot = {**self._snapshot, "stale": True}
            else:
                self._snapshot = {"stale": True}
            return self._snapshot

    def _take(self) -> dict[str, Any] | None:
        server = self.server
        if not server._running:
            # No loop turning (not started yet, stopping, or a test driving it by hand): read the
            # counters from this thread; a collision with a last close just means no new figures.
            try:
                return self._build()
            except RuntimeError:
                return None
        box: list[dict[str, Any]] = []
        done = threading.Event()

        def build() -> None:
            box.append(self._build())
            done.set()

        try:
            server.call_soon_threadsafe(build)
        except RuntimeError:
            return None
        done.wait(_SNAPSHOT_TIMEOUT_S)
        return box[0] if box else None

    def _build(self) -> dict[str, Any]:
        snap = build_snapshot(self.server)
        for name, fn in list(self._sources.items()):
            try:
                snap[name] = fn()
            except Exception:
                log.exception("metrics source raised", source=name)
        return snap


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _pid() -> int:
    import os

    return os.getpid()
