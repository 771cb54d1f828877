"""Python functions as tools: the model calls them, they run in this process, the
results go back and the model goes on, all in one reply. End to end through Chat, the
gateway and the official ``openai`` SDK against recorded tool-call streams
(tests/fixtures/providers/openai_tool_*.sse), and frame by frame on raw sockets."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from nbchat import Chat
from nbchat.backoff import Backoff
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.providers import Finish, Request, TextChunk, ToolCalls, ToolUse
from nbchat.gateway.providers.anthropic_messages import AnthropicProvider, anthropic_messages
from nbchat.gateway.providers.openai_compat import OpenAICompatProvider, openai_messages
from nbchat.gateway.server import ModelRoute
from nbchat.protocol import ChatMessage, PendingCall, decode, encode
from nbchat.session import GatewaySession, LogLimits, SessionError
from nbchat.tools import make_tool
from nbchat.transcript import (
    Transcript,
    transcript_from_json,
    transcript_from_records,
    transcript_to_json,
)

from faults import FaultyProxy
from replay_server import Replay
from timeouts import TIMEOUT, wait_until

ANSWER = "Your best customers are Acme, Globex and Initech; the EU total is 1,250."
# Claude says something before its calls; the round after the results starts a paragraph.
CLAUDE_ANSWER = f"I'll look that up.\n\n{ANSWER}"
TOKEN = "t"


@pytest.fixture
def gateway(replay: Replay) -> Iterator[EmbeddedGateway]:
    provider = OpenAICompatProvider(base_url=replay.base_url, api_key="sk-test")
    claude = AnthropicProvider(base_url=f"http://127.0.0.1:{replay.port}", api_key="sk-ant")
    models = {
        "gpt": ModelRoute(provider, "gpt-tools"),
        "forever": ModelRoute(provider, "gpt-tools-forever"),
        "claude": ModelRoute(claude, "claude-tools"),
        "claude-forever": ModelRoute(claude, "claude-tools-forever"),
    }
    embedded = EmbeddedGateway(Gateway(models=models, token=TOKEN)).start()
    yield embedded
    embedded.close()


class Kernel:
    """The user's functions, recording each call: its arguments and its thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.lock = threading.Lock()

    def record(self, name: str, **arguments: Any) -> None:
        with self.lock:
            self.calls.append((name, arguments, threading.current_thread().name))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [args for n, args, _ in self.calls if n == name]


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def tools_of(kernel: Kernel, fail: bool = False) -> list[Any]:
    def top_customers(n: int = 5) -> str:
        """The n customers with the highest revenue.

        Reads the sales table of this kernel; this paragraph is not sent."""
        kernel.record("top_customers", n=n)
        if fail:
            raise ValueError("no revenue column")
        return "| name | revenue |\n| Acme | 900 |"

    def region_total(region: str) -> float:
        """Total revenue of a region."""
        kernel.record("region_total", region=region)
        return 1250.0

    return [top_customers, region_total]


def provider_requests(replay: Replay) -> list[dict[str, Any]]:
    paths = ("/v1/chat/completions", "/v1/messages")
    return [r["body"] for r in replay.requests if r["path"] in paths]


# --- the conversation ---------------------------------------------------------------


