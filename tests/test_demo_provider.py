"""The offline demo model: deterministic Markdown, pacing, max_tokens."""

from __future__ import annotations

import asyncio

import pytest

from nbchat.gateway.providers import DemoProvider, Finish, ProviderError, Request, TextChunk
from nbchat.gateway.providers.demo import count_tokens, demo_reply, tokenize
from nbchat.protocol import ChatMessage


def request(*texts: str, **params: object) -> Request:
    messages = tuple(ChatMessage("user", t) for t in texts)
    return Request(messages=messages, model="demo", params=dict(params))


async def collect(req: Request) -> tuple[str, Finish]:
    text, finish = "", None
    async for item in DemoProvider().stream(req):
        if isinstance(item, TextChunk):
            text += item.text
        else:
            finish = item
    assert finish is not None
    return text, finish


def test_tokens_rejoin_to_the_text() -> None:
    text = "  Hello,\n\nworld  `code`\n"
    assert "".join(tokenize(text)) == text


def test_same_history_same_reply_and_it_quotes_the_user() -> None:
    reply = demo_reply(request("What is a WebSocket?"))
    assert reply == demo_reply(request("What is a WebSocket?"))
    assert "What is a WebSocket?" in reply
    assert "\n1. " in reply
    assert "```python\n" in reply
    assert reply != demo_reply(request("What is SSE?"))


def test_later_turns_refer_to_the_first() -> None:
    reply = demo_reply(request("first question", "second question"))
    assert "turn 2" in reply
    assert "first question" in reply


def test_long_prompts_get_long_replies() -> None:
    short = demo_reply(request("hi"))
    long = demo_reply(request("word " * 300))
    assert len(tokenize(long)) > 3 * len(tokenize(short))


async def test_stream_rejoins_to_the_reply_with_usage() -> None:
    text, finish = await collect(request("hi", tokens_per_s=0))
    assert text == demo_reply(request("hi"))
    assert finish.reason == "stop"
    assert finish.usage == {
        "prompt_tokens": 1,
        "completion_tokens": len(tokenize(text)),
        "total_tokens": 1 + len(tokenize(text)),
    }


async def test_max_tokens_cuts_with_finish_length() -> None:
    text, finish = await collect(request("hi", tokens_per_s=0, max_tokens=5))
    assert tokenize(text) == tokenize(demo_reply(request("hi")))[:5]
    assert finish.reason == "length"


async def test_pacing_follows_tokens_per_s() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    await collect(request("hi", tokens_per_s=100, max_tokens=21))
    # 21 tokens at 100/s: the last is due 0.2 s after the first.
    assert loop.time() - began >= 0.2


@pytest.mark.parametrize(
    ("params", "message"),
    [({"tokens_per_s": -1}, "tokens_per_s"), ({"max_tokens": 0}, "max_tokens")],
)
async def test_bad_params_are_provider_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        await collect(request("hi", **params))


@pytest.mark.parametrize("text", ["", " ", "a", " a", "a ", "a  b\n", "\n\n", "x\ty z  "])
def test_count_tokens_counts_what_tokenize_gives(text: str) -> None:
    assert count_tokens(text) == len(tokenize(text))
