"""Test accuracy against epsilon for user-level DP-FedAvg on digits.

    .venv/bin/python -m benchmarks.dp_accuracy                   # eps 1 3 8, clip only, no DP
    .venv/bin/python -m benchmarks.dp_accuracy --rounds 30 --seeds 0 1 2 --json dp.json

Each run is a real federation: an ``FL_Server`` in this process and 20 ``FL_Client`` threads in
one child process, over loopback, training :class:`pyfed.models.SoftmaxRegression` (numpy: a
Keras client would take minutes per setting on a small machine) for ``--rounds`` rounds of one
local epoch. Digits is shuffled once (seed 0): 20% is the test set, the rest is split evenly
over the 20 clients (about 72 examples each).

Settings (``q = fraction_fit = 0.25``: 5 clients a round in expectation):

- ``no DP``: ``FedAvg(fraction_fit=0.25)`` (5 clients sampled without replacement a round);
- ``clip only``: ``DifferentialPrivacy(FedAvg(fraction_fit=0.25), noise_multiplier=0,
  clipping_norm=C)``: Poisson sampling and clipping, no noise (epsilon is infinite);
- ``eps = e``: the same with the noise multiplier z that dp-accounting's RDP accountant says
  spends epsilon ``e`` at delta = 1e-5 over exactly ``--rounds`` rounds (bisection on z).

The table gives the test accuracy (mean over the seeds, [min-max]) and the epsilon reached.
The noise on the mean delta has std ``z C / (q N) = z C / 5`` per coordinate: with only 20
clients, privacy is expensive (DP-FedAvg is meant for thousands of clients per round, where
q N is large and the same epsilon costs far less accuracy). Measured (30 rounds, C = 0.5,
seeds 0-2, on 2 shared cores; about 2 minutes):

| setting | noise multiplier z | epsilon (delta 1e-5) | test accuracy |
|---|---|---|---|
| no DP | - | - | 0.937 [0.933-0.942] |
| clip only | 0.000 | inf | 0.920 [0.908-0.936] |
| eps = 8 | 1.209 | 8 | 0.690 [0.664-0.733] |
| eps = 3 | 2.375 | 3 | 0.347 [0.294-0.394] |
| eps = 1 | 5.840 | 1 | 0.144 [0.081-0.214] |
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .records import mean_range

CLIENTS = 20
Q = 0.25
DELTA = 1e-5
LR = 0.5
TEST_FRACTION = 0.2


def digits_split(num_clients: int = CLIENTS):
    """(clients' x, clients' y, test x, test y): a fixed shuffle, 20% to test."""
    from pyfed.data import load_digits

    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(len(y) * (1 - TEST_FRACTION))
    per_client = cut // num_clients
    return ([x[i * per_client:(i + 1) * per_client] for i in range(num_clients)],
            [y[i * per_client:(i + 1) * per_client] for i in range(num_clients)],
            x[cut:], y[cut:])


def noise_for(epsilon: float, rounds: int) -> float:
    """The smallest z (to 1e-4) whose epsilon after ``rounds`` rounds is at most ``epsilon``."""
    from pyfed.privacy import epsilon as spent

    low, high = 0.05, 100.0
    while high - low > 1e-4:
        middle = (low + high) / 2
        if spent(Q, middle, rounds, DELTA) > epsilon:
            low = middle
        else:
            high = middle
    return high


def clients_child(port: int) -> None:
    """20 FL_Client threads, each training on its share until FINISH."""
    from pyfed.components import FL_Client
    from pyfed.models import SoftmaxRegression

    xs, ys, _, _ = digits_split()
    failures = []

    def one(index: int) -> None:
        try:
            client = FL_Client(f"client_{index:02d}", xs[index], ys[index], server_port=port,
                               model=SoftmaxRegression(64, 10, lr=LR), connect_timeout=60,
                               verbose=0)
            client.train(epochs=1, batch_size=32)
        except Exception as exc:  # noqa: BLE001  (reported, and the exit status says so)
            failures.append(f"client_{index:02d}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


def run(setting: str, z: float | None, clip: float, rounds: int, seed: int,
        logdir: Path) -> dict:
    from pyfed.components import FL_Server
    from pyfed.models import SoftmaxRegression
    from pyfed.privacy import DifferentialPrivacy
    from pyfed.strategy import FedAvg

    _, _, test_x, test_y = digits_split()
    inner = FedAvg(fraction_fit=Q, seed=seed)
    strategy = inner if z is None else DifferentialPrivacy(inner, noise_multiplier=z,
                                                           clipping_norm=clip)
    model = SoftmaxRegression(64, 10, lr=LR, seed=seed)
    server = FL_Server(model, CLIENTS, rounds, port=0, strategy=strategy, logdir=logdir,
                       verbose=0, round_timeout=120, wait_timeout=120)
    server.start()
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.dp_accuracy", "--clients-child",
                              "--port", str(server.port)], stdin=subprocess.DEVNULL)
    try:
        history = server.train()
        status = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    if status != 0:
        raise RuntimeError(f"{setting}: the clients' process exited with status {status}")
    _, _, metrics = model.evaluate(test_x, test_y, {})
    epsilon = history.last("epsilon") if z is not None else None
    return {"setting": setting, "seed": seed, "z": z, "clip": clip, "rounds": rounds,
            "accuracy": metrics["accuracy"], "epsilon": epsilon,
            "participants": sum(history.history["participants"]),
            "seconds": time.monotonic() - started}


def table(runs: list[dict]) -> str:
    lines = ["| setting | noise multiplier z | epsilon (delta 1e-5) | test accuracy |",
             "|---|---|---|---|"]
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == setting]
        z = mine[0]["z"]
        epsilon = mine[0]["epsilon"]
        lines.append(f"| {setting} | {'-' if z is None else f'{z:.3f}'} | "
                     f"{'-' if epsilon is None else f'{epsilon:.3g}'} | "
                     f"{mean_range([r['accuracy'] for r in mine])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--clip", type=float, default=0.5,
                        help="clipping norm C (the local updates' median norm is about 0.8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="also write every run's numbers to this file")
    parser.add_argument("--clients-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients_child:
        clients_child(args.port)
        return 0
    if args.rounds < 1 or args.clip <= 0 or any(e <= 0 for e in args.epsilons):
        parser.error("--rounds must be >= 1, --clip and --epsilons > 0")
    settings = [("no DP", None), ("clip only", 0.0)] + [
        (f"eps = {e:g}", noise_for(e, args.rounds)) for e in sorted(args.epsilons, reverse=True)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyfed-dp-bench-") as tmp:
        for seed in args.seeds:
            for setting, z in settings:
                outcome = run(setting, z, args.clip, args.rounds, seed, Path(tmp))
                runs.append(outcome)
                eps = "" if outcome["epsilon"] is None else f" · epsilon {outcome['epsilon']:.3g}"
                print(f"seed {seed} {setting:>10}: accuracy {outcome['accuracy']:.3f}{eps} · "
                      f"{outcome['participants']} updates · {outcome['seconds']:.0f} s",
                      flush=True)
    print(f"\n{CLIENTS} clients, q = {Q}, {args.rounds} rounds of 1 local epoch, C = "
          f"{args.clip:g}, seeds {' '.join(map(str, args.seeds))}:\n")
    print(table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
