"""Which models a gateway offers and which is the default (gateway/config.py), and what
users are told when the model server cannot be used: against a local HTTP server that
lists models as OpenAI's does, a port nobody listens on, and a server refusing the key."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.config import ConfigError, Offer, is_chat_model, load_offer, read_config

from replay_server import Replay
from timeouts import TIMEOUT, wait_until

SECRET = "sk-test-SECRET-0123456789abcdef"

# What OpenAI's /v1/models lists besides chat models (and a few chat models).
OPENAI_LIST = [
    "babbage-002",
    "chatgpt-4o-latest",
    "dall-e-2",
    "dall-e-3",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct",
    "gpt-4o",
    "gpt-4o-audio-preview",
    "gpt-4o-mini",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-tts",
    "gpt-4o-realtime-preview",
    "gpt-image-1",
    "codex-mini-latest",
    "gpt-4o-search-preview",
    "o1-pro",
    "o3-deep-research",
    "o3-mini",
    "omni-moderation-latest",
    "text-embedding-3-large",
    "text-embedding-3-small",
    "text-moderation-latest",
    "tts-1",
    "tts-1-hd",
    "whisper-1",
]
OPENAI_CHAT = ["chatgpt-4o-latest", "gpt-3.5-turbo", "gpt-4o", "gpt-4o-mini", "o3-mini"]


@pytest.fixture
def replay() -> Iterator[Replay]:
    server = Replay(listed=list(OPENAI_LIST)).start()
    yield server
    server.close()


def free_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offer(env: dict[str, str], config: Path | None = None) -> Offer:
    return asyncio.run(load_offer(config, env))


def embedded_gateway(monkeypatch: pytest.MonkeyPatch, **env: str) -> EmbeddedGateway:
    """The embedded gateway as ``Chat()`` starts it, configured from the environment."""
    for name in ("NBCHAT_CONFIG", "NBCHAT_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return EmbeddedGateway().start()


# --- 1. the default model ----------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in OPENAI_LIST if n not in OPENAI_CHAT])
def test_models_that_do_not_chat_are_told_apart(name: str) -> None:
    assert not is_chat_model(name)


@pytest.mark.parametrize(
    "name",
    [
        *OPENAI_CHAT,
        "gpt-4.1-mini",
        "gpt-5",
        "deepseek-chat",
        "llama3.2:latest",
        "Qwen/Qwen2.5-1.5B-Instruct",
        "openai/gpt-4o-mini",
        "claude-sonnet-4-6",
    ],
)
def test_chat_models_are_kept(name: str) -> None:
    assert is_chat_model(name)


@pytest.mark.parametrize("name", ["nomic-embed-text:latest", "mxbai-embed-large", "bge-m3"])
def test_local_embedding_models_are_not_chat_models(name: str) -> None:
    assert not is_chat_model(name)


def test_discovery_offers_chat_models_only_with_a_sensible_default(replay: Replay) -> None:
    got = offer({"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": replay.base_url})
    assert list(got.models) == [*OPENAI_CHAT, "demo"]
    # Not the alphabetically first ("chatgpt-4o-latest"): a cheap, quick chat model.
    assert got.default == "gpt-4o-mini"
    assert got.notice is None


def test_a_server_without_a_well_known_model_defaults_to_its_own_first(replay: Replay) -> None:
    # Ollama lists the most recently pulled model first.
    replay.listed = ["qwen2.5:7b", "nomic-embed-text:latest", "llama3.2:latest"]
    got = offer({"OPENAI_API_KEY": "ollama", "OPENAI_BASE_URL": replay.base_url})
    assert list(got.models) == ["llama3.2:latest", "qwen2.5:7b", "demo"]
    assert got.default == "qwen2.5:7b"


def test_nbchat_model_names_the_default(replay: Replay) -> None:
    env = {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": replay.base_url}
    assert offer({**env, "NBCHAT_MODEL": "o3-mini"}).default == "o3-mini"
    assert offer({**env, "NBCHAT_MODEL": "demo"}).default == "demo"
    wrong = offer({**env, "NBCHAT_MODEL": "gpt-9"})
    assert wrong.default == "gpt-4o-mini"
    assert (
        wrong.notice
        == "NBCHAT_MODEL names 'gpt-9', which is not offered; the default is 'gpt-4o-mini'"
    )


def config_file(tmp_path: Path, replay: Replay, *defaults: bool) -> Path:
    text = ""
    for i, default in enumerate(defaults):
        text += f'[[models]]\nname = "m{i}"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        if default:
            text += "default = true\n"
    path = tmp_path / "nbchat.toml"
    path.write_text(text)
    return path


def test_the_config_default_entry_is_the_default(tmp_path: Path, replay: Replay) -> None:
    assert offer({}, config_file(tmp_path, replay, False, True, False)).default == "m1"
    # No default = true: the file's first entry (its order is the user's), not "demo".
    assert offer({}, config_file(tmp_path, replay, False, False)).default == "m0"
    path = config_file(tmp_path, replay, False, True)
    assert offer({"NBCHAT_MODEL": "m0"}, path).default == "m0"  # the variable wins


def test_a_config_with_two_defaults_is_refused(tmp_path: Path, replay: Replay) -> None:
    with pytest.raises(ConfigError, match="only one model may be the default: m0, m1"):
        read_config(config_file(tmp_path, replay, True, True))
    path = tmp_path / "bad.toml"
    path.write_text('[[models]]\nname = "a"\nprovider = "ollama"\ndefault = "yes"\n')
    with pytest.raises(ConfigError, match=r"model 1 \(a\): default must be true or false"):
        read_config(path)


def test_which_models_take_images_goes_by_name_unless_the_config_says(
    tmp_path: Path, replay: Replay
) -> None:
    path = tmp_path / "images.toml"
    path.write_text(
        f'[[models]]\nname = "llava"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        f'[[models]]\nname = "llama3.2"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        f'[[models]]\nname = "mine"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        "images = true\n"
        f'[[models]]\nname = "gpt-4o"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        "images = false\n"
    )
    routes = offer({}, path).models
    taking = {name for name, route in routes.items() if route.takes_images}
    assert taking == {"llava", "mine", "demo"}
    path.write_text('[[models]]\nname = "a"\nprovider = "ollama"\nimages = "yes"\n')
    with pytest.raises(ConfigError, match=r"model 1 \(a\): images must be true or false"):
        read_config(path)


def test_chat_starts_on_the_gateways_default_and_offers_chat_models_only(
    monkeypatch: pytest.MonkeyPatch, replay: Replay
) -> None:
    gateway = embedded_gateway(monkeypatch, OPENAI_API_KEY=SECRET, OPENAI_BASE_URL=replay.base_url)
    try:
        with Chat(url=gateway.url, token=gateway.token) as chat:
            wait_until(lambda: chat.models, "the models")
            assert chat.models == [*OPENAI_CHAT, "demo"]
            wait_until(lambda: chat.model, "the model")
            assert chat.model == "gpt-4o-mini"
            reply = chat.send("hi").wait(TIMEOUT)
            assert (reply.model, reply.error) == ("gpt-4o-mini", None)
            assert reply.text == "WebSockets keep one TCP connection open in both directions."
            assert chat.error == ""  # nothing went wrong: nothing to say
        with Chat(url=gateway.url, token=gateway.token, model="demo") as chat:
            wait_until(lambda: chat.models, "the models")
            assert chat.model == "demo"  # Chat(model=...) still wins
    finally:
        gateway.close()


def test_an_ollama_model_answers_to_its_name_without_latest(
    monkeypatch: pytest.MonkeyPatch, replay: Replay
) -> None:
    replay.listed = ["llama3.2:latest"]
    gateway = embedded_gateway(
        monkeypatch, OPENAI_API_KEY="ollama", OPENAI_BASE_URL=replay.base_url
    )
    try:
        with Chat(url=gateway.url, token=gateway.token, model="llama3.2") as chat:
            reply = chat.send("hi").wait(TIMEOUT)
            assert (reply.finish, reply.error) == ("stop", None)  # not "unknown model"
            assert reply.text
    finally:
        gateway.close()


def test_a_gateway_that_names_no_default_still_gives_its_first() -> None:
    # What an older gateway does (no default_model in the welcome) is what a gateway
    # built on models alone does: its first model is the default.
    gateway = EmbeddedGateway(Gateway(token="t")).start()
    try:
        with Chat(url=gateway.url, token="t") as chat:
            wait_until(lambda: chat.model, "the model")
            assert chat.model == "demo"
    finally:
        gateway.close()


# --- 2. no silent fallback ---------------------------------------------------------


def test_an_unreachable_server_is_said_plainly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    notice = f"the server at {url} is unreachable (connection refused); only `demo` is available"
    with caplog.at_level(logging.WARNING, logger="nbchat.gateway"):
        gateway = embedded_gateway(monkeypatch, OPENAI_API_KEY=SECRET, OPENAI_BASE_URL=url)
    try:
        with Chat(url=gateway.url, token=gateway.token, tokens_per_s=0) as chat:
            wait_until(lambda: chat.status == "connected" and chat.error, "the notice")
            assert chat.error == notice  # what the pane's status line shows
            assert (chat.models, chat.model) == (["demo"], "demo")
            assert chat.send("hi").wait(TIMEOUT).error is None  # demo still answers
            assert chat.error == notice  # and the notice stays
        with Chat(url=gateway.url, token=gateway.token, model="llama3.2") as chat:
            reply = chat.send("hi").wait(TIMEOUT)
        assert reply.error_code == "upstream_error"
        assert reply.error == f"model 'llama3.2' is not available: {notice}"
        assert "unknown model" not in reply.error
    finally:
        gateway.close()
    assert notice in caplog.text
    assert SECRET not in caplog.text


def test_a_refused_key_is_said_plainly_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, replay: Replay, caplog: pytest.LogCaptureFixture
) -> None:
    replay.key = "sk-the-right-one"
    notice = (
        f"the server at {replay.base_url} refused the key in OPENAI_API_KEY (HTTP 401); "
        "only `demo` is available"
    )
    with caplog.at_level(logging.WARNING, logger="nbchat.gateway"):
        gateway = embedded_gateway(
            monkeypatch, OPENAI_API_KEY=SECRET, OPENAI_BASE_URL=replay.base_url
        )
    try:
        with Chat(url=gateway.url, token=gateway.token, tokens_per_s=0) as chat:
            wait_until(lambda: chat.status == "connected" and chat.error, "the notice")
            assert chat.error == notice
            assert chat.model == "demo"
        with Chat(url=gateway.url, token=gateway.token, model="gpt-4o-mini") as chat:
            reply = chat.send("hi").wait(TIMEOUT)
            assert reply.error_code == "unauthorized"
            assert reply.error == f"model 'gpt-4o-mini' is not available: {notice}"
            seen = [chat.error, reply.error, *(str(m) for m in chat.messages)]
    finally:
        gateway.close()
    assert replay.requests  # the key was sent to the server, where it belongs
    assert all(SECRET not in text for text in [*seen, caplog.text])


def test_a_server_with_a_credential_in_its_url_is_named_without_it() -> None:
    url = f"http://user:{SECRET}@127.0.0.1:{free_port()}/v1"
    got = offer({"OPENAI_API_KEY": "x", "OPENAI_BASE_URL": url})
    assert got.notice is not None
    assert SECRET not in got.notice
    assert got.notice.startswith("the server at http://127.0.0.1:")


def test_a_config_server_that_is_down_is_named_and_its_models_kept(
    tmp_path: Path, replay: Replay
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    path = tmp_path / "nbchat.toml"
    path.write_text(
        f'[[models]]\nname = "up"\nprovider = "ollama"\nbase_url = "{replay.base_url}"\n'
        f'[[models]]\nname = "down"\nprovider = "ollama"\nbase_url = "{url}"\n'
        f'[[models]]\nname = "down-too"\nprovider = "vllm"\nbase_url = "{url}"\n'
        "default = true\n"
    )
    got = offer({}, path)
    assert list(got.models) == ["up", "down", "down-too", "demo"]  # it may come up later
    assert got.default == "down-too"
    assert got.notice == (
        f"the server at {url} is unreachable (connection refused); down, down-too will "
        "fail until that is fixed"
    )
    assert got.discovery_error is None  # a model not in the file is simply unknown


def test_a_reachable_setup_has_no_notice(tmp_path: Path, replay: Replay) -> None:
    assert offer({}, config_file(tmp_path, replay, False)).notice is None
    assert offer({}).notice is None  # no key, no config: the demo, nothing to say
    assert list(offer({}).models) == ["demo"]
