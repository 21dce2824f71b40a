"""Echo and broadcast server on this framework, the subject of the benchmarks (benchmarks/README.md).

`EchoSession` (raw codec) sends every received frame straight back; `BroadcastSession` also joins one
group, to which a timer sends one time-stamped frame per tick (encoded once for all members).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from framework.session.session import Session

BROADCAST_GROUP = "broadcast"
_STAMP = struct.Struct("<Q")


class EchoSession(Session):
    """Sends every received frame back unchanged."""

    codec = "raw"

    def on_message(self, msg: bytes) -> None:
        self.send_frame(msg)


class BroadcastSession(EchoSession):
    """An echo session that also receives every broadcast tick."""

    def on_connected(self) -> None:
        server = self.server
        if server is not None:
            server.registry.group(BROADCAST_GROUP).add(self)  # members leave on close by themselves


def start_broadcast(server: Any, hz: float, payload_size: int) -> Any:
    """Every 1/hz s, send one frame whose payload starts with the 8-byte little-endian
    CLOCK_MONOTONIC ns time to every member of the broadcast group. Returns the timer."""
    if payload_size < _STAMP.size:
        raise ValueError(f"payload must be at least {_STAMP.size} bytes (it carries the time stamp)")
    group = server.registry.group(BROADCAST_GROUP)
    filler = b"x" * (payload_size - _STAMP.size)
    pack = _STAMP.pack
    monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux, the clock the load client reads

    def tick() -> None:
        group.broadcast_frame(pack(monotonic_ns()) + filler)

    return server.call_every(1.0 / hz, tick)
