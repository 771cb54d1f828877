"""The chat pane in a real page: JupyterLab in headless Chromium, a reply streamed from a
local OpenAI-compatible server, measured from the kernel to the DOM.

What runs
    A small OpenAI-compatible server on loopback (``TokenServer``) streams a
    deterministic Markdown reply (paragraphs, headings, lists, code fences, tables) at a
    given rate, one token per SSE chunk; every tenth token or so is a numbered marker
    word (``w00001``, ``w00002``, ...). The kernel's ``Chat(model="bench")`` reaches it
    through the embedded gateway (``OPENAI_BASE_URL``). Each case gets a fresh page and
    kernel in one JupyterLab server (tests/browser/conftest.py's ``running_lab``), driven
    by Playwright on Debian's Chromium. A warm-up reply (200 tokens, no markers) streams
    first, so one-off costs (compiling the renderer's code, first layouts) are not
    counted; Panel's goes to a feed of its own, since a second message streamed into
    one ChatFeed breaks that feed's view in JupyterLab (Bokeh logs "reference ... isn't
    known" and the message never shows).

Which code
    By default the working tree, with its built bundle (src/nbchat/static; run
    ``npm run build`` first). ``--rev REV`` measures a git revision instead: exported with
    ``git archive`` into a temp dir (the repository is only read), its front end built
    there, and put first on the kernels' PYTHONPATH. The JSON says which was measured.

Cases (``--list`` names them)
    nbchat-N@R     a reply of N tokens (1,000, 5,000, 15,000 ~ 100k characters) at R
                   tokens/s (100, 1,000, max = as fast as the server can write).
                   nbchat-15000@100 takes 150 s and runs only with --full.
    floor-N@R      the floor: the same stream, batched by nbchat's own rule, each batch
                   a comm message to a 15-line anywidget that appends it as plain text
                   to a scrolling box. What JupyterLab and the browser cost per update
                   before a pane renders anything (1,000 @ 100 and 1,000; 5,000 @ 100).
    panel-1000@R   Panel's ChatFeed on the same stream, the way a Panel user writes it:
                   the openai SDK in the kernel, ``feed.stream(token, message=msg)`` per
                   token (Panel is a benchmark-only dependency: pip install -e .[bench]).
    chat-1000      a chat loaded with 1,000 messages (Chat.from_dataframe): the bytes
                   its transcript costs on the kernel WebSocket, then a new 500-token
                   reply at 100 tok/s and how soon its first characters reach the DOM.
    build-500      500 turns sent from a cell (40-token replies, max rate): every byte
                   on the kernel WebSocket against the size of the transcript
                   (chat.save()).

How each figure is measured
    kernel time     a thread in the kernel iterates the Reply (``for chunk in reply``,
                    public API) and notes ``time.time()`` and the length so far for
                    every chunk; a marker "arrives" with the first chunk that completes
                    it. For Panel the loop reading the SDK stream notes the same.
    DOM time        an init script in the page puts a MutationObserver on the chat
                    (nbchat: the pane's ``div.nbchat``; Panel: the cell's output area,
                    including the shadow roots Bokeh attaches, found by wrapping
                    ``Element.prototype.attachShadow``); each batch of mutations scans
                    the text it added for markers and notes ``performance.timeOrigin +
                    performance.now()`` for the ones not seen before. The page and the
                    kernel share the machine's clock; the offset between the two clocks
                    is measured per case (a round trip of page.evaluate, about 1 ms) and
                    taken off. DOM delay = DOM time - kernel time, per marker: p50, p99.
                    It ends when the text is in the DOM, not when it is painted (paint
                    follows in the next frame).
    comm msg/s      ``comm_msg`` frames the page received on the kernel WebSocket
                    (Playwright's ``page.on("websocket")``, frames to the page only),
                    over the reply's duration in the kernel (send to end).
    B/char          every frame on the kernel WebSocket, both ways, from the send until
                    the page has settled (all markers shown, the reply marked done, 1 s
                    without mutations), divided by the reply's characters: the saved
                    copy's display updates count too. A page that shows nothing new for
                    10 s after the kernel's end has not settled (said in the table).
    lost            characters of a fresh view (the same chat displayed again in a new
                    cell, rendered from scratch) missing from the streamed view's final
                    text (word diff of the two, whitespace-normalised), plus the
                    characters of markers the final DOM lacks; the kernel's text is
                    checked against the server's too (``kernel ok``).
    main ms/reply   CDP ``Performance.getMetrics`` TaskDuration of the page's main
                    thread, from just before the send until settled, less the
                    observer's own time (the observer times itself with
                    performance.now()). The same over 3 s of the idle page before
                    each reply is printed as ms per second: it is in every figure.
    ms/update       Chrome tracing (RunTask events on the page's main thread) over the
                    reply. Each DOM update (observer batch) owns the task it ran in and
                    every task after it until the next update's task: its script, the
                    style, layout and paint of the frame that follows, and anything else
                    the page did meanwhile (JupyterLab's own handling of the kernel
                    messages included), less the observer's time. Mean over the updates
                    of the first and the last 10% of the reply (by markers shown), and
                    the worst update.
    longest task    the longest RunTask in the trace while the reply streamed (first to
                    last update), and how many were over 50 ms (a PerformanceObserver
                    for ``longtask`` in the page counts the same, as a check).
    IOPub warnings  "IOPub message rate exceeded" / "IOPub data rate exceeded" in the
                    notebook's outputs after the case (Jupyter Server's default limits).
    chat-1000       bytes: every frame from creating the chat to the pane settled, less
                    the widget's comm_open (its code and CSS, ~860 kB, the same for any
                    chat), over the size of chat.save()'s file; then the new reply as
                    the nbchat-N@R cases, "first characters" being its first marker.
    build-N         every frame from the first send until the pane shows the last turn
                    and has settled, over chat.save()'s size; main ms is per turn.

Targets (nbchat only; Panel is a comparison)
    per-update cost <= 8 ms (first and last 10%, every length), last 10% <= 1.5 x
    first 10%, no task over 50 ms while streaming; DOM delay p99 < 100 ms up to 5,000
    tokens and < 150 ms at 15,000 (~100k characters); main-thread time for 5,000 tokens
    at 100 tok/s < 5 s; transcript bytes on the WebSocket <= 3 x the transcript; a new
    reply's first characters on a 1,000-message chat < 150 ms; 0 characters lost; no
    IOPub warnings. Each is printed met or MISSED.

Run (under the shared browser lock; the machine has 2 cores and one browser run at a
time keeps figures honest)

    flock /tmp/nbchat-browser.lock .venv/bin/python benchmarks/bench_page.py          # ~8-13 min
    flock /tmp/nbchat-browser.lock .venv/bin/python benchmarks/bench_page.py --quick  # ~2 min
    flock /tmp/nbchat-browser.lock .venv/bin/python benchmarks/bench_page.py --full   # ~11-16 min
    ... --only 'nbchat-5000@*' --only panel-*   (fnmatch patterns; --list shows names)

To look into a case: BENCH_PAGE_KEEP_TRACE=DIR keeps each case's Chrome trace there (open
it in DevTools' Performance panel or ui.perfetto.dev); BENCH_PAGE_TRACE_CATEGORIES adds
categories to it (e.g. devtools.timeline,v8.execute: calls, layout, paint, at a cost).

Writes test-artifacts/bench_page.json (figures, targets, machine) and JupyterLab's log
beside it (bench_page_lab.log). Needs /usr/bin/chromium
and, for the Panel cases, ``pip install -e .[bench]`` (they are skipped without it).
Everything else (the kernel, the gateway, the server) shares the 2 cores with the page,
as on a user's laptop; the figures are for this machine.
"""

from __future__ import annotations

import argparse
import bisect
import difflib
import fnmatch
import hashlib
import http.server
import importlib.util
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The browser tests' JupyterLab launcher (its conftest, not the suite's top one).
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "browser"))

from conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, LabServer, Notebook, running_lab

