"""The gateway's WebSocket server: receive frames, feed the session, send what it returns.

Each connection is a :class:`GatewayConnection` attached to a :class:`LiveSession`, which
holds the pure :class:`~nbchat.session.GatewaySession` and the tasks generating its
replies. Generation belongs to the session, not the connection, so a reply goes on (and
is logged for replay) while its client is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from .. import __version__
from ..protocol import (
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
    Welcome,
    decode_client,
    encode,
)
from ..session import GatewaySession, LogLimits, SessionError
from .providers import DemoProvider, Finish, Provider, ProviderError, Request, TextChunk

__all__ = ["CHAT_PATH", "Gateway", "GatewayConnection", "LiveSession", "ModelRoute"]

log = logging.getLogger("nbchat.gateway")

CHAT_PATH: Final = "/v1/chat"
MAX_FRAME_BYTES: Final = 1024 * 1024
HELLO_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class ModelRoute:
    """Where a model name shown to users is served: a provider and its own model name."""

    provider: Provider
    upstream: str


class LiveSession:
    """A session's state plus its I/O: the attached connection and running replies."""

    def __init__(self, state: GatewaySession) -> None:
        self.state = state
        self.connection: GatewayConnection | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def emit(self, events: Iterable[ServerFrame]) -> None:
        """Send events to the attached client, if any. They are already logged by the
        session, so a client that is away gets them on resume."""
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
        token: str | None = None,
        log_limits: LogLimits | None = None,
    ) -> None:
        if models is None:
            demo = DemoProvider()
            models = {"demo": ModelRoute(demo, "demo")}
        self.models = models
        self.token = token
        self.log_limits = log_limits or LogLimits()
        self.sessions: dict[str, LiveSession] = {}
        self._server: Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, host: str = "127.0.0.1") -> str:
        return f"ws://{host}:{self.port}{CHAT_PATH}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            server_header=f"nbchat/{__version__}",
        )

    async def close(self) -> None:
        for live in self.sessions.values():
            for task in live.tasks.values():
                task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self, host: str, port: int) -> None:
        await self.start(host, port)
        assert self._server is not None
        await self._server.serve_forever()

    # --- HTTP side: health check, path and token --------------------------------

    def _process_request(
        self, connection: ServerConnection, request: HttpRequest
    ) -> HttpResponse | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path != CHAT_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint; use {CHAT_PATH}\n")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = GatewayConnection(self, websocket)
        await connection.run()

    # --- sessions and replies ---------------------------------------------------

    def open_session(self, session_id: str | None) -> tuple[LiveSession, bool]:
        """The session to attach to: the one named, or a new one. Returns it and
        whether it is an existing session being resumed."""
        if session_id is not None and session_id in self.sessions:
            return self.sessions[session_id], True
        new_id = secrets.token_urlsafe(16)
        live = LiveSession(GatewaySession(new_id, limits=self.log_limits))
        self.sessions[new_id] = live
        return live, False

    def start_reply(self, live: LiveSession, frame: Start) -> None:
        live.emit(live.state.start(frame.reply, frame.model))
        route = self.models.get(frame.model)
        if route is None:
            known = ", ".join(sorted(self.models)) or "none"
            error = Error(
                code="unknown_model", message=f"unknown model {frame.model!r}; available: {known}"
            )
            live.emit(live.state.finish(frame.reply, "error", error=error))
            return
        request = Request(messages=frame.messages, model=route.upstream, params=frame.params)
        task = asyncio.create_task(self._generate(live, frame.reply, route.provider, request))
        live.tasks[frame.reply] = task
        task.add_done_callback(lambda _: live.tasks.pop(frame.reply, None))

    async def _generate(
        self, live: LiveSession, reply: str, provider: Provider, request: Request
    ) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        timing: dict[str, Any] = {}

        def elapsed() -> dict[str, Any]:
            return {**timing, "duration_s": round(loop.time() - began, 6)}

        try:
            async for item in provider.stream(request):
                if isinstance(item, TextChunk):
                    timing.setdefault("first_token_s", round(loop.time() - began, 6))
                    live.emit(live.state.delta(reply, item.text))
                elif isinstance(item, Finish):
                    live.emit(
                        live.state.finish(reply, item.reason, usage=item.usage, timing=elapsed())
                    )
                    return
            raise ProviderError("upstream_error", "the provider ended without finishing")
        except asyncio.CancelledError:
            # Stop (or shutdown) cancelled the stream: the partial text stays.
            live.emit(live.state.finish(reply, "stopped", timing=elapsed()))
        except ProviderError as exc:
            error = Error(code=exc.code, message=exc.message)
            live.emit(live.state.finish(reply, "error", timing=elapsed(), error=error))
        except Exception as exc:  # a provider bug must not take the gateway down
            log.exception("provider failed on reply %s", reply)
            error = Error(
                code="upstream_error", message=f"the provider failed: {type(exc).__name__}: {exc}"
            )
            live.emit(live.state.finish(reply, "error", timing=elapsed(), error=error))

    def stop_reply(self, live: LiveSession, reply: str) -> None:
        if reply not in live.state.replies:
            raise SessionError(f"unknown reply {reply!r}")
        task = live.tasks.get(reply)
        if task is not None:
            task.cancel()


