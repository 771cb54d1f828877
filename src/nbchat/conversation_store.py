"""Named conversations on disk: one SQLite file (the standard library's ``sqlite3``) in
the user's data directory, or in ``NBCHAT_HOME``, and the recorder that writes a named
chat's messages into it as they are made, off the client loop thread.

What the file keeps true (each rule has a test in tests/test_conversation_store.py):

- A row per message, keyed by a per-message id, never by position. A writer only
  inserts or replaces rows: a shorter transcript in one process never deletes another
  process's messages, and when two write one message the last writer wins.
- WAL mode, ``BEGIN IMMEDIATE`` and a busy timeout (:data:`BUSY_TIMEOUT_S`): two kernels
  writing one conversation take turns and cannot corrupt it.
- A conversation has an *epoch*. ``clear`` gives it a new one and ``delete`` removes the
  conversation. A recorder whose epoch is no longer there stops writing, and its chat
  says so in ``chat.error``, rather than write its later turns alone into a conversation
  that has lost the earlier ones.
- A reply is written while it streams (at most every :data:`STREAM_WRITE_S`) and when it
  ends, so a crash keeps its partial text, which loads as ``finish == "stopped"``.
- Branches (see :mod:`nbchat.transcript`): every message of the tree is kept, each row
  holding its message's ``id``, ``parent`` and ``branch``, and ``path``, whether it was
  on the active branch when last written (rewritten when a checkout or an undo moves
  it); the active branch's last message also says ``end``, rewritten when the end
  moves. Loading keeps every row's parent: two chats writing one name at once make
  two branches, each turn after the reply its chat saw. The active branch is the one
  whose ``end`` was written last: the latest turn, undo or checkout of any chat on
  the name. Rows written before branches (no ``path``), and any whose parent is not
  stored, are one line in turn order.
- The schema has a version (``PRAGMA user_version``). A newer one, or a file that is not
  a database, raises :class:`ConversationStoreError` naming the file.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .conversation import ConnectionStatus, Conversation, ConversationListener
from .protocol import MAX_NAME_CHARS, lone_surrogate
from .reply import Reply
from .transcript import Message, Transcript, message_to_json, transcript_from_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "STREAM_WRITE_S",
    "ConversationGone",
    "ConversationRecorder",
    "ConversationStore",
    "ConversationStoreError",
    "StoredConversation",
    "StoredMessage",
    "check_name",
    "conversations",
    "default_store_path",
    "delete_conversation",
]

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_S: Final = 10.0  # how long a writer waits for another process's write
STREAM_WRITE_S: Final = 1.0  # a streaming reply's text is written at most this often
FILE_NAME: Final = "conversations.sqlite3"

_SCHEMA: Final = (
    """CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a deleted one stays gone
        name TEXT NOT NULL UNIQUE,
        epoch TEXT NOT NULL,                   -- new on every clear
        system TEXT,
        model TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE messages (
        conversation INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        anchor REAL NOT NULL,     -- when its turn began: a turn's messages stay together
        source TEXT NOT NULL,     -- the chat that first wrote it
        ordinal INTEGER NOT NULL, -- its index in that chat's transcript
        role TEXT NOT NULL,
        model TEXT,
        data TEXT NOT NULL,       -- the message as transcript_to_json writes it
        updated_at REAL NOT NULL,
        PRIMARY KEY (conversation, id)
    )""",
    "CREATE INDEX messages_in_order ON messages (conversation, anchor, source, ordinal)",
)


class ConversationStoreError(Exception):
    """The conversation store cannot be opened, read or written; the message names the
    file and says what to do."""


class ConversationGone(Exception):
    """The conversation a recorder writes was deleted or cleared by someone else."""


def default_store_path(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """Where the store lives: ``$NBCHAT_HOME/conversations.sqlite3``, else in the
    platform's user data directory: ``$XDG_DATA_HOME/nbchat`` (``~/.local/share/nbchat``)
    on Linux, ``~/Library/Application Support/nbchat`` on macOS,
    ``%LOCALAPPDATA%\\nbchat`` on Windows."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = env.get("NBCHAT_HOME")
    if home:
        return Path(home).expanduser() / FILE_NAME
    if platform == "win32":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = env.get("XDG_DATA_HOME", "")
        # The XDG spec: a relative path is invalid and is ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "nbchat" / FILE_NAME


