"""Coalescing a reply's text into fewer ``delta`` frames. Pure: the clock is passed in.

Every delta frame costs the gateway about the same whatever it carries (encoding,
the session log, framing, a system call), so under load the cost per token falls with
the tokens per frame. A client needs no more than a frame every ``window_s``: the pane
shows at most 20 updates a second. The rule: text goes at once when no delta went in
the last ``window_s`` (so a reply's first token is never held); otherwise it waits, with
whatever else arrives, until ``window_s`` after the last delta. Reasoning and answer
text are kept apart and in order. A window of 0 sends every chunk as it comes.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["DeltaCoalescer", "Kind"]

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
