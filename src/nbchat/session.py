"""Session state for both ends of the wire: seq numbering, reply states, pause holding,
replay after a given seq, and duplicate-free reply assembly.

Pure: no I/O, no clocks except those passed in. The gateway's connection feeds a
:class:`GatewaySession` and sends the events it returns; the client's connection feeds
received frames to a :class:`ClientSession` and acts on what it reports.

Invariants kept here (and tested, including property-based tests):

- Every event that belongs to a reply gets ``seq = previous + 1`` within its session.
- While a reply is paused, generated text is held, not sequenced; ``resume`` releases it
  as one delta. Nothing generated is dropped, nothing is released twice.
- A reply's ``done`` is its last event; nothing follows it for that reply.
- A client applies each seq at most once: duplicates and replays of what it has already
  seen are dropped, so each reply's text is assembled exactly once, in order.
- A client keeps every start, stop, pause and resume it sent until an event answers
  it, and sends the unanswered ones again after a resume (a frame written just before
  a cut may never arrive); the gateway treats them as idempotent.
- A tool call is a sequenced event like a delta (held while paused, after the text
  held before it). Each call is answered once: a repeated ``tool_result`` (resent after
  a resume) changes nothing, and a result for a call never made is refused.
- When the log no longer reaches back to a resuming client's ``last_seq``, the gateway
  sends a ``snapshot`` of each reply that changed since then instead of the events, and
  the client takes the welcome's ``last_seq`` as its own: it still ends exact.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Final, Literal

from .protocol import (
    JSON,
    ClientFrame,
    Delta,
    Done,
    Error,
    FinishReason,
    Pause,
    Paused,
    PendingCall,
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
)

__all__ = [
    "RESUME_GAP",
    "SESSION_LOST",
    "TRANSITIONS",
    "ClientSession",
    "GatewaySession",
    "LogLimits",
    "Replay",
    "ReplyEnd",
    "ReplyProgress",
    "ReplyState",
    "ReplyView",
    "SessionError",
]


class ReplyState(str, Enum):
    PENDING = "pending"  # created by the client, not yet acknowledged
    STREAMING = "streaming"
    PAUSED = "paused"
    DONE = "done"  # finished by the model (finish = stop or length)
    STOPPED = "stopped"  # finished by the user (finish = stopped)
    ERROR = "error"  # finished by a failure (finish = error)

    @property
    def finished(self) -> bool:
        return self in _FINAL


_FINAL: Final = frozenset({ReplyState.DONE, ReplyState.STOPPED, ReplyState.ERROR})

# What may follow what. A final state has no successors.
TRANSITIONS: Final[dict[ReplyState, frozenset[ReplyState]]] = {
    ReplyState.PENDING: frozenset({ReplyState.STREAMING, *_FINAL}),
    ReplyState.STREAMING: frozenset({ReplyState.PAUSED, *_FINAL}),
    ReplyState.PAUSED: frozenset({ReplyState.STREAMING, *_FINAL}),
    ReplyState.DONE: frozenset(),
    ReplyState.STOPPED: frozenset(),
    ReplyState.ERROR: frozenset(),
}

_STATE_BY_FINISH: Final[dict[str, ReplyState]] = {
    "stop": ReplyState.DONE,
    "length": ReplyState.DONE,
    "stopped": ReplyState.STOPPED,
    "error": ReplyState.ERROR,
}


# Sent before the snapshots of a resume that the log no longer reaches back to.
RESUME_GAP: Final = Error(
    code="resume_gap",
    message="the session log no longer reaches back to your last_seq; the replies that "
    "changed are sent in full",
)

# How many ids of forgotten replies a session remembers (a few bytes each).
_FORGOTTEN_IDS: Final = 4096


class SessionError(ValueError):
    """A request that the session state does not allow (unknown reply, reply id reused,
    a transition the table forbids). The message is meant for the peer as is."""


def _advance(current: ReplyState, new: ReplyState, reply: str) -> ReplyState:
    if new not in TRANSITIONS[current]:
        raise SessionError(f"reply {reply!r} cannot go from {current.value} to {new.value}")
    return new


# --- gateway side ------------------------------------------------------------


@dataclass(frozen=True)
class LogLimits:
    """Bounds on a session's replay log. Older events are dropped first; a client that
    resumes from before the oldest kept event gets a ``resume_gap``."""

    max_events: int = 10_000
    max_bytes: int = 8 * 1024 * 1024
    max_age_s: float = 600.0  # applied only when the session is given a clock
    # Finished replies kept for a resume's snapshot; older ones are forgotten. A client
    # runs at most a few replies at once, so it never misses the end of one this old.
    max_finished_replies: int = 32


@dataclass
class ReplyProgress:
    """What the gateway knows of one reply."""

    reply: str
    model: str
    state: ReplyState = ReplyState.STREAMING
    text: list[str] = field(default_factory=list)  # the answer generated so far
    reasoning: list[str] = field(default_factory=list)  # reasoning generated so far
    # Generated while paused and not yet sent, as (kind, text); kind None is the answer.
    held: list[tuple[str | None, str]] = field(default_factory=list)
    held_done: Done | None = None  # the end, reached while paused
    held_calls: list[ToolCall] = field(default_factory=list)  # made while paused (seq 0)
    # Tool calls made, by id: whether each has its result.
    calls: dict[str, bool] = field(default_factory=dict)
    # Sent calls still waiting for their result (for a snapshot), by id.
    waiting: dict[str, ToolCall] = field(default_factory=dict)
    last_seq: int = 0  # seq of this reply's latest event
    done: Done | None = None
    error: Error | None = None

    def _sent(self, parts: list[str], kind: str | None) -> str:
        held = sum(len(text) for k, text in self.held if k == kind)
        full = "".join(parts)
        return full[: len(full) - held]

    @property
    def sent_text(self) -> str:
        """The answer already sequenced (everything generated but what is held)."""
        return self._sent(self.text, None)

    def snapshot(self) -> Snapshot:
        done, error = self.done, self.error
        return Snapshot(
            reply=self.reply,
            text=self.sent_text,
            reasoning=self._sent(self.reasoning, "reasoning") or None,
            paused=self.state is ReplyState.PAUSED,
            finish=done.finish if done else None,
            error=error.message if error else None,
            error_code=error.code if error else None,
            usage=done.usage if done else None,
            calls=tuple(
                PendingCall(call=c.call, name=c.name, arguments=c.arguments)
                for c in self.waiting.values()
            )
            or None,
        )


@dataclass(frozen=True)
class Replay:
    """Result of :meth:`GatewaySession.replay`: the events to resend, or a gap."""

    events: list[ServerFrame]
    gap: bool = False
    # With a gap: a snapshot of each reply that changed after the client's last_seq,
    # sent instead of the events (which the log no longer holds in full).
    snapshots: list[Snapshot] = field(default_factory=list)


class GatewaySession:
    """One chat session as the gateway sees it.

    Each method returns the events to send (already numbered and logged); the caller
    sends them to the connected client, if any, in order.
    """

    def __init__(
        self,
        session_id: str,
        *,
        limits: LogLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.session_id = session_id
        self.limits = limits or LogLimits()
        self.last_seq = 0
        self.replies: dict[str, ReplyProgress] = {}
        self._clock = clock
        # (event, size, time); a delta, most of the log, is kept as a tuple of its
        # fields (see _logged).
        self._log: deque[tuple[ServerFrame | _LoggedDelta, int, float]] = deque()
        self._log_bytes = 0
        self._finished: deque[str] = deque()  # finished replies still kept, oldest first
        # Ids of forgotten replies, so a late repeat of their start is still known.
        self._forgotten: deque[str] = deque(maxlen=_FORGOTTEN_IDS)
        self._forgotten_set: set[str] = set()

    @classmethod
    def restore(
        cls,
        session_id: str,
        events: list[ServerFrame],
        *,
        last_seq: int,
        open_replies: set[str] | frozenset[str] = frozenset(),
        limits: LogLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> GatewaySession:
        """The session as a shared store holds it: its logged events (oldest first, as
        many as the store kept), its last seq, and the replies still open (started, not
        done) whose start the store may no longer hold. Text a previous gateway held
        while paused was never sequenced, so it is not here: what was sent is."""
        session = cls(session_id, limits=limits, clock=clock)
        for event in events:
            session._absorb(event)
        session.last_seq = max(session.last_seq, last_seq)
        for reply in open_replies:
            if reply not in session.replies:
                session.replies[reply] = ReplyProgress(reply=reply, model="")
        return session

    def _absorb(self, event: ServerFrame) -> None:
        """Take a logged event into the state, as if this session had emitted it."""
        reply = getattr(event, "reply", None)
        if isinstance(event, Started):
            self.replies[event.reply] = ReplyProgress(reply=event.reply, model=event.model)
        progress = self.replies.get(reply) if isinstance(reply, str) else None
        if progress is None:  # a reply whose start is no longer kept, or no reply
            self.last_seq = max(self.last_seq, _seq_of(event))
            return
        if isinstance(event, Delta):
            (progress.reasoning if event.kind == "reasoning" else progress.text).append(event.text)
        elif isinstance(event, Paused):
            progress.state = ReplyState.PAUSED
        elif isinstance(event, Resumed):
            progress.state = ReplyState.STREAMING
        elif isinstance(event, ToolCall):
            progress.calls[event.call] = False
            progress.waiting[event.call] = event
        elif isinstance(event, Error):
            progress.error = event
        elif isinstance(event, Done):
            progress.state, progress.done = _STATE_BY_FINISH[event.finish], event
            progress.waiting.clear()
            self._finished.append(event.reply)
        self.last_seq = max(self.last_seq, _seq_of(event))
        self._emit(event)
        self._forget_old_replies()

    def unfinished(self) -> list[str]:
        """Replies started and not yet ended (paused ones, with an end held, included)."""
        return [r for r, p in self.replies.items() if not p.state.finished]

    def knows(self, reply: str) -> bool:
        """Whether ``reply`` was started in this session (kept or already forgotten)."""
        return reply in self.replies or reply in self._forgotten_set

    def _forget_old_replies(self) -> None:
        while len(self._finished) > self.limits.max_finished_replies:
            old = self._finished.popleft()
            self.replies.pop(old, None)
            if len(self._forgotten) == self._forgotten.maxlen:
                self._forgotten_set.discard(self._forgotten[0])
            self._forgotten.append(old)
            self._forgotten_set.add(old)

    # Each event is sized by the strings it holds (ids and names are at most 256
    # characters, the protocol sees to it): cheap, and close to its encoded size.
    def _emit(self, event: ServerFrame) -> ServerFrame:
        size = 64 + sum(
            len(getattr(event, name, None) or "")
            for name in ("text", "reply", "model", "message", "call", "name")
        )
        if isinstance(event, ToolCall):
            size += len(json.dumps(event.arguments))
        self._log.append((_logged(event), size, self._clock() if self._clock else 0.0))
        self._log_bytes += size
        reply = getattr(event, "reply", None)
        if reply in self.replies:
            self.replies[reply].last_seq = _seq_of(event)
        self._trim()
        return event

    def _trim(self) -> None:
        limits, log = self.limits, self._log
        oldest_kept = self._clock() - limits.max_age_s if self._clock else None
        while log and (
            len(log) > limits.max_events
            or self._log_bytes > limits.max_bytes
            or (oldest_kept is not None and log[0][2] < oldest_kept)
        ):
            self._log_bytes -= log.popleft()[1]

    def _next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def _get(self, reply: str) -> ReplyProgress:
        progress = self.replies.get(reply)
        if progress is None:
            raise SessionError(f"unknown reply {reply!r}")
        return progress

    def start(self, reply: str, model: str) -> list[ServerFrame]:
        if self.knows(reply):
            raise SessionError(f"reply id {reply!r} was already used in this session")
        self.replies[reply] = ReplyProgress(reply=reply, model=model)
        return [self._emit(Started(seq=self._next_seq(), reply=reply, model=model))]

    def delta(
        self, reply: str, text: str, kind: Literal["reasoning"] | None = None
    ) -> list[ServerFrame]:
        """Record generated text (``kind="reasoning"`` for reasoning); returns a delta
        unless the reply is paused."""
        progress = self._get(reply)
        if progress.state.finished:
            raise SessionError(f"reply {reply!r} has already finished")
        if not text:
            return []
        (progress.reasoning if kind == "reasoning" else progress.text).append(text)
        if progress.state is ReplyState.PAUSED:
            progress.held.append((kind, text))
            return []
        return [self._emit(Delta(seq=self._next_seq(), reply=reply, text=text, kind=kind))]

    def tool_call(self, reply: str, call: str, name: str, arguments: JSON) -> list[ServerFrame]:
        """Record a tool call the model made; returns its ``tool_call`` event unless the
        reply is paused (then it is sent on resume, after the text held before it)."""
        progress = self._get(reply)
        if progress.state.finished:
            raise SessionError(f"reply {reply!r} has already finished")
        if call in progress.calls:
            raise SessionError(f"reply {reply!r} already made tool call {call!r}")
        progress.calls[call] = False
        if progress.state is ReplyState.PAUSED:
            progress.held_calls.append(
                ToolCall(seq=0, reply=reply, call=call, name=name, arguments=arguments)
            )
            return []
        event = ToolCall(
            seq=self._next_seq(), reply=reply, call=call, name=name, arguments=arguments
        )
        progress.waiting[call] = event
        return [self._emit(event)]

    def made_call(self, reply: str, call: str) -> bool:
        """Whether ``reply`` has made a tool call with this id."""
        progress = self.replies.get(reply)
        return progress is not None and call in progress.calls

    def is_paused(self, reply: str) -> bool:
        progress = self.replies.get(reply)
        return progress is not None and progress.state is ReplyState.PAUSED

    def tool_result(self, reply: str, call: str) -> bool:
        """Take a client's result for ``call``: True the first time, False for a repeat
        (or a reply that has ended, or was forgotten), which changes nothing. Raises
        :class:`SessionError` for a call the reply never made."""
        if reply in self._forgotten_set:
            return False
        progress = self._get(reply)
        if call not in progress.calls:
            raise SessionError(f"reply {reply!r} made no tool call {call!r}")
        if progress.calls[call] or progress.state.finished:
            return False
        progress.calls[call] = True
        progress.waiting.pop(call, None)
        return True

    def pause(self, reply: str) -> list[ServerFrame]:
        progress = self._get(reply)
        if progress.state is ReplyState.PAUSED:
            return []  # pausing twice is harmless
        progress.state = _advance(progress.state, ReplyState.PAUSED, reply)
        return [self._emit(Paused(seq=self._next_seq(), reply=reply))]

    def resume(self, reply: str) -> list[ServerFrame]:
        progress = self._get(reply)
        if progress.state is ReplyState.STREAMING:
            return []  # resuming a reply that is not paused is harmless
        progress.state = _advance(progress.state, ReplyState.STREAMING, reply)
        events: list[ServerFrame] = [self._emit(Resumed(seq=self._next_seq(), reply=reply))]
        events += self._release_held(progress)
        if progress.held_done is not None:
            done, progress.held_done = progress.held_done, None
            events += self.finish(reply, done.finish, usage=done.usage, timing=done.timing)
        return events

    def _release_held(self, progress: ReplyProgress, *, calls: bool = True) -> list[ServerFrame]:
        """One delta per run of held text of the same kind, in the order generated,
        then the held tool calls (``calls``; else they are dropped: the reply ends).
        Nothing is generated after a call until its result, so this is the order."""
        held_calls, progress.held_calls = progress.held_calls, []
        runs: list[tuple[str | None, list[str]]] = []
        for kind, text in progress.held:
            if runs and runs[-1][0] == kind:
                runs[-1][1].append(text)
            else:
                runs.append((kind, [text]))
        progress.held.clear()
        events: list[ServerFrame] = [
            self._emit(
                Delta(
                    seq=self._next_seq(),
                    reply=progress.reply,
                    text="".join(parts),
                    kind="reasoning" if kind == "reasoning" else None,
                )
            )
            for kind, parts in runs
        ]
        for call in held_calls if calls else ():
            released = replace(call, seq=self._next_seq())
            progress.waiting[call.call] = released
            events.append(self._emit(released))
        return events

    def finish(
        self,
        reply: str,
        finish: FinishReason,
        *,
        usage: JSON | None = None,
        timing: JSON | None = None,
        error: Error | None = None,
    ) -> list[ServerFrame]:
        """End a reply. A natural end reached while paused is held until ``resume``;
        a stop or an error ends it at once, releasing any held text first."""
        progress = self._get(reply)
        if progress.state.finished:
            return []  # e.g. a stop that raced the natural end: the first end wins
        if progress.state is ReplyState.PAUSED and finish in ("stop", "length"):
            progress.held_done = Done(
                seq=0, reply=reply, finish=finish, usage=usage, timing=timing or {}
            )
            return []
        events = self._release_held(progress, calls=False)
        if progress.held_done is not None and usage is None:
            # Stopped while paused after the model had finished: keep what it reported.
            usage, timing = progress.held_done.usage, timing or progress.held_done.timing
        progress.held_done = None
        progress.waiting.clear()
        progress.state = _STATE_BY_FINISH[finish]
        if error is not None:
            progress.error = replace(error, reply=reply, seq=self._next_seq())
            events.append(self._emit(progress.error))
        progress.done = Done(
            seq=self._next_seq(), reply=reply, finish=finish, usage=usage, timing=timing or {}
        )
        events.append(self._emit(progress.done))
        self._finished.append(reply)
        self._forget_old_replies()
        return events

    def replay(self, after_seq: int) -> Replay:
        """Events with ``seq > after_seq``, oldest first, for a client that resumes.

        When the log no longer reaches back to ``after_seq + 1``, returns a gap with a
        snapshot of each reply that changed after ``after_seq`` instead of events.
        """
        if after_seq > self.last_seq:
            raise SessionError(
                f"last_seq {after_seq} is ahead of this session (last seq {self.last_seq})"
            )
        self._trim()
        # Only reply events are logged, and every one of them carries a seq.
        oldest_seq = _logged_seq(self._log[0][0]) if self._log else self.last_seq + 1
        if oldest_seq <= after_seq + 1:
            return Replay(events=[_event(e) for e, _, _ in self._log if _logged_seq(e) > after_seq])
        changed = [p.snapshot() for p in self.replies.values() if p.last_seq > after_seq]
        return Replay(events=[], gap=True, snapshots=changed)


def _seq_of(event: ServerFrame) -> int:
    seq = getattr(event, "seq", None)
    return seq if isinstance(seq, int) else 0


# A delta in the log as (seq, reply, text, kind): a tuple of strings and ints, which the
# garbage collector stops tracking, where a Delta object stays tracked. A gateway with
# hundreds of busy sessions holds millions of logged deltas, and each full collection
# walked them all (pauses of 200 ms and more in benchmarks/bench_load.py).
_LoggedDelta = tuple[int, str, str, Literal["reasoning"] | None]


def _logged(event: ServerFrame) -> ServerFrame | _LoggedDelta:
    if type(event) is Delta:
        return (event.seq, event.reply, event.text, event.kind)
    return event


def _event(entry: ServerFrame | _LoggedDelta) -> ServerFrame:
    if isinstance(entry, tuple):
        seq, reply, text, kind = entry
        return Delta(seq=seq, reply=reply, text=text, kind=kind)
    return entry


def _logged_seq(entry: ServerFrame | _LoggedDelta) -> int:
    return entry[0] if isinstance(entry, tuple) else _seq_of(entry)


# --- client side -------------------------------------------------------------


@dataclass
class ReplyView:
    """What the client knows of one reply: its assembled text and its state."""

    reply: str
    state: ReplyState = ReplyState.PENDING
    model: str | None = None
    parts: list[str] = field(default_factory=list)
    reasoning_parts: list[str] = field(default_factory=list)
    finish: FinishReason | None = None
    error: str | None = None
    error_code: str | None = None
    retry_after: float | None = None  # with the error: when the provider said to retry
    usage: JSON | None = None
    timing: JSON = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class ReplyEnd:
    """A reply the client must take as ended, and how (see :meth:`ClientSession.ended`)."""

    reply: str
    finish: FinishReason
    error: str | None = None
    error_code: str | None = None


# Why a reply begun in a session that a new-session welcome replaced ends.
SESSION_LOST: Final = (
    "the gateway no longer has this session (it restarted, or the session expired); the "
    "reply ends here"
)


class ClientSession:
    """The client's view of a session: which seq it has applied, and each reply's text.

    :meth:`receive` applies a frame at most once and reports whether it was new;
    :meth:`ended` then says which replies it ended.
    """

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.last_seq = 0
        self.replies: dict[str, ReplyView] = {}
        self.duplicates = 0  # frames dropped because their seq was already applied
        self.gaps = 0  # resumes answered with snapshots (the log no longer reached back)
        self._welcome_seq = 0
        self._unanswered: list[ClientFrame] = []

    def sent(self, frame: ClientFrame) -> None:
        """Record a frame sent (or about to be); requests are kept until answered."""
        if isinstance(frame, (Start, Stop, Pause, Resume, ToolResult)):
            self._unanswered.append(frame)

    def unanswered(self) -> list[ClientFrame]:
        """Requests the gateway has not answered yet, oldest first: to send again
        after a resume. Resending is safe: the gateway treats them as idempotent."""
        return list(self._unanswered)

    def withdraw(self, frame: ClientFrame) -> None:
        """Stop resending ``frame``: it was refused and would be refused again."""
        self._unanswered = [f for f in self._unanswered if f is not frame]

    def _answered(self, frame: ServerFrame, reply: str) -> None:
        # Which requests an event answers: any event of a reply answers its start;
        # paused answers pause, resumed answers resume, done answers everything. A
        # delta answers the tool results sent before it: nothing is generated after a
        # tool call until every result of its round has arrived.
        answered: tuple[type[Any], ...] = (Start,)
        if isinstance(frame, Delta):
            answered = (Start, ToolResult)
        elif isinstance(frame, Paused):
            answered = (Start, Pause)
        elif isinstance(frame, Resumed):
            answered = (Start, Resume)
        elif isinstance(frame, (Done, Snapshot)) and (
            not isinstance(frame, Snapshot) or frame.finish is not None
        ):
            answered = (Start, Stop, Pause, Resume, ToolResult)
        self._unanswered = [
            f
            for f in self._unanswered
            if not (getattr(f, "reply", None) == reply and isinstance(f, answered))
        ]

    def forget(self, reply: str) -> None:
        """Drop what is kept of a reply its owner is done with (it has ended); later
        frames about it still pass the seq check and are reported as for any other."""
        self.replies.pop(reply, None)

    def ended(self, frame: ServerFrame, *, lost: str = SESSION_LOST) -> list[ReplyEnd]:
        """The replies this client opened (and has not forgotten) that ``frame`` ends,
        and how. Call it after :meth:`receive` took the frame (or with a refusal the
        connection made up itself); end each reply there, then :meth:`forget` it.

        What ends a reply, and nothing else does:

        - its ``done``, or a ``snapshot`` with its end: the finish and the error the
          view assembled (the reply's sequenced error);
        - an unsequenced ``error`` naming it before any event of it: the start itself
          was refused (a refusal after that refuses a pause, resume or stop);
        - an unsequenced ``store_unavailable``: the gateway's session store is away, so
          nothing more can come of the reply it names, or of every reply if it names
          none;
        - a welcome to a new session (``resumed`` false): replies the old session had
          begun are lost (``session_lost``, with the words ``lost``); a start it never
          answered is sent again in the new one, and goes on.
        """
        if isinstance(frame, Welcome):
            if frame.resumed:
                return []
            begun = [
                reply
                for reply, view in self.replies.items()
                if view.state is not ReplyState.PENDING and not view.state.finished
            ]
            return [ReplyEnd(reply, "error", lost, "session_lost") for reply in begun]
        if isinstance(frame, Error) and frame.seq is None:
            store_down = frame.code == "store_unavailable"
            named = [frame.reply] if frame.reply is not None else []
            if store_down and frame.reply is None:
                named = list(self.replies)
            return [
                ReplyEnd(reply, "error", frame.message, frame.code)
                for reply in named
                if (view := self.replies.get(reply)) is not None
                and not view.state.finished
                and (store_down or view.state is ReplyState.PENDING)
            ]
        if isinstance(frame, (Done, Snapshot)):
            view = self.replies.get(frame.reply)
            if view is not None and view.finish is not None and frame.finish is not None:
                return [ReplyEnd(frame.reply, view.finish, view.error, view.error_code)]
        return []

    def open(self, reply: str) -> ReplyView:
        """Register a reply the client is about to ``start``."""
        if reply in self.replies:
            raise SessionError(f"reply id {reply!r} is already in use")
        view = ReplyView(reply=reply)
        self.replies[reply] = view
        return view

    def receive(self, frame: ServerFrame) -> bool:
        """Apply one frame from the gateway. Returns False for a duplicate (ignored)."""
        if isinstance(frame, Welcome):
            self.session_id, self._welcome_seq = frame.session, frame.last_seq
            if not frame.resumed:
                self.last_seq = 0  # a new session numbers from the start
                # Requests of the lost session go nowhere, but a start that never got
                # an answer is sent again in the new one (it was never run).
                self._unanswered = [
                    f
                    for f in self._unanswered
                    if isinstance(f, Start)
                    and (view := self.replies.get(f.reply)) is not None
                    and view.state is ReplyState.PENDING
                ]
            return True
        if isinstance(frame, Error) and frame.code == "resume_gap":
            self.gaps += 1
            # Snapshots follow for everything up to the welcome's last_seq.
            self.last_seq = max(self.last_seq, self._welcome_seq)
            return True
        if isinstance(frame, Snapshot):
            self._apply_snapshot(frame)
            self._answered(frame, frame.reply)
            return True
        if isinstance(frame, Error) and frame.seq is None and frame.reply is not None:
            # A refusal before any event of the reply refuses its start (the gateway
            # answers in order); a later one refuses a control request, which stays
            # unanswered and is tried again after a resume.
            view = self.replies.get(frame.reply)
            if view is None or view.state is ReplyState.PENDING:
                self._answered(frame, frame.reply)
        seq = getattr(frame, "seq", None)
        if seq is not None:
            if seq <= self.last_seq:
                self.duplicates += 1
                return False
            self.last_seq = seq
        reply_id = getattr(frame, "reply", None)
        if seq is not None and reply_id is not None:
            self._answered(frame, reply_id)
        view = self.replies.get(reply_id) if reply_id is not None else None
        if view is None:
            return True  # session-level frame, or a reply this client did not open
        if isinstance(frame, Started):
            view.model = frame.model
            if view.state is ReplyState.PENDING:
                view.state = ReplyState.STREAMING
        elif isinstance(frame, Delta):
            (view.reasoning_parts if frame.kind == "reasoning" else view.parts).append(frame.text)
            if view.state is ReplyState.PENDING:
                view.state = ReplyState.STREAMING
        elif isinstance(frame, Paused):
            if not view.state.finished:
                view.state = ReplyState.PAUSED
        elif isinstance(frame, Resumed):
            if not view.state.finished:
                view.state = ReplyState.STREAMING
        elif isinstance(frame, Error):
            # Only a sequenced error is the reply's failure; an unsequenced one answers a
            # bad request about the reply (e.g. pause after it ended) and changes nothing.
            if frame.seq is not None:
                view.error, view.error_code = frame.message, frame.code
                view.retry_after = frame.retry_after
        elif isinstance(frame, Done):
            view.finish = frame.finish
            view.usage = frame.usage
            view.timing = dict(frame.timing)
            view.state = _STATE_BY_FINISH[frame.finish]
        return True

    def _apply_snapshot(self, frame: Snapshot) -> None:
        view = self.replies.get(frame.reply)
        if view is None:
            return
        view.parts = [frame.text] if frame.text else []
        view.reasoning_parts = [frame.reasoning] if frame.reasoning else []
        if frame.finish is not None:
            view.finish, view.usage = frame.finish, frame.usage
            view.error, view.error_code = frame.error, frame.error_code
            view.state = _STATE_BY_FINISH[frame.finish]
        elif not view.state.finished:
            view.state = ReplyState.PAUSED if frame.paused else ReplyState.STREAMING
