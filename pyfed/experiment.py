"""FL_Experiment: a whole federated run on one machine, every party a real process.

The parent spawns one server process and one process per client (``spawn``, so each child is
a fresh interpreter, as on separate machines). What a child needs (the model's JSON and
weights, data, and a user's loss/optimizer/metric objects, which may be custom functions) is
handed over with cloudpickle: this local parent-to-child handoff is the only place PyFed uses
it. Nothing comes back pickled: the server child writes the final weights as ``.npz`` (read with
``allow_pickle=False``) and reports over a pipe in JSON.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from .errors import ConfigurationError, PyFedError
from .history import History
from .logs import logs_line

logger = logging.getLogger("pyfed")

FINAL_WEIGHTS = "final_weights.npz"


def _child_setup(seed: int | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if seed is not None:  # each party gets its own stream, reproducibly
        import keras

        keras.utils.set_random_seed(seed)


def _server_main(payload: bytes, report) -> None:
    """Server child: train, save the final weights in the run folder, report as JSON."""
    spec = cloudpickle.loads(payload)
    try:
        _child_setup(spec["seed"])
        from .models import adapter_from_description
        from .server import FL_Server

        adapter = adapter_from_description(spec["model"])
        adapter.set_weights(spec["weights"])
        model = getattr(adapter, "model", adapter)
        server = FL_Server(model, spec["num_clients"], spec["rounds"], port=spec["port"],
                           **spec["server_options"])
        server.print_logs_line = False  # the parent says where the logs are, after its test
        server.start()
        report.send_bytes(json.dumps({"event": "listening", "port": server.port,
                                      "run_dir": str(server.run_dir)}).encode())
        history = server.train()
        weights_file = server.run_dir / FINAL_WEIGHTS
        np.savez(weights_file, *server.adapter.get_weights())
        report.send_bytes(json.dumps({"event": "done", "history": history.to_dict(),
                                      "weights": str(weights_file)}).encode())
    except PyFedError as exc:  # expected failures: one clear line, no traceback
        report.send_bytes(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}).encode())
        sys.exit(1)
    except BaseException as exc:  # a bug: report it, then let the traceback show it
        report.send_bytes(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}).encode())
        raise


def _client_main(payload: bytes) -> None:
    spec = cloudpickle.loads(payload)
    _child_setup(spec["seed"])
    from .client import FL_Client

    client = FL_Client(spec["name"], spec["data"], spec["target"], server_ip=spec["host"],
                       server_port=spec["port"], **spec["client_options"])
    client.train(**spec["train"])


class FL_Experiment:  # noqa: N801  (PyFed 0.0.x's public name)
    """Run a server and ``num_clients`` clients as separate processes on this machine.

    ``FL_Experiment(num_clients, clients_data, clients_target, server_data, server_target,
    port=54321)`` then ``.run(model, rounds, epochs, batch_size, lr, optimizer, loss, metrics)``,
    which returns ``(trained_model, history)`` and reports the test accuracy on the server data.

    Options: ``strategy`` (any :class:`pyfed.strategy.Strategy`, handed to the server process),
    ``partition="dirichlet"`` with ``partition_options={"alpha": 0.3}`` (pools the clients' data
    and re-splits it: iid, dirichlet, shards, by_label), ``seed``, ``server_options`` and
    ``client_options`` (extra keyword arguments for FL_Server / FL_Client, e.g.
    ``{"validation_split": 0.1}``), ``logdir``, ``run_name``, ``verbose``, ``timeout``.
    """

    def __init__(self, num_clients: int, clients_data, clients_target, server_data, server_target,
                 port: int = 54321, *, logdir: str | os.PathLike = "pyfed_logs",
                 run_name: str | None = None, verbose: int = 1, client_verbose: Any = 0,
                 host: str = "127.0.0.1", launch_tensorboard: bool = False,
                 timeout: float | None = None, seed: int | None = None,
                 strategy=None, partition: str | None = None,
                 partition_options: dict | None = None, server_options: dict | None = None,
                 client_options: dict | None = None):
        if partition is not None:
            # Pool the clients' data and re-split it by the scheme; the server's test set stays.
            from .data import partition_data

            clients_data, clients_target = partition_data(
                np.concatenate(list(clients_data)), np.concatenate(list(clients_target)),
                num_clients, partition, seed=0 if seed is None else seed,
                **(partition_options or {}))
        if len(clients_data) != num_clients or len(clients_target) != num_clients:
            raise ConfigurationError(
                f"expected data and targets for {num_clients} clients; received "
                f"{len(clients_data)} data and {len(clients_target)} target arrays")
        self.num_clients = num_clients
        self.clients_data = clients_data
        self.clients_target = clients_target
        self.server_data = server_data
        self.server_target = server_target
        self.port = port
        self.logdir = Path(logdir)
        self.run_name = run_name
        self.verbose = verbose
        self.client_verbose = client_verbose
        self.host = host
        self.launch_tensorboard = launch_tensorboard
        self.timeout = timeout
        self.seed = seed
        self.strategy = strategy
        self.partition = partition
        self.server_options = dict(server_options or {})
        self.client_options = dict(client_options or {})
        self.history: History | None = None
        self.test_results: dict | None = None
        self.run_dir: Path | None = None
        self.model = None

    def run(self, model, rounds: int, epochs: int = 1, batch_size: int = 32, lr: float | None = None,
            optimizer: Any = None, loss: Any = "sparse_categorical_crossentropy",
            metrics: Any = ("accuracy",)):
        from .models import as_adapter

        adapter = as_adapter(model)
        context = multiprocessing.get_context("spawn")
        receive_report, send_report = context.Pipe(duplex=False)
        server_payload = cloudpickle.dumps({
            "model": adapter.describe(), "weights": adapter.get_weights(),
            "num_clients": self.num_clients, "rounds": rounds, "port": self.port, "seed": self.seed,
            "server_options": {"host": self.host, "logdir": str(self.logdir),
                               "run_name": self.run_name, "verbose": self.verbose,
                               "launch_tensorboard": self.launch_tensorboard,
                               "strategy": self.strategy, **self.server_options}})
        server = context.Process(target=_server_main, args=(server_payload, send_report),
                                 name="pyfed-server")
        children = [server]
        try:
            server.start()
            send_report.close()  # so a dead server shows up as EOF on our end
            listening = self._next_report(receive_report, children, "start listening")
            self.run_dir = Path(listening["run_dir"])
            train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
                     "optimizer": optimizer, "metrics": list(metrics) if metrics else None}
            for index in range(self.num_clients):
                payload = cloudpickle.dumps({
                    "name": f"client_{index + 1}", "data": self.clients_data[index],
                    "target": self.clients_target[index], "host": self.host,
                    "port": listening["port"], "train": train,
                    "seed": None if self.seed is None else self.seed + index + 1,
                    "client_options": {"verbose": self.client_verbose, "logdir": str(self.logdir),
                                       **self.client_options}})
                client = context.Process(target=_client_main, args=(payload,),
                                         name=f"pyfed-client_{index + 1}")
                client.start()
                children.append(client)
            done = self._next_report(receive_report, children, "finish training")
            for child in children:
                child.join(timeout=30)
        finally:
            _end(children)
            receive_report.close()

        with np.load(done["weights"], allow_pickle=False) as archive:
            adapter.set_weights([archive[f"arr_{i}"] for i in range(len(archive.files))])
        self.model = model
        self.history = History.from_dict(done["history"])
        failed = [f"{c.name} (exit code {c.exitcode})" for c in children[1:] if c.exitcode != 0]
        if failed:
            # The server may finish without a crashed client, but an experiment that silently
            # lost a party is not the experiment that was asked for: say so, loudly.
            raise PyFedError(f"{', '.join(failed)} failed during the experiment (see its output "
                             "above); the server finished with the remaining clients. The partial "
                             "history is in FL_Experiment.history")
        self.test_results = self._test(adapter, loss, optimizer, lr, metrics)
        if self.verbose:
            print(logs_line(self.run_dir, self.logdir), flush=True)
        return model, self.history

    def _next_report(self, reports, children, what: str) -> dict:
        """Wait for the server's next report, failing fast if any party dies first."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if reports.poll(0.2):
                try:
                    report = json.loads(reports.recv_bytes())
                except EOFError:
                    report = {"event": "error", "error": "the server process exited"}
                if report["event"] == "error":
                    raise PyFedError(f"the server failed to {what}: {report['error']}")
                return report
            for child in children:
                if child.exitcode not in (None, 0):
                    raise PyFedError(f"{child.name} exited with code {child.exitcode} before the "
                                     f"server could {what}; see its output above")
            if deadline is not None and time.monotonic() > deadline:
                raise PyFedError(f"the experiment did not {what} within {self.timeout:g} s")

    def _test(self, adapter, loss, optimizer, lr, metrics) -> dict | None:
        if self.server_data is None or len(self.server_data) == 0:
            return None
        if hasattr(adapter, "compile"):
            adapter.compile(loss=loss, optimizer=optimizer, lr=lr, metrics=list(metrics or []))
        test_loss, count, results = adapter.evaluate(self.server_data, self.server_target, {})
        results = {"loss": test_loss, **results}
        if self.verbose:
            shown = " · ".join(f"{k} {v:.4f}" for k, v in results.items())
            print(f"test on {count} server examples · {shown}", flush=True)
        return results


def _end(children) -> None:
    """Stop every child we started that is still running, and reap them all."""
    for child in children:
        if child.pid is not None and child.is_alive():
            child.terminate()
    for child in children:
        if child.pid is None:
            continue
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
