"""How long FL_Experiment takes to start: time to the first round, and in total, for Keras clients.

    .venv/bin/python -m benchmarks.experiment_startup                 # 1 and 10 clients, 2 repeats
    .venv/bin/python -m benchmarks.experiment_startup --clients 10 --repeats 1 --json start.json

Each run is one ``FL_Experiment.run`` in this process, as a user's script does: scikit-learn's
digits split over N clients, ``digits_model()`` (a 64-64-10 Keras MLP), ``--rounds`` (2) rounds
of 1 epoch, batch 32, Adam. Measured from the call to ``run``:

* ready: until the last client begins its first ``fit`` (a Keras callback in each client
  stamps the wall clock), i.e. every client process has started, imported Keras, connected,
  passed the handshake, built and compiled the model and checked its data: the start-up. (The
  server's round 1 begins earlier, once every client has passed the handshake: a client
  connects before it imports Keras, which it needs only to build the model WELCOME describes.)
* round 1 done: until the server ends round 1 (a server callback stamps it): the start-up plus
  each client's first ``fit``, which traces its Keras functions;
* total: until ``run`` returns (every process reaped, the final model tested).

Backends (``--backends``): ``local-spawn``, the local backend's start before this change (a
fresh interpreter per client, started once the server child listens; selected with
``PYFED_START_METHOD=spawn``), and ``local``, its start now (clients forked from one fork server
that imported Keras once, alongside the server child; :mod:`pyfed.sim.forked`). Another backend
is one entry in :data:`BACKENDS` (FL_Experiment's keyword arguments and environment), and
:func:`measure` takes its name. Runs alternate between the backends (ABBA order over the
repeats), so a machine growing busier or quieter hits all alike. The table gives the median
[min-max] over the repeats, and the issue's target, "time to the first round with 10 clients at
most 1.5x that with one client", taken on "ready" (and shown on "round 1 done" too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyfed.callbacks import ServerCallback

# name -> (FL_Experiment keyword arguments, environment for the run). A new backend is a line.
BACKENDS = {
    "local-spawn": ({}, {"PYFED_START_METHOD": "spawn"}),
    "local": ({}, {"PYFED_START_METHOD": "fork"}),
    # A local Ray the experiment starts and stops (its start-up is in the times), on loopback;
    # a fifth of a CPU per actor, so that 10 actors fit on 2 cores as 10 processes do.
    "ray": ({"backend": "ray", "client_resources": {"num_cpus": 0.2}},
            {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}),
}
# Without --backends: the ones whose dependencies are installed (Ray is an extra).
try:
    import importlib.util as _util

    DEFAULT_BACKENDS = [b for b in BACKENDS if b != "ray" or _util.find_spec("ray")]
except ImportError:  # pragma: no cover
    DEFAULT_BACKENDS = ["local-spawn", "local"]
TARGET_CLIENTS, TARGET_RATIO = 10, 1.5


class RoundStamps(ServerCallback):
    """In the server process: the wall-clock time round 1 ends, to a JSON file."""

    def __init__(self, path: str):
        self.path = path

    def on_round_end(self, server, server_round, logs) -> None:
        if server_round == 1:
            with open(self.path, "w") as file:
                json.dump({"round1_end": time.time()}, file)


def fit_stamper(path: str):
    """A Keras callback appending ``{"pid", "time"}`` when a client's ``fit`` begins. Made in a
    function, so cloudpickle carries the class by value (no import of this module there)."""
    import keras

    class FitStamper(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            with open(path, "a") as file:
                file.write(json.dumps({"pid": os.getpid(), "time": time.time()}) + "\n")

    return FitStamper()


def first_fits(path: Path) -> dict[int, float]:
    """Each client process's first fit's begin time."""
    found: dict[int, float] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found.setdefault(record["pid"], record["time"])
    return found


def measure(backend: str, clients: int, rounds: int, workdir: Path, timeout: float) -> dict:
    """One experiment on ``backend`` with ``clients`` Keras clients; its times in seconds."""
    from pyfed import data
    from pyfed.experiment import FL_Experiment

    options, environment = BACKENDS[backend]
    x, y = data.load_digits()
    clients_x, clients_y, test_x, test_y = data.split_for_clients(x, y, clients, seed=1)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{backend}-{clients}-", dir=workdir))
    stamps, fits = run_dir / "stamps.json", run_dir / "fits.jsonl"
    experiment = FL_Experiment(clients, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=run_dir / "logs", verbose=0, timeout=timeout,
                               server_options={"callbacks": [RoundStamps(str(stamps))]},
                               fit_callbacks=[fit_stamper(str(fits))], **options)
    model = data.digits_model()
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        started = time.time()
        experiment.run(model, rounds=rounds, epochs=1, batch_size=32, lr=0.005,
                       optimizer="adam", loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
        total = time.time() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    first = first_fits(fits)
    if len(first) != clients:
        raise RuntimeError(f"{backend}: {len(first)} client processes began a fit, not {clients}")
    return {"backend": backend, "clients": clients, "ready": max(first.values()) - started,
            "round1_done": json.loads(stamps.read_text())["round1_end"] - started,
            "total": total, "accuracy": experiment.test_results["accuracy"]}


def run(backends, clients, rounds: int, repeats: int, timeout: float) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyfed-startup-bench-") as scratch:
        for repeat in range(repeats):
            order = list(backends) if repeat % 2 == 0 else list(backends)[::-1]
            for backend in order:
                for count in clients:
                    print(f"... experiment start-up: {backend}, {count} clients (run "
                          f"{repeat + 1}/{repeats})", file=sys.stderr, flush=True)
                    runs.append(measure(backend, count, rounds, Path(scratch), timeout))
    return runs


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for backend in dict.fromkeys(r["backend"] for r in runs):
        for clients in dict.fromkeys(r["clients"] for r in runs):
            mine = [r for r in runs if r["backend"] == backend and r["clients"] == clients]
            if mine:
                rows.append({"backend": backend, "clients": clients, "runs": len(mine), **{
                    key: [statistics.median(r[key] for r in mine), min(r[key] for r in mine),
                          max(r[key] for r in mine)]
                    for key in ("ready", "round1_done", "total", "accuracy")}})
    return rows


def ratios(rows: list[dict], key: str = "ready") -> dict[str, float]:
    """Per backend: the median ``key`` time with TARGET_CLIENTS clients / with 1 client."""
    found = {}
    for backend in dict.fromkeys(row["backend"] for row in rows):
        by_count = {row["clients"]: row[key][0] for row in rows if row["backend"] == backend}
        if 1 in by_count and TARGET_CLIENTS in by_count:
            found[backend] = by_count[TARGET_CLIENTS] / by_count[1]
    return found


def report(rows: list[dict], rounds: int) -> str:
    def cell(values, digits=1):
        median, low, high = values
        return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"

    lines = [f"FL_Experiment start-up: Keras digits_model on digits, {rounds} rounds of 1 epoch; "
             f"{os.cpu_count()} cores; seconds from run(), median [min-max] over the runs", "",
             f"{'backend':<12} {'clients':>7}  {'ready':>18}  {'round 1 done':>18}  "
             f"{'total':>18}  {'accuracy':>8}"]
    for row in rows:
        lines.append(f"{row['backend']:<12} {row['clients']:>7}  {cell(row['ready']):>18}"
                     f"  {cell(row['round1_done']):>18}  {cell(row['total']):>18}  "
                     f"{row['accuracy'][0]:>8.3f}")
    lines.append("")
    done = ratios(rows, "round1_done")
    for backend, ratio in ratios(rows).items():
        verdict = "met" if ratio <= TARGET_RATIO else "missed"
        lines.append(f"{backend}: ready with {TARGET_CLIENTS} clients / with 1 client = "
                     f"{ratio:.2f}x (target <= {TARGET_RATIO:g}x: {verdict}); round 1 done: "
                     f"{done[backend]:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS),
                        default=DEFAULT_BACKENDS)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, TARGET_CLIENTS])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each experiment's waits are allowed (default 300)")
    parser.add_argument("--json", help="also write every run and the summary here")
    args = parser.parse_args(argv)
    if not (all(1 <= n <= 50 for n in args.clients) and 1 <= args.rounds <= 20
            and 1 <= args.repeats <= 10 and args.timeout > 0):
        parser.error("expected 1-50 clients, 1-20 rounds, 1-10 repeats, a positive timeout")
    runs = run(args.backends, args.clients, args.rounds, args.repeats, args.timeout)
    rows = summarise(runs)
    print(report(rows, args.rounds), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"runs": runs, "rows": rows, "ratios": ratios(rows),
                       "round1_done_ratios": ratios(rows, "round1_done")}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
