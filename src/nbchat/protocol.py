"""nbchat wire protocol v1: every frame as a small frozen dataclass, with encode/decode.

Pure: stdlib only, no I/O. One JSON object per WebSocket text frame, discriminated by
``type``. :func:`decode` validates everything it reads and raises :class:`ProtocolError`
naming the offending field, so a transport can answer a bad frame with an ``error``
frame and keep the connection up.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Union

__all__ = [
    "ERROR_CODES",
    "FINISH_REASONS",
    "PROTOCOL_VERSION",
    "ROLES",
    "ChatMessage",
    "ClientFrame",
    "Delta",
    "Done",
    "Error",
    "Frame",
    "Hello",
    "Pause",
    "Paused",
    "Ping",
    "Pong",
    "ProtocolError",
    "Resume",
    "Resumed",
    "ServerFrame",
    "Snapshot",
    "Start",
    "Started",
    "Stop",
    "Welcome",
    "decode",
    "decode_client",
    "decode_server",
    "encode",
]

PROTOCOL_VERSION: Final = 1

ROLES: Final = ("system", "user", "assistant")
FINISH_REASONS: Final = ("stop", "length", "stopped", "error")
ERROR_CODES: Final = (
    "bad_request",
    "unknown_type",
    "too_large",
    "unauthorized",
    "unknown_model",
    "upstream_error",
    "rate_limited",
    "busy",
    "resume_gap",
)

FinishReason = Literal["stop", "length", "stopped", "error"]
Role = Literal["system", "user", "assistant"]
JSON = dict[str, Any]


class ProtocolError(ValueError):
    """A frame that is not valid protocol v1.

    ``code`` is the ``error`` frame code to answer with (``bad_request`` or
    ``unknown_type``); ``field`` names the offending field when there is one.
    """

    def __init__(self, message: str, *, code: str = "bad_request", field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


# --- client -> gateway -------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    type: ClassVar[str] = "hello"
    client: str
    session: str | None = None
    last_seq: int | None = None


@dataclass(frozen=True)
class Start:
    type: ClassVar[str] = "start"
    reply: str
    messages: tuple[ChatMessage, ...]
    model: str
    params: JSON = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    type: ClassVar[str] = "stop"
    reply: str


@dataclass(frozen=True)
class Pause:
    type: ClassVar[str] = "pause"
    reply: str


@dataclass(frozen=True)
class Resume:
    type: ClassVar[str] = "resume"
    reply: str


@dataclass(frozen=True)
class Ping:
    type: ClassVar[str] = "ping"
    t: float


# --- gateway -> client -------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    session: str
    last_seq: int
    models: tuple[str, ...]
    resumed: bool
    server: str


@dataclass(frozen=True)
class Started:
    type: ClassVar[str] = "started"
    seq: int
    reply: str
    model: str


@dataclass(frozen=True)
class Delta:
    """Generated text. ``kind`` is absent for the answer, ``"reasoning"`` for reasoning
    a model streams apart from it (kept out of the history)."""

    type: ClassVar[str] = "delta"
    seq: int
    reply: str
    text: str
    kind: Literal["reasoning"] | None = None


@dataclass(frozen=True)
class Paused:
    type: ClassVar[str] = "paused"
    seq: int
    reply: str


@dataclass(frozen=True)
class Resumed:
    type: ClassVar[str] = "resumed"
    seq: int
    reply: str


@dataclass(frozen=True)
class Done:
    """Last event of a reply. ``usage`` holds token counts when the provider gave them;
    ``timing`` is measured at the gateway (``first_token_s``, ``duration_s``)."""

    type: ClassVar[str] = "done"
    seq: int
    reply: str
    finish: FinishReason
    usage: JSON | None = None
    timing: JSON = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str
    reply: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """After ``resume_gap``: a reply's whole text so far, and how it ended if it has.

    Sent in place of the log events that no longer reach back to the client's
    ``last_seq``; it covers every event up to the ``welcome``'s ``last_seq``.
    """

    type: ClassVar[str] = "snapshot"
    reply: str
    text: str
    reasoning: str | None = None
    paused: bool = False
    finish: FinishReason | None = None
    error: str | None = None
    error_code: str | None = None
    usage: JSON | None = None


@dataclass(frozen=True)
class Pong:
    type: ClassVar[str] = "pong"
    t: float


ClientFrame = Hello | Start | Stop | Pause | Resume | Ping
ServerFrame = Welcome | Started | Delta | Paused | Resumed | Done | Error | Snapshot | Pong
Frame = ClientFrame | ServerFrame

CLIENT_TYPES: Final[dict[str, type[Any]]] = {
    cls.type: cls for cls in (Hello, Start, Stop, Pause, Resume, Ping)
}
SERVER_TYPES: Final[dict[str, type[Any]]] = {
    cls.type: cls for cls in (Welcome, Started, Delta, Paused, Resumed, Done, Error, Snapshot, Pong)
}

# Literal-typed fields whose values are checked against these choices.
_CHOICES: Final[dict[str, tuple[str, ...]]] = {"role": ROLES, "finish": FINISH_REASONS}


def encode(frame: Frame) -> str:
    """Serialize a frame to the JSON text sent in one WebSocket text frame."""
    data: JSON = {"type": frame.type}
    for f in dataclasses.fields(frame):
        value = getattr(frame, f.name)
        if value is None:
            continue  # optional fields are omitted rather than sent as null
        data[f.name] = _to_json(value)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _to_json(value: Any) -> Any:
    if isinstance(value, ChatMessage):
        return {"role": value.role, "content": value.content}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def decode(text: str | bytes, *, types_: dict[str, type[Any]] | None = None) -> Frame:
    """Parse and validate one frame; raise :class:`ProtocolError` if it is not valid.

    ``types_`` restricts which frame types are accepted (see :func:`decode_client`).
    """
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not accepted; send JSON text frames")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a frame must be a JSON object, not {_json_kind(data)}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("field 'type' is missing or not a string", field="type")
    allowed = types_ if types_ is not None else {**CLIENT_TYPES, **SERVER_TYPES}
    cls = allowed.get(kind)
    if cls is None:
        raise ProtocolError(
            f"unknown frame type {kind!r}; expected one of {', '.join(sorted(allowed))}",
            code="unknown_type",
            field="type",
        )
    hints = typing.get_type_hints(cls)
    kwargs: JSON = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or data[f.name] is None:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if not has_default:
                raise ProtocolError(f"{kind}: field {f.name!r} is required", field=f.name)
            continue
        kwargs[f.name] = _check(data[f.name], hints[f.name], f"{kind}.{f.name}", f.name)
    frame: Frame = cls(**kwargs)
    return frame


def decode_client(text: str | bytes) -> ClientFrame:
    """Decode a frame a gateway receives: only client -> gateway types are accepted."""
    return typing.cast(ClientFrame, decode(text, types_=CLIENT_TYPES))


def decode_server(text: str | bytes) -> ServerFrame:
    """Decode a frame a client receives: only gateway -> client types are accepted."""
    return typing.cast(ServerFrame, decode(text, types_=SERVER_TYPES))


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _check(value: Any, hint: Any, where: str, name: str) -> Any:
    """Validate ``value`` against a field's type hint; return it converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], where, name)
    if origin is Literal:
        choices = _CHOICES.get(name, tuple(str(a) for a in args))
        if value not in choices:
            raise ProtocolError(f"{where} must be one of {', '.join(choices)}", field=name)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where} must be a boolean", field=name)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProtocolError(f"{where} must be a non-negative integer", field=name)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{where} must be a number", field=name)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string", field=name)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object", field=name)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be an array", field=name)
        return tuple(_check(v, args[0], f"{where}[{i}]", name) for i, v in enumerate(value))
    if hint is ChatMessage:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object with role and content", field=name)
        role = _check(value.get("role"), Role, f"{where}.role", "role")
        content = value.get("content")
        if not isinstance(content, str):
            raise ProtocolError(f"{where}.content must be a string", field=name)
        return ChatMessage(role=role, content=content)
    raise TypeError(f"no validator for {hint!r}")  # a programming error, not bad input
