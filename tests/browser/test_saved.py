"""The notebook as the record: the conversation is saved with the notebook, shows after
the kernel is gone, and converts with nbconvert."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ARTIFACTS, LabServer, Notebook
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]

THREE_TURNS = (
    "import json, os\n"
    "os.environ['NBCHAT_HOME'] = os.path.abspath('nbchat-home')  # the test's own store\n"
    "from nbchat import Chat\n"
    "chat = Chat(tokens_per_s=0, conversation='record')\n"
    "chat",
    "display(chat)  # a second view, where the chat is driven\n"
    'for question in ("alpha question", "beta question", "gamma question"):\n'
    "    chat.send(question).wait(30)\n"
    "json.dump([m['content'] for m in chat.messages], open('said.json', 'w'))",
)


def words(text: str) -> set[str]:
    """The words of a text, without code fences' language names (not shown as text)."""
    return set(re.findall(r"[A-Za-z0-9]{4,}", re.sub(r"```\w*", "", text)))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts)


def save(nb: Notebook, path: Path, needle: str) -> dict[str, object]:
    """Save from the page (Ctrl+S in command mode) until the file on disk has ``needle``."""
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        nb.cells().nth(0).locator(".jp-InputArea-prompt").click()
        nb.page.keyboard.press("Control+s")
        nb.page.wait_for_timeout(500)
        saved = json.loads(path.read_text())
        if needle in json.dumps(saved, ensure_ascii=False):
            return dict(saved)
        assert time.monotonic() < deadline, f"the saved notebook never had {needle!r}"


def shut_down_kernels(lab: LabServer) -> None:
    """End every session and its kernel, as closing the server or a crash would."""
    sessions = json.load(urllib.request.urlopen(f"{lab.url}/api/sessions?token={lab.token}"))
    for session in sessions:
        request = urllib.request.Request(
            f"{lab.url}/api/sessions/{session['id']}?token={lab.token}", method="DELETE"
        )
        urllib.request.urlopen(request)


def test_a_saved_notebook_shows_the_conversation_without_its_kernel_and_it_resumes(
    open_notebook: Opener, lab: LabServer
) -> None:
    nb = open_notebook(
        lab.notebook(
            "record.ipynb", *THREE_TURNS, 'print(chat.send("delta question").wait(30).text)'
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    said = json.loads((lab.root / "said.json").read_text())
    assert len(said) == 6
    live = nb.page.locator(".nbchat")
    live.first.locator('.nbchat-msg[data-role="assistant"]').nth(2).wait_for(state="attached")
    copy = nb.page.locator("[data-nbchat-saved]")
    copy.filter(has_text="gamma question").wait_for(state="attached", timeout=3 * MS)
    assert copy.count() == 2
    assert not any(copy.nth(i).is_visible() for i in range(2)), "a saved copy shows live"
    assert live.count() == 2
    assert live.first.is_visible()
    assert live.last.is_visible()

    saved = save(nb, lab.root / "record.ipynb", said[-1][:40])
    outputs = saved["cells"][0]["outputs"]  # type: ignore[index]
    kinds = [sorted(o.get("data", {})) for o in outputs]
    assert kinds == [
        ["application/vnd.jupyter.widget-view+json", "text/plain"],
        ["text/html", "text/plain"],
    ]
    second_view = saved["cells"][1]["outputs"]  # type: ignore[index]
    assert [sorted(o.get("data", {})) for o in second_view] == [
        ["application/vnd.jupyter.widget-view+json", "text/plain"],
        ["text/html", "text/plain"],  # a line pointing to the copy, not a second copy
    ]

    shut_down_kernels(lab)
    nb.page.reload()
    nb.wait_idle()
    copy.first.wait_for(state="visible", timeout=3 * MS)
    assert copy.count() == 2
    assert "another view of the chat" in copy.nth(1).inner_text()
    shown = copy.first.inner_text()
    assert "Saved copy" in shown
    assert "read-only" in shown
    for message in said:
        assert words(message) <= words(shown), f"missing from the saved copy: {message[:60]}"
    assert nb.page.locator(".nbchat").count() == 0  # no live pane: the kernel is new
    error = nb.page.get_by_text("Error displaying widget")
    assert error.count() == 0 or not error.first.is_visible()
    nb.page.screenshot(path=str(ARTIFACTS / "saved-copy-after-restart.png"), full_page=True)

    # Re-run with a new kernel: the named conversation is back in the pane, and the next
    # reply carries it (the demo model counts the turns and quotes the first message).
    nb.run_cell(0)
    live.first.wait_for(state="visible", timeout=3 * MS)
    restored = live.first.locator(".nbchat-msg")
    restored.nth(5).wait_for(state="attached", timeout=3 * MS)
    assert restored.count() == 6
    assert "gamma question" in restored.nth(4).inner_text()
    first_cell = nb.cells().nth(0).locator("[data-nbchat-saved]")
    assert first_cell.count() == 1
    assert not first_cell.is_visible()  # the new chat's copy, hidden while it is live
    nb.run_cell(2)
    nb.wait_output(2, "This is turn 4 of our conversation; it began with .alpha question.")

    for to in ("html", "markdown"):
        converted = subprocess.run(
            [sys.executable, "-m", "nbconvert", "--to", to, "--stdout", "record.ipynb"],
            cwd=lab.root,
            capture_output=True,
            text=True,
            check=True,
            timeout=6 * TIMEOUT,
        ).stdout
        text = html_text(converted) if to == "html" else converted
        for message in said:
            assert words(message) <= words(text), f"{to}: missing {message[:60]}"
