"""compare.py: one prompt to several models at once (``chat.compare``), end to end over
a gateway in front of the replay server's recorded provider streams and the demo."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import IPython.display
import pytest

import nbchat
from nbchat import Chat, Compare, frontend, widget
from nbchat.backoff import Backoff
from nbchat.compare import COMPARE_COLUMNS, MAX_MODELS
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.config import load_models
from nbchat.reply import Reply

from replay_server import Replay
from timeouts import TIMEOUT, wait_until

CONFIG = """
[[models]]
name = "gpt"
provider = "openai-compatible"
model = "gpt-4o-mini"
base_url = "{base}"
api_key_env = "NBCHAT_TEST_KEY"

[[models]]
name = "claude"
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{anthropic}"
api_key_env = "NBCHAT_TEST_ANTHROPIC_KEY"

[[models]]
name = "long"
provider = "openai-compatible"
base_url = "{base}"
api_key_env = "NBCHAT_TEST_KEY"
"""
GPT_TEXT = "WebSockets keep one TCP connection open in both directions."
CLAUDE_TEXT = "Hello! How can I help you today?"


@pytest.fixture
def gateway(tmp_path: Path, replay: Replay, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A gateway serving gpt and claude (recorded streams), long, and the demo."""
    monkeypatch.setenv("NBCHAT_TEST_KEY", "sk-test")
    monkeypatch.setenv("NBCHAT_TEST_ANTHROPIC_KEY", "sk-ant-test")
    path = tmp_path / "nbchat.toml"
    path.write_text(
        CONFIG.format(base=replay.base_url, anthropic=f"http://127.0.0.1:{replay.port}")
    )
    models = asyncio.run(load_models(path, os.environ))
    replay.event_delay_s = 0.03  # a recorded reply takes about half a second
    embedded = EmbeddedGateway(Gateway(models=models, token="t")).start()
    yield embedded.url
    embedded.close()


@pytest.fixture
def chat(gateway: str) -> Iterator[Chat]:
    """A chat on that gateway with one turn of history already."""
    with Chat(url=gateway, token="t", model="demo", system="Be brief.") as c:
        c.send("hi", tokens_per_s=0).wait(TIMEOUT)
        yield c


class Timeline:
    """When each reply's first chunk and its end arrived (a thread per reply)."""

    def __init__(self, replies: dict[str, Reply]) -> None:
        self.first: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.threads = [
            threading.Thread(target=self._follow, args=(name, reply), daemon=True)
            for name, reply in replies.items()
        ]
        for thread in self.threads:
            thread.start()

    def _follow(self, name: str, reply: Reply) -> None:
        for _chunk in reply:
            self.first.setdefault(name, time.monotonic())
        self.end[name] = time.monotonic()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(TIMEOUT)


# The most comm messages (text batches and state updates) a pane may get in any one
# second: one per 50 ms, and the tick at the window's edge may carry text and state.
MAX_MESSAGES_PER_S = 20 + 2


@pytest.fixture
def traffic(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, dict[str, Any]]]:
    """Every comm message a Compare sends (state updates and custom messages), timed."""
    sent: list[tuple[float, dict[str, Any]]] = []
    send = Compare._send

    def record(self: Compare, msg: dict[str, Any], buffers: Any = None) -> None:
        if self.comm is not None:  # what goes out (not the traits set before it opens)
            sent.append((time.monotonic(), msg))
        send(self, msg, buffers)

    monkeypatch.setattr(Compare, "_send", record)
    return sent


def most_in_a_second(sent: list[tuple[float, dict[str, Any]]]) -> int:
    times = [t for t, _m in sent]
    first, most = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def record_pushes(cmp: Compare) -> list[tuple[float, dict[str, Any]]]:
    pushed: list[tuple[float, dict[str, Any]]] = []
    cmp._push = lambda message: pushed.append((time.monotonic(), message))  # type: ignore[method-assign]
    return pushed


def assemble(pushed: list[tuple[float, dict[str, Any]]], columns: int) -> list[str]:
    """What a pane builds from the batches: each column's text, by offset."""
    texts = [""] * columns
    for _at, message in pushed:
        assert message["type"] == "batch"
        for part in message["messages"]:
            i = part["column"]
            if part["type"] == "snapshot":
                texts[i] = part["text"] if len(part["text"]) > len(texts[i]) else texts[i]
            else:
                assert part["offset"] <= len(texts[i]), "a gap"
                texts[i] = texts[i][: part["offset"]] + part["text"]
    return texts


