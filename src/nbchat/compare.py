"""``chat.compare(prompt, models)``: one prompt to several models at once, side by side.

A :class:`Compare` is a widget of its own, drawn by the chat's front-end bundle (its
``kind`` trait picks ``js/src/compare.ts``): one column per model, each streaming its
reply. Each column is a :class:`~nbchat.conversation.Conversation` of its own on the
chat's gateway, starting from a copy of the chat's history, so the replies stream
independently and the chat itself is not touched until :meth:`Compare.pick`.

Traffic to the pane is bounded for the whole pane, whatever the number of columns
(at most :data:`MAX_MODELS`): it goes in flush ticks on the client loop thread, each
sending every column's new text as one ``batch`` message of offset chunks, then the
``columns`` trait once for the columns whose state changed since the last tick (text
before state, so a paused or ended column never grows after it says so). A tick that
sent ``n`` messages holds the next one back ``n`` intervals
(:attr:`~nbchat.pane.StreamBatcher.interval_s`, 20 messages a second), and when
every column's text trickles in the ticks follow the batchers' slower pace
(:meth:`~nbchat.pane.StreamBatcher.due`). A view that asks (``sync``) gets every
column's text so far as snapshots in one ``batch``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anywidget
import traitlets

from .client import client_loop
from .context import Attachment
from .conversation import ConnectionStatus, Conversation, ConversationListener
from .frontend import CSS, ESM, display_live, keep_pane_messages_on_their_subshell
from .pane import StreamBatcher
from .reply import Reply
from .transcript import Message

if TYPE_CHECKING:
    import pandas as pd

    from .widget import Chat

__all__ = ["COMPARE_COLUMNS", "COMPARE_COMMANDS", "MAX_MODELS", "Compare", "Models"]

log = logging.getLogger("nbchat")

# What chat.compare takes as models: names (or Python functions served as models), or
# a dict of them to params of their own.
Models: TypeAlias = (
    Sequence[str | Callable[..., Any]] | Mapping[str | Callable[..., Any], Mapping[str, Any]]
)

# Commands the compare pane may send; stop, pause and resume take an optional
# ``column`` (an index; none: every column), pick needs one.
COMPARE_COMMANDS: Final = ("stop", "pause", "resume", "sync", "pick")
# The most models one comparison takes: each is a connection and a column.
MAX_MODELS: Final = 16
# Columns of Compare.to_dataframe(), in order.
COMPARE_COLUMNS: Final = (
    "model",
    "text",
    "finish",
    "error",
    "first_token_s",
    "duration_s",
    "tokens_per_s",
    "prompt_tokens",
    "completion_tokens",
    "cost",
)
# A reply's statuses once it has ended.
_FINAL_STATUSES: Final = ("done", "stopped", "error")
# The column's assistant message fields a pick carries into the chat's transcript.
_PICKED_FIELDS: Final = (
    "content",
    "finish",
    "error",
    "first_token_s",
    "duration_s",
    "paused_s",
    "generation_s",
    "chunks",
    "usage",
    "reasoning",
)


@dataclass
class _Column:
    """One model's side of the comparison. Besides ``index``, ``model`` and
    ``conversation``, its fields are the client loop thread's."""

    index: int
    model: str
    conversation: Conversation
    # Set by send(); the loop thread may call back before send() returns, and sets it
    # then (the same object).
    sent: Reply | None = None
    batcher: StreamBatcher = field(default_factory=StreamBatcher)
    closing: bool = False  # its conversation is closed, or being closed
    running: bool = False  # its reply has left its conversation's queue
    # Its reply's start has gone out (or waits in the link's outbox), so a pause or
    # resume may follow it; a reply still queued in its conversation ignores them.
    started: bool = False
    wants_paused: bool = False  # what pause/resume asked last
    waiting: bool = False  # it has text the pane has not had yet
    dirty: bool = False  # its state changed since the columns trait was written
    shown_final: bool = False  # the trait has its final state

    @property
    def reply(self) -> Reply:
        assert self.sent is not None, "every column is sent before Compare() returns"
        return self.sent


