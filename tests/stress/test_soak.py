"""The stress command's chaos: the random soak over many seeds (``scripts/stress``;
NBCHAT_STRESS_SEEDS sets how many, 20 by default). Every run: no reply hangs, none
ends other than normally, not a character lost or duplicated."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.redis_store import RedisStore

from redis_server import RedisServer
from soak import run_soak

SEEDS = int(os.environ.get("NBCHAT_STRESS_SEEDS", "20"))
FIRST_SEED = int(os.environ.get("NBCHAT_STRESS_FIRST_SEED", "1"))


@pytest.mark.stress
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_random_chaos_loses_nothing_and_never_hangs(embedded: EmbeddedGateway, seed: int) -> None:
    result = run_soak(embedded, seed)
    print("\n" + result.line())
    assert result.cuts >= 100
    assert result.stalls >= 3
    assert result.clean, result.line()


WINDOW_SEEDS = int(os.environ.get("NBCHAT_STRESS_WINDOW_SEEDS", "3"))


@pytest.mark.stress
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + WINDOW_SEEDS))
def test_random_chaos_with_a_delta_window(seed: int) -> None:
    # Text held for the window when a cut, a stop or a pause comes must still arrive,
    # once, in order (nbchat serve --delta-window-ms), and so must text held while the
    # window changes under it, as the gateway's load moves it (--delta-window-max-ms):
    # here it jumps at random between 50 and 250 ms at every sample of the load.
    served = Gateway(
        token="soak", limits=GatewayLimits(delta_window_s=0.05, delta_window_max_s=0.25)
    )
    window, rng = served.delta_window, random.Random(seed)
    widths: list[float] = []

    def jump(lag_s: float, busy: float = 0.0) -> float:
        window.window_s = rng.uniform(window.base_s, window.max_s)
        widths.append(window.window_s)
        return window.window_s

    window.observe = jump  # type: ignore[method-assign]
    gateway = EmbeddedGateway(served).start()
    try:
        result = run_soak(gateway, seed)
    finally:
        gateway.close()
    print("\n" + result.line())
    assert result.cuts >= 100
    assert result.clean, result.line()
    assert len(widths) > 20  # the window did move under the replies, every sample


SHARED_SEEDS = int(os.environ.get("NBCHAT_STRESS_SHARED_SEEDS", "3"))


@pytest.mark.stress
@pytest.mark.redis
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SHARED_SEEDS))
def test_random_chaos_across_two_gateways_on_redis(tmp_path: Path, seed: int) -> None:
    # Two gateways on one Redis, a faulty proxy in front of each; every cut moves a
    # chat to the other gateway, which resumes its session from Redis.
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = RedisServer(tmp_path).start()
    gateways = [
        EmbeddedGateway(Gateway(token="soak", store=RedisStore(redis.url))).start()
        for _ in range(2)
    ]
    try:
        # 20 turns a chat: about a minute of chaos per seed.
        result = run_soak(gateways, seed, turns=20, min_cuts=400)
    finally:
        for gateway in gateways:
            gateway.close()
        redis.stop()
    print("\n" + result.line())
    assert result.cuts >= 400
    assert result.clean, result.line()
