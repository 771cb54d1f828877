"""Python callables of this process as models (``Chat(model=fn)``, ``register_model``).

Where each kind runs, so that the gateway's event loop, which serves every session,
never runs user code that blocks:

- a plain function or a sync generator: on a thread of its own per reply. A stop
  closes the generator at its next ``yield`` (its ``finally`` runs); a plain function
  cannot be interrupted, so its reply ends at once and its result is dropped.
- an async function or an async generator: on the gateway's loop, as a task would. A
  stop cancels it at once (``CancelledError`` at its ``await``, ``GeneratorExit`` at a
  ``yield``; its ``finally`` runs).

Chunks must be ``str``; anything else, and any exception the callable raises, ends the
reply with an error naming the callable (the traceback goes to the ``nbchat`` logger).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ...local_models import LocalModels, ModelFunction
from ...protocol import ChatMessage
from .base import Finish, ProviderError, Request, TextChunk

__all__ = ["CallableProvider", "call_params"]

log = logging.getLogger("nbchat")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMEABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def call_params(fn: ModelFunction, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params to pass ``fn`` as keyword arguments: all of them if it takes
    ``**kwargs``, else those it names (after its first argument, the messages)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(params)
    named: set[str] = set()
    messages_taken = False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return dict(params)
        if not messages_taken and (
            parameter.kind in _POSITIONAL or parameter.kind is inspect.Parameter.VAR_POSITIONAL
        ):
            messages_taken = True
            continue
        if parameter.kind in _NAMEABLE:
            named.add(parameter.name)
    return {key: value for key, value in params.items() if key in named}


def _runs_on_loop(fn: ModelFunction) -> bool:
    """Whether calling ``fn`` only makes a coroutine or an async generator."""
    call = getattr(fn, "__call__", None)  # noqa: B004 (a callable object's async __call__)
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call))


def _not_text(name: str, what: str, value: object) -> ProviderError:
    return ProviderError(
        "upstream_error",
        f"{name} {what} {type(value).__name__}, not str; a model function returns or "
        "yields text (str)",
    )


class CallableProvider:
    """Serves the callables of a :class:`~nbchat.local_models.LocalModels` registry,
    looked up by name for each reply (so one registered later is served too)."""

    def __init__(self, registry: LocalModels) -> None:
        self.registry = registry

    def models(self) -> list[str]:
        return self.registry.names()

    def serves(self, model: str) -> bool:
        return self.registry.get(model) is not None

    @staticmethod
    def takes_images(model: str) -> bool:
        """A callable gets a message's pictures (``images``) and does what it likes."""
        return True

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        name = request.model
        fn = self.registry.get(name)
        if fn is None:
            raise ProviderError(
                "unknown_model",
                f"no function is registered as model {name!r} in this kernel: pass it "
                f"again with Chat(model=fn), or nbchat.register_model({name!r}, fn)",
            )
        messages = [_as_dict(m) for m in request.messages]
        kwargs = call_params(fn, request.params)
        chunks: AsyncIterator[str] | None = None
        while True:
            # Only fetching runs user code: a GeneratorExit at our own yield below is
            # the gateway closing this stream, not the callable's, and must go through.
            try:
                if chunks is None:
                    if _runs_on_loop(fn):
                        chunks = self._on_loop(name, fn(messages, **kwargs))
                    else:
                        chunks = self._on_thread(name, fn, messages, kwargs)
                text = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except ProviderError:
                raise
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # a stop, or the gateway shutting down
                log.error("model function %s raised CancelledError", name)
                raise ProviderError("upstream_error", f"{name} raised CancelledError") from None
            except BaseException as exc:  # GeneratorExit, SystemExit...: user code's
                log.error("model function %s raised", name, exc_info=exc)
                raise ProviderError(
                    "upstream_error", f"{name} raised {type(exc).__name__}: {exc}"
                ) from None
            yield TextChunk(text)
        yield Finish("stop")

    async def _on_loop(self, name: str, result: Any) -> AsyncIterator[str]:
        """A coroutine's text, or an async iterator's chunks, on this loop. Each step
        runs as a task of its own, so a stop ends the reply at once even if the
        callable ignores the cancellation or cleans up slowly (it is cancelled and
        left to finish on its own)."""
        if inspect.isawaitable(result):
            text = await _step(result)
            if not isinstance(text, str):
                raise _not_text(name, "returned", text)
            yield text
            return
        if not isinstance(result, AsyncIterator):
            raise _not_text(name, "returned", result)
        ended = False
        try:
            while True:
                try:
                    chunk = await _step(result.__anext__())
                except StopAsyncIteration:
                    ended = True
                    return
                if not isinstance(chunk, str):
                    raise _not_text(name, "yielded", chunk)
                yield chunk
        finally:
            aclose = getattr(result, "aclose", None)
            if not ended and aclose is not None:
                # GeneratorExit at its yield (after a bad chunk, or a stop between
                # chunks); never awaited, so a slow cleanup holds nothing up.
                _leave(asyncio.ensure_future(aclose()))

    async def _on_thread(
        self, name: str, fn: ModelFunction, messages: list[dict[str, str]], kwargs: dict[str, Any]
    ) -> AsyncIterator[str]:
        """A sync callable's text or chunks, from a thread of its own, handed over in
        batches (one wake-up of the loop however many chunks wait) and bounded (the
        thread waits while :data:`HANDOFF_CHARS` are unread), so a callable yielding
        millions of tiny chunks slows no other chat."""
        handoff = _Handoff(asyncio.get_running_loop())

        def work() -> None:
            try:
                result = fn(messages, **kwargs)
                if isinstance(result, str):
                    handoff.put("chunk", result)
                elif inspect.isawaitable(result) or isinstance(result, AsyncIterator):
                    handoff.put("async", result)  # a sync callable that returns async work
                elif isinstance(result, Iterator):
                    try:
                        for chunk in result:
                            if not isinstance(chunk, str):
                                handoff.put("error", _not_text(name, "yielded", chunk))
                                break
                            if not handoff.put("chunk", chunk):
                                break  # stopped: closed below, at this yield
                    finally:
                        close = getattr(result, "close", None)
                        if close is not None:
                            close()  # GeneratorExit at its yield: its finally runs
                else:
                    handoff.put("error", _not_text(name, "returned", result))
            except BaseException as exc:
                handoff.put("raised", exc)
            finally:
                handoff.put("end")

        thread = threading.Thread(target=work, name=f"nbchat-model-{name}", daemon=True)
        thread.start()
        try:
            while True:
                text: list[str] = []
                for kind, value in await handoff.take():
                    if kind == "chunk":
                        text.append(value)
                        continue
                    if text:
                        yield "".join(text)
                        text = []
                    if kind == "async":
                        async for chunk in self._on_loop(name, value):
                            yield chunk
                    elif kind in ("error", "raised"):
                        raise value
                    else:
                        return
                if text:
                    yield "".join(text)
        finally:
            handoff.close()


