"""The overhead section's PyFed children: an ``FL_Server`` that runs each round when the bench
says "go", and numpy-only echo ``FL_Client``s (roles ``pyfed_server`` and ``pyfed_client``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .model import model_weights, same_weights
from .probes import cpu_and_faults, proc_status, timed
from .records import emit


def pyfed_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args(argv)

    import pyfed.server.collect
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    from .server_probes import GoAndTime, IdleBaseline, TimedCheckpointer

    # Light instrumentation (callbacks and wrappers of public methods; nothing in pyfed
    # changes): the whole round from "go" until History and TensorBoard have written it (adds
    # the sampling, the evaluation and those writes to round_seconds), and where the folded time
    # goes: strategy.add runs under the collector's lock; validate_update before it, and only
    # for what the ValueScan did not already check while the body arrived (that part is in the
    # receive, not timed here).
    timings: dict[str, list[float]] = {"full_round": [], "validate": [], "fold": [], "finish": [],
                                       "checkpoint": [], "cpu": [], "faults": []}
    pacer = GoAndTime(timings)
    checkpointer = TimedCheckpointer()
    checkpointer.before.append(pacer.round_work_done)
    checkpointer.after.append(lambda server_round, seconds: timings["checkpoint"].append(seconds))

    # Listening, no client yet: the idle baseline; then the parent starts the clients.
    idle = IdleBaseline(lambda baseline: print("BENCH ready", json.dumps(
        {"port": server.port, "pid": os.getpid()}), flush=True))
    weights = model_weights(random=True)
    server = FL_Server(NumpyModel(weights), num_clients=args.clients, rounds=args.rounds, port=0,
                       logdir=args.logdir, verbose=0, wait_timeout=120,
                       buffer_pool_size=args.pool_size, callbacks=[checkpointer, pacer, idle])

    def add_to(key):
        def store(seconds):
            pacer.per_round[key] += seconds
        return store

    pyfed.server.collect.validate_update = timed(add_to("validate"), pyfed.server.collect.validate_update)
    server.strategy.add = timed(add_to("fold"), server.strategy.add)
    server.strategy.add_last = timed(add_to("fold"), server.strategy.add_last)
    server.strategy.finish = timed(timings["finish"].append, server.strategy.finish)

    history = server.train()
    status = proc_status()
    final = server.adapter.get_weights()
    # Echo clients return the global weights unchanged, so FedAvg must reproduce them.
    weights_ok = same_weights(final, weights)
    emit(args.out, {
        "round_seconds": history.history["round_seconds"],
        "participants": history.history["participants"],
        "bytes_in": history.history["bytes_in"], "bytes_out": history.history["bytes_out"],
        "timings": timings, "baseline": idle.status, "status": status, "hwm_reset": idle.hwm_reset,
        "pool_peak_in_use": server.gateway.pool.peak_in_use, "weights_ok": weights_ok,
        "pyfed_file": pyfed.__file__,
        "tensorflow_imported": "tensorflow" in sys.modules})


def pyfed_client(argv: list[str]) -> None:
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
