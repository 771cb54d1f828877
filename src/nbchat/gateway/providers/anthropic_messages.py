"""Anthropic's Messages API, streamed through the official ``anthropic`` SDK.

The second real protocol behind the same provider interface: named SSE events instead
of chunks, the system prompt apart from the messages, ``max_tokens`` required, and
``thinking`` blocks that come out as :class:`ReasoningChunk`.

Tools go in the request's ``tools`` (``input_schema``); a ``tool_use`` content block
(its id and name at ``content_block_start``, its input as ``input_json_delta``
fragments) becomes a call of one :class:`ToolCalls`. The history's ``tool`` messages
become ``tool_use`` blocks of the assistant message before them and one user message
of ``tool_result`` blocks (``is_error`` for a tool that raised). Thinking blocks are not
kept, so extended thinking together with tools is not supported (the API wants the
round's thinking block back with its results).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import anthropic
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from ...protocol import ChatMessage, FinishReason
from .base import (
    Finish,
    FirstTokenDeadline,
    ProviderError,
    ReasoningChunk,
    Request,
    SDKProvider,
    TextChunk,
    ToolCalls,
    ToolUse,
    check_params,
    grouped_tool_runs,
    open_with_retries,
    sdk_error,
)

__all__ = ["AnthropicProvider", "anthropic_messages"]

DEFAULT_MAX_TOKENS = 1024  # the API requires one
PASSED_PARAMS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "thinking")


class AnthropicProvider(SDKProvider):
    """Streams messages from Anthropic (or a server speaking its API at ``base_url``)."""

    @staticmethod
    def takes_images(model: str) -> bool:
        """Every Claude model since Claude 3 takes images; another model behind this
        API (a server speaking it at ``base_url``) is not assumed to."""
        return model.startswith("claude-") and not model.startswith(
            ("claude-1", "claude-2", "claude-instant")
        )

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

    async def stream(
        self, request: Request
    ) -> AsyncIterator[TextChunk | ReasoningChunk | ToolCalls | Finish]:
        check_params(request.params, PASSED_PARAMS, self.label)
        params = dict(request.params)
        if "stop" in params:  # the common name, in Anthropic's spelling
            stop = params.pop("stop")
            params["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        system, messages = anthropic_messages(request.messages)
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        try:
            stream = await open_with_retries(
                lambda: self._client.messages.create(
                    model=request.model,
                    max_tokens=int(params.pop("max_tokens", DEFAULT_MAX_TOKENS)),
                    messages=cast("list[MessageParam]", messages),
                    stream=True,
                    system=system or anthropic.omit,
                    tools=cast("Any", tools) or anthropic.omit,
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
        calls: dict[int, dict[str, Any]] = {}  # tool_use blocks by index: id, name, input
        events = FirstTokenDeadline(stream.__aiter__(), self.first_token_timeout_s, self.label)
        try:
            async for event in events:
                if event.type == "message_start":
                    usage["prompt_tokens"] = event.message.usage.input_tokens
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        events.got_token()
                        calls[event.index] = {"id": block.id, "name": block.name, "json": []}
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta":
                        events.got_token()
                        yield TextChunk(event.delta.text)
                    elif event.delta.type == "thinking_delta":
                        events.got_token()
                        yield ReasoningChunk(event.delta.thinking)
                    elif event.delta.type == "input_json_delta" and event.index in calls:
                        calls[event.index]["json"].append(event.delta.partial_json)
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
        if calls:
            yield ToolCalls(tuple(_tool_use(calls[i]) for i in sorted(calls)))
        yield Finish(finish, usage=usage or None)

    def _error(self, exc: anthropic.APIError) -> ProviderError:
        where = self.base_url or "the Anthropic API"
        return sdk_error(exc, anthropic, label=self.label, where=where, secrets=self._secrets)


def _tool_use(call: dict[str, Any]) -> ToolUse:
    raw = "".join(call["json"])
    try:
        arguments = json.loads(raw) if raw.strip() else {}  # no fragments: no input
    except ValueError:
        arguments = None
    return ToolUse(
        id=call["id"],
        name=call["name"],
        arguments=arguments if isinstance(arguments, dict) else None,
        raw=raw,
    )


def _is_error(content: str) -> bool:
    """Whether a tool message holds an error result (``{"error": ...}``)."""
    if not content.startswith('{"error"'):
        return False
    try:
        data = json.loads(content)
    except ValueError:
        return False
    return isinstance(data, dict) and set(data) == {"error"}


def _image_block(uri: str) -> dict[str, Any]:
    """A ``data:image/png;base64,...`` URI (checked by the protocol) as an image block."""
    head, _, data = uri.partition(",")
    media_type = head.removeprefix("data:").removesuffix(";base64")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def anthropic_messages(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the messages in the Messages API format: each run of
    ``tool`` messages becomes ``tool_use`` blocks of the assistant message just before
    it (a new one when there is none; an empty text is left out, as the API refuses
    empty text blocks), then one user message of ``tool_result`` blocks."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    out: list[dict[str, Any]] = []
    for run in grouped_tool_runs(rest):
        if isinstance(run, ChatMessage):
            content: Any = run.content
            if run.images:
                content = [{"type": "text", "text": run.content}] + [
                    _image_block(image) for image in run.images
                ]
            out.append({"role": run.role, "content": content})
            continue
        last = out[-1] if out else None
        if last is None or last["role"] != "assistant" or not isinstance(last["content"], str):
            last = {"role": "assistant", "content": ""}
            out.append(last)
        text = last["content"]
        last["content"] = [{"type": "text", "text": text}] if text else []
        last["content"] += [
            {"type": "tool_use", "id": t.call, "name": t.name, "input": t.arguments or {}}
            for t in run
        ]
        results = [
            {"type": "tool_result", "tool_use_id": t.call, "content": t.content}
            | ({"is_error": True} if _is_error(t.content) else {})
            for t in run
        ]
        out.append({"role": "user", "content": results})
    return system, out
