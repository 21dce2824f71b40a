"""A blocking game client over one plain socket (tests, the locust load test, scripts).

Plain blocking sockets on purpose: under locust, gevent monkeypatches `socket`, so every blocking call
here yields to the other simulated users; no asyncio loop is involved. Framing and msgpack decoding
reuse the framework's sans-IO codec, with the same limits a server applies.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from framework.session.codec import FrameDecoder, MsgpackPayloadDecoder, encode_message

MAX_FRAME_SIZE = 1 << 20


def new_decoder(max_frame_size: int = MAX_FRAME_SIZE) -> FrameDecoder:
    limits = 1 << 16
    return FrameDecoder(
        max_frame_size,
        MsgpackPayloadDecoder(
            max_frame_size=max_frame_size,
            max_str_len=max_frame_size,
            max_bin_len=max_frame_size,
            max_array_len=limits,
            max_map_len=limits,
            max_ext_len=max_frame_size,
        ),
    )


class ServerError(Exception):
    """The server answered a request with an `error` message."""

    def __init__(self, msg: dict[str, Any]) -> None:
        super().__init__(f"{msg.get('code')}: {msg.get('message')}")
        self.code = msg.get("code")
        self.msg = msg


class GameClient:
    """One player's connection. `on_message` (optional) sees every message received, including
    those skipped while waiting for a particular one (snapshots, chat)."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.on_message = on_message
        self._decoder = new_decoder()
        self._inbox: deque[Any] = deque()
        self._batch: list[Any] = []
        self._rids = itertools.count(1)
        self.bytes_in = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> GameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: dict[str, Any]) -> int:
        frame = encode_message(msg)
        self.sock.sendall(frame)
        return len(frame)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; `TimeoutError` when none arrives in time, `ConnectionError` on close."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from the server in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError as exc:  # socket.timeout is TimeoutError
                raise TimeoutError("no message from the server in time") from exc
            if not data:
                self.closed = True
                raise ConnectionError("the server closed the connection")
            self.bytes_in += len(data)
            batch = self._batch
            batch.clear()
            self._decoder.feed(data, batch)
            self._inbox.extend(batch)
        msg = self._inbox.popleft()
        if self.on_message is not None:
            self.on_message(msg)
        return msg

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float | None = None
    ) -> dict[str, Any]:
        """Receive until a message satisfies `predicate`; earlier messages are dropped."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if isinstance(msg, dict) and predicate(msg):
                return msg

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send `msg` with a fresh "rid" and return the reply carrying it; raises `ServerError` when
        the reply is an error."""
        rid = next(self._rids)
        self.send({**msg, "rid": rid})
        reply = self.wait_for(lambda m: m.get("rid") == rid, timeout)
        if reply.get("type") == "error":
            raise ServerError(reply)
        return reply

    # Conveniences for the common requests.
    def hello(self, name: str) -> dict[str, Any]:
        return self.request({"type": "hello", "name": name})

    def join(self, room: str, create: bool = True) -> dict[str, Any]:
        return self.request({"type": "join", "room": room, "create": create})
