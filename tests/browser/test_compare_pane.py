"""The compare pane (``chat.compare``) in JupyterLab in headless Chromium: three models
stream side by side at once, Stop on one column ends it while the others go on, the
columns wrap on a narrow page, and both themes apply."""

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

# Three models: the demo at its own pace, and two Python functions streaming words.
SETUP = """\
import asyncio
from nbchat import Chat

async def hare(messages, **params):
    for i in range({hare}):
        await asyncio.sleep({pause})
        yield f"**hare** {{i}}. " if i % 20 == 0 else f"word{{i}} "

async def tortoise(messages, **params):
    yield "Slow and steady:\\n\\n"
    for i in range({tortoise}):
        await asyncio.sleep({pause} * 2)
        yield f"- step {{i}}\\n"

chat = Chat()
chat.send("hi", tokens_per_s=0).wait()
models = {{"demo": {{"tokens_per_s": {demo}}}, hare: {{}}, tortoise: {{}}}}
cmp = chat.compare("explain p-values", models)
cmp"""


def compare_pane(nb: Notebook) -> Any:
    return nb.page.locator(".nbchat-compare").first


def columns_state(nb: Notebook) -> list[dict[str, Any]]:
    """Each column's model, status and text length, read in one go."""
    result: list[dict[str, Any]] = compare_pane(nb).evaluate(
        """el => Array.from(el.querySelectorAll('.nbchat-compare-col'), (c) => ({
            model: c.querySelector('.nbchat-compare-model').textContent,
            status: c.dataset.status,
            length: c.querySelector('.nbchat-compare-text').textContent.length,
        }))"""
    )
    return result


