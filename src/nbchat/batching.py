"""Many prompts at once: :func:`batch` sends each prompt to each model through the
gateway, a bounded number at a time, and returns every reply as a row of a DataFrame.

The work runs on the client loop thread (:func:`~nbchat.client.client_loop`) over
several :class:`~nbchat.client.ClientConnection` s, one gateway session each, so it
resumes after a dropped link like a chat does; the calling thread only waits, draws the
progress bar, and turns a ``KeyboardInterrupt`` (the user interrupting the cell) into a
stop. That works in a Jupyter kernel too, where the main thread already runs an event
loop of its own.

What ends a reply is decided where it is for a chat
(:meth:`~nbchat.session.ClientSession.ended`), and a row's text, error and usage are
read from the reply's :class:`~nbchat.session.ReplyView` when it ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from .client import (
    ClientConnection,
    GatewayUnavailable,
    LinkState,
    SendRefused,
    client_loop,
    gateway_urls,
    refusal_code,
)
from .conversation import _check_sendable, _checked_params
from .gateway.limits import GatewayLimits
from .pricing import cost, prices_with, token_count
from .protocol import (
    MAX_NAME_CHARS,
    ChatMessage,
    Delta,
    ServerFrame,
    Start,
    Stop,
    Welcome,
)

if TYPE_CHECKING:
    import pandas

__all__ = [
    "BATCH_COLUMNS",
    "MAX_CONCURRENCY",
    "MAX_RETRY_WAIT_S",
    "REPLIES_PER_SESSION",
    "StopSignal",
    "batch",
]

# The columns of every result, in order (a DataFrame's own columns come first).
BATCH_COLUMNS: Final = (
    "prompt",
    "model",
    "text",
    "finish",
    "error",
    "error_code",
    "first_token_s",
    "duration_s",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "retries",
    "reply_id",
)
# Replies one gateway session runs at once when its welcome does not say (a gateway
# older than welcome.replies_per_session has the default limit).
REPLIES_PER_SESSION: Final = GatewayLimits().replies_per_session
MAX_CONCURRENCY: Final = 1024
# The default of max_retry_wait_s: a provider that asks for a longer wait than this is
# not retried (the row says so); a shorter wait is waited in full.
MAX_RETRY_WAIT_S: Final = 60.0
DEFAULT_MAX_RETRIES: Final = 5
# A gateway busy with nothing else of this batch in flight on the session (its session
# store overloaded) is tried again after this, as a retry.
BUSY_RETRY_S: Final = 0.25
STOP_GRACE_S: Final = 2.0  # how long a stop waits for the gateway to confirm the replies
CLOSE_S: Final = 5.0  # how long the links may take to close (all at once)
POLL_S: Final = 0.1  # the waiting thread's tick: progress bar, interrupt, stop signal
# A row in flight when the batch stopped, whose stop the gateway never confirmed (the
# link was down or stalled): its provider request may have gone on.
STOP_UNCONFIRMED: Final = (
    "stop not confirmed by the gateway (the link was down or stalled): the provider "
    "request may have run on"
)


class StopSignal(Protocol):
    """What ``stop=`` takes: a :class:`threading.Event`, or anything with ``is_set()``."""

    def is_set(self) -> bool: ...


def batch(
    prompts: Any,
    models: str | Sequence[str] | None = None,
    *,
    column: Any = None,
    system: str | None = None,
    concurrency: int = 8,
    url: str | Sequence[str] | None = None,
    token: str | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    progress: bool = True,
    stop: StopSignal | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    max_retry_wait_s: float = MAX_RETRY_WAIT_S,
    **params: Any,
) -> pandas.DataFrame:
    """Send every prompt to every model, ``concurrency`` replies at a time, and return
    the replies as a DataFrame: one row per (prompt, model), prompt by prompt in input
    order, each prompt's models in the order given.

    Args:
        prompts: a list of strings, a pandas Series, or a DataFrame with ``column``
            naming the prompts' column (its other columns, with their dtypes, are
            carried into each row; its column labels must be unique).
        models: a model name or a list of them; ``None``: the gateway's default model.
        system: a system message sent before each prompt.
        concurrency: replies generated at once (1 to :data:`MAX_CONCURRENCY`). A
            gateway session runs a limited number of replies at once (its welcome says
            how many; :data:`REPLIES_PER_SESSION` if it does not), so they are spread
            over as many sessions as that takes. If the gateway refuses some sessions,
            fewer run at once: a ``RuntimeWarning`` says why, and the progress bar and
            ``df.attrs`` say what ran.
        url, token: a gateway (``nbchat serve``) URL, or a list of them, and its token;
            ``None``: the kernel's embedded gateway, as ``Chat()`` uses.
        prices: ``{model: (input, output)}`` US dollars per 1M tokens, over the built-in
            table (only ``demo``, at 0), for the ``cost`` column.
        progress: show a progress bar (``tqdm.auto``: a widget in Jupyter, text in a
            terminal) with the replies done and failed, retries, and tokens/s.
        stop: a :class:`threading.Event` (or anything with ``is_set()``): when it is set,
            from another thread or cell, the batch stops as on an interrupt.
        max_retries: how many times a row is sent again when the provider rate limited
            it and said when to retry (HTTP 429 with ``Retry-After``), or the gateway
            was busy with nothing else of this batch in flight on the session. No other
            failure is retried. A session that is full (its other replies running) is
            no failure: the row waits for one of them to end and is sent then, not
            counted as a retry.
        max_retry_wait_s: the longest ``Retry-After`` waited: a provider that asks for
            more is not retried, and the row's error says how long it asked for.
        **params: request params for every reply (``temperature=0.2``, ...).

    Returns:
        A DataFrame with the input DataFrame's other columns, then :data:`BATCH_COLUMNS`:
        ``prompt``, ``model``; ``text`` (the reply, partial if stopped); ``finish``:
        ``stop`` or ``length`` (done), ``error``, ``stopped`` (in flight when the batch
        was stopped: its request was stopped at the provider, its partial text kept;
        with ``error_code == "stop_unconfirmed"`` when the gateway never confirmed the
        stop) or ``not_run`` (never sent: the batch was stopped first); ``error`` and
        ``error_code`` (the gateway's words, e.g. ``unknown_model``); ``first_token_s``
        and ``duration_s`` (client clock, from sending the request, of the attempt that
        gave the row); ``prompt_tokens`` and ``completion_tokens`` (as the provider
        reported them, else null); ``cost`` (US dollars, null without a price or
        usage); ``retries`` (times the row was sent again); ``reply_id``. A DataFrame
        or Series of prompts gives its index to the result, each label repeated once
        per model; a list gives a range index. ``df.attrs["nbchat"]`` holds the run's
        figures: ``concurrency`` and ``sessions`` (what ran), ``replies_per_session``
        (the gateway's), ``elapsed_s`` and ``stopped`` (whether the stop cut anything
        short).

    Interrupting the cell (``KeyboardInterrupt``) or setting ``stop`` stops the replies
    in flight at the gateway, which closes their provider requests, sends nothing
    more, and returns the rows as they are. Bad arguments raise ``ValueError`` before
    anything is sent; a model the gateway does not know gives rows with ``finish ==
    "error"`` and its message. Raises :class:`~nbchat.GatewayUnavailable` if no
    gateway session can be opened.
    """
    pd = _pandas()
    prompt_list = _prompts(prompts, column, pd)
    names = _models(models)
    if system is not None:
        if not isinstance(system, str):
            raise ValueError(f"system must be text (str), not {type(system).__name__}")
        _check_sendable("system", system)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ValueError(f"concurrency must be a whole number, not {concurrency!r}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(
            f"concurrency must be 1 to {MAX_CONCURRENCY} replies at once, not {concurrency}"
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be a whole number of 0 or more, not {max_retries!r}")
    if (
        isinstance(max_retry_wait_s, bool)
        or not isinstance(max_retry_wait_s, (int, float))
        or not math.isfinite(max_retry_wait_s)
        or max_retry_wait_s < 0
    ):
        raise ValueError(
            f"max_retry_wait_s must be a number of seconds, 0 or more, not {max_retry_wait_s!r}"
        )
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise ValueError("stop must be a threading.Event (anything with is_set())")
    table = prices_with(prices)
    checked = _checked_params(params)
    if url is None:
        from .gateway.embedded import shared_gateway  # started only when needed

        gateway = shared_gateway()
        urls: tuple[str, ...] = (gateway.url,)
        token = gateway.token
    else:
        urls = gateway_urls(url)
    loop = client_loop()
    if _running_loop() is loop:  # it would wait for itself forever
        raise RuntimeError(
            "nbchat.batch() waits for its replies, so it cannot be called on nbchat's own "
            "client loop (e.g. from a tool); call it from a cell or a thread"
        )

    rows = [_Row(prompt=p, model=m) for p in prompt_list.texts for m in names]
    run = _Run(
        rows,
        urls,
        token,
        system,
        checked,
        min(concurrency, len(rows)),
        max_retries,
        float(max_retry_wait_s),
    )
    bar = _Bar(run, len(rows)) if progress else None
    began = time.monotonic()
    future = asyncio.run_coroutine_threadsafe(run.main(), loop)
    try:
        _wait(run, future, loop, stop, bar)
    finally:
        if bar is not None:
            bar.close()
    run.warn_once(stacklevel=3)  # warn_once, batch, then its caller
    elapsed = time.monotonic() - began
    frame = _frame(pd, rows, prompt_list, len(names), table)
    frame.attrs["nbchat"] = {
        "concurrency": run.concurrency,
        "sessions": run.sessions,
        "replies_per_session": run.replies_per_session,
        "elapsed_s": elapsed,
        # Whether the stop cut anything short (a stop after every row ended did not).
        "stopped": any(row.finish in (None, "stopped") or row.cut for row in rows),
    }
    return frame


def _wait(
    run: _Run,
    future: concurrent.futures.Future[None],
    loop: asyncio.AbstractEventLoop,
    stop: StopSignal | None,
    bar: _Bar | None,
) -> None:
    """Wait for the run, ticking the bar; stop it on an interrupt or ``stop``.
    Re-raises what the run raised (no gateway reachable)."""
    try:
        while True:
            try:
                future.result(timeout=POLL_S)
                return
            except concurrent.futures.TimeoutError:
                pass
            run.warn_once(stacklevel=4)  # warn_once, _wait, batch, then its caller
            if bar is not None:
                bar.tick()
            if stop is not None and stop.is_set():
                break
    except KeyboardInterrupt:
        pass
    except BaseException:  # e.g. the warning made an error (-W error): stop, then raise
        asyncio.run_coroutine_threadsafe(run.halt(), loop)
        raise
    # Stopping: what is in flight is stopped at the gateway, nothing more is sent.
    asyncio.run_coroutine_threadsafe(run.halt(), loop)
    try:
        with contextlib.suppress(concurrent.futures.TimeoutError, GatewayUnavailable):
            future.result(timeout=STOP_GRACE_S + CLOSE_S)
    except KeyboardInterrupt:
        pass  # interrupted again: return the rows as they are now
    run.abandon()
    if bar is not None:
        bar.tick()


@dataclass(eq=False)
class _Row:
    """One (prompt, model): its latest attempt, and what the reply was once it ended
    (read from the reply's view: text, usage, retry_after)."""

    prompt: str
    model: str | None
    text: str = ""
    finish: str | None = None  # None: not ended (yet)
    error: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    first_token_s: float | None = None
    duration_s: float | None = None
    usage: dict[str, Any] | None = None
    retries: int = 0
    cut: bool = False  # its error would have been retried, but the batch was stopped
    chunks: int = 0  # pieces of answer streamed by the latest attempt
    reply_id: str | None = None
    sent_at: float = 0.0
    ended: asyncio.Event | None = None
    link: _Link | None = None


class _Link:
    """One gateway session: a :class:`ClientConnection` and the rows in flight on it."""

    def __init__(self, run: _Run, urls: tuple[str, ...], token: str | None) -> None:
        self.run = run
        self.rows: dict[str, _Row] = {}  # in flight, by reply id
        self.capacity = REPLIES_PER_SESSION  # replies the session runs at once
        self._freed = asyncio.Event()  # set (and replaced) when a row on it ends
        self.connection = ClientConnection(
            urls, token=token, on_frame=self.on_frame, on_state=self.on_state
        )

    def on_state(self, state: LinkState, detail: str) -> None:
        if state == "offline":  # given up reconnecting: these replies cannot finish
            for row in list(self.rows.values()):
                self.run.end(row, "error", error=detail, code="unavailable")

    def on_frame(self, frame: ServerFrame) -> None:
        if isinstance(frame, Welcome) and frame.replies_per_session is not None:
            self.capacity = max(1, frame.replies_per_session)
        elif isinstance(frame, Delta):
            row = self.rows.get(frame.reply)
            if row is not None:
                if row.first_token_s is None:
                    row.first_token_s = self.run.loop_time() - row.sent_at
                if frame.kind is None:
                    row.chunks += 1
                    self.run.tokens += 1
        for end in self.connection.session.ended(frame):
            row = self.rows.get(end.reply)
            if row is not None:
                self.run.end(row, end.finish, error=end.error, code=end.error_code)

    def row_ended(self) -> None:
        """Wake whoever waits for room on this session."""
        self._freed.set()
        self._freed = asyncio.Event()

    async def a_row_ends(self) -> None:
        """Wait until a row that ran on this session ends, or none runs there any more
        (or the batch stops)."""
        await self._freed.wait()


class _Run:
    """The batch on the client loop: links, workers, and the rows they fill in."""

    def __init__(
        self,
        rows: list[_Row],
        urls: tuple[str, ...],
        token: str | None,
        system: str | None,
        params: dict[str, Any],
        concurrency: int,
        max_retries: int,
        max_retry_wait_s: float,
    ) -> None:
        self.rows = rows
        self.urls, self.token = urls, token
        self.system = system
        self.params = params
        self.asked = concurrency  # what the caller asked for (at most one per row)
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.links: list[_Link] = []
        self.next = 0  # index of the next row to send
        self.halted = False
        self._halt: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # What ran, once the links are up (read by the waiting thread).
        self.concurrency = self.sessions = 0
        self.replies_per_session = REPLIES_PER_SESSION
        self.refused: str | None = None  # why sessions were refused, when some were
        self._warned = False
        # Read by the waiting thread for the progress bar.
        self.done = self.failed = self.stopped = self.retries = 0
        # Answer tokens generated: the provider's count for an ended reply that has
        # one, else the pieces streamed (about a token each).
        self.tokens = 0

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._halt = asyncio.Event()
        if self.halted:
            self._halt.set()
        try:
            up, failures = await self._open(math.ceil(self.asked / REPLIES_PER_SESSION))
            if not up:
                raise GatewayUnavailable("; ".join(sorted(set(failures))))
            self._default_model(up[0].connection.welcome)
            self.replies_per_session = up[0].capacity
            if not failures and sum(link.capacity for link in up) < self.asked:
                # The gateway runs fewer replies per session than assumed: more sessions.
                wanted = math.ceil(self.asked / self.replies_per_session) - len(up)
                more, failures = await self._open(wanted)
                up += more
            counts = _spread(self.asked, [link.capacity for link in up])
            self.sessions = sum(1 for n in counts if n)
            self.concurrency = sum(counts)
            if failures:
                self.refused = "; ".join(sorted(set(failures)))
            # Each worker sends one row at a time over its link, and a link has no
            # more workers than its session runs replies at once: none goes over.
            workers = [
                self._work(link) for link, n in zip(up, counts, strict=True) for _ in range(n)
            ]
            await asyncio.gather(*workers)
        finally:
            await asyncio.gather(*(self._close(link) for link in self.links))

    async def _open(self, count: int) -> tuple[list[_Link], list[str]]:
        """Open ``count`` more sessions at once: those up, and why the others are not."""
        links = [_Link(self, self.urls, self.token) for _ in range(count)]
        self.links += links
        opened = await asyncio.gather(
            *(link.connection.open() for link in links), return_exceptions=True
        )
        failures = [str(o) for o in opened if isinstance(o, BaseException)]
        up = [link for link, o in zip(links, opened, strict=True) if isinstance(o, Welcome)]
        return up, failures

    @staticmethod
    async def _close(link: _Link) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.connection.close(), CLOSE_S)

    def warn_once(self, stacklevel: int) -> None:
        """From the calling thread: say once that fewer replies run at once than asked,
        and why (the gateway refused sessions). ``stacklevel`` points at the caller of
        :func:`batch`, for :func:`warnings.warn`."""
        if self.refused is None or self._warned:
            return
        self._warned = True
        warnings.warn(
            f"nbchat.batch: {self.concurrency} replies at once over {self.sessions} "
            f"gateway sessions instead of {self.asked}: the gateway refused the others "
            f"({self.refused})",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def _default_model(self, welcome: Welcome | None) -> None:
        if all(row.model is not None for row in self.rows):
            return
        offered = list(welcome.models) if welcome is not None else []
        if not offered:
            raise GatewayUnavailable("the gateway offers no models")
        default = welcome.default_model if welcome is not None else None
        model = default if default in offered else offered[0]
        for row in self.rows:
            row.model = row.model or model

    async def _work(self, link: _Link) -> None:
        while not self.halted and self.next < len(self.rows):
            row = self.rows[self.next]
            self.next += 1
            await self._run_row(link, row)

    async def _run_row(self, link: _Link, row: _Row) -> None:
        while True:
            await self._attempt(link, row)
            full = row.error_code == "busy" and bool(link.rows)
            if full:
                # The session is full (the gateway runs fewer replies at once than it
                # said, or than assumed): no failure. The row waits for room and goes
                # again, not counted as a retry.
                if not self.halted:
                    await link.a_row_ends()
            else:
                wait = self._retry_wait(row)
                if wait is None:
                    break
                if not self.halted:
                    assert self._halt is not None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._halt.wait(), wait)
            if self.halted:
                row.cut = True
                row.error = f"{row.error} (not tried again: the batch was stopped)"
                break
            if not full:  # counted when it is sent again, not before the wait
                row.retries += 1
                self.retries += 1
        if row.finish in ("stop", "length"):
            self.done += 1
        elif row.finish == "stopped":
            self.stopped += 1
        else:
            self.failed += 1

    def _retry_wait(self, row: _Row) -> float | None:
        """How long to wait before sending ``row`` again, if it should be: only when
        the provider said when (a 429 with Retry-After, if not over
        ``max_retry_wait_s``: else the row's error says so), or the gateway was busy
        with nothing else in flight on the session."""
        if row.finish != "error":
            return None
        if row.error_code == "rate_limited" and row.retry_after is not None:
            if row.retry_after > self.max_retry_wait_s:
                row.error = (
                    f"{row.error} (not tried again: the provider asked to wait "
                    f"{row.retry_after:g} s, over max_retry_wait_s={self.max_retry_wait_s:g})"
                )
                return None
            return row.retry_after if row.retries < self.max_retries else None
        if row.error_code == "busy":
            return BUSY_RETRY_S if row.retries < self.max_retries else None
        return None

    async def _attempt(self, link: _Link, row: _Row) -> None:
        reply = f"b-{uuid.uuid4().hex[:12]}"
        row.text, row.finish, row.usage, row.chunks = "", None, None, 0
        row.error = row.error_code = None
        row.retry_after = row.first_token_s = row.duration_s = None
        row.reply_id, row.link = reply, link
        row.ended = asyncio.Event()
        link.rows[reply] = row
        link.connection.session.open(reply)
        messages: tuple[ChatMessage, ...] = (ChatMessage("user", row.prompt),)
        if self.system is not None:
            messages = (ChatMessage("system", self.system), *messages)
        assert row.model is not None
        start = Start(reply=reply, messages=messages, model=row.model, params=self.params)
        row.sent_at = self.loop_time()
        try:
            await link.connection.send(start)
        except SendRefused as exc:
            self.end(row, "error", error=str(exc), code=refusal_code(exc))
        await row.ended.wait()

    def end(self, row: _Row, finish: str, *, error: str | None, code: str | None) -> None:
        """The latest attempt of ``row`` has ended (the first end wins): what its view
        assembled goes into the row, and the view is forgotten."""
        if row.ended is None or row.ended.is_set():
            return
        link, reply = row.link, row.reply_id
        assert link is not None
        assert reply is not None
        _take_view(row)
        row.finish, row.error, row.error_code = finish, error, code
        row.duration_s = self.loop_time() - row.sent_at
        link.rows.pop(reply, None)
        link.connection.session.forget(reply)
        reported = token_count((row.usage or {}).get("completion_tokens"))
        if reported is not None:
            self.tokens += reported - row.chunks
        row.ended.set()
        # Room on the session: a reply that ran ended, or nothing runs there any more. (A
        # refusal as busy frees none: waking on it would resend the other refused ones.)
        if code != "busy" or not link.rows:
            link.row_ended()

    async def halt(self) -> None:
        """Stop: no row is sent any more, and those in flight are stopped at the
        gateway (which closes their provider requests); rows the gateway does not
        confirm within :data:`STOP_GRACE_S` end as stopped, saying so."""
        self.halted = True
        if self._halt is None:
            return  # not started yet: main() sees ``halted``
        self._halt.set()
        for link in self.links:
            link.row_ended()  # rows waiting for room on a full session: stop waiting
        flying = [row for link in self.links for row in list(link.rows.values())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_all(flying), STOP_GRACE_S)
        for row in flying:
            self.end(row, "stopped", error=STOP_UNCONFIRMED, code="stop_unconfirmed")

    async def _stop_all(self, rows: list[_Row]) -> None:
        """Send each row's stop (after its start, on the same link: in order) and wait
        for the gateway to end them all."""
        for row in rows:
            if row.link is not None and row.reply_id is not None:
                with contextlib.suppress(*SendRefused):
                    await row.link.connection.send(Stop(reply=row.reply_id))
        await asyncio.gather(*(row.ended.wait() for row in rows if row.ended is not None))

    def abandon(self) -> None:
        """After a stop, for rows whose end the loop did not record in time: called
        from the waiting thread once it stops waiting; the rows are read as they are."""
        for row in self.rows:
            if row.reply_id is not None and row.finish is None:
                _take_view(row)
                row.finish, row.error, row.error_code = (
                    "stopped",
                    STOP_UNCONFIRMED,
                    ("stop_unconfirmed"),
                )


def _take_view(row: _Row) -> None:
    """Copy what the reply's view assembled (its text, usage, retry_after) into ``row``."""
    if row.link is None or row.reply_id is None:
        return
    view = row.link.connection.session.replies.get(row.reply_id)
    if view is not None:
        row.text, row.usage, row.retry_after = view.text, view.usage, view.retry_after


def _spread(total: int, capacities: list[int]) -> list[int]:
    """``total`` workers over links of these capacities, as evenly as they allow."""
    counts = [0] * len(capacities)
    for level in range(max(capacities, default=0)):
        for i, capacity in enumerate(capacities):
            if total and level < capacity:
                counts[i] += 1
                total -= 1
    return counts


class _Bar:
    """The progress bar: replies ended of all, with done/failed, retries and tokens/s."""

    def __init__(self, run: _Run, total: int) -> None:
        from tqdm.auto import tqdm

        self.run = run
        self.began = time.monotonic()
        self.shown = 0
        self.described = False
        self.bar = tqdm(total=total, desc="batch: connecting", unit="reply", dynamic_ncols=True)

    def tick(self) -> None:
        run = self.run
        if not self.described and run.concurrency:
            self.described = True
            sessions = run.sessions
            self.bar.set_description(
                f"batch: {run.concurrency} at once over {sessions} "
                f"session{'s' if sessions > 1 else ''} of {run.replies_per_session}",
                refresh=False,
            )
        ended = run.done + run.failed + run.stopped
        elapsed = max(time.monotonic() - self.began, 1e-9)
        parts = [f"done={run.done}", f"failed={run.failed}"]
        if run.stopped:
            parts.append(f"stopped={run.stopped}")
        if run.retries:
            parts.append(f"retries={run.retries}")
        parts.append(f"{run.tokens / elapsed:,.0f} tokens/s")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        if ended > self.shown:
            self.bar.update(ended - self.shown)
            self.shown = ended
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.tick()
        self.bar.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "nbchat.batch() returns a pandas DataFrame: pip install 'nbchat[pandas]'"
        ) from None
    return pandas


