"""The provider interface: what the gateway needs from anything that generates replies.

A provider turns a request (history, upstream model name, params) into an async stream of
text chunks, ending with a :class:`Finish`. The gateway cancels the stream's task to stop
it, so a provider must release its upstream request when cancelled (closing an HTTP
response does that). Failures are raised as :class:`ProviderError` with a protocol code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...protocol import ChatMessage, FinishReason

__all__ = ["Finish", "Provider", "ProviderError", "Request", "TextChunk"]


@dataclass(frozen=True)
class Request:
    messages: tuple[ChatMessage, ...]
    model: str  # the provider's own name for the model
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    usage: dict[str, Any] | None = None


class ProviderError(Exception):
    """A failure the user should see: ``code`` is a protocol error code
    (``upstream_error``, ``rate_limited``, ``unauthorized``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@runtime_checkable
class Provider(Protocol):
    """Something that streams replies for the models it lists."""

    def models(self) -> list[str]:
        """Model names this provider serves (as the provider knows them)."""
        ...

    def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        """Yield text chunks, then exactly one :class:`Finish`."""
        ...
