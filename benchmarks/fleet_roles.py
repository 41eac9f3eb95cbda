"""The memory and scale sections' children: an ``FL_Server`` that measures memory, connections
and rounds (role ``scale_server``), and echo ``FL_Client``s as threads of one process (role
``thread_clients``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import threading
import time

import numpy as np

from .model import same_weights, seeded_weights, shapes_from_text
from .probes import proc_status, timed
from .records import emit


# Imported by the server on first use in round 1 (np.savez for the checkpoint, the first
# TensorBoard write): imported before the baseline, they count as idle memory, not the round's.
LAZY_MODULES = ("zipfile", "tensorboard.compat.proto.event_pb2",
                "tensorboard.compat.proto.summary_pb2", "tensorboard.summary.writer.record_writer")


def import_lazy_modules() -> None:
    for name in LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def scale_server(argv: list[str]) -> None:
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

    import pyfed.server.collect
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    from .server_probes import IdleBaseline, PhaseTracer, RoundTimer, TimedCheckpointer

    import_lazy_modules()

    shapes = shapes_from_text(args.shapes)
    timings = {"validate": 0.0, "fold": 0.0, "first_result": [], "last_result": [],
               "round_started": [], "full_round": [], "round_cpu": [], "thread_start": []}
    checkpointer = TimedCheckpointer()
    rounds = RoundTimer(timings)
    checkpointer.before.append(rounds.round_work_done)
    # Listening, no client yet: the idle baseline; then the parent starts the clients.
    idle = IdleBaseline(lambda baseline: print("BENCH ready", json.dumps(
        {"port": server.port, "pid": os.getpid(), "time": baseline.at}), flush=True))
    tracer = PhaseTracer(idle, checkpointer)
    # No reference kept here: the server's model is its only copy of the weights.
    server = FL_Server(NumpyModel(seeded_weights(shapes)), num_clients=args.clients,
                       rounds=args.rounds, port=0, logdir=args.logdir, verbose=0,
                       wait_timeout=args.timeout, round_timeout=args.timeout,
                       buffer_pool_size=args.pool_size,
                       max_connections=max(1024, args.clients + 64),
                       callbacks=[*tracer.callbacks, rounds])

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
    error = None
    try:
        history = server.train().history
    except BaseException as exc:  # noqa: BLE001  (reported in the JSON; the parent prints it)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        history = server.history.history
    status = proc_status()
    threading.Thread.start = thread_start
    weights_ok = error is None and same_weights(server.adapter.get_weights(), seeded_weights(shapes))
    pool = server.gateway.pool
    emit(args.out, {
        "error": error, "round_seconds": history.get("round_seconds", []),
        "participants": history.get("participants", []), "timings": timings,
        "baseline": idle.status, "status": status, "hwm_reset": idle.hwm_reset,
        "phases": tracer.phases,
        "pool_size": pool.size, "pool_peak_in_use": pool.peak_in_use, "weights_ok": weights_ok,
        "connected": connected, "cpu_seconds": time.process_time() - idle.cpu,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "pyfed_file": pyfed.__file__, "tensorflow_imported": "tensorflow" in sys.modules})


def note_handshakes(current: threading.local) -> None:
    """When each client thread sent HELLO and received WELCOME, into ``current.outcome``:
    wrappers of the public ``Channel.send`` and ``Channel.receive`` (a client's handshake runs
    on the thread that called ``train()``)."""
    from pyfed.wire import messages
    from pyfed.wire.transport import Channel

    send, receive = Channel.send, Channel.receive

    def send_and_note(self, message, *a, **k):
        outcome = getattr(current, "outcome", None)
        if outcome is not None and isinstance(message, messages.Hello):
            outcome.setdefault("hello_at", time.time())
        return send(self, message, *a, **k)

    def receive_and_note(self, *a, **k):
        message = receive(self, *a, **k)
        outcome = getattr(current, "outcome", None)
        if outcome is not None and isinstance(message, messages.Welcome):
            outcome.setdefault("welcome_at", time.time())
        return message

    Channel.send, Channel.receive = send_and_note, receive_and_note


def thread_clients(argv: list[str]) -> None:
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
    current = threading.local()  # .outcome: the dict of the client this thread runs
    note_handshakes(current)
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
            current.outcome = outcome
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
