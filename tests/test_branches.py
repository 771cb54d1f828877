"""Branches: retry, edit, undo and checkout keep every version of a conversation.

The tree itself (nbchat.transcript) is tested first, without I/O; then Chat end to end
over a real embedded gateway and the demo model, whose reply is a function of the whole
history (assistant messages included), so the next reply proves which branch was sent.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nbchat import Chat, widget
from nbchat.conversation_store import ConversationStore, StoredMessage, _as_tree
from nbchat.gateway import EmbeddedGateway
from nbchat.gateway.providers.base import Request
from nbchat.gateway.providers.demo import demo_reply
from nbchat.pane import TranscriptSync, parse_command
from nbchat.protocol import ChatMessage
from nbchat.transcript import (
    COLUMNS,
    FORMAT,
    PANE_KEYS,
    Message,
    Transcript,
    transcript_from_json,
    transcript_from_records,
    transcript_to_json,
)

from timeouts import TIMEOUT, wait_until

# --- the tree, without I/O -----------------------------------------------------------


def reply(t: Transcript, text: str, *, model: str = "demo", at: float = 2.0) -> Message:
    a = t.add_assistant(reply_id=f"r-{text}", model=model, at=at)
    a.content, a.finish = text, "stop"
    a.usage = {"prompt_tokens": 10, "completion_tokens": 20}
    return a


def line(*turns: str) -> Transcript:
    """A transcript of user turns, each answered with "re: <turn>"."""
    t = Transcript()
    for i, text in enumerate(turns):
        t.add_user(text, at=1.0 + i)
        reply(t, f"re: {text}", at=1.5 + i)
    return t


def contents(t: Transcript) -> list[str]:
    return [m.content for m in t.messages]


def test_messages_have_stable_ids_and_parents_in_one_line() -> None:
    t = line("a", "b")
    ids = [m.id for m in t.messages]
    assert all(i.startswith("m-") and len(i) == 14 for i in ids)
    assert len(set(ids)) == 4
    assert [m.parent for m in t.messages] == [None, *ids[:-1]]
    assert [m.branch for m in t.messages] == [0, 0, 0, 0]
    records = t.to_records()
    assert [(r["id"], r["parent"], r["branch"]) for r in records] == [
        (m.id, m.parent, 0) for m in t.messages
    ]
    assert set(records[0]) == set(COLUMNS) | set(PANE_KEYS)
    assert [(r["sibling_index"], r["sibling_count"]) for r in records] == [(1, 1)] * 4


def test_a_second_reply_to_a_message_is_a_sibling_on_a_new_branch() -> None:
    t = line("hi")
    user, first = t.messages
    t.rewind(user)
    second = reply(t, "again")
    assert t.messages == [user, second]
    assert second.parent == user.id
    assert second.branch == 1
    assert first.branch == 0
    assert [c.id for c in t.children(user)] == [first.id, second.id]
    assert (t.to_records()[1]["sibling_index"], t.to_records()[1]["sibling_count"]) == (2, 2)
    assert t.checkout(0) is first
    assert contents(t) == ["hi", "re: hi"]
    assert (t.to_records()[1]["sibling_index"], t.to_records()[1]["sibling_count"]) == (1, 2)


def test_tool_calls_sit_before_their_answer_and_share_its_siblings() -> None:
    t = Transcript()
    user = t.add_user("weather?", at=1.0)
    answer = t.add_assistant(reply_id="r1", model="demo", at=1.1)
    call1 = t.add_tool(call="c1", name="f", arguments={}, reply_id="r1", at=1.2, before=answer)
    call2 = t.add_tool(call="c2", name="f", arguments={}, reply_id="r1", at=1.3, before=answer)
    answer.finish = call1.finish = call2.finish = "stop"
    assert t.messages == [user, call1, call2, answer]
    assert [m.parent for m in t.messages] == [None, user.id, call1.id, call2.id]
    assert t.head(answer) is call1
    t.rewind(user)
    retried = reply(t, "sunny")
    assert [c.id for c in t.children(user)] == [call1.id, retried.id]
    t.checkout(answer.id)
    assert t.messages == [user, call1, call2, answer]
    records = t.to_records()
    assert [(r["sibling_index"], r["sibling_count"]) for r in records[1:]] == [(1, 2)] * 3
    assert t.checkout(answer.id, sibling=2) is retried


def test_an_edit_forks_at_its_turn_and_the_old_turns_stay_reachable() -> None:
    t = line("one", "two", "three", "four")
    old_two = t.user_message(turn=2)
    t.rewind(t.node(old_two.parent or ""))
    new_two = t.add_user("TWO", at=9.0)
    reply(t, "re: TWO")
    assert new_two.turn == 2
    assert new_two.branch == 1
    assert new_two.parent == old_two.parent
    assert contents(t) == ["one", "re: one", "TWO", "re: TWO"]
    branches = t.branches()
    assert [(b.branch, b.turns, b.preview, b.active) for b in branches] == [
        (0, 4, "four", False),
        (1, 2, "TWO", True),
    ]
    t.checkout(branches[0])
    assert contents(t)[-2:] == ["four", "re: four"]
    assert len(t.messages) == 8


def test_undo_then_a_message_forks_and_checkout_by_id_takes_the_newest_leaf() -> None:
    t = line("a", "b")
    first_a = t.messages[1]
    t.rewind_before(t.last_user())  # what undo does
    assert contents(t) == ["a", "re: a"]
    assert [b.active for b in t.branches()] == [True]  # still on branch 0, before its leaf
    t.add_user("c", at=5.0)
    reply(t, "re: c", at=5.5)
    assert [m.branch for m in t.messages] == [0, 0, 1, 1]
    t.checkout(0)
    assert contents(t) == ["a", "re: a", "b", "re: b"]
    t.checkout(first_a.id)  # below it: b (branch 0) and c (branch 1, newer)
    assert contents(t) == ["a", "re: a", "c", "re: c"]


def test_undo_of_every_turn_then_a_message_is_a_second_root() -> None:
    t = line("a")
    t.rewind(None)
    assert t.messages == []
    assert t.turns == 0
    root = t.add_user("fresh", at=3.0)
    assert root.parent is None
    assert root.branch == 1
    assert root.turn == 1
    assert [b.branch for b in t.branches()] == [0, 1]


def test_rewind_before_ends_the_branch_at_a_message_s_parent() -> None:
    t = line("a", "b")
    t.rewind_before(t.user_message(turn=2))
    assert contents(t) == ["a", "re: a"]
    t.rewind_before(t.user_message(turn=1))
    assert t.messages == []
    assert len(t.tree()) == 4  # nothing deleted


def test_numpy_whole_numbers_name_branches_turns_and_siblings() -> None:
    t = forked()  # as a DataFrame's branch and turn columns give them
    assert t.checkout(np.int64(1)).content == "re: b"
    assert t.user_message(turn=np.int64(2)).content == "b"
    assert t.checkout(t.messages[1].id, sibling=np.int64(1)).content == "re: a"
    with pytest.raises(ValueError, match="a branch number or a message id"):
        t.checkout(np.bool_(True))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="turn must be a turn number"):
        t.user_message(turn=np.float64(1.0))  # type: ignore[arg-type]


def test_a_checkout_by_number_does_not_list_every_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    t = forked()

    def listed(_self: Transcript) -> None:
        raise AssertionError("checkout listed every branch")

    monkeypatch.setattr(Transcript, "branches", listed)
    assert t.checkout(1).content == "re: b"
    with pytest.raises(ValueError, match="no branch 7; the branches: 0, 1"):
        t.checkout(7)


def test_a_record_shows_a_sibling_added_since_it_was_made() -> None:
    t = line("a", "b")
    t.to_records()  # b's record made, with no sibling
    t.rewind_before(t.last_user())  # undo, then a turn beside b: no records made between
    t.add_user("c", at=5.0)
    reply(t, "re: c")
    t.checkout(0)
    records = t.to_records()
    assert [(r["content"], r["sibling_index"], r["sibling_count"]) for r in records[2:]] == [
        ("b", 1, 2),
        ("re: b", 1, 1),
    ]


@pytest.mark.parametrize(
    ("target", "sibling", "error"),
    [
        (7, None, "there is no branch 7; the branches: 0, 1"),
        ("m-nothere", None, "no message with id 'm-nothere'"),
        (True, None, "a branch number or a message id"),
        (1.0, None, "a branch number or a message id"),
        (0, 1, "needs a message id"),
        ("USER", 3, "sibling must be from 1 to 2"),
        ("USER", 0, "sibling must be from 1 to 2"),
    ],
)
def test_a_bad_checkout_says_why(target: Any, sibling: int | None, error: str) -> None:
    t = line("a")
    t.rewind(t.messages[0])
    reply(t, "b")
    if target == "USER":
        target = t.messages[1].id
    before = list(t.messages)
    with pytest.raises(ValueError, match=error):
        t.checkout(target, sibling=sibling)
    assert t.messages == before


def test_bad_turns_and_ids_for_an_edit_say_why() -> None:
    t = line("a", "b")
    with pytest.raises(ValueError, match="no turn 3 on the active branch"):
        t.user_message(turn=3)
    with pytest.raises(ValueError, match="is not yours: its role is assistant"):
        t.user_message(message_id=t.messages[1].id)
    with pytest.raises(ValueError, match="turn=N"):
        t.user_message()
    with pytest.raises(ValueError, match="no message of yours"):
        Transcript().last_user()


def test_records_cost_the_usage_at_the_prices() -> None:
    t = line("a")
    reply(t, "x", model="mystery-model")
    records = t.to_records()
    assert records[0]["cost"] is None  # a user message
    assert records[1]["cost"] == 0.0  # demo is priced, at nothing
    assert records[2]["cost"] is None  # no price for it
    t.set_prices({"demo": (0.0, 0.0), "mystery-model": (1.0, 2.0)})
    assert t.to_records()[2]["cost"] == pytest.approx((10 * 1.0 + 20 * 2.0) / 1e6)


def test_a_checkout_resends_the_pane_the_records_from_the_fork_on() -> None:
    t = line("a", "b", "c")
    sync = TranscriptSync()
    first = sync.update(t.to_records())
    assert first is not None
    assert first["from"] == 0
    assert len(first["records"]) == 6
    t.rewind(t.messages[2])  # retry turn 2
    reply(t, "re: b, again")
    update = sync.update(t.to_records())
    assert update is not None
    assert update["from"] == 3
    assert len(update["records"]) == 1
    assert (update["records"][0]["sibling_index"], update["records"][0]["sibling_count"]) == (2, 2)
    t.checkout(0)
    update = sync.update(t.to_records())
    assert update is not None
    assert update["from"] == 3
    assert [r["content"] for r in update["records"]] == ["re: b", "c", "re: c"]
    assert update["records"][0]["sibling_index"] == 1
    assert sync.update(t.to_records()) is None  # nothing changed since


def forked() -> Transcript:
    """Turn 1 answered twice, then turn 2 on the second answer; the first is active."""
    t = line("a")
    t.rewind(t.messages[0])
    reply(t, "re: a, again")
    t.add_user("b", at=4.0)
    reply(t, "re: b")
    t.checkout(0)
    return t


def test_a_tree_survives_json_whole() -> None:
    t = forked()
    data = json.loads(json.dumps(transcript_to_json(t)))
    assert data["version"] == 2
    assert len(data["messages"]) == 5
    assert data["active"] == t.messages[-1].id
    back = transcript_from_json(data)
    assert [(m.id, m.parent, m.branch, m.turn) for m in back.tree()] == [
        (m.id, m.parent, m.branch, m.turn) for m in t.tree()
    ]
    assert contents(back) == ["a", "re: a"]
    back.checkout(1)
    assert contents(back) == ["a", "re: a, again", "b", "re: b"]


def test_a_version_1_file_loads_as_one_line() -> None:
    data = {
        "format": FORMAT,
        "version": 1,
        "system": None,
        "messages": [
            {"role": "user", "content": "hi", "turn": 1, "created_at": 1.0},
            {"role": "assistant", "content": "hello", "turn": 1, "created_at": 2.0},
        ],
    }
    t = transcript_from_json(data)
    assert contents(t) == ["hi", "hello"]
    assert t.messages[1].parent == t.messages[0].id
    assert t.messages[0].parent is None
    assert [b.branch for b in t.branches()] == [0]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda ms: ms[1].update(parent="m-gone"), "follows 'm-gone', which is not among"),
        (lambda ms: ms[1].update(id=ms[0]["id"]), "two messages have the id"),
        (lambda ms: ms[0].update(parent=ms[1]["id"]), "its own ancestor"),
        (lambda ms: ms[0].pop("id"), "needs its id"),
        (lambda ms: ms[0].update(id=""), "id must be text"),
        (lambda ms: ms[0].update(branch=-1), "branch must be 0 or more"),
    ],
)
def test_a_broken_tree_in_a_file_is_refused_clearly(change: Any, error: str) -> None:
    data = transcript_to_json(line("a"))
    change(data["messages"])
    with pytest.raises(ValueError, match=error):
        transcript_from_json(data)


def test_branch_numbers_that_do_not_fit_the_tree_are_numbered_afresh() -> None:
    data = transcript_to_json(forked())
    for m in data["messages"]:
        m["branch"] = 5  # all on one number: two leaves would share it
    back = transcript_from_json(data)
    assert sorted(b.branch for b in back.branches()) == [0, 1]


@pytest.mark.parametrize(
    "numbers",
    [
        [0, 0, 5, 5, 5],  # a gap
        [1, 1, 2, 2, 2],  # not from 0
        [2**70, 2**70, 2**70 + 1, 2**70 + 1, 2**70 + 1],  # no int64 holds it
    ],
)
def test_branch_numbers_with_gaps_or_too_big_are_numbered_afresh(numbers: list[int]) -> None:
    data = transcript_to_json(forked())
    for m, number in zip(data["messages"], numbers, strict=True):
        m["branch"] = number  # they fit the tree's shape, but not 0 to N-1
    back = transcript_from_json(json.loads(json.dumps(data)))
    assert [b.branch for b in back.branches()] == [0, 1]
    assert back.to_dataframe(all_branches=True)["branch"].tolist() == [0, 0, 1, 1, 1]
    back.add_user("next", at=9.0)
    assert back.messages[-1].branch == 0


def test_records_of_every_branch_rebuild_the_tree_and_filtered_rows_a_line() -> None:
    t = forked()
    rows = t.to_records(all_branches=True)
    assert [r["content"] for r in rows] == ["a", "re: a", "re: a, again", "b", "re: b"]
    back = transcript_from_records(rows)
    assert [(m.id, m.parent) for m in back.tree()] == [(m.id, m.parent) for m in t.tree()]
    assert contents(back) == ["a", "re: a, again", "b", "re: b"]  # through the last row
    kept = [r for r in rows if r["content"] != "re: a, again"]  # b's parent is gone
    flat = transcript_from_records(kept)
    assert contents(flat) == ["a", "re: a", "b", "re: b"]
    assert [m.parent for m in flat.messages[1:]] == [m.id for m in flat.messages[:-1]]


def test_records_of_a_long_tree_load_whole() -> None:
    # How fast is benchmarks' business (no wall clock here); this pins that a long
    # chain loads at all, without recursion, in one piece.
    rows: list[dict[str, Any]] = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "x", "finish": "stop"}
        | {"id": f"m-{i}", "parent": f"m-{i - 1}" if i else None, "created_at": float(i)}
        for i in range(30_000)
    ]
    back = transcript_from_records(rows)
    assert len(back.messages) == 30_000


def test_the_dataframe_holds_the_active_branch_or_every_branch() -> None:
    t = forked()
    frame = t.to_dataframe()
    assert list(frame.columns) == list(COLUMNS)
    assert frame["content"].tolist() == ["a", "re: a"]
    every = t.to_dataframe(all_branches=True)
    assert len(every) == 5
    assert every["branch"].tolist() == [0, 0, 1, 1, 1]
    assert pd.isna(every["parent"][0])
    assert every["parent"].tolist()[1:3] == [every["id"][0], every["id"][0]]
    assert every["cost"].tolist()[1] == 0.0
    assert math.isnan(every["cost"].tolist()[0])


# --- Chat end to end --------------------------------------------------------------------


def expected(*history: str, system: str | None = None) -> str:
    """The demo model's reply to alternating user/assistant ``history``."""
    roles = ["user", "assistant"] * len(history)
    messages = tuple(ChatMessage(r, t) for r, t in zip(roles, history, strict=False))  # type: ignore[arg-type]
    if system:
        messages = (ChatMessage("system", system), *messages)
    return demo_reply(Request(messages=messages, model="demo"))


