"""``nbchat.Chat``: the chat pane widget and the Python API to drive it from code.

The widget is a declaration of synced traits plus thin methods; the conversation logic
lives in :class:`~nbchat.conversation.Conversation`, which calls back into
:class:`_TraitBridge` on the client loop thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anywidget
import traitlets

from .backoff import Backoff
from .client import DEFAULT_HEARTBEAT_S, gateway_urls
from .compare import Compare, Models
from .context import Attachment, gather, mentions
from .conversation import ConnectionStatus, Conversation, ConversationListener
from .conversation_store import ConversationRecorder
from .frontend import CSS, ESM, display_live, in_kernel, keep_pane_messages_on_their_subshell
from .gateway.embedded import configured_models, shared_gateway
from .local_models import MODELS, REMOTE_GATEWAY_MESSAGE, ModelFunction
from .pane import StreamBatcher, TranscriptSync, parse_command
from .pricing import prices_with
from .reply import Reply
from .saved_copy import MIN_INTERVAL_S, SavedCopy, publish_at, update_interval, view_note
from .tools import Tool, make_tool
from .transcript import (
    Branch,
    Message,
    Transcript,
    transcript_from_json,
    transcript_from_records,
    transcript_to_json,
    transcript_to_markdown,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Chat"]

log = logging.getLogger("nbchat")

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class _ModelName(traitlets.Unicode):  # type: ignore[type-arg]
    """``Chat.model``: a model name. A callable assigned to it is served as a model by
    the embedded gateway (see ``nbchat.local_models``), and the trait holds its name."""

    def validate(self, obj: Any, value: Any) -> Any:
        if callable(value):
            value = obj._local_model(value)
        return super().validate(obj, value)


class Chat(anywidget.AnyWidget):
    """A streaming LLM chat: a pane in the notebook, and an object to drive from code.

    ``chat = Chat()`` then ``chat`` as a cell's last line shows the pane. Replies stream
    token by token; Stop, Pause and Resume work from the pane and from code.

    Chat(url=None, model=None, system=None, token=None, *, backoff=None,
         heartbeat_s=10, max_history_chars=None, conversation=None, tools=None,
         prices=None, **params)

        url: a gateway started with ``nbchat serve`` ("ws://host:8765/v1/chat"), or a
            list of them (gateways sharing one session store): the chat connects to
            the first, and after a drop tries the next one, then the others in order,
            wrapping around, resuming the session wherever it lands; None starts one
            in this process, with the offline ``demo`` model.
        model: the model for the next message (default: the gateway's default), or a
            Python function to be the model: ``fn(messages, **params)`` returning or
            yielding str, sync or async; it runs in this kernel (no ``url``).
        system: the system prompt, sent first with every request.
        token: the gateway's token (``nbchat serve --token``).
        backoff: how to reconnect after a drop (``nbchat.backoff.Backoff``).
        heartbeat_s: ping interval; a silent link is dropped within 2 x this + 1 s.
        max_history_chars: send only the newest whole turns that fit (the transcript
            keeps everything).
        conversation: a name: the conversation is kept on disk as it is made, and
            ``Chat(conversation=name)`` later (after a restart) continues it.
        tools: Python functions the model may call (see ``tool``).
        prices: model name -> (input, output) US dollars per 1M tokens, over the
            built-in table (only ``demo``, at 0): the ``cost`` of each reply.
        **params: request params sent with every message (``temperature``,
            ``max_tokens``, ``tokens_per_s`` for the demo model, ...).

    Sending and steering:
        send(text, context=None, **params) -> Reply: send a message; returns at once
            (a send while a reply streams is queued). ``@name`` in the text attaches
            the kernel variable ``name``; ``context=[df, fig]`` attaches objects
            (a DataFrame as its schema, null counts and a sample; see the README).
        compare(prompt, models, context=None, **params) -> Compare: send ``prompt``
            (its attachments as for ``send``) with this chat's history to several
            models at once (up to 16; the chat's tools are not offered), their replies
            side by side in a pane of their own; ``pick(model)`` (or the pane's
            Continue with this) continues this chat with one of them.
        reply: the reply streaming now (or the next queued one), or None.
        stop(), pause(), resume(): act on the reply in flight, like the buttons.
        clear(): stop, and start a fresh transcript.
        tool(fn, confirm=False), or ``@chat.tool`` on a function: the model may call
            it; it runs in this kernel (on a thread of its own; an async one on the
            client loop) with the arguments the model gives, checked against its type
            hints. Its schema comes from the signature and type hints, its
            description from the docstring's first paragraph. What it raises is
            given to the model as an error result. At most 8 tool rounds per reply.
            ``confirm=True`` asks in the pane before each run.
        answer_tool(call, run=True): answer a ``confirm=True`` tool's question from
            code (the pane's Run / Don't run).
        tools: the functions the model may call, by name (read-only).
        reconnect(): try to reach the gateway again now (the pane's Retry).
        close(): stop and close; ``with Chat() as chat:`` does it at the end.

    The conversation:
        messages: the transcript (its active branch), one dict per message (read-only).
        to_dataframe(all_branches=False): the transcript as a pandas DataFrame, with
            timing, usage and cost; with ``all_branches``, every message of every
            branch, placed by its ``parent`` and ``branch`` columns.
        prices: the price table ``cost`` uses (settable, as ``Chat(prices=...)``).

    Branches (a conversation is a tree; each message has an ``id``):
        retry(**params) -> Reply: answer the last message again; the reply there stays,
            on its own branch (the pane's arrows switch between them).
        edit(turn=None, text=None, *, id=None, context=None, **params) -> Reply: send a
            new version of an earlier message of yours (turn N of the active branch,
            or the message ``id``): a new branch from there; the old one stays. Its
            attachments stay unless ``context=`` replaces them.
        undo(): the active branch ends before your last message (nothing is deleted).
        branches() -> list[Branch]: every branch: number, leaf id, turns, preview,
            and whether it is active.
        checkout(target, sibling=None): make a branch active: by number, or by a
            message id (the newest branch through it).
        These raise RuntimeError while a reply runs or waits (wait for it, or stop it).
        to_markdown(): the transcript as Markdown.
        save(path) / Chat.load(path): a portable JSON file, and a Chat continuing it.
        Chat.from_dataframe(frame): a Chat whose history is a DataFrame's rows.
        system: the system prompt.
        conversation: the name it is kept under on disk, or None.
        saving: whether messages are being written to that named conversation.

    The link and the models (also shown in the pane):
        status: connecting, connected, reconnecting, offline or closed.
        status_detail: e.g. "attempt 2, next in 0.7 s".
        error: what is wrong, in plain words, or "".
        url: the gateway in use (of several, the one that last welcomed this chat);
            urls: all of them, in the order they are tried.
        models: the models the gateway offers; model: the one used next (assigning a
            function makes it the model, and ``model`` reads its name).
        active: the reply in flight as {reply, status, model}, or {}; with
            ``asking``, the ids of its tool calls waiting for your answer.
        chat_id: identifies this chat to its pane.

    See the README for the limits, the reliability guarantees and real providers.
    """

    _esm = ESM  # one bundle for the chat and the compare pane (nbchat.frontend)
    _css = CSS

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
    model = _ModelName("").tag(sync=True)  # a callable assigned becomes its name
    # The reply in flight: {"reply", "status", "model"}, or {} when none. Its text
    # travels as custom "chunk"/"snapshot" messages (see nbchat.pane), never as a trait.
    active = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        model: str | ModelFunction | None = None,
        system: str | None = None,
        token: str | None = None,
        *,
        backoff: Backoff | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        max_history_chars: int | None = None,
        conversation: str | None = None,
        tools: Iterable[Callable[..., Any]] | None = None,
        prices: Any = None,
        **params: Any,
    ) -> None:
        # Checked first: a bad gateway URL, or a function that cannot be a tool, is an
        # error before anything starts. The Conversation shares the tools dict, so
        # later @chat.tool adds to it.
        urls = gateway_urls(url) if url is not None else None
        price_table = prices_with(prices)
        self._tools: dict[str, Tool] = {}
        for fn in tools or ():
            tool = make_tool(fn)
            if tool.name in self._tools:  # one would be lost without a word
                raise ValueError(
                    f"two tools are named {tool.name!r}; name one with "
                    "chat.tool(fn, name=...) after Chat()"
                )
            self._tools[tool.name] = tool
        if callable(model):
            # Named first (the recorder stores the name); served in this kernel only.
            if url is not None:
                raise ValueError(REMOTE_GATEWAY_MESSAGE)
            shared_gateway()  # its configured models keep their names
            model = MODELS.add(model, reserved=configured_models())
        recorder = None
        if conversation is not None:
            # First, so a store that cannot be used is an error before anything starts.
            recorder = ConversationRecorder.open(conversation, system=system, model=model)
            system, model = recorder.stored.system, model or recorder.stored.model
        # Whatever fails from here on, the recorder's thread and file are let go.
        try:
            super().__init__()
            self._embedded = urls is None  # only then can a Python function be the model
            if urls is None:
                gateway = shared_gateway()
                urls, token = (gateway.url,), gateway.token
            if model:
                self.model = model
            self._saved = _SavedCopyDisplay(self)
            self._bridge = _TraitBridge(self)
            self._recorder = recorder
            if recorder is not None:
                recorder.inner = self._bridge
            self._conversation = Conversation(
                urls,
                token=token,
                model=model,
                system=system,
                params=params,
                listener=self._bridge if recorder is None else recorder,
                backoff=backoff,
                heartbeat_s=heartbeat_s,
                max_history_chars=max_history_chars,
                tools=self._tools,
                prices=price_table,
            )
        except BaseException:
            if recorder is not None:
                recorder.close()
            raise
        if self._embedded:  # its Python functions take pictures, registered when they may
            self._conversation.local_model = lambda name: MODELS.get(name) is not None
        if not self.model and self._conversation.model:
            # The welcome came before _conversation was set, so the bridge could not
            # read the model the conversation chose (the gateway's default).
            self.model = self._conversation.model
        if recorder is not None:
            recorder.report = self._conversation.report
            recorder.attach(self._conversation)
            # The pane shows the history at once; a tree whose active branch is empty
            # (every turn undone) is still a history.
            if recorder.stored.message_ids:
                self._conversation.replace_transcript(recorder.stored.transcript)
        self.on_msg(self._on_pane_message)
        keep_pane_messages_on_their_subshell(self.comm)

    @property
    def url(self) -> str:
        """The gateway URL in use: of several, the one that last welcomed this chat
        (the first until then)."""
        return self._conversation.url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every gateway URL this chat may use, in the order they are tried."""
        return self._conversation.urls

    @traitlets.default("chat_id")
    def _new_chat_id(self) -> str:
        # A default, so it is in the state the comm opens with.
        return uuid.uuid4().hex

    def _local_model(self, fn: ModelFunction) -> str:
        """Serve ``fn`` as a model in this kernel (``chat.model = fn``); its name, which
        the picker lists from now on."""
        if not getattr(self, "_embedded", True):
            raise ValueError(REMOTE_GATEWAY_MESSAGE)
        name = MODELS.add(fn, reserved=configured_models())
        if name not in self.models:  # the welcome listed the models of its time
            self.models = [*self.models, name]
        return name

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
                self.send(command.text)  # its @names resolve in the user's namespace
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
            elif command.type == "tool_answer":
                self.answer_tool(command.call, command.run)
            elif command.type == "retry":
                self.retry()
            elif command.type == "edit":
                self.edit(text=command.text, id=command.id)
            elif command.type == "checkout":
                self.checkout(command.id, sibling=command.sibling)
        except (ValueError, RuntimeError) as exc:
            self.error = str(exc)

    def _push(self, message: dict[str, Any]) -> None:
        """Send a custom message to the pane (``send`` is the chat API here)."""
        anywidget.AnyWidget.send(self, message)

    # --- the API ------------------------------------------------------------------

    def send(self, text: str, context: object = None, **params: Any) -> Reply:
        """Send a user message; returns its :class:`Reply` at once, without blocking.

        ``context``: objects to attach (a list, a ``{name: object}`` dict, or one
        object), and each ``@name`` in ``text`` that names a variable of the IPython
        namespace is attached too (once; unknown names and emails stay text). The model
        receives each as text after the message (:mod:`nbchat.context`: a DataFrame's
        shape, dtypes, nulls and first rows; a figure described, not its image; else
        the repr, cut at 4,000 characters, 16,000 per message); the transcript keeps
        your text and the attachments in ``context``.
        ``params`` override the chat's request params for this message only.
        Raises ``ValueError`` for empty text and ``RuntimeError`` after :meth:`close`.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("cannot send an empty message; pass some text")
        namespace, hidden = _user_namespace()
        attachments = gather(text, context, namespace, hidden)
        return self._conversation.send(text, context=attachments or None, **params)

    def compare(
        self, prompt: str, models: Models, context: object = None, **params: Any
    ) -> Compare:
        """Send ``prompt`` with this chat's history to each of ``models`` at once (names,
        or Python functions as for ``model``; a dict gives each its own params); returns
        a :class:`~nbchat.compare.Compare` at once: a pane of one column per model,
        ``to_dataframe()``, and ``pick(model)`` to continue this chat with one answer.
        ``context`` and ``@name`` attach objects as for :meth:`send`; ``params`` go over
        the chat's. The chat's tools are not offered. Raises ``ValueError`` for an empty
        prompt, no models, more than 16 or the same model twice, ``RuntimeError`` while
        the chat has a reply running or queued, or once it is closed; an unknown model
        errors in its column."""
        attachments = None
        if isinstance(prompt, str):  # Compare refuses anything else, saying why
            namespace, hidden = _user_namespace()
            attachments = gather(prompt, context, namespace, hidden) or None
        return Compare(self, prompt, models, context=attachments, **params)

    def tool(self, fn: _Fn | None = None, *, name: str | None = None, confirm: bool = False) -> Any:
        """Let the model call ``fn``: ``@chat.tool``, ``@chat.tool(confirm=False)`` or
        ``chat.tool(fn)``; returns ``fn`` unchanged. ``name=`` names it (a lambda, or
        two ``functools.partial`` of one function); a tool of the same name replaces
        the one before. The model sees its name, the first paragraph of its
        docstring and a JSON schema of its parameters (from the type hints); a call
        runs here, in the kernel, with the model's arguments checked against them.
        Raises ``ValueError`` for a function that cannot be a tool (a name model APIs
        refuse, a parameter type with no JSON schema). With ``confirm=True`` each call
        waits until you answer in the pane (Run / Don't run) or with
        :meth:`answer_tool`; a call you decline tells the model so.
        """
        if fn is None:
            return lambda f: self.tool(f, name=name, confirm=confirm)
        self._add_tool(fn, name=name, confirm=confirm)
        return fn

    def _add_tool(self, fn: Callable[..., Any], *, name: str | None = None, confirm: bool) -> None:
        tool = make_tool(fn, name=name, confirm=confirm)
        self._tools[tool.name] = tool

    def answer_tool(self, call: str, run: bool = True) -> None:
        """Answer a call of a ``confirm=True`` tool, as the pane's Run / Don't run
        buttons do: ``call`` is its id (``active["asking"]`` lists the waiting ones,
        and the transcript's ``tool_call`` column names each call)."""
        self._conversation.answer_tool(call, run)

    @property
    def tools(self) -> dict[str, Tool]:
        """The functions the model may call, by name (a copy)."""
        return dict(self._tools)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The transcript's active branch: one dict per message (``role``, ``content``,
        ``model``, ``finish``, timing, ``cost``, ``id``, ``parent``, ``branch``, ...), as
        in :meth:`to_dataframe`, and ``sibling_index`` / ``sibling_count`` (its place
        among the versions of it, for the pane's arrows). Read-only: copy a record
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
        """Stop what is running, drop queued messages and start a fresh transcript.

        For a named chat (``conversation=``) the stored conversation is emptied too,
        whoever wrote its messages: it keeps its name, system prompt and model, and the
        turns that follow are saved into it. Another chat open on that name stops
        saving and says so in its ``error``. Raises ``ConversationStoreError`` if the
        store could not be emptied (the transcript here is cleared all the same)."""
        self._conversation.clear()
        if self._recorder is not None:
            self._recorder.clear()

    def to_markdown(self) -> str:
        """The conversation as Markdown: each message under its author, and after each
        reply a footer line with the model, how it ended and its timing."""
        with self._conversation.lock:
            return transcript_to_markdown(self._conversation.transcript)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation to a portable JSON file (format version
        :data:`~nbchat.transcript.FORMAT_VERSION`: every branch, and which is active);
        :meth:`load` reads it back, and files of version 1 too."""
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
        maybe filtered or edited; ``role`` and ``content`` are required). Rows of
        ``to_dataframe(all_branches=True)`` (each ``parent`` another row's ``id``) give
        the tree back, the branch through the last row active; other rows are one line.
        Other arguments are as for ``Chat()``."""
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
            held = chat._conversation.transcript.tree()  # a named one, resumed from disk
            if held:
                name, turns = chat.conversation, sum(m.role == "user" for m in held)
                raise ValueError(
                    f"a conversation named {name!r} exists already, with {turns} turns; "
                    "loading into it would mix two histories. Pick a new name, or "
                    f"delete it first with nbchat.delete_conversation({name!r})"
                )
            chat._conversation.replace_transcript(transcript)
        except BaseException:
            chat.close()
            raise
        return chat

    def to_dataframe(self, *, all_branches: bool = False) -> pd.DataFrame:
        """The transcript as a pandas DataFrame, one row per message of the active
        branch, with timing (``first_token_s``, ``duration_s``, ``chunks``,
        ``tokens_per_s``), usage, ``cost`` (US dollars at :attr:`prices`; null for a
        model without a price or a reply without usage) and the tree (``id``,
        ``parent``, ``branch``). With ``all_branches=True``, every message of every
        branch, each after its parent."""
        with self._conversation.lock:
            return self._conversation.transcript.to_dataframe(all_branches=all_branches)

    @property
    def prices(self) -> dict[str, tuple[float, float]]:
        """Model name -> (input, output) US dollars per 1M tokens: what ``cost`` uses.
        Set it to a table of yours (it goes over the built-in one, which prices only
        ``demo``); every record's ``cost`` is worked out again."""
        return dict(self._conversation.prices)

    @prices.setter
    def prices(self, value: Any) -> None:
        self._conversation.set_prices(prices_with(value))

    # --- branches -----------------------------------------------------------------

    def retry(self, **params: Any) -> Reply:
        """Ask for another reply to your last message; returns its :class:`Reply` at
        once. The reply there stays, as a sibling on its own branch; the new one
        becomes the active branch, which the next message continues. ``params`` as for
        :meth:`send` (the demo model gives the same reply again unless ``seed=`` differs).
        Raises ``RuntimeError`` while a reply runs or waits, ``ValueError`` when there is
        no message of yours to answer."""
        return self._conversation.retry(**params)

    def edit(
        self,
        turn: int | None = None,
        text: str | None = None,
        *,
        id: str | None = None,  # the pane's and the DataFrame's name for it
        context: object = None,
        **params: Any,
    ) -> Reply:
        """Send ``text`` as a new version of one of your earlier messages: turn
        ``turn`` of the active branch, or the message ``id`` (any branch). It goes
        beside the old one, on a new branch that becomes active (the old branch stays:
        :meth:`checkout` goes back). Without ``context`` (as the pane's Edit), the old
        message's attachments stay as they were sent, but for one whose ``@name`` the new
        text no longer has; an ``@name`` it adds is attached as for :meth:`send`. With
        ``context``, the attachments are that and the ``@names`` in ``text``, as for
        :meth:`send`, in place of the old ones (``context=[]``: only the ``@names``').
        Returns the :class:`Reply`. Raises ``ValueError`` for a turn or id there is
        not, ``RuntimeError`` while a reply runs or waits."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("edit needs the new text: chat.edit(turn=N, text='...')")
        namespace, hidden = _user_namespace()
        attachments = gather(text, context, namespace, hidden)
        if context is None:
            with self._conversation.lock:
                try:
                    old = self._conversation.transcript.user_message(turn=turn, message_id=id)
                except ValueError:
                    old = None  # the edit below says why
            if old is not None:
                attachments = _carried_over(old, text, attachments)
        return self._conversation.edit(
            text, turn=turn, message_id=id, context=attachments or None, **params
        )

    def undo(self) -> None:
        """End the active branch before your last message and its reply: the next
        message goes on from there (on a new branch). Nothing is deleted: it stays
        reachable with :meth:`checkout`. Raises ``RuntimeError`` while a reply runs or
        waits, ``ValueError`` when there is nothing to undo."""
        self._conversation.undo()

    def branches(self) -> list[Branch]:
        """Every branch of the conversation, by number: ``branch``, ``leaf`` (its last
        message's id), ``turns``, ``preview`` (the start of its last message of yours)
        and ``active`` (the active branch is on it)."""
        return self._conversation.branches()

    def checkout(self, target: int | str | Branch, sibling: int | None = None) -> None:
        """Make another branch active: ``target`` is a branch number (from
        :meth:`branches`) or a message id (the newest branch through that message;
        with ``sibling=N``, through that message's N-th version, 1-based, as the pane's
        arrows do). The pane and the next message follow it. Raises ``ValueError`` for
        a branch or message there is not, ``RuntimeError`` while a reply runs or waits."""
        self._conversation.checkout(target, sibling=sibling)

    @property
    def system(self) -> str | None:
        return self._conversation.transcript.system

    @property
    def conversation(self) -> str | None:
        """The name this chat is saved under (``Chat(conversation=...)``), or None."""
        recorder = getattr(self, "_recorder", None)
        return recorder.name if recorder is not None else None

    @property
    def saving(self) -> bool:
        """Whether this chat is being saved to the conversation store: a named chat
        stops when its conversation is deleted, or cleared by another chat."""
        recorder = getattr(self, "_recorder", None)
        return recorder is not None and recorder.saving

    def close(self) -> None:
        """Stop what is running, close the connection and the widget. Idempotent.
        A named chat's last messages are written to the store before it returns."""
        conversation = getattr(self, "_conversation", None)
        if conversation is not None:
            conversation.close()
        recorder = getattr(self, "_recorder", None)
        if recorder is not None:
            recorder.close()
        super().close()

    def _ipython_display_(self) -> None:
        """Show the live pane, and after it the conversation's saved copy: what a saved
        notebook shows without a kernel, hidden while the pane is live."""
        display_live(self, "nbchat chat pane (live widget)")
        if in_kernel():  # a terminal would print every update of the copy anew
            self._saved.show()

    def __repr__(self) -> str:
        conversation = getattr(self, "_conversation", None)
        if conversation is None:
            return "Chat()"
        return (
            f"Chat(model={self.model or conversation.model!r}, "
            f"turns={conversation.transcript.turns}, status={self.status!r})"
        )

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _carried_over(old: Message, text: str, fresh: list[Attachment]) -> list[Attachment]:
    """An edit's attachments when it names none: ``old``'s, but for those whose
    ``@name`` ``text`` drops, then ``fresh`` ones (from ``text``'s ``@names``) for the
    names ``text`` adds."""
    before, after = set(mentions(old.content)), set(mentions(text))
    kept = [cast(Attachment, dict(a)) for a in old.context or () if a["name"] not in before - after]
    names = {a["name"] for a in kept}
    return kept + [a for a in fresh if a["name"] in after - before and a["name"] not in names]


def _user_namespace() -> tuple[dict[str, Any] | None, frozenset[str]]:
    """The IPython user namespace that ``@name`` resolves against, and the names it
    hides (``In``, ``Out``, ...); ``(None, ...)`` outside IPython: nothing resolves."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with anywidget
        return None, frozenset()
    shell = get_ipython()
    if shell is None:
        return None, frozenset()
    return shell.user_ns, frozenset(getattr(shell, "user_ns_hidden", ()))


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
        # The conversation has chosen (the gateway's default, unless Chat(model=...)).
        conversation = getattr(self.chat, "_conversation", None)
        chosen = conversation.model if conversation is not None else None
        if not self.chat.model and chosen:
            self.chat.model = chosen

    def on_transcript(self) -> None:
        # Only what changed goes to the pane: a turn costs the same at message 2,000.
        message = self.transcript.update(self.chat._conversation.records())
        if message is not None:
            self.chat._push(message)
        self.chat._saved.changed()

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
                # Text not yet sent goes with the finished record (the pane extends its
                # stream to the record's text), not in a comm message of its own.
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

    def on_tool_asking(self, reply: Reply) -> None:
        if not reply.finished:
            self._set_active(reply)

    def _set_active(self, reply: Reply) -> None:
        active: dict[str, Any] = {"reply": reply.id, "status": reply.status, "model": reply.model}
        conversation = getattr(self.chat, "_conversation", None)
        asking = conversation.asking if conversation is not None else []
        if asking:
            active["asking"] = asking
        self.chat.active = active

    def send_snapshot(self) -> None:
        self.chat._push(self.transcript.snapshot())
        for batcher in (self.reasoning, self.batcher):
            message = batcher.snapshot()
            if message is not None:
                self.chat._push(message)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number a transcript can hold")


class _SavedCopyDisplay:
    """Keeps a chat's saved copy in the notebook: a display output after the pane whose
    bundle is the conversation as HTML and Markdown (:mod:`nbchat.saved_copy`), so a
    saved notebook shows it without a kernel. Updated by display id at a turn boundary
    after a quiet spell, else once the turns pause for a second, at least every 30 s
    while they keep coming, and never more often than
    :func:`~nbchat.saved_copy.update_interval` allows (:func:`~nbchat.saved_copy.publish_at`),
    from the client loop thread; never through the widget, whose view would be rebuilt
    by an update of its own output."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.copy = SavedCopy(chat.chat_id)
        self.display_id = f"nbchat-saved-{chat.chat_id}"
        self.shown = False
        self._parent: Any = None  # the header of the cell that showed it
        self._cell: str | None = None  # that cell's id, when the front end says it
        self._handle: asyncio.TimerHandle | None = None
        self._last = float("-inf")
        self._interval = MIN_INTERVAL_S  # after the last update: by its size
        self._unsaved_since: float | None = None  # the first change since the last update

    def show(self) -> None:
        """Publish the copy as a new output of the running cell. A view in another
        cell (the chat shown again where it is driven) gets a one-line note instead,
        so a saved notebook holds the conversation once."""
        from IPython.display import display

        cell = _running_cell()
        if self.shown and cell != self._cell:
            display(view_note(self.chat.chat_id), raw=True)  # type: ignore[no-untyped-call]
            return
        self._parent = getattr(_display_publisher(), "parent_header", None)
        self._cell = cell
        display(self._bundle(), raw=True, display_id=self.display_id)  # type: ignore[no-untyped-call]
        self.shown = True

    def changed(self) -> None:
        """The transcript changed (any thread): update the copy soon."""
        if self.shown:
            self.chat._conversation._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._unsaved_since is None:
            self._unsaved_since = now
        if self._handle is not None:
            self._handle.cancel()
        when = publish_at(now, self._unsaved_since, self._last, self._interval)
        self._handle = loop.call_at(when, self._publish)

    def _publish(self) -> None:
        from IPython.display import update_display

        self._handle = None
        self._unsaved_since = None
        self._last = asyncio.get_running_loop().time()
        publisher = _display_publisher()
        # Parented to the cell that showed it, as an update from that cell would be.
        token = None
        if self._parent and hasattr(publisher, "set_thread_parent"):
            token = publisher.set_thread_parent(self._parent)
        try:
            bundle = self._bundle()
            self._interval = update_interval(sum(len(v.encode()) for v in bundle.values()))
            update_display(bundle, raw=True, display_id=self.display_id)  # type: ignore[no-untyped-call]
        except Exception as exc:  # a kernel shutting down must not end the client loop
            log.debug("saved copy not updated: %s", exc)
        finally:
            if token is not None:
                publisher.reset_thread_parent(token)

    def _bundle(self) -> dict[str, str]:
        conversation = self.chat._conversation
        with conversation.lock:
            return self.copy.bundle(conversation.transcript)


def _running_cell() -> str | None:
    """Which cell is being run: its id where the front end sends it (JupyterLab and
    Notebook 7 put it in the execute request's metadata), else the execute request's
    own id (nbclient, papermill), so another run is another cell."""
    from IPython.core.interactiveshell import InteractiveShell

    kernel = getattr(InteractiveShell.instance(), "kernel", None)
    try:
        parent = kernel.get_parent() if kernel is not None else None
    except Exception:  # an older kernel without get_parent()
        return None
    parent = parent or {}
    cell = (parent.get("metadata") or {}).get("cellId")
    if isinstance(cell, str):
        return cell
    msg_id = (parent.get("header") or {}).get("msg_id")
    return f"request:{msg_id}" if isinstance(msg_id, str) else None


def _display_publisher() -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance().display_pub
