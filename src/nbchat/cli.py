"""The ``nbchat`` command: ``nbchat serve`` runs a gateway on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import __version__
from .gateway import Gateway
from .gateway.auth import AuthSetupError, is_loopback, read_token_file, server_ssl_context
from .gateway.config import ConfigError, load_offer
from .gateway.limits import GatewayLimits
from .gateway.redis_store import RedisStore
from .session import LogLimits

__all__ = ["freeze_startup_heap", "main", "widest_delta_window_ms"]

log = logging.getLogger("nbchat.serve")

# A served gateway carries many sessions: coalescing a reply's text over 50 ms (at most
# 20 deltas a second, what the pane shows) cut its CPU per token by a third at 200
# sessions in benchmarks/bench_load.py. The embedded gateway serves one user: 0.
SERVE_DELTA_WINDOW_MS = 50.0
# While the gateway falls behind, the window widens up to this: at 1,000 sessions of
# 30 tokens/s on one core, 50 ms delivered 29% of the tokens, 200 ms all of them.
SERVE_DELTA_WINDOW_MAX_MS = 250.0
MAX_DELTA_WINDOW_MS = 1000.0  # longer, and text would sit in the gateway noticeably


def widest_delta_window_ms(window_ms: float, max_ms: float | None) -> float:
    """How wide ``nbchat serve --delta-window-ms window_ms --delta-window-max-ms max_ms``
    lets the delta window grow: ``max_ms`` when given; else SERVE_DELTA_WINDOW_MAX_MS,
    or the window if that is wider; and 0 for a window of 0, which asked for every
    chunk as it comes."""
    if max_ms is not None:
        return max_ms
    return max(SERVE_DELTA_WINDOW_MAX_MS, window_ms) if window_ms else 0.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbchat", description="nbchat gateway and tools")
    parser.add_argument("--version", action="version", version=f"nbchat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a gateway that Chat(url=...) connects to")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")
    serve.add_argument(
        "--config",
        default=None,
        help="models to offer, as TOML (default: $NBCHAT_CONFIG; without one: demo, "
        "plus the OpenAI-compatible server's models when OPENAI_API_KEY is set)",
    )
    serve.add_argument(
        "--token",
        action="append",
        default=None,
        help="require this bearer token; give it more than once for several, each its own "
        "identity (default: $NBCHAT_TOKEN, comma-separated; none if unset). Visible to "
        "other users in the process list: prefer --token-file",
    )
    serve.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="read bearer tokens from FILE, one a line (blank lines and lines starting "
        "with # are ignored); added to any --token",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="a browser origin (scheme://host[:port]) allowed to open a WebSocket; give it "
        "more than once for several. When given, a handshake whose Origin header is not "
        "listed gets HTTP 403; clients that send no Origin (not browsers) are unaffected. "
        "Default: no Origin check",
    )
    serve.add_argument(
        "--certfile",
        default=None,
        metavar="PEM",
        help="serve wss:// (TLS) with this certificate chain (PEM)",
    )
    serve.add_argument(
        "--keyfile",
        default=None,
        metavar="PEM",
        help="the certificate's private key (PEM; default: in --certfile)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without any token",
    )
    serve.add_argument(
        "--drain-s",
        type=float,
        default=30.0,
        help="on SIGTERM or Ctrl-C, let replies in flight go on being generated this long "
        "(clients are told to reconnect elsewhere) before exiting; a second signal exits "
        "at once (default %(default)s)",
    )
    defaults = GatewayLimits()
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--max-sessions",
        type=int,
        default=defaults.sessions,
        help="live sessions at once; more get 'busy' (default %(default)s)",
    )
    limits.add_argument(
        "--replies-per-session",
        type=int,
        default=defaults.replies_per_session,
        help="concurrent replies per session (default %(default)s)",
    )
    limits.add_argument(
        "--session-idle-s",
        type=float,
        default=defaults.session_idle_s,
        help="expire sessions idle this long (default %(default)s)",
    )
    limits.add_argument(
        "--frames-per-s",
        type=float,
        default=defaults.frames_per_s,
        help="frames per second per connection (default %(default)s)",
    )
    limits.add_argument(
        "--delta-window-ms",
        type=float,
        default=SERVE_DELTA_WINDOW_MS,
        help="send a reply's text that arrives within this many ms of its last delta with "
        "the next delta: fewer frames per token for many sessions, at up to this much "
        "delay (0: every chunk as it comes, as the embedded gateway does; default "
        "%(default)s)",
    )
    limits.add_argument(
        "--delta-window-max-ms",
        type=float,
        default=None,
        help="while the gateway falls behind (its event loop runs late), widen the delta "
        "window up to this many ms, so it sends every token in fewer frames rather than "
        f"fall further behind (default {SERVE_DELTA_WINDOW_MAX_MS:g}, or --delta-window-ms "
        "if that is more, or 0 with --delta-window-ms 0; equal to --delta-window-ms: "
        "never widen)",
    )
    limits.add_argument(
        "--max-frame-bytes",
        type=int,
        default=defaults.max_frame_bytes,
        help="larger frames close the link with 1009 (default %(default)s)",
    )
    serve.add_argument(
        "--store",
        default="memory",
        metavar="memory|redis://HOST:PORT/DB",
        help="where sessions live: 'memory' (this process; the default) or a Redis URL "
        "(redis://, rediss:// for TLS, unix://), shared by every gateway given the same "
        "one, so a client may resume on any of them",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


@dataclass(frozen=True)
class _ServeOptions:
    host: str
    port: int
    tokens: list[str]
    limits: GatewayLimits
    config: str | None
    allow_origins: list[str]
    ssl_context: ssl.SSLContext | None
    drain_s: float
    store: str | None  # a Redis URL, or None for memory


def _tokens(args: argparse.Namespace) -> list[str]:
    """The tokens of --token and --token-file; $NBCHAT_TOKEN when neither is given."""
    tokens = list(args.token or [])
    if any(not t.strip() or t != t.strip() for t in tokens):
        raise AuthSetupError(
            "--token is empty or has spaces around it: nobody could present it; give a "
            "token of visible characters"
        )
    if args.token_file is not None:
        tokens += read_token_file(args.token_file)
    if not tokens:
        tokens = [t.strip() for t in os.environ.get("NBCHAT_TOKEN", "").split(",") if t.strip()]
    return tokens


def _options(args: argparse.Namespace) -> _ServeOptions:
    """Check the serve options together; an :class:`AuthSetupError` says what is wrong
    and what to do."""
    tokens = _tokens(args)
    if not tokens and not is_loopback(args.host) and not args.insecure:
        raise AuthSetupError(
            f"refusing to listen on {args.host} without a token: anyone who can reach that "
            "address could use this gateway and the provider keys it holds. Give tokens "
            "with --token-file FILE (or --token, or $NBCHAT_TOKEN), listen on 127.0.0.1, "
            "or add --insecure if every client of that network is trusted"
        )
    if args.keyfile is not None and args.certfile is None:
        raise AuthSetupError("--keyfile needs --certfile (the certificate it belongs to)")
    if not args.drain_s >= 0:
        raise AuthSetupError("--drain-s must be a number of seconds, 0 or more")
    if not 0 <= args.delta_window_ms <= MAX_DELTA_WINDOW_MS:  # also refuses nan
        raise AuthSetupError(
            f"--delta-window-ms must be from 0 to {MAX_DELTA_WINDOW_MS:g} (milliseconds a "
            "reply's text may wait to go with more)"
        )
    widest = widest_delta_window_ms(args.delta_window_ms, args.delta_window_max_ms)
    if not args.delta_window_ms <= widest <= MAX_DELTA_WINDOW_MS:  # also refuses nan
        raise AuthSetupError(
            f"--delta-window-max-ms must be from --delta-window-ms ({args.delta_window_ms:g}) "
            f"to {MAX_DELTA_WINDOW_MS:g}"
        )
    store = None if args.store == "memory" else args.store
    if store is not None and not store.startswith(("redis://", "rediss://", "unix://")):
        raise AuthSetupError(
            f"--store must be 'memory' or a Redis URL (redis://host:6379/0, rediss://..., "
            f"unix:///path/redis.sock), not {RedisStore.describe(store)!r}"
        )
    context = server_ssl_context(args.certfile, args.keyfile) if args.certfile else None
    if tokens and context is None and not is_loopback(args.host):
        log.warning(
            "tokens will travel unencrypted to %s: give --certfile/--keyfile, or put a TLS "
            "proxy in front",
            args.host,
        )
    limits = GatewayLimits(
        sessions=args.max_sessions,
        replies_per_session=args.replies_per_session,
        session_idle_s=args.session_idle_s,
        frames_per_s=args.frames_per_s,
        max_frame_bytes=args.max_frame_bytes,
        delta_window_s=args.delta_window_ms / 1000,
        delta_window_max_s=widest / 1000,
    )
    return _ServeOptions(
        host=args.host,
        port=args.port,
        tokens=tokens,
        limits=limits,
        config=args.config,
        allow_origins=list(args.allow_origin or []),
        ssl_context=context,
        drain_s=args.drain_s,
        store=store,
    )


def freeze_startup_heap() -> None:
    """Move everything alive now (the modules, the providers' SDKs: about 240,000
    objects) out of the garbage collector's reach. A full collection walked them all,
    about 170 ms on the 2-core machine, stopping every session at once; what a served
    gateway allocates later is still collected."""
    gc.collect()
    gc.freeze()


async def _serve(options: _ServeOptions) -> None:
    offer = await load_offer(options.config, os.environ)
    store = None
    if options.store is not None:
        store = RedisStore(options.store, limits=LogLimits(), idle_s=options.limits.session_idle_s)
        if not await store.ping():
            # Serve anyway: /healthz says "store down" and clients hear
            # store_unavailable until Redis answers.
            log.warning(
                "the session store (%s) does not answer yet; serving once it does",
                RedisStore.describe(options.store),
            )
    gateway = Gateway(
        store=store,
        models=offer.models,
        token=options.tokens,
        limits=options.limits,
        default_model=offer.default,
        notice=offer.notice,
        discovery_error=offer.discovery_error,
        ssl_context=options.ssl_context,
        allow_origins=options.allow_origins,
    )
    await gateway.start(options.host, options.port)
    freeze_startup_heap()
    # One line on stdout says where to connect; scripts and tests read it.
    print(f"nbchat gateway listening on {gateway.url(options.host)}", flush=True)
    print(f"nbchat gateway models: {', '.join(offer.models)} (default {offer.default})", flush=True)
    where = RedisStore.describe(options.store) if options.store else "memory (this process)"
    print(f"nbchat gateway sessions: {where}", flush=True)
    signals = 0
    first = asyncio.Event()
    again = asyncio.Event()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        (first if signals == 1 else again).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await first.wait()
    print(
        f"nbchat gateway draining: no new connections; replies in flight go on for up to "
        f"{options.drain_s:g} s (signal again to exit now)",
        file=sys.stderr,
        flush=True,
    )
    drain = asyncio.create_task(gateway.drain(options.drain_s))
    hurry = asyncio.create_task(again.wait())
    await asyncio.wait([drain, hurry], return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    if not drain.done():
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await gateway.close()
    else:
        drain.result()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            options = _options(args)
            asyncio.run(_serve(options))
        except (ConfigError, AuthSetupError) as exc:
            print(f"nbchat serve: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"nbchat serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
