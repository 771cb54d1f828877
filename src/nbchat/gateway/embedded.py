"""A gateway running in this process, on its own thread and event loop.

Used by ``Chat()`` with no URL: one per process, started on first use on a free
loopback port with a random token, and shut down at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import threading
from concurrent.futures import Future
from typing import Final

from ..local_models import MODELS
from .config import load_offer
from .server import Gateway

__all__ = ["EmbeddedGateway", "configured_models", "shared_gateway"]

START_TIMEOUT_S: Final = 10.0


class EmbeddedGateway:
    """Runs a :class:`Gateway` on a daemon thread. :meth:`start` returns once it listens."""

    def __init__(self, gateway: Gateway | None = None) -> None:
        # A default gateway also serves the process's Python callables (Chat(model=fn)).
        self.gateway = gateway or Gateway(token=secrets.token_urlsafe(24), local_models=MODELS)
        self._configure = gateway is None  # a default gateway loads its models
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nbchat-gateway", daemon=True)
        self._closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> EmbeddedGateway:
        self._thread.start()
        started: Future[None] = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        started.result(timeout=START_TIMEOUT_S)
        return self

    async def _start(self) -> None:
        if self._configure:
            # NBCHAT_CONFIG, or discovery from OPENAI_BASE_URL, as `nbchat serve` does.
            offer = await load_offer(None, os.environ)
            self.gateway.models = offer.models
            self.gateway.default_model = offer.default
            self.gateway.notice = offer.notice
            self.gateway.discovery_error = offer.discovery_error
        await self.gateway.start("127.0.0.1", 0)

    @property
    def url(self) -> str:
        return self.gateway.url()

    @property
    def token(self) -> str | None:
        return self.gateway.token

    def close(self) -> None:
        """Stop serving, cancel running replies and end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop)
            try:
                done.result(timeout=START_TIMEOUT_S)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=START_TIMEOUT_S)


_shared: EmbeddedGateway | None = None
_shared_lock = threading.Lock()


def shared_gateway() -> EmbeddedGateway:
    """The process's embedded gateway, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddedGateway().start()
            atexit.register(_shared.close)
        return _shared


def configured_models() -> list[str]:
    """The names the process's embedded gateway serves from its configuration (not
    callables), if it is running; a callable cannot be registered under one."""
    with _shared_lock:
        gateway = _shared.gateway if _shared is not None else None
    return list(gateway.models) if gateway is not None else []
