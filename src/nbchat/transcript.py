"""The conversation as records: what was said, by whom, with which model, and how fast.

Pure: no I/O. pandas is imported only inside :meth:`Transcript.to_dataframe`, so nbchat
works without it until a DataFrame is asked for.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from .context import PICTURE_LEFT_OUT, PICTURE_NOT_SENT, render_message
from .protocol import (
    FINISH_REASONS,
    IMAGE_URI,
    ROLES,
    TOOL_NAME,
    ChatMessage,
    FinishReason,
    Role,
    lone_surrogate,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "FORMAT",
    "FORMAT_VERSION",
    "Message",
    "PicturePlan",
    "Transcript",
    "footer_line",
    "plan_pictures",
    "transcript_from_json",
    "transcript_from_records",
    "transcript_to_json",
    "transcript_to_markdown",
]

# The portable file (Transcript.to_json): a named format and a version, so a file from
# a newer nbchat is refused with a clear message instead of being misread.
FORMAT: Final = "nbchat.transcript"
FORMAT_VERSION: Final = 1

# Columns of to_dataframe(), in order. User rows have nulls where timing does not apply.
COLUMNS: Final = (
    "turn",
    "role",
    "content",
    "context",
    "reasoning",
    "model",
    "finish",
    "created_at",
    "first_token_s",
    "duration_s",
    "paused_s",
    "chunks",
    "tokens_per_s",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "reply_id",
    "tool_name",
    "tool_arguments",
    "tool_call",
)


@dataclass
class Message:
    """One message of the transcript. Assistant messages carry timing measured by the
    client from the moment the request was sent: ``first_token_s`` (time to first
    token), ``duration_s`` (to the last event), ``chunks`` (deltas received). Time spent
    paused is left out of both and counted in ``paused_s``. A user message's
    ``created_at`` is when it was sent; a reply's, when it started.

    A ``tool`` message is one tool call of a reply and its result: ``tool_name``,
    ``tool_arguments`` (the JSON object the model gave), ``tool_call`` (the call's id),
    ``content`` (the result as the model received it; ``{"error": ...}`` when the tool
    raised, and then ``error`` too), ``duration_s`` (how long the tool ran) and
    ``finish`` (``stop``, ``error``, or ``stopped`` when the reply ended before it
    returned). It comes before its reply's assistant message, which holds all the
    reply's text."""

    turn: int
    role: Role
    content: str
    created_at: float  # Unix time, seconds
    model: str | None = None
    finish: FinishReason | None = None
    first_token_s: float | None = None
    duration_s: float | None = None
    paused_s: float | None = None
    # From the gateway's first token to its end of generation, when it said so.
    generation_s: float | None = None
    chunks: int | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    reply_id: str | None = None
    reasoning: str | None = None  # streamed apart from the answer; never sent back
    # A user message's attachments ({name, kind, summary, text, image?}, see
    # nbchat.context): the model receives them after the text, in this turn and with
    # every later one (a picture only when the model takes images and there is room).
    context: list[dict[str, str]] | None = None
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | None = None
    tool_call: str | None = None

    @property
    def sent_content(self) -> str:
        """The content as the model receives it: the text, then any attachments."""
        return self.content_with({})

    def content_with(self, picture_notes: Mapping[int, str]) -> str:
        """The content with its attachments; the attachment at index ``i`` with a
        picture ends with ``picture_notes[i]`` (default: the picture was sent)."""
        if not self.context:
            return self.content
        return render_message(self.content, self.context, picture_notes)

    @property
    def images(self) -> tuple[str, ...]:
        """The pictures of this message's attachments (data URIs), in order."""
        return tuple(a["image"] for a in self.context or () if a.get("image"))

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second after the first token; from usage when the
        provider reported it, else from chunks received. Over the gateway's generation
        span when it said it (generation goes on while delivery is paused), else over
        the client's, which a pause would distort, so then there is none."""
        if self.role != "assistant" or self.duration_s is None or self.first_token_s is None:
            return None
        tokens = (self.usage or {}).get("completion_tokens", self.chunks)
        span = self.generation_s
        if span is None:
            span = None if self.paused_s else self.duration_s - self.first_token_s
        if not tokens or span is None or span <= 0:
            return None
        return float(tokens) / span

    @property
    def final(self) -> bool:
        """Whether this message can still change (a reply or a tool call in flight can)."""
        return self.role not in ("assistant", "tool") or self.finish is not None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["usage"] = dict(self.usage) if self.usage is not None else None
        data["context"] = [dict(a) for a in self.context] if self.context else None
        data["tool_arguments"] = (
            dict(self.tool_arguments) if self.tool_arguments is not None else None
        )
        data["tokens_per_s"] = self.tokens_per_s
        return data


_FIELDS: Final = fields(Message)


@dataclass
class Transcript:
    """An ordered list of messages, with the optional system prompt kept apart."""

    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    # The record of each message that can no longer change, by position: a turn then
    # costs the same however long the transcript is.
    _records: list[tuple[Message, dict[str, Any]]] = field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    def add_user(
        self, content: str, *, at: float, context: list[dict[str, str]] | None = None
    ) -> Message:
        message = Message(
            turn=self.turns + 1,
            role="user",
            content=content,
            created_at=at,
            context=[dict(a) for a in context] if context else None,
        )
        self.messages.append(message)
        return message

    def add_assistant(self, *, reply_id: str, model: str | None, at: float) -> Message:
        message = Message(
            turn=max(self.turns, 1),
            role="assistant",
            content="",
            created_at=at,
            model=model,
            reply_id=reply_id,
        )
        self.messages.append(message)
        return message

    def add_tool(
        self,
        *,
        call: str,
        name: str,
        arguments: dict[str, Any],
        reply_id: str | None,
        at: float,
        before: Message | None = None,
    ) -> Message:
        """A tool call of a reply, placed before ``before`` (the reply's assistant
        message, which grows after it), else at the end; its result comes later."""
        message = Message(
            turn=max(self.turns, 1),
            role="tool",
            content="",
            created_at=at,
            reply_id=reply_id,
            tool_call=call,
            tool_name=name,
            tool_arguments=dict(arguments),
        )
        index = next((i for i, m in enumerate(self.messages) if m is before), len(self.messages))
        self.messages.insert(index, message)
        return message

    def history(
        self, max_chars: int | None = None, *, pictures: PicturePlan | None = None
    ) -> tuple[ChatMessage, ...]:
        """The messages to send with the next request: the system prompt, then every
        message with content. A stopped reply's partial text is kept; an empty failed
        reply is left out, so a retry does not carry it. A user message carries its
        attachments after its text, every time (the model saw them).

        With ``max_chars``, the oldest turns are left out until the messages' content
        fits in that many characters; the system prompt and the newest message are
        always sent. Tool messages go as they are (the call and its result); one whose
        name no API accepts (a model's mistake) is left out.

        ``pictures`` (from :meth:`plan_pictures`) says which pictures go; without it
        none do. Each picture's note says whether the model got it, and why not."""
        kept = [m for m in self.messages if _sent(m)]
        plan = pictures or PicturePlan()
        sent = [m.content_with(plan.notes(m)) for m in kept]
        if max_chars is not None and kept:
            budget = max_chars - len(self.system or "")
            start, used = len(kept), 0
            while start > 0 and (used + len(sent[start - 1]) <= budget or start == len(kept)):
                start -= 1
                used += len(sent[start])
            # Whole turns only: a history never opens with a reply whose prompt is gone.
            while start < len(kept) - 1 and kept[start].role != "user":
                start += 1
            kept, sent = kept[start:], sent[start:]
        out: list[ChatMessage] = []
        if self.system:
            out.append(ChatMessage(role="system", content=self.system))
        out += [
            ChatMessage(
                role="tool",
                content=text,
                call=m.tool_call,
                name=m.tool_name,
                arguments=m.tool_arguments or {},
            )
            if m.role == "tool"
            else ChatMessage(role=m.role, content=text, images=plan.images(m))
            for m, text in zip(kept, sent, strict=True)
        ]
        return tuple(out)

    def clear(self) -> None:
        self.messages.clear()
        self._records.clear()

    def changed(self, message: Message) -> None:
        """Say that a message which no longer changes did change (its record is made
        again by the next :meth:`to_records`)."""
        index = next((i for i, m in enumerate(self.messages) if m is message), None)
        if index is not None:
            del self._records[index:]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per message with exactly the :data:`COLUMNS` keys (shared with
        later calls for messages that no longer change: copy one before editing it)."""
        cache = self._records
        del cache[len(self.messages) :]
        out = []
        for i, m in enumerate(self.messages):
            if i < len(cache) and cache[i][0] is m:
                out.append(cache[i][1])
                continue
            del cache[i:]  # the list was edited here: what follows is recomputed
            record = _record(m)
            if m.final and i == len(cache):
                cache.append((m, record))
            out.append(record)
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """The transcript as a pandas DataFrame, one row per message (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - exercised only without pandas
            raise ImportError(
                "to_dataframe() needs pandas: pip install pandas (or nbchat[pandas])"
            ) from exc
        frame: pd.DataFrame = pd.DataFrame.from_records(self.to_records(), columns=list(COLUMNS))
        frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True)
        for column in ("first_token_s", "duration_s", "tokens_per_s"):
            frame[column] = frame[column].astype("float64")
        for column in ("chunks", "prompt_tokens", "completion_tokens"):
            frame[column] = frame[column].astype("Int64")
        return frame


def _sent(m: Message) -> bool:
    """Whether a message goes in the history (see :meth:`Transcript.history`)."""
    if m.role == "tool":
        return bool(m.tool_call and TOOL_NAME.fullmatch(m.tool_name or ""))
    return bool(m.content) or m.role == "user"


def _record(message: Message) -> dict[str, Any]:
    data = message.to_dict()
    usage = message.usage or {}
    data["prompt_tokens"] = usage.get("prompt_tokens")
    data["completion_tokens"] = usage.get("completion_tokens")
    return {c: data.get(c) for c in COLUMNS}


# --- portable forms: JSON, a DataFrame back, Markdown ----------------------------

# Message fields a saved file carries, with the types each may hold (None always may).
_SAVED: Final[dict[str, tuple[type, ...]]] = {
    "turn": (int,),
    "created_at": (int, float),
    "model": (str,),
    "finish": (str,),
    "first_token_s": (int, float),
    "duration_s": (int, float),
    "paused_s": (int, float),
    "generation_s": (int, float),
    "chunks": (int,),
    "usage": (dict,),
    "error": (str,),
    "reply_id": (str,),
    "reasoning": (str,),
    "context": (list,),
    "tool_name": (str,),
    "tool_arguments": (dict,),
    "tool_call": (str,),
}
# An attachment's fields (nbchat.context.Attachment); summary is optional.
_ATTACHMENT_FIELDS: Final = ("name", "kind", "text")


@dataclass
class PicturePlan:
    """Which pictures of user messages one request carries, and why the others stay
    behind: by message (its ``id()``) and attachment index, ``None`` for a picture
    sent, else the note the model reads instead."""

    left: dict[int, dict[int, str]] = field(default_factory=dict)
    sent: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def notes(self, message: Message) -> dict[int, str]:
        return self.left.get(id(message), {})

    def images(self, message: Message) -> tuple[str, ...] | None:
        return self.sent.get(id(message)) or None


def plan_pictures(messages: Iterable[Message], *, images: bool, budget: int) -> PicturePlan:
    """The pictures a request carries: none when the model takes no images, else the
    newest first while they fit in ``budget`` characters (each on its own)."""
    plan = PicturePlan()
    for m in reversed([m for m in messages if m.role == "user" and m.images]):
        sent: list[str] = []
        left: dict[int, str] = {}
        for i, item in reversed(list(enumerate(m.context or ()))):
            image = item.get("image")
            if not image:
                continue
            if images and len(image) <= budget:
                sent.insert(0, image)
                budget -= len(image)
            else:
                left[i] = PICTURE_LEFT_OUT if images else PICTURE_NOT_SENT
        plan.sent[id(m)] = tuple(sent)
        plan.left[id(m)] = left
    return plan


def transcript_to_json(transcript: Transcript) -> dict[str, Any]:
    """The transcript as a JSON-ready dict (see :data:`FORMAT`)."""
    messages = []
    for m in transcript.messages:
        data = {"role": m.role, "content": m.content}
        data.update({name: getattr(m, name) for name in _SAVED})
        messages.append(data)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "system": transcript.system,
        "messages": messages,
    }


