"""nbchat: a streaming LLM chat widget for Jupyter, driven from the pane or from code."""

from __future__ import annotations

__version__ = "0.1.0"

from .client import GatewayUnavailable
from .conversation_store import ConversationStoreError, conversations, delete_conversation
from .local_models import register_model
from .reply import Reply
from .widget import Chat

__all__ = [
    "Chat",
    "ConversationStoreError",
    "GatewayUnavailable",
    "Reply",
    "__version__",
    "conversations",
    "delete_conversation",
    "register_model",
]
