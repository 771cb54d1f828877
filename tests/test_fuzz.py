"""Fuzzing: the decoder and the session state machine take any input and answer it
with a frame or their own error, never anything else. The CI budget is fixed by the
hypothesis profile (see tests/conftest.py), and a long run is one command there."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nbchat.protocol import CLIENT_TYPES, SERVER_TYPES, ProtocolError, decode, encode
from nbchat.session import ClientSession, GatewaySession, LogLimits, SessionError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "type",
        "reply",
        "messages",
        "model",
        "params",
        "seq",
        "text",
        "client",
        "session",
        "last_seq",
        "t",
        "role",
        "content",
        "finish",
        "code",
        "message",
        "usage",
        "timing",
    ]
)
frame_types = st.sampled_from([*CLIENT_TYPES, *SERVER_TYPES, "nope", ""])
frame_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    frame_types,
    st.dictionaries(field_names, json_values, max_size=6),
)


@given(st.one_of(st.text(), st.binary(), frame_like.map(json.dumps), json_values.map(json.dumps)))
def test_decoder_answers_anything_with_a_frame_or_a_protocol_error(data: Any) -> None:
    try:
        frame = decode(data)
    except ProtocolError as exc:
        error: ProtocolError | None = exc
    else:
        error = None
        assert decode(encode(frame)) == frame  # whatever decodes, round-trips
    if error is not None:
        assert error.code in ("bad_request", "unknown_type")
        assert str(error)


gateway_ops = st.lists(
    st.tuples(
        st.sampled_from(["start", "delta", "pause", "resume", "finish", "replay"]),
        st.sampled_from(["a", "b", "zz"]),
        st.text(max_size=3),
        st.sampled_from(["stop", "length", "stopped", "error"]),
        st.integers(-2, 40),
    ),
    max_size=80,
)


@given(gateway_ops, st.sampled_from([1, 3, 10_000]))
def test_session_state_machine_refuses_only_with_session_errors(
    ops: list[tuple[str, str, str, Any, int]], log_size: int
) -> None:
    gateway = GatewaySession("s", limits=LogLimits(max_events=log_size))
    client = ClientSession()
    for reply in ("a", "b"):
        client.open(reply)
    refusals: list[str] = []
    for kind, reply, text, finish, seq in ops:
        try:
            if kind == "start":
                events = gateway.start(reply, "demo")
            elif kind == "delta":
                events = gateway.delta(reply, text)
            elif kind == "pause":
                events = gateway.pause(reply)
            elif kind == "resume":
                events = gateway.resume(reply)
            elif kind == "finish":
                events = gateway.finish(reply, finish)
            else:
                replay = gateway.replay(max(seq, 0))
                events = [*replay.events, *replay.snapshots]
        except SessionError as exc:
            refusals.append(str(exc))
            continue
        numbered = [e.seq for e in events if getattr(e, "seq", None) is not None]  # type: ignore[union-attr]
        assert numbered == sorted(numbered)
        for event in events:
            client.receive(event)
    assert client.last_seq <= gateway.last_seq
    assert all(refusals)  # every refusal says why
