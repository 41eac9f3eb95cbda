"""FL_Server: runs the rounds, aggregates, evaluates, checkpoints and logs.

Connections are the :class:`~pyfed.gateway.Gateway`'s job (one thread each, for the server's
whole life); this module is the caller's thread running :meth:`FL_Server.train`, which posts
jobs to the clients' sessions and waits on each round's collector, with a deadline if set.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import auth, compression, messages
from .compression import Downlink, validate_codec
from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint
from .errors import ConfigurationError
from .gateway import Gateway
from .history import History
from .logs import (RUN_MARKER, RunLogger, format_metrics, launch_tensorboard, new_run_dir,
                   round_line)
from .models import as_adapter, is_keras_model
from .protocol import DEFAULT_MAX_MESSAGE_BYTES
from .rounds import Collector, EvaluateCollector, FitCollector
from .session import FinishJob, RequestJob
from .spec import spec_hash, spec_to_json
from .strategy import FedAvg, Strategy
from .tb_plugins import RunBoard, run_hparams
from .transport import BufferPool, local_addresses, server_ssl_context

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
        progress_interval: seconds between "waiting for ..." lines during a round (default 10).
        checkpoint_dir: where the per-round checkpoint goes (default: the run folder).
        resume: continue from the last checkpoint (in ``checkpoint_dir``, the run folder named
            ``run_name``, or the newest run under ``logdir``).
        token / token_file: shared secret (else $PYFED_TOKEN) for a mutual HMAC challenge.
        ssl_certfile, ssl_keyfile: serve over TLS.
        handshake_timeout: seconds a new connection has for its whole handshake (default 10).
        max_connections: open connections at most (default 1024); more are refused at once.
        max_message_bytes: cap on a received body (default 4 GiB).
        max_examples: cap on a client's declared ``num_examples`` (default 10**9).
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
                 max_connections: int = 1024, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_examples: int = 10**9, buffer_pool_size: int = 2,
                 compression: str | None = None, hparams: dict | None = None):
        for label, value, low in (("num_clients", num_clients, 1), ("rounds", rounds, 1),
                                  ("max_connections", max_connections, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigurationError(f"{label} must be a positive integer; received {value!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be in [0, 65535]; received {port!r}")
        if round_timeout is not None and round_timeout <= 0:
            raise ConfigurationError(f"round_timeout must be positive; received {round_timeout}")
        self.curr_model = curr_model
        self.adapter = as_adapter(curr_model)
        self.num_clients = num_clients
        self.rounds = rounds
        self.port = port
        self.multi_system = multi_system
        self.host = host or ("0.0.0.0" if multi_system else "127.0.0.1")
        self.strategy = strategy or FedAvg()
        self.logdir = Path(logdir)
        self.run_name = run_name
        self.launch_tensorboard = launch_tensorboard
        self.tensorboard_port = tensorboard_port
        self.verbose = verbose
        self.wait_timeout = wait_timeout
        self.round_timeout = round_timeout
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
        self.gateway = Gateway(
            host=self.host, port=port, welcome=self._welcome, spec=self._spec,
            spec_hash=self._spec_hash, pool=BufferPool(buffer_pool_size),
            token=auth.resolve_token(token, token_file),
            ssl_context=server_ssl_context(ssl_certfile, ssl_keyfile) if ssl_certfile else None,
            handshake_timeout=handshake_timeout, max_connections=max_connections,
            max_message_bytes=max_message_bytes)
        self.run_dir: Path | None = None
        self.run_id = uuid.uuid4().hex
        self.tb: RunLogger | None = None
        self.tensorboard_process = None  # set by launch_tensorboard=True; it outlives train()
        self.final_model_path: Path | None = None
        self._first_round = 1
        self._shut_down = False

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and accept in the background (``train`` calls this if you have not)."""
        if self.run_dir is not None:
            return
        checkpoint = self._load_resume_checkpoint() if self.resume else None
        if checkpoint is not None:
            run_dir = self.logdir / checkpoint.run_name
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = new_run_dir(self.logdir, self.run_name)
        (run_dir / RUN_MARKER).write_text(self.run_id)
        self.tb = RunLogger(run_dir)
        self.run_dir = run_dir  # before accepting: WELCOME names the run
        self.port = self.gateway.start()
        self.board = RunBoard(self.tb.server, run_dir.name, run_hparams(
            self.strategy, self.num_clients, self.rounds, self.codec, self.hparams),
            client_history=self.tb.client_history)
        self.board.train_begin()
        self._announce()

    def train(self) -> History:
        """Wait for ``num_clients``, run the rounds, send FINISH; return the history.

        Ctrl-C (or SIGTERM) abandons the current round, keeps the last checkpoint, flushes
        TensorBoard, tells the clients, and exits with status 130 and a one-line reason.
        """
        restore = self._catch_sigterm()
        self.start()
        server_round = self._first_round
        try:
            self.gateway.wait_for(max(self.num_clients, self._min("min_available_clients")),
                                  self.wait_timeout, self._say)
            self._say(f"{len(self.gateway.sessions)} clients connected: "
                      f"{', '.join(sorted(self.gateway.sessions))}")
            for server_round in range(self._first_round, self.rounds + 1):
                self._run_round(server_round)
                self._checkpoint(server_round)
            self._save_final_model()
            self._finish("completed")
            self.board.train_end(completed=True)
        except KeyboardInterrupt:
            self._stop_clients("the server was stopped (Ctrl-C)")
            self._shutdown()  # before the message: TensorBoard is flushed when it is printed
            print(f"PyFed server stopped by Ctrl-C during round {server_round}; "
                  f"{self._resume_hint(server_round)}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except BaseException:
            self._stop_clients("the server failed")
            raise
        finally:
            self._shutdown()
            restore()
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

    def _say(self, line: str) -> None:
        logger.debug(line)
        if self.verbose:
            print(line, flush=True)

    def _min(self, attribute: str) -> int:
        return int(getattr(self.strategy, attribute, 1))

    # ------------------------------------------------------------------------------------------
    # Rounds
    # ------------------------------------------------------------------------------------------

    def _run_round(self, server_round: int) -> None:
        self.gateway.wait_for(self._min("min_available_clients"), self.wait_timeout, self._say)
        parameters = self.adapter.get_weights()
        if self.downlink is not None:
            wire, meta = self.downlink.publish(parameters)
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
                           on_history=self.board.client_history, decode=decode)
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
                                                             config=config), None, version))
        self._wait(fit, timeout, "training")
        for client, reason in sorted(fit.failures.items()):
            logger.warning("round %d: %s did not contribute: %s", server_round, client, reason)
        fit.require(self._min("min_fit_clients"))
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
        """The idle clients, waiting (bounded by ``wait_timeout``) until there are enough."""
        needed = self._min("min_available_clients")
        limit = self.wait_timeout if self.wait_timeout is not None else self.round_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            sessions = self.gateway.snapshot(idle_only=True)
            if len(sessions) >= needed or (deadline is not None and time.monotonic() > deadline):
                return sessions
            time.sleep(0.05)

    def _wait(self, collector: Collector, timeout: float | None, doing: str) -> None:
        """Wait for the round, saying every ``progress_interval`` s whom it waits on."""
        deadline = None if timeout is None else time.monotonic() + timeout
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
        weights = tuple(parameters)
        if self.downlink is not None:  # evaluation needs no shared base: fp16 is stateless
            arrays, meta = compression.encode("fp16", parameters)
            weights = tuple(arrays)
            plan = {name: {**config, "compression": meta} for name, config in plan.items()}
        for name, config in plan.items():
            sessions[name].post(RequestJob(collector, messages.Evaluate(
                round=server_round, weights=weights, config=config), None))
        self._wait(collector, timeout, "evaluating")
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
        save_checkpoint(self.checkpoint_dir or self.run_dir, Checkpoint(
            server_round=server_round, weights=self.adapter.get_weights(),
            strategy_state=self.strategy.state_dict() if hasattr(self.strategy, "state_dict") else {},
            history=self.history.to_dict(), run_name=self.run_dir.name, spec_hash=self._spec_hash))

    def _load_resume_checkpoint(self) -> Checkpoint | None:
        path = find_checkpoint(self.logdir, self.run_name, self.checkpoint_dir)
        if path is None:
            self._say(f"resume: no checkpoint under {self.checkpoint_dir or self.logdir}; "
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
        self._say(f"resuming run {checkpoint.run_name} after round {checkpoint.server_round} "
                  f"(checkpoint {path})")
        return checkpoint

    def _resume_hint(self, server_round: int) -> str:
        done = self.history.rounds[-1] if self.history.rounds else 0
        where = self.checkpoint_dir or self.run_dir
        if not done:
            return "no round had completed, so there is no checkpoint"
        rounds = "round 1 is" if done == 1 else f"rounds 1-{done} are"
        return f"{rounds} saved in {where}; restart with resume=True (--resume) to continue"

    def _save_final_model(self) -> None:
        """Atomically: write beside the target, then ``os.replace``."""
        if is_keras_model(self.curr_model):
            target = self.run_dir / "final.keras"
            temporary = self.run_dir / f".final-{os.getpid()}.keras"
            self.curr_model.save(temporary)
        else:
            target = self.run_dir / "final_weights.npz"
            temporary = self.run_dir / f".final-{os.getpid()}.npz"
            np.savez(temporary, *self.adapter.get_weights())
        os.replace(temporary, target)
        self.final_model_path = target

    def _finish(self, reason: str) -> None:
        parameters = self.adapter.get_weights()
        with self.gateway.lock:
            self.gateway.finished = True
            sessions = list(self.gateway.sessions.values())
        for session in sessions:
            session.post(FinishJob(parameters, reason))
        deadline = time.monotonic() + 60  # one budget for everybody, not 60 s each
        for session in sessions:
            if not session.finished.wait(timeout=max(0.0, deadline - time.monotonic())):
                logger.warning("%s did not receive FINISH in time", session.name)

    def _stop_clients(self, reason: str) -> None:
        """Tell every client the server is going away (they may reconnect to a resumed run)."""
        for session in self.gateway.snapshot().values():
            session.notify_stop(reason)

    def _shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.gateway.stop()
        if self.tb is not None:
            self.tb.close()

    def _catch_sigterm(self):
        """SIGTERM stops training like Ctrl-C (only the main thread can install handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, previous)

