"""Model adapters. Importing this package imports neither TensorFlow nor scikit-learn."""

from .base import (
    FitOutcome,
    ModelAdapter,
    adapter_from_description,
    as_adapter,
    is_keras_model,
    is_sklearn_estimator,
)
from .numpy_model import NumpyModel, SoftmaxRegression

__all__ = [
    "FitOutcome",
    "ModelAdapter",
    "NumpyModel",
    "SklearnAdapter",
    "SoftmaxRegression",
    "adapter_from_description",
    "as_adapter",
    "is_keras_model",
    "is_sklearn_estimator",
    "sklearn_from_description",
]

_LAZY = {"SklearnAdapter": "sklearn_adapter", "sklearn_from_description": "sklearn_adapter"}


def __getattr__(name: str):
    # PEP 562: scikit-learn is imported on first use of these names, not with the package.
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
