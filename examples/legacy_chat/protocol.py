"""Chat packets: PacketHeader(size, id) + payload, as a RAON project would define them."""

from __future__ import annotations

from enum import IntEnum

from framework.legacy import build_packet

MAX_PACKET = 4096
MAX_NAME = 32


class PacketId(IntEnum):
    LOGIN = 1  # C->S: name (utf-8)
    LOGIN_OK = 2  # S->C: welcome text
    CHAT = 3  # C->S: text
    CHAT_NOTIFY = 4  # S->C: u8 name length, name, text
    NOTICE = 5  # S->C: text (someone joined or left)


def chat_notify(name: str, text: str) -> bytes:
    raw = name.encode()[:MAX_NAME]
    return build_packet(PacketId.CHAT_NOTIFY, bytes([len(raw)]) + raw + text.encode())


def parse_chat_notify(payload: bytes | memoryview) -> tuple[str, str]:
    n = payload[0]
    return bytes(payload[1 : 1 + n]).decode(errors="replace"), bytes(payload[1 + n :]).decode(
        errors="replace"
    )


def text_packet(packet_id: PacketId, text: str) -> bytes:
    return build_packet(packet_id, text.encode())
