"""Processes for the secure-aggregation tests: ``python secagg_roles.py server|client ...``.

The clients are deterministic: client i's "training" moves every weight of the global model by
``shift(i)`` and reports ``100 * i`` examples, so the expected FedAvg model is known exactly and
a secure run can be compared with a plain one. ``--die-at-fit`` makes a client exit the moment
its FIT arrives (after it sent keys and shares: the dropout SecAgg must recover from).

The server prints ``RESULT {json}`` with the final weights and the history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from pyfed.components import FL_Client, FL_Server
from pyfed.models import NumpyModel
from pyfed.models.base import FitOutcome


def initial_weights(shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for shape in shapes]


def shift(index: int, shapes) -> list[np.ndarray]:
    """Client ``index``'s change to each tensor: different per client and per coordinate."""
    rng = np.random.default_rng(100 + index)
    return [rng.uniform(-0.5, 0.5, shape).astype(np.float32) for shape in shapes]


def parse_shapes(text: str):
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


class ShiftModel(NumpyModel):
    """Moves the global weights by a fixed shift; ``die_at_fit`` exits the process instead."""

    def __init__(self, index: int, shapes, die_at_fit: bool = False):
        super().__init__(initial_weights(shapes), num_examples=100 * index)
        self.index, self.shapes, self.die_at_fit = index, shapes, die_at_fit

    def fit(self, data, target, config):
        if self.die_at_fit:
            print("DYING at fit", flush=True)
            os._exit(3)
        self.weights = [w + s for w, s in zip(self.weights, shift(self.index, self.shapes))]
        return FitOutcome(num_examples=self.num_examples, metrics={"index": float(self.index)},
                          history={"loss": [1.0 / self.index]})


def make_strategy(args):
    from pyfed.privacy import SecureAggregation
    from pyfed.strategy import FedAvg

    inner = FedAvg(min_fit_clients=args.min_fit, min_available_clients=args.clients)
    if args.dp_options:  # DifferentialPrivacy(clipping="client") inside the secure sum
        from pyfed.privacy import DifferentialPrivacy

        inner = DifferentialPrivacy(inner, clipping="client", **json.loads(args.dp_options))
    if args.plain:
        return inner
    options = json.loads(args.secagg_options)
    return SecureAggregation(inner, **options)


def server(args) -> None:
    shapes = parse_shapes(args.shapes)
    srv = FL_Server(NumpyModel(initial_weights(shapes)), args.clients, args.rounds,
                    port=args.port, logdir=args.logdir, strategy=make_strategy(args),
                    round_timeout=args.round_timeout, round_retries=args.round_retries)
    srv.start()
    print(f"READY {srv.port}", flush=True)
    history = srv.train()
    print("RESULT " + json.dumps({"history": history.to_dict(),
                                  "weights": [w.tolist() for w in srv.adapter.get_weights()]}),
          flush=True)


def client(args) -> None:
    shapes = parse_shapes(args.shapes)
    c = FL_Client(f"client_{args.index}", None, None, server_port=args.port, logdir=args.logdir,
                  model=ShiftModel(args.index, shapes, args.die_at_fit), connect_timeout=30)
    c.train()
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained}), flush=True)


def federation_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The options of a secure federation's server and clients, shared with the hostile roles
    (tests/secagg_hostile_roles.py), so an option added here reaches both."""
    if required:
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--logdir", required=True)
    else:
        parser.add_argument("--port", type=int, default=0)
        parser.add_argument("--logdir", default=".")
    parser.add_argument("--shapes", default="20x10,10")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--min-fit", type=int, default=2)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--round-retries", type=int, default=0)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--secagg-options", default="{}")
    parser.add_argument("--dp-options", default=None, help="JSON: DifferentialPrivacy options")
    parser.add_argument("--index", type=int, default=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    federation_arguments(parser)
    parser.add_argument("--die-at-fit", action="store_true")
    args = parser.parse_args()
    {"server": server, "client": client}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
