"""The game's wire messages: parsing and validation of client requests (sans-IO).

Every message is a msgpack map with a "type" key (PROTOCOL.md documents each one). `parse_request`
turns a decoded message into a typed request or raises `ProtocolError` carrying the error code and a
message meant for a human; it never raises anything else, whatever the client sends. Validation is
hand-written rather than pydantic: the hot messages (move, ping) are checked in a few microseconds,
and each failure names the field and what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from framework.session import limits

# Error codes (stable strings clients can branch on).
UNKNOWN_TYPE = "unknown_type"
BAD_REQUEST = "bad_request"
NOT_NAMED = "not_named"
ALREADY_NAMED = "already_named"
NAME_TAKEN = "name_taken"
ROOM_FULL = "room_full"
ROOM_NOT_FOUND = "room_not_found"
ROOM_EXISTS = "room_exists"
TOO_MANY_ROOMS = "too_many_rooms"
NOT_IN_ROOM = "not_in_room"
RATE_LIMITED = limits.RATE_LIMITED  # sent by the framework's rate limits (GameSession.rate_limits)

PROTOCOL_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-]+")
# Printable text only: control characters (newlines, escapes; C1 too, where U+009B is a terminal's
# CSI) in chat would let one player forge lines in other players' terminals and in the server log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ProtocolError(Exception):
    """An invalid request; becomes an `error` message to the sender, never a crash."""

    def __init__(self, code: str, message: str, request: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request


@dataclass(slots=True, frozen=True)
class Hello:
    name: str


@dataclass(slots=True, frozen=True)
class ListRooms:
    pass


@dataclass(slots=True, frozen=True)
class CreateRoom:
    room: str


@dataclass(slots=True, frozen=True)
class Join:
    room: str
    create: bool


@dataclass(slots=True, frozen=True)
class Leave:
    pass


@dataclass(slots=True, frozen=True)
class Move:
    """Either a direction (dx, dy), clamped to length <= 1, or a target point (is_target)."""

    x: float
    y: float
    is_target: bool
    seq: int


@dataclass(slots=True, frozen=True)
class Chat:
    text: str


@dataclass(slots=True, frozen=True)
class Ping:
    t: int | float


Request = Hello | ListRooms | CreateRoom | Join | Leave | Move | Chat | Ping


@dataclass(slots=True, frozen=True)
class Limits:
    max_name_length: int = 16
    max_room_name_length: int = 32
    max_chat_length: int = 200


def _fields(msg: dict[Any, Any], kind: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    for key in required:
        if key not in msg:
            raise ProtocolError(BAD_REQUEST, f"'{kind}' needs the field '{key}'", kind)
    allowed = {"type", "rid", *required, *optional}
    for key in msg:
        if key not in allowed:
            raise ProtocolError(
                BAD_REQUEST,
                f"'{kind}' has an unknown field {key!r}; allowed: {', '.join(sorted(allowed))}",
                kind,
            )


def _name(value: Any, kind: str, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError(BAD_REQUEST, f"'{field}' must be a string, got {type(value).__name__}", kind)
    if not 1 <= len(value) <= max_length or NAME_PATTERN.fullmatch(value) is None:
        raise ProtocolError(
            BAD_REQUEST,
            f"'{field}' must be 1-{max_length} characters of letters, digits, '_' or '-', got {value[:40]!r}",
            kind,
        )
    return value


def _number(value: Any, kind: str, field: str) -> float:
    # bool is an int subclass; true/false as a coordinate is a client bug worth reporting.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(BAD_REQUEST, f"'{field}' must be a number, got {type(value).__name__}", kind)
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(BAD_REQUEST, f"'{field}' must be a finite number", kind)
    return number


def _pair(value: Any, kind: str, field: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ProtocolError(BAD_REQUEST, f"'{field}' must be a list of two numbers [x, y]", kind)
    return _number(value[0], kind, f"{field}[0]"), _number(value[1], kind, f"{field}[1]")


def request_id(msg: Any) -> Any:
    """The client's optional correlation id ("rid": int or short string), echoed in replies."""
    if isinstance(msg, dict):
        rid = msg.get("rid")
        if (isinstance(rid, int) and not isinstance(rid, bool)) or (isinstance(rid, str) and len(rid) <= 64):
            return rid
    return None