class _ColumnListener(ConversationListener):
    """Follows one column's conversation on the client loop thread."""

    def __init__(self, compare: Compare, index: int) -> None:
        self.compare = compare
        self.index = index

    def _column(self, reply: Reply) -> _Column:
        column = self.compare._columns[self.index]
        column.sent = reply
        return column

    def on_reply_start(self, reply: Reply) -> None:
        column = self._column(reply)
        column.batcher.begin(reply.id)
        column.running = True
        # With the link up, the conversation sends the start without yielding after
        # this callback, so a pause asked now goes after it; otherwise it connects
        # first, and on_status says when.
        link = column.conversation.connection
        if link.connected or link.state == "reconnecting":
            self._started(column)
        self.compare._changed(column)

    def on_status(self, status: ConnectionStatus, detail: str, error: str | None) -> None:
        # Called from the start too, before the column is in the list: it has not run.
        columns = self.compare._columns
        if status == "connected" and self.index < len(columns) and columns[self.index].running:
            self._started(columns[self.index])

    def _started(self, column: _Column) -> None:
        if not column.started:
            column.started = True
            if column.wants_paused:  # paused while it waited in the queue
                column.reply.pause()

    def on_chunk(self, reply: Reply, text: str) -> None:
        column = self._column(reply)
        column.batcher.add(text)
        column.waiting = True
        self.compare._changed(column)

    def on_reasoning(self, reply: Reply, text: str) -> None:
        # The pane shows answers only; the column streams (it is thinking).
        self.compare._changed(self._column(reply))

    def on_reply_status(self, reply: Reply) -> None:
        column = self._column(reply)
        self.compare._changed(column)
        if reply.finished and not column.closing:
            # Its connection is of no more use; Conversation.close blocks, so not here.
            column.closing = True
            asyncio.get_running_loop().run_in_executor(None, column.conversation.close)


