"""FL_Server: accepts clients for its whole life, runs the rounds, aggregates, logs.

Threads: one accept loop, one thread per connection (``session.ClientSession``), and the caller's
thread running :meth:`FL_Server.train`, which posts jobs to sessions and waits on each round's
:class:`~pyfed.rounds.RoundCollector`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import messages
from .errors import ConfigurationError, PyFedError
from .history import History
from .logs import RUN_MARKER, RunLogger, format_metrics, launch_tensorboard, new_run_dir, round_line
from .models import as_adapter, is_keras_model
from .protocol import HANDSHAKE_LIMITS, DEFAULT_MAX_MESSAGE_BYTES, VERSION, Role
from .rounds import EvaluateCollector, FitCollector
from .session import ClientSession, FinishJob, RequestJob, welcome_limits
from .spec import spec_hash, spec_to_json
from .strategy import FedAvg, Strategy
from .transport import BufferPool, Channel, listen, local_addresses

logger = logging.getLogger("pyfed")

MAX_NAME_LENGTH = 128


class FL_Server:  # noqa: N801  (PyFed 0.0.x's public name)
    """The federated server.

    ``FL_Server(curr_model, num_clients, rounds, port=54321, multi_system=False, **options)``

    Options (keyword only, all optional):
        strategy: a :class:`pyfed.strategy.Strategy` (default FedAvg).
        host: address to bind; default 127.0.0.1, or every interface with ``multi_system=True``.
        logdir: TensorBoard root (default ``pyfed_logs``); run_name: this run's folder name.
        launch_tensorboard: start TensorBoard in the background after training and print its URL.
        verbose: 1 prints one progress line per round (default), 0 is silent.
        wait_timeout: seconds to wait for ``num_clients`` to connect (default: forever).
        round_timeout: seconds a client may take per round (default: no limit).
        handshake_timeout: seconds a new connection has to say HELLO (default 10).
        max_message_bytes: cap on a received body (default 4 GiB).
        max_examples: cap on a client's declared ``num_examples`` (default 10**9).
        buffer_pool_size: receive buffers shared by all connections (default 2).
        test_data: ``(x, y)`` for centralized evaluation after every round (with ``loss``/
            ``metrics`` if the model is not compiled). A strategy's ``evaluate_fn`` also works.
    """

    def __init__(self, curr_model: Any, num_clients: int, rounds: int, port: int = 54321,
                 multi_system: bool = False, *, strategy: Strategy | None = None,
                 host: str | None = None, logdir: str | os.PathLike = "pyfed_logs",
                 run_name: str | None = None, launch_tensorboard: bool = False,
                 tensorboard_port: int = 6006, verbose: int = 1,
                 wait_timeout: float | None = None, round_timeout: float | None = None,
                 handshake_timeout: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_examples: int = 10**9, buffer_pool_size: int = 2,
                 test_data: tuple | None = None, loss: Any = None, metrics: Any = None):
        if not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigurationError(f"num_clients must be a positive integer; received {num_clients!r}")
        if not isinstance(rounds, int) or rounds < 1:
            raise ConfigurationError(f"rounds must be a positive integer; received {rounds!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be in [0, 65535]; received {port!r}")
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
        self.handshake_timeout = handshake_timeout
        self.max_message_bytes = max_message_bytes
        self.max_examples = max_examples
        self.history = History()
        self.test_data = tuple(test_data) if test_data is not None else None
        self._prepare_centralized_evaluation(loss, metrics)

        self._spec = self.adapter.spec()
        self._spec_hash = spec_hash(self._spec)
        self._pool = BufferPool(buffer_pool_size)
        self._sessions: dict[str, ClientSession] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._finished = False
        self.run_dir: Path | None = None
        self.run_id = uuid.uuid4().hex
        self.tb: RunLogger | None = None
        self.tensorboard_process = None  # set by launch_tensorboard=True; it outlives train()

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

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and accept in the background (``train`` calls this if you have not)."""
        if self._listener is not None:
            return
        self._listener = listen(self.host, self.port)
        self.port = self._listener.getsockname()[1]
        self.run_dir = new_run_dir(self.logdir, self.run_name)
        (self.run_dir / RUN_MARKER).write_text(self.run_id)
        self.tb = RunLogger(self.run_dir)
        accept = threading.Thread(target=self._accept_loop, name="pyfed-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        self._announce()

    def train(self) -> History:
        """Wait for ``num_clients``, run ``rounds`` rounds, send FINISH; return the history."""
        self.start()
        try:
            self._wait_for_clients(max(self.num_clients, getattr(self.strategy, "min_available_clients", 1)))
            for server_round in range(1, self.rounds + 1):
                self._run_round(server_round)
            self._finish("completed")
        finally:
            self._shutdown()
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
        return results

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ------------------------------------------------------------------------------------------
    # Accepting and handshakes
    # ------------------------------------------------------------------------------------------

    def _announce(self) -> None:
        if self.multi_system:
            addresses = [a for a in local_addresses() if not a.startswith("127.")] or ["<this machine's address>"]
            logger.info("listening on %s:%d", self.host, self.port)
            self._say(f"PyFed server listening on port {self.port} on every interface; clients "
                      f"should use server_ip = {' or '.join(repr(a) for a in addresses)}")
        else:
            self._say(f"PyFed server listening on {self.host}:{self.port}")

    def _say(self, line: str) -> None:
        logger.debug(line)
        if self.verbose:
            print(line, flush=True)

    def _accept_loop(self) -> None:
        listener = self._listener
        listener.settimeout(0.5)  # so the loop notices shutdown
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accept failed; continuing")
                time.sleep(0.1)
                continue
            thread = threading.Thread(target=self._serve_connection, args=(sock, addr),
                                      name=f"pyfed-conn-{addr[0]}:{addr[1]}", daemon=True)
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve_connection(self, sock: socket.socket, addr) -> None:
        channel = Channel(sock, Role.SERVER, HANDSHAKE_LIMITS, peer=f"{addr[0]}:{addr[1]}")
        session = None
        try:
            session = self._handshake(channel)
            if session is not None:
                session.serve()
        except PyFedError as exc:
            who = session.name if session else channel.peer
            logger.warning("connection %s (%s) ended: %s", who, channel.peer, exc)
        except Exception:  # a bug must not take the server down; log it with its traceback
            logger.exception("unexpected error serving %s", channel.peer)
        finally:
            if session is not None:
                self._drop(session)
            channel.close()

    def _handshake(self, channel: Channel) -> ClientSession | None:
        hello = channel.receive(timeout=self.handshake_timeout)
        if not isinstance(hello, messages.Hello):  # the state table only allows HELLO here
            return None
        name = hello.client_name
        refusal = None
        if hello.protocol_version != VERSION:
            refusal = ("version", f"protocol version {hello.protocol_version} is not supported; "
                                  f"the server speaks {VERSION}")
        elif not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            refusal = ("bad_name", f"client name must be 1-{MAX_NAME_LENGTH} printable characters; "
                                   f"received {name[:40]!r}")
        elif hello.spec_hash is not None and hello.spec_hash != self._spec_hash:
            refusal = ("model_mismatch",
                       f"model mismatch: the client's model has spec hash {hello.spec_hash[:16]}..., "
                       f"the server trains {self._spec_hash[:16]}... ({len(self._spec)} tensors)")
        elif self._finished:
            refusal = ("finished", "training has finished; this server accepts no more clients")
        session = None
        if refusal is None:
            with self._lock:
                if name in self._sessions:
                    refusal = ("duplicate_name", f"a client named {name!r} is already connected "
                                                 f"from {self._sessions[name].address}")
                else:
                    session = ClientSession(name, channel, self._pool, evaluates=hello.evaluates)
                    self._sessions[name] = session
        if refusal is not None:
            code, reason = refusal
            logger.warning("refused %s from %s: %s", name[:40], channel.peer, reason)
            with contextlib.suppress(PyFedError):
                channel.send(messages.Error(reason=reason, code=code))
            return None
        try:
            channel.send(messages.Welcome(
                client_id=name, rounds=self.rounds, run_name=self.run_dir.name, run_id=self.run_id,
                model=self.adapter.describe(), spec_hash=self._spec_hash,
                config={"run_dir": str(self.run_dir.resolve()), "spec": spec_to_json(self._spec)}))
        except PyFedError:
            self._drop(session)
            raise
        channel.limits = welcome_limits(self.max_message_bytes)
        logger.info("%s joined from %s", name, channel.peer)
        with self._changed:
            self._changed.notify_all()
        return session

    def _drop(self, session: ClientSession) -> None:
        with self._changed:
            if self._sessions.get(session.name) is session:
                del self._sessions[session.name]
                if not self._finished:
                    logger.warning("%s (%s) disconnected", session.name, session.address)
            session.end("disconnected")
            self._changed.notify_all()

    # ------------------------------------------------------------------------------------------
    # Rounds
    # ------------------------------------------------------------------------------------------

    def _wait_for_clients(self, count: int, quiet: bool = False) -> None:
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        last_count = -1
        with self._changed:
            while len(self._sessions) < count:
                if len(self._sessions) != last_count:
                    last_count = len(self._sessions)
                    self._say(f"waiting for clients: {last_count}/{count} connected")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PyFedError(
                        f"only {len(self._sessions)} of {count} clients connected within "
                        f"{self.wait_timeout:g} s ({', '.join(sorted(self._sessions)) or 'none'})")
                self._changed.wait(1.0 if remaining is None else min(1.0, remaining))
        if not quiet:
            self._say(f"{len(self._sessions)} clients connected: {', '.join(sorted(self._sessions))}")

    def _run_round(self, server_round: int) -> None:
        self._wait_for_clients(getattr(self.strategy, "min_available_clients", 1), quiet=True)
        parameters = self.adapter.get_weights()
        sessions = self._snapshot()
        plan = self._plan(self.strategy.configure_fit(server_round, parameters, sorted(sessions)),
                          sessions)
        fit = FitCollector(server_round, set(plan), self.strategy, self._spec, self.max_examples,
                           on_history=self.tb.client_history)
        self.strategy.begin(server_round, parameters)
        weights = tuple(parameters)
        for name, config in plan.items():
            sessions[name].post(RequestJob(fit, messages.Fit(round=server_round, weights=weights,
                                                             config=config), self.round_timeout))
        fit.wait()
        for client, reason in sorted(fit.failures.items()):
            logger.warning("round %d: %s did not contribute: %s", server_round, client, reason)
        fit.require(getattr(self.strategy, "min_fit_clients", 1))
        new_parameters, fit_metrics = self.strategy.finish()
        self.adapter.set_weights(new_parameters)

        test = self._evaluate_centralized(server_round, new_parameters)
        federated = self._evaluate_federated(server_round, new_parameters, sessions)
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
        self.tb.server.flush()
        if self.verbose:
            extra = " · ".join(format_metrics(section, values)
                               for section, values in sections.items() if section != "fit")
            print(round_line(server_round, self.rounds, len(fit.answered), fit_metrics, seconds,
                             bytes_in, bytes_out, extra=extra), flush=True)

    def _snapshot(self) -> dict[str, ClientSession]:
        with self._lock:
            return dict(self._sessions)

    @staticmethod
    def _plan(plan: list[tuple[str, dict]], sessions: dict) -> dict[str, dict]:
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

    def _evaluate_federated(self, server_round: int, parameters, sessions):
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
        for name, config in plan.items():
            sessions[name].post(RequestJob(collector, messages.Evaluate(
                round=server_round, weights=weights, config=config), self.round_timeout))
        collector.wait()
        for client, reason in sorted(collector.failures.items()):
            logger.warning("round %d: %s did not evaluate: %s", server_round, client, reason)
        if not collector.results:
            return None
        loss, metrics = self.strategy.aggregate_evaluate(server_round, collector.results)
        return loss, metrics, collector.bytes_in, collector.bytes_out

    def _finish(self, reason: str) -> None:
        parameters = self.adapter.get_weights()
        with self._lock:
            self._finished = True
            sessions = list(self._sessions.values())
        for session in sessions:
            session.post(FinishJob(parameters, reason))
        for session in sessions:
            if not session.finished.wait(timeout=60):
                logger.warning("%s did not receive FINISH in time", session.name)

    def _shutdown(self) -> None:
        self._stopping.set()
        with self._lock:
            self._finished = True
            sessions = list(self._sessions.values())
        for session in sessions:
            session.post(None)
            session.channel.close()  # unblocks a thread still waiting on this client
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        if self.tb is not None:
            self.tb.close()
