"""``Chat(url=[...])``: several gateways. The chat connects to the first that answers;
after a drop it tries the next one, then the others in order, wrapping around, and
resumes the session wherever it lands.

Gateways here are separate processes' worth of state (each an embedded gateway on its
own thread and loop, with its own memory), so no two share a session: what is tested
is what the client does. A gateway that does not know the session gives a new one, and
a reply it was streaming ends with a clear error instead of waiting forever."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from nbchat import Chat
from nbchat.backoff import Backoff
from nbchat.client import ClientConnection, LinkState, gateway_urls, on_loopback
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.protocol import ServerFrame
from test_chat import expected

from faults import FaultyProxy
from timeouts import TIMEOUT, wait_until

# A dead gateway must not cost a long wait: the first retry after a drop comes within
# Backoff().initial_s (0.5 s), and a refused attempt moves on to the next URL at once.
FAILOVER_S = 0.3 * TIMEOUT  # 3 s, scaled like every limit


def dead_url() -> str:
    """A loopback URL where nothing listens (a port just taken and let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/chat"


def on_loop(gateway: EmbeddedGateway, coroutine: Any) -> None:
    future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, gateway._loop)
    future.result(TIMEOUT)


def stop_listening(gateway: EmbeddedGateway) -> None:
    """The gateway goes away for its clients (its sessions and replies run on)."""
    on_loop(gateway, gateway.gateway.stop_listening())


def listen_again(gateway: EmbeddedGateway) -> None:
    on_loop(gateway, gateway.gateway.start())


def new_gateway() -> EmbeddedGateway:
    return EmbeddedGateway(Gateway(token="test-token")).start()


@pytest.fixture
def second() -> Iterator[EmbeddedGateway]:
    gateway = new_gateway()
    yield gateway
    gateway.close()


@pytest.fixture
def third() -> Iterator[EmbeddedGateway]:
    gateway = new_gateway()
    yield gateway
    gateway.close()


# --- connecting --------------------------------------------------------------------


def test_a_dead_first_gateway_is_passed_over_at_once(embedded: EmbeddedGateway) -> None:
    dead = dead_url()
    began = time.monotonic()
    with Chat(url=[dead, embedded.url], token=embedded.token, tokens_per_s=0) as chat:
        reply = chat.send("hello over there").wait(TIMEOUT)
        took = time.monotonic() - began
        assert reply.finish == "stop"
        assert reply.text == expected("hello over there")
        assert took < FAILOVER_S
        assert chat.url == embedded.url  # the one in use
        assert chat.urls == (dead, embedded.url)
        assert chat.status == "connected"


def test_the_first_gateway_is_used_when_it_answers(
    embedded: EmbeddedGateway, second: EmbeddedGateway
) -> None:
    with Chat(url=(embedded.url, second.url), token="test-token", tokens_per_s=0) as chat:
        assert chat.send("hi").wait(TIMEOUT).finish == "stop"
        assert chat.url == embedded.url
        assert len(embedded.gateway.sessions) == 1
        assert not second.gateway.sessions  # never tried


def test_no_gateway_answering_says_why_for_each() -> None:
    first, other = dead_url(), dead_url()
    with Chat(url=[first, other]) as chat:
        reply = chat.send("anyone?").wait(TIMEOUT)
        assert reply.status == "error"
        assert reply.error is not None
        assert f"cannot reach the gateway at {first}" in reply.error
        assert f"cannot reach the gateway at {other}" in reply.error
        assert chat.status == "offline"


# --- failing over mid-conversation --------------------------------------------------


def test_a_gateway_gone_mid_reply_moves_the_chat_to_the_next(
    embedded: EmbeddedGateway, second: EmbeddedGateway
) -> None:
    prompt = "cut me off on the way " * 5
    with Chat(url=[embedded.url, second.url], token="test-token", tokens_per_s=40) as chat:
        reply = chat.send(prompt)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming on the first gateway")
        stop_listening(embedded)
        began = time.monotonic()
        # The second gateway does not know the session: the reply cannot go on there,
        # and it ends (it never waits for events that will not come).
        reply.wait(TIMEOUT)
        assert time.monotonic() - began < FAILOVER_S
        assert reply.status == "error"
        assert reply.error_code == "session_lost"
        assert reply.error is not None
        assert f"moved to the gateway at {second.url}" in reply.error
        partial = reply.text
        assert partial
        assert expected(prompt).startswith(partial)
        welcome = chat._conversation.connection.welcome
        assert welcome is not None
        assert not welcome.resumed
        assert chat.url == second.url
        assert chat.status == "connected"
        assert chat.status_detail.startswith(f"new session at {second.url}")
        record = chat.messages[-1]
        assert record["finish"] == "error"
        assert "session" in record["error"]
        # The conversation goes on there, with its whole history (the partial reply too).
        after = chat.send("and now?", tokens_per_s=0).wait(TIMEOUT)
        assert after.finish == "stop"
        assert after.text == expected(prompt, partial, "and now?")
        assert len(second.gateway.sessions) == 1


def test_a_gateway_shut_down_mid_reply_ends_it_then_the_next_serves(
    embedded: EmbeddedGateway, second: EmbeddedGateway
) -> None:
    with Chat(url=[embedded.url, second.url], token="test-token", tokens_per_s=40) as chat:
        reply = chat.send("shut down under me " * 5)
        wait_until(lambda: len(reply.chunks) >= 3, "streaming on the first gateway")
        embedded.close()  # ends its replies with gateway_shutdown, then goes away
        reply.wait(TIMEOUT)
        assert reply.status == "error"
        assert reply.error_code == "gateway_shutdown"
        wait_until(lambda: chat.url == second.url and chat.status == "connected", "on the next")
        after = chat.send("still there?", tokens_per_s=0).wait(TIMEOUT)
        assert after.finish == "stop"
        assert after.text == expected("shut down under me " * 5, reply.text, "still there?")


