"""conversation_store.py: named conversations kept in one SQLite file as they are made.

Real files in a temporary NBCHAT_HOME per test, and real processes for two kernels on
one name and for a kernel killed mid-reply. Each case the reverted first version
(29a54b8) got wrong has a test here that fails on it: two writers keep every message
(each kernel's turns a branch of their own, after the replies that kernel saw);
a delete while a chat is open never leaves only the later turns; a crash mid-reply
keeps the partial text; clear() empties the stored conversation; a bad file is a clear
error naming it.
"""

from __future__ import annotations

import inspect
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nbchat
from nbchat import Chat, ConversationStoreError
from nbchat.conversation import ConversationListener
from nbchat.conversation_store import (
    STREAM_WRITE_S,
    ConversationGone,
    ConversationRecorder,
    ConversationStore,
    StoredMessage,
    default_store_path,
)
from nbchat.gateway import EmbeddedGateway
from nbchat.gateway.providers.base import Request
from nbchat.gateway.providers.demo import demo_reply
from nbchat.protocol import ChatMessage
from nbchat.transcript import Transcript

from timeouts import TIMEOUT, wait_until


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test has a store of its own, never the user's."""
    path = tmp_path / "nbchat-home"
    monkeypatch.setenv("NBCHAT_HOME", str(path))
    return path


@pytest.fixture
def store_file(home: Path) -> Path:
    return home / "conversations.sqlite3"


@pytest.fixture
def args(embedded: EmbeddedGateway) -> dict[str, Any]:
    """Chat arguments for the test's own gateway, streaming fast."""
    return {"url": embedded.url, "token": embedded.token, "tokens_per_s": 0}


def expected(*history: str) -> str:
    """The demo model's reply to the given alternating user/assistant history."""
    roles = ["user", "assistant"] * len(history)
    messages = tuple(ChatMessage(r, t) for r, t in zip(roles, history, strict=False))  # type: ignore[arg-type]
    return demo_reply(Request(messages=messages, model="demo"))


def loaded(name: str) -> Transcript:
    """The conversation kept under ``name``, read afresh from the file (empty if none)."""
    store = ConversationStore()
    try:
        conversation = store.load(name)
    finally:
        store.close()
    return Transcript() if conversation is None else conversation.transcript


def stored(name: str) -> list[dict[str, Any]]:
    """The messages of the active branch kept under ``name``, read afresh ([] if none)."""
    return loaded(name).to_records()


