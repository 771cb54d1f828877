"""The gateway's WebSocket server: receive frames, feed the session, send what it returns.

Each connection is a :class:`GatewayConnection` attached to a :class:`LiveSession`, which
holds the pure :class:`~nbchat.session.GatewaySession` and the tasks generating its
replies. Generation belongs to the session, not the connection, so a reply goes on (and
is logged for replay) while its client is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from .. import __version__
from ..local_models import LocalModels
from ..protocol import (
    CLOSE_TAKEN_OVER,
    ChatMessage,
    ClientFrame,
    Error,
    Hello,
    Pause,
    Ping,
    Pong,
    ProtocolError,
    Resume,
    ServerFrame,
    Start,
    Stop,
    ToolCall,
    ToolResult,
    Welcome,
    decode_client,
    encode,
    valid_unicode,
)
from ..session import RESUME_GAP, GatewaySession, LogLimits, SessionError
from .auth import SessionNotYours, install_log_redaction, origin_refusal, token_matches
from .coalesce import DeltaCoalescer, Kind, LoadWindow
from .limits import FrameRate, GatewayLimits
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import GatewayMetrics, ended_as
from .params import param_problem
from .providers import (
    DemoProvider,
    Finish,
    Provider,
    ProviderError,
    ReasoningChunk,
    Request,
    TextChunk,
    ToolCalls,
    ToolUse,
)
from .providers.callable import CallableProvider
from .redis_store import RedisStore
from .shared import SharedSessions

__all__ = [
    "CHAT_PATH",
    "Gateway",
    "GatewayBusy",
    "GatewayConnection",
    "LiveSession",
    "ModelRoute",
    "shutdown_error",
]

log = logging.getLogger("nbchat.gateway")

CHAT_PATH: Final = "/v1/chat"

# How long a closing handshake may take before the socket is simply dropped; a peer
# that does not read would otherwise hold it open.
CLOSE_GRACE_S: Final = 2.0
# Frames larger than this are decoded on a worker thread: checking a big frame takes
# up to a few hundred ms, and other sessions' events go on meanwhile (the C JSON parser
# itself holds the GIL, so that part still delays them, by at most one frame's parse).
DECODE_IN_THREAD_BYTES: Final = 16 * 1024


@dataclass(frozen=True)
class ModelRoute:
    """Where a model name shown to users is served: a provider, its own name for the
    model, default params (a request's own win), and the environment variable that
    should hold its key when it is not set."""

    provider: Provider
    upstream: str
    params: dict[str, Any] = field(default_factory=dict)
    missing_key: str | None = None
    images: bool | None = None  # whether the model takes images; None: its provider says

    @property
    def takes_images(self) -> bool:
        if self.images is not None:
            return self.images
        takes = getattr(self.provider, "takes_images", None)
        return bool(takes(self.upstream)) if callable(takes) else False


@dataclass(frozen=True)
class _Replay:
    """In the outbox: events the session log holds, encoded only as they are sent, so
    a resume of any length costs no extra memory and is not held to the queue bound."""

    events: list[ServerFrame]


@dataclass(frozen=True)
class _Close:
    """In the outbox: close the connection once everything before it is sent."""

    code: int
    reason: str


# A frame's "reply" field, found by a scan (linear in the frame), not by parsing: a
# refused frame (over the rate, or malformed) must cost next to nothing.
_REPLY_FIELD: Final = re.compile(r'"reply"\s*:\s*("(?:[^"\\]|\\.){1,256}")')


def _reply_named_in(message: str | bytes) -> str | None:
    """The reply a refused frame was about, so the client can fail it at once."""
    if not isinstance(message, str):
        return None
    match = _REPLY_FIELD.search(message)  # linear: each match is at most 270 chars
    if match is None:
        return None
    try:
        reply = json.loads(match.group(1))
        encode(Stop(reply=reply))  # only an id that can be sent back
    except (ValueError, RecursionError):
        return None
    return reply if isinstance(reply, str) else None


def _added(total: dict[str, Any] | None, more: dict[str, Any] | None) -> dict[str, Any] | None:
    """Token usage of a reply's rounds, summed: counts add up, the rest is the last."""
    if total is None or more is None:
        return more if total is None else total
    out = {**total, **more}
    for key, value in more.items():
        old = total.get(key)
        if isinstance(value, int) and isinstance(old, int):
            out[key] = old + value
    return out


def _decode(message: str | bytes) -> ClientFrame | ProtocolError:
    try:
        return decode_client(message)
    except ProtocolError as exc:
        return exc


class GatewayBusy(Exception):
    """The gateway cannot take another session."""


class LiveSession:
    """A session's state plus its I/O: the attached connection and running replies.

    ``owner`` identifies the credentials that opened it (a hash of the token): only a
    client presenting the same ones may resume it."""

    def __init__(self, state: GatewaySession, now: float, owner: str) -> None:
        self.state = state
        self.owner = owner
        self.connection: GatewayConnection | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping: set[str] = set()  # replies cancelled by the user's stop
        # Tool calls waiting for the client's result, by (reply, call).
        self.results: dict[tuple[str, str], asyncio.Future[ToolResult]] = {}
        self.last_active = now  # when a client was last attached or a reply ran
        # Replies to end with this error when their generation is cancelled (not a stop).
        self.end_errors: dict[str, Error] = {}
        # With a shared store (see shared.py): whether this gateway holds the session's
        # lease (generates its replies), where its events go instead of the client
        # (the store, which delivers them), the last seq sent to the attached client,
        # and the replies that client has seen start and not end.
        self.owned = False
        self.lease_epoch = 0  # how many times this gateway has taken the lease
        self.sink: Callable[[list[ServerFrame]], None] | None = None
        self.delivered = 0
        self.open_seen: set[str] = set()

    def idle(self) -> bool:
        return self.connection is None and not self.tasks and not self.owned

    def emit(self, events: Iterable[ServerFrame]) -> None:
        """Send events to the attached client, if any. They are already logged by the
        session, so a client that is away gets them on resume. With a shared store they
        go to the store, which delivers them to the client wherever it is attached."""
        if self.sink is not None:
            if batch := list(events):
                self.sink(batch)
            return
        if self.connection is not None:
            for event in events:
                self.connection.send(event)


class Gateway:
    """An nbchat gateway: sessions, model routes and a WebSocket server.

    Start it with :meth:`start` inside a running event loop (or use
    :class:`~nbchat.gateway.embedded.EmbeddedGateway` from synchronous code), and
    :meth:`close` it when done.
    """

    def __init__(
        self,
        *,
        models: dict[str, ModelRoute] | None = None,
        token: str | Sequence[str] | None = None,
        log_limits: LogLimits | None = None,
        limits: GatewayLimits | None = None,
        default_model: str | None = None,
        notice: str | None = None,
        discovery_error: ProviderError | None = None,
        local_models: LocalModels | None = None,
        store: RedisStore | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allow_origins: Sequence[str] = (),
    ) -> None:
        if models is None:
            demo = DemoProvider()
            models = {"demo": ModelRoute(demo, "demo")}
        self.models = models
        # What every welcome says besides the models (see config.Offer): the model a
        # client uses unless told otherwise, and a start-up problem users must hear of.
        self.default_model = default_model
        self.notice = notice
        # Why the models of a server are missing: the answer to a request for one.
        self.discovery_error = discovery_error
        # Python callables of this process (the embedded gateway's), served besides
        # ``models`` and listed as they are when each client says hello.
        self.local_models = local_models
        self._callables = CallableProvider(local_models) if local_models is not None else None
        # Each token is a separate identity: a session is bound to the one that opened it.
        self.tokens: tuple[str, ...] = (token,) if isinstance(token, str) else tuple(token or ())
        self.token = self.tokens[0] if self.tokens else None
        self.log_limits = log_limits or LogLimits()
        self.limits = limits or GatewayLimits()
        widest = self.limits.delta_window_max_s
        self.delta_window = LoadWindow(
            self.limits.delta_window_s, self.limits.delta_window_s if widest is None else widest
        )
        self._load_watch: asyncio.Task[None] | None = None
        self.sessions: dict[str, LiveSession] = {}
        self.connections: set[GatewayConnection] = set()
        self.shutting_down = False
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None
        # Sessions live in this process (their GatewaySession holds the log), unless a
        # shared store is given: then SharedSessions keeps them in Redis.
        self.store = store
        self.shared = SharedSessions(self, store) if store is not None else None
        # wss:// when given; browser origins allowed to connect (empty: no check, see
        # auth.origin_refusal); draining: see drain(); metrics: GET /metrics.
        self.ssl_context = ssl_context
        self.allow_origins = tuple(allow_origins)
        self.draining = False
        self.metrics = GatewayMetrics()
        self.metrics.watch(self)
        if store is not None:
            store.latency = self.metrics.store_latency

    @property
    def default(self) -> str | None:
        """The model a client uses unless told otherwise: ``default_model`` when it is
        offered, else the first offered."""
        if self.default_model in self.models:
            return self.default_model
        return next(iter(self.models), None)

    def offered(self) -> list[str]:
        """The model names a client can use now: the configured ones, then the
        registered callables (a configured name wins over a callable's)."""
        names = list(self.models)
        if self._callables is not None:
            names += [name for name in self._callables.models() if name not in self.models]
        return names

    def image_models(self) -> list[str]:
        """The names of :meth:`offered` whose models take images."""
        return [name for name in self.offered() if (r := self.route(name)) and r.takes_images]

    def route(self, model: str) -> ModelRoute | None:
        """Where ``model`` is served, if anywhere. ``llama3.2`` finds ``llama3.2:latest``
        when only that is listed, as Ollama itself does."""
        route = self.models.get(model)
        if route is None and ":" not in model:
            route = self.models.get(f"{model}:latest")
        if route is None and self._callables is not None and self._callables.serves(model):
            route = ModelRoute(self._callables, model)
        return route

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        if not self._server.sockets and self._address is not None:
            return self._address[1]  # stopped listening: the address it will take again
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{host}:{self.port}{CHAT_PATH}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = a free port). After :meth:`stop_listening`,
        ``start()`` with no arguments listens again on the same address."""
        if self._address is not None and (host, port) == ("127.0.0.1", 0):
            host, port = self._address
        install_log_redaction()  # websockets' DEBUG lines would show Authorization
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.limits.max_frame_bytes,
            server_header=f"nbchat/{__version__}",
            ssl=self.ssl_context,
        )
        self._address = (host, self.port)
        if self.shared is not None:
            await self.shared.start()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._expire_sessions())
        if self._load_watch is None and self.delta_window.adapts:
            self._load_watch = asyncio.create_task(self._watch_load())

    async def stop_listening(self) -> None:
        """Close the listening socket and every connection, keeping the sessions and
        the replies they are generating (as a restart with a shared store would)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def close(self) -> None:
        """Shut down: every reply in flight ends with ``gateway_shutdown`` (an error,
        not a stop: the user did not ask for it), clients are sent what is queued for
        them, then the connections close with 1001 (going away)."""
        self.shutting_down = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._load_watch is not None:
            self._load_watch.cancel()
        tasks = [task for live in self.sessions.values() for task in live.tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.shared is not None:
            await self.shared.close()  # stores the replies' ends, gives back leases
        connections = list(self.connections)
        for connection in connections:
            connection.close_after_queued(1001, "the gateway is shutting down")
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=2 * CLOSE_GRACE_S)
        await self.stop_listening()

    async def drain(self, timeout_s: float) -> None:
        """Leave gracefully (SIGTERM): take no new connection (the handshake gets 503,
        ``/healthz`` says ``draining``) and let the replies in flight go on being
        generated for at most ``timeout_s``; then :meth:`close` (what is still running
        ends with ``gateway_shutdown``). Returns within about ``timeout_s`` + 2 *
        CLOSE_GRACE_S.

        With a shared store, every connection is closed at once with 1012 (service
        restart): its client reconnects to another gateway, which delivers the rest
        from the store. With the memory store no other gateway has the session, so
        connected clients stay and see their replies finish here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        self.draining = True
        log.info("draining: up to %g s for the replies in flight", timeout_s)
        if self.shared is not None:
            for connection in list(self.connections):
                connection.close_after_queued(1012, "service restart: reconnect to resume")
        while tasks := [t for live in list(self.sessions.values()) for t in live.tasks.values()]:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("drained for %g s: ending %d replies in flight", timeout_s, len(tasks))
                break
            await asyncio.wait(tasks, timeout=left)
        await self.close()

    def store_healthy(self) -> bool:
        """Whether the session store answers (``/healthz``); the memory store always does."""
        return self.shared is None or self.shared.healthy

    async def _watch_load(self) -> None:
        """Feed the delta window how late the loop runs (a timer that fires late: the
        gateway has more to do than it can) and how busy the loop's thread is (how
        close it runs to that), see coalesce.LoadWindow. The thread's CPU time, not the
        process's: other threads (frame decoding, a kernel's) use other cores."""
        loop = asyncio.get_running_loop()
        period = self.delta_window.SAMPLE_S
        while True:
            began, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(period)
            wall = loop.time() - began
            try:
                self.delta_window.observe(wall - period, (time.thread_time() - cpu) / wall)
            except Exception:  # a bad sample must not leave the window stuck for good
                log.exception("the delta window's load sample failed")

    async def _expire_sessions(self) -> None:
        idle_s = self.limits.session_idle_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(30.0, idle_s / 4))
            now = loop.time()
            for session_id, live in list(self.sessions.items()):
                if live.idle() and now - live.last_active > idle_s:
                    del self.sessions[session_id]

    # --- HTTP side: health check, path and token --------------------------------

    def _process_request(
        self, connection: ServerConnection, request: HttpRequest
    ) -> HttpResponse | None:
        path = request.path.split("?", 1)[0]
        given = request.headers.get_all("Authorization")

        def authorized() -> bool:  # one header, carrying one of the tokens (if any)
            return not self.tokens or (len(given) == 1 and token_matches(given[0], self.tokens))

        if path == "/healthz":  # for load balancers: no token needed
            if self.draining:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            if not self.store_healthy():
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "store down\n")
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":  # any of the gateway's tokens, when it has some
            if not authorized():
                return self._unauthorized(connection)
            response = connection.respond(HTTPStatus.OK, self.metrics.exposition().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
            return response
        if path != CHAT_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint; use {CHAT_PATH}\n")
        if self.draining:
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the gateway is draining before a restart; connect to another one\n",
            )
        origins = request.headers.get_all("Origin")
        refusal = (
            "more than one Origin header"
            if len(origins) > 1
            else origin_refusal(origins[0] if origins else None, self.allow_origins)
        )
        if refusal is not None:
            return connection.respond(HTTPStatus.FORBIDDEN, refusal + "\n")
        if not authorized():
            return self._unauthorized(connection)
        return None

    @staticmethod
    def _unauthorized(connection: ServerConnection) -> HttpResponse:
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="nbchat"'
        return response

    async def _handle(self, websocket: ServerConnection) -> None:
        request = websocket.request
        given = request.headers.get_all("Authorization") if request is not None else []
        owner = hashlib.sha256(",".join(given).encode()).hexdigest()
        connection = GatewayConnection(self, websocket, owner)
        self.connections.add(connection)
        if self.draining:  # its handshake raced drain(): send it on like the others
            connection.close_after_queued(1012, "service restart: reconnect to resume")
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)

    # --- sessions and replies ---------------------------------------------------

    def open_session(self, session_id: str | None, owner: str) -> tuple[LiveSession, bool]:
        """The session to attach to: the one named, if ``owner`` opened it, or a new
        one. Returns it and whether it is an existing session being resumed.

        At the session limit, the least recently used idle session (no client, no
        reply running) makes room, so connections that say hello and leave cannot lock
        others out; only when every session is in use is the answer ``busy``."""
        loop = asyncio.get_running_loop()
        known = self.sessions.get(session_id) if session_id is not None else None
        if known is not None and hmac.compare_digest(known.owner, owner):
            known.last_active = loop.time()
            return known, True
        if known is not None:  # opened with another token: neither resumed nor replaced
            raise SessionNotYours("this session was opened with another token")
        if len(self.sessions) >= self.limits.sessions and not self._evict_idle_session():
            raise GatewayBusy(
                f"this gateway serves {self.limits.sessions} sessions already, all in use"
            )
        new_id = secrets.token_urlsafe(16)
        state = GatewaySession(new_id, limits=self.log_limits, clock=loop.time)
        live = LiveSession(state, loop.time(), owner)
        self.sessions[new_id] = live
        return live, False

    def _evict_idle_session(self) -> bool:
        idle = [(live.last_active, sid) for sid, live in self.sessions.items() if live.idle()]
        if not idle:
            return False
        del self.sessions[min(idle)[1]]
        return True

    def start_reply(self, live: LiveSession, frame: Start) -> None:
        if live.state.knows(frame.reply):
            # A client resends requests it had no answer to after a resume; the events
            # of this reply are already on their way, so the repeat changes nothing.
            return
        live.emit(live.state.start(frame.reply, frame.model))
        route = self.route(frame.model)
        params = {**route.params, **frame.params} if route is not None else frame.params
        error = self._refusal(live, frame, route, params)
        if error is not None or route is None:
            live.emit(live.state.finish(frame.reply, "error", error=error))
            self.metrics.reply_ended("error")
            return
        messages = frame.messages
        if not route.takes_images and any(m.images for m in messages):
            # The text says what each picture was; a model without eyes gets only that.
            messages = tuple(dataclasses.replace(m, images=None) for m in messages)
        request = Request(
            messages=messages, model=route.upstream, params=params, tools=frame.tools or ()
        )
        task = asyncio.create_task(self._generate(live, frame.reply, route.provider, request))
        live.tasks[frame.reply] = task
        task.add_done_callback(lambda _: live.tasks.pop(frame.reply, None))

    def _refusal(
        self, live: LiveSession, frame: Start, route: ModelRoute | None, params: dict[str, Any]
    ) -> Error | None:
        """Why a reply that was started cannot run, if it cannot."""
        if self.shutting_down or self.draining:
            return Error(
                code="gateway_shutdown",
                message="the gateway is shutting down and takes no new replies; send again "
                "(the client reconnects to another gateway)",
            )
        if len(live.tasks) >= self.limits.replies_per_session:
            return Error(
                code="busy",
                message=f"this session has {len(live.tasks)} replies in flight already "
                f"(the limit is {self.limits.replies_per_session}); wait for one to end",
            )
        if route is None and self.discovery_error is not None:
            # Not "unknown": the server that may have it could not be asked.
            return Error(
                code=self.discovery_error.code,
                message=f"model {frame.model!r} is not available: {self.discovery_error.message}",
            )
        if route is None:
            known = ", ".join(sorted(self.offered())) or "none"
            return Error(
                code="unknown_model", message=f"unknown model {frame.model!r}; available: {known}"
            )
        if route.missing_key is not None:
            return Error(
                code="unauthorized",
                message=f"set the environment variable {route.missing_key} where the gateway "
                f"runs to use model {frame.model!r}",
            )
        problem = param_problem(params)
        if problem is not None:
            return Error(code="bad_request", message=problem)
        return None

    async def _generate(
        self, live: LiveSession, reply: str, provider: Provider, request: Request
    ) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        timing: dict[str, Any] = {}

        def elapsed() -> dict[str, Any]:
            return {**timing, "duration_s": round(loop.time() - began, 6)}

        window = self.delta_window
        coalescer = DeltaCoalescer(window.window_s)
        timer: asyncio.TimerHandle | None = None

        def send(deltas: list[tuple[Kind, str]]) -> None:
            for kind, text in deltas:
                live.emit(live.state.delta(reply, text, kind))

        def flush() -> None:
            """Send the held text now: when its window ends (the timer), and before a
            tool call or the reply's end."""
            nonlocal timer
            if timer is not None:
                timer.cancel()  # a no-op when it is the timer that called
                timer = None
            held = coalescer.flush(loop.time())
            # Else the reply was ended elsewhere (a lost lease: the new holder ended it,
            # and what this gateway generates since is not logged anyway).
            if held and reply in live.state.unfinished():
                send(held)

        def add(kind: Kind, text: str) -> None:
            nonlocal timer
            coalescer.window_s = window.window_s  # as wide as the gateway's load asks now
            send(coalescer.add(kind, text, loop.time()))
            if timer is None and (due := coalescer.due()) is not None:
                timer = loop.call_at(due, flush)

        try:
            messages, rounds, usage = request.messages, 0, None
            spoke = False  # text was sent: a later round's text starts a new paragraph
            while True:
                said: list[str] = []
                gap = spoke  # set after a round of tools that came after some text
                uses: tuple[ToolUse, ...] = ()
                finish: Finish | None = None
                async for item in provider.stream(dataclasses.replace(request, messages=messages)):
                    if isinstance(item, (TextChunk, ReasoningChunk)):
                        timing.setdefault("first_token_s", round(loop.time() - began, 6))
                        # Provider text is outside input: made sendable, never refused.
                        text = valid_unicode(item.text)
                        if isinstance(item, ReasoningChunk):
                            add("reasoning", text)
                        else:
                            said.append(text)
                            if gap and text:
                                text, gap = "\n\n" + text, False
                            spoke = spoke or bool(text)
                            add(None, text)
                    elif isinstance(item, ToolCalls):
                        uses = item.calls
                    elif isinstance(item, Finish):
                        finish = item  # the last item: the stream ends after it
                if finish is None:
                    raise ProviderError("upstream_error", "the provider ended without finishing")
                usage = _added(usage, finish.usage)
                flush()
                if not uses:
                    end = live.state.finish(reply, finish.reason, usage=usage, timing=elapsed())
                    live.emit(end)
                    return
                rounds += 1
                bound = self.limits.tool_rounds
                if rounds > bound:
                    raise ProviderError(
                        "tool_error",
                        f"the model asked for tools again after {bound} rounds of them in this "
                        f"reply; a reply takes at most {bound} tool rounds (the gateway's "
                        "tool_rounds bound)",
                    )
                results = await self._tool_round(live, reply, uses)
                # The round's text (maybe none) is the message its calls belong to.
                messages = (*messages, ChatMessage("assistant", "".join(said)), *results)
        except asyncio.CancelledError:
            # The partial text stays either way; only the user's stop is a "stopped".
            flush()
            if reply in live.stopping:
                live.emit(live.state.finish(reply, "stopped", timing=elapsed()))
            elif reply in live.end_errors:
                error = live.end_errors.pop(reply)
                live.emit(live.state.finish(reply, "error", timing=elapsed(), error=error))
            else:
                live.emit(
                    live.state.finish(reply, "error", timing=elapsed(), error=shutdown_error())
                )
        except ProviderError as exc:
            flush()
            error = Error(
                code=exc.code,
                message=valid_unicode(exc.message),
                retry_after=exc.retry_after,  # when the provider said to try again
            )
            live.emit(live.state.finish(reply, "error", timing=elapsed(), error=error))
        except Exception as exc:  # a provider bug must not take the gateway down
            log.exception("provider failed on reply %r", reply)
            flush()
            error = Error(
                code="upstream_error",
                message=valid_unicode(f"the provider failed: {type(exc).__name__}: {exc}"),
            )
            live.emit(live.state.finish(reply, "error", timing=elapsed(), error=error))
        finally:
            self.metrics.reply_ended(ended_as(live.state, reply))

    async def _tool_round(
        self, live: LiveSession, reply: str, uses: tuple[ToolUse, ...]
    ) -> list[ChatMessage]:
        """Send a round of tool calls to the client and wait (bounded) for every result;
        the results as ``tool`` messages, in the order of the calls. Arguments that are
        not a JSON object are answered here with an error, without the client."""
        loop = asyncio.get_running_loop()
        answers: dict[str, str] = {}
        waiting: dict[str, asyncio.Future[ToolResult]] = {}
        # Call ids, unique in the reply: a server that gives none (each round's first
        # call is then "call_0") or repeats one must not end the reply.
        calls: list[str] = []
        for use in uses:
            call, n = use.id, 1
            while live.state.made_call(reply, call) or call in calls:
                n += 1
                call = f"{use.id}-{n}"
            calls.append(call)
        unsendable: set[str] = set()
        try:
            for call, use in zip(calls, uses, strict=True):
                name = valid_unicode(use.name)
                arguments = use.arguments
                problem = (
                    f"the arguments are not a JSON object: {use.raw[:200]}"
                    if arguments is None
                    else _unsendable_arguments(call, name, arguments)
                )
                if arguments is None or problem is not None:  # answered here, not sent
                    answers[call] = json.dumps({"error": problem})
                    unsendable.add(call)  # nor kept: the history must stay sendable
                    continue
                waiting[call] = live.results[(reply, call)] = loop.create_future()
                live.emit(live.state.tool_call(reply, call, name, arguments))
            await self._wait_results(live, reply, uses, calls, waiting)
        finally:
            for call, future in waiting.items():
                live.results.pop((reply, call), None)
                future.cancel()  # a result that comes later has nowhere to go
        for call, future in waiting.items():
            result = future.result()
            answers[call] = (
                result.content if result.error is None else json.dumps({"error": result.error})
            )
        return [
            ChatMessage(
                "tool",
                answers[call],
                call=call,
                name=valid_unicode(u.name),
                arguments={} if call in unsendable else u.arguments or {},
            )
            for call, u in zip(calls, uses, strict=True)
        ]

    async def _wait_results(
        self,
        live: LiveSession,
        reply: str,
        uses: tuple[ToolUse, ...],
        calls: list[str],
        waiting: dict[str, asyncio.Future[ToolResult]],
    ) -> None:
        """Wait for every result, at most ``tool_result_s`` of time the reply is not
        paused (a call made while paused is not even sent until resume)."""
        loop = asyncio.get_running_loop()
        left = self.limits.tool_result_s
        pending = set(waiting.values())
        while pending:
            began = loop.time()
            _, pending = await asyncio.wait(pending, timeout=min(left, 1.0))
            if not live.state.is_paused(reply):
                left -= loop.time() - began
            if pending and left <= 0:
                late = {c for c, f in waiting.items() if f in pending}
                pairs = zip(calls, uses, strict=True)
                names = ", ".join(sorted({u.name for c, u in pairs if c in late}))
                raise ProviderError(
                    "tool_error",
                    f"no result for the call of {names} within "
                    f"{self.limits.tool_result_s:g} s (the client went away, or the tool "
                    "is still running); the reply ends here",
                )

    def tool_result(self, live: LiveSession, frame: ToolResult) -> None:
        """A client's result for a tool call; a repeat (resent after a resume) is
        ignored, a result for a call never made is refused (``SessionError``)."""
        if not live.state.tool_result(frame.reply, frame.call):
            return
        future = live.results.get((frame.reply, frame.call))
        if future is not None and not future.done():
            future.set_result(frame)

    def welcome(self, session: str, last_seq: int, resumed: bool) -> Welcome:
        """The answer to a hello that opened (or resumed) ``session``."""
        return Welcome(
            session=session,
            last_seq=last_seq,
            models=tuple(self.offered()),
            resumed=resumed,
            server=f"nbchat/{__version__}",
            max_frame_bytes=self.limits.max_frame_bytes,
            default_model=self.default,
            notice=self.notice,
            image_models=tuple(self.image_models()),
            replies_per_session=self.limits.replies_per_session,
        )

    def apply_control(self, live: LiveSession, frame: ClientFrame) -> None:
        """Act on a client's start, stop, pause, resume or tool result."""
        if isinstance(frame, Start):
            self.start_reply(live, frame)
        elif isinstance(frame, Stop):
            self.stop_reply(live, frame.reply)
        elif isinstance(frame, Pause):
            live.emit(live.state.pause(frame.reply))
        elif isinstance(frame, Resume):
            live.emit(live.state.resume(frame.reply))
        elif isinstance(frame, ToolResult):
            self.tool_result(live, frame)

    def stop_reply(self, live: LiveSession, reply: str) -> None:
        if reply not in live.state.replies:
            raise SessionError(f"unknown reply {reply!r}")
        task = live.tasks.get(reply)
        if task is not None:
            live.stopping.add(reply)
            task.add_done_callback(lambda _: live.stopping.discard(reply))
            task.cancel()
        else:
            # Generation is over but the reply may still be open: paused, with its end
            # held until resume. A stop ends it now (and does nothing to a finished one).
            live.emit(live.state.finish(reply, "stopped"))


