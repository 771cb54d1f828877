"""Coalescing a reply's text into fewer ``delta`` frames. Pure: the clock is passed in.

Every delta frame costs the gateway about the same whatever it carries (encoding,
the session log, framing, a system call), so under load the cost per token falls with
the tokens per frame. A client needs no more than a frame every ``window_s``: the pane
shows at most 20 updates a second. The rule: text goes at once when no delta went in
the last ``window_s`` (so a reply's first token is never held); otherwise it waits, with
whatever else arrives, until ``window_s`` after the last delta. Reasoning and answer
text are kept apart and in order. A window of 0 sends every chunk as it comes.

:class:`LoadWindow` widens the window while the gateway falls behind (its event loop
runs late), up to a bound: one core that cannot send a frame per token for every
session can still send every token, in fewer, larger frames, instead of falling
further behind with each one.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["DeltaCoalescer", "Kind", "LoadWindow"]

Kind = Literal["reasoning"] | None  # as Delta.kind: None is the answer's text


class DeltaCoalescer:
    def __init__(self, window_s: float) -> None:
        if not (math.isfinite(window_s) and window_s >= 0):
            raise ValueError(f"a delta window is 0 or more seconds, not {window_s!r}")
        self.window_s = window_s
        self._kind: Kind = None
        self._held: list[str] = []
        self._last = float("-inf")  # when the last delta went

    def add(self, kind: Kind, text: str, now: float) -> list[tuple[Kind, str]]:
        """Text from the provider; returns the deltas to send now, in order."""
        if not text:
            return []
        out = self.flush(now) if self._held and kind != self._kind else []
        if not self._held and now >= self._last + self.window_s:
            self._last = now
            out.append((kind, text))
        else:
            self._kind = kind
            self._held.append(text)
        return out

    def due(self) -> float | None:
        """When the held text must go (None: nothing is held)."""
        return self._last + self.window_s if self._held else None

    def flush(self, now: float) -> list[tuple[Kind, str]]:
        """The held text as one delta (none if nothing is held): at its due time, and
        before anything else of the reply goes (a tool call, its end)."""
        if not self._held:
            return []
        text, self._held = "".join(self._held), []
        self._last = now
        return [(self._kind, text)]


class LoadWindow:
    """The delta window a loaded gateway uses: ``base_s`` while it keeps up with room to
    spare, wider (up to ``max_s``) while it falls behind or is about to. Pure: fed
    samples of the event loop's lag and of how busy its thread is.

    ``observe(lag_s, busy)`` takes, for one sample period (``SAMPLE_S``), how late a
    timer fired and the loop thread's CPU time over that period's wall time, and smooths
    both. The loop's lag stays near 0 until the core is full and then climbs, so alone
    it would narrow the window as soon as a wider one made the gateway keep up, and
    overload it again; how busy the loop is says how close to full it runs. So:
    late (smoothed lag over ``BEHIND_S``) or nearly full (busy over ``FULL``): the
    window grows by a tenth of its range per sample (base to max in ten samples, a
    second or more). On time and with room (lag under ``KEEPING_UP_S`` and busy under
    ``ROOM``): it narrows by a fortieth (four seconds or more), so a gateway whose load
    fell keeps its lateness low again without swinging back into overload. Between
    the two it stays.
    """

    SAMPLE_S = 0.1
    BEHIND_S = 0.05
    KEEPING_UP_S = 0.01
    FULL = 0.9
    ROOM = 0.7
    SMOOTHING = 0.3  # the weight of a new sample

    def __init__(self, base_s: float, max_s: float) -> None:
        if not (math.isfinite(base_s) and base_s >= 0):
            raise ValueError(f"a delta window is 0 or more seconds, not {base_s!r}")
        if not (math.isfinite(max_s) and max_s >= base_s):
            raise ValueError(
                f"the widest delta window is a number of seconds from {base_s!r}, not {max_s!r}"
            )
        self.base_s = base_s
        self.max_s = max_s
        self.window_s = base_s
        self.lag_s = 0.0  # smoothed
        self.busy = 0.0  # smoothed

    @property
    def adapts(self) -> bool:
        return self.max_s > self.base_s

    def observe(self, lag_s: float, busy: float = 0.0) -> float:
        """One sample: the loop's lag (seconds late; negative or NaN counts as 0, more
        than 10 as 10) and its thread's CPU time per wall second (0 to 1; more counts
        as 1). Returns the window to use now."""
        lag_s = min(lag_s, 10.0) if lag_s > 0 else 0.0  # also NaN; inf would stick
        busy = min(1.0, busy) if busy > 0 else 0.0
        self.lag_s += self.SMOOTHING * (lag_s - self.lag_s)
        self.busy += self.SMOOTHING * (busy - self.busy)
        span = self.max_s - self.base_s
        if self.lag_s > self.BEHIND_S or self.busy > self.FULL:
            self.window_s = min(self.max_s, self.window_s + span / 10)
        elif self.lag_s < self.KEEPING_UP_S and self.busy < self.ROOM:
            self.window_s = max(self.base_s, self.window_s - span / 40)
        return self.window_s
