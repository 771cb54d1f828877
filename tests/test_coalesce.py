"""DeltaCoalescer: fewer delta frames, never text held past its window, never reordered."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from nbchat.gateway import Gateway
from nbchat.gateway.coalesce import DeltaCoalescer, Kind, LoadWindow
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.providers.base import (
    Finish,
    ProviderError,
    ReasoningChunk,
    TextChunk,
    ToolCalls,
    ToolUse,
)
from nbchat.gateway.redis_store import RedisStore
from nbchat.gateway.server import ModelRoute
from test_gateway import recv

from redis_server import RedisServer


def test_a_zero_window_sends_every_chunk_as_it_comes() -> None:
    c = DeltaCoalescer(0.0)
    assert c.add(None, "a", 0.0) == [(None, "a")]
    assert c.add(None, "b", 0.0) == [(None, "b")]
    assert c.due() is None


def test_the_first_text_goes_at_once_and_later_text_waits_for_the_window() -> None:
    c = DeltaCoalescer(0.05)
    assert c.add(None, "Hello", 10.0) == [(None, "Hello")]
    assert c.add(None, " wor", 10.01) == []
    assert c.add(None, "ld", 10.02) == []
    assert c.due() == 10.05
    assert c.flush(10.05) == [(None, " world")]
    assert c.due() is None
    assert c.add(None, "!", 10.2) == [(None, "!")]  # a quiet window since: at once


def test_text_after_a_flush_waits_a_window_from_that_flush() -> None:
    c = DeltaCoalescer(0.05)
    c.add(None, "a", 0.0)
    c.add(None, "b", 0.01)
    c.flush(0.05)
    assert c.add(None, "c", 0.06) == []
    assert c.due() == 0.1


def test_reasoning_and_answer_stay_apart_and_in_order() -> None:
    c = DeltaCoalescer(0.05)
    assert c.add("reasoning", "think", 0.0) == [("reasoning", "think")]
    assert c.add("reasoning", "ing", 0.01) == []
    assert c.add(None, "Answer", 0.02) == [("reasoning", "ing")]
    assert c.due() == 0.07  # the answer waits a window from the reasoning that just went
    assert c.flush(0.07) == [(None, "Answer")]


def test_empty_text_is_no_delta_and_flush_with_nothing_held_is_none() -> None:
    c = DeltaCoalescer(0.05)
    assert c.add(None, "", 0.0) == []
    assert c.flush(0.0) == []


def test_random_streams_keep_every_character_in_order_and_no_text_waits_past_its_window() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        window = rng.choice([0.0, 0.01, 0.05, 0.1])
        c = DeltaCoalescer(window)
        now, sent, given = 0.0, [], []
        held_since: float | None = None
        for _ in range(rng.randint(1, 80)):
            now += rng.choice([0.0, 0.001, 0.02, 0.07, 0.2])
            due = c.due()
            if due is not None and due <= now:  # the I/O layer's timer fired first
                sent += c.flush(due)
                held_since = None
            kind: Kind = rng.choice([None, None, "reasoning"])
            text = rng.choice(["a", "bc", "", "def "])
            given.append((kind, text))
            out = c.add(kind, text, now)
            sent += out
            if c.due() is not None and (held_since is None or out):
                held_since = now  # held from now (what was held before just went)
            if c.due() is not None:
                assert c.due() - held_since <= window + 1e-9  # type: ignore[operator]
            else:
                held_since = None
        sent += c.flush(now)
        assert all(text for _, text in sent)
        for kind in (None, "reasoning"):
            assert "".join(t for k, t in sent if k == kind) == "".join(
                t for k, t in given if k == kind
            )

        # In order across kinds: merging consecutive same-kind pieces of both gives the same runs.
        def runs(items: list[tuple[Kind, str]]) -> list[tuple[Kind, str]]:
            out: list[tuple[Kind, str]] = []
            for k, t in items:
                if not t:
                    continue
                if out and out[-1][0] == k:
                    out[-1] = (k, out[-1][1] + t)
                else:
                    out.append((k, t))
            return out

        assert runs(sent) == runs(given)


def test_the_load_window_widens_while_the_loop_runs_late_and_narrows_back() -> None:
    window = LoadWindow(0.05, 0.25)
    assert window.adapts
    assert window.observe(0.0, 0.2) == 0.05
    widths = [window.observe(0.2, 1.0) for _ in range(30)]  # far behind, for 3 s
    assert widths == sorted(widths)
    assert widths[-1] == 0.25  # and no wider
    assert widths.index(0.25) <= 15  # about a second after the smoothed lag is over 50 ms
    # On time but busy: it holds, for a narrower window would make it late again.
    for _ in range(100):
        window.observe(0.0, 0.8)
    assert window.window_s == 0.25
    # On time with room to spare: it narrows, four times slower than it widened.
    narrowing = [window.observe(0.0, 0.3) for _ in range(60)]
    assert narrowing == sorted(narrowing, reverse=True)
    assert narrowing[-1] == pytest.approx(0.05)
    assert narrowing.index(narrowing[-1]) >= 39  # 40 samples: 4 s
    assert window.observe(-1.0, -1.0) == pytest.approx(0.05)  # never narrower than the base
    assert window.observe(float("nan"), float("nan")) == pytest.approx(0.05)
    window.observe(float("inf"), 0.0)  # a lag past all reason counts as 10 s...
    for _ in range(80):
        window.observe(0.0, 0.0)
    assert window.window_s == pytest.approx(0.05)  # ...and does not stick


def test_the_load_window_widens_when_the_process_is_nearly_full_before_it_is_late() -> None:
    window = LoadWindow(0.05, 0.25)
    widths = [window.observe(0.0, 0.97) for _ in range(20)]  # on time, but no room left
    assert widths[-1] == 0.25
    assert window.lag_s == 0.0


def test_a_load_window_without_room_never_changes() -> None:
    window = LoadWindow(0.05, 0.05)
    assert not window.adapts
    assert {window.observe(lag) for lag in (0.0, 5.0, 5.0, 5.0, 0.0)} == {0.05}
    for base, widest in ((0.05, 0.01), (0.05, float("inf")), (0.05, float("nan"))):
        with pytest.raises(ValueError, match="widest delta window"):
            LoadWindow(base, widest)
        with pytest.raises(ValueError, match="delta_window_max_s"):
            GatewayLimits(delta_window_s=base, delta_window_max_s=widest)


# --- on a real gateway ------------------------------------------------------------------


# A prompt the demo answers at length (its reply grows with the message's words).
LONG = "Tell me about load " + " ".join(f"w{i}" for i in range(300))


async def _reply(
    gateway: Gateway,
    content: str,
    params: dict[str, Any],
    on_delta: Callable[[ClientConnection], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """One demo reply to ``content`` on a running gateway: every frame of it, ``done``
    last; ``on_delta`` is awaited at each delta as it arrives."""
    async with connect(gateway.url(), proxy=None) as ws:
        await ws.send('{"type": "hello", "client": "t"}')
        assert (await recv(ws))["type"] == "welcome"
        messages = [{"role": "user", "content": content}]
        start = {"type": "start", "reply": "r-1", "model": "demo", "messages": messages}
        await ws.send(json.dumps({**start, "params": params}))
        frames = []
        while (frame := await recv(ws))["type"] != "done":
            frames.append(frame)
            if frame["type"] == "delta" and on_delta is not None:
                await on_delta(ws)
        return [*frames, frame]


async def _stream(
    window_s: float, tokens_per_s: float, stop_after_s: float | None = None
) -> list[dict[str, Any]]:
    """One demo reply on a gateway coalescing over ``window_s``: every frame of it."""
    gateway = Gateway(limits=GatewayLimits(delta_window_s=window_s))
    await gateway.start("127.0.0.1", 0)
    stopped = False

    async def stop_once(ws: ClientConnection) -> None:
        nonlocal stopped
        if stop_after_s is not None and not stopped:
            await asyncio.sleep(stop_after_s)  # text arrives meanwhile, and is held
            await ws.send('{"type": "stop", "reply": "r-1"}')
            stopped = True

    try:
        params = {"tokens_per_s": tokens_per_s}
        return await _reply(gateway, "Tell me about coalescing", params, stop_once)
    finally:
        await gateway.close()


def _text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


async def test_a_window_sends_the_same_text_in_fewer_deltas_with_seqs_in_order() -> None:
    plain = await _stream(0.0, 400)
    coalesced = await _stream(0.05, 400)
    assert _text(coalesced) == _text(plain)
    deltas = [f for f in coalesced if f["type"] == "delta"]
    assert len(deltas) * 4 < sum(f["type"] == "delta" for f in plain)  # ~20 tokens a delta
    seqs = [f["seq"] for f in coalesced]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert coalesced[-1]["finish"] == "stop"


async def test_a_stop_sends_the_held_text_before_the_end() -> None:
    frames = await _stream(5.0, 100, stop_after_s=0.3)  # the window never ends first
    assert frames[-1]["type"] == "done"
    assert frames[-1]["finish"] == "stopped"
    deltas = [f for f in frames if f["type"] == "delta"]
    assert len(deltas) == 2, deltas  # the first at once; what was held, at the stop
    assert len(deltas[1]["text"]) > 20


def test_nbchat_serve_coalesces_over_50_ms_unless_told_otherwise() -> None:
    from nbchat import cli

    def window(*flags: str) -> float:
        args = cli._parser().parse_args(["serve", *flags])
        return cli._options(args).limits.delta_window_s

    assert window() == 0.05
    assert window("--delta-window-ms", "0") == 0.0
    assert window("--delta-window-ms", "120") == 0.12
    assert GatewayLimits().delta_window_s == 0.0  # the embedded gateway: every chunk at once

    def widest(*flags: str) -> float | None:
        args = cli._parser().parse_args(["serve", *flags])
        return cli._options(args).limits.delta_window_max_s

    assert widest() == 0.25  # widened up to 250 ms while it falls behind
    assert widest("--delta-window-ms", "400") == 0.4  # never narrower than the base
    assert widest("--delta-window-max-ms", "50") == 0.05  # = the base: never widens
    assert widest("--delta-window-ms", "0") == 0.0  # every chunk as it comes, whatever the load
    assert GatewayLimits().delta_window_max_s is None


def _metric(gateway: Gateway, name: str) -> float:
    text = gateway.metrics.exposition().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return float(family.samples[0].value)


async def test_a_gateway_that_falls_behind_widens_its_window_and_narrows_it_after() -> None:
    gateway = Gateway(limits=GatewayLimits(delta_window_s=0.05, delta_window_max_s=0.25))
    await gateway.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    hogging = True

    def hog() -> None:  # more work than the loop can do: 80 ms at every turn of it
        time.sleep(0.08)
        if hogging:
            loop.call_soon(hog)

    async def until(check: Any, what: str) -> None:
        deadline = loop.time() + 15
        while not check():
            assert loop.time() < deadline, what
            await asyncio.sleep(0.05)

    try:
        assert _metric(gateway, "nbchat_delta_window_seconds") == 0.05
        loop.call_soon(hog)
        await until(lambda: gateway.delta_window.window_s >= 0.2, "the window widens")
        assert _metric(gateway, "nbchat_delta_window_seconds") >= 0.2
        assert _metric(gateway, "nbchat_loop_lag_seconds") > LoadWindow.BEHIND_S
        # A reply started now is coalesced over the wider window.
        hogging = False
        frames = await _reply(gateway, LONG, {"tokens_per_s": 400, "max_tokens": 400})
        deltas = [f for f in frames if f["type"] == "delta"]
        assert len(deltas) <= 1.0 / 0.15 + 2, len(deltas)  # at 50 ms it would be about 20
        assert gateway.delta_window.window_s > 0.05  # it narrows slowly
        await until(lambda: gateway.delta_window.window_s == 0.05, "it narrows back")
        assert _metric(gateway, "nbchat_delta_window_seconds") == 0.05
    finally:
        hogging = False
        await gateway.close()


async def test_a_reply_in_flight_follows_the_window_as_the_load_changes_it() -> None:
    gateway = Gateway(limits=GatewayLimits(delta_window_s=0.05, delta_window_max_s=0.5))
    await gateway.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def arrived(ws: ClientConnection) -> None:
        arrivals.append(loop.time())
        if len(arrivals) == 5:  # the window widens, as LoadWindow widens it
            assert gateway._load_watch is not None
            gateway._load_watch.cancel()  # (the loop keeps up: it would narrow)
            gateway.delta_window.window_s = 0.5

    try:
        params = {"tokens_per_s": 200, "max_tokens": 500}  # 2.5 s
        frames = await _reply(gateway, LONG, params, arrived)
        assert frames[-1]["finish"] == "length"  # the whole 2.5 s
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps[:3]) < 0.2  # 50 ms apart while the gateway kept up
        assert statistics.median(gaps[5:-1]) > 0.4  # half a second apart once it fell behind
    finally:
        await gateway.close()


async def test_a_failed_load_sample_is_logged_and_the_next_one_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway(limits=GatewayLimits(delta_window_s=0.05, delta_window_max_s=0.25))
    samples: list[tuple[float, float]] = []

    def observe(lag_s: float, busy: float = 0.0) -> float:
        samples.append((lag_s, busy))
        if len(samples) == 1:
            raise ValueError("a bad sample")
        return gateway.delta_window.window_s

    gateway.delta_window.observe = observe  # type: ignore[method-assign]
    await gateway.start("127.0.0.1", 0)
    try:
        await asyncio.sleep(0.5)
        assert len(samples) >= 3  # the watcher lived on after the first one failed
        assert "load sample failed" in caplog.text
        assert all(0 <= busy <= 1.5 for _, busy in samples)  # CPU per wall second
    finally:
        await gateway.close()


async def test_the_embedded_gateways_window_never_widens() -> None:
    gateway = Gateway()  # GatewayLimits(): every chunk as it comes, whatever the load
    await gateway.start("127.0.0.1", 0)
    try:
        assert not gateway.delta_window.adapts
        assert gateway._load_watch is None  # nothing samples the loop
        assert math.isnan(_metric(gateway, "nbchat_loop_lag_seconds"))  # no figure, not 0
    finally:
        await gateway.close()


def test_a_window_that_is_not_a_number_of_seconds_is_refused() -> None:
    for bad in (float("inf"), float("nan"), -0.01):
        with pytest.raises(ValueError, match="delta"):
            GatewayLimits(delta_window_s=bad)
        with pytest.raises(ValueError, match="delta window"):
            DeltaCoalescer(bad)


def test_nbchat_serve_refuses_a_window_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    from nbchat import cli

    for bad in ("inf", "nan", "-1", "5000"):
        assert cli.main(["serve", "--port", "0", "--delta-window-ms", bad]) != 0
        assert "--delta-window-ms must be from 0 to 1000" in capsys.readouterr().err
    for bad in ("nan", "20", "5000"):
        assert cli.main(["serve", "--port", "0", "--delta-window-max-ms", bad]) != 0
        error = capsys.readouterr().err
        assert "--delta-window-max-ms must be from --delta-window-ms (50)" in error


# --- a scripted provider: what is held goes before what follows it ---------------------

Step = TextChunk | ReasoningChunk | ToolCalls | Finish | float | Exception


class Scripted:
    """A provider that plays one list of steps per round: items to yield, pauses (a
    number of seconds) and an exception to raise."""

    def __init__(self, *rounds: list[Step]) -> None:
        self.rounds = list(rounds)

    async def stream(self, request: Any) -> Any:
        for step in self.rounds.pop(0):
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, Exception):
                raise step
            else:
                yield step


async def _scripted(
    provider: Scripted, window_s: float, store: str | None = None
) -> list[dict[str, Any]]:
    """One reply of ``provider`` on a gateway with that window: its frames, each with the
    time it arrived (``_t``, seconds from the start); tool calls are answered."""
    gateway = Gateway(
        models={"m": ModelRoute(provider, "m")},  # type: ignore[arg-type]
        limits=GatewayLimits(delta_window_s=window_s),
        store=RedisStore(store) if store else None,
    )
    await gateway.start("127.0.0.1", 0)
    try:
        async with connect(gateway.url(), proxy=None) as ws:
            await ws.send('{"type": "hello", "client": "t"}')
            assert (await recv(ws))["type"] == "welcome"
            tool = {"name": "f", "description": "d", "parameters": {"type": "object"}}
            start = {
                "type": "start",
                "reply": "r",
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [tool],
            }
            loop = asyncio.get_running_loop()
            began = loop.time()
            await ws.send(json.dumps(start))
            frames = []
            while (frame := await recv(ws))["type"] != "done":
                frames.append({**frame, "_t": loop.time() - began})
                if frame["type"] == "tool_call":
                    answer = {"type": "tool_result", "reply": "r", "call": frame["call"]}
                    await ws.send(json.dumps({**answer, "content": "ok"}))
            return [*frames, frame]
    finally:
        await gateway.close()


def _kinds(frames: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (f["type"], f.get("text", f.get("name", "")))
        for f in frames
        if f["type"] in ("delta", "tool_call", "done")
    ]


async def test_held_text_goes_when_its_window_ends_not_with_the_next_text() -> None:
    provider = Scripted([TextChunk("a"), 0.01, TextChunk("b"), 0.6, TextChunk("c"), Finish("stop")])
    frames = await _scripted(provider, 0.05)
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["text"] for d in deltas] == ["a", "b", "c"]
    assert deltas[1]["_t"] < 0.4  # at its window's end (0.05 s), long before "c" (0.61 s)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_held_text_goes_before_a_tool_call_and_the_next_round(
    store: str, tmp_path: Path
) -> None:
    provider = Scripted(
        [
            TextChunk("x"),
            0.01,
            TextChunk("y"),
            ToolCalls((ToolUse("c1", "f", {}),)),
            Finish("stop"),
        ],
        [TextChunk("z"), 0.01, TextChunk("!"), Finish("stop")],
    )
    if store == "redis":
        if not RedisServer.available():
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        redis = RedisServer(tmp_path).start()
        try:
            frames = await _scripted(provider, 5.0, redis.url)
        finally:
            redis.stop()
    else:
        frames = await _scripted(provider, 5.0)  # only a flush can send what is held
    assert _kinds(frames) == [
        ("delta", "x"),
        ("delta", "y"),
        ("tool_call", "f"),
        ("delta", "\n\nz!"),  # within the window of "y": held, and sent at the end
        ("done", ""),
    ]
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


async def test_held_text_goes_before_a_provider_error_ends_the_reply() -> None:
    provider = Scripted(
        [TextChunk("a"), 0.01, TextChunk("b"), ProviderError("upstream_error", "boom")]
    )
    frames = await _scripted(provider, 5.0)
    assert [f["text"] for f in frames if f["type"] == "delta"] == ["a", "b"]
    assert frames[-1]["finish"] == "error"


async def test_reasoning_and_answer_are_held_apart_and_keep_their_order() -> None:
    provider = Scripted(
        [
            ReasoningChunk("r1"),
            0.01,
            ReasoningChunk("r2"),
            0.01,
            TextChunk("t1"),
            0.01,
            TextChunk("t2"),
            Finish("stop"),
        ]
    )
    frames = await _scripted(provider, 5.0)
    deltas = [(f.get("kind"), f["text"]) for f in frames if f["type"] == "delta"]
    assert deltas == [("reasoning", "r1"), ("reasoning", "r2"), (None, "t1t2")]