def parse_request(msg: Any, limits: Limits) -> Request:
    """Validate one decoded client message; raises `ProtocolError` when it is not a valid request."""
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"a message must be a map with a 'type', got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "a message must have a string 'type'")
    if "rid" in msg and request_id(msg) is None:
        raise ProtocolError(
            BAD_REQUEST, "'rid' must be an integer or a string of at most 64 characters", kind
        )
    if kind == "move":
        _fields(msg, kind, (), ("dir", "target", "seq"))
        seq = msg.get("seq", 0)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise ProtocolError(BAD_REQUEST, "'seq' must be a non-negative integer", kind)
        if ("dir" in msg) == ("target" in msg):
            raise ProtocolError(
                BAD_REQUEST, "'move' needs exactly one of 'dir' [dx, dy] or 'target' [x, y]", kind
            )
        if "dir" in msg:
            dx, dy = _pair(msg["dir"], kind, "dir")
            length = math.hypot(dx, dy)
            if length > 1.0:  # a longer vector would be a speed hack: clamp to unit length
                dx, dy = dx / length, dy / length
            return Move(dx, dy, False, seq)
        x, y = _pair(msg["target"], kind, "target")
        return Move(x, y, True, seq)
    if kind == "ping":
        _fields(msg, kind, ("t",), ())
        t = msg["t"]
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise ProtocolError(BAD_REQUEST, f"'t' must be a number, got {type(t).__name__}", kind)
        return Ping(t)
    if kind == "chat":
        _fields(msg, kind, ("text",), ())
        text = msg["text"]
        if not isinstance(text, str):
            raise ProtocolError(BAD_REQUEST, f"'text' must be a string, got {type(text).__name__}", kind)
        text = text.strip()
        if not text:
            raise ProtocolError(BAD_REQUEST, "'text' must not be empty", kind)
        if len(text) > limits.max_chat_length:
            raise ProtocolError(
                BAD_REQUEST, f"'text' is {len(text)} characters; at most {limits.max_chat_length}", kind
            )
        if _CONTROL.search(text):
            raise ProtocolError(BAD_REQUEST, "'text' must not contain control characters", kind)
        return Chat(text)
    if kind == "hello":
        _fields(msg, kind, ("name",), ("version",))
        version = msg.get("version", PROTOCOL_VERSION)
        if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1.0 == 1 in Python
            raise ProtocolError(
                BAD_REQUEST, f"protocol version {version!r} unsupported; this server speaks 1", kind
            )
        return Hello(_name(msg["name"], kind, "name", limits.max_name_length))
    if kind == "list_rooms":
        _fields(msg, kind, (), ())
        return ListRooms()
    if kind == "create_room":
        _fields(msg, kind, ("room",), ())
        return CreateRoom(_name(msg["room"], kind, "room", limits.max_room_name_length))
    if kind == "join":
        _fields(msg, kind, ("room",), ("create",))
        create = msg.get("create", False)
        if not isinstance(create, bool):
            raise ProtocolError(BAD_REQUEST, "'create' must be true or false", kind)
        return Join(_name(msg["room"], kind, "room", limits.max_room_name_length), create)
    if kind == "leave":
        _fields(msg, kind, (), ())
        return Leave()
    raise ProtocolError(
        UNKNOWN_TYPE,
        f"unknown message type {kind[:40]!r}; known: chat, create_room, hello, join, leave, list_rooms, move, ping",
        kind[:40],
    )


def error_message(code: str, message: str, request: str | None = None, rid: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request is not None:
        out["request"] = request
    if rid is not None:
        out["rid"] = rid
    return out
