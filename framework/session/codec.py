"""Sans-IO wire codec: bytes in, messages out; messages in, frames out.

A frame is a 4-byte unsigned big-endian payload length, then the payload. A zero-length frame is a
heartbeat: it counts as a complete frame (it keeps a connection out of the idle timeout) but is
never delivered as a message. The payload is one msgpack object (default codec) or opaque bytes
("raw" codec).

Safety: a frame that announces more than `max_frame_size` is a `ProtocolError` as soon as its header
is seen; the decoder only ever buffers bytes that actually arrived, so a hostile length never makes
it allocate. msgpack payloads are decoded with every Unpacker limit set from config.

Speed: `FrameDecoder.feed` decodes every complete frame of one recv in a single pass, straight out
of the caller's (reused) receive buffer; only an incomplete tail is copied, into one bytearray.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_U32 = 0xFFFFFFFF
NO_LIMIT = 1 << 62  # feed/drain without a budget
HEARTBEAT_FRAME = b"\x00\x00\x00\x00"

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_packb = msgpack.packb


class ProtocolError(Exception):
    """The peer broke the wire protocol; the session that received it is closed with this reason."""


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One complete frame (header + payload) for a raw payload."""
    n = len(payload)
    if n > MAX_U32:
        raise ValueError(f"payload of {n} bytes does not fit a u32 frame header")
    return _pack_header(n) + bytes(payload)


def encode_message(msg: Any) -> bytes:
    """One complete msgpack frame: used where a message is encoded once for many sessions."""
    payload = _packb(msg)
    return _pack_header(len(payload)) + payload


class MsgpackPayloadDecoder:
    """Decodes one payload into exactly one msgpack object, with every Unpacker limit applied.

    One Unpacker is reused for every payload (feed + unpack is as fast as `unpackb` without
    per-call keyword parsing); after any error it is replaced, so no half-parsed state leaks into
    the next frame.
    """

    __slots__ = ("_new_unpacker", "_unpacker")

    def __init__(
        self,
        *,
        max_frame_size: int,
        max_str_len: int,
        max_bin_len: int,
        max_array_len: int,
        max_map_len: int,
        max_ext_len: int,
    ) -> None:
        self._new_unpacker = partial(
            msgpack.Unpacker,
            max_buffer_size=max(1, max_frame_size),
            max_str_len=max_str_len,
            max_bin_len=max_bin_len,
            max_array_len=max_array_len,
            max_map_len=max_map_len,
            max_ext_len=max_ext_len,
        )
        self._unpacker = self._new_unpacker()

    def __call__(self, payload: memoryview | bytes) -> Any:
        unpacker = self._unpacker
        try:
            unpacker.feed(payload)
            start = unpacker.tell()
            obj = unpacker.unpack()
            used = unpacker.tell() - start
            if used != len(payload):
                raise ProtocolError(
                    f"malformed msgpack: {len(payload) - used} extra bytes after a {used}-byte message"
                    f"{_excerpt(payload)}"
                )
            return obj
        except ProtocolError:
            self._unpacker = self._new_unpacker()
            raise
        except msgpack.OutOfData:
            self._unpacker = self._new_unpacker()
            raise ProtocolError(
                f"malformed msgpack: the {len(payload)}-byte payload ends inside a value (truncated)"
                f"{_excerpt(payload)}"
            ) from None
        except Exception as exc:  # FormatError, StackError, limit ValueErrors, unhashable keys ...
            self._unpacker = self._new_unpacker()
            # msgpack's FormatError and StackError carry no message: say what they mean.
            detail = str(exc) or _MSGPACK_ERRORS.get(type(exc).__name__, "invalid data")
            raise ProtocolError(
                f"malformed msgpack: {type(exc).__name__}: {detail}{_excerpt(payload)}"
            ) from None


_MSGPACK_ERRORS = {
    "FormatError": "a byte that starts no msgpack type (0xc1 is never valid)",
    "StackError": "values nested deeper than the decoder allows",
}


def _excerpt(payload: memoryview | bytes) -> str:
    head = bytes(payload[:16]).hex(" ")
    return f" (payload starts {head}{' ...' if len(payload) > 16 else ''})"


def raw_payload(payload: memoryview | bytes) -> bytes:
    """Raw codec: the payload as owned bytes (the receive buffer it came from is reused)."""
    return payload if isinstance(payload, bytes) else payload.tobytes()


