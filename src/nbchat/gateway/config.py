"""Which models a gateway offers: from ``nbchat.toml``, or from the environment.

A config file lists models::

    [[models]]
    name = "llama"                # shown in the picker
    provider = "ollama"           # a preset (PRESETS) or "openai-compatible" / "anthropic"
    model = "llama3.2"            # the provider's name for it (default: name)
    base_url = "http://..."       # default: the preset's
    api_key_env = "MY_KEY"        # the environment variable holding the key
    params = { temperature = 0.2 }  # defaults; a request's own params win

Keys are read from the environment only, never from the file, and are never written
into frames, logs, errors or the transcript. With no file, the gateway offers ``demo``
plus, when ``OPENAI_API_KEY`` is set, every model the OpenAI-compatible server at
``OPENAI_BASE_URL`` lists.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .providers import DemoProvider, ProviderError
from .providers.anthropic_messages import AnthropicProvider
from .providers.openai_compat import OpenAICompatProvider
from .server import ModelRoute

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "Preset", "load_models", "read_config"]

log = logging.getLogger("nbchat.gateway")

DISCOVERY_TIMEOUT_S: Final = 5.0


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
        unknown = set(entry) - {"name", "provider", "model", "base_url", "api_key_env", "params"}
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
        configs.append(
            ModelConfig(
                name=name,
                provider=provider,
                model=str(entry.get("model", name)),
                base_url=entry.get("base_url", preset.base_url),
                api_key_env=entry.get("api_key_env", preset.api_key_env),
                params=params,
            )
        )
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: model names must be unique: {', '.join(duplicates)}")
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
    return ModelRoute(provider, config.model, params=config.params, missing_key=missing)


async def load_models(
    config_path: str | Path | None, env: Mapping[str, str]
) -> dict[str, ModelRoute]:
    """The models to offer: the config file's (``config_path``, else ``NBCHAT_CONFIG``),
    or those discovered at ``OPENAI_BASE_URL`` when ``OPENAI_API_KEY`` is set; then
    ``demo``, which is always there. Raises :class:`ConfigError` for a bad file."""
    routes: dict[str, ModelRoute] = {}
    path = config_path or env.get("NBCHAT_CONFIG")
    if path:
        for config in read_config(path):
            routes[config.name] = _route(config, env)
    elif env.get("OPENAI_API_KEY"):
        base_url = env.get("OPENAI_BASE_URL") or None
        provider = OpenAICompatProvider(
            base_url=base_url, api_key=env["OPENAI_API_KEY"], label="openai"
        )
        try:
            names = await asyncio.wait_for(provider.list_models(), DISCOVERY_TIMEOUT_S)
        except (ProviderError, TimeoutError) as exc:
            log.warning("no models from %s: %s", provider.where, exc)
            names = []
        for name in names:
            routes[name] = ModelRoute(provider, name)
    routes.setdefault("demo", ModelRoute(DemoProvider(), "demo"))
    return routes