def test_a_two_step_tool_conversation_ends_with_the_expected_text(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="gpt", tools=tools_of(kernel)) as chat:
        reply = chat.send("who are my best customers?").wait(TIMEOUT)
        assert (reply.finish, reply.error) == ("stop", None)
        assert reply.text == ANSWER
        # Both calls of the round ran here, each once, with the model's arguments (the
        # fragments assembled), off the kernel's main thread and the client loop.
        assert kernel.named("top_customers") == [{"n": 3}]
        assert kernel.named("region_total") == [{"region": "eu"}]
        threads = {thread for _, _, thread in kernel.calls}
        assert all(t.startswith("nbchat-tool-") for t in threads)
        # Usage is the sum of the two rounds.
        assert reply.usage is not None
        assert (reply.usage["prompt_tokens"], reply.usage["completion_tokens"]) == (260, 58)

        # The transcript: the calls as tool rows, before the reply's text.
        rows = chat.messages
        assert [r["role"] for r in rows] == ["user", "tool", "tool", "assistant"]
        top = rows[1]
        assert (top["tool_name"], top["tool_arguments"]) == ("top_customers", {"n": 3})
        assert top["content"] == "| name | revenue |\n| Acme | 900 |"
        assert top["finish"] == "stop"
        assert top["duration_s"] >= 0
        assert rows[2]["content"] == "1250.0"
        frame = chat.to_dataframe()
        assert frame["tool_name"].tolist()[1:3] == ["top_customers", "region_total"]

        first, second = provider_requests(replay)
        # The tools went to the model with their schema and first docstring paragraph.
        tools = {t["function"]["name"]: t for t in first["tools"]}
        top_fn = tools["top_customers"]["function"]
        assert top_fn["description"] == "The n customers with the highest revenue."
        assert top_fn["parameters"]["properties"]["n"]["type"] == "integer"
        assert top_fn["parameters"]["properties"]["n"]["default"] == 5
        assert tools["region_total"]["function"]["parameters"]["required"] == ["region"]
        # Round two: the assistant's calls, then one role-tool message per result.
        calls_message, *results = second["messages"][1:]
        assert calls_message["role"] == "assistant"
        assert [c["id"] for c in calls_message["tool_calls"]] == ["call_Qm2Hk7", "call_Zp8Lw1"]
        assert json.loads(calls_message["tool_calls"][0]["function"]["arguments"]) == {"n": 3}
        assert results == [
            {"role": "tool", "tool_call_id": "call_Qm2Hk7", "content": top["content"]},
            {"role": "tool", "tool_call_id": "call_Zp8Lw1", "content": "1250.0"},
        ]

        # The next turn's history carries the calls and results too.
        chat.send("thanks").wait(TIMEOUT)
        history = provider_requests(replay)[2]["messages"]
        roles = ["user", "assistant", "tool", "tool", "assistant", "user"]
        assert [m["role"] for m in history] == roles
        assert history[4] == {"role": "assistant", "content": ANSWER}


@pytest.mark.parametrize(("model", "answer"), [("gpt", ANSWER), ("claude", CLAUDE_ANSWER)])
def test_each_wire_format_runs_a_two_step_tool_conversation(
    gateway: EmbeddedGateway, kernel: Kernel, model: str, answer: str
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model=model, tools=tools_of(kernel)) as chat:
        reply = chat.send("who are my best customers?").wait(TIMEOUT)
        assert (reply.finish, reply.error, reply.text) == ("stop", None, answer)
        assert kernel.named("top_customers") == [{"n": 3}]
        assert kernel.named("region_total") == [{"region": "eu"}]
        rows = chat.messages
        assert [r["role"] for r in rows] == ["user", "tool", "tool", "assistant"]
        assert [r["tool_name"] for r in rows[1:3]] == ["top_customers", "region_total"]
        assert chat.send("thanks").wait(TIMEOUT).finish == "stop"


