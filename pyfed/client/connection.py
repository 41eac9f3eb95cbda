"""The client's way in: connecting (retrying until the server is up) and the handshake (HELLO,
the token's challenge in both directions, then WELCOME or a refusal raised as its own error)."""

from __future__ import annotations

import contextlib
import logging
import time

from ..deadline import Deadline
from ..errors import (AuthenticationError, DuplicateNameError, HandshakeError, ModelMismatchError,
                      NetworkError, ProtocolError, PyFedError, ServerStopped, ServerUnreachable,
                      TLSError)
from ..safe_text import printable
from ..wire import auth, messages
from ..wire.protocol import VERSION, FrameLimits, Role
from ..wire.spec import spec_hash, spec_to_json
from ..wire.transport import Channel, connect, tls_handshake

# How often a client that waits for its server says so (B5: not one line, then silence).
RETRY_NOTICE_SECONDS = 5.0


class ClientHandshake:
    """Connecting and the handshake, for :class:`~pyfed.client.fl_client.FL_Client`, which owns
    the settings they read (address, TLS, token, model) and the reconnect secret they keep."""

    def _connect(self, timeout: float, announce: bool = True) -> Channel:
        """Connect, retrying until ``timeout``; says so every few seconds while it waits."""
        deadline = Deadline(timeout)
        delay = 0.1
        next_notice = time.monotonic()
        while True:
            try:
                sock = connect(self.server_ip, self.server_port, timeout=10)
                if self.ssl_context is not None:
                    sock = tls_handshake(sock, self.ssl_context, server_side=False,
                                         server_hostname=self.server_ip, timeout=30)
                # No body may arrive before WELCOME (the header may: WELCOME carries the model JSON).
                return Channel(sock, Role.CLIENT, FrameLimits(max_body_bytes=0),
                               peer=f"server {self.server_ip}:{self.server_port}")
            except TLSError as exc:
                raise TLSError(f"{self.name}: {exc}") from None  # retrying will not help
            except NetworkError as exc:
                now = time.monotonic()
                remaining = deadline.remaining()
                if deadline.expired():
                    raise ServerUnreachable(
                        f"{self.name}: could not reach the PyFed server at {self.server_ip}:"
                        f"{self.server_port} within {timeout:g} s ({exc}). Is the "
                        "server running, and are server_ip and server_port right?",
                        cause=str(exc)) from None
                if announce and now >= next_notice:
                    self._say(f"{self.name}: waiting for the server at {self.server_ip}:"
                              f"{self.server_port} ({exc}); retrying for {remaining:.0f} s more",
                              logging.INFO)
                    next_notice = now + RETRY_NOTICE_SECONDS
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)

    def _handshake(self, channel: Channel) -> messages.Welcome:
        # An unfitted estimator brought by the client takes the server's shapes after WELCOME.
        ready = self.adapter is not None and getattr(self.adapter, "initialized", True)
        nonce = auth.new_nonce() if self.token is not None else None
        channel.send(messages.Hello(
            client_name=self.name, protocol_version=VERSION,
            spec_hash=spec_hash(self.adapter.spec()) if ready else None,
            spec=spec_to_json(self.adapter.spec()) if ready else None,
            evaluates=self.val_data is not None, nonce=nonce,
            reconnect_secret=self._reconnect_secret))
        reply = channel.receive(timeout=60)
        if isinstance(reply, messages.Challenge):
            reply = self._answer_challenge(channel, nonce, reply)
        if isinstance(reply, messages.Error):
            where = f"the server at {self.server_ip}:{self.server_port}"
            reason = printable(reply.reason, 1000)  # from the network: one line, escaped
            if reply.code == "server_stopped":
                raise ServerStopped(f"{where} is stopping: {reason}")
            if reply.code == "server_full":
                raise NetworkError(f"{where} is full: {reason}")
            error = {"model_mismatch": ModelMismatchError,
                     "authentication_failed": AuthenticationError,
                     "duplicate_name": DuplicateNameError}.get(reply.code, HandshakeError)
            raise error(f"{self.name}: {where} refused the connection: {reason}")
        if not isinstance(reply, messages.Welcome):
            raise ProtocolError(f"expected WELCOME, received {reply.KIND.name}")
        if self.token is not None and nonce is not None and not self._server_proved:
            raise AuthenticationError(
                f"{self.name}: the server at {self.server_ip}:{self.server_port} did not "
                "authenticate itself, but this client has a token; refusing to train with it")
        channel.limits = FrameLimits(max_body_bytes=self.max_message_bytes)
        if reply.reconnect_secret is not None:
            self._reconnect_secret = reply.reconnect_secret
        return reply

    def _answer_challenge(self, channel: Channel, nonce: str | None,
                          challenge: messages.Challenge):
        self._server_proved = False
        if self.token is None or nonce is None:
            raise AuthenticationError(
                f"{self.name}: the server at {self.server_ip}:{self.server_port} requires a token; "
                f"pass token=..., token_file=... or set ${auth.TOKEN_ENVIRONMENT_VARIABLE}")
        if not auth.valid_nonce(challenge.nonce) or not auth.proofs_match(
                auth.server_proof(self.token, nonce, challenge.nonce), challenge.proof):
            with contextlib.suppress(PyFedError):  # so the server can log who failed, and why
                channel.send(messages.Error(reason="the server's proof did not verify",
                                            code="authentication_failed"))
            raise AuthenticationError(
                f"{self.name}: the server at {self.server_ip}:{self.server_port} failed to prove "
                "it holds the token (the tokens differ, or this is not your server)")
        self._server_proved = True
        channel.send(messages.Auth(proof=auth.client_proof(self.token, nonce, challenge.nonce,
                                                           self.name)))
        return channel.receive(timeout=60)
