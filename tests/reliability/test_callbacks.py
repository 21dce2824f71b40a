"""Callback promise: an exception in a user handler is logged with the session id (and traceback),
then closes or keeps that session as configured (session.handler_errors), and never stops the
loop: other sessions, new connections, timers and the disconnect handler keep working."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    EchoSession,
    connect,
    msg_frame,
    read_until_closed,
    recv_message,
    round_trip,
    serving,
    wait_for,
)


class Faulty(EchoSession):
    """Raises where the client asks: in on_message ("boom"), after an await ("async boom"),
    in on_connected (the first session of the server only) and always in on_disconnected."""

    def on_connected(self) -> None:
        server = self.server
        if not getattr(server, "connected_once", False):
            server.connected_once = True
            raise RuntimeError("on_connected failed")

    def on_message(self, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("on_message failed")
        if msg == "async boom":
            return self._async_fail()
        self.send(msg)
        return None

    async def _async_fail(self) -> None:
        await self.server.sleep(0.01)
        raise RuntimeError("async on_message failed")

    def on_disconnected(self, reason: str) -> None:
        super().on_disconnected(reason)
        raise RuntimeError("on_disconnected failed")  # must not disturb anything else


def _failing_timer() -> None:
    raise RuntimeError("timer failed")


def _logged_error(logs: list[dict[str, Any]], sid: Any) -> dict[str, Any]:
    hits = [e for e in logs if e.get("session") == str(sid) and e.get("log_level") in ("error", "exception")]
    assert hits, f"no error logged for session {sid}: {logs}"
    assert any(e.get("exc_info") for e in hits), "the traceback is not logged"
    return hits[0]


@pytest.mark.parametrize("policy", ["close", "keep"])
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_handler_exceptions_close_or_keep_the_session_are_logged_and_never_stop_the_loop(backend, policy):
    # A long drain timeout: a graceful close must end on the peer's FIN, not by timing out.
    with capture_logs() as logs, serving(
        backend, Faulty, session={"handler_errors": policy}, shutdown={"drain_timeout_s": 60.0}
    ) as st:
        ticks: list[int] = []
        st.on_loop(lambda: st.server.call_every(0.01, lambda: ticks.append(1)))
        st.on_loop(lambda: st.server.call_every(0.01, _failing_timer))  # raises on every tick
        first = connect(st.address)  # its on_connected raises
        other = connect(st.address)
        round_trip(other, "other")
        if policy == "close":
            assert read_until_closed(first) == b""
            first.close()  # the server half-closed; it finalizes on our FIN
            wait_for(lambda: st.reasons, what="first session closed")
            sid, reason = st.reasons[0]
            assert reason == "handler error in on_connected"
            _logged_error(logs, sid)
        else:
            round_trip(first, "kept after on_connected failed")
        for trigger in ("boom", "async boom"):
            s = first if policy == "keep" else connect(st.address)
            closed_before = len(st.reasons)
            s.sendall(msg_frame("before") + msg_frame(trigger) + msg_frame("after"))
            assert recv_message(s) == "before"  # replies queued before the error are delivered
            if policy == "close":
                assert read_until_closed(s) == b"", "nothing after the failing message is handled"
                s.close()  # our FIN completes the server's graceful close
                wait_for(lambda n=closed_before: len(st.reasons) > n, what="session closed")
                sid, reason = st.reasons[-1]
                assert reason == "handler error in on_message", reason
                _logged_error(logs, sid)
            else:
                assert recv_message(s) == "after"  # kept: later messages are still handled
        if policy == "keep":
            round_trip(first, "kept")
            assert st.reasons == []  # nobody was closed
            sid = st.on_loop(lambda: next(iter(st.server.registry)).id)
            _logged_error(logs, sid)
        # The loop never stopped: other sessions, new sessions and timers all still work.
        round_trip(other, "still served")
        late = connect(st.address)
        round_trip(late, "new session")
        n = len(ticks)
        wait_for(lambda: len(ticks) > n, what="timers still run")
        assert st.server.stats["handler_errors"] >= 3
        assert any(e.get("event") == "timer callback raised" and e.get("exc_info") for e in logs)
        for c in (first, other, late):
            c.close()
        wait_for(lambda: st.sessions() == 0, what="sessions closed")
    # on_disconnected raised for every session: each logged, and the shutdown still completed.
    assert sum(1 for e in logs if e.get("handler") == "on_disconnected") >= 3
