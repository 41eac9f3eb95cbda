"""FederatedCallback: federated learning inside ``model.fit``, with or without a server.

    node = FederatedNode("shared/folder", "alice", mode="sync", num_nodes=2)
    model.fit(x, y, epochs=8, callbacks=[FederatedCallback(node)])

At the end of every ``every_n_epochs``-th epoch the callback reads the model's weights, calls
``federation.update(weights, num_examples, metrics=logs, epoch=epoch)``, sets the weights it
returns, and adds the federation's metrics to the epoch's logs with ``postfix``
(``accuracy_fed``), where every later callback (History, TensorBoard, EarlyStopping) sees them.
``federation`` is a :class:`~pyfed.serverless.FederatedNode` or a
:class:`~pyfed.serverless.ServerFederation` (an FL_Server running FedAsync or FedBuff): the
callback only needs ``update`` (and, when the federation has it, ``current_weights``, the
model a server holds, which the first epoch then trains, as an FL_Client's would).

This module imports Keras (the callback is a ``keras.callbacks.Callback``); ``import pyfed``
and ``import pyfed.serverless`` do not.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras

from .errors import ConfigurationError, ModelMismatchError
from .safe_text import path_component, single_component

DEFAULT_LOGDIR = "pyfed_logs"
DEFAULT_RUN_NAME = "serverless"


class FederatedCallback(keras.callbacks.Callback):
    """``FederatedCallback(federation, num_examples_per_epoch=None, every_n_epochs=1,
    postfix="_fed", logdir=None, run_name=None)``

    ``num_examples_per_epoch``: this node's weight in the aggregation. By default, the number of
    batches the node trained in the epoch (the optimizer's step count; ``fit``'s ``steps`` when
    it has no optimizer). Keras does not tell a callback its batch size, and only the ratios
    between nodes matter to FedAvg and to the asynchronous mixing: with one batch size on every
    node, batches are proportional to examples. Pass ``len(x_train)`` when the nodes' batch
    sizes differ.

    TensorBoard: the node's epoch curves (its own logs and the ``_fed`` ones, tagged
    ``epoch_<metric>`` at step ``epoch``) go to ``<logdir>/<run_name>/clients/<name>/``, PyFed's
    layout. With a ServerFederation and no ``logdir``, they go to the server's run folder when it
    is on this machine (beside the server's curves), else to ``pyfed_logs/<the server's run>``.
    A FederatedNode's run is ``run_name`` or the node's own ``run_name``, else ``serverless``;
    ``logdir=False`` writes nothing.
    """

    def __init__(self, federation: Any, num_examples_per_epoch: int | None = None,
                 every_n_epochs: int = 1, postfix: str = "_fed",
                 logdir: str | os.PathLike | None | bool = None, run_name: str | None = None):
        super().__init__()
        if not callable(getattr(federation, "update", None)):
            raise ConfigurationError(
                "federation must be a pyfed.serverless.FederatedNode or ServerFederation (an "
                f"object with update(weights, num_examples, metrics, epoch)); received a "
                f"{type(federation).__name__}")
        if num_examples_per_epoch is not None and (
                isinstance(num_examples_per_epoch, bool) or not isinstance(num_examples_per_epoch, int)
                or num_examples_per_epoch < 1):
            raise ConfigurationError(f"num_examples_per_epoch must be None or an integer >= 1; "
                                     f"received {num_examples_per_epoch!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigurationError(f"every_n_epochs must be an integer >= 1; received "
                                     f"{every_n_epochs!r}")
        if not isinstance(postfix, str) or not postfix:
            raise ConfigurationError(f"postfix must be a non-empty string; received {postfix!r}")
        if run_name is not None:
            single_component(run_name, "run_name", ConfigurationError)
        self.federation = federation
        self.num_examples_per_epoch = num_examples_per_epoch
        self.every_n_epochs = every_n_epochs
        self.postfix = postfix
        self.logdir = logdir
        self.run_name = run_name
        self.federated_metrics: dict = {}  # what the last update returned
        self._steps_at_epoch_begin: int | None = None
        self._tensorboard = None

    # -- Keras' hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        current = getattr(self.federation, "current_weights", None)
        if callable(current):  # a server's model: the one every node starts from
            self._set_weights(current())

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._steps_at_epoch_begin = self._optimizer_steps()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs if logs is not None else {}
        if (epoch + 1) % self.every_n_epochs == 0:
            # The node's own metrics only: last epoch's federated ones are not its own.
            own = {key: value for key, value in logs.items() if not key.endswith(self.postfix)}
            weights, metrics = self.federation.update(
                self.model.get_weights(), self._num_examples(), metrics=own, epoch=epoch)
            self._set_weights(weights)
            self.federated_metrics = dict(metrics or {})
            for key, value in self.federated_metrics.items():
                logs[f"{key}{self.postfix}"] = value
        self._write_curves(epoch, logs)

    def on_train_end(self, logs=None) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ------------------------------------------------------------------------------------------

    def _optimizer_steps(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return None
        try:
            return int(keras.ops.convert_to_numpy(iterations))
        except (TypeError, ValueError):
            return None

    def _num_examples(self) -> int:
        if self.num_examples_per_epoch is not None:
            return self.num_examples_per_epoch
        now = self._optimizer_steps()
        if now is not None and self._steps_at_epoch_begin is not None \
                and now > self._steps_at_epoch_begin:
            return now - self._steps_at_epoch_begin
        return max(1, int(self.params.get("steps") or 1))

    def _set_weights(self, weights) -> None:
        """Keras' own error for a mismatch says little; this names the tensor and both shapes."""
        ours = self.model.get_weights()
        if len(weights) != len(ours):
            raise ModelMismatchError(f"the federation's model has {len(weights)} weight tensors; "
                                     f"this Keras model has {len(ours)}")
        for index, (theirs, mine) in enumerate(zip(weights, ours)):
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ModelMismatchError(
                    f"the federation's tensor {index} has shape {list(theirs.shape)}; this Keras "
                    f"model's has {list(mine.shape)}")
        self.model.set_weights(weights)

    # -- TensorBoard ---------------------------------------------------------------------------

    def _write_curves(self, epoch: int, logs: dict) -> None:
        if self.logdir is False:
            return
        values = {}
        for key, value in logs.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                values[key] = [number]
        if not values:
            return
        if self._tensorboard is None:
            from .tracking.logs import RunLogger

            self._tensorboard = RunLogger(self._run_dir())
        self._tensorboard.client_history(str(getattr(self.federation, "name", "node")), values,
                                         epoch)

    def _run_dir(self) -> Path:
        """PyFed's layout: ``<logdir>/<run>/``; the node's curves go in its ``clients/<name>``."""
        server_run = getattr(self.federation, "run_dir", None)
        if self.logdir is None and server_run is not None and self.run_name is None:
            return Path(server_run)
        if self.run_name is not None:  # the user's, checked as one folder name: kept as written
            run = self.run_name
        else:  # the node's, or the server's (from the network): made one safe component
            run = path_component(getattr(self.federation, "run_name", None) or DEFAULT_RUN_NAME)
        return Path(self.logdir or DEFAULT_LOGDIR) / run
