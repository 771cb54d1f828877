"""Chat end to end over real WebSockets on loopback: streaming, stop, pause/resume,
multi-turn history, concurrency, errors, and a gateway started by `nbchat serve`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas
import pytest

from nbchat import Chat, Reply
from nbchat.gateway import EmbeddedGateway
from nbchat.gateway.providers.base import Request
from nbchat.gateway.providers.demo import demo_reply
from nbchat.protocol import ChatMessage

from timeouts import TIMEOUT, wait_until


def expected(*history: str) -> str:
    """The demo model's reply to the given alternating user/assistant history."""
    roles = ["user", "assistant"] * len(history)
    messages = tuple(ChatMessage(r, t) for r, t in zip(roles, history, strict=False))  # type: ignore[arg-type]
    return demo_reply(Request(messages=messages, model="demo"))


def test_a_reply_streams_in_several_chunks_in_order(chat: Chat) -> None:
    reply = chat.send("Explain WebSockets in two sentences", tokens_per_s=200)
    assert reply.status == "pending"  # send() returned before anything arrived
    seen = list(reply)  # iterate as chunks arrive
    assert len(seen) > 20
    assert "".join(seen) == reply.text == expected("Explain WebSockets in two sentences")
    assert reply.status == "done"
    assert reply.finish == "stop"
    assert reply.error is None
    assert reply.usage is not None
    assert reply.usage["completion_tokens"] == len(seen)


def test_wait_returns_the_reply_and_times_out_clearly(chat: Chat) -> None:
    slow = chat.send("hi", tokens_per_s=5)
    with pytest.raises(TimeoutError, match=r"still (streaming|pending)"):
        slow.wait(timeout=0.2)
    assert slow.stop().wait(TIMEOUT) is slow


def test_stop_ends_the_reply_quickly_and_keeps_the_partial_text(chat: Chat) -> None:
    reply = chat.send("tell me everything", tokens_per_s=50)
    wait_until(lambda: len(reply.chunks) >= 5, "a few chunks")
    asked = time.monotonic()
    assert chat.stop() is reply
    reply.wait(TIMEOUT)
    latency = time.monotonic() - asked
    assert reply.status == "stopped"
    assert reply.finish == "stopped"
    assert 0 < len(reply.text) < len(expected("tell me everything"))
    assert expected("tell me everything").startswith(reply.text)
    assert latency < 0.1, f"stop took {latency * 1000:.0f} ms"
    last = chat.messages[-1]
    assert last["finish"] == "stopped"
    assert last["content"] == reply.text


def test_pause_holds_and_resume_completes_with_the_same_text(chat: Chat) -> None:
    reply = chat.send("pause me", tokens_per_s=40)
    wait_until(lambda: len(reply.chunks) >= 3, "a few chunks")
    reply.pause()
    wait_until(lambda: reply.status == "paused", "paused")
    held_at = len(reply.text)
    time.sleep(1.0)
    assert len(reply.text) == held_at, "text grew while paused"
    chat.resume()
    reply.wait(TIMEOUT)
    assert reply.finish == "stop"
    assert reply.text == expected("pause me")
    # The time paused was spent generating: what was held arrived in one piece.
    assert any(len(c) > 20 for c in reply.chunks)


def test_a_second_turn_carries_the_history(chat: Chat) -> None:
    first = chat.send("first question").wait(TIMEOUT)
    second = chat.send("and the second?").wait(TIMEOUT)
    assert second.text == expected("first question", first.text, "and the second?")
    assert "turn 2" in second.text
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_a_send_while_streaming_is_queued_and_runs_next(chat: Chat) -> None:
    first = chat.send("one", tokens_per_s=100)
    second = chat.send("two")
    assert second.status == "pending"
    second.wait(TIMEOUT)
    assert first.finished
    assert first.finish == "stop"
    assert second.text == expected("one", first.text, "two")


def test_stopping_a_queued_reply_means_it_never_starts(chat: Chat) -> None:
    first = chat.send("one", tokens_per_s=100)
    second = chat.send("two")
    second.stop()
    first.wait(TIMEOUT)
    assert second.wait(TIMEOUT).finish == "stopped"
    assert second.text == ""
    assert [m["content"] for m in chat.messages if m["role"] == "user"] == ["one"]


def test_two_chats_stream_at_once_without_mixing(embedded: EmbeddedGateway) -> None:
    with (
        Chat(url=embedded.url, token=embedded.token, tokens_per_s=100) as a,
        Chat(url=embedded.url, token=embedded.token, tokens_per_s=100) as b,
    ):
        ra, rb = a.send("alpha question"), b.send("beta question")
        wait_until(lambda: ra.chunks and rb.chunks, "both streaming")
        assert not (ra.finished)
        assert not (rb.finished)
        ra.wait(TIMEOUT)
        rb.wait(TIMEOUT)
        assert ra.text == expected("alpha question")
        assert rb.text == expected("beta question")


