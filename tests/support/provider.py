"""Helpers for tests that drive a provider directly: a completion collector, a pump that runs
`process_completions` until a condition holds, a reader that keeps a receive posted, and Registered-I/O
socket pairs made through a provider."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from framework.io.provider import AsyncIOProvider, CompletionResult, Status

WAIT_S = 10.0  # generous deadline for "this must eventually happen" waits (CPU contention)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a reordered or lost chunk is caught."""
    return bytes((i * 31 + seed + (i >> 8) * 7) & 0xFF for i in range(n))


class StreamReader:
    """Keeps one recv posted on `sock` until `want` bytes (or EOF / an error) arrived."""

    def __init__(self, provider: AsyncIOProvider, sock: socket.socket, want: int, chunk: int = 65536):
        self.provider = provider
        self.sock = sock
        self.want = want
        self.data = bytearray()
        self.buf = bytearray(chunk)
        self.eof = False
        self.error: CompletionResult | None = None
        self._post()

    def _post(self) -> None:
        assert self.provider.recv_async(self.sock, self.buf, self._on_recv) > 0

    def _on_recv(self, result: CompletionResult, _ctx: Any) -> None:
        if result.status != Status.SUCCESS:
            self.error = result
            return
        if result.bytes_transferred == 0:
            self.eof = True
            return
        self.data += self.buf[: result.bytes_transferred]
        if len(self.data) < self.want:
            self._post()

    @property
    def done(self) -> bool:
        return len(self.data) >= self.want or self.eof or self.error is not None


class Collector:
    """A completion callback that records (result, context) pairs."""

    def __init__(self) -> None:
        self.results: list[CompletionResult] = []
        self.contexts: list[Any] = []

    def __call__(self, result: CompletionResult, context: Any) -> None:
        self.results.append(result)
        self.contexts.append(context)

    def __len__(self) -> int:
        return len(self.results)

    def by_id(self, op_id: int) -> CompletionResult:
        for r in self.results:
            if r.operation_id == op_id:
                return r
        raise KeyError(op_id)


def pump(
    provider: AsyncIOProvider,
    until: Callable[[], bool],
    timeout_s: float = WAIT_S,
    max_results: int = 64,
) -> list[CompletionResult]:
    """Run process_completions until `until()` holds; returns every result delivered meanwhile.
    Fails (never hangs) when the condition is not met within the generous deadline."""
    delivered: list[CompletionResult] = []
    results: list[CompletionResult] = []
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"condition not reached; delivered: {delivered[-10:]!r}"
        n = provider.process_completions(50, max_results, results)
        assert n >= 0, f"provider failed: {results[:1]!r}"
        assert n == len(results)
        delivered.extend(results)
    return delivered


def registered_io_pair(
    p: Any, lst: socket.socket, sndbuf: int | None, rcvbuf: int | None, owned: list[socket.socket]
) -> tuple[socket.socket, socket.socket]:
    client = p.create_socket(lst.family)
    owned.append(client)
    if sndbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if rcvbuf is not None:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by the accepted socket
    done = Collector()
    assert p.register_socket(lst) and p.register_socket(client), p.last_error
    accept_id = p.accept_async(lst, done)
    connect_id = p.connect_async(client, lst.getsockname()[:2], done, timeout_ms=int(WAIT_S * 1000))
    pump(p, lambda: len(done) == 2)
    assert done.by_id(connect_id).status == Status.SUCCESS, done.results
    server = done.by_id(accept_id).accepted[0]
    owned.append(server)
    assert p.unregister_socket(client) and p.unregister_socket(lst)  # the test registers what it wants
    for s in (client, server):
        s.setblocking(True)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server
