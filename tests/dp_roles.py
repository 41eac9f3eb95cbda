"""Differential-privacy runs as real processes (numpy only): ``python dp_roles.py server|client``.

The server wraps a FedAvg-family strategy in :class:`pyfed.privacy.DifferentialPrivacy` and
records, per round, how far the global model moved (a callback, from the weights before and
after), and the L2 norm of every update it received before clipping (a DifferentialPrivacy
subclass that notes what ``screen`` measured). It prints ``RESULT {json}`` at the end.

Clients: ``softmax`` (SoftmaxRegression on its digits share), ``hostile`` (the same, then adds
1000 to every weight), ``echo`` (a NumpyModel returning the global model unchanged), ``quitter`` (an echo client
whose process exits while training in round 2). Each prints
``CLIENT {json}`` with the rounds it trained and the reason its FINISH gave.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from roles import digits_split, numpy_weights, parse_shapes

from pyfed.components import FL_Client, FL_Server
from pyfed.privacy import DifferentialPrivacy


class RecordingDP(DifferentialPrivacy):
    """DifferentialPrivacy that keeps the norm of each update it screened (before clipping)."""

    received: list

    def screen(self, result):
        result = super().screen(result)
        self.received.append(float(result.delta_norm))
        return result


def moves_recorder(path):
    """A callback writing one JSON line per round: the L2 norm, mean and std of the change of
    the global model's float tensors in that round."""
    from pyfed.callbacks import ServerCallback

    class Moves(ServerCallback):
        def on_round_begin(self, server, server_round, clients):
            self.before = [np.array(w, dtype=np.float64) for w in server.adapter.get_weights()]

        def on_round_end(self, server, server_round, logs):
            after = [np.asarray(w, dtype=np.float64) for w in server.adapter.get_weights()]
            moves = np.concatenate([(a - b).ravel() for a, b in zip(after, self.before)])
            with open(path, "a") as out:
                out.write(json.dumps({"round": server_round, "norm": float(np.linalg.norm(moves)),
                                      "mean": float(moves.mean()), "std": float(moves.std()),
                                      "size": int(moves.size),
                                      "participants": logs["participants"]}) + "\n")

    return Moves()


def server(args) -> None:
    import pyfed.strategy as strategies
    from pyfed.models import NumpyModel, SoftmaxRegression

    inner = getattr(strategies, args.inner)(**json.loads(args.inner_options))
    strategy = RecordingDP(inner, **json.loads(args.dp))
    strategy.received = []
    if args.model == "softmax":
        model, test = SoftmaxRegression(64, 10), digits_split(args.clients)[2:]
    else:
        model, test = NumpyModel(numpy_weights(parse_shapes(args.shapes))), None
    srv = FL_Server(model, args.clients, args.rounds, port=args.port, logdir=args.logdir,
                    strategy=strategy, run_name=args.run_name, resume=args.resume,
                    test_data=test, round_timeout=60, callbacks=[moves_recorder(args.moves)])
    history = srv.train()
    print("RESULT " + json.dumps({
        "history": history.to_dict(), "run_dir": str(srv.run_dir),
        "final_model": str(srv.final_model_path), "received": strategy.received,
        "finish_reason": getattr(srv, "finish_reason", "completed"),
        "clipping_norm": strategy.clipping_norm,
        "epsilon": strategy.epsilon()}, default=_json_number), flush=True)


def _json_number(value):
    return float(value)


def client(args) -> None:
    from pyfed.models import NumpyModel, SoftmaxRegression

    data = target = None
    if args.kind == "echo":
        model = NumpyModel(numpy_weights(parse_shapes(args.shapes)))
    elif args.kind == "quitter":
        model = _quitter_class()(numpy_weights(parse_shapes(args.shapes)))
    else:
        xs, ys, _, _ = digits_split(args.clients)
        data, target = xs[args.index - 1], ys[args.index - 1]
        model = SoftmaxRegression(64, 10) if args.kind == "softmax" else Hostile(64, 10)
    c = FL_Client(f"client_{args.index}", data, target, server_port=args.port,
                  logdir=args.logdir, model=model, connect_timeout=60)
    c.train(epochs=1, batch_size=32)
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained,
                                  "final_reason": c.final_reason}), flush=True)


def _hostile_class():
    from pyfed.models import SoftmaxRegression

    class HostileSoftmax(SoftmaxRegression):
        """Trains, then adds 1000 to every weight: an update of norm 1000 * sqrt(650)."""

        def fit(self, data, target, config):
            outcome = super().fit(data, target, config)
            self.weights = [w + np.float32(1000) for w in self.weights]
            return outcome

    return HostileSoftmax


def _quitter_class():
    from pyfed.models import NumpyModel

    class Quitter(NumpyModel):
        """An echo client whose process dies while training in round 2."""

        def fit(self, data, target, config):
            if int(config.get("round", 1)) == 2:
                print("QUITTING in round 2", flush=True)
                os._exit(3)
            return super().fit(data, target, config)

    return Quitter


def Hostile(*args):  # noqa: N802  (a class made on first use: roles import no model early)
    return _hostile_class()(*args)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--kind", choices=["softmax", "hostile", "echo", "quitter"], default="softmax")
    parser.add_argument("--model", choices=["softmax", "numpy"], default="softmax")
    parser.add_argument("--shapes", default="3x4,4")
    parser.add_argument("--inner", default="FedAvg")
    parser.add_argument("--inner-options", default="{}", help="JSON keyword arguments")
    parser.add_argument("--dp", default="{}", help="JSON DifferentialPrivacy keyword arguments")
    parser.add_argument("--moves", default="moves.jsonl")
    parser.add_argument("--logdir", default="pyfed_logs")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    {"server": server, "client": client}[args.role](args)


if __name__ == "__main__":
    main()
