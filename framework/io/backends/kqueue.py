"""kqueue backend (macOS/BSD): completion semantics emulated on top of readiness (`select.kqueue`).

The readiness -> completion emulation is shared with epoll (`readiness.py`); this module holds
only the kqueue-specific kernel notification.

Facts about the kernel API that shaped this module:
- Interest is per (descriptor, filter): a socket gets two kevents, EVFILT_READ and EVFILT_WRITE,
  both EV_ADD|EV_CLEAR. EV_CLEAR resets the filter's state once the event is retrieved, which makes
  it edge-triggered like EPOLLET: a dead peer or an idle writable socket is reported once, never on
  every wait. Adding a filter whose condition already holds reports it at the next wait, so a
  registration may be delayed without losing an edge.
- `kqueue.control(changelist, max_events, timeout)` applies a whole list of changes and waits for
  events in the same system call. Registrations and removals are therefore queued and submitted
  with the next wait: registering N sockets costs no system call of its own.
- A change that fails (EV_DELETE of a descriptor that was closed, which already removed its kevents)
  comes back as an event with EV_ERROR set while there is room in the event list, and then the
  kernel returns those error entries only: it collects no events in that call (FreeBSD
  kqueue_register/kern_kevent, XNU kevent_internal). Such entries are skipped and the wait is
  issued again without changes, so no event comes a call late. Should the call fail as a whole
  (more errors than room), the changes are applied one by one and the wait repeats.
- A pending EV_DELETE must reach the kernel even when the descriptor is watched and unwatched again
  before the next wait; only additions that never reached the kernel may be dropped.
- A send after the peer's reset fails with EPIPE, not ECONNRESET: XNU's sosendcheck tests
  SS_CANTSENDMORE (set when the RST disconnected the socket) before so_error, and FreeBSD's
  sosend_generic does the same. The contract calls that CONNECTION_RESET, so EPIPE maps to it
  (a send after our own shutdown(SHUT_WR) is reported the same way; the kernel does not tell
  them apart). A loopback RST is also processed asynchronously there: a send right after the
  peer's abortive close may still succeed, and the error comes with a later call.
- EVFILT_READ on a listening socket fires when connections are pending; on a stream socket EV_EOF
  marks the peer's FIN/RST, after which recv returns 0 or the error. EVFILT_WRITE fires when a
  non-blocking connect finished (SO_ERROR then holds its result) or when send buffer space frees.
- Events come back one per (descriptor, filter); they are translated to READ/WRITE bits for the
  shared dispatch. The timeout is in seconds, None blocks.
- macOS has no eventfd: the cross-thread wake-up is a non-blocking pipe (see readiness.py).
"""

from __future__ import annotations

import errno
import select
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from framework.io.backends.readiness import ReadinessProvider
from framework.io.errors import BackendUnavailable

# BSD/macOS values (sys/event.h); used only where select lacks the name, i.e. off BSD.
KQ_FILTER_READ = getattr(select, "KQ_FILTER_READ", -1)
KQ_FILTER_WRITE = getattr(select, "KQ_FILTER_WRITE", -2)
KQ_EV_ADD = getattr(select, "KQ_EV_ADD", 0x0001)
KQ_EV_DELETE = getattr(select, "KQ_EV_DELETE", 0x0002)
KQ_EV_CLEAR = getattr(select, "KQ_EV_CLEAR", 0x0020)
KQ_EV_ERROR = getattr(select, "KQ_EV_ERROR", 0x4000)

READ = 1
WRITE = 2

# Looked up at call time, so a test can stand in for the macOS kernel on Linux.
_new_kqueue: Any = getattr(select, "kqueue", None)
_kevent: Any = getattr(select, "kevent", None)


class KqueueProvider(ReadinessProvider):
    """Completion-style provider on edge-triggered (EV_CLEAR) kqueue (macOS, FreeBSD, ...)."""

    name = "kqueue"
    READ_EVENTS = READ
    WRITE_EVENTS = WRITE
    ERRNO_ALIASES: ClassVar[dict[int, int]] = {errno.EPIPE: errno.ECONNRESET}  # see the docstring

    @staticmethod
    def probe() -> None:
        if not hasattr(select, "kqueue"):
            raise BackendUnavailable(
                "kqueue", f"select.kqueue is not available on {sys.platform} (kqueue is macOS/BSD)"
            )

    def __init__(self) -> None:
        super().__init__()
        self._kq: Any = None
        self._changes: list[Any] = []  # submitted with the next control() call
        self._watched: dict[int, bool] = {}  # fd -> also EVFILT_WRITE
        self._in_kernel: set[int] = set()  # fds whose EV_ADD was submitted
        self._control_calls = 0
        self._changes_submitted = 0

    def _open_kernel(self) -> None:
        if _new_kqueue is None:
            self.probe()
        self._kq = _new_kqueue()
        self._changes = []
        self._watched = {}
        self._in_kernel = set()

    def _close_kernel(self) -> None:
        if self._kq is not None:
            self._kq.close()
            self._kq = None
        self._changes = []
        self._watched = {}
        self._in_kernel = set()

    def _watch(self, fd: int, write: bool = True) -> None:
        flags = KQ_EV_ADD | KQ_EV_CLEAR
        self._changes.append(_kevent(fd, filter=KQ_FILTER_READ, flags=flags))
        if write:
            self._changes.append(_kevent(fd, filter=KQ_FILTER_WRITE, flags=flags))
        self._watched[fd] = write

    def _unwatch(self, fd: int) -> None:
        write = self._watched.pop(fd, None)
        if write is None:
            return
        # Additions that never reached the kernel are simply dropped; registered filters go. A
        # pending EV_DELETE (from an earlier unwatch) is kept: the kernel still holds those filters.
        self._changes = [c for c in self._changes if c.ident != fd or c.flags & KQ_EV_DELETE]
        if fd in self._in_kernel:
            self._in_kernel.discard(fd)
            self._changes.append(_kevent(fd, filter=KQ_FILTER_READ, flags=KQ_EV_DELETE))
            if write:
                self._changes.append(_kevent(fd, filter=KQ_FILTER_WRITE, flags=KQ_EV_DELETE))

    def _wait_events(self, timeout_ms: int) -> Sequence[tuple[int, int]]:
        changes = self._changes
        timeout = None if timeout_ms < 0 else timeout_ms / 1000.0
        kq = self._kq
        self._control_calls += 1
        if changes:
            self._changes = []
            self._changes_submitted += len(changes)
            for change in changes:
                if change.flags & KQ_EV_ADD:
                    self._in_kernel.add(change.ident)
            try:
                events = kq.control(changes, self._maxevents, timeout)
                if any(ev.flags & KQ_EV_ERROR for ev in events):
                    # The kernel returned the failed changes only, without collecting events.
                    self._control_calls += 1
                    events = kq.control(None, self._maxevents, timeout)
            except OSError:
                # More failed changes than room to report them: apply them one at a time.
                for change in changes:
                    try:
                        kq.control([change], 0, 0)
                    except OSError:
                        pass  # e.g. EV_DELETE of a closed descriptor: already gone
                events = kq.control(None, self._maxevents, timeout)
        else:
            events = kq.control(None, self._maxevents, timeout)
        return [
            (ev.ident, READ if ev.filter == KQ_FILTER_READ else WRITE)
            for ev in events
            if not ev.flags & KQ_EV_ERROR
        ]

    def _backend_statistics(self) -> dict[str, Any]:
        stats = super()._backend_statistics()
        stats["control_calls"] = self._control_calls
        stats["changes_submitted"] = self._changes_submitted
        return stats