def transcript_from_json(data: Any) -> Transcript:
    """Read what :func:`transcript_to_json` wrote; raise ``ValueError`` saying what is
    wrong with anything else (including a file from a newer nbchat)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an nbchat transcript (expected format {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("the transcript has no valid format version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"this transcript was saved by a newer nbchat (format version {version}); "
            f"this one reads version {FORMAT_VERSION}: upgrade nbchat to load it"
        )
    system, raw = data.get("system"), data.get("messages")
    if system is not None and not isinstance(system, str):
        raise ValueError("the transcript's system prompt must be text")
    if not isinstance(raw, list):
        raise ValueError("the transcript's messages must be a list")
    transcript = Transcript(system=system)
    for i, item in enumerate(raw):
        transcript.messages.append(_message_from(item, f"message {i}"))
    return transcript


def _message_from(item: Any, where: str) -> Message:
    """One saved message, checked field by field: what loads here is what a Chat can
    show, send and save again."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES or not isinstance(content, str):
        raise ValueError(f"{where} needs a role ({', '.join(ROLES)}) and text content")
    fields_: dict[str, Any] = {}
    for name, types_ in _SAVED.items():
        value = item.get(name)
        if isinstance(value, float) and int in types_ and float not in types_:
            if not value.is_integer():
                raise ValueError(f"{where}: {name} must be a whole number, not {value!r}")
            value = int(value)  # a DataFrame or CSV makes integer columns float
        if value is not None and (isinstance(value, bool) or not isinstance(value, types_)):
            raise ValueError(f"{where}: {name} has the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be a finite number")
        fields_[name] = value
    if fields_["finish"] is not None and fields_["finish"] not in FINISH_REASONS:
        raise ValueError(f"{where}: finish must be one of {', '.join(FINISH_REASONS)}")
    created = fields_["created_at"]
    if created is not None and not 0 <= created < 1e11:
        raise ValueError(f"{where}: created_at must be Unix time in seconds")
    if fields_["usage"] is not None and not _usage_ok(fields_["usage"]):
        raise ValueError(
            f"{where}: usage must map names to whole numbers (or to such maps, as "
            "OpenAI's completion_tokens_details)"
        )
    fields_["context"] = _context_from(fields_["context"], where)
    texts = [content, fields_["model"], fields_["error"], fields_["reasoning"]]
    texts += [fields_["tool_name"], fields_["tool_call"]]
    texts += [v for a in fields_["context"] or () for v in a.values()]
    for text in texts:
        if isinstance(text, str) and lone_surrogate(text) is not None:
            raise ValueError(f"{where}: text contains a lone surrogate")
    if role == "tool" and not (fields_["tool_name"] and fields_["tool_call"]):
        raise ValueError(f"{where}: a tool message needs tool_name and tool_call")
    if fields_["tool_arguments"] is not None:
        try:
            json.dumps(fields_["tool_arguments"], allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: tool_arguments must be a JSON object") from None
    if role in ("assistant", "tool") and fields_["finish"] is None:
        fields_["finish"] = "stopped"  # saved mid-reply: it can only have stopped there
    return Message(
        turn=fields_.pop("turn") or 0,
        role=role,
        content=content,
        created_at=float(fields_.pop("created_at") or 0.0),
        **fields_,
    )


def _usage_ok(usage: dict[str, Any], depth: int = 0) -> bool:
    """Token counts by name; a provider may group some (``prompt_tokens_details``)."""
    for key, count in usage.items():
        if not isinstance(key, str):
            return False
        if isinstance(count, dict):
            if depth >= 2 or not _usage_ok(count, depth + 1):
                return False
        elif isinstance(count, bool) or not isinstance(count, int):
            return False
    return True


def _context_from(value: list[Any] | None, where: str) -> list[dict[str, str]] | None:
    """A saved message's attachments, checked: a list of {name, kind, text, summary?}."""
    if not value:
        return None
    out = []
    for item in value:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in _ATTACHMENT_FIELDS
        ):
            raise ValueError(f"{where}: context must be a list of {{name, kind, text}} objects")
        summary = item.get("summary")
        if summary is not None and not isinstance(summary, str):
            raise ValueError(f"{where}: a context summary must be text")
        loaded = {k: item[k] for k in _ATTACHMENT_FIELDS} | {"summary": summary or ""}
        image = item.get("image")
        if image is not None:
            if not isinstance(image, str) or not IMAGE_URI.fullmatch(image):
                raise ValueError(f"{where}: a context image must be a data:image/...;base64 URI")
            loaded["image"] = image
        picture = item.get("picture")
        if isinstance(picture, str):
            loaded["picture"] = picture
        out.append(loaded)
    return out


