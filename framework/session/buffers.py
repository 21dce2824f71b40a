"""BufferPool: receive buffers carved from slabs registered with the provider.

Buffers come in slabs (one bytearray, one `register_buffer` call, many fixed-size buffers), so a
backend with kernel registration (io_uring fixed buffers, RIO) registers a few large regions rather
than thousands of small ones. The pool starts with `initial_buffers`, grows slab by slab up to
`max_buffers`, and then `acquire()` returns None: the caller must defer the receive until
`release()` frees one (backpressure). Every exhaustion is counted and reported to the caller, never
silently swallowed.
"""

from __future__ import annotations

from typing import Any

import structlog

from framework.io.provider import AsyncIOProvider

log = structlog.get_logger("framework.session")


class Buffer:
    """One fixed-size buffer: a view into a slab, plus its registration (id, offset)."""

    __slots__ = ("buffer_id", "index", "offset", "size", "view")

    def __init__(self, index: int, view: memoryview, buffer_id: int, offset: int) -> None:
        self.index = index
        self.view = view
        self.buffer_id = buffer_id  # provider registration id of the slab, -1 when not registered
        self.offset = offset
        self.size = len(view)

    def __repr__(self) -> str:
        return f"Buffer(#{self.index}, slab={self.buffer_id}, offset={self.offset}, size={self.size})"


class BufferPool:
    """Fixed-size receive buffers over provider-registered slabs. Loop-thread only."""

    def __init__(
        self,
        provider: AsyncIOProvider,
        buffer_size: int,
        initial_buffers: int,
        max_buffers: int,
        *,
        register: bool = True,
    ) -> None:
        if buffer_size <= 0 or max_buffers <= 0:
            raise ValueError("buffer_size and max_buffers must be positive")
        self.provider = provider
        self.buffer_size = buffer_size
        self.max_buffers = max_buffers
        self._slab_size = max(1, min(max(initial_buffers, 1), max_buffers))
        self._free: list[Buffer] = []
        self._slabs: list[tuple[bytearray, int]] = []
        self._capacity = 0
        # Registration only pays off where the kernel knows the memory (io_uring, RIO).
        self.kernel_registered = register and provider.supports_feature("BufferRegistration")
        self._register = self.kernel_registered
        self.exhausted = 0  # acquire() calls refused at the cap (backpressure events)
        self.grows = 0
        self.registration_failures = 0
        self._grow(self._slab_size if initial_buffers > 0 else 0)

    # ------------------------------------------------------------------ sizing
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self._capacity - len(self._free)

    def _grow(self, count: int) -> bool:
        count = min(count, self.max_buffers - self._capacity)
        if count <= 0:
            return False
        slab = bytearray(count * self.buffer_size)
        buffer_id = -1
        if self._register:
            buffer_id = self.provider.register_buffer(slab)
            if buffer_id < 0:
                # Still usable through plain receives; say so once per slab.
                self.registration_failures += 1
                log.warning("buffer registration failed; using unregistered buffers", error=buffer_id)
                buffer_id = -1
        self._slabs.append((slab, buffer_id))
        mv = memoryview(slab)
        size = self.buffer_size
        base = self._capacity
        # Hand out low indexes first (pop from the end).
        for i in range(count - 1, -1, -1):
            self._free.append(Buffer(base + i, mv[i * size : (i + 1) * size], buffer_id, i * size))
        self._capacity += count
        if len(self._slabs) > 1:
            self.grows += 1
            log.info("buffer pool grew", capacity=self._capacity, max_buffers=self.max_buffers)
        return True

    # ------------------------------------------------------------------ loans
    def acquire(self) -> Buffer | None:
        """A free buffer, growing the pool up to `max_buffers`; None at the cap (backpressure)."""
        free = self._free
        if free:
            return free.pop()
        if self._grow(self._slab_size):
            return free.pop()
        self.exhausted += 1
        return None

    def release(self, buf: Buffer) -> None:
        self._free.append(buf)

    def recv_into(self, sock: Any, buf: Buffer, callback: Any, context: Any) -> int:
        """Post a receive into `buf` (registered where the kernel knows the slab)."""
        if self.kernel_registered and buf.buffer_id >= 0:
            return self.provider.recv_async_registered(
                sock, buf.buffer_id, buf.offset, buf.size, callback, context
            )
        return self.provider.recv_async(sock, buf.view, callback, context)

    def close(self) -> None:
        """Unregister every slab (after the provider has no operation pending on them)."""
        for _slab, buffer_id in self._slabs:
            if buffer_id >= 0:
                try:
                    self.provider.unregister_buffer(buffer_id)
                except Exception:
                    log.exception("unregister_buffer failed", buffer_id=buffer_id)
        self._slabs.clear()
        self._free.clear()
        self._capacity = 0

    def statistics(self) -> dict[str, int | bool]:
        return {
            "capacity": self._capacity,
            "in_use": self.in_use,
            "max_buffers": self.max_buffers,
            "exhausted": self.exhausted,
            "grows": self.grows,
            "kernel_registered": self.kernel_registered,
        }
