"""A long conversation: does a turn cost the same at turn 2,000 as at turn 1, and does
memory stay flat? Prints figures with a baseline measured in the same run.

1. 2,000 replies in one Chat with ``clear()`` every 100, against ``nbchat serve`` in its
   own process: time per 100 turns, and the RSS of the client (this process) and of the
   gateway, after each 100.
2. 1,000 turns without ``clear()``: the history grows with every turn and is sent with
   every request. The baseline is a bare WebSocket client sending the very same start
   frames (same history) to the same gateway, so the difference is Chat's own cost.

Run: .venv/bin/python benchmarks/bench_long_chat.py   (about 3 minutes)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

from nbchat import Chat

TURNS, CLEAR_EVERY = 2000, 100
GROWING_TURNS = 1000


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_gateway() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "nbchat", "serve", "--port", "0", "--token", "bench"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NBCHAT_CONFIG": ""},
    )
    assert server.stdout is not None
    url = server.stdout.readline().rsplit(" ", 1)[-1].strip()
    return server, url


def clearing_run(url: str, gateway_pid: int) -> None:
    blocks: list[tuple[float, float, float]] = []  # seconds, client MB, gateway MB
    with Chat(url=url, token="bench", tokens_per_s=0) as chat:
        began = time.perf_counter()
        for turn in range(TURNS):
            if turn and turn % CLEAR_EVERY == 0:
                chat.clear()
            reply = chat.send(f"question {turn}: " + "tell me more " * 5).wait(60)
            assert reply.finish == "stop", reply.error
            if turn % 100 == 99:
                gc.collect()
                blocks.append((time.perf_counter() - began, rss_mb(), rss_mb(gateway_pid)))
                began = time.perf_counter()
    first, last = blocks[0][0], blocks[-1][0]
    warm = blocks[1]  # after the first 200 replies: imports, caches and pools are warm
    print(f"{TURNS} replies, clear() every {CLEAR_EVERY}:")
    print(
        f"  time per 100 turns: first {first:.2f} s, last {last:.2f} s "
        f"(last/first = {last / first:.2f}; target <= 1.5)"
    )
    print(
        f"  client RSS: {warm[1]:.1f} MB after 200 -> {blocks[-1][1]:.1f} MB after {TURNS} "
        f"(growth {blocks[-1][1] - warm[1]:+.1f} MB; target < 5)"
    )
    print(
        f"  gateway RSS: {warm[2]:.1f} MB after 200 -> {blocks[-1][2]:.1f} MB after {TURNS} "
        f"(growth {blocks[-1][2] - warm[2]:+.1f} MB; target < 5)"
    )


async def raw_growing(url: str, histories: list[list[dict[str, str]]]) -> list[float]:
    """Baseline: the same start frames, sent by a bare client; seconds per 100 turns."""
    blocks, began = [], time.perf_counter()
    headers = {"Authorization": "Bearer bench"}
    async with connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "client": "bench"}))
        await ws.recv()
        for turn, messages in enumerate(histories):
            start = {
                "type": "start",
                "reply": f"raw{turn}",
                "model": "demo",
                "params": {"tokens_per_s": 0},
                "messages": messages,
            }
            await ws.send(json.dumps(start, ensure_ascii=False, separators=(",", ":")))
            while json.loads(await ws.recv())["type"] != "done":
                pass
            if turn % 100 == 99:
                blocks.append(time.perf_counter() - began)
                began = time.perf_counter()
    return blocks


def growing_run(url: str) -> None:
    blocks, histories = [], []
    with Chat(url=url, token="bench", tokens_per_s=0) as chat:
        began = time.perf_counter()
        for turn in range(GROWING_TURNS):
            chat.send(f"question {turn}").wait(60)
            if turn % 100 == 99:
                blocks.append(time.perf_counter() - began)
                began = time.perf_counter()
        # The history each of those requests carried, rebuilt from the transcript.
        records = chat.messages
    for turn in range(GROWING_TURNS):
        histories.append(
            [{"role": m["role"], "content": m["content"]} for m in records[: 2 * turn + 1]]
        )
    raw = asyncio.run(raw_growing(url, histories))
    overhead = [c - r for c, r in zip(blocks, raw, strict=True)]
    print(f"{GROWING_TURNS} turns without clear() (the history grows and is sent each turn):")
    print(f"  Chat:     first 100 {blocks[0]:.2f} s, last 100 {blocks[-1]:.2f} s")
    print(
        f"  baseline: first 100 {raw[0]:.2f} s, last 100 {raw[-1]:.2f} s (bare client, same frames)"
    )
    print(
        f"  Chat's own cost per turn: first 100 {overhead[0] * 10:.1f} ms, "
        f"last 100 {overhead[-1] * 10:.1f} ms"
    )


def main() -> None:
    server, url = start_gateway()
    try:
        clearing_run(url, server.pid)
        growing_run(url)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
