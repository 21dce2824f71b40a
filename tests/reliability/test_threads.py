"""Thread promise: jobs handed to the loop from other threads — through Server.call_soon_threadsafe
and through the provider's post() — each run exactly once, on the loop thread, while the loop
serves traffic."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import WAIT_S, connect, round_trip, serving, wait_for

THREADS = 8
JOBS = 10_000


@pytest.mark.slow
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_jobs_posted_from_eight_threads_run_exactly_once_on_the_loop_thread(backend):
    with serving(backend) as st:
        client = connect(st.address)
        round_trip(client, "warm")
        wait_for(lambda: st.loop_thread_id != 0)
        loop_thread = st.loop_thread_id
        runs = bytearray(THREADS * JOBS)  # a byte per job: how many times it ran
        wrong_thread: list[int] = []
        not_posted: list[int] = []
        provider = st.server.provider

        def job(index: int) -> None:
            runs[index] += 1
            if threading.get_ident() != loop_thread:
                wrong_thread.append(index)

        def completion(_result: Any, index: int) -> None:
            job(index)

        start = threading.Barrier(THREADS + 1)

        def producer(t: int) -> None:
            start.wait()
            base = t * JOBS
            for i in range(base, base + JOBS):
                if i % 2:
                    st.server.call_soon_threadsafe(partial(job, i))
                elif not provider.post(completion, i):
                    not_posted.append(i)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        start.wait()
        trips = 0
        while any(t.is_alive() for t in threads):  # traffic keeps flowing while the jobs arrive
            round_trip(client, trips)
            trips += 1
        for t in threads:
            t.join(WAIT_S)
        assert not not_posted
        wait_for(lambda: sum(runs) >= THREADS * JOBS, timeout=3 * WAIT_S, what="every job ran")
        round_trip(client, "after")
        st.on_loop(lambda: None)  # one more loop turn: a job running twice would show now
        assert runs.count(1) == THREADS * JOBS, f"{runs.count(0)} never ran, {THREADS * JOBS - runs.count(0) - runs.count(1)} ran twice"
        assert not wrong_thread
        assert trips > 0
        client.close()
