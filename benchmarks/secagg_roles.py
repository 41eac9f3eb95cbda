"""The SecAgg cost benchmark's children (roles ``secagg_server`` and ``secagg_client``).

Both live for a whole client count, so both modes meet the same (warmed) processes. The
server child reads ``MODE OUT`` lines on its stdin, runs that federation, plain ``FedAvg`` or
``SecureAggregation(FedAvg())``, writes its History's per-round time and bytes, its CPU per
round and the final model to ``OUT``, and answers ``BENCH done``. A client child reads
``PORT MODE`` lines, takes part in that server's run, and answers ``BENCH trained {...}``.

Two workloads (``--workload``). ``echo``: a client's "training" moves every weight of the
global model by a fixed small amount (``1e-3 * index``): free, so a round's time is the
protocol's, not the model's, and deterministic, so the plain and the secure run must end on the
same model up to SecAgg's quantization error. ``keras``: the usual Keras path, each client
fitting ``pyfed.data.digits_model(hidden=1500)`` for 1 epoch (batch 32, Adam at 0.005) on its
share of scikit-learn's digits (``split_for_clients``, seed 0); the server then tests the final
model on the split's held-out part. TensorFlow loads once per client child, before any run."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import numpy as np
from pyfed.callbacks import ServerCallback

from .model import SCALE_SHAPES, seeded_weights
from .records import emit

MODES = ("plain", "secure")
WORKLOADS = ("echo", "keras")
KERAS_HIDDEN = 1500  # digits_model(1500): 112,510 parameters, about the 100k
KERAS_TRAINING = {"epochs": 1, "batch_size": 32, "lr": 0.005,
                  "loss": "sparse_categorical_crossentropy", "optimizer": "adam",
                  "metrics": ["accuracy"]}


def examples(index: int) -> int:
    # At most SecureAggregation's max_weight (1000) for 20 clients: the secure sum weighs
    # min(n / 1000, 1), which then is proportional to n, as plain FedAvg weighs.
    return 50 * index


class RoundCpu(ServerCallback):
    """The server process's CPU seconds per round (on_round_begin to on_round_end, the span
    of History's round_seconds): with the wall time, where a round's time goes."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        self._start = time.process_time()

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        self.seconds.append(time.process_time() - self._start)


def digits_shares(clients: int):
    """``split_for_clients`` of the digits, as the tests split them: (xs, ys, test_x, test_y)."""
    from pyfed import data

    return data.split_for_clients(*data.load_digits(), clients, seed=0)


def keras_model():
    """The keras workload's model; seeded, so every run of a client count starts alike."""
    import keras

    from pyfed import data

    keras.utils.set_random_seed(0)
    return data.digits_model(hidden=KERAS_HIDDEN)


