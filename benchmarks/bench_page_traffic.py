"""What a reply costs on the kernel's WebSocket to the page, with the saved copy kept in
the notebook and without it.

JupyterLab in headless Chromium (Debian's /usr/bin/chromium) runs a chat on the demo
model and sends REPLIES replies from a cell; the page's kernel WebSocket frames are
counted by message type. The baseline, measured in the same run, is the same chat shown
as the bare pane (its widget output alone, as before the saved copy existed). The live
pane's own traffic (comm messages) must not change; the saved copy adds its display
updates, at most one a second.

Run: .venv/bin/python benchmarks/bench_page_traffic.py   (about 1 minute)
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# The browser tests' JupyterLab launcher (its conftest, not the suite's top one).
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "browser"))

from conftest import CHROMIUM, CHROMIUM_ARGS, LabServer, Notebook, running_lab

REPLIES = 10
TOKENS_PER_S = 300
SHOW = {
    "with saved copy": "chat",
    "bare pane (baseline)": "display(chat._repr_mimebundle_()[0], raw=True)",
}
_MSG_TYPE = re.compile(rb'"msg_type":\s*"(\w+)"')


def msg_type(payload: str | bytes) -> str:
    """The message type of a kernel WebSocket frame (the header comes first in both the
    JSON and the v1 binary framing)."""
    data = payload.encode() if isinstance(payload, str) else payload
    found = _MSG_TYPE.search(data)
    return found.group(1).decode() if found else "?"


def measure(
    browser: Any, lab: LabServer, name: str, show: str
) -> tuple[Counter[str], Counter[str]]:
    notebook = lab.notebook(
        f"{name.split()[0]}.ipynb",
        f"from IPython.display import display\nfrom nbchat import Chat\n"
        f"chat = Chat(tokens_per_s={TOKENS_PER_S})\n{show}",
        f"for i in range({REPLIES}):\n    chat.send(f'question {{i}}').wait(60)",
    )
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    counting = [False]

    def on_frame(payload: str | bytes) -> None:
        if counting[0]:
            kind = msg_type(payload)
            counts[kind] += 1
            sizes[kind] += len(payload)

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    page.goto(f"{lab.url}/lab/tree/{notebook}?reset&token={lab.token}")
    nb = Notebook(page, lab)
    nb.wait_idle()
    nb.run_cell(0)
    page.locator(".nbchat").first.wait_for(state="attached")
    time.sleep(1.0)
    counting[0] = True
    nb.run_cell(1)
    time.sleep(1.5)  # the last saved-copy update comes at most a second after the end
    counting[0] = False
    context.close()
    return counts, sizes


def main() -> None:
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory() as base,
        running_lab(Path(base)) as lab,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        results = {name: measure(browser, lab, name, show) for name, show in SHOW.items()}
        browser.close()
    print(f"{REPLIES} demo replies at {TOKENS_PER_S} tokens/s, per reply, frames to the page:")
    for name, (counts, sizes) in results.items():
        updates = counts["update_display_data"] + counts["display_data"]
        update_bytes = sizes["update_display_data"] + sizes["display_data"]
        print(
            f"  {name:22} comm {counts['comm_msg'] / REPLIES:6.1f} msgs "
            f"{sizes['comm_msg'] / REPLIES / 1000:7.1f} kB; display updates "
            f"{updates / REPLIES:4.1f} msgs {update_bytes / REPLIES / 1000:7.1f} kB; "
            f"all {sum(counts.values()) / REPLIES:6.1f} msgs "
            f"{sum(sizes.values()) / REPLIES / 1000:7.1f} kB"
        )
    (with_copy, _), (bare, _) = results.values()
    ratio = with_copy["comm_msg"] / max(1, bare["comm_msg"])
    print(f"  live pane's comm messages with the copy / without: {ratio:.2f}")
    print(json.dumps({name: dict(c) for name, (c, _) in results.items()}))


if __name__ == "__main__":
    main()
