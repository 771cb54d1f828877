"""nbchat wire protocol v1: every frame as a small frozen dataclass, with encode/decode.

Pure: stdlib only, no I/O. One JSON object per WebSocket text frame, discriminated by
``type``. :func:`decode` validates everything it reads and raises :class:`ProtocolError`
naming the offending field, so a transport can answer a bad frame with an ``error``
frame and keep the connection up.

Only strict, portable JSON crosses the wire, both ways: no ``NaN`` or ``Infinity``
(``JSON.parse`` rejects them and a NaN timer deadline stalls an event loop), no number
that does not fit a 64-bit value, no nesting deeper than :data:`MAX_DEPTH`, no id or
name (reply, model, session, client) over :data:`MAX_NAME_CHARS`, and no lone
surrogate in any string (it cannot be written as UTF-8, so a frame holding one could
never be sent). :func:`decode` refuses such input with a :class:`ProtocolError`, and
:func:`encode` refuses to produce it, so nothing unencodable ever enters a session.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Union

__all__ = [
    "CLOSE_TAKEN_OVER",
    "DEFAULT_MAX_FRAME_BYTES",
    "ERROR_CODES",
    "FINISH_REASONS",
    "IMAGE_URI",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_NAME_CHARS",
    "PROTOCOL_VERSION",
    "ROLES",
    "TOOL_NAME",
    "ChatMessage",
    "ClientFrame",
    "Delta",
    "Done",
    "Error",
    "Frame",
    "Hello",
    "Pause",
    "Paused",
    "PendingCall",
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
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Welcome",
    "decode",
    "decode_client",
    "decode_server",
    "encode",
    "lone_surrogate",
    "valid_unicode",
]

PROTOCOL_VERSION: Final = 1

ROLES: Final = ("system", "user", "assistant", "tool")
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
    "gateway_shutdown",
    "tool_error",
    "store_unavailable",
    "gateway_lost",
)

# WebSocket close code (4000-4999 are the application's): another connection resumed
# this session, so this one gets nothing more.
CLOSE_TAKEN_OVER: Final = 4001
# A gateway's frame limit unless it says otherwise (in its welcome).
DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024

MAX_DEPTH: Final = 32  # objects and arrays nested in one frame
MAX_INT_DIGITS: Final = 19  # every integer fits a signed 64-bit value
MAX_NAME_CHARS: Final = 256  # ids and names: reply, model, session, client, code
_NAMES: Final = frozenset(
    {"reply", "model", "session", "client", "code", "default_model", "call", "name"}
)
# A picture in a user message: the formats both OpenAI and Anthropic take, base64.
IMAGE_URI: Final = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}")
# A tool's name, as OpenAI and Anthropic both accept it.
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INT_LIMIT: Final = 10**MAX_INT_DIGITS

FinishReason = Literal["stop", "length", "stopped", "error"]
Role = Literal["system", "user", "assistant", "tool"]
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
    """One message of a request's history. A ``tool`` message is one tool call and its
    result (what the model was given, in ``content``): ``call`` (its id), ``name`` and
    ``arguments`` are set on tool messages only. Consecutive tool messages are one
    round of calls, made after the assistant message before them. ``images`` (user
    messages only) are pictures sent with the text, as ``data:image/...;base64,`` URIs;
    a gateway gives them only to models that take images."""

    role: Role
    content: str
    call: str | None = None
    name: str | None = None
    arguments: JSON | None = None
    images: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PendingCall:
    """In a ``snapshot``: a tool call the gateway still waits for a result of."""

    call: str
    name: str
    arguments: JSON


@dataclass(frozen=True)
class ToolSpec:
    """A tool a model may call: ``parameters`` is a JSON schema of its arguments."""

    name: str
    description: str
    parameters: JSON


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
    tools: tuple[ToolSpec, ...] | None = None  # absent: the model gets no tools


@dataclass(frozen=True)
class ToolResult:
    """A tool's result for the gateway's ``tool_call``: ``content`` is the result as
    text; ``error`` says why the tool failed (the model is told, and goes on)."""

    type: ClassVar[str] = "tool_result"
    reply: str
    call: str
    content: str
    error: str | None = None


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
    """``max_frame_bytes`` is the largest frame the gateway accepts, so a client can
    refuse an oversize request itself instead of having the link closed (1009).
    ``default_model`` is the model a client uses unless told otherwise (absent: the
    first of ``models``); ``notice`` is a start-up problem the user should hear of
    (a model server that is unreachable, or refused the key). ``replies_per_session``
    is how many replies the session runs at once (one more is refused as ``busy``);
    absent from an older gateway, whose limit was 4."""

    type: ClassVar[str] = "welcome"
    session: str
    last_seq: int
    models: tuple[str, ...]
    resumed: bool
    server: str
    max_frame_bytes: int | None = None
    default_model: str | None = None
    notice: str | None = None
    image_models: tuple[str, ...] | None = None  # the models that take images
    replies_per_session: int | None = None


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
class ToolCall:
    """The model calls a tool: the client runs it and answers with ``tool_result``
    (same ``reply`` and ``call``); the reply goes on when every call of the round is
    answered. ``arguments`` is the JSON object the model gave."""

    type: ClassVar[str] = "tool_call"
    seq: int
    reply: str
    call: str
    name: str
    arguments: JSON


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
    """A failure or a refusal. ``retry_after`` (seconds, 0 or more) is set when the
    provider said when to try again (HTTP 429 with ``Retry-After``): a client may send
    the request again after that long. Absent otherwise; older peers ignore it."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    reply: str | None = None
    seq: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """After ``resume_gap``: a reply's whole text so far, and how it ended if it has.

    Sent in place of the log events that no longer reach back to the client's
    ``last_seq``; it covers every event up to the ``welcome``'s ``last_seq``.
    ``calls`` are the reply's tool calls still waiting for a result (the client runs
    those it has not run yet, and answers them).
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
    calls: tuple[PendingCall, ...] | None = None


@dataclass(frozen=True)
class Pong:
    type: ClassVar[str] = "pong"
    t: float


ClientFrame = Hello | Start | Stop | Pause | Resume | Ping | ToolResult
ServerFrame = (
    Welcome | Started | Delta | Paused | Resumed | Done | Error | Snapshot | Pong | ToolCall
)
Frame = ClientFrame | ServerFrame

CLIENT_TYPES: Final[dict[str, type[Any]]] = {
    cls.type: cls for cls in (Hello, Start, Stop, Pause, Resume, Ping, ToolResult)
}
SERVER_TYPES: Final[dict[str, type[Any]]] = {
    cls.type: cls
    for cls in (Welcome, Started, Delta, Paused, Resumed, Done, Error, Snapshot, Pong, ToolCall)
}

# Number fields that cannot be negative (a duration).
_NON_NEGATIVE: Final = frozenset({"retry_after"})
# Literal-typed fields whose values are checked against these choices.
_CHOICES: Final[dict[str, tuple[str, ...]]] = {"role": ROLES, "finish": FINISH_REASONS}


_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def _may_hold_surrogates(text: str) -> bool:
    """Whether JSON ``text`` may decode to a string with a lone surrogate: it has one
    raw (then it is not encodable) or escaped. Cheap enough for a 1 MB frame; the exact
    check runs only when this says yes (valid escaped pairs say yes too)."""
    if "\\ud" in text or "\\uD" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode(frame: Frame) -> str:
    """Serialize a frame to the JSON text sent in one WebSocket text frame.

    Raises :class:`ProtocolError` for a frame that strict JSON cannot carry: a
    non-finite number, or a string with a lone surrogate (not valid Unicode)."""
    data: JSON = {"type": frame.type}
    for f in dataclasses.fields(frame):
        value = getattr(frame, f.name)
        if value is None:
            continue  # optional fields are omitted rather than sent as null
        where = f"{frame.type}.{f.name}"
        if f.name in _NAMES and isinstance(value, str):
            _check_name(value, where)
        elif f.name in _NON_NEGATIVE and isinstance(value, (int, float)) and value < 0:
            raise ProtocolError(f"{where} must be 0 or more (seconds)", field=f.name)
        elif isinstance(value, dict):
            _check_json(value, where, strings=False)  # the whole text is checked below
        elif isinstance(value, tuple):
            for item in value:
                nested = getattr(item, "arguments", None) or getattr(item, "parameters", None)
                if isinstance(nested, dict):
                    _check_json(nested, where, strings=False, depth=4)
                if isinstance(item, ChatMessage) and item.images is not None:
                    _check_images(item, where)
        data[f.name] = _to_json(value)
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ProtocolError(
            f"{frame.type}: NaN and Infinity cannot be sent; use a finite number"
        ) from None
    except RecursionError:
        raise ProtocolError(f"{frame.type}: nested too deeply to send") from None
    _check_text(text, frame.type)  # UTF-8 encoding finds any lone surrogate, fast
    return text


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so it can be sent: for
    text from outside the protocol (a provider's output) that must not be refused."""
    if not _SURROGATE.search(text):
        return text
    # UTF-16 joins surrogate pairs into their characters and replaces the lone ones.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text`` (which makes it impossible to
    write as UTF-8), or None when there is none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_text(text: str, where: str) -> None:
    at = lone_surrogate(text)
    if at is not None:
        raise ProtocolError(
            f"{where}: text contains a lone surrogate (U+{ord(text[at]):04X}), which is not "
            "valid Unicode and cannot be sent as UTF-8; decode such text with "
            "errors='replace'"
        )


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON; numbers must be finite")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ProtocolError(f"number {literal[:40]} is out of range; numbers must be finite")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(
            f"integer {literal[:20]}... has more than {MAX_INT_DIGITS} digits; "
            "integers must fit in 64 bits"
        )
    return int(literal)


