"""The stress command's chaos: the random soak over many seeds (``scripts/stress``;
NBCHAT_STRESS_SEEDS sets how many, 20 by default). Every run: no reply hangs, none
ends other than normally, not a character lost or duplicated."""

from __future__ import annotations

import os

import pytest

from nbchat.gateway import EmbeddedGateway

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