class Compare(anywidget.AnyWidget):
    """One prompt sent to several models at once, their replies side by side.

    Made by ``chat.compare(prompt, models, context=None, **params)``: each model gets
    the chat's history (system prompt, messages, params), ``prompt`` and its
    attachments (``context=`` and ``@name``, as ``chat.send`` makes them), on the chat's
    gateway with the chat's link settings and prices, with ``params`` over the chat's
    (``models`` as a dict gives each model params of its own too:
    ``{"demo": {"tokens_per_s": 100}, "gpt-4o-mini": {}}``), and streams its reply in a
    column of its own. The chat's tools are not offered to the models. At most
    :data:`MAX_MODELS` models. The chat is left as it was until you :meth:`pick` an
    answer. As a cell's last line it shows the compare pane: a column per model with
    its status, Stop and Pause / Resume, Continue with this once it has ended, and
    Stop all / Pause all.

    Attributes:
        prompt: the message sent.
        models: the model names, one per column, in order (a function given as a
            model is shown under its name).
        replies: ``{model: Reply}``, each like ``chat.send``'s (``wait()``,
            ``await``, ``for chunk in reply``, ``text``, ``finish``, ``usage``).
        columns: each column's state as the pane shows it (a list of dicts).
        picked: the model picked, or "".
        error: why the last pick was refused (shown in the pane), or "".
        finished: whether every reply has ended.

    Methods:
        stop(model=None), pause(model=None), resume(model=None): act on one model's
            reply, or on all of them (None); a pause before a reply starts holds it
            from its start.
        wait(timeout=None): block until every reply has ended (and ``columns`` says
            so); returns the Compare (``TimeoutError`` naming the models still
            running). ``await cmp`` too.
        to_dataframe(): one row per model: model, text, finish, error, first_token_s,
            duration_s, tokens_per_s, prompt_tokens, completion_tokens, cost (US
            dollars at the chat's current ``prices``; None without a price or usage).
        pick(model): continue the chat with that model's answer, on that model.
        close(): stop every reply and close the pane; ``with chat.compare(...)`` too.
    """

    _esm = ESM  # the chat's bundle: its render draws this pane for kind "compare"
    _css = CSS

    # Which pane the bundle draws for this model.
    kind = traitlets.Unicode("compare", read_only=True).tag(sync=True)
    # Identifies this comparison to its views (initialize and render get different
    # model proxies, so the text they share is keyed on it).
    compare_id = traitlets.Unicode(read_only=True).tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    # One dict per model, written at most once per flush tick for the columns that
    # changed state (never per token): model, reply, status, finish, error,
    # first_token_s, duration_s, tokens_per_s, prompt_tokens, completion_tokens, cost.
    # The text travels as "batch" messages.
    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    # The model picked (the pane's Continue with this, or pick()), and why a pick was
    # refused, shown under the pane's header.
    picked = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        chat: Chat,
        prompt: str,
        models: Models,
        *,
        context: list[Attachment] | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("cannot compare on an empty prompt; pass some text")
        names = _model_names(chat, models)
        base = chat._conversation
        # The history the replies answer, fixed now: the chat may move on meanwhile,
        # and then a pick would answer another history. Checked under the lock, where
        # a reply starts and ends: a reply running would be sent half written.
        with base.lock:
            _check_idle(chat, "compare")
            transcript = copy.deepcopy(base.transcript)
            self._history = transcript.history()
        super().__init__(prompt=prompt, columns=[_column_state(name) for name, _ in names])
        self._chat = chat
        self._loop = client_loop()  # the columns' conversations run on it
        self._flush_handle: asyncio.TimerHandle | None = None
        self._free_at = float("-inf")  # loop time before which no tick may go
        # Set once every reply has ended and the columns trait says so (wait() waits).
        self._shown: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._columns: list[_Column] = []
        try:
            # Every column exists before any is sent: their callbacks look them up.
            for index, (name, own) in enumerate(names):
                listener = _ColumnListener(self, index)
                conversation = _column_conversation(base, name, {**params, **own}, listener)
                self._columns.append(_Column(index, name, conversation))
                conversation.replace_transcript(copy.deepcopy(transcript))
            for column in self._columns:
                column.sent = column.conversation.send(prompt, context=context)
        except BaseException:
            self._close_conversations()
            super().close()
            raise
        self._interval_s = self._columns[0].batcher.interval_s
        self.on_msg(self._on_pane_message)
        keep_pane_messages_on_their_subshell(self.comm)

    @traitlets.default("compare_id")
    def _new_compare_id(self) -> str:
        return uuid.uuid4().hex

    # --- the API ------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """The model of each column, in order."""
        return [c.model for c in self._columns]

    @property
    def replies(self) -> dict[str, Reply]:
        """Each model's :class:`~nbchat.reply.Reply`, by model name."""
        return {c.model: c.reply for c in self._columns}

    @property
    def finished(self) -> bool:
        """Whether every reply has ended."""
        return all(c.reply.finished for c in self._columns)

    def stop(self, model: str | None = None) -> None:
        """Stop ``model``'s reply (its partial text stays, ``finish == "stopped"``), or
        every reply with None. The other columns go on."""
        for column in self._chosen(model):
            column.reply.stop()

    def pause(self, model: str | None = None) -> None:
        """Hold delivery of ``model``'s reply (every reply with None); nothing is lost.
        A reply that has not started yet (its connection is opening) is held from its
        start."""
        for column in self._chosen(model):
            self._loop.call_soon_threadsafe(self._want_paused, column, True)

    def resume(self, model: str | None = None) -> None:
        """Deliver what was held of ``model``'s reply (every reply with None), then go on."""
        for column in self._chosen(model):
            self._loop.call_soon_threadsafe(self._want_paused, column, False)

    def wait(self, timeout: float | None = None) -> Compare:
        """Block until every reply has ended and :attr:`columns` says so; return this
        Compare. Raises ``TimeoutError`` naming the models still running after
        ``timeout`` seconds (they go on; :meth:`stop` ends them)."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        try:
            for column in self._columns:
                column.reply.wait(remaining())
            self._shown.result(remaining())
        except (TimeoutError, concurrent.futures.TimeoutError):
            running = [c.model for c in self._columns if not c.reply.finished]
            raise TimeoutError(
                f"still running after {timeout} s: {', '.join(running) or 'the pane'}"
            ) from None
        return self

    def __await__(self) -> Generator[Any, None, Compare]:
        return self._all_ended().__await__()

    async def _all_ended(self) -> Compare:
        await asyncio.gather(*(c.reply for c in self._columns))
        await asyncio.wrap_future(self._shown)
        return self

    def to_dataframe(self) -> pd.DataFrame:
        """One row per model (:data:`COMPARE_COLUMNS`): its text so far, how it ended,
        time to first token and in all (seconds, from sending, pauses left out), the
        tokens its provider reported, and the cost in US dollars at the chat's current
        :attr:`~nbchat.Chat.prices` (None without a price or usage). Needs pandas."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - exercised only without pandas
            raise ImportError(
                "to_dataframe() needs pandas: pip install pandas (or nbchat[pandas])"
            ) from exc
        rows = [self._row(column) for column in self._columns]
        frame: pd.DataFrame = pd.DataFrame.from_records(rows, columns=list(COMPARE_COLUMNS))
        # The transcript's dtypes (Transcript.to_dataframe), for the columns it shares.
        for name in ("first_token_s", "duration_s", "tokens_per_s", "cost"):
            frame[name] = frame[name].astype("float64")
        for name in ("prompt_tokens", "completion_tokens"):
            frame[name] = frame[name].astype("Int64")
        return frame

    def pick(self, model: str) -> Reply:
        """Continue the chat with ``model``'s answer: the prompt (with its attachments)
        and that answer (with its timing and usage) are added to the chat's transcript,
        as if the chat had sent it, and ``chat.model`` becomes ``model``, so the next
        ``chat.send`` goes to it with this answer in its history. Returns that model's
        reply. The pane's Continue with this button does the same.

        Raises ``RuntimeError`` once the chat is closed, while the chat has a reply
        running or queued, while that model's reply is still running (``wait()`` or
        ``stop()`` it first), once a column has been picked, or when the chat's history
        has changed since the comparison started; ``ValueError`` for an unknown model
        or a reply that failed. The pane shows why in its :attr:`error`.
        """
        try:
            reply = self._pick(model)
        except (RuntimeError, ValueError) as exc:
            self.error = str(exc)
            raise
        self.error = ""
        return reply

    def close(self) -> None:
        """Stop every reply, close their connections and the pane. Idempotent; the
        replies and :meth:`to_dataframe` stay readable."""
        self._close_conversations()
        super().close()

    def __enter__(self) -> Compare:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        columns = getattr(self, "_columns", [])
        states = ", ".join(f"{c.model}: {c.sent.status if c.sent else 'pending'}" for c in columns)
        prompt = self.prompt if len(self.prompt) <= 40 else self.prompt[:40] + "..."
        return f"Compare({prompt!r}, {{{states}}})"

    def _ipython_display_(self) -> None:
        """Show the live pane; a saved notebook shows a line saying what it was, not a
        repr that would be stale at once."""
        display_live(self, f"nbchat compare pane (live widget): {', '.join(self.models)}")

    # --- inside ---------------------------------------------------------------------

    def _chosen(self, model: str | None) -> list[_Column]:
        if model is None:
            return list(self._columns)
        found = [c for c in self._columns if c.model == model]
        if not found:
            raise ValueError(f"no column for model {model!r}; the models: {self.models}")
        return found

    def _pick(self, model: str) -> Reply:
        (column,) = self._chosen(model)
        chat = self._chat
        if self.picked:
            raise RuntimeError(f"this comparison was picked already ({self.picked!r})")
        reply = column.reply
        if not reply.finished:
            raise RuntimeError(
                f"{model}'s reply is still {reply.status}; wait for it (cmp.wait()) "
                f"or stop it (cmp.stop({model!r})) first"
            )
        if reply.finish == "error":
            raise ValueError(f"{model}'s reply failed ({reply.error}); pick another model")
        user, answer = self._turn(column)
        conversation = chat._conversation
        with conversation.lock:
            _check_idle(chat, "pick")
            transcript = conversation.transcript
            if transcript.history() != self._history:
                raise RuntimeError(
                    "the chat's conversation has changed since this comparison started, "
                    "so its answers reply to another history; compare again"
                )
            transcript.add_user(self.prompt, at=reply.sent_at, context=user.context)
            message = transcript.add_assistant(
                reply_id=reply.id, model=column.model, at=answer.created_at
            )
            for name in _PICKED_FIELDS:
                setattr(message, name, copy.deepcopy(getattr(answer, name)))
        self.picked = column.model
        conversation.listener.on_transcript()  # the pane (and a named chat's store)
        chat.model = column.model
        return reply

    def _turn(self, column: _Column) -> tuple[Message, Message]:
        """Copies of the column's user message and its answer (transcript rows)."""
        with column.conversation.lock:
            messages = column.conversation.transcript.messages
            for i, message in enumerate(messages):
                if message.role == "assistant" and message.reply_id == column.reply.id:
                    user = next(m for m in reversed(messages[:i]) if m.role == "user")
                    return copy.deepcopy(user), copy.deepcopy(message)
        raise RuntimeError(f"{column.model}'s reply is not in its transcript")  # pragma: no cover

    def _row(self, column: _Column) -> dict[str, Any]:
        """The column's reply as its transcript record says it, priced at the chat's
        prices of now (they may have changed since)."""
        prices = self._chat._conversation.prices
        conversation = column.conversation
        if conversation.prices is not prices:
            conversation.set_prices(prices)
            if column.reply.finished:  # its footer in the pane shows the cost too
                self._loop.call_soon_threadsafe(self._changed, column)
        record: dict[str, Any] = {}
        for r in conversation.records():
            if r["role"] == "assistant" and r["reply_id"] == column.reply.id:
                record = r
        reply = column.reply
        return {
            "model": column.model,
            "text": reply.text,
            "finish": reply.finish,
            "error": reply.error,
            **{name: record.get(name) for name in COMPARE_COLUMNS[4:]},
        }

    def _want_paused(self, column: _Column, paused: bool) -> None:
        """On the loop thread: a pause or resume for the column. A reply still queued
        in its conversation (where a pause does nothing) gets it when it starts."""
        column.wants_paused = paused
        if not column.started or column.reply.finished:
            return
        if paused:
            column.reply.pause()
        else:
            column.reply.resume()

    def _changed(self, column: _Column) -> None:
        """On the loop thread: the column has new text or state; a tick will send it."""
        column.dirty = True
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            now = loop.time()
            due = [c.batcher.due(now) for c in self._columns if c.waiting]
            when = max(self._free_at, min(due) if due else now)
            self._flush_handle = loop.call_at(when, self._flush)

    def _flush(self) -> None:
        """One tick: every column's new text in one message, then the changed columns'
        state in one write of the trait."""
        self._flush_handle = None
        now = asyncio.get_running_loop().time()
        sent = 0
        chunks = []
        for column in self._columns:
            column.waiting = False
            message = column.batcher.take(now)
            if message is not None:
                chunks.append({**message, "column": column.index})
        if chunks:
            self._push({"type": "batch", "messages": chunks})
            sent += 1
        dirty = [c for c in self._columns if c.dirty]
        states = list(self.columns)
        for column in dirty:
            column.dirty = False
            state = self._column_state(column)
            if state != states[column.index]:
                states[column.index] = state
                column.shown_final = state["status"] in _FINAL_STATUSES
        if states != self.columns:
            self.columns = states
            sent += 1
        self._free_at = now + sent * self._interval_s
        if all(c.shown_final for c in self._columns) and not self._shown.done():
            self._shown.set_result(None)

    def _column_state(self, column: _Column) -> dict[str, Any]:
        reply = column.reply
        state = _column_state(column.model)
        state.update(reply=reply.id, status=reply.status)
        if reply.finished:
            row = self._row(column)
            state.update({k: row[k] for k in state if k in row and k != "model"})
        return state

    def send_snapshot(self) -> None:
        """Every column's text handed out so far, for a view that has none (or saw a
        gap); later batches continue from there."""
        snapshots = []
        for column in self._columns:
            message = column.batcher.snapshot()
            if message is not None:
                snapshots.append({**message, "column": column.index})
        self._push({"type": "batch", "messages": snapshots})

    def _push(self, message: dict[str, Any]) -> None:
        self.send(message)

    def _on_pane_message(self, _widget: object, content: Any, _buffers: object) -> None:
        try:
            kind, model = self._parse_command(content)
        except ValueError as exc:  # a pane of another version: never raise in the kernel
            log.warning("nbchat compare pane: %s", exc)
            return
        if kind == "sync":
            self.send_snapshot()
        elif kind == "stop":
            self.stop(model)
        elif kind == "pause":
            self.pause(model)
        elif kind == "resume":
            self.resume(model)
        elif kind == "pick" and model is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self.pick(model)  # a refusal: pick() put the reason in the pane's error

    def _parse_command(self, content: Any) -> tuple[str, str | None]:
        if not isinstance(content, dict) or content.get("type") not in COMPARE_COMMANDS:
            raise ValueError(f"unknown compare pane message {content!r}")
        column = content.get("column")
        if column is None:
            if content["type"] == "pick":
                raise ValueError("a pick needs the column picked")
            return content["type"], None
        if isinstance(column, bool) or not isinstance(column, int):
            raise ValueError(f"a column must be an index, not {column!r}")
        if not 0 <= column < len(self._columns):
            raise ValueError(f"no column {column}")
        return content["type"], self._columns[column].model

    def _close_conversations(self) -> None:
        open_ = [c for c in getattr(self, "_columns", []) if not c.closing]
        for column in open_:
            column.closing = True
        try:
            # In parallel: each may wait a moment for its gateway to confirm a stop.
            with concurrent.futures.ThreadPoolExecutor(max(1, len(open_))) as pool:
                for column in open_:
                    pool.submit(column.conversation.close)
        except RuntimeError:  # the interpreter is shutting down: no new threads
            for column in open_:
                column.conversation.close()


