"""Chat packets: PacketHeader(size, id) + payload, as a RAON project would define them."""

from __future__ import annotations

from enum import IntEnum

from framework.legacy import IocpObjectSession, PacketError, PacketHeader, build_packet, read_packets

MAX_PACKET = 4096
MAX_NAME = 32  # bytes of UTF-8 in a CHAT_NOTIFY
# The longest chat text (UTF-8 bytes) whose CHAT_NOTIFY still fits in MAX_PACKET: a longer one
# would be refused by every client's read_packets, which disconnects them all.
MAX_TEXT = MAX_PACKET - PacketHeader.SIZE - 1 - MAX_NAME


class PacketId(IntEnum):
    LOGIN = 1  # C->S: name (utf-8)
    LOGIN_OK = 2  # S->C: welcome text
    CHAT = 3  # C->S: text
    CHAT_NOTIFY = 4  # S->C: u8 name length, name, text
    NOTICE = 5  # S->C: text (someone joined or left)


def chat_notify(name: str, text: str) -> bytes:
    # Cut the name at a character boundary, so the receiver never sees half a UTF-8 sequence.
    raw = name.encode()[:MAX_NAME].decode(errors="ignore").encode()
    return build_packet(PacketId.CHAT_NOTIFY, bytes([len(raw)]) + raw + text.encode())


def parse_chat_notify(payload: bytes | memoryview) -> tuple[str, str]:
    """(name, text); raises PacketError when the payload is shorter than its name length says."""
    if len(payload) < 1 or len(payload) < 1 + payload[0]:
        raise PacketError(f"CHAT_NOTIFY of {len(payload)} bytes is shorter than its name")
    n = payload[0]
    return bytes(payload[1 : 1 + n]).decode(errors="replace"), bytes(payload[1 + n :]).decode(
        errors="replace"
    )


def text_packet(packet_id: PacketId, text: str) -> bytes:
    return build_packet(packet_id, text.encode())


class PacketSession(IocpObjectSession):
    """The OnRecv loop both chat sides share: split complete packets, hand each to `on_packet`,
    leave a partial one in the buffer. A malformed packet disconnects the session."""

    def __init__(self) -> None:
        super().__init__(recv_buffer_size=2 * MAX_PACKET)

    def on_packet(self, packet_id: int, payload: memoryview) -> None:
        raise NotImplementedError

    def on_recv(self, buf: memoryview, length: int) -> int:
        try:
            packets, consumed = read_packets(buf, length, MAX_PACKET)
            for packet_id, payload in packets:
                self.on_packet(packet_id, payload)
                if not self.is_connected:
                    break
        except PacketError as exc:
            self.disconnect(f"bad packet: {exc}")
            return length
        return consumed  # a partial packet stays in the buffer until its tail arrives
