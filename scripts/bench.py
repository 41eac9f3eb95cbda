#!/usr/bin/env python
"""Round overhead of PyFed against a raw loopback-socket floor, for the README's model.

    .venv/bin/python scripts/bench.py                      # 3 clients, 15 rounds (+1 warm-up)
    .venv/bin/python scripts/bench.py --clients 3 10 --rounds 5 --json bench.json
    .venv/bin/python scripts/bench.py --memory-clients 3 10 50   # server memory vs clients
    .venv/bin/python scripts/bench.py --scale 1000               # 1,000 concurrent clients
    .venv/bin/python scripts/bench.py --quick                    # smoke run of every section

The model is the README's dense net, 784-500-1000-2000-1000-500-10 with biases (5,402,010
float32 parameters, 21.6 MB). For each client count N it measures, in the same run:

* PyFed: one ``FL_Server`` process and N numpy-only ``FL_Client`` processes whose
  ``NumpyModel.fit`` echoes the weights, so a round is pure overhead (framing, sockets, threads,
  validation, FedAvg). The per-round time is the server's own ``history["round_seconds"]``
  (FIT posted -> every result folded -> ``strategy.finish`` -> ``adapter.set_weights``).
* The floor: the same topology with raw sockets. The bench process ``sendall``s the weights (one
  contiguous buffer) to N client processes, which ``recv_into`` a preallocated buffer and
  ``sendall`` it back; the bench ``recv_into``s a preallocated buffer per client and folds the
  cheapest numpy weighted sum there is: float32 ``acc += w * x`` in cache-sized chunks (one read
  of each update; PyFed also reads the global weights to sum deltas, and checks every value),
  then scales it to the mean. It runs once with one thread per client (as PyFed does) and once
  sequentially; the faster median is the floor.

Each side runs 1 warm-up round plus ``--rounds`` measured rounds, and the sides take turns round
by round (the PyFed server waits for a "go" from this script before each round, and answers
"done" only after the checkpoint it saves between rounds, so that never overlaps a floor round),
so background load on a small machine hits both alike. The table gives the median [min-max] and the ratio of
the medians. Also reported: CPU time and minor page faults per round on each side (less
sensitive to other load than wall time), the PyFed server's peak RSS above its idle baseline
(VmHWM minus the VmRSS it read from /proc/self/status before any client connected, with VmHWM
reset there), and a numpy-only client's start-up time.

Two more sections run when asked (then the overhead section above runs only if ``--clients`` is
given too):

* ``--memory-clients N ...``: the server's peak RSS above its idle baseline on the README model
  with N echo clients, in multiples of the model size (target: under 4x at the largest N, and
  flat in N). The clients are threads, ``--per-process`` (10) to a process, each with its own
  socket and handshake. Unlike the overhead section, the bench keeps no copy of the weights in
  the server process, and the modules PyFed imports lazily in round 1 (TensorBoard's writer,
  zipfile) are imported before the baseline, so the figure is what the server itself holds.
  The report says after which server step (fold, finish, set_weights, checkpoint...) the peak
  was reached, for the first and last round.
* ``--scale N ...``: ``--scale-rounds`` (1) round(s) with N concurrent numpy echo clients
  (threads in ``--scale-processes`` (4) processes) on a 102,538-parameter model: the time until
  all are connected (from spawning the client processes), the round time, the server's peak
  memory and its cost per connection, the CPU that N idle connections burn (``--scale-idle``
  seconds), the accept loop's Thread.start time, and the kernel's listen-queue overflows.
  ``--py-spy PATH`` records the server with py-spy (50 Hz, raw stacks) and prints its top frames.

``--pool-size`` sets the server's ``buffer_pool_size`` in every section; ``--quick`` is a smoke
run of all three sections in about a minute (not for comparisons). Child environment variables
pass through, so e.g. ``MALLOC_MMAP_THRESHOLD_=1048576`` or a ``PYTHONPATH`` with a patched copy
of pyfed can be compared; both are printed with the results.

Every process it starts is a child it ends by PID in a ``finally``; sockets bind 127.0.0.1 only;
every wait is bounded (``--timeout`` per client count). No TensorFlow anywhere: the children
check ``sys.modules`` and report. Internally this file is also the child program
(``bench.py _pyfed_server ...``, ``_pyfed_client``, ``_floor_client``, ``_scale_server``,
``_thread_clients``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
LAYERS = (784, 500, 1000, 2000, 1000, 500, 10)
# Issue 5's targets for PyFed's round over the floor; other client counts get the 10-client one.
TARGET_RATIOS = {3: 1.2, 10: 1.3}
FLOOR_CHUNK = 1 << 17  # elements folded per step, as PyFed's WeightedSum


def target_ratio(num_clients: int) -> float:
    return TARGET_RATIOS.get(num_clients, TARGET_RATIOS[10])
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
STARTUP_COMMAND = "import pyfed.client, pyfed.models"


# ---------------------------------------------------------------------------------------------
# Shared helpers (parent and children)
# ---------------------------------------------------------------------------------------------


def child_pythonpath() -> str:
    # A PYTHONPATH you set comes first (e.g. a patched copy of pyfed); this checkout after it.
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))


def model_shapes() -> list[tuple[int, ...]]:
    shapes = []
    for fan_in, fan_out in zip(LAYERS[:-1], LAYERS[1:]):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def model_weights(random: bool) -> list[np.ndarray]:
    if not random:  # np.zeros is lazily mapped: a client's start-up does not pay for 21.6 MB
        return [np.zeros(shape, dtype=np.float32) for shape in model_shapes()]
    rng = np.random.default_rng(0)
    # dtype=float32 draws directly into float32: no float64 temporary inflates the RSS baseline.
    weights = [rng.random(shape, dtype=np.float32) for shape in model_shapes()]
    for w in weights:
        w -= np.float32(0.5)
    return weights


def same_weights(a, b) -> bool:
    # Averaging N echoes of x gives x back up to rounding (the products w*x are float32).
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.allclose(x, y, rtol=4e-6, atol=0)
        for x, y in zip(a, b))


def model_params() -> int:
    return sum(math.prod(shape) for shape in model_shapes())


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (bytes) and Threads of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
            elif key == "Threads":
                values[key] = int(rest.split()[0])
    return values


def cpu_and_faults() -> tuple[float, int]:
    """This process's CPU seconds (user + system, all threads) and minor page faults so far."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def emit(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        received = sock.recv_into(view)
        if received == 0:
            raise ConnectionError("peer closed the connection mid-message")
        view = view[received:]


def server_pool(server):
    """The server's receive BufferPool: ``FL_Server.gateway.pool`` (``FL_Server._pool`` before
    the gateway was split out of server.py)."""
    gateway = getattr(server, "gateway", None)
    return gateway.pool if gateway is not None else server._pool


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


# ---------------------------------------------------------------------------------------------
# Child programs
# ---------------------------------------------------------------------------------------------


def timed(store, fn):
    """``fn`` wrapped to pass its wall time in seconds to ``store``, even when it raises."""
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            store(time.perf_counter() - start)
    return wrapper