def test_await_and_async_iteration_do_not_block_the_callers_loop(chat: Chat) -> None:
    async def main() -> tuple[list[str], Reply, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        reply = chat.send("async please", tokens_per_s=100)
        chunks = [chunk async for chunk in reply]
        again = await reply
        task.cancel()
        return chunks, again, ticks

    chunks, reply, ticks = asyncio.run(main())
    assert "".join(chunks) == reply.text == expected("async please")
    assert ticks > 5  # the caller's loop kept running while it waited


def test_max_tokens_ends_with_finish_length(chat: Chat) -> None:
    reply = chat.send("hi", max_tokens=7).wait(TIMEOUT)
    assert reply.finish == "length"
    assert reply.status == "done"
    assert len(reply.chunks) == 7


def test_system_prompt_is_sent_first(embedded: EmbeddedGateway) -> None:
    with Chat(url=embedded.url, token=embedded.token, system="Be terse.", tokens_per_s=0) as chat:
        reply = chat.send("hi").wait(TIMEOUT)
        history = (ChatMessage("system", "Be terse."), ChatMessage("user", "hi"))
        assert reply.text == demo_reply(Request(messages=history, model="demo"))
        assert chat.system == "Be terse."


def test_to_dataframe_has_timing_per_reply(chat: Chat) -> None:
    chat.send("one").wait(TIMEOUT)
    chat.send("two", tokens_per_s=300).wait(TIMEOUT)
    frame = chat.to_dataframe()
    assert frame["role"].tolist() == ["user", "assistant", "user", "assistant"]
    replies = frame[frame["role"] == "assistant"]
    assert (replies["first_token_s"] > 0).all()
    assert (replies["duration_s"] >= replies["first_token_s"]).all()
    assert (replies["chunks"] > 10).all()
    assert (replies["tokens_per_s"] > 0).all()
    assert replies["model"].tolist() == ["demo", "demo"]
    assert frame[frame["role"] == "user"]["duration_s"].isna().all()


def test_time_paused_is_left_out_of_the_timing_and_counted_apart(chat: Chat) -> None:
    sent = time.time()
    reply = chat.send("Pause me for a second", tokens_per_s=50)
    wait_until(lambda: len(reply.text) > 10, "the first text")
    reply.pause()
    wait_until(lambda: reply.status == "paused", "the pause")
    time.sleep(1.0)
    reply.resume()
    reply.wait(TIMEOUT)
    wall = time.time() - sent
    row = chat.to_dataframe().iloc[-1]
    assert row["paused_s"] >= 1.0  # from the paused event to the resumed one, at least
    assert row["duration_s"] + row["paused_s"] <= wall
    assert row["duration_s"] > row["first_token_s"] > 0
    # Generation goes on while delivery is paused: the rate is the model's, not
    # inflated by leaving the pause out (it read 2.6 times the unpaused rate).
    chat.send("Pause me for a second", tokens_per_s=50).wait(TIMEOUT)
    unpaused = chat.to_dataframe().iloc[-1]
    assert row["tokens_per_s"] == pytest.approx(unpaused["tokens_per_s"], rel=0.3)
    assert "paused" in chat.to_markdown()
    assert pandas.isna(chat.to_dataframe().iloc[-4]["paused_s"])  # the user's row


def test_a_message_is_stamped_when_sent_and_its_reply_when_it_starts(chat: Chat) -> None:
    chat.send("a slow first one", tokens_per_s=100)
    chat.send("queued behind it", tokens_per_s=0).wait(TIMEOUT)
    frame = chat.to_dataframe()
    assert frame["content"].tolist()[2] == "queued behind it"
    stamps = [t.timestamp() for t in frame["created_at"]]
    first_ended = stamps[1] + frame["duration_s"].iloc[1]
    assert stamps[2] < first_ended  # sent while the first reply streamed
    assert stamps[3] >= first_ended - 0.01  # its reply started once the first had ended


def test_clear_starts_a_fresh_transcript(chat: Chat) -> None:
    chat.send("remember me").wait(TIMEOUT)
    chat.clear()
    wait_until(lambda: chat.messages == [], "an empty transcript")
    reply = chat.send("who am I?").wait(TIMEOUT)
    assert reply.text == expected("who am I?")


# --- errors a user can run into ------------------------------------------------------


def test_empty_text_is_refused(chat: Chat) -> None:
    with pytest.raises(ValueError, match="empty message"):
        chat.send("   ")


def test_unknown_model_ends_the_reply_with_a_clear_error(chat: Chat) -> None:
    chat.model = "gpt-nope"
    reply = chat.send("hi").wait(TIMEOUT)
    assert reply.status == "error"
    assert reply.finish == "error"
    assert reply.error == "unknown model 'gpt-nope'; available: demo"
    assert reply.error_code == "unknown_model"
    chat.model = "demo"
    assert chat.send("hi").wait(TIMEOUT).finish == "stop"  # the chat carries on


def test_unreachable_gateway_errors_instead_of_hanging() -> None:
    with Chat(url="ws://127.0.0.1:9/v1/chat") as chat:  # port 9: nothing listens
        reply = chat.send("anyone there?").wait(TIMEOUT)
        assert reply.status == "error"
        assert reply.error is not None
        assert reply.error.startswith("cannot reach the gateway at ws://127.0.0.1:9/v1/chat")
        # The transcript keeps the message and why it got no answer.
        assert [m["role"] for m in chat.messages] == ["user", "assistant"]
        assert chat.messages[-1]["error"] == reply.error
        assert chat.messages[-1]["finish"] == "error"
        assert chat.status == "offline"
        assert "cannot reach" in chat.error


def test_wrong_token_is_refused_clearly(embedded: EmbeddedGateway) -> None:
    with Chat(url=embedded.url, token="wrong") as chat:
        reply = chat.send("let me in").wait(TIMEOUT)
        assert reply.error == (f"the gateway at {embedded.url} refused: wrong or missing token")


def test_send_after_close_is_refused(embedded: EmbeddedGateway) -> None:
    chat = Chat(url=embedded.url, token=embedded.token)
    chat.close()
    with pytest.raises(RuntimeError, match="closed"):
        chat.send("hi")


def test_embedded_gateway_is_the_default() -> None:
    with Chat(tokens_per_s=0) as chat:
        reply = chat.send("hello").wait(TIMEOUT)
        assert reply.text == expected("hello")
        assert chat.models == ["demo"]
        assert chat.model == "demo"
        assert chat.url.startswith("ws://127.0.0.1:")


# --- nbchat serve --------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "nbchat", "serve", "--port", "0", "--token", "s3cret"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(TIMEOUT)
    match = re.search(r"ws://\S+", lines[0] if lines else "")
    assert match, f"nbchat serve printed no URL: {lines}"
    yield match.group(0)
    process.terminate()
    assert process.wait(TIMEOUT) == 0, process.stderr.read()  # type: ignore[union-attr]


def test_nbchat_serve_works_like_the_embedded_gateway(served: str) -> None:
    with Chat(url=served, token="s3cret", tokens_per_s=200) as chat:
        reply = chat.send("over a real process")
        # Streamed in several chunks; nbchat serve coalesces each 50 ms (at 200 tokens/s
        # about 10 tokens a chunk, where the embedded gateway sends one a token).
        assert len(list(reply)) > 5
        assert reply.text == expected("over a real process")
        second = chat.send("again", tokens_per_s=30)
        wait_until(lambda: len(second.chunks) >= 3, "a few chunks")
        second.stop().wait(TIMEOUT)
        assert second.finish == "stopped"


def test_save_load_and_from_dataframe_continue_the_conversation(
    embedded: EmbeddedGateway, tmp_path: Path
) -> None:
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0, system="Be brief.") as chat:
        for prompt in ("first question", "second question", "third question"):
            chat.send(prompt).wait(TIMEOUT)
        frame = chat.to_dataframe()
        path = chat.save(tmp_path / "chat.json")
    with Chat.load(path, url=embedded.url, token=embedded.token, tokens_per_s=0) as loaded:
        assert loaded.system == "Be brief."
        pandas.testing.assert_frame_equal(loaded.to_dataframe(), frame)
        reply = loaded.send("fourth question").wait(TIMEOUT)
        # The demo model's reply depends on the history: it was sent.
        assert "This is turn 4 of our conversation; it began with “first question”." in reply.text
    kept = frame[frame["turn"] >= 2]
    with Chat.from_dataframe(
        kept, url=embedded.url, token=embedded.token, tokens_per_s=0
    ) as rebuilt:
        assert [m["content"] for m in rebuilt.messages] == list(kept["content"])
        reply = rebuilt.send("and now?").wait(TIMEOUT)
        assert "it began with “second question”" in reply.text
        assert "**You**\n\nsecond question" in rebuilt.to_markdown()


