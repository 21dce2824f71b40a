"""The session layer: subclass `Session`, run it with `Server` (incoming) or `Client` (outgoing).

Works on every backend through the provider contract only. See docs/SESSIONS.md.
"""

from framework.session.buffers import Buffer, BufferPool
from framework.session.client import Client
from framework.session.codec import FrameDecoder, ProtocolError, encode_frame, encode_message
from framework.session.context import OpContext, SessionId
from framework.session.host import LoopFuture, SessionHost, Timer
from framework.session.registry import Group, SessionRegistry
from framework.session.server import Server
from framework.session.session import Session

__all__ = [
    "Buffer",
    "BufferPool",
    "Client",
    "FrameDecoder",
    "Group",
    "LoopFuture",
    "OpContext",
    "ProtocolError",
    "Server",
    "Session",
    "SessionHost",
    "SessionId",
    "SessionRegistry",
    "Timer",
    "encode_frame",
    "encode_message",
]
