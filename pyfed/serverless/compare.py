"""compare_with_standalone: the same nodes trained alone and federated, side by side.

As flwr-serverless's ``FederatedLearningTestRun`` does, every node trains the same Keras model
on its own part of the data twice, once alone and once federated, and each final model is
tested on one held-out test set of ALL the classes. By default, on digits with a label split,
a node alone has seen only half the classes and cannot pass about 0.5; federated, it can.

Unlike FederatedLearningTestRun, the nodes are real processes (``python -m
pyfed.serverless.compare_child``), all started at once, so the federated ones really run
concurrently and talk only through the shared folder. What they are given is plain data: a
JSON job and ``.npz`` files, never a pickle. Every process is ended and reaped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigurationError, PyFedError
from ..models import defaults

DEFAULT_MODEL = defaults.MODEL
# One thread per TensorFlow pool in each node: several nodes share the machine's cores, and
# TensorFlow's default (a pool per core in every process) oversubscribes them.
CHILD_THREADS = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                 "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def compare_with_standalone(nodes: int = 2, epochs: int | Sequence[int] = 8, split: str = "label",
                            folder: str | os.PathLike | None = None, mode: str = "sync",
                            storage_options: dict | None = None,
                            model_fn: Callable | str | None = None, *, dataset: str = "digits",
                            batch_size: int = defaults.BATCH_SIZE, lr: float = defaults.LR,
                            seed: int = 0,
                            test_fraction: float = 0.25, node_options: dict | None = None,
                            slow: dict | Sequence[float] | None = None, standalone: bool = True,
                            node_timeout: float = 120.0, timeout: float = 900.0,
                            logdir: str | os.PathLike | None = None, run_name: str | None = None,
                            workdir: str | os.PathLike | None = None) -> dict:
    """Train ``nodes`` nodes standalone and federated, concurrently; return both accuracies.

    Returns ``{"standalone": [accuracy per node], "federated": [accuracy per node], "nodes":
    [names], "details": {"standalone": [...], "federated": [...]}}`` (details: each node's
    loss, per-epoch history and seconds). Accuracy is the final model's, on the held-out
    ``test_fraction`` of ``dataset`` (every class).

    ``epochs``: for every node, or a list of one per node.
    ``split``: ``"label"`` gives each node a block of whole classes (2 nodes: digits 0-4 and
    5-9), or any scheme of :func:`pyfed.data.partition` (``"iid"``, ``"dirichlet"``...).
    ``folder``: the shared folder (a path or an fsspec URL such as ``s3://bucket/prefix``, with
    ``storage_options``); by default a new temporary one. ``mode``, ``node_timeout`` (the
    FederatedNode's ``timeout``) and ``node_options`` (e.g. ``{"staleness": "constant"}``) go to
    every FederatedNode. ``model_fn``: a module-level function building the Keras model, or its
    name ``"module:function"`` (default: :func:`pyfed.data.digits_model`); every node starts
    from the same initial weights (one ``seed``), compiled with Adam at ``lr`` (PyFed's 0.005). ``slow``: seconds
    added to each epoch of node ``i`` (a dict by index, or a list), federated runs only.
    ``standalone=False`` runs only the federated nodes. ``logdir``: the federated nodes'
    TensorBoard curves (PyFed's layout, run ``run_name`` or ``compare``). ``timeout`` bounds the
    whole comparison; ``workdir`` keeps the data, the logs and the results there.
    """
    _check_whole("nodes", nodes, 1)
    epochs_of = _per_node("epochs", epochs, nodes)
    _check_whole("batch_size", batch_size, 1)
    if mode not in ("sync", "async"):
        raise ConfigurationError(f"mode must be 'sync' or 'async'; received {mode!r}")
    delays = _delays(slow, nodes)
    model = model_name(model_fn)
    keep = workdir is not None
    base = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="pyfed-compare-"))
    base.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        trains, test = prepare_data(base / "data", nodes, split, seed, test_fraction, dataset)
        shared = str(folder) if folder is not None else str(base / "shared")
        names = [f"node_{i + 1}" for i in range(nodes)]
        federation = {"kind": "folder", "folder": shared, "mode": mode, "num_nodes": nodes,
                      "timeout": node_timeout, "storage_options": storage_options,
                      "options": dict(node_options or {})}
        common = {"test": test, "model": model, "batch_size": batch_size, "lr": lr, "seed": seed}
        jobs = [{**common, "name": name, "train": trains[i], "epochs": epochs_of[i],
                 "federation": federation,
                 "sleep": delays[i], "logdir": str(logdir) if logdir else False,
                 "run_name": run_name or "compare",
                 # however long each took to start, the federated nodes' epochs overlap
                 "start_together": {"dir": str(base / "ready"), "count": nodes,
                                    "timeout": node_timeout}} for i, name in enumerate(names)]
        if standalone:
            jobs += [{**common, "name": f"standalone_{i + 1}", "train": trains[i],
                      "epochs": epochs_of[i], "federation": None} for i in range(nodes)]
        results = run_nodes(jobs, base, timeout)
        succeeded = True
    finally:
        if not keep and succeeded:
            shutil.rmtree(base, ignore_errors=True)
    federated = results[:nodes]
    alone = results[nodes:]
    return {"standalone": [r["accuracy"] for r in alone] if standalone else None,
            "federated": [r["accuracy"] for r in federated], "nodes": names,
            "details": {"standalone": alone, "federated": federated}}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def split_by_label(y: np.ndarray, nodes: int) -> list[np.ndarray]:
    """Indices per node: the sorted classes in ``nodes`` contiguous blocks (0-4 and 5-9)."""
    classes = np.unique(y)
    if nodes > len(classes):
        raise ConfigurationError(f"a label split gives each node whole classes: nodes ({nodes}) "
                                 f"must not exceed the classes ({len(classes)})")
    return [np.flatnonzero(np.isin(y, block)) for block in np.array_split(classes, nodes)]


def prepare_data(directory: Path, nodes: int, split: str = "label", seed: int = 0,
                 test_fraction: float = 0.25, dataset: str = "digits") -> tuple[list[str], str]:
    """Write each node's training data and the shared test set as ``.npz`` (arrays ``x``,
    ``y``); return their paths. The test set is a stratified hold-out of every class."""
    from ..data import load_dataset, partition
    from ..data import split as hold_out

    x, y = load_dataset(dataset)
    train_x, train_y, test_x, test_y = hold_out(x, y, 1, "iid", server_fraction=test_fraction,
                                                seed=seed)
    train_x, train_y = train_x[0], train_y[0]
    if split == "label":
        parts = split_by_label(train_y, nodes)
    else:
        parts = partition(train_y, nodes, split, seed=seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = directory / f"node_{i + 1}.npz"
        np.savez(path, x=train_x[part], y=train_y[part])
        paths.append(str(path))
    test = directory / "test.npz"
    np.savez(test, x=test_x, y=test_y)
    return paths, str(test)


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def child_environment() -> dict:
    """This interpreter's path (so the model's module imports in the node as it does here) and
    one thread per TensorFlow pool, unless the user set them."""
    env = dict(os.environ)
    for key, value in CHILD_THREADS.items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    path = [entry for entry in sys.path if isinstance(entry, str) and entry]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def run_nodes(jobs: list[dict], workdir: str | os.PathLike, timeout: float = 900.0) -> list[dict]:
    """Run one ``compare_child`` process per job, all at once; return their results in order.

    A node that fails ends the others; leaving (even by an exception) ends and reaps every
    process by its PID."""
    workdir = Path(workdir)
    (workdir / "jobs").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = child_environment()
    processes: dict[str, subprocess.Popen] = {}
    results: dict[str, Path] = {}
    try:
        for job in jobs:
            name = job["name"]
            results[name] = workdir / "jobs" / f"{name}.result.json"
            job = {**job, "result": str(results[name])}
            job_file = workdir / "jobs" / f"{name}.json"
            # It may hold storage credentials: readable by this user only.
            descriptor = os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump(job, file)
            with open(workdir / "logs" / f"{name}.log", "wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "pyfed.serverless.compare_child", str(job_file)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        _wait(processes, workdir, timeout)
    finally:
        end_processes(processes.values())
    return [json.loads(results[job["name"]].read_text()) for job in jobs]


def _wait(processes: dict[str, subprocess.Popen], workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = False
        for name, process in processes.items():
            code = process.poll()
            if code is None:
                running = True
            elif code != 0:
                raise PyFedError(f"node {name} failed (exit code {code}); its output ends:\n"
                                 f"{_tail(workdir / 'logs' / f'{name}.log')}\n"
                                 f"(all logs: {workdir / 'logs'})")
        if not running:
            return
        if time.monotonic() >= deadline:
            slow = [name for name, p in processes.items() if p.poll() is None]
            raise PyFedError(f"nodes {', '.join(slow)} did not finish within {timeout:g} s "
                             f"(logs: {workdir / 'logs'})")
        time.sleep(0.2)


def end_processes(processes) -> None:
    """SIGTERM whatever still runs, then SIGKILL what ignores it; always reaped."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def model_name(model_fn: Callable | str | None) -> str:
    """The node builds the model by name: ``"module:function"``, never a pickled function."""
    if model_fn is None:
        return DEFAULT_MODEL
    if isinstance(model_fn, str):
        module, _, function = model_fn.partition(":")
        if not module or not function:
            raise ConfigurationError(f"model_fn must be a function or 'module:function'; "
                                     f"received {model_fn!r}")
        return model_fn
    module = getattr(model_fn, "__module__", None)
    qualname = getattr(model_fn, "__qualname__", "")
    if not callable(model_fn) or not module or module == "__main__" or "<" in qualname:
        raise ConfigurationError(
            "model_fn must be a module-level function of an importable module (each node is a "
            "new process that imports it by name), or its name as 'module:function'; received "
            f"{model_fn!r}")
    return f"{module}:{qualname}"


def _check_whole(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}; received {value!r}")


def _per_node(name: str, value, nodes: int) -> list[int]:
    """One whole number for every node, or a list of one per node."""
    values = [value] * nodes if isinstance(value, int) else list(value)
    if len(values) != nodes:
        raise ConfigurationError(f"{name} must be one integer or one per node ({nodes}); "
                                 f"received {value!r}")
    for each in values:
        _check_whole(name, each, 1)
    return values


def _delays(slow, nodes: int) -> list[float]:
    if slow is None:
        return [0.0] * nodes
    items = slow.items() if isinstance(slow, dict) else enumerate(slow)
    delays = [0.0] * nodes
    for index, seconds in items:
        if not isinstance(index, int) or not 0 <= index < nodes:
            raise ConfigurationError(f"slow names node index {index!r}; expected 0 to {nodes - 1}")
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise ConfigurationError(f"slow[{index}] must be seconds >= 0; received {seconds!r}")
        delays[index] = float(seconds)
    return delays