def wait_for(nb: Notebook, predicate: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        state = columns_state(nb)
        if predicate(state):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {state}")
        time.sleep(0.05)


def test_three_models_stream_side_by_side_and_stop_ends_one_column(
    open_notebook: Opener, lab: LabServer
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    nb = open_notebook(
        lab.notebook(
            "compare.ipynb",
            SETUP.format(hare=600, tortoise=300, pause=0.02, demo=12),
            "cmp.stop()\ncmp.wait(30)\nprint(cmp.to_dataframe()[['model', 'finish']].to_string())",
        )
    )
    nb.run_cell(0)
    pane = compare_pane(nb)
    pane.wait_for(state="visible", timeout=3 * MS)
    assert pane.locator(".nbchat-compare-prompt").inner_text() == "explain p-values"
    # All three stream at once: at one moment, each is streaming and has text.
    wait_for(
        nb,
        lambda s: len(s) == 3 and all(c["status"] == "streaming" and c["length"] > 0 for c in s),
        "three columns streaming at once",
    )
    assert [c["model"] for c in columns_state(nb)] == ["demo", "hare", "tortoise"]

    # Stop the hare: it ends, keeping its text; the other two go on.
    hare = pane.locator(".nbchat-compare-col").nth(1)
    hare.locator(".nbchat-compare-stop").click()
    wait_for(nb, lambda s: s[1]["status"] == "stopped", "the hare stopped")
    stopped = columns_state(nb)
    assert stopped[0]["status"] == stopped[2]["status"] == "streaming"
    wait_for(
        nb,
        lambda s: s[0]["length"] > stopped[0]["length"] and s[2]["length"] > stopped[2]["length"],
        "the others still growing",
    )
    after = columns_state(nb)
    assert after[1]["length"] == stopped[1]["length"]  # the stopped column grows no more
    assert after[0]["status"] == after[2]["status"] == "streaming"
    assert hare.locator(".nbchat-compare-stop").is_disabled()
    assert "stopped" in hare.locator(".nbchat-compare-status").inner_text()
    assert hare.locator("strong").count() > 0  # its Markdown rendered
    pane.screenshot(path=str(ARTIFACTS / "compare-pane.png"))
    assert (ARTIFACTS / "compare-pane.png").stat().st_size > 10_000

    # Stop all from code: every column ends, and says so in its header and footer.
    nb.run_cell(1)
    nb.wait_output(1, r"demo\s+stopped.*hare\s+stopped.*tortoise\s+stopped")
    wait_for(nb, lambda s: all(c["status"] == "stopped" for c in s), "all stopped")
    assert pane.locator(".nbchat-compare-stop-all").is_disabled()
    assert "first token" in pane.locator(".nbchat-compare-footer").first.inner_text()


def test_the_pane_wraps_its_columns_when_narrow_and_follows_the_dark_theme(
    open_notebook: Opener, lab: LabServer
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    name = lab.notebook(
        "compare-dark.ipynb", SETUP.format(hare=60, tortoise=8, pause=0.005, demo=0)
    )
    backgrounds = {}
    try:
        for theme, file in (
            ("JupyterLab Light", None),
            ("JupyterLab Dark", "compare-pane-dark.png"),
        ):
            lab.set_theme(theme)
            nb = open_notebook(name)
            nb.run_cell(0)
            pane = compare_pane(nb)
            pane.wait_for(state="visible", timeout=3 * MS)
            wait_for(nb, lambda s: len(s) == 3 and all(c["status"] == "done" for c in s), "done")
            column = pane.locator(".nbchat-compare-col").first
            backgrounds[theme] = column.evaluate("el => getComputedStyle(el).backgroundColor")
            boxes = [pane.locator(".nbchat-compare-col").nth(i).bounding_box() for i in range(3)]
            assert len({round(b["y"]) for b in boxes}) == 1  # wide: side by side
            if file is not None:
                pane.screenshot(path=str(ARTIFACTS / file))
                assert (ARTIFACTS / file).stat().st_size > 10_000
            nb.page.set_viewport_size({"width": 560, "height": 1000})
            nb.page.wait_for_timeout(300)
            boxes = [pane.locator(".nbchat-compare-col").nth(i).bounding_box() for i in range(3)]
            assert len({round(b["x"]) for b in boxes}) == 1  # narrow: one under another
            assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
    finally:
        lab.set_theme("JupyterLab Light")
    assert backgrounds["JupyterLab Light"] != backgrounds["JupyterLab Dark"]


def test_continue_with_this_carries_the_answer_into_the_chats_pane(
    open_notebook: Opener, lab: LabServer
) -> None:
    nb = open_notebook(
        lab.notebook(
            "compare-pick.ipynb",
            "from nbchat import Chat\nchat = Chat()\nchat.send('hi', tokens_per_s=0).wait()\nchat",
            "def echo(messages, **params):\n"
            "    yield 'the picked answer to ' + messages[-1]['content']\n\n"
            "cmp = chat.compare('explain p-values', {'demo': {'tokens_per_s': 3}, echo: {}})\n"
            "cmp",
            "try:\n    cmp.pick('demo')\nexcept RuntimeError as exc:\n    print('refused:', exc)",
            "cmp.stop()\nprint(chat.model, [m['role'] for m in chat.messages])",
        )
    )
    nb.run_cell(0)
    chat = nb.page.locator(".nbchat:not(.nbchat-compare)").first
    chat.locator('.nbchat-msg[data-role="assistant"]').first.wait_for(timeout=3 * MS)
    nb.run_cell(1)
    pane = compare_pane(nb)
    wait_for(nb, lambda s: len(s) == 2 and s[1]["status"] == "done", "echo done")
    demo, echo = (pane.locator(".nbchat-compare-col").nth(i) for i in range(2))
    assert demo.locator(".nbchat-compare-pickbar").is_hidden()  # still streaming

    # A refusal from code shows in the pane as well.
    nb.run_cell(2)
    nb.wait_output(2, "refused: demo's reply is still streaming")
    refusal = pane.locator(".nbchat-compare-refusal")
    refusal.wait_for(state="visible", timeout=MS)
    assert "demo's reply is still streaming" in refusal.inner_text()

    # Continue with this: the chat's own pane gains the picked answer.
    echo.locator(".nbchat-compare-pick").click()
    answer = chat.locator('.nbchat-msg[data-role="assistant"]', has_text="the picked answer")
    answer.wait_for(timeout=3 * MS)
    assert "explain p-values" in answer.inner_text()
    chat.locator('.nbchat-msg[data-role="user"]', has_text="explain p-values").wait_for(timeout=MS)
    refusal.wait_for(state="hidden", timeout=MS)
    assert echo.locator(".nbchat-compare-pick").inner_text() == "Picked ✓"
    assert echo.locator(".nbchat-compare-pick").is_disabled()
    assert demo.locator(".nbchat-compare-pickbar").is_hidden()
    nb.run_cell(3)
    nb.wait_output(3, r"echo \['user', 'assistant', 'user', 'assistant'\]")