class FrameDecoder:
    """Incremental frame splitter. `feed(data, out)` appends each complete frame's decoded payload
    to `out` and returns the number of complete frames (heartbeats included)."""

    __slots__ = ("_buf", "_decode", "_raw", "max_frame_size")

    def __init__(self, max_frame_size: int, decode: Callable[[memoryview | bytes], Any] = raw_payload) -> None:
        self.max_frame_size = max_frame_size
        self._decode = decode
        self._raw = decode is raw_payload
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next feed."""
        return len(self._buf)

    def feed(
        self,
        data: bytes | bytearray | memoryview,
        out: list[Any],
        max_frames: int = NO_LIMIT,
        max_bytes: int = NO_LIMIT,
    ) -> int:
        """Decode complete frames of `data` (after any bytes held back) into `out`; returns how
        many. At most `max_frames` frames, and no frame is started once `max_bytes` bytes were
        used (the first one always is): the rest is held, undecoded, for `drain`."""
        buf = self._buf
        if not buf:
            if self._raw:
                # Copy the read once; every payload is then a slice of immutable bytes. The common
                # case, exactly one whole frame, needs no splitting loop.
                mv: bytes | memoryview = bytes(data)
                end = len(mv)
                if end > HEADER_SIZE and _unpack_header(mv, 0)[0] == end - HEADER_SIZE <= self.max_frame_size:
                    out.append(mv[HEADER_SIZE:])
                    return 1
            else:
                mv = data if isinstance(data, memoryview) else memoryview(data)
            used, frames = self._split(mv, out, max_frames, max_bytes)
            if used < len(mv):
                buf += mv[used:]
                self._check_pending_header()
            return frames
        buf += data
        return self.drain(out, max_frames, max_bytes)

    def drain(self, out: list[Any], max_frames: int = NO_LIMIT, max_bytes: int = NO_LIMIT) -> int:
        """Decode frames held back (see `feed`'s limits) into `out`; returns how many."""
        buf = self._buf
        if not buf:
            return 0
        with memoryview(buf) as mv:
            used, frames = self._split(mv, out, max_frames, max_bytes)
        if used:
            if used == len(buf):
                self._buf = bytearray()  # emptied: give a flood's held megabytes back at once
            else:
                del buf[:used]  # CPython drops a bytearray's head without moving the rest
        self._check_pending_header()
        return frames

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` behind the bytes already held, undecoded (the caller's budget is spent)."""
        self._buf += data
        self._check_pending_header()

    def has_frame(self) -> bool:
        """A complete frame is held back (decodable by `drain`)."""
        buf = self._buf
        return len(buf) >= HEADER_SIZE and _unpack_header(buf, 0)[0] + HEADER_SIZE <= len(buf)

    def pending_frame_size(self) -> int:
        """The payload size the first held frame announces (0 before its header is complete)."""
        buf = self._buf
        return _unpack_header(buf, 0)[0] if len(buf) >= HEADER_SIZE else 0

    def clear(self) -> int:
        """Drop everything held; returns how many bytes that was."""
        n = len(self._buf)
        self._buf = bytearray()
        return n

    def _split(
        self, mv: memoryview | bytes, out: list[Any], max_frames: int = NO_LIMIT, max_bytes: int = NO_LIMIT
    ) -> tuple[int, int]:
        """Decode complete frames from the start of `mv`, within the limits; returns (bytes used,
        frames). Given `bytes` (the raw codec), payloads are its slices as they are."""
        pos = 0
        end = len(mv)
        frames = 0
        limit = self.max_frame_size
        decode = self._decode
        direct = type(mv) is bytes
        append = out.append
        while end - pos >= HEADER_SIZE and frames < max_frames and pos < max_bytes:
            (n,) = _unpack_header(mv, pos)
            if n > limit:
                raise ProtocolError(f"frame of {n} bytes exceeds max_frame_size {limit}")
            stop = pos + HEADER_SIZE + n
            if stop > end:
                break
            frames += 1
            if n:
                append(mv[pos + HEADER_SIZE : stop] if direct else decode(mv[pos + HEADER_SIZE : stop]))
            pos = stop
        return pos, frames

    def _check_pending_header(self) -> None:
        # An oversized announcement is rejected as soon as its header is complete, even before
        # any of its payload arrives.
        buf = self._buf
        if len(buf) >= HEADER_SIZE:
            (n,) = _unpack_header(buf, 0)
            if n > self.max_frame_size:
                raise ProtocolError(f"frame of {n} bytes exceeds max_frame_size {self.max_frame_size}")


def make_payload_decoder(codec: str, session_settings: Any) -> Callable[[memoryview | bytes], Any]:
    """The payload decoder for a codec name, with limits from `settings.session`."""
    if codec == "raw":
        return raw_payload
    if codec == "msgpack":
        s = session_settings
        return MsgpackPayloadDecoder(
            max_frame_size=s.max_frame_size,
            max_str_len=s.max_str_len,
            max_bin_len=s.max_bin_len,
            max_array_len=s.max_array_len,
            max_map_len=s.max_map_len,
            max_ext_len=s.max_ext_len,
        )
    raise ValueError(f"unknown codec {codec!r}; expected 'msgpack' or 'raw'")
