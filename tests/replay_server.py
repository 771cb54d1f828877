"""A local HTTP server on loopback that plays the recorded provider streams in
tests/fixtures/providers/ to the real SDKs, and misbehaves on request.

The model named in a request picks the answer: a recording (see ``RECORDINGS``), a long
stream for stop tests, a failure (``FAILURES``), or a rate limit that lifts
(``THROTTLED``: HTTP 429 with ``Retry-After`` the first times each prompt is asked). A
tool-calling model (``TOOL_ROUNDS``) picks by round too: its tool calls, or, when the
request ends with the results (a ``role: tool`` message), its answer. Every request is
kept, with its headers, so tests can check what the SDK sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
RECORDINGS = {
    "gpt-4o-mini": "openai_chat.sse",
    "deepseek-reasoner": "deepseek_reasoner.sse",
    "llama3.2": "ollama.sse",
    "Qwen/Qwen2.5-1.5B-Instruct": "vllm.sse",
    "claude-sonnet-4-6": "anthropic_messages.sse",
}
# model -> (recording of the tool calls, recording of the answer after the results);
# an answer of None calls the tools again, every round (with fresh call ids).
TOOL_ROUNDS: dict[str, tuple[str, str | None]] = {
    "gpt-tools": ("openai_tool_call.sse", "openai_tool_answer.sse"),
    "gpt-tools-forever": ("openai_tool_call.sse", None),
    "claude-tools": ("anthropic_tool_use.sse", "anthropic_tool_answer.sse"),
    "claude-tools-forever": ("anthropic_tool_use.sse", None),
}
# model -> (recording, how many requests of each prompt get HTTP 429 before it streams).
# The prompt is the last message's content; Retry-After is Replay.retry_after.
THROTTLED: dict[str, tuple[str, int]] = {
    "gpt-429": ("openai_chat.sse", 1),
    "gpt-429-twice": ("openai_chat.sse", 2),
}


def _results_in(message: dict[str, Any]) -> int:
    """How many tool results a message carries: OpenAI's are role-tool messages,
    Anthropic's are tool_result blocks of a user message."""
    if message.get("role") == "tool":
        return 1
    content = message.get("content")
    if message.get("role") == "user" and isinstance(content, list):
        return sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
    return 0


def _tool_round_events(model: str, body: dict[str, Any]) -> list[str]:
    calls, answer = TOOL_ROUNDS[model]
    messages = body.get("messages") or [{}]
    results = sum(_results_in(m) for m in messages)
    if answer is not None and _results_in(messages[-1]):
        text = (FIXTURES / answer).read_text()
    else:
        text = (FIXTURES / calls).read_text()
        if answer is None:  # each round's calls are new calls
            text = text.replace('"id":"call_', f'"id":"r{results}_call_')
            text = text.replace('"id":"toolu_', f'"id":"r{results}_toolu_')
    return [e + "\n\n" for e in text.split("\n\n") if e.strip()]


def _send_error(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)


def _error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": None}}).encode()