def run(script: str, *argv: str) -> subprocess.Popen[str]:
    """``script`` in a new Python process (NBCHAT_HOME is inherited)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 6 * TIMEOUT) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"the process failed:\n{out}\n{err}"


# --- where the file is ------------------------------------------------------------


def test_the_file_is_in_nbchat_home_else_the_platform_data_directory() -> None:
    home = Path.home()
    assert default_store_path({"NBCHAT_HOME": "/x"}) == Path("/x/conversations.sqlite3")
    linux = default_store_path({"XDG_DATA_HOME": "/d"}, "linux")
    assert linux == Path("/d/nbchat/conversations.sqlite3")
    default = home / ".local/share/nbchat/conversations.sqlite3"
    assert default_store_path({}, "linux") == default
    assert default_store_path({"XDG_DATA_HOME": "relative"}, "linux") == default  # per XDG
    mac = home / "Library/Application Support/nbchat/conversations.sqlite3"
    assert default_store_path({}, "darwin") == mac
    windows = default_store_path({"LOCALAPPDATA": "/appdata"}, "win32")
    assert windows == Path("/appdata/nbchat/conversations.sqlite3")


# --- resuming -----------------------------------------------------------------------


def test_a_named_chat_resumes_its_history_system_prompt_and_model(
    args: dict[str, Any], store_file: Path
) -> None:
    with Chat(conversation="eda-churn", system="Be brief.", model="demo", **args) as chat:
        first = chat.send("first question").wait(TIMEOUT)
        chat.send("second question").wait(TIMEOUT)
        before = chat.messages
    assert store_file.exists()
    with Chat(conversation="eda-churn", **args) as again:  # as after a kernel restart
        assert again.conversation == "eda-churn"
        assert again.system == "Be brief."  # metadata of the conversation
        assert again.model == "demo"
        assert [(m["role"], m["content"]) for m in again.messages] == [
            (m["role"], m["content"]) for m in before
        ]
        assert before[1]["content"] == first.text
        reply = again.send("third question").wait(TIMEOUT)
        # The demo model's reply depends on the history: it was sent.
        assert "This is turn 3 of our conversation; it began with \u201cfirst question\u201d" in (
            reply.text
        )
    frame = nbchat.conversations()
    assert list(frame.columns) == ["name", "turns", "messages", "models", "created_at", "last_used"]
    row = frame.iloc[0]
    assert (row["name"], row["turns"], row["messages"], row["models"]) == (
        "eda-churn",
        3,
        6,
        "demo",
    )
    assert row["created_at"] <= row["last_used"]


def test_the_pane_gets_the_history_when_the_chat_is_made(args: dict[str, Any]) -> None:
    with Chat(conversation="shown", **args) as chat:
        chat.send("hello there").wait(TIMEOUT)
    pushed: list[dict[str, Any]] = []

    class Recording(Chat):
        def _push(self, message: dict[str, Any]) -> None:
            pushed.append(message)

    with Recording(conversation="shown", **args):
        transcripts = [m for m in pushed if m.get("type") == "transcript"]
        assert transcripts, "no transcript was sent to the pane"
        contents = [r["content"] for r in transcripts[-1]["records"]]
        assert contents[0] == "hello there"
        assert len(contents) == 2


def test_conversations_lists_newest_first_and_unnamed_chats_are_not_kept(
    args: dict[str, Any], store_file: Path
) -> None:
    with Chat(**args) as unnamed:
        unnamed.send("nothing to keep").wait(TIMEOUT)
    assert not store_file.exists()
    assert nbchat.conversations().empty
    for name in ("older", "newer"):
        with Chat(conversation=name, **args) as chat:
            chat.send(f"in {name}").wait(TIMEOUT)
        time.sleep(0.01)
    assert list(nbchat.conversations()["name"]) == ["newer", "older"]


def test_bad_names_and_unknown_names_are_clear_errors(args: dict[str, Any]) -> None:
    for bad in ("", "   ", "x" * 300, "\udce9", " eda", "eda "):
        with pytest.raises(ValueError, match="conversation name"):
            Chat(conversation=bad, **args)
    with pytest.raises(KeyError, match="no conversation named 'nope'"):
        nbchat.delete_conversation("nope")


# --- case 1: two writers on one name --------------------------------------------------

TWO_KERNELS = """
    import sys, time
    from pathlib import Path
    from nbchat import Chat
    tag, go = sys.argv[1], Path(sys.argv[2])
    with Chat(conversation="shared", tokens_per_s=150) as chat:
        Path(f"{go}.{tag}").touch()  # ready: the conversation is open
        while not go.exists():
            time.sleep(0.005)
        for i in range(4):
            reply = chat.send(f"{tag} question {i}").wait(60)
            assert reply.finish == "stop", reply.error
"""


def test_two_processes_writing_one_conversation_keep_every_message(
    args: dict[str, Any], tmp_path: Path, store_file: Path
) -> None:
    with Chat(conversation="shared", **args) as chat:  # both kernels resume this turn
        chat.send("seed question").wait(TIMEOUT)
    go = tmp_path / "go"
    kernels = [run(TWO_KERNELS, tag, str(go)) for tag in ("a", "b")]
    wait_until(lambda: all(Path(f"{go}.{t}").exists() for t in "ab"), "both kernels", 6 * TIMEOUT)
    go.touch()  # both write at once, replies streaming (written about once a second)
    for kernel in kernels:
        finished(kernel)
    db = sqlite3.connect(store_file)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    transcript = loaded("shared")
    # Each kernel's transcript held 10 messages, 2 of them shared: every one is kept.
    assert len(transcript.tree()) == 2 + 2 * 8
    # Each kernel's turns follow the replies it saw: a branch each, from the seed's
    # reply. The demo's reply is a function of the history it was sent, so each reply
    # matching its branch proves the branch is what that kernel sent.
    branches = transcript.branches()
    assert [b.turns for b in branches] == [5, 5]
    lines = {}
    for branch in branches:
        path = transcript.path_to(transcript.node(branch.leaf))
        history = [m.content for m in path]
        lines[history[2][0]] = history
        assert history[0] == "seed question"
        for n in range(1, len(history), 2):
            assert history[n] == expected(*history[:n])
        assert [m.turn for m in path[::2]] == [1, 2, 3, 4, 5]  # numbered along the branch
        assert {m.finish for m in path[1::2]} == {"stop"}
    for tag in "ab":
        assert lines[tag][2::2] == [f"{tag} question {i}" for i in range(4)]
    # The active branch is the one whose end was written last.
    db = sqlite3.connect(store_file)
    written = dict(db.execute("SELECT id, updated_at FROM messages").fetchall())
    db.close()
    assert written[transcript.messages[-1].id] == max(written[b.leaf] for b in branches)


LAST_WRITER = """
    import sys
    from nbchat.conversation_store import ConversationStore, StoredMessage
    tag = sys.argv[1]
    store = ConversationStore()
    shared = store.open("race", system=None, model=None)
    for round in range(60):
        rows = [
            StoredMessage(f"m{i}", float(i), "s", i,
                          {"role": "user", "content": f"{tag} {round} {i}", "turn": i + 1})
            for i in range(10)
        ]
        store.write(shared.id, shared.epoch, rows, system=None, model=None)
