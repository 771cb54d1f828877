"""The ranges request params must lie in. Pure.

The protocol already refuses non-finite numbers; this bounds each number a provider
acts on, so no request can make a provider wait forever (``tokens_per_s: 1e-300``) or
hand an absurd value upstream. A param not listed here is the provider's to judge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["PARAM_RANGES", "param_problem"]

# name: (lowest, highest, whether it must be an integer). The README lists these.
PARAM_RANGES: Final[dict[str, tuple[float, float, bool]]] = {
    "tokens_per_s": (0, 100_000, False),  # the demo model's pace; 0 = unpaced
    "max_tokens": (1, 1_000_000, True),
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "top_k": (1, 1_000_000, True),
    "seed": (-(2**63), 2**63 - 1, True),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
}
# Below this, tokens_per_s would pace a reply slower than one token every 10 s.
MIN_TOKENS_PER_S: Final = 0.1


def param_problem(params: Mapping[str, Any]) -> str | None:
    """What is wrong with ``params``, in words for the user, or None if nothing is."""
    for name, (low, high, integral) in PARAM_RANGES.items():
        if name not in params:
            continue
        value = params[name]
        kind = "an integer" if integral else "a number"
        numeric = isinstance(value, int) if integral else isinstance(value, (int, float))
        if isinstance(value, bool) or not numeric:
            return f"param {name} must be {kind} from {low:g} to {high:g}, not {value!r:.40}"
        if not low <= value <= high:
            return f"param {name}={value:g} is out of range: {kind} from {low:g} to {high:g}"
    rate = params.get("tokens_per_s")
    if isinstance(rate, (int, float)) and 0 < rate < MIN_TOKENS_PER_S:
        return f"param tokens_per_s={rate:g} is too slow: use 0 (unpaced) or at least 0.1"
    return None