def test_three_models_stream_at_once_each_from_the_chats_history(
    chat: Chat, replay: Replay, traffic: list[tuple[float, dict[str, Any]]]
) -> None:
    before = chat.messages
    cmp = chat.compare("explain p-values", {"gpt": {}, "claude": {}, "demo": {"tokens_per_s": 60}})
    pushed = record_pushes(cmp)
    timeline = Timeline(cmp.replies)
    cmp.wait(TIMEOUT)
    timeline.join()

    assert cmp.models == ["gpt", "claude", "demo"]
    assert [r.finish for r in cmp.replies.values()] == ["stop", "stop", "stop"]
    assert cmp.replies["gpt"].text == GPT_TEXT
    assert cmp.replies["claude"].text == CLAUDE_TEXT
    assert "explain p-values" in cmp.replies["demo"].text
    # All at once: every stream had begun before any of them ended.
    assert max(timeline.first.values()) < min(timeline.end.values()), (timeline.first, timeline.end)
    # Each model got the chat's history, system prompt and the prompt.
    bodies = [r["body"] for r in replay.requests if "body" in r]
    openai = next(b for b in bodies if b["model"] == "gpt-4o-mini")
    assert openai["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": before[1]["content"]},
        {"role": "user", "content": "explain p-values"},
    ]
    anthropic = next(b for b in bodies if b["model"] == "claude-sonnet-4-6")
    assert anthropic["messages"][-1]["content"] in (
        "explain p-values",
        [{"type": "text", "text": "explain p-values"}],
    )
    assert chat.messages == before  # the chat itself is untouched until a pick

    # The pane got each column's text whole, in batches for all columns together.
    assert assemble(pushed, 3) == [r.text for r in cmp.replies.values()]
    chunks = sum(len(r.chunks) for r in cmp.replies.values())
    assert len(pushed) < chunks / 2
    assert any(len({p["column"] for p in m["messages"]}) > 1 for _t, m in pushed)
    # Text and state together: one message per 50 ms at most, for the whole pane.
    assert most_in_a_second(traffic) <= MAX_MESSAGES_PER_S

    frame = cmp.to_dataframe()
    assert list(frame.columns) == list(COMPARE_COLUMNS)
    assert frame["model"].tolist() == ["gpt", "claude", "demo"]
    assert frame["finish"].tolist() == ["stop", "stop", "stop"]
    assert frame["text"].tolist() == [r.text for r in cmp.replies.values()]
    assert (frame["first_token_s"] > 0).all()
    assert (frame["duration_s"] >= frame["first_token_s"]).all()
    assert frame["completion_tokens"].tolist()[:2] == [11, 15]
    assert frame["prompt_tokens"].notna().all()
    costs = frame["cost"].tolist()
    assert math.isnan(costs[0])
    assert math.isnan(costs[1])
    assert costs[2] == 0.0  # the demo is free
    # The pane's state says the same, once per column.
    assert [c["status"] for c in cmp.columns] == ["done", "done", "done"]
    assert cmp.columns[0]["completion_tokens"] == 11
    assert cmp.columns[2]["cost"] == 0.0
    cmp.close()


def test_stopping_one_column_leaves_the_others_running_to_their_end(
    chat: Chat, replay: Replay
) -> None:
    with chat.compare("go on", {"long": {}, "gpt": {}, "demo": {"tokens_per_s": 60}}) as cmp:
        long = cmp.replies["long"]
        wait_until(lambda: len(long.chunks) >= 3, "the long reply streaming")
        # Pause and resume one column (from code), stop it (from the pane's button).
        cmp.pause("long")
        wait_until(lambda: cmp.columns[0]["status"] == "paused", "long paused")
        assert cmp.replies["demo"].status in ("streaming", "done")
        cmp.resume("long")
        wait_until(lambda: cmp.columns[0]["status"] == "streaming", "long resumed")
        cmp._on_pane_message(cmp, {"type": "stop", "column": 0}, None)
        assert long.wait(TIMEOUT).finish == "stopped"
        assert not cmp.replies["demo"].finished  # still going when long was stopped
        cmp.wait(TIMEOUT)
        assert [r.finish for r in cmp.replies.values()] == ["stopped", "stop", "stop"]
        assert long.text.startswith(" word0 word1 word2")
        assert cmp.replies["gpt"].text == GPT_TEXT
        frame = cmp.to_dataframe()
        assert frame["finish"].tolist() == ["stopped", "stop", "stop"]
        assert frame["duration_s"].notna().all()
        assert cmp.columns[0]["status"] == "stopped"
        with pytest.raises(ValueError, match="no column for model 'nope'"):
            cmp.stop("nope")


