"""Tools in the pane: a call shown folded, and a confirm=True tool that runs only after
the user clicks Run. The model is a recorded tool-calling stream replayed locally."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import ARTIFACTS, LabServer, Notebook
from replay_server import Replay
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]
ANSWER = "Your best customers are Acme, Globex and Initech; the EU total is 1,250."


def test_a_confirm_tool_asks_in_the_pane_and_runs_only_after_run_is_clicked(
    open_notebook: Opener, lab: LabServer
) -> None:
    replay = Replay().start()
    try:
        nb = open_notebook(
            lab.notebook(
                "tools.ipynb",
                "from nbchat import Chat\n"
                "from nbchat.gateway import EmbeddedGateway, Gateway, ModelRoute\n"
                "from nbchat.gateway.providers.openai_compat import OpenAICompatProvider\n"
                f"provider = OpenAICompatProvider(base_url={replay.base_url!r}, api_key='k')\n"
                "gateway = EmbeddedGateway(Gateway(models={'gpt': ModelRoute(provider, "
                "'gpt-tools')})).start()\n"
                "ran = []\n"
                "chat = Chat(url=gateway.url, token=gateway.token, model='gpt')\n"
                "@chat.tool(confirm=True)\n"
                "def top_customers(n: int = 5) -> str:\n"
                '    """The n customers with the highest revenue."""\n'
                "    ran.append(n)\n"
                "    return 'Acme, Globex, Initech'\n"
                "@chat.tool\n"
                "def region_total(region: str) -> float:\n"
                '    """Total revenue of a region."""\n'
                "    return 1250.0\n"
                "chat",
                'reply = chat.send("who are my best customers?")',
                "print('ran', ran, reply.status)",
                "print('ran', ran, reply.wait(30).finish, reply.text)",
            )
        )
        nb.run_cell(0)
        nb.run_cell(1)
        pane = nb.page.locator(".nbchat").first
        ask = pane.locator(".nbchat-tool-ask")
        ask.wait_for(state="visible", timeout=3 * MS)
        assert "top_customers" in ask.inner_text()
        nb.run_cell(2)
        nb.wait_output(2, r"ran \[\] (streaming|pending)")  # asked, not run
        nb.page.screenshot(path=str(ARTIFACTS / "pane-tool-confirm.png"))
        ask.locator(".nbchat-tool-run").click()
        nb.run_cell(3)
        nb.wait_output(3, r"ran \[3\] stop " + ANSWER.split(";")[0])
        assert ask.count() == 0  # answered: the question is gone
        calls = pane.locator("details.nbchat-tool")
        assert calls.count() == 2  # both calls, folded
        assert all(calls.nth(i).get_attribute("open") is None for i in range(2))
        assert "top_customers" in calls.first.inner_text()
    finally:
        replay.close()
