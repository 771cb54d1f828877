"""Named conversations kept on disk: one SQLite file (the standard library's sqlite3),
in the user's data directory unless ``NBCHAT_HOME`` says where.

Each conversation is a row in ``conversations``; each of its messages a row in
``messages``, keyed by (conversation, position) and written whole as JSON, so two
kernels writing one conversation cannot corrupt it: the last writer of a message wins.
WAL mode lets readers go on while one writes; a writer waits up to
:data:`BUSY_TIMEOUT_S` for another's lock before giving up with an error.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from .transcript import Transcript, transcript_from_json, transcript_to_json

__all__ = ["BUSY_TIMEOUT_S", "ConversationStore", "default_store_path", "shared_store"]

BUSY_TIMEOUT_S: Final = 10.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS conversations (
    name TEXT PRIMARY KEY,
    system TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conversation, position)
);
"""


def default_store_path(env: Mapping[str, str] | None = None) -> Path:
    """``$NBCHAT_HOME/conversations.sqlite3``, else under ``$XDG_DATA_HOME/nbchat``
    (``~/.local/share/nbchat`` when that is unset)."""
    env = os.environ if env is None else env
    home = env.get("NBCHAT_HOME")
    if home:
        base = Path(home)
    else:
        data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        base = Path(data) / "nbchat"
    return base / "conversations.sqlite3"


class ConversationStore:
    """The conversations in one SQLite file. Thread-safe; one connection per store."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def load(self, name: str) -> Transcript | None:
        """The conversation saved under ``name``, or None if there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT system FROM conversations WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT data FROM messages WHERE conversation = ? ORDER BY position", (name,)
            ).fetchall()
        data = transcript_to_json(Transcript(system=row[0]))
        data["messages"] = [json.loads(r[0]) for r in rows]
        return transcript_from_json(data)

    def save(self, name: str, transcript: Transcript, *, start: int = 0) -> None:
        """Write the messages of ``transcript`` from position ``start`` on (earlier ones
        are as saved before) and drop any saved beyond its end."""
        now = time.time()
        messages = transcript_to_json(transcript)["messages"]
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations (name, system, created_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "system = excluded.system, updated_at = excluded.updated_at",
                (name, transcript.system, now, now),
            )
            db.executemany(
                "INSERT INTO messages (conversation, position, data) VALUES (?, ?, ?) "
                "ON CONFLICT(conversation, position) DO UPDATE SET data = excluded.data",
                [
                    (name, i, json.dumps(m, ensure_ascii=False))
                    for i, m in enumerate(messages)
                    if i >= start
                ],
            )
            db.execute(
                "DELETE FROM messages WHERE conversation = ? AND position >= ?",
                (name, len(messages)),
            )

    def delete(self, name: str) -> bool:
        """Forget the conversation; whether there was one."""
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM conversations WHERE name = ?", (name,))
            return cursor.rowcount > 0

    def summaries(self) -> list[dict[str, Any]]:
        """One dict per conversation: name, turns, messages, models, created_at,
        last_used (Unix time), most recently used first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created_at, updated_at FROM conversations ORDER BY updated_at DESC"
            ).fetchall()
            out = []
            for name, created, updated in rows:
                data = [
                    json.loads(r[0])
                    for r in self._db.execute(
                        "SELECT data FROM messages WHERE conversation = ? ORDER BY position",
                        (name,),
                    )
                ]
                models = sorted({m["model"] for m in data if m.get("model")})
                out.append(
                    {
                        "name": name,
                        "turns": sum(1 for m in data if m["role"] == "user"),
                        "messages": len(data),
                        "models": ", ".join(models),
                        "created_at": created,
                        "last_used": updated,
                    }
                )
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


_shared: ConversationStore | None = None
_shared_lock = threading.Lock()


def shared_store() -> ConversationStore:
    """The process's store at :func:`default_store_path` (opened on first use; a
    change of ``NBCHAT_HOME`` opens the new one)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.path != default_store_path():
            _shared = ConversationStore()
        return _shared
