"""The ModelAdapter protocol: what PyFed needs from a model, whatever its library.

Implement these five methods (plus ``describe``) and any numpy-parameterised model federates.
Adapters for Keras, scikit-learn and plain numpy ship with PyFed; :func:`as_adapter` picks one.

Optional: ``check_data(data, target)``, called by FL_Client once the model is known and before
round 1, raises a ConfigurationError when the data cannot fit the model (its width, its labels);
see :mod:`pyfed.models.data_checks`. It is not part of the protocol class, so adapters written
before it still count as ModelAdapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigurationError
from ..wire.spec import TensorSpec


@dataclass
class FitOutcome:
    """What local training produced, besides the weights."""

    num_examples: int
    metrics: dict = field(default_factory=dict)       # final-epoch values, e.g. {"loss": .., "accuracy": ..}
    history: dict = field(default_factory=dict)       # per-epoch curves, e.g. {"loss": [..], ...}
    first_epoch: int = 0                               # global epoch index of history[...][0]


@runtime_checkable
class ModelAdapter(Protocol):
    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None: ...

    def fit(self, data: Any, target: Any, config: dict) -> FitOutcome: ...

    def evaluate(self, data: Any, target: Any, config: dict) -> tuple[float, int, dict]: ...

    def spec(self) -> list[TensorSpec]: ...

    def describe(self) -> dict:
        """How a client rebuilds this model from WELCOME (``{"kind": ...}``), no pickle."""
        ...


def is_keras_model(model: Any) -> bool:
    # Checked by module name so that recognising a non-Keras model never imports TensorFlow.
    return any(cls.__module__.split(".")[0] in ("keras", "tf_keras", "tensorflow")
               for cls in type(model).__mro__)


def is_sklearn_estimator(model: Any) -> bool:
    # By module name too, so that recognising a model never imports scikit-learn.
    return any(cls.__module__.split(".")[0] == "sklearn" for cls in type(model).__mro__)


def as_adapter(model: Any) -> ModelAdapter:
    """Wrap ``model`` in the adapter that fits it, or return it if it already is one.

    A scikit-learn estimator becomes a :class:`~pyfed.models.sklearn_adapter.SklearnAdapter`.
    An unfitted one has no weight shapes yet (``adapter.initialized`` is False): fit it on a
    sample first, pass ``SklearnAdapter(estimator, n_features=..., classes=...)`` instead, or
    call ``adapter.initialize_from_data(x, y)``; its weight methods say so until then.
    """
    if is_keras_model(model):
        from .keras_adapter import KerasAdapter

        return KerasAdapter(model)
    if isinstance(model, ModelAdapter):
        return model
    if is_sklearn_estimator(model):
        from .sklearn_adapter import SklearnAdapter

        return SklearnAdapter(model)
    raise ConfigurationError(
        f"cannot federate a {type(model).__module__}.{type(model).__name__}; expected a Keras "
        "model, a scikit-learn SGDClassifier, LogisticRegression or MLPClassifier, or an object "
        "implementing pyfed.models.ModelAdapter (get_weights, set_weights, fit, evaluate, spec, "
        "describe)")


def adapter_from_description(description: dict) -> ModelAdapter:
    """Rebuild the server's model from WELCOME's ``model`` (JSON, never pickle), by kind."""
    kind = description.get("kind")
    if kind == "keras":
        from .keras_adapter import KerasAdapter, model_from_description

        return KerasAdapter(model_from_description(description))
    if kind == "sklearn":
        from .sklearn_adapter import sklearn_from_description

        return sklearn_from_description(description)
    if kind == "numpy" and description.get("model") == "SoftmaxRegression":
        from .numpy_model import SoftmaxRegression

        return SoftmaxRegression.from_description(description)
    raise ConfigurationError(
        f"the server trains a {kind!r} model that cannot be rebuilt from the network; "
        "pass your own model to FL_Client(model=...)")
