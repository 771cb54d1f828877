"""Providers: the things behind the gateway that generate replies."""

from .base import (
    Finish,
    Provider,
    ProviderError,
    ReasoningChunk,
    Request,
    TextChunk,
    ToolCalls,
    ToolUse,
)
from .demo import DemoProvider

__all__ = [
    "DemoProvider",
    "Finish",
    "Provider",
    "ProviderError",
    "ReasoningChunk",
    "Request",
    "TextChunk",
    "ToolCalls",
    "ToolUse",
]
