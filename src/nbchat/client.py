"""The client's I/O: one event loop thread per process, one WebSocket per chat.

:class:`ClientConnection` feeds every received frame to its pure
:class:`~nbchat.session.ClientSession` (which drops duplicates) and hands new ones to a
callback. After an unexpected drop it reconnects with backoff and jitter and resumes
the session from its last seq; requests not answered by then (sent while the link was
down, or lost with it) go out again, in order, after the resume. Everything here runs
on the loop thread; other threads reach it through :func:`client_loop` and
``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Final, Literal

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import __version__
from .backoff import Backoff
from .protocol import ClientFrame, Hello, ProtocolError, ServerFrame, Welcome, decode_server, encode
from .session import ClientSession

__all__ = ["ClientConnection", "GatewayUnavailable", "LinkState", "client_loop"]

log = logging.getLogger("nbchat.client")

OPEN_TIMEOUT_S: Final = 10.0
DEFAULT_HEARTBEAT_S: Final = 10.0

LinkState = Literal["new", "connected", "reconnecting", "offline", "closed"]

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def client_loop() -> asyncio.AbstractEventLoop:
    """The process's client event loop, running on a daemon thread (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="nbchat-client", daemon=True)
            thread.start()
            _loop = loop
        return _loop


class GatewayUnavailable(ConnectionError):
    """The gateway could not be reached or refused the connection; the message says why."""


class ClientConnection:
    """A WebSocket to a gateway, speaking protocol v1, that comes back after drops.

    After :meth:`open` returns, new frames arrive at ``on_frame`` in seq order (the
    welcome of each resume included). ``on_state`` hears of every change of the link:
    ``(state, detail)`` with ``detail`` saying the attempt and delay while reconnecting,
    how long the resume took once connected again, and why when offline.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        on_frame: Callable[[ServerFrame], None],
        on_state: Callable[[LinkState, str], None],
        backoff: Backoff | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.session = ClientSession()
        self.welcome: Welcome | None = None
        self.state: LinkState = "new"
        self.backoff = backoff or Backoff()
        self.heartbeat_s = heartbeat_s
        self.resumes: list[float] = []  # seconds from each drop to the resumed welcome
        self._rng = rng or random.Random()
        self._on_frame = on_frame
        self._on_state = on_state
        self._websocket: WebSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._websocket is not None

    def _set_state(self, state: LinkState, detail: str = "") -> None:
        self.state = state
        self._on_state(state, detail)

    async def open(self) -> Welcome:
        """Connect once, say hello (resuming the session if there is one) and wait for
        the welcome. Raises :class:`GatewayUnavailable` with a plain reason on failure;
        it does not retry (a chat that has never connected reports at once)."""
        welcome = await self._connect()
        self._set_state("connected")
        return welcome

    async def _connect(self) -> Welcome:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            websocket = await connect(
                self.url,
                additional_headers=headers,
                proxy=None,  # the gateway is reached directly, never via HTTP(S)_PROXY
                open_timeout=OPEN_TIMEOUT_S,
                ping_interval=self.heartbeat_s,
                ping_timeout=self.heartbeat_s,  # a half-open link is dropped within this
                user_agent_header=f"nbchat/{__version__}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = "wrong or missing token" if status == 401 else f"HTTP {status}"
            raise GatewayUnavailable(f"the gateway at {self.url} refused: {reason}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise GatewayUnavailable(
                f"cannot reach the gateway at {self.url}: {exc or type(exc).__name__}"
            ) from None
        try:
            resuming = self.session.session_id is not None
            hello = Hello(
                client=f"nbchat-python/{__version__}",
                session=self.session.session_id,
                last_seq=self.session.last_seq if resuming else None,
            )
            await websocket.send(encode(hello))
            welcome = decode_server(await asyncio.wait_for(websocket.recv(), OPEN_TIMEOUT_S))
        except (ConnectionClosed, TimeoutError, ProtocolError) as exc:
            await websocket.close()
            raise GatewayUnavailable(
                f"the gateway at {self.url} did not welcome us: {exc}"
            ) from None
        if not isinstance(welcome, Welcome):
            await websocket.close()
            raise GatewayUnavailable(
                f"the gateway at {self.url} answered {welcome.type!r} to hello"
            )
        self.session.receive(welcome)
        self.welcome = welcome
        self._websocket = websocket
        self._on_frame(welcome)
        self._reader = asyncio.create_task(self._read(websocket))
        # Requests not answered yet (a frame written just before a cut may never have
        # arrived, or was sent while the link was down) go out again, once, in order.
        if welcome.resumed:
            for frame in self.session.unanswered():
                await websocket.send(encode(frame))
        return welcome

    async def send(self, frame: ClientFrame) -> None:
        """Send one request. While reconnecting it is kept, and sent after the resume
        with every other request not answered yet. Raises :class:`GatewayUnavailable`
        when offline or closed."""
        if self._websocket is None and self.state in ("offline", "closed", "new"):
            raise GatewayUnavailable(f"not connected to the gateway at {self.url}")
        self.session.sent(frame)  # kept until answered, resent after a resume
        if self._websocket is not None:
            with contextlib.suppress(ConnectionClosed):  # the reader sees the drop
                await self._websocket.send(encode(frame))

    async def _read(self, websocket: WebSocket) -> None:
        try:
            async for message in websocket:
                try:
                    frame = decode_server(message)
                except ProtocolError as exc:
                    log.warning("ignoring a bad frame from the gateway: %s", exc)
                    continue
                if self.session.receive(frame):
                    self._on_frame(frame)
        except ConnectionClosed:
            pass
        except Exception:  # keep the loop thread alive whatever a callback did
            log.exception("nbchat client reader failed")
        if self._websocket is websocket:
            self._websocket = None
            if self.state == "connected":
                self._reconnecting = asyncio.create_task(self._reconnect(time.monotonic()))

    async def _reconnect(self, dropped_at: float) -> None:
        attempt = 0
        while True:
            attempt += 1
            delay = self.backoff.delay(attempt, self._rng)
            self._set_state("reconnecting", f"attempt {attempt}, next in {delay:.1f} s")
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except GatewayUnavailable as exc:
                if self.backoff.exhausted(attempt):
                    self._set_state("offline", f"gave up after {attempt} attempts: {exc}")
                    return
                continue
            took = time.monotonic() - dropped_at
            self.resumes.append(took)
            self._set_state("connected", f"resumed after {took:.1f} s")
            return

    async def reconnect_now(self) -> None:
        """Try again at once (the Retry button); on failure, back to backing off."""
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()
        if self._websocket is not None:
            return
        try:
            await self._connect()
            self._set_state("connected", "reconnected")
        except GatewayUnavailable:
            self._reconnecting = asyncio.create_task(self._reconnect(time.monotonic()))

    async def close(self) -> None:
        self._set_state("closed")
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        websocket, self._websocket = self._websocket, None
        if websocket is not None:
            await websocket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
