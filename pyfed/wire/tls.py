"""TLS with the standard library's ssl: contexts and a handshake bounded by a timeout."""

from __future__ import annotations

import socket
import ssl

from ..errors import NetworkError, TLSError


def server_ssl_context(certfile, keyfile=None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot load the TLS certificate {certfile} / key {keyfile}: {exc}") from None
    return context


def client_ssl_context(cafile=None) -> ssl.SSLContext:
    """Verifies the server's certificate against ``cafile`` (or the system's CAs) and name."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot load the TLS CA file {cafile}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_handshake(sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                  server_hostname: str | None = None, timeout: float = 10.0) -> ssl.SSLSocket:
    """Wrap and handshake within ``timeout``; runs on the connection's own thread, never the
    accept loop, so a silent peer cannot stall other connections."""
    sock.settimeout(timeout)
    try:
        wrapped = context.wrap_socket(sock, server_side=server_side,
                                      server_hostname=None if server_side else server_hostname,
                                      do_handshake_on_connect=False)
        wrapped.do_handshake()
        return wrapped
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(f"TLS: the server's certificate was not trusted "
                       f"({exc.verify_message}); pass the right ssl_cafile") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TLSError(f"TLS handshake failed: {reason}") from None
