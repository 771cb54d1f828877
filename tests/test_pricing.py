"""The price table and what a reply cost: never invented, null where unknown."""

from __future__ import annotations

import math

import pytest

from nbchat.pricing import BUILTIN_PRICES, check_prices, cost, prices_with, token_count

USAGE = {"prompt_tokens": 1_000, "completion_tokens": 500, "total_tokens": 1_500}


def test_cost_is_tokens_times_price_per_million() -> None:
    prices = {"gpt-4o-mini": (0.15, 0.60)}
    assert math.isclose(cost("gpt-4o-mini", USAGE, prices), (1_000 * 0.15 + 500 * 0.60) / 1e6)


def test_unknown_model_or_missing_usage_costs_nothing_known() -> None:
    prices = {"gpt-4o-mini": (0.15, 0.60)}
    assert cost("claude-sonnet-4-6", USAGE, prices) is None
    assert cost(None, USAGE, prices) is None
    assert cost("gpt-4o-mini", None, prices) is None
    assert cost("gpt-4o-mini", {"prompt_tokens": 10}, prices) is None
    assert cost("gpt-4o-mini", {"prompt_tokens": 10, "completion_tokens": True}, prices) is None


def test_demo_is_free_and_ollama_latest_takes_the_untagged_price() -> None:
    assert cost("demo", USAGE, BUILTIN_PRICES) == 0.0
    assert cost("llama3.2:latest", USAGE, {"llama3.2": (1.0, 2.0)}) == pytest.approx(0.002)


def test_user_prices_go_over_the_builtin_table() -> None:
    table = prices_with({"demo": (1.0, 1.0), "m": [2, 3]})
    assert table == {"demo": (1.0, 1.0), "m": (2.0, 3.0)}
    assert prices_with(None) == dict(BUILTIN_PRICES)


@pytest.mark.parametrize(
    ("prices", "says"),
    [
        ([("m", (1, 2))], "must map model names"),
        ({"": (1, 2)}, "non-empty text"),
        ({"m": 1.0}, r"\(input, output\)"),
        ({"m": "12"}, r"\(input, output\)"),
        ({"m": (1, 2, 3)}, r"\(input, output\)"),
        ({"m": (-1, 2)}, "0 or more"),
        ({"m": (float("nan"), 2)}, "finite"),
        ({"m": (True, 2)}, "finite numbers"),
    ],
)
def test_a_bad_price_table_says_what_is_wrong(prices: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_prices(prices)


@pytest.mark.parametrize(
    ("value", "count"),
    [(0, 0), (11, 11), (-1, None), (True, None), (1.0, None), ("3", None), (None, None)],
)
def test_a_token_count_is_a_whole_number_of_zero_or_more(value: object, count: int | None) -> None:
    assert token_count(value) == count