@dataclass
class Replay:
    event_delay_s: float = 0.005  # between events, so streams take time like real ones
    drop_connections: int = 0  # the next N requests are cut before any answer
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected_at: list[float] = field(default_factory=list)  # client went away mid-stream
    listed: list[str] | None = None  # the ids GET /models lists (default: the recordings)
    key: str | None = None  # when set, a request with another key gets 401, as OpenAI's
    retry_after: str = "1"  # the Retry-After of THROTTLED models' 429s
    # THROTTLED models: by prompt, when each request of it came (time.monotonic()).
    throttled: dict[str, list[float]] = field(default_factory=dict)

    def start(self) -> Replay:
        replay = self
        self._lock = threading.Lock()  # handlers run on threads of their own

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                replay.requests.append({"path": self.path, "headers": dict(self.headers)})
                if not replay.key_ok(self):
                    return
                ids = RECORDINGS if replay.listed is None else replay.listed
                models = [{"id": m, "object": "model", "owned_by": "replay"} for m in ids]
                self._json(200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replay.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if replay.drop_connections > 0:
                    replay.drop_connections -= 1
                    self.close_connection = True
                    self.connection.close()  # no status line at all: a connection error
                    return
                if replay.key_ok(self):
                    replay.answer(self, body)

            def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- answers --------------------------------------------------------------------

    def key_ok(self, handler: BaseHTTPRequestHandler) -> bool:
        """Whether the request carries ``key`` (if one is required); if not, answer 401
        quoting the key, as OpenAI does."""
        given = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.key is None or given == self.key:
            return True
        payload = _error_body(f"Incorrect API key provided: {given}.", "invalid_request_error")
        _send_error(handler, 401, payload)
        return False

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = body.get("model", "")
        key = handler.headers.get("Authorization", "").removeprefix(
            "Bearer "
        ) or handler.headers.get("x-api-key", "")
        failure = FAILURES.get(model)
        if failure is not None:
            status, message, headers = failure
            payload = _error_body(message.format(key=key, model=model), "invalid_request_error")
            _send_error(handler, status, payload, headers)
            return
        if model in THROTTLED:
            recording, refusals = THROTTLED[model]
            messages = body.get("messages") or [{}]
            prompt = str(messages[-1].get("content"))
            with self._lock:
                seen = self.throttled.setdefault(prompt, [])
                seen.append(time.monotonic())
                refuse = len(seen) <= refusals
            if refuse:
                payload = _error_body("Rate limit reached for requests", "rate_limit_error")
                _send_error(handler, 429, payload, {"Retry-After": self.retry_after})
                return
            text = (FIXTURES / recording).read_text()
            self._stream(handler, [e + "\n\n" for e in text.split("\n\n") if e.strip()])
        elif model == "silent":
            self._stream(handler, [], hold_s=30)
        elif model == "malformed":
            self._stream(handler, ['data: {"id":"x","object":"chat.completion.chunk","choi\n\n'])
        elif model == "cut-mid-stream":  # a few tokens, then the connection just ends
            self._stream(handler, [_openai_chunk(f" word{i}") for i in range(3)])
        elif model == "long":
            self._stream(handler, [_openai_chunk(f" word{i}") for i in range(2000)])
        elif model in TOOL_ROUNDS:
            self._stream(handler, _tool_round_events(model, body))
        elif model.removesuffix(":latest") in RECORDINGS:  # Ollama answers to both
            text = (FIXTURES / RECORDINGS[model.removesuffix(":latest")]).read_text()
            self._stream(handler, [e + "\n\n" for e in text.split("\n\n") if e.strip()])
        else:
            payload = _error_body(f"The model `{model}` does not exist", "not_found_error")
            _send_error(handler, 404, payload)

    def _stream(
        self, handler: BaseHTTPRequestHandler, events: list[str], hold_s: float = 0.0
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        try:
            handler.wfile.flush()
            time.sleep(hold_s)
            for event in events:
                handler.wfile.write(event.encode())
                handler.wfile.flush()
                time.sleep(self.event_delay_s)
        except (BrokenPipeError, ConnectionResetError):
            self.disconnected_at.append(time.monotonic())


def _openai_chunk(text: str) -> str:
    chunk = {
        "id": "chatcmpl-long",
        "object": "chat.completion.chunk",
        "created": 1763700000,
        "model": "long",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


# model -> (status, message, extra headers). {key} is the API key the request carried:
# real services quote (part of) it back, which is what the redaction must catch.
FAILURES: dict[str, tuple[int, str, dict[str, str]]] = {
    "bad-key": (401, "Incorrect API key provided: {key}. You can find your key in settings.", {}),
    "no-access": (403, "Project does not have access to model {model}", {}),
    "missing-model": (404, "The model `{model}` does not exist", {}),
    "busy-model": (429, "Rate limit reached for requests", {"Retry-After": "7"}),
    "broken-model": (503, "The server is overloaded", {}),
}