def transcript_from_records(records: list[dict[str, Any]], system: str | None = None) -> Transcript:
    """A transcript from rows shaped like :meth:`Transcript.to_records`, with plain
    values (None for missing, ``created_at`` in Unix seconds): a DataFrame from
    ``to_dataframe()``, maybe filtered or edited. Each row is checked as a saved
    message is; turns are numbered afresh."""
    transcript = Transcript(system=system)
    turn = 0
    for i, data in enumerate(records):
        usage = {
            k: data[k] for k in ("prompt_tokens", "completion_tokens") if data.get(k) is not None
        }
        usage = {
            k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in usage.items()
        }
        item = {name: data.get(name) for name in _SAVED}
        content = data.get("content")
        # An empty text cell comes back from CSV and friends as missing.
        item.update(role=data.get("role"), content="" if content is None else content)
        item["usage"] = usage or None
        item["context"] = _context_cell(data.get("context"), f"row {i}")
        item["tool_arguments"] = _arguments_cell(data.get("tool_arguments"), f"row {i}")
        message = _message_from(item, f"row {i}")
        turn += message.role == "user"
        message.turn = max(turn, 1)
        transcript.messages.append(message)
    return transcript


def _context_cell(value: Any, where: str) -> Any:
    """A DataFrame's context cell: a list, or that list as text (CSV writes it as a
    Python or JSON literal); empty or missing is none."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{where}: context must be a list of attachments") from None
    return value


def _arguments_cell(value: Any, where: str) -> Any:
    """A DataFrame's tool_arguments cell: an object, or that object as JSON or Python
    literal text (as CSV writes it); empty or missing is none."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{where}: tool_arguments must be a JSON object") from None


