"""The offline demo model: deterministic Markdown, pacing, max_tokens."""

from __future__ import annotations

import asyncio

import pytest

from nbchat.gateway.providers import DemoProvider, Finish, ProviderError, Request, TextChunk
from nbchat.gateway.providers.demo import count_tokens, demo_reply, reply_shape, tokenize
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


def list_items(reply: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in reply.splitlines() if line[:1].isdigit()]


@pytest.mark.parametrize("words", [0, 30, 100, 300])
def test_no_list_item_is_repeated(words: int) -> None:
    for history in (("hi " + "word " * words,), ("first", "second " * words)):
        items = list_items(demo_reply(request(*history)))
        assert len(items) >= 3
        assert len(set(items)) == len(items), items


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("Make a table of fruits and their colours", "table"),
        ("Compare Python and Rust", "table"),
        ("Write a Python function to reverse a string", "code"),
        ("Show me some SQL", "code"),
        ("What is the formula for the variance?", "math"),
        ("Solve this equation for x", "math"),
        ("Explain WebSockets in two sentences", "text"),
        ("hi", "text"),
        ("Write code that prints a table", "code"),  # the first word that asks decides
        ("A table of formulas", "table"),
    ],
)
def test_the_shape_of_the_question_is_recognised(text: str, shape: str) -> None:
    assert reply_shape(text) == shape


def test_asked_for_a_table_it_gives_a_markdown_table() -> None:
    reply = demo_reply(request("Make a table of fruits | colours"))
    lines = reply.splitlines()
    header = lines.index("| # | word | letters | vowels | capitalised |")
    assert lines[header + 1] == "|--:|:-----|--------:|-------:|:-----------:|"
    rows = lines[header + 2 : lines.index("", header)]
    assert rows[0] == "| 1 | Make | 4 | 2 | yes |"
    assert "| 5 | fruits | 6 | 2 | no |" in rows
    assert all(row.count(" | ") == 4 for row in rows)  # the "|" of the message is no cell
    assert "```" not in reply


@pytest.mark.parametrize(
    ("text", "fence"),
    [
        ("Write a function that counts words", "```python\n"),
        ("Some javascript please", "```javascript\n"),
        ("A SQL statement for it", "```sql\n"),
        ("a bash script", "```bash\n"),
    ],
)
def test_asked_for_code_it_gives_a_fenced_block(text: str, fence: str) -> None:
    reply = demo_reply(request(text))
    assert reply.count(fence) == 1
    assert reply.count("```") == 2  # one block, closed
    assert text[:20] in reply.split(fence, 1)[1]  # the code works on the message


def test_asked_for_math_it_gives_inline_and_display_formulas() -> None:
    reply = demo_reply(request("What is the formula for the variance?"))
    assert "$n = 7$" in reply  # computed from the message: seven words
    assert "$\\bar{x} = 4.29$" in reply  # (4 + 2 + 3 + 7 + 3 + 3 + 8) / 7
    assert reply.count("\n$$\n") == 4  # two display formulas, each on lines of its own
    assert "\\frac{1}{n - 1}" in reply
    assert "```" not in reply


@pytest.mark.parametrize(
    "text", ["a table please", "write some code", "the formula for it", "hello"]
)
def test_every_shape_quotes_the_user_and_follows_the_history(text: str) -> None:
    first = demo_reply(request(text))
    assert first.startswith(f"**Demo reply.** You wrote: \u201c{text}\u201d.")
    assert first.endswith("This is the first turn of our conversation.")
    assert first == demo_reply(request(text))  # deterministic
    later = demo_reply(request("how it began", text))
    assert later.endswith(
        "This is turn 2 of our conversation; it began with \u201chow it began\u201d."
    )


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
