"""transcript.py: history for requests, and the DataFrame export."""

from __future__ import annotations

import math

from nbchat.protocol import ChatMessage
from nbchat.transcript import COLUMNS, Transcript


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
