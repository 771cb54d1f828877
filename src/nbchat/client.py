"""The client's I/O: one event loop thread per process, one WebSocket per chat.

:class:`ClientConnection` feeds every received frame to its pure
:class:`~nbchat.session.ClientSession` (which drops duplicates) and hands new ones to a
callback; it sends frames as they are given. Everything here runs on the loop thread;
other threads reach it through :func:`client_loop` and ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Final

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import __version__
from .protocol import ClientFrame, Hello, ProtocolError, ServerFrame, Welcome, decode_server, encode
from .session import ClientSession

__all__ = ["ClientConnection", "GatewayUnavailable", "client_loop"]

log = logging.getLogger("nbchat.client")

OPEN_TIMEOUT_S: Final = 10.0

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
    """A WebSocket to a gateway, speaking protocol v1.

    After :meth:`open` returns, frames arrive at ``on_frame`` (new ones only, in seq
    order) until the link closes; then ``on_close`` gets the reason.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        on_frame: Callable[[ServerFrame], None],
        on_close: Callable[[str], None],
    ) -> None:
        self.url = url
        self.token = token
        self.session = ClientSession()
        self.welcome: Welcome | None = None
        self._on_frame = on_frame
        self._on_close = on_close
        self._websocket: WebSocket | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._websocket is not None

    async def open(self) -> Welcome:
        """Connect, say hello (resuming the session if there was one) and wait for the
        welcome. Raises :class:`GatewayUnavailable` with a plain reason on failure."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            websocket = await connect(
                self.url,
                additional_headers=headers,
                proxy=None,  # the gateway is reached directly, never via HTTP(S)_PROXY
                open_timeout=OPEN_TIMEOUT_S,
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
            hello = Hello(
                client=f"nbchat-python/{__version__}",
                session=self.session.session_id,
                last_seq=self.session.last_seq if self.session.session_id else None,
            )
            await websocket.send(encode(hello))
            first = await asyncio.wait_for(websocket.recv(), OPEN_TIMEOUT_S)
            welcome = decode_server(first)
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
        self.session.session_id = welcome.session
        self.welcome = welcome
        self._websocket = websocket
        self._reader = asyncio.create_task(self._read(websocket))
        return welcome

    async def send(self, frame: ClientFrame) -> None:
        """Send one frame. Raises :class:`GatewayUnavailable` when not connected."""
        if self._websocket is None:
            raise GatewayUnavailable(f"not connected to the gateway at {self.url}")
        try:
            await self._websocket.send(encode(frame))
        except ConnectionClosed as exc:
            raise GatewayUnavailable(f"the connection to {self.url} closed: {exc}") from None

    async def _read(self, websocket: WebSocket) -> None:
        reason = "closed"
        try:
            async for message in websocket:
                try:
                    frame = decode_server(message)
                except ProtocolError as exc:
                    log.warning("ignoring a bad frame from the gateway: %s", exc)
                    continue
                if self.session.receive(frame):
                    self._on_frame(frame)
        except ConnectionClosed as exc:
            reason = f"the connection to the gateway was lost ({exc})"
        except Exception as exc:  # keep the loop thread alive whatever a callback did
            log.exception("nbchat client reader failed")
            reason = f"the client failed: {exc}"
        finally:
            if self._websocket is websocket:
                self._websocket = None
            self._on_close(reason)

    async def close(self) -> None:
        websocket, self._websocket = self._websocket, None
        if websocket is not None:
            await websocket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
