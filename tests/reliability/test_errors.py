"""Error-statistics promise (docs/RELIABILITY.md, "Error statistics"): a
transient failure of the completion loop (process_completions < 0) is retried with back-off
(3 attempts, 10 ms << attempt) without disturbing sessions; the error rate is tracked and a warning
is logged above 5 %; when the retries are exhausted the server shuts down gracefully instead of
crashing.

Faults are injected with a subclass of each real backend whose process_completions returns -1 on
demand (results[0] describes the error, as the contract says); everything else is the real backend.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from framework.io.errors import ErrorCode
from framework.io.factory import provider_class
from framework.io.provider import AsyncIOProvider, CompletionResult, Status
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    EchoSession,
    ServerThread,
    connect,
    make_settings,
    read_until_closed,
    round_trip,
    wait_for,
)


def faulty_provider(backend: str) -> Any:
    base: type[AsyncIOProvider] = provider_class(backend)

    class FaultInjecting(base):  # type: ignore[misc, valid-type]
        """The real backend, except that process_completions fails when told to."""

        def __init__(self) -> None:
            super().__init__()
            self.fail_next = 0  # fail this many calls in a row (set from the test thread)
            self.fail_every = 0  # and/or every n-th call
            self.calls = 0
            self.injected = 0
            self.lock = threading.Lock()

        def process_completions(self, timeout_ms: int, max_results: int, results: list[CompletionResult]) -> int:
            with self.lock:
                self.calls += 1
                fail = self.fail_next > 0 or (self.fail_every and self.calls % self.fail_every == 0)
                if self.fail_next > 0:
                    self.fail_next -= 1
                if fail:
                    self.injected += 1
            if fail:
                results.clear()
                results.append(
                    CompletionResult(Status.ERROR, 0, ErrorCode.SOCKET_NOT_REGISTERED, 0, "injected fault", None)
                )
                return -1
            return super().process_completions(timeout_ms, max_results, results)

    return FaultInjecting()


def _warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("log_level") in ("warning", "error", "critical", "exception")]


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_transient_completion_loop_failures_are_retried_and_sessions_do_not_notice(backend):
    provider = faulty_provider(backend)
    with capture_logs() as logs:
        st = ServerThread(make_settings(backend), EchoSession, provider)
        try:
            client = connect(st.address)
            round_trip(client, "before")
            for burst in (1, 2, 2, 1):  # fewer than the 3 attempts each time
                provider.fail_next = burst
                wait_for(lambda: provider.fail_next == 0, what="faults consumed")
                round_trip(client, {"after burst": burst})
            assert st.thread.is_alive() and st.error is None
            assert st.reasons == []
            client.close()
        finally:
            st.stop()
    assert provider.injected == 6
    retried = [e for e in _warnings(logs) if "retr" in str(e.get("event", "")).lower()]
    assert len(retried) >= 6, f"each retry is logged as a warning: {_warnings(logs)}"


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_an_error_rate_above_five_percent_logs_a_warning(backend):
    provider = faulty_provider(backend)
    with capture_logs() as logs:
        st = ServerThread(make_settings(backend, io={"poll_timeout_ms": 5}), EchoSession, provider)
        try:
            client = connect(st.address)
            provider.fail_every = 5  # 20 % of the loop's calls fail once, then succeed on retry
            for i in range(300):
                round_trip(client, i)
            wait_for(lambda: any("error rate" in str(e.get("event", "")).lower() for e in _warnings(logs)),
                     what="high error rate warning")
            provider.fail_every = 0
            round_trip(client, "fine")
            client.close()
        finally:
            st.stop()


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_an_unrecoverable_provider_error_shuts_the_server_down_gracefully(backend):
    provider = faulty_provider(backend)
    with capture_logs() as logs:
        st = ServerThread(make_settings(backend), EchoSession, provider)
        client = connect(st.address)
        round_trip(client, "before")
        provider.fail_next = 10  # more than the retries: the loop must give up
        # Graceful: the session is closed (not left hanging), the listener refuses newcomers and
        # the loop ends without raising.
        assert read_until_closed(client) == b""
        client.close()
        st.thread.join(10)
        assert not st.thread.is_alive(), "the loop kept running on a failed provider"
        assert st.error is None, f"the loop crashed: {st.error!r}"
        with pytest.raises(OSError):
            socket.create_connection(st.address, timeout=2).close()
        assert st.reasons and all(r for _, r in st.reasons)
        st.stop()
    assert any(e.get("log_level") in ("error", "critical", "exception") for e in logs)
