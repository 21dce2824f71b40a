"""RAON IocpObjectListener, SessionPool and ServiceCoordinator.

A server service is a listener that keeps `accept_count` AcceptEx operations outstanding and hands
each accepted connection to a session from its pool. A client service owns a pool of outgoing
sessions; with CLIENT_AUTO_RECONNECT each session connects again `reconnect_delay_ms` after it lost
its connection or failed to connect, until the service stops.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import structlog

from framework.io.sockets import open_listener
from framework.legacy.core import IocpCore, IocpObject, IoType, OverlappedEx
from framework.legacy.session import IocpObjectSession, KickReason

log = structlog.get_logger("framework.legacy")

ACCEPT_RETRY_MS = 100  # after a failed accept (e.g. EMFILE): retry later instead of spinning


class ServiceType(IntEnum):
    """RAON SERVICE_TYPE: a server accepts; a client connects on `manual_connect()`, or on its own
    and again after every loss (`CLIENT_AUTO_RECONNECT`)."""

    SERVER = 0
    CLIENT = 1  # sessions connect when the application calls manual_connect()
    CLIENT_MANUAL = 1  # RAON's name for the same thing (an alias of CLIENT)
    CLIENT_AUTO_RECONNECT = 2


class SessionPool:
    """Sessions created once and reused in a circle: a released session goes to the back, so the
    object reused next is the one that has been free the longest.

    The pool knows which sessions are free: releasing one twice, or one it did not create, raises
    (either would hand one object to two connections)."""

    def __init__(self, factory: Callable[[], IocpObjectSession], capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._all: list[IocpObjectSession] = []
        for index in range(capacity):
            session = factory()
            session.session_id = index
            self._all.append(session)
        self._members = {id(s) for s in self._all}
        self._free: deque[IocpObjectSession] = deque(self._all)
        self._free_ids = set(self._members)
        self.owner: ServiceCoordinator | None = None  # the service serving from this pool

    def acquire(self) -> IocpObjectSession | None:
        """The session free the longest, now in use; None when every session is taken."""
        if not self._free:
            return None
        session = self._free.popleft()
        self._free_ids.discard(id(session))
        return session

    def release(self, session: IocpObjectSession) -> None:
        """Give a session back (it goes to the back of the circle). Raises ValueError for a
        session of another pool and RuntimeError for one released twice."""
        key = id(session)
        if key not in self._members:
            raise ValueError(f"{type(session).__name__} #{session.session_id} does not belong to this pool")
        if key in self._free_ids:
            raise RuntimeError(f"session #{session.session_id} released twice")
        self._free_ids.add(key)
        self._free.append(session)

    def alive_sessions(self) -> set[IocpObjectSession]:
        """RAON AliveSessionSet: the sessions taken out of the pool and not released yet."""
        return {s for s in self._all if id(s) not in self._free_ids}

    def reset_session_pool(self) -> None:
        """RAON ResetSessionPool: every session reset and free again, in index order. Refused
        while one still has a connection or an operation outstanding (disconnect it first, e.g.
        by stopping its service): resetting it then would mix two connections' completions."""
        busy = [s.session_id for s in self._all if not s.is_idle]
        if busy:
            raise RuntimeError(f"sessions {busy} are still connected or have I/O outstanding")
        for session in self._all:
            session.reset()
        self._free = deque(self._all)
        self._free_ids = set(self._members)

    @property
    def capacity(self) -> int:
        """How many sessions the pool holds (RAON's max session count)."""
        return len(self._all)

    @property
    def free_count(self) -> int:
        """How many sessions are free now."""
        return len(self._free)

    @property
    def sessions(self) -> list[IocpObjectSession]:
        """Every session of the pool, in creation order (a copy)."""
        return list(self._all)