def transcript_to_markdown(transcript: Transcript) -> str:
    """The conversation as Markdown: each message under its author (You, or the model),
    and after each reply a footer line with how it ended and its timing."""
    parts: list[str] = []
    if transcript.system:
        parts.append(f"**System:** {transcript.system}")
    for m in transcript.messages:
        if m.role == "user":
            parts.append(f"**You**\n\n{m.content}")
            if m.context:
                parts.append("*Attached: " + "; ".join(_attached(a) for a in m.context) + "*")
            continue
        if m.role == "system":
            parts.append(f"**System:** {m.content}")
            continue
        if m.role == "tool":
            arguments = json.dumps(m.tool_arguments or {}, ensure_ascii=False)
            fence = "`" * max(3, _longest_run(m.content, "`") + 1)
            parts.append(
                f"**Tool** `{m.tool_name}` called with `{arguments}`\n\n"
                f"{fence}\n{m.content}\n{fence}"
            )
            continue
        content = _fences_closed(m.content) if m.content else "*(no text)*"
        parts.append(f"**{m.model or 'assistant'}**\n\n{content}")
        parts.append("*" + footer_line(m) + "*")
    return "\n\n".join(parts) + "\n"


def _longest_run(text: str, char: str) -> int:
    longest = run = 0
    for c in text:
        run = run + 1 if c == char else 0
        longest = max(longest, run)
    return longest


