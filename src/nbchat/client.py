"""The client's I/O: one event loop thread per process, one WebSocket per chat.

:class:`ClientConnection` feeds every received frame to its pure
:class:`~nbchat.session.ClientSession` (which drops duplicates) and hands new ones to a
callback. After an unexpected drop it reconnects with backoff and jitter and resumes
the session from its last seq; requests not answered by then (sent while the link was
down, or lost with it) go out again, in order, after the resume. Everything here runs
on the loop thread; other threads reach it through :func:`client_loop` and
``run_coroutine_threadsafe``.

A connection may be given several gateway URLs (gateways sharing one session store):
each attempt goes to the URL after the one last used or tried, wrapping around, and
the session resumes wherever it lands (see :meth:`ClientConnection._reconnect`).

One task owns the link for its whole life (:meth:`ClientConnection._keep_up`): it
serves a WebSocket until it drops, reconnects, and serves the next. Whatever fails
while serving (a cut during the resend after a resume included) ends in that loop,
so no failure can leave the link neither connected nor reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.uri import parse_uri

from . import __version__
from .backoff import Backoff
from .gateway.auth import install_log_redaction
from .protocol import (
    CLOSE_TAKEN_OVER,
    DEFAULT_MAX_FRAME_BYTES,
    ClientFrame,
    Error,
    Hello,
    ProtocolError,
    ServerFrame,
    Start,
    Welcome,
    decode_server,
    encode,
)
from .session import ClientSession

__all__ = [
    "ClientConnection",
    "GatewayUnavailable",
    "LinkState",
    "RequestTooLarge",
    "SendRefused",
    "client_loop",
    "detection_bound_s",
    "gateway_urls",
    "on_loopback",
    "refusal_code",
]

log = logging.getLogger("nbchat.client")

OPEN_TIMEOUT_S: Final = 10.0
DEFAULT_HEARTBEAT_S: Final = 10.0
# A heartbeat that goes unanswered closes the link at once: the closing handshake of a
# link already known dead is not waited for (websockets' own default is 10 s).
CLOSE_TIMEOUT_S: Final = 1.0
# The largest frame accepted from the gateway: a snapshot of a long reply is one frame.
MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024
CLOSE_TOO_BIG: Final = 1009


def detection_bound_s(heartbeat_s: float) -> float:
    """How long a silent (half-open) link can go unnoticed: a ping waits up to one
    interval to be sent and one more for its pong, then the link closes at once."""
    return 2 * heartbeat_s + CLOSE_TIMEOUT_S


LinkState = Literal["new", "connected", "reconnecting", "offline", "closed"]

_URL_EXAMPLE: Final = "'ws://host:8765/v1/chat'"


def gateway_urls(url: object) -> tuple[str, ...]:
    """The gateway URLs ``url`` names: one ``ws://`` or ``wss://`` URL, or a non-empty
    list or tuple of them (tried in order). Raises :class:`ValueError` saying what is
    wrong, before anything connects."""
    if isinstance(url, str):
        items: tuple[object, ...] = (url,)
        several = False
    elif isinstance(url, (list, tuple)):
        items, several = tuple(url), True
        if not items:
            raise ValueError(
                f"url is an empty list; give at least one gateway URL, e.g. {_URL_EXAMPLE}"
            )
    else:
        raise ValueError(
            f"url must be a gateway URL (str) or a list of them, not {type(url).__name__}; "
            f"e.g. {_URL_EXAMPLE}"
        )
    urls: list[str] = []
    for i, item in enumerate(items):
        name = f"url[{i}]" if several else "url"
        if not isinstance(item, str):
            raise ValueError(
                f"{name} is {item!r} ({type(item).__name__}), not a str; each gateway URL "
                f"is a str like {_URL_EXAMPLE}"
            )
        try:
            parse_uri(item)
        except (InvalidURI, ValueError) as exc:
            reason = str(exc).removeprefix(f"{item} isn't a valid URI: ")
            reason = reason[:1].lower() + reason[1:]
            raise ValueError(
                f"{name} {item!r} is not a WebSocket URL ({reason}); a gateway URL looks "
                f"like {_URL_EXAMPLE} (wss:// for TLS)"
            ) from None
        urls.append(item)
    return tuple(urls)


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


class RequestTooLarge(ValueError):
    """A request over the gateway's frame limit: it was not sent (the gateway would
    close the link over it)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the request is {size:,} bytes; the gateway takes at most {limit:,}")
        self.size, self.limit = size, limit


