"""Load benchmark: N concurrent sessions, each streaming the demo model at 30 tokens/s,
on ONE gateway process, with the memory store and the Redis store; and, as the
baseline, a bare ``websockets`` server sending the same frames at the same pace.

Each server runs in its own process: the gateway is ``Gateway(token=..., store=...)``
as ``nbchat serve`` builds it (memory store, or ``RedisStore`` on a ``redis-server``
this benchmark starts on a free port in a temporary directory); the baseline is
``websockets.asyncio.server.serve`` with a handler that answers ``hello`` and, for each
``start``, sends ``started``, one ``delta`` per token of the demo's reply (the same JSON
shape as nbchat's, ``{"type":"delta","seq":..,"reply":..,"text":..}``) paced as the
demo paces them, and ``done``. The load comes from ``--workers`` other processes
(load_client.py), each one asyncio loop holding its share of the sessions as raw
WebSocket connections that speak the protocol directly: ``hello``, then ``start`` with
``params {"tokens_per_s": R}``, and the next ``start`` as soon as a reply is ``done``.
How busy each load process was, and how late its loop ran, is printed: a load process
whose loop lags would stamp arrivals late, so its lag must stay small for the figures
to be the server's.

Every session sends the same prompt; the demo answers it with K tokens (136), one
``delta`` frame each, so a reply lasts K / R seconds. The first starts are spread over
one reply's length, so the sessions' ticks are not in step and replies end (and
restart) evenly. Figures are taken over a window of ``--seconds`` that opens one second
after the last session's first start:

- **delivered**: tokens that reached the clients in the window, per second.
  **Demanded**: sessions x R, what N sessions streaming without a pause ask for (a
  perfect server delivers slightly more, 100.7%: the first token of a reply is due at
  once, so a reply of K tokens takes (K - 1) / R seconds).
- **first-token latency**: from a client sending ``start`` to the reply's first
  ``delta`` arriving.
- **delta lateness**: token ``i`` (0-based) of a reply whose ``start`` the client sent
  at ``t_s`` is due at ``t_s + i / R``; its lateness is ``arrival - (t_s + i / R)``:
  how far behind a perfect, zero-latency stream at the demanded pace it arrives. The
  first token's lateness is the first-token latency, and a server that keeps the pace
  but started late is late by that much on every token of the reply. Every token
  arriving in the window counts once. Times are ``time.monotonic()`` in the process
  that both sends the start and receives the deltas.
- **server CPU**: user + system time of the server process over the window (from
  ``/proc/<pid>/stat``), as a percentage of one core, and divided by the tokens
  delivered (microseconds per token; one token is one delta frame, except in the
  coalesced baseline). redis-server's CPU is given apart. The machine's busy time is
  read from ``/proc/stat``; what is not ours is shown as "other processes".
- **server loop lag**: how late a ``sleep(0.01)`` in the server's event loop wakes up,
  p99 and max over the window; **GC pauses**: the collector's pauses in the server
  (``gc.callbacks``), which stop every session at once.
- **RSS per idle session**: the server's RSS with the N sessions connected and greeted
  (welcome received, no reply yet) minus its RSS before (after one warm-up session that
  loads what a first connection loads), divided by N.
- **problems**: errors received, replies that ended with fewer tokens than K,
  connections the server dropped, and stalls (a session 1 s without a delta while it
  has a reply streaming). "Delivered = demanded" needs none of them.

Targets (issue 12): 1,000 sessions with delivered = demanded (taken as at least 99%,
with no problems), delta lateness p99 under 100 ms with memory and 150 ms with Redis,
under 100 kB per idle session. A run with fewer sessions says so beside each verdict.

Options for finding where the time goes: ``--profile [DIR]`` runs the gateway under
cProfile during the window only (a profiled run's figures are inflated by the
profiler) and prints, per store, where the gateway's busy time goes per delta frame by
category (a built-in's own time is counted to its callers'; wall-clock time, so a
process the scheduler preempts shows it in whatever it was running) and the top 25
functions by own and by cumulative time. ``--compression none`` has the clients offer
no permessage-deflate (nbchat's client offers it, as websockets does by default).
``--server-gc off`` freezes then disables the collector in the servers.
``--coalesced-baseline MS`` adds a run of the bare server sending the tokens that fell
due in each MS milliseconds as one delta: what coalescing would give.

Run: .venv/bin/python benchmarks/bench_load.py           (1,000 sessions, about 3 minutes)
     .venv/bin/python benchmarks/bench_load.py --quick   (100 sessions, 5 s, about 1 minute)
     .venv/bin/python benchmarks/bench_load.py --sessions 200 --seconds 10 --store memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import json
import logging
import multiprocessing
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from load_client import STALL_S, WorkerPlan, raise_fd_limit, worker_main
from nbchat.cli import SERVE_DELTA_WINDOW_MS, freeze_startup_heap, widest_delta_window_ms
from nbchat.gateway import Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.providers.base import Request
from nbchat.gateway.providers.demo import demo_reply as demo_text
from nbchat.gateway.providers.demo import tokenize
from nbchat.gateway.redis_store import RedisStore
from nbchat.protocol import ChatMessage

TOKEN = "bench-load"
PROMPT = (
    "Tell me about streaming chat replies in a notebook, and how a gateway serves many "
    "people at once."
)
STAGGER_EXTRA_S = 1.0  # after the last first start, before the window opens
TIMEOUT_S = 120.0  # for any one step (connecting, collecting figures)

TARGET_SESSIONS = 1000
TARGET_LATENESS_S = {"memory": 0.100, "redis": 0.150}
TARGET_IDLE_KB = 100.0
DELIVERED_AT_LEAST = 0.99  # "delivered = demanded", allowing for the window's edges


def percentile(values: list[float], p: float) -> float:
    """``values`` must be sorted."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def reply_tokens(prompt: str) -> list[str]:
    request = Request(messages=(ChatMessage("user", prompt),), model="demo", params={})
    return tokenize(demo_text(request))


