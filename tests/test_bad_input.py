"""Every bad input gets its documented answer, and afterwards another client on the same
gateway streams normally with an exact transcript."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from nbchat.gateway import Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.providers.base import Finish, Request, TextChunk
from nbchat.gateway.providers.demo import demo_reply
from nbchat.gateway.server import ModelRoute
from nbchat.protocol import CLIENT_TYPES, ChatMessage
from nbchat.session import GatewaySession, LogLimits, SessionError

from timeouts import TIMEOUT

LIMITS = GatewayLimits(
    max_frame_bytes=64 * 1024,
    frames_per_s=50,
    frame_burst=200,
    flood_rejections=300,
    replies_per_session=4,
    sessions=20,
    hello_timeout_s=0.5,
    session_idle_s=0.4,
)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gateway = Gateway(limits=LIMITS)
    await gateway.start("127.0.0.1", 0)
    yield gateway
    # Whatever the test threw at it, another client streams normally and exactly.
    await check_others_unaffected(gateway)
    await gateway.close()


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[no-any-return]


async def hello(gateway: Gateway, **fields: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(gateway.url(), proxy=None, max_size=None)
    await ws.send(json.dumps({"type": "hello", "client": "bad-input", **fields}))
    return ws, await recv(ws)


async def check_others_unaffected(gateway: Gateway) -> None:
    """A second client on the same gateway streams normally and exactly."""
    ws, welcome = await hello(gateway)
    assert welcome["type"] == "welcome"
    await ws.send(
        json.dumps(
            {
                "type": "start",
                "reply": "ok",
                "model": "demo",
                "params": {"tokens_per_s": 0},
                "messages": [{"role": "user", "content": "all well?"}],
            }
        )
    )
    text, seqs = "", []
    while (frame := await recv(ws))["type"] != "done":
        seqs.append(frame["seq"])
        text += frame.get("text", "")
    expected = demo_reply(Request(messages=(ChatMessage("user", "all well?"),), model="demo"))
    assert text == expected
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
    await ws.close()


def missing_field_cases() -> list[tuple[str, str]]:
    """Each required field of each client frame type, left out."""
    full = {
        "hello": {"client": "x"},
        "start": {"reply": "r", "messages": [{"role": "user", "content": "hi"}], "model": "demo"},
        "stop": {"reply": "r"},
        "pause": {"reply": "r"},
        "resume": {"reply": "r"},
        "ping": {"t": 1},
        "tool_result": {"reply": "r", "call": "c", "content": "42"},
    }
    cases = []
    for kind, cls in CLIENT_TYPES.items():
        for f in dataclasses.fields(cls):
            if f.name in full[kind]:
                frame = {"type": kind, **{k: v for k, v in full[kind].items() if k != f.name}}
                cases.append((json.dumps(frame), f.name))
    return cases


@pytest.mark.parametrize(("text", "field"), missing_field_cases())
async def test_each_missing_field_is_named(gateway: Gateway, text: str, field: str) -> None:
    ws, _ = await hello(gateway)
    await ws.send(text)
    error = await recv(ws)
    assert error["code"] == "bad_request"
    assert f"field {field!r} is required" in error["message"]
    await ws.close()


def wrong_type_cases() -> list[tuple[str, str]]:
    """Each field of each client frame type, given a value of the wrong JSON type."""
    full: dict[str, dict[str, Any]] = {
        "hello": {"client": "x", "session": "s", "last_seq": 0},
        "start": {
            "reply": "r",
            "messages": [{"role": "user", "content": "hi"}],
            "model": "demo",
            "params": {},
            "tools": [],
        },
        "stop": {"reply": "r"},
        "pause": {"reply": "r"},
        "resume": {"reply": "r"},
        "ping": {"t": 1.5},
        "tool_result": {"reply": "r", "call": "c", "content": "42", "error": "E: x"},
    }
    wrong = {str: 7, int: "7", float: "7", list: {"a": 1}, dict: [1]}
    cases = []
    for kind, fields in full.items():
        for name, value in fields.items():
            frame = {"type": kind, **fields, name: wrong[type(value)]}
            cases.append((json.dumps(frame), name))
    return cases


@pytest.mark.parametrize(("text", "field"), wrong_type_cases())
async def test_each_field_of_the_wrong_type_is_named(
    gateway: Gateway, text: str, field: str
) -> None:
    ws, _ = await hello(gateway)
    await ws.send(text)
    error = await recv(ws)
    assert error["type"] == "error"
    assert error["code"] == "bad_request"
    assert f".{field} must be" in error["message"]
    await ws.close()


WRONG_TYPES = [
    (
        '{"type": "start", "reply": 1, "model": "demo", "messages": []}',
        "start.reply must be a string",
    ),
    (
        '{"type": "start", "reply": "r", "model": ["demo"], "messages": []}',
        "start.model must be a string",
    ),
    (
        '{"type": "start", "reply": "r", "model": "demo", "messages": {}}',
        "start.messages must be an array",
    ),
    (
        '{"type": "start", "reply": "r", "model": "demo", "messages": [], "params": "hot"}',
        "start.params must be an object",
    ),
    ('{"type": "ping", "t": true}', "ping.t must be a number"),
    ('{"type": "resume", "reply": null}', "field 'reply' is required"),
]


@pytest.mark.parametrize(("text", "message"), WRONG_TYPES)
async def test_wrong_types_are_named(gateway: Gateway, text: str, message: str) -> None:
    ws, _ = await hello(gateway)
    await ws.send(text)
    error = await recv(ws)
    assert error["code"] == "bad_request"
    assert message in error["message"]
    await ws.close()


async def test_invalid_utf8_closes_with_1007_and_nothing_else_breaks(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    await ws.send(b'{"type": "ping", "t": 1, "x": "\xff\xfe"}', text=True)
    with pytest.raises(ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1007


async def test_oversize_frame_closes_with_1009(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    await ws.send(json.dumps({"type": "ping", "t": 1, "pad": "x" * (128 * 1024)}))
    with pytest.raises(ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009


async def test_a_flood_is_rate_limited_then_closed(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    for i in range(10_000):
        try:
            await ws.send(json.dumps({"type": "ping", "t": i}))
        except ConnectionClosed:
            break
    answers: list[dict[str, Any]] = []

    async def read_all() -> None:
        while True:
            answers.append(await recv(ws))

    with pytest.raises(ConnectionClosed) as info:
        await read_all()
    pongs = [a for a in answers if a["type"] == "pong"]
    limited = [a for a in answers if a.get("code") == "rate_limited"]
    assert 200 <= len(pongs) < 1000  # the burst, then the rate
    assert limited
    assert limited[0]["message"] == "too many frames; slow down to 50 a second"
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1008
    assert info.value.rcvd.reason == "too many frames: flood"


async def test_100_parallel_starts_run_four_and_answer_the_rest_busy(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    for i in range(100):
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "reply": f"r{i}",
                    "model": "demo",
                    "params": {"tokens_per_s": 200},
                    "messages": [{"role": "user", "content": f"q{i}"}],
                }
            )
        )
    done: dict[str, str] = {}
    errors: dict[str, str] = {}
    while len(done) < 100:
        frame = await recv(ws)
        if frame["type"] == "done":
            done[frame["reply"]] = frame["finish"]
        elif frame["type"] == "error":
            errors[frame["reply"]] = frame["code"]
    assert list(done.values()).count("stop") >= 4
    assert set(errors.values()) == {"busy"}
    assert len(errors) + list(done.values()).count("stop") == 100
    await ws.close()


async def test_hello_twice_and_last_seq_in_the_future(gateway: Gateway) -> None:
    ws, welcome = await hello(gateway)
    await ws.send(json.dumps({"type": "hello", "client": "again"}))
    assert (await recv(ws))["message"] == "hello was already sent on this connection"
    await ws.close()
    ws, error = await hello(gateway, session=welcome["session"], last_seq=99)
    assert error["code"] == "bad_request"
    assert error["message"] == "last_seq 99 is ahead of this session (last seq 0)"
    await ws.close()


async def test_forged_and_expired_sessions_start_afresh(gateway: Gateway) -> None:
    ws, welcome = await hello(gateway, session="forged-id", last_seq=3)
    assert welcome["resumed"] is False
    assert welcome["session"] != "forged-id"
    await ws.close()
    await asyncio.sleep(1.0)  # idle for longer than session_idle_s: expired
    ws, again = await hello(gateway, session=welcome["session"], last_seq=0)
    assert again["resumed"] is False
    await ws.close()


async def test_control_frames_for_unknown_replies(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    for kind in ("stop", "pause", "resume"):
        await ws.send(json.dumps({"type": kind, "reply": "ghost"}))
        error = await recv(ws)
        assert (error["code"], error["message"]) == ("bad_request", "unknown reply 'ghost'")
    await ws.close()


async def test_too_many_sessions_are_refused_busy(gateway: Gateway) -> None:
    kept = [(await hello(gateway))[0] for _ in range(LIMITS.sessions - len(gateway.sessions))]
    ws, error = await hello(gateway)
    assert error["code"] == "busy"
    assert (
        error["message"] == "this gateway serves 20 sessions already, all in use; try again later"
    )
    with pytest.raises(ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1013
    for other in kept:
        await other.close()
    await asyncio.sleep(1.0)  # idle past session_idle_s: they expire and free the places
    assert len(gateway.sessions) < LIMITS.sessions


async def test_no_hello_in_time_closes_with_1008(gateway: Gateway) -> None:
    async with connect(gateway.url(), proxy=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "no hello within 0.5 s")


# --- strict JSON at the gateway: an error frame each, the connection stays up -------

STRICT_JSON = [
    ('{"type":"ping","t":NaN}', "NaN is not valid JSON; numbers must be finite"),
    ('{"type":"ping","t":1e999}', "number 1e999 is out of range; numbers must be finite"),
    ('{"type":"ping","t":' + "4" * 400 + "}", "has more than 19 digits"),
    ('{"type":"ping","t":' + "4" * 5000 + "}", "has more than 19 digits"),
    ("[" * 20_000 + "]" * 20_000, "nested more than 32 levels deep"),
    ('{"type":"stop","reply":"\\udce9"}', "lone surrogate (U+DCE9)"),
    (
        '{"type":"start","reply":"r","model":"demo\\ud800","messages":[]}',
        "lone surrogate (U+D800)",
    ),
    (
        '{"type":"start","reply":"r","model":"demo",'
        '"messages":[{"role":"user","content":"caf\\udce9"}]}',
        "lone surrogate (U+DCE9)",
    ),
    (
        '{"type":"start","reply":"r","model":"demo","params":{"tokens_per_s":NaN},'
        '"messages":[{"role":"user","content":"hi"}]}',
        "NaN is not valid JSON",
    ),
]


@pytest.mark.parametrize(("text", "problem"), STRICT_JSON)
async def test_what_strict_json_refuses_gets_an_error_frame(
    gateway: Gateway, text: str, problem: str
) -> None:
    ws, _ = await hello(gateway)
    await ws.send(text)
    error = await recv(ws)
    assert (error["type"], error["code"]) == ("error", "bad_request")
    assert problem in error["message"]
    # Nothing entered the session, and the connection still answers.
    await ws.send('{"type":"ping","t":1}')
    assert await recv(ws) == {"type": "pong", "t": 1.0}
    await ws.close()


async def test_out_of_range_params_end_the_reply_with_bad_request(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    start = {
        "type": "start",
        "reply": "slow",
        "model": "demo",
        "params": {"tokens_per_s": 1e-300},
        "messages": [{"role": "user", "content": "hi"}],
    }
    await ws.send(json.dumps(start))
    frames = [await recv(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["started", "error", "done"]
    assert frames[1]["message"].startswith("param tokens_per_s=1e-300 is too slow")
    assert frames[2]["finish"] == "error"
    await ws.close()


class _SurrogateProvider:
    """Streams text with a lone surrogate in it, as a provider's JSON may decode to."""

    def models(self) -> list[str]:
        return ["odd"]

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        yield TextChunk("caf\udce9 and \ud83d\ude00")
        yield Finish("stop")


