"""A gateway's Prometheus metrics, served at ``GET /metrics``.

Each :class:`GatewayMetrics` owns its own ``CollectorRegistry`` (never the process's
global one): a process may run several gateways (the tests do, and a kernel's embedded
gateway lives beside any other), and each must count only its own traffic.

Gauges are read when scraped (the number of connections, sessions and running
replies is whatever the gateway holds at that moment), so nothing has to be kept in
step with them; counters are moved by one-line hooks where frames are sent and where
a reply's generation ends.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from ..protocol import ERROR_CODES, FINISH_REASONS, SERVER_TYPES

if TYPE_CHECKING:
    from ..session import GatewaySession
    from .server import Gateway

__all__ = ["CONTENT_TYPE", "STORE_LATENCY_BUCKETS", "GatewayMetrics", "ended_as"]

# The classic text format, which every Prometheus version reads (our names are plain
# ASCII, so generate_latest writes the same text whichever version it labels it).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_TYPE_PREFIX: Final = '{"type":"'

# Seconds; a local Redis answers in well under a millisecond, a loaded or remote one
# in a few: the buckets resolve both, and show the slow tail up to 2.5 s.
STORE_LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class GatewayMetrics:
    """The metrics of one gateway, in a registry of their own (``registry``).

    Counters: ``nbchat_frames_out_total{type}``, ``nbchat_deltas_out_total``,
    ``nbchat_bytes_out_total`` (UTF-8 bytes of the JSON text of frames queued to
    clients, replays included), ``nbchat_errors_sent_total{code}``,
    ``nbchat_resumes_total`` (welcomes that resumed a session),
    ``nbchat_replies_ended_total{finish}`` (replies whose generation on this gateway
    ended, by how; a refused start counts as ``error``). Gauges, read at scrape time:
    ``nbchat_connections``, ``nbchat_sessions``, ``nbchat_replies_in_flight``,
    ``nbchat_draining``, ``nbchat_delta_window_seconds``, ``nbchat_loop_lag_seconds``.
    Histogram ``nbchat_store_latency_seconds{op}``, observed by
    the session store. Plus the standard ``process_*`` metrics (CPU, memory, fds).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.connections = Gauge(
            "nbchat_connections", "WebSocket connections open", registry=registry
        )
        self.sessions = Gauge("nbchat_sessions", "sessions this gateway holds", registry=registry)
        self.replies_in_flight = Gauge(
            "nbchat_replies_in_flight",
            "replies this gateway is generating",
            registry=registry,
        )
        self.draining = Gauge(
            "nbchat_draining", "1 while the gateway drains before exiting", registry=registry
        )
        self.delta_window = Gauge(
            "nbchat_delta_window_seconds",
            "the delta window in use: wider while the gateway falls behind",
            registry=registry,
        )
        self.loop_lag = Gauge(
            "nbchat_loop_lag_seconds",
            "how late the gateway's event loop runs (smoothed; sampled while the delta "
            "window adapts, NaN otherwise)",
            registry=registry,
        )
        self.replies_ended = Counter(
            "nbchat_replies_ended",
            "replies whose generation on this gateway ended, by finish",
            ["finish"],
            registry=registry,
        )
        self.frames_out = Counter(
            "nbchat_frames_out", "frames sent to clients, by type", ["type"], registry=registry
        )
        self.deltas_out = Counter(
            "nbchat_deltas_out", "delta frames sent to clients", registry=registry
        )
        self.bytes_out = Counter(
            "nbchat_bytes_out",
            "bytes of frame text (UTF-8 JSON) sent to clients",
            registry=registry,
        )
        self.errors_sent = Counter(
            "nbchat_errors_sent",
            "error frames sent to clients, by code",
            ["code"],
            registry=registry,
        )
        self.resumes = Counter(
            "nbchat_resumes", "sessions resumed by a reconnecting client", registry=registry
        )
        self.store_latency = Histogram(
            "nbchat_store_latency_seconds",
            "time a session-store operation took, by operation",
            ["op"],
            buckets=STORE_LATENCY_BUCKETS,
            registry=registry,
        )
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, RSS, ...
        # Every known label value starts at 0, so a rate() over it exists from the start.
        for finish in FINISH_REASONS:
            self.replies_ended.labels(finish=finish)
        for code in ERROR_CODES:
            self.errors_sent.labels(code=code)
        # Children looked up once: sent() runs for every frame.
        self._frames = {kind: self.frames_out.labels(type=kind) for kind in SERVER_TYPES}

    def watch(self, gateway: Gateway) -> None:
        """Read the gauges from ``gateway`` whenever the metrics are scraped."""
        self.connections.set_function(lambda: len(gateway.connections))
        self.sessions.set_function(lambda: len(gateway.sessions))
        self.replies_in_flight.set_function(
            lambda: sum(len(live.tasks) for live in list(gateway.sessions.values()))
        )
        self.draining.set_function(lambda: 1.0 if gateway.draining else 0.0)
        self.delta_window.set_function(lambda: gateway.delta_window.window_s)
        # Sampled only while the window adapts: otherwise no figure, not a healthy 0.
        self.loop_lag.set_function(
            lambda: gateway.delta_window.lag_s if gateway.delta_window.adapts else math.nan
        )

    def sent(self, text: str) -> None:
        """Count a frame queued to a client, by its encoded JSON text (a shared store
        hands over text, not frames). ``encode`` writes ``type`` first, so the type is
        read off the text's start; only error and welcome frames, which are rare, are
        parsed."""
        kind = text[9 : text.find('"', 9)] if text.startswith(_TYPE_PREFIX) else "unknown"
        child = self._frames.get(kind)
        if child is None:
            child = self._frames[kind] = self.frames_out.labels(type=kind)
        child.inc()
        self.bytes_out.inc(len(text) if text.isascii() else len(text.encode()))
        if kind == "delta":
            self.deltas_out.inc()
        elif kind in ("error", "welcome"):
            try:
                frame = json.loads(text)
            except ValueError:
                return
            if kind == "error":
                self.errors_sent.labels(code=str(frame.get("code"))).inc()
            elif frame.get("resumed") is True:
                self.resumes.inc()

    def reply_ended(self, finish: str | None) -> None:
        """Count a reply whose generation ended (``finish``: how, see :func:`ended_as`)."""
        if finish is not None:
            self.replies_ended.labels(finish=finish).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def ended_as(state: GatewaySession, reply: str) -> str | None:
    """How a reply's generation ended, read when its task is over: its ``done``'s
    finish, or the natural end held while it is paused; None if unknown."""
    progress = state.replies.get(reply)
    if progress is None:
        return None
    if progress.done is not None:
        return progress.done.finish
    return progress.held_done.finish if progress.held_done is not None else None
