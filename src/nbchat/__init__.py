"""nbchat: a streaming LLM chat widget for Jupyter, driven from the pane or from code."""

from __future__ import annotations

__version__ = "0.1.0"

from .client import GatewayUnavailable  # noqa: E402
from .reply import Reply  # noqa: E402
from .widget import Chat  # noqa: E402

__all__ = ["Chat", "GatewayUnavailable", "Reply", "__version__"]
