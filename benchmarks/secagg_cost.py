"""What secure aggregation costs: round time and bytes on the wire of
``SecureAggregation(FedAvg())`` against plain ``FedAvg``, with real processes over 127.0.0.1.

    .venv/bin/python -m benchmarks.secagg_cost               # both workloads, 5/10/20 clients
    .venv/bin/python -m benchmarks.secagg_cost --workload echo --clients 10 --rounds 3 \
        --json secagg.json

For each workload and client count N, one server process and N client processes
(``benchmarks.secagg_roles``) stay up while the server runs one federation after another:
plain, secure, secure, plain, ... (``--repeats`` runs of each mode, in ABBA order so that a
machine growing busier or quieter hits both alike). Each run is one warm-up round (connections,
first allocations, Keras' tracing after the run's compile) and ``--rounds`` measured rounds.
There is no federated evaluation. A plain round is FIT out and one FIT_RESULT back per client;
a secure round is four request/reply stages (keys, encrypted shares, FIT answered by a masked
vector, reveal) and the server's unmasking.

Two workloads (``--workload``, both by default). ``echo``: 102,538 float32 parameters (0.41 MB,
the scale section's); the clients' "training" adds a constant to every weight, so training costs
nothing and the protocol's cost shows: the worst case for the ratio. ``keras``: the usual Keras
path on ``digits_model(hidden=1500)`` (112,510 parameters), each client fitting 1 epoch, batch
32, on its share of scikit-learn's digits, as a user's round would; TensorFlow loads once per
process, before any run.

The round time is the server's History ``round_seconds`` (the round began -> the new global
model set), the bytes are its ``bytes_in + bytes_out`` (every message of the round, both
directions, all clients). The table gives medians over every measured round of a mode, the
ratio secure/plain of the medians, the server's CPU per round, and for echo the largest difference
between the plain and the secure run's final models (deterministic clients: only SecAgg's
quantization error separates them), for keras each mode's final test accuracy on the digits the
split held out (median over runs). The issue's target: a secure round within 3x the plain round
at 10 clients, reported for each workload.

Every child is ended by its PID (``processes.Children``); every wait is bounded
(``--timeout`` per client count, and a watchdog that kills the children past it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .model import SCALE_SHAPES
from .processes import Children, ServerLines
from .records import read_json
from .secagg_roles import KERAS_HIDDEN, MODES, WORKLOADS

TARGET_CLIENTS, TARGET_RATIO = 10, 3.0
PARAMETERS = sum(math.prod(shape) for shape in SCALE_SHAPES)


def run_count(clients: int, rounds: int, repeats: int, workdir: Path, timeout: float,
              workload: str = "echo") -> list:
    """Every run for one client count, with the same client children; ABBA order."""
    phase = workdir / f"{workload}-clients-{clients}"
    phase.mkdir()
    children = Children(phase)
    deadline = time.monotonic() + timeout
    watchdog = threading.Timer(timeout, children.kill_all)  # unblocks anything we wait on
    watchdog.daemon = True
    members, runs = [], []
    try:
        watchdog.start()
        # One server child too, serving the runs in turn: its imports (TensorFlow for keras)
        # are paid once, alongside the clients'.
        server = children.spawn("server", "secagg_server", "--workload", workload,
                                "--clients", str(clients), "--rounds", str(rounds + 1),
                                "--logdir", str(phase / "logs"), pipes=True)
        members.append((server, ServerLines(children, server, "server")))
        for index in range(1, clients + 1):
            proc = children.spawn(f"client-{index}", "secagg_client", "--index", str(index),
                                  "--workload", workload, "--clients", str(clients),
                                  "--logdir", str(phase / "logs"), pipes=True)
            members.append((proc, ServerLines(children, proc, f"client {index}")))
        for _, lines in members:
            lines.expect("warm", deadline)
        started = time.monotonic()
        for repeat in range(repeats):
            for mode in (MODES if repeat % 2 == 0 else MODES[::-1]):
                print(f"... secagg cost: {workload}, {clients} clients, {mode} (run "
                      f"{repeat + 1}/{repeats}), {time.monotonic() - started:.0f} s after start-up",
                      file=sys.stderr, flush=True)
                runs.append(run_once(members[0], members[1:], phase, mode, clients, rounds,
                                     repeat, deadline, workload))
    finally:
        watchdog.cancel()
        for proc, _ in members:  # EOF: each child leaves its loop and exits
            try:
                proc.stdin.close()
            except OSError:
                pass
        children.close()
    return runs


def run_once(server, members, phase: Path, mode: str, clients: int, rounds: int,
             repeat: int, deadline: float, workload: str = "echo") -> dict:
    """One run: the server child starts a federation in ``mode`` ("MODE OUT" on its stdin),
    the client children join it ("PORT MODE"); each says when it is done."""
    label = f"server-{mode}-{repeat}"
    out = phase / f"{label}.json"
    (server_proc, server_lines) = server
    server_proc.stdin.write(f"{mode} {out}\n".encode())
    server_proc.stdin.flush()
    port = json.loads(server_lines.expect("ready", deadline))["port"]
    for proc, _ in members:
        proc.stdin.write(f"{port} {mode}\n".encode())
        proc.stdin.flush()
    trained = [json.loads(lines.expect("trained", deadline)) for _, lines in members]
    server_lines.expect("done", deadline)
    record = read_json(out)
    if record["participants"] != [clients] * (rounds + 1):
        raise RuntimeError(f"{label}: rounds had {record['participants']} participants, "
                           f"expected {clients} in each")
    final = np.load(f"{out}.npy")
    return {"clients": clients, "mode": mode, "repeat": repeat, "server": record,
            "workload": workload,
            "final": final, "client_cpu": [t["cpu_seconds"] / (rounds + 1) for t in trained],
            "tensorflow_imported": record["tensorflow_imported"]
            or any(t["tensorflow_imported"] for t in trained)}


def analyse(runs: list, rounds: int) -> dict:
    """Per client count and mode, the medians over the measured rounds (the warm-up dropped)
    and the secure/plain ratios."""
    rows = []
    for clients in dict.fromkeys(run["clients"] for run in runs):
        row = {"clients": clients}
        for mode in MODES:
            mine = [run for run in runs if run["clients"] == clients and run["mode"] == mode]
            seconds = [s for run in mine for s in run["server"]["round_seconds"][1:]]
            nbytes = [i + o for run in mine for i, o in
                      list(zip(run["server"]["bytes_in"], run["server"]["bytes_out"]))[1:]]
            cpu = [s for run in mine for s in run["server"]["cpu_seconds"][1:]]
            row[mode] = {"seconds": statistics.median(seconds), "min": min(seconds),
                         "max": max(seconds), "bytes": statistics.median(nbytes),
                         "server_cpu": statistics.median(cpu),
                         "client_cpu": statistics.median(c for run in mine
                                                         for c in run["client_cpu"]),
                         "rounds": len(seconds), "strategy": mine[0]["server"]["strategy"],
                         "test_accuracy": _median_or_none(run["server"].get("test_accuracy")
                                                          for run in mine)}
        row["time_ratio"] = row["secure"]["seconds"] / row["plain"]["seconds"]
        row["bytes_ratio"] = row["secure"]["bytes"] / row["plain"]["bytes"]
        # Only the echo workload's clients are deterministic: there, only SecAgg's quantization
        # separates the two modes' final models; real training's shuffles separate them anyway.
        pairs = [(a["final"], b["final"]) for a in runs for b in runs
                 if a["clients"] == b["clients"] == clients and a["repeat"] == b["repeat"]
                 and (a["mode"], b["mode"]) == MODES and a["workload"] == "echo"]
        row["max_difference"] = (max(float(np.max(np.abs(a - b))) for a, b in pairs)
                                 if pairs else None)
        rows.append(row)
    target = next((row for row in rows if row["clients"] == TARGET_CLIENTS), None)
    return {"workload": runs[0]["workload"], "rounds": rounds,
            "parameters": runs[0]["server"]["parameters"], "rows": rows,
            "meets_target": None if target is None else target["time_ratio"] <= TARGET_RATIO,
            "tensorflow_imported": any(run["tensorflow_imported"] for run in runs)}


def _median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(result: dict) -> str:
    """The last column: how far apart the two modes' final models are (echo), or each mode's
    final test accuracy (keras: real training does not end on one model)."""
    echo = result["workload"] == "echo"
    last = "max abs(secure - plain)" if echo else "test accuracy plain, secure"
    lines = ["| clients | plain round (s) | secure round (s) | time secure/plain "
             "| plain MB/round | secure MB/round | bytes secure/plain "
             f"| server CPU/round plain, secure (s) | {last} |",
             "|---" * 9 + "|"]
    for row in result["rows"]:
        plain, secure = row["plain"], row["secure"]
        outcome = (f"{row['max_difference']:.1e}" if echo else
                   f"{plain['test_accuracy']:.3f}, {secure['test_accuracy']:.3f}")
        lines.append(
            f"| {row['clients']} | {_timed(plain)} | {_timed(secure)} | {row['time_ratio']:.2f} "
            f"| {plain['bytes'] / 1e6:.2f} | {secure['bytes'] / 1e6:.2f} "
            f"| {row['bytes_ratio']:.3f} | {plain['server_cpu']:.3f}, {secure['server_cpu']:.3f} "
            f"| {outcome} |")
    return "\n".join(lines)


def _timed(mode: dict) -> str:
    return f"{mode['seconds']:.3f} [{mode['min']:.3f}-{mode['max']:.3f}]"


def report(result: dict, repeats: int) -> str:
    rows = result["rows"]
    if result["workload"] == "echo":
        work = ("clients only nudge the weights (training costs ~nothing: the protocol's cost "
                "shows; the worst case for the ratio); no evaluation")
    else:
        work = (f"each client trains a Keras MLP (digits_model(hidden={KERAS_HIDDEN})) for 1 "
                "epoch, batch 32, on its share of the digits; no federated evaluation; the "
                "server tests each run's final model on the held-out digits (median over runs)")
    text = [f"SecAgg cost, {result['workload']} workload: {result['parameters']:,} float32 "
            f"parameters ({result['parameters'] * 4 / 1e6:.2f} MB); {work}; "
            f"{repeats} run(s) per mode in ABBA order, each 1 warm-up + {result['rounds']} "
            "measured rounds; medians [min-max] over the measured rounds; real processes over "
            "127.0.0.1", "", table(result), ""]
    text.append(f"secure ({rows[0]['clients']} clients): {rows[0]['secure']['strategy']}")
    text.append("CPU per round of one client (median of the runs' averages, warm-up included"
                + ("; Keras traces once, in the first run: a plain one" if result["workload"]
                   == "keras" else "") + "), plain, secure (s): " + "; ".join(
        f"{row['clients']} clients {row['plain']['client_cpu']:.3f}, "
        f"{row['secure']['client_cpu']:.3f}" for row in rows))
    text.append(f"(all clients share this machine's {os.cpu_count()} cores, so their CPU adds "
                "up in a round's time; on separate devices it would run side by side)")
    if result["meets_target"] is None:
        text.append(f"target (secure round within {TARGET_RATIO:g}x the plain round at "
                    f"{TARGET_CLIENTS} clients): not measured")
    else:
        ratio = next(r["time_ratio"] for r in rows if r["clients"] == TARGET_CLIENTS)
        text.append(f"target (secure round within {TARGET_RATIO:g}x the plain round at "
                    f"{TARGET_CLIENTS} clients): {'met' if result['meets_target'] else 'missed'}"
                    f" ({ratio:.2f}x)")
    if result["tensorflow_imported"] and result["workload"] == "echo":
        text.append("warning: a child imported TensorFlow")
    return "\n".join(text)


def run(clients=(5, 10, 20), rounds: int = 8, repeats: int = 2, timeout: float = 600.0,
        workdir: Path | None = None, workload: str = "echo") -> dict:
    """Every client count in turn, one workload; the analysed result (see :func:`analyse`)."""
    with tempfile.TemporaryDirectory(prefix="pyfed-secagg-bench-") as scratch:
        base = Path(workdir) if workdir is not None else Path(scratch)
        runs = [r for n in clients
                for r in run_count(n, rounds, repeats, base, timeout, workload)]
    return analyse(runs, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per run "
                        "(after 1 warm-up; default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode per client "
                        "count, in ABBA order (default 2)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed per client count and workload (default 600)")
    parser.add_argument("--workload", choices=(*WORKLOADS, "both"), default="both",
                        help="echo: free training, the protocol's cost alone; keras: a Keras "
                        "MLP trained on digits; both (the default): echo, then keras")
    parser.add_argument("--json", help="also write the results to this file, "
                        "as {workload: result}")
    args = parser.parse_args(argv)
    if not (all(2 <= n <= 100 for n in args.clients) and 1 <= args.rounds <= 100
            and 1 <= args.repeats <= 20 and args.timeout > 0):
        parser.error("expected 2-100 clients, 1-100 rounds, 1-20 repeats, a positive timeout")
    results = {}
    for workload in (WORKLOADS if args.workload == "both" else [args.workload]):
        results[workload] = run(args.clients, args.rounds, args.repeats, args.timeout,
                                workload=workload)
        print(report(results[workload], args.repeats) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
