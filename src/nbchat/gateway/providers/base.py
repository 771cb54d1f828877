"""The provider interface: what the gateway needs from anything that generates replies.

A provider turns a request (history, upstream model name, params, tools) into an async
stream of text chunks, ending with a :class:`Finish`; a provider that supports tools
yields :class:`ToolCalls` before the finish when the model calls them, and the gateway
then sends a new request with the calls and their results appended (``tool`` messages).
The gateway cancels the stream's task to stop it, so a provider must release its
upstream request when cancelled (closing an HTTP response does that). Failures are
raised as :class:`ProviderError` with a protocol code.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import socket
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from ...backoff import Backoff
from ...protocol import ChatMessage, FinishReason, ToolSpec

__all__ = [
    "Finish",
    "FirstTokenDeadline",
    "Provider",
    "ProviderError",
    "ReasoningChunk",
    "Request",
    "SDKProvider",
    "TextChunk",
    "ToolCalls",
    "ToolUse",
    "check_params",
    "connection_failure",
    "first_item_within",
    "grouped_tool_runs",
    "open_with_retries",
    "redact",
    "retry_after_s",
    "sdk_error",
    "status_error",
]

RETRY_BACKOFF = Backoff(initial_s=0.25, cap_s=2.0)


@dataclass(frozen=True)
class Request:
    messages: tuple[ChatMessage, ...]
    model: str  # the provider's own name for the model
    params: dict[str, Any] = field(default_factory=dict)
    tools: tuple[ToolSpec, ...] = ()  # what the model may call (providers may ignore them)


@dataclass(frozen=True)
class ToolUse:
    """One tool call as the model made it. ``arguments`` is None when what it sent is
    not a JSON object (``raw`` holds it): the gateway answers it with an error."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw: str = ""


@dataclass(frozen=True)
class ToolCalls:
    """The model calls these tools (one round) and waits for their results; yielded
    before the round's :class:`Finish`, which the gateway then does not send."""

    calls: tuple[ToolUse, ...]


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ReasoningChunk:
    """Reasoning a model streams apart from its answer (kept out of the history)."""

    text: str


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    usage: dict[str, Any] | None = None


class ProviderError(Exception):
    """A failure the user should see: ``code`` is a protocol error code
    (``upstream_error``, ``rate_limited``, ``unauthorized``, ...). ``reason``, when
    known, says it in a few words ("connection refused", "HTTP 401"). ``retry_after``
    is how many seconds the provider asked to wait before trying again (its HTTP 429's
    ``Retry-After``), when it said; the gateway passes it on in the ``error`` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a response's headers ask to wait before a retry, or None when they do
    not say: ``retry-after-ms`` (OpenAI's), else ``Retry-After`` as seconds or as an
    HTTP date. A date in the past is 0; anything unreadable is None."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _number(value: str | None) -> float | None:
    """A finite number of 0 or more written in ``value``, else None."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


@runtime_checkable
class Provider(Protocol):
    """Something that streams replies for the models it lists."""

    def models(self) -> list[str]:
        """Model names this provider serves (as the provider knows them)."""
        ...

    def stream(
        self, request: Request
    ) -> AsyncIterator[TextChunk | ReasoningChunk | ToolCalls | Finish]:
        """Yield text (and reasoning) chunks, maybe one :class:`ToolCalls`, then exactly
        one :class:`Finish`."""
        ...


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced: provider messages can quote a key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def status_error(
    label: str, status: int, headers: Mapping[str, str], message: str, secrets: Iterable[str]
) -> ProviderError:
    """The error a user sees for an HTTP error status from a provider."""
    detail = f": {message}" if message else ""
    if status in (401, 403):
        error = ProviderError(
            "unauthorized", f"{label} refused the API key (HTTP {status}){detail}"
        )
    elif status == 404:
        error = ProviderError(
            "unknown_model", f"{label} does not know this model (HTTP 404){detail}"
        )
    elif status == 429:
        after = retry_after_s(headers)
        wait = f"; retry after {after:g} s" if after is not None else ""
        error = ProviderError(
            "rate_limited",
            f"{label} is rate limiting (HTTP 429){wait}{detail}",
            retry_after=after,
        )
    elif status in (400, 422):
        error = ProviderError(
            "bad_request", f"{label} rejected the request (HTTP {status}){detail}"
        )
    else:
        error = ProviderError("upstream_error", f"{label} failed (HTTP {status}){detail}")
    error.message = redact(error.message, secrets)
    error.args = (error.message,)
    return error


