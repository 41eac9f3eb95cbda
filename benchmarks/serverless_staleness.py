"""Staleness weighting against flwr-serverless's unweighted mixing, when one node is much slower.

    .venv/bin/python -m benchmarks.serverless_staleness                  # seeds 0 1 2
    .venv/bin/python -m benchmarks.serverless_staleness --seeds 0 --kinds polynomial constant

The run (:data:`SCENARIO`): digits, split IID between two asynchronous FederatedNodes (Keras
MLP, real processes, a local folder; :func:`pyfed.serverless.compare_with_standalone`).
``node_1`` trains 30 epochs of about 0.4 s (0.3 s of it a sleep, so its pace does not hang on
the machine's load); ``node_2`` is much slower: its one epoch takes over 3 s. So ``node_1``
mixes ``node_2``'s only update, trained once from the initial model, into every epoch after
the third or so, while that update grows staler, up to 29 epochs.

With ``staleness="constant"`` (what flwr-serverless's AsyncFederatedNode does: FedAvg of the
latest models, whatever their age) ``node_1`` pulls its model halfway back to that old one
every epoch. With FedAsync's polynomial ``(staleness + 1) ** -0.5`` (the FederatedNode's
default) the old update weighs 1/sqrt(30) at the end; ``hinge`` (1 up to 4 epochs, then
``1 / (10 (s - 4) + 1)``) forgets it faster. ``node_2``'s own result is alike in every run: its
peer's update is newer than its own, so no rule discounts it.

The table gives each rule's test accuracy and loss (all ten classes, the held-out quarter of
digits) for the fast and the slow node, as the mean over the seeds with the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SCENARIO = {"nodes": 2, "split": "iid", "mode": "async", "epochs": [30, 1],
            "slow": [0.3, 3.0], "standalone": False}
KINDS = ("polynomial", "constant", "hinge")


def run(staleness: str, seed: int = 0, workdir=None, **overrides) -> dict:
    """One run of the scenario with this staleness rule: each node's test accuracy and loss,
    and the largest staleness the fast node weighed."""
    from pyfed.serverless import compare_with_standalone

    options = {**SCENARIO, **overrides}
    started = time.monotonic()
    result = compare_with_standalone(node_options={"staleness": staleness}, seed=seed,
                                     workdir=workdir, **options)
    fast, slow = result["details"]["federated"][:2]
    return {"staleness": staleness, "seed": seed,
            "fast": {"accuracy": fast["accuracy"], "loss": fast["loss"]},
            "slow": {"accuracy": slow["accuracy"], "loss": slow["loss"]},
            "fast_staleness_max": max(fast["history"].get("staleness_max_fed", [0])),
            "seconds": time.monotonic() - started}


def _summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{min(values):.3f}-{max(values):.3f}]"


def table(runs: list[dict]) -> str:
    lines = ["| staleness | fast node acc | fast node loss | slow node acc | slow node loss |",
             "|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["staleness"] for r in runs):
        mine = [r for r in runs if r["staleness"] == kind]
        cells = [_summary([r[node][what] for r in mine])
                 for node in ("fast", "slow") for what in ("accuracy", "loss")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--json", help="also write every run's numbers to this file")
    args = parser.parse_args(argv)
    runs = []
    for seed in args.seeds:
        for kind in args.kinds:  # one after the other: each rule gets the machine to itself
            outcome = run(kind, seed)
            runs.append(outcome)
            print(f"seed {seed} {kind:>10}: fast acc {outcome['fast']['accuracy']:.3f} loss "
                  f"{outcome['fast']['loss']:.3f} · slow acc {outcome['slow']['accuracy']:.3f} "
                  f"loss {outcome['slow']['loss']:.3f} · fast staleness max "
                  f"{outcome['fast_staleness_max']:.0f} · {outcome['seconds']:.0f} s", flush=True)
    print()
    print(table(runs))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(runs, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
