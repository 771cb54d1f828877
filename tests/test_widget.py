"""widget.py: what the Chat sends to its pane (traits and batched text), without a page."""

from __future__ import annotations

import time
from typing import Any

from nbchat import Chat

from timeouts import TIMEOUT, wait_until


def test_a_paused_reply_sends_no_text_to_the_pane_until_resumed(chat: Chat) -> None:
    events: list[tuple[str, Any]] = []
    chat._push = lambda message: events.append(("text", message["text"]))  # type: ignore[method-assign]
    chat.observe(
        lambda change: events.append(("status", change["new"].get("status"))), names="active"
    )
    reply = chat.send("pause me, then go on", tokens_per_s=200)
    wait_until(lambda: len(reply.chunks) >= 5, "streaming")
    reply.pause()
    wait_until(lambda: reply.status == "paused", "paused")
    time.sleep(0.2)  # longer than a batch interval: a late batch would show up here
    reply.resume().wait(TIMEOUT)
    paused = events.index(("status", "paused"))
    resumed = events.index(("status", "streaming"), paused)
    assert not [e for e in events[paused:resumed] if e[0] == "text"]
    sent = "".join(text for kind, text in events if kind == "text")
    assert sent == reply.text  # and every character reached the pane, once


def test_the_pane_gets_only_new_text_in_bounded_batches(chat: Chat) -> None:
    batches: list[dict[str, Any]] = []
    chat._push = batches.append  # type: ignore[method-assign]
    reply = chat.send("word " * 300).wait(TIMEOUT)  # tokens_per_s=0: as fast as it goes
    assert len(batches) < len(reply.chunks) / 5  # batched, not one message per token
    offset = 0
    for batch in batches:
        assert batch["offset"] == offset  # each batch starts where the last ended
        offset += len(batch["text"])
    assert offset == len(reply.text)
