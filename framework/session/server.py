"""Server: listening sockets, accepts, the completion loop, graceful shutdown, worker processes.

Shutdown sequence (SIGTERM/SIGINT or `shutdown()` from any thread): stop accepting -> on_shutdown()
on every session -> each session flushes its queued output and half-closes -> the loop keeps running
until every session is gone or drain_timeout_s passes -> the rest are closed (counted as forced when
output was still unsent) -> provider.shutdown(). The final log line says how many drained and how
many were forced.

Admission (docs/RELIABILITY.md, "Lock-out"): at most `server.max_connections_per_address` live
sessions per peer IP address; an accepted session that sends no message within
`session.first_message_timeout_s` is closed; at `io.max_connections` the oldest session that has not
sent a message yet ("unauthenticated") gives way to the newcomer; accepted sessions' messages pass the
rate limits of framework/session/limits.py.

`workers: N > 1`: the parent forks N worker processes that each run their own loop on the same port
(SO_REUSEPORT, so the kernel spreads connections), forwards SIGTERM/SIGINT to them, restarts a worker
that dies unexpectedly and exits 0 when all of them stopped cleanly.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import threading
import time
from typing import Any

import structlog

from framework.io.errors import ErrorCode, ProviderError, describe
from framework.io.provider import AsyncIOProvider, CompletionResult, Status
from framework.io.sockets import open_listener
from framework.session.host import CLOSED, CONNECTING, SessionHost
from framework.session.limits import RATE_LIMIT_EXCEEDED, RateLimits, SessionLimiter, rate_limit_error
from framework.session.session import Session

log = structlog.get_logger("framework.session")

_SUCCESS = Status.SUCCESS

# Resource exhaustion on accept: back off and retry (the listener stays healthy). ENOBUFS arrives
# mapped to BUFFER_TOO_SMALL (docs/PROVIDER.md, "Error codes").
_ACCEPT_BACKOFF_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, int(ErrorCode.BUFFER_TOO_SMALL)}
)
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 1.0
# Accepts kept posted per listener. With one, a burst of connects is accepted one per trip through
# the completion queue: while broadcasting to thousands of sessions that queue holds thousands of
# send completions, so the re-posted accept completed about once per tick (5,000 connects took
# minutes). Several posted accepts complete together in one trip.
_ACCEPTS_POSTED = 64
# Stable close reasons of admission control (on_disconnected, logs, docs/RELIABILITY.md).
FIRST_MESSAGE_TIMEOUT = "first message timeout"
EVICTED = "evicted for a new connection"
_LOG_INTERVAL_S = 1.0  # one line per kind per second under a flood; the counters keep the totals


class _AddressCount:
    """Live sessions of one peer address; every session from it shares this object (`_addr`)."""

    __slots__ = ("address", "n")

    def __init__(self, address: str) -> None:
        self.address = address
        self.n = 0


class _AwaitingFirstMessage:
    """`Session._limiter` of an accepted session until its first message (see SessionHost._deliver):
    the first delivery marks it as having spoken and installs its real limiter, if any."""

    __slots__ = ()

    @staticmethod
    def admit(host: Server, session: Session, msgs: list[Any]) -> list[Any]:
        return host._first_message(session, msgs)


_AWAITING_FIRST_MESSAGE = _AwaitingFirstMessage()


def _address_key(peer: Any, sock: socket.socket) -> str | None:
    """The peer's IP address as text (an IPv4-mapped IPv6 address as its IPv4 form), or None."""
    if not peer:
        try:
            peer = sock.getpeername()
        except OSError:
            return None
    address = peer[0] if isinstance(peer, tuple) else None
    if not isinstance(address, str):
        return None
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address

# Why an accepted connection was closed at once (raon_connections_refused_total{reason}).
REFUSAL_REASONS = ("max_connections", "per_address", "shutting_down", "register_failed")


class _Listener:
    __slots__ = ("address", "backoff", "closed", "ops", "retry", "sock", "target")

    def __init__(self, sock: socket.socket, address: tuple[str, int], target: int) -> None:
        self.sock = sock
        self.address = address
        self.closed = False
        self.backoff = 0.0
        self.ops: set[int] = set()  # operation ids of the accepts in flight
        self.target = target  # accepts to keep in flight
        self.retry: Any = None  # the back-off Timer, while one is scheduled