def texts(chat: Chat) -> list[str]:
    return [m["content"] for m in chat.messages]


def test_the_demo_seed_changes_the_reply_and_keeps_it_deterministic() -> None:
    def with_seed(seed: int | None) -> str:
        params = {} if seed is None else {"seed": seed}
        return demo_reply(Request((ChatMessage("user", "hello"),), "demo", params))

    assert with_seed(None) == expected("hello")
    assert with_seed(1) == with_seed(1) != with_seed(None)
    assert with_seed(1) != with_seed(2)


def test_retry_keeps_both_replies_and_the_next_turn_goes_on_from_the_active_one(
    chat: Chat,
) -> None:
    first = chat.send("hello").wait(TIMEOUT)
    second = chat.retry(seed=1).wait(TIMEOUT)  # at once after wait(): nothing runs
    assert second.finish == "stop"
    assert second.prompt == "hello"
    assert first.text == expected("hello") != second.text
    assert texts(chat) == ["hello", second.text]
    last = chat.messages[-1]
    assert (last["sibling_index"], last["sibling_count"], last["branch"]) == (2, 2, 1)
    # The next request carries the active reply: the demo's answer proves it.
    assert chat.send("and then?").wait(TIMEOUT).text == expected("hello", second.text, "and then?")
    chat.checkout(0)
    assert texts(chat) == ["hello", first.text]
    assert chat.messages[-1]["sibling_index"] == 1
    assert chat.send("and then?").wait(TIMEOUT).text == expected("hello", first.text, "and then?")
    assert [(b.branch, b.turns, b.active) for b in chat.branches()] == [
        (0, 2, True),
        (1, 2, False),
    ]