def test_a_failed_save_leaves_the_existing_file_whole(chat: Chat, tmp_path: Path) -> None:
    chat.send("keep me").wait(TIMEOUT)
    path = chat.save(tmp_path / "chat.json")
    before = path.read_bytes()
    chat._conversation.transcript.messages[0].content = "caf\udce9"  # cannot be written
    with pytest.raises(UnicodeEncodeError):
        chat.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no partial file left


def test_load_refuses_what_it_cannot_hold_and_reads_a_bom(
    embedded: EmbeddedGateway, tmp_path: Path
) -> None:
    args = {"url": embedded.url, "token": embedded.token}
    with Chat(tokens_per_s=0, **args) as chat:
        chat.send("hello").wait(TIMEOUT)
        path = chat.save(tmp_path / "chat.json")
    text = path.read_text(encoding="utf-8")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    with Chat.load(bom, **args) as loaded:
        assert loaded.messages[0]["content"] == "hello"
    nan = tmp_path / "nan.json"
    nan.write_text(text.replace('"created_at": ', '"created_at": NaN, "x": ', 1))
    with pytest.raises(ValueError, match="NaN is not a number a transcript can hold"):
        Chat.load(nan, **args)


def test_from_dataframe_reads_numeric_created_at_as_unix_seconds(
    embedded: EmbeddedGateway,
) -> None:
    frame = pandas.DataFrame([{"role": "user", "content": "hi", "created_at": 1_700_000_000.0}])
    with Chat.from_dataframe(frame, url=embedded.url, token=embedded.token) as chat:
        assert chat.messages[0]["created_at"] == 1_700_000_000.0