def test_anthropic_requests_carry_tools_tool_use_and_tool_results(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="claude", tools=tools_of(kernel, fail=True)) as c:
        assert c.send("who?").wait(TIMEOUT).text == CLAUDE_ANSWER
        c.send("thanks").wait(TIMEOUT)
    first, second, third = provider_requests(replay)[:3]
    top = next(t for t in first["tools"] if t["name"] == "top_customers")
    assert top["description"] == "The n customers with the highest revenue."
    assert top["input_schema"]["properties"]["n"]["type"] == "integer"
    assert second["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "I'll look that up."},
            {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "top_customers",
                "input": {"n": 3},
            },
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "region_total",
                "input": {"region": "eu"},
            },
        ],
    }
    error, total = second["messages"][2]["content"]
    assert error["tool_use_id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert error["is_error"] is True
    assert json.loads(error["content"]) == {"error": "ValueError: no revenue column"}
    assert total == {
        "type": "tool_result",
        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
        "content": "1250.0",
    }
    # The next turn: the calls (no text block: the transcript keeps the reply's text
    # in its assistant message, after them), the results, the reply, the new message.
    roles = [m["role"] for m in third["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert [b["type"] for b in third["messages"][1]["content"]] == ["tool_use", "tool_use"]
    assert third["messages"][3] == {"role": "assistant", "content": CLAUDE_ANSWER}


def test_a_tool_that_raises_gives_the_model_an_error_and_the_conversation_goes_on(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="gpt", tools=tools_of(kernel, fail=True)) as c:
        reply = c.send("who are my best customers?").wait(TIMEOUT)
        assert (reply.finish, reply.text) == ("stop", ANSWER)
        results = provider_requests(replay)[1]["messages"][-2:]
        assert json.loads(results[0]["content"]) == {"error": "ValueError: no revenue column"}
        assert results[1]["content"] == "1250.0"  # the other call of the round is unharmed
        row = c.messages[1]
        assert (row["finish"], row["error"]) == ("error", "ValueError: no revenue column")
        assert c.send("and now?").wait(TIMEOUT).finish == "stop"


def test_arguments_that_do_not_fit_the_signature_are_an_error_the_model_sees(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    def top_customers(n: list[int]) -> str:  # the model sends n=3: not a list
        """Customers."""
        raise AssertionError("must not run")

    def region_total(region: str) -> str:
        return region

    with Chat(url=gateway.url, token=TOKEN, model="gpt", tools=[top_customers]) as c:
        c.tool(region_total)
        assert c.send("hi").wait(TIMEOUT).finish == "stop"
        content = json.loads(provider_requests(replay)[1]["messages"][-2]["content"])
        assert content["error"].startswith("ValidationError:")
        assert provider_requests(replay)[1]["messages"][-1]["content"] == "eu"


def test_a_call_of_an_unknown_tool_is_an_error_the_model_sees(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="gpt", tools=tools_of(kernel)[1:]) as c:
        assert c.send("hi").wait(TIMEOUT).text == ANSWER
        error = json.loads(provider_requests(replay)[1]["messages"][-2]["content"])["error"]
        assert error.startswith("LookupError: no tool named 'top_customers'")


@pytest.mark.parametrize("model", ["forever", "claude-forever"])
def test_the_step_bound_holds(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel, model: str
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model=model, tools=tools_of(kernel)) as c:
        reply = c.send("go on").wait(TIMEOUT)
        assert reply.finish == "error"
        assert reply.error_code == "tool_error"
        assert reply.error is not None
        assert "at most 8 tool rounds" in reply.error
        assert len(kernel.named("top_customers")) == 8  # one per round, no more
        assert len(provider_requests(replay)) == 9  # the 9th asked again, and was refused
        assert c.send("hi").wait(TIMEOUT).finish == "error"  # still bounded, still usable


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stop_during_a_tool_call_ends_the_reply_stopped_at_once(
    gateway: EmbeddedGateway, replay: Replay, kind: str
) -> None:
    running, release = threading.Event(), threading.Event()
    cancelled: list[bool] = []

    def top_customers(n: int = 5) -> str:
        running.set()
        release.wait(TIMEOUT)
        return "late"

    async def top_customers_async(n: int = 5) -> str:
        running.set()
        if release.is_set():
            return "late"
        try:
            await asyncio.sleep(TIMEOUT)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    def region_total(region: str) -> str:
        return region

    tool = top_customers if kind == "sync" else top_customers_async
    with Chat(url=gateway.url, token=TOKEN, model="gpt") as c:
        c.tool(tool)
        c.tool(region_total)
        # Served under the recorded name, whichever function it is.
        c._tools["top_customers"] = make_tool(tool, name="top_customers")
        reply = c.send("who?")
        assert running.wait(TIMEOUT)
        began = time.monotonic()
        reply.stop()
        reply.wait(TIMEOUT)
        assert time.monotonic() - began < 1.0
        assert reply.finish == "stopped"
        release.set()
        if kind == "async":
            wait_until(lambda: cancelled == [True], "the async tool cancelled")
        rows = c.messages
        stopped = next(r for r in rows if r["tool_name"] == "top_customers")
        assert stopped["finish"] == "stopped"
        assert len(provider_requests(replay)) == 1  # the model was not asked again
        # The next reply's history answers the stopped call, as the APIs require.
        assert c.send("again").wait(TIMEOUT).finish == "stop"
        history = provider_requests(replay)[1]["messages"]
        contents = {m.get("tool_call_id"): m["content"] for m in history if m["role"] == "tool"}
        assert "not finished" in contents["call_Qm2Hk7"]


def test_a_cut_while_the_gateway_waits_for_a_result_resumes_without_running_it_twice(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel
) -> None:
    proxy = FaultyProxy(gateway.gateway.port, seed=3).start()
    release = threading.Event()
    runs: list[int] = []

    def top_customers(n: int = 5) -> str:
        runs.append(n)
        release.wait(TIMEOUT)
        return "| Acme |"

    try:
        backoff = Backoff(initial_s=0.05, cap_s=0.1)
        with Chat(url=proxy.url(), token=TOKEN, model="gpt", backoff=backoff) as c:
            c.tool(top_customers)
            c.tool(tools_of(kernel)[1])
            reply = c.send("who?")
            wait_until(lambda: runs == [3], "the tool runs")
            proxy.cut()  # the gateway waits for the result, the link is gone
            wait_until(lambda: proxy.connections >= 2, "reconnected")
            release.set()  # the result goes over the new link
            reply.wait(TIMEOUT)
            assert (reply.finish, reply.text) == ("stop", ANSWER)
            assert runs == [3]
            assert kernel.named("region_total") == [{"region": "eu"}]
            assert [r["role"] for r in c.messages].count("tool") == 2
    finally:
        proxy.close()


def test_tool_registration(gateway: EmbeddedGateway) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="gpt") as c:

        @c.tool
        def lookup(key: str, limit: int = 3) -> str:
            """Look a key up.

            More detail."""
            return key

        assert lookup("k") == "k"  # still the function
        tool = c.tools["lookup"]
        assert tool.description == "Look a key up."
        assert tool.parameters["required"] == ["key"]

        @c.tool()
        def other() -> str:
            return ""

        assert set(c.tools) == {"lookup", "other"}
        c.tool(other, confirm=True)
        assert c.tools["other"].confirm
        with pytest.raises(ValueError, match="not accepted by model APIs"):
            c.tool(lambda: 1)  # named "<lambda>"
        with pytest.raises(ValueError, match="must be a function"):
            c.tool(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", ["run", "decline", "stop"])
def test_a_confirm_tool_waits_for_the_answer_from_the_pane(
    gateway: EmbeddedGateway, replay: Replay, kernel: Kernel, answer: str
) -> None:
    top_customers, region_total = tools_of(kernel)
    with Chat(url=gateway.url, token=TOKEN, model="gpt") as c:
        c.tool(top_customers, confirm=True)
        c.tool(region_total)
        reply = c.send("who?")
        wait_until(lambda: c.active.get("asking") == ["call_Qm2Hk7"], "the question")
        wait_until(lambda: kernel.named("region_total"), "the other tool (no confirm) runs")
        time.sleep(0.1)
        assert kernel.named("top_customers") == []  # not before the answer
        assert reply.status == "streaming"
        if answer == "stop":
            c._on_pane_message(c, {"type": "stop"}, None)
            assert reply.wait(TIMEOUT).finish == "stopped"
            assert c.active == {}
            assert kernel.named("top_customers") == []
            return
        # As the pane's button sends it.
        run = answer == "run"
        c._on_pane_message(c, {"type": "tool_answer", "call": "call_Qm2Hk7", "run": run}, None)
        assert reply.wait(TIMEOUT).text == ANSWER
        assert "asking" not in c.active
        result = provider_requests(replay)[1]["messages"][-2]["content"]
        if run:
            assert kernel.named("top_customers") == [{"n": 3}]
            assert result.startswith("| name | revenue |")
        else:
            assert kernel.named("top_customers") == []
            error = json.loads(result)["error"]
            assert error == "Declined: the user chose not to run top_customers this time"
        c.answer_tool("call_Qm2Hk7", True)  # too late: nothing happens
        # The next reply asks again (the recording calls again); answered from code.
        again = c.send("and?")
        wait_until(lambda: c.active.get("asking") == ["call_Qm2Hk7"], "the next question")
        c.answer_tool("call_Qm2Hk7", True)
        assert again.wait(TIMEOUT).finish == "stop"


# --- the history and the transcript, pure -----------------------------------------


def test_tool_rows_round_trip_through_json_and_the_history() -> None:
    t = Transcript()
    t.add_user("who?", at=1.0)
    reply = t.add_assistant(reply_id="r1", model="gpt", at=2.0)
    row = t.add_tool(call="c1", name="f", arguments={"n": 3}, reply_id="r1", at=2.5, before=reply)
    row.content, row.finish = "42", "stop"
    reply.content, reply.finish = "It is 42.", "stop"
    assert [m.role for m in t.messages] == ["user", "tool", "assistant"]
    loaded = transcript_from_json(json.loads(json.dumps(transcript_to_json(t))))
    assert loaded.messages[1].tool_arguments == {"n": 3}
    assert loaded.history() == t.history()
    assert transcript_from_records(t.to_records()).history() == t.history()  # a DataFrame's
    assert openai_messages(t.history()) == [
        {"role": "user", "content": "who?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"n": 3}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    assert anthropic_messages(t.history()) == (
        "",
        [
            {"role": "user", "content": "who?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"n": 3}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "42"}],
            },
            {"role": "assistant", "content": "It is 42."},
        ],
    )
    # A saved file of version 1 without the tool fields still loads.
    data = transcript_to_json(t)
    data["version"] = 1  # a line, without the tree's id, parent and branch
    for m in data["messages"]:
        for name in ("tool_name", "tool_arguments", "tool_call", "id", "parent", "branch"):
            m.pop(name)
    data["messages"].pop(1)
    assert len(transcript_from_json(data).messages) == 2


def test_a_repeated_tool_result_is_idempotent_and_an_unknown_call_refused() -> None:
    session = GatewaySession("s")
    session.start("r", "m")
    [call] = session.tool_call("r", "c1", "f", {"n": 1})
    assert call.type == "tool_call"
    assert call.seq == 2  # type: ignore[union-attr]
    assert session.tool_result("r", "c1") is True
    assert session.tool_result("r", "c1") is False  # resent after a resume: nothing
    with pytest.raises(SessionError, match="made no tool call"):
        session.tool_result("r", "c9")
    with pytest.raises(SessionError, match="already made"):
        session.tool_call("r", "c1", "f", {})


def test_a_snapshot_after_a_resume_gap_carries_the_calls_still_waiting() -> None:
    session = GatewaySession("s", limits=LogLimits(max_events=1))
    session.start("r", "m")
    session.tool_call("r", "c1", "f", {"n": 1})
    session.tool_call("r", "c2", "g", {})
    session.tool_result("r", "c1")
    replay = session.replay(0)
    assert replay.gap
    [snapshot] = replay.snapshots
    assert snapshot.calls == (PendingCall(call="c2", name="g", arguments={}),)
    assert decode(encode(snapshot)) == snapshot
    session.tool_result("r", "c2")
    assert session.replies["r"].snapshot().calls is None


def test_a_tool_call_made_while_paused_is_held_after_the_text() -> None:
    session = GatewaySession("s")
    session.start("r", "m")
    session.pause("r")
    assert session.delta("r", "Let me look.") == []
    assert session.tool_call("r", "c1", "f", {}) == []
    events = session.resume("r")
    assert [e.type for e in events] == ["resumed", "delta", "tool_call"]
    assert [e.seq for e in events] == [3, 4, 5]  # type: ignore[union-attr]


# --- raw frames against a gateway -------------------------------------------------


class ScriptedTools:
    """A provider that calls ``f`` once, then answers with the result it was given."""

    def models(self) -> list[str]:
        return ["scripted"]

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | ToolCalls | Finish]:
        last = request.messages[-1]
        if last.role == "tool":
            yield TextChunk(f"f said {last.content}")
        else:
            yield ToolCalls((ToolUse(id="c1", name="f", arguments={"x": 1}),))
        yield Finish("stop")


TOOLS = [{"name": "f", "description": "", "parameters": {"type": "object", "properties": {}}}]


async def raw_gateway(**limits: Any) -> Gateway:
    gateway = Gateway(
        models={"scripted": ModelRoute(ScriptedTools(), "scripted")},  # type: ignore[arg-type]
        limits=GatewayLimits(**limits),
    )
    await gateway.start("127.0.0.1", 0)
    return gateway


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[no-any-return]


async def start_with_tools(gateway: Gateway) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(gateway.url(), proxy=None)
    await ws.send(json.dumps({"type": "hello", "client": "test"}))
    assert (await recv(ws))["type"] == "welcome"
    start = {"type": "start", "reply": "r", "model": "scripted", "tools": TOOLS}
    await ws.send(json.dumps({**start, "messages": [{"role": "user", "content": "go"}]}))
    assert (await recv(ws))["type"] == "started"
    call = await recv(ws)
    assert call == {
        "type": "tool_call",
        "seq": 2,
        "reply": "r",
        "call": "c1",
        "name": "f",
        "arguments": {"x": 1},
    }
    return ws, call


async def test_a_resent_tool_result_is_idempotent_and_the_reply_goes_on() -> None:
    gateway = await raw_gateway()
    try:
        ws, _ = await start_with_tools(gateway)
        result = {"type": "tool_result", "reply": "r", "call": "c1", "content": "7"}
        await ws.send(json.dumps(result))
        await ws.send(json.dumps(result))  # as after a resume
        await ws.send(json.dumps({**result, "call": "nope"}))
        frames = [await recv(ws) for _ in range(3)]
        refusal = next(f for f in frames if f["type"] == "error")
        assert refusal["code"] == "bad_request"
        assert "made no tool call 'nope'" in refusal["message"]
        assert "seq" not in refusal  # it changes no reply
        events = [f for f in frames if f["type"] != "error"]
        assert [(e["type"], e["seq"]) for e in events] == [("delta", 3), ("done", 4)]
        assert events[0]["text"] == "f said 7"
        await ws.send(json.dumps(result))  # after the end: still nothing
        await ws.send(json.dumps({"type": "ping", "t": 1}))
        assert (await recv(ws))["type"] == "pong"
        await ws.close()
    finally:
        await gateway.close()


async def test_a_tool_result_that_never_comes_ends_the_reply_within_the_bound() -> None:
    gateway = await raw_gateway(tool_result_s=0.3)
    try:
        ws, _ = await start_with_tools(gateway)
        began = time.monotonic()
        error, done = await recv(ws), await recv(ws)
        assert time.monotonic() - began < 0.3 + TIMEOUT / 10
        assert (error["code"], error["seq"]) == ("tool_error", 3)
        assert "no result for the call of f within 0.3 s" in error["message"]
        assert (done["type"], done["finish"]) == ("done", "error")
        await ws.close()
    finally:
        await gateway.close()


async def test_stop_while_the_gateway_waits_for_a_result_ends_the_reply_stopped() -> None:
    gateway = await raw_gateway()
    try:
        ws, _ = await start_with_tools(gateway)
        await ws.send(json.dumps({"type": "stop", "reply": "r"}))
        done = await recv(ws)
        assert (done["type"], done["finish"]) == ("done", "stopped")
        await ws.send(
            json.dumps({"type": "tool_result", "reply": "r", "call": "c1", "content": ""})
        )
        await ws.send(json.dumps({"type": "ping", "t": 1}))
        assert (await recv(ws))["type"] == "pong"  # the late result: ignored, no error
        await ws.close()
    finally:
        await gateway.close()


def test_history_tool_messages_need_a_valid_name() -> None:
    t = Transcript()
    t.add_user("x", at=1.0)
    row = t.add_tool(call="c", name="bad name", arguments={}, reply_id="r", at=1.0)
    row.finish = "stop"
    assert t.history() == (ChatMessage("user", "x"),)  # left out: no API would take it


# --- what a model or a tool does wrong must not stall or break the chat --------------


class ScriptedToolModel:
    """A provider that calls the given tools, one round per list, then answers."""

    def __init__(self, *rounds: list[ToolUse]) -> None:
        self.rounds = rounds
        self.requests: list[Request] = []

    def models(self) -> list[str]:
        return ["scripted"]

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        self.requests.append(request)
        roles = [m.role for m in request.messages]
        # Rounds done: runs of tool results in the history.
        done = sum(1 for i, r in enumerate(roles) if r == "tool" and roles[i - 1 : i] != ["tool"])
        if done < len(self.rounds):
            yield ToolCalls(tuple(self.rounds[done]))
        else:
            yield TextChunk("final answer")
        yield Finish("stop")


@pytest.fixture
def scripted() -> Iterator[Any]:
    gateways: list[EmbeddedGateway] = []

    def start(model: ScriptedToolModel, **limits: Any) -> EmbeddedGateway:
        route = ModelRoute(model, "scripted")  # type: ignore[arg-type]
        gateway = Gateway(models={"s": route}, token=TOKEN, limits=GatewayLimits(**limits))
        gateways.append(EmbeddedGateway(gateway).start())
        return gateways[-1]

    yield start
    for gateway in gateways:
        gateway.close()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "arguments",
    [{"n": 10**30}, {"n": float("inf")}, {"s": "\ud800"}, nested(30)],
    ids=["huge-int", "infinity", "lone-surrogate", "nested-30"],
)
def test_arguments_that_cannot_travel_are_answered_at_once_and_the_chat_goes_on(
    scripted: Any, arguments: dict[str, Any]
) -> None:
    ran: list[Any] = []

    def f(**kwargs: Any) -> str:
        ran.append(kwargs)
        return "ok"

    model = ScriptedToolModel([ToolUse("c1", "f", arguments)])
    gateway = scripted(model, tool_result_s=3 * TIMEOUT)
    with Chat(url=gateway.url, token=TOKEN, model="s") as chat:
        chat.tool(f)
        first = chat.send("go").wait(TIMEOUT)  # before: a stall until tool_result_s
        assert (first.finish, first.text) == ("stop", "final answer")
        assert ran == []  # never sent to the client
        answer = model.requests[-1].messages[-1]
        assert answer.role == "tool"
        assert "cannot be sent" in answer.content
        second = chat.send("and again").wait(TIMEOUT)  # before: every later send failed
        assert second.finish == "stop", second.error


def test_a_call_id_used_again_in_a_later_round_does_not_end_the_reply(scripted: Any) -> None:
    model = ScriptedToolModel([ToolUse("call_0", "f", {})], [ToolUse("call_0", "f", {})])
    gateway = scripted(model)
    ran: list[str] = []
    with Chat(url=gateway.url, token=TOKEN, model="s") as chat:
        chat.tool(lambda: ran.append("x") or "ok", name="f")
        reply = chat.send("go").wait(TIMEOUT)
        assert (reply.finish, reply.error) == ("stop", None)
        assert ran == ["x", "x"]  # each round's call ran, once
        calls = [m["tool_call"] for m in chat.messages if m["role"] == "tool"]
        assert len(set(calls)) == 2


def test_time_paused_does_not_count_against_the_wait_for_a_tool_result(scripted: Any) -> None:
    model = ScriptedToolModel([ToolUse("c1", "f", {})])
    gateway = scripted(model, tool_result_s=1.0)
    gate = threading.Event()
    with Chat(url=gateway.url, token=TOKEN, model="s") as chat:
        chat.tool(lambda: gate.wait(TIMEOUT) and "ok", name="f")
        reply = chat.send("go")
        wait_until(lambda: any(m["role"] == "tool" for m in chat.messages), "the call")
        reply.pause()
        wait_until(lambda: reply.status == "paused", "the pause")
        time.sleep(2.0)  # twice the bound, all of it paused
        gate.set()
        reply.resume()
        assert reply.wait(TIMEOUT).finish == "stop", reply.error


def test_a_blocking_async_tool_does_not_hold_up_stop(gateway: EmbeddedGateway) -> None:
    started = threading.Event()

    async def top_customers(n: int = 5) -> str:
        started.set()
        time.sleep(3)  # noqa: ASYNC251 (the point: blocking work in an async tool)
        return "late"

    def region_total(region: str) -> str:
        return region

    with Chat(url=gateway.url, token=TOKEN, model="gpt") as chat:
        chat.tool(top_customers)
        chat.tool(region_total)
        reply = chat.send("who?")
        assert started.wait(TIMEOUT)
        reply.stop()
        # Before, the tool blocked the loop every chat and its Stop runs on: 3 s.
        assert reply.wait(1.0).finish == "stopped"


def test_tools_can_be_named_and_two_of_one_name_are_refused(gateway: EmbeddedGateway) -> None:
    def lookup(table: str) -> str:
        return table

    sales, costs = functools.partial(lookup, "sales"), functools.partial(lookup, "costs")
    with pytest.raises(ValueError, match="two tools are named 'partial'"):
        Chat(url=gateway.url, token=TOKEN, tools=[sales, costs])
    with Chat(url=gateway.url, token=TOKEN) as chat:
        chat.tool(sales, name="sales")
        chat.tool(costs, name="costs")
        chat.tool(lambda: "x", name="anonymous")
        assert sorted(chat.tools) == ["anonymous", "costs", "sales"]
