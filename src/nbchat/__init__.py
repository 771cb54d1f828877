"""nbchat: a streaming LLM chat widget for Jupyter, driven from the pane or from code."""

from __future__ import annotations

__version__ = "0.1.0"

from .batching import batch
from .client import GatewayUnavailable
from .compare import Compare
from .conversation_store import ConversationStoreError, conversations, delete_conversation
from .local_models import register_model
from .reply import Reply
from .widget import Chat

__all__ = [
    "Chat",
    "Compare",
    "ConversationStoreError",
    "GatewayUnavailable",
    "Reply",
    "__version__",
    "batch",
    "conversations",
    "delete_conversation",
    "register_model",
]