"""


def test_two_processes_writing_the_same_messages_the_last_writer_wins_whole() -> None:
    ConversationStore().close()  # the schema, before both start
    writers = [run(LAST_WRITER, tag) for tag in ("a", "b")]
    for writer in writers:
        finished(writer)
    messages = stored("race")
    assert len(messages) == 10
    for i, message in enumerate(messages):  # each is one writer's last round, never a mix
        tag, round_, index = message["content"].split()
        assert tag in ("a", "b")
        assert (round_, index) == ("59", str(i))


# --- case 2: delete while a chat is open -------------------------------------------


def test_delete_while_open_stops_the_chat_saving_and_says_so(args: dict[str, Any]) -> None:
    with Chat(conversation="doomed", **args) as chat:
        chat.send("first question").wait(TIMEOUT)
        chat.send("second question").wait(TIMEOUT)
        nbchat.delete_conversation("doomed")
        wait_until(lambda: "no longer saved" in chat.error, "the chat to say so")
        assert "deleted" in chat.error
        assert not chat.saving
        reply = chat.send("third question").wait(TIMEOUT)
        assert "turn 3" in reply.text  # the chat itself goes on with all it holds
        assert len(chat.messages) == 6
    # The later turn was not written back alone: the conversation stays deleted.
    assert stored("doomed") == []
    assert "doomed" not in set(nbchat.conversations()["name"])


DELETE = "import nbchat; nbchat.delete_conversation('doomed')"


def test_a_delete_by_another_process_is_found_at_the_next_write(args: dict[str, Any]) -> None:
    with Chat(conversation="doomed", **args) as old:
        old.send("first question").wait(TIMEOUT)
        finished(run(DELETE))
        assert stored("doomed") == []
        with Chat(conversation="doomed", **args) as new:  # a new one of the same name
            new.send("a new start").wait(TIMEOUT)
            old.send("second question").wait(TIMEOUT)
            wait_until(lambda: "deleted" in old.error, "the old chat to say so")
            assert not old.saving
            assert new.saving
            new.send("still new").wait(TIMEOUT)
    # The new conversation holds its own turns only, never the old chat's.
    assert [m["content"] for m in stored("doomed") if m["role"] == "user"] == [
        "a new start",
        "still new",
    ]


# --- case 3: a crash mid-reply -------------------------------------------------------

CRASH = """
    import sys, time
    from nbchat import Chat
    chat = Chat(conversation="crash", tokens_per_s=0)
    chat.send("first question").wait(30)
    chat.send(sys.argv[1], tokens_per_s=float(sys.argv[2]))
    time.sleep(600)  # killed while the reply streams
