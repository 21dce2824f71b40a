"""Metrics, health and readiness (framework/metrics): a real server on loopback, scraped over HTTP
while real clients talk to it; `top` in a pseudo-terminal; the Grafana dashboard and docs/METRICS.md
checked against the registry."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest

from framework.metrics.docs import example_server, markdown, sample_names
from framework.metrics.top import Node, parse, quantile, render
from framework.session import Session
from framework.session.reasons import CLOSE_CODES, close_code
from framework.session.server import worker_settings
from tests.support.backends import PLATFORM_BACKENDS, SESSION_BACKENDS
from tests.support.hostile import rst_close
from tests.support.session import WAIT_S, FrameClient, frame, make_settings, running_server, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(server: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    host, port = server.metrics.address
    status, text = get(f"http://{host}:{port}/metrics")
    assert status == 200, text
    return parse(text)


def value(samples: Any, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def closes(server: Any, reason: str) -> float:
    return value(scrape(server), "raon_sessions_closed_total", reason=reason)


class Scripted(Session):
    """Echoes; {"close": r} closes with reason r; {"raise": 1} raises; {"blob": n, "times": k}
    queues k frames of n bytes."""

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, dict):
            if "close" in msg:
                self.close(msg["close"])
                return
            if "raise" in msg:
                raise ValueError("handler failed on purpose")
            if "blob" in msg:
                for _ in range(msg["times"]):
                    self.send_frame(b"x" * msg["blob"])
                return
        self.send(msg)


def metrics_settings(backend: str, **sections: Any) -> Any:
    return make_settings(backend, metrics={"listen": "127.0.0.1:0", "health_stall_s": 1.0}, **sections)


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_counters_follow_the_traffic_and_every_close_path(backend: str) -> None:
    with running_server(metrics_settings(backend), Scripted) as server:
        before = scrape(server)
        assert value(before, "raon_frames_received_total") == 0
        assert set(dict(k)["reason"] for k in before["raon_sessions_closed_total"]) == set(CLOSE_CODES)

        client = FrameClient(server.addresses[0])
        sent = 25
        payload_bytes = 0
        for i in range(sent):
            client.send({"i": i, "pad": "p" * i})
            payload_bytes += len(frame(msgpack.packb({"i": i, "pad": "p" * i})))
        for i in range(sent):
            assert client.recv()["i"] == i
        wait_for(lambda: value(scrape(server), "raon_sessions", state="open") == 1, what="one open session")
        after = scrape(server)
        assert value(after, "raon_frames_received_total") == sent  # exactly the frames this test sent
        assert value(after, "raon_frames_sent_total") == sent
        assert value(after, "raon_received_bytes_total") == payload_bytes
        assert value(after, "raon_sent_bytes_total") == payload_bytes
        assert value(after, "raon_connections_accepted_total") == 1
        assert value(after, "raon_sessions_opened_total") == 1
        assert value(after, "raon_server_info", backend=server.provider.name, pid=str(os.getpid())) == 1

        # Each close path moves its own code, once.
        client.close()  # a clean client exit: EOF
        wait_for(lambda: closes(server, "peer_closed") == 1, what="peer_closed")

        app = FrameClient(server.addresses[0])
        app.send({"close": "kicked by the referee"})
        assert app.closed_by_peer()
        wait_for(lambda: closes(server, "app") == 1, what="app close")

        failing = FrameClient(server.addresses[0])
        failing.send({"raise": 1})
        assert failing.closed_by_peer()
        wait_for(lambda: closes(server, "handler_error") == 1, what="handler_error")
        assert value(scrape(server), "raon_handler_errors_total") == 1

        bad = FrameClient(server.addresses[0])
        bad.send_raw(frame(b"\xc1"))
        assert bad.closed_by_peer()
        wait_for(lambda: closes(server, "protocol_error") == 1, what="protocol_error")
        assert value(scrape(server), "raon_protocol_errors_total") == 1

        reset = FrameClient(server.addresses[0])
        reset.send({"i": 0})
        assert reset.recv() == {"i": 0}
        rst_close(reset.sock)
        wait_for(lambda: closes(server, "peer_reset") == 1, what="peer_reset")
        samples = scrape(server)
        assert value(samples, "raon_io_errors_total", code="CONNECTION_RESET") == 1
        assert value(samples, "raon_sessions_opened_total") == 5
        totals = {dict(k)["reason"]: v for k, v in samples["raon_sessions_closed_total"].items()}
        assert sum(totals.values()) == 5 and totals["peer_closed"] == 1
        last = FrameClient(server.addresses[0])
        wait_for(lambda: value(scrape(server), "raon_sessions", state="open") == 1, what="last session")
    assert last.closed_by_peer()
    assert server.stats["closes"]["server_shutdown"] == 1  # the shutdown path (the endpoint is gone)


def test_idle_timeout_and_max_connections_refusal_are_counted() -> None:
    settings = metrics_settings(PLATFORM_BACKENDS[0], session={"idle_timeout_s": 0.3}, io={"max_connections": 1})
    with running_server(settings, Scripted) as server:
        first = FrameClient(server.addresses[0])
        # A session that has spoken is never evicted for a newcomer (slot reclaim takes only
        # unauthenticated ones), so the second connection is refused.
        first.send("hello")
        wait_for(lambda: value(scrape(server), "raon_frames_received_total") >= 1, what="first message")
        wait_for(lambda: value(scrape(server), "raon_sessions", state="open") == 1, what="first session")
        second = FrameClient(server.addresses[0])  # over max_connections: closed at once
        assert second.closed_by_peer()
        wait_for(
            lambda: value(scrape(server), "raon_connections_refused_total", reason="max_connections") == 1,
            what="refusal",
        )
        assert first.closed_by_peer()  # idle for 0.3 s
        wait_for(lambda: closes(server, "idle_timeout") == 1, what="idle_timeout")
        assert value(scrape(server), "raon_connections_accepted_total") == 2


def test_readyz_flips_when_the_drain_starts_and_healthz_stays_up() -> None:
    settings = metrics_settings(
        PLATFORM_BACKENDS[0],
        shutdown={"drain_timeout_s": 10.0},
        session={"write_high_water": 1 << 20, "write_low_water": 1 << 16, "write_hard_cap": 64 << 20},
    )
    server_box: list[Any] = []
    with running_server(settings, Scripted) as server:
        server_box.append(server)
        host, port = server.metrics.address
        base = f"http://{host}:{port}"
        assert get(base + "/readyz") == (200, "ready\n")
        assert get(base + "/healthz")[0] == 200
        assert value(scrape(server), "raon_draining") == 0
        # A peer that reads nothing while 14 MB wait for it holds the drain open (until it closes).
        stuck = FrameClient(server.addresses[0], rcvbuf=4096)
        stuck.send({"blob": 900_000, "times": 16})
        wait_for(lambda: value(scrape(server), "raon_send_queue_bytes") > 0, what="queued output")
        server.shutdown()
        wait_for(lambda: get(base + "/readyz")[0] == 503, what="/readyz 503")
        status, why = get(base + "/readyz")
        assert (status, why) == (503, "draining: shutdown started\n")
        assert get(base + "/healthz")[0] == 200  # draining, not dead: the loop still turns
        samples = scrape(server)
        assert value(samples, "raon_draining") == 1
        assert value(samples, "raon_sessions", state="closing") == 1
        stuck.close()  # the drain ends
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=2)  # the endpoint closed with the server


class Blocking(Session):
    def on_message(self, msg: Any) -> None:
        time.sleep(float(msg))  # blocks the loop: exactly what /healthz must notice
        self.send("done")


def test_healthz_is_503_while_a_handler_blocks_the_loop() -> None:
    with running_server(metrics_settings(PLATFORM_BACKENDS[0]), Blocking) as server:
        host, port = server.metrics.address
        url = f"http://{host}:{port}/healthz"
        assert get(url)[0] == 200
        client = FrameClient(server.addresses[0])
        client.send(3.0)
        wait_for(lambda: get(url)[0] == 503, timeout=3.0, what="/healthz 503 during the block")
        assert "has not turned" in get(url)[1]
        # A scrape meanwhile does not hang: it serves the previous figures, marked stale.
        assert value(scrape(server), "raon_snapshot_stale") == 1
        assert client.recv() == "done"
        wait_for(lambda: get(url)[0] == 200, what="/healthz 200 again")
        lag = scrape(server)["raon_loop_lag_seconds_bucket"]
        assert lag[(("le", "1.0"),)] < lag[(("le", "+Inf"),)]  # the 3 s stall is in the histogram


def test_readiness_checks_of_the_application() -> None:
    with running_server(metrics_settings(PLATFORM_BACKENDS[0]), Scripted) as server:
        host, port = server.metrics.address
        redis_up = threading.Event()
        server.metrics.add_readiness_check("redis", redis_up.is_set)
        assert get(f"http://{host}:{port}/readyz") == (503, "check 'redis' failed\n")
        redis_up.set()
        assert get(f"http://{host}:{port}/readyz")[0] == 200
        assert get(f"http://{host}:{port}/nope")[0] == 404


def test_loop_turns_are_timed_only_when_sampled() -> None:
    with running_server(metrics_settings(PLATFORM_BACKENDS[0]), Scripted) as server:
        wait_for(lambda: value(scrape(server), "raon_loop_turn_seconds_count") >= 3, what="timed turns")
        count = value(scrape(server), "raon_loop_turn_seconds_count")
        # About 10 timed turns per second (one per probe), however many turns the loop makes.
        time.sleep(1.0)
        timed = value(scrape(server), "raon_loop_turn_seconds_count") - count
        assert 3 <= timed <= 20, timed


def test_game_metrics_show_rooms_players_and_snapshots() -> None:
    from examples.gameserver.app import GameSession
    from examples.gameserver.client import GameClient

    settings = metrics_settings(PLATFORM_BACKENDS[0], app={"tick_hz": 50})
    with running_server(settings, GameSession) as server:
        clients = [GameClient(*server.addresses[0], timeout=WAIT_S) for _ in range(3)]
        for i, c in enumerate(clients):
            c.hello(f"m{i}")
            c.request({"type": "join", "room": "arena" if i < 2 else "lobby", "create": True})
        wait_for(lambda: value(scrape(server), "raon_game_tick_seconds_count") > 0, what="a timed tick")
        samples = scrape(server)
        assert value(samples, "raon_game_players") == 3
        assert value(samples, "raon_game_rooms") == 2
        assert value(samples, "raon_game_room_players", room="arena") == 2
        assert value(samples, "raon_game_room_players", room="lobby") == 1
        assert value(samples, "raon_game_events_total", kind="joins") == 3
        assert value(samples, "raon_game_snapshot_bytes_total") > 0
        for c in clients:
            c.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers: N forks")
def test_each_worker_serves_its_own_endpoint(tmp_path: Path) -> None:
    base = _two_free_ports()
    config = tmp_path / "two.yaml"
    config.write_text(
        "server:\n  hosts: [127.0.0.1]\n  port: 0\n  workers: 2\n"
        f"metrics:\n  listen: 127.0.0.1:{base}\nstats:\n  interval_s: 0\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "serve", "--app", "examples.echo:EchoSession", "--config", str(config)],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pids = set()
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda url=url: _answers(url), what=f"worker endpoint {port}")
            pids.add(_answers(url))
        assert len(pids) == 2  # two processes, one endpoint each
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err[-2000:]
    assert worker_settings(load_two(config), 1).metrics.listen == f"127.0.0.1:{base + 1}"


def _two_free_ports() -> int:
    """A port p with p and p + 1 both free on 127.0.0.1 (worker i serves on base + i)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            base = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two consecutive free loopback ports")


