"""store.py: named conversations on disk, resumed by name; two writers never corrupt
the file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import nbchat
from nbchat import Chat
from nbchat.gateway import EmbeddedGateway
from nbchat.store import ConversationStore, default_store_path
from nbchat.transcript import Transcript

from timeouts import TIMEOUT, wait_until


def two_turns() -> Transcript:
    t = Transcript(system="Be brief.")
    for i in range(2):
        t.add_user(f"question {i}", at=float(i))
        reply = t.add_assistant(reply_id=f"r{i}", model="demo", at=float(i))
        reply.content, reply.finish = f"answer {i}", "stop"
    return t


def test_the_default_path_follows_nbchat_home_then_xdg() -> None:
    assert default_store_path({"NBCHAT_HOME": "/x"}) == Path("/x/conversations.sqlite3")
    assert default_store_path({"XDG_DATA_HOME": "/d"}) == Path("/d/nbchat/conversations.sqlite3")


def test_save_load_update_and_delete(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    assert store.load("eda") is None
    t = two_turns()
    store.save("eda", t)
    assert store.load("eda").to_records() == t.to_records()  # type: ignore[union-attr]
    t.messages[-1].content = "answer 1, corrected"
    store.save("eda", t, start=3)  # only the last message changed
    assert store.load("eda").messages[-1].content == "answer 1, corrected"  # type: ignore[union-attr]
    t.messages = t.messages[:2]
    store.save("eda", t)
    assert len(store.load("eda").messages) == 2  # type: ignore[union-attr]
    [summary] = store.summaries()
    assert (summary["name"], summary["turns"], summary["models"]) == ("eda", 1, "demo")
    assert store.delete("eda") is True
    assert store.delete("eda") is False
    assert store.load("eda") is None


def test_a_named_chat_resumes_after_it_was_closed(embedded: EmbeddedGateway) -> None:
    args = {"url": embedded.url, "token": embedded.token, "tokens_per_s": 0}
    with Chat(conversation="churn", **args) as chat:
        chat.send("first question").wait(TIMEOUT)
        chat.send("second question").wait(TIMEOUT)
        stopped = chat.send("a long one " * 50, tokens_per_s=20)
        wait_until(lambda: len(stopped.chunks) >= 2, "streaming")
        stopped.stop().wait(TIMEOUT)
        partial = stopped.text
    with Chat(conversation="churn", **args) as again:  # as after a kernel restart
        assert [m["content"] for m in again.messages][:2] == [
            "first question",
            chat.messages[1]["content"],
        ]
        assert again.messages[-1]["finish"] == "stopped"
        assert again.messages[-1]["content"] == partial  # the partial text was kept
        reply = again.send("fourth question").wait(TIMEOUT)
        assert "This is turn 4 of our conversation; it began with “first question”." in reply.text
    frame = nbchat.conversations()
    assert list(frame["name"]) == ["churn"]
    assert frame["turns"].iloc[0] == 4
    assert nbchat.delete_conversation("churn")
    with Chat(conversation="churn", **args) as fresh:
        assert fresh.messages == []


def test_unnamed_chats_are_not_kept(chat: Chat) -> None:
    chat.send("nothing to keep").wait(TIMEOUT)
    assert nbchat.conversations().empty


WRITER = textwrap.dedent(
    """
    import sys
    from nbchat.store import ConversationStore
    from nbchat.transcript import Transcript
    store = ConversationStore(sys.argv[1])
    for round in range(40):
        t = Transcript()
        for i in range(10):
            t.add_user(f"{sys.argv[2]} {round} {i}", at=0.0)
        store.save("shared", t)
    """
)


def test_two_processes_writing_one_conversation_leave_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path)  # the schema, before both start
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("a", "b")
    ]
    assert [w.wait(6 * TIMEOUT) for w in writers] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    loaded = ConversationStore(path).load("shared")
    assert loaded is not None
    assert len(loaded.messages) == 10
    # Last writer wins per message: each one is some writer's last round, in place.
    for i, message in enumerate(loaded.messages):
        writer, round_, index = message.content.split()
        assert (writer in ("a", "b"), round_, index) == (True, "39", str(i))