# How much text a callable's thread may have handed over unread before it waits.
HANDOFF_CHARS = 1 << 20


class _Handoff:
    """Items from a worker thread to the event loop: batched and bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = threading.Condition()
        self._items: list[tuple[str, Any]] = []
        self._chars = 0
        self._ready = asyncio.Event()
        self._wake_pending = False
        self.closed = False

    def put(self, kind: str, value: Any = None) -> bool:
        """From the thread. False once the reader has gone (a stop): stop producing."""
        with self._cond:
            while kind == "chunk" and self._chars >= HANDOFF_CHARS and not self.closed:
                self._cond.wait()
            if self.closed:
                return False
            self._items.append((kind, value))
            if kind == "chunk":
                self._chars += len(value)
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the gateway's loop is closed
            self.close()
            return False
        return True

    async def take(self) -> list[tuple[str, Any]]:
        """On the loop: everything handed over since the last take (waits for some)."""
        await self._ready.wait()
        with self._cond:
            self._ready.clear()
            self._wake_pending = False
            items, self._items, self._chars = self._items, [], 0
            self._cond.notify_all()
        return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


async def _step(awaitable: Any) -> Any:
    """Await one step of user code as a task of its own: if we are cancelled, cancel
    it and return at once rather than wait for code that may ignore the cancel."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        _leave(task)
        raise
    return task.result()


def _leave(task: asyncio.Future[Any]) -> None:
    """Let ``task`` finish on its own, its outcome retrieved so nothing is logged as
    never retrieved."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _being_cancelled() -> bool:
    """Whether the running task has been asked to cancel (a stop or a shutdown), as
    opposed to user code raising ``CancelledError`` itself. Python 3.10 cannot tell:
    there, it counts as a cancel."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0


def _as_dict(message: ChatMessage) -> dict[str, Any]:
    """A message as a callable receives it: role and content, and a user message's
    pictures as ``images`` (``data:image/png;base64,...`` URIs) when it has any."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["images"] = list(message.images)
    return out