def _loads(text: str) -> Any:
    """Strict JSON numbers (see the module docstring). Depth and strings are checked
    on the fields a frame has (:func:`decode`): fields it does not have are dropped
    unread, so a big ignored field costs no walk over it."""
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ProtocolError(f"nested more than {MAX_DEPTH} levels deep") from None


def _check_name(value: str, where: str) -> None:
    if len(value) > MAX_NAME_CHARS:
        raise ProtocolError(f"{where} is longer than {MAX_NAME_CHARS} characters")


def _check_json(value: Any, where: str, *, strings: bool, depth: int = 2) -> None:
    """A JSON value inside a frame (params, usage, timing): nested at most MAX_DEPTH
    levels from the frame, integers within 64 bits, and (``strings``) valid Unicode.
    ``depth`` is the value's own level (the frame itself is level 1)."""
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise ProtocolError(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                if strings:
                    for key in item:
                        _check_text(str(key), "frame")
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -_INT_LIMIT < item < _INT_LIMIT:
                raise ProtocolError(
                    f"{where}: integer {str(item)[:20]}... has more than {MAX_INT_DIGITS} "
                    "digits; integers must fit in 64 bits"
                )
        elif strings and isinstance(item, str):
            _check_text(item, "frame")


def _to_json(value: Any) -> Any:
    if isinstance(value, ChatMessage):
        data: JSON = {"role": value.role, "content": value.content}
        if value.images:
            data["images"] = list(value.images)
        if value.role == "tool":
            data.update(call=value.call, name=value.name, arguments=value.arguments or {})
        return data
    if isinstance(value, PendingCall):
        return {"call": value.call, "name": value.name, "arguments": value.arguments}
    if isinstance(value, ToolSpec):
        return {
            "name": value.name,
            "description": value.description,
            "parameters": value.parameters,
        }
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _check_images(message: ChatMessage, where: str) -> None:
    if message.role != "user":
        raise ProtocolError(f"{where}: only user messages carry images")
    for image in message.images or ():
        if not isinstance(image, str) or not IMAGE_URI.fullmatch(image):
            raise ProtocolError(
                f"{where}: an image must be a data:image/(png|jpeg|gif|webp);base64,... URI"
            )


def decode(text: str | bytes, *, types_: dict[str, type[Any]] | None = None) -> Frame:
    """Parse and validate one frame; raise :class:`ProtocolError` if it is not valid.

    ``types_`` restricts which frame types are accepted (see :func:`decode_client`).
    """
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not accepted; send JSON text frames")
    data = _loads(text)
    strings = _may_hold_surrogates(text)
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
    hints = _hints(cls)
    kwargs: JSON = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or data[f.name] is None:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if not has_default:
                raise ProtocolError(f"{kind}: field {f.name!r} is required", field=f.name)
            continue
        value = _check(data[f.name], hints[f.name], f"{kind}.{f.name}", f.name)
        if isinstance(value, dict):
            _check_json(value, f"{kind}.{f.name}", strings=strings)
        elif strings:
            _check_strings_of(value)
        kwargs[f.name] = value
    frame: Frame = cls(**kwargs)
    return frame


def _check_strings_of(value: Any) -> None:
    """The text a decoded field holds is valid Unicode (run only when the frame's text
    may hold a lone surrogate)."""
    if isinstance(value, str):
        _check_text(value, "frame")
    elif isinstance(value, ChatMessage):
        for text in (value.content, value.call, value.name):
            if text is not None:
                _check_text(text, "frame")
        if value.arguments:
            _check_json(value.arguments, "frame", strings=True, depth=4)
    elif isinstance(value, PendingCall):
        _check_text(value.call, "frame")
        _check_text(value.name, "frame")
        _check_json(value.arguments, "frame", strings=True, depth=4)
    elif isinstance(value, ToolSpec):
        _check_text(value.description, "frame")
        _check_json(value.parameters, "frame", strings=True, depth=4)
    elif isinstance(value, tuple):
        for item in value:
            _check_strings_of(item)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """A frame class's field types, resolved once (resolving them is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


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
        if name in _NON_NEGATIVE and value < 0:
            raise ProtocolError(f"{where} must be 0 or more (seconds)", field=name)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string", field=name)
        if name in _NAMES and len(value) > MAX_NAME_CHARS:
            raise ProtocolError(f"{where} is longer than {MAX_NAME_CHARS} characters", field=name)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object", field=name)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be an array", field=name)
        if args[0] is ChatMessage:  # the history: often thousands, so checked directly
            return tuple(_chat_message(v, f"{where}[{i}]", name) for i, v in enumerate(value))
        if args[0] is PendingCall:
            return tuple(_pending_call(v, f"{where}[{i}]", name) for i, v in enumerate(value))
        if args[0] is ToolSpec:
            specs = tuple(_tool_spec(v, f"{where}[{i}]", name) for i, v in enumerate(value))
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ProtocolError(f"{where}: tool names must be unique", field=name)
            return specs
        return tuple(_check(v, args[0], f"{where}[{i}]", name) for i, v in enumerate(value))
    if hint is ChatMessage:
        return _chat_message(value, where, name)
    raise TypeError(f"no validator for {hint!r}")  # a programming error, not bad input


def _chat_message(value: Any, where: str, name: str) -> ChatMessage:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be an object with role and content", field=name)
    role = value.get("role")
    if role not in ROLES:
        raise ProtocolError(f"{where}.role must be one of {', '.join(ROLES)}", field="role")
    content = value.get("content")
    if not isinstance(content, str):
        raise ProtocolError(f"{where}.content must be a string", field=name)
    images = value.get("images")
    if images is not None:
        if role != "user":
            raise ProtocolError(f"{where}.images: only user messages carry images", field=name)
        if not isinstance(images, list) or not all(
            isinstance(i, str) and IMAGE_URI.fullmatch(i) for i in images
        ):
            raise ProtocolError(
                f"{where}.images must be an array of data:image/(png|jpeg|gif|webp);base64,"
                "... URIs",
                field=name,
            )
        images = tuple(images) or None
    if role != "tool":
        return ChatMessage(role=role, content=content, images=images)
    call, tool, arguments = value.get("call"), value.get("name"), value.get("arguments", {})
    if not isinstance(call, str) or not call or len(call) > MAX_NAME_CHARS:
        raise ProtocolError(
            f"{where}.call must be the tool call's id (1 to {MAX_NAME_CHARS} characters)",
            field=name,
        )
    if not isinstance(tool, str) or not TOOL_NAME.fullmatch(tool):
        raise ProtocolError(f"{where}.name must be a tool name ({TOOL_NAME.pattern})", field=name)
    if not isinstance(arguments, dict):
        raise ProtocolError(f"{where}.arguments must be an object", field=name)
    _check_json(arguments, f"{where}.arguments", strings=False, depth=4)
    return ChatMessage(role="tool", content=content, call=call, name=tool, arguments=arguments)


def _pending_call(value: Any, where: str, name: str) -> PendingCall:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be an object with call, name, arguments", field=name)
    call, tool, arguments = value.get("call"), value.get("name"), value.get("arguments")
    if not isinstance(call, str) or not call or len(call) > MAX_NAME_CHARS:
        raise ProtocolError(f"{where}.call must be the tool call's id", field=name)
    if not isinstance(tool, str) or len(tool) > MAX_NAME_CHARS:
        raise ProtocolError(f"{where}.name must be a string", field=name)
    if not isinstance(arguments, dict):
        raise ProtocolError(f"{where}.arguments must be an object", field=name)
    _check_json(arguments, f"{where}.arguments", strings=False, depth=4)
    return PendingCall(call=call, name=tool, arguments=arguments)


def _tool_spec(value: Any, where: str, name: str) -> ToolSpec:
    if not isinstance(value, dict):
        raise ProtocolError(
            f"{where} must be an object with name, description and parameters", field=name
        )
    tool, description = value.get("name"), value.get("description", "")
    parameters = value.get("parameters")
    if not isinstance(tool, str) or not TOOL_NAME.fullmatch(tool):
        raise ProtocolError(f"{where}.name must be a tool name ({TOOL_NAME.pattern})", field=name)
    if not isinstance(description, str):
        raise ProtocolError(f"{where}.description must be a string", field=name)
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ProtocolError(
            f"{where}.parameters must be a JSON schema of an object "
            '({"type": "object", "properties": ...})',
            field=name,
        )
    _check_json(parameters, f"{where}.parameters", strings=False, depth=4)
    return ToolSpec(name=tool, description=description, parameters=parameters)
