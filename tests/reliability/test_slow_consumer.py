"""Slow-consumer promise: a client that never reads cannot make the server queue more than
write_hard_cap (+ the one frame that crosses it) for its session; it is closed with reason
"slow consumer", and other sessions continue."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    EchoSession,
    closing_all,
    connect,
    msg_frame,
    read_until_closed,
    round_trip,
    serving,
    wait_for,
)

HIGH = 64 * 1024
LOW = 16 * 1024
CAP = 256 * 1024
CHUNK = 16 * 1024


class Producer(EchoSession):
    """On "flood", keeps producing CHUNK-sized frames every loop turn, ignoring on_pause_writing
    (the worst producer an application can write), and records the queue peak it ever observed."""

    peak_before_send = 0
    paused_seen = False
    max_frame = 0

    def on_message(self, msg: Any) -> None:
        if msg == "flood":
            self._timer = self.server.call_every(0.001, self._produce)
        else:
            self.send(msg)

    def on_pause_writing(self) -> None:
        Producer.paused_seen = True

    def _produce(self) -> None:
        for _ in range(8):
            if self.closed:
                self._timer.cancel()
                return
            # Before this send the queue is within the cap, else the session was already closed.
            Producer.peak_before_send = max(Producer.peak_before_send, self.queued_bytes)
            frame = b"z" * CHUNK
            Producer.max_frame = max(Producer.max_frame, len(frame) + 4)
            self.send_frame(frame)


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_a_client_that_never_reads_is_closed_as_slow_consumer_within_the_cap(backend):
    Producer.peak_before_send = 0
    Producer.paused_seen = False
    with serving(
        backend,
        Producer,
        session={"write_high_water": HIGH, "write_low_water": LOW, "write_hard_cap": CAP, "codec": "msgpack"},
    ) as st, closing_all([]) as socks:
        good = connect(st.address)
        socks.append(good)
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(slow)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the kernel absorbs little
        slow.settimeout(10)
        slow.connect(st.address)
        slow.sendall(msg_frame("flood"))  # ... and never reads
        wait_for(lambda: any(r == "slow consumer" for _, r in st.reasons), what="slow consumer closed")
        sid = [s for s, r in st.reasons if r == "slow consumer"]
        assert len(sid) == 1 and len(st.reasons) == 1
        assert Producer.paused_seen  # on_pause_writing came first
        # The promise: queued bytes never exceeded the cap plus the frame that crossed it.
        assert Producer.peak_before_send <= CAP
        assert Producer.peak_before_send + Producer.max_frame <= CAP + CHUNK + 4
        assert st.server.stats["slow_consumers"] == 1
        round_trip(good, {"others": "continue"})
        assert st.sessions() == 1
        read_until_closed(slow)  # closed with a reset or FIN after whatever the kernel held
