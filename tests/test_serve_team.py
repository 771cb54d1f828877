"""``nbchat serve`` for a team: two gateway processes on one Redis serve the same
sessions. A client fails over between them (``Chat(url=[a, b])``) and its reply ends
exact, or, if the gateway generating it is killed, ends with ``gateway_lost`` and its
partial text within 10 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbchat import Chat

from faults import FaultyProxy
from redis_server import RedisServer
from replay_server import Replay
from timeouts import TIMEOUT, wait_until

pytestmark = pytest.mark.redis

TOKEN = "team-secret-token"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])


def serve(redis: RedisServer, log: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    """``nbchat serve`` on a free port and the shared Redis; its output goes to ``log``
    (a file, not a pipe nobody reads, which would block it when full)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "nbchat", "serve", "--port", "0"),
                *("--store", redis.url, "--token", TOKEN, "--drain-s", "20", *extra),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NBCHAT_CONFIG": "", "OPENAI_API_KEY": "", **(env or {})},
        )
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("nbchat gateway listening on"):
                return Served(process, line.rsplit(" ", 1)[1], log)
        time.sleep(0.05)
    process.kill()
    raise AssertionError("nbchat serve did not start:\n" + log.read_text())


@pytest.fixture
def gateways(redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    a, b = serve(redis, tmp_path / "a.log"), serve(redis, tmp_path / "b.log")
    yield a, b
    for served in (a, b):
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait(TIMEOUT)


def uninterrupted(url: str, text: str) -> str:
    with Chat(url=url, token=TOKEN, tokens_per_s=0) as chat:
        return chat.send(text).wait(TIMEOUT).text


def test_a_cut_link_to_a_resumes_on_b_with_the_exact_text(gateways: tuple[Served, Served]) -> None:
    a, b = gateways
    proxy = FaultyProxy(a.port, seed=11, slice_bytes=None).start()
    try:
        with Chat(url=[proxy.url(), b.url], token=TOKEN, tokens_per_s=40) as chat:
            reply = chat.send("started on A, finished through B " * 4)
            wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
            proxy.cut()
            reply.wait(TIMEOUT)
            assert chat.url == b.url
            assert chat.status_detail.startswith("resumed")
            assert reply.finish == "stop"
            assert reply.text == uninterrupted(b.url, "started on A, finished through B " * 4)
    finally:
        proxy.close()


def test_sigkill_of_the_generating_gateway_ends_the_reply_with_gateway_lost(
    gateways: tuple[Served, Served],
) -> None:
    a, b = gateways
    with Chat(url=[a.url, b.url], token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send("the gateway making this is killed " * 4)
        wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
        a.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        reply.wait(TIMEOUT + 5)
        ended_after = time.monotonic() - killed_at
        print(f"\nended {ended_after:.1f} s after the SIGKILL")
        assert ended_after < 10.0
        assert reply.finish == "error"
        assert reply.error_code == "gateway_lost"
        assert reply.text
        assert uninterrupted(b.url, "the gateway making this is killed " * 4).startswith(reply.text)
        assert chat.url == b.url
        assert chat.send("B serves on", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


def test_sigterm_drains_and_the_client_continues_on_b_exactly(
    gateways: tuple[Served, Served],
) -> None:
    a, b = gateways
    text = "A is told to stop while it writes this " * 3
    with Chat(url=[a.url, b.url], token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send(text)
        wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
        a.process.send_signal(signal.SIGTERM)
        reply.wait(TIMEOUT + 20)
        assert reply.finish == "stop", reply.error
        assert reply.text == uninterrupted(b.url, text)
        assert chat.url == b.url
        # A finished generating the reply into Redis, then exited cleanly.
        assert a.process.wait(30) == 0


def test_pause_and_resume_through_b_of_a_reply_generated_by_process_a(
    gateways: tuple[Served, Served],
) -> None:
    a, b = gateways
    text = "paused through the other process " * 4
    proxy = FaultyProxy(a.port, seed=12, slice_bytes=None).start()
    try:
        with Chat(url=[proxy.url(), b.url], token=TOKEN, tokens_per_s=30) as chat:
            reply = chat.send(text)
            wait_until(lambda: len(reply.chunks) >= 3, "streaming from A")
            proxy.cut()
            wait_until(lambda: chat.url == b.url and chat.status == "connected", "on B")
            reply.pause()
            wait_until(lambda: reply.status == "paused", "paused through B")
            held = len(reply.text)
            time.sleep(1.0)  # A goes on generating, and holds it
            assert len(reply.text) == held
            reply.resume().wait(TIMEOUT)
            assert reply.finish == "stop"
            assert reply.text == uninterrupted(b.url, text)
    finally:
        proxy.close()


def test_stop_through_b_closes_process_a_s_provider_request(
    redis: RedisServer, replay: Replay, tmp_path: Path
) -> None:
    config = tmp_path / "nbchat.toml"
    config.write_text(
        '[[models]]\nname = "long"\nprovider = "openai-compatible"\n'
        f'base_url = "{replay.base_url}"\napi_key_env = "NBCHAT_TEST_KEY"\n'
    )
    replay.event_delay_s = 0.02
    env = {"NBCHAT_TEST_KEY": "sk-test-0123456789"}
    a = serve(redis, tmp_path / "a.log", "--config", str(config), env=env)
    b = serve(redis, tmp_path / "b.log", "--config", str(config), env=env)
    proxy = FaultyProxy(a.port, seed=13, slice_bytes=None).start()
    try:
        with Chat(url=[proxy.url(), b.url], token=TOKEN, model="long") as chat:
            reply = chat.send("go on forever")
            wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
            proxy.cut()
            wait_until(lambda: chat.url == b.url and chat.status == "connected", "on B")
            replay.disconnected_at.clear()
            reply.stop().wait(TIMEOUT)
            assert reply.finish == "stopped"
            wait_until(lambda: bool(replay.disconnected_at), "A's upstream request closed")
    finally:
        proxy.close()
        for served in (a, b):
            served.process.kill()
            served.process.wait(TIMEOUT)
