"""Sessions in a shared store (Redis), so several gateways serve the same sessions.

How it works (docs/architecture.md has the longer story):

- A session's events live in the store's log, in seq order. Clients get them from
  there: a gateway tails (XREAD BLOCK) the log of every session whose client is
  attached to it, and sends the entries on as they are stored.
- One gateway at a time generates a session's replies: the one holding the session's
  **lease**, which it renews while it has replies open and gives back when they have
  all ended. It keeps the session's state (a :class:`GatewaySession`) in memory and
  writes each event to the log before its own client sees it; every write checks the
  lease, so a gateway that lost it cannot write.
- A client's start, stop, pause, resume or tool result that reaches a gateway without
  the lease either takes the lease (when it is free: the gateway then restores the
  state from the log) or is queued in the session's control stream for the holder,
  which reads it (XREAD BLOCK too) and acts on it.
- A holder that dies stops renewing; when its lease lapses, a gateway with that
  session's client takes it and ends every open reply with ``gateway_lost``, keeping
  the text already stored.
- When the store cannot be reached, new starts get ``store_unavailable``, replies in
  flight end with it, and the gateway serves again once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import secrets
from typing import TYPE_CHECKING, Final

from ..protocol import (
    ClientFrame,
    Delta,
    Done,
    Error,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    ServerFrame,
    decode_client,
    decode_server,
    encode,
)
from ..session import RESUME_GAP, GatewaySession, SessionError
from .redis_store import (
    LogEntry,
    RedisStore,
    Resumption,
    StoreBusy,
    StoreUnavailable,
    ctl_key,
    log_entry,
    log_key,
    session_of,
    valid_session_id,
)

if TYPE_CHECKING:
    from .server import Gateway, GatewayConnection, LiveSession

__all__ = ["GATEWAY_LOST", "SharedSessions"]

log = logging.getLogger("nbchat.gateway")

# How often a gateway looks for sessions whose lease holder has died (the bound on
# noticing it is the lease's time to live plus this).
ORPHAN_CHECK_S: Final = 1.0
# How long a blocking read waits before it looks again at which logs to follow.
BLOCK_MS: Final = 1000
# Between tries while the store cannot be reached.
RETRY_S: Final = 0.5

GATEWAY_LOST: Final = (
    "the gateway generating this reply stopped (it was killed, or lost its link to the "
    "session store) before finishing it; the partial text is kept, send again to continue"
)


def _log_entry(event: ServerFrame) -> LogEntry:
    """An event the session emitted (each has a seq and a reply) as the log holds it."""
    seq, reply = getattr(event, "seq", None), getattr(event, "reply", None)
    return LogEntry(seq if isinstance(seq, int) else 0, encode(event), reply or "", event.type)


def _detail(event: ServerFrame) -> tuple[str, str]:
    """The two fields the store keeps beside an event for a later snapshot."""
    if isinstance(event, Delta):
        return event.text, event.kind or ""
    if isinstance(event, Error):
        return event.code, event.message
    if isinstance(event, Done):
        return event.finish, json.dumps(event.usage) if event.usage is not None else ""
    return "", ""


class SharedSessions:
    """The shared-store half of a :class:`Gateway`: hello, control frames, the log's
    writers and readers, leases."""

    def __init__(self, gateway: Gateway, store: RedisStore) -> None:
        self.gateway = gateway
        self.store = store
        self.me = secrets.token_hex(8)  # this gateway, as lease holder
        self.healthy = True  # whether the store answered last time it was asked
        self._wake_key = f"nbchat:gateway:{self.me}:wake"
        self._wake_id = "0-0"
        # Events not yet stored, by session, and the sessions whose events the flusher
        # is storing now. One flusher writes every session's events, a batch per
        # session per round trip (group commit): Redis sees one script call per
        # session per round, not one per token, and the connections in use stay few.
        self._pending: dict[str, list[ServerFrame]] = {}
        self._storing: set[str] = set()
        self._lives: dict[str, LiveSession] = {}
        self._to_flush = asyncio.Event()
        self._flushed = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        # The sessions' states here keep no log of their own: Redis holds it, and
        # resumes read it there (a second copy would cost memory and GC time per token).
        self._state_limits = dataclasses.replace(gateway.log_limits, max_events=0, max_bytes=0)

    # --- life -------------------------------------------------------------------

    async def start(self) -> None:
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._read_loop()),
                asyncio.create_task(self._renew_loop()),
                asyncio.create_task(self._watch_loop()),
                asyncio.create_task(self._flush_loop()),
            ]

    async def close(self) -> None:
        """End what is left open (a paused reply's held text is sent first), store what
        is pending (briefly), give back the leases, stop."""
        from .server import shutdown_error

        for live in list(self.gateway.sessions.values()):
            if live.owned:
                for reply in live.state.unfinished():
                    live.emit(live.state.finish(reply, "error", error=shutdown_error()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_stored(), 3.0)
        if self.healthy:
            releases = [self.store.release(s, self.me) for s in self.owned_sessions()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*releases, return_exceptions=True), self.store.timeout_s
                )
        # The reader is not cancelled inside its blocking read (redis-py's connection
        # would not come back from that): it is woken, and sees it is to stop.
        self._stopping = True
        await self._wake()
        reader = self._loops[0]
        await asyncio.wait([reader], timeout=BLOCK_MS / 1000 + self.store.timeout_s)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.store.close()

    def owned_sessions(self) -> list[str]:
        return [sid for sid, live in self.gateway.sessions.items() if live.owned]

    def _lock(self, session: str) -> asyncio.Lock:
        return self._locks.setdefault(session, asyncio.Lock())

    def _local(self, session: str, owner: str) -> LiveSession:
        """This gateway's handle on a session that the store holds."""
        from .server import LiveSession

        loop = asyncio.get_running_loop()
        state = GatewaySession(session, limits=self._state_limits, clock=loop.time)
        live = LiveSession(state, loop.time(), owner)
        live.sink = lambda events: self._queue(live, events)
        self.gateway.sessions[session] = live
        return live

    # --- frames from a client ------------------------------------------------------

    async def on_message(
        self,
        connection: GatewayConnection,
        message: str | bytes,
        decoded: ClientFrame | ProtocolError,
    ) -> None:
        try:
            if isinstance(decoded, ProtocolError):
                raise decoded
            if isinstance(decoded, Ping):
                connection.send(Pong(t=decoded.t))
            elif isinstance(decoded, Hello):
                await self._hello(connection, decoded)
            elif connection.live is None:
                raise ProtocolError(f"send hello before {decoded.type}")
            else:
                text = message if isinstance(message, str) else message.decode()
                await self._control(connection, connection.live, decoded, text)
        except StoreUnavailable as exc:
            from .server import _reply_named_in

            self._store_down(exc)
            code = "busy" if isinstance(exc, StoreBusy) else "store_unavailable"
            connection.send(Error(code=code, message=str(exc), reply=_reply_named_in(message)))
        except Exception as exc:
            connection.refuse(message, exc)

    async def _hello(self, connection: GatewayConnection, frame: Hello) -> None:
        from .server import GatewayBusy

        if connection.live is not None:
            raise ProtocolError("hello was already sent on this connection")
        gateway, store = self.gateway, self.store
        try:
            known = frame.session is not None and valid_session_id(frame.session)
            meta = await store.meta(frame.session) if known and frame.session else None
            if meta is not None and (frame.last_seq or 0) > meta.seq:
                # The client has seen more than the store holds (Redis came back from an
                # older snapshot): the session as the client knew it is gone.
                meta = None
            if meta is not None and not hmac.compare_digest(meta.owner, connection.owner):
                connection.send(
                    Error(
                        code="unauthorized",
                        message="this session was opened with another token; it cannot "
                        "be resumed with yours",
                    )
                )
                connection.close_after_queued(1008, "unauthorized")
                return
            new_here = meta is None or frame.session not in gateway.sessions
            full = len(gateway.sessions) >= gateway.limits.sessions
            if new_here and full and not gateway._evict_idle_session():
                raise GatewayBusy(
                    f"this gateway serves {gateway.limits.sessions} sessions already, all in use"
                )
            if meta is None:
                session = secrets.token_urlsafe(16)
                await store.create(session, connection.owner)
                live = self._local(session, connection.owner)
                read = Resumption(0, [], None, set())
            else:
                session = frame.session or ""
                live = gateway.sessions.get(session) or self._local(session, connection.owner)
                read = await store.resume(session, frame.last_seq or 0)
        except GatewayBusy as exc:
            connection.send(Error(code="busy", message=f"{exc}; try again later"))
            connection.close_after_queued(1013, "gateway busy")
            return
        except StoreUnavailable as exc:
            self._store_down(exc)
            code = "busy" if isinstance(exc, StoreBusy) else "store_unavailable"
            connection.send(Error(code=code, message=f"{exc}; try again later"))
            connection.close_after_queued(1013, "session store unavailable")
            return
        self._store_up()
        if live.connection is not None and live.connection is not connection:
            live.connection.taken_over()
        connection.live = live
        connection.send(gateway.welcome(session, read.last_seq, resumed=meta is not None))
        # The replies open when the log was read (their start may be before last_seq):
        # if their generator dies, this gateway ends them.
        live.open_seen = set(read.opened)
        if read.snapshots is not None:
            connection.send(RESUME_GAP)
            for snapshot in read.snapshots:
                connection.send(snapshot)
            live.delivered = read.last_seq
        else:
            live.delivered = frame.last_seq or 0
        live.connection = connection
        live.last_active = asyncio.get_running_loop().time()
        await self._deliver(live, read.entries)
        if live.owned:
            # This gateway generates the session's replies: catch up with what it
            # stored after the read above (its writer delivers from here on).
            await self._deliver(live, await self.store.read(session, live.delivered))
        await self._wake()
        if live.open_seen and not live.owned:
            await self._adopt_if_orphaned(live)

    async def _control(
        self, connection: GatewayConnection, live: LiveSession, frame: ClientFrame, text: str
    ) -> None:
        session = live.state.session_id
        if not self.healthy and not await self.store.ping():
            raise StoreUnavailable("the session store is unreachable")
        async with self._lock(session):
            if not live.owned:
                if not await self.store.acquire_or_forward(session, self.me, text):
                    return  # the lease holder acts on it; its events come through the log
                if not await self._take(live):
                    # Redis lost the session (restarted empty, or it expired): the
                    # client reconnects, finds it unknown and starts a new one.
                    await self.store.release(session, self.me)
                    self.gateway.sessions.pop(session, None)
                    connection.close_after_queued(1012, "the session store lost this session")
                    return
            # Under the lock: a release of the lease cannot come between the check
            # above and the events this makes (they would be written without it).
            self.gateway.apply_control(live, frame)
        await self._maybe_release(live)

    def _apply_stored(self, live: LiveSession, text: str) -> None:
        """Act on a frame another gateway queued for this one."""
        try:
            self.gateway.apply_control(live, decode_client(text))
        except (ProtocolError, SessionError) as exc:
            # The client is attached elsewhere; the answer to a bad request is dropped.
            log.info("a forwarded frame was refused: %s", exc)

    # --- the lease ----------------------------------------------------------------

    async def _take(self, live: LiveSession) -> bool:
        """This gateway has just taken the lease: bring the state up to the store's,
        end the replies a previous holder left open, act on queued frames. False if
        the store no longer holds the session."""
        session, store = live.state.session_id, self.store
        meta = await store.meta(session)
        if meta is None:
            return False
        seq = meta.seq
        if live.state.last_seq != seq or live.state.unfinished():
            entries = await store.read(session, 0)
            live.state = GatewaySession.restore(
                session,
                [decode_server(e.frame) for e in entries],
                last_seq=seq,
                open_replies=await store.open_replies(session),
                limits=self._state_limits,
                clock=asyncio.get_running_loop().time,
            )
        live.owned = True
        live.lease_epoch += 1
        for reply in live.state.unfinished():
            error = Error(code="gateway_lost", message=GATEWAY_LOST)
            live.emit(live.state.finish(reply, "error", error=error))
        for text in await store.take_control(session):
            self._apply_stored(live, text)
        await self._wake()
        return True

    def _forget(self, live: LiveSession, why: str) -> None:
        session = live.state.session_id
        if self.gateway.sessions.get(session) is live:
            del self.gateway.sessions[session]
        if live.connection is not None:
            live.connection.close_after_queued(1012, why)

    def _prune(self) -> None:
        """Drop what this gateway keeps for sessions it no longer has."""
        sessions = self.gateway.sessions
        for table in (self._locks, self._pending, self._lives):
            for session in [s for s in table if s not in sessions and s not in self._storing]:
                lock = self._locks.get(session)
                if table is self._locks and lock is not None and lock.locked():
                    continue
                del table[session]

    def _lost(self, live: LiveSession, why: str) -> None:
        """The lease is no longer this gateway's: stop generating (the new holder ends
        the replies), drop what was not stored."""
        if not live.owned:
            return
        log.warning("lost the lease of a session (%s); its replies end elsewhere", why)
        live.owned = False
        self._pending.pop(live.state.session_id, None)
        for task in live.tasks.values():
            task.cancel()
        if live.connection is not None:
            # What this gateway told its client may not be what the store holds: the
            # client resumes from the store (or, if it lost the session, starts anew).
            live.connection.close_after_queued(1012, "session moved; resume")

    def _busy(self, live: LiveSession) -> bool:
        """Whether the session has anything this gateway must still generate or store."""
        session = live.state.session_id
        return bool(
            live.tasks
            or live.state.unfinished()
            or self._pending.get(session)
            or session in self._storing
        )

    async def _maybe_release(self, live: LiveSession) -> None:
        """Give the lease back once nothing is left to generate or store. Under the
        session's lock, as every action that may make events is: none can start while
        the release is on its way (its events would be written without the lease)."""
        session = live.state.session_id
        if not live.owned or self._busy(live):
            return
        async with self._lock(session):
            if not live.owned or self._busy(live):
                return
            result = await self.store.release(session, self.me)
            if result == 1:
                live.owned = False
            elif result == -1:
                self._lost(live, "it was not this gateway's at release")
        if result == 1:
            await self._wake()
        # 0: frames wait in the control stream; the reader brings them here.

    async def _adopt_if_orphaned(self, live: LiveSession) -> None:
        """Take a session whose lease holder is gone while replies are open."""
        session = live.state.session_id
        async with self._lock(session):
            if await self.store.meta(session) is None:
                # The store lost the session (flushed, evicted, an empty replica): its
                # client must hear of it, and starts anew on its next connection.
                self._forget(live, "the session store lost this session")
                return
            if live.owned or await self.store.lease_holder(session) is not None:
                return
            if not await self.store.open_replies(session):
                return
            if not await self.store.acquire_or_forward(session, self.me):
                return
            if not await self._take(live):
                await self.store.release(session, self.me)
                return
        await self._flush(live)

    async def _flush(self, live: LiveSession) -> None:
        """Wait until the session's events are stored; then the lease may go."""
        session = live.state.session_id
        while self._pending.get(session) or session in self._storing:
            self._flushed.clear()
            await self._flushed.wait()
        await self._maybe_release(live)

    async def _all_stored(self) -> None:
        while any(self._pending.values()) or self._storing:
            self._flushed.clear()
            await self._flushed.wait()

    # --- writing the log ---------------------------------------------------------

    def _queue(self, live: LiveSession, events: list[ServerFrame]) -> None:
        if not live.owned:
            return  # generated after the lease was lost: the new holder ended it
        session = live.state.session_id
        self._pending.setdefault(session, []).extend(events)
        self._lives[session] = live
        self._to_flush.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._to_flush.wait()
            self._to_flush.clear()
            batches = {s: b for s, b in self._pending.items() if b and s not in self._storing}
            if not batches:
                continue
            for session in batches:
                self._pending[session] = []
            self._storing.update(batches)
            try:
                await self._store_batches(batches)
            finally:
                self._storing.difference_update(batches)
                self._flushed.set()
            for session in batches:
                live = self._lives.get(session)
                if self._pending.get(session):
                    self._to_flush.set()
                elif live is not None:
                    await self._maybe_release(live)

    async def _store_batches(self, batches: dict[str, list[ServerFrame]]) -> None:
        encoded = {s: [(_log_entry(e), *_detail(e)) for e in b] for s, b in batches.items()}
        try:
            results = await self.store.append_many(self.me, encoded)
        except StoreUnavailable as exc:
            self._store_down(exc)
            for session, batch in batches.items():  # kept, in order, for a retry
                if (live := self._lives.get(session)) is not None and live.owned:
                    self._pending.setdefault(session, [])[:0] = batch
            await asyncio.sleep(RETRY_S)
            self._to_flush.set()
            return
        self._store_up()
        for session, stored in results.items():
            live = self._lives.get(session)
            if live is None:
                continue
            if isinstance(stored, Exception):  # Redis refused this one: a bug, say so
                log.error("storing events of a session failed: %s", stored)
                self._lost(live, f"a write failed: {stored}")
            elif not stored:
                if live.owned and await self._regain(live, batches[session][0]) and live.owned:
                    self._pending.setdefault(session, [])[:0] = batches[session]
                    self._to_flush.set()
                else:
                    self._lost(live, "a write was refused")
            else:
                await self._deliver(live, [e for e, _, _ in encoded[session]])

    async def _regain(self, live: LiveSession, first: ServerFrame) -> bool:
        """After a write was refused: take the lease again if it lapsed (the store was
        away) and nobody wrote since; else it is gone."""
        session = live.state.session_id
        meta = await self.store.meta(session)
        if meta is None or meta.seq != getattr(first, "seq", 0) - 1:
            return False
        return await self.store.acquire_or_forward(session, self.me)

    # --- reading the log -----------------------------------------------------------

    async def _deliver(self, live: LiveSession, entries: list[LogEntry]) -> None:
        """Send stored events on to the attached client, in seq order, each once."""
        connection = live.connection
        if connection is None or not entries:
            return
        if entries[0].seq > live.delivered + 1:
            # Events stored before these were not delivered yet: from the store first.
            missing = await self.store.read(live.state.session_id, live.delivered)
            entries = missing + [e for e in entries if e.seq > (missing or entries)[-1].seq]
        for entry in entries:
            if entry.seq <= live.delivered or live.connection is not connection:
                continue
            connection.send_text(entry.frame)
            live.delivered = entry.seq
            if entry.kind == "started":
                live.open_seen.add(entry.reply)
            elif entry.kind == "done":
                live.open_seen.discard(entry.reply)

    async def _wake(self) -> None:
        """Have the reader look again at which logs and control streams to follow."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.wake(self._wake_key)

    async def _read_loop(self) -> None:
        while not self._stopping:
            streams = {self._wake_key: self._wake_id}
            for session, live in self.gateway.sessions.items():
                if live.owned:
                    streams[ctl_key(session)] = "0-0"
                elif live.connection is not None:
                    streams[log_key(session)] = f"{live.delivered}-0"
            try:
                result = await self.store.wait(streams, BLOCK_MS)
            except StoreUnavailable as exc:
                self._store_down(exc)
                await asyncio.sleep(RETRY_S)
                continue
            self._store_up()
            for key, raw in result:
                if key == self._wake_key:
                    self._wake_id = raw[-1][0].decode()
                    continue
                found = self.gateway.sessions.get(session_of(key))
                if found is None:
                    continue
                live = found
                try:
                    if key.endswith(":ctl"):
                        if live.owned:
                            await self._act_on_control(live)
                    elif not live.owned:
                        await self._deliver(live, [log_entry(i, f) for i, f in raw])
                except StoreUnavailable as exc:
                    self._store_down(exc)

    async def _act_on_control(self, live: LiveSession) -> None:
        session = live.state.session_id
        async with self._lock(session):
            if not live.owned:
                return
            for text in await self.store.take_control(session):
                self._apply_stored(live, text)
        await self._maybe_release(live)

    async def _renew_loop(self) -> None:
        every = self.store.lease_ms / 3000
        while True:
            await asyncio.sleep(every)
            owned = [
                (session, live, live.lease_epoch)
                for session, live in self.gateway.sessions.items()
                if live.owned
            ]
            try:
                held = await self.store.renew([session for session, _, _ in owned], self.me)
                if not owned and not await self.store.ping():
                    raise StoreUnavailable("the session store does not answer")
            except StoreUnavailable as exc:
                self._store_down(exc)
                continue
            self._store_up()
            for (_, live, epoch), still in zip(owned, held, strict=True):
                # Not if the lease was given back and taken again meanwhile.
                if not still and live.owned and live.lease_epoch == epoch:
                    self._lost(live, "it could not be renewed")

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S)
            self._prune()
            for live in list(self.gateway.sessions.values()):
                if live.connection is None or live.owned or not live.open_seen:
                    continue
                try:
                    await self._adopt_if_orphaned(live)
                except StoreUnavailable as exc:
                    self._store_down(exc)
                    break

    # --- the store's health ------------------------------------------------------

    def _store_down(self, exc: StoreUnavailable) -> None:
        """Tell clients with replies open, and end the replies this gateway generates:
        nothing of them can be stored or delivered until the store is back. (Not for
        an overloaded gateway's wait for a connection: Redis answers, it is not down.)"""
        if not self.healthy or isinstance(exc, StoreBusy):
            return
        self.healthy = False
        log.warning("%s", exc)
        message = f"{exc}; the reply ends here (its text so far is kept)"
        for live in self.gateway.sessions.values():
            if live.connection is not None:
                for reply in sorted(live.open_seen):
                    live.connection.send(
                        Error(code="store_unavailable", reply=reply, message=message)
                    )
            if live.owned:
                for reply, task in live.tasks.items():
                    live.end_errors[reply] = Error(code="store_unavailable", message=message)
                    task.cancel()

    def _store_up(self) -> None:
        if not self.healthy:
            log.warning("the session store is reachable again")
        self.healthy = True
