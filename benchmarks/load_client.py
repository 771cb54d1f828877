"""The load generator of bench_load.py: one process holding many WebSocket sessions.

Each session is a raw connection speaking nbchat's protocol directly (hello, then a
``start`` of the demo model at a given rate, and the next start as soon as a reply is
``done``), on websockets' sans-I/O ``ClientProtocol`` driven by an ``asyncio.Protocol``:
no reader task, no future per message, no JSON parse of a delta (its type is read from
the frame's first bytes), so one process keeps up with tens of thousands of frames a
second. It offers permessage-deflate, as nbchat's own client does (websockets'
default), unless told not to.

The parent (bench_load.py) runs several of these with :func:`worker_main` and talks to
each over a pipe: the plan, then ``connected``, then the time to begin, then the
figures. Times are ``time.monotonic()``, which is one clock for every process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from nbchat.gateway.providers.demo import tokenize

CONNECT_AT_ONCE = 32  # handshakes in flight per process while the sessions connect
WELCOME_TIMEOUT_S = 60.0
STALL_S = 1.0  # a session that gets no delta this long (a reply lasts seconds) stalled

_DELTA = b'{"type":"delta"'
_DONE = b'{"type":"done"'
_STARTED = b'{"type":"started"'


@dataclass(frozen=True)
class WorkerPlan:
    url: str
    token: str
    first: int  # index of this process's first session among all of them
    sessions: int  # sessions this process holds
    total: int  # sessions of all processes
    tokens_per_s: float
    prompt: str
    reply_tokens: int  # deltas a reply has (the demo's reply to ``prompt``)
    compression: bool
    count_tokens: bool = False  # a delta may carry several tokens (coalesced baseline)


@dataclass
class Figures:
    """What one process measured in the window [w0, w1) (arrival times)."""

    lateness: array[float] = field(default_factory=lambda: array("d"))
    first_token: array[float] = field(default_factory=lambda: array("d"))
    tokens: int = 0  # tokens that arrived in the window (one a delta, unless coalesced)
    frames: int = 0  # delta frames that arrived in the window
    replies: int = 0  # replies done in the window
    short_replies: int = 0  # done with fewer deltas than the reply has
    errors: Counter[str] = field(default_factory=Counter)  # error code or finish
    dropped: int = 0  # connections the server closed before the end
    stalls: int = 0  # times a session went STALL_S without a delta in the window
    lag: array[float] = field(default_factory=lambda: array("d"))  # this loop's, see _probe

    def as_dict(self) -> dict[str, Any]:
        return {
            "lateness": self.lateness,
            "first_token": self.first_token,
            "tokens": self.tokens,
            "frames": self.frames,
            "replies": self.replies,
            "short_replies": self.short_replies,
            "errors": dict(self.errors),
            "dropped": self.dropped,
            "stalls": self.stalls,
            "lag": self.lag,
        }


class Run:
    """What every session of this process shares: the plan, the window and the figures."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.figures = Figures()
        self.w0 = self.w1 = float("inf")
        self.stopping = False
        messages = [{"role": "user", "content": plan.prompt}]
        params = {"tokens_per_s": plan.tokens_per_s}
        # A start frame with "%s" where the reply id goes (ids are plain ASCII).
        self.start_template = json.dumps(
            {
                "type": "start",
                "reply": "%s",
                "model": "demo",
                "params": params,
                "messages": messages,
            },
            separators=(",", ":"),
        )
        self.hello = json.dumps({"type": "hello", "client": "bench_load"}).encode()