MARKER_EVERY = 10  # about one marker word per this many tokens
MARKER = re.compile(r"w(\d{5})")
SETTLE_QUIET_MS = 1000  # the page has settled: this long without a mutation in the chat
IDLE_MS = 3000  # the idle page is measured for this long before each reply
STUCK_MS = 10_000  # after the kernel's end, this long without a mutation: it never will
IOPUB_WARNING = re.compile(r"IOPub (?:message|data) rate exceeded")
TRACE_CATEGORIES = os.environ.get(
    "BENCH_PAGE_TRACE_CATEGORIES", "disabled-by-default-devtools.timeline,blink.user_timing"
).split(",")


# --- the reply: deterministic Markdown with numbered markers -------------------------

WORDS = (
    "stream render kernel browser message update batch markdown widget socket token "
    "layout painting frame buffer offset snapshot parser column values result reply "
    "latency budget thread observer record transcript history notebook session gateway "
    "provider request response payload decoder encoder cursor viewport scroll data text "
    "page node line view word list item code cell time size rate"
)
VOCAB = WORDS.split()


def reply_tokens(count: int, seed: int, *, markers: bool = True) -> list[str]:
    """``count`` tokens of Markdown (paragraphs, headings, lists, code, tables), the same
    for the same seed. With ``markers``, a word token is a numbered marker (w00001, ...)
    about every MARKER_EVERY tokens, the first token included."""
    rng = random.Random(seed)
    tokens: list[str] = []
    numbered = 0
    next_marker = 0

    def word() -> str:
        nonlocal numbered, next_marker
        if markers and len(tokens) >= next_marker:
            numbered += 1
            next_marker = len(tokens) + MARKER_EVERY
            return f"w{numbered:05d}"
        return rng.choice(VOCAB)

    def words(n: int, first: str = " ") -> None:
        for i in range(n):
            tokens.append((first if i == 0 else " ") + word())

    def paragraph() -> None:
        words(rng.randint(25, 60), "")
        tokens.append(".")

    def heading() -> None:
        tokens.append("## ")
        words(rng.randint(2, 5), "")

    def bullets(ordered: bool) -> None:
        for i in range(rng.randint(3, 6)):
            tokens.append(("\n" if i else "") + (f"{i + 1}. " if ordered else "- "))
            words(rng.randint(4, 10), "")

    def code() -> None:
        tokens.append("```python\n")
        for _ in range(rng.randint(4, 10)):
            tokens.append("    " + word())
            tokens.append(" = compute(")
            tokens.append(word())
            tokens.append(")\n")
        tokens.append("```")

    def table() -> None:
        tokens.append("| name | count | note |\n|---|---:|---|")
        for _ in range(rng.randint(3, 7)):
            tokens.append("\n| " + word())
            tokens.append(f" | {rng.randint(1, 9999)}")
            tokens.append(" | " + word())
            tokens.append(" " + word() + " |")

    blocks = [
        paragraph,
        paragraph,
        heading,
        lambda: bullets(False),
        lambda: bullets(True),
        code,
        table,
    ]
    paragraph()
    while len(tokens) < count:
        tokens.append("\n\n")
        rng.choice(blocks)()
    return tokens[:count]


def marker_ends(text: str) -> dict[int, int]:
    """Each marker's number and the offset where it ends in the text."""
    return {int(m.group(1)): m.end() for m in MARKER.finditer(text)}


# --- a local OpenAI-compatible server ------------------------------------------------

_CHUNK = (
    '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764000000,'
    '"model":"bench","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}'
)
_SPEC = re.compile(r"tokens=(\d+) rate=(\d+) seed=(\d+)")
# A reply before the measured one, so that one-off costs (compiling the renderer's code,
# first layouts) are not counted; without markers, so none can be taken for the
# measured reply's.
WARM_UP = "tokens=200 rate=0 seed=2 plain"


