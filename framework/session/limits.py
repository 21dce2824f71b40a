"""Per-session rate limits: token buckets over what an accepted client sends (docs/SESSIONS.md).

`RateLimits` is built once per server and session class from `settings.session.rate_limit` and the
class's `rate_limits` / `rate_limit_key` hook; `RateLimits.limiter()` gives each session its own
`SessionLimiter` (on its first message, so an idle connection holds none). The session host calls
`SessionLimiter.admit` at one place, where decoded messages are handed to handlers; with no limit
configured a session has no limiter and that place costs one attribute test.

Buckets are refilled lazily from the loop's clock (`host.now`, `TokenBucket.refill`): a few float
operations per delivered batch, nothing per idle session, no timers.

A message over a limit is dropped. Policy "close" closes the session once `max_violations` messages
were dropped; "drop" never does. A msgpack session gets `rate_limit_error(...)` back for a drop (at
most one reply per limit per second, carrying how many were dropped since the previous one), so a
flood of over-limit messages cannot make the server write more than it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framework.session.session import Session

#: The close reason of policy "close" (on_disconnected, logs): stable, clients and tests match it.
RATE_LIMIT_EXCEEDED = "rate limit exceeded"
#: The `code` of the error map below.
RATE_LIMITED = "rate_limited"
#: Limit names of the two framework-wide buckets (per-type limits are named by their key).
MESSAGES = "messages"
BYTES = "bytes"
_REPLY_INTERVAL_S = 1.0


def rate_limit_error(limit: str, per_s: float, dropped: int) -> dict[str, Any]:
    """The error map a msgpack session receives when its messages were dropped by a rate limit:
    `limit` is "messages", "bytes" or a per-type key; `dropped` counts the messages dropped since
    the previous reply (a read that hit several limits counts under the last one). Its shape matches
    the example game's `error` message."""
    unit = "bytes" if limit == BYTES else "messages"
    what = "received bytes" if limit == BYTES else ("messages" if limit == MESSAGES else f"{limit!r} messages")
    return {
        "type": "error",
        "code": RATE_LIMITED,
        "message": f"{what} are limited to {per_s:g} {unit} per second; {dropped} dropped",
        "limit": limit,
        "dropped": dropped,
    }


class TokenBucket:
    """`rate` tokens per second up to `burst`; refilled on use from the caller's clock."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last refill (up to the burst); returns the tokens."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens = tokens
        self.stamp = now
        return tokens


class RateLimits:
    """The limits for one session class on one server (shared by its sessions)."""

    __slots__ = (
        "byte_burst",
        "bytes_per_s",
        "close",
        "enabled",
        "max_violations",
        "message_burst",
        "messages_per_s",
        "reply",
        "types",
    )

    def __init__(self, settings: Any, session_class: type[Session], codec: str) -> None:
        """`settings`: a `RateLimitSettings`; `codec`: the session class's codec name."""
        self.messages_per_s = float(settings.messages_per_s)
        self.message_burst = settings.message_burst
        self.bytes_per_s = float(settings.bytes_per_s)
        self.byte_burst = settings.byte_burst
        self.close = settings.policy == "close"
        self.max_violations = settings.max_violations
        self.reply = settings.error_reply and codec == "msgpack"
        types: dict[str, tuple[float, int]] = {}
        class_limits: Mapping[str, tuple[float, int]] = session_class.rate_limits
        for key, (per_s, burst) in class_limits.items():
            if per_s <= 0 or burst < 1:
                raise ValueError(
                    f"{session_class.__name__}.rate_limits[{key!r}] = {(per_s, burst)!r}: expected "
                    "(messages per second > 0, burst >= 1)"
                )
            types[key] = (float(per_s), int(burst))
        for key, limit in settings.per_type.items():
            types[key] = (float(limit.per_s), int(limit.burst))
        self.types = types
        self.enabled = bool(self.messages_per_s or self.bytes_per_s or types)

    def limiter(self, now: float) -> SessionLimiter | None:
        """A new session's buckets, full; None when nothing is limited."""
        return SessionLimiter(self, now) if self.enabled else None

    def per_s(self, limit: str) -> float:
        """The refill rate (per second) of the limit named `limit`."""
        if limit == MESSAGES:
            return self.messages_per_s
        if limit == BYTES:
            return self.bytes_per_s
        return self.types[limit][0]


