"""Who may talk to a gateway: bearer tokens, browser origins, loopback binds, TLS.

Pure helpers used by the server's handshake check and by ``nbchat serve``. A token is
never written to a log line or an error message: errors name the file and line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "AuthSetupError",
    "SessionNotYours",
    "install_log_redaction",
    "is_loopback",
    "normalize_origin",
    "origin_refusal",
    "owner_of",
    "read_token_file",
    "server_ssl_context",
    "token_matches",
]

# Header lines websockets writes at DEBUG level that carry credentials.
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_REDACTED: Final = "[redacted]"


class AuthSetupError(Exception):
    """A problem with the serve command's auth or TLS options, said plainly."""


class SessionNotYours(Exception):
    """A hello named a session that another token opened."""


def read_token_file(path: str | Path) -> list[str]:
    """The tokens in ``path``: one a line, blank lines and lines starting with ``#``
    ignored. A missing, unreadable or empty file is an :class:`AuthSetupError`. Error
    messages name the line, never its content (it may be a token)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuthSetupError(f"token file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise AuthSetupError(f"cannot read token file {str(path)!r}: {reason}") from None
    tokens: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not all(33 <= ord(c) <= 126 for c in line):
            raise AuthSetupError(
                f"line {number} of token file {str(path)!r} is not a valid token: a token "
                "is printable ASCII without spaces (comments go on lines of their own, "
                "starting with #)"
            )
        tokens.append(line)
    if not tokens:
        raise AuthSetupError(
            f"token file {str(path)!r} holds no tokens (one a line; blank lines and "
            "lines starting with # are ignored)"
        )
    return tokens


def token_matches(authorization: str, tokens: Iterable[str]) -> bool:
    """Whether an ``Authorization`` header value carries one of ``tokens``. Every
    token is compared, each in constant time, so timing says nothing of which one (or
    how much of one, or how long it is) matched."""
    # Digests, so the comparison takes the same time whatever the lengths.
    given = hashlib.sha256(authorization.encode()).digest()
    matched = False
    for token in tokens:
        expected = hashlib.sha256(f"Bearer {token}".encode()).digest()
        matched |= hmac.compare_digest(given, expected)
    return matched


def owner_of(authorization: str) -> str:
    """The identity a session is bound to: a hash of the credentials that opened it
    (never the token itself, which is not kept)."""
    return hashlib.sha256(authorization.encode()).hexdigest()


def normalize_origin(origin: str) -> str:
    """An origin as browsers send it (``scheme://host[:port]``), for comparison:
    lower case, without a trailing slash."""
    return origin.strip().rstrip("/").lower()


def origin_refusal(origin: str | None, allowed: Sequence[str]) -> str | None:
    """Why a handshake's ``Origin`` is refused, or None when it may connect.

    No ``Origin`` header: not a browser (browsers always send one on a WebSocket
    handshake), allowed. With ``allowed`` empty, no origin is checked (the gateway's
    behaviour before ``--allow-origin`` existed)."""
    if origin is None or not allowed:
        return None
    if normalize_origin(origin) in {normalize_origin(a) for a in allowed}:
        return None
    shown = origin if len(origin) <= 200 and origin.isprintable() else repr(origin[:200])
    return (
        f"origin {shown} is not allowed to connect to this gateway; "
        "its admin can allow it with nbchat serve --allow-origin"
    )


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only: ``localhost``,
    127.0.0.0/8 or ``::1``. Anything else (``0.0.0.0``, ``::``, a name, an interface
    address) may be reachable from other machines."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def server_ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its key (``keyfile``
    None: the key is in ``certfile``). TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise AuthSetupError(f"cannot read {exc.filename or certfile!r}: no such file") from None
    except ssl.SSLError as exc:
        raise AuthSetupError(
            f"cannot use certificate {certfile!r} with key {keyfile or certfile!r}: "
            f"{exc.reason or exc} (both must be PEM files, the key matching the certificate "
            "and not protected by a passphrase)"
        ) from None
    except OSError as exc:
        raise AuthSetupError(
            f"cannot read certificate {certfile!r} or key {keyfile!r}: {exc.strerror or exc}"
        ) from None
    return context


class _RedactCredentials(logging.Filter):
    """Replaces the value of credential headers in websockets' DEBUG header lines
    (``< Authorization: Bearer ...``) so ``--log-level debug`` shows no token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 2
            and isinstance(record.msg, str)
            and record.msg.endswith("%s: %s")
            and str(args[0]).lower() in _SECRET_HEADERS
        ):
            record.args = (args[0], _REDACTED)
        return True


_REDACTION: Final = _RedactCredentials()


def install_log_redaction() -> None:
    """Redact credentials in websockets' server and client loggers (idempotent)."""
    for name in ("websockets.server", "websockets.client"):
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)
