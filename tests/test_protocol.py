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
    ProtocolError,
    Start,
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
    }
