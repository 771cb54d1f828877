"""A long conversation in the pane, in JupyterLab in headless Chromium: 1,000 messages
open at the newest, with only those near the viewport in the DOM; an early one renders
when scrolled to, the reader's place holds while a reply arrives below, and Jump to
latest goes back to the newest, where a new reply streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import ARTIFACTS, LabServer, Notebook
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]

# 500 turns of varied shapes (paragraphs, a list, code), written as a version 1 file
# (one line, no message ids) and loaded back: the pane receives 1,000 messages at once.
LONG_CHAT = """\
import json
from nbchat import Chat
from nbchat.transcript import FORMAT

def answer(turn):
    if turn % 10 == 0:
        return f"Answer number {turn}, with code:\\n\\n```python\\nprint({turn})\\n```\\n"
    if turn % 3 == 0:
        return f"Answer number {turn}:\\n\\n- one\\n- two\\n- three\\n"
    return f"Answer number {turn}. " + "Some words to wrap. " * (turn % 7 * 6)

messages = []
for turn in range(1, 501):
    messages.append({"role": "user", "content": f"Question number {turn}", "turn": turn})
    messages.append({"role": "assistant", "content": answer(turn), "turn": turn,
                     "model": "demo", "finish": "stop", "reply_id": f"r{turn}",
                     "duration_s": 1.0})
with open("long-chat.json", "w") as f:
    json.dump({"format": FORMAT, "version": 1, "system": None,
               "messages": messages}, f)
chat = Chat.load("long-chat.json", tokens_per_s=40)
chat"""


def pane(nb: Notebook) -> Any:
    return nb.page.locator(".nbchat").first


def log(nb: Notebook) -> Any:
    return pane(nb).locator(".nbchat-log")


def message(nb: Notebook, text: str) -> Any:
    return pane(nb).locator(".nbchat-msg", has_text=text).first


def in_view(nb: Notebook, locator: Any) -> bool:
    """Whether ``locator`` shows inside the log's scrolled viewport."""
    return bool(
        locator.evaluate(
            """(el) => {
              const log = el.closest('.nbchat-log');
              const a = el.getBoundingClientRect(), b = log.getBoundingClientRect();
              return a.bottom > b.top && a.top < b.bottom && a.height > 0;
            }"""
        )
    )


def wait_in_view(nb: Notebook, text: str) -> None:
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        found = message(nb, text)
        if found.count() and in_view(nb, found):
            return
        assert time.monotonic() < deadline, f"{text!r} never showed in the log"
        time.sleep(0.05)


def rendered(nb: Notebook) -> int:
    return int(pane(nb).locator(".nbchat-msg").count())


def top_message(nb: Notebook) -> tuple[str, float]:
    """The first message showing at the top of the log, and its top's offset there."""
    found = log(nb).evaluate(
        """(log) => {
          const top = log.getBoundingClientRect().top;
          for (const el of log.querySelectorAll('.nbchat-msg')) {
            const box = el.getBoundingClientRect();
            if (box.bottom > top + 1)
              return [el.querySelector('.nbchat-body').textContent.slice(0, 40), box.top - top];
          }
          return null;
        }"""
    )
    assert found is not None, "no message shows in the log"
    return str(found[0]), float(found[1])


def settle(nb: Notebook) -> None:
    """Let layouts scheduled for the next frames run."""
    nb.page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r())))"
    )
    nb.page.wait_for_timeout(100)


def test_a_thousand_messages_open_scroll_and_stream(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "long.ipynb",
            LONG_CHAT,
            'reply = chat.send("Asked while you read above").wait(60)\n'
            'print("reply:", reply.finish)',
        )
    )
    began = time.monotonic()
    nb.run_cell(0)
    wait_in_view(nb, "Answer number 500")  # opens at the newest message
    opened_s = time.monotonic() - began
    print(f"1,000 messages: run to newest shown in {opened_s:.1f} s, {rendered(nb)} in the DOM")
    assert log(nb).get_attribute("data-virtual") is not None
    assert rendered(nb) < 100, f"{rendered(nb)} of 1,000 messages are in the DOM"
    assert message(nb, "Question number 1").count() == 0
    jump = pane(nb).locator(".nbchat-jump")
    assert not jump.is_visible()

    # Scrolled up by the wheel, a screenful at a time: messages fill the viewport each
    # time (no blank spacer shows once a frame has run).
    log_box = log(nb).bounding_box()
    assert log_box is not None
    nb.page.mouse.move(log_box["x"] + 100, log_box["y"] + 100)
    for _ in range(6):
        nb.page.mouse.wheel(0, -450)
        settle(nb)
        assert top_message(nb)[1] <= 8, "a gap above the first message shown"
    assert jump.is_visible()

    # An early message renders when scrolled to.
    log(nb).evaluate("el => { el.scrollTop = 0; }")
    wait_in_view(nb, "Question number 1")
    assert rendered(nb) < 100
    assert message(nb, "Answer number 500").count() == 0
    assert jump.is_visible()

    # Somewhere in the middle (a spacer until now): the place holds as the messages
    # there are measured, and while a reply arrives below.
    log(nb).evaluate("el => { el.scrollTop = el.scrollHeight / 2; }")
    settle(nb)
    here = top_message(nb)
    ARTIFACTS.mkdir(exist_ok=True)
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-long-middle.png"))
    assert here[0].startswith(("Question number", "Answer number")), here
    settle(nb)
    again = top_message(nb)
    assert again[0] == here[0]
    assert abs(again[1] - here[1]) <= 1, (here, again)
    nb.run_cell(1)
    nb.wait_output(1, "reply: stop")
    settle(nb)
    name, offset = top_message(nb)
    assert name == here[0]
    assert abs(offset - here[1]) <= 1, f"the place moved by {offset - here[1]:.0f} px"
    assert jump.is_visible()

    # Jump to latest: the reply that arrived meanwhile is there, at the bottom.
    jump.click()
    wait_in_view(nb, "Asked while you read above")
    assert not jump.is_visible()
    assert in_view(nb, pane(nb).locator('.nbchat-msg[data-role="assistant"]').last)

    # A new reply streams in at the bottom, followed as it grows.
    box = pane(nb).locator(".nbchat-input")
    box.fill("Hello at message one thousand")
    box.press("Enter")
    last = pane(nb).locator('.nbchat-msg[data-role="assistant"]').last
    streaming = last.and_(nb.page.locator('[data-status="streaming"]'))
    streaming.wait_for(state="attached", timeout=3 * MS)
    lengths = []
    deadline = time.monotonic() + 3 * TIMEOUT
    while len(set(lengths)) < 3:
        assert time.monotonic() < deadline, f"the reply did not grow: {lengths}"
        text = last.locator(".nbchat-body").inner_text()
        if text and (not lengths or len(text) > lengths[-1]):
            lengths.append(len(text))
            assert in_view(nb, last), "the reply in flight is not followed"
        time.sleep(0.05)
    last.and_(nb.page.locator('[data-status="done"]')).wait_for(state="attached", timeout=3 * MS)
    assert "You wrote: \u201cHello at message one thousand\u201d" in last.inner_text()
    assert in_view(nb, last)
    assert rendered(nb) < 100