def _check_idle(chat: Chat, then: str) -> None:
    """Raise ``RuntimeError`` once ``chat`` is closed, or while it has a reply running
    or queued (which would go half written into the history). Under its lock."""
    if chat._conversation._closing:
        raise RuntimeError("this chat is closed; create a new Chat() to compare and pick")
    if chat._conversation.current is not None:
        raise RuntimeError(f"the chat has a reply running; wait for it or stop it, then {then}")


def _column_conversation(
    base: Conversation, model: str, params: dict[str, Any], listener: ConversationListener
) -> Conversation:
    """A conversation for one column, sent the way ``base`` (the chat's) sends: its
    gateway, token, link settings, history limit, prices, and which of its models are
    Python functions (they take pictures); ``params`` over its params. Not its tools:
    a comparison offers none."""
    link = base.connection
    conversation = Conversation(
        base.urls,
        token=link.token,
        model=model,
        system=base.transcript.system,
        params={**base.params, **params},
        listener=listener,
        backoff=link.backoff,
        heartbeat_s=link.heartbeat_s,
        max_history_chars=base.max_history_chars,
        prices=base.prices,
    )
    conversation.local_model = base.local_model
    return conversation


def _column_state(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "reply": None,
        "status": "pending",
        "finish": None,
        "error": None,
        "first_token_s": None,
        "duration_s": None,
        "tokens_per_s": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "cost": None,
    }


