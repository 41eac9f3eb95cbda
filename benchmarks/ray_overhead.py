"""Per-round overhead of numpy virtual clients on the Ray backend against the local client threads.

    .venv/bin/python -m benchmarks.ray_overhead                     # 100 and 1,000 clients
    .venv/bin/python -m benchmarks.ray_overhead --clients 100 --actors 4 --rounds 5 \\
        --json ray_overhead.json

(from the repository's root, with it on ``PYTHONPATH`` so Ray's worker processes import this
checkout's ``pyfed``; needs ``pip install 'pyfed[ray]'``.)

For each client count N, the same federation runs on two sides, ``--repeats`` (2) times each
in ABBA order (local, Ray, Ray, local), so that a machine growing busier or quieter hits both
alike:

* **local threads**: the scale section's run (:func:`benchmarks.fleet.run_thread_clients`): one
  ``FL_Server`` child and N echo ``FL_Client`` threads spread over ``--actors`` (4) client
  processes, each client with its own socket and handshake;
* **Ray**: ``FL_Experiment(backend="ray", clients_per_actor=ceil(N / actors))``: the experiment's
  own server child, and ``--actors`` Ray actors on a local Ray (started once for the whole
  benchmark, on 127.0.0.1, shut down at the end), each hosting its share of the N virtual
  clients: one ``FL_Client`` thread and connection per virtual client, all taking turns on the
  actor's one model (:mod:`pyfed.sim.ray_actor`). The actors split the machine's CPUs (each asks
  for ``cpus / actors``, at most 1).

The model is small so that hosting and protocol overhead shows, not arithmetic: the issue's
virtual-clients model, ``SoftmaxRegression(64, 10)``, 650 float32 parameters (2.6 kB;
``--features`` and ``--classes`` make it larger). The servers hold it (the Ray experiment's
server rebuilds it from its description, so it must be a model PyFed can rebuild); every client
is a ``NumpyModel`` echo of its shapes: its ``fit`` returns the weights it received (on Ray,
loaded into and read back from the actor's shared model, which is part of what a virtual client
costs). Every client takes part in every round (FedAvg's defaults: ``fraction_fit=1.0`` and
``fraction_evaluate=1.0``, so a round is FIT and EVALUATE to all N), as in the local threads'
run: both sides move the same messages, and the difference is where the clients live. (The
issue's 10% sample would make a Ray round ten times lighter than a local-threads round of the
same N.)

A round's time is the server's own ``history["round_seconds"]`` (FIT posted -> every result
folded -> the new global model set -> evaluation done), the same in both servers. Each run has
``--warmup`` (1) round(s) first, not measured, then ``--rounds`` (8); the table gives medians
[min-max] over every measured round of a side and the ratio Ray / local of the medians. Also: each server's
peak RSS (VmHWM; the local-threads server resets it when it starts listening, the Ray
experiment's server counts from its start), and whether every round had all N participants and
the final model is the initial one (N echoes average back to it).

Measured with the defaults (2 shared cores, other jobs running; 2 min 25 s in all):

| clients | local threads s/round | Ray s/round | ratio Ray/local | server peak RSS local, Ray |
|---|---|---|---|---|
| 100 | 0.095 [0.067-0.113] | 0.091 [0.069-0.146] | 0.96x | 66 MB, 66 MB |
| 1,000 | 2.126 [1.780-3.462] | 2.454 [1.214-3.523] | 1.15x | 101 MB, 101 MB |

A second full run gave 1.35x at 100 clients (0.095 against 0.128 s) and 1.25x at 1,000 (1.980
against 2.485 s). So a round with virtual clients in Ray actors costs up to about a third more
than with the same clients as threads of plain processes, and the spread between runs on a busy
machine is as large as that: most of a round is the server's (a thousand sessions, each a FIT
and an EVALUATE). Ray's own cost is mostly in the start-up (its workers and the actors: the
1,000-client runs took 26-43 s on Ray against 24-29 s locally, start to end).

Every process is bounded by ``--timeout`` per run (the local children by a watchdog that kills
them by PID; the Ray run by the experiment's timeout, whose ``finally`` kills its actors and
ends its server child). 127.0.0.1 only: Ray's node and the servers bind loopback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Before Ray is imported: the local Ray node and its driver then use the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from pyfed.callbacks import ServerCallback  # noqa: E402
from pyfed.sim.ray_backend import restore_handlers  # noqa: E402

from .fleet import client_problems, run_thread_clients  # noqa: E402
from .model import same_weights, seeded_weights  # noqa: E402
from .probes import proc_status  # noqa: E402
from .records import summary  # noqa: E402



class ServerWatch(ServerCallback):
    """In the Ray experiment's server child (handed over by reference: this package is on its
    path): its VmRSS and VmHWM (bytes) after each round, one ``round rss hwm`` line per round in
    ``<folder>/rss.txt``, and PyFed's warnings (a client's session that ended, ...) in
    ``<folder>/warnings.txt``: PyFed's logger has only a NullHandler there."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_train_begin(self, server):
        import logging

        handler = logging.FileHandler(Path(self.folder, "warnings.txt"))
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(relativeCreated).0f ms %(message)s"))
        logging.getLogger("pyfed").addHandler(handler)

    def on_round_end(self, server, server_round, logs):
        status = proc_status()
        with open(Path(self.folder, "rss.txt"), "a") as file:
            file.write(f"{server_round} {status['VmRSS']} {status['VmHWM']}\n")


