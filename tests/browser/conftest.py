"""Browser fixtures: a JupyterLab server of the tests' own on loopback, and Playwright
driving Debian's Chromium against it (never a downloaded browser)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from timeouts import TIMEOUT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    user_settings: Path

    def notebook(self, name: str, *cells: str) -> str:
        """Write a notebook of code cells into the server's root; returns its name."""
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, self.root / name)
        return name

    def set_theme(self, theme: str) -> None:
        folder = self.user_settings / "@jupyterlab" / "apputils-extension"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}))


@contextlib.contextmanager
def running_lab(base: Path) -> Iterator[LabServer]:
    """A JupyterLab server of its own under ``base`` (config, runtime and root there),
    on a free loopback port with a random token; stopped on exit."""
    root, settings, user_settings = base / "root", base / "settings", base / "user-settings"
    for folder in (root, settings, user_settings):
        folder.mkdir()
    # No news or update pop-ups over the page.
    (settings / "overrides.json").write_text(
        json.dumps(
            {
                "@jupyterlab/apputils-extension:notification": {
                    "fetchNews": "false",
                    "checkForUpdates": False,
                },
            }
        )
    )
    shutil.copy(Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb", root)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    log = (base / "lab.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.app_settings_dir={settings}",
            f"--LabApp.user_settings_dir={user_settings}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 6 * TIMEOUT
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log_text = (base / "lab.log").read_text()
                raise RuntimeError(f"JupyterLab did not start:\n{log_text}") from exc
            time.sleep(0.2)
    try:
        yield LabServer(url, token, root, user_settings)
    finally:
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    with running_lab(tmp_path_factory.mktemp("lab")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class Notebook:
    """A notebook open in JupyterLab (or Notebook 7), with the few actions tests need."""

    def __init__(self, page: Any, lab: LabServer, *, classic: bool = False) -> None:
        self.page = page
        self.lab = lab
        self.classic = classic

    def wait_idle(self) -> None:
        if self.classic:
            self.page.wait_for_selector(
                '.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                state="attached",
                timeout=6 * TIMEOUT * 1000,
            )
        else:
            self.page.wait_for_function(
                "() => /\\|\\s*Idle/.test("
                "document.querySelector('#jp-main-statusbar')?.textContent?.trim() ?? '')",
                timeout=6 * TIMEOUT * 1000,
            )

    def cells(self) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell")

    def run_all(self) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()

    def run_cell(self, index: int, *, wait: bool = True) -> None:
        """Run one cell; with ``wait``, until its prompt shows an execution count."""
        cell = self.cells().nth(index)
        prompt = cell.locator(".jp-InputArea-prompt")
        for _attempt in range(2):
            prompt.click()
            self.page.keyboard.press("Control+Enter")
            try:
                self.page.wait_for_function(
                    "el => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                    arg=prompt.element_handle(),
                    timeout=5000,
                )
                break
            except Exception:  # a first key press right after a kernel start can be lost
                continue
        if wait:
            self.wait_cell_done(index)

    def wait_cell_done(self, index: int) -> None:
        prompt = self.cells().nth(index).locator(".jp-InputArea-prompt")
        self.page.wait_for_function(
            "el => /\\[\\d+\\]/.test(el.textContent)",
            arg=prompt.element_handle(),
            timeout=6 * TIMEOUT * 1000,
        )

    def output(self, index: int) -> str:
        return str(self.cells().nth(index).locator(".jp-OutputArea-output").all_inner_texts())

    def wait_output(self, index: int, pattern: str) -> str:
        deadline = time.monotonic() + 6 * TIMEOUT
        while time.monotonic() < deadline:
            text = self.output(index)
            if re.search(pattern, text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"cell {index} output never matched {pattern!r}: {self.output(index)}")


@pytest.fixture
def open_notebook(lab: LabServer, browser: Any) -> Iterator[Callable[..., Notebook]]:
    contexts: list[Any] = []

    def opener(name: str, *, classic: bool = False) -> Notebook:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.dismiss())
        path = f"notebooks/{name}" if classic else f"lab/tree/{name}"
        query = f"token={lab.token}" if classic else f"reset&token={lab.token}"
        page.goto(f"{lab.url}/{path}?{query}")
        notebook = Notebook(page, lab, classic=classic)
        notebook.wait_idle()
        return notebook

    yield opener
    for context in contexts:
        context.close()