def child_pyfed_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args(argv)

    import gc

    import pyfed.server.collect
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    weights = model_weights(random=True)
    server = FL_Server(NumpyModel(weights), num_clients=args.clients, rounds=args.rounds, port=0,
                       logdir=args.logdir, verbose=0, wait_timeout=120,
                       buffer_pool_size=args.pool_size)

    # Light instrumentation (wrappers only, nothing in pyfed changes): the whole _run_round call
    # (adds get_weights, TensorBoard scalars and the history record to round_seconds), and where
    # the folded time goes: strategy.add runs under the collector's lock; validate_update before
    # it, and only for what the ValueScan did not already check while the body arrived (that
    # part is in the receive, not timed here).
    timings: dict[str, list[float]] = {"full_round": [], "validate": [], "fold": [], "finish": [],
                                       "checkpoint": [], "cpu": [], "faults": []}
    per_round = {"validate": 0.0, "fold": 0.0}

    def add_to(key):
        def store(seconds):
            per_round[key] += seconds
        return store

    pyfed.server.collect.validate_update = timed(add_to("validate"), pyfed.server.collect.validate_update)
    server.strategy.add = timed(add_to("fold"), server.strategy.add)
    server.strategy.add_last = timed(add_to("fold"), server.strategy.add_last)
    server.strategy.finish = timed(timings["finish"].append, server.strategy.finish)
    run_round = server._run_round

    def run_round_timed(server_round):
        # The parent interleaves our rounds with the floor's: wait for its "go" (outside the
        # measured time: round_seconds starts inside run_round).
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the bench parent went away")
        per_round["validate"] = per_round["fold"] = 0.0
        cpu, faults = cpu_and_faults()
        start = time.perf_counter()
        run_round(server_round)
        timings["full_round"].append(time.perf_counter() - start)
        cpu_after, faults_after = cpu_and_faults()
        timings["cpu"].append(cpu_after - cpu)
        timings["faults"].append(faults_after - faults)
        timings["validate"].append(per_round["validate"])
        timings["fold"].append(per_round["fold"])

    def checkpoint_then_done(server_round):
        # train() saves a checkpoint after each round, outside round_seconds. "done" waits for
        # it, so it never runs during (and slows) the floor's next round.
        start = time.perf_counter()
        checkpoint(server_round)
        timings["checkpoint"].append(time.perf_counter() - start)
        print("BENCH done", server_round, flush=True)

    server._run_round = run_round_timed
    checkpoint = server._checkpoint
    server._checkpoint = checkpoint_then_done

    server.start()  # listening, no client yet: this is the idle baseline
    gc.collect()
    baseline = proc_status()
    hwm_reset = reset_peak_rss()
    print("BENCH ready", json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    history = server.train()
    status = proc_status()
    final = server.adapter.get_weights()
    # Echo clients return the global weights unchanged, so FedAvg must reproduce them.
    weights_ok = same_weights(final, weights)
    emit(args.out, {
        "round_seconds": history.history["round_seconds"],
        "participants": history.history["participants"],
        "bytes_in": history.history["bytes_in"], "bytes_out": history.history["bytes_out"],
        "timings": timings, "baseline": baseline, "status": status, "hwm_reset": hwm_reset,
        "pool_peak_in_use": server_pool(server).peak_in_use, "weights_ok": weights_ok,
        "pyfed_file": pyfed.server.collect.__file__,
        "tensorflow_imported": "tensorflow" in sys.modules})


def child_pyfed_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--examples", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--spawned-at", type=float, required=True)  # parent's time.time()
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import pyfed.wire.transport
    from pyfed.client import FL_Client
    from pyfed.models import NumpyModel

    imported_at = time.time()
    hello_sent_at = []
    # Per round, from starting to wait for FIT to having sent FIT_RESULT (blocking costs no CPU).
    round_cpu: list[float] = []
    round_faults: list[int] = []
    receive_started = [cpu_and_faults()]
    send, receive = pyfed.wire.transport.Channel.send, pyfed.wire.transport.Channel.receive

    def send_and_note(self, message, timeout=None):
        sent = send(self, message, timeout)
        if not hello_sent_at:  # a client's first message is HELLO
            hello_sent_at.append(time.time())
        if type(message).__name__ == "FitResult":
            cpu, faults = cpu_and_faults()
            round_cpu.append(cpu - receive_started[0][0])
            round_faults.append(faults - receive_started[0][1])
        return sent

    def receive_and_note(self, *a, **k):
        receive_started[0] = cpu_and_faults()
        return receive(self, *a, **k)

    pyfed.wire.transport.Channel.send = send_and_note
    pyfed.wire.transport.Channel.receive = receive_and_note
    client = FL_Client(args.name, None, None, server_port=args.port,
                       model=NumpyModel(model_weights(random=False), num_examples=args.examples),
                       verbose=0, logdir=args.logdir, connect_timeout=60)
    client.train()
    emit(args.out, {
        "imported_s": imported_at - args.spawned_at,
        "hello_s": hello_sent_at[0] - args.spawned_at if hello_sent_at else None,
        "rounds_trained": client.rounds_trained, "final_reason": client.final_reason,
        "round_cpu": round_cpu, "round_faults": round_faults,
        "tensorflow_imported": "tensorflow" in sys.modules})


def child_floor_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nbytes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    buffer = np.empty(args.nbytes, dtype=np.uint8)
    buffer.fill(0)  # fault the pages in now, not in round 1
    view = memoryview(buffer)
    with socket.create_connection((HOST, args.port), timeout=30) as sock:
        sock.settimeout(None)  # blocking, like PyFed without round_timeout; the parent bounds us
        round_cpu: list[float] = []
        round_faults: list[int] = []
        for _ in range(args.rounds):
            cpu, faults = cpu_and_faults()
            recv_exactly(sock, view)
            sock.sendall(view)
            cpu_after, faults_after = cpu_and_faults()
            round_cpu.append(cpu_after - cpu)
            round_faults.append(faults_after - faults)
    emit(args.out, {"round_cpu": round_cpu, "round_faults": round_faults,
                    "tensorflow_imported": "tensorflow" in sys.modules})


# -- Children of the --memory-clients and --scale sections -------------------------------------

SCALE_SHAPES = [(256, 384), (384,), (384, 10), (10,)]  # 102,538 float32 parameters (0.41 MB)


def shapes_to_text(shapes) -> str:
    return ",".join("x".join(map(str, shape)) for shape in shapes)


