"""The ``nbchat`` command: ``nbchat serve`` runs a gateway on its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .gateway import Gateway
from .gateway.config import ConfigError, load_offer
from .gateway.limits import GatewayLimits

__all__ = ["main"]


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
        "identity (default: $NBCHAT_TOKEN, comma-separated; none if unset)",
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
        "--max-frame-bytes",
        type=int,
        default=defaults.max_frame_bytes,
        help="larger frames close the link with 1009 (default %(default)s)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


async def _serve(
    host: str, port: int, tokens: list[str], limits: GatewayLimits, config: str | None
) -> None:
    offer = await load_offer(config, os.environ)
    gateway = Gateway(
        models=offer.models,
        token=tokens,
        limits=limits,
        default_model=offer.default,
        notice=offer.notice,
        discovery_error=offer.discovery_error,
    )
    await gateway.start(host, port)
    # One line on stdout says where to connect; scripts and tests read it.
    print(f"nbchat gateway listening on {gateway.url(host)}", flush=True)
    print(f"nbchat gateway models: {', '.join(offer.models)} (default {offer.default})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            limits = GatewayLimits(
                sessions=args.max_sessions,
                replies_per_session=args.replies_per_session,
                session_idle_s=args.session_idle_s,
                frames_per_s=args.frames_per_s,
                max_frame_bytes=args.max_frame_bytes,
            )
            tokens = args.token or [
                t for t in os.environ.get("NBCHAT_TOKEN", "").split(",") if t.strip()
            ]
            asyncio.run(_serve(args.host, args.port, tokens, limits, args.config))
        except ConfigError as exc:
            print(f"nbchat serve: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"nbchat serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
