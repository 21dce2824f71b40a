"""A server process for the shutdown tests (run as `python -m tests.support.session_drain_server MODE BACKEND`).

MODE "drain": on "burst" it queues N numbered 1 KB frames and reports `MARK queued`; on_shutdown
adds a "bye" frame. MODE "workers": an echo server with 2 worker processes sharing one port.
Markers go to stderr as `MARK ...` lines; the framework logs to stdout.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from framework import Server, Session
from tests.support.session import make_settings

FRAMES = 4000


def mark(*words: Any) -> None:
    print("MARK", *words, file=sys.stderr, flush=True)


class Burst(Session):
    def on_message(self, msg: Any) -> None:
        if msg == "burst":
            for i in range(FRAMES):
                self.send_frame(i.to_bytes(4, "big") + b"d" * 1020)
            mark("queued", self.queued_bytes)
        else:
            self.send(msg)

    def on_shutdown(self) -> None:
        self.send("bye")


def main() -> int:
    mode, backend = sys.argv[1], sys.argv[2]
    if mode == "drain":
        settings = make_settings(
            backend,
            shutdown={"drain_timeout_s": 20.0},
            session={"write_hard_cap": 64 << 20, "write_high_water": 1 << 20, "write_low_water": 1 << 16},
        )
        server = Server(settings, Burst)
        mark("listening", json.dumps(server.start()[0]))
        return server.run()
    # Reserve an ephemeral port the way the supervisor does for port 0: a bound, not listening,
    # SO_REUSEPORT socket (so a busy machine cannot take the port between choosing and binding).
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    settings = make_settings(backend, server={"port": port, "workers": 2, "reuse_port": True})
    mark("supervising", port)
    return Server(settings, Burst).run()


if __name__ == "__main__":
    sys.exit(main())