@dataclass
class _Prompts:
    """The prompts as text; a DataFrame's other columns (``carried``) and the index of
    a DataFrame or Series, both by prompt."""

    texts: list[str]
    carried: Any = None
    index: Any = None


def _prompts(prompts: Any, column: Any, pd: Any) -> _Prompts:
    out = _Prompts([])
    if isinstance(prompts, pd.DataFrame):
        if column is None:
            raise ValueError(
                "prompts is a DataFrame: name the column of prompts, e.g. "
                "nbchat.batch(df, column='question')"
            )
        if not prompts.columns.is_unique:
            repeated = sorted({str(c) for c in prompts.columns[prompts.columns.duplicated()]})
            raise ValueError(
                f"prompts has repeated column labels ({', '.join(repeated)}); make them "
                "unique, e.g. df.rename(columns={...})"
            )
        if column not in prompts.columns:
            known = ", ".join(map(repr, prompts.columns)) or "none"
            raise ValueError(f"prompts has no column {column!r}; its columns: {known}")
        out.carried = prompts.drop(columns=[column])
        clash = sorted(str(c) for c in out.carried.columns if c in BATCH_COLUMNS)
        if clash:
            raise ValueError(
                f"prompts has columns named like the result's ({', '.join(clash)}); "
                "rename them, e.g. df.rename(columns={...})"
            )
        out.index = prompts.index
        items = list(prompts[column])
        where = f"prompts[{column!r}]"
    elif column is not None:
        raise ValueError("column= names a column of a DataFrame of prompts; pass a DataFrame")
    elif isinstance(prompts, str):
        raise ValueError("prompts must be a list of prompts, not one string; e.g. [prompt]")
    elif isinstance(prompts, pd.Series):
        items, where, out.index = list(prompts), "prompts", prompts.index
    elif isinstance(prompts, (list, tuple)):
        items, where = list(prompts), "prompts"
    else:
        raise ValueError(
            f"prompts must be a list of strings, a pandas Series or a DataFrame (with "
            f"column=), not {type(prompts).__name__}"
        )
    if not items:
        raise ValueError("no prompts: pass at least one")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(
                f"{where} item {i} is {item!r} ({type(item).__name__}), not text; every "
                "prompt must be a str"
            )
        if not item.strip():
            raise ValueError(f"{where} item {i} is empty; every prompt needs some text")
        _check_sendable(f"{where} item {i}", item)
    out.texts = items
    return out


