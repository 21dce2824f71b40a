"""`python -m framework top --url http://host:port/metrics [--url ...]`: a live view of servers.

Scrapes each node's /metrics (metrics.listen; one URL per worker or cluster node) every
`--interval` seconds and shows, per node: sessions, messages/s and bytes/s in and out, loop lag p99
over the last interval, errors (handler, protocol, I/O) and their rate, refused connections; then
the busiest rooms of every node (examples/gameserver's `raon_game_room_players`). Rates need two
scrapes, so the first frame shows totals only. Ctrl-C quits.
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]  # sample name -> labels -> value


def parse(text: str) -> Samples:
    """Prometheus text exposition -> {sample name: {sorted label pairs: value}}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(url: str, timeout: float) -> Samples:
    """Fetch one metrics endpoint and parse its text exposition; raises on network errors."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of a sample's values over the label sets that carry `match`."""
    values = samples.get(name, {})
    return sum(v for labels, v in values.items() if all((k, m) in labels for k, m in match.items()))


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs; NaN when empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the last finite bound, as Prometheus does
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def _buckets(samples: Samples, name: str) -> dict[float, float]:
    return {float(dict(labels)["le"]): v for labels, v in samples.get(name + "_bucket", {}).items()}


@dataclass
class Node:
    """One scraped endpoint and its last two scrapes."""

    url: str
    prev: Samples | None = None
    cur: Samples | None = None
    prev_t: float = 0.0
    cur_t: float = 0.0
    error: str = ""
    history: list[float] = field(default_factory=list)

    def refresh(self, timeout: float) -> None:
        """Scrape again; a failed scrape keeps the last samples and sets `error`."""
        try:
            samples = scrape(self.url, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.error = str(getattr(exc, "reason", exc))
            return
        self.error = ""
        self.prev, self.prev_t = self.cur, self.cur_t
        self.cur, self.cur_t = samples, time.monotonic()

    def rate(self, name: str, **match: str) -> float | None:
        """Per-second increase of a counter between the last two scrapes (None before two)."""
        if self.prev is None or self.cur is None or self.cur_t <= self.prev_t:
            return None
        delta = total(self.cur, name, **match) - total(self.prev, name, **match)
        return max(0.0, delta) / (self.cur_t - self.prev_t)

    def lag_p99(self) -> float:
        """Loop lag p99 over the last interval (over the whole run on the first frame)."""
        assert self.cur is not None
        now = _buckets(self.cur, "raon_loop_lag_seconds")
        before = _buckets(self.prev, "raon_loop_lag_seconds") if self.prev is not None else {}
        diff = [(le, n - before.get(le, 0.0)) for le, n in now.items()]
        if diff and max(n for _, n in diff) <= 0:  # nothing observed since: use the totals
            diff = list(now.items())
        return quantile(0.99, diff)


_ERRORS = ("raon_handler_errors_total", "raon_protocol_errors_total", "raon_io_errors_total")


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "…"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}" if value >= 10 or value == int(value) else f"{value:.1f}{unit}"


def _ms(seconds: float) -> str:
    return "…" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def render(nodes: Sequence[Node], interval: float) -> Group:
    """One frame: the nodes table and the busiest rooms."""
    table = Table(
        title=f"raon top · {len(nodes)} node(s) · every {interval:g} s", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in ("node", "backend", "sessions", "msgs/s in/out", "bytes/s in/out", "lag p99", "errors (/s)",
                "refused", "state"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("node", "backend", "state") else "right", no_wrap=True)
    rooms: list[tuple[int, str, str]] = []
    for node in nodes:
        name = node.url.removeprefix("http://").removesuffix("/metrics")
        cur = node.cur
        if cur is None or node.error:
            table.add_row(name, "", "", "", "", "", "", "", Text(f"down: {node.error}", style="red"))
            continue
        backend = next((dict(labels).get("backend", "") for labels in cur.get("raon_server_info", {})), "")
        errors = sum(total(cur, n) for n in _ERRORS)
        err_rate = sum(node.rate(n) or 0.0 for n in _ERRORS) if node.prev is not None else None
        lag = node.lag_p99()
        draining = total(cur, "raon_draining") > 0
        state = Text("draining", style="yellow") if draining else Text("serving", style="green")
        if total(cur, "raon_snapshot_stale") > 0:
            state = Text("loop not answering", style="red")
        msgs = f"{_num(node.rate('raon_frames_received_total'))} / {_num(node.rate('raon_frames_sent_total'))}"
        volume = (
            f"{_num(node.rate('raon_received_bytes_total'), 'B')} / {_num(node.rate('raon_sent_bytes_total'), 'B')}"
        )
        table.add_row(
            name,
            backend,
            _num(total(cur, "raon_sessions", state="open")),
            msgs,
            volume,
            Text(_ms(lag), style="red" if lag > 0.05 else ""),
            Text(f"{_num(errors)} ({_num(err_rate)})", style="red" if errors else ""),
            _num(total(cur, "raon_connections_refused_total")),
            state,
        )
        for labels, players in cur.get("raon_game_room_players", {}).items():
            rooms.append((int(players), dict(labels).get("room", "?"), name))
    parts: list[Any] = [table]
    if rooms:
        top = Table(title="top rooms", title_justify="left", box=box.SIMPLE_HEAD)
        top.add_column("room")
        top.add_column("players", justify="right")
        top.add_column("node")
        for players, room, name in sorted(rooms, key=lambda r: (-r[0], r[1]))[:10]:
            top.add_row(room, str(players), name)
        parts.append(top)
    return Group(*parts)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m framework top`: a live terminal view of one or more nodes' metrics."""
    parser = argparse.ArgumentParser(prog="python -m framework top", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", action="append", required=True, help="a node's metrics URL (repeat for several nodes)"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes (default 2)")
    parser.add_argument("--timeout", type=float, default=2.0, help="scrape timeout in seconds")
    parser.add_argument(
        "--frames", type=int, default=0, help="stop after this many frames (0: until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    nodes = [Node(url if "://" in url else f"http://{url}") for url in args.url]
    console = Console()
    frames = 0
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                for node in nodes:
                    node.refresh(args.timeout)
                live.update(render(nodes, args.interval), refresh=True)
                frames += 1
                if args.frames and frames >= args.frames:
                    break
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0 if any(node.cur is not None for node in nodes) else 1
