"""The nbchat gateway: a WebSocket server in front of LLM providers."""

from .embedded import EmbeddedGateway, shared_gateway
from .server import CHAT_PATH, Gateway, ModelRoute

__all__ = ["CHAT_PATH", "EmbeddedGateway", "Gateway", "ModelRoute", "shared_gateway"]
