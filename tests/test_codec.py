"""Sans-IO codec: framing, every msgpack limit, oversized frames, raw frames (no sockets needed)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.config import load_settings
from framework.session.codec import (
    HEADER,
    FrameDecoder,
    MsgpackPayloadDecoder,
    ProtocolError,
    encode_frame,
    encode_message,
    make_payload_decoder,
    raw_payload,
)

MESSAGES = [{"t": "move", "x": 1, "y": -2}, [1, 2, 3], "hello", b"\x00\xff", None, 3.5, {"nested": [{"a": []}]}]


def msgpack_decoder(max_frame_size: int = 1 << 20, **limits: int) -> FrameDecoder:
    args = dict(
        max_frame_size=max_frame_size,
        max_str_len=1 << 16,
        max_bin_len=1 << 16,
        max_array_len=1024,
        max_map_len=1024,
        max_ext_len=1 << 16,
    )
    args.update(limits)
    return FrameDecoder(max_frame_size, MsgpackPayloadDecoder(**args))


def stream_of(messages: list[object]) -> bytes:
    return b"".join(encode_message(m) for m in messages)


def test_whole_buffer_decodes_every_frame_in_one_pass() -> None:
    out: list[object] = []
    frames = msgpack_decoder().feed(stream_of(MESSAGES), out)
    assert frames == len(MESSAGES)
    assert out == MESSAGES


def test_byte_by_byte_gives_the_same_messages() -> None:
    dec = msgpack_decoder()
    out: list[object] = []
    data = stream_of(MESSAGES)
    total = 0
    for i in range(len(data)):
        total += dec.feed(data[i : i + 1], out)
    assert total == len(MESSAGES)
    assert out == MESSAGES
    assert dec.buffered == 0


def test_partial_tail_is_kept_for_the_next_feed() -> None:
    dec = msgpack_decoder()
    data = stream_of(["a", "b"])
    out: list[object] = []
    assert dec.feed(data[:-2], out) == 1
    assert out == ["a"] and dec.buffered == len(encode_message("b")) - 2
    assert dec.feed(data[-2:], out) == 1
    assert out == ["a", "b"] and dec.buffered == 0


def test_decoding_from_a_reused_memoryview_copies_what_it_keeps() -> None:
    # The server decodes straight out of a receive buffer that the next recv overwrites.
    buf = bytearray(64)
    data = stream_of(["first"]) + encode_message("second")[:5]
    buf[: len(data)] = data
    dec = msgpack_decoder()
    out: list[object] = []
    dec.feed(memoryview(buf)[: len(data)], out)
    rest = encode_message("second")[5:]
    buf[:] = b"\xee" * len(buf)  # the "next recv" scribbles over the buffer
    buf[: len(rest)] = rest
    dec.feed(memoryview(buf)[: len(rest)], out)
    assert out == ["first", "second"]


def test_oversized_announcement_is_an_error_at_the_header() -> None:
    dec = msgpack_decoder(max_frame_size=100)
    with pytest.raises(ProtocolError, match="exceeds max_frame_size"):
        # Only the header arrives: the error must not wait for (or allocate) 4 GB of payload.
        dec.feed(HEADER.pack(0xFFFFFFFF), [])


def test_oversized_header_split_over_feeds_is_detected_when_complete() -> None:
    dec = msgpack_decoder(max_frame_size=100)
    header = HEADER.pack(101)
    dec.feed(header[:3], [])
    assert dec.buffered == 3
    with pytest.raises(ProtocolError):
        dec.feed(header[3:], [])


def test_oversized_frame_after_good_frames_in_one_chunk() -> None:
    dec = msgpack_decoder(max_frame_size=100)
    out: list[object] = []
    with pytest.raises(ProtocolError):
        dec.feed(stream_of(["ok"]) + HEADER.pack(1000) + b"x" * 10, out)


def test_frame_of_exactly_max_frame_size_is_accepted() -> None:
    payload = msgpack.packb(b"x" * 90)
    dec = FrameDecoder(len(payload), raw_payload)
    out: list[object] = []
    assert dec.feed(encode_frame(payload), out) == 1
    assert out == [payload]


@pytest.mark.parametrize(
    ("limit", "value"),
    [
        ("max_str_len", "s" * 101),
        ("max_bin_len", b"b" * 101),
        ("max_array_len", list(range(101))),
        ("max_map_len", {str(i): i for i in range(101)}),
        ("max_ext_len", msgpack.ExtType(1, b"e" * 101)),
    ],
)
def test_every_unpacker_limit_applies(limit: str, value: object) -> None:
    dec = msgpack_decoder(**{limit: 100})
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        dec.feed(encode_message(value), [])
    # Just under the limit passes.
    ok = msgpack_decoder(**{limit: 101})
    out: list[object] = []
    ok.feed(encode_message(value), out)
    assert len(out) == 1


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1", "reserved type byte"),
        (b"\x93\x01\x02", "truncated array"),
        (b"\x01\x02", "two objects in one frame"),
        (b"\x81\x80\x01", "map key that is a map (unhashable)"),
    ],
)
def test_malformed_msgpack_is_a_protocol_error(payload: bytes, why: str) -> None:
    dec = msgpack_decoder()
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(payload), [])


def test_payload_decoder_is_clean_after_an_error() -> None:
    payload_decoder = MsgpackPayloadDecoder(
        max_frame_size=1024, max_str_len=10, max_bin_len=10, max_array_len=10, max_map_len=10, max_ext_len=10
    )
    with pytest.raises(ProtocolError):
        payload_decoder(memoryview(b"\x93\x01\x02"))  # truncated: leaves bytes in the unpacker
    assert payload_decoder(memoryview(msgpack.packb([7]))) == [7]


def test_raw_mode_returns_owned_bytes() -> None:
    dec = FrameDecoder(1024, raw_payload)
    buf = bytearray(encode_frame(b"abc") + encode_frame(b"\xc1 not msgpack"))
    out: list[object] = []
    assert dec.feed(memoryview(buf), out) == 2
    buf[:] = b"\x00" * len(buf)
    assert out == [b"abc", b"\xc1 not msgpack"]
    assert all(type(p) is bytes for p in out)


def test_zero_length_frame_is_a_heartbeat_not_a_message() -> None:
    dec = msgpack_decoder()
    out: list[object] = []
    assert dec.feed(encode_frame(b"") + encode_message(1) + encode_frame(b""), out) == 3
    assert out == [1]


def test_limits_come_from_settings() -> None:
    s = load_settings().session.model_copy(update={"max_array_len": 3})
    decode = make_payload_decoder("msgpack", s)
    assert decode(memoryview(msgpack.packb([1, 2, 3]))) == [1, 2, 3]
    with pytest.raises(ProtocolError):
        decode(memoryview(msgpack.packb([1, 2, 3, 4])))
    assert make_payload_decoder("raw", s) is raw_payload
    with pytest.raises(ValueError):
        make_payload_decoder("json", s)


def test_encode_frame_layout() -> None:
    assert encode_frame(b"hi") == b"\x00\x00\x00\x02hi"
    assert encode_message("hi") == b"\x00\x00\x00\x03" + msgpack.packb("hi")


messages = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=20), st.lists(st.integers(1, 64), max_size=50))
def test_any_split_of_a_stream_decodes_the_same(msgs: list[object], cuts: list[int]) -> None:
    data = stream_of(msgs)
    dec = msgpack_decoder()
    out: list[object] = []
    pos = 0
    for cut in cuts:
        dec.feed(data[pos : pos + cut], out)
        pos += cut
    dec.feed(data[pos:], out)
    assert out == msgs
    assert dec.buffered == 0


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"\xc1", r"FormatError: a byte that starts no msgpack type .*payload starts c1\)"),
        (b"\x91" * 2000 + b"\x00", r"StackError: values nested deeper .*payload starts 91 91"),
        (b"\xd9\x05ab", r"the 4-byte payload ends inside a value \(truncated\).*d9 05 61 62"),
        (b"\x01\x02\x03", r"2 extra bytes after a 1-byte message"),
    ],
)
def test_malformed_msgpack_says_what_was_malformed(payload: bytes, says: str) -> None:
    # FormatError and StackError carry an empty message: "malformed msgpack: " alone says nothing.
    with pytest.raises(ProtocolError, match="malformed msgpack: " + says):
        msgpack_decoder().feed(HEADER.pack(len(payload)) + payload, [])
