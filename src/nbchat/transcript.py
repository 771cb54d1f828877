"""The conversation as records: what was said, by whom, with which model, and how fast.

The conversation is a tree: each message has a stable ``id`` and a ``parent``. A retry
or an edit adds a sibling beside a message instead of replacing it, so every version is
kept. :attr:`Transcript.messages` is the *active branch*, the path from the root to the
message the conversation goes on from: what the next request sends, what the pane shows
and what every export without ``all_branches`` holds. Branch numbers: the first line is
branch 0; a message added beside one that exists (a fork) starts the next number; any
other message has its parent's.

Pure: no I/O. pandas is imported only inside :meth:`Transcript.to_dataframe`, so nbchat
works without it until a DataFrame is asked for.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import operator
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from .context import PICTURE_LEFT_OUT, PICTURE_NOT_SENT, render_message
from .pricing import BUILTIN_PRICES, Prices, cost
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
    "PANE_KEYS",
    "Branch",
    "Message",
    "PicturePlan",
    "Transcript",
    "footer_line",
    "message_to_json",
    "new_id",
    "plan_pictures",
    "transcript_from_json",
    "transcript_from_records",
    "transcript_from_tree",
    "transcript_to_json",
    "transcript_to_markdown",
]

# The portable file (Transcript.to_json): a named format and a version, so a file from
# a newer nbchat is refused with a clear message instead of being misread.
FORMAT: Final = "nbchat.transcript"
# Version 2 holds the whole tree (every message with id, parent and branch) and the
# active branch's last message; version 1 files (one line) still load.
FORMAT_VERSION: Final = 2

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
    "cost",
    "error",
    "reply_id",
    "tool_name",
    "tool_arguments",
    "tool_call",
    "id",
    "parent",
    "branch",
)
# Keys a record has beyond COLUMNS, for the pane's arrows between versions: the message's
# place among its alternatives (1-based) and how many there are (1: none). A reply's
# alternatives are the other replies to its user message; every message of a reply
# carries the same two.
PANE_KEYS: Final = ("sibling_index", "sibling_count")


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
    # Its place in the tree (see the module docstring).
    id: str = field(default_factory=lambda: new_id())
    parent: str | None = None
    branch: int = 0

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
MAX_ID_CHARS: Final = 128


def new_id() -> str:
    """A new message id: ``m-`` and 12 hex digits."""
    return f"m-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Branch:
    """One branch of a conversation, as :meth:`Transcript.branches` lists them:
    its number, the id of its last message (``leaf``), its turns, the start of its last
    user message (``preview``), and whether the active branch is on it (``active``: at
    its leaf, or before it after an undo)."""

    branch: int
    leaf: str
    turns: int
    preview: str
    active: bool


@dataclass
class Transcript:
    """A conversation tree and its active branch (:attr:`messages`, root first), with
    the optional system prompt kept apart, and the prices a record's ``cost`` uses.

    Messages appended to :attr:`messages` directly join the tree after the one before
    them; the ``add_*`` methods and the branch methods keep the tree themselves."""

    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    prices: Prices = field(default_factory=lambda: dict(BUILTIN_PRICES))
    # The record of each message that can no longer change, by position, with the
    # sibling count it was made with (a message added beside one makes it stale): a
    # turn then costs the same however long the transcript is.
    _records: list[tuple[Message, int, dict[str, Any]]] = field(
        default_factory=list, repr=False, compare=False
    )
    # Every message by id, in the order they joined; their children's ids by parent id.
    _nodes: dict[str, Message] = field(default_factory=dict, repr=False, compare=False)
    _kids: dict[str | None, list[str]] = field(default_factory=dict, repr=False, compare=False)
    _next_branch: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._adopt()

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    # --- the tree -----------------------------------------------------------------

    def _adopt(self) -> None:
        """Take into the tree what was appended to :attr:`messages` directly."""
        if not self.messages or self.messages[-1].id in self._nodes:
            return  # nothing appended (the one check per call that stays cheap)
        previous: Message | None = None
        for m in self.messages:
            if m.id not in self._nodes:
                if m.parent is None and previous is not None:
                    m.parent = previous.id
                self._register(m)
            previous = m

    def _register(self, m: Message) -> None:
        self._nodes[m.id] = m
        self._kids.setdefault(m.parent, []).append(m.id)
        self._next_branch = max(self._next_branch, m.branch + 1)

    def _attach(self, m: Message) -> None:
        """Put ``m`` at the end of the active branch, as a child of its last message:
        beside any children that has (a fork, on a branch of its own)."""
        self._adopt()
        parent = self.messages[-1] if self.messages else None
        m.parent = parent.id if parent is not None else None
        if self._kids.get(m.parent):  # a fork: its siblings' records note it (to_records)
            m.branch = self._next_branch
        else:
            m.branch = parent.branch if parent is not None else 0
        self._register(m)
        self.messages.append(m)

    def node(self, message_id: str) -> Message:
        """The message with this id, on any branch; ``ValueError`` if there is none."""
        self._adopt()
        found = self._nodes.get(message_id) if isinstance(message_id, str) else None
        if found is None:
            raise ValueError(f"there is no message with id {message_id!r} in this conversation")
        return found

    def children(self, message: Message | None) -> list[Message]:
        """The messages that follow ``message`` (None: the first messages), oldest first."""
        self._adopt()
        key = message.id if message is not None else None
        return [self._nodes[i] for i in self._kids.get(key, ())]

    def tree(self) -> list[Message]:
        """Every message of every branch: each after its parent, a message's children
        (and all that follows each) in the order they were added."""
        self._adopt()
        roots = [
            i for i, m in self._nodes.items() if m.parent is None or m.parent not in self._nodes
        ]
        out: list[Message] = []
        stack = list(reversed(roots))
        while stack:
            m = self._nodes[stack.pop()]
            out.append(m)
            stack.extend(reversed(self._kids.get(m.id, ())))
        return out

    def path_to(self, message: Message | None) -> list[Message]:
        """The messages from the root to ``message``, root first ([] for None)."""
        path: list[Message] = []
        seen: set[str] = set()
        while message is not None and message.id not in seen:
            seen.add(message.id)
            path.append(message)
            message = self._nodes.get(message.parent) if message.parent is not None else None
        path.reverse()
        return path

    def head(self, message: Message) -> Message:
        """The first message of ``message``'s reply (its first tool call, else the
        answer), or the message itself for a user message: what its alternatives are
        alternatives of."""
        if message.role not in ("assistant", "tool"):
            return message
        while message.parent is not None:
            parent = self._nodes.get(message.parent)
            if parent is None or parent.role != "tool" or parent.reply_id != message.reply_id:
                break
            message = parent
        return message

    def siblings(self, message: Message) -> list[str]:
        """The ids of ``message``'s alternatives (see :meth:`head`), itself among them,
        oldest first."""
        head = self.head(message)
        ids = self._kids.get(head.parent, [])
        return list(ids) if head.id in ids else [head.id]

    def leaf_below(self, message: Message) -> Message:
        """The newest message with no children at or below ``message``."""
        order = {i: n for n, i in enumerate(self._nodes)}
        best, stack = message, [message.id]
        best_key: tuple[float, int] | None = None
        while stack:
            current = self._nodes[stack.pop()]
            kids = self._kids.get(current.id, ())
            if kids:
                stack.extend(kids)
                continue
            key = (current.created_at, order.get(current.id, 0))
            if best_key is None or key > best_key:
                best, best_key = current, key
        return best

    def branches(self) -> list[Branch]:
        """Every branch, by number: one per message with no children."""
        self._adopt()
        end = self.messages[-1] if self.messages else None
        out = []
        for m in self._nodes.values():
            if self._kids.get(m.id):
                continue
            path = self.path_to(m)
            users = [p for p in path if p.role == "user"]
            preview = users[-1].content if users else ""
            preview = " ".join(preview.split())
            preview = preview if len(preview) <= 60 else preview[:57] + "..."
            active = end is not None and end.branch == m.branch and any(p is end for p in path)
            out.append(Branch(m.branch, m.id, len(users), preview, active))
        out.sort(key=lambda b: b.branch)
        return out

    def checkout(self, target: int | str | Branch, *, sibling: int | None = None) -> Message:
        """Make a branch the active one: by number, by a :class:`Branch`, or by a
        message id (the newest branch through that message; with ``sibling``, through
        that message's alternative at this 1-based index, as the pane's arrows ask).
        Numbers may be any whole numbers (numpy's, as a DataFrame gives them), not
        bools. Returns its last message; ``ValueError`` for a branch or message there
        is not."""
        self._adopt()
        if sibling is not None:
            if not isinstance(target, str):
                raise ValueError("checkout(..., sibling=N) needs a message id")
            ids = self.siblings(self.node(target))  # node() adopted what was appended
            index = _whole(sibling)
            if index is None:
                raise ValueError(f"sibling must be a number from 1 to {len(ids)}")
            if not 1 <= index <= len(ids):
                raise ValueError(
                    f"message {target!r} has {len(ids)} version(s): sibling must be "
                    f"from 1 to {len(ids)}, not {index}"
                )
            target = ids[index - 1]
        if isinstance(target, Branch):
            target = target.branch
        number = _whole(target)
        if number is not None:
            leaf = self._leaf_of(number)
        elif isinstance(target, str):
            leaf = self.leaf_below(self.node(target))
        else:
            raise ValueError(f"checkout takes a branch number or a message id, not {target!r}")
        self.messages[:] = self.path_to(leaf)
        return leaf

    def _leaf_of(self, number: int) -> Message:
        """The last message of branch ``number``; ``ValueError`` if there is none."""
        leaves = [m for m in self._nodes.values() if not self._kids.get(m.id)]
        found = [m for m in leaves if m.branch == number]
        if not found:
            known = ", ".join(str(b) for b in sorted({m.branch for m in leaves})) or "none"
            raise ValueError(
                f"there is no branch {number}; the branches: {known} (chat.branches() lists them)"
            )
        return found[-1]

    def user_message(self, *, turn: int | None = None, message_id: str | None = None) -> Message:
        """The user message of ``turn`` on the active branch, or the one with this id on
        any branch; ``ValueError`` if there is none."""
        if (turn is None) == (message_id is None):
            raise ValueError("say which message: turn=N (on the active branch) or id=...")
        if message_id is not None:
            found = self.node(message_id)
            if found.role != "user":
                raise ValueError(f"message {message_id!r} is not yours: its role is {found.role}")
            return found
        number = _whole(turn)
        if number is None:
            raise ValueError(f"turn must be a turn number, not {turn!r}")
        for m in self.messages:
            if m.role == "user" and m.turn == number:
                return m
        raise ValueError(
            f"there is no turn {turn} on the active branch (it has {self.turns} turns)"
        )

    def rewind(self, message: Message | None) -> None:
        """End the active branch at ``message`` (None: before the first message).
        Nothing is deleted: what followed stays in the tree."""
        self.messages[:] = self.path_to(message)

    def rewind_before(self, message: Message) -> None:
        """End the active branch just before ``message``, at its parent (before the
        first message for a first message): the next message added goes beside it."""
        parent = self._nodes.get(message.parent) if message.parent is not None else None
        self.rewind(parent)

    def last_user(self) -> Message:
        """The active branch's last user message; ``ValueError`` if it has none."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m
        raise ValueError("the active branch has no message of yours yet")

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
        self._attach(message)
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
        self._attach(message)
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
        index = next((i for i, m in enumerate(self.messages) if m is before), None)
        if before is None or index is None:
            self._attach(message)
            return message
        # It takes ``before``'s place in the tree, and ``before`` follows it.
        message.parent, message.branch = before.parent, before.branch
        siblings = self._kids.setdefault(before.parent, [])
        siblings[siblings.index(before.id)] = message.id
        self._nodes[message.id] = message
        before.parent = message.id
        self._kids[message.id] = [before.id]
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
        self._nodes.clear()
        self._kids.clear()
        self._next_branch = 0

    def set_prices(self, prices: Prices) -> None:
        """Price records' ``cost`` at ``prices`` from now on (every record is made again)."""
        self.prices = prices
        self._records.clear()

    def changed(self, message: Message) -> None:
        """Say that a message which no longer changes did change (its record is made
        again by the next :meth:`to_records`)."""
        index = next((i for i, m in enumerate(self.messages) if m is message), None)
        if index is not None:
            del self._records[index:]

    def to_records(self, *, all_branches: bool = False) -> list[dict[str, Any]]:
        """One dict per message of the active branch (with ``all_branches``, of every
        branch, in :meth:`tree` order) with exactly the :data:`COLUMNS` and
        :data:`PANE_KEYS` keys (shared with later calls for messages that no longer
        change: copy one before editing it)."""
        self._adopt()
        if all_branches:
            return [self._record(m) for m in self.tree()]
        cache = self._records
        del cache[len(self.messages) :]
        out = []
        for i, m in enumerate(self.messages):
            if i < len(cache) and cache[i][0] is m and cache[i][1] == self._sibling_count(m):
                out.append(cache[i][2])
                continue
            del cache[i:]  # the list was edited here: what follows is recomputed
            record = self._record(m)
            if m.final and i == len(cache):
                cache.append((m, record["sibling_count"], record))
            out.append(record)
        return out

    def _sibling_count(self, message: Message) -> int:
        head = self.head(message)
        ids = self._kids.get(head.parent, ())
        return len(ids) if head.id in ids else 1

    def _record(self, message: Message) -> dict[str, Any]:
        data = message.to_dict()
        usage = message.usage or {}
        data["prompt_tokens"] = usage.get("prompt_tokens")
        data["completion_tokens"] = usage.get("completion_tokens")
        data["cost"] = cost(message.model, message.usage, self.prices)
        record = {c: data.get(c) for c in COLUMNS}
        siblings = self.siblings(message)
        head = self.head(message)
        record["sibling_index"] = siblings.index(head.id) + 1 if head.id in siblings else 1
        record["sibling_count"] = len(siblings)
        return record

    def to_dataframe(self, *, all_branches: bool = False) -> pd.DataFrame:
        """The transcript as a pandas DataFrame, one row per message of the active
        branch, or with ``all_branches`` of every branch (:meth:`tree` order; ``parent``
        and ``branch`` say where each row sits). Needs pandas."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - exercised only without pandas
            raise ImportError(
                "to_dataframe() needs pandas: pip install pandas (or nbchat[pandas])"
            ) from exc
        records = self.to_records(all_branches=all_branches)
        frame: pd.DataFrame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
        frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True)
        for column in ("first_token_s", "duration_s", "tokens_per_s", "cost"):
            frame[column] = frame[column].astype("float64")
        for column in ("chunks", "prompt_tokens", "completion_tokens"):
            frame[column] = frame[column].astype("Int64")
        frame["branch"] = frame["branch"].astype("int64")
        return frame


def _whole(value: object) -> int | None:
    """``value`` as an int if it is a whole number (numpy's too), else None; never a
    bool, which is not a number a person means."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return operator.index(value)
    return None


def _sent(m: Message) -> bool:
    """Whether a message goes in the history (see :meth:`Transcript.history`)."""
    if m.role == "tool":
        return bool(m.tool_call and TOOL_NAME.fullmatch(m.tool_name or ""))
    return bool(m.content) or m.role == "user"


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
    "id": (str,),
    "parent": (str,),
    "branch": (int,),
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


def message_to_json(message: Message) -> dict[str, Any]:
    """One message as :func:`transcript_to_json` writes it."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    data.update({name: getattr(message, name) for name in _SAVED})
    return data


def transcript_to_json(transcript: Transcript) -> dict[str, Any]:
    """The transcript as a JSON-ready dict (see :data:`FORMAT`): every message of every
    branch (each after its parent), and ``active``, the id of the active branch's last
    message (null when it is empty)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "system": transcript.system,
        "messages": [message_to_json(m) for m in transcript.tree()],
        "active": transcript.messages[-1].id if transcript.messages else None,
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
    messages = [_message_from(item, f"message {i}") for i, item in enumerate(raw)]
    if version == 1:  # one line: ids, parents and branches are made afresh
        for m in messages:
            m.id, m.parent, m.branch = new_id(), None, 0
        return Transcript(system=system, messages=messages)
    for i, item in enumerate(raw):
        if not isinstance(item.get("id"), str):
            raise ValueError(f"message {i}: a message of a version 2 file needs its id")
    # Without "active" (a file written by hand): the newest branch through the last.
    active: str | bool | None = data.get("active", True)
    if "active" in data and active is not None and not isinstance(active, str):
        raise ValueError("the transcript's active message must be a message id, or null")
    return transcript_from_tree(messages, system=system, active=active)


def transcript_from_tree(
    messages: list[Message], *, system: str | None = None, active: str | bool | None = True
) -> Transcript:
    """A transcript of ``messages``, linked by ``id`` and ``parent`` (in any order;
    each parent must be among them). Branch numbers are kept when they agree with the
    tree's shape, else numbered afresh; turns are numbered along each branch.
    ``active``: the id of the active branch's last message, None for an empty active
    branch, or True for the newest branch through the last message given. Raises
    ``ValueError`` for duplicate ids, a missing parent, or a cycle."""
    by_id: dict[str, Message] = {}
    for m in messages:
        if m.id in by_id:
            raise ValueError(f"two messages have the id {m.id!r}")
        by_id[m.id] = m
    # Parents first, otherwise in the order given.
    ordered: list[Message] = []
    placed: set[str] = set()
    for m in messages:
        chain: list[Message] = []
        in_chain: set[str] = set()
        current: Message | None = m
        while current is not None and current.id not in placed:
            if current.id in in_chain:
                raise ValueError(f"message {current.id!r} is its own ancestor")
            chain.append(current)
            in_chain.add(current.id)
            if current.parent is None:
                current = None
            else:
                current = by_id.get(current.parent)
                if current is None:
                    raise ValueError(
                        f"message {chain[-1].id!r} follows {chain[-1].parent!r}, which "
                        "is not among the messages"
                    )
        for c in reversed(chain):
            placed.add(c.id)
            ordered.append(c)
    if not _branches_agree(ordered):
        _number_branches(ordered)
    _number_turns(ordered)
    transcript = Transcript(system=system)
    for m in ordered:
        transcript._register(m)
    if active is True:
        if messages:
            transcript.messages[:] = transcript.path_to(transcript.leaf_below(messages[-1]))
    elif active is not None and active is not False:
        if active not in by_id:
            raise ValueError(f"the active message {active!r} is not among the messages")
        transcript.messages[:] = transcript.path_to(by_id[active])
    return transcript


def _branches_agree(ordered: list[Message]) -> bool:
    """Whether the branch numbers fit the tree (parents first): a parent's first child
    is on its branch, every other child starts a number no other message starts, and
    the numbers are 0 to N-1 with none missing (a file's 2**70 or gaps are not kept)."""
    by_id = {m.id: m for m in ordered}
    seen_parent: set[str | None] = set()
    started: set[int] = set()
    for m in ordered:
        if isinstance(m.branch, bool) or not isinstance(m.branch, int) or m.branch < 0:
            return False
        parent = by_id.get(m.parent) if m.parent is not None else None
        fork = m.parent in seen_parent
        seen_parent.add(m.parent)
        if fork or parent is None:
            if m.branch in started or (parent is not None and m.branch == parent.branch):
                return False
            started.add(m.branch)
        elif m.branch != parent.branch:
            return False
    return started == set(range(len(started)))


def _number_branches(ordered: list[Message]) -> None:
    """Number branches afresh, in order (parents first): a first child keeps its
    parent's branch, any other message starts the next number."""
    by_id = {m.id: m for m in ordered}
    seen_parent: set[str | None] = set()
    next_branch = 0
    for m in ordered:
        parent = by_id.get(m.parent) if m.parent is not None else None
        if parent is None or m.parent in seen_parent:
            m.branch, next_branch = next_branch, next_branch + 1
        else:
            m.branch = parent.branch
        seen_parent.add(m.parent)


def _number_turns(ordered: list[Message]) -> None:
    """A user message's turn is the count of user messages up to it on its branch;
    another message has the turn of the user message before it (1 at least)."""
    users: dict[str, int] = {}
    for m in ordered:
        before = users.get(m.parent, 0) if m.parent is not None else 0
        users[m.id] = before + (m.role == "user")
        m.turn = max(users[m.id], 1)


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
    message_id = fields_.pop("id")
    if message_id is not None and (
        not message_id or len(message_id) > MAX_ID_CHARS or lone_surrogate(message_id) is not None
    ):
        raise ValueError(f"{where}: id must be text of 1 to {MAX_ID_CHARS} characters")
    if fields_["parent"] is not None and not fields_["parent"]:
        raise ValueError(f"{where}: parent must be a message id, or null")
    branch = fields_.pop("branch")
    if branch is not None and branch < 0:
        raise ValueError(f"{where}: branch must be 0 or more")
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
        id=message_id or new_id(),
        branch=branch or 0,
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
    message is; turns are numbered afresh.

    When every row has an ``id`` (distinct) and each ``parent`` is null or another
    row's id (as in ``to_dataframe(all_branches=True)``), the tree is rebuilt and the
    active branch is the newest one through the last row. Otherwise the rows are one
    line, in order, as they stand (a filtered frame whose parents are gone is one)."""
    ids = [r.get("id") for r in records]
    distinct = set(ids)
    tree = (
        bool(records)
        and all(isinstance(i, str) and i for i in ids)
        and len(distinct) == len(ids)
        and all(r.get("parent") is None or r.get("parent") in distinct for r in records)
    )
    transcript = Transcript(system=system)
    messages: list[Message] = []
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
        if not tree:
            item.update(id=None, parent=None, branch=None)
        elif isinstance(item["branch"], float) and not item["branch"].is_integer():
            item["branch"] = None  # not a branch number: numbered afresh
        message = _message_from(item, f"row {i}")
        turn += message.role == "user"
        message.turn = max(turn, 1)
        messages.append(message)
    if tree:
        return transcript_from_tree(messages, system=system, active=True)
    transcript.messages.extend(messages)
    transcript._adopt()
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
