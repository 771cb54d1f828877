"""Sessions on Redis, shared by gateways: a reply generated on one gateway is delivered,
paused, resumed and stopped through another, and every reply ends, whatever happens
to the gateway generating it or to Redis.

Each test starts its own ``redis-server`` (tests/redis_server.py); the gateways run in
this process on threads of their own (EmbeddedGateway), each with its own Redis
client, as separate processes would. tests/test_serve_team.py does the same with
``nbchat serve`` processes, for what needs a process (SIGKILL, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.config import load_models
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.redis_store import LogEntry, RedisStore
from nbchat.session import LogLimits

from faults import FaultyProxy
from redis_server import RedisServer
from replay_server import Replay
from timeouts import TIMEOUT, wait_until

pytestmark = pytest.mark.redis

TOKEN = "team-token"


def shared_gateway(redis: RedisServer, **kwargs: object) -> EmbeddedGateway:
    gateway = Gateway(token=TOKEN, store=RedisStore(redis.url, lease_s=2.0), **kwargs)  # type: ignore[arg-type]
    return EmbeddedGateway(gateway).start()


@pytest.fixture
def pair(redis: RedisServer) -> Iterator[tuple[EmbeddedGateway, EmbeddedGateway]]:
    a, b = shared_gateway(redis), shared_gateway(redis)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def balancer(pair: tuple[EmbeddedGateway, EmbeddedGateway]) -> Iterator[FaultyProxy]:
    """A load balancer in front of the two: it sends new connections to A until told."""
    proxy = FaultyProxy(pair[0].gateway.port, seed=7, slice_bytes=None).start()
    yield proxy
    proxy.close()


def uninterrupted(gateway: EmbeddedGateway, text: str) -> str:
    with Chat(url=gateway.url, token=TOKEN, tokens_per_s=0) as chat:
        return chat.send(text).wait(TIMEOUT).text


async def say_hello(ws: ClientConnection, session: str | None, last_seq: int = 0) -> dict[str, Any]:
    """Send a hello on a raw connection; the gateway's first answer."""
    hello = {"type": "hello", "client": "test", "session": session, "last_seq": last_seq}
    await ws.send(json.dumps(hello))
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[no-any-return]


def answer_to_hello(url: str, token: str, session: str | None, last_seq: int = 0) -> dict[str, Any]:
    """The first answer of the gateway at ``url`` to a hello for ``session``."""

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(url, additional_headers=headers) as ws:
            return await say_hello(ws, session, last_seq)

    return asyncio.run(run())


def move_to(proxy: FaultyProxy, gateway: EmbeddedGateway) -> None:
    proxy.target_port = gateway.gateway.port
    proxy.cut()


