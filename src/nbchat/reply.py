"""The handle ``chat.send()`` returns: a reply that fills in as it streams.

Written to by the client's loop thread, read from any thread. Blocking waits
(:meth:`Reply.wait`, ``for chunk in reply``) use a condition variable; awaiting
(``await reply``, ``async for chunk in reply``) bridges to the caller's own event loop
through futures, so neither blocks the other loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future
from typing import Any, Literal

from .protocol import FinishReason

__all__ = ["Reply", "ReplyStatus"]

ReplyStatus = Literal["pending", "streaming", "paused", "done", "stopped", "error"]
_FINAL_STATUSES = ("done", "stopped", "error")
_STATUS_BY_FINISH: dict[str, ReplyStatus] = {
    "stop": "done",
    "length": "done",
    "stopped": "stopped",
    "error": "error",
}


class Reply:
    """One assistant reply, returned at once by ``chat.send()``; it fills in as it streams.

    Get it whole with ``reply.wait()`` (or ``await reply``), or chunk by chunk with
    ``for chunk in reply`` / ``async for chunk in reply``.

    Attributes:
        id: the reply's id (also the DataFrame's ``reply_id``).
        prompt: the message it answers.
        model: the model generating it.
        params: the request params sent with it.
        sent_at: when ``send()`` was called (Unix seconds).
        text: the text so far; the whole reply once it has ended.
        chunks: the text as the pieces that arrived.
        reasoning: what the model streamed apart from its answer (DeepSeek's
            ``reasoning_content``, Anthropic's thinking), or ``""``.
        status: ``pending`` (queued, or not started yet), ``streaming``, ``paused``,
            then ``done``, ``stopped`` or ``error``.
        finished: whether it has ended.
        finish: how it ended: ``stop``, ``length`` (cut at ``max_tokens``),
            ``stopped`` (your Stop) or ``error``; ``None`` until then.
        error: what went wrong, in plain words, when ``finish == "error"``.
        error_code: the same as a code: ``unauthorized``, ``unknown_model``,
            ``rate_limited``, ``upstream_error``, ``bad_request``, ``too_large``,
            ``busy``, ``unavailable``, ``session_lost``, ``gateway_shutdown``, ...
        usage: token counts the provider reported (``prompt_tokens``,
            ``completion_tokens``), or ``None``.

    Methods:
        wait(timeout=None): block until it ends and return it (``TimeoutError`` if not
            in time).
        stop(), pause(), resume(): as the pane's buttons; Stop keeps the partial text.
    """

    def __init__(self, reply_id: str, prompt: str, *, control: Callable[[str, Reply], None]):
        self.id = reply_id
        self.prompt = prompt
        self.model: str | None = None
        self.params: dict[str, Any] = {}  # request params sent with this reply
        self.sent_at = time.time()  # when send() was called (Unix seconds)
        self.finish: FinishReason | None = None
        self.error: str | None = None
        self.error_code: str | None = None
        self.usage: dict[str, Any] | None = None
        self._control = control
        self._status: ReplyStatus = "pending"
        self._chunks: list[str] = []
        self._reasoning: list[str] = []
        self._changed = threading.Condition()
        self._done: Future[Reply] = Future()
        self._waiters: list[Future[None]] = []

    def __repr__(self) -> str:
        preview = self.text[:40] + ("..." if len(self.text) > 40 else "")
        return f"<Reply {self.id} {self._status} {preview!r}>"

    # --- reading ------------------------------------------------------------------

    @property
    def status(self) -> ReplyStatus:
        return self._status

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self._chunks)

    @property
    def reasoning(self) -> str:
        """Reasoning the model streamed apart from its answer ("" if none)."""
        with self._changed:
            return "".join(self._reasoning)

    @property
    def chunks(self) -> list[str]:
        """The chunks received so far, as they arrived."""
        with self._changed:
            return list(self._chunks)

    @property
    def finished(self) -> bool:
        return self._status in _FINAL_STATUSES

    def wait(self, timeout: float | None = None) -> Reply:
        """Block until the reply has ended; return it. Raises ``TimeoutError`` if it has
        not ended after ``timeout`` seconds (the reply goes on; call ``stop()`` to end it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"reply {self.id} still {self._status} after {timeout} s")
                self._changed.wait(remaining)
        return self

    def __await__(self) -> Generator[Any, None, Reply]:
        return asyncio.wrap_future(self._done).__await__()

    def __iter__(self) -> Iterator[str]:
        """Yield chunks as they arrive (blocking between them) until the reply ends."""
        index = 0
        while True:
            with self._changed:
                while index >= len(self._chunks) and not self.finished:
                    self._changed.wait()
                new, finished = self._chunks[index:], self.finished
            index += len(new)
            yield from new
            if finished:  # nothing is appended after the end
                return

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield chunks as they arrive without blocking the caller's event loop."""
        index = 0
        while True:
            with self._changed:
                new, finished = self._chunks[index:], self.finished
                waiter: Future[None] | None = None
                if not new and not finished:
                    waiter = Future()
                    self._waiters.append(waiter)
            index += len(new)
            for chunk in new:
                yield chunk
            if waiter is not None:
                await asyncio.wrap_future(waiter)
            elif finished and not new:
                return

    # --- control ------------------------------------------------------------------

    def stop(self) -> Reply:
        """Abort the reply: generation stops upstream, the partial text stays
        (``finish == "stopped"``). Does nothing if it has already ended."""
        self._control("stop", self)
        return self

    def pause(self) -> Reply:
        """Hold delivery; generation goes on at the gateway and nothing is lost."""
        self._control("pause", self)
        return self

    def resume(self) -> Reply:
        """Deliver what was held while paused, then go on live."""
        self._control("resume", self)
        return self

    # --- written by the client loop ----------------------------------------------

    def _notify(self) -> None:
        # Called with self._changed held.
        self._changed.notify_all()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _append(self, text: str) -> None:
        with self._changed:
            self._chunks.append(text)
            if self._status == "pending":
                self._status = "streaming"
            self._notify()

    def _append_reasoning(self, text: str) -> None:
        with self._changed:
            self._reasoning.append(text)
            if self._status == "pending":
                self._status = "streaming"
            self._notify()

    def _set_status(self, status: ReplyStatus) -> None:
        with self._changed:
            if not self.finished:
                self._status = status
                self._notify()

    def _end(
        self,
        finish: FinishReason,
        *,
        error: str | None = None,
        error_code: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        with self._changed:
            if self.finished:
                return
            self.finish = finish
            self.error, self.error_code = error, error_code
            self.usage = usage
            self._status = _STATUS_BY_FINISH[finish]
            self._notify()
        self._done.set_result(self)
