"""Python functions as tools a model can call: a JSON schema from the signature, and
running a call in this process.

The schema comes from pydantic (``TypeAdapter(fn).json_schema()``: parameters, type
hints, defaults); the description is the first paragraph of the docstring. A call's
arguments are validated (and coerced, ``"5"`` for an ``int``) by ``pydantic.validate_call``
before the function runs. A sync function runs on a daemon thread of its own, so a slow
tool never holds up the client loop; an async one runs on the client loop. Whatever a
tool raises becomes an error result the model sees (``"ValueError: ..."``), never an
exception here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import pydantic

from .protocol import TOOL_NAME, ToolSpec, valid_unicode

__all__ = ["MAX_RESULT_CHARS", "Tool", "make_tool", "run_tool"]

# A result longer than this is cut (and says so): it travels in one frame, and a model's
# context is finite anyway.
MAX_RESULT_CHARS: Final = 100_000
_MAX_ERROR_CHARS: Final = 2_000


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and parameters' JSON
    schema as sent to the model; ``confirm`` asks in the pane before each run."""

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    confirm: bool = False
    # fn behind pydantic.validate_call: checks and coerces the model's arguments.
    _call: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (``@chat.tool`` leaves it callable as before)."""
        return self.fn(*args, **kwargs)

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


def make_tool(fn: Callable[..., Any], *, name: str | None = None, confirm: bool = False) -> Tool:
    """A :class:`Tool` for ``fn``; raises ``ValueError`` when ``fn`` cannot be one (not
    callable, a name the providers refuse, a parameter type with no JSON schema)."""
    if isinstance(fn, Tool):
        fn = fn.fn
    if not callable(fn):
        raise ValueError(f"a tool must be a function, not {type(fn).__name__}")
    name = name or getattr(fn, "__name__", "") or type(fn).__name__
    if not TOOL_NAME.fullmatch(name):
        raise ValueError(
            f"tool name {name!r} is not accepted by model APIs: use 1 to 64 letters, "
            "digits, _ or -; pass name=... to choose one"
        )
    try:
        # A function's TypeAdapter is its arguments' schema (pydantic's typing says
        # "a type", but callables are documented input).
        parameters = pydantic.TypeAdapter(cast(Any, fn)).json_schema()
        call = pydantic.validate_call(fn)
    except (pydantic.PydanticUserError, pydantic.errors.PydanticSchemaGenerationError) as exc:
        raise ValueError(f"cannot make a JSON schema for tool {name!r}: {exc}") from None
    if parameters.get("type") != "object":  # e.g. *args only: no object of arguments
        raise ValueError(f"tool {name!r} must take keyword arguments (its schema: {parameters})")
    doc = inspect.getdoc(fn) or ""
    description = doc.strip().split("\n\n", 1)[0].strip()
    return Tool(
        name=name,
        fn=fn,
        description=" ".join(description.split()),
        parameters=parameters,
        confirm=confirm,
        _call=call,
    )


async def run_tool(tool: Tool, arguments: dict[str, Any]) -> tuple[str, str | None]:
    """Run one call: ``(result text, None)``, or ``("", "Type: message")`` when the
    arguments do not fit or the tool raised. Cancelling it cancels an async tool at
    its ``await``; a sync tool's thread runs on (its result is then dropped)."""
    try:
        if inspect.iscoroutinefunction(tool.fn):
            result = await _on_a_loop_of_its_own(tool, arguments)
        else:
            result = await asyncio.wrap_future(_in_thread(tool, arguments))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = valid_unicode(f"{type(exc).__name__}: {exc}")
        return "", message[:_MAX_ERROR_CHARS]
    return _as_text(result), None


async def _on_a_loop_of_its_own(tool: Tool, arguments: dict[str, Any]) -> Any:
    """An async tool on an event loop of its own, on a thread of its own: one that
    blocks (pandas inside ``async def``) must not hold up the client loop, which serves
    every chat of the kernel and their Stop. Cancelling cancels it at its ``await``."""
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]]
    started = concurrent.futures.Future()
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task((tool._call or tool.fn)(**arguments))
            started.set_result((loop, task))
            done.set_result(loop.run_until_complete(task))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            if not done.done():
                done.set_exception(exc)
        finally:
            loop.close()

    threading.Thread(target=run, name=f"nbchat-tool-{tool.name}", daemon=True).start()
    loop, task = await asyncio.wrap_future(started)
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        with contextlib.suppress(RuntimeError):  # its loop has ended already
            loop.call_soon_threadsafe(task.cancel)
        raise


def _in_thread(tool: Tool, arguments: dict[str, Any]) -> concurrent.futures.Future[Any]:
    """Run a sync tool on a daemon thread of its own (a hung tool must not keep the
    process from exiting, as a pool's thread would)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result((tool._call or tool.fn)(**arguments))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=f"nbchat-tool-{tool.name}", daemon=True).start()
    return future


def _as_text(result: Any) -> str:
    """A result as the model receives it: text as is, JSON values as JSON, anything
    else its ``str`` (a DataFrame's table); cut at :data:`MAX_RESULT_CHARS`."""
    if result is None:
        text = ""
    elif isinstance(result, str):
        text = result
    elif isinstance(result, (dict, list, tuple, int, float, bool)):
        try:
            text = json.dumps(result, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(result)
    else:
        text = str(result)
    text = valid_unicode(text)
    if len(text) > MAX_RESULT_CHARS:
        cut = len(text) - MAX_RESULT_CHARS
        text = f"{text[:MAX_RESULT_CHARS]}\n[... {cut:,} more characters cut]"
    return text
