"""What a first session with the pane runs into, in JupyterLab and Notebook 7 in
headless Chromium: the empty pane's example prompts, the model picker, Ctrl+S from the
input box, a narrow pane, and math."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import ARTIFACTS, LabServer, Notebook
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]

# The empty pane's example prompts (js/src/view.ts EXAMPLE_PROMPTS).
TABLE, CODE, MATH = (
    "Show me a table comparing Python, R and Julia",
    "Write Python code that counts the words in a file",
    "What is the formula for the variance of a sample?",
)


def pane(nb: Notebook, index: int = 0) -> Any:
    return nb.page.locator(".nbchat").nth(index)


def replies(nb: Notebook) -> Any:
    return pane(nb).locator('.nbchat-msg[data-role="assistant"]')


def wait_replies_done(nb: Notebook, count: int) -> None:
    nb.page.wait_for_function(
        "n => document.querySelectorAll("
        '\'.nbchat-msg[data-role="assistant"][data-status="done"]\').length >= n',
        arg=count,
        timeout=3 * MS,
    )


def box(locator: Any) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, f"{locator} has no box"
    return dict(found)


def intersects(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["y"] >= outer["y"] - 0.5
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5
    )


def saved_outputs(lab: LabServer, name: str) -> list[Any]:
    return list(json.loads((lab.root / name).read_text())["cells"][0]["outputs"])


def test_empty_pane_examples_and_the_picker_with_an_unlisted_model(
    open_notebook: Opener, lab: LabServer
) -> None:
    nb = open_notebook(
        lab.notebook(
            "first-use.ipynb",
            'from nbchat import Chat\nchat = Chat(model="my-model", tokens_per_s=0)\nchat',
            "print('model:', chat.model)",
        )
    )
    nb.run_cell(0)
    hint = pane(nb).locator(".nbchat-empty")
    hint.wait_for(timeout=MS)
    examples = hint.locator(".nbchat-example")
    assert examples.all_inner_texts() == [TABLE, CODE, MATH]

    # The picker shows the model in use though the gateway does not list it ...
    picker = pane(nb).locator(".nbchat-model")
    nb.page.wait_for_function(
        "el => el.options.length > 1", arg=picker.element_handle(), timeout=MS
    )
    assert picker.input_value() == "my-model"
    assert "demo" in picker.locator("option").all_inner_texts()
    # ... and choosing another entry switches to it, in the kernel too.
    picker.select_option("demo")
    nb.run_cell(1)
    nb.wait_output(1, "model: demo")
    assert picker.input_value() == "demo"

    ARTIFACTS.mkdir(exist_ok=True)
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-empty.png"))
    examples.first.click()  # sends it, like typing it and pressing Enter
    pane(nb).locator('.nbchat-msg[data-role="user"]', has_text=TABLE).wait_for(timeout=3 * MS)
    wait_replies_done(nb, 1)
    assert hint.count() == 0  # the hint goes once there is a message
    assert replies(nb).last.locator("table").count() == 1  # the demo model answers a table


def test_ctrl_s_in_the_input_box_saves_the_notebook(open_notebook: Opener, lab: LabServer) -> None:
    name = lab.notebook("save.ipynb", "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\nchat")
    nb = open_notebook(name)
    nb.run_cell(0)
    dirty = nb.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
    dirty.wait_for(state="attached", timeout=MS)  # the new output is not saved yet
    assert saved_outputs(lab, name) == []

    box_ = pane(nb).locator(".nbchat-input")
    box_.click()
    box_.press_sequentially("draft")
    box_.press("Shift+Enter")  # stays a new line in the box: the cell is not re-run
    box_.press("Control+s")
    dirty.wait_for(state="detached", timeout=MS)  # JupyterLab saved
    deadline = time.monotonic() + TIMEOUT
    while not saved_outputs(lab, name):
        assert time.monotonic() < deadline, "the notebook on disk has no output"
        time.sleep(0.1)
    assert box_.input_value() == "draft\n"  # the box kept its text, no "s" typed
    assert box_.evaluate("el => el === document.activeElement")
    prompt = nb.cells().nth(0).locator(".jp-InputArea-prompt").inner_text()
    assert prompt.strip() == "[1]:"


def test_ctrl_s_in_the_input_box_saves_in_notebook_7(open_notebook: Opener, lab: LabServer) -> None:
    # Notebook 7 takes shortcuts in the capture phase, before the box sees a key.
    name = lab.notebook("save7.ipynb", "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\nchat")
    nb = open_notebook(name, classic=True)
    nb.run_all()
    box_ = pane(nb).locator(".nbchat-input")
    box_.wait_for(timeout=3 * MS)
    assert saved_outputs(lab, name) == []
    box_.click()
    box_.press_sequentially("draft")
    box_.press("Control+s")
    deadline = time.monotonic() + 2 * TIMEOUT
    while not saved_outputs(lab, name):
        assert time.monotonic() < deadline, "Ctrl+S in the box did not save the notebook"
        time.sleep(0.1)
    assert box_.input_value() == "draft"


def test_a_300_px_pane_keeps_its_controls_usable_and_code_uncovered(
    open_notebook: Opener, lab: LabServer
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    nb = open_notebook(
        lab.notebook(
            "narrow.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\n"
            f"for prompt in {[CODE, MATH, TABLE]!r}:\n    chat.send(prompt).wait()\n"
            "chat.model = 'a-fine-tuned-model-with-a-rather-long-name-2026-12-03'\nchat",
        )
    )
    katex_requests: list[str] = []

    def record(request: Any) -> None:
        if "katex" in request.url.lower() and not request.url.startswith("data:"):
            katex_requests.append(request.url)

    nb.page.on("request", record)
    nb.run_cell(0)
    wait_replies_done(nb, 3)
    chat = pane(nb)
    chat.evaluate("el => { el.parentElement.style.width = '300px'; }")
    nb.page.wait_for_timeout(200)
    chat.scroll_into_view_if_needed()
    chat.locator(".nbchat-log").evaluate("el => { el.scrollTop = 0; }")
    chat.screenshot(path=str(ARTIFACTS / "pane-narrow-300.png"))

    outer = box(chat)
    assert outer["width"] <= 301
    controls = [".nbchat-send", ".nbchat-pause", ".nbchat-stop", ".nbchat-model", ".nbchat-clear"]
    field = box(chat.locator(".nbchat-input"))
    assert field["width"] >= 200, f"the input box is {field['width']} px wide"
    assert inside(field, outer)
    for selector in controls:
        control = box(chat.locator(selector))
        assert inside(control, outer), f"{selector} sticks out of the pane"
        assert not intersects(control, field), f"{selector} overlaps the input box"
    for a, b in itertools.pairwise(controls[:3]):
        assert not intersects(box(chat.locator(a)), box(chat.locator(b)))

    # The Copy button sits above the code, never on it.
    code_reply = replies(nb).first
    code_reply.scroll_into_view_if_needed()
    copy = box(code_reply.locator(".nbchat-copy").first)
    code = code_reply.locator("pre code").first
    text_boxes = code.evaluate(
        """el => { const r = document.createRange(); r.selectNodeContents(el);
                   return Array.from(r.getClientRects(), b =>
                     ({x: b.x, y: b.y, width: b.width, height: b.height})); }"""
    )
    assert text_boxes
    for line in text_boxes:
        assert not intersects(copy, line), "the Copy button covers code text"
    assert not intersects(copy, box(code_reply.locator("pre").first))
    code_reply.locator(".nbchat-code").first.screenshot(
        path=str(ARTIFACTS / "pane-narrow-300-code.png")
    )

    # Math is typeset by the bundled KaTeX, its fonts inlined: nothing was fetched.
    math_reply = replies(nb).nth(1)
    assert math_reply.locator(".katex").count() >= 3
    assert math_reply.locator(".katex-display").count() == 2
    assert "$" not in math_reply.locator(".katex-display").first.inner_text()
    loaded = nb.page.evaluate(
        """async () => { await document.fonts.ready;
             return Array.from(document.fonts).filter(f => f.status === 'loaded')
               .map(f => f.family.replace(/["']/g, '')); }"""
    )
    assert "KaTeX_Main" in loaded
    assert "KaTeX_Math" in loaded
    display, outer = box(math_reply.locator(".katex-display").first), box(chat)
    # A wide formula scrolls sideways inside the pane.
    assert outer["x"] <= display["x"] <= display["x"] + display["width"] <= outer["x"] + 300
    math_reply.scroll_into_view_if_needed()
    math_reply.screenshot(path=str(ARTIFACTS / "pane-narrow-300-math.png"))
    assert katex_requests == []

    # A table wider than the pane scrolls inside it.
    table_reply = replies(nb).last
    table_reply.scroll_into_view_if_needed()
    table, outer = box(table_reply.locator("table")), box(chat)
    assert outer["x"] <= table["x"] <= table["x"] + table["width"] <= outer["x"] + 300
    table_reply.screenshot(path=str(ARTIFACTS / "pane-narrow-300-table.png"))


def test_math_typed_in_the_pane_is_typeset_and_runs_no_script(
    open_notebook: Opener, lab: LabServer
) -> None:
    nb = open_notebook(
        lab.notebook("math.ipynb", "from nbchat import Chat\nchat = Chat(tokens_per_s=40)\nchat")
    )
    nb.run_cell(0)
    field = pane(nb).locator(".nbchat-input")
    # The demo model quotes each message back (up to 120 characters).
    field.fill(
        r"Say $e^{i\pi} + 1 = 0$, \(a^2 + b^2 = c^2\), $$\sum_k k$$, \[\sqrt{2}\];"
        r" it costs $5 and $10"
    )
    field.press("Enter")
    wait_replies_done(nb, 1)
    quoted = replies(nb).last.locator("p").first
    assert quoted.locator(".katex").count() == 4
    assert quoted.locator(".katex-display").count() == 2
    assert "it costs $5 and $10" in quoted.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    pane(nb).screenshot(path=str(ARTIFACTS / "pane-math.png"))

    field.fill(
        r"$\href{javascript:window.__nbchat_pwned=1}{x}$"
        r" $\htmlData{onclick=window.__nbchat_pwned=2}{y}$"
    )
    field.press("Enter")
    wait_replies_done(nb, 2)
    reply = replies(nb).last
    assert reply.locator("p").first.locator(".katex").count() == 2
    assert reply.locator("a").count() == 0
    names = reply.locator(".katex").evaluate_all(
        "els => els.flatMap(el => [el, ...el.querySelectorAll('*')])"
        ".flatMap(el => el.getAttributeNames())"
    )
    assert not [name for name in names if name.startswith(("on", "data-"))]
    for target in reply.locator(".katex").all():
        target.click()
    assert nb.page.evaluate("() => window.__nbchat_pwned") is None
