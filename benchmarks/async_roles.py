"""The async race's children (roles ``async_server`` and ``async_client``), the model adapter
whose ``fit`` sleeps (one client is made slow with it), and :class:`RaceRecorder`, the server
callback that times the race.

A client child lives for the whole race: it reads ``PORT METHOD`` lines on its stdin, takes
part in that server's run, and answers ``BENCH trained {...}``; so every method meets the same
processes, data, sleeps and (warmed) model, whose optimizer state is reset before each run. A server child runs one method, stops itself
once the wall-clock budget is over (and the target reached, or ``--max-seconds`` passed), and
writes what its recorder saw to ``--out``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import numpy as np
from pyfed.callbacks import ServerCallback

from .probes import proc_status
from .records import emit


def digits_split(num_clients: int):
    from pyfed.data import load_digits, split_for_clients

    x, y = load_digits()
    return split_for_clients(x, y, num_clients, seed=0)


def sleepy(adapter_class, seconds: float, factor: float, fit_seconds: list):
    """``adapter_class`` on a device ``factor`` times slower: its ``fit`` computes, then sleeps
    ``factor * seconds`` plus ``factor - 1`` times the compute it just took (so its whole fit
    is ``factor`` times a fast client's ``seconds`` plus compute, however busy the CPU), noting
    how long each whole ``fit`` took."""
    class Sleepy(adapter_class):
        def fit(self, *args, **kwargs):
            start = time.perf_counter()
            outcome = super().fit(*args, **kwargs)
            compute = time.perf_counter() - start
            time.sleep(factor * seconds + (factor - 1) * compute)
            fit_seconds.append(time.perf_counter() - start)
            return outcome
    return Sleepy


def new_model(kind: str):
    """The race's model, the same initial weights every time it is built."""
    if kind == "softmax":
        from pyfed.models import SoftmaxRegression
        return SoftmaxRegression(64, 10, seed=0)
    import keras
    import tensorflow as tf

    from pyfed.data import digits_model
    tf.config.threading.set_intra_op_parallelism_threads(1)  # six TF processes on two cores
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    return digits_model()


def reset_optimizer(adapter) -> None:
    """A Keras model's optimizer as freshly built (step 0, no moments), its rate kept."""
    optimizer = getattr(getattr(adapter, "model", None), "optimizer", None)
    for variable in getattr(optimizer, "variables", []):
        if not variable.path.endswith("learning_rate"):
            variable.assign(np.zeros(variable.shape, variable.dtype))


class RaceRecorder(ServerCallback):
    """(seconds, version or round, test accuracy) at every evaluation, each client's updates
    (and, async, their staleness), and the server's peak memory. The clock starts when every
    client is connected (the status line said just before the round driver sends the first
    FIT). ``on_round_end`` stops the run, as SIGTERM does, once ``budget`` seconds passed and
    the target was reached (or ``max_seconds`` passed)."""

    def __init__(self, target: float, budget: float, max_seconds: float) -> None:
        self.target, self.budget, self.max_seconds = target, budget, max_seconds
        self.start: float | None = None
        self.evaluations: list = []  # [seconds, round, accuracy]
        self.updates: dict[str, int] = {}  # client -> updates folded
        self.staleness: dict[str, list] = {}  # client -> staleness of each (async)
        self.peak = 0
        self.reached_at: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start if self.start is not None else 0.0

    def on_status(self, server, line: str, warning: bool = False) -> None:
        # Said by train() just before the round driver starts. (Not the gateway's count: the
        # "waiting for clients" lines are said with the gateway's lock held.)
        if self.start is None and line.startswith(f"{server.num_clients} clients connected"):
            self.start = time.monotonic()

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        if self.start is None:  # in case that line changes: the first FIT is about to go
            self.start = time.monotonic()

    def on_fit_result(self, server, server_round, client, num_examples, metrics) -> None:
        self.updates[client] = self.updates.get(client, 0) + 1

    def on_evaluate_end(self, server, server_round: int, logs: dict) -> None:
        accuracy = logs.get("test_accuracy")
        self.evaluations.append([self.elapsed(), server_round, accuracy])
        if self.reached_at is None and accuracy is not None and accuracy >= self.target:
            self.reached_at = self.elapsed()

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        for client, staleness in logs.get("updates", []):  # async only
            self.staleness.setdefault(client, []).append(staleness)
        self.peak = max(self.peak, proc_status()["VmHWM"])
        elapsed = self.elapsed()
        if elapsed >= self.budget and (self.reached_at is not None or elapsed >= self.max_seconds):
            signal.raise_signal(signal.SIGTERM)  # FL_Server's own stop: clients are told


def async_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("--method", "--model", "--logdir", "--out"):
        parser.add_argument(name, required=True)
    for name, kind in (("--clients", int), ("--budget", float), ("--max-seconds", float),
                       ("--target", float), ("--buffer-size", int), ("--mixing", float),
                       ("--server-lr", float), ("--staleness-exponent", float)):
        parser.add_argument(name, type=kind, required=True)
    args = parser.parse_args(argv)

    from pyfed.server import FL_Server
    from pyfed.strategy import FedAsync, FedAvg, FedBuff

    from .server_probes import IdleBaseline

    _, _, test_x, test_y = digits_split(args.clients)
    model, options = new_model(args.model), {}
    if args.model == "keras":
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.evaluate(test_x, test_y, verbose=0)  # Keras' first call, before the baseline
    strategy = {"fedavg": lambda: FedAvg(),
                "fedasync": lambda: FedAsync(mixing=args.mixing,
                                             staleness_exponent=args.staleness_exponent),
                "fedbuff": lambda: FedBuff(buffer_size=args.buffer_size,
                                           server_learning_rate=args.server_lr,
                                           staleness_exponent=args.staleness_exponent),
                }[args.method]()
    recorder = RaceRecorder(args.target, args.budget, args.max_seconds)
    idle = IdleBaseline(lambda baseline: print("BENCH ready", json.dumps(
        {"port": server.port}), flush=True))
    # rounds only bounds the run: the recorder stops it at the budget.
    rounds = 10_000 if args.method == "fedavg" else 1_000_000
    server = FL_Server(model, args.clients, rounds, port=0, logdir=args.logdir, verbose=0,
                       wait_timeout=120, test_data=(test_x, test_y), strategy=strategy,
                       callbacks=[idle, recorder], **options)
    stopped = False
    try:
        server.train()
    except SystemExit as stop:  # the recorder's SIGTERM: FL_Server exits with 130
        stopped = stop.code == 130
        if not stopped:
            raise
    emit(args.out, {"method": args.method, "strategy": repr(strategy), "stopped": stopped,
                    "evaluations": recorder.evaluations, "updates": recorder.updates,
                    "staleness": recorder.staleness,
                    "reached_at": recorder.reached_at, "seconds": recorder.elapsed(),
                    "baseline": idle.status, "peak": max(recorder.peak, proc_status()["VmHWM"]),
                    "hwm_reset": idle.hwm_reset,
                    "tensorflow_imported": "tensorflow" in sys.modules})


def async_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sleep", type=float, required=True)
    parser.add_argument("--slow-factor", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    args = parser.parse_args(argv)

    from pyfed.client import FL_Client
    from pyfed.errors import ServerStopped
    from pyfed.models import SoftmaxRegression, defaults
    from pyfed.models.keras_adapter import KerasAdapter

    xs, ys, _, _ = digits_split(args.clients)
    data, target = xs[args.index], ys[args.index]
    fit_seconds: list[float] = []
    adapter_class = sleepy(SoftmaxRegression if args.model == "softmax" else KerasAdapter,
                           args.sleep, args.slow_factor, fit_seconds)

    # One model for every run, compiled with the settings FL_Client.train passes (so it keeps
    # it) and warmed by a first fit: Keras traces its train step once, before any run is timed.
    # Each run then starts from the server's weights and a fresh optimizer state.
    model = (adapter_class(64, 10, seed=0) if args.model == "softmax"
             else adapter_class(new_model("keras")))
    if args.model == "keras":
        model.compile(loss=defaults.LOSS, optimizer=None, lr=defaults.LR,
                      metrics=list(defaults.METRICS))
    model.fit(data, target, {"epochs": 1, "batch_size": 32, "verbose": 0})
    print("BENCH warm", flush=True)
    for line in sys.stdin:  # "PORT METHOD" per run; EOF ends the child
        port, method = line.split()
        fit_seconds.clear()
        reset_optimizer(model)
        client = FL_Client(f"client_{args.index}", data, target, server_port=int(port),
                           model=model, verbose=0, logdir=args.logdir, connect_timeout=60)
        try:
            client.train(epochs=args.epochs, batch_size=32)
            outcome = "finished"
        except ServerStopped:  # the server stopped itself at its budget
            outcome = "stopped"
        print("BENCH trained", json.dumps({
            "method": method, "outcome": outcome, "jobs": client.rounds_trained,
            "fit_seconds": sorted(fit_seconds)[len(fit_seconds) // 2] if fit_seconds else None,
            "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)
