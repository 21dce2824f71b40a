"""Parser promise, sans-IO half: the codec either yields messages or raises `ProtocolError` — never
any other exception, never memory beyond what arrived (bounded by max_frame_size) — and its output
does not depend on how the bytes were split into receives.

Property tests run with the "reliability" hypothesis profile in `make test` and with the "fuzz"
profile (>= 100,000 examples each) in `make fuzz` (see tests/support/hostile.py). The end-to-end
half (hostile frames over loopback close only that session) is at the end of this file.
"""

from __future__ import annotations

import socket
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from framework.config import SessionSettings
from framework.session.codec import (
    HEADER_SIZE,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    encode_message,
    make_payload_decoder,
)
from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import (
    PARSER_SETTINGS,
    EchoSession,
    connect,
    frame,
    msg_frame,
    read_until_closed,
    recv_message,
    round_trip,
    serving,
    wait_for,
)

# Small limits so random inputs hit every limit often.
LIMITS = SessionSettings(
    max_frame_size=256,
    max_str_len=64,
    max_bin_len=64,
    max_array_len=16,
    max_map_len=16,
    max_ext_len=64,
)


def msgpack_decoder(limits: SessionSettings = LIMITS) -> FrameDecoder:
    return FrameDecoder(limits.max_frame_size, make_payload_decoder("msgpack", limits))


def raw_decoder(max_frame_size: int = 256) -> FrameDecoder:
    return FrameDecoder(max_frame_size, make_payload_decoder("raw", LIMITS))


def feed_chunks(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Any], ProtocolError | None, int]:
    """Feed chunks until the first ProtocolError. Returns (messages, error, most bytes buffered).
    Any exception other than ProtocolError propagates and fails the test."""
    out: list[Any] = []
    peak = 0
    for chunk in chunks:
        try:
            decoder.feed(chunk, out)
        except ProtocolError as exc:
            return out, exc, peak
        peak = max(peak, decoder.buffered)
        # Bounded memory: never more than one incomplete frame (header + max payload) held back.
        assert decoder.buffered <= HEADER_SIZE + decoder.max_frame_size
    return out, None, peak


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def same(a: list[Any], b: list[Any]) -> bool:
    # repr: NaN != NaN, but the same decoded NaN reprs the same.
    return repr(a) == repr(b)


# A stream that looks like frames often enough to reach the msgpack layer: random frames whose
# header is right, wrong or oversized, plus raw garbage.
_payload = st.binary(max_size=80)
_good_frame = _payload.map(frame)
_bad_header = st.tuples(st.integers(0, 2**32 - 1), _payload).map(lambda t: struct.pack(">I", t[0]) + t[1])
_stream = st.lists(st.one_of(_good_frame, _bad_header, st.binary(max_size=12)), max_size=8).map(b"".join)


@PARSER_SETTINGS
@given(data=st.one_of(st.binary(max_size=600), _stream), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_msgpack_codec_yields_messages_or_protocol_error_whole_split_and_byte_by_byte(data, cuts):
    whole, whole_err, _ = feed_chunks(msgpack_decoder(), [data])
    chunked, chunked_err, _ = feed_chunks(msgpack_decoder(), split(data, cuts))
    bytewise, byte_err, peak = feed_chunks(msgpack_decoder(), [data[i : i + 1] for i in range(len(data))])
    # The split into receives never changes the outcome: same messages, error at the same frame.
    assert same(whole, chunked) and same(whole, bytewise)
    assert (whole_err is None) == (chunked_err is None) == (byte_err is None)
    assert peak <= HEADER_SIZE + LIMITS.max_frame_size


@PARSER_SETTINGS
@given(data=st.one_of(st.binary(max_size=600), _stream), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_raw_codec_yields_frames_or_protocol_error_however_split(data, cuts):
    whole, whole_err, _ = feed_chunks(raw_decoder(), [data])
    bytewise, byte_err, _ = feed_chunks(raw_decoder(), [data[i : i + 1] for i in range(len(data))])
    chunked, chunked_err, _ = feed_chunks(raw_decoder(), split(data, cuts))
    assert whole == bytewise == chunked
    assert (whole_err is None) == (byte_err is None) == (chunked_err is None)
    assert all(isinstance(p, bytes) and len(p) <= 256 for p in whole)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_obj = st.recursive(
    _leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=5)),
    max_leaves=12,
)


