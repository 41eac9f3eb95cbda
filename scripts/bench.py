#!/usr/bin/env python
"""Round overhead of PyFed against a raw loopback-socket floor, for the README's model.

    .venv/bin/python scripts/bench.py                      # 3 clients, 15 rounds (+1 warm-up)
    .venv/bin/python scripts/bench.py --clients 3 10 --rounds 5 --json bench.json

The model is the README's dense net, 784-500-1000-2000-1000-500-10 with biases (5,402,010
float32 parameters, 21.6 MB). For each client count N it measures, in the same run:

* PyFed: one ``FL_Server`` process and N numpy-only ``FL_Client`` processes whose
  ``NumpyModel.fit`` echoes the weights, so a round is pure overhead (framing, sockets, threads,
  validation, FedAvg). The per-round time is the server's own ``history["round_seconds"]``
  (FIT posted -> every result folded -> ``strategy.finish`` -> ``adapter.set_weights``).
* The floor: the same topology with raw sockets. The bench process ``sendall``s the weights (one
  contiguous buffer) to N client processes, which ``recv_into`` a preallocated buffer and
  ``sendall`` it back; the bench ``recv_into``s a preallocated buffer per client, folds a float64
  weighted sum (``acc += w * x``) and casts the mean to float32. It runs once with one thread
  per client (as PyFed does) and once sequentially; the faster median is the floor.

Each side runs 1 warm-up round plus ``--rounds`` measured rounds, and the sides take turns round
by round (the PyFed server waits for a "go" from this script before each round), so background
load on a small machine hits both alike. The table gives the median [min-max] and the ratio of
the medians. Also reported: CPU time and minor page faults per round on each side (less
sensitive to other load than wall time), the PyFed server's peak RSS above its idle baseline
(VmHWM minus the VmRSS it read from /proc/self/status before any client connected, with VmHWM
reset there), and a numpy-only client's start-up time.

Every process it starts is a child it ends by PID in a ``finally``; sockets bind 127.0.0.1 only;
every wait is bounded (``--timeout`` per client count). No TensorFlow anywhere: the children
check ``sys.modules`` and report. Internally this file is also the child program
(``bench.py _pyfed_server ...``, ``_pyfed_client``, ``_floor_client``).
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
TARGET_RATIO = 1.5
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
        x.shape == y.shape and x.dtype == y.dtype and np.allclose(x, y, rtol=1e-6, atol=0)
        for x, y in zip(a, b))


def model_params() -> int:
    return sum(math.prod(shape) for shape in model_shapes())


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
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


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


# ---------------------------------------------------------------------------------------------
# Child programs
# ---------------------------------------------------------------------------------------------


def child_pyfed_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import gc

    import pyfed.rounds
    from pyfed.models import NumpyModel
    from pyfed.server import FL_Server

    weights = model_weights(random=True)
    server = FL_Server(NumpyModel(weights), num_clients=args.clients, rounds=args.rounds, port=0,
                       logdir=args.logdir, verbose=0, wait_timeout=120)

    # Light instrumentation (wrappers only, nothing in pyfed changes): the whole _run_round call
    # (adds get_weights, TensorBoard scalars and the history record to round_seconds), and where
    # the folded time goes: validate_update and strategy.add run under the collector's lock.
    timings: dict[str, list[float]] = {"full_round": [], "validate": [], "fold": [], "finish": [],
                                       "cpu": [], "faults": []}
    per_round = {"validate": 0.0, "fold": 0.0}

    def timed(store, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                store(time.perf_counter() - start)
        return wrapper

    def add_to(key):
        def store(seconds):
            per_round[key] += seconds
        return store

    pyfed.rounds.validate_update = timed(add_to("validate"), pyfed.rounds.validate_update)
    server.strategy.add = timed(add_to("fold"), server.strategy.add)
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
        print("BENCH done", server_round, flush=True)

    server._run_round = run_round_timed

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
        "pool_peak_in_use": server._pool.peak_in_use, "weights_ok": weights_ok,
        "pyfed_file": pyfed.rounds.__file__,
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

    import pyfed.transport
    from pyfed.client import FL_Client
    from pyfed.models import NumpyModel

    imported_at = time.time()
    hello_sent_at = []
    # Per round, from starting to wait for FIT to having sent FIT_RESULT (blocking costs no CPU).
    round_cpu: list[float] = []
    round_faults: list[int] = []
    receive_started = [cpu_and_faults()]
    send, receive = pyfed.transport.Channel.send, pyfed.transport.Channel.receive

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

    pyfed.transport.Channel.send = send_and_note
    pyfed.transport.Channel.receive = receive_and_note
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


CHILDREN = {"_pyfed_server": child_pyfed_server, "_pyfed_client": child_pyfed_client,
            "_floor_client": child_floor_client}


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
                 deadline: float):
        self.children, self.phase, self.num_clients = children, phase, num_clients
        self.total_rounds, self.deadline = total_rounds, deadline
        self.lines: queue.Queue = queue.Queue()
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        logdir = self.phase / "logs"
        self.server = self.children.spawn(
            "server", "_pyfed_server", "--clients", str(self.num_clients),
            "--rounds", str(self.total_rounds), "--logdir", str(logdir),
            "--out", str(self.phase / "server.json"), pipes=True)
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
        self.acc = np.empty(self.weights.size, dtype=np.float64)
        self.mean = np.empty(self.weights.size, dtype=np.float32)
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
        w = self.examples[index]
        if self.folded == 0:
            np.multiply(x, w, out=self.acc)
        else:
            np.add(self.acc, w * x, out=self.acc)  # acc += w * x
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
        np.multiply(self.acc, 1.0 / sum(self.examples), out=self.mean, casting="same_kind")
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
                    workdir: Path) -> tuple[dict, list[dict]]:
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
    pyfed = PyfedSide(children, phase, num_clients, total, deadline)
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
                      "strategy.finish": med(server["timings"]["finish"][1:])},
                  "bytes_out_per_round": server["bytes_out"][-1],
                  "bytes_in_per_round": server["bytes_in"][-1],
                  "buffer_pool_peak_in_use": server["pool_peak_in_use"]},
        "floor": {mode: {"round_seconds": f["round_seconds"], "warmup_seconds": f["warmup_seconds"],
                         "summary": f["summary"]} for mode, f in floor_by_mode.items()},
        "floor_mode": best["mode"], "ratio": ratio, "paired_ratio_median": paired,
        "target": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[3],
                        help="client counts to measure, e.g. --clients 3 10 (default 3)")
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
                        help="exit 1 if any ratio is above the target")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error(f"--rounds must be at least 5; received {args.rounds}")
    if any(n < 1 or n > 64 for n in args.clients):
        parser.error(f"--clients must be between 1 and 64; received {args.clients}")

    model_bytes = model_params() * 4
    results = {"model": {"layers": list(LAYERS), "params": model_params(), "bytes": model_bytes,
                         "dtype": "float32"},
               "rounds": args.rounds, "warmup_rounds": 1, "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "numpy": np.__version__,
               "load_average_start": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory(prefix="pyfed-bench-") as tmp:
        workdir = Path(tmp)
        for num_clients in args.clients:
            print(f"... {num_clients} clients: PyFed and floor rounds, interleaved",
                  file=sys.stderr, flush=True)
            pyfed, floors = run_interleaved(num_clients, args.rounds, args.floor_modes,
                                            args.timeout, workdir)
            results["runs"].append(analyse(num_clients, pyfed, floors, model_bytes))
        print("... client start-up", file=sys.stderr, flush=True)
        results["startup"] = measure_startup(args.startup_reps, timeout=60)
    results["load_average_end"] = os.getloadavg()[0]
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = any(r["problems"] for r in results["runs"])
    missed = any(not r["meets_target"] for r in results["runs"])
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
