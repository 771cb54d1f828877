"""The link survives the network: cuts, stalls, a gateway that stops listening for a
while. Every transcript ends byte-identical to an uninterrupted run.

These are the scripted cases; random chaos over many seeds (the soak) is the stress
command's, ``scripts/stress`` (tests/stress/), and its timing figures are a benchmark's
(benchmarks/bench_resume.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from nbchat import Chat
from nbchat.backoff import Backoff
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.session import LogLimits

from faults import FaultyProxy
from timeouts import TIMEOUT, wait_until


@pytest.fixture
def proxy(embedded: EmbeddedGateway) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(embedded.gateway.port, seed=1234).start()
    yield proxy
    proxy.close()


def test_gateway_gone_for_three_seconds_then_back(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=40) as chat:
        reply = chat.send("survive an outage " * 5)
        wait_until(lambda: len(reply.chunks) >= 5, "streaming")
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        wait_until(lambda: chat.status == "reconnecting", "reconnecting")
        time.sleep(3)
        assert not reply.finished  # it waits through the outage
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(TIMEOUT)
        reply.wait(3 * TIMEOUT)
        assert reply.finish == "stop"
        with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0) as direct:
            assert reply.text == direct.send("survive an outage " * 5).wait(TIMEOUT).text
        assert chat.status == "connected"
        assert chat.status_detail.startswith("resumed after")


def test_frames_sent_while_offline_go_out_after_the_resume(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=30) as chat:
        reply = chat.send("pause me while the link is down")
        wait_until(lambda: len(reply.chunks) >= 3, "streaming")
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        wait_until(lambda: chat.status == "reconnecting", "reconnecting")
        reply.pause()  # queued: the link is down
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(TIMEOUT)
        wait_until(lambda: reply.status == "paused", "the queued pause applied", 3 * TIMEOUT)
        held = len(reply.text)
        time.sleep(0.5)
        assert len(reply.text) == held
        reply.resume().wait(3 * TIMEOUT)
        assert reply.finish == "stop"


def test_a_pause_survives_a_reconnect(embedded: EmbeddedGateway, proxy: FaultyProxy) -> None:
    with Chat(url=proxy.url(), token=embedded.token, tokens_per_s=40) as chat:
        reply = chat.send("pause, then lose the link")
        wait_until(lambda: len(reply.chunks) >= 3, "streaming")
        reply.pause()
        wait_until(lambda: reply.status == "paused", "paused")
        proxy.cut()
        wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed")
        held = len(reply.text)
        time.sleep(1.0)  # the gateway still holds the text it generates
        assert reply.status == "paused"
        assert len(reply.text) == held
        reply.resume().wait(TIMEOUT)
        with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0) as direct:
            assert reply.text == direct.send("pause, then lose the link").wait(TIMEOUT).text


def test_gives_up_as_offline_and_reconnect_brings_it_back(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    backoff = Backoff(initial_s=0.05, cap_s=0.1, max_attempts=3)
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=20, backoff=backoff) as chat:
        reply = chat.send("this one is cut off")
        wait_until(lambda: len(reply.chunks) >= 2, "streaming")
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        reply.wait(TIMEOUT)
        assert reply.status == "error"
        assert reply.error is not None
        assert reply.error.startswith("gave up after 3 attempts")
        assert chat.status == "offline"
        assert "cannot reach the gateway" in chat.error
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(TIMEOUT)
        chat.reconnect()
        wait_until(lambda: chat.status == "connected", "connected again")
        assert chat.send("and now?", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


def test_resume_after_the_log_was_trimmed_still_ends_exact() -> None:
    # A log of 5 events: any real outage outruns it, so the resume is a gap.
    gateway = EmbeddedGateway(Gateway(token="t", log_limits=LogLimits(max_events=5))).start()
    proxy = FaultyProxy(gateway.gateway.port, seed=5).start()
    try:
        with Chat(url=proxy.url(), token="t", tokens_per_s=100) as chat:
            reply = chat.send("a gap, then the rest")
            wait_until(lambda: len(reply.chunks) >= 3, "streaming")
            proxy.stall(0.6)  # the reply runs on at the gateway meanwhile
            time.sleep(0.65)
            proxy.cut()
            reply.wait(3 * TIMEOUT)
        with Chat(url=gateway.url, token="t", tokens_per_s=0) as direct:
            assert reply.text == direct.send("a gap, then the rest").wait(TIMEOUT).text
        assert reply.finish == "stop"
    finally:
        proxy.close()
        gateway.close()
