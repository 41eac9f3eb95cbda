"""TensorBoard output and progress lines.

Layout (DESIGN.md)::

    <logdir>/<run_name>/server/           per-round scalars (fit loss/metrics, participants, seconds, bytes)
    <logdir>/<run_name>/clients/<name>/   per-epoch curves, step = global epoch
                                          (<name> is safe_text.path_component(client name))

Event files are written with TensorBoard's own record writer and protobufs, not ``tf.summary``:
the files are identical for TensorBoard, but a numpy-only process never imports TensorFlow
(TensorBoard's ``EventFileWriter`` would, for ``tf.io.gfile``). Writers are created lazily, the
first time something is logged to them, as Keras' TensorBoard callback does.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import StorageError
from ..safe_text import path_component, printable

logger = logging.getLogger("pyfed")

RUN_MARKER = ".pyfed_run"
_file_counter = itertools.count()


class ScalarWriter:
    """Appends scalar summaries to one TensorBoard event file in ``directory``.

    ``purge_step``: this file continues a run that was stopped and resumed. Its first event is
    TensorBoard's restart marker (``SessionLog.START`` at that step), on which TensorBoard's
    loader drops every event of the earlier files at that step or later: what the stopped run
    wrote past its checkpoint is shown once, as rewritten, not twice. :meth:`restart` writes
    the same marker later in the file (a retried round rewrites its epochs).

    A failed write (a full disk) loses curves, never the run: it is logged once per writer with
    the path and the reason, and writing goes on.
    """

    def __init__(self, directory: Path, purge_step: int | None = None):
        self.directory = Path(directory)
        self.purge_step = purge_step
        self._writer = None
        self._lock = threading.Lock()
        self._failed = False
        self.last_step: int | None = None  # the highest step this writer has written

    def _open(self):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.directory.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_file_counter)}.v2")
        writer = RecordWriter(open(self.directory / name, "wb"))
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        writer.write(header.SerializeToString())
        if self.purge_step is not None:
            writer.write(_restart_event(self.purge_step))
        return writer

    def restart(self, step: int) -> None:
        """Steps from ``step`` on are written again: TensorBoard shows only the new ones."""
        self._write(_restart_event(step), int(step) - 1, restart=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        self.write_summary(summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()]), step)

    def write_summary(self, summary, step: int) -> None:
        """Any TensorBoard ``Summary`` proto, e.g. a plugin's (HParams, custom scalars)."""
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._write(event.SerializeToString(), int(step))

    def _write(self, record: bytes, step: int, restart: bool = False) -> None:
        with self._lock:
            try:
                if self._writer is None:
                    self._writer = self._open()
                self._writer.write(record)
            except OSError as exc:
                self._report(exc)
                return
            # After a restart marker, TensorBoard holds nothing at ``step + 1`` or later.
            if restart or self.last_step is None or step > self.last_step:
                self.last_step = step

    def flush(self) -> None:
        with self._lock:
            if self._writer is not None:
                try:
                    self._writer.flush()
                except OSError as exc:
                    self._report(exc)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                try:
                    writer.close()
                except OSError as exc:
                    self._report(exc)

    def _report(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            logger.warning("TensorBoard: cannot write to %s: %s; the run goes on, but these "
                           "curves may miss points", self.directory, exc.strerror or exc)


def _restart_event(step: int) -> bytes:
    """TensorBoard's restart marker: its loader drops the earlier events at ``step`` or later."""
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time(), step=int(step), session_log=event_pb2.SessionLog(
        status=event_pb2.SessionLog.START)).SerializeToString()


def new_run_dir(logdir: str | os.PathLike, run_name: str | None = None) -> Path:
    """Create a fresh run folder; an existing one is never reused or deleted."""
    base = Path(logdir)
    _make_folder(base, parents=True)
    stem = run_name or time.strftime("run-%Y%m%d-%H%M%S")
    for suffix in itertools.chain([""], (f"-{i}" for i in itertools.count(2))):
        candidate = base / f"{stem}{suffix}"
        if _make_folder(candidate):
            return candidate
    raise AssertionError("unreachable")


def _make_folder(path: Path, parents: bool = False) -> bool:
    """mkdir; False if it exists. Any other failure is one StorageError naming the path."""
    try:
        path.mkdir(parents=parents, exist_ok=parents)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot create the run folder {path}: {exc.strerror or exc}") from None