# --- /proc -----------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int, int, int]:
    """(busy, softirq, steal, total) jiffies of all cores so far. Busy counts user,
    system, irq and softirq time (softirq: the kernel's network work, loopback TCP
    included, which no process's own CPU time shows); steal is time the hypervisor
    gave to other machines."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields)
    busy = user + nice + system + irq + softirq
    return busy, softirq, steal, busy + idle + iowait + steal


# --- the servers, each run in its own process (this file with --serve) ------------


LAG_PROBE_S = 0.01  # the server's loop is probed this often during the window


async def _serve_until_killed(
    url: str, profile: str | None, window: Callable[[], float] | None = None
) -> None:
    """Print the URL, then serve until killed. SIGUSR1 opens the window: from then on
    the loop's lag (how late a ``sleep(LAG_PROBE_S)`` wakes up) and the garbage
    collector's pauses are recorded, and with ``profile`` cProfile runs. SIGUSR2 closes
    it: the profile is written and one ``STATS {json}`` line printed. ``window`` reads
    the gateway's delta window, sampled with the lag."""
    loop = asyncio.get_running_loop()
    profiler = cProfile.Profile()
    lags: list[float] = []
    windows: list[float] = []
    pauses: list[tuple[int, float]] = []  # (generation, seconds)
    recording = False
    gc_began = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_began
        if phase == "start":
            gc_began = time.perf_counter()
        elif recording:
            pauses.append((info["generation"], time.perf_counter() - gc_began))

    async def probe() -> None:
        while True:
            began = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            if recording:
                lags.append(loop.time() - began - LAG_PROBE_S)
                if window is not None:
                    windows.append(window())

    def open_window() -> None:
        nonlocal recording
        lags.clear()
        windows.clear()
        pauses.clear()
        recording = True
        if profile is not None:
            profiler.enable()

    def close_window() -> None:
        nonlocal recording
        recording = False
        if profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        stats = {"lags": sorted(lags), "pauses": pauses, "windows": windows}
        print("STATS " + json.dumps(stats), flush=True)

    gc.callbacks.append(on_gc)
    prober = asyncio.create_task(probe())
    loop.add_signal_handler(signal.SIGUSR1, open_window)
    loop.add_signal_handler(signal.SIGUSR2, close_window)
    print(f"URL {url}", flush=True)
    await asyncio.Event().wait()
    prober.cancel()


async def serve_nbchat(
    store: str | None,
    sessions: int,
    profile: str | None,
    delta_window_ms: float,
    delta_window_max_ms: float,
) -> None:
    logging.basicConfig(level=logging.WARNING)
    gateway = Gateway(
        token=TOKEN,
        store=RedisStore(store) if store else None,
        limits=GatewayLimits(
            sessions=sessions + 64,
            delta_window_s=delta_window_ms / 1000,
            delta_window_max_s=delta_window_max_ms / 1000,
        ),
    )
    await gateway.start("127.0.0.1", 0)
    freeze_startup_heap()  # as nbchat serve does
    await _serve_until_killed(gateway.url(), profile, lambda: gateway.delta_window.window_s)


