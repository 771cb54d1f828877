"""nbchat: a streaming LLM chat widget for Jupyter, driven from the pane or from code."""

from __future__ import annotations

__version__ = "0.1.0"

from .client import GatewayUnavailable
from .reply import Reply
from .widget import Chat

__all__ = ["Chat", "GatewayUnavailable", "Reply", "__version__"]
