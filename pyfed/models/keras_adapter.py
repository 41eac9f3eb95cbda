"""Keras models: compile once, keep the optimizer, ``set_weights`` every round.

TensorFlow/Keras is imported lazily, inside functions, so that numpy-only processes never pay
for it. Architectures travel as Keras JSON and are rebuilt in Keras' safe mode (no Lambda
bytecode); custom layers must be registered Keras serializables on the client.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import ConfigurationError, ModelMismatchError
from ..wire.spec import TensorSpec
from .base import FitOutcome
from .data_checks import check_features, check_labels


def _keras():
    import keras  # noqa: PLC0415  (lazy on purpose: see module docstring)

    return keras


def make_optimizer(optimizer: Any, lr: float | None):
    """Accept what PyFed users pass: a class (``tf.optimizers.Adam``), an instance, or a string."""
    keras = _keras()
    if optimizer is None:
        optimizer = "adam"
    if isinstance(optimizer, str):
        instance = keras.optimizers.get(optimizer)
        return type(instance)(learning_rate=lr) if lr is not None else instance
    if isinstance(optimizer, type):
        return optimizer(learning_rate=lr) if lr is not None else optimizer()
    if lr is not None:
        optimizer.learning_rate = lr
    return optimizer


def model_from_description(description: dict):
    """Rebuild the server's model from WELCOME's ``{"kind": "keras", "json": ...}``, safely."""
    keras = _keras()
    try:
        config = json.loads(description["json"])
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:  # Keras raises many types here; the cause is what matters
        raise ModelMismatchError(
            f"cannot rebuild the server's Keras model: {type(exc).__name__}: {exc}. Custom layers "
            "must be registered with @keras.saving.register_keras_serializable on the client") from exc
    return model


def check_fit_callbacks(callbacks, adapter, who: str) -> list:
    """``callbacks`` as a list, if ``adapter`` has somewhere to put them: only a Keras model's
    ``fit`` takes Keras callbacks. ``who`` starts the error (e.g. the client's name)."""
    callbacks = list(callbacks or [])
    # An adapter wrapping a Keras model (a Ray actor's virtual client) says so.
    if callbacks and not (isinstance(adapter, KerasAdapter)
                          or getattr(adapter, "takes_fit_callbacks", False)):
        raise ConfigurationError(
            f"{who}fit_callbacks are Keras callbacks, passed to a Keras model's fit; this "
            f"model is a {type(adapter).__name__}, which takes none")
    return callbacks


class KerasAdapter:
    def __init__(self, model):
        self.model = model
        self._compiled_with: tuple | None = None
        self._anchors = None  # FedProx anchor variables, created on the first round that asks
        self._mu = None
        self._metrics: list | None = None
        self._trainable_positions: list[int] = []
        self._ensure_built()

    def _ensure_built(self) -> None:
        if not self.model.built or not self.model.weights:
            raise ConfigurationError(
                "the Keras model has no weights yet; give it an input shape "
                "(keras.Input or InputLayer) so PyFed can send its weights")

    # -- weights ----------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

    def set_weights(self, weights) -> None:
        weights = list(weights)
        self.model.set_weights(weights)
        if self._anchors is not None:  # FedProx: the received global weights anchor the term
            for anchor, index in zip(self._anchors, self._trainable_positions):
                anchor.assign(weights[index])

    def spec(self) -> list[TensorSpec]:
        return [TensorSpec(name=v.name, shape=tuple(int(d) for d in v.shape),
                           dtype=np.dtype(v.dtype).str, path=getattr(v, "path", v.name))
                for v in self.model.weights]

    def describe(self) -> dict:
        return {"kind": "keras", "json": self.model.to_json()}

    # -- training ---------------------------------------------------------------------------

    def compile(self, loss=None, optimizer=None, lr=None, metrics=None) -> None:
        """Compile once; later calls with the same settings keep the optimizer and its state."""
        key = (repr(loss), repr(optimizer), lr, repr(metrics))
        if self._compiled_with == key:
            return
        if loss is None:
            if getattr(self.model, "loss", None) is None:
                raise ConfigurationError("no loss given and the model is not compiled; pass loss=")
            self._compiled_with = key
            return
        self.model.compile(loss=loss, optimizer=make_optimizer(optimizer, lr),
                           metrics=list(metrics or []))
        self._metrics = list(metrics or [])
        self._compiled_with = key

    def _enable_proximal_term(self) -> None:
        """FedProx (Li et al., 2020): train on ``loss + mu/2 * ||w - w_global||^2``.

        Recompiles once, around the loss already chosen and with the same optimizer object (so
        its state is kept); ``mu`` and the anchor weights are variables, updated every round
        without recompiling.
        """
        keras = _keras()
        model = self.model
        positions = {id(v): i for i, v in enumerate(model.weights)}
        trainable = list(model.trainable_weights)
        self._trainable_positions = [positions[id(v)] for v in trainable]
        self._mu = keras.Variable(0.0, trainable=False, name="proximal_mu")
        anchors = [keras.Variable(v.numpy(), trainable=False, name=f"proximal_anchor_{i}")
                   for i, v in enumerate(trainable)]
        base = model.loss
        base_fn = keras.losses.get(base) if isinstance(base, (str, dict)) else base
        mu = self._mu

        def proximal_loss(y_true, y_pred):
            penalty = sum(keras.ops.sum(keras.ops.square(w - a)) for w, a in zip(trainable, anchors))
            return base_fn(y_true, y_pred) + 0.5 * mu * penalty

        metrics = self._metrics
        if metrics is None:  # the user compiled the model: Keras keeps their list privately
            compiled = getattr(model, "_compile_metrics", None)
            metrics = list(getattr(compiled, "_user_metrics", None) or [])
        model.compile(loss=proximal_loss, optimizer=model.optimizer, metrics=metrics)
        self._anchors = anchors

    def fit(self, data, target, config: dict, callbacks=None) -> FitOutcome:
        """One round of local training; ``callbacks`` (Keras callbacks, FL_Client's
        ``fit_callbacks``) go to ``model.fit`` and see this round's epochs, numbered globally."""
        epochs = int(config.get("epochs", 1))
        server_round = int(config.get("round", 1))
        if "lr" in config:  # the server's on_fit_config_fn may schedule the learning rate
            self.model.optimizer.learning_rate = float(config["lr"])
        mu = float(config.get("proximal_mu", 0.0))
        if mu > 0 and self._anchors is None:
            self._enable_proximal_term()
            self.set_weights(self.get_weights())  # anchor at the global weights just received
        if self._mu is not None:
            self._mu.assign(mu)
        # The global epoch makes each client's TensorBoard curve continuous across rounds.
        first_epoch = (server_round - 1) * epochs
        result = self.model.fit(
            data, target, batch_size=int(config.get("batch_size", 32)),
            epochs=first_epoch + epochs, initial_epoch=first_epoch,
            verbose=config.get("verbose", "auto"), shuffle=True,
            callbacks=list(callbacks) if callbacks else None)
        history = {name: [float(v) for v in values] for name, values in result.history.items()}
        metrics = {name: values[-1] for name, values in history.items() if values}
        return FitOutcome(num_examples=len(data), metrics=metrics, history=history,
                          first_epoch=first_epoch)

    def check_data(self, data, target) -> None:
        """Before round 1: ``data`` fits the model's input and, with a sparse categorical loss,
        ``target`` holds class numbers below its output width. Models with several inputs or
        outputs, or none known (subclassed models), are left to Keras."""
        try:
            input_shape, output_shape = self.model.input_shape, self.model.output_shape
        except (AttributeError, ValueError):
            return
        if isinstance(input_shape, tuple):
            check_features(data, input_shape)
        if not (isinstance(output_shape, tuple) and len(output_shape) == 2
                and isinstance(output_shape[1], int) and output_shape[1] > 1):
            return
        loss = getattr(self.model, "loss", None)
        loss_name = loss if isinstance(loss, str) else (
            getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__)
        labels = None if target is None else np.asarray(target)
        strings = labels is not None and labels.dtype.kind in "US"  # no Keras loss takes them
        rows = labels is not None and labels.ndim == 2 and labels.shape[1] > 1  # one-hot
        if strings or rows or "sparse" in str(loss_name).lower():
            check_labels(target, output_shape[1], f"output shape {output_shape}")

    def evaluate(self, data, target, config: dict) -> tuple[float, int, dict]:
        results = self.model.evaluate(data, target, batch_size=int(config.get("batch_size", 128)),
                                      verbose=0, return_dict=True)
        results = {name: float(value) for name, value in results.items()}
        return results.pop("loss", float("nan")), len(data), results
