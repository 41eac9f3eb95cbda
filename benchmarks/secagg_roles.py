"""The SecAgg cost benchmark's children (roles ``secagg_server`` and ``secagg_client``).

A server child runs one federation, plain ``FedAvg`` or ``SecureAggregation(FedAvg())``, and
writes its History's per-round time and bytes, its CPU per round and the final model to
``--out``. A client child lives for a whole client count: it reads ``PORT MODE`` lines on its
stdin, takes part in that server's run, and answers ``BENCH trained {...}``; so both modes meet
the same (warmed) processes. Its "training" moves every weight of the global model by a fixed
small amount (``1e-3 * index``): free, so a round's time is the protocol's, not the model's,
and deterministic, so the plain and the secure run must end on the same model up to SecAgg's
quantization error."""

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


def secagg_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server
    from pyfed.strategy import FedAvg

    # No federated evaluation (the clients hold no data): a round is FIT and its aggregation.
    strategy = FedAvg(fraction_evaluate=0.0, min_fit_clients=args.clients,
                      min_available_clients=args.clients)
    if args.mode == "secure":
        from pyfed.privacy import SecureAggregation
        strategy = SecureAggregation(strategy)
    cpu = RoundCpu()
    server = FL_Server(NumpyModel(seeded_weights(SCALE_SHAPES)), args.clients, args.rounds,
                       port=0, logdir=args.logdir, verbose=0, wait_timeout=120,
                       round_timeout=120, round_retries=0, strategy=strategy, callbacks=[cpu])
    server.start()
    print("BENCH ready", json.dumps({"port": server.port}), flush=True)
    history = server.train().to_dict()["history"]
    final = np.concatenate([np.asarray(w, np.float64).ravel()
                            for w in server.adapter.get_weights()])
    np.save(f"{args.out}.npy", final)
    emit(args.out, {"mode": args.mode, "strategy": repr(strategy),
                    "round_seconds": history["round_seconds"],
                    "bytes_in": history["bytes_in"], "bytes_out": history["bytes_out"],
                    "participants": history["participants"], "cpu_seconds": cpu.seconds,
                    "tensorflow_imported": "tensorflow" in sys.modules})


def secagg_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    args = parser.parse_args(argv)

    from pyfed.client import FL_Client
    from pyfed.models import NumpyModel
    from pyfed.models.base import FitOutcome

    step = np.float32(1e-3 * args.index)

    class Nudge(NumpyModel):
        def fit(self, data, target, config):
            self.weights = [w + step for w in self.weights]
            return FitOutcome(num_examples=self.num_examples)

    model = Nudge(seeded_weights(SCALE_SHAPES), num_examples=examples(args.index))
    # The secure round's modules (cryptography) load on first use: load them before any run.
    importlib.import_module("pyfed.privacy.secagg.protocol")
    print("BENCH warm", flush=True)
    for line in sys.stdin:  # "PORT MODE" per run; EOF ends the child
        port, mode = line.split()
        cpu = time.process_time()
        client = FL_Client(f"client_{args.index}", None, None, server_port=int(port),
                           model=model, verbose=0, logdir=args.logdir, connect_timeout=60)
        client.train()
        print("BENCH trained", json.dumps({
            "mode": mode, "rounds": client.rounds_trained,
            "cpu_seconds": time.process_time() - cpu,
            "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)