async def test_provider_text_with_a_lone_surrogate_is_sent_replaced() -> None:
    gateway = Gateway(models={"odd": ModelRoute(_SurrogateProvider(), "odd")})
    await gateway.start("127.0.0.1", 0)
    try:
        ws, _ = await hello(gateway)
        start = {"type": "start", "reply": "r", "model": "odd", "messages": []}
        await ws.send(json.dumps(start))
        frames = [await recv(ws) for _ in range(3)]
        assert [f["type"] for f in frames] == ["started", "delta", "done"]
        assert frames[1]["text"] == "caf\ufffd and \U0001f600"
        # A resume replays it without the writer failing on it.
        session = gateway.sessions[next(iter(gateway.sessions))].state.session_id
        await ws.close()
        again, welcome = await hello(gateway, session=session, last_seq=0)
        assert welcome["resumed"] is True
        replayed = [await recv(again) for _ in range(3)]
        assert replayed == frames
        await again.close()
    finally:
        await gateway.close()


# --- sessions: nobody locks others out; one client per session ----------------------


async def test_hello_and_leave_cannot_lock_others_out(gateway: Gateway) -> None:
    for _ in range(3 * LIMITS.sessions):
        ws, welcome = await hello(gateway)
        assert welcome["type"] == "welcome"
        await ws.close()
    assert len(gateway.sessions) <= LIMITS.sessions


