"""Close reasons as a fixed set of codes, for metrics labels and log levels.

A session's close reason is free text (`"protocol error: frame of 9 MB exceeds ..."`, an app's own
`session.close("kicked")`); metrics need a bounded label set. `close_code(reason)` maps a reason to
one of `CLOSE_CODES` and, for an I/O failure, the error's name (`ErrorCode` member or errno name),
cached per distinct reason string so a close costs one dict look-up.
"""

from __future__ import annotations

# Every code `close_code` can return and what it means, in the order docs and dashboards list them.
CLOSE_CODE_MEANINGS: dict[str, str] = {
    "peer_closed": "the peer closed its side (EOF), after its last reply went out",
    "peer_reset": "the peer vanished: connection reset or broken pipe",
    "app": 'the application closed it (session.close(), default reason "closed by server", or its own reason)',
    "server_shutdown": "drained by a server shutdown",
    "client_closed": "drained by Client.close()",
    "drain_timeout": "still sending when the drain deadline (shutdown.drain_timeout_s) passed",
    "idle_timeout": "no frame for session.idle_timeout_s",
    "slow_consumer": "the peer stopped reading (write_hard_cap or slow_consumer_timeout_s)",
    "memory_budget": "shed to keep server.memory_budget_bytes",
    "protocol_error": "an invalid frame or a malformed payload",
    "handler_error": "a handler raised (session.handler_errors: close)",
    "rate_limited": "over a rate limit",
    "first_message_timeout": "sent no real message within session.first_message_timeout_s",
    "evicted": "an unauthenticated session that gave its slot to a new connection at max_connections",
    "connect_failed": "an outgoing connect did not complete",
    "io_error": "another receive, send or stream failure (raon_io_errors_total names it)",
    "server_error": "the provider failed; the server closed everything",
}
CLOSE_CODES: tuple[str, ...] = tuple(CLOSE_CODE_MEANINGS)

# Peer-caused ends: normal on the internet, so logged at debug, not as an aborted session.
PEER_CODES = frozenset({"peer_closed", "peer_reset"})
_PEER_ERRORS = frozenset({"CONNECTION_RESET", "EPIPE", "ECONNABORTED", "ESHUTDOWN"})

_EXACT = {
    "peer closed": "peer_closed",
    "connection reset": "peer_reset",
    "closed by server": "app",
    "server shutdown": "server_shutdown",
    "client closed": "client_closed",
    "drain timeout": "drain_timeout",
    "idle timeout": "idle_timeout",
    "slow consumer": "slow_consumer",
    "server error": "server_error",
    "first message timeout": "first_message_timeout",
    "evicted for a new connection": "evicted",
}
_PREFIXES = (
    ("protocol error", "protocol_error"),
    ("memory budget", "memory_budget"),
    ("handler error", "handler_error"),
    ("rate limit", "rate_limited"),
    ("connect failed", "connect_failed"),
)
_IO_WORDS = ("recv ", "send ", "stream ", "receive could not", "send could not")
_CACHE_MAX = 512  # distinct reason strings remembered (an app's own reasons are few)
_cache: dict[str, tuple[str, str | None]] = {}


def close_code(reason: str) -> tuple[str, str | None]:
    """(code, io_error) for a close reason: `code` is one of CLOSE_CODES; `io_error` names the
    failed operation's error (e.g. "EPIPE", "CONNECTION_RESET") or is None."""
    hit = _cache.get(reason)
    if hit is not None:
        return hit
    out = _classify(reason)
    if len(_cache) < _CACHE_MAX:
        _cache[reason] = out
    return out


def _classify(reason: str) -> tuple[str, str | None]:
    exact = _EXACT.get(reason)
    if exact is not None:
        return exact, "CONNECTION_RESET" if exact == "peer_reset" else None
    for prefix, code in _PREFIXES:
        if reason.startswith(prefix):
            if code == "connect_failed":
                return code, "CONNECTION_REFUSED" if "refused" in reason else None
            return code, None
    if reason.startswith(_IO_WORDS):
        # "<op> error: NAME" (host._describe_failure), "<op> timeout", "<op> cancelled"
        _, sep, name = reason.partition(" error: ")
        if not sep:
            name = reason.split(" ", 1)[1].replace(" ", "_").upper()
        if name in _PEER_ERRORS:
            return "peer_reset", name
        return "io_error", name
    return "app", None  # any other reason came from the application's session.close(reason)