def test_a_reply_generated_on_a_is_delivered_exactly_through_b(
    pair: tuple[EmbeddedGateway, EmbeddedGateway], balancer: FaultyProxy
) -> None:
    a, b = pair
    with Chat(url=balancer.url(), token=TOKEN, tokens_per_s=40) as chat:
        reply = chat.send("one reply, two gateways " * 4)
        wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
        move_to(balancer, b)
        wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed on B")
        # A generates it still; B only delivers it from Redis.
        assert any(live.owned for live in a.gateway.sessions.values())
        assert not any(live.owned for live in b.gateway.sessions.values())
        reply.wait(TIMEOUT)
        assert reply.finish == "stop"
        assert reply.text == uninterrupted(b, "one reply, two gateways " * 4)
        assert chat.send("and the next one, on B", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


def test_pause_and_resume_on_b_of_a_reply_generated_on_a(
    pair: tuple[EmbeddedGateway, EmbeddedGateway], balancer: FaultyProxy
) -> None:
    a, b = pair
    text = "pause me from the other gateway " * 4
    with Chat(url=balancer.url(), token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send(text)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming from A")
        move_to(balancer, b)
        wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed on B")
        reply.pause()
        wait_until(lambda: reply.status == "paused", "paused through B")
        held = len(reply.text)
        time.sleep(1.0)  # A goes on generating, and holds it
        assert len(reply.text) == held
        assert any(live.tasks or live.owned for live in a.gateway.sessions.values())
        reply.resume().wait(TIMEOUT)
        assert reply.finish == "stop"
        assert reply.text == uninterrupted(b, text)


def test_stop_on_b_cancels_the_provider_request_on_a(
    redis: RedisServer, replay: Replay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_TEST_KEY", "sk-test-0123456789")
    config = tmp_path / "nbchat.toml"
    config.write_text(
        '[[models]]\nname = "long"\nprovider = "openai-compatible"\n'
        f'base_url = "{replay.base_url}"\napi_key_env = "NBCHAT_TEST_KEY"\n'
    )
    replay.event_delay_s = 0.02
    a = shared_gateway(redis, models=asyncio.run(load_models(config, os.environ)))
    b = shared_gateway(redis, models=asyncio.run(load_models(config, os.environ)))
    proxy = FaultyProxy(a.gateway.port, seed=3, slice_bytes=None).start()
    try:
        with Chat(url=proxy.url(), token=TOKEN, model="long") as chat:
            reply = chat.send("go on forever")
            wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
            move_to(proxy, b)
            wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed on B")
            replay.disconnected_at.clear()
            reply.stop().wait(TIMEOUT)
            assert reply.finish == "stopped"
            wait_until(lambda: bool(replay.disconnected_at), "A's upstream request closed")
            assert all(not live.tasks for live in a.gateway.sessions.values())
    finally:
        proxy.close()
        a.close()
        b.close()


def test_a_frozen_gateway_s_reply_ends_with_gateway_lost_through_the_other(
    pair: tuple[EmbeddedGateway, EmbeddedGateway], balancer: FaultyProxy
) -> None:
    # A stops dead (its event loop halts: no renewal, no cleanup, sockets left open),
    # as a gateway that hangs or loses its network would; SIGKILL is
    # tests/test_serve_team.py's.
    a, b = pair
    with Chat(url=balancer.url(), token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send("the gateway making this dies " * 4)
        wait_until(lambda: len(reply.chunks) >= 5, "streaming from A")
        move_to(balancer, b)
        wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed on B")
        frozen_at = time.monotonic()
        a._loop.call_soon_threadsafe(a._loop.stop)
        reply.wait(TIMEOUT)
        ended_after = time.monotonic() - frozen_at
        assert reply.finish == "error"
        assert reply.error_code == "gateway_lost"
        assert reply.error is not None
        assert "partial text is kept" in reply.error
        assert len(reply.text) > 0
        assert ended_after < 10.0
        # The partial text is the start of what an uninterrupted run says.
        assert uninterrupted(b, "the gateway making this dies " * 4).startswith(reply.text)
        assert chat.send("and B carries on", tokens_per_s=0).wait(TIMEOUT).finish == "stop"
    # Thaw A so that the fixture can close it as usual.
    a._thread = threading.Thread(target=a._loop.run_forever, daemon=True)
    a._thread.start()


def test_a_shared_gateway_welcome_says_its_replies_per_session(redis: RedisServer) -> None:
    gateway = shared_gateway(redis, limits=GatewayLimits(replies_per_session=3))
    try:
        welcome = answer_to_hello(gateway.url, TOKEN, None)
    finally:
        gateway.close()
    assert (welcome["type"], welcome["replies_per_session"]) == ("welcome", 3)


def test_redis_stopped_and_restarted_mid_reply(
    redis: RedisServer, pair: tuple[EmbeddedGateway, EmbeddedGateway]
) -> None:
    a, _ = pair
    with Chat(url=a.url, token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send("the store goes away " * 4)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming")
        redis.stop()
        reply.wait(TIMEOUT)
        assert reply.finish == "error"
        assert reply.error_code == "store_unavailable"
        assert len(reply.text) > 0
        refused = chat.send("while it is away", tokens_per_s=0).wait(TIMEOUT)
        assert refused.finish == "error"
        assert refused.error_code == "store_unavailable"
        assert refused.error is not None
        assert "unreachable" in refused.error
        redis.start()
        # Back, empty (no persistence): the session is gone, a new one serves.
        again = chat.send("and now?", tokens_per_s=0).wait(2 * TIMEOUT)
        assert again.finish == "stop", again.error
    with Chat(url=a.url, token=TOKEN, tokens_per_s=0) as fresh:
        assert fresh.send("a new chat").wait(TIMEOUT).finish == "stop"


def test_another_token_cannot_resume_a_session_through_either_gateway(
    redis: RedisServer,
) -> None:
    a = EmbeddedGateway(Gateway(token=["t1", "t2"], store=RedisStore(redis.url))).start()
    b = EmbeddedGateway(Gateway(token=["t1", "t2"], store=RedisStore(redis.url))).start()
    try:
        with Chat(url=a.url, token="t1", tokens_per_s=0) as owner:
            owner.send("mine").wait(TIMEOUT)
            session = owner._conversation._connection.session.session_id

        refused = answer_to_hello(b.url, "t2", session)
        assert refused["type"] == "error"
        assert refused["code"] == "unauthorized"
        welcome = answer_to_hello(b.url, "t1", session)
        assert welcome["type"] == "welcome"
        assert welcome["resumed"] is True
    finally:
        a.close()
        b.close()


def test_a_resume_beyond_the_trimmed_log_gets_exact_snapshots(redis: RedisServer) -> None:
    # Redis keeps 5 events of the log: the move to B is a resume past it.
    limits = LogLimits(max_events=5)
    a, b = (
        EmbeddedGateway(
            Gateway(token=TOKEN, log_limits=limits, store=RedisStore(redis.url, limits=limits))
        ).start()
        for _ in range(2)
    )
    proxy = FaultyProxy(a.gateway.port, seed=9, slice_bytes=None).start()
    try:
        with Chat(url=proxy.url(), token=TOKEN, tokens_per_s=60) as chat:
            reply = chat.send("a gap on the other gateway " * 4)
            wait_until(lambda: len(reply.chunks) >= 3, "streaming from A")
            proxy.swallow_upstream = False
            proxy.target_port = b.gateway.port
            proxy.stall(3 * TIMEOUT)  # A goes on; the log outruns what the client has
            time.sleep(1.0)
            proxy.cut()  # during the stall: nothing more reached the client
            reply.wait(TIMEOUT)
            assert reply.finish == "stop"
            assert reply.text == uninterrupted(b, "a gap on the other gateway " * 4)
            assert chat._conversation.connection.session.gaps == 1
    finally:
        proxy.close()
        a.close()
        b.close()


# --- what an adversarial review found ----------------------------------------------


def test_back_to_back_replies_on_one_gateway_all_end_normally(
    pair: tuple[EmbeddedGateway, EmbeddedGateway],
) -> None:
    # Each next start arrives while the lease of the last reply is being given back:
    # it used to be started without the lease, and end gateway_lost after 5 s.
    a, _ = pair
    with Chat(url=a.url, token=TOKEN, tokens_per_s=0) as chat:
        replies = [chat.send(f"message {n}") for n in range(8)]
        for reply in replies:
            reply.wait(TIMEOUT)
        assert [r.finish for r in replies] == ["stop"] * 8, [r.error for r in replies]


def test_an_append_sent_again_after_a_timeout_changes_nothing(redis: RedisServer) -> None:
    # Redis may run a write whose answer never came back; the gateway sends it again.
    async def run() -> tuple[bool, bool, list[int]]:
        store = RedisStore(redis.url)
        try:
            await store.create("s1", "owner")
            assert await store.acquire_or_forward("s1", "gw")
            batch = [
                (LogEntry(1, '{"type":"started"}', "r1", "started"), "", ""),
                (LogEntry(2, '{"type":"delta"}', "r1", "delta"), "hi", ""),
            ]
            first = await store.append("s1", "gw", batch)
            again = await store.append("s1", "gw", batch)
            return first, again, [e.seq for e in await store.read("s1", 0)]
        finally:
            await store.close()

    first, again, seqs = asyncio.run(run())
    assert (first, again) == (True, True)
    assert seqs == [1, 2]


def test_a_crafted_session_id_cannot_touch_the_store(
    pair: tuple[EmbeddedGateway, EmbeddedGateway],
) -> None:
    # Session ids name Redis keys: a reply "x}:meta" makes the string key
    # nbchat:{S}:text:x}:meta, which a hello for session "S}:text:x" would read as that
    # session's meta (WRONGTYPE); that used to read as "Redis down" and end every reply.
    a, _ = pair

    async def plant() -> str:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(a.url, additional_headers=headers) as ws:
            session = str((await say_hello(ws, None))["session"])
            start = {
                "type": "start",
                "reply": "x}:meta",
                "model": "demo",
                "messages": [{"role": "user", "content": "hi"}],
                "params": {"tokens_per_s": 0},
            }
            await ws.send(json.dumps(start))
            while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != "done":
                pass
            return session

    planted = asyncio.run(plant())
    with Chat(url=a.url, token=TOKEN, tokens_per_s=40) as chat:
        reply = chat.send("go on while someone probes " * 3)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming")
        welcome = answer_to_hello(a.url, TOKEN, f"{planted}}}:text:x")
        assert welcome["type"] == "welcome"
        assert welcome["resumed"] is False
        reply.wait(TIMEOUT)
        assert reply.finish == "stop"
        assert a.gateway.store_healthy()


def test_a_session_the_store_lost_ends_the_reply_of_a_client_on_the_other_gateway(
    redis: RedisServer, pair: tuple[EmbeddedGateway, EmbeddedGateway], balancer: FaultyProxy
) -> None:
    _, b = pair
    with Chat(url=balancer.url(), token=TOKEN, tokens_per_s=30) as chat:
        reply = chat.send("the store forgets this " * 4)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming from A")
        move_to(balancer, b)
        wait_until(lambda: chat.status_detail.startswith("resumed"), "resumed on B")

        async def flush() -> None:
            store = RedisStore(redis.url)
            await store.redis.flushall()
            await store.close()

        asyncio.run(flush())
        reply.wait(2 * TIMEOUT)
        assert reply.finish == "error"
        assert reply.error_code == "session_lost"
        assert chat.send("a new session", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


def test_a_client_ahead_of_the_store_gets_a_new_session(
    pair: tuple[EmbeddedGateway, EmbeddedGateway],
) -> None:
    # Redis restored from an older snapshot: the client has seen seqs it no longer has.
    a, b = pair
    with Chat(url=a.url, token=TOKEN, tokens_per_s=0) as chat:
        chat.send("one").wait(TIMEOUT)
        session = chat._conversation.connection.session.session_id

    welcome = answer_to_hello(b.url, TOKEN, session, last_seq=999)
    assert welcome["type"] == "welcome"
    assert welcome["resumed"] is False
