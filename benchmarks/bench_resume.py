"""How long a resume takes under chaos: the random soak (tests/soak.py) over a few
seeds, reporting the time from each drop to the resumed welcome, p50 and p95. The
baseline, measured in the same run, is a plain first connect (TCP, WebSocket handshake,
hello, welcome) to the same gateway, with no backoff and no chaos.

The stress command checks that nothing is lost or hung; this only measures.
Run: .venv/bin/python benchmarks/bench_resume.py   (about 1 minute)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway

from soak import run_soak

SEEDS = (101, 102, 103)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def first_connects(gateway: EmbeddedGateway, count: int = 50) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        chat = Chat(url=gateway.url, token=gateway.token)
        while chat.status != "connected":
            time.sleep(0.0005)
        times.append(time.perf_counter() - began)
        chat.close()
    return times


def main() -> None:
    gateway = EmbeddedGateway(Gateway(token="bench")).start()
    try:
        baseline = first_connects(gateway)
        resumes: list[float] = []
        for seed in SEEDS:
            result = run_soak(gateway, seed)
            print(result.line())
            resumes += result.resumes
    finally:
        gateway.close()
    print(
        f"resume under chaos: p50 {statistics.median(resumes):.3f} s, "
        f"p95 {percentile(resumes, 95):.3f} s over {len(resumes)} resumes "
        "(includes the backoff's jittered wait: initial 0.1 s, cap 1 s)"
    )
    print(
        f"baseline first connect: p50 {statistics.median(baseline) * 1000:.1f} ms, "
        f"p95 {percentile(baseline, 95) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