def test_stop_all_and_pause_all_act_on_every_column(chat: Chat) -> None:
    cmp = chat.compare("go on", {"long": {}, "demo": {"tokens_per_s": 20}})
    try:
        wait_until(lambda: all(r.chunks for r in cmp.replies.values()), "both streaming")
        cmp._on_pane_message(cmp, {"type": "pause"}, None)
        wait_until(lambda: all(c["status"] == "paused" for c in cmp.columns), "all paused")
        cmp.resume()
        wait_until(lambda: all(c["status"] == "streaming" for c in cmp.columns), "resumed")
        cmp.stop()
        cmp.wait(TIMEOUT)
        assert [r.finish for r in cmp.replies.values()] == ["stopped", "stopped"]
    finally:
        cmp.close()


def test_pick_continues_the_chat_with_that_answer_on_that_model(chat: Chat, replay: Replay) -> None:
    cmp = chat.compare("explain p-values", {"gpt": {}, "demo": {"tokens_per_s": 0}})
    with pytest.raises(RuntimeError, match="still"):
        cmp.pick("gpt")  # running
    cmp.wait(TIMEOUT)
    pane: list[dict[str, Any]] = []
    chat._push = pane.append  # type: ignore[method-assign]
    picked = cmp.pick("gpt")
    assert picked is cmp.replies["gpt"]
    assert chat.model == "gpt"
    user, answer = chat.messages[-2:]
    assert (user["role"], user["content"], user["turn"]) == ("user", "explain p-values", 2)
    assert (answer["role"], answer["content"], answer["model"]) == ("assistant", GPT_TEXT, "gpt")
    assert answer["finish"] == "stop"
    assert answer["first_token_s"] is not None
    assert answer["duration_s"] is not None
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (14, 11)
    assert answer["reply_id"] == picked.id
    frame = chat.to_dataframe()
    assert frame["completion_tokens"].iloc[-1] == 11
    # The chat's pane heard of the two new messages.
    assert any(m["type"] == "transcript" and m["records"][-1]["content"] == GPT_TEXT for m in pane)
    with pytest.raises(RuntimeError, match="picked already"):
        cmp.pick("demo")

    # The next message goes to gpt, with the picked answer in its history.
    reply = chat.send("and in one line?").wait(TIMEOUT)
    assert reply.model == "gpt"
    body = [r["body"] for r in replay.requests if "body" in r][-1]
    assert body["messages"][-3:] == [
        {"role": "user", "content": "explain p-values"},
        {"role": "assistant", "content": GPT_TEXT},
        {"role": "user", "content": "and in one line?"},
    ]
    cmp.close()


def test_pick_is_refused_when_it_would_not_continue_this_conversation(chat: Chat) -> None:
    cmp = chat.compare("explain p-values", ["demo", "no-such-model"], tokens_per_s=0).wait(TIMEOUT)
    with pytest.raises(ValueError, match="no-such-model's reply failed"):
        cmp.pick("no-such-model")
    with pytest.raises(ValueError, match="no column for model 'gpt'"):
        cmp.pick("gpt")
    running = chat.send("something else", tokens_per_s=5)  # the chat's model: demo
    with pytest.raises(RuntimeError, match="the chat has a reply running"):
        cmp.pick("demo")
    running.stop().wait(TIMEOUT)
    with pytest.raises(RuntimeError, match="changed since this comparison started"):
        cmp.pick("demo")  # the chat moved on: this answer replies to another history
    assert chat.messages[-2]["content"] == "something else"
    cmp.close()