def discard_run_dir(run_dir: Path) -> None:
    """Undo :func:`new_run_dir` for a run that never started (say, its port was taken): its
    marker goes, then the folder, only if nothing else is in it."""
    with contextlib.suppress(OSError):
        (Path(run_dir) / RUN_MARKER).unlink()
    with contextlib.suppress(OSError):
        Path(run_dir).rmdir()


class RunLogger:
    """All TensorBoard writers of one run: the server's and one per client."""

    def __init__(self, run_dir: Path, resumed_round: int | None = None):
        self.run_dir = Path(run_dir)
        # A resumed run rewrites from ``resumed_round`` on: each writer starts with a purge.
        self.resumed_round = resumed_round
        self.server = ScalarWriter(self.run_dir / "server", purge_step=resumed_round)
        self._clients: dict[str, ScalarWriter] = {}
        self._lock = threading.Lock()

    def client(self, name: str, purge_step: int | None = None) -> ScalarWriter:
        with self._lock:
            if name not in self._clients:
                # Names come from the network: one component each, and distinct names keep
                # distinct folders (a/b, a_b and a:b), whatever their length.
                self._clients[name] = ScalarWriter(self.run_dir / "clients" / path_component(name),
                                                   purge_step=purge_step)
            return self._clients[name]

    def client_history(self, name: str, history: dict, first_epoch: int,
                       server_round: int | None = None) -> None:
        """Per-epoch curves, tagged like Keras' TensorBoard callback (``epoch_loss``...).
        ``server_round``: the round they were trained in (for a resumed run's purge step)."""
        writer = self.client(name, self._client_purge_step(history, first_epoch, server_round))
        if writer.last_step is not None and first_epoch <= writer.last_step:
            writer.restart(first_epoch)  # a round written before, again (a retried round)
        length = max((len(v) for v in history.values()), default=0)
        for offset in range(length):
            values = {f"epoch_{printable(metric)}": series[offset]
                      for metric, series in history.items() if offset < len(series)}
            writer.scalars(values, first_epoch + offset)
        writer.flush()

    def _client_purge_step(self, history: dict, first_epoch: int, server_round) -> int | None:
        """The client's global epoch where the resumed round began: its step is the epoch, not
        the round, so it is counted back from this history (``len`` epochs a round)."""
        if self.resumed_round is None:
            return None
        epochs = max((len(series) for series in history.values()), default=0)
        rounds_later = max(0, (server_round or self.resumed_round) - self.resumed_round)
        return max(0, int(first_epoch) - rounds_later * epochs)

    def close(self) -> None:
        self.server.close()
        with self._lock:
            for writer in self._clients.values():
                writer.close()


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
    """Start TensorBoard in the background (it outlives training on purpose); the caller says
    where (:func:`tensorboard_line`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return process


def tensorboard_line(port: int, process: subprocess.Popen) -> str:
    return f"TensorBoard: http://localhost:{port}/ (pid {process.pid})"


# ---------------------------------------------------------------------------------------------
# Progress lines
# ---------------------------------------------------------------------------------------------

_SHORT = {"accuracy": "acc", "sparse_categorical_accuracy": "acc", "categorical_accuracy": "acc"}


def format_metrics(prefix: str, metrics: dict) -> str:
    # Loss first, as Keras prints it; then the other metrics in a stable order. Metric names
    # come from the clients: escaped, so none can start a line of its own.
    ordered = sorted(metrics.items(), key=lambda item: (item[0] != "loss", item[0]))
    parts = [f"{_SHORT.get(name, printable(name, 64))} {value:.4g}" for name, value in ordered
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


def version_line(version: int, versions: int, staleness: list[int], seconds: float,
                 extra: str = "") -> str:
    """``version 12/50 · 3 updates (staleness 0,0,2) · test acc 0.91 · 0.4 s``"""
    count = len(staleness)
    pieces = [f"version {version}/{versions}",
              f"{count} update{'s' if count != 1 else ''} (staleness "
              f"{','.join(str(s) for s in staleness)})"]
    if extra:
        pieces.append(extra)
    pieces.append(f"{seconds:.1f} s")
    return " · ".join(pieces)
