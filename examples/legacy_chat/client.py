"""The chat client: an auto-reconnecting client service with one session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from examples.legacy_chat.protocol import PacketId, PacketSession, parse_chat_notify, text_packet
from framework.legacy import IocpCore


class ChatClientSession(PacketSession):
    def __init__(self, client: ChatClient) -> None:
        super().__init__()
        self.client = client

    def on_connect(self, success: bool) -> None:
        if success:
            self.client.connects += 1
            self.send(text_packet(PacketId.LOGIN, self.client.name))
        else:
            self.client.failed_connects += 1

    def on_packet(self, packet_id: int, payload: memoryview) -> None:
        self.client.on_packet(packet_id, payload)

    def on_disconnect(self) -> None:
        self.client.logged_in = False


class ChatClient:
    """`say()` on the loop thread, `say_threadsafe()` from any other."""

    def __init__(
        self,
        core: IocpCore,
        address: tuple[str, int],
        name: str,
        *,
        reconnect_delay_ms: int = 200,
        on_event: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.core = core
        self.name = name
        self.on_event = on_event
        self.connects = 0
        self.failed_connects = 0
        self.logins = 0
        self.logged_in = False
        self.chats: list[tuple[str, str]] = []
        self.notices: list[str] = []
        self.service = core.register_client_service(
            address,
            lambda: ChatClientSession(self),
            auto_reconnect=True,
            reconnect_delay_ms=reconnect_delay_ms,
        )

    def on_packet(self, packet_id: int, payload: memoryview) -> None:
        if packet_id == PacketId.LOGIN_OK:
            self.logged_in = True
            self.logins += 1
            self._emit("login", bytes(payload).decode(errors="replace"))
        elif packet_id == PacketId.CHAT_NOTIFY:
            chat = parse_chat_notify(payload)
            self.chats.append(chat)
            self._emit("chat", chat)
        elif packet_id == PacketId.NOTICE:
            notice = bytes(payload).decode(errors="replace")
            self.notices.append(notice)
            self._emit("notice", notice)

    def _emit(self, kind: str, value: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, value)

    def say(self, text: str) -> bool:
        sessions = [s for s in self.service.active_sessions if s.is_connected]
        return bool(sessions) and self.logged_in and sessions[0].send(text_packet(PacketId.CHAT, text))

    def say_threadsafe(self, text: str) -> bool:
        return self.core.push_iocp_job(lambda: self.say(text))

    def stop(self) -> None:
        self.core.unregister_service(self.service)