async def open_with_retries(
    open_stream: Callable[[], Awaitable[Any]],
    *,
    retries: int,
    is_connection_error: Callable[[Exception], bool],
    backoff: Backoff = RETRY_BACKOFF,
) -> Any:
    """Open a stream, retrying connection failures ``retries`` times with backoff.
    Safe because nothing was generated yet; any other failure is raised at once. The
    last connection failure is raised with ``attempts`` set on it."""
    rng = random.Random()
    attempt = 0
    while True:
        try:
            return await open_stream()
        except Exception as exc:
            attempt += 1
            if not is_connection_error(exc) or attempt > retries:
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
            await asyncio.sleep(backoff.delay(attempt, rng))


async def first_item_within(iterator: AsyncIterator[Any], timeout_s: float, label: str) -> Any:
    """The iterator's next item, or a :class:`ProviderError` if none came in time."""
    try:
        return await asyncio.wait_for(iterator.__anext__(), timeout_s)
    except TimeoutError:
        raise ProviderError(
            "upstream_error", f"{label} sent no first token within {timeout_s:g} s"
        ) from None


def check_params(params: Mapping[str, Any], allowed: Iterable[str], label: str) -> None:
    """Refuse params the provider does not take, naming them and what it takes."""
    allowed = tuple(allowed)
    unknown = set(params) - set(allowed)
    if unknown:
        raise ProviderError(
            "bad_request",
            f"unknown params {', '.join(sorted(unknown))}; {label} takes {', '.join(allowed)}",
        )


def sdk_error(
    exc: Exception, sdk: ModuleType, *, label: str, where: str, secrets: Iterable[str]
) -> ProviderError:
    """The error a user sees for an exception of the ``openai`` or ``anthropic`` SDK
    (generated from one template: the same error classes and fields)."""
    secrets = list(secrets)
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError("upstream_error", f"{label} timed out at {where}", reason="timed out")
    if isinstance(exc, sdk.APIConnectionError):
        attempts = getattr(exc, "attempts", 1)
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        cause = redact(connection_failure(exc), secrets)
        message = f"cannot connect to {label} at {where}{tries}: {cause}"
        return ProviderError("upstream_error", redact(message, secrets), reason=cause)
    if isinstance(exc, sdk.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error", body)
        quoted = error.get("message") if isinstance(error, dict) else None
        text = quoted if isinstance(quoted, str) else str(exc.message)
        failure = status_error(label, exc.status_code, exc.response.headers, text, secrets)
        failure.reason = f"HTTP {exc.status_code}"
        return failure
    return ProviderError("upstream_error", redact(f"{label} failed: {exc}", secrets))


def connection_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the SDKs say "Connection error." and
    httpx "All connection attempts failed"; the OS error under them says more."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return "host not found"
        if isinstance(error, (ConnectionResetError, ConnectionAbortedError)):
            return "connection reset"
        if isinstance(error, TimeoutError):
            return "timed out"
        stack.extend(e for e in (error.__cause__, error.__context__) if e is not None)
        grouped = getattr(error, "exceptions", ())  # an ExceptionGroup (Python 3.11+)
        stack.extend(e for e in grouped if isinstance(e, BaseException))
    return str(exc.__cause__ or exc)


class FirstTokenDeadline:
    """Iterates over a provider's events; until the caller marks the first token
    (``got_token()``), each wait is bounded by ``timeout_s``, and running out of it is a
    :class:`ProviderError`. After that, events come as slowly as they come."""

    def __init__(self, events: AsyncIterator[Any], timeout_s: float, label: str) -> None:
        self._events = events
        self._timeout_s = timeout_s
        self._label = label
        self._waiting = True

    def got_token(self) -> None:
        self._waiting = False

    def __aiter__(self) -> FirstTokenDeadline:
        return self

    async def __anext__(self) -> Any:
        if self._waiting:
            return await first_item_within(self._events, self._timeout_s, self._label)
        return await self._events.__anext__()


class SDKProvider:
    """What the providers built on an official SDK share: where they go, the key they
    hold (and must never show), and how long to wait for a first token."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        label: str,
        first_token_timeout_s: float = 60.0,
        connect_retries: int = 2,
    ) -> None:
        self.base_url = base_url
        self.label = label
        self.first_token_timeout_s = first_token_timeout_s
        self.connect_retries = connect_retries
        self._api_key = api_key

    @property
    def _secrets(self) -> list[str]:
        return [self._api_key] if self._api_key else []

    def models(self) -> list[str]:
        return []  # configured per model


def grouped_tool_runs(
    messages: Sequence[ChatMessage],
) -> Iterator[ChatMessage | list[ChatMessage]]:
    """The history with each run of consecutive ``tool`` messages (one round of calls
    and their results) as one list, every other message as itself: both provider
    formats attach a round to the assistant message before it."""
    i = 0
    while i < len(messages):
        if messages[i].role != "tool":
            yield messages[i]
            i += 1
            continue
        run = []
        while i < len(messages) and messages[i].role == "tool":
            run.append(messages[i])
            i += 1
        yield run
