"""What makes runs comparable in TensorBoard: HParams, a custom-scalars layout, global curves.

Written into each run's ``server/`` folder with TensorBoard's own protobufs and the record
writer of :mod:`pyfed.tracking.logs`, never with TensorFlow (importing this module does not import it):

- **HParams** (the HParams tab): one session per run, named after the run folder, holding the
  strategy and its parameters, clients, rounds, compression, and the training settings. Its
  metrics are the ``server/`` scalars' last values (the last round's ``test/accuracy``...) and
  :meth:`FL_Server.test`'s result, written to ``server/final/`` (metric group ``final``).
- **custom_scalars**: charts that put every client's per-epoch curve (runs ``clients/*``, tags
  ``epoch_loss``/``epoch_accuracy``) beside the global model's (``global/…``), and one per-round
  chart of fit, eval and test. TensorBoard merges identical layouts of many runs into one.
- **global/…**: the server's test and eval loss and accuracy after round r at step r × epochs,
  the clients' global-epoch step (a client's round-r epochs are steps (r-1)×E … r×E-1), so the
  global curve continues where the clients' round ended.

Epochs, learning rate and batch size are client-side settings in PyFed's API, so the server
learns them where it can: from the round's fit config (``on_fit_config_fn``), from what the
caller passes as ``hparams`` (FL_Experiment passes its ``run`` arguments), and, for epochs,
from the per-epoch history the clients report (the most common length, so one client's report
cannot move the global curve). What nobody told the server is left out of the HParams.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

#: One step per round, and one per global epoch: the charts the layout draws.
LAYOUT = {
    "PyFed: clients and the global model (step: global epoch)": {
        "loss": [r"^epoch_loss$", r"^global/(test|eval)_loss$"],
        "accuracy": [r"^epoch_accuracy$", r"^global/(test|eval)_accuracy$"],
    },
    "PyFed: rounds (step: round)": {
        "loss": [r"^(fit|eval|test)/loss$"],
        "accuracy": [r"^(fit|eval|test)/accuracy$"],
    },
}
_HPARAM_TYPES = (bool, int, float, str)
#: FL_Server.test()'s results: ``<run>/server/final/``.
FINAL_RUN = "final"


def hparams_summary(hparams: dict[str, Any], trial_id: str, start_time: float):
    """The HParams plugin's session start: these values, for the session named ``trial_id``."""
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2.hparams_pb(hparams, trial_id=trial_id, start_time_secs=start_time)


def session_end_summary(completed: bool):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE,
        end_time_secs=time.time())
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG, metadata=content, tensor=metadata.NULL_TENSOR)])


def layout_summary(layout: dict[str, dict[str, list[str]]] = LAYOUT):
    """The custom_scalars plugin's layout: {category: {chart: [tag regexes]}}."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    proto = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=tags))
            for chart, tags in charts.items()])
        for title, charts in layout.items()])
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                    string_val=[proto.SerializeToString()])
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(),
        tensor=tensor)])


def hparam_value(value: Any):
    """A value the HParams plugin can hold (bool, number, string), or None to leave it out."""
    if value is None or isinstance(value, _HPARAM_TYPES):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy scalar
        return value.item()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # metrics
    if isinstance(value, type) or callable(value) and hasattr(value, "__name__"):
        return value.__name__  # tf.optimizers.Adam -> "Adam"; a custom loss -> its name
    return type(value).__name__  # an optimizer or loss object: its kind


def strategy_hparams(strategy) -> dict[str, Any]:
    """``strategy`` (its class) and ``strategy.<parameter>`` for its public scalar settings."""
    values = {"strategy": type(strategy).__name__}
    for name, value in sorted(vars(strategy).items()):
        if name.startswith("_") or callable(value) or value is None:
            continue
        if isinstance(value, _HPARAM_TYPES):  # arrays (server optimizer state) are no setting
            values[f"strategy.{name}"] = value
    return values


def run_hparams(strategy, num_clients: int, rounds: int, compression: str,
                extra: dict[str, Any]) -> dict[str, Any]:
    """What the server knows of a run's settings; ``extra`` (the caller's) adds or overrides."""
    return {**strategy_hparams(strategy), "clients": num_clients, "rounds": rounds,
            "compression": compression, **extra}


class RunBoard:
    """The server's comparison data for one run, written to its ``server/`` writer."""

    def __init__(self, writer, run_name: str, hparams: dict[str, Any], client_history=None):
        self.writer = writer
        self.run_name = run_name
        self.hparams = {k: v for k, v in ((k, hparam_value(v)) for k, v in hparams.items())
                        if v is not None}
        self._client_history = client_history  # the RunLogger's writer of clients' curves
        self._lengths: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._started = time.time()
        self._hparams_written = False
        self.epochs: int | None = None

    def train_begin(self) -> None:
        self.writer.write_summary(layout_summary(), step=0)
        self.writer.flush()

    def client_history(self, name: str, history: dict, first_epoch: int, **where) -> None:
        """FitCollector's on_history: the client's curves, and how many epochs it trained.
        ``where`` (e.g. ``server_round``) goes on to the writer unchanged."""
        if self._client_history is not None:
            self._client_history(name, history, first_epoch, **where)
        lengths = {len(series) for series in history.values() if isinstance(series, list)}
        if len(lengths) == 1:
            with self._lock:
                self._lengths[lengths.pop()] += 1

    def round_end(self, server_round: int, sections: dict[str, dict], configs) -> None:
        """After a round's scalars: the global curve at the clients' step, and (once) HParams."""
        configured = _config_values(configs)
        with self._lock:
            reported = self._lengths.most_common(1)[0][0] if self._lengths else None
            self._lengths.clear()
        epochs = (reported or configured.get("epochs") or self.hparams.get("epochs")
                  or self.epochs or 1)
        self.epochs = int(epochs)
        values = {f"global/{section}_{name}": value
                  for section in ("test", "eval") for name, value in sections.get(section, {}).items()
                  if name in ("loss", "accuracy")}
        if values:
            self.writer.scalars(values, server_round * self.epochs)
        if not self._hparams_written:  # the round config is what the clients applied
            hparams = {**self.hparams, **configured, "epochs": self.epochs}
            self.writer.write_summary(hparams_summary(hparams, self.run_name, self._started),
                                      step=0)
            self._hparams_written = True
        self.writer.flush()

    def test_result(self, results: dict[str, float], step: int) -> None:
        """FL_Server.test(): the final test (see :func:`write_final_test`)."""
        write_final_test(self.writer.directory, results, step)

    def train_end(self, completed: bool) -> None:
        if self._hparams_written:
            self.writer.write_summary(session_end_summary(completed), step=0)
            self.writer.flush()


def write_final_test(server_dir, results: dict[str, float], step: int) -> None:
    """The final test as ``test/…`` scalars in the sub-run ``server/final``.

    Its own run, not more points of the per-round ``test/…`` curve: the data may differ from
    ``test_data``'s, and one step would hold two values. Inside ``server/``, so the HParams
    session counts it among its metrics (group ``final``)."""
    from .logs import ScalarWriter

    writer = ScalarWriter(Path(server_dir) / FINAL_RUN)
    writer.scalars({f"test/{name}": value for name, value in results.items()
                    if isinstance(value, (int, float))}, step)
    writer.close()


def _config_values(configs) -> dict[str, Any]:
    """Training settings the round's fit config sets, when every sampled client got the same."""
    found: dict[str, Any] = {}
    configs = list(configs)
    for key in ("epochs", "lr", "batch_size"):
        values = {c.get(key) for c in configs}
        if len(values) == 1:
            value = hparam_value(values.pop())
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[key] = value
    return found