def test_edit_at_turn_2_of_4_makes_a_branch_and_the_old_turns_stay(chat: Chat) -> None:
    history: list[str] = []
    for text in ("one", "two", "three", "four"):
        history += [text, chat.send(text).wait(TIMEOUT).text]
    old = chat.messages
    edited = chat.edit(turn=2, text="TWO").wait(TIMEOUT)
    assert edited.text == expected("one", history[1], "TWO")
    assert texts(chat) == ["one", history[1], "TWO", edited.text]
    assert chat.messages[2]["parent"] == old[2]["parent"]
    assert chat.messages[2]["sibling_count"] == 2
    assert chat.messages[2]["turn"] == 2
    chat.checkout(old[-1]["id"])  # the old branch, by its last message
    assert texts(chat) == history
    chat.checkout(1)
    assert texts(chat)[-2:] == ["TWO", edited.text]
    again = chat.edit(id=old[0]["id"], text="ONE").wait(TIMEOUT)  # by id, off the path
    assert texts(chat) == ["ONE", again.text]
    assert again.text == expected("ONE")
    assert len(chat.branches()) == 3


def test_undo_then_send_forks_and_the_undone_turn_stays_reachable(chat: Chat) -> None:
    a = chat.send("first").wait(TIMEOUT).text
    b = chat.send("second").wait(TIMEOUT).text
    chat.undo()
    assert texts(chat) == ["first", a]
    reply = chat.send("other").wait(TIMEOUT)
    assert reply.text == expected("first", a, "other")
    assert [m["branch"] for m in chat.messages] == [0, 0, 1, 1]
    chat.checkout(0)
    assert texts(chat) == ["first", a, "second", b]
    chat.undo()
    chat.undo()
    assert chat.messages == []
    with pytest.raises(ValueError, match="no message of yours"):
        chat.undo()
    with pytest.raises(ValueError, match="no message of yours"):
        chat.retry()


