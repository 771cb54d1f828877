"""Real providers behind the gateway: the official SDKs against a local server replaying
recorded streams (tests/fixtures/providers/), end to end through Chat."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.config import ConfigError, load_models, read_config
from nbchat.gateway.providers.anthropic_messages import AnthropicProvider
from nbchat.gateway.providers.openai_compat import OpenAICompatProvider
from nbchat.gateway.server import ModelRoute

from replay_server import Replay
from timeouts import TIMEOUT

SECRET = "sk-test-0123456789-SECRET-abcdef"
OTHER_SECRET = "sk-ant-test-SECRET-987654321"

CONFIG = """
[[models]]
name = "gpt"
provider = "openai-compatible"
model = "gpt-4o-mini"
base_url = "{base}"
api_key_env = "NBCHAT_TEST_KEY"
params = {{ temperature = 0.2 }}

[[models]]
name = "deepseek"
provider = "openai-compatible"
model = "deepseek-reasoner"
base_url = "{base}"
api_key_env = "NBCHAT_TEST_KEY"

[[models]]
name = "ollama"
provider = "ollama"
model = "llama3.2"
base_url = "{base}"

[[models]]
name = "vllm"
provider = "vllm"
model = "Qwen/Qwen2.5-1.5B-Instruct"
base_url = "{base}"

