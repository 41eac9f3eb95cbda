"""Entry points for the scale tests: ``python scale_roles.py server|clients ...``.

``server``  one FL_Server on a numpy model (no TensorFlow). It prints ``READY {"port": ...}``
            once it listens, then ``RESULT {json}`` after training: the history, the receive
            pool's peak use, and its peak RSS above the idle baseline (VmHWM minus the VmRSS read
            from /proc/self/status as ``train()`` begins, listening with no client yet, with
            VmHWM reset there).
``clients`` ``--count`` FL_Client THREADS in this one process, each with its own socket and
            handshake, on an echo NumpyModel (or ``--model softmax``: a tiny numpy fit). It
            prints ``CLIENTS {json}``: how many started, finished, their rounds and any errors.

Every wait is bounded: the server has ``wait_timeout``/``round_timeout``; every client has a
``connect_timeout`` and a per-message ``timeout``, and the whole process a ``--deadline``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

# [(256, 384), (384,), (384, 10), (10,)]: 98,304 + 384 + 3,840 + 10 = 102,538 float32 params.
SMALL_SHAPES = "256x384,384,384x10,10"


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """"3x4,4" -> [(3, 4), (4,)]"""
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


def num_params(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


# The memory probes are the benchmark's own, so the test and benchmarks/ measure the same way.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.probes import proc_status  # noqa: E402


def server(args) -> None:
    from benchmarks.server_probes import IdleBaseline, PhaseTracer
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    try:  # imported lazily by the first TensorBoard write: part of the idle baseline, not a round
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401
    except ImportError:
        pass
    import zipfile  # noqa: F401  (np.savez, for the checkpoint, imports it in round 1)

    shapes = parse_shapes(args.shapes)
    # Listening, no client yet (taken as train() begins): the idle baseline; then READY.
    idle = IdleBaseline(lambda baseline: print("READY " + json.dumps(
        {"port": srv.port, "pid": os.getpid(), "time": baseline.at}), flush=True))
    tracer = PhaseTracer(idle)  # the server's memory after each of its steps, through callbacks
    rng = np.random.default_rng(0)
    # No reference kept here: the server's model is the only copy of the weights, as it would
    # be in a server script that built its model and handed it over.
    srv = FL_Server(NumpyModel([rng.random(shape, dtype=np.float32) for shape in shapes]),
                    args.clients, args.rounds, port=0, logdir=args.logdir,
                    verbose=0, wait_timeout=args.wait_timeout, round_timeout=args.round_timeout,
                    buffer_pool_size=args.pool_size, max_connections=max(1024, args.clients + 64),
                    callbacks=tracer.callbacks)
    srv.start()
    connected = []
    wait_for = srv.gateway.wait_for

    def timed_wait_for(*a, **k):
        wait_for(*a, **k)
        if not connected:
            connected.append(time.time())

    srv.gateway.wait_for = timed_wait_for
    history = srv.train()
    baseline, hwm_reset, started = idle.status, idle.hwm_reset, idle.at
    status = proc_status()
    pool = srv.gateway.pool
    model_bytes = num_params(shapes) * 4
    print("RESULT " + json.dumps({
        "history": history.to_dict(), "params": num_params(shapes), "model_bytes": model_bytes,
        "pool_size": pool.size, "pool_peak_in_use": pool.peak_in_use,
        "baseline_rss": baseline["VmRSS"], "peak_rss": status["VmHWM"], "hwm_reset": hwm_reset,
        "peak_above_baseline": status["VmHWM"] - baseline["VmRSS"],
        "peak_above_baseline_x_model": (status["VmHWM"] - baseline["VmRSS"]) / model_bytes,
        "phases": tracer.phases, "listening_at": started, "all_connected_at": connected[0] if connected else None,
        "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)


def clients(args) -> None:
    from pyfed.client import FL_Client
    from pyfed.models import NumpyModel, SoftmaxRegression

    shapes = parse_shapes(args.shapes)
    threading.stack_size(1 << 20)  # hundreds of threads: 1 MiB of address space each is plenty
    results: dict[int, dict] = {}
    lock = threading.Lock()

    def model_for(index: int):
        if args.model == "softmax":
            if len(shapes) != 2 or len(shapes[0]) != 2:
                raise SystemExit("--model softmax needs shapes 'FxC,C'")
            features, classes = shapes[0]
            model = SoftmaxRegression(features, classes, seed=index)
            rng = np.random.default_rng(index)
            data = rng.random((8, features), dtype=np.float32)
            return model, data, rng.integers(0, classes, 8)
        # np.zeros maps pages lazily: hundreds of clients do not pay for their initial weights.
        return NumpyModel([np.zeros(s, dtype=np.float32) for s in shapes],
                          num_examples=index + 1), None, None

    def run(index: int) -> None:
        name = f"{args.prefix}{index}"
        try:
            model, data, target = model_for(index)
            client = FL_Client(name, data, target, server_port=args.port, model=model, verbose=0,
                               logdir=args.logdir, connect_timeout=args.connect_timeout,
                               timeout=args.timeout, max_retries=0)
            client.train(epochs=1, batch_size=8)
            outcome = {"rounds": client.rounds_trained, "reason": client.final_reason}
        except BaseException as exc:  # noqa: BLE001  (reported, never silent)
            outcome = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        with lock:
            results[index] = outcome

    started = time.time()
    threads = [threading.Thread(target=run, args=(args.offset + i,), name=f"client-{i}",
                                daemon=True) for i in range(args.count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.deadline
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    with lock:
        done = dict(results)
    errors = {i: r["error"] for i, r in done.items() if "error" in r}
    print("CLIENTS " + json.dumps({
        "started": len(threads), "finished": sum(1 for r in done.values() if "error" not in r),
        "still_running": sum(1 for t in threads if t.is_alive()),
        "rounds": sorted({r["rounds"] for r in done.values() if "rounds" in r}),
        "reasons": sorted({str(r["reason"]) for r in done.values() if "reason" in r}),
        "errors": dict(list(errors.items())[:10]), "num_errors": len(errors),
        "seconds": time.time() - started,
        "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)
    # Daemon threads still stuck (they should not be) die with the process; exit non-zero then.
    sys.stdout.flush()
    os._exit(0 if len(done) == len(threads) and not errors else 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "clients"])
    parser.add_argument("--shapes", default=SMALL_SHAPES)
    parser.add_argument("--logdir", default=str(Path.cwd() / "pyfed_logs"))
    # server
    parser.add_argument("--clients", type=int, default=200, help="server: clients to wait for")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--wait-timeout", type=float, default=60.0)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    # clients
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=50, help="clients: threads in this process")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--prefix", default="c")
    parser.add_argument("--model", choices=["echo", "softmax"], default="echo")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=90.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    {"server": server, "clients": clients}[args.role](args)


if __name__ == "__main__":
    main()
