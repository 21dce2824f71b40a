"""Per-session rate limits (docs/RELIABILITY.md): token buckets for messages/s and bytes/s, per-type
limits through `Session.rate_limits` / `rate_limit_key` and `session.rate_limit.per_type`, and the
two policies: drop with a counted error reply, or close after `max_violations` drops with reason
"rate limit exceeded". Real sockets on loopback, both session I/O paths of every Linux backend.

The buckets refill slowly (≤ 1 token/s) so what a test sends within a second decides the outcome,
whatever the machine's speed."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from framework.session import Server, Session
from framework.session.limits import RATE_LIMIT_EXCEEDED, RateLimits, TokenBucket, rate_limit_error
from tests.support.backends import SESSION_BACKENDS
from tests.support.session import (
    FrameClient,
    RecordingEcho,
    make_settings,
    msg_frame,
    on_loop,
    running_server,
    wait_for,
)


class _Echo(RecordingEcho):
    __slots__ = ()
    reasons: ClassVar[list[str]] = []  # this module's own record


class _Typed(_Echo):
    __slots__ = ()
    rate_limits: ClassVar[dict[str, tuple[float, int]]] = {"chat": (0.5, 2), "shout": (100.0, 100)}

    def rate_limit_key(self, msg: Any) -> str | None:
        kind = msg.get("type") if type(msg) is dict else None
        return kind if type(kind) is str else None


@pytest.fixture(autouse=True)
def _fresh_reasons():
    _Echo.reasons = []
    yield


def _limits(**fields: Any) -> dict[str, Any]:
    base = {"messages_per_s": 0, "bytes_per_s": 0, "policy": "drop", "error_reply": True}
    return {"rate_limit": {**base, **fields}}


def _pipeline(client: FrameClient, msgs: list[Any]) -> None:
    """All frames in one write, so the server sees them as fast as it can read."""
    client.send_raw(b"".join(msg_frame(m) for m in msgs))


def _stat(server, name: str) -> Any:
    return on_loop(server, lambda: server.stats[name])


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(2.0, 3, now=0.0)
    assert bucket.refill(0.0) == 3.0
    bucket.tokens = 0.0
    assert bucket.refill(0.5) == 1.0  # 0.5 s at 2/s
    assert bucket.refill(100.0) == 3.0  # never above the burst


def test_error_reply_is_one_documented_map():
    assert rate_limit_error("chat", 5, 3) == {
        "type": "error",
        "code": "rate_limited",
        "message": "'chat' messages are limited to 5 messages per second; 3 dropped",
        "limit": "chat",
        "dropped": 3,
    }


def test_bad_class_rate_limits_are_refused_when_the_server_is_made():
    class Bad(Session):
        rate_limits: ClassVar[dict[str, tuple[float, int]]] = {"move": (0, 10)}

    settings = make_settings(SESSION_BACKENDS[0])
    with pytest.raises(ValueError, match=r"Bad.rate_limits\['move'\].*messages per second > 0"):
        RateLimits(settings.session.rate_limit, Bad, "msgpack")
    with pytest.raises(ValueError, match=r"Bad\.rate_limits"):
        Server(settings, Bad)


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_message_limit_drops_the_excess_with_a_counted_error_reply_and_keeps_the_session(backend: str):
    settings = make_settings(backend, session=_limits(messages_per_s=0.001, message_burst=5))
    with running_server(settings, _Echo) as server:
        client = FrameClient(server.addresses[0])
        _pipeline(client, [{"n": i} for i in range(8)])
        got = [client.recv() for _ in range(6)]  # five echoes and one error, whatever the batching
        errors = [m for m in got if m.get("type") == "error"]
        assert [m for m in got if "n" in m] == [{"n": i} for i in range(5)]
        assert len(errors) == 1 and errors[0]["code"] == "rate_limited" and errors[0]["limit"] == "messages"
        assert 1 <= errors[0]["dropped"] <= 3
        wait_for(lambda: _stat(server, "rate_limited") == 3, what="three drops counted")
        assert _stat(server, "rate_limit_replies") == 1
        # Policy "drop": the session stays; a later message within the limit is still dropped
        # (the bucket refills at 0.001/s), counted, and the session is still not closed.
        client.send({"n": 99})
        wait_for(lambda: _stat(server, "rate_limited") == 4, what="fourth drop counted")
        assert on_loop(server, lambda: len(server.registry)) == 1 and _Echo.reasons == []
        client.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_policy_close_closes_after_max_violations_with_its_reason(backend: str):
    settings = make_settings(
        backend, session=_limits(messages_per_s=0.001, message_burst=2, policy="close", max_violations=3)
    )
    with running_server(settings, _Echo) as server:
        bystander = FrameClient(server.addresses[0])
        flooder = FrameClient(server.addresses[0])
        for i in range(2):  # the burst
            flooder.send({"n": i})
            assert flooder.recv() == {"n": i}
        _pipeline(flooder, [{"n": i} for i in range(2, 12)])
        got = []
        flooder.sock.settimeout(10)
        try:
            while True:
                got.append(flooder.recv())
        except (EOFError, ConnectionResetError):
            pass
        assert got and all(m["code"] == "rate_limited" for m in got)  # nothing else got through
        wait_for(lambda: _Echo.reasons == [RATE_LIMIT_EXCEEDED], what="the flooder closed")
        assert _stat(server, "rate_limit_closes") == 1
        bystander.send({"still": "served"})
        assert bystander.recv() == {"still": "served"}
        bystander.close()
        flooder.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_byte_limit_drops_what_exceeds_the_byte_budget(backend: str):
    burst = (1 << 20) + 4096  # just over the default max_frame_size (the settings insist)
    settings = make_settings(backend, session=_limits(bytes_per_s=1, byte_burst=burst))
    with running_server(settings, _Echo) as server:
        client = FrameClient(server.addresses[0])
        blob = {"b": b"x" * 400_000}  # two fit the burst, not three
        for _ in range(2):
            client.send(blob)
            assert client.recv() == blob
        client.send(blob)
        error = client.recv()
        assert error["code"] == "rate_limited" and error["limit"] == "bytes" and error["dropped"] == 1
        assert _stat(server, "rate_limited") == 1
        client.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_per_type_limits_from_the_class_and_from_settings(backend: str):
    # Class: chat 0.5/s burst 2; settings: "move" 0.001/s burst 1 (a key the class does not have)
    # and "shout" replaced by 0.001/s burst 1. Untyped messages pass (no session-wide limit here).
    per_type = {"move": {"per_s": 0.001, "burst": 1}, "shout": {"per_s": 0.001, "burst": 1}}
    settings = make_settings(backend, session=_limits(per_type=per_type))
    with running_server(settings, _Typed) as server:
        client = FrameClient(server.addresses[0])
        _pipeline(client, [{"type": "chat", "i": i} for i in range(3)])
        got = [client.recv() for _ in range(3)]
        assert [m for m in got if m.get("type") == "chat"] == [{"type": "chat", "i": 0}, {"type": "chat", "i": 1}]
        error = next(m for m in got if m.get("type") == "error")
        assert error["limit"] == "chat" and error["dropped"] == 1
        # Other keys have their own buckets; a dropped one is counted (the reply waits a second).
        _pipeline(client, [{"type": "move"}, {"type": "move"}, {"type": "shout"}, {"type": "shout"}])
        _pipeline(client, [{"other": i} for i in range(20)])
        got = []
        while len(got) < 22:
            msg = client.recv()
            if msg.get("type") != "error":  # a reply only if a second has passed since the last
                got.append(msg)
        assert got[:2] == [{"type": "move"}, {"type": "shout"}]
        assert got[2:] == [{"other": i} for i in range(20)]
        assert _stat(server, "rate_limited") == 3
        client.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_no_limits_means_no_limiter_and_error_reply_off_means_no_reply(backend: str):
    settings = make_settings(backend, session=_limits())
    with running_server(settings, _Echo) as server:
        client = FrameClient(server.addresses[0])
        _pipeline(client, [{"n": i} for i in range(50)])
        assert [client.recv() for _ in range(50)] == [{"n": i} for i in range(50)]
        limiters = on_loop(server, lambda: [s._limiter for s in server.registry])
        assert limiters == [None]  # nothing is looked at per message
        client.close()
    settings = make_settings(backend, session=_limits(messages_per_s=0.001, message_burst=1, error_reply=False))
    with running_server(settings, _Echo) as server:
        client = FrameClient(server.addresses[0])
        _pipeline(client, [{"n": 0}, {"n": 1}, {"n": 2}])
        assert client.recv() == {"n": 0}
        wait_for(lambda: _stat(server, "rate_limited") == 2, what="two drops")
        client.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no reply, and no close
            client.sock.recv(64)
        client.close()


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_default_limits_let_a_16_deep_pipeline_and_ping_pong_through(backend: str):
    settings = make_settings(backend)  # the shipped defaults
    with running_server(settings, _Echo) as server:
        client = FrameClient(server.addresses[0])
        for round_ in range(50):
            _pipeline(client, [{"r": round_, "i": i} for i in range(16)])
            assert [client.recv() for _ in range(16)] == [{"r": round_, "i": i} for i in range(16)]
        for i in range(200):
            client.send(i)
            assert client.recv() == i
        assert _stat(server, "rate_limited") == 0
        client.close()


class _BadKey(_Echo):
    __slots__ = ()
    rate_limits: ClassVar[dict[str, tuple[float, int]]] = {"chat": (100.0, 100)}

    def rate_limit_key(self, msg: Any) -> str | None:
        return msg["type"]  # KeyError for a message without "type"


@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_an_exception_in_rate_limit_key_is_a_handler_error_of_that_session(backend: str):
    settings = make_settings(backend, session=_limits())
    with running_server(settings, _BadKey) as server:
        good = FrameClient(server.addresses[0])
        bad = FrameClient(server.addresses[0])
        bad.send({"type": "chat"})
        assert bad.recv() == {"type": "chat"}
        bad.send({"no": "type"})
        assert bad.closed_by_peer()
        wait_for(lambda: _Echo.reasons == ["handler error in rate_limit_key"], what="bad session closed")
        good.send({"type": "chat"})
        assert good.recv() == {"type": "chat"}
        good.close()
        bad.close()