def _dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


async def _baseline_connection(websocket: ServerConnection, coalesce_s: float = 0.0) -> None:
    """The baseline: the same frames as nbchat's (welcome, started, one delta per
    token, done), each JSON-encoded and sent as it is due, at the demo's pace. With
    ``coalesce_s``, the tokens that fell due in each such interval go as one delta."""
    loop = asyncio.get_running_loop()
    seq = 0
    streams: set[asyncio.Task[None]] = set()

    async def stream(reply: str, prompt: str, rate: float) -> None:
        nonlocal seq
        began = loop.time()
        tokens = reply_tokens(prompt)
        seq += 1
        await websocket.send(
            _dumps({"type": "started", "seq": seq, "reply": reply, "model": "demo"})
        )
        sent = ticks = 0
        while sent < len(tokens):
            # The next token's time, or (coalescing) the next tick's.
            due = began + (ticks * coalesce_s if coalesce_s else sent / rate)
            await asyncio.sleep(max(due - loop.time(), 0.0))
            ticks += 1
            upto = sent + 1
            if coalesce_s:
                upto = max(upto, min(len(tokens), int((loop.time() - began) * rate) + 1))
            seq += 1
            text = "".join(tokens[sent:upto])
            await websocket.send(
                _dumps({"type": "delta", "seq": seq, "reply": reply, "text": text})
            )
            sent = upto
        seq += 1
        usage = {
            "prompt_tokens": 18,
            "completion_tokens": len(tokens),
            "total_tokens": 18 + len(tokens),
        }
        timing = {"first_token_s": 0.0001, "duration_s": round(loop.time() - began, 6)}
        done = {"type": "done", "seq": seq, "reply": reply, "finish": "stop"}
        await websocket.send(_dumps({**done, "usage": usage, "timing": timing}))

    try:
        async for message in websocket:  # ends when the client goes away
            frame = json.loads(message)
            if frame["type"] == "hello":
                welcome = {"type": "welcome", "session": "s", "last_seq": 0, "models": ["demo"]}
                await websocket.send(_dumps(welcome))
            elif frame["type"] == "start":
                prompt = frame["messages"][-1]["content"]
                rate = float(frame["params"]["tokens_per_s"])
                task = asyncio.create_task(stream(frame["reply"], prompt, rate))
                streams.add(task)
                task.add_done_callback(streams.discard)
    except ConnectionClosed:
        pass  # the load processes drop their connections at the end
    finally:
        for task in streams:
            task.cancel()


async def serve_baseline(profile: str | None, coalesce_ms: float) -> None:
    handler = functools.partial(_baseline_connection, coalesce_s=coalesce_ms / 1000)
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await _serve_until_killed(f"ws://127.0.0.1:{port}/v1/chat", profile)


