"""BufferPool: receive buffers carved from slabs registered with the provider.

Buffers come in slabs (one bytearray, one `register_buffer` call, many fixed-size buffers), so a
backend with kernel registration (io_uring fixed buffers, RIO) registers a few large regions rather
than thousands of small ones. The pool starts with `initial_buffers`, grows slab by slab up to
`max_buffers`, and then `acquire()` returns None: the caller must defer the receive until
`release()` frees one (backpressure). Every exhaustion is counted and reported to the caller, never
silently swallowed.

Two size classes: with `small_size`, `acquire_small()` lends a small buffer (its own slabs). An idle
connection only ever needs a few bytes, and a receive buffer on loan is resident memory (zero-filled
at allocation, pinned by kernel registration): 10,000 idle sessions on 64 KiB buffers hold 640 MB.
The session layer posts small buffers and moves a session to a large one only when a read fills the
small one. `max_buffers` caps the buffers on loan of both classes together, so backpressure starts
at the same count as with one class.
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


class _SizeClass:
    """The slabs and free list of one buffer size."""

    __slots__ = ("capacity", "free", "size", "slab_count")

    def __init__(self, size: int, slab_count: int) -> None:
        self.size = size
        self.slab_count = slab_count  # buffers per slab
        self.free: list[Buffer] = []
        self.capacity = 0


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
        small_size: int = 0,
    ) -> None:
        if buffer_size <= 0 or max_buffers <= 0:
            raise ValueError("buffer_size and max_buffers must be positive")
        self.provider = provider
        self.buffer_size = buffer_size
        self.max_buffers = max_buffers
        self._slab_size = max(1, min(max(initial_buffers, 1), max_buffers))
        self._large = _SizeClass(buffer_size, self._slab_size)
        self._free = self._large.free
        # Small slabs of ~256 KiB: few registrations, little memory until connections arrive.
        small = 0 < small_size < buffer_size
        self.small_size = small_size if small else 0
        self._small = (
            _SizeClass(small_size, max(1, min(max_buffers, (256 * 1024) // small_size))) if small else None
        )
        self._slabs: list[tuple[bytearray, int]] = []
        self._loaned = 0
        # Registration only pays off where the kernel knows the memory (io_uring, RIO).
        self.kernel_registered = register and provider.supports_feature("BufferRegistration")
        self._register = self.kernel_registered
        self.exhausted = 0  # acquire() calls refused at the cap (backpressure events)
        self.grows = 0
        self.registration_failures = 0
        self._grow(self._large, self._slab_size if initial_buffers > 0 else 0)

    # ------------------------------------------------------------------ sizing
    @property
    def capacity(self) -> int:
        """Large buffers allocated (the small class is reported in `statistics()`)."""
        return self._large.capacity

    @property
    def available(self) -> int:
        """Buffers that can be lent right now without passing `max_buffers` (0: backpressure)."""
        return self.max_buffers - self._loaned

    @property
    def in_use(self) -> int:
        """Buffers on loan, both size classes."""
        return self._loaned

    def _grow(self, cls: _SizeClass, count: int) -> bool:
        count = min(count, self.max_buffers - cls.capacity)
        if count <= 0:
            return False
        size = cls.size
        slab = bytearray(count * size)
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
        base = cls.capacity
        free = cls.free
        # Hand out low indexes first (pop from the end).
        for i in range(count - 1, -1, -1):
            free.append(Buffer(base + i, mv[i * size : (i + 1) * size], buffer_id, i * size))
        first = cls.capacity == 0
        cls.capacity += count
        if not first:
            self.grows += 1
            log.info(
                "buffer pool grew", buffer_size=size, capacity=cls.capacity, max_buffers=self.max_buffers
            )
        return True

    # ------------------------------------------------------------------ loans
    def acquire(self) -> Buffer | None:
        """A free large buffer, growing the pool up to `max_buffers`; None at the cap (backpressure)."""
        if self._loaned >= self.max_buffers:
            self.exhausted += 1
            return None
        free = self._free
        if free or self._grow(self._large, self._slab_size):
            self._loaned += 1
            return free.pop()
        self.exhausted += 1
        return None

    def acquire_small(self) -> Buffer | None:
        """A small buffer (a large one without a small class); None at the cap (backpressure)."""
        cls = self._small
        if cls is None:
            return self.acquire()
        if self._loaned >= self.max_buffers:
            self.exhausted += 1
            return None
        free = cls.free
        if free or self._grow(cls, cls.slab_count):
            self._loaned += 1
            return free.pop()
        return self.acquire()

    def release(self, buf: Buffer) -> None:
        """Give a loaned buffer back (to the pool of its size)."""
        self._loaned -= 1
        if buf.size == self.buffer_size:
            self._free.append(buf)
        else:
            small = self._small
            assert small is not None  # a small buffer came from it
            small.free.append(buf)

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
        for cls in (self._large, self._small):
            if cls is not None:
                cls.free.clear()
                cls.capacity = 0
        self._loaned = 0

    def statistics(self) -> dict[str, int | bool]:
        """Counters of the pool: capacity, buffers loaned and free, registration."""
        return {
            "capacity": self._large.capacity,
            "small_capacity": self._small.capacity if self._small is not None else 0,
            "small_size": self.small_size,
            "in_use": self._loaned,
            "max_buffers": self.max_buffers,
            "exhausted": self.exhausted,
            "grows": self.grows,
            "kernel_registered": self.kernel_registered,
        }
