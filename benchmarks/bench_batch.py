"""Batch throughput: nbchat.batch against a plain asyncio loop over the official
``openai`` SDK (AsyncOpenAI, the same concurrency through a Semaphore), both streaming
from the same local server replaying a recorded OpenAI stream
(tests/replay_server.py, in a process of its own, as a provider would be). Prints
prompts/s and tokens/s of each, measured in the same run, and their ratio (target:
nbchat >= 80% of the SDK loop).
Run: .venv/bin/python benchmarks/bench_batch.py [--prompts 200] [--concurrency 8]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI

import nbchat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.providers.openai_compat import OpenAICompatProvider
from nbchat.gateway.server import ModelRoute

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODEL = "gpt-4o-mini"  # the recording tests/fixtures/providers/openai_chat.sse
EXPECTED = "WebSockets keep one TCP connection open in both directions."
REPLAY = """
import sys, time
sys.path.insert(0, {tests!r})
from replay_server import Replay
replay = Replay(event_delay_s={delay!r}).start()
print(replay.port, flush=True)
time.sleep(1e9)
"""


def start_replay(delay_s: float) -> tuple[subprocess.Popen[str], str]:
    code = REPLAY.format(tests=str(TESTS), delay=delay_s)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}/v1"


async def sdk_loop(base_url: str, prompts: list[str], concurrency: int) -> tuple[float, int, float]:
    """Baseline: what one writes without nbchat. Seconds taken, completion tokens."""
    client = AsyncOpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(prompt: str) -> str:
        nonlocal tokens
        async with gate:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            return "".join(parts)

    began, cpu = time.perf_counter(), time.process_time()
    texts = await asyncio.gather(*(one(p) for p in prompts))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    await client.close()
    assert set(texts) == {EXPECTED}, set(texts)
    return elapsed, tokens, cpu


def nbchat_batch(
    gateway: EmbeddedGateway, prompts: list[str], concurrency: int
) -> tuple[float, int, float]:
    began, cpu = time.perf_counter(), time.process_time()
    df = nbchat.batch(
        prompts,
        "gpt",
        url=gateway.url,
        token=gateway.token,
        concurrency=concurrency,
        progress=False,
    )
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert set(df["finish"]) == {"stop"}, df["error"].dropna().unique()[:3]
    assert set(df["text"]) == {EXPECTED}
    return elapsed, int(df["completion_tokens"].sum()), cpu


def compare(delay_s: float, prompts: list[str], concurrency: int, rounds: int) -> None:
    process, base_url = start_replay(delay_s)
    provider = OpenAICompatProvider(base_url=base_url, api_key="sk-bench")
    gateway = EmbeddedGateway(
        Gateway(models={"gpt": ModelRoute(provider, MODEL)}, token="bench")
    ).start()
    try:
        nbchat_batch(gateway, prompts[:20], concurrency)  # warm up both paths
        asyncio.run(sdk_loop(base_url, prompts[:20], concurrency))
        ours, theirs = [], []
        for _ in range(rounds):  # interleaved, so both see the same machine load
            ours.append(nbchat_batch(gateway, prompts, concurrency))
            theirs.append(asyncio.run(sdk_loop(base_url, prompts, concurrency)))
    finally:
        gateway.close()
        process.kill()
        process.wait()
    n = len(prompts)
    ours_s = statistics.median(s for s, _, _ in ours)
    theirs_s = statistics.median(s for s, _, _ in theirs)
    # CPU time of this process (the client, and for nbchat the gateway too; the
    # replay server runs apart): steadier than wall time on a shared machine.
    ours_cpu = statistics.median(c for _, _, c in ours) / len(prompts) * 1000
    theirs_cpu = statistics.median(c for _, _, c in theirs) / len(prompts) * 1000
    tokens = ours[0][1]
    pace = f"{delay_s * 1000:g} ms between events" if delay_s else "unpaced"
    print(
        f"{n} prompts, concurrency {concurrency}, replayed stream {pace} "
        f"(median of {rounds} rounds):"
    )
    print(
        f"  nbchat.batch : {n / ours_s:7.1f} prompts/s, {tokens / ours_s:8,.0f} tokens/s "
        f"({ours_s:.2f} s; CPU {ours_cpu:.2f} ms/prompt, client + gateway)"
    )
    print(
        f"  openai SDK   : {n / theirs_s:7.1f} prompts/s, {theirs[0][1] / theirs_s:8,.0f} "
        f"tokens/s ({theirs_s:.2f} s; CPU {theirs_cpu:.2f} ms/prompt)  "
        "[baseline: AsyncOpenAI + Semaphore]"
    )
    ratio = theirs_s / ours_s
    verdict = "meets" if ratio >= 0.8 else "MISSES"
    print(f"  ratio        : nbchat = {ratio:.0%} of the SDK loop ({verdict} the 80% target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prompts = [f"benchmark question {i}" for i in range(args.prompts)]
    # As a provider streams (paced), and the worst case for nbchat's extra hop: a
    # provider answering instantly, so only the client and gateway work is measured.
    for delay_s in (0.005, 0.0):
        compare(delay_s, prompts, args.concurrency, args.rounds)


if __name__ == "__main__":
    main()
