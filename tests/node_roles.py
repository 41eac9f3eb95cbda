"""A serverless node as a real process, numpy only (no TensorFlow):
``python node_roles.py --folder F --name a --labels 0-4 --mode sync --num-nodes 2 ...``.

The node trains :class:`pyfed.models.SoftmaxRegression` on the digits of its labels (a label
split: the test set has every class), one epoch per ``FederatedNode.update``, and prints
``EPOCH <i> {json}`` after each and ``RESULT {json}`` at the end (test accuracy on all ten
classes). ``--standalone`` trains the same node without federating. A PyFedError ends the
process with one line on stderr and exit status 2, as the ``pyfed`` CLI does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pyfed.cli import configure_logging
from pyfed.data import load_digits
from pyfed.errors import PyFedError
from pyfed.models import SoftmaxRegression

TEST_FRACTION = 0.3


def digits_split(seed: int = 0):
    """Train and test rows of digits: a fixed shuffle, the last 30% (every class) to test."""
    x, y = load_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * (1 - TEST_FRACTION))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def labels(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def run(args) -> dict:
    (x, y), (x_test, y_test) = digits_split()
    mine = np.isin(y, labels(args.labels))
    x, y = x[mine], y[mine]
    model = SoftmaxRegression(64, 10, lr=args.lr, seed=0)  # the same start on every node
    node = None
    if not args.standalone:
        from pyfed.serverless import FederatedNode

        node = FederatedNode(args.folder, args.name, mode=args.mode, num_nodes=args.num_nodes,
                             timeout=args.timeout, staleness=args.staleness)
    try:
        for epoch in range(args.epochs):
            outcome = model.fit(x, y, {"epochs": 1, "batch_size": 32, "round": epoch + 1})
            metrics = {}
            if node is not None:
                weights, metrics = node.update(model.get_weights(), outcome.num_examples,
                                               metrics=outcome.metrics, epoch=epoch)
                model.set_weights(weights)
            print(f"EPOCH {epoch} " + json.dumps(metrics), flush=True)
            time.sleep(args.sleep)
    finally:
        if node is not None:
            node.close()
    loss, _, evaluated = model.evaluate(x_test, y_test, {})
    return {"name": args.name, "accuracy": evaluated["accuracy"], "loss": loss,
            "epochs": args.epochs}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default="")
    parser.add_argument("--name", required=True)
    parser.add_argument("--labels", default="0-9")
    parser.add_argument("--mode", default="sync", choices=["sync", "async"])
    parser.add_argument("--num-nodes", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--staleness", default="polynomial")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--standalone", action="store_true")
    args = parser.parse_args()
    configure_logging(0)  # the node's warnings go to stderr
    try:
        result = run(args)
    except PyFedError as exc:
        print(f"node {args.name}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
