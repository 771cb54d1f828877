"""Anthropic's Messages API, streamed through the official ``anthropic`` SDK.

The second real protocol behind the same provider interface: named SSE events instead
of chunks, the system prompt apart from the messages, ``max_tokens`` required, and
``thinking`` blocks that come out as :class:`ReasoningChunk`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from ...protocol import FinishReason
from .base import (
    Finish,
    FirstTokenDeadline,
    ProviderError,
    ReasoningChunk,
    Request,
    SDKProvider,
    TextChunk,
    check_params,
    open_with_retries,
    sdk_error,
)

__all__ = ["AnthropicProvider"]

DEFAULT_MAX_TOKENS = 1024  # the API requires one
PASSED_PARAMS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "thinking")


class AnthropicProvider(SDKProvider):
    """Streams messages from Anthropic (or a server speaking its API at ``base_url``)."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        label: str = "anthropic",
        **options: Any,
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, label=label, **options)
        # The SDK's own retries are off: this provider decides what is retried.
        self._client = AsyncAnthropic(api_key=api_key or "none", base_url=base_url, max_retries=0)

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | ReasoningChunk | Finish]:
        check_params(request.params, PASSED_PARAMS, self.label)
        params = dict(request.params)
        if "stop" in params:  # the common name, in Anthropic's spelling
            stop = params.pop("stop")
            params["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        try:
            stream = await open_with_retries(
                lambda: self._client.messages.create(
                    model=request.model,
                    max_tokens=int(params.pop("max_tokens", DEFAULT_MAX_TOKENS)),
                    messages=cast("list[MessageParam]", messages),
                    stream=True,
                    system=system or anthropic.omit,
                    extra_body=params or None,
                ),
                retries=self.connect_retries,
                is_connection_error=lambda e: isinstance(e, anthropic.APIConnectionError),
            )
        except anthropic.APIError as exc:
            raise self._error(exc) from None
        finish: FinishReason = "stop"
        finished = False  # a complete stream ends with message_stop
        usage: dict[str, Any] = {}
        events = FirstTokenDeadline(stream.__aiter__(), self.first_token_timeout_s, self.label)
        try:
            async for event in events:
                if event.type == "message_start":
                    usage["prompt_tokens"] = event.message.usage.input_tokens
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta":
                        events.got_token()
                        yield TextChunk(event.delta.text)
                    elif event.delta.type == "thinking_delta":
                        events.got_token()
                        yield ReasoningChunk(event.delta.thinking)
                elif event.type == "message_stop":
                    finished = True
                elif event.type == "message_delta":
                    usage["completion_tokens"] = event.usage.output_tokens
                    if event.delta.stop_reason == "max_tokens":
                        finish = "length"
        except anthropic.APIError as exc:
            raise self._error(exc) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(
                "upstream_error", f"{self.label} sent a malformed stream: {type(exc).__name__}"
            ) from None
        finally:
            await stream.close()  # on stop too: closing the response aborts upstream
        if not finished:
            raise ProviderError(
                "upstream_error", f"{self.label}'s stream ended before the reply was complete"
            )
        if "prompt_tokens" in usage and "completion_tokens" in usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        yield Finish(finish, usage=usage or None)

    def _error(self, exc: anthropic.APIError) -> ProviderError:
        where = self.base_url or "the Anthropic API"
        return sdk_error(exc, anthropic, label=self.label, where=where, secrets=self._secrets)
