"""Branches in the pane on the real page (JupyterLab, headless Chromium): Retry on the
last reply adds a second reply beside the first, the arrows switch between them, and
Edit on a user message sends a new version on a branch of its own. The model is a
Python function that numbers its answers, so each reply says which call made it, and
streams them a word at a time, so the pane can be seen mid-reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conftest import ARTIFACTS, LabServer, Notebook
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]

# A model whose every answer differs: "Answer 2 to: <the last user message>", streamed
# over about a second.
CHAT_CELL = (
    "import itertools, time\n"
    "from nbchat import Chat\n"
    "calls = itertools.count(1)\n"
    "def numbered(messages, **params):\n"
    "    answer = f\"Answer {next(calls)} to: {messages[-1]['content']}\"\n"
    "    for word in answer.split(' '):\n"
    "        time.sleep(0.2)\n"
    "        yield word + ' '\n"
    "chat = Chat(model=numbered)\n"
    "chat"
)


def pane(nb: Notebook) -> Any:
    return nb.page.locator(".nbchat").first


def messages(nb: Notebook) -> Any:
    return pane(nb).locator(".nbchat-msg")


def last_reply(nb: Notebook) -> Any:
    return pane(nb).locator('.nbchat-msg[data-role="assistant"]').last


def user_message(nb: Notebook) -> Any:
    return pane(nb).locator('.nbchat-msg[data-role="user"]').last


def wait_reply(nb: Notebook, text: str) -> None:
    """Until the last reply has ended saying ``text``, and its Retry is there."""
    reply = last_reply(nb)
    reply.and_(nb.page.locator('[data-status="done"]')).filter(has_text=text).wait_for(
        state="attached", timeout=3 * MS
    )
    reply.locator(".nbchat-reply-retry").wait_for(state="visible", timeout=MS)


def box(locator: Any) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, f"{locator} has no box"
    return dict(found)


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
    )


def position(message: Any) -> str:
    found = message.locator(".nbchat-sibling-pos")
    found.wait_for(state="visible", timeout=MS)
    return str(found.inner_text())


def wait_position(message: Any, text: str) -> None:
    message.locator(".nbchat-sibling-pos", has_text=text).wait_for(state="visible", timeout=3 * MS)


def test_retry_arrows_and_edit_make_and_switch_branches(
    open_notebook: Opener, lab: LabServer
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    nb = open_notebook(
        lab.notebook(
            "branches.ipynb",
            CHAT_CELL,
            "print('branches:', len(chat.branches()), '|', chat.messages[-1]['content'])",
        )
    )
    nb.run_cell(0)
    box = pane(nb).locator(".nbchat-input")
    box.fill("first question")
    box.press("Enter")
    wait_reply(nb, "Answer 1 to: first question")
    assert messages(nb).count() == 2
    assert pane(nb).locator(".nbchat-siblings").count() == 0  # one version of each: no arrows
    assert pane(nb).locator(".nbchat-reply-retry").count() == 1  # on the last reply only

    # Retry: a second reply, beside the first. While it streams, no branch action is
    # offered (the kernel would refuse it); once it ended, the arrows say 2/2.
    last_reply(nb).locator(".nbchat-reply-retry").click()
    last_reply(nb).and_(nb.page.locator('[data-status="streaming"]')).wait_for(
        state="attached", timeout=3 * MS
    )
    assert pane(nb).get_attribute("data-busy") is not None
    assert user_message(nb).locator(".nbchat-edit").is_hidden()
    assert pane(nb).locator(".nbchat-reply-retry").count() == 0
    wait_reply(nb, "Answer 2 to: first question")
    assert position(last_reply(nb)) == "2/2"
    assert messages(nb).count() == 2  # the first reply is on its own branch, not shown
    assert "Answer 1" not in pane(nb).locator(".nbchat-log").inner_text()
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-branches-retry.png"))

    # ◀: back to the first reply, 1/2, whose ◀ is now disabled; ▶ goes forward again.
    previous = last_reply(nb).locator('.nbchat-sibling[data-action="prev"]')
    previous.click()
    wait_position(last_reply(nb), "1/2")
    assert "Answer 1 to: first question" in last_reply(nb).inner_text()
    assert last_reply(nb).locator('.nbchat-sibling[data-action="prev"]').is_disabled()
    assert messages(nb).count() == 2
    # ▶ from the keyboard: the reply it brings has the focus on its ◀ (its ▶ is disabled).
    last_reply(nb).locator('.nbchat-sibling[data-action="next"]').focus()
    nb.page.keyboard.press("Enter")
    wait_position(last_reply(nb), "2/2")
    assert "Answer 2 to: first question" in last_reply(nb).inner_text()
    focused = last_reply(nb).locator('.nbchat-sibling[data-action="prev"]')
    assert focused.evaluate("el => el === document.activeElement")

    # Edit, then Escape: the message is as it was, and nothing was sent.
    question = user_message(nb)
    question.locator(".nbchat-edit").click()
    editor = question.locator("textarea.nbchat-edit-input")
    editor.wait_for(state="visible", timeout=MS)
    assert editor.input_value() == "first question"
    editor.press("Escape")
    editor.wait_for(state="detached", timeout=MS)
    assert question.locator(".nbchat-body").inner_text() == "first question"

    # Edit and Enter: a new version of the question, with its own reply, on a new branch.
    question.locator(".nbchat-edit").click()
    editor.fill("second question")
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-branches-editing.png"))
    editor.press("Enter")
    wait_reply(nb, "Answer 3 to: second question")
    assert user_message(nb).locator(".nbchat-body").inner_text() == "second question"
    assert position(user_message(nb)) == "2/2"
    assert last_reply(nb).locator(".nbchat-siblings").count() == 0  # the new reply is alone
    assert messages(nb).count() == 2
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-branches-edited.png"))

    # ◀ on the question: the first version, with the reply that branch ended on.
    user_message(nb).locator('.nbchat-sibling[data-action="prev"]').click()
    wait_position(user_message(nb), "1/2")
    assert user_message(nb).locator(".nbchat-body").inner_text() == "first question"
    wait_reply(nb, "Answer 2 to: first question")
    assert position(last_reply(nb)) == "2/2"

    # The kernel holds the same tree: three branches, the active one ending on answer 2.
    nb.run_cell(1)
    nb.wait_output(1, r"branches: 3 \| Answer 2 to: first question")


def test_branch_actions_in_the_dark_theme(open_notebook: Opener, lab: LabServer) -> None:
    """The arrows and the buttons take the theme's colours (screenshots in both), and
    fit a narrow pane."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = lab.notebook(
        "branches-theme.ipynb",
        CHAT_CELL.removesuffix("chat")
        + 'chat.send("a question").wait()\nchat.retry().wait()\nchat',
    )
    colours = {}
    try:
        for theme, file in (
            ("JupyterLab Light", "pane-branches-light.png"),
            ("JupyterLab Dark", "pane-branches-dark.png"),
        ):
            lab.set_theme(theme)
            nb = open_notebook(name)
            nb.run_cell(0)
            wait_reply(nb, "Answer 2 to: a question")
            assert position(last_reply(nb)) == "2/2"
            user_message(nb).locator(".nbchat-edit").click()
            user_message(nb).locator("textarea.nbchat-edit-input").wait_for(timeout=MS)
            pane(nb).screenshot(path=str(ARTIFACTS / file))
            retry = last_reply(nb).locator(".nbchat-reply-retry")
            colours[theme] = retry.evaluate(
                "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]"
            )
    finally:
        lab.set_theme("JupyterLab Light")
    light, dark = colours["JupyterLab Light"], colours["JupyterLab Dark"]
    assert light[0] != dark[0]  # its text colour
    assert light[1] != dark[1]  # and its background

    # In a narrow pane (a side panel) the actions stay inside it.
    pane(nb).evaluate("el => { el.parentElement.style.width = '300px'; }")
    nb.page.wait_for_timeout(200)
    outer = box(pane(nb))
    for action in (
        user_message(nb).locator(".nbchat-edit-save"),
        user_message(nb).locator(".nbchat-edit-cancel"),
        last_reply(nb).locator('.nbchat-sibling[data-action="prev"]'),
        last_reply(nb).locator('.nbchat-sibling[data-action="next"]'),
        last_reply(nb).locator(".nbchat-reply-retry"),
    ):
        assert inside(box(action), outer), f"{action} sticks out of a 300 px pane"
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-branches-narrow-300.png"))
