"""epoll backend: completion semantics emulated on top of readiness (`select.epoll`).

The readiness -> completion emulation (per-socket queues, syscall first, gathered sendmsg, accept
drain, connect via SO_ERROR) is shared with kqueue in `readiness.py`; this module holds only the
epoll-specific kernel notification.

Facts about the kernel API that shaped this module:
- Each socket is registered once, edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET). An edge is
  reported once per state change. Level-triggered epoll would report EPOLLHUP/EPOLLERR of a socket
  whose peer is gone on every wait and make an idle loop spin; edge-triggered it is reported once.
- Every arrival of data on a socket wakes its epoll waiters (a new edge even when unread data was
  already queued), so a short read proves the queue empty until the next edge: `SHORT_READ_DRAINS`.
- EPOLLHUP/EPOLLERR/EPOLLRDHUP count as "readable" (the recv then returns 0 or the error) and
  EPOLLHUP/EPOLLERR as "writable" (a pending connect reads SO_ERROR, a send gets the error).
- `epoll.poll` returns (fd, mask) pairs in one call, up to `max_events`; readiness beyond that is
  reported by the next wait (edges stay pending in the ready list).
- The eventfd used for cross-thread wake-ups is Linux-only, like epoll itself.
- `epoll.unregister` of a closed descriptor fails: the kernel dropped it from the set when its last
  reference closed, so that error is expected and ignored.
"""

from __future__ import annotations

import os
import select
from collections.abc import Sequence
from typing import Any

from framework.io.backends.readiness import ReadinessProvider
from framework.io.errors import BackendUnavailable

_EPOLLIN = getattr(select, "EPOLLIN", 0x001)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0x004)
_EPOLLERR = getattr(select, "EPOLLERR", 0x008)
_EPOLLHUP = getattr(select, "EPOLLHUP", 0x010)
_EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_EPOLLET = getattr(select, "EPOLLET", 1 << 31)

_SOCKET_MASK = _EPOLLIN | _EPOLLOUT | _EPOLLRDHUP | _EPOLLET


class EpollProvider(ReadinessProvider):
    """Completion-style provider on edge-triggered epoll (Linux)."""

    name = "epoll"
    READ_EVENTS = _EPOLLIN | _EPOLLERR | _EPOLLHUP | _EPOLLRDHUP
    WRITE_EVENTS = _EPOLLOUT | _EPOLLERR | _EPOLLHUP
    SHORT_READ_DRAINS = True
    HANGUP_EVENTS = _EPOLLERR | _EPOLLHUP | _EPOLLRDHUP

    @staticmethod
    def probe() -> None:
        if not hasattr(select, "epoll"):
            raise BackendUnavailable("epoll", "select.epoll is missing (epoll exists only on Linux)")
        if not hasattr(os, "eventfd"):
            raise BackendUnavailable("epoll", "os.eventfd is missing (needs Linux and Python >= 3.10)")

    def __init__(self) -> None:
        super().__init__()
        self._epoll: Any = None

    def _open_kernel(self) -> None:
        self.probe()
        self._epoll = select.epoll()

    def _close_kernel(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _watch(self, fd: int, write: bool = True) -> None:
        self._epoll.register(fd, _SOCKET_MASK if write else _EPOLLIN)

    def _unwatch(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already: the kernel dropped it from the set with its last reference

    def _wait_events(self, timeout_ms: int) -> Sequence[tuple[int, int]]:
        events: list[tuple[int, int]] = self._epoll.poll(timeout_ms / 1000.0 if timeout_ms >= 0 else -1, self._maxevents)
        return events
