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

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        name = request.model
        fn = self.registry.get(name)
        if fn is None:
            raise ProviderError("unknown_model", f"no function is registered as model {name!r}")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        kwargs = call_params(fn, request.params)
        try:
            if _runs_on_loop(fn):
                chunks = self._on_loop(name, fn(messages, **kwargs))
            else:
                chunks = self._on_thread(name, fn, messages, kwargs)
            async for text in chunks:
                yield TextChunk(text)
        except ProviderError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            log.error("model function %s raised", name, exc_info=exc)
            raise ProviderError(
                "upstream_error", f"{name} raised {type(exc).__name__}: {exc}"
            ) from None
        yield Finish("stop")

    async def _on_loop(self, name: str, result: Any) -> AsyncIterator[str]:
        """A coroutine's text, or an async iterator's chunks, on this loop."""
        if inspect.isawaitable(result):
            text = await result
            if not isinstance(text, str):
                raise _not_text(name, "returned", text)
            yield text
            return
        if not isinstance(result, AsyncIterator):
            raise _not_text(name, "returned", result)
        try:
            async for chunk in result:
                if not isinstance(chunk, str):
                    raise _not_text(name, "yielded", chunk)
                yield chunk
        finally:
            # A stop already ran its finally (CancelledError at its await); after a
            # bad chunk this throws GeneratorExit at its yield.
            aclose = getattr(result, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _on_thread(
        self, name: str, fn: ModelFunction, messages: list[dict[str, str]], kwargs: dict[str, Any]
    ) -> AsyncIterator[str]:
        """A sync callable's text or chunks, from a thread of its own."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stopped = threading.Event()

        def put(kind: str, value: Any = None) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, (kind, value))
            except RuntimeError:  # the gateway's loop is closed
                stopped.set()

        def work() -> None:
            try:
                result = fn(messages, **kwargs)
                if isinstance(result, str):
                    put("chunk", result)
                elif inspect.isawaitable(result) or isinstance(result, AsyncIterator):
                    put("async", result)  # a sync callable that returns async work
                elif isinstance(result, Iterator):
                    try:
                        for chunk in result:
                            if stopped.is_set():
                                break  # closed below, at this yield
                            if not isinstance(chunk, str):
                                put("error", _not_text(name, "yielded", chunk))
                                break
                            put("chunk", chunk)
                    finally:
                        close = getattr(result, "close", None)
                        if close is not None:
                            close()  # GeneratorExit at its yield: its finally runs
                else:
                    put("error", _not_text(name, "returned", result))
            except BaseException as exc:
                put("raised", exc)
            finally:
                put("end")

        thread = threading.Thread(target=work, name=f"nbchat-model-{name}", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await items.get()
                if kind == "chunk":
                    yield value
                elif kind == "async":
                    async for chunk in self._on_loop(name, value):
                        yield chunk
                elif kind in ("error", "raised"):
                    raise value
                else:
                    return
        finally:
            stopped.set()
