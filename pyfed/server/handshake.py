"""The server's side of the PyFed handshake: HELLO, the token's challenge, the model check,
then WELCOME; a refusal is an ERROR with a machine-readable code."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from ..deadline import Deadline
from ..errors import PyFedError
from ..safe_text import printable
from ..wire import auth, messages
from ..wire.protocol import VERSION, FrameLimits
from ..wire.spec import first_difference, spec_from_json
from ..wire.transport import Channel
from .session import ClientSession

logger = logging.getLogger("pyfed")

MAX_NAME_LENGTH = 128


class Refused(PyFedError):
    """A handshake that ends with an ERROR to the peer; ``code`` is machine-readable. (The
    server's side of the refusal; the client raises HandshakeError or a subclass.)"""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ServerHandshake:
    """The handshake half of :class:`~pyfed.server.gateway.Gateway`, which owns the settings it
    reads (token, spec, limits) and the registry it enters a session in (``_register``,
    ``_drop``)."""

    def _handshake(self, channel: Channel, deadline: Deadline) -> ClientSession | None:
        hello = channel.receive(deadline=deadline)  # the state table allows HELLO (or ERROR)
        if not isinstance(hello, messages.Hello):
            logger.warning("%s ended the handshake before HELLO: %s", channel.peer,
                           printable(getattr(hello, "reason", hello.KIND.name)))
            return None
        name = hello.client_name
        try:
            self._check_hello(hello)
            if self.token is not None:
                self._authenticate(channel, hello, deadline)
            # Only now: an unauthenticated peer must not learn the model's shapes, nor who is
            # connected from where (the duplicate-name check below).
            self._check_model(hello)
            welcome = self.welcome(name)  # before registering: a failure here leaves no trace
            session = ClientSession(name, channel, self.pool, evaluates=hello.evaluates,
                                    layout=self.layout, pace=self.upload_pace)
            secret = self._register(session, hello.reconnect_secret)
        except Refused as refusal:
            # %r: a name comes from the network and must not be able to forge log lines
            logger.warning("refused %r from %s: %s", name[:40], channel.peer, refusal.reason)
            with contextlib.suppress(PyFedError):
                channel.send(messages.Error(reason=refusal.reason, code=refusal.code))
            return None
        try:
            channel.send(dataclasses.replace(welcome, reconnect_secret=secret))
        except BaseException:
            self._drop(session)
            raise
        channel.limits = FrameLimits(max_body_bytes=self.max_message_bytes)
        logger.info("%s joined from %s", name if name.isidentifier() else repr(name), channel.peer)
        with self.changed:
            self.changed.notify_all()
        return session

    def _check_hello(self, hello: messages.Hello) -> None:
        """What may be answered before authentication: nothing about the model or the clients."""
        name = hello.client_name
        if hello.protocol_version != VERSION:
            raise Refused("version", f"protocol version {hello.protocol_version} is not "
                                     f"supported; the server speaks {VERSION}")
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise Refused("bad_name", f"client name must be 1-{MAX_NAME_LENGTH} printable "
                                      f"characters; received {name[:40]!r}")

    def _check_model(self, hello: messages.Hello) -> None:
        if hello.spec_hash is not None and hello.spec_hash != self.spec_hash:
            detail = ""
            if hello.spec is not None:
                try:
                    detail = "; first difference: " + printable(
                        first_difference(self.spec, spec_from_json(hello.spec)), 400)
                except (TypeError, ValueError):
                    detail = "; the client's spec could not be read"
            raise Refused("model_mismatch",
                          f"model mismatch: the client's model has spec hash "
                          f"{printable(hello.spec_hash)}, the server trains {self.spec_hash}{detail}")

    def _authenticate(self, channel: Channel, hello: messages.Hello, deadline: Deadline) -> None:
        if not auth.valid_nonce(hello.nonce):
            logger.warning("authentication failed from %s: the client sent no token", channel.peer)
            raise Refused("authentication_failed",
                          "authentication required: this server needs a token (token=..., "
                          f"${auth.TOKEN_ENVIRONMENT_VARIABLE} or --token-file)")
        server_nonce = auth.new_nonce()
        channel.send(messages.Challenge(nonce=server_nonce,
                                        proof=auth.server_proof(self.token, hello.nonce, server_nonce)))
        answer = channel.receive(deadline=deadline)
        if not isinstance(answer, messages.Auth):  # the state table leaves only ERROR here
            logger.warning("authentication failed from %s: the client gave up (%s)",
                           channel.peer, printable(answer.reason))
            raise PyFedError(f"{channel.peer} ended the handshake: {printable(answer.reason)}")
        expected = auth.client_proof(self.token, hello.nonce, server_nonce, hello.client_name)
        if not auth.proofs_match(expected, answer.proof):
            logger.warning("authentication failed from %s", channel.peer)
            raise Refused("authentication_failed", "authentication failed: wrong token")