def check_name(name: object) -> str:
    """``name`` if it can name a conversation, else ``ValueError`` saying why."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a conversation name must be non-empty text, e.g. 'eda-churn'")
    if name != name.strip():
        # " eda" and "eda" would look alike in conversations() and be two conversations.
        raise ValueError(f"a conversation name may not start or end with a space: {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a conversation name may have at most {MAX_NAME_CHARS} characters")
    if lone_surrogate(name) is not None:
        raise ValueError("a conversation name must be valid Unicode text")
    return name


@dataclass(frozen=True)
class StoredMessage:
    """One message row to write: ``data`` is the message as ``transcript_to_json``
    writes it; ``anchor``, ``source`` and ``ordinal`` place it in the conversation."""

    id: str
    anchor: float
    source: str
    ordinal: int
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredConversation:
    """A conversation as read from the store. ``message_ids`` are the ids of its
    messages (each message's own, which is also its row's), on every branch."""

    id: int
    name: str
    epoch: str
    system: str | None
    model: str | None
    created_at: float
    updated_at: float
    transcript: Transcript
    message_ids: list[str] = field(default_factory=list)


class ConversationStore:
    """The named conversations in one SQLite file, through one connection.

    Opening creates the file (and its directory) if needed and checks its schema
    version; every method raises :class:`ConversationStoreError` naming the file when
    SQLite fails, never a bare ``sqlite3`` error. Thread-safe; :meth:`close` when done.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot create its directory: {exc}") from None
        with self._errors("cannot open it"):
            self._db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE
                check_same_thread=False,
            )
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise

    def _error(self, what: str) -> ConversationStoreError:
        return ConversationStoreError(
            f"nbchat's conversation store {self.path}: {what}. Move the file aside, or "
            "set NBCHAT_HOME to another directory, to start a new store"
        )

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(f"{doing}: {exc}") from None

    def _prepare(self) -> None:
        with self._errors("cannot read it (is it an SQLite database?)"):
            version = self._version()
        if version > SCHEMA_VERSION:
            raise self._error(
                f"it was written by a newer nbchat (schema version {version}; this one "
                f"reads version {SCHEMA_VERSION}); upgrade nbchat to use it"
            )
        with self._errors("cannot prepare it"):
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            if version == 0:
                with self._transaction():
                    if self._version() == 0:  # another process may have just made it
                        tables = self._db.execute(
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                        ).fetchone()[0]
                        if tables:
                            raise self._error("it is an SQLite file, but not nbchat's")
                        for statement in _SCHEMA:
                            self._db.execute(statement)
                        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start (so two
        processes never both read, then both write)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- reading ------------------------------------------------------------------

    def load(self, name: str) -> StoredConversation | None:
        """The conversation called ``name``, or None if there is none."""
        with self._lock, self._errors(f"cannot read conversation {name!r}"):
            return self._load(name)

    def _load(self, name: str) -> StoredConversation | None:
        row = self._db.execute(
            "SELECT id, epoch, system, model, created_at, updated_at "
            "FROM conversations WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        conversation_id, epoch, system, model, created, updated = row
        rows = self._db.execute(
            "SELECT id, data, updated_at FROM messages WHERE conversation = ? "
            "ORDER BY anchor, source, ordinal, id",
            (conversation_id,),
        ).fetchall()
        try:
            tree = _as_tree(
                [(row_id, json.loads(data)) for row_id, data, _ in rows],
                {row_id: updated for row_id, _, updated in rows},
            )
            transcript = transcript_from_json(
                {"format": "nbchat.transcript", "version": 2, "system": system, **tree}
            )
        except (ValueError, RecursionError, TypeError) as exc:
            raise self._error(
                f"conversation {name!r} holds a message nbchat cannot read: {exc}"
            ) from None
        return StoredConversation(
            id=conversation_id,
            name=name,
            epoch=epoch,
            system=system,
            model=model,
            created_at=created,
            updated_at=updated,
            transcript=transcript,
            message_ids=[m.id for m in transcript.tree()],
        )

    def summaries(self) -> list[dict[str, Any]]:
        """One dict per conversation, most recently used first: ``name``, ``turns``,
        ``messages``, ``models`` (the models its replies used, comma-separated),
        ``created_at`` and ``last_used`` (Unix seconds)."""
        with self._lock, self._errors("cannot list its conversations"):
            rows = self._db.execute(
                """SELECT c.name,
                          count(m.id),
                          coalesce(sum(m.role = 'user'), 0),
                          c.created_at,
                          c.updated_at
                   FROM conversations c LEFT JOIN messages m ON m.conversation = c.id
                   GROUP BY c.id ORDER BY c.updated_at DESC, c.id DESC"""
            ).fetchall()
            models: dict[str, set[str]] = {}
            for name, model in self._db.execute(
                "SELECT DISTINCT c.name, m.model FROM conversations c "
                "JOIN messages m ON m.conversation = c.id WHERE m.model IS NOT NULL"
            ):
                models.setdefault(name, set()).add(model)
        return [
            {
                "name": name,
                "turns": turns,
                "messages": count,
                "models": ", ".join(sorted(models.get(name, ()))),
                "created_at": created,
                "last_used": updated,
            }
            for name, count, turns, created, updated in rows
        ]

    # --- writing ------------------------------------------------------------------

    def open(self, name: str, *, system: str | None, model: str | None) -> StoredConversation:
        """The conversation called ``name``, created if there is none. A ``system`` or
        ``model`` given replaces the one kept; ``None`` keeps it. Marks it used now."""
        check_name(name)
        now = time.time()
        with self._errors(f"cannot open conversation {name!r}"), self._transaction() as db:
            db.execute(
                "INSERT INTO conversations (name, epoch, system, model, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " system = coalesce(excluded.system, system),"
                " model = coalesce(excluded.model, model),"
                " updated_at = excluded.updated_at",
                (name, uuid.uuid4().hex, system, model, now, now),
            )
            stored = self._load(name)
        assert stored is not None
        return stored

    def write(
        self,
        conversation_id: int,
        epoch: str,
        messages: list[StoredMessage],
        *,
        system: str | None,
        model: str | None,
    ) -> None:
        """Insert or replace ``messages`` (by id; no other row is touched) and set the
        conversation's system prompt and model, in one transaction. Raises
        :class:`ConversationGone` if the conversation was deleted or cleared since
        ``epoch``, writing nothing."""
        now = time.time()
        encoded = [
            (
                conversation_id,
                m.id,
                m.anchor,
                m.source,
                m.ordinal,
                m.data["role"],
                m.data.get("model"),
                json.dumps(m.data, ensure_ascii=False, allow_nan=False),
                now,
            )
            for m in messages
        ]
        with self._errors("cannot write to it"), self._transaction() as db:
            self._check_epoch(db, conversation_id, epoch)
            db.executemany(
                "INSERT INTO messages (conversation, id, anchor, source, ordinal, role, model,"
                " data, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (conversation, id) DO UPDATE SET role = excluded.role,"
                " model = excluded.model, data = excluded.data, updated_at = excluded.updated_at",
                encoded,
            )
            db.execute(
                "UPDATE conversations SET system = ?, model = ?, updated_at = ? WHERE id = ?",
                (system, model, now, conversation_id),
            )

    def clear(self, conversation_id: int, epoch: str) -> str:
        """Delete every message of the conversation (whoever wrote it) and give it a new
        epoch, which is returned; name, system prompt and model stay. Raises
        :class:`ConversationGone` if it was deleted or cleared since ``epoch``."""
        new_epoch = uuid.uuid4().hex
        with self._errors("cannot clear a conversation in it"), self._transaction() as db:
            self._check_epoch(db, conversation_id, epoch)
            db.execute("DELETE FROM messages WHERE conversation = ?", (conversation_id,))
            db.execute(
                "UPDATE conversations SET epoch = ?, updated_at = ? WHERE id = ?",
                (new_epoch, time.time(), conversation_id),
            )
        return new_epoch

    def delete(self, name: str) -> int:
        """Delete the conversation called ``name`` and all its messages; returns its id.
        Raises ``KeyError`` if there is none."""
        with self._errors(f"cannot delete conversation {name!r}"), self._transaction() as db:
            row = db.execute("SELECT id FROM conversations WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(f"there is no conversation named {name!r} in {self.path}")
            db.execute("DELETE FROM messages WHERE conversation = ?", (row[0],))
            db.execute("DELETE FROM conversations WHERE id = ?", (row[0],))
        return int(row[0])

    def _check_epoch(self, db: sqlite3.Connection, conversation_id: int, epoch: str) -> None:
        row = db.execute(
            "SELECT name, epoch FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise ConversationGone("it was deleted")
        if row[1] != epoch:
            raise ConversationGone("it was cleared by another chat")

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._db.close()


def _as_tree(
    rows: list[tuple[str, Any]], written: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The stored rows (in turn order) as a version 2 file's ``messages`` and
    ``active``. Each row keeps its stored parent. Rows written before branches (no
    ``path``) and rows whose parent is not stored are one line in turn order, each after
    the one before it among them (two processes' turns interleave there, as they did
    before branches). The active branch ends at the row marked ``end`` (each chat on the
    name marks its own) that was written last (``written``: each row's last write, by
    id; without it, the last in turn order); with none marked, at a row on the path
    with no child on it, the same way."""
    items: list[dict[str, Any]] = []
    for row_id, data in rows:
        if not isinstance(data, dict):
            raise ValueError(f"message {row_id!r} is not an object")
        item = dict(data)
        if not isinstance(item.get("id"), str):
            item["id"] = row_id
        items.append(item)
    when = [(written or {}).get(row_id, 0.0) for row_id, _ in rows]
    ids = {d["id"] for d in items}
    before: str | None = None
    for item in items:
        parent = item.get("parent")
        if "path" not in item or (parent is not None and parent not in ids):
            item["parent"], before = before, item["id"]
    # Each chat marks its active branch's end; rows from before that mark: the ends of
    # the path.
    ends = [(n, d["id"]) for n, d in enumerate(items) if d.get("end") is True]
    if not ends:
        on_path = [(n, d) for n, d in enumerate(items) if d.get("path", True) is not False]
        has_child = {d.get("parent") for _, d in on_path}
        ends = [(n, d["id"]) for n, d in on_path if d["id"] not in has_child]
    active = max(ends, key=lambda e: (when[e[0]], e[0]))[1] if ends else None
    # Siblings in the order they were made (a retry's reply after the first), which
    # turn order leaves to the ids when two share a place.
    order = sorted(range(len(items)), key=lambda n: (_created(items[n]), n))
    return {"messages": [items[n] for n in order], "active": active}


def _created(item: dict[str, Any]) -> float:
    created = item.get("created_at")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return 0.0  # refused, saying why, when the message is read
    return float(created) if math.isfinite(created) else 0.0


# --- the recorder: a named chat's messages, written as they are made --------------


@dataclass
class _Known:
    """What the recorder last wrote for one message of the transcript."""

    message: Message  # held, so its id() is not reused while it is known
    id: str
    data: dict[str, Any] | None
    settled: bool  # written in its final form: written again only if path or end change
    path: bool = True  # on the active branch when written
    end: bool = False  # the active branch's last message when written


@dataclass
class _Write:
    messages: dict[str, StoredMessage]
    system: str | None
    model: str | None


@dataclass
class _Clear:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


_recorders: weakref.WeakSet[ConversationRecorder] = weakref.WeakSet()
_recorders_lock = threading.Lock()


class ConversationRecorder(ConversationListener):
    """Keeps one named chat's conversation in the store, as a listener of its
    :class:`~nbchat.conversation.Conversation` that passes every hook on to ``inner``.

    At each turn's start and end, and at most every :data:`STREAM_WRITE_S` while a
    reply streams, it snapshots the messages that changed (under the conversation's
    lock, never touching SQLite) and hands them to its own writer thread, so the client
    loop never waits on the disk. Once the conversation is deleted or cleared by
    someone else it writes no more and reports why through ``report``.

    Make it with :meth:`open`, give it to the Conversation as its listener, then call
    :meth:`attach`. :meth:`close` waits for what is queued to be written.
    """

    def __init__(
        self,
        store: ConversationStore,
        stored: StoredConversation,
        *,
        inner: ConversationListener | None = None,
        report: Callable[[str | None], None] | None = None,
    ) -> None:
        self.store = store
        self.name = stored.name
        self.stored = stored
        self.inner = inner or ConversationListener()
        self.report = report or (lambda _error: None)
        self.conversation_id = stored.id
        self._epoch = stored.epoch
        self._source = uuid.uuid4().hex[:12]
        on_path = {id(m) for m in stored.transcript.messages}
        last = stored.transcript.messages[-1] if stored.transcript.messages else None
        self._known: dict[int, _Known] = {
            id(m): _Known(m, m.id, None, settled=True, path=id(m) in on_path, end=m is last)
            for m in stored.transcript.tree()
        }
        self._meta: tuple[str | None, str | None] = (stored.system, stored.model)
        self._conversation: Conversation | None = None
        self._sweep_lock = threading.Lock()
        self._last_sweep = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._cond = threading.Condition()
        self._ops: list[_Write | _Clear] = []
        self._unwritten: _Write | None = None  # a write that failed, tried again next
        self._gone: str | None = None
        self._failing = False  # the last write failed, and said so
        self._closed = False
        self._thread = threading.Thread(
            target=self._write_loop, name=f"nbchat-store-{stored.id}", daemon=True
        )
        self._thread.start()
        with _recorders_lock:
            _recorders.add(self)

    @classmethod
    def open(
        cls,
        name: str,
        *,
        system: str | None = None,
        model: str | None = None,
        path: str | os.PathLike[str] | None = None,
        inner: ConversationListener | None = None,
        report: Callable[[str | None], None] | None = None,
    ) -> ConversationRecorder:
        """Open (or create) the conversation ``name`` in the store at ``path`` (default
        :func:`default_store_path`). Raises ``ValueError`` for a bad name and
        :class:`ConversationStoreError` for a store that cannot be used."""
        check_name(name)
        store = ConversationStore(path)
        try:
            stored = store.open(name, system=system, model=model)
        except BaseException:
            store.close()
            raise
        return cls(store, stored, inner=inner, report=report)

    @property
    def saving(self) -> bool:
        """Whether it still writes the conversation (not after a delete, a clear by
        someone else, or :meth:`close`)."""
        return self._gone is None and not self._closed

    def attach(self, conversation: Conversation) -> None:
        """Start following ``conversation`` (whose listener this is)."""
        self._conversation = conversation

    # --- listener hooks (the client loop thread, except on_transcript from clear) --

    def on_status(self, status: ConnectionStatus, detail: str, error: str | None) -> None:
        # That it no longer saves stays said while the link has nothing worse to say.
        self.inner.on_status(status, detail, error or self._gone)

    def on_models(self, models: list[str]) -> None:
        self.inner.on_models(models)

    def on_transcript(self) -> None:
        self.inner.on_transcript()
        self._sweep()

    def on_reply_start(self, reply: Reply) -> None:
        self.inner.on_reply_start(reply)

    def on_chunk(self, reply: Reply, text: str) -> None:
        self.inner.on_chunk(reply, text)
        self._soon()

    def on_reasoning(self, reply: Reply, text: str) -> None:
        self.inner.on_reasoning(reply, text)
        self._soon()

    def on_reply_status(self, reply: Reply) -> None:
        self.inner.on_reply_status(reply)
        self._sweep()

    def on_tool_asking(self, reply: Reply) -> None:
        self.inner.on_tool_asking(reply)

    # --- snapshots, on the caller's thread -----------------------------------------

    def _soon(self) -> None:
        """A reply grew: write it now if the last write is STREAM_WRITE_S old, else
        once when it will be; never once per token."""
        wait = self._last_sweep + STREAM_WRITE_S - time.monotonic()
        if wait <= 0:
            self._sweep()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the loop: the next hook writes it
                return
            self._timer = loop.call_later(wait, self._timed_sweep)

    def _timed_sweep(self) -> None:
        self._timer = None
        self._sweep()

    def _sweep(self) -> None:
        """Queue every message that changed since it was last written."""
        conversation = self._conversation
        if conversation is None or not self.saving:
            return
        try:
            with self._sweep_lock:  # queued in order with a clear()
                self._last_sweep = time.monotonic()
                write = self._changes(conversation)
                if write is not None:
                    self._enqueue(write)
        except Exception as exc:  # a hook must never break the conversation
            self._fail(f"could not save conversation {self.name!r}: {exc}")

    def _changes(self, conversation: Conversation) -> _Write | None:
        changed: dict[str, StoredMessage] = {}
        with conversation.lock:
            transcript = conversation.transcript
            messages = transcript.tree()
            on_path = {id(m) for m in transcript.messages}
            last = transcript.messages[-1] if transcript.messages else None
            meta = (transcript.system, conversation.model)
            # Each message's anchor (when its turn began) and place along its branch.
            place: dict[str | None, tuple[float | None, int]] = {None: (None, -1)}
            for m in messages:
                anchor, depth = place.get(m.parent, (None, -1))
                if m.role == "user":
                    anchor = m.created_at
                place[m.id] = (anchor, depth + 1)
                path, end = id(m) in on_path, m is last
                known = self._known.get(id(m))
                if known is not None and known.message is not m:
                    known = None  # a message that is gone, whose id() was reused
                if known is not None and known.settled and (known.path, known.end) == (path, end):
                    continue
                # The active branch's end is written again whenever it moves, so the
                # newest end is this chat's latest (see _as_tree).
                data = message_to_json(m) | {"path": path} | ({"end": True} if end else {})
                if known is None:
                    known = _Known(m, m.id, None, settled=False, path=path, end=end)
                    self._known[id(m)] = known
                if data != known.data:
                    changed[known.id] = StoredMessage(
                        known.id,
                        m.created_at if anchor is None else anchor,
                        self._source,
                        depth + 1,
                        data,
                    )
                    known.data = data
                known.settled, known.path, known.end = m.final, path, end
        if len(self._known) > len(messages):  # forget messages no longer held
            held = {id(m) for m in messages}
            self._known = {k: v for k, v in self._known.items() if k in held}
        if not changed and meta == self._meta:
            return None
        self._meta = meta
        return _Write(changed, *meta)

    def clear(self) -> None:
        """The chat was cleared: delete the stored messages too (the conversation stays,
        empty, and goes on being written). Waits for the writer, so the store is empty
        when this returns; raises :class:`ConversationStoreError` if it could not be."""
        if not self.saving:
            return
        op = _Clear()
        with self._sweep_lock:
            self._known.clear()
            self._enqueue(op)
        op.done.wait(BUSY_TIMEOUT_S + 5)
        if op.error is not None:
            raise ConversationStoreError(op.error)

    # --- the writer thread ---------------------------------------------------------

    def _enqueue(self, op: _Write | _Clear) -> None:
        with self._cond:
            self._ops.append(op)
            self._cond.notify()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                if not self._ops and not self._closed:
                    # A failed write is tried again after a while, or with the next.
                    retry = STREAM_WRITE_S if self._unwritten is not None else None
                    self._cond.wait(retry)
                ops, self._ops = self._ops, []
                closed = self._closed
            if not ops and self._unwritten is not None and self._gone is None:
                ops = [_Write({}, *self._meta)]
            for op in _merged(ops):
                self._apply(op)
            if closed and not self._ops:
                return

    def _apply(self, op: _Write | _Clear) -> None:
        if self._gone is not None:
            if isinstance(op, _Clear):
                op.error = self._gone
                op.done.set()
            return
        try:
            if isinstance(op, _Clear):
                self._unwritten = None  # what it held is what the clear removes
                self._epoch = self.store.clear(self.conversation_id, self._epoch)
                _tell_others(self, "it was cleared by another chat")
                op.done.set()
                return
            if self._unwritten is not None:
                op = _Write({**self._unwritten.messages, **op.messages}, op.system, op.model)
                self._unwritten = None
            self.store.write(
                self.conversation_id,
                self._epoch,
                list(op.messages.values()),
                system=op.system,
                model=op.model,
            )
            if self._failing:  # written after all: the error shown is over
                self._failing = False
                self._fail(None)
        except ConversationGone as exc:
            self._stop_saving(str(exc))
            if isinstance(op, _Clear):
                op.error = self._gone
                op.done.set()
        except ConversationStoreError as exc:  # e.g. locked for BUSY_TIMEOUT_S, disk full
            if isinstance(op, _Clear):
                op.error = str(exc)
                op.done.set()
            else:
                self._unwritten = op
                self._failing = True
            self._fail(f"could not save conversation {self.name!r} ({exc}); will try again")

    def _stop_saving(self, why: str) -> None:
        if self._gone is not None:
            return
        self._gone = (
            f"conversation {self.name!r} is no longer saved: {why}. This chat keeps what "
            "it holds; chat.save(path) writes it to a file, or start a new named chat"
        )
        self._fail(self._gone)

    def _fail(self, error: str | None) -> None:
        with contextlib.suppress(Exception):
            self.report(error)

    def close(self) -> None:
        """Write what is queued, then stop the writer (waits up to about
        :data:`BUSY_TIMEOUT_S`) and close the store. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        # A timed write still pending on the loop finds it closed and does nothing.
        if threading.current_thread() is not self._thread:
            self._thread.join(BUSY_TIMEOUT_S + 5)
        with _recorders_lock:
            _recorders.discard(self)
        if not self._thread.is_alive():
            self.store.close()


def _merged(ops: list[_Write | _Clear]) -> list[_Write | _Clear]:
    """Consecutive writes as one (the newest data of each message wins); a clear stays
    between the writes before and after it."""
    out: list[_Write | _Clear] = []
    for op in ops:
        last = out[-1] if out else None
        if isinstance(op, _Write) and isinstance(last, _Write):
            out[-1] = _Write({**last.messages, **op.messages}, op.system, op.model)
        else:
            out.append(op)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _tell_others(
    origin: ConversationRecorder | None, why: str, *, path: Path | None = None, cid: int = -1
) -> None:
    """Recorders of this process on the same conversation stop saving at once (other
    processes' find out at their next write)."""
    if origin is not None:
        path, cid = origin.store.path, origin.conversation_id
    assert path is not None
    with _recorders_lock:
        others = [r for r in _recorders if r is not origin and r.conversation_id == cid]
    for recorder in others:
        if _same_file(recorder.store.path, path):
            recorder._stop_saving(why)


@atexit.register
def _flush_at_exit() -> None:
    """Chats left open at interpreter exit write what they have queued."""
    with _recorders_lock:
        open_ = list(_recorders)
    for recorder in open_:
        with contextlib.suppress(Exception):
            recorder.close()


# --- the public functions (nbchat.conversations, nbchat.delete_conversation) --------


def conversations(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The saved named conversations as a pandas DataFrame, most recently used first:
    ``name``, ``turns``, ``messages``, ``models`` (comma-separated), ``created_at`` and
    ``last_used`` (UTC timestamps). Empty if there are none. Raises
    :class:`ConversationStoreError` naming the file if the store cannot be read."""
    import pandas as pd

    store = ConversationStore(path)
    try:
        rows = store.summaries()
    finally:
        store.close()
    columns = ["name", "turns", "messages", "models", "created_at", "last_used"]
    frame: pd.DataFrame = pd.DataFrame.from_records(rows, columns=columns)
    for column in ("turns", "messages"):
        frame[column] = frame[column].astype("int64")
    for column in ("created_at", "last_used"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame


def delete_conversation(name: str, path: str | os.PathLike[str] | None = None) -> None:
    """Delete the saved conversation ``name`` and all its messages. Raises ``KeyError``
    if there is none. A Chat still open on it stops saving and says so in ``chat.error``
    (at once in this process, at its next write in another); it never writes its later
    turns back alone."""
    check_name(name)
    store = ConversationStore(path)
    try:
        cid = store.delete(name)
    finally:
        store.close()
    _tell_others(None, "it was deleted (nbchat.delete_conversation)", path=store.path, cid=cid)
