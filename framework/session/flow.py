"""Per-session flow-control state: held input, paused reading, and what the memory budget and the
slow-consumer timeout track.

A session gets a `Flow` only when it needs one: input held back (a partial frame, the read budget
spent, an ordered async handler running) or output over its high-water mark. A connection that
just exchanges messages keeps the empty slot (the per-turn read budget is tracked by the host for
the sessions of the current turn only). The host (framework/session/host.py) owns the logic; this is the state it keeps apart from
the Session's own fields, so a user subclass never sees or collides with it.
"""

from __future__ import annotations


class Flow:
    """A session's input flow-control state: its read budget in the current loop turn, held
    (undecoded) input, and whether reading is paused. Made with the session's first input."""

    __slots__ = (
        "held",
        "out_acct",
        "parked",
        "progress_at",
        "queued",
        "rpaused",
        "written",
    )

    def __init__(self) -> None:
        # Input goes to the decoder's hold, undecoded: the budget ran out with frames left, or an
        # ordered async handler runs. Served round-robin, one budget per turn (host._serve_held).
        self.held = False
        self.queued = False  # in the host's round-robin queue of held sessions
        self.rpaused = False  # reading paused (held input over read_pause_bytes, or output behind)
        self.parked = False  # per-operation receives: the next receive waits for the resume
        self.out_acct = 0  # output bytes counted in the host's memory total (sessions over high water)
        self.written = -1  # bytes the peer had taken at the last slow-consumer check
        self.progress_at = 0.0  # when it last took any