def test_branch_changes_wait_for_the_reply_in_flight_and_bad_targets_say_why(
    chat: Chat,
) -> None:
    chat.send("hi").wait(TIMEOUT)
    user_id = chat.messages[0]["id"]
    slow = chat.send("slowly", tokens_per_s=20)
    for change in (
        chat.retry,
        chat.undo,
        lambda: chat.edit(turn=1, text="x"),
        lambda: chat.checkout(0),
    ):
        with pytest.raises(RuntimeError, match="a reply is running or queued"):
            change()
    slow.stop().wait(TIMEOUT)
    with pytest.raises(ValueError, match="no turn 9"):
        chat.edit(turn=9, text="x")
    with pytest.raises(ValueError, match="no message with id 'm-nope'"):
        chat.edit(id="m-nope", text="x")
    with pytest.raises(ValueError, match="needs the new text"):
        chat.edit(id=user_id, text=" ")
    with pytest.raises(ValueError, match="no branch 4"):
        chat.checkout(4)
    assert texts(chat)[:3] == ["hi", expected("hi"), "slowly"]


def test_the_dataframe_of_a_chat_has_the_tree_and_the_cost(chat: Chat) -> None:
    chat.send("hello").wait(TIMEOUT)
    chat.retry(seed=3).wait(TIMEOUT)
    frame = chat.to_dataframe()
    assert list(frame.columns) == list(COLUMNS)
    assert frame["role"].tolist() == ["user", "assistant"]
    assert math.isnan(frame["cost"][0])
    assert frame["cost"][1] == 0.0
    every = chat.to_dataframe(all_branches=True)
    assert every["branch"].tolist() == [0, 0, 1]
    assert pd.isna(every["parent"][0])
    assert every["parent"].tolist()[1:] == [every["id"][0], every["id"][0]]
    chat.prices = {"demo": (1.0, 2.0)}  # dollars per 1M tokens
    usage = chat.messages[1]
    cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert chat.to_dataframe()["cost"][1] == pytest.approx(cost)
    assert chat.prices["demo"] == (1.0, 2.0)
    with pytest.raises(ValueError, match="prices"):
        chat.prices = {"demo": "free"}