def actor_cpus(actors: int) -> float:
    """Each actor's share of the machine's CPUs (Ray's rule: a fraction only below 1)."""
    return min(1.0, math.floor((os.cpu_count() or 1) / actors * 100) / 100)


def run_local(clients: int, actors: int, rounds: int, shapes, timeout: float,
              workdir: Path) -> dict:
    workdir.mkdir(parents=True)
    run = run_thread_clients("local", clients, math.ceil(clients / actors), rounds,
                             shapes, timeout, workdir)
    server = run["server"]
    return {"round_seconds": server["round_seconds"], "participants": server["participants"],
            "peak_rss": server["status"]["VmHWM"], "processes": run["processes"],
            "problems": client_problems(run)}


def run_ray(clients: int, actors: int, rounds: int, shapes, timeout: float,
            workdir: Path) -> dict:
    from pyfed.errors import PyFedError
    from pyfed.experiment import FL_Experiment
    from pyfed.models import NumpyModel, SoftmaxRegression

    per_actor = math.ceil(clients / actors)
    workdir.mkdir(parents=True)
    rss, warnings = workdir / "rss.txt", workdir / "warnings.txt"
    echo = NumpyModel([np.zeros(s, dtype=np.float32) for s in shapes])
    # The clients bring their own (echo) model, so their data is never read: one example each.
    x, y = np.zeros((1, 1), dtype=np.float32), np.zeros(1, dtype=np.int64)
    experiment = FL_Experiment(
        clients, [x] * clients, [y] * clients, None, None, port=0,
        logdir=workdir / "logs", verbose=0, timeout=timeout,
        server_options={"wait_timeout": timeout * 0.8, "round_timeout": timeout * 0.8,
                        "max_connections": max(1024, clients + 64),
                        "callbacks": [ServerWatch(workdir)]},
        client_options={"model": echo, "timeout": timeout * 0.8,
                        "connect_timeout": timeout * 0.8, "max_retries": 0},
        backend="ray", client_resources={"num_cpus": actor_cpus(actors)},
        clients_per_actor=per_actor)
    (features, classes), _ = shapes
    model = SoftmaxRegression(features, classes)
    model.set_weights(seeded_weights(shapes))  # the local threads' server starts from these too
    problems = []
    try:
        experiment.run(model, rounds=rounds)
    except PyFedError as exc:  # reported, with the server's warnings; the benchmark goes on
        problems.append(str(exc)[:600])
    # When the server finished without some clients, its rounds are still measured.
    history = experiment.history.history if experiment.history is not None else {}
    lines = [line.split() for line in rss.read_text().splitlines()] if rss.exists() else []
    participants = history.get("participants", [])
    warned = warnings.read_text().splitlines() if warnings.exists() else []
    if participants != [clients] * rounds:
        problems.append(f"participants per round {participants}, expected {rounds} x {clients}")
    if experiment.history is not None and not same_weights(model.get_weights(),
                                                           seeded_weights(shapes)):
        problems.append("the averaged echoes differ from the global weights")
    return {"round_seconds": history.get("round_seconds", []),
            "participants": participants,
            "peak_rss": max((int(line[2]) for line in lines), default=None),
            "actors": math.ceil(clients / per_actor), "per_actor": per_actor,
            "nodes": len(set(experiment.placement.values())), "problems": problems,
            "server_warnings": warned[:20], "server_warning_count": len(warned)}