def _models(models: str | Sequence[str] | None) -> list[str | None]:
    if models is None:
        return [None]  # the gateway's default, once connected
    names = [models] if isinstance(models, str) else models
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"models must be a model name or a non-empty list of them, not {models!r}")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise ValueError(
                f"each model must be a model name (1 to {MAX_NAME_CHARS} characters of "
                f"text), not {name!r}"
            )
    return list(names)


def _frame(
    pd: Any,
    rows: list[_Row],
    prompts: _Prompts,
    per_prompt: int,
    prices: Mapping[str, tuple[float, float]],
) -> pandas.DataFrame:
    finishes = [row.finish if row.finish is not None else "not_run" for row in rows]
    ran = [finish != "not_run" for finish in finishes]
    usages = [row.usage or {} for row in rows]
    columns = {
        "prompt": [row.prompt for row in rows],
        "model": [row.model for row in rows],
        "text": [row.text for row in rows],
        "finish": finishes,
        "error": [row.error for row in rows],
        "error_code": [row.error_code for row in rows],
        "first_token_s": pd.array([row.first_token_s for row in rows], dtype="float64"),
        "duration_s": pd.array(
            [row.duration_s if r else None for row, r in zip(rows, ran, strict=True)],
            dtype="float64",
        ),
        # Null where not reported (Int64, not NaN in a float column).
        "prompt_tokens": pd.array(
            [token_count(u.get("prompt_tokens")) for u in usages], dtype="Int64"
        ),
        "completion_tokens": pd.array(
            [token_count(u.get("completion_tokens")) for u in usages], dtype="Int64"
        ),
        "cost": pd.array([cost(row.model, row.usage, prices) for row in rows], dtype="float64"),
        "retries": [row.retries for row in rows],
        "reply_id": [row.reply_id if r else None for row, r in zip(rows, ran, strict=True)],
    }
    result = pd.DataFrame(columns)
    # Row i answers prompt i // per_prompt: what came with that prompt is repeated by
    # position, so each carried column keeps its dtype, whatever its labels.
    positions = [i // per_prompt for i in range(len(rows))]
    carried = prompts.carried
    if carried is not None and len(carried.columns):
        result = pd.concat([carried.iloc[positions].reset_index(drop=True), result], axis=1)
    if prompts.index is not None:
        result.index = prompts.index[positions]
    return cast("pandas.DataFrame", result)
