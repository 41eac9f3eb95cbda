"""Shared-token authentication: a mutual HMAC-SHA256 challenge, as multiprocessing.connection's.

Both sides prove they hold the token without sending it, and each proof covers both nonces, so
neither can be replayed on another connection::

    client -> HELLO(nonce_c)
    server -> CHALLENGE(nonce_s, proof_s = HMAC(token, "server" | nonce_c | nonce_s))
    client    checks proof_s (the server knows the token), then
    client -> AUTH(proof_c = HMAC(token, "client" | nonce_c | nonce_s | name))
    server    checks proof_c with hmac.compare_digest, then WELCOME

Pure standard library (hmac, hashlib, secrets); the sockets stay in the server and client.

The token is the only secret: a short one can be guessed offline from one recorded handshake
(the HMAC is cheap to compute), so tokens under ``STRONG_TOKEN_BYTES`` get a warning and
``pyfed token`` prints a strong one. The reconnect secret in WELCOME is a second, per-name
secret: it lets a client take its own name back from a connection the server still believes
alive, and nobody else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from ..errors import ConfigurationError

logger = logging.getLogger("pyfed")

TOKEN_ENVIRONMENT_VARIABLE = "PYFED_TOKEN"
NONCE_BYTES = 32
MIN_TOKEN_BYTES = 8  # refused below this
STRONG_TOKEN_BYTES = 16  # warned below this
NEW_TOKEN_BYTES = 32  # what `pyfed token` draws
RECONNECT_SECRET_BYTES = 32


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def _mac(token: bytes, *parts: str) -> str:
    return hmac.new(token, "\0".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()


def server_proof(token: bytes, client_nonce: str, server_nonce: str) -> str:
    return _mac(token, "pyfed-server", client_nonce, server_nonce)


def client_proof(token: bytes, client_nonce: str, server_nonce: str, client_name: str) -> str:
    return _mac(token, "pyfed-client", client_nonce, server_nonce, client_name)


def proofs_match(expected: str, received: str) -> bool:
    return hmac.compare_digest(expected.encode("ascii", "replace"), received.encode("ascii", "replace"))


def new_token() -> str:
    """A strong shared token: 32 random bytes as 43 URL-safe characters (fine in a shell)."""
    return secrets.token_urlsafe(NEW_TOKEN_BYTES)


def write_token_file(path: str | os.PathLike, token: str) -> None:
    """Write ``token`` to a new file readable by its owner only (0600). Never overwrites: an
    existing token file is some federation's token."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(f"token file {path} already exists; remove it first or "
                                 "choose another --out") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot write token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # whatever the umask said
        file.write(token + "\n")


def weak_token_warning(token: bytes | None) -> str | None:
    """Advice for a token short enough to guess offline, or None if it is fine (or absent)."""
    if token is None or len(token) >= STRONG_TOKEN_BYTES:
        return None
    return (f"the token is {len(token)} bytes long: one recorded handshake lets an attacker "
            f"guess a short token offline; use at least {STRONG_TOKEN_BYTES} random bytes "
            "(`pyfed token` prints a strong one)")


def new_reconnect_secret() -> str:
    return secrets.token_urlsafe(RECONNECT_SECRET_BYTES)


def reconnect_secret_matches(expected: str | None, presented) -> bool:
    """Constant time; any str is comparable (compare_digest takes only ASCII str, so bytes)."""
    if not expected or not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))


def valid_nonce(nonce) -> bool:
    return isinstance(nonce, str) and len(nonce) == 2 * NONCE_BYTES and all(
        c in "0123456789abcdef" for c in nonce)


def resolve_token(token: str | bytes | None = None,
                  token_file: str | os.PathLike | None = None) -> bytes | None:
    """The token from the argument, else ``token_file``, else $PYFED_TOKEN; None if none is set.

    A set but empty $PYFED_TOKEN is an error, not "no authentication": an unset variable in a
    script (``PYFED_TOKEN=$TOKEN``) would otherwise silently open the federation to anyone.
    """
    if token is None and token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigurationError(f"token file {token_file} is empty")
    if token is None:
        token = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE)
        if token is not None and not token.strip():
            raise ConfigurationError(
                f"${TOKEN_ENVIRONMENT_VARIABLE} is set but empty: set it to the federation's "
                "token (`pyfed token` makes one), or unset it to run without authentication")
    if token is None:
        return None
    token = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(token) < MIN_TOKEN_BYTES:
        raise ConfigurationError(
            f"token must be at least {MIN_TOKEN_BYTES} bytes; received {len(token)}")
    advice = weak_token_warning(token)
    if advice is not None:
        logger.warning(advice)
    return token