class LocalRay:
    """A local Ray for the whole benchmark, on 127.0.0.1; stops it only if it started it."""

    def __enter__(self):
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            # ray.init leaves its own SIGTERM/SIGINT handlers behind: restored on exit.
            self.handlers = {signum: signal.getsignal(signum)
                             for signum in (signal.SIGTERM, signal.SIGINT)}
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level="WARNING")
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()  # stops the raylet and every worker process it started
            restore_handlers(self.handlers)


def measure(clients=(100, 1000), actors: int = 4, warmup: int = 1, rounds: int = 8,
            repeats: int = 2, features: int = 64, classes: int = 10, timeout: float = 240.0,
            workdir: Path | None = None) -> dict:
    """Each client count: ``repeats`` runs of each side in ABBA order (local, Ray, Ray, local,
    ...), so that a machine growing busier or quieter hits both alike; the analysed result."""
    shapes = [(features, classes), (classes,)]  # SoftmaxRegression(features, classes)'s
    sides = {"local": run_local, "ray": run_ray}
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyfed-ray-bench-") as scratch, LocalRay():
        base = Path(workdir) if workdir is not None else Path(scratch)
        for n in clients:
            done: dict[str, list[dict]] = {"local": [], "ray": []}
            for repeat in range(repeats):
                for side in (("local", "ray") if repeat % 2 == 0 else ("ray", "local")):
                    began = time.monotonic()
                    run = sides[side](n, actors, warmup + rounds, shapes, timeout,
                                      base / f"{side}-{n}-{repeat}")
                    done[side].append({**run, "wall_seconds": time.monotonic() - began})
            runs.append({"clients": n, **{side: merged(done[side], warmup)
                                          for side in ("local", "ray")}})
    return analyse(runs, shapes, actors, warmup, rounds, repeats)


def merged(runs: list[dict], warmup: int) -> dict:
    """One side's runs of one client count as one: every measured round pooled."""
    return {**runs[0],
            "round_seconds": [s for run in runs for s in run["round_seconds"]],
            "measured_seconds": [s for run in runs for s in run["round_seconds"][warmup:]],
            "participants": [p for run in runs for p in run["participants"]],
            "peak_rss": max((run["peak_rss"] for run in runs if run["peak_rss"] is not None),
                            default=None),
            "problems": [p for run in runs for p in run["problems"]],
            "wall_seconds": [run["wall_seconds"] for run in runs],
            **({"server_warnings": [w for run in runs for w in run["server_warnings"]][:20],
                "server_warning_count": sum(run["server_warning_count"] for run in runs)}
               if "server_warnings" in runs[0] else {})}


def analyse(runs: list[dict], shapes, actors: int, warmup: int, rounds: int,
            repeats: int) -> dict:
    rows = []
    for run in runs:
        row = {"clients": run["clients"]}
        for side in ("local", "ray"):
            measured = run[side]["measured_seconds"]
            row[side] = {**run[side], "measured": summary(measured) if measured else None}
        medians = [row[s]["measured"] and row[s]["measured"]["median"] for s in ("local", "ray")]
        row["ratio"] = medians[1] / medians[0] if all(medians) else None
        rows.append(row)
    params = sum(math.prod(s) for s in shapes)
    return {"rows": rows, "parameters": params, "shapes": [list(s) for s in shapes],
            "actors": actors, "warmup": warmup, "rounds": rounds, "repeats": repeats,
            "cpus": os.cpu_count()}


