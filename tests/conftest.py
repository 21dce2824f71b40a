"""Shared fixtures: a provider for every backend of the matrix, stand-in kernels, loopback sockets.

A backend joins the contract suite by registering in `framework.io.factory` and passing its
`probe()` on this machine; the tests never name backends (tests/support/backends.py computes the
matrix). Backends whose kernel is missing here also run on stand-in kernels
(tests/support/standin_kernels.py), as "<backend>-mocked_<os>_kernel". Helpers that are not
fixtures live in tests/support/ (see tests/README.md).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from framework.io.provider import AsyncIOProvider
from tests.support import backends
from tests.support.provider import WAIT_S, Collector, registered_io_pair


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allows_callback_errors: the test makes completion callbacks raise on purpose"
    )
    for name, reason in backends.missing_platform_backends().items():
        # A backend of this very platform that cannot run leaves a column of the matrix untested.
        config.issue_config_time_warning(
            pytest.PytestWarning(f"backend {name} of this platform is not tested here: {reason}"), stacklevel=2
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return backends.header()


@pytest.fixture
def standin_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """standin_kernel(name) installs the stand-in kernel a matrix name asks for (nothing for a real
    backend), undone after the test. The one place tests install them for a matrix backend; an API
    misuse the stand-in Windows kernel recorded fails the test at teardown."""
    kernels: list[Any] = []

    def install(name: str) -> None:
        kernel = backends.install_kernel(name, monkeypatch)
        if kernel is not None:
            kernels.append(kernel)

    yield install
    for kernel in kernels:
        assert kernel.errors == [], f"the backend misused the (stand-in) Windows API: {kernel.errors}"


@pytest.fixture(params=backends.RUNNABLE_BACKENDS + backends.STANDIN_BACKENDS)
def provider(
    request: pytest.FixtureRequest, standin_kernel: Callable[[str], None]
) -> Iterator[AsyncIOProvider]:
    """An initialized provider of each runnable backend (and of each stand-in-kernel backend);
    shut down after the test.

    A callback that raises is swallowed by the provider (counted, logged), so an assert inside a
    test's callback would go unseen: the fixture fails such a test unless it is marked
    `allows_callback_errors`. On a stand-in kernel, an API misuse it recorded fails the test too."""
    standin_kernel(request.param)
    p = backends.new_provider(request.param)
    assert p.initialize(max_connections=512, max_completion_queue_size=128), getattr(p, "last_error", "")
    yield p
    p.shutdown()
    if request.node.get_closest_marker("allows_callback_errors") is None:
        errors = p.get_statistics().backend_specific.get("callback_errors", 0)
        assert errors == 0, f"{errors} completion callback(s) raised during the test (see the log)"


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
            return registered_io_pair(p, make_listener(host, 1), sndbuf, rcvbuf, sockets)
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
