"""Kernel variables as context on the real page: `@df` typed in the pane's input box
attaches the notebook's DataFrame, the pane shows its chip, and the demo model's reply
proves the context reached it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import LabServer, Notebook
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]


def test_at_name_in_the_pane_attaches_the_dataframe(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "context.ipynb",
            "import pandas as pd\n"
            "df = pd.DataFrame({'region': ['north', None, 'south'], 'sales': [10, 20, 30]})",
            "from nbchat import Chat\nchat = Chat(model='demo', tokens_per_s=0)\nchat",
            "print('context:', [(a['name'], a['kind']) for a in chat.messages[0]['context']])",
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    pane = nb.page.locator(".nbchat").first
    box = pane.locator(".nbchat-input")
    box.fill("what is in @df?")
    box.press("Enter")

    user = pane.locator('.nbchat-msg[data-role="user"]').last
    chip = user.locator(".nbchat-chip")
    chip.wait_for(state="attached", timeout=3 * MS)
    assert chip.count() == 1
    assert chip.locator(".nbchat-chip-name").inner_text() == "@df"
    assert chip.locator(".nbchat-chip-kind").inner_text() == "DataFrame, 3 rows × 2 columns"
    assert user.locator(".nbchat-body").inner_text() == "what is in @df?"  # the user's text

    # The chip opens a preview of what the model received: shape, nulls, the rows.
    chip.locator("summary").click()
    preview = chip.locator(".nbchat-chip-preview")
    preview.wait_for(state="visible", timeout=MS)
    text = preview.inner_text()
    assert "DataFrame: 3 rows × 2 columns" in text
    assert "region:" in text
    assert "1 null" in text
    assert "| 2 | south | 30 |" in text

    reply = pane.locator('.nbchat-msg[data-role="assistant"]').last
    reply.and_(nb.page.locator('[data-status="done"]')).wait_for(state="attached", timeout=3 * MS)
    answer = reply.locator(".nbchat-body").inner_text()
    assert "You wrote: \u201cwhat is in @df?\u201d" in answer
    assert "Attached: df (DataFrame, 3 rows × 2 columns)." in answer  # the model got it

    nb.run_cell(2)
    nb.wait_output(2, r"context: \[\('df', 'DataFrame'\)\]")  # and the transcript keeps it
