"""What the kernel and the chat pane say to each other over the widget comm, and the
batching that keeps that traffic bounded. Pure: no I/O, no clocks but those passed in.

The pane sends commands (:data:`COMMANDS`). Three change the conversation's branch
(see :mod:`nbchat.transcript`), refused while a reply runs: ``retry`` (answer the last
message again), ``edit`` ``{id, text}`` (send a new version of user message ``id``)
and ``checkout`` ``{id, sibling?}`` (show the newest branch through message ``id``, or
through its alternative number ``sibling``, 1-based, as the arrows under it ask).

The kernel sends the in-flight reply's text as ``chunk`` messages carrying only new
text and the offset it starts at, at most one per :attr:`StreamBatcher.interval_s`
whatever the token rate (Jupyter drops comm
messages past about 1,000/s, so one per token would lose text), and ``snapshot``
messages with the whole text so far when a view asks (a view that rendered mid-stream,
or one that saw a gap). Offsets make both idempotent: a view applies what extends its
text and ignores what it already has. ``js/src/stream.ts`` is the other half.

The transcript travels the same way (:class:`TranscriptSync`): a ``transcript``
message ``{from, records}`` replaces the records from index ``from`` on, so a turn
sends the messages it changed, not the whole conversation again;
``js/src/transcript.ts`` applies them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["COMMANDS", "Command", "StreamBatcher", "TranscriptSync", "parse_command"]

# Commands a pane may send, and whether each carries text.
COMMANDS: Final[dict[str, bool]] = {
    "send": True,
    "stop": False,
    "pause": False,
    "resume": False,
    "clear": False,
    "sync": False,
    "reconnect": False,
    "tool_answer": False,  # {call, run}: run (or not) a tool that asks first
    "retry": False,  # answer the active branch's last message again
    "edit": True,  # {id, text}: a new version of user message id
    "checkout": False,  # {id, sibling?}: show the branch through message id
}


@dataclass(frozen=True)
class Command:
    type: str
    text: str = ""
    call: str = ""  # tool_answer: the tool call asked about
    run: bool = False  # tool_answer: whether to run it
    id: str = ""  # edit, checkout: the message
    sibling: int | None = None  # checkout: which of the message's alternatives (1-based)


def parse_command(content: Any) -> Command:
    """Validate a message from the pane; raise ``ValueError`` saying what is wrong."""
    if not isinstance(content, dict):
        raise ValueError("a pane message must be an object")
    kind = content.get("type")
    if kind not in COMMANDS:
        raise ValueError(f"unknown pane message type {kind!r}")
    if COMMANDS[kind]:
        text = content.get("text")
        if not isinstance(text, str):
            raise ValueError(f"pane message {kind!r} needs a string 'text'")
        if kind == "edit":
            return Command(kind, text, id=_message_id(content, kind))
        return Command(kind, text)
    if kind == "checkout":
        sibling = content.get("sibling")
        if sibling is not None and (
            isinstance(sibling, bool) or not isinstance(sibling, int) or sibling < 1
        ):
            raise ValueError("pane message 'checkout' needs 'sibling' to be a number from 1")
        return Command(kind, id=_message_id(content, kind), sibling=sibling)
    if kind == "tool_answer":
        call, run = content.get("call"), content.get("run")
        if not isinstance(call, str) or not call:
            raise ValueError("pane message 'tool_answer' needs the tool call's id in 'call'")
        if not isinstance(run, bool):
            raise ValueError("pane message 'tool_answer' needs 'run': true or false")
        return Command(kind, call=call, run=run)
    return Command(kind)


def _message_id(content: dict[str, Any], kind: str) -> str:
    message_id = content.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError(f"pane message {kind!r} needs the message's id in 'id'")
    return message_id


class StreamBatcher:
    """Collects a reply's text as it arrives and hands it out in batches.

    ``add`` is called per chunk; ``take`` returns the ``chunk`` message to send (or None)
    and is called by the I/O layer when :meth:`due` says. The rule: at most one batch
    per ``interval_s`` (20 a second); after a small batch (under ``small_chars``: the
    text trickles in) the next waits ``slow_interval_s`` instead, so a slow reply
    sends fewer, larger messages (each carries a ~700-byte envelope) while no text
    waits longer than that for its batch. The first text after a quiet spell goes at
    once. ``snapshot`` may be called from another thread at any time. A lock keeps the
    batches and snapshots consistent with each other.
    """

    def __init__(
        self,
        interval_s: float = 0.05,
        *,
        kind: str | None = None,
        slow_interval_s: float = 0.075,
        small_chars: int = 48,
    ) -> None:
        self.interval_s = interval_s
        self.slow_interval_s = max(slow_interval_s, interval_s)
        self.small_chars = small_chars
        self._next_interval = interval_s
        self.kind = kind  # None for the answer; "reasoning" tags the messages
        self._lock = threading.Lock()
        self.reply: str | None = None
        self._text: list[str] = []  # everything received for the current reply
        self._length = 0
        self._sent = 0  # characters already handed out in batches
        self._last_take = float("-inf")

    def begin(self, reply: str) -> None:
        with self._lock:
            self.reply, self._text, self._length, self._sent = reply, [], 0, 0
            self._next_interval = self.interval_s

    def add(self, text: str) -> None:
        with self._lock:
            self._text.append(text)
            self._length += len(text)

    def due(self, now: float) -> float:
        """When the next batch may go out: ``now`` or later."""
        return max(now, self._last_take + self._next_interval)

    def take(self, now: float) -> dict[str, Any] | None:
        """The next ``chunk`` message (text not yet sent), or None if there is none."""
        with self._lock:
            if self.reply is None or self._sent == self._length:
                return None
            text = "".join(self._text)
            self._text = [text]
            message = {
                "type": "chunk",
                "reply": self.reply,
                "offset": self._sent,
                "text": text[self._sent :],
            }
            if self.kind:
                message["kind"] = self.kind
            small = self._length - self._sent < self.small_chars
            self._next_interval = self.slow_interval_s if small else self.interval_s
            self._sent = self._length
            self._last_take = now
            return message

    def snapshot(self) -> dict[str, Any] | None:
        """The ``snapshot`` message for a view that needs the whole text: everything
        handed out so far (later batches continue from its end)."""
        with self._lock:
            if self.reply is None:
                return None
            text = "".join(self._text)[: self._sent]
            snapshot = {"type": "snapshot", "reply": self.reply, "text": text}
            if self.kind:
                snapshot["kind"] = self.kind
            return snapshot

    def end(self) -> None:
        with self._lock:
            self.reply, self._text, self._length, self._sent = None, [], 0, 0


class TranscriptSync:
    """What the pane must hear of the transcript: only the records that changed.

    Records of messages that no longer change are the same objects from one call of
    ``Transcript.to_records`` to the next, so the changed tail is found by identity.
    :meth:`update` is called on the loop thread, :meth:`snapshot` from the kernel's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: list[dict[str, Any]] = []

    def update(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The ``transcript`` message that brings the pane to ``records``, or None
        when it already has them."""
        with self._lock:
            sent = self._sent
            same = 0
            for old, new in zip(sent, records, strict=False):
                if old is not new:
                    break
                same += 1
            if same == len(sent) == len(records):
                return None
            self._sent = list(records)
            return {"type": "transcript", "from": same, "records": records[same:]}

    def snapshot(self) -> dict[str, Any]:
        """The whole transcript, for a view that has none of it (or saw a gap)."""
        with self._lock:
            return {"type": "transcript", "from": 0, "records": list(self._sent)}
