"""FL_Server: runs the rounds, aggregates, evaluates, checkpoints and logs.

Connections are the :class:`~pyfed.server.gateway.Gateway`'s job (one thread each, for the server's
whole life); this module is the caller's thread running :meth:`FL_Server.train`, which posts
jobs to the clients' sessions and waits on each round's collector, with a deadline if set.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..wire import auth, compression, messages
from ..wire.compression import Downlink, validate_codec, wire_layout
from .checkpoint import (CHECKPOINT_FILE, Checkpoint, find_checkpoint, load_checkpoint,
                         remove_orphaned_temporaries, save_checkpoint)
from ..errors import ConfigurationError, RoundError, StorageError
from .gateway import Gateway
from ..tracking.history import History
from ..tracking.logs import (RUN_MARKER, RunLogger, discard_run_dir, format_metrics, launch_tensorboard,
                   logs_line, new_run_dir, round_line)
from ..models import as_adapter, is_keras_model
from ..wire.pacing import MIN_UPLOAD_RATE, UPLOAD_STALL_TIMEOUT, UploadPace
from ..wire.protocol import DEFAULT_MAX_MESSAGE_BYTES
from .collect import Collector, EvaluateCollector, FitCollector
from ..safe_text import printable, single_component
from .session import FinishJob, RequestJob
from ..wire.spec import spec_hash, spec_to_json
from .stopping import StopSignals, describe
from ..strategy import FedAvg, Strategy
from ..tracking.tb_plugins import RunBoard, run_hparams
from ..wire.transport import BufferPool, local_addresses, server_ssl_context

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
        test_data: ``(x, y)`` for centralized evaluation after every round (with ``loss``/
            ``metrics`` if the model is not compiled). A strategy's ``evaluate_fn`` also works.
        wait_timeout: seconds to wait for ``num_clients`` to connect (default: forever).
        round_timeout: seconds a round may take; at the deadline it closes if at least the
            strategy's ``min_fit_clients`` answered, else it fails naming who was missing.
            ``on_fit_config_fn`` may return ``{"round_timeout": s}`` to change it per round.
        round_retries: times a failed round (too few usable updates) is run again, with the same
            round number and global model, before the run fails (default 3).
        progress_interval: seconds between "waiting for ..." lines (default 10).
        checkpoint_dir: where the per-round checkpoint goes (default: the run folder).
        resume: continue from the last checkpoint (in ``checkpoint_dir``; else the newest of the
            run named ``run_name``, in its folder, which is reused even without a checkpoint;
            else the newest under ``logdir``).
        token / token_file: shared secret (else $PYFED_TOKEN) for a mutual HMAC challenge.
        ssl_certfile, ssl_keyfile: serve over TLS.
        handshake_timeout: seconds a new connection has for its whole handshake (default 10).
        max_connections: open connections at most; more are refused at once. Default: what the
            open-file limit leaves room for, (RLIMIT_NOFILE - open - 64) // 2 (see pyfed.wire.limits).
        max_message_bytes: cap on a received body (default 4 GiB).
        min_upload_rate, upload_stall_timeout: once a result has begun to arrive, it must be
            whole within ``upload_stall_timeout + size / min_upload_rate`` seconds (default
            5 s + size / 256 KiB/s), and a pause longer than ``upload_stall_timeout`` while it
            holds a receive buffer drops it; see pyfed.wire.pacing.
        max_examples: cap on a client's declared ``num_examples`` (default 10**9), i.e. on its
            weight in the mean. The count cannot be checked, so this bounds a client's influence
            only weakly; a strategy's ``max_update_norm`` bounds the update itself.
        buffer_pool_size: receive buffers shared by all connections (default 2).
        compression: ``"fp16"`` or ``"int8"`` for the weights in both directions (default none);
            int8 sends each tensor's delta from the last global model with its own scale.
        hparams: more settings for TensorBoard's HParams tab, e.g. ``{"lr": 0.005, "partition":
            "dirichlet"}`` (the server itself knows the strategy, clients, rounds, compression,
            and the epochs the clients report; FL_Experiment passes its training arguments).
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
                 max_connections: int | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_examples: int = 10**9, buffer_pool_size: int = 2,
                 compression: str | None = None, round_retries: int = 3,
                 min_upload_rate: float = MIN_UPLOAD_RATE,
                 upload_stall_timeout: float = UPLOAD_STALL_TIMEOUT,
                 hparams: dict | None = None):
        for label, value, low in (("num_clients", num_clients, 1), ("rounds", rounds, 1),
                                  ("max_connections", max_connections, 1)):
            if label == "max_connections" and value is None:
                continue  # derived from the open-file limit
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigurationError(f"{label} must be a positive integer; received {value!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be in [0, 65535]; received {port!r}")
        if round_timeout is not None and round_timeout <= 0:
            raise ConfigurationError(f"round_timeout must be positive; received {round_timeout}")
        if not isinstance(round_retries, int) or isinstance(round_retries, bool) or round_retries < 0:
            raise ConfigurationError(f"round_retries must be an integer >= 0; received {round_retries!r}")
        if not isinstance(progress_interval, (int, float)) or not progress_interval > 0:
            # It paces the waiting lines: 0 would print one every few milliseconds.
            raise ConfigurationError(f"progress_interval must be a number of seconds > 0; "
                                     f"received {progress_interval!r}")
        self.curr_model = curr_model
        self.adapter = as_adapter(curr_model)
        self.num_clients = num_clients
        self.rounds = rounds
        self.port = port
        self.multi_system = multi_system
        self.host = host or ("0.0.0.0" if multi_system else "127.0.0.1")
        self.strategy = strategy or FedAvg()
        self.logdir = Path(logdir)
        # Kept as the user wrote it ("lr 0.1" stays "lr 0.1"), but one folder: "a/b" or ".."
        # would nest or escape the logdir (a client would also refuse it in WELCOME).
        self.run_name = (single_component(run_name, "run_name", ConfigurationError)
                         if run_name is not None else None)
        self.launch_tensorboard = launch_tensorboard
        self.tensorboard_port = tensorboard_port
        self.verbose = verbose
        self.wait_timeout = wait_timeout
        self.round_timeout = round_timeout
        self.round_retries = round_retries
        self.progress_interval = progress_interval
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = resume
        self.max_examples = max_examples
        self.codec = validate_codec(compression)
        # The official global model is what clients decode (server-side error feedback).
        self.downlink = Downlink(self.codec) if self.codec != "none" else None
        self.history = History()
        self.hparams = dict(hparams or {})
        self.board: RunBoard | None = None  # HParams, custom scalars, global/ curves
        self.test_data = tuple(test_data) if test_data is not None else None
        self._prepare_centralized_evaluation(loss, metrics)
        self._spec = self.adapter.spec()
        self._spec_hash = spec_hash(self._spec)
        # What a FIT_RESULT must carry: checked on its header, and the size of every buffer.
        uplink = wire_layout(self.codec, self._spec)
        self.gateway = Gateway(
            host=self.host, port=port, welcome=self._welcome, spec=self._spec,
            spec_hash=self._spec_hash,
            pool=BufferPool(buffer_pool_size, max_nbytes=uplink.body_nbytes),
            layout=uplink, upload_pace=UploadPace(min_upload_rate, upload_stall_timeout),
            token=auth.resolve_token(token, token_file),
            ssl_context=server_ssl_context(ssl_certfile, ssl_keyfile) if ssl_certfile else None,
            handshake_timeout=handshake_timeout, max_connections=max_connections,
            max_message_bytes=max_message_bytes)
        self.run_dir: Path | None = None
        self.run_id = uuid.uuid4().hex
        self.tb: RunLogger | None = None
        self.tensorboard_process = None  # set by launch_tensorboard=True; it outlives train()
        self.final_model_path: Path | None = None
        self.print_logs_line = True  # FL_Experiment's parent says it instead, after its test
        self._first_round = 1
        self._saved_round = 0  # the round the checkpoint on disk holds
        self._resume_path: Path | None = None
        self._published = None  # (round, wire, meta): a retried round resends, never republishes
        self._stage = "before round 1 started"  # for the stop message
        self._signals = StopSignals()
        self._shut_down = False

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and accept in the background (``train`` calls this if you have not)."""
        if self.run_dir is not None:
            return
        checkpoint = self._load_resume_checkpoint() if self.resume else None
        run_dir, created, continued = self._open_run_dir(checkpoint)
        try:
            remove_orphaned_temporaries(self.checkpoint_dir or run_dir)
            try:
                (run_dir / RUN_MARKER).write_text(self.run_id)
            except OSError as exc:
                raise StorageError(f"cannot write to the run folder {run_dir}: "
                                   f"{exc.strerror or exc}") from None
            # A continued run rewrites from its first round on: TensorBoard drops the old points.
            self.tb = RunLogger(run_dir, resumed_round=self._first_round if continued else None)
            self.run_dir = run_dir  # before accepting: WELCOME names the run
            self.port = self.gateway.start()
            self.board = RunBoard(self.tb.server, run_dir.name, run_hparams(
                self.strategy, self.num_clients, self.rounds, self.codec, self.hparams),
                client_history=self.tb.client_history)
            self.board.train_begin()
        except BaseException:
            self.run_dir = self.tb = None
            if created:  # a run that never started (its port taken, say) leaves no folder
                discard_run_dir(run_dir)
            raise
        self._announce()

    def train(self) -> History:
        """Wait for ``num_clients``, run the rounds, send FINISH; return the history.

        A round that ends with too few usable updates is run again, up to ``round_retries``
        times. Ctrl-C (or SIGTERM) abandons the current round, keeps the last checkpoint (one
        being written is finished first), flushes TensorBoard, tells the clients, and exits
        with status 130 and a one-line reason naming the signal and the last saved round.
        """
        self._signals.install()
        try:
            self.start()
            try:
                self._stage = f"while waiting for clients, before round {self._first_round} started"
                self.gateway.wait_for(max(self.num_clients, self._min("min_available_clients")),
                                      self.wait_timeout, self._say, self.progress_interval)
                connected = sorted(self.gateway.snapshot())
                self._say(f"{len(connected)} clients connected: {', '.join(connected)}")
                for server_round in range(self._first_round, self.rounds + 1):
                    self._stage = f"during round {server_round}"
                    self._run_round_with_retries(server_round)
                    self._stage = f"during round {server_round}, while saving its checkpoint"
                    self._checkpoint(server_round)
                self._stage = "after the last round, while saving the final model"
                self._complete()
                self.board.train_end(completed=True)
            except KeyboardInterrupt as stop:
                self._stop_clients(f"the server was stopped ({describe(stop)})")
                self._shutdown()  # before the message: TensorBoard is flushed when it is printed
                print(f"PyFed server stopped by {describe(stop)} {self._stage}; "
                      f"{self._resume_hint()}", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except BaseException:
                self._stop_clients("the server failed")
                raise
            finally:
                self._shutdown()
        finally:
            self._signals.restore()
        if self.verbose and self.print_logs_line:
            print(logs_line(self.run_dir, self.logdir), flush=True)
        if self.launch_tensorboard:
            self.tensorboard_process = launch_tensorboard(self.logdir, self.tensorboard_port)
        return self.history

    def test(self, data, target, loss=None, *args, metrics=None, optimizer=None, lr=None,
             batch_size: int = 128) -> dict:
        """Evaluate the global model: ``test(data, target, loss, metrics)`` or PyFed's
        ``test(data, target, loss, optimizer, lr, metrics)``. Prints and returns the results."""
        if len(args) == 1:
            metrics = args[0]
        elif len(args) == 3:
            optimizer, lr, metrics = args
        elif args:
            raise ConfigurationError(
                "test() takes (data, target, loss, metrics) or (data, target, loss, optimizer, lr, "
                f"metrics); received {2 + 1 + len(args)} positional arguments")
        if hasattr(self.adapter, "compile"):
            self.adapter.compile(loss=loss, optimizer=optimizer, lr=lr, metrics=metrics)
        test_loss, _, results = self.adapter.evaluate(data, target, {"batch_size": batch_size})
        results = {"loss": test_loss, **results}
        print("test · " + " · ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
        if self.board is not None:  # the final test: in TensorBoard (server/final) and HParams
            self.board.test_result(results, self.history.rounds[-1] if self.history.rounds else 0)
        return results

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------

    def _prepare_centralized_evaluation(self, loss, metrics) -> None:
        if self.test_data is None:
            return
        if len(self.test_data) != 2 or len(self.test_data[0]) != len(self.test_data[1]):
            raise ConfigurationError("test_data must be (x, y) of the same length")
        initialize = getattr(self.adapter, "initialize_from_data", None)
        if initialize is not None and not getattr(self.adapter, "initialized", True):
            initialize(*self.test_data)  # e.g. an unfitted scikit-learn estimator takes its shapes
        if is_keras_model(self.curr_model):
            if loss is None and not getattr(self.curr_model, "compiled", False):
                raise ConfigurationError(
                    "test_data needs a loss to evaluate with: compile the model or pass loss=")
            self.adapter.compile(loss=loss, metrics=metrics)

    def _welcome(self, name: str) -> messages.Welcome:
        return messages.Welcome(
            client_id=name, rounds=self.rounds, run_name=self.run_dir.name, run_id=self.run_id,
            model=self.adapter.describe(), spec_hash=self._spec_hash,
            config={"run_dir": str(self.run_dir.resolve()), "spec": spec_to_json(self._spec),
                    "compression": self.codec})

    def _announce(self) -> None:
        if self.multi_system:
            addresses = [a for a in local_addresses() if not a.startswith("127.")]
            self._say(f"PyFed server listening on port {self.port} on every interface; clients "
                      f"should use server_ip = "
                      f"{' or '.join(repr(a) for a in addresses) or '<this machine address>'}")
            if self.gateway.token is None:
                message = ("no token is set: any host on the network can join this federation "
                           f"(set token=..., ${auth.TOKEN_ENVIRONMENT_VARIABLE} or --token-file)")
                logger.warning(message)
                self._say("warning: " + message)
        else:
            self._say(f"PyFed server listening on {self.host}:{self.port}")
        advice = auth.weak_token_warning(self.gateway.token)  # resolve_token logged it already
        if advice is not None:
            self._say("warning: " + advice)

    def _say(self, line: str) -> None:
        logger.debug(line)
        if self.verbose:
            print(line, flush=True)

    def _warn(self, line: str) -> None:
        """A warning through the ``pyfed`` logger; printed to stderr as well when the
        application configured no logging (pyfed's NullHandler would swallow it)."""
        logger.warning(line)
        if self.verbose and not _logging_configured():
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def _min(self, attribute: str) -> int:
        return int(getattr(self.strategy, attribute, 1))

    # ------------------------------------------------------------------------------------------
    # Rounds
    # ------------------------------------------------------------------------------------------

    def _run_round_with_retries(self, server_round: int) -> None:
        """Run the round; one that fails for lack of usable updates runs again with the same
        number and global model (the strategy restarts its aggregate in ``begin``; the model
        changes only in ``finish``), up to ``round_retries`` times."""
        for attempt in itertools.count(1):
            try:
                self._run_round(server_round)
                return
            except RoundError as exc:
                if attempt > self.round_retries:
                    raise RoundError(f"{exc}; giving up after {attempt} attempt"
                                     f"{'s' if attempt > 1 else ''} "
                                     f"(round_retries={self.round_retries})") from None
                self._warn(f"{exc}; running round {server_round} again with the same global "
                           f"model (retry {attempt} of {self.round_retries})")

    def _run_round(self, server_round: int) -> None:
        self.gateway.wait_for(self._min("min_available_clients"), self.wait_timeout, self._say,
                              self.progress_interval)
        parameters = self.adapter.get_weights()
        if self.downlink is not None:
            # A retried round resends what it published: publishing again would move the global
            # model (error feedback) and the version the clients hold.
            if self._published is None or self._published[0] != server_round:
                self._published = (server_round, *self.downlink.publish(parameters))
            _, wire, meta = self._published
            parameters = list(self.downlink.model)
            self.adapter.set_weights(parameters)
        # Only idle clients: one still working on a round that closed at its deadline would
        # start this round late; it is sampled again as soon as it is free.
        sessions = self._idle_sessions()
        plan = self._plan(self.strategy.configure_fit(server_round, parameters, sorted(sessions)),
                          sessions)
        timeout = max((c["round_timeout"] for c in plan.values() if "round_timeout" in c),
                      default=self.round_timeout)
        decode = None
        if self.downlink is not None:
            reference = parameters
            decode = lambda arrays: compression.decode(self.codec, arrays, None, self._spec, reference)  # noqa: E731
        fit = FitCollector(server_round, set(plan), self.strategy, self._spec, self.max_examples,
                           on_history=functools.partial(self.board.client_history,
                                                        server_round=server_round),
                           decode=decode)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.strategy.begin(server_round, parameters)
        weights = tuple(parameters)
        for name, config in plan.items():
            version = None
            if self.downlink is not None:
                held = sessions[name].held_version
                current = (wire, meta)
                if meta["codec"] == "int8" and held != self.downlink.version - 1:
                    current = self.downlink.full()  # it lacks the base of this round's delta
                weights = tuple(current[0])
                config = {**config, "compression": current[1]}
                version = self.downlink.version
            sessions[name].post(RequestJob(fit, messages.Fit(round=server_round, weights=weights,
                                                             config=config), deadline, version))
        self._wait(fit, timeout, "training", deadline)
        for client, reason in sorted(fit.failures.items()):
            logger.warning("round %d: %s did not contribute: %s", server_round, client, reason)
        try:
            fit.require(self._min("min_fit_clients"))
        except RoundError:
            fit.close("the round failed")  # no late answer may fold into the retry's aggregate
            raise
        new_parameters, fit_metrics = self.strategy.finish()
        self.adapter.set_weights(new_parameters)

        test = self._evaluate_centralized(server_round, new_parameters)
        federated = self._evaluate_federated(server_round, new_parameters, sessions, timeout)
        seconds = time.monotonic() - fit.started
        bytes_in = fit.bytes_in + (federated[2] if federated else 0)
        bytes_out = fit.bytes_out + (federated[3] if federated else 0)
        sections = {"fit": fit_metrics}
        if test is not None:
            sections["test"] = {"loss": test[0], **test[1]}
        if federated is not None and federated[0] is not None:
            sections["eval"] = {"loss": federated[0], **federated[1]}
        counters = {"participants": len(fit.answered), "seconds": seconds,
                    "bytes_in": bytes_in, "bytes_out": bytes_out}
        self.history.record(server_round, {
            **{f"{section}_{k}": v for section, values in sections.items() for k, v in values.items()},
            **{("round_seconds" if k == "seconds" else k): v for k, v in counters.items()},
            "clients": sorted(fit.answered)})
        self.tb.server.scalars({
            **{f"{section}/{k}": v for section, values in sections.items() for k, v in values.items()},
            **{f"round/{k}": v for k, v in counters.items()}}, server_round)
        self.board.round_end(server_round, sections, plan.values())
        if self.verbose:
            extra = " · ".join(format_metrics(section, values)
                               for section, values in sections.items() if section != "fit")
            print(round_line(server_round, self.rounds, len(fit.answered), fit_metrics, seconds,
                             bytes_in, bytes_out, extra=extra), flush=True)

    def _idle_sessions(self) -> dict:
        """The idle clients, waiting (bounded by ``wait_timeout``) until there are enough, and
        saying every ``progress_interval`` s who is still busy."""
        needed = self._min("min_available_clients")
        limit = self.wait_timeout if self.wait_timeout is not None else self.round_timeout
        deadline = None if limit is None else time.monotonic() + limit
        next_line = time.monotonic() + self.progress_interval
        while True:
            sessions = self.gateway.snapshot(idle_only=True)
            if len(sessions) >= needed or (deadline is not None and time.monotonic() > deadline):
                return sessions
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + self.progress_interval
                busy = sorted(set(self.gateway.snapshot()) - set(sessions))
                shown = ", ".join(printable(name, 60) for name in busy[:10])
                more = f" and {len(busy) - 10} more" if len(busy) > 10 else ""
                self._say(f"waiting for clients to be free: {len(sessions)} of {needed} idle"
                          f"{f' (busy: {shown}{more})' if busy else ''} · "
                          f"{needed - len(sessions)} missing")
            time.sleep(0.05)

    def _wait(self, collector: Collector, timeout: float | None, doing: str,
              deadline: float | None = None) -> None:
        """Wait for the round, saying every ``progress_interval`` s whom it waits on."""
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            step = self.progress_interval if remaining is None else min(self.progress_interval, remaining)
            collector.wait(timeout=max(step, 0.0), mark_missing=False)
            pending = sorted(collector.pending)
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                collector.close(f"no answer within the round's {timeout:g} s deadline")
                return
            left = ("no deadline" if deadline is None
                    else f"{math.ceil(deadline - time.monotonic())} s left")
            self._say(f"round {collector.server_round}/{self.rounds} · {doing} · waiting for "
                      f"{', '.join(pending)} ({len(collector.answered)} of "
                      f"{len(collector.expected)} answered) · {left}")

    def _plan(self, plan: list[tuple[str, dict]], sessions: dict) -> dict[str, dict]:
        unknown = [name for name, _ in plan if name not in sessions]
        if unknown:
            logger.warning("strategy chose clients that are not connected: %s", unknown)
        return {name: dict(config) for name, config in plan if name in sessions}

    def _evaluate_centralized(self, server_round: int, parameters) -> tuple[float, dict] | None:
        result = self.strategy.evaluate(server_round, parameters)
        if result is None and self.test_data is not None:
            loss, _, metrics = self.adapter.evaluate(*self.test_data, {"batch_size": 256})
            result = (loss, metrics)
        return result

    def _evaluate_federated(self, server_round: int, parameters, sessions, timeout):
        """Clients with held-out data evaluate the new global model; weighted by examples."""
        capable = sorted(name for name, session in sessions.items() if session.evaluates)
        if not capable:
            return None
        plan = self._plan(self.strategy.configure_evaluate(server_round, parameters, capable),
                          sessions)
        if not plan:
            return None
        collector = EvaluateCollector(server_round, set(plan))
        deadline = None if timeout is None else time.monotonic() + timeout
        weights = tuple(parameters)
        if self.downlink is not None:  # evaluation needs no shared base: fp16 is stateless
            arrays, meta = compression.encode("fp16", parameters)
            weights = tuple(arrays)
            plan = {name: {**config, "compression": meta} for name, config in plan.items()}
        for name, config in plan.items():
            sessions[name].post(RequestJob(collector, messages.Evaluate(
                round=server_round, weights=weights, config=config), deadline))
        self._wait(collector, timeout, "evaluating", deadline)
        for client, reason in sorted(collector.failures.items()):
            logger.warning("round %d: %s did not evaluate: %s", server_round, client, reason)
        if not collector.results:
            return None
        loss, metrics = self.strategy.aggregate_evaluate(server_round, collector.results)
        return loss, metrics, collector.bytes_in, collector.bytes_out

    # ------------------------------------------------------------------------------------------
    # Checkpoints, the final model, stopping
    # ------------------------------------------------------------------------------------------

    def _checkpoint(self, server_round: int) -> None:
        """Save the round. A failed write (a full disk, no file descriptor left) costs this
        checkpoint, not the run: it is logged and the next round writes a whole one."""
        directory = self.checkpoint_dir or self.run_dir
        checkpoint = Checkpoint(
            server_round=server_round, weights=self.adapter.get_weights(),
            strategy_state=self.strategy.state_dict() if hasattr(self.strategy, "state_dict") else {},
            history=self.history.to_dict(), run_name=self.run_dir.name, spec_hash=self._spec_hash)
        with self._signals.deferred():  # a stop signal waits until the file is whole
            try:
                save_checkpoint(directory, checkpoint)
            except OSError as exc:
                self._warn(f"checkpoint for round {server_round} was not written to "
                           f"{directory / CHECKPOINT_FILE}: {exc.strerror or exc}; the run goes "
                           "on and the next round tries again")
                return
            self._saved_round = server_round

    def _load_resume_checkpoint(self) -> Checkpoint | None:
        path = find_checkpoint(self.logdir, self.run_name, self.checkpoint_dir)
        if path is None:
            run = f"of run {self.run_name!r} " if self.run_name and not self.checkpoint_dir else ""
            self._say(f"resume: no checkpoint {run}under {self.checkpoint_dir or self.logdir}; "
                      "starting from round 1")
            return None
        checkpoint = load_checkpoint(path)
        if checkpoint.spec_hash != self._spec_hash:
            raise ConfigurationError(
                f"checkpoint {path} is for a different model (spec hash {checkpoint.spec_hash[:16]}"
                f"..., this model {self._spec_hash[:16]}...)")
        self.adapter.set_weights(checkpoint.weights)
        if hasattr(self.strategy, "load_state_dict"):
            self.strategy.load_state_dict(checkpoint.strategy_state)
        self.history = History.from_dict(checkpoint.history)
        self._first_round = checkpoint.server_round + 1
        self._saved_round = checkpoint.server_round
        self._resume_path = path
        run_name = path.parent.name if self.checkpoint_dir is None else checkpoint.run_name
        self._say(f"resuming run {run_name} after round {checkpoint.server_round} "
                  f"(checkpoint {path})")
        return checkpoint

    def _open_run_dir(self, checkpoint: Checkpoint | None) -> tuple[Path, bool, bool]:
        """``(folder, created now, continues an earlier run)``. A resumed run never drifts into
        a new numbered folder: it continues in its checkpoint's folder, else in the folder
        named ``run_name`` if there is one."""
        if checkpoint is not None:
            run_dir = (self._resume_path.parent if self.checkpoint_dir is None
                       else self.logdir / checkpoint.run_name)
        elif self.resume and self.run_name is not None and (self.logdir / self.run_name).is_dir():
            run_dir = self.logdir / self.run_name
            self._say(f"resume: continuing in {run_dir}")
        else:
            return new_run_dir(self.logdir, self.run_name), True, False
        created = not run_dir.is_dir()
        if created:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the run folder {run_dir}: "
                                   f"{exc.strerror or exc}") from None
        return run_dir, created, not created

    def _resume_hint(self) -> str:
        done = self._saved_round
        where = self.checkpoint_dir or self.run_dir
        if not done:
            if self.history.rounds:
                return "no checkpoint could be written, so there is none to resume from"
            return "no round had completed, so there is no checkpoint"
        rounds = "round 1 is" if done == 1 else f"rounds 1-{done} are"
        return f"{rounds} saved in {where}; restart with resume=True (--resume) to continue"

    def _complete(self) -> None:
        """Save the final model and send it to the clients. A model that cannot be saved (a
        full disk) fails the run with one line naming the file, after the clients have it."""
        try:
            self._save_final_model()
        except StorageError:
            self._finish("completed")
            raise
        self._finish("completed")

    def _save_final_model(self) -> None:
        """Atomically: write beside the target, then ``os.replace``."""
        if is_keras_model(self.curr_model):
            target = self.run_dir / "final.keras"
            temporary = self.run_dir / f".final-{os.getpid()}.keras"
        else:
            target = self.run_dir / "final_weights.npz"
            temporary = self.run_dir / f".final-{os.getpid()}.npz"
        try:
            if is_keras_model(self.curr_model):
                self.curr_model.save(temporary)
            else:
                np.savez(temporary, *self.adapter.get_weights())
            os.replace(temporary, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise StorageError(f"cannot save the final model to {target}: "
                               f"{exc.strerror or exc}") from None
        self.final_model_path = target

    def _finish(self, reason: str) -> None:
        parameters = self.adapter.get_weights()
        sessions = self.gateway.close_to_new_clients()
        for session in sessions:
            session.post(FinishJob(parameters, reason))
        deadline = time.monotonic() + 60  # one budget for everybody, not 60 s each
        for session in sessions:
            if not session.finished.wait(timeout=max(0.0, deadline - time.monotonic())):
                logger.warning("%s did not receive FINISH in time", session.name)

    def _stop_clients(self, reason: str) -> None:
        """Tell every client the server is going away (they may reconnect to a resumed run)."""
        for session in self.gateway.snapshot().values():
            if not session.finished.is_set():  # those that have FINISH need no other word
                session.notify_stop(reason)

    def _shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.gateway.stop()
        if self.tb is not None:
            self.tb.close()


def _logging_configured() -> bool:
    """Does a record from the ``pyfed`` logger reach a real handler? pyfed installs a
    NullHandler, so an application without logging set up would see nothing."""
    current = logger
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