class IocpObjectListener(IocpObject):
    """A listening socket with `accept_count` accepts outstanding."""

    def __init__(self, coordinator: ServiceCoordinator | None = None, accept_count: int = 4) -> None:
        super().__init__()
        self.coordinator = coordinator
        self._sock: socket.socket | None = None
        self._overlapped = [OverlappedEx(IoType.ACCEPT, owner=self) for _ in range(max(1, accept_count))]
        self._listening = False
        self.closed = True
        self.address: Any = None
        self.accepted_count = 0  # connections handed to a session
        self.refused_count = 0  # connections closed at once (pool exhausted, or refused)

    @property
    def session_count(self) -> int:
        """Sessions of this listener's service alive now (RAON's current session count)."""
        return len(self.coordinator.pool.alive_sessions()) if self.coordinator is not None else 0

    @property
    def max_session_count(self) -> int:
        """The capacity of this listener's session pool (0 without a service)."""
        return self.coordinator.pool.capacity if self.coordinator is not None else 0

    def get_handle(self) -> socket.socket | None:
        """The listening socket (None before `listen` and after it closed)."""
        return self._sock

    def listen(self, core: IocpCore, address: tuple[str, int], backlog: int = 128) -> bool:
        """Bind, listen, associate with the core and post the accepts. Raises OSError on bind."""
        # v6only=False: an IPv6 listener keeps the system's dual-stack default, as RAON's did.
        sock = open_listener(address[0], address[1], backlog, v6only=False)
        self._sock = sock
        self.address = sock.getsockname()
        if not core.register_iocp_object(self):
            self._sock = None
            sock.close()
            return False
        self._listening = True
        self.closed = False
        for overlapped in self._overlapped:
            self.request_accept(overlapped)
        return True

    def request_accept(self, overlapped: OverlappedEx | None = None) -> bool:
        """Post one AcceptEx (on a free OverlappedEx when none is given)."""
        if not self._listening or self.core is None:
            return False
        if overlapped is None:
            overlapped = next((o for o in self._overlapped if not o.pending), None)
            if overlapped is None:
                return False
        self.add_ref()
        if not self.core.accept_ex(self, overlapped):
            self.release()
            return False
        return True

    def close(self) -> None:
        """Stop accepting; the socket closes once the outstanding accepts completed."""
        if not self._listening:
            return
        self._listening = False
        if self.core is not None and not self.core.closed:
            self.core.unregister_iocp_object(self)  # pending accepts complete as CANCELLED
        if self._refs == 0:
            self.on_last_release()

    def on_accept(self, sock: socket.socket, address: Any) -> None:
        """A connection arrived: give it to a pooled session, or refuse it when the pool is empty."""
        coordinator = self.coordinator
        session = coordinator.acquire_session() if coordinator is not None else None
        if session is None:
            log.warning("connection refused: session pool exhausted", peer=address)
            self.refused_count += 1
            sock.close()
            return
        if not session.accept(sock, address):
            self.refused_count += 1
            sock.close()
            assert coordinator is not None  # the session came from it
            coordinator.release_session(session)
            return
        self.accepted_count += 1

    def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
        """An accept completed: hand the connection to `on_accept` and post the next accept
        (after `ACCEPT_RETRY_MS` when this one failed)."""
        try:
            if overlapped.ok and overlapped.accepted is not None:
                sock, address = overlapped.accepted
                overlapped.accepted = None
                if self._listening:
                    self.on_accept(sock, address)
                else:
                    sock.close()
            if not self._listening:
                return
            if overlapped.ok:
                self.request_accept(overlapped)
            else:
                log.warning("accept failed", status=int(overlapped.status), error=overlapped.error_code)
                assert self.core is not None  # registered: its accepts complete
                self.core.push_timer_job(ACCEPT_RETRY_MS, lambda: self.request_accept(overlapped))
        finally:
            self.release()

    def on_last_release(self) -> None:
        """The last accept completed after `close`: close the socket."""
        if not self._listening and self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
            self.closed = True
            if self.coordinator is not None:
                self.coordinator._listener_closed()


