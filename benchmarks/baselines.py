"""asyncio and uvloop baseline servers doing the same work as `examples.echo`.

    python -m benchmarks.baselines --loop asyncio|uvloop --port P [--host H] [--broadcast-hz HZ --payload N]

A fair baseline is written the way a careful asyncio developer would write it: the Protocol API (no
streams), one `transport.write` per `data_received` carrying every echoed frame, u32 big-endian
frame parsing without copying the receive buffer per frame, and each payload handed to a per-message
handler as `bytes` (the framework's raw codec does the same), so both sides do the same per-message
work. Broadcast encodes the frame once per tick and writes it to every transport. Listen backlog
1024 like the framework's default; asyncio and uvloop both set TCP_NODELAY on accepted sockets.

Prints "ready <port>" on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
import time

_HDR = struct.Struct(">I")
_STAMP = struct.Struct("<Q")
MAX_FRAME = 1 << 20


class FrameProtocol(asyncio.Protocol):
    """Raw u32-BE framed connection: every frame's payload goes to `on_message`."""

    __slots__ = ("_buf", "_members", "_out", "transport")

    def __init__(self, members: set[FrameProtocol]) -> None:
        self._members = members
        self._buf = bytearray()
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._members.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._members.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:  # a partial frame is pending: join once, then parse immutable bytes
            buf += data
            data = bytes(buf)
            buf.clear()
        end = len(data)
        off = 0
        unpack = _HDR.unpack_from
        on_message = self.on_message
        while end - off >= 4:
            (n,) = unpack(data, off)
            if n > MAX_FRAME:
                self.transport.close()  # type: ignore[union-attr]
                return
            stop = off + 4 + n
            if stop > end:
                break
            on_message(data[off + 4 : stop])
            off = stop
        if off < end:
            buf += data[off:]
        if self._out:
            self.transport.write(b"".join(self._out))  # type: ignore[union-attr]
            self._out.clear()

    def send_frame(self, payload: bytes) -> None:
        out = self._out
        out.append(_HDR.pack(len(payload)))
        out.append(payload)

    def on_message(self, payload: bytes) -> None:
        self.send_frame(payload)  # echo


def _broadcast_ticker(
    loop: asyncio.AbstractEventLoop, members: set[FrameProtocol], hz: float, payload_size: int
) -> None:
    """Every tick, one frame stamped with CLOCK_MONOTONIC ns, encoded once, written to all."""
    period = 1.0 / hz
    filler = b"x" * (payload_size - _STAMP.size)
    header = _HDR.pack(payload_size)
    monotonic_ns = time.monotonic_ns
    next_at = loop.time() + period

    def tick() -> None:
        nonlocal next_at
        # Same policy as the framework's call_every: the next tick follows the schedule, and only a
        # tick already missed when this one starts is skipped (no bursts, no idle gap after a late tick).
        now = loop.time()
        next_at += period
        if next_at <= now:
            next_at = now + period
        loop.call_at(next_at, tick)
        frame = header + _STAMP.pack(monotonic_ns()) + filler
        for proto in list(members):  # a failed write may end a connection: iterate a snapshot
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                transport.write(frame)

    loop.call_at(next_at, tick)


async def serve(host: str, port: int, broadcast_hz: float, payload: int) -> None:
    loop = asyncio.get_running_loop()
    members: set[FrameProtocol] = set()
    server = await loop.create_server(
        lambda: FrameProtocol(members), host, port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if broadcast_hz > 0:
        _broadcast_ticker(loop, members, broadcast_hz, payload)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {bound}", flush=True)
    await stop.wait()
    server.close()
    for proto in list(members):
        if proto.transport is not None:
            proto.transport.abort()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, required=True, help="0 picks a free port (printed on the ready line)"
    )
    parser.add_argument(
        "--broadcast-hz", type=float, default=0.0, help="broadcast ticks per second (0: echo only)"
    )
    parser.add_argument("--payload", type=int, default=512, help="broadcast payload bytes (>= 8)")
    args = parser.parse_args(argv)
    if args.broadcast_hz > 0 and args.payload < _STAMP.size:
        parser.error("--payload must be at least 8 bytes (it carries the time stamp)")
    coro = serve(args.host, args.port, args.broadcast_hz, args.payload)
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