def test_an_unknown_model_costs_null(embedded: EmbeddedGateway) -> None:
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0, prices={"x": (1, 1)}) as chat:
        chat.send("hello").wait(TIMEOUT)
        assert chat.messages[1]["cost"] == 0.0
        chat.prices = {"demo": (3.0, 3.0)}
        assert chat.messages[1]["cost"] > 0
    t = line("a")
    t.messages[1].model = "not-priced"
    assert t.to_dataframe()["cost"].isna().all()


def test_save_and_load_keep_the_tree_and_the_active_branch(chat: Chat, tmp_path: Path) -> None:
    first = chat.send("hello").wait(TIMEOUT).text
    second = chat.retry(seed=1).wait(TIMEOUT).text
    chat.checkout(0)
    path = chat.save(tmp_path / "tree.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2
    assert len(data["messages"]) == 3
    with Chat.load(path, url=chat.url, token=chat._conversation.connection.token) as loaded:
        assert texts(loaded) == ["hello", first]
        assert [m["id"] for m in loaded.messages] == [m["id"] for m in chat.messages]
        loaded.checkout(1)
        assert texts(loaded) == ["hello", second]
        reply = loaded.send("more", tokens_per_s=0).wait(TIMEOUT)
        assert reply.text == expected("hello", second, "more")


def test_a_version_1_file_loads_and_goes_on(chat: Chat, tmp_path: Path) -> None:
    answer = expected("hi")
    path = tmp_path / "v1.json"
    path.write_text(
        json.dumps(
            {
                "format": FORMAT,
                "version": 1,
                "system": None,
                "messages": [
                    {"role": "user", "content": "hi", "turn": 1, "created_at": 1.0},
                    {"role": "assistant", "content": answer, "turn": 1, "finish": "stop"},
                ],
            }
        )
    )
    with Chat.load(path, url=chat.url, token=chat._conversation.connection.token) as loaded:
        assert texts(loaded) == ["hi", answer]
        assert loaded.send("next", tokens_per_s=0).wait(TIMEOUT).text == expected(
            "hi", answer, "next"
        )
        assert [b.branch for b in loaded.branches()] == [0]


def test_from_dataframe_of_every_branch_rebuilds_the_tree(chat: Chat) -> None:
    chat.send("hello").wait(TIMEOUT)
    second = chat.retry(seed=1).wait(TIMEOUT).text
    chat.checkout(0)
    every = chat.to_dataframe(all_branches=True)
    token = chat._conversation.connection.token
    with Chat.from_dataframe(every, url=chat.url, token=token, tokens_per_s=0) as rebuilt:
        assert len(rebuilt.branches()) == 2
        assert texts(rebuilt) == ["hello", second]  # the branch through the last row
    active = chat.to_dataframe()
    with Chat.from_dataframe(active, url=chat.url, token=token, tokens_per_s=0) as plain:
        assert len(plain.branches()) == 1
        assert texts(plain) == texts(chat)


# --- the pane -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [  # more cases in tests/fixtures/pane.json, which tests/test_pane.py reads
        ({"type": "edit", "id": 5, "text": "x"}, "'edit' needs the message's id"),
        ({"type": "checkout", "id": "m-1", "sibling": True}, "'sibling' to be a number"),
        ({"type": "checkout", "id": "m-1", "sibling": "2"}, "'sibling' to be a number"),
    ],
)
def test_bad_branch_commands_say_why(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_command(message)


@pytest.fixture
def pane(chat: Chat) -> list[dict[str, Any]]:
    """What the chat sends its pane."""
    pushed: list[dict[str, Any]] = []
    chat._push = pushed.append  # type: ignore[method-assign,assignment]
    return pushed


def command(chat: Chat, message: dict[str, Any]) -> None:
    chat._on_pane_message(chat, message, None)
    assert chat.error == "", chat.error


def test_the_pane_retries_edits_and_switches_with_its_arrows(
    chat: Chat, pane: list[dict[str, Any]]
) -> None:
    first = chat.send("hello").wait(TIMEOUT).text
    user_id = chat.messages[0]["id"]
    command(chat, {"type": "retry"})
    wait_until(lambda: chat.reply is None and len(chat.branches()) == 2, "the retry")
    assert texts(chat) == ["hello", expected("hello")]  # the demo, without a seed, again
    assert chat.messages[1]["id"] != chat.messages[0]["id"]
    pane.clear()
    command(chat, {"type": "checkout", "id": chat.messages[1]["id"], "sibling": 1})
    wait_until(lambda: any(m.get("type") == "transcript" for m in pane), "the pane's update")
    update = next(m for m in pane if m.get("type") == "transcript")
    assert update["from"] == 1
    assert [r["content"] for r in update["records"]] == [first]
    assert (update["records"][0]["sibling_index"], update["records"][0]["sibling_count"]) == (1, 2)
    command(chat, {"type": "edit", "id": user_id, "text": "bonjour"})
    wait_until(lambda: chat.reply is None and len(chat.branches()) == 3, "the edit")
    assert texts(chat) == ["bonjour", expected("bonjour")]
    assert chat.messages[0]["sibling_count"] == 2
    chat._on_pane_message(chat, {"type": "checkout", "id": "m-nope"}, None)
    assert "no message with id 'm-nope'" in chat.error


# --- named conversations and the saved copy ---------------------------------------------


def test_a_named_conversation_keeps_its_branches_after_a_restart(
    embedded: EmbeddedGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_HOME", str(tmp_path / "home"))
    args: dict[str, Any] = {"url": embedded.url, "token": embedded.token, "tokens_per_s": 0}
    with Chat(conversation="tree", **args) as chat:
        first = chat.send("hello").wait(TIMEOUT).text
        second = chat.retry(seed=1).wait(TIMEOUT).text
        third = chat.send("more").wait(TIMEOUT).text
        chat.checkout(0)
        ids = [m["id"] for m in chat.messages]
    with Chat(conversation="tree", **args) as again:
        assert texts(again) == ["hello", first]  # the active branch when it closed
        assert [m["id"] for m in again.messages] == ids
        assert [(b.branch, b.turns) for b in again.branches()] == [(0, 1), (1, 2)]
        again.checkout(1)
        assert texts(again) == ["hello", second, "more", third]
        assert again.send("go on").wait(TIMEOUT).text == expected(
            "hello", second, "more", third, "go on"
        )


def test_the_saved_copy_shows_the_active_branch_and_says_there_are_others() -> None:
    from nbchat.saved_copy import SavedCopy

    t = forked()
    bundle = SavedCopy("c1").bundle(t, now=0.0)
    assert "branch 1 of 2" in bundle["text/plain"]  # counted from 1, for people
    assert "re: a, again" not in bundle["text/plain"]
    assert "re: a" in bundle["text/plain"]
    t.checkout(1)
    assert "branch 2 of 2" in SavedCopy("c1").bundle(t, now=0.0)["text/plain"]
    single = SavedCopy("c2").bundle(line("a"), now=0.0)
    assert "branch" not in single["text/plain"]


def test_a_tree_loaded_into_a_named_conversation_is_kept_whole(
    embedded: EmbeddedGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_HOME", str(tmp_path / "home"))
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(transcript_to_json(forked())))
    args: dict[str, Any] = {"url": embedded.url, "token": embedded.token}
    with Chat.load(path, conversation="from-file", **args) as chat:
        assert texts(chat) == ["a", "re: a"]
    with Chat(conversation="from-file", **args) as again:
        assert texts(again) == ["a", "re: a"]
        again.checkout(1)
        assert texts(again) == ["a", "re: a, again", "b", "re: b"]


def test_a_reply_written_before_its_tool_calls_loads_after_them(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "store.sqlite3")
    try:
        stored = store.open("tools", system=None, model=None)
        tool = {"role": "tool", "content": "{}", "tool_name": "f", "tool_call": "c1"}
        rows: list[tuple[str, int, dict[str, Any]]] = [
            ("m-u", 0, {"role": "user", "content": "weather?", "parent": None}),
            # The answer's row is written first, at the same place as the call's.
            ("m-a", 1, {"role": "assistant", "content": "sunny", "parent": "m-t"}),
            ("m-t", 1, tool | {"parent": "m-u"}),
        ]
        written = [
            StoredMessage(i, 1.0, "s", n, data | {"id": i, "path": True, "finish": "stop"})
            for i, n, data in rows
        ]
        store.write(stored.id, stored.epoch, written, system=None, model=None)
        loaded = store.load("tools")
    finally:
        store.close()
    assert loaded is not None
    assert [m.role for m in loaded.transcript.messages] == ["user", "tool", "assistant"]
    assert [m.id for m in loaded.transcript.messages] == ["m-u", "m-t", "m-a"]


@pytest.fixture
def named(
    embedded: EmbeddedGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Chat arguments for named conversations in a store of the test's own."""
    monkeypatch.setenv("NBCHAT_HOME", str(tmp_path / "home"))
    return {"url": embedded.url, "token": embedded.token, "tokens_per_s": 0}


def every_message(chat: Chat) -> list[tuple[str, str | None, str]]:
    frame = chat.to_dataframe(all_branches=True)
    parents = frame["parent"].astype(object).where(frame["parent"].notna(), None)
    return sorted(zip(frame["id"], parents, frame["content"], strict=True))


@pytest.mark.parametrize("change", ["edit turn 1", "undo every turn"])
def test_a_branch_from_the_first_message_is_kept_after_a_restart(
    named: dict[str, Any], change: str
) -> None:
    with Chat(conversation="first", **named) as chat:
        chat.send("a").wait(TIMEOUT)
        chat.send("b").wait(TIMEOUT)
        if change == "edit turn 1":
            chat.edit(turn=1, text="A").wait(TIMEOUT)
        else:
            chat.undo()
            chat.undo()
        tree, active = every_message(chat), texts(chat)
        branches = [(b.branch, b.turns, b.active) for b in chat.branches()]
    with Chat(conversation="first", **named) as again:
        assert every_message(again) == tree  # the first line, which starts at the root, too
        assert texts(again) == active
        assert [(b.branch, b.turns, b.active) for b in again.branches()] == branches
        again.checkout(0)
        assert texts(again)[::2] == ["a", "b"]


def on_disk(name: str) -> list[str]:
    """The active branch of the conversation ``name`` as stored now."""
    store = ConversationStore()
    try:
        stored = store.load(name)
    finally:
        store.close()
    return [] if stored is None else contents(stored.transcript)


def test_two_chats_on_one_name_each_go_on_from_the_reply_they_saw(
    named: dict[str, Any],
) -> None:
    a = Chat(conversation="two", **named)
    a.send("a").wait(TIMEOUT)
    a.send("b").wait(TIMEOUT)
    wait_until(lambda: on_disk("two") == texts(a), "A's turns on disk")
    with Chat(conversation="two", **named) as b:
        assert texts(b) == texts(a)
        retried = a.retry(seed=1).wait(TIMEOUT).text  # A answers b again...
        a.close()  # (written)
        b.send("c").wait(TIMEOUT)  # ...which B never saw: c follows the first answer
        seen_by_b = texts(b)
    with Chat(conversation="two", **named) as again:
        assert texts(again) == seen_by_b  # B's turn was the latest write
        c = next(m for m in again.to_dataframe(all_branches=True).itertuples() if m.content == "c")
        assert again._conversation.transcript.node(c.parent).content == seen_by_b[3]
        again.checkout(1)
        assert texts(again) == [*seen_by_b[:3], retried]


def test_the_latest_turn_undo_or_checkout_of_chats_on_one_name_is_active_after_a_restart(
    named: dict[str, Any],
) -> None:
    a = Chat(conversation="three", **named)
    first = [a.send("a").wait(TIMEOUT).text]
    wait_until(lambda: on_disk("three") == texts(a), "A's turn on disk")
    with Chat(conversation="three", **named) as b:
        a.send("x").wait(TIMEOUT)
        b.send("y").wait(TIMEOUT)
    a.undo()  # after B's turn: A's end moves back, under B's
    a.close()
    with Chat(conversation="three", **named) as again:
        assert texts(again) == ["a", *first]
        assert len(again.branches()) == 2
        again.checkout(1)
    with Chat(conversation="three", **named) as last:  # a checkout is a write too
        assert texts(last)[::2] == ["a", "y"]


def write_rows(path: Path, rows: list[StoredMessage]) -> ConversationStore:
    store = ConversationStore(path)
    stored = store.open("rows", system=None, model=None)
    store.write(stored.id, stored.epoch, rows, system=None, model=None)
    return store


def test_replies_to_one_message_load_in_the_order_they_were_made(tmp_path: Path) -> None:
    answer = {"role": "assistant", "finish": "stop", "path": False}
    rows = [  # the retried reply's id sorts first, and both sit at one place
        StoredMessage("m-u", 1.0, "s", 0, {"role": "user", "content": "hi", "created_at": 1.0}),
        StoredMessage("m-z", 1.0, "s", 1, answer | {"content": "first", "created_at": 2.0}),
        StoredMessage("m-a", 1.0, "s", 1, answer | {"content": "again", "created_at": 3.0}),
    ]
    for row, parent, branch in zip(rows, [None, "m-u", "m-u"], [0, 0, 1], strict=True):
        row.data.update(id=row.id, parent=parent, branch=branch, path=row.id != "m-z")
    store = write_rows(tmp_path / "store.sqlite3", rows)
    try:
        loaded = store.load("rows")
    finally:
        store.close()
    assert loaded is not None
    t = loaded.transcript
    assert [m.id for m in t.children(t.node("m-u"))] == ["m-z", "m-a"]
    assert [(b.branch, b.leaf) for b in t.branches()] == [(0, "m-z"), (1, "m-a")]
    assert contents(t) == ["hi", "again"]


def test_rows_from_before_branches_and_rows_whose_parent_is_gone_are_one_line(
    tmp_path: Path,
) -> None:
    def row(row_id: str, anchor: float, source: str, data: dict[str, Any]) -> StoredMessage:
        return StoredMessage(row_id, anchor, source, 0, {"created_at": anchor} | data)

    old = {"role": "user", "turn": 1}  # as written before branches: no id, parent, path
    rows = [  # two kernels' turns, before branches
        row("r1", 1.0, "k1", old | {"content": "one"}),
        row("r2", 2.0, "k2", old | {"content": "two"}),
        # after: a turn of this version, one whose parent is gone, one off the path
        row("r3", 3.0, "k3", {"role": "user", "content": "three", "id": "r3", "parent": "r2"}),
        row("r4", 4.0, "k3", {"role": "user", "content": "four", "id": "r4", "parent": "m-x"}),
        row("r5", 5.0, "k3", {"role": "user", "content": "five", "id": "r5", "parent": "r1"}),
    ]
    for r in rows[2:]:
        r.data["path"] = r.id != "r5"
    store = write_rows(tmp_path / "store.sqlite3", rows)
    try:
        loaded = store.load("rows")
    finally:
        store.close()
    assert loaded is not None
    t = loaded.transcript
    assert [(m.id, m.parent) for m in t.tree()] == [
        ("r1", None),
        ("r2", "r1"),
        ("r3", "r2"),
        ("r4", "r2"),  # after the line's row before it
        ("r5", "r1"),
    ]
    assert contents(t) == ["one", "two", "four"]  # the path's ends, at once: the later


def test_a_deep_branch_off_the_path_loads_whole() -> None:
    rows = [("m-0", {"role": "user", "content": "x", "id": "m-0", "parent": None, "path": True})]
    for i in range(1, 20_001):
        data = {"role": "user", "content": "x", "id": f"m-{i}", "parent": f"m-{i - 1}"}
        rows.append((f"m-{i}", data | {"path": i == 1}))
    tree = _as_tree(rows)
    assert len(tree["messages"]) == 20_001
    assert tree["active"] == "m-1"


# --- retry and edit: what they send, and a stop before they run --------------------------


def test_a_retry_of_a_message_with_only_attachments_answers_it_again(
    chat: Chat, tmp_path: Path
) -> None:
    attached = [{"name": "df", "kind": "DataFrame", "summary": "", "text": "a b\n1 2"}]
    data = transcript_to_json(Transcript())
    data["messages"] = [
        {"role": "user", "content": "", "id": "m-u", "parent": None, "context": attached},
        {"role": "assistant", "content": "re", "id": "m-a", "parent": "m-u", "finish": "stop"},
    ]
    data["active"] = "m-a"
    path = tmp_path / "attachments-only.json"
    path.write_text(json.dumps(data))
    token = chat._conversation.connection.token
    with Chat.load(path, url=chat.url, token=token, tokens_per_s=0) as loaded:
        sent = loaded._conversation.transcript.messages[0].sent_content
        assert "a b\n1 2" in sent
        again = loaded.retry().wait(TIMEOUT)
        assert again.finish == "stop", again.error
        assert again.text == expected(sent)  # the attachment went with it
        assert loaded.messages[0]["id"] == "m-u"
        assert loaded.messages[1]["sibling_count"] == 2


def attached_names(chat: Chat) -> list[str]:
    return [a["name"] for a in chat.messages[0]["context"] or ()]


def test_an_edit_keeps_the_attachments_unless_its_text_changes_their_names(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, sales = pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"sales": [3]})
    namespace: dict[str, Any] = {"frame": frame, "df": frame, "sales": sales}
    monkeypatch.setattr(widget, "_user_namespace", lambda: (namespace, frozenset()))
    chat.send("look at this and @df", context=[frame]).wait(TIMEOUT)
    user_id, old = chat.messages[0]["id"], chat.messages[0]["context"]
    assert attached_names(chat) == ["frame"]  # one object, attached once
    namespace["frame"] = namespace["df"] = pd.DataFrame({"b": [9]})  # changed since
    command(chat, {"type": "edit", "id": user_id, "text": "look at this please, @df"})
    wait_until(lambda: chat.reply is None and len(chat.branches()) == 2, "the pane's edit")
    assert chat.messages[0]["content"] == "look at this please, @df"
    assert chat.messages[0]["context"] == old  # as it was sent, not as it is now
    sent = chat._conversation.transcript.messages[0].sent_content
    assert old[0]["text"] in sent
    assert chat.messages[1]["content"] == expected(sent)  # the model got it
    chat.edit(id=user_id, text="compare @sales").wait(TIMEOUT)  # @df dropped, @sales added
    assert attached_names(chat) == ["frame", "sales"]
    chat.edit(id=user_id, text="just @sales", context=[]).wait(TIMEOUT)  # context= replaces
    assert attached_names(chat) == ["sales"]


@pytest.mark.parametrize("change", ["retry", "edit"])
def test_a_retry_or_edit_stopped_before_it_runs_puts_the_branch_back(
    change: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(transcript_to_json(line("a", "b"))))
    # A gateway that never answers the opening handshake until the test says: the
    # chat's worker waits on it, so a reply queued meanwhile stays queued.
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/v1/chat"
    try:
        with Chat.load(path, url=url, token="t") as chat:
            wait_until(lambda: chat.status == "connecting", "the chat to be connecting")
            before = [m["id"] for m in chat.messages]
            if change == "retry":
                reply = chat.retry()
                assert texts(chat) == ["a", "re: a", "b"]  # moved at once
            else:
                reply = chat.edit(turn=2, text="B")
                assert texts(chat) == ["a", "re: a"]
            assert reply.stop().wait(TIMEOUT).finish == "stopped"
            pending, _ = listener.accept()
            pending.close()  # the handshake fails: the worker takes the stopped reply
            wait_until(lambda: [m["id"] for m in chat.messages] == before, "the branch back")
            conversation = chat._conversation
            wait_until(lambda: not conversation._queued, "the reply to leave the queue")
            assert not conversation._moved_from
            assert not conversation._again
            assert len(chat.branches()) == 1  # nothing was added
    finally:
        listener.close()
