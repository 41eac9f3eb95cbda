"""One Keras node of a comparison run: ``python -m pyfed.serverless.compare_child job.json``.

:func:`pyfed.serverless.compare.compare_with_standalone` starts one of these per node and per
setting (standalone, federated). Everything the node needs is plain data, never a pickle: the
job is JSON, the node's training data and the shared test set are ``.npz`` files read with
``allow_pickle=False``, and the model is built by a function named ``"module:function"``. The
node writes its result as JSON to the job's ``result`` path (atomically: a reader never sees
half of it).

Job keys: ``name``, ``train`` and ``test`` (.npz paths holding x and y), ``result``, ``model``,
``epochs``, ``batch_size``, ``lr``, ``seed`` (the same for every node: one initial model),
``sleep`` (seconds added to each epoch: a slower node), ``start_together`` (``{"dir", "count",
"timeout"}``: train only once ``count`` nodes are ready), ``logdir``/``run_name`` (TensorBoard:
false for none, null for the FederatedCallback's default), and ``federation``: null (standalone), ``{"kind": "folder", "folder", "mode",
"num_nodes", "timeout", "storage_options", "options"}`` (a FederatedNode) or ``{"kind":
"server", "server_ip", "server_port", "options"}`` (a ServerFederation).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigurationError, PyFedError


def load_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def model_builder(path: str):
    """``"package.module:function"`` -> the function (a name the user gave, never a pickle)."""
    module, _, function = str(path).partition(":")
    if not module or not function:
        raise ConfigurationError(f"model must be 'module:function'; received {path!r}")
    target = importlib.import_module(module)
    for part in function.split("."):
        target = getattr(target, part)
    return target


def open_federation(spec: dict | None, name: str):
    if spec is None:
        return None
    options = dict(spec.get("options") or {})
    if spec["kind"] == "server":
        from .server_federation import ServerFederation

        return ServerFederation(spec["server_ip"], int(spec["server_port"]), name, **options)
    from .node import FederatedNode

    return FederatedNode(spec["folder"], name, mode=spec.get("mode", "async"),
                         num_nodes=spec.get("num_nodes"), timeout=spec.get("timeout", 60),
                         storage_options=spec.get("storage_options"), **options)


def slower_by(seconds: float):
    """A Keras callback adding ``seconds`` to every epoch, before the federation hears of it:
    a node on slower hardware, or with more data."""
    import keras

    class SlowEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(seconds)

    return SlowEpochs()


def start_together(barrier: dict, name: str) -> None:
    """Wait until every node of the run is ready to train (TensorFlow loaded, the model built),
    so that the nodes' epochs overlap as they would on machines that start together, however
    long each took to start here. Bounded by the barrier's ``timeout``."""
    folder = Path(barrier["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ready").touch()
    deadline = time.monotonic() + float(barrier.get("timeout", 120))
    while len(list(folder.glob("*.ready"))) < int(barrier["count"]):
        if time.monotonic() >= deadline:
            raise PyFedError(f"{name}: not every node was ready within "
                               f"{barrier.get('timeout', 120)} s")
        time.sleep(0.05)


def run(job: dict) -> dict:
    import keras

    from ..keras import FederatedCallback

    started = time.monotonic()
    keras.utils.set_random_seed(int(job.get("seed", 0)))
    x, y = load_arrays(job["train"])
    test_x, test_y = load_arrays(job["test"])
    model = model_builder(job.get("model", "pyfed.data:digits_model"))()
    model.compile(optimizer=keras.optimizers.Adam(float(job.get("lr", 0.005))),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = []
    if job.get("sleep"):
        callbacks.append(slower_by(float(job["sleep"])))
    federation = open_federation(job.get("federation"), job["name"])
    if job.get("start_together"):
        start_together(job["start_together"], job["name"])
    if federation is not None:
        # false: no curves; null: the callback's default (beside a server's on this machine)
        callbacks.append(FederatedCallback(federation, logdir=job.get("logdir", False),
                                           run_name=job.get("run_name")))
    try:
        history = model.fit(x, y, epochs=int(job["epochs"]), batch_size=int(job.get("batch_size", 32)),
                            verbose=0, callbacks=callbacks)
    finally:
        close = getattr(federation, "close", None)
        if close is not None:
            close()
    loss, accuracy = model.evaluate(test_x, test_y, verbose=0)
    return {"name": job["name"], "accuracy": float(accuracy), "loss": float(loss),
            "history": {key: [float(v) for v in values]
                        for key, values in history.history.items()},
            "seconds": time.monotonic() - started}


def write_result(path: str, result: dict) -> None:
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(result))
    os.replace(temporary, target)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pyfed.serverless.compare_child job.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    result = run(job)
    write_result(job["result"], result)
    print(f"{job['name']}: test accuracy {result['accuracy']:.4f} "
          f"({result['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
