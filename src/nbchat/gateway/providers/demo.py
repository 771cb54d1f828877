"""The built-in offline ``demo`` model: deterministic Markdown replies, no network.

The same history always gives the same reply. Each reply has a paragraph that quotes the
user's last message, a numbered list (longer for longer messages, so a long prompt gives
a long reply), a fenced code block and a line that refers to the earlier turns, so
streaming, Markdown rendering and multi-turn history are all visible.

Params: ``tokens_per_s`` (default 30; 0 = as fast as possible) and ``max_tokens``
(the reply is cut there with finish = "length").
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Final

from ...protocol import FinishReason
from .base import Finish, ProviderError, Request, TextChunk

__all__ = ["DemoProvider", "count_tokens", "demo_reply", "tokenize"]

DEFAULT_TOKENS_PER_S: Final = 30.0

_TIPS: Final = (
    "Press **Stop** while a reply streams: the partial text stays in the transcript.",
    "Press **Pause**, wait, then **Resume**: nothing generated in between is lost.",
    "Call `chat.send(...)` from a cell and watch the pane update live.",
    "Use `chat.to_dataframe()` to get the transcript with timing columns.",
    "Set `tokens_per_s=0` to stream as fast as the link allows.",
    'Set `max_tokens` to cut a reply short with `finish == "length"`.',
    "Iterate over a reply with `for chunk in reply:` to process it as it streams.",
    "Use `await reply` in an async cell to keep the kernel free.",
    "Point `Chat(url=...)` at a gateway started with `nbchat serve`.",
    "Read `reply.finish` to learn why a reply ended.",
    "Pass `system=...` to give the model standing instructions.",
    "Open the same chat in a second output with `display(chat)`.",
)

_TOKEN_RE: Final = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into word tokens that keep their leading white space, so that
    ``"".join(tokenize(t)) == t``."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """``len(tokenize(text))``, without building the list (a long history is counted
    on every turn)."""
    return len(text.split()) + (1 if text[-1:].isspace() else 0)


def demo_reply(request: Request) -> str:
    """The reply the demo model gives to this history."""
    users = [m.content for m in request.messages if m.role == "user"]
    if not users:
        raise ProviderError("bad_request", "the demo model needs at least one user message")
    last = users[-1].strip()
    digest = hashlib.sha256("\x00".join(m.content for m in request.messages).encode()).digest()
    quote = last if len(last) <= 120 else last[:117] + "..."
    items = 3 + min(len(last.split()) // 10, 40)
    tips = [_TIPS[(digest[i % len(digest)] + i) % len(_TIPS)] for i in range(items)]
    listing = "\n".join(f"{i + 1}. {tip}" for i, tip in enumerate(tips))
    if len(users) == 1:
        earlier = "This is the first turn of our conversation."
    else:
        first = users[0].strip()
        first = first if len(first) <= 60 else first[:57] + "..."
        earlier = (
            f"This is turn {len(users)} of our conversation; it began with \u201c{first}\u201d."
        )
    return (
        f"**Demo reply.** You wrote: \u201c{quote}\u201d. I am nbchat's built-in offline "
        "model: I need no network and give the same reply to the same conversation, "
        "so you can try streaming, Stop, Pause and Resume right away.\n\n"
        f"Things to try:\n\n{listing}\n\n"
        "```python\n"
        "from nbchat import Chat\n\n"
        "chat = Chat()\n"
        f"reply = chat.send({last[:80]!r})\n"
        "print(reply.wait().text)\n"
        "```\n\n"
        f"{earlier}"
    )


class DemoProvider:
    """Serves the ``demo`` model from :func:`demo_reply`, at a steady token rate."""

    def models(self) -> list[str]:
        return ["demo"]

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        rate = float(request.params.get("tokens_per_s", DEFAULT_TOKENS_PER_S))
        max_tokens = request.params.get("max_tokens")
        if rate < 0:
            raise ProviderError("bad_request", "tokens_per_s must be 0 or more")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ProviderError("bad_request", "max_tokens must be a positive integer")
        tokens = tokenize(demo_reply(request))
        reason: FinishReason = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, reason = tokens[:max_tokens], "length"
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i, token in enumerate(tokens):
            # Pace against the start time rather than sleeping a fixed step, so the
            # rate holds however long each send takes.
            delay = begin + i / rate - loop.time() if rate else 0.0
            await asyncio.sleep(max(delay, 0.0))
            yield TextChunk(token)
        prompt = sum(count_tokens(m.content) for m in request.messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }
        yield Finish(reason, usage=usage)