def test_a_start_the_lost_gateway_never_saw_runs_in_full_on_the_next(
    embedded: EmbeddedGateway, second: EmbeddedGateway
) -> None:
    proxy = FaultyProxy(embedded.gateway.port, seed=12).start()
    closed = False
    try:
        with Chat(url=[proxy.url(), second.url], token="test-token", tokens_per_s=0) as chat:
            wait_until(lambda: chat.status == "connected", "connected through the proxy")
            proxy.swallow_upstream = True  # the start never arrives
            reply = chat.send("did you get this?")
            time.sleep(0.3)
            assert reply.status == "pending"
            proxy.close()  # the link, and the way back to that gateway, are gone
            closed = True
            reply.wait(TIMEOUT)
            # Sent again in the new session: it was never run, so it runs there, whole.
            assert reply.finish == "stop"
            assert reply.text == expected("did you get this?")
            assert chat.url == second.url
            # The first gateway never ran it.
            assert all(not live.state.replies for live in embedded.gateway.sessions.values())
    finally:
        if not closed:
            proxy.close()


def test_after_a_drop_the_next_gateway_is_tried_before_the_one_that_dropped(
    embedded: EmbeddedGateway, second: EmbeddedGateway, third: EmbeddedGateway
) -> None:
    a, b, c = embedded, second, third
    with Chat(url=[a.url, b.url, c.url], token="test-token", tokens_per_s=0) as chat:
        assert chat.send("one").wait(TIMEOUT).finish == "stop"
        assert chat.url == a.url
        stop_listening(a)
        wait_until(lambda: chat.url == b.url and chat.status == "connected", "moved to B")
        assert not c.gateway.sessions  # B answered, so C was not tried
        listen_again(a)  # A is back, but after B comes C
        stop_listening(b)
        wait_until(lambda: chat.url == c.url and chat.status == "connected", "moved to C")
        assert len(a.gateway.sessions) == 1  # only the session it had from the start
        stop_listening(c)  # wrapping around: after C comes A
        wait_until(lambda: chat.url == a.url and chat.status == "connected", "back to A")
        assert chat.send("two", tokens_per_s=0).wait(TIMEOUT).finish == "stop"


async def test_rounds_go_through_every_gateway_and_the_backoff_counts_rounds(
    embedded: EmbeddedGateway,
) -> None:
    dead = dead_url()
    states: list[tuple[LinkState, str]] = []

    def on_frame(frame: ServerFrame) -> None:
        pass

    connection = ClientConnection(
        [embedded.url, dead],
        token=embedded.token,
        on_frame=on_frame,
        on_state=lambda state, detail: states.append((state, detail)),
        backoff=Backoff(initial_s=0.05, cap_s=0.1, max_attempts=3, give_up_after_s=None),
    )
    try:
        await connection.open()
        assert connection.url == embedded.url
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(embedded.gateway.stop_listening(), embedded._loop)
        )
        deadline = time.monotonic() + TIMEOUT
        while connection.state != "offline":
            assert time.monotonic() < deadline, "timed out waiting to give up"
            await asyncio.sleep(0.01)
    finally:
        await connection.close()
    tries = [detail for state, detail in states if state == "reconnecting"]
    # The one after the gateway that dropped first; three rounds of two attempts.
    assert [t.rsplit(" to ", 1)[1] for t in tries] == [dead, embedded.url] * 3
    # Only a round's first attempt backs off; the next gateway is tried at once.
    assert all(
        t.startswith(f"attempt {n}, next in 0.0 s") for n, t in enumerate(tries, 1) if n % 2 == 0
    )
    offline = [detail for state, detail in states if state == "offline"]
    assert offline[0].startswith("gave up after 6 attempts at 2 gateways")


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ([], "url is an empty list"),
        ((), "url is an empty list"),
        (["http://127.0.0.1:8765/v1/chat"], r"url\[0\] 'http://.*' is not a WebSocket URL"),
        (["ws://127.0.0.1:8765/v1/chat", 8766], r"url\[1\] is 8766 \(int\), not a str"),
        (["ws://127.0.0.1:8765/v1/chat", None], r"url\[1\] is None"),
        ("https://gateway.example/v1/chat", "not a WebSocket URL .*scheme isn't ws or wss"),
        ("ws://", "hostname isn't provided"),
        ("ws://127.0.0.1:99999/v1/chat", "port out of range"),
        (8765, "url must be a gateway URL"),
        ({"ws://127.0.0.1:8765/v1/chat"}, "url must be a gateway URL .* not set"),
        (b"ws://127.0.0.1:8765/v1/chat", "not bytes"),
    ],
)
def test_bad_urls_are_refused_at_chat(url: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Chat(url=url)


def test_one_url_or_several() -> None:
    assert gateway_urls("wss://gw:8765/v1/chat") == ("wss://gw:8765/v1/chat",)
    assert gateway_urls(["ws://a:1/v1/chat", "wss://b:2/v1/chat"]) == (
        "ws://a:1/v1/chat",
        "wss://b:2/v1/chat",
    )


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("ws://127.0.0.1:8765/v1/chat", True),
        ("ws://127.5.0.1:8765/v1/chat", True),
        ("ws://[::1]:8765/v1/chat", True),
        ("ws://localhost:8765/v1/chat", True),
        ("wss://gw.example.org/v1/chat", False),
        ("ws://10.0.0.5:8765/v1/chat", False),
    ],
)
def test_loopback_gateway_urls_are_told_apart(url: str, loopback: bool) -> None:
    assert on_loopback(url) is loopback
