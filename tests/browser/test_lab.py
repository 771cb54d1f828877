"""The chat pane on the real page: JupyterLab (and Notebook 7) in headless Chromium,
with the kernel on the embedded demo gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbchat.gateway import EmbeddedGateway, Gateway

from conftest import ARTIFACTS, LabServer, Notebook
from faults import FaultyProxy
from replay_server import Replay
from timeouts import TIMEOUT

pytestmark = pytest.mark.browser
MS = int(TIMEOUT * 1000)

Opener = Callable[..., Notebook]


def pane(nb: Notebook, index: int = 0) -> Any:
    return nb.page.locator(".nbchat").nth(index)


def last_reply(nb: Notebook, index: int = 0) -> Any:
    return pane(nb, index).locator('.nbchat-msg[data-role="assistant"]').last


def reply_length(nb: Notebook, index: int = 0) -> int:
    return len(last_reply(nb, index).locator(".nbchat-body").inner_text())


def wait_status(nb: Notebook, status: str, index: int = 0) -> None:
    last_reply(nb, index).and_(nb.page.locator(f'[data-status="{status}"]')).wait_for(
        state="attached", timeout=3 * MS
    )


def wait_length_above(nb: Notebook, length: int, index: int = 0) -> int:
    deadline = time.monotonic() + 3 * TIMEOUT
    while (now := reply_length(nb, index)) <= length:
        assert time.monotonic() < deadline, f"the reply stayed at {now} characters"
        time.sleep(0.05)
    return now


def wait_user_message(nb: Notebook, text: str) -> None:
    pane(nb).locator('.nbchat-msg[data-role="user"]', has_text=text).first.wait_for(
        state="attached", timeout=3 * MS
    )


def test_quickstart_runs_and_a_typed_message_streams(open_notebook: Opener) -> None:
    nb = open_notebook("quickstart.ipynb")
    nb.run_all()
    last = nb.cells().count() - 1
    nb.wait_cell_done(last)
    assert nb.page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
    assert "first_token_s" in nb.output(last - 2)  # the DataFrame rendered
    assert "messages loaded from quickstart-chat.json" in nb.output(last)

    box = pane(nb).locator(".nbchat-input")
    box.fill("Hello from the browser")
    box.press("Enter")
    wait_user_message(nb, "Hello from the browser")
    wait_status(nb, "streaming")
    lengths = [wait_length_above(nb, 0)]
    for _ in range(2):  # seen at three increasing lengths while it streams
        lengths.append(wait_length_above(nb, lengths[-1]))
    assert lengths == sorted(lengths)
    assert len(set(lengths)) == 3
    wait_status(nb, "done")
    text = last_reply(nb).inner_text()
    assert "You wrote: \u201cHello from the browser\u201d" in text
    assert "it began with" in text  # the closing sentence: the reply arrived complete
    assert box.input_value() == ""


def test_stop_button_stops_a_reply_sent_from_a_cell(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "stop.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=20)\nchat",
            'reply = chat.send("Please stop me " * 30)',
            'print("finish:", reply.finish, "status:", reply.status)',
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    wait_user_message(nb, "Please stop me")  # chat.send() from a cell shows in the pane
    wait_length_above(nb, 60)
    pane(nb).locator(".nbchat-stop").click()
    wait_status(nb, "stopped")
    stopped_at = reply_length(nb)
    time.sleep(0.5)
    assert reply_length(nb) == stopped_at, "the reply grew after Stop"
    assert "stopped" in last_reply(nb).locator(".nbchat-meta").inner_text()
    assert pane(nb).locator(".nbchat-stop").is_disabled()
    nb.run_cell(2)
    nb.wait_output(2, "finish: stopped status: stopped")


def test_pause_holds_and_resume_completes_with_the_unpaused_text(
    open_notebook: Opener, lab: LabServer
) -> None:
    nb = open_notebook(
        lab.notebook(
            "pause.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=25)\nchat",
            'reply = chat.send("Pause me, please")',
            'print("kernel sees:", reply.status)',
            'ref = Chat(tokens_per_s=0).send("Pause me, please").wait()\n'
            'print("same text:", ref.text == reply.wait().text, reply.finish)',
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    wait_length_above(nb, 40)
    pause = pane(nb).locator(".nbchat-pause")
    pause.click()
    wait_status(nb, "paused")
    assert pause.inner_text() == "Resume"
    nb.run_cell(2)
    nb.wait_output(2, "kernel sees: paused")  # the click reached the kernel's Reply
    held = reply_length(nb)
    time.sleep(1.0)
    assert reply_length(nb) == held, "the reply grew while paused"
    pause.click()
    wait_status(nb, "done")
    nb.run_cell(3)
    nb.wait_output(3, "same text: True stop")


def test_html_in_a_reply_runs_no_script(open_notebook: Opener, lab: LabServer) -> None:
    payload = (
        '<img src=x onerror="window.__nbchat_pwned=1"> '
        "<script>window.__nbchat_pwned=2</script> "
        "[link](javascript:window.__nbchat_pwned=3)"
    )
    nb = open_notebook(
        lab.notebook(
            "xss.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\nchat",
            f"chat.send({payload!r}).wait().finish",
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    wait_status(nb, "done")
    time.sleep(0.5)  # time for an error handler to fire, were there an image
    assert nb.page.evaluate("() => window.__nbchat_pwned") is None
    chat = pane(nb)
    assert chat.locator(".nbchat-log img, .nbchat-log script").count() == 0
    text = last_reply(nb).inner_text()
    assert '<img src=x onerror="window.__nbchat_pwned=1">' in text  # shown as text
    assert "<script>" in last_reply(nb).locator("pre").inner_text()  # and in the code block
    for href in chat.locator(".nbchat-log a").evaluate_all("els => els.map(a => a.href)"):
        assert not href.startswith("javascript:")


def test_stop_click_ends_a_cell_blocked_in_wait(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "blocked.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=20)\nchat",
            'r = chat.send("A long question " * 40)\nr.wait()\nprint("returned:", r.finish)',
        )
    )
    nb.run_cell(0)
    nb.run_cell(1, wait=False)
    wait_length_above(nb, 40)
    pane(nb).locator(".nbchat-stop").click()
    nb.wait_output(1, "returned: stopped")
    wait_status(nb, "stopped")


def test_a_second_view_shown_mid_stream_catches_up(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "two-views.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=30)\nchat",
            'reply = chat.send("Two views of one chat")',
            "display(chat)",
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    wait_length_above(nb, 80)
    nb.run_cell(2)
    pane(nb, 1).wait_for(state="attached", timeout=MS)
    wait_status(nb, "done", 0)
    wait_status(nb, "done", 1)
    first, second = last_reply(nb, 0).inner_text(), last_reply(nb, 1).inner_text()
    assert first == second
    assert "Two views of one chat" in second


def test_a_full_log_keeps_its_height_and_follows_the_stream(
    open_notebook: Opener, lab: LabServer
) -> None:
    """Once the messages overflow the log it is fixed at its maximum and contained (a
    layout boundary, for speed): the stream must still be followed, and a Clear must
    give the log back its natural height."""
    nb = open_notebook(
        lab.notebook(
            "full-log.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\n"
            "for i in range(5):\n    chat.send(f'Filling the log, turn {i}').wait()\nchat",
            "chat.tokens_per_s = 40\nreply = chat.send('Stream into a full log')",
            "reply.wait()\nchat.clear()",
        )
    )
    nb.run_cell(0)
    log = pane(nb).locator(".nbchat-log")
    nb.page.locator(".nbchat-log[data-full]").wait_for(state="attached", timeout=3 * MS)
    height = log.evaluate("el => el.getBoundingClientRect().height")
    assert 470 <= height <= 500, f"a full log is {height} px high"
    # What makes it a layout boundary: the browser applies the containment.
    assert log.evaluate("el => getComputedStyle(el).contain") == "strict"
    nb.run_cell(1)
    wait_user_message(nb, "Stream into a full log")
    for seen in (40, 120):
        wait_length_above(nb, seen)
        gap = log.evaluate(
            "el => el.getBoundingClientRect().bottom"
            " - el.lastElementChild.previousElementSibling.getBoundingClientRect().bottom"
        )
        assert gap >= -1, f"the reply's end is {-gap:.0f} px below the log's: not followed"
    assert log.evaluate("el => el.hasAttribute('data-full')")
    nb.run_cell(2)
    nb.page.locator(".nbchat-log:not([data-full])").wait_for(state="attached", timeout=3 * MS)
    assert log.evaluate("el => el.getBoundingClientRect().height") < 300


def test_screenshots_in_light_and_dark_themes(open_notebook: Opener, lab: LabServer) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    name = lab.notebook(
        "themes.ipynb",
        "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\n"
        'chat.send("Show me some Markdown").wait()\nchat',
    )
    backgrounds = {}
    try:
        for theme, file in (
            ("JupyterLab Light", "pane-light.png"),
            ("JupyterLab Dark", "pane-dark.png"),
        ):
            lab.set_theme(theme)
            nb = open_notebook(name)
            nb.run_cell(0)
            wait_status(nb, "done")
            pane(nb).screenshot(path=str(ARTIFACTS / file))
            backgrounds[theme] = pane(nb).evaluate("el => getComputedStyle(el).backgroundColor")
            assert (ARTIFACTS / file).stat().st_size > 10_000
    finally:
        lab.set_theme("JupyterLab Light")
    assert backgrounds["JupyterLab Light"] != backgrounds["JupyterLab Dark"]


def test_notebook_7_basic_flow(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook("nb7.ipynb", "from nbchat import Chat\nchat = Chat(tokens_per_s=60)\nchat"),
        classic=True,
    )
    nb.run_all()
    box = pane(nb).locator(".nbchat-input")
    box.wait_for(timeout=3 * MS)
    box.fill("Hello from Notebook 7")
    box.press("Enter")
    wait_user_message(nb, "Hello from Notebook 7")
    wait_status(nb, "done")
    assert "You wrote: \u201cHello from Notebook 7\u201d" in last_reply(nb).inner_text()


def test_errors_show_in_the_pane_and_it_stays_usable(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "errors.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=0)\n"
            "chat.model = 'no-such-model'\nchat",
            'offline = Chat(url="ws://127.0.0.1:9/v1/chat")\noffline.send("anyone?").wait()\noffline',
        )
    )
    nb.run_cell(0)
    box = pane(nb).locator(".nbchat-input")
    box.fill("first line")
    box.press("Shift+Enter")  # a new line, not a send
    box.press_sequentially("second line")
    assert box.input_value() == "first line\nsecond line"
    box.press("Enter")
    wait_status(nb, "error")
    assert "unknown model 'no-such-model'; available: demo" in last_reply(nb).inner_text()
    user = pane(nb).locator('.nbchat-msg[data-role="user"] .nbchat-body').last
    assert user.inner_text() == "first line\nsecond line"
    # Still usable: pick a model that exists and chat on.
    pane(nb).locator(".nbchat-model").select_option("demo")
    box.fill("and now?")
    box.press("Enter")
    wait_user_message(nb, "and now?")
    wait_status(nb, "done")
    nb.run_cell(1)
    offline = pane(nb, 1)
    offline.locator('.nbchat-status[data-status="offline"]').wait_for(timeout=MS)
    assert (
        "cannot reach the gateway at ws://127.0.0.1:9/v1/chat"
        in offline.locator(".nbchat-error").inner_text()
    )
    assert "cannot reach the gateway" in last_reply(nb, 1).inner_text()


def test_a_page_reload_mid_stream_catches_up(open_notebook: Opener, lab: LabServer) -> None:
    nb = open_notebook(
        lab.notebook(
            "reload.ipynb",
            "from nbchat import Chat\nchat = Chat(tokens_per_s=25)\nchat",
            'reply = chat.send("Reload me")',
        )
    )
    nb.run_cell(0)
    nb.run_cell(1)
    wait_length_above(nb, 60)
    nb.page.keyboard.press("Control+s")  # the saved output names the live widget
    nb.page.wait_for_timeout(500)
    nb.page.reload()
    nb.wait_idle()
    pane(nb).wait_for(state="attached", timeout=3 * MS)
    wait_status(nb, "done")
    text = last_reply(nb).locator(".nbchat-body").inner_text()
    assert text.count("You wrote: \u201cReload me\u201d") == 1  # nothing shown twice
    assert text.rstrip().endswith("This is the first turn of our conversation.")


def test_the_pane_shows_reconnecting_resumed_and_offline(
    open_notebook: Opener, lab: LabServer
) -> None:
    gateway = EmbeddedGateway(Gateway(token="t")).start()
    proxy = FaultyProxy(gateway.gateway.port, seed=3).start()
    try:
        nb = open_notebook(
            lab.notebook(
                "reconnect.ipynb",
                "from nbchat import Chat\nfrom nbchat.backoff import Backoff\n"
                f"chat = Chat(url={proxy.url()!r}, token='t', tokens_per_s=10,\n"
                "            backoff=Backoff(initial_s=0.5, cap_s=1.0, max_attempts=4))\nchat",
                'reply = chat.send("stay with me")',
            )
        )
        nb.run_cell(0)
        nb.run_cell(1)
        wait_length_above(nb, 20)
        status = pane(nb).locator(".nbchat-status")
        retry = pane(nb).locator(".nbchat-retry")

        # Every label the status shows, however briefly: a reconnect can succeed a few
        # milliseconds after "reconnecting" appears, too fast for polling to see it.
        nb.page.evaluate(
            """el => {
              window.__nbchatLabels = [];
              new MutationObserver(records => records.forEach(r =>
                r.addedNodes.forEach(n => window.__nbchatLabels.push(n.textContent))
              )).observe(el, { childList: true });
            }""",
            status.element_handle(),
        )

        def wait_label(pattern: str) -> None:
            nb.page.wait_for_function(
                "p => window.__nbchatLabels.some(label => new RegExp(p).test(label))",
                arg=pattern,
                timeout=3 * MS,
            )

        proxy.cut()  # the network drops; the gateway is still there
        wait_label(r"^reconnecting \(attempt 1, next in \d+\.\d s\)$")
        wait_label(r"^connected \(resumed after \d+\.\d s\)$")
        wait_status(nb, "streaming")  # the reply goes on where it was

        asyncio.run_coroutine_threadsafe(gateway.gateway.stop_listening(), gateway._loop).result(
            TIMEOUT
        )
        # The reply in flight says it waits for the link, then the link is given up.
        last_reply(nb).locator(".nbchat-meta", has_text="reconnecting…").wait_for(timeout=MS)
        wait_label("^offline$")  # four attempts, then it gives up
        assert retry.is_visible()
        assert "gave up after 4 attempts" in pane(nb).locator(".nbchat-error").inner_text()
        asyncio.run_coroutine_threadsafe(gateway.gateway.start(), gateway._loop).result(TIMEOUT)
        retry.click()
        wait_label(r"^connected \(reconnected\)$")
        assert not retry.is_visible()
    finally:
        proxy.close()
        gateway.close()


def test_reasoning_shows_folded_away_above_the_answer(
    open_notebook: Opener, lab: LabServer, tmp_path: Path
) -> None:
    replay = Replay().start()
    config = tmp_path / "nbchat.toml"
    config.write_text(
        f'[[models]]\nname = "deepseek"\nprovider = "openai-compatible"\n'
        f'model = "deepseek-reasoner"\nbase_url = "{replay.base_url}"\n'
    )
    try:
        nb = open_notebook(
            lab.notebook(
                "reasoning.ipynb",
                "import os\nfrom nbchat import Chat\nfrom nbchat.gateway import EmbeddedGateway, "
                "Gateway\nfrom nbchat.gateway.config import load_models\n"
                f"models = await load_models({str(config)!r}, os.environ)\n"
                "gateway = EmbeddedGateway(Gateway(models=models)).start()\n"
                "chat = Chat(url=gateway.url, model='deepseek')\nchat",
                'chat.send("Which is smaller, 9.11 or 9.8?").wait().reasoning',
            )
        )
        nb.run_cell(0)
        nb.run_cell(1)
        nb.wait_output(1, "Compare the decimals")
        wait_status(nb, "done")
        details = last_reply(nb).locator("details.nbchat-reasoning")
        assert details.is_visible()
        assert details.get_attribute("open") is None  # folded away
        assert last_reply(nb).locator(".nbchat-body").inner_text().strip() == (
            "9.11 is smaller than 9.8."
        )
        details.locator("summary").click()
        assert details.locator(".nbchat-reasoning-body").inner_text() == (
            "Compare the decimals: 0.11 < 0.8."
        )
    finally:
        replay.close()
