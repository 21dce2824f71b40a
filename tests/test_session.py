"""Session-layer parts on their own: registry slots and generations, groups, the buffer pool over
each real backend's buffer registration."""

from __future__ import annotations

import pytest

from framework.io.factory import create_provider
from framework.session import BufferPool, Session, SessionId, SessionRegistry
from framework.session.context import OpContext
from tests.support.backends import PLATFORM_BACKENDS


class Member(Session):
    """A detached session: only what the registry and groups use."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.accept = True

    def send_encoded(self, frame: bytes) -> bool:  # records instead of queueing to a socket
        if self.accept:
            self.sent.append(frame)
        return self.accept


def add(reg: SessionRegistry) -> Member:
    s = Member()
    s.id = reg.add(s)
    s._groups = set()
    s._state = 1
    return s


def test_slots_generations_and_lifo_reuse() -> None:
    reg = SessionRegistry()
    a, b = add(reg), add(reg)
    assert a.id == SessionId(0, 1) and b.id == SessionId(1, 1)
    assert reg.get(a.id) is a and len(reg) == 2 and a in reg
    assert reg.remove(a)
    assert not reg.remove(a)
    assert reg.get(a.id) is None and a not in reg and len(reg) == 1
    c = add(reg)
    assert c.id == SessionId(0, 2)  # slot reused, generation moved on
    assert reg.get(a.id) is None and reg.get(c.id) is c
    assert set(reg) == {b, c}


def test_resolve_drops_and_counts_stale_contexts() -> None:
    reg = SessionRegistry()
    a = add(reg)
    ctx = OpContext(a.id, a, None)  # type: ignore[arg-type]
    assert reg.resolve(ctx) is a
    reg.remove(a)
    b = add(reg)
    assert b.id.slot == a.id.slot
    assert reg.resolve(ctx) is None  # never the slot's new occupant
    assert reg.stale_completions == 1
    assert reg.resolve(OpContext(b.id, b, None)) is b  # type: ignore[arg-type]


def test_group_membership_broadcast_and_auto_leave() -> None:
    reg = SessionRegistry()
    members = [add(reg) for _ in range(5)]
    room = reg.group("room")
    assert reg.group("room") is room
    for m in members:
        assert room.add(m)
    assert not room.add(members[0])  # already in
    assert len(room) == 5
    members[1].accept = False  # a closing member refuses the frame
    assert room.broadcast({"hello": 1}) == 4
    assert [len(m.sent) for m in members] == [1, 0, 1, 1, 1]
    assert len({m.sent[0] for m in members if m.sent}) == 1
    assert all(m.sent[0] is members[0].sent[0] for m in members if m.sent)  # encoded once
    assert room.broadcast_frame(b"raw", exclude=members[0]) == 3
    reg.remove(members[2])
    assert members[2] not in room and len(room) == 4
    assert room.discard(members[3]) and not room.discard(members[3])
    reg.remove_group("room")
    assert not members[0]._groups


@pytest.fixture(params=PLATFORM_BACKENDS)
def provider(request: pytest.FixtureRequest):
    p = create_provider(request.param, fallback=False)
    assert p.initialize(64, 64)
    yield p
    p.shutdown()


def test_buffer_pool_grows_to_the_cap_then_refuses(provider) -> None:
    pool = BufferPool(provider, 1024, initial_buffers=2, max_buffers=5)
    assert pool.capacity == 2
    bufs = [pool.acquire() for _ in range(5)]
    assert all(b is not None for b in bufs)
    assert pool.capacity == 5 and pool.in_use == 5
    assert len({b.index for b in bufs}) == 5
    assert pool.acquire() is None and pool.acquire() is None
    assert pool.exhausted == 2  # every refusal is counted
    pool.release(bufs[3])
    again = pool.acquire()
    assert again is bufs[3]
    # Buffers never overlap: writes through one view are invisible in the others.
    for i, b in enumerate(bufs):
        b.view[:] = bytes([i]) * b.size
    assert all(bytes(b.view) == bytes([i]) * 1024 for i, b in enumerate(bufs))
    pool.close()
    assert pool.capacity == 0


def test_buffer_pool_registers_slabs_where_the_kernel_can(provider) -> None:
    pool = BufferPool(provider, 512, initial_buffers=4, max_buffers=8, register=True)
    supported = provider.supports_feature("BufferRegistration")
    assert pool.kernel_registered == supported
    buf = pool.acquire()
    assert (buf.buffer_id >= 0) == supported
    unregistered = BufferPool(provider, 512, initial_buffers=4, max_buffers=8, register=False)
    assert not unregistered.kernel_registered and unregistered.acquire().buffer_id == -1
    pool.close()
    unregistered.close()
