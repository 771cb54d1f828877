"""protocol.py: every frame round-trips; every bad frame names its problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbchat import protocol
from nbchat.protocol import (
    ChatMessage,
    Done,
    Error,
    Ping,
    Pong,
    ProtocolError,
    Start,
    Stop,
    Welcome,
    decode,
    decode_client,
    decode_server,
    encode,
)

FRAMES = json.loads((Path(__file__).parent / "fixtures" / "frames.json").read_text())


@pytest.mark.parametrize("data", FRAMES["valid"], ids=lambda d: d["type"])
def test_golden_frames_round_trip(data: dict[str, Any]) -> None:
    frame = decode(json.dumps(data))
    assert frame.type == data["type"]
    assert json.loads(encode(frame)) == data


@pytest.mark.parametrize("case", FRAMES["invalid"], ids=lambda c: c["text"][:40])
def test_invalid_frames_name_the_problem(case: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(case["text"])
    assert info.value.code == case["code"]
    assert info.value.field == case["field"]
    assert str(info.value)  # a message a person can read


def test_start_decodes_to_typed_values() -> None:
    frame = decode(
        '{"type":"start","reply":"r","model":"demo","messages":[{"role":"user","content":"hi"}]}'
    )
    assert frame == Start(reply="r", model="demo", messages=(ChatMessage("user", "hi"),), params={})


def test_optional_fields_are_omitted_not_null() -> None:
    text = encode(Done(seq=3, reply="r", finish="stopped"))
    assert json.loads(text) == {
        "type": "done",
        "seq": 3,
        "reply": "r",
        "finish": "stopped",
        "timing": {},
    }


def test_each_side_accepts_only_its_peers_frames() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 'delta'") as info:
        decode_client('{"type":"delta","seq":1,"reply":"r","text":"x"}')
    assert info.value.code == "unknown_type"
    with pytest.raises(ProtocolError, match="unknown frame type 'start'"):
        decode_server('{"type":"start","reply":"r","model":"m","messages":[]}')


def test_binary_and_non_object_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="binary frames"):
        decode(b'{"type":"ping","t":1}')
    with pytest.raises(ProtocolError, match="not an array"):
        decode("[]")


def test_unicode_survives_unescaped() -> None:
    text = encode(decode('{"type":"delta","seq":1,"reply":"r","text":"\\u00e9\\ud83d\\ude00"}'))
    assert "é😀" in text


def test_error_codes_cover_the_design() -> None:
    assert set(protocol.ERROR_CODES) == {
        "bad_request",
        "unknown_type",
        "too_large",
        "unauthorized",
        "unknown_model",
        "upstream_error",
        "rate_limited",
        "busy",
        "resume_gap",
        "gateway_shutdown",  # added: a reply cut short by a shutdown is not a stop
        "tool_error",  # added: the tool step bound, or a tool result that never came
        "store_unavailable",  # added: the shared session store (Redis) does not answer
        "gateway_lost",  # added: the gateway generating a reply died before its end
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"type":"ping","t":NaN}', "NaN is not valid JSON; numbers must be finite"),
        ('{"type":"ping","t":-Infinity}', "-Infinity is not valid JSON; numbers must be finite"),
        ('{"type":"ping","t":1e400}', "number 1e400 is out of range; numbers must be finite"),
        (
            '{"type":"ping","t":' + "9" * 400 + "}",
            "integer 99999999999999999999... has more than 19 digits; integers must fit in 64 bits",
        ),
        (
            '{"type":"hello","client":"x","last_seq":' + "1" * 5000 + "}",
            "integer 11111111111111111111... has more than 19 digits; integers must fit in 64 bits",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),
        (
            '{"type":"start","reply":"r","model":"demo","messages":[],"params":'
            + '{"a":' * 40
            + "1"
            + "}" * 41,
            "nested more than 32 levels deep",
        ),
        (
            '{"type":"stop","reply":"caf\\udce9"}',
            "frame: text contains a lone surrogate (U+DCE9), which is not valid Unicode and "
            "cannot be sent as UTF-8; decode such text with errors='replace'",
        ),
        (
            '{"type":"start","reply":"r","model":"demo","messages":[],"params":{"\\ud800":1}}',
            "frame: text contains a lone surrogate (U+D800), which is not valid Unicode and "
            "cannot be sent as UTF-8; decode such text with errors='replace'",
        ),
    ],
)
def test_strict_json_is_refused_with_a_named_problem(text: str, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(text)
    assert str(info.value) == problem
    assert info.value.code == "bad_request"


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_valid_surrogate_pair_is_accepted() -> None:
    frame = decode('{"type":"stop","reply":"\\ud83d\\ude00"}')
    assert frame == Stop(reply="\U0001f600")


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (Ping(t=float("nan")), "ping: NaN and Infinity cannot be sent; use a finite number"),
        (Pong(t=float("inf")), "pong: NaN and Infinity cannot be sent; use a finite number"),
        (
            Start(reply="r", messages=(ChatMessage("user", "caf\udce9.txt"),), model="demo"),
            "start: text contains a lone surrogate (U+DCE9), which is not valid Unicode and "
            "cannot be sent as UTF-8; decode such text with errors='replace'",
        ),
        (
            Start(reply="r", messages=(), model="demo", params={"seed": 10**20}),
            "start.params: integer 10000000000000000000... has more than 19 digits; "
            "integers must fit in 64 bits",
        ),
        (
            Start(reply="r", messages=(), model="demo", params={"x": _nested(40)}),
            "nested more than 32 levels deep",
        ),
        (
            Start(reply="r" * 300, messages=(), model="demo"),
            "start.reply is longer than 256 characters",
        ),
    ],
)
def test_encode_never_produces_what_decode_refuses(frame: Any, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        encode(frame)
    assert str(info.value) == problem


def test_valid_unicode_replaces_only_lone_surrogates() -> None:
    assert protocol.valid_unicode("caf\udce9 \ud83d\ude00") == "caf\ufffd \U0001f600"
    plain = "nothing to replace"
    assert protocol.valid_unicode(plain) is plain


def test_an_error_may_say_when_to_retry_and_older_peers_need_not() -> None:
    text = (
        '{"type":"error","code":"rate_limited","message":"retry after 2 s","reply":"r",'
        '"seq":4,"retry_after":2}'
    )
    frame = decode_server(text)
    assert frame == Error(
        code="rate_limited", message="retry after 2 s", reply="r", seq=4, retry_after=2.0
    )
    assert json.loads(encode(frame))["retry_after"] == 2.0
    # Absent (an older gateway), it is None; None is not sent (an older client).
    old = decode_server('{"type":"error","code":"busy","message":"wait"}')
    assert isinstance(old, Error)
    assert old.retry_after is None
    assert "retry_after" not in encode(old)
    assert decode_server(encode(Error(code="x", message="m", retry_after=0.25))) == Error(
        code="x", message="m", retry_after=0.25
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", r"error\.retry_after must be 0 or more"),
        ('"soon"', r"error\.retry_after must be a number"),
        ("true", r"error\.retry_after must be a number"),
    ],
)
def test_a_bad_retry_after_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        decode_server(
            f'{{"type":"error","code":"rate_limited","message":"m","retry_after":{value}}}'
        )
    assert info.value.field == "retry_after"


def test_a_negative_retry_after_is_never_sent() -> None:
    with pytest.raises(ProtocolError, match=r"error\.retry_after must be 0 or more"):
        encode(Error(code="rate_limited", message="m", retry_after=-0.5))
    with pytest.raises(ProtocolError, match="NaN"):
        encode(Error(code="rate_limited", message="m", retry_after=float("nan")))


def test_a_welcome_may_say_its_replies_per_session_and_an_older_one_need_not() -> None:
    old = decode_server(
        '{"type":"welcome","session":"s","last_seq":0,"models":[],"resumed":false,"server":"x"}'
    )
    assert isinstance(old, Welcome)
    assert old.replies_per_session is None
    assert "replies_per_session" not in encode(old)
    new = Welcome(
        session="s", last_seq=0, models=(), resumed=False, server="x", replies_per_session=2
    )
    assert decode_server(encode(new)) == new
    with pytest.raises(ProtocolError, match="replies_per_session must be a non-negative integer"):
        decode_server(encode(new).replace('"replies_per_session":2', '"replies_per_session":-2'))
