"""The gateway on a raw WebSocket: bad frames get error frames, the connection and other
sessions carry on; health check, paths and tokens."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from nbchat.gateway import Gateway
from nbchat.gateway.limits import GatewayLimits

from timeouts import TIMEOUT


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[no-any-return]


async def open_session(gateway: Gateway) -> ClientConnection:
    ws = await connect(gateway.url(), proxy=None)
    await ws.send(json.dumps({"type": "hello", "client": "raw-test"}))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome"
    assert welcome["models"] == ["demo"]
    return ws


async def stream_reply(ws: ClientConnection, reply: str, text: str = "hi") -> str:
    await ws.send(
        json.dumps(
            {
                "type": "start",
                "reply": reply,
                "model": "demo",
                "messages": [{"role": "user", "content": text}],
                "params": {"tokens_per_s": 0},
            }
        )
    )
    out = ""
    while True:
        frame = await recv(ws)
        if frame.get("reply") != reply:
            continue
        if frame["type"] == "delta":
            out += frame["text"]
        if frame["type"] == "done":
            assert frame["finish"] == "stop"
            return out


BAD_FRAMES = [
    ("{oops", "bad_request", "invalid JSON"),
    ("[]", "bad_request", "must be a JSON object"),
    ('{"type": "warp"}', "unknown_type", "unknown frame type 'warp'"),
    ('{"type": "start", "reply": 5}', "bad_request", "start.reply must be a string"),
    (
        '{"type": "delta", "seq": 1, "reply": "r", "text": "x"}',
        "unknown_type",
        "unknown frame type 'delta'",
    ),
    ('{"type": "stop", "reply": "nobody"}', "bad_request", "unknown reply 'nobody'"),
    ('{"type": "pause", "reply": "nobody"}', "bad_request", "unknown reply 'nobody'"),
    ('{"type": "hello", "client": "again"}', "bad_request", "hello was already sent"),
]


async def test_bad_frames_get_errors_and_the_connection_stays_up(gateway: Gateway) -> None:
    ws = await open_session(gateway)
    other = await open_session(gateway)
    for text, code, message in BAD_FRAMES:
        await ws.send(text)
        error = await recv(ws)
        assert error["type"] == "error", text
        assert error["code"] == code, text
        assert message in error["message"], (text, error["message"])
    await ws.send(b"\x00binary")
    assert (await recv(ws))["message"].startswith("binary frames are not accepted")
    # Both the abused connection and another session still stream normally.
    assert await stream_reply(ws, "r-1", "still there?")
    assert await stream_reply(other, "r-2", "and me?")
    await ws.close()
    await other.close()


async def test_frames_before_hello_are_answered_not_obeyed(gateway: Gateway) -> None:
    async with connect(gateway.url(), proxy=None) as ws:
        await ws.send('{"type": "stop", "reply": "r"}')
        error = await recv(ws)
        assert error == {
            "type": "error",
            "code": "bad_request",
            "message": "send hello before stop",
            "reply": "r",  # the refusal names the reply it was about
        }
        await ws.send('{"type": "ping", "t": 1.5}')
        assert await recv(ws) == {"type": "pong", "t": 1.5}


async def test_a_repeated_start_is_a_resend_and_changes_nothing(gateway: Gateway) -> None:
    ws = await open_session(gateway)
    text = await stream_reply(ws, "same")
    # A client resends requests it had no answer to after a resume; the gateway must
    # neither restart the reply nor answer with an error.
    await ws.send(
        json.dumps(
            {
                "type": "start",
                "reply": "same",
                "model": "demo",
                "messages": [{"role": "user", "content": "x"}],
            }
        )
    )
    await ws.send('{"type": "ping", "t": 2}')
    assert await recv(ws) == {"type": "pong", "t": 2}
    assert text
    await ws.close()


async def test_provider_errors_end_the_reply_with_an_error_frame(gateway: Gateway) -> None:
    ws = await open_session(gateway)
    await ws.send(
        json.dumps({"type": "start", "reply": "r", "model": "demo", "messages": [], "params": {}})
    )
    frames = [await recv(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["started", "error", "done"]
    assert frames[1]["message"] == "the demo model needs at least one user message"
    assert frames[2]["finish"] == "error"
    await ws.close()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_healthz_and_unknown_paths(gateway: Gateway) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    assert await asyncio.to_thread(http_get, base + "/healthz") == (200, "ok\n")
    status, body = await asyncio.to_thread(http_get, base + "/nope")
    assert status == 404
    assert "/v1/chat" in body


async def test_a_token_gateway_refuses_without_it() -> None:
    gateway = Gateway(token="right")
    await gateway.start("127.0.0.1", 0)
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(gateway.url(), proxy=None)
        assert info.value.response.status_code == 401
        async with connect(
            gateway.url(), proxy=None, additional_headers={"Authorization": "Bearer right"}
        ) as ws:
            await ws.send('{"type": "hello", "client": "t"}')
            assert (await recv(ws))["type"] == "welcome"
    finally:
        await gateway.close()


async def test_the_welcome_says_how_many_replies_a_session_runs_at_once() -> None:
    gateway = Gateway(limits=GatewayLimits(replies_per_session=2))
    await gateway.start("127.0.0.1", 0)
    try:
        async with connect(gateway.url(), proxy=None) as ws:
            await ws.send('{"type": "hello", "client": "t"}')
            welcome = await recv(ws)
            assert welcome["replies_per_session"] == 2
            for reply in ("r-1", "r-2", "r-3"):  # a third at once is refused, as it says
                messages = [{"role": "user", "content": "hi"}]
                start = {"type": "start", "reply": reply, "model": "demo", "messages": messages}
                await ws.send(json.dumps({**start, "params": {"tokens_per_s": 5}}))
            while (frame := await recv(ws)).get("reply") != "r-3" or frame["type"] != "error":
                assert frame["type"] != "done"
            assert (frame["type"], frame["code"]) == ("error", "busy")
    finally:
        await gateway.close()
