"""Server checkpoints: one ``.npz`` file, written atomically, read without pickle.

The file holds the global weights (``w_<i>``), the strategy's arrays (``s_<i>``, e.g. FedAdam's
moments) and a JSON document (``meta``, as uint8): the last completed round, the strategy's
scalar state (its random generators included), the history and the run's identity. It is
written to a temporary file in the same folder and moved into place with ``os.replace``, so a
crash at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PyFedError
from .strategy.state import join_arrays, split_arrays

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    server_round: int
    weights: list
    strategy_state: dict
    history: dict
    run_name: str
    spec_hash: str


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document, strategy_arrays = split_arrays(checkpoint.strategy_state)
    meta = {"format": FORMAT_VERSION, "round": checkpoint.server_round, "run_name": checkpoint.run_name,
            "spec_hash": checkpoint.spec_hash, "history": checkpoint.history,
            "strategy": document, "num_weights": len(checkpoint.weights),
            "num_strategy_arrays": len(strategy_arrays)}
    arrays = {f"w_{i}": np.asarray(w) for i, w in enumerate(checkpoint.weights)}
    arrays.update({f"s_{i}": np.asarray(a) for i, a in enumerate(strategy_arrays)})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    target = directory / CHECKPOINT_FILE
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != FORMAT_VERSION:
                raise PyFedError(f"checkpoint {path} has format {meta.get('format')}; "
                                 f"this PyFed reads format {FORMAT_VERSION}")
            weights = [archive[f"w_{i}"] for i in range(meta["num_weights"])]
            strategy_arrays = [archive[f"s_{i}"] for i in range(meta["num_strategy_arrays"])]
    except (OSError, KeyError, ValueError) as exc:
        raise PyFedError(f"cannot read checkpoint {path}: {exc}") from None
    return Checkpoint(server_round=int(meta["round"]), weights=weights,
                      strategy_state=join_arrays(meta["strategy"], strategy_arrays),
                      history=meta["history"], run_name=meta["run_name"],
                      spec_hash=meta["spec_hash"])


def find_checkpoint(logdir: Path, run_name: str | None = None,
                    checkpoint_dir: Path | None = None) -> Path | None:
    """The checkpoint to resume from: in ``checkpoint_dir``, else in the run folder named
    ``run_name``, else in the most recently written run folder under ``logdir``."""
    if checkpoint_dir is not None:
        candidate = Path(checkpoint_dir) / CHECKPOINT_FILE
        return candidate if candidate.is_file() else None
    logdir = Path(logdir)
    if run_name is not None:
        candidate = logdir / run_name / CHECKPOINT_FILE
        return candidate if candidate.is_file() else None
    found = sorted(logdir.glob(f"*/{CHECKPOINT_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