class GatewayConnection:
    """One client's WebSocket: decode frames, act on them, send events in order.

    Outgoing frames go through one queue and one writer task, so that events numbered
    in order are also sent in order, whichever task produced them.
    """

    def __init__(self, gateway: Gateway, websocket: ServerConnection) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.live: LiveSession | None = None
        self._outbox: asyncio.Queue[ServerFrame | None] = asyncio.Queue()

    def send(self, frame: ServerFrame) -> None:
        self._outbox.put_nowait(frame)

    async def _write(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            try:
                await self.websocket.send(encode(frame))
            except ConnectionClosed:
                return

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for message in self.websocket:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            if self.live is not None and self.live.connection is self:
                self.live.connection = None
            self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _on_message(self, message: str | bytes) -> None:
        try:
            frame = decode_client(message)
            self._dispatch(frame)
        except ProtocolError as exc:
            self.send(Error(code=exc.code, message=str(exc)))
        except SessionError as exc:
            self.send(Error(code="bad_request", message=str(exc)))

    def _dispatch(self, frame: Any) -> None:
        if isinstance(frame, Hello):
            self._hello(frame)
            return
        if isinstance(frame, Ping):
            self.send(Pong(t=frame.t))
            return
        live = self.live
        if live is None:
            raise ProtocolError(f"send hello before {frame.type}")
        if isinstance(frame, Start):
            self.gateway.start_reply(live, frame)
        elif isinstance(frame, Stop):
            self.gateway.stop_reply(live, frame.reply)
        elif isinstance(frame, Pause):
            live.emit(live.state.pause(frame.reply))
        elif isinstance(frame, Resume):
            live.emit(live.state.resume(frame.reply))

    def _hello(self, frame: Hello) -> None:
        if self.live is not None:
            raise ProtocolError("hello was already sent on this connection")
        live, resumed = self.gateway.open_session(frame.session)
        replay = live.state.replay(frame.last_seq or 0) if resumed else None
        if live.connection is not None:
            # A newer connection takes the session over; the old one gets nothing more.
            live.connection = None
        self.live = live
        self.send(
            Welcome(
                session=live.state.session_id,
                last_seq=live.state.last_seq,
                models=tuple(self.gateway.models),
                resumed=resumed,
                server=f"nbchat/{__version__}",
            )
        )
        if replay is not None:
            if replay.gap:
                self.send(
                    Error(
                        code="resume_gap",
                        message="the session log no longer reaches back to your "
                        "last_seq; unfinished replies are sent in full",
                    )
                )
            for event in replay.events:
                self.send(event)
        live.connection = self
