"""Shared fixtures: a provider for every backend that can run here, and loopback socket helpers.

A backend joins the contract suite by registering in `framework.io.factory` and passing its
`probe()` on this machine; the tests never name backends. Backends whose kernel is missing here
also run on stand-in kernels (tests/standin_kernels.py), as "<backend>-mocked_<os>_kernel".
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from framework.io.errors import BackendUnavailable
from framework.io.factory import backend_names, check_available, create_provider, provider_class
from framework.io.provider import AsyncIOProvider, CompletionResult, Status

WAIT_S = 10.0  # generous deadline for "this must eventually happen" waits (CPU contention)

# Tests that stop a server process with SIGTERM (graceful drain) or freeze a peer with SIGSTOP:
# on Windows `send_signal(SIGTERM)` is TerminateProcess and SIGSTOP/SIGKILL do not exist.
needs_posix_signals = pytest.mark.skipif(
    sys.platform == "win32",
    reason="needs POSIX signals (SIGTERM drain, SIGSTOP/SIGKILL); Windows terminates processes outright",
)


def runnable_backends() -> list[str]:
    names = []
    for name in backend_names():
        try:
            check_available(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


RUNNABLE_BACKENDS = runnable_backends()


def standin_backends() -> list[str]:
    """Backends that cannot run here but whose kernel calls tests/standin_kernels.py stands in for
    (built on Linux epoll/eventfd), named so every test id says the kernel is mocked."""
    names = []
    if hasattr(select, "epoll") and hasattr(os, "eventfd"):
        if "kqueue" not in RUNNABLE_BACKENDS:
            names.append("kqueue-mocked_macos_kernel")
        if "iocp" not in RUNNABLE_BACKENDS:
            names.append("iocp-mocked_windows_kernel")
        if "rio" not in RUNNABLE_BACKENDS:
            names.append("rio-mocked_windows_kernel")
    return names


STANDIN_BACKENDS = standin_backends()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allows_callback_errors: the test makes completion callbacks raise on purpose"
    )


@pytest.fixture(params=RUNNABLE_BACKENDS + STANDIN_BACKENDS)
def provider(request: pytest.FixtureRequest) -> Iterator[AsyncIOProvider]:
    """An initialized provider of each runnable backend (and of each stand-in-kernel backend);
    shut down after the test.

    A callback that raises is swallowed by the provider (counted, logged), so an assert inside a
    test's callback would go unseen: the fixture fails such a test unless it is marked
    `allows_callback_errors`. On a stand-in kernel, an API misuse it recorded fails the test too."""
    name, _, standin = request.param.partition("-mocked_")
    kernel = None
    if standin:
        import standin_kernels  # Linux-only helpers, imported only where they run

        monkeypatch = request.getfixturevalue("monkeypatch")  # undone after this fixture's teardown
        if standin == "macos_kernel":
            standin_kernels.install_macos_kernel(monkeypatch)
        else:
            kernel = standin_kernels.install_windows_kernel(monkeypatch)
        p = provider_class(name)()  # not create_provider: its probe() checks the real OS
    else:
        p = create_provider(name, fallback=False)
    assert p.initialize(max_connections=512, max_completion_queue_size=128), getattr(p, "last_error", "")
    yield p
    p.shutdown()
    if kernel is not None:
        assert kernel.errors == [], f"the backend misused the (stand-in) Windows API: {kernel.errors}"
    if request.node.get_closest_marker("allows_callback_errors") is None:
        errors = p.get_statistics().backend_specific.get("callback_errors", 0)
        assert errors == 0, f"{errors} completion callback(s) raised during the test (see the log)"


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


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets appended here are closed after the test."""
    owned: list[socket.socket] = []
    yield owned
    for s in owned:
        s.close()


@pytest.fixture
def make_listener(sockets: list[socket.socket]) -> Callable[..., socket.socket]:
    """make_listener(host="127.0.0.1", backlog=128) -> a listening TCP socket on an ephemeral port."""

    def make(host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        lst = socket.socket(family, socket.SOCK_STREAM)
        sockets.append(lst)
        lst.bind((host, 0))
        lst.listen(backlog)
        return lst

    return make


def _registered_io_pair(
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


@pytest.fixture
def make_pair(
    sockets: list[socket.socket], make_listener: Callable[..., socket.socket], request: pytest.FixtureRequest
) -> Callable[..., tuple[socket.socket, socket.socket]]:
    """make_pair(host="127.0.0.1", sndbuf=None, rcvbuf=None) -> (client, server): a connected TCP
    pair over loopback, both blocking until a provider registers them. `sndbuf`/`rcvbuf` are set
    on the client/server before connecting (so the window is negotiated small). For the RIO
    backend both ends are Registered-I/O sockets (made by ConnectEx and AcceptEx through the
    provider), so the contract runs RIO's data path, not the IOCP path of plain sockets."""

    callspec = getattr(request.node, "callspec", None)
    rio = callspec is not None and str(callspec.params.get("provider", "")).startswith("rio")

    def make(
        host: str = "127.0.0.1", sndbuf: int | None = None, rcvbuf: int | None = None
    ) -> tuple[socket.socket, socket.socket]:
        if rio:
            p = request.getfixturevalue("provider")
            return _registered_io_pair(p, make_listener(host, 1), sndbuf, rcvbuf, sockets)
        lst = make_listener(host, 1)
        client = socket.socket(lst.family, socket.SOCK_STREAM)
        sockets.append(client)
        if sndbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accept()
        client.settimeout(WAIT_S)
        client.connect(lst.getsockname()[:2])
        lst.settimeout(WAIT_S)
        server, _ = lst.accept()
        sockets.append(server)
        client.settimeout(None)
        server.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, server

    return make
