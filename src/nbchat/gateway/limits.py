"""The gateway's limits, and the frame-rate check each connection applies. Pure: the
clock is passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..protocol import DEFAULT_MAX_FRAME_BYTES

__all__ = ["FrameRate", "GatewayLimits"]


@dataclass(frozen=True)
class GatewayLimits:
    """What one gateway accepts. Every limit has a clear answer: an ``error`` frame
    naming it, or a WebSocket close code and reason for abuse."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES  # larger: close 1009 (message too big)
    # Sustained frames per connection (a fast offline loop of chat turns sends about
    # 100 a second); excess: rate_limited.
    frames_per_s: float = 200.0
    frame_burst: int = 400  # frames allowed at once before the rate applies
    flood_rejections: int = 500  # frames refused within one second that close the link (1008)
    replies_per_session: int = 4  # concurrent replies; more: busy
    sessions: int = 1000  # live sessions per gateway; more: busy, close 1013
    hello_timeout_s: float = 10.0  # no hello by then: close 1008
    session_idle_s: float = 900.0  # a session with no client and no reply expires
    # Frames waiting for a client that does not read; more: it is detached (close
    # 1008) and catches up from the log when it resumes.
    send_queue_bytes: int = 4 * 1024 * 1024
    # Tool rounds (a model's calls, then their results) one reply may take; one more
    # ends it with tool_error naming this bound.
    tool_rounds: int = 8
    # How long the gateway waits for the results of a round of tool calls (the tool
    # runs in the client's kernel): then the reply ends with tool_error.
    tool_result_s: float = 600.0
    # A reply's text that arrives within this long of its last delta waits and goes
    # with it as one delta (coalesce.py): fewer frames per token under load, at the cost
    # of up to this much delay. 0: every chunk goes as it comes.
    delta_window_s: float = 0.0
    # While the gateway falls behind (its event loop runs late), the window widens up
    # to this (coalesce.LoadWindow), so it sends every token in fewer frames instead of
    # falling further behind. None: the window stays delta_window_s.
    delta_window_max_s: float | None = None

    def __post_init__(self) -> None:
        # Checked here, not per reply: a bad window must stop the gateway being made.
        if not (math.isfinite(self.delta_window_s) and self.delta_window_s >= 0):
            raise ValueError(
                f"delta_window_s must be 0 or more seconds, not {self.delta_window_s!r}"
            )
        widest = self.delta_window_max_s
        if widest is not None and not (math.isfinite(widest) and widest >= self.delta_window_s):
            raise ValueError(
                f"delta_window_max_s must be a number of seconds from delta_window_s "
                f"({self.delta_window_s!r}), not {widest!r}"
            )


class FrameRate:
    """A token bucket: ``allow(now)`` says whether one more frame fits. It also counts
    the frames it refused in the current second, so a flood (``flooding``) can be told
    from a burst that merely ran ahead of the rate."""

    def __init__(self, per_s: float, burst: int, flood_rejections: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self.flood_rejections = flood_rejections
        self._tokens = float(burst)
        self._last: float | None = None
        self._window_start = 0.0
        self.rejected_this_second = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if now - self._window_start >= 1.0:
            self._window_start, self.rejected_this_second = now, 0
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.rejected_this_second += 1
        return False

    @property
    def flooding(self) -> bool:
        return self.rejected_this_second >= self.flood_rejections
