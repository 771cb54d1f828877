"""Streaming benchmarks: throughput and latency through the gateway, stop latency, and
the traffic a reply puts on the widget comm. Prints figures and, for each, a baseline
measured in the same run. Run: .venv/bin/python benchmarks/bench_stream.py"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from websockets.asyncio.client import connect

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.pane import StreamBatcher

REPLIES = 30
PROMPT = "benchmark " * 200  # a long prompt: the demo model answers with ~470 tokens


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def raw_client(url: str, token: str | None) -> tuple[float, int]:
    """Baseline: a bare WebSocket client reading the same replies, no Chat layers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tokens = 0
    async with connect(url, additional_headers=headers, proxy=None) as ws:
        await ws.send(json.dumps({"type": "hello", "client": "bench"}))
        await ws.recv()
        began = time.perf_counter()
        for i in range(REPLIES):
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "reply": f"r{i}",
                        "model": "demo",
                        "params": {"tokens_per_s": 0},
                        "messages": [{"role": "user", "content": f"{i} {PROMPT}"}],
                    }
                )
            )
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "delta":
                    tokens += 1
                elif frame["type"] == "done":
                    break
        return time.perf_counter() - began, tokens


def throughput(gateway: EmbeddedGateway) -> None:
    elapsed, tokens = asyncio.run(raw_client(gateway.url, gateway.token))
    base_rate = tokens / elapsed
    with Chat(url=gateway.url, token=gateway.token, tokens_per_s=0) as chat:
        began = time.perf_counter()
        first: list[float] = []
        count = 0
        for i in range(REPLIES):
            chat.clear()  # one turn each, as the baseline sends
            reply = chat.send(f"{i} {PROMPT}").wait(60)
            count += len(reply.chunks)
            first.append(chat.messages[-1]["first_token_s"])
        elapsed = time.perf_counter() - began
    rate = count / elapsed
    print(
        f"throughput   Chat: {rate:,.0f} tokens/s over {REPLIES} replies "
        f"(raw WebSocket client baseline: {base_rate:,.0f} tokens/s; "
        f"Chat = {rate / base_rate:.0%} of it)"
    )
    print(
        f"first token  Chat: p50 {statistics.median(first) * 1000:.2f} ms, "
        f"p95 {percentile(first, 95) * 1000:.2f} ms from send to the first chunk"
    )


def stop_latency(gateway: EmbeddedGateway) -> None:
    latencies = []
    with Chat(url=gateway.url, token=gateway.token, tokens_per_s=50) as chat:
        for _ in range(20):
            reply = chat.send("stop me " * 20)
            while len(reply.chunks) < 3:
                time.sleep(0.002)
            asked = time.perf_counter()
            reply.stop().wait(10)
            latencies.append(time.perf_counter() - asked)
            assert reply.finish == "stopped"

    # Baseline: one round trip of a ping on the same gateway.
    async def ping() -> float:
        headers = {"Authorization": f"Bearer {gateway.token}"}
        async with connect(gateway.url, additional_headers=headers, proxy=None) as ws:
            await ws.send(json.dumps({"type": "hello", "client": "bench"}))
            await ws.recv()
            began = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "t": 0}))
            await ws.recv()
            return time.perf_counter() - began

    rtt = statistics.median([asyncio.run(ping()) for _ in range(5)])
    print(
        f"stop         p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p95 {percentile(latencies, 95) * 1000:.1f} ms from stop() to finish='stopped' "
        f"(baseline: ping round trip {rtt * 1000:.2f} ms)"
    )


def comm_traffic() -> None:
    """Messages and bytes a reply puts on the widget comm at several token rates, batched
    (what nbchat sends) against one message per token (the baseline)."""
    overhead = 600  # bytes around each comm message's payload (measured, BROWSER_TESTING.md)
    for rate in (30, 1_000, 10_000):
        tokens = [f" tok{i}" for i in range(rate * 2)]  # two seconds of streaming
        batcher = StreamBatcher()
        batcher.begin("r")
        batches: list[dict[str, Any]] = []
        now = 0.0
        for token in tokens:
            batcher.add(token)
            now += 1 / rate
            if batcher.due(now) <= now and (message := batcher.take(now)):
                batches.append(message)
        if final := batcher.take(now):
            batches.append(final)
        per_token = [{"type": "chunk", "reply": "r", "offset": 0, "text": t} for t in tokens]

        def size(messages: list[dict[str, Any]]) -> int:
            return sum(len(json.dumps(m)) + overhead for m in messages)

        print(
            f"comm @{rate:>6} tok/s: {len(batches) / 2:5.0f} msg/s, "
            f"{size(batches) / 2 / 1e3:7.1f} kB/s "
            f"(per-token baseline: {len(per_token) / 2:6.0f} msg/s, "
            f"{size(per_token) / 2 / 1e3:8.1f} kB/s)"
        )


def main() -> None:
    gateway = EmbeddedGateway(Gateway(token="bench")).start()
    try:
        throughput(gateway)
        stop_latency(gateway)
        comm_traffic()
    finally:
        gateway.close()


if __name__ == "__main__":
    main()