def _model_names(chat: Chat, models: Any) -> list[tuple[str, dict[str, Any]]]:
    """Each column's model name and its own params: names as given, a function served
    in this kernel under its name (as ``chat.model = fn`` does); a mapping gives each
    model params of its own. Raises ``ValueError`` for none, more than
    :data:`MAX_MODELS`, a lone string, an empty name or the same model twice."""
    if isinstance(models, Mapping):
        items = list(models.items())
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        items = [(model, {}) for model in models]
    else:
        raise ValueError(
            'models must be a list of model names, e.g. ["gpt-4o-mini", "claude", "demo"], '
            'or a dict of them to their own params, e.g. {"demo": {"tokens_per_s": 100}}'
        )
    if not items:
        raise ValueError("compare needs at least one model; pass models=[...]")
    if len(items) > MAX_MODELS:
        raise ValueError(
            f"compare takes at most {MAX_MODELS} models (one column and one connection "
            f"each), not {len(items)}; compare fewer at a time"
        )
    out: list[tuple[str, dict[str, Any]]] = []
    for model, params in items:
        if callable(model):
            model = chat._local_model(model)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"a model must be a non-empty name or a function, not {model!r}")
        if model in [name for name, _ in out]:
            raise ValueError(f"{model!r} is listed twice; each model gets one column")
        if not isinstance(params, Mapping):
            raise ValueError(f"the params of {model!r} must be a dict, not {params!r}")
        out.append((model, dict(params)))
    return out
