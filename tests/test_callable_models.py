"""Python callables as models (``Chat(model=fn)``, ``register_model``), end to end over
real loopback WebSockets through the embedded gateway of this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import nbchat
from nbchat import Chat, register_model
from nbchat.gateway import EmbeddedGateway
from nbchat.local_models import MODELS

from timeouts import TIMEOUT, wait_until

WORDS = ["one ", "two ", "three ", "four ", "five "]


@pytest.fixture
def make_chat() -> Iterator[Callable[..., Chat]]:
    """Chats on the process's embedded gateway (no url), closed after the test."""
    chats: list[Chat] = []

    def make(**kwargs: Any) -> Chat:
        chat = Chat(**kwargs)
        chats.append(chat)
        return chat

    yield make
    for chat in chats:
        chat.close()


# --- each kind of callable ----------------------------------------------------------


def sync_function(messages: list[dict[str, str]], **params: Any) -> str:
    return "".join(WORDS)


def sync_generator(messages: list[dict[str, str]], **params: Any) -> Iterator[str]:
    for word in WORDS:
        time.sleep(0.005)  # separate deltas
        yield word


async def async_function(messages: list[dict[str, str]], **params: Any) -> str:
    await asyncio.sleep(0)
    return "".join(WORDS)


async def async_generator(messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
    for word in WORDS:
        await asyncio.sleep(0.005)
        yield word


@pytest.mark.parametrize(
    ("fn", "chunks"),
    [
        (sync_function, ["".join(WORDS)]),
        (sync_generator, WORDS),
        (async_function, ["".join(WORDS)]),
        (async_generator, WORDS),
    ],
)
def test_each_kind_of_callable_streams_its_chunks_in_order(
    make_chat: Callable[..., Chat], fn: Callable[..., Any], chunks: list[str]
) -> None:
    chat = make_chat(model=fn)
    assert chat.model == fn.__name__
    reply = chat.send("go").wait(TIMEOUT)
    assert reply.status == "done", reply.error
    assert reply.model == fn.__name__
    assert reply.chunks == chunks
    assert reply.text == "".join(WORDS)


def test_sync_callables_run_on_a_worker_thread_async_ones_on_the_gateway_loop(
    make_chat: Callable[..., Chat],
) -> None:
    threads: dict[str, str] = {}

    def plain(messages: list[dict[str, str]]) -> str:
        threads["plain"] = threading.current_thread().name
        return "ok"

    async def coroutine(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        threads["async"] = threading.current_thread().name
        yield "ok"

    chat = make_chat(model=plain)
    assert chat.send("a").wait(TIMEOUT).text == "ok"
    chat.model = coroutine
    assert chat.send("b").wait(TIMEOUT).text == "ok"
    assert threads["async"] == "nbchat-gateway"
    assert threads["plain"] not in ("nbchat-gateway", threading.main_thread().name)


def test_a_blocking_sync_function_does_not_hold_up_other_chats(
    make_chat: Callable[..., Chat],
) -> None:
    release = threading.Event()

    def slow_lookup(messages: list[dict[str, str]]) -> str:
        release.wait(TIMEOUT)
        return "finally"

    blocked = make_chat(model=slow_lookup)
    waiting = blocked.send("take your time")
    other = make_chat(model="demo", tokens_per_s=0)
    assert other.send("hello").wait(TIMEOUT).status == "done"  # the loop is free
    assert not waiting.finished
    release.set()
    assert waiting.wait(TIMEOUT).text == "finally"


# --- stop -----------------------------------------------------------------------------


def test_stop_cancels_an_async_generator_at_once_and_its_finally_runs(
    make_chat: Callable[..., Chat],
) -> None:
    saw: list[str] = []
    ended = threading.Event()

    async def endless(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        try:
            while True:
                yield "tick "
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise
        except GeneratorExit:
            saw.append("closed")
            raise
        finally:
            ended.set()

    chat = make_chat(model=endless)
    reply = chat.send("go")
    wait_until(lambda: len(reply.chunks) >= 3, "a few chunks")
    asked = time.monotonic()
    chat.stop()
    reply.wait(TIMEOUT)
    latency = time.monotonic() - asked
    assert reply.status == "stopped"
    assert reply.text.startswith("tick tick tick ")
    assert latency < 0.1, f"stop took {latency * 1000:.0f} ms"
    assert ended.wait(TIMEOUT)
    assert saw == ["cancelled"]  # at its await: the gateway awaits nothing else meanwhile


def test_stop_closes_a_sync_generator_at_its_next_yield(make_chat: Callable[..., Chat]) -> None:
    produced: list[int] = []
    stopped_here = threading.Event()
    after_close: list[int] = []
    ended = threading.Event()

    def counting(messages: list[dict[str, str]]) -> Iterator[str]:
        try:
            for i in range(1000):
                if stopped_here.is_set():
                    # The stop has been asked: this is the last chunk it makes.
                    after_close.append(i)
                produced.append(i)
                yield f"{i} "
                time.sleep(0.05)
        finally:
            ended.set()

    chat = make_chat(model=counting)
    reply = chat.send("count")
    wait_until(lambda: len(reply.chunks) >= 3, "a few chunks")
    asked = time.monotonic()
    chat.stop()
    reply.wait(TIMEOUT)
    assert time.monotonic() - asked < 0.1
    assert reply.status == "stopped"
    stopped_here.set()
    assert ended.wait(TIMEOUT), "the generator's finally did not run"
    # Closed at the yield after the stop: at most one more chunk was made.
    assert len(after_close) <= 1
    assert len(produced) < 20


# --- failures ---------------------------------------------------------------------------


def test_an_exception_ends_the_reply_with_an_error_and_the_next_reply_works(
    make_chat: Callable[..., Chat], caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def flaky_rag(messages: list[dict[str, str]]) -> Iterator[str]:
        nonlocal calls
        calls += 1
        yield "looking "
        if calls == 1:
            raise KeyError("docs")
        yield "found"

    chat = make_chat(model=flaky_rag)
    with caplog.at_level(logging.ERROR, logger="nbchat"):
        failed = chat.send("first").wait(TIMEOUT)
    assert failed.status == "error"
    assert failed.error == "flaky_rag raised KeyError: 'docs'"
    assert failed.text == "looking "  # the partial text stays
    assert "Traceback" in caplog.text
    assert "raise KeyError" in caplog.text
    assert chat.messages[-1]["error"] == failed.error
    again = chat.send("again").wait(TIMEOUT)
    assert (again.status, again.text) == ("done", "looking found")


def test_an_exception_in_an_async_function_is_an_error_reply(
    make_chat: Callable[..., Chat],
) -> None:
    async def broken(messages: list[dict[str, str]]) -> str:
        raise RuntimeError("index not built")

    chat = make_chat(model=broken)
    reply = chat.send("x").wait(TIMEOUT)
    assert (reply.status, reply.error) == ("error", "broken raised RuntimeError: index not built")
    assert make_chat(model="demo", tokens_per_s=0).send("hi").wait(TIMEOUT).status == "done"


@pytest.mark.parametrize("kind", ["sync_gen", "async_gen", "sync_fn", "async_fn"])
def test_a_chunk_that_is_not_str_ends_the_reply_with_a_clear_error(
    make_chat: Callable[..., Chat], kind: str
) -> None:
    closed = threading.Event()

    def sync_gen(messages: list[dict[str, str]]) -> Iterator[Any]:
        try:
            yield "ok "
            yield 42
            yield "never"
        finally:
            closed.set()

    async def async_gen(messages: list[dict[str, str]]) -> AsyncIterator[Any]:
        try:
            yield "ok "
            yield 42
            yield "never"
        finally:
            closed.set()

    def sync_fn(messages: list[dict[str, str]]) -> Any:
        closed.set()
        return None

    async def async_fn(messages: list[dict[str, str]]) -> Any:
        closed.set()
        return ["a", "list"]

    fn = {"sync_gen": sync_gen, "async_gen": async_gen, "sync_fn": sync_fn, "async_fn": async_fn}
    chat = make_chat(model=fn[kind])
    reply = chat.send("x").wait(TIMEOUT)
    assert reply.status == "error"
    assert reply.error is not None
    assert reply.error.startswith(kind)
    expected = {"sync_fn": "returned NoneType", "async_fn": "returned list"}
    assert expected.get(kind, "yielded int") + ", not str" in reply.error
    assert "never" not in reply.text
    assert closed.wait(TIMEOUT)


# --- pause, history, params, the transcript ----------------------------------------------


def test_pause_and_resume_around_a_callable_give_the_whole_text(
    make_chat: Callable[..., Chat],
) -> None:
    async def story(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        for i in range(40):
            await asyncio.sleep(0.02)
            yield f"w{i} "

    full = "".join(f"w{i} " for i in range(40))
    chat = make_chat(model=story)
    reply = chat.send("tell")
    wait_until(lambda: len(reply.chunks) >= 3, "a few chunks")
    reply.pause()
    wait_until(lambda: reply.status == "paused", "paused")
    held_at = len(reply.text)
    time.sleep(0.3)
    assert len(reply.text) == held_at, "text grew while paused"
    reply.resume()
    reply.wait(TIMEOUT)
    assert (reply.status, reply.text) == ("done", full)
    assert any(len(chunk) > 10 for chunk in reply.chunks)  # what was held came at once


def test_the_callable_gets_the_history_with_the_system_prompt_and_the_params(
    make_chat: Callable[..., Chat],
) -> None:
    calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def takes_all(messages: list[dict[str, str]], **params: Any) -> str:
        calls.append((messages, params))
        return f"answer {len(calls)}"

    chat = make_chat(model=takes_all, system="be brief", temperature=0.3)
    chat.send("first").wait(TIMEOUT)
    chat.send("second", max_tokens=7).wait(TIMEOUT)
    assert calls[0] == (
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"}],
        {"temperature": 0.3},
    )
    assert calls[1] == (
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer 1"},
            {"role": "user", "content": "second"},
        ],
        {"temperature": 0.3, "max_tokens": 7},
    )

    seen: list[Any] = []

    def names_one(messages: list[dict[str, str]], temperature: float = 1.0) -> str:
        seen.append(temperature)
        return "fine"

    chat.model = names_one
    reply = chat.send("third", seed=5).wait(TIMEOUT)  # seed is not passed: not named
    assert (reply.status, reply.text, seen) == ("done", "fine", [0.3])


def test_the_dataframe_has_the_rows_with_the_callables_name(
    make_chat: Callable[..., Chat],
) -> None:
    def echo_bot(messages: list[dict[str, str]]) -> str:
        return "you said " + messages[-1]["content"]

    chat = make_chat(model=echo_bot)
    chat.send("hi").wait(TIMEOUT)
    frame = chat.to_dataframe()
    assert list(frame["role"]) == ["user", "assistant"]
    assert list(frame["content"]) == ["hi", "you said hi"]
    assert frame["model"].iloc[1] == "echo_bot"
    assert frame["finish"].iloc[1] == "stop"


def test_two_chats_with_different_callables_at_once_do_not_mix(
    make_chat: Callable[..., Chat],
) -> None:
    def maker(letter: str) -> Callable[..., AsyncIterator[str]]:
        async def letters(messages: list[dict[str, str]]) -> AsyncIterator[str]:
            for i in range(20):
                await asyncio.sleep(0.005)
                yield f"{letter}{i} "

        return letters

    a, b = maker("a"), maker("b")  # same __name__, different functions
    chat_a, chat_b = make_chat(model=a), make_chat(model=b)
    assert chat_a.model != chat_b.model
    reply_a, reply_b = chat_a.send("go"), chat_b.send("go")
    wait_until(lambda: reply_a.chunks and reply_b.chunks, "both streaming")
    assert not reply_a.finished
    assert not reply_b.finished
    reply_a.wait(TIMEOUT)
    reply_b.wait(TIMEOUT)
    assert reply_a.text == "".join(f"a{i} " for i in range(20))
    assert reply_b.text == "".join(f"b{i} " for i in range(20))


# --- names, the picker, switching -------------------------------------------------------


def test_two_functions_with_one_name_get_distinct_names_and_one_function_keeps_its_own(
    make_chat: Callable[..., Chat],
) -> None:
    def answer_one(messages: list[dict[str, str]]) -> str:
        return "first"

    first = answer_one

    def answer_one(messages: list[dict[str, str]]) -> str:  # type: ignore[no-redef]
        return "second"

    chat = make_chat(model=first)
    assert chat.model == "answer_one"
    chat.model = answer_one
    assert chat.model == "answer_one-2"
    assert chat.send("x").wait(TIMEOUT).text == "second"
    chat.model = first
    assert chat.model == "answer_one"  # the same function keeps its name
    assert chat.send("y").wait(TIMEOUT).text == "first"


def test_a_function_named_like_a_configured_model_does_not_shadow_it(
    make_chat: Callable[..., Chat],
) -> None:
    def demo(messages: list[dict[str, str]]) -> str:
        return "mine"

    chat = make_chat(model=demo, tokens_per_s=0)
    assert chat.model.startswith("demo-")
    assert chat.send("x").wait(TIMEOUT).text == "mine"
    with pytest.raises(ValueError, match="already serves a configured model named 'demo'"):
        register_model("demo", demo)


def test_switching_between_callables_and_the_picker_lists_them(
    make_chat: Callable[..., Chat],
) -> None:
    def first_bot(messages: list[dict[str, str]]) -> str:
        return "from first"

    def second_bot(messages: list[dict[str, str]]) -> str:
        return "from second"

    chat = make_chat(model=first_bot)
    wait_until(lambda: "first_bot" in chat.models, "first_bot in the picker")
    assert chat.send("a").wait(TIMEOUT).text == "from first"
    chat.model = second_bot  # registered after the welcome listed the models
    assert chat.model == "second_bot"
    assert "second_bot" in chat.models
    reply = chat.send("b").wait(TIMEOUT)
    assert (reply.text, reply.model) == ("from second", "second_bot")
    assert [m["model"] for m in chat.messages if m["role"] == "assistant"] == [
        "first_bot",
        "second_bot",
    ]
    # A chat connecting later is offered every registered function.
    later = make_chat(model="demo")
    wait_until(lambda: {"first_bot", "second_bot"} <= set(later.models), "both listed")


def test_register_model_serves_a_function_by_name(make_chat: Callable[..., Chat]) -> None:
    async def rag_v1(messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        yield "v1"

    def rag_v2(messages: list[dict[str, str]]) -> str:
        return "v2"

    assert nbchat.register_model("rag", rag_v1) == "rag"
    chat = make_chat(model="rag")
    assert chat.send("q").wait(TIMEOUT).text == "v1"
    register_model("rag", rag_v2)  # a name given again: its function is replaced
    reply = chat.send("q").wait(TIMEOUT)
    assert (reply.text, reply.model) == ("v2", "rag")
    with pytest.raises(TypeError, match="callable"):
        register_model("nothing", "not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="messages as its first argument"):
        register_model("no_args", lambda: "x")


def test_a_remote_gateway_cannot_call_a_kernel_function(embedded: EmbeddedGateway) -> None:
    def local_only(messages: list[dict[str, str]]) -> str:
        return "x"

    with pytest.raises(ValueError, match=r"without url=.*gateway in this kernel"):
        Chat(url=embedded.url, token=embedded.token, model=local_only)
    with Chat(url=embedded.url, token=embedded.token) as chat:
        wait_until(lambda: chat.model == "demo", "the gateway's default")
        with pytest.raises(ValueError, match="cannot call it"):
            chat.model = local_only
        assert chat.model == "demo"
        assert "local_only" not in chat.models


# --- what user code does wrong must still end the reply ------------------------------


def test_stop_ends_an_async_generator_that_ignores_the_cancel(
    make_chat: Callable[..., Chat],
) -> None:
    async def stubborn(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        while True:
            with contextlib.suppress(asyncio.CancelledError):  # ignores the stop
                await asyncio.sleep(0.01)
            yield "."

    chat = make_chat(model=stubborn)
    reply = chat.send("go")
    wait_until(lambda: len(reply.text) > 3, "some text")
    reply.stop()
    assert reply.wait(TIMEOUT).finish == "stopped"
    chat.model = "demo"
    assert chat.send("again").wait(TIMEOUT).finish == "stop"


def test_stop_does_not_wait_for_a_slow_cleanup(make_chat: Callable[..., Chat]) -> None:
    cleaned = threading.Event()

    async def slow_to_close(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        try:
            while True:
                yield "word "
                await asyncio.sleep(0.01)
        finally:
            await asyncio.sleep(3 * TIMEOUT)  # e.g. closing a client on a dead link
            cleaned.set()

    chat = make_chat(model=slow_to_close)
    reply = chat.send("go")
    wait_until(lambda: len(reply.text) > 10, "some text")
    reply.stop()
    assert reply.wait(TIMEOUT).finish == "stopped"  # before: only after the cleanup
    assert not cleaned.is_set()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raised", [GeneratorExit, asyncio.CancelledError])
def test_a_callable_raising_generator_exit_or_cancelled_error_ends_with_its_name(
    make_chat: Callable[..., Chat], kind: str, raised: type[BaseException]
) -> None:
    def sync_raiser(messages: list[dict[str, str]]) -> Iterator[str]:
        yield "a "
        raise raised("from user code")

    async def async_raiser(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        yield "a "
        raise raised("from user code")

    chat = make_chat(model=sync_raiser if kind == "sync" else async_raiser)
    reply = chat.send("go").wait(TIMEOUT)  # before: GeneratorExit hung it for good
    assert reply.finish == "error"
    assert f"raised {raised.__name__}" in (reply.error or "")
    assert "shut down" not in (reply.error or "")
    chat.model = "demo"
    assert chat.send("next").wait(TIMEOUT).finish == "stop"


def test_millions_of_tiny_chunks_arrive_whole_in_batches(make_chat: Callable[..., Chat]) -> None:
    def chatty(messages: list[dict[str, str]]) -> Iterator[str]:
        for _ in range(300_000):
            yield "y"

    chat = make_chat(model=chatty)
    reply = chat.send("go").wait(6 * TIMEOUT)
    assert reply.text == "y" * 300_000
    # One wake-up of the gateway's loop per batch, not per chunk: before, each of the
    # 300,000 chunks was its own call into the loop that serves every chat.
    assert len(reply.chunks) < 3_000


def test_a_function_defined_again_keeps_its_name_and_lets_the_old_one_go() -> None:
    source = "def my_rag(messages, **params):\n    return 'v{}'\n"
    names = []
    for version in range(3):
        module: dict[str, Any] = {"__name__": "__main__"}  # a notebook cell, run again
        exec(source.format(version), module)
        names.append(MODELS.add(module["my_rag"]))
    assert names == ["my_rag"] * 3
    assert MODELS.get("my_rag")([]) == "v2"  # the newest definition is served


def test_register_model_refuses_a_configured_name_before_any_chat() -> None:
    with pytest.raises(ValueError, match="already serves a configured model named 'demo'"):
        register_model("demo", sync_function)