def load_two(path: Path) -> Any:
    from framework.config import load_settings

    return load_settings(path, env={})


def _answers(url: str) -> int:
    """The pid of the process serving `url` (raon_server_info's label), 0 while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0
    match = re.search(r'^raon_server_info\{.*pid="(\d+)"', text, re.M)
    return int(match.group(1)) if match else 0


def test_worker_ports_count_up_from_the_configured_one() -> None:
    settings = make_settings(PLATFORM_BACKENDS[0], metrics={"listen": "[::1]:9100"})
    assert [worker_settings(settings, i).metrics.listen for i in range(3)] == [
        "[::1]:9100",
        "[::1]:9101",
        "[::1]:9102",
    ]
    any_port = make_settings(PLATFORM_BACKENDS[0], metrics={"listen": "127.0.0.1:0"})
    assert worker_settings(any_port, 5).metrics.listen == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("peer closed", ("peer_closed", None)),
        ("connection reset", ("peer_reset", "CONNECTION_RESET")),
        ("send error: EPIPE", ("peer_reset", "EPIPE")),
        ("stream error: ETIMEDOUT", ("io_error", "ETIMEDOUT")),
        ("recv timeout", ("io_error", "TIMEOUT")),
        ("protocol error: frame of 9999999 bytes exceeds max_frame_size", ("protocol_error", None)),
        ("memory budget exceeded: large frame refused", ("memory_budget", None)),
        ("handler error in on_message", ("handler_error", None)),
        ("connect failed: connection refused", ("connect_failed", "CONNECTION_REFUSED")),
        ("kicked by the referee", ("app", None)),
    ],
)
def test_close_reasons_map_to_a_fixed_set_of_codes(reason: str, code: tuple[str, Any]) -> None:
    assert close_code(reason) == code
    assert close_code(reason)[0] in CLOSE_CODES


# ------------------------------------------------------------------------------------------ top
@pytest.mark.skipif(sys.platform == "win32", reason="pexpect.spawn needs a POSIX pseudo-terminal")
def test_top_renders_a_frame_in_a_pseudo_terminal() -> None:
    import pexpect  # here: it imports `resource`, which a Windows collection must not need

    from examples.gameserver.app import GameSession
    from examples.gameserver.client import GameClient

    with running_server(metrics_settings(PLATFORM_BACKENDS[0]), GameSession) as server:
        clients = [GameClient(*server.addresses[0], timeout=WAIT_S) for _ in range(2)]
        for i, c in enumerate(clients):
            c.hello(f"t{i}")
            c.request({"type": "join", "room": "toproom", "create": True})
        host, port = server.metrics.address
        child = pexpect.spawn(
            sys.executable,
            ["-m", "framework", "top", "--url", f"http://{host}:{port}/metrics", "--interval", "0.3"],
            cwd=str(ROOT), env={**ENV, "COLUMNS": "170", "LINES": "40", "TERM": "xterm"},
            dimensions=(40, 170), encoding="utf-8", timeout=WAIT_S,
        )  # fmt: skip
        try:
            child.expect("raon top · 1 node")
            child.expect(r"msgs/s in/out")
            child.expect(rf"127\.0\.0\.1:{port}")
            child.expect("serving")
            child.expect(r"toproom\s+2\s")  # the busiest room and its players
            child.expect("raon top · 1 node")  # it refreshes
            child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
        for c in clients:
            c.close()


def test_top_shows_a_node_that_does_not_answer() -> None:
    node = Node("http://127.0.0.1:9/metrics")
    node.refresh(0.5)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render([node], 1.0))
    assert "down:" in console.export_text()


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 0.9)
    assert quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) != quantile(0.99, buckets)  # NaN when empty


# ------------------------------------------------------------------------------------ docs, grafana
def test_metrics_doc_is_generated_from_the_registry() -> None:
    path = ROOT / "docs" / "METRICS.md"
    assert path.read_text(encoding="utf-8") == markdown(), (
        "docs/METRICS.md is stale: python -m framework.metrics --markdown > docs/METRICS.md"
    )


def test_grafana_dashboard_names_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "raon-server.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    known = sample_names(example_server())
    used = {name for expr in exprs for name in re.findall(r"\braon_[a-z0-9_]+", expr)}
    assert used and not used - known, f"unknown metrics in the dashboard: {sorted(used - known)}"
    families = {re.sub(r"_(bucket|total)$", "", n) for n in used}
    assert {"raon_sessions", "raon_loop_lag_seconds", "raon_game_rooms"} <= families


def test_metric_names_follow_prometheus_conventions() -> None:
    from framework.metrics.docs import families

    for name, kind, doc, labels in families(example_server()):
        if name.startswith("process_"):
            continue  # prometheus_client's standard process metrics
        assert re.fullmatch(r"raon_[a-z0-9_]+", name), name
        assert doc, name
        if kind == "counter":
            assert name.endswith("_total"), name
        if "bytes" in name and kind != "counter":
            assert name.endswith("_bytes"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not {"session", "session_id", "peer"} & set(labels), name  # bounded label sets


def test_a_metrics_port_in_use_fails_the_start_and_says_which_setting() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    from framework.session.server import Server

    server = Server(make_settings(PLATFORM_BACKENDS[0], metrics={"listen": f"127.0.0.1:{port}"}), Scripted)
    try:
        with pytest.raises(OSError, match=rf"metrics.listen 127.0.0.1:{port}: .*in use"):
            server.start()
    finally:
        server._close_listeners()
        server._close_provider()
        taken.close()
