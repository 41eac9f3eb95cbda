"""TensorBoard output and progress lines.

Layout (DESIGN.md)::

    <logdir>/<run_name>/server/           per-round scalars (fit loss/metrics, participants, seconds, bytes)
    <logdir>/<run_name>/clients/<name>/   per-epoch curves, step = global epoch

Event files are written with TensorBoard's own record writer and protobufs, not ``tf.summary``:
the files are identical for TensorBoard, but a numpy-only process never imports TensorFlow
(TensorBoard's ``EventFileWriter`` would, for ``tf.io.gfile``). Writers are created lazily, the
first time something is logged to them, as Keras' TensorBoard callback does.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("pyfed")

RUN_MARKER = ".pyfed_run"
_file_counter = itertools.count()


class ScalarWriter:
    """Appends scalar summaries to one TensorBoard event file in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._writer = None
        self._lock = threading.Lock()

    def _open(self):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.directory.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_file_counter)}.v2")
        writer = RecordWriter(open(self.directory / name, "wb"))
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        writer.write(header.SerializeToString())
        return writer

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        self.write_summary(summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()]), step)

    def write_summary(self, summary, step: int) -> None:
        """Any TensorBoard ``Summary`` proto, e.g. a plugin's (HParams, custom scalars)."""
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        with self._lock:
            if self._writer is None:
                self._writer = self._open()
            self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def new_run_dir(logdir: str | os.PathLike, run_name: str | None = None) -> Path:
    """Create a fresh run folder; an existing one is never reused or deleted."""
    base = Path(logdir)
    base.mkdir(parents=True, exist_ok=True)
    stem = run_name or time.strftime("run-%Y%m%d-%H%M%S")
    for suffix in itertools.chain([""], (f"-{i}" for i in itertools.count(2))):
        candidate = base / f"{stem}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class RunLogger:
    """All TensorBoard writers of one run: the server's and one per client."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.server = ScalarWriter(self.run_dir / "server")
        self._clients: dict[str, ScalarWriter] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> ScalarWriter:
        with self._lock:
            if name not in self._clients:
                self._clients[name] = ScalarWriter(self.run_dir / "clients" / safe_name(name))
            return self._clients[name]

    def client_history(self, name: str, history: dict, first_epoch: int) -> None:
        """Per-epoch curves, tagged like Keras' TensorBoard callback (``epoch_loss``...)."""
        writer = self.client(name)
        length = max((len(v) for v in history.values()), default=0)
        for offset in range(length):
            values = {f"epoch_{metric}": series[offset]
                      for metric, series in history.items() if offset < len(series)}
            writer.scalars(values, first_epoch + offset)
        writer.flush()

    def close(self) -> None:
        self.server.close()
        with self._lock:
            for writer in self._clients.values():
                writer.close()


def safe_name(name: str) -> str:
    """A client name usable as one path component (names arrive from the network)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return cleaned or "client"


def logs_line(run_dir, logdir) -> str:
    """Where this run's TensorBoard logs are, and the command that opens them."""
    import shutil

    tensorboard = "tensorboard"
    if shutil.which(tensorboard) is None:  # e.g. a venv that is not activated
        beside = Path(sys.executable).with_name("tensorboard")
        if beside.is_file():
            tensorboard = str(beside)
    return f"TensorBoard logs: {run_dir}  (open them with: {tensorboard} --logdir {logdir})"


def launch_tensorboard(logdir: str | os.PathLike, port: int = 6006) -> subprocess.Popen:
    """Start TensorBoard in the background (it outlives training on purpose) and say where."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    print(f"TensorBoard: http://localhost:{port}/ (pid {process.pid})", flush=True)
    return process


# ---------------------------------------------------------------------------------------------
# Progress lines
# ---------------------------------------------------------------------------------------------

_SHORT = {"accuracy": "acc", "sparse_categorical_accuracy": "acc", "categorical_accuracy": "acc"}


def format_metrics(prefix: str, metrics: dict) -> str:
    # Loss first, as Keras prints it; then the other metrics in a stable order.
    ordered = sorted(metrics.items(), key=lambda item: (item[0] != "loss", item[0]))
    parts = [f"{_SHORT.get(name, name)} {value:.4g}" for name, value in ordered
             if isinstance(value, (int, float))]
    return f"{prefix} " + " ".join(parts) if parts else ""


def format_bytes(nbytes: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def round_line(server_round: int, rounds: int, participants: int, fit_metrics: dict,
               seconds: float, bytes_in: int, bytes_out: int, extra: str = "") -> str:
    pieces = [f"round {server_round}/{rounds}", f"{participants} clients"]
    fit = format_metrics("fit", fit_metrics)
    if fit:
        pieces.append(fit)
    if extra:
        pieces.append(extra)
    pieces += [f"{seconds:.1f} s", f"{format_bytes(bytes_in)} in / {format_bytes(bytes_out)} out"]
    return " · ".join(pieces)
