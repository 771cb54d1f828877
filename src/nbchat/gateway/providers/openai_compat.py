"""Any OpenAI-compatible chat completions server, through the official ``openai`` SDK:
OpenAI, DeepSeek, Ollama, vLLM, llama.cpp's server, LM Studio, OpenRouter.

Streams with ``stream_options.include_usage`` so the last chunk carries token usage.
Reasoning that some servers stream apart from the answer (DeepSeek's
``reasoning_content``; ``reasoning`` on OpenRouter, vLLM and Ollama) comes out as
:class:`ReasoningChunk`. Connection failures before the first token are retried with
backoff a bounded number of times; after the first token nothing is retried.

Tools go in the request's ``tools`` (``type: function``); the streamed ``tool_calls``
deltas (an index, then the id and name, then fragments of the arguments) are assembled
into one :class:`ToolCalls`. The history's ``tool`` messages become an assistant message
with ``tool_calls`` and one ``role: tool`` message per result, as the API documents.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

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

__all__ = ["OpenAICompatProvider", "openai_messages"]

# Params passed through to the server as they are; others are refused.
PASSED_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "reasoning_effort",
)


# Model names that take images, as OpenAI, Ollama and vLLM name them. A server's model
# list does not say, so this goes by name; ``images = true|false`` in a config entry
# decides for a model it misjudges.
_TAKES_IMAGES: Final = re.compile(
    r"gpt-4o|gpt-4\.1|gpt-4-turbo(?!-preview)|gpt-5|(?:^|[-_/.:])(?:o1|o3|o4-mini)(?:$|[-_/.:])"
    r"|vision|llava|[-_/.:]vl(?:$|[-_/.:\d])|pixtral|gemma3(?![-:]1b)|qwen2\.5-?vl"
    r"|minicpm-v|moondream|llama4",
    re.IGNORECASE,
)
# ... except these variants of them: text or audio only.
_NO_IMAGES: Final = re.compile(
    r"(?:^|[-_/.:])o[13]-mini|audio|search|realtime|transcribe|tts", re.IGNORECASE
)


class OpenAICompatProvider(SDKProvider):
    """Streams chat completions from ``base_url`` (the SDK's default when None)."""

    @staticmethod
    def takes_images(model: str) -> bool:
        """Whether ``model`` (the server's name for it) takes images, by its name."""
        return _TAKES_IMAGES.search(model) is not None and _NO_IMAGES.search(model) is None

    def __init__(
        self, *, base_url: str | None, api_key: str | None, label: str = "openai", **options: Any
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, label=label, **options)
        # The SDK's own retries are off: this provider decides what is retried.
        self._client = AsyncOpenAI(api_key=api_key or "none", base_url=base_url, max_retries=0)

    @property
    def where(self) -> str:
        return self.base_url or "the OpenAI API"

    async def close(self) -> None:
        """Close its HTTP connections (they belong to the running event loop)."""
        await self._client.close()

    async def list_models(self) -> list[str]:
        """The model ids the server lists (``GET /models``), in its order (Ollama's
        puts the most recently pulled first)."""
        try:
            page = await self._client.models.list()
        except openai.APIError as exc:
            raise self._error(exc) from None
        return [model.id for model in page.data]

    async def stream(
        self, request: Request
    ) -> AsyncIterator[TextChunk | ReasoningChunk | ToolCalls | Finish]:
        check_params(request.params, PASSED_PARAMS, self.label)
        stream = await self._open(request)
        finish: FinishReason = "stop"
        finished = False  # a complete stream always names a finish_reason
        usage: dict[str, Any] | None = None
        calls: dict[int, dict[str, Any]] = {}  # by index: id, name, argument fragments
        chunks = FirstTokenDeadline(stream.__aiter__(), self.first_token_timeout_s, self.label)
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump(exclude_none=True)
                for choice in chunk.choices:
                    delta = choice.delta
                    extra = delta.model_extra or {}
                    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
                    if isinstance(reasoning, str) and reasoning:
                        chunks.got_token()
                        yield ReasoningChunk(reasoning)
                    if delta.content:
                        chunks.got_token()
                        yield TextChunk(delta.content)
                    for part in delta.tool_calls or ():
                        chunks.got_token()
                        call = calls.setdefault(part.index, {"id": "", "name": "", "args": []})
                        call["id"] = part.id or call["id"]
                        if part.function is not None:
                            call["name"] = part.function.name or call["name"]
                            call["args"].append(part.function.arguments or "")
                    if choice.finish_reason is not None:
                        finished = True
                    if choice.finish_reason == "length":
                        finish = "length"
        except openai.APIError as exc:
            raise self._error(exc) from None
        except ProviderError:
            raise
        except (ValueError, KeyError, TypeError) as exc:  # what a broken stream raises
            raise ProviderError(
                "upstream_error", f"{self.label} sent a malformed stream: {type(exc).__name__}"
            ) from None
        finally:
            await stream.close()  # on stop too: closing the response aborts upstream
        if not finished:
            # Cut off mid-reply: the partial text stays, and it is not retried.
            raise ProviderError(
                "upstream_error", f"{self.label}'s stream ended before the reply was complete"
            )
        if calls:
            yield ToolCalls(tuple(_tool_use(i, calls[i]) for i in sorted(calls)))
        yield Finish(finish, usage=usage)

    async def _open(self, request: Request) -> Any:
        messages = openai_messages(request.messages)
        extra: dict[str, Any] = {}
        if request.tools:
            extra["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        try:
            return await open_with_retries(
                lambda: self._client.chat.completions.create(
                    model=request.model,
                    messages=cast("list[ChatCompletionMessageParam]", messages),
                    stream=True,
                    stream_options={"include_usage": True},
                    # Passed through as they are, into the request body.
                    extra_body=dict(request.params) or None,
                    **extra,
                ),
                retries=self.connect_retries,
                is_connection_error=lambda e: isinstance(e, openai.APIConnectionError),
            )
        except openai.APIError as exc:
            raise self._error(exc) from None

    def _error(self, exc: openai.APIError) -> ProviderError:
        return sdk_error(exc, openai, label=self.label, where=self.where, secrets=self._secrets)


def _tool_use(index: int, call: dict[str, Any]) -> ToolUse:
    raw = "".join(call["args"])
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except ValueError:
        arguments = None
    return ToolUse(
        id=call["id"] or f"call_{index}_{uuid.uuid4().hex[:8]}",  # unique in the reply
        name=call["name"],
        arguments=arguments if isinstance(arguments, dict) else None,
        raw=raw,
    )


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The history in the Chat Completions format: each run of ``tool`` messages
    becomes the ``tool_calls`` of the assistant message just before it (a new one when
    there is none), followed by a ``role: tool`` message per result."""
    out: list[dict[str, Any]] = []
    for run in grouped_tool_runs(messages):
        if isinstance(run, ChatMessage):
            content: Any = run.content
            if run.images:
                content = [{"type": "text", "text": run.content}] + [
                    {"type": "image_url", "image_url": {"url": image}} for image in run.images
                ]
            out.append({"role": run.role, "content": content})
            continue
        last = out[-1] if out else None
        if last is None or last["role"] != "assistant" or "tool_calls" in last:
            last = {"role": "assistant", "content": None}
            out.append(last)
        last["content"] = last["content"] or None  # no text: null, as the API sends it
        last["tool_calls"] = [
            {
                "id": t.call,
                "type": "function",
                "function": {"name": t.name, "arguments": json.dumps(t.arguments or {})},
            }
            for t in run
        ]
        out += [{"role": "tool", "tool_call_id": t.call, "content": t.content} for t in run]
    return out
