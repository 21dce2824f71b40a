"""The chat server: one room, RAON style."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from examples.legacy_chat.protocol import (
    MAX_NAME,
    MAX_TEXT,
    PacketId,
    PacketSession,
    chat_notify,
    text_packet,
)
from framework.legacy import IocpCore, ServiceCoordinator

log = structlog.get_logger("examples.legacy_chat")


class ChatRoom:
    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity  # members at most (0: as many as the session pool holds)
        self.members: set[ChatServerSession] = set()
        self.packets_sent = 0  # reported by on_send
        self.messages = 0
        # Other audiences of this room (e.g. Session-API clients during a migration).
        self.relays: list[Callable[[str, str], None]] = []

    def chat(self, name: str, text: str) -> bool:
        """Relay one chat line to everyone; False (nothing sent) when it is over MAX_TEXT bytes."""
        if len(text.encode()) > MAX_TEXT:
            return False
        self.messages += 1
        self.broadcast(chat_notify(name, text))
        for relay in self.relays:
            relay(name, text)
        return True

    def broadcast(self, packet: bytes) -> None:
        # ReserveSend to everyone first, then one FlushSend each: a member that gets several
        # packets in one loop turn receives them in one gathered send.
        members = list(self.members)
        for member in members:
            member.reserve_send(packet)
        for member in members:
            member.flush_send()


class ChatServerSession(PacketSession):
    def __init__(self, room: ChatRoom) -> None:
        super().__init__()
        self.room = room
        self.name: str | None = None

    def on_packet(self, packet_id: int, payload: memoryview) -> None:
        if packet_id == PacketId.LOGIN and self.name is None:
            name = bytes(payload).decode(errors="replace").strip()[:MAX_NAME]
            if not name:
                self.disconnect("empty name")
                return
            if self.room.capacity and len(self.room.members) >= self.room.capacity:
                # RAON's "notify, then kick": the notice is delivered before the close.
                self.send(text_packet(PacketId.NOTICE, "server full"))
                self.disconnect("server full")
                return
            self.name = name
            self.room.broadcast(text_packet(PacketId.NOTICE, f"{name} joined"))
            self.room.members.add(self)
            self.send(text_packet(PacketId.LOGIN_OK, f"welcome {name}, {len(self.room.members)} here"))
        elif packet_id == PacketId.CHAT and self.name is not None:
            if not self.room.chat(self.name, bytes(payload).decode(errors="replace")):
                self.disconnect(f"chat over {MAX_TEXT} bytes")
        else:
            self.disconnect(f"unexpected packet {packet_id}")

    def on_send(self, length: int, packet_id: int) -> None:
        self.room.packets_sent += 1

    def on_disconnect(self) -> None:
        if self in self.room.members:
            self.room.members.discard(self)
            self.room.broadcast(text_packet(PacketId.NOTICE, f"{self.name} left"))

    def reset(self) -> None:
        super().reset()
        self.name = None


class ChatServer:
    """The server service plus its room."""

    def __init__(
        self,
        core: IocpCore,
        host: str = "127.0.0.1",
        port: int = 0,
        max_sessions: int = 256,
        max_members: int = 0,
    ) -> None:
        self.core = core
        self.room = ChatRoom(max_members)
        self.service: ServiceCoordinator = core.register_server_service(
            port, lambda: ChatServerSession(self.room), host=host, max_sessions=max_sessions
        )

    @property
    def address(self) -> Any:
        return self.service.address

    def stop(self) -> None:
        self.core.unregister_service(self.service)
