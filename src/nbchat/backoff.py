"""When to try reconnecting: exponential backoff with full jitter. Pure: the random
source is passed in.

Full jitter (a delay drawn uniformly from zero to the exponential bound) spreads the
reconnects of many clients that lost the same gateway, so they do not return in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays before reconnect attempts 1, 2, 3, ...

    Attempt ``n`` waits a uniform draw from ``[0, min(cap_s, initial_s * factor**(n-1))]``,
    so the first retry after a drop comes within ``initial_s``. The link is given up as
    offline ``give_up_after_s`` seconds after the drop (the reply in flight then ends
    with an error), or after ``max_attempts`` failed attempts, whichever comes first;
    ``None`` lifts either limit, both ``None`` retries forever.
    """

    initial_s: float = 0.5
    cap_s: float = 10.0
    factor: float = 2.0
    max_attempts: int | None = None
    give_up_after_s: float | None = 30.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.cap_s < self.initial_s or self.factor < 1:
            raise ValueError("need 0 < initial_s <= cap_s and factor >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, or None for no limit")
        if self.give_up_after_s is not None and not self.give_up_after_s > 0:
            raise ValueError("give_up_after_s must be more than 0, or None for no limit")

    def bound(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` (from 1) may wait."""
        return float(min(self.cap_s, self.initial_s * self.factor ** (attempt - 1)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.bound(attempt))

    def remaining(self, elapsed_s: float) -> float | None:
        """Seconds left before giving up, ``elapsed_s`` after the drop (None: no limit)."""
        if self.give_up_after_s is None:
            return None
        return max(0.0, self.give_up_after_s - elapsed_s)

    def exhausted(self, attempts: int, elapsed_s: float = 0.0) -> bool:
        """Whether ``attempts`` failed attempts, ``elapsed_s`` after the drop, mean
        giving up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return True
        return self.remaining(elapsed_s) == 0.0
