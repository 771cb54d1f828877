"""Every reply ends, within a documented bound, whatever the link or the input does.

Each test pins one reproduced hang with a scripted fault or a real gateway; the random
chaos that looks for unnamed ones runs in the stress command (``scripts/stress``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from nbchat import Chat
from nbchat.backoff import Backoff
from nbchat.client import detection_bound_s
from nbchat.conversation import Conversation, ConversationListener
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.reply import Reply

from faults import FaultyProxy
from timeouts import TIMEOUT, wait_until


@pytest.fixture
def proxy(embedded: EmbeddedGateway) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(embedded.gateway.port, seed=7).start()
    yield proxy
    proxy.close()


def direct_text(embedded: EmbeddedGateway, *prompts: str) -> str:
    """The text an uninterrupted chat gets for the last of ``prompts``."""
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0) as direct:
        replies = [direct.send(p).wait(TIMEOUT) for p in prompts]
    return replies[-1].text


# --- finding 1: a cut during the resend after a resume ------------------------------


@pytest.mark.parametrize("unanswered", ["start", "pause"])
def test_a_cut_during_the_resend_after_a_resume_does_not_hang(
    embedded: EmbeddedGateway, proxy: FaultyProxy, unanswered: str
) -> None:
    backoff = Backoff(initial_s=0.05, cap_s=0.1)
    with Chat(url=proxy.url(), token=embedded.token, tokens_per_s=40, backoff=backoff) as chat:
        wait_until(lambda: chat.status == "connected", "connected")
        if unanswered == "start":
            proxy.swallow_upstream = True  # the start never arrives: it stays unanswered
            reply = chat.send("resend me")
            time.sleep(0.2)
        else:
            reply = chat.send("resend me")
            wait_until(lambda: len(reply.chunks) >= 3, "streaming")
            proxy.swallow_upstream = True
            reply.pause()  # never arrives: unanswered
            time.sleep(0.2)
        # The next connection delivers the welcome, then is cut while the client
        # resends: the reconnect must go on from there, not die.
        proxy.cut_after_welcome(1)
        proxy.swallow_upstream = False
        proxy.cut()
        if unanswered == "pause":
            wait_until(lambda: reply.status == "paused", "the resent pause applied")
            reply.resume()
        reply.wait(TIMEOUT)
        assert proxy.connections >= 3  # the first, the welcome-then-cut one, and the next
        assert chat.status == "connected"
        assert reply.finish == "stop"
        assert reply.text == direct_text(embedded, "resend me")


# --- finding 2: a history over the frame limit ---------------------------------------


def test_a_history_over_the_frame_limit_ends_at_once_with_too_large(
    embedded: EmbeddedGateway,
) -> None:
    big = "x" * 300_000
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0) as chat:
        for _ in range(3):
            assert chat.send(big).wait(TIMEOUT).finish == "stop"
        reply = chat.send(big).wait(TIMEOUT)
        assert reply.status == "error"
        assert reply.error_code == "too_large"
        assert reply.error is not None
        assert reply.error.startswith("the request is 1,20")
        assert "the gateway accepts at most 1,048,576 bytes" in reply.error
        assert "Chat(max_history_chars=...)" in reply.error
        assert chat.status == "connected"  # the link was never closed over it
        assert len(chat._conversation.connection.resumes) == 0
        # The chat goes on: a short message after a clear is answered.
        chat.clear()
        assert chat.send("and now?").wait(TIMEOUT).finish == "stop"


def test_max_history_chars_leaves_out_the_oldest_turns(embedded: EmbeddedGateway) -> None:
    big = "x" * 300_000
    with Chat(
        url=embedded.url, token=embedded.token, tokens_per_s=0, max_history_chars=700_000
    ) as chat:
        replies = [chat.send(big).wait(TIMEOUT) for _ in range(5)]
        assert [r.finish for r in replies] == ["stop"] * 5
        assert len(chat.messages) == 10  # the transcript keeps every turn
        chat._conversation.transcript.add_user("next", at=0.0)
        sent = chat._conversation.transcript.history(700_000)
        assert sum(len(m.content) for m in sent) <= 700_000
        assert [m.role for m in sent] == ["user", "assistant", "user", "assistant", "user"]
        assert sent[-1].content == "next"


def test_a_frame_refused_with_1009_is_not_resent_forever() -> None:
    # The gateway enforces 64 KiB but its welcome says 1 MiB (an older or misconfigured
    # gateway): the link is closed over the start, which must then end, not loop.
    gateway = Gateway(token="t", limits=GatewayLimits(max_frame_bytes=64 * 1024))
    embedded = EmbeddedGateway(gateway).start()
    try:
        gateway.limits = replace(gateway.limits, max_frame_bytes=1024 * 1024)
        backoff = Backoff(initial_s=0.05, cap_s=0.1)
        with Chat(url=embedded.url, token="t", tokens_per_s=0, backoff=backoff) as chat:
            reply = chat.send("y" * 100_000).wait(TIMEOUT)
            assert reply.error_code == "too_large"
            assert reply.error is not None
            assert "over the gateway's frame limit" in reply.error
            wait_until(lambda: chat.status == "connected", "connected again")
            chat.clear()  # the big message is in the history: without it, all is well
            assert chat.send("small").wait(TIMEOUT).finish == "stop"
    finally:
        embedded.close()


# --- finding 3: lone surrogates -------------------------------------------------------


def test_a_lone_surrogate_is_refused_by_send_and_the_chat_goes_on(chat: Chat) -> None:
    with pytest.raises(ValueError, match=r"lone surrogate \(U\+DCE9\) at index 14"):
        chat.send("file name: caf\udce9.txt")
    assert chat.send("file name: café.txt").wait(TIMEOUT).finish == "stop"
    with pytest.raises(ValueError, match="lone surrogate"):
        Chat(url="ws://127.0.0.1:9/v1/chat", system="caf\udce9")


def test_an_unsendable_model_name_ends_the_reply_not_the_chat(chat: Chat) -> None:
    chat.model = "demo\udce9"
    reply = chat.send("hi").wait(TIMEOUT)
    assert (reply.status, reply.error_code) == ("error", "bad_request")
    assert reply.error is not None
    assert "lone surrogate (U+DCE9)" in reply.error
    chat.model = "demo"
    assert chat.send("hi").wait(TIMEOUT).finish == "stop"


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"seed": 10**20}, "more than 19 digits"),
        (
            {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            "nested more than 32",
        ),
    ],
)
def test_params_the_gateway_would_refuse_are_refused_by_send(
    chat: Chat, params: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        chat.send("hi", **params)
    assert chat.send("hi").wait(TIMEOUT).finish == "stop"


def test_stop_ends_a_paused_reply_whose_generation_is_over(embedded: EmbeddedGateway) -> None:
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=200) as chat:
        reply = chat.send("pause me, and let the model finish meanwhile")
        wait_until(lambda: len(reply.chunks) >= 1, "streaming")
        reply.pause()
        wait_until(lambda: reply.status == "paused", "paused")
        live = next(iter(embedded.gateway.sessions.values()))
        wait_until(lambda: not live.tasks, "generation over, its end held by the pause")
        reply.stop().wait(TIMEOUT)
        assert reply.finish == "stopped"
        assert reply.usage is not None  # what the model reported is kept
        assert chat.send("and on").wait(TIMEOUT).finish == "stop"


def test_retry_while_an_offline_chat_reopens_keeps_one_link(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    backoff = Backoff(initial_s=0.05, cap_s=0.1, give_up_after_s=0.5)
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0, backoff=backoff) as chat:
        assert chat.send("first").wait(TIMEOUT).finish == "stop"
        for _ in range(3):
            asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
            wait_until(lambda: chat.status == "offline", "offline")
            asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(TIMEOUT)
            reply = chat.send("again")  # reopens the link...
            chat.reconnect()  # ...while Retry is pressed
            assert reply.wait(TIMEOUT).finish == "stop", reply.error
            assert len(gateway.connections) == 1


# --- finding 4: non-finite and out-of-range params -----------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_params_are_refused_by_send(chat: Chat, value: float) -> None:
    with pytest.raises(ValueError, match="NaN and Infinity cannot be sent"):
        chat.send("hi", tokens_per_s=value)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"tokens_per_s": 1e-300}, "param tokens_per_s=1e-300 is too slow"),
        ({"tokens_per_s": 1e9}, "param tokens_per_s=1e+09 is out of range"),
        ({"temperature": 5}, "param temperature=5 is out of range: a number from 0 to 2"),
        ({"max_tokens": 0}, "param max_tokens=0 is out of range"),
        ({"max_tokens": 2.5}, "param max_tokens must be an integer"),
    ],
)
def test_out_of_range_params_end_the_reply_with_a_clear_error(
    chat: Chat, params: dict[str, float], problem: str
) -> None:
    reply = chat.send("hi", **params).wait(TIMEOUT)
    assert (reply.status, reply.error_code) == ("error", "bad_request")
    assert reply.error is not None
    assert reply.error.startswith(problem)
    assert chat.send("hi").wait(TIMEOUT).finish == "stop"


# --- finding 5: the client shows the gateway's own refusal ---------------------------


def test_a_busy_gateway_is_reported_in_its_own_words() -> None:
    gateway = Gateway(token="t", limits=GatewayLimits(sessions=1))
    embedded = EmbeddedGateway(gateway).start()
    try:
        with Chat(url=embedded.url, token="t", tokens_per_s=0) as first:
            first.send("hold the only session").wait(TIMEOUT)
            with Chat(url=embedded.url, token="t") as second:
                reply = second.send("and me?").wait(TIMEOUT)
                assert reply.status == "error"
                assert second.status == "offline"
                assert second.error == (
                    f"the gateway at {embedded.url} refused: busy: this gateway serves 1 "
                    "sessions already, all in use; try again later"
                )
    finally:
        embedded.close()


# --- finding 6: the client releases what it kept of finished replies ----------------


def test_the_client_keeps_nothing_of_finished_replies(chat: Chat) -> None:
    session = chat._conversation.connection.session
    for i in range(40):
        chat.send(f"turn {i}").wait(TIMEOUT)
        assert session.replies == {}  # released before wait() returns
    assert session.unanswered() == []


# --- finding 8: a session taken over by another connection ---------------------------


def test_a_taken_over_session_ends_the_reply_and_says_why(embedded: EmbeddedGateway) -> None:
    from websockets.sync.client import connect

    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=20) as chat:
        reply = chat.send("someone else will take this session")
        wait_until(lambda: len(reply.chunks) >= 2, "streaming")
        session = chat._conversation.connection.session.session_id
        headers = {"Authorization": f"Bearer {embedded.token}"}
        with connect(embedded.url, additional_headers=headers, proxy=None) as thief:
            thief.send(f'{{"type":"hello","client":"thief","session":"{session}"}}')
            reply.wait(TIMEOUT)
            assert reply.status == "error"
            assert reply.error is not None
            assert reply.error.startswith("another connection took over this chat's session")
            assert chat.status == "offline"


# --- finding 10: fault semantics a user can trust ------------------------------------


def test_a_stalled_link_is_noticed_within_the_documented_bound(
    embedded: EmbeddedGateway, proxy: FaultyProxy
) -> None:
    heartbeat = 0.5
    with Chat(
        url=proxy.url(), token=embedded.token, tokens_per_s=30, heartbeat_s=heartbeat
    ) as chat:
        reply = chat.send("stall under me")
        wait_until(lambda: len(reply.chunks) >= 2, "streaming")
        proxy.stall(30)  # half-open: nothing flows, nothing closes
        stalled = time.monotonic()
        # The bound plus scheduling slack (a liveness bound, not a speed figure).
        wait_until(lambda: chat.status == "reconnecting", "the stall noticed", TIMEOUT)
        noticed = time.monotonic() - stalled
        assert noticed <= detection_bound_s(heartbeat) + 1.0, noticed


def test_a_lost_session_is_not_reported_as_resumed(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    backoff = Backoff(initial_s=0.05, cap_s=0.1)
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=20, backoff=backoff) as chat:
        reply = chat.send("the gateway will forget me")
        wait_until(lambda: len(reply.chunks) >= 2, "streaming")
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        wait_until(lambda: chat.status == "reconnecting", "reconnecting")

        async def restart_without_sessions() -> None:
            for live in gateway.sessions.values():
                for task in live.tasks.values():
                    task.cancel()
            gateway.sessions.clear()  # as a restarted gateway with no shared store
            await gateway.start()

        asyncio.run_coroutine_threadsafe(restart_without_sessions(), loop).result(TIMEOUT)
        reply.wait(TIMEOUT)
        assert reply.error_code == "session_lost"
        wait_until(lambda: chat.status == "connected", "connected")
        assert not chat.status_detail.startswith("resumed")
        assert chat.status_detail == "new session: the gateway no longer had this chat's session"


def test_a_dead_gateway_ends_the_reply_within_give_up_after_s(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    backoff = Backoff(initial_s=0.05, cap_s=0.5, give_up_after_s=1.5)
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=20, backoff=backoff) as chat:
        reply = chat.send("nobody will answer")
        wait_until(lambda: len(reply.chunks) >= 2, "streaming")
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        dropped = time.monotonic()
        reply.wait(TIMEOUT)
        took = time.monotonic() - dropped
        assert reply.status == "error"
        assert reply.error is not None
        assert reply.error.startswith("gave up after ")
        assert chat.status == "offline"
        assert took <= 1.5 + 1.0, took  # the documented bound, plus scheduling slack


def test_close_while_the_link_is_down_ends_the_reply_at_once(embedded: EmbeddedGateway) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    chat = Chat(url=embedded.url, token=embedded.token, tokens_per_s=20)
    reply = chat.send("close me while the gateway is away")
    wait_until(lambda: len(reply.chunks) >= 2, "streaming")
    asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
    wait_until(lambda: chat.status == "reconnecting", "reconnecting")
    began = time.monotonic()
    chat.close()
    assert reply.finished
    assert reply.finish == "stopped"  # the user's own doing; the partial text stays
    assert reply.text
    assert time.monotonic() - began < 3.0  # the stop's grace, not the backoff's 30 s


def test_a_refused_pause_leaves_the_reply_running_and_says_why() -> None:
    limits = GatewayLimits(frames_per_s=0.5, frame_burst=3, flood_rejections=1000)
    embedded = EmbeddedGateway(Gateway(token="t", limits=limits)).start()
    try:
        with Chat(url=embedded.url, token="t", tokens_per_s=100) as chat:
            reply = chat.send("pause me, if the gateway lets you")  # hello, start: 2 frames
            wait_until(lambda: len(reply.chunks) >= 1, "streaming")
            reply.pause()  # the third frame: within the burst
            wait_until(lambda: reply.status == "paused", "paused")
            reply.resume()  # over the rate: refused
            wait_until(lambda: "rate_limited" in chat.error, "the refusal shown")
            assert not reply.finished  # still paused at the gateway, not ended
            time.sleep(2.5)  # the bucket refills
            reply.resume().wait(TIMEOUT)
            assert reply.finish == "stop"
            assert reply.text == direct_text(embedded, "pause me, if the gateway lets you")
    finally:
        embedded.close()


def test_a_message_sent_while_reconnecting_to_a_new_session_is_answered(
    embedded: EmbeddedGateway,
) -> None:
    gateway, loop = embedded.gateway, embedded._loop
    backoff = Backoff(initial_s=0.05, cap_s=0.1)
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0, backoff=backoff) as chat:
        assert chat.send("first").wait(TIMEOUT).finish == "stop"
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        wait_until(lambda: chat.status == "reconnecting", "reconnecting")
        reply = chat.send("sent while the link was down")  # its start never reached it

        async def restart_without_sessions() -> None:
            gateway.sessions.clear()
            await gateway.start()

        asyncio.run_coroutine_threadsafe(restart_without_sessions(), loop).result(TIMEOUT)
        reply.wait(TIMEOUT)
        assert reply.finish == "stop", reply.error  # sent again in the new session
        assert chat.status_detail.startswith("new session")


def test_retry_after_a_failed_first_connect_learns_the_models() -> None:
    from nbchat.gateway.providers import DemoProvider
    from nbchat.gateway.server import ModelRoute

    routes = {"fast": ModelRoute(DemoProvider(), "demo")}
    embedded = EmbeddedGateway(Gateway(models=routes, token="t")).start()
    gateway, loop = embedded.gateway, embedded._loop
    try:
        asyncio.run_coroutine_threadsafe(gateway.stop_listening(), loop).result(TIMEOUT)
        with Chat(url=embedded.url, token="t", tokens_per_s=0) as chat:
            wait_until(lambda: chat.status == "offline", "offline")
            asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(TIMEOUT)
            chat.reconnect()
            wait_until(lambda: chat.status == "connected", "connected")
            assert chat.models == ["fast"]
            assert chat.send("hi").wait(TIMEOUT).finish == "stop"
    finally:
        embedded.close()


def test_the_default_backoff_gives_up_after_30_s() -> None:
    assert Backoff().give_up_after_s == 30.0
    assert Backoff().exhausted(3, elapsed_s=30.0)
    assert not Backoff().exhausted(3, elapsed_s=29.0)


def test_sigterm_lets_the_reply_finish_and_a_second_signal_ends_it_as_an_error() -> None:
    # The memory store: the gateway drains by letting its clients' replies go on.
    server = subprocess.Popen(
        [sys.executable, "-m", "nbchat", "serve", "--port", "0", "--token", "t"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NBCHAT_CONFIG": ""},
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        backoff = Backoff(initial_s=0.05, cap_s=0.1, give_up_after_s=1.0)
        with Chat(url=url, token="t", tokens_per_s=40, backoff=backoff) as chat:
            cut = chat.send("the gateway goes down under me", tokens_per_s=10)
            wait_until(lambda: len(cut.chunks) >= 2, "streaming")
            server.send_signal(signal.SIGTERM)  # drain: the reply goes on
            seen = len(cut.chunks)
            wait_until(lambda: len(cut.chunks) >= seen + 3, "streaming on while draining")
            assert not cut.finished
            server.send_signal(signal.SIGTERM)  # the second: leave now
            cut.wait(TIMEOUT)
            assert cut.status == "error"
            assert cut.error_code == "gateway_shutdown"
            assert cut.error is not None
            assert cut.error.startswith("the gateway shut down while generating this reply")
            assert cut.text  # the partial text stays
        assert server.wait(TIMEOUT) == 0
    finally:
        server.kill()
        server.wait(TIMEOUT)


def test_a_view_hook_that_raises_does_not_hang_the_chat(
    embedded: EmbeddedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # A view's bug (a hook raising on the worker or the frame handler) once ended
    # that task: this reply, and every one after it, never ended.
    class Broken(ConversationListener):
        def on_reply_start(self, reply: Reply) -> None:
            raise RuntimeError("view bug at start")

        def on_chunk(self, reply: Reply, text: str) -> None:
            raise RuntimeError("view bug in a chunk")

        def on_reply_status(self, reply: Reply) -> None:
            raise RuntimeError("view bug at the end")

    conversation = Conversation(embedded.url, token=embedded.token, listener=Broken())
    try:
        first = conversation.send("hello", tokens_per_s=0).wait(TIMEOUT)
        second = conversation.send("again", tokens_per_s=0).wait(TIMEOUT)
        assert (first.finish, second.finish) == ("stop", "stop")
        assert "again" in second.text
    finally:
        conversation.close()
    assert "view bug at start" in caplog.text
    assert "the chat goes on" in caplog.text