class ServiceCoordinator:
    """One service (RAON ServiceCoordinator): its type, address, session pool and, for a server,
    its listener."""

    def __init__(
        self,
        core: IocpCore,
        service_type: ServiceType,
        address: tuple[str, int],
        session_factory: Callable[[], IocpObjectSession] | None,
        max_sessions: int,
        *,
        backlog: int = 128,
        accept_count: int = 4,
        reconnect_delay_ms: int = 500,
        connect_timeout_ms: int | None = 5000,
        pool: SessionPool | None = None,
    ) -> None:
        """`pool`: serve from the caller's SessionPool (RAON RegisterServerService(port, n, pool));
        `session_factory` and `max_sessions` are then unused. A pool serves one running service."""
        if pool is None:
            if session_factory is None:
                raise ValueError("a service needs a session_factory or a pool")
            pool = SessionPool(session_factory, max_sessions)
        elif pool.owner is not None and not pool.owner.stopped:
            raise ValueError("the SessionPool already serves a running service")
        elif pool.alive_sessions():
            raise ValueError("the SessionPool has sessions in use: release them first")
        pool.owner = self
        self.core = core
        self.service_type = service_type
        self.address: Any = address
        self.backlog = backlog
        self.reconnect_delay_ms = reconnect_delay_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.pool = pool
        for session in self.pool.sessions:
            session.coordinator = self
            session.core = core
        self.listener: IocpObjectListener | None = None
        self._accept_count = accept_count
        self._active: set[IocpObjectSession] = set()
        self._reconnecting: set[IocpObjectSession] = set()
        self._stopping = False
        self.connects = 0  # successful connections (accepted or connected) over the service's life

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """Start the service (RAON Start): a server listens and posts its accepts, an
        auto-reconnecting client connects every pooled session; a manual client waits for
        `manual_connect`. False when the listener could not register with the core."""
        if self.service_type == ServiceType.SERVER:
            self.listener = IocpObjectListener(self, self._accept_count)
            if not self.listener.listen(self.core, self.address, self.backlog):
                return False
            self.address = self.listener.address
        elif self.service_type == ServiceType.CLIENT_AUTO_RECONNECT:
            for _ in range(self.pool.capacity):
                session = self.acquire_session()
                if session is None:
                    break
                if not session.connect(self.address, self.connect_timeout_ms):
                    self.release_session(session)  # retried after reconnect_delay_ms
        return True

    def stop(self) -> None:
        """Close the listener, disconnect every session, reconnect no more."""
        self._stopping = True
        if self.listener is not None:
            self.listener.close()
        for session in list(self._active):
            session.disconnect(KickReason.SERVICE_STOPPED, "service stopped")
        for session in list(self._reconnecting):
            self._reconnecting.discard(session)
            self.pool.release(session)

    @property
    def stopped(self) -> bool:
        """Stopped and every socket closed (the port can be bound again)."""
        listener_closed = self.listener is None or self.listener.closed
        return self._stopping and listener_closed and not self._active

    @property
    def active_sessions(self) -> list[IocpObjectSession]:
        """Sessions in use now (connected, connecting or closing), a copy."""
        return list(self._active)

    # ------------------------------------------------------------------ RAON API
    def acquire_session(self) -> IocpObjectSession | None:
        """A free session from the pool, now counted active (RAON AcquireSession); None when the
        pool is empty or the service is stopping."""
        if self._stopping:
            return None
        session = self.pool.acquire()
        if session is not None:
            self._active.add(session)
        return session

    def release_session(self, session: IocpObjectSession) -> None:
        """A session ended (after on_disconnect, or a failed connect): reset and reuse it."""
        if session not in self._active:
            raise RuntimeError(f"session #{session.session_id} is not in use by this service")
        session.reset()
        self._active.discard(session)
        if self.service_type == ServiceType.CLIENT_AUTO_RECONNECT and not self._stopping:
            self._reconnecting.add(session)
            self.core.push_timer_job(self.reconnect_delay_ms, lambda: self._reconnect(session))
            return
        self.pool.release(session)

    def manual_connect(self) -> IocpObjectSession | None:
        """Connect one more pooled session to the service address (None: pool empty or failed)."""
        session = self.acquire_session()
        if session is None:
            return None
        if not session.connect(self.address, self.connect_timeout_ms):
            self.release_session(session)
            return None
        return session

    def _reconnect(self, session: IocpObjectSession) -> None:
        if session not in self._reconnecting:
            return  # the service stopped meanwhile
        self._reconnecting.discard(session)
        if self._stopping:
            self.pool.release(session)
            return
        self._active.add(session)
        if not session.connect(self.address, self.connect_timeout_ms):
            self.release_session(session)  # schedules the next attempt

    def _listener_closed(self) -> None:
        log.info("listener closed", address=self.address)

    def on_session_connected(self, session: IocpObjectSession) -> None:
        """A session of this service connected or was accepted: counted in `connects`."""
        self.connects += 1