"""
LONG = "tell me everything about churn " * 12


def test_a_process_killed_mid_reply_leaves_the_partial_text_as_a_stopped_reply(
    args: dict[str, Any],
) -> None:
    kernel = run(CRASH, LONG, "15")
    try:

        def partial() -> str:
            messages = stored("crash") if default_store_path().exists() else []
            return messages[3]["content"] if len(messages) == 4 else ""

        wait_until(lambda: len(partial()) > 0, "partial text in the store", 6 * TIMEOUT)
    finally:
        kernel.send_signal(signal.SIGKILL)
        kernel.communicate(timeout=TIMEOUT)
    assert kernel.returncode == -signal.SIGKILL
    with Chat(conversation="crash", **args) as chat:
        messages = chat.messages
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        first, cut = messages[1]["content"], messages[3]
        assert cut["finish"] == "stopped"  # it can only have stopped there
        full = expected("first question", first, LONG)
        assert 0 < len(cut["content"]) < len(full)
        assert full.startswith(cut["content"])
        reply = chat.send("what now?").wait(TIMEOUT)
        # The partial reply is part of the history sent with the next message.
        assert reply.text == expected("first question", first, LONG, cut["content"], "what now?")


def test_a_streaming_reply_is_written_about_once_a_second_off_the_loop_thread(
    args: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[float, str, str]] = []
    write = ConversationStore.write

    def counting(self: ConversationStore, *a: Any, **kw: Any) -> None:
        rows = a[2]
        text = next((r.data["content"] for r in rows if r.data["role"] == "assistant"), "")
        writes.append((time.monotonic(), threading.current_thread().name, text))
        write(self, *a, **kw)

    monkeypatch.setattr(ConversationStore, "write", counting)
    with Chat(conversation="paced", **args) as chat:
        started = time.monotonic()
        reply = chat.send(LONG, tokens_per_s=40).wait(6 * TIMEOUT)
        took = time.monotonic() - started
        assert len(reply.chunks) > 80  # many tokens ...
    assert all(name.startswith("nbchat-store") for _, name, _ in writes)
    # ... but writes at the turn's start and end and about once a second between.
    assert len(writes) <= took / STREAM_WRITE_S + 3
    growing = [text for _, _, text in writes if 0 < len(text) < len(reply.text)]
    assert len(growing) >= int(took / STREAM_WRITE_S) - 1
    assert writes[-1][2] == reply.text


# --- case 4: clear() -----------------------------------------------------------------


def test_clear_empties_the_stored_conversation_and_other_chats_on_it_stop(
    args: dict[str, Any],
) -> None:
    with Chat(conversation="c", system="Be brief.", **args) as chat:
        chat.send("before clear").wait(TIMEOUT)
        with Chat(conversation="c", **args) as other:  # a second chat on the name
            assert len(other.messages) == 2
            chat.clear()
            assert stored("c") == []  # done when clear() returns
            row = nbchat.conversations().iloc[0]
            assert (row["name"], row["turns"], row["messages"]) == ("c", 0, 0)
            wait_until(lambda: "cleared by another chat" in other.error, "the other to say so")
            chat.send("after clear").wait(TIMEOUT)
            other.send("from the other").wait(TIMEOUT)  # not written: it stopped saving
            assert not other.saving
            assert chat.saving
    assert [m["content"] for m in stored("c") if m["role"] == "user"] == ["after clear"]
    with Chat(conversation="c", **args) as again:
        assert again.system == "Be brief."  # clear keeps the conversation's metadata
        reply = again.send("next").wait(TIMEOUT)
        assert "turn 2 of our conversation; it began with \u201cafter clear\u201d" in reply.text


def test_a_stale_epoch_writes_nothing(store_file: Path) -> None:
    store = ConversationStore(store_file)
    conversation = store.open("e", system=None, model=None)
    row = StoredMessage("m1", 1.0, "s", 0, {"role": "user", "content": "hi", "turn": 1})
    store.write(conversation.id, conversation.epoch, [row], system=None, model=None)
    store.clear(conversation.id, conversation.epoch)
    with pytest.raises(ConversationGone, match="cleared"):
        store.write(conversation.id, conversation.epoch, [row], system=None, model=None)
    store.delete("e")
    with pytest.raises(ConversationGone, match="deleted"):
        store.write(conversation.id, conversation.epoch, [row], system=None, model=None)
    store.close()
    assert stored("e") == []


# --- case 5: a bad file --------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("garbage", "cannot read it"),
        ("newer", "newer nbchat \\(schema version 2; this one reads version 1\\)"),
        ("directory", "cannot open it"),
        ("foreign", "not nbchat's"),
    ],
)
def test_a_bad_store_file_is_a_clear_error_naming_it(
    args: dict[str, Any], store_file: Path, damage: str, said: str
) -> None:
    store_file.parent.mkdir(parents=True)
    if damage == "garbage":
        store_file.write_bytes(b"this is not a database, just text\n" * 200)
    elif damage == "directory":
        store_file.mkdir()
    else:
        db = sqlite3.connect(store_file)
        if damage == "newer":
            db.execute("PRAGMA user_version = 2")
        else:
            db.execute("CREATE TABLE notes (text TEXT)")
        db.commit()
        db.close()
    for action in (
        lambda: Chat(conversation="x", **args),
        nbchat.conversations,
        lambda: nbchat.delete_conversation("x"),
    ):
        with pytest.raises(ConversationStoreError, match=said) as caught:
            action()
        assert str(store_file) in str(caught.value)
        assert "NBCHAT_HOME" in str(caught.value)  # what to do about it


def test_an_unreadable_message_is_an_error_naming_the_conversation(
    args: dict[str, Any], store_file: Path
) -> None:
    with Chat(conversation="damaged", **args) as chat:
        chat.send("hello").wait(TIMEOUT)
    db = sqlite3.connect(store_file)
    db.execute("UPDATE messages SET data = '{\"role\": \"wizard\"}' WHERE role = 'user'")
    db.commit()
    db.close()
    with pytest.raises(ConversationStoreError, match="'damaged' holds a message") as caught:
        Chat(conversation="damaged", **args)
    assert str(store_file) in str(caught.value)


def test_a_write_that_fails_is_reported_and_tried_again(
    args: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    write = ConversationStore.write
    failing = [True]

    def flaky(self: ConversationStore, *a: Any, **kw: Any) -> None:
        if failing[0]:
            raise ConversationStoreError("disk full (simulated)")
        write(self, *a, **kw)

    with Chat(conversation="flaky", **args) as chat:
        monkeypatch.setattr(ConversationStore, "write", flaky)
        reply = chat.send("will it keep?").wait(TIMEOUT)
        wait_until(lambda: "disk full" in chat.error, "the failure to show")
        assert chat.saving  # it will try again
        failing[0] = False
        wait_until(lambda: len(stored("flaky")) == 2, "the write to be tried again")
        wait_until(lambda: chat.error == "", "the error to clear")
    assert [m["content"] for m in stored("flaky")] == ["will it keep?", reply.text]


# --- the recorder passes every hook on ----------------------------------------------


def test_the_recorder_passes_every_listener_hook_on() -> None:
    hooks = {
        name
        for name, _ in inspect.getmembers(ConversationListener, inspect.isfunction)
        if name.startswith("on_")
    }
    overridden = {name for name in hooks if name in vars(ConversationRecorder)}
    assert overridden == hooks, "a new hook would stop at the recorder: forward it"


def test_the_store_module_does_not_import_the_widget() -> None:
    source = Path(inspect.getfile(ConversationStore)).read_text(encoding="utf-8")
    assert "widget" not in {
        line.split()[1].lstrip(".")
        for line in source.splitlines()
        if line.startswith(("from .", "import ."))
    }


def test_loading_into_a_name_that_has_a_history_is_refused_and_mixes_nothing(
    args: dict[str, Any], tmp_path: Path
) -> None:
    with Chat(conversation="kept", **args) as chat:
        chat.send("first").wait(TIMEOUT)
        chat.send("second").wait(TIMEOUT)
        frame = chat.to_dataframe()
        path = chat.save(tmp_path / "kept.json")
    before = stored("kept")
    with pytest.raises(ValueError, match="exists already, with 2 turns"):
        Chat.load(path, conversation="kept", **args)
    with pytest.raises(ValueError, match="delete_conversation"):
        Chat.from_dataframe(frame.iloc[:2], conversation="kept", **args)
    assert stored("kept") == before  # not a message added: before, each load doubled it
    with Chat.load(path, conversation="copy", **args) as copy:  # a new name is fine
        assert len(copy.messages) == 4
    wait_until(lambda: len(stored("copy")) == 4, "the loaded copy on disk")


def test_a_chat_that_fails_to_start_lets_its_store_go(
    args: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gateway() -> None:
        raise OSError("no port free")

    monkeypatch.setattr("nbchat.widget.shared_gateway", no_gateway)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(OSError, match="no port free"):
        Chat(conversation="doomed", tokens_per_s=0)  # no url: the embedded gateway
    left = {t.name for t in threading.enumerate()} - before
    assert not [name for name in left if name.startswith("nbchat-store")]