class Server(SessionHost):
    """Accepts connections on every configured host and runs a `session_class` per connection."""

    def __init__(
        self, settings: Any, session_class: type[Session], *, provider: AsyncIOProvider | None = None
    ) -> None:
        super().__init__(settings, session_class, provider=provider)
        self.addresses: list[tuple[str, int]] = []
        self._listeners: list[_Listener] = []
        self._listening = False
        self._shutdown_requested = False
        self._stopping = False
        self._done = threading.Event()
        self.evicted = 0
        self.first_message_timeouts = 0
        self.rate_limited = 0  # messages dropped by a rate limit
        self.rate_limit_replies = 0
        self.rate_limit_closes = 0
        self.accepted = 0  # connections the kernel handed over (refused ones included)
        self.refused_by_reason = dict.fromkeys(REFUSAL_REASONS, 0)
        self.accept_errors = 0
        self.drained = 0
        self.forced = 0
        self._last_logged: dict[str, float] = {}
        # Admission state. _unspoken: accepted sessions with no message yet -> accept time, in
        # accept order (the oldest is the first to give way, and the deadline scan stops early).
        self._per_address: dict[str, _AddressCount] = {}
        self._per_address_limit = settings.server.max_connections_per_address
        self._unspoken: dict[Session, float] = {}
        self._unspoken_peak = 0  # its largest size since it was last rebuilt (_forget_unspoken)
        self._first_message_timeout = float(settings.session.first_message_timeout_s)
        self._rate_limits: dict[type[Session], RateLimits] = {}
        self._limits_for(session_class)  # a bad `rate_limits` class attribute fails here, not later
        self._signal_received = 0
        self._parent_pid = 0  # a worker process: shut down if this parent goes away
        # Prometheus metrics and health endpoints (metrics.listen; docs/METRICS.md). Built here so an
        # application's setup_server() can register its own metrics before the server starts.
        self.metrics: Any = None
        if settings.metrics.listen is not None:
            from framework.metrics import Metrics

            self.metrics = Metrics(self)

    # ------------------------------------------------------------------ start
    def start(self) -> list[tuple[str, int]]:
        """Bind and listen on every host (IPv4 and IPv6); returns the bound (host, port) pairs."""
        if self._listening:
            return list(self.addresses)
        provider = self._open_provider()
        cfg = self.settings.server
        port = cfg.port
        reuse_port = cfg.reuse_port or cfg.workers > 1
        for host in cfg.hosts:
            try:
                sock = open_listener(host, port, cfg.backlog, reuse_port)
            except OSError as exc:
                if ":" in host:  # a machine without IPv6 still serves IPv4
                    log.warning("cannot listen on host; skipped", host=host, port=port, error=str(exc))
                    continue
                self._close_listeners()
                raise
            bound_port = sock.getsockname()[1]
            if port == 0:
                port = bound_port  # the other hosts share the port the kernel chose
            if not provider.register_socket(sock):
                sock.close()
                self._close_listeners()
                raise OSError(f"cannot register listener: {provider.last_error}")
            listener = _Listener(sock, (host, bound_port), max(1, min(cfg.backlog, _ACCEPTS_POSTED)))
            self._listeners.append(listener)
            self.addresses.append((host, bound_port))
            self._post_accept(listener)
        if not self._listeners:
            raise OSError(f"could not listen on any of {cfg.hosts}")
        self._listening = True
        timeout = self._first_message_timeout
        if timeout > 0:
            self.call_every(max(0.02, min(1.0, timeout / 4)), self._check_first_messages)
        if self._parent_pid:
            self.call_every(1.0, self._check_parent)
        if self.metrics is not None:
            self.metrics.start()
        log.info(
            "listening",
            addresses=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses],
            backend=provider.name,
            pid=os.getpid(),
        )
        return list(self.addresses)

    def _close_listeners(self) -> None:
        provider = self.provider
        for listener in self._listeners:
            if listener.closed:
                continue
            listener.closed = True
            if provider is not None:
                provider.unregister_socket(listener.sock)  # the pending accept completes CANCELLED
            listener.sock.close()

    # ------------------------------------------------------------------ accept
    def _post_accept(self, listener: _Listener) -> None:
        """Top the listener up to `target` accepts in flight (none while backing off)."""
        if listener.closed or self._stopping or listener.retry is not None:
            return
        provider = self._io
        on_accept = self._on_accept
        ops = listener.ops
        while len(ops) < listener.target:
            op_id = provider.accept_async(listener.sock, on_accept, listener)
            if not op_id:
                log.error("accept could not be posted; retrying", address=listener.address)
                self._retry_accepts(listener, _BACKOFF_MAX_S)
                return
            ops.add(op_id)

    def _retry_accepts(self, listener: _Listener, delay: float) -> None:
        if listener.retry is None:
            listener.retry = self.call_later(delay, lambda: self._accept_retry_due(listener))

    def _accept_retry_due(self, listener: _Listener) -> None:
        listener.retry = None
        self._post_accept(listener)

    def _on_accept(self, result: CompletionResult, listener: _Listener) -> None:
        listener.ops.discard(result.operation_id)
        status = result.status
        if status == _SUCCESS:
            listener.backoff = 0.0
            self._post_accept(listener)  # keep the backlog draining
            assert result.accepted is not None  # a successful accept carries it
            sock, peer = result.accepted
            self._accepted(sock, peer)
            return
        if listener.closed or self._stopping:
            return
        if status == Status.CANCELLED:
            self._post_accept(listener)  # cancelled by a back-off: refilled once that is over
            return
        self.accept_errors += 1
        code = result.error_code
        if code in _ACCEPT_BACKOFF_ERRORS:
            if listener.retry is not None:
                return  # another accept of this burst already scheduled the retry
            listener.backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, listener.backoff * 2))
            log.warning(
                "accept failed: out of resources; backing off",
                address=listener.address,
                error=describe(code),
                retry_in_s=listener.backoff,
            )
            self._retry_accepts(listener, listener.backoff)
            # Withdraw the other posted accepts so nothing accepts during the back-off (each would
            # fail the same way); the retry posts fresh ones, which try accept() at once.
            for op_id in list(listener.ops):
                self._io.cancel(op_id)
        else:
            # ECONNABORTED and friends concern one connection only.
            log.info("accept failed; continuing", address=listener.address, error_code=code)
            self._post_accept(listener)

    def _refuse(self, sock: socket.socket, reason: str, what: str, peer: Any, **limits: int) -> None:
        """Close an accepted connection at once: counted by reason, logged ("connection refused:
        <what>") at most once a second per kind under a flood."""
        self.refused_by_reason[reason] += 1
        sock.close()
        self._log_throttled(
            f"connection refused: {what}", peer=peer, refused_total=self.refused_by_reason[reason], **limits
        )

    @property
    def refused(self) -> int:
        """Connections refused because max_connections was reached (and no slot could be reclaimed)."""
        return self.refused_by_reason["max_connections"]

    @property
    def refused_per_address(self) -> int:
        """Connections refused by server.max_connections_per_address."""
        return self.refused_by_reason["per_address"]

    def _accepted(self, sock: socket.socket, peer: Any) -> None:
        self.accepted += 1
        if self._stopping:
            self.refused_by_reason["shutting_down"] += 1
            sock.close()
            return
        per_address = self._per_address_limit
        address = _address_key(peer, sock) if per_address else None
        if address is not None:
            count = self._per_address.get(address)
            if count is not None and count.n >= per_address:
                self._refuse(
                    sock, "per_address", "per-address limit reached", peer, max_connections_per_address=per_address
                )
                return
        limit = self.settings.io.max_connections
        if len(self.registry) >= limit and not self._reclaim_slot(peer):
            self._refuse(sock, "max_connections", "max_connections reached", peer, max_connections=limit)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # The peer address is not kept: Session.peer asks the socket when needed (idle memory).
        session = self._new_session(self.session_class, sock, None, CONNECTING)
        if not self._io.register_socket(sock, session._ctx):
            log.warning(
                "accepted socket could not be registered; closed",
                peer=peer,
                error=self._io.last_error,
            )
            self.registry.remove(session)
            session._state = CLOSED
            self.refused_by_reason["register_failed"] += 1
            sock.close()
            return
        # Admission bookkeeping, undone in _finalize. The count object is shared by every session
        # from the address (8 bytes per session, no address string each).
        if address is not None:
            count = self._per_address.get(address)
            if count is None:
                count = self._per_address[address] = _AddressCount(address)
            count.n += 1
            session._addr = count
        session._limiter = _AWAITING_FIRST_MESSAGE
        self._unspoken[session] = self.now
        if len(self._unspoken) > self._unspoken_peak:
            self._unspoken_peak = len(self._unspoken)
        self._open_session(session)

    def _reclaim_slot(self, peer: Any) -> bool:
        """At max_connections: close the session that has waited longest without sending a message
        (it holds a slot and has shown no sign of being a player); False when every session spoke."""
        victim = next(iter(self._unspoken), None)
        if victim is None:
            return False
        self.evicted += 1
        self._log_throttled(
            "session evicted for a new connection",
            session=str(victim.id),
            peer=victim.peer,
            new_peer=peer,
            evicted_total=self.evicted,
        )
        self._finalize(victim, EVICTED)
        return True

    def _first_message(self, session: Session, msgs: list[Any]) -> list[Any]:
        """The session's first message batch (see _AwaitingFirstMessage): it has spoken; from now on
        only its rate limiter (if any) sees its messages."""
        self._forget_unspoken(session)
        limiter = session._limiter = self._limits_for(type(session)).limiter(self.now)
        return msgs if limiter is None else limiter.admit(self, session, msgs)

    def _limits_for(self, cls: type[Session]) -> RateLimits:
        limits = self._rate_limits.get(cls)
        if limits is None:
            codec = cls.codec or self.settings.session.codec
            limits = self._rate_limits[cls] = RateLimits(self.settings.session.rate_limit, cls, codec)
        return limits

    def _rate_limited(self, session: Session, limiter: SessionLimiter, limit: str, dropped: int) -> None:
        """`dropped` messages of `session` were over `limit`: count, reply, maybe close."""
        self.rate_limited += dropped
        limits = limiter.limits
        if limits.close and limiter.violations >= limits.max_violations:
            self.rate_limit_closes += 1
            self._log_throttled(
                "session closed: rate limit exceeded",
                session=str(session.id),
                peer=session.peer,
                limit=limit,
                violations=limiter.violations,
                closed_total=self.rate_limit_closes,
            )
            if limits.reply:
                n = limiter.take_report(limit, self.now, force=True)
                session.send(rate_limit_error(limit, limits.per_s(limit), n))
                self.rate_limit_replies += 1
            self._close_session(session, RATE_LIMIT_EXCEEDED)
            return
        self._log_throttled(
            "messages dropped: rate limit",
            session=str(session.id),
            limit=limit,
            dropped=dropped,
            dropped_total=self.rate_limited,
        )
        if limits.reply:
            n = limiter.take_report(limit, self.now)
            if n:
                # Queued after this turn's dispatch (timers run after the completions), so the
                # replies to the messages of the same read that passed come first.
                error = rate_limit_error(limit, limits.per_s(limit), n)
                self.call_later(0.0, lambda: session.send(error))
                self.rate_limit_replies += 1

    def _check_first_messages(self) -> None:
        """Close the sessions that sent no message within first_message_timeout_s (heartbeats
        do not count: they are frames, not messages)."""
        cutoff = self.now - self._first_message_timeout
        expired = []
        for session, since in self._unspoken.items():
            if since > cutoff:
                break  # accept order: the rest are younger
            expired.append(session)
        if not expired:
            return
        for session in expired:
            self._finalize(session, FIRST_MESSAGE_TIMEOUT)
        self.first_message_timeouts += len(expired)
        log.info(
            "sessions closed: first message timeout",
            closed=len(expired),
            first_message_timeout_s=self._first_message_timeout,
            closed_total=self.first_message_timeouts,
        )

    def _finalize(self, session: Session, reason: str) -> None:
        if session._state != CLOSED:
            count = session._addr
            if count is not None:
                session._addr = None
                count.n -= 1
                if not count.n:
                    del self._per_address[count.address]
            if session._limiter is _AWAITING_FIRST_MESSAGE:
                self._forget_unspoken(session)
        super()._finalize(session, reason)

    def _forget_unspoken(self, session: Session) -> None:
        """`session` spoke or closed. A dict keeps the table of its largest size: once it holds
        under a quarter of that, it is rebuilt (in order), so an accept storm whose sessions all
        spoke leaves no per-connection table behind."""
        unspoken = self._unspoken
        unspoken.pop(session, None)
        if len(unspoken) * 4 < self._unspoken_peak > 1024:
            self._unspoken = dict(unspoken)
            self._unspoken_peak = len(unspoken)

    def _log_throttled(self, event: str, **fields: Any) -> None:
        """A warning at most once per second per event under a flood (counters keep the totals)."""
        now = self.now
        if now - self._last_logged.get(event, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._last_logged[event] = now
            log.warning(event, **fields)

    # ------------------------------------------------------------------ running
    def serve_forever(self) -> None:
        """Run the completion loop in this thread until a shutdown completes."""
        if not self._listening:
            self.start()
        self._running = True
        try:
            while True:
                if self._shutdown_requested and not self._stopping:
                    self._begin_shutdown()
                try:
                    self.run_once()
                except ProviderError:
                    # Retries exhausted (logged). Shut down gracefully instead of crashing; if the
                    # provider fails during the drain too, close what is left right away.
                    if self._stopping:
                        break
                    self._shutdown_requested = True
                    continue
                if self._stopping and self._drain_finished():
                    break
        finally:
            self._running = False
            self._finish_shutdown()

    def shutdown(self) -> None:
        """Request a graceful shutdown; safe from any thread and from signal handlers."""
        self._shutdown_requested = True
        provider = self.provider
        if provider is not None and self._started and not self._closed:
            try:
                provider.post(None)  # wake a blocked process_completions
            except Exception:
                pass

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block (another thread) until serve_forever has finished its shutdown."""
        return self._done.wait(timeout)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or shutdown()); returns the process exit code (0)."""
        if self.settings.server.workers > 1:
            return self._supervise()
        if not self._listening:
            self.start()
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, self._on_signal)
        try:
            # This process is the server from here on: everything alive now (modules, settings,
            # the provider) lives until exit. Freezing it keeps the cyclic GC's full passes, which
            # run in the loop thread and stall every session, from scanning ~36k start-up objects
            # again (with 5,000 sessions, full passes of 20-100 ms became 6-15 ms). After the signal
            # handlers: a SIGTERM during the collection must still end in a graceful shutdown.
            gc.collect()
            gc.freeze()
            self.serve_forever()
        finally:
            for sig, previous in installed.items():
                signal.signal(sig, previous)
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # No logging here: a handler that takes a lock (a log write) can deadlock against the code
        # it interrupted. shutdown() only sets a flag and posts a wake-up (lock-free).
        self._signal_received = signum
        self.shutdown()

    def _check_parent(self) -> None:
        if os.getppid() != self._parent_pid and not self._shutdown_requested:
            log.warning("supervisor process is gone; shutting down", parent_pid=self._parent_pid)
            self.shutdown()

    def _begin_shutdown(self) -> None:
        self._stopping = True
        self._close_listeners()
        signum = self._signal_received
        log.info(
            "shutdown started",
            signal=signal.Signals(signum).name if signum else None,
            sessions=len(self.registry),
            drain_timeout_s=self._drain_timeout,
        )
        self._begin_drain("server shutdown", notify=True)

    def _finish_shutdown(self) -> None:
        if self._closed:
            self._done.set()
            return
        try:
            if not self._stopping:  # the loop died (provider failure): still release everything
                self._stopping = True
                self._close_listeners()
                self._begin_drain("server error", notify=False)
            self.drained, self.forced = self._end_drain()
            log.info(
                "shutdown complete",
                drained=self.drained,
                forced=self.forced,
                stale_completions=self.registry.stale_completions,
            )
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            self._done.set()

    @property
    def stats(self) -> dict[str, Any]:
        """The host's counters plus accepts, refusals by reason and listeners."""
        out = super().stats
        out.update(
            accepted=self.accepted,
            refused=self.refused,
            refused_per_address=self.refused_per_address,
            evicted=self.evicted,
            first_message_timeouts=self.first_message_timeouts,
            rate_limited=self.rate_limited,
            rate_limit_replies=self.rate_limit_replies,
            rate_limit_closes=self.rate_limit_closes,
            refused_by_reason=dict(self.refused_by_reason),
            draining=self._stopping or self._shutdown_requested,
            accept_errors=self.accept_errors,
            accepts_posted=sum(len(listener.ops) for listener in self._listeners),
        )
        return out

    def _stats_extra(self) -> dict[str, Any]:
        return {
            "listeners": sum(1 for listener in self._listeners if not listener.closed),
            "accepts_posted": sum(len(listener.ops) for listener in self._listeners),
            "refused_total": self.refused,
        }

    # ------------------------------------------------------------------ workers
    def _supervise(self) -> int:
        """Parent of `workers` processes sharing the port through SO_REUSEPORT."""
        if self.provider is not None:
            raise ValueError("a provider instance cannot be shared by worker processes")
        cfg = self.settings.server
        port = cfg.port
        placeholder = None
        if port == 0:
            # Reserve one ephemeral port for every worker: a bound (not listening) SO_REUSEPORT
            # socket takes no connections but keeps the number ours.
            placeholder = self._bind_placeholder(cfg.hosts[0])
            port = placeholder.getsockname()[1]
        child_settings = self.settings.model_copy(
            update={"server": cfg.model_copy(update={"port": port, "workers": 1, "reuse_port": True})}
        )
        self.addresses = [(h, port) for h in cfg.hosts]
        stopping = False
        children: dict[int, int] = {}

        parent_pid = os.getpid()

        def spawn(index: int) -> None:
            pid = os.fork()
            if pid == 0:  # worker
                code = 1
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    worker = Server(worker_settings(child_settings, index), self.session_class)
                    worker._parent_pid = parent_pid
                    code = worker.run()
                except BaseException:
                    log.exception("worker failed", worker=index)
                finally:
                    os._exit(code)
            children[pid] = index

        def forward(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, forward)
        log.info("starting workers", workers=cfg.workers, port=port, pid=os.getpid())
        exit_code = 0
        restarts: list[float] = []
        try:
            for i in range(cfg.workers):
                spawn(i)
            while children:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                index = children.pop(pid, None)
                if index is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                if stopping:
                    if code != 0:
                        exit_code = 1
                    log.info("worker stopped", worker=index, pid=pid, exit_code=code)
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > 5 * cfg.workers:
                    log.error("workers keep dying; giving up", worker=index, exit_code=code)
                    forward(signal.SIGTERM, None)
                    exit_code = 1
                    continue
                log.error("worker exited unexpectedly; restarting", worker=index, pid=pid, exit_code=code)
                time.sleep(0.2)
                spawn(index)
        finally:
            for sig, previous in installed.items():
                signal.signal(sig, previous)
            if placeholder is not None:
                placeholder.close()
        return exit_code

    @staticmethod
    def _bind_placeholder(host: str) -> socket.socket:
        family, type_, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        return sock


def worker_settings(settings: Any, index: int) -> Any:
    """Worker `index`'s settings: each worker serves its own metrics on metrics.listen's port +
    index (docs/METRICS.md), since each has its own loop and counters; port 0 stays 0 (any)."""
    listen = settings.metrics.listen
    if listen is None:
        return settings
    from framework.config import split_listen

    host, port = split_listen(listen)
    if port:
        port += index
    bracketed = f"[{host}]" if ":" in host else host
    metrics = settings.metrics.model_copy(update={"listen": f"{bracketed}:{port}"})
    return settings.model_copy(update={"metrics": metrics})
