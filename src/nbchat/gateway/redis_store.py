"""The Redis session store: a session's events in a Redis stream, shared by gateways.

Keys of session ``S`` (``{S}`` is a hash tag, so one session's keys share a slot):

- ``nbchat:{S}:meta``  hash: ``owner`` (hash of the token that opened it), ``seq`` (the
  last seq written), ``bytes`` (size of the events the stream holds)
- ``nbchat:{S}:log``   stream: one entry per sequenced event, entry id ``<seq>-0``;
  fields ``f`` (the encoded frame, sent to clients as is), ``r`` (reply), ``k`` (frame
  type), ``t`` (unix time written)
- ``nbchat:{S}:lease`` string: the gateway generating the session's replies, with a
  time to live that it renews; only it may write to the log (every write checks)
- ``nbchat:{S}:ctl``   stream: client frames (start, stop, pause, resume, tool_result)
  that reached another gateway, for the lease holder to act on
- ``nbchat:{S}:open``  set: replies started and not yet done
- ``nbchat:{S}:replies`` sorted set: reply -> seq of its latest event; with
  ``nbchat:{S}:r:<reply>`` (hash: paused, finish, error, error_code, usage) and
  ``nbchat:{S}:text:<reply>`` / ``:reasoning:<reply>`` (strings, appended), what a
  resume beyond the trimmed log needs for each reply's snapshot

Every write is one Lua script, so it is atomic and fenced by the lease. Keys expire
after the session's idle time; the log is trimmed to the same ``LogLimits`` as the
memory store (events, bytes, age), oldest first.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ..protocol import Snapshot
from ..session import LogLimits

__all__ = [
    "LogEntry",
    "RedisStore",
    "Resumption",
    "SessionMeta",
    "StoreBusy",
    "StoreUnavailable",
    "ctl_key",
    "log_entry",
    "log_key",
    "session_of",
    "valid_session_id",
]

PREFIX: Final = "nbchat"
# Connections to Redis per gateway (besides the blocking reader's): writes go in one
# pipeline per round trip, so a few serve thousands of sessions.
MAX_CONNECTIONS: Final = 64


class StoreUnavailable(Exception):
    """Redis cannot be reached (or failed); the message says what happened."""


class StoreBusy(StoreUnavailable):
    """Every connection to Redis is in use for longer than the timeout: this gateway is
    overloaded, Redis is not down."""


@dataclass(frozen=True)
class LogEntry:
    """One event as the log holds it."""

    seq: int
    frame: str  # encoded, sent to clients as is
    reply: str
    kind: str  # the frame's type


@dataclass(frozen=True)
class Resumption:
    """What :meth:`RedisStore.resume` reads: the session's last seq, and either the
    events after the client's (``snapshots`` None) or, when the log no longer reaches
    back, a snapshot of each reply that changed since; and the replies still open."""

    last_seq: int
    entries: list[LogEntry]
    snapshots: list[Snapshot] | None
    opened: set[str]


@dataclass(frozen=True)
class SessionMeta:
    owner: str
    seq: int


SESSION_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_session_id(session: str) -> bool:
    """Whether ``session`` can name keys: the alphabet of ``secrets.token_urlsafe``.
    Anything else (a ``}`` or ``:``) could make one session's keys another's."""
    return SESSION_ID.fullmatch(session) is not None


def _keys(session: str) -> dict[str, str]:
    base = f"{PREFIX}:{{{session}}}:"
    return {name: base + name for name in ("meta", "log", "lease", "ctl", "open", "replies")}


# KEYS: meta log lease open replies; ARGV: me ttl_ms max_events max_bytes now max_age_s
# keep_replies base, then 6 per event: seq reply kind frame a b.
# a, b: delta -> text, "" | "reasoning"; error -> code, message; done -> finish, usage.
_APPEND: Final = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
-- A batch sent again (its first try timed out after Redis had run it) changes
-- nothing twice: entries already stored are skipped; a gap is refused.
local stored = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local first = tonumber(ARGV[9])
if first and first > stored + 1 then return -2 end
if first and tonumber(ARGV[#ARGV - 5]) <= stored then return 1 end
local ttl, maxev, maxbytes = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now, maxage, keep, base = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local i = 9
while i <= #ARGV do
  local seq, reply, kind, frame = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local a, b = ARGV[i+4], ARGV[i+5]
  i = i + 6
  if tonumber(seq) > stored then
  redis.call('XADD', KEYS[2], seq .. '-0', 'f', frame, 'r', reply, 'k', kind, 't', now)
  bytes = bytes + #frame
  local rkey = base .. 'r:' .. reply
  redis.call('ZADD', KEYS[5], seq, reply)
  if kind == 'started' then
    redis.call('SADD', KEYS[4], reply)
  elseif kind == 'delta' then
    local tkey = base .. (b == 'reasoning' and 'reasoning:' or 'text:') .. reply
    redis.call('APPEND', tkey, a)
    redis.call('PEXPIRE', tkey, ttl)
  elseif kind == 'paused' then
    redis.call('HSET', rkey, 'paused', '1')
  elseif kind == 'resumed' then
    redis.call('HDEL', rkey, 'paused')
  elseif kind == 'error' then
    redis.call('HSET', rkey, 'error_code', a, 'error', b)
  elseif kind == 'done' then
    redis.call('SREM', KEYS[4], reply)
    redis.call('HDEL', rkey, 'paused')
    redis.call('HSET', rkey, 'finish', a, 'usage', b)
  end
  redis.call('PEXPIRE', rkey, ttl)
  end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[#ARGV - 5])
-- Trim oldest first: by events, bytes and age.
local n = redis.call('XLEN', KEYS[2])
while n > 0 do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  local f = first[2]
  local size, t = #f[2], tonumber(f[8])
  if n > maxev or bytes > maxbytes or t < now - maxage then
    redis.call('XDEL', KEYS[2], first[1])
    bytes, n = bytes - size, n - 1
  else
    break
  end
end
redis.call('HSET', KEYS[1], 'bytes', bytes)
-- Forget the oldest replies (their snapshot data) beyond the number kept.
local extra = redis.call('ZCARD', KEYS[5]) - keep
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[5], 0, extra - 1)) do
    if redis.call('SISMEMBER', KEYS[4], old) == 0 then
      redis.call('ZREM', KEYS[5], old)
      redis.call('DEL', base .. 'r:' .. old, base .. 'text:' .. old, base .. 'reasoning:' .. old)
    end
  end
end
-- Everything but the lease lives as long as the session may stay idle.
for _, k in ipairs({1, 2, 4, 5}) do redis.call('PEXPIRE', KEYS[k], ttl) end
return 1
"""