@dataclass
class Child:
    """A server process this benchmark started."""

    process: subprocess.Popen[str]
    url: str
    log: Any  # a temporary file holding its stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_stats(self) -> dict[str, Any]:
        """The ``STATS`` line the server prints when the window closes."""
        stdout = self.process.stdout
        assert stdout is not None
        found: list[dict[str, Any]] = []

        def read() -> None:
            while got := stdout.readline():
                if got.startswith("STATS "):
                    found.append(json.loads(got[6:]))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(TIMEOUT_S)
        if not found:
            raise RuntimeError("the server did not give its figures")
        return found[0]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def log_summary(self) -> list[str]:
        """The server's log lines by level and message (first line of each), counted."""
        self.log.seek(0)
        counts: Counter[str] = Counter()
        for line in self.log.read().splitlines():
            if line.startswith(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")):
                counts[line[:160]] += 1
        return [f"{n} x {line}" for line, n in counts.most_common(6)]


def start_server(
    kind: str,
    store: str | None,
    args: argparse.Namespace,
    profile: str | None,
    log: Any,
    coalesce_ms: float = 0.0,
) -> Child:
    command = [sys.executable, __file__, "--serve", kind, "--sessions", str(args.sessions)]
    command += ["--server-gc", args.server_gc, "--delta-window-ms", str(args.delta_window_ms)]
    command += ["--delta-window-max-ms", str(args.widest_delta_window_ms)]
    if coalesce_ms:
        command += ["--coalesced-baseline", str(coalesce_ms)]
    if store:
        command += ["--serve-store", store]
    if profile:
        command += ["--serve-profile", profile]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("URL "):
        process.kill()
        log.seek(0)
        raise RuntimeError(f"the {kind} server did not start: {line!r} {log.read()[-2000:]}")
    return Child(process, line.split()[1], log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server on a free loopback port in a temporary directory, no persistence."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-load-redis-") as directory:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        command += ["--save", "", "--appendonly", "no", "--maxclients", "10000"]
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield process, f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait(10)


def warm_up(url: str) -> None:
    """One session, greeted then closed: what a first connection loads is loaded."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with sync_connect(url, additional_headers=headers, proxy=None) as websocket:
        websocket.send(json.dumps({"type": "hello", "client": "bench_load"}))
        websocket.recv(10)


# --- one run -----------------------------------------------------------------------


@dataclass
class Result:
    label: str  # baseline, memory, redis
    sessions: int  # asked for
    connected: int
    workers: int
    seconds: float
    rate: float
    tokens: int = 0
    frames: int = 0
    replies: int = 0
    short_replies: int = 0
    dropped: int = 0
    stalls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # cores
    worker_cpu: list[float] = field(default_factory=list)
    worker_lag: list[float] = field(default_factory=list)  # sorted, all load processes
    redis_cpu: float | None = None
    machine_busy: float = 0.0  # cores, all processes and the kernel's softirq
    softirq: float = 0.0  # cores
    steal: float = 0.0  # cores
    cores: int = 1
    rss_base_kb: int = 0
    rss_idle_kb: int = 0
    rss_load_kb: int = 0
    redis_rss_kb: int | None = None
    profile: str | None = None
    server_log: list[str] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)  # sorted
    delta_windows: list[float] = field(default_factory=list)  # the gateway's, sampled
    gc_pauses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def delivered(self) -> float:
        return self.tokens / self.seconds

    @property
    def demanded(self) -> float:
        return self.sessions * self.rate

    @property
    def idle_kb_per_session(self) -> float:
        return (self.rss_idle_kb - self.rss_base_kb) / max(1, self.connected)

    @property
    def cpu_per_token_us(self) -> float:
        return self.server_cpu * self.seconds / max(1, self.tokens) * 1e6

    @property
    def other_cpu(self) -> float:
        ours = self.server_cpu + sum(self.worker_cpu) + (self.redis_cpu or 0.0)
        return max(0.0, self.machine_busy - self.softirq - ours)

    @property
    def clean(self) -> bool:
        return not (
            self.errors or self.failures or self.dropped or self.short_replies or self.stalls
        )


def measure(label: str, args: argparse.Namespace, tokens: int) -> Result:
    """Start the server (and Redis), connect, stream, and take the figures."""
    with contextlib.ExitStack() as stack:
        store = None
        redis_pid = None
        if label == "redis":
            redis_process, store = stack.enter_context(redis_server())
            redis_pid = redis_process.pid
        profile = None
        bare = label in ("baseline", "coalesced")
        if args.profile is not None and not bare:
            profile = str(Path(args.profile) / f"bench_load_{label}.prof")
        coalesce_ms = args.coalesced_baseline if label == "coalesced" else 0.0
        log = stack.enter_context(tempfile.TemporaryFile("w+"))
        kind = "baseline" if bare else "nbchat"
        server = start_server(kind, store, args, profile, log, coalesce_ms)
        stack.callback(server.stop)
        warm_up(server.url)
        time.sleep(0.5)
        result = Result(label, args.sessions, 0, args.workers, args.seconds, args.tokens_per_s)
        result.cores = os.cpu_count() or 1
        result.rss_base_kb = rss_kb(server.pid)

        context = multiprocessing.get_context("spawn")
        pipes: list[Connection] = []
        per_worker = [
            args.sessions // args.workers + (1 if w < args.sessions % args.workers else 0)
            for w in range(args.workers)
        ]
        first = 0
        workers = []
        for count in per_worker:
            plan = WorkerPlan(
                url=server.url,
                token=TOKEN,
                first=first,
                sessions=count,
                total=args.sessions,
                tokens_per_s=args.tokens_per_s,
                prompt=PROMPT,
                reply_tokens=tokens,
                count_tokens=label == "coalesced" or (not bare and args.delta_window_ms > 0),
                compression=args.compression == "deflate",
            )
            first += count
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_main, args=(child_end, plan), daemon=True)
            process.start()
            workers.append(process)
            pipes.append(parent_end)
        stack.callback(_kill_all, workers)

        for pipe in pipes:
            message = _receive(pipe)
            result.connected += message[1]
            result.failures += message[2]
        time.sleep(1.0)
        result.rss_idle_kb = rss_kb(server.pid)

        stagger = tokens / args.tokens_per_s  # one reply's length
        go = time.monotonic() + 0.5
        w0 = go + stagger + STAGGER_EXTRA_S
        w1 = w0 + args.seconds
        for pipe in pipes:
            pipe.send((go, stagger, w0, w1))
        pids = [server.pid] + [p.pid for p in workers if p.pid is not None]
        if redis_pid is not None:
            pids.append(redis_pid)

        time.sleep(max(0.0, w0 - time.monotonic()))
        before = [cpu_s(pid) for pid in pids]
        machine_before = machine_ticks()
        began = time.monotonic()
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(max(0.0, w1 - time.monotonic()))
        after = [cpu_s(pid) for pid in pids]
        machine_after = machine_ticks()
        elapsed = time.monotonic() - began
        result.rss_load_kb = rss_kb(server.pid)
        if redis_pid is not None:
            result.redis_rss_kb = rss_kb(redis_pid)
        os.kill(server.pid, signal.SIGUSR2)
        stats = server.read_stats()
        result.loop_lag = stats["lags"]
        result.delta_windows = stats.get("windows", [])
        result.gc_pauses = [(int(g), float(s)) for g, s in stats["pauses"]]
        result.profile = profile
        result.server_log = server.log_summary()

        used = [(a - b) / elapsed for a, b in zip(after, before, strict=True)]
        result.server_cpu = used[0]
        result.worker_cpu = used[1 : 1 + len(workers)]
        if redis_pid is not None:
            result.redis_cpu = used[-1]
        busy, softirq, steal, total = (
            a - b for a, b in zip(machine_after, machine_before, strict=True)
        )
        result.machine_busy = busy / max(1, total) * result.cores
        result.softirq = softirq / max(1, total) * result.cores
        result.steal = steal / max(1, total) * result.cores

        for pipe in pipes:
            figures = _receive(pipe)[1]
            result.tokens += figures["tokens"]
            result.frames += figures["frames"]
            result.replies += figures["replies"]
            result.short_replies += figures["short_replies"]
            result.dropped += figures["dropped"]
            result.stalls += figures["stalls"]
            result.worker_lag += figures["lag"]
            result.errors.update(figures["errors"])
            result.first_token += figures["first_token"]
            result.lateness += figures["lateness"]
        for process in workers:
            process.join(10)
        result.worker_lag.sort()
        result.first_token.sort()
        result.lateness.sort()
        return result


def _kill_all(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()


def _receive(pipe: Connection) -> Any:
    if not pipe.poll(TIMEOUT_S):
        raise RuntimeError("a load process did not answer")
    message = pipe.recv()
    if message[0] == "failed":
        raise RuntimeError(f"a load process failed: {message[1]}")
    return message


# --- the report ----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def describe(result: Result) -> None:
    lat, first = result.lateness, result.first_token
    workers = ", ".join(f"{c:.0%}" for c in result.worker_cpu)
    redis = ""
    if result.redis_cpu is not None:
        redis = (
            f"; redis-server {result.redis_cpu:.0%} of a core, "
            f"RSS {(result.redis_rss_kb or 0) / 1024:.0f} MB"
        )
    print(
        f"{result.label}: {result.connected}/{result.sessions} sessions at "
        f"{result.rate:g} tokens/s, {result.seconds:g} s window"
    )
    print(
        f"  delivered {result.delivered:,.0f} tokens/s of {result.demanded:,.0f} demanded "
        f"({result.delivered / result.demanded:.1%}); {result.replies} replies done"
    )
    print(
        f"  first token p50 {ms(percentile(first, 50))} ms, p99 {ms(percentile(first, 99))} ms;"
        f" delta lateness p50 {ms(percentile(lat, 50))} ms, p99 {ms(percentile(lat, 99))} ms,"
        f" max {ms(lat[-1] if lat else float('nan'))} ms"
    )
    print(
        f"  server CPU {result.server_cpu:.0%} of a core = {result.cpu_per_token_us:.0f} us "
        f"per token ({result.frames / result.seconds:,.0f} delta frames/s); "
        f"RSS {result.rss_base_kb / 1024:.0f} MB before, "
        f"+{result.idle_kb_per_session:.1f} kB per idle session, "
        f"{result.rss_load_kb / 1024:.0f} MB under load{redis}"
    )
    lag = result.loop_lag
    full = [t for g, t in result.gc_pauses if g == 2]
    print(
        f"  server loop lag p50 {ms(percentile(lag, 50))} ms, p99 {ms(percentile(lag, 99))} ms, "
        f"max {ms(lag[-1] if lag else float('nan'))} ms; GC {len(result.gc_pauses)} pauses, "
        f"{ms(sum(t for _, t in result.gc_pauses))} ms in all; {len(full)} full (gen 2), "
        f"longest {ms(max(full, default=0.0))} ms"
    )
    print(
        f"  load: {len(result.worker_cpu)} processes, busy {workers} of a core, loop lag "
        f"p99 {ms(percentile(result.worker_lag, 99))} ms; machine "
        f"{result.machine_busy:.2f} of {result.cores} cores busy (kernel softirq "
        f"{result.softirq:.0%}, other processes {result.other_cpu:.0%} of a core), hypervisor "
        f"steal {result.steal:.0%} of a core"
    )
    problems = []
    if result.failures:
        problems.append(f"{len(result.failures)}+ sessions failed to connect: {result.failures}")
    if result.dropped:
        problems.append(f"{result.dropped} connections dropped by the server")
    if result.errors:
        problems.append(f"errors {dict(result.errors)}")
    if result.short_replies:
        problems.append(f"{result.short_replies} replies with missing deltas")
    if result.stalls:
        problems.append(f"{result.stalls} stalls (a session {STALL_S:g} s without a delta)")
    if problems:
        print("  PROBLEMS: " + "; ".join(problems))
    if result.server_log:
        print("  server log (most frequent lines, counted):")
        for line in result.server_log:
            print(f"    {line}")


def _windows(r: Result) -> str:
    if not r.delta_windows:
        return "-"
    mean = statistics.fmean(r.delta_windows)
    return f"{mean * 1000:.0f}/{max(r.delta_windows) * 1000:.0f}"


def table(results: list[Result]) -> None:
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("sessions connected", lambda r: f"{r.connected}"),
        ("delivered tokens/s", lambda r: f"{r.delivered:,.0f}"),
        ("demanded tokens/s", lambda r: f"{r.demanded:,.0f}"),
        ("delivered / demanded", lambda r: f"{r.delivered / r.demanded:.1%}"),
        ("first token p50 ms", lambda r: ms(percentile(r.first_token, 50))),
        ("first token p99 ms", lambda r: ms(percentile(r.first_token, 99))),
        ("delta lateness p50 ms", lambda r: ms(percentile(r.lateness, 50))),
        ("delta lateness p99 ms", lambda r: ms(percentile(r.lateness, 99))),
        ("server CPU, % of a core", lambda r: f"{r.server_cpu:.0%}"),
        ("delta frames/s", lambda r: f"{r.frames / r.seconds:,.0f}"),
        ("server CPU us / token", lambda r: f"{r.cpu_per_token_us:.0f}"),
        ("delta window mean/max ms", _windows),
        ("server loop lag p99 ms", lambda r: ms(percentile(r.loop_lag, 99))),
        ("server loop lag max ms", lambda r: ms(r.loop_lag[-1] if r.loop_lag else 0.0)),
        ("server GC pause max ms", lambda r: ms(max((t for _, t in r.gc_pauses), default=0))),
        ("redis-server CPU", lambda r: "-" if r.redis_cpu is None else f"{r.redis_cpu:.0%}"),
        ("RSS kB / idle session", lambda r: f"{r.idle_kb_per_session:.1f}"),
        ("RSS under load MB", lambda r: f"{r.rss_load_kb / 1024:.0f}"),
        ("load processes busy", lambda r: "/".join(f"{c:.0%}" for c in r.worker_cpu)),
        ("load loop lag p99 ms", lambda r: ms(percentile(r.worker_lag, 99))),
        ("machine busy, cores", lambda r: f"{r.machine_busy:.2f}/{r.cores}"),
        ("  of which softirq", lambda r: f"{r.softirq:.2f}"),
        ("  of which others", lambda r: f"{r.other_cpu:.2f}"),
        ("hypervisor steal, cores", lambda r: f"{r.steal:.2f}"),
        ("errors/drops/stalls", lambda r: f"{_errors(r)}/{r.dropped}/{r.stalls}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    print(" " * width + "".join(f"{r.label:>12}" for r in results))
    for name, cell in rows:
        print(f"{name:<{width}}" + "".join(f"{cell(r):>12}" for r in results))


def _errors(result: Result) -> int:
    return sum(result.errors.values()) + len(result.failures) + result.short_replies


def targets(results: list[Result]) -> None:
    print("\ntargets (issue 12):")
    for r in results:
        if r.label not in TARGET_LATENESS_S:
            continue  # a baseline
        where = "" if r.sessions >= TARGET_SESSIONS else f" [at {r.sessions} sessions only]"
        full = r.sessions >= TARGET_SESSIONS
        kept = r.delivered >= DELIVERED_AT_LEAST * r.demanded and r.clean
        met = "MET" if kept and full else "MISSED"
        print(
            f"  {r.label:>6}: {TARGET_SESSIONS:,} sessions, delivered = demanded: {met} "
            f"({r.connected} sessions, {r.delivered / r.demanded:.1%} delivered"
            f"{'' if r.clean else ', with problems'})"
        )
        p99 = percentile(r.lateness, 99)
        bound = TARGET_LATENESS_S[r.label]
        print(
            f"  {r.label:>6}: delta lateness p99 < {bound * 1000:.0f} ms: "
            f"{'MET' if p99 < bound else 'MISSED'} ({ms(p99)} ms){where}"
        )
        per = r.idle_kb_per_session
        print(
            f"  {r.label:>6}: < {TARGET_IDLE_KB:.0f} kB per idle session: "
            f"{'MET' if per < TARGET_IDLE_KB else 'MISSED'} ({per:.1f} kB){where}"
        )


# --- the profile -----------------------------------------------------------------

IDLE = "(idle: epoll wait)"


def _category(key: tuple[str, int, str]) -> str | None:
    """What a function's own time is spent on; None for a built-in that counts as its
    caller's."""
    filename, _, name = key
    if filename == "~":
        if "epoll" in name or "'select'" in name:
            return IDLE
        if "_json" in name or "encode_basestring" in name:
            return "JSON encode/decode"
        if "zlib" in name:
            return "permessage-deflate (zlib)"
        if "_socket.socket" in name:
            return "socket send/recv syscalls"
        return None
    path = filename.replace("\\", "/")
    for marker, category in (
        ("/json/", "JSON encode/decode"),
        ("nbchat/protocol.py", "protocol.encode/decode (field walk, checks)"),
        ("/dataclasses.py", "protocol.encode/decode (field walk, checks)"),
        ("permessage_deflate", "permessage-deflate (zlib)"),
        ("/websockets/", "websockets framing, send, recv"),
        ("nbchat/session.py", "session log (GatewaySession)"),
        ("gateway/shared.py", "shared store glue (shared.py)"),
        ("gateway/redis_store.py", "redis client (redis-py, redis_store)"),
        ("/redis/", "redis client (redis-py, redis_store)"),
        ("prometheus_client", "metrics (prometheus_client)"),
        ("gateway/metrics.py", "metrics (prometheus_client)"),
        ("providers/demo.py", "demo provider"),
        ("gateway/server.py", "gateway server (emit, queue, writer)"),
        ("/asyncio/", "asyncio event loop, tasks, timers"),
        ("selectors.py", "asyncio event loop, tasks, timers"),
        ("heapq", "asyncio event loop, tasks, timers"),
    ):
        if marker in path:
            return category
    return "other"


def breakdown(path: str, deltas: int) -> None:
    """Own time by category (a built-in's goes to its callers'), and the top functions."""
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    spent: Counter[str] = Counter()
    for key, (_, _, own, _, callers) in raw.items():
        category = _category(key)
        if category is not None:
            spent[category] += own
            continue
        through = sum(c[2] for c in callers.values())
        if not callers or through <= 0:
            spent["other"] += own
            continue
        for caller, c in callers.items():
            spent[_category(caller) or "other"] += own * c[2] / through
    busy = sum(t for c, t in spent.items() if c != IDLE)
    print(f"  where the gateway's busy time goes ({busy:.2f} s profiled, {deltas:,} deltas):")
    for category, seconds in spent.most_common():
        if category == IDLE:
            continue
        print(
            f"    {category:<46} {seconds / busy:6.1%}  "
            f"{seconds / max(1, deltas) * 1e6:6.1f} us/delta"
        )
    print(f"    {IDLE:<46} {spent[IDLE]:.2f} s")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(path, stream=out).strip_dirs().sort_stats(order).print_stats(25)
        text = out.getvalue()
        start = text.find("   ncalls")
        print(f"  top 25 by {order}:")
        print("\n".join("    " + line for line in text[start:].rstrip().splitlines()))


# --- main ------------------------------------------------------------------------


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=None, help="default 1000 (--quick 100)")
    parser.add_argument(
        "--tokens-per-s", type=float, default=30.0, help="each session's pace (default 30)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="window (default 20; --quick 5)"
    )
    parser.add_argument(
        "--store",
        choices=["memory", "redis", "both"],
        default="both",
        help="the gateway's session store (default both: one run each)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load processes (default 2)")
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="what the clients offer: permessage-deflate, as nbchat's client does (default)",
    )
    parser.add_argument(
        "--server-gc",
        choices=["default", "off"],
        default="default",
        help="experiment: 'off' freezes then disables the garbage collector in the server "
        "processes, to show what its pauses cost (default: Python's default)",
    )
    parser.add_argument(
        "--delta-window-ms",
        type=float,
        default=SERVE_DELTA_WINDOW_MS,
        metavar="MS",
        help="the gateway's delta window (nbchat serve --delta-window-ms): text arriving "
        "within MS of a reply's last delta goes with the next one (default %(default)s, "
        "nbchat serve's)",
    )
    parser.add_argument(
        "--delta-window-max-ms",
        type=float,
        default=None,
        metavar="MS",
        help="how wide the window may grow while the gateway falls behind (nbchat serve "
        "--delta-window-max-ms, with the same default; equal to --delta-window-ms: a "
        "fixed window)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare server")
    parser.add_argument(
        "--coalesced-baseline",
        type=float,
        default=None,
        metavar="MS",
        help="experiment: also run the bare server sending the tokens due every MS "
        "milliseconds as one delta frame (what coalescing could give)",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--profile",
        nargs="?",
        const=tempfile.gettempdir(),
        default=None,
        metavar="DIR",
        help="profile the gateway (cProfile, the window only); .prof files go to DIR",
    )
    parser.add_argument("--serve", choices=["nbchat", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--serve-store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-profile", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions is None:
        args.sessions = 100 if args.quick else 1000
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 20.0
    args.widest_delta_window_ms = widest_delta_window_ms(
        args.delta_window_ms, args.delta_window_max_ms
    )
    return args


def main() -> None:
    args = _arguments()
    raise_fd_limit()
    if args.serve and args.server_gc == "off":
        gc.freeze()
        gc.disable()
    if args.serve == "nbchat":
        asyncio.run(
            serve_nbchat(
                args.serve_store,
                args.sessions,
                args.serve_profile,
                args.delta_window_ms,
                args.widest_delta_window_ms,
            )
        )
        return
    if args.serve == "baseline":
        asyncio.run(serve_baseline(args.serve_profile, args.coalesced_baseline or 0.0))
        return
    tokens = len(reply_tokens(PROMPT))
    labels = {"memory": ["memory"], "redis": ["redis"], "both": ["memory", "redis"]}[args.store]
    if not args.no_baseline:
        labels.append("baseline")
    if args.coalesced_baseline:
        labels.append("coalesced")
    print(
        f"bench_load: {args.sessions} sessions x {args.tokens_per_s:g} tokens/s, replies of "
        f"{tokens} tokens, {args.seconds:g} s window, {args.workers} load processes, "
        f"compression {args.compression}, server GC {args.server_gc}, "
        f"gateway delta window {args.delta_window_ms:g} ms (up to "
        f"{args.widest_delta_window_ms:g} ms under load), "
        f"{os.cpu_count()} cores; "
        f"servers: {', '.join(labels)}"
    )
    results = []
    for label in labels:
        result = measure(label, args, tokens)
        describe(result)
        if result.profile:
            print("  (profiled run: its figures are inflated by cProfile)")
            breakdown(result.profile, result.frames)
        results.append(result)
    table(results)
    targets(results)


if __name__ == "__main__":
    main()