async def test_a_second_connection_takes_over_and_the_first_is_told(gateway: Gateway) -> None:
    first, welcome = await hello(gateway)
    second, again = await hello(gateway, session=welcome["session"], last_seq=0)
    assert again["resumed"] is True
    with pytest.raises(ConnectionClosed) as info:
        await recv(first)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (
        4001,
        "session taken over by another connection",
    )
    await second.close()


async def test_a_session_is_bound_to_the_token_that_opened_it() -> None:
    gateway = Gateway(token=["alice-token", "bob-token"])
    await gateway.start("127.0.0.1", 0)
    try:

        async def hello_as(token: str, **fields: Any) -> tuple[ClientConnection, Any]:
            ws = await connect(
                gateway.url(), proxy=None, additional_headers={"Authorization": f"Bearer {token}"}
            )
            await ws.send(json.dumps({"type": "hello", "client": "t", **fields}))
            return ws, await recv(ws)

        alice, welcome = await hello_as("alice-token")
        # Another token naming alice's session is refused, neither resumed nor given a
        # new session in its place (which would hide the mistake).
        bob, other = await hello_as("bob-token", session=welcome["session"], last_seq=0)
        assert other["type"] == "error"
        assert other["code"] == "unauthorized"
        assert "opened with another token" in other["message"]
        assert "bob-token" not in other["message"]
        with pytest.raises(ConnectionClosed) as info:
            await recv(bob)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1008
        await alice.send('{"type":"ping","t":2}')
        assert await recv(alice) == {"type": "pong", "t": 2.0}  # alice was not taken over
        await alice.close()
        await bob.close()
    finally:
        await gateway.close()