class Session(asyncio.Protocol):
    """One client: a connection, its WebSocket protocol state and its current reply."""

    def __init__(self, run: Run) -> None:
        self.run = run
        uri = parse_uri(run.plan.url)
        extensions = enable_client_permessage_deflate(None) if run.plan.compression else None
        self.ws = ClientProtocol(uri, extensions=extensions, max_size=None)
        self.transport: asyncio.Transport | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.replies = 0
        self.sent_at = 0.0  # when the current reply's start was sent
        self.index = 0  # deltas of the current reply received so far
        self.last_delta = 0.0  # arrival of the last delta in the window (or w0)
        self.period = 1.0 / run.plan.tokens_per_s

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {self.run.plan.token}"
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()  # one arrival time for the frames of this read
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    payload = event.data
                    self._on_text(payload if isinstance(payload, bytes) else bytes(payload), now)
            elif isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self._fail(f"handshake: {self.ws.handshake_exc}")
                else:
                    self.ws.send_text(self.run.hello)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self._fail(f"connection lost before the welcome: {exc}")
        elif not self.run.stopping:
            self.run.figures.dropped += 1

    # --- the protocol ---------------------------------------------------------

    def _on_text(self, data: bytes, now: float) -> None:
        run = self.run
        figures = run.figures
        if data.startswith(_DELTA):
            index = self.index
            count = 1
            if run.plan.count_tokens:
                count = len(tokenize(json.loads(data)["text"]))
            self.index = index + count
            if run.w0 <= now < run.w1:
                if now - max(self.last_delta, run.w0) > STALL_S:
                    figures.stalls += 1
                self.last_delta = now
                figures.frames += 1
                figures.tokens += count
                for i in range(index, index + count):
                    figures.lateness.append(now - (self.sent_at + i * self.period))
                if index == 0:
                    figures.first_token.append(now - self.sent_at)
        elif data.startswith(_STARTED):
            pass
        elif data.startswith(_DONE):
            frame = json.loads(data)
            if run.w0 <= now < run.w1:
                figures.replies += 1
                if frame.get("finish") != "stop":
                    figures.errors[f"finish {frame.get('finish')}"] += 1
                if self.index < run.plan.reply_tokens:
                    figures.short_replies += 1
            if not run.stopping:
                self.start_reply()
        else:
            frame = json.loads(data)
            kind = frame.get("type")
            if kind == "welcome" and not self.welcomed.done():
                self.welcomed.set_result(None)
            elif kind == "error":
                figures.errors[str(frame.get("code"))] += 1

    def start_reply(self) -> None:
        if self.run.stopping or self.transport is None or self.transport.is_closing():
            return
        self.replies += 1
        frame = self.run.start_template % f"r{self.replies}"
        self.ws.send_text(frame.encode())
        self.sent_at = time.monotonic()
        self.index = 0
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # end of stream (after a close)
                transport.close()
                return

    def _fail(self, why: str) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()


async def _connect_all(run: Run) -> tuple[list[Session], list[str]]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(run.plan.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def one() -> Session:
        async with gate:
            _, session = await loop.create_connection(lambda: Session(run), host, port)
            await asyncio.wait_for(session.welcomed, WELCOME_TIMEOUT_S)
            return session

    outcomes = await asyncio.gather(
        *(one() for _ in range(run.plan.sessions)), return_exceptions=True
    )
    sessions = [s for s in outcomes if isinstance(s, Session)]
    failures = [f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException)]
    return sessions, failures


async def _probe(run: Run) -> None:
    """How late this process's loop wakes from a 10 ms sleep, in the window: a loop that
    lags timestamps arrivals late, and the figures would be its, not the server's."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(0.01)
        if run.w0 <= began < run.w1:
            run.figures.lag.append(loop.time() - began - 0.01)


async def _work(pipe: Connection, plan: WorkerPlan) -> None:
    loop = asyncio.get_running_loop()
    run = Run(plan)
    sessions, failures = await _connect_all(run)
    pipe.send(("connected", len(sessions), failures[:5]))
    go, stagger, w0, w1 = await loop.run_in_executor(None, pipe.recv)
    run.w0, run.w1 = w0, w1
    probe = asyncio.create_task(_probe(run))
    for n, session in enumerate(sessions):
        # Spread the first starts, so the sessions' token ticks are not in step.
        offset = (plan.first + n) / plan.total * stagger
        loop.call_at(go + offset, session.start_reply)
    await asyncio.sleep(max(0.0, w1 - loop.time()))
    run.stopping = True
    probe.cancel()
    for session in sessions:
        if w1 - max(session.last_delta, w0) > STALL_S:
            run.figures.stalls += 1
        if session.transport is not None:
            session.transport.abort()
    pipe.send(("figures", run.figures.as_dict()))


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(pipe: Connection, plan: WorkerPlan) -> None:
    """A load process: connect ``plan.sessions`` sessions, stream, report (see above)."""
    raise_fd_limit()
    try:
        asyncio.run(_work(pipe, plan))
    except BaseException as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