def shutdown_error() -> Error:
    """How a reply cut short by the gateway's shutdown ends."""
    return Error(
        code="gateway_shutdown",
        message="the gateway shut down while generating this reply; the partial text is "
        "kept, send again to continue",
    )


def _unsendable_arguments(call: str, name: str, arguments: dict[str, Any]) -> str | None:
    """Why a model's tool arguments cannot travel, in this call's frame and in every
    later request's history (nested deeper there), or None. NaN, huge integers, lone
    surrogates or deep nesting would otherwise stall the reply or break the chat."""
    try:
        encode(ToolCall(seq=1, reply="r", call=call, name=name, arguments=arguments))
        message = ChatMessage("tool", "", call=call, name=name, arguments=arguments)
        encode(Start(reply="r", messages=(message,), model="m", params={}))
    except (ProtocolError, TypeError, ValueError) as exc:
        return f"the arguments cannot be sent to the client: {exc}"
    return None


class GatewayConnection:
    """One client's WebSocket: decode frames, act on them, send events in order.

    Outgoing frames go through one queue and one writer task, so that events numbered
    in order are also sent in order, whichever task produced them. The queue is bounded
    in bytes: a client that does not read is detached from its session (which goes on
    and logs) and closed with 1008; it catches up from the log when it resumes.
    """

    def __init__(self, gateway: Gateway, websocket: ServerConnection, owner: str = "") -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.owner = owner
        self.live: LiveSession | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox: asyncio.Queue[tuple[str, int] | _Replay | _Close | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._closing = False  # a close is queued: nothing more is sent
        limits = gateway.limits
        self.rate = FrameRate(limits.frames_per_s, limits.frame_burst, limits.flood_rejections)

    async def _require_hello(self) -> None:
        await asyncio.sleep(self.gateway.limits.hello_timeout_s)
        if self.live is None:
            timeout = self.gateway.limits.hello_timeout_s
            self.close_after_queued(1008, f"no hello within {timeout:g} s")

    def send(self, frame: ServerFrame) -> None:
        if self._closing:
            return
        try:
            text = encode(frame)
        except ProtocolError:  # cannot happen for what the protocol let in; never fatal
            log.exception("cannot encode a %s frame; not sent", frame.type)
            return
        self.send_text(text)

    def send_text(self, text: str) -> None:
        """Queue an encoded frame (as a shared store holds it) for the client."""
        if self._closing:
            return
        size = len(text)
        limit = self.gateway.limits.send_queue_bytes
        if self._queued_bytes + size > limit:
            self._detach()
            self._drop_queued()
            self.close_after_queued(
                1008, f"not reading: over {limit // 1024} KiB waiting; resume to catch up"
            )
            return
        self._queued_bytes += size
        self._outbox.put_nowait((text, size))

    def close_after_queued(self, code: int, reason: str) -> None:
        """Close once everything queued before is sent (or after a grace period, for
        a peer that does not read); nothing queued later is sent."""
        if self._closing:
            return
        self._closing = True
        self._outbox.put_nowait(_Close(code, reason))
        # The writer may be blocked on a peer that does not read: drop the socket then.
        asyncio.get_running_loop().call_later(2 * CLOSE_GRACE_S, self.websocket.transport.abort)

    def _drop_queued(self) -> None:
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._queued_bytes = 0

    def _detach(self) -> None:
        if self.live is not None and self.live.connection is self:
            self.live.connection = None
            self.live.last_active = asyncio.get_running_loop().time()

    def taken_over(self) -> None:
        """Another connection resumed this session: tell this one's client, and stop."""
        self._detach()
        self._drop_queued()
        self.close_after_queued(CLOSE_TAKEN_OVER, "session taken over by another connection")

    async def _write(self) -> None:
        while (item := await self._outbox.get()) is not None:
            try:
                if isinstance(item, _Close):
                    await self._close(item)
                    return
                if isinstance(item, _Replay):
                    for event in item.events:
                        await self.websocket.send(text := encode(event))
                        self.gateway.metrics.sent(text)
                    continue
                text, size = item
                self._queued_bytes -= size
                await self.websocket.send(text)
                self.gateway.metrics.sent(text)
            except ConnectionClosed:
                return
            except Exception:  # a bug: drop this link (its client resumes), not the loop
                log.exception("the writer failed; dropping the connection")
                self.websocket.transport.abort()
                return

    async def _close(self, close: _Close) -> None:
        try:
            await asyncio.wait_for(self.websocket.close(close.code, close.reason), CLOSE_GRACE_S)
        except TimeoutError:
            self.websocket.transport.abort()  # the peer does not read: drop the socket

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        hello_watch = asyncio.create_task(self._require_hello())
        loop = asyncio.get_running_loop()
        try:
            async for message in self.websocket:
                if self._closing:
                    continue  # read on, unanswered, until the peer's close frame arrives
                if not self.rate.allow(loop.time()):
                    if self.rate.flooding:
                        # After the answers already queued: they were earned.
                        self.close_after_queued(1008, "too many frames: flood")
                        continue
                    limit = self.gateway.limits.frames_per_s
                    self.send(
                        Error(
                            code="rate_limited",
                            reply=_reply_named_in(message),
                            message=f"too many frames; slow down to {limit:g} a second",
                        )
                    )
                    continue
                if len(message) > DECODE_IN_THREAD_BYTES:
                    decoded = await asyncio.to_thread(_decode, message)
                    if self._closing:
                        continue  # taken over or closed while it was decoded
                else:
                    decoded = _decode(message)
                    # Frames already buffered would be handled back to back: let the
                    # other sessions have a turn between any two of them.
                    await asyncio.sleep(0)
                if self.gateway.shared is not None:
                    await self.gateway.shared.on_message(self, message, decoded)
                else:
                    self._on_message(message, decoded)
        except ConnectionClosed:
            pass
        finally:
            hello_watch.cancel()
            self._detach()
            self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if not self.closed.done():
                self.closed.set_result(None)

    def _on_message(self, message: str | bytes, decoded: ClientFrame | ProtocolError) -> None:
        try:
            if isinstance(decoded, ProtocolError):
                raise decoded
            self._dispatch(decoded)
        except Exception as exc:
            self.refuse(message, exc)

    def refuse(self, message: str | bytes, exc: Exception) -> None:
        """Answer a frame that could not be acted on with the error that says why."""
        if isinstance(exc, ProtocolError):
            # Naming the reply lets its client end it rather than wait (a start that
            # cannot be decoded would otherwise be resent on every resume).
            self.send(Error(code=exc.code, message=str(exc), reply=_reply_named_in(message)))
        elif isinstance(exc, SessionError):
            self.send(Error(code="bad_request", message=str(exc)))
        else:  # a bug here must not cost the connection or the loop
            log.exception("failed to handle a frame", exc_info=exc)
            self.send(
                Error(
                    code="bad_request",
                    message=f"the gateway could not handle this frame ({type(exc).__name__})",
                )
            )

    def _dispatch(self, frame: Any) -> None:
        if isinstance(frame, Hello):
            self._hello(frame)
            return
        if isinstance(frame, Ping):
            self.send(Pong(t=frame.t))
            return
        if self.live is None:
            raise ProtocolError(f"send hello before {frame.type}")
        self.gateway.apply_control(self.live, frame)

    def _hello(self, frame: Hello) -> None:
        if self.live is not None:
            raise ProtocolError("hello was already sent on this connection")
        try:
            live, resumed = self.gateway.open_session(frame.session, self.owner)
        except GatewayBusy as exc:
            self.send(Error(code="busy", message=f"{exc}; try again later"))
            self.close_after_queued(1013, "gateway busy")
            return
        except SessionNotYours as exc:
            self.send(Error(code="unauthorized", message=f"{exc}; it cannot be resumed with yours"))
            self.close_after_queued(1008, "unauthorized")
            return
        replay = live.state.replay(frame.last_seq or 0) if resumed else None
        if live.connection is not None and live.connection is not self:
            # One client per session: the newer connection wins (the older one is most
            # likely a half-open link its own client has given up), and the older
            # one is told, so its client stops rather than waiting for events.
            live.connection.taken_over()
        self.live = live
        self.send(self.gateway.welcome(live.state.session_id, live.state.last_seq, resumed))
        if replay is not None:
            if replay.gap:
                self.send(RESUME_GAP)
            self._outbox.put_nowait(_Replay([*replay.events, *replay.snapshots]))
        live.connection = self
