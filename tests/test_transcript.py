"""transcript.py: history for requests, and the DataFrame export."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from nbchat.protocol import ChatMessage
from nbchat.transcript import (
    COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    Transcript,
    transcript_from_json,
    transcript_from_records,
    transcript_to_json,
    transcript_to_markdown,
)


def make() -> Transcript:
    t = Transcript(system="Be brief.")
    t.add_user("hi", at=1_700_000_000.0)
    a = t.add_assistant(reply_id="r1", model="demo", at=1_700_000_000.5)
    a.content, a.finish = "hello", "stop"
    a.first_token_s, a.duration_s, a.chunks = 0.5, 2.5, 10
    a.usage = {"prompt_tokens": 4, "completion_tokens": 20}
    t.add_user("again", at=1_700_000_010.0)
    failed = t.add_assistant(reply_id="r2", model="demo", at=1_700_000_010.0)
    failed.finish, failed.error = "error", "boom"
    return t


def test_history_has_system_prompt_and_skips_empty_failed_replies() -> None:
    assert make().history() == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("user", "again"),
    )


def test_turns_number_user_messages_and_their_replies() -> None:
    assert [(m.turn, m.role) for m in make().messages] == [
        (1, "user"),
        (1, "assistant"),
        (2, "user"),
        (2, "assistant"),
    ]


def test_tokens_per_s_uses_usage_after_the_first_token() -> None:
    assert make().messages[1].tokens_per_s == 20 / 2.0


def test_tokens_per_s_falls_back_to_chunks() -> None:
    t = make()
    t.messages[1].usage = None
    assert t.messages[1].tokens_per_s == 10 / 2.0


def test_dataframe_has_every_column_with_nulls_for_user_rows() -> None:
    frame = make().to_dataframe()
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 4
    user = frame.iloc[0]
    assert user["role"] == "user"
    assert math.isnan(user["first_token_s"])
    assert frame["chunks"].isna().tolist() == [True, False, True, True]
    assistant = frame.iloc[1]
    assert assistant["completion_tokens"] == 20
    assert assistant["tokens_per_s"] == 10.0
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert frame.iloc[3]["error"] == "boom"


def test_json_round_trip_keeps_every_field() -> None:
    original = make()
    loaded = transcript_from_json(json.loads(json.dumps(transcript_to_json(original))))
    assert loaded.system == original.system
    assert loaded.to_records() == original.to_records()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"format": "something else"}, "not an nbchat transcript"),
        (
            {"format": FORMAT, "version": FORMAT_VERSION + 1, "messages": []},
            f"saved by a newer nbchat (format version {FORMAT_VERSION + 1}); this one reads "
            f"version {FORMAT_VERSION}: upgrade nbchat to load it",
        ),
        ({"format": FORMAT, "version": 1, "messages": [{"role": "bot"}]}, "message 0 needs"),
        (
            {
                "format": FORMAT,
                "version": 1,
                "messages": [{"role": "user", "content": "x", "turn": "1"}],
            },
            "message 0: turn has the wrong type",
        ),
    ],
)
def test_a_file_nbchat_cannot_read_says_why(data: object, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        transcript_from_json(data)


def test_a_reply_saved_mid_stream_loads_as_stopped() -> None:
    t = Transcript()
    t.add_user("hi", at=0.0)
    t.add_assistant(reply_id="r", model="demo", at=0.0).content = "half"
    loaded = transcript_from_json(transcript_to_json(t))
    assert loaded.messages[-1].finish == "stopped"
    assert loaded.messages[-1].content == "half"


def test_records_rebuild_the_transcript_with_fresh_turns() -> None:
    records = [r for r in make().to_records() if r["turn"] == 2] + make().to_records()[:2]
    rebuilt = transcript_from_records(records, system="Be brief.")
    assert [(m.turn, m.role, m.content) for m in rebuilt.messages] == [
        (1, "user", "again"),
        (1, "assistant", ""),
        (2, "user", "hi"),
        (2, "assistant", "hello"),
    ]
    assert rebuilt.messages[3].usage == {"prompt_tokens": 4, "completion_tokens": 20}


def test_markdown_has_authors_texts_and_a_timing_footer() -> None:
    text = transcript_to_markdown(make())
    assert text.startswith("**System:** Be brief.\n\n**You**\n\nhi\n\n**demo**\n\nhello\n\n")
    assert "*demo · first token 0.50 s · 2.5 s · 10 tokens/s*" in text
    assert "*demo · error · error: boom*" in text


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"usage": {"completion_tokens": "many"}}, "usage must map names to whole numbers"),
        ({"finish": "done"}, "finish must be one of"),
        ({"chunks": 2.5}, "chunks must be a whole number"),
        ({"created_at": 1e300}, "created_at must be Unix time in seconds"),
        ({"content": "caf\udce9"}, "lone surrogate"),
        ({"model": 7}, "model has the wrong type"),
    ],
)
def test_each_saved_field_is_checked(change: dict[str, object], problem: str) -> None:
    data = transcript_to_json(make())
    data["messages"][1].update(change)
    with pytest.raises(ValueError, match=re.escape(problem)):
        transcript_from_json(data)


def test_records_from_a_csv_round_trip_load(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "t.csv"
    make().to_dataframe().to_csv(path, index=False)
    records = (
        pandas.read_csv(path).astype(object).where(pandas.read_csv(path).notna(), None)
    ).to_dict("records")
    for record in records:  # as Chat.from_dataframe does with a text column
        record["created_at"] = pandas.Timestamp(record["created_at"]).timestamp()
    rebuilt = transcript_from_records(records)
    assert rebuilt.messages[1].chunks == 10  # a float column back to a whole number
    assert rebuilt.messages[1].usage == {"prompt_tokens": 4, "completion_tokens": 20}


def test_a_reply_stopped_inside_code_does_not_swallow_the_rest_of_the_markdown() -> None:
    t = Transcript()
    t.add_user("code please", at=1_700_000_000.0)
    cut = t.add_assistant(reply_id="r1", model="demo", at=1_700_000_000.0)
    cut.content, cut.finish = "Here:\n\n```python\nfor i in range(", "stopped"
    t.add_user("next question", at=1_700_000_001.0)
    markdown = transcript_to_markdown(t)
    before, after = markdown.split("**You**\n\nnext question")
    assert before.count("```") == 2  # the open fence is closed before the next message
    assert "```" not in after
