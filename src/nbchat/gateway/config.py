"""Which models a gateway offers: from ``nbchat.toml``, or from the environment.

A config file lists models::

    [[models]]
    name = "llama"                # shown in the picker
    provider = "ollama"           # a preset (PRESETS) or "openai-compatible" / "anthropic"
    model = "llama3.2"            # the provider's name for it (default: name)
    base_url = "http://..."       # default: the preset's
    api_key_env = "MY_KEY"        # the environment variable holding the key
    params = { temperature = 0.2 }  # defaults; a request's own params win
    default = true                # the model a Chat uses unless told otherwise
    images = true                 # it takes images (default: judged by the model's name)

Keys are read from the environment only, never from the file, and are never written
into frames, logs, errors or the transcript. With no file, the gateway offers ``demo``
plus, when ``OPENAI_API_KEY`` is set, the chat models the OpenAI-compatible server at
``OPENAI_BASE_URL`` lists (not its embedding, audio, image or moderation models).

The default model is the one ``NBCHAT_MODEL`` names, else the file's ``default = true``
entry (else its first), else a well-known chat model the server lists (else the first it
lists), else ``demo``. A server that cannot be reached, or that refuses the key, at
start-up is not passed over in silence: :attr:`Offer.notice` says so, and the gateway
tells every client in its welcome.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from .providers import DemoProvider, ProviderError
from .providers.anthropic_messages import AnthropicProvider
from .providers.openai_compat import OpenAICompatProvider
from .server import ModelRoute

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelConfig",
    "Offer",
    "Preset",
    "is_chat_model",
    "load_models",
    "load_offer",
    "read_config",
]

log = logging.getLogger("nbchat.gateway")

DISCOVERY_TIMEOUT_S: Final = 5.0
OPENAI_URL: Final = "https://api.openai.com/v1"  # the SDK's default, named in messages

# Ids of models that do not chat (embeddings, speech, transcription, images, moderation,
# realtime audio, legacy completions), as OpenAI and Ollama name them. A server's list
# says nothing about what a model does, so this goes by name.
_NOT_CHAT: Final = re.compile(
    r"(?:^|[-_/.:])(?:embed\w*|\w*-embedding|whisper|tts|transcribe|audio|dall-e|image"
    r"|moderation|realtime|sora|babbage|davinci|rerank\w*|bge|minilm|computer-use"
    r"|codex\w*|search-preview|deep-research)"
    r"(?:$|[-_/.:\d])"
    r"|^gpt-3\.5-turbo-instruct"
    # OpenAI's -pro models answer on the Responses API only, not chat completions.
    r"|^o\d+-pro(?:$|-)|^gpt-[\d.]+-pro(?:$|-)",
    re.IGNORECASE,
)
# Chat models a user is likely to want by default, best first: cheap and quick ones.
PREFERRED_DEFAULTS: Final = (
    "gpt-4.1-mini",
    "gpt-4o-mini",
    "gpt-5-mini",
    "deepseek-chat",
    "gpt-4.1",
    "gpt-4o",
    "gpt-5",
)


@dataclass(frozen=True)
class Preset:
    api: str  # "openai" (chat completions) or "anthropic" (messages)
    base_url: str | None  # None: the SDK's default
    api_key_env: str | None  # None: the server takes no key


PRESETS: Final[dict[str, Preset]] = {
    "openai": Preset("openai", None, "OPENAI_API_KEY"),
    "deepseek": Preset("openai", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
    "openrouter": Preset("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "ollama": Preset("openai", "http://localhost:11434/v1", None),
    "vllm": Preset("openai", "http://localhost:8000/v1", None),
    "llamacpp": Preset("openai", "http://localhost:8080/v1", None),
    "lmstudio": Preset("openai", "http://localhost:1234/v1", None),
    "openai-compatible": Preset("openai", None, None),
    "anthropic": Preset("anthropic", None, "ANTHROPIC_API_KEY"),
}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    provider: str
    model: str
    base_url: str | None
    api_key_env: str | None
    params: dict[str, Any] = field(default_factory=dict)
    default: bool = False
    images: bool | None = None  # whether it takes images; None: judged by its name


@dataclass(frozen=True)
class Offer:
    """What a gateway offers: ``models`` (``demo`` last), the ``default`` one, and a
    ``notice`` for every user when something went wrong finding them (no key in it).
    ``discovery_error`` is set when the server whose models were to be listed could not
    be asked: a request for a model not offered is answered with it, not with
    ``unknown_model``."""

    models: dict[str, ModelRoute]
    default: str
    notice: str | None = None
    discovery_error: ProviderError | None = None


def read_config(path: str | Path) -> list[ModelConfig]:
    """Parse and check a config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} lists no [[models]]")
    configs: list[ModelConfig] = []
    for i, entry in enumerate(entries, 1):
        where = f"{path}, model {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(entry) - {
            "name",
            "provider",
            "model",
            "base_url",
            "api_key_env",
            "params",
            "default",
            "images",
        }
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        name, provider = entry.get("name"), entry.get("provider")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' is required")
        if provider not in PRESETS:
            raise ConfigError(
                f"{where} ({name}): provider must be one of {', '.join(PRESETS)}, not {provider!r}"
            )
        preset = PRESETS[provider]
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{where} ({name}): params must be a table")
        default = entry.get("default", False)
        if not isinstance(default, bool):
            raise ConfigError(f"{where} ({name}): default must be true or false")
        images = entry.get("images")
        if images is not None and not isinstance(images, bool):
            raise ConfigError(f"{where} ({name}): images must be true or false")
        configs.append(
            ModelConfig(
                name=name,
                provider=provider,
                model=str(entry.get("model", name)),
                base_url=entry.get("base_url", preset.base_url),
                api_key_env=entry.get("api_key_env", preset.api_key_env),
                params=params,
                default=default,
                images=images,
            )
        )
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: model names must be unique: {', '.join(duplicates)}")
    defaults = [c.name for c in configs if c.default]
    if len(defaults) > 1:
        raise ConfigError(f"{path}: only one model may be the default: {', '.join(defaults)}")
    return configs


