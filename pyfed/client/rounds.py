"""The client's rounds: FIT, EVALUATE and FINISH as they arrive, each checked against what was
agreed at WELCOME (client_checks) before it touches the model, and the server's notices heard
before every reply."""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from ..errors import (ConnectionClosed, NetworkError, ProtocolError, PyFedError, RemoteError,
                      ServerStopped)
from ..models import FitOutcome
from ..privacy.dp.client_clipping import clip_update
from ..safe_text import printable
from ..tracking.logs import RunLogger
from ..wire import compression, messages
from ..wire.transport import Channel, has_pending_input
from .checks import check_round, check_weights, training_config
from .secure_rounds import SecureParticipation, secure_request

logger = logging.getLogger("pyfed")


class ClientRounds:
    """Serving rounds, for :class:`~pyfed.client.fl_client.FL_Client`, which owns the model
    adapter, the data and the codec state they use."""

    def _incoming_weights(self, message) -> list:
        if self.codec == "none":
            return list(message.weights)
        return compression.decode(self.codec, message.weights, message.config.get("compression"),
                                  self._spec, self._reference)

    def _serve(self, channel: Channel, defaults: dict, tb: RunLogger | None) -> None:
        while True:
            message = channel.receive(timeout=self.timeout)
            if isinstance(message, messages.Fit):
                what = f"{self.name}: the server's FIT"
                check_round(message.round, self._rounds, what)
                what = f"{what} for round {message.round}"
                config = {**defaults, **training_config(message.config, what),
                          "round": message.round}
                config.pop("compression", None)
                config.pop("secagg", None)  # the secure round's, not the adapter's
                secure = secure_request(message.config, what)
                clip_norm = config.pop("dp_clip_norm", None)  # not the model's business
                weights = self._incoming_weights(message)
                check_weights(weights, self._spec, what)
                # A change to clip is measured from the weights received, copied: an adapter
                # may train in place on the arrays it was given.
                clipping = clip_norm is not None or (secure or {}).get("vector") == "clipped_delta"
                received = [np.array(w) for w in weights] if clipping else weights
                if self.codec != "none":  # the base of this round's deltas, both ways
                    self._reference = [np.array(w) for w in weights]
                self.adapter.set_weights(weights)
                self._say(self._round_line(message.round, config))
                # Only a Keras adapter takes callbacks (FL_Client checked): others keep fit's
                # three arguments, as a user's own ModelAdapter defines it.
                extra = {"callbacks": self.fit_callbacks} if self.fit_callbacks else {}
                outcome: FitOutcome = self.adapter.fit(self.data, self.target, config, **extra)
                update = self.adapter.get_weights()
                if secure is not None:  # SecureAggregation: only a masked vector leaves
                    reply = self._secure_step(self.secure_round.masked, message, secure, update,
                                              received, outcome)
                    self._reply(channel, reply)
                    if not isinstance(reply, messages.SecAggMasked):
                        continue  # refused: it did not contribute
                else:
                    if clip_norm is not None:  # differential privacy: clip the change to C
                        update, _ = clip_update(update, received, clip_norm)
                    if self.codec != "none":
                        update, _ = self._feedback.encode(self.codec, update, self._reference)
                    self._reply(channel, messages.FitResult(
                        round=message.round, weights=tuple(update),
                        num_examples=int(outcome.num_examples), metrics=outcome.metrics,
                        history=outcome.history, first_epoch=outcome.first_epoch))
                self.rounds_trained += 1
                if tb is not None and outcome.history:
                    tb.client_history(self.name, outcome.history, outcome.first_epoch)
            elif isinstance(message, messages.Evaluate):
                what = f"{self.name}: the server's EVALUATE"
                check_round(message.round, self._rounds, what)
                what = f"{what} for round {message.round}"
                if self.val_data is None:
                    raise ProtocolError(f"{what} asks this client to evaluate, but it holds no "
                                        "evaluation data (and said so in HELLO)")
                config = {**defaults, **training_config(message.config, what),
                          "round": message.round}
                weights = self._incoming_weights(message)
                check_weights(weights, self._spec, what)
                self.adapter.set_weights(weights)
                loss, count, metrics = self.adapter.evaluate(*self.val_data, config)
                self._reply(channel, messages.EvaluateResult(
                    round=message.round, num_examples=int(count), loss=float(loss),
                    metrics=metrics))
            elif isinstance(message, messages.SecAggSetup):
                self._reply(channel, self._secure_step(self.secure_round.keys, message))
            elif isinstance(message, messages.SecAggPeers):
                self._reply(channel, self._secure_step(self.secure_round.shares, message))
            elif isinstance(message, messages.SecAggUnmask):
                self._reply(channel, self._secure_step(self.secure_round.reveal, message))
            elif isinstance(message, messages.Finish):
                check_weights(list(message.weights), self._spec, f"{self.name}: the server's FINISH")
                self.adapter.set_weights(message.weights)
                self.final_reason = printable(message.reason)
                logger.info("%s: training finished (%s)", self.name, self.final_reason)
                return
            elif isinstance(message, messages.Error):
                self._server_error(message)

    @property
    def secure_round(self) -> SecureParticipation:
        """The secure round in progress (SecureAggregation's steps), made on first use."""
        if getattr(self, "_secure_round", None) is None:
            self._secure_round = SecureParticipation(self.name, self._rounds)
        return self._secure_round

    def _secure_step(self, step, *args) -> messages.Message:
        """A secure round's reply, or the non-fatal ERROR that refuses the step (the server
        excludes this client from that round; the connection stays)."""
        try:
            return step(*args)
        except (PyFedError, ValueError) as exc:  # a step does no I/O: never a network error
            return self.secure_round.refusal(exc)

    def _server_error(self, message: messages.Error) -> None:
        reason = printable(message.reason)  # from the network: no forged lines
        if message.code == "server_stopped":
            raise ServerStopped(f"the server is stopping: {reason}", reason)
        if message.fatal:
            raise RemoteError(f"{self.name}: the server ended the session: {reason}")
        logger.warning("%s: %s", self.name, reason)

    def _reply(self, channel: Channel, result: messages.Message) -> None:
        """Send a result; but first hear what the server said while this client was busy
        (e.g. "stopping"): that must end the client now, not after a failed send and a series
        of reconnection attempts. A send that fails anyway may still have that notice behind it."""
        self._read_notice(channel)
        try:
            channel.send(result)
        except NetworkError:
            with contextlib.suppress(ConnectionClosed, ProtocolError):
                self._read_notice(channel)  # raises ServerStopped if that is why
            raise

    def _read_notice(self, channel: Channel) -> None:
        """Read what the server sent while this client was busy (the state table leaves only
        ERROR or PING) and act on it."""
        while _readable(channel):
            message = channel.receive(timeout=10)
            if isinstance(message, messages.Error):
                self._server_error(message)

    def _round_line(self, server_round: int, config: dict) -> str:
        epochs = config.get("epochs", 1)
        line = (f"{self.name}: round {server_round}/{self._rounds} · training {epochs} "
                f"epoch{'s' if epochs != 1 else ''}")
        try:
            return f"{line} on {len(self.data)} examples"
        except TypeError:  # no data (an echo model) or a dataset without a length
            return line


def _readable(channel: Channel) -> bool:
    """Has the server sent something (or hung up)? Without blocking. A socket closed under
    us answers no: the send that follows says so."""
    return has_pending_input(channel.sock, if_closed=False)
