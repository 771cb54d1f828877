"""``nbchat serve`` as an admin runs it: tokens (and a token file), browser origins, TLS,
the refusal to listen on a network without a token, a drain on SIGTERM, /healthz and
/metrics. Real processes and sockets on loopback; nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from nbchat.gateway import Gateway
from nbchat.gateway.auth import (
    AuthSetupError,
    is_loopback,
    origin_refusal,
    read_token_file,
    token_matches,
)
from nbchat.gateway.server import CLOSE_GRACE_S

from timeouts import TIMEOUT

# A served process imports the provider SDKs before anything else (seconds on a busy
# machine): its start and its refusals get this long.
STARTUP = 3 * TIMEOUT

# Variables that would change what a served gateway offers or which token it wants.
_SERVE_ENV_DROPPED = (
    "NBCHAT_TOKEN",
    "NBCHAT_CONFIG",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
)


class Served:
    """A ``python -m nbchat serve`` process on a free port, its output collected."""

    def __init__(self, *args: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _SERVE_ENV_DROPPED}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbchat", "serve", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        out, err = self.process.stdout, self.process.stderr
        threading.Thread(target=self._pump, args=(out, self._lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(err, self._stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, sink: Callable[[str | None], None]) -> None:
        for line in stream:
            sink(line)
        sink(None)

    @property
    def stderr(self) -> str:
        return "".join(line for line in list(self._stderr) if line is not None)

    def url(self) -> str:
        """The URL the process prints once it listens."""
        deadline = time.monotonic() + STARTUP
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the gateway did not start; stderr:\n{self.stderr}") from None
            if line is None:
                self.process.wait(TIMEOUT)
                raise AssertionError(
                    f"the gateway exited ({self.process.returncode}); stderr:\n{self.stderr}"
                )
            if line.startswith("nbchat gateway listening on "):
                return line.split()[-1]

    def wait(self, timeout: float = STARTUP) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``nbchat serve`` processes (in ``tmp_path``); each is killed at the end."""
    started: list[Served] = []

    def start(*args: str) -> Served:
        served = Served(*args, cwd=tmp_path)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