# KEYS: lease ctl; ARGV: me lease_ms frame ttl_ms. 1: the caller holds the lease now
# (it was free or its own); 0: another gateway holds it and the frame is queued for it.
_ACQUIRE_OR_FORWARD: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'f', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 0
"""

# KEYS: the leases to renew; ARGV: me lease_ms. For each: 1 renewed, 0 not the caller's.
_RENEW: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease ctl; ARGV: me. 1: released; 0: frames wait in ctl (act on them first);
# -1: the lease is not the caller's.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('XLEN', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Sessions on a Redis server (``redis://host:port/db``), shared by gateways.

    Every method raises :class:`StoreUnavailable` when Redis cannot be reached; the
    caller says so to its clients and carries on, and serves again when it is back.
    """

    shared: Final = True

    def __init__(
        self,
        url: str,
        *,
        limits: LogLimits | None = None,
        idle_s: float = 900.0,
        lease_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.limits = limits or LogLimits()
        self.idle_ms = int(idle_s * 1000)
        self.lease_ms = int(lease_s * 1000)
        self.timeout_s = timeout_s
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "decode_responses": False,
        }
        # A bounded pool that makes a caller wait for a free connection (redis-py's
        # default pool raises instead, which under load would read as "Redis down").
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, **options
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        # Blocking reads hold a connection for their whole wait: they get their own.
        self.reader = aioredis.Redis.from_url(url, **{**options, "socket_timeout": timeout_s + 5.0})
        self._append = self.redis.register_script(_APPEND)
        self._acquire = self.redis.register_script(_ACQUIRE_OR_FORWARD)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self.latency: Any = None  # a histogram (metrics) observed per operation, if set

    @staticmethod
    def describe(url: str) -> str:
        """The URL without a password, for logs and messages."""
        if "@" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return url

    async def _call(self, op: str, coro: Any) -> Any:
        began = time.perf_counter()
        try:
            return await coro
        except ResponseError:
            raise  # Redis answered: an error of ours (a script's), not an outage
        except (RedisError, OSError) as exc:
            if "No connection available" in str(exc):  # the pool's wait ran out
                raise StoreBusy(
                    f"all {MAX_CONNECTIONS} connections of this gateway to the session "
                    "store stayed in use; the gateway is overloaded"
                ) from None
            raise StoreUnavailable(
                f"the session store (Redis at {self.describe(self.url)}) is unreachable: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            if self.latency is not None:
                self.latency.labels(op=op).observe(time.perf_counter() - began)

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        await self.reader.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self.redis.ping()))
        except StoreUnavailable:
            return False

    # --- sessions ----------------------------------------------------------------

    async def create(self, session: str, owner: str) -> None:
        keys = _keys(session)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys["meta"], mapping={"owner": owner, "seq": 0, "bytes": 0})
            pipe.pexpire(keys["meta"], self.idle_ms)
            await self._call("create", pipe.execute())

    async def meta(self, session: str) -> SessionMeta | None:
        """The session's owner and last seq, or None if Redis does not hold it; reading
        it keeps the session from expiring."""
        keys = _keys(session)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys["meta"], ["owner", "seq"])
            for name in ("meta", "log", "open", "replies"):
                pipe.pexpire(keys[name], self.idle_ms)
            owner, seq = (await self._call("meta", pipe.execute()))[0]
        if owner is None:
            return None
        return SessionMeta(owner=_text(owner), seq=int(seq or 0))

    # --- the log -----------------------------------------------------------------

    async def append(
        self, session: str, me: str, entries: Sequence[tuple[LogEntry, str, str]]
    ) -> bool:
        """Write events (each with its two detail fields, see ``_APPEND``) if ``me``
        holds the lease; False if it does not (nothing is written)."""
        names, args = self._append_call(session, me, entries)
        result = await self._call("append", self._append(keys=names, args=args))
        return int(result) == 1

    async def append_many(
        self, me: str, batches: Mapping[str, Sequence[tuple[LogEntry, str, str]]]
    ) -> dict[str, bool | Exception]:
        """:meth:`append` for several sessions in one round trip (a pipeline of one
        script call each). For each session: whether it was written (False: ``me``
        does not hold its lease), or the error Redis answered for it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for session, entries in batches.items():
                names, args = self._append_call(session, me, entries)
                await self._append(keys=names, args=args, client=pipe)
            results = await self._call("append", pipe.execute(raise_on_error=False))
        out: dict[str, bool | Exception] = {}
        for session, result in zip(batches, results, strict=True):
            if isinstance(result, ResponseError):
                out[session] = result
            elif isinstance(result, Exception):  # the link failed mid-pipeline
                raise StoreUnavailable(
                    f"the session store (Redis at {self.describe(self.url)}) failed: {result}"
                )
            else:
                out[session] = int(result) == 1
        return out

    def _append_call(
        self, session: str, me: str, entries: Sequence[tuple[LogEntry, str, str]]
    ) -> tuple[list[str], list[Any]]:
        keys = _keys(session)
        limits = self.limits
        args: list[Any] = [
            me,
            self.idle_ms,
            limits.max_events,
            limits.max_bytes,
            time.time(),
            limits.max_age_s,
            limits.max_finished_replies + 8,
            f"{PREFIX}:{{{session}}}:",
        ]
        for entry, a, b in entries:
            args += [entry.seq, entry.reply, entry.kind, entry.frame, a, b]
        return [keys[k] for k in ("meta", "log", "lease", "open", "replies")], args

    async def read(self, session: str, after_seq: int, count: int | None = None) -> list[LogEntry]:
        """Events with a seq above ``after_seq``, oldest first."""
        raw = await self._call(
            "read", self.redis.xrange(_keys(session)["log"], f"{after_seq + 1}-0", "+", count)
        )
        return [log_entry(entry_id, fields) for entry_id, fields in raw]

    async def resume(self, session: str, after_seq: int) -> Resumption:
        """What a client resuming after ``after_seq`` needs, read at one instant (but
        for the snapshots, read next)."""
        keys = _keys(session)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys["meta"], "seq")
            pipe.xrange(keys["log"], "-", "+", 1)
            pipe.xrange(keys["log"], f"{after_seq + 1}-0", "+")
            pipe.zrangebyscore(keys["replies"], f"({after_seq}", "+inf")
            pipe.smembers(keys["open"])
            seq, first, events, changed, members = await self._call("resume", pipe.execute())
        last_seq = int(seq or 0)
        opened = {_text(m) for m in members}
        oldest = log_entry(*first[0]).seq if first else last_seq + 1
        if oldest <= after_seq + 1:
            return Resumption(last_seq, [log_entry(i, f) for i, f in events], None, opened)
        base = f"{PREFIX}:{{{session}}}:"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys["meta"], "seq")
            for reply in changed:
                name = _text(reply)
                pipe.hgetall(base + "r:" + name)
                pipe.get(base + "text:" + name)
                pipe.get(base + "reasoning:" + name)
            out = await self._call("resume", pipe.execute())
        snapshots = []
        for n, reply in enumerate(changed):
            detail, text, reasoning = out[1 + 3 * n : 4 + 3 * n]
            d = {_text(k): _text(v) for k, v in detail.items()}
            finish = d.get("finish") or None
            snapshots.append(
                Snapshot(
                    reply=_text(reply),
                    text=_text(text or b""),
                    reasoning=_text(reasoning) if reasoning else None,
                    paused=d.get("paused") == "1",
                    finish=finish,  # type: ignore[arg-type]
                    error=d.get("error") or None,
                    error_code=d.get("error_code") or None,
                    usage=json.loads(d["usage"]) if d.get("usage") else None,
                )
            )
        return Resumption(int(out[0] or 0), [], snapshots, opened)

    async def open_replies(self, session: str) -> set[str]:
        members = await self._call("open", self.redis.smembers(_keys(session)["open"]))
        return {_text(m) for m in members}

    # --- the lease and the control stream -----------------------------------------

    async def acquire_or_forward(self, session: str, me: str, frame: str = "") -> bool:
        """Take the session's lease if it is free (or already ``me``'s): True. Else
        queue ``frame`` (if any) for the holder: False."""
        keys = _keys(session)
        result = await self._call(
            "lease",
            self._acquire(
                keys=[keys["lease"], keys["ctl"]], args=[me, self.lease_ms, frame, self.idle_ms]
            ),
        )
        return int(result) == 1

    async def lease_holder(self, session: str) -> str | None:
        holder = await self._call("lease", self.redis.get(_keys(session)["lease"]))
        return _text(holder) if holder is not None else None

    async def renew(self, sessions: Sequence[str], me: str) -> list[bool]:
        """Renew ``me``'s leases; for each session, whether it is still ``me``'s."""
        if not sessions:
            return []
        keys = [_keys(session)["lease"] for session in sessions]
        results = await self._call("lease", self._renew(keys=keys, args=[me, self.lease_ms]))
        return [int(r) == 1 for r in results]

    async def release(self, session: str, me: str) -> int:
        """Give up the lease: 1 done, 0 frames wait in the control stream, -1 not ours."""
        keys = _keys(session)
        result = await self._call(
            "lease", self._release(keys=[keys["lease"], keys["ctl"]], args=[me])
        )
        return int(result)

    async def take_control(self, session: str) -> list[str]:
        """The frames waiting in the session's control stream, removed from it."""
        key = _keys(session)["ctl"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(key, "-", "+")
            pipe.delete(key)
            raw, _ = await self._call("ctl", pipe.execute())
        return [_text(fields[b"f"]) for _, fields in raw]

    # --- blocking reads ---------------------------------------------------------

    async def wait(self, streams: dict[str, str], block_ms: int) -> list[tuple[str, list[Any]]]:
        """XREAD BLOCK over ``streams`` (key -> last id seen)."""
        if not streams:
            return []
        raw = await self._call("wait", self.reader.xread(streams, block=block_ms, count=512))  # type: ignore[arg-type]
        return [(_text(key), entries) for key, entries in raw or []]

    async def wake(self, key: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.pexpire(key, 60_000)  # a gateway's own key: gone soon after it is
            await self._call("wake", pipe.execute())


def log_entry(entry_id: Any, fields: dict[bytes, bytes]) -> LogEntry:
    """A log entry as Redis returns it (XRANGE, XREAD), parsed."""
    return LogEntry(
        seq=int(_text(entry_id).split("-", 1)[0]),
        frame=_text(fields[b"f"]),
        reply=_text(fields[b"r"]),
        kind=_text(fields[b"k"]),
    )


def log_key(session: str) -> str:
    return _keys(session)["log"]


def ctl_key(session: str) -> str:
    return _keys(session)["ctl"]


def session_of(key: str) -> str:
    """The session a log or control key belongs to."""
    return key.split("{", 1)[1].rsplit("}", 1)[0]