def _route(config: ModelConfig, env: Mapping[str, str]) -> ModelRoute:
    key = env.get(config.api_key_env) if config.api_key_env else None
    provider: Any
    if PRESETS[config.provider].api == "anthropic":
        provider = AnthropicProvider(base_url=config.base_url, api_key=key, label=config.provider)
    else:
        provider = OpenAICompatProvider(
            base_url=config.base_url, api_key=key, label=config.provider
        )
    missing = config.api_key_env if config.api_key_env and not key else None
    return ModelRoute(
        provider, config.model, params=config.params, missing_key=missing, images=config.images
    )


async def load_models(
    config_path: str | Path | None, env: Mapping[str, str]
) -> dict[str, ModelRoute]:
    """The models of :func:`load_offer`: a gateway built on them alone has no default
    (it offers the first) and no notice."""
    return (await load_offer(config_path, env)).models


async def load_offer(config_path: str | Path | None, env: Mapping[str, str]) -> Offer:
    """What to offer: the config file's models (``config_path``, else ``NBCHAT_CONFIG``),
    or the chat models discovered at ``OPENAI_BASE_URL`` when ``OPENAI_API_KEY`` is set;
    then ``demo``, which is always there. The OpenAI-compatible servers are asked for
    their model list at once (at most :data:`DISCOVERY_TIMEOUT_S`), so one that cannot
    be reached or refuses the key is named in the notice. Raises :class:`ConfigError`
    for a bad file."""
    routes: dict[str, ModelRoute] = {}
    problems: list[str] = []
    discovery_error: ProviderError | None = None
    preferred: str | None = None
    path = config_path or env.get("NBCHAT_CONFIG")
    if path:
        configs = read_config(path)
        for config in configs:
            routes[config.name] = _route(config, env)
        problems += await _check_servers(configs, routes, env)
        preferred = next((c.name for c in configs if c.default), configs[0].name)
    elif env.get("OPENAI_API_KEY"):
        base_url = env.get("OPENAI_BASE_URL") or None
        provider = OpenAICompatProvider(
            base_url=base_url, api_key=env["OPENAI_API_KEY"], label="openai"
        )
        try:
            listed = await _list_models(base_url, env["OPENAI_API_KEY"])
        except ProviderError as exc:
            discovery_error = ProviderError(
                exc.code,
                f"{_problem(base_url or OPENAI_URL, exc, 'OPENAI_API_KEY')}; "
                "only `demo` is available",
                reason=exc.reason,
            )
            problems.append(discovery_error.message)
            listed = []
        chat = [name for name in listed if is_chat_model(name)] or listed
        for name in sorted(chat):
            routes[name] = ModelRoute(provider, name)
        preferred = _preferred(chat)
    routes.setdefault("demo", ModelRoute(DemoProvider(), "demo"))
    default = preferred if preferred in routes else next(iter(routes))
    wanted = env.get("NBCHAT_MODEL", "").strip()
    if wanted in routes:
        default = wanted
    elif wanted:
        problems.append(
            f"NBCHAT_MODEL names {wanted!r}, which is not offered; the default is {default!r}"
        )
    for problem in problems:
        log.warning("%s", problem)
    notice = "; ".join(problems) if problems else None
    return Offer(routes, default, notice=notice, discovery_error=discovery_error)


