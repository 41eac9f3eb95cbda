"""FL_Server, a thin driver: configure, then run a round driver (:mod:`pyfed.server.engine`).
Connections are the :class:`~pyfed.server.gateway.Gateway`'s job (one thread each); history,
TensorBoard, checkpoints and progress lines are callbacks (:mod:`pyfed.callbacks`)."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigurationError, StorageError
from ..models import as_adapter
from ..safe_text import single_component
from ..strategy import FedAvg, Strategy
from ..tracking.history import History
from ..tracking.hooks import ServerCallback
from ..tracking.logs import RUN_MARKER, discard_run_dir, launch_tensorboard, tensorboard_line
from ..wire import auth
from ..wire.compression import Downlink, validate_codec, wire_layout
from ..wire.pacing import MIN_UPLOAD_RATE, UPLOAD_STALL_TIMEOUT, UploadPace
from ..wire.protocol import DEFAULT_MAX_MESSAGE_BYTES
from ..wire.spec import spec_hash
from ..wire.transport import BufferPool, server_ssl_context
from . import ending
from .announce import announce, welcome
from .builtins import with_builtins
from .checkpoint import remove_orphaned_temporaries
from .checkpointer import Checkpointer
from .async_engine import AsyncVersions
from .engine import SyncRounds
from .secure_round import largest_upload
from .evaluation import test_global_model
from .gateway import Gateway
from .options import check_server_options, prepare_centralized_evaluation
from .run_folder import load_resume_checkpoint, open_run_folder
from .stopping import StopSignals, describe

logger = logging.getLogger("pyfed")


class FL_Server:  # noqa: N801  (PyFed 0.0.x's public name)
    """The federated server.

    ``FL_Server(curr_model, num_clients, rounds, port=54321, multi_system=False, **options)``

    Options (keyword only, all optional):
        strategy: a :class:`pyfed.strategy.Strategy` (default FedAvg).
        host: address to bind; default 127.0.0.1, or every interface with ``multi_system=True``.
        logdir: TensorBoard root (default ``pyfed_logs``); run_name: this run's folder name.
        launch_tensorboard: start TensorBoard in the background after training and print its URL.
        verbose: 1 prints one progress line per round (default), 0 is silent.
        test_data: ``(x, y)`` evaluated after every round (``loss``/``metrics`` if the model is
            not compiled); or a strategy's ``evaluate_fn``.
        wait_timeout: seconds to wait for ``num_clients`` to connect (default: forever).
        round_timeout: seconds a round may take; at the deadline it closes if at least the
            strategy's ``min_fit_clients`` answered, else it fails naming who was missing.
            ``on_fit_config_fn`` may return ``{"round_timeout": s}`` to change it per round.
        round_retries: times a round with too few usable updates runs again (default 3).
        progress_interval: seconds between "waiting for ..." lines (default 10).
        checkpoint_dir: where the per-round checkpoint goes (default: the run folder).
        resume: continue from the last checkpoint (in ``checkpoint_dir``, else the newest of
            run ``run_name``, whose folder is reused, else the newest under ``logdir``).
        token / token_file: shared secret (else $PYFED_TOKEN) for a mutual HMAC challenge.
        ssl_certfile, ssl_keyfile: serve over TLS.
        handshake_timeout: seconds a new connection has for its whole handshake (default 10).
        max_connections: open connections at most, more are refused (default: what the
            open-file limit leaves room for, see pyfed.server.fd_limits).
        max_message_bytes: cap on a received body (default 4 GiB).
        min_upload_rate, upload_stall_timeout: a result must be whole within
            ``upload_stall_timeout + size / min_upload_rate`` s once begun (default 5 s + size /
            256 KiB/s), and may not pause longer than ``upload_stall_timeout`` (pyfed.wire.pacing).
        max_examples: cap on a client's declared ``num_examples``, its weight (default 10**9);
            a strategy's ``max_update_norm`` bounds the update itself.
        buffer_pool_size: receive buffers shared by all connections (default 2).
        compression: ``"fp16"`` or ``"int8"`` (deltas, a scale per tensor) both ways.
        callbacks: :class:`pyfed.callbacks.ServerCallback` objects. History, TensorBoard, the
            Checkpointer and (``verbose=1``) the ProgressPrinter come first; an instance of one
            of their classes replaces it.
        hparams: more settings for TensorBoard's HParams tab, e.g. ``{"lr": 0.005}`` (the
            server knows the strategy, clients, rounds, compression and epochs).
    """

    def __init__(self, curr_model: Any, num_clients: int, rounds: int, port: int = 54321,
                 multi_system: bool = False, *, strategy: Strategy | None = None,
                 host: str | None = None, logdir: str | os.PathLike = "pyfed_logs",
                 run_name: str | None = None, launch_tensorboard: bool = False,
                 tensorboard_port: int = 6006, verbose: int = 1,
                 test_data: tuple | None = None, loss: Any = None, metrics: Any = None,
                 wait_timeout: float | None = None, round_timeout: float | None = None,
                 progress_interval: float = 10.0, checkpoint_dir: str | os.PathLike | None = None,
                 resume: bool = False, token: str | bytes | None = None,
                 token_file: str | os.PathLike | None = None, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, handshake_timeout: float = 10.0,
                 max_connections: int | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_examples: int = 10**9, buffer_pool_size: int = 2,
                 compression: str | None = None, round_retries: int = 3,
                 min_upload_rate: float = MIN_UPLOAD_RATE,
                 upload_stall_timeout: float = UPLOAD_STALL_TIMEOUT,
                 hparams: dict | None = None, callbacks: Iterable[ServerCallback] | None = None):
        check_server_options(num_clients=num_clients, rounds=rounds, port=port,
                             max_connections=max_connections, round_timeout=round_timeout,
                             round_retries=round_retries, progress_interval=progress_interval)
        self.curr_model, self.adapter = curr_model, as_adapter(curr_model)
        self.num_clients, self.rounds, self.port = num_clients, rounds, port
        self.multi_system, self.host = multi_system, host or ("0.0.0.0" if multi_system else "127.0.0.1")
        self.strategy = strategy or FedAvg()
        self.logdir = Path(logdir)
        # Kept as the user wrote it ("lr 0.1" stays "lr 0.1"), but one folder: "a/b" or ".."
        # would nest or escape the logdir (a client would also refuse it in WELCOME).
        self.run_name = (single_component(run_name, "run_name", ConfigurationError)
                         if run_name is not None else None)
        self.launch_tensorboard, self.tensorboard_port = launch_tensorboard, tensorboard_port
        self.verbose, self.wait_timeout, self.round_timeout = verbose, wait_timeout, round_timeout
        self.round_retries, self.progress_interval = round_retries, progress_interval
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume, self.max_examples = resume, max_examples
        self.codec = validate_codec(compression)
        if getattr(self.strategy, "secure", False) and self.codec != "none":
            raise ConfigurationError(
                f"compression={compression!r} cannot be used with SecureAggregation: a masked "
                "update is uniform on its ring, so nothing compresses it, and the server must "
                "sum it exactly; leave compression unset")
        # The official global model is what clients decode (server-side error feedback).
        self.downlink = Downlink(self.codec) if self.codec != "none" else None
        self.hparams = dict(hparams or {})
        self.callbacks = with_builtins(callbacks, verbose)
        self.history: History = self.callbacks.find(History)
        self.test_data = tuple(test_data) if test_data is not None else None
        prepare_centralized_evaluation(self, loss, metrics)
        self.spec = self.adapter.spec()
        self.spec_hash = spec_hash(self.spec)
        # What a FIT_RESULT must carry: checked on its header, and the size of every buffer.
        uplink = wire_layout(self.codec, self.spec)
        self.gateway = Gateway(
            host=self.host, port=port, welcome=lambda name: welcome(self, name), spec=self.spec,
            spec_hash=self.spec_hash,
            pool=BufferPool(buffer_pool_size, max_nbytes=largest_upload(self.strategy, uplink.body_nbytes, self.spec)),
            layout=uplink, upload_pace=UploadPace(min_upload_rate, upload_stall_timeout),
            token=auth.resolve_token(token, token_file),
            ssl_context=server_ssl_context(ssl_certfile, ssl_keyfile) if ssl_certfile else None,
            handshake_timeout=handshake_timeout, max_connections=max_connections,
            max_message_bytes=max_message_bytes)
        self.run_dir: Path | None = None
        self.run_id = uuid.uuid4().hex
        self.tensorboard_process = None  # set by launch_tensorboard=True; it outlives train()
        self.final_model_path: Path | None = None
        self.print_logs_line = True  # FL_Experiment's parent says it instead, after its test
        self.first_round = 1
        self.resumed_round: int | None = None  # a continued run's first round (TensorBoard purge)
        self.stage = "before round 1 started"  # what the server was doing, for the stop message
        self.stop_signals = StopSignals()
        self.completed = self._began = self._shut_down = False

    def start(self) -> None:
        """Listen and accept in the background (``train`` calls this if you have not)."""
        if self.run_dir is not None:
            return
        resumed = load_resume_checkpoint(self) if self.resume else None
        if resumed is not None:
            self.first_round = resumed[0].server_round + 1
        folder = open_run_folder(self, resumed)
        try:
            remove_orphaned_temporaries(self.checkpoint_dir or folder.path)
            try:
                (folder.path / RUN_MARKER).write_text(self.run_id)
            except OSError as exc:
                raise StorageError(f"cannot write to the run folder {folder.path}: "
                                   f"{exc.strerror or exc}") from None
            self.resumed_round = self.first_round if folder.continued else None
            self.run_dir = folder.path  # before accepting: WELCOME names the run
            self.port = self.gateway.start()
        except BaseException:
            self.run_dir = None
            if folder.created:  # a run that never started (its port taken, say) leaves no folder
                discard_run_dir(folder.path)
            raise
        announce(self)

    def train(self) -> History:
        """Wait for ``num_clients``, run the rounds, send FINISH; return the history.

        Ctrl-C (or SIGTERM) abandons the round, keeps the last checkpoint (finishing one being
        written), flushes TensorBoard, tells the clients, and exits with status 130 and one
        line naming the signal and the last saved round."""
        self.stop_signals.install()
        try:
            self.start()
            try:
                self.stage = f"while waiting for clients, before round {self.first_round} started"
                self._began = True
                self.callbacks.on_train_begin(self)
                self.gateway.wait_for(max(self.num_clients, self.min_clients("min_available_clients")),
                                      self.wait_timeout, self.say, self.progress_interval)
                connected = sorted(self.gateway.snapshot())
                self.say(f"{len(connected)} clients connected: {', '.join(connected)}")
                asynchronous = getattr(self.strategy, "asynchronous", False)
                (AsyncVersions(self) if asynchronous else SyncRounds(self)).run()
                self.stage = "after the last round, while saving the final model"
                ending.complete(self)
                self.completed = True
            except KeyboardInterrupt as stop:
                ending.stop_clients(self, f"the server was stopped ({describe(stop)})")
                self._shutdown()  # before the message: TensorBoard is flushed when it is printed
                print(f"PyFed server stopped by {describe(stop)} {self.stage}; "
                      f"{self.resume_hint()}", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except BaseException:
                ending.stop_clients(self, "the server failed")
                raise
            finally:
                self._shutdown()
        finally:
            self.stop_signals.restore()
        if self.launch_tensorboard:
            self.tensorboard_process = launch_tensorboard(self.logdir, self.tensorboard_port)
            self.say(tensorboard_line(self.tensorboard_port, self.tensorboard_process))
        return self.history

    def test(self, data, target, loss=None, *args, metrics=None, optimizer=None, lr=None,
             batch_size: int = 128) -> dict:
        """Evaluate the global model: ``test(data, target, loss, metrics)`` or PyFed's
        ``test(data, target, loss, optimizer, lr, metrics)``. Prints and returns the results
        (and writes them to TensorBoard's ``server/final``)."""
        return test_global_model(self, data, target, loss, *args, metrics=metrics,
                                 optimizer=optimizer, lr=lr, batch_size=batch_size)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def say(self, line: str) -> None:  # a status line: the pyfed logger and the printer
        logger.debug(line)
        self.callbacks.on_status(self, line, False)

    def warn(self, line: str) -> None:  # the printer shows it on stderr if logging is not set up
        logger.warning(line)
        self.callbacks.on_status(self, line, True)

    def min_clients(self, attribute: str) -> int:
        """The strategy's ``min_fit_clients``/``min_available_clients`` (1 if it has none)."""
        return int(getattr(self.strategy, attribute, 1))

    def resume_hint(self) -> str:
        checkpointer = self.callbacks.find(Checkpointer)
        return "no checkpoint is written" if checkpointer is None else checkpointer.resume_hint(self)

    def _shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            if self._began:
                self.callbacks.on_train_end(self, self.history)
            self.gateway.stop()

