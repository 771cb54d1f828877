"""Python callables as models: the process's registry of them, by name.

``nbchat.register_model("rag", fn)`` and ``Chat(model=fn)`` put a callable here; the
embedded gateway serves every name here through
:class:`~nbchat.gateway.providers.callable.CallableProvider`, so a callable's reply
goes through the same sessions (seq, pause, stop, resume) as any model's.

A callable takes the history (a list of ``{"role", "content"}`` dicts, the system
prompt first when there is one) and the request's params as keyword arguments, and
returns a ``str``, or yields ``str`` chunks; it may be sync or async.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from .protocol import MAX_NAME_CHARS, lone_surrogate

__all__ = ["MODELS", "LocalModels", "callable_name", "register_model"]

ModelFunction = Callable[..., Any]

REMOTE_GATEWAY_MESSAGE: Final = (
    "a Python function can be the model only with the gateway embedded in this kernel: "
    "a gateway at a URL runs in another process and cannot call it. Use Chat(model=fn) "
    "without url= (it starts a gateway in this kernel), or serve the function from a "
    "model server the remote gateway knows"
)


def callable_name(fn: ModelFunction) -> str:
    """The name a callable is shown under unless given one: its ``__name__`` (through
    ``functools.partial``), else its class's name."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a model name must be a non-empty str, not {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a model name must be at most {MAX_NAME_CHARS} characters")
    if lone_surrogate(name) is not None:
        raise ValueError(f"a model name must be valid Unicode: {name!r}")
    return name


def _check_callable(fn: object) -> ModelFunction:
    if not callable(fn):
        raise TypeError(f"a model must be a callable (a function), not {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: let the call say
        return fn
    try:
        signature.bind_partial([])
    except TypeError:
        raise TypeError(
            f"{callable_name(fn)} must take the messages as its first argument, e.g. "
            f"def {callable_name(fn)}(messages, **params)"
        ) from None
    return fn


def _same(a: ModelFunction, b: ModelFunction) -> bool:
    # Bound methods are made afresh on each access: equal, not identical.
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def _redefined(a: ModelFunction, b: ModelFunction) -> bool:
    """Whether ``b`` is ``a`` defined again: the same module-level function (a notebook
    cell run again makes a new function object under the same name, and the module can
    hold only one of them). Closures (``<locals>``) can live side by side: not these."""
    if not (inspect.isfunction(a) and inspect.isfunction(b)):
        return False
    same = (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
    return same and "<locals>" not in a.__qualname__


class LocalModels:
    """Callables by model name, safe to use from any thread.

    Two different callables never share a name: :meth:`add` gives a second callable
    whose ``__name__`` is taken ``name-2`` (then ``-3``, ...), except a function defined
    again (a notebook cell run again), which takes its old name and replaces it, so
    re-running a cell neither grows the registry nor keeps the old function alive;
    :meth:`register` binds a name the caller chose, replacing what it held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, ModelFunction] = {}

    def register(self, name: str, fn: ModelFunction) -> str:
        name, fn = _check_name(name), _check_callable(fn)
        with self._lock:
            self._by_name[name] = fn
        return name

    def add(self, fn: ModelFunction, reserved: Iterable[str] = ()) -> str:
        """The name ``fn`` is served under: the one it has if registered already, else
        its own name (``name-2``, ... if another callable or a ``reserved`` name, such
        as a configured model's, holds it)."""
        fn = _check_callable(fn)
        base = _check_name(callable_name(fn))
        taken = set(reserved)
        with self._lock:
            for name, known in self._by_name.items():
                if name not in taken and _same(known, fn):
                    return name
            for name, known in self._by_name.items():
                if name not in taken and _redefined(known, fn):
                    self._by_name[name] = fn
                    return name
            name, n = base, 1
            while name in taken or name in self._by_name:
                n += 1
                name = f"{base}-{n}"
            self._by_name[name] = fn
            return name

    def get(self, name: str) -> ModelFunction | None:
        with self._lock:
            return self._by_name.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def remove(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)


# The process's registry: the embedded gateway serves these.
MODELS: Final = LocalModels()


def register_model(name: str, fn: ModelFunction) -> str:
    """Serve ``fn`` as the model ``name`` in this kernel: ``Chat(model=name)`` (or the
    picker) then uses it. Registering a name again replaces its function. Returns the
    name.

    ``fn(messages, **params)`` gets the history as a list of ``{"role", "content"}``
    dicts (the system prompt first when there is one) and the request's params as
    keyword arguments (only those it names, unless it takes ``**params``). It returns
    a ``str`` or yields ``str`` chunks, and may be a plain function, a generator, an
    ``async def`` function or an async generator. Raises ``ValueError`` for a name the
    embedded gateway's configuration already serves, ``TypeError`` for a non-callable.
    """
    from .gateway.embedded import configured_models, shared_gateway

    shared_gateway()  # its configuration is read when it starts: check against it
    if name in configured_models():
        raise ValueError(
            f"the gateway already serves a configured model named {name!r}; "
            "register the function under another name"
        )
    return MODELS.register(name, fn)
