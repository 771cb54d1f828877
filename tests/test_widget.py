"""widget.py: what the Chat sends to its pane (traits and batched text), without a page."""

from __future__ import annotations

import time
from typing import Any

from nbchat import Chat

from timeouts import TIMEOUT, wait_until


def test_a_paused_reply_sends_no_text_to_the_pane_until_resumed(chat: Chat) -> None:
    events: list[tuple[str, Any]] = []
    chat._push = lambda message: (  # type: ignore[method-assign]
        events.append(("text", message["text"])) if message["type"] == "chunk" else None
    )
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
    pushed: list[dict[str, Any]] = []
    chat._push = pushed.append  # type: ignore[method-assign]
    reply = chat.send("word " * 300).wait(TIMEOUT)  # tokens_per_s=0: as fast as it goes
    batches = [m for m in pushed if m["type"] == "chunk"]
    assert len(batches) < len(reply.chunks) / 5  # batched, not one message per token
    offset = 0
    for batch in batches:
        assert batch["offset"] == offset  # each batch starts where the last ended
        offset += len(batch["text"])
    assert offset == len(reply.text)


def test_a_turn_sends_the_pane_only_the_messages_it_changed(chat: Chat) -> None:
    for i in range(30):
        chat.send(f"turn {i}").wait(TIMEOUT)
    pushed: list[dict[str, Any]] = []
    chat._push = pushed.append  # type: ignore[method-assign]
    chat.send("one more").wait(TIMEOUT)
    updates = [m for m in pushed if m["type"] == "transcript"]
    assert updates
    assert all(m["from"] >= 60 for m in updates)  # never the 60 earlier messages again
    assert sum(len(m["records"]) for m in updates) <= 4
    # What the pane assembles from them is the transcript.
    pane = [dict(r) for r in chat.messages[:60]]
    for m in updates:
        pane = pane[: m["from"]] + m["records"]
    assert pane == chat.messages
    # A view that has nothing gets all of it.
    chat._bridge.send_snapshot()
    assert any(
        m["type"] == "transcript" and m["from"] == 0 and m["records"] == chat.messages
        for m in pushed
    )


def test_the_repr_says_what_the_chat_is_not_where_it_lives(chat: Chat) -> None:
    chat.send("hello").wait(TIMEOUT)
    text = repr(chat)
    assert text.startswith("Chat(model='demo', turns=1, status=")
    assert "object at 0x" not in text