def is_chat_model(name: str) -> bool:
    """Whether a model id is one to chat with: not an embedding, speech, transcription,
    image, moderation or realtime model (judged by its name)."""
    return _NOT_CHAT.search(name) is None


def _preferred(names: list[str]) -> str | None:
    """A sensible default among a server's chat models: the first of
    :data:`PREFERRED_DEFAULTS` it lists (also as ``vendor/name``), else its first."""
    for wanted in PREFERRED_DEFAULTS:
        for name in names:
            if name == wanted or name.endswith("/" + wanted):
                return name
    return names[0] if names else None


async def _list_models(base_url: str | None, key: str | None) -> list[str]:
    """The models the server lists, asked by a provider of its own: its connections
    belong to this event loop, and the gateway may serve on another one."""
    provider = OpenAICompatProvider(base_url=base_url, api_key=key, label="the server")
    try:
        return await asyncio.wait_for(provider.list_models(), DISCOVERY_TIMEOUT_S)
    except TimeoutError:
        raise ProviderError(
            "upstream_error",
            f"the server did not list its models within {DISCOVERY_TIMEOUT_S:g} s",
            reason=f"no answer within {DISCOVERY_TIMEOUT_S:g} s",
        ) from None
    finally:
        await provider.close()


async def _check_servers(
    configs: list[ModelConfig], routes: dict[str, ModelRoute], env: Mapping[str, str]
) -> list[str]:
    """Ask each OpenAI-compatible server of a config for its models, all at once: what
    cannot be reached, or refuses the key, is a problem to tell users. (Its models stay
    offered: the server may be started later. A server without a model list is fine.)"""
    servers: dict[tuple[str | None, str | None], list[ModelConfig]] = {}
    keys: list[str | None] = []
    for config in configs:
        route = routes[config.name]
        if isinstance(route.provider, OpenAICompatProvider) and route.missing_key is None:
            server = (config.base_url, config.api_key_env)
            if server not in servers:
                keys.append(env.get(config.api_key_env) if config.api_key_env else None)
            servers.setdefault(server, []).append(config)
    results = await asyncio.gather(
        *(_list_models(url, key) for (url, _), key in zip(servers, keys, strict=True)),
        return_exceptions=True,
    )
    problems = []
    for group, result in zip(servers.values(), results, strict=True):
        if not isinstance(result, ProviderError):
            continue  # listed (or failed in a way a request will report better)
        if result.code != "unauthorized" and (result.reason or "").startswith("HTTP"):
            continue  # it answered: it is there, it just lists no models
        names = ", ".join(c.name for c in group)
        where = group[0].base_url or OPENAI_URL
        problem = _problem(where, result, group[0].api_key_env)
        problems.append(f"{problem}; {names} will fail until that is fixed")
    return problems


def _problem(where: str, error: ProviderError, key_env: str | None) -> str:
    """A start-up problem in plain words, naming the server (without any credentials
    in its URL) and the variable that holds the key, never the key."""
    server = f"the server at {_without_credentials(where)}"
    reason = error.reason or error.message
    if error.code == "unauthorized":
        key = f"the key in {key_env}" if key_env else "the request"
        return f"{server} refused {key} ({reason})"
    if reason.startswith("HTTP"):
        return f"{server} did not list its models ({reason})"
    return f"{server} is unreachable ({reason})"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
