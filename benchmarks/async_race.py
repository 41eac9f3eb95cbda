"""The async race (``--async-race``): sync FedAvg, FedAsync and FedBuff on digits, one after
another, with the same 5 client processes, one of them ``--async-slow-factor`` (4) times
slower (its ``fit`` sleeps 4x what the others' sleep, plus 3x its own compute). Each method's server evaluates the global
model on the held-out test split at every round or version; the race measures the wall time
from the moment every client is connected (the first FIT follows) until the test accuracy first
reaches the target, the accuracy at a fixed wall-clock budget, and the server's peak memory.
The children's programs are in :mod:`benchmarks.async_roles`."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

from .processes import Children, ServerLines
from .records import read_json

METHODS = ("fedavg", "fedasync", "fedbuff")
NAMES = {"fedavg": "sync FedAvg", "fedasync": "FedAsync", "fedbuff": "FedBuff"}
TARGETS = {"softmax": 0.88, "keras": 0.93}
BUDGETS = {"softmax": 20.0, "keras": 40.0}


def add_arguments(parser) -> None:
    group = parser.add_argument_group("async race (--async-race)")
    group.add_argument("--async-race", action="store_true",
                       help="sync FedAvg vs FedAsync vs FedBuff on digits, 5 clients, one 4x "
                            "slower: time to a target test accuracy")
    group.add_argument("--async-model", choices=sorted(TARGETS), default="softmax",
                       help="softmax: SoftmaxRegression(64, 10), target 0.88 (default); keras: "
                            "the digits MLP, target 0.93")
    group.add_argument("--async-clients", type=int, default=5)
    group.add_argument("--async-sleep", type=float, default=0.5,
                       help="seconds a fast client's fit sleeps (default 0.5)")
    group.add_argument("--async-slow-factor", type=float, default=4.0,
                       help="the last client is this many times slower: it sleeps this many "
                            "times longer, plus this many times its compute minus one (default 4)")
    group.add_argument("--async-epochs", type=int, default=1, help="local epochs per job")
    group.add_argument("--async-target", type=float, default=None,
                       help="test accuracy to reach (default 0.88 softmax, 0.93 keras)")
    group.add_argument("--async-budget", type=float, default=None,
                       help="the fixed wall-clock budget in seconds at which accuracies are "
                            "compared; each run lasts at least this long (default 20 softmax, "
                            "40 keras)")
    group.add_argument("--async-max-seconds", type=float, default=None,
                       help="a run that has not reached the target stops here (default 2x the "
                            "budget)")
    group.add_argument("--async-repeats", type=int, default=1,
                       help="run the methods this many times in turn; medians are reported")
    group.add_argument("--async-methods", nargs="+", choices=METHODS, default=list(METHODS))
    group.add_argument("--async-buffer-size", type=int, default=3, help="FedBuff's K (default 3)")
    group.add_argument("--async-server-lr", type=float, default=1.0,
                       help="FedBuff's server learning rate (default 1.0)")
    group.add_argument("--async-mixing", type=float, default=0.6,
                       help="FedAsync's alpha (default 0.6)")
    group.add_argument("--async-staleness-exponent", type=float, default=0.5,
                       help="both strategies' polynomial staleness exponent a (default 0.5)")


def settings_from(args) -> dict:
    model = args.async_model
    budget = args.async_budget or BUDGETS[model]
    return {"model": model, "clients": args.async_clients, "sleep": args.async_sleep,
            "slow_factor": args.async_slow_factor, "epochs": args.async_epochs,
            "target": args.async_target or TARGETS[model], "budget": budget,
            "max_seconds": args.async_max_seconds or 2 * budget,
            "repeats": args.async_repeats, "methods": list(args.async_methods),
            "buffer_size": args.async_buffer_size, "server_lr": args.async_server_lr,
            "mixing": args.async_mixing, "staleness_exponent": args.async_staleness_exponent}


def run_race(settings: dict, workdir: Path) -> dict:
    """Every method ``repeats`` times in turn with the same client children; returns the
    servers' and clients' records per run. Every child is ended by its PID."""
    phase = workdir / "async-race"
    phase.mkdir()
    children = Children(phase)
    n = settings["clients"]
    start_up = 120.0 if settings["model"] == "keras" else 30.0
    per_run = settings["max_seconds"] + start_up + 30.0
    timeout = start_up + per_run * len(settings["methods"]) * settings["repeats"]
    deadline = time.monotonic() + timeout
    watchdog = threading.Timer(timeout, children.kill_all)  # unblocks anything we wait on
    watchdog.daemon = True
    clients: list[tuple] = []
    runs = []
    try:
        watchdog.start()
        for i in range(n):
            factor = settings["slow_factor"] if i == n - 1 else 1.0
            proc = children.spawn(
                f"client-{i}", "async_client", "--index", str(i), "--clients", str(n),
                "--model", settings["model"], "--sleep", repr(settings["sleep"]),
                "--slow-factor", repr(factor),
                "--epochs", str(settings["epochs"]), "--logdir", str(phase / "logs"), pipes=True)
            clients.append((proc, ServerLines(children, proc, f"client {i}")))
        for _, lines in clients:
            lines.expect("warm", deadline)
        for repeat in range(settings["repeats"]):
            for method in settings["methods"]:
                print(f"... async race: {NAMES[method]} ({settings['model']}, run "
                      f"{repeat + 1}/{settings['repeats']})", file=sys.stderr, flush=True)
                runs.append(run_method(children, clients, phase, method, repeat, settings,
                                       min(deadline, time.monotonic() + per_run)))
    finally:
        watchdog.cancel()
        for proc, _ in clients:  # EOF: each client child leaves its loop and exits
            try:
                proc.stdin.close()
            except OSError:
                pass
        children.close()
    return {"settings": settings, "runs": runs, "slow_client": f"client_{n - 1}"}


def run_method(children, clients, phase: Path, method: str, repeat: int, settings: dict,
               deadline: float) -> dict:
    label = f"server-{method}-{repeat}"
    out = phase / f"{label}.json"
    server = children.spawn(
        label, "async_server", "--method", method, "--model", settings["model"],
        "--clients", str(settings["clients"]), "--budget", repr(settings["budget"]),
        "--max-seconds", repr(settings["max_seconds"]), "--target", repr(settings["target"]),
        "--buffer-size", str(settings["buffer_size"]), "--mixing", repr(settings["mixing"]),
        "--server-lr", repr(settings["server_lr"]),
        "--staleness-exponent", repr(settings["staleness_exponent"]),
        "--logdir", str(phase / "logs"), "--out", str(out), pipes=True)
    port = json.loads(ServerLines(children, server, label).expect("ready", deadline))["port"]
    for proc, _ in clients:
        proc.stdin.write(f"{port} {method}\n".encode())
        proc.stdin.flush()
    trained = [json.loads(lines.expect("trained", deadline)) for _, lines in clients]
    try:
        code = server.wait(timeout=max(0.1, deadline - time.monotonic()))
    except Exception:
        raise TimeoutError(f"{label} (pid {server.pid}) still running at its deadline") from None
    if code != 0:
        raise RuntimeError(f"{label} (pid {server.pid}) exited with {code}:\n"
                           f"{children.tail(label)}")
    return {"method": method, "repeat": repeat, "server": read_json(out), "clients": trained}


def analyse_race(race: dict) -> dict:
    settings, slow = race["settings"], race["slow_client"]
    target, budget = settings["target"], settings["budget"]
    rows = []
    for run in race["runs"]:
        server = run["server"]
        evaluations = [row for row in server["evaluations"] if row[2] is not None]
        hit = next((row for row in evaluations if row[2] >= target), None)
        before = [row for row in evaluations if row[0] <= budget]
        slow_staleness = server["staleness"].get(slow, [])
        rows.append({
            "method": run["method"], "repeat": run["repeat"], "strategy": server["strategy"],
            "seconds": hit[0] if hit else None, "versions": hit[1] if hit else None,
            "accuracy_at_budget": before[-1][2] if before else None,
            "versions_at_budget": before[-1][1] if before else 0,
            "peak_mb": (server["peak"] - server["baseline"]["VmRSS"]) / 1e6,
            "updates": server["updates"], "slow_updates": server["updates"].get(slow, 0),
            "slow_staleness": statistics.mean(slow_staleness) if slow_staleness else None,
            "fit_seconds": [c["fit_seconds"] for c in run["clients"]],
            "stopped": server["stopped"], "hwm_reset": server["hwm_reset"],
            "trace": [[round(t, 3), v, a] for t, v, a in evaluations]})
    methods = {}
    for method in settings["methods"]:
        mine = [row for row in rows if row["method"] == method]
        times = [row["seconds"] for row in mine if row["seconds"] is not None]
        methods[method] = {
            "seconds": statistics.median(times) if len(times) == len(mine) else None,
            "all_seconds": [row["seconds"] for row in mine],
            "versions": _median([row["versions"] for row in mine]),
            "accuracy_at_budget": _median([row["accuracy_at_budget"] for row in mine]),
            "versions_at_budget": _median([row["versions_at_budget"] for row in mine]),
            "peak_mb": max(row["peak_mb"] for row in mine),
            "slow_updates": _median([row["slow_updates"] for row in mine]),
            "all_updates": _median([sum(row["updates"].values()) for row in mine]),
            "slow_staleness": _median([row["slow_staleness"] for row in mine]),
            "strategy": mine[0]["strategy"]}
    sync = methods.get("fedavg", {}).get("seconds")
    for summary in methods.values():
        summary["ratio"] = (summary["seconds"] / sync if sync and summary["seconds"] is not None
                            else None)
    fedbuff = methods.get("fedbuff", {}).get("ratio")
    return {"settings": settings, "runs": rows, "methods": methods,
            "meets_target": None if fedbuff is None else fedbuff <= 0.5}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_race_report(result: dict) -> None:
    s, methods = result["settings"], result["methods"]
    slow = s["sleep"] * s["slow_factor"]
    print(f"\nAsync race: digits, {s['model']}, {s['clients']} clients (fit sleeps {s['sleep']:g} s, "
          f"the slow one {slow:g} s + {s['slow_factor'] - 1:g}x its compute), {s['epochs']} "
          f"epoch(s) per job, target test accuracy "
          f"{s['target']:g}, budget {s['budget']:g} s, {s['repeats']} run(s) per method")
    print("| method | time to target (s) | ratio to sync FedAvg | versions/rounds to target "
          "| accuracy at budget | server peak MB | updates (slow client) | slow client's "
          "staleness |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, m in methods.items():
        spread = ""
        if len(m["all_seconds"]) > 1:
            spread = " [" + ", ".join(_fmt(v, ".1f", "miss") for v in m["all_seconds"]) + "]"
        print(f"| {NAMES[method]} | {_fmt(m['seconds'], '.1f', 'not reached')}{spread} | "
              f"{_fmt(m['ratio'], '.2f')} | {_fmt(m['versions'], 'g')} | "
              f"{_fmt(m['accuracy_at_budget'], '.3f')} ({_fmt(m['versions_at_budget'], 'g')}) | "
              f"{m['peak_mb']:.1f} | {_fmt(m['all_updates'], 'g')} "
              f"({_fmt(m['slow_updates'], 'g')}) | {_fmt(m['slow_staleness'], '.1f')} |")
    for method, m in methods.items():
        print(f"  {NAMES[method]}: {m['strategy']}")
    for method in methods:  # from each method's first run: compute slows under load
        fits = next(row["fit_seconds"] for row in result["runs"] if row["method"] == method)
        print(f"  {NAMES[method]}: median fit time per client (s, the slow one last): "
              + ", ".join(_fmt(v, ".2f") for v in fits))
    if result["meets_target"] is not None:
        print(f"target FedBuff <= 0.5x sync FedAvg's time: "
              f"{'met' if result['meets_target'] else 'missed'} "
              f"({methods['fedbuff']['ratio']:.2f}x)")