def shapes_from_text(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


def seeded_weights(shapes) -> list[np.ndarray]:
    """Deterministic float32 weights (regenerated for the final check instead of being kept,
    so that the bench holds no second copy of the model in the server's memory)."""
    rng = np.random.default_rng(0)
    weights = [rng.random(shape, dtype=np.float32) for shape in shapes]
    for w in weights:
        w -= np.float32(0.5)
    return weights


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows of this network namespace: connections the kernel could not queue
    for accept() because a listen backlog was full (their handshakes are retried 1 s, 3 s, ... later)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def trace_server_phases(server, baseline_rss: int) -> list:
    """Wrap the server's steps (instance attributes only; pyfed is not changed) to note VmHWM and
    VmRSS above the baseline as each ends, so the report can say which step set the peak."""
    phases: list = []
    current_round = [0]

    def wrap(owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*a, **k):
            if attribute == "_run_round":
                current_round[0] = a[0]
            try:
                return original(*a, **k)
            finally:
                status = proc_status()
                phases.append([current_round[0], label, status["VmHWM"] - baseline_rss,
                               status["VmRSS"] - baseline_rss])
        setattr(owner, attribute, wrapper)

    wrap(server, "_run_round", "round")
    wrap(server.strategy, "begin", "begin")
    wrap(server, "_wait", "fold")
    wrap(server.strategy, "finish", "finish")
    wrap(server.adapter, "set_weights", "set_weights")
    wrap(server, "_checkpoint", "checkpoint")
    wrap(server, "_save_final_model", "final_model")
    wrap(server, "_finish", "FINISH")
    return phases


def child_scale_server(argv: list[str]) -> None:
    """FL_Server for the --memory-clients and --scale sections: no "go" handshake with the
    parent; it measures memory, connection and round times and writes them to --out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=0.0,
                        help="after every client connected, stay idle this long (idle CPU)")
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import gc
    import zipfile  # noqa: F401  (np.savez imports it in round 1: part of the idle baseline)

    import pyfed.server.collect
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    try:  # imported lazily by the first TensorBoard write: part of the idle baseline, not the round
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401
    except ImportError:
        pass

    shapes = shapes_from_text(args.shapes)
    # No reference kept here: the server's model is its only copy of the weights.
    server = FL_Server(NumpyModel(seeded_weights(shapes)), num_clients=args.clients,
                       rounds=args.rounds, port=0, logdir=args.logdir, verbose=0,
                       wait_timeout=args.timeout, round_timeout=args.timeout,
                       buffer_pool_size=args.pool_size,
                       max_connections=max(1024, args.clients + 64))
    timings = {"validate": 0.0, "fold": 0.0, "first_result": [], "last_result": [],
               "round_started": [], "full_round": [], "round_cpu": [], "thread_start": []}

    def timed_total(key, fn):
        return timed(lambda seconds: timings.__setitem__(key, timings[key] + seconds), fn)

    pyfed.server.collect.validate_update = timed_total("validate", pyfed.server.collect.validate_update)

    def and_note(fold):  # strategy.add, and add_last for the round's last result
        fold = timed_total("fold", fold)

        def add_and_note(result):
            fold(result)
            now = time.perf_counter()
            if len(timings["first_result"]) < len(timings["round_started"]):
                timings["first_result"].append(now - timings["round_started"][-1])
            timings["last_result"][-1:] = [now - timings["round_started"][-1]]
        return add_and_note

    server.strategy.add = and_note(server.strategy.add)
    server.strategy.add_last = and_note(server.strategy.add_last)
    run_round = server._run_round

    def run_round_timed(server_round):
        cpu = time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        timings["round_started"].append(start)
        timings["last_result"].append(None)
        run_round(server_round)
        timings["full_round"].append(time.perf_counter() - start)
        timings["round_cpu"].append(time.process_time() - cpu)
        after = resource.getrusage(resource.RUSAGE_SELF)
        timings.setdefault("round_cpu_user", []).append(after.ru_utime - usage.ru_utime)
        timings.setdefault("round_cpu_sys", []).append(after.ru_stime - usage.ru_stime)
        timings.setdefault("round_voluntary_switches", []).append(after.ru_nvcsw - usage.ru_nvcsw)
        timings.setdefault("round_involuntary_switches", []).append(
            after.ru_nivcsw - usage.ru_nivcsw)

    server._run_round = run_round_timed
    # Thread.start waits until the new thread runs: with many threads it is a per-connection
    # cost paid inside the accept loop.
    thread_start = threading.Thread.start

    def start_and_time(thread):
        begin = time.perf_counter()
        thread_start(thread)
        if thread.name.startswith("pyfed-conn"):
            timings["thread_start"].append(time.perf_counter() - begin)

    threading.Thread.start = start_and_time

    connected: dict = {}
    wait_for = server.gateway.wait_for

    def wait_for_and_note(*a, **k):
        wait_for(*a, **k)
        if not connected:
            connected["at"] = time.time()
            connected["threads"] = threading.active_count()
            fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
            connected["open_fds"], connected["max_fd"] = len(fds), max(fds)
            connected["rss"] = proc_status()["VmRSS"]
            if args.idle_seconds > 0:
                cpu, wall = time.process_time(), time.perf_counter()
                time.sleep(args.idle_seconds)
                connected["idle_cpu_fraction"] = ((time.process_time() - cpu)
                                                  / (time.perf_counter() - wall))

    server.gateway.wait_for = wait_for_and_note
    server.start()  # listening, no client yet: the idle baseline
    gc.collect()
    baseline = proc_status()
    hwm_reset = reset_peak_rss()
    phases = trace_server_phases(server, baseline["VmRSS"])
    cpu_start = time.process_time()
    print("BENCH ready", json.dumps({"port": server.port, "pid": os.getpid(),
                                     "time": time.time()}), flush=True)
    error = None
    try:
        history = server.train().history
    except BaseException as exc:  # noqa: BLE001  (reported in the JSON; the parent prints it)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        history = server.history.history
    status = proc_status()
    threading.Thread.start = thread_start
    weights_ok = error is None and same_weights(server.adapter.get_weights(), seeded_weights(shapes))
    pool = server_pool(server)
    emit(args.out, {
        "error": error, "round_seconds": history.get("round_seconds", []),
        "participants": history.get("participants", []), "timings": timings,
        "baseline": baseline, "status": status, "hwm_reset": hwm_reset, "phases": phases,
        "pool_size": pool.size, "pool_peak_in_use": pool.peak_in_use, "weights_ok": weights_ok,
        "connected": connected, "cpu_seconds": time.process_time() - cpu_start,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "pyfed_file": pyfed.server.collect.__file__, "tensorflow_imported": "tensorflow" in sys.modules})


def child_thread_clients(argv: list[str]) -> None:
    """--count echo FL_Clients as threads of this one process, each with its own socket and
    handshake (hundreds of processes would measure the machine, not PyFed)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", type=int, required=True)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--spawned-at", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from pyfed.client import FL_Client
    from pyfed.models import NumpyModel

    imported_at = time.time()
    shapes = shapes_from_text(args.shapes)
    threading.stack_size(1 << 20)  # hundreds of threads: 1 MiB of address space each is plenty
    lock = threading.Lock()
    outcomes: dict[int, dict] = {}

    def run(index: int) -> None:
        outcome: dict = {}
        try:
            client = FL_Client(f"bench-{index}", None, None, server_port=args.port,
                               model=NumpyModel([np.zeros(s, dtype=np.float32) for s in shapes],
                                                num_examples=index + 1),
                               verbose=0, logdir=args.logdir, connect_timeout=args.timeout,
                               timeout=args.timeout, max_retries=0)
            handshake = client._handshake

            def handshake_and_note(channel):
                outcome["hello_at"] = time.time()
                welcome = handshake(channel)
                outcome["welcome_at"] = time.time()
                return welcome

            client._handshake = handshake_and_note  # an instance attribute: pyfed is unchanged
            client.train()
            outcome.update(rounds=client.rounds_trained, reason=client.final_reason)
        except BaseException as exc:  # noqa: BLE001  (counted and reported by the parent)
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:300]
        with lock:
            outcomes[index] = outcome

    threads = [threading.Thread(target=run, args=(args.offset + i,), daemon=True)
               for i in range(args.count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    with lock:
        done = dict(outcomes)
    errors = [o["error"] for o in done.values() if "error" in o]
    emit(args.out, {
        "started": len(threads), "finished": sum("error" not in o for o in done.values()),
        "still_running": sum(t.is_alive() for t in threads), "errors": errors[:5],
        "num_errors": len(errors), "rounds": [o.get("rounds") for o in done.values()],
        "imported_s": imported_at - args.spawned_at,
        "hello_s": [o["hello_at"] - args.spawned_at for o in done.values() if "hello_at" in o],
        "welcome_s": [o["welcome_at"] - args.spawned_at for o in done.values() if "welcome_at" in o],
        "handshake_s": [o["welcome_at"] - o["hello_at"] for o in done.values() if "welcome_at" in o],
        "tensorflow_imported": "tensorflow" in sys.modules})
    sys.stdout.flush()
    os._exit(0)  # a thread stuck past the deadline (reported above) must not hold the exit


CHILDREN = {"_pyfed_server": child_pyfed_server, "_pyfed_client": child_pyfed_client,
            "_floor_client": child_floor_client, "_scale_server": child_scale_server,
            "_thread_clients": child_thread_clients}


# ---------------------------------------------------------------------------------------------
# Parent: process management
# ---------------------------------------------------------------------------------------------


class Children:
    """The processes one phase starts; each is ended by its PID and reaped in ``close``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, label: str, role: str, *args: str, pipes: bool = False) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = child_pythonpath()
        stderr = open(self.workdir / f"{label}.stderr", "wb")
        try:
            proc = subprocess.Popen([sys.executable, str(SCRIPT), role, *args], cwd=self.workdir,
                                    stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if pipes else stderr,
                                    stderr=stderr, env=env)
        finally:
            stderr.close()
        self.procs.append((label, proc))
        return proc

    def check_alive(self) -> None:
        for label, proc in self.procs:
            code = proc.poll()
            if code not in (None, 0):
                raise RuntimeError(f"{label} (pid {proc.pid}) exited with {code}:\n{self.tail(label)}")

    def tail(self, label: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{label}.stderr").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_all(self, deadline: float) -> None:
        for label, proc in self.procs:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{label} (pid {proc.pid}) still running at the deadline") from None
            if code != 0:
                raise RuntimeError(f"{label} (pid {proc.pid}) exited with {code}:\n{self.tail(label)}")

    def kill_all(self) -> None:
        """Used by the watchdog: SIGKILL by PID, which also unblocks our own socket calls."""
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        for label, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    print(f"warning: {label} (pid {proc.pid}) survived SIGKILL", file=sys.stderr)
        for _, proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Parent: the two measurements
# ---------------------------------------------------------------------------------------------


class PyfedSide:
    """An FL_Server child plus N FL_Client children. The server runs each round only when told
    ("go" on its stdin) and says "done" after it, so its rounds interleave with the floor's."""

    def __init__(self, children: Children, phase: Path, num_clients: int, total_rounds: int,
                 deadline: float, pool_size: int = 2):
        self.children, self.phase, self.num_clients = children, phase, num_clients
        self.total_rounds, self.deadline = total_rounds, deadline
        self.pool_size = pool_size
        self.lines: queue.Queue = queue.Queue()
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        logdir = self.phase / "logs"
        self.server = self.children.spawn(
            "server", "_pyfed_server", "--clients", str(self.num_clients),
            "--rounds", str(self.total_rounds), "--logdir", str(logdir),
            "--out", str(self.phase / "server.json"), "--pool-size", str(self.pool_size),
            pipes=True)
        threading.Thread(target=self._read, args=(self.server.stdout,), daemon=True).start()
        ready = json.loads(self._expect("ready"))
        for i in range(self.num_clients):
            self.children.spawn(f"client-{i}", "_pyfed_client", "--name", f"bench-{i}",
                                "--port", str(ready["port"]), "--examples", str(i + 1),
                                "--logdir", str(logdir), "--spawned-at", repr(time.time()),
                                "--out", str(self.phase / f"client-{i}.json"))

    def _read(self, stream) -> None:
        for raw in stream:  # ends at EOF, when the server exits or is killed
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def _expect(self, word: str) -> str:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"PyFed server: no {word!r} before the deadline")
            try:
                line = self.lines.get(timeout=min(1.0, remaining))
            except queue.Empty:
                self.children.check_alive()
                continue
            if line is None:
                self.children.check_alive()
                raise RuntimeError(f"PyFed server closed its stdout before {word!r}:\n"
                                   f"{self.children.tail('server')}")
            if line.startswith(f"BENCH {word}"):
                return line[len(f"BENCH {word}"):].strip()

    def round(self) -> None:
        try:
            self.server.stdin.write(b"go\n")
            self.server.stdin.flush()
        except OSError:  # the server is gone: report why
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=5)
            self.children.check_alive()
            raise
        self._expect("done")

    def results(self) -> dict:
        self.children.wait_all(self.deadline)
        server = read_json(self.phase / "server.json")
        clients = [read_json(self.phase / f"client-{i}.json") for i in range(self.num_clients)]
        return {"server": server, "clients": clients}


