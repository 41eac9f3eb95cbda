"""FL_Client: connects (retrying until the server is up), trains each round, sends weights back.

The data never leaves this process: only weights, example counts and metric histories travel.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..wire import messages
from ..wire import auth, compression
from .checks import check_welcome
from .connection import ClientHandshake
from ..models import defaults as shared_defaults  # train() has a local named defaults
from ..wire.compression import validate_codec
from ..deadline import Deadline
from ..errors import (ConfigurationError, PyFedError, ModelMismatchError, NetworkError, TLSError,
                     ProtocolError, RemoteError, ServerStopped)
from ..tracking.logs import RUN_MARKER, RunLogger
from ..models import as_adapter
from ..models.keras_adapter import check_fit_callbacks
from ..wire.protocol import DEFAULT_MAX_MESSAGE_BYTES
from ..safe_text import path_component, printable
from .rounds import ClientRounds
from ..wire.spec import spec_hash
from ..wire.transport import Channel, client_ssl_context

logger = logging.getLogger("pyfed")


class FL_Client(ClientHandshake, ClientRounds):  # noqa: N801  (PyFed 0.0.x's public name)
    """A federated client holding private ``data`` and ``target``.

    ``FL_Client(name, data, target, server_ip="127.0.0.1", server_port=54321, **options)``

    Options (keyword only, all optional):
        model: bring your own model (Keras, or a :class:`pyfed.models.ModelAdapter`); its spec
            hash is checked at the handshake. By default the server's architecture is used.
        connect_timeout: seconds to keep retrying until the server is up (default 60).
        verbose: Keras' ``fit`` verbosity ("auto", 0, 1, 2); default "auto".
        logdir: where this machine's TensorBoard logs go (default ``pyfed_logs``). A client on
            the server's machine leaves its curves to the server, so none is written twice.
        timeout: seconds to wait for the server's next message (default: no limit).
        max_message_bytes: cap on a received body (default 4 GiB).
        validation_split: fraction of ``data`` (the last part, as in Keras) held out to evaluate
            the global model when the server asks (federated evaluation).
        val_data: ``(x, y)`` to use for that instead.
        max_retries, retry_interval: after losing the server mid-training (a network fault, the
            server restarting with ``resume=True``), reconnect up to ``max_retries`` times in a
            row, waiting ``retry_interval`` seconds, doubling each try (default 5 and 1 s).
        wait_for_resume: when the server says it is stopping (Ctrl-C, SIGTERM), wait up to
            ``connect_timeout`` seconds for it to come back (``resume=True``) and carry on;
            by default the client stops at once with ServerStopped ("the server stopped: ...").
        token / token_file: the federation's shared secret (else $PYFED_TOKEN).
        ssl_cafile: connect over TLS, trusting this CA (``use_ssl=True`` uses the system's CAs).
        fit_callbacks: Keras callbacks passed to the Keras model's ``fit`` every round; they
            see each round's epochs, numbered across rounds. Keras models only.
    """

    def __init__(self, name: str, data: Any, target: Any, server_ip: str = "127.0.0.1",
                 server_port: int = 54321, *, model: Any = None, connect_timeout: float = 60.0,
                 verbose: Any = "auto", logdir: str | os.PathLike = "pyfed_logs",
                 timeout: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 validation_split: float = 0.0, val_data: tuple | None = None,
                 max_retries: int = 5, retry_interval: float = 1.0,
                 token: str | bytes | None = None, token_file: str | os.PathLike | None = None,
                 ssl_cafile: str | None = None, use_ssl: bool | None = None,
                 wait_for_resume: bool = False, fit_callbacks: Sequence[Any] | None = None):
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty string; received {name!r}")
        if data is not None and target is not None and len(data) != len(target):
            raise ConfigurationError(
                f"data and target must have the same length; received {len(data)} and {len(target)}")
        self.name = name
        self.data, self.target, self.val_data = _hold_out(data, target, validation_split, val_data)
        self.server_ip = server_ip
        self.server_port = int(server_port)
        self.adapter = as_adapter(model) if model is not None else None
        self.model = model
        # Checked again once the server's model is known, when the client brings none.
        self.fit_callbacks = (list(fit_callbacks or []) if self.adapter is None else
                              check_fit_callbacks(fit_callbacks, self.adapter, f"{name}: "))
        self.connect_timeout = connect_timeout
        self.verbose = verbose
        self.logdir = Path(logdir)
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.wait_for_resume = bool(wait_for_resume)
        self.token = auth.resolve_token(token, token_file)
        self.ssl_context = client_ssl_context(ssl_cafile) if (use_ssl or ssl_cafile) else None
        self.rounds_trained = 0
        self.reconnections = 0
        self.codec = "none"
        self._reference = None
        self._feedback = compression.ErrorFeedback()
        self._spec = None
        self._server_proved = False
        # From the server's WELCOME: presented when reconnecting, so this process (and only
        # this one) can take its name back from a connection the server still thinks alive.
        self._reconnect_secret: str | None = None
        self._rounds = 0  # the run's rounds, from WELCOME
        self._data_checked = False
        self.final_reason: str | None = None

    # ------------------------------------------------------------------------------------------

    def train(self, epochs: int = shared_defaults.EPOCHS,
              batch_size: int = shared_defaults.BATCH_SIZE,
              lr: float | None = None, loss: Any = None, optimizer: Any = None,
              metrics: Any = None):
        """Take part in every round until the server says FINISH. Returns the final model.

        Defaults are PyFed's one set (:mod:`pyfed.models.defaults`, as ``pyfed client``): Adam at
        lr 0.005 (``lr=None`` keeps the rate of an optimizer instance you configured), and the
        sparse categorical cross-entropy with accuracy unless you compiled your own model.

        A lost connection is retried (``max_retries``, ``retry_interval``); refusals (a wrong
        token, a different model, a name another live client has) are not, and raise at once. Neither is a
        server that says it is stopping, unless ``wait_for_resume``. What the server sends is
        checked (client_checks) and this client's data against the model, before round 1; a
        failure raises one PyFedError, after telling the server why.
        """
        lr = shared_defaults.learning_rate(optimizer, lr)
        if loss is None and getattr(self.model, "loss", None) is None:  # nothing compiled
            loss = shared_defaults.LOSS
            metrics = list(shared_defaults.METRICS) if metrics is None else metrics
        defaults = {"epochs": epochs, "batch_size": batch_size, "verbose": self.verbose}
        tb = None
        failures_in_a_row = 0
        resume_deadline: Deadline | None = None  # set while waiting for a stopped server to return
        stop_reason = ""
        channel = self._connect(self.connect_timeout)  # the first time, wait for the server
        try:
            while True:
                try:
                    if channel is None:
                        if resume_deadline is not None:
                            channel = self._connect(resume_deadline.remaining())
                        else:
                            channel = self._connect(timeout=1.0, announce=False)
                        self.reconnections += 1
                    welcome = self._handshake(channel)
                    check_welcome(welcome, self.name)
                    self._rounds = welcome.rounds
                    self._prepare_model(welcome, loss, optimizer, lr, metrics)
                    self._check_data()
                    self._start_compression(welcome)
                    self._prepare_secure_rounds(welcome)
                    if tb is None:
                        tb = self._local_logger(welcome)
                    failures_in_a_row = 0
                    resume_deadline = None
                    self._serve(channel, defaults, tb)
                    return self.model
                except TLSError:
                    raise
                except ServerStopped as exc:
                    channel = self._close(channel)
                    stop_reason = printable(exc.reason)
                    if not self.wait_for_resume or (resume_deadline is not None
                                                    and resume_deadline.expired()):
                        raise ServerStopped(f"{self.name}: the server stopped: {stop_reason}",
                                            exc.reason) from None
                    if resume_deadline is None:
                        resume_deadline = Deadline(self.connect_timeout)
                        self._say(f"{self.name}: the server stopped ({stop_reason}); waiting up "
                                  f"to {self.connect_timeout:g} s for it to resume",
                                  logging.WARNING)
                    else:  # reached it while it was still going down: give it a moment
                        time.sleep(resume_deadline.timeout(1.0))
                except NetworkError as exc:  # includes ConnectionClosed and ServerUnreachable
                    channel = self._close(channel)
                    if resume_deadline is not None:
                        if resume_deadline.expired():
                            raise ServerStopped(
                                f"{self.name}: the server stopped ({stop_reason}) and did not "
                                f"come back within {self.connect_timeout:g} s "
                                f"({getattr(exc, 'cause', exc)})", stop_reason) from None
                        time.sleep(resume_deadline.timeout(1.0))
                        continue
                    cause = getattr(exc, "cause", exc)
                    failures_in_a_row += 1
                    if failures_in_a_row > self.max_retries:
                        raise NetworkError(
                            f"{self.name}: lost the server at {self.server_ip}:{self.server_port} "
                            f"({cause}) and could not get back after {self.max_retries} tries") from None
                    delay = min(self.retry_interval * 2 ** (failures_in_a_row - 1), 30.0)
                    self._say(f"{self.name}: lost the server at {self.server_ip}:"
                              f"{self.server_port} ({cause}); reconnecting in {delay:.1f} s "
                              f"(try {failures_in_a_row} of {self.max_retries})", logging.WARNING)
                    time.sleep(delay)
                except RemoteError:
                    raise  # the server ended the session itself: nothing to tell it
                except Exception as exc:
                    self._tell_server(channel, exc)
                    raise
        finally:
            if channel is not None:
                channel.close()
            if tb is not None:
                tb.close()

    def _say(self, line: str, quiet_level: int = logging.DEBUG) -> None:
        """A line for the user (retrying, rounds) on stdout, as the server prints its own; with
        ``verbose=0`` it only goes to the log, at ``quiet_level``."""
        if self.verbose != 0:
            logger.debug(line)
            print(line, flush=True)
        else:
            logger.log(quiet_level, line)

    @staticmethod
    def _close(channel: Channel | None) -> None:
        if channel is not None:
            channel.close()
        return None

    def _tell_server(self, channel: Channel | None, exc: Exception) -> None:
        """Before leaving on an error, say why: the server logs it (escaped) under our name."""
        if channel is None:
            return
        reason = str(exc) if isinstance(exc, PyFedError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(PyFedError, OSError):  # the conversation may be over already
            channel.send(messages.Error(reason=printable(reason, 1000), code="client_error"))

    # -- after WELCOME, before round 1 (connecting and the handshake: ClientHandshake; the
    #    rounds: ClientRounds) ------------------------------------------------------------------

    def _prepare_model(self, welcome: messages.Welcome, loss, optimizer, lr, metrics) -> None:
        if self.adapter is not None and not getattr(self.adapter, "initialized", True):
            self.adapter.initialize_like(welcome.model)
            if spec_hash(self.adapter.spec()) != welcome.spec_hash:
                raise ModelMismatchError(
                    f"{self.name}: this client's model has a different architecture from the "
                    f"server's (spec hash {printable(welcome.spec_hash[:16])}...)")
        if self.adapter is None:
            from ..models import adapter_from_description

            try:
                self.adapter = adapter_from_description(welcome.model)
            except (ConfigurationError, ModelMismatchError) as exc:
                raise type(exc)(f"{self.name}: {exc}") from None
            self.model = getattr(self.adapter, "model", self.adapter)
            if spec_hash(self.adapter.spec()) != welcome.spec_hash:
                raise ModelMismatchError(
                    f"{self.name}: the rebuilt model's spec hash differs from the server's "
                    f"({printable(welcome.spec_hash[:16])}...)")
        check_fit_callbacks(self.fit_callbacks, self.adapter, f"{self.name}: ")
        if hasattr(self.adapter, "compile"):
            self.adapter.compile(loss=loss, optimizer=optimizer, lr=lr, metrics=metrics)

    def _check_data(self) -> None:
        """Once the model is known and before round 1: does this client's data fit it? Wrong
        data would otherwise fail deep inside ``fit`` in round 1, with a long traceback."""
        check = getattr(self.adapter, "check_data", None)
        if self._data_checked or check is None:
            return
        sets = [("data", self.data, self.target)]
        if self.val_data is not None:
            sets.append(("evaluation data", *self.val_data))
        for what, data, target in sets:
            if data is None:
                continue
            try:
                check(data, target)
            except ConfigurationError as exc:
                detail = str(exc) if what == "data" else f"{what}: {exc}"
                raise ConfigurationError(f"{self.name}: {detail}") from None
        self._data_checked = True

    def _start_compression(self, welcome: messages.Welcome) -> None:
        """The server picks the codec per run; a new connection starts from a full model."""
        try:
            self.codec = validate_codec(welcome.config.get("compression"))
        except ConfigurationError as exc:  # it came from the network
            raise ProtocolError(f"the server asked for {exc}") from None
        self._reference = None
        self._feedback.reset()
        self._spec = self.adapter.spec()

    def _prepare_secure_rounds(self, welcome: messages.Welcome) -> None:
        """A server running SecureAggregation says so in WELCOME: its rounds come as SecAgg's
        stages. Load the crypto now, so a client without it says so before any round."""
        self._secure_round = None  # a new connection starts with no secure round in progress
        if welcome.config.get("secure_aggregation"):
            try:
                importlib.import_module("pyfed.privacy.secagg.protocol")
            except ImportError as exc:
                raise ConfigurationError(
                    f"{self.name}: the server runs secure aggregation, which needs the "
                    f"'cryptography' package ({exc}); pip install cryptography") from None

    def _local_logger(self, welcome: messages.Welcome) -> RunLogger | None:
        """This client's own curves on its own machine, unless the server writes them here."""
        if _same_machine(welcome.config.get("run_dir"), welcome.run_id):
            return None
        # The run name came from the network: one safe component, inside this logdir.
        run_dir = self.logdir / path_component(welcome.run_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        return RunLogger(run_dir)


def _same_machine(run_dir: str | None, run_id: str) -> bool:
    """Is the server's run folder on this machine (its marker holds this run's id)?

    The path comes from the server: read only a small regular file, never a FIFO or a device
    that could block or flood this client."""
    if not run_dir:
        return False
    marker = Path(run_dir) / RUN_MARKER
    try:
        if not marker.is_file():
            return False
        with open(marker, "rb") as file:
            return file.read(256).decode("utf-8", "replace") == run_id
    except (OSError, ValueError):
        return False


def _hold_out(data, target, validation_split: float, val_data):
    """Split off the evaluation data: ``val_data`` as given, or Keras' ``validation_split``."""
    if val_data is not None:
        if len(val_data) != 2 or len(val_data[0]) != len(val_data[1]):
            raise ConfigurationError("val_data must be (x, y) of the same length")
        return data, target, tuple(val_data)
    if not 0.0 <= validation_split < 1.0:
        raise ConfigurationError(f"validation_split must be in [0, 1); received {validation_split}")
    if validation_split == 0.0 or data is None:
        return data, target, None
    keep = len(data) - int(len(data) * validation_split)
    if keep < 1 or keep == len(data):
        raise ConfigurationError(
            f"validation_split={validation_split} leaves no training or no validation data "
            f"out of {len(data)} examples")
    return data[:keep], target[:keep], (data[keep:], target[keep:])