# --- memory: what a session keeps, and a client that does not read -----------------


FLOOD_CHUNKS = 3072


class _FloodProvider:
    """Streams 24 MiB quickly: more than the socket buffers on both sides hold, so a
    client that does not read makes the gateway queue."""

    def models(self) -> list[str]:
        return ["flood"]

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        for i in range(FLOOD_CHUNKS):
            yield TextChunk(f"{i:07d}" + "z" * 8185)
            await asyncio.sleep(0)
        yield Finish("stop")


async def test_a_client_that_does_not_read_is_detached_and_catches_up_on_resume() -> None:
    limits = GatewayLimits(send_queue_bytes=256 * 1024)
    gateway = Gateway(
        models={"flood": ModelRoute(_FloodProvider(), "flood")},
        limits=limits,
        log_limits=LogLimits(max_bytes=64 * 1024 * 1024),
    )
    await gateway.start("127.0.0.1", 0)
    try:
        # A tiny receive queue: once it is full the client stops reading the socket.
        # No compression, which would shrink the repetitive text to almost nothing.
        ws = await connect(gateway.url(), proxy=None, max_queue=1, max_size=None, compression=None)
        await ws.send('{"type":"hello","client":"sleepy"}')
        welcome = await recv(ws)
        start = {"type": "start", "reply": "r", "model": "flood", "messages": []}
        await ws.send(json.dumps(start))
        live = gateway.sessions[welcome["session"]]
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while live.connection is not None:  # detached once its queue is over the bound
            assert asyncio.get_running_loop().time() < deadline, "never detached"
            await asyncio.sleep(0.01)
        await asyncio.gather(*live.tasks.values())
        ws.transport.abort()
        # The reply went on; a resume from the last seq seen gets all of it, exactly.
        again, resumed = await hello(gateway, session=welcome["session"], last_seq=0)
        assert resumed["resumed"] is True
        text = ""
        while (frame := await recv(again))["type"] != "done":
            text += frame.get("text", "")
        assert len(text) == FLOOD_CHUNKS * 8192
        assert text[:7] == "0000000"
        assert text[-8192:-8185] == f"{FLOOD_CHUNKS - 1:07d}"
        await again.close()
    finally:
        await gateway.close()


