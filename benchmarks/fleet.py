"""The run shared by the memory and scale sections: one ``FL_Server`` child and
ceil(N / per_process) children of client threads."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from pathlib import Path

from .model import shapes_to_text
from .probes import listen_overflows
from .processes import Children, ServerLines
from .records import read_json


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
    profiler = None
    processes = math.ceil(num_clients / per_process)
    try:
        watchdog.start()
        server = children.spawn("server", "scale_server", "--clients", str(num_clients),
                                "--rounds", str(rounds), "--shapes", shapes_to_text(shapes),
                                "--pool-size", str(pool_size), "--idle-seconds", str(idle_seconds),
                                "--timeout", str(timeout * 0.8), "--logdir", str(phase / "logs"),
                                "--out", str(phase / "server.json"), pipes=True)
        lines = ServerLines(children, server, f"{label} server")
        ready = json.loads(lines.expect("ready", deadline))
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
            children.spawn(f"clients-{k}", "thread_clients", "--port", str(ready["port"]),
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
