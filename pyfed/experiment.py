"""FL_Experiment: a whole federated run on one machine, every party a real process.

The parent starts one server process and one process per client, each a fresh interpreter (as
on separate machines) running ``python -m pyfed.sim.child`` (on Linux they are forked from one
fork server that imported their modules once: :mod:`pyfed.sim.forked` says why and what it
risks): never the user's script, so
a script without an ``if __name__ == "__main__":`` guard runs its top-level code once, as
written. What a child needs (the model's JSON and weights, data, and a user's
loss/optimizer/metric objects, which may be custom functions defined in ``__main__``) goes to
its stdin with cloudpickle: this local parent-to-child handoff is the only place PyFed uses it.
Nothing comes back pickled: the server child writes the final weights as ``.npz`` (read with
``allow_pickle=False``) and reports as JSON lines on a pipe of its own.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from .models import defaults
from .deadline import Deadline, wait_until
from .errors import ConfigurationError, PyFedError
from .tracking.history import History
from .tracking.logs import logs_line
from .tracking.tb_plugins import hparam_value, write_final_test

logger = logging.getLogger("pyfed")

FINAL_WEIGHTS = "final_weights.npz"
# The roles of ``python -m pyfed.sim.child`` (which imports this module, never the reverse:
# ``import pyfed`` must not import a module that ``-m`` is about to run).
SERVER, CLIENT = "server", "client"


class FL_Experiment:  # noqa: N801  (PyFed 0.0.x's public name)
    """Run a server and ``num_clients`` clients as separate processes on this machine.

    ``FL_Experiment(num_clients, clients_data, clients_target, server_data, server_target,
    port=54321)`` then ``.run(model, rounds, epochs, batch_size, lr, optimizer, loss, metrics)``,
    which returns ``(trained_model, history)`` and reports the test accuracy on the server data.

    Options: ``strategy`` (any :class:`pyfed.strategy.Strategy`, handed to the server process),
    ``partition="dirichlet"`` with ``partition_options={"alpha": 0.3}`` (pools the clients' data
    and re-splits it: iid, dirichlet, shards, by_label), ``seed``, ``server_options`` and
    ``client_options`` (extra keyword arguments for FL_Server / FL_Client, e.g.
    ``{"validation_split": 0.1}``), ``fit_callbacks`` (Keras callbacks for every client's
    ``fit``; each client process gets its own copy), ``logdir``, ``run_name``, ``verbose``,
    ``timeout``.

    ``backend="ray"`` runs the clients as Ray actors (:mod:`pyfed.sim.ray_backend`; needs
    ``pip install 'pyfed[ray]'``): ``ray_address`` (None starts a local Ray; ``"auto"``,
    ``"host:port"`` or ``$RAY_ADDRESS`` joins a cluster), ``client_resources`` (each actor's,
    default ``{"num_cpus": 1, "num_gpus": 0}``), ``clients_per_actor`` (virtual clients taking
    turns on one actor's model). After ``run``, ``placement`` maps each client to its Ray node id.
    """

    def __init__(self, num_clients: int, clients_data, clients_target, server_data, server_target,
                 port: int = 54321, *, logdir: str | os.PathLike = "pyfed_logs",
                 run_name: str | None = None, verbose: int = 1, client_verbose: Any = 0,
                 host: str = "127.0.0.1", launch_tensorboard: bool = False,
                 timeout: float | None = None, seed: int | None = None,
                 strategy=None, partition: str | None = None,
                 partition_options: dict | None = None, server_options: dict | None = None,
                 client_options: dict | None = None, fit_callbacks: list | None = None,
                 backend: str = "local", ray_address: str | None = None,
                 client_resources: dict | None = None, clients_per_actor: int = 1):
        from .sim.ray_backend import check_backend_options  # imports no Ray

        self.client_resources = check_backend_options(backend, ray_address, client_resources,
                                                      clients_per_actor)
        self.backend = backend
        self.ray_address = ray_address
        self.clients_per_actor = clients_per_actor
        self.placement: dict[str, str] = {}
        if partition is not None:
            # Pool the clients' data and re-split it by the scheme; the server's test set stays.
            from .data.datasets import partition_data

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
        if fit_callbacks:
            if "fit_callbacks" in self.client_options:
                raise ConfigurationError("fit_callbacks is given twice: as an argument and in "
                                         "client_options; pass it once")
            self.client_options["fit_callbacks"] = list(fit_callbacks)
        self.history: History | None = None
        self.test_results: dict | None = None
        self.run_dir: Path | None = None
        self.model = None

    def run(self, model, rounds: int, epochs: int = defaults.EPOCHS,
            batch_size: int = defaults.BATCH_SIZE, lr: float | None = None,
            optimizer: Any = defaults.OPTIMIZER, loss: Any = defaults.LOSS,
            metrics: Any = defaults.METRICS):
        """Defaults are PyFed's one set (:mod:`pyfed.models.defaults`), as ``pyfed experiment``'s;
        ``lr=None`` is 0.005, or the rate of an optimizer instance you configured."""
        from .models import as_adapter
        from .models.keras_adapter import check_fit_callbacks

        lr = defaults.learning_rate(optimizer, lr)

        adapter = as_adapter(model)
        # Here, before any process starts, rather than in every client child.
        check_fit_callbacks(self.client_options.get("fit_callbacks"), adapter, "")
        # The clients' settings, for TensorBoard's HParams (the server cannot know them all).
        hparams = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                   "optimizer": hparam_value(optimizer), "loss": hparam_value(loss),
                   "partition": self.partition or "as given", "seed": self.seed,
                   **self.server_options.get("hparams", {})}
        server_payload = {
            "model": adapter.describe(), "weights": adapter.get_weights(),
            "num_clients": self.num_clients, "rounds": rounds, "port": self.port, "seed": self.seed,
            "server_options": {"host": self.host, "logdir": str(self.logdir),
                               "run_name": self.run_name, "verbose": self.verbose,
                               "launch_tensorboard": self.launch_tensorboard,
                               "strategy": self.strategy, **self.server_options,
                               "hparams": hparams}}
        train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
                 "optimizer": optimizer, "metrics": list(metrics) if metrics else None}
        if self.backend == "ray":
            from .sim.ray_backend import run_on_ray

            done, failed = run_on_ray(self, server_payload, train)
            return self._finish(done, failed, model, adapter, loss, optimizer, lr, metrics)
        from .sim.forked import PartyLauncher

        children: list[_Party] = []
        reports = launcher = None
        try:
            launcher = PartyLauncher(server_payload["model"].get("kind"), _Party.start_server,
                                     _Party.start_client, _Reports)
            server, reports = launcher.start_server(server_payload)
            children.append(server)
            listening = self._next_report(reports, children, "start listening")
            self.run_dir = Path(listening["run_dir"])
            for index in range(self.num_clients):
                children.append(launcher.start_client(f"client_{index + 1}", {
                    "name": f"client_{index + 1}", "data": self.clients_data[index],
                    "target": self.clients_target[index], "host": self.host,
                    "port": listening["port"], "train": train,
                    "seed": None if self.seed is None else self.seed + index + 1,
                    "client_options": {"verbose": self.client_verbose, "logdir": str(self.logdir),
                                       **self.client_options}}))
            done = self._next_report(reports, children, "finish training")
            for child in children:
                child.wait(timeout=30)
        finally:
            if launcher is not None:
                launcher.close()  # ends and reaps the forked parties, reporting their exit codes
            _end(children)
            if reports is not None:
                reports.close()
        failed = [f"{c.name} (exit code {c.exitcode})" for c in children[1:] if c.exitcode != 0]
        return self._finish(done, failed, model, adapter, loss, optimizer, lr, metrics)

    def _finish(self, done: dict, failed: list[str], model, adapter, loss, optimizer, lr,
                metrics):
        """The server's final weights into the user's model, the history, the test: the same
        for every backend."""
        with np.load(done["weights"], allow_pickle=False) as archive:
            adapter.set_weights([archive[f"arr_{i}"] for i in range(len(archive.files))])
        self.model = model
        self.history = History.from_dict(done["history"])
        if failed:
            # The server may finish without a crashed client, but an experiment that silently
            # lost a party is not the experiment that was asked for: say so, loudly.
            raise PyFedError(f"{', '.join(failed)} failed during the experiment (see its output "
                             "above); the server finished with the remaining clients. The partial "
                             "history is in FL_Experiment.history")
        self.test_results = self._test(adapter, loss, optimizer, lr, metrics)
        if self.test_results:  # beside FL_Server.test()'s: TensorBoard and its HParams
            write_final_test(self.run_dir / "server", self.test_results,
                             self.history.rounds[-1] if self.history.rounds else 0)
        if self.verbose:
            print(logs_line(self.run_dir, self.logdir), flush=True)
        return model, self.history

    def _next_report(self, reports: "_Reports", children, what: str) -> dict:
        """Wait for the server's next report, failing fast if any party dies first."""
        arrived: list[dict] = []

        def report_or_failure() -> bool:
            report = reports.next(timeout=0.2)  # this is the wait: no sleep between checks
            if report is not None:
                if report.get("event") == "error":
                    raise PyFedError(f"the server failed to {what}: {report.get('error')}")
                arrived.append(report)
                return True
            for child in children:
                if child.exitcode not in (None, 0):
                    raise PyFedError(f"{child.name} exited with code {child.exitcode} before the "
                                     f"server could {what}; see its output above")
            return False

        if not wait_until(report_or_failure, Deadline(self.timeout), sleep=lambda seconds: None):
            raise PyFedError(f"the experiment did not {what} within {self.timeout:g} s")
        return arrived[0]

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


class _Party:
    """One child process: ``python -m pyfed.sim.child <role>``, fed its payload on stdin."""

    def __init__(self, name: str, process: subprocess.Popen, payload: bytes):
        self.name = name
        self.process = process
        # A thread, so that a child that never reads cannot block the parent; it ends when the
        # child has read everything or has died (the pipe breaks).
        self._feeder = threading.Thread(target=self._feed, args=(payload,), daemon=True,
                                        name=f"{name}-payload")
        self._feeder.start()

    @classmethod
    def _start(cls, name: str, role: str, spec: dict, pass_fds=(), extra=()) -> "_Party":
        header = json.dumps({"sys_path": [p for p in sys.path if isinstance(p, str)]})
        payload = header.encode() + b"\n" + cloudpickle.dumps(spec)
        sys.stdout.flush()  # the child writes to the same terminal: keep the lines in order
        sys.stderr.flush()
        process = subprocess.Popen([sys.executable, "-m", "pyfed.sim.child", role, *extra],
                                   stdin=subprocess.PIPE, pass_fds=pass_fds)
        return cls(name, process, payload)

    @classmethod
    def start_server(cls, spec: dict) -> tuple["_Party", "_Reports"]:
        read_end, write_end = os.pipe()
        try:
            party = cls._start("pyfed-server", SERVER, spec, pass_fds=(write_end,),
                               extra=("--report-fd", str(write_end)))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # only the server holds it now: its death shows up as EOF here
        return party, _Reports(read_end)

    @classmethod
    def start_client(cls, name: str, spec: dict) -> "_Party":
        return cls._start(f"pyfed-{name}", CLIENT, spec)

    def _feed(self, payload: bytes) -> None:
        try:
            with self.process.stdin:
                self.process.stdin.write(payload)
        except (BrokenPipeError, ValueError):  # the child died first; its exit code tells why
            pass

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    def close(self) -> None:
        self._feeder.join(timeout=10)


class _Reports:
    """The server child's JSON lines, read with a timeout; EOF means the server exited."""

    def __init__(self, fd: int):
        self._fd = fd
        self._buffer = b""
        self._eof = False

    def next(self, timeout: float) -> dict | None:
        deadline = Deadline(timeout)
        while b"\n" not in self._buffer:
            if self._eof:
                return {"event": "error", "error": "the server process exited"}
            if deadline.expired() or not select.select([self._fd], [], [], deadline.remaining())[0]:
                return None
            chunk = os.read(self._fd, 65536)
            self._eof = not chunk
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            report = json.loads(line)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            return {"event": "error", "error": f"unreadable report from the server: {line[:200]!r}"}
        return report

    def close(self) -> None:
        os.close(self._fd)


def _end(children: list[_Party]) -> None:
    """Stop every child we started that is still running, and reap them all, by PID."""
    for child in children:
        if child.exitcode is None:
            child.terminate()
    for child in children:
        if child.wait(timeout=10) is None:
            child.kill()
            child.wait(timeout=10)
        child.close()
