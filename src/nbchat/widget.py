"""``nbchat.Chat``: the chat pane widget and the Python API to drive it from code.

The widget is a declaration of synced traits plus thin methods; the conversation logic
lives in :class:`~nbchat.conversation.Conversation`, which calls back into
:class:`_TraitBridge` on the client loop thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from .backoff import Backoff
from .client import DEFAULT_HEARTBEAT_S
from .conversation import ConnectionStatus, Conversation, ConversationListener
from .gateway.embedded import shared_gateway
from .pane import StreamBatcher, TranscriptSync, parse_command
from .reply import Reply
from .transcript import (
    Transcript,
    transcript_from_json,
    transcript_from_records,
    transcript_to_json,
    transcript_to_markdown,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Chat"]


_STATIC = Path(__file__).parent / "static"
_MISSING_BUNDLE = """
export default { render({ el }) {
  el.textContent = "nbchat: the front end is not built. Run `pip install -e .` (needs Node 20) " +
    "or install nbchat from a wheel.";
} };
"""


def _asset(name: str, fallback: str) -> Path | str:
    path = _STATIC / name
    return path if path.exists() else fallback


class Chat(anywidget.AnyWidget):
    """A streaming LLM chat: a pane in the notebook, and an object to drive from code.

    ``Chat()`` with no ``url`` talks to an embedded gateway in this process, which offers
    the offline ``demo`` model. ``Chat(url="ws://host:8765/v1/chat", token=...)`` uses a
    gateway started with ``nbchat serve``. Extra keyword arguments are request params
    sent with every message (``tokens_per_s``, ``max_tokens``, ``temperature``, ...).
    ``max_history_chars`` bounds the history sent with each message: the oldest turns
    are left out (the transcript keeps them) so a long conversation stays sendable.

    ``send()`` returns a :class:`~nbchat.reply.Reply` at once; a send while a reply
    streams is queued and starts when that reply ends.
    """

    _esm = _asset("widget.js", _MISSING_BUNDLE)
    _css = _asset("widget.css", "")

    # Identifies this chat to the pane, which keys its shared stream text on it
    # (anywidget hands initialize and render different model proxies).
    chat_id = traitlets.Unicode(read_only=True).tag(sync=True)
    # The link to the gateway: connecting, connected, reconnecting, offline or closed;
    # a detail ("attempt 2, next in 0.7 s", "resumed after 1.2 s"); and what is wrong.
    status = traitlets.Unicode("connecting").tag(sync=True)
    status_detail = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    # Models the gateway offers, and the one used for the next message.
    models = traitlets.List(traitlets.Unicode()).tag(sync=True)
    model = traitlets.Unicode("").tag(sync=True)
    # The reply in flight: {"reply", "status", "model"}, or {} when none. Its text
    # travels as custom "chunk"/"snapshot" messages (see nbchat.pane), never as a trait.
    active = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        system: str | None = None,
        token: str | None = None,
        *,
        backoff: Backoff | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        max_history_chars: int | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if url is None:
            gateway = shared_gateway()
            url, token = gateway.url, gateway.token
        self.url = url
        if model:
            self.model = model
        self._bridge = _TraitBridge(self)
        self._conversation = Conversation(
            url,
            token=token,
            model=model,
            system=system,
            params=params,
            listener=self._bridge,
            backoff=backoff,
            heartbeat_s=heartbeat_s,
            max_history_chars=max_history_chars,
        )
        self.on_msg(self._on_pane_message)
        _keep_pane_messages_on_their_subshell(self.comm)

    @traitlets.default("chat_id")
    def _new_chat_id(self) -> str:
        # A default, so it is in the state the comm opens with.
        return uuid.uuid4().hex

    @traitlets.observe("model")
    def _model_changed(self, change: dict[str, Any]) -> None:
        conversation = getattr(self, "_conversation", None)
        if conversation is not None and change["new"]:
            conversation.model = change["new"]

    def _on_pane_message(self, _widget: object, content: Any, _buffers: object) -> None:
        # With JupyterLab >= 4.4 and ipykernel >= 7 this runs on a kernel subshell, so a
        # click on Stop lands even while a cell blocks in reply.wait().
        try:
            command = parse_command(content)
            if command.type == "send":
                self.send(command.text)
            elif command.type == "stop":
                self.stop()
            elif command.type == "pause":
                self.pause()
            elif command.type == "resume":
                self.resume()
            elif command.type == "clear":
                self.clear()
            elif command.type == "sync":
                self._bridge.send_snapshot()
            elif command.type == "reconnect":
                self.reconnect()
        except (ValueError, RuntimeError) as exc:
            self.error = str(exc)

    def _push(self, message: dict[str, Any]) -> None:
        """Send a custom message to the pane (``send`` is the chat API here)."""
        anywidget.AnyWidget.send(self, message)

    # --- the API ------------------------------------------------------------------

    def send(self, text: str, **params: Any) -> Reply:
        """Send a user message; returns its :class:`Reply` at once, without blocking.

        ``params`` override the chat's request params for this message only.
        Raises ``ValueError`` for empty text and ``RuntimeError`` after :meth:`close`.
        """
        return self._conversation.send(text, **params)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The transcript: one dict per message (``role``, ``content``, ``model``,
        ``finish``, timing, ...), as in :meth:`to_dataframe`. Read-only: copy a record
        before editing it."""
        return self._conversation.records()

    @property
    def reply(self) -> Reply | None:
        """The reply streaming now (or the next queued one), if any."""
        return self._conversation.current

    def stop(self) -> Reply | None:
        """Stop the reply in flight (the partial text stays, ``finish == "stopped"``)."""
        reply = self.reply
        return reply.stop() if reply is not None else None

    def pause(self) -> Reply | None:
        """Pause delivery of the reply in flight; nothing generated meanwhile is lost."""
        reply = self.reply
        return reply.pause() if reply is not None else None

    def resume(self) -> Reply | None:
        """Resume the paused reply: what was held arrives first, then it goes on live."""
        reply = self.reply
        return reply.resume() if reply is not None else None

    def reconnect(self) -> None:
        """Try to reach the gateway again now (the pane's Retry button). The link also
        comes back on its own after a drop, with backoff; this cuts the wait short or
        tries again after it gave up (``status == "offline"``)."""
        self._conversation.reconnect()

    def clear(self) -> None:
        """Stop what is running, drop queued messages and start a fresh transcript."""
        self._conversation.clear()

    def to_markdown(self) -> str:
        """The conversation as Markdown: each message under its author, and after each
        reply a footer line with the model, how it ended and its timing."""
        with self._conversation.lock:
            return transcript_to_markdown(self._conversation.transcript)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation to a portable JSON file (format version
        :data:`~nbchat.transcript.FORMAT_VERSION`); :meth:`load` reads it back."""
        with self._conversation.lock:
            data = transcript_to_json(self._conversation.transcript)
        text = json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")
        target = Path(path)
        # Written beside it, then moved over it: an existing file is replaced whole or
        # not at all, whatever fails midway.
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            partial.write_bytes(text)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Chat:
        """A new Chat that continues the conversation saved by :meth:`save` (its system
        prompt too, unless ``system=`` is given). Other arguments are as for ``Chat()``.
        Raises ``ValueError`` for a file that is not a transcript nbchat can read."""
        try:
            data = json.loads(
                Path(path).read_text(encoding="utf-8-sig"), parse_constant=_no_constants
            )
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a JSON file: {exc}") from None
        except RecursionError:
            raise ValueError(f"{path} is nested too deeply to be a transcript") from None
        return cls._continuing(transcript_from_json(data), kwargs)

    @classmethod
    def from_dataframe(cls, frame: pd.DataFrame, **kwargs: Any) -> Chat:
        """A new Chat whose history is the rows of ``frame`` (from :meth:`to_dataframe`,
        maybe filtered or edited; ``role`` and ``content`` are required). Other
        arguments are as for ``Chat()``."""
        import pandas as pd

        frame = frame.copy()
        if "created_at" in frame:
            column = frame["created_at"]
            numeric = pd.api.types.is_numeric_dtype(column)  # already Unix seconds
            stamps = pd.to_datetime(column, utc=True, unit="s" if numeric else None)
            frame["created_at"] = [None if pd.isna(t) else t.timestamp() for t in stamps]
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        return cls._continuing(transcript_from_records(records), kwargs)

    @classmethod
    def _continuing(cls, transcript: Transcript, kwargs: dict[str, Any]) -> Chat:
        if kwargs.get("system") is None:
            kwargs["system"] = transcript.system
        transcript.system = kwargs["system"]
        chat = cls(**kwargs)
        try:
            chat._conversation.replace_transcript(transcript)
        except BaseException:
            chat.close()
            raise
        return chat

    def to_dataframe(self) -> pd.DataFrame:
        """The transcript as a pandas DataFrame, one row per message, with timing
        (``first_token_s``, ``duration_s``, ``chunks``, ``tokens_per_s``) and usage."""
        with self._conversation.lock:
            return self._conversation.transcript.to_dataframe()

    @property
    def system(self) -> str | None:
        return self._conversation.transcript.system

    def close(self) -> None:
        """Stop what is running, close the connection and the widget. Idempotent."""
        conversation = getattr(self, "_conversation", None)
        if conversation is not None:
            conversation.close()
        super().close()

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _keep_pane_messages_on_their_subshell(comm: object) -> None:
    """Let pane commands run on the kernel subshell the front end sent them to.

    JupyterLab >= 4.4 sends comm messages to a subshell when the kernel has them
    (ipykernel >= 7), so Stop works while the main thread blocks in ``reply.wait()``.
    But ipykernel 7.4 re-routes a comm's incoming messages to the subshell of the
    comm's last outgoing message; ours go out from the client thread, parented to the
    running cell on the main shell, which would queue a Stop behind the very cell it
    should end. Returning the message's own subshell keeps it where the front end put it.
    """
    if hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = lambda _data, subshell_id: subshell_id


class _TraitBridge(ConversationListener):
    """Mirrors conversation state into the widget: traits for durable state, batched
    custom messages for the in-flight reply's text. Runs on the client loop thread,
    except :meth:`send_snapshot`, which the pane's ``sync`` calls from the kernel."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.batcher = StreamBatcher()
        self.reasoning = StreamBatcher(kind="reasoning")
        self.transcript = TranscriptSync()
        self._flush_scheduled = False

    def on_status(self, status: ConnectionStatus, detail: str, error: str | None) -> None:
        self.chat.status = status
        self.chat.status_detail = detail
        self.chat.error = error or ""

    def on_models(self, models: list[str]) -> None:
        self.chat.models = models
        if not self.chat.model and models:
            self.chat.model = models[0]

    def on_transcript(self) -> None:
        # Only what changed goes to the pane: a turn costs the same at message 2,000.
        message = self.transcript.update(self.chat._conversation.records())
        if message is not None:
            self.chat._push(message)

    def on_reply_start(self, reply: Reply) -> None:
        self.batcher.begin(reply.id)
        self.reasoning.begin(reply.id)
        self._set_active(reply)

    def on_chunk(self, reply: Reply, text: str) -> None:
        if self.chat.active.get("status") == "pending":
            self._set_active(reply)  # the first text: pending becomes streaming
        self.batcher.add(text)
        self._schedule_flush()

    def on_reasoning(self, reply: Reply, text: str) -> None:
        if self.chat.active.get("status") == "pending":
            self._set_active(reply)
        self.reasoning.add(text)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            loop.call_at(self.batcher.due(loop.time()), self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        now = asyncio.get_running_loop().time()
        for batcher in (self.reasoning, self.batcher):
            message = batcher.take(now)
            if message is not None:
                self.chat._push(message)

    def on_reply_status(self, reply: Reply) -> None:
        if reply.finished:
            if reply.id == self.batcher.reply:
                self._flush()  # the last text goes before the turn is rewritten
                self.batcher.end()
                self.reasoning.end()
            self.on_transcript()
            if self.chat.active.get("reply") == reply.id:
                self.chat.active = {}
        else:
            # Text generated before a pause reaches the pane before the pause does, so
            # a paused reply never grows on screen.
            self._flush()
            self._set_active(reply)

    def _set_active(self, reply: Reply) -> None:
        self.chat.active = {"reply": reply.id, "status": reply.status, "model": reply.model}

    def send_snapshot(self) -> None:
        self.chat._push(self.transcript.snapshot())
        for batcher in (self.reasoning, self.batcher):
            message = batcher.snapshot()
            if message is not None:
                self.chat._push(message)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number a transcript can hold")