def _attached(item: dict[str, str]) -> str:
    about = ", ".join(p for p in (item.get("kind"), item.get("summary")) if p)
    return f"`{item.get('name')}` ({about})" if about else f"`{item.get('name')}`"


def _fences_closed(text: str) -> str:
    """``text`` with a code fence it leaves open (a reply stopped mid-code) closed, so
    what follows it in a Markdown document is not swallowed into the code."""
    open_fence = ""
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if len(line) - len(stripped) > 3:
            continue
        run = len(stripped) - len(stripped.lstrip(stripped[:1])) if stripped else 0
        fence = stripped[:run]
        if run < 3 or fence[0] not in "`~":
            continue
        if not open_fence:
            open_fence = fence
        elif fence[0] == open_fence[0] and run >= len(open_fence) and not stripped[run:].strip():
            open_fence = ""
    return f"{text}\n{open_fence}" if open_fence else text


def footer_line(m: Message) -> str:
    """A reply's footer: its model, how it ended (when not plainly) and its timing."""
    footer = [m.model or "assistant"]
    if m.finish is None:
        footer.append("streaming")
    elif m.finish != "stop":
        footer.append({"length": "cut at max tokens"}.get(m.finish, m.finish))
    if m.first_token_s is not None:
        footer.append(f"first token {m.first_token_s:.2f} s")
    if m.duration_s is not None:
        footer.append(f"{m.duration_s:.1f} s")
    if m.paused_s:
        footer.append(f"paused {m.paused_s:.1f} s")
    if m.tokens_per_s is not None:
        footer.append(f"{m.tokens_per_s:.0f} tokens/s")
    if m.error:
        footer.append(f"error: {m.error}")
    return " · ".join(footer)