class FloorSide:
    """The raw-socket floor: this process is the server, N echo children are the clients."""

    def __init__(self, children: Children, phase: Path, num_clients: int, total_rounds: int,
                 deadline: float):
        self.children, self.phase, self.num_clients = children, phase, num_clients
        self.total_rounds, self.deadline = total_rounds, deadline
        self.weights = np.concatenate([w.reshape(-1) for w in model_weights(random=True)])
        self.payload = memoryview(self.weights).cast("B")
        self.examples = [float(i + 1) for i in range(num_clients)]
        # Preallocated and faulted in, as a tuned server would keep them.
        self.replies = [np.ones(self.weights.nbytes, dtype=np.uint8) for _ in range(num_clients)]
        self.acc = np.empty(self.weights.size, dtype=np.float32)
        self.mean = np.empty(self.weights.size, dtype=np.float32)
        self.scratch = np.empty(FLOOR_CHUNK, dtype=np.float32)
        self.lock = threading.Lock()
        self.folded = 0
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=self.num_clients)
        port = self.listener.getsockname()[1]
        for i in range(self.num_clients):
            self.children.spawn(f"floor-{i}", "_floor_client", "--port", str(port),
                                "--nbytes", str(self.weights.nbytes),
                                "--rounds", str(self.total_rounds),
                                "--out", str(self.phase / f"floor-{i}.json"))
        self.listener.settimeout(1.0)
        while len(self.conns) < self.num_clients:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"only {len(self.conns)} of {self.num_clients} floor clients connected")
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                self.children.check_alive()
                continue
            conn.settimeout(None)  # blocking; the phase's watchdog kills the peers if stuck
            self.conns.append(conn)

    def _fold(self, index: int) -> None:
        x = np.frombuffer(self.replies[index], dtype=np.float32)
        w = np.float32(self.examples[index])
        for start in range(0, x.size, FLOOR_CHUNK):
            stop = min(start + FLOOR_CHUNK, x.size)
            if self.folded == 0:
                np.multiply(x[start:stop], w, out=self.acc[start:stop])
            else:  # acc += w * x, the product in a cache-resident scratch
                part = self.scratch[:stop - start]
                np.multiply(x[start:stop], w, out=part)
                np.add(self.acc[start:stop], part, out=self.acc[start:stop])
        self.folded += 1

    def _exchange(self, index: int, errors: list) -> None:
        try:
            self.conns[index].sendall(self.payload)
            recv_exactly(self.conns[index], memoryview(self.replies[index]))
            with self.lock:
                self._fold(index)
        except BaseException as exc:  # re-raised by the round's thread
            errors.append(exc)

    def round(self, mode: str) -> tuple[float, float, int]:
        """One round: (wall seconds, this process's CPU seconds, its minor page faults)."""
        self.folded = 0
        cpu, faults = cpu_and_faults()
        start = time.perf_counter()
        if mode == "threads":
            errors: list = []
            threads = [threading.Thread(target=self._exchange, args=(i, errors), daemon=True)
                       for i in range(self.num_clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(0.1, self.deadline - time.monotonic()))
                if thread.is_alive():
                    raise TimeoutError("a floor round did not finish before the deadline")
            if errors:
                raise errors[0]
        else:
            # Each client echoes into the kernel's buffers while we send to the next one; nobody
            # waits on a peer that waits on them, so this cannot deadlock.
            for conn in self.conns:
                conn.sendall(self.payload)
            for index, conn in enumerate(self.conns):
                recv_exactly(conn, memoryview(self.replies[index]))
                self._fold(index)
        np.multiply(self.acc, np.float32(1.0 / sum(self.examples)), out=self.mean)
        seconds = time.perf_counter() - start
        cpu_after, faults_after = cpu_and_faults()
        if not same_weights([self.mean], [self.weights]):
            raise RuntimeError("floor: the averaged echoes differ from the weights sent")
        return seconds, cpu_after - cpu, faults_after - faults

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()
        if self.listener is not None:
            self.listener.close()

    def results(self) -> list[dict]:
        return [read_json(self.phase / f"floor-{i}.json") for i in range(self.num_clients)]


def run_interleaved(num_clients: int, rounds: int, modes: list[str], timeout: float,
                    workdir: Path, pool_size: int = 2) -> tuple[dict, list[dict]]:
    """1 warm-up + ``rounds`` rounds of PyFed and of each floor mode, taking turns round by
    round (in a rotating order), so background load hits both sides alike."""
    phase = workdir / f"clients-{num_clients}"
    phase.mkdir()
    total = rounds + 1
    deadline = time.monotonic() + timeout
    children = Children(phase)
    watchdog = threading.Timer(timeout, children.kill_all)  # unblocks any socket call we are in
    watchdog.daemon = True
    floor = FloorSide(children, phase, num_clients, total * len(modes), deadline)
    pyfed = PyfedSide(children, phase, num_clients, total, deadline, pool_size)
    floor_rounds: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    try:
        watchdog.start()
        floor.start()
        pyfed.start()
        turns = [("floor", mode) for mode in modes] + [("pyfed", None)]
        for r in range(total):
            shift = r % len(turns)
            for side, mode in turns[shift:] + turns[:shift]:
                if side == "pyfed":
                    pyfed.round()
                else:
                    floor_rounds[mode].append(floor.round(mode))
        floor.close()  # the floor children see EOF after their last round and exit
        pyfed_results = pyfed.results()  # waits for every child
        floor_clients = floor.results()
    finally:
        watchdog.cancel()
        floor.close()
        children.close()
    # The floor clients cannot tell the modes apart: their per-round costs are shared by both.
    client_cpu = [c["round_cpu"][1:] for c in floor_clients]
    client_faults = [c["round_faults"][1:] for c in floor_clients]
    floors = [{"mode": mode, "warmup_seconds": rows[0][0],
               "round_seconds": [row[0] for row in rows[1:]],
               "server_cpu": [row[1] for row in rows[1:]],
               "server_faults": [row[2] for row in rows[1:]],
               "client_cpu": client_cpu, "client_faults": client_faults,
               "tensorflow_imported": any(c["tensorflow_imported"] for c in floor_clients)}
              for mode, rows in floor_rounds.items()]
    return pyfed_results, floors


def measure_startup(reps: int, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = child_pythonpath()

    def timed(code: str) -> list[float]:
        times = []
        for _ in range(reps + 1):  # the first run warms the page cache and .pyc files
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        return times[1:]

    return {"command": f'python -c "{STARTUP_COMMAND}"', "import_seconds": timed(STARTUP_COMMAND),
            "bare_python_seconds": timed("pass"), "numpy_seconds": timed("import numpy")}


# ---------------------------------------------------------------------------------------------
# Parent: the --memory-clients and --scale sections
# ---------------------------------------------------------------------------------------------


def run_thread_clients(label: str, num_clients: int, per_process: int, rounds: int, shapes,
                       timeout: float, workdir: Path, pool_size: int = 2,
                       idle_seconds: float = 0.0, py_spy: str | None = None) -> dict:
    """One FL_Server child and ceil(N / per_process) children of client threads."""
    phase = workdir / label
    phase.mkdir()
    deadline = time.monotonic() + timeout
    children = Children(phase)
    watchdog = threading.Timer(timeout, children.kill_all)
    watchdog.daemon = True
    lines: queue.Queue = queue.Queue()
    profiler = None
    processes = math.ceil(num_clients / per_process)
    try:
        watchdog.start()
        server = children.spawn("server", "_scale_server", "--clients", str(num_clients),
                                "--rounds", str(rounds), "--shapes", shapes_to_text(shapes),
                                "--pool-size", str(pool_size), "--idle-seconds", str(idle_seconds),
                                "--timeout", str(timeout * 0.8), "--logdir", str(phase / "logs"),
                                "--out", str(phase / "server.json"), pipes=True)

        def read(stream) -> None:
            for raw in stream:
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, args=(server.stdout,), daemon=True).start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{label}: the server never said ready")
            try:
                line = lines.get(timeout=min(1.0, remaining))
            except queue.Empty:
                children.check_alive()
                continue
            if line is None:
                children.check_alive()
                raise RuntimeError(f"{label}: the server exited before it was ready:\n"
                                   f"{children.tail('server')}")
            if line.startswith("BENCH ready"):
                ready = json.loads(line[len("BENCH ready"):])
                break
        if py_spy:
            with open(phase / "py-spy.stderr", "wb") as stderr:  # the child keeps its own fd
                profiler = subprocess.Popen(
                    [py_spy, "record", "--pid", str(ready["pid"]), "--rate", "50",
                     "--nonblocking", "--format", "raw", "--output", str(phase / "py-spy.txt")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            time.sleep(1.0)  # attached before the first client connects
        overflows_before = listen_overflows()
        spawned_at = time.time()
        for k in range(processes):
            count = min(per_process, num_clients - k * per_process)
            children.spawn(f"clients-{k}", "_thread_clients", "--port", str(ready["port"]),
                           "--count", str(count), "--offset", str(k * per_process),
                           "--shapes", shapes_to_text(shapes), "--timeout", str(timeout * 0.8),
                           "--logdir", str(phase / "logs"), "--spawned-at", repr(spawned_at),
                           "--out", str(phase / f"clients-{k}.json"))
        children.wait_all(deadline)
        overflows_after = listen_overflows()
        server_result = read_json(phase / "server.json")
        clients = [read_json(phase / f"clients-{k}.json") for k in range(processes)]
    finally:
        watchdog.cancel()
        if profiler is not None:  # py-spy stops by itself when the server exits; bounded anyway
            try:
                profiler.wait(timeout=15)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait(timeout=5)
        children.close()
    profile = None
    if py_spy and (phase / "py-spy.txt").exists():
        profile = summarize_py_spy(phase / "py-spy.txt")
        profile["path"] = str(phase / "py-spy.txt")
    return {"clients": num_clients, "processes": processes, "per_process": per_process,
            "rounds": rounds, "params": sum(math.prod(s) for s in shapes),
            "model_bytes": 4 * sum(math.prod(s) for s in shapes), "spawned_at": spawned_at,
            "server": server_result, "client_processes": clients,
            "listen_overflows": (None if overflows_before is None or overflows_after is None
                                 else overflows_after - overflows_before),
            "profile": profile}


# Leaf frames where a thread only waits (py-spy still samples some of them while they wake up).
WAITING_FRAMES = ("Condition.wait", "Event.wait", "socket.accept", "_wait_for_tstate_lock")


def summarize_py_spy(path: Path, top: int = 12) -> dict:
    """Self and inclusive samples per function from py-spy's raw (collapsed-stack) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        total += samples
        if frames[-1].startswith(WAITING_FRAMES):
            waiting += samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples

    def ranked(table):
        return [[f, n] for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "waiting_leaf_samples": waiting, "self": ranked(own),
            "inclusive": ranked({f: n for f, n in inclusive.items()
                                 if "pyfed/" in f and not f.startswith(WAITING_FRAMES)})}


def client_problems(run: dict) -> list[str]:
    server = run["server"]
    problems = []
    if server["error"]:
        problems.append(f"server: {server['error'][:300]}")
    if any(p != run["clients"] for p in server["participants"]) or \
            len(server["participants"]) != run["rounds"]:
        problems.append(f"participants per round {server['participants']}, expected "
                        f"{run['rounds']} x {run['clients']}")
    finished = sum(c["finished"] for c in run["client_processes"])
    if finished != run["clients"]:
        errors = [e for c in run["client_processes"] for e in c["errors"]]
        problems.append(f"{finished} of {run['clients']} client threads finished; "
                        f"e.g. {errors[:2]}")
    if not server["weights_ok"] and not server["error"]:
        problems.append("the averaged echoes differ from the global weights")
    if server["tensorflow_imported"] or any(c["tensorflow_imported"] for c in run["client_processes"]):
        problems.append("TensorFlow was imported by a child process")
    return problems


def analyse_memory(run: dict) -> dict:
    server, model_bytes = run["server"], run["model_bytes"]
    above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    # The step that first reached (within 1%) the final peak, and each step's peak over rounds.
    peak_step = next((f"round {r} {label}" for r, label, hwm, _ in server["phases"]
                      if hwm >= 0.99 * above), None)
    by_step: dict[str, float] = {}
    for _, label, hwm, _ in server["phases"]:
        by_step[label] = max(by_step.get(label, 0), hwm / model_bytes)
    return {"clients": run["clients"], "processes": run["processes"], "rounds": run["rounds"],
            "peak_above_baseline_bytes": above, "x_model": above / model_bytes,
            "baseline_bytes": server["baseline"]["VmRSS"], "hwm_reset": server["hwm_reset"],
            "pool_size": server["pool_size"], "pool_peak_in_use": server["pool_peak_in_use"],
            "round_seconds": server["round_seconds"], "peak_step": peak_step,
            "step_peaks_x_model": by_step, "phases": server["phases"], "model_bytes": model_bytes,
            "malloc_env": server["malloc_env"],
            "pyfed_package": os.path.dirname(server["pyfed_file"]), "problems": client_problems(run)}


def analyse_scale(run: dict) -> dict:
    server = run["server"]
    connected = server["connected"]
    welcome = [t for c in run["client_processes"] for t in c["welcome_s"]]
    handshake = [t for c in run["client_processes"] for t in c["handshake_s"]]
    hello = [t for c in run["client_processes"] for t in c["hello_s"]]
    starts = server["timings"]["thread_start"]
    above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    connected_above = connected.get("rss", server["baseline"]["VmRSS"]) - server["baseline"]["VmRSS"]
    return {
        "clients": run["clients"], "processes": run["processes"], "params": run["params"],
        "model_bytes": run["model_bytes"], "rounds": run["rounds"],
        "connect_all_seconds": (connected["at"] - run["spawned_at"]) if "at" in connected else None,
        "client_import_seconds": [c["imported_s"] for c in run["client_processes"]],
        "hello_seconds": summary(hello) if hello else None,
        "welcome_seconds": summary(welcome) if welcome else None,
        "handshake_seconds": summary(handshake) if handshake else None,
        "round_seconds": server["round_seconds"], "full_round_seconds": server["timings"]["full_round"],
        "round_cpu_seconds": server["timings"]["round_cpu"],
        "round_cpu_user_seconds": server["timings"].get("round_cpu_user", []),
        "round_cpu_sys_seconds": server["timings"].get("round_cpu_sys", []),
        "round_context_switches": [a + b for a, b in zip(
            server["timings"].get("round_voluntary_switches", []),
            server["timings"].get("round_involuntary_switches", []))],
        "first_result_seconds": server["timings"]["first_result"],
        "last_result_seconds": server["timings"]["last_result"],
        "validate_seconds_total": server["timings"]["validate"],
        "fold_seconds_total": server["timings"]["fold"],
        "thread_start_seconds": ({"total": sum(starts), **summary(starts)} if starts else None),
        "idle_cpu_fraction": connected.get("idle_cpu_fraction"),
        "threads_when_connected": connected.get("threads"), "open_fds": connected.get("open_fds"),
        "max_fd": connected.get("max_fd"),
        "server_peak_rss_bytes": server["status"]["VmHWM"],
        "server_baseline_rss_bytes": server["baseline"]["VmRSS"],
        "peak_above_baseline_bytes": above,
        "connected_above_baseline_bytes": connected_above,
        "per_connection_bytes": connected_above / run["clients"],
        "listen_overflows": run["listen_overflows"], "pool_peak_in_use": server["pool_peak_in_use"],
        "server_cpu_seconds": server["cpu_seconds"], "profile": run["profile"],
        "pyfed_package": os.path.dirname(server["pyfed_file"]),
        "problems": client_problems(run)}


def print_memory_report(rows: list[dict], model_bytes: int, per_process: int,
                        target: float) -> None:
    print()
    print(f"server memory: README model ({model_bytes / 1e6:.1f} MB float32), echo clients as "
          f"threads ({per_process} per process, each its own socket), {rows[0]['rounds']} rounds; "
          f"peak RSS above the idle baseline (VmHWM - VmRSS after start(); the bench keeps no "
          f"copy of the weights); target < {target:g}x model at the largest count, flat in clients")
    print(f"{'clients':<8} {'procs':<6} {'peak above baseline':<22} {'x model':<8} {'pool peak':<10} "
          f"{'round s (median)':<17} peak first reached at")
    for r in rows:
        print(f"{r['clients']:<8} {r['processes']:<6} {r['peak_above_baseline_bytes'] / 1e6:>8.0f} MB"
              f"{'':<11} {r['x_model']:<8.2f} {r['pool_peak_in_use']}/{r['pool_size']:<8} "
              f"{statistics.median(r['round_seconds']) if r['round_seconds'] else float('nan'):<17.3f} "
              f"{r['peak_step']}")
    print("peak so far above baseline (x model) as each server step ends, first and last round:")
    for r in rows:
        rounds = sorted({phase[0] for phase in r["phases"]})
        for server_round in dict.fromkeys([rounds[0], rounds[-1]]) if rounds else []:
            print(f"  {r['clients']:>4} clients, round {server_round}: " + ", ".join(
                f"{label} {hwm / r['model_bytes']:.2f}" for phase_round, label, hwm, _
                in r["phases"] if phase_round == server_round))
    largest, smallest = rows[-1], rows[0]
    growth = largest["x_model"] - smallest["x_model"]
    verdict = "ok" if largest["x_model"] < target else "MISSED"
    print(f"target: {largest['x_model']:.2f}x at {largest['clients']} clients, < {target:g}x "
          f"{verdict}" + (f"; {smallest['clients']} -> {largest['clients']} clients: {growth:+.2f}x "
                          f"({'flat' if abs(growth) <= 0.5 else 'GROWS with clients'})"
                          if len(rows) > 1 else ""))
    env = rows[0]["malloc_env"]
    print("allocator: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                           "glibc defaults (dynamic mmap threshold; try MALLOC_MMAP_THRESHOLD_="
                           "1048576 to see how much of the peak is freed memory glibc kept)")
          + f"; pyfed package: {rows[0]['pyfed_package']}")
    for r in rows:
        for problem in r["problems"]:
            print(f"PROBLEM (memory, {r['clients']} clients): {problem}")


def print_scale_report(rows: list[dict]) -> None:
    for r in rows:
        print()
        print(f"scale: {r['clients']:,} numpy echo clients (threads in {r['processes']} processes, "
              f"each its own socket and handshake), {r['params']:,}-param model "
              f"({r['model_bytes'] / 1e6:.2f} MB), {r['rounds']} round(s)")
        print(f"{'clients':<8} {'connect all s':<14} {'round s':<9} {'server peak RSS':<16} "
              f"{'above baseline':<15} {'per connection':<15} {'idle CPU':<9} participants")
        rounds = ", ".join(f"{s:.2f}" for s in r["round_seconds"]) or "-"
        idle = (f"{100 * r['idle_cpu_fraction']:.0f}% core" if r["idle_cpu_fraction"] is not None
                else "-")
        connect = f"{r['connect_all_seconds']:.2f}" if r["connect_all_seconds"] is not None else "-"
        print(f"{r['clients']:<8} {connect:<14} {rounds:<9} "
              f"{r['server_peak_rss_bytes'] / 1e6:>6.0f} MB{'':<7} "
              f"{r['peak_above_baseline_bytes'] / 1e6:>+6.0f} MB{'':<6} "
              f"{r['per_connection_bytes'] / 1e3:>5.0f} kB{'':<7} {idle:<9} "
              f"{r['problems'] and 'see PROBLEM' or 'all'}")
        print("  connecting: client imports "
              f"{statistics.median(r['client_import_seconds']):.2f} s after spawn; HELLO sent "
              + (f"{r['hello_seconds']['median']:.2f} s median / {r['hello_seconds']['max']:.2f} s last"
                 if r["hello_seconds"] else "-")
              + "; HELLO -> WELCOME "
              + (f"{r['handshake_seconds']['median'] * 1e3:.0f} ms median / "
                 f"{r['handshake_seconds']['max']:.2f} s max" if r["handshake_seconds"] else "-")
              + (f"; accept backlog overflows {r['listen_overflows']}"
                 if r["listen_overflows"] is not None else "")
              + (f"; Thread.start in the accept loop {r['thread_start_seconds']['total']:.2f} s "
                 f"total, {r['thread_start_seconds']['median'] * 1e6:.0f} us median, "
                 f"{r['thread_start_seconds']['max'] * 1e3:.1f} ms max"
                 if r["thread_start_seconds"] else ""))
        if r["round_seconds"]:
            print(f"  round: results from {r['first_result_seconds'][0]:.2f} s to "
                  f"{r['last_result_seconds'][0]:.2f} s after the round began; validate "
                  f"{r['validate_seconds_total'] * 1e3:.0f} ms + fold "
                  f"{r['fold_seconds_total'] * 1e3:.0f} ms in all; server CPU "
                  f"{r['round_cpu_seconds'][0]:.2f} s in round 1 (user "
                  f"{r['round_cpu_user_seconds'][0]:.2f} + system {r['round_cpu_sys_seconds'][0]:.2f},"
                  f" {r['round_context_switches'][0]:,} context switches; "
                  f"{r['server_cpu_seconds']:.2f} s for the whole run); pool peak "
                  f"{r['pool_peak_in_use']}")
        print(f"  server when all were connected: {r['threads_when_connected']} threads, "
              f"{r['open_fds']} open descriptors (highest {r['max_fd']}), "
              f"{r['connected_above_baseline_bytes'] / 1e6:+.0f} MB RSS above baseline; "
              f"pyfed package: {r['pyfed_package']}")
        if r["profile"]:
            p = r["profile"]
            print(f"  py-spy ({p['samples']} thread-samples at 50 Hz, {p['waiting_leaf_samples']} of them "
                  f"in a wait; {p['path']}); top self:")
            for frame, n in p["self"][:8]:
                print(f"    {100 * n / max(1, p['samples']):5.1f}%  {frame}")
            print("  top inclusive pyfed frames (not waiting):")
            for frame, n in p["inclusive"][:8]:
                print(f"    {100 * n / max(1, p['samples']):5.1f}%  {frame}")
        for problem in r["problems"]:
            print(f"PROBLEM (scale, {r['clients']} clients): {problem}")


# ---------------------------------------------------------------------------------------------
# Parent: report
# ---------------------------------------------------------------------------------------------


def fmt_range(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def analyse(num_clients: int, pyfed: dict, floors: list[dict], model_bytes: int) -> dict:
    server = pyfed["server"]
    measured = server["round_seconds"][1:]
    full = server["timings"]["full_round"][1:]
    floor_by_mode = {f["mode"]: {**f, "summary": summary(f["round_seconds"])} for f in floors}
    best = min(floor_by_mode.values(), key=lambda f: f["summary"]["median"])
    pyfed_summary = summary(measured)
    ratio = pyfed_summary["median"] / best["summary"]["median"]
    # Rounds taken in turn: the median of round-by-round ratios is steadier under drifting load.
    paired = statistics.median(a / b for a, b in zip(measured, best["round_seconds"]))
    peak_above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    hello = [c["hello_s"] for c in pyfed["clients"] if c["hello_s"] is not None]
    tf_anywhere = (server["tensorflow_imported"] or any(c["tensorflow_imported"] for c in pyfed["clients"])
                   or any(f["tensorflow_imported"] for f in floors))
    problems = []
    if not server["weights_ok"]:
        problems.append("PyFed's averaged echoes differ from the global weights")
    if any(p != num_clients for p in server["participants"]):
        problems.append(f"a round had fewer than {num_clients} participants: {server['participants']}")
    if any(c["rounds_trained"] != len(server["round_seconds"]) for c in pyfed["clients"]):
        problems.append("a client did not take part in every round")
    if tf_anywhere:
        problems.append("TensorFlow was imported by a child process")
    med = statistics.median

    def clients_total(per_client: list[list[float]]) -> float:
        return med([sum(values) for values in zip(*per_client)])  # summed per round, median

    costs = {"pyfed": {"server_cpu_s": med(server["timings"]["cpu"][1:]),
                       "clients_cpu_s": clients_total([c["round_cpu"][1:] for c in pyfed["clients"]]),
                       "server_faults": med(server["timings"]["faults"][1:]),
                       "clients_faults": clients_total([c["round_faults"][1:] for c in pyfed["clients"]])}}
    for mode, f in floor_by_mode.items():
        costs[f"floor_{mode}"] = {"server_cpu_s": med(f["server_cpu"]),
                                  "clients_cpu_s": clients_total(f["client_cpu"]),
                                  "server_faults": med(f["server_faults"]),
                                  "clients_faults": clients_total(f["client_faults"])}
    return {
        "clients": num_clients,
        "pyfed_package": os.path.dirname(server["pyfed_file"]),
        "pyfed": {"round_seconds": measured, "warmup_seconds": server["round_seconds"][0],
                  "summary": pyfed_summary,
                  "full_round_seconds": full, "full_round_summary": summary(full),
                  "breakdown_median_seconds": {
                      "validate_update (all clients)": med(server["timings"]["validate"][1:]),
                      "strategy.add (all clients)": med(server["timings"]["fold"][1:]),
                      "strategy.finish": med(server["timings"]["finish"][1:]),
                      "checkpoint (after the round)": med(server["timings"]["checkpoint"][1:])},
                  "bytes_out_per_round": server["bytes_out"][-1],
                  "bytes_in_per_round": server["bytes_in"][-1],
                  "buffer_pool_peak_in_use": server["pool_peak_in_use"]},
        "floor": {mode: {"round_seconds": f["round_seconds"], "warmup_seconds": f["warmup_seconds"],
                         "summary": f["summary"]} for mode, f in floor_by_mode.items()},
        "floor_mode": best["mode"], "ratio": ratio, "paired_ratio_median": paired,
        "target": target_ratio(num_clients),
        "meets_target": ratio <= target_ratio(num_clients),
        "server_rss": {"baseline_bytes": server["baseline"]["VmRSS"],
                       "peak_bytes": server["status"]["VmHWM"], "peak_above_baseline_bytes": peak_above,
                       "peak_above_baseline_x_model": peak_above / model_bytes,
                       "hwm_reset_at_baseline": server["hwm_reset"]},
        "per_round_costs_median": costs,
        "client_hello_seconds": hello,
        "client_imported_seconds": [c["imported_s"] for c in pyfed["clients"]],
        "tensorflow_imported": tf_anywhere,
        "problems": problems,
    }


def print_report(results: dict) -> None:
    model = results["model"]
    med = statistics.median
    print(f"model: {model['params']:,} params, {model['bytes'] / 1e6:.1f} MB (float32), "
          f"{'-'.join(map(str, LAYERS))} dense; {results['rounds']} rounds after 1 warm-up, "
          "PyFed and floor rounds interleaved")
    if results.get("pool_size", 2) != 2:
        print(f"PyFed server: buffer_pool_size={results['pool_size']} (default 2)")
    print(f"{'clients':<8} {'pyfed median [min-max] s':<26} {'floor median [min-max] s':<26} "
          f"{'ratio':<6} {'target':<13} paired")
    for r in results["runs"]:
        floor = r["floor"][r["floor_mode"]]["summary"]
        target = f"<= {r['target']:g} " + ("ok" if r["meets_target"] else "MISSED")
        print(f"{r['clients']:<8} {fmt_range(r['pyfed']['summary']):<26} {fmt_range(floor):<26} "
              f"{r['ratio']:<6.2f} {target:<13} {r['paired_ratio_median']:.2f}")
    print("(ratio: of the medians; paired: median of the round-by-round ratios to that floor,\n"
          " steadier when other load on the machine comes and goes)")
    rss = "; ".join(f"{r['clients']} clients {r['server_rss']['peak_above_baseline_bytes'] / 1e6:.0f} MB "
                    f"({r['server_rss']['peak_above_baseline_x_model']:.1f}x model)"
                    for r in results["runs"])
    print(f"server peak RSS above baseline: {rss}")
    s = results["startup"]
    first = results["runs"][0]
    line = (f"numpy-only client start-up: import {med(s['import_seconds']):.2f} s "
            f"({s['command']}, median of {len(s['import_seconds'])}; bare python "
            f"{med(s['bare_python_seconds']):.2f} s, numpy alone {med(s['numpy_seconds']):.2f} s)")
    if first["client_hello_seconds"]:
        line += (f"; process start -> imports done {med(first['client_imported_seconds']):.2f} s "
                 f"-> HELLO sent {med(first['client_hello_seconds']):.2f} s "
                 f"(median of {first['clients']} clients started together)")
    print(line)
    print("details (medians per measured round):")
    for r in results["runs"]:
        pad = " " * (len(str(r["clients"])) + 12)
        modes = ", ".join(f"{mode} {fmt_range(f['summary'])}" for mode, f in sorted(r["floor"].items()))
        print(f"  {r['clients']} clients: floor by mode: {modes}")
        b = r["pyfed"]["breakdown_median_seconds"]
        print(f"{pad}pyfed round incl. get_weights + TensorBoard write "
              f"{r['pyfed']['full_round_summary']['median']:.3f} s; "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in b.items()))
        costs = r["per_round_costs_median"]
        print(f"{pad}CPU ms (server + all clients): " + ", ".join(
            f"{side.replace('_', ' ')} {c['server_cpu_s'] * 1e3:.0f} + {c['clients_cpu_s'] * 1e3:.0f}"
            for side, c in costs.items())
              + "; minor page faults: " + ", ".join(
            f"{side.replace('_', ' ')} {c['server_faults']:.0f} + {c['clients_faults']:.0f}"
            for side, c in costs.items()))
    print(f"machine: {results['cpus']} CPUs, 1-minute load average {results['load_average_start']:.1f} "
          f"at the start and {results['load_average_end']:.1f} at the end (other work competes "
          "for the CPUs)")
    tf = any(r["tensorflow_imported"] for r in results["runs"]) or "tensorflow" in sys.modules
    print(f"tensorflow imported by any process: {'YES' if tf else 'no'}; "
          f"pyfed package: {first['pyfed_package']}")
    for r in results["runs"]:
        for problem in r["problems"]:
            print(f"PROBLEM ({r['clients']} clients): {problem}")


# ---------------------------------------------------------------------------------------------


MEMORY_TARGET = 4.0  # x model: server peak RSS above its idle baseline at the largest count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        args.clients = [] if (args.memory_clients or args.scale) else [3]
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
    if args.py_spy and not os.access(args.py_spy, os.X_OK):
        parser.error(f"--py-spy must be an executable; received {args.py_spy}")

    model_bytes = model_params() * 4
    results = {"model": {"layers": list(LAYERS), "params": model_params(), "bytes": model_bytes,
                         "dtype": "float32"},
               "rounds": args.rounds, "warmup_rounds": 1, "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "numpy": np.__version__,
               "load_average_start": os.getloadavg()[0], "pool_size": args.pool_size,
               "runs": [], "memory": [], "scale": []}
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
    results["load_average_end"] = os.getloadavg()[0]
    if args.clients:
        print_report(results)
    if results["memory"]:
        print_memory_report(results["memory"], model_bytes, args.per_process, MEMORY_TARGET)
    if results["scale"]:
        print_scale_report(results["scale"])
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
              or bool(results["memory"] and results["memory"][-1]["x_model"] >= MEMORY_TARGET))
    return 2 if failed else (1 if args.check and missed else 0)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](sys.argv[2:])
    else:
        # A plain `kill` must still run the finally blocks that end and reap the children.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            sys.exit(main())
        except (RuntimeError, TimeoutError, OSError) as exc:  # children are already reaped
            print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(3)
