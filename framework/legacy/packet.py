"""RAON's packet framing: `struct PacketHeader { uint16 size; uint16 id; }` before every packet.

`size` counts the whole packet, header included, and both fields are little-endian (the struct is
sent as it lies in memory on x86 Windows). The framework's own codec (u32 big-endian length +
msgpack) is different; this module exists so legacy peers keep talking to ported code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("<HH")


class PacketError(ValueError):
    """A header that cannot be right (size smaller than the header, or over the limit)."""


@dataclass(slots=True, frozen=True)
class PacketHeader:
    """The 4-byte header: `size` of the whole packet (header included) and the packet `id`."""

    size: int
    id: int

    SIZE = _HEADER.size  # 4
    MAX_PACKET_SIZE = 0xFFFF

    def pack(self) -> bytes:
        """The header's 4 bytes."""
        return _HEADER.pack(self.size, self.id)

    def pack_into(self, buffer: bytearray | memoryview, offset: int = 0) -> None:
        """Write the header's 4 bytes into `buffer` at `offset`."""
        _HEADER.pack_into(buffer, offset, self.size, self.id)

    @classmethod
    def unpack_from(cls, buffer: bytes | bytearray | memoryview, offset: int = 0) -> PacketHeader:
        """Read a header from `buffer` at `offset` (no check of the size: see `read_packets`)."""
        size, packet_id = _HEADER.unpack_from(buffer, offset)
        return cls(size, packet_id)


def build_packet(packet_id: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Header + payload as one packet."""
    size = _HEADER.size + len(payload)
    if size > PacketHeader.MAX_PACKET_SIZE:
        raise PacketError(f"packet of {size} bytes exceeds the uint16 size field")
    return _HEADER.pack(size, packet_id) + bytes(payload)


def packet_id_of(data: bytes | bytearray | memoryview) -> int:
    """The id of the packet starting `data` (0 when shorter than a header): RAON's OnSend packetId."""
    return _HEADER.unpack_from(data)[1] if len(data) >= _HEADER.size else 0


def read_packets(
    buffer: bytes | bytearray | memoryview, length: int, max_size: int = PacketHeader.MAX_PACKET_SIZE
) -> tuple[list[tuple[int, memoryview]], int]:
    """Split the complete packets at the start of `buffer[:length]`.

    Returns ([(packet_id, payload view)], consumed bytes): what an `on_recv` returns. A trailing
    partial packet is not consumed. Payload views are only valid until on_recv returns.
    Raises PacketError on a size below the header or above `max_size`."""
    view = memoryview(buffer)
    packets: list[tuple[int, memoryview]] = []
    pos = 0
    unpack = _HEADER.unpack_from
    while length - pos >= _HEADER.size:
        size, packet_id = unpack(view, pos)
        if size < _HEADER.size or size > max_size:
            raise PacketError(f"bad packet size {size} (id {packet_id})")
        if length - pos < size:
            break
        packets.append((packet_id, view[pos + _HEADER.size : pos + size]))
        pos += size
    return packets, pos
