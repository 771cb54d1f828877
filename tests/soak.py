"""The random chaos soak: several chats converse through a :class:`FaultyProxy` that
cuts (mid-frame included) and stalls the link at random moments drawn from a seed, and
cuts one new connection in ten right after its welcome; half the replies are paused
and resumed on the way, so control frames are often in flight when a cut lands.
Run by the stress command (tests/stress/) over many seeds, and by the resume
benchmark for its timing figures."""

from __future__ import annotations

import difflib
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from nbchat import Chat
from nbchat.backoff import Backoff
from nbchat.gateway import EmbeddedGateway

from faults import FaultyProxy

# How long one reply of the soak may take before it counts as hung: far beyond its
# length at its pace plus every reconnect the chaos causes (a liveness bound).
REPLY_BOUND_S = 60.0


def lost_and_duplicated(expected: str, got: str) -> tuple[int, int]:
    """Characters of ``expected`` missing from ``got``, and characters ``got`` has extra."""
    lost = duplicated = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, expected, got).get_opcodes():
        if op in ("delete", "replace"):
            lost += i2 - i1
        if op in ("insert", "replace"):
            duplicated += j2 - j1
    return lost, duplicated


@dataclass
class SoakResult:
    seed: int
    planned: int = 0
    replies: int = 0
    hung: int = 0  # replies that did not end within REPLY_BOUND_S
    not_stop: int = 0  # replies that ended some other way than finish == "stop"
    lost: int = 0
    duplicated: int = 0
    cuts: int = 0
    stalls: int = 0
    connections: int = 0
    resumes: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ends: list[str] = field(default_factory=list)  # how replies that did not stop ended

    @property
    def clean(self) -> bool:
        counts = (self.hung, self.not_stop, self.lost, self.duplicated)
        return counts == (0, 0, 0, 0) and self.replies == self.planned

    def line(self) -> str:
        resumes = sorted(self.resumes)
        p50 = statistics.median(resumes) if resumes else 0.0
        return (
            f"seed {self.seed}: {self.replies}/{self.planned} replies, {self.cuts} cuts, "
            f"{self.stalls} stalls, "
            f"{self.connections} connections, {len(resumes)} resumes (p50 {p50:.2f} s); "
            f"hung {self.hung}, not stop {self.not_stop}, lost {self.lost}, "
            f"duplicated {self.duplicated}; {self.seconds:.1f} s"
            + "".join(f"\n  ended: {end}" for end in self.ends[:5])
        )


def prompts(chat_index: int, turns: int) -> list[str]:
    return [f"chat {chat_index}, question {t}: " + "tell me more " * 3 for t in range(turns)]


def run_soak(
    gateway: EmbeddedGateway | list[EmbeddedGateway],
    seed: int,
    *,
    chats: int = 8,
    turns: int = 4,
    min_cuts: int = 100,
    stall_every: int = 30,
    tokens_per_s: float = 150,
) -> SoakResult:
    """Converse through chaos; compare every reply with an uninterrupted run.

    With several gateways (sharing a session store), each has its own faulty proxy and
    every chat is given all of them (``Chat(url=[...])``): each cut moves a chat to the
    next gateway, which resumes its session from the store."""
    gateways = gateway if isinstance(gateway, list) else [gateway]
    result = SoakResult(seed=seed, planned=chats * turns)
    began = time.monotonic()
    expected: list[list[str]] = []
    with Chat(url=gateways[0].url, token=gateways[0].token, tokens_per_s=0) as direct:
        for i in range(chats):
            direct.clear()
            expected.append([direct.send(p).wait(REPLY_BOUND_S).text for p in prompts(i, turns)])

    proxies = [
        FaultyProxy(g.gateway.port, seed=seed + n, welcome_cut_rate=0.1).start()
        for n, g in enumerate(gateways)
    ]
    backoff = Backoff(initial_s=0.1, cap_s=1.0, give_up_after_s=None)
    urls = [proxy.url() for proxy in proxies]
    talkers = [
        Chat(
            url=urls if len(urls) > 1 else urls[0],
            token=gateways[0].token,
            tokens_per_s=tokens_per_s,
            heartbeat_s=0.5,
            backoff=backoff,
        )
        for _ in range(chats)
    ]
    texts: list[list[str | None]] = [[] for _ in range(chats)]
    lock = threading.Lock()

    def converse(i: int) -> None:
        pauses = random.Random(seed * 1000 + i)
        for prompt in prompts(i, turns):
            reply = talkers[i].send(prompt)
            if pauses.random() < 0.5:
                # Pause and resume mid-reply: control frames in flight when cuts hit.
                time.sleep(pauses.uniform(0.05, 0.4))
                reply.pause()
                time.sleep(pauses.uniform(0.05, 0.3))
                reply.resume()
            try:
                reply.wait(REPLY_BOUND_S)
            except TimeoutError:
                with lock:
                    result.hung += 1
                reply.stop()
                texts[i].append(None)
                continue
            with lock:
                result.replies += 1
                result.not_stop += reply.finish != "stop"
                if reply.finish != "stop":
                    result.ends.append(f"{reply.finish} {reply.error_code}: {reply.error}")
            texts[i].append(reply.text)

    threads = [threading.Thread(target=converse, args=(i,), daemon=True) for i in range(chats)]
    for thread in threads:
        thread.start()
    rng = random.Random(seed)
    try:
        # Cut until every chat is done and at least min_cuts were made (cutting idle
        # links too); now and then stall instead: half-open, only the heartbeat notices.
        next_stall = stall_every

        def cuts() -> int:
            return sum(p.cuts for p in proxies)

        while any(t.is_alive() for t in threads) or cuts() < min_cuts:
            time.sleep(rng.uniform(0.01, 0.15))
            proxy = rng.choice(proxies)
            if cuts() >= next_stall:
                next_stall += stall_every
                proxy.stall(rng.uniform(0.6, 1.5))
                time.sleep(1.6)
            proxy.cut()
            if cuts() > 20 * min_cuts:
                break  # a chat that never finishes is counted as hung below
        for thread in threads:
            thread.join(REPLY_BOUND_S * turns)
    finally:
        for chat in talkers:
            result.resumes += list(chat._conversation.connection.resumes)
            chat.close()
        for proxy in proxies:
            result.cuts += proxy.cuts
            result.stalls += proxy.stalls
            result.connections += proxy.connections
            proxy.close()
    for i in range(chats):
        for want, got in zip(expected[i], texts[i], strict=False):  # a hung thread has fewer
            if got is None:
                continue
            missing, extra = lost_and_duplicated(want, got)
            result.lost += missing
            result.duplicated += extra
    result.seconds = time.monotonic() - began
    return result
