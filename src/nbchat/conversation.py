"""A conversation over one gateway connection: the reply queue, the transcript, and the
:class:`~nbchat.reply.Reply` handles, kept in step with the frames that arrive.

Replies run one at a time, in the order sent: a ``send`` while a reply streams is queued
and starts, with the full history, when the previous one ends. All state changes happen
on the client loop thread; public methods may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .backoff import Backoff
from .client import (
    DEFAULT_HEARTBEAT_S,
    ClientConnection,
    GatewayUnavailable,
    LinkState,
    RequestTooLarge,
    SendRefused,
    client_loop,
    refusal_code,
)
from .context import Attachment
from .pricing import BUILTIN_PRICES, Prices
from .protocol import (
    IMAGE_URI,
    ChatMessage,
    Delta,
    Done,
    Error,
    Pause,
    Paused,
    ProtocolError,
    Resume,
    Resumed,
    ServerFrame,
    Snapshot,
    Start,
    Started,
    Stop,
    ToolCall,
    ToolResult,
    Welcome,
    encode,
    lone_surrogate,
)
from .reply import Reply
from .session import SESSION_LOST
from .tools import Tool, run_tool
from .transcript import Branch, Message, Transcript, plan_pictures

__all__ = ["ConnectionStatus", "Conversation", "ConversationListener"]

ConnectionStatus = Literal["connecting", "connected", "reconnecting", "offline", "closed"]
log = logging.getLogger("nbchat")

CLOSE_TIMEOUT_S = 5.0
STOP_GRACE_S = 1.0  # on close, how long a stop may wait for the gateway's answer


class ConversationListener:
    """Hooks a view implements to follow a conversation. Called on the client loop
    thread; each must return quickly. The defaults do nothing."""

    def on_status(self, status: ConnectionStatus, detail: str, error: str | None) -> None: ...
    def on_models(self, models: list[str]) -> None: ...
    def on_transcript(self) -> None: ...
    def on_reply_start(self, reply: Reply) -> None: ...
    def on_chunk(self, reply: Reply, text: str) -> None: ...
    def on_reasoning(self, reply: Reply, text: str) -> None: ...
    def on_reply_status(self, reply: Reply) -> None: ...
    def on_tool_asking(self, reply: Reply) -> None: ...


class _Guarded(ConversationListener):
    """A listener whose hooks cannot break the conversation: a hook that raises (a
    view's bug) is logged, and the reply, the queue and the link go on as if it had
    returned. Without this, an exception in a hook called from the worker or the frame
    handler would end that task, and every reply after it would hang."""

    def __init__(self, inner: ConversationListener) -> None:
        self.inner = inner

    def _call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.inner, hook)(*args)
        except Exception:
            log.exception("nbchat: the chat view's %s raised; the chat goes on", hook)

    def on_status(self, status: ConnectionStatus, detail: str, error: str | None) -> None:
        self._call("on_status", status, detail, error)

    def on_models(self, models: list[str]) -> None:
        self._call("on_models", models)

    def on_transcript(self) -> None:
        self._call("on_transcript")

    def on_reply_start(self, reply: Reply) -> None:
        self._call("on_reply_start", reply)

    def on_chunk(self, reply: Reply, text: str) -> None:
        self._call("on_chunk", reply, text)

    def on_reasoning(self, reply: Reply, text: str) -> None:
        self._call("on_reasoning", reply, text)

    def on_reply_status(self, reply: Reply) -> None:
        self._call("on_reply_status", reply)

    def on_tool_asking(self, reply: Reply) -> None:
        self._call("on_tool_asking", reply)


@dataclass
class _InFlight:
    """Book-keeping for the reply being generated."""

    reply: Reply
    message: Message
    sent_at: float  # loop time when start was sent
    ended: asyncio.Event
    paused_since: float | None = None  # loop time of the pause being held, if any
    paused_s: float = 0.0  # time spent paused before that
    chunks: int = 0
    started: bool = False  # its start frame has been sent (or queued for the resume)
    # Its tool calls' transcript rows by call id: a call replayed after a resume is
    # already here, and does not run again.
    calls: dict[str, Message] = field(default_factory=dict)
    tool_tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Conversation:
    """Sends messages, streams replies and keeps the transcript. See :class:`nbchat.Chat`
    for the user-facing API built on it."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        model: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        listener: ConversationListener | None = None,
        backoff: Backoff | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        max_history_chars: int | None = None,
        tools: dict[str, Tool] | None = None,
        prices: Prices | None = None,
    ) -> None:
        if system is not None:
            _check_sendable("system", system)
        self.params = _checked_params(params or {})
        if max_history_chars is not None and max_history_chars < 1:
            raise ValueError("max_history_chars must be a positive number of characters")
        self.max_history_chars = max_history_chars
        # Functions the model may call, by name (shared with the Chat, which adds to
        # it); offered with each start, run here when the gateway sends a tool_call.
        self.tools: dict[str, Tool] = tools if tools is not None else {}
        self.model = model
        self.models: list[str] = []
        self.image_models: set[str] = set()  # of models, those that take images
        # Whether a model name is a Python function the embedded gateway serves (they
        # all take images); set by the Chat.
        self.local_model: Callable[[str], bool] | None = None
        self.status: ConnectionStatus = "connecting"
        self.status_detail = ""
        self.error: str | None = None
        # A start-up problem of the gateway (welcome.notice): shown as the error while
        # nothing more pressing is, since it explains replies that fail.
        self.notice: str | None = None
        self.listener: ConversationListener = _Guarded(listener or ConversationListener())
        self.prices: Prices = dict(BUILTIN_PRICES) if prices is None else prices
        self.transcript = Transcript(system=system, prices=self.prices)
        # Guards the transcript, which the loop thread writes and callers read.
        self.lock = threading.RLock()
        self._loop = client_loop()
        self._queue: asyncio.Queue[Reply | None] = asyncio.Queue()
        self._queued: list[Reply] = []
        self._context: dict[str, list[dict[str, str]]] = {}  # by reply id, until it runs
        # Replies that answer the active branch's last user message again (retry): they
        # add no user message of their own.
        self._again: set[str] = set()
        # Where the active branch ended before a retry or an edit moved it, by reply id
        # until the reply runs: a reply stopped while queued puts the branch back.
        self._moved_from: dict[str, Message | None] = {}
        self._current: _InFlight | None = None
        # Calls of tools with confirm=True waiting for the user's answer, by call id.
        self._asking: dict[str, asyncio.Future[bool]] = {}
        self._closing = False
        self._welcomed_at: str | None = None  # the gateway of the latest welcome
        self._connection = ClientConnection(
            url,
            token=token,
            on_frame=self._on_frame,
            on_state=self._on_link_state,
            backoff=backoff,
            heartbeat_s=heartbeat_s,
        )
        self._worker = asyncio.run_coroutine_threadsafe(self._work(), self._loop)

    # --- called from any thread ---------------------------------------------------

    def send(self, text: str, context: list[Attachment] | None = None, **params: Any) -> Reply:
        """Queue a user message; ``context`` is its attachments (made by
        :mod:`nbchat.context`), sent after the text in this request and every later one."""
        return self._queue_reply(text, context, params, None)

    def _queue_reply(
        self,
        text: str,
        context: list[Attachment] | None,
        params: dict[str, Any],
        branch: Callable[[], bool] | None,
        *,
        new_message: bool = True,
    ) -> Reply:
        """Check, then queue a reply. ``branch`` (called under the lock, only when no
        reply runs or waits) moves the active branch first; it returns True when the
        reply answers the branch's last user message again instead of a new one.
        ``new_message``: ``text`` is a new message, checked (a retry's is there already,
        and may be empty when it has attachments)."""
        if new_message:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("cannot send an empty message; pass some text")
            _check_sendable("the message", text)
        attachments = _checked_context(context)
        merged = _checked_params({**self.params, **params})
        if self._closing:
            raise RuntimeError("this chat is closed; create a new Chat()")
        reply = Reply(f"r-{uuid.uuid4().hex[:12]}", text, control=self._control)
        reply.params = merged
        reply.model = self.model
        with self.lock:
            if branch is not None:
                self._check_idle()
                end = self.transcript.messages[-1] if self.transcript.messages else None
                if branch():
                    self._again.add(reply.id)
                self._moved_from[reply.id] = end
            self._queued.append(reply)
            if attachments:
                self._context[reply.id] = attachments
        self._loop.call_soon_threadsafe(self._queue.put_nowait, reply)
        return reply

    # --- branches (see nbchat.transcript): only while no reply runs or waits -------

    def _check_idle(self) -> None:
        if self._current is not None or self._queued:
            raise RuntimeError("a reply is running or queued; wait for it, or stop it")

    def retry(self, **params: Any) -> Reply:
        """Answer the active branch's last user message again: the new reply goes
        beside the one there (which stays, on its own branch) and becomes active."""
        with self.lock:
            self._check_idle()
            prompt = self.transcript.last_user()

        def again() -> bool:
            user = self.transcript.last_user()
            if user is not prompt:
                raise RuntimeError("the conversation changed meanwhile; retry again")
            self.transcript.rewind(user)
            return True

        return self._queue_reply(prompt.content, None, params, again, new_message=False)

    def edit(
        self,
        text: str,
        *,
        turn: int | None = None,
        message_id: str | None = None,
        context: list[Attachment] | None = None,
        **params: Any,
    ) -> Reply:
        """Send ``text`` in place of a user message (turn ``turn`` of the active branch,
        or the message ``message_id``): the new message goes beside it, on a new branch
        that becomes active; the old one stays on its own."""
        with self.lock:
            self._check_idle()
            old = self.transcript.user_message(turn=turn, message_id=message_id)

        def beside() -> bool:
            self.transcript.rewind_before(old)
            return False

        return self._queue_reply(text, context, params, beside)

    def undo(self) -> Message:
        """End the active branch before its last user message (nothing is deleted: a
        checkout goes back to it); returns that message."""
        with self.lock:
            self._check_idle()
            user = self.transcript.last_user()
            self.transcript.rewind_before(user)
        self.listener.on_transcript()
        return user

    def checkout(self, target: int | str | Branch, *, sibling: int | None = None) -> Message:
        """Make another branch active (see :meth:`Transcript.checkout`)."""
        with self.lock:
            self._check_idle()
            leaf = self.transcript.checkout(target, sibling=sibling)
        self.listener.on_transcript()
        return leaf

    def _move_back(self, end: Message | None) -> None:
        """A retry or edit stopped before it ran: the active branch ends where it did
        (unless the conversation was cleared meanwhile). Under the lock."""
        if end is None:
            self.transcript.rewind(None)
            return
        try:
            known = self.transcript.node(end.id)
        except ValueError:
            return
        if known is end:
            self.transcript.rewind(end)

    def branches(self) -> list[Branch]:
        with self.lock:
            return self.transcript.branches()

    def set_prices(self, prices: Prices) -> None:
        """Price records' ``cost`` at ``prices`` (checked by the caller) from now on."""
        with self.lock:
            self.prices = prices
            self.transcript.set_prices(prices)
        self.listener.on_transcript()

    @property
    def current(self) -> Reply | None:
        """The reply being generated, else the oldest queued one, else None."""
        in_flight = self._current
        if in_flight is not None:
            return in_flight.reply
        with self.lock:
            return self._queued[0] if self._queued else None

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.transcript.to_records()

    def replace_transcript(self, transcript: Transcript) -> None:
        """Continue from ``transcript`` (a loaded or rebuilt history): the next message
        carries it. Only between replies."""
        with self.lock:
            self._check_idle()
            transcript.set_prices(self.prices)
            self.transcript = transcript
        self.listener.on_transcript()

    def report(self, error: str | None) -> None:
        """Show ``error`` as the chat's error (e.g. the conversation store's), or clear
        it with None, keeping the link status; from any thread."""
        self._loop.call_soon_threadsafe(
            lambda: self._set_status(self.status, error, self.status_detail)
        )

    def clear(self) -> None:
        """Stop the reply in flight, drop queued ones and empty the transcript."""
        self._stop_all()
        with self.lock:
            self.transcript.clear()
        self.listener.on_transcript()

    def close(self) -> None:
        """Stop what is running and close the connection. Idempotent."""
        if self._closing:
            return
        self._stop_all()
        self._closing = True
        asyncio.run_coroutine_threadsafe(self._end_current_after(STOP_GRACE_S), self._loop)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
        # Closing must not raise for a link that already failed.
        with contextlib.suppress(Exception):
            self._worker.result(timeout=CLOSE_TIMEOUT_S)

    async def _end_current_after(self, seconds: float) -> None:
        """Closing: a reply whose stop the gateway has not answered by then (the link
        is down or stalled) ends here as stopped, so close() never waits on the link."""
        in_flight = self._current
        if in_flight is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(in_flight.ended.wait(), seconds)
        if not in_flight.ended.is_set():
            self._end(in_flight, "stopped", error=None, code=None)

    def _stop_all(self) -> None:
        with self.lock:
            pending = list(self._queued)
        for reply in pending:
            reply.stop()
        if self._current is not None:
            self._current.reply.stop()

    def reconnect(self) -> None:
        """Try to reach the gateway again now (after it went offline, or to cut a
        backoff short); the session resumes where it left off."""
        asyncio.run_coroutine_threadsafe(self._connection.reconnect_now(), self._loop)

    @property
    def asking(self) -> list[str]:
        """Ids of the tool calls waiting for the user's answer (``confirm=True``)."""
        return list(self._asking)

    def answer_tool(self, call: str, run: bool) -> None:
        """Answer a tool call that asks first: run it, or tell the model the user
        declined. An answer for a call not waiting (any more) does nothing."""

        def answer() -> None:
            future = self._asking.get(call)
            if future is not None and not future.done():
                future.set_result(bool(run))

        self._loop.call_soon_threadsafe(answer)

    @property
    def connection(self) -> ClientConnection:
        return self._connection

    @property
    def url(self) -> str:
        """The gateway URL in use (of several, the one that last welcomed this chat)."""
        return self._connection.url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every gateway URL this chat may use, in the order they are tried."""
        return self._connection.urls

    def _control(self, action: str, reply: Reply) -> None:
        asyncio.run_coroutine_threadsafe(self._apply_control(action, reply), self._loop)

    # --- on the loop thread -------------------------------------------------------

    def _set_status(
        self, status: ConnectionStatus, error: str | None = None, detail: str = ""
    ) -> None:
        if error is None and status != "closed":
            error = self.notice
        self.status, self.error, self.status_detail = status, error, detail
        self.listener.on_status(status, detail, error)

    def _on_link_state(self, state: LinkState, detail: str) -> None:
        if state == "connected":
            self._set_status("connected", detail=detail)
        elif state == "reconnecting":
            self._set_status("reconnecting", detail=detail)
        elif state == "offline":
            self._set_status("offline", error=detail)
            if self._current is not None:  # given up: the reply cannot finish
                self._end(self._current, "error", error=detail, code="unavailable")
        elif state == "closed":
            self._set_status("closed")

    async def _connect(self) -> bool:
        """Whether a start can be sent: connected, or reconnecting (it waits in the
        outbox); otherwise one attempt now."""
        if self._connection.connected or self._connection.state == "reconnecting":
            return True
        self._set_status("connecting")
        try:
            await self._connection.open()
        except GatewayUnavailable as exc:
            self._set_status("offline", str(exc))
            return False
        return True

    async def _work(self) -> None:
        await self._connect()
        try:
            while (reply := await self._queue.get()) is not None:
                with self.lock:
                    context = self._context.pop(reply.id, None)
                    moved = reply.id in self._moved_from
                    moved_from = self._moved_from.pop(reply.id, None)
                    dropped = reply.finished  # stopped while it waited in the queue
                    if dropped:
                        if reply in self._queued:
                            self._queued.remove(reply)
                        self._again.discard(reply.id)
                        if moved:
                            self._move_back(moved_from)
                if dropped:
                    if moved:
                        self.listener.on_transcript()
                    continue
                await self._run(reply, context)
        finally:
            await self._connection.close()

    def takes_images(self, model: str | None) -> bool:
        """Whether ``model`` takes images (pictures go to it): the gateway said so in
        its welcome (``llava`` for its ``llava:latest``, as the gateway routes it), or
        it is a Python function of this kernel served by the embedded gateway."""
        if model is None:
            return False
        if model in self.image_models or f"{model}:latest" in self.image_models:
            return True
        return self.local_model is not None and self.local_model(model)

    def _history_for(self, model: str) -> tuple[tuple[ChatMessage, ...], bool]:
        """The history of the next request to ``model``, with the pictures that fit
        beside its text in the gateway's frame (half of it at most); and whether the
        user's view of any picture (its ``picture`` line) changed. Under the lock."""
        takes = self.takes_images(model)
        frame = self._connection.max_frame_bytes
        budget = 0
        # The text is measured only when there are pictures to fit beside it.
        if takes and any(m.images for m in self.transcript.messages if m.role == "user"):
            text = self.transcript.history(self.max_history_chars)
            text_bytes = sum(len(m.content.encode("utf-8", "replace")) + 64 for m in text)
            budget = max(0, min(frame // 2, frame - text_bytes - PICTURE_MARGIN_BYTES))
        plan = plan_pictures(self.transcript.messages, images=takes, budget=budget)
        marked = False
        for m in self.transcript.messages:
            notes = plan.notes(m)
            for i, item in enumerate(m.context or ()):
                if not item.get("image"):
                    continue
                if i not in notes:
                    line = f"picture sent to {model}"
                elif takes:
                    line = "picture not sent: no room left in the request"
                else:
                    line = f"picture not sent: {model} takes no images"
                if item.get("picture") != line:
                    item["picture"] = line
                    self.transcript.changed(m)
                    marked = True
        return self.transcript.history(self.max_history_chars, pictures=plan), marked

    async def _run(self, reply: Reply, context: list[dict[str, str]] | None = None) -> None:
        model = reply.model or self.model or "demo"
        reply.model = model
        with self.lock:
            # The message is stamped when it was sent, the reply when it starts (later,
            # if it waited in the queue). A retry answers the message that is there.
            if reply.id in self._again:
                self._again.discard(reply.id)
            else:
                self.transcript.add_user(reply.prompt, at=reply.sent_at, context=context)
            message = self.transcript.add_assistant(reply_id=reply.id, model=model, at=time.time())
            in_flight = _InFlight(reply, message, self._loop.time(), asyncio.Event())
            # Current before it leaves the queue: never neither, which a branch
            # change would take for idle.
            self._current = in_flight
            if reply in self._queued:
                self._queued.remove(reply)
        self.listener.on_reply_start(reply)
        self.listener.on_transcript()
        if not await self._connect():
            # The transcript keeps the message and why it got no answer.
            self._end(in_flight, "error", error=self.error, code="unavailable")
        else:
            # After connecting: the welcome says which models take images.
            with self.lock:
                history, marked = self._history_for(model)
            if marked:
                self.listener.on_transcript()
            self._connection.session.open(reply.id)
            tools = tuple(tool.spec() for tool in list(self.tools.values())) or None
            start = Start(
                reply=reply.id, messages=history, model=model, params=reply.params, tools=tools
            )
            in_flight.started = True
            try:
                await self._connection.send(start)
            except SendRefused as exc:  # e.g. a model name that is not valid Unicode
                why = _too_large(exc, history) if isinstance(exc, RequestTooLarge) else str(exc)
                self._end(in_flight, "error", error=why, code=refusal_code(exc))
        await in_flight.ended.wait()
        if self._current is in_flight:
            self._current = None

    async def _apply_control(self, action: str, reply: Reply) -> None:
        if reply.finished:
            return
        in_flight = self._current
        if in_flight is None or in_flight.reply is not reply:
            if action == "stop":  # still queued: it never starts
                reply._end("stopped")
                self.listener.on_reply_status(reply)
            return
        frame: Stop | Pause | Resume
        if action == "stop":
            frame = Stop(reply=reply.id)
        elif action == "pause":
            frame = Pause(reply=reply.id)
        else:
            frame = Resume(reply=reply.id)
        try:
            await self._connection.send(frame)
        except GatewayUnavailable as exc:
            if action == "stop":
                self._end(in_flight, "stopped", error=None, code=None)
            else:
                self._set_status("offline", str(exc))

    def _on_frame(self, frame: ServerFrame) -> None:
        in_flight = self._current
        lost = SESSION_LOST
        if isinstance(frame, Welcome):
            lost = self._on_welcome(frame)
        # Whether the frame ends the reply in flight, and how: the rule a batch follows too.
        ending = next(
            (
                end
                for end in self._connection.session.ended(frame, lost=lost)
                if in_flight is not None and end.reply == in_flight.reply.id
            ),
            None,
        )
        if in_flight is not None and getattr(frame, "reply", None) == in_flight.reply.id:
            self._apply(in_flight, frame, ending is not None)
        elif isinstance(frame, Error) and frame.reply is None and ending is None:
            self._set_status(self.status, f"{frame.code}: {frame.message}")
        if in_flight is not None and ending is not None:
            self._end(in_flight, ending.finish, error=ending.error, code=ending.error_code)

    def _on_welcome(self, frame: Welcome) -> str:
        """Take what a welcome says; returns why a reply lost with the session ends."""
        # Every welcome says what the gateway offers (a first connect by Retry too).
        self.models = list(frame.models)
        self.image_models = set(frame.image_models or ())
        if self.model is None and self.models:
            # The gateway's default (an older one names none: its first).
            default = frame.default_model
            self.model = default if default in self.models else self.models[0]
        self.listener.on_models(self.models)  # self.model is set first: views read it
        if frame.notice != self.notice:
            self.notice = frame.notice
            self._set_status(self.status, detail=self.status_detail)
        moved = self._welcomed_at is not None and self._welcomed_at != self.url
        self._welcomed_at = self.url
        # A new session: the gateway does not know the old one, and nothing more will
        # come of a reply it had begun. (A start it never saw is sent again instead.)
        why = (
            f"the link moved to the gateway at {self.url}, which does not have this chat's "
            "session (gateways share sessions only through a shared store)"
            if moved
            else "the gateway no longer has this chat's session (it restarted, or the "
            "session expired)"
        )
        return f"{why}; the reply ends here"

    def _apply(self, in_flight: _InFlight, frame: ServerFrame, ends: bool) -> None:
        """Apply a frame of the reply in flight (``ends``: it ends the reply, which the
        caller does next)."""
        reply, message = in_flight.reply, in_flight.message
        if isinstance(frame, Started):
            reply.model = message.model = frame.model
        elif isinstance(frame, Delta) and frame.kind == "reasoning":
            if message.first_token_s is None:
                message.first_token_s = self._active_s(in_flight)
            with self.lock:
                message.reasoning = (message.reasoning or "") + frame.text
            reply._append_reasoning(frame.text)
            self.listener.on_reasoning(reply, frame.text)
        elif isinstance(frame, Delta):
            if message.first_token_s is None:
                message.first_token_s = self._active_s(in_flight)
            in_flight.chunks += 1
            with self.lock:
                message.content += frame.text
            reply._append(frame.text)
            self.listener.on_chunk(reply, frame.text)
        elif isinstance(frame, Paused):
            self._set_paused(in_flight, True)
        elif isinstance(frame, Resumed):
            self._set_paused(in_flight, False)
        elif isinstance(frame, Snapshot):
            self._apply_snapshot(in_flight, frame)
        elif isinstance(frame, ToolCall):
            self._on_tool_call(in_flight, frame)
        elif isinstance(frame, Error) and frame.seq is None and not ends:
            # A pause, resume or stop was refused: say so, the reply goes on. (A refused
            # start, or the store going away, ends the reply instead.)
            self._set_status(self.status, f"{frame.code}: {frame.message}")
        elif isinstance(frame, Done):  # its end (with the error the view assembled) follows
            message.usage = frame.usage
            message.generation_s = _generation_s(frame.timing)

    def _on_tool_call(self, in_flight: _InFlight, frame: ToolCall) -> None:
        """Record the call and run the tool (once per call id, whatever is replayed)."""
        if frame.call in in_flight.calls:
            return
        with self.lock:
            row = self.transcript.add_tool(
                call=frame.call,
                name=frame.name,
                arguments=frame.arguments,
                reply_id=in_flight.reply.id,
                at=time.time(),
                before=in_flight.message,
            )
        in_flight.calls[frame.call] = row
        if in_flight.reply.status == "pending":  # the model is answering, with a call
            in_flight.reply._set_status("streaming")
            self.listener.on_reply_status(in_flight.reply)
        self.listener.on_transcript()
        task = self._loop.create_task(self._run_tool(in_flight, frame, row))
        in_flight.tool_tasks.add(task)
        task.add_done_callback(in_flight.tool_tasks.discard)

    async def _run_tool(self, in_flight: _InFlight, frame: ToolCall, row: Message) -> None:
        """Run one call in this process, record its result, send it to the gateway."""
        began = self._loop.time()
        tool = self.tools.get(frame.name)
        error: str | None
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            content, error = "", f"LookupError: no tool named {frame.name!r}; the tools: {known}"
        elif tool.confirm and not await self._ask(in_flight, frame):
            content, error = "", f"Declined: the user chose not to run {frame.name} this time"
        else:
            began = self._loop.time()  # the tool's own time, not the user's
            content, error = await run_tool(tool, dict(frame.arguments))
        if in_flight.ended.is_set():
            return  # stopped meanwhile: the result goes nowhere (the row says stopped)
        seen = content if error is None else json.dumps({"error": error}, ensure_ascii=False)
        with self.lock:
            row.content, row.error = seen, error
            row.duration_s = self._loop.time() - began
            row.finish = "stop" if error is None else "error"
        self.listener.on_transcript()
        result = ToolResult(reply=frame.reply, call=frame.call, content=content, error=error)
        try:
            await self._connection.send(result)
        except GatewayUnavailable:
            pass  # offline: the link's state ends the reply
        except (RequestTooLarge, ProtocolError) as exc:
            # Cannot travel (over the gateway's frame limit): the model is told instead.
            message = f"the result could not be sent: {exc}"
            with self.lock:
                row.error = message
                row.content = json.dumps({"error": message})
                row.finish = "error"
            with contextlib.suppress(GatewayUnavailable, RequestTooLarge, ProtocolError):
                await self._connection.send(
                    ToolResult(reply=frame.reply, call=frame.call, content="", error=message)
                )

    async def _ask(self, in_flight: _InFlight, frame: ToolCall) -> bool:
        """Wait for the user's answer to a call of a tool with ``confirm=True`` (the
        pane shows the question while the call is in :attr:`asking`)."""
        future: asyncio.Future[bool] = self._loop.create_future()
        self._asking[frame.call] = future
        self.listener.on_tool_asking(in_flight.reply)
        try:
            return await future
        finally:
            self._asking.pop(frame.call, None)
            self.listener.on_tool_asking(in_flight.reply)

    def _set_paused(self, in_flight: _InFlight, paused: bool) -> None:
        now = self._loop.time()
        if paused and in_flight.paused_since is None:
            in_flight.paused_since = now
        elif not paused and in_flight.paused_since is not None:
            in_flight.paused_s += now - in_flight.paused_since
            in_flight.paused_since = None
        in_flight.reply._set_status("paused" if paused else "streaming")
        self.listener.on_reply_status(in_flight.reply)

    def _paused_s(self, in_flight: _InFlight) -> float:
        """Time this reply has spent paused so far (client clock)."""
        held = in_flight.paused_since
        return in_flight.paused_s + (self._loop.time() - held if held is not None else 0.0)

    def _active_s(self, in_flight: _InFlight) -> float:
        """Time since the request was sent, less the time spent paused: what timing
        figures measure, so a pause does not make a model look slow."""
        return self._loop.time() - in_flight.sent_at - self._paused_s(in_flight)

    def _apply_snapshot(self, in_flight: _InFlight, frame: Snapshot) -> None:
        """After a resume gap: what the snapshot has beyond our text arrives as one
        chunk (our text is always a prefix of it), then its state applies."""
        reply, message = in_flight.reply, in_flight.message
        more_reasoning = (frame.reasoning or "")[len(reply.reasoning) :]
        if more_reasoning:
            with self.lock:
                message.reasoning = (message.reasoning or "") + more_reasoning
            reply._append_reasoning(more_reasoning)
            self.listener.on_reasoning(reply, more_reasoning)
        extra = frame.text[len(reply.text) :]
        if extra:
            in_flight.chunks += 1
            with self.lock:
                message.content += extra
            reply._append(extra)
            self.listener.on_chunk(reply, extra)
        for pending in frame.calls or () if frame.finish is None else ():
            # Calls whose tool_call event the gap swallowed (run once, like any call).
            call = ToolCall(
                seq=0,
                reply=frame.reply,
                call=pending.call,
                name=pending.name,
                arguments=pending.arguments,
            )
            self._on_tool_call(in_flight, call)
        if frame.finish is not None:
            message.usage = frame.usage  # its end follows
        elif frame.paused != (reply.status == "paused"):
            self._set_paused(in_flight, frame.paused)

    def _end(
        self, in_flight: _InFlight, finish: Any, *, error: str | None, code: str | None
    ) -> None:
        if in_flight.ended.is_set():
            return  # it has ended already (e.g. closing raced the gateway's done)
        reply, message = in_flight.reply, in_flight.message
        for task in in_flight.tool_tasks:
            task.cancel()  # an async tool at its await; a sync tool's thread runs on
        with self.lock:
            for row in in_flight.calls.values():
                if row.finish is None:  # never returned: the history must say so
                    row.finish = "stopped"
                    row.content = json.dumps({"error": "not finished: the reply ended first"})
            message.finish = finish
            message.error = error
            message.chunks = in_flight.chunks
            message.duration_s = self._active_s(in_flight)
            message.paused_s = self._paused_s(in_flight)
            # Idle before the reply says it ended: a retry() right after wait() works.
            if self._current is in_flight:
                self._current = None
        self._connection.session.forget(reply.id)  # the reply is over: keep none of it
        reply._end(finish, error=error, error_code=code, usage=message.usage)
        in_flight.ended.set()
        self.listener.on_reply_status(reply)
        self.listener.on_transcript()


def _generation_s(timing: dict[str, Any]) -> float | None:
    """The gateway's generation span (first token to end), if its timing says it."""
    first, end = timing.get("first_token_s"), timing.get("duration_s")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (first, end))
    return float(end) - float(first) if numbers else None  # type: ignore[arg-type]


def _check_sendable(what: str, text: str) -> None:
    """Refuse text that cannot travel as UTF-8 (a lone surrogate, as ``os.fsdecode``
    gives for a file name that is not UTF-8) before it is queued."""
    at = lone_surrogate(text)
    if at is not None:
        raise ValueError(
            f"{what} contains a lone surrogate (U+{ord(text[at]):04X}) at index "
            f"{at}, which is not valid Unicode and cannot be sent; fix the text, "
            "e.g. text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')"
        )


def _checked_context(context: list[Attachment] | None) -> list[dict[str, str]]:
    """Attachments as given, if each is ``{name, kind, text, summary?}`` of valid text."""
    out: list[dict[str, str]] = []
    for item in context or ():
        raw: dict[str, Any] = dict(item) if isinstance(item, dict) else {}
        checked = {k: raw.get(k, "" if k == "summary" else None) for k in _ATTACHMENT_KEYS}
        values = [v for v in checked.values() if isinstance(v, str)]
        if len(values) != len(_ATTACHMENT_KEYS):
            raise ValueError(
                "context attachments must be {name, kind, text} dicts of text; "
                "chat.send(text, context=[obj, ...]) makes them from objects"
            )
        for value in values:
            _check_sendable("an attachment", value)
        image = raw.get("image")
        if image is not None:
            if not isinstance(image, str) or not IMAGE_URI.fullmatch(image):
                raise ValueError(
                    "an attachment's image must be a data:image/(png|jpeg|gif|webp);base64,... URI"
                )
            checked["image"] = image
        out.append({k: str(v) for k, v in checked.items()})
    return out


_ATTACHMENT_KEYS = ("name", "kind", "summary", "text")
# Room kept in a request for the frame's own fields, beside the history and pictures.
PICTURE_MARGIN_BYTES = 32_768


def _checked_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params as given, if strict JSON can carry them (finite numbers, valid text)."""
    try:
        encode(Start(reply="r", messages=(), model="m", params=params))
    except ProtocolError as exc:
        raise ValueError(f"cannot send these params: {str(exc).removeprefix('start: ')}") from None
    except TypeError as exc:
        raise ValueError(f"params must be JSON values: {exc}") from None
    return dict(params)


def _too_large(exc: RequestTooLarge, history: tuple[ChatMessage, ...]) -> str:
    chars = sum(len(m.content) for m in history)
    return (
        f"the request is {exc.size:,} bytes ({len(history)} messages, {chars:,} characters "
        f"of history); the gateway accepts at most {exc.limit:,} bytes. Send less "
        "history with Chat(max_history_chars=...), which leaves out the oldest turns, or "
        "start afresh with chat.clear()"
    )
