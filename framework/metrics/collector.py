"""The server's metric families, built at scrape time from a snapshot of the loop's counters.

`build_snapshot` runs in the loop thread (plain reads of `SessionHost.stats`, the provider's
statistics and one pass over the sessions for their states and queued output). `HostCollector`
turns a snapshot into Prometheus families in the scraping thread. Label sets are fixed (close
codes, refusal reasons, session states, provider statuses) or bounded by the error names the OS can
produce; nothing is labelled per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from framework.session.reasons import CLOSE_CODES

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TURN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SESSION_STATES = ("connecting", "open", "closing")


def build_snapshot(server: Any) -> dict[str, Any]:
    """The server's counters and gauges now (loop thread, or no loop running)."""
    states = [0, 0, 0]
    queued = 0
    for session in server.registry:
        state = session._state
        if state < 3:
            states[state] += 1
        queued += session._out_bytes + session._inflight
    provider = server.provider
    ps = provider.get_statistics() if provider is not None and provider.initialized else None
    return {
        "stats": server.stats,
        "provider": ps,
        "sessions_by_state": dict(zip(SESSION_STATES, states, strict=True)),
        "send_queue_bytes": queued,
        "memory_budget_bytes": server.settings.server.memory_budget_bytes,
        "max_connections": server.settings.io.max_connections,
    }


def _counter(name: str, doc: str, value: float | None = None, labels: tuple[str, ...] = ()) -> Any:
    family = CounterMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float | None = None, labels: tuple[str, ...] = ()) -> Any:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric([], value)
    return family


