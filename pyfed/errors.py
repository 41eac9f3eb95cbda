"""One exception hierarchy for all of PyFed.

Every error a user can see derives from :class:`PyFedError`, so ``except PyFedError`` catches
anything the framework raises on purpose. Low-level exceptions (``OSError``, ``ssl.SSLError``,
``json.JSONDecodeError``) are mapped to these once, at the boundary where they happen
(transport for sockets, protocol for bytes), as httpcore does.
"""


class PyFedError(Exception):
    """Base class of every error PyFed raises on purpose."""


class ConfigurationError(PyFedError, ValueError):
    """An argument or option has a value PyFed cannot use."""


class ProtocolError(PyFedError):
    """Bytes or messages that break the wire format or the conversation's state table."""


class InvalidValue(ProtocolError):
    """A well-framed message with a field of the wrong type, out of range or of the wrong shape.

    The frame itself is intact, so the receiver can refuse just this message (and tell the
    peer why, with a non-fatal ERROR) and keep the connection where the state table allows."""


class NetworkError(PyFedError):
    """A socket failed: refused, reset, timed out, or closed by the peer."""


class ConnectionClosed(NetworkError):
    """The peer closed the connection (cleanly or mid-frame)."""


class ServerStopped(NetworkError):
    """The server said it is going away (Ctrl-C, a failure); it may come back (resume)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = message if reason is None else reason


class ServerUnreachable(NetworkError):
    """Connecting kept failing until the deadline; ``cause`` is the last socket error."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


class TLSError(NetworkError):
    """The TLS handshake failed (an untrusted certificate, a plain-TCP peer): retrying won't help."""


class AuthenticationError(PyFedError):
    """The shared-token challenge failed in either direction."""


class HandshakeError(PyFedError):
    """The peer refused this connection during the handshake (e.g. duplicate name)."""


class DuplicateNameError(HandshakeError):
    """Another live client already has this name; choose another (retrying will not help)."""


class ModelMismatchError(HandshakeError):
    """The client's model does not have the architecture the server trains."""


class RemoteError(PyFedError):
    """The peer sent an ERROR message; its reason is the message of this exception."""


class UpdateRejected(PyFedError):
    """One client's result is refused (a bad value, a bound it breaks); the reason goes back to
    that client in a non-fatal ERROR, and the round goes on without it."""


class RoundError(PyFedError):
    """A federated round could not complete (too few clients answered)."""


class DatasetUnavailableError(PyFedError):
    """A dataset could not be loaded (offline, or the local file is missing)."""


class StorageError(PyFedError):
    """A file or folder the run needs could not be written (a full disk, no permission...)."""


class StoredUpdateError(PyFedError):
    """A file in a serverless federation's shared folder is not a usable update for this model
    (not a PyFed frame, truncated, a checksum mismatch, another model's spec, bad values): the
    node skips it with a warning. Such a file is only ever parsed as data, never loaded as code."""
