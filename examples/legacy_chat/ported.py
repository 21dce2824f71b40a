"""The same chat ported to the Session API, sharing the legacy room during the migration.

`SessionChat` speaks the framework protocol (u32 length + msgpack: {"login": name},
{"say": text} in; {"welcome": text}, {"chat": [name, text]} out). `mount()` joins it to a legacy
`ChatRoom`, so both kinds of clients chat with each other while both run in one process.
"""

from __future__ import annotations

from typing import Any, ClassVar

from examples.legacy_chat.protocol import MAX_NAME
from examples.legacy_chat.server import ChatRoom
from framework.session.session import Session

GROUP = "chat"


class SessionChat(Session):
    room: ClassVar[ChatRoom]  # set by mount()

    def on_connected(self) -> None:
        self.name: str | None = None

    def on_message(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.close("bad message")
        elif "login" in msg and self.name is None:
            self.name = str(msg["login"])[:MAX_NAME]
            self.server.registry.group(GROUP).add(self)
            self.send({"welcome": self.name})
        elif "say" in msg and self.name is not None:
            if not self.room.chat(self.name, str(msg["say"])):
                self.close("chat too long")
        else:
            self.close("unexpected message")


def mount(room: ChatRoom, server: Any) -> type[SessionChat]:
    """Relay the legacy room's chats to the Session clients of `server` (and back, via room.chat)."""
    SessionChat.room = room
    room.relays.append(lambda name, text: server.registry.group(GROUP).broadcast({"chat": [name, text]}))
    return SessionChat
