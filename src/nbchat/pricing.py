"""What a reply cost, from the tokens its provider reported and a price table the user
gives. Pure: no I/O.

A price table maps a model name, as the chat uses it, to ``(input, output)``: US dollars
per million prompt tokens and per million completion tokens. nbchat ships no prices of
providers (they change, and a wrong figure is worse than none): a model not in the table
costs ``None``, as does a reply whose provider reported no usage. Only the offline
``demo`` model is priced here, at nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["BUILTIN_PRICES", "Prices", "check_prices", "cost", "prices_with", "token_count"]

Prices = Mapping[str, tuple[float, float]]

PER_TOKENS: Final = 1_000_000
BUILTIN_PRICES: Final[Mapping[str, tuple[float, float]]] = {"demo": (0.0, 0.0)}


def check_prices(prices: Any) -> dict[str, tuple[float, float]]:
    """``prices`` as a plain dict, if it is a price table; raise ``ValueError`` saying
    what is wrong otherwise."""
    if not isinstance(prices, Mapping):
        raise ValueError(
            "prices must map model names to (input, output) US dollars per 1M tokens, "
            'e.g. {"gpt-4o-mini": (0.15, 0.60)}'
        )
    out: dict[str, tuple[float, float]] = {}
    for model, price in prices.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"prices: a model name must be non-empty text, not {model!r}")
        if isinstance(price, (str, bytes)) or not hasattr(price, "__len__") or len(price) != 2:
            raise ValueError(
                f"prices[{model!r}] must be (input, output) US dollars per 1M tokens, not {price!r}"
            )
        pair = tuple(price)
        for value in pair:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"prices[{model!r}] must be two finite numbers of 0 or more, not {price!r}"
                )
        out[model] = (float(pair[0]), float(pair[1]))
    return out


def prices_with(prices: Any | None) -> dict[str, tuple[float, float]]:
    """The built-in table with ``prices`` (checked) over it."""
    return {**BUILTIN_PRICES, **(check_prices(prices) if prices is not None else {})}


def cost(model: str | None, usage: Mapping[str, Any] | None, prices: Prices) -> float | None:
    """US dollars for ``usage`` (``prompt_tokens`` and ``completion_tokens``) on
    ``model`` at ``prices``; ``None`` when the model has no price or a count is missing.
    A name tagged ``:latest`` (as Ollama lists it) takes the untagged name's price."""
    if model is None or not usage:
        return None
    price = prices.get(model)
    if price is None and model.endswith(":latest"):
        price = prices.get(model.removesuffix(":latest"))
    prompt = token_count(usage.get("prompt_tokens"))
    completion = token_count(usage.get("completion_tokens"))
    if price is None or prompt is None or completion is None:
        return None
    return (prompt * price[0] + completion * price[1]) / PER_TOKENS


def token_count(value: Any) -> int | None:
    """``value`` if it is a token count (a whole number of 0 or more, not a bool), else
    ``None``: a provider's usage figure as it may be trusted."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None
