"""The FL_Server the serverless Keras tests federate through, as a real process:
``python serverless_roles.py server --port P --strategy FedBuff --rounds R ...``.

It trains the digits MLP (or a numpy softmax regression, ``--model softmax``) with an asynchronous strategy, tests each version on ``--test``
(an .npz of x and y, every class) and prints one ``RESULT {json}`` line at the end.
"""

import argparse
import json

import numpy as np

from pyfed import data
from pyfed.components import FL_Server


def server(args) -> None:
    import pyfed.strategy as strategies

    with np.load(args.test, allow_pickle=False) as archive:
        test = (archive["x"], archive["y"])
    strategy = getattr(strategies, args.strategy)(**json.loads(args.strategy_options))
    if args.model == "softmax":  # numpy only: a node without Keras can join it quickly
        from pyfed.models import SoftmaxRegression

        model = SoftmaxRegression(64, 10)
    else:
        model = data.digits_model()
    keras_only = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
    srv = FL_Server(model, args.clients, args.rounds, port=args.port, strategy=strategy,
                    logdir=args.logdir, run_name=args.run_name, test_data=test,
                    **(keras_only if args.model == "digits" else {}),
                    wait_timeout=args.wait_timeout, round_timeout=args.round_timeout)
    history = srv.train()
    print("RESULT " + json.dumps({"history": history.to_dict(), "run_dir": str(srv.run_dir)}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--strategy", default="FedBuff")
    parser.add_argument("--model", choices=["digits", "softmax"], default="digits")
    parser.add_argument("--strategy-options", default="{}")
    parser.add_argument("--test", required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--run-name", default="async")
    parser.add_argument("--wait-timeout", type=float, default=180.0)
    parser.add_argument("--round-timeout", type=float, default=180.0)
    args = parser.parse_args()
    server(args)


if __name__ == "__main__":
    main()