class TokenServer:
    """Chat completions on loopback, model ``bench``: the last user message says what to
    stream (``tokens=N rate=R seed=S``; rate 0 is as fast as possible; ``plain``: no
    markers)."""

    def __init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps(
                    {"object": "list", "data": [{"id": "bench", "object": "model"}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = request["messages"][-1]["content"]
                spec = _SPEC.search(prompt)
                count, rate, seed = (int(g) for g in spec.groups()) if spec else (50, 0, 0)
                tokens = reply_tokens(count, seed, markers="plain" not in prompt)
                server.stream(self, tokens, rate)

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    @staticmethod
    def stream(handler: http.server.BaseHTTPRequestHandler, tokens: list[str], rate: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        out = handler.wfile
        try:
            out.write(b"data: " + (_CHUNK % ('{"role":"assistant","content":""}', "null")).encode())
            out.write(b"\n\n")
            out.flush()
            began = time.perf_counter()
            for i, token in enumerate(tokens):
                if rate:
                    delay = began + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                event = _CHUNK % (json.dumps({"content": token}), "null")
                out.write(f"data: {event}\n\n".encode())
                out.flush()
            end = _CHUNK % ("{}", '"stop"')
            out.write(f"data: {end}\n\ndata: [DONE]\n\n".encode())
            out.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


# --- the kernel's side: written next to the notebooks, imported by their cells --------

KERNEL_HELPERS = '''
"""Kernel side of benchmarks/bench_page.py: stream a reply and note when its text came."""
import json
import os
import threading
import time


def use_server(base_url):
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ["OPENAI_API_KEY"] = "bench"


def _dump(path, **figures):
    import nbchat

    with open(path, "w") as f:
        json.dump({**figures, "nbchat": nbchat.__file__}, f)


def stream_nbchat(chat, prompt, out, timeout=900):
    """Send; a thread reads the reply as it streams (time.time(), length so far)."""
    reply = chat.send(prompt)
    arrivals = []

    def read():
        length = 0
        for chunk in reply:
            length += len(chunk)
            arrivals.append((time.time(), length))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reply.wait(timeout)
    reader.join(10)
    _dump(out, sent_at=reply.sent_at, ended_at=time.time(), arrivals=arrivals,
          text=reply.text, status=reply.status, error=reply.error)


def read_sdk_stream(prompt, out, base_url, on_text):
    """The openai SDK's stream of the reply, each piece of text to on_text; when each
    came (time.time(), length so far) and the text go to out."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench")
    sent_at = time.time()
    arrivals, parts, length = [], [], 0
    stream = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], stream=True
    )
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if not delta:
            continue
        length += len(delta)
        arrivals.append((time.time(), length))
        parts.append(delta)
        on_text(delta)
    _dump(out, sent_at=sent_at, ended_at=time.time(), arrivals=arrivals,
          text="".join(parts), status="done", error=None)


def stream_panel(feed, prompt, out, base_url):
    """A Panel user's loop: the openai SDK's stream into feed.stream(), token by token."""
    feed.send(prompt, user="You", respond=False)
    message = None

    def show(text):
        nonlocal message
        message = feed.stream(text, user="bench", message=message)

    read_sdk_stream(prompt, out, base_url, show)


FLOOR_ESM = """
export default { render({ model, el }) {
  const box = document.createElement("div");
  box.className = "bench-floor";
  box.style.cssText = "min-height:120px;max-height:480px;overflow-y:auto;white-space:pre-wrap;"
    + "padding:8px 10px;border:1px solid #ccc;font-size:14px";
  el.append(box);
  model.on("msg:custom", (m) => {
    if (m.text) box.append(m.text);
    if (m.done) box.dataset.done = "true";
    if (box.scrollTop < box.scrollHeight - box.clientHeight) box.scrollTop = box.scrollHeight;
  });
} };
"""


def floor_pane():
    """The least a widget can do with a stream: append each batch as plain text."""
    import anywidget

    class Floor(anywidget.AnyWidget):
        _esm = FLOOR_ESM

    return Floor()


def stream_floor(pane, prompt, out, base_url):
    """The same stream, batched by nbchat's own rule (pane.StreamBatcher: at most 20 a
    second, fewer when text trickles), each batch a comm message to the floor pane."""
    from nbchat.pane import StreamBatcher

    batcher = StreamBatcher()
    batcher.begin("floor")

    def batch(text):
        batcher.add(text)
        now = time.monotonic()
        if batcher.due(now) <= now and (message := batcher.take(now)):
            pane.send({"text": message["text"]})

    read_sdk_stream(prompt, out, base_url, batch)
    message = batcher.take(time.monotonic())
    pane.send({"text": message["text"] if message else "", "done": True})


def long_chat(history_path):
    """A Chat whose history is the records in history_path (role, content)."""
    import pandas as pd
    from nbchat import Chat

    with open(history_path) as f:
        records = json.load(f)
    return Chat.from_dataframe(pd.DataFrame(records), model="bench")


def build(chat, turns, tokens, out):
    """Send turns one after another, each waiting for its reply."""
    began = time.time()
    statuses = {}
    for i in range(turns):
        reply = chat.send(f"turn {i}: tokens={tokens} rate=0 seed={i}").wait(120)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
    ended = time.time()
    path = out + ".transcript.json"
    chat.save(path)
    _dump(out, sent_at=began, ended_at=ended, statuses=statuses,
          messages=len(chat.messages), transcript_bytes=os.path.getsize(path))


def transcript_size(chat, out):
    path = out + ".transcript.json"
    chat.save(path)
    _dump(out, messages=len(chat.messages), transcript_bytes=os.path.getsize(path))
'''


# --- the page's side: an init script in every page ------------------------------------

PAGE_PROBE = r"""
(() => {
  const OPTIONS = { childList: true, subtree: true, characterData: true };
  const MARKER = /w(\d{5})/g;
  const SKIP = new Set(["STYLE", "SCRIPT", "TEMPLATE", "NOSCRIPT"]);
  const bench = {
    roots: [], scope: null, deep: false, observer: null,
    seen: new Map(), maxMarker: 0, updates: [], longtasks: [], lastMutation: 0,
  };
  window.__bench = bench;

  // Every shadow root (Bokeh renders Panel's chat inside them) is observed too.
  const attachShadow = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    const root = attachShadow.call(this, init);
    bench.roots.push(root);
    if (bench.observer) bench.observer.observe(root, OPTIONS);
    return root;
  };

  const deepText = (node) => {
    if (node.nodeType === 3) return node.data;
    if (node.nodeType !== 1 && node.nodeType !== 11) return "";
    if (SKIP.has(node.nodeName)) return "";
    let text = node.shadowRoot ? deepText(node.shadowRoot) : "";
    for (const child of node.childNodes) text += deepText(child);
    return text;
  };
  const textOf = (node) => (bench.deep ? deepText(node) : node.textContent ?? "");
  bench.text = (el) => deepText(el);
  const deepCount = (node) => {
    let count = node.nodeType === 1 ? 1 : 0;
    if (node.shadowRoot) count += deepCount(node.shadowRoot);
    for (const child of node.children) count += deepCount(child);
    return count;
  };
  bench.count = (el) => deepCount(el);  // elements, shadow roots' included

  const inScope = (node) => {
    for (let n = node; n; n = n.parentNode || n.host) if (n === bench.scope) return true;
    return false;
  };

  const scan = (text, when) => {
    MARKER.lastIndex = 0;
    for (let m = MARKER.exec(text); m; m = MARKER.exec(text)) {
      const k = Number(m[1]);
      if (!bench.seen.has(k)) {
        bench.seen.set(k, when);
        if (k > bench.maxMarker) bench.maxMarker = k;
      }
    }
  };

  const onMutations = (records) => {
    const start = performance.now();
    const when = performance.timeOrigin + start;
    let touched = false;
    for (const r of records) {
      if (!inScope(r.target)) continue;
      touched = true;
      if (r.type === "characterData") {
        scan(textOf(r.target.parentNode ?? r.target), when);
      } else {
        let textAdded = false;
        for (const n of r.addedNodes) {
          if (n.nodeType === 3) textAdded = true;
          else scan(textOf(n), when);
        }
        // Text nodes are scanned with their siblings: a marker may be split across them.
        if (textAdded) scan(textOf(r.target), when);
      }
    }
    if (!touched) return;
    bench.lastMutation = performance.now();
    bench.updates.push([start, performance.now() - start, bench.maxMarker]);
  };

  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) bench.longtasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });

  bench.start = (scope, deep) => {
    bench.observer?.disconnect();
    Object.assign(bench, {
      scope, deep, seen: new Map(), maxMarker: 0, updates: [], lastMutation: performance.now(),
    });
    bench.observer = new MutationObserver(onMutations);
    bench.observer.observe(scope, OPTIONS);
    for (const root of bench.roots) bench.observer.observe(root, OPTIONS);
  };
  bench.quiet = () => performance.now() - bench.lastMutation;
  bench.stop = () => {
    bench.observer?.disconnect();
    bench.observer = null;
    return {
      seen: Array.from(bench.seen.entries()),
      updates: bench.updates,
      longtasks: bench.longtasks,
      now: performance.now(),
      lastMutation: performance.timeOrigin + bench.lastMutation,
    };
  };
})();
"""


# --- one page: a notebook open in JupyterLab, with its kernel WebSocket counted -------

_MSG_TYPE = re.compile(rb'"msg_type":\s*"(\w+)"')
_CUSTOM_TYPE = re.compile(rb'"method":\s*"(\w+)"(?:.{0,200}?"type":\s*"(\w+)")?', re.S)


def frame_kind(payload: bytes) -> str:
    """The message type of a kernel WebSocket frame; for comm messages, the widget
    message inside too (``comm_msg:custom:chunk``, ``comm_msg:update``)."""
    found = _MSG_TYPE.search(payload)
    kind = found.group(1).decode() if found else "?"
    if kind == "comm_msg":
        inner = _CUSTOM_TYPE.search(payload)
        if inner:
            kind += ":" + ":".join(g.decode() for g in inner.groups() if g)
    return kind


@dataclass
class Frame:
    sent: bool  # page to kernel
    size: int
    kind: str


class Page:
    """A fresh browser context with one notebook open in JupyterLab."""

    def __init__(self, browser: Any, lab: LabServer, name: str, cells: list[str]) -> None:
        self.lab = lab
        self.frames: list[Frame] = []
        self.kernel_sockets: list[float] = []  # when each kernel WebSocket opened
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.context.add_init_script(PAGE_PROBE)
        self.page = self.context.new_page()
        self.page.on("dialog", lambda dialog: dialog.dismiss())
        self.page.on("websocket", self._watch)
        notebook = lab.notebook(name, *cells)
        self.page.goto(f"{lab.url}/lab/tree/{notebook}?reset&token={lab.token}")
        self.nb = Notebook(self.page, lab)
        self.nb.wait_idle()
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("Performance.enable")

    def _watch(self, ws: Any) -> None:
        if "/channels" not in ws.url:
            return
        self.kernel_sockets.append(time.monotonic())

        def frame(sent: bool) -> Any:
            def record(payload: str | bytes) -> None:
                data = payload.encode() if isinstance(payload, str) else payload
                self.frames.append(Frame(sent, len(data), frame_kind(data)))

            return record

        ws.on("framereceived", frame(False))
        ws.on("framesent", frame(True))

    def mark(self) -> int:
        """How many frames so far (after a round trip, so the events before are in)."""
        self.page.evaluate("0")
        return len(self.frames)

    def run(self, index: int, timeout_s: float) -> None:
        """Run a cell and wait until its prompt shows an execution count."""
        self.nb.run_cell(index, wait=False)
        prompt = self.nb.cells().nth(index).locator(".jp-InputArea-prompt")
        self.page.wait_for_function(
            "el => /\\[\\d+\\]/.test(el.textContent)",
            arg=prompt.element_handle(),
            timeout=timeout_s * 1000,
            polling=100,
        )

    def wait(self, script: str, timeout_s: float, arg: Any = None) -> bool:
        try:
            self.page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000, polling=100)
            return True
        except Exception:  # Playwright's TimeoutError: reported as "did not settle"
            return False

    def main_thread(self) -> dict[str, float]:
        """Cumulative main-thread seconds (CDP Performance.getMetrics) and DOM nodes."""
        metrics = self.cdp.send("Performance.getMetrics")["metrics"]
        return {m["name"]: m["value"] for m in metrics}

    def clock_offset_ms(self) -> float:
        """The page's clock minus this process's (the kernel's), from the quickest of a
        few round trips."""
        best: tuple[float, float] | None = None
        for _ in range(7):
            before = time.time()
            page_ms = self.page.evaluate("performance.timeOrigin + performance.now()")
            after = time.time()
            if best is None or after - before < best[0]:
                best = (after - before, page_ms - (before + after) / 2 * 1000)
        assert best is not None
        return best[1]

    def iopub_warnings(self) -> int:
        text = self.page.evaluate("document.querySelector('.jp-Notebook')?.textContent ?? ''")
        return len(IOPUB_WARNING.findall(text))

    def close(self) -> None:
        self.context.close()


def traffic(frames: list[Frame]) -> dict[str, Any]:
    by_kind: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for f in frames:
        by_kind[f.kind] += f.size
        count[f.kind] += 1
    return {
        "bytes": sum(f.size for f in frames),
        "bytes_to_page": sum(f.size for f in frames if not f.sent),
        "frames": len(frames),
        "comm_msgs_to_page": sum(1 for f in frames if not f.sent and f.kind.startswith("comm_msg")),
        "by_kind": {k: {"frames": count[k], "bytes": by_kind[k]} for k in sorted(by_kind)},
    }


# --- analysis ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main_thread_tasks(trace: bytes) -> tuple[list[tuple[float, float]], bool]:
    """The page's main-thread tasks as (start, duration) in ms of the page's
    performance.now(), top-level only; and whether the trace had the anchor."""
    events = json.loads(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    anchor = next((e for e in events if e.get("name") == "bench-anchor"), None)
    if anchor is None:
        return [], False
    base_us = anchor["ts"] - anchor["args"]["data"]["startTime"] * 1000
    tasks = sorted(
        (e["ts"], e.get("dur", 0))
        for e in events
        if e.get("name") == "RunTask"
        and e.get("ph") == "X"
        and e["pid"] == anchor["pid"]
        and e["tid"] == anchor["tid"]
    )
    top: list[tuple[float, float]] = []
    end = float("-inf")
    for ts, dur in tasks:
        if ts >= end:  # a task nested in the one before is already counted
            top.append(((ts - base_us) / 1000, dur / 1000))
            end = ts + dur
    return top, True


@dataclass
class Update:
    at: float  # page ms
    task: int  # index of the task it ran in
    overhead: float  # the observer's own ms
    progress: int  # highest marker shown after it
    cost: float = 0.0


def update_costs(tasks: list[tuple[float, float]], raw: list[list[float]]) -> list[Update]:
    """Each DOM update's main-thread cost: its task and those after it, up to the next
    update's task, less the observer's own time. Updates in one task are merged."""
    starts = [start for start, _ in tasks]
    updates: list[Update] = []
    for at, overhead, progress in raw:
        task = max(0, bisect.bisect_right(starts, at) - 1)
        if updates and updates[-1].task == task:
            updates[-1].overhead += overhead
            updates[-1].progress = int(progress)
        else:
            updates.append(Update(at, task, overhead, int(progress)))
    for this, after in zip(updates, [*updates[1:], None], strict=True):
        stop = after.task if after else min(len(tasks), this.task + 1)
        this.cost = sum(d for _, d in tasks[this.task : stop]) - this.overhead
    return updates


def lost_characters(fresh: str, streamed: str) -> tuple[int, list[str]]:
    """Characters of ``fresh`` that ``streamed`` lacks, by a diff of their words; and
    the first few differences, to see what they are."""
    a, b = fresh.split(), streamed.split()
    if a == b:
        return 0, []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    kept = sum(sum(len(w) for w in a[m.a : m.a + m.size]) for m in matcher.get_matching_blocks())
    samples = [
        f"{op}: fresh {' '.join(a[i1:i2])[:80]!r} / streamed {' '.join(b[j1:j2])[:80]!r}"
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
        if op != "equal"
    ]
    return sum(len(w) for w in a) - kept, samples[:5]


@dataclass
class Figures:
    """What one case measured; ``None`` where it does not apply."""

    case: str
    chars: int = 0
    tokens: int = 0
    reply_s: float = 0.0
    settle_s: float | None = None  # from the kernel's end to the page settled
    settled: bool = True
    comm_msgs_per_s: float | None = None
    bytes_per_char: float | None = None
    lost_chars: int | None = None
    markers_missing: int | None = None
    kernel_text_ok: bool | None = None
    delay_first_ms: float | None = None
    delay_p50_ms: float | None = None
    delay_p99_ms: float | None = None
    delay_max_ms: float | None = None
    main_ms_per_reply: float | None = None
    script_ms_per_reply: float | None = None
    layout_style_ms_per_reply: float | None = None
    updates: int | None = None
    update_ms_first10: float | None = None
    update_ms_last10: float | None = None
    update_ms_max: float | None = None
    longest_task_ms: float | None = None
    tasks_over_50ms: int | None = None
    longtasks_observed: int | None = None
    observer_ms: float | None = None
    dom_nodes: int | None = None  # elements in the chat once settled
    iopub_warnings: int = 0
    clock_offset_ms: float | None = None
    trace_complete: bool | None = None
    traffic: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def stream_figures(
    fig: Figures,
    kernel: dict[str, Any],
    page_data: dict[str, Any],
    expected: str,
    offset_ms: float,
    tasks: list[tuple[float, float]] | None,
) -> None:
    """DOM delays, update costs and tasks from what the kernel and the page noted."""
    text = kernel["text"]
    fig.kernel_text_ok = text == expected
    fig.chars, fig.reply_s = len(expected), kernel["ended_at"] - kernel["sent_at"]
    ends = marker_ends(expected)
    lengths = [n for _, n in kernel["arrivals"]]
    seen = dict(page_data["seen"])
    delays = []
    for k, end in ends.items():
        i = bisect.bisect_left(lengths, end)
        if k in seen and i < len(lengths):
            delays.append(seen[k] - offset_ms - kernel["arrivals"][i][0] * 1000)
    if delays:
        fig.delay_first_ms = delays[0]
        fig.delay_p50_ms = percentile(delays, 50)
        fig.delay_p99_ms = percentile(delays, 99)
        fig.delay_max_ms = max(delays)
    fig.extra["markers"] = len(ends)
    fig.extra["markers_seen_streaming"] = sum(1 for k in ends if k in seen)
    fig.observer_ms = sum(u[1] for u in page_data["updates"])
    if not tasks:
        return
    total = max(ends) if ends else 1
    updates = update_costs(tasks, page_data["updates"])
    last = next((i for i, u in enumerate(updates) if u.progress >= total), len(updates) - 1)
    streaming = [u for u in updates[: last + 1] if u.progress > 0]
    if not streaming:
        return
    first10 = [u.cost for u in streaming if u.progress <= 0.1 * total]
    last10 = [u.cost for u in streaming if u.progress > 0.9 * total]
    fig.updates = len(streaming)
    fig.update_ms_first10 = statistics.fmean(first10) if first10 else None
    fig.update_ms_last10 = statistics.fmean(last10) if last10 else None
    fig.update_ms_max = max(u.cost for u in streaming)
    window = (tasks[streaming[0].task][0], tasks[streaming[-1].task][0])
    during = [d for start, d in tasks if window[0] <= start <= window[1]]
    fig.longest_task_ms = max(during, default=0.0)
    fig.tasks_over_50ms = sum(1 for d in during if d > 50)
    fig.longtasks_observed = sum(
        1 for start, _ in page_data["longtasks"] if window[0] <= start <= window[1]
    )
    fig.extra["update_ms_p50"] = percentile([u.cost for u in streaming], 50)
    fig.extra["update_ms_p95"] = percentile([u.cost for u in streaming], 95)


# --- the cases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "nbchat", "panel", "floor", "chat-1000", "build"
    tokens: int = 0
    rate: int = 0  # tokens/s; 0 = as fast as possible
    size: int = 0  # messages (chat-1000) or turns (build)


def rate_label(rate: int) -> str:
    return str(rate) if rate else "max"


def all_cases(full: bool, quick: bool) -> list[Case]:
    if quick:
        return [
            Case("nbchat-1000@1000", "nbchat", 1000, 1000),
            Case("nbchat-1000@max", "nbchat", 1000, 0),
            Case("panel-1000@1000", "panel", 1000, 1000),
            Case("floor-1000@1000", "floor", 1000, 1000),
            Case("chat-1000", "chat-1000", 500, 100, size=1000),
            Case("build-100", "build", 40, 0, size=100),
        ]
    cases = []
    for tokens in (1000, 5000, 15000):
        for rate in (100, 1000, 0):
            if tokens == 15000 and rate == 100 and not full:
                continue  # 150 s: --full only
            cases.append(Case(f"nbchat-{tokens}@{rate_label(rate)}", "nbchat", tokens, rate))
    for rate in (100, 1000, 0):
        cases.append(Case(f"panel-1000@{rate_label(rate)}", "panel", 1000, rate))
    for tokens, rate in ((1000, 100), (1000, 1000), (5000, 100)):
        cases.append(Case(f"floor-{tokens}@{rate_label(rate)}", "floor", tokens, rate))
    cases.append(Case("chat-1000", "chat-1000", 500, 100, size=1000))
    cases.append(Case("build-500", "build", 40, 0, size=500))
    return cases


@dataclass
class Bench:
    browser: Any
    lab: LabServer
    server: TokenServer
    trace: bool = True

    def _setup(self) -> str:
        return f"import bench_kernel as bk\nbk.use_server({self.server.base_url!r})\n"

    def _out(self, name: str) -> Path:
        return self.lab.root / f"{name}.json"

    def measure_reply(
        self,
        page: Page,
        fig: Figures,
        cell: int,
        scope: Any,
        deep: bool,
        done_script: str,
        tokens: int,
        rate: int,
        out: Path,
    ) -> None:
        """Run the cell that streams the reply; measure it until the page settles."""
        expected = "".join(reply_tokens(tokens, 1))
        last_marker = max(marker_ends(expected))
        page.page.wait_for_timeout(1000)  # let the page finish what came before
        # The page's own main-thread time while nothing streams (JupyterLab's timers,
        # the kernel's status): what any reply's time includes.
        idle_from = page.main_thread()
        page.page.wait_for_timeout(IDLE_MS)
        idle = page.main_thread()
        fig.extra["idle_main_ms_per_s"] = (
            (idle["TaskDuration"] - idle_from["TaskDuration"]) * 1e6 / IDLE_MS
        )
        page.page.evaluate("([el, deep]) => __bench.start(el, deep)", [scope, deep])
        offset = page.clock_offset_ms()
        first, sockets = page.mark(), len(page.kernel_sockets)
        before = page.main_thread()
        if self.trace:
            self.browser.start_tracing(categories=TRACE_CATEGORIES)
            page.page.evaluate("performance.mark('bench-anchor')")  # pins page time in it
        page.run(cell, timeout_s=tokens / (rate or 5000) + 180)
        # Settled: every marker shown, the reply done, quiet. A page showing nothing more
        # for STUCK_MS has given up (a view that broke): not settled.
        page.wait(
            f"() => __bench.maxMarker >= {last_marker} && ({done_script})"
            f" && __bench.quiet() > {SETTLE_QUIET_MS} || __bench.quiet() > {STUCK_MS}",
            timeout_s=120 + 3 * tokens / (rate or 1000),
        )
        fig.settled = page.page.evaluate(f"__bench.maxMarker >= {last_marker}")
        after = page.main_thread()
        trace = self.browser.stop_tracing() if self.trace else None
        if os.environ.get("BENCH_PAGE_KEEP_TRACE") and trace:
            Path(os.environ["BENCH_PAGE_KEEP_TRACE"], f"{fig.case}.trace.json").write_bytes(trace)
        page_data = page.page.evaluate("__bench.stop()")
        frames = page.frames[first : page.mark()]
        kernel = json.loads(out.read_text())
        tasks, anchored = main_thread_tasks(trace) if trace else ([], False)
        last_update = page_data["updates"][-1][0] if page_data["updates"] else 0.0
        fig.trace_complete = bool(anchored and tasks and tasks[-1][0] >= last_update)
        stream_figures(fig, kernel, page_data, expected, offset, tasks if anchored else None)
        fig.tokens, fig.clock_offset_ms = tokens, offset
        fig.settle_s = (page_data["lastMutation"] - offset) / 1000 - kernel["ended_at"]
        fig.traffic = traffic(frames)
        fig.extra["kernel_reconnects"] = len(page.kernel_sockets) - sockets
        fig.comm_msgs_per_s = fig.traffic["comm_msgs_to_page"] / max(fig.reply_s, 1e-3)
        fig.bytes_per_char = fig.traffic["bytes"] / max(fig.chars, 1)
        fig.main_ms_per_reply = (after["TaskDuration"] - before["TaskDuration"]) * 1000 - (
            fig.observer_ms or 0
        )
        fig.script_ms_per_reply = (after["ScriptDuration"] - before["ScriptDuration"]) * 1000
        fig.layout_style_ms_per_reply = (
            after["LayoutDuration"]
            - before["LayoutDuration"]
            + after["RecalcStyleDuration"]
            - before["RecalcStyleDuration"]
        ) * 1000
        fig.dom_nodes = page.page.evaluate("el => __bench.count(el)", scope)
        fig.extra["kernel_status"] = kernel["status"]
        fig.extra["nbchat"] = kernel["nbchat"]
        if kernel.get("error"):
            fig.extra["kernel_error"] = kernel["error"]

    def compare_fresh_view(
        self, page: Page, fig: Figures, cell: int, streamed: Any, fresh_selector: str
    ) -> None:
        """Show the same chat again in a new cell; what the streamed view lacks is lost."""
        expected_markers = marker_ends("".join(reply_tokens(fig.tokens, 1)))
        page.run(cell, timeout_s=60)
        fresh = page.nb.cells().nth(cell).locator(fresh_selector).last
        fresh.wait_for(state="attached", timeout=60_000)
        handle = fresh.element_handle()
        page.wait(
            "([el, m]) => __bench.text(el).includes(m)",
            timeout_s=60,
            arg=[handle, f"w{max(expected_markers):05d}"],
        )
        page.page.wait_for_timeout(1000)
        fresh_text = page.page.evaluate("el => __bench.text(el)", handle)
        streamed_text = page.page.evaluate("el => __bench.text(el)", streamed)
        fig.lost_chars, fig.extra["lost_sample"] = lost_characters(fresh_text, streamed_text)
        shown = set(marker_ends(streamed_text))
        missing = [k for k in expected_markers if k not in shown]
        fig.markers_missing = len(missing)
        fig.lost_chars += sum(6 for _ in missing)

    def nbchat_reply(self, case: Case) -> Figures:
        fig = Figures(case.name)
        out = self._out(case.name)
        prompt = f"tokens={case.tokens} rate={case.rate} seed=1"
        page = Page(
            self.browser,
            self.lab,
            f"{case.name}.ipynb",
            [
                self._setup() + "from nbchat import Chat\nchat = Chat(model='bench')\nchat",
                f"bk.stream_nbchat(chat, {WARM_UP!r}, {str(out) + '.warm-up'!r})",
                f"bk.stream_nbchat(chat, {prompt!r}, {str(out)!r})",
                "display(chat)",
            ],
        )
        try:
            page.run(0, timeout_s=60)
            pane = page.nb.cells().nth(0).locator("div.nbchat").first
            pane.wait_for(state="attached")
            page.wait(
                "() => document.querySelector('.nbchat-status')?.dataset.status === 'connected'",
                timeout_s=30,
            )
            page.run(1, timeout_s=60)
            scope = pane.element_handle()
            self.measure_reply(
                page, fig, 2, scope, False, _last_reply_done(0), case.tokens, case.rate, out
            )
            self.compare_fresh_view(page, fig, 3, scope, "div.nbchat")
            fig.iopub_warnings = page.iopub_warnings()
        finally:
            page.close()
        return fig

    def _sdk_page(
        self,
        case: Case,
        show: str,
        make_warm_up: str,
        stream: str,
        target: str,
        after: tuple[str, ...] | list[str] = (),
    ) -> tuple[Figures, Path, Page]:
        """A page whose kernel reads the stream with the openai SDK itself: cell 0 shows
        ``target`` (made by ``show``), cell 1 streams the warm-up into one made by
        ``make_warm_up``, cell 2 streams the case's reply into ``target`` (``stream`` is
        the kernel helper that does it)."""
        fig = Figures(case.name)
        out = self._out(case.name)
        prompt = f"tokens={case.tokens} rate={case.rate} seed=1"
        url = self.server.base_url
        cells = [
            self._setup() + show,
            f"warm_up = {make_warm_up}\ndisplay(warm_up)\n"
            f"bk.{stream}(warm_up, {WARM_UP!r}, {str(out) + '.warm-up'!r}, {url!r})",
            f"bk.{stream}({target}, {prompt!r}, {str(out)!r}, {url!r})",
            *after,
        ]
        return fig, out, Page(self.browser, self.lab, f"{case.name}.ipynb", cells)

    def panel_reply(self, case: Case) -> Figures:
        # The warm-up gets its own feed: a second message streamed into one ChatFeed
        # breaks the view in JupyterLab (Bokeh: "reference ... isn't known").
        fig, out, page = self._sdk_page(
            case,
            "import panel as pn\npn.extension(inline=True)\n"
            "feed = pn.chat.ChatFeed(height=480)\nfeed",
            "pn.chat.ChatFeed(height=200)",
            "stream_panel",
            "feed",
            after=["feed"],  # cell 3 shows the feed again, rendered fresh
        )
        try:
            page.run(0, timeout_s=60)
            output = page.nb.cells().nth(0).locator(".jp-OutputArea").first
            scope = output.element_handle()
            rendered = page.wait(
                "el => Array.from(el.querySelectorAll('*')).some(n => n.shadowRoot)",
                timeout_s=30,
                arg=scope,
            )
            if not rendered:
                raise RuntimeError("Panel's ChatFeed did not render in JupyterLab")
            page.run(1, timeout_s=120)
            self.measure_reply(page, fig, 2, scope, True, "true", case.tokens, case.rate, out)
            feed = page.nb.cells().nth(0).locator(".jp-OutputArea-output").last
            self.compare_fresh_view(page, fig, 3, feed.element_handle(), ".jp-OutputArea-output")
            fig.iopub_warnings = page.iopub_warnings()
        finally:
            page.close()
        return fig

    def floor_reply(self, case: Case) -> Figures:
        """The floor: the same stream into a widget that only appends plain text."""
        fig, out, page = self._sdk_page(
            case, "pane = bk.floor_pane()\npane", "bk.floor_pane()", "stream_floor", "pane"
        )
        try:
            page.run(0, timeout_s=60)
            box = page.nb.cells().nth(0).locator("div.bench-floor").first
            box.wait_for(state="attached")
            page.run(1, timeout_s=120)
            done = (
                "document.querySelectorAll('.jp-Notebook .jp-Cell')[0]"
                "?.querySelector('div.bench-floor')?.dataset.done === 'true'"
            )
            self.measure_reply(
                page, fig, 2, box.element_handle(), False, done, case.tokens, case.rate, out
            )
            shown = page.page.evaluate("el => el.textContent", box.element_handle())
            fig.lost_chars = len("".join(reply_tokens(case.tokens, 1))) - len(shown)
            fig.iopub_warnings = page.iopub_warnings()
        finally:
            page.close()
        return fig

    def long_chat(self, case: Case) -> Figures:
        """Load a chat of case.size messages; then stream a new reply into it."""
        fig = Figures(case.name)
        out = self._out(case.name)
        history = self.lab.root / f"{case.name}-history.json"
        records = []
        for i in range(case.size // 2):
            records.append({"role": "user", "content": f"question {i}: how does it work?"})
            answer = "".join(reply_tokens(70, 1000 + i, markers=False))
            records.append({"role": "assistant", "content": answer})
        history.write_text(json.dumps(records))
        prompt = f"tokens={case.tokens} rate={case.rate} seed=1"
        page = Page(
            self.browser,
            self.lab,
            f"{case.name}.ipynb",
            [
                self._setup() + f"chat = bk.long_chat({str(history)!r})\n"
                f"bk.transcript_size(chat, {str(out) + '.size'!r})",
                "chat",
                f"bk.stream_nbchat(chat, {prompt!r}, {str(out)!r})",
            ],
        )
        try:
            first = page.mark()
            page.run(0, timeout_s=120)
            began = page.page.evaluate("performance.now()")
            page.run(1, timeout_s=60)
            pane = page.nb.cells().nth(1).locator("div.nbchat").first
            pane.wait_for(state="attached")
            page.page.evaluate("el => __bench.start(el, false)", pane.element_handle())
            shown = page.wait(
                f"() => {_pane_shows(1, f'question {case.size // 2 - 1}:')}"
                f" && __bench.quiet() > {SETTLE_QUIET_MS}",
                timeout_s=300,
            )
            loaded_s = (page.page.evaluate("__bench.lastMutation") - began) / 1000
            page.page.wait_for_timeout(1500)
            load = traffic(page.frames[first : page.mark()])
            size = json.loads(Path(str(out) + ".size").read_text())
            opening = sum(v["bytes"] for k, v in load["by_kind"].items() if k == "comm_open")
            fig.extra.update(
                messages=size["messages"],
                all_shown=shown,
                first_render_s=loaded_s,
                dom_nodes_after_load=page.page.evaluate(
                    "el => __bench.count(el)", pane.element_handle()
                ),
                transcript_bytes=size["transcript_bytes"],
                load_bytes=load["bytes"],
                load_bytes_without_comm_open=load["bytes"] - opening,
                load_ratio=(load["bytes"] - opening) / size["transcript_bytes"],
                load_traffic=load,
            )
            self.measure_reply(
                page,
                fig,
                2,
                pane.element_handle(),
                False,
                _last_reply_done(1),
                case.tokens,
                case.rate,
                out,
            )
            fig.iopub_warnings = page.iopub_warnings()
        finally:
            page.close()
        return fig

    def build(self, case: Case) -> Figures:
        """case.size turns from a cell; every byte on the WebSocket against the transcript."""
        fig = Figures(case.name)
        out = self._out(case.name)
        page = Page(
            self.browser,
            self.lab,
            f"{case.name}.ipynb",
            [
                self._setup() + "from nbchat import Chat\nchat = Chat(model='bench')\nchat",
                f"bk.build(chat, {case.size}, {case.tokens}, {str(out)!r})",
            ],
        )
        try:
            page.run(0, timeout_s=60)
            pane = page.nb.cells().nth(0).locator("div.nbchat").first
            pane.wait_for(state="attached")
            page.wait(
                "() => document.querySelector('.nbchat-status')?.dataset.status === 'connected'",
                timeout_s=30,
            )
            page.page.wait_for_timeout(1000)
            page.page.evaluate("el => __bench.start(el, false)", pane.element_handle())
            first, sockets = page.mark(), len(page.kernel_sockets)
            before = page.main_thread()
            page.run(1, timeout_s=900)
            fig.settled = page.wait(
                f"() => {_pane_shows(0, f'turn {case.size - 1}:')} && {_last_reply_done(0)}"
                f" && __bench.quiet() > {SETTLE_QUIET_MS}",
                timeout_s=900,
            )
            page.page.wait_for_timeout(1500)  # the saved copy's last update
            after = page.main_thread()
            offset = page.clock_offset_ms()
            page_data = page.page.evaluate("__bench.stop()")
            kernel = json.loads(out.read_text())
            fig.settle_s = (page_data["lastMutation"] - offset) / 1000 - kernel["ended_at"]
            fig.traffic = traffic(page.frames[first : page.mark()])
            fig.extra["kernel_reconnects"] = len(page.kernel_sockets) - sockets
            fig.reply_s = kernel["ended_at"] - kernel["sent_at"]
            fig.comm_msgs_per_s = fig.traffic["comm_msgs_to_page"] / fig.reply_s
            fig.main_ms_per_reply = (
                (after["TaskDuration"] - before["TaskDuration"]) * 1000 / (case.size)
            )
            fig.longest_task_ms = max((d for _, d in page_data["longtasks"]), default=0.0)
            fig.longtasks_observed = len(page_data["longtasks"])
            fig.dom_nodes = page.page.evaluate("el => __bench.count(el)", pane.element_handle())
            fig.extra.update(
                turns=case.size,
                kernel_s=fig.reply_s,
                statuses=kernel["statuses"],
                messages=kernel["messages"],
                transcript_bytes=kernel["transcript_bytes"],
                ratio=fig.traffic["bytes"] / kernel["transcript_bytes"],
                main_s_total=after["TaskDuration"] - before["TaskDuration"],
            )
            fig.iopub_warnings = page.iopub_warnings()
        finally:
            page.close()
        return fig

    def run(self, case: Case) -> Figures:
        method = {
            "nbchat": self.nbchat_reply,
            "panel": self.panel_reply,
            "floor": self.floor_reply,
            "chat-1000": self.long_chat,
            "build": self.build,
        }[case.kind]
        return method(case)


def _last_reply_done(cell: int) -> str:
    """JS: the last assistant message shown in the pane of cell ``cell`` has finished
    (true if the pane marks no messages so: the page's quiet then decides)."""
    return (
        f"(() => {{ const all = document.querySelectorAll('.jp-Notebook .jp-Cell')[{cell}]"
        "?.querySelectorAll('div.nbchat [data-role=\"assistant\"][data-status]') ?? [];"
        " return all.length === 0 || all[all.length - 1].dataset.status === 'done'; })()"
    )


def _pane_shows(cell: int, text: str) -> str:
    """JS: the pane of cell ``cell`` shows ``text``."""
    return (
        f"(document.querySelectorAll('.jp-Notebook .jp-Cell')[{cell}]"
        f"?.querySelector('div.nbchat')?.textContent ?? '').includes({json.dumps(text)})"
    )


# --- targets and the report ---------------------------------------------------------


@dataclass
class Target:
    name: str
    limit: str
    value: float | None
    where: str
    met: bool | None


def worst(figures: dict[str, Figures], pick: Any, cases: list[str]) -> tuple[float | None, str]:
    values = [(pick(figures[c]), c) for c in cases if c in figures and pick(figures[c]) is not None]
    if not values:
        return None, "not run"
    value, case = max(values)
    return value, case


def targets(figures: dict[str, Figures]) -> list[Target]:
    ours = [c for c in figures if c.startswith("nbchat-")]
    upto5000 = [c for c in ours if int(c.split("-")[1].split("@")[0]) <= 5000]
    at15000 = [c for c in ours if c.startswith("nbchat-15000@")]
    found: list[Target] = []

    def add(name: str, limit: str, value: float | None, where: str, ok: bool | None) -> None:
        found.append(Target(name, limit, value, where, ok))

    def check(name: str, limit: str, bound: float, pick: Any, cases: list[str]) -> None:
        value, where = worst(figures, pick, cases)
        add(name, limit, value, where, None if value is None else value <= bound)

    check(
        "per-update main-thread cost, first/last 10%",
        "<= 8 ms",
        8,
        lambda f: max(
            (v for v in (f.update_ms_first10, f.update_ms_last10) if v is not None), default=None
        ),
        ours,
    )

    def growth(f: Figures) -> float | None:
        if f.update_ms_first10 and f.update_ms_last10:
            return f.update_ms_last10 / f.update_ms_first10
        return None

    check("last 10% / first 10% per update", "<= 1.5x", 1.5, growth, ours)
    check("longest task while streaming", "<= 50 ms", 50, lambda f: f.longest_task_ms, ours)
    value, where = worst(figures, lambda f: f.delay_p99_ms, upto5000)
    add(
        "DOM delay p99, up to 5,000 tokens",
        "< 100 ms",
        value,
        where,
        None if value is None else value < 100,
    )
    value, where = worst(figures, lambda f: f.delay_p99_ms, at15000)
    add(
        "DOM delay p99, 15,000 tokens (~100k chars)",
        "< 150 ms",
        value,
        where,
        None if value is None else value < 150,
    )
    five = figures.get("nbchat-5000@100")
    value = five.main_ms_per_reply / 1000 if five and five.main_ms_per_reply else None
    add(
        "main-thread time, 5,000 tokens at 100 tok/s",
        "< 5 s",
        value,
        "nbchat-5000@100",
        None if value is None else value < 5,
    )
    builds = [c for c in figures if c.startswith("build-")]
    check(
        "WebSocket bytes / transcript bytes, building turns",
        "<= 3x",
        3,
        lambda f: f.extra.get("ratio"),
        builds,
    )
    check(
        "WebSocket bytes / transcript bytes, loading 1,000 messages",
        "<= 3x",
        3,
        lambda f: f.extra.get("load_ratio"),
        ["chat-1000"],
    )
    value, where = worst(figures, lambda f: f.delay_first_ms, ["chat-1000"])
    add(
        "new reply's first characters, 1,000-message chat",
        "< 150 ms",
        value,
        where,
        None if value is None else value < 150,
    )
    check("characters lost", "0", 0, lambda f: f.lost_chars, ours)
    check(
        "IOPub warnings",
        "0",
        0,
        lambda f: f.iopub_warnings,
        [c for c in figures if not c.startswith("panel-")],
    )
    return found


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,.{digits}f}"


COLUMNS: list[tuple[str, int, Any]] = [
    ("chars", 0, lambda f: f.chars or None),
    ("reply s", 1, lambda f: f.reply_s),
    ("settle s", 1, lambda f: f.settle_s),
    ("comm/s", 1, lambda f: f.comm_msgs_per_s),
    ("B/char", 1, lambda f: f.bytes_per_char),
    ("lost", 0, lambda f: f.lost_chars),
    ("delay p50", 0, lambda f: f.delay_p50_ms),
    ("p99", 0, lambda f: f.delay_p99_ms),
    ("main ms", 0, lambda f: f.main_ms_per_reply),
    ("upd", 0, lambda f: f.updates),
    ("ms/upd 1st10%", 1, lambda f: f.update_ms_first10),
    ("last10%", 1, lambda f: f.update_ms_last10),
    ("max", 1, lambda f: f.update_ms_max),
    ("long task", 0, lambda f: f.longest_task_ms),
    (">50ms", 0, lambda f: f.tasks_over_50ms),
    ("iopub", 0, lambda f: f.iopub_warnings),
]


def print_report(figures: dict[str, Figures], goals: list[Target]) -> None:
    width = max(len(c) for c in figures) + 2
    header = "case".ljust(width) + "".join(
        f"{name:>{max(8, len(name) + 1)}}" for name, _, _ in COLUMNS
    )
    print("\n" + header)
    for name, fig in figures.items():
        row = name.ljust(width)
        for label, digits, pick in COLUMNS:
            row += f"{fmt(pick(fig), digits):>{max(8, len(label) + 1)}}"
        if not fig.settled:
            row += "  (page did not settle)"
        if fig.extra.get("kernel_reconnects"):
            row += f"  (kernel WebSocket reopened {fig.extra['kernel_reconnects']}x)"
        print(row)
    print("\ndelays in ms from the kernel to the DOM; main ms = page main-thread time per reply")
    for name, fig in figures.items():
        if name == "chat-1000":
            x = fig.extra
            print(
                f"chat-1000: {x['messages']} messages, pane settled "
                f"{x['first_render_s']:.1f} s after display"
                f"{'' if x['all_shown'] else ' (the last message never showed)'}"
                f" ({x['dom_nodes_after_load']:,} elements in the pane); "
                f"{x['load_bytes_without_comm_open']:,} B on the WebSocket for a "
                f"{x['transcript_bytes']:,} B transcript ({x['load_ratio']:.2f}x, not counting "
                f"the widget's comm_open); new reply: first characters "
                f"{fmt(fig.delay_first_ms, 0)} ms after the kernel had them"
            )
        if name.startswith("build-"):
            x = fig.extra
            print(
                f"{name}: {x['turns']} turns in {x['kernel_s']:.1f} s in the kernel, page "
                f"settled {fmt(fig.settle_s)} s later; {fig.traffic['bytes']:,} B on the "
                f"WebSocket for a {x['transcript_bytes']:,} B transcript ({x['ratio']:.2f}x); "
                f"page main thread {x['main_s_total']:.1f} s, longest task "
                f"{fmt(fig.longest_task_ms, 0)} ms"
            )
    pairs = [
        (n, "panel-" + n.removeprefix("nbchat-"))
        for n in figures
        if n.startswith("nbchat-") and "panel-" + n.removeprefix("nbchat-") in figures
    ]
    if pairs:
        print("\nnbchat / Panel ChatFeed (same stream; < 1 means nbchat is lower)")
        for ours, theirs in pairs:
            parts = []
            for label, pick in [
                ("comm/s", lambda f: f.comm_msgs_per_s),
                ("B/char", lambda f: f.bytes_per_char),
                ("delay p50", lambda f: f.delay_p50_ms),
                ("delay p99", lambda f: f.delay_p99_ms),
                ("main ms", lambda f: f.main_ms_per_reply),
                ("ms/update last 10%", lambda f: f.update_ms_last10),
            ]:
                a, b = pick(figures[ours]), pick(figures[theirs])
                parts.append(f"{label} {a / b:.2f}" if a is not None and b else f"{label} -")
            print(f"  {ours.removeprefix('nbchat-'):>10}: " + ", ".join(parts))
    floors = [
        (n, "floor-" + n.removeprefix("nbchat-"))
        for n in figures
        if n.startswith("nbchat-") and "floor-" + n.removeprefix("nbchat-") in figures
    ]
    if floors:
        print(
            "\nnbchat against the floor (the same stream and batching into a widget that"
            " only appends plain text: JupyterLab's and the browser's share of each update)"
        )
        for ours, floor in floors:
            a, b = figures[ours], figures[floor]
            print(
                f"  {ours.removeprefix('nbchat-'):>10}: ms/update first/last 10% "
                f"{fmt(a.update_ms_first10)}/{fmt(a.update_ms_last10)} vs "
                f"{fmt(b.update_ms_first10)}/{fmt(b.update_ms_last10)}; main ms per reply "
                f"{fmt(a.main_ms_per_reply, 0)} vs {fmt(b.main_ms_per_reply, 0)}"
            )
    idle = [
        f.extra["idle_main_ms_per_s"] for f in figures.values() if "idle_main_ms_per_s" in f.extra
    ]
    if idle:
        print(
            f"\nthe idle page (before each reply, {IDLE_MS / 1000:.0f} s): main thread "
            f"{min(idle):.0f} to {max(idle):.0f} ms per second, included in main ms"
        )
    print("\ntargets (nbchat)")
    for goal in goals:
        mark = "not run" if goal.met is None else ("met" if goal.met else "MISSED")
        print(
            f"  {goal.name:58} {goal.limit:>9}  worst {fmt(goal.value, 2):>10}"
            f"  ({goal.where})  {mark}"
        )


REPO = Path(__file__).resolve().parents[1]


def export_revision(rev: str, into: Path) -> str:
    """The repository at ``rev`` (git archive: the repository is only read) in ``into``,
    its front end built there with the repository's node_modules; returns the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "node_modules").symlink_to(REPO / "node_modules")
    subprocess.run(["node", "js/build.mjs"], cwd=into, check=True)
    return commit


def code_measured(rev: str | None, commit: str | None, source: Path) -> dict[str, Any]:
    """Which nbchat the kernels ran: a revision, or the working tree (and whether it had
    uncommitted changes), with the bundle's hash."""
    bundle = source / "src" / "nbchat" / "static" / "widget.js"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "js"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return {
        "rev": rev,
        "commit": commit or head,
        "working_tree": rev is None,
        "uncommitted_changes": bool(dirty) if rev is None else False,
        "bundle_sha256": hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]
        if bundle.exists()
        else None,
    }


def machine(browser_version: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    versions: dict[str, str | None] = {}
    for package in ("nbchat", "jupyterlab", "panel", "bokeh", "playwright"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "chromium": browser_version,
        "python": platform.python_version(),
        "versions": versions,
    }


def run_cases(
    cases: list[Case], server: TokenServer, trace: bool, lab_log: Path
) -> tuple[dict[str, Figures], str]:
    """Each case in a page of its own, in one JupyterLab and one browser; returns the
    figures and the browser's version. JupyterLab's log is copied to ``lab_log``."""
    from playwright.sync_api import sync_playwright

    figures: dict[str, Figures] = {}
    with (
        tempfile.TemporaryDirectory() as base,
        running_lab(Path(base)) as lab,
        sync_playwright() as playwright,
    ):
        (lab.root / "bench_kernel.py").write_text(KERNEL_HELPERS)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        bench = Bench(browser, lab, server, trace=trace)
        for case in cases:
            started = time.monotonic()
            print(f"{case.name} ...", end=" ", flush=True)
            figures[case.name] = bench.run(case)
            print(f"{time.monotonic() - started:.0f} s", flush=True)
        version = str(browser.version)
        browser.close()
        lab_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(base) / "lab.log", lab_log)
    return figures, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke subset of every kind of case (~2 min)"
    )
    parser.add_argument("--full", action="store_true", help="add 15,000 tokens at 100 tok/s")
    parser.add_argument("--only", action="append", help="fnmatch pattern of case names")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--no-trace", action="store_true", help="no Chrome tracing")
    parser.add_argument(
        "--rev",
        help="measure this git revision (exported to a temp dir, its front end built "
        "there) instead of the working tree",
    )
    parser.add_argument("--out", type=Path, default=ARTIFACTS / "bench_page.json")
    args = parser.parse_args()
    cases = all_cases(args.full, args.quick)
    if args.only:
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in args.only)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    if importlib.util.find_spec("panel") is None:
        print("panel is not installed (pip install -e .[bench]): skipping the Panel cases")
        cases = [c for c in cases if c.kind != "panel"]

    began = time.monotonic()
    server = TokenServer()
    with tempfile.TemporaryDirectory() as code_dir:
        source, commit = REPO, None
        if args.rev:
            source = Path(code_dir)
            commit = export_revision(args.rev, source)
            # The kernels import nbchat from the export (they inherit the server's env).
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(source / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        elif not (source / "src" / "nbchat" / "static" / "widget.js").exists():
            sys.exit("the front end is not built: npm run build")
        code = code_measured(args.rev, commit, source)
        dirty = " (working tree, with uncommitted changes)" if code["uncommitted_changes"] else ""
        print(f"measuring nbchat at {code['commit'][:10]}{dirty}")
        lab_log = args.out.with_name(args.out.stem + "_lab.log")
        figures, browser_version = run_cases(cases, server, not args.no_trace, lab_log)
    server.close()

    goals = targets(figures)
    print_report(figures, goals)
    elapsed = time.monotonic() - began
    print(f"\n{len(cases)} cases in {elapsed / 60:.1f} min; figures in {args.out}")
    print(f"JupyterLab's log in {lab_log}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine(browser_version),
                "code": code,
                "run": {"args": sys.argv[1:], "minutes": elapsed / 60},
                "cases": {name: vars(fig) for name, fig in figures.items()},
                "targets": [vars(goal) for goal in goals],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
