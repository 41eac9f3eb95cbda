"""``python -m benchmarks``: the options, the sections asked for, and the report. What each
section measures is in the package's docstring (``python -m benchmarks --help`` shows its first
line)."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

import benchmarks
from benchmarks import async_race
from benchmarks.fleet import run_thread_clients
from benchmarks.memory import MEMORY_TARGET, analyse_memory, print_memory_report
from benchmarks.model import LAYERS, SCALE_SHAPES, model_params, model_shapes
from benchmarks.overhead import run_interleaved
from benchmarks.overhead_report import analyse, print_report
from benchmarks.scale import analyse_scale, print_scale_report
from benchmarks.startup import measure_startup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=benchmarks.__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=None,
                        help="client counts to measure, e.g. --clients 3 10 (default 3; with "
                             "--memory-clients or --scale, the overhead section runs only if "
                             "--clients is given)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="measured rounds per client count, after 1 warm-up (default 15, "
                             "minimum 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for each phase before its processes are killed")
    parser.add_argument("--startup-reps", type=int, default=5)
    parser.add_argument("--floor-modes", nargs="+", choices=["threads", "sequential"],
                        default=["threads", "sequential"])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if any ratio (or the memory target) is missed")
    parser.add_argument("--memory-clients", type=int, nargs="+", default=[], metavar="N",
                        help="server peak RSS above its idle baseline on the README model with N "
                             "echo clients (threads), e.g. --memory-clients 3 10 50")
    parser.add_argument("--memory-rounds", type=int, default=3)
    parser.add_argument("--per-process", type=int, default=10,
                        help="client threads per client process in --memory-clients (default 10)")
    parser.add_argument("--pool-size", type=int, default=2,
                        help="the PyFed server's buffer_pool_size in every section (default 2)")
    parser.add_argument("--scale", type=int, nargs="+", default=[], metavar="N",
                        help="one round with N concurrent numpy clients on a 102,538-param model, "
                             "e.g. --scale 1000")
    parser.add_argument("--scale-processes", type=int, default=4,
                        help="client processes the --scale clients are spread over (default 4)")
    parser.add_argument("--scale-rounds", type=int, default=1)
    parser.add_argument("--scale-idle", type=float, default=2.0,
                        help="seconds the --scale server stays idle once all are connected, to "
                             "measure what idle connections cost (default 2)")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="profile the --scale server with this py-spy binary (record, 50 Hz)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~1-2 min): --clients 2 --rounds 5 --startup-reps 2 "
                             "--memory-clients 3 --memory-rounds 2 --scale 100; numbers are "
                             "not for comparison")
    async_race.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients = args.clients or [2]
        args.rounds, args.startup_reps = 5, min(args.startup_reps, 2)
        args.memory_clients = args.memory_clients or [3]
        args.memory_rounds = min(args.memory_rounds, 2)
        args.scale = args.scale or [100]
        args.scale_processes = min(args.scale_processes, 2)
        args.scale_idle = min(args.scale_idle, 0.5)
    if args.clients is None:
        args.clients = [] if (args.memory_clients or args.scale or args.async_race) else [3]
    if args.rounds < 5:
        parser.error(f"--rounds must be at least 5; received {args.rounds}")
    if any(n < 1 or n > 64 for n in args.clients):
        parser.error(f"--clients must be between 1 and 64; received {args.clients}")
    if any(n < 1 or n > 200 for n in args.memory_clients):
        parser.error(f"--memory-clients must be between 1 and 200; received {args.memory_clients}")
    if any(n < 1 or n > 4000 for n in args.scale):
        parser.error(f"--scale must be between 1 and 4000; received {args.scale}")
    for name in ("memory_rounds", "per_process", "pool_size", "scale_processes", "scale_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; received "
                         f"{getattr(args, name)}")
    if args.async_race and not (1 <= args.async_repeats <= 20 and 2 <= args.async_clients <= 20
                                and args.async_sleep >= 0 and args.async_epochs >= 1):
        parser.error("--async-repeats must be 1-20, --async-clients 2-20, --async-sleep >= 0 "
                     "and --async-epochs >= 1")
    if args.py_spy and not os.access(args.py_spy, os.X_OK):
        parser.error(f"--py-spy must be an executable; received {args.py_spy}")

    model_bytes = model_params() * 4
    results = {"model": {"layers": list(LAYERS), "params": model_params(), "bytes": model_bytes,
                         "dtype": "float32"},
               "rounds": args.rounds, "warmup_rounds": 1, "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "numpy": np.__version__,
               "load_average_start": os.getloadavg()[0], "pool_size": args.pool_size,
               "runs": [], "memory": [], "scale": [], "async_race": None}
    with tempfile.TemporaryDirectory(prefix="pyfed-bench-") as tmp:
        workdir = Path(tmp)
        for num_clients in args.clients:
            print(f"... {num_clients} clients: PyFed and floor rounds, interleaved",
                  file=sys.stderr, flush=True)
            pyfed, floors = run_interleaved(num_clients, args.rounds, args.floor_modes,
                                            args.timeout, workdir, args.pool_size)
            results["runs"].append(analyse(num_clients, pyfed, floors, model_bytes))
        if args.clients:
            print("... client start-up", file=sys.stderr, flush=True)
            results["startup"] = measure_startup(args.startup_reps, timeout=60)
        for num_clients in args.memory_clients:
            print(f"... memory: {num_clients} echo clients, README model", file=sys.stderr,
                  flush=True)
            run = run_thread_clients(f"memory-{num_clients}", num_clients, args.per_process,
                                     args.memory_rounds, model_shapes(), args.timeout, workdir,
                                     pool_size=args.pool_size)
            results["memory"].append(analyse_memory(run))
        for num_clients in args.scale:
            print(f"... scale: {num_clients} clients", file=sys.stderr, flush=True)
            per_process = math.ceil(num_clients / args.scale_processes)
            run = run_thread_clients(f"scale-{num_clients}", num_clients, per_process,
                                     args.scale_rounds, SCALE_SHAPES,
                                     max(args.timeout, 60 + num_clients * 0.1), workdir,
                                     pool_size=args.pool_size, idle_seconds=args.scale_idle,
                                     py_spy=args.py_spy)
            results["scale"].append(analyse_scale(run))
        if args.async_race:
            race = async_race.run_race(async_race.settings_from(args), workdir)
            results["async_race"] = async_race.analyse_race(race)
    results["load_average_end"] = os.getloadavg()[0]
    if args.clients:
        print_report(results)
    if results["memory"]:
        print_memory_report(results["memory"], model_bytes, args.per_process, MEMORY_TARGET)
    if results["scale"]:
        print_scale_report(results["scale"])
    if results["async_race"]:
        async_race.print_race_report(results["async_race"])
    if args.quick:
        print("(--quick: a smoke run with few rounds and clients; its numbers are not for "
              "comparisons)")
    if not args.clients:
        print(f"machine: {results['cpus']} CPUs, 1-minute load average "
              f"{results['load_average_start']:.1f} at the start and "
              f"{results['load_average_end']:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = any(r["problems"] for r in results["runs"] + results["memory"] + results["scale"])
    missed = (any(not r["meets_target"] for r in results["runs"])
              or bool(results["async_race"] and results["async_race"]["meets_target"] is False)
              or bool(results["memory"] and results["memory"][-1]["x_model"] >= MEMORY_TARGET))
    return 2 if failed else (1 if args.check and missed else 0)




def run() -> None:
    # A plain `kill` must still run the finally blocks that end and reap the children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError, OSError) as exc:  # children are already reaped
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    run()