def seconds(measured: dict | None) -> str:
    if measured is None:
        return "-"
    return f"{measured['median']:.3f} [{measured['min']:.3f}-{measured['max']:.3f}]"


def megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f} MB"


def table(result: dict) -> str:
    lines = ["| clients | local threads s/round | Ray s/round | ratio Ray/local | "
             "server peak RSS local, Ray |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        lines.append(f"| {row['clients']:,} | {seconds(row['local']['measured'])} | "
                     f"{seconds(row['ray']['measured'])} | {ratio} | "
                     f"{megabytes(row['local']['peak_rss'])}, "
                     f"{megabytes(row['ray']['peak_rss'])} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    params = result["parameters"]
    text = [f"Ray backend against local client threads: numpy echo clients, {params:,} float32 "
            f"parameters ({params * 4 / 1e3:.1f} kB: SoftmaxRegression{tuple(result['shapes'][0])}); "
            f"every client "
            f"in every round (fraction_fit 1.0, fraction_evaluate 1.0); {result['actors']} "
            f"client processes / Ray actors; {result['repeats']} run(s) of each side in ABBA order, "
            f"each {result['warmup']} warm-up + {result['rounds']} measured rounds; medians "
            f"[min-max] over every measured round of a side, of the server's round_seconds; "
            f"{result['cpus']} CPUs, 127.0.0.1", "", table(result), ""]
    for row in result["rows"]:
        ray_run = row["ray"]
        text.append(f"{row['clients']:,} clients: Ray {ray_run['actors']} actors x "
                    f"{ray_run['per_actor']} virtual clients on {ray_run['nodes']} node(s); "
                    f"wall time of each run (start-up, connecting, every round, shut-down): "
                    f"local {', '.join(f'{s:.1f}' for s in row['local']['wall_seconds'])} s; Ray "
                    f"{', '.join(f'{s:.1f}' for s in ray_run['wall_seconds'])} s")
        for side in ("local", "ray"):
            for problem in row[side]["problems"]:
                text.append(f"PROBLEM ({side}, {row['clients']} clients): {problem}")
        if ray_run["server_warning_count"]:
            text.append(f"  the Ray runs' servers logged {ray_run['server_warning_count']} "
                        "warning(s), e.g.: " + " / ".join(ray_run["server_warnings"][:3]))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--actors", type=int, default=4,
                        help="Ray actors, and local client processes (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds not measured (default 1)")
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds (default 8)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each side per client count, in ABBA order (default 2)")
    parser.add_argument("--features", type=int, default=64,
                        help="the SoftmaxRegression's inputs (default 64)")
    parser.add_argument("--classes", type=int, default=10,
                        help="the SoftmaxRegression's outputs (default 10)")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds allowed for each run before it is stopped (default 240)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if not (all(1 <= n <= 5000 for n in args.clients) and 1 <= args.actors <= 64
            and 0 <= args.warmup <= 10 and 1 <= args.rounds <= 100 and args.timeout > 0
            and 1 <= args.repeats <= 10
            and args.features >= 1 and args.classes >= 2):
        parser.error("expected 1-5000 clients, 1-64 actors, 0-10 warm-up and 1-100 measured "
                     "rounds, 1-10 repeats, a positive timeout, features >= 1 and classes >= 2")
    if any(n < args.actors for n in args.clients):
        parser.error("every client count must be at least --actors")
    result = measure(args.clients, args.actors, args.warmup, args.rounds, args.repeats,
                     args.features, args.classes, args.timeout)
    print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)
    return 1 if any(row[side]["problems"] for row in result["rows"]
                    for side in ("local", "ray")) else 0


if __name__ == "__main__":
    sys.exit(main())