@PARSER_SETTINGS
@given(msgs=st.lists(_obj, max_size=10), heartbeats=st.lists(st.integers(0, 10), max_size=3),
       cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_valid_streams_round_trip_however_split(msgs, heartbeats, cuts):
    frames = [encode_message(m) for m in msgs]
    for pos in heartbeats:  # zero-length frames count as frames but are never delivered
        frames.insert(min(pos, len(frames)), encode_frame(b""))
    data = b"".join(frames)
    decoder = FrameDecoder(
        1 << 20, make_payload_decoder("msgpack", SessionSettings())
    )
    out, err, _ = feed_chunks(decoder, split(data, cuts))
    assert err is None
    assert same(out, msgs)
    assert decoder.buffered == 0


@PARSER_SETTINGS
@given(garbage=st.binary(min_size=1, max_size=60), good=_obj)
def test_a_malformed_frame_leaves_no_state_for_the_next_decoder_use(garbage, good):
    # The payload decoder is shared by every session of a codec; after one session's bad frame the
    # next frame (any session) must decode from a clean state.
    payload_decoder = make_payload_decoder("msgpack", LIMITS)
    bad = FrameDecoder(LIMITS.max_frame_size, payload_decoder)
    try:
        bad.feed(frame(garbage), [])
    except ProtocolError:
        pass
    out: list[Any] = []
    fresh = FrameDecoder(1 << 20, payload_decoder)
    packed = msgpack.packb(good)
    try:
        fresh.feed(frame(packed), out)
    except ProtocolError:
        # Only a limit of LIMITS (not leftover state) may reject a valid object: a fresh
        # Unpacker with the same limits must reject it too.
        reference = msgpack.Unpacker(**_unpacker_limits(LIMITS))
        with pytest.raises(Exception):  # noqa: B017 - BufferFull, ValueError ...: any rejection
            reference.feed(packed)
            reference.unpack()
        return
    assert same(out, [good])


def _unpacker_limits(s: SessionSettings) -> dict[str, int]:
    return {
        "max_buffer_size": s.max_frame_size,
        "max_str_len": s.max_str_len,
        "max_bin_len": s.max_bin_len,
        "max_array_len": s.max_array_len,
        "max_map_len": s.max_map_len,
        "max_ext_len": s.max_ext_len,
    }


# ---------------------------------------------------------------------------------------------- hostile
# Each is a complete frame whose header is honest (small) but whose payload lies or abuses nesting.
HOSTILE_PAYLOADS = {
    "deep nesting (arrays)": b"\x91" * 5000 + b"\xc0",
    "deep nesting (maps)": b"\x81\xa1k" * 2000 + b"\xc0",
    "array32 announcing 4G items": b"\xdd\xff\xff\xff\xff",
    "map32 announcing 4G pairs": b"\xdf\xff\xff\xff\xff",
    "str32 announcing 4 GiB": b"\xdb\xff\xff\xff\xff" + b"x" * 16,
    "bin32 announcing 4 GiB": b"\xc6\xff\xff\xff\xff" + b"x" * 16,
    "ext32 announcing 4 GiB": b"\xc9\xff\xff\xff\xff\x01" + b"x" * 16,
    "array over max_array_len": b"\xdc\x00\x20" + b"\xc0" * 32,
    "map over max_map_len": b"\xde\x00\x20" + b"".join(bytes([0xA1, 0x41 + i % 26]) + b"\xc0" for i in range(32)),
    "str over max_str_len": b"\xd9\x80" + b"s" * 128,
    "truncated message": b"\x93\x01\x02",
    "two messages in one frame": b"\x01\x02",
    "reserved byte 0xc1": b"\xc1",
    "unhashable map key": b"\x81\x90\x00",
    "huge nested arrays of empty arrays": b"\xdc\x00\x10" + (b"\xdc\x00\x10" + b"\x90" * 16) * 16,
}


@pytest.mark.parametrize("name", list(HOSTILE_PAYLOADS))
def test_hostile_payload_in_a_small_frame_is_a_protocol_error_with_bounded_memory(name):
    payload = HOSTILE_PAYLOADS[name]
    limits = SessionSettings(
        max_frame_size=64 * 1024, max_str_len=64, max_bin_len=64, max_array_len=16, max_map_len=16,
        max_ext_len=64,
    )
    data = frame(payload)
    if name == "huge nested arrays of empty arrays":
        # 16 x 16 is within every limit: it decodes; the property is only bounded memory.
        data = frame(b"\x9f" + (b"\x9f" + b"\x90" * 15) * 15)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = FrameDecoder(limits.max_frame_size, make_payload_decoder("msgpack", limits))
        tracemalloc.start()
        try:
            out, err, _ = feed_chunks(decoder, chunks)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Never more than a small multiple of the frame (an announced 4 GiB is never allocated).
        assert peak < 2 * 1024 * 1024, f"{name}: peak allocation {peak} bytes"
        if name == "huge nested arrays of empty arrays":
            assert err is None and len(out) == 1
        else:
            assert isinstance(err, ProtocolError), f"{name}: decoded {out!r}"
            assert "msgpack" in str(err)


@pytest.mark.parametrize("announced", [257, 1 << 20, 2**32 - 1])
def test_oversized_length_is_rejected_from_the_header_alone(announced):
    decoder = msgpack_decoder()
    header = struct.pack(">I", announced)
    out: list[Any] = []
    for i in range(HEADER_SIZE - 1):
        decoder.feed(header[i : i + 1], out)  # an incomplete header is not yet an error
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="exceeds max_frame_size"):
            decoder.feed(header[-1:], out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert out == []


def test_truncated_frame_is_held_not_delivered_and_bounded():
    decoder = msgpack_decoder()
    out: list[Any] = []
    body = msgpack.packb("x" * 40)
    decoder.feed(frame(body)[:-1], out)
    assert out == [] and decoder.buffered == HEADER_SIZE + len(body) - 1
    decoder.feed(frame(body)[-1:], out)
    assert out == ["x" * 40] and decoder.buffered == 0


# ---------------------------------------------------------------------------------------------- end to end
# Over loopback, on every backend: each hostile input closes only its own session, with a logged
# reason, while a well-behaved client on the same server keeps its round trips.
E2E_CASES = {
    "oversized length": struct.pack(">I", 2**32 - 1) + b"xx",
    "oversized length, header only": struct.pack(">I", 64 * 1024 + 1),
    "truncated msgpack in a complete frame": frame(b"\x93\x01\x02"),
    "malformed msgpack": frame(b"\xc1"),
    "deep nesting": frame(b"\x91" * 5000 + b"\xc0"),
    "array32 announcing 4G items": frame(b"\xdd\xff\xff\xff\xff"),
    "map over max_map_len": frame(b"\xde\x00\x20" + b"".join(bytes([0xA1, 0x41 + i]) + b"\xc0" for i in range(32))),
    "str32 announcing 4 GiB": frame(b"\xdb\xff\xff\xff\xff" + b"x" * 100),
    "garbage after valid frames": msg_frame({"ok": 1}) + frame(b"\x01\x02\x03"),
}


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_hostile_frames_close_only_their_session_with_a_logged_reason(backend):
    with serving(
        backend,
        session={"max_frame_size": 64 * 1024, "max_array_len": 16, "max_map_len": 16, "max_str_len": 1024,
                 "max_bin_len": 1024, "max_ext_len": 1024},
    ) as st:
        good = connect(st.address)
        try:
            round_trip(good, {"hello": "before"})
            for i, (name, data) in enumerate(E2E_CASES.items()):
                with capture_logs() as logs:
                    bad = connect(st.address)
                    bad.sendall(data)
                    received = read_until_closed(bad)
                    bad.close()
                    wait_for(lambda i=i: len(st.reasons) > i, what=f"{name}: session not closed")
                # A protocol error aborts the session (queued output is dropped): the reply to a
                # valid frame in the same receive may be lost, but nothing after the bad frame runs.
                allowed = {b"", msg_frame({"ok": 1})} if name == "garbage after valid frames" else {b""}
                assert received in allowed, (name, received)
                sid, reason = st.reasons[-1]
                assert reason.startswith("protocol error: "), (name, reason)
                logged = [e for e in logs if e.get("session") == str(sid)]
                assert any(e.get("reason") == reason for e in logged), (name, logs)
                round_trip(good, {"after": name})  # the other session is unaffected
            assert st.sessions() == 1
            assert st.server.stats["protocol_errors"] == len(E2E_CASES)
        finally:
            good.close()


@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_truncated_frame_then_fin_is_discarded_and_closes_cleanly(backend):
    received: list[Any] = []

    class Recording(EchoSession):
        def on_message(self, msg: Any) -> None:
            received.append(msg)
            self.send(msg)

    with serving(backend, Recording) as st:
        s = connect(st.address)
        s.sendall(msg_frame("whole") + msg_frame("cut")[:-1])
        assert recv_message(s) == "whole"
        s.shutdown(socket.SHUT_WR)
        assert read_until_closed(s) == b""
        s.close()
        wait_for(lambda: st.reasons, what="session closed")
        assert st.reasons[0][1] == "peer closed"
        assert received == ["whole"]  # the partial frame is never delivered
        assert st.sessions() == 0
