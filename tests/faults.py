"""A TCP proxy on loopback that breaks the link between a client and a gateway on
purpose: it cuts connections (abruptly, possibly mid-frame), stalls them (half-open:
nothing flows, nothing closes), delays and slices what it forwards. Its random choices
come from a fixed seed, so a failing run can be replayed."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)  # kept in a set by identity
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    stalled_until: float = 0.0
    welcome_then_cut: bool = False  # forward the 101 and one frame, then cut


def _first_frame_end(data: bytes) -> int | None:
    """Where the first WebSocket frame after the HTTP response ends in ``data``
    (server frames are unmasked), or None if it is not all there yet."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    at = head_end + 4
    if len(data) < at + 2:
        return None
    length, at = data[at + 1] & 0x7F, at + 2
    if length == 126:
        length, at = int.from_bytes(data[at : at + 2], "big"), at + 2
    elif length == 127:
        length, at = int.from_bytes(data[at : at + 8], "big"), at + 8
    end = at + length
    return end if len(data) >= end else None


@dataclass
class FaultyProxy:
    target_port: int
    seed: int = 0
    slice_bytes: int | None = 64  # forward in pieces of at most this many bytes
    delay_s: float = 0.0  # added before each piece
    cuts: int = 0
    stalls: int = 0
    connections: int = 0
    swallow_upstream: bool = False  # drop what the client sends (it never arrives)
    # The chance that a new connection gets the welcome and is then cut (as by
    # cut_after_welcome): random chaos that hits the resend after a resume.
    welcome_cut_rate: float = 0.0
    _welcome_cuts: int = 0  # the next this many connections: welcome, then cut
    _links: set[_Link] = field(default_factory=set)

    def start(self) -> FaultyProxy:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/v1/chat") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(writer, up_writer)
        if self._welcome_cuts:
            self._welcome_cuts -= 1
            link.welcome_then_cut = True
        elif self.welcome_cut_rate and self._rng.random() < self.welcome_cut_rate:
            link.welcome_then_cut = True
        self._links.add(link)
        await asyncio.gather(
            self._pump(link, reader, up_writer), self._pump_down(link, up_reader, writer)
        )
        self._links.discard(link)

    async def _pump_down(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if link.welcome_then_cut:
            await self._welcome_then_cut(link, reader, writer)
        else:
            await self._pump(link, reader, writer)

    async def _welcome_then_cut(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        data, forwarded = b"", 0
        try:
            while (end := _first_frame_end(data)) is None:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                data += chunk
                # The HTTP response goes on at once: the client says hello only then.
                head_end = data.find(b"\r\n\r\n")
                if head_end >= 0 and forwarded == 0:
                    forwarded = head_end + 4
                    writer.write(data[:forwarded])
            # The welcome and, in the same segment, a close frame (no code): the client
            # learns the link is closing before it can resend anything, every time.
            writer.write(data[forwarded:end] + b"\x88\x00")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.client.transport.abort()
            link.upstream.transport.abort()
            self.cuts += 1

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        upstream = writer is link.upstream
        try:
            while data := await reader.read(65536):
                if upstream and self.swallow_upstream:
                    continue
                while data:
                    if (held := link.stalled_until - loop.time()) > 0:
                        await asyncio.sleep(held)  # half-open: nothing flows meanwhile
                    size = self._rng.randint(1, self.slice_bytes) if self.slice_bytes else len(data)
                    piece, data = data[:size], data[size:]
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    if writer.transport.is_closing():
                        return
                    writer.write(piece)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    def _call(self, fn: object) -> None:
        asyncio.run_coroutine_threadsafe(self._run(fn), self._loop).result(10)

    @staticmethod
    async def _run(fn: object) -> None:
        fn()  # type: ignore[operator]

    def cut_after_welcome(self, connections: int = 1) -> None:
        """The next ``connections`` connections get the gateway's HTTP response and
        exactly one frame (the welcome), then a close frame and a cut: a resume whose
        resend meets the cut, deterministically."""
        self._welcome_cuts = connections

    def cut(self) -> int:
        """Abort every link now, both ways, wherever the bytes are. Returns how many."""

        def cut_all() -> None:
            for link in list(self._links):
                link.client.transport.abort()
                link.upstream.transport.abort()

        count = len(self._links)
        self._call(cut_all)
        self.cuts += 1
        return count

    def stall(self, seconds: float) -> None:
        """Hold every current link silent for ``seconds``, open but dead (half-open)."""

        def stall_all() -> None:
            until = self._loop.time() + seconds
            for link in self._links:
                link.stalled_until = until

        self._call(stall_all)
        self.stalls += 1

    def close(self) -> None:
        self.cut()
        self._server.close()
        asyncio.run_coroutine_threadsafe(self._cancel_links(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @staticmethod
    async def _cancel_links() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
