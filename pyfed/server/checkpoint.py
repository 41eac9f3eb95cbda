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
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PyFedError
from ..strategy.state import join_arrays, split_arrays

logger = logging.getLogger("pyfed")

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 1
_TEMPORARY_PREFIX, _TEMPORARY_SUFFIX = ".checkpoint-", ".npz"
# Exactly the names mkstemp gives our temporaries (8 characters from its alphabet), so nothing
# else in a shared folder is ever taken for one.
_TEMPORARY_NAME = re.compile(r"\.checkpoint-[a-z0-9_]{8}\.npz")


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
    handle, temporary = tempfile.mkstemp(prefix=_TEMPORARY_PREFIX, suffix=_TEMPORARY_SUFFIX,
                                         dir=directory)
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
    # A truncated or damaged file fails inside numpy's zip reader with BadZipFile (a bad CRC,
    # no central directory) or EOFError (an empty file), neither an OSError; a document that
    # is not the one save_checkpoint writes fails on its fields. Each is one PyFedError here.
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise PyFedError(f"checkpoint {path} has format {found}; "
                                 f"this PyFed reads format {FORMAT_VERSION}")
            weights = [archive[f"w_{i}"] for i in range(meta["num_weights"])]
            strategy_arrays = [archive[f"s_{i}"] for i in range(meta["num_strategy_arrays"])]
            return Checkpoint(server_round=int(meta["round"]), weights=weights,
                              strategy_state=join_arrays(meta["strategy"], strategy_arrays),
                              history=meta["history"], run_name=meta["run_name"],
                              spec_hash=meta["spec_hash"])
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            ValueError) as exc:
        raise PyFedError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def find_checkpoint(logdir: Path, run_name: str | None = None,
                    checkpoint_dir: Path | None = None) -> Path | None:
    """The checkpoint to resume from: in ``checkpoint_dir``; else the newest one of the run
    named ``run_name`` (its folder, or a numbered sibling ``<run_name>-<n>`` that a run made
    when the name was taken); else the newest one under ``logdir``. Newest: last written."""
    if checkpoint_dir is not None:
        candidate = Path(checkpoint_dir) / CHECKPOINT_FILE
        return candidate if candidate.is_file() else None
    logdir = Path(logdir)
    if run_name is not None:
        sibling = re.compile(re.escape(run_name) + r"-[0-9]+")
        found = [path for path in logdir.glob(f"*/{CHECKPOINT_FILE}")
                 if path.parent.name == run_name or sibling.fullmatch(path.parent.name)]
    else:
        found = list(logdir.glob(f"*/{CHECKPOINT_FILE}"))
    return max(found, key=_written_at, default=None)


def _written_at(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.parent.name
    except OSError:  # removed since the listing
        return -1, path.parent.name


def remove_orphaned_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries of checkpoint writes that never finished (a killed server), and
    only those: files in ``directory`` named exactly as :func:`save_checkpoint` names them."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no folder yet: nothing left over
        return removed
    for entry in entries:
        if _TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError as exc:
                logger.warning("could not remove the unfinished checkpoint %s: %s", entry.path,
                               exc.strerror or exc)
                continue
            removed.append(Path(entry.path))
    if removed:
        logger.info("removed %d unfinished checkpoint file(s) from %s", len(removed), directory)
    return removed