class SessionLimiter:
    """One session's buckets and violation count (`Session._limiter`)."""

    __slots__ = ("bytes", "limits", "messages", "replies", "seen_bytes", "types", "violations")

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.limits = limits
        self.messages = TokenBucket(limits.messages_per_s, limits.message_burst, now) if limits.messages_per_s else None
        self.bytes = TokenBucket(limits.bytes_per_s, limits.byte_burst, now) if limits.bytes_per_s else None
        self.types: dict[str, TokenBucket] | None = {} if limits.types else None  # buckets made on first use
        self.seen_bytes = 0  # Session.bytes_in already charged to the byte bucket
        self.violations = 0
        # per limit: [time of the last error reply, drops since it]; made on the first drop
        self.replies: dict[str, list[float]] | None = None

    def admit(self, host: Any, session: Session, msgs: list[Any]) -> list[Any]:
        """The messages of `msgs` within the limits, in order; the rest are dropped and reported to
        `host._rate_limited` (counters, error reply, close). Called with every decoded batch."""
        now = host.now
        limit = ""
        kept = msgs
        bucket = self.bytes
        if bucket is not None:
            # Bytes have already arrived: they are charged in full, and while the bucket is in debt
            # (capped at one burst, so a past flood is not punished forever) messages are dropped.
            received = session.bytes_in
            tokens = bucket.refill(now) - (received - self.seen_bytes)
            self.seen_bytes = received
            if tokens < 0.0:
                if tokens < -bucket.burst:
                    tokens = -bucket.burst
                kept = []
                limit = BYTES
            bucket.tokens = tokens
        bucket = self.messages
        types = self.types
        if kept and types is None:
            if bucket is not None:
                n = len(kept)
                tokens = bucket.refill(now)
                if tokens < n:
                    allowed = int(tokens)
                    kept = kept[:allowed]
                    limit = MESSAGES
                    n = allowed
                bucket.tokens = tokens - n
        elif kept:
            # Per message: its type's bucket (if it has one) and the session-wide one must both
            # have a token; the type's is only spent when both do.
            assert types is not None  # the branch above took the case without per-type limits
            key_of = session.rate_limit_key
            per_type = self.limits.types
            kept = []
            append = kept.append
            for msg in msgs:
                try:
                    key = key_of(msg)
                except Exception:  # a bug in the application's hook: logged, its session handled
                    host._handler_failed(session, "rate_limit_key")
                    key = None
                typed = None
                if key is not None:
                    typed = types.get(key)
                    if typed is None and key in per_type:
                        per_s, burst = per_type[key]
                        typed = types[key] = TokenBucket(per_s, burst, now)
                    if typed is not None and typed.refill(now) < 1.0:
                        limit = key
                        continue
                if bucket is not None:
                    if bucket.refill(now) < 1.0:
                        limit = MESSAGES
                        continue
                    bucket.tokens -= 1.0
                if typed is not None:
                    typed.tokens -= 1.0
                append(msg)
        dropped = len(msgs) - len(kept)
        if dropped:
            self.violations += dropped
            replies = self.replies
            if replies is None:
                replies = self.replies = {}
            entry = replies.get(limit)
            if entry is None:
                entry = replies[limit] = [-_REPLY_INTERVAL_S, 0]
            entry[1] += dropped
            host._rate_limited(session, self, limit, dropped)
        return kept

    def take_report(self, limit: str, now: float, force: bool = False) -> int:
        """How many drops of `limit` the error reply to send now reports, or 0 when one went out
        less than a second ago (unless `force`: the last reply before a close)."""
        replies = self.replies
        assert replies is not None  # made by the drop this report is about
        entry = replies[limit]
        if not force and now - entry[0] < _REPLY_INTERVAL_S:
            return 0
        n = int(entry[1])
        entry[0] = now
        entry[1] = 0
        return n


__all__ = [
    "BYTES",
    "MESSAGES",
    "RATE_LIMITED",
    "RATE_LIMIT_EXCEEDED",
    "RateLimits",
    "SessionLimiter",
    "TokenBucket",
    "rate_limit_error",
]