class HostCollector(Collector):
    """Every `raon_*` family except the two loop histograms (prometheus_client Histograms that
    the probe feeds directly)."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        """The families without values: the registry checks names for duplicates at registration
        without running a scrape."""
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        # Registered first, so each scrape starts with a new snapshot (the app's collectors share it).
        return self._families(self.metrics.snapshot(max_age_s=0.0))

    def _families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        st: dict[str, Any] = snap.get("stats") or {}
        has = bool(st)

        def v(key: str) -> float | None:
            return st.get(key, 0) if has else None

        info = GaugeMetricFamily(
            "raon_server_info",
            "Constant 1, labelled with the I/O backend in use and the process id (one per worker).",
            labels=["backend", "pid"],
        )
        if has:
            info.add_metric([str(st.get("backend") or "none"), str(os.getpid())], 1)
        yield info
        yield _gauge(
            "raon_draining",
            "1 while a graceful shutdown drains the sessions (then /readyz is 503), else 0.",
            (1 if st.get("draining") else 0) if has else None,
        )
        yield _gauge(
            "raon_snapshot_stale",
            "1 when the loop did not answer the scrape within 1 s and these figures are the previous "
            "scrape's.",
            (1 if snap.get("stale") else 0) if snap else None,
        )
        sessions = _gauge(
            "raon_sessions",
            "Sessions by state: connecting (outgoing), open, closing (flushing before the close).",
            labels=("state",),
        )
        for state, n in (snap.get("sessions_by_state") or {}).items():
            sessions.add_metric([state], n)
        yield sessions
        yield _gauge(
            "raon_max_connections", "io.max_connections: sessions a worker holds at most.",
            snap.get("max_connections"),
        )  # fmt: skip
        yield _counter("raon_sessions_opened", "Sessions opened (accepted or connected).", v("sessions_opened"))
        closes = _counter(
            "raon_sessions_closed",
            "Sessions closed, by reason code (docs/METRICS.md lists the codes).",
            labels=("reason",),
        )
        if has:
            seen = st.get("closes", {})
            for code in CLOSE_CODES:
                closes.add_metric([code], seen.get(code, 0))
        yield closes
        yield _counter(
            "raon_connections_accepted",
            "Connections accepted from the listeners (refused ones included).",
            v("accepted"),
        )
        refused = _counter(
            "raon_connections_refused",
            "Accepted connections closed at once, by reason: max_connections, per_address, "
            "shutting_down, register_failed.",
            labels=("reason",),
        )
        for reason, n in (st.get("refused_by_reason") or {}).items():
            refused.add_metric([reason], n)
        yield refused
        yield _counter("raon_accept_errors", "accept() failures (the listener keeps going).", v("accept_errors"))
        yield _counter("raon_frames_received", "Frames received and decoded (heartbeats included).", v("frames_in"))
        yield _counter("raon_frames_sent", "Frames queued to peers (broadcast members each count).", v("frames_out"))
        yield _counter("raon_received_bytes", "Bytes received from peers.", v("bytes_in"))
        yield _counter("raon_sent_bytes", "Bytes handed to the kernel for peers.", v("bytes_out"))
        yield _gauge(
            "raon_send_queue_bytes",
            "Output queued for peers and not yet written (as of each session's last write).",
            snap.get("send_queue_bytes"),
        )
        yield _gauge(
            "raon_input_buffered_bytes",
            "Input received and not yet decoded: partial frames and input held by read budgets.",
            v("input_buffered_bytes"),
        )
        yield _gauge(
            "raon_memory_budget_bytes",
            "server.memory_budget_bytes (0 = none); compare with raon_input_buffered_bytes + "
            "raon_send_queue_bytes.",
            snap.get("memory_budget_bytes"),
        )
        yield _counter(
            "raon_memory_sheds", "Sessions closed to keep the memory budget.", v("memory_sheds")
        )
        yield _counter("raon_read_pauses", "Times a session's reading was paused (flow control).", v("read_pauses"))
        yield _gauge(
            "raon_sessions_with_held_input",
            "Sessions whose read budget ran out with frames left (served next turns).",
            v("sessions_with_held_input"),
        )
        yield _counter("raon_handler_errors", "Exceptions raised by application handlers.", v("handler_errors"))
        yield _counter(
            "raon_protocol_errors", "Sessions closed for an invalid frame or payload.", v("protocol_errors")
        )
        yield _counter(
            "raon_rate_limited",
            "Requests refused or sessions closed by a rate limit (SessionHost.stats 'rate_limited').",
            v("rate_limited"),
        )
        io_errors = _counter(
            "raon_io_errors",
            "Sessions ended by a failed I/O operation, by error (ErrorCode name or errno name).",
            labels=("code",),
        )
        for code, n in sorted((st.get("io_errors") or {}).items()):
            io_errors.add_metric([code], n)
        yield io_errors
        yield _counter(
            "raon_stale_completions",
            "Completions that arrived for an already closed session (dropped safely).",
            v("stale_completions"),
        )
        yield _counter(
            "raon_recv_deferred",
            "Receives deferred because the receive-buffer pool was exhausted.",
            v("recv_deferred"),
        )
        ps = snap.get("provider")
        completions = _counter(
            "raon_provider_completions",
            "Provider operations completed, by status: success, failed, cancelled.",
            labels=("status",),
        )
        if ps is not None:
            completions.add_metric(["success"], ps.completed_operations)
            completions.add_metric(["failed"], ps.failed_operations)
            completions.add_metric(["cancelled"], ps.backend_specific.get("cancelled_operations", 0))
        yield completions
        yield _gauge(
            "raon_provider_operations_in_flight",
            "Provider operations posted and not completed (includes the accepts kept posted per listener).",
            ps.pending_operations if ps is not None else None,
        )
        yield _gauge(
            "raon_provider_registered_sockets",
            "Sockets registered with the provider (listeners included).",
            ps.active_connections if ps is not None else None,
        )
        provided = _gauge(
            "raon_provider_buffers",
            "Receive memory the provider picks on arrival (io_uring's buffer ring): buffers in_use "
            "(lent to data not yet consumed) and total (the ring's size; absent elsewhere).",
            labels=("state",),
        )
        if ps is not None:
            specific = ps.backend_specific
            provided.add_metric(["in_use"], specific.get("provided_buffers_in_use", 0))
            if specific.get("provided_buffer_count"):
                provided.add_metric(["total"], specific["provided_buffer_count"])
        yield provided
        pool = _gauge(
            "raon_buffer_pool_buffers",
            "Receive-buffer pool: buffers in_use (lent to receives) and capacity (allocated).",
            labels=("state",),
        )
        buffers = st.get("buffers")
        if buffers:
            pool.add_metric(["in_use"], buffers.get("in_use", 0))
            pool.add_metric(["capacity"], buffers.get("capacity", 0) + buffers.get("small_capacity", 0))
        yield pool
        yield _gauge(
            "raon_buffer_pool_max_buffers",
            "buffers.max_buffers: the pool's upper bound.",
            buffers.get("max_buffers", 0) if buffers else None,
        )