[[models]]
name = "claude"
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{anthropic}"
api_key_env = "NBCHAT_TEST_ANTHROPIC_KEY"
"""
FAILING = [
    "cut-mid-stream",
    "bad-key",
    "no-access",
    "missing-model",
    "busy-model",
    "broken-model",
    "malformed",
    "silent",
    "long",
]


@pytest.fixture
def config(tmp_path: Path, replay: Replay, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NBCHAT_TEST_KEY", SECRET)
    monkeypatch.setenv("NBCHAT_TEST_ANTHROPIC_KEY", OTHER_SECRET)
    text = CONFIG.format(base=replay.base_url, anthropic=f"http://127.0.0.1:{replay.port}")
    for model in FAILING:
        text += (
            f'\n[[models]]\nname = "{model}"\nprovider = "openai-compatible"\n'
            f'base_url = "{replay.base_url}"\napi_key_env = "NBCHAT_TEST_KEY"\n'
        )
    path = tmp_path / "nbchat.toml"
    path.write_text(text)
    return path


@pytest.fixture
def gateway(config: Path, replay: Replay) -> Iterator[EmbeddedGateway]:
    models = asyncio.run(load_models(config, os.environ))
    replay.requests.clear()  # the start-up check's model lists: tests count the rest
    for route in models.values():  # quick failures for the timeout test
        if hasattr(route.provider, "first_token_timeout_s"):
            route.provider.first_token_timeout_s = 1.0  # type: ignore[attr-defined]
    embedded = EmbeddedGateway(Gateway(models=models, token="t")).start()
    yield embedded
    embedded.close()


def chat(gateway: EmbeddedGateway, model: str, **params: object) -> Chat:
    return Chat(url=gateway.url, token="t", model=model, **params)


@pytest.mark.parametrize(
    ("model", "text", "reasoning", "usage"),
    [
        ("gpt", "WebSockets keep one TCP connection open in both directions.", "", (14, 11)),
        ("deepseek", "9.11 is smaller than 9.8.", "Compare the decimals: 0.11 < 0.8.", (18, 42)),
        ("ollama", "Hello! How can I help?", "", (26, 8)),
        ("vllm", "Paris is the capital of France.", "", (31, 7)),
        (
            "claude",
            "Hello! How can I help you today?",
            "The user greets me; answer briefly.",
            (25, 15),
        ),
    ],
)
def test_each_recorded_stream_plays_through_chat(
    gateway: EmbeddedGateway, model: str, text: str, reasoning: str, usage: tuple[int, int]
) -> None:
    with chat(gateway, model) as c:
        reply = c.send("hi")
        chunks = list(reply)
        assert len(chunks) > 3  # it streamed
        assert reply.text == text
        assert reply.reasoning == reasoning
        assert reply.finish == "stop"
        assert reply.usage is not None
        assert (reply.usage["prompt_tokens"], reply.usage["completion_tokens"]) == usage
        frame = c.to_dataframe()
        assert frame["reasoning"].iloc[-1] == (reasoning or None)
        assert frame["completion_tokens"].iloc[-1] == usage[1]


def test_params_system_history_and_key_reach_the_provider(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    with Chat(
        url=gateway.url,
        token="t",
        model="gpt",
        system="Be brief.",
        top_p=0.9,
        max_tokens=50,
        seed=7,
        stop=["\n\n"],
    ) as c:
        first = c.send("one").wait(TIMEOUT)
        c.send("two", temperature=0.7).wait(TIMEOUT)
    sent = [r for r in replay.requests if r["path"] == "/v1/chat/completions"]
    body = sent[-1]["body"]
    assert body["temperature"] == 0.7  # the request's own param beats the config's 0.2
    assert (body["top_p"], body["max_tokens"], body["seed"], body["stop"]) == (0.9, 50, 7, ["\n\n"])
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "two"},
    ]
    assert sent[0]["body"]["temperature"] == 0.2  # the config's default
    headers = {name.lower(): value for name, value in sent[-1]["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"


def test_reasoning_is_kept_out_of_the_history(gateway: EmbeddedGateway, replay: Replay) -> None:
    with chat(gateway, "deepseek") as c:
        c.send("which is smaller?").wait(TIMEOUT)
        c.send("why?").wait(TIMEOUT)
    messages = replay.requests[-1]["body"]["messages"]
    assert messages[1] == {"role": "assistant", "content": "9.11 is smaller than 9.8."}


def test_model_switches_between_turns(gateway: EmbeddedGateway) -> None:
    with chat(gateway, "ollama") as c:
        assert c.send("hi").wait(TIMEOUT).text == "Hello! How can I help?"
        c.model = "vllm"
        assert c.send("capital?").wait(TIMEOUT).text == "Paris is the capital of France."
        assert c.to_dataframe()["model"].dropna().tolist() == ["ollama", "vllm"]


def test_stop_closes_the_upstream_request_within_200_ms(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    replay.event_delay_s = 0.02
    with chat(gateway, "long") as c:
        reply = c.send("go on forever")
        deadline = time.monotonic() + TIMEOUT
        while len(reply.chunks) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        asked = time.monotonic()
        reply.stop().wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not replay.disconnected_at:
            assert time.monotonic() < deadline, "the provider's server never saw a disconnect"
            time.sleep(0.005)
    latency = replay.disconnected_at[0] - asked
    print(f"\nupstream disconnect {latency * 1000:.0f} ms after stop()")
    assert reply.finish == "stopped"
    assert latency < 0.2


FAILURES = [
    (
        "bad-key",
        "unauthorized",
        "openai-compatible refused the API key (HTTP 401): Incorrect API key provided: "
        "[redacted]. You can find your key in settings.",
    ),
    (
        "no-access",
        "unauthorized",
        "openai-compatible refused the API key (HTTP 403): Project does not have access to "
        "model no-access",
    ),
    (
        "missing-model",
        "unknown_model",
        "openai-compatible does not know this model (HTTP 404): The model `missing-model` "
        "does not exist",
    ),
    (
        "busy-model",
        "rate_limited",
        "openai-compatible is rate limiting (HTTP 429); retry after 7 s: Rate limit reached "
        "for requests",
    ),
    (
        "broken-model",
        "upstream_error",
        "openai-compatible failed (HTTP 503): The server is overloaded",
    ),
    ("malformed", "upstream_error", "openai-compatible sent a malformed stream: JSONDecodeError"),
    ("silent", "upstream_error", "openai-compatible sent no first token within 1 s"),
]


@pytest.mark.parametrize(("model", "code", "message"), FAILURES, ids=[f[0] for f in FAILURES])
def test_provider_failures_are_plain_errors_and_others_carry_on(
    gateway: EmbeddedGateway, model: str, code: str, message: str
) -> None:
    with chat(gateway, model) as failing, chat(gateway, "ollama") as other:
        alongside = other.send("still fine?")
        reply = failing.send("hi").wait(3 * TIMEOUT)
        assert (reply.status, reply.error_code, reply.error) == ("error", code, message)
        assert failing.messages[-1]["error"] == message
        assert alongside.wait(TIMEOUT).text == "Hello! How can I help?"
        assert (
            failing.send(
                "and again?",
            )
            .wait(3 * TIMEOUT)
            .error
            == message
        )  # still usable


def test_connection_failures_before_the_first_token_are_retried(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    replay.drop_connections = 2  # two attempts fail, the third gets through
    with chat(gateway, "ollama") as c:
        assert c.send("hi").wait(TIMEOUT).text == "Hello! How can I help?"
    assert len(replay.requests) == 3


def test_a_stream_cut_after_the_first_token_is_an_error_not_retried(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    with chat(gateway, "cut-mid-stream") as c:
        reply = c.send("hi").wait(TIMEOUT)
    assert reply.text == " word0 word1 word2"  # the partial text stays
    assert (reply.status, reply.error_code) == ("error", "upstream_error")
    assert reply.error == "openai-compatible's stream ended before the reply was complete"
    assert len(replay.requests) == 1  # never silently retried


def test_connection_refused_gives_up_after_bounded_retries(tmp_path: Path) -> None:
    path = tmp_path / "nbchat.toml"
    path.write_text(
        '[[models]]\nname = "nowhere"\nprovider = "ollama"\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    models = asyncio.run(load_models(path, {}))
    embedded = EmbeddedGateway(Gateway(models=models)).start()
    try:
        with Chat(url=embedded.url, model="nowhere") as c:
            reply = c.send("anyone?").wait(3 * TIMEOUT)
        assert reply.error_code == "upstream_error"
        assert reply.error is not None
        assert reply.error.startswith(
            "cannot connect to ollama at http://127.0.0.1:9/v1 (3 attempts): "
        )
    finally:
        embedded.close()


def test_a_missing_key_says_which_variable_to_set(tmp_path: Path) -> None:
    path = tmp_path / "nbchat.toml"
    path.write_text('[[models]]\nname = "ds"\nprovider = "deepseek"\nmodel = "deepseek-chat"\n')
    models = asyncio.run(load_models(path, {}))
    embedded = EmbeddedGateway(Gateway(models=models)).start()
    try:
        with Chat(url=embedded.url, model="ds") as c:
            reply = c.send("hi").wait(TIMEOUT)
        assert reply.error == (
            "set the environment variable DEEPSEEK_API_KEY where the gateway runs to use model 'ds'"
        )
    finally:
        embedded.close()


def test_no_config_discovers_models_at_openai_base_url(replay: Replay) -> None:
    env = {"OPENAI_API_KEY": "anything", "OPENAI_BASE_URL": replay.base_url}
    models = asyncio.run(load_models(None, env))
    assert list(models) == [
        "Qwen/Qwen2.5-1.5B-Instruct",
        "claude-sonnet-4-6",
        "deepseek-reasoner",
        "gpt-4o-mini",
        "llama3.2",
        "demo",
    ]
    assert list(asyncio.run(load_models(None, {}))) == ["demo"]  # no key: the demo only


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[models]]\nname = 'x'\nprovider = 'skynet'\n", "provider must be one of openai,"),
        ("[[models]]\nprovider = 'ollama'\n", "'name' is required"),
        (
            "[[models]]\nname = 'x'\nprovider = 'openai'\napi_key = 'sk-oops'\n",
            "unknown keys api_key",
        ),
        ("models = 3\n", "lists no [[models]]"),
        ("[[models]\n", "is not valid TOML"),
        (
            "[[models]]\nname='a'\nprovider='ollama'\n[[models]]\nname='a'\nprovider='vllm'\n",
            "model names must be unique: a",
        ),
    ],
)
def test_bad_configs_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        read_config(path)


def test_no_secret_leaks_anywhere(
    gateway: EmbeddedGateway, replay: Replay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    frames: list[str] = []

    async def raw_session() -> None:
        from websockets.asyncio.client import connect

        async with connect(
            gateway.url, proxy=None, additional_headers={"Authorization": "Bearer t"}
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "client": "leak-test"}))
            for i, model in enumerate(["gpt", "bad-key", "claude"]):
                await ws.send(
                    json.dumps(
                        {
                            "type": "start",
                            "reply": f"r{i}",
                            "model": model,
                            "messages": [{"role": "user", "content": "hi"}],
                        }
                    )
                )
                while True:
                    frames.append(str(await asyncio.wait_for(ws.recv(), TIMEOUT)))
                    if json.loads(frames[-1]).get("type") == "done":
                        break

    asyncio.run(raw_session())
    with chat(gateway, "bad-key") as c:
        reply = c.send("hi").wait(TIMEOUT)
        c.send("hi", model="claude").wait(TIMEOUT)
        places = {
            "frames": "\n".join(frames),
            "logs": caplog.text,
            "error": f"{reply.error} {reply.error_code}",
            "dataframe": c.to_dataframe().to_json(date_format="iso"),
            "widget state": json.dumps(c.get_state(), default=str),
            "messages": json.dumps(c.messages),
        }
    assert replay.requests  # the key did go to the provider, where it belongs
    for where, text in places.items():
        for secret in (SECRET, OTHER_SECRET):
            assert secret not in text, f"the key leaked into the {where}"


@pytest.mark.parametrize(
    ("model", "takes"),
    [
        ("gpt-4o-mini", True),
        ("gpt-4.1-nano", True),
        ("gpt-5", True),
        ("llama3.2-vision:11b", True),
        ("qwen2.5vl:7b", True),
        ("Qwen/Qwen2.5-VL-7B-Instruct", True),
        ("llava:13b", True),
        ("o3", True),
        ("o4-mini", True),
        ("gemma3:4b", True),
        ("o3-mini", False),
        ("o1-mini", False),
        ("gpt-4o-audio-preview", False),
        ("gpt-4o-search-preview", False),
        ("gemma3:1b", False),
        ("gpt-3.5-turbo", False),
        ("deepseek-chat", False),
        ("llama3.2", False),
        ("Qwen/Qwen2.5-1.5B-Instruct", False),
    ],
)
def test_openai_compatible_models_take_images_by_their_name(model: str, takes: bool) -> None:
    assert OpenAICompatProvider.takes_images(model) is takes
    assert AnthropicProvider.takes_images("claude-sonnet-4-6")
    assert not AnthropicProvider.takes_images("claude-2.1")
    assert not AnthropicProvider.takes_images("deepseek-chat")  # another server, same API


def test_a_saved_openai_reply_with_usage_details_loads_again(
    tmp_path: Path, replay: Replay
) -> None:
    """OpenAI's usage groups some counts (``prompt_tokens_details``): a transcript that
    holds one must load again, in a new kernel as from a file."""
    provider = OpenAICompatProvider(base_url=replay.base_url, api_key="sk-test")
    gateway = EmbeddedGateway(
        Gateway(models={"gpt": ModelRoute(provider, "gpt-4o-mini")}, token="t")
    ).start()
    try:
        with Chat(url=gateway.url, token="t", model="gpt") as chat:
            reply = chat.send("hi").wait(TIMEOUT)
            assert reply.usage is not None
            assert any(isinstance(v, dict) for v in reply.usage.values())
            path = chat.save(tmp_path / "chat.json")
        with Chat.load(path, url=gateway.url, token="t", model="gpt") as again:
            assert again._conversation.transcript.messages[1].usage == reply.usage
    finally:
        gateway.close()