def secagg_server(argv: list[str]) -> None:
    """Reads "MODE OUT" lines on its stdin, runs that federation, answers ``BENCH done``;
    EOF ends the child."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=WORKLOADS, default="echo")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    args = parser.parse_args(argv)

    from pyfed.models import NumpyModel

    # One Keras model for every run, set back to its first weights before each: a model built
    # later would have other layer names ("dense_2"), so another spec than the clients' model.
    model = keras_model() if args.workload == "keras" else None  # TensorFlow loads here
    initial = None if model is None else model.get_weights()
    for name in ("pyfed.server", "pyfed.privacy.secagg.protocol"):  # before any run
        importlib.import_module(name)
    print("BENCH warm", flush=True)
    for line in sys.stdin:
        mode, out = line.split()
        if model is None:
            serve_once(args, NumpyModel(seeded_weights(SCALE_SHAPES)), mode, out)
        else:
            model.set_weights(initial)
            serve_once(args, model, mode, out)
        print("BENCH done", flush=True)


def serve_once(args, model, mode: str, out: str) -> None:
    from pyfed.server import FL_Server
    from pyfed.strategy import FedAvg

    # No federated evaluation: a round is FIT and its aggregation.
    strategy = FedAvg(fraction_evaluate=0.0, min_fit_clients=args.clients,
                      min_available_clients=args.clients)
    if mode == "secure":
        from pyfed.privacy import SecureAggregation
        strategy = SecureAggregation(strategy)
    cpu = RoundCpu()
    server = FL_Server(model, args.clients, args.rounds,
                       port=0, logdir=args.logdir, verbose=0, wait_timeout=120,
                       round_timeout=120, round_retries=0, strategy=strategy, callbacks=[cpu])
    server.start()
    print("BENCH ready", json.dumps({"port": server.port}), flush=True)
    history = server.train().to_dict()["history"]
    final = np.concatenate([np.asarray(w, np.float64).ravel()
                            for w in server.adapter.get_weights()])
    np.save(f"{out}.npy", final)
    test = {}
    if args.workload == "keras":
        _, _, test_x, test_y = digits_shares(args.clients)
        test = server.test(test_x, test_y, KERAS_TRAINING["loss"], KERAS_TRAINING["metrics"])
    emit(out, {"mode": mode, "workload": args.workload, "strategy": repr(strategy),
               "parameters": final.size, "round_seconds": history["round_seconds"],
               "bytes_in": history["bytes_in"], "bytes_out": history["bytes_out"],
               "participants": history["participants"], "cpu_seconds": cpu.seconds,
               "test_accuracy": test.get("accuracy"),
               "tensorflow_imported": "tensorflow" in sys.modules})


def secagg_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workload", choices=WORKLOADS, default="echo")
    parser.add_argument("--clients", type=int, default=0, help="the keras workload's split")
    parser.add_argument("--logdir", required=True)
    args = parser.parse_args(argv)

    from pyfed.client import FL_Client
    from pyfed.models.base import as_adapter

    if args.workload == "keras":  # TensorFlow loads here, once for every run
        xs, ys, _, _ = digits_shares(args.clients)
        # One adapter for every run: compiled once, so Keras traces its training step once
        # (in run 1's warm-up round), not again in every run (seconds per client).
        x, y, model = xs[args.index - 1], ys[args.index - 1], as_adapter(keras_model())
        training = KERAS_TRAINING
    else:
        x, y, model, training = None, None, nudge_model(args.index), {}
    # The secure round's modules (cryptography) load on first use: load them before any run.
    importlib.import_module("pyfed.privacy.secagg.protocol")
    print("BENCH warm", flush=True)
    for line in sys.stdin:  # "PORT MODE" per run; EOF ends the child
        port, mode = line.split()
        cpu = time.process_time()
        if args.workload == "keras":
            fresh_optimizer(model.model)
        client = FL_Client(f"client_{args.index}", x, y, server_port=int(port),
                           model=model, verbose=0, logdir=args.logdir, connect_timeout=60)
        client.train(**training)
        print("BENCH trained", json.dumps({
            "mode": mode, "rounds": client.rounds_trained,
            "cpu_seconds": time.process_time() - cpu,
            "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)


def nudge_model(index: int):
    """The echo workload's model: "training" adds ``1e-3 * index`` to every weight."""
    from pyfed.models import NumpyModel
    from pyfed.models.base import FitOutcome

    step = np.float32(1e-3 * index)

    class Nudge(NumpyModel):
        def fit(self, data, target, config):
            self.weights = [w + step for w in self.weights]
            return FitOutcome(num_examples=self.num_examples)

    return Nudge(seeded_weights(SCALE_SHAPES), num_examples=examples(index))


def fresh_optimizer(model) -> None:
    """Adam as a new federation's client starts it (zero moments, step 0; its learning rate
    kept), without compiling again: the keras workload's runs start alike."""
    optimizer = getattr(model, "optimizer", None)
    for variable in (optimizer.variables if optimizer is not None else []):
        if "learning_rate" not in variable.name:
            variable.assign(np.zeros(variable.shape, variable.dtype))