def test_a_session_forgets_finished_replies_beyond_the_most_recent() -> None:
    session = GatewaySession("s", limits=LogLimits(max_finished_replies=32))
    for i in range(100):
        session.start(f"r{i}", "demo")
        session.delta(f"r{i}", "text " * 100)
        session.finish(f"r{i}", "stop")
    assert len(session.replies) == 32
    assert set(session.replies) == {f"r{i}" for i in range(68, 100)}
    assert session.knows("r0")  # a late repeat of an old start is still recognised
    with pytest.raises(SessionError, match="already used"):
        session.start("r0", "demo")


async def test_a_start_that_cannot_be_decoded_is_refused_by_reply_id(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    long_model = "m" * 300
    await ws.send(json.dumps({"type": "start", "reply": "r9", "model": long_model, "messages": []}))
    error = await recv(ws)
    assert (error["code"], error["reply"]) == ("bad_request", "r9")
    assert error["message"] == "start.model is longer than 256 characters"
    await ws.close()


async def test_a_refused_start_is_named_even_with_its_reply_field_late(gateway: Gateway) -> None:
    ws, _ = await hello(gateway)
    start = (
        '{"type":"start","messages":[{"role":"user","content":"'
        + "x" * 5000
        + '"}],"model":"'
        + "m" * 300
        + '","reply":"late"}'
    )
    await ws.send(start)
    error = await recv(ws)
    assert (error["code"], error["reply"]) == ("bad_request", "late")
    await ws.close()


async def test_malformed_frames_over_the_rate_get_error_frames() -> None:
    limits = GatewayLimits(frames_per_s=1, frame_burst=2, flood_rejections=1000)
    gateway = Gateway(limits=limits)
    await gateway.start("127.0.0.1", 0)
    try:
        ws, _ = await hello(gateway)
        await ws.send('{"type":"ping","t":1}')
        await recv(ws)
        for text in ["[" * 20_000, '{"type":"stop","reply":"r","x":' + "[" * 20_000]:
            await ws.send(text)
            error = await recv(ws)
            assert error["code"] == "rate_limited"
        await ws.close()
    finally:
        await gateway.close()


async def test_big_frames_do_not_stall_other_sessions(gateway: Gateway) -> None:
    """Decoding a 64 KiB (here) or 1 MiB frame takes long; it happens off the event
    loop, so another session's pings are answered meanwhile (a liveness bound)."""
    head = '{"type":"ping","t":1,"x":['
    size = LIMITS.max_frame_bytes - 16
    bomb = head + ",".join(["[]"] * ((size - len(head) - 3) // 3)) + "]}"
    attacker, _ = await hello(gateway)
    victim, _ = await hello(gateway)
    loop = asyncio.get_running_loop()

    async def bombard() -> None:
        for _ in range(100):
            await attacker.send(bomb)

    sender = asyncio.create_task(bombard())
    worst = 0.0
    for i in range(20):
        began = loop.time()
        await victim.send(json.dumps({"type": "ping", "t": i}))
        assert (await recv(victim))["type"] == "pong"
        worst = max(worst, loop.time() - began)
    await sender
    assert worst < 1.0, worst
    await attacker.close()
    await victim.close()