def test_an_unknown_model_errors_in_its_column_and_the_others_finish(chat: Chat) -> None:
    with chat.compare(
        "explain p-values", {"gpt": {}, "no-such-model": {}, "demo": {"tokens_per_s": 0}}
    ) as cmp:
        cmp.wait(TIMEOUT)
        bad = cmp.replies["no-such-model"]
        assert (bad.finish, bad.error_code) == ("error", "unknown_model")
        assert "no-such-model" in (bad.error or "")
        assert [r.finish for r in cmp.replies.values()] == ["stop", "error", "stop"]
        assert cmp.columns[1]["status"] == "error"
        assert "unknown model" in cmp.columns[1]["error"]
        assert cmp.to_dataframe()["error"].notna().tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("prompt", "models", "params", "message"),
    [
        ("hi", [], {}, "at least one model"),
        ("hi", "demo", {}, "must be a list of model names"),
        ("hi", None, {}, "must be a list of model names"),
        ("hi", ["demo", "demo"], {}, "listed twice"),
        ("hi", ["demo", ""], {}, "non-empty name"),
        ("hi", ["demo", 3], {}, "non-empty name or a function"),
        ("hi", [f"m{i}" for i in range(MAX_MODELS + 1)], {}, "at most 16 models"),
        ("", ["demo"], {}, "empty prompt"),
        ("   ", ["demo"], {}, "empty prompt"),
        (None, ["demo"], {}, "empty prompt"),
        ("hi", ["demo", "gpt"], {"temperature": float("nan")}, "cannot send these params"),
    ],
)
def test_bad_input_is_refused_clearly_before_anything_is_sent(
    chat: Chat, prompt: Any, models: Any, params: dict[str, Any], message: str
) -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match=message):
        chat.compare(prompt, models, **params)
    wait_until(lambda: threading.active_count() <= threads, "no thread left behind")
    assert chat.send("still fine", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


def test_a_view_that_renders_late_gets_every_columns_text_so_far(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    with chat.compare("explain p-values", {"long": {}, "demo": {"tokens_per_s": 200}}) as cmp:
        pushed = record_pushes(cmp)
        wait_until(lambda: len(cmp.replies["long"].chunks) >= 5, "streaming")
        cmp._on_pane_message(cmp, {"type": "sync"}, None)  # a view rendered now
        snapshot = next(m for _t, m in reversed(pushed) if m["messages"][0]["type"] == "snapshot")
        assert [m["column"] for m in snapshot["messages"]] == [0, 1]
        assert all(m["text"] for m in snapshot["messages"])
        cmp.stop("long")
        cmp.wait(TIMEOUT)
        # From the snapshot on, the batches complete each column exactly.
        at = next(i for i, (_t, m) in enumerate(pushed) if m is snapshot)
        assert assemble(pushed[at:], 2) == [r.text for r in cmp.replies.values()]
        # Bad pane messages are logged and ignored (a pane of another version); the
        # kernel lives.
        bad_messages = (
            {"type": "explode"},
            {"type": "stop", "column": 9},
            {"type": "pick"},
            {"type": "pick", "column": True},
            "stop",
            None,
        )
        for bad in bad_messages:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="nbchat"):
                cmp._on_pane_message(cmp, bad, None)
            assert [r.levelname for r in caplog.records] == ["WARNING"], bad
            assert caplog.records[0].getMessage().startswith("nbchat compare pane: ")
        assert cmp.error == ""


def test_python_functions_compare_with_configured_models() -> None:
    async def shouty(messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        for word in messages[-1]["content"].upper().split():
            await asyncio.sleep(0.01)
            yield word + " "

    with Chat(tokens_per_s=0) as chat:
        with chat.compare("explain p-values", [shouty, "demo"]) as cmp:
            cmp.wait(TIMEOUT)
            assert cmp.models == ["shouty", "demo"]
            assert cmp.replies["shouty"].text == "EXPLAIN P-VALUES "
            cmp.pick("shouty")
        assert chat.model == "shouty"
        assert chat.send("again").wait(TIMEOUT).text == "AGAIN "


def test_compare_is_awaitable_and_its_repr_says_what_it_is(chat: Chat) -> None:
    async def main() -> Compare:
        return await chat.compare("explain p-values", {"gpt": {}, "demo": {"tokens_per_s": 0}})

    cmp = asyncio.run(main())
    assert cmp.finished
    assert repr(cmp) == "Compare('explain p-values', {gpt: done, demo: done})"
    cmp.close()
    cmp.close()  # idempotent
    assert cmp.to_dataframe()["finish"].tolist() == ["stop", "stop"]  # still readable


def test_a_pick_is_saved_with_a_named_conversation(
    gateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_HOME", str(tmp_path / "home"))
    models = {"gpt": {}, "demo": {"tokens_per_s": 0}}
    with (
        Chat(url=gateway, token="t", conversation="study") as chat,
        chat.compare("explain p-values", models) as cmp,
    ):
        cmp.wait(TIMEOUT)
        cmp.pick("gpt")
    with Chat(url=gateway, token="t", conversation="study") as again:
        assert [m["content"] for m in again.messages] == ["explain p-values", GPT_TEXT]
        assert again.messages[-1]["completion_tokens"] == 11
        assert again.model == "gpt"


def test_a_pause_right_after_compare_holds_every_column_from_its_start(chat: Chat) -> None:
    # The columns' connections are still opening, their replies queued: the pause waits
    # for each reply to start, and holds it from there.
    with chat.compare("explain p-values", {"gpt": {}, "demo": {"tokens_per_s": 40}}) as cmp:
        pushed = record_pushes(cmp)
        cmp.pause()
        wait_until(lambda: [c["status"] for c in cmp.columns] == ["paused"] * 2, "all paused")
        held = [r.text for r in cmp.replies.values()]
        time.sleep(1.0)
        assert [r.text for r in cmp.replies.values()] == held  # nothing grew meanwhile
        assert [r.status for r in cmp.replies.values()] == ["paused", "paused"]
        cmp.resume()
        cmp.wait(TIMEOUT)
        assert [r.finish for r in cmp.replies.values()] == ["stop", "stop"]
        assert cmp.replies["gpt"].text == GPT_TEXT
        assert assemble(pushed, 2) == [r.text for r in cmp.replies.values()]
    alone = chat.compare("explain p-values", {"demo": {"tokens_per_s": 0}}).wait(TIMEOUT)
    assert cmp.replies["demo"].text == alone.replies["demo"].text  # whole, nothing lost
    alone.close()


def test_compare_is_refused_while_the_chats_own_reply_runs_or_waits(chat: Chat) -> None:
    running = chat.send("first", tokens_per_s=20)
    wait_until(lambda: running.chunks, "the chat's reply streaming")
    queued = chat.send("second", tokens_per_s=20)
    message = "the chat has a reply running; wait for it or stop it, then compare"
    with pytest.raises(RuntimeError, match=message):
        chat.compare("third", ["demo"])  # its history would hold a half-written reply
    running.stop().wait(TIMEOUT)
    wait_until(lambda: queued.status != "pending", "the queued reply running")
    with pytest.raises(RuntimeError, match=message):
        chat.compare("third", ["demo"])
    queued.stop().wait(TIMEOUT)
    with chat.compare("third", {"demo": {"tokens_per_s": 0}}) as cmp:
        cmp.wait(TIMEOUT)
        with cmp._columns[0].conversation.lock:
            history = cmp._columns[0].conversation.transcript.history()
        sent = [m.content for m in history if m.role == "assistant"]
        assert sent[-3:] == [running.text, queued.text, cmp.replies["demo"].text]


def test_compare_and_pick_are_refused_once_the_chat_is_closed(gateway: str) -> None:
    chat = Chat(url=gateway, token="t", model="demo")
    cmp = chat.compare("explain p-values", {"demo": {"tokens_per_s": 0}}).wait(TIMEOUT)
    chat.close()
    with pytest.raises(RuntimeError, match="this chat is closed"):
        chat.compare("again", ["demo"])
    with pytest.raises(RuntimeError, match="this chat is closed"):
        cmp.pick("demo")
    assert cmp.error.startswith("this chat is closed")
    assert chat.messages == []  # nothing was added to the closed chat
    cmp.close()


def test_traffic_stays_bounded_for_the_whole_pane_with_sixteen_columns(
    traffic: list[tuple[float, dict[str, Any]]],
) -> None:
    def words(i: int) -> list[str]:
        return [f"w{k} " for k in range(100 + 6 * i)]  # they end one after another

    def streamer(i: int) -> Any:
        async def stream(messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
            for word in words(i):
                await asyncio.sleep(0.01)
                yield word

        stream.__name__ = f"stream{i}"
        return stream

    models = [streamer(i) for i in range(MAX_MODELS)]
    with Chat(tokens_per_s=0) as chat, chat.compare("count the traffic", models) as cmp:
        cmp.wait(3 * TIMEOUT)
        assert [c["status"] for c in cmp.columns] == ["done"] * MAX_MODELS
    expected = ["".join(words(i)) for i in range(MAX_MODELS)]
    assert [r.text for r in cmp.replies.values()] == expected
    customs = [(t, m["content"]) for t, m in traffic if m.get("method") == "custom"]
    assert assemble(customs, MAX_MODELS) == expected
    updates = [m for _t, m in traffic if m.get("method") == "update"]
    assert 1 <= len(updates) < 3 * MAX_MODELS  # coalesced: not one per column change
    assert most_in_a_second(traffic) <= MAX_MESSAGES_PER_S


def test_both_widgets_ship_one_bundle(chat: Chat) -> None:
    with chat.compare("explain p-values", {"demo": {"tokens_per_s": 0}}) as cmp:
        assert cmp.kind == "compare"  # the bundle's render draws the compare pane
        assert cmp._esm == chat._esm
        assert cmp._css == chat._css
    static = Path(nbchat.__file__).parent / "static"
    assert not list(static.glob("compare.*"))
    if (static / "widget.js").exists():
        assert "nbchat-compare-grid" in chat._css
        assert "Continue with this" in chat._esm


def test_a_compare_sends_as_the_chat_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    seen: dict[str, Any] = {}

    def seeing(messages: list[dict[str, Any]], **params: Any) -> Iterator[str]:
        seen["last"] = messages[-1]
        yield "a line going up"

    figure = Figure(figsize=(3, 2))
    figure.add_subplot().plot([1, 2, 3])
    monkeypatch.setattr(widget, "_user_namespace", lambda: ({"fig": figure}, frozenset()))
    backoff = Backoff(initial_s=0.2, give_up_after_s=5.0)
    with Chat(tokens_per_s=0, backoff=backoff, heartbeat_s=3.0) as chat:

        @chat.tool
        def secret() -> str:
            """A tool the models of a comparison are not offered."""
            return "s3cret"

        cmp = chat.compare("what is in @fig?", [seeing, "demo"], context={"notes": "rising"})
        with cmp:
            cmp.wait(TIMEOUT)
            # @name and context= attach as chat.send does; a Python function gets the
            # picture (the chat's local models take them).
            assert seen["last"]["images"][0].startswith("data:image/png;base64,")
            assert "Context `notes`" in seen["last"]["content"]
            demo = cmp.replies["demo"].text
            assert "Attached: notes" in demo
            assert "fig (" in demo
            for column in cmp._columns:
                link = column.conversation.connection
                assert (link.backoff, link.heartbeat_s) == (backoff, 3.0)
                assert column.conversation.tools == {}
            cmp.pick("seeing")
        user = chat.messages[-2]
        assert [a["name"] for a in user["context"]] == ["notes", "fig"]


def test_cost_is_the_records_at_the_chats_prices_of_now(chat: Chat) -> None:
    chat.prices = {"demo": (1000.0, 2000.0)}
    cmp = chat.compare("explain p-values", {"demo": {"tokens_per_s": 0}}).wait(TIMEOUT)
    record = cmp._columns[0].conversation.records()[-1]
    usage = cmp.replies["demo"].usage or {}
    dollars = (usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000) / 1e6
    assert record["cost"] == pytest.approx(dollars)
    assert cmp.to_dataframe()["cost"].tolist() == [pytest.approx(dollars)]
    assert cmp.columns[0]["cost"] == pytest.approx(dollars)
    chat.prices = {"demo": (0.0, 0.0)}
    assert cmp.to_dataframe()["cost"].tolist() == [0.0]  # not the prices of its start
    wait_until(lambda: cmp.columns[0]["cost"] == 0.0, "the pane's footer repriced")
    cmp.pick("demo")
    assert chat.messages[-1]["cost"] == 0.0
    cmp.close()


def test_a_saved_notebook_shows_a_line_not_a_stale_repr(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[dict[str, Any]] = []
    monkeypatch.setattr(frontend, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda data, **_kw: shown.append(data))
    with chat.compare("explain p-values", {"gpt": {}, "demo": {"tokens_per_s": 0}}) as cmp:
        cmp._ipython_display_()
        (data,) = shown
        assert data["text/plain"] == "nbchat compare pane (live widget): gpt, demo"
        assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == cmp.model_id


def test_the_panes_continue_with_this_picks_and_shows_why_it_cannot(chat: Chat) -> None:
    cmp = chat.compare("explain p-values", {"gpt": {}, "demo": {"tokens_per_s": 5}})
    try:
        cmp.replies["gpt"].wait(TIMEOUT)
        cmp._on_pane_message(cmp, {"type": "pick", "column": 1}, None)  # demo streams
        assert cmp.error.startswith("demo's reply is still streaming")
        assert cmp.picked == ""
        cmp._on_pane_message(cmp, {"type": "pick", "column": 0}, None)
        assert (cmp.error, cmp.picked, chat.model) == ("", "gpt", "gpt")
        assert chat.messages[-1]["content"] == GPT_TEXT
        cmp.stop("demo")
        cmp.wait(TIMEOUT)
        with pytest.raises(RuntimeError, match="picked already"):
            cmp.pick("demo")  # from code: raised, and shown in the pane
        assert cmp.error == "this comparison was picked already ('gpt')"
    finally:
        cmp.close()
