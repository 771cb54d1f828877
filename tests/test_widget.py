"""widget.py: what the Chat sends to its pane (traits and batched text), without a page."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import nbclient
import nbformat

from nbchat import Chat

from timeouts import TIMEOUT, wait_until


def test_a_paused_reply_sends_no_text_to_the_pane_until_resumed(chat: Chat) -> None:
    events: list[tuple[str, Any]] = []
    finals: list[str] = []
    chat._push = lambda message: (  # type: ignore[method-assign]
        events.append(("text", message["text"]))
        if message["type"] == "chunk"
        else finals.extend(r["content"] for r in message.get("records", ()) if r["finish"])
    )
    chat.observe(
        lambda change: events.append(("status", change["new"].get("status"))), names="active"
    )
    reply = chat.send("pause me, then go on", tokens_per_s=200)
    wait_until(lambda: len(reply.chunks) >= 5, "streaming")
    reply.pause()
    wait_until(lambda: reply.status == "paused", "paused")
    time.sleep(0.2)  # longer than a batch interval: a late batch would show up here
    reply.resume().wait(TIMEOUT)
    paused = events.index(("status", "paused"))
    resumed = events.index(("status", "streaming"), paused)
    assert not [e for e in events[paused:resumed] if e[0] == "text"]
    sent = "".join(text for kind, text in events if kind == "text")
    # Every character reached the pane once: streamed, the rest with the finished record
    # (pushed just after wait() returns).
    wait_until(lambda: bool(finals), "the finished record")
    assert finals[-1] == reply.text
    assert reply.text.startswith(sent)


def test_the_pane_gets_only_new_text_in_bounded_batches(chat: Chat) -> None:
    pushed: list[dict[str, Any]] = []
    chat._push = pushed.append  # type: ignore[method-assign]
    reply = chat.send("word " * 300).wait(TIMEOUT)  # tokens_per_s=0: as fast as it goes
    batches = [m for m in pushed if m["type"] == "chunk"]
    assert len(batches) < len(reply.chunks) / 5  # batched, not one message per token
    offset = 0
    for batch in batches:
        assert batch["offset"] == offset  # each batch starts where the last ended
        offset += len(batch["text"])
    assert reply.text.startswith("".join(batch["text"] for batch in batches))

    # What the batches had not carried yet comes with the finished record.
    def finished() -> list[dict[str, Any]]:
        return [
            m["records"][-1]
            for m in pushed
            if m["type"] == "transcript" and m["records"] and m["records"][-1]["finish"]
        ]

    wait_until(lambda: bool(finished()), "the finished record")
    final = finished()[-1]
    assert final["content"] == reply.text
    assert final["finish"] == "stop"


def test_a_finished_reply_sends_its_last_text_with_its_record(chat: Chat) -> None:
    pushed: list[tuple[bool, dict[str, Any]]] = []
    finishing = [False]
    chat._push = lambda message: pushed.append((finishing[0], message))  # type: ignore[method-assign]
    on_reply_status = chat._bridge.on_reply_status

    def spy(reply: Any) -> None:
        finishing[0] = reply.finished
        try:
            on_reply_status(reply)
        finally:
            finishing[0] = False

    chat._bridge.on_reply_status = spy  # type: ignore[method-assign]
    for i in range(10):
        reply = chat.send(f"turn {i}", tokens_per_s=400, max_tokens=60).wait(TIMEOUT)
        wait_until(
            lambda: any(
                m["type"] == "transcript" and m["records"][-1]["finish"] for _, m in pushed
            ),
            "the finished record",
        )
        text = "".join(m["text"] for _, m in pushed if m["type"] == "chunk")
        final = pushed[-1][1]
        assert final["type"] == "transcript"
        assert final["records"][-1]["content"] == reply.text
        assert reply.text.startswith(text)
        # The reply's end sends its record, not first the batch left over before it.
        assert not [m for ending, m in pushed if ending and m["type"] == "chunk"]
        pushed.clear()


def test_a_turn_sends_the_pane_only_the_messages_it_changed(chat: Chat) -> None:
    for i in range(30):
        chat.send(f"turn {i}").wait(TIMEOUT)
    pushed: list[dict[str, Any]] = []
    chat._push = pushed.append  # type: ignore[method-assign]
    chat.send("one more").wait(TIMEOUT)
    updates = [m for m in pushed if m["type"] == "transcript"]
    assert updates
    assert all(m["from"] >= 60 for m in updates)  # never the 60 earlier messages again
    assert sum(len(m["records"]) for m in updates) <= 4
    # What the pane assembles from them is the transcript.
    pane = [dict(r) for r in chat.messages[:60]]
    for m in updates:
        pane = pane[: m["from"]] + m["records"]
    assert pane == chat.messages
    # A view that has nothing gets all of it.
    chat._bridge.send_snapshot()
    assert any(
        m["type"] == "transcript" and m["from"] == 0 and m["records"] == chat.messages
        for m in pushed
    )


def test_the_repr_says_what_the_chat_is_not_where_it_lives(chat: Chat) -> None:
    chat.send("hello").wait(TIMEOUT)
    text = repr(chat)
    assert text.startswith("Chat(model='demo', turns=1, status=")
    assert "object at 0x" not in text


def test_in_terminal_ipython_showing_a_chat_prints_no_saved_copy() -> None:
    # The saved copy is for notebooks; a terminal would print it again at every turn.
    script = (
        "from nbchat import Chat\n"
        "chat = Chat(tokens_per_s=0)\n"
        "display(chat)\n"
        "chat.send('one').wait(30); chat.send('two').wait(30)\n"
        "import time; time.sleep(1.5)\n"
        "chat.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "-c", script],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "nbchat chat pane" not in done.stdout  # the live-pane text is for notebooks
    assert "Chat(model=" in done.stdout
    assert "Saved copy" not in done.stdout


def test_a_notebook_run_by_nbclient_keeps_one_copy_and_notes_elsewhere() -> None:
    # nbclient sends no cell ids: each execute request counts as its own cell.
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from nbchat import Chat\nchat = Chat(tokens_per_s=0)\nchat"),
        nbformat.v4.new_code_cell("chat.send('hello there').wait(30)\ndisplay(chat)"),
    ]
    nbclient.NotebookClient(notebook, timeout=int(6 * TIMEOUT), kernel_name="python3").execute()
    html = [
        [o["data"].get("text/html", "") for o in cell.outputs if "data" in o]
        for cell in notebook.cells
    ]
    assert sum("Saved copy" in h for cell in html for h in cell) == 1
    assert any("Saved copy" in h for h in html[0])
    assert any("another view of the chat" in h for h in html[1])


def test_turns_sent_one_after_another_update_the_saved_copy_once_they_pause(
    chat: Chat, monkeypatch: Any
) -> None:
    import IPython.display

    updates: list[tuple[float, str]] = []

    def update_display(bundle: dict[str, str], **_: Any) -> None:
        updates.append((time.monotonic(), bundle["text/plain"]))

    monkeypatch.setattr(IPython.display, "update_display", update_display)
    chat._saved.shown = True  # as _ipython_display_ does in a kernel
    began = time.monotonic()
    for i in range(25):  # about 6 s of turns, none a second apart
        chat.send(f"turn {i}", tokens_per_s=400, max_tokens=60).wait(TIMEOUT)
    ended = time.monotonic()
    wait_until(lambda: any("turn 24" in text for _, text in updates), "the last turn's copy")
    # Each copy is the whole conversation again: after the first turn's, at once, none
    # went while the turns kept coming (one a second before: 4 to 6 for these 25
    # turns; one more is allowed for a second's stall of a loaded machine).
    assert ended - began > 3
    during = [text for at, text in updates if at < ended]
    assert 1 <= len(during) <= 2
    assert "turn 0" in during[0]
    assert "turn 1" not in during[0]
    assert len(updates) <= 3
