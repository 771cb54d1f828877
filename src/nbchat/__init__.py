"""nbchat: a streaming LLM chat widget for Jupyter, driven from the pane or from code."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .client import GatewayUnavailable
from .reply import Reply
from .store import shared_store
from .widget import Chat

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Chat",
    "GatewayUnavailable",
    "Reply",
    "__version__",
    "conversations",
    "delete_conversation",
]


def conversations() -> pd.DataFrame:
    """The named conversations kept on disk (``Chat(conversation=name)``), most recently
    used first: name, turns, messages, models, created_at, last_used. Needs pandas."""
    import pandas as pd

    frame: pd.DataFrame = pd.DataFrame.from_records(
        shared_store().summaries(),
        columns=["name", "turns", "messages", "models", "created_at", "last_used"],
    )
    for column in ("created_at", "last_used"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame


def delete_conversation(name: str) -> bool:
    """Forget the named conversation on disk; whether there was one. A Chat still open
    under that name saves it again at its next turn."""
    return shared_store().delete(name)
