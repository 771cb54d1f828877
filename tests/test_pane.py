"""pane.py: the pane's commands, and batching that bounds comm traffic while every
character arrives exactly once (checked on the golden file vitest reads too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbchat.pane import StreamBatcher, TranscriptSync, parse_command

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pane.json").read_text())


@pytest.mark.parametrize("message", FIXTURE["commands"], ids=lambda m: m["type"])
def test_pane_commands_parse(message: dict[str, Any]) -> None:
    command = parse_command(message)
    assert command.type == message["type"]
    assert command.text == message.get("text", "")
    assert (command.call, command.run) == (message.get("call", ""), message.get("run", False))
    assert (command.id, command.sibling) == (message.get("id", ""), message.get("sibling"))


@pytest.mark.parametrize("case", FIXTURE["bad_commands"], ids=lambda c: c["error"])
def test_bad_pane_commands_say_why(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=case["error"]):
        parse_command(case["message"])


def apply(text: str, message: dict[str, Any]) -> str:
    """What js/src/stream.ts does with a chunk or snapshot (see the shared fixture)."""
    if message["type"] == "snapshot":
        return message["text"] if len(message["text"]) > len(text) else text
    assert message["offset"] <= len(text), "a gap"
    end = message["offset"] + len(message["text"])
    return text[: message["offset"]] + message["text"] if end > len(text) else text


@pytest.mark.parametrize("delivery", FIXTURE["deliveries"][:2], ids=lambda d: d["name"])
def test_golden_deliveries_apply_the_same_in_python(delivery: dict[str, Any]) -> None:
    text = ""
    for message in delivery["messages"]:
        text = apply(text, message)
    assert text == delivery["text"]


def test_batches_are_bounded_and_carry_every_character_once() -> None:
    batcher = StreamBatcher(interval_s=0.05)
    batcher.begin("r1")
    tokens = [f"t{i} " for i in range(5000)]
    sent: list[dict[str, Any]] = []
    now = 0.0
    # 5,000 tokens over one simulated second, a flush whenever one is due.
    for token in tokens:
        batcher.add(token)
        now += 1 / 5000
        if batcher.due(now) <= now and (message := batcher.take(now)):
            sent.append(message)
    if final := batcher.take(now):
        sent.append(final)
    assert len(sent) <= 1 / 0.05 + 2  # about 20 per second, whatever the token rate
    text = ""
    for message in sent:
        assert message["offset"] == len(text)  # only new text, never the whole again
        text = apply(text, message)
    assert text == "".join(tokens)
    assert sum(len(m["text"]) for m in sent) == len(text)


def simulate(
    batcher: StreamBatcher, tokens_per_s: float, seconds: float
) -> tuple[int, list[float]]:
    """Tokens of 4 characters at a steady rate, with the I/O layer's scheduling: a
    flush is set for ``due()`` when text arrives and none is pending. The time each
    token waited for its batch, in seconds, and how many tokens were added."""
    batcher.begin("r1")
    arrivals: list[float] = []
    waits: list[float] = []
    flush_at: float | None = None
    step = 1 / tokens_per_s
    now = last_token = 0.0
    added = 0
    while last_token + step < seconds or flush_at is not None:
        next_token = last_token + step if last_token + step < seconds else float("inf")
        if flush_at is not None and flush_at <= next_token:
            now, flush_at = flush_at, None
            if (message := batcher.take(now)) is not None:
                waits += [now - arrivals[i] for i in range(len(message["text"]) // 4)]
                arrivals = arrivals[len(message["text"]) // 4 :]
            continue
        now = last_token = next_token
        batcher.add("tok ")
        added += 1
        arrivals.append(now)
        if flush_at is None:
            flush_at = batcher.due(now)
    return added, waits


@pytest.mark.parametrize(
    ("tokens_per_s", "most_per_s"),
    [(20, 14), (100, 14), (1_000, 20.5), (20_000, 20.5)],
)
def test_batches_adapt_to_the_rate_and_no_text_waits_past_the_slow_interval(
    tokens_per_s: float, most_per_s: float
) -> None:
    batcher = StreamBatcher(interval_s=0.05, slow_interval_s=0.075, small_chars=48)
    sent: list[float] = []
    take = batcher.take
    batcher.take = lambda now: (sent.append(now), take(now))[1]  # type: ignore[method-assign]
    added, waits = simulate(batcher, tokens_per_s, seconds=4.0)
    assert added >= tokens_per_s * 4.0 - 1
    assert len(waits) == added  # every token went, once
    assert max(waits) <= 0.075 + 1e-9  # the bound on holding text back
    assert len(sent) / 4.0 <= most_per_s  # a trickle: at most about 13 a second


def test_snapshot_covers_what_was_sent_and_later_batches_continue_it() -> None:
    batcher = StreamBatcher()
    assert batcher.snapshot() is None
    batcher.begin("r1")
    batcher.add("Hello")
    first = batcher.take(now=1.0)
    batcher.add(", world")
    snapshot = batcher.snapshot()
    assert snapshot == {"type": "snapshot", "reply": "r1", "text": "Hello"}
    rest = batcher.take(now=2.0)
    assert rest == {"type": "chunk", "reply": "r1", "offset": 5, "text": ", world"}
    # In either order, a view ends with the whole text.
    for order in ([first, snapshot, rest], [snapshot, rest, first], [snapshot, first, rest]):
        text = ""
        for message in order:
            text = apply(text, message)  # type: ignore[arg-type]
        assert text == "Hello, world"


def test_nothing_to_take_between_replies() -> None:
    batcher = StreamBatcher()
    batcher.begin("r1")
    assert batcher.take(0.0) is None
    batcher.add("x")
    batcher.end()
    assert batcher.take(1.0) is None
    assert batcher.snapshot() is None


def test_transcript_sync_sends_the_changed_tail_only() -> None:
    sync = TranscriptSync()
    first, second, third = {"content": "a"}, {"content": "b"}, {"content": "c"}
    assert sync.update([first, second]) == {
        "type": "transcript",
        "from": 0,
        "records": [first, second],
    }
    assert sync.update([first, second]) is None  # nothing changed: nothing sent
    changed = {"content": "b, longer"}
    assert sync.update([first, changed, third]) == {
        "type": "transcript",
        "from": 1,
        "records": [changed, third],
    }
    assert sync.update([]) == {"type": "transcript", "from": 0, "records": []}
    assert sync.snapshot() == {"type": "transcript", "from": 0, "records": []}