# What ClientConnection.send raises for a request that did not go (nothing is kept), and
# the code a reply whose start it was ends with.
SendRefused = (GatewayUnavailable, RequestTooLarge, ProtocolError)


def refusal_code(exc: GatewayUnavailable | RequestTooLarge | ProtocolError) -> str:
    """The error code of a reply whose start :meth:`ClientConnection.send` refused
    with ``exc``: ``unavailable`` (not connected), ``too_large`` (over the gateway's
    frame limit) or ``bad_request`` (it cannot be encoded)."""
    if isinstance(exc, GatewayUnavailable):
        return "unavailable"
    if isinstance(exc, RequestTooLarge):
        return "too_large"
    return "bad_request"


class ClientConnection:
    """A WebSocket to a gateway, speaking protocol v1, that comes back after drops.

    After :meth:`open` returns, new frames arrive at ``on_frame`` in seq order (the
    welcome of each resume included). ``on_state`` hears of every change of the link:
    ``(state, detail)`` with ``detail`` saying the attempt and delay while reconnecting,
    how long the resume took once connected again, and why when offline.

    ``url`` is one gateway URL or several (see :meth:`_reconnect` for the order they
    are tried in); :attr:`url` is the one in use (the last one connected to).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None,
        on_frame: Callable[[ServerFrame], None],
        on_state: Callable[[LinkState, str], None],
        backoff: Backoff | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.urls = gateway_urls(url)
        self.url = self.urls[0]  # the gateway in use: the last one that welcomed us
        self._next = 0  # index in urls of the gateway the next attempt goes to
        self.token = token
        self.session = ClientSession()
        self.welcome: Welcome | None = None
        self.state: LinkState = "new"
        self.backoff = backoff or Backoff()
        self.heartbeat_s = heartbeat_s
        # Seconds from each drop to the resumed welcome (the most recent ones).
        self.resumes: deque[float] = deque(maxlen=1000)
        self._rng = rng or random.Random()
        self._on_frame = on_frame
        self._on_state = on_state
        self._websocket: WebSocket | None = None
        self._link: asyncio.Task[None] | None = None
        self._opening = False  # open() is connecting: no second link may start
        self._retry_now = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._websocket is not None

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame the gateway accepts, as its welcome said."""
        limit = self.welcome.max_frame_bytes if self.welcome is not None else None
        return limit or DEFAULT_MAX_FRAME_BYTES

    def _set_state(self, state: LinkState, detail: str = "") -> None:
        self.state = state
        self._on_state(state, detail)

    async def open(self) -> Welcome:
        """Connect once, say hello (resuming the session if there is one) and wait for
        the welcome. With several URLs each is tried once, in order, from the one after
        the last used or tried (the first, the first time). Raises
        :class:`GatewayUnavailable` with a plain reason (each gateway's) when none
        welcomes us; it does not retry (a chat that has never connected reports at once)."""
        self._opening = True
        failures: list[str] = []
        connected: tuple[WebSocket, Welcome] | None = None
        try:
            for _ in self.urls:
                if self.closed:
                    failures.append("the chat was closed")
                    break
                try:
                    connected = await self._connect(self._take_url(), OPEN_TIMEOUT_S)
                    break
                except GatewayUnavailable as exc:
                    failures.append(str(exc))
        finally:
            self._opening = False
        if connected is None:
            raise GatewayUnavailable("; ".join(failures))
        websocket, welcome = connected
        self._set_state("connected")
        self._link = asyncio.create_task(self._keep_up(websocket))
        return welcome

    def _take_url(self) -> str:
        """The URL the next attempt goes to; the one after it is next in line."""
        url = self.urls[self._next]
        self._next = (self._next + 1) % len(self.urls)
        return url

    async def _connect(self, url: str, timeout: float) -> tuple[WebSocket, Welcome]:
        install_log_redaction()  # websockets' DEBUG lines would show the token
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            websocket = await connect(
                url,
                additional_headers=headers,
                proxy=None,  # the gateway is reached directly, never via HTTP(S)_PROXY
                open_timeout=timeout,
                ping_interval=self.heartbeat_s,
                ping_timeout=self.heartbeat_s,
                close_timeout=CLOSE_TIMEOUT_S,
                max_size=MAX_RECEIVE_BYTES,
                user_agent_header=f"nbchat/{__version__}",
                # Compressing costs CPU on both ends of the link and saves nothing
                # on loopback (the embedded gateway, in this very process).
                compression=None if on_loopback(url) else "deflate",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = "wrong or missing token" if status == 401 else f"HTTP {status}"
            raise GatewayUnavailable(f"the gateway at {url} refused: {reason}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise GatewayUnavailable(
                f"cannot reach the gateway at {url}: {exc or type(exc).__name__}"
            ) from None
        try:
            resuming = self.session.session_id is not None
            hello = Hello(
                client=f"nbchat-python/{__version__}",
                session=self.session.session_id,
                last_seq=self.session.last_seq if resuming else None,
            )
            await websocket.send(encode(hello))
            welcome = decode_server(await asyncio.wait_for(websocket.recv(), timeout))
        except (ConnectionClosed, TimeoutError, ProtocolError) as exc:
            await websocket.close()
            raise GatewayUnavailable(f"the gateway at {url} did not welcome us: {exc}") from None
        if not isinstance(welcome, Welcome):
            await websocket.close()
            if isinstance(welcome, Error):  # its own words: "busy: ... try again later"
                raise GatewayUnavailable(
                    f"the gateway at {url} refused: {welcome.code}: {welcome.message}"
                )
            raise GatewayUnavailable(f"the gateway at {url} answered {welcome.type!r} to hello")
        self.url = url  # before the welcome is handled: its handler may read it
        self.session.receive(welcome)
        self.welcome = welcome
        self._websocket = websocket
        try:
            self._on_frame(welcome)
        except Exception:  # a callback's bug must not stop the link
            log.exception("nbchat client: handling the welcome failed")
        # Requests not answered yet (a frame written just before a cut may never have
        # arrived, or was sent while the link was down) go out again, once, in order,
        # before anything sent later. A cut meanwhile is seen by the link task.
        # (After a new-session welcome only starts the lost session never saw are left.)
        with contextlib.suppress(ConnectionClosed):
            for request in self.session.unanswered():
                await websocket.send(encode(request))
        return websocket, welcome

    async def send(self, frame: ClientFrame) -> None:
        """Send one request. While reconnecting it is kept, and sent after the resume
        with every other request not answered yet. Raises :class:`GatewayUnavailable`
        when offline or closed, and :class:`ProtocolError` or :class:`RequestTooLarge`
        for a frame that cannot be sent at all (then nothing is kept)."""
        if self._websocket is None and self.state in ("offline", "closed", "new"):
            raise GatewayUnavailable(f"not connected to the gateway at {self.url}")
        text = encode(frame)
        limit = self.max_frame_bytes
        if len(text) * 4 > limit and (size := len(text.encode())) > limit:  # 4: UTF-8's most
            raise RequestTooLarge(size, limit)
        self.session.sent(frame)  # kept until answered, resent after a resume
        if self._websocket is not None:
            with contextlib.suppress(ConnectionClosed):  # the link task sees the drop
                await self._websocket.send(text)

    async def _keep_up(self, websocket: WebSocket | None) -> None:
        """Serve the link; after each drop, reconnect and serve again, until closed,
        given up (offline) or taken over. ``None``: reconnect at once first."""
        immediate = websocket is None
        while not self.closed:
            if websocket is not None:
                close_code = await self._serve(websocket)
                if self.closed:
                    return
                if close_code == CLOSE_TAKEN_OVER:
                    self._set_state(
                        "offline",
                        "another connection took over this chat's session (the same "
                        "session resumed elsewhere); reconnect to take it back",
                    )
                    return
                if close_code == CLOSE_TOO_BIG:
                    self._refuse_largest_start()
            websocket = await self._reconnect(immediate)
            immediate = False
            if websocket is None:
                return  # offline; reconnect_now() starts again

    async def _serve(self, websocket: WebSocket) -> int | None:
        """Read until the link drops; returns the close code the gateway sent, if any."""
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
        except Exception:  # keep the link alive whatever a callback did
            log.exception("nbchat client reader failed")
            await websocket.close()
        finally:
            if self._websocket is websocket:
                self._websocket = None
        received = websocket.protocol.close_rcvd
        return received.code if received is not None else None

    def _refuse_largest_start(self) -> None:
        """The gateway closed with 1009 (a frame over its limit): the largest
        unanswered start would be refused again on every resume, so it ends here."""
        starts = [f for f in self.session.unanswered() if isinstance(f, Start)]
        if not starts:
            return
        size, largest = max(((len(encode(f).encode()), f) for f in starts), key=lambda s: s[0])
        self.session.withdraw(largest)
        self._on_frame(
            Error(
                code="too_large",
                reply=largest.reply,
                message=f"the request is {size:,} bytes, over the gateway's frame limit; "
                "send less history (Chat(max_history_chars=...)) or raise the gateway's "
                "--max-frame-bytes",
            )
        )

    async def _reconnect(self, immediate: bool) -> WebSocket | None:
        """Reconnect with backoff; the new WebSocket, or None once given up.

        The failover rule, with several gateway URLs: each attempt goes to the URL
        after the one last used or tried, wrapping around, so after a drop the
        gateway that dropped is tried last, and every other one before it is tried
        again. A round is one attempt at each URL; the backoff counts rounds: before
        the first attempt of round ``n`` the link waits ``backoff.delay(n)`` (the
        first within ``backoff.initial_s``), and after a failed attempt the next URL
        of the round is tried at once. So a dead gateway (refused at once) costs no
        wait before the next is tried; one that does not answer at all costs its
        open timeout (at most ``OPEN_TIMEOUT_S``). ``backoff.max_attempts`` counts
        rounds (each gateway is tried that many times), ``give_up_after_s`` the time
        since the drop, as with one URL. The session resumes (same session id and
        last seq) wherever the link lands; a gateway that does not know it starts a
        new one (``welcome.resumed`` false). With one URL a round is one attempt:
        exactly the single-gateway behaviour.
        """
        dropped_at = time.monotonic()
        count = len(self.urls)
        attempt = 0  # attempts made since the drop, at any gateway
        manual = False
        while True:
            attempt += 1
            round_, place = divmod(attempt - 1, count)
            url = self._take_url()
            remaining = self.backoff.remaining(time.monotonic() - dropped_at)
            if place == 0:  # a round begins: back off
                delay = 0.0 if immediate else self.backoff.delay(round_ + 1, self._rng)
            else:  # the previous gateway of this round failed: the next one at once
                delay = 0.0
            if remaining is not None:
                delay = min(delay, remaining)
            where = f" to {url}" if count > 1 else ""
            self._set_state("reconnecting", f"attempt {attempt}, next in {delay:.1f} s{where}")
            self._retry_now.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):  # the Retry button cuts it short
                    await asyncio.wait_for(self._retry_now.wait(), delay)
            if place == 0:
                manual = self._retry_now.is_set() or immediate
            immediate = False
            remaining = self.backoff.remaining(time.monotonic() - dropped_at)
            timeout = OPEN_TIMEOUT_S if remaining is None else min(OPEN_TIMEOUT_S, remaining)
            try:
                websocket, welcome = await self._connect(url, max(timeout, 0.05))
            except GatewayUnavailable as exc:
                elapsed = time.monotonic() - dropped_at
                if self.backoff.exhausted(attempt // count, elapsed):
                    gateways = f" at {count} gateways" if count > 1 else ""
                    self._set_state(
                        "offline",
                        f"gave up after {attempt} attempts{gateways} in {elapsed:.1f} s: {exc}",
                    )
                    return None
                continue
            took = time.monotonic() - dropped_at
            at = f" at {url}" if count > 1 else ""
            if not welcome.resumed:
                had = "did not have" if count > 1 else "no longer had"
                detail = f"new session{at}: the gateway {had} this chat's session"
            elif manual:
                detail = f"reconnected{at}"
            else:
                self.resumes.append(took)
                detail = f"resumed after {took:.1f} s{at}"
            self._set_state("connected", detail)
            return websocket

    async def reconnect_now(self) -> None:
        """Try again at once (the Retry button); on failure, back to backing off."""
        if self._websocket is not None or self.state == "closed" or self._opening:
            return
        if self._link is not None and not self._link.done():
            self._retry_now.set()
            return
        # Reconnecting from here on, at once: a send meanwhile waits for the resume
        # instead of opening a second link to the same session.
        self._set_state("reconnecting", "attempt 1, next in 0.0 s")
        self._link = asyncio.create_task(self._keep_up(None))

    async def close(self) -> None:
        self._set_state("closed")
        websocket, self._websocket = self._websocket, None
        if websocket is not None:
            await websocket.close()
        if self._link is not None:
            self._link.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link


def on_loopback(url: str) -> bool:
    """Whether ``url`` names this machine by a loopback address or ``localhost``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