def refused(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``nbchat serve`` expecting it to refuse: its exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVE_ENV_DROPPED}
    done = subprocess.run(
        [sys.executable, "-m", "nbchat", "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=STARTUP,
        check=False,
    )
    return done.returncode, done.stderr


# --- raw clients ---------------------------------------------------------------------


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[no-any-return]


async def hello(
    url: str,
    token: str | None = None,
    *,
    origin: str | None = None,
    context: ssl.SSLContext | None = None,
    **fields: Any,
) -> tuple[ClientConnection, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await connect(
        url,
        proxy=None,
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        ssl=context,
        open_timeout=TIMEOUT,
    )
    await ws.send(json.dumps({"type": "hello", "client": "serve-test", **fields}))
    return ws, await recv(ws)


async def start_reply(ws: ClientConnection, reply: str, tokens_per_s: float) -> None:
    await ws.send(
        json.dumps(
            {
                "type": "start",
                "reply": reply,
                "model": "demo",
                "messages": [{"role": "user", "content": "hi"}],
                "params": {"tokens_per_s": tokens_per_s},
            }
        )
    )


async def read_reply(ws: ClientConnection, reply: str) -> tuple[str, int]:
    """The reply's text and the number of its deltas, read up to its done (stop)."""
    text, deltas = "", 0
    while True:
        frame = await recv(ws)
        if frame.get("reply") != reply:
            continue
        if frame["type"] == "delta":
            text += frame["text"]
            deltas += 1
        if frame["type"] == "done":
            assert frame["finish"] == "stop", frame
            return text, deltas


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the gateway closes the link: its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        await read_forever(ws)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


async def read_forever(ws: ClientConnection) -> None:
    while True:
        await recv(ws)


def http_get(
    url: str, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, str, dict[str, str]]:
    """Status, body and headers; never through an HTTP proxy."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def base_of(url: str) -> str:
    """``http(s)://host:port`` of a gateway's ``ws(s)://host:port/v1/chat``."""
    scheme, rest = url.split("://", 1)
    return ("https" if scheme == "wss" else "http") + "://" + rest.split("/", 1)[0]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return page[(name, frozenset(labels.items()))]


async def scrape(
    base: str, token: str | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body, headers = await asyncio.to_thread(http_get, base + "/metrics", token)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(body)


async def eventually(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- the pure checks -------------------------------------------------------------------


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "10.0.0.1", "example.org", "localhost."):
        assert not is_loopback(host), host


def test_token_file_format(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("# the team\n\nalice-Tok3n\n  bob-token  \n# carol left\n")
    assert read_token_file(path) == ["alice-Tok3n", "bob-token"]
    path.write_text("# nobody yet\n\n")
    with pytest.raises(AuthSetupError, match="holds no tokens"):
        read_token_file(path)
    path.write_text("good-token\nsecret with spaces\n")
    with pytest.raises(AuthSetupError, match="line 2 of token file") as info:
        read_token_file(path)
    assert "secret" not in str(info.value)  # a token is never repeated in a message
    with pytest.raises(AuthSetupError, match="does not exist"):
        read_token_file(tmp_path / "missing.txt")


def test_token_and_origin_checks() -> None:
    assert token_matches("Bearer b", ["a", "b"])
    assert not token_matches("Bearer c", ["a", "b"])
    assert not token_matches("b", ["a", "b"])
    assert not token_matches("", ["a"])
    assert origin_refusal(None, ["https://lab.example.org"]) is None  # not a browser
    assert origin_refusal("https://evil.example", []) is None  # no list: no check
    assert origin_refusal("https://LAB.example.org/", ["https://lab.example.org"]) is None
    refusal = origin_refusal("https://evil.example", ["https://lab.example.org"])
    assert refusal is not None
    assert "https://evil.example is not allowed" in refusal
    assert "--allow-origin" in refusal


# --- refusing to start -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "files", "says"),
    [
        (
            ["--host", "0.0.0.0"],
            {},
            ["refusing to listen on 0.0.0.0 without a token", "--token-file", "--insecure"],
        ),
        (["--token-file", "missing.txt"], {}, ["token file 'missing.txt' does not exist"]),
        (["--token-file", "empty.txt"], {"empty.txt": "# none\n\n"}, ["holds no tokens"]),
        (["--token", "t", "--keyfile", "key.pem"], {}, ["--keyfile needs --certfile"]),
        (
            ["--token", "t", "--certfile", "cert.pem"],
            {"cert.pem": "not a certificate\n"},
            ["cannot use certificate 'cert.pem'"],
        ),
    ],
)
def test_serve_refuses_to_start_and_says_why(
    tmp_path: Path, args: list[str], files: dict[str, str], says: list[str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    began = time.monotonic()
    code, stderr = refused(*args, cwd=tmp_path)
    assert code == 2, stderr
    assert time.monotonic() - began < STARTUP  # refused, not left listening
    assert stderr.startswith("nbchat serve: "), stderr
    for text in says:
        assert text in stderr, stderr
    assert "Traceback" not in stderr


async def test_a_network_address_needs_a_token_or_insecure(
    serve: Callable[..., Served],
) -> None:
    served = serve("--host", "0.0.0.0", "--insecure")
    url = served.url()
    assert url.startswith("ws://0.0.0.0:")
    port = url.rsplit(":", 1)[1].split("/")[0]
    ws, welcome = await hello(f"ws://127.0.0.1:{port}/v1/chat")
    assert welcome["type"] == "welcome"
    await ws.close()
    # With a token it starts too, and warns that tokens would travel in clear text.
    tokened = serve("--host", "0.0.0.0", "--token", "net-token")
    tokened.url()
    for process in (served, tokened):
        process.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait) == 0
    assert "tokens will travel unencrypted" in tokened.stderr
    assert "net-token" not in tokened.stderr


# --- tokens, sessions and origins through the command line -----------------------------


async def test_token_file_origins_and_session_owners(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    (tmp_path / "tokens.txt").write_text("# team\nalice-secret-1\n\n# bob\nbob-secret-2\n")
    served = serve(
        "--token-file",
        "tokens.txt",
        "--allow-origin",
        "https://lab.example.org",
        "--allow-origin",
        "http://localhost:8888",
        "--log-level",
        "debug",
    )
    url = served.url()
    # No token, a wrong one, or a token that is not the whole header value: 401.
    for token in (None, "wrong", "alice-secret"):
        with pytest.raises(InvalidStatus) as info:
            await hello(url, token)
        assert info.value.response.status_code == 401, token
        assert info.value.response.body == b"missing or wrong token\n"
    # A browser page from an origin not listed: 403, whatever its token.
    with pytest.raises(InvalidStatus) as info:
        await hello(url, "alice-secret-1", origin="https://evil.example")
    assert info.value.response.status_code == 403
    assert b"origin https://evil.example is not allowed" in info.value.response.body
    # A listed origin, or no Origin at all (not a browser), with a token: welcome.
    alice, welcome = await hello(url, "alice-secret-1", origin="http://localhost:8888")
    assert welcome["type"] == "welcome"
    bob, other = await hello(url, "bob-secret-2")
    assert other["type"] == "welcome"
    await bob.close()
    # Bob cannot resume Alice's session: unauthorized, then closed.
    bob, refusal = await hello(url, "bob-secret-2", session=welcome["session"], last_seq=0)
    assert refusal["type"] == "error"
    assert refusal["code"] == "unauthorized"
    assert await closed_with(bob) == (1008, "unauthorized")
    # Alice still holds it, and can resume it on a new link.
    await start_reply(alice, "a-1", 0)
    text, _ = await read_reply(alice, "a-1")
    again, resumed = await hello(url, "alice-secret-1", session=welcome["session"], last_seq=0)
    assert resumed["resumed"] is True
    assert (await read_reply(again, "a-1"))[0] == text  # replayed from the session log
    await again.close()
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.wait) == 0
    # Tokens are never logged, even at debug level (websockets logs every header).
    log = served.stderr
    assert "Authorization: [redacted]" in log
    for secret in ("alice-secret-1", "bob-secret-2"):
        assert secret not in log


# --- TLS ----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return cert, key


async def test_wss_end_to_end_with_a_self_signed_certificate(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    served = serve("--certfile", str(cert), "--keyfile", str(key), "--token", "tls-token")
    url = served.url()
    assert url.startswith("wss://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    ws, welcome = await hello(url, "tls-token", context=trusting)
    assert welcome["type"] == "welcome"
    await start_reply(ws, "r-tls", 0)
    text, deltas = await read_reply(ws, "r-tls")
    assert text.startswith("**Demo reply.**")
    assert deltas >= 2  # streamed: the first token at once, the rest coalesced (50 ms)
    await ws.close()
    # The HTTP side is on TLS too.
    base = base_of(url)
    assert base.startswith("https://")
    health = await asyncio.to_thread(http_get, base + "/healthz", None, trusting)
    assert health[:2] == (200, "ok\n")
    status, page, _ = await asyncio.to_thread(http_get, base + "/metrics", "tls-token", trusting)
    assert status == 200
    assert value(samples(page), "nbchat_replies_ended_total", finish="stop") == 1
    # A client that does not trust the certificate, or speaks plain ws://, gets nowhere.
    with pytest.raises(ssl.SSLCertVerificationError):
        await hello(url, "tls-token", context=ssl.create_default_context())
    with pytest.raises(InvalidHandshake):  # TLS bytes are no HTTP response
        await hello(url.replace("wss://", "ws://", 1), "tls-token")
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.wait) == 0


# --- drain on SIGTERM ---------------------------------------------------------------------
# (With a shared store the drain closes clients with 1012 and another gateway delivers
# the rest: tests/test_serve_team.py.)


async def wait_draining(base: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (await asyncio.to_thread(http_get, base + "/healthz"))[:2] != (503, "draining\n"):
        assert time.monotonic() < deadline, "the gateway never said it was draining"
        await asyncio.sleep(0.05)


async def frames_until_closed(ws: ClientConnection) -> AsyncIterator[dict[str, Any]]:
    """Every frame the gateway sends until it closes the connection."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            yield json.loads(await asyncio.wait_for(ws.recv(), 3 * TIMEOUT))


async def test_sigterm_drains_within_its_bound_and_exits_0(serve: Callable[..., Served]) -> None:
    drain_s = 2.0
    served = serve("--token", "d-token", "--drain-s", str(drain_s))
    url = served.url()
    base = base_of(url)
    ws, _ = await hello(url, "d-token")
    await start_reply(ws, "long", 3)  # about 33 s of tokens: far longer than the drain
    while (await recv(ws))["type"] != "delta":
        pass
    began = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    await wait_draining(base)
    # The health check says draining, new links are refused, and the reply goes on,
    # to its client: with the memory store no other gateway could deliver it.
    with pytest.raises(InvalidStatus) as info:
        await hello(url, "d-token")
    assert info.value.response.status_code == 503
    page = await scrape(base, "d-token")
    assert value(page, "nbchat_draining") == 1
    assert value(page, "nbchat_replies_in_flight") == 1
    assert value(page, "nbchat_connections") == 1
    # At the bound (the reply would have taken longer) it ends the reply as an error,
    # says goodbye (1001) and exits 0.
    ends = [frame async for frame in frames_until_closed(ws) if frame["type"] in ("error", "done")]
    assert [(f["type"], f.get("code"), f.get("finish")) for f in ends] == [
        ("error", "gateway_shutdown", None),
        ("done", None, "error"),
    ]
    assert ws.close_code == 1001
    assert await asyncio.to_thread(served.wait, drain_s + TIMEOUT) == 0
    took = time.monotonic() - began
    assert drain_s - 0.5 <= took < drain_s + 2 * CLOSE_GRACE_S + TIMEOUT / 2, took
    assert "draining" in served.stderr


async def test_a_second_signal_exits_at_once(serve: Callable[..., Served]) -> None:
    served = serve("--drain-s", "60")
    url = served.url()
    ws, _ = await hello(url)
    await start_reply(ws, "long", 2)
    while (await recv(ws))["type"] != "delta":
        pass
    served.process.send_signal(signal.SIGTERM)
    await wait_draining(base_of(url))
    began = time.monotonic()
    served.process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(served.wait) == 0
    assert time.monotonic() - began < TIMEOUT


@pytest.fixture
async def token_gateway() -> AsyncIterator[Gateway]:
    gateway = Gateway(token="m-token")
    await gateway.start("127.0.0.1", 0)
    yield gateway
    await gateway.close()


async def test_drain_lets_replies_finish_and_reports_draining(token_gateway: Gateway) -> None:
    gateway = token_gateway
    base = f"http://127.0.0.1:{gateway.port}"
    status, body, _ = await asyncio.to_thread(http_get, base + "/healthz")
    assert (status, body) == (200, "ok\n")
    ws, welcome = await hello(gateway.url(), "m-token")
    await start_reply(ws, "r", 60)  # about 1.7 s
    while (await recv(ws))["type"] != "delta":
        pass
    drain = asyncio.create_task(gateway.drain(30))
    await wait_draining(base)
    # The reply goes on to its client and ends by itself; then the drain ends, long
    # before its bound, and the connection closes with 1001 (going away).
    began = time.monotonic()
    ends = [frame async for frame in frames_until_closed(ws) if frame["type"] == "done"]
    assert [f["finish"] for f in ends] == ["stop"]
    assert ws.close_code == 1001
    await asyncio.wait_for(drain, TIMEOUT)
    assert time.monotonic() - began < TIMEOUT
    progress = gateway.sessions[welcome["session"]].state.replies["r"]
    assert progress.done is not None
    assert progress.done.finish == "stop"
    page = samples(gateway.metrics.exposition().decode())
    assert value(page, "nbchat_replies_ended_total", finish="stop") == 1
    assert value(page, "nbchat_replies_ended_total", finish="error") == 0


# --- metrics --------------------------------------------------------------------------------


async def test_metrics_move_as_a_reply_streams(token_gateway: Gateway) -> None:
    gateway = token_gateway
    base = f"http://127.0.0.1:{gateway.port}"
    status, _, _ = await asyncio.to_thread(http_get, base + "/metrics")
    assert status == 401  # the gateway has tokens: /metrics wants one of them too
    before = await scrape(base, "m-token")
    assert value(before, "nbchat_deltas_out_total") == 0
    assert value(before, "nbchat_replies_ended_total", finish="stop") == 0
    assert value(before, "nbchat_connections") == 0

    ws, welcome = await hello(gateway.url(), "m-token")
    await start_reply(ws, "r-1", 40)  # about 2.5 s
    got = 0
    while got < 5:
        got += (await recv(ws))["type"] == "delta"
    during = await scrape(base, "m-token")
    assert value(during, "nbchat_deltas_out_total") >= 5
    assert value(during, "nbchat_replies_in_flight") == 1
    assert value(during, "nbchat_connections") == 1
    assert value(during, "nbchat_sessions") == 1
    assert value(during, "nbchat_replies_ended_total", finish="stop") == 0
    text, deltas = await read_reply(ws, "r-1")
    deltas += got

    async def ended() -> bool:
        page = await scrape(base, "m-token")
        return value(page, "nbchat_frames_out_total", type="done") == 1

    await eventually(ended, "the done frame to be counted")
    after = await scrape(base, "m-token")
    assert value(after, "nbchat_deltas_out_total") == deltas
    assert value(after, "nbchat_frames_out_total", type="delta") == deltas
    assert value(after, "nbchat_replies_ended_total", finish="stop") == 1
    assert value(after, "nbchat_replies_in_flight") == 0
    assert value(after, "nbchat_bytes_out_total") > len(text.encode()) + 30 * deltas

    # Errors are counted by code, resumes as resumes.
    await ws.send("{oops")
    assert (await recv(ws))["code"] == "bad_request"
    again, resumed = await hello(gateway.url(), "m-token", session=welcome["session"], last_seq=0)
    assert resumed["resumed"] is True
    replayed = 0
    while replayed < deltas:  # the whole reply again, from the log
        replayed += (await recv(again))["type"] == "delta"

    async def counted() -> bool:
        page = await scrape(base, "m-token")
        return value(page, "nbchat_deltas_out_total") == 2 * deltas

    await eventually(counted, "the replayed deltas to be counted")
    last = await scrape(base, "m-token")
    assert value(last, "nbchat_errors_sent_total", code="bad_request") == 1
    assert value(last, "nbchat_resumes_total") == 1
    assert value(last, "nbchat_replies_ended_total", finish="stop") == 1  # not replays
    assert ("nbchat_store_latency_seconds_count", frozenset()) not in last  # by op only
    assert value(last, "process_resident_memory_bytes") > 0
    await again.close()
    await ws.close()


async def test_each_gateway_counts_only_its_own(token_gateway: Gateway) -> None:
    other = Gateway()
    await other.start("127.0.0.1", 0)
    try:
        ws, _ = await hello(token_gateway.url(), "m-token")
        await start_reply(ws, "r", 0)
        await read_reply(ws, "r")
        await ws.close()
        mine = samples(token_gateway.metrics.exposition().decode())
        theirs = samples(other.metrics.exposition().decode())
        assert value(mine, "nbchat_replies_ended_total", finish="stop") == 1
        assert value(theirs, "nbchat_replies_ended_total", finish="stop") == 0
        token_gateway.metrics.store_latency.labels(op="append").observe(0.002)
        page = samples(token_gateway.metrics.exposition().decode())
        assert value(page, "nbchat_store_latency_seconds_count", op="append") == 1
    finally:
        await other.close()


async def test_two_authorization_headers_are_refused_not_a_crash(token_gateway: Gateway) -> None:
    headers = [("Authorization", "Bearer m-token"), ("Authorization", "Bearer m-token")]
    with pytest.raises(InvalidStatus) as info:
        await connect(token_gateway.url(), proxy=None, additional_headers=headers)
    assert info.value.response.status_code == 401


async def test_without_allow_origin_no_origin_is_checked(token_gateway: Gateway) -> None:
    # The default (no --allow-origin) is the behaviour from before origins were checked:
    # a browser cannot set the Authorization header on a WebSocket, so on a gateway
    # with tokens the token keeps browser pages out whatever their origin.
    ws, welcome = await hello(token_gateway.url(), "m-token", origin="https://any.example")
    assert welcome["type"] == "welcome"
    await ws.close()
