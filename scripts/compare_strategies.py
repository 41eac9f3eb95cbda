#!/usr/bin/env python
"""Strategies on a label-skewed split: FedAvg, FedProx, FedAdam, FedYogi on digits.

    .venv/bin/python scripts/compare_strategies.py                  # Dirichlet(0.1), 5 clients
    .venv/bin/python scripts/compare_strategies.py --rounds 20 --alpha 0.3 --json out.json

Each strategy is a real FL_Experiment (a server process and 5 client processes over loopback)
with the same model, seed, data split and rounds. The held-out 20% of digits (stratified) is
the server's test set; accuracy is measured on it after every round (centralized evaluation).
Prints a Markdown table: final and best test accuracy per strategy. Results, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyfed.models import defaults  # first: PyFed keeps TensorFlow's start-up quiet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS)
    parser.add_argument("--lr", type=float, default=defaults.LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mu", type=float, default=0.1, help="FedProx proximal_mu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import keras

    from pyfed import data
    from pyfed.experiment import FL_Experiment
    from pyfed.strategy import FedAdam, FedAvg, FedProx, FedYogi

    x, y = data.load_digits()
    clients_x, clients_y, test_x, test_y = data.split(
        x, y, args.clients, "dirichlet", server_fraction=0.2, seed=args.seed, alpha=args.alpha)
    print(f"digits, Dirichlet({args.alpha}) over {args.clients} clients, {args.rounds} rounds of "
          f"{args.epochs} local epochs (Adam, lr {args.lr}), seed {args.seed}", flush=True)
    data.summary(clients_y, num_classes=10)

    strategies = {
        "FedAvg": lambda: FedAvg(),
        f"FedProx (mu={args.mu:g})": lambda: FedProx(proximal_mu=args.mu),
        "FedAdam (eta=0.01)": lambda: FedAdam(eta=0.01),
        "FedYogi (eta=0.01)": lambda: FedYogi(eta=0.01),
    }
    rows = []
    for name, make in strategies.items():
        keras.utils.set_random_seed(args.seed)
        model = data.digits_model()
        started = time.monotonic()
        experiment = FL_Experiment(args.clients, clients_x, clients_y, test_x, test_y, port=0,
                                   logdir="pyfed_logs", run_name=f"compare-{name.split()[0]}",
                                   verbose=0, seed=args.seed, strategy=make(),
                                   server_options={"test_data": (test_x, test_y),
                                                   "loss": "sparse_categorical_crossentropy",
                                                   "metrics": ["accuracy"]})
        _, history = experiment.run(model, rounds=args.rounds, epochs=args.epochs,
                                    batch_size=defaults.BATCH_SIZE, lr=args.lr,
                                    optimizer=defaults.OPTIMIZER, loss=defaults.LOSS,
                                    metrics=list(defaults.METRICS))
        accuracy = history.history["test_accuracy"]
        rows.append({"strategy": name, "final": accuracy[-1], "best": max(accuracy),
                     "curve": accuracy, "seconds": time.monotonic() - started})
        print(f"{name}: final {accuracy[-1]:.4f}, best {max(accuracy):.4f} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)

    marks = sorted({r for r in (5, 10, args.rounds) if r <= args.rounds})
    print(f"\nDirichlet({args.alpha}), {args.clients} clients, {args.epochs} local epochs per round; "
          "test accuracy on the held-out 20% after round N:\n")
    print("| strategy | " + " | ".join(f"round {r}" for r in marks) + " | best |")
    print("| --- | " + " | ".join("---" for _ in marks) + " | --- |")
    for row in rows:
        cells = " | ".join(f"{row['curve'][r - 1]:.4f}" for r in marks)
        print(f"| {row['strategy']} | {cells} | {row['best']:.4f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
