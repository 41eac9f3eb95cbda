"""Shared-token authentication: a mutual HMAC-SHA256 challenge, as multiprocessing.connection's.

Both sides prove they hold the token without sending it, and each proof covers both nonces, so
neither can be replayed on another connection::

    client -> HELLO(nonce_c)
    server -> CHALLENGE(nonce_s, proof_s = HMAC(token, "server" | nonce_c | nonce_s))
    client    checks proof_s (the server knows the token), then
    client -> AUTH(proof_c = HMAC(token, "client" | nonce_c | nonce_s | name))
    server    checks proof_c with hmac.compare_digest, then WELCOME

Pure standard library (hmac, hashlib, secrets); the sockets stay in the server and client.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .errors import ConfigurationError

TOKEN_ENVIRONMENT_VARIABLE = "PYFED_TOKEN"
NONCE_BYTES = 32


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


def valid_nonce(nonce) -> bool:
    return isinstance(nonce, str) and len(nonce) == 2 * NONCE_BYTES and all(
        c in "0123456789abcdef" for c in nonce)


def resolve_token(token: str | bytes | None = None,
                  token_file: str | os.PathLike | None = None) -> bytes | None:
    """The token from the argument, else ``token_file``, else $PYFED_TOKEN; None if none is set."""
    if token is None and token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigurationError(f"token file {token_file} is empty")
    if token is None:
        token = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
    if token is None:
        return None
    token = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(token) < 8:
        raise ConfigurationError(f"token must be at least 8 bytes; received {len(token)}")
    return token
